//! podrun's shim as a runtime handler of a real containerd (Debian's): `ctr` with
//! `--runtime io.containerd.podrun.v2`, and containerd's CRI with `runtime_handler: podrun`,
//! against a real registry and the test node's CNI network.

use std::time::Duration;

use podrun_tests::containerd::Containerd;
use podrun_tests::registry::{busybox_image, pause_image, Registry};
use podrun_tests::{bin_dir, wait_until};

const RUNTIME: &str = "io.containerd.podrun.v2";

fn rss_kb(pid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("Rss:")?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or(0)
}

fn task_status(c: &Containerd, id: &str) -> String {
    c.ctr_ok(&["task", "ls"])
        .lines()
        .find(|l| l.split_whitespace().next() == Some(id))
        .and_then(|l| l.split_whitespace().nth(2).map(str::to_owned))
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctr_runs_tasks_through_the_podrun_shim() {
    let registry = Registry::start();
    let image = format!("{}/busybox:1", registry.addr);
    registry.push("busybox:1", &busybox_image()).await;
    let c = Containerd::start(&format!("{}/pause:1", registry.addr));
    c.ctr_ok(&["images", "pull", "--plain-http", &image]);

    // Output and exit status of a task that runs to its end.
    let out = c.ctr(&[
        "run",
        "--rm",
        "--runtime",
        RUNTIME,
        &image,
        "once",
        "sh",
        "-c",
        "echo hello from podrun; exit 3",
    ]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hello from podrun\n");
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A long-running task: ls, exec, metrics, pause/resume, kill.
    c.ctr_ok(&[
        "run",
        "-d",
        "--runtime",
        RUNTIME,
        &image,
        "long",
        "sleep",
        "1000",
    ]);
    assert_eq!(task_status(&c, "long"), "RUNNING");
    let exec = c.ctr(&[
        "task",
        "exec",
        "--exec-id",
        "e1",
        "long",
        "sh",
        "-c",
        "echo in-exec; exit 5",
    ]);
    assert_eq!(String::from_utf8_lossy(&exec.stdout), "in-exec\n");
    assert_eq!(exec.status.code(), Some(5));
    let metrics = c.ctr_ok(&["task", "metrics", "long"]);
    let usage: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("memory.usage_in_bytes")?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no memory usage in\n{metrics}"));
    assert!(usage > 0, "{metrics}");
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("pids.current") && l.trim_end().ends_with(" 1")),
        "{metrics}"
    );
    c.ctr_ok(&["task", "pause", "long"]);
    assert_eq!(task_status(&c, "long"), "PAUSED");
    c.ctr_ok(&["task", "resume", "long"]);
    assert_eq!(task_status(&c, "long"), "RUNNING");
    let pids = c.ctr_ok(&["task", "ps", "long"]);
    assert_eq!(pids.lines().count(), 2, "one process: {pids}");
    c.ctr_ok(&["task", "kill", "-s", "SIGKILL", "long"]);
    wait_until(Duration::from_secs(10), || {
        task_status(&c, "long") == "STOPPED"
    })
    .expect("killed task stops");
    c.ctr_ok(&["task", "rm", "long"]);
    c.ctr_ok(&["container", "rm", "long"]);
    c.ctr_ok(&["images", "rm", &image]);
    wait_until(Duration::from_secs(5), || c.podrun_shims().is_empty())
        .expect("shims exit with their last task");
    c.node.assert_no_leaks();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containerd_cri_runs_a_pod_in_one_podrun_shim_and_survives_a_containerd_restart() {
    let registry = Registry::start();
    let image = format!("{}/busybox:1", registry.addr);
    registry.push("busybox:1", &busybox_image()).await;
    registry
        .push("pause:1", &pause_image(&bin_dir().join("podrun-pause")))
        .await;
    let mut c = Containerd::start(&format!("{}/pause:1", registry.addr));
    let dir = c.node.dir.clone();
    let mut pod = c.node.pod_config("viactrd");
    pod.log_directory = dir.join("logs/viactrd").display().to_string();
    let pod_file = dir.join("pod.json");
    std::fs::write(&pod_file, serde_json::to_string(&pod).unwrap()).unwrap();
    let container = |name: &str, cmd: &[&str]| {
        let path = dir.join(format!("{name}.json"));
        let config = serde_json::json!({
            "metadata": {"name": name},
            "image": {"image": image},
            "command": cmd,
            "log_path": format!("{name}.log"),
        });
        std::fs::write(&path, config.to_string()).unwrap();
        path.display().to_string()
    };
    let web = container(
        "web",
        &[
            "sh",
            "-c",
            "echo serving; echo page-from-web > /tmp/index.html; httpd -f -p 8080 -h /tmp",
        ],
    );
    let client = container("client", &["sleep", "1000"]);
    let pod_file = pod_file.display().to_string();

    c.podctl(&["pull", &image]);
    let pod_id = c
        .podctl(&["runp", "--runtime", "podrun", &pod_file])
        .trim()
        .to_owned();
    let mut ids = Vec::new();
    for file in [&web, &client] {
        let id = c
            .podctl(&["create", &pod_id, file, &pod_file])
            .trim()
            .to_owned();
        c.podctl(&["start", &id]);
        ids.push(id);
    }
    // Both containers share the pod's localhost.
    let mut page = String::new();
    for _ in 0..50 {
        page = c.podctl(&[
            "exec",
            &ids[1],
            "wget",
            "-qO-",
            "http://localhost:8080/index.html",
        ]);
        if page.contains("page-from-web") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(page, "page-from-web\n");
    assert!(c.podctl(&["logs", &ids[0]]).contains("stdout F serving"));
    // The sandbox and both containers: one podrun shim, its pause the built-in one.
    let shims = c.podrun_shims();
    assert_eq!(shims.len(), 1, "one shim per pod: {shims:?}");
    let children =
        std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", shims[0])).unwrap();
    let pause = bin_dir().join("podrun-pause").display().to_string();
    let has_pause = children.split_whitespace().any(|pid| {
        std::fs::read_to_string(format!("/proc/{pid}/cmdline"))
            .is_ok_and(|cmd| cmd.starts_with(&pause))
    });
    assert!(has_pause, "the sandbox runs podrun's pause under the shim");
    let bundle = dir.join(format!(
        "state/ctrd/io.containerd.runtime.v2.task/k8s.io/{pod_id}"
    ));
    let spec: serde_json::Value =
        serde_json::from_slice(&std::fs::read(bundle.join("config.json")).unwrap()).unwrap();
    assert_eq!(
        spec["annotations"]["io.podrun.pause"], "builtin",
        "the task says so"
    );
    let shim_pid = std::fs::read_to_string(bundle.join("shim.pid")).unwrap();
    assert_eq!(shim_pid.trim().parse::<i32>().ok(), Some(shims[0]));
    eprintln!(
        "podrun shim serving a pod of 2 containers: RSS {} kB",
        rss_kb(shims[0])
    );

    // UpdateContainerResources reaches the container's cgroup through the shim's Update.
    let mut rt = podrun_proto::client::runtime(&c.socket).await.unwrap();
    let limit = 96 << 20;
    let req = podrun_proto::cri::UpdateContainerResourcesRequest {
        container_id: ids[1].clone(),
        linux: Some(podrun_proto::cri::LinuxContainerResources {
            memory_limit_in_bytes: limit,
            ..Default::default()
        }),
        ..Default::default()
    };
    rt.update_container_resources(req)
        .await
        .expect("UpdateContainerResources");
    let metrics = c.ctr_ok(&["-n", "k8s.io", "task", "metrics", &ids[1]]);
    let limit_line = metrics
        .lines()
        .find(|l| l.starts_with("memory.limit_in_bytes"));
    assert_eq!(
        limit_line.and_then(|l| l.split_whitespace().nth(1)),
        Some(limit.to_string().as_str()),
        "{metrics}"
    );

    // A container killed for memory: containerd hears of the OOM and says OOMKilled.
    let hog = dir.join("hog.json");
    let config = serde_json::json!({
        "metadata": {"name": "hog"},
        "image": {"image": image},
        "command": ["dd", "if=/dev/zero", "of=/dev/null", "bs=64M", "count=1"],
        "linux": {"resources": {"memory_limit_in_bytes": 16 << 20}},
    });
    std::fs::write(&hog, config.to_string()).unwrap();
    let hog = hog.display().to_string();
    let hog_id = c
        .podctl(&["create", &pod_id, &hog, &pod_file])
        .trim()
        .to_owned();
    c.podctl(&["start", &hog_id]);
    let mut status = serde_json::Value::Null;
    for _ in 0..100 {
        status = serde_json::from_str(&c.podctl(&["inspect", &hog_id])).unwrap();
        if status["status"]["state"] == "CONTAINER_EXITED" || status["status"]["state"] == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(status["status"]["reason"], "OOMKilled", "{status}");
    assert_eq!(
        status["status"]["exitCode"]
            .as_i64()
            .or(status["status"]["exit_code"].as_i64()),
        Some(137),
        "{status}"
    );
    c.podctl(&["rm", &hog_id]);

    // containerd dies and comes back: the pod keeps running and is still managed.
    c.restart();
    let ps = c.podctl(&["ps"]);
    assert_eq!(ps.matches("RUNNING").count(), 2, "{ps}");
    assert_eq!(
        c.podctl(&["exec", &ids[1], "echo", "still-managed"]),
        "still-managed\n"
    );
    assert_eq!(c.podrun_shims(), shims, "the same shim serves on");
    c.podctl(&["stop", "-t", "0", &ids[1]]);
    assert!(c.podctl(&["ps", "-a"]).contains("EXITED"));
    // containerd pins the pod's netns itself: it must be gone with the pod.
    let info = c.podctl(&["inspectp", &pod_id]);
    let start = info
        .find("/netns/cni-")
        .expect("the pod's netns in its info");
    let netns = &info[..start]
        .rsplit('"')
        .next()
        .unwrap_or_default()
        .to_owned();
    let netns = format!(
        "{netns}{}",
        info[start..].split('"').next().unwrap_or_default()
    );
    assert!(std::path::Path::new(&netns).exists(), "{netns}");
    c.podctl(&["stopp", &pod_id]);
    c.podctl(&["rmp", &pod_id]);
    assert!(
        !std::path::Path::new(&netns).exists(),
        "{netns} left behind"
    );
    wait_until(Duration::from_secs(5), || c.podrun_shims().is_empty())
        .expect("the shim exits with the pod");
    c.node.assert_no_leaks();
}
