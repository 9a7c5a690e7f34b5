//! AppArmor and SELinux: what a security context asks for, checked against what the host's
//! kernel enforces. A profile or label the host cannot apply is refused (FailedPrecondition
//! naming the field), never dropped: a container that asked to be confined does not run
//! unconfined without a word. Privileged containers get neither, as with containerd.
//!
//! The decisions are pure functions of the request and [`Host`]; detecting the host and
//! loading podrun's default AppArmor profile happen in [`Host::detect`] and
//! [`load_default_profile`].

use std::path::Path;

use podrun_proto::cri;
use podrun_proto::cri::security_profile::ProfileType;

use crate::error::{Error, Result};

/// The AppArmor profile podrun applies for RuntimeDefault.
pub const DEFAULT_PROFILE: &str = "podrun-default";

/// What the host's kernel enforces.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Host {
    pub apparmor: bool,
    pub selinux: bool,
}

const APPARMOR_ENABLED: &str = "/sys/module/apparmor/parameters/enabled";
const APPARMOR_PROFILES: &str = "/sys/kernel/security/apparmor/profiles";
const SELINUX_FS: &str = "/sys/fs/selinux/enforce";

impl Host {
    /// AppArmor when the module says it is enabled and securityfs shows it (as runc
    /// checks); SELinux when selinuxfs is mounted (as go-selinux checks).
    pub fn detect() -> Host {
        let enabled = std::fs::read_to_string(APPARMOR_ENABLED).is_ok_and(|s| s.starts_with('Y'));
        Host {
            apparmor: enabled && Path::new("/sys/kernel/security/apparmor").is_dir(),
            selinux: Path::new(SELINUX_FS).exists(),
        }
    }
}

/// The AppArmor confinement a container asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AppArmor {
    /// None asked, Unconfined, or a privileged container.
    Unconfined,
    RuntimeDefault,
    /// A profile the host has loaded, by name.
    Localhost(String),
}

/// The profile the security context names: the `apparmor` field, else the deprecated
/// `apparmor_profile` string (`runtime/default`, `unconfined`, `localhost/NAME`).
pub fn apparmor_requested(
    sc: Option<&cri::LinuxContainerSecurityContext>,
    field: &'static str,
) -> Result<AppArmor> {
    let Some(sc) = sc.filter(|s| !s.privileged) else {
        return Ok(AppArmor::Unconfined);
    };
    let strip = |name: &str| name.strip_prefix("localhost/").unwrap_or(name).to_owned();
    if let Some(p) = &sc.apparmor {
        return match ProfileType::try_from(p.profile_type) {
            Ok(ProfileType::Localhost) if !p.localhost_ref.is_empty() => {
                Ok(AppArmor::Localhost(strip(&p.localhost_ref)))
            }
            Ok(ProfileType::Localhost) => {
                Err(Error::invalid(field, "Localhost needs localhost_ref"))
            }
            _ if !p.localhost_ref.is_empty() => Err(Error::invalid(
                field,
                "localhost_ref is only for profile_type Localhost",
            )),
            Ok(ProfileType::RuntimeDefault) => Ok(AppArmor::RuntimeDefault),
            Ok(ProfileType::Unconfined) => Ok(AppArmor::Unconfined),
            Err(_) => Err(Error::invalid(
                field,
                format!("unknown profile_type {}", p.profile_type),
            )),
        };
    }
    match deprecated_profile(sc) {
        "" | "unconfined" => Ok(AppArmor::Unconfined),
        "runtime/default" | "docker/default" => Ok(AppArmor::RuntimeDefault),
        name if name.starts_with("localhost/") && name.len() > "localhost/".len() => {
            Ok(AppArmor::Localhost(strip(name)))
        }
        other => Err(Error::invalid(
            "config.linux.security_context.apparmor_profile",
            format!("{other:?} is not runtime/default, unconfined or localhost/NAME"),
        )),
    }
}

/// The deprecated string field: kubelets before 1.30 send only it, so it is still read.
#[allow(deprecated)]
fn deprecated_profile(sc: &cri::LinuxContainerSecurityContext) -> &str {
    &sc.apparmor_profile
}

/// The OCI `process.apparmorProfile` for a request on this host; `loaded` lists the
/// profiles the kernel holds (securityfs' `profiles` file).
pub fn apparmor_profile(
    wanted: &AppArmor,
    host: &Host,
    loaded: &str,
    field: &'static str,
) -> Result<Option<String>> {
    let name = match wanted {
        AppArmor::Unconfined => return Ok(None),
        AppArmor::RuntimeDefault => DEFAULT_PROFILE,
        AppArmor::Localhost(name) => name.as_str(),
    };
    if !host.apparmor {
        return Err(Error::FailedPrecondition(format!(
            "{field}: AppArmor profile {name:?} asked for, but AppArmor is not enabled on this \
             host ({APPARMOR_ENABLED} is not Y or securityfs shows no apparmor)"
        )));
    }
    let is_loaded = loaded.lines().any(|l| l.starts_with(&format!("{name} (")));
    if !is_loaded && *wanted != AppArmor::RuntimeDefault {
        return Err(Error::invalid(
            field,
            format!("AppArmor profile {name:?} is not loaded on this host"),
        ));
    }
    Ok(Some(name.to_owned()))
}

/// The profiles the kernel holds, or "" where it shows none.
pub fn loaded_profiles() -> String {
    std::fs::read_to_string(APPARMOR_PROFILES).unwrap_or_default()
}

/// podrun's RuntimeDefault profile, as containerd's and Docker's default: the container may
/// do what its capabilities allow, but not write /proc and /sys or mount.
const DEFAULT_PROFILE_TEXT: &str = r#"#include <tunables/global>
profile podrun-default flags=(attach_disconnected,mediate_deleted) {
  #include <abstractions/base>
  network,
  capability,
  file,
  umount,
  signal (receive) peer=unconfined,
  signal (send,receive) peer=podrun-default,
  deny @{PROC}/* w,
  deny @{PROC}/{[^1-9],[^1-9][^0-9],[^1-9s][^0-9y][^0-9s],[^1-9][^0-9][^0-9][^0-9/]*}/** w,
  deny @{PROC}/sys/[^k]** w,
  deny @{PROC}/sys/kernel/{?,??,[^s][^h][^m]**} w,
  deny @{PROC}/sysrq-trigger rwklx,
  deny @{PROC}/kcore rwklx,
  deny mount,
  deny /sys/[^f]*/** wklx,
  deny /sys/f[^s]*/** wklx,
  deny /sys/fs/[^c]*/** wklx,
  deny /sys/fs/c[^g]*/** wklx,
  deny /sys/fs/cg[^r]*/** wklx,
  deny /sys/firmware/** rwklx,
  deny /sys/kernel/security/** rwklx,
  ptrace (trace,read,tracedby,readby) peer=podrun-default,
}
"#;

/// Loads podrun's default profile into the kernel unless it is there already.
pub fn load_default_profile() -> Result<()> {
    // Once loaded it stays loaded: the kernel's list is not read on every CreateContainer.
    static LOADED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if LOADED.load(std::sync::atomic::Ordering::Relaxed) {
        return Ok(());
    }
    if loaded_profiles()
        .lines()
        .any(|l| l.starts_with(&format!("{DEFAULT_PROFILE} (")))
    {
        LOADED.store(true, std::sync::atomic::Ordering::Relaxed);
        return Ok(());
    }
    use std::io::Write;
    let mut parser = std::process::Command::new("apparmor_parser")
        .args(["-Kr"])
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| {
            Error::FailedPrecondition(format!(
                "loading AppArmor profile {DEFAULT_PROFILE}: apparmor_parser: {e}"
            ))
        })?;
    if let Some(mut stdin) = parser.stdin.take() {
        let _ = stdin.write_all(DEFAULT_PROFILE_TEXT.as_bytes());
    }
    let out = parser
        .wait_with_output()
        .map_err(|e| Error::Internal(format!("apparmor_parser: {e}")))?;
    match out.status.success() {
        true => {
            LOADED.store(true, std::sync::atomic::Ordering::Relaxed);
            Ok(())
        }
        false => Err(Error::FailedPrecondition(format!(
            "loading AppArmor profile {DEFAULT_PROFILE}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))),
    }
}

/// The OCI `process.selinuxLabel` for SELinux options on this host: none when none are
/// given; refused when the host does not enforce SELinux, or when the label is partial
/// (podrun does not guess the rest from the host's policy).
pub fn selinux_label(
    options: Option<&cri::SeLinuxOption>,
    host: &Host,
    field: &'static str,
) -> Result<Option<String>> {
    let Some(o) = options else {
        return Ok(None);
    };
    let parts = [&o.user, &o.role, &o.r#type, &o.level];
    if parts.iter().all(|p| p.is_empty()) {
        return Ok(None);
    }
    if !host.selinux {
        return Err(Error::FailedPrecondition(format!(
            "{field}: an SELinux label asked for, but SELinux is not enabled on this host \
             ({SELINUX_FS} does not exist)"
        )));
    }
    if parts.iter().any(|p| p.is_empty()) {
        return Err(Error::invalid(
            field,
            "give user, role, type and level: podrun applies a whole label",
        ));
    }
    let [user, role, kind, level] = parts;
    Ok(Some(format!("{user}:{role}:{kind}:{level}")))
}

/// A pod's own AppArmor profile or SELinux label on a host that cannot apply it is refused
/// at RunPodSandbox. (Where the host can, kubelet gives each container the pod's settings,
/// and they are applied there; the pause process itself is not confined.)
pub fn check_pod(sc: Option<&cri::LinuxSandboxSecurityContext>, host: &Host) -> Result<()> {
    let Some(sc) = sc.filter(|s| !s.privileged) else {
        return Ok(());
    };
    let confined = sc.apparmor.as_ref().is_some_and(|p| {
        p.profile_type != ProfileType::Unconfined as i32 || !p.localhost_ref.is_empty()
    });
    if confined && !host.apparmor {
        let container = cri::LinuxContainerSecurityContext {
            apparmor: sc.apparmor.clone(),
            ..Default::default()
        };
        let wanted = apparmor_requested(Some(&container), POD_APPARMOR)?;
        apparmor_profile(&wanted, host, "", POD_APPARMOR)?;
    }
    const SELINUX: &str = "config.linux.security_context.selinux_options";
    match host.selinux {
        true => Ok(()),
        false => selinux_label(sc.selinux_options.as_ref(), host, SELINUX).map(drop),
    }
}

const POD_APPARMOR: &str = "config.linux.security_context.apparmor";

#[cfg(test)]
mod tests {
    use super::*;

    const FIELD: &str = "config.linux.security_context.apparmor";

    fn context(
        profile: Option<(ProfileType, &str)>,
        old: &str,
    ) -> cri::LinuxContainerSecurityContext {
        cri::LinuxContainerSecurityContext {
            apparmor: profile.map(|(t, r)| cri::SecurityProfile {
                profile_type: t as i32,
                localhost_ref: r.into(),
            }),
            ..with_deprecated(old)
        }
    }

    #[allow(deprecated)]
    fn with_deprecated(profile: &str) -> cri::LinuxContainerSecurityContext {
        cri::LinuxContainerSecurityContext {
            apparmor_profile: profile.into(),
            ..Default::default()
        }
    }

    #[test]
    fn apparmor_requests_in_both_spellings() {
        let wanted = |p, old| apparmor_requested(Some(&context(p, old)), FIELD);
        assert_eq!(wanted(None, "").unwrap(), AppArmor::Unconfined);
        assert_eq!(
            wanted(None, "runtime/default").unwrap(),
            AppArmor::RuntimeDefault
        );
        assert_eq!(
            wanted(None, "localhost/deny-write").unwrap(),
            AppArmor::Localhost("deny-write".into())
        );
        assert!(wanted(None, "bogus").is_err());
        // The field wins over the deprecated string; critest puts "localhost/" in the ref.
        let field = Some((ProfileType::Localhost, "localhost/audit"));
        assert_eq!(
            wanted(field, "unconfined").unwrap(),
            AppArmor::Localhost("audit".into())
        );
        assert!(wanted(Some((ProfileType::RuntimeDefault, "x")), "").is_err());
        assert!(wanted(Some((ProfileType::Localhost, "")), "").is_err());
        let privileged = cri::LinuxContainerSecurityContext {
            privileged: true,
            ..context(Some((ProfileType::RuntimeDefault, "")), "")
        };
        assert_eq!(
            apparmor_requested(Some(&privileged), FIELD).unwrap(),
            AppArmor::Unconfined
        );
    }

    #[test]
    fn a_profile_the_host_cannot_apply_is_refused_never_dropped() {
        let none = Host::default();
        let with = Host {
            apparmor: true,
            selinux: true,
        };
        let loaded = "podrun-default (enforce)\ndeny-write (enforce)\n";
        let profile = |w: AppArmor, h: &Host| apparmor_profile(&w, h, loaded, FIELD);
        assert_eq!(profile(AppArmor::Unconfined, &none).unwrap(), None);
        for w in [
            AppArmor::RuntimeDefault,
            AppArmor::Localhost("deny-write".into()),
        ] {
            match profile(w.clone(), &none) {
                Err(Error::FailedPrecondition(m)) => assert!(m.contains(FIELD), "{m}"),
                other => panic!("{w:?} on a host without AppArmor: {other:?}"),
            }
        }
        assert_eq!(
            profile(AppArmor::RuntimeDefault, &with).unwrap().as_deref(),
            Some(DEFAULT_PROFILE)
        );
        assert_eq!(
            profile(AppArmor::Localhost("deny-write".into()), &with)
                .unwrap()
                .as_deref(),
            Some("deny-write")
        );
        assert!(matches!(
            profile(AppArmor::Localhost("missing".into()), &with),
            Err(Error::InvalidArgument { .. })
        ));

        let label = |user: &str| cri::SeLinuxOption {
            user: user.into(),
            role: "system_r".into(),
            r#type: "container_t".into(),
            level: "s0:c1,c2".into(),
        };
        let f = "config.linux.security_context.selinux_options";
        assert_eq!(selinux_label(None, &none, f).unwrap(), None);
        assert_eq!(
            selinux_label(Some(&Default::default()), &none, f).unwrap(),
            None
        );
        assert!(matches!(
            selinux_label(Some(&label("system_u")), &none, f),
            Err(Error::FailedPrecondition(m)) if m.contains(f)
        ));
        assert_eq!(
            selinux_label(Some(&label("system_u")), &with, f)
                .unwrap()
                .as_deref(),
            Some("system_u:system_r:container_t:s0:c1,c2")
        );
        assert!(selinux_label(Some(&label("")), &with, f).is_err());
    }
}
