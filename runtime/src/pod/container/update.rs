//! UpdateContainerResources: new CPU and memory limits for a created or running container
//! (kubelet's in-place resize, its CPU and memory managers), applied by the container's OCI
//! runtime (`update`) and then recorded, so ContainerStatus, and podrund after a restart,
//! report them. `oom_score_adj` cannot change after start and is left as it was.

use std::sync::Arc;

use podrun_proto::cri;

use super::lifecycle::shim_of;
use crate::container::{oci_spec, persist, Dirs, State};
use crate::error::{Error, Result};
use crate::node::Node;

pub async fn update(node: Arc<Node>, req: cri::UpdateContainerResourcesRequest) -> Result<()> {
    let c = node.containers.get(&req.container_id)?;
    let resources = req
        .linux
        .ok_or_else(|| Error::invalid("linux", "is required (podrun runs Linux containers)"))?;
    let mut r = c.record.lock().await;
    if !matches!(r.state, State::Created | State::Running) {
        return Err(Error::FailedPrecondition(format!(
            "container {} has exited: its resources cannot change",
            r.id
        )));
    }
    let shim = shim_of(&node, &r.pod_id).await?;
    shim.update_resources(&r.id, &oci_spec::oci_resources(&resources)?)
        .await?;
    let oom_score_adj = r
        .config
        .linux
        .as_ref()
        .and_then(|l| l.resources.as_ref())
        .map_or(0, |old| old.oom_score_adj);
    r.config.linux.get_or_insert_default().resources = Some(cri::LinuxContainerResources {
        oom_score_adj,
        ..resources
    });
    persist(&Dirs::new(&node.config, &r.id), &r)?;
    c.publish(&r);
    Ok(())
}
