//! Pod sandboxes: their durable record, their state machine and the in-memory index.
//!
//! ```text
//!  RunPodSandbox ─▶ Creating ──all steps done──▶ Ready ──StopPodSandbox──▶ NotReady
//!                      │                           │                          │
//!                      └─step failed: rolled back  └─pause or shim died,      └─RemovePodSandbox─▶ (gone)
//!                        (gone; NotReady if the      or found so on restart ─▶ NotReady
//!                        rollback itself failed)
//! ```
//! A record is persisted as `Creating` before the first resource is made and names every
//! resource the pod will own (netns pin, cgroup, shim socket, CNI attachment), so that a
//! crash at any point leaves enough on disk for Stop and Remove to clean up.

pub(crate) mod files;
pub(crate) mod infra_spec;
pub(crate) mod shim;
mod status;
pub use shim::LISTENER_ENV as SHIM_LISTENER_ENV;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use podrun_proto::cri;
use serde::{Deserialize, Serialize};

use crate::cni::Attachment;
use crate::error::{Error, Result};
use crate::store::{self, ProcessId};

pub(crate) use status::cri_status;
pub use status::{list, status};

/// The format version of [`Record`].
pub(crate) const RECORD_VERSION: u32 = 1;

/// The cgroup parent for pods whose config names none.
pub(crate) const DEFAULT_CGROUP_PARENT: &str = "/podrun";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum State {
    Creating,
    Ready,
    NotReady,
}

impl State {
    /// Checks a transition against the diagram above.
    pub(crate) fn to(self, next: State) -> Result<State> {
        use State::*;
        match (self, next) {
            (Creating, Ready) | (Creating, NotReady) | (Ready, NotReady) | (NotReady, NotReady) => {
                Ok(next)
            }
            _ => Err(Error::FailedPrecondition(format!(
                "pod sandbox cannot go from {self:?} to {next:?}"
            ))),
        }
    }
}

/// Everything podrun knows about one pod, as stored at `<root>/pods/<id>/sandbox.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Record {
    pub version: u32,
    pub id: String,
    pub state: State,
    pub config: cri::PodSandboxConfig,
    pub runtime_handler: String,
    /// Nanoseconds since the epoch.
    pub created_at: i64,
    /// The pinned netns, when the pod has its own network.
    pub netns: Option<PathBuf>,
    /// The pod cgroup (cgroupfs path).
    pub cgroup: String,
    pub shim_socket: PathBuf,
    pub shim: Option<ProcessId>,
    pub pause: Option<ProcessId>,
    /// The CNI attachment, saved before ADD runs and kept until DEL succeeded.
    pub network: Option<Attachment>,
    /// The pod's IPs (primary first) once the network is up; the node's for hostNetwork pods.
    pub ips: Vec<String>,
    /// Where the pod's /dev/shm tmpfs is mounted, when it has one.
    pub shm: Option<PathBuf>,
    /// True once Stop released every resource the pod held.
    pub stopped: bool,
    /// The pod's own user namespace (userns_options mode POD), pinned.
    #[serde(default)]
    pub userns: Option<crate::userns::UserNs>,
    /// Why podrund found the pod not ready when it started (verbose status shows it).
    #[serde(default)]
    pub reason: String,
    /// Failed CNI DEL attempts; after `cni::DEL_ATTEMPTS` the pod is let go.
    #[serde(default)]
    pub del_failures: u32,
}

impl Record {
    pub(crate) fn metadata(&self) -> cri::PodSandboxMetadata {
        self.config.metadata.clone().unwrap_or_default()
    }

    pub(crate) fn key(&self) -> PodKey {
        PodKey::of(&self.metadata())
    }
}

pub(crate) fn namespace_mode(
    config: &cri::PodSandboxConfig,
    pick: impl Fn(&cri::NamespaceOption) -> i32,
) -> cri::NamespaceMode {
    let options = config
        .linux
        .as_ref()
        .and_then(|l| l.security_context.as_ref())
        .and_then(|s| s.namespace_options.as_ref());
    options.map_or(cri::NamespaceMode::Pod, |o| {
        cri::NamespaceMode::try_from(pick(o)).unwrap_or(cri::NamespaceMode::Pod)
    })
}

/// The identity kubelet gives a pod: a retry with the same key is the same pod.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PodKey(String, String, String, u32);

impl PodKey {
    pub(crate) fn of(m: &cri::PodSandboxMetadata) -> PodKey {
        PodKey(
            m.name.clone(),
            m.namespace.clone(),
            m.uid.clone(),
            m.attempt,
        )
    }
}

/// One pod in memory. Its record is behind an async lock that serializes operations on it;
/// readers (status, list) see the last published copy, so a slow Stop blocks no one else.
pub struct Sandbox {
    pub id: String,
    key: PodKey,
    pub(crate) record: tokio::sync::Mutex<Record>,
    view: Mutex<Record>,
    /// Set when the pause or the shim of a Ready pod exits, by a task that waits on their
    /// pidfds: why the pod is no longer ready.
    died: std::sync::OnceLock<&'static str>,
}

impl Sandbox {
    /// Makes `record` what readers see.
    pub(crate) fn publish(&self, record: &Record) {
        *self.view.lock().unwrap_or_else(|p| p.into_inner()) = record.clone();
    }

    /// The record as last published, NotReady if its pause or shim has died since.
    pub(crate) fn view(&self) -> Record {
        self.with_view(Record::clone)
    }

    /// Reads the record as [`Sandbox::view`] returns it, without copying it.
    pub(crate) fn with_view<T>(&self, read: impl FnOnce(&Record) -> T) -> T {
        let mut record = self.view.lock().unwrap_or_else(|p| p.into_inner());
        if let (State::Ready, Some(reason)) = (record.state, self.died.get()) {
            record.state = State::NotReady;
            record.reason = (*reason).to_owned();
        }
        read(&record)
    }

    /// Watches the pause and the shim of a Ready pod: when either exits, the pod is no
    /// longer ready (without which no container can run, be stopped or waited for).
    pub(crate) fn watch(self: &Arc<Sandbox>, pause: ProcessId, shim: ProcessId) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let pod = Arc::downgrade(self);
        runtime.spawn(async move {
            let reason = tokio::select! {
                _ = pause.exited() => "its pause process died",
                _ = shim.exited() => "its shim died",
            };
            if let Some(pod) = pod.upgrade() {
                if pod.with_view(|r| r.state == State::Ready) {
                    crate::prometheus::pod_died(reason);
                }
                let _ = pod.died.set(reason);
            }
        });
    }
}

/// The index of pods, and the reservations that make RunPodSandbox retries safe.
#[derive(Default)]
pub struct Sandboxes {
    pods: Mutex<HashMap<String, Arc<Sandbox>>>,
    keys: store::KeyedLocks<PodKey>,
}

impl Sandboxes {
    pub(crate) fn pods(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Sandbox>>> {
        self.pods.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn insert(&self, record: Record) -> Arc<Sandbox> {
        let watched = match (record.state, record.pause, record.shim) {
            (State::Ready, Some(pause), Some(shim)) => Some((pause, shim)),
            _ => None,
        };
        let pod = Arc::new(Sandbox {
            id: record.id.clone(),
            key: record.key(),
            view: Mutex::new(record.clone()),
            died: Default::default(),
            record: tokio::sync::Mutex::new(record),
        });
        if let Some((pause, shim)) = watched {
            pod.watch(pause, shim);
        }
        self.pods().insert(pod.id.clone(), pod.clone());
        pod
    }

    pub(crate) fn forget(&self, id: &str) {
        self.pods().remove(id);
    }

    pub fn all(&self) -> Vec<Arc<Sandbox>> {
        self.pods().values().cloned().collect()
    }

    /// The pod whose id is `id` or starts with it (a unique prefix, as crictl passes).
    pub fn get(&self, id: &str) -> Result<Arc<Sandbox>> {
        store::by_id_or_prefix(&self.pods(), id, "pod_sandbox_id", "pod sandbox")
    }

    /// The lock that serializes RunPodSandbox calls for one pod identity.
    pub(crate) fn key_lock(&self, key: &PodKey) -> Arc<tokio::sync::Mutex<()>> {
        self.keys.get(key.clone())
    }

    pub(crate) fn find_by_key(&self, key: &PodKey) -> Option<String> {
        self.pods()
            .values()
            .find(|p| p.key == *key)
            .map(|p| p.id.clone())
    }
}

/// Where one pod's files live.
#[derive(Debug, Clone)]
pub(crate) struct PodDirs {
    /// Durable: the record.
    pub root: PathBuf,
    /// Volatile: the bundle, hostname, hosts, resolv.conf, shm mount, shim log.
    pub state: PathBuf,
}

impl PodDirs {
    pub fn new(config: &crate::config::Config, id: &str) -> PodDirs {
        PodDirs {
            root: config.root.join("pods").join(id),
            state: config.state.join("pods").join(id),
        }
    }

    pub(crate) fn record(&self) -> PathBuf {
        self.root.join("sandbox.json")
    }
}

pub(crate) fn persist(dirs: &PodDirs, record: &Record) -> Result<()> {
    store::write_atomic(&dirs.record(), record)
}

/// The pod's user-namespace options, if it gives any.
pub(crate) fn user_namespace(config: &cri::PodSandboxConfig) -> Option<&cri::UserNamespace> {
    config
        .linux
        .as_ref()?
        .security_context
        .as_ref()?
        .namespace_options
        .as_ref()?
        .userns_options
        .as_ref()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    pub(crate) fn only_the_drawn_transitions_are_allowed() {
        use State::*;
        assert!(Creating.to(Ready).is_ok());
        assert!(Ready.to(NotReady).is_ok());
        assert!(NotReady.to(NotReady).is_ok());
        let err = NotReady.to(Ready).unwrap_err();
        assert_eq!(err.kind(), crate::Kind::FailedPrecondition);
        assert!(Ready.to(Creating).is_err());
    }
}
