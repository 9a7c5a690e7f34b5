//! The rootfs containerd hands a task in Create (snapshotter mounts, usually one overlay),
//! mounted at `<bundle>/rootfs` and unmounted at Delete, as shims must.

use std::path::Path;

use anyhow::{Context, Result};
use containerd_shim_protos::types::mount::Mount;
use nix::mount::{mount, umount2, MntFlags, MsFlags};

/// Flags among fstab-style options; the rest are data for the filesystem.
fn split_options(options: &[String]) -> (MsFlags, String) {
    let mut flags = MsFlags::empty();
    let mut data = Vec::new();
    for o in options {
        match o.as_str() {
            "ro" => flags |= MsFlags::MS_RDONLY,
            "rw" => flags &= !MsFlags::MS_RDONLY,
            "bind" => flags |= MsFlags::MS_BIND,
            "rbind" => flags |= MsFlags::MS_BIND | MsFlags::MS_REC,
            "nosuid" => flags |= MsFlags::MS_NOSUID,
            "nodev" => flags |= MsFlags::MS_NODEV,
            "noexec" => flags |= MsFlags::MS_NOEXEC,
            other => data.push(other),
        }
    }
    (flags, data.join(","))
}

/// Mounts `mounts` in order on `<bundle>/rootfs`; on failure what was mounted is undone.
pub fn mount_rootfs(bundle: &Path, mounts: &[Mount]) -> Result<()> {
    let target = bundle.join("rootfs");
    if mounts.is_empty() {
        return Ok(());
    }
    std::fs::create_dir_all(&target).with_context(|| format!("creating {target:?}"))?;
    for (i, m) in mounts.iter().enumerate() {
        let (flags, data) = split_options(&m.options);
        let data = (!data.is_empty()).then_some(data.as_str());
        let done = mount(
            Some(m.source.as_str()),
            &target,
            Some(m.type_.as_str()),
            flags,
            data,
        );
        if let Err(e) = done {
            for _ in 0..i {
                let _ = umount2(&target, MntFlags::MNT_DETACH);
            }
            return Err(e)
                .with_context(|| format!("mounting {} ({}) on {target:?}", m.source, m.type_));
        }
    }
    Ok(())
}

/// Unmounts everything stacked on `<bundle>/rootfs`.
pub fn unmount_rootfs(bundle: &Path) {
    let target = bundle.join("rootfs");
    while umount2(&target, MntFlags::empty()).is_ok() {}
    while umount2(&target, MntFlags::MNT_DETACH).is_ok() {}
}
