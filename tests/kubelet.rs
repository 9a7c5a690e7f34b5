//! A real kubelet (v1.35, ../shared/tools) runs pods on podrund for five minutes
//! (PODRUN_KUBELET_SECONDS to change it): probes of every kind pass, a crashing container is
//! restarted with its exit code, an in-place resize reaches the container's cgroup, the
//! summary API and /metrics/cadvisor (from the CRI) list every pod, and kubelet's log holds
//! no failed CRI call. Then kubelet tears its pods down and nothing is left.

use std::path::Path;
use std::time::{Duration, Instant};

use podrun_tests::kube::{Kube, NODE};
use podrun_tests::workload::Bed;
use serde_json::{json, Value};

/// Sleeps until SIGTERM (a PID 1 that ignores it waits out the whole grace period).
const SLEEP: &str = "trap 'exit 0' TERM; sleep 100000 & wait";

fn probes_pod(image: &str) -> Value {
    let probe = |action: Value| {
        let mut p = json!({"periodSeconds": 2, "timeoutSeconds": 5, "failureThreshold": 5});
        p.as_object_mut()
            .unwrap()
            .extend(action.as_object().unwrap().clone());
        p
    };
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "probes", "namespace": "default"},
        "spec": {"containers": [
            {"name": "web", "image": image,
             "command": ["sh", "-c", "mkdir -p /www && echo ok > /www/index.html && exec httpd -f -p 8080 -h /www"],
             "livenessProbe": probe(json!({"httpGet": {"path": "/index.html", "port": 8080}})),
             "readinessProbe": probe(json!({"tcpSocket": {"port": 8080}}))},
            // Its readiness needs the web container over the pod's localhost.
            {"name": "exec", "image": image,
             "command": ["sh", "-c", &format!("touch /tmp/healthy; {SLEEP}")],
             "livenessProbe": probe(json!({"exec": {"command": ["cat", "/tmp/healthy"]}})),
             "readinessProbe": probe(json!({"exec": {"command": ["wget", "-qO-", "http://127.0.0.1:8080/index.html"]}}))}
        ]}
    })
}

fn crasher_pod(image: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "crasher", "namespace": "default"},
        "spec": {"containers": [{"name": "c", "image": image, "command": ["sh", "-c", "sleep 2; exit 3"]}]}
    })
}

fn resize_pod(image: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "resize", "namespace": "default"},
        "spec": {
            "nodeName": NODE, "automountServiceAccountToken": false,
            "containers": [{"name": "c", "image": image, "command": ["sh", "-c", SLEEP],
                "resources": {"requests": {"cpu": "100m", "memory": "32Mi"},
                              "limits": {"cpu": "200m", "memory": "64Mi"}}}]
        }
    })
}

fn ready(pod: &Value) -> bool {
    pod["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| c["type"] == "Ready" && c["status"] == "True")
}

fn container_status<'a>(pod: &'a Value, name: &str) -> &'a Value {
    pod["status"]["containerStatuses"]
        .as_array()
        .and_then(|a| a.iter().find(|c| c["name"] == name))
        .unwrap_or(&Value::Null)
}

/// The host cgroup dir of a container's init process, for one v1 controller (or v2).
fn cgroup_dir(pid: u64, controller: &str) -> std::path::PathBuf {
    let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    for line in cgroups.lines() {
        let mut f = line.splitn(3, ':');
        let (_, controllers, path) = (f.next(), f.next().unwrap(), f.next().unwrap());
        if controllers.split(',').any(|c| c == controller) {
            let mount = podrun_tests::cgroup_hierarchies()
                .into_iter()
                .find(|h| {
                    h.file_name()
                        .unwrap()
                        .to_string_lossy()
                        .split(',')
                        .any(|c| c == controller)
                })
                .unwrap();
            return mount.join(path.trim_start_matches('/'));
        }
    }
    panic!("no {controller} cgroup in {cgroups}");
}

/// kubelet's own cgroups under its root: QoS classes and pod<uid> dirs, nothing of podrun's.
fn kubelet_cgroups_only(root: &Path) -> Vec<String> {
    let mut foreign = Vec::new();
    for e in std::fs::read_dir(root).into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !e.path().is_dir() {
            continue;
        }
        if name == "kubepods"
            || name == "burstable"
            || name == "besteffort"
            || name.starts_with("pod")
        {
            foreign.extend(kubelet_cgroups_only(&e.path()));
        } else {
            foreign.push(e.path().display().to_string());
        }
    }
    foreign
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubelet_runs_pods_on_podrund_without_a_cri_error() {
    let seconds: u64 = std::env::var("PODRUN_KUBELET_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(300);
    let mut bed = Bed::start().await;
    // kubelet wants its cgroup root to exist in every hierarchy.
    for h in podrun_tests::cgroup_hierarchies() {
        let root = h.join(bed.node.cgroup_parent.trim_start_matches('/'));
        std::fs::create_dir_all(&root).unwrap();
        for f in ["cpuset.cpus", "cpuset.mems"] {
            if let Ok(v) = std::fs::read_to_string(h.join(f)) {
                let _ = std::fs::write(root.join(f), v);
            }
        }
    }
    let started = Instant::now();
    let mut kube = Kube::start(&bed.node);
    let manifests = kube.dir.join("manifests");
    for (name, pod) in [
        ("probes", probes_pod(&bed.busybox)),
        ("crasher", crasher_pod(&bed.busybox)),
    ] {
        // Whole files only: kubelet may read one while it is being written.
        let file = kube.dir.join(format!("{name}.json"));
        std::fs::write(&file, pod.to_string()).unwrap();
        std::fs::rename(&file, manifests.join(format!("{name}.json"))).unwrap();
    }
    kube.kubectl(
        &["apply", "-f", "-"],
        Some(&resize_pod(&bed.busybox).to_string()),
    );
    let probes = format!("probes-{NODE}");
    let crasher = format!("crasher-{NODE}");
    kube.wait("the pods to be ready", Duration::from_secs(180), |k| {
        k.pod(&probes).is_some_and(|p| ready(&p)) && k.pod("resize").is_some_and(|p| ready(&p))
    });
    eprintln!("pods ready after {:?}", started.elapsed());

    // In-place resize: the new limits reach the container's cgroup and its CRI status.
    kube.kubectl(
        &["patch", "pod", "resize", "--subresource", "resize", "-p",
          r#"{"spec":{"containers":[{"name":"c","resources":{"requests":{"cpu":"200m","memory":"48Mi"},"limits":{"cpu":"400m","memory":"128Mi"}}}]}}"#],
        None,
    );
    kube.wait("the resize to be actuated", Duration::from_secs(60), |k| {
        let pod = k.pod("resize").unwrap();
        let limits = &container_status(&pod, "c")["resources"]["limits"];
        limits["cpu"] == "400m" && limits["memory"] == "128Mi"
    });
    let pod = kube.pod("resize").unwrap();
    let id = container_status(&pod, "c")["containerID"]
        .as_str()
        .unwrap()
        .split("://")
        .nth(1)
        .unwrap()
        .to_owned();
    let (status, info) = bed.status_and_info(&id).await;
    let linux = status.resources.unwrap().linux.unwrap();
    assert_eq!(
        (linux.cpu_quota, linux.memory_limit_in_bytes),
        (40_000, 128 << 20)
    );
    let pid = info["pid"].as_u64().unwrap();
    let read = |controller: &str, file: &str| {
        std::fs::read_to_string(cgroup_dir(pid, controller).join(file))
            .unwrap()
            .trim()
            .to_owned()
    };
    assert_eq!(read("cpu", "cpu.cfs_quota_us"), "40000");
    assert_eq!(
        read("memory", "memory.limit_in_bytes"),
        (128u64 << 20).to_string()
    );

    // The long run: probes keep passing, nothing restarts but the crasher.
    let end = started + Duration::from_secs(seconds);
    while Instant::now() < end {
        let pod = kube.pod(&probes).expect("the probes pod");
        assert!(
            ready(&pod),
            "the probes pod stopped being ready: {:#}",
            pod["status"]
        );
        for c in ["web", "exec"] {
            assert_eq!(
                container_status(&pod, c)["restartCount"],
                0,
                "{c}: {:#}",
                pod["status"]
            );
        }
        tokio::time::sleep(Duration::from_secs(10)).await;
    }
    let pod = kube.pod(&crasher).unwrap();
    let c = container_status(&pod, "c");
    assert!(c["restartCount"].as_u64().unwrap() >= 2, "{c:#}");
    assert_eq!(c["lastState"]["terminated"]["exitCode"], 3, "{c:#}");

    // The summary API: every pod with CPU, memory, network and its running containers'
    // figures (the crasher's container is mostly waiting out its back-off).
    let summary: Value = serde_json::from_str(&kube.get("/stats/summary")).unwrap();
    for (name, containers) in [
        (&probes, &["web", "exec"][..]),
        (&crasher, &[]),
        (&"resize".to_owned(), &["c"]),
    ] {
        let pod = summary["pods"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["podRef"]["name"] == name.as_str())
            .unwrap_or_else(|| panic!("{name} in /stats/summary:\n{summary:#}"));
        assert!(
            pod["cpu"]["usageCoreNanoSeconds"].as_u64() > Some(0),
            "{pod:#}"
        );
        assert!(
            pod["memory"]["workingSetBytes"].as_u64() > Some(0),
            "{pod:#}"
        );
        assert!(pod["network"]["rxBytes"].as_u64().is_some(), "{pod:#}");
        for c in containers {
            let s = pod["containers"]
                .as_array()
                .and_then(|a| a.iter().find(|s| s["name"] == *c))
                .unwrap_or_else(|| panic!("{c} in {pod:#}"));
            assert!(
                s["cpu"]["usageCoreNanoSeconds"].as_u64().is_some()
                    && s["memory"]["workingSetBytes"].as_u64().is_some(),
                "{s:#}"
            );
        }
    }
    let probes_summary = summary["pods"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["podRef"]["name"] == probes.as_str())
        .unwrap();
    assert!(
        probes_summary["network"]["rxBytes"].as_u64() > Some(0),
        "the probes reached the pod"
    );

    // /metrics/cadvisor, served from ListPodSandboxMetrics: this kubelet labels series with
    // the runtime's keys only, so pod and container are in `name`.
    let metrics = kube.get("/metrics/cadvisor");
    let web = format!("name=\"k8s_web_{probes}_default_");
    let pod_level = format!("name=\"k8s_POD_{probes}_default_");
    for (series, name) in [
        ("container_cpu_usage_seconds_total", &web),
        ("container_memory_working_set_bytes", &web),
        ("container_memory_working_set_bytes", &pod_level),
        ("container_network_receive_bytes_total", &pod_level),
    ] {
        assert!(
            metrics
                .lines()
                .any(|l| l.starts_with(&format!("{series}{{")) && l.contains(name.as_str())),
            "{series} with {name} in /metrics/cadvisor:\n{}",
            &metrics[..metrics.len().min(4000)]
        );
    }

    // kubelet's log: not one failed CRI call.
    let log = kube.log("kubelet");
    let failed: Vec<&str> = log
        .lines()
        .filter(|l| l.starts_with('E') && l.contains("rpc error"))
        .collect();
    assert!(
        failed.is_empty(),
        "failed CRI calls in kubelet's log:\n{}",
        failed.join("\n")
    );

    // kubelet tears its pods down; then nothing of theirs is left.
    kube.kubectl(&["delete", "pod", "resize", "--wait=false"], None);
    for name in ["probes", "crasher"] {
        std::fs::remove_file(manifests.join(format!("{name}.json"))).unwrap();
    }
    kube.wait("kubelet to stop its pods", Duration::from_secs(90), |_| {
        let out = bed.node.podctl(&["pods", "--state", "ready", "-q"]);
        out.trim().is_empty()
    });
    kube.stop_kubelet();
    for id in bed.node.podctl(&["pods", "-q"]).split_whitespace() {
        bed.node.podctl(&["rmp", id]);
    }
    let mut foreign = Vec::new();
    for h in podrun_tests::cgroup_hierarchies() {
        let root = h.join(bed.node.cgroup_parent.trim_start_matches('/'));
        foreign.extend(kubelet_cgroups_only(&root));
        podrun_tests::remove_cgroup_tree(&root.join("kubepods"));
    }
    assert!(foreign.is_empty(), "cgroups of podrun's left: {foreign:?}");
    drop(kube);
    bed.assert_no_leaks();
}
