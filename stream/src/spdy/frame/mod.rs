//! SPDY/3.1 frames (draft-mbelshe-httpbis-spdy-00 plus 3.1's session flow control) and
//! their name/value header blocks, zlib-compressed with the protocol's dictionary, one
//! compression context per direction for the whole connection.
//!
//! This module holds the frames and their encoding; `decode` parses them, `headers`
//! compresses and parses header blocks, and `dictionary` is the protocol's zlib dictionary.

mod decode;
mod dictionary;
mod headers;

pub use dictionary::dictionary;
pub use headers::{header, HeaderReader, HeaderWriter, MAX_HEADER_BLOCK};

pub const VERSION: u16 = 3;
pub const FLAG_FIN: u8 = 0x01;
/// Frames longer than this are refused (SPDY allows 2^24-1; Kubernetes never sends big ones).
pub const MAX_FRAME: usize = 1 << 24;

const SYN_STREAM: u16 = 1;
const SYN_REPLY: u16 = 2;
const RST_STREAM: u16 = 3;
const SETTINGS: u16 = 4;
const PING: u16 = 6;
const GOAWAY: u16 = 7;
const HEADERS: u16 = 8;
const WINDOW_UPDATE: u16 = 9;

/// RST_STREAM status codes we send.
pub const RST_PROTOCOL_ERROR: u32 = 1;
pub const RST_REFUSED_STREAM: u32 = 3;
pub const RST_CANCEL: u32 = 5;

pub type Headers = Vec<(String, String)>;

#[derive(Debug, Clone, PartialEq)]
pub enum Frame {
    SynStream {
        id: u32,
        fin: bool,
        headers: Headers,
    },
    SynReply {
        id: u32,
        fin: bool,
        headers: Headers,
    },
    RstStream {
        id: u32,
        status: u32,
    },
    Settings,
    Ping {
        id: u32,
    },
    GoAway {
        last_good: u32,
        status: u32,
    },
    Headers {
        id: u32,
        headers: Headers,
    },
    WindowUpdate {
        id: u32,
        delta: u32,
    },
    Data {
        id: u32,
        fin: bool,
        data: bytes::Bytes,
    },
}

fn err(msg: impl Into<String>) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, msg.into())
}

fn control(kind: u16, flags: u8, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + body.len());
    out.extend_from_slice(&(0x8000 | VERSION).to_be_bytes());
    out.extend_from_slice(&kind.to_be_bytes());
    out.push(flags);
    out.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
    out.extend_from_slice(body);
    out
}

impl Frame {
    /// The frame on the wire; header blocks go through `hw`.
    pub fn encode(&self, hw: &mut HeaderWriter) -> std::io::Result<Vec<u8>> {
        let fin = |f: bool| if f { FLAG_FIN } else { 0 };
        Ok(match self {
            Frame::SynStream {
                id,
                fin: f,
                headers,
            } => {
                let mut body = Vec::new();
                body.extend_from_slice(&(id & 0x7fff_ffff).to_be_bytes());
                body.extend_from_slice(&0u32.to_be_bytes()); // associated-to: none
                body.extend_from_slice(&[0, 0]); // priority, slot
                body.extend(hw.encode(headers)?);
                control(SYN_STREAM, fin(*f), &body)
            }
            Frame::SynReply {
                id,
                fin: f,
                headers,
            } => {
                let mut body = (id & 0x7fff_ffff).to_be_bytes().to_vec();
                body.extend(hw.encode(headers)?);
                control(SYN_REPLY, fin(*f), &body)
            }
            Frame::Headers { id, headers } => {
                let mut body = (id & 0x7fff_ffff).to_be_bytes().to_vec();
                body.extend(hw.encode(headers)?);
                control(HEADERS, 0, &body)
            }
            Frame::RstStream { id, status } => {
                let mut body = (id & 0x7fff_ffff).to_be_bytes().to_vec();
                body.extend_from_slice(&status.to_be_bytes());
                control(RST_STREAM, 0, &body)
            }
            Frame::Settings => control(SETTINGS, 0, &0u32.to_be_bytes()),
            Frame::Ping { id } => control(PING, 0, &id.to_be_bytes()),
            Frame::GoAway { last_good, status } => {
                let mut body = (last_good & 0x7fff_ffff).to_be_bytes().to_vec();
                body.extend_from_slice(&status.to_be_bytes());
                control(GOAWAY, 0, &body)
            }
            Frame::WindowUpdate { id, delta } => {
                let mut body = (id & 0x7fff_ffff).to_be_bytes().to_vec();
                body.extend_from_slice(&(delta & 0x7fff_ffff).to_be_bytes());
                control(WINDOW_UPDATE, 0, &body)
            }
            Frame::Data { id, fin: f, data } => {
                let mut out = Vec::with_capacity(8 + data.len());
                out.extend_from_slice(&(id & 0x7fff_ffff).to_be_bytes());
                out.push(fin(*f));
                out.extend_from_slice(&(data.len() as u32).to_be_bytes()[1..]);
                out.extend_from_slice(data);
                out
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(frames: Vec<Frame>) {
        let (mut hw, mut hr) = (HeaderWriter::new(), HeaderReader::default());
        for f in frames {
            let wire = f.encode(&mut hw).unwrap();
            let head: [u8; 8] = wire[..8].try_into().unwrap();
            assert_eq!(Frame::length(&head), wire.len() - 8);
            let back = Frame::decode(head, wire[8..].to_vec(), &mut hr).unwrap();
            assert_eq!(back, Some(f));
        }
    }

    #[test]
    fn every_frame_round_trips_with_one_compression_context() {
        let h = |t: &str| {
            vec![
                ("streamtype".to_owned(), t.to_owned()),
                ("port".into(), "80".into()),
            ]
        };
        round_trip(vec![
            Frame::SynStream {
                id: 1,
                fin: false,
                headers: h("error"),
            },
            Frame::SynStream {
                id: 3,
                fin: true,
                headers: h("stdout"),
            },
            Frame::SynReply {
                id: 1,
                fin: false,
                headers: vec![],
            },
            Frame::Headers {
                id: 3,
                headers: h("data"),
            },
            Frame::RstStream {
                id: 3,
                status: RST_CANCEL,
            },
            Frame::Settings,
            Frame::Ping { id: 7 },
            Frame::GoAway {
                last_good: 5,
                status: 0,
            },
            Frame::WindowUpdate {
                id: 1,
                delta: 65536,
            },
            Frame::Data {
                id: 1,
                fin: true,
                data: bytes::Bytes::from_static(b"hello"),
            },
        ]);
    }
}
