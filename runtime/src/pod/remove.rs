//! RemovePodSandbox: stop the pod if it still holds anything, then delete its state. A pod
//! that does not exist is success (CRI: kubelet calls this repeatedly during clean-up).

use std::sync::Arc;

use podrun_proto::cri;

use super::stop;
use crate::error::{Error, Result};
use crate::node::Node;
use crate::sandbox::PodDirs;

pub async fn remove(node: Arc<Node>, req: cri::RemovePodSandboxRequest) -> Result<()> {
    let pod = match node.sandboxes.get(&req.pod_sandbox_id) {
        Ok(pod) => pod,
        Err(Error::NotFound { .. }) => return Ok(()),
        Err(e) => return Err(e),
    };
    let node_ = node.clone();
    node_
        .detached("RemovePodSandbox", async move {
            let mut record = pod.record.lock().await;
            let was_stopped = record.stopped;
            let stopped = stop::stop_locked(&node, &mut record).await;
            // Containers go before their pod's shim does (stop_locked leaves it for them when
            // it failed; when it succeeded the shim is gone and removal only cleans files).
            crate::pod::container::remove_all_of_pod(&node, &record.id).await?;
            crate::crash::point("remove:containers-removed");
            pod.publish(&record);
            stopped?;
            remove_dirs(&PodDirs::new(&node.config, &record.id))?;
            node.sandboxes.forget(&record.id);
            let removed = record.clone();
            drop(record);
            // Removing a running pod stops it first: its events say so, in order.
            if !was_stopped {
                super::pod_event(
                    &node,
                    &removed,
                    cri::ContainerEventType::ContainerStoppedEvent,
                )
                .await;
            }
            super::pod_event(
                &node,
                &removed,
                cri::ContainerEventType::ContainerDeletedEvent,
            )
            .await;
            Ok(())
        })
        .await
}

/// Deletes the pod's state and record dirs; the record goes last, so a crash in between
/// leaves the pod known.
pub(super) fn remove_dirs(dirs: &PodDirs) -> Result<()> {
    for dir in [&dirs.state, &dirs.root] {
        match std::fs::remove_dir_all(dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(Error::io("removing", dir)(e))
            }
            _ => {}
        }
        crate::crash::point("remove:state-removed");
    }
    Ok(())
}
