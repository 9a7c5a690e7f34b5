//! ListMetricDescriptors and ListPodSandboxMetrics: the cAdvisor metrics kubelet serves on
//! `/metrics/cadvisor` when it takes pod and container stats from the runtime
//! (`PodAndContainerStatsFromCRI`), made from the same figures as the stats RPCs.
//!
//! Label keys are CRI-O's, after cAdvisor's: `id` (the container or pod id), `name` (the
//! dockershim-style `k8s_<container>_<pod>_<namespace>_<uid>_<attempt>`, `POD` for the pod's
//! own figures, which is all a kubelet that does not add labels of its own has to tell pods
//! apart), `image`, and `interface` for network figures. Newer kubelets add `namespace`,
//! `pod` and `container` themselves, so they are not keys here.

use podrun_proto::cri;

use crate::error::Result;
use crate::node::Node;
use crate::stats;

/// (name, help, counter?, network?) of every metric podrun reports.
const METRICS: &[(&str, &str, bool, bool)] = &[
    (
        "container_cpu_usage_seconds_total",
        "Cumulative cpu time consumed in seconds.",
        true,
        false,
    ),
    (
        "container_memory_usage_bytes",
        "Current memory usage in bytes, including all memory regardless of when it was accessed.",
        false,
        false,
    ),
    (
        "container_memory_working_set_bytes",
        "Current working set in bytes.",
        false,
        false,
    ),
    (
        "container_memory_rss",
        "Size of RSS in bytes.",
        false,
        false,
    ),
    (
        "container_memory_failures_total",
        "Cumulative count of memory allocation failures (page faults).",
        true,
        false,
    ),
    (
        "container_spec_memory_limit_bytes",
        "Memory limit for the container.",
        false,
        false,
    ),
    (
        "container_fs_usage_bytes",
        "Number of bytes that are consumed by the container on this filesystem.",
        false,
        false,
    ),
    (
        "container_fs_inodes_total",
        "Number of inodes used by the container on this filesystem.",
        false,
        false,
    ),
    (
        "container_processes",
        "Number of processes running inside the container.",
        false,
        false,
    ),
    (
        "container_network_receive_bytes_total",
        "Cumulative count of bytes received.",
        true,
        true,
    ),
    (
        "container_network_transmit_bytes_total",
        "Cumulative count of bytes transmitted.",
        true,
        true,
    ),
    (
        "container_network_receive_errors_total",
        "Cumulative count of errors encountered while receiving.",
        true,
        true,
    ),
    (
        "container_network_transmit_errors_total",
        "Cumulative count of errors encountered while transmitting.",
        true,
        true,
    ),
];

const LABELS: [&str; 3] = ["id", "name", "image"];

pub fn descriptors() -> cri::ListMetricDescriptorsResponse {
    let descriptors = METRICS
        .iter()
        .map(|(name, help, _, network)| {
            let mut label_keys: Vec<String> = LABELS.iter().map(|l| l.to_string()).collect();
            if *network {
                label_keys.push("interface".into());
            }
            cri::MetricDescriptor {
                name: (*name).into(),
                help: (*help).into(),
                label_keys,
            }
        })
        .collect();
    cri::ListMetricDescriptorsResponse { descriptors }
}

/// One metric, with its label values in the order of its descriptor's keys.
fn metric(name: &str, labels: &[&str], value: u64, timestamp: i64) -> cri::Metric {
    let counter = METRICS.iter().any(|(n, _, c, _)| *n == name && *c);
    cri::Metric {
        name: name.into(),
        timestamp,
        metric_type: if counter {
            cri::MetricType::Counter
        } else {
            cri::MetricType::Gauge
        } as i32,
        label_values: labels.iter().map(|l| l.to_string()).collect(),
        value: Some(cri::UInt64Value { value }),
    }
}

fn v(x: &Option<cri::UInt64Value>) -> Option<u64> {
    x.as_ref().map(|v| v.value)
}

/// CPU, memory (and disk, for a container) figures as metrics labelled `labels`.
fn usage(
    cpu: Option<&cri::CpuUsage>,
    memory: Option<&cri::MemoryUsage>,
    labels: &[&str],
    out: &mut Vec<cri::Metric>,
) {
    if let Some(c) = cpu {
        if let Some(ns) = v(&c.usage_core_nano_seconds) {
            out.push(metric(
                "container_cpu_usage_seconds_total",
                labels,
                ns / 1_000_000_000,
                c.timestamp,
            ));
        }
    }
    if let Some(m) = memory {
        let t = m.timestamp;
        for (name, value) in [
            ("container_memory_usage_bytes", v(&m.usage_bytes)),
            (
                "container_memory_working_set_bytes",
                v(&m.working_set_bytes),
            ),
            ("container_memory_rss", v(&m.rss_bytes)),
            ("container_memory_failures_total", v(&m.page_faults)),
        ] {
            if let Some(value) = value {
                out.push(metric(name, labels, value, t));
            }
        }
        if let (Some(avail), Some(ws)) = (v(&m.available_bytes), v(&m.working_set_bytes)) {
            out.push(metric(
                "container_spec_memory_limit_bytes",
                labels,
                avail + ws,
                t,
            ));
        }
    }
}

pub async fn pod_metrics(node: std::sync::Arc<Node>) -> Result<Vec<cri::PodSandboxMetrics>> {
    let images: std::collections::HashMap<String, String> = node
        .containers
        .all()
        .iter()
        .map(|c| {
            let r = c.view();
            (r.id, r.image_name)
        })
        .collect();
    let list = stats::list_pods(node, cri::ListPodSandboxStatsRequest::default()).await?;
    Ok(list
        .stats
        .iter()
        .map(|pod| {
            let id = pod
                .attributes
                .as_ref()
                .map(|a| a.id.clone())
                .unwrap_or_default();
            let linux = pod.linux.clone().unwrap_or_default();
            let meta = pod
                .attributes
                .as_ref()
                .and_then(|a| a.metadata.clone())
                .unwrap_or_default();
            let name = |container: &str, attempt: u32| {
                format!(
                    "k8s_{container}_{}_{}_{}_{attempt}",
                    meta.name, meta.namespace, meta.uid
                )
            };
            let pod_name = name("POD", meta.attempt);
            let labels = [id.as_str(), pod_name.as_str(), ""];
            let mut metrics = Vec::new();
            usage(
                linux.cpu.as_ref(),
                linux.memory.as_ref(),
                &labels,
                &mut metrics,
            );
            if let Some(p) = &linux.process {
                if let Some(n) = v(&p.process_count) {
                    metrics.push(metric("container_processes", &labels, n, p.timestamp));
                }
            }
            if let Some(net) = &linux.network {
                for i in &net.interfaces {
                    let labels = [id.as_str(), pod_name.as_str(), "", i.name.as_str()];
                    for (name, value) in [
                        ("container_network_receive_bytes_total", v(&i.rx_bytes)),
                        ("container_network_transmit_bytes_total", v(&i.tx_bytes)),
                        ("container_network_receive_errors_total", v(&i.rx_errors)),
                        ("container_network_transmit_errors_total", v(&i.tx_errors)),
                    ] {
                        if let Some(value) = value {
                            metrics.push(metric(name, &labels, value, net.timestamp));
                        }
                    }
                }
            }
            let container_metrics = linux
                .containers
                .iter()
                .map(|c| {
                    let a = c.attributes.clone().unwrap_or_default();
                    let cid = a.id;
                    let m = a.metadata.unwrap_or_default();
                    let image = images.get(&cid).cloned().unwrap_or_default();
                    let container_name = name(&m.name, m.attempt);
                    let labels = [cid.as_str(), container_name.as_str(), image.as_str()];
                    let mut metrics = Vec::new();
                    usage(c.cpu.as_ref(), c.memory.as_ref(), &labels, &mut metrics);
                    if let Some(fs) = &c.writable_layer {
                        for (name, value) in [
                            ("container_fs_usage_bytes", v(&fs.used_bytes)),
                            ("container_fs_inodes_total", v(&fs.inodes_used)),
                        ] {
                            if let Some(value) = value {
                                metrics.push(metric(name, &labels, value, fs.timestamp));
                            }
                        }
                    }
                    cri::ContainerMetrics {
                        container_id: cid.clone(),
                        metrics,
                    }
                })
                .collect();
            cri::PodSandboxMetrics {
                pod_sandbox_id: id.clone(),
                metrics,
                container_metrics,
            }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_metric_has_a_descriptor_whose_labels_match_its_values() {
        let d = descriptors();
        assert_eq!(d.descriptors.len(), METRICS.len());
        let m = metric(
            "container_network_receive_bytes_total",
            &["i", "n", "", "eth0"],
            5,
            1,
        );
        let desc = d.descriptors.iter().find(|x| x.name == m.name).unwrap();
        assert_eq!(desc.label_keys.len(), m.label_values.len());
        assert_eq!(m.metric_type, cri::MetricType::Counter as i32);
        let g = metric("container_memory_working_set_bytes", &["i", "n", ""], 5, 1);
        assert_eq!(g.metric_type, cri::MetricType::Gauge as i32);
        // kubelet adds these: the runtime must not.
        for desc in &d.descriptors {
            for k in ["namespace", "pod", "container"] {
                assert!(!desc.label_keys.contains(&k.to_owned()), "{}", desc.name);
            }
        }
    }
}
