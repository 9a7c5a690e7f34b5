//! The helper binaries podrund starts (the shim and pause) and how any binary it runs is
//! found: next to podrund's own executable first, then on PATH.

use std::path::{Path, PathBuf};

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

pub fn find_binary(name: &str, own_dir: Option<&Path>) -> Result<PathBuf, String> {
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
