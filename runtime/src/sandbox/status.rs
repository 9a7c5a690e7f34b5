//! PodSandboxStatus and ListPodSandbox.

use std::collections::HashMap;

use podrun_proto::cri;
use serde_json::json;

use super::{Record, Sandboxes, State};
use crate::error::Result;

fn cri_state(state: State) -> cri::PodSandboxState {
    match state {
        State::Ready => cri::PodSandboxState::SandboxReady,
        State::Creating | State::NotReady => cri::PodSandboxState::SandboxNotready,
    }
}

pub async fn status(
    sandboxes: &Sandboxes,
    req: cri::PodSandboxStatusRequest,
) -> Result<cri::PodSandboxStatusResponse> {
    let pod = sandboxes.get(&req.pod_sandbox_id)?;
    let r = pod.view();
    let status = cri_status(&r);
    let mut info = HashMap::new();
    if req.verbose {
        let verbose = json!({
            "netnsPath": r.netns,
            "shimPid": r.shim.map(|p| p.pid),
            "shimSocket": r.shim_socket,
            "pausePid": r.pause.map(|p| p.pid),
            "cgroupsPath": r.cgroup,
            "notReadyReason": r.reason,
            "cniResult": r.network.as_ref().and_then(|a| a.result.clone()),
            "cniNetwork": r.network.as_ref().map(|a| &a.network.name),
            "config": r.config,
        });
        info.insert("info".to_owned(), verbose.to_string());
    }
    Ok(cri::PodSandboxStatusResponse {
        status: Some(status),
        info,
        ..Default::default()
    })
}

/// A pod's CRI status, from its record.
pub(crate) fn cri_status(r: &Record) -> cri::PodSandboxStatus {
    let namespace_options = r
        .config
        .linux
        .as_ref()
        .and_then(|l| l.security_context.as_ref())
        .and_then(|s| s.namespace_options.clone())
        .unwrap_or_default();
    let network = (!r.stopped).then(|| cri::PodSandboxNetworkStatus {
        ip: r.ips.first().cloned().unwrap_or_default(),
        additional_ips: r
            .ips
            .iter()
            .skip(1)
            .map(|ip| cri::PodIp { ip: ip.clone() })
            .collect(),
    });
    cri::PodSandboxStatus {
        id: r.id.clone(),
        metadata: Some(r.metadata()),
        state: cri_state(r.state) as i32,
        created_at: r.created_at,
        network,
        linux: Some(cri::LinuxPodSandboxStatus {
            namespaces: Some(cri::Namespace {
                options: Some(namespace_options),
            }),
        }),
        labels: r.config.labels.clone(),
        annotations: r.config.annotations.clone(),
        runtime_handler: r.runtime_handler.clone(),
    }
}

pub async fn list(
    sandboxes: &Sandboxes,
    req: cri::ListPodSandboxRequest,
) -> Result<cri::ListPodSandboxResponse> {
    let filter = req.filter.unwrap_or_default();
    let mut items = Vec::new();
    for pod in sandboxes.all() {
        if !filter.id.is_empty() && !pod.id.starts_with(&filter.id) {
            continue;
        }
        let item = pod.with_view(|r| {
            let state = cri_state(r.state);
            let wanted = filter
                .state
                .as_ref()
                .is_none_or(|s| s.state == state as i32)
                && filter
                    .label_selector
                    .iter()
                    .all(|(k, v)| r.config.labels.get(k) == Some(v));
            wanted.then(|| cri::PodSandbox {
                id: r.id.clone(),
                metadata: Some(r.metadata()),
                state: state as i32,
                created_at: r.created_at,
                labels: r.config.labels.clone(),
                annotations: r.config.annotations.clone(),
                runtime_handler: r.runtime_handler.clone(),
            })
        });
        items.extend(item);
    }
    items.sort_by_key(|p| std::cmp::Reverse(p.created_at));
    Ok(cri::ListPodSandboxResponse { items })
}
