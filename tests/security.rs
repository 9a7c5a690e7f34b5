//! Security contexts as kubelet and critest send them, against real runtimes on this host:
//! privileged and ALL-capability containers on a host whose own capability set lacks one,
//! masked and read-only paths, seccomp Localhost profiles (good, missing, invalid), users
//! and supplemental-group policies with the groups ContainerStatus reports, recursive
//! read-only volumes, and the requests that must be refused before anything is made.

use std::path::Path;

use podrun_proto::cri;
use podrun_tests::workload::Bed;

fn with_context(
    mut c: cri::ContainerConfig,
    sc: cri::LinuxContainerSecurityContext,
) -> cri::ContainerConfig {
    c.linux = Some(cri::LinuxContainerConfig {
        security_context: Some(sc),
        ..Default::default()
    });
    c
}

/// The capability mask of `line` ("CapEff", "CapBnd") in a /proc/<pid>/status text.
fn mask(status: &str, line: &str) -> u64 {
    let hex = status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{line}:")))
        .unwrap_or_else(|| panic!("no {line} in {status}"));
    u64::from_str_radix(hex.trim(), 16).unwrap()
}

async fn container_count(bed: &mut Bed) -> usize {
    podrun_tests::list_containers(&mut bed.rt).await.len()
}

/// CreateContainer with `config` fails with InvalidArgument naming `field`, and makes nothing.
async fn refused(
    bed: &mut Bed,
    pod: &(String, cri::PodSandboxConfig),
    config: cri::ContainerConfig,
    field: &str,
) {
    refused_with(bed, pod, config, field, tonic::Code::InvalidArgument).await
}

/// A key of verbose Status' info, parsed.
async fn status_info(bed: &mut Bed, key: &str) -> serde_json::Value {
    let status = bed
        .rt
        .status(cri::StatusRequest { verbose: true })
        .await
        .unwrap()
        .into_inner();
    serde_json::from_str(&status.info[key]).unwrap()
}

/// CreateContainer fails with `code`, naming `field`, and makes nothing.
async fn refused_with(
    bed: &mut Bed,
    pod: &(String, cri::PodSandboxConfig),
    config: cri::ContainerConfig,
    field: &str,
    code: tonic::Code,
) {
    let before = container_count(bed).await;
    let err = bed
        .rt
        .create_container(cri::CreateContainerRequest {
            pod_sandbox_id: pod.0.clone(),
            config: Some(config),
            sandbox_config: Some(pod.1.clone()),
        })
        .await
        .expect_err(field);
    assert_eq!(err.code(), code, "{field}: {err:?}");
    assert!(err.message().contains(field), "{field}: {}", err.message());
    assert_eq!(
        container_count(bed).await,
        before,
        "{field}: something was made"
    );
}

async fn security_contexts(handler: &str) {
    let mut bed = Bed::start().await;
    // A privileged container needs a privileged pod.
    let plain_pod = bed.pod("plain", handler).await;
    let privileged_in_plain = with_context(
        bed.container("privileged", &["sleep", "1000"]),
        cri::LinuxContainerSecurityContext {
            privileged: true,
            ..Default::default()
        },
    );
    refused(&mut bed, &plain_pod, privileged_in_plain, "privileged").await;
    bed.remove_pod(&plain_pod.0).await;
    let pod = bed.pod_with("secctx", handler, true).await;
    // What podrund (root, like this test) holds: this host's kernel withholds some.
    let own = mask(
        &std::fs::read_to_string("/proc/self/status").unwrap(),
        "CapEff",
    );

    let privileged = with_context(
        bed.container("privileged", &["sleep", "1000"]),
        cri::LinuxContainerSecurityContext {
            privileged: true,
            ..Default::default()
        },
    );
    let privileged = bed.run(&pod, privileged).await;
    let dir = bed.node.dir.join("state/containers").join(&privileged);
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&dir).unwrap().permissions());
    assert_eq!(
        mode & 0o777,
        0o700,
        "a container's rootfs is closed to host users"
    );
    let status = bed.out(&privileged, &["cat", "/proc/self/status"]).await;
    assert_eq!(
        mask(&status, "CapBnd"),
        own,
        "privileged gets all podrund holds"
    );
    assert_eq!(mask(&status, "CapEff"), own);
    assert!(
        status.lines().any(|l| l == "Seccomp:\t0"),
        "no seccomp when privileged"
    );
    // The node's devices are there (/dev/loop-control, say).
    let devices = bed.out(&privileged, &["ls", "/dev"]).await;
    for dev in std::fs::read_dir("/dev").unwrap().flatten() {
        use std::os::unix::fs::FileTypeExt;
        let name = dev.file_name().to_string_lossy().into_owned();
        if dev.file_type().unwrap().is_char_device() && name == "loop-control" {
            assert!(
                devices.split_whitespace().any(|d| d == name),
                "{name} in {devices}"
            );
        }
    }

    let all = with_context(
        bed.container("all-caps", &["sleep", "1000"]),
        cri::LinuxContainerSecurityContext {
            capabilities: Some(cri::Capability {
                add_capabilities: vec!["ALL".into()],
                ..Default::default()
            }),
            ..Default::default()
        },
    );
    let all = bed.run(&pod, all).await;
    let status = bed.out(&all, &["cat", "/proc/self/status"]).await;
    assert_eq!(mask(&status, "CapBnd"), own, "ALL means all podrund holds");

    // The security context's masked and read-only paths replace the defaults.
    let masked = with_context(
        bed.container("masked", &["sleep", "1000"]),
        cri::LinuxContainerSecurityContext {
            masked_paths: vec!["/etc/passwd".into()],
            readonly_paths: vec!["/tmp".into()],
            ..Default::default()
        },
    );
    let masked = bed.run(&pod, masked).await;
    assert_eq!(
        bed.out(&masked, &["cat", "/etc/passwd"]).await,
        "",
        "masked file reads empty"
    );
    let touched = bed.exec(&masked, &["touch", "/tmp/x"], 10).await.unwrap();
    assert_ne!(touched.exit_code, 0);
    assert!(String::from_utf8_lossy(&touched.stderr).contains("Read-only file system"));

    // A Localhost profile is applied; a missing or invalid one is refused, never ignored.
    let dir = bed.node.dir.join("seccomp");
    std::fs::create_dir_all(&dir).unwrap();
    let good = dir.join("no-mkdir.json");
    std::fs::write(
        &good,
        r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["mkdir","mkdirat"],"action":"SCMP_ACT_ERRNO"}]}"#,
    )
    .unwrap();
    let bad = dir.join("bad.json");
    std::fs::write(&bad, "{not json").unwrap();
    // JSON, but an action no OCI runtime knows: refused where it enters, by its name.
    let misspelt = dir.join("misspelt.json");
    std::fs::write(&misspelt, r#"{"defaultAction":"SCMP_ACT_ALOW"}"#).unwrap();
    let base = bed.container("seccomp", &["sleep", "1000"]);
    let profile = |path: &Path| {
        with_context(
            base.clone(),
            cri::LinuxContainerSecurityContext {
                seccomp: Some(cri::SecurityProfile {
                    profile_type: cri::security_profile::ProfileType::Localhost as i32,
                    localhost_ref: path.display().to_string(),
                }),
                ..Default::default()
            },
        )
    };
    let field = "seccomp.localhost_ref";
    refused(&mut bed, &pod, profile(&dir.join("missing.json")), field).await;
    refused(&mut bed, &pod, profile(&bad), field).await;
    refused(&mut bed, &pod, profile(&misspelt), field).await;
    refused(&mut bed, &pod, profile(Path::new("relative.json")), field).await;
    let filtered = bed.run(&pod, profile(&good)).await;
    let made = bed.exec(&filtered, &["mkdir", "/tmp/d"], 10).await.unwrap();
    assert_ne!(made.exit_code, 0, "the profile blocks mkdir");

    // A group without a user; a log path that leaves the pod's log directory.
    let group_only = with_context(
        bed.container("group-only", &["id"]),
        cri::LinuxContainerSecurityContext {
            run_as_group: Some(cri::Int64Value { value: 1002 }),
            ..Default::default()
        },
    );
    refused(&mut bed, &pod, group_only, "run_as_group").await;
    // A capability Linux does not define, added or dropped.
    for (add, drop, field) in [
        (vec!["NET_ADMINN"], vec![], "capabilities.add_capabilities"),
        (
            vec![],
            vec!["CAP_NO_SUCH"],
            "capabilities.drop_capabilities",
        ),
    ] {
        let typo = with_context(
            bed.container("typo", &["id"]),
            cri::LinuxContainerSecurityContext {
                capabilities: Some(cri::Capability {
                    add_capabilities: add.iter().map(|s| s.to_string()).collect(),
                    drop_capabilities: drop.iter().map(|s| s.to_string()).collect(),
                    ..Default::default()
                }),
                ..Default::default()
            },
        );
        refused(&mut bed, &pod, typo, field).await;
    }
    // AppArmor and SELinux: this host enforces neither, so a container that asks for a
    // profile or a label is refused, naming the field, instead of running unconfined.
    let lsm = status_info(&mut bed, "lsm").await;
    assert_eq!(
        lsm,
        serde_json::json!({"apparmor": false, "selinux": false})
    );
    for (profile, field) in [
        (
            cri::security_profile::ProfileType::RuntimeDefault,
            "security_context.apparmor",
        ),
        (
            cri::security_profile::ProfileType::Localhost,
            "security_context.apparmor",
        ),
    ] {
        let confined = with_context(
            bed.container("apparmor", &["id"]),
            cri::LinuxContainerSecurityContext {
                apparmor: Some(cri::SecurityProfile {
                    profile_type: profile as i32,
                    localhost_ref: match profile {
                        cri::security_profile::ProfileType::Localhost => {
                            "localhost/deny-write".into()
                        }
                        _ => String::new(),
                    },
                }),
                ..Default::default()
            },
        );
        refused_with(
            &mut bed,
            &pod,
            confined,
            field,
            tonic::Code::FailedPrecondition,
        )
        .await;
    }
    let labelled = with_context(
        bed.container("selinux", &["id"]),
        cri::LinuxContainerSecurityContext {
            selinux_options: Some(cri::SeLinuxOption {
                level: "s0:c1,c2".into(),
                ..Default::default()
            }),
            ..Default::default()
        },
    );
    refused_with(
        &mut bed,
        &pod,
        labelled,
        "selinux_options",
        tonic::Code::FailedPrecondition,
    )
    .await;
    // The same for a pod's own settings, at RunPodSandbox: refused, nothing made.
    let pods_before = podrun_tests::list_pods(&mut bed.rt).await.len();
    let mut labelled = bed.node.pod_config("labelled");
    labelled.linux.as_mut().unwrap().security_context = Some(cri::LinuxSandboxSecurityContext {
        selinux_options: Some(cri::SeLinuxOption {
            r#type: "container_t".into(),
            ..Default::default()
        }),
        ..Default::default()
    });
    let err = bed
        .rt
        .run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(labelled),
            ..Default::default()
        })
        .await
        .expect_err("an SELinux label on a host without SELinux");
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err:?}");
    assert!(
        err.message().contains("selinux_options"),
        "{}",
        err.message()
    );
    let pods_after = podrun_tests::list_pods(&mut bed.rt).await.len();
    assert_eq!(
        pods_after, pods_before,
        "RunPodSandbox made a pod it refused"
    );
    // Unconfined asks for nothing the host lacks.
    let unconfined = with_context(
        bed.container("unconfined", &["sleep", "1000"]),
        cri::LinuxContainerSecurityContext {
            apparmor: Some(cri::SecurityProfile {
                profile_type: cri::security_profile::ProfileType::Unconfined as i32,
                ..Default::default()
            }),
            ..Default::default()
        },
    );
    bed.run(&pod, unconfined).await;

    // Paths inside the container must be absolute.
    let mut relative = bed.container("relative", &["id"]);
    relative.working_dir = "work".into();
    refused(&mut bed, &pod, relative, "config.working_dir").await;
    let mut relative = bed.container("relative", &["id"]);
    relative.mounts = vec![cri::Mount {
        container_path: "data".into(),
        host_path: dir.display().to_string(),
        ..Default::default()
    }];
    refused(&mut bed, &pod, relative, "config.mounts.container_path").await;
    for escape in ["../escape.log", "/tmp/escape.log", "a/../../escape.log"] {
        let mut c = bed.container("escape", &["echo", "hi"]);
        c.log_path = escape.into();
        refused(&mut bed, &pod, c, "config.log_path").await;
    }
    assert!(!bed.node.dir.join("logs/escape.log").exists());

    // Supplemental groups: Merge adds the image's groups of the user (app is in "extra",
    // 2000), Strict only the context's; ContainerStatus says what the process has.
    for (policy, want) in [
        (cri::SupplementalGroupsPolicy::Merge, "1000 1234 2000"),
        (cri::SupplementalGroupsPolicy::Strict, "1000 1234"),
    ] {
        let c = with_context(
            bed.container(&format!("groups-{}", policy as i32), &["sleep", "1000"]),
            cri::LinuxContainerSecurityContext {
                run_as_user: Some(cri::Int64Value { value: 1000 }),
                supplemental_groups: vec![1234],
                supplemental_groups_policy: policy as i32,
                ..Default::default()
            },
        );
        let id = bed.run(&pod, c).await;
        let user = bed.status(&id).await.user.unwrap().linux.unwrap();
        let mut groups = user.supplemental_groups.clone();
        groups.sort();
        let want_ids: Vec<i64> = want.split(' ').map(|g| g.parse().unwrap()).collect();
        assert_eq!(
            (user.uid, user.gid, groups),
            (1000, 1000, want_ids),
            "{policy:?}"
        );
        let mut seen: Vec<&str> = Vec::new();
        let out = bed.out(&id, &["id", "-G"]).await;
        seen.extend(out.split_whitespace());
        seen.sort();
        seen.dedup();
        assert_eq!(seen.join(" "), want, "{policy:?}: id -G");
    }

    bed.remove_pod(&pod.0).await;
    bed.assert_no_leaks();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn security_contexts_are_applied_or_refused_with_crun() {
    security_contexts("crun").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn security_contexts_are_applied_or_refused_with_runc() {
    security_contexts("runc").await;
}

/// A volume with a tmpfs mounted inside it: read-only keeps the sub-mount writable (as
/// runc's `ro` does); recursive read-only makes it read-only too. Status says both
/// handlers can.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recursive_read_only_volumes_reach_into_sub_mounts() {
    let mut bed = Bed::start().await;
    let status = bed
        .rt
        .status(cri::StatusRequest { verbose: false })
        .await
        .unwrap()
        .into_inner();
    for name in ["", "runc", "crun"] {
        let handler = status
            .runtime_handlers
            .iter()
            .find(|h| h.name == name)
            .unwrap_or_else(|| panic!("handler {name:?} in {:?}", status.runtime_handlers));
        assert!(
            handler.features.unwrap().recursive_read_only_mounts,
            "{name:?}"
        );
    }
    assert!(status.features.unwrap().supplemental_groups_policy);

    let host = bed.node.dir.join("rro");
    let sub = host.join("tmpfs");
    std::fs::create_dir_all(&sub).unwrap();
    nix::mount::mount(
        Some("none"),
        &sub,
        Some("tmpfs"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    )
    .unwrap();
    let unmount = Unmount(sub.clone());
    let pod = bed.pod("rro", "").await;
    let volume = |readonly, recursive_read_only, propagation: cri::MountPropagation| cri::Mount {
        container_path: "/mnt".into(),
        host_path: host.display().to_string(),
        readonly,
        recursive_read_only,
        propagation: propagation as i32,
        ..Default::default()
    };
    for (name, rro) in [("ro", false), ("rro", true)] {
        let mut c = bed.container(name, &["sleep", "1000"]);
        c.mounts = vec![volume(true, rro, cri::MountPropagation::PropagationPrivate)];
        let id = bed.run(&pod, c).await;
        let touched = bed.exec(&id, &["touch", "/mnt/tmpfs/f"], 10).await.unwrap();
        assert_eq!(touched.exit_code == 0, !rro, "{name}: {touched:?}");
        let top = bed.exec(&id, &["touch", "/mnt/f"], 10).await.unwrap();
        assert_ne!(top.exit_code, 0, "{name}: the volume itself is read-only");
    }
    let mut rw = bed.container("rro-rw", &["sleep", "1000"]);
    rw.mounts = vec![volume(
        false,
        true,
        cri::MountPropagation::PropagationPrivate,
    )];
    refused(&mut bed, &pod, rw, "recursive_read_only").await;
    let mut slave = bed.container("rro-slave", &["sleep", "1000"]);
    slave.mounts = vec![volume(
        true,
        true,
        cri::MountPropagation::PropagationHostToContainer,
    )];
    refused(&mut bed, &pod, slave, "recursive_read_only").await;
    bed.remove_pod(&pod.0).await;
    drop(unmount);
    bed.assert_no_leaks();
}

/// Unmounts what a test mounted on the host, also when the test fails.
struct Unmount(std::path::PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
    }
}

fn userns(mode: cri::NamespaceMode, maps: &[(u32, u32, u32)]) -> cri::NamespaceOption {
    let ids: Vec<cri::IdMapping> = maps
        .iter()
        .map(|&(container_id, host_id, length)| cri::IdMapping {
            container_id,
            host_id,
            length,
        })
        .collect();
    cri::NamespaceOption {
        userns_options: Some(cri::UserNamespace {
            mode: mode as i32,
            uids: ids.clone(),
            gids: ids,
        }),
        ..Default::default()
    }
}

/// A user-namespaced pod, as kubelet asks for one (`hostUsers: false`): its processes are
/// root inside and host uid 1000.. outside, the image's files belong to its root, what it
/// writes lands on the host as the mapped owner, its network is its own to manage; bad
/// mappings are refused; nothing is left behind.
async fn user_namespaced_pod(handler: &str) {
    let mut bed = Bed::start().await;
    let status = bed
        .rt
        .status(cri::StatusRequest { verbose: false })
        .await
        .unwrap()
        .into_inner();
    assert!(
        status
            .runtime_handlers
            .iter()
            .any(|h| h.name == handler && h.features.unwrap().user_namespaces),
        "{handler:?} reports user namespaces: {:?}",
        status.runtime_handlers
    );
    let options = userns(cri::NamespaceMode::Pod, &[(0, 200_000, 65536)]);
    let mut config = bed.node.pod_config("userns");
    config.log_directory = bed.node.dir.join("logs/userns").display().to_string();
    config.linux.get_or_insert_default().security_context =
        Some(cri::LinuxSandboxSecurityContext {
            namespace_options: Some(options.clone()),
            ..Default::default()
        });
    let pod_id = bed
        .rt
        .run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(config.clone()),
            runtime_handler: handler.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .pod_sandbox_id;
    bed.node.remember(&pod_id);
    let pod = (pod_id.clone(), config);
    // A volume as kubelet gives it to such a pod: with the pod's id mappings.
    let volume = bed.node.dir.join("userns-volume");
    std::fs::create_dir_all(&volume).unwrap();
    std::fs::write(volume.join("owned"), "by host root").unwrap();
    let mapping = cri::IdMapping {
        container_id: 0,
        host_id: 200_000,
        length: 65536,
    };
    let mount = |mapping: cri::IdMapping| cri::Mount {
        container_path: "/vol".into(),
        host_path: volume.display().to_string(),
        uid_mappings: vec![mapping],
        gid_mappings: vec![mapping],
        ..Default::default()
    };
    let mut c = with_context(
        bed.container("inside", &["sleep", "1000"]),
        cri::LinuxContainerSecurityContext {
            namespace_options: Some(options.clone()),
            ..Default::default()
        },
    );
    c.mounts = vec![mount(mapping)];
    let id = bed.run(&pod, c).await;
    let owner = bed.out(&id, &["ls", "-ln", "/vol/owned"]).await;
    assert_eq!(
        owner.split_whitespace().nth(2),
        Some("0"),
        "idmapped volume: {owner}"
    );
    bed.out(&id, &["sh", "-c", "echo hi > /vol/new"]).await;
    let meta = std::fs::metadata(volume.join("new")).unwrap();
    assert_eq!(
        std::os::unix::fs::MetadataExt::uid(&meta),
        0,
        "written through the idmap as host root"
    );
    let mut wrong = with_context(
        bed.container("wrong-volume", &["sleep", "1000"]),
        cri::LinuxContainerSecurityContext {
            namespace_options: Some(options.clone()),
            ..Default::default()
        },
    );
    wrong.mounts = vec![mount(cri::IdMapping {
        host_id: 300_000,
        ..mapping
    })];
    refused(&mut bed, &pod, wrong, "uid_mappings").await;
    let map = bed.out(&id, &["cat", "/proc/self/uid_map"]).await;
    assert_eq!(
        map.split_whitespace().collect::<Vec<_>>(),
        ["0", "200000", "65536"]
    );
    assert_eq!(bed.out(&id, &["id", "-u"]).await.trim(), "0");
    let owner = bed.out(&id, &["ls", "-ln", "/bin/busybox"]).await;
    assert_eq!(
        owner.split_whitespace().nth(2),
        Some("0"),
        "the image's root owns it: {owner}"
    );
    bed.out(&id, &["sh", "-c", "echo x > /written"]).await;
    let upper = bed
        .node
        .dir
        .join("root/containers")
        .join(&id)
        .join("upper/written");
    let meta = std::fs::metadata(&upper).unwrap();
    assert_eq!(
        std::os::unix::fs::MetadataExt::uid(&meta),
        200_000,
        "host owner of what it wrote"
    );
    // Its root may manage its own network (the netns is the user namespace's).
    bed.out(&id, &["hostname"]).await;
    let pause = podrun_tests::processes_mentioning("podrun-pause");
    // pause drops to uid 65535, which is host uid 265535 here.
    let outside = pause.iter().any(|p| {
        std::fs::read_to_string(format!("/proc/{p}/status"))
            .is_ok_and(|s| s.lines().any(|l| l.starts_with("Uid:\t265535\t")))
    });
    assert!(outside, "pause runs as a mapped host uid");

    // A container must take the pod's mappings; a pod must map its root, once.
    let other = with_context(
        bed.container("other", &["sleep", "1000"]),
        cri::LinuxContainerSecurityContext {
            namespace_options: Some(userns(cri::NamespaceMode::Pod, &[(0, 300_000, 65536)])),
            ..Default::default()
        },
    );
    refused(&mut bed, &pod, other, "userns_options").await;
    for (name, bad) in [
        (
            "two",
            userns(cri::NamespaceMode::Pod, &[(0, 1000, 10), (10, 5000, 10)]),
        ),
        ("no-root", userns(cri::NamespaceMode::Pod, &[(1, 1000, 10)])),
        ("container", userns(cri::NamespaceMode::Container, &[])),
    ] {
        let mut config = bed.node.pod_config(name);
        config.linux.get_or_insert_default().security_context =
            Some(cri::LinuxSandboxSecurityContext {
                namespace_options: Some(bad),
                ..Default::default()
            });
        let err = bed
            .rt
            .run_pod_sandbox(cri::RunPodSandboxRequest {
                config: Some(config),
                runtime_handler: handler.into(),
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{name}: {err:?}");
        assert!(
            err.message().contains("userns_options"),
            "{}",
            err.message()
        );
    }
    bed.remove_pod(&pod_id).await;
    assert!(
        std::fs::read_dir(bed.node.dir.join("state/userns")).map_or(true, |d| d.count() == 0),
        "the user namespace pin is gone"
    );
    bed.assert_no_leaks();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_namespaced_pods_with_crun() {
    user_namespaced_pod("crun").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_namespaced_pods_with_runc() {
    user_namespaced_pod("runc").await;
}
