//! Resource limits on a pod's cgroup (UpdatePodSandboxResources): the CRI's resources
//! written to cgroupfs. The rest of cgroup handling is podrun-core's, shared with the shim.

use std::fs;

pub use podrun_core::cgroup::*;

use crate::error::{Error, Result};

/// Sets CPU, memory and cpuset limits on `path` (and so on everything below it): each in
/// the v1 hierarchy that has its controller, else in the unified one where it is enabled.
/// Zero and empty values are left as they are.
pub fn set_resources(
    hierarchies: &[Hierarchy],
    path: &str,
    r: &podrun_proto::cri::LinuxContainerResources,
) -> Result<()> {
    validate(path)?;
    let rel = path.trim_start_matches('/');
    let v2 = |c: &str| {
        hierarchies.iter().find(|h| h.v2).and_then(|h| {
            let enabled =
                fs::read_to_string(h.mount.join("cgroup.controllers")).unwrap_or_default();
            enabled
                .split_whitespace()
                .any(|x| x == c)
                .then(|| h.mount.join(rel))
        })
    };
    // (controller, its v1 files, its v2 files)
    let mut settings: Vec<(&str, Files, Files)> = Vec::new();
    if r.cpu_shares > 0 {
        // cgroup v2's weight, as runc converts shares.
        let weight = 1 + ((r.cpu_shares.clamp(2, 262144) - 2) * 9999) / 262142;
        settings.push((
            "cpu",
            vec![("cpu.shares", r.cpu_shares.to_string())],
            vec![("cpu.weight", weight.to_string())],
        ));
    }
    if r.cpu_period > 0 || r.cpu_quota > 0 {
        let period = if r.cpu_period > 0 {
            r.cpu_period
        } else {
            100_000
        };
        let quota = if r.cpu_quota > 0 {
            r.cpu_quota.to_string()
        } else {
            "max".into()
        };
        let mut v1 = Vec::new();
        if r.cpu_period > 0 {
            v1.push(("cpu.cfs_period_us", period.to_string()));
        }
        if r.cpu_quota > 0 {
            v1.push(("cpu.cfs_quota_us", quota.clone()));
        }
        settings.push(("cpu", v1, vec![("cpu.max", format!("{quota} {period}"))]));
    }
    if r.memory_limit_in_bytes > 0 {
        let limit = r.memory_limit_in_bytes.to_string();
        settings.push((
            "memory",
            vec![("memory.limit_in_bytes", limit.clone())],
            vec![("memory.max", limit)],
        ));
    }
    for (file, value) in [
        ("cpuset.cpus", &r.cpuset_cpus),
        ("cpuset.mems", &r.cpuset_mems),
    ] {
        if !value.is_empty() {
            settings.push((
                "cpuset",
                vec![(file, value.clone())],
                vec![(file, value.clone())],
            ));
        }
    }
    for (controller, v1_files, v2_files) in settings {
        let (dir, files) = match (v1_dir(hierarchies, controller, rel), v2(controller)) {
            (Some(dir), _) => (dir, v1_files),
            (None, Some(dir)) => (dir, v2_files),
            (None, None) => continue,
        };
        for (file, value) in files {
            let file = dir.join(file);
            fs::write(&file, &value).map_err(Error::io("writing", &file))?;
        }
    }
    Ok(())
}

/// Files of a cgroup and what to write in them.
type Files = Vec<(&'static str, String)>;

/// The previous CPU sample of each cgroup: (timestamp ns, cpu ns).
#[derive(Default)]
pub struct CpuSamples(std::sync::Mutex<std::collections::HashMap<String, (i64, u64)>>);

impl CpuSamples {
    /// The rate since the previous sample of `path`, recording this one.
    pub fn rate(&self, path: &str, now: i64, cpu_ns: u64) -> Option<u64> {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let previous = map.insert(path.to_owned(), (now, cpu_ns));
        let (then, used) = previous?;
        let elapsed = u64::try_from(now - then).ok().filter(|e| *e > 0)?;
        Some((cpu_ns.saturating_sub(used) as u128 * 1_000_000_000 / elapsed as u128) as u64)
    }

    /// Forgets cgroups that are not in `live` (their owners are gone).
    pub fn keep(&self, live: &[String]) {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        map.retain(|path, _| live.contains(path));
    }
}
