//! The RuntimeDefault seccomp profile. Like containerd's and Docker's defaults it blocks
//! the system calls a container has no business making (kernel modules, kexec, mount and
//! namespace changes, ptrace of other processes, keyrings, clock and swap changes, BPF,
//! perf, userfaultfd), and lets a capability granted to the container re-allow the calls it
//! governs. Blocked calls fail with EPERM. The OCI runtime applies it.

use serde_json::{json, Value};

/// Blocked calls, each with the capability that, when granted, allows it again.
const BLOCKED: &[(&str, Option<&str>)] = &[
    ("acct", Some("CAP_SYS_PACCT")),
    ("add_key", None),
    ("bpf", Some("CAP_SYS_ADMIN")),
    ("clock_adjtime", Some("CAP_SYS_TIME")),
    ("clock_settime", Some("CAP_SYS_TIME")),
    ("create_module", Some("CAP_SYS_MODULE")),
    ("delete_module", Some("CAP_SYS_MODULE")),
    ("finit_module", Some("CAP_SYS_MODULE")),
    ("fsconfig", Some("CAP_SYS_ADMIN")),
    ("fsmount", Some("CAP_SYS_ADMIN")),
    ("fsopen", Some("CAP_SYS_ADMIN")),
    ("fspick", Some("CAP_SYS_ADMIN")),
    ("get_kernel_syms", Some("CAP_SYS_MODULE")),
    ("init_module", Some("CAP_SYS_MODULE")),
    ("ioperm", Some("CAP_SYS_RAWIO")),
    ("iopl", Some("CAP_SYS_RAWIO")),
    ("kcmp", Some("CAP_SYS_PTRACE")),
    ("kexec_file_load", Some("CAP_SYS_BOOT")),
    ("kexec_load", Some("CAP_SYS_BOOT")),
    ("keyctl", None),
    ("lookup_dcookie", Some("CAP_SYS_ADMIN")),
    ("mount", Some("CAP_SYS_ADMIN")),
    ("mount_setattr", Some("CAP_SYS_ADMIN")),
    ("move_mount", Some("CAP_SYS_ADMIN")),
    ("name_to_handle_at", Some("CAP_SYS_ADMIN")),
    ("nfsservctl", None),
    ("open_by_handle_at", Some("CAP_DAC_READ_SEARCH")),
    ("open_tree", Some("CAP_SYS_ADMIN")),
    ("perf_event_open", Some("CAP_PERFMON")),
    ("pivot_root", Some("CAP_SYS_ADMIN")),
    ("process_vm_readv", Some("CAP_SYS_PTRACE")),
    ("process_vm_writev", Some("CAP_SYS_PTRACE")),
    ("ptrace", Some("CAP_SYS_PTRACE")),
    ("query_module", Some("CAP_SYS_MODULE")),
    ("quotactl", Some("CAP_SYS_ADMIN")),
    ("reboot", Some("CAP_SYS_BOOT")),
    ("request_key", None),
    ("setns", Some("CAP_SYS_ADMIN")),
    ("settimeofday", Some("CAP_SYS_TIME")),
    ("stime", Some("CAP_SYS_TIME")),
    ("swapoff", Some("CAP_SYS_ADMIN")),
    ("swapon", Some("CAP_SYS_ADMIN")),
    ("sysfs", None),
    ("_sysctl", None),
    ("umount", Some("CAP_SYS_ADMIN")),
    ("umount2", Some("CAP_SYS_ADMIN")),
    ("unshare", Some("CAP_SYS_ADMIN")),
    ("uselib", None),
    ("userfaultfd", Some("CAP_SYS_PTRACE")),
    ("ustat", None),
    ("vm86", None),
    ("vm86old", None),
];

/// The profile for a container whose bounding set is `caps`.
pub fn runtime_default(caps: &[String]) -> Value {
    let names: Vec<&str> = BLOCKED
        .iter()
        .filter(|(_, cap)| cap.is_none_or(|c| !caps.iter().any(|have| have == c)))
        .map(|(name, _)| *name)
        .collect();
    json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
        "syscalls": [{"names": names, "action": "SCMP_ACT_ERRNO", "errnoRet": 1}],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn granted_capabilities_reallow_their_calls() {
        let blocked = |caps: &[&str]| {
            let caps: Vec<String> = caps.iter().map(|c| c.to_string()).collect();
            let p = runtime_default(&caps);
            p["syscalls"][0]["names"]
                .as_array()
                .unwrap()
                .iter()
                .map(|n| n.as_str().unwrap().to_owned())
                .collect::<Vec<_>>()
        };
        let default = blocked(&[]);
        assert!(default.contains(&"mount".to_owned()) && default.contains(&"keyctl".to_owned()));
        let admin = blocked(&["CAP_SYS_ADMIN"]);
        assert!(!admin.contains(&"mount".to_owned()) && admin.contains(&"keyctl".to_owned()));
        assert!(!blocked(&["CAP_SYS_PTRACE"]).contains(&"ptrace".to_owned()));
    }
}
