//! `podrun-pause`: the infra process that holds a pod's namespaces.
//!
//! Modelled on catatonit: all signals are blocked and read synchronously from a signalfd;
//! every child is reaped (pause is PID 1 when the pod shares one PID namespace, and a
//! child-subreaper otherwise); SIGTERM and SIGINT end it with status 0. After set-up it
//! holds no open files and no capabilities, runs with no_new_privs and, where it can, as
//! 65535:65535. It never allocates or panics after set-up (`panic = "abort"` in release).

use std::mem::MaybeUninit;
use std::process::ExitCode;

/// The unprivileged user and group pause runs as (the `nobody` of the pause image).
const PAUSE_ID: libc::uid_t = 65535;

fn main() -> ExitCode {
    if let Some(arg) = std::env::args().nth(1) {
        if arg == "--version" || arg == "-v" {
            println!("podrun-pause {}", env!("CARGO_PKG_VERSION"));
            return ExitCode::SUCCESS;
        }
        eprintln!("usage: podrun-pause [--version]");
        return ExitCode::from(2);
    }
    match setup() {
        Ok(sfd) => {
            // Start-up mapped most of this static binary; the loop below needs a few pages.
            podrun_pause::release_executable_pages();
            serve(sfd)
        }
        Err(what) => {
            eprintln!("podrun-pause: {what}: {}", std::io::Error::last_os_error());
            ExitCode::from(1)
        }
    }
}

/// Blocks every signal, opens the signalfd, and sheds files, privileges and capabilities.
fn setup() -> Result<libc::c_int, &'static str> {
    // SAFETY: plain syscalls on memory owned by this frame; no other thread exists yet
    // that could race on the signal mask.
    unsafe {
        let mut all = MaybeUninit::<libc::sigset_t>::uninit();
        libc::sigfillset(all.as_mut_ptr());
        let all = all.assume_init();
        if libc::sigprocmask(libc::SIG_BLOCK, &all, std::ptr::null_mut()) != 0 {
            return Err("sigprocmask");
        }
        if libc::chdir(c"/".as_ptr()) != 0 {
            return Err("chdir /");
        }
        // Close everything inherited beyond stdio before opening our own fd.
        if libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32) != 0 {
            for fd in 3..1024 {
                libc::close(fd);
            }
        }
        if libc::getpid() != 1 && libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0 {
            return Err("prctl(PR_SET_CHILD_SUBREAPER)");
        }
        let sfd = libc::signalfd(-1, &all, libc::SFD_CLOEXEC);
        if sfd < 0 {
            return Err("signalfd");
        }
        // Best effort: in a user namespace without 65535 mapped these fail, and pause then
        // keeps its ids but still loses every capability below.
        if libc::getuid() == 0 {
            libc::setgroups(0, std::ptr::null());
            libc::setgid(PAUSE_ID);
            libc::setuid(PAUSE_ID);
        }
        if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
            return Err("prctl(PR_SET_NO_NEW_PRIVS)");
        }
        drop_capabilities()?;
        Ok(sfd)
    }
}

/// Empties the effective, permitted and inheritable capability sets.
fn drop_capabilities() -> Result<(), &'static str> {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    #[derive(Clone, Copy)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;
    let mut header = Header {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let data = [Data {
        effective: 0,
        permitted: 0,
        inheritable: 0,
    }; 2];
    // SAFETY: header and data have the kernel's layout for capability version 3 (two
    // data structs) and live for the duration of the call.
    let rc = unsafe { libc::syscall(libc::SYS_capset, &mut header, data.as_ptr()) };
    if rc != 0 {
        return Err("capset");
    }
    Ok(())
}

/// Reads signals until SIGTERM or SIGINT, reaping children on every SIGCHLD.
fn serve(sfd: libc::c_int) -> ExitCode {
    loop {
        let mut info = MaybeUninit::<libc::signalfd_siginfo>::uninit();
        let size = std::mem::size_of::<libc::signalfd_siginfo>();
        // SAFETY: the buffer is exactly one signalfd_siginfo, owned by this frame.
        let n = unsafe { libc::read(sfd, info.as_mut_ptr().cast(), size) };
        if n != size as isize {
            continue; // EINTR cannot happen with every signal blocked; retry anything else.
        }
        // SAFETY: the kernel filled the whole struct (n == size).
        let signo = unsafe { info.assume_init() }.ssi_signo as libc::c_int;
        match signo {
            libc::SIGTERM | libc::SIGINT => return ExitCode::SUCCESS,
            libc::SIGCHLD => reap(),
            _ => {}
        }
    }
}

/// Reaps every child that has exited; SIGCHLDs coalesce, so loop until none is left.
fn reap() {
    loop {
        let mut status = 0;
        // SAFETY: waitpid only writes the status integer we own.
        let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
        if pid <= 0 {
            return;
        }
    }
}
