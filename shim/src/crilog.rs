//! Container output in the CRI log format kubelet reads:
//! `<RFC3339Nano timestamp> <stdout|stderr> <P|F> <text>\n`, where `F` ends a line and `P`
//! marks a piece of a line that was longer than [`MAX_LINE`] or never ended.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use podrun_core::clock::rfc3339_nano;

use tokio::io::AsyncReadExt;
use tokio::net::unix::pipe::Receiver;

use crate::stdio::Attached;

/// Longest piece written as one record (kubelet and containerd use 16 KiB).
pub const MAX_LINE: usize = 16 * 1024;

/// The log file of one container, shared by its stdout and stderr copiers.
pub struct Log {
    pub path: PathBuf,
    file: Mutex<Option<File>>,
}

impl Log {
    pub fn open(path: PathBuf) -> std::io::Result<Arc<Log>> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let file = OpenOptions::new().create(true).append(true).open(&path)?;
        Ok(Arc::new(Log {
            path,
            file: Mutex::new(Some(file)),
        }))
    }

    /// Closes and reopens the file (the client has renamed the old one).
    pub fn reopen(&self) -> std::io::Result<()> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)?;
        *self.file.lock().unwrap_or_else(|p| p.into_inner()) = Some(file);
        Ok(())
    }

    fn record(&self, stream: &str, tag: char, text: &[u8]) {
        let mut line = Vec::with_capacity(text.len() + 48);
        line.extend_from_slice(
            format!("{} {stream} {tag} ", rfc3339_nano(SystemTime::now())).as_bytes(),
        );
        line.extend_from_slice(text);
        line.push(b'\n');
        if let Some(f) = self.file.lock().unwrap_or_else(|p| p.into_inner()).as_mut() {
            write_whole(f, &line);
        }
    }
}

/// Appends one record, or nothing: when the disk is full (or the write fails otherwise)
/// the record is dropped and any piece of it already written is cut off again, so that
/// the file holds only whole records and the next one after room comes back parses. The
/// container is never held up by its log.
fn write_whole(f: &mut File, record: &[u8]) {
    let mut written = 0;
    while written < record.len() {
        match f.write(&record[written..]) {
            Ok(0) => break,
            Ok(n) => written += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    if written > 0 && written < record.len() {
        if let Ok(meta) = f.metadata() {
            let _ = f.set_len(meta.len().saturating_sub(written as u64));
        }
    }
}

/// Copies one stream (the read end of the container's stdout or stderr pipe, or its
/// terminal) into `log`, if it has one, and to whoever is attached, until the container
/// and everything it started have closed it.
pub async fn copy(
    log: Option<Arc<Log>>,
    stream: &'static str,
    mut reader: Receiver,
    attached: Arc<Attached>,
) {
    let mut pending: Vec<u8> = Vec::new();
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        let n = match reader.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        attached.send(stream, &buf[..n]).await;
        let Some(log) = &log else { continue };
        pending.extend_from_slice(&buf[..n]);
        while let Some(end) = pending.iter().position(|&b| b == b'\n') {
            let rest = pending.split_off(end + 1);
            let mut line = std::mem::replace(&mut pending, rest);
            line.pop();
            for chunk in split_long(&line) {
                log.record(stream, chunk.0, chunk.1);
            }
        }
        while pending.len() >= MAX_LINE {
            let rest = pending.split_off(MAX_LINE);
            log.record(stream, 'P', &pending);
            pending = rest;
        }
    }
    if let Some(log) = log.filter(|_| !pending.is_empty()) {
        log.record(stream, 'P', &pending);
    }
    // Attached readers see end-of-file when the container's output ends.
    attached.close(stream);
}

/// A complete line as records: `P` pieces of MAX_LINE, then the rest as `F`.
fn split_long(line: &[u8]) -> Vec<(char, &[u8])> {
    let mut out: Vec<(char, &[u8])> = line.chunks(MAX_LINE).map(|c| ('P', c)).collect();
    match out.last_mut() {
        Some(last) => last.0 = 'F',
        None => out.push(('F', &[])),
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_lines_are_split_into_partial_records() {
        let line = vec![b'x'; MAX_LINE * 2 + 3];
        let parts = split_long(&line);
        let tags: Vec<char> = parts.iter().map(|p| p.0).collect();
        assert_eq!(tags, ['P', 'P', 'F']);
        assert_eq!(parts[2].1.len(), 3);
        assert_eq!(split_long(b""), vec![('F', &b""[..])]);
    }
}
