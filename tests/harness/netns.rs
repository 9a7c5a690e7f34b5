//! Looking at and acting inside a pod's network namespace from a test: on a thread of its
//! own that has entered the namespace, as the runtime itself must.

use std::fs::File;
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result};
use nix::sched::{setns, CloneFlags};

/// Runs `f` on a new thread inside the network namespace pinned at `netns`.
pub fn in_netns<T: Send + 'static>(
    netns: &Path,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T> {
    let fd = File::open(netns).with_context(|| format!("opening {}", netns.display()))?;
    std::thread::spawn(move || {
        setns(&fd, CloneFlags::CLONE_NEWNET).context("setns")?;
        Ok(f())
    })
    .join()
    .map_err(|_| anyhow::anyhow!("netns thread panicked"))?
}

/// A TCP server inside a netns that answers each connection with the peer address it saw.
pub fn serve_peer_address(netns: Option<&Path>, port: u16) -> Result<std::thread::JoinHandle<()>> {
    let listener = match netns {
        Some(ns) => in_netns(ns, move || TcpListener::bind(("0.0.0.0", port)))??,
        None => TcpListener::bind(("0.0.0.0", port))?,
    };
    Ok(std::thread::spawn(move || {
        use std::io::Write;
        for mut conn in listener.incoming().flatten() {
            let peer = conn
                .peer_addr()
                .map(|a| a.ip().to_string())
                .unwrap_or_default();
            let _ = conn.write_all(peer.as_bytes());
        }
    }))
}

/// Connects to `addr` (from inside `netns`, or from the node) and returns the address the
/// server says it saw us come from.
pub fn seen_as(netns: Option<&Path>, addr: SocketAddr) -> Result<IpAddr> {
    let dial = move || -> Result<IpAddr> {
        use std::io::Read;
        let mut conn = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
            .with_context(|| format!("connecting to {addr}"))?;
        conn.set_read_timeout(Some(Duration::from_secs(5)))?;
        let mut s = String::new();
        conn.read_to_string(&mut s)?;
        s.trim()
            .parse()
            .with_context(|| format!("server answered {s:?}"))
    };
    match netns {
        Some(ns) => in_netns(ns, dial)?,
        None => dial(),
    }
}

fn ip(args: &[&str]) -> Result<String> {
    let out = Command::new("ip").args(args).output()?;
    anyhow::ensure!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The IPv4 address on `eth0` inside the netns named `name` (under /run/netns).
pub fn eth0_ipv4(name: &str) -> Result<IpAddr> {
    let out = ip(&["-n", name, "-4", "-o", "addr", "show", "dev", "eth0"])?;
    let cidr = out
        .split_whitespace()
        .skip_while(|w| *w != "inet")
        .nth(1)
        .context("no inet on eth0")?;
    Ok(cidr.split('/').next().unwrap_or_default().parse()?)
}

/// The bridge that the host end of the pod's `eth0` veth is attached to.
pub fn eth0_peer_master(name: &str) -> Result<Option<String>> {
    let out = ip(&["-n", name, "-o", "link", "show", "eth0"])?;
    // "2: eth0@if17: <...>"
    let peer_index = out
        .split('@')
        .nth(1)
        .and_then(|s| s.split(':').next())
        .and_then(|s| s.strip_prefix("if"))
        .context("eth0 is not a veth")?;
    let host = ip(&["-o", "link", "show"])?;
    let line = host
        .lines()
        .find(|l| l.starts_with(&format!("{peer_index}:")))
        .context("veth peer not on the node")?;
    Ok(line
        .split_whitespace()
        .skip_while(|w| *w != "master")
        .nth(1)
        .map(str::to_owned))
}
