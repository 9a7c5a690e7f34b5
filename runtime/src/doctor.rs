//! The leak audit (`podctl doctor`): everything on the node that podrund made for a pod or
//! container it no longer knows (netns pins, the veths into them, host-local IP
//! reservations, mounts, cgroups, processes, the OCI runtime's state, state files), and what
//! a known, ready pod lacks. `fix` removes the orphans: CNI DEL first (it needs the netns
//! and releases the IP), then the rest in the reverse order of making.
//!
//! Several podrunds may share a node (`hack/nodes`, the tests) and with it `/run/netns` and
//! cgroup parents, so a pod id counts as this podrund's only when something ties it to this
//! instance: a file in its root or state dir, an IP reservation in the data dir of the CNI
//! network it attaches pods to, or a shim serving its socket. Netns pins and pod cgroups of
//! ids tied to no instance (say, after the root dir was wiped) are not reported. Another
//! runtime that shares podrund's CNI network is not told apart either.

use std::collections::{BTreeMap, HashSet};
use std::fs;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::cni::{Attachment, Network};
use crate::leak::Finding;
use crate::node::Node;

pub fn is_id(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Pods and containers podrund knows, and the cgroup parents its pods use.
struct Known {
    pods: HashSet<String>,
    containers: HashSet<String>,
    /// Pod cgroups of known pods, and the parents under which pod cgroups are made.
    pod_cgroups: Vec<String>,
    parents: HashSet<String>,
}

impl Known {
    fn of(node: &Node) -> Known {
        let records: Vec<_> = node.sandboxes.all().iter().map(|p| p.view()).collect();
        let mut parents: HashSet<String> =
            [crate::sandbox::DEFAULT_CGROUP_PARENT.to_owned()].into();
        parents.extend(records.iter().filter_map(|r| {
            r.cgroup
                .rsplit_once('/')
                .map(|(parent, _)| parent.to_owned())
        }));
        Known {
            pods: records.iter().map(|r| r.id.clone()).collect(),
            pod_cgroups: records.iter().map(|r| r.cgroup.clone()).collect(),
            containers: node.containers.all().iter().map(|c| c.id.clone()).collect(),
            parents,
        }
    }

    fn any(&self, id: &str) -> bool {
        self.pods.contains(id) || self.containers.contains(id)
    }
}

fn entries(dir: &Path) -> Vec<(String, PathBuf)> {
    fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| (e.file_name().to_string_lossy().into_owned(), e.path()))
        .collect()
}

/// Audits the node. Run it with pod operations held off (`node.inflight` exclusively), or
/// a pod half-way through RunPodSandbox may look like an orphan.
pub fn audit(node: &Node) -> Vec<Finding> {
    let known = Known::of(node);
    let mut out = Vec::new();
    let c = &node.config;

    // Ids this instance has a trace of; the shims serving its socket.
    let mut tied: HashSet<String> = HashSet::new();
    for dir in record_dirs(c) {
        tied.extend(entries(&dir).into_iter().map(|(name, _)| name));
    }
    let shims = shims_of(&c.listen);
    tied.extend(shims.iter().map(|(_, id)| id.clone()));

    // IP reservations in the network's host-local data dirs.
    if let Ok(Some(net)) = Network::load_first(&c.cni_conf_dir) {
        for dir in host_local_dirs(&net) {
            for (name, file) in entries(&dir) {
                if name.parse::<std::net::IpAddr>().is_err() {
                    continue;
                }
                let text = fs::read_to_string(&file).unwrap_or_default();
                let mut lines = text.lines().map(str::trim);
                let pod = lines.next().unwrap_or_default().to_owned();
                let ifname = lines.next().unwrap_or("eth0").to_owned();
                if is_id(&pod) && !known.pods.contains(&pod) {
                    tied.insert(pod.clone());
                    out.push(Finding::Ip { file, pod, ifname });
                }
            }
        }
    }
    let orphan = |id: &str| tied.contains(id) && !known.any(id);

    // Netns pins, and veths whose other end is in one.
    let mut orphan_netns = HashSet::new();
    for (name, path) in entries(&c.netns_dir) {
        if name.strip_prefix("podrun-").is_some_and(orphan) {
            orphan_netns.insert(name.clone());
            out.push(Finding::Netns(path));
        }
    }
    out.extend(veths_into(&orphan_netns).into_iter().map(Finding::Veth));

    // Mounts under podrund's dirs that belong to no known pod or container.
    // (Netns pins are mounts too: they count as netns above.)
    let mine = [&c.root, &c.state].map(|d| crate::container::mounts_under(d));
    for mountpoint in mine.into_iter().flatten() {
        let text = mountpoint.display().to_string();
        let ids: Vec<&str> = text.split(['/', '-']).filter(|s| is_id(s)).collect();
        if !ids.is_empty() && !ids.iter().any(|id| known.any(id)) {
            out.push(Finding::Mount(mountpoint));
        }
    }

    // Cgroups: unknown pods under the parents pods use, unknown containers under pods.
    let mut orphan_cgroups = Vec::new();
    for h in crate::cgroup::hierarchies().unwrap_or_default() {
        let look = |parent: &str, stray: &dyn Fn(&str) -> bool, found: &mut Vec<String>| {
            for (name, _) in entries(&h.mount.join(parent.trim_start_matches('/'))) {
                let rel = format!("{}/{name}", parent.trim_end_matches('/'));
                if is_id(&name) && stray(&name) && !found.contains(&rel) {
                    found.push(rel);
                }
            }
        };
        for parent in &known.parents {
            look(parent, &orphan, &mut orphan_cgroups);
        }
        // Below a known pod, whatever is not one of its containers is this podrund's.
        for pod in &known.pod_cgroups {
            look(
                pod,
                &|id| !known.containers.contains(id),
                &mut orphan_cgroups,
            );
        }
    }

    // Processes: shims of unknown pods, anything in an orphan cgroup.
    for (pid, id) in &shims {
        if !known.pods.contains(id) {
            let what = format!("shim of pod {id}");
            out.push(Finding::Process { pid: *pid, what });
        }
    }
    for pid in pids() {
        if !shims.iter().any(|(p, _)| *p == pid) && in_cgroups(pid, &orphan_cgroups) {
            let what = cmdline(pid).first().cloned().unwrap_or_default();
            out.push(Finding::Process { pid, what });
        }
    }
    out.extend(orphan_cgroups.into_iter().map(Finding::Cgroup));

    // The OCI runtimes' state of containers made from podrund's bundles.
    for (runtime, root) in [("crun", "/run/crun"), ("runc", "/run/runc")] {
        for (id, dir) in entries(Path::new(root)) {
            if is_id(&id) && !known.containers.contains(&id) && mentions(&dir, &c.state) {
                out.push(Finding::RuntimeState { runtime, id });
            }
        }
    }

    // State files of unknown pods and containers.
    for dir in record_dirs(c) {
        for (name, path) in entries(&dir) {
            if !known.any(&name) {
                out.push(Finding::StateFile(path));
            }
        }
    }
    for (name, path) in entries(&c.state.join("s")) {
        let prefix = name.trim_end_matches(".sock");
        if !known.pods.iter().any(|p| p.starts_with(prefix)) {
            out.push(Finding::StateFile(path));
        }
    }

    let leftovers = entries(&crate::cni::leftover_dir(&c.root));
    out.extend(leftovers.into_iter().map(|(_, p)| Finding::CniLeftover(p)));
    out.extend(missing(node));
    out
}

/// The dirs holding one entry per pod or container id.
fn record_dirs(c: &crate::config::Config) -> [PathBuf; 5] {
    [
        c.root.join("pods"),
        c.state.join("pods"),
        c.root.join("containers"),
        c.state.join("containers"),
        c.state.join("userns"),
    ]
}

/// What ready pods lack: their netns pin, their cgroup, a live shim.
fn missing(node: &Node) -> Vec<Finding> {
    let mut out = Vec::new();
    let cgroups = crate::cgroup::hierarchies().unwrap_or_default();
    for pod in node.sandboxes.all() {
        let r = pod.view();
        if r.state != crate::sandbox::State::Ready {
            continue;
        }
        if let Some(netns) = r.netns.as_ref().filter(|p| !p.exists()) {
            out.push(Finding::Missing(format!(
                "pod {}: netns {}",
                r.id,
                netns.display()
            )));
        }
        if let Some(h) = cgroups.first() {
            let dir = h.mount.join(r.cgroup.trim_start_matches('/'));
            if !dir.exists() {
                out.push(Finding::Missing(format!(
                    "pod {}: cgroup {}",
                    r.id, r.cgroup
                )));
            }
        }
        if r.shim.as_ref().is_some_and(|s| !s.is_alive()) {
            out.push(Finding::Missing(format!("pod {}: its shim", r.id)));
        }
    }
    out
}

/// host-local's data dirs for `net` (its `dataDir`, default /var/lib/cni/networks), one per
/// plugin that uses it.
fn host_local_dirs(net: &Network) -> Vec<PathBuf> {
    net.plugins
        .iter()
        .filter(|p| p["ipam"]["type"] == "host-local")
        .map(|p| {
            let base = p["ipam"]["dataDir"]
                .as_str()
                .unwrap_or("/var/lib/cni/networks");
            Path::new(base).join(&net.name)
        })
        .collect()
}

fn pids() -> Vec<i32> {
    fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .collect()
}

/// (pid, pod id) of every shim serving `socket` (their command line says so).
fn shims_of(socket: &Path) -> Vec<(i32, String)> {
    pids()
        .into_iter()
        .filter_map(|pid| {
            let argv = cmdline(pid);
            let arg = |flag: &str| {
                argv.iter()
                    .position(|a| a == flag)
                    .and_then(|i| argv.get(i + 1))
            };
            match (arg("-id"), arg("-address")) {
                (Some(id), Some(addr)) if Path::new(addr) == socket => Some((pid, id.clone())),
                _ => None,
            }
        })
        .collect()
}

fn cmdline(pid: i32) -> Vec<String> {
    fs::read(format!("/proc/{pid}/cmdline"))
        .unwrap_or_default()
        .split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect()
}

/// Whether `pid` is in one of `cgroups` (or below), in any hierarchy.
fn in_cgroups(pid: i32, cgroups: &[String]) -> bool {
    if cgroups.is_empty() {
        return false;
    }
    fs::read_to_string(format!("/proc/{pid}/cgroup"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.splitn(3, ':').nth(2))
        .any(|path| {
            cgroups
                .iter()
                .any(|c| path == c || path.starts_with(&format!("{c}/")))
        })
}

/// Whether a regular file in `dir` names `path` (the OCI runtimes record the bundle).
/// Only regular files, and only their first MiB: runc keeps a FIFO there (`exec.fifo`),
/// whose open would block until the container starts.
fn mentions(dir: &Path, path: &Path) -> bool {
    use std::io::Read;
    let needle = path.display().to_string();
    entries(dir).iter().any(|(_, f)| {
        let regular = fs::symlink_metadata(f).is_ok_and(|m| m.is_file());
        let mut text = Vec::new();
        regular
            && fs::File::open(f)
                .and_then(|file| file.take(1 << 20).read_to_end(&mut text))
                .is_ok()
            && String::from_utf8_lossy(&text).contains(&needle)
    })
}

/// Host veths whose peer is in one of the named netns (`ip -j`, the audit is not hot).
fn veths_into(netns: &HashSet<String>) -> Vec<String> {
    if netns.is_empty() {
        return Vec::new();
    }
    let json = |args: &[&str]| -> Value {
        std::process::Command::new("ip")
            .args(args)
            .output()
            .ok()
            .and_then(|o| serde_json::from_slice(&o.stdout).ok())
            .unwrap_or(Value::Null)
    };
    let ids: BTreeMap<i64, String> = json(&["-j", "netns", "list-id"])
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|n| Some((n["nsid"].as_i64()?, n["name"].as_str()?.to_owned())))
        .collect();
    json(&["-j", "link", "show", "type", "veth"])
        .as_array()
        .into_iter()
        .flatten()
        .filter(|l| {
            l["link_netnsid"]
                .as_i64()
                .and_then(|id| ids.get(&id))
                .is_some_and(|name| netns.contains(name))
        })
        .filter_map(|l| l["ifname"].as_str().map(str::to_owned))
        .collect()
}

/// Removes the orphans among `findings`; answers what could not be removed.
pub async fn fix(node: &Node, findings: &[Finding]) -> Vec<String> {
    let mut failed = Vec::new();
    if findings
        .iter()
        .any(|f| matches!(f, Finding::CniLeftover(_)))
    {
        let left = crate::cni::retry_leftovers(&node.config.root, node.cni.as_ref()).await;
        if left > 0 {
            failed.push(format!(
                "CNI DEL still fails for {left} leftover attachments"
            ));
        }
    }
    let net = Network::load_first(&node.config.cni_conf_dir)
        .ok()
        .flatten();
    // CNI DEL while the netns may still be there: it releases the IP and port mappings.
    for f in findings {
        if let (Finding::Ip { file, pod, ifname }, Some(net)) = (f, &net) {
            let netns = node.config.netns_dir.join(format!("podrun-{pod}"));
            let attachment = Attachment {
                network: net.clone(),
                container_id: pod.clone(),
                netns: if netns.exists() {
                    netns
                } else {
                    PathBuf::new()
                },
                ifname: ifname.clone(),
                args: vec![("IgnoreUnknown".into(), "1".into())],
                capabilities: Default::default(),
                result: None,
            };
            if let Err(e) = attachment.del(node.cni.as_ref()).await {
                failed.push(format!("CNI DEL for {}: {e}", file.display()));
            }
        }
    }
    for f in findings {
        if let Finding::Process { pid, .. } = f {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(*pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
    for f in findings {
        if let Finding::RuntimeState { runtime, id } = f {
            let _ = tokio::process::Command::new(runtime)
                .args(["delete", "--force", id])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status()
                .await;
        }
    }
    // Deepest mounts first.
    let mut mounts: Vec<&PathBuf> = findings
        .iter()
        .filter_map(|f| match f {
            Finding::Mount(p) | Finding::Netns(p) => Some(p),
            _ => None,
        })
        .collect();
    mounts.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    for p in mounts {
        let _ = nix::mount::umount2(p, nix::mount::MntFlags::MNT_DETACH);
    }
    let rest = findings.to_vec();
    let removed = tokio::task::spawn_blocking(move || remove_rest(&rest)).await;
    failed.extend(removed.unwrap_or_else(|e| vec![format!("removing orphans: {e}")]));
    failed
}

/// The netns pins, veths, cgroups and state files among `findings`, once their processes
/// are gone and their mounts detached.
fn remove_rest(findings: &[Finding]) -> Vec<String> {
    let mut failed = Vec::new();
    for f in findings {
        let result = match f {
            Finding::Netns(p) => fs::remove_file(p),
            Finding::Veth(name) => std::process::Command::new("ip")
                .args(["link", "del", name])
                .stderr(std::process::Stdio::null())
                .status()
                .map(|_| ()),
            Finding::Cgroup(rel) => {
                crate::cgroup::remove(rel).map_err(|e| std::io::Error::other(e.to_string()))
            }
            Finding::StateFile(p) if p.is_dir() => fs::remove_dir_all(p),
            Finding::StateFile(p) => fs::remove_file(p),
            _ => Ok(()),
        };
        if let Err(e) = result.or_else(|e| match e.kind() {
            std::io::ErrorKind::NotFound => Ok(()),
            _ => Err(e),
        }) {
            failed.push(format!("{f:?}: {e}"));
        }
    }
    failed
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::leak::Report;

    #[test]
    fn a_report_lists_each_kind_and_is_clean_when_empty() {
        assert!(Report::of(&[]).is_clean());
        let id = "a".repeat(64);
        let r = Report::of(&[
            Finding::Netns(PathBuf::from(format!("/run/netns/podrun-{id}"))),
            Finding::Ip {
                file: PathBuf::from("/var/lib/cni/networks/n/10.0.0.2"),
                pod: id.clone(),
                ifname: "eth0".into(),
            },
            Finding::Cgroup(format!("/podrun/{id}")),
        ]);
        assert!(!r.is_clean());
        assert_eq!(r.netns.len(), 1);
        assert_eq!(
            r.ip_reservations,
            [format!("/var/lib/cni/networks/n/10.0.0.2 (pod {id})")]
        );
        assert_eq!(r.cgroups, [format!("/podrun/{id}")]);
        assert!(is_id(&id) && !is_id("abc") && !is_id(&"g".repeat(64)));
    }

    #[test]
    fn runtime_state_with_a_fifo_is_read_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        nix::unistd::mkfifo(&dir.path().join("exec.fifo"), nix::sys::stat::Mode::S_IRWXU).unwrap();
        assert!(!mentions(dir.path(), Path::new("/run/podrun")));
        fs::write(
            dir.path().join("state.json"),
            r#"{"bundle":"/run/podrun/containers/x"}"#,
        )
        .unwrap();
        assert!(mentions(dir.path(), Path::new("/run/podrun")));
    }
}
