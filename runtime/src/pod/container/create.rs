//! CreateContainer: check the request against the pod and the image store, then make the
//! rootfs (an overlay of the image's layers with a per-container upper dir), the bundle
//! (config.json from [`oci_spec::build`]) and the task in the pod's shim. A failure undoes every
//! earlier step; a retry of the same (pod, name, attempt) gets the same container.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use podrun_proto::cri;

use crate::container::oci_spec::{self, Pod};
use crate::container::{
    mounts_under, now_nanos, persist, user, Dirs, Record, State, RECORD_VERSION,
};
use crate::error::{Error, Result};
use crate::node::Node;
use crate::sandbox;
use crate::store;

pub async fn create(node: Arc<Node>, req: cri::CreateContainerRequest) -> Result<String> {
    let pod = node.sandboxes.get(&req.pod_sandbox_id)?.view();
    if pod.state != sandbox::State::Ready {
        return Err(Error::FailedPrecondition(format!(
            "pod sandbox {} is not ready",
            pod.id
        )));
    }
    let config = req
        .config
        .ok_or_else(|| Error::invalid("config", "is required"))?;
    let metadata = config
        .metadata
        .clone()
        .ok_or_else(|| Error::invalid("config.metadata", "is required"))?;
    if metadata.name.is_empty() {
        return Err(Error::invalid("config.metadata.name", "is required"));
    }
    let image_name = config
        .image
        .as_ref()
        .map(|i| i.image.clone())
        .unwrap_or_default();
    if image_name.is_empty() {
        return Err(Error::invalid("config.image.image", "is required"));
    }
    let image = node
        .images
        .find(&image_name)
        .ok_or_else(|| Error::NotFound {
            what: "image",
            id: image_name.clone(),
        })?;
    for (i, m) in config.mounts.iter().enumerate() {
        let host = Path::new(&m.host_path);
        if !host.is_absolute() {
            return Err(Error::InvalidArgument {
                field: "config.mounts.host_path",
                reason: format!("mounts[{i}]: {:?} is not an absolute path", m.host_path),
            });
        }
        if !host.exists() {
            return Err(Error::InvalidArgument {
                field: "config.mounts.host_path",
                reason: format!("mounts[{i}]: {:?} does not exist", m.host_path),
            });
        }
        if m.recursive_read_only {
            check_recursive_read_only(i, m)?;
        }
        check_volume_mappings(i, m, &pod)?;
        check_propagation(i, m)?;
        if !m.container_path.starts_with('/') {
            return Err(Error::InvalidArgument {
                field: "config.mounts.container_path",
                reason: format!("mounts[{i}]: {:?} is not absolute", m.container_path),
            });
        }
    }
    validate_log_path(&config.log_path)?;
    let sc = config
        .linux
        .as_ref()
        .and_then(|l| l.security_context.as_ref());
    if sc.is_some_and(|s| {
        s.run_as_group.is_some() && s.run_as_user.is_none() && s.run_as_username.is_empty()
    }) {
        return Err(Error::invalid(
            "config.linux.security_context.run_as_group",
            "is set without run_as_user or run_as_username",
        ));
    }
    check_capabilities(sc)?;
    let seccomp_localhost = crate::container::seccomp::localhost(sc)?;
    check_userns(&pod, sc)?;
    let privileged = sc.is_some_and(|s| s.privileged);
    let pod_privileged = pod
        .config
        .linux
        .as_ref()
        .and_then(|l| l.security_context.as_ref())
        .is_some_and(|s| s.privileged);
    if privileged && !pod_privileged {
        return Err(Error::invalid(
            "config.linux.security_context.privileged",
            "a privileged container needs a privileged pod (its sandbox config says privileged)",
        ));
    }
    let pid_target = target_pid(&node, &config)?;
    let runtime = node.oci_runtime(&pod.runtime_handler)?;
    if config.mounts.iter().any(|m| m.recursive_read_only)
        && !node.handler_supports_rro(&pod.runtime_handler)
    {
        return Err(Error::FailedPrecondition(format!(
            "runtime handler {:?} does not support recursive read-only mounts (config.mounts.recursive_read_only)",
            pod.runtime_handler
        )));
    }
    let key = (pod.id.clone(), metadata.name.clone(), metadata.attempt);
    let guard = node.containers.name_lock(key.clone()).lock_owned().await;
    if let Some(id) = node.containers.find_by_key(&key) {
        return Ok(id);
    }
    let node_ = node.clone();
    node_.detached("CreateContainer", async move {
        let _reserved = guard;
        // RemoveImage keeps these layers until the container is recorded as using them.
        let _layers = node.images.use_layers(&image.layers);
        let id = store::new_id()?;
        let dirs = Dirs::new(&node.config, &id);
        let log_path = match (pod.config.log_directory.as_str(), config.log_path.as_str()) {
            ("", _) | (_, "") => String::new(),
            (dir, file) => Path::new(dir).join(file).display().to_string(),
        };
        let stop_signal = image.config["StopSignal"].as_str().and_then(signal_number).unwrap_or(libc::SIGTERM);
        let mut record = Record {
            version: RECORD_VERSION,
            id: id.clone(),
            pod_id: pod.id.clone(),
            state: State::Created,
            image_name,
            image_id: image.id.clone(),
            runtime,
            created_at: now_nanos(),
            started_at: 0,
            finished_at: 0,
            exit_code: 0,
            reason: String::new(),
            message: String::new(),
            log_path,
            rootfs: dirs.state.join("rootfs"),
            bundle: dirs.state.clone(),
            pid: 0,
            stop_signal,
            config,
            user: Default::default(),
        };
        match make(&node, &dirs, &pod, &image, &mut record, pid_target, seccomp_localhost).await {
            Ok(()) => {
                let pod_id = record.pod_id.clone();
                node.containers.insert(record);
                node.publish_event(&pod_id, &id, podrun_proto::cri::ContainerEventType::ContainerCreatedEvent);
                Ok(id)
            }
            Err(cause) => {
                tracing::warn!(container = %id, error = %cause, "CreateContainer failed; rolling back");
                if let Ok(shim) = sandbox::shim::Shim::connect(&pod.id, &pod.shim_socket).await {
                    let _ = shim.delete(&id, "").await;
                }
                match teardown_files(&dirs) {
                    Ok(()) => Err(cause),
                    Err(rollback) => Err(Error::Rollback { cause: Box::new(cause), rollback: Box::new(rollback) }),
                }
            }
        }
    })
    .await
}

async fn make(
    node: &Node,
    dirs: &Dirs,
    pod: &sandbox::Record,
    image: &crate::image::Image,
    record: &mut Record,
    pid_target: Option<i32>,
    seccomp_localhost: Option<::oci_spec::runtime::LinuxSeccomp>,
) -> Result<()> {
    for d in [&dirs.root, &dirs.state] {
        std::fs::create_dir_all(d).map_err(Error::io("creating", d))?;
    }
    crate::crash::point("create:dirs-made");
    // The bundle and rootfs mount point: closed to host users (a user-namespaced
    // container's runtime reaches its rootfs as the pod's root, who owns it).
    std::fs::set_permissions(
        &dirs.state,
        std::os::unix::fs::PermissionsExt::from_mode(0o700),
    )
    .map_err(Error::io("setting the mode of", &dirs.state))?;
    if let Some(u) = &pod.userns {
        nix::unistd::chown(
            &dirs.state,
            Some(u.uids.host_id.into()),
            Some(u.gids.host_id.into()),
        )
        .map_err(Error::sys(format!("chown {}", dirs.state.display())))?;
    }
    persist(dirs, record)?;
    crate::crash::point("create:record-written");
    let phase = std::time::Instant::now();
    let layers: Vec<PathBuf> = image
        .layers
        .iter()
        .rev()
        .map(|l| node.images.layer_path(l))
        .collect::<Result<_>>()?;
    match &pod.userns {
        Some(u) => mount_idmapped_rootfs(dirs, &layers, &record.rootfs, u)?,
        None => mount_rootfs(dirs, &layers, &record.rootfs)?,
    }
    crate::crash::point("create:rootfs-mounted");
    let t_rootfs = phase.elapsed();
    let phase = std::time::Instant::now();
    let sc = record
        .config
        .linux
        .as_ref()
        .and_then(|l| l.security_context.as_ref());
    let user = user::resolve(
        &record.rootfs,
        image.config["User"].as_str().unwrap_or_default(),
        sc,
    )?;
    let hostname = std::fs::read_to_string(
        node.config
            .state
            .join("pods")
            .join(&pod.id)
            .join("hostname"),
    )
    .unwrap_or_default();
    let pod_view = Pod {
        netns: pod.netns.clone(),
        pause_pid: pod.pause.map(|p| p.pid).unwrap_or_default(),
        files: node.config.state.join("pods").join(&pod.id),
        shm: pod.shm.clone(),
        cgroup: pod.cgroup.clone(),
        hostname: hostname.trim().to_owned(),
        sysctls: pod
            .config
            .linux
            .as_ref()
            .map(|l| l.sysctls.clone())
            .unwrap_or_default(),
        userns: pod.userns.clone(),
    };
    let mut annotations: BTreeMap<String, String> =
        record.config.annotations.clone().into_iter().collect();
    annotations.insert(
        "io.podrun.oci-runtime".into(),
        record.runtime.display().to_string(),
    );
    annotations.insert(crate::oci_config::CONTAINER_TYPE.into(), "container".into());
    annotations.insert(crate::oci_config::SANDBOX_ID.into(), pod.id.clone());
    record.user = user.clone();
    // Volumes kubelet asks to idmap (a user-namespaced pod's) reach the runtime through
    // idmapped mounts of their sources, staged until the runtime has mounted them.
    let mut spec_config = record.config.clone();
    let staged = match &pod.userns {
        Some(u) => stage_idmapped_volumes(dirs, &mut spec_config, u)?,
        None => Vec::new(),
    };
    let input = oci_spec::Input {
        id: &record.id,
        config: &spec_config,
        image: &image.config,
        pod: &pod_view,
        rootfs: record.rootfs.clone(),
        user,
        oom_floor: own_oom_score_adj(),
        annotations,
        pid_target,
        own_caps: own_capabilities(),
        seccomp_localhost,
        host_devices: match sc.is_some_and(|s| s.privileged) {
            true => host_devices(),
            false => Vec::new(),
        },
    };
    store::write_volatile(&dirs.state.join("config.json"), &oci_spec::build(&input)?)?;
    let stdout = match record.log_path.as_str() {
        "" => String::new(),
        path => format!("cri-log://{path}"),
    };
    let t_bundle = phase.elapsed();
    let phase = std::time::Instant::now();
    // Attach writes into this FIFO; the shim keeps it open and copies it to the process.
    let stdin = match record.config.stdin {
        true => {
            let path = dirs.state.join("stdin");
            nix::unistd::mkfifo(&path, nix::sys::stat::Mode::from_bits_truncate(0o600))
                .map_err(Error::sys(format!("mkfifo {}", path.display())))?;
            path.display().to_string()
        }
        false => String::new(),
    };
    let shim = sandbox::shim::Shim::connect(&pod.id, &pod.shim_socket).await?;
    let created = shim.create(&record.id, &dirs.state, &stdin, &stdout).await;
    // The container's mount namespace holds its own copies now.
    for at in staged {
        let _ = umount2(&at, MntFlags::MNT_DETACH);
        let _ = std::fs::remove_file(&at).or_else(|_| std::fs::remove_dir(&at));
    }
    record.pid = created?;
    crate::crash::point("create:task-created");
    let ms = |d: std::time::Duration| d.as_secs_f64() * 1000.0;
    tracing::debug!(
        container = %record.id, rootfs_ms = ms(t_rootfs), bundle_ms = ms(t_bundle), oci_create_ms = ms(phase.elapsed()),
        "CreateContainer phases"
    );
    persist(dirs, record)
}

/// For `pid: TARGET`, the pid of the running target container whose PID namespace to join.
fn target_pid(node: &Node, config: &cri::ContainerConfig) -> Result<Option<i32>> {
    let options = config
        .linux
        .as_ref()
        .and_then(|l| l.security_context.as_ref())
        .and_then(|s| s.namespace_options.as_ref());
    let Some(o) = options.filter(|o| o.pid == cri::NamespaceMode::Target as i32) else {
        return Ok(None);
    };
    let field = "config.linux.security_context.namespace_options.target_id";
    let target = node
        .containers
        .get(&o.target_id)
        .map_err(|_| Error::invalid(field, format!("no container {:?}", o.target_id)))?
        .view();
    if target.state != State::Running || target.pid == 0 {
        return Err(Error::invalid(
            field,
            format!("container {} is not running", target.id),
        ));
    }
    Ok(Some(target.pid as i32))
}

/// A volume that propagates mounts needs a source that does: shared for Bidirectional,
/// shared or a slave for HostToContainer (as containerd checks); otherwise the container
/// would silently see nothing.
fn check_propagation(i: usize, m: &cri::Mount) -> Result<()> {
    use cri::MountPropagation::*;
    let wanted = match cri::MountPropagation::try_from(m.propagation) {
        Ok(PropagationBidirectional) => &["shared:"][..],
        Ok(PropagationHostToContainer) => &["shared:", "master:"][..],
        _ => return Ok(()),
    };
    let source = std::fs::canonicalize(&m.host_path)
        .map_err(Error::io("resolving the mount source", &m.host_path))?;
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")
        .map_err(Error::io("reading", "/proc/self/mountinfo"))?;
    // The mount the source lies on: the longest mount point that is a prefix of it.
    let optional = mountinfo
        .lines()
        .filter_map(|l| {
            let fields: Vec<&str> = l.split(' ').collect();
            let point = fields.get(4)?;
            let end = fields.iter().position(|f| *f == "-")?;
            Some((Path::new(*point), fields.get(6..end)?.to_vec()))
        })
        .filter(|(point, _)| source.starts_with(point))
        .max_by_key(|(point, _)| point.as_os_str().len())
        .map(|(_, optional)| optional)
        .unwrap_or_default();
    if optional
        .iter()
        .any(|f| wanted.iter().any(|w| f.starts_with(w)))
    {
        return Ok(());
    }
    Err(Error::invalid(
        "config.mounts.propagation",
        format!(
            "mounts[{i}]: {:?} is on a mount that is not {} (make it so with mount --make-rshared)",
            m.host_path,
            if wanted.len() == 1 {
                "shared"
            } else {
                "shared or a slave"
            },
        ),
    ))
}

/// A container's user-namespace options, when it gives them, must be its pod's (as
/// containerd requires): its processes join the pod's user namespace.
fn check_userns(
    pod: &sandbox::Record,
    sc: Option<&cri::LinuxContainerSecurityContext>,
) -> Result<()> {
    let field = "config.linux.security_context.namespace_options.userns_options";
    let Some(options) = sc
        .and_then(|s| s.namespace_options.as_ref())
        .and_then(|o| o.userns_options.as_ref())
    else {
        return Ok(());
    };
    let wanted = crate::userns::requested(Some(options), field)?;
    let has = pod.userns.as_ref().map(|u| (u.uids, u.gids));
    if wanted != has {
        return Err(Error::invalid(
            field,
            format!("{wanted:?} differs from the pod's user namespace {has:?}"),
        ));
    }
    Ok(())
}

/// A volume's id mappings (kubelet gives a user-namespaced pod's volumes its mappings)
/// must be the pod's: podrun idmaps the volume through the pod's user namespace.
fn check_volume_mappings(i: usize, m: &cri::Mount, pod: &sandbox::Record) -> Result<()> {
    if m.uid_mappings.is_empty() && m.gid_mappings.is_empty() {
        return Ok(());
    }
    let field = "config.mounts.uid_mappings";
    let Some(u) = &pod.userns else {
        return Err(Error::invalid(
            field,
            format!("mounts[{i}]: id mappings on a volume of a pod without its own user namespace"),
        ));
    };
    let same = |given: &[cri::IdMapping], ours: &crate::userns::Mapping| matches!(given, [g] if (g.container_id, g.host_id, g.length) == (ours.container_id, ours.host_id, ours.length));
    if !same(&m.uid_mappings, &u.uids) || !same(&m.gid_mappings, &u.gids) {
        return Err(Error::invalid(
            field,
            format!(
                "mounts[{i}]: a volume's id mappings must be its pod's ({:?}, {:?})",
                u.uids, u.gids
            ),
        ));
    }
    Ok(())
}

/// Mounts each volume of `config` that has id mappings, idmapped through the pod's user
/// namespace, at `<state>/volumes/<n>`, and points the volume there; returns the staging
/// mounts, to detach once the runtime has mounted them.
fn stage_idmapped_volumes(
    dirs: &Dirs,
    config: &mut cri::ContainerConfig,
    userns: &crate::userns::UserNs,
) -> Result<Vec<PathBuf>> {
    let mut staged = Vec::new();
    let mapped = |m: &cri::Mount| !m.uid_mappings.is_empty() || !m.gid_mappings.is_empty();
    if !config.mounts.iter().any(mapped) {
        return Ok(staged);
    }
    let fd = crate::userns::open(&userns.pin)?;
    let base = dirs.state.join("volumes");
    std::fs::create_dir_all(&base).map_err(Error::io("creating", &base))?;
    for (i, m) in config
        .mounts
        .iter_mut()
        .enumerate()
        .filter(|(_, m)| mapped(m))
    {
        let source = PathBuf::from(&m.host_path);
        let at = base.join(i.to_string());
        // The staging point is of the source's kind: a directory, or a file.
        match source.is_dir() {
            true => std::fs::create_dir(&at),
            false => std::fs::File::create(&at).map(drop),
        }
        .map_err(Error::io("creating", &at))?;
        crate::userns::mount_idmapped(&source, &at, &fd)?;
        m.host_path = at.display().to_string();
        staged.push(at);
    }
    Ok(staged)
}

/// A recursive read-only mount must be read-only and private (a propagated mount could
/// not stay read-only), as containerd and CRI-O require.
fn check_recursive_read_only(i: usize, m: &cri::Mount) -> Result<()> {
    let field = "config.mounts.recursive_read_only";
    if !m.readonly {
        return Err(Error::invalid(
            field,
            format!(
                "mounts[{i}]: a recursive read-only mount of {:?} must also be readonly",
                m.host_path
            ),
        ));
    }
    if m.propagation != cri::MountPropagation::PropagationPrivate as i32 {
        return Err(Error::invalid(
            field,
            format!(
                "mounts[{i}]: a recursive read-only mount of {:?} needs private propagation",
                m.host_path
            ),
        ));
    }
    Ok(())
}

/// The container's log file is `log_path` under the pod's log directory, and only there:
/// an absolute path or one that climbs out with `..` is refused (the shim opens it as root).
fn validate_log_path(log_path: &str) -> Result<()> {
    let climbs = Path::new(log_path).components().any(|c| {
        !matches!(
            c,
            std::path::Component::Normal(_) | std::path::Component::CurDir
        )
    });
    if climbs {
        return Err(Error::invalid(
            "config.log_path",
            format!("{log_path:?} must be a relative path inside the pod's log_directory"),
        ));
    }
    Ok(())
}

/// The node's devices, for a privileged container (as containerd gives them): every
/// character and block device under /dev, but the per-session and per-container ones.
fn host_devices() -> Vec<::oci_spec::runtime::LinuxDevice> {
    use ::oci_spec::runtime::{LinuxDeviceBuilder, LinuxDeviceType};
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    const SKIP: &[&str] = &[
        "pts",
        "shm",
        "fd",
        "mqueue",
        ".lxc",
        ".lxd-mounts",
        ".udev",
        "console",
    ];
    fn walk(dir: &Path, out: &mut Vec<::oci_spec::runtime::LinuxDevice>) {
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let path = e.path();
            let name = e.file_name();
            if SKIP.iter().any(|s| name == *s) {
                continue;
            }
            let Ok(meta) = std::fs::symlink_metadata(&path) else {
                continue;
            };
            let kind = match meta.file_type() {
                t if t.is_dir() => {
                    walk(&path, out);
                    continue;
                }
                t if t.is_char_device() => LinuxDeviceType::C,
                t if t.is_block_device() => LinuxDeviceType::B,
                _ => continue,
            };
            let rdev = meta.rdev();
            let device = LinuxDeviceBuilder::default()
                .path(path)
                .typ(kind)
                .major(nix::sys::stat::major(rdev) as i64)
                .minor(nix::sys::stat::minor(rdev) as i64)
                .file_mode(meta.mode() & 0o777)
                .uid(meta.uid())
                .gid(meta.gid())
                .build();
            out.extend(device.ok());
        }
    }
    let mut out = Vec::new();
    walk(Path::new("/dev"), &mut out);
    out
}

/// The capabilities podrund itself holds (its effective set): all that a privileged or
/// `ALL` container can get, since no child of podrund can gain more. A host whose bounding
/// set lacks one (CAP_SYS_RESOURCE, on some) runs such containers without it.
fn own_capabilities() -> Vec<String> {
    // They do not change: read once, not on every CreateContainer.
    static OWN: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    OWN.get_or_init(|| match caps::read(None, caps::CapSet::Effective) {
        Ok(held) => oci_spec::names(held),
        Err(e) => {
            tracing::warn!(error = %e, "cannot read podrund's own capabilities; assuming all");
            oci_spec::all_caps()
        }
    })
    .clone()
}

/// Refuses a capability Linux does not define (a typo would otherwise reach the OCI
/// runtime, or be dropped without a word).
fn check_capabilities(sc: Option<&cri::LinuxContainerSecurityContext>) -> Result<()> {
    let Some(c) = sc.and_then(|s| s.capabilities.as_ref()) else {
        return Ok(());
    };
    for (field, list) in [
        ("add_capabilities", &c.add_capabilities),
        ("drop_capabilities", &c.drop_capabilities),
    ] {
        let unknown = list
            .iter()
            .find(|n| !n.eq_ignore_ascii_case("ALL") && oci_spec::capability(n).is_none());
        if let Some(name) = unknown {
            return Err(Error::invalid(
                match field {
                    "add_capabilities" => {
                        "config.linux.security_context.capabilities.add_capabilities"
                    }
                    _ => "config.linux.security_context.capabilities.drop_capabilities",
                },
                format!("{name:?} is not a Linux capability"),
            ));
        }
    }
    Ok(())
}

/// The oom_score_adj of podrund itself: without CAP_SYS_RESOURCE no child may go lower.
fn own_oom_score_adj() -> i64 {
    std::fs::read_to_string("/proc/self/oom_score_adj")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(-1000)
}

fn mount_rootfs(dirs: &Dirs, layers: &[PathBuf], target: &Path) -> Result<()> {
    let (upper, work) = (dirs.root.join("upper"), dirs.root.join("work"));
    let empty = dirs.root.join("empty");
    for d in [&upper, &work, &target.to_path_buf(), &empty] {
        std::fs::create_dir_all(d).map_err(Error::io("creating", d))?;
    }
    let lowers: Vec<String> = match layers.is_empty() {
        true => vec![empty.display().to_string()],
        false => layers.iter().map(|l| l.display().to_string()).collect(),
    };
    let options = format!(
        "lowerdir={},upperdir={},workdir={}",
        lowers.join(":"),
        upper.display(),
        work.display()
    );
    mount(
        Some("overlay"),
        target,
        Some("overlay"),
        MsFlags::empty(),
        Some(options.as_str()),
    )
    .map_err(Error::sys(format!(
        "mounting the rootfs overlay on {}",
        target.display()
    )))
}

/// A user-namespaced container's rootfs: each layer idmapped through the pod's user
/// namespace (so the image's root-owned files are the pod root's), an overlay on them
/// with an upper and work dir owned by the pod's root on the host; the staging mounts of
/// the layers are detached once the overlay holds them.
fn mount_idmapped_rootfs(
    dirs: &Dirs,
    layers: &[PathBuf],
    target: &Path,
    userns: &crate::userns::UserNs,
) -> Result<()> {
    let fd = crate::userns::open(&userns.pin)?;
    let staging = dirs.state.join("layers");
    let mut mapped = Vec::new();
    let result = (|| {
        for (i, layer) in layers.iter().enumerate() {
            let at = staging.join(i.to_string());
            std::fs::create_dir_all(&at).map_err(Error::io("creating", &at))?;
            crate::userns::mount_idmapped(layer, &at, &fd)?;
            mapped.push(at);
        }
        for d in [dirs.root.join("upper"), dirs.root.join("work")] {
            std::fs::create_dir_all(&d).map_err(Error::io("creating", &d))?;
            nix::unistd::chown(
                &d,
                Some(userns.uids.host_id.into()),
                Some(userns.gids.host_id.into()),
            )
            .map_err(Error::sys(format!("chown {}", d.display())))?;
        }
        mount_rootfs(dirs, &mapped, target)
    })();
    // Never a recursive delete here: a staging dir still mounted is an image layer.
    for at in &mapped {
        let _ = umount2(at, MntFlags::MNT_DETACH);
        let _ = std::fs::remove_dir(at);
    }
    let _ = std::fs::remove_dir(&staging);
    result
}

/// Unmounts the rootfs and removes the container's dirs (record last).
pub(super) fn teardown_files(dirs: &Dirs) -> Result<()> {
    // Everything mounted under the state dir (the rootfs; staging mounts of idmapped
    // layers a crash left), deepest first, before anything is deleted: a recursive delete
    // must never reach into an image layer or a volume.
    for point in mounts_under(&dirs.state) {
        match umount2(&point, MntFlags::MNT_DETACH) {
            Ok(()) | Err(nix::Error::EINVAL) | Err(nix::Error::ENOENT) => {}
            Err(e) => return Err(Error::sys(format!("unmounting {}", point.display()))(e)),
        }
    }
    if let Some(still) = mounts_under(&dirs.state).first() {
        return Err(Error::Internal(format!(
            "{} is still mounted; not removing {}",
            still.display(),
            dirs.state.display()
        )));
    }
    for d in [&dirs.state, &dirs.root] {
        match std::fs::remove_dir_all(d) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(Error::io("removing", d)(e))
            }
            _ => {}
        }
    }
    Ok(())
}

/// "SIGTERM", "TERM", "15" -> 15.
pub fn signal_number(name: &str) -> Option<i32> {
    if let Ok(n) = name.parse() {
        return Some(n);
    }
    let name = name.to_uppercase();
    let name = if name.starts_with("SIG") {
        name
    } else {
        format!("SIG{name}")
    };
    name.parse::<nix::sys::signal::Signal>()
        .ok()
        .map(|s| s as i32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_signals_parse_in_every_spelling() {
        assert_eq!(signal_number("SIGUSR1"), Some(libc::SIGUSR1));
        assert_eq!(signal_number("quit"), Some(libc::SIGQUIT));
        assert_eq!(signal_number("9"), Some(9));
        assert_eq!(signal_number("NOPE"), None);
    }
}
