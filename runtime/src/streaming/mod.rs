//! The streaming server: the CRI Exec, Attach and PortForward RPCs answer with a URL here
//! (`/exec/TOKEN`, `/attach/TOKEN`, `/portforward/TOKEN`, as kubelet's server), and the
//! client upgrades a request to it to SPDY or WebSocket (podrun-stream speaks both). A token
//! is 256 random bits, good for one use, and expires unused after `streaming-token-ttl`
//! (default 60 s).

mod exec;
mod forward;

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hyper_util::rt::TokioIo;

/// Streaming connections served at once; more are closed as they come.
const MAX_CONNECTIONS: usize = 512;
/// How long a client may take to send its request head.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
use podrun_proto::cri;

use crate::error::{Error, Result};
use crate::node::Node;
use crate::store;

/// A request waiting for its client to connect.
#[derive(Debug, Clone)]
pub enum Pending {
    Exec(cri::ExecRequest),
    Attach(cri::AttachRequest),
    PortForward(cri::PortForwardRequest),
}

impl Pending {
    fn path(&self) -> &'static str {
        match self {
            Pending::Exec(_) => "exec",
            Pending::Attach(_) => "attach",
            Pending::PortForward(_) => "portforward",
        }
    }
}

pub struct Streaming {
    listener: Mutex<Option<std::net::TcpListener>>,
    pub addr: SocketAddr,
    ttl: Duration,
    pending: Mutex<HashMap<String, (Instant, Pending)>>,
}

impl Streaming {
    /// Binds `address` now (so the URL is known before serving starts).
    pub fn bind(address: &str, ttl: Duration) -> Result<Streaming> {
        let listener = std::net::TcpListener::bind(address)
            .map_err(|e| Error::invalid("streaming-address", format!("{address}: {e}")))?;
        listener
            .set_nonblocking(true)
            .map_err(|e| Error::Internal(format!("streaming socket: {e}")))?;
        let addr = listener
            .local_addr()
            .map_err(|e| Error::Internal(format!("streaming socket: {e}")))?;
        Ok(Streaming {
            listener: Mutex::new(Some(listener)),
            addr,
            ttl,
            pending: Mutex::default(),
        })
    }

    fn pending(&self) -> std::sync::MutexGuard<'_, HashMap<String, (Instant, Pending)>> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A single-use URL for `request`.
    pub fn url(&self, request: Pending) -> Result<String> {
        let token = store::new_id()?;
        let path = request.path();
        let mut pending = self.pending();
        pending.retain(|_, (at, _)| at.elapsed() < self.ttl);
        pending.insert(token.clone(), (Instant::now(), request));
        Ok(format!("http://{}/{path}/{token}", self.addr))
    }

    /// The request of `token` if it is of kind `path` and still fresh; it is used up.
    fn take(&self, path: &str, token: &str) -> Option<Pending> {
        let mut pending = self.pending();
        match pending.get(token) {
            Some((at, p)) if p.path() == path && at.elapsed() < self.ttl => {
                pending.remove(token).map(|(_, p)| p)
            }
            Some((at, _)) if at.elapsed() >= self.ttl => {
                pending.remove(token);
                None
            }
            _ => None,
        }
    }

    /// Serves until the process ends: each connection in a task of its own.
    pub async fn serve(node: Arc<Node>) -> Result<()> {
        let listener = node
            .streaming
            .listener
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
            .ok_or_else(|| Error::Internal("the streaming server runs once".into()))?;
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
}

/// Exec: checks the request against the container, then hands out its URL.
pub fn exec_url(node: &Node, req: cri::ExecRequest) -> Result<String> {
    node.containers.running(&req.container_id)?;
    if req.cmd.is_empty() {
        return Err(Error::invalid("cmd", "must not be empty"));
    }
    if !(req.stdin || req.stdout || req.stderr) {
        return Err(Error::invalid(
            "stdin",
            "one of stdin, stdout and stderr must be true",
        ));
    }
    if req.tty && req.stderr {
        return Err(Error::invalid("stderr", "must be false when tty is true"));
    }
    node.streaming.url(Pending::Exec(req))
}

/// Attach: the container's own terminal setting decides `tty`, as it made its stdio.
pub fn attach_url(node: &Node, mut req: cri::AttachRequest) -> Result<String> {
    let r = node.containers.running(&req.container_id)?;
    if !(req.stdin || req.stdout || req.stderr) {
        return Err(Error::invalid(
            "stdin",
            "one of stdin, stdout and stderr must be true",
        ));
    }
    if req.stdin && !r.config.stdin {
        return Err(Error::FailedPrecondition(format!(
            "container {} was created without stdin",
            r.id
        )));
    }
    req.tty = r.config.tty;
    req.container_id = r.id;
    node.streaming.url(Pending::Attach(req))
}

pub fn port_forward_url(node: &Node, mut req: cri::PortForwardRequest) -> Result<String> {
    let pod = node.sandboxes.get(&req.pod_sandbox_id)?.view();
    if pod.state != crate::sandbox::State::Ready {
        return Err(Error::FailedPrecondition(format!(
            "pod {} is not ready",
            pod.id
        )));
    }
    if let Some(p) = req.port.iter().find(|p| !(1..=65535).contains(*p)) {
        return Err(Error::invalid("port", format!("{p} is not a TCP port")));
    }
    req.pod_sandbox_id = pod.id;
    node.streaming.url(Pending::PortForward(req))
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
                Box::pin(forward::dial(netns.clone(), port))
            })
        }
    }
}
