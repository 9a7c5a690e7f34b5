//! CheckpointContainer, and CreateContainer from a checkpoint archive (how CRI-O and
//! containerd 2 restore): both need CRIU through the OCI runtime. This finds out whether the
//! host can (the runtime built with CRIU, the `criu` binary installed, `criu check` passing
//! on this kernel) and, when it cannot, refuses with FailedPrecondition saying exactly which
//! part is missing. Writing and reading the archives is not built yet: where the host can,
//! the RPCs say so (Unimplemented).

use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use podrun_proto::cri;

use crate::container::State;
use crate::error::{Error, Result};
use crate::node::Node;

pub async fn checkpoint(node: Arc<Node>, req: cri::CheckpointContainerRequest) -> Result<()> {
    let r = node.containers.get(&req.container_id)?.view();
    if r.state != State::Running {
        return Err(Error::FailedPrecondition(format!(
            "container {} is {:?}: only running containers can be checkpointed",
            r.id, r.state
        )));
    }
    let location = Path::new(&req.location);
    if !location.is_absolute() || !location.parent().is_some_and(Path::is_dir) {
        return Err(Error::invalid(
            "location",
            format!(
                "{:?} must be an absolute path in an existing directory",
                req.location
            ),
        ));
    }
    let runtime = r.runtime.clone();
    let support = tokio::task::spawn_blocking(move || support(&runtime))
        .await
        .map_err(|e| Error::Internal(format!("probing CRIU: {e}")))?;
    match support {
        Err(missing) => Err(Error::FailedPrecondition(format!(
            "checkpointing container {}: {missing}",
            r.id
        ))),
        Ok(()) => Err(Error::Unimplemented("CheckpointContainer archives")),
    }
}

/// Why CreateContainer cannot restore the checkpoint archive its image names.
pub fn restore(archive: &str, runtime: &Path) -> Error {
    match support(runtime) {
        Err(missing) => Error::FailedPrecondition(format!(
            "config.image.image {archive:?} is a checkpoint archive; restoring it: {missing}"
        )),
        Ok(()) => Error::Unimplemented("restoring checkpoint archives"),
    }
}

/// Whether checkpoint and restore can work with `runtime` on this host; what is missing.
pub fn support(runtime: &Path) -> std::result::Result<(), String> {
    let name = runtime
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default();
    if name == "crun" {
        let version = output(Command::new(runtime).arg("--version")).unwrap_or_default();
        if !version.contains("+CRIU") {
            let first = version.lines().next().unwrap_or("crun").to_owned();
            return Err(format!(
                "the OCI runtime {} ({first}) is built without CRIU: `crun --version` does not list +CRIU; use a handler whose runtime is runc",
                runtime.display()
            ));
        }
    }
    let check = Command::new("criu").arg("check").output().map_err(|e| {
        format!("criu is not installed or cannot run ({e}): install Debian's criu package")
    })?;
    if !check.status.success() {
        let text = String::from_utf8_lossy(&check.stderr).to_string()
            + &String::from_utf8_lossy(&check.stdout);
        let errors: Vec<&str> = text
            .lines()
            .filter(|l| l.contains("Error"))
            .take(3)
            .collect();
        let kernel = nix::sys::utsname::uname()
            .map(|u| u.release().to_string_lossy().into_owned())
            .unwrap_or_default();
        return Err(format!(
            "`criu check` fails on this kernel ({kernel}): {}",
            errors.join(" / ")
        ));
    }
    Ok(())
}

fn output(cmd: &mut Command) -> Option<String> {
    let out = cmd.output().ok()?;
    Some(String::from_utf8_lossy(&out.stdout).into_owned())
}
