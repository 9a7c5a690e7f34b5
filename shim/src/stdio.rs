//! Process stdio beyond plain files: FIFOs given in task requests (containerd's way of
//! handing a process its stdin, stdout and stderr), terminals (the OCI runtime passes the
//! pty master back over a console socket), and attach: more readers of a container's output
//! while it also goes to the CRI log.

use std::fs::File;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::pipe::{Receiver, Sender};

/// How long a write to an attached reader may stall before that reader is dropped.
const ATTACH_STALL: Duration = Duration::from_secs(5);

fn open_nonblocking(path: &str, write: bool, read: bool) -> Result<File> {
    let path = path.strip_prefix("file://").unwrap_or(path);
    File::options()
        .read(read)
        .write(write)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .with_context(|| format!("opening {path}"))
}

/// The read end of a stdin FIFO, blocking, for a child to inherit. Its writer is expected
/// to be open already (else the child reads end-of-file at once).
pub fn fifo_for_child(path: &str) -> Result<std::process::Stdio> {
    let f = open_nonblocking(path, false, true)?;
    nix::fcntl::fcntl(
        &f,
        nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::empty()),
    )?;
    Ok(f.into())
}

/// The read end of a stdin FIFO for the shim to copy from. With `keep_open` the shim is
/// also a writer, so the FIFO never reads end-of-file: a container's stdin outlives each
/// attach client, and ends only by CloseIO.
pub fn fifo_reader(path: &str, keep_open: bool) -> Result<Receiver> {
    let f = open_nonblocking(path, keep_open, true)?;
    Ok(Receiver::from_file_unchecked(f)?)
}

/// How long the shim waits for the reader of an output FIFO to open it.
const FIFO_READER_WAIT: Duration = Duration::from_secs(2);

/// The write end of an output FIFO for the shim to copy into. Its reader (podrund, or
/// containerd) opens it around the same time: an open before the reader's fails with
/// ENXIO and is retried for a short while, as containerd's own shim blocks on it.
pub fn fifo_writer(path: &str) -> Result<Sender> {
    let deadline = std::time::Instant::now() + FIFO_READER_WAIT;
    loop {
        match open_nonblocking(path, true, false) {
            Err(e)
                if std::time::Instant::now() < deadline
                    && e.downcast_ref::<std::io::Error>()
                        .is_some_and(|io| io.raw_os_error() == Some(libc::ENXIO)) =>
            {
                std::thread::sleep(Duration::from_millis(5))
            }
            opened => return Ok(Sender::from_file_unchecked(opened?)?),
        }
    }
}

/// A pty master (or pipe) end, non-blocking, as an async reader and writer.
pub fn split(fd: &OwnedFd) -> Result<(Receiver, Sender)> {
    nix::fcntl::fcntl(
        fd,
        nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
    )?;
    let r = File::from(fd.try_clone()?);
    let w = File::from(fd.try_clone()?);
    Ok((
        Receiver::from_file_unchecked(r)?,
        Sender::from_file_unchecked(w)?,
    ))
}

/// Copies `from` into `to` until `from` ends (end-of-file, or EIO once a pty's last user
/// has gone) or `to` fails.
pub async fn copy(mut from: Receiver, mut to: Sender) {
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

/// Whether a process's output copiers have finished: its exit is reported only after that
/// (bounded), so a client that stops reading at the exit loses nothing.
#[derive(Clone)]
pub struct IoDone(tokio::sync::watch::Receiver<bool>);

impl IoDone {
    /// Done once every one of `copiers` has ended.
    pub fn after(copiers: Vec<tokio::task::JoinHandle<()>>) -> IoDone {
        let (tx, rx) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            for c in copiers {
                let _ = c.await;
            }
            let _ = tx.send(true);
        });
        IoDone(rx)
    }

    /// Waits for the copiers, for at most `limit` (something the process left running may
    /// hold its output open).
    pub async fn wait(mut self, limit: Duration) {
        let _ = tokio::time::timeout(limit, self.0.wait_for(|done| *done)).await;
    }
}

/// Sets a terminal's window size.
pub fn resize(master: &OwnedFd, width: u32, height: u32) -> Result<()> {
    let size = libc::winsize {
        ws_row: height.min(u16::MAX as u32) as u16,
        ws_col: width.min(u16::MAX as u32) as u16,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads one winsize from the pointer, which outlives the call.
    if unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &size) } != 0 {
        bail!("TIOCSWINSZ: {}", std::io::Error::last_os_error());
    }
    Ok(())
}

/// A unix socket the OCI runtime sends a new terminal's master to (`--console-socket`).
pub struct ConsoleSocket {
    pub path: PathBuf,
    listener: UnixListener,
}

impl ConsoleSocket {
    pub fn new() -> Result<ConsoleSocket> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        // Short and private: socket paths are limited to 108 bytes, bundles can be long.
        let path = std::env::temp_dir().join(format!(
            "podrun-pty-{}-{}.sock",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path).with_context(|| format!("binding {path:?}"))?;
        Ok(ConsoleSocket { path, listener })
    }

    /// The master the runtime sent. Called after the runtime command succeeded, so its
    /// connection is already queued.
    pub fn receive(&self) -> Result<OwnedFd> {
        self.listener.set_nonblocking(true)?;
        let (stream, _) = self
            .listener
            .accept()
            .context("the runtime did not send the terminal")?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        let mut buf = [0u8; 4096];
        let mut iov = [std::io::IoSliceMut::new(&mut buf)];
        let mut space = nix::cmsg_space!([std::os::fd::RawFd; 1]);
        let msg = nix::sys::socket::recvmsg::<()>(
            stream.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            nix::sys::socket::MsgFlags::MSG_CMSG_CLOEXEC,
        )?;
        for cmsg in msg.cmsgs()? {
            if let nix::sys::socket::ControlMessageOwned::ScmRights(fds) = cmsg {
                if let Some(&fd) = fds.first() {
                    // SAFETY: the kernel just installed this fd in our table for us alone.
                    return Ok(unsafe { std::os::fd::FromRawFd::from_raw_fd(fd) });
                }
            }
        }
        bail!("the runtime's console message carried no terminal")
    }
}

impl Drop for ConsoleSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Readers attached to a container's output, each a FIFO opened by podrund.
#[derive(Default)]
pub struct Attached {
    readers: Mutex<Vec<Reader>>,
    /// Streams whose output has ended: a reader added later gets end-of-file at once.
    ended: Mutex<Vec<String>>,
}

struct Reader {
    path: String,
    stream: &'static str,
    out: std::sync::Arc<tokio::sync::Mutex<Sender>>,
}

impl Attached {
    pub fn add(&self, stream: &'static str, path: &str) -> Result<()> {
        let out = fifo_writer(path)?;
        if self
            .ended
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .any(|s| s == stream)
        {
            return Ok(());
        }
        self.lock().push(Reader {
            path: path.to_owned(),
            stream,
            out: std::sync::Arc::new(tokio::sync::Mutex::new(out)),
        });
        Ok(())
    }

    /// Drops every reader of `stream` (its output has ended).
    pub fn close(&self, stream: &str) {
        self.ended
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(stream.to_owned());
        self.lock().retain(|r| r.stream != stream);
    }

    pub fn remove(&self, path: &str) {
        self.lock().retain(|r| r.path != path);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Reader>> {
        self.readers.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Writes `data` to every reader of `stream`; one that is gone or stalls is dropped.
    pub async fn send(&self, stream: &str, data: &[u8]) {
        let readers: Vec<_> = self
            .lock()
            .iter()
            .filter(|r| r.stream == stream)
            .map(|r| (r.path.clone(), r.out.clone()))
            .collect();
        for (path, out) in readers {
            let mut out = out.lock().await;
            let sent = tokio::time::timeout(ATTACH_STALL, out.write_all(data)).await;
            if !matches!(sent, Ok(Ok(()))) {
                drop(out);
                self.remove(&path);
            }
        }
    }
}
