//! containerd's shim v2 Task service, as podrun's per-pod shim serves it.
//!
//! Each process (a task's init, or an exec) moves through:
//! ```text
//!  Create/Exec ──▶ Created ──Start──▶ Running ──exit──▶ Stopped ──Delete──▶ (gone)
//!                     └──────────────exit──────────────────▶┘
//! ```
//! The sandbox task (the spec carries containerd's `container-type: sandbox` annotation)
//! is served by podrun's built-in pause, spawned at Create. Other tasks run through the OCI
//! runtime named by the spec's `io.podrun.oci-runtime` annotation (else `runc`).
//!
//! Stdio is containerd's: FIFO paths in Create and Exec (stdin is copied in by the shim,
//! so CloseIO can end it; with `terminal` the runtime hands the shim the pty master, which
//! the shim copies to and from the FIFOs, and ResizePty resizes).
//!
//! podrun's additions to the protocol: a task's `stdout` of the form `cri-log://PATH`
//! sends both output streams (or the terminal) to a CRI-format log at PATH; `Update` with
//! the annotation `io.podrun.reopen-log` reopens that log; `Update` with
//! `io.podrun.attach-stdout` / `io.podrun.attach-stderr` (FIFO paths) adds readers of
//! the container's output, and `io.podrun.detach` (a path) removes one.

mod create;

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use async_trait::async_trait;
use containerd_shim_protos::api::{self, Status};
use containerd_shim_protos::events::task as events;
use containerd_shim_protos::protobuf::well_known_types::empty::Empty;
use containerd_shim_protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim_protos::protobuf::{EnumOrUnknown, MessageField};
use containerd_shim_protos::shim_async::Task as TaskService;
use containerd_shim_protos::topics;
use containerd_shim_protos::ttrpc::{self, r#async::TtrpcContext};
use podrun_core::oci_config::Spec;
use tokio::sync::Notify;
use tokio::task::AbortHandle;

use crate::containerd::Publisher;
use crate::crilog::Log;
use crate::oci::Runtime;
use crate::reaper::{exited, Exit, ExitWatch, Reaper};
use crate::stdio::{self, Attached};
use create::builtin_pause_fits;

pub const CRI_LOG_SCHEME: &str = "cri-log://";
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
pub const REOPEN_LOG: &str = "io.podrun.reopen-log";
pub const ATTACH_STDOUT: &str = "io.podrun.attach-stdout";
pub const ATTACH_STDERR: &str = "io.podrun.attach-stderr";
pub const DETACH: &str = "io.podrun.detach";

/// One process of a task: its pid once it runs, and its exit.
#[derive(Default)]
struct Proc {
    pid: i32,
    exit: Option<ExitWatch>,
    started: bool,
    paused: bool,
    /// The terminal's master, when it has one.
    console: Option<Arc<OwnedFd>>,
    /// The copier feeding its stdin: aborting it (CloseIO) ends the process's input.
    stdin: Option<AbortHandle>,
    /// Its output copiers' end.
    io: Option<stdio::IoDone>,
}

impl Proc {
    fn exit(&self) -> Option<Exit> {
        self.exit.as_ref().and_then(|w| *w.borrow())
    }

    fn status(&self) -> Status {
        match (self.exit(), self.started, self.paused) {
            (Some(_), _, _) => Status::STOPPED,
            (None, true, true) => Status::PAUSED,
            (None, true, false) => Status::RUNNING,
            (None, false, _) => Status::CREATED,
        }
    }
}

/// An exec: its process spec and stdio paths until started, then its process.
struct Exec {
    spec: Vec<u8>,
    stdin: String,
    stdout: String,
    stderr: String,
    terminal: bool,
    proc: Proc,
}

struct Task {
    bundle: String,
    /// None for the sandbox's built-in pause.
    runtime: Option<Runtime>,
    /// stdin, stdout, stderr and terminal, as Create gave them.
    stdio: (String, String, String, bool),
    cgroup: Option<String>,
    /// The shim mounted `<bundle>/rootfs` (containerd's rootfs mounts) and unmounts it.
    mounted: bool,
    log: Option<Arc<Log>>,
    attached: Arc<Attached>,
    init: Proc,
    execs: HashMap<String, Exec>,
}

pub struct Shim {
    tasks: Mutex<HashMap<String, Task>>,
    pub reaper: Arc<Reaper>,
    pub shutdown: Arc<Notify>,
    events: Publisher,
    /// Signalled whenever a process starts or an exec goes away.
    started: Notify,
    /// Held while a task is being deleted (one at a time, for the whole shim): a second
    /// Delete of a task (podrund's RemoveContainer racing its own clean-up after the exit)
    /// waits, then finds the task gone, instead of running the OCI runtime's delete twice at
    /// once (crun then fails on its state dir).
    deleting: tokio::sync::Mutex<()>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn status(code: ttrpc::Code, msg: String) -> ttrpc::Error {
    ttrpc::Error::RpcStatus(ttrpc::get_status(code, msg))
}

fn internal(e: anyhow::Error) -> ttrpc::Error {
    status(ttrpc::Code::INTERNAL, format!("{e:#}"))
}

fn not_found(id: &str) -> ttrpc::Error {
    status(ttrpc::Code::NOT_FOUND, format!("task {id:?} not found"))
}

pub fn timestamp(t: SystemTime) -> MessageField<Timestamp> {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let mut ts = Timestamp::new();
    ts.seconds = d.as_secs() as i64;
    ts.nanos = d.subsec_nanos() as i32;
    MessageField::some(ts)
}

impl Shim {
    pub fn new(reaper: Arc<Reaper>, events: Publisher) -> Shim {
        Shim {
            tasks: Mutex::default(),
            reaper,
            shutdown: Arc::new(Notify::new()),
            events,
            started: Notify::new(),
            deleting: tokio::sync::Mutex::new(()),
        }
    }

    /// Publishes the exit of a started process once it happens (containerd learns of exits
    /// this way; podrund waits instead).
    fn publish_exit(&self, id: &str, exec_id: &str, pid: i32) {
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

    fn cgroup(&self, id: &str) -> ttrpc::Result<String> {
        lock(&self.tasks)
            .get(id)
            .ok_or_else(|| not_found(id))?
            .cgroup
            .clone()
            .ok_or_else(|| {
                status(
                    ttrpc::Code::FAILED_PRECONDITION,
                    format!("task {id:?} has no cgroup"),
                )
            })
    }

    /// Runs `f` on process `exec_id` ("" for the init) of task `id`.
    fn with_proc<T>(
        &self,
        id: &str,
        exec_id: &str,
        f: impl FnOnce(&mut Proc) -> ttrpc::Result<T>,
    ) -> ttrpc::Result<T> {
        let mut tasks = lock(&self.tasks);
        let task = tasks.get_mut(id).ok_or_else(|| not_found(id))?;
        match exec_id {
            "" => f(&mut task.init),
            exec_id => f(&mut task
                .execs
                .get_mut(exec_id)
                .ok_or_else(|| not_found(&format!("{id}/{exec_id}")))?
                .proc),
        }
    }

    /// Pause (`true`) or resume a container through its runtime's freezer.
    async fn freeze(&self, id: &str, frozen: bool) -> ttrpc::Result<()> {
        let runtime = self.runtime(id)?.ok_or_else(|| {
            status(
                ttrpc::Code::FAILED_PRECONDITION,
                "the built-in pause cannot be paused".into(),
            )
        })?;
        match frozen {
            true => runtime.pause().await,
            false => runtime.resume().await,
        }
        .map_err(internal)?;
        self.with_proc(id, "", |p| {
            p.paused = frozen;
            Ok(())
        })
    }

    fn runtime(&self, id: &str) -> ttrpc::Result<Option<Runtime>> {
        Ok(lock(&self.tasks)
            .get(id)
            .ok_or_else(|| not_found(id))?
            .runtime
            .clone())
    }
}

#[async_trait]
impl TaskService for Shim {
    async fn create(
        &self,
        _: &TtrpcContext,
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
            create::mark_builtin_pause(bundle);
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

    async fn start(
        &self,
        _: &TtrpcContext,
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

    async fn exec(&self, _: &TtrpcContext, req: api::ExecProcessRequest) -> ttrpc::Result<Empty> {
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

    async fn state(
        &self,
        _: &TtrpcContext,
        req: api::StateRequest,
    ) -> ttrpc::Result<api::StateResponse> {
        let (bundle, (stdin, stdout, stderr, terminal)) = lock(&self.tasks)
            .get(&req.id)
            .map(|t| {
                let stdio = match t.execs.get(&req.exec_id) {
                    Some(e) => (
                        e.stdin.clone(),
                        e.stdout.clone(),
                        e.stderr.clone(),
                        e.terminal,
                    ),
                    None => t.stdio.clone(),
                };
                (t.bundle.clone(), stdio)
            })
            .unwrap_or_default();
        self.with_proc(&req.id, &req.exec_id, |p| {
            let exit = p.exit();
            Ok(api::StateResponse {
                id: req.id.clone(),
                exec_id: req.exec_id.clone(),
                bundle,
                pid: p.pid as u32,
                status: EnumOrUnknown::new(p.status()),
                stdin: stdin.clone(),
                stdout: stdout.clone(),
                stderr: stderr.clone(),
                terminal,
                exit_status: exit.map_or(0, |e| e.status),
                exited_at: exit.map_or(MessageField::none(), |e| timestamp(e.at)),
                ..Default::default()
            })
        })
    }

    async fn kill(&self, _: &TtrpcContext, req: api::KillRequest) -> ttrpc::Result<Empty> {
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

    async fn wait(
        &self,
        _: &TtrpcContext,
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

    async fn delete(
        &self,
        _: &TtrpcContext,
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

    async fn pids(
        &self,
        _: &TtrpcContext,
        req: api::PidsRequest,
    ) -> ttrpc::Result<api::PidsResponse> {
        let pid = self.with_proc(&req.id, "", |p| Ok(p.pid))?;
        let mut pids = match lock(&self.tasks)
            .get(&req.id)
            .and_then(|t| t.cgroup.clone())
        {
            Some(cgroup) => podrun_core::cgroup::pids(&cgroup).unwrap_or_default(),
            None => Vec::new(),
        };
        if pids.is_empty() {
            pids.push(pid);
        }
        let processes = pids
            .into_iter()
            .map(|pid| {
                let mut info = containerd_shim_protos::types::task::ProcessInfo::new();
                info.pid = pid as u32;
                info
            })
            .collect();
        Ok(api::PidsResponse {
            processes,
            ..Default::default()
        })
    }

    async fn pause(&self, _: &TtrpcContext, req: api::PauseRequest) -> ttrpc::Result<Empty> {
        self.freeze(&req.id, true).await?;
        let event = events::TaskPaused {
            container_id: req.id.clone(),
            ..Default::default()
        };
        self.events.publish(topics::TASK_PAUSED_EVENT_TOPIC, event);
        Ok(Empty::new())
    }

    async fn resume(&self, _: &TtrpcContext, req: api::ResumeRequest) -> ttrpc::Result<Empty> {
        self.freeze(&req.id, false).await?;
        let event = events::TaskResumed {
            container_id: req.id.clone(),
            ..Default::default()
        };
        self.events.publish(topics::TASK_RESUMED_EVENT_TOPIC, event);
        Ok(Empty::new())
    }

    async fn stats(
        &self,
        _: &TtrpcContext,
        req: api::StatsRequest,
    ) -> ttrpc::Result<api::StatsResponse> {
        let cgroup = self.cgroup(&req.id)?;
        Ok(api::StatsResponse {
            stats: Some(crate::stats::metrics(&cgroup)).into(),
            ..Default::default()
        })
    }

    async fn resize_pty(
        &self,
        _: &TtrpcContext,
        req: api::ResizePtyRequest,
    ) -> ttrpc::Result<Empty> {
        let console = self.with_proc(&req.id, &req.exec_id, |p| Ok(p.console.clone()))?;
        let console = console.ok_or_else(|| {
            status(
                ttrpc::Code::FAILED_PRECONDITION,
                format!("{}/{} has no terminal", req.id, req.exec_id),
            )
        })?;
        stdio::resize(&console, req.width, req.height).map_err(internal)?;
        Ok(Empty::new())
    }

    async fn close_io(&self, _: &TtrpcContext, req: api::CloseIORequest) -> ttrpc::Result<Empty> {
        if req.stdin {
            if let Some(copier) = self.with_proc(&req.id, &req.exec_id, |p| Ok(p.stdin.take()))? {
                copier.abort();
            }
        }
        Ok(Empty::new())
    }

    async fn update(&self, _: &TtrpcContext, req: api::UpdateTaskRequest) -> ttrpc::Result<Empty> {
        let attach = [("stdout", ATTACH_STDOUT), ("stderr", ATTACH_STDERR)];
        if attach.iter().any(|(_, a)| req.annotations.contains_key(*a))
            || req.annotations.contains_key(DETACH)
        {
            let attached = lock(&self.tasks)
                .get(&req.id)
                .ok_or_else(|| not_found(&req.id))?
                .attached
                .clone();
            if let Some(path) = req.annotations.get(DETACH) {
                attached.remove(path);
            }
            for (stream, key) in attach {
                if let Some(path) = req.annotations.get(key) {
                    attached.add(stream, path).map_err(internal)?;
                }
            }
            return Ok(Empty::new());
        }
        if req.annotations.contains_key(REOPEN_LOG) {
            let log = lock(&self.tasks)
                .get(&req.id)
                .ok_or_else(|| not_found(&req.id))?
                .log
                .clone();
            let log = log.ok_or_else(|| {
                status(
                    ttrpc::Code::FAILED_PRECONDITION,
                    format!("task {:?} has no CRI log", req.id),
                )
            })?;
            log.reopen().map_err(|e| internal(e.into()))?;
            return Ok(Empty::new());
        }
        let runtime = self.runtime(&req.id)?.ok_or_else(|| {
            status(
                ttrpc::Code::FAILED_PRECONDITION,
                "the built-in pause takes no resource updates".into(),
            )
        })?;
        // The resources are an OCI LinuxResources in JSON, as runc update reads them.
        let resources = req
            .resources
            .as_ref()
            .map(|a| a.value.clone())
            .unwrap_or_default();
        runtime.update(&resources).await.map_err(internal)?;
        Ok(Empty::new())
    }

    async fn connect(
        &self,
        _: &TtrpcContext,
        req: api::ConnectRequest,
    ) -> ttrpc::Result<api::ConnectResponse> {
        let task_pid = lock(&self.tasks)
            .get(&req.id)
            .map_or(0, |t| t.init.pid as u32);
        Ok(api::ConnectResponse {
            shim_pid: std::process::id(),
            task_pid,
            version: env!("CARGO_PKG_VERSION").into(),
            ..Default::default()
        })
    }

    async fn shutdown(&self, _: &TtrpcContext, req: api::ShutdownRequest) -> ttrpc::Result<Empty> {
        // containerd asks after every Delete; the shim stays while any task remains.
        if req.now || lock(&self.tasks).is_empty() {
            self.shutdown.notify_one();
        }
        Ok(Empty::new())
    }
}
