//! ContainerStatus and ListContainers.

use std::collections::HashMap;

use podrun_proto::cri;

use super::{Containers, Record, State};
use crate::error::Result;

fn cri_state(s: State) -> cri::ContainerState {
    match s {
        State::Created => cri::ContainerState::ContainerCreated,
        State::Running => cri::ContainerState::ContainerRunning,
        State::Exited => cri::ContainerState::ContainerExited,
        State::Unknown => cri::ContainerState::ContainerUnknown,
    }
}

fn mounts(r: &Record) -> Vec<cri::Mount> {
    r.config.mounts.clone()
}

pub async fn status(
    containers: &Containers,
    req: cri::ContainerStatusRequest,
) -> Result<cri::ContainerStatusResponse> {
    let r = containers.get(&req.container_id)?.view();
    let status = cri_status(&r);
    let mut info = HashMap::new();
    if req.verbose {
        let v = serde_json::json!({
            "pid": r.pid, "sandboxID": r.pod_id, "runtime": r.runtime, "bundle": r.bundle,
            "rootfs": r.rootfs, "config": r.config,
        });
        info.insert("info".to_owned(), v.to_string());
    }
    Ok(cri::ContainerStatusResponse {
        status: Some(status),
        info,
    })
}

/// A container's CRI status, from its record.
pub(crate) fn cri_status(r: &Record) -> cri::ContainerStatus {
    cri::ContainerStatus {
        id: r.id.clone(),
        metadata: r.config.metadata.clone(),
        state: cri_state(r.state) as i32,
        created_at: r.created_at,
        started_at: r.started_at,
        finished_at: r.finished_at,
        exit_code: r.exit_code,
        image: Some(cri::ImageSpec {
            image: r.image_name.clone(),
            ..Default::default()
        }),
        image_ref: r.image_id.clone(),
        image_id: r.image_id.clone(),
        reason: r.reason.clone(),
        message: r.message.clone(),
        labels: r.config.labels.clone(),
        annotations: r.config.annotations.clone(),
        mounts: mounts(r),
        log_path: r.log_path.clone(),
        resources: Some(cri::ContainerResources {
            linux: r.config.linux.as_ref().and_then(|l| l.resources.clone()),
            windows: None,
        }),
        user: Some(cri::ContainerUser {
            linux: Some(cri::LinuxContainerUser {
                uid: r.user.uid.into(),
                gid: r.user.gid.into(),
                supplemental_groups: r.user.additional_gids.iter().map(|g| (*g).into()).collect(),
            }),
        }),
        ..Default::default()
    }
}

/// A container as ListContainers shows it, if it passes the filter.
fn listed(r: &Record, f: &cri::ContainerFilter) -> Option<cri::Container> {
    let wanted = (f.id.is_empty() || r.id.starts_with(&f.id))
        && (f.pod_sandbox_id.is_empty() || r.pod_id.starts_with(&f.pod_sandbox_id))
        && f.state
            .as_ref()
            .is_none_or(|s| s.state == cri_state(r.state) as i32)
        && f.label_selector
            .iter()
            .all(|(k, v)| r.config.labels.get(k) == Some(v));
    wanted.then(|| cri::Container {
        id: r.id.clone(),
        pod_sandbox_id: r.pod_id.clone(),
        metadata: r.config.metadata.clone(),
        image: Some(cri::ImageSpec {
            image: r.image_name.clone(),
            ..Default::default()
        }),
        image_ref: r.image_id.clone(),
        image_id: r.image_id.clone(),
        state: cri_state(r.state) as i32,
        created_at: r.created_at,
        labels: r.config.labels.clone(),
        annotations: r.config.annotations.clone(),
    })
}

pub async fn list(
    containers: &Containers,
    req: cri::ListContainersRequest,
) -> Result<cri::ListContainersResponse> {
    let f = req.filter.unwrap_or_default();
    let mut containers: Vec<cri::Container> = containers
        .all()
        .iter()
        .filter_map(|c| c.with_view(|r| listed(r, &f)))
        .collect();
    containers.sort_by_key(|c| std::cmp::Reverse(c.created_at));
    Ok(cri::ListContainersResponse { containers })
}
