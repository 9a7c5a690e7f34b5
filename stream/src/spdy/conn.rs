//! A SPDY/3.1 connection: one task reads frames, one writes them, and each stream is a
//! byte pipe (a `DuplexStream`) for the code that uses it. What the peer sends on a stream
//! comes out of the pipe, ending when the peer half-closes (FIN) or resets it; what is
//! written into the pipe goes out as DATA frames, and closing (dropping) it sends FIN.
//! A peer's SYN_STREAM is answered with SYN_REPLY at once, as kubelet's server does.
//! Received data is acknowledged with WINDOW_UPDATEs for peers that count windows.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream, WriteHalf};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use super::frame::{
    Frame, HeaderReader, HeaderWriter, Headers, RST_PROTOCOL_ERROR, RST_REFUSED_STREAM,
};

/// Bytes a stream buffers between the connection and its user.
const PIPE: usize = 64 * 1024;
/// The largest frame read: real clients send data in pieces of 32 KiB; a bigger one (up
/// to the protocol's 16 MiB) would only make the server allocate for a stranger.
const MAX_FRAME_IN: usize = 1 << 20;
/// Streams one connection may have open at once; more are refused.
const MAX_STREAMS: usize = 256;
/// How long a stream's user may leave its pipe full before the stream is dropped, so
/// that one stalled reader holds up the connection's other streams only that long. Long
/// enough for a slow consumer (`kubectl exec -i ... sh -c 'sleep 20; cat' < big`).
const STALL: Duration = Duration::from_secs(60);
/// How long opening a stream waits for the peer's SYN_REPLY.
const REPLY_TIMEOUT: Duration = Duration::from_secs(30);

/// One stream: the headers it was opened with, and its pipe.
pub struct Stream {
    pub id: u32,
    pub headers: Headers,
    pub io: DuplexStream,
}

enum Out {
    Frame(Frame),
    /// GOAWAY, then close the connection for writing.
    Close,
}

#[derive(Default)]
struct State {
    /// Where a stream's incoming data is written.
    inbound: HashMap<u32, WriteHalf<DuplexStream>>,
    /// The tasks sending each stream's outgoing data.
    pumps: HashMap<u32, JoinHandle<()>>,
    replies: HashMap<u32, oneshot::Sender<()>>,
    next_id: u32,
    last_peer_id: u32,
}

#[derive(Clone)]
pub struct Connection {
    out: mpsc::Sender<Out>,
    state: Arc<Mutex<State>>,
    stall: Duration,
    /// Fires when the peer is gone.
    pub hangup: crate::Hangup,
}

impl Connection {
    /// Runs a connection over `io`. A client numbers its streams odd, a server even. Streams
    /// the peer opens arrive on the receiver.
    pub fn start<T>(io: T, client: bool) -> (Connection, mpsc::Receiver<Stream>)
    where
        T: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        Connection::start_with_stall(io, client, STALL)
    }

    /// `start`, with the time a stalled stream reader is given before its stream is dropped.
    pub fn start_with_stall<T>(
        io: T,
        client: bool,
        stall: Duration,
    ) -> (Connection, mpsc::Receiver<Stream>)
    where
        T: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        let (rd, wr) = tokio::io::split(io);
        // Frames queued for the peer: a peer that stops reading stalls the streams' pumps
        // once this (at most 64 frames of 32 KiB) is full, instead of growing memory.
        let (out, out_rx) = mpsc::channel(64);
        let (accept_tx, accept_rx) = mpsc::channel(16);
        let state = Arc::new(Mutex::new(State {
            next_id: if client { 1 } else { 2 },
            ..Default::default()
        }));
        let (hangup, guard) = crate::Hangup::new();
        let conn = Connection {
            out,
            state,
            hangup,
            stall,
        };
        tokio::spawn(write_loop(wr, out_rx));
        tokio::spawn(conn.clone().read_loop(rd, accept_tx, guard));
        (conn, accept_rx)
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn send(&self, frame: Frame) -> bool {
        self.out.send(Out::Frame(frame)).await.is_ok()
    }

    /// Registers stream `id`: its inbound half, and a task sending what its user writes.
    fn attach(&self, id: u32) -> DuplexStream {
        let (user, ours) = tokio::io::duplex(PIPE);
        let (mut from_user, to_user) = tokio::io::split(ours);
        let out = self.out.clone();
        let pump = tokio::spawn(async move {
            let mut buf = vec![0u8; 32 * 1024];
            loop {
                let (fin, data) = match from_user.read(&mut buf).await {
                    Ok(0) | Err(_) => (true, Bytes::new()),
                    Ok(n) => (false, Bytes::copy_from_slice(&buf[..n])),
                };
                let frame = Frame::Data { id, fin, data };
                if out.send(Out::Frame(frame)).await.is_err() || fin {
                    return;
                }
            }
        });
        let mut st = self.state();
        st.inbound.insert(id, to_user);
        st.pumps.insert(id, pump);
        user
    }

    /// Opens a stream with `headers` and waits for the peer to accept it.
    pub async fn open(&self, headers: Headers) -> std::io::Result<Stream> {
        let (tx, rx) = oneshot::channel();
        let id = {
            let mut st = self.state();
            let id = st.next_id;
            st.next_id += 2;
            st.replies.insert(id, tx);
            id
        };
        let io = self.attach(id);
        let syn = Frame::SynStream {
            id,
            fin: false,
            headers: headers.clone(),
        };
        if !self.send(syn).await {
            return Err(std::io::ErrorKind::BrokenPipe.into());
        }
        match tokio::time::timeout(REPLY_TIMEOUT, rx).await {
            Ok(Ok(())) => Ok(Stream { id, headers, io }),
            Ok(Err(_)) => Err(std::io::Error::new(
                std::io::ErrorKind::ConnectionReset,
                "the peer refused the stream",
            )),
            Err(_) => Err(std::io::ErrorKind::TimedOut.into()),
        }
    }

    /// Lets every stream's remaining output go out (for at most `grace`), then sends GOAWAY
    /// and closes the connection.
    pub async fn close(&self, grace: Duration) {
        let pumps: Vec<_> = self.state().pumps.drain().map(|(_, p)| p).collect();
        let _ = tokio::time::timeout(grace, async {
            for p in pumps {
                let _ = p.await;
            }
        })
        .await;
        let _ = self.out.send(Out::Close).await;
    }

    async fn read_loop<R: AsyncRead + Unpin>(
        self,
        mut rd: R,
        accept: mpsc::Sender<Stream>,
        _hangup: tokio::sync::watch::Sender<()>,
    ) {
        let mut hr = HeaderReader::default();
        loop {
            let mut head = [0u8; 8];
            if rd.read_exact(&mut head).await.is_err() {
                break;
            }
            let len = Frame::length(&head);
            if len > MAX_FRAME_IN {
                tracing::debug!(len, "SPDY frame too large; closing");
                break;
            }
            let mut body = vec![0u8; len];
            if rd.read_exact(&mut body).await.is_err() {
                break;
            }
            let frame = match Frame::decode(head, body, &mut hr) {
                Ok(Some(f)) => f,
                Ok(None) => continue,
                Err(e) => {
                    tracing::debug!(error = %e, "bad SPDY frame; closing");
                    break;
                }
            };
            if !self.handle(frame, &accept).await {
                break;
            }
        }
        // The peer is gone: every stream reads end-of-file (a split half must be shut
        // down: dropping it leaves the pipe open while the other half lives).
        let writers: Vec<_> = {
            let mut st = self.state();
            st.replies.clear();
            st.inbound.drain().map(|(_, w)| w).collect()
        };
        for mut w in writers {
            let _ = w.shutdown().await;
        }
    }

    /// Handles one frame; false ends the connection.
    async fn handle(&self, frame: Frame, accept: &mpsc::Sender<Stream>) -> bool {
        match frame {
            Frame::SynStream { id, fin, headers } => {
                // The peer's streams are numbered upwards, with the peer's parity: an id
                // used before (or out of order) is a protocol error that ends the session.
                let (valid, full) = {
                    let mut st = self.state();
                    let ours = st.next_id % 2;
                    let valid = id > st.last_peer_id && id % 2 != ours;
                    if valid {
                        st.last_peer_id = id;
                    }
                    // A stream is open while its user may still write: its pump runs.
                    st.pumps.retain(|_, p| !p.is_finished());
                    (valid, st.pumps.len() >= MAX_STREAMS)
                };
                if !valid {
                    tracing::debug!(id, "SPDY stream id reused or out of order; closing");
                    let status = RST_PROTOCOL_ERROR;
                    self.send(Frame::RstStream { id, status }).await;
                    return false;
                }
                if full {
                    let status = RST_REFUSED_STREAM;
                    self.send(Frame::RstStream { id, status }).await;
                    return true;
                }
                let io = self.attach(id);
                if fin {
                    self.finish_inbound(id).await;
                }
                let reply = Frame::SynReply {
                    id,
                    fin: false,
                    headers: Vec::new(),
                };
                self.send(reply).await;
                if accept.send(Stream { id, headers, io }).await.is_err() {
                    self.reset(id).await;
                    self.send(Frame::RstStream {
                        id,
                        status: RST_REFUSED_STREAM,
                    })
                    .await;
                }
            }
            Frame::SynReply { id, fin, .. } => {
                if let Some(tx) = self.state().replies.remove(&id) {
                    let _ = tx.send(());
                }
                if fin {
                    self.finish_inbound(id).await;
                }
            }
            Frame::Data { id, fin, data } => {
                let n = data.len() as u32;
                let writer = self.state().inbound.remove(&id);
                if let Some(mut w) = writer {
                    // A user that stopped reading loses what comes after, and once its
                    // pipe has been full for STALL the stream is dropped.
                    match tokio::time::timeout(self.stall, w.write_all(&data)).await {
                        Ok(Ok(())) if !fin => {
                            self.state().inbound.insert(id, w);
                        }
                        Ok(_) => {
                            let _ = w.shutdown().await;
                        }
                        Err(_) => {
                            tracing::debug!(id, "SPDY stream's reader stalled; dropping it");
                            self.reset(id).await;
                            let status = super::frame::RST_CANCEL;
                            self.send(Frame::RstStream { id, status }).await;
                            return true;
                        }
                    }
                }
                if n > 0 {
                    self.send(Frame::WindowUpdate { id, delta: n }).await;
                    self.send(Frame::WindowUpdate { id: 0, delta: n }).await;
                }
            }
            Frame::RstStream { id, .. } => self.reset(id).await,
            Frame::Ping { id } => {
                self.send(Frame::Ping { id }).await;
            }
            Frame::GoAway { .. } => return false,
            Frame::Headers { .. } | Frame::Settings | Frame::WindowUpdate { .. } => {}
        }
        true
    }

    async fn finish_inbound(&self, id: u32) {
        let writer = self.state().inbound.remove(&id);
        if let Some(mut w) = writer {
            let _ = w.shutdown().await;
        }
    }

    /// Drops a stream both ways.
    async fn reset(&self, id: u32) {
        self.finish_inbound(id).await;
        if let Some(p) = self.state().pumps.remove(&id) {
            p.abort();
        }
        self.state().replies.remove(&id);
    }
}

async fn write_loop<W: AsyncWrite + Unpin>(mut wr: W, mut rx: mpsc::Receiver<Out>) {
    let mut hw = HeaderWriter::new();
    while let Some(out) = rx.recv().await {
        let frame = match out {
            Out::Frame(f) => f,
            Out::Close => {
                let goaway = Frame::GoAway {
                    last_good: 0,
                    status: 0,
                };
                if let Ok(bytes) = goaway.encode(&mut hw) {
                    let _ = wr.write_all(&bytes).await;
                }
                break;
            }
        };
        let Ok(bytes) = frame.encode(&mut hw) else {
            break;
        };
        if wr.write_all(&bytes).await.is_err() {
            break;
        }
        // Write whatever else is queued before flushing.
        if rx.is_empty() && wr.flush().await.is_err() {
            break;
        }
    }
    let _ = wr.flush().await;
    let _ = wr.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn streams_carry_data_both_ways_and_fin_ends_them() {
        let (a, b) = tokio::io::duplex(1 << 16);
        let (client, _) = Connection::start(a, true);
        let (_server, mut incoming) = Connection::start(b, false);
        let headers = vec![("streamtype".to_owned(), "stdin".to_owned())];
        let open = tokio::spawn({
            let client = client.clone();
            async move { client.open(headers).await }
        });
        let mut theirs = incoming.recv().await.unwrap();
        let mut ours = open.await.unwrap().unwrap();
        assert_eq!(
            super::super::frame::header(&theirs.headers, "streamType"),
            Some("stdin")
        );
        ours.io.write_all(b"ping").await.unwrap();
        let mut buf = [0u8; 4];
        theirs.io.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"ping");
        theirs.io.write_all(b"pong").await.unwrap();
        drop(theirs);
        let mut back = Vec::new();
        ours.io.read_to_end(&mut back).await.unwrap();
        assert_eq!(back, b"pong");
    }

    /// A raw peer: frames written by hand to a server connection, which must cope.
    async fn hostile_peer() -> (
        tokio::io::DuplexStream,
        HeaderWriter,
        Connection,
        mpsc::Receiver<Stream>,
    ) {
        let (a, b) = tokio::io::duplex(1 << 20);
        let (server, incoming) = Connection::start_with_stall(b, false, TEST_STALL);
        (a, HeaderWriter::new(), server, incoming)
    }

    const TEST_STALL: Duration = Duration::from_secs(2);

    fn syn(id: u32, value: &str) -> Frame {
        Frame::SynStream {
            id,
            fin: false,
            headers: vec![("streamtype".to_owned(), value.to_owned())],
        }
    }

    #[tokio::test]
    async fn a_reused_stream_id_ends_the_session_and_leaks_no_stream() {
        let (mut peer, mut hw, mut server, mut incoming) = hostile_peer().await;
        peer.write_all(&syn(1, "stdin").encode(&mut hw).unwrap())
            .await
            .unwrap();
        let first = incoming.recv().await.expect("the first stream");
        peer.write_all(&syn(1, "stdout").encode(&mut hw).unwrap())
            .await
            .unwrap();
        tokio::time::timeout(Duration::from_secs(5), server.hangup.wait())
            .await
            .expect("the session ends");
        let mut io = first.io;
        let mut rest = Vec::new();
        io.read_to_end(&mut rest).await.unwrap();
        assert!(incoming.recv().await.is_none(), "no second stream");
        assert!(server.state().inbound.is_empty());
    }

    #[tokio::test]
    async fn a_header_zlib_bomb_ends_the_session_without_inflating_it() {
        let (mut peer, mut hw, mut server, mut incoming) = hostile_peer().await;
        // 64 MiB of one byte compresses to a few KiB with the header dictionary.
        let bomb = "a".repeat(64 << 20);
        let frame = syn(1, &bomb).encode(&mut hw).unwrap();
        assert!(frame.len() < MAX_FRAME_IN, "{}", frame.len());
        peer.write_all(&frame).await.unwrap();
        tokio::time::timeout(Duration::from_secs(5), server.hangup.wait())
            .await
            .expect("the session ends");
        assert!(incoming.recv().await.is_none());
    }

    #[tokio::test]
    async fn streams_that_ended_do_not_count_against_the_limit() {
        let (mut peer, mut hw, _server, mut incoming) = hostile_peer().await;
        let mut buf = vec![0u8; 1 << 16];
        for i in 0..(MAX_STREAMS as u32 + 50) {
            let id = 2 * i + 1;
            peer.write_all(&syn(id, "data").encode(&mut hw).unwrap())
                .await
                .unwrap();
            let stream = tokio::time::timeout(Duration::from_secs(5), incoming.recv())
                .await
                .unwrap_or_else(|_| panic!("stream {i} was not accepted"))
                .unwrap();
            drop(stream); // its user is done: the pump sends FIN and ends
                          // Read what the server sent (SYN_REPLY, FIN) so its writes never block.
            let _ = tokio::time::timeout(Duration::from_millis(20), peer.read(&mut buf)).await;
        }
    }

    #[tokio::test]
    async fn a_stalled_reader_is_dropped_and_the_other_streams_go_on() {
        let (mut peer, mut hw, _server, mut incoming) = hostile_peer().await;
        peer.write_all(&syn(1, "stdin").encode(&mut hw).unwrap())
            .await
            .unwrap();
        let _stalled = incoming.recv().await.unwrap(); // never read
        peer.write_all(&syn(3, "stdin").encode(&mut hw).unwrap())
            .await
            .unwrap();
        let mut live = incoming.recv().await.unwrap();
        let chunk = Bytes::from(vec![0u8; 32 * 1024]);
        for _ in 0..4 {
            let data = Frame::Data {
                id: 1,
                fin: false,
                data: chunk.clone(),
            };
            peer.write_all(&data.encode(&mut hw).unwrap())
                .await
                .unwrap();
        }
        let data = Frame::Data {
            id: 3,
            fin: false,
            data: Bytes::from_static(b"still here"),
        };
        peer.write_all(&data.encode(&mut hw).unwrap())
            .await
            .unwrap();
        let mut buf = [0u8; 10];
        tokio::time::timeout(TEST_STALL * 5, live.io.read_exact(&mut buf))
            .await
            .expect("the live stream gets its data once the stalled one is dropped")
            .unwrap();
        assert_eq!(&buf, b"still here");
    }
}
