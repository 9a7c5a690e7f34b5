//! The container verbs: CreateContainer, Start, Stop, Remove, ExecSync, UpdateContainerResources
//! and ReopenContainerLog, and bringing containers back after a restart.

mod checks;
mod create;
pub(crate) mod exec;
mod host;
pub(crate) mod lifecycle;
mod rootfs;
mod update;

pub use create::create;
pub use exec::exec_sync;
pub use lifecycle::{recover, remove, remove_all_of_pod, reopen_log, start, stop, stop_all_of_pod};
pub use update::update;
