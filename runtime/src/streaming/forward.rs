//! PortForward's connections: a TCP connection to localhost:PORT inside the pod's network
//! namespace (a hostNetwork pod's is the node's). The socket is made on a short-lived
//! thread that enters the namespace (never a tokio worker: `setns` changes only the
//! calling thread); once connected it works from anywhere.

use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::time::Duration;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

fn connect_in(netns: Option<PathBuf>, port: u16) -> Result<TcpStream, String> {
    if let Some(path) = netns {
        let ns = std::fs::File::open(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET)
            .map_err(|e| format!("entering the pod's network namespace: {e}"))?;
    }
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT)
        .map_err(|e| format!("connecting to localhost:{port} in the pod: {e}"))
}

/// A connection to `port` on the pod's localhost, or why there is none.
pub async fn dial(netns: Option<PathBuf>, port: u16) -> Result<tokio::net::TcpStream, String> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let _ = tx.send(connect_in(netns, port));
    });
    let stream = rx
        .await
        .map_err(|_| "the connecting thread died".to_owned())??;
    stream.set_nonblocking(true).map_err(|e| e.to_string())?;
    tokio::net::TcpStream::from_std(stream).map_err(|e| e.to_string())
}
