//! Exec: an exec is recorded at Exec (its process spec and stdio paths) and made at its
//! Start, through the container's OCI runtime, with its FIFOs or a terminal.

use std::os::fd::OwnedFd;
use std::sync::Arc;

use containerd_shim_protos::api;
use containerd_shim_protos::events::task as events;
use containerd_shim_protos::protobuf::well_known_types::empty::Empty;
use containerd_shim_protos::topics;
use containerd_shim_protos::ttrpc;
use tokio::net::unix::pipe::Receiver;
use tokio::task::AbortHandle;

use super::{internal, lock, not_found, status, Exec, Proc, Shim};
use crate::oci::{self, Runtime, Stdio3};
use crate::stdio::{self, ConsoleSocket};

impl Shim {
    pub(super) async fn add_exec(&self, req: api::ExecProcessRequest) -> ttrpc::Result<Empty> {
        let spec = req
            .spec
            .as_ref()
            .map(|a| a.value.clone())
            .unwrap_or_default();
        let mut tasks = lock(&self.tasks);
        let task = tasks.get_mut(&req.id).ok_or_else(|| not_found(&req.id))?;
        if task.execs.contains_key(&req.exec_id) {
            return Err(status(
                ttrpc::Code::ALREADY_EXISTS,
                format!("exec {:?} already exists", req.exec_id),
            ));
        }
        self.events.publish(
            topics::TASK_EXEC_ADDED_EVENT_TOPIC,
            events::TaskExecAdded {
                container_id: req.id.clone(),
                exec_id: req.exec_id.clone(),
                ..Default::default()
            },
        );
        task.execs.insert(
            req.exec_id,
            Exec {
                spec,
                stdin: req.stdin,
                stdout: req.stdout,
                stderr: req.stderr,
                terminal: req.terminal,
                proc: Proc::default(),
            },
        );
        Ok(Empty::new())
    }

    /// Starts exec `exec_id` of `runtime`'s container with its FIFOs (or a terminal).
    pub(super) async fn start_exec(
        &self,
        runtime: &Runtime,
        exec_id: &str,
        exec: Exec,
    ) -> ttrpc::Result<Proc> {
        if !exec.terminal {
            let stdin = match exec.stdin.is_empty() {
                true => std::process::Stdio::null(),
                false => stdio::fifo_for_child(&exec.stdin).map_err(internal)?,
            };
            // Outputs through pipes the shim copies, so the exit waits for them.
            let mut stdio = Stdio3 {
                stdin,
                ..Stdio3::null()
            };
            let mut outputs = Vec::new();
            for (i, path) in [&exec.stdout, &exec.stderr].into_iter().enumerate() {
                if path.is_empty() {
                    continue;
                }
                let (r, w) = oci::pipe().map_err(internal)?;
                outputs.push((r, stdio::fifo_writer(path).map_err(internal)?));
                match i {
                    0 => stdio.stdout = w.into(),
                    _ => stdio.stderr = w.into(),
                }
            }
            let pid = runtime
                .exec(exec_id, &exec.spec, stdio, None)
                .await
                .map_err(internal)?;
            let exit = self.reaper.watch(pid);
            let mut copiers = Vec::new();
            for (r, to) in outputs {
                let from = Receiver::from_owned_fd(r).map_err(|e| internal(e.into()))?;
                copiers.push(tokio::spawn(stdio::copy(from, to)));
            }
            return Ok(Proc {
                pid,
                exit: Some(exit),
                started: true,
                io: Some(stdio::IoDone::after(copiers)),
                ..Default::default()
            });
        }
        let console = ConsoleSocket::new().map_err(internal)?;
        let pid = runtime
            .exec(exec_id, &exec.spec, Stdio3::null(), Some(&console.path))
            .await
            .map_err(internal)?;
        let exit = self.reaper.watch(pid);
        let mut copiers = Vec::new();
        let wired = (|| -> anyhow::Result<(Arc<OwnedFd>, Option<AbortHandle>)> {
            let master = Arc::new(console.receive()?);
            let (r, w) = stdio::split(&master)?;
            if !exec.stdout.is_empty() {
                let to = stdio::fifo_writer(&exec.stdout)?;
                copiers.push(tokio::spawn(stdio::copy(r, to)));
            }
            let stdin = match exec.stdin.is_empty() {
                true => None,
                false => {
                    let from = stdio::fifo_reader(&exec.stdin, false)?;
                    Some(tokio::spawn(stdio::copy(from, w)).abort_handle())
                }
            };
            Ok((master, stdin))
        })();
        let (master, stdin) = wired.map_err(|e| {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
            internal(e)
        })?;
        Ok(Proc {
            pid,
            exit: Some(exit),
            started: true,
            console: Some(master),
            stdin,
            io: Some(stdio::IoDone::after(copiers)),
            ..Default::default()
        })
    }
}
