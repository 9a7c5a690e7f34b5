//! A node with a registry and a pulled busybox image, for tests that run containers: pods,
//! containers, ExecSync, statuses and a leak check that covers container state.

use std::path::PathBuf;
use std::time::Duration;

use podrun_proto::client;
use podrun_proto::cri;

use crate::registry::{busybox_image, Registry};
use crate::{Chain, Client, TestNode};

pub async fn pull(node: &TestNode, image: &str) {
    let mut images = client::image(&node.socket).await.unwrap();
    let spec = cri::ImageSpec {
        image: image.into(),
        ..Default::default()
    };
    images
        .pull_image(cri::PullImageRequest {
            image: Some(spec),
            ..Default::default()
        })
        .await
        .unwrap();
}

pub struct Bed {
    pub node: TestNode,
    pub registry: Registry,
    pub rt: Client,
    pub busybox: String,
    pub containers: Vec<String>,
}

impl Bed {
    pub async fn start() -> Bed {
        Bed::start_with(&[]).await
    }

    /// A bed whose podrund gets more flags.
    pub async fn start_with(flags: &[&str]) -> Bed {
        let registry = Registry::start();
        let mut node = TestNode::prepare(Chain::Operator);
        node.extra_args = flags.iter().map(|f| f.to_string()).collect();
        node.spawn_daemon();
        registry.push("busybox:1", &busybox_image()).await;
        let busybox = format!("{}/busybox:1", registry.addr);
        pull(&node, &busybox).await;
        let rt = node.client().await;
        Bed {
            node,
            registry,
            rt,
            busybox,
            containers: Vec::new(),
        }
    }

    pub async fn pod(&mut self, name: &str, handler: &str) -> (String, cri::PodSandboxConfig) {
        self.pod_with(name, handler, false).await
    }

    /// A pod whose sandbox config says privileged (as kubelet makes for privileged
    /// containers) or not.
    pub async fn pod_with(
        &mut self,
        name: &str,
        handler: &str,
        privileged: bool,
    ) -> (String, cri::PodSandboxConfig) {
        let mut config = self.node.pod_config(name);
        config
            .linux
            .get_or_insert_default()
            .security_context
            .get_or_insert_default()
            .privileged = privileged;
        config.log_directory = self.node.dir.join("logs").join(name).display().to_string();
        let req = cri::RunPodSandboxRequest {
            config: Some(config.clone()),
            runtime_handler: handler.into(),
        };
        let id = self
            .rt
            .run_pod_sandbox(req)
            .await
            .unwrap()
            .into_inner()
            .pod_sandbox_id;
        self.node.remember(&id);
        (id, config)
    }

    pub fn container(&self, name: &str, cmd: &[&str]) -> cri::ContainerConfig {
        cri::ContainerConfig {
            metadata: Some(cri::ContainerMetadata {
                name: name.into(),
                attempt: 0,
            }),
            image: Some(cri::ImageSpec {
                image: self.busybox.clone(),
                ..Default::default()
            }),
            command: cmd.iter().map(|s| s.to_string()).collect(),
            log_path: format!("{name}.log"),
            ..Default::default()
        }
    }

    pub async fn run(
        &mut self,
        pod: &(String, cri::PodSandboxConfig),
        config: cri::ContainerConfig,
    ) -> String {
        let req = cri::CreateContainerRequest {
            pod_sandbox_id: pod.0.clone(),
            config: Some(config),
            sandbox_config: Some(pod.1.clone()),
        };
        let id = self
            .rt
            .create_container(req)
            .await
            .expect("CreateContainer")
            .into_inner()
            .container_id;
        self.rt
            .start_container(cri::StartContainerRequest {
                container_id: id.clone(),
            })
            .await
            .expect("StartContainer");
        id
    }

    pub async fn exec(
        &mut self,
        id: &str,
        cmd: &[&str],
        timeout: i64,
    ) -> Result<cri::ExecSyncResponse, tonic::Status> {
        let req = cri::ExecSyncRequest {
            container_id: id.into(),
            cmd: cmd.iter().map(|s| s.to_string()).collect(),
            timeout,
        };
        self.rt.exec_sync(req).await.map(|r| r.into_inner())
    }

    pub async fn out(&mut self, id: &str, cmd: &[&str]) -> String {
        let r = self.exec(id, cmd, 10).await.expect("ExecSync");
        assert_eq!(
            r.exit_code,
            0,
            "{cmd:?}: {}",
            String::from_utf8_lossy(&r.stderr)
        );
        String::from_utf8(r.stdout).unwrap()
    }

    pub async fn status(&mut self, id: &str) -> cri::ContainerStatus {
        self.status_and_info(id).await.0
    }

    /// The container's status and podrund's verbose info about it (pid, runtime, bundle).
    pub async fn status_and_info(&mut self, id: &str) -> (cri::ContainerStatus, serde_json::Value) {
        let r = self
            .rt
            .container_status(cri::ContainerStatusRequest {
                container_id: id.into(),
                verbose: true,
            })
            .await
            .unwrap()
            .into_inner();
        let info = serde_json::from_str(&r.info["info"]).unwrap();
        (r.status.unwrap(), info)
    }

    pub async fn wait_exit(&mut self, id: &str) -> cri::ContainerStatus {
        for _ in 0..300 {
            let s = self.status(id).await;
            if s.state == cri::ContainerState::ContainerExited as i32 {
                return s;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("container {id} did not exit");
    }

    pub async fn remove_pod(&mut self, id: &str) {
        self.rt
            .stop_pod_sandbox(cri::StopPodSandboxRequest {
                pod_sandbox_id: id.into(),
            })
            .await
            .unwrap();
        self.rt
            .remove_pod_sandbox(cri::RemovePodSandboxRequest {
                pod_sandbox_id: id.into(),
            })
            .await
            .unwrap();
    }

    /// Like TestNode::assert_no_leaks, container state included.
    pub fn assert_no_leaks(&self) {
        let left = self.container_leftovers();
        assert!(left.is_empty(), "leaked:\n{}", left.join("\n"));
    }

    /// Container state podrun made: records, rootfs mounts, the OCI runtimes' state.
    pub fn container_leftovers(&self) -> Vec<String> {
        let mut out = self.node.leftovers();
        for id in &self.containers {
            for root in ["/run/runc", "/run/crun"] {
                let state = PathBuf::from(root).join(id);
                if state.exists() {
                    out.push(format!("OCI runtime state {}", state.display()));
                }
            }
        }
        for sub in ["root/containers", "state/containers"] {
            for e in std::fs::read_dir(self.node.dir.join(sub))
                .into_iter()
                .flatten()
                .flatten()
            {
                out.push(format!("container dir {}", e.path().display()));
            }
        }
        out
    }
}
