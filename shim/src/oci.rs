//! Driving an OCI runtime binary (runc, crun) for one container: `create` with the
//! container's stdout and stderr on pipes the shim reads into the CRI log, `start`, `exec
//! --detach` for extra processes, `kill --all`, `delete`. The runtime's own messages go to
//! `<bundle>/runtime.log` (JSON), from which a failure's reason is read.

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;

use anyhow::{bail, Context, Result};

use crate::reaper::{exited, Reaper};

/// Annotation naming the runtime binary to use (podrund sets it from the runtime handler).
pub const RUNTIME_ANNOTATION: &str = "io.podrun.oci-runtime";

#[derive(Clone)]
pub struct Runtime {
    pub binary: PathBuf,
    pub bundle: PathBuf,
    pub id: String,
    pub reaper: Arc<Reaper>,
}

/// The output ends of a process: each is a file, a FIFO, or nothing.
pub struct Stdio3 {
    pub stdin: Stdio,
    pub stdout: Stdio,
    pub stderr: Stdio,
}

impl Stdio3 {
    pub fn null() -> Stdio3 {
        Stdio3 {
            stdin: Stdio::null(),
            stdout: Stdio::null(),
            stderr: Stdio::null(),
        }
    }
}

/// A pipe whose read end stays with the shim: (read end, write end for the child).
pub fn pipe() -> Result<(OwnedFd, OwnedFd)> {
    Ok(nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?)
}

impl Runtime {
    fn log_path(&self) -> PathBuf {
        self.bundle.join("runtime.log")
    }

    /// Runs `<runtime> --log ... <args>` to its end, through the shim's reaper.
    async fn run(&self, args: &[&str], stdio: Stdio3) -> Result<()> {
        let mut cmd = Command::new(&self.binary);
        cmd.arg("--log")
            .arg(self.log_path())
            .args(["--log-format", "json"])
            .args(args);
        // Every path is absolute and no working directory is set, so the standard library
        // spawns with posix_spawn instead of a fork of the shim.
        cmd.stdin(stdio.stdin)
            .stdout(stdio.stdout)
            .stderr(stdio.stderr);
        let child = cmd
            .spawn()
            .with_context(|| format!("running {}", self.binary.display()))?;
        // Registered before any await, so the reaper cannot collect it first.
        let exit = self.reaper.watch(child.id() as i32);
        drop(cmd);
        let status = exited(exit).await.map(|e| e.status).unwrap_or(255);
        if status != 0 {
            bail!(
                "{} {}: {}",
                self.binary.display(),
                args.first().unwrap_or(&""),
                self.last_error()
                    .unwrap_or_else(|| format!("exit status {status}"))
            );
        }
        Ok(())
    }

    /// The last error the runtime logged, if any.
    fn last_error(&self) -> Option<String> {
        let text = std::fs::read_to_string(self.log_path()).ok()?;
        text.lines().rev().find_map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).ok()?;
            (v["level"] == "error").then(|| v["msg"].as_str().unwrap_or_default().to_owned())
        })
    }

    fn read_pid(path: &Path) -> Result<i32> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        text.trim()
            .parse()
            .with_context(|| format!("pid file {} holds {text:?}", path.display()))
    }

    /// `create`: the container's init exists, stopped before the user's process. With a
    /// console socket, the runtime sends the terminal's master there.
    pub async fn create(&self, stdio: Stdio3, console: Option<&Path>) -> Result<i32> {
        let pid_file = self.bundle.join("init.pid");
        let (bundle, pid) = (
            self.bundle.display().to_string(),
            pid_file.display().to_string(),
        );
        let mut args = vec!["create", "--bundle", &bundle, "--pid-file", &pid];
        let console = console.map(|c| c.display().to_string());
        if let Some(c) = &console {
            args.extend(["--console-socket", c]);
        }
        args.push(&self.id);
        self.run(&args, stdio).await?;
        Self::read_pid(&pid_file)
    }

    pub async fn start(&self) -> Result<()> {
        self.run(&["start", &self.id], Stdio3::null()).await
    }

    /// `exec --detach` of the process in `process_json`; returns its pid.
    pub async fn exec(
        &self,
        exec_id: &str,
        process_json: &[u8],
        stdio: Stdio3,
        console: Option<&Path>,
    ) -> Result<i32> {
        let spec = self.bundle.join(format!("exec-{exec_id}.json"));
        let pid_file = self.bundle.join(format!("exec-{exec_id}.pid"));
        std::fs::write(&spec, process_json)?;
        let (s, p) = (spec.display().to_string(), pid_file.display().to_string());
        let mut args = vec!["exec", "--process", &s, "--pid-file", &p, "--detach"];
        let console = console.map(|c| c.display().to_string());
        if let Some(c) = &console {
            args.extend(["--console-socket", c]);
        }
        args.push(&self.id);
        let result = self.run(&args, stdio).await;
        let pid = result.and_then(|_| Self::read_pid(&pid_file));
        let _ = std::fs::remove_file(&spec);
        let _ = std::fs::remove_file(&pid_file);
        pid
    }

    pub async fn pause(&self) -> Result<()> {
        self.run(&["pause", &self.id], Stdio3::null()).await
    }

    pub async fn resume(&self) -> Result<()> {
        self.run(&["resume", &self.id], Stdio3::null()).await
    }

    /// `update --resources`: `resources` is an OCI LinuxResources object in JSON.
    pub async fn update(&self, resources: &[u8]) -> Result<()> {
        let path = self.bundle.join("update-resources.json");
        std::fs::write(&path, resources)?;
        let p = path.display().to_string();
        let result = self
            .run(&["update", "--resources", &p, &self.id], Stdio3::null())
            .await;
        let _ = std::fs::remove_file(&path);
        result
    }

    pub async fn kill_all(&self, signal: i32) -> Result<()> {
        self.run(
            &["kill", "--all", &self.id, &signal.to_string()],
            Stdio3::null(),
        )
        .await
    }

    pub async fn delete(&self) -> Result<()> {
        self.run(&["delete", "--force", &self.id], Stdio3::null())
            .await
    }
}
