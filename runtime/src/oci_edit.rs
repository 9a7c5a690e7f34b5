//! Edits to a built OCI spec that CDI and NRI both make: an env variable by name, the mounts
//! at a destination, a device node by its path with its device-cgroup rule, a hook into its
//! phase. (`container::oci_spec` builds the spec; these change it afterwards.)

use std::path::Path;

use ::oci_spec::runtime as oci;

use crate::error::{Error, Result};

pub fn process(spec: &mut oci::Spec) -> Result<&mut oci::Process> {
    let missing = || Error::Internal("the OCI spec has no process to edit".into());
    spec.process_mut().as_mut().ok_or_else(missing)
}

pub fn linux(spec: &mut oci::Spec) -> Result<&mut oci::Linux> {
    let missing = || Error::Internal("the OCI spec has no linux object to edit".into());
    spec.linux_mut().as_mut().ok_or_else(missing)
}

/// Sets `key` to `value`, in place when it is there already; None removes it.
pub fn set_env(process: &mut oci::Process, key: &str, value: Option<&str>) {
    let mut env = process.env().clone().unwrap_or_default();
    let named = |e: &String| e.split('=').next() == Some(key);
    match (value, env.iter().position(named)) {
        (Some(v), Some(i)) => env[i] = format!("{key}={v}"),
        (Some(v), None) => env.push(format!("{key}={v}")),
        (None, _) => env.retain(|e| !named(e)),
    }
    process.set_env(Some(env));
}

/// Puts `mount` where the mounts at `dest` were; None only removes them.
pub fn put_mount(spec: &mut oci::Spec, dest: &Path, mount: Option<oci::Mount>) {
    let mounts = spec.mounts_mut().get_or_insert_with(Vec::new);
    mounts.retain(|old| old.destination() != dest);
    mounts.extend(mount);
}

/// Puts `device` where a device at its path was, and lets the container use it (`rule`).
pub fn put_device(
    linux: &mut oci::Linux,
    device: oci::LinuxDevice,
    rule: Option<oci::LinuxDeviceCgroup>,
) {
    remove_device(linux, device.path());
    let mut devices = linux.devices().clone().unwrap_or_default();
    devices.push(device);
    linux.set_devices(Some(devices));
    if let Some(rule) = rule {
        let mut resources = linux.resources().clone().unwrap_or_default();
        let mut rules = resources.devices().clone().unwrap_or_default();
        rules.push(rule);
        resources.set_devices(Some(rules));
        linux.set_resources(Some(resources));
    }
}

pub fn remove_device(linux: &mut oci::Linux, path: &Path) {
    let mut devices = linux.devices().clone().unwrap_or_default();
    devices.retain(|d| d.path() != path);
    linux.set_devices(Some(devices));
}

/// The rule that lets a container read, write and mknod a block or character device; None
/// for other kinds, which the device cgroup does not govern.
pub fn allow_rule(
    typ: oci::LinuxDeviceType,
    major: i64,
    minor: i64,
    access: &str,
) -> Option<oci::LinuxDeviceCgroup> {
    if !matches!(typ, oci::LinuxDeviceType::B | oci::LinuxDeviceType::C) {
        return None;
    }
    let mut rule = oci::LinuxDeviceCgroup::default();
    rule.set_allow(true)
        .set_typ(Some(typ))
        .set_major(Some(major))
        .set_minor(Some(minor))
        .set_access(Some(access.to_owned()));
    Some(rule)
}

/// The phases hooks go in, by their OCI names.
pub const HOOK_PHASES: &[&str] = &[
    "prestart",
    "createRuntime",
    "createContainer",
    "startContainer",
    "poststart",
    "poststop",
];

/// Appends `hook` to phase `name` (one of [`HOOK_PHASES`]; anything else is poststop).
pub fn add_hook(spec: &mut oci::Spec, name: &str, hook: oci::Hook) {
    let hooks = spec.hooks_mut().get_or_insert_with(Default::default);
    let phase = match name {
        "prestart" => hooks.prestart_mut(),
        "createRuntime" => hooks.create_runtime_mut(),
        "createContainer" => hooks.create_container_mut(),
        "startContainer" => hooks.start_container_mut(),
        "poststart" => hooks.poststart_mut(),
        _ => hooks.poststop_mut(),
    };
    phase.get_or_insert_with(Vec::new).push(hook);
}
