//! ExecSync: run a command in a running container (its namespaces, user, environment and
//! capabilities, as its own process has them) and return its output and exit code. Output
//! flows through two FIFOs podrund reads, each capped at [`OUTPUT_CAP`]; past the request's
//! timeout the process is killed and the call says it timed out.

use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use podrun_proto::cri;
use tokio::io::AsyncReadExt;

use crate::container::Dirs;
use crate::error::{Error, Result};
use crate::node::Node;
use crate::store;

/// The most of each stream ExecSync returns; the rest is read and dropped.
pub const OUTPUT_CAP: usize = 16 << 20;
/// How long output is still read once the command has exited (the shim has already given
/// it a drain of its own): a child it left running with the pipes open (`sleep 10 &`)
/// cannot hold the answer, which is the command's own exit code.
const DRAIN_AFTER_EXIT: Duration = Duration::from_millis(500);

pub async fn exec_sync(
    node: Arc<Node>,
    req: cri::ExecSyncRequest,
) -> Result<cri::ExecSyncResponse> {
    let r = node.containers.running(&req.container_id)?;
    if req.cmd.is_empty() {
        return Err(Error::invalid("cmd", "must not be empty"));
    }
    let dirs = Dirs::new(&node.config, &r.id);
    let process = process(&dirs, &req.cmd, false)?;
    let exec_id = store::new_id()?[..16].to_owned();
    let (out_path, err_path) = (
        dirs.state.join(format!("exec-{exec_id}.out")),
        dirs.state.join(format!("exec-{exec_id}.err")),
    );
    let shim = super::lifecycle::shim_of(&node, &r.pod_id).await?;
    let result = async {
        let (out, out_hold) = fifo_reader(&out_path)?;
        let (err, err_hold) = fifo_reader(&err_path)?;
        let spec = process.clone();
        let (out_s, err_s) = (out_path.display().to_string(), err_path.display().to_string());
        shim.exec(&r.id, &exec_id, spec, ["", &out_s, &err_s], false).await?;
        shim.start(&r.id, &exec_id).await?;
        // The process holds the write ends now: from here, end-of-file means it is done.
        drop((out_hold, err_hold));
        let (out_buf, err_buf) = (Buffer::default(), Buffer::default());
        let (o, e) = (out_buf.clone(), err_buf.clone());
        let reading = tokio::spawn(async move { tokio::join!(read_capped(out, o), read_capped(err, e)) });
        let waited = match req.timeout {
            t if t > 0 => {
                tokio::time::timeout(Duration::from_secs(t as u64), shim.wait(&r.id, &exec_id))
                    .await
                    .ok()
            }
            _ => Some(shim.wait(&r.id, &exec_id).await),
        };
        let Some(waited) = waited else {
            let _ = shim.kill(&r.id, &exec_id, libc::SIGKILL, false).await;
            let _ = tokio::time::timeout(Duration::from_secs(10), shim.wait(&r.id, &exec_id)).await;
            reading.abort();
            return Err(Error::Timeout {
                what: format!("command {:?} in container {}", req.cmd, r.id),
                secs: req.timeout as u64,
            });
        };
        let (status, _) = waited?;
        // The command is gone; whatever it left running with the pipes open gets a short
        // drain, then the answer is what was read by then.
        let mut reading = reading;
        if tokio::time::timeout(DRAIN_AFTER_EXIT, &mut reading).await.is_err() {
            // Stop reading: the child may hold the pipes for ever.
            reading.abort();
            tracing::info!(container = %r.id, "exec output still open after the command exited; answering with what was read");
        }
        let take = |b: &Buffer| std::mem::take(&mut *b.lock().unwrap_or_else(|p| p.into_inner()));
        Ok(cri::ExecSyncResponse { stdout: take(&out_buf), stderr: take(&err_buf), exit_code: status as i32 })
    }
    .await;
    let _ = shim.delete(&r.id, &exec_id).await;
    let _ = std::fs::remove_file(&out_path);
    let _ = std::fs::remove_file(&err_path);
    result
}

/// The OCI process (JSON) of an exec of `cmd`: the container's own, with these args.
pub(crate) fn process(dirs: &Dirs, cmd: &[String], terminal: bool) -> Result<Vec<u8>> {
    let spec: ::oci_spec::runtime::Spec = store::read_json(&dirs.state.join("config.json"))?;
    let mut process = spec
        .process()
        .clone()
        .ok_or_else(|| Error::Internal("the container's spec has no process".into()))?;
    process
        .set_args(Some(cmd.to_vec()))
        .set_terminal(Some(terminal));
    // A terminal gets a TERM, as kubelet's runtimes give one, unless the container has it.
    let mut env = process.env().clone().unwrap_or_default();
    if terminal && !env.iter().any(|e| e.starts_with("TERM=")) {
        env.push("TERM=xterm".into());
        process.set_env(Some(env));
    }
    serde_json::to_vec(&process).map_err(|e| Error::Internal(e.to_string()))
}

/// Makes a FIFO and opens its read end, plus a write end podrund holds until the process
/// has its own (so that end-of-file is not seen before the process ever opened it).
pub(crate) fn fifo_reader(
    path: &Path,
) -> Result<(tokio::net::unix::pipe::Receiver, std::fs::File)> {
    nix::unistd::mkfifo(path, nix::sys::stat::Mode::from_bits_truncate(0o600))
        .map_err(Error::sys(format!("mkfifo {}", path.display())))?;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(Error::io("opening", path))?;
    let hold = std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(Error::io("opening", path))?;
    let reader = tokio::net::unix::pipe::Receiver::from_file_unchecked(file)
        .map_err(Error::io("registering", path))?;
    Ok((reader, hold))
}

type Buffer = std::sync::Arc<std::sync::Mutex<Vec<u8>>>;

/// Reads until every writer closed, keeping at most OUTPUT_CAP bytes in `out`.
async fn read_capped(mut r: tokio::net::unix::pipe::Receiver, out: Buffer) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match r.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                let mut out = out.lock().unwrap_or_else(|p| p.into_inner());
                let room = OUTPUT_CAP.saturating_sub(out.len());
                out.extend_from_slice(&buf[..n.min(room)]);
            }
        }
    }
}
