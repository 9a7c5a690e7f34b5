//! The container verbs: CreateContainer, Start, Stop, Remove, ExecSync, UpdateContainerResources
//! ReopenContainerLog and CheckpointContainer, and bringing containers back after a restart.

mod checkpoint;
mod checks;
mod create;
pub(crate) mod exec;
mod host;
pub(crate) mod lifecycle;
mod rootfs;
mod update;

pub use checkpoint::checkpoint;
pub use create::create;
pub use exec::exec_sync;
pub use lifecycle::{recover, remove, remove_all_of_pod, reopen_log, start, stop, stop_all_of_pod};
pub use update::update;
