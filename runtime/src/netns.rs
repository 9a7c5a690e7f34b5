//! Network namespaces pinned by bind mount under `/run/netns`, as iproute2 and containerd
//! pin them. The namespace is created on a dedicated, short-lived thread: `unshare` changes
//! only the calling thread, which must never be a tokio worker. Its loopback is brought up
//! there too, whatever the node's CNI configuration holds: Flannel's, Calico's and Cilium's
//! conflists have no `loopback` plugin, and a pod without `lo` has no localhost.

use std::fs::{self, OpenOptions};
use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{unshare, CloneFlags};

use crate::error::{Error, Result};

/// Creates a new network namespace and pins it at `dir/name`.
pub fn create(dir: &Path, name: &str) -> Result<PathBuf> {
    ensure_shared_dir(dir)?;
    let path = dir.join(name);
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)
        .map_err(Error::io("creating netns pin", &path))?;
    let target = path.clone();
    let pinned = std::thread::spawn(move || -> Result<()> {
        unshare(CloneFlags::CLONE_NEWNET).map_err(Error::sys("unshare(CLONE_NEWNET)"))?;
        loopback_up().map_err(Error::sys("bringing up lo in the new netns"))?;
        let own = format!("/proc/self/task/{}/ns/net", nix::unistd::gettid());
        mount(
            Some(own.as_str()),
            &target,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(Error::sys(format!(
            "bind-mounting {own} on {}",
            target.display()
        )))
        // The thread ends here, and its namespace with it unless the pin holds it.
    })
    .join()
    .unwrap_or_else(|_| Err(Error::Internal("netns thread panicked".into())));
    if let Err(e) = pinned {
        let _ = fs::remove_file(&path);
        return Err(e);
    }
    Ok(path)
}

/// Sets `lo` up in the calling thread's network namespace (what `ip link set lo up` does,
/// with one ioctl instead of an exec). The kernel gives `lo` 127.0.0.1/8 and ::1 as it
/// comes up.
pub(crate) fn loopback_up() -> nix::Result<()> {
    use std::os::fd::AsRawFd;
    let sock = nix::sys::socket::socket(
        nix::sys::socket::AddressFamily::Inet,
        nix::sys::socket::SockType::Datagram,
        nix::sys::socket::SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    // SAFETY: ifreq is plain old data; all zeroes is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *dst = *src as libc::c_char;
    }
    // SAFETY: `req` is a valid, NUL-terminated ifreq that outlives both calls, and the
    // ioctls read or write only its flags member.
    unsafe {
        nix::errno::Errno::result(libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req))?;
        req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
        nix::errno::Errno::result(libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req))?;
    }
    Ok(())
}

/// Unpins and removes `path`. A pin that is already gone is not an error.
pub fn remove(path: &Path) -> Result<()> {
    match umount2(path, MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::Error::EINVAL) | Err(nix::Error::ENOENT) => {}
        Err(e) => return Err(Error::sys(format!("unmounting {}", path.display()))(e)),
    }
    match fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(Error::io("removing netns pin", path)(e))
        }
        _ => Ok(()),
    }
}

/// Is `path` a pinned namespace (a mount point of nsfs)?
pub fn is_pinned(path: &Path) -> bool {
    nix::sys::statfs::statfs(path)
        .is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::NSFS_MAGIC)
}

/// Makes `dir` a shared mount point, as `ip netns add` does, so that pins made here are
/// seen in mount namespaces created later (containers, other daemons).
pub(crate) fn ensure_shared_dir(dir: &Path) -> Result<()> {
    fs::create_dir_all(dir).map_err(Error::io("creating", dir))?;
    let shared = || {
        mount(
            None::<&str>,
            dir,
            None::<&str>,
            MsFlags::MS_SHARED | MsFlags::MS_REC,
            None::<&str>,
        )
    };
    match shared() {
        Ok(()) => Ok(()),
        Err(nix::Error::EINVAL) => {
            // Not a mount point yet: bind it onto itself first.
            mount(
                Some(dir),
                dir,
                None::<&str>,
                MsFlags::MS_BIND | MsFlags::MS_REC,
                None::<&str>,
            )
            .and_then(|_| shared())
            .map_err(Error::sys(format!(
                "making {} a shared mount",
                dir.display()
            )))
        }
        Err(e) => Err(Error::sys(format!(
            "making {} a shared mount",
            dir.display()
        ))(e)),
    }
}
