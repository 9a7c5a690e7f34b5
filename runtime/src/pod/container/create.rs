//! CreateContainer: check the request against the pod and the image store, then make the
//! rootfs (an overlay of the image's layers with a per-container upper dir), the bundle
//! (config.json from [`oci_spec::build`]) and the task in the pod's shim. A failure undoes every
//! earlier step; a retry of the same (pod, name, attempt) gets the same container.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use nix::mount::{umount2, MntFlags};
use podrun_proto::cri;

use crate::container::lsm;
use crate::container::oci_spec::{self, Pod};
use crate::container::{now_nanos, persist, user, Dirs, Record, State, RECORD_VERSION};
use crate::error::{Error, Result};
use crate::node::Node;
use crate::sandbox;
use crate::store;

use super::checks::*;
use super::host::*;
use super::rootfs::*;

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
    // A file, not a name: a checkpoint archive to restore from (as CRI-O and containerd 2).
    if image_name.starts_with('/') && Path::new(&image_name).is_file() {
        let runtime = node.oci_runtime(&pod.runtime_handler)?;
        let archive = image_name.clone();
        // The probe runs crun and criu: not on an async worker.
        let refusal =
            tokio::task::spawn_blocking(move || super::checkpoint::restore(&archive, &runtime))
                .await
                .map_err(|e| Error::Internal(format!("probing CRIU: {e}")))?;
        return Err(refusal);
    }
    let image = node
        .images
        .find(&image_name)
        .ok_or_else(|| Error::NotFound {
            what: "image",
            id: image_name.clone(),
        })?;
    let mut volumes = Vec::new();
    for (i, m) in config.mounts.iter().enumerate() {
        if let Some(image) = check_image_volume(i, m, &node.images)? {
            volumes.push((i, image));
        } else {
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
        }
        let which = format!("mounts[{i}]: ");
        oci_spec::container_path(&m.container_path, "config.mounts.container_path", &which)?;
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
    let mut prepared = prepare(&node, &config, sc)?;
    prepared.volumes = volumes;
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
        let reserved = guard;
        // RemoveImage keeps these layers until the container is recorded as using them.
        let _layers = node.images.use_layers(&image.layers);
        let _volume_layers: Vec<_> = prepared.volumes.iter().map(|(_, v)| node.images.use_layers(&v.layers)).collect();
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
            volume_images: prepared.volumes.iter().map(|(_, v)| v.id.clone()).collect(),
        };
        match make(&node, &dirs, &pod, &image, &mut record, pid_target, &mut prepared).await {
            Ok(()) => {
                let created = record.clone();
                node.containers.insert(record);
                drop(reserved);
                let kind = podrun_proto::cri::ContainerEventType::ContainerCreatedEvent;
                crate::pod::container_event(&node, &created, kind).await;
                Ok(id)
            }
            Err(cause) => {
                tracing::warn!(container = %id, error = %cause, "CreateContainer failed; rolling back");
                // Plugins that saw the create learn it did not happen (containerd's undo).
                if let Some(nri) = node.nri.as_ref().filter(|_| prepared.nri_consulted) {
                    let nri_pod = crate::nri::convert::pod(&pod);
                    let gone = crate::nri::convert::container(&record);
                    nri.notify(podrun_proto::nri::Event::StopContainer, &nri_pod, Some(&gone)).await;
                    nri.notify(podrun_proto::nri::Event::RemoveContainer, &nri_pod, Some(&gone)).await;
                }
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

/// What the request asks of the host, resolved and checked before anything is made (so a
/// refusal changes nothing): its seccomp, AppArmor and SELinux confinement, its CDI devices.
struct Prepared {
    seccomp: Option<::oci_spec::runtime::LinuxSeccomp>,
    apparmor: Option<String>,
    selinux: Option<String>,
    cdi: Vec<crate::cdi::Resolved>,
    /// Image volumes: the mount's index and its image.
    volumes: Vec<(usize, crate::image::Image)>,
    /// Whether NRI plugins were asked about the container (and must hear of a rollback).
    nri_consulted: bool,
}

fn prepare(
    node: &Node,
    config: &cri::ContainerConfig,
    sc: Option<&cri::LinuxContainerSecurityContext>,
) -> Result<Prepared> {
    const APPARMOR: &str = "config.linux.security_context.apparmor";
    const SELINUX: &str = "config.linux.security_context.selinux_options";
    let wanted = lsm::apparmor_requested(sc, APPARMOR)?;
    // The kernel's list of profiles is read only when a Localhost one must be in it.
    let loaded = match wanted {
        lsm::AppArmor::Localhost(_) if node.lsm.apparmor => lsm::loaded_profiles(),
        _ => String::new(),
    };
    let apparmor = lsm::apparmor_profile(&wanted, &node.lsm, &loaded, APPARMOR)?;
    if apparmor.as_deref() == Some(lsm::DEFAULT_PROFILE) {
        lsm::load_default_profile()?;
    }
    let options = sc
        .filter(|s| !s.privileged)
        .and_then(|s| s.selinux_options.as_ref());
    let devices = crate::cdi::requested(config)?;
    let cdi = match devices.is_empty() {
        true => Vec::new(),
        false => crate::cdi::Registry::load(&node.config.cdi_spec_dirs).resolve(&devices)?,
    };
    Ok(Prepared {
        seccomp: crate::container::seccomp::localhost(sc)?,
        apparmor,
        selinux: lsm::selinux_label(options, &node.lsm, SELINUX)?,
        cdi,
        volumes: Vec::new(),
        nri_consulted: false,
    })
}

async fn make(
    node: &Node,
    dirs: &Dirs,
    pod: &sandbox::Record,
    image: &crate::image::Image,
    record: &mut Record,
    pid_target: Option<i32>,
    prepared: &mut Prepared,
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
    stage_image_volumes(&node.images, dirs, &mut spec_config, &prepared.volumes)?;
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
        seccomp_localhost: prepared.seccomp.take(),
        apparmor_profile: prepared.apparmor.take(),
        selinux_label: prepared.selinux.take(),
        cdi: std::mem::take(&mut prepared.cdi),
        host_devices: match sc.is_some_and(|s| s.privileged) {
            true => host_devices(),
            false => Vec::new(),
        },
    };
    let mut spec = oci_spec::build(&input)?;
    // NRI plugins adjust the container last, as containerd lets them.
    let nri = node.nri.as_ref();
    if let Some(nri) = nri.filter(|n| n.wants(podrun_proto::nri::Event::CreateContainer)) {
        let nri_pod = crate::nri::convert::pod(pod);
        let nri_container = crate::nri::convert::created(record, &spec);
        prepared.nri_consulted = true;
        let adjustments = nri.create_container(&nri_pod, &nri_container).await?;
        crate::nri::adjust(&mut spec, &adjustments, input.oom_floor)?;
        // What a plugin made of the spec is the plugin's doing, not a podrun bug.
        oci_spec::validate(&spec).map_err(|e| {
            Error::FailedPrecondition(format!(
                "NRI plugins' adjustments made the spec invalid: {e}"
            ))
        })?;
    }
    store::write_volatile(&dirs.state.join("config.json"), &spec)?;
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
