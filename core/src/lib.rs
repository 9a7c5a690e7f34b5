//! What podrund and the per-pod shim both need, and nothing else, so that the shim links
//! neither the CRI server stack nor the image puller: the subset of the OCI runtime config
//! they read and write, cgroups through cgroupfs, the error type, RFC 3339 timestamps, and
//! the environment variable that hands the shim its listening socket.

pub mod cgroup;
pub mod clock;
pub mod error;
pub mod oci_config;

pub use error::{Error, Kind, Result};

/// The fd of the shim's listening socket, set by podrund (unset: fd 3, containerd's way).
pub const SHIM_LISTENER_ENV: &str = "PODRUN_SHIM_LISTENER_FD";
