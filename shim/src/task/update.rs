//! Changing a live task: Pause and Resume freeze and thaw a container through its runtime,
//! and Update, besides new resources, carries podrun's additions to the protocol (described
//! in `task/mod.rs`): reopening the CRI log, adding and removing readers of the output.

use containerd_shim_protos::api;
use containerd_shim_protos::events::task as events;
use containerd_shim_protos::protobuf::well_known_types::empty::Empty;
use containerd_shim_protos::topics;
use containerd_shim_protos::ttrpc;

use super::{
    internal, lock, not_found, status, Shim, ATTACH_STDERR, ATTACH_STDOUT, DETACH, REOPEN_LOG,
};

impl Shim {
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

    pub(super) async fn pause_task(&self, req: api::PauseRequest) -> ttrpc::Result<Empty> {
        self.freeze(&req.id, true).await?;
        let event = events::TaskPaused {
            container_id: req.id.clone(),
            ..Default::default()
        };
        self.events.publish(topics::TASK_PAUSED_EVENT_TOPIC, event);
        Ok(Empty::new())
    }

    pub(super) async fn resume_task(&self, req: api::ResumeRequest) -> ttrpc::Result<Empty> {
        self.freeze(&req.id, false).await?;
        let event = events::TaskResumed {
            container_id: req.id.clone(),
            ..Default::default()
        };
        self.events.publish(topics::TASK_RESUMED_EVENT_TOPIC, event);
        Ok(Empty::new())
    }

    pub(super) async fn update_task(&self, req: api::UpdateTaskRequest) -> ttrpc::Result<Empty> {
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
}
