//! The RuntimeDefault seccomp profile. Like containerd's and Docker's defaults it blocks
//! the system calls a container has no business making (kernel modules, kexec, mount and
//! namespace changes, ptrace of other processes, keyrings, clock and swap changes, BPF,
//! perf, userfaultfd), and lets a capability granted to the container re-allow the calls it
//! governs. Blocked calls fail with EPERM. The OCI runtime applies it.

use podrun_proto::cri;
use serde_json::{json, Value};

use crate::error::{Error, Result};

/// The Localhost profile a security context names, read and checked: a file that cannot
/// be read or is no seccomp profile is refused, never run without seccomp.
pub fn localhost(sc: Option<&cri::LinuxContainerSecurityContext>) -> Result<Option<Value>> {
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
    let value: Value = serde_json::from_slice(&bytes)
        .map_err(|e| Error::invalid(FIELD, format!("{path:?} is not JSON: {e}")))?;
    if !value["defaultAction"].is_string() {
        return Err(Error::invalid(
            FIELD,
            format!("{path:?} is not a seccomp profile: it has no defaultAction"),
        ));
    }
    Ok(Some(value))
}

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

/// clone(2) flags that make namespaces: without CAP_SYS_ADMIN a container may not use
/// them (an unprivileged user namespace would get around the unshare/setns block).
const NAMESPACE_FLAGS: &[u64] = &[
    0x0002_0000,
    0x0200_0000,
    0x0400_0000,
    0x0800_0000,
    0x1000_0000,
    0x2000_0000,
    0x4000_0000,
];

/// The profile for a container whose bounding set is `caps`.
pub fn runtime_default(caps: &[String]) -> Value {
    let has = |c: &str| caps.iter().any(|have| have == c);
    let names: Vec<&str> = BLOCKED
        .iter()
        .filter(|(_, cap)| cap.is_none_or(|c| !has(c)))
        .map(|(name, _)| *name)
        .collect();
    let mut syscalls = vec![json!({"names": names, "action": "SCMP_ACT_ERRNO", "errnoRet": 1})];
    if !has("CAP_SYS_ADMIN") {
        for flag in NAMESPACE_FLAGS {
            syscalls.push(json!({
                "names": ["clone"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1,
                "args": [{"index": 0, "value": flag, "valueTwo": flag, "op": "SCMP_CMP_MASKED_EQ"}],
            }));
        }
        // clone3 passes its flags in memory, out of seccomp's reach: ENOSYS makes libc fall
        // back to clone, which the rules above check (as Docker and containerd do).
        syscalls.push(json!({"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38}));
    }
    json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
        "syscalls": syscalls,
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
        let rules = |caps: &[&str]| {
            runtime_default(&caps.iter().map(|c| c.to_string()).collect::<Vec<_>>())["syscalls"]
                .as_array()
                .unwrap()
                .len()
        };
        assert_eq!(
            rules(&[]),
            1 + NAMESPACE_FLAGS.len() + 1,
            "clone with namespace flags and clone3 are refused"
        );
        assert_eq!(rules(&["CAP_SYS_ADMIN"]), 1);
    }
}
