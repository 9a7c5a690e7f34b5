//! Container and pod stats over CRI, as kubelet's summary API and eviction manager read
//! them: CPU (total and rate), memory (working set), the writable layer, process counts and
//! the pod's network, from real cgroups, overlays and a real netns.

use std::time::Duration;

use tokio::io::AsyncBufReadExt;

use podrun_proto::cri;
use podrun_tests::workload::Bed;

async fn list(bed: &mut Bed, filter: cri::ContainerStatsFilter) -> Vec<cri::ContainerStats> {
    let mut stats = bed
        .rt
        .list_container_stats(cri::ListContainerStatsRequest {
            filter: Some(filter),
        })
        .await
        .unwrap()
        .into_inner()
        .stats;
    stats.sort_by_key(|s| {
        s.attributes
            .as_ref()
            .unwrap()
            .metadata
            .as_ref()
            .unwrap()
            .name
            .clone()
    });
    stats
}

/// The pod's IP, as PodSandboxStatus reports it.
async fn pod_ip(bed: &mut Bed, id: &str) -> String {
    let status = bed
        .rt
        .pod_sandbox_status(cri::PodSandboxStatusRequest {
            pod_sandbox_id: id.into(),
            verbose: false,
        })
        .await
        .unwrap()
        .into_inner();
    status.status.unwrap().network.unwrap().ip
}

fn v(x: &Option<cri::UInt64Value>) -> u64 {
    x.as_ref().map_or(0, |v| v.value)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn container_and_pod_stats_report_cpu_memory_disk_processes_and_network() {
    let mut bed = Bed::start().await;
    let pod = bed.pod("stats", "").await;
    let busy = bed.container(
        "busy",
        &[
            "sh",
            "-c",
            "dd if=/dev/zero of=/tmp/fill bs=1M count=8 2>/dev/null; while :; do :; done",
        ],
    );
    let mut idle = bed.container("idle", &["sleep", "1000"]);
    idle.labels.insert("role".into(), "idle".into());
    let busy = bed.run(&pod, busy).await;
    let idle = bed.run(&pod, idle).await;
    tokio::time::sleep(Duration::from_millis(500)).await;

    let by_pod = cri::ContainerStatsFilter {
        pod_sandbox_id: pod.0.clone(),
        ..Default::default()
    };
    let first = list(&mut bed, by_pod.clone()).await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let second = list(&mut bed, by_pod).await;
    assert_eq!(second.len(), 2);
    let (b, i) = (&second[0], &second[1]);
    assert_eq!(b.attributes.as_ref().unwrap().id, busy);
    assert_eq!(i.attributes.as_ref().unwrap().labels["role"], "idle");
    let cpu = |s: &cri::ContainerStats| s.cpu.expect("cpu");
    assert!(v(&cpu(b).usage_core_nano_seconds) > v(&cpu(&first[0]).usage_core_nano_seconds));
    assert!(
        cpu(&first[0]).usage_nano_cores.is_none(),
        "no rate without a previous sample"
    );
    assert!(
        v(&cpu(b).usage_nano_cores) > v(&cpu(i).usage_nano_cores),
        "a busy loop uses more CPU than sleep: {:?} vs {:?}",
        cpu(b).usage_nano_cores,
        cpu(i).usage_nano_cores
    );
    let memory = b.memory.expect("memory");
    assert!(
        v(&memory.working_set_bytes) > 0 && v(&memory.usage_bytes) >= v(&memory.working_set_bytes)
    );
    let layer = b.writable_layer.clone().expect("writable layer");
    assert!(
        v(&layer.used_bytes) >= 8 << 20,
        "the 8 MiB file in the writable layer: {layer:?}"
    );
    assert!(v(&layer.inodes_used) >= 2);
    assert!(v(&i.writable_layer.clone().unwrap().used_bytes) < 1 << 20);

    // Filters: by label, by id prefix; one container's own stats.
    let labelled = list(
        &mut bed,
        cri::ContainerStatsFilter {
            label_selector: [("role".to_owned(), "idle".to_owned())].into(),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(labelled.len(), 1);
    assert_eq!(labelled[0].attributes.as_ref().unwrap().id, idle);
    let one = bed
        .rt
        .container_stats(cri::ContainerStatsRequest {
            container_id: busy[..12].into(),
        })
        .await
        .unwrap()
        .into_inner()
        .stats
        .unwrap();
    assert_eq!(one.attributes.unwrap().id, busy);

    // The pod: its cgroup holds pause and both containers; its eth0 counts what it received.
    let ip: std::net::IpAddr = pod_ip(&mut bed, &pod.0).await.parse().unwrap();
    let sock = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
    for _ in 0..10 {
        sock.send_to(&[7u8; 1000], (ip, 9)).unwrap();
    }
    let pod_stats = bed
        .rt
        .pod_sandbox_stats(cri::PodSandboxStatsRequest {
            pod_sandbox_id: pod.0.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .stats
        .unwrap();
    let linux = pod_stats.linux.unwrap();
    assert!(
        v(&linux.process.unwrap().process_count) >= 3,
        "pause, sh and sleep"
    );
    assert_eq!(linux.containers.len(), 2);
    assert!(v(&linux.memory.unwrap().working_set_bytes) >= v(&memory.working_set_bytes));
    let eth0 = linux.network.unwrap().default_interface.expect("eth0");
    assert_eq!(eth0.name, "eth0");
    assert!(v(&eth0.rx_bytes) >= 10_000, "{eth0:?}");
    let listed = bed
        .rt
        .list_pod_sandbox_stats(cri::ListPodSandboxStatsRequest {
            filter: Some(cri::PodSandboxStatsFilter {
                id: pod.0.clone(),
                ..Default::default()
            }),
        })
        .await
        .unwrap()
        .into_inner()
        .stats;
    assert_eq!(listed.len(), 1);

    // The cri-api v0.36 streams list the same as the List calls.
    let mut pods = bed
        .rt
        .stream_pod_sandboxes(cri::StreamPodSandboxesRequest::default())
        .await
        .unwrap()
        .into_inner();
    let page = pods.message().await.unwrap().unwrap();
    assert!(page.pod_sandboxes.iter().any(|p| p.id == pod.0));
    assert!(pods.message().await.unwrap().is_none(), "one page");
    let mut containers = bed
        .rt
        .stream_containers(cri::StreamContainersRequest {
            filter: Some(cri::ContainerFilter {
                pod_sandbox_id: pod.0.clone(),
                ..Default::default()
            }),
        })
        .await
        .unwrap()
        .into_inner();
    let mut ids: Vec<String> = containers
        .message()
        .await
        .unwrap()
        .unwrap()
        .containers
        .into_iter()
        .map(|c| c.id)
        .collect();
    ids.sort();
    let mut want = vec![busy.clone(), idle.clone()];
    want.sort();
    assert_eq!(ids, want);
    let mut stats = bed
        .rt
        .stream_container_stats(cri::StreamContainerStatsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        stats
            .message()
            .await
            .unwrap()
            .unwrap()
            .container_stats
            .len(),
        2
    );
    let mut pod_stats = bed
        .rt
        .stream_pod_sandbox_stats(cri::StreamPodSandboxStatsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        pod_stats
            .message()
            .await
            .unwrap()
            .unwrap()
            .pod_sandbox_stats
            .len(),
        1
    );
    let mut images = podrun_proto::client::image(&bed.node.socket)
        .await
        .unwrap()
        .stream_images(cri::StreamImagesRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(images.message().await.unwrap().unwrap().images.len(), 1);

    // The same figures as cAdvisor metrics, for kubelet's /metrics/cadvisor.
    let descriptors = bed
        .rt
        .list_metric_descriptors(cri::ListMetricDescriptorsRequest {})
        .await
        .unwrap()
        .into_inner()
        .descriptors;
    let keys = |name: &str| {
        descriptors
            .iter()
            .find(|d| d.name == name)
            .unwrap_or_else(|| panic!("no descriptor {name}"))
            .label_keys
            .len()
    };
    let metrics = bed
        .rt
        .list_pod_sandbox_metrics(cri::ListPodSandboxMetricsRequest {})
        .await
        .unwrap()
        .into_inner()
        .pod_metrics;
    let ours = metrics
        .iter()
        .find(|m| m.pod_sandbox_id == pod.0)
        .expect("the pod");
    let rx = ours
        .metrics
        .iter()
        .find(|m| {
            m.name == "container_network_receive_bytes_total"
                && m.label_values.last().map(String::as_str) == Some("eth0")
        })
        .expect("eth0's received bytes");
    assert!(v(&rx.value) >= 10_000);
    assert_eq!(rx.label_values.len(), keys(&rx.name));
    let busy_metrics = ours
        .container_metrics
        .iter()
        .find(|c| c.container_id == busy)
        .expect("the busy container");
    let ws = busy_metrics
        .metrics
        .iter()
        .find(|m| m.name == "container_memory_working_set_bytes")
        .unwrap();
    assert!(v(&ws.value) > 0);
    assert_eq!(ws.label_values.len(), keys(&ws.name));
    // The name label tells pod and container apart where kubelet adds no labels itself.
    let uid = &pod.1.metadata.as_ref().unwrap().uid;
    assert_eq!(
        ws.label_values[1],
        format!("k8s_busy_stats_podrun-test_{uid}_0")
    );
    assert_eq!(
        rx.label_values[1],
        format!("k8s_POD_stats_podrun-test_{uid}_0")
    );
    assert!(busy_metrics
        .metrics
        .iter()
        .any(|m| m.name == "container_fs_usage_bytes" && v(&m.value) >= 8 << 20));

    bed.remove_pod(&pod.0).await;
    let err = bed
        .rt
        .container_stats(cri::ContainerStatsRequest {
            container_id: busy.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
    bed.assert_no_leaks();
}

/// The figures move as the workload does: a memory hog's working set grows by what it
/// holds, and bytes one pod sends another appear in both pods' network stats (the
/// sender's tx, the receiver's rx).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_follow_a_memory_hog_and_traffic_between_pods() {
    let mut bed = Bed::start().await;
    let a = bed.pod("fetcher", "").await;
    let b = bed.pod("web", "").await;
    let hog = bed.run(&a, bed.container("hog", &["sleep", "1000"])).await;
    let server = bed
        .run(
            &b,
            bed.container(
                "server",
                &["sh", "-c", "dd if=/dev/zero of=/tmp/big bs=1024 count=512 2>/dev/null && httpd -f -p 8080 -h /tmp"],
            ),
        )
        .await;
    let working_set = |s: cri::ContainerStats| v(&s.memory.unwrap().working_set_bytes);
    let stats = |id: &str| cri::ContainerStatsRequest {
        container_id: id.to_owned(),
    };
    let before = working_set(
        bed.rt
            .container_stats(stats(&hog))
            .await
            .unwrap()
            .into_inner()
            .stats
            .unwrap(),
    );
    bed.out(
        &hog,
        &[
            "sh",
            "-c",
            "dd if=/dev/zero of=/dev/shm/fill bs=1M count=40 2>/dev/null",
        ],
    )
    .await;
    let after = working_set(
        bed.rt
            .container_stats(stats(&hog))
            .await
            .unwrap()
            .into_inner()
            .stats
            .unwrap(),
    );
    assert!(
        after >= before + (35 << 20),
        "working set {before} -> {after}"
    );

    let pod_ip = pod_ip(&mut bed, &b.0).await;
    let net =
        |s: cri::PodSandboxStats| s.linux.unwrap().network.unwrap().default_interface.unwrap();
    let pod_stats = |id: &str| cri::PodSandboxStatsRequest {
        pod_sandbox_id: id.to_owned(),
    };
    let rx = |s: cri::PodSandboxStats| v(&net(s).rx_bytes);
    let tx = |s: cri::PodSandboxStats| v(&net(s).tx_bytes);
    let stats_of = |bed: &mut Bed, id: String| {
        let mut rt = bed.rt.clone();
        async move {
            rt.pod_sandbox_stats(pod_stats(&id))
                .await
                .unwrap()
                .into_inner()
                .stats
                .unwrap()
        }
    };
    let (a_rx0, b_tx0) = (
        rx(stats_of(&mut bed, a.0.clone()).await),
        tx(stats_of(&mut bed, b.0.clone()).await),
    );
    // A fetches 512 KiB from B's web server: once wget is done, every byte has left B and
    // reached A.
    let url = format!("http://{pod_ip}:8080/big");
    let mut last = None;
    for _ in 0..50 {
        let r = bed
            .exec(&hog, &["wget", "-qO", "/dev/null", &url], 10)
            .await
            .unwrap();
        if r.exit_code == 0 {
            last = None;
            break;
        }
        last = Some(String::from_utf8_lossy(&r.stderr).into_owned());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(last, None, "the server answers");
    let a_rx = rx(stats_of(&mut bed, a.0.clone()).await) - a_rx0;
    let b_tx = tx(stats_of(&mut bed, b.0.clone()).await) - b_tx0;
    assert!(a_rx >= 512 * 1024, "the fetching pod's rx grew by {a_rx}");
    assert!(b_tx >= 512 * 1024, "the serving pod's tx grew by {b_tx}");
    assert_eq!(
        bed.status(&server).await.state,
        cri::ContainerState::ContainerRunning as i32
    );
    bed.remove_pod(&a.0).await;
    bed.remove_pod(&b.0).await;
    bed.assert_no_leaks();
}

/// The column `name` of the table row whose first cell starts `id`'s prefix.
fn cell(table: &str, id: &str, name: &str) -> String {
    let mut lines = table.lines();
    let header = lines.next().expect("a header");
    let at = header
        .find(name)
        .unwrap_or_else(|| panic!("{name} in {header}"));
    let row = lines
        .find(|l| id.starts_with(l.split_whitespace().next().unwrap_or("-")))
        .unwrap_or_else(|| panic!("a row for {id} in\n{table}"));
    row[at..].split_whitespace().next().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cpu_spinner_uses_one_core_and_podctl_shows_stats_watches_and_events() {
    let mut bed = Bed::start().await;
    // Events from the start: every container of this test, in order.
    let mut events = tokio::process::Command::new(podrun_tests::bin_dir().join("podctl"))
        .arg("-r")
        .arg(&bed.node.socket)
        .args(["events", "-o", "json"])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let pod = bed.pod("spin", "").await;
    let spinner = bed
        .run(
            &pod,
            bed.container("spinner", &["sh", "-c", "while :; do :; done"]),
        )
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;

    // kubelet's rate: one busy-looping thread uses one core, not more, and about all of it
    // (on 2 cores, whatever else runs beside the test).
    let by_id = cri::ContainerStatsFilter {
        id: spinner.clone(),
        ..Default::default()
    };
    list(&mut bed, by_id.clone()).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rate = v(&list(&mut bed, by_id).await[0].cpu.unwrap().usage_nano_cores);
    assert!(
        (600_000_000..=1_050_000_000).contains(&rate),
        "usage_nano_cores of a spinner: {rate}"
    );

    // podctl stats: the same figure as a percentage; statsp: the pod, its processes.
    let table = bed.node.podctl(&["stats", "--id", &spinner[..12]]);
    let cpu: f64 = cell(&table, &spinner, "CPU %").parse().unwrap();
    assert!((60.0..=105.0).contains(&cpu), "CPU % {cpu}:\n{table}");
    assert_eq!(cell(&table, &spinner, "NAME"), "spinner");
    let table = bed.node.podctl(&["statsp", "--label", "test=spin"]);
    assert_eq!(table.lines().count(), 2, "one pod:\n{table}");
    let pids: u64 = cell(&table, &pod.0, "PIDS").parse().unwrap();
    assert!(pids >= 2, "pause and the spinner's shell:\n{table}");
    let json: serde_json::Value =
        serde_json::from_str(&bed.node.podctl(&["stats", "-p", &pod.0, "-o", "json"])).unwrap();
    assert_eq!(json["stats"][0]["attributes"]["id"], spinner.as_str());

    // -w: a fresh table every --seconds until stopped.
    let mut watch = tokio::process::Command::new(podrun_tests::bin_dir().join("podctl"))
        .arg("-r")
        .arg(&bed.node.socket)
        .args(["statsp", "-w", "-s", "1"])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(3500)).await;
    watch.start_kill().unwrap();
    let out = watch.wait_with_output().await.unwrap();
    let tables = String::from_utf8_lossy(&out.stdout)
        .matches("POD ID")
        .count();
    assert!((2..=3).contains(&tables), "{tables} tables in 3.5 s");

    // events: created, started, stopped, deleted, each with the pod it belongs to.
    bed.remove_pod(&pod.0).await;
    let stdout = events.stdout.take().unwrap();
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    let mut seen = Vec::new();
    while seen.len() < 4 {
        let line = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
            .await
            .unwrap_or_else(|_| panic!("events so far: {seen:?}"))
            .unwrap()
            .expect("podctl events ended");
        let e: serde_json::Value = serde_json::from_str(&line).unwrap();
        if e["container_id"] == spinner.as_str() {
            assert_eq!(e["pod_sandbox_status"]["id"], pod.0.as_str());
            seen.push(e["container_event_type"].as_i64().unwrap());
        }
    }
    let kinds = [
        cri::ContainerEventType::ContainerCreatedEvent,
        cri::ContainerEventType::ContainerStartedEvent,
        cri::ContainerEventType::ContainerStoppedEvent,
        cri::ContainerEventType::ContainerDeletedEvent,
    ];
    assert_eq!(seen, kinds.map(|k| k as i64));
    events.kill().await.unwrap();
    bed.assert_no_leaks();
}
