//! The sessions a streaming URL opens: the server behind the URLs that Exec, Attach and
//! PortForward hand out (`crate::streaming`), which runs each session against the node's
//! containers and pods.

mod exec;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::TokioIo;

use crate::error::{Error, Result};
use crate::node::Node;
use crate::streaming::Pending;

/// Streaming connections served at once; more are closed as they come.
const MAX_CONNECTIONS: usize = 512;
/// How long a client may take to send its request head.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves until the process ends: each connection in a task of its own.
pub async fn serve(node: Arc<Node>) -> Result<()> {
    let listener = node.streaming.take_listener()?;
    let listener = tokio::net::TcpListener::from_std(listener)
        .map_err(|e| Error::Internal(format!("streaming socket: {e}")))?;
    tracing::info!(address = %node.streaming.addr, "streaming server listening");
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "streaming accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        // Clients are untrusted: past the limit a connection is closed at once.
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::warn!(%peer, "too many streaming connections; refusing one");
            continue;
        };
        let node = node.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let service = hyper::service::service_fn(move |req| {
                let node = node.clone();
                async move { Ok::<_, Infallible>(route(node, req)) }
            });
            // A client that sends its request head slowly (slowloris) is cut off.
            let served = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .max_buf_size(64 * 1024)
                .serve_connection(TokioIo::new(tcp), service)
                .with_upgrades()
                .await;
            if let Err(e) = served {
                tracing::debug!(%peer, error = %e, "streaming connection ended");
            }
        });
    }
}

/// The streams a request asks for (a terminal has no separate stderr).
fn options(stdin: bool, stdout: bool, stderr: bool, tty: bool) -> podrun_stream::Options {
    podrun_stream::Options {
        stdin,
        stdout,
        stderr: stderr && !tty,
        tty,
    }
}

fn route(
    node: Arc<Node>,
    req: hyper::Request<hyper::body::Incoming>,
) -> hyper::Response<podrun_stream::Body> {
    let mut parts = req.uri().path().trim_matches('/').splitn(2, '/');
    let (kind, token) = (
        parts.next().unwrap_or_default().to_owned(),
        parts.next().unwrap_or_default().to_owned(),
    );
    let Some(pending) = node.streaming.take(&kind, &token) else {
        tracing::info!(
            kind,
            "streaming request with an unknown, used or expired token"
        );
        return podrun_stream::error_response(
            hyper::StatusCode::NOT_FOUND,
            "token not found: unknown, already used or expired",
        );
    };
    match pending {
        Pending::Exec(r) => {
            let opts = options(r.stdin, r.stdout, r.stderr, r.tty);
            podrun_stream::remotecommand(req, opts, move |streams| {
                Box::pin(exec::exec(node, r, streams))
            })
        }
        Pending::Attach(r) => {
            let opts = options(r.stdin, r.stdout, r.stderr, r.tty);
            podrun_stream::remotecommand(req, opts, move |streams| {
                Box::pin(exec::attach(node, r, streams))
            })
        }
        Pending::PortForward(r) => {
            let ports = r.port.iter().map(|p| *p as u16).collect();
            let netns = node
                .sandboxes
                .get(&r.pod_sandbox_id)
                .ok()
                .and_then(|s| s.view().netns);
            podrun_stream::portforward(req, ports, move |port| {
                Box::pin(crate::streaming::dial(netns.clone(), port))
            })
        }
    }
}
