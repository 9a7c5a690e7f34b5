//! The RuntimeDefault seccomp profile, as containerd's and Docker's: a call not on the list
//! fails with EPERM. The list holds the calls ordinary programs make; the calls a capability
//! governs (mounts, namespaces, modules, clocks, reboot, BPF, ...) are allowed only to a
//! container granted that capability; clone may not make namespaces without CAP_SYS_ADMIN
//! (clone3, whose flags seccomp cannot see, answers ENOSYS so libc falls back to clone);
//! personality takes only the harmless personas. io_uring is not on the list: its
//! operations bypass the filter. Names the host's libseccomp does not know are skipped by
//! the OCI runtime.

use oci_spec::runtime::{
    Arch, LinuxSeccomp, LinuxSeccompAction as Action, LinuxSeccompArgBuilder, LinuxSeccompBuilder,
    LinuxSeccompOperator as Op, LinuxSyscall, LinuxSyscallBuilder,
};
use podrun_proto::cri;

use super::built;
use crate::error::{Error, Result};

/// The Localhost profile a security context names, read and checked: a file that cannot
/// be read or is no seccomp profile is refused, never run without seccomp.
pub fn localhost(sc: Option<&cri::LinuxContainerSecurityContext>) -> Result<Option<LinuxSeccomp>> {
    const FIELD: &str = "config.linux.security_context.seccomp.localhost_ref";
    let Some(profile) = sc.and_then(|s| s.seccomp.as_ref()) else {
        return Ok(None);
    };
    if profile.profile_type != cri::security_profile::ProfileType::Localhost as i32 {
        return Ok(None);
    }
    let path = std::path::Path::new(&profile.localhost_ref);
    if !path.is_absolute() {
        return Err(Error::invalid(
            FIELD,
            format!("{path:?} is not an absolute path"),
        ));
    }
    let bytes = std::fs::read(path).map_err(|e| Error::invalid(FIELD, format!("{path:?}: {e}")))?;
    // Typed: an unknown action, architecture or operator is refused here, by name.
    let profile: LinuxSeccomp = serde_json::from_slice(&bytes).map_err(|e| {
        Error::invalid(
            FIELD,
            format!("{path:?} is not an OCI seccomp profile: {e}"),
        )
    })?;
    Ok(Some(profile))
}

/// Allowed to every container.
const ALLOWED: &[&str] = &[
    "accept",
    "accept4",
    "access",
    "adjtimex",
    "alarm",
    "arch_prctl",
    "bind",
    "brk",
    "cachestat",
    "capget",
    "capset",
    "chdir",
    "chmod",
    "chown",
    "chown32",
    "clock_adjtime",
    "clock_adjtime64",
    "clock_getres",
    "clock_getres_time64",
    "clock_gettime",
    "clock_gettime64",
    "clock_nanosleep",
    "clock_nanosleep_time64",
    "close",
    "close_range",
    "connect",
    "copy_file_range",
    "creat",
    "dup",
    "dup2",
    "dup3",
    "epoll_create",
    "epoll_create1",
    "epoll_ctl",
    "epoll_ctl_old",
    "epoll_pwait",
    "epoll_pwait2",
    "epoll_wait",
    "epoll_wait_old",
    "eventfd",
    "eventfd2",
    "execve",
    "execveat",
    "exit",
    "exit_group",
    "faccessat",
    "faccessat2",
    "fadvise64",
    "fadvise64_64",
    "fallocate",
    "fanotify_mark",
    "fchdir",
    "fchmod",
    "fchmodat",
    "fchmodat2",
    "fchown",
    "fchown32",
    "fchownat",
    "fcntl",
    "fcntl64",
    "fdatasync",
    "fgetxattr",
    "flistxattr",
    "flock",
    "fork",
    "fremovexattr",
    "fsetxattr",
    "fstat",
    "fstat64",
    "fstatat64",
    "fstatfs",
    "fstatfs64",
    "fsync",
    "ftruncate",
    "ftruncate64",
    "futex",
    "futex_requeue",
    "futex_time64",
    "futex_wait",
    "futex_waitv",
    "futex_wake",
    "futimesat",
    "get_robust_list",
    "get_thread_area",
    "getcpu",
    "getcwd",
    "getdents",
    "getdents64",
    "getegid",
    "getegid32",
    "geteuid",
    "geteuid32",
    "getgid",
    "getgid32",
    "getgroups",
    "getgroups32",
    "getitimer",
    "getpeername",
    "getpgid",
    "getpgrp",
    "getpid",
    "getppid",
    "getpriority",
    "getrandom",
    "getresgid",
    "getresgid32",
    "getresuid",
    "getresuid32",
    "getrlimit",
    "getrusage",
    "getsid",
    "getsockname",
    "getsockopt",
    "gettid",
    "gettimeofday",
    "getuid",
    "getuid32",
    "getxattr",
    "inotify_add_watch",
    "inotify_init",
    "inotify_init1",
    "inotify_rm_watch",
    "io_cancel",
    "io_destroy",
    "io_getevents",
    "io_pgetevents",
    "io_pgetevents_time64",
    "io_setup",
    "io_submit",
    "ioctl",
    "ioprio_get",
    "ioprio_set",
    "ipc",
    "kill",
    "landlock_add_rule",
    "landlock_create_ruleset",
    "landlock_restrict_self",
    "lchown",
    "lchown32",
    "lgetxattr",
    "link",
    "linkat",
    "listen",
    "listxattr",
    "llistxattr",
    "_llseek",
    "lremovexattr",
    "lseek",
    "lsetxattr",
    "lstat",
    "lstat64",
    "madvise",
    "map_shadow_stack",
    "membarrier",
    "memfd_create",
    "memfd_secret",
    "mincore",
    "mkdir",
    "mkdirat",
    "mknod",
    "mknodat",
    "mlock",
    "mlock2",
    "mlockall",
    "mmap",
    "mmap2",
    "modify_ldt",
    "mprotect",
    "mq_getsetattr",
    "mq_notify",
    "mq_open",
    "mq_timedreceive",
    "mq_timedreceive_time64",
    "mq_timedsend",
    "mq_timedsend_time64",
    "mq_unlink",
    "mremap",
    "msgctl",
    "msgget",
    "msgrcv",
    "msgsnd",
    "msync",
    "munlock",
    "munlockall",
    "munmap",
    "name_to_handle_at",
    "nanosleep",
    "newfstatat",
    "_newselect",
    "open",
    "openat",
    "openat2",
    "pause",
    "pidfd_open",
    "pidfd_send_signal",
    "pipe",
    "pipe2",
    "pkey_alloc",
    "pkey_free",
    "pkey_mprotect",
    "poll",
    "ppoll",
    "ppoll_time64",
    "prctl",
    "pread64",
    "preadv",
    "preadv2",
    "prlimit64",
    "process_mrelease",
    "pselect6",
    "pselect6_time64",
    "ptrace",
    "pwrite64",
    "pwritev",
    "pwritev2",
    "read",
    "readahead",
    "readlink",
    "readlinkat",
    "readv",
    "recv",
    "recvfrom",
    "recvmmsg",
    "recvmmsg_time64",
    "recvmsg",
    "remap_file_pages",
    "removexattr",
    "rename",
    "renameat",
    "renameat2",
    "restart_syscall",
    "rmdir",
    "rseq",
    "rt_sigaction",
    "rt_sigpending",
    "rt_sigprocmask",
    "rt_sigqueueinfo",
    "rt_sigreturn",
    "rt_sigsuspend",
    "rt_sigtimedwait",
    "rt_sigtimedwait_time64",
    "rt_tgsigqueueinfo",
    "sched_get_priority_max",
    "sched_get_priority_min",
    "sched_getaffinity",
    "sched_getattr",
    "sched_getparam",
    "sched_getscheduler",
    "sched_rr_get_interval",
    "sched_rr_get_interval_time64",
    "sched_setaffinity",
    "sched_setattr",
    "sched_setparam",
    "sched_setscheduler",
    "sched_yield",
    "seccomp",
    "select",
    "semctl",
    "semget",
    "semop",
    "semtimedop",
    "semtimedop_time64",
    "send",
    "sendfile",
    "sendfile64",
    "sendmmsg",
    "sendmsg",
    "sendto",
    "set_robust_list",
    "set_thread_area",
    "set_tid_address",
    "setfsgid",
    "setfsgid32",
    "setfsuid",
    "setfsuid32",
    "setgid",
    "setgid32",
    "setgroups",
    "setgroups32",
    "setitimer",
    "setpgid",
    "setpriority",
    "setregid",
    "setregid32",
    "setresgid",
    "setresgid32",
    "setresuid",
    "setresuid32",
    "setreuid",
    "setreuid32",
    "setrlimit",
    "setsid",
    "setsockopt",
    "setuid",
    "setuid32",
    "setxattr",
    "shmat",
    "shmctl",
    "shmdt",
    "shmget",
    "shutdown",
    "sigaltstack",
    "signalfd",
    "signalfd4",
    "sigprocmask",
    "sigreturn",
    "socket",
    "socketcall",
    "socketpair",
    "splice",
    "stat",
    "stat64",
    "statfs",
    "statfs64",
    "statx",
    "symlink",
    "symlinkat",
    "sync",
    "sync_file_range",
    "syncfs",
    "sysinfo",
    "tee",
    "tgkill",
    "time",
    "timer_create",
    "timer_delete",
    "timer_getoverrun",
    "timer_gettime",
    "timer_gettime64",
    "timer_settime",
    "timer_settime64",
    "timerfd_create",
    "timerfd_gettime",
    "timerfd_gettime64",
    "timerfd_settime",
    "timerfd_settime64",
    "times",
    "tkill",
    "truncate",
    "truncate64",
    "ugetrlimit",
    "umask",
    "uname",
    "unlink",
    "unlinkat",
    "utime",
    "utimensat",
    "utimensat_time64",
    "utimes",
    "vfork",
    "vmsplice",
    "wait4",
    "waitid",
    "waitpid",
    "write",
    "writev",
];

/// Allowed to a container that holds the capability.
const BY_CAPABILITY: &[(&str, &[&str])] = &[
    ("CAP_DAC_READ_SEARCH", &["open_by_handle_at"]),
    (
        "CAP_SYS_ADMIN",
        &[
            "bpf",
            "clone",
            "clone3",
            "fanotify_init",
            "fsconfig",
            "fsmount",
            "fsopen",
            "fspick",
            "lookup_dcookie",
            "mount",
            "mount_setattr",
            "move_mount",
            "open_tree",
            "perf_event_open",
            "quotactl",
            "quotactl_fd",
            "setdomainname",
            "sethostname",
            "setns",
            "syslog",
            "umount",
            "umount2",
            "unshare",
        ],
    ),
    ("CAP_SYS_BOOT", &["reboot"]),
    ("CAP_SYS_CHROOT", &["chroot"]),
    (
        "CAP_SYS_MODULE",
        &["delete_module", "init_module", "finit_module"],
    ),
    ("CAP_SYS_PACCT", &["acct"]),
    (
        "CAP_SYS_PTRACE",
        &[
            "kcmp",
            "pidfd_getfd",
            "process_madvise",
            "process_vm_readv",
            "process_vm_writev",
        ],
    ),
    ("CAP_SYS_RAWIO", &["iopl", "ioperm"]),
    (
        "CAP_SYS_TIME",
        &["settimeofday", "stime", "clock_settime", "clock_settime64"],
    ),
    ("CAP_SYS_TTY_CONFIG", &["vhangup"]),
    (
        "CAP_SYS_NICE",
        &[
            "get_mempolicy",
            "mbind",
            "set_mempolicy",
            "set_mempolicy_home_node",
        ],
    ),
    ("CAP_SYSLOG", &["syslog"]),
    ("CAP_BPF", &["bpf"]),
    ("CAP_PERFMON", &["perf_event_open"]),
];

/// clone(2) flags that make namespaces (CLONE_NEWNS, NEWCGROUP, NEWUTS, NEWIPC, NEWUSER,
/// NEWPID, NEWNET): without CAP_SYS_ADMIN clone is allowed only with none of them.
const NAMESPACE_FLAGS: u64 = 0x7e02_0000;

/// personality(2) values allowed: PER_LINUX, PER_LINUX32, UNAME26 and their combination,
/// and the query.
const PERSONAS: &[u64] = &[0x0, 0x8, 0x20000, 0x20008, 0xffff_ffff];

/// A rule: `action` for `names`, when argument `index` compares with `op` to `value` (and
/// `value_two`, for a masked compare).
fn rule(names: &[&str], action: Action, arg: Option<(u32, Op, u64, u64)>) -> Result<LinuxSyscall> {
    let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    let mut rule = built(
        LinuxSyscallBuilder::default()
            .names(names)
            .action(action)
            .build(),
    )?;
    if let Some((index, op, value, value_two)) = arg {
        let arg = LinuxSeccompArgBuilder::default()
            .index(index as usize)
            .op(op)
            .value(value)
            .value_two(value_two)
            .build();
        rule.set_args(Some(vec![built(arg)?]));
    }
    Ok(rule)
}

/// The profile for a container whose bounding set is `caps`.
pub fn runtime_default(caps: &[String]) -> Result<LinuxSeccomp> {
    let has = |c: &str| caps.iter().any(|have| have == c);
    let mut names: Vec<&str> = ALLOWED.to_vec();
    for (cap, calls) in BY_CAPABILITY {
        if has(cap) {
            names.extend(
                calls
                    .iter()
                    .filter(|c| !names.contains(c))
                    .collect::<Vec<_>>(),
            );
        }
    }
    let mut syscalls = vec![rule(&names, Action::ScmpActAllow, None)?];
    for persona in PERSONAS {
        let arg = (0, Op::ScmpCmpEq, *persona, 0);
        syscalls.push(rule(&["personality"], Action::ScmpActAllow, Some(arg))?);
    }
    if !has("CAP_SYS_ADMIN") {
        let arg = (0, Op::ScmpCmpMaskedEq, NAMESPACE_FLAGS, 0);
        syscalls.push(rule(&["clone"], Action::ScmpActAllow, Some(arg))?);
        let mut clone3 = rule(&["clone3"], Action::ScmpActErrno, None)?;
        clone3.set_errno_ret(Some(libc::ENOSYS as u32));
        syscalls.push(clone3);
    }
    built(
        LinuxSeccompBuilder::default()
            .default_action(Action::ScmpActErrno)
            .default_errno_ret(libc::EPERM as u32)
            .architectures(vec![
                Arch::ScmpArchX86_64,
                Arch::ScmpArchX86,
                Arch::ScmpArchX32,
            ])
            .syscalls(syscalls)
            .build(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    /// The profile as the OCI runtime reads it.
    fn profile(caps: &[String]) -> Value {
        serde_json::to_value(runtime_default(caps).unwrap()).unwrap()
    }

    fn allowed(caps: &[&str]) -> Vec<String> {
        let caps: Vec<String> = caps.iter().map(|c| c.to_string()).collect();
        let p = profile(&caps);
        assert_eq!(p["defaultAction"], "SCMP_ACT_ERRNO", "default deny");
        p["syscalls"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["action"] == "SCMP_ACT_ALLOW" && r.get("args").is_none())
            .flat_map(|r| r["names"].as_array().unwrap().iter())
            .map(|n| n.as_str().unwrap().to_owned())
            .collect()
    }

    #[test]
    fn ordinary_calls_are_allowed_and_privileged_ones_only_with_their_capability() {
        let default = allowed(&[]);
        for call in [
            "read",
            "write",
            "openat",
            "execve",
            "mmap",
            "socket",
            "exit_group",
        ] {
            assert!(default.contains(&call.to_owned()), "{call}");
        }
        for call in [
            "mount",
            "unshare",
            "setns",
            "keyctl",
            "kexec_load",
            "init_module",
            "reboot",
            "io_uring_setup",
            "clone",
            "clone3",
        ] {
            assert!(
                !default.contains(&call.to_owned()),
                "{call} needs a capability or never"
            );
        }
        let admin = allowed(&["CAP_SYS_ADMIN"]);
        assert!(admin.contains(&"mount".to_owned()) && admin.contains(&"clone".to_owned()));
        assert!(!admin.contains(&"keyctl".to_owned()), "keyrings stay out");
        assert!(allowed(&["CAP_SYS_TIME"]).contains(&"settimeofday".to_owned()));
        let mut unique = default.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), default.len(), "no name twice");
    }

    #[test]
    fn clone_without_namespace_flags_and_clone3_enosys_without_admin() {
        let p = profile(&[]);
        let rules = p["syscalls"].as_array().unwrap();
        let clone = rules
            .iter()
            .find(|r| r["names"][0] == "clone")
            .expect("a clone rule");
        assert_eq!(clone["args"][0]["value"], NAMESPACE_FLAGS);
        assert_eq!(clone["args"][0]["op"], "SCMP_CMP_MASKED_EQ");
        let clone3 = rules.iter().find(|r| r["names"][0] == "clone3").unwrap();
        assert_eq!(
            (clone3["action"].as_str(), clone3["errnoRet"].as_u64()),
            (Some("SCMP_ACT_ERRNO"), Some(38))
        );
        let admin = profile(&["CAP_SYS_ADMIN".to_owned()]);
        assert!(!admin["syscalls"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["names"][0] == "clone3" && r["action"] == "SCMP_ACT_ERRNO"));
    }
}
