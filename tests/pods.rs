//! Pods with real networking, driven over CRI: real podrund, real netns, the distribution's
//! CNI plugins, real shim and pause processes. Run as root (hack/test).

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use podrun_proto::cri;
use podrun_tests::netns::{eth0_ipv4, eth0_peer_master, seen_as, serve_peer_address};
use podrun_tests::{pod_info, stop_and_remove, wait_until, Chain, Client, TestNode};

fn netns_name(info: &serde_json::Value) -> String {
    let path = info["netnsPath"].as_str().expect("netnsPath");
    Path::new(path)
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned()
}

fn pid_of(info: &serde_json::Value, key: &str) -> i32 {
    info[key]
        .as_i64()
        .unwrap_or_else(|| panic!("{key} missing in {info}")) as i32
}

fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| !s.contains(") Z "))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_pods_reach_each_other_by_pod_ip_without_nat() {
    two_pods_reach_each_other_and_themselves(Chain::Operator).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_on_a_network_with_the_loopback_plugin_work_alike() {
    two_pods_reach_each_other_and_themselves(Chain::WithLoopback).await;
}

async fn two_pods_reach_each_other_and_themselves(chain: Chain) {
    let node = TestNode::start(chain);
    let mut client = node.client().await;
    let a = node
        .run_pod(&mut client, node.pod_config("pod-a"))
        .await
        .expect("pod a");
    let b = node
        .run_pod(&mut client, node.pod_config("pod-b"))
        .await
        .expect("pod b");
    let (status_a, info_a) = pod_info(&mut client, &a).await.unwrap();
    let (status_b, info_b) = pod_info(&mut client, &b).await.unwrap();
    let ip_a: IpAddr = status_a.network.unwrap().ip.parse().unwrap();
    let ip_b: IpAddr = status_b.network.unwrap().ip.parse().unwrap();
    assert_ne!(ip_a, ip_b);
    assert!(
        ip_a.to_string().starts_with(&node.subnet_prefix),
        "{ip_a} not in the test network"
    );
    assert_eq!(status_a.state, cri::PodSandboxState::SandboxReady as i32);

    // The IP podrun reports is the one on the pod's own eth0, whose peer is on the bridge.
    let (ns_a, ns_b) = (netns_name(&info_a), netns_name(&info_b));
    assert_eq!(eth0_ipv4(&ns_a).unwrap(), ip_a);
    assert_eq!(
        eth0_peer_master(&ns_a).unwrap().as_deref(),
        Some(node.bridge.as_str())
    );
    assert_eq!(
        eth0_peer_master(&ns_b).unwrap().as_deref(),
        Some(node.bridge.as_str())
    );

    // A connects to B over TCP; B sees A's own eth0 address (no NAT). The node reaches both.
    let path_b = PathBuf::from(info_b["netnsPath"].as_str().unwrap());
    let path_a = PathBuf::from(info_a["netnsPath"].as_str().unwrap());
    serve_peer_address(Some(&path_b), 8080).unwrap();
    serve_peer_address(Some(&path_a), 8080).unwrap();
    let seen = seen_as(Some(&path_a), SocketAddr::new(ip_b, 8080)).unwrap();
    assert_eq!(seen, eth0_ipv4(&ns_a).unwrap(), "B saw A as {seen}");
    let seen = seen_as(Some(&path_b), SocketAddr::new(ip_a, 8080)).unwrap();
    assert_eq!(seen, ip_b);
    // Each pod has its own localhost, whether or not the network has a loopback plugin.
    let localhost: IpAddr = "127.0.0.1".parse().unwrap();
    for path in [&path_a, &path_b] {
        let seen = seen_as(Some(path), SocketAddr::new(localhost, 8080)).unwrap();
        assert_eq!(seen, localhost, "localhost inside the pod");
    }
    for ip in [ip_a, ip_b] {
        let seen = seen_as(None, SocketAddr::new(ip, 8080)).unwrap();
        assert_eq!(
            seen.to_string(),
            format!("{}1", node.subnet_prefix),
            "the node reaches pods from its bridge address"
        );
    }

    stop_and_remove(&mut client, &a).await;
    stop_and_remove(&mut client, &b).await;
    node.assert_no_leaks();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_gets_its_files_shm_cgroup_and_processes_and_stop_remove_release_them() {
    let node = TestNode::start(Chain::Operator);
    let mut client = node.client().await;
    let mut config = node.pod_config("files");
    config.dns_config = Some(cri::DnsConfig {
        servers: vec!["10.96.0.10".into()],
        searches: vec!["podrun-test.svc.cluster.local".into()],
        options: vec!["ndots:5".into()],
    });
    config.annotations = [("note".to_owned(), "kept".to_owned())].into();
    let id = node.run_pod(&mut client, config).await.unwrap();
    let (status, info) = pod_info(&mut client, &id).await.unwrap();
    assert_eq!(
        status.annotations.get("note").map(String::as_str),
        Some("kept")
    );
    assert_eq!(status.labels.get("test").map(String::as_str), Some("files"));
    assert!(status.created_at > 0);
    let pod_dir = node.dir.join("state/pods").join(&id);
    let ip = status.network.unwrap().ip;
    assert_eq!(
        std::fs::read_to_string(pod_dir.join("hostname")).unwrap(),
        "files\n"
    );
    assert!(std::fs::read_to_string(pod_dir.join("hosts"))
        .unwrap()
        .contains(&format!("{ip}\tfiles\n")));
    assert_eq!(
        std::fs::read_to_string(pod_dir.join("resolv.conf")).unwrap(),
        "search podrun-test.svc.cluster.local\nnameserver 10.96.0.10\noptions ndots:5\n"
    );
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let shm = pod_dir.join("shm").display().to_string();
    assert!(
        mounts
            .lines()
            .any(|l| l.contains(&format!(" {shm} ")) && l.contains(" - tmpfs ")),
        "no shm tmpfs at {shm}"
    );

    // pause runs in the pod cgroup, under its shim, with the pod's hostname, unprivileged.
    let (shim, pause) = (pid_of(&info, "shimPid"), pid_of(&info, "pausePid"));
    let ppid = std::fs::read_to_string(format!("/proc/{pause}/stat"))
        .unwrap()
        .rsplit(')')
        .next()
        .unwrap()
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse::<i32>()
        .unwrap();
    assert_eq!(ppid, shim, "pause is the shim's child");
    let cgroups = std::fs::read_to_string(format!("/proc/{pause}/cgroup")).unwrap();
    assert!(
        cgroups
            .lines()
            .any(|l| l.ends_with(&format!("{}/{id}", node.cgroup_parent))),
        "pause not in the pod cgroup:\n{cgroups}"
    );
    let uts = Command::new("nsenter")
        .args(["-t", &pause.to_string(), "-u", "hostname"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&uts.stdout).trim(), "files");
    let proc_status = std::fs::read_to_string(format!("/proc/{pause}/status")).unwrap();
    assert!(
        proc_status
            .lines()
            .any(|l| l.starts_with("Uid:") && l.contains("65535")),
        "{proc_status}"
    );
    assert!(
        proc_status
            .lines()
            .any(|l| l == "CapEff:\t0000000000000000"),
        "{proc_status}"
    );
    assert!(
        proc_status.lines().any(|l| l == "NoNewPrivs:\t1"),
        "{proc_status}"
    );
    // The shim is detached from podrund: its own session.
    let sid = |pid: i32| nix::unistd::getsid(Some(nix::unistd::Pid::from_raw(pid))).unwrap();
    assert_eq!(sid(shim).as_raw(), shim);

    client
        .stop_pod_sandbox(cri::StopPodSandboxRequest {
            pod_sandbox_id: id.clone(),
        })
        .await
        .unwrap();
    // Stop is idempotent; status after stop says NotReady; stopped pods hold no processes.
    client
        .stop_pod_sandbox(cri::StopPodSandboxRequest {
            pod_sandbox_id: id.clone(),
        })
        .await
        .unwrap();
    let (status, _) = pod_info(&mut client, &id).await.unwrap();
    assert_eq!(status.state, cri::PodSandboxState::SandboxNotready as i32);
    assert!(
        !alive(pause) && !alive(shim),
        "pause or shim survived StopPodSandbox"
    );
    client
        .remove_pod_sandbox(cri::RemovePodSandboxRequest {
            pod_sandbox_id: id.clone(),
        })
        .await
        .unwrap();
    client
        .remove_pod_sandbox(cri::RemovePodSandboxRequest {
            pod_sandbox_id: id.clone(),
        })
        .await
        .expect("removing twice is fine");
    let err = client
        .pod_sandbox_status(cri::PodSandboxStatusRequest {
            pod_sandbox_id: id,
            verbose: false,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
    node.assert_no_leaks();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_network_pod_has_no_netns_no_cni_and_reports_the_node_ip() {
    let node = TestNode::start(Chain::Operator);
    let mut client = node.client().await;
    let options = cri::NamespaceOption {
        network: cri::NamespaceMode::Node as i32,
        ..Default::default()
    };
    let config = node.pod_config_with("hostnet", options);
    let id = node.run_pod(&mut client, config).await.unwrap();
    let (status, info) = pod_info(&mut client, &id).await.unwrap();
    assert!(
        info["netnsPath"].is_null() && info["cniResult"].is_null(),
        "{info}"
    );
    assert!(!Path::new(&format!("/run/netns/podrun-{id}")).exists());
    assert!(
        podrun_tests::ip_reservations(&node.ipam_dir).is_empty(),
        "CNI was called"
    );
    // The node's IP: the address of the interface holding the default route.
    let route = String::from_utf8(
        Command::new("ip")
            .args(["-4", "-o", "route", "show", "default"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    let dev = route
        .split_whitespace()
        .skip_while(|w| *w != "dev")
        .nth(1)
        .expect("no default route on this machine");
    let addrs = String::from_utf8(
        Command::new("ip")
            .args(["-4", "-o", "addr", "show", "dev", dev])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    let node_ip = addrs
        .split_whitespace()
        .skip_while(|w| *w != "inet")
        .nth(1)
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .to_owned();
    assert_eq!(status.network.unwrap().ip, node_ip);
    // pause shares the node's network namespace.
    let pause = pid_of(&info, "pausePid");
    let own = std::fs::read_link("/proc/self/ns/net").unwrap();
    assert_eq!(
        std::fs::read_link(format!("/proc/{pause}/ns/net")).unwrap(),
        own
    );
    stop_and_remove(&mut client, &id).await;
    node.assert_no_leaks();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pid_shared_pod_has_pause_as_pid_1_reaping_orphans() {
    let node = TestNode::start(Chain::Operator);
    let mut client = node.client().await;
    let options = cri::NamespaceOption {
        pid: cri::NamespaceMode::Pod as i32,
        ..Default::default()
    };
    let config = node.pod_config_with("pidpod", options);
    let id = node.run_pod(&mut client, config).await.unwrap();
    let (_, info) = pod_info(&mut client, &id).await.unwrap();
    let pause = pid_of(&info, "pausePid");
    let status = std::fs::read_to_string(format!("/proc/{pause}/status")).unwrap();
    let nspid = status.lines().find(|l| l.starts_with("NSpid:")).unwrap();
    assert_eq!(
        nspid.split_whitespace().last(),
        Some("1"),
        "pause is not PID 1 of its namespace: {nspid}"
    );

    // A process in the pod's PID namespace leaves an orphan behind; it must be reparented to
    // pause and, once it exits, reaped (not left a zombie).
    let out = Command::new("nsenter")
        .args([
            "-t",
            &pause.to_string(),
            "--pid",
            "--",
            "sh",
            "-c",
            "sleep 0.5 & exit 0",
        ])
        .status()
        .unwrap();
    assert!(out.success());
    let children = || {
        std::fs::read_to_string(format!("/proc/{pause}/task/{pause}/children")).unwrap_or_default()
    };
    let orphan: i32 = children()
        .split_whitespace()
        .next()
        .expect("the orphan was not reparented to pause")
        .parse()
        .unwrap();
    wait_until(Duration::from_secs(5), || {
        !Path::new(&format!("/proc/{orphan}")).exists()
    })
    .unwrap_or_else(|_| {
        panic!(
            "orphan {orphan} not reaped: {}",
            std::fs::read_to_string(format!("/proc/{orphan}/stat")).unwrap_or_default()
        )
    });
    assert!(alive(pause), "pause died while reaping");
    stop_and_remove(&mut client, &id).await;
    node.assert_no_leaks();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_survive_a_podrund_crash_and_are_managed_after_it() {
    let mut node = TestNode::start(Chain::Operator);
    let mut client = node.client().await;
    let a = node
        .run_pod(&mut client, node.pod_config("keep-a"))
        .await
        .unwrap();
    let b = node
        .run_pod(&mut client, node.pod_config("keep-b"))
        .await
        .unwrap();
    let before_a = pod_info(&mut client, &a).await.unwrap();
    let before_b = pod_info(&mut client, &b).await.unwrap();
    drop(client);

    node.kill_daemon();
    let (shim, pause) = (
        pid_of(&before_a.1, "shimPid"),
        pid_of(&before_a.1, "pausePid"),
    );
    assert!(
        alive(shim) && alive(pause),
        "the pod's processes died with podrund"
    );
    node.spawn_daemon();

    let mut client = node.client().await;
    let pods = podrun_tests::list_pods(&mut client).await;
    assert_eq!(pods.len(), 2);
    for (id, before) in [(&a, &before_a), (&b, &before_b)] {
        let (status, info) = pod_info(&mut client, id).await.unwrap();
        assert_eq!(
            status.state,
            cri::PodSandboxState::SandboxReady as i32,
            "{id} not ready after restart"
        );
        assert_eq!(
            status.network, before.0.network,
            "IP changed across restart"
        );
        assert_eq!(info["pausePid"], before.1["pausePid"]);
    }
    stop_and_remove(&mut client, &a).await;
    // Remove without Stop stops first.
    client
        .remove_pod_sandbox(cri::RemovePodSandboxRequest {
            pod_sandbox_id: b.clone(),
        })
        .await
        .unwrap();
    assert!(!alive(shim) && !alive(pause));
    node.assert_no_leaks();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_releases_the_ip_even_when_the_netns_is_already_gone() {
    let node = TestNode::start(Chain::Operator);
    let mut client = node.client().await;
    let id = node
        .run_pod(&mut client, node.pod_config("gone"))
        .await
        .unwrap();
    let (_, info) = pod_info(&mut client, &id).await.unwrap();
    assert_eq!(podrun_tests::ip_reservations(&node.ipam_dir).len(), 1);
    // Someone (a reboot, an operator) removes the pin behind podrun's back.
    let pin = info["netnsPath"].as_str().unwrap();
    nix::mount::umount2(pin, nix::mount::MntFlags::MNT_DETACH).unwrap();
    std::fs::remove_file(pin).unwrap();
    stop_and_remove(&mut client, &id).await;
    node.assert_no_leaks();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_the_right_code_and_changes_nothing() {
    let node = TestNode::start(Chain::Operator);
    let mut client = node.client().await;
    for (field, edit) in [
        (
            "config.metadata.name",
            (|m: &mut cri::PodSandboxMetadata| m.name.clear()) as fn(&mut cri::PodSandboxMetadata),
        ),
        ("config.metadata.namespace", |m| m.namespace.clear()),
        ("config.metadata.uid", |m| m.uid.clear()),
    ] {
        let mut config = node.pod_config("bad");
        edit(config.metadata.as_mut().unwrap());
        let err = node.run_pod(&mut client, config).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{field}: {err:?}");
        assert!(
            err.message().contains(field),
            "{field} not named in {:?}",
            err.message()
        );
    }
    let err = client
        .run_pod_sandbox(cri::RunPodSandboxRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("config"));
    let err = client
        .pod_sandbox_status(cri::PodSandboxStatusRequest {
            pod_sandbox_id: "f00d".into(),
            verbose: true,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
    // Unknown ids are success for Stop and Remove (kubelet's clean-up relies on it).
    client
        .stop_pod_sandbox(cri::StopPodSandboxRequest {
            pod_sandbox_id: "f00d".into(),
        })
        .await
        .unwrap();
    client
        .remove_pod_sandbox(cri::RemovePodSandboxRequest {
            pod_sandbox_id: "f00d".into(),
        })
        .await
        .unwrap();
    // Checkpoint names the container it needs.
    let err = client
        .checkpoint_container(cri::CheckpointContainerRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("container_id"), "{}", err.message());
    // Stats of nothing, or of what does not exist.
    let err = client
        .container_stats(cri::ContainerStatsRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("container_id"), "{}", err.message());
    let err = client
        .pod_sandbox_stats(cri::PodSandboxStatsRequest {
            pod_sandbox_id: "f00d".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
    // Containers of unknown pods or ids are NotFound.
    let err = client
        .exec_sync(cri::ExecSyncRequest {
            container_id: "f00d".into(),
            cmd: vec!["true".into()],
            timeout: 1,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
    let err = client
        .create_container(cri::CreateContainerRequest {
            pod_sandbox_id: "f00d".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
    let pods = podrun_tests::list_pods(&mut client).await;
    assert!(pods.is_empty());
    node.assert_no_leaks();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_cni_plugin_fails_the_pod_with_its_message_and_leaves_nothing() {
    let node = TestNode::start(Chain::FailingAfterBridge);
    let mut client = node.client().await;
    let err = node
        .run_pod(&mut client, node.pod_config("doomed"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Internal);
    assert!(
        err.message().contains("tuning") && err.message().contains("no_such_knob"),
        "{}",
        err.message()
    );
    let pods = podrun_tests::list_pods(&mut client).await;
    assert!(pods.is_empty(), "a failed pod is listed: {pods:?}");
    // The bridge plugin had attached the pod before tuning failed: all of it is rolled back.
    node.assert_no_leaks();
    assert!(node.log().contains("rolling back"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_concurrent_pods_get_distinct_ips_and_all_clean_up() {
    let node = TestNode::start(Chain::Operator);
    let client = node.client().await;
    let mut tasks = Vec::new();
    for i in 0..20 {
        let mut client = client.clone();
        let config = node.pod_config(&format!("many-{i}"));
        tasks.push(tokio::spawn(async move {
            client
                .run_pod_sandbox(cri::RunPodSandboxRequest {
                    config: Some(config),
                    ..Default::default()
                })
                .await
                .map(|r| r.into_inner().pod_sandbox_id)
        }));
    }
    let mut ids = Vec::new();
    for t in tasks {
        let id = t.await.unwrap().expect("concurrent RunPodSandbox");
        node.remember(&id);
        ids.push(id);
    }
    let mut client = client;
    let mut ips = std::collections::HashSet::new();
    for id in &ids {
        let (status, _) = pod_info(&mut client, id).await.unwrap();
        assert!(ips.insert(status.network.unwrap().ip), "duplicate IP");
    }
    assert_eq!(ips.len(), 20);
    let mut tasks = Vec::new();
    for id in ids {
        let mut client = client.clone();
        tasks.push(tokio::spawn(async move {
            stop_and_remove(&mut client, &id).await
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    node.assert_no_leaks();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kubelet_retry_of_the_same_pod_gets_the_same_pod() {
    let node = TestNode::start(Chain::Operator);
    let client = node.client().await;
    let config = node.pod_config("retry");
    let run = |mut c: Client, config: cri::PodSandboxConfig| async move {
        c.run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(config),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .pod_sandbox_id
    };
    // Two at once (the second arrives while the first is in flight), then one after.
    let (first, second) = tokio::join!(
        run(client.clone(), config.clone()),
        run(client.clone(), config.clone())
    );
    let third = run(client.clone(), config.clone()).await;
    node.remember(&first);
    assert_eq!(first, second);
    assert_eq!(first, third);
    let mut client = client;
    let pods = podrun_tests::list_pods(&mut client).await;
    assert_eq!(pods.len(), 1);
    // A new attempt is a new pod.
    let mut next = config;
    next.metadata.as_mut().unwrap().attempt = 1;
    let fourth = node.run_pod(&mut client.clone(), next).await.unwrap();
    assert_ne!(fourth, first);
    stop_and_remove(&mut client, &first).await;
    stop_and_remove(&mut client, &fourth).await;
    node.assert_no_leaks();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_filters_by_id_prefix_state_and_labels() {
    let node = TestNode::start(Chain::Operator);
    let mut client = node.client().await;
    let a = node
        .run_pod(&mut client, node.pod_config("list-a"))
        .await
        .unwrap();
    let b = node
        .run_pod(&mut client, node.pod_config("list-b"))
        .await
        .unwrap();
    client
        .stop_pod_sandbox(cri::StopPodSandboxRequest {
            pod_sandbox_id: b.clone(),
        })
        .await
        .unwrap();
    let list = |filter: cri::PodSandboxFilter| {
        let mut c = client.clone();
        async move {
            let mut ids: Vec<String> = c
                .list_pod_sandbox(cri::ListPodSandboxRequest {
                    filter: Some(filter),
                })
                .await
                .unwrap()
                .into_inner()
                .items
                .into_iter()
                .map(|p| p.id)
                .collect();
            ids.sort();
            ids
        }
    };
    assert_eq!(
        list(cri::PodSandboxFilter {
            id: a[..12].into(),
            ..Default::default()
        })
        .await,
        vec![a.clone()]
    );
    let ready = cri::PodSandboxStateValue {
        state: cri::PodSandboxState::SandboxReady as i32,
    };
    assert_eq!(
        list(cri::PodSandboxFilter {
            state: Some(ready),
            ..Default::default()
        })
        .await,
        vec![a.clone()]
    );
    let selector = [("test".to_owned(), "list-b".to_owned())].into();
    assert_eq!(
        list(cri::PodSandboxFilter {
            label_selector: selector,
            ..Default::default()
        })
        .await,
        vec![b.clone()]
    );
    // Status also resolves a unique prefix, as crictl passes them.
    let (status, _) = pod_info(&mut client, &a[..10]).await.unwrap();
    assert_eq!(status.id, a);
    stop_and_remove(&mut client, &a).await;
    stop_and_remove(&mut client, &b).await;
    node.assert_no_leaks();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn version_status_and_runtime_config_answer_as_cri_clients_expect() {
    let node = TestNode::start(Chain::Operator);
    let mut client = node.client().await;
    let v = client
        .version(cri::VersionRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (
            v.version.as_str(),
            v.runtime_name.as_str(),
            v.runtime_api_version.as_str()
        ),
        ("0.1.0", "podrun", "v1")
    );
    let cfg = client
        .runtime_config(cri::RuntimeConfigRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        cfg.linux.unwrap().cgroup_driver,
        cri::CgroupDriver::Cgroupfs as i32
    );
    let condition = |s: &cri::StatusResponse, t: &str| {
        s.status
            .as_ref()
            .unwrap()
            .conditions
            .iter()
            .find(|c| c.r#type == t)
            .cloned()
            .unwrap()
    };
    let s = client
        .status(cri::StatusRequest { verbose: true })
        .await
        .unwrap()
        .into_inner();
    assert!(condition(&s, "RuntimeReady").status && condition(&s, "NetworkReady").status);
    assert!(s.info.contains_key("config"));
    // kubelet's calls at start and on pod syncs are answered.
    client
        .update_runtime_config(cri::UpdateRuntimeConfigRequest {
            runtime_config: Some(cri::RuntimeConfig {
                network_config: Some(cri::NetworkConfig {
                    pod_cidr: "10.244.7.0/24".into(),
                }),
            }),
        })
        .await
        .unwrap();
    let s = client
        .status(cri::StatusRequest { verbose: true })
        .await
        .unwrap()
        .into_inner();
    let config: serde_json::Value = serde_json::from_str(&s.info["config"]).unwrap();
    assert_eq!(config["podCIDR"], "10.244.7.0/24");
    let err = client
        .update_pod_sandbox_resources(cri::UpdatePodSandboxResourcesRequest {
            pod_sandbox_id: "f00d".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
    // Without a CNI config the network is not ready, with a reason, and pods cannot start.
    std::fs::remove_file(node.dir.join("cni/10-test.conflist")).unwrap();
    let s = client
        .status(cri::StatusRequest::default())
        .await
        .unwrap()
        .into_inner();
    let net = condition(&s, "NetworkReady");
    assert!(
        !net.status
            && net.reason == "NetworkPluginNotReady"
            && net.message.contains("no CNI configuration"),
        "{net:?}"
    );
    let err = node
        .run_pod(&mut client, node.pod_config("nonet"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition);
    node.assert_no_leaks();
}

#[test]
fn podctl_runs_pods_from_crictl_style_files() {
    let node = TestNode::start(Chain::Operator);
    let podctl = |args: &[&str]| node.podctl(args);
    // The same YAML crictl reads: snake_case fields, enums as numbers.
    let file = node.dir.join("pod.yaml");
    std::fs::write(
        &file,
        format!(
            "metadata:\n  name: cli\n  namespace: podrun-test\n  uid: cli-uid\nhostname: cli\nlabels:\n  app: cli\nlinux:\n  cgroup_parent: {}\n  security_context:\n    namespace_options:\n      pid: 0\n",
            node.cgroup_parent
        ),
    )
    .unwrap();
    let id = podctl(&["runp", file.to_str().unwrap()]).trim().to_owned();
    node.remember(&id);
    assert_eq!(id.len(), 64);
    let table = podctl(&["pods"]);
    assert!(
        table.contains(&id[..13]) && table.contains("Ready") && table.contains("cli"),
        "{table}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&podctl(&["pods", "-o", "json", "--label", "app=cli"])).unwrap();
    assert_eq!(json["items"][0]["id"], id.as_str());
    let inspect: serde_json::Value =
        serde_json::from_str(&podctl(&["inspectp", &id[..8]])).unwrap();
    assert!(inspect["status"]["network"]["ip"]
        .as_str()
        .unwrap()
        .starts_with(&node.subnet_prefix));
    assert_eq!(
        inspect["status"]["linux"]["namespaces"]["options"]["pid"],
        0
    );
    assert!(inspect["info"]["info"]["pausePid"].is_i64());
    let version = podctl(&["version"]);
    assert!(version.contains("RuntimeName:  podrun"), "{version}");
    podctl(&["stopp", &id]);
    podctl(&["rmp", &id]);
    assert!(podctl(&["pods", "-q"]).trim().is_empty());
    node.assert_no_leaks();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_run_side_by_side_without_seeing_each_other() {
    let one = TestNode::start(Chain::Operator);
    let two = TestNode::start(Chain::Operator);
    let (mut c1, mut c2) = (one.client().await, two.client().await);
    let p1 = one.run_pod(&mut c1, one.pod_config("side")).await.unwrap();
    let p2 = two.run_pod(&mut c2, two.pod_config("side")).await.unwrap();
    let ids = |c: &mut Client| {
        let mut c = c.clone();
        async move {
            podrun_tests::list_pods(&mut c)
                .await
                .into_iter()
                .map(|p| p.id)
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(ids(&mut c1).await, vec![p1.clone()]);
    assert_eq!(ids(&mut c2).await, vec![p2.clone()]);
    stop_and_remove(&mut c1, &p1).await;
    stop_and_remove(&mut c2, &p2).await;
    one.assert_no_leaks();
    two.assert_no_leaks();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_in_the_middle_of_run_pod_sandbox_leaves_nothing_that_remove_cannot_clean() {
    let mut node = TestNode::start(Chain::Operator);
    // Kill podrund while pods are in every phase of RunPodSandbox: early and later.
    for (round, delay) in [(0, 5), (1, 20)] {
        let client = node.client().await;
        for i in 0..6 {
            let mut client = client.clone();
            let config = node.pod_config(&format!("crash-{round}-{i}"));
            tokio::spawn(async move {
                client
                    .run_pod_sandbox(cri::RunPodSandboxRequest {
                        config: Some(config),
                        ..Default::default()
                    })
                    .await
            });
        }
        tokio::time::sleep(Duration::from_millis(delay)).await;
        node.kill_daemon();
        drop(client);
        node.spawn_daemon();
        let mut client = node.client().await;
        // kubelet's garbage collection: remove whatever is listed (retrying, as kubelet
        // does, a call that meets the restarted daemon before it serves).
        let mut listed = None;
        for _ in 0..50 {
            match client
                .list_pod_sandbox(cri::ListPodSandboxRequest::default())
                .await
            {
                Ok(r) => {
                    listed = Some(r.into_inner().items);
                    break;
                }
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    client = node.client().await;
                }
            }
        }
        let pods = listed.expect("podrund answers ListPodSandbox after its restart");
        for p in &pods {
            node.remember(&p.id);
            let removed = client
                .remove_pod_sandbox(cri::RemovePodSandboxRequest {
                    pod_sandbox_id: p.id.clone(),
                })
                .await;
            removed.unwrap_or_else(|e| panic!("remove after a crash {delay}ms in: {e:?}"));
        }
        node.assert_no_leaks();
    }
}

/// A CNI plugin whose DEL always fails: Stop fails twice with its message, the third time
/// podrund lets the pod go (kubelet would otherwise show it Terminating for ever) and keeps
/// the attachment, which doctor shows and podrund retries when it starts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cni_del_that_keeps_failing_lets_the_pod_go_and_is_retried_later() {
    let mut node = TestNode::start(Chain::FailingDel);
    let mut client = node.client().await;
    let id = node
        .run_pod(&mut client, node.pod_config("sticky"))
        .await
        .unwrap();
    let stop = cri::StopPodSandboxRequest {
        pod_sandbox_id: id.clone(),
    };
    for _ in 0..2 {
        let err = client.stop_pod_sandbox(stop.clone()).await.unwrap_err();
        assert!(err.message().contains("DEL fails"), "{err:?}");
    }
    client.stop_pod_sandbox(stop).await.expect("the third Stop");
    client
        .remove_pod_sandbox(cri::RemovePodSandboxRequest {
            pod_sandbox_id: id.clone(),
        })
        .await
        .expect("Remove");
    // The bridge's DEL ran (the IP is free) and the netns went; the attachment stays.
    assert!(podrun_tests::ip_reservations(&node.ipam_dir).is_empty());
    let (code, audit) = node.doctor(&[]);
    assert_eq!(code, Some(1));
    let leftovers = audit["found"]["cni_leftovers"].as_array().unwrap();
    assert_eq!(leftovers.len(), 1, "{audit:#}");
    assert!(leftovers[0].as_str().unwrap().contains(&id));

    // Once DEL works again, podrund's start retries it.
    std::fs::write(node.dir.join("cni-bin/allow-del"), "").unwrap();
    node.kill_daemon();
    node.spawn_daemon();
    let leftover = node.dir.join(format!("root/cni-leftovers/{id}.json"));
    wait_until(Duration::from_secs(10), || !leftover.exists()).expect("the retry at start");
    node.assert_no_leaks();
}

/// A CNI plugin that hangs on ADD: the cni-timeout fires, the plugin is killed, and
/// RunPodSandbox fails naming it, with everything rolled back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_cni_plugin_times_out_and_the_pod_is_rolled_back() {
    let mut node = TestNode::prepare(Chain::FailingDel);
    node.extra_args = vec!["--cni-timeout".into(), "2".into()];
    let bin = node.dir.join("cni-bin");
    std::fs::write(bin.join("allow-del"), "").unwrap();
    std::fs::write(bin.join("hang-add"), "").unwrap();
    node.spawn_daemon();
    let mut client = node.client().await;
    let started = std::time::Instant::now();
    let err = node
        .run_pod(&mut client, node.pod_config("hung"))
        .await
        .unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(30));
    assert!(
        err.message().contains("podrun-test-fail-del") && err.message().contains('2'),
        "{err:?}"
    );
    let plugin = bin.join("podrun-test-fail-del").display().to_string();
    assert_eq!(
        podrun_tests::processes_mentioning(&plugin),
        Vec::<i32>::new()
    );
    let pods = podrun_tests::list_pods(&mut client).await;
    assert!(pods.is_empty(), "{pods:?}");
    node.assert_no_leaks();
}

/// A network of CNI spec 1.1 whose plugin supports GC: when podrund starts it tells the
/// plugin which attachments its pods hold, and the plugin releases a reservation that
/// belongs to no pod (one whose record was lost); the pods' own stay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cni_gc_at_start_releases_what_no_pod_holds() {
    let mut node = TestNode::start(Chain::GcCapable);
    let mut client = node.client().await;
    let mut ids = Vec::new();
    for name in ["kept-a", "kept-b"] {
        ids.push(
            node.run_pod(&mut client, node.pod_config(name))
                .await
                .unwrap(),
        );
    }
    let bin = node.dir.join("cni-bin");
    let reservations = bin.join("reservations");
    let held = || {
        let mut names: Vec<String> = std::fs::read_dir(&reservations)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    };
    let mut expected = ids.clone();
    expected.sort();
    assert_eq!(held(), expected, "ADD reserved one address per pod");
    let calls = || std::fs::read_to_string(bin.join("gc-calls")).unwrap_or_default();
    let first = calls();
    assert_eq!(
        first.lines().count(),
        1,
        "one GC at the first start: {first}"
    );

    // A reservation of a pod podrund no longer knows, as a wiped root would leave.
    std::fs::write(reservations.join("lost-pod"), "10.239.0.9/16").unwrap();
    node.kill_daemon();
    node.spawn_daemon();
    let mut client = node.client().await;
    // Before it serves: once it answers, GC has run.
    client
        .version(cri::VersionRequest::default())
        .await
        .unwrap();
    let gc: serde_json::Value =
        serde_json::from_str(calls().lines().nth(1).expect("GC at the restart")).unwrap();
    let mut valid: Vec<(String, String)> = gc["cni.dev/valid-attachments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            let s = |k: &str| a[k].as_str().unwrap().to_owned();
            (s("containerID"), s("ifname"))
        })
        .collect();
    valid.sort();
    let want: Vec<(String, String)> = expected
        .iter()
        .map(|id| (id.clone(), "eth0".into()))
        .collect();
    assert_eq!(valid, want, "GC names exactly the pods' attachments");
    assert_eq!(gc["cniVersion"], "1.1.0");
    assert_eq!(
        held(),
        expected,
        "the lost pod's reservation is released, the pods' kept"
    );

    for id in &ids {
        podrun_tests::stop_and_remove(&mut client, id).await;
    }
    assert!(held().is_empty(), "DEL released the pods' reservations");
    node.assert_no_leaks();
}

/// `--log-format json`: every line podrund writes is one JSON object, and the lines of a
/// request about a pod carry the method and the pod's id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_name_the_pod_of_each_request() {
    let mut node = TestNode::prepare(Chain::Operator);
    node.extra_args = vec!["--log-format".into(), "json".into()];
    node.spawn_daemon();
    let mut client = node.client().await;
    let id = node
        .run_pod(&mut client, node.pod_config("logged"))
        .await
        .unwrap();
    podrun_tests::stop_and_remove(&mut client, &id).await;
    let log = node.log();
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let about = |method: &str| -> Vec<&serde_json::Value> {
        lines
            .iter()
            .filter(|l| l["span"]["method"] == method)
            .collect()
    };
    for method in ["StopPodSandbox", "RemovePodSandbox"] {
        let found = about(method);
        assert!(!found.is_empty(), "no line about {method} in:\n{log}");
        for line in found {
            assert_eq!(line["span"]["pod"], id.as_str(), "{line}");
            assert!(
                line["level"].is_string() && line["timestamp"].is_string(),
                "{line}"
            );
        }
    }
    // RunPodSandbox makes the id: its own lines name the pod as a field.
    let phases = lines
        .iter()
        .find(|l| l["message"] == "RunPodSandbox phases")
        .unwrap_or_else(|| panic!("no phases line in:\n{log}"));
    assert_eq!(phases["span"]["method"], "RunPodSandbox");
    assert!(phases.to_string().contains(&id), "{phases}");
    node.assert_no_leaks();
}

/// The init-less service (`hack/service/podrund.init`, which hack/setup installs as
/// /etc/init.d/podrund): start, status, stop (pods keep running) and start again (the pod
/// is found Ready), run against this test's own podrund instance.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_init_script_starts_stops_and_restarts_podrund_and_pods_survive() {
    let node = TestNode::prepare(Chain::Operator);
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../hack/service/podrund.init");
    let d = |p: &str| node.dir.join(p).display().to_string();
    let args = format!(
        "--root {} --state {} --cni-conf-dir {} --cni-bin-dir /usr/lib/cni --log-level debug",
        d("root"),
        d("state"),
        d("cni")
    );
    let service = |verb: &str| {
        std::process::Command::new(&script)
            .arg(verb)
            .env("PODRUND", podrun_tests::bin_dir().join("podrund"))
            .env("PODRUND_ARGS", &args)
            .env("PIDFILE", d("podrund.pid"))
            .env("LOGFILE", d("podrund.log"))
            .output()
            .unwrap()
    };
    // Stops the service however the test ends.
    struct Stop<'a>(&'a dyn Fn(&str) -> std::process::Output);
    impl Drop for Stop<'_> {
        fn drop(&mut self) {
            (self.0)("stop");
        }
    }
    let _stop = Stop(&service);

    assert_eq!(service("status").status.code(), Some(3), "not running yet");
    assert!(service("start").status.success());
    let mut client = node.client().await;
    assert_eq!(service("status").status.code(), Some(0));
    let pid: i32 = std::fs::read_to_string(d("podrund.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let id = node
        .run_pod(&mut client, node.pod_config("serviced"))
        .await
        .unwrap();

    let out = service("stop");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_until(Duration::from_secs(10), || {
        !std::path::Path::new(&format!("/proc/{pid}")).exists()
    })
    .expect("podrund stopped");
    assert_eq!(service("status").status.code(), Some(3));
    assert!(
        !podrun_tests::processes_mentioning(&id).is_empty(),
        "the pod's shim runs on"
    );

    assert!(service("start").status.success());
    let mut client = node.client().await;
    let pods = podrun_tests::list_pods(&mut client).await;
    assert_eq!(pods.len(), 1);
    assert_eq!(pods[0].state, cri::PodSandboxState::SandboxReady as i32);
    podrun_tests::stop_and_remove(&mut client, &id).await;
    node.assert_no_leaks();
}
