//! The test bed for podrun's end-to-end tests: a real podrund instance per test, with its
//! own root, state dir, socket, CNI network (bridge, subnet, IPAM dir) and cgroup parent,
//! so tests run side by side; and checks, from the outside, that nothing was leaked.

pub mod bed;
pub mod cluster;
pub mod containerd;
pub mod kube;
pub mod netns;
pub mod registry;
pub mod workload;

use std::fs::{self, OpenOptions};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use podrun_proto::client;
use podrun_proto::cri;
use podrun_proto::cri::runtime_service_client::RuntimeServiceClient;
use tonic::transport::Channel;

pub type Client = RuntimeServiceClient<Channel>;

/// Fails loudly, naming what to install, when a prerequisite is missing.
pub fn require_root_and_tools() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "podrun's end-to-end tests need root"
    );
    for (tool, package) in [
        ("/usr/lib/cni/bridge", "containernetworking-plugins"),
        ("/usr/sbin/ip", "iproute2"),
        ("/usr/bin/nsenter", "util-linux"),
    ] {
        assert!(
            Path::new(tool).exists(),
            "{tool} is missing: install {package} (hack/setup does)"
        );
    }
}

/// Where cargo put podrun's binaries, next to this test's executable.
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    // Tests run from target/<triple>/<profile>/deps/, binaries such as podrun-bench from
    // target/<triple>/<profile>/ itself.
    let here = exe.parent().expect("exe dir");
    let dir = match here.join("podrund").is_file() {
        true => here.to_owned(),
        false => here.parent().expect("target dir").to_owned(),
    };
    for b in [
        "podrund",
        "containerd-shim-podrun-v2",
        "podrun-pause",
        "podctl",
    ] {
        assert!(
            dir.join(b).is_file(),
            "{} missing: run `cargo build --workspace --bins` (hack/test does)",
            dir.join(b).display()
        );
    }
    dir
}

/// A test's slot: a small number unique among tests running now on this machine, which
/// names the bridge and picks the subnet. Held by an exclusive directory.
struct Slot {
    n: u8,
    lock: PathBuf,
}

impl Slot {
    fn take() -> Slot {
        fs::create_dir_all("/run/podrun-tests").expect("creating /run/podrun-tests");
        loop {
            for n in 1..=250u8 {
                let lock = PathBuf::from(format!("/run/podrun-tests/slot-{n}"));
                if fs::create_dir(&lock).is_ok() {
                    return Slot { n, lock };
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let _ = fs::remove_dir(&self.lock);
    }
}

/// The CNI plugins a test network chains after the bridge.
pub enum Chain {
    /// bridge (host-local IPAM), portmap and no `loopback` plugin, shaped like the
    /// conflists operators run (Flannel's, Calico's): podrund alone must bring `lo` up.
    Operator,
    /// bridge, loopback, portmap: podrun's own default network (`hack/setup`).
    WithLoopback,
    /// bridge, then a plugin that fails after the bridge has attached the pod.
    FailingAfterBridge,
    /// bridge, then a plugin (a script of the test's, in `<dir>/cni-bin`) whose DEL fails
    /// until the file `<dir>/cni-bin/allow-del` exists, and whose ADD hangs while
    /// `<dir>/cni-bin/hang-add` exists.
    FailingDel,
    /// A network of CNI spec 1.1.0 whose only plugin (a script of the test's, in
    /// `<dir>/cni-bin`) supports GC: ADD reserves an address (a file in
    /// `<dir>/cni-bin/reservations`), DEL releases it, GC releases every reservation not
    /// among the valid attachments and appends its input to `<dir>/cni-bin/gc-calls`.
    /// (Debian's plugins, 1.1.1, predate spec 1.1 and GC.)
    GcCapable,
}

/// The GcCapable plugin.
const GC_PLUGIN: &str = r#"#!/usr/bin/python3
import json, os, sys, zlib
here = os.path.dirname(os.path.abspath(__file__))
resv = os.path.join(here, "reservations")
os.makedirs(resv, exist_ok=True)
conf = json.load(sys.stdin)
command = os.environ.get("CNI_COMMAND")
cid = os.environ.get("CNI_CONTAINERID", "")
if command == "ADD":
    ip = "10.239.%d.%d/16" % (zlib.crc32(cid.encode()) % 250, 2 + zlib.crc32(cid.encode()[::-1]) % 250)
    open(os.path.join(resv, cid), "w").write(ip)
    print(json.dumps({"cniVersion": conf["cniVersion"], "ips": [{"address": ip}]}))
elif command == "DEL":
    try: os.remove(os.path.join(resv, cid))
    except FileNotFoundError: pass
elif command == "GC":
    with open(os.path.join(here, "gc-calls"), "a") as f:
        f.write(json.dumps(conf) + "\n")
    valid = {a["containerID"] for a in conf.get("cni.dev/valid-attachments", [])}
    for name in os.listdir(resv):
        if name not in valid:
            os.remove(os.path.join(resv, name))
elif command == "VERSION":
    print(json.dumps({"cniVersion": "1.1.0", "supportedVersions": ["1.0.0", "1.1.0"]}))
"#;

/// The FailingDel plugin: passes ADD's prevResult through, fails DEL unless allowed.
const FAIL_DEL_PLUGIN: &str = r#"#!/usr/bin/python3
import json, os, sys, time
conf = json.load(sys.stdin)
command = os.environ.get("CNI_COMMAND")
if command == "DEL" and not os.path.exists(os.path.join(os.path.dirname(__file__), "allow-del")):
    print(json.dumps({"cniVersion": "1.0.0", "code": 999, "msg": "podrun-test-fail-del: DEL fails"}))
    sys.exit(1)
if command == "ADD":
    while os.path.exists(os.path.join(os.path.dirname(__file__), "hang-add")):
        time.sleep(1)
    print(json.dumps(conf.get("prevResult", {"cniVersion": "1.0.0"})))
"#;

/// One podrund instance with everything of its own.
pub struct TestNode {
    slot: Slot,
    pub dir: PathBuf,
    pub socket: PathBuf,
    pub bridge: String,
    pub subnet_prefix: String,
    pub ipam_dir: PathBuf,
    pub cgroup_parent: String,
    daemon: Option<Child>,
    pods: std::sync::Mutex<Vec<String>>,
    /// More podrund flags, for tests that start it themselves (`prepare`, then
    /// `spawn_daemon`).
    pub extra_args: Vec<String>,
    /// More environment for podrund (PODRUN_CRASH_AT).
    pub extra_env: Vec<(String, String)>,
}

impl TestNode {
    pub fn start(chain: Chain) -> TestNode {
        let mut node = TestNode::prepare(chain);
        node.spawn_daemon();
        node
    }

    /// A node's slot, dirs, bridge and CNI config, without podrund (for another runtime).
    pub fn prepare(chain: Chain) -> TestNode {
        require_root_and_tools();
        let slot = Slot::take();
        let n = slot.n;
        let dir = PathBuf::from(format!("/tmp/podrun-test-{n}"));
        let _ = fs::remove_dir_all(&dir);
        let bridge = format!("prt{n}");
        let _ = Command::new("ip")
            .args(["link", "del", &bridge])
            .stderr(Stdio::null())
            .status();
        let node = TestNode {
            socket: dir.join("state/podrun.sock"),
            ipam_dir: dir.join("ipam"),
            subnet_prefix: format!("10.240.{n}."),
            cgroup_parent: format!("/podrun-test-{n}"),
            bridge,
            dir,
            slot,
            daemon: None,
            pods: Default::default(),
            extra_args: Vec::new(),
            extra_env: Vec::new(),
        };
        node.write_cni(chain);
        node
    }

    /// Writes a plugin script of the test's into `<dir>/cni-bin`.
    fn test_plugin(&self, name: &str, script: &str) {
        let bin = self.dir.join("cni-bin");
        fs::create_dir_all(&bin).unwrap();
        let plugin = bin.join(name);
        fs::write(&plugin, script).unwrap();
        fs::set_permissions(&plugin, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    }

    fn write_cni(&self, chain: Chain) {
        fs::create_dir_all(self.dir.join("cni")).unwrap();
        if let Chain::GcCapable = chain {
            self.test_plugin("podrun-test-gc", GC_PLUGIN);
            let conf = format!(
                r#"{{"cniVersion":"1.1.0","name":"podrun-test-{}","plugins":[{{"type":"podrun-test-gc"}}]}}"#,
                self.slot.n
            );
            fs::write(self.dir.join("cni/10-test.conflist"), conf).unwrap();
            return;
        }
        let extra = match chain {
            Chain::Operator => "",
            Chain::WithLoopback => r#",{"type":"loopback"}"#,
            Chain::FailingAfterBridge => {
                r#",{"type":"tuning","sysctl":{"net.ipv4.conf.eth0.no_such_knob":"1"}}"#
            }
            Chain::FailingDel => {
                self.test_plugin("podrun-test-fail-del", FAIL_DEL_PLUGIN);
                r#",{"type":"podrun-test-fail-del"}"#
            }
            Chain::GcCapable => unreachable!("written above"),
        };
        let conf = format!(
            r#"{{"cniVersion":"1.0.0","name":"podrun-test-{n}","plugins":[
  {{"type":"bridge","bridge":"{br}","isGateway":true,"ipMasq":false,"hairpinMode":true,
    "ipam":{{"type":"host-local","ranges":[[{{"subnet":"{p}0/24"}}]],"routes":[{{"dst":"0.0.0.0/0"}}],"dataDir":"{ipam}"}}}}{extra},
  {{"type":"portmap","capabilities":{{"portMappings":true}}}}]}}"#,
            n = self.slot.n,
            br = self.bridge,
            p = self.subnet_prefix,
            ipam = self.ipam_dir.display(),
        );
        fs::write(self.dir.join("cni/10-test.conflist"), conf).unwrap();
    }

    /// Starts podrund and waits until it answers.
    pub fn spawn_daemon(&mut self) {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("podrund.log"))
            .unwrap();
        let child = Command::new(bin_dir().join("podrund"))
            .arg("--root")
            .arg(self.dir.join("root"))
            .arg("--state")
            .arg(self.dir.join("state"))
            .arg("--cni-conf-dir")
            .arg(self.dir.join("cni"))
            .args(["--cni-bin-dir", "/usr/lib/cni", "--log-level", "debug"])
            .arg("--cni-bin-dir")
            .arg(self.dir.join("cni-bin"))
            // Short-lived streaming URLs, so a test can see one expire.
            .args(["--streaming-token-ttl", "5"])
            .args(&self.extra_args)
            .arg("--registry-config-path")
            .arg(self.dir.join("certs.d"))
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .envs(self.extra_env.iter().cloned())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("starting podrund");
        self.daemon = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::os::unix::net::UnixStream::connect(&self.socket).is_err() {
            assert!(
                Instant::now() < deadline,
                "podrund did not come up; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn daemon_pid(&self) -> Option<i32> {
        self.daemon.as_ref().map(|c| c.id() as i32)
    }

    /// SIGKILLs podrund, as a crash would.
    pub fn kill_daemon(&mut self) {
        if let Some(mut child) = self.daemon.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn log(&self) -> String {
        let mut s = String::new();
        let _ =
            fs::File::open(self.dir.join("podrund.log")).and_then(|mut f| f.read_to_string(&mut s));
        s
    }

    /// A CRI client; like kubelet, it retries a connection that fails while podrund is
    /// still coming up.
    pub async fn client(&self) -> Client {
        let mut tries = 0;
        loop {
            match client::runtime(&self.socket).await {
                Ok(c) => return c,
                Err(_) if tries < 20 => tries += 1,
                Err(e) => panic!("connecting to podrund: {e:?}; its log:\n{}", self.log()),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// A pod config with unique metadata, in this node's cgroup parent.
    pub fn pod_config(&self, name: &str) -> cri::PodSandboxConfig {
        cri::PodSandboxConfig {
            metadata: Some(cri::PodSandboxMetadata {
                name: name.into(),
                namespace: "podrun-test".into(),
                uid: format!("uid-{name}-{}", self.slot.n),
                attempt: 0,
            }),
            hostname: name.into(),
            labels: [("test".to_owned(), name.to_owned())].into(),
            linux: Some(cri::LinuxPodSandboxConfig {
                cgroup_parent: self.cgroup_parent.clone(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// A pod config whose security context sets these namespace options.
    pub fn pod_config_with(
        &self,
        name: &str,
        options: cri::NamespaceOption,
    ) -> cri::PodSandboxConfig {
        let mut config = self.pod_config(name);
        if let Some(linux) = config.linux.as_mut() {
            linux.security_context = Some(cri::LinuxSandboxSecurityContext {
                namespace_options: Some(options),
                ..Default::default()
            });
        }
        config
    }

    fn podctl_output(&self, args: &[&str]) -> std::process::Output {
        Command::new(bin_dir().join("podctl"))
            .arg("-r")
            .arg(&self.socket)
            .args(args)
            .output()
            .unwrap()
    }

    /// Runs podctl against this node; it must succeed. Returns its stdout.
    pub fn podctl(&self, args: &[&str]) -> String {
        let out = self.podctl_output(args);
        assert!(
            out.status.success(),
            "podctl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// `podctl doctor --json` (and `extra` flags) against this node: its exit code (0:
    /// clean) and report.
    pub fn doctor(&self, extra: &[&str]) -> (Option<i32>, serde_json::Value) {
        let out = self.podctl_output(&[&["doctor", "--json"], extra].concat());
        let report = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
        (out.status.code(), report)
    }

    /// Runs a pod and remembers its id for the leak checks.
    pub async fn run_pod(
        &self,
        client: &mut Client,
        config: cri::PodSandboxConfig,
    ) -> Result<String, tonic::Status> {
        let id = client
            .run_pod_sandbox(cri::RunPodSandboxRequest {
                config: Some(config),
                ..Default::default()
            })
            .await?
            .into_inner()
            .pod_sandbox_id;
        self.remember(&id);
        Ok(id)
    }

    pub fn remember(&self, id: &str) {
        self.pods.lock().unwrap().push(id.to_owned());
    }

    /// Pinned netns of pods this test made (or that podrund still records), still present.
    fn netns_pins(&self) -> Vec<PathBuf> {
        let mut ids = self.pods.lock().unwrap().clone();
        ids.extend(
            fs::read_dir(self.dir.join("root/pods"))
                .into_iter()
                .flatten()
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned()),
        );
        ids.iter()
            .map(|id| PathBuf::from(format!("/run/netns/podrun-{id}")))
            .filter(|p| p.exists())
            .collect()
    }

    /// Everything podrun made for this node that is still there; empty when nothing leaked.
    pub fn leftovers(&self) -> Vec<String> {
        let mut found = Vec::new();
        for sub in [
            "root/pods",
            "state/pods",
            "root/containers",
            "state/containers",
        ] {
            if let Ok(entries) = fs::read_dir(self.dir.join(sub)) {
                found.extend(
                    entries
                        .flatten()
                        .map(|e| format!("state file {}", e.path().display())),
                );
            }
        }
        let state = self.dir.join("state").display().to_string();
        for pid in processes_mentioning(&state) {
            found.push(format!("process {pid} ({})", cmdline(pid)));
        }
        for pid in pause_children_of_gone_shims(&self.cgroup_parent) {
            found.push(format!("process {pid} in pod cgroup"));
        }
        if let Ok(info) = fs::read_to_string("/proc/self/mountinfo") {
            for line in info
                .lines()
                .filter(|l| l.contains(&self.dir.display().to_string()))
            {
                found.push(format!("mount {line}"));
            }
        }
        found.extend(
            runtime_containers(&self.dir)
                .into_iter()
                .map(|(runtime, id)| format!("{runtime} container {id}")),
        );
        found.extend(
            self.netns_pins()
                .into_iter()
                .map(|p| format!("netns {}", p.display())),
        );
        found.extend(
            bridge_ports(&self.bridge)
                .into_iter()
                .map(|p| format!("veth {p} on {}", self.bridge)),
        );
        found.extend(
            ip_reservations(&self.ipam_dir)
                .into_iter()
                .map(|r| format!("IP reservation {r}")),
        );
        found.extend(
            cgroup_children(&self.cgroup_parent)
                .into_iter()
                .map(|c| format!("cgroup {c}")),
        );
        found
    }

    /// Fails naming whatever is left. The kernel tears a network namespace (and the veth in
    /// it) down asynchronously once its last process is gone, so what is left is looked at
    /// again for up to 3 s before it counts as leaked.
    pub fn assert_no_leaks(&self) {
        let mut left = self.leftovers();
        let deadline = Instant::now() + Duration::from_secs(3);
        while !left.is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
            left = self.leftovers();
        }
        assert!(left.is_empty(), "leaked:\n  {}", left.join("\n  "));
    }
}

impl Drop for TestNode {
    /// Stops the daemon and clears whatever a failed test left, so later tests start clean.
    fn drop(&mut self) {
        self.kill_daemon();
        let state = self.dir.join("state").display().to_string();
        for pid in processes_mentioning(&state) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        for c in cgroup_children(&self.cgroup_parent) {
            let _ = Command::new("sh")
                .arg("-c")
                .arg(format!(
                    "for p in $(cat {c}/cgroup.procs); do kill -9 $p; done"
                ))
                .status();
        }
        std::thread::sleep(Duration::from_millis(100));
        if let Ok(info) = fs::read_to_string("/proc/self/mountinfo") {
            for line in info.lines() {
                let mountpoint = line.split(' ').nth(4).unwrap_or_default();
                if mountpoint.starts_with(&self.dir.display().to_string()) {
                    let _ = nix::mount::umount2(mountpoint, nix::mount::MntFlags::MNT_DETACH);
                }
            }
        }
        // Containers a failed test left in the OCI runtimes' state (their bundles are ours).
        for (runtime, id) in runtime_containers(&self.dir) {
            let _ = Command::new(runtime)
                .args(["delete", "--force", &id])
                .stderr(Stdio::null())
                .status();
        }
        for ns in self.netns_pins() {
            let _ = nix::mount::umount2(&ns, nix::mount::MntFlags::MNT_DETACH);
            let _ = fs::remove_file(&ns);
        }
        for h in cgroup_hierarchies() {
            remove_cgroup_tree(&h.join(self.cgroup_parent.trim_start_matches('/')));
        }
        let _ = Command::new("ip")
            .args(["link", "del", &self.bridge])
            .stderr(Stdio::null())
            .status();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// Containers runc and crun know whose bundle lies under `dir`: (runtime, id).
fn runtime_containers(dir: &Path) -> Vec<(&'static str, String)> {
    let mut found = Vec::new();
    for runtime in ["runc", "crun"] {
        let Ok(out) = Command::new(runtime)
            .args(["list", "--format", "json"])
            .output()
        else {
            continue;
        };
        let list: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap_or_default();
        for c in list {
            if c["bundle"]
                .as_str()
                .is_some_and(|b| Path::new(b).starts_with(dir))
            {
                found.push((runtime, c["id"].as_str().unwrap_or_default().to_owned()));
            }
        }
    }
    found
}

fn cmdline(pid: i32) -> String {
    fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
        .unwrap_or_default()
}

/// Processes whose command line mentions `needle` (the shims name podrund's socket).
pub fn processes_mentioning(needle: &str) -> Vec<i32> {
    let me = std::process::id() as i32;
    fs::read_dir("/proc")
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
                .filter(|&pid| {
                    pid != me
                        && cmdline(pid).contains(needle)
                        && !cmdline(pid)
                            .starts_with(&bin_dir().join("podrund").display().to_string())
                })
                .collect()
        })
        .unwrap_or_default()
}

fn pause_children_of_gone_shims(parent: &str) -> Vec<i32> {
    cgroup_children(parent)
        .iter()
        .flat_map(|c| {
            fs::read_to_string(format!("{c}/cgroup.procs"))
                .unwrap_or_default()
                .lines()
                .filter_map(|l| l.parse().ok())
                .collect::<Vec<i32>>()
        })
        .collect()
}

/// The cgroup mount points, read independently of podrun's own code.
pub fn cgroup_hierarchies() -> Vec<PathBuf> {
    fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            let fstype = right.split(' ').next()?;
            let f: Vec<&str> = left.split(' ').collect();
            (matches!(fstype, "cgroup" | "cgroup2") && f.get(3) == Some(&"/"))
                .then(|| PathBuf::from(f[4]))
        })
        .collect()
}

/// Removes a cgroup and everything below it, deepest first (after killing its processes).
pub fn remove_cgroup_tree(dir: &Path) {
    for e in fs::read_dir(dir).into_iter().flatten().flatten() {
        if e.path().is_dir() {
            remove_cgroup_tree(&e.path());
        }
    }
    for pid in fs::read_to_string(dir.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.parse().ok())
    {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    for _ in 0..50 {
        if fs::remove_dir(dir).is_ok() || !dir.exists() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Leaf cgroups left under `parent`, in any hierarchy.
pub fn cgroup_children(parent: &str) -> Vec<String> {
    let mut out = Vec::new();
    for h in cgroup_hierarchies() {
        if let Ok(entries) = fs::read_dir(h.join(parent.trim_start_matches('/'))) {
            out.extend(
                entries
                    .flatten()
                    .filter(|e| e.path().is_dir())
                    .map(|e| e.path().display().to_string()),
            );
        }
    }
    out
}

/// Interfaces enslaved to `bridge` (the host ends of pod veths).
pub fn bridge_ports(bridge: &str) -> Vec<String> {
    let out = Command::new("ip")
        .args(["-o", "link", "show", "master", bridge])
        .stderr(Stdio::null())
        .output();
    out.map(|o| {
        String::from_utf8_lossy(&o.stdout)
            .lines()
            .filter_map(|l| {
                l.split(": ")
                    .nth(1)
                    .map(|n| n.split('@').next().unwrap_or(n).to_owned())
            })
            .collect()
    })
    .unwrap_or_default()
}

/// host-local's reservation files (one per allocated IP) under `dir`.
pub fn ip_reservations(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for net in fs::read_dir(dir).into_iter().flatten().flatten() {
        for f in fs::read_dir(net.path()).into_iter().flatten().flatten() {
            let name = f.file_name().to_string_lossy().into_owned();
            if name != "lock" && !name.starts_with("last_reserved_ip") {
                out.push(f.path().display().to_string());
            }
        }
    }
    out
}

/// Every pod podrund lists (ListPodSandbox without a filter), which must succeed.
pub async fn list_pods(client: &mut Client) -> Vec<cri::PodSandbox> {
    client
        .list_pod_sandbox(cri::ListPodSandboxRequest::default())
        .await
        .expect("ListPodSandbox")
        .into_inner()
        .items
}

/// Every container podrund lists (ListContainers without a filter), which must succeed.
pub async fn list_containers(client: &mut Client) -> Vec<cri::Container> {
    client
        .list_containers(cri::ListContainersRequest::default())
        .await
        .expect("ListContainers")
        .into_inner()
        .containers
}

/// StopPodSandbox then RemovePodSandbox, both required to succeed.
pub async fn stop_and_remove(client: &mut Client, id: &str) {
    client
        .stop_pod_sandbox(cri::StopPodSandboxRequest {
            pod_sandbox_id: id.into(),
        })
        .await
        .expect("StopPodSandbox");
    client
        .remove_pod_sandbox(cri::RemovePodSandboxRequest {
            pod_sandbox_id: id.into(),
        })
        .await
        .expect("RemovePodSandbox");
}

/// The verbose info podrund gives for a pod.
pub async fn pod_info(
    client: &mut Client,
    id: &str,
) -> Result<(cri::PodSandboxStatus, serde_json::Value)> {
    let resp = client
        .pod_sandbox_status(cri::PodSandboxStatusRequest {
            pod_sandbox_id: id.into(),
            verbose: true,
        })
        .await?
        .into_inner();
    let info = resp.info.get("info").context("no verbose info")?;
    Ok((
        resp.status.context("no status")?,
        serde_json::from_str(info)?,
    ))
}

/// Polls `check` until it holds or `limit` passes.
pub fn wait_until(limit: Duration, mut check: impl FnMut() -> bool) -> Result<()> {
    let deadline = Instant::now() + limit;
    while !check() {
        if Instant::now() > deadline {
            bail!("condition not met within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// A small tmpfs, for tests of a full disk: mounted outside any node's dir (whose mounts
/// count as leaks) for the test to link in, and unmounted when dropped, however the test
/// ends.
pub struct SmallDisk {
    pub path: PathBuf,
}

impl SmallDisk {
    pub fn mount(name: &str, size: &str) -> SmallDisk {
        let path = PathBuf::from(format!("/tmp/podrun-{name}-{}", std::process::id()));
        fs::create_dir_all(&path).unwrap();
        nix::mount::mount(
            Some("tmpfs"),
            &path,
            Some("tmpfs"),
            nix::mount::MsFlags::empty(),
            Some(format!("size={size}").as_str()),
        )
        .expect("mounting a tmpfs");
        SmallDisk { path }
    }

    /// Writes a file under the disk until no byte more fits; removing it makes room.
    pub fn fill(&self) -> PathBuf {
        let filler = self.path.join("filler");
        let mut f = fs::File::create(&filler).unwrap();
        let chunk = vec![1u8; 64 << 10];
        while std::io::Write::write_all(&mut f, &chunk).is_ok() {}
        while std::io::Write::write_all(&mut f, &[1u8]).is_ok() {}
        filler
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.path, nix::mount::MntFlags::MNT_DETACH);
        let _ = fs::remove_dir(&self.path);
    }
}
