//! Running a CNI plugin binary: the seam between CNI logic and the system, so the logic can
//! be unit tested with a recording fake.

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncWriteExt;

use crate::error::{Error, Result};

pub struct Output {
    pub success: bool,
    pub status: String,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Runs plugin binary `plugin` with the CNI variables `env` and `stdin` as its input.
pub trait Exec: Send + Sync {
    fn run<'a>(
        &'a self,
        plugin: &'a str,
        env: &'a [(String, String)],
        stdin: Vec<u8>,
    ) -> BoxFuture<'a, Result<Output>>;
}

/// Executes the real plugin binaries found in `bin_dirs`.
pub struct ProcessExec {
    pub bin_dirs: Vec<PathBuf>,
    pub timeout: Duration,
}

impl ProcessExec {
    fn find(&self, plugin: &str) -> Result<PathBuf> {
        if plugin.contains('/') {
            return Err(Error::invalid(
                "CNI config",
                format!("plugin type {plugin:?} must be a bare name"),
            ));
        }
        self.bin_dirs
            .iter()
            .map(|d| d.join(plugin))
            .find(|p| p.is_file())
            .ok_or_else(|| {
                let dirs: Vec<String> = self
                    .bin_dirs
                    .iter()
                    .map(|d| d.display().to_string())
                    .collect();
                Error::FailedPrecondition(format!(
                    "CNI plugin {plugin:?} not found in {}",
                    dirs.join(", ")
                ))
            })
    }
}

impl Exec for ProcessExec {
    fn run<'a>(
        &'a self,
        plugin: &'a str,
        env: &'a [(String, String)],
        stdin: Vec<u8>,
    ) -> BoxFuture<'a, Result<Output>> {
        Box::pin(async move {
            let bin = self.find(plugin)?;
            let path =
                std::env::join_paths(&self.bin_dirs).map_err(|e| Error::Internal(e.to_string()))?;
            let mut cmd = tokio::process::Command::new(&bin);
            cmd.env_clear()
                .env("CNI_PATH", path)
                .env(
                    "PATH",
                    "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                )
                .envs(env.iter().map(|(k, v)| (k, v)))
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .kill_on_drop(true);
            let mut child = cmd.spawn().map_err(Error::io("running CNI plugin", &bin))?;
            let mut input = child.stdin.take();
            let run = async {
                if let Some(input) = input.as_mut() {
                    // A plugin that exits without reading all its input is judged by its
                    // exit status and output, not by our broken pipe.
                    match input.write_all(&stdin).await {
                        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
                            return Err(Error::io("writing to CNI plugin", &bin)(e))
                        }
                        _ => {}
                    }
                }
                drop(input);
                child
                    .wait_with_output()
                    .await
                    .map_err(Error::io("waiting for CNI plugin", &bin))
            };
            let out = tokio::time::timeout(self.timeout, run)
                .await
                .map_err(|_| Error::Timeout {
                    what: format!("CNI plugin {}", bin.display()),
                    secs: self.timeout.as_secs(),
                })??;
            Ok(Output {
                success: out.status.success(),
                status: out.status.to_string(),
                stdout: out.stdout,
                stderr: out.stderr,
            })
        })
    }
}
