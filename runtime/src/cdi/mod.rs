//! CDI, the Container Device Interface: how GPUs and other devices reach containers. Vendors
//! describe devices in spec files (`cdi-spec-dir`, by default /etc/cdi then /var/run/cdi; a
//! later dir's device wins, two of one name in the same dir cancel each other); a container
//! asks for them by qualified name (`vendor.com/class=name`) in `CDI_devices` or in
//! `cdi.k8s.io/*` annotations. Their edits (device nodes with their cgroup rules, mounts,
//! env, hooks, groups, network devices) are applied to the container's OCI spec, all of
//! them or, when one device cannot be resolved, none.
//!
//! The spec dirs are read again on each CreateContainer that asks for a device, so a spec
//! a device plugin writes is seen at once.

mod apply;
pub mod spec;

use std::collections::{BTreeMap, HashMap};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ::oci_spec::runtime as oci;
use podrun_proto::cri;

pub use apply::apply;
use spec::{DeviceNode, Edits, Spec};

use crate::error::{Error, Result};

const ANNOTATION_PREFIX: &str = "cdi.k8s.io/";

/// The devices a container asks for: `CDI_devices`, then the `cdi.k8s.io/*` annotations
/// (comma-separated names, by key), each once. A name that is not qualified is refused.
pub fn requested(config: &cri::ContainerConfig) -> Result<Vec<String>> {
    let mut names: Vec<String> = Vec::new();
    for d in &config.cdi_devices {
        spec::parse_qualified(&d.name).map_err(|e| Error::invalid("config.CDI_devices", e))?;
        names.push(d.name.clone());
    }
    let annotations: BTreeMap<&String, &String> = config.annotations.iter().collect();
    for (key, value) in annotations {
        if !key.starts_with(ANNOTATION_PREFIX) {
            continue;
        }
        for name in value.split(',') {
            spec::parse_qualified(name)
                .map_err(|e| Error::invalid("config.annotations", format!("{key}: {e}")))?;
            names.push(name.to_owned());
        }
    }
    let mut seen = std::collections::HashSet::new();
    names.retain(|n| seen.insert(n.clone()));
    Ok(names)
}

struct Entry {
    spec: Arc<Spec>,
    device: usize,
    priority: usize,
    file: PathBuf,
}

/// Every device of the spec files in the dirs, by qualified name.
pub struct Registry {
    devices: HashMap<String, Entry>,
    /// Spec files that could not be read, and devices defined twice in one dir.
    errors: Vec<String>,
}

/// One requested device's edits, ready to apply: its spec's common edits (given with the
/// first device of that spec only) and its own, device nodes completed from the host.
#[derive(Debug, Clone, Default)]
pub struct Resolved {
    pub edits: Vec<Edits>,
    pub devices: Vec<(oci::LinuxDevice, Option<oci::LinuxDeviceCgroup>)>,
}

impl Registry {
    pub fn load(dirs: &[PathBuf]) -> Registry {
        let mut registry = Registry {
            devices: HashMap::new(),
            errors: Vec::new(),
        };
        // Devices of one name twice in one dir: dropped until a later dir defines it.
        let mut conflicts: HashMap<String, usize> = HashMap::new();
        for (priority, dir) in dirs.iter().enumerate() {
            for file in spec_files(dir) {
                let spec = match spec::read(&file) {
                    Ok(spec) => Arc::new(spec),
                    Err(e) => {
                        registry.errors.push(format!("{}: {e}", file.display()));
                        continue;
                    }
                };
                for (device, d) in spec.devices.iter().enumerate() {
                    let name = format!("{}={}", spec.kind, d.name);
                    if conflicts.get(&name) == Some(&priority) {
                        continue;
                    }
                    if let Some(old) = registry
                        .devices
                        .get(&name)
                        .filter(|o| o.priority == priority)
                    {
                        registry.errors.push(format!(
                            "conflicting device {name:?} (specs {:?}, {:?})",
                            old.file, file
                        ));
                        registry.devices.remove(&name);
                        conflicts.insert(name, priority);
                        continue;
                    }
                    conflicts.remove(&name);
                    let entry = Entry {
                        spec: spec.clone(),
                        device,
                        priority,
                        file: file.clone(),
                    };
                    registry.devices.insert(name, entry);
                }
            }
        }
        registry
    }

    /// The edits of `names`, in order; all of them, or InvalidArgument naming every device
    /// that cannot be resolved.
    pub fn resolve(&self, names: &[String]) -> Result<Vec<Resolved>> {
        let missing: Vec<&str> = names
            .iter()
            .filter(|n| !self.devices.contains_key(*n))
            .map(String::as_str)
            .collect();
        if !missing.is_empty() {
            let mut reason = format!("unresolvable CDI devices {}", missing.join(", "));
            if !self.errors.is_empty() {
                reason += &format!(" (spec errors: {})", self.errors.join("; "));
            }
            return Err(Error::invalid("config.CDI_devices", reason));
        }
        let mut specs_seen: Vec<*const Spec> = Vec::new();
        let mut out = Vec::new();
        for name in names {
            let entry = &self.devices[name];
            let mut edits = Vec::new();
            if !specs_seen.contains(&Arc::as_ptr(&entry.spec)) {
                specs_seen.push(Arc::as_ptr(&entry.spec));
                edits.extend(entry.spec.container_edits.clone());
            }
            edits.push(entry.spec.devices[entry.device].container_edits.clone());
            if edits.iter().any(|e| e.intel_rdt.is_some()) {
                return Err(Error::FailedPrecondition(format!(
                    "CDI device {name}: intelRdt edits are not supported by podrun"
                )));
            }
            let nodes = edits.iter().flat_map(|e| e.device_nodes.iter().flatten());
            let devices = nodes
                .map(|n| {
                    complete(n)
                        .map_err(|e| Error::FailedPrecondition(format!("CDI device {name}: {e}")))
                })
                .collect::<Result<_>>()?;
            out.push(Resolved { edits, devices });
        }
        Ok(out)
    }
}

/// The `.json` and `.yaml` files directly in `dir`, by name; none when it does not exist.
fn spec_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            let ext = p.extension().and_then(|e| e.to_str());
            matches!(ext, Some("json" | "yaml")) && p.is_file()
        })
        .collect();
    files.sort();
    files
}

/// A device node as the OCI runtime makes it, its type, numbers and mode taken from the
/// host's node where the spec leaves them out, and the cgroup rule that lets the container
/// use it (block and character devices only).
fn complete(
    n: &DeviceNode,
) -> std::result::Result<(oci::LinuxDevice, Option<oci::LinuxDeviceCgroup>), String> {
    let host = n
        .host_path
        .as_deref()
        .filter(|h| !h.is_empty())
        .unwrap_or(&n.path);
    let mut kind = n.kind.clone().unwrap_or_default();
    let (mut major, mut minor, mut mode) =
        (n.major.unwrap_or(0), n.minor.unwrap_or(0), n.file_mode);
    let minimal = !kind.is_empty() && (major != 0 || kind == "p");
    match std::fs::symlink_metadata(host) {
        Err(e) if !minimal => return Err(format!("failed to stat CDI host device {host:?}: {e}")),
        Err(_) => {}
        Ok(meta) => {
            mode = mode.or(Some(meta.mode() & 0o7777));
            if !minimal {
                let t = meta.file_type();
                let on_host = match () {
                    _ if t.is_block_device() => "b",
                    _ if t.is_char_device() => "c",
                    _ if t.is_fifo() => "p",
                    _ => return Err(format!("{host:?} is not a device node")),
                };
                if !kind.is_empty() && kind != on_host {
                    return Err(format!(
                        "{:?} ({host:?}): host type mismatch ({kind}, {on_host})",
                        n.path
                    ));
                }
                kind = on_host.to_owned();
                if kind != "p" && major == 0 {
                    major = nix::sys::stat::major(meta.rdev()) as i64;
                    minor = nix::sys::stat::minor(meta.rdev()) as i64;
                }
            }
        }
    }
    let typ: oci::LinuxDeviceType = kind.parse().map_err(|_| format!("device type {kind:?}"))?;
    let mut device = oci::LinuxDevice::default();
    device
        .set_path(PathBuf::from(&n.path))
        .set_typ(typ)
        .set_major(major)
        .set_minor(minor)
        .set_file_mode(mode)
        .set_uid(n.uid)
        .set_gid(n.gid);
    let access = match n.permissions.as_deref().unwrap_or_default() {
        "" => "rwm",
        "none" => "",
        p => p,
    };
    let rule = crate::oci_edit::allow_rule(typ, major, minor, access);
    Ok((device, rule))
}

#[cfg(test)]
mod tests;
