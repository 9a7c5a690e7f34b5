//! SPDY/3.1, the part of it Kubernetes streaming uses: frames, header compression and a
//! connection of byte-pipe streams.

pub mod conn;
pub mod frame;

pub use conn::{Connection, Stream};
pub use frame::{header, Headers};
