//! A container's files on the host: its rootfs (an overlay of the image's layers, idmapped
//! for a user-namespaced pod), the idmapped staging of its volumes, and their teardown.

use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use podrun_proto::cri;

use crate::container::{mounts_under, Dirs};
use crate::error::{Error, Result};

/// Mounts each volume of `config` that has id mappings, idmapped through the pod's user
/// namespace, at `<state>/volumes/<n>`, and points the volume there; returns the staging
/// mounts, to detach once the runtime has mounted them.
pub(super) fn stage_idmapped_volumes(
    dirs: &Dirs,
    config: &mut cri::ContainerConfig,
    userns: &crate::userns::UserNs,
) -> Result<Vec<PathBuf>> {
    let mut staged = Vec::new();
    // Image volumes are staged apart (stage_image_volumes), whatever mappings they carry.
    let mapped = |m: &cri::Mount| {
        m.image.as_ref().is_none_or(|i| i.image.is_empty())
            && (!m.uid_mappings.is_empty() || !m.gid_mappings.is_empty())
    };
    if !config.mounts.iter().any(mapped) {
        return Ok(staged);
    }
    let fd = crate::userns::open(&userns.pin)?;
    let base = dirs.state.join("volumes");
    std::fs::create_dir_all(&base).map_err(Error::io("creating", &base))?;
    for (i, m) in config
        .mounts
        .iter_mut()
        .enumerate()
        .filter(|(_, m)| mapped(m))
    {
        let source = PathBuf::from(&m.host_path);
        let at = base.join(i.to_string());
        // The staging point is of the source's kind: a directory, or a file.
        match source.is_dir() {
            true => std::fs::create_dir(&at),
            false => std::fs::File::create(&at).map(drop),
        }
        .map_err(Error::io("creating", &at))?;
        crate::userns::mount_idmapped(&source, &at, &fd)?;
        m.host_path = at.display().to_string();
        staged.push(at);
    }
    Ok(staged)
}

pub(super) fn mount_rootfs(dirs: &Dirs, layers: &[PathBuf], target: &Path) -> Result<()> {
    let (upper, work) = (dirs.root.join("upper"), dirs.root.join("work"));
    let empty = dirs.root.join("empty");
    for d in [&upper, &work, &target.to_path_buf(), &empty] {
        std::fs::create_dir_all(d).map_err(Error::io("creating", d))?;
    }
    let lowers: Vec<String> = match layers.is_empty() {
        true => vec![empty.display().to_string()],
        false => layers.iter().map(|l| l.display().to_string()).collect(),
    };
    let options = format!(
        "lowerdir={},upperdir={},workdir={}",
        lowers.join(":"),
        upper.display(),
        work.display()
    );
    mount(
        Some("overlay"),
        target,
        Some("overlay"),
        MsFlags::empty(),
        Some(options.as_str()),
    )
    .map_err(Error::sys(format!(
        "mounting the rootfs overlay on {}",
        target.display()
    )))
}

/// A user-namespaced container's rootfs: each layer idmapped through the pod's user
/// namespace (so the image's root-owned files are the pod root's), an overlay on them
/// with an upper and work dir owned by the pod's root on the host; the staging mounts of
/// the layers are detached once the overlay holds them.
pub(super) fn mount_idmapped_rootfs(
    dirs: &Dirs,
    layers: &[PathBuf],
    target: &Path,
    userns: &crate::userns::UserNs,
) -> Result<()> {
    let fd = crate::userns::open(&userns.pin)?;
    let staging = dirs.state.join("layers");
    let mut mapped = Vec::new();
    let result = (|| {
        for (i, layer) in layers.iter().enumerate() {
            let at = staging.join(i.to_string());
            std::fs::create_dir_all(&at).map_err(Error::io("creating", &at))?;
            crate::userns::mount_idmapped(layer, &at, &fd)?;
            mapped.push(at);
        }
        for d in [dirs.root.join("upper"), dirs.root.join("work")] {
            std::fs::create_dir_all(&d).map_err(Error::io("creating", &d))?;
            nix::unistd::chown(
                &d,
                Some(userns.uids.host_id.into()),
                Some(userns.gids.host_id.into()),
            )
            .map_err(Error::sys(format!("chown {}", d.display())))?;
        }
        mount_rootfs(dirs, &mapped, target)
    })();
    // Never a recursive delete here: a staging dir still mounted is an image layer.
    for at in &mapped {
        let _ = umount2(at, MntFlags::MNT_DETACH);
        let _ = std::fs::remove_dir(at);
    }
    let _ = std::fs::remove_dir(&staging);
    result
}

/// Unmounts the rootfs and removes the container's dirs (record last).
pub(super) fn teardown_files(dirs: &Dirs) -> Result<()> {
    // Everything mounted under the state dir (the rootfs; staging mounts of idmapped
    // layers a crash left), deepest first, before anything is deleted: a recursive delete
    // must never reach into an image layer or a volume.
    for point in mounts_under(&dirs.state) {
        match umount2(&point, MntFlags::MNT_DETACH) {
            Ok(()) | Err(nix::Error::EINVAL) | Err(nix::Error::ENOENT) => {}
            Err(e) => return Err(Error::sys(format!("unmounting {}", point.display()))(e)),
        }
    }
    if let Some(still) = mounts_under(&dirs.state).first() {
        return Err(Error::Internal(format!(
            "{} is still mounted; not removing {}",
            still.display(),
            dirs.state.display()
        )));
    }
    for d in [&dirs.state, &dirs.root] {
        match std::fs::remove_dir_all(d) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(Error::io("removing", d)(e))
            }
            _ => {}
        }
    }
    Ok(())
}

/// Mounts each image volume (`volumes`: mount index and image) read-only at
/// `<state>/image-volumes/<n>` (an overlay of the image's layers without an upper dir, so
/// nothing can write to the layers) and points the volume there, or at its sub path, which
/// must be a directory inside it.
pub(super) fn stage_image_volumes(
    images: &crate::image::ImageStore,
    dirs: &Dirs,
    config: &mut cri::ContainerConfig,
    volumes: &[(usize, crate::image::Image)],
) -> Result<()> {
    let empty = dirs.root.join("empty");
    // The images CreateContainer checked (their layers pinned since), not looked up again.
    for (i, image) in volumes {
        let (i, name) = (*i, &image.id);
        let m = &mut config.mounts[i];
        let mut lowers: Vec<String> = image
            .layers
            .iter()
            .rev()
            .map(|l| images.layer_path(l).map(|p| p.display().to_string()))
            .collect::<Result<_>>()?;
        // Without an upper dir overlayfs needs two lower dirs.
        while lowers.len() < 2 {
            std::fs::create_dir_all(&empty).map_err(Error::io("creating", &empty))?;
            lowers.push(empty.display().to_string());
        }
        let at = dirs.state.join("image-volumes").join(i.to_string());
        std::fs::create_dir_all(&at).map_err(Error::io("creating", &at))?;
        let options = format!("lowerdir={}", lowers.join(":"));
        mount(
            Some("overlay"),
            &at,
            Some("overlay"),
            MsFlags::MS_RDONLY | MsFlags::MS_NODEV | MsFlags::MS_NOSUID,
            Some(options.as_str()),
        )
        .map_err(Error::sys(format!("mounting image volume {name}")))?;
        // Compared canonical to canonical (the state dir's path may hold a symlink).
        let at = at.canonicalize().map_err(Error::io("resolving", &at))?;
        let source = match m.image_sub_path.as_str() {
            "" => at.clone(),
            sub => {
                // Symlinks in the image resolve on the host: the result must stay inside.
                let resolved = at
                    .join(sub)
                    .canonicalize()
                    .ok()
                    .filter(|p| p.starts_with(&at));
                resolved.filter(|p| p.is_dir()).ok_or_else(|| {
                    Error::invalid(
                        "config.mounts.image_sub_path",
                        format!("mounts[{i}]: {sub:?} is not a directory inside image {name}"),
                    )
                })?
            }
        };
        m.host_path = source.display().to_string();
        m.readonly = true;
    }
    Ok(())
}
