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

use podrun_proto::cri::ContainerEventType;
use podrun_proto::nri::Event;

use crate::node::Node;

/// An event of a pod (`id` is the pod's) or of one of its containers (`container` is its
/// record): to GetContainerEvents' subscribers, then to the NRI plugins subscribed to it,
/// awaited, so that plugins see a pod's events in order.
pub(crate) async fn event(
    node: &Node,
    pod_id: &str,
    id: &str,
    kind: ContainerEventType,
    container: Option<&crate::container::Record>,
) {
    node.publish_event(pod_id, id, kind);
    let Some(nri) = &node.nri else {
        return;
    };
    use ContainerEventType as K;
    let nri_event = match (kind, container.is_some()) {
        (K::ContainerStartedEvent, false) => Event::RunPodSandbox,
        (K::ContainerStoppedEvent, false) => Event::StopPodSandbox,
        (K::ContainerDeletedEvent, false) => Event::RemovePodSandbox,
        (K::ContainerCreatedEvent, true) => Event::PostCreateContainer,
        (K::ContainerStartedEvent, true) => Event::StartContainer,
        (K::ContainerStoppedEvent, true) => Event::StopContainer,
        (K::ContainerDeletedEvent, true) => Event::RemoveContainer,
        _ => return,
    };
    let Ok(pod) = node.sandboxes.get(pod_id) else {
        return;
    };
    let pod = crate::nri::convert::pod(&pod.view());
    let container = container.map(crate::nri::convert::container);
    nri.notify(nri_event, &pod, container.as_ref()).await;
}
pub use remove::remove;
pub use run::run;
pub use stop::stop;
