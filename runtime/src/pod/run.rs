//! RunPodSandbox: validate, reserve the pod's identity, persist the record, make the
//! netns, cgroup and shm while the shim starts, overlap CNI ADD with the pause start, and
//! write the pod's files. Any failure tears down whatever was made, in reverse, with a
//! time budget of its own; a client that gives up does not cut the work half-way, because
//! it runs in a task of its own while the pod's identity stays reserved.

use std::sync::Arc;
use std::time::{Duration, Instant};

use podrun_proto::cri;
use serde_json::{json, Map, Value};

use super::stop;
use crate::cni::{Attachment, Network};
use crate::error::{Error, Result};
use crate::node::Node;
use crate::sandbox::{
    files, infra_spec, namespace_mode, persist, shim, user_namespace, PodDirs, PodKey, Record,
    State, DEFAULT_CGROUP_PARENT, RECORD_VERSION,
};
use crate::{cgroup, netns, store};

/// The time rollback gets, whatever was left of the request's.
const ROLLBACK_TIMEOUT: Duration = Duration::from_secs(60);

pub async fn run(node: Arc<Node>, req: cri::RunPodSandboxRequest) -> Result<String> {
    let config = req
        .config
        .ok_or_else(|| Error::invalid("config", "is required"))?;
    validate(&config)?;
    let sc = config
        .linux
        .as_ref()
        .and_then(|l| l.security_context.as_ref());
    crate::container::lsm::check_pod(sc, &node.lsm)?;
    // An unknown handler is refused before anything is made (its runtime is looked for
    // when a container is created: it may be installed in between).
    node.handler(&req.runtime_handler)?;
    let key = PodKey::of(config.metadata.as_ref().unwrap_or(&Default::default()));
    let guard = node.sandboxes.key_lock(&key).lock_owned().await;
    if let Some(id) = node.sandboxes.find_by_key(&key) {
        return Ok(id);
    }
    let handler = req.runtime_handler;
    let n = node.clone();
    node.detached("RunPodSandbox", async move {
        let _reserved = guard;
        create(&n, config, handler).await
    })
    .await
}

fn validate(config: &cri::PodSandboxConfig) -> Result<()> {
    let m = config
        .metadata
        .as_ref()
        .ok_or_else(|| Error::invalid("config.metadata", "is required"))?;
    for (field, value) in [
        ("config.metadata.name", &m.name),
        ("config.metadata.namespace", &m.namespace),
        ("config.metadata.uid", &m.uid),
    ] {
        if value.is_empty() {
            return Err(Error::invalid(field, "is required"));
        }
    }
    if let Some(parent) = config
        .linux
        .as_ref()
        .map(|l| l.cgroup_parent.as_str())
        .filter(|p| !p.is_empty())
    {
        cgroup::validate(parent)?;
    }
    for p in &config.port_mappings {
        if !(0..=65535).contains(&p.host_port) || !(1..=65535).contains(&p.container_port) {
            return Err(Error::invalid(
                "config.port_mappings",
                format!("ports out of range: {p:?}"),
            ));
        }
    }
    Ok(())
}

async fn create(node: &Node, config: cri::PodSandboxConfig, handler: String) -> Result<String> {
    if let Some(missing) = node.binaries.missing() {
        return Err(Error::FailedPrecondition(missing));
    }
    let id = store::new_id()?;
    let dirs = PodDirs::new(&node.config, &id);
    let mut record = plan(node, &id, config, handler)?;
    let started = Instant::now();
    let made = async {
        make(node, &dirs, &mut record).await?;
        record.state = record.state.to(State::Ready)?;
        persist(&dirs, &record)?;
        crate::crash::point("run:ready-persisted");
        Ok(())
    }
    .await;
    match made {
        Ok(()) => {
            tracing::debug!(pod = %id, total_ms = started.elapsed().as_millis() as u64, "RunPodSandbox done");
            let ready = record.clone();
            node.sandboxes.insert(record);
            node.publish_event(&id, &id, cri::ContainerEventType::ContainerCreatedEvent);
            super::pod_event(node, &ready, cri::ContainerEventType::ContainerStartedEvent).await;
            Ok(id)
        }
        Err(cause) => {
            tracing::warn!(pod = %id, error = %cause, "RunPodSandbox failed; rolling back");
            let rollback = tokio::time::timeout(ROLLBACK_TIMEOUT, async {
                stop::teardown(node, &mut record).await?;
                super::remove::remove_dirs(&dirs)
            })
            .await
            .unwrap_or_else(|_| {
                Err(Error::Timeout {
                    what: "rollback".into(),
                    secs: ROLLBACK_TIMEOUT.as_secs(),
                })
            });
            match rollback {
                Ok(()) => Err(cause),
                Err(rollback) => {
                    // Keep the pod listed as NotReady so Stop/Remove can finish the job later.
                    record.state = State::NotReady;
                    record.stopped = false;
                    let _ = persist(&dirs, &record);
                    node.sandboxes.insert(record);
                    Err(Error::Rollback {
                        cause: Box::new(cause),
                        rollback: Box::new(rollback),
                    })
                }
            }
        }
    }
}

/// Decides every name and path the pod will own, before anything is made.
fn plan(node: &Node, id: &str, config: cri::PodSandboxConfig, handler: String) -> Result<Record> {
    let host_network = namespace_mode(&config, |o| o.network) == cri::NamespaceMode::Node;
    let dirs = PodDirs::new(&node.config, id);
    let parent = config
        .linux
        .as_ref()
        .map(|l| l.cgroup_parent.as_str())
        .filter(|p| !p.is_empty())
        .unwrap_or(DEFAULT_CGROUP_PARENT);
    let netns = (!host_network).then(|| node.config.netns_dir.join(format!("podrun-{id}")));
    let network = match &netns {
        None => None,
        Some(path) => {
            let net = Network::load_first(&node.config.cni_conf_dir)?.ok_or_else(|| {
                Error::FailedPrecondition(format!(
                    "network not ready: no CNI configuration in {}",
                    node.config.cni_conf_dir.display()
                ))
            })?;
            Some(attachment(net, id, path, &config))
        }
    };
    let field = "config.linux.security_context.namespace_options.userns_options";
    let requested = crate::userns::requested(user_namespace(&config), field)?;
    let host_pid_or_ipc = namespace_mode(&config, |o| o.pid) == cri::NamespaceMode::Node
        || namespace_mode(&config, |o| o.ipc) == cri::NamespaceMode::Node;
    if requested.is_some() && (host_network || host_pid_or_ipc) {
        return Err(Error::invalid(
            field,
            "a user namespace needs the pod's own network, pid and ipc namespaces",
        ));
    }
    let userns = requested.map(|(uids, gids)| crate::userns::UserNs {
        uids,
        gids,
        pin: node.config.state.join("userns").join(id),
    });
    let created_at = crate::clock::now_nanos();
    Ok(Record {
        version: RECORD_VERSION,
        id: id.to_owned(),
        state: State::Creating,
        runtime_handler: handler,
        created_at,
        netns,
        cgroup: format!("{}/{id}", parent.trim_end_matches('/')),
        shim_socket: node
            .config
            .state
            .join("s")
            .join(format!("{}.sock", &id[..32])),
        shim: None,
        pause: None,
        network,
        ips: Vec::new(),
        shm: (namespace_mode(&config, |o| o.ipc) != cri::NamespaceMode::Node)
            .then(|| dirs.state.join("shm")),
        stopped: false,
        userns,
        reason: String::new(),
        del_failures: 0,
        config,
    })
}

fn attachment(
    network: Network,
    id: &str,
    netns: &std::path::Path,
    config: &cri::PodSandboxConfig,
) -> Attachment {
    let m = config.metadata.clone().unwrap_or_default();
    let args = [
        ("IgnoreUnknown", "1"),
        ("K8S_POD_NAMESPACE", m.namespace.as_str()),
        ("K8S_POD_NAME", m.name.as_str()),
        ("K8S_POD_INFRA_CONTAINER_ID", id),
        ("K8S_POD_UID", m.uid.as_str()),
    ];
    let mut capabilities = Map::new();
    let ports: Vec<Value> = config
        .port_mappings
        .iter()
        .filter(|p| p.host_port > 0)
        .map(|p| {
            let protocol = cri::Protocol::try_from(p.protocol).unwrap_or(cri::Protocol::Tcp).as_str_name().to_lowercase();
            json!({"hostPort": p.host_port, "containerPort": p.container_port, "protocol": protocol, "hostIP": p.host_ip})
        })
        .collect();
    if !ports.is_empty() {
        capabilities.insert("portMappings".into(), Value::Array(ports));
    }
    if let Some(dns) = &config.dns_config {
        capabilities.insert(
            "dns".into(),
            json!({"servers": dns.servers, "searches": dns.searches, "options": dns.options}),
        );
    }
    Attachment {
        network,
        container_id: id.to_owned(),
        netns: netns.to_owned(),
        ifname: "eth0".into(),
        args: args
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        capabilities,
        result: None,
    }
}

/// Makes the pod's resources. The record names them all up front and is persisted before
/// the first one exists, so a crash anywhere leaves a record that Stop/Remove can act on.
async fn make(node: &Node, dirs: &PodDirs, record: &mut Record) -> Result<()> {
    let phase = Instant::now();
    for dir in [&dirs.root, &dirs.state] {
        std::fs::create_dir_all(dir).map_err(Error::io("creating", dir))?;
    }
    // The record is there, whole, before any resource exists, so a crash of podrund from
    // here on finds it; its name is durable (its directory synced, meanwhile) before CNI
    // ADD, the first step whose effect, an IP reservation on disk, outlives a power cut:
    // the netns, cgroup, mounts and processes made before then do not.
    store::write_content(&dirs.record(), record)?;
    let path = dirs.record();
    let synced = blocking(move || store::sync_dir(&path));
    crate::crash::point("run:record-written");
    let t_dirs = phase.elapsed();

    // From here everything hangs off the persisted record. The netns and the cgroup with
    // /dev/shm are made on threads of their own while the shim is spawned; CNI ADD starts
    // as soon as the netns exists, and the pause start, overlapping it, once the cgroup
    // does.
    let phase = Instant::now();
    let netns = record.netns.clone().map(|path| {
        let dir = node.config.netns_dir.clone();
        let name = path
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        let userns = record.userns.clone();
        blocking(move || match userns {
            Some(u) => crate::userns::create(&u, &dir, &name).map(drop),
            None => netns::create(&dir, &name).map(drop),
        })
    });
    let (cgroup, shm) = (record.cgroup.clone(), record.shm.clone());
    let cgroup_shm = blocking(move || {
        cgroup::create(&cgroup)?;
        shm.as_deref().map_or(Ok(()), files::mount_shm)
    });
    let spawned = store::write_volatile(
        &dirs.state.join("config.json"),
        &infra_spec::pause_spec(record),
    )
    .and_then(|()| {
        shim::spawn(
            &node.binaries,
            &record.id,
            &record.shim_socket,
            &dirs.state.join("shim.log"),
            &node.config.listen,
        )
    });
    if let Ok(process) = &spawned {
        record.shim = Some(*process);
    }
    let t_shim_spawn = phase.elapsed();
    let netns = match netns {
        Some(made) => made.await,
        None => Ok(()),
    };
    let t_netns = phase.elapsed();

    let phase = Instant::now();
    let mut network = record.network.take();
    let cni = async {
        // Both awaited before either error is returned: rollback must not race the sync.
        let synced = synced.await;
        netns?;
        synced?;
        let start = Instant::now();
        if let Some(att) = network.as_mut() {
            att.add(node.cni.as_ref()).await?;
        }
        Ok::<_, Error>(start.elapsed())
    };
    let pause = async {
        cgroup_shm.await?;
        spawned?;
        let start = Instant::now();
        let shim = shim::Shim::connect(&record.id, &record.shim_socket).await?;
        let pid = shim.create_and_start(&record.id, &dirs.state).await?;
        Ok::<_, Error>((pid, start.elapsed()))
    };
    let (cni, pause) = tokio::join!(cni, pause);
    let attached = network.as_ref().is_some_and(|a| a.result.is_some());
    record.network = network;
    if let Ok((pid, _)) = &pause {
        record.pause = store::ProcessId::of(*pid as i32);
    }
    let (t_cni, (_, t_pause)) = (cni?, pause?);
    crate::crash::point("run:attached");
    if record.pause.is_none() {
        let message = "pause exited as soon as it started; see the shim log".to_owned();
        return Err(Error::Shim {
            pod: record.id.clone(),
            message,
        });
    }
    let t_both = phase.elapsed();

    record.ips = match &record.network {
        Some(att) if attached => att.ips().iter().map(ToString::to_string).collect(),
        _ => files::node_ips().iter().map(ToString::to_string).collect(),
    };
    files::write(
        &dirs.state,
        &record.config,
        record.netns.is_none(),
        record.ips.first().map(String::as_str),
    )?;
    tracing::debug!(
        pod = %record.id,
        dirs_ms = ms(t_dirs), netns_ms = ms(t_netns), shim_spawn_ms = ms(t_shim_spawn),
        cni_add_ms = ms(t_cni), shim_pause_ms = ms(t_pause), overlapped_ms = ms(t_both),
        "RunPodSandbox phases"
    );
    Ok(())
}

/// Starts blocking work (syscalls that may sleep, or that change the calling thread's
/// namespaces) on a thread of its own, now; the future gives its result.
fn blocking(
    work: impl FnOnce() -> Result<()> + Send + 'static,
) -> impl std::future::Future<Output = Result<()>> {
    let handle = tokio::task::spawn_blocking(work);
    async move { handle.await.map_err(|e| Error::Internal(e.to_string()))? }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(name: &str, namespace: &str, uid: &str) -> cri::PodSandboxConfig {
        cri::PodSandboxConfig {
            metadata: Some(cri::PodSandboxMetadata {
                name: name.into(),
                namespace: namespace.into(),
                uid: uid.into(),
                attempt: 0,
            }),
            ..Default::default()
        }
    }

    #[test]
    fn missing_metadata_fields_are_named() {
        let field = |c: &cri::PodSandboxConfig| match validate(c) {
            Err(Error::InvalidArgument { field, .. }) => field,
            other => panic!("{other:?}"),
        };
        assert_eq!(field(&config("", "ns", "u")), "config.metadata.name");
        assert_eq!(field(&config("n", "", "u")), "config.metadata.namespace");
        assert_eq!(field(&config("n", "ns", "")), "config.metadata.uid");
        assert_eq!(field(&cri::PodSandboxConfig::default()), "config.metadata");
        assert!(validate(&config("n", "ns", "u")).is_ok());
    }

    #[test]
    fn port_mappings_and_dns_become_capability_args() {
        let mut c = config("web", "default", "u1");
        c.port_mappings = vec![
            cri::PortMapping {
                protocol: cri::Protocol::Udp as i32,
                container_port: 53,
                host_port: 5353,
                host_ip: "127.0.0.1".into(),
            },
            cri::PortMapping {
                protocol: 0,
                container_port: 80,
                host_port: 0,
                host_ip: String::new(),
            },
        ];
        c.dns_config = Some(cri::DnsConfig {
            servers: vec!["10.96.0.10".into()],
            ..Default::default()
        });
        let net = Network {
            name: "n".into(),
            cni_version: "1.0.0".into(),
            plugins: vec![],
            source: "x".into(),
            disable_gc: false,
        };
        let att = attachment(net, "id1", std::path::Path::new("/run/netns/p"), &c);
        assert_eq!(
            Value::Object(att.capabilities.clone()),
            json!({"portMappings": [{"hostPort": 5353, "containerPort": 53, "protocol": "udp", "hostIP": "127.0.0.1"}],
                   "dns": {"servers": ["10.96.0.10"], "searches": [], "options": []}})
        );
        assert!(att
            .args
            .contains(&("K8S_POD_INFRA_CONTAINER_ID".into(), "id1".into())));
        assert_eq!(att.args[0], ("IgnoreUnknown".into(), "1".into()));
    }
}
