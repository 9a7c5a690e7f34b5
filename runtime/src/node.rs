//! What one podrund instance holds: its configuration, the binaries it runs, the CNI
//! executor and the pod index.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::cni::{Exec, ProcessExec};
use crate::config::Config;
use crate::error::Result;
use crate::image::{ImageStore, PullOptions};
use crate::sandbox::Sandboxes;

pub struct Node {
    pub config: Config,
    pub binaries: Binaries,
    pub cni: Arc<dyn Exec>,
    pub sandboxes: Sandboxes,
    pub images: ImageStore,
    /// Held shared by every operation that changes pods; shutdown takes it exclusively,
    /// so podrund never exits half-way through making or tearing down a pod.
    pub inflight: tokio::sync::RwLock<()>,
}

impl Node {
    pub fn new(config: Config) -> Result<Node> {
        let cni = Arc::new(ProcessExec {
            bin_dirs: config.cni_bin_dirs.clone(),
            timeout: Duration::from_secs(60),
        });
        Ok(Node {
            binaries: Binaries::find(),
            cni,
            sandboxes: Sandboxes::default(),
            images: ImageStore::open(&config.root, PullOptions::default())?,
            inflight: tokio::sync::RwLock::new(()),
            config,
        })
    }
}

/// The helper binaries podrund starts, found next to its own executable first, then on PATH.
#[derive(Debug, Clone)]
pub struct Binaries {
    pub shim: Result<PathBuf, String>,
    pub pause: Result<PathBuf, String>,
}

pub const SHIM_BINARY: &str = "containerd-shim-podrun-v2";
pub const PAUSE_BINARY: &str = "podrun-pause";

impl Binaries {
    pub fn find() -> Binaries {
        let own_dir = std::env::current_exe()
            .ok()
            .and_then(|e| e.parent().map(Path::to_owned));
        Binaries {
            shim: find_binary(SHIM_BINARY, own_dir.as_deref()),
            pause: find_binary(PAUSE_BINARY, own_dir.as_deref()),
        }
    }

    /// Why the runtime cannot start pods, if it cannot.
    pub fn missing(&self) -> Option<String> {
        let missing: Vec<&str> = [&self.shim, &self.pause]
            .into_iter()
            .filter_map(|b| b.as_ref().err().map(String::as_str))
            .collect();
        (!missing.is_empty()).then(|| missing.join("; "))
    }
}

fn find_binary(name: &str, own_dir: Option<&Path>) -> Result<PathBuf, String> {
    let path_dirs = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default();
    own_dir
        .into_iter()
        .map(Path::to_owned)
        .chain(path_dirs)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            format!("{name} not found next to podrund or on PATH (install it with hack/setup)")
        })
}
