//! Reading frames: a frame's body length from its 8-byte head, then the frame from its
//! head and body. Everything here comes from the peer, so every field is bounds-checked
//! and a short or malformed frame is an error, never a panic.

use super::{
    err, Frame, HeaderReader, FLAG_FIN, GOAWAY, HEADERS, PING, RST_STREAM, SETTINGS, SYN_REPLY,
    SYN_STREAM, VERSION, WINDOW_UPDATE,
};

impl Frame {
    /// Parses one frame from its 8-byte head and body; unknown control frames are None.
    pub fn decode(
        head: [u8; 8],
        body: Vec<u8>,
        hr: &mut HeaderReader,
    ) -> std::io::Result<Option<Frame>> {
        let word = |b: &[u8], i: usize| -> std::io::Result<u32> {
            b.get(i..i + 4)
                .map(|w| u32::from_be_bytes([w[0], w[1], w[2], w[3]]))
                .ok_or_else(|| err("frame too short"))
        };
        let flags = head[4];
        let fin = flags & FLAG_FIN != 0;
        if head[0] & 0x80 == 0 {
            let id = u32::from_be_bytes([head[0], head[1], head[2], head[3]]);
            let data = bytes::Bytes::from(body);
            return Ok(Some(Frame::Data { id, fin, data }));
        }
        let version = u16::from_be_bytes([head[0], head[1]]) & 0x7fff;
        if version != VERSION {
            return Err(err(format!("SPDY version {version}, not 3")));
        }
        let id = |b: &[u8]| word(b, 0).map(|w| w & 0x7fff_ffff);
        Ok(Some(match u16::from_be_bytes([head[2], head[3]]) {
            SYN_STREAM => Frame::SynStream {
                id: id(&body)?,
                fin,
                headers: hr.decode(body.get(10..).ok_or_else(|| err("short SYN_STREAM"))?)?,
            },
            SYN_REPLY => Frame::SynReply {
                id: id(&body)?,
                fin,
                headers: hr.decode(body.get(4..).ok_or_else(|| err("short SYN_REPLY"))?)?,
            },
            HEADERS => Frame::Headers {
                id: id(&body)?,
                headers: hr.decode(body.get(4..).ok_or_else(|| err("short HEADERS"))?)?,
            },
            RST_STREAM => Frame::RstStream {
                id: id(&body)?,
                status: word(&body, 4)?,
            },
            SETTINGS => Frame::Settings,
            PING => Frame::Ping {
                id: word(&body, 0)?,
            },
            GOAWAY => Frame::GoAway {
                last_good: id(&body)?,
                status: word(&body, 4).unwrap_or(0),
            },
            WINDOW_UPDATE => Frame::WindowUpdate {
                id: id(&body)?,
                delta: word(&body, 4)? & 0x7fff_ffff,
            },
            _ => return Ok(None),
        }))
    }

    /// The body length a frame head announces.
    pub fn length(head: &[u8; 8]) -> usize {
        u32::from_be_bytes([0, head[5], head[6], head[7]]) as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spdy::frame::{HeaderWriter, MAX_HEADER_BLOCK, RST_CANCEL};

    /// Any byte stream read as frames, with one header context, as a connection reads
    /// them: no panic, no header block past the bound, and every frame re-encodes.
    #[test]
    fn fuzz_spdy_frames() {
        let mut hw = HeaderWriter::new();
        let mut seed = Vec::new();
        for f in [
            Frame::SynStream {
                id: 1,
                fin: false,
                headers: vec![("streamtype".into(), "error".into())],
            },
            Frame::SynReply {
                id: 1,
                fin: false,
                headers: vec![],
            },
            Frame::Data {
                id: 1,
                fin: true,
                data: bytes::Bytes::from_static(b"hello"),
            },
            Frame::WindowUpdate { id: 1, delta: 5 },
            Frame::RstStream {
                id: 3,
                status: RST_CANCEL,
            },
            Frame::Ping { id: 7 },
            Frame::GoAway {
                last_good: 1,
                status: 0,
            },
        ] {
            seed.extend(f.encode(&mut hw).unwrap());
        }
        let tokens: &[&[u8]] = &[
            &[0x80, 3, 0, 1],
            &[0x80, 3, 0, 2],
            &[0xff, 0xff, 0xff],
            &[0, 0, 0, 0],
        ];
        podrun_fuzzkit::fuzz("spdy-frames", &[&seed], tokens, |input| {
            let mut hr = HeaderReader::default();
            let mut rest = input;
            while rest.len() >= 8 {
                let head: [u8; 8] = rest[..8].try_into().unwrap();
                let len = Frame::length(&head).min(rest.len() - 8);
                let body = rest[8..8 + len].to_vec();
                rest = &rest[8 + len..];
                match Frame::decode(head, body, &mut hr) {
                    Ok(Some(frame)) => {
                        if let Frame::SynStream { headers, .. } | Frame::SynReply { headers, .. } =
                            &frame
                        {
                            let size: usize = headers.iter().map(|(k, v)| k.len() + v.len()).sum();
                            assert!(size <= MAX_HEADER_BLOCK, "{size}");
                        }
                        frame.encode(&mut HeaderWriter::new()).unwrap();
                    }
                    Ok(None) => {}
                    Err(_) => break,
                }
            }
        });
    }
}
