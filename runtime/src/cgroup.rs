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
}

/// Every cgroup hierarchy, each once.
pub fn hierarchies() -> Result<Vec<Hierarchy>> {
    let info = fs::read_to_string("/proc/self/mountinfo")
        .map_err(Error::io("reading", "/proc/self/mountinfo"))?;
    Ok(parse_hierarchies(&info))
}

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
            out.push(Hierarchy {
                mount: PathBuf::from(mountpoint.replace("\\040", " ")),
                v1_cpuset: *fstype == "cgroup" && options.split(',').any(|o| o == "cpuset"),
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

#[cfg(test)]
mod tests {
    use super::*;

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
        let got: Vec<(String, bool)> = parse_hierarchies(info)
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
