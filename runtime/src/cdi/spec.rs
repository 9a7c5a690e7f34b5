//! A CDI spec file (JSON or YAML, `cdiVersion` up to 1.1.0): its types, read strictly (an
//! unknown field is an error, as in the reference implementation), and its checks: a known
//! version no older than the features it uses, a valid `kind` and device names, and edits
//! an OCI runtime can apply.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Spec {
    pub cdi_version: String,
    pub kind: String,
    pub annotations: Option<BTreeMap<String, String>>,
    pub devices: Vec<Device>,
    pub container_edits: Option<Edits>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Device {
    pub name: String,
    pub annotations: Option<BTreeMap<String, String>>,
    pub container_edits: Edits,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Edits {
    pub env: Option<Vec<String>>,
    pub device_nodes: Option<Vec<DeviceNode>>,
    pub hooks: Option<Vec<Hook>>,
    pub mounts: Option<Vec<Mount>>,
    /// Read so that a spec using it is accepted; injecting it is refused (see `mod.rs`).
    pub intel_rdt: Option<serde_json::Value>,
    pub additional_gids: Option<Vec<u32>>,
    pub net_devices: Option<Vec<NetDevice>>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct DeviceNode {
    pub path: String,
    pub host_path: Option<String>,
    #[serde(rename = "type")]
    pub kind: Option<String>,
    pub major: Option<i64>,
    pub minor: Option<i64>,
    pub file_mode: Option<u32>,
    pub permissions: Option<String>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Mount {
    pub host_path: String,
    pub container_path: String,
    pub options: Option<Vec<String>>,
    #[serde(rename = "type")]
    pub kind: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Hook {
    pub hook_name: String,
    pub path: String,
    pub args: Option<Vec<String>>,
    pub env: Option<Vec<String>>,
    pub timeout: Option<i64>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct NetDevice {
    pub host_interface_name: String,
    pub name: String,
}

/// The spec versions CDI defines, oldest first.
const VERSIONS: &[&str] = &[
    "0.1.0", "0.2.0", "0.3.0", "0.4.0", "0.5.0", "0.6.0", "0.7.0", "0.8.0", "1.0.0", "1.1.0",
];

/// Reads a spec file: `.json` or `.yaml` (JSON is YAML, so one parser reads both).
pub fn read(path: &Path) -> Result<Spec, String> {
    const MAX: u64 = 4 << 20;
    let size = std::fs::metadata(path).map_err(|e| e.to_string())?.len();
    if size > MAX {
        return Err(format!(
            "{size} bytes is more than the {MAX} a spec may have"
        ));
    }
    let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
    let spec: Spec = serde_yaml::from_str(&text).map_err(|e| e.to_string())?;
    spec.check()?;
    Ok(spec)
}

fn version_index(v: &str) -> Option<usize> {
    VERSIONS
        .iter()
        .position(|known| *known == v.strip_prefix('v').unwrap_or(v))
}

/// Vendor and class: a letter first, a letter or digit last, `_ - .` between.
fn vendor_or_class(s: &str) -> Result<(), String> {
    let ok_first = s.chars().next().is_some_and(|c| c.is_ascii_alphabetic());
    let ok_last = s.chars().last().is_some_and(|c| c.is_ascii_alphanumeric());
    let ok_middle = s
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c));
    match ok_first && ok_last && ok_middle {
        true => Ok(()),
        false => Err(format!(
            "{s:?} must start with a letter, end with a letter or digit, and hold only those and _ - ."
        )),
    }
}

/// A device name: a letter or digit first and last, `_ - . :` between.
pub fn device_name(s: &str) -> Result<(), String> {
    let ends = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric());
    let ok_middle = s
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "_-.:".contains(c));
    match ends(s.chars().next()) && ends(s.chars().last()) && ok_middle {
        true => Ok(()),
        false => Err(format!(
            "device name {s:?} must start and end with a letter or digit, and hold only those and _ - . :"
        )),
    }
}

/// `vendor/class=name` as (kind, name), checked.
pub fn parse_qualified(device: &str) -> Result<(String, String), String> {
    let (kind, name) = device
        .split_once('=')
        .ok_or_else(|| format!("{device:?} is not a qualified CDI name (vendor/class=name)"))?;
    let (vendor, class) = kind
        .split_once('/')
        .ok_or_else(|| format!("{device:?} has no vendor/class"))?;
    vendor_or_class(vendor)?;
    vendor_or_class(class)?;
    device_name(name)?;
    Ok((kind.to_owned(), name.to_owned()))
}

/// Whether an optional list has anything in it.
fn any<T>(list: &Option<Vec<T>>) -> bool {
    list.as_ref().is_some_and(|l| !l.is_empty())
}

impl Edits {
    fn is_empty(&self) -> bool {
        !(any(&self.env)
            || any(&self.device_nodes)
            || any(&self.hooks)
            || any(&self.mounts)
            || self.intel_rdt.is_some()
            || any(&self.additional_gids)
            || any(&self.net_devices))
    }

    /// The oldest spec version that has every field these edits use.
    fn min_version(&self) -> &'static str {
        let set = |s: &Option<String>| s.as_deref().is_some_and(|s| !s.is_empty());
        if any(&self.net_devices) {
            "1.1.0"
        } else if self.intel_rdt.is_some() || any(&self.additional_gids) {
            "0.7.0"
        } else if self
            .device_nodes
            .iter()
            .flatten()
            .any(|n| set(&n.host_path))
        {
            "0.5.0"
        } else if self.mounts.iter().flatten().any(|m| set(&m.kind)) {
            "0.4.0"
        } else {
            "0.3.0"
        }
    }

    fn check(&self) -> Result<(), String> {
        for e in self.env.iter().flatten() {
            if e.split_once('=').is_none_or(|(k, _)| k.is_empty()) {
                return Err(format!("env {e:?} is not KEY=VALUE"));
            }
        }
        for n in self.device_nodes.iter().flatten() {
            if !n.path.starts_with('/') {
                return Err(format!("device node path {:?} is not absolute", n.path));
            }
            if !matches!(n.kind.as_deref(), None | Some("" | "b" | "c" | "u" | "p")) {
                return Err(format!(
                    "device node {:?}: type must be b, c, u or p",
                    n.path
                ));
            }
            let p = n.permissions.as_deref().unwrap_or_default();
            if p != "none" && !p.chars().all(|c| "rwm".contains(c)) {
                return Err(format!(
                    "device node {:?}: permissions {p:?} is not of r, w, m",
                    n.path
                ));
            }
        }
        for h in self.hooks.iter().flatten() {
            if !crate::oci_edit::HOOK_PHASES.contains(&h.hook_name.as_str()) {
                return Err(format!("unknown hook name {:?}", h.hook_name));
            }
            if !h.path.starts_with('/') {
                return Err(format!("hook path {:?} is not absolute", h.path));
            }
        }
        for m in self.mounts.iter().flatten() {
            if m.host_path.is_empty() || !m.container_path.starts_with('/') {
                return Err(format!(
                    "mount {:?} -> {:?}: needs a hostPath and an absolute containerPath",
                    m.host_path, m.container_path
                ));
            }
        }
        for d in self.net_devices.iter().flatten() {
            if d.host_interface_name.is_empty() || d.name.is_empty() {
                return Err("netDevices need hostInterfaceName and name".into());
            }
        }
        Ok(())
    }
}

impl Spec {
    /// The spec's own checks, as the reference implementation makes them.
    pub fn check(&self) -> Result<(), String> {
        let declared = version_index(&self.cdi_version)
            .ok_or_else(|| format!("invalid version {:?}", self.cdi_version))?;
        let (vendor, class) = self
            .kind
            .split_once('/')
            .ok_or_else(|| format!("kind {:?} is not vendor/class", self.kind))?;
        vendor_or_class(vendor)?;
        vendor_or_class(class)?;
        if self.devices.is_empty() {
            return Err("invalid spec, no devices".into());
        }
        let mut needed = "0.3.0";
        let mut more = |v: &'static str| {
            if version_index(v) > version_index(needed) {
                needed = v;
            }
        };
        if self.annotations.as_ref().is_some_and(|a| !a.is_empty()) || class.contains('.') {
            more("0.6.0");
        }
        if let Some(edits) = &self.container_edits {
            edits.check()?;
            more(edits.min_version());
        }
        let mut names = std::collections::HashSet::new();
        for d in &self.devices {
            device_name(&d.name)?;
            if !names.insert(&d.name) {
                return Err(format!("invalid spec, multiple device {:?}", d.name));
            }
            if d.container_edits.is_empty() {
                return Err(format!("invalid device {:?}, empty device edits", d.name));
            }
            d.container_edits.check()?;
            more(d.container_edits.min_version());
            if d.annotations.as_ref().is_some_and(|a| !a.is_empty()) {
                more("0.6.0");
            }
            if d.name.starts_with(|c: char| c.is_ascii_digit()) {
                more("0.5.0");
            }
        }
        if version_index(needed) > Some(declared) {
            return Err(format!("the spec version must be at least v{needed}"));
        }
        Ok(())
    }
}
