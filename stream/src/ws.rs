//! Kubernetes' channel protocols over WebSocket: every binary message starts with a channel
//! byte, and each channel is a byte pipe (a `DuplexStream`) for the code that uses it. In
//! `v5.channel.k8s.io` a message `[255, ch]` closes channel `ch` for writing (how a client
//! says its stdin ended); older versions have no such signal.

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream, WriteHalf};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// Bytes a channel buffers between the socket and its user.
const PIPE: usize = 64 * 1024;
/// v5's "close this channel" message starts with this byte.
const CLOSE_CHANNEL: u8 = 255;

enum Out {
    Message(Message),
    /// Close the WebSocket (after what is queued).
    Close,
}

/// The channels of one WebSocket. Channels taken from `pipes` are the user's; the rest
/// drop what arrives on them.
pub struct Channels {
    pub pipes: Vec<Option<DuplexStream>>,
    /// Fires when the peer is gone.
    pub hangup: crate::Hangup,
    pumps: Vec<JoinHandle<()>>,
    out: mpsc::Sender<Out>,
}

impl Channels {
    /// Runs `n` channels over `ws`. With `v5` (for a client: servers never send it), a user
    /// closing a channel sends its close signal; the peer's close signals always end channels.
    pub fn start<S>(ws: WebSocketStream<S>, n: usize, v5: bool) -> Channels
    where
        S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        let (sink, stream) = ws.split();
        let (out, out_rx) = mpsc::channel(256);
        let mut pipes = Vec::new();
        let mut inbound = Vec::new();
        let mut pumps = Vec::new();
        for ch in 0..n as u8 {
            let (user, ours) = tokio::io::duplex(PIPE);
            let (mut from_user, to_user) = tokio::io::split(ours);
            inbound.push(Some(to_user));
            pipes.push(Some(user));
            let out = out.clone();
            pumps.push(tokio::spawn(async move {
                let mut buf = vec![0u8; 32 * 1024];
                loop {
                    let n = match from_user.read(&mut buf[1..]).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    buf[0] = ch;
                    let msg = Message::Binary(Bytes::copy_from_slice(&buf[..n + 1]));
                    if out.send(Out::Message(msg)).await.is_err() {
                        return;
                    }
                }
                if v5 {
                    let msg = Message::Binary(Bytes::from(vec![CLOSE_CHANNEL, ch]));
                    let _ = out.send(Out::Message(msg)).await;
                }
            }));
        }
        let (hangup, guard) = crate::Hangup::new();
        tokio::spawn(write_loop(sink, out_rx));
        tokio::spawn(read_loop(stream, inbound, out.clone(), guard));
        Channels {
            pipes,
            hangup,
            pumps,
            out,
        }
    }

    pub fn take(&mut self, ch: usize) -> Option<DuplexStream> {
        self.pipes.get_mut(ch).and_then(Option::take)
    }

    /// Lets what users wrote go out (for at most `grace`), then closes the WebSocket.
    pub async fn close(self, grace: std::time::Duration) {
        drop(self.pipes);
        let _ = tokio::time::timeout(grace, async {
            for p in self.pumps {
                let _ = p.await;
            }
        })
        .await;
        let _ = self.out.send(Out::Close).await;
    }
}

async fn write_loop<K>(mut sink: K, mut rx: mpsc::Receiver<Out>)
where
    K: futures_util::Sink<Message> + Unpin,
{
    while let Some(out) = rx.recv().await {
        match out {
            Out::Message(m) => {
                if sink.send(m).await.is_err() {
                    return;
                }
            }
            Out::Close => {
                // A normal closure (1000): clients read it as the end of every channel.
                let frame = tokio_tungstenite::tungstenite::protocol::CloseFrame {
                    code:
                        tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode::Normal,
                    reason: Default::default(),
                };
                let _ = sink.send(Message::Close(Some(frame))).await;
                let _ = sink.close().await;
                return;
            }
        }
    }
}

async fn read_loop<R>(
    mut stream: R,
    mut inbound: Vec<Option<WriteHalf<DuplexStream>>>,
    out: mpsc::Sender<Out>,
    _hangup: tokio::sync::watch::Sender<()>,
) where
    R: futures_util::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    while let Some(Ok(msg)) = stream.next().await {
        let data = match msg {
            Message::Binary(b) => b.to_vec(),
            Message::Text(t) => t.as_bytes().to_vec(),
            Message::Ping(p) => {
                let _ = out.send(Out::Message(Message::Pong(p))).await;
                continue;
            }
            Message::Close(_) => break,
            _ => continue,
        };
        let Some((&ch, payload)) = data.split_first() else {
            continue;
        };
        if ch == CLOSE_CHANNEL {
            if let Some(w) = payload.first().and_then(|c| inbound.get_mut(*c as usize)) {
                if let Some(mut w) = w.take() {
                    let _ = w.shutdown().await;
                }
            }
            continue;
        }
        let Some(slot) = inbound.get_mut(ch as usize) else {
            continue;
        };
        if let Some(w) = slot.as_mut() {
            if w.write_all(payload).await.is_err() {
                *slot = None;
            }
        }
    }
    for w in inbound.iter_mut().filter_map(Option::take) {
        let mut w = w;
        let _ = w.shutdown().await;
    }
}

/// The limits a server puts on what a WebSocket client sends: clients send stdin and
/// port-forward data in pieces of 32 KiB, and must not make the server buffer 64 MiB
/// messages (tungstenite's default).
pub fn server_config() -> tokio_tungstenite::tungstenite::protocol::WebSocketConfig {
    tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
        .max_message_size(Some(1 << 20))
        .max_frame_size(Some(1 << 20))
}

/// A byte stream carried in binary WebSocket messages, as client-go tunnels SPDY
/// (`SPDY/3.1+portforward.k8s.io`): each message is the next piece of the stream.
pub fn tunnel<S>(ws: WebSocketStream<S>) -> DuplexStream
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let (user, ours) = tokio::io::duplex(PIPE);
    let (mut from_user, mut to_user) = tokio::io::split(ours);
    let (mut sink, mut stream) = ws.split();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            let n = match from_user.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let msg = Message::Binary(Bytes::copy_from_slice(&buf[..n]));
            if sink.send(msg).await.is_err() {
                return;
            }
        }
        let _ = sink.send(Message::Close(None)).await;
    });
    tokio::spawn(async move {
        while let Some(Ok(msg)) = stream.next().await {
            let data = match msg {
                Message::Binary(b) => b,
                Message::Close(_) => break,
                _ => continue,
            };
            if to_user.write_all(&data).await.is_err() {
                break;
            }
        }
        let _ = to_user.shutdown().await;
    });
    user
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Any sequence of WebSocket messages into a session's channels: no panic, the read
    /// loop ends with the messages, and each channel's reader sees at most what was sent.
    #[test]
    fn fuzz_websocket_channels() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let seed: &[u8] = &[
            0, 6, 0, b'h', b'e', b'l', b'l', b'o', 0, 3, 4, b'{', b'}', 2, 1, 9, 0, 2, 255, 0, 3, 0,
        ];
        let tokens: &[&[u8]] = &[&[0, 2, 255], &[0, 1, 4], &[3, 0], &[1, 3, 1]];
        podrun_fuzzkit::fuzz("websocket-channels", &[seed], tokens, |input| {
            // kind, length, payload; kind 0 binary, 1 text, 2 ping, 3 close.
            let mut messages = Vec::new();
            let mut rest = input;
            while rest.len() >= 2 {
                let (kind, len) = (rest[0], (rest[1] as usize).min(rest.len() - 2));
                let payload = Bytes::copy_from_slice(&rest[2..2 + len]);
                rest = &rest[2 + len..];
                messages.push(Ok(match kind % 4 {
                    0 => Message::Binary(payload),
                    1 => Message::Text(String::from_utf8_lossy(&payload).into_owned().into()),
                    2 => Message::Ping(payload),
                    _ => Message::Close(None),
                }));
            }
            let sent: usize = messages
                .iter()
                .map(|m| match m {
                    Ok(Message::Binary(b)) => b.len(),
                    Ok(Message::Text(t)) => t.len(),
                    _ => 0,
                })
                .sum();
            rt.block_on(async move {
                let mut inbound = Vec::new();
                let mut readers = Vec::new();
                for _ in 0..5 {
                    let (user, ours) = tokio::io::duplex(1024);
                    let (_, w) = tokio::io::split(ours);
                    inbound.push(Some(w));
                    readers.push(tokio::spawn(async move {
                        let mut user = user;
                        let mut got = Vec::new();
                        let _ = user.read_to_end(&mut got).await;
                        got.len()
                    }));
                }
                let (out, mut out_rx) = mpsc::channel(1024);
                tokio::spawn(async move { while out_rx.recv().await.is_some() {} });
                let (_hangup, guard) = crate::Hangup::new();
                let stream = futures_util::stream::iter(messages);
                tokio::time::timeout(
                    std::time::Duration::from_secs(5),
                    read_loop(stream, inbound, out, guard),
                )
                .await
                .expect("the read loop ends with its input");
                for r in readers {
                    assert!(r.await.unwrap() <= sent);
                }
            });
        });
    }
}
