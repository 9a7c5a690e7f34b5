//! Serving the CRI on a unix socket.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use podrun_proto::cri::image_service_server::ImageServiceServer;
use podrun_proto::cri::runtime_service_server::RuntimeServiceServer;
use podrun_proto::podrun::v1::images_server::ImagesServer;
use tokio::net::UnixListener;
use tokio_stream::wrappers::UnixListenerStream;

use super::Cri;
use crate::error::{Error, Result};
use crate::node::Node;

/// Binds `node.config.listen` (mode 0660), recovers the pods on disk and serves until
/// `shutdown` completes. A socket another live podrund answers on is left alone.
pub async fn serve(
    node: Arc<Node>,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<()> {
    let path = node.config.listen.clone();
    let listener = bind(&path).await?;
    let recovered = crate::sandbox::recover(&node).await?;
    let containers = crate::container::recover(&node).await?;
    tracing::info!(socket = %path.display(), recovered, containers, "podrund serving CRI");
    let streaming = tokio::spawn(crate::stream::Streaming::serve(node.clone()));
    let cri = Cri { node: node.clone() };
    let result = tonic::transport::Server::builder()
        .add_service(RuntimeServiceServer::new(cri.clone()).max_decoding_message_size(16 << 20))
        .add_service(ImageServiceServer::new(cri.clone()))
        .add_service(ImagesServer::new(cri))
        .serve_with_incoming_shutdown(UnixListenerStream::new(listener), shutdown)
        .await
        .map_err(|e| Error::Internal(format!("serving {}: {e}", path.display())));
    let _ = std::fs::remove_file(&path);
    streaming.abort();
    // Let pod operations already under way finish (their clients may be gone).
    let drained = tokio::time::timeout(Duration::from_secs(120), node.inflight.write()).await;
    if drained.is_err() {
        tracing::error!("pod operations still running after 120s; exiting anyway");
    }
    result
}

async fn bind(path: &Path) -> Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(Error::io("creating", dir))?;
    }
    if path.exists() {
        if tokio::net::UnixStream::connect(path).await.is_ok() {
            return Err(Error::FailedPrecondition(format!(
                "another server is listening on {}",
                path.display()
            )));
        }
        std::fs::remove_file(path).map_err(Error::io("removing stale socket", path))?;
    }
    let listener = UnixListener::bind(path).map_err(Error::io("binding", path))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))
        .map_err(Error::io("chmod", path))?;
    nix::unistd::chown(path, Some(0.into()), Some(0.into()))
        .map_err(Error::sys(format!("chown {}", path.display())))?;
    Ok(listener)
}
