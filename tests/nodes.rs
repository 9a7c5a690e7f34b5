//! Pods across nodes: a bed of node namespaces on one machine (hack/nodes), each with its
//! own podrund, joined by plain routes, BGP (real BIRD) or VXLAN; and `podctl netcheck`
//! on it. Real kernel, real CNI plugins, real bird2. Run as root (hack/test).

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Duration;

use podrun_tests::bed::{require, seen_from, Bed, BedPod, PeerServer};
use podrun_tests::wait_until;

const PORT: u16 = 8080;

/// The Kubernetes network model on a bed: pods on node 1 reach pods on every other node by
/// pod IP over TCP and are seen with their own IP (no NAT); node 1 reaches every other
/// node's pods; two pods on node 1 reach each other over the bridge. Returns the pods (two
/// on node 1, then one per other node) and their servers.
async fn assert_network_model(bed: &Bed) -> (Vec<BedPod>, Vec<PeerServer>) {
    let mut pods = vec![bed.run_pod(0, "a1").await, bed.run_pod(0, "a2").await];
    for i in 1..bed.nodes.len() {
        pods.push(bed.run_pod(i, &format!("b{i}")).await);
    }
    let servers: Vec<PeerServer> = pods
        .iter()
        .map(|p| PeerServer::start(&p.netns, PORT).expect("server in pod"))
        .collect();
    for (i, node) in bed.nodes.iter().enumerate() {
        let owned = if i == 0 {
            &pods[..2]
        } else {
            &pods[i + 1..i + 2]
        };
        for p in owned {
            assert!(
                p.ip.to_string().starts_with(&node.pod_prefix()),
                "{} not in {}'s pod CIDR {}",
                p.ip,
                node.name,
                node.pod_cidr
            );
        }
    }
    let a1 = &pods[0];
    for b in &pods[1..] {
        let seen = seen_from(&a1.netns, SocketAddr::new(b.ip, PORT))
            .unwrap_or_else(|e| panic!("{} mode: pod {} -> {}: {e:#}", bed.mode, a1.ip, b.ip));
        assert_eq!(
            seen, a1.ip,
            "{} saw {} as {seen}: NAT on the way",
            b.ip, a1.ip
        );
        // and back
        let seen = seen_from(&b.netns, SocketAddr::new(a1.ip, PORT)).expect("back to a1");
        assert_eq!(seen, b.ip);
    }
    let node1 = bed.nodes[0].netns_path();
    for b in &pods[2..] {
        seen_from(&node1, SocketAddr::new(b.ip, PORT))
            .unwrap_or_else(|e| panic!("{} mode: node 1 -> pod {}: {e:#}", bed.mode, b.ip));
    }
    (pods, servers)
}

async fn remove_all(bed: &Bed, pods: &[BedPod]) {
    for (k, p) in pods.iter().enumerate() {
        let node = if k < 2 { 0 } else { k - 1 };
        bed.remove_pod(node, &p.id).await;
    }
}

fn assert_clean(bed: &Bed, pods: &[BedPod]) {
    bed.down();
    let ids: Vec<String> = pods.iter().map(|p| p.id.clone()).collect();
    let left = bed.leftovers(&ids);
    assert!(
        left.is_empty(),
        "hack/nodes down left:\n  {}",
        left.join("\n  ")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routed_pods_reach_pods_on_three_nodes_without_nat() {
    let bed = Bed::up(3, "routed");
    // Each node has a static route to every other node's pod CIDR via that node's IP.
    for (i, node) in bed.nodes.iter().enumerate() {
        let routes = node.ip(&["route", "show"]).unwrap();
        for (j, other) in bed.nodes.iter().enumerate().filter(|(j, _)| *j != i) {
            let want = format!("{} via {}", other.pod_cidr, other.ip);
            assert!(
                routes.contains(&want),
                "{}: no `{want}` ({j}) in\n{routes}",
                node.name
            );
        }
    }
    let (pods, servers) = assert_network_model(&bed).await;
    drop(servers);
    remove_all(&bed, &pods).await;
    assert_clean(&bed, &pods);
}

/// Bytes a link has sent and received, from the kernel's counters.
fn counters(bed: &Bed, node: usize, dev: &str) -> (u64, u64) {
    let out = bed.nodes[node]
        .ip(&["-s", "-j", "link", "show", "dev", dev])
        .unwrap();
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let s = &v[0]["stats64"];
    (
        s["tx"]["packets"].as_u64().unwrap(),
        s["rx"]["packets"].as_u64().unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vxlan_pods_reach_across_nodes_and_the_underlay_carries_only_udp_4789() {
    require("tcpdump", "tcpdump");
    let bed = Bed::up(2, "vxlan");
    let details = bed.nodes[0]
        .ip(&["-d", "link", "show", "dev", "vxlan1"])
        .unwrap();
    assert!(details.contains("vxlan id 1"), "{details}");
    assert!(details.contains("dstport 4789"), "{details}");
    assert!(details.contains("nolearning"), "{details}");
    assert!(details.contains("mtu 1450"), "{details}");
    let before = counters(&bed, 0, "vxlan1");

    // Capture IPv4 on the underlay bridge, in the bed's own underlay namespace (IGMP
    // reports, which interfaces send on their own when they join groups, aside).
    let ul = format!("{}-ul", bed.prefix());
    let capture = Command::new("timeout")
        .args(["30", "ip", "netns", "exec", &ul])
        .args([
            "tcpdump",
            "-i",
            "br0",
            "-n",
            "-l",
            "-c",
            "6",
            "ip and not igmp",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("tcpdump");
    std::thread::sleep(Duration::from_millis(700));
    let (pods, servers) = assert_network_model(&bed).await;
    let after = counters(&bed, 0, "vxlan1");
    assert!(
        after.0 > before.0 && after.1 > before.1,
        "vxlan1 counters did not grow: {before:?} -> {after:?}"
    );

    let out = tokio::task::spawn_blocking(move || capture.wait_with_output())
        .await
        .unwrap()
        .expect("tcpdump output");
    let text = String::from_utf8_lossy(&out.stdout);
    let (n1, n2) = (bed.nodes[0].ip.to_string(), bed.nodes[1].ip.to_string());
    let lines: Vec<&str> = text.lines().filter(|l| l.contains(" IP ")).collect();
    assert!(
        !lines.is_empty(),
        "nothing captured on the underlay:\n{text}"
    );
    for l in &lines {
        // "... IP 10.X.0.1.41234 > 10.X.0.2.4789: VXLAN, flags [I] (0x08), vni 1"
        let between_nodes = (l.contains(&format!("IP {n1}."))
            && l.contains(&format!("> {n2}.4789")))
            || (l.contains(&format!("IP {n2}.")) && l.contains(&format!("> {n1}.4789")));
        assert!(
            between_nodes,
            "underlay frame not VXLAN between node IPs: {l}"
        );
        for p in &pods {
            assert!(
                !l.contains(&format!("IP {}.", p.ip)),
                "pod IP on the underlay: {l}"
            );
        }
    }

    // netcheck sees the VXLAN device and the remote node on the path.
    let socket2 = bed.nodes[1].socket.display().to_string();
    let out = bed.nodes[0].podctl(&["netcheck", "--json", "--peer-node", &socket2]);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("netcheck JSON");
    assert_eq!(report["ok"], true, "{report:#}");
    let text = report.to_string();
    assert!(text.contains("\"hop\":\"vxlan\""), "{report:#}");
    assert!(
        text.contains(&format!("dst {n2} (remote node)")),
        "{report:#}"
    );

    drop(servers);
    remove_all(&bed, &pods).await;
    assert_clean(&bed, &pods);
}

fn birdc(bed: &Bed, node: usize, cmd: &str) -> String {
    let sock = bed.dir().join(format!("n{}/bird.ctl", node + 1));
    let out = Command::new("birdc")
        .arg("-s")
        .arg(&sock)
        .args(cmd.split(' '))
        .output()
        .expect("birdc");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bgp_routes_come_from_bird_and_follow_announcements() {
    let mut bed = Bed::up(2, "bgp");
    // No static routes: node 1's route to node 2's pods was installed by BIRD.
    let learned = bed.nodes[0]
        .ip(&["route", "show", "proto", "bird"])
        .unwrap();
    let want = format!("{} via {}", bed.nodes[1].pod_cidr, bed.nodes[1].ip);
    assert!(
        learned.contains(&want),
        "no `{want}` from bird on node 1:\n{learned}"
    );
    let all = bed.nodes[0].ip(&["route", "show"]).unwrap();
    assert!(
        !all.contains("proto static"),
        "static routes on a bgp bed:\n{all}"
    );
    let (mut pods, servers) = assert_network_model(&bed).await;

    // A node added later is reachable once its daemon peers.
    bed.add_node();
    let c = bed.run_pod(2, "c").await;
    let _server_c = PeerServer::start(&c.netns, PORT).unwrap();
    pods.push(c.clone());
    let seen = seen_from(&pods[0].netns, SocketAddr::new(c.ip, PORT)).expect("a1 -> c on node 3");
    assert_eq!(seen, pods[0].ip);
    let learned = bed.nodes[0]
        .ip(&["route", "show", "proto", "bird"])
        .unwrap();
    assert!(learned.contains(&bed.nodes[2].pod_cidr), "{learned}");

    // Node 2 withdraws its pod CIDR: node 1 loses the route, and node 2's pods are gone
    // from node 1's pods' reach.
    let out = birdc(&bed, 1, "disable pods");
    assert!(out.contains("disabled"), "birdc: {out}");
    let node1 = bed.nodes[0].clone();
    let cidr2 = bed.nodes[1].pod_cidr.clone();
    wait_until(Duration::from_secs(20), || {
        !node1
            .ip(&["route", "show", "proto", "bird"])
            .unwrap()
            .contains(&cidr2)
    })
    .expect("node 1 kept node 2's route after it was withdrawn");
    let b1 = &pods[2];
    assert!(
        seen_from(&pods[0].netns, SocketAddr::new(b1.ip, PORT)).is_err(),
        "node 2's pod still reachable after its route was withdrawn"
    );
    // Announce again: reachable again.
    birdc(&bed, 1, "enable pods");
    wait_until(Duration::from_secs(20), || {
        node1
            .ip(&["route", "show", "proto", "bird"])
            .unwrap()
            .contains(&cidr2)
    })
    .expect("route back after re-announcing");
    seen_from(&pods[0].netns, SocketAddr::new(b1.ip, PORT)).expect("reachable again");

    drop(servers);
    drop(_server_c);
    bed.remove_pod(2, &c.id).await;
    pods.pop();
    remove_all(&bed, &pods).await;
    pods.push(c);
    assert_clean(&bed, &pods);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn netcheck_passes_on_a_healthy_bed_and_names_a_missing_route() {
    let bed = Bed::up(2, "routed");
    let pods = vec![
        bed.run_pod(0, "a1").await,
        bed.run_pod(0, "a2").await,
        bed.run_pod(1, "b1").await,
    ];
    let socket2 = bed.nodes[1].socket.display().to_string();
    let out = bed.nodes[0].podctl(&["netcheck", "--json", "--peer-node", &socket2]);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "netcheck JSON: {e}: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    assert!(out.status.success(), "{report:#}");
    assert_eq!(report["ok"], true, "{report:#}");
    let checks = report["checks"].as_array().unwrap();
    let count = |kind: &str, scope: &str| {
        checks
            .iter()
            .filter(|c| c["kind"] == kind && c["scope"] == scope)
            .count()
    };
    assert_eq!(count("pod-to-pod", "same-node"), 2, "{report:#}");
    assert_eq!(count("pod-to-pod", "other-node"), 2, "{report:#}");
    assert_eq!(count("node-to-pod", "other-node"), 1, "{report:#}");
    for c in checks.iter().filter(|c| c["kind"] == "pod-to-pod") {
        let rules: Vec<&str> = c["rules"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["rule"].as_str().unwrap())
            .collect();
        assert_eq!(rules, ["reach", "no-nat"], "{c:#}");
        let hops: Vec<&str> = c["path"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| h["hop"].as_str().unwrap())
            .collect();
        if c["scope"] == "other-node" {
            assert_eq!(
                hops,
                [
                    "pod eth0",
                    "pod route",
                    "host veth",
                    "bridge",
                    "node route",
                    "next node",
                    "peer"
                ],
                "{c:#}"
            );
        } else {
            assert_eq!(
                hops,
                ["pod eth0", "pod route", "host veth", "bridge", "peer"],
                "{c:#}"
            );
        }
    }

    // A remote pod given by IP only: reached (a reset from a closed port counts).
    let b1 = pods[2].ip.to_string();
    let out = bed.nodes[0].podctl(&["netcheck", "--json", "--remote", &b1, "--remote-port", "1"]);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("netcheck JSON");
    assert_eq!(report["ok"], true, "{report:#}");
    assert!(
        report.to_string().contains("reset by the peer"),
        "{report:#}"
    );

    // Node 1 loses its route to node 2's pods: netcheck fails there, naming that hop.
    bed.nodes[0]
        .ip(&["route", "del", &bed.nodes[1].pod_cidr])
        .unwrap();
    let out = bed.nodes[0].podctl(&[
        "netcheck",
        "--json",
        "--probe-timeout",
        "2",
        "--peer-node",
        &socket2,
    ]);
    assert!(
        !out.status.success(),
        "netcheck passed with a route missing"
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("netcheck JSON");
    assert_eq!(report["ok"], false);
    for c in report["checks"].as_array().unwrap() {
        if c["scope"] == "other-node" {
            assert_eq!(c["ok"], false, "{c:#}");
            assert_eq!(c["failed_hop"], "node route", "{c:#}");
        } else {
            assert_eq!(c["ok"], true, "{c:#}");
        }
    }
    let out = bed.nodes[0].podctl(&["netcheck", "--json", "--remote", &b1, "--remote-port", "1"]);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("netcheck JSON");
    let remote: Vec<&serde_json::Value> = report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["to"]["ip"] == b1.as_str())
        .collect();
    assert_eq!(remote.len(), 2, "{report:#}");
    assert!(
        remote.iter().all(|c| c["failed_hop"] == "node route"),
        "{report:#}"
    );
    let svg = std::env::temp_dir().join(format!("podrun-netcheck-{}.svg", bed.number));
    let svg_arg = svg.display().to_string();
    let text = bed.nodes[0].podctl(&[
        "netcheck",
        "--probe-timeout",
        "2",
        "--peer-node",
        &socket2,
        "--svg",
        &svg_arg,
    ]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("broken at: node route"), "{text}");
    // The picture: every pod with its IP, the bridge, the failed hop in red; rendered to
    // PNG by librsvg, as a browser or a document would.
    let picture = std::fs::read_to_string(&svg).expect("netcheck --svg wrote the file");
    for p in &pods {
        assert!(
            picture.contains(&p.ip.to_string()),
            "pod {} missing:\n{picture}",
            p.ip
        );
    }
    assert!(
        picture.contains("bridge") && picture.contains("node routes"),
        "{picture}"
    );
    assert!(
        picture.contains(r#"class="bad">pod-to-pod other-node"#)
            && picture.contains("broken at: node route")
            && picture.contains("#cf222e"),
        "{picture}"
    );
    let png = svg.with_extension("png");
    let rendered = Command::new("rsvg-convert")
        .arg("-o")
        .arg(&png)
        .arg(&svg)
        .output()
        .expect("rsvg-convert is missing: install librsvg2-bin (hack/setup does)");
    assert!(
        rendered.status.success(),
        "{}",
        String::from_utf8_lossy(&rendered.stderr)
    );
    let png_bytes = std::fs::read(&png).unwrap();
    assert!(png_bytes.starts_with(b"\x89PNG\r\n\x1a\n") && png_bytes.len() > 10_000);
    let _ = std::fs::remove_file(&svg);
    let _ = std::fs::remove_file(&png);
    assert!(
        text.contains(&format!("no route to {}", pods[2].ip)),
        "{text}"
    );

    remove_all(&bed, &pods).await;
    assert_clean(&bed, &pods);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn down_cleans_up_after_an_interrupted_bed() {
    let mut bed = Bed::up(2, "bgp");
    let pods = vec![bed.run_pod(0, "a1").await, bed.run_pod(1, "b1").await];
    // An interrupted run: podrund is killed with its pods still up, and a node is half-added
    // when `hack/nodes add` itself is killed.
    Command::new("sh")
        .arg("-c")
        .arg(format!("kill -9 $(ip netns pids {})", bed.nodes[0].netns))
        .status()
        .unwrap();
    let mut add = Command::new(podrun_tests::bed::hack_nodes())
        .args(["add", "--bed", &bed.number.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let half = format!("/run/netns/{}-n3", bed.prefix());
    wait_until(Duration::from_secs(20), || {
        std::path::Path::new(&half).exists()
    })
    .expect("node 3 begun");
    let _ = add.kill();
    let _ = add.wait();
    bed.nodes.clear();
    assert_clean(&bed, &pods);
}
