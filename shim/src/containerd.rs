//! The shim under containerd: the `start` and `delete` commands containerd runs (in the
//! bundle, with `-namespace`, `-address`, `-publish-binary`, `-id`), and task events
//! published back to containerd over its ttrpc socket (`TTRPC_ADDRESS`).
//!
//! `start` groups every container of a pod into one shim, as containerd's runc shim does:
//! the socket is named by a hash of containerd's address, the namespace and the grouping
//! key (the spec's `io.kubernetes.cri.sandbox-id` annotation, else the task id), so the
//! `start` of a pod's second container finds the first one's shim listening and answers
//! with its address.

use std::io::Write;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};
use containerd_shim_protos::api;
use containerd_shim_protos::protobuf::well_known_types::any::Any;
use containerd_shim_protos::protobuf::{Message, MessageFull};
use containerd_shim_protos::shim_async::{Client, EventsClient};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use crate::Args;

/// Where containerd's own shims put their sockets.
const SOCKET_DIR: &str = "/run/containerd/s";
/// Annotations that put containers in one shim, as containerd's runc shim reads them.
const GROUP_ANNOTATIONS: [&str; 2] = [
    "io.containerd.runc.v2.group",
    "io.kubernetes.cri.sandbox-id",
];

fn socket_path(address: &str, namespace: &str, group: &str) -> PathBuf {
    let key = Path::new(address).join(namespace).join(group);
    let hash = Sha256::digest(key.as_os_str().as_encoded_bytes());
    let hex: String = hash.iter().map(|b| format!("{b:02x}")).collect();
    Path::new(SOCKET_DIR).join(hex)
}

fn group_of(bundle: &Path, id: &str) -> String {
    let spec: serde_json::Value = std::fs::read(bundle.join("config.json"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    GROUP_ANNOTATIONS
        .iter()
        .find_map(|a| spec["annotations"][a].as_str())
        .unwrap_or(id)
        .to_owned()
}

/// `start`: answers with the address of the pod's shim, starting it if it is not running.
pub fn start(args: &Args) -> Result<()> {
    let bundle = std::env::current_dir().context("the bundle (cwd)")?;
    let group = group_of(&bundle, &args.id);
    let path = socket_path(&args.address, &args.namespace, &group);
    let address = format!("unix://{}", path.display());
    std::fs::create_dir_all(SOCKET_DIR).with_context(|| format!("creating {SOCKET_DIR}"))?;
    let listener = match UnixListener::bind(&path) {
        Ok(l) => Some(l),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
            if UnixStream::connect(&path).is_ok() {
                None
            } else {
                // A shim that died without removing its socket.
                std::fs::remove_file(&path).with_context(|| format!("removing {path:?}"))?;
                Some(UnixListener::bind(&path).with_context(|| format!("binding {path:?}"))?)
            }
        }
        Err(e) => return Err(e).with_context(|| format!("binding {path:?}")),
    };
    if let Some(listener) = listener {
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
        if let Err(e) = spawn_server(args, &bundle, listener.into()) {
            let _ = std::fs::remove_file(&path);
            return Err(e);
        }
    }
    std::fs::write(bundle.join("address"), &address).context("writing the address file")?;
    let mut out = std::io::stdout();
    out.write_all(address.as_bytes())?;
    out.flush()?;
    Ok(())
}

/// Runs this binary in serve mode, in a session of its own, with `listener` as fd 3.
fn spawn_server(args: &Args, bundle: &Path, listener: OwnedFd) -> Result<()> {
    let raw = listener.as_raw_fd();
    let mut cmd = Command::new(std::env::current_exe()?);
    cmd.args([
        "-namespace",
        &args.namespace,
        "-id",
        &args.id,
        "-address",
        &args.address,
    ]);
    if args.debug {
        cmd.arg("-debug");
    }
    // Shim logs go to the `log` FIFO containerd reads in the bundle, when there is one.
    let log = std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(bundle.join("log"))
        .ok();
    cmd.current_dir(bundle)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log.map_or(Stdio::null(), Stdio::from));
    // SAFETY: the hook runs in the forked child before exec and makes only async-signal-safe
    // syscalls (setsid, dup2, fcntl) on an fd that stays open until the exec.
    unsafe {
        cmd.pre_exec(move || {
            nix::unistd::setsid()?;
            let ok = match raw {
                3 => libc::fcntl(3, libc::F_SETFD, 0) >= 0,
                _ => libc::dup2(raw, 3) >= 0,
            };
            match ok {
                true => Ok(()),
                false => Err(std::io::Error::last_os_error()),
            }
        });
    }
    let child = cmd.spawn().context("starting the shim server")?;
    drop(listener);
    std::fs::write(bundle.join("shim.pid"), child.id().to_string()).context("writing shim.pid")?;
    // The server lives on in its own session; init reaps it once `start` has exited.
    std::mem::forget(child);
    Ok(())
}

/// `delete`: containerd lost the shim; force-delete the container and unmount its rootfs.
/// Prints a DeleteResponse (SIGKILL's status) as containerd expects.
pub fn delete(args: &Args) -> Result<()> {
    let bundle = match args.bundle.is_empty() {
        true => std::env::current_dir()?,
        false => PathBuf::from(&args.bundle),
    };
    let spec: serde_json::Value = std::fs::read(bundle.join("config.json"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    let runtime = spec["annotations"][crate::oci::RUNTIME_ANNOTATION]
        .as_str()
        .unwrap_or("runc")
        .to_owned();
    let status = Command::new(&runtime)
        .args(["delete", "--force", &args.id])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    if let Err(e) = status {
        eprintln!("{runtime} delete: {e}");
    }
    crate::mounts::unmount_rootfs(&bundle);
    let resp = api::DeleteResponse {
        exit_status: 128 + libc::SIGKILL as u32,
        exited_at: crate::task::timestamp(std::time::SystemTime::now()),
        ..Default::default()
    };
    let bytes = resp.write_to_bytes()?;
    std::io::stdout().write_all(&bytes)?;
    Ok(())
}

/// Events waiting for containerd at most; past that, new ones are dropped (and logged).
const EVENT_BACKLOG: usize = 1024;

/// Task events for containerd, sent in order by one task. Without `TTRPC_ADDRESS` (podrund
/// starts the shim itself and watches tasks by Wait) events go nowhere.
#[derive(Clone)]
pub struct Publisher {
    tx: Option<mpsc::Sender<(String, Any)>>,
}

impl Publisher {
    pub fn none() -> Publisher {
        Publisher { tx: None }
    }

    /// Whether a containerd listens to these events (the shim runs under containerd).
    pub fn active(&self) -> bool {
        self.tx.is_some()
    }

    pub fn connect(namespace: String) -> Result<Publisher> {
        let Ok(address) = std::env::var("TTRPC_ADDRESS") else {
            return Ok(Publisher::none());
        };
        if address.is_empty() {
            bail!("TTRPC_ADDRESS is empty");
        }
        // Bounded: a containerd that stops reading must not grow the shim without end.
        let (tx, mut rx) = mpsc::channel::<(String, Any)>(EVENT_BACKLOG);
        let address = match address.starts_with("unix://") {
            true => address,
            false => format!("unix://{address}"),
        };
        tokio::spawn(async move {
            let mut client = None;
            while let Some((topic, event)) = rx.recv().await {
                if client.is_none() {
                    client = Client::connect(&address).await.ok().map(EventsClient::new);
                }
                let Some(c) = &client else {
                    tracing::warn!(topic, "no connection to containerd; event dropped");
                    continue;
                };
                let req = api::ForwardRequest {
                    envelope: Some(containerd_shim_protos::shim::event::Envelope {
                        timestamp: crate::task::timestamp(std::time::SystemTime::now()),
                        namespace: namespace.clone(),
                        topic: topic.clone(),
                        event: Some(event).into(),
                        ..Default::default()
                    })
                    .into(),
                    ..Default::default()
                };
                let ctx = containerd_shim_protos::ttrpc::context::with_timeout(5_000_000_000);
                if let Err(e) = c.forward(ctx, &req).await {
                    tracing::warn!(topic, error = %e, "publishing event");
                    client = None;
                }
            }
        });
        Ok(Publisher { tx: Some(tx) })
    }

    pub fn publish<M: MessageFull>(&self, topic: &str, event: M) {
        let Some(tx) = &self.tx else { return };
        let any = Any {
            type_url: M::descriptor().full_name().to_owned(),
            value: event.write_to_bytes().unwrap_or_default(),
            ..Default::default()
        };
        if tx.try_send((topic.to_owned(), any)).is_err() {
            tracing::warn!(topic, "event backlog full; event dropped");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pods_containers_share_one_socket_and_pods_do_not() {
        let dir = std::env::temp_dir().join(format!("podrun-group-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let spec = r#"{"annotations":{"io.kubernetes.cri.sandbox-id":"pod1"}}"#;
        std::fs::write(dir.join("config.json"), spec).unwrap();
        assert_eq!(group_of(&dir, "ctr1"), "pod1");
        std::fs::write(dir.join("config.json"), "{}").unwrap();
        assert_eq!(group_of(&dir, "ctr2"), "ctr2");
        let _ = std::fs::remove_dir_all(&dir);
        let a = socket_path("/run/containerd/containerd.sock", "k8s.io", "pod1");
        assert_eq!(
            a,
            socket_path("/run/containerd/containerd.sock", "k8s.io", "pod1")
        );
        assert_ne!(
            a,
            socket_path("/run/containerd/containerd.sock", "k8s.io", "pod2")
        );
        assert_ne!(
            a,
            socket_path("/run/containerd/containerd.sock", "default", "pod1")
        );
        assert!(a.starts_with(SOCKET_DIR) && a.as_os_str().len() < 100);
    }
}
