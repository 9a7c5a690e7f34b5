//! Capabilities: containerd's default set, the names Linux defines (the `caps` crate's
//! list), and the bounding, effective and permitted sets a security context gives.

use ::oci_spec::runtime as oci;
use podrun_proto::cri;

use crate::error::{Error, Result};

/// containerd's default capabilities for unprivileged containers.
pub const DEFAULT_CAPS: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

/// Every capability Linux defines (the `caps` crate's list), in the order of their numbers.
/// Privileged containers and `ALL` get those of them that podrund holds.
pub fn all_caps() -> Vec<String> {
    names(caps::all())
}

/// Capability names, in the order of their numbers.
pub fn names(set: caps::CapsHashSet) -> Vec<String> {
    let mut caps: Vec<caps::Capability> = set.into_iter().collect();
    caps.sort_by_key(|c| c.index());
    caps.iter().map(|c| c.to_string()).collect()
}

/// A capability as the CRI names it (`NET_ADMIN` or `CAP_NET_ADMIN`, any case) as Linux
/// names it; None for a name Linux does not define.
pub fn capability(name: &str) -> Option<String> {
    let name = name.to_uppercase();
    let name = match name.starts_with("CAP_") {
        true => name,
        false => format!("CAP_{name}"),
    };
    name.parse::<caps::Capability>().ok().map(|c| c.to_string())
}

/// Capability names (as [`capability`] gives them) as an OCI capability set.
pub(crate) fn cap_set(names: &[String]) -> Result<oci::Capabilities> {
    let one = |name: &String| {
        let bare = name.strip_prefix("CAP_").unwrap_or(name);
        bare.parse::<oci::Capability>()
            .map_err(|_| Error::Internal(format!("the OCI types do not know {name}")))
    };
    names.iter().map(one).collect()
}

/// The bounding set a security context gives, in the order of containerd's rules.
pub(crate) fn bounding(
    sc: Option<&cri::LinuxContainerSecurityContext>,
    own: &[String],
) -> Vec<String> {
    let privileged = sc.is_some_and(|s| s.privileged);
    let mut caps: Vec<String> = match privileged {
        true => own.to_vec(),
        false => DEFAULT_CAPS.iter().map(|c| c.to_string()).collect(),
    };
    let Some(c) = sc.and_then(|s| s.capabilities.as_ref()) else {
        return caps;
    };
    // containerd's order: add ALL, drop ALL, then the single adds, then the single drops.
    // Names were checked at CreateContainer (`capability`); an unknown one is left out.
    let names_all = |list: &[String]| list.iter().any(|a| a.eq_ignore_ascii_case("ALL"));
    if names_all(&c.add_capabilities) {
        caps = own.to_vec();
    }
    if names_all(&c.drop_capabilities) {
        caps.clear();
    }
    for add in c.add_capabilities.iter().filter_map(|c| capability(c)) {
        if !caps.contains(&add) {
            caps.push(add);
        }
    }
    let dropped: Vec<String> = c
        .drop_capabilities
        .iter()
        .filter_map(|c| capability(c))
        .collect();
    caps.retain(|c| !dropped.contains(c));
    caps
}

/// Like containerd: a non-root user keeps the bounding set but starts without effective
/// and permitted capabilities.
pub(crate) fn capabilities(bounding: &[String], uid: u32) -> Result<oci::LinuxCapabilities> {
    let effective = match uid {
        0 => cap_set(bounding)?,
        _ => oci::Capabilities::new(),
    };
    super::built(
        oci::LinuxCapabilitiesBuilder::default()
            .bounding(cap_set(bounding)?)
            .effective(effective.clone())
            .permitted(effective)
            .inheritable(oci::Capabilities::new())
            .ambient(oci::Capabilities::new())
            .build(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(v: &serde_json::Value) -> Vec<String> {
        let names = v.as_array().into_iter().flatten();
        names
            .filter_map(|s| s.as_str().map(str::to_owned))
            .collect()
    }

    #[test]
    fn capabilities_add_drop_all_privileged_and_non_root() {
        let sc =
            |add: &[&str], drop: &[&str], privileged: bool| cri::LinuxContainerSecurityContext {
                capabilities: Some(cri::Capability {
                    add_capabilities: add.iter().map(|s| s.to_string()).collect(),
                    drop_capabilities: drop.iter().map(|s| s.to_string()).collect(),
                    ..Default::default()
                }),
                privileged,
                ..Default::default()
            };
        let all = &all_caps();
        assert_eq!(
            all.len(),
            41,
            "Linux 5.9's capabilities, CAP_CHECKPOINT_RESTORE last"
        );
        assert_eq!(all[0], "CAP_CHOWN");
        assert_eq!(all[40], "CAP_CHECKPOINT_RESTORE");
        for c in DEFAULT_CAPS {
            assert_eq!(
                capability(c).as_deref(),
                Some(*c),
                "containerd's default {c}"
            );
        }
        assert_eq!(capability("net_admin").as_deref(), Some("CAP_NET_ADMIN"));
        assert_eq!(capability("CAP_NET_ADMINN"), None);
        let bounding_of =
            |c: cri::LinuxContainerSecurityContext, own: &[String]| bounding(Some(&c), own);
        let caps = bounding_of(sc(&["NET_ADMIN"], &["CAP_KILL"], false), all);
        assert!(
            caps.contains(&"CAP_NET_ADMIN".to_owned()) && !caps.contains(&"CAP_KILL".to_owned())
        );
        assert_eq!(bounding_of(sc(&[], &["ALL"], false), all).len(), 0);
        assert_eq!(bounding_of(sc(&["ALL"], &[], false), all).len(), all.len());
        assert_eq!(bounding_of(sc(&[], &[], true), all).len(), all.len());
        // On a host whose own set lacks a capability, ALL and privileged mean what it holds.
        let held: Vec<String> = all
            .iter()
            .filter(|c| *c != "CAP_SYS_RESOURCE")
            .cloned()
            .collect();
        for c in [sc(&["ALL"], &[], false), sc(&[], &[], true)] {
            let caps = bounding_of(c, &held);
            assert_eq!(caps.len(), all.len() - 1);
            assert!(!caps.contains(&"CAP_SYS_RESOURCE".to_owned()));
        }
        // Every capability Linux defines is one the OCI types know, so none is lost on the way.
        let set = serde_json::to_value(capabilities(all, 0).unwrap()).unwrap();
        assert_eq!(strings(&set["bounding"]).len(), all.len());
        let non_root =
            serde_json::to_value(capabilities(&bounding(None, all), 1000).unwrap()).unwrap();
        assert_eq!(strings(&non_root["bounding"]).len(), DEFAULT_CAPS.len());
        assert!(strings(&non_root["effective"]).is_empty());
    }
}
