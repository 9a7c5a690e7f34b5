//! The user a container runs as: from the CRI security context (run_as_user,
//! run_as_username, run_as_group, supplemental_groups) or else the image's `User`
//! ("name", "uid", "name:group", "uid:gid"), resolved in the image's /etc/passwd and
//! /etc/group, as a container runtime must (never the node's).

use std::path::Path;

use podrun_proto::cri;

use super::oci_spec::User;
use crate::error::{Error, Result};

struct Entry {
    name: String,
    id: u32,
    gid: u32,
    members: Vec<String>,
}

/// Reads an image file without leaving the rootfs: no component may be a symlink (it would
/// resolve on the node), it must be a regular file, and at most 1 MiB is read.
fn read_in_rootfs(rootfs: &Path, file: &str) -> String {
    use std::io::Read;
    let mut path = rootfs.to_owned();
    for part in file.split('/') {
        path.push(part);
        if std::fs::symlink_metadata(&path).map_or(true, |m| m.file_type().is_symlink()) {
            return String::new();
        }
    }
    if !std::fs::metadata(&path).is_ok_and(|m| m.is_file()) {
        return String::new();
    }
    let mut text = String::new();
    let _ = std::fs::File::open(&path).map(|f| f.take(1 << 20).read_to_string(&mut text));
    text
}

fn read(rootfs: &Path, file: &str) -> Vec<Entry> {
    let text = read_in_rootfs(rootfs, file);
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            let id = f.get(2)?.parse().ok()?;
            let (gid, members) = match file {
                "etc/passwd" => (f.get(3)?.parse().ok()?, Vec::new()),
                _ => (
                    id,
                    f.get(3)
                        .map(|m| {
                            m.split(',')
                                .filter(|s| !s.is_empty())
                                .map(str::to_owned)
                                .collect()
                        })
                        .unwrap_or_default(),
                ),
            };
            Some(Entry {
                name: f[0].to_owned(),
                id,
                gid,
                members,
            })
        })
        .collect()
}

pub fn resolve(
    rootfs: &Path,
    image_user: &str,
    sc: Option<&cri::LinuxContainerSecurityContext>,
) -> Result<User> {
    let passwd = read(rootfs, "etc/passwd");
    let groups = read(rootfs, "etc/group");
    let (user_part, group_part) = match image_user.split_once(':') {
        Some((u, g)) => (u.to_owned(), Some(g.to_owned())),
        None => (image_user.to_owned(), None),
    };
    let (user_part, group_part) = match sc {
        Some(sc) if sc.run_as_user.is_some() => (
            sc.run_as_user
                .as_ref()
                .map(|v| v.value.to_string())
                .unwrap_or_default(),
            None,
        ),
        Some(sc) if !sc.run_as_username.is_empty() => (sc.run_as_username.clone(), None),
        _ => (user_part, group_part),
    };
    let (uid, name, mut gid) = match user_part.as_str() {
        "" => (0, Some("root".to_owned()), 0),
        u => match u.parse::<u32>() {
            Ok(uid) => {
                let entry = passwd.iter().find(|e| e.id == uid);
                (
                    uid,
                    entry.map(|e| e.name.clone()),
                    entry.map_or(0, |e| e.gid),
                )
            }
            Err(_) => {
                let entry = passwd.iter().find(|e| e.name == u).ok_or_else(|| {
                    Error::invalid(
                        "user",
                        format!("user {u:?} not found in the image's /etc/passwd"),
                    )
                })?;
                (entry.id, Some(entry.name.clone()), entry.gid)
            }
        },
    };
    if let Some(g) = group_part {
        gid = match g.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => groups
                .iter()
                .find(|e| e.name == g)
                .map(|e| e.id)
                .ok_or_else(|| {
                    Error::invalid(
                        "user",
                        format!("group {g:?} not found in the image's /etc/group"),
                    )
                })?,
        };
    }
    if let Some(g) = sc.and_then(|s| s.run_as_group.as_ref()) {
        gid = g.value as u32;
    }
    // The primary group first, as containerd lists it; then, unless the policy is Strict,
    // the image's groups that name the user; then the security context's own.
    let strict = sc.is_some_and(|s| {
        s.supplemental_groups_policy == cri::SupplementalGroupsPolicy::Strict as i32
    });
    let from_image = groups
        .iter()
        .filter(|g| !strict && name.as_ref().is_some_and(|n| g.members.contains(n)))
        .map(|g| g.id);
    let from_context = sc
        .map(|s| s.supplemental_groups.as_slice())
        .unwrap_or_default()
        .iter()
        .map(|g| *g as u32);
    let mut additional = vec![gid];
    for g in from_image.chain(from_context) {
        if !additional.contains(&g) {
            additional.push(g);
        }
    }
    Ok(User {
        uid,
        gid,
        additional_gids: additional,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rootfs() -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("etc")).unwrap();
        std::fs::write(
            d.path().join("etc/passwd"),
            "root:x:0:0::/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\n",
        )
        .unwrap();
        std::fs::write(
            d.path().join("etc/group"),
            "root:x:0:\napp:x:1000:\nextra:x:2000:app,other\n",
        )
        .unwrap();
        d
    }

    #[test]
    fn image_users_resolve_in_the_image() {
        let r = rootfs();
        assert_eq!(
            resolve(r.path(), "", None).unwrap(),
            User {
                uid: 0,
                gid: 0,
                additional_gids: vec![0]
            }
        );
        assert_eq!(
            resolve(r.path(), "app", None).unwrap(),
            User {
                uid: 1000,
                gid: 1000,
                additional_gids: vec![1000, 2000]
            }
        );
        assert_eq!(
            resolve(r.path(), "app:extra", None).unwrap(),
            User {
                uid: 1000,
                gid: 2000,
                additional_gids: vec![2000]
            }
        );
        assert_eq!(
            resolve(r.path(), "4242:7", None).unwrap(),
            User {
                uid: 4242,
                gid: 7,
                additional_gids: vec![7]
            }
        );
        let err = resolve(r.path(), "ghost", None).unwrap_err();
        assert!(err.to_string().contains("ghost"));
    }

    #[test]
    fn a_passwd_that_points_out_of_the_image_is_not_followed() {
        let r = tempfile::tempdir().unwrap();
        std::fs::create_dir(r.path().join("etc")).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", r.path().join("etc/passwd")).unwrap();
        let err = resolve(r.path(), "root", None).unwrap_err();
        assert!(
            err.to_string().contains("root"),
            "the node's root entry must not be found: {err}"
        );
    }

    #[test]
    fn the_security_context_wins() {
        let r = rootfs();
        let sc = cri::LinuxContainerSecurityContext {
            run_as_user: Some(cri::Int64Value { value: 1000 }),
            run_as_group: Some(cri::Int64Value { value: 3000 }),
            supplemental_groups: vec![4000],
            ..Default::default()
        };
        assert_eq!(
            resolve(r.path(), "root", Some(&sc)).unwrap(),
            User {
                uid: 1000,
                gid: 3000,
                additional_gids: vec![3000, 2000, 4000]
            }
        );
        // Strict: the image's /etc/group adds nothing.
        let strict = cri::LinuxContainerSecurityContext {
            supplemental_groups_policy: cri::SupplementalGroupsPolicy::Strict as i32,
            ..sc
        };
        assert_eq!(
            resolve(r.path(), "root", Some(&strict))
                .unwrap()
                .additional_gids,
            vec![3000, 4000]
        );
    }
}
