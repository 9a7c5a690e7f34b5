//! The streaming server: the CRI Exec, Attach and PortForward RPCs answer with a URL here
//! (`/exec/TOKEN`, `/attach/TOKEN`, `/portforward/TOKEN`, as kubelet's server), and the
//! client upgrades a request to it to SPDY or WebSocket (podrun-stream speaks both). A token
//! is 256 random bits, good for one use, and expires unused after `streaming-token-ttl`
//! (default 60 s).

mod forward;

pub use forward::dial;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use podrun_proto::cri;

use crate::container::Containers;
use crate::error::{Error, Result};
use crate::sandbox::Sandboxes;
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
    pub(crate) fn take(&self, path: &str, token: &str) -> Option<Pending> {
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

    /// The listener `bind` made, for the server (once).
    pub(crate) fn take_listener(&self) -> Result<std::net::TcpListener> {
        let mut listener = self.listener.lock().unwrap_or_else(|p| p.into_inner());
        listener
            .take()
            .ok_or_else(|| Error::Internal("the streaming server runs once".into()))
    }
}

/// Exec: checks the request against the container, then hands out its URL.
pub fn exec_url(
    streaming: &Streaming,
    containers: &Containers,
    req: cri::ExecRequest,
) -> Result<String> {
    containers.running(&req.container_id)?;
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
    streaming.url(Pending::Exec(req))
}

/// Attach: the container's own terminal setting decides `tty`, as it made its stdio.
pub fn attach_url(
    streaming: &Streaming,
    containers: &Containers,
    mut req: cri::AttachRequest,
) -> Result<String> {
    let r = containers.running(&req.container_id)?;
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
    streaming.url(Pending::Attach(req))
}

pub fn port_forward_url(
    streaming: &Streaming,
    sandboxes: &Sandboxes,
    mut req: cri::PortForwardRequest,
) -> Result<String> {
    let pod = sandboxes.get(&req.pod_sandbox_id)?.view();
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
    streaming.url(Pending::PortForward(req))
}
