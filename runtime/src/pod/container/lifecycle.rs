//! StartContainer, StopContainer, RemoveContainer, ReopenContainerLog, the exit monitor,
//! and recovery of containers when podrund starts.

use std::sync::Arc;
use std::time::Duration;

use podrun_proto::cri;

use super::rootfs::teardown_files;
use crate::container::{now_nanos, persist, Container, Dirs, Record, State, RECORD_VERSION};
use crate::error::{Error, Result};
use crate::node::Node;
use crate::sandbox::shim::Shim;
use crate::store;

pub(crate) async fn shim_of(node: &Node, pod_id: &str) -> Result<Shim> {
    let pod = node.sandboxes.get(pod_id)?.view();
    Shim::connect(pod_id, &pod.shim_socket).await
}

pub async fn start(node: Arc<Node>, req: cri::StartContainerRequest) -> Result<()> {
    let c = node.containers.get(&req.container_id)?;
    let mut r = c.record.lock().await;
    if r.state != State::Created {
        return Err(Error::FailedPrecondition(format!(
            "container {} is {:?}, not Created",
            r.id, r.state
        )));
    }
    let shim = shim_of(&node, &r.pod_id).await?;
    // Taken before the call: a short-lived process may exit before the call returns.
    let started_at = now_nanos();
    let phase = std::time::Instant::now();
    shim.start(&r.id, "").await?;
    crate::crash::point("start:task-started");
    tracing::debug!(container = %r.id, oci_start_ms = phase.elapsed().as_secs_f64() * 1000.0, "StartContainer phases");
    r.state = r.state.to(State::Running)?;
    r.started_at = started_at;
    persist(&Dirs::new(&node.config, &r.id), &r)?;
    c.publish(&r);
    drop(r);
    let started = cri::ContainerEventType::ContainerStartedEvent;
    crate::pod::container_event(&node, &c.view(), started).await;
    tokio::spawn(monitor(node, c));
    Ok(())
}

/// Waits for the container's exit through its shim and records it.
async fn monitor(node: Arc<Node>, c: Arc<Container>) {
    let pod_id = c.pod_id.clone();
    loop {
        let waited = match shim_of(&node, &pod_id).await {
            Ok(shim) => shim.wait(&c.id, "").await,
            Err(e) => Err(e),
        };
        match waited {
            Ok((status, at)) => {
                record_exit(&node, &c, status as i32, at).await;
                release_task(&node, &c).await;
                return;
            }
            // The task is gone from a live shim: deleted after its exit was recorded.
            Err(Error::NotFound { .. }) => {
                record_exit(&node, &c, 255, now_nanos()).await;
                return;
            }
            Err(e) => {
                let pod_alive = node
                    .sandboxes
                    .get(&pod_id)
                    .map(|p| p.view().shim.is_some_and(|s| s.is_alive()))
                    .unwrap_or(false);
                if !pod_alive {
                    tracing::warn!(container = %c.id, error = %e, "shim gone; container recorded as exited");
                    record_exit(&node, &c, 255, now_nanos()).await;
                    return;
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}

/// Was the container's cgroup OOM-killed? (v1 memory.oom_control, v2 memory.events)
fn oom_killed(r: &Record, node: &Node) -> bool {
    let Ok(pod) = node.sandboxes.get(&r.pod_id) else {
        return false;
    };
    let path = format!("{}/{}", pod.view().cgroup, r.id);
    let Ok(hierarchies) = crate::cgroup::hierarchies() else {
        return false;
    };
    hierarchies.iter().any(|h| {
        let dir = h.mount.join(path.trim_start_matches('/'));
        ["memory.oom_control", "memory.events"].iter().any(|f| {
            std::fs::read_to_string(dir.join(f))
                .unwrap_or_default()
                .lines()
                .any(|l| {
                    l.strip_prefix("oom_kill ")
                        .and_then(|n| n.trim().parse::<u64>().ok())
                        .is_some_and(|n| n > 0)
                })
        })
    })
}

/// Deletes the exited task from the shim (the OCI runtime's state and the container's
/// cgroup go with it); the record keeps the exit.
async fn release_task(node: &Node, c: &Container) {
    if let Ok(shim) = shim_of(node, &c.pod_id).await {
        if let Err(e) = shim.delete(&c.id, "").await {
            tracing::warn!(container = %c.id, error = %e, "deleting the exited task");
        }
    }
}

async fn record_exit(node: &Node, c: &Container, code: i32, at: i64) {
    let mut r = c.record.lock().await;
    if r.state == State::Exited {
        return;
    }
    r.state = State::Exited;
    r.exit_code = code;
    r.finished_at = if at > 0 { at } else { now_nanos() }.max(r.started_at);
    r.reason = match (oom_killed(&r, node), code) {
        (true, _) => "OOMKilled",
        (false, 0) => "Completed",
        _ => "Error",
    }
    .into();
    if let Err(e) = persist(&Dirs::new(&node.config, &r.id), &r) {
        tracing::error!(container = %r.id, error = %e, "recording the exit");
    }
    c.publish(&r);
    drop(r);
    let stopped = cri::ContainerEventType::ContainerStoppedEvent;
    crate::pod::container_event(node, &c.view(), stopped).await;
    tracing::info!(container = %c.id, code, "container exited");
}

/// The stop signal, then SIGKILL after `timeout` seconds (0: at once). Idempotent.
pub async fn stop(node: Arc<Node>, req: cri::StopContainerRequest) -> Result<()> {
    let c = match node.containers.get(&req.container_id) {
        Ok(c) => c,
        Err(Error::NotFound { .. }) => return Ok(()),
        Err(e) => return Err(e),
    };
    stop_one(&node, &c, Duration::from_secs(req.timeout.max(0) as u64)).await
}

async fn stop_one(node: &Node, c: &Container, timeout: Duration) -> Result<()> {
    let r = c.view();
    if r.state == State::Created {
        // Never started: deleting the task kills its waiting init (and frees runtime state).
        if let Ok(shim) = shim_of(node, &r.pod_id).await {
            shim.delete(&r.id, "").await?;
        }
        return Ok(());
    }
    if r.state != State::Running {
        return Ok(());
    }
    let shim = match shim_of(node, &r.pod_id).await {
        Ok(shim) => shim,
        Err(e) => {
            let pod_shim_alive = node
                .sandboxes
                .get(&r.pod_id)
                .map(|p| p.view().shim.is_some_and(|s| s.is_alive()))
                .unwrap_or(false);
            if pod_shim_alive {
                return Err(e);
            }
            // Its shim is gone, and every process of the pod with it.
            record_exit(node, c, 255, now_nanos()).await;
            return Ok(());
        }
    };
    if !timeout.is_zero() {
        if let Err(e) = shim.kill(&r.id, "", r.stop_signal, false).await {
            // It exited (and its task went) between our look and the signal.
            if c.view().state == State::Exited {
                return Ok(());
            }
            return Err(e);
        }
        if let Ok(Ok((status, at))) = tokio::time::timeout(timeout, shim.wait(&r.id, "")).await {
            record_exit(node, c, status as i32, at).await;
            release_task(node, c).await;
            return Ok(());
        }
    }
    if let Err(e) = shim.kill(&r.id, "", libc::SIGKILL, false).await {
        if c.view().state == State::Exited {
            return Ok(());
        }
        return Err(e);
    }
    let waited = tokio::time::timeout(Duration::from_secs(30), shim.wait(&r.id, ""))
        .await
        .map_err(|_| Error::Timeout {
            what: format!("container {} to die after SIGKILL", r.id),
            secs: 30,
        })?;
    match waited {
        Ok((status, at)) => record_exit(node, c, status as i32, at).await,
        // The monitor saw the exit first, recorded it and deleted the task (soak: ~1 in
        // 1000 StopPodSandbox calls failed with NotFound here).
        Err(_) if c.view().state == State::Exited => {}
        Err(e) => return Err(e),
    }
    Ok(())
}

/// Stops every container of a pod at once (kubelet already gave them their grace period).
pub async fn stop_all_of_pod(node: &Node, pod_id: &str) -> Result<()> {
    for c in node.containers.of_pod(pod_id) {
        stop_one(node, &c, Duration::ZERO).await?;
    }
    Ok(())
}

/// Stops (at once) if running, deletes the task, unmounts and removes everything.
pub async fn remove(node: Arc<Node>, req: cri::RemoveContainerRequest) -> Result<()> {
    let c = match node.containers.get(&req.container_id) {
        Ok(c) => c,
        Err(Error::NotFound { .. }) => return Ok(()),
        Err(e) => return Err(e),
    };
    remove_one(&node, &c).await
}

pub(crate) async fn remove_one(node: &Node, c: &Container) -> Result<()> {
    stop_one(node, c, Duration::ZERO).await?;
    let r = c.record.lock().await;
    match shim_of(node, &r.pod_id).await {
        Ok(shim) => shim.delete(&r.id, "").await?,
        Err(e) => {
            tracing::warn!(container = %r.id, error = %e, "shim unreachable; removing files only")
        }
    }
    force_delete_runtime_state(&r).await;
    // Deleting the writable layer may take long: not on an async worker.
    let dirs = Dirs::new(&node.config, &r.id);
    tokio::task::spawn_blocking(move || teardown_files(&dirs))
        .await
        .map_err(|e| Error::Internal(format!("removing container files: {e}")))??;
    node.containers.forget(&r.id);
    let removed = r.clone();
    drop(r);
    let deleted = cri::ContainerEventType::ContainerDeletedEvent;
    crate::pod::container_event(node, &removed, deleted).await;
    Ok(())
}

/// The OCI runtime's own record of the container, if the shim left one (it was gone, or its
/// delete raced the pod's teardown): `delete --force` makes sure nothing stays behind.
async fn force_delete_runtime_state(r: &Record) {
    let known = ["/run/runc", "/run/crun"]
        .iter()
        .any(|root| std::path::Path::new(root).join(&r.id).exists());
    if !known {
        return;
    }
    let deleted = tokio::process::Command::new(&r.runtime)
        .args(["delete", "--force", &r.id])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .await;
    tracing::info!(container = %r.id, ?deleted, "deleted the runtime's leftover state");
}

/// Removes every container of a pod.
pub async fn remove_all_of_pod(node: &Node, pod_id: &str) -> Result<()> {
    for c in node.containers.of_pod(pod_id) {
        remove_one(node, &c).await?;
    }
    Ok(())
}

pub async fn reopen_log(node: Arc<Node>, req: cri::ReopenContainerLogRequest) -> Result<()> {
    let r = node.containers.running(&req.container_id)?;
    shim_of(&node, &r.pod_id).await?.reopen_log(&r.id).await
}

/// Loads every container record; asks the shims of running ones how they are, records
/// exits that happened while podrund was down, and resumes monitoring the rest.
/// A container recorded as created whose task runs (or ran) was started just before a
/// crash: it is recovered as running, and monitoring records its exit.
pub async fn recover(node: &Arc<Node>) -> Result<usize> {
    let dir = node.config.root.join("containers");
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Ok(0);
    };
    let mut count = 0;
    for entry in entries.flatten() {
        let id = entry.file_name().to_string_lossy().into_owned();
        let dirs = Dirs::new(&node.config, &id);
        let mut r = match store::read_json::<Record>(&dirs.record()) {
            Ok(r) if r.version == RECORD_VERSION => r,
            // The dirs are made just before the first record is written, and nothing else
            // before it: a crash in between leaves only the dirs.
            Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
                tracing::warn!(container = %id, "container dir without a record; removing it");
                if let Err(e) = super::rootfs::teardown_files(&dirs) {
                    tracing::error!(container = %id, error = %e, "removing it failed");
                }
                continue;
            }
            Ok(_) | Err(_) => {
                tracing::error!(container = %id, "cannot read container record; leaving it in place");
                continue;
            }
        };
        if r.state == State::Created && started_while_away(node, &r).await {
            // podrund died between starting the task and recording it.
            tracing::warn!(container = %id, "found started, though recorded as created");
            r.state = State::Running;
            r.started_at = now_nanos();
            if let Err(e) = persist(&dirs, &r) {
                tracing::error!(container = %id, error = %e, "cannot record Running; continuing");
            }
        }
        let running = r.state == State::Running;
        let c = node.containers.insert(r);
        count += 1;
        if running {
            tokio::spawn(monitor(node.clone(), c));
        }
    }
    Ok(count)
}

/// Whether the shim reports the task of a container recorded as created as started.
async fn started_while_away(node: &Node, r: &Record) -> bool {
    let state = async { shim_of(node, &r.pod_id).await?.state(&r.id).await };
    match tokio::time::timeout(Duration::from_secs(3), state).await {
        Ok(Ok(s)) => {
            use containerd_shim_protos::api::Status;
            let status = s.status.value();
            status == Status::RUNNING as i32 || (status == Status::STOPPED as i32 && s.pid > 0)
        }
        _ => false,
    }
}
