//! The pod layer: the CRI verbs over a pod and its containers, and the streaming sessions
//! into them. This is the one layer that holds the whole [`Node`](crate::node::Node); below
//! it, `sandbox` and `container` keep records, indexes and pure builders, and take narrow
//! handles (an index, a record, a shim) instead of the node.
//!
//! ```text
//!   cri ─▶ pod (run, stop, remove, recover; container::{create, start, stop, exec, ...}; sessions)
//!            └─▶ node ─▶ sandbox, container, streaming, events, image, cni, cgroup, store
//! ```

pub mod container;
mod recover;
mod remove;
mod run;
pub mod sessions;
mod stop;

pub use recover::{cni_gc, recover, release_dead};
pub use remove::remove;
pub use run::run;
pub use stop::stop;
