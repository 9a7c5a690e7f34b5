//! ContainerStats, ListContainerStats, PodSandboxStats and ListPodSandboxStats: CPU, memory
//! and process counts from the cgroups (v1, hybrid and v2 alike), the writable layer's bytes
//! and inodes, and the pod's network interfaces from its netns (`/proc/<pause>/net/dev`, no
//! namespace switch). Nothing is spawned: a listing reads a few small files per pod.
//!
//! `usage_nano_cores` is the CPU rate since the previous sample of the same cgroup, as
//! kubelet expects; the first sample of a cgroup has none.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use podrun_proto::cri;

use crate::cgroup::{self, Hierarchy};
use crate::clock::now_nanos;
use crate::container::{self, Dirs};
use crate::error::{Error, Result};
use crate::node::Node;
use crate::sandbox;

fn value(v: u64) -> Option<cri::UInt64Value> {
    Some(cri::UInt64Value { value: v })
}

fn labels_match(selector: &HashMap<String, String>, labels: &HashMap<String, String>) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// Runs `work` on a blocking thread: cgroup and directory reads must not hold a worker.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| Error::Internal(format!("stats task failed: {e}")))?
}

pub async fn container(
    node: Arc<Node>,
    req: cri::ContainerStatsRequest,
) -> Result<cri::ContainerStatsResponse> {
    let c = node.containers.get(&req.container_id)?.view();
    blocking(move || {
        let hierarchies = cgroup::hierarchies()?;
        let pod = node.sandboxes.get(&c.pod_id)?.view();
        let stats = container_stats(&node, &hierarchies, &pod.cgroup, &c, now_nanos());
        Ok(cri::ContainerStatsResponse { stats: Some(stats) })
    })
    .await
}

pub async fn list_containers(
    node: Arc<Node>,
    req: cri::ListContainerStatsRequest,
) -> Result<cri::ListContainerStatsResponse> {
    let f = req.filter.unwrap_or_default();
    blocking(move || {
        let hierarchies = cgroup::hierarchies()?;
        let pods = pods_by_id(&node);
        let now = now_nanos();
        let stats = node
            .containers
            .all()
            .iter()
            .map(|c| c.view())
            .filter(|c| f.id.is_empty() || c.id.starts_with(&f.id))
            .filter(|c| f.pod_sandbox_id.is_empty() || c.pod_id.starts_with(&f.pod_sandbox_id))
            .filter(|c| labels_match(&f.label_selector, &c.config.labels))
            .filter_map(|c| {
                let pod = pods.get(&c.pod_id)?;
                Some(container_stats(&node, &hierarchies, &pod.cgroup, &c, now))
            })
            .collect();
        forget_gone(&node, &pods);
        Ok(cri::ListContainerStatsResponse { stats })
    })
    .await
}

pub async fn pod(
    node: Arc<Node>,
    req: cri::PodSandboxStatsRequest,
) -> Result<cri::PodSandboxStatsResponse> {
    let pod = node.sandboxes.get(&req.pod_sandbox_id)?.view();
    blocking(move || {
        let hierarchies = cgroup::hierarchies()?;
        let stats = pod_stats(&node, &hierarchies, &pod, now_nanos());
        Ok(cri::PodSandboxStatsResponse { stats: Some(stats) })
    })
    .await
}

pub async fn list_pods(
    node: Arc<Node>,
    req: cri::ListPodSandboxStatsRequest,
) -> Result<cri::ListPodSandboxStatsResponse> {
    let f = req.filter.unwrap_or_default();
    blocking(move || {
        let hierarchies = cgroup::hierarchies()?;
        let pods = pods_by_id(&node);
        let now = now_nanos();
        let stats = pods
            .values()
            .filter(|p| f.id.is_empty() || p.id.starts_with(&f.id))
            .filter(|p| labels_match(&f.label_selector, &p.config.labels))
            .map(|p| pod_stats(&node, &hierarchies, p, now))
            .collect();
        forget_gone(&node, &pods);
        Ok(cri::ListPodSandboxStatsResponse { stats })
    })
    .await
}

/// Every pod's record, by id.
fn pods_by_id(node: &Node) -> HashMap<String, sandbox::Record> {
    node.sandboxes
        .all()
        .iter()
        .map(|p| (p.id.clone(), p.view()))
        .collect()
}

/// Drops the CPU samples of pods and containers that no longer exist.
fn forget_gone(node: &Node, pods: &HashMap<String, sandbox::Record>) {
    let mut live: Vec<String> = pods.values().map(|p| p.cgroup.clone()).collect();
    for c in node.containers.all() {
        if let Some(pod) = pods.get(&c.pod_id) {
            live.push(format!("{}/{}", pod.cgroup, c.id));
        }
    }
    node.samples.keep(&live);
}

fn cpu(node: &Node, path: &str, usage: &cgroup::Usage, now: i64) -> Option<cri::CpuUsage> {
    let used = usage.cpu_ns?;
    Some(cri::CpuUsage {
        timestamp: now,
        usage_core_nano_seconds: value(used),
        usage_nano_cores: node.samples.rate(path, now, used).and_then(value),
        psi: None,
    })
}

fn memory(usage: &cgroup::Usage, now: i64) -> Option<cri::MemoryUsage> {
    let m = usage.memory.as_ref()?;
    Some(cri::MemoryUsage {
        timestamp: now,
        working_set_bytes: value(m.working_set),
        available_bytes: m
            .limit
            .map(|l| l.saturating_sub(m.working_set))
            .and_then(value),
        usage_bytes: value(m.usage),
        rss_bytes: value(m.rss),
        page_faults: value(m.page_faults),
        major_page_faults: value(m.major_page_faults),
        psi: None,
    })
}

fn container_stats(
    node: &Node,
    hierarchies: &[Hierarchy],
    pod_cgroup: &str,
    c: &container::Record,
    now: i64,
) -> cri::ContainerStats {
    let path = format!("{pod_cgroup}/{}", c.id);
    let usage = cgroup::usage(hierarchies, &path);
    let upper = Dirs::new(&node.config, &c.id).root.join("upper");
    let (bytes, inodes) = disk_usage(&upper);
    cri::ContainerStats {
        attributes: Some(cri::ContainerAttributes {
            id: c.id.clone(),
            metadata: c.config.metadata.clone(),
            labels: c.config.labels.clone(),
            annotations: c.config.annotations.clone(),
        }),
        cpu: cpu(node, &path, &usage, now),
        memory: memory(&usage, now),
        writable_layer: Some(cri::FilesystemUsage {
            timestamp: now,
            fs_id: Some(cri::FilesystemIdentifier {
                mountpoint: node.config.root.join("containers").display().to_string(),
            }),
            used_bytes: value(bytes),
            inodes_used: value(inodes),
        }),
        swap: None,
        io: None,
    }
}

fn pod_stats(
    node: &Node,
    hierarchies: &[Hierarchy],
    pod: &sandbox::Record,
    now: i64,
) -> cri::PodSandboxStats {
    let usage = cgroup::usage(hierarchies, &pod.cgroup);
    let containers = node
        .containers
        .of_pod(&pod.id)
        .iter()
        .map(|c| container_stats(node, hierarchies, &pod.cgroup, &c.view(), now))
        .collect();
    // Through pause while it lives (a dead one's pid may be someone else's).
    let network = match (&pod.netns, &pod.pause) {
        (Some(_), Some(pause)) if pause.is_alive() => network(pause.pid, now),
        _ => None,
    };
    cri::PodSandboxStats {
        attributes: Some(cri::PodSandboxAttributes {
            id: pod.id.clone(),
            metadata: pod.config.metadata.clone(),
            labels: pod.config.labels.clone(),
            annotations: pod.config.annotations.clone(),
        }),
        linux: Some(cri::LinuxPodSandboxStats {
            cpu: cpu(node, &pod.cgroup, &usage, now),
            memory: memory(&usage, now),
            network,
            process: usage.pids.map(|n| cri::ProcessUsage {
                timestamp: now,
                process_count: value(n),
            }),
            containers,
            io: None,
        }),
        windows: None,
    }
}

/// The pod's interfaces (all but `lo`), read through its pause process; eth0 is the default.
fn network(pause_pid: i32, now: i64) -> Option<cri::NetworkUsage> {
    let text = std::fs::read_to_string(format!("/proc/{pause_pid}/net/dev")).ok()?;
    let interfaces = parse_net_dev(&text);
    Some(cri::NetworkUsage {
        timestamp: now,
        default_interface: interfaces.iter().find(|i| i.name == "eth0").cloned(),
        interfaces,
    })
}

fn parse_net_dev(text: &str) -> Vec<cri::NetworkInterfaceUsage> {
    text.lines()
        .skip(2)
        .filter_map(|line| {
            let (name, counters) = line.split_once(':')?;
            let n: Vec<u64> = counters
                .split_whitespace()
                .filter_map(|c| c.parse().ok())
                .collect();
            let name = name.trim();
            (name != "lo" && n.len() >= 16).then(|| cri::NetworkInterfaceUsage {
                name: name.to_owned(),
                rx_bytes: value(n[0]),
                rx_errors: value(n[2]),
                tx_bytes: value(n[8]),
                tx_errors: value(n[10]),
            })
        })
        .collect()
}

/// Bytes (allocated blocks) and inodes under `dir`, not following symlinks nor crossing
/// into other file systems.
fn disk_usage(dir: &Path) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    fn walk(p: &Path, dev: u64, acc: &mut (u64, u64)) {
        let Ok(meta) = std::fs::symlink_metadata(p) else {
            return;
        };
        if meta.dev() != dev {
            return;
        }
        acc.0 += meta.blocks() * 512;
        acc.1 += 1;
        if meta.is_dir() {
            // Listed, and the directory closed, before going down: a deep tree made by a
            // container cannot use up podrund's file descriptors.
            let entries: Vec<_> = std::fs::read_dir(p)
                .into_iter()
                .flatten()
                .flatten()
                .map(|e| e.path())
                .collect();
            for e in entries {
                walk(&e, dev, acc);
            }
        }
    }
    let mut acc = (0, 0);
    if let Ok(meta) = std::fs::symlink_metadata(dir) {
        walk(dir, std::os::unix::fs::MetadataExt::dev(&meta), &mut acc);
    }
    acc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_rate_comes_from_the_previous_sample_of_the_same_cgroup() {
        let s = crate::cgroup::CpuSamples::default();
        assert_eq!(s.rate("/p/c", 1_000_000_000, 5_000_000_000), None);
        // 0.5 s of CPU in 1 s: half a core.
        assert_eq!(
            s.rate("/p/c", 2_000_000_000, 5_500_000_000),
            Some(500_000_000)
        );
        assert_eq!(s.rate("/p/other", 2_000_000_000, 1), None);
        s.keep(&["/p/other".into()]);
        assert_eq!(
            s.rate("/p/c", 3_000_000_000, 6_000_000_000),
            None,
            "forgotten"
        );
    }

    #[test]
    fn net_dev_lists_every_interface_but_lo() {
        let text = "Inter-|   Receive                                                |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed
    lo:     140       2    0    0    0     0          0         0      140       2    0    0    0     0       0          0
  eth0:    1296      14    1    0    0     0          0         0      866       9    2    0    0     0       0          0
";
        let got = parse_net_dev(text);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].name, "eth0");
        assert_eq!(
            (
                got[0].rx_bytes,
                got[0].rx_errors,
                got[0].tx_bytes,
                got[0].tx_errors
            ),
            (value(1296), value(1), value(866), value(2))
        );
    }
}
