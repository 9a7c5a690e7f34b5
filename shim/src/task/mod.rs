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
mod exec;
mod exit;
mod io;
mod start;
mod state;
mod update;

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use async_trait::async_trait;
use containerd_shim_protos::api::{self, Status};
use containerd_shim_protos::protobuf::well_known_types::empty::Empty;
use containerd_shim_protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim_protos::protobuf::MessageField;
use containerd_shim_protos::shim_async::Task as TaskService;
use containerd_shim_protos::ttrpc::{self, r#async::TtrpcContext};
use tokio::sync::Notify;
use tokio::task::AbortHandle;

use crate::containerd::Publisher;
use crate::crilog::Log;
use crate::oci::Runtime;
use crate::reaper::{Exit, ExitWatch, Reaper};
use crate::stdio::{self, Attached};

pub const CRI_LOG_SCHEME: &str = "cri-log://";
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

    fn runtime(&self, id: &str) -> ttrpc::Result<Option<Runtime>> {
        Ok(lock(&self.tasks)
            .get(id)
            .ok_or_else(|| not_found(id))?
            .runtime
            .clone())
    }
}

// Each verb is served by the module named for it (create, start, exec, exit, state, update,
// io); this impl only routes containerd's calls there.
#[async_trait]
impl TaskService for Shim {
    async fn create(
        &self,
        _: &TtrpcContext,
        req: api::CreateTaskRequest,
    ) -> ttrpc::Result<api::CreateTaskResponse> {
        self.create_task(req).await
    }

    async fn start(
        &self,
        _: &TtrpcContext,
        req: api::StartRequest,
    ) -> ttrpc::Result<api::StartResponse> {
        self.start_process(req).await
    }

    async fn exec(&self, _: &TtrpcContext, req: api::ExecProcessRequest) -> ttrpc::Result<Empty> {
        self.add_exec(req).await
    }

    async fn state(
        &self,
        _: &TtrpcContext,
        req: api::StateRequest,
    ) -> ttrpc::Result<api::StateResponse> {
        self.process_state(req).await
    }

    async fn kill(&self, _: &TtrpcContext, req: api::KillRequest) -> ttrpc::Result<Empty> {
        self.signal_process(req).await
    }

    async fn wait(
        &self,
        _: &TtrpcContext,
        req: api::WaitRequest,
    ) -> ttrpc::Result<api::WaitResponse> {
        self.wait_exit(req).await
    }

    async fn delete(
        &self,
        _: &TtrpcContext,
        req: api::DeleteRequest,
    ) -> ttrpc::Result<api::DeleteResponse> {
        self.delete_process(req).await
    }

    async fn pids(
        &self,
        _: &TtrpcContext,
        req: api::PidsRequest,
    ) -> ttrpc::Result<api::PidsResponse> {
        self.task_pids(req).await
    }

    async fn pause(&self, _: &TtrpcContext, req: api::PauseRequest) -> ttrpc::Result<Empty> {
        self.pause_task(req).await
    }

    async fn resume(&self, _: &TtrpcContext, req: api::ResumeRequest) -> ttrpc::Result<Empty> {
        self.resume_task(req).await
    }

    async fn stats(
        &self,
        _: &TtrpcContext,
        req: api::StatsRequest,
    ) -> ttrpc::Result<api::StatsResponse> {
        self.task_stats(req).await
    }

    async fn resize_pty(
        &self,
        _: &TtrpcContext,
        req: api::ResizePtyRequest,
    ) -> ttrpc::Result<Empty> {
        self.resize_terminal(req).await
    }

    async fn close_io(&self, _: &TtrpcContext, req: api::CloseIORequest) -> ttrpc::Result<Empty> {
        self.close_stdin(req).await
    }

    async fn update(&self, _: &TtrpcContext, req: api::UpdateTaskRequest) -> ttrpc::Result<Empty> {
        self.update_task(req).await
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
