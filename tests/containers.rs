//! Containers in pods: real images from a real registry, real overlayfs, the OCI runtime
//! (runc and crun) driven by the pod's shim, CRI logs and ExecSync.

use std::path::PathBuf;
use std::time::Duration;

use podrun_proto::cri;
use podrun_tests::registry::{image, layer, Compression, LayerBuilder};
use podrun_tests::workload::{pull, Bed};

async fn two_containers_share_the_pod(handler: &str) {
    let mut bed = Bed::start().await;
    let pod = bed.pod("shared", handler).await;
    let shared = bed.node.dir.join("shared-dir");
    std::fs::create_dir_all(&shared).unwrap();
    std::fs::write(shared.join("index.html"), "hello from the pod\n").unwrap();
    let volume = |ro| cri::Mount {
        container_path: "/www".into(),
        host_path: shared.display().to_string(),
        readonly: ro,
        ..Default::default()
    };
    let mut server = bed.container("server", &["httpd", "-f", "-p", "8080", "-h", "/www"]);
    server.mounts = vec![volume(false)];
    server.linux = Some(cri::LinuxContainerConfig {
        security_context: Some(cri::LinuxContainerSecurityContext {
            seccomp: Some(cri::SecurityProfile {
                profile_type: cri::security_profile::ProfileType::RuntimeDefault as i32,
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    });
    let mut client_c = bed.container("client", &["sleep", "1000"]);
    client_c.mounts = vec![volume(false)];
    let s = bed.run(&pod, server).await;
    let c = bed.run(&pod, client_c).await;
    assert_eq!(
        bed.status(&s).await.state,
        cri::ContainerState::ContainerRunning as i32
    );

    // localhost is shared: the client fetches the server's page.
    let mut page = String::new();
    for _ in 0..50 {
        if let Ok(r) = bed
            .exec(&c, &["wget", "-qO-", "http://localhost:8080/index.html"], 5)
            .await
        {
            if r.exit_code == 0 {
                page = String::from_utf8(r.stdout).unwrap();
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(page, "hello from the pod\n");
    // One eth0 for both.
    assert_eq!(
        bed.out(&s, &["cat", "/sys/class/net/eth0/address"]).await,
        bed.out(&c, &["cat", "/sys/class/net/eth0/address"]).await
    );
    // The host directory carries a file from one to the other, and so does /dev/shm.
    bed.out(
        &s,
        &[
            "sh",
            "-c",
            "echo via-volume > /www/note && echo via-shm > /dev/shm/note",
        ],
    )
    .await;
    assert_eq!(bed.out(&c, &["cat", "/www/note"]).await, "via-volume\n");
    assert_eq!(bed.out(&c, &["cat", "/dev/shm/note"]).await, "via-shm\n");
    assert_eq!(
        std::fs::read_to_string(shared.join("note")).unwrap(),
        "via-volume\n"
    );
    assert_eq!(
        bed.out(&c, &["hostname"]).await.trim(),
        "shared",
        "the pod's hostname"
    );
    // Security defaults: RuntimeDefault seccomp where asked, default capabilities, masked paths.
    let seccomp_mode = |s: String| {
        s.lines()
            .find(|l| l.starts_with("Seccomp:"))
            .map(|l| l.split_whitespace().last().unwrap_or_default().to_owned())
    };
    assert_eq!(
        seccomp_mode(bed.out(&s, &["cat", "/proc/self/status"]).await).as_deref(),
        Some("2")
    );
    assert_eq!(
        seccomp_mode(bed.out(&c, &["cat", "/proc/self/status"]).await).as_deref(),
        Some("0")
    );
    // The profile refuses clone with namespace flags and clone3; plain forks still work.
    assert_eq!(
        bed.out(&s, &["sh", "-c", "echo $(echo forked) | cat"])
            .await,
        "forked\n"
    );
    let caps = bed.out(&c, &["cat", "/proc/self/status"]).await;
    assert!(
        caps.lines().any(|l| l == "CapBnd:\t00000000a80425fb"),
        "containerd's default capability set:\n{caps}"
    );
    assert_eq!(
        bed.out(&c, &["cat", "/proc/timer_list"]).await,
        "",
        "masked"
    );

    let listed = bed
        .rt
        .list_containers(cri::ListContainersRequest {
            filter: Some(cri::ContainerFilter {
                pod_sandbox_id: pod.0.clone(),
                ..Default::default()
            }),
        })
        .await
        .unwrap()
        .into_inner()
        .containers;
    assert_eq!(listed.len(), 2);
    bed.remove_pod(&pod.0).await;
    bed.assert_no_leaks();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_containers_share_localhost_volumes_and_shm_with_runc() {
    two_containers_share_the_pod("runc").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_containers_share_localhost_volumes_and_shm_with_crun() {
    assert!(
        std::path::Path::new("/usr/bin/crun").exists(),
        "crun is missing: install it (hack/setup does)"
    );
    two_containers_share_the_pod("crun").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_exit_codes_and_exec_sync_limits_with_runc() {
    logs_exit_codes_and_exec_sync_limits("runc").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_exit_codes_and_exec_sync_limits_with_crun() {
    logs_exit_codes_and_exec_sync_limits("crun").await;
}

async fn logs_exit_codes_and_exec_sync_limits(handler: &str) {
    let mut bed = Bed::start().await;
    let pod = bed.pod("logs", handler).await;
    let long = "x".repeat(20 * 1024);
    let script = format!(
        "echo out-line; echo err-line >&2; echo {long}; printf tail-without-newline; exit 3"
    );
    let id = bed
        .run(&pod, bed.container("talker", &["sh", "-c", &script]))
        .await;
    let status = bed.wait_exit(&id).await;
    assert_eq!((status.exit_code, status.reason.as_str()), (3, "Error"));
    assert!(
        status.finished_at >= status.started_at
            && status.started_at >= status.created_at
            && status.created_at > 0,
        "{status:?}"
    );
    let log_path = PathBuf::from(&status.log_path);
    assert!(
        log_path.is_absolute() && log_path.ends_with("talker.log"),
        "{log_path:?}"
    );
    let log = std::fs::read_to_string(&log_path).unwrap();
    let records: Vec<(String, String, String)> = log
        .lines()
        .map(|l| {
            let mut f = l.splitn(4, ' ');
            let ts = f.next().unwrap();
            assert!(
                ts.ends_with('Z') && ts.contains('T') && ts.len() == 30,
                "timestamp {ts:?}"
            );
            (
                f.next().unwrap().to_owned(),
                f.next().unwrap().to_owned(),
                f.next().unwrap_or("").to_owned(),
            )
        })
        .collect();
    assert!(
        records.contains(&("stdout".into(), "F".into(), "out-line".into())),
        "{records:?}"
    );
    assert!(records.contains(&("stderr".into(), "F".into(), "err-line".into())));
    let long_parts: Vec<&(String, String, String)> =
        records.iter().filter(|r| r.2.starts_with("xxx")).collect();
    assert_eq!(
        long_parts.iter().map(|r| r.1.as_str()).collect::<Vec<_>>(),
        ["P", "F"],
        "a 20 KiB line is split"
    );
    assert_eq!(
        long_parts.iter().map(|r| r.2.len()).sum::<usize>(),
        long.len()
    );
    assert!(records.contains(&("stdout".into(), "P".into(), "tail-without-newline".into())));

    // ExecSync: output, exit code, timeout, cap.
    let sleeper = bed
        .run(&pod, bed.container("sleeper", &["sleep", "1000"]))
        .await;
    let r = bed
        .exec(
            &sleeper,
            &["sh", "-c", "echo hi; echo oops >&2; exit 7"],
            10,
        )
        .await
        .unwrap();
    assert_eq!(
        (r.stdout.as_slice(), r.stderr.as_slice(), r.exit_code),
        (&b"hi\n"[..], &b"oops\n"[..], 7)
    );
    // A command that exits at once but leaves a child holding its output open (as exec
    // probes do) is answered with its own exit and output, within a probe's 1 s timeout.
    for _ in 0..3 {
        let r = bed
            .exec(
                &sleeper,
                &["sh", "-c", "sleep 10 & echo started; exit 0"],
                1,
            )
            .await
            .expect("answered, not timed out");
        assert_eq!((r.stdout.as_slice(), r.exit_code), (&b"started\n"[..], 0));
    }
    let err = bed.exec(&sleeper, &["sleep", "30"], 1).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::DeadlineExceeded);
    assert!(err.message().contains("timed out"), "{}", err.message());
    let r = bed
        .exec(
            &sleeper,
            &["dd", "if=/dev/zero", "bs=1048576", "count=20"],
            30,
        )
        .await
        .unwrap();
    assert_eq!(r.stdout.len(), 16 << 20, "stdout capped at 16 MiB");
    // ReopenContainerLog starts a new file after the client renamed the old one.
    let sleeper_log = PathBuf::from(bed.status(&sleeper).await.log_path);
    std::fs::rename(&sleeper_log, sleeper_log.with_extension("old")).unwrap();
    bed.rt
        .reopen_container_log(cri::ReopenContainerLogRequest {
            container_id: sleeper.clone(),
        })
        .await
        .unwrap();
    assert!(sleeper_log.exists());
    let err = bed
        .rt
        .reopen_container_log(cri::ReopenContainerLogRequest {
            container_id: id.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "not running");

    // A container created but never started can be removed, and leaves nothing behind.
    let req = cri::CreateContainerRequest {
        pod_sandbox_id: pod.0.clone(),
        config: Some(bed.container("idle", &["sleep", "1"])),
        sandbox_config: Some(pod.1.clone()),
    };
    let idle = bed
        .rt
        .create_container(req)
        .await
        .unwrap()
        .into_inner()
        .container_id;
    bed.containers.push(idle.clone());
    assert_eq!(
        bed.status(&idle).await.state,
        cri::ContainerState::ContainerCreated as i32
    );
    bed.rt
        .remove_container(cri::RemoveContainerRequest {
            container_id: idle.clone(),
        })
        .await
        .expect("removing a Created container");
    let err = bed
        .rt
        .container_status(cri::ContainerStatusRequest {
            container_id: idle,
            verbose: false,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);

    bed.remove_pod(&pod.0).await;
    bed.assert_no_leaks();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_timeouts_oom_and_non_root_users_with_runc() {
    stop_timeouts_oom_and_non_root_users("runc").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_timeouts_oom_and_non_root_users_with_crun() {
    stop_timeouts_oom_and_non_root_users("crun").await;
}

async fn stop_timeouts_oom_and_non_root_users(handler: &str) {
    let mut bed = Bed::start().await;
    let user_img = image(
        vec![layer(
            LayerBuilder::default().busybox().tar(),
            Compression::Gzip,
        )],
        serde_json::json!({"User": "app", "Cmd": ["sleep", "1000"], "StopSignal": "SIGUSR1"}),
    );
    bed.registry.push("app:1", &user_img).await;
    let app = format!("{}/app:1", bed.registry.addr);
    pull(&bed.node, &app).await;
    let pod = bed.pod("limits", handler).await;

    let mut cfg = bed.container("nonroot", &[]);
    cfg.image = Some(cri::ImageSpec {
        image: app.clone(),
        ..Default::default()
    });
    let nonroot = bed.run(&pod, cfg).await;
    assert_eq!(bed.out(&nonroot, &["id", "-u"]).await.trim(), "1000");
    assert_eq!(bed.out(&nonroot, &["id", "-G"]).await.trim(), "1000 2000");
    // The image's StopSignal (USR1) ends sleep at once.
    let t = std::time::Instant::now();
    bed.rt
        .stop_container(cri::StopContainerRequest {
            container_id: nonroot.clone(),
            timeout: 30,
        })
        .await
        .unwrap();
    assert!(t.elapsed() < Duration::from_secs(20));
    assert_eq!(
        bed.status(&nonroot).await.exit_code,
        128 + 10 /* SIGUSR1 */
    );

    let stubborn = bed
        .run(
            &pod,
            bed.container(
                "stubborn",
                &["sh", "-c", "trap '' TERM; while true; do sleep 1; done"],
            ),
        )
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    bed.rt
        .stop_container(cri::StopContainerRequest {
            container_id: stubborn.clone(),
            timeout: 1,
        })
        .await
        .unwrap();
    let s = bed.status(&stubborn).await;
    assert_eq!(
        (s.state, s.exit_code),
        (cri::ContainerState::ContainerExited as i32, 137),
        "killed after the timeout"
    );

    let mut hog = bed.container("hog", &["sh", "-c", "tail /dev/zero"]);
    hog.linux = Some(cri::LinuxContainerConfig {
        resources: Some(cri::LinuxContainerResources {
            memory_limit_in_bytes: 32 << 20,
            ..Default::default()
        }),
        ..Default::default()
    });
    let hog = bed.run(&pod, hog).await;
    let s = bed.wait_exit(&hog).await;
    assert_eq!((s.exit_code, s.reason.as_str()), (137, "OOMKilled"));

    bed.remove_pod(&pod.0).await;
    bed.assert_no_leaks();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containers_outlive_a_podrund_restart_and_exits_while_it_is_down_are_reported() {
    let mut bed = Bed::start().await;
    let pod = bed.pod("restart", "runc").await;
    let lives = bed
        .run(&pod, bed.container("lives", &["sleep", "1000"]))
        .await;
    let dies = bed
        .run(
            &pod,
            bed.container("dies", &["sh", "-c", "sleep 2; exit 4"]),
        )
        .await;
    bed.node.kill_daemon();
    tokio::time::sleep(Duration::from_secs(3)).await;
    bed.node.spawn_daemon();
    bed.rt = bed.node.client().await;
    assert_eq!(
        bed.status(&lives).await.state,
        cri::ContainerState::ContainerRunning as i32
    );
    assert_eq!(
        bed.out(&lives, &["echo", "still here"]).await,
        "still here\n"
    );
    let s = bed.wait_exit(&dies).await;
    assert_eq!(
        s.exit_code, 4,
        "the exit while podrund was down is reported"
    );
    bed.rt
        .remove_container(cri::RemoveContainerRequest {
            container_id: lives.clone(),
        })
        .await
        .expect("RemoveContainer of a running container");
    bed.remove_pod(&pod.0).await;
    bed.assert_no_leaks();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pid_shared_pod_sees_one_process_tree_and_other_pods_reach_it_by_ip() {
    let mut bed = Bed::start().await;
    let options = cri::NamespaceOption {
        pid: cri::NamespaceMode::Pod as i32,
        ..Default::default()
    };
    let mut config = bed.node.pod_config_with("pidshare", options);
    config.log_directory = bed.node.dir.join("logs/pidshare").display().to_string();
    let req = cri::RunPodSandboxRequest {
        config: Some(config.clone()),
        runtime_handler: String::new(),
    };
    let pod_id = bed
        .rt
        .run_pod_sandbox(req)
        .await
        .unwrap()
        .into_inner()
        .pod_sandbox_id;
    bed.node.remember(&pod_id);
    let pod = (pod_id.clone(), config);
    let shared_pid = |mut c: cri::ContainerConfig| {
        c.linux = Some(cri::LinuxContainerConfig {
            security_context: Some(cri::LinuxContainerSecurityContext {
                namespace_options: Some(cri::NamespaceOption {
                    pid: cri::NamespaceMode::Pod as i32,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        });
        c
    };
    let web = bed
        .run(
            &pod,
            shared_pid(bed.container("web", &["httpd", "-f", "-p", "8080", "-h", "/etc"])),
        )
        .await;
    let other = bed
        .run(&pod, shared_pid(bed.container("other", &["sleep", "1000"])))
        .await;
    // PID 1 is pause, and each container sees the other's processes.
    assert!(bed
        .out(&other, &["cat", "/proc/1/cmdline"])
        .await
        .contains("podrun-pause"));
    let ps = bed.out(&other, &["ps", "-o", "args"]).await;
    assert!(
        ps.contains("httpd -f -p 8080") && ps.contains("sleep 1000"),
        "{ps}"
    );

    // A container in another pod on the node reaches the server at the first pod's IP.
    let ip = bed
        .rt
        .pod_sandbox_status(cri::PodSandboxStatusRequest {
            pod_sandbox_id: pod_id.clone(),
            verbose: false,
        })
        .await
        .unwrap()
        .into_inner()
        .status
        .unwrap()
        .network
        .unwrap()
        .ip;
    let client_pod = bed.pod("visitor", "").await;
    let visitor = bed
        .run(&client_pod, bed.container("visitor", &["sleep", "1000"]))
        .await;
    let mut fetched = String::new();
    for _ in 0..50 {
        let r = bed
            .exec(
                &visitor,
                &["wget", "-qO-", &format!("http://{ip}:8080/hostname")],
                5,
            )
            .await
            .unwrap();
        if r.exit_code == 0 {
            fetched = String::from_utf8(r.stdout).unwrap();
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        fetched.trim(),
        "pidshare",
        "the visitor read the server pod's /etc/hostname over the pod network"
    );
    let _ = web;
    bed.remove_pod(&client_pod.0).await;
    bed.remove_pod(&pod_id).await;
    bed.assert_no_leaks();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn podctl_pulls_runs_and_inspects_containers_from_crictl_files() {
    let bed = Bed::start().await;
    let podctl = |args: &[&str]| bed.node.podctl(args);
    let pod_file = bed.node.dir.join("pod.yaml");
    std::fs::write(
        &pod_file,
        format!(
            "metadata: {{name: cli, namespace: podrun-test, uid: cli-uid}}\nlog_directory: {}/logs/cli\nlinux:\n  cgroup_parent: {}\n",
            bed.node.dir.display(),
            bed.node.cgroup_parent
        ),
    )
    .unwrap();
    let ctr_file = bed.node.dir.join("ctr.json");
    let ctr = serde_json::json!({
        "metadata": {"name": "echo"},
        "image": {"image": bed.busybox},
        "command": ["sh", "-c", "echo started; sleep 1000"],
        "envs": [{"key": "GREETING", "value": "aGk="}],
        "log_path": "echo.log",
    });
    std::fs::write(&ctr_file, ctr.to_string()).unwrap();
    assert!(podctl(&["images"]).contains("busybox"));
    let id = podctl(&[
        "run",
        ctr_file.to_str().unwrap(),
        pod_file.to_str().unwrap(),
    ])
    .trim()
    .to_owned();
    for p in podctl(&["pods", "-q"]).lines() {
        bed.node.remember(p);
    }
    assert!(podctl(&["ps"]).contains(&id[..13]));
    assert_eq!(
        podctl(&["exec", &id, "sh", "-c", "echo $GREETING"]),
        "hi\n",
        "bytes values in crictl JSON are base64"
    );
    let mut log = String::new();
    for _ in 0..50 {
        log = podctl(&["logs", &id]);
        if log.contains("stdout F started") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(log.contains("stdout F started"), "{log}");
    let inspect: serde_json::Value =
        serde_json::from_str(&podctl(&["inspect", &id[..10]])).unwrap();
    assert_eq!(inspect["status"]["metadata"]["name"], "echo");
    assert!(inspect["info"]["info"]["pid"].as_u64().unwrap() > 0);
    podctl(&["stop", "-t", "0", &id]);
    assert!(podctl(&["ps", "-a"]).contains("EXITED"));
    podctl(&["rm", &id]);
    let pod = podctl(&["pods", "-q"]).trim().to_owned();
    podctl(&["stopp", &pod]);
    podctl(&["rmp", &pod]);
    podctl(&["rmi", &bed.busybox]);
    assert!(podctl(&["images", "-q"]).trim().is_empty());
    bed.assert_no_leaks();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tty_and_stdin_containers_with_runc() {
    tty_and_stdin_containers("runc").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tty_and_stdin_containers_with_crun() {
    tty_and_stdin_containers("crun").await;
}

/// A `tty: true` container runs on a terminal whose output reaches its log; `stdin: true`
/// keeps the container's stdin open (the shim holds it for attach), while without it stdin
/// is at end-of-file at once.
async fn tty_and_stdin_containers(handler: &str) {
    let mut bed = Bed::start().await;
    let pod = bed.pod("tty", handler).await;
    let script = "tty; [ -t 0 ] && [ -t 1 ] && echo both-terminals; stty size; echo term=$TERM";
    let mut config = bed.container("term", &["sh", "-c", script]);
    config.tty = true;
    let id = bed.run(&pod, config).await;
    let status = bed.wait_exit(&id).await;
    assert_eq!(status.exit_code, 0, "{status:?}");
    let log = std::fs::read_to_string(&status.log_path).unwrap();
    assert!(log.contains("stdout F /dev/pts/0"), "{log}");
    assert!(log.contains("both-terminals"), "{log}");

    // The same command without a terminal: no tty, and its stdin is empty.
    let reads = ["sh", "-c", "cat; echo stdin-ended"];
    let closed = bed.run(&pod, bed.container("closed", &reads)).await;
    assert_eq!(bed.wait_exit(&closed).await.exit_code, 0);
    let mut config = bed.container("open", &reads);
    config.stdin = true;
    let open = bed.run(&pod, config).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let status = bed.status(&open).await;
    assert_eq!(
        status.state,
        cri::ContainerState::ContainerRunning as i32,
        "stdin: true keeps stdin open"
    );
    bed.remove_pod(&pod.0).await;
    bed.assert_no_leaks();
}

/// RemoveContainer right after StartContainer, with no StopContainer, as critest and kubelet
/// do: for a container that exits at once (its exit is being cleaned up meanwhile) and for
/// one that runs and ignores SIGTERM. Each is gone from the list, and nothing is left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containers_removed_right_after_start_are_gone() {
    let mut bed = Bed::start().await;
    let pod = bed.pod("remove-now", "crun").await;
    for i in 0..15 {
        let cmd: &[&str] = match i % 3 {
            0 => &["true"],
            1 => &["sh"],
            _ => &["sh", "-c", "trap '' TERM; while :; do sleep 1; done"],
        };
        let id = bed.run(&pod, bed.container(&format!("c{i}"), cmd)).await;
        bed.rt
            .remove_container(cri::RemoveContainerRequest {
                container_id: id.clone(),
            })
            .await
            .unwrap_or_else(|e| panic!("removing {cmd:?}: {e:?}"));
        let left = bed
            .rt
            .list_containers(cri::ListContainersRequest {
                filter: Some(cri::ContainerFilter {
                    id: id.clone(),
                    ..Default::default()
                }),
            })
            .await
            .unwrap()
            .into_inner()
            .containers;
        assert!(left.is_empty(), "{cmd:?} still listed: {left:?}");
    }
    bed.remove_pod(&pod.0).await;
    bed.assert_no_leaks();
}

/// RuntimeClass handlers from podrund's configuration: a handler name mapped to a runtime
/// binary runs pods with it, the default handler can be one of them, Status lists them all
/// with their features, and an unknown handler is refused naming the known ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configured_runtime_handlers_run_pods_and_are_listed() {
    let mut bed = Bed::start_with(&[
        "--runtime-handler",
        "fast=/usr/bin/crun",
        "--runtime-handler",
        "classic=runc",
        "--default-runtime-handler",
        "classic",
    ])
    .await;
    let status = bed
        .rt
        .status(cri::StatusRequest { verbose: false })
        .await
        .unwrap()
        .into_inner();
    let names: Vec<&str> = status
        .runtime_handlers
        .iter()
        .map(|h| h.name.as_str())
        .collect();
    assert_eq!(names, ["", "classic", "crun", "fast", "runc"]);
    assert!(status
        .runtime_handlers
        .iter()
        .all(|h| h.features.unwrap().recursive_read_only_mounts));
    for (handler, runtime) in [("fast", "/usr/bin/crun"), ("", "runc")] {
        let pod = bed.pod(&format!("rc-{}", handler.len()), handler).await;
        let id = bed.run(&pod, bed.container("c", &["sleep", "1000"])).await;
        let (_, used) = bed.status_and_info(&id).await;
        assert!(
            used["runtime"].as_str().unwrap().ends_with(runtime),
            "{handler:?} ran with {}",
            used["runtime"]
        );
        bed.remove_pod(&pod.0).await;
    }
    let err = bed
        .rt
        .run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(bed.node.pod_config("rc-unknown")),
            runtime_handler: "nope".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    assert!(
        err.message().contains("fast"),
        "names the known handlers: {}",
        err.message()
    );
    bed.assert_no_leaks();
}

/// The memory limit of a pod's (`id` "") or a container's cgroup, read on the host.
fn memory_limit(bed: &Bed, pod: &str, id: &str) -> String {
    let rel = format!(
        "{}/{pod}/{id}",
        bed.node.cgroup_parent.trim_start_matches('/')
    );
    let rel = rel.trim_end_matches('/');
    for (dir, file) in [
        ("/sys/fs/cgroup/memory", "memory.limit_in_bytes"),
        ("/sys/fs/cgroup", "memory.max"),
    ] {
        if let Ok(v) = std::fs::read_to_string(PathBuf::from(dir).join(rel).join(file)) {
            return v.trim().to_owned();
        }
    }
    panic!("no memory cgroup for {rel}");
}

/// UpdateContainerResources (kubelet's in-place resize): the running container's cgroup
/// gets the new limits, ContainerStatus reports them, and an exited container is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn container_resources_are_updated_in_place() {
    let mut bed = Bed::start().await;
    let pod = bed.pod("resize", "").await;
    let mut c = bed.container("app", &["sleep", "1000"]);
    c.linux = Some(cri::LinuxContainerConfig {
        resources: Some(cri::LinuxContainerResources {
            memory_limit_in_bytes: 64 << 20,
            ..Default::default()
        }),
        ..Default::default()
    });
    let id = bed.run(&pod, c).await;
    assert_eq!(memory_limit(&bed, &pod.0, &id), (64u64 << 20).to_string());
    let bigger = cri::LinuxContainerResources {
        memory_limit_in_bytes: 128 << 20,
        cpu_period: 100_000,
        cpu_quota: 50_000,
        ..Default::default()
    };
    bed.rt
        .update_container_resources(cri::UpdateContainerResourcesRequest {
            container_id: id.clone(),
            linux: Some(bigger.clone()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(memory_limit(&bed, &pod.0, &id), (128u64 << 20).to_string());
    let reported = bed.status(&id).await.resources.unwrap().linux.unwrap();
    assert_eq!(
        (reported.memory_limit_in_bytes, reported.cpu_quota),
        (128 << 20, 50_000)
    );
    // The pod's totals reach the pod's own cgroup.
    bed.rt
        .update_pod_sandbox_resources(cri::UpdatePodSandboxResourcesRequest {
            pod_sandbox_id: pod.0.clone(),
            resources: Some(cri::LinuxContainerResources {
                memory_limit_in_bytes: 512 << 20,
                cpu_period: 100_000,
                cpu_quota: 150_000,
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(memory_limit(&bed, &pod.0, ""), (512u64 << 20).to_string());
    let done = bed.run(&pod, bed.container("done", &["true"])).await;
    bed.wait_exit(&done).await;
    let err = bed
        .rt
        .update_container_resources(cri::UpdateContainerResourcesRequest {
            container_id: done,
            linux: Some(bigger),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err:?}");
    bed.remove_pod(&pod.0).await;
    bed.assert_no_leaks();
}

/// GetContainerEvents as kubelet's evented PLEG reads it: every change of a container and
/// of its pod, in order, each with the pod's status and its containers' statuses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn container_events_follow_each_change_with_statuses() {
    use cri::ContainerEventType::*;
    let mut bed = Bed::start().await;
    let mut stream = bed
        .rt
        .get_container_events(cri::GetEventsRequest {})
        .await
        .unwrap()
        .into_inner();
    let pod = bed.pod("events", "").await;
    let id = bed
        .run(&pod, bed.container("short", &["sh", "-c", "sleep 0.5"]))
        .await;
    bed.wait_exit(&id).await;
    bed.remove_pod(&pod.0).await;
    let mut seen = Vec::new();
    while seen.len() < 8 {
        let event = tokio::time::timeout(Duration::from_secs(10), stream.message())
            .await
            .expect("events keep coming")
            .unwrap()
            .expect("the stream stays open");
        seen.push(event);
    }
    let kinds: Vec<(bool, i32)> = seen
        .iter()
        .map(|e| (e.container_id == pod.0, e.container_event_type))
        .collect();
    let want = [
        (true, ContainerCreatedEvent as i32),
        (true, ContainerStartedEvent as i32),
        (false, ContainerCreatedEvent as i32),
        (false, ContainerStartedEvent as i32),
        (false, ContainerStoppedEvent as i32),
        (true, ContainerStoppedEvent as i32),
        (false, ContainerDeletedEvent as i32),
        (true, ContainerDeletedEvent as i32),
    ];
    assert_eq!(
        kinds, want,
        "pod (true) and container (false) events in order"
    );
    let stopped = &seen[4];
    assert_eq!(stopped.pod_sandbox_status.as_ref().unwrap().id, pod.0);
    let status = stopped
        .containers_statuses
        .iter()
        .find(|s| s.id == id)
        .unwrap();
    assert_eq!(status.state, cri::ContainerState::ContainerExited as i32);
    assert!(seen.iter().all(|e| e.created_at > 0));
    bed.assert_no_leaks();
}

/// `podctl doctor`: after podrund lost the records of a running pod (killed, records
/// deleted), it finds every kind of orphan, at start and on demand, without touching a
/// healthy pod; `--fix` removes them all, and an independent count agrees.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_finds_every_orphan_of_a_forgotten_pod_and_fix_removes_them() {
    let mut bed = Bed::start().await;
    let kinds = [
        "netns",
        "veths",
        "ip_reservations",
        "mounts",
        "cgroups",
        "processes",
        "runtime_state",
        "state_files",
    ];
    let healthy = bed.pod("healthy", "").await;
    let keep = bed
        .run(&healthy, bed.container("keep", &["sleep", "1000"]))
        .await;
    let forgotten = bed.pod("forgotten", "").await;
    let lost = bed
        .run(&forgotten, bed.container("lost", &["sleep", "1000"]))
        .await;
    let (code, clean) = bed.node.doctor(&[]);
    assert_eq!(code, Some(0), "a healthy node: {clean:#}");
    for k in kinds {
        assert_eq!(clean["found"][k], serde_json::json!([]), "{k}");
    }

    // podrund dies and the forgotten pod's records go with it.
    bed.node.kill_daemon();
    let root = bed.node.dir.join("root");
    std::fs::remove_dir_all(root.join("pods").join(&forgotten.0)).unwrap();
    std::fs::remove_dir_all(root.join("containers").join(&lost)).unwrap();
    bed.node.spawn_daemon();
    bed.rt = bed.node.client().await;

    let status = bed
        .rt
        .status(cri::StatusRequest { verbose: true })
        .await
        .unwrap()
        .into_inner();
    let at_start: serde_json::Value = serde_json::from_str(&status.info["auditAtStart"]).unwrap();
    let (code, found) = bed.node.doctor(&[]);
    assert_eq!(code, Some(1));
    let found = &found["found"];
    for k in kinds {
        let list = found[k].as_array().unwrap();
        assert!(!list.is_empty(), "no {k} found: {found:#}");
        assert_eq!(at_start[k], found[k], "{k}: the audit at start agrees");
        for item in list {
            let item = item.as_str().unwrap();
            assert!(
                !item.contains(&healthy.0) && !item.contains(&keep),
                "the healthy pod is not an orphan: {item}"
            );
        }
    }
    assert!(found["ip_reservations"][0]
        .as_str()
        .unwrap()
        .contains(&forgotten.0));

    let (code, fixed) = bed.node.doctor(&["--fix"]);
    assert_eq!(code, Some(0), "{fixed:#}");
    assert_eq!(fixed["failed"], serde_json::json!([]));
    for k in kinds {
        assert_eq!(fixed["left"][k], serde_json::json!([]), "{k} left");
    }
    // The healthy pod still works; once it is removed, nothing at all is left.
    assert_eq!(bed.out(&keep, &["echo", "alive"]).await.trim(), "alive");
    bed.remove_pod(&healthy.0).await;
    eprintln!("{found:#}");
    bed.assert_no_leaks();
}

/// A reboot: /run is wiped (netns pins, podrund's state dir, the OCI runtime's state), every
/// process and cgroup is gone, the records and IP reservations on disk remain. podrund's
/// start releases the pod's IP with the cached CNI result, reports the pod NotReady with the
/// reason and its container exited; doctor finds nothing; Remove cleans up the rest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_reboot_podrund_releases_the_ips_of_pods_that_died_with_it() {
    let mut bed = Bed::start().await;
    let pod = bed.pod("rebooted", "").await;
    let c = bed
        .run(&pod, bed.container("app", &["sleep", "1000"]))
        .await;
    let ipam = bed.node.ipam_dir.clone();
    assert_eq!(podrun_tests::ip_reservations(&ipam).len(), 1);
    let (_, info) = podrun_tests::pod_info(&mut bed.rt, &pod.0).await.unwrap();
    let pause = info["pausePid"].as_i64().unwrap() as i32;

    bed.node.kill_daemon();
    let state = bed.node.dir.join("state");
    let mut pids = podrun_tests::processes_mentioning(&state.display().to_string());
    pids.push(pause);
    for pid in pids {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    for h in podrun_tests::cgroup_hierarchies() {
        let parent = h.join(bed.node.cgroup_parent.trim_start_matches('/'));
        podrun_tests::remove_cgroup_tree(&parent.join(&pod.0));
    }
    let mut mounts: Vec<String> = std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter_map(|l| l.split(' ').nth(4).map(str::to_owned))
        .filter(|m| m.starts_with(&state.display().to_string()) || m.contains(&pod.0))
        .collect();
    mounts.sort_by_key(|m| std::cmp::Reverse(m.len()));
    for m in mounts {
        nix::mount::umount2(m.as_str(), nix::mount::MntFlags::MNT_DETACH).unwrap();
    }
    std::fs::remove_file(format!("/run/netns/podrun-{}", pod.0)).unwrap();
    std::fs::remove_dir_all(&state).unwrap();
    for root in ["/run/crun", "/run/runc"] {
        let _ = std::fs::remove_dir_all(std::path::Path::new(root).join(&c));
    }

    // (A pod's pause, the init of its pid namespace, takes a while to die.)
    podrun_tests::wait_until(Duration::from_secs(30), || {
        !std::path::Path::new(&format!("/proc/{pause}")).exists()
    })
    .expect("the pause process dies");
    bed.node.spawn_daemon();
    bed.rt = bed.node.client().await;
    let status = bed
        .rt
        .pod_sandbox_status(cri::PodSandboxStatusRequest {
            pod_sandbox_id: pod.0.clone(),
            verbose: true,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        status.status.unwrap().state,
        cri::PodSandboxState::SandboxNotready as i32
    );
    // podrund answers once it recovered, and released the dead pod.
    assert_eq!(
        podrun_tests::ip_reservations(&ipam),
        Vec::<String>::new(),
        "the IP is released at start; podrund's log:\n{}",
        bed.node.log()
    );
    let info: serde_json::Value = serde_json::from_str(&status.info["info"]).unwrap();
    let reason = info["notReadyReason"].as_str().unwrap();
    assert!(reason.contains("reboot"), "{reason}");
    assert_eq!(
        bed.status(&c).await.state,
        cri::ContainerState::ContainerExited as i32
    );
    let doctor = bed.node.podctl(&["doctor"]);
    assert!(doctor.contains("the node is clean"), "{doctor}");
    bed.remove_pod(&pod.0).await;
    bed.assert_no_leaks();
}

/// One pod's life as kubelet drives it, up to the first failure.
async fn pod_life(bed: &mut Bed, name: &str) -> Result<(), tonic::Status> {
    let mut config = bed.node.pod_config(name);
    config.log_directory = bed.node.dir.join("logs").join(name).display().to_string();
    let pod = bed
        .rt
        .run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(config.clone()),
            runtime_handler: String::new(),
        })
        .await?
        .into_inner()
        .pod_sandbox_id;
    bed.node.remember(&pod);
    let c = bed
        .rt
        .create_container(cri::CreateContainerRequest {
            pod_sandbox_id: pod.clone(),
            config: Some(bed.container("app", &["sleep", "1000"])),
            sandbox_config: Some(config),
        })
        .await?
        .into_inner()
        .container_id;
    bed.containers.push(c.clone());
    bed.rt
        .start_container(cri::StartContainerRequest { container_id: c })
        .await?;
    let id = pod.clone();
    bed.rt
        .stop_pod_sandbox(cri::StopPodSandboxRequest { pod_sandbox_id: id })
        .await?;
    bed.rt
        .remove_pod_sandbox(cri::RemovePodSandboxRequest {
            pod_sandbox_id: pod,
        })
        .await?;
    Ok(())
}

/// podrund killed at each named step of a pod's life: after a restart the pod is fully
/// there (Ready pods are Ready) or fully gone, doctor finds no orphan, and Stop and Remove,
/// as kubelet then calls them, leave nothing behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_at_any_step_leaves_each_pod_fully_there_or_fully_gone() {
    let mut bed = Bed::start().await;
    for (n, point) in podrun_runtime::crash::POINTS.iter().enumerate() {
        eprintln!("crash point {point}");
        bed.node.kill_daemon();
        bed.node.extra_env = vec![("PODRUN_CRASH_AT".into(), point.to_string())];
        bed.node.spawn_daemon();
        bed.rt = bed.node.client().await;
        let crashed = pod_life(&mut bed, &format!("crash{n}")).await;
        assert!(crashed.is_err(), "{point}: podrund did not crash");
        bed.node.kill_daemon();
        assert!(
            bed.node.log().contains(&format!("point=\"{point}\""))
                || bed.node.log().contains(point),
            "{point}: not reached"
        );
        bed.node.extra_env.clear();
        bed.node.spawn_daemon();
        bed.rt = bed.node.client().await;

        let (code, audit) = bed.node.doctor(&[]);
        assert_eq!(
            code,
            Some(0),
            "{point}: doctor after the restart: {audit:#}"
        );
        let pods = podrun_tests::list_pods(&mut bed.rt).await;
        for p in &pods {
            if p.state == cri::PodSandboxState::SandboxReady as i32 {
                // Fully there: its network and pause are up.
                let (status, _) = podrun_tests::pod_info(&mut bed.rt, &p.id).await.unwrap();
                assert!(!status.network.unwrap().ip.is_empty(), "{point}");
            }
            bed.remove_pod(&p.id).await;
        }
        let left = bed.container_leftovers();
        assert!(
            left.is_empty(),
            "{point}: left behind:\n{}",
            left.join("\n")
        );
    }
}

/// SIGKILL of a pod's shim, or of its pause: the pod turns NotReady, its container is
/// reported exited with a reason, and Stop and Remove still clean everything up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_shim_or_pause_makes_the_pod_not_ready_and_it_still_cleans_up() {
    let mut bed = Bed::start().await;
    for victim in ["shimPid", "pausePid"] {
        let pod = bed.pod(&format!("kill-{}", &victim[..4]), "").await;
        let c = bed
            .run(&pod, bed.container("app", &["sleep", "1000"]))
            .await;
        let (_, info) = podrun_tests::pod_info(&mut bed.rt, &pod.0).await.unwrap();
        let pid = info[victim].as_i64().unwrap() as i32;
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
        let mut state = 0;
        for _ in 0..100 {
            let (status, _) = podrun_tests::pod_info(&mut bed.rt, &pod.0).await.unwrap();
            state = status.state;
            if state == cri::PodSandboxState::SandboxNotready as i32 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(
            state,
            cri::PodSandboxState::SandboxNotready as i32,
            "{victim}"
        );
        let mut status = bed.status(&c).await;
        for _ in 0..100 {
            if status.state == cri::ContainerState::ContainerExited as i32 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            status = bed.status(&c).await;
        }
        assert_eq!(
            status.state,
            cri::ContainerState::ContainerExited as i32,
            "{victim}: {status:?}"
        );
        assert!(!status.reason.is_empty(), "{victim}: {status:?}");
        bed.remove_pod(&pod.0).await;
    }
    bed.assert_no_leaks();
}

/// crun behind a script that fails `create`, `start` or `delete` while the file
/// `fail-<command>` is next to it, reporting as crun and runc do: a JSON line in the --log
/// file.
const FAILING_RUNTIME: &str = r#"#!/bin/sh
d=$(dirname "$0"); log=/dev/null; prev=
for a in "$@"; do
  [ "$prev" = --log ] && log=$a
  case "$a" in create|start|delete)
    if [ -e "$d/fail-$a" ]; then
      printf '{"level":"error","msg":"injected failure of %s"}\n' "$a" >> "$log"; exit 1
    fi; break;;
  esac
  prev=$a
done
exec crun "$@"
"#;

/// An OCI runtime whose create, start or delete fails (crun behind a script of the test's,
/// as a runtime handler): each RPC reports the runtime's own message, nothing is left half
/// made, and once the runtime works again Remove cleans up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oci_runtime_that_fails_create_start_or_delete_leaves_nothing_half_made() {
    let dir = std::path::PathBuf::from(format!(
        "/tmp/podrun-failing-runtime-{}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let script = dir.join("crun-failing");
    std::fs::write(&script, FAILING_RUNTIME).unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let handler = format!("failing={}", script.display());
    let mut bed = Bed::start_with(&["--runtime-handler", &handler]).await;
    let pod = bed.pod("flaky", "failing").await;
    let create = |bed: &Bed, name: &str| cri::CreateContainerRequest {
        pod_sandbox_id: pod.0.clone(),
        config: Some(bed.container(name, &["sleep", "1000"])),
        sandbox_config: Some(pod.1.clone()),
    };
    let containers = |bed: &mut Bed| {
        let mut rt = bed.rt.clone();
        async move {
            rt.list_containers(cri::ListContainersRequest::default())
                .await
                .unwrap()
                .into_inner()
                .containers
        }
    };

    std::fs::write(dir.join("fail-create"), "").unwrap();
    let err = bed
        .rt
        .create_container(create(&bed, "a"))
        .await
        .unwrap_err();
    assert!(
        err.message().contains("injected failure of create"),
        "{err:?}"
    );
    assert!(
        containers(&mut bed).await.is_empty(),
        "a failed create is rolled back"
    );
    let records = bed.node.dir.join("root/containers");
    assert_eq!(std::fs::read_dir(&records).unwrap().count(), 0, "no record");
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mounts.contains(&bed.node.dir.join("state/containers").display().to_string()),
        "no rootfs left mounted"
    );
    std::fs::remove_file(dir.join("fail-create")).unwrap();

    std::fs::write(dir.join("fail-start"), "").unwrap();
    let b = bed
        .rt
        .create_container(create(&bed, "b"))
        .await
        .unwrap()
        .into_inner()
        .container_id;
    bed.containers.push(b.clone());
    let err = bed
        .rt
        .start_container(cri::StartContainerRequest {
            container_id: b.clone(),
        })
        .await
        .unwrap_err();
    assert!(
        err.message().contains("injected failure of start"),
        "{err:?}"
    );
    assert_ne!(
        bed.status(&b).await.state,
        cri::ContainerState::ContainerRunning as i32
    );
    std::fs::remove_file(dir.join("fail-start")).unwrap();

    std::fs::write(dir.join("fail-delete"), "").unwrap();
    let err = bed
        .rt
        .remove_container(cri::RemoveContainerRequest {
            container_id: b.clone(),
        })
        .await
        .unwrap_err();
    assert!(
        err.message().contains("injected failure of delete"),
        "{err:?}"
    );
    std::fs::remove_file(dir.join("fail-delete")).unwrap();
    bed.rt
        .remove_container(cri::RemoveContainerRequest {
            container_id: b.clone(),
        })
        .await
        .expect("Remove once delete works");
    bed.remove_pod(&pod.0).await;
    bed.assert_no_leaks();
    let _ = std::fs::remove_dir_all(&dir);
}

/// The disk holding the pod's logs fills up: the container keeps running (its output is
/// dropped, never held up), the log holds only whole records, and logging resumes once
/// there is room.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_log_disk_drops_output_without_stopping_the_container() {
    let mut bed = Bed::start().await;
    let disk = podrun_tests::SmallDisk::mount("log-disk", "1m");
    std::fs::create_dir_all(bed.node.dir.join("logs")).unwrap();
    std::os::unix::fs::symlink(&disk.path, bed.node.dir.join("logs/chatty")).unwrap();
    let pod = bed.pod("chatty", "").await;
    let script = "i=0; while :; do echo \"line $i\"; i=$((i+1)); sleep 0.01; done";
    let id = bed
        .run(&pod, bed.container("talker", &["sh", "-c", script]))
        .await;
    let log = disk.path.join("talker.log");
    let size = || std::fs::metadata(&log).map(|m| m.len()).unwrap_or(0);
    podrun_tests::wait_until(Duration::from_secs(10), || size() > 0).unwrap();

    let filler = disk.fill();
    // The log's last page may still take records; after that the file stops growing.
    let mut full = size();
    for _ in 0..20 {
        std::thread::sleep(Duration::from_millis(1500));
        if std::mem::replace(&mut full, size()) == full {
            break;
        }
    }
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(size(), full, "nothing is written while the disk is full");
    assert_eq!(
        bed.status(&id).await.state,
        cri::ContainerState::ContainerRunning as i32,
        "the container runs on"
    );

    std::fs::remove_file(&filler).unwrap();
    podrun_tests::wait_until(Duration::from_secs(10), || size() > full + 200).unwrap();
    let text = std::fs::read_to_string(&log).unwrap();
    let numbers: Vec<u64> = text
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.splitn(4, ' ').collect();
            assert!(
                f.len() == 4 && f[0].len() == 30 && f[1] == "stdout" && f[2] == "F",
                "a broken record: {l:?}"
            );
            let n = f[3].strip_prefix("line ");
            n.and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("a broken record: {l:?}"))
        })
        .collect();
    assert!(numbers.windows(2).all(|w| w[0] < w[1]), "records in order");
    let gap = numbers.windows(2).map(|w| w[1] - w[0]).max().unwrap();
    assert!(
        gap > 20,
        "output made while the disk was full is dropped, not held back (largest gap {gap})"
    );
    bed.remove_pod(&pod.0).await;
    bed.assert_no_leaks();
}

/// podrund's Prometheus endpoint (`--metrics-address`), scraped and parsed as Prometheus
/// would: CRI requests by method and code, CNI calls by plugin, pods and containers by
/// state, shim starts, image pulls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_metrics_endpoint_counts_requests_plugins_pods_and_pulls() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let address = format!("127.0.0.1:{port}");
    let mut bed = Bed::start_with(&["--metrics-address", &address]).await;
    let pod = bed.pod("measured", "").await;
    let id = bed
        .run(&pod, bed.container("sleeper", &["sleep", "1000"]))
        .await;
    let missing = cri::PodSandboxStatusRequest {
        pod_sandbox_id: "no-such-pod".into(),
        verbose: false,
    };
    assert!(bed.rt.pod_sandbox_status(missing).await.is_err());

    let scrape = || {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(&address).unwrap();
        write!(s, "GET /metrics HTTP/1.0\r\nHost: {address}\r\n\r\n").unwrap();
        let mut response = String::new();
        s.read_to_string(&mut response).unwrap();
        let (head, body) = response.split_once("\r\n\r\n").unwrap();
        assert!(
            head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200"),
            "{head}"
        );
        assert!(head.to_lowercase().contains("openmetrics-text"), "{head}");
        // name{labels} value, as Prometheus' text parser reads it.
        let mut samples = std::collections::BTreeMap::new();
        for line in body
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
        {
            let (series, value) = line.rsplit_once(' ').expect(line);
            let value: f64 = value.parse().unwrap_or_else(|_| panic!("{line}"));
            samples.insert(series.to_owned(), value);
        }
        assert!(
            body.trim_end().ends_with("# EOF"),
            "OpenMetrics ends with # EOF"
        );
        samples
    };
    let m = scrape();
    let get = |series: &str| {
        *m.get(series)
            .unwrap_or_else(|| panic!("no {series} in {:#?}", m.keys().collect::<Vec<_>>()))
    };
    assert_eq!(
        get(r#"podrun_cri_requests_total{method="RunPodSandbox",code="OK"}"#),
        1.0
    );
    assert_eq!(
        get(r#"podrun_cri_requests_total{method="PodSandboxStatus",code="NotFound"}"#),
        1.0
    );
    assert_eq!(
        get(r#"podrun_cri_request_duration_seconds_count{method="RunPodSandbox",code="OK"}"#),
        1.0
    );
    assert!(
        get(r#"podrun_cri_request_duration_seconds_sum{method="RunPodSandbox",code="OK"}"#) > 0.0
    );
    assert_eq!(
        get(r#"podrun_cni_duration_seconds_count{command="ADD",plugin="bridge"}"#),
        1.0
    );
    assert_eq!(
        get(r#"podrun_cni_duration_seconds_count{command="ADD",plugin="portmap"}"#),
        1.0
    );
    assert_eq!(get(r#"podrun_pods{state="ready"}"#), 1.0);
    assert_eq!(get(r#"podrun_containers{state="running"}"#), 1.0);
    assert_eq!(get("podrun_shim_starts_total"), 1.0);
    assert_eq!(get(r#"podrun_image_pulls_total{outcome="ok"}"#), 1.0);
    assert!(
        get("podrun_image_pull_bytes_total") > 100_000.0,
        "busybox's layer was fetched"
    );
    assert_eq!(get(r#"podrun_leak_audit_findings{kind="netns"}"#), 0.0);

    bed.remove_pod(&pod.0).await;
    let _ = id;
    let m = scrape();
    assert_eq!(m[r#"podrun_pods{state="ready"}"#], 0.0);
    assert_eq!(m[r#"podrun_containers{state="running"}"#], 0.0);
    assert_eq!(
        m[r#"podrun_cni_duration_seconds_count{command="DEL",plugin="bridge"}"#],
        1.0
    );
    bed.assert_no_leaks();
}
