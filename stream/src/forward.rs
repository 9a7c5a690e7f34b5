//! Port forwarding. SPDY (`portforward.k8s.io`): the client opens an error stream, then a
//! data stream, with the same `port` and `requestid` headers, for every connection; the
//! server dials the port in the pod and copies. WebSocket (`v4.portforward.k8s.io`): the
//! ports are fixed when connecting, each with a data channel (2i) and an error channel
//! (2i+1), both starting with the port in two little-endian bytes. A port that cannot be
//! reached is reported on that pair's error stream; the session serves on.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::WebSocketStream;

use crate::http::{self, Body};
use crate::spdy::{self, Connection};
use crate::ws::Channels;
use crate::{BoxFuture, Pipe, Transport, PORTFORWARD_PROTOCOLS};

/// Dials a port in the pod: a connection, or why there is none.
pub type Dial = Arc<dyn Fn(u16) -> BoxFuture<Result<TcpStream, String>> + Send + Sync>;

/// Copies both ways between a client's pipe and a connection in the pod. With
/// `half_close` (SPDY, whose streams close each way) it lasts until both ways are done;
/// otherwise (WebSocket channels cannot close one way) it ends when the pod side does.
async fn splice(pipe: Pipe, tcp: TcpStream, half_close: bool) {
    let (mut pr, mut pw) = tokio::io::split(pipe);
    let (mut tr, mut tw) = tcp.into_split();
    let up = async {
        let _ = tokio::io::copy(&mut pr, &mut tw).await;
        let _ = tw.shutdown().await;
    };
    let down = async {
        let _ = tokio::io::copy(&mut tr, &mut pw).await;
        let _ = pw.shutdown().await;
    };
    match half_close {
        true => {
            tokio::join!(up, down);
        }
        false => {
            tokio::pin!(up);
            tokio::select! {
                _ = &mut up => {}
                _ = down => {}
            }
        }
    }
}

/// Answers a port-forward upgrade request; `ports` are the ones the request may use
/// (empty: any, for SPDY; WebSocket then takes the URL's `port` parameters).
pub fn portforward<F>(req: Request<Incoming>, ports: Vec<u16>, dial: F) -> Response<Body>
where
    F: Fn(u16) -> BoxFuture<Result<TcpStream, String>> + Send + Sync + 'static,
{
    let dial: Dial = Arc::new(dial);
    let (websocket, protocol, response) = http::accept(req.headers(), &PORTFORWARD_PROTOCOLS);
    let tunneled = websocket && protocol == crate::TUNNELED_SPDY;
    if response.status() != StatusCode::SWITCHING_PROTOCOLS {
        return response;
    }
    // WebSocket fixes its ports up front: the request's, else the URL's `port` parameters.
    let mut ports = ports;
    if websocket && !tunneled && ports.is_empty() {
        let query = req.uri().query().unwrap_or_default();
        ports = query
            .split('&')
            .filter_map(|kv| kv.strip_prefix("port="))
            .filter_map(|p| p.parse().ok())
            .collect();
        if ports.is_empty() {
            return http::error_response(StatusCode::BAD_REQUEST, "no port to forward");
        }
    }
    tokio::spawn(async move {
        let upgraded = match hyper::upgrade::on(req).await {
            Ok(u) => TokioIo::new(u),
            Err(e) => {
                tracing::info!(error = %e, "port-forward upgrade failed");
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
                match tunneled {
                    true => serve_spdy(crate::ws::tunnel(ws), ports, dial).await,
                    false => serve_websocket(ws, ports, dial).await,
                }
            }
            false => serve_spdy(upgraded, ports, dial).await,
        }
    });
    response
}

async fn serve_spdy<T>(io: T, allowed: Vec<u16>, dial: Dial)
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let (conn, mut incoming) = Connection::start(io, false);
    // Error streams waiting for their data stream, by request id.
    let mut errors: HashMap<String, Pipe> = HashMap::new();
    while let Some(s) = incoming.recv().await {
        let kind = spdy::header(&s.headers, "streamtype")
            .unwrap_or_default()
            .to_owned();
        let request = spdy::header(&s.headers, "requestid")
            .unwrap_or_default()
            .to_owned();
        let port = spdy::header(&s.headers, "port").and_then(|p| p.parse::<u16>().ok());
        match kind.as_str() {
            "error" => {
                errors.insert(request, s.io);
            }
            "data" => {
                let error = errors.remove(&request);
                let dial = dial.clone();
                let allowed = allowed.clone();
                tokio::spawn(async move {
                    let result = match port {
                        Some(p) if allowed.is_empty() || allowed.contains(&p) => dial(p).await,
                        Some(p) => Err(format!("port {p} is not one this request may forward")),
                        None => Err("the data stream names no valid port".to_owned()),
                    };
                    match result {
                        Ok(tcp) => {
                            drop(error);
                            splice(s.io, tcp, true).await
                        }
                        Err(why) => {
                            if let Some(mut e) = error {
                                let _ = e.write_all(why.as_bytes()).await;
                            }
                        }
                    }
                });
            }
            _ => {}
        }
    }
    conn.close(Duration::ZERO).await;
}

async fn serve_websocket<S>(ws: WebSocketStream<S>, ports: Vec<u16>, dial: Dial)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let mut ch = Channels::start(ws, ports.len() * 2, false);
    let mut pairs = Vec::new();
    for (i, port) in ports.iter().enumerate() {
        let (Some(mut data), Some(mut error)) = (ch.take(2 * i), ch.take(2 * i + 1)) else {
            continue;
        };
        let prefix = port.to_le_bytes();
        let dial = dial.clone();
        let port = *port;
        pairs.push(tokio::spawn(async move {
            let _ = data.write_all(&prefix).await;
            let _ = error.write_all(&prefix).await;
            match dial(port).await {
                Ok(tcp) => splice(data, tcp, false).await,
                Err(why) => {
                    let _ = error.write_all(why.as_bytes()).await;
                }
            }
        }));
    }
    let mut hangup = ch.hangup.clone();
    tokio::select! {
        _ = async { for p in pairs { let _ = p.await; } } => {}
        _ = hangup.wait() => {}
    }
    ch.close(Duration::from_secs(1)).await;
}

/// A forwarded connection: its pipe, and what the server said went wrong, if anything.
pub struct Forwarded {
    pub pipe: Pipe,
    pub error: JoinHandle<Option<String>>,
}

/// A client of one port-forward URL.
pub enum PortForwarder {
    /// Any number of connections, to any ports, over one SPDY connection.
    Spdy {
        conn: Connection,
        next: std::sync::atomic::AtomicU32,
    },
    /// The URL's WebSocket carries one connection to each port it was made for.
    WebSocket(tokio::sync::Mutex<Channels>, Vec<u16>),
}

/// The error message of a forwarded connection: what arrives on its error stream after
/// `skip` bytes (a WebSocket channel never ends on its own, so the first message is it).
async fn read_error(mut pipe: Pipe, skip: usize) -> Option<String> {
    let mut data = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match pipe.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => data.extend_from_slice(&buf[..n]),
        }
        if data.len() > skip {
            // The rest of the message, if it came in pieces.
            while let Ok(Ok(n)) =
                tokio::time::timeout(Duration::from_millis(50), pipe.read(&mut buf)).await
            {
                if n == 0 {
                    break;
                }
                data.extend_from_slice(&buf[..n]);
            }
            break;
        }
    }
    let text = String::from_utf8_lossy(data.get(skip..).unwrap_or_default()).into_owned();
    (!text.trim().is_empty()).then_some(text)
}

impl PortForwarder {
    /// Connects; for WebSocket, `ports` are the ports the session forwards.
    pub async fn connect(
        url: &str,
        transport: Transport,
        ports: &[u16],
    ) -> std::io::Result<PortForwarder> {
        match transport {
            Transport::Spdy => {
                let (tcp, _) = http::spdy_connect(url, &["portforward.k8s.io"]).await?;
                let (conn, _incoming) = Connection::start(tcp, true);
                Ok(PortForwarder::Spdy {
                    conn,
                    next: 0.into(),
                })
            }
            Transport::WebSocket => {
                let query: Vec<String> = ports.iter().map(|p| format!("port={p}")).collect();
                let (ws, _) =
                    http::ws_connect(url, &query.join("&"), "v4.portforward.k8s.io").await?;
                let ch = Channels::start(ws, ports.len() * 2, false);
                Ok(PortForwarder::WebSocket(
                    tokio::sync::Mutex::new(ch),
                    ports.to_vec(),
                ))
            }
        }
    }

    /// A connection to `port` in the pod.
    pub async fn open(&self, port: u16) -> std::io::Result<Forwarded> {
        match self {
            PortForwarder::Spdy { conn, next } => {
                let id = next
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
                    .to_string();
                let headers = |kind: &str| {
                    vec![
                        ("streamtype".to_owned(), kind.to_owned()),
                        ("port".to_owned(), port.to_string()),
                        ("requestid".to_owned(), id.clone()),
                    ]
                };
                let error = conn.open(headers("error")).await?;
                let data = conn.open(headers("data")).await?;
                Ok(Forwarded {
                    pipe: data.io,
                    error: tokio::spawn(read_error(error.io, 0)),
                })
            }
            PortForwarder::WebSocket(ch, ports) => {
                let i = ports.iter().position(|p| *p == port).ok_or_else(|| {
                    std::io::Error::other(format!("port {port} was not asked for"))
                })?;
                let mut ch = ch.lock().await;
                let (Some(mut pipe), Some(error)) = (ch.take(2 * i), ch.take(2 * i + 1)) else {
                    return Err(std::io::Error::other(format!(
                        "the connection to port {port} is in use"
                    )));
                };
                let mut prefix = [0u8; 2];
                pipe.read_exact(&mut prefix).await?;
                Ok(Forwarded {
                    pipe,
                    error: tokio::spawn(read_error(error, 2)),
                })
            }
        }
    }

    /// Closes the session.
    pub async fn close(self) {
        match self {
            PortForwarder::Spdy { conn, .. } => conn.close(Duration::ZERO).await,
            PortForwarder::WebSocket(ch, _) => ch.into_inner().close(Duration::ZERO).await,
        }
    }
}
