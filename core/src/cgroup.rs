//! Pod cgroups through cgroupfs, on v1, hybrid and v2 hosts alike: a cgroup path such as
//! `/kubepods/besteffort/pod123/<id>` is made in every mounted hierarchy (each v1
//! controller and the unified one), processes are joined through `cgroup.procs`, and
//! removal takes the leaf out of each hierarchy.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::error::{Error, Result};

/// One mounted cgroup hierarchy.
#[derive(Debug, Clone, PartialEq)]
pub struct Hierarchy {
    pub mount: PathBuf,
    /// A v1 hierarchy with the cpuset controller, whose children start with empty
    /// `cpuset.cpus`/`cpuset.mems` that must be filled before a task can join (on v2 an
    /// empty value means "inherit" and must be left alone).
    pub v1_cpuset: bool,
    /// The unified (v2) hierarchy, which has every controller's files it enables.
    pub v2: bool,
    /// A v1 hierarchy's controllers (from its mount options); empty for v2.
    pub controllers: Vec<String>,
}

/// Every cgroup hierarchy, each once.
pub fn hierarchies() -> Result<Vec<Hierarchy>> {
    let info = fs::read_to_string("/proc/self/mountinfo")
        .map_err(Error::io("reading", "/proc/self/mountinfo"))?;
    Ok(parse_hierarchies(&info))
}

/// The v1 controllers podrun reads or writes, as they appear in mount options.
const V1_CONTROLLERS: &[&str] = &["cpu", "cpuacct", "cpuset", "memory", "pids", "blkio"];

fn parse_hierarchies(mountinfo: &str) -> Vec<Hierarchy> {
    let mut seen = Vec::new();
    let mut out = Vec::new();
    for line in mountinfo.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let left: Vec<&str> = left.split(' ').collect();
        let right: Vec<&str> = right.split(' ').collect();
        let (Some(root), Some(mountpoint), Some(fstype)) =
            (left.get(3), left.get(4), right.first())
        else {
            continue;
        };
        if *root != "/" || !(*fstype == "cgroup" || *fstype == "cgroup2") {
            continue;
        }
        // A hierarchy mounted twice has the same super options (its controllers): keep one.
        let options = right.get(2).unwrap_or(&"");
        let key = format!("{fstype} {options}");
        if !seen.contains(&key) {
            seen.push(key);
            let v2 = *fstype == "cgroup2";
            let controllers: Vec<String> = match v2 {
                true => Vec::new(),
                false => options
                    .split(',')
                    .filter(|o| V1_CONTROLLERS.contains(o))
                    .map(str::to_owned)
                    .collect(),
            };
            out.push(Hierarchy {
                mount: PathBuf::from(mountpoint.replace("\\040", " ")),
                v1_cpuset: controllers.iter().any(|c| c == "cpuset"),
                v2,
                controllers,
            });
        }
    }
    out
}

/// Rejects cgroup paths that could escape the hierarchy.
pub fn validate(path: &str) -> Result<()> {
    if !path.starts_with('/') || path.split('/').any(|c| c == ".." || c == ".") {
        return Err(Error::invalid(
            "linux.cgroup_parent",
            format!("{path:?} must be an absolute path without . or .."),
        ));
    }
    Ok(())
}

fn dirs(path: &str) -> Result<Vec<PathBuf>> {
    validate(path)?;
    Ok(hierarchies()?
        .into_iter()
        .map(|h| h.mount.join(path.trim_start_matches('/')))
        .collect())
}

/// Makes `path` (and missing parents) in every hierarchy.
pub fn create(path: &str) -> Result<()> {
    validate(path)?;
    for h in hierarchies()? {
        let dir = h.mount.join(path.trim_start_matches('/'));
        fs::create_dir_all(&dir).map_err(Error::io("creating cgroup", &dir))?;
        if h.v1_cpuset {
            for knob in ["cpuset.cpus", "cpuset.mems"] {
                inherit_cpuset(&h.mount, &dir, knob)?;
            }
        }
    }
    Ok(())
}

/// Fills an empty v1 cpuset knob from the nearest ancestor below `mount` that has one.
fn inherit_cpuset(mount: &Path, dir: &Path, knob: &str) -> Result<()> {
    let read = |d: &Path| {
        fs::read_to_string(d.join(knob))
            .unwrap_or_default()
            .trim()
            .to_owned()
    };
    if dir == mount || !read(dir).is_empty() {
        return Ok(());
    }
    let parent = dir.parent().unwrap_or(mount);
    inherit_cpuset(mount, parent, knob)?;
    let value = read(parent);
    fs::write(dir.join(knob), value).map_err(Error::io("writing", dir.join(knob)))
}

/// Moves process `pid` into `path` in every hierarchy.
pub fn join(path: &str, pid: i32) -> Result<()> {
    for dir in dirs(path)? {
        let procs = dir.join("cgroup.procs");
        fs::write(&procs, pid.to_string()).map_err(Error::io("joining cgroup", &procs))?;
    }
    Ok(())
}

/// The pids in `path`, from the first hierarchy that has it.
pub fn pids(path: &str) -> Result<Vec<i32>> {
    for dir in dirs(path)? {
        if let Ok(text) = fs::read_to_string(dir.join("cgroup.procs")) {
            return Ok(text.lines().filter_map(|l| l.trim().parse().ok()).collect());
        }
    }
    Ok(Vec::new())
}

/// Removes `path` and any cgroups below it (containers' own) from every hierarchy; already
/// absent is fine. Processes still inside are killed first; the kernel frees a cgroup only
/// once its last task is reaped, so removal retries briefly.
pub fn remove(path: &str) -> Result<()> {
    for dir in dirs(path)? {
        remove_tree(&dir)?;
    }
    Ok(())
}

fn remove_tree(dir: &Path) -> Result<()> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Ok(());
    };
    for e in entries.flatten() {
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            remove_tree(&e.path())?;
        }
    }
    let procs = fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
    for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    let mut tries = 0;
    loop {
        match fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) && tries < 100 => {
                tries += 1;
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => return Err(Error::io("removing cgroup", dir)(e)),
        }
    }
}

/// Does `path` exist in any hierarchy?
pub fn exists(path: &str) -> bool {
    dirs(path).is_ok_and(|d| d.iter().any(|d| d.exists()))
}

/// `rel` in the v1 hierarchy that has `controller`, if one is mounted.
pub fn v1_dir(hierarchies: &[Hierarchy], controller: &str, rel: &str) -> Option<PathBuf> {
    hierarchies
        .iter()
        .find(|h| h.controllers.iter().any(|x| x == controller))
        .map(|h| h.mount.join(rel))
}

/// What a cgroup (and everything below it) has used, each figure from the hierarchy that
/// has its controller: a v1 one where mounted, else the unified one.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Usage {
    /// CPU time, nanoseconds.
    pub cpu_ns: Option<u64>,
    pub memory: Option<Memory>,
    pub pids: Option<u64>,
}

#[derive(Debug, Default, Clone, PartialEq)]
pub struct Memory {
    pub usage: u64,
    /// Usage minus inactive file pages: what the kernel cannot simply drop (kubelet's
    /// eviction signal).
    pub working_set: u64,
    pub rss: u64,
    pub page_faults: u64,
    pub major_page_faults: u64,
    /// None when unlimited.
    pub limit: Option<u64>,
}

/// Reads the usage of `path` from `hierarchies` (read once by the caller for many paths).
/// A figure whose files are missing (the cgroup is gone, or the controller is off) is None.
pub fn usage(hierarchies: &[Hierarchy], path: &str) -> Usage {
    if validate(path).is_err() {
        return Usage::default();
    }
    let rel = path.trim_start_matches('/');
    let v1 = |c: &str| v1_dir(hierarchies, c, rel);
    let v2 = hierarchies.iter().find(|h| h.v2).map(|h| h.mount.join(rel));
    let read = |dir: &Path, file: &str| fs::read_to_string(dir.join(file)).ok();
    let number = |text: Option<String>| text.and_then(|t| t.trim().parse::<u64>().ok());
    let cpu_ns = match (v1("cpuacct"), &v2) {
        (Some(d), _) => number(read(&d, "cpuacct.usage")),
        (None, Some(d)) => read(d, "cpu.stat")
            .and_then(|s| keyed(&s, "usage_usec"))
            .map(|us| us * 1000),
        _ => None,
    };
    let memory = match (v1("memory"), &v2) {
        (Some(d), _) => number(read(&d, "memory.usage_in_bytes")).map(|usage| {
            let stat = read(&d, "memory.stat").unwrap_or_default();
            // v1 reports "no limit" as the largest page-aligned value.
            let limit = number(read(&d, "memory.limit_in_bytes")).filter(|l| *l < 1 << 62);
            memory(usage, &stat, "total_", "total_rss", limit)
        }),
        (None, Some(d)) => number(read(d, "memory.current")).map(|usage| {
            let stat = read(d, "memory.stat").unwrap_or_default();
            memory(usage, &stat, "", "anon", number(read(d, "memory.max")))
        }),
        _ => None,
    };
    let pids = v1("pids")
        .or(v2)
        .and_then(|d| number(read(&d, "pids.current")));
    Usage {
        cpu_ns,
        memory,
        pids,
    }
}

fn memory(usage: u64, stat: &str, prefix: &str, rss: &str, limit: Option<u64>) -> Memory {
    let get = |key: &str| keyed(stat, key).unwrap_or(0);
    Memory {
        usage,
        working_set: usage.saturating_sub(get(&format!("{prefix}inactive_file"))),
        rss: get(rss),
        page_faults: get(&format!("{prefix}pgfault")),
        major_page_faults: get(&format!("{prefix}pgmajfault")),
        limit,
    }
}

/// The value of `key` in a flat-keyed cgroup file (`key value` per line).
fn keyed(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_reads_v1_controllers_and_falls_back_to_v2() {
        let dir = tempfile::tempdir().unwrap();
        let mk = |sub: &str, files: &[(&str, &str)]| {
            let d = dir.path().join(sub).join("pod/c1");
            fs::create_dir_all(&d).unwrap();
            for (f, text) in files {
                fs::write(d.join(f), text).unwrap();
            }
            dir.path().join(sub)
        };
        let memory_v1 = mk(
            "memory",
            &[
                ("memory.usage_in_bytes", "1000\n"),
                ("memory.limit_in_bytes", "9223372036854771712\n"),
                ("memory.stat", "cache 5\ntotal_inactive_file 300\ntotal_rss 600\ntotal_pgfault 7\ntotal_pgmajfault 1\n"),
            ],
        );
        let unified = mk(
            "unified",
            &[
                ("cpu.stat", "usage_usec 42\nuser_usec 40\n"),
                ("memory.current", "2000\n"),
                ("memory.max", "4096\n"),
                (
                    "memory.stat",
                    "anon 1500\ninactive_file 500\npgfault 9\npgmajfault 2\n",
                ),
                ("pids.current", "3\n"),
            ],
        );
        let h = |mount: PathBuf, v2: bool, controllers: &[&str]| Hierarchy {
            mount,
            v1_cpuset: false,
            v2,
            controllers: controllers.iter().map(|c| c.to_string()).collect(),
        };
        let hybrid = [
            h(unified.clone(), true, &[]),
            h(memory_v1, false, &["memory"]),
        ];
        let got = usage(&hybrid, "/pod/c1");
        assert_eq!(got.cpu_ns, Some(42_000), "cpu from v2 when no v1 cpuacct");
        assert_eq!(got.pids, Some(3));
        let m = got.memory.unwrap();
        assert_eq!((m.usage, m.working_set, m.rss), (1000, 700, 600));
        assert_eq!((m.page_faults, m.major_page_faults, m.limit), (7, 1, None));
        let pure_v2 = [h(unified, true, &[])];
        let m = usage(&pure_v2, "/pod/c1").memory.unwrap();
        assert_eq!(
            (m.usage, m.working_set, m.rss, m.limit),
            (2000, 1500, 1500, Some(4096))
        );
        assert_eq!(usage(&pure_v2, "/pod/gone"), Usage::default());
        assert_eq!(usage(&pure_v2, "/../etc"), Usage::default());
    }

    #[test]
    fn hybrid_host_lists_each_hierarchy_once() {
        let info = "\
25 1 0:22 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755
26 25 0:23 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw
27 25 0:24 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct
28 25 0:25 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory
31 25 0:26 / /sys/fs/cgroup/cpuset rw - cgroup cgroup rw,cpuset
29 1 0:24 / /mnt/again rw - cgroup cgroup rw,cpu,cpuacct
30 1 0:25 /nested /mnt/nested rw - cgroup cgroup rw,memory";
        let parsed = parse_hierarchies(info);
        assert_eq!(parsed[1].controllers, ["cpu", "cpuacct"]);
        assert!(parsed[0].v2 && parsed[0].controllers.is_empty());
        let got: Vec<(String, bool)> = parsed
            .into_iter()
            .map(|h| (h.mount.display().to_string(), h.v1_cpuset))
            .collect();
        let want = [
            ("/sys/fs/cgroup/unified", false),
            ("/sys/fs/cgroup/cpu,cpuacct", false),
            ("/sys/fs/cgroup/memory", false),
            ("/sys/fs/cgroup/cpuset", true),
        ];
        let want: Vec<(String, bool)> = want.iter().map(|(m, c)| (m.to_string(), *c)).collect();
        assert_eq!(got, want);
    }

    #[test]
    fn paths_that_escape_are_rejected() {
        assert!(validate("/kubepods/pod1/abc").is_ok());
        for bad in ["relative", "/a/../b", "/a/./b"] {
            assert!(validate(bad).is_err(), "{bad}");
        }
    }
}
