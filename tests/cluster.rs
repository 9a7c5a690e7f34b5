//! A real Kubernetes cluster on this machine (`hack/cluster`): etcd, kube-apiserver,
//! kube-scheduler and kube-controller-manager, and two `hack/nodes` nodes whose runtime is
//! podrund, each with its own kubelet and kube-proxy. For every way pods reach across nodes
//! (VXLAN, static routes, BGP): a Deployment spreads over both nodes behind a ClusterIP
//! Service; a pod on each node reaches the Service and the other node's pod by IP, which
//! sees the sender's pod IP; `kubectl logs`, `exec` (exit codes, stdin), `attach`,
//! `port-forward` and the node's stats through the API server work; the Deployment scales
//! to six replicas and back to one, and is deleted; then no node's podrund has a pod, the
//! kubelets' logs hold no failed CRI call, and nothing is left on the machine.

use std::collections::BTreeSet;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use podrun_tests::cluster::Cluster;
use serde_json::Value;

const WEB: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../hack/examples/cluster-web.yaml"
);

/// The Deployment's pods that are running and ready: (name, node, pod IP).
fn web_pods(cluster: &Cluster) -> Vec<(String, String, String)> {
    let pods = cluster.json(&["get", "pods", "-l", "app=web"]);
    pods["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
        .filter(|p| {
            p["status"]["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|c| c["type"] == "Ready" && c["status"] == "True")
        })
        .map(|p| {
            let s = |v: &Value| v.as_str().unwrap_or_default().to_owned();
            (
                s(&p["metadata"]["name"]),
                s(&p["spec"]["nodeName"]),
                s(&p["status"]["podIP"]),
            )
        })
        .collect()
}

fn all_web_pods(cluster: &Cluster) -> usize {
    cluster.json(&["get", "pods", "-l", "app=web"])["items"]
        .as_array()
        .map_or(0, Vec::len)
}

/// `kubectl exec POD -- wget` of `url`: what the server answered.
fn fetch(cluster: &Cluster, pod: &str, url: &str) -> String {
    let out = cluster.kubectl(&["exec", pod, "--", "timeout", "10", "wget", "-qO-", url]);
    out.trim().to_owned()
}

/// The pods podrund on every node of the cluster knows.
fn runtime_pods(cluster: &Cluster) -> Vec<String> {
    let podctl = podrun_tests::bin_dir().join("podctl");
    let mut all = Vec::new();
    for i in 1..=2 {
        let socket = format!("/run/podrun-nodes/pnb{}/n{i}/podrun.sock", cluster.number);
        let out = Command::new(&podctl)
            .args(["-r", &socket, "pods", "-q"])
            .stderr(Stdio::inherit())
            .output()
            .unwrap();
        assert!(out.status.success(), "podctl pods on node {i}");
        all.extend(
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .map(str::to_owned),
        );
    }
    all
}

/// The lines of the kubelets' logs that report a failed CRI call, but for one kubelet makes
/// with any runtime: when a pod is deleted it removes a dead container twice, and the
/// second time logs the NotFound of its ContainerStatus. Those are counted apart.
fn cri_errors(cluster: &Cluster) -> (Vec<String>, usize) {
    let (mut errors, mut removed_twice) = (Vec::new(), 0);
    for i in 1..=2 {
        let log = cluster.log(&format!("node{i}-kubelet"));
        let mut removed = BTreeSet::new();
        for l in log.lines() {
            if let Some((_, rest)) = l.split_once("\"RemoveContainer\" containerID=\"") {
                removed.insert(rest.split('"').next().unwrap_or_default().to_owned());
            }
            if !(l.starts_with('E') && l.contains("rpc error")) {
                continue;
            }
            let twice = l.contains("ContainerStatus from runtime service failed")
                && l.contains("code = NotFound")
                && removed.iter().any(|id| l.contains(id.as_str()));
            match twice {
                true => removed_twice += 1,
                false => errors.push(format!("node{i}: {l}")),
            }
        }
    }
    (errors, removed_twice)
}

fn scale(cluster: &Cluster, replicas: usize) {
    cluster.kubectl(&["scale", "deployment/web", &format!("--replicas={replicas}")]);
    cluster.wait(
        &format!("{replicas} ready web pods and no other"),
        Duration::from_secs(120),
        |c| web_pods(c).len() == replicas && all_web_pods(c) == replicas,
    );
}

fn a_deployment_across_two_nodes(mode: &'static str) {
    let t0 = Instant::now();
    let cluster = Cluster::up(2, mode);
    let up = t0.elapsed();
    let nodes = cluster.json(&["get", "nodes"]);
    for n in nodes["items"].as_array().unwrap() {
        let ip = n["status"]["addresses"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["type"] == "InternalIP")
            .map(|a| a["address"].as_str().unwrap().to_owned());
        let name = n["metadata"]["name"].as_str().unwrap();
        let i = name.trim_start_matches("node");
        assert_eq!(
            ip,
            Some(format!("10.{}.0.{i}", 100 + cluster.number as u32)),
            "{mode}: {name} has its own IP"
        );
    }

    let t = Instant::now();
    cluster.kubectl(&["apply", "-f", WEB]);
    cluster.wait("2 ready web pods", Duration::from_secs(120), |c| {
        web_pods(c).len() == 2
    });
    let deployed = t.elapsed();
    let pods = web_pods(&cluster);
    let on: BTreeSet<&str> = pods.iter().map(|p| p.1.as_str()).collect();
    assert_eq!(on.len(), 2, "{mode}: one replica per node: {pods:?}");
    let service = cluster.json(&["get", "service", "web"]);
    let cluster_ip = service["spec"]["clusterIP"].as_str().unwrap().to_owned();

    // Across nodes by pod IP, without NAT; and through the Service, from each node.
    for (me, other) in [(&pods[0], &pods[1]), (&pods[1], &pods[0])] {
        let seen = fetch(
            &cluster,
            &me.0,
            &format!("http://{}:8080/cgi-bin/ip", other.2),
        );
        assert_eq!(seen, me.2, "{mode}: {} sees {}'s pod IP", other.0, me.0);
        for _ in 0..4 {
            let answer = fetch(&cluster, &me.0, &format!("http://{cluster_ip}/cgi-bin/ip"));
            assert!(
                answer.parse::<std::net::IpAddr>().is_ok(),
                "{mode}: the Service answers {}: {answer:?}",
                me.0
            );
        }
    }

    // Through the API server, to either node's kubelet and podrund.
    for (pod, node, _) in &pods {
        let logs = cluster.kubectl(&["logs", pod]);
        assert!(logs.contains("serving"), "{mode}: logs of {pod}: {logs:?}");
        let out = cluster.try_kubectl(&["exec", pod, "--", "sh", "-c", "exit 7"], "");
        assert_eq!(
            out.status.code(),
            Some(7),
            "{mode}: exec's exit code on {node}"
        );
        let out = cluster.try_kubectl(&["exec", "-i", pod, "--", "cat"], "through stdin\n");
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "through stdin\n",
            "{mode}: exec -i on {node}"
        );
        let summary = cluster.kubectl(&[
            "get",
            "--raw",
            &format!("/api/v1/nodes/{node}/proxy/stats/summary"),
        ]);
        let summary: Value = serde_json::from_str(&summary).unwrap();
        let listed =
            summary["pods"].as_array().unwrap().iter().any(|p| {
                p["podRef"]["name"] == pod.as_str() && p["cpu"]["usageNanoCores"].is_u64()
            });
        assert!(
            listed,
            "{mode}: {node}'s stats summary lists {pod} with its CPU"
        );
    }
    attach_and_port_forward(&cluster, &pods[0].0);

    let t = Instant::now();
    scale(&cluster, 6);
    let on: BTreeSet<String> = web_pods(&cluster).into_iter().map(|p| p.1).collect();
    assert_eq!(on.len(), 2, "{mode}: six replicas on both nodes");
    scale(&cluster, 1);
    let scaled = t.elapsed();
    cluster.kubectl(&["delete", "-f", WEB, "--wait=true"]);
    cluster.kubectl(&["delete", "pod", "talker", "--wait=true"]);
    cluster.wait("the web pods to go", Duration::from_secs(60), |c| {
        all_web_pods(c) == 0
    });
    // kubelet removes the sandboxes of deleted pods on its next garbage collection (each
    // minute).
    cluster.wait(
        "every node's podrund to have no pod",
        Duration::from_secs(150),
        |c| runtime_pods(c).is_empty(),
    );
    let (errors, removed_twice) = cri_errors(&cluster);
    eprintln!(
        "{mode}: up {:.0} s, deployment ready {:.1} s, scale 6 and 1 {:.1} s, whole {:.0} s; \
         kubelet CRI errors: {} (and {removed_twice} NotFound of containers removed twice)",
        up.as_secs_f64(),
        deployed.as_secs_f64(),
        scaled.as_secs_f64(),
        t0.elapsed().as_secs_f64(),
        errors.len()
    );
    assert!(
        errors.is_empty(),
        "{mode}: failed CRI calls:\n{}",
        errors.join("\n")
    );
    cluster.down();
    let left = cluster.leftovers();
    assert!(left.is_empty(), "{mode}: left behind: {left:#?}");
}

/// `kubectl attach -i` to a pod that echoes its stdin, and `kubectl port-forward` to a web
/// pod, both through the API server and the node's kubelet.
fn attach_and_port_forward(cluster: &Cluster, web: &str) {
    let talker = serde_json::json!({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "talker"},
        "spec": {"automountServiceAccountToken": false, "restartPolicy": "Never",
                 "terminationGracePeriodSeconds": 1,
                 "containers": [{"name": "talker", "image": "podrun.local/busybox:1",
                                 "imagePullPolicy": "Never", "stdin": true, "stdinOnce": true,
                                 "command": ["sh", "-c", "while read l; do echo \"echo:$l\"; done"]}]}
    });
    let out = cluster.try_kubectl(&["apply", "-f", "-"], &talker.to_string());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    cluster.kubectl(&[
        "wait",
        "--for=condition=Ready",
        "pod/talker",
        "--timeout=60s",
    ]);
    let out = cluster.try_kubectl(&["attach", "-i", "talker"], "hello\n");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("echo:hello"),
        "attach -i: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // port-forward listens in the control plane's namespace, where kubectl runs.
    let mut forward = Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../hack/cluster"))
        .args(["kubectl", "--bed", &cluster.number.to_string()])
        .args(["port-forward", &format!("pod/{web}"), "18080:8080"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let ns = format!("/run/netns/pnb{}-ul", cluster.number);
    let get = || {
        Command::new("nsenter")
            .arg(format!("--net={ns}"))
            .args(["--", "timeout", "10", "wget", "-qO-"])
            .arg("http://127.0.0.1:18080/cgi-bin/ip")
            .output()
            .unwrap()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let answer = loop {
        let out = get();
        if out.status.success() || Instant::now() > deadline {
            break String::from_utf8_lossy(&out.stdout).trim().to_owned();
        }
        std::thread::sleep(Duration::from_millis(300));
    };
    let _ = forward.kill();
    let _ = forward.wait();
    assert_eq!(
        answer, "127.0.0.1",
        "port-forward reaches the pod over its localhost"
    );
}

#[test]
fn a_deployment_spreads_over_two_nodes_in_every_network_mode() {
    for mode in ["vxlan", "routed", "bgp"] {
        a_deployment_across_two_nodes(mode);
    }
}
