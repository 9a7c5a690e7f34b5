//! containerd's shim v2 Task service, as podrun's per-pod shim serves it.
//!
//! Each task moves through `Created -> Running -> Stopped`, then `Delete` forgets it:
//! ```text
//!  Create ──▶ Created ──Start──▶ Running ──exit──▶ Stopped ──Delete──▶ (gone)
//!                 └────────────exit──────────────────▶┘
//! ```
//! The sandbox task (the spec carries containerd's `container-type: sandbox` annotation)
//! is served by podrun's built-in pause, spawned at Create; it idles until told to stop.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use async_trait::async_trait;
use containerd_shim_protos::api::{self, Status};
use containerd_shim_protos::protobuf::well_known_types::empty::Empty;
use containerd_shim_protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim_protos::protobuf::{EnumOrUnknown, MessageField};
use containerd_shim_protos::shim_async::Task as TaskService;
use containerd_shim_protos::ttrpc::{self, r#async::TtrpcContext};
use podrun_runtime::spec::Spec;
use tokio::sync::{watch, Notify};

/// How a process ended: the exit code, or 128 + the signal that killed it.
#[derive(Debug, Clone, Copy)]
pub struct Exit {
    pub status: u32,
    pub at: SystemTime,
}

struct Task {
    bundle: String,
    pid: i32,
    started: bool,
    exit: watch::Sender<Option<Exit>>,
}

impl Task {
    fn status(&self) -> Status {
        match (*self.exit.borrow(), self.started) {
            (Some(_), _) => Status::STOPPED,
            (None, true) => Status::RUNNING,
            (None, false) => Status::CREATED,
        }
    }
}

/// The shim's tasks. It runs on one thread, and Create spawns and records a task without
/// an `.await` in between, so the reaper never sees an exit of a task not yet recorded.
pub struct Shim {
    tasks: Mutex<HashMap<String, Task>>,
    pub shutdown: Arc<Notify>,
}

impl Shim {
    pub fn new() -> Shim {
        Shim {
            tasks: Mutex::default(),
            shutdown: Arc::new(Notify::new()),
        }
    }

    /// Called by the reaper for every child it collects.
    pub fn exited(&self, pid: i32, exit: Exit) {
        // Exits of processes that are no task (a pause that failed to start) are dropped.
        if let Some(task) = lock(&self.tasks).values().find(|t| t.pid == pid) {
            task.exit.send_replace(Some(exit));
        }
    }

    fn with_task<T>(
        &self,
        id: &str,
        f: impl FnOnce(&mut Task) -> ttrpc::Result<T>,
    ) -> ttrpc::Result<T> {
        let mut tasks = lock(&self.tasks);
        let task = tasks.get_mut(id).ok_or_else(|| not_found(id))?;
        f(task)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn status(code: ttrpc::Code, msg: String) -> ttrpc::Error {
    ttrpc::Error::RpcStatus(ttrpc::get_status(code, msg))
}

fn not_found(id: &str) -> ttrpc::Error {
    status(ttrpc::Code::NOT_FOUND, format!("task {id:?} not found"))
}

fn timestamp(t: SystemTime) -> MessageField<Timestamp> {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let mut ts = Timestamp::new();
    ts.seconds = d.as_secs() as i64;
    ts.nanos = d.subsec_nanos() as i32;
    MessageField::some(ts)
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
        if !spec.is_sandbox() {
            return Err(status(
                ttrpc::Code::UNIMPLEMENTED,
                "app containers are not supported by this shim yet".into(),
            ));
        }
        let pause = crate::pause::find_pause()
            .map_err(|e| status(ttrpc::Code::FAILED_PRECONDITION, e.to_string()))?;
        let pid = crate::pause::spawn(&spec, &pause)
            .map_err(|e| status(ttrpc::Code::INTERNAL, format!("{e:#}")))?;
        if let Some(cgroup) = spec.linux.as_ref().and_then(|l| l.cgroups_path.as_deref()) {
            if let Err(e) = podrun_runtime::cgroup::join(cgroup, pid) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
                return Err(status(ttrpc::Code::INTERNAL, e.to_string()));
            }
        }
        let (exit, _) = watch::channel(None);
        lock(&self.tasks).insert(
            req.id.clone(),
            Task {
                bundle: req.bundle,
                pid,
                started: false,
                exit,
            },
        );
        tracing::info!(id = %req.id, pid, "sandbox task created with built-in pause");
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
        self.with_task(&req.id, |t| {
            if t.exit.borrow().is_some() {
                return Err(status(
                    ttrpc::Code::FAILED_PRECONDITION,
                    format!("task {:?} has exited", req.id),
                ));
            }
            t.started = true;
            Ok(api::StartResponse {
                pid: t.pid as u32,
                ..Default::default()
            })
        })
    }

    async fn state(
        &self,
        _: &TtrpcContext,
        req: api::StateRequest,
    ) -> ttrpc::Result<api::StateResponse> {
        self.with_task(&req.id, |t| {
            let exit = *t.exit.borrow();
            Ok(api::StateResponse {
                id: req.id.clone(),
                bundle: t.bundle.clone(),
                pid: t.pid as u32,
                status: EnumOrUnknown::new(t.status()),
                exit_status: exit.map_or(0, |e| e.status),
                exited_at: exit.map_or(MessageField::none(), |e| timestamp(e.at)),
                ..Default::default()
            })
        })
    }

    async fn kill(&self, _: &TtrpcContext, req: api::KillRequest) -> ttrpc::Result<Empty> {
        let pid = self.with_task(
            &req.id,
            |t| Ok((t.exit.borrow().is_none()).then_some(t.pid)),
        )?;
        if let Some(pid) = pid {
            let signal = nix::sys::signal::Signal::try_from(req.signal as i32).map_err(|_| {
                status(
                    ttrpc::Code::INVALID_ARGUMENT,
                    format!("signal {} is not valid", req.signal),
                )
            })?;
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
        let mut rx = self.with_task(&req.id, |t| Ok(t.exit.subscribe()))?;
        let exit = rx.wait_for(Option::is_some).await.map(|exit| *exit);
        let Ok(Some(exit)) = exit else {
            return Err(status(
                ttrpc::Code::NOT_FOUND,
                format!("task {:?} was deleted", req.id),
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
        let mut tasks = lock(&self.tasks);
        let task = tasks.get(&req.id).ok_or_else(|| not_found(&req.id))?;
        let Some(exit) = *task.exit.borrow() else {
            return Err(status(
                ttrpc::Code::FAILED_PRECONDITION,
                format!("task {:?} is still running", req.id),
            ));
        };
        let pid = task.pid as u32;
        tasks.remove(&req.id);
        Ok(api::DeleteResponse {
            pid,
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
        self.with_task(&req.id, |t| {
            let mut info = containerd_shim_protos::types::task::ProcessInfo::new();
            info.pid = t.pid as u32;
            Ok(api::PidsResponse {
                processes: vec![info],
                ..Default::default()
            })
        })
    }

    async fn connect(
        &self,
        _: &TtrpcContext,
        req: api::ConnectRequest,
    ) -> ttrpc::Result<api::ConnectResponse> {
        let task_pid = lock(&self.tasks).get(&req.id).map_or(0, |t| t.pid as u32);
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
