//! Starting a pod's shim and talking to it over containerd's shim v2 Task API (ttrpc).
//!
//! podrund does what a shim's own `start` command does, minus one exec: it binds the
//! shim's socket, starts the shim (which makes a session of its own) with that socket as
//! its stdin (where inetd-style servers take theirs; containerd hands it over as fd 3, which
//! would cost a fork of podrund instead of a `posix_spawn`), and can connect at once,
//! since the kernel queues connections on a listening socket before the shim accepts them.
//! The shim outlives podrund; podrund reaps it while both are alive.

use std::os::fd::OwnedFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use containerd_shim_protos::api;
use containerd_shim_protos::shim_async::{Client, TaskClient};
use containerd_shim_protos::ttrpc::context;

use crate::binaries::Binaries;
use crate::error::{Error, Result};
use crate::store::ProcessId;

/// Tells the shim which fd its listening socket is (containerd's convention, fd 3, when
/// unset).
pub use podrun_core::SHIM_LISTENER_ENV as LISTENER_ENV;

/// How long one shim call may take before podrund gives up on the shim.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// Starts the shim binary for pod `id`, serving on `socket`; its stderr goes to `log`.
/// It runs the `pause` binary podrund chose.
pub fn spawn(
    binaries: &Binaries,
    id: &str,
    socket: &Path,
    log: &Path,
    daemon_address: &Path,
) -> Result<ProcessId> {
    let shim = binaries
        .shim
        .as_deref()
        .map_err(|e| Error::FailedPrecondition(e.clone()))?;
    let pause = binaries
        .pause
        .as_deref()
        .map_err(|e| Error::FailedPrecondition(e.clone()))?;
    if let Some(dir) = socket.parent() {
        std::fs::create_dir_all(dir).map_err(Error::io("creating", dir))?;
    }
    let _ = std::fs::remove_file(socket);
    let listener = UnixListener::bind(socket).map_err(Error::io("binding shim socket", socket))?;
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o600))
        .map_err(Error::io("chmod", socket))?;
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(Error::io("opening", log))?;
    let mut cmd = tokio::process::Command::new(shim);
    cmd.args(["-namespace", "k8s.io", "-id", id, "-address"])
        .arg(daemon_address)
        .env_clear()
        .env("PODRUN_PAUSE", pause)
        .env(LISTENER_ENV, "0")
        .env(
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        )
        .stdin(OwnedFd::from(listener))
        .stdout(Stdio::null())
        .stderr(log);
    // No `pre_exec` hook and no working directory (the shim makes its own session and
    // moves to /): the standard library then spawns with posix_spawn rather than a fork of
    // podrund, which costs milliseconds.
    let child = cmd.spawn().map_err(Error::io("starting shim", shim))?;
    crate::prometheus::shim_started();
    let pid = child.id().unwrap_or_default() as i32;
    // Reap the shim if it exits while we run; after a restart of podrund, init does.
    tokio::spawn(async move {
        let mut child = child;
        let _ = child.wait().await;
    });
    ProcessId::of(pid).ok_or_else(|| Error::Shim {
        pod: id.to_owned(),
        message: "exited at once; see its log".into(),
    })
}

/// A connection to one pod's shim.
#[derive(Clone)]
pub struct Shim {
    pod: String,
    client: TaskClient,
}

fn ctx() -> context::Context {
    context::with_timeout(CALL_TIMEOUT.as_nanos() as i64)
}

impl Shim {
    pub async fn connect(pod: &str, socket: &Path) -> Result<Shim> {
        let address = format!("unix://{}", socket.display());
        let client = tokio::time::timeout(CALL_TIMEOUT, Client::connect(&address))
            .await
            .map_err(|_| Error::Shim {
                pod: pod.to_owned(),
                message: format!("connecting to {address} timed out"),
            })?
            .map_err(|e| Error::Shim {
                pod: pod.to_owned(),
                message: format!("connecting to {address}: {e}"),
            })?;
        Ok(Shim {
            pod: pod.to_owned(),
            client: TaskClient::new(client),
        })
    }

    /// Maps a failed call; the shim's NOT_FOUND (no such task or exec) is a NotFound.
    fn err(&self, call: &str) -> impl FnOnce(containerd_shim_protos::ttrpc::Error) -> Error + '_ {
        let call = call.to_owned();
        move |e| match is_not_found(&e) {
            true => Error::NotFound {
                what: "shim task",
                id: format!("{} ({call}: {e})", self.pod),
            },
            false => Error::Shim {
                pod: self.pod.clone(),
                message: format!("{call}: {e}"),
            },
        }
    }

    /// Creates and starts task `id` from the bundle at `bundle`; returns its pid.
    pub async fn create_and_start(&self, id: &str, bundle: &Path) -> Result<u32> {
        let create = api::CreateTaskRequest {
            id: id.to_owned(),
            bundle: bundle.display().to_string(),
            ..Default::default()
        };
        self.client
            .create(ctx(), &create)
            .await
            .map_err(self.err("Create"))?;
        let start = api::StartRequest {
            id: id.to_owned(),
            ..Default::default()
        };
        Ok(self
            .client
            .start(ctx(), &start)
            .await
            .map_err(self.err("Start"))?
            .pid)
    }

    /// Creates task `id` (a container) reading `stdin` (a FIFO, or "") with its output
    /// going to `stdout`.
    pub async fn create(&self, id: &str, bundle: &Path, stdin: &str, stdout: &str) -> Result<u32> {
        let req = api::CreateTaskRequest {
            id: id.to_owned(),
            bundle: bundle.display().to_string(),
            stdin: stdin.to_owned(),
            stdout: stdout.to_owned(),
            ..Default::default()
        };
        Ok(self
            .client
            .create(ctx(), &req)
            .await
            .map_err(self.err("Create"))?
            .pid)
    }

    pub async fn start(&self, id: &str, exec_id: &str) -> Result<u32> {
        let req = api::StartRequest {
            id: id.to_owned(),
            exec_id: exec_id.to_owned(),
            ..Default::default()
        };
        Ok(self
            .client
            .start(ctx(), &req)
            .await
            .map_err(self.err("Start"))?
            .pid)
    }

    pub async fn kill(&self, id: &str, exec_id: &str, signal: i32, all: bool) -> Result<()> {
        let req = api::KillRequest {
            id: id.to_owned(),
            exec_id: exec_id.to_owned(),
            signal: signal as u32,
            all,
            ..Default::default()
        };
        self.client
            .kill(ctx(), &req)
            .await
            .map(drop)
            .map_err(self.err("Kill"))
    }

    /// Waits, without a time limit, for the exit of `id` (or its exec): (status, nanos).
    pub async fn wait(&self, id: &str, exec_id: &str) -> Result<(u32, i64)> {
        let req = api::WaitRequest {
            id: id.to_owned(),
            exec_id: exec_id.to_owned(),
            ..Default::default()
        };
        let resp = self
            .client
            .wait(context::Context::default(), &req)
            .await
            .map_err(self.err("Wait"))?;
        let at = resp
            .exited_at
            .as_ref()
            .map_or(0, |t| t.seconds * 1_000_000_000 + t.nanos as i64);
        Ok((resp.exit_status, at))
    }

    /// Deletes task `id` (or its exec); one already gone is fine.
    pub async fn delete(&self, id: &str, exec_id: &str) -> Result<()> {
        let req = api::DeleteRequest {
            id: id.to_owned(),
            exec_id: exec_id.to_owned(),
            ..Default::default()
        };
        match self
            .client
            .delete(ctx(), &req)
            .await
            .map_err(self.err("Delete"))
        {
            Ok(_) | Err(Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Registers exec `exec_id` in task `id`: `process` is its OCI process spec (JSON),
    /// `stdio` its stdin, stdout and stderr FIFOs ("" for none).
    pub async fn exec(
        &self,
        id: &str,
        exec_id: &str,
        process: Vec<u8>,
        stdio: [&str; 3],
        terminal: bool,
    ) -> Result<()> {
        let [stdin, stdout, stderr] = stdio;
        let mut spec = containerd_shim_protos::protobuf::well_known_types::any::Any::new();
        spec.type_url = "types.containerd.io/opencontainers/runtime-spec/1/Process".into();
        spec.value = process;
        let req = api::ExecProcessRequest {
            id: id.to_owned(),
            exec_id: exec_id.to_owned(),
            stdin: stdin.to_owned(),
            stdout: stdout.to_owned(),
            stderr: stderr.to_owned(),
            terminal,
            spec: containerd_shim_protos::protobuf::MessageField::some(spec),
            ..Default::default()
        };
        self.client
            .exec(ctx(), &req)
            .await
            .map(drop)
            .map_err(self.err("Exec"))
    }

    /// podrun's extension: reopen the CRI log of task `id`.
    pub async fn reopen_log(&self, id: &str) -> Result<()> {
        self.update_annotations(id, &[("io.podrun.reopen-log", "true")])
            .await
    }

    /// podrun's extension: FIFOs that get a copy of task `id`'s stdout and stderr ("" for
    /// none), until `detach`.
    pub async fn attach(&self, id: &str, stdout: &str, stderr: &str) -> Result<()> {
        let paths = [
            ("io.podrun.attach-stdout", stdout),
            ("io.podrun.attach-stderr", stderr),
        ];
        let set: Vec<_> = paths.into_iter().filter(|(_, p)| !p.is_empty()).collect();
        self.update_annotations(id, &set).await
    }

    pub async fn detach(&self, id: &str, path: &str) -> Result<()> {
        self.update_annotations(id, &[("io.podrun.detach", path)])
            .await
    }

    pub async fn resize(&self, id: &str, exec_id: &str, width: u32, height: u32) -> Result<()> {
        let req = api::ResizePtyRequest {
            id: id.to_owned(),
            exec_id: exec_id.to_owned(),
            width,
            height,
            ..Default::default()
        };
        self.client
            .resize_pty(ctx(), &req)
            .await
            .map(drop)
            .map_err(self.err("ResizePty"))
    }

    /// Ends the stdin of task `id` (or its exec).
    pub async fn close_stdin(&self, id: &str, exec_id: &str) -> Result<()> {
        let req = api::CloseIORequest {
            id: id.to_owned(),
            exec_id: exec_id.to_owned(),
            stdin: true,
            ..Default::default()
        };
        self.client
            .close_io(ctx(), &req)
            .await
            .map(drop)
            .map_err(self.err("CloseIO"))
    }

    /// Has the OCI runtime apply `resources` (an OCI LinuxResources) to task `id`.
    pub async fn update_resources(
        &self,
        id: &str,
        resources: &oci_spec::runtime::LinuxResources,
    ) -> Result<()> {
        let value = serde_json::to_vec(resources).map_err(|e| Error::Internal(e.to_string()))?;
        let req = api::UpdateTaskRequest {
            id: id.to_owned(),
            resources: containerd_shim_protos::protobuf::MessageField::some(
                containerd_shim_protos::protobuf::well_known_types::any::Any {
                    type_url: "types.containerd.io/opencontainers/runtime-spec/1/LinuxResources"
                        .into(),
                    value,
                    ..Default::default()
                },
            ),
            ..Default::default()
        };
        self.update(req).await
    }

    async fn update_annotations(&self, id: &str, annotations: &[(&str, &str)]) -> Result<()> {
        let mut req = api::UpdateTaskRequest {
            id: id.to_owned(),
            ..Default::default()
        };
        for (k, v) in annotations {
            req.annotations.insert((*k).into(), (*v).into());
        }
        self.update(req).await
    }

    async fn update(&self, req: api::UpdateTaskRequest) -> Result<()> {
        self.client
            .update(ctx(), &req)
            .await
            .map(drop)
            .map_err(self.err("Update"))
    }

    pub async fn state(&self, id: &str) -> Result<api::StateResponse> {
        let req = api::StateRequest {
            id: id.to_owned(),
            ..Default::default()
        };
        self.client
            .state(ctx(), &req)
            .await
            .map_err(self.err("State"))
    }

    /// SIGKILLs task `id`, waits for its exit and deletes it. A task already gone is fine.
    pub async fn kill_and_delete(&self, id: &str) -> Result<()> {
        match self.kill(id, "", libc::SIGKILL, true).await {
            Err(Error::NotFound { .. }) => return Ok(()),
            other => other?,
        }
        tokio::time::timeout(CALL_TIMEOUT, self.wait(id, ""))
            .await
            .map_err(|_| Error::Shim {
                pod: self.pod.clone(),
                message: format!("Wait for {id} timed out"),
            })??;
        self.delete(id, "").await
    }

    pub async fn shutdown(&self) -> Result<()> {
        let req = api::ShutdownRequest {
            now: true,
            ..Default::default()
        };
        match self.client.shutdown(ctx(), &req).await {
            // The shim may exit before its answer is read.
            Ok(_)
            | Err(containerd_shim_protos::ttrpc::Error::LocalClosed)
            | Err(containerd_shim_protos::ttrpc::Error::RemoteClosed) => Ok(()),
            Err(e) => Err(self.err("Shutdown")(e)),
        }
    }
}

fn is_not_found(e: &containerd_shim_protos::ttrpc::Error) -> bool {
    matches!(e, containerd_shim_protos::ttrpc::Error::RpcStatus(s) if s.code() == containerd_shim_protos::ttrpc::Code::NOT_FOUND)
}

/// Waits up to `limit` for `process` to end, then SIGKILLs it.
pub async fn wait_gone(process: &ProcessId, limit: Duration) {
    let deadline = tokio::time::Instant::now() + limit;
    while process.is_alive() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    process.kill();
}
