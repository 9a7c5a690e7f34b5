//! Starts a pod's infra process, `podrun-pause`, straight from the sandbox's spec, without
//! an OCI runtime: one `clone` makes the new namespaces (ipc, uts, pid, and net when the
//! spec names no netns to join), the child joins the namespaces the spec gives by path, sets
//! the hostname and execs pause. A close-on-exec pipe carries any failure back.
//!
//! A pod with its own user namespace: the child joins it first (and the netns it owns),
//! then makes the ipc, uts and pid namespaces, so that they belong to it, becomes its root,
//! and forks pause as the new pid namespace's first process; the child reports pause's pid
//! and exits, and pause, reparented to the shim (the subreaper), is reaped by it.

use std::ffi::CString;
use std::fs::File;
use std::io::Read;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use podrun_core::oci_config::Spec;

/// Locates `podrun-pause`: where podrund says (`PODRUN_PAUSE`), else next to this
/// executable, else on PATH.
pub fn find_pause() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os("PODRUN_PAUSE") {
        return Ok(path.into());
    }
    let beside = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(|d| d.join("podrun-pause")));
    let on_path = std::env::var_os("PATH")
        .map(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join("podrun-pause"))
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    beside
        .into_iter()
        .chain(on_path)
        .find(|p| p.is_file())
        .context("podrun-pause not found next to the shim or on PATH")
}

struct Join {
    fd: OwnedFd,
    flag: libc::c_int,
}

/// What the child reports on the pipe: a failed step (its index and errno), or, in a user
/// namespace, pause's pid.
const STEPS: [&str; 9] = [
    "setns",
    "sethostname",
    "dup2",
    "execve",
    "sigprocmask",
    "unshare",
    "setgroups",
    "setresgid/setresuid",
    "fork",
];
const PID_REPORT: u8 = 0xff;

/// Spawns pause as the spec asks and returns its pid (in the shim's PID namespace).
pub fn spawn(spec: &Spec, pause: &Path) -> Result<i32> {
    let mut new_flags: libc::c_int = 0;
    let mut joins = Vec::new();
    for ns in spec
        .linux
        .as_ref()
        .map(|l| l.namespaces.as_slice())
        .unwrap_or_default()
    {
        let flag = match ns.kind.as_str() {
            "network" => libc::CLONE_NEWNET,
            "ipc" => libc::CLONE_NEWIPC,
            "uts" => libc::CLONE_NEWUTS,
            "pid" => libc::CLONE_NEWPID,
            // A user namespace is only ever joined (podrund made it).
            "user" if ns.path.is_some() => libc::CLONE_NEWUSER,
            // Pause needs no mount or cgroup namespace of its own.
            _ => continue,
        };
        match &ns.path {
            Some(path) => {
                let fd = File::open(path)
                    .with_context(|| format!("opening {} namespace {path}", ns.kind))?;
                joins.push(Join {
                    fd: fd.into(),
                    flag,
                });
            }
            None => new_flags |= flag,
        }
    }
    let hostname = match (&spec.hostname, new_flags & libc::CLONE_NEWUTS != 0) {
        (Some(h), true) if !h.is_empty() => Some(h.clone()),
        _ => None,
    };
    let path = CString::new(pause.as_os_str().as_encoded_bytes())?;
    let argv = [path.as_ptr(), std::ptr::null()];
    let envp: [*const libc::c_char; 1] = [std::ptr::null()];
    let devnull = File::options().read(true).write(true).open("/dev/null")?;
    let (err_rd, err_wr) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    // In a user namespace the clone makes nothing: the child makes them once inside.
    let in_userns = joins.iter().any(|j| j.flag == libc::CLONE_NEWUSER);
    let (clone_flags, unshare_flags) = match in_userns {
        true => (0, new_flags),
        false => (new_flags, 0),
    };

    // SAFETY: a fork-like clone (no new stack, no CLONE_VM): the child gets a copy of this
    // address space and runs only async-signal-safe syscalls on data prepared above, then
    // execs or _exits. Nothing in it allocates, locks or unwinds.
    let pid = unsafe {
        libc::syscall(
            libc::SYS_clone,
            (clone_flags | libc::SIGCHLD) as libc::c_ulong,
            0usize,
            0usize,
            0usize,
            0usize,
        )
    };
    if pid < 0 {
        bail!("clone: {}", std::io::Error::last_os_error());
    }
    if pid == 0 {
        // SAFETY: see above; `child` never returns.
        unsafe {
            child(
                &joins,
                unshare_flags,
                hostname.as_deref(),
                devnull.as_raw_fd(),
                err_wr.as_raw_fd(),
                &argv,
                &envp,
            )
        }
    }
    drop(err_wr);
    let mut report = Vec::new();
    File::from(err_rd).read_to_end(&mut report)?;
    let mut pause_pid = pid as i32;
    for msg in report.chunks(5).filter(|m| m.len() == 5) {
        let value = i32::from_ne_bytes([msg[1], msg[2], msg[3], msg[4]]);
        if msg[0] == PID_REPORT {
            pause_pid = value;
            continue;
        }
        let step = STEPS.get(msg[0] as usize).unwrap_or(&"?");
        // The child has exited (127); the reaper collects it.
        bail!(
            "starting pause: {step}: {}",
            std::io::Error::from_raw_os_error(value)
        );
    }
    Ok(pause_pid)
}

/// The cloned child. Only raw syscalls: no allocation, no locks, no panics.
unsafe fn child(
    joins: &[Join],
    unshare_flags: libc::c_int,
    hostname: Option<&str>,
    devnull: libc::c_int,
    err: libc::c_int,
    argv: &[*const libc::c_char; 2],
    envp: &[*const libc::c_char; 1],
) -> ! {
    let fail = |step: u8| -> ! {
        let errno = *libc::__errno_location();
        let b = errno.to_ne_bytes();
        let msg = [step, b[0], b[1], b[2], b[3]];
        libc::write(err, msg.as_ptr().cast(), msg.len());
        libc::_exit(127)
    };
    // The user namespace first: the others are then joined, or made, as its root.
    for j in joins.iter().filter(|j| j.flag == libc::CLONE_NEWUSER) {
        if libc::setns(j.fd.as_raw_fd(), j.flag) != 0 {
            fail(0);
        }
    }
    for j in joins.iter().filter(|j| j.flag != libc::CLONE_NEWUSER) {
        if libc::setns(j.fd.as_raw_fd(), j.flag) != 0 {
            fail(0);
        }
    }
    if unshare_flags != 0 {
        if libc::unshare(unshare_flags) != 0 {
            fail(5);
        }
        if libc::setgroups(0, std::ptr::null()) != 0 {
            fail(6);
        }
        if libc::setresgid(0, 0, 0) != 0 || libc::setresuid(0, 0, 0) != 0 {
            fail(7);
        }
    }
    if let Some(h) = hostname {
        if libc::sethostname(h.as_ptr().cast(), h.len()) != 0 {
            fail(1);
        }
    }
    for fd in 0..3 {
        if libc::dup2(devnull, fd) < 0 {
            fail(2);
        }
    }
    // The tokio runtime may have signals blocked or handled; pause sets its own mask.
    let mut empty = std::mem::zeroed::<libc::sigset_t>();
    libc::sigemptyset(&mut empty);
    if libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut()) != 0 {
        fail(4);
    }
    if unshare_flags & libc::CLONE_NEWPID != 0 {
        // Only a child enters the new pid namespace: it becomes pause; this process says
        // which pid it has and goes.
        // A raw fork (clone with SIGCHLD): libc's fork would take locks here.
        let pid = libc::syscall(
            libc::SYS_clone,
            libc::SIGCHLD as libc::c_ulong,
            0usize,
            0usize,
            0usize,
            0usize,
        ) as libc::pid_t;
        if pid < 0 {
            fail(8);
        }
        if pid > 0 {
            let b = pid.to_ne_bytes();
            let msg = [PID_REPORT, b[0], b[1], b[2], b[3]];
            libc::write(err, msg.as_ptr().cast(), msg.len());
            libc::_exit(0);
        }
    }
    libc::execve(argv[0], argv.as_ptr(), envp.as_ptr());
    fail(3)
}
