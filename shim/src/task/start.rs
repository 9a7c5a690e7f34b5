//! Start: runs a created task's init (its OCI runtime's `start`; the built-in pause has run
//! since Create) or makes one of its execs, then publishes the start and, once it happens,
//! the exit.

use containerd_shim_protos::api;
use containerd_shim_protos::events::task as events;
use containerd_shim_protos::topics;
use containerd_shim_protos::ttrpc;

use super::{internal, lock, not_found, status, Exec, Proc, Shim};

impl Shim {
    pub(super) async fn start_process(
        &self,
        req: api::StartRequest,
    ) -> ttrpc::Result<api::StartResponse> {
        let runtime = self.runtime(&req.id)?;
        if req.exec_id.is_empty() {
            let pid = self.with_proc(&req.id, "", |p| match p.exit() {
                Some(_) => Err(status(
                    ttrpc::Code::FAILED_PRECONDITION,
                    format!("task {:?} has exited", req.id),
                )),
                None => Ok(p.pid),
            })?;
            if let Some(runtime) = runtime {
                runtime.start().await.map_err(internal)?;
            }
            self.with_proc(&req.id, "", |p| {
                p.started = true;
                Ok(())
            })?;
            self.events.publish(
                topics::TASK_START_EVENT_TOPIC,
                events::TaskStart {
                    container_id: req.id.clone(),
                    pid: pid as u32,
                    ..Default::default()
                },
            );
            self.publish_exit(&req.id, "", pid);
            return Ok(api::StartResponse {
                pid: pid as u32,
                ..Default::default()
            });
        }
        let runtime = runtime.ok_or_else(|| {
            status(
                ttrpc::Code::FAILED_PRECONDITION,
                "the sandbox task runs no execs".into(),
            )
        })?;
        let exec = {
            let tasks = lock(&self.tasks);
            let exec = tasks
                .get(&req.id)
                .and_then(|t| t.execs.get(&req.exec_id))
                .ok_or_else(|| not_found(&req.exec_id))?;
            if exec.proc.started {
                return Err(status(
                    ttrpc::Code::FAILED_PRECONDITION,
                    format!("exec {:?} was started already", req.exec_id),
                ));
            }
            Exec {
                spec: exec.spec.clone(),
                stdin: exec.stdin.clone(),
                stdout: exec.stdout.clone(),
                stderr: exec.stderr.clone(),
                terminal: exec.terminal,
                proc: Proc::default(),
            }
        };
        let proc = self.start_exec(&runtime, &req.exec_id, exec).await?;
        let pid = proc.pid;
        self.with_proc(&req.id, &req.exec_id, |p| {
            *p = proc;
            Ok(())
        })?;
        self.started.notify_waiters();
        self.events.publish(
            topics::TASK_EXEC_STARTED_EVENT_TOPIC,
            events::TaskExecStarted {
                container_id: req.id.clone(),
                exec_id: req.exec_id.clone(),
                pid: pid as u32,
                ..Default::default()
            },
        );
        self.publish_exit(&req.id, &req.exec_id, pid);
        Ok(api::StartResponse {
            pid: pid as u32,
            ..Default::default()
        })
    }
}
