use super::*;
use crate::container::capabilities::{all_caps, DEFAULT_CAPS};
use serde_json::json;

/// The spec as config.json holds it.
fn json_of(input: &Input) -> Value {
    serde_json::to_value(build(input).unwrap()).unwrap()
}

/// A capability set as sorted names.
fn sorted(set: &Value) -> Vec<String> {
    let mut names = strings(set);
    names.sort();
    names
}

fn pod() -> Pod {
    Pod {
        netns: Some("/run/netns/podrun-p".into()),
        pause_pid: 42,
        files: "/run/podrun/pods/p".into(),
        shm: Some("/run/podrun/pods/p/shm".into()),
        cgroup: "/kubepods/p".into(),
        hostname: "web".into(),
        sysctls: [(
            "net.ipv4.ip_unprivileged_port_start".to_owned(),
            "0".to_owned(),
        )]
        .into(),
        userns: None,
    }
}

fn input<'a>(config: &'a cri::ContainerConfig, image: &'a Value, pod: &'a Pod) -> Input<'a> {
    Input {
        id: "c1",
        config,
        image,
        pod,
        rootfs: "/run/podrun/containers/c1/rootfs".into(),
        user: User::default(),
        oom_floor: -998,
        annotations: BTreeMap::new(),
        pid_target: None,
        own_caps: all_caps(),
        seccomp_localhost: None,
        apparmor_profile: None,
        selinux_label: None,
        cdi: Vec::new(),
        host_devices: Vec::new(),
    }
}

#[test]
fn command_and_args_follow_kubernetes_rules() {
    let image = json!({"Entrypoint": ["/ep"], "Cmd": ["a", "b"]});
    let mut c = cri::ContainerConfig::default();
    assert_eq!(process_args(&c, &image), ["/ep", "a", "b"]);
    c.args = vec!["x".into()];
    assert_eq!(process_args(&c, &image), ["/ep", "x"]);
    c.command = vec!["/cmd".into()];
    assert_eq!(process_args(&c, &image), ["/cmd", "x"]);
    c.args.clear();
    assert_eq!(process_args(&c, &image), ["/cmd"]);
}

#[test]
fn config_env_overrides_image_env_by_name() {
    let image = json!({"Env": ["PATH=/bin", "A=1", "B=2"]});
    let c = cri::ContainerConfig {
        envs: vec![cri::KeyValue {
            key: "A".into(),
            value: "9".into(),
        }],
        ..Default::default()
    };
    assert_eq!(env(&c, &image), ["PATH=/bin", "B=2", "A=9"]);
}

#[test]
fn default_spec_joins_the_pod_and_matches_expected_json() {
    let c = cri::ContainerConfig {
        mounts: vec![cri::Mount {
            container_path: "/data".into(),
            host_path: "/srv/data".into(),
            readonly: true,
            propagation: cri::MountPropagation::PropagationHostToContainer as i32,
            ..Default::default()
        }],
        linux: Some(cri::LinuxContainerConfig {
            resources: Some(cri::LinuxContainerResources {
                memory_limit_in_bytes: 1 << 26,
                cpu_shares: 512,
                oom_score_adj: -999,
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    let image = json!({"Cmd": ["sh"], "WorkingDir": "/work"});
    let p = pod();
    let spec = json_of(&input(&c, &image, &p));
    assert_eq!(spec["process"]["args"], json!(["sh"]));
    assert_eq!(spec["process"]["cwd"], "/work");
    assert_eq!(
        spec["process"]["oomScoreAdj"], -998,
        "clamped to what podrund may set"
    );
    let mut defaults: Vec<String> = DEFAULT_CAPS.iter().map(|c| c.to_string()).collect();
    defaults.sort();
    assert_eq!(
        sorted(&spec["process"]["capabilities"]["bounding"]),
        defaults
    );
    assert_eq!(
        spec["linux"]["namespaces"],
        json!([{"type": "mount"}, {"type": "pid", "path": "/proc/42/ns/pid"}, {"type": "ipc", "path": "/proc/42/ns/ipc"},
               {"type": "network", "path": "/run/netns/podrun-p"}, {"type": "uts", "path": "/proc/42/ns/uts"}])
    );
    assert_eq!(spec["linux"]["cgroupsPath"], "/kubepods/p/c1");
    assert_eq!(
        spec["linux"]["sysctl"]["net.ipv4.ip_unprivileged_port_start"],
        "0"
    );
    assert_eq!(spec["linux"]["resources"]["memory"]["limit"], 1 << 26);
    assert_eq!(spec["linux"]["resources"]["cpu"]["shares"], 512);
    assert_eq!(spec["linux"]["maskedPaths"][2], "/proc/kcore");
    let mounts = spec["mounts"].as_array().unwrap();
    let find = |d: &str| {
        mounts
            .iter()
            .find(|m| m["destination"] == d)
            .cloned()
            .unwrap()
    };
    assert_eq!(find("/dev/shm")["source"], "/run/podrun/pods/p/shm");
    assert_eq!(find("/etc/hosts")["source"], "/run/podrun/pods/p/hosts");
    assert_eq!(
        find("/data"),
        json!({"destination": "/data", "type": "bind", "source": "/srv/data", "options": ["rbind", "rslave", "ro"]})
    );
}

#[test]
fn the_security_contexts_masked_and_readonly_paths_replace_the_defaults() {
    let (pod, image) = (pod(), json!({"Cmd": ["sh"]}));
    let mut config = cri::ContainerConfig::default();
    let spec = json_of(&input(&config, &image, &pod));
    assert_eq!(spec["linux"]["maskedPaths"], json!(MASKED));
    assert_eq!(spec["linux"]["readonlyPaths"], json!(READONLY));
    config.linux = Some(cri::LinuxContainerConfig {
        security_context: Some(cri::LinuxContainerSecurityContext {
            masked_paths: vec!["/bin/ls".into()],
            readonly_paths: vec!["/tmp".into()],
            ..Default::default()
        }),
        ..Default::default()
    });
    let spec = json_of(&input(&config, &image, &pod));
    assert_eq!(spec["linux"]["maskedPaths"], json!(["/bin/ls"]));
    assert_eq!(spec["linux"]["readonlyPaths"], json!(["/tmp"]));
}

#[test]
fn volume_propagation_sets_the_rootfs_propagation() {
    let (pod, image) = (pod(), json!({"Cmd": ["sh"]}));
    let with = |propagations: &[cri::MountPropagation]| {
        let config = cri::ContainerConfig {
            mounts: propagations
                .iter()
                .map(|p| cri::Mount {
                    container_path: "/m".into(),
                    host_path: "/srv".into(),
                    propagation: *p as i32,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        };
        json_of(&input(&config, &image, &pod))["linux"]["rootfsPropagation"].clone()
    };
    use cri::MountPropagation::*;
    assert_eq!(with(&[]), Value::Null);
    assert_eq!(with(&[PropagationPrivate]), Value::Null);
    assert_eq!(with(&[PropagationHostToContainer]), json!("rslave"));
    assert_eq!(
        with(&[PropagationHostToContainer, PropagationBidirectional]),
        json!("rshared")
    );
}

#[test]
fn what_no_runtime_could_run_is_refused_naming_the_field() {
    let (pod, image) = (pod(), json!({"Cmd": ["sh"]}));
    let field =
        |config: &cri::ContainerConfig, image: &Value| match build(&input(config, image, &pod)) {
            Err(Error::InvalidArgument { field, .. }) => field,
            other => panic!("expected InvalidArgument, got {other:?}"),
        };
    let no_command = cri::ContainerConfig::default();
    assert_eq!(
        field(&no_command, &json!({"Env": ["A=1"]})),
        "config.command"
    );
    let relative_cwd = cri::ContainerConfig {
        working_dir: "work".into(),
        ..Default::default()
    };
    assert_eq!(field(&relative_cwd, &image), "config.working_dir");
    for path in ["data", "/data/../../etc"] {
        let volume = cri::ContainerConfig {
            mounts: vec![cri::Mount {
                container_path: path.into(),
                host_path: "/srv".into(),
                ..Default::default()
            }],
            ..Default::default()
        };
        assert_eq!(
            field(&volume, &image),
            "config.mounts.container_path",
            "{path}"
        );
    }
    // An image's relative WorkingDir is taken from /, as Docker does.
    let c = cri::ContainerConfig::default();
    let spec = json_of(&input(
        &c,
        &json!({"Cmd": ["sh"], "WorkingDir": "app"}),
        &pod,
    ));
    assert_eq!(spec["process"]["cwd"], "/app");
}

#[test]
fn the_spec_round_trips_through_the_oci_types_and_validates() {
    let (pod, image) = (pod(), json!({"Cmd": ["sh"]}));
    let c = cri::ContainerConfig::default();
    let text = serde_json::to_vec(&build(&input(&c, &image, &pod)).unwrap()).unwrap();
    let back: oci::Spec = serde_json::from_slice(&text).unwrap();
    validate(&back).unwrap();
    assert_eq!(
        back.process().as_ref().unwrap().rlimits(),
        &None,
        "no example rlimits"
    );
    let mut twice = back.clone();
    let linux = twice.linux_mut().as_mut().unwrap();
    let mut namespaces = linux.namespaces().clone().unwrap();
    namespaces.push(namespaces[0].clone());
    linux.set_namespaces(Some(namespaces));
    assert!(matches!(validate(&twice), Err(Error::Internal(m)) if m.contains("twice")));
}
