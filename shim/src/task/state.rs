//! What containerd reads of a task: a process's State, the task's Pids (its cgroup's, else
//! the init's) and its Stats (cgroup metrics).

use containerd_shim_protos::api;
use containerd_shim_protos::protobuf::{EnumOrUnknown, MessageField};
use containerd_shim_protos::ttrpc;

use super::{lock, timestamp, Shim};

impl Shim {
    pub(super) async fn process_state(
        &self,
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

    pub(super) async fn task_pids(
        &self,
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

    pub(super) async fn task_stats(
        &self,
        req: api::StatsRequest,
    ) -> ttrpc::Result<api::StatsResponse> {
        let cgroup = self.cgroup(&req.id)?;
        Ok(api::StatsResponse {
            stats: Some(crate::stats::metrics(&cgroup)).into(),
            ..Default::default()
        })
    }
}
