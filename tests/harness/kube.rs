//! A real kubelet (from ../shared/tools) driving a test node's podrund, registered with an
//! API server of its own (kube-apiserver on etcd from Debian, on 127.0.0.1), so that it
//! runs static pods and API pods alike and takes in-place resizes.
//!
//! The kubelet uses the node's cgroup parent as its cgroup root and the node's bridge
//! address as its node IP (kubelet refuses a loopback one). It reads pod stats and serves
//! `/metrics/cadvisor` from the CRI (`PodAndContainerStatsFromCRI`).

use std::fs;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::TestNode;

pub const NODE: &str = "podrun-kubelet-test";

pub struct Kube {
    pub dir: PathBuf,
    /// kubelet's read-only HTTP port on 127.0.0.1: /pods, /stats/summary, /metrics/cadvisor.
    pub read_only_port: u16,
    kubectl: PathBuf,
    etcd: Option<Child>,
    apiserver: Option<Child>,
    kubelet: Option<Child>,
    /// Whether br_netfilter was loaded before kubelet ran (it loads it).
    had_br_netfilter: bool,
}

fn br_netfilter_loaded() -> bool {
    Path::new("/sys/module/br_netfilter").exists()
}

/// A port nothing listens on now.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn tool(name: &str) -> PathBuf {
    let get = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/tools/get");
    let out = Command::new(&get)
        .arg(name)
        .output()
        .unwrap_or_else(|e| panic!("{}: {e} (../shared/tools is needed)", get.display()));
    assert!(
        out.status.success(),
        "{} {name}: {}",
        get.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
}

fn spawn(dir: &Path, name: &str, cmd: &mut Command) -> Child {
    let log = fs::File::create(dir.join(format!("{name}.log"))).unwrap();
    cmd.stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| panic!("starting {name}: {e}"))
}

fn sh(script: &str, dir: &Path) {
    let out = Command::new("sh")
        .args(["-ec", script])
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{script}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA and, signed by it, the API server's serving pair, the admin's and the kubelet's
/// client pairs, and the service-account signing key (all EC P-256, valid two days).
fn certificates(dir: &Path) {
    let ec = "-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes";
    let mut script = format!(
        "openssl req -x509 {ec} -keyout ca.key -out ca.crt -days 2 -subj /CN=podrun-test-ca 2>/dev/null\n\
         printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\\n' > san.ext\n\
         openssl ecparam -name prime256v1 -genkey -noout -out sa.key\n\
         openssl ec -in sa.key -pubout -out sa.pub 2>/dev/null\n"
    );
    for (name, subject, ext) in [
        ("apiserver", "/CN=kube-apiserver", "-extfile san.ext"),
        ("admin", "/O=system:masters/CN=admin", ""),
        (
            "kubelet",
            &format!("/O=system:nodes/CN=system:node:{NODE}"),
            "",
        ),
    ] {
        script += &format!(
            "openssl req {ec} -keyout {name}.key -out {name}.csr -subj '{subject}' 2>/dev/null\n\
             openssl x509 -req -in {name}.csr -CA ca.crt -CAkey ca.key -CAcreateserial \
             -out {name}.crt -days 2 {ext} 2>/dev/null\n"
        );
    }
    sh(&script, dir);
}

fn kubeconfig(dir: &Path, user: &str, server: &str) -> PathBuf {
    let path = dir.join(format!("{user}.kubeconfig"));
    let d = dir.display();
    fs::write(
        &path,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: {server}\n    certificate-authority: {d}/ca.crt\n\
             users:\n- name: {user}\n  user:\n    client-certificate: {d}/{user}.crt\n    client-key: {d}/{user}.key\n\
             contexts:\n- name: test\n  context: {{cluster: test, user: {user}}}\ncurrent-context: test\n"
        ),
    )
    .unwrap();
    path
}

/// kubelet's links in /var/log/containers (a fixed path) to logs under `dir`. A later
/// kubelet asks the runtime for each linked container, so stale ones make errors.
fn remove_log_links(dir: &Path) {
    for e in fs::read_dir("/var/log/containers")
        .into_iter()
        .flatten()
        .flatten()
    {
        if fs::read_link(e.path()).is_ok_and(|t| t.starts_with(dir)) {
            let _ = fs::remove_file(e.path());
        }
    }
}

impl Kube {
    /// etcd, the API server and a kubelet for `node`, whose pods take their manifests from
    /// `dir/manifests`. Waits until the node is registered.
    pub fn start(node: &TestNode) -> Kube {
        for t in ["etcd", "openssl"] {
            assert!(
                Command::new("sh")
                    .args(["-c", &format!("command -v {t}")])
                    .stdout(Stdio::null())
                    .status()
                    .unwrap()
                    .success(),
                "{t} is missing: install etcd-server and openssl (hack/setup does)"
            );
        }
        let dir = node.dir.join("kube");
        remove_log_links(&dir);
        fs::create_dir_all(dir.join("manifests")).unwrap();
        let mut kube = Kube {
            read_only_port: free_port(),
            kubectl: tool("kubectl"),
            etcd: None,
            apiserver: None,
            kubelet: None,
            dir: dir.clone(),
            had_br_netfilter: br_netfilter_loaded(),
        };
        certificates(&dir);
        let (client, peer, api) = (free_port(), free_port(), free_port());
        kube.etcd = Some(spawn(
            &dir,
            "etcd",
            Command::new("etcd")
                .arg("--data-dir")
                .arg(dir.join("etcd"))
                .args(["--name", "test"])
                .arg(format!("--listen-client-urls=http://127.0.0.1:{client}"))
                .arg(format!("--advertise-client-urls=http://127.0.0.1:{client}"))
                .arg(format!("--listen-peer-urls=http://127.0.0.1:{peer}"))
                .arg(format!(
                    "--initial-advertise-peer-urls=http://127.0.0.1:{peer}"
                ))
                .arg(format!("--initial-cluster=test=http://127.0.0.1:{peer}")),
        ));
        let d = dir.display();
        let node_ip = format!("{}1", node.subnet_prefix);
        kube.apiserver = Some(spawn(
            &dir,
            "kube-apiserver",
            Command::new(tool("kube-apiserver"))
                .arg(format!("--etcd-servers=http://127.0.0.1:{client}"))
                .arg("--bind-address=127.0.0.1")
                .arg(format!("--advertise-address={node_ip}"))
                .arg(format!("--secure-port={api}"))
                .arg(format!("--client-ca-file={d}/ca.crt"))
                .arg(format!("--tls-cert-file={d}/apiserver.crt"))
                .arg(format!("--tls-private-key-file={d}/apiserver.key"))
                .arg(format!("--service-account-key-file={d}/sa.pub"))
                .arg(format!("--service-account-signing-key-file={d}/sa.key"))
                .arg("--service-account-issuer=https://kubernetes.default.svc")
                .arg("--service-cluster-ip-range=10.96.0.0/24")
                .arg("--authorization-mode=Node,RBAC")
                .arg("--disable-admission-plugins=ServiceAccount"),
        ));
        let server = format!("https://127.0.0.1:{api}");
        kubeconfig(&dir, "admin", &server);
        let kubelet_kubeconfig = kubeconfig(&dir, "kubelet", &server);
        kube.wait(
            "the API server to be ready",
            Duration::from_secs(120),
            |k| k.try_kubectl(&["get", "--raw", "/readyz"]).is_some(),
        );

        let config = dir.join("kubelet.yaml");
        fs::write(
            &config,
            format!(
                r#"apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
staticPodPath: {d}/manifests
fileCheckFrequency: 2s
containerRuntimeEndpoint: unix://{socket}
imageServiceEndpoint: unix://{socket}
cgroupDriver: cgroupfs
cgroupRoot: {cgroup_root}
failSwapOn: false
failCgroupV1: false
makeIPTablesUtilChains: false
address: 127.0.0.1
port: {port}
readOnlyPort: {read_only}
healthzBindAddress: 127.0.0.1
healthzPort: {healthz}
authentication:
  anonymous: {{enabled: true}}
  webhook: {{enabled: false}}
authorization: {{mode: AlwaysAllow}}
podLogsDir: {d}/pod-logs
serializeImagePulls: false
evictionHard: {{memory.available: "1Mi", nodefs.available: "1%", imagefs.available: "1%"}}
featureGates:
  PodAndContainerStatsFromCRI: true
"#,
                socket = node.socket.display(),
                cgroup_root = node.cgroup_parent,
                port = free_port(),
                read_only = kube.read_only_port,
                healthz = free_port(),
            ),
        )
        .unwrap();
        kube.kubelet = Some(spawn(
            &dir,
            "kubelet",
            Command::new(tool("kubelet"))
                .arg("--config")
                .arg(&config)
                .arg("--kubeconfig")
                .arg(&kubelet_kubeconfig)
                .arg("--root-dir")
                .arg(dir.join("kubelet"))
                .arg(format!("--hostname-override={NODE}"))
                .arg(format!("--node-ip={node_ip}"))
                .args(["--v", "2"]),
        ));
        kube.wait("the node to register", Duration::from_secs(120), |k| {
            k.try_kubectl(&["get", "node", NODE]).is_some()
        });
        kube
    }

    /// Polls `check` every second until it holds; fails with the kubelet's log tail.
    pub fn wait(&mut self, what: &str, limit: Duration, mut check: impl FnMut(&mut Self) -> bool) {
        let deadline = Instant::now() + limit;
        while !check(self) {
            let exited = [
                ("etcd", &mut self.etcd),
                ("kube-apiserver", &mut self.apiserver),
                ("kubelet", &mut self.kubelet),
            ]
            .into_iter()
            .find_map(|(name, child)| match child.as_mut().map(|c| c.try_wait()) {
                Some(Ok(Some(status))) => Some((name, status)),
                _ => None,
            });
            if let Some((name, status)) = exited {
                panic!("{name} exited ({status}):\n{}", self.log_tail(name));
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; kubelet log:\n{}",
                self.log_tail("kubelet")
            );
            std::thread::sleep(Duration::from_secs(1));
        }
    }

    pub fn log(&self, name: &str) -> String {
        fs::read_to_string(self.dir.join(format!("{name}.log"))).unwrap_or_default()
    }

    fn log_tail(&self, name: &str) -> String {
        let log = self.log(name);
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    fn try_kubectl(&self, args: &[&str]) -> Option<String> {
        let out = Command::new(&self.kubectl)
            .arg("--kubeconfig")
            .arg(self.dir.join("admin.kubeconfig"))
            .args(args)
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// kubectl as the cluster's admin; it must succeed.
    pub fn kubectl(&self, args: &[&str], stdin: Option<&str>) -> String {
        let mut child = Command::new(&self.kubectl)
            .arg("--kubeconfig")
            .arg(self.dir.join("admin.kubeconfig"))
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(stdin.unwrap_or_default().as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "kubectl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// A pod as the API server has it, or None.
    pub fn pod(&self, name: &str) -> Option<Value> {
        let json = self.try_kubectl(&["get", "pod", name, "-o", "json"])?;
        serde_json::from_str(&json).ok()
    }

    /// GET on the kubelet's read-only port.
    pub fn get(&self, path: &str) -> String {
        let mut s = TcpStream::connect(("127.0.0.1", self.read_only_port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").unwrap();
        let mut response = String::new();
        s.read_to_string(&mut response).unwrap();
        let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
        assert!(
            head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200"),
            "GET {path}: {head}\n{body}"
        );
        body.to_owned()
    }

    /// Stops the kubelet (it leaves its pods running, as on a kubelet restart).
    pub fn stop_kubelet(&mut self) {
        if let Some(mut k) = self.kubelet.take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(k.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let deadline = Instant::now() + Duration::from_secs(10);
            while matches!(k.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = k.kill();
            let _ = k.wait();
        }
    }
}

impl Drop for Kube {
    /// Stops everything and undoes what kubelet changed on the host. The logs are kept in
    /// /tmp/podrun-kubelet-test-logs (the node's dir goes with the node).
    fn drop(&mut self) {
        self.stop_kubelet();
        remove_log_links(&self.dir);
        // kubelet bind-mounts its root dir onto itself (to make it shared).
        let root = self.dir.join("kubelet");
        while nix::mount::umount2(&root, nix::mount::MntFlags::MNT_DETACH).is_ok() {}
        let keep = Path::new("/tmp/podrun-kubelet-test-logs");
        let _ = fs::create_dir_all(keep);
        for name in ["kubelet", "kube-apiserver", "etcd"] {
            let _ = fs::copy(
                self.dir.join(format!("{name}.log")),
                keep.join(format!("{name}.log")),
            );
        }
        for child in [self.apiserver.take(), self.etcd.take()]
            .into_iter()
            .flatten()
        {
            let mut child = child;
            let _ = child.kill();
            let _ = child.wait();
        }
        for table in ["filter", "nat", "mangle"] {
            for chain in ["KUBE-FIREWALL", "KUBE-KUBELET-CANARY", "KUBE-IPTABLES-HINT"] {
                for cmd in ["iptables", "ip6tables"] {
                    for rule in [
                        vec!["-t", table, "-D", "INPUT", "-j", chain],
                        vec!["-t", table, "-D", "OUTPUT", "-j", chain],
                        vec!["-t", table, "-F", chain],
                        vec!["-t", table, "-X", chain],
                    ] {
                        let _ = Command::new(cmd)
                            .args(&rule)
                            .stderr(Stdio::null())
                            .stdout(Stdio::null())
                            .status();
                    }
                }
            }
        }
        if !self.had_br_netfilter && br_netfilter_loaded() {
            let _ = Command::new("modprobe")
                .args(["-r", "br_netfilter"])
                .status();
            if br_netfilter_loaded() {
                let _ = fs::write("/proc/sys/net/bridge/bridge-nf-call-iptables", "0");
                let _ = fs::write("/proc/sys/net/bridge/bridge-nf-call-ip6tables", "0");
            }
        }
    }
}
