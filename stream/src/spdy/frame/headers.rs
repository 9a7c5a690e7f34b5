//! Header blocks: a frame's name/value pairs, zlib-compressed with the protocol's
//! dictionary, one compression context per direction for the whole connection. Blocks come
//! from the peer, so inflating and parsing them is bounded.

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

use super::{dictionary, err, Headers};

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
