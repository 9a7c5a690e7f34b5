//! Durable records: JSON written atomically (temp file, fsync, rename, fsync of the
//! directory), each carrying a format version, plus the small identity helpers that
//! recovery needs (ids, process identity by pid + start time).

use std::fs::{self, File};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Writes `value` to `path` so that readers see the old or the new record, never a mix,
/// and a power cut leaves one of the two, whole.
pub fn write_atomic<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    write_bytes_atomic(path, &encode(path, value)?)
}

pub fn write_bytes_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    publish(path, bytes)?;
    sync_dir(path)
}

/// [`write_atomic`] but for the directory's fsync, left to a later [`sync_dir`]: the new
/// content is whole and synced when it appears, but may lose its name to a power cut
/// until then.
pub fn write_content<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    publish(path, &encode(path, value)?)
}

/// Writes `value` to `path` atomically (whole or not at all) but not durably: for files
/// under the volatile state directory, which does not outlive a reboot anyway (a tmpfs on
/// most nodes).
pub fn write_volatile<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    let tmp = temporary(path)?;
    fs::write(&tmp, encode(path, value)?).map_err(Error::io("writing", &tmp))?;
    fs::rename(&tmp, path).map_err(Error::io("renaming into place", path))
}

/// Makes the name of a file written into `path`'s directory durable.
pub fn sync_dir(path: &Path) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("/"));
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(Error::io("syncing", dir))
}

fn encode<T: Serialize>(path: &Path, value: &T) -> Result<Vec<u8>> {
    serde_json::to_vec_pretty(value)
        .map_err(|e| Error::Internal(format!("encoding {}: {e}", path.display())))
}

/// Writes `bytes` to a temporary file, syncs it and renames it to `path`.
fn publish(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = temporary(path)?;
    let mut f = File::create(&tmp).map_err(Error::io("creating", &tmp))?;
    f.write_all(bytes)
        .and_then(|_| f.sync_all())
        .map_err(Error::io("writing", &tmp))?;
    fs::rename(&tmp, path).map_err(Error::io("renaming into place", path))
}

/// The temporary name `path` is written under before it is renamed into place.
fn temporary(path: &Path) -> Result<PathBuf> {
    let dir = path
        .parent()
        .ok_or_else(|| Error::Internal(format!("{} has no parent", path.display())))?;
    Ok(dir.join(format!(
        ".{}.tmp",
        path.file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("record")
    )))
}

pub fn read_json<T: DeserializeOwned>(path: &Path) -> Result<T> {
    let bytes = fs::read(path).map_err(Error::io("reading", path))?;
    serde_json::from_slice(&bytes)
        .map_err(|e| Error::Internal(format!("decoding {}: {e}", path.display())))
}

/// A new object id: 64 lowercase hex characters from the kernel's random source.
pub fn new_id() -> Result<String> {
    let mut buf = [0u8; 32];
    File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .map_err(Error::io("reading", "/dev/urandom"))?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

/// Looks up an object by its full id or by a prefix that names exactly one (crictl passes
/// unique prefixes). `field` names the request field in errors; `what` the kind of object.
pub fn by_id_or_prefix<T: Clone>(
    map: &std::collections::HashMap<String, T>,
    id: &str,
    field: &'static str,
    what: &'static str,
) -> Result<T> {
    if id.is_empty() {
        return Err(Error::invalid(field, "must not be empty"));
    }
    if let Some(found) = map.get(id) {
        return Ok(found.clone());
    }
    let mut found = map
        .iter()
        .filter(|(k, _)| k.starts_with(id))
        .map(|(_, v)| v);
    match (found.next(), found.next()) {
        (Some(one), None) => Ok(one.clone()),
        (Some(_), Some(_)) => Err(Error::invalid(
            field,
            format!("prefix {id:?} matches more than one {what}"),
        )),
        _ => Err(Error::NotFound {
            what,
            id: id.to_owned(),
        }),
    }
}

/// A process as recovery must judge it: the pid alone may have been reused since.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessId {
    pub pid: i32,
    /// Field 22 of /proc/PID/stat: clock ticks after boot when it started.
    pub start_time: u64,
}

impl ProcessId {
    pub fn of(pid: i32) -> Option<ProcessId> {
        start_time(pid).map(|start_time| ProcessId { pid, start_time })
    }

    /// True while the very process we recorded is alive (and not a zombie).
    pub fn is_alive(&self) -> bool {
        // One read of /proc/PID/stat: field 3 is the state, field 22 the start time.
        stat_fields(self.pid).is_some_and(|f| {
            f.get(19).and_then(|t| t.parse().ok()) == Some(self.start_time)
                && !matches!(f.first().map(String::as_str), Some("Z" | "X"))
        })
    }

    /// A pidfd for the process, if it is still the one we recorded: it turns readable when
    /// the process exits.
    pub fn pidfd(&self) -> Option<std::os::fd::OwnedFd> {
        // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, self.pid, 0) };
        if fd < 0 {
            return None;
        }
        // SAFETY: the kernel just gave us this fd, and nothing else owns it.
        let fd =
            unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd as i32) };
        // Checked after opening: the fd now pins this pid, so the start time names it.
        self.is_alive().then_some(fd)
    }

    /// Returns once the process has exited (at once if it is not the one we recorded).
    pub async fn exited(self) {
        let fd = self.pidfd().and_then(|fd| {
            // SAFETY: the AsyncFd owns the OwnedFd, which stays open and unchanged until
            // the AsyncFd is dropped.
            unsafe {
                tokio::io::unix::AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE)
            }
            .ok()
        });
        match fd {
            Some(fd) => {
                let _ = fd.readable().await;
            }
            // No fd to wait on (out of fds?): look once a second.
            None => {
                while self.is_alive() {
                    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                }
            }
        }
    }

    /// SIGKILLs the process if it is still the one we recorded.
    pub fn kill(&self) {
        if self.is_alive() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(self.pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

fn stat_fields(pid: i32) -> Option<Vec<String>> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: split after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    Some(rest.split_whitespace().map(str::to_owned).collect())
}

fn start_time(pid: i32) -> Option<u64> {
    stat_fields(pid)?.get(19)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_round_trips_and_leaves_no_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.json");
        write_atomic(&path, &vec![1, 2, 3]).unwrap();
        write_atomic(&path, &vec![4]).unwrap();
        assert_eq!(read_json::<Vec<i32>>(&path).unwrap(), vec![4]);
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn ids_are_64_lowercase_hex_and_distinct() {
        let (a, b) = (new_id().unwrap(), new_id().unwrap());
        assert_eq!(a.len(), 64);
        assert!(a
            .chars()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
        assert_ne!(a, b);
    }

    #[test]
    fn process_identity_tells_a_live_process_from_a_reused_pid() {
        let me = ProcessId::of(std::process::id() as i32).unwrap();
        assert!(me.is_alive());
        assert!(!ProcessId {
            start_time: me.start_time + 1,
            ..me
        }
        .is_alive());
    }
}

/// Per-key async locks (one pod identity, container name, image name or layer at a time)
/// that exist only while someone holds or waits for one, so the map does not grow with
/// every key ever used.
pub struct KeyedLocks<K>(std::sync::Mutex<std::collections::HashMap<K, LockRef>>);

type LockRef = std::sync::Arc<tokio::sync::Mutex<()>>;

impl<K> Default for KeyedLocks<K> {
    fn default() -> Self {
        KeyedLocks(Default::default())
    }
}

impl<K: Eq + std::hash::Hash> KeyedLocks<K> {
    pub fn get(&self, key: K) -> LockRef {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        // An entry only the map refers to is idle: the next caller may make a new one.
        map.retain(|_, lock| std::sync::Arc::strong_count(lock) > 1);
        map.entry(key).or_default().clone()
    }
}

#[cfg(test)]
mod keyed_lock_tests {
    use super::*;

    fn len<K>(locks: &KeyedLocks<K>) -> usize {
        locks.0.lock().unwrap().len()
    }

    #[test]
    fn idle_locks_are_dropped_and_held_ones_shared() {
        let locks = KeyedLocks::default();
        let a = locks.get("a");
        assert!(
            std::sync::Arc::ptr_eq(&a, &locks.get("a")),
            "one lock per key"
        );
        for i in 0..100 {
            drop(locks.get(format!("k{i}").leak() as &str));
        }
        assert!(len(&locks) <= 2, "idle keys are pruned: {}", len(&locks));
        drop(a);
        locks.get("b");
        assert_eq!(len(&locks), 1);
    }
}
