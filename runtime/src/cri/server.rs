//! Serving the CRI on a unix socket.

use std::convert::Infallible;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use podrun_proto::cri::image_service_server::ImageServiceServer;
use podrun_proto::cri::runtime_service_server::RuntimeServiceServer;
use podrun_proto::podrun::v1::doctor_server::DoctorServer;
use podrun_proto::podrun::v1::images_server::ImagesServer;
use tokio::net::UnixListener;
use tonic::Status;
use tower::Service;

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
    let recovered = crate::pod::recover(&node).await?;
    let containers = crate::pod::container::recover(&node).await?;
    let released = crate::pod::release_dead(&node).await;
    let cni_gc = crate::pod::cni_gc(&node).await;
    // CNI DEL of attachments left by pods let go while it failed: now, and every 5 min.
    let n = node.clone();
    let leftovers = tokio::spawn(async move {
        loop {
            crate::cni::retry_leftovers(&n.config.root, n.cni.as_ref()).await;
            tokio::time::sleep(Duration::from_secs(300)).await;
        }
    });
    // Bounded: a start must not hang on what the audit reads.
    let n = node.clone();
    let audit = tokio::task::spawn_blocking(move || crate::doctor::audit(&n));
    let findings = match tokio::time::timeout(Duration::from_secs(10), audit).await {
        Ok(Ok(findings)) => findings,
        _ => {
            tracing::error!("the leak audit at start did not finish in 10 s; skipped");
            Vec::new()
        }
    };
    for f in &findings {
        tracing::warn!(finding = ?f, "leak audit at start (podctl doctor --fix removes orphans)");
    }
    *node
        .audit_at_start
        .lock()
        .unwrap_or_else(|p| p.into_inner()) = crate::leak::Report::of(&findings);
    tracing::info!(socket = %path.display(), recovered, containers, released, cni_gc, "podrund serving CRI");
    let streaming = tokio::spawn(crate::pod::sessions::serve(node.clone()));
    let nri = match (&node.nri, &node.config.nri_socket) {
        (Some(nri), Some(socket)) => {
            let n = node.clone();
            let snapshot: crate::nri::Snapshot = Box::new(move || {
                let pods = n
                    .sandboxes
                    .all()
                    .iter()
                    .map(|p| crate::nri::convert::pod(&p.view()))
                    .collect();
                let containers = n
                    .containers
                    .all()
                    .iter()
                    .map(|c| crate::nri::convert::container(&c.view()))
                    .collect();
                (pods, containers)
            });
            let serving = nri
                .clone()
                .serve(socket.clone(), snapshot, node.inflight.clone());
            Some(tokio::spawn(async move {
                if let Err(e) = serving.await {
                    tracing::error!(error = %e, "NRI failed");
                }
            }))
        }
        _ => None,
    };
    let metrics = match node.config.metrics_address.clone() {
        Some(address) => {
            let n = node.clone();
            let gauges = Arc::new(move || n.gauges());
            Some(tokio::spawn(async move {
                if let Err(e) = crate::prometheus::serve(&address, gauges).await {
                    tracing::error!(error = %e, "the metrics endpoint failed");
                }
            }))
        }
        None => None,
    };
    let cri = Cri { node: node.clone() };
    let routes = tonic::service::Routes::new(
        RuntimeServiceServer::new(cri.clone()).max_decoding_message_size(16 << 20),
    )
    .add_service(ImageServiceServer::new(cri.clone()))
    .add_service(ImagesServer::new(cri.clone()))
    .add_service(DoctorServer::new(cri))
    .prepare();
    let result = accept(listener, routes, shutdown).await;
    let _ = std::fs::remove_file(&path);
    streaming.abort();
    leftovers.abort();
    for task in [metrics, nri].into_iter().flatten() {
        task.abort();
    }
    // Let pod operations already under way finish (their clients may be gone).
    let drained = tokio::time::timeout(Duration::from_secs(120), node.inflight.write()).await;
    if drained.is_err() {
        tracing::error!("pod operations still running after 120s; exiting anyway");
    }
    result
}

/// Serves HTTP/2 gRPC on each accepted connection until `shutdown`, then lets the
/// connections finish what they are doing (at most 5 s: event streams never end).
///
/// Not tonic's own server: it answers an expired `grpc-timeout` with CANCELLED, where
/// clients (and critest) expect DEADLINE_EXCEEDED.
async fn accept(
    listener: UnixListener,
    routes: tonic::service::Routes,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<()> {
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!(error = %e, "CRI accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let routes = routes.clone();
        let service = hyper::service::service_fn(move |req| with_deadline(routes.clone(), req));
        let conn = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .serve_connection(TokioIo::new(stream), service);
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "CRI connection ended");
            }
        });
    }
    if tokio::time::timeout(Duration::from_secs(5), graceful.shutdown())
        .await
        .is_err()
    {
        tracing::debug!("CRI connections still open at shutdown; closing them");
    }
    Ok(())
}

/// Runs one call, bounded by the client's `grpc-timeout` when it sent one. Dropping the
/// call's future cancels it, as a client's RST_STREAM does.
async fn with_deadline(
    mut routes: tonic::service::Routes,
    req: hyper::Request<hyper::body::Incoming>,
) -> std::result::Result<hyper::Response<tonic::body::Body>, Infallible> {
    let deadline = req
        .headers()
        .get("grpc-timeout")
        .and_then(|v| v.to_str().ok())
        .and_then(grpc_timeout);
    let call = routes.call(req);
    let Some(deadline) = deadline else {
        return call.await;
    };
    match tokio::time::timeout(deadline, call).await {
        Ok(response) => response,
        Err(_) => Ok(Status::deadline_exceeded("the call's grpc-timeout expired").into_http()),
    }
}

/// The `grpc-timeout` header: at most 8 digits and a unit (gRPC over HTTP/2).
fn grpc_timeout(value: &str) -> Option<Duration> {
    let unit = value.chars().last()?;
    let digits = &value[..value.len() - unit.len_utf8()];
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        'H' => Duration::from_secs(n * 3600),
        'M' => Duration::from_secs(n * 60),
        'S' => Duration::from_secs(n),
        'm' => Duration::from_millis(n),
        'u' => Duration::from_micros(n),
        'n' => Duration::from_nanos(n),
        _ => return None,
    })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeout_units_and_malformed_values() {
        assert_eq!(grpc_timeout("1m"), Some(Duration::from_millis(1)));
        assert_eq!(grpc_timeout("999u"), Some(Duration::from_micros(999)));
        assert_eq!(grpc_timeout("2H"), Some(Duration::from_secs(7200)));
        assert_eq!(grpc_timeout("30S"), Some(Duration::from_secs(30)));
        assert_eq!(
            grpc_timeout("99999999n"),
            Some(Duration::from_nanos(99_999_999))
        );
        for bad in ["", "m", "5", "123456789S", "-1S", "1s", "1.5S", "1é"] {
            assert_eq!(grpc_timeout(bad), None, "{bad:?}");
        }
    }
}
