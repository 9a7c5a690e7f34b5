//! What one podrund instance holds: its configuration, the binaries it runs, the CNI
//! executor and the pod index.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::binaries::{find_binary, Binaries};
use crate::cni::{Exec, ProcessExec};
use crate::config::Config;
use crate::container::Containers;
use crate::error::Result;
use crate::image::{ImageStore, PullOptions};
use crate::sandbox::Sandboxes;

pub struct Node {
    pub config: Config,
    pub binaries: Binaries,
    pub cni: Arc<dyn Exec>,
    pub sandboxes: Sandboxes,
    pub images: ImageStore,
    pub containers: Containers,
    /// The OCI runtime used when a pod names no handler.
    pub default_runtime: Result<PathBuf, String>,
    /// Held shared by every operation that changes pods; shutdown takes it exclusively,
    /// so podrund never exits half-way through making or tearing down a pod.
    pub inflight: Arc<tokio::sync::RwLock<()>>,
    pub streaming: crate::streaming::Streaming,
    /// The previous CPU sample of each cgroup, for usage_nano_cores.
    pub samples: crate::cgroup::CpuSamples,
    /// Container and pod events, for GetContainerEvents.
    pub events: crate::events::Events,
    /// The node's pod CIDR, as kubelet last gave it (UpdateRuntimeConfig). The CNI
    /// configuration decides addresses; this is reported in verbose Status.
    pub pod_cidr: std::sync::Mutex<String>,
    /// What the leak audit found when podrund started (verbose Status shows it).
    pub audit_at_start: std::sync::Mutex<crate::leak::Report>,
    /// The NRI plugins, when `nri-socket` is set.
    pub nri: Option<Arc<crate::nri::Nri>>,
    /// The LSMs the host's kernel enforces (AppArmor, SELinux).
    pub lsm: crate::container::lsm::Host,
    /// What each runtime handler can do, found out on first use.
    handlers: std::sync::OnceLock<Vec<podrun_proto::cri::RuntimeHandler>>,
}

impl Node {
    pub fn new(config: Config) -> Result<Node> {
        if let Some(name) = config
            .default_runtime_handler
            .as_ref()
            .filter(|n| !config.runtime_handlers.contains_key(*n))
        {
            return Err(crate::error::Error::invalid(
                "default-runtime-handler",
                format!("{name:?} is not a configured runtime handler"),
            ));
        }
        close_dirs(&config)?;
        let cni = Arc::new(ProcessExec {
            bin_dirs: config.cni_bin_dirs.clone(),
            timeout: Duration::from_secs(config.cni_timeout),
        });
        Ok(Node {
            binaries: Binaries::find(),
            cni,
            sandboxes: Sandboxes::default(),
            images: ImageStore::open(
                &config.root,
                PullOptions {
                    registry_config: config.registry_config_path.clone(),
                    timeout: Duration::from_secs(config.registry_timeout),
                },
            )?,
            containers: Containers::default(),
            default_runtime: default_runtime(),
            inflight: Arc::default(),
            streaming: crate::streaming::Streaming::bind(
                &config.streaming_address,
                Duration::from_secs(config.streaming_token_ttl),
            )?,
            samples: Default::default(),
            handlers: Default::default(),
            pod_cidr: Default::default(),
            audit_at_start: Default::default(),
            events: Default::default(),
            lsm: crate::container::lsm::Host::detect(),
            nri: config.nri_socket.as_ref().map(|_| Arc::default()),
            config,
        })
    }
}

impl Node {
    /// Runs `work` to its end in a task of its own, counted as in flight: a client that
    /// gives up (tonic drops the request's future) cannot cut it half-way, and shutdown
    /// waits for it. Not to be nested: shutdown's exclusive lock would queue before it.
    pub async fn detached<T, F>(
        self: &Arc<Self>,
        what: &'static str,
        work: F,
    ) -> crate::error::Result<T>
    where
        T: Send + 'static,
        F: std::future::Future<Output = crate::error::Result<T>> + Send + 'static,
    {
        let node = self.clone();
        // The request's span (method, pod, container) goes with the work.
        let work = tracing::Instrument::in_current_span(work);
        tokio::spawn(async move {
            let _inflight = node.inflight.read().await;
            work.await
        })
        .await
        .map_err(|e| crate::error::Error::Internal(format!("{what} task failed: {e}")))?
    }

    /// The OCI runtime binary for a runtime handler: "" is the default handler (the
    /// configured one, else crun where it can run here, else runc); other names are the
    /// configured handlers (`runc` and `crun` always).
    pub fn oci_runtime(&self, handler: &str) -> crate::error::Result<PathBuf> {
        use crate::error::Error;
        let Some((handler, binary)) = self.handler(handler)? else {
            return self
                .default_runtime
                .clone()
                .map_err(Error::FailedPrecondition);
        };
        match binary.is_absolute() {
            true if binary.is_file() => Ok(binary.clone()),
            true => Err(Error::FailedPrecondition(format!(
                "handler {handler:?}: {} does not exist",
                binary.display()
            ))),
            false => {
                find_binary(&binary.to_string_lossy(), None).map_err(Error::FailedPrecondition)
            }
        }
    }
}

/// Makes podrund's directories and closes those that hold container filesystems to every
/// user but root (0700), so that no unprivileged host user can run an image's setuid files
/// or reach into a rootfs (the class of containerd's CVE-2021-41103). The roots themselves
/// stay traversable (0711). Modes are set on every start, also on directories an older
/// version made.
fn close_dirs(config: &Config) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let dirs = [
        (config.root.clone(), 0o711),
        (config.root.join("images"), 0o700),
        (config.root.join("containers"), 0o700),
        (config.root.join("pods"), 0o700),
        (config.state.clone(), 0o711),
        // Traversable, not listable: a user-namespaced container's runtime reaches its
        // rootfs as the pod's root; each container's own directory is 0700, owned by root
        // or by the pod's root.
        (config.state.join("containers"), 0o711),
        (config.state.join("pods"), 0o711),
    ];
    for (dir, mode) in dirs {
        std::fs::create_dir_all(&dir).map_err(crate::error::Error::io("creating", &dir))?;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(mode))
            .map_err(crate::error::Error::io("setting the mode of", &dir))?;
    }
    Ok(())
}

/// The handlers podrund serves ("" is the default, then each configured one whose runtime
/// is installed) and their features, as Status reports them.
impl Node {
    pub fn runtime_handlers(&self) -> Vec<podrun_proto::cri::RuntimeHandler> {
        self.handlers
            .get_or_init(|| {
                // podrund makes the user namespace and the idmapped layers itself, so
                // every handler can, where the kernel and the store's file system can.
                let userns = &crate::userns::supported(&self.config.root.join("images"));
                std::iter::once("")
                    .chain(self.config.runtime_handlers.keys().map(String::as_str))
                    .filter_map(|name| {
                        let binary = self.oci_runtime(name).ok()?;
                        Some(podrun_proto::cri::RuntimeHandler {
                            name: name.to_owned(),
                            features: Some(podrun_proto::cri::RuntimeHandlerFeatures {
                                recursive_read_only_mounts: supports_rro(&binary),
                                user_namespaces: *userns,
                            }),
                        })
                    })
                    .collect()
            })
            .clone()
    }

    /// The configured handler `name` stands for and its runtime, without touching the
    /// file system; None for the automatic default. An unknown name is InvalidArgument
    /// naming the known ones.
    pub fn handler<'a>(
        &'a self,
        name: &'a str,
    ) -> crate::error::Result<Option<(&'a str, &'a PathBuf)>> {
        let name = match (name, &self.config.default_runtime_handler) {
            ("", None) => return Ok(None),
            ("", Some(default)) => default.as_str(),
            (name, _) => name,
        };
        match self.config.runtime_handlers.get_key_value(name) {
            Some((name, binary)) => Ok(Some((name.as_str(), binary))),
            None => {
                let known: Vec<&str> = self
                    .config
                    .runtime_handlers
                    .keys()
                    .map(String::as_str)
                    .collect();
                Err(crate::error::Error::invalid(
                    "runtime_handler",
                    format!("unknown handler {name:?} (known: {})", known.join(", ")),
                ))
            }
        }
    }

    /// Does the handler `name` support recursive read-only mounts?
    pub fn handler_supports_rro(&self, name: &str) -> bool {
        self.runtime_handlers()
            .iter()
            .any(|h| h.name == name && h.features.is_some_and(|f| f.recursive_read_only_mounts))
    }
}

/// Recursive read-only mounts need `mount_setattr` (Linux 5.12) and a runtime that knows
/// the `rro` option: one whose `features` lists it (runc >= 1.1), or crun >= 1.8, which
/// has it without a `features` command.
fn supports_rro(binary: &Path) -> bool {
    let kernel = nix::sys::utsname::uname()
        .ok()
        .and_then(|u| {
            let release = u.release().to_string_lossy().into_owned();
            let mut parts = release.split(|c: char| !c.is_ascii_digit());
            Some((
                parts.next()?.parse::<u32>().ok()?,
                parts.next()?.parse::<u32>().ok()?,
            ))
        })
        .is_some_and(|v| v >= (5, 12));
    let output = |arg: &str| {
        std::process::Command::new(binary)
            .arg(arg)
            .stderr(std::process::Stdio::null())
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
    };
    let runtime = match output("features") {
        Some(features) => features.contains("\"rro\""),
        None => output("--version").is_some_and(|v| {
            let version = v.lines().next().unwrap_or_default();
            let mut numbers = version
                .strip_prefix("crun version ")
                .unwrap_or_default()
                .split('.')
                .map(|n| n.parse::<u32>().unwrap_or(0));
            (numbers.next().unwrap_or(0), numbers.next().unwrap_or(0)) >= (1, 8)
        }),
    };
    kernel && runtime
}

/// crun when it is installed and can run here, else runc. crun refuses cgroup v1 hosts
/// whose unified hierarchy also holds controllers (hugetlb not mounted as v1, on these
/// machines); hack/setup mounts it.
fn default_runtime() -> Result<PathBuf, String> {
    let hybrid_with_controllers =
        std::fs::read_to_string("/sys/fs/cgroup/unified/cgroup.controllers")
            .is_ok_and(|c| !c.trim().is_empty());
    match (find_binary("crun", None), hybrid_with_controllers) {
        (Ok(crun), false) => Ok(crun),
        (Ok(_), true) => {
            tracing::warn!("crun cannot run on this hybrid cgroup host (controllers in /sys/fs/cgroup/unified); using runc. Mount the v1 hugetlb hierarchy (hack/setup does) to use crun");
            find_binary("runc", None)
        }
        (Err(_), _) => find_binary("runc", None),
    }
    .map_err(|_| "no OCI runtime: install crun or runc (hack/setup does)".to_owned())
}

impl Node {
    /// Publishes `kind` for `id` (a container, or a pod) of pod `pod_id`, with the pod's
    /// status and its containers' as they are now.
    pub(crate) fn publish_event(
        &self,
        pod_id: &str,
        id: &str,
        kind: podrun_proto::cri::ContainerEventType,
    ) {
        if !self.events.listened() {
            return;
        }
        let pod_sandbox_status = self
            .sandboxes
            .get(pod_id)
            .ok()
            .map(|p| crate::sandbox::cri_status(&p.view()));
        let containers_statuses = self
            .containers
            .of_pod(pod_id)
            .iter()
            .map(|c| crate::container::cri_status(&c.view()))
            .collect();
        self.events
            .publish(podrun_proto::cri::ContainerEventResponse {
                container_id: id.to_owned(),
                container_event_type: kind as i32,
                created_at: crate::clock::now_nanos(),
                pod_sandbox_status,
                containers_statuses,
            });
    }
}

impl Node {
    /// The Prometheus gauges as the node stands now.
    pub fn gauges(&self) -> crate::prometheus::Gauges {
        use crate::container::State as C;
        use crate::sandbox::State as P;
        let mut pods = vec![("ready", 0), ("notready", 0), ("creating", 0)];
        for pod in self.sandboxes.all() {
            let i = pod.with_view(|r| match r.state {
                P::Ready => 0,
                P::NotReady => 1,
                P::Creating => 2,
            });
            pods[i].1 += 1;
        }
        let mut containers = vec![
            ("created", 0),
            ("running", 0),
            ("exited", 0),
            ("unknown", 0),
        ];
        for c in self.containers.all() {
            let i = c.with_view(|r| match r.state {
                C::Created => 0,
                C::Running => 1,
                C::Exited => 2,
                _ => 3,
            });
            containers[i].1 += 1;
        }
        let audit = self.audit_at_start.lock();
        let findings = audit.unwrap_or_else(|p| p.into_inner()).counts();
        crate::prometheus::Gauges {
            pods,
            containers,
            findings,
        }
    }
}
