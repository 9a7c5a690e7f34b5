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

/// Connecting a CRI client to a unix socket (podctl, the tests, the benchmarks).
pub mod client {
    use std::path::{Path, PathBuf};

    use hyper_util::rt::TokioIo;
    use tonic::transport::{Channel, Endpoint};

    use super::cri::image_service_client::ImageServiceClient;
    use super::cri::runtime_service_client::RuntimeServiceClient;

    /// A channel to the CRI server at `socket` (a path, or `unix://` + path).
    pub async fn channel(socket: &Path) -> Result<Channel, tonic::transport::Error> {
        let path: PathBuf = socket
            .to_str()
            .and_then(|s| s.strip_prefix("unix://"))
            .map(PathBuf::from)
            .unwrap_or_else(|| socket.to_owned());
        // The URI is required by tonic but unused: the connector below dials the socket.
        Endpoint::from_static("http://[::]:50051")
            .connect_with_connector(tower::service_fn(move |_| {
                let path = path.clone();
                async move {
                    Ok::<_, std::io::Error>(TokioIo::new(
                        tokio::net::UnixStream::connect(path).await?,
                    ))
                }
            }))
            .await
    }

    pub async fn runtime(
        socket: &Path,
    ) -> Result<RuntimeServiceClient<Channel>, tonic::transport::Error> {
        Ok(RuntimeServiceClient::new(channel(socket).await?).max_decoding_message_size(64 << 20))
    }

    pub async fn image(
        socket: &Path,
    ) -> Result<ImageServiceClient<Channel>, tonic::transport::Error> {
        Ok(ImageServiceClient::new(channel(socket).await?))
    }
}
