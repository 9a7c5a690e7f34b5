//! StopPodSandbox: stop pause (and the shim), CNI DEL with the cached result (always, even
//! when the netns is gone), then release shm, netns pin and cgroup. Every step tolerates a
//! resource that is already gone, so the same teardown serves Stop, Remove, the rollback of
//! a failed RunPodSandbox and the clean-up of pods found half-made after a crash.

use std::sync::Arc;
use std::time::Duration;

use podrun_proto::cri;

use crate::error::{Error, Result};
use crate::node::Node;
use crate::sandbox::{files, persist, shim, PodDirs, Record, State};
use crate::{cgroup, netns};

pub async fn stop(node: Arc<Node>, req: cri::StopPodSandboxRequest) -> Result<()> {
    let pod = match node.sandboxes.get(&req.pod_sandbox_id) {
        Ok(pod) => pod,
        // CRI: stopping a pod that does not exist is success.
        Err(e @ Error::NotFound { .. }) => {
            tracing::debug!(error = %e, "StopPodSandbox of an unknown pod");
            return Ok(());
        }
        Err(e) => return Err(e),
    };
    let n = node.clone();
    node.detached("StopPodSandbox", async move {
        let mut record = pod.record.lock().await;
        let was_stopped = record.stopped;
        let result = stop_locked(&n, &mut record).await;
        pod.publish(&record);
        let stopped_now = (record.stopped && !was_stopped).then(|| record.clone());
        drop(record);
        if let Some(stopped) = stopped_now {
            let kind = podrun_proto::cri::ContainerEventType::ContainerStoppedEvent;
            super::pod_event(&n, &stopped, kind).await;
        }
        result
    })
    .await
}

/// Stops a pod whose record the caller holds locked, and persists the outcome.
pub(super) async fn stop_locked(node: &Node, record: &mut Record) -> Result<()> {
    if record.stopped {
        return Ok(());
    }
    let dirs = PodDirs::new(&node.config, &record.id);
    crate::pod::container::stop_all_of_pod(node, &record.id).await?;
    crate::crash::point("stop:containers-stopped");
    let result = teardown(node, record).await;
    record.state = record.state.to(State::NotReady)?;
    persist(&dirs, record)?;
    result
}

/// Releases everything the pod holds. Safe to repeat; sets `record.stopped` when complete.
/// Every step runs even when an earlier one failed (the first error is returned), except
/// that the netns stays pinned while CNI DEL has not succeeded, so DEL can be retried.
pub(super) async fn teardown(node: &Node, record: &mut Record) -> Result<()> {
    stop_processes(record).await;
    let mut first: Option<Error> = None;
    let mut note = |r: Result<()>| {
        if let Err(e) = r {
            tracing::warn!(pod = %record.id, error = %e, "teardown step failed");
            first.get_or_insert(e);
        }
    };
    if let Some(path) = &record.netns {
        // A crash between creating the pin file and mounting the netns on it leaves a
        // plain file, which plugins reject; without it they see "netns gone", as they should.
        if path.exists() && !netns::is_pinned(path) {
            note(std::fs::remove_file(path).map_err(Error::io("removing stale netns pin", path)));
        }
    }
    let deleted = match &record.network {
        Some(att) => match att.del(node.cni.as_ref()).await {
            // Bounded: a plugin whose DEL always fails must not keep the pod from going
            // (kubelet would show it Terminating for ever). What DEL needs is kept, to
            // be retried later and shown by doctor.
            Err(e) if record.del_failures + 1 >= crate::cni::DEL_ATTEMPTS => {
                tracing::error!(pod = %record.id, error = %e, attempts = crate::cni::DEL_ATTEMPTS,
                    "CNI DEL keeps failing; letting the pod go and keeping the attachment to retry");
                crate::cni::keep_leftover(&node.config.root, att).map_err(|_| e)
            }
            Err(e) => Err(e),
            Ok(()) => Ok(()),
        },
        None => Ok(()),
    };
    if deleted.is_err() {
        record.del_failures += 1;
    }
    let network_released = deleted.is_ok();
    crate::crash::point("stop:network-released");
    note(deleted);
    if let Some(shm) = &record.shm {
        note(files::unmount_shm(shm));
    }
    if let (Some(path), true) = (&record.netns, network_released) {
        note(netns::remove(path));
    }
    if let Some(u) = &record.userns {
        note(crate::userns::remove(&u.pin));
    }
    let cgroup_path = record.cgroup.clone();
    note(
        tokio::task::spawn_blocking(move || cgroup::remove(&cgroup_path))
            .await
            .unwrap_or_else(|e| Err(Error::Internal(e.to_string()))),
    );
    match first {
        Some(e) => Err(e),
        None => {
            let _ = std::fs::remove_file(&record.shim_socket);
            record.stopped = true;
            Ok(())
        }
    }
}

/// Kills pause through the shim and shuts the shim down; when the shim cannot be reached,
/// kills both by pid (after checking their start times, so no reused pid is hit). The
/// socket is tried even when no shim pid was recorded: podrund may have died between
/// starting the shim and recording it.
async fn stop_processes(record: &mut Record) {
    let reachable =
        record.shim.as_ref().is_none_or(|s| s.is_alive()) && record.shim_socket.exists();
    if reachable {
        match shim::Shim::connect(&record.id, &record.shim_socket).await {
            Ok(client) => {
                if let Err(e) = client.kill_and_delete(&record.id).await {
                    tracing::warn!(pod = %record.id, error = %e, "stopping pause through the shim");
                }
                if let Err(e) = client.shutdown().await {
                    tracing::warn!(pod = %record.id, error = %e, "shutting the shim down");
                }
            }
            Err(e) => {
                tracing::warn!(pod = %record.id, error = %e, "shim unreachable; killing by pid")
            }
        }
    }
    if let Some(pause) = &record.pause {
        pause.kill();
    }
    if let Some(s) = &record.shim {
        shim::wait_gone(s, Duration::from_secs(2)).await;
    }
}
