//! The pod layer: the CRI verbs over a pod and its containers, and the streaming sessions
//! into them. This is the one layer that holds the whole [`Node`](crate::node::Node); below
//! it, `sandbox` and `container` keep records, indexes and pure builders, and take narrow
//! handles (an index, a record, a shim) instead of the node.
//!
//! ```text
//!   cri ─▶ pod (run, stop, remove, recover; container::{create, start, stop, exec, ...}; sessions)
//!            └─▶ node ─▶ sandbox, container, streaming, events, image, cni, cgroup, store
//! ```

pub mod container;
mod recover;
mod remove;
mod run;
pub mod sessions;
mod stop;

pub use recover::{cni_gc, recover, release_dead};
pub use remove::remove;
pub use run::run;
pub use stop::stop;

use podrun_proto::cri::ContainerEventType;
use podrun_proto::nri::Event;

use crate::node::Node;

/// A pod's event: to GetContainerEvents' subscribers, then to the NRI plugins subscribed
/// to it. Sent without the pod's record lock held (a plugin may take its time).
pub(crate) async fn pod_event(node: &Node, pod: &crate::sandbox::Record, kind: ContainerEventType) {
    node.publish_event(&pod.id, &pod.id, kind);
    let event = match kind {
        ContainerEventType::ContainerStartedEvent => Event::RunPodSandbox,
        ContainerEventType::ContainerStoppedEvent => Event::StopPodSandbox,
        ContainerEventType::ContainerDeletedEvent => Event::RemovePodSandbox,
        _ => return,
    };
    let Some(nri) = node.nri.as_ref().filter(|n| n.wants(event)) else {
        return;
    };
    nri.notify(event, &crate::nri::convert::pod(pod), None)
        .await;
}

/// A container's event, likewise; StartContainer is followed by PostStartContainer.
pub(crate) async fn container_event(
    node: &Node,
    c: &crate::container::Record,
    kind: ContainerEventType,
) {
    node.publish_event(&c.pod_id, &c.id, kind);
    let events: &[Event] = match kind {
        ContainerEventType::ContainerCreatedEvent => &[Event::PostCreateContainer],
        ContainerEventType::ContainerStartedEvent => {
            &[Event::StartContainer, Event::PostStartContainer]
        }
        ContainerEventType::ContainerStoppedEvent => &[Event::StopContainer],
        ContainerEventType::ContainerDeletedEvent => &[Event::RemoveContainer],
    };
    let Some(nri) = node
        .nri
        .as_ref()
        .filter(|n| events.iter().any(|e| n.wants(*e)))
    else {
        return;
    };
    let Ok(pod) = node.sandboxes.get(&c.pod_id) else {
        return;
    };
    let pod = crate::nri::convert::pod(&pod.view());
    let container = crate::nri::convert::container(c);
    for event in events {
        nri.notify(*event, &pod, Some(&container)).await;
    }
}
