//! The pod's infra-container spec (the bundle's config.json) as a pure function of the pod's
//! record: which namespaces pause gets or joins, its hostname, its cgroup.

use std::collections::BTreeMap;

use podrun_proto::cri::NamespaceMode;

use super::{namespace_mode, Record};
use crate::oci_config::{
    Linux, Namespace, Process, Spec, CONTAINER_TYPE, CONTAINER_TYPE_SANDBOX, SANDBOX_ID,
};

pub fn pause_spec(record: &Record) -> Spec {
    let ns = |kind: &str, path: Option<String>| Namespace {
        kind: kind.into(),
        path,
    };
    let mut namespaces = Vec::new();
    // Joined first: the namespaces pause makes then belong to the pod's user namespace.
    if let Some(u) = &record.userns {
        namespaces.push(ns("user", Some(u.pin.display().to_string())));
    }
    if let Some(netns) = &record.netns {
        namespaces.push(ns("network", Some(netns.display().to_string())));
        // hostNetwork pods keep the node's UTS namespace, and so its hostname.
        namespaces.push(ns("uts", None));
    }
    if namespace_mode(&record.config, |o| o.ipc) != NamespaceMode::Node {
        namespaces.push(ns("ipc", None));
    }
    if namespace_mode(&record.config, |o| o.pid) != NamespaceMode::Node {
        namespaces.push(ns("pid", None));
    }
    let annotations = BTreeMap::from([
        (CONTAINER_TYPE.to_owned(), CONTAINER_TYPE_SANDBOX.to_owned()),
        (SANDBOX_ID.to_owned(), record.id.clone()),
    ]);
    Spec {
        oci_version: "1.0.2".into(),
        process: Some(Process {
            args: vec!["/pause".into()],
            cwd: "/".into(),
            terminal: false,
        }),
        hostname: (record.netns.is_some() && !record.config.hostname.is_empty())
            .then(|| record.config.hostname.clone()),
        annotations,
        linux: Some(Linux {
            namespaces,
            cgroups_path: Some(record.cgroup.clone()),
        }),
    }
}

#[cfg(test)]
mod tests {
    use podrun_proto::cri;

    use super::*;

    fn record(network: NamespaceMode, pid: NamespaceMode) -> Record {
        let options = cri::NamespaceOption {
            network: network as i32,
            pid: pid as i32,
            ..Default::default()
        };
        let config = cri::PodSandboxConfig {
            hostname: "web-0".into(),
            linux: Some(cri::LinuxPodSandboxConfig {
                security_context: Some(cri::LinuxSandboxSecurityContext {
                    namespace_options: Some(options),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        Record {
            version: 1,
            id: "abc".into(),
            state: super::super::State::Creating,
            config,
            runtime_handler: String::new(),
            created_at: 0,
            netns: (network != NamespaceMode::Node).then(|| "/run/netns/podrun-abc".into()),
            cgroup: "/podrun/abc".into(),
            shim_socket: "/run/podrun/s/abc".into(),
            shim: None,
            pause: None,
            network: None,
            ips: vec![],
            shm: None,
            stopped: false,
            userns: None,
            reason: String::new(),
            del_failures: 0,
        }
    }

    #[test]
    fn pod_network_pod_pid_spec_matches_expected_json() {
        let spec = pause_spec(&record(NamespaceMode::Pod, NamespaceMode::Pod));
        let want = serde_json::json!({
            "ociVersion": "1.0.2",
            "process": {"args": ["/pause"], "cwd": "/"},
            "hostname": "web-0",
            "annotations": {"io.kubernetes.cri.container-type": "sandbox", "io.kubernetes.cri.sandbox-id": "abc"},
            "linux": {
                "namespaces": [
                    {"type": "network", "path": "/run/netns/podrun-abc"},
                    {"type": "uts"}, {"type": "ipc"}, {"type": "pid"}
                ],
                "cgroupsPath": "/podrun/abc"
            }
        });
        assert_eq!(serde_json::to_value(&spec).unwrap(), want);
        assert!(spec.is_sandbox());
    }

    #[test]
    fn host_network_and_host_pid_keep_the_nodes_namespaces() {
        let spec = pause_spec(&record(NamespaceMode::Node, NamespaceMode::Node));
        let kinds: Vec<&str> = spec
            .linux
            .as_ref()
            .unwrap()
            .namespaces
            .iter()
            .map(|n| n.kind.as_str())
            .collect();
        assert_eq!(kinds, ["ipc"]);
        assert_eq!(spec.hostname, None);
    }
}
