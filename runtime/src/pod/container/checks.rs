//! CreateContainer's checks of the request that need the host: volume propagation and id
//! mappings against the mounts they come from, recursive read-only support, the log path,
//! capability names.

use std::path::Path;

use podrun_proto::cri;

use crate::container::capabilities;
use crate::error::{Error, Result};
use crate::sandbox;

/// A volume that propagates mounts needs a source that does: shared for Bidirectional,
/// shared or a slave for HostToContainer (as containerd checks); otherwise the container
/// would silently see nothing.
pub(super) fn check_propagation(i: usize, m: &cri::Mount) -> Result<()> {
    use cri::MountPropagation::*;
    let wanted = match cri::MountPropagation::try_from(m.propagation) {
        Ok(PropagationBidirectional) => &["shared:"][..],
        Ok(PropagationHostToContainer) => &["shared:", "master:"][..],
        _ => return Ok(()),
    };
    let source = std::fs::canonicalize(&m.host_path)
        .map_err(Error::io("resolving the mount source", &m.host_path))?;
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")
        .map_err(Error::io("reading", "/proc/self/mountinfo"))?;
    // The mount the source lies on: the longest mount point that is a prefix of it.
    let optional = mountinfo
        .lines()
        .filter_map(|l| {
            let fields: Vec<&str> = l.split(' ').collect();
            let point = fields.get(4)?;
            let end = fields.iter().position(|f| *f == "-")?;
            Some((Path::new(*point), fields.get(6..end)?.to_vec()))
        })
        .filter(|(point, _)| source.starts_with(point))
        .max_by_key(|(point, _)| point.as_os_str().len())
        .map(|(_, optional)| optional)
        .unwrap_or_default();
    if optional
        .iter()
        .any(|f| wanted.iter().any(|w| f.starts_with(w)))
    {
        return Ok(());
    }
    Err(Error::invalid(
        "config.mounts.propagation",
        format!(
            "mounts[{i}]: {:?} is on a mount that is not {} (make it so with mount --make-rshared)",
            m.host_path,
            if wanted.len() == 1 {
                "shared"
            } else {
                "shared or a slave"
            },
        ),
    ))
}

/// A container's user-namespace options, when it gives them, must be its pod's (as
/// containerd requires): its processes join the pod's user namespace.
pub(super) fn check_userns(
    pod: &sandbox::Record,
    sc: Option<&cri::LinuxContainerSecurityContext>,
) -> Result<()> {
    let field = "config.linux.security_context.namespace_options.userns_options";
    let Some(options) = sc
        .and_then(|s| s.namespace_options.as_ref())
        .and_then(|o| o.userns_options.as_ref())
    else {
        return Ok(());
    };
    let wanted = crate::userns::requested(Some(options), field)?;
    let has = pod.userns.as_ref().map(|u| (u.uids, u.gids));
    if wanted != has {
        return Err(Error::invalid(
            field,
            format!("{wanted:?} differs from the pod's user namespace {has:?}"),
        ));
    }
    Ok(())
}

/// A volume's id mappings (kubelet gives a user-namespaced pod's volumes its mappings)
/// must be the pod's: podrun idmaps the volume through the pod's user namespace.
pub(super) fn check_volume_mappings(i: usize, m: &cri::Mount, pod: &sandbox::Record) -> Result<()> {
    if m.uid_mappings.is_empty() && m.gid_mappings.is_empty() {
        return Ok(());
    }
    let field = "config.mounts.uid_mappings";
    let Some(u) = &pod.userns else {
        return Err(Error::invalid(
            field,
            format!("mounts[{i}]: id mappings on a volume of a pod without its own user namespace"),
        ));
    };
    let same = |given: &[cri::IdMapping], ours: &crate::userns::Mapping| matches!(given, [g] if (g.container_id, g.host_id, g.length) == (ours.container_id, ours.host_id, ours.length));
    if !same(&m.uid_mappings, &u.uids) || !same(&m.gid_mappings, &u.gids) {
        return Err(Error::invalid(
            field,
            format!(
                "mounts[{i}]: a volume's id mappings must be its pod's ({:?}, {:?})",
                u.uids, u.gids
            ),
        ));
    }
    Ok(())
}

/// A recursive read-only mount must be read-only and private (a propagated mount could
/// not stay read-only), as containerd and CRI-O require.
pub(super) fn check_recursive_read_only(i: usize, m: &cri::Mount) -> Result<()> {
    let field = "config.mounts.recursive_read_only";
    if !m.readonly {
        return Err(Error::invalid(
            field,
            format!(
                "mounts[{i}]: a recursive read-only mount of {:?} must also be readonly",
                m.host_path
            ),
        ));
    }
    if m.propagation != cri::MountPropagation::PropagationPrivate as i32 {
        return Err(Error::invalid(
            field,
            format!(
                "mounts[{i}]: a recursive read-only mount of {:?} needs private propagation",
                m.host_path
            ),
        ));
    }
    Ok(())
}

/// The container's log file is `log_path` under the pod's log directory, and only there:
/// an absolute path or one that climbs out with `..` is refused (the shim opens it as root).
pub(super) fn validate_log_path(log_path: &str) -> Result<()> {
    let climbs = Path::new(log_path).components().any(|c| {
        !matches!(
            c,
            std::path::Component::Normal(_) | std::path::Component::CurDir
        )
    });
    if climbs {
        return Err(Error::invalid(
            "config.log_path",
            format!("{log_path:?} must be a relative path inside the pod's log_directory"),
        ));
    }
    Ok(())
}

/// Refuses a capability Linux does not define (a typo would otherwise reach the OCI
/// runtime, or be dropped without a word).
pub(super) fn check_capabilities(sc: Option<&cri::LinuxContainerSecurityContext>) -> Result<()> {
    let Some(c) = sc.and_then(|s| s.capabilities.as_ref()) else {
        return Ok(());
    };
    for (field, list) in [
        ("add_capabilities", &c.add_capabilities),
        ("drop_capabilities", &c.drop_capabilities),
    ] {
        let unknown = list
            .iter()
            .find(|n| !n.eq_ignore_ascii_case("ALL") && capabilities::capability(n).is_none());
        if let Some(name) = unknown {
            return Err(Error::invalid(
                match field {
                    "add_capabilities" => {
                        "config.linux.security_context.capabilities.add_capabilities"
                    }
                    _ => "config.linux.security_context.capabilities.drop_capabilities",
                },
                format!("{name:?} is not a Linux capability"),
            ));
        }
    }
    Ok(())
}

/// An image volume (`Mount.image`, Kubernetes' image volumes): read-only, without a host
/// path, of an image the store holds (kubelet pulls it first), with a relative sub path that
/// stays inside it. None for an ordinary volume.
pub(super) fn check_image_volume(
    i: usize,
    m: &cri::Mount,
    images: &crate::image::ImageStore,
) -> Result<Option<crate::image::Image>> {
    let Some(name) = m.image.as_ref().map(|s| &s.image).filter(|n| !n.is_empty()) else {
        return Ok(None);
    };
    if !m.host_path.is_empty() {
        return Err(Error::invalid(
            "config.mounts.host_path",
            format!("mounts[{i}]: an image volume has no host_path"),
        ));
    }
    if !m.readonly {
        return Err(Error::invalid(
            "config.mounts.readonly",
            format!("mounts[{i}]: image volumes are read-only"),
        ));
    }
    let inside = Path::new(&m.image_sub_path)
        .components()
        .all(|c| matches!(c, std::path::Component::Normal(_)));
    if !inside {
        return Err(Error::invalid(
            "config.mounts.image_sub_path",
            format!(
                "mounts[{i}]: {:?} must be a relative path inside the image",
                m.image_sub_path
            ),
        ));
    }
    let image = images.find(name).ok_or_else(|| Error::NotFound {
        what: "image",
        id: name.clone(),
    })?;
    Ok(Some(image))
}
