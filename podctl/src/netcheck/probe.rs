//! Probes run inside pods' network namespaces: a TCP listener in the receiver's netns that
//! answers each connection with the source address it saw, and a dialer in the sender's.
//! Each namespace switch happens on a dedicated thread (setns changes only the calling
//! thread), never on a tokio worker.

use std::fs::File;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use nix::sched::{setns, CloneFlags};

/// Runs `f` on a new thread inside the network namespace pinned at `netns` (or in this
/// process's own namespace, the node's, when `netns` is None).
pub(crate) fn in_netns<T: Send + 'static>(
    netns: Option<&Path>,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T> {
    let fd = match netns {
        Some(p) => Some(File::open(p).with_context(|| format!("opening {}", p.display()))?),
        None => None,
    };
    let shown: Option<PathBuf> = netns.map(Path::to_owned);
    std::thread::spawn(move || -> Result<T> {
        if let Some(fd) = fd {
            setns(&fd, CloneFlags::CLONE_NEWNET)
                .with_context(|| format!("setns into {}", shown.unwrap_or_default().display()))?;
        }
        Ok(f())
    })
    .join()
    .map_err(|_| anyhow!("netns thread panicked"))?
}

/// A listener in a receiver's netns. Its socket stays in that namespace; the thread that
/// serves it needs no namespace of its own.
pub(crate) struct Listener {
    pub port: u16,
}

impl Listener {
    pub fn start(netns: &Path) -> Result<Listener> {
        let listener = in_netns(Some(netns), || TcpListener::bind(("0.0.0.0", 0)))?
            .with_context(|| format!("listening in {}", netns.display()))?;
        let port = listener.local_addr()?.port();
        std::thread::spawn(move || {
            for mut conn in listener.incoming().flatten() {
                let seen = conn
                    .peer_addr()
                    .map(|a| a.ip().to_string())
                    .unwrap_or_default();
                let _ = conn.write_all(seen.as_bytes());
            }
        });
        Ok(Listener { port })
    }
}

/// What a probe connection found.
#[derive(Debug, Clone)]
pub(crate) enum Outcome {
    /// Connected; the receiver saw us come from this address.
    Seen(IpAddr),
    /// Connected, but the other end said nothing we could read as an address.
    Connected(String),
    /// The peer answered with a reset: it is reachable, nothing listens there.
    Refused,
    /// No connection: the error says why (timeout, no route, host unreachable...).
    Failed(String),
}

impl Outcome {
    pub fn reached(&self) -> bool {
        !matches!(self, Outcome::Failed(_))
    }
}

/// Connects from inside `netns` (None: the node) to `addr` and reads the address the
/// receiver saw.
pub(crate) fn dial(netns: Option<&Path>, addr: SocketAddr, timeout: Duration) -> Outcome {
    let run = move || -> Outcome {
        let mut conn = match TcpStream::connect_timeout(&addr, timeout) {
            Ok(c) => c,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => return Outcome::Refused,
            Err(e) => return Outcome::Failed(format!("connecting to {addr}: {e}")),
        };
        let _ = conn.set_read_timeout(Some(timeout));
        let mut s = String::new();
        match conn.read_to_string(&mut s) {
            Ok(_) => match s.trim().parse() {
                Ok(ip) => Outcome::Seen(ip),
                Err(_) => Outcome::Connected(s),
            },
            Err(e) => Outcome::Connected(format!("reading: {e}")),
        }
    };
    in_netns(netns, run).unwrap_or_else(|e| Outcome::Failed(format!("{e:#}")))
}
