//! The multi-node test bed, driven through `hack/nodes` exactly as a person would: N node
//! namespaces, each with its own podrund, joined by an underlay, in one of three modes.
//! Each bed takes a number unique among beds up on this machine (its names, subnets and
//! dirs derive from it) and is torn down by `hack/nodes down` when dropped, even when the
//! test fails.

use std::fs;
use std::net::{IpAddr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use podrun_proto::cri;

use crate::{bin_dir, pod_info, require_root_and_tools, Client};

/// `hack/nodes` in this checkout.
pub fn hack_nodes() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../hack/nodes")
}

/// Fails loudly, naming the package, when a tool the bed needs is missing.
pub fn require(tool: &str, package: &str) {
    let found = ["/usr/sbin", "/usr/bin", "/sbin", "/bin"]
        .iter()
        .any(|d| Path::new(d).join(tool).exists());
    assert!(
        found,
        "{tool} is missing: install {package} (hack/setup does)"
    );
}

/// One node of a bed, as `hack/nodes` printed it.
#[derive(Debug, Clone)]
pub struct BedNode {
    pub name: String,
    pub netns: String,
    pub ip: IpAddr,
    pub pod_cidr: String,
    pub socket: PathBuf,
    pub cgroup_parent: String,
}

impl BedNode {
    fn parse(line: &str) -> Result<BedNode> {
        let mut words = line.split_whitespace();
        let name = words.next().context("empty line")?.to_owned();
        let kv: std::collections::HashMap<&str, &str> =
            words.filter_map(|w| w.split_once('=')).collect();
        let get = |k: &str| -> Result<String> {
            Ok(kv
                .get(k)
                .with_context(|| format!("{k} missing in {line:?}"))?
                .to_string())
        };
        Ok(BedNode {
            name,
            netns: get("netns")?,
            ip: get("ip")?.parse()?,
            pod_cidr: get("podCIDR")?,
            socket: get("socket")?.into(),
            cgroup_parent: get("cgroupParent")?,
        })
    }

    /// The node's netns pin.
    pub fn netns_path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.netns)
    }

    /// The first three octets of the pod CIDR, with the dot.
    pub fn pod_prefix(&self) -> String {
        let base = self.pod_cidr.split('/').next().unwrap_or_default();
        base.rsplit_once('.')
            .map(|(p, _)| format!("{p}."))
            .unwrap_or_default()
    }

    pub async fn client(&self) -> Client {
        podrun_proto::client::runtime(&self.socket)
            .await
            .unwrap_or_else(|e| panic!("connecting to {}'s podrund: {e:?}", self.name))
    }

    /// Runs `ip args` in this node's netns.
    pub fn ip(&self, args: &[&str]) -> Result<String> {
        let out = Command::new("ip")
            .arg("-n")
            .arg(&self.netns)
            .args(args)
            .output()?;
        if !out.status.success() {
            bail!(
                "ip -n {} {args:?}: {}",
                self.netns,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Runs podctl against this node's podrund, in this node's netns.
    pub fn podctl(&self, args: &[&str]) -> Output {
        Command::new("nsenter")
            .arg(format!("--net={}", self.netns_path().display()))
            .arg("--")
            .arg(bin_dir().join("podctl"))
            .arg("-r")
            .arg(&self.socket)
            .args(args)
            .output()
            .expect("running podctl")
    }
}

/// A pod running on a bed node.
#[derive(Debug, Clone)]
pub struct BedPod {
    pub id: String,
    pub ip: IpAddr,
    pub netns: PathBuf,
}

/// A test bed of several nodes; `hack/nodes down` on drop.
pub struct Bed {
    pub number: u8,
    pub mode: &'static str,
    pub nodes: Vec<BedNode>,
    lock: PathBuf,
}

impl Bed {
    /// `hack/nodes up --nodes n --mode mode` on a bed number of its own.
    pub fn up(nodes: usize, mode: &'static str) -> Bed {
        require_root_and_tools();
        require("bridge", "iproute2");
        if mode == "bgp" {
            require("bird", "bird2");
            require("birdc", "bird2");
        }
        let (number, lock) = take_number();
        let mut bed = Bed {
            number,
            mode,
            nodes: Vec::new(),
            lock,
        };
        bed.down(); // leftovers of an earlier, interrupted run with this number
        let out = bed.hack(&["up", "--nodes", &nodes.to_string(), "--mode", mode]);
        bed.nodes = parse_nodes(&out);
        assert_eq!(bed.nodes.len(), nodes, "hack/nodes up printed:\n{out}");
        bed
    }

    /// `hack/nodes add`: one more node, joined to the others.
    pub fn add_node(&mut self) -> BedNode {
        let out = self.hack(&["add"]);
        let node = parse_nodes(&out)
            .pop()
            .expect("hack/nodes add printed no node");
        self.nodes.push(node.clone());
        node
    }

    fn hack(&self, args: &[&str]) -> String {
        let out = Command::new(hack_nodes())
            .args(args)
            .args(["--bed", &self.number.to_string()])
            .args(["--bin-dir", &bin_dir().display().to_string()])
            .stdin(Stdio::null())
            .output()
            .expect("running hack/nodes");
        assert!(
            out.status.success(),
            "hack/nodes {args:?} failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `hack/nodes down`.
    pub fn down(&self) {
        let out = Command::new(hack_nodes())
            .args(["down", "--bed", &self.number.to_string()])
            .stdin(Stdio::null())
            .output()
            .expect("running hack/nodes down");
        assert!(
            out.status.success(),
            "hack/nodes down: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    pub fn prefix(&self) -> String {
        format!("pnb{}", self.number)
    }

    pub fn dir(&self) -> PathBuf {
        PathBuf::from(format!("/run/podrun-nodes/{}", self.prefix()))
    }

    /// Everything of this bed still on the machine: namespaces, links in the machine's
    /// namespace, processes, files, cgroups, pod netns pins of `pods`.
    pub fn leftovers(&self, pods: &[String]) -> Vec<String> {
        leftovers(self.number, pods)
    }

    /// Runs a pod on node `i` (0-based) and returns its id, IP and netns.
    pub async fn run_pod(&self, i: usize, name: &str) -> BedPod {
        let node = &self.nodes[i];
        let mut client = node.client().await;
        let config = cri::PodSandboxConfig {
            metadata: Some(cri::PodSandboxMetadata {
                name: name.into(),
                namespace: "podrun-nodes-test".into(),
                uid: format!("uid-{name}-{}", self.prefix()),
                attempt: 0,
            }),
            hostname: name.into(),
            linux: Some(cri::LinuxPodSandboxConfig {
                cgroup_parent: node.cgroup_parent.clone(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let id = client
            .run_pod_sandbox(cri::RunPodSandboxRequest {
                config: Some(config),
                ..Default::default()
            })
            .await
            .unwrap_or_else(|e| panic!("RunPodSandbox {name} on {}: {e}", node.name))
            .into_inner()
            .pod_sandbox_id;
        let (status, info) = pod_info(&mut client, &id).await.expect("pod status");
        BedPod {
            id,
            ip: status
                .network
                .expect("pod network")
                .ip
                .parse()
                .expect("pod IP"),
            netns: info["netnsPath"].as_str().expect("netnsPath").into(),
        }
    }

    /// Stops and removes a pod on node `i` over CRI.
    pub async fn remove_pod(&self, i: usize, id: &str) {
        let mut client = self.nodes[i].client().await;
        crate::stop_and_remove(&mut client, id).await;
    }
}

impl Drop for Bed {
    fn drop(&mut self) {
        let _ = Command::new(hack_nodes())
            .args(["down", "--bed", &self.number.to_string()])
            .stdin(Stdio::null())
            .status();
        let _ = fs::remove_dir(&self.lock);
    }
}

fn parse_nodes(out: &str) -> Vec<BedNode> {
    out.lines()
        .filter(|l| l.starts_with("node"))
        .map(|l| BedNode::parse(l).expect("hack/nodes output"))
        .collect()
}

/// Everything of bed `number` still on the machine: namespaces, links in the machine's
/// namespace, processes, files, cgroups, pod netns pins of `pods`.
pub fn leftovers(number: u8, pods: &[String]) -> Vec<String> {
    let prefix = format!("pnb{number}");
    let dir_path = PathBuf::from(format!("/run/podrun-nodes/{prefix}"));
    let p = format!("{prefix}-");
    let mut found = Vec::new();
    for e in fs::read_dir("/run/netns").into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with(&p) || pods.iter().any(|id| name == format!("podrun-{id}")) {
            found.push(format!("netns {name}"));
        }
    }
    let links = Command::new("ip").args(["-o", "link", "show"]).output();
    for l in links
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
        .lines()
    {
        let name = l.split(": ").nth(1).unwrap_or_default();
        if name.starts_with(&prefix) {
            found.push(format!("link {name}"));
        }
    }
    let dir = dir_path.display().to_string();
    for pid in crate::processes_mentioning(&dir) {
        found.push(format!("process {pid}"));
    }
    for pid in crate::processes_mentioning(&format!("pnb{}-n", number)) {
        found.push(format!("process {pid}"));
    }
    if dir_path.exists() {
        found.push(format!("dir {dir}"));
    }
    if let Ok(info) = fs::read_to_string("/proc/self/mountinfo") {
        found.extend(
            info.lines()
                .filter(|l| l.contains(&dir))
                .map(|l| format!("mount {l}")),
        );
    }
    for h in crate::cgroup_hierarchies() {
        for e in fs::read_dir(&h).into_iter().flatten().flatten() {
            if e.file_name().to_string_lossy().starts_with(&p) {
                found.push(format!("cgroup {}", e.path().display()));
            }
        }
    }
    found
}

/// A bed number no other test holds now, held by an exclusive directory. Tests take 10..=99
/// and leave 1..=9 to people (`hack/nodes up` uses bed 1 unless told otherwise).
pub(crate) fn take_number() -> (u8, PathBuf) {
    fs::create_dir_all("/run/podrun-tests").expect("creating /run/podrun-tests");
    loop {
        for n in 10..=99u8 {
            let lock = PathBuf::from(format!("/run/podrun-tests/bed-{n}"));
            if fs::create_dir(&lock).is_ok() {
                return (n, lock);
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A TCP server in a netns that answers each connection with the source address it saw;
/// stops (and closes its socket) when dropped.
pub struct PeerServer {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl PeerServer {
    pub fn start(netns: &Path, port: u16) -> Result<PeerServer> {
        let listener =
            crate::netns::in_netns(netns, move || TcpListener::bind(("0.0.0.0", port)))??;
        listener.set_nonblocking(true)?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            use std::io::Write;
            while !flag.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((mut conn, peer)) => {
                        let _ = conn.set_nonblocking(false);
                        let _ = conn.write_all(peer.ip().to_string().as_bytes());
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        Ok(PeerServer {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for PeerServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Connects from `netns` to `addr` and returns the source address the server saw.
pub fn seen_from(netns: &Path, addr: SocketAddr) -> Result<IpAddr> {
    crate::netns::seen_as(Some(netns), addr)
}
