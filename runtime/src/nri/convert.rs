//! Pods and containers as NRI describes them to plugins, from podrun's records (and, for a
//! container being created, from the OCI spec it will run with).

use ::oci_spec::runtime as oci;
use podrun_proto::nri as api;

use crate::{container, sandbox};

pub fn pod(r: &sandbox::Record) -> api::PodSandbox {
    let m = r.config.metadata.clone().unwrap_or_default();
    let mut namespaces = Vec::new();
    if let Some(netns) = &r.netns {
        namespaces.push(api::LinuxNamespace {
            r#type: "network".into(),
            path: netns.display().to_string(),
        });
    }
    api::PodSandbox {
        id: r.id.clone(),
        name: m.name,
        uid: m.uid,
        namespace: m.namespace,
        labels: r.config.labels.clone(),
        annotations: r.config.annotations.clone(),
        runtime_handler: r.runtime_handler.clone(),
        linux: Some(api::LinuxPodSandbox {
            cgroup_parent: r
                .config
                .linux
                .as_ref()
                .map(|l| l.cgroup_parent.clone())
                .unwrap_or_default(),
            cgroups_path: r.cgroup.clone(),
            namespaces,
        }),
        pid: r.pause.map_or(0, |p| p.pid as u32),
        ips: r.ips.clone(),
    }
}

fn state(s: container::State) -> api::ContainerState {
    match s {
        container::State::Created => api::ContainerState::ContainerCreated,
        container::State::Running => api::ContainerState::ContainerRunning,
        container::State::Exited => api::ContainerState::ContainerStopped,
        container::State::Unknown => api::ContainerState::ContainerUnknown,
    }
}

pub fn container(r: &container::Record) -> api::Container {
    let m = r.config.metadata.clone().unwrap_or_default();
    api::Container {
        id: r.id.clone(),
        pod_sandbox_id: r.pod_id.clone(),
        name: m.name,
        state: state(r.state) as i32,
        labels: r.config.labels.clone(),
        annotations: r.config.annotations.clone(),
        pid: r.pid,
        created_at: r.created_at,
        started_at: r.started_at,
        finished_at: r.finished_at,
        exit_code: r.exit_code,
        status_reason: r.reason.clone(),
        status_message: r.message.clone(),
        ..Default::default()
    }
}

/// A container about to be created: its record, and what its spec gives it.
pub fn created(r: &container::Record, spec: &oci::Spec) -> api::Container {
    let mut c = container(r);
    if let Some(p) = spec.process() {
        c.args = p.args().clone().unwrap_or_default();
        c.env = p.env().clone().unwrap_or_default();
    }
    c.mounts = spec
        .mounts()
        .iter()
        .flatten()
        .map(|m| api::Mount {
            destination: m.destination().display().to_string(),
            r#type: m.typ().clone().unwrap_or_default(),
            source: m
                .source()
                .as_ref()
                .map(|s| s.display().to_string())
                .unwrap_or_default(),
            options: m.options().clone().unwrap_or_default(),
        })
        .collect();
    if let Some(linux) = spec.linux() {
        let resources = linux.resources().as_ref();
        let memory = resources.and_then(|r| r.memory().as_ref());
        let cpu = resources.and_then(|r| r.cpu().as_ref());
        c.linux = Some(api::LinuxContainer {
            namespaces: linux
                .namespaces()
                .iter()
                .flatten()
                .map(|n| api::LinuxNamespace {
                    r#type: n.typ().to_string(),
                    path: n
                        .path()
                        .as_ref()
                        .map(|p| p.display().to_string())
                        .unwrap_or_default(),
                })
                .collect(),
            resources: Some(api::LinuxResources {
                memory: Some(api::LinuxMemory {
                    limit: memory
                        .and_then(|m| m.limit())
                        .map(|value| api::OptionalInt64 { value }),
                    ..Default::default()
                }),
                cpu: Some(api::LinuxCpu {
                    shares: cpu
                        .and_then(|c| c.shares())
                        .map(|value| api::OptionalUInt64 { value }),
                    quota: cpu
                        .and_then(|c| c.quota())
                        .map(|value| api::OptionalInt64 { value }),
                    period: cpu
                        .and_then(|c| c.period())
                        .map(|value| api::OptionalUInt64 { value }),
                    cpus: cpu.and_then(|c| c.cpus().clone()).unwrap_or_default(),
                    mems: cpu.and_then(|c| c.mems().clone()).unwrap_or_default(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            oom_score_adj: spec
                .process()
                .as_ref()
                .and_then(|p| p.oom_score_adj())
                .map(|v| api::OptionalInt { value: v as i64 }),
            cgroups_path: linux
                .cgroups_path()
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_default(),
            ..Default::default()
        });
    }
    c
}
