//! Kubernetes streaming, as kubelet's streaming server and client-go speak it: exec and
//! attach (the `channel.k8s.io` protocols, v1 to v5) and port forwarding
//! (`portforward.k8s.io`), each over SPDY/3.1 or WebSocket, server side and client side.
//!
//! Server side, a runtime hands an upgrade request and a session function to
//! [`remotecommand`] or [`portforward`] and answers with the response they return; the
//! session runs once the connection is upgraded. Client side, [`exec`] and
//! [`PortForwarder`] connect to such a URL.
//!
//! Every stream is a byte pipe: what the peer sends reads out of it, what is written goes
//! to the peer, and dropping it closes it (SPDY FIN; WebSocket v5 close signal).

mod client;
mod forward;
mod http;
mod remote;
pub mod spdy;
mod status;
mod ws;

use std::future::Future;
use std::pin::Pin;

pub use client::{exec, Session};
pub use forward::{portforward, Forwarded, PortForwarder};
pub use http::{error_response, Body};
pub use remote::remotecommand;
pub use status::Outcome;

pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// A byte pipe to or from the peer.
pub type Pipe = tokio::io::DuplexStream;

/// Which of a process's streams a session carries.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Options {
    pub stdin: bool,
    pub stdout: bool,
    /// Never together with `tty`: a terminal has one output.
    pub stderr: bool,
    pub tty: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TerminalSize {
    pub width: u16,
    pub height: u16,
}

/// What a remotecommand session gives the runtime: the streams the client asked for.
pub struct Streams {
    /// End-of-file when the client closes stdin.
    pub stdin: Option<Pipe>,
    pub stdout: Option<Pipe>,
    pub stderr: Option<Pipe>,
    /// Terminal sizes, the first as soon as the client sends it (only with a tty).
    pub resize: Option<tokio::sync::mpsc::Receiver<TerminalSize>>,
    /// The channel protocol agreed on, e.g. `v4.channel.k8s.io` ("" for v1).
    pub protocol: String,
    /// Resolves when the client's connection is gone.
    pub hangup: Hangup,
}

/// Fires when a connection's peer is gone (it closed, or the connection broke).
#[derive(Clone)]
pub struct Hangup(tokio::sync::watch::Receiver<()>);

impl Hangup {
    /// A pair: the hangup, and the guard whose drop fires it.
    pub fn new() -> (Hangup, tokio::sync::watch::Sender<()>) {
        let (tx, rx) = tokio::sync::watch::channel(());
        (Hangup(rx), tx)
    }

    pub async fn wait(&mut self) {
        while self.0.changed().await.is_ok() {}
    }
}

/// The transport a client uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Spdy,
    WebSocket,
}

impl std::str::FromStr for Transport {
    type Err = String;

    fn from_str(s: &str) -> Result<Transport, String> {
        match s {
            "spdy" => Ok(Transport::Spdy),
            "websocket" | "ws" => Ok(Transport::WebSocket),
            other => Err(format!("unknown transport {other:?}: spdy or websocket")),
        }
    }
}

/// Channel protocols for exec and attach, most preferred first.
pub const CHANNEL_PROTOCOLS: [&str; 5] = [
    "v5.channel.k8s.io",
    "v4.channel.k8s.io",
    "v3.channel.k8s.io",
    "v2.channel.k8s.io",
    "channel.k8s.io",
];

/// Port-forward protocols: SPDY speaks the first; WebSocket the others (kubelet's
/// port-forward clients name `v4.channel.k8s.io`), the last being SPDY tunnelled in
/// WebSocket messages, as client-go does it.
pub const PORTFORWARD_PROTOCOLS: [&str; 4] = [
    "portforward.k8s.io",
    "v4.portforward.k8s.io",
    "v4.channel.k8s.io",
    TUNNELED_SPDY,
];

/// client-go's SPDY-over-WebSocket port-forward subprotocol.
pub const TUNNELED_SPDY: &str = "SPDY/3.1+portforward.k8s.io";

/// The protocol's version number: `v4.channel.k8s.io` is 4, `channel.k8s.io` 1.
fn version(protocol: &str) -> u8 {
    protocol
        .strip_prefix('v')
        .and_then(|p| p.split('.').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(1)
}
