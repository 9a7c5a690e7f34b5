//! A container's OCI runtime spec as a pure function of the CRI config, the image config and
//! the pod it joins. Defaults follow containerd's CRI plugin: its capability set, masked and
//! read-only /proc and /sys paths, the pod's namespaces, files and /dev/shm.

use std::collections::BTreeMap;
use std::path::PathBuf;

use podrun_proto::cri;
use serde_json::{json, Value};

/// containerd's default capabilities for unprivileged containers.
pub const DEFAULT_CAPS: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

/// Every capability Linux defines (the `caps` crate's list), in the order of their numbers.
/// Privileged containers and `ALL` get those of them that podrund holds.
pub fn all_caps() -> Vec<String> {
    names(caps::all())
}

/// Capability names, in the order of their numbers.
pub fn names(set: caps::CapsHashSet) -> Vec<String> {
    let mut caps: Vec<caps::Capability> = set.into_iter().collect();
    caps.sort_by_key(|c| c.index());
    caps.iter().map(|c| c.to_string()).collect()
}

/// A capability as the CRI names it (`NET_ADMIN` or `CAP_NET_ADMIN`, any case) as Linux
/// names it; None for a name Linux does not define.
pub fn capability(name: &str) -> Option<String> {
    let name = name.to_uppercase();
    let name = match name.starts_with("CAP_") {
        true => name,
        false => format!("CAP_{name}"),
    };
    name.parse::<caps::Capability>().ok().map(|c| c.to_string())
}

const MASKED: &[&str] = &[
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];
const READONLY: &[&str] = &[
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// What the container needs to know about its pod.
#[derive(Debug, Clone)]
pub struct Pod {
    /// The pinned netns; None for hostNetwork pods.
    pub netns: Option<PathBuf>,
    pub pause_pid: i32,
    /// Where the pod's hostname, hosts and resolv.conf are.
    pub files: PathBuf,
    /// The pod's /dev/shm; None when the pod uses the node's IPC namespace.
    pub shm: Option<PathBuf>,
    pub cgroup: String,
    pub hostname: String,
    /// The pod's namespaced sysctls (CRI puts them on the pod).
    pub sysctls: std::collections::HashMap<String, String>,
    /// The pod's user namespace, when it has its own.
    pub userns: Option<crate::userns::UserNs>,
}

/// The user the process runs as, resolved against the image's /etc/passwd and /etc/group.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct User {
    pub uid: u32,
    pub gid: u32,
    pub additional_gids: Vec<u32>,
}

pub struct Input<'a> {
    pub id: &'a str,
    pub config: &'a cri::ContainerConfig,
    /// The image's `config` object (Env, Entrypoint, Cmd, WorkingDir, User, StopSignal).
    pub image: &'a Value,
    pub pod: &'a Pod,
    pub rootfs: PathBuf,
    pub user: User,
    /// The lowest oom_score_adj podrund may give (its own, without CAP_SYS_RESOURCE).
    pub oom_floor: i64,
    pub annotations: BTreeMap<String, String>,
    /// For `pid: TARGET` (ephemeral debug containers): the target container's pid.
    pub pid_target: Option<i32>,
    /// The capabilities podrund holds: what privileged and `ALL` mean on this host.
    pub own_caps: Vec<String>,
    /// The Localhost seccomp profile, read and checked by the caller.
    pub seccomp_localhost: Option<Value>,
    /// For a privileged container: the node's devices (OCI `linux.devices` entries).
    pub host_devices: Vec<Value>,
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s.as_str().map(str::to_owned))
        .collect()
}

/// CRI command/args over the image's Entrypoint/Cmd, as Kubernetes defines it.
pub fn process_args(config: &cri::ContainerConfig, image: &Value) -> Vec<String> {
    let (entrypoint, cmd) = (strings(&image["Entrypoint"]), strings(&image["Cmd"]));
    match (config.command.is_empty(), config.args.is_empty()) {
        (false, _) => config.command.iter().chain(&config.args).cloned().collect(),
        (true, false) => entrypoint
            .into_iter()
            .chain(config.args.iter().cloned())
            .collect(),
        (true, true) => entrypoint.into_iter().chain(cmd).collect(),
    }
}

/// The image's environment with the config's entries added or replacing by name.
pub fn env(config: &cri::ContainerConfig, image: &Value) -> Vec<String> {
    let mut env = strings(&image["Env"]);
    for kv in &config.envs {
        env.retain(|e| e.split('=').next() != Some(kv.key.as_str()));
        env.push(format!("{}={}", kv.key, String::from_utf8_lossy(&kv.value)));
    }
    if !env.iter().any(|e| e.starts_with("PATH=")) {
        env.insert(
            0,
            "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
        );
    }
    env
}

fn capabilities(
    sc: Option<&cri::LinuxContainerSecurityContext>,
    uid: u32,
    own: &[String],
) -> Value {
    let privileged = sc.is_some_and(|s| s.privileged);
    let all = || own.to_vec();
    let mut caps: Vec<String> = match privileged {
        true => all(),
        false => DEFAULT_CAPS.iter().map(|c| c.to_string()).collect(),
    };
    // Names were checked at CreateContainer (`capability`); an unknown one is left out.
    let norm = |c: &String| capability(c);
    // containerd's order: add ALL, drop ALL, then the single adds, then the single drops.
    if let Some(c) = sc.and_then(|s| s.capabilities.as_ref()) {
        let names_all = |list: &[String]| list.iter().any(|a| a.eq_ignore_ascii_case("ALL"));
        if names_all(&c.add_capabilities) {
            caps = all();
        }
        if names_all(&c.drop_capabilities) {
            caps.clear();
        }
        for add in c
            .add_capabilities
            .iter()
            .filter(|a| !a.eq_ignore_ascii_case("ALL"))
            .filter_map(norm)
        {
            if !caps.contains(&add) {
                caps.push(add);
            }
        }
        let dropped: Vec<String> = c.drop_capabilities.iter().filter_map(norm).collect();
        caps.retain(|c| !dropped.contains(c));
    }
    // Like containerd: a non-root user keeps the bounding set but starts without effective
    // and permitted capabilities.
    let effective = if uid == 0 { caps.clone() } else { Vec::new() };
    json!({"bounding": caps, "effective": effective, "permitted": effective})
}

fn bind(dest: &str, source: &std::path::Path, readonly: bool) -> Value {
    let mut options = vec!["rbind", "rprivate"];
    options.push(if readonly { "ro" } else { "rw" });
    json!({"destination": dest, "type": "bind", "source": source, "options": options})
}

fn cri_mounts(config: &cri::ContainerConfig) -> Vec<Value> {
    config
        .mounts
        .iter()
        .map(|m| {
            let propagation = match cri::MountPropagation::try_from(m.propagation) {
                Ok(cri::MountPropagation::PropagationHostToContainer) => "rslave",
                Ok(cri::MountPropagation::PropagationBidirectional) => "rshared",
                _ => "rprivate",
            };
            let rw = match (m.readonly, m.recursive_read_only) {
                (true, true) => "rro",
                (true, false) => "ro",
                (false, _) => "rw",
            };
            json!({"destination": m.container_path, "type": "bind", "source": m.host_path, "options": ["rbind", propagation, rw]})
        })
        .collect()
}

/// CRI seccomp: absent or Unconfined means none; RuntimeDefault is ours; Localhost is the
/// profile the caller read (and refused when it could not).
fn seccomp(input: &Input, caps: &Value, privileged: bool) -> Option<Value> {
    let sc = input.config.linux.as_ref()?.security_context.as_ref();
    let profile = sc.and_then(|s| s.seccomp.as_ref())?;
    if privileged {
        return None;
    }
    match cri::security_profile::ProfileType::try_from(profile.profile_type) {
        Ok(cri::security_profile::ProfileType::RuntimeDefault) => {
            Some(super::seccomp::runtime_default(&strings(&caps["bounding"])))
        }
        Ok(cri::security_profile::ProfileType::Localhost) => input.seccomp_localhost.clone(),
        _ => None,
    }
}

/// CRI container resources as an OCI `LinuxResources` (CPU and memory): what a container
/// is created with, and what UpdateContainerResources hands the runtime's `update`.
pub fn oci_resources(resources: &cri::LinuxContainerResources) -> Value {
    let mut cpu = serde_json::Map::new();
    if resources.cpu_shares > 0 {
        cpu.insert("shares".into(), json!(resources.cpu_shares));
    }
    if resources.cpu_quota > 0 {
        cpu.insert("quota".into(), json!(resources.cpu_quota));
    }
    if resources.cpu_period > 0 {
        cpu.insert("period".into(), json!(resources.cpu_period));
    }
    if !resources.cpuset_cpus.is_empty() {
        cpu.insert("cpus".into(), json!(resources.cpuset_cpus));
    }
    if !resources.cpuset_mems.is_empty() {
        cpu.insert("mems".into(), json!(resources.cpuset_mems));
    }
    let mut res = json!({"cpu": cpu});
    if resources.memory_limit_in_bytes > 0 {
        res["memory"] = json!({"limit": resources.memory_limit_in_bytes});
    }
    res
}

pub fn build(input: &Input) -> Value {
    let config = input.config;
    let linux = config.linux.clone().unwrap_or_default();
    let sc = linux.security_context.as_ref();
    let privileged = sc.is_some_and(|s| s.privileged);
    let image = input.image;
    let cwd = Some(config.working_dir.clone())
        .filter(|w| !w.is_empty())
        .or_else(|| {
            image["WorkingDir"]
                .as_str()
                .filter(|w| !w.is_empty())
                .map(str::to_owned)
        })
        .unwrap_or_else(|| "/".into());
    let pod = input.pod;
    let ns_path = |kind: &str| format!("/proc/{}/ns/{kind}", pod.pause_pid);
    let mode = |pick: fn(&cri::NamespaceOption) -> i32| {
        sc.and_then(|s| s.namespace_options.as_ref())
            .map_or(cri::NamespaceMode::Pod, |o| {
                cri::NamespaceMode::try_from(pick(o)).unwrap_or(cri::NamespaceMode::Pod)
            })
    };
    let mut namespaces = vec![json!({"type": "mount"})];
    match (mode(|o| o.pid), input.pid_target) {
        (cri::NamespaceMode::Pod, _) => {
            namespaces.push(json!({"type": "pid", "path": ns_path("pid")}))
        }
        (cri::NamespaceMode::Target, Some(pid)) => {
            namespaces.push(json!({"type": "pid", "path": format!("/proc/{pid}/ns/pid")}))
        }
        (cri::NamespaceMode::Node, _) => {}
        // Container, or a Target that create.rs could not resolve (it refuses those).
        _ => namespaces.push(json!({"type": "pid"})),
    }
    if pod.shm.is_some() {
        namespaces.push(json!({"type": "ipc", "path": ns_path("ipc")}));
    }
    if let Some(u) = &pod.userns {
        namespaces.push(json!({"type": "user", "path": u.pin}));
    }
    if let Some(netns) = &pod.netns {
        namespaces.push(json!({"type": "network", "path": netns}));
        namespaces.push(json!({"type": "uts", "path": ns_path("uts")}));
    }

    let mut mounts = vec![
        json!({"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}),
        json!({"destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]}),
        json!({"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", if privileged { "rw" } else { "ro" }]}),
        json!({"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup", "options": ["nosuid", "noexec", "nodev", "relatime", if privileged { "rw" } else { "ro" }]}),
    ];
    match &pod.shm {
        Some(shm) => mounts.push(bind("/dev/shm", shm, false)),
        None => mounts.push(bind("/dev/shm", std::path::Path::new("/dev/shm"), false)),
    }
    let ro_files = sc.is_some_and(|s| s.readonly_rootfs);
    for (dest, file) in [
        ("/etc/hosts", "hosts"),
        ("/etc/resolv.conf", "resolv.conf"),
        ("/etc/hostname", "hostname"),
    ] {
        if !config.mounts.iter().any(|m| m.container_path == dest) {
            mounts.push(bind(dest, &pod.files.join(file), ro_files));
        }
    }
    mounts.extend(cri_mounts(config));

    let resources = linux.resources.clone().unwrap_or_default();
    let mut res = oci_resources(&resources);
    res["devices"] = json!([{"allow": privileged, "access": "rwm"}]);
    let oom = resources.oom_score_adj.max(input.oom_floor).min(1000);

    let no_new_privs = sc.is_some_and(|s| s.no_new_privs);
    let mut linux_spec = json!({
        "namespaces": namespaces,
        "cgroupsPath": format!("{}/{}", pod.cgroup, input.id),
        "resources": res,
        "sysctl": pod.sysctls,
    });
    if let Some(u) = &pod.userns {
        linux_spec["uidMappings"] = json!([u.uids.oci()]);
        linux_spec["gidMappings"] = json!([u.gids.oci()]);
    }
    // A volume's propagation needs the rootfs to propagate at least as much (containerd's
    // rule): the runtime's default makes the whole tree private.
    let propagations: Vec<i32> = config.mounts.iter().map(|m| m.propagation).collect();
    if propagations.contains(&(cri::MountPropagation::PropagationBidirectional as i32)) {
        linux_spec["rootfsPropagation"] = json!("rshared");
    } else if propagations.contains(&(cri::MountPropagation::PropagationHostToContainer as i32)) {
        linux_spec["rootfsPropagation"] = json!("rslave");
    }
    // The security context's lists replace the defaults when given (kubelet sends them,
    // empty for `procMount: Unmasked`, which proto3 cannot tell from absent).
    let or_default = |given: Option<&Vec<String>>, default: &[&str]| match given {
        Some(paths) if !paths.is_empty() => json!(paths),
        _ => json!(default),
    };
    if !input.host_devices.is_empty() {
        linux_spec["devices"] = json!(input.host_devices);
    }
    if !privileged {
        linux_spec["maskedPaths"] = or_default(sc.map(|s| &s.masked_paths), MASKED);
        linux_spec["readonlyPaths"] = or_default(sc.map(|s| &s.readonly_paths), READONLY);
    }
    let caps = capabilities(sc, input.user.uid, &input.own_caps);
    if let Some(profile) = seccomp(input, &caps, privileged) {
        linux_spec["seccomp"] = profile;
    }
    let mut spec = json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": config.tty,
            "user": {"uid": input.user.uid, "gid": input.user.gid, "additionalGids": input.user.additional_gids},
            "args": process_args(config, image),
            "env": env(config, image),
            "cwd": cwd,
            "capabilities": caps,
            "noNewPrivileges": no_new_privs,
            "oomScoreAdj": oom,
        },
        "root": {"path": input.rootfs, "readonly": ro_files},
        "hostname": pod.hostname,
        "mounts": mounts,
        "annotations": input.annotations,
        "linux": linux_spec,
    });
    // A hostNetwork pod shares the node's UTS namespace: its hostname is the node's.
    if pod.netns.is_none() {
        if let Some(o) = spec.as_object_mut() {
            o.remove("hostname");
        }
    }
    spec
}

#[cfg(test)]
mod tests;
