//! Task Stats: a cgroup v1 container's CPU, memory and pids figures in containerd's own
//! format (`io.containerd.cgroups.v1.Metrics`), read straight from cgroupfs.

use std::path::PathBuf;

use containerd_shim_protos::cgroups::metrics::{
    CPUStat, CPUUsage, MemoryEntry, MemoryStat, Metrics, PidsStat, Throttle,
};
use containerd_shim_protos::protobuf::well_known_types::any::Any;
use containerd_shim_protos::protobuf::Message;

pub const METRICS_TYPE: &str = "io.containerd.cgroups.v1.Metrics";

/// The directory of `path` in the v1 hierarchy that has `controller`.
fn dir(controller: &str, path: &str) -> Option<PathBuf> {
    let hierarchies = podrun_runtime::cgroup::hierarchies().ok()?;
    hierarchies.into_iter().find_map(|h| {
        let name = h.mount.file_name()?.to_string_lossy().into_owned();
        name.split(',')
            .any(|c| c == controller)
            .then(|| h.mount.join(path.trim_start_matches('/')))
    })
}

fn read(controller: &str, path: &str, file: &str) -> Option<String> {
    std::fs::read_to_string(dir(controller, path)?.join(file)).ok()
}

fn number(controller: &str, path: &str, file: &str) -> u64 {
    read(controller, path, file)
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

/// `key value` lines (memory.stat, cpu.stat).
fn keyed(text: &str, key: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or(0)
}

/// How many processes the kernel's OOM killer took from cgroup `path`.
pub fn oom_kills(path: &str) -> u64 {
    keyed(
        &read("memory", path, "memory.oom_control").unwrap_or_default(),
        "oom_kill",
    )
}

pub fn metrics(path: &str) -> Any {
    let mut m = Metrics::new();
    let mut pids = PidsStat::new();
    pids.current = number("pids", path, "pids.current");
    pids.limit = read("pids", path, "pids.max")
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0);
    m.pids = Some(pids).into();

    let mut usage = CPUUsage::new();
    usage.total = number("cpuacct", path, "cpuacct.usage");
    usage.user = number("cpuacct", path, "cpuacct.usage_user");
    usage.kernel = number("cpuacct", path, "cpuacct.usage_sys");
    usage.per_cpu = read("cpuacct", path, "cpuacct.usage_percpu")
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|n| n.parse().ok())
        .collect();
    let stat = read("cpu", path, "cpu.stat").unwrap_or_default();
    let mut throttle = Throttle::new();
    throttle.periods = keyed(&stat, "nr_periods");
    throttle.throttled_periods = keyed(&stat, "nr_throttled");
    throttle.throttled_time = keyed(&stat, "throttled_time");
    let mut cpu = CPUStat::new();
    cpu.usage = Some(usage).into();
    cpu.throttling = Some(throttle).into();
    m.cpu = Some(cpu).into();

    let stat = read("memory", path, "memory.stat").unwrap_or_default();
    let entry = |prefix: &str| {
        let mut e = MemoryEntry::new();
        e.usage = number("memory", path, &format!("{prefix}usage_in_bytes"));
        e.limit = number("memory", path, &format!("{prefix}limit_in_bytes"));
        e.max = number("memory", path, &format!("{prefix}max_usage_in_bytes"));
        e.failcnt = number("memory", path, &format!("{prefix}failcnt"));
        e
    };
    let mut mem = MemoryStat::new();
    mem.cache = keyed(&stat, "cache");
    mem.rss = keyed(&stat, "rss");
    mem.rss_huge = keyed(&stat, "rss_huge");
    mem.mapped_file = keyed(&stat, "mapped_file");
    mem.dirty = keyed(&stat, "dirty");
    mem.writeback = keyed(&stat, "writeback");
    mem.pg_fault = keyed(&stat, "pgfault");
    mem.pg_maj_fault = keyed(&stat, "pgmajfault");
    mem.inactive_anon = keyed(&stat, "inactive_anon");
    mem.active_anon = keyed(&stat, "active_anon");
    mem.inactive_file = keyed(&stat, "inactive_file");
    mem.active_file = keyed(&stat, "active_file");
    mem.unevictable = keyed(&stat, "unevictable");
    mem.hierarchical_memory_limit = keyed(&stat, "hierarchical_memory_limit");
    mem.total_cache = keyed(&stat, "total_cache");
    mem.total_rss = keyed(&stat, "total_rss");
    mem.usage = Some(entry("memory.")).into();
    mem.swap = Some(entry("memory.memsw.")).into();
    mem.kernel = Some(entry("memory.kmem.")).into();
    mem.kernel_tcp = Some(entry("memory.kmem.tcp.")).into();
    m.memory = Some(mem).into();

    Any {
        type_url: METRICS_TYPE.into(),
        value: m.write_to_bytes().unwrap_or_default(),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyed_lines_are_read_by_exact_key() {
        let stat = "cache 4096\nrss 8192\nrss_huge 0\ntotal_rss 8192\n";
        assert_eq!(keyed(stat, "rss"), 8192);
        assert_eq!(keyed(stat, "cache"), 4096);
        assert_eq!(keyed(stat, "swap"), 0);
    }
}
