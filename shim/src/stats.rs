//! Task Stats and OOM detection from a container's cgroup, on v1 and v2 hosts alike: in
//! containerd's own formats (`io.containerd.cgroups.v1.Metrics` where the memory
//! controller is a v1 hierarchy, as on hybrid hosts; `io.containerd.cgroups.v2.Metrics` on
//! pure v2 hosts), read straight from cgroupfs.

use std::path::{Path, PathBuf};

use containerd_shim_protos::cgroups::metrics::{
    CPUStat, CPUUsage, MemoryEntry, MemoryStat, Metrics, PidsStat, Throttle,
};
use containerd_shim_protos::cgroups_v2::metrics as v2;
use containerd_shim_protos::protobuf::well_known_types::any::Any;
use containerd_shim_protos::protobuf::Message;
use podrun_core::cgroup::{v1_dir, Hierarchy};

pub const METRICS_TYPE: &str = "io.containerd.cgroups.v1.Metrics";
pub const METRICS_V2_TYPE: &str = "io.containerd.cgroups.v2.Metrics";

/// Where one container's cgroup files are.
enum Cgroup {
    /// The dirs of `path` in this host's v1 hierarchies, by controller.
    V1 {
        hierarchies: Vec<Hierarchy>,
        path: String,
    },
    /// The dir of `path` in the unified hierarchy.
    V2(PathBuf),
}

impl Cgroup {
    /// v1 where a v1 hierarchy has the memory controller (v1 and hybrid hosts), else v2.
    fn of(hierarchies: Vec<Hierarchy>, path: &str) -> Option<Cgroup> {
        let rel = path.trim_start_matches('/');
        if v1_dir(&hierarchies, "memory", rel).is_some() {
            return Some(Cgroup::V1 {
                hierarchies,
                path: rel.to_owned(),
            });
        }
        let unified = hierarchies.iter().find(|h| h.v2)?;
        Some(Cgroup::V2(unified.mount.join(rel)))
    }

    fn on_this_host(path: &str) -> Option<Cgroup> {
        Cgroup::of(podrun_core::cgroup::hierarchies().ok()?, path)
    }
}

fn read_in(dir: &Path, file: &str) -> Option<String> {
    std::fs::read_to_string(dir.join(file)).ok()
}

/// A single-number file; `max` (no limit) is u64::MAX, as containerd reports it.
fn number_in(dir: &Path, file: &str) -> u64 {
    match read_in(dir, file).as_deref().map(str::trim) {
        Some("max") => u64::MAX,
        Some(n) => n.parse().unwrap_or(0),
        None => 0,
    }
}

/// `key value` lines (memory.stat, cpu.stat, memory.events).
fn keyed(text: &str, key: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or(0)
}

/// How many processes the kernel's OOM killer took from cgroup `path`.
pub fn oom_kills(path: &str) -> u64 {
    Cgroup::on_this_host(path).map_or(0, |c| oom_kills_in(&c))
}

fn oom_kills_in(cgroup: &Cgroup) -> u64 {
    let (dir, file) = match cgroup {
        Cgroup::V1 { hierarchies, path } => match v1_dir(hierarchies, "memory", path) {
            Some(dir) => (dir, "memory.oom_control"),
            None => return 0,
        },
        Cgroup::V2(dir) => (dir.clone(), "memory.events"),
    };
    keyed(&read_in(&dir, file).unwrap_or_default(), "oom_kill")
}

/// The container's figures in containerd's format for this host's cgroup version.
pub fn metrics(path: &str) -> Any {
    match Cgroup::on_this_host(path) {
        Some(Cgroup::V2(dir)) => metrics_v2(&dir),
        Some(Cgroup::V1 { hierarchies, path }) => metrics_v1(&hierarchies, &path),
        None => metrics_v1(&[], path),
    }
}

/// cgroup v2's files, as containerd's cgroup2 stats read them.
fn metrics_v2(dir: &Path) -> Any {
    let mut m = v2::Metrics::new();
    let mut pids = v2::PidsStat::new();
    pids.current = number_in(dir, "pids.current");
    pids.limit = number_in(dir, "pids.max");
    m.pids = Some(pids).into();

    let stat = read_in(dir, "cpu.stat").unwrap_or_default();
    let mut cpu = v2::CPUStat::new();
    cpu.usage_usec = keyed(&stat, "usage_usec");
    cpu.user_usec = keyed(&stat, "user_usec");
    cpu.system_usec = keyed(&stat, "system_usec");
    cpu.nr_periods = keyed(&stat, "nr_periods");
    cpu.nr_throttled = keyed(&stat, "nr_throttled");
    cpu.throttled_usec = keyed(&stat, "throttled_usec");
    m.cpu = Some(cpu).into();

    let stat = read_in(dir, "memory.stat").unwrap_or_default();
    let k = |key: &str| keyed(&stat, key);
    let mut mem = v2::MemoryStat::new();
    mem.anon = k("anon");
    mem.file = k("file");
    mem.kernel_stack = k("kernel_stack");
    mem.slab = k("slab");
    mem.sock = k("sock");
    mem.shmem = k("shmem");
    mem.file_mapped = k("file_mapped");
    mem.file_dirty = k("file_dirty");
    mem.file_writeback = k("file_writeback");
    mem.anon_thp = k("anon_thp");
    mem.inactive_anon = k("inactive_anon");
    mem.active_anon = k("active_anon");
    mem.inactive_file = k("inactive_file");
    mem.active_file = k("active_file");
    mem.unevictable = k("unevictable");
    mem.slab_reclaimable = k("slab_reclaimable");
    mem.slab_unreclaimable = k("slab_unreclaimable");
    mem.pgfault = k("pgfault");
    mem.pgmajfault = k("pgmajfault");
    // Kernels before 5.9 had one counter; later ones split it by anon and file.
    mem.workingset_refault =
        k("workingset_refault") + k("workingset_refault_anon") + k("workingset_refault_file");
    mem.workingset_activate =
        k("workingset_activate") + k("workingset_activate_anon") + k("workingset_activate_file");
    mem.workingset_nodereclaim = k("workingset_nodereclaim");
    mem.pgrefill = k("pgrefill");
    mem.pgscan = k("pgscan");
    mem.pgsteal = k("pgsteal");
    mem.pgactivate = k("pgactivate");
    mem.pgdeactivate = k("pgdeactivate");
    mem.pglazyfree = k("pglazyfree");
    mem.pglazyfreed = k("pglazyfreed");
    mem.thp_fault_alloc = k("thp_fault_alloc");
    mem.thp_collapse_alloc = k("thp_collapse_alloc");
    mem.usage = number_in(dir, "memory.current");
    mem.usage_limit = number_in(dir, "memory.max");
    mem.max_usage = number_in(dir, "memory.peak");
    mem.swap_usage = number_in(dir, "memory.swap.current");
    mem.swap_limit = number_in(dir, "memory.swap.max");
    m.memory = Some(mem).into();

    let events = read_in(dir, "memory.events").unwrap_or_default();
    let mut ev = v2::MemoryEvents::new();
    ev.low = keyed(&events, "low");
    ev.high = keyed(&events, "high");
    ev.max = keyed(&events, "max");
    ev.oom = keyed(&events, "oom");
    ev.oom_kill = keyed(&events, "oom_kill");
    ev.oom_group_kill = keyed(&events, "oom_group_kill");
    m.memory_events = Some(ev).into();

    Any {
        type_url: METRICS_V2_TYPE.into(),
        value: m.write_to_bytes().unwrap_or_default(),
        ..Default::default()
    }
}

/// cgroup v1's files, each from the hierarchy of its controller.
fn metrics_v1(hierarchies: &[Hierarchy], path: &str) -> Any {
    let read =
        |controller: &str, file: &str| read_in(&v1_dir(hierarchies, controller, path)?, file);
    let number = |controller: &str, file: &str| -> u64 {
        read(controller, file)
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0)
    };
    let mut m = Metrics::new();
    let mut pids = PidsStat::new();
    pids.current = number("pids", "pids.current");
    pids.limit = read("pids", "pids.max")
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0);
    m.pids = Some(pids).into();

    let mut usage = CPUUsage::new();
    usage.total = number("cpuacct", "cpuacct.usage");
    usage.user = number("cpuacct", "cpuacct.usage_user");
    usage.kernel = number("cpuacct", "cpuacct.usage_sys");
    usage.per_cpu = read("cpuacct", "cpuacct.usage_percpu")
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|n| n.parse().ok())
        .collect();
    let stat = read("cpu", "cpu.stat").unwrap_or_default();
    let mut throttle = Throttle::new();
    throttle.periods = keyed(&stat, "nr_periods");
    throttle.throttled_periods = keyed(&stat, "nr_throttled");
    throttle.throttled_time = keyed(&stat, "throttled_time");
    let mut cpu = CPUStat::new();
    cpu.usage = Some(usage).into();
    cpu.throttling = Some(throttle).into();
    m.cpu = Some(cpu).into();

    let stat = read("memory", "memory.stat").unwrap_or_default();
    let entry = |prefix: &str| {
        let mut e = MemoryEntry::new();
        e.usage = number("memory", &format!("{prefix}usage_in_bytes"));
        e.limit = number("memory", &format!("{prefix}limit_in_bytes"));
        e.max = number("memory", &format!("{prefix}max_usage_in_bytes"));
        e.failcnt = number("memory", &format!("{prefix}failcnt"));
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

    /// A pure v2 host: the unified hierarchy only, no v1 controllers.
    fn v2_host(dir: &Path) -> Vec<Hierarchy> {
        vec![Hierarchy {
            mount: dir.to_owned(),
            v1_cpuset: false,
            v2: true,
            controllers: Vec::new(),
        }]
    }

    #[test]
    fn a_v2_cgroup_reads_as_containerd_v2_metrics_and_counts_oom_kills() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("kubepods/pod1/ctr");
        std::fs::create_dir_all(&dir).unwrap();
        let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/testdata/cgroup2");
        for e in std::fs::read_dir(&fixtures).unwrap() {
            let e = e.unwrap();
            std::fs::copy(e.path(), dir.join(e.file_name())).unwrap();
        }
        let cgroup = Cgroup::of(v2_host(root.path()), "/kubepods/pod1/ctr").unwrap();
        assert_eq!(oom_kills_in(&cgroup), 1);
        let Cgroup::V2(d) = &cgroup else {
            panic!("a host without v1 memory reads v2")
        };
        let any = metrics_v2(d);
        assert_eq!(any.type_url, METRICS_V2_TYPE);
        let m = v2::Metrics::parse_from_bytes(&any.value).unwrap();
        assert_eq!((m.pids.current, m.pids.limit), (2, 1024));
        let cpu = &m.cpu;
        assert_eq!(
            (cpu.usage_usec, cpu.user_usec, cpu.system_usec),
            (1830512, 1204000, 626512)
        );
        assert_eq!(
            (cpu.nr_periods, cpu.nr_throttled, cpu.throttled_usec),
            (412, 37, 981233)
        );
        let mem = &m.memory;
        assert_eq!(
            (mem.usage, mem.usage_limit, mem.max_usage),
            (9121792, 67108864, 67104768)
        );
        assert_eq!(
            (mem.swap_usage, mem.swap_limit),
            (0, u64::MAX),
            "max is no limit"
        );
        assert_eq!(
            (mem.anon, mem.file, mem.inactive_file),
            (5234688, 3170304, 1859584)
        );
        assert_eq!(
            (mem.pgfault, mem.pgmajfault, mem.workingset_refault),
            (18329, 41, 12)
        );
        assert_eq!(
            (mem.slab, mem.file_mapped, mem.pgscan),
            (472256, 2097152, 2211)
        );
        let ev = &m.memory_events;
        assert_eq!((ev.max, ev.oom, ev.oom_kill), (14, 1, 1));

        // The same files on a host whose memory controller is a v1 hierarchy are not read as
        // v2, and a missing cgroup reads as nothing.
        let mut hybrid = v2_host(root.path());
        hybrid.push(Hierarchy {
            mount: root.path().join("memory"),
            v1_cpuset: false,
            v2: false,
            controllers: vec!["memory".into()],
        });
        let cgroup = Cgroup::of(hybrid, "/kubepods/pod1/ctr").unwrap();
        assert!(matches!(cgroup, Cgroup::V1 { .. }));
        assert_eq!(oom_kills_in(&cgroup), 0);
        let gone = Cgroup::of(v2_host(root.path()), "/kubepods/gone").unwrap();
        assert_eq!(oom_kills_in(&gone), 0);
    }

    #[test]
    fn keyed_lines_are_read_by_exact_key() {
        let stat = "cache 4096\nrss 8192\nrss_huge 0\ntotal_rss 8192\n";
        assert_eq!(keyed(stat, "rss"), 8192);
        assert_eq!(keyed(stat, "cache"), 4096);
        assert_eq!(keyed(stat, "swap"), 0);
    }
}
