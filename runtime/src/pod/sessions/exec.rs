//! Exec and Attach sessions: the client's streams joined to a process through FIFOs in the
//! container's state dir, which the pod's shim connects to the process (or its terminal).
//!
//! Exec runs a new process and reports its exit code; when the client goes away the
//! process is killed, and either way the exec is deleted from the shim and its FIFOs
//! removed. Once the process has exited its output gets a bounded drain, so something it
//! left running with the pipes open cannot hold the session. Attach joins the container's
//! own stdio (several clients may); it ends when the container's output ends or the
//! client leaves, and `stdin_once` ends the container's stdin with the first client's.

use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use podrun_proto::cri;
use podrun_stream::{Outcome, Pipe, Streams};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::unix::pipe::{Receiver, Sender};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use crate::container::Dirs;
use crate::error::{Error, Result};
use crate::node::Node;
use crate::pod::container::exec::{fifo_reader, process};
use crate::pod::container::lifecycle::shim_of;
use crate::sandbox::shim::Shim;
use crate::store;

/// How long output may still flow once the process (or container output) has ended.
const DRAIN: Duration = Duration::from_secs(2);

fn outcome(result: Result<i32>) -> Outcome {
    match result {
        Ok(code) => Outcome::Exited(code),
        Err(e) => Outcome::Failed(e.to_string()),
    }
}

pub async fn exec(node: Arc<Node>, req: cri::ExecRequest, streams: Streams) -> Outcome {
    outcome(run_exec(node, req, streams).await)
}

pub async fn attach(node: Arc<Node>, req: cri::AttachRequest, streams: Streams) -> Outcome {
    outcome(run_attach(node, req, streams).await)
}

/// Output FIFO paths (stdout, stderr), the (FIFO, client) pairs to copy, and the write ends
/// held until the shim has its own.
type Outputs = ([String; 2], Vec<(Receiver, Pipe)>, Vec<std::fs::File>);

/// FIFOs of one session, removed (and, for attach, detached) when it ends, however it ends.
struct Session {
    shim: Shim,
    container: String,
    /// Set for an exec: killed and deleted at the end.
    exec_id: Option<String>,
    attached: Vec<String>,
    fifos: Vec<PathBuf>,
}

impl Session {
    /// A FIFO `fifo_reader` makes, removed with the session.
    fn output(&mut self, dir: &Path, name: String) -> PathBuf {
        let path = dir.join(name);
        self.fifos.push(path.clone());
        path
    }

    /// FIFOs `<prefix>.out` and `<prefix>.err` for the client's stdout and stderr, opened
    /// for reading: (stdout path, stderr path) ("" for a stream not asked for), the
    /// (FIFO, client) pairs to copy, and the write ends to hold until the shim has its own.
    fn outputs(&mut self, dir: &Path, prefix: &str, streams: &mut Streams) -> Result<Outputs> {
        let (mut paths, mut pairs, mut holds) =
            ([String::new(), String::new()], Vec::new(), Vec::new());
        let wanted = [
            (0, streams.stdout.take(), "out"),
            (1, streams.stderr.take(), "err"),
        ];
        for (i, client, name) in wanted {
            let Some(client) = client else { continue };
            let path = self.output(dir, format!("{prefix}.{name}"));
            let (reader, hold) = fifo_reader(&path)?;
            pairs.push((reader, client));
            holds.push(hold);
            paths[i] = path.display().to_string();
        }
        Ok((paths, pairs, holds))
    }

    fn fifo(&mut self, dir: &Path, name: String) -> Result<PathBuf> {
        let path = dir.join(name);
        nix::unistd::mkfifo(&path, nix::sys::stat::Mode::from_bits_truncate(0o600))
            .map_err(Error::sys(format!("mkfifo {}", path.display())))?;
        self.fifos.push(path.clone());
        Ok(path)
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        let (shim, id, exec_id) = (
            self.shim.clone(),
            self.container.clone(),
            self.exec_id.take(),
        );
        let (attached, fifos) = (
            std::mem::take(&mut self.attached),
            std::mem::take(&mut self.fifos),
        );
        tokio::spawn(async move {
            if let Some(exec_id) = exec_id {
                let _ = shim.kill(&id, &exec_id, libc::SIGKILL, false).await;
                let _ =
                    tokio::time::timeout(Duration::from_secs(10), shim.wait(&id, &exec_id)).await;
                let _ = shim.delete(&id, &exec_id).await;
            }
            for path in attached {
                let _ = shim.detach(&id, &path).await;
            }
            for path in fifos {
                let _ = std::fs::remove_file(path);
            }
        });
    }
}

/// Opens a FIFO for writing into without blocking; with `rdwr` podrund also holds a read
/// end, so the open works before the process has its end.
fn fifo_writer(path: &Path, rdwr: bool) -> Result<Sender> {
    let file = std::fs::OpenOptions::new()
        .write(true)
        .read(rdwr)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(Error::io("opening", path))?;
    Sender::from_file_unchecked(file).map_err(Error::io("registering", path))
}

/// Copies until `from` ends; Err when `to` failed (the client is gone).
async fn pump(
    mut from: impl AsyncRead + Unpin,
    mut to: impl AsyncWrite + Unpin,
) -> std::io::Result<()> {
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        let n = from.read(&mut buf).await?;
        if n == 0 {
            return to.flush().await;
        }
        to.write_all(&buf[..n]).await?;
        to.flush().await?;
    }
}

/// Output copiers (FIFO -> client stream); `gone` fires when one could not write (the
/// client has left).
struct Copiers {
    handles: Vec<JoinHandle<()>>,
    gone: Arc<Notify>,
}

impl Copiers {
    fn start(pairs: Vec<(Receiver, Pipe)>) -> Copiers {
        let gone = Arc::new(Notify::new());
        let handles = pairs
            .into_iter()
            .map(|(from, to)| {
                let gone = gone.clone();
                tokio::spawn(async move {
                    if pump(from, to).await.is_err() {
                        gone.notify_one();
                    }
                })
            })
            .collect();
        Copiers { handles, gone }
    }

    /// Every output has reached its end.
    async fn ended(&mut self) {
        for h in self.handles.iter_mut() {
            let _ = h.await;
        }
    }
}

async fn run_exec(node: Arc<Node>, req: cri::ExecRequest, mut streams: Streams) -> Result<i32> {
    let r = node.containers.running(&req.container_id)?;
    let dirs = Dirs::new(&node.config, &r.id);
    let spec = process(&dirs, &req.cmd, req.tty)?;
    let exec_id = store::new_id()?[..16].to_owned();
    let shim = shim_of(&node, &r.pod_id).await?;
    let mut session = Session {
        shim: shim.clone(),
        container: r.id.clone(),
        exec_id: None,
        attached: Vec::new(),
        fifos: Vec::new(),
    };
    let (mut stdin, mut stdin_path) = (None, String::new());
    if let Some(client) = streams.stdin.take() {
        let path = session.fifo(&dirs.state, format!("exec-{exec_id}.in"))?;
        stdin = Some((client, fifo_writer(&path, true)?));
        stdin_path = path.display().to_string();
    }
    let prefix = format!("exec-{exec_id}");
    let ([out_path, err_path], pairs, holds) =
        session.outputs(&dirs.state, &prefix, &mut streams)?;
    let paths = [stdin_path, out_path, err_path];
    let [i, o, e] = &paths;
    shim.exec(&r.id, &exec_id, spec, [i, o, e], req.tty).await?;
    session.exec_id = Some(exec_id.clone());
    shim.start(&r.id, &exec_id).await?;
    drop(holds);
    let mut copiers = Copiers::start(pairs);
    if let Some((client, fifo)) = stdin {
        // Client end-of-file closes the process's stdin (podrund's is its only writer).
        tokio::spawn(pump(client, fifo));
    }
    if let Some(mut sizes) = streams.resize.take() {
        let (shim, id, exec_id) = (shim.clone(), r.id.clone(), exec_id.clone());
        tokio::spawn(async move {
            while let Some(size) = sizes.recv().await {
                let (w, h) = (size.width as u32, size.height as u32);
                let _ = shim.resize(&id, &exec_id, w, h).await;
            }
        });
    }
    let status = tokio::select! {
        waited = shim.wait(&r.id, &exec_id) => waited?.0,
        _ = copiers.gone.notified() => {
            return Err(Error::FailedPrecondition("the client went away".into()));
        }
        _ = streams.hangup.wait() => {
            return Err(Error::FailedPrecondition("the client went away".into()));
        }
    };
    if tokio::time::timeout(DRAIN, copiers.ended()).await.is_err() {
        tracing::info!(container = %r.id, exec_id, "exec output still open after the process exited; ending the session");
    }
    Ok(status as i32)
}

async fn run_attach(node: Arc<Node>, req: cri::AttachRequest, mut streams: Streams) -> Result<i32> {
    let r = node.containers.running(&req.container_id)?;
    let dirs = Dirs::new(&node.config, &r.id);
    let shim = shim_of(&node, &r.pod_id).await?;
    let n = store::new_id()?[..16].to_owned();
    let mut session = Session {
        shim: shim.clone(),
        container: r.id.clone(),
        exec_id: None,
        attached: Vec::new(),
        fifos: Vec::new(),
    };
    let (paths, pairs, holds) =
        session.outputs(&dirs.state, &format!("attach-{n}"), &mut streams)?;
    shim.attach(&r.id, &paths[0], &paths[1]).await?;
    session.attached = paths.iter().filter(|p| !p.is_empty()).cloned().collect();
    drop(holds);
    let outputs_wanted = !pairs.is_empty();
    let mut copiers = Copiers::start(pairs);
    if let Some(client) = streams.stdin.take() {
        let fifo = fifo_writer(&dirs.state.join("stdin"), false)?;
        let (shim, id, once) = (shim.clone(), r.id.clone(), r.config.stdin_once);
        tokio::spawn(async move {
            let _ = pump(client, fifo).await;
            if once {
                let _ = shim.close_stdin(&id, "").await;
            }
        });
    }
    if let Some(mut sizes) = streams.resize.take() {
        let (shim, id) = (shim.clone(), r.id.clone());
        tokio::spawn(async move {
            while let Some(size) = sizes.recv().await {
                let _ = shim
                    .resize(&id, "", size.width as u32, size.height as u32)
                    .await;
            }
        });
    }
    if !outputs_wanted {
        tokio::select! {
            waited = shim.wait(&r.id, "") => { waited?; }
            _ = streams.hangup.wait() => {}
        }
        return Ok(0);
    }
    // The container's output ending (it exited) ends the session, as does the client.
    let gone = copiers.gone.clone();
    tokio::select! {
        _ = copiers.ended() => Ok(0),
        _ = gone.notified() => Err(Error::FailedPrecondition("the client went away".into())),
        _ = streams.hangup.wait() => Err(Error::FailedPrecondition("the client went away".into())),
    }
}
