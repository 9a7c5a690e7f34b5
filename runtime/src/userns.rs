//! User-namespaced pods (`userns_options` mode POD): one user namespace per pod, with the
//! single uid and gid mapping kubelet gives, that owns the pod's network namespace (so the
//! pod's root has CAP_NET_ADMIN over its own network, and its sysctls work) and, through the
//! shim, its pause's pid, ipc and uts namespaces. Both are pinned by bind mounts.
//!
//! podrund is multithreaded and so cannot enter or make a user namespace itself: a forked
//! helper makes the user and network namespaces together, podrund writes the mappings and
//! pins both, and the helper exits. The helper only makes raw system calls.
//!
//! Image layers reach the container through idmapped mounts (`mount_setattr` with
//! MOUNT_ATTR_IDMAP), so files owned by 0 in the image are owned by the container's root.

use std::fs;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use podrun_proto::cri;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// One id mapping: container ids `container_id..+length` are host ids `host_id..`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mapping {
    pub container_id: u32,
    pub host_id: u32,
    pub length: u32,
}

impl Mapping {
    /// The line `/proc/PID/uid_map` takes.
    fn line(&self) -> String {
        format!("{} {} {}\n", self.container_id, self.host_id, self.length)
    }
}

/// A pod's user namespace: its mappings and where it is pinned.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UserNs {
    pub uids: Mapping,
    pub gids: Mapping,
    pub pin: PathBuf,
}

/// The mappings a POD-mode `userns_options` asks for; None for NODE (or none given).
/// `field` names the options in errors.
pub fn requested(
    options: Option<&cri::UserNamespace>,
    field: &'static str,
) -> Result<Option<(Mapping, Mapping)>> {
    let Some(o) = options else {
        return Ok(None);
    };
    let one = |list: &[cri::IdMapping], what: &str| -> Result<Mapping> {
        let [m] = list else {
            return Err(Error::invalid(
                field,
                format!(
                    "mode POD needs exactly one {what} mapping, got {}",
                    list.len()
                ),
            ));
        };
        if m.length == 0 || m.host_id.checked_add(m.length - 1).is_none() {
            return Err(Error::invalid(
                field,
                format!("invalid {what} mapping length {}", m.length),
            ));
        }
        if m.container_id != 0 {
            return Err(Error::invalid(
                field,
                format!(
                    "the {what} mapping must map container id 0 (the pod's root), not from {}",
                    m.container_id
                ),
            ));
        }
        Ok(Mapping {
            container_id: m.container_id,
            host_id: m.host_id,
            length: m.length,
        })
    };
    match cri::NamespaceMode::try_from(o.mode) {
        Ok(cri::NamespaceMode::Node) if o.uids.is_empty() && o.gids.is_empty() => Ok(None),
        Ok(cri::NamespaceMode::Node) => Err(Error::invalid(field, "mode NODE takes no mappings")),
        Ok(cri::NamespaceMode::Pod) => Ok(Some((one(&o.uids, "uid")?, one(&o.gids, "gid")?))),
        _ => Err(Error::invalid(
            field,
            format!(
                "user namespace mode {:?} is not supported (POD and NODE are)",
                o.mode
            ),
        )),
    }
}

/// Reports a failed step of the helper: the step's number and errno, then exits.
unsafe fn helper_fail(out: libc::c_int, step: u8) -> ! {
    let errno = *libc::__errno_location();
    let b = errno.to_ne_bytes();
    let msg = [step, b[0], b[1], b[2], b[3]];
    libc::write(out, msg.as_ptr().cast(), msg.len());
    libc::_exit(1)
}

/// A helper process in new user and network namespaces, waiting until dropped (killed).
struct Helper {
    pid: nix::unistd::Pid,
}

impl Helper {
    /// Forks the helper; returns once it has made its namespaces (and set `lo` up).
    fn start(with_net: bool) -> Result<Helper> {
        let (ready_rd, ready_wr) =
            nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(Error::sys("pipe"))?;
        let flags = libc::CLONE_NEWUSER | if with_net { libc::CLONE_NEWNET } else { 0 };
        // SAFETY: the child of a fork in a multithreaded process runs only async-signal-
        // safe system calls on data prepared before the fork (no allocation, no locks),
        // then _exits.
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            return Err(Error::Internal(format!(
                "fork: {}",
                std::io::Error::last_os_error()
            )));
        }
        if pid == 0 {
            // SAFETY: see above.
            unsafe {
                let out = ready_wr.as_raw_fd();
                if libc::unshare(flags) != 0 {
                    helper_fail(out, 1);
                }
                if with_net && crate::netns::loopback_up().is_err() {
                    helper_fail(out, 2);
                }
                let ok = [0u8];
                libc::write(out, ok.as_ptr().cast(), 1);
                // Until the parent has pinned the namespaces and kills it.
                loop {
                    libc::pause();
                }
            }
        }
        drop(ready_wr);
        let helper = Helper {
            pid: nix::unistd::Pid::from_raw(pid),
        };
        let mut answer = [0u8; 5];
        let n = nix::unistd::read(&ready_rd, &mut answer)
            .map_err(Error::sys("reading from the namespace helper"))?;
        match n {
            1 => Ok(helper),
            5 => {
                let errno = i32::from_ne_bytes([answer[1], answer[2], answer[3], answer[4]]);
                let step = ["", "unshare(CLONE_NEWUSER|CLONE_NEWNET)", "bringing lo up"]
                    [answer[0] as usize % 3];
                Err(Error::Internal(format!(
                    "the namespace helper failed at {step}: {}",
                    std::io::Error::from_raw_os_error(errno)
                )))
            }
            _ => Err(Error::Internal("the namespace helper died".into())),
        }
    }

    fn proc(&self, file: &str) -> PathBuf {
        PathBuf::from(format!("/proc/{}/{file}", self.pid))
    }

    fn map(&self, uids: &Mapping, gids: &Mapping) -> Result<()> {
        for (file, m) in [("uid_map", uids), ("gid_map", gids)] {
            let path = self.proc(file);
            fs::write(&path, m.line()).map_err(Error::io("writing", &path))?;
        }
        Ok(())
    }
}

impl Drop for Helper {
    /// The pins hold the namespaces: the helper is done.
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(self.pid, nix::sys::signal::Signal::SIGKILL);
        let _ = nix::sys::wait::waitpid(self.pid, None);
    }
}

/// Pins the namespace `/proc/<helper>/ns/<kind>` at `pin` (a new file).
fn pin_ns(helper: &Helper, kind: &str, pin: &Path) -> Result<()> {
    fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(pin)
        .map_err(Error::io("creating namespace pin", pin))?;
    let source = helper.proc(&format!("ns/{kind}"));
    mount(
        Some(&source),
        pin,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .map_err(|e| {
        let _ = fs::remove_file(pin);
        Error::sys(format!(
            "bind-mounting {} on {}",
            source.display(),
            pin.display()
        ))(e)
    })
}

/// Makes the pod's user namespace with `uids`/`gids` and a network namespace it owns (with
/// `lo` up); pins them at `userns.pin` and `netns_dir/netns_name`. Blocking.
pub fn create(userns: &UserNs, netns_dir: &Path, netns_name: &str) -> Result<PathBuf> {
    crate::netns::ensure_shared_dir(netns_dir)?;
    if let Some(dir) = userns.pin.parent() {
        fs::create_dir_all(dir).map_err(Error::io("creating", dir))?;
    }
    let helper = Helper::start(true)?;
    helper.map(&userns.uids, &userns.gids)?;
    pin_ns(&helper, "user", &userns.pin)?;
    let netns = netns_dir.join(netns_name);
    if let Err(e) = pin_ns(&helper, "net", &netns) {
        let _ = remove(&userns.pin);
        return Err(e);
    }
    Ok(netns)
}

/// Unpins a user namespace; already gone is fine.
pub fn remove(pin: &Path) -> Result<()> {
    match umount2(pin, MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::Error::EINVAL) | Err(nix::Error::ENOENT) => {}
        Err(e) => return Err(Error::sys(format!("unmounting {}", pin.display()))(e)),
    }
    match fs::remove_file(pin) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(Error::io("removing", pin)(e)),
        _ => Ok(()),
    }
}

#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

const OPEN_TREE_CLONE: libc::c_uint = 1;
const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 4;
const MOUNT_ATTR_IDMAP: u64 = 0x0010_0000;
const SYS_OPEN_TREE: libc::c_long = 428;
const SYS_MOVE_MOUNT: libc::c_long = 429;
const SYS_MOUNT_SETATTR: libc::c_long = 442;

/// A detached copy of the mount at `source`, idmapped through the user namespace `userns`.
fn idmapped_tree(source: &Path, userns: &OwnedFd) -> Result<OwnedFd> {
    let c = std::ffi::CString::new(source.as_os_str().as_encoded_bytes())
        .map_err(|e| Error::Internal(e.to_string()))?;
    let what = |step: &str| format!("{step} {}", source.display());
    // SAFETY: open_tree reads the NUL-terminated path; the fd it returns is ours.
    let fd = unsafe {
        libc::syscall(
            SYS_OPEN_TREE,
            libc::AT_FDCWD,
            c.as_ptr(),
            OPEN_TREE_CLONE | libc::O_CLOEXEC as libc::c_uint,
        )
    };
    if fd < 0 {
        return Err(Error::Internal(format!(
            "{}: {}",
            what("open_tree"),
            std::io::Error::last_os_error()
        )));
    }
    // SAFETY: a new fd the kernel just gave us.
    let tree = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    let attr = MountAttr {
        attr_set: MOUNT_ATTR_IDMAP,
        attr_clr: 0,
        propagation: 0,
        userns_fd: userns.as_raw_fd() as u64,
    };
    // SAFETY: mount_setattr reads `attr` (of the size given) and the empty path.
    let rc = unsafe {
        libc::syscall(
            SYS_MOUNT_SETATTR,
            tree.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if rc != 0 {
        return Err(Error::Internal(format!(
            "{}: {}",
            what("idmapping (mount_setattr)"),
            std::io::Error::last_os_error()
        )));
    }
    Ok(tree)
}

/// Mounts `source` at `target` (an existing directory) idmapped through `userns`.
pub fn mount_idmapped(source: &Path, target: &Path, userns: &OwnedFd) -> Result<()> {
    let tree = idmapped_tree(source, userns)?;
    let t = std::ffi::CString::new(target.as_os_str().as_encoded_bytes())
        .map_err(|e| Error::Internal(e.to_string()))?;
    // SAFETY: move_mount reads the empty path and the NUL-terminated target.
    let rc = unsafe {
        libc::syscall(
            SYS_MOVE_MOUNT,
            tree.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_FDCWD,
            t.as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH,
        )
    };
    if rc != 0 {
        return Err(Error::Internal(format!(
            "mounting {} idmapped on {}: {}",
            source.display(),
            target.display(),
            std::io::Error::last_os_error()
        )));
    }
    Ok(())
}

/// Opens a pinned user namespace (for idmapping).
pub fn open(pin: &Path) -> Result<OwnedFd> {
    fs::File::open(pin)
        .map(OwnedFd::from)
        .map_err(Error::io("opening user namespace", pin))
}

/// Can this node run user-namespaced pods: make a user namespace, and idmap a mount of
/// `dir` (the file system layers live on) through it?
pub fn supported(dir: &Path) -> bool {
    let probe = || -> Result<()> {
        let helper = Helper::start(false)?;
        let m = Mapping {
            container_id: 0,
            host_id: 1_000_000,
            length: 65536,
        };
        helper.map(&m, &m)?;
        let userns = open(&helper.proc("ns/user"))?;
        idmapped_tree(dir, &userns).map(drop)
    };
    match probe() {
        Ok(()) => true,
        Err(e) => {
            tracing::info!(error = %e, dir = %dir.display(), "user namespaces are not supported here");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(mode: cri::NamespaceMode, uids: &[(u32, u32, u32)]) -> cri::UserNamespace {
        let maps = |list: &[(u32, u32, u32)]| {
            list.iter()
                .map(|&(container_id, host_id, length)| cri::IdMapping {
                    container_id,
                    host_id,
                    length,
                })
                .collect::<Vec<_>>()
        };
        cri::UserNamespace {
            mode: mode as i32,
            uids: maps(uids),
            gids: maps(uids),
        }
    }

    #[test]
    fn only_one_mapping_of_container_root_in_pod_mode() {
        use cri::NamespaceMode::*;
        let f = "userns_options";
        let good = requested(Some(&options(Pod, &[(0, 1000, 100000)])), f)
            .unwrap()
            .unwrap();
        assert_eq!(
            good.0,
            Mapping {
                container_id: 0,
                host_id: 1000,
                length: 100000
            }
        );
        assert_eq!(good.0.line(), "0 1000 100000\n");
        assert_eq!(requested(Some(&options(Node, &[])), f).unwrap(), None);
        assert_eq!(requested(None, f).unwrap(), None);
        for bad in [
            options(Pod, &[(0, 1000, 100000), (0, 2000, 100000)]),
            options(Pod, &[(1, 1000, 100000)]),
            options(Pod, &[]),
            options(Pod, &[(0, 1000, 0)]),
            options(Pod, &[(0, u32::MAX, 2)]),
            options(Node, &[(0, 1000, 10)]),
            options(Container, &[(0, 1000, 10)]),
            options(Target, &[(0, 1000, 10)]),
        ] {
            let err = requested(Some(&bad), f).unwrap_err();
            assert_eq!(err.kind(), crate::error::Kind::InvalidArgument, "{bad:?}");
        }
    }
}
