//! `hack/cluster` from a test: a control plane and a `hack/nodes` bed of podrun nodes, each
//! with its kubelet and kube-proxy, on a bed number of the test's own; `down` when dropped.

use std::fs;
use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::bed::{leftovers, take_number};
use crate::{bin_dir, require_root_and_tools};

fn hack_cluster() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../hack/cluster")
}

pub struct Cluster {
    pub number: u8,
    pub mode: &'static str,
    lock: PathBuf,
}

impl Cluster {
    /// `hack/cluster up --nodes n --mode mode`; fails with its output if it does.
    pub fn up(nodes: usize, mode: &'static str) -> Cluster {
        require_root_and_tools();
        for (tool, package) in [("etcd", "etcd-server"), ("openssl", "openssl")] {
            let found = Command::new("sh")
                .args(["-c", &format!("command -v {tool}")])
                .stdout(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            assert!(
                found,
                "{tool} is missing: install {package} (hack/setup does)"
            );
        }
        let (number, lock) = take_number();
        let cluster = Cluster { number, mode, lock };
        cluster.down(); // leftovers of an earlier, interrupted run with this number
        let out = cluster.hack(&[
            "up",
            "--nodes",
            &nodes.to_string(),
            "--mode",
            mode,
            "--bin-dir",
            &bin_dir().display().to_string(),
        ]);
        assert!(
            out.status.success(),
            "hack/cluster up failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        cluster
    }

    fn hack(&self, args: &[&str]) -> Output {
        let (command, rest) = args.split_first().unwrap();
        Command::new(hack_cluster())
            .arg(command)
            .args(["--bed", &self.number.to_string()])
            .args(rest)
            .stdin(Stdio::null())
            .output()
            .expect("running hack/cluster")
    }

    pub fn down(&self) {
        let out = self.hack(&["down"]);
        assert!(
            out.status.success(),
            "hack/cluster down: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Where the cluster keeps its certificates, configs and logs.
    pub fn dir(&self) -> PathBuf {
        PathBuf::from(format!("/run/podrun-cluster/pnb{}", self.number))
    }

    /// `hack/cluster kubectl ARGS`, with `stdin`; its output, whatever its exit code.
    pub fn try_kubectl(&self, args: &[&str], stdin: &str) -> Output {
        let mut child = Command::new(hack_cluster())
            .args(["kubectl", "--bed", &self.number.to_string()])
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("running hack/cluster kubectl");
        let mut input = child.stdin.take().unwrap();
        input.write_all(stdin.as_bytes()).unwrap();
        drop(input);
        child.wait_with_output().unwrap()
    }

    /// kubectl ARGS; it must succeed. Its standard output.
    pub fn kubectl(&self, args: &[&str]) -> String {
        let out = self.try_kubectl(args, "");
        assert!(
            out.status.success(),
            "kubectl {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn json(&self, args: &[&str]) -> Value {
        let mut args = args.to_vec();
        args.extend(["-o", "json"]);
        serde_json::from_str(&self.kubectl(&args)).expect("kubectl -o json")
    }

    /// Polls `check` every half second until it holds.
    pub fn wait(&self, what: &str, limit: Duration, mut check: impl FnMut(&Self) -> bool) {
        let deadline = Instant::now() + limit;
        while !check(self) {
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; kubelet logs in {}",
                self.dir().display()
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    pub fn log(&self, name: &str) -> String {
        fs::read_to_string(self.dir().join(format!("{name}.log"))).unwrap_or_default()
    }

    /// Everything of the cluster still on the machine: the bed's leftovers, the cluster's
    /// files, its processes, and kubelet's links to its pod logs.
    pub fn leftovers(&self) -> Vec<String> {
        let mut found = leftovers(self.number, &[]);
        let dir = self.dir();
        if dir.exists() {
            found.push(format!("dir {}", dir.display()));
        }
        for pid in crate::processes_mentioning(&dir.display().to_string()) {
            found.push(format!("process {pid}"));
        }
        for e in fs::read_dir("/var/log/containers")
            .into_iter()
            .flatten()
            .flatten()
        {
            if fs::read_link(e.path()).is_ok_and(|t| t.starts_with(&dir)) {
                found.push(format!("log link {}", e.path().display()));
            }
        }
        found
    }
}

impl Drop for Cluster {
    /// Keeps the logs in /tmp/podrun-cluster-test-logs/<mode>, then takes everything down.
    fn drop(&mut self) {
        let keep = PathBuf::from("/tmp/podrun-cluster-test-logs").join(self.mode);
        let _ = fs::create_dir_all(&keep);
        for e in fs::read_dir(self.dir()).into_iter().flatten().flatten() {
            if e.path().extension().is_some_and(|x| x == "log") {
                let _ = fs::copy(e.path(), keep.join(e.file_name()));
            }
        }
        let _ = self.hack(&["down"]);
        let _ = fs::remove_dir(&self.lock);
    }
}
