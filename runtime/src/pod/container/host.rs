//! What the node gives a container: its devices (for privileged containers), the
//! capabilities and oom_score_adj podrund itself holds, and signal names.

use std::path::Path;

use crate::container::capabilities;

/// The node's devices, for a privileged container (as containerd gives them): every
/// character and block device under /dev, but the per-session and per-container ones.
pub(super) fn host_devices() -> Vec<::oci_spec::runtime::LinuxDevice> {
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
pub(super) fn own_capabilities() -> Vec<String> {
    // They do not change: read once, not on every CreateContainer.
    static OWN: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    OWN.get_or_init(|| match caps::read(None, caps::CapSet::Effective) {
        Ok(held) => capabilities::names(held),
        Err(e) => {
            tracing::warn!(error = %e, "cannot read podrund's own capabilities; assuming all");
            capabilities::all_caps()
        }
    })
    .clone()
}

/// The oom_score_adj of podrund itself: without CAP_SYS_RESOURCE no child may go lower.
pub(super) fn own_oom_score_adj() -> i64 {
    std::fs::read_to_string("/proc/self/oom_score_adj")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(-1000)
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
