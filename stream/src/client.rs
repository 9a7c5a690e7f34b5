//! The client side of exec and attach, as client-go's remotecommand does it: SPDY opens
//! the error stream first, then stdin, stdout, stderr and resize as asked; WebSocket offers
//! v5 and v4 and uses channels. The outcome is read off the error stream.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::http;
use crate::spdy::Connection;
use crate::status::{self, Outcome};
use crate::ws::Channels;
use crate::{version, Options, Pipe, TerminalSize, Transport};

/// A client's session: its streams, and the outcome once the server reports it.
pub struct Session {
    /// Write into it; drop it to close stdin.
    pub stdin: Option<Pipe>,
    pub stdout: Option<Pipe>,
    pub stderr: Option<Pipe>,
    /// Send terminal sizes (with a tty).
    pub resize: Option<mpsc::Sender<TerminalSize>>,
    /// The protocol the server chose.
    pub protocol: String,
    outcome: JoinHandle<Outcome>,
    closer: Closer,
}

enum Closer {
    Spdy(Connection),
    WebSocket(Channels),
}

impl Session {
    /// Waits for the server's report; the connection is closed after it.
    pub async fn outcome(self) -> Outcome {
        let outcome = self
            .outcome
            .await
            .unwrap_or_else(|e| Outcome::Failed(e.to_string()));
        match self.closer {
            Closer::Spdy(conn) => conn.close(Duration::ZERO).await,
            Closer::WebSocket(ch) => ch.close(Duration::ZERO).await,
        }
        outcome
    }
}

fn read_outcome(mut error: Pipe, protocol: &str) -> JoinHandle<Outcome> {
    let v = version(protocol);
    tokio::spawn(async move {
        let mut data = Vec::new();
        match error.read_to_end(&mut data).await {
            Ok(_) => status::decode(&data, v),
            Err(e) => Outcome::Failed(format!("reading the error stream: {e}")),
        }
    })
}

/// Sends each size as the JSON object the resize stream carries.
fn resize_writer(mut pipe: Pipe) -> mpsc::Sender<TerminalSize> {
    let (tx, mut rx) = mpsc::channel::<TerminalSize>(8);
    tokio::spawn(async move {
        while let Some(s) = rx.recv().await {
            let msg = format!(r#"{{"Width":{},"Height":{}}}"#, s.width, s.height);
            if pipe.write_all(msg.as_bytes()).await.is_err() {
                return;
            }
        }
    });
    tx
}

/// Connects to an exec or attach URL.
pub async fn exec(url: &str, transport: Transport, opts: Options) -> std::io::Result<Session> {
    match transport {
        Transport::Spdy => exec_spdy(url, opts).await,
        Transport::WebSocket => exec_websocket(url, opts).await,
    }
}

async fn exec_spdy(url: &str, opts: Options) -> std::io::Result<Session> {
    let offered = [
        "v4.channel.k8s.io",
        "v3.channel.k8s.io",
        "v2.channel.k8s.io",
        "channel.k8s.io",
    ];
    let (tcp, protocol) = http::spdy_connect(url, &offered).await?;
    let (conn, _incoming) = Connection::start(tcp, true);
    let open = |kind: &str| {
        let conn = conn.clone();
        let headers = vec![("streamtype".to_owned(), kind.to_owned())];
        async move { conn.open(headers).await.map(|s| s.io) }
    };
    let error = open("error").await?;
    let pipe = |on: bool, kind: &'static str| {
        let open = &open;
        async move {
            match on {
                true => open(kind).await.map(Some),
                false => Ok(None),
            }
        }
    };
    let stdin = pipe(opts.stdin, "stdin").await?;
    let stdout = pipe(opts.stdout, "stdout").await?;
    let stderr = pipe(opts.stderr && !opts.tty, "stderr").await?;
    let resize = pipe(opts.tty && version(&protocol) >= 3, "resize").await?;
    Ok(Session {
        stdin,
        stdout,
        stderr,
        resize: resize.map(resize_writer),
        outcome: read_outcome(error, &protocol),
        protocol,
        closer: Closer::Spdy(conn),
    })
}

async fn exec_websocket(url: &str, opts: Options) -> std::io::Result<Session> {
    let (ws, protocol) = http::ws_connect(url, "", "v5.channel.k8s.io, v4.channel.k8s.io").await?;
    let mut ch = Channels::start(ws, 5, version(&protocol) >= 5);
    let error = ch
        .take(3)
        .ok_or_else(|| std::io::Error::other("no error channel"))?;
    let resize = (opts.tty && version(&protocol) >= 3)
        .then(|| ch.take(4))
        .flatten();
    Ok(Session {
        stdin: opts.stdin.then(|| ch.take(0)).flatten(),
        stdout: opts.stdout.then(|| ch.take(1)).flatten(),
        stderr: (opts.stderr && !opts.tty).then(|| ch.take(2)).flatten(),
        resize: resize.map(resize_writer),
        outcome: read_outcome(error, &protocol),
        protocol,
        closer: Closer::WebSocket(ch),
    })
}
