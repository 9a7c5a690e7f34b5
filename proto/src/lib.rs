//! CRI `runtime.v1` bindings (tonic + prost), compiled from `cri/runtime/v1/api.proto`:
//! our transcription of Kubernetes cri-api v0.36.3. See proto/README.md.

/// The CRI release our transcription follows.
pub const CRI_API_RELEASE: &str = "k8s.io/cri-api v0.36.3";

#[allow(clippy::all, clippy::pedantic)]
pub mod runtime {
    pub mod v1 {
        tonic::include_proto!("runtime.v1");
    }
}

pub use runtime::v1 as cri;
