//! Recovery when podrund starts: every record under `<root>/pods` is loaded and checked
//! against reality. A pod whose pause and shim are the very processes recorded stays
//! Ready; anything else degrades to NotReady, so that Stop and Remove can still clean it up.
//! A record that cannot be read is left on disk, untouched, and reported.

use std::sync::Arc;

use super::{persist, PodDirs, Record, State, RECORD_VERSION};
use crate::error::{Error, Result};
use crate::node::Node;
use crate::store;

pub async fn recover(node: &Arc<Node>) -> Result<usize> {
    let dir = node.config.root.join("pods");
    let entries = match std::fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(Error::io("reading", &dir)(e)),
    };
    let mut count = 0;
    for entry in entries.flatten() {
        let id = entry.file_name().to_string_lossy().into_owned();
        let dirs = PodDirs::new(&node.config, &id);
        let mut record: Record = match store::read_json(&dirs.record()) {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(pod = %id, error = %e, "cannot read pod record; leaving it in place");
                continue;
            }
        };
        if record.version != RECORD_VERSION || record.id != id {
            tracing::error!(pod = %id, version = record.version, "unexpected pod record; leaving it in place");
            continue;
        }
        let alive = |p: &Option<store::ProcessId>| p.as_ref().is_some_and(|p| p.is_alive());
        let ready = record.state == State::Ready
            && alive(&record.pause)
            && alive(&record.shim)
            && reconnect(&record)
                .await
                .inspect_err(|e| tracing::warn!(pod = %id, error = %e, "shim does not answer"))
                .is_ok();
        if !ready && record.state != State::NotReady {
            tracing::warn!(pod = %id, state = ?record.state, "pod found not ready on restart");
            record.state = State::NotReady;
            persist(&dirs, &record)?;
        }
        node.sandboxes.insert(record);
        count += 1;
    }
    Ok(count)
}

/// Reconnects to the pod's shim and checks that it still runs the pod's pause.
async fn reconnect(record: &Record) -> Result<()> {
    let shim = super::shim::Shim::connect(&record.id, &record.shim_socket).await?;
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
