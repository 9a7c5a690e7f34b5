//! A container's OCI runtime spec, typed (oci-spec's structs and builders) and validated, as a
//! pure function of the CRI config, the image config and
//! the pod it joins. Defaults follow containerd's CRI plugin: its capability set, masked and
//! read-only /proc and /sys paths, the pod's namespaces, files and /dev/shm.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use ::oci_spec::runtime as oci;
use podrun_proto::cri;
use serde_json::Value;

use super::built;
use super::capabilities::{bounding, capabilities};
use crate::error::{Error, Result};

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
    pub seccomp_localhost: Option<oci::LinuxSeccomp>,
    /// The AppArmor profile and SELinux label to run under (`lsm.rs` checked them).
    pub apparmor_profile: Option<String>,
    pub selinux_label: Option<String>,
    /// The CDI devices asked for, resolved (applied last, as containerd does).
    pub cdi: Vec<crate::cdi::Resolved>,
    /// For a privileged container: the node's devices.
    pub host_devices: Vec<oci::LinuxDevice>,
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

fn mount(dest: &str, kind: &str, source: &Path, options: &[&str]) -> Result<oci::Mount> {
    built(
        oci::MountBuilder::default()
            .destination(dest)
            .typ(kind)
            .source(source)
            .options(options.iter().map(|o| o.to_string()).collect::<Vec<_>>())
            .build(),
    )
}

fn bind(dest: &str, source: &Path, readonly: bool) -> Result<oci::Mount> {
    let rw = if readonly { "ro" } else { "rw" };
    mount(dest, "bind", source, &["rbind", "rprivate", rw])
}

/// A path the container sees must be absolute and must not climb with `..`.
pub(crate) fn container_path(path: &str, field: &'static str, which: &str) -> Result<()> {
    let p = Path::new(path);
    let climbs = p.components().any(|c| c == std::path::Component::ParentDir);
    if !p.is_absolute() || climbs {
        return Err(Error::invalid(
            field,
            format!("{which}{path:?} must be an absolute path without \"..\""),
        ));
    }
    Ok(())
}

fn cri_mounts(config: &cri::ContainerConfig) -> Result<Vec<oci::Mount>> {
    let mut mounts = Vec::new();
    for (i, m) in config.mounts.iter().enumerate() {
        container_path(
            &m.container_path,
            "config.mounts.container_path",
            &format!("mounts[{i}]: "),
        )?;
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
        let source = Path::new(&m.host_path);
        mounts.push(mount(
            &m.container_path,
            "bind",
            source,
            &["rbind", propagation, rw],
        )?);
    }
    Ok(mounts)
}

/// CRI seccomp: absent or Unconfined means none; RuntimeDefault is ours; Localhost is the
/// profile the caller read (and refused when it could not).
fn seccomp(
    input: &Input,
    bounding: &[String],
    privileged: bool,
) -> Result<Option<oci::LinuxSeccomp>> {
    let sc = input
        .config
        .linux
        .as_ref()
        .and_then(|l| l.security_context.as_ref());
    let Some(profile) = sc.and_then(|s| s.seccomp.as_ref()) else {
        return Ok(None);
    };
    if privileged {
        return Ok(None);
    }
    Ok(
        match cri::security_profile::ProfileType::try_from(profile.profile_type) {
            Ok(cri::security_profile::ProfileType::RuntimeDefault) => {
                Some(super::seccomp::runtime_default(bounding)?)
            }
            Ok(cri::security_profile::ProfileType::Localhost) => input.seccomp_localhost.clone(),
            _ => None,
        },
    )
}

/// CRI container resources as OCI `LinuxResources` (CPU and memory): what a container is
/// created with, and what UpdateContainerResources hands the runtime's `update`.
pub fn oci_resources(resources: &cri::LinuxContainerResources) -> Result<oci::LinuxResources> {
    let positive = |v: i64| (v > 0).then_some(v);
    let text = |s: &str| (!s.is_empty()).then(|| s.to_owned());
    let mut cpu = oci::LinuxCpu::default();
    cpu.set_shares(positive(resources.cpu_shares).map(|v| v as u64))
        .set_quota(positive(resources.cpu_quota))
        .set_period(positive(resources.cpu_period).map(|v| v as u64))
        .set_cpus(text(&resources.cpuset_cpus))
        .set_mems(text(&resources.cpuset_mems));
    let mut res = built(oci::LinuxResourcesBuilder::default().cpu(cpu).build())?;
    if let Some(limit) = positive(resources.memory_limit_in_bytes) {
        res.set_memory(Some(built(
            oci::LinuxMemoryBuilder::default().limit(limit).build(),
        )?));
    }
    Ok(res)
}

fn namespace(kind: oci::LinuxNamespaceType, path: Option<PathBuf>) -> oci::LinuxNamespace {
    let mut ns = oci::LinuxNamespace::default();
    ns.set_typ(kind).set_path(path);
    ns
}

/// The namespaces the container makes (mount, and pid unless shared) or joins (the pod's).
fn namespaces(
    input: &Input,
    sc: Option<&cri::LinuxContainerSecurityContext>,
) -> Vec<oci::LinuxNamespace> {
    use oci::LinuxNamespaceType as Kind;
    let pod = input.pod;
    let of_pause = |kind: &str| Some(PathBuf::from(format!("/proc/{}/ns/{kind}", pod.pause_pid)));
    let pid_mode = sc
        .and_then(|s| s.namespace_options.as_ref())
        .map_or(cri::NamespaceMode::Pod, |o| {
            cri::NamespaceMode::try_from(o.pid).unwrap_or(cri::NamespaceMode::Pod)
        });
    let mut namespaces = vec![namespace(Kind::Mount, None)];
    match (pid_mode, input.pid_target) {
        (cri::NamespaceMode::Pod, _) => namespaces.push(namespace(Kind::Pid, of_pause("pid"))),
        (cri::NamespaceMode::Target, Some(pid)) => {
            let path = PathBuf::from(format!("/proc/{pid}/ns/pid"));
            namespaces.push(namespace(Kind::Pid, Some(path)))
        }
        (cri::NamespaceMode::Node, _) => {}
        // Container, or a Target that create.rs could not resolve (it refuses those).
        _ => namespaces.push(namespace(Kind::Pid, None)),
    }
    if pod.shm.is_some() {
        namespaces.push(namespace(Kind::Ipc, of_pause("ipc")));
    }
    if let Some(u) = &pod.userns {
        namespaces.push(namespace(Kind::User, Some(u.pin.clone())));
    }
    if let Some(netns) = &pod.netns {
        namespaces.push(namespace(Kind::Network, Some(netns.clone())));
        namespaces.push(namespace(Kind::Uts, of_pause("uts")));
    }
    namespaces
}

/// /proc, /dev, /sys and the pod's shm and files, then the CRI volumes.
fn mounts(input: &Input, privileged: bool, ro_files: bool) -> Result<Vec<oci::Mount>> {
    let (pod, config) = (input.pod, input.config);
    let rw = if privileged { "rw" } else { "ro" };
    let none = |s: &str| PathBuf::from(s);
    let mut mounts = vec![
        mount(
            "/proc",
            "proc",
            &none("proc"),
            &["nosuid", "noexec", "nodev"],
        )?,
        mount(
            "/dev",
            "tmpfs",
            &none("tmpfs"),
            &["nosuid", "strictatime", "mode=755", "size=65536k"],
        )?,
        mount(
            "/dev/pts",
            "devpts",
            &none("devpts"),
            &[
                "nosuid",
                "noexec",
                "newinstance",
                "ptmxmode=0666",
                "mode=0620",
                "gid=5",
            ],
        )?,
        mount(
            "/dev/mqueue",
            "mqueue",
            &none("mqueue"),
            &["nosuid", "noexec", "nodev"],
        )?,
        mount(
            "/sys",
            "sysfs",
            &none("sysfs"),
            &["nosuid", "noexec", "nodev", rw],
        )?,
        mount(
            "/sys/fs/cgroup",
            "cgroup",
            &none("cgroup"),
            &["nosuid", "noexec", "nodev", "relatime", rw],
        )?,
    ];
    let shm = pod.shm.clone().unwrap_or_else(|| none("/dev/shm"));
    mounts.push(bind("/dev/shm", &shm, false)?);
    for (dest, file) in [
        ("/etc/hosts", "hosts"),
        ("/etc/resolv.conf", "resolv.conf"),
        ("/etc/hostname", "hostname"),
    ] {
        if !config.mounts.iter().any(|m| m.container_path == dest) {
            mounts.push(bind(dest, &pod.files.join(file), ro_files)?);
        }
    }
    mounts.extend(cri_mounts(config)?);
    Ok(mounts)
}

fn id_mapping(m: &crate::userns::Mapping) -> Result<oci::LinuxIdMapping> {
    built(
        oci::LinuxIdMappingBuilder::default()
            .container_id(m.container_id)
            .host_id(m.host_id)
            .size(m.length)
            .build(),
    )
}

/// The `linux` object: namespaces, cgroup and resources, devices, sysctls, id mappings,
/// masked and read-only paths, seccomp.
fn linux(input: &Input, bounding: &[String]) -> Result<oci::Linux> {
    let (pod, config) = (input.pod, input.config);
    let linux = config.linux.clone().unwrap_or_default();
    let sc = linux.security_context.as_ref();
    let privileged = sc.is_some_and(|s| s.privileged);
    let mut resources = oci_resources(&linux.resources.unwrap_or_default())?;
    resources.set_devices(Some(vec![built(
        oci::LinuxDeviceCgroupBuilder::default()
            .allow(privileged)
            .access("rwm")
            .build(),
    )?]));
    let mut spec = built(
        oci::LinuxBuilder::default()
            .namespaces(namespaces(input, sc))
            .cgroups_path(format!("{}/{}", pod.cgroup, input.id))
            .resources(resources)
            .sysctl(pod.sysctls.clone())
            .build(),
    )?;
    spec.set_masked_paths(None).set_readonly_paths(None);
    if let Some(u) = &pod.userns {
        spec.set_uid_mappings(Some(vec![id_mapping(&u.uids)?]))
            .set_gid_mappings(Some(vec![id_mapping(&u.gids)?]));
    }
    // A volume's propagation needs the rootfs to propagate at least as much (containerd's
    // rule): the runtime's default makes the whole tree private.
    let propagations: Vec<i32> = config.mounts.iter().map(|m| m.propagation).collect();
    if propagations.contains(&(cri::MountPropagation::PropagationBidirectional as i32)) {
        spec.set_rootfs_propagation(Some("rshared".into()));
    } else if propagations.contains(&(cri::MountPropagation::PropagationHostToContainer as i32)) {
        spec.set_rootfs_propagation(Some("rslave".into()));
    }
    if !input.host_devices.is_empty() {
        spec.set_devices(Some(input.host_devices.clone()));
    }
    // The security context's lists replace the defaults when given (kubelet sends them,
    // empty for `procMount: Unmasked`, which proto3 cannot tell from absent).
    let or_default = |given: Option<&Vec<String>>, default: &[&str]| match given {
        Some(paths) if !paths.is_empty() => paths.clone(),
        _ => default.iter().map(|p| p.to_string()).collect(),
    };
    if !privileged {
        spec.set_masked_paths(Some(or_default(sc.map(|s| &s.masked_paths), MASKED)))
            .set_readonly_paths(Some(or_default(sc.map(|s| &s.readonly_paths), READONLY)));
    }
    spec.set_seccomp(seccomp(input, bounding, privileged)?);
    Ok(spec)
}

/// The container's working directory: the config's, else the image's (a relative one taken
/// from /, as Docker does), else /.
fn cwd(config: &cri::ContainerConfig, image: &Value) -> Result<String> {
    if !config.working_dir.is_empty() {
        container_path(&config.working_dir, "config.working_dir", "")?;
        return Ok(config.working_dir.clone());
    }
    let from_image = image["WorkingDir"].as_str().unwrap_or_default();
    Ok(Path::new("/").join(from_image).display().to_string())
}

fn process(input: &Input, bounding: &[String]) -> Result<oci::Process> {
    let config = input.config;
    let args = process_args(config, input.image);
    if args.is_empty() {
        return Err(Error::invalid(
            "config.command",
            "is empty, and the image has no Entrypoint or Cmd to run",
        ));
    }
    let sc = config
        .linux
        .as_ref()
        .and_then(|l| l.security_context.as_ref());
    let oom = config
        .linux
        .as_ref()
        .and_then(|l| l.resources.as_ref())
        .map_or(0, |r| r.oom_score_adj)
        .max(input.oom_floor)
        .min(1000);
    let user = built(
        oci::UserBuilder::default()
            .uid(input.user.uid)
            .gid(input.user.gid)
            .additional_gids(input.user.additional_gids.clone())
            .build(),
    )?;
    let mut process = built(
        oci::ProcessBuilder::default()
            .terminal(config.tty)
            .user(user)
            .args(args)
            .env(env(config, input.image))
            .cwd(cwd(config, input.image)?)
            .capabilities(capabilities(bounding, input.user.uid)?)
            .no_new_privileges(sc.is_some_and(|s| s.no_new_privs))
            .oom_score_adj(oom as i32)
            .build(),
    )?;
    // The builder starts from runc's example process; podrun sets no rlimits of its own.
    process.set_rlimits(None);
    process
        .set_apparmor_profile(input.apparmor_profile.clone())
        .set_selinux_label(input.selinux_label.clone());
    Ok(process)
}

/// The whole spec, checked by [`validate`]. Errors name the CRI field at fault.
pub fn build(input: &Input) -> Result<oci::Spec> {
    let config = input.config;
    let sc = config
        .linux
        .as_ref()
        .and_then(|l| l.security_context.as_ref());
    let privileged = sc.is_some_and(|s| s.privileged);
    let ro_files = sc.is_some_and(|s| s.readonly_rootfs);
    let bounding = bounding(sc, &input.own_caps);
    let root = built(
        oci::RootBuilder::default()
            .path(input.rootfs.clone())
            .readonly(ro_files)
            .build(),
    )?;
    let mut spec = built(
        oci::SpecBuilder::default()
            .version("1.0.2")
            .process(process(input, &bounding)?)
            .root(root)
            .hostname(input.pod.hostname.clone())
            .mounts(mounts(input, privileged, ro_files)?)
            .annotations(
                input
                    .annotations
                    .clone()
                    .into_iter()
                    .collect::<std::collections::HashMap<_, _>>(),
            )
            .linux(linux(input, &bounding)?)
            .build(),
    )?;
    // A hostNetwork pod shares the node's UTS namespace: its hostname is the node's.
    if input.pod.netns.is_none() {
        spec.set_hostname(None);
    }
    crate::cdi::apply(&mut spec, &input.cdi)?;
    validate(&spec)?;
    Ok(spec)
}

/// What an OCI runtime needs of a spec and the types do not say: a command, absolute
/// paths, each namespace once. A failure here is podrun's bug, not the caller's.
pub fn validate(spec: &oci::Spec) -> Result<()> {
    let fail = |what: String| Err(Error::Internal(format!("invalid OCI spec: {what}")));
    let Some(process) = spec.process() else {
        return fail("no process".into());
    };
    if process.args().as_ref().is_none_or(|a| a.is_empty()) {
        return fail("process.args is empty".into());
    }
    if !process.cwd().is_absolute() {
        return fail(format!("process.cwd {:?} is not absolute", process.cwd()));
    }
    if !spec.root().as_ref().is_some_and(|r| r.path().is_absolute()) {
        return fail("root.path is not absolute".into());
    }
    for m in spec.mounts().iter().flatten() {
        if !m.destination().is_absolute() {
            return fail(format!(
                "mount destination {:?} is not absolute",
                m.destination()
            ));
        }
    }
    let Some(linux) = spec.linux() else {
        return fail("no linux object".into());
    };
    let mut kinds = std::collections::HashSet::new();
    for ns in linux.namespaces().iter().flatten() {
        if !kinds.insert(ns.typ()) {
            return fail(format!("namespace {} is given twice", ns.typ()));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
