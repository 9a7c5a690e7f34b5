//! A process's terminal and stdin: ResizePty resizes the pty whose master the shim holds,
//! and CloseIO ends the process's input by stopping the copier that feeds it.

use containerd_shim_protos::api;
use containerd_shim_protos::protobuf::well_known_types::empty::Empty;
use containerd_shim_protos::ttrpc;

use super::{internal, status, Shim};
use crate::stdio;

impl Shim {
    pub(super) async fn resize_terminal(&self, req: api::ResizePtyRequest) -> ttrpc::Result<Empty> {
        let console = self.with_proc(&req.id, &req.exec_id, |p| Ok(p.console.clone()))?;
        let console = console.ok_or_else(|| {
            status(
                ttrpc::Code::FAILED_PRECONDITION,
                format!("{}/{} has no terminal", req.id, req.exec_id),
            )
        })?;
        stdio::resize(&console, req.width, req.height).map_err(internal)?;
        Ok(Empty::new())
    }

    pub(super) async fn close_stdin(&self, req: api::CloseIORequest) -> ttrpc::Result<Empty> {
        if req.stdin {
            if let Some(copier) = self.with_proc(&req.id, &req.exec_id, |p| Ok(p.stdin.take()))? {
                copier.abort();
            }
        }
        Ok(Empty::new())
    }
}
