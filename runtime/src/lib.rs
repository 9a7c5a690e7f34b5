//! podrun's runtime library: sandbox lifecycle, namespaces, CNI, cgroups, state and the CRI
//! service. See docs/ARCHITECTURE.md for the picture.

pub mod binaries;
pub mod cdi;
pub mod cgroup;
pub mod cni;
pub mod config;
pub mod container;
pub mod crash;
pub mod cri;
pub mod doctor;
pub mod events;
pub mod image;
pub mod leak;
pub mod metrics;
pub mod netns;
pub mod node;
pub mod nri;
pub mod oci_edit;
pub mod pod;
pub mod prometheus;
pub mod sandbox;
pub mod stats;
pub mod store;
pub mod streaming;
pub mod userns;

pub use error::{Error, Kind, Result};
pub use podrun_core::{clock, error, oci_config};
