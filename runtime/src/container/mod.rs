//! App containers: their durable record, their state machine and the in-memory index.
//!
//! ```text
//!  CreateContainer ─▶ Created ──StartContainer──▶ Running ──exit / StopContainer──▶ Exited
//!                        │                                                          │
//!                        └──────────────────────RemoveContainer──────────────────────┴─▶ (gone)
//!  (a record whose shim cannot be asked after a restart is Unknown until it answers)
//! ```
//! The container runs in its pod's shim through the OCI runtime; podrund keeps one task per
//! running container waiting on the shim for its exit, and records it.

pub mod capabilities;
pub mod lsm;
pub mod oci_spec;
pub(crate) mod seccomp;
mod status;
pub mod user;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use podrun_proto::cri;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::store;

pub(crate) use status::cri_status;
pub use status::{list, status};

pub(crate) const RECORD_VERSION: u32 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum State {
    Created,
    Running,
    Exited,
    Unknown,
}

impl State {
    pub(crate) fn to(self, next: State) -> Result<State> {
        use State::*;
        match (self, next) {
            (Created, Running)
            | (Created, Exited)
            | (Running, Exited)
            | (Unknown, _)
            | (_, Unknown)
            | (Exited, Exited) => Ok(next),
            _ => Err(Error::FailedPrecondition(format!(
                "container cannot go from {self:?} to {next:?}"
            ))),
        }
    }
}

/// Everything podrun knows about one container, at `<root>/containers/<id>/container.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Record {
    pub version: u32,
    pub id: String,
    pub pod_id: String,
    pub state: State,
    pub config: cri::ContainerConfig,
    /// The image as the client named it, and the image id it resolved to.
    pub image_name: String,
    pub image_id: String,
    /// The OCI runtime binary it runs with.
    pub runtime: PathBuf,
    pub created_at: i64,
    pub started_at: i64,
    pub finished_at: i64,
    pub exit_code: i32,
    pub reason: String,
    pub message: String,
    /// Absolute; empty when the pod or container gives no log path.
    pub log_path: String,
    pub rootfs: PathBuf,
    pub bundle: PathBuf,
    pub pid: u32,
    /// The signal StopContainer sends first (from the image), as a number.
    pub stop_signal: i32,
    /// The user its processes run as, as resolved at creation.
    #[serde(default)]
    pub user: oci_spec::User,
    /// The images it mounts as volumes (`Mount.image`), by id: in use while it exists.
    #[serde(default)]
    pub volume_images: Vec<String>,
}

impl Record {
    pub(crate) fn key(&self) -> NameKey {
        let m = self.config.metadata.clone().unwrap_or_default();
        (self.pod_id.clone(), m.name, m.attempt)
    }
}

pub struct Container {
    pub id: String,
    pub pod_id: String,
    key: NameKey,
    pub(crate) record: tokio::sync::Mutex<Record>,
    view: Mutex<Record>,
}

impl Container {
    pub(crate) fn publish(&self, r: &Record) {
        *self.view.lock().unwrap_or_else(|p| p.into_inner()) = r.clone();
    }

    pub fn view(&self) -> Record {
        self.with_view(Record::clone)
    }

    /// Reads the record as last published, without copying it.
    pub fn with_view<T>(&self, read: impl FnOnce(&Record) -> T) -> T {
        read(&self.view.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

/// (pod id, container name, attempt): what makes a container unique in its pod.
type NameKey = (String, String, u32);

#[derive(Default)]
pub struct Containers {
    all: Mutex<HashMap<String, Arc<Container>>>,
    /// Names being created: (pod, name, attempt) -> lock.
    names: crate::store::KeyedLocks<NameKey>,
}

impl Containers {
    pub(crate) fn map(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Container>>> {
        self.all.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn insert(&self, r: Record) -> Arc<Container> {
        let c = Arc::new(Container {
            id: r.id.clone(),
            key: r.key(),
            pod_id: r.pod_id.clone(),
            view: Mutex::new(r.clone()),
            record: tokio::sync::Mutex::new(r),
        });
        self.map().insert(c.id.clone(), c.clone());
        c
    }

    pub(crate) fn forget(&self, id: &str) {
        self.map().remove(id);
    }

    pub fn all(&self) -> Vec<Arc<Container>> {
        self.map().values().cloned().collect()
    }

    pub fn of_pod(&self, pod_id: &str) -> Vec<Arc<Container>> {
        self.map()
            .values()
            .filter(|c| c.pod_id == pod_id)
            .cloned()
            .collect()
    }

    /// The containers made from image `image_id`, whatever their state: their rootfs
    /// stands on its layers until they are removed.
    pub fn using_image(&self, image_id: &str) -> Vec<String> {
        let mut ids: Vec<String> = self
            .map()
            .values()
            .map(|c| c.view())
            .filter(|r| r.image_id == image_id || r.volume_images.iter().any(|v| v == image_id))
            .map(|r| r.id)
            .collect();
        ids.sort();
        ids
    }

    /// By id or unique id prefix.
    pub fn get(&self, id: &str) -> Result<Arc<Container>> {
        store::by_id_or_prefix(&self.map(), id, "container_id", "container")
    }

    /// The record of a running container, else FailedPrecondition.
    pub fn running(&self, id: &str) -> Result<Record> {
        let r = self.get(id)?.view();
        if r.state != State::Running {
            return Err(Error::FailedPrecondition(format!(
                "container {} is not running",
                r.id
            )));
        }
        Ok(r)
    }

    pub(crate) fn name_lock(&self, key: NameKey) -> Arc<tokio::sync::Mutex<()>> {
        self.names.get(key)
    }

    pub(crate) fn find_by_key(&self, key: &NameKey) -> Option<String> {
        self.map()
            .values()
            .find(|c| c.key == *key)
            .map(|c| c.id.clone())
    }
}

/// Where one container's files live.
#[derive(Debug, Clone)]
pub(crate) struct Dirs {
    /// Durable: record, overlay upper and work dirs.
    pub root: PathBuf,
    /// Volatile: bundle (config.json), rootfs mount point, exec FIFOs.
    pub state: PathBuf,
}

impl Dirs {
    pub fn new(config: &crate::config::Config, id: &str) -> Dirs {
        Dirs {
            root: config.root.join("containers").join(id),
            state: config.state.join("containers").join(id),
        }
    }

    pub(crate) fn record(&self) -> PathBuf {
        self.root.join("container.json")
    }
}

pub(crate) fn persist(dirs: &Dirs, r: &Record) -> Result<()> {
    store::write_atomic(&dirs.record(), r)
}

pub(crate) use crate::clock::now_nanos;

/// The OCI builders fail only on a field they require; podrun sets every one, so such a
/// failure is podrun's own bug.
pub(crate) fn built<T>(r: std::result::Result<T, ::oci_spec::OciSpecError>) -> Result<T> {
    r.map_err(|e| Error::Internal(format!("building the OCI spec: {e}")))
}

/// Mount points at or below `dir`, deepest first.
pub(crate) fn mounts_under(dir: &std::path::Path) -> Vec<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut points: Vec<PathBuf> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| PathBuf::from(p.replace("\\040", " ")))
        .filter(|p| p.starts_with(dir))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    points.dedup();
    points
}
