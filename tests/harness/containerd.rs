//! A real containerd (Debian's) for one test, with `podrun` as a runtime handler
//! (`io.containerd.podrun.v2`, i.e. podrun's shim) next to runc, on its own root, state,
//! socket and the test node's CNI network. podctl and ctr drive it.

use std::fs;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::{bin_dir, Chain, TestNode};

pub struct Containerd {
    /// The slot, dirs, bridge and CNI config; its leak checks cover containerd's pods too.
    pub node: TestNode,
    pub socket: PathBuf,
    child: Option<Child>,
}

impl Containerd {
    /// Starts containerd; `sandbox_image` is the CRI plugin's pause image.
    pub fn start(sandbox_image: &str) -> Containerd {
        assert!(
            Command::new("containerd")
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success()),
            "containerd missing: apt-get install containerd (hack/setup does)"
        );
        let node = TestNode::prepare(Chain::Operator);
        let dir = &node.dir;
        let socket = dir.join("state/containerd.sock");
        let config = format!(
            r#"version = 2
root = "{root}"
state = "{state}"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.internal.v1.opt"]
[grpc]
  address = "{sock}"
[ttrpc]
  address = "{sock}.ttrpc"
[debug]
  level = "debug"
[plugins."io.containerd.grpc.v1.cri"]
  restrict_oom_score_adj = true
  sandbox_image = "{sandbox_image}"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{cni}"
  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = "{certs}"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.podrun]
      runtime_type = "io.containerd.podrun.v2"
"#,
            root = dir.join("ctrd-root").display(),
            state = dir.join("state/ctrd").display(),
            sock = socket.display(),
            cni = dir.join("cni").display(),
            certs = dir.join("certs.d").display(),
        );
        fs::create_dir_all(dir.join("state")).unwrap();
        fs::write(dir.join("containerd.toml"), config).unwrap();
        let mut c = Containerd {
            node,
            socket,
            child: None,
        };
        c.spawn();
        c
    }

    fn spawn(&mut self) {
        let dir = &self.node.dir;
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("containerd.log"))
            .unwrap();
        // containerd finds `containerd-shim-podrun-v2` (and pause beside it) on its PATH.
        let path = format!(
            "{}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            bin_dir().display()
        );
        let child = Command::new("containerd")
            .arg("--config")
            .arg(dir.join("containerd.toml"))
            .env("PATH", path)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("starting containerd");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::os::unix::net::UnixStream::connect(&self.socket).is_err() {
            assert!(
                Instant::now() < deadline,
                "containerd did not come up; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        // The CRI plugin answers "not initialized" until it has recovered its state.
        loop {
            let version = Command::new(bin_dir().join("podctl"))
                .arg("-r")
                .arg(&self.socket)
                .arg("version")
                .output()
                .expect("running podctl");
            if version.status.success() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "containerd's CRI did not come up: {}",
                String::from_utf8_lossy(&version.stderr)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Kills containerd (SIGKILL, as a crash) and starts it again on the same state.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = fs::remove_file(&self.socket);
    }

    pub fn pid(&self) -> Option<i32> {
        self.child.as_ref().map(|c| c.id() as i32)
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.node.dir.join("containerd.log")).unwrap_or_default()
    }

    /// `ctr` against this containerd (namespace `default`).
    pub fn ctr(&self, args: &[&str]) -> Output {
        Command::new("ctr")
            .arg("--address")
            .arg(&self.socket)
            .args(args)
            .current_dir(&self.node.dir)
            .output()
            .expect("running ctr")
    }

    /// `ctr` that must succeed; its stdout.
    pub fn ctr_ok(&self, args: &[&str]) -> String {
        let out = self.ctr(args);
        assert!(
            out.status.success(),
            "ctr {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// podctl against containerd's CRI socket; it must succeed.
    pub fn podctl(&self, args: &[&str]) -> String {
        let out = Command::new(bin_dir().join("podctl"))
            .arg("-r")
            .arg(&self.socket)
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "podctl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Pids of podrun shims serving this containerd.
    pub fn podrun_shims(&self) -> Vec<i32> {
        let needle = self.socket.display().to_string();
        crate::processes_mentioning(&needle)
            .into_iter()
            .filter(|pid| {
                fs::read_to_string(format!("/proc/{pid}/cmdline"))
                    .unwrap_or_default()
                    .starts_with(
                        &bin_dir()
                            .join("containerd-shim-podrun-v2")
                            .display()
                            .to_string(),
                    )
            })
            .collect()
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        self.kill();
        // The node's own Drop kills shims (they mention its state dir), unmounts and clears;
        // containerd's netns pins (`cni-<uuid>`) it cannot name: those whose eth0 has an
        // address of this node's subnet go here (a run that failed half-way leaves them).
        for pin in netns_in_subnet(&self.node.subnet_prefix) {
            let path = std::path::Path::new("/run/netns").join(&pin);
            let _ = nix::mount::umount2(&path, nix::mount::MntFlags::MNT_DETACH);
            let _ = fs::remove_file(&path);
        }
    }
}

/// Names of containerd's netns pins whose eth0 has an address starting with `prefix`.
fn netns_in_subnet(prefix: &str) -> Vec<String> {
    fs::read_dir("/run/netns")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with("cni-"))
        .filter(|name| {
            Command::new("ip")
                .args(["-n", name, "-4", "-o", "addr", "show", "eth0"])
                .output()
                .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains(&format!(" {prefix}")))
        })
        .collect()
}
