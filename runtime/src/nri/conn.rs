//! One plugin's connection: NRI's multiplexer over a unix stream, carrying two ttrpc
//! connections. On connection 1 the plugin serves its Plugin service and podrund calls it;
//! on connection 2 podrund serves the Runtime service and the plugin calls it.
//!
//! A mux frame is the connection id and the payload length (both u32, big-endian) and the
//! payload: bytes of that connection's stream. podrund writes frames of at most 4 KiB (Go
//! plugins read them through a 4 KiB buffer and fail on larger ones). A ttrpc message is a
//! 10-byte header (payload length and stream id, u32 big-endian; type, 1 request or 2
//! response; flags) and a protobuf `ttrpc.Request` or `ttrpc.Response`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use podrun_proto::ttrpc;
use prost::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::oneshot;

use crate::error::{Error, Result};

pub const PLUGIN_CONN: u32 = 1;
pub const RUNTIME_CONN: u32 = 2;
const MAX_FRAME: usize = 4096;
/// ttrpc's own limit on a message.
const MAX_MESSAGE: usize = 4 << 20;
const REQUEST: u8 = 1;
const RESPONSE: u8 = 2;

/// A request the plugin made of the Runtime service: method and payload, and where the
/// answer (a payload, or a gRPC status code and message) goes.
pub struct Incoming {
    pub method: String,
    pub payload: Vec<u8>,
    pub answer: oneshot::Sender<std::result::Result<Vec<u8>, (i32, String)>>,
}

type Pending = Arc<Mutex<HashMap<u32, oneshot::Sender<ttrpc::Response>>>>;

pub struct Conn {
    writer: tokio::sync::Mutex<OwnedWriteHalf>,
    pending: Pending,
    next_stream: Mutex<u32>,
    timeout: Duration,
    reader: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Conn {
    /// Starts reading `stream`; the plugin's requests arrive on the returned channel, which
    /// closes when the connection does.
    pub fn start(
        stream: tokio::net::UnixStream,
        timeout: Duration,
    ) -> (Arc<Conn>, tokio::sync::mpsc::Receiver<Incoming>) {
        let (read, write) = stream.into_split();
        let conn = Arc::new(Conn {
            writer: tokio::sync::Mutex::new(write),
            pending: Arc::default(),
            next_stream: Mutex::new(1),
            timeout,
            reader: Mutex::new(None),
        });
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        let reader = conn.clone();
        let task = tokio::spawn(async move {
            if let Err(e) = reader.read_loop(read, tx).await {
                tracing::info!(error = %e, "NRI plugin connection ended");
            }
            // Calls still waiting get no answer: their senders drop with the map.
            reader.forget_pending();
        });
        *conn.reader.lock().unwrap_or_else(|p| p.into_inner()) = Some(task);
        (conn, rx)
    }

    fn forget_pending(&self) {
        self.pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }

    /// Ends the connection: no more reading, and the plugin sees end-of-file.
    pub async fn close(&self) {
        if let Some(task) = self.reader.lock().unwrap_or_else(|p| p.into_inner()).take() {
            task.abort();
        }
        self.forget_pending();
        // A write stuck on a plugin that does not read holds the lock; then the socket
        // closes when the connection is dropped.
        if let Ok(mut writer) = self.writer.try_lock() {
            let _ = writer.shutdown().await;
        }
    }

    /// Calls `method` of the plugin's service; its answer's payload, or an error.
    pub async fn call(&self, method: &str, request: &impl Message) -> Result<Vec<u8>> {
        let id = {
            let mut next = self.next_stream.lock().unwrap_or_else(|p| p.into_inner());
            let id = *next;
            *next = next.wrapping_add(2);
            id
        };
        let (tx, rx) = oneshot::channel();
        self.pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, tx);
        let envelope = ttrpc::Request {
            service: "nri.pkg.api.v1alpha1.Plugin".into(),
            method: method.into(),
            payload: request.encode_to_vec(),
            timeout_nano: self.timeout.as_nanos() as i64,
            metadata: Vec::new(),
        };
        // The whole call, the writing included, is bounded: a plugin that stops reading
        // must not hold up the pod operations that tell it something.
        let exchange = async {
            self.send(PLUGIN_CONN, id, REQUEST, &envelope.encode_to_vec())
                .await?;
            rx.await
                .map_err(|_| Error::Internal(format!("NRI plugin went away during {method}")))
        };
        let answered = tokio::time::timeout(self.timeout, exchange).await;
        if !matches!(answered, Ok(Ok(_))) {
            let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
            pending.remove(&id);
        }
        let response = match answered {
            Ok(result) => result?,
            Err(_) => {
                return Err(Error::Internal(format!(
                    "NRI plugin did not answer {method} within {:?}",
                    self.timeout
                )))
            }
        };
        match response.status {
            Some(s) if s.code != 0 => Err(Error::FailedPrecondition(format!(
                "NRI plugin refused {method}: {} (code {})",
                s.message, s.code
            ))),
            _ => Ok(response.payload),
        }
    }

    async fn answer(&self, stream: u32, answer: std::result::Result<Vec<u8>, (i32, String)>) {
        let response = match answer {
            Ok(payload) => ttrpc::Response {
                status: None,
                payload,
            },
            Err((code, message)) => ttrpc::Response {
                status: Some(ttrpc::Status { code, message }),
                payload: Vec::new(),
            },
        };
        let sent = self
            .send(RUNTIME_CONN, stream, RESPONSE, &response.encode_to_vec())
            .await;
        if let Err(e) = sent {
            tracing::info!(error = %e, "answering an NRI plugin");
        }
    }

    /// One ttrpc message on connection `conn`, cut into mux frames.
    async fn send(&self, conn: u32, stream: u32, kind: u8, payload: &[u8]) -> Result<()> {
        let mut message = Vec::with_capacity(10 + payload.len());
        message.extend((payload.len() as u32).to_be_bytes());
        message.extend(stream.to_be_bytes());
        message.extend([kind, 0]);
        message.extend(payload);
        let mut writer = self.writer.lock().await;
        for chunk in message.chunks(MAX_FRAME) {
            let mut frame = Vec::with_capacity(8 + chunk.len());
            frame.extend(conn.to_be_bytes());
            frame.extend((chunk.len() as u32).to_be_bytes());
            frame.extend(chunk);
            writer
                .write_all(&frame)
                .await
                .map_err(|e| Error::Internal(format!("writing to an NRI plugin: {e}")))?;
        }
        Ok(())
    }

    async fn read_loop(
        self: &Arc<Self>,
        mut read: OwnedReadHalf,
        requests: tokio::sync::mpsc::Sender<Incoming>,
    ) -> std::io::Result<()> {
        // Each connection's bytes, until they make a whole ttrpc message.
        let mut streams: HashMap<u32, Vec<u8>> = HashMap::new();
        loop {
            let mut header = [0u8; 8];
            read.read_exact(&mut header).await?;
            let conn = u32::from_be_bytes(header[..4].try_into().unwrap_or_default());
            let len = u32::from_be_bytes(header[4..].try_into().unwrap_or_default()) as usize;
            if len > MAX_MESSAGE + 10 {
                return Err(std::io::Error::other(format!("mux frame of {len} bytes")));
            }
            let mut payload = vec![0; len];
            read.read_exact(&mut payload).await?;
            if conn != PLUGIN_CONN && conn != RUNTIME_CONN {
                continue;
            }
            let buffer = streams.entry(conn).or_default();
            buffer.extend(payload);
            while buffer.len() >= 10 {
                let size = u32::from_be_bytes(buffer[..4].try_into().unwrap_or_default()) as usize;
                if size > MAX_MESSAGE {
                    return Err(std::io::Error::other(format!(
                        "ttrpc message of {size} bytes"
                    )));
                }
                if buffer.len() < 10 + size {
                    break;
                }
                let stream = u32::from_be_bytes(buffer[4..8].try_into().unwrap_or_default());
                let kind = buffer[8];
                let body: Vec<u8> = buffer.drain(..10 + size).skip(10).collect();
                self.dispatch(conn, stream, kind, &body, &requests).await;
            }
        }
    }

    async fn dispatch(
        self: &Arc<Self>,
        conn: u32,
        stream: u32,
        kind: u8,
        body: &[u8],
        requests: &tokio::sync::mpsc::Sender<Incoming>,
    ) {
        match (conn, kind) {
            (PLUGIN_CONN, RESPONSE) => {
                let waiting = self
                    .pending
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&stream);
                if let (Some(tx), Ok(response)) = (waiting, ttrpc::Response::decode(body)) {
                    let _ = tx.send(response);
                }
            }
            (RUNTIME_CONN, REQUEST) => {
                let Ok(request) = ttrpc::Request::decode(body) else {
                    return;
                };
                let (tx, rx) = oneshot::channel();
                let incoming = Incoming {
                    method: request.method,
                    payload: request.payload,
                    answer: tx,
                };
                if requests.send(incoming).await.is_err() {
                    return;
                }
                let conn = self.clone();
                tokio::spawn(async move {
                    let answer = rx.await.unwrap_or(Err((13, "not answered".into())));
                    conn.answer(stream, answer).await;
                });
            }
            _ => tracing::debug!(conn, kind, "NRI: unexpected ttrpc message dropped"),
        }
    }
}
