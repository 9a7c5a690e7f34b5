//! The shim's one reaper. As subreaper of everything the pod runs, the shim collects every
//! exit with `waitpid(-1)`; whoever waits for a particular child (an OCI runtime command, a
//! container's init, an exec) registers its pid here, on the shim's single thread and
//! right after spawning it, so no exit can be collected before its waiter exists.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::SystemTime;

use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use tokio::sync::watch;

/// How a process ended: the exit code, or 128 + the signal that killed it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Exit {
    pub status: u32,
    pub at: SystemTime,
}

pub type ExitWatch = watch::Receiver<Option<Exit>>;

#[derive(Default)]
pub struct Reaper {
    waiters: Mutex<HashMap<i32, watch::Sender<Option<Exit>>>>,
    /// Exits nobody waited for yet: a detached process (an exec, a container's init) is
    /// reparented to the shim, and may end, before the shim has read its pid file.
    unclaimed: Mutex<HashMap<i32, Exit>>,
}

/// How long an unclaimed exit is kept; far shorter than the kernel takes to reuse a pid.
const UNCLAIMED_FOR: std::time::Duration = std::time::Duration::from_secs(10);

impl Reaper {
    /// Starts watching `pid`; the receiver yields its exit.
    pub fn watch(&self, pid: i32) -> ExitWatch {
        let early = self
            .unclaimed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&pid);
        let (tx, rx) = watch::channel(early);
        if early.is_none() {
            self.waiters
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(pid, tx);
        }
        rx
    }

    /// Collects every child that has exited and tells its waiter.
    pub fn reap(&self) {
        loop {
            let (pid, status) = match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) => (pid, code as u32),
                Ok(WaitStatus::Signaled(pid, sig, _)) => (pid, 128 + sig as u32),
                Ok(WaitStatus::StillAlive) | Err(_) => return,
                Ok(_) => continue,
            };
            let exit = Exit {
                status,
                at: SystemTime::now(),
            };
            match self
                .waiters
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&pid.as_raw())
            {
                Some(tx) => {
                    tx.send_replace(Some(exit));
                }
                None => {
                    let mut unclaimed = self.unclaimed.lock().unwrap_or_else(|p| p.into_inner());
                    unclaimed.retain(|_, e| e.at.elapsed().unwrap_or_default() < UNCLAIMED_FOR);
                    unclaimed.insert(pid.as_raw(), exit);
                }
            }
        }
    }
}

/// Waits for the exit a watch reports.
pub async fn exited(mut rx: ExitWatch) -> Option<Exit> {
    rx.wait_for(Option::is_some).await.ok().and_then(|e| *e)
}
