//! Create: making a task's init. The built-in pause serves a sandbox whose spec asks for
//! the usual pause; any other task is a container made through its OCI runtime (stdio on
//! pipes, FIFOs or a terminal), on the rootfs the shim mounts for it.

use std::collections::HashMap;
use std::sync::Arc;

use containerd_shim_protos::api;
use containerd_shim_protos::events::task as events;
use containerd_shim_protos::topics;
use containerd_shim_protos::ttrpc;
use podrun_core::oci_config::Spec;
use tokio::net::unix::pipe::{Receiver, Sender};
use tokio::task::AbortHandle;

use super::{internal, lock, status, Proc, Shim, Task, CRI_LOG_SCHEME};
use crate::crilog::{self, Log};
use crate::oci::{self, Runtime, Stdio3};
use crate::reaper::ExitWatch;
use crate::stdio::{self, Attached, ConsoleSocket};

impl Shim {
    pub(super) async fn create_task(
        &self,
        req: api::CreateTaskRequest,
    ) -> ttrpc::Result<api::CreateTaskResponse> {
        if lock(&self.tasks).contains_key(&req.id) {
            return Err(status(
                ttrpc::Code::ALREADY_EXISTS,
                format!("task {:?} already exists", req.id),
            ));
        }
        let path = std::path::Path::new(&req.bundle).join("config.json");
        let spec: Spec = std::fs::read(&path)
            .map_err(|e| e.to_string())
            .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
            .map_err(|e| {
                status(
                    ttrpc::Code::INVALID_ARGUMENT,
                    format!("{}: {e}", path.display()),
                )
            })?;
        let builtin = spec.is_sandbox() && builtin_pause_fits(&spec);
        let bundle = std::path::Path::new(&req.bundle);
        if builtin {
            mark_builtin_pause(bundle);
        }
        let mounted = !builtin && !req.rootfs.is_empty();
        if mounted {
            crate::mounts::mount_rootfs(bundle, &req.rootfs).map_err(internal)?;
        }
        let created = match builtin {
            true => {
                let (pid, exit) = self.create_pause(&spec)?;
                let init = Proc {
                    pid,
                    exit: Some(exit),
                    ..Default::default()
                };
                (None, None, Arc::default(), init)
            }
            false => match self.create_container(&req, &spec).await {
                Ok((runtime, log, attached, init)) => (Some(runtime), log, attached, init),
                Err(e) => {
                    if mounted {
                        crate::mounts::unmount_rootfs(bundle);
                    }
                    return Err(e);
                }
            },
        };
        let (runtime, log, attached, init) = created;
        let pid = init.pid;
        self.events.publish(
            topics::TASK_CREATE_EVENT_TOPIC,
            events::TaskCreate {
                container_id: req.id.clone(),
                bundle: req.bundle.clone(),
                rootfs: req.rootfs.clone(),
                io: Some(events::TaskIO {
                    stdin: req.stdin.clone(),
                    stdout: req.stdout.clone(),
                    stderr: req.stderr.clone(),
                    terminal: req.terminal,
                    ..Default::default()
                })
                .into(),
                checkpoint: req.checkpoint.clone(),
                pid: pid as u32,
                ..Default::default()
            },
        );
        let task = Task {
            stdio: (req.stdin, req.stdout, req.stderr, req.terminal),
            cgroup: spec.linux.as_ref().and_then(|l| l.cgroups_path.clone()),
            mounted,
            bundle: req.bundle,
            runtime,
            log,
            attached,
            init,
            execs: HashMap::new(),
        };
        lock(&self.tasks).insert(req.id.clone(), task);
        tracing::info!(id = %req.id, pid, sandbox = spec.is_sandbox(), builtin_pause = builtin, "task created");
        Ok(api::CreateTaskResponse {
            pid: pid as u32,
            ..Default::default()
        })
    }

    fn create_pause(&self, spec: &Spec) -> ttrpc::Result<(i32, ExitWatch)> {
        let pause = crate::pause::find_pause()
            .map_err(|e| status(ttrpc::Code::FAILED_PRECONDITION, e.to_string()))?;
        if let Some(cgroup) = spec.linux.as_ref().and_then(|l| l.cgroups_path.as_deref()) {
            podrun_core::cgroup::create(cgroup).map_err(|e| internal(e.into()))?;
        }
        let pid = crate::pause::spawn(spec, &pause).map_err(internal)?;
        // No await since the spawn: the reaper cannot have collected it yet.
        let exit = self.reaper.watch(pid);
        if let Some(cgroup) = spec.linux.as_ref().and_then(|l| l.cgroups_path.as_deref()) {
            if let Err(e) = podrun_core::cgroup::join(cgroup, pid) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
                return Err(status(ttrpc::Code::INTERNAL, e.to_string()));
            }
        }
        Ok((pid, exit))
    }

    async fn create_container(
        &self,
        req: &api::CreateTaskRequest,
        spec: &Spec,
    ) -> ttrpc::Result<(Runtime, Option<Arc<Log>>, Arc<Attached>, Proc)> {
        let binary = spec
            .annotations
            .get(oci::RUNTIME_ANNOTATION)
            .cloned()
            .unwrap_or_else(|| "runc".into());
        let runtime = Runtime {
            binary: binary.into(),
            bundle: req.bundle.clone().into(),
            id: req.id.clone(),
            reaper: self.reaper.clone(),
        };
        let terminal = spec.process.as_ref().is_some_and(|p| p.terminal);
        let log = match req.stdout.strip_prefix(CRI_LOG_SCHEME) {
            Some(path) => Some(Log::open(path.into()).map_err(|e| internal(e.into()))?),
            None => None,
        };
        let console = terminal
            .then(ConsoleSocket::new)
            .transpose()
            .map_err(internal)?;
        let to_log_and_attached = log.is_some() || req.stdout.is_empty();
        let (mut outputs, mut stdin_pipe, mut fifo_outputs) = (Vec::new(), None, Vec::new());
        let mut stdio = Stdio3::null();
        if !terminal {
            if !req.stdin.is_empty() {
                let (r, w) = oci::pipe().map_err(internal)?;
                stdin_pipe = Some(w);
                stdio.stdin = r.into();
            }
            // A CRI container's output goes to its log (when it has one) and to whoever
            // attaches; one that containerd made goes to the FIFOs it named.
            match to_log_and_attached {
                true => {
                    let (out_r, out_w) = oci::pipe().map_err(internal)?;
                    let (err_r, err_w) = oci::pipe().map_err(internal)?;
                    outputs.push(("stdout", out_r));
                    outputs.push(("stderr", err_r));
                    stdio.stdout = out_w.into();
                    stdio.stderr = err_w.into();
                }
                false => {
                    // Through pipes the shim copies, so the exit waits for the output.
                    for (stream, path) in [("stdout", &req.stdout), ("stderr", &req.stderr)] {
                        if path.is_empty() {
                            continue;
                        }
                        let (r, w) = oci::pipe().map_err(internal)?;
                        fifo_outputs.push((r, stdio::fifo_writer(path).map_err(internal)?));
                        match stream {
                            "stdout" => stdio.stdout = w.into(),
                            _ => stdio.stderr = w.into(),
                        }
                    }
                }
            }
        }
        let pid = runtime
            .create(stdio, console.as_ref().map(|c| c.path.as_path()))
            .await
            .map_err(internal)?;
        let exit = self.reaper.watch(pid);
        let attached = Arc::new(Attached::default());
        let master = console
            .map(|c| c.receive())
            .transpose()
            .map_err(internal)?
            .map(Arc::new);
        let mut copiers = Vec::new();
        let result = (|| -> anyhow::Result<Option<AbortHandle>> {
            for (r, to) in fifo_outputs {
                copiers.push(tokio::spawn(stdio::copy(Receiver::from_owned_fd(r)?, to)));
            }
            let mut readers = Vec::new();
            for (stream, fd) in outputs {
                readers.push((stream, Receiver::from_owned_fd(fd)?));
            }
            let mut stdin_to = stdin_pipe.map(Sender::from_owned_fd).transpose()?;
            if let Some(master) = &master {
                let (r, w) = stdio::split(master)?;
                readers.push(("stdout", r));
                stdin_to = Some(w);
            }
            for (stream, reader) in readers {
                match to_log_and_attached {
                    true => {
                        copiers.push(tokio::spawn(crilog::copy(
                            log.clone(),
                            stream,
                            reader,
                            attached.clone(),
                        )));
                    }
                    false => {
                        let to = stdio::fifo_writer(&req.stdout)?;
                        copiers.push(tokio::spawn(stdio::copy(reader, to)));
                    }
                }
            }
            Ok(match (req.stdin.is_empty(), stdin_to) {
                (false, Some(to)) => {
                    let from = stdio::fifo_reader(&req.stdin, true)?;
                    Some(tokio::spawn(stdio::copy(from, to)).abort_handle())
                }
                _ => None,
            })
        })();
        let stdin = match result {
            Ok(stdin) => stdin,
            Err(e) => {
                let _ = runtime.delete().await;
                return Err(internal(e));
            }
        };
        let init = Proc {
            pid,
            exit: Some(exit),
            console: master,
            stdin,
            io: Some(stdio::IoDone::after(copiers)),
            ..Default::default()
        };
        Ok((runtime, log, attached, init))
    }
}

/// The built-in pause stands in for a sandbox's own process when that process is the usual
/// pause (`/pause` with no arguments): it does the same and costs no OCI runtime run.
fn builtin_pause_fits(spec: &Spec) -> bool {
    // A user namespace to make (no path: containerd's sandboxes) is the OCI runtime's job.
    let new_userns = spec.linux.as_ref().is_some_and(|l| {
        l.namespaces
            .iter()
            .any(|n| n.kind == "user" && n.path.is_none())
    });
    spec.process.as_ref().is_some_and(|p| p.args == ["/pause"]) && !new_userns
}

/// The annotation the bundle's spec gets when the built-in pause serves the sandbox.
pub const BUILTIN_PAUSE: &str = "io.podrun.pause";

/// Says so in the task's spec (`<bundle>/config.json`): `io.podrun.pause: builtin`.
fn mark_builtin_pause(bundle: &std::path::Path) {
    let path = bundle.join("config.json");
    let Ok(mut spec) = std::fs::read(&path)
        .map_err(|_| ())
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).map_err(|_| ()))
    else {
        return;
    };
    spec["annotations"][BUILTIN_PAUSE] = "builtin".into();
    if let Ok(bytes) = serde_json::to_vec(&spec) {
        let _ = std::fs::write(&path, bytes);
    }
}
