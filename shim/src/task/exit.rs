//! A process's end: Kill signals it, Wait answers once it has exited and its output has
//! been copied out, Delete removes it (for the init, the whole task: the OCI runtime's
//! container, the rootfs mount), and its exit is published for containerd.

use std::time::SystemTime;

use containerd_shim_protos::api;
use containerd_shim_protos::events::task as events;
use containerd_shim_protos::protobuf::well_known_types::empty::Empty;
use containerd_shim_protos::topics;
use containerd_shim_protos::ttrpc;

use super::{internal, lock, status, timestamp, Shim};
use crate::reaper::{exited, Exit};

/// How long a container's exit waits for its output to be copied out.
const IO_DRAIN: std::time::Duration = std::time::Duration::from_secs(2);
/// The same for an exec: a command that left a child holding its output open (`sleep 10 &`
/// in a probe) is answered soon after its own exit, as kubelet's probe timeouts need.
const EXEC_IO_DRAIN: std::time::Duration = std::time::Duration::from_millis(500);

fn io_drain(exec_id: &str) -> std::time::Duration {
    match exec_id.is_empty() {
        true => IO_DRAIN,
        false => EXEC_IO_DRAIN,
    }
}

impl Shim {
    /// Publishes the exit of a started process once it happens (containerd learns of exits
    /// this way; podrund waits instead).
    pub(super) fn publish_exit(&self, id: &str, exec_id: &str, pid: i32) {
        let Ok((Some(exit), io)) =
            self.with_proc(id, exec_id, |p| Ok((p.exit.clone(), p.io.clone())))
        else {
            return;
        };
        let events = self.events.clone();
        // The init's exit after an OOM kill in its cgroup is reported as an OOM first.
        let cgroup = match exec_id.is_empty() {
            true => self.cgroup(id).ok(),
            false => None,
        };
        let (container_id, id) = (
            id.to_owned(),
            [exec_id, id][exec_id.is_empty() as usize].to_owned(),
        );
        let drain = io_drain(exec_id);
        tokio::spawn(async move {
            if let Some(e) = exited(exit).await {
                if let Some(io) = io {
                    io.wait(drain).await;
                }
                if cgroup.is_some_and(|c| crate::stats::oom_kills(&c) > 0) {
                    let oom = events::TaskOOM {
                        container_id: container_id.clone(),
                        ..Default::default()
                    };
                    events.publish(topics::TASK_OOM_EVENT_TOPIC, oom);
                }
                events.publish(
                    topics::TASK_EXIT_EVENT_TOPIC,
                    events::TaskExit {
                        container_id,
                        id,
                        pid: pid as u32,
                        exit_status: e.status,
                        exited_at: timestamp(e.at),
                        ..Default::default()
                    },
                );
            }
        });
    }

    pub(super) async fn signal_process(&self, req: api::KillRequest) -> ttrpc::Result<Empty> {
        let signal = nix::sys::signal::Signal::try_from(req.signal as i32).map_err(|_| {
            status(
                ttrpc::Code::INVALID_ARGUMENT,
                format!("signal {} is not valid", req.signal),
            )
        })?;
        let pid = self.with_proc(&req.id, &req.exec_id, |p| {
            Ok((p.exit().is_none() && p.pid > 0).then_some(p.pid))
        })?;
        if req.all && req.exec_id.is_empty() {
            if let (Some(runtime), Some(_)) = (self.runtime(&req.id)?, pid) {
                runtime
                    .kill_all(req.signal as i32)
                    .await
                    .map_err(internal)?;
                return Ok(Empty::new());
            }
        }
        if let Some(pid) = pid {
            match nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal) {
                Ok(()) | Err(nix::Error::ESRCH) => {}
                Err(e) => return Err(status(ttrpc::Code::INTERNAL, format!("kill {pid}: {e}"))),
            }
        }
        Ok(Empty::new())
    }

    pub(super) async fn wait_exit(
        &self,
        req: api::WaitRequest,
    ) -> ttrpc::Result<api::WaitResponse> {
        // An exec may be waited for before it starts (ctr does): wait for its start too.
        let (watch, io) = loop {
            let started = self.started.notified();
            let (w, io) = self.with_proc(&req.id, &req.exec_id, |p| {
                Ok((p.exit.clone(), p.io.clone()))
            })?;
            if let Some(w) = w {
                break (w, io);
            }
            started.await;
        };
        let exit = exited(watch).await;
        if let Some(io) = io {
            io.wait(io_drain(&req.exec_id)).await;
        }
        let Some(exit) = exit else {
            return Err(status(
                ttrpc::Code::INTERNAL,
                format!("{}/{}: its exit was lost", req.id, req.exec_id),
            ));
        };
        Ok(api::WaitResponse {
            exit_status: exit.status,
            exited_at: timestamp(exit.at),
            ..Default::default()
        })
    }

    pub(super) async fn delete_process(
        &self,
        req: api::DeleteRequest,
    ) -> ttrpc::Result<api::DeleteResponse> {
        let _one_at_a_time = match req.exec_id.is_empty() {
            true => Some(self.deleting.lock().await),
            false => None,
        };
        let (pid, exit) = self.with_proc(&req.id, &req.exec_id, |p| Ok((p.pid, p.exit())))?;
        let started = self.with_proc(&req.id, &req.exec_id, |p| Ok(p.started))?;
        // A process never started may be deleted: an exec has no process yet, and `delete
        // --force` kills a container's waiting init (SIGKILL: 137).
        let never_ran = if req.exec_id.is_empty() { 137 } else { 0 };
        let Some(exit) = exit.or((!started).then(|| Exit {
            status: never_ran,
            at: SystemTime::now(),
        })) else {
            return Err(status(
                ttrpc::Code::FAILED_PRECONDITION,
                format!("task {:?} is still running", req.id),
            ));
        };
        if req.exec_id.is_empty() {
            if let Some(runtime) = self.runtime(&req.id)? {
                runtime.delete().await.map_err(internal)?;
            }
            let task = lock(&self.tasks).remove(&req.id);
            if let Some(task) = task {
                if task.mounted {
                    crate::mounts::unmount_rootfs(std::path::Path::new(&task.bundle));
                }
                // Under containerd the built-in pause's cgroup is the shim's to remove;
                // podrund removes its pods' cgroups itself.
                if let (None, Some(cgroup), true) =
                    (&task.runtime, &task.cgroup, self.events.active())
                {
                    let _ = podrun_core::cgroup::remove(cgroup);
                }
            }
        } else if let Some(task) = lock(&self.tasks).get_mut(&req.id) {
            task.execs.remove(&req.exec_id);
        }
        self.started.notify_waiters();
        self.events.publish(
            topics::TASK_DELETE_EVENT_TOPIC,
            events::TaskDelete {
                container_id: req.id.clone(),
                id: [req.exec_id.as_str(), req.id.as_str()][req.exec_id.is_empty() as usize]
                    .to_owned(),
                pid: pid as u32,
                exit_status: exit.status,
                exited_at: timestamp(exit.at),
                ..Default::default()
            },
        );
        Ok(api::DeleteResponse {
            pid: pid as u32,
            exit_status: exit.status,
            exited_at: timestamp(exit.at),
            ..Default::default()
        })
    }
}
