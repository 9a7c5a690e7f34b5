//! Applying resolved CDI edits to a container's OCI spec, as the reference implementation
//! does: env replaces a variable of the same name or is added; a device node replaces one of
//! the same path (owned by the process' user unless the spec says otherwise) and gets its
//! cgroup rule; a mount replaces one at the same destination, and the mounts are then
//! ordered parents first; hooks join their phase; groups join the user's.

use std::collections::HashMap;
use std::path::{Component, Path, PathBuf};

use ::oci_spec::runtime as oci;

use super::Resolved;
use crate::error::Result;
use crate::oci_edit;

pub fn apply(spec: &mut oci::Spec, resolved: &[Resolved]) -> Result<()> {
    for r in resolved {
        for edits in &r.edits {
            env(spec, edits.env.iter().flatten())?;
            for m in edits.mounts.iter().flatten() {
                mount(spec, m);
            }
            for h in edits.hooks.iter().flatten() {
                hook(spec, h);
            }
            groups(spec, edits.additional_gids.iter().flatten().copied())?;
            for d in edits.net_devices.iter().flatten() {
                net_device(spec, d)?;
            }
        }
        for (device, rule) in &r.devices {
            self::device(spec, device.clone(), rule.clone())?;
        }
    }
    if resolved
        .iter()
        .any(|r| r.edits.iter().any(|e| e.mounts.is_some()))
    {
        // Parents before what is mounted on them: by depth, the order kept otherwise.
        let depth = |m: &oci::Mount| {
            let dest = m.destination();
            dest.components()
                .filter(|c| matches!(c, Component::Normal(_)))
                .count()
        };
        if let Some(mounts) = spec.mounts_mut() {
            mounts.sort_by_key(depth);
        }
    }
    Ok(())
}

fn env<'a>(spec: &mut oci::Spec, vars: impl Iterator<Item = &'a String>) -> Result<()> {
    let process = oci_edit::process(spec)?;
    for var in vars {
        let (key, value) = var.split_once('=').unwrap_or((var, ""));
        oci_edit::set_env(process, key, Some(value));
    }
    Ok(())
}

fn mount(spec: &mut oci::Spec, m: &super::spec::Mount) {
    let dest = Path::new(&m.container_path);
    let mut mount = oci::Mount::default();
    mount
        .set_destination(dest.to_path_buf())
        .set_source(Some(PathBuf::from(&m.host_path)))
        .set_typ(m.kind.clone().filter(|k| !k.is_empty()))
        .set_options(m.options.clone());
    oci_edit::put_mount(spec, dest, Some(mount));
}

fn hook(spec: &mut oci::Spec, h: &super::spec::Hook) {
    let mut hook = oci::Hook::default();
    hook.set_path(PathBuf::from(&h.path))
        .set_args(h.args.clone())
        .set_env(h.env.clone())
        .set_timeout(h.timeout);
    // Spec files were checked: the name is one of the phases.
    oci_edit::add_hook(spec, &h.hook_name, hook);
}

fn groups(spec: &mut oci::Spec, gids: impl Iterator<Item = u32>) -> Result<()> {
    let user = oci_edit::process(spec)?.user_mut();
    let mut all = user.additional_gids().clone().unwrap_or_default();
    for gid in gids.filter(|g| *g != 0) {
        if !all.contains(&gid) {
            all.push(gid);
        }
    }
    user.set_additional_gids((!all.is_empty()).then_some(all));
    Ok(())
}

fn net_device(spec: &mut oci::Spec, d: &super::spec::NetDevice) -> Result<()> {
    let linux = oci_edit::linux(spec)?;
    let mut devices = linux.net_devices().clone().unwrap_or_else(HashMap::new);
    let mut device = oci::LinuxNetDevice::default();
    device.set_name(Some(d.name.clone()));
    devices.insert(d.host_interface_name.clone(), device);
    linux.set_net_devices(Some(devices));
    Ok(())
}

/// A device node, owned by the process' user unless the spec says otherwise.
fn device(
    spec: &mut oci::Spec,
    mut device: oci::LinuxDevice,
    rule: Option<oci::LinuxDeviceCgroup>,
) -> Result<()> {
    let user = spec.process().as_ref().map(|p| p.user().clone());
    if let Some(user) = user {
        if device.uid().is_none() && user.uid() > 0 {
            device.set_uid(Some(user.uid()));
        }
        if device.gid().is_none() && user.gid() > 0 {
            device.set_gid(Some(user.gid()));
        }
    }
    oci_edit::put_device(oci_edit::linux(spec)?, device, rule);
    Ok(())
}
