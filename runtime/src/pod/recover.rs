//! Recovery when podrund starts: every record under `<root>/pods` is loaded and checked
//! against reality. A pod whose pause and shim are the very processes recorded stays
//! Ready; anything else degrades to NotReady, so that Stop and Remove can still clean it up.
//! A record that cannot be read is left on disk, untouched, and reported.

use std::sync::Arc;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::node::Node;
use crate::sandbox::{persist, PodDirs, Record, State, RECORD_VERSION};
use crate::store;

const RECONNECT_TIMEOUT: Duration = Duration::from_secs(3);

pub async fn recover(node: &Arc<Node>) -> Result<usize> {
    let dir = node.config.root.join("pods");
    let entries = match std::fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(Error::io("reading", &dir)(e)),
    };
    // Pods are checked concurrently, so a few hung shims do not hold up the start.
    let mut checks = tokio::task::JoinSet::new();
    for entry in entries.flatten() {
        let id = entry.file_name().to_string_lossy().into_owned();
        let dirs = PodDirs::new(&node.config, &id);
        let record: Record = match store::read_json(&dirs.record()) {
            Ok(r) => r,
            // Dirs are made just before the first record is written, and nothing else
            // before it: a crash in between leaves only empty dirs.
            Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
                tracing::warn!(pod = %id, "pod dir without a record; removing it");
                let _ = super::remove::remove_dirs(&dirs);
                continue;
            }
            Err(e) => {
                tracing::error!(pod = %id, error = %e, "cannot read pod record; leaving it in place");
                continue;
            }
        };
        if record.version != RECORD_VERSION || record.id != id {
            tracing::error!(pod = %id, version = record.version, "unexpected pod record; leaving it in place");
            continue;
        }
        checks.spawn(check(dirs, record));
    }
    let mut count = 0;
    while let Some(checked) = checks.join_next().await {
        let record = checked.map_err(|e| Error::Internal(format!("recovery task: {e}")))?;
        node.sandboxes.insert(record);
        count += 1;
    }
    Ok(count)
}

/// Degrades the record to NotReady unless its pause and shim are alive and answering.
async fn check(dirs: PodDirs, mut record: Record) -> Record {
    let alive = |p: &Option<store::ProcessId>| p.as_ref().is_some_and(|p| p.is_alive());
    let netns_gone = record.netns.as_ref().is_some_and(|p| !p.exists());
    let pause_alive = alive(&record.pause);
    let ready = record.state == State::Ready && pause_alive && alive(&record.shim) && {
        let answered = tokio::time::timeout(RECONNECT_TIMEOUT, reconnect(&record)).await;
        match answered {
            Ok(Ok(())) => true,
            Ok(Err(e)) => {
                tracing::warn!(pod = %record.id, error = %e, "shim does not answer as expected");
                false
            }
            Err(_) => {
                tracing::warn!(pod = %record.id, "shim did not answer in time");
                false
            }
        }
    };
    if !ready && record.state != State::NotReady {
        tracing::warn!(pod = %record.id, state = ?record.state, "pod found not ready on restart");
        record.state = State::NotReady;
        record.reason = match (pause_alive, netns_gone) {
            (false, true) => {
                "its pause process and netns were gone when podrund started (a reboot?)"
            }
            (false, false) => "its pause process was gone when podrund started",
            (true, _) => "its shim did not answer when podrund started",
        }
        .to_owned();
        if let Err(e) = persist(&dirs, &record) {
            tracing::error!(pod = %record.id, error = %e, "cannot record NotReady; continuing");
        }
    }
    record
}

/// Stops, at start, every pod whose pause died while podrund was away (after a reboot,
/// all of them): CNI DEL with the cached result releases its IP even though the netns is
/// gone, and its mounts, cgroups and pin go, as StopPodSandbox would. kubelet then finds it
/// stopped; the record stays until RemovePodSandbox. Run after the containers recovered.
pub async fn release_dead(node: &Arc<Node>) -> usize {
    let dead: Vec<String> = node
        .sandboxes
        .all()
        .iter()
        .map(|p| p.view())
        .filter(|r| {
            r.state == State::NotReady && !r.stopped && !r.pause.is_some_and(|p| p.is_alive())
        })
        .map(|r| r.id)
        .collect();
    for id in &dead {
        let req = podrun_proto::cri::StopPodSandboxRequest {
            pod_sandbox_id: id.clone(),
        };
        match super::stop::stop(node.clone(), req).await {
            Ok(()) => tracing::info!(pod = %id, "released a pod whose pause died"),
            Err(e) => {
                tracing::warn!(pod = %id, error = %e, "releasing a dead pod failed; Stop retries")
            }
        }
    }
    dead.len()
}

/// CNI GC (spec 1.1) at start, before podrund serves (GC must not overlap an ADD): the
/// network's plugins learn which attachments podrund's pods hold and release the rest, such
/// as the IP reservations of pods lost with a wiped root. Networks of an older version, or
/// with `disableGC`, are left alone. Answers whether GC ran.
pub async fn cni_gc(node: &Arc<Node>) -> bool {
    let network = match crate::cni::Network::load_first(&node.config.cni_conf_dir) {
        Ok(Some(network)) => network,
        _ => return false,
    };
    let valid: Vec<(String, String)> = node
        .sandboxes
        .all()
        .iter()
        .filter_map(|p| {
            p.with_view(|r| {
                let a = r.network.as_ref()?;
                (a.network.name == network.name).then(|| (a.container_id.clone(), a.ifname.clone()))
            })
        })
        .collect();
    match network.gc(&valid, node.cni.as_ref()).await {
        Ok(ran) => ran,
        Err(e) => {
            tracing::warn!(error = %e, "CNI GC failed; reservations of lost pods may remain");
            true
        }
    }
}

/// Reconnects to the pod's shim and checks that it still runs the pod's pause.
async fn reconnect(record: &Record) -> Result<()> {
    let shim = crate::sandbox::shim::Shim::connect(&record.id, &record.shim_socket).await?;
    let state = shim.state(&record.id).await?;
    let running = state.status.value() == containerd_shim_protos::api::Status::RUNNING as i32;
    match running && Some(state.pid as i32) == record.pause.map(|p| p.pid) {
        true => Ok(()),
        false => Err(Error::Shim {
            pod: record.id.clone(),
            message: format!("pause task is {:?}, pid {}", state.status, state.pid),
        }),
    }
}
