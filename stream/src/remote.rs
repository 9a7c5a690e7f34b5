//! The server side of exec and attach (`channel.k8s.io` protocols) over SPDY or WebSocket.
//!
//! SPDY: the client opens one stream per channel, named by its `streamtype` header (error,
//! stdin, stdout, stderr, and from v3 resize); the session starts once every stream the
//! options call for is there. WebSocket: channels 0 stdin, 1 stdout, 2 stderr, 3 error,
//! 4 resize. Either way the session's outcome goes on the error stream, and then the
//! connection is closed.

use std::time::Duration;

use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::WebSocketStream;

use crate::http::{self, Body};
use crate::spdy::{self, Connection};
use crate::status::{self, Outcome};
use crate::ws::Channels;
use crate::{version, BoxFuture, Options, Pipe, Streams, TerminalSize, CHANNEL_PROTOCOLS};

/// How long a client has to open all its streams (kubelet's default).
const STREAM_CREATION_TIMEOUT: Duration = Duration::from_secs(30);
/// How long output may take to drain once the session is over.
const CLOSE_GRACE: Duration = Duration::from_secs(5);

/// Answers an exec or attach upgrade request and, once upgraded, runs `session` with the
/// client's streams and reports its outcome.
pub fn remotecommand<F>(req: Request<Incoming>, opts: Options, session: F) -> Response<Body>
where
    F: FnOnce(Streams) -> BoxFuture<Outcome> + Send + 'static,
{
    let (websocket, protocol, response) = http::accept(req.headers(), &CHANNEL_PROTOCOLS);
    if response.status() != StatusCode::SWITCHING_PROTOCOLS {
        return response;
    }
    tokio::spawn(async move {
        let upgraded = match hyper::upgrade::on(req).await {
            Ok(u) => TokioIo::new(u),
            Err(e) => {
                tracing::info!(error = %e, "streaming upgrade failed");
                return;
            }
        };
        match websocket {
            true => {
                let ws = WebSocketStream::from_raw_socket(
                    upgraded,
                    Role::Server,
                    Some(crate::ws::server_config()),
                )
                .await;
                serve_websocket(ws, protocol, opts, session).await
            }
            false => serve_spdy(upgraded, protocol, opts, session).await,
        }
    });
    response
}

/// Decodes the JSON sizes a resize stream carries, one after another.
fn resizes(mut pipe: Pipe) -> mpsc::Receiver<TerminalSize> {
    let (tx, rx) = mpsc::channel(8);
    tokio::spawn(async move {
        let mut pending = Vec::new();
        let mut buf = [0u8; 1024];
        loop {
            let n = match pipe.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            pending.extend_from_slice(&buf[..n]);
            let mut stream =
                serde_json::Deserializer::from_slice(&pending).into_iter::<serde_json::Value>();
            let mut used = 0;
            while let Some(Ok(v)) = stream.next() {
                used = stream.byte_offset();
                let (w, h) = (v["Width"].as_u64(), v["Height"].as_u64());
                if let (Some(w), Some(h)) = (w, h) {
                    let size = TerminalSize {
                        width: w.min(u16::MAX as u64) as u16,
                        height: h.min(u16::MAX as u64) as u16,
                    };
                    if tx.send(size).await.is_err() {
                        return;
                    }
                }
            }
            pending.drain(..used);
        }
    });
    rx
}

async fn finish(error: Option<Pipe>, outcome: &Outcome, protocol: &str) {
    if let Some(mut e) = error {
        let _ = e
            .write_all(&status::encode(outcome, version(protocol)))
            .await;
        let _ = e.shutdown().await;
    }
}

async fn serve_spdy<T, F>(io: T, protocol: String, opts: Options, session: F)
where
    T: AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
    F: FnOnce(Streams) -> BoxFuture<Outcome>,
{
    let (conn, mut incoming) = Connection::start(io, false);
    let resize_wanted = opts.tty && version(&protocol) >= 3;
    let wanted = |t: &str| match t {
        "error" => true,
        "stdin" => opts.stdin,
        "stdout" => opts.stdout,
        "stderr" => opts.stderr,
        "resize" => resize_wanted,
        _ => false,
    };
    let expected = 1 + [opts.stdin, opts.stdout, opts.stderr, resize_wanted]
        .iter()
        .filter(|b| **b)
        .count();
    let mut got: Vec<(String, Pipe)> = Vec::new();
    let deadline = tokio::time::sleep(STREAM_CREATION_TIMEOUT);
    tokio::pin!(deadline);
    while got.len() < expected {
        tokio::select! {
            s = incoming.recv() => {
                let Some(s) = s else { return };
                let kind = spdy::header(&s.headers, "streamtype").unwrap_or_default().to_owned();
                if wanted(&kind) && !got.iter().any(|(k, _)| *k == kind) {
                    got.push((kind, s.io));
                }
            }
            _ = &mut deadline => {
                tracing::info!("streaming client did not open its streams in time");
                conn.close(Duration::ZERO).await;
                return;
            }
        }
    }
    let mut take = |kind: &str| {
        got.iter()
            .position(|(k, _)| k == kind)
            .map(|i| got.swap_remove(i).1)
    };
    let error = take("error");
    let streams = Streams {
        stdin: take("stdin"),
        stdout: take("stdout"),
        stderr: take("stderr"),
        resize: take("resize").map(resizes),
        protocol: protocol.clone(),
        hangup: conn.hangup.clone(),
    };
    // Streams opened later (none are expected) are refused by dropping them.
    tokio::spawn(async move { while incoming.recv().await.is_some() {} });
    let outcome = session(streams).await;
    finish(error, &outcome, &protocol).await;
    conn.close(CLOSE_GRACE).await;
}

async fn serve_websocket<S, F>(ws: WebSocketStream<S>, protocol: String, opts: Options, session: F)
where
    S: AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
    F: FnOnce(Streams) -> BoxFuture<Outcome>,
{
    let mut ch = Channels::start(ws, 5, false);
    let resize = (opts.tty && version(&protocol) >= 3)
        .then(|| ch.take(4))
        .flatten();
    let streams = Streams {
        stdin: opts.stdin.then(|| ch.take(0)).flatten(),
        stdout: opts.stdout.then(|| ch.take(1)).flatten(),
        stderr: opts.stderr.then(|| ch.take(2)).flatten(),
        resize: resize.map(resizes),
        protocol: protocol.clone(),
        hangup: ch.hangup.clone(),
    };
    let error = ch.take(3);
    let outcome = session(streams).await;
    finish(error, &outcome, &protocol).await;
    ch.close(CLOSE_GRACE).await;
}
