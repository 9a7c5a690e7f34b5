//! The CRI gRPC services. This is the one place where errors become gRPC status codes, and
//! where every request is logged with its duration.

mod call;
mod podrun;
mod server;

use std::sync::Arc;

use podrun_proto::cri;
use podrun_proto::cri::runtime_service_server::RuntimeService;
use tonic::{Request, Response, Status};

use crate::cni::Network;
use crate::error::Error;
use crate::node::Node;
use crate::{container, pod, sandbox, stats};

pub(crate) use call::{handle, pages, subject, to_status, Stream};
pub use server::serve;

pub const RUNTIME_NAME: &str = "podrun";
pub const RUNTIME_API_VERSION: &str = "v1";
/// The CRI `version` field: the version of the kubelet runtime API.
pub const KUBELET_API_VERSION: &str = "0.1.0";

#[derive(Clone)]
pub struct Cri {
    pub node: Arc<Node>,
}

impl Cri {
    fn network_condition(&self) -> cri::RuntimeCondition {
        let dir = &self.node.config.cni_conf_dir;
        let (status, reason, message) = match Network::load_first(dir) {
            Ok(Some(_)) => (true, String::new(), String::new()),
            Ok(None) => (
                false,
                "NetworkPluginNotReady".into(),
                format!("no CNI configuration found in {}", dir.display()),
            ),
            Err(e) => (false, "NetworkPluginNotReady".into(), e.to_string()),
        };
        cri::RuntimeCondition {
            r#type: "NetworkReady".into(),
            status,
            reason,
            message,
        }
    }

    fn runtime_condition(&self) -> cri::RuntimeCondition {
        let (status, reason, message) = match self.node.binaries.missing() {
            None => (true, String::new(), String::new()),
            Some(missing) => (false, "BinariesMissing".into(), missing),
        };
        cri::RuntimeCondition {
            r#type: "RuntimeReady".into(),
            status,
            reason,
            message,
        }
    }
}

// After the helpers above, which it uses.
mod image;

#[tonic::async_trait]
impl RuntimeService for Cri {
    type StreamPodSandboxesStream = Stream<cri::StreamPodSandboxesResponse>;
    type StreamContainersStream = Stream<cri::StreamContainersResponse>;
    type StreamContainerStatsStream = Stream<cri::StreamContainerStatsResponse>;
    type StreamPodSandboxStatsStream = Stream<cri::StreamPodSandboxStatsResponse>;
    type GetContainerEventsStream = Stream<cri::ContainerEventResponse>;
    type StreamPodSandboxMetricsStream = Stream<cri::StreamPodSandboxMetricsResponse>;

    async fn version(
        &self,
        _: Request<cri::VersionRequest>,
    ) -> Result<Response<cri::VersionResponse>, Status> {
        handle("Version", Default::default(), async {
            Ok(cri::VersionResponse {
                version: KUBELET_API_VERSION.into(),
                runtime_name: RUNTIME_NAME.into(),
                runtime_version: env!("CARGO_PKG_VERSION").into(),
                runtime_api_version: RUNTIME_API_VERSION.into(),
            })
        })
        .await
    }

    async fn status(
        &self,
        req: Request<cri::StatusRequest>,
    ) -> Result<Response<cri::StatusResponse>, Status> {
        handle("Status", subject(req.get_ref()), async {
            let conditions = vec![self.runtime_condition(), self.network_condition()];
            let mut info = std::collections::HashMap::new();
            if req.get_ref().verbose {
                let c = &self.node.config;
                let config = serde_json::json!({
                    "root": c.root, "state": c.state, "stateDir": c.state, "listen": c.listen,
                    "cniConfDir": c.cni_conf_dir, "cniBinDirs": c.cni_bin_dirs,
                    "shim": self.node.binaries.shim, "pause": self.node.binaries.pause,
                    "criApi": podrun_proto::CRI_API_RELEASE,
                    "podCIDR": *self.node.pod_cidr.lock().unwrap_or_else(|p| p.into_inner()),
                });
                info.insert("config".to_owned(), config.to_string());
                let audit = serde_json::to_string(
                    &*self
                        .node
                        .audit_at_start
                        .lock()
                        .unwrap_or_else(|p| p.into_inner()),
                )
                .unwrap_or_default();
                info.insert("auditAtStart".to_owned(), audit);
                // The CRI has no field for the host's LSMs (kubelet checks AppArmor itself).
                let lsm = serde_json::to_string(&self.node.lsm).unwrap_or_default();
                info.insert("lsm".to_owned(), lsm);
            }
            Ok(cri::StatusResponse {
                status: Some(cri::RuntimeStatus { conditions }),
                info,
                // Found out once, with a child process or two: not on an async worker.
                runtime_handlers: {
                    let node = self.node.clone();
                    tokio::task::spawn_blocking(move || node.runtime_handlers())
                        .await
                        .unwrap_or_default()
                },
                features: Some(cri::RuntimeFeatures {
                    supplemental_groups_policy: true,
                    user_namespaces_host_network: false,
                }),
            })
        })
        .await
    }

    async fn runtime_config(
        &self,
        _: Request<cri::RuntimeConfigRequest>,
    ) -> Result<Response<cri::RuntimeConfigResponse>, Status> {
        handle("RuntimeConfig", Default::default(), async {
            let linux = cri::LinuxRuntimeConfiguration {
                cgroup_driver: cri::CgroupDriver::Cgroupfs as i32,
            };
            Ok(cri::RuntimeConfigResponse { linux: Some(linux) })
        })
        .await
    }

    async fn run_pod_sandbox(
        &self,
        req: Request<cri::RunPodSandboxRequest>,
    ) -> Result<Response<cri::RunPodSandboxResponse>, Status> {
        let node = self.node.clone();
        handle("RunPodSandbox", subject(req.get_ref()), async move {
            let pod_sandbox_id = pod::run(node, req.into_inner()).await?;
            Ok(cri::RunPodSandboxResponse { pod_sandbox_id })
        })
        .await
    }

    async fn stop_pod_sandbox(
        &self,
        req: Request<cri::StopPodSandboxRequest>,
    ) -> Result<Response<cri::StopPodSandboxResponse>, Status> {
        handle("StopPodSandbox", subject(req.get_ref()), async {
            pod::stop(self.node.clone(), req.into_inner())
                .await
                .map(|_| cri::StopPodSandboxResponse {})
        })
        .await
    }

    async fn remove_pod_sandbox(
        &self,
        req: Request<cri::RemovePodSandboxRequest>,
    ) -> Result<Response<cri::RemovePodSandboxResponse>, Status> {
        handle("RemovePodSandbox", subject(req.get_ref()), async {
            pod::remove(self.node.clone(), req.into_inner())
                .await
                .map(|_| cri::RemovePodSandboxResponse {})
        })
        .await
    }

    async fn pod_sandbox_status(
        &self,
        req: Request<cri::PodSandboxStatusRequest>,
    ) -> Result<Response<cri::PodSandboxStatusResponse>, Status> {
        handle(
            "PodSandboxStatus",
            subject(req.get_ref()),
            sandbox::status(&self.node.sandboxes, req.into_inner()),
        )
        .await
    }

    async fn list_pod_sandbox(
        &self,
        req: Request<cri::ListPodSandboxRequest>,
    ) -> Result<Response<cri::ListPodSandboxResponse>, Status> {
        handle(
            "ListPodSandbox",
            subject(req.get_ref()),
            sandbox::list(&self.node.sandboxes, req.into_inner()),
        )
        .await
    }

    async fn create_container(
        &self,
        req: Request<cri::CreateContainerRequest>,
    ) -> Result<Response<cri::CreateContainerResponse>, Status> {
        handle("CreateContainer", subject(req.get_ref()), async {
            let container_id = pod::container::create(self.node.clone(), req.into_inner()).await?;
            Ok(cri::CreateContainerResponse { container_id })
        })
        .await
    }

    async fn start_container(
        &self,
        req: Request<cri::StartContainerRequest>,
    ) -> Result<Response<cri::StartContainerResponse>, Status> {
        let node = self.node.clone();
        handle("StartContainer", subject(req.get_ref()), async move {
            node.detached(
                "StartContainer",
                pod::container::start(node.clone(), req.into_inner()),
            )
            .await?;
            Ok(cri::StartContainerResponse {})
        })
        .await
    }

    async fn stop_container(
        &self,
        req: Request<cri::StopContainerRequest>,
    ) -> Result<Response<cri::StopContainerResponse>, Status> {
        let node = self.node.clone();
        handle("StopContainer", subject(req.get_ref()), async move {
            node.detached(
                "StopContainer",
                pod::container::stop(node.clone(), req.into_inner()),
            )
            .await?;
            Ok(cri::StopContainerResponse {})
        })
        .await
    }

    async fn remove_container(
        &self,
        req: Request<cri::RemoveContainerRequest>,
    ) -> Result<Response<cri::RemoveContainerResponse>, Status> {
        let node = self.node.clone();
        handle("RemoveContainer", subject(req.get_ref()), async move {
            node.detached(
                "RemoveContainer",
                pod::container::remove(node.clone(), req.into_inner()),
            )
            .await?;
            Ok(cri::RemoveContainerResponse {})
        })
        .await
    }

    async fn list_containers(
        &self,
        req: Request<cri::ListContainersRequest>,
    ) -> Result<Response<cri::ListContainersResponse>, Status> {
        handle(
            "ListContainers",
            subject(req.get_ref()),
            container::list(&self.node.containers, req.into_inner()),
        )
        .await
    }

    async fn container_status(
        &self,
        req: Request<cri::ContainerStatusRequest>,
    ) -> Result<Response<cri::ContainerStatusResponse>, Status> {
        handle(
            "ContainerStatus",
            subject(req.get_ref()),
            container::status(&self.node.containers, req.into_inner()),
        )
        .await
    }

    async fn reopen_container_log(
        &self,
        req: Request<cri::ReopenContainerLogRequest>,
    ) -> Result<Response<cri::ReopenContainerLogResponse>, Status> {
        handle("ReopenContainerLog", subject(req.get_ref()), async {
            pod::container::reopen_log(self.node.clone(), req.into_inner())
                .await
                .map(|_| cri::ReopenContainerLogResponse {})
        })
        .await
    }

    async fn exec(
        &self,
        req: Request<cri::ExecRequest>,
    ) -> Result<Response<cri::ExecResponse>, Status> {
        handle("Exec", subject(req.get_ref()), async {
            let url = crate::streaming::exec_url(
                &self.node.streaming,
                &self.node.containers,
                req.into_inner(),
            )?;
            Ok(cri::ExecResponse { url })
        })
        .await
    }

    async fn attach(
        &self,
        req: Request<cri::AttachRequest>,
    ) -> Result<Response<cri::AttachResponse>, Status> {
        handle("Attach", subject(req.get_ref()), async {
            let url = crate::streaming::attach_url(
                &self.node.streaming,
                &self.node.containers,
                req.into_inner(),
            )?;
            Ok(cri::AttachResponse { url })
        })
        .await
    }

    async fn port_forward(
        &self,
        req: Request<cri::PortForwardRequest>,
    ) -> Result<Response<cri::PortForwardResponse>, Status> {
        handle("PortForward", subject(req.get_ref()), async {
            let url = crate::streaming::port_forward_url(
                &self.node.streaming,
                &self.node.sandboxes,
                req.into_inner(),
            )?;
            Ok(cri::PortForwardResponse { url })
        })
        .await
    }

    async fn exec_sync(
        &self,
        req: Request<cri::ExecSyncRequest>,
    ) -> Result<Response<cri::ExecSyncResponse>, Status> {
        let node = self.node.clone();
        handle("ExecSync", subject(req.get_ref()), async move {
            node.detached(
                "ExecSync",
                pod::container::exec_sync(node.clone(), req.into_inner()),
            )
            .await
        })
        .await
    }

    /// kubelet gives the node's pod CIDR at start; the CNI configuration (the operator's)
    /// decides pod addresses, so podrun records it and reports it in verbose Status.
    async fn stream_pod_sandboxes(
        &self,
        req: Request<cri::StreamPodSandboxesRequest>,
    ) -> Result<Response<Self::StreamPodSandboxesStream>, Status> {
        let filter = req.into_inner().filter;
        let list = async {
            let req = cri::ListPodSandboxRequest { filter };
            Ok(sandbox::list(&self.node.sandboxes, req).await?.items)
        };
        pages("StreamPodSandboxes", list, |pod_sandboxes| {
            cri::StreamPodSandboxesResponse { pod_sandboxes }
        })
        .await
    }

    async fn stream_containers(
        &self,
        req: Request<cri::StreamContainersRequest>,
    ) -> Result<Response<Self::StreamContainersStream>, Status> {
        let filter = req.into_inner().filter;
        let list = async {
            let req = cri::ListContainersRequest { filter };
            Ok(container::list(&self.node.containers, req)
                .await?
                .containers)
        };
        pages("StreamContainers", list, |containers| {
            cri::StreamContainersResponse { containers }
        })
        .await
    }

    async fn stream_container_stats(
        &self,
        req: Request<cri::StreamContainerStatsRequest>,
    ) -> Result<Response<Self::StreamContainerStatsStream>, Status> {
        let filter = req.into_inner().filter;
        let list = async {
            let req = cri::ListContainerStatsRequest { filter };
            Ok(stats::list_containers(self.node.clone(), req).await?.stats)
        };
        pages("StreamContainerStats", list, |container_stats| {
            cri::StreamContainerStatsResponse { container_stats }
        })
        .await
    }

    async fn stream_pod_sandbox_stats(
        &self,
        req: Request<cri::StreamPodSandboxStatsRequest>,
    ) -> Result<Response<Self::StreamPodSandboxStatsStream>, Status> {
        let filter = req.into_inner().filter;
        let list = async {
            let req = cri::ListPodSandboxStatsRequest { filter };
            Ok(stats::list_pods(self.node.clone(), req).await?.stats)
        };
        pages("StreamPodSandboxStats", list, |pod_sandbox_stats| {
            cri::StreamPodSandboxStatsResponse { pod_sandbox_stats }
        })
        .await
    }

    async fn list_metric_descriptors(
        &self,
        _: Request<cri::ListMetricDescriptorsRequest>,
    ) -> Result<Response<cri::ListMetricDescriptorsResponse>, Status> {
        handle("ListMetricDescriptors", Default::default(), async {
            Ok(crate::metrics::descriptors())
        })
        .await
    }

    async fn list_pod_sandbox_metrics(
        &self,
        _: Request<cri::ListPodSandboxMetricsRequest>,
    ) -> Result<Response<cri::ListPodSandboxMetricsResponse>, Status> {
        let node = self.node.clone();
        handle("ListPodSandboxMetrics", Default::default(), async move {
            let pod_metrics = crate::metrics::pod_metrics(node).await?;
            Ok(cri::ListPodSandboxMetricsResponse { pod_metrics })
        })
        .await
    }

    async fn stream_pod_sandbox_metrics(
        &self,
        _: Request<cri::StreamPodSandboxMetricsRequest>,
    ) -> Result<Response<Self::StreamPodSandboxMetricsStream>, Status> {
        let list = crate::metrics::pod_metrics(self.node.clone());
        pages("StreamPodSandboxMetrics", list, |pod_sandbox_metrics| {
            cri::StreamPodSandboxMetricsResponse {
                pod_sandbox_metrics,
            }
        })
        .await
    }

    async fn update_runtime_config(
        &self,
        req: Request<cri::UpdateRuntimeConfigRequest>,
    ) -> Result<Response<cri::UpdateRuntimeConfigResponse>, Status> {
        handle("UpdateRuntimeConfig", subject(req.get_ref()), async {
            let cidr = req
                .into_inner()
                .runtime_config
                .and_then(|c| c.network_config)
                .map(|n| n.pod_cidr)
                .unwrap_or_default();
            if !cidr.is_empty() {
                tracing::info!(pod_cidr = %cidr, "kubelet set the pod CIDR");
                *self.node.pod_cidr.lock().unwrap_or_else(|p| p.into_inner()) = cidr;
            }
            Ok(cri::UpdateRuntimeConfigResponse {})
        })
        .await
    }

    /// The pod's new totals (its containers' and its overhead, as kubelet sums them)
    /// applied to the pod's own cgroup, which holds pause and every container.
    async fn update_pod_sandbox_resources(
        &self,
        req: Request<cri::UpdatePodSandboxResourcesRequest>,
    ) -> Result<Response<cri::UpdatePodSandboxResourcesResponse>, Status> {
        let node = self.node.clone();
        handle(
            "UpdatePodSandboxResources",
            subject(req.get_ref()),
            async move {
                let req = req.into_inner();
                let pod = node.sandboxes.get(&req.pod_sandbox_id)?.view();
                if let Some(resources) = req.resources {
                    tokio::task::spawn_blocking(move || {
                        let hierarchies = crate::cgroup::hierarchies()?;
                        crate::cgroup::set_resources(&hierarchies, &pod.cgroup, &resources)
                    })
                    .await
                    .map_err(|e| Error::Internal(e.to_string()))??;
                }
                Ok(cri::UpdatePodSandboxResourcesResponse {})
            },
        )
        .await
    }

    async fn get_container_events(
        &self,
        _: Request<cri::GetEventsRequest>,
    ) -> Result<Response<Self::GetContainerEventsStream>, Status> {
        let events = self.node.events.subscribe();
        tracing::debug!("GetContainerEvents: a subscriber");
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(events),
        )))
    }

    async fn update_container_resources(
        &self,
        req: Request<cri::UpdateContainerResourcesRequest>,
    ) -> Result<Response<cri::UpdateContainerResourcesResponse>, Status> {
        let node = self.node.clone();
        handle(
            "UpdateContainerResources",
            subject(req.get_ref()),
            async move {
                pod::container::update(node, req.into_inner()).await?;
                Ok(cri::UpdateContainerResourcesResponse {})
            },
        )
        .await
    }

    async fn container_stats(
        &self,
        req: Request<cri::ContainerStatsRequest>,
    ) -> Result<Response<cri::ContainerStatsResponse>, Status> {
        let node = self.node.clone();
        handle(
            "ContainerStats",
            subject(req.get_ref()),
            stats::container(node, req.into_inner()),
        )
        .await
    }

    async fn list_container_stats(
        &self,
        req: Request<cri::ListContainerStatsRequest>,
    ) -> Result<Response<cri::ListContainerStatsResponse>, Status> {
        let node = self.node.clone();
        handle(
            "ListContainerStats",
            subject(req.get_ref()),
            stats::list_containers(node, req.into_inner()),
        )
        .await
    }

    async fn pod_sandbox_stats(
        &self,
        req: Request<cri::PodSandboxStatsRequest>,
    ) -> Result<Response<cri::PodSandboxStatsResponse>, Status> {
        let node = self.node.clone();
        handle(
            "PodSandboxStats",
            subject(req.get_ref()),
            stats::pod(node, req.into_inner()),
        )
        .await
    }

    async fn list_pod_sandbox_stats(
        &self,
        req: Request<cri::ListPodSandboxStatsRequest>,
    ) -> Result<Response<cri::ListPodSandboxStatsResponse>, Status> {
        let node = self.node.clone();
        handle(
            "ListPodSandboxStats",
            subject(req.get_ref()),
            stats::list_pods(node, req.into_inner()),
        )
        .await
    }

    async fn checkpoint_container(
        &self,
        req: Request<cri::CheckpointContainerRequest>,
    ) -> Result<Response<cri::CheckpointContainerResponse>, Status> {
        handle("CheckpointContainer", subject(req.get_ref()), async {
            pod::container::checkpoint(self.node.clone(), req.into_inner()).await?;
            Ok(cri::CheckpointContainerResponse {})
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_kinds_map_to_grpc_codes() {
        let cases = [
            (
                Error::invalid("config.metadata.name", "is required"),
                tonic::Code::InvalidArgument,
            ),
            (
                Error::NotFound {
                    what: "pod sandbox",
                    id: "x".into(),
                },
                tonic::Code::NotFound,
            ),
            (
                Error::FailedPrecondition("no".into()),
                tonic::Code::FailedPrecondition,
            ),
            (Error::Unimplemented("ExecSync"), tonic::Code::Unimplemented),
            (Error::Internal("boom".into()), tonic::Code::Internal),
        ];
        for (err, code) in cases {
            assert_eq!(to_status(&err).code(), code, "{err}");
        }
        let s = to_status(&Error::invalid("config.metadata.name", "is required"));
        assert!(s.message().contains("config.metadata.name"));
    }
}
