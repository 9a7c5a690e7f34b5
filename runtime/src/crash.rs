//! Crash points, for tests of what a crash leaves: with `PODRUN_CRASH_AT=NAME` in its
//! environment, podrund SIGKILLs itself when it reaches the point NAME (one string compare
//! per point otherwise). [`POINTS`] lists them, in the order a pod's life reaches them.

use std::sync::OnceLock;

pub const POINTS: &[&str] = &[
    "run:record-written",
    "run:attached",
    "run:ready-persisted",
    "create:dirs-made",
    "create:record-written",
    "create:rootfs-mounted",
    "create:task-created",
    "start:task-started",
    "stop:containers-stopped",
    "stop:network-released",
    "remove:containers-removed",
    "remove:state-removed",
];

/// SIGKILLs this process if `PODRUN_CRASH_AT` names `name`.
pub fn point(name: &str) {
    static AT: OnceLock<Option<String>> = OnceLock::new();
    if AT
        .get_or_init(|| std::env::var("PODRUN_CRASH_AT").ok())
        .as_deref()
        == Some(name)
    {
        debug_assert!(POINTS.contains(&name), "unlisted crash point {name}");
        tracing::warn!(point = name, "crashing here, as PODRUN_CRASH_AT asks");
        let _ = nix::sys::signal::kill(nix::unistd::getpid(), nix::sys::signal::Signal::SIGKILL);
    }
}
