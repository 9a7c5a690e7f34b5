//! What containerd 2 and CRI-O offer beyond the basics, through podrund with real parts: CDI
//! devices from spec files the test writes (a real device node under another name, a mount,
//! env, a hook the OCI runtime runs, groups), resolved all-or-nothing; image volumes from an
//! image in the local registry, read-only, kept from removal while in use; checkpointing
//! refused with what the host lacks; NRI with a plugin that sees the lifecycle and adjusts
//! containers.

use std::path::{Path, PathBuf};

use podrun_proto::cri;
use podrun_tests::registry::{image, layer, Compression, LayerBuilder};
use podrun_tests::workload::{pull, Bed};

/// CDI spec dirs in rising priority, with a vendor's specs in each.
struct CdiDirs {
    _root: tempfile::TempDir,
    etc: PathBuf,
    run: PathBuf,
    data: PathBuf,
    hook_ran: PathBuf,
}

fn cdi_dirs() -> CdiDirs {
    let root = tempfile::tempdir().unwrap();
    let (etc, run, data) = (
        root.path().join("etc"),
        root.path().join("run"),
        root.path().join("data"),
    );
    for d in [&etc, &run, &data] {
        std::fs::create_dir_all(d).unwrap();
    }
    std::fs::write(data.join("file"), "from the host\n").unwrap();
    let hook_ran = root.path().join("hook-ran");
    // In /etc/cdi: "zero" (overridden below) and "groups".
    let etc_spec = serde_json::json!({
        "cdiVersion": "0.7.0", "kind": "podrun.test/null",
        "devices": [
            {"name": "zero", "containerEdits": {"env": ["WHICH=etc"],
                "deviceNodes": [{"path": "/dev/podrun-null", "hostPath": "/dev/null"}]}},
            {"name": "groups", "containerEdits": {"additionalGids": [4242]}},
        ],
    });
    std::fs::write(etc.join("null.json"), etc_spec.to_string()).unwrap();
    // In /var/run/cdi, as YAML: "zero" again, which wins.
    let run_spec = format!(
        "cdiVersion: 0.5.0
kind: podrun.test/null
containerEdits:
  env: [VENDOR=podrun-test]
devices:
- name: zero
  containerEdits:
    env: [WHICH=run]
    deviceNodes: [{{path: /dev/podrun-null, hostPath: /dev/null, permissions: rw}}]
    mounts: [{{hostPath: {data}, containerPath: /cdi-data, options: [rbind, ro]}}]
    hooks: [{{hookName: createRuntime, path: /bin/sh, args: [sh, -c, 'echo $CDI_HOOK > {ran}'], env: [CDI_HOOK=ran]}}]
",
        data = data.display(),
        ran = hook_ran.display()
    );
    std::fs::write(run.join("null.yaml"), run_spec).unwrap();
    CdiDirs {
        _root: root,
        etc,
        run,
        data,
        hook_ran,
    }
}

fn arg(p: &Path) -> &str {
    p.to_str().unwrap()
}

async fn cdi_devices(handler: &str) {
    let dirs = cdi_dirs();
    let flags = [
        "--cdi-spec-dir",
        arg(&dirs.etc),
        "--cdi-spec-dir",
        arg(&dirs.run),
    ];
    let mut bed = Bed::start_with(&flags).await;
    let pod = bed.pod("cdi", handler).await;

    let mut c = bed.container("gpu", &["sleep", "1000"]);
    c.cdi_devices = vec![cri::CdiDevice {
        name: "podrun.test/null=zero".into(),
    }];
    c.annotations
        .insert("cdi.k8s.io/test".into(), "podrun.test/null=groups".into());
    let id = bed.run(&pod, c).await;
    let out = bed
        .out(
            &id,
            &["sh", "-c", "echo x > /dev/podrun-null && echo wrote; echo $WHICH $VENDOR; cat /cdi-data/file; id -G"],
        )
        .await;
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines[0], "wrote",
        "the device node works (its cgroup rule allows it): {out}"
    );
    assert_eq!(
        lines[1], "run podrun-test",
        "the later dir's device, with its spec's env: {out}"
    );
    assert_eq!(lines[2], "from the host", "the mount: {out}");
    assert!(lines[3].split(' ').any(|g| g == "4242"), "the group: {out}");
    let ran = std::fs::read_to_string(&dirs.hook_ran).expect("the createRuntime hook ran");
    assert_eq!(ran.trim(), "ran");
    let written = bed
        .exec(&id, &["sh", "-c", "echo x > /cdi-data/new"], 10)
        .await
        .unwrap();
    assert_ne!(written.exit_code, 0, "mounted read-only");
    assert!(!dirs.data.join("new").exists());

    // Without CDI the node is not there.
    let plain = bed
        .run(&pod, bed.container("plain", &["sleep", "1000"]))
        .await;
    let ls = bed
        .exec(&plain, &["ls", "/dev/podrun-null"], 10)
        .await
        .unwrap();
    assert_ne!(ls.exit_code, 0);

    // An unknown device is refused, naming it, and nothing is made.
    let before = podrun_tests::list_containers(&mut bed.rt).await.len();
    let mut unknown = bed.container("unknown", &["true"]);
    unknown.cdi_devices = vec![
        cri::CdiDevice {
            name: "podrun.test/null=zero".into(),
        },
        cri::CdiDevice {
            name: "podrun.test/null=nope".into(),
        },
    ];
    let err = create_error(&mut bed, &pod, unknown, "an unknown CDI device").await;
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("CDI_devices"), "{}", err.message());
    assert!(
        err.message().contains("podrun.test/null=nope"),
        "{}",
        err.message()
    );
    assert!(
        !err.message().contains("=zero"),
        "only the unknown one: {}",
        err.message()
    );
    let after = podrun_tests::list_containers(&mut bed.rt).await.len();
    assert_eq!(after, before, "a refused container was made");
}

#[tokio::test]
async fn cdi_devices_reach_containers_with_crun() {
    cdi_devices("crun").await;
}

#[tokio::test]
async fn cdi_devices_reach_containers_with_runc() {
    cdi_devices("runc").await;
}

/// A data image: two layers, the second overriding a file of the first, a script, and
/// symlinks that point out of the image.
fn data_image() -> podrun_tests::registry::TestImage {
    let first = LayerBuilder::default()
        .dir("models")
        .file("models/weights", 0o644, b"v1\n")
        .file("tool.sh", 0o755, b"#!/bin/sh\necho tool-ran\n")
        .tar();
    let second = LayerBuilder::default()
        .file("models/weights", 0o644, b"v2\n")
        .symlink("escape", "/etc")
        .symlink("up", "../../../..")
        .tar();
    image(
        vec![
            layer(first, Compression::Gzip),
            layer(second, Compression::Gzip),
        ],
        serde_json::json!({}),
    )
}

fn image_mount(path: &str, image: &str, sub: &str) -> cri::Mount {
    cri::Mount {
        container_path: path.into(),
        readonly: true,
        image: Some(cri::ImageSpec {
            image: image.into(),
            ..Default::default()
        }),
        image_sub_path: sub.into(),
        ..Default::default()
    }
}

/// CreateContainer with `config` in `pod`, which must fail (`what` says why it should).
async fn create_error(
    bed: &mut Bed,
    pod: &(String, cri::PodSandboxConfig),
    config: cri::ContainerConfig,
    what: &str,
) -> tonic::Status {
    let request = cri::CreateContainerRequest {
        pod_sandbox_id: pod.0.clone(),
        config: Some(config),
        sandbox_config: Some(pod.1.clone()),
    };
    bed.rt.create_container(request).await.expect_err(what)
}

async fn refused(
    bed: &mut Bed,
    pod: &(String, cri::PodSandboxConfig),
    m: cri::Mount,
    code: tonic::Code,
    field: &str,
) {
    let mut c = bed.container("refused", &["true"]);
    c.mounts = vec![m];
    let err = create_error(bed, pod, c, field).await;
    assert_eq!(err.code(), code, "{field}: {err:?}");
    assert!(err.message().contains(field), "{field}: {}", err.message());
}

#[tokio::test]
async fn image_volumes_mount_an_image_read_only_and_keep_it_while_used() {
    let mut bed = Bed::start().await;
    bed.registry.push("data:1", &data_image()).await;
    let data = format!("{}/data:1", bed.registry.addr);
    pull(&bed.node, &data).await;
    let pod = bed.pod("imagevol", "").await;

    let mut c = bed.container("reader", &["sleep", "1000"]);
    c.mounts = vec![
        image_mount("/vol", &data, ""),
        image_mount("/models", &data, "models"),
    ];
    let id = bed.run(&pod, c).await;
    let out = bed
        .out(
            &id,
            &[
                "sh",
                "-c",
                "cat /vol/models/weights; /vol/tool.sh; ls /models; cat /models/weights",
            ],
        )
        .await;
    assert_eq!(
        out, "v2\ntool-ran\nweights\nv2\n",
        "the image's layers, in order, executable"
    );
    let touched = bed.exec(&id, &["touch", "/vol/new"], 10).await.unwrap();
    assert_ne!(touched.exit_code, 0, "an image volume is read-only");
    let status = bed.status(&id).await;
    let shown = status
        .mounts
        .iter()
        .find(|m| m.container_path == "/vol")
        .unwrap();
    assert_eq!(
        shown.image.as_ref().map(|i| i.image.as_str()),
        Some(data.as_str())
    );

    // In use: RemoveImage is refused while the container exists.
    let remove = cri::RemoveImageRequest {
        image: Some(cri::ImageSpec {
            image: data.clone(),
            ..Default::default()
        }),
    };
    let mut images = podrun_proto::client::image(&bed.node.socket).await.unwrap();
    let err = images
        .remove_image(remove.clone())
        .await
        .expect_err("in use");
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err:?}");
    assert!(err.message().contains(&id), "{}", err.message());

    // What cannot be mounted is refused: out of the image, through a symlink or `..`; a file.
    use tonic::Code::*;
    for sub in ["escape", "up", "../etc", "tool.sh"] {
        let m = image_mount("/v", &data, sub);
        refused(&mut bed, &pod, m, InvalidArgument, "image_sub_path").await;
    }
    let not_pulled = format!("{}/nope:1", bed.registry.addr);
    refused(
        &mut bed,
        &pod,
        image_mount("/v", &not_pulled, ""),
        NotFound,
        "nope:1",
    )
    .await;
    let mut writable = image_mount("/v", &data, "");
    writable.readonly = false;
    refused(&mut bed, &pod, writable, InvalidArgument, "readonly").await;

    // Gone with its container: the mounts, then the image can go.
    bed.remove_pod(&pod.0).await;
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mountinfo.contains("image-volumes"),
        "an image volume mount was left"
    );
    images
        .remove_image(remove)
        .await
        .expect("removable once unused");
    bed.assert_no_leaks();
}

/// What this host lacks for checkpointing with `handler`, found out apart from podrund: None
/// when it has all of it.
fn criu_missing(handler: &str) -> Option<&'static str> {
    let crun = std::process::Command::new("crun")
        .arg("--version")
        .output()
        .unwrap();
    if handler == "crun" && !String::from_utf8_lossy(&crun.stdout).contains("+CRIU") {
        return Some("+CRIU");
    }
    let check = std::process::Command::new("criu").arg("check").output();
    match check {
        Err(_) => Some("criu is not installed"),
        Ok(o) if !o.status.success() => Some("`criu check` fails on this kernel"),
        Ok(_) => None,
    }
}

async fn checkpoint(handler: &str) {
    let mut bed = Bed::start().await;
    let pod = bed.pod("ckpt", handler).await;
    let id = bed
        .run(&pod, bed.container("counter", &["sleep", "1000"]))
        .await;
    let dir = tempfile::tempdir().unwrap();
    let location = dir.path().join("checkpoint.tar");
    let request = |location: &str| cri::CheckpointContainerRequest {
        container_id: id.clone(),
        location: location.into(),
        timeout: 30,
    };
    let err = bed
        .rt
        .checkpoint_container(request("relative.tar"))
        .await
        .expect_err("a relative location");
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("location"), "{}", err.message());

    let err = bed
        .rt
        .checkpoint_container(request(arg(&location)))
        .await
        .expect_err("checkpointing is not possible here, or not built");
    match criu_missing(handler) {
        Some(missing) => {
            assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err:?}");
            assert!(
                err.message().contains(missing),
                "{missing}: {}",
                err.message()
            );
        }
        None => assert_eq!(err.code(), tonic::Code::Unimplemented, "{err:?}"),
    }
    assert!(!location.exists(), "no archive is left half-written");
    assert_eq!(
        bed.status(&id).await.state,
        cri::ContainerState::ContainerRunning as i32,
        "the container runs on"
    );

    // Restoring: CreateContainer whose image is an archive on disk.
    std::fs::write(&location, b"not really a checkpoint").unwrap();
    let mut restore = bed.container("restored", &["true"]);
    restore.image = Some(cri::ImageSpec {
        image: arg(&location).into(),
        ..Default::default()
    });
    let err = create_error(
        &mut bed,
        &pod,
        restore,
        "restoring is not possible here, or not built",
    )
    .await;
    if let Some(missing) = criu_missing(handler) {
        assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err:?}");
        assert!(
            err.message().contains("checkpoint archive"),
            "{}",
            err.message()
        );
        assert!(
            err.message().contains(missing),
            "{missing}: {}",
            err.message()
        );
    }

    // Only a running container can be checkpointed.
    bed.rt
        .stop_container(cri::StopContainerRequest {
            container_id: id.clone(),
            timeout: 0,
        })
        .await
        .unwrap();
    let err = bed
        .rt
        .checkpoint_container(request(arg(&location)))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err:?}");
    assert!(
        err.message().contains("only running containers"),
        "{}",
        err.message()
    );
}

#[tokio::test]
async fn checkpoint_and_restore_say_what_the_host_lacks_with_crun() {
    checkpoint("crun").await;
}

#[tokio::test]
async fn checkpoint_and_restore_say_what_the_host_lacks_with_runc() {
    checkpoint("runc").await;
}

/// The test plugin's socket, event log and a directory it mounts into containers.
struct NriFiles {
    _dir: tempfile::TempDir,
    socket: PathBuf,
    log: PathBuf,
    shared: PathBuf,
}

impl NriFiles {
    fn new() -> NriFiles {
        let dir = tempfile::tempdir().unwrap();
        let shared = dir.path().join("shared");
        std::fs::create_dir_all(&shared).unwrap();
        NriFiles {
            socket: dir.path().join("nri/nri.sock"),
            log: dir.path().join("events.log"),
            shared,
            _dir: dir,
        }
    }

    /// The test plugin, connecting to the socket (`more`: its index, and `stall`).
    fn plugin(&self, more: &[&str]) -> std::process::Child {
        std::process::Command::new(podrun_tests::bin_dir().join("podrun-nri-test-plugin"))
            .args([arg(&self.socket), arg(&self.log), arg(&self.shared)])
            .args(more)
            .spawn()
            .unwrap()
    }
}

/// Waits until the plugin's log has `line`; the log.
async fn plugin_log_has(log: &Path, line: &str) -> String {
    for _ in 0..100 {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if text.lines().any(|l| l == line) {
            return text;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!(
        "the NRI plugin never logged {line:?}: {:?}",
        std::fs::read_to_string(log)
    );
}

/// The memory limit of the cgroup a process is in (cgroup v1, as on this host).
fn memory_limit(pid: u64) -> String {
    let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    let path = cgroups
        .lines()
        .find_map(|l| l.split_once(":memory:").map(|(_, p)| p.to_owned()))
        .expect("a v1 memory cgroup");
    let file = format!("/sys/fs/cgroup/memory{path}/memory.limit_in_bytes");
    std::fs::read_to_string(file).unwrap().trim().to_owned()
}

#[tokio::test]
async fn an_nri_plugin_sees_the_lifecycle_in_order_and_adjusts_containers() {
    let nri = NriFiles::new();
    std::fs::write(nri.shared.join("hello"), "from the plugin's dir\n").unwrap();
    let mut bed = Bed::start_with(&["--nri-socket", arg(&nri.socket)]).await;
    let early = bed.pod("early", "").await;
    let mut plugin = nri.plugin(&[]);
    let log = nri.log.as_path();
    // Registered, configured, and told of the pod that was there before it.
    plugin_log_has(log, "synchronize pods=1 containers=0").await;

    let pod = bed.pod("nri", "").await;
    let id = bed
        .run(&pod, bed.container("adjusted", &["sleep", "1000"]))
        .await;
    let out = bed
        .out(&id, &["sh", "-c", "echo $NRI_PLUGIN; cat /nri/hello"])
        .await;
    assert_eq!(
        out, "10-adjusted\nfrom the plugin's dir\n",
        "env and mount from the plugin"
    );
    let (_, info) = bed.status_and_info(&id).await;
    assert_eq!(
        memory_limit(info["pid"].as_u64().unwrap()),
        (96u64 << 20).to_string()
    );
    let config: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(
            bed.node
                .dir
                .join("state/containers")
                .join(&id)
                .join("config.json"),
        )
        .unwrap(),
    )
    .unwrap();
    assert_eq!(config["annotations"]["nri.test/plugin"], "10");

    // A container that exits on its own is seen to stop before anyone asks.
    let quick = bed
        .run(&pod, bed.container("quick", &["sh", "-c", "exit 3"]))
        .await;
    bed.wait_exit(&quick).await;
    plugin_log_has(log, "STOP_CONTAINER nri quick").await;

    bed.rt
        .stop_container(cri::StopContainerRequest {
            container_id: id.clone(),
            timeout: 0,
        })
        .await
        .unwrap();
    bed.rt
        .remove_container(cri::RemoveContainerRequest {
            container_id: id.clone(),
        })
        .await
        .unwrap();
    bed.remove_pod(&pod.0).await;
    let text = plugin_log_has(log, "REMOVE_POD_SANDBOX nri").await;
    let of_adjusted: Vec<&str> = text
        .lines()
        .filter(|l| {
            l.ends_with(" nri adjusted")
                || *l == "RUN_POD_SANDBOX nri"
                || l.ends_with("POD_SANDBOX nri")
        })
        .collect();
    assert_eq!(
        of_adjusted,
        [
            "RUN_POD_SANDBOX nri",
            "CREATE_CONTAINER nri adjusted",
            "START_CONTAINER nri adjusted",
            "STOP_CONTAINER nri adjusted",
            "REMOVE_CONTAINER nri adjusted",
            "STOP_POD_SANDBOX nri",
            "REMOVE_POD_SANDBOX nri",
        ],
        "{text}"
    );

    // A plugin that goes away is dropped; containers are made without it.
    plugin.kill().unwrap();
    plugin.wait().unwrap();
    let id = bed
        .run(
            &early,
            bed.container(
                "after",
                &["sh", "-c", "echo ${NRI_PLUGIN:-none}; sleep 1000"],
            ),
        )
        .await;
    assert_eq!(
        bed.out(&id, &["sh", "-c", "echo ${NRI_PLUGIN:-none}"])
            .await,
        "none\n"
    );
}

#[tokio::test]
async fn an_nri_plugin_that_hangs_is_dropped_and_holds_nothing_up() {
    let nri = NriFiles::new();
    let mut bed = Bed::start_with(&["--nri-socket", arg(&nri.socket)]).await;
    let mut plugin = nri.plugin(&["20", "stall"]);
    let log = nri.log.as_path();
    plugin_log_has(log, "synchronize pods=0 containers=0").await;
    let pod = bed.pod("hung", "").await;
    // The plugin is asked, never answers: after the request timeout (2 s) it is dropped and
    // the container is made without its adjustment.
    let started = std::time::Instant::now();
    let id = bed
        .run(&pod, bed.container("first", &["sleep", "1000"]))
        .await;
    let took = started.elapsed();
    plugin_log_has(log, "CREATE_CONTAINER hung first").await;
    assert!(
        took < std::time::Duration::from_secs(10),
        "CreateContainer took {took:?}"
    );
    assert_eq!(
        bed.out(&id, &["sh", "-c", "echo ${NRI_PLUGIN:-none}"])
            .await,
        "none\n"
    );
    // Dropped: the next container is not sent to it, and the pod's teardown is not held up.
    let id = bed
        .run(&pod, bed.container("second", &["sleep", "1000"]))
        .await;
    assert_eq!(
        bed.out(&id, &["sh", "-c", "echo ${NRI_PLUGIN:-none}"])
            .await,
        "none\n"
    );
    let text = std::fs::read_to_string(log).unwrap();
    assert!(
        !text.contains("second"),
        "a dropped plugin was asked again: {text}"
    );
    bed.remove_pod(&pod.0).await;
    plugin.kill().unwrap();
    plugin.wait().unwrap();
}
