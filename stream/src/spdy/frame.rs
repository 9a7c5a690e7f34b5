//! SPDY/3.1 frames (draft-mbelshe-httpbis-spdy-00 plus 3.1's session flow control) and
//! their name/value header blocks, zlib-compressed with the protocol's dictionary, one
//! compression context per direction for the whole connection.

use std::sync::OnceLock;

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

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

/// The SPDY/3 header compression dictionary: length-prefixed common header names and
/// values, then a run of common status lines, dates and media types (1423 bytes).
pub fn dictionary() -> &'static [u8] {
    static DICT: OnceLock<Vec<u8>> = OnceLock::new();
    DICT.get_or_init(|| {
        const WORDS: &[&str] = &[
            "options",
            "head",
            "post",
            "put",
            "delete",
            "trace",
            "accept",
            "accept-charset",
            "accept-encoding",
            "accept-language",
            "accept-ranges",
            "age",
            "allow",
            "authorization",
            "cache-control",
            "connection",
            "content-base",
            "content-encoding",
            "content-language",
            "content-length",
            "content-location",
            "content-md5",
            "content-range",
            "content-type",
            "date",
            "etag",
            "expect",
            "expires",
            "from",
            "host",
            "if-match",
            "if-modified-since",
            "if-none-match",
            "if-range",
            "if-unmodified-since",
            "last-modified",
            "location",
            "max-forwards",
            "pragma",
            "proxy-authenticate",
            "proxy-authorization",
            "range",
            "referer",
            "retry-after",
            "server",
            "te",
            "trailer",
            "transfer-encoding",
            "upgrade",
            "user-agent",
            "vary",
            "via",
            "warning",
            "www-authenticate",
            "method",
            "get",
            "status",
            "200 OK",
            "version",
            "HTTP/1.1",
            "url",
            "public",
            "set-cookie",
            "keep-alive",
            "origin",
        ];
        const TAIL: &str = concat!(
            "100101201202205206300302303304305306307402405406407408409410411412413414415416417",
            "502504505203 Non-Authoritative Information204 No Content301 Moved Permanently",
            "400 Bad Request401 Unauthorized403 Forbidden404 Not Found500 Internal Server Error",
            "501 Not Implemented503 Service UnavailableJan Feb Mar Apr May Jun Jul Aug Sept Oct ",
            "Nov Dec 00:00:00 Mon, Tue, Wed, Thu, Fri, Sat, Sun, GMTchunked,text/html,image/png,",
            "image/jpg,image/gif,application/xml,application/xhtml+xml,text/plain,",
            "text/javascript,publicprivatemax-age=gzip,deflate,sdchcharset=utf-8charset=",
            "iso-8859-1,utf-,*,enq=0.",
        );
        let mut d = Vec::with_capacity(1423);
        for w in WORDS {
            d.extend_from_slice(&(w.len() as u32).to_be_bytes());
            d.extend_from_slice(w.as_bytes());
        }
        d.extend_from_slice(TAIL.as_bytes());
        d
    })
}

fn err(msg: impl Into<String>) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, msg.into())
}

/// Compresses header blocks for one direction of a connection.
pub struct HeaderWriter(Compress);

impl HeaderWriter {
    pub fn new() -> HeaderWriter {
        let mut c = Compress::new(Compression::default(), true);
        // Cannot fail on a fresh stream.
        let _ = c.set_dictionary(dictionary());
        HeaderWriter(c)
    }

    pub fn encode(&mut self, headers: &Headers) -> std::io::Result<Vec<u8>> {
        let mut raw = Vec::new();
        raw.extend_from_slice(&(headers.len() as u32).to_be_bytes());
        for (k, v) in headers {
            let k = k.to_ascii_lowercase();
            raw.extend_from_slice(&(k.len() as u32).to_be_bytes());
            raw.extend_from_slice(k.as_bytes());
            raw.extend_from_slice(&(v.len() as u32).to_be_bytes());
            raw.extend_from_slice(v.as_bytes());
        }
        let mut out = Vec::with_capacity(raw.len() + 64);
        let mut input = &raw[..];
        loop {
            out.reserve(256);
            let before = self.0.total_in();
            self.0
                .compress_vec(input, &mut out, FlushCompress::Sync)
                .map_err(|e| err(format!("compressing headers: {e}")))?;
            input = &input[(self.0.total_in() - before) as usize..];
            // A sync flush is complete once all input is in and output space is left over.
            if input.is_empty() && out.len() < out.capacity() {
                return Ok(out);
            }
        }
    }
}

impl Default for HeaderWriter {
    fn default() -> Self {
        HeaderWriter::new()
    }
}

/// Decompresses header blocks for one direction of a connection.
pub struct HeaderReader(Decompress);

impl Default for HeaderReader {
    fn default() -> Self {
        HeaderReader(Decompress::new(true))
    }
}

/// The most a header block may inflate to: real ones are a few hundred bytes, and a
/// zlib bomb must not make the server allocate without limit.
pub const MAX_HEADER_BLOCK: usize = 64 * 1024;

impl HeaderReader {
    pub fn decode(&mut self, block: &[u8]) -> std::io::Result<Headers> {
        let mut out = Vec::with_capacity((block.len() * 4 + 64).min(MAX_HEADER_BLOCK));
        let mut input = block;
        loop {
            if out.len() >= MAX_HEADER_BLOCK {
                return Err(err(format!(
                    "header block inflates past {MAX_HEADER_BLOCK} bytes"
                )));
            }
            out.reserve(1024);
            let before = self.0.total_in();
            let result = self
                .0
                .decompress_vec(input, &mut out, FlushDecompress::Sync);
            input = &input[(self.0.total_in() - before) as usize..];
            match result {
                Ok(Status::StreamEnd) => break,
                Ok(_) if input.is_empty() && out.len() < out.capacity() => break,
                Ok(_) => {}
                Err(e) if e.needs_dictionary().is_some() => {
                    self.0
                        .set_dictionary(dictionary())
                        .map_err(|e| err(format!("header dictionary: {e}")))?;
                }
                Err(e) => return Err(err(format!("decompressing headers: {e}"))),
            }
        }
        parse_block(&out)
    }
}

/// Reads a header block's length-prefixed fields in order.
struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn take(&mut self, len: usize) -> std::io::Result<&'a [u8]> {
        if self.0.len() < len {
            return Err(err("header block truncated"));
        }
        let (head, rest) = self.0.split_at(len);
        self.0 = rest;
        Ok(head)
    }

    fn number(&mut self) -> std::io::Result<usize> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize)
    }

    fn text(&mut self) -> std::io::Result<String> {
        let len = self.number()?;
        Ok(String::from_utf8_lossy(self.take(len)?).into_owned())
    }
}

/// The most headers a block may carry once NUL-separated values are split out.
const MAX_HEADERS: usize = 256;

fn parse_block(raw: &[u8]) -> std::io::Result<Headers> {
    let mut c = Cursor(raw);
    let count = c.number()?;
    let mut headers = Vec::with_capacity(count.min(64));
    let mut size = 0usize;
    for _ in 0..count {
        let k = c.text()?;
        let v = c.text()?;
        // Several values of one name travel NUL-separated; each copy of the name counts,
        // so a block of NULs cannot multiply into more than the bound.
        for v in v.split('\0') {
            size += k.len() + v.len();
            if headers.len() >= MAX_HEADERS || size > MAX_HEADER_BLOCK {
                return Err(err("header block holds too many or too large headers"));
            }
            headers.push((k.clone(), v.to_owned()));
        }
    }
    Ok(headers)
}

/// The first value of header `name` (names are lowercase on the wire).
pub fn header<'a>(headers: &'a Headers, name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
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

    #[test]
    fn nul_separated_values_cannot_multiply_a_block() {
        let mut hw = HeaderWriter::new();
        let value = "\0".repeat(60_000);
        let block = hw.encode(&vec![("k".repeat(1000), value)]).unwrap();
        let err = HeaderReader::default().decode(&block).unwrap_err();
        assert!(err.to_string().contains("too many"), "{err}");
    }

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

    #[test]
    fn the_dictionary_is_spdy3s() {
        let d = dictionary();
        assert_eq!(d.len(), 1423);
        assert_eq!(&d[..11], b"\0\0\0\x07options");
        assert!(d.ends_with(b"utf-,*,enq=0."));
    }

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

    #[test]
    fn a_header_block_made_by_plain_zlib_with_the_dictionary_decodes() {
        // What any zlib (Go's compress/zlib in spdystream) makes: a fresh stream, the
        // dictionary set, a sync flush per block.
        let mut raw = Vec::new();
        raw.extend_from_slice(&1u32.to_be_bytes());
        for s in ["streamtype", "stdin"] {
            raw.extend_from_slice(&(s.len() as u32).to_be_bytes());
            raw.extend_from_slice(s.as_bytes());
        }
        let mut c = Compress::new(Compression::best(), true);
        c.set_dictionary(dictionary()).unwrap();
        let mut out = Vec::with_capacity(256);
        c.compress_vec(&raw, &mut out, FlushCompress::Sync).unwrap();
        let headers = HeaderReader::default().decode(&out).unwrap();
        assert_eq!(header(&headers, "StreamType"), Some("stdin"));
    }
}
