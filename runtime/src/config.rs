//! podrund's configuration: one TOML file whose keys are the command-line flag names
//! (`root = "/var/lib/podrun"`, `cni-conf-dir = "..."`), every key optional. Flags override
//! the file; the file overrides the defaults.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::{Error, Result};

pub const DEFAULT_CONFIG: &str = "/etc/podrun/config.toml";

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct File {
    pub listen: Option<PathBuf>,
    pub root: Option<PathBuf>,
    pub state: Option<PathBuf>,
    pub cni_conf_dir: Option<PathBuf>,
    pub cni_bin_dir: Option<Vec<PathBuf>>,
    /// Where CDI spec files are, in rising priority (a later dir's device wins).
    pub cdi_spec_dir: Option<Vec<PathBuf>>,
    /// The NRI socket plugins connect to; NRI is off when unset or empty.
    pub nri_socket: Option<PathBuf>,
    pub log_level: Option<String>,
    pub log_format: Option<String>,
    pub registry_config_path: Option<PathBuf>,
    pub streaming_address: Option<String>,
    pub metrics_address: Option<String>,
    pub streaming_token_ttl: Option<u64>,
    pub registry_timeout: Option<u64>,
    pub cni_timeout: Option<u64>,
    /// RuntimeClass handlers: name -> OCI runtime binary (a path, or a name on PATH).
    pub runtime_handler: Option<std::collections::BTreeMap<String, PathBuf>>,
    /// The handler pods that name none (`""`) run with.
    pub default_runtime_handler: Option<String>,
}

impl File {
    /// Reads `path`; a missing file is an empty configuration only when `required` is false.
    pub fn load(path: &Path, required: bool) -> Result<File> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => {
                return Ok(File::default())
            }
            Err(e) => return Err(Error::io("reading config", path)(e)),
        };
        toml::from_str(&text)
            .map_err(|e| Error::invalid("config", format!("{}: {e}", path.display())))
    }

    /// Keys set in `over` win over ours.
    pub fn overlay(self, over: File) -> File {
        File {
            listen: over.listen.or(self.listen),
            root: over.root.or(self.root),
            state: over.state.or(self.state),
            cni_conf_dir: over.cni_conf_dir.or(self.cni_conf_dir),
            cni_bin_dir: over.cni_bin_dir.or(self.cni_bin_dir),
            cdi_spec_dir: over.cdi_spec_dir.or(self.cdi_spec_dir),
            nri_socket: over.nri_socket.or(self.nri_socket),
            log_level: over.log_level.or(self.log_level),
            log_format: over.log_format.or(self.log_format),
            registry_config_path: over.registry_config_path.or(self.registry_config_path),
            streaming_address: over.streaming_address.or(self.streaming_address),
            metrics_address: over.metrics_address.or(self.metrics_address),
            streaming_token_ttl: over.streaming_token_ttl.or(self.streaming_token_ttl),
            registry_timeout: over.registry_timeout.or(self.registry_timeout),
            cni_timeout: over.cni_timeout.or(self.cni_timeout),
            runtime_handler: match (self.runtime_handler, over.runtime_handler) {
                (Some(mut ours), Some(theirs)) => {
                    ours.extend(theirs);
                    Some(ours)
                }
                (ours, theirs) => theirs.or(ours),
            },
            default_runtime_handler: over
                .default_runtime_handler
                .or(self.default_runtime_handler),
        }
    }
}

/// The resolved configuration the daemon runs with.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: PathBuf,
    /// Durable metadata (records, CNI results).
    pub root: PathBuf,
    /// Volatile state (shim sockets, pod files, /dev/shm mounts).
    pub state: PathBuf,
    pub cni_conf_dir: PathBuf,
    pub cni_bin_dirs: Vec<PathBuf>,
    /// CDI spec dirs, lowest priority first.
    pub cdi_spec_dirs: Vec<PathBuf>,
    /// Where NRI plugins connect; None: NRI is off.
    pub nri_socket: Option<PathBuf>,
    pub log_level: String,
    /// `text` (the default) or `json`: one JSON object per line.
    pub log_format: String,
    /// Where pod network namespaces are pinned (shared by every instance on the node).
    pub netns_dir: PathBuf,
    /// containerd-style registry hosts directory (`<host>/hosts.toml`).
    pub registry_config_path: PathBuf,
    /// Where the streaming server (exec, attach, port-forward URLs) listens: host:port,
    /// port 0 for any free one.
    pub streaming_address: String,
    /// host:port of podrund's Prometheus endpoint (`/metrics`); off when None.
    pub metrics_address: Option<String>,
    /// Seconds an exec, attach or port-forward URL stays valid unused.
    pub streaming_token_ttl: u64,
    /// Seconds a registry may take to accept a connection, or to send the next bytes of
    /// an answer, before the pull fails.
    pub registry_timeout: u64,
    /// Seconds one CNI plugin call may take before it is killed and the step fails.
    pub cni_timeout: u64,
    /// RuntimeClass handler name -> OCI runtime binary; `runc` and `crun` are always there.
    pub runtime_handlers: std::collections::BTreeMap<String, PathBuf>,
    /// The handler for pods that name none; None: crun where it can run here, else runc.
    pub default_runtime_handler: Option<String>,
}

impl From<File> for Config {
    fn from(f: File) -> Config {
        let state = f.state.unwrap_or_else(|| "/run/podrun".into());
        Config {
            listen: f.listen.unwrap_or_else(|| state.join("podrun.sock")),
            root: f.root.unwrap_or_else(|| "/var/lib/podrun".into()),
            state,
            cni_conf_dir: f.cni_conf_dir.unwrap_or_else(|| "/etc/cni/net.d".into()),
            cni_bin_dirs: f
                .cni_bin_dir
                .unwrap_or_else(|| vec!["/opt/cni/bin".into(), "/usr/lib/cni".into()]),
            nri_socket: f.nri_socket.filter(|s| !s.as_os_str().is_empty()),
            cdi_spec_dirs: f
                .cdi_spec_dir
                .unwrap_or_else(|| vec!["/etc/cdi".into(), "/var/run/cdi".into()]),
            log_level: f.log_level.unwrap_or_else(|| "info".into()),
            log_format: f.log_format.unwrap_or_else(|| "text".into()),
            netns_dir: "/run/netns".into(),
            registry_config_path: f
                .registry_config_path
                .unwrap_or_else(|| "/etc/podrun/certs.d".into()),
            streaming_address: f.streaming_address.unwrap_or_else(|| "127.0.0.1:0".into()),
            metrics_address: f.metrics_address.filter(|a| !a.is_empty()),
            streaming_token_ttl: f.streaming_token_ttl.unwrap_or(60),
            registry_timeout: f.registry_timeout.unwrap_or(60).max(1),
            cni_timeout: f.cni_timeout.unwrap_or(60).max(1),
            runtime_handlers: [("runc", "runc"), ("crun", "crun")]
                .into_iter()
                .map(|(k, v)| (k.to_owned(), PathBuf::from(v)))
                .chain(f.runtime_handler.unwrap_or_default())
                .collect(),
            default_runtime_handler: f.default_runtime_handler,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_override_file_and_defaults_fill_the_rest() {
        let file: File =
            toml::from_str("root = \"/r\"\ncni-conf-dir = \"/c\"\nlog-level = \"debug\"").unwrap();
        let flags = File {
            root: Some("/flag".into()),
            ..File::default()
        };
        let c = Config::from(file.overlay(flags));
        assert_eq!(c.root, PathBuf::from("/flag"));
        assert_eq!(c.cni_conf_dir, PathBuf::from("/c"));
        assert_eq!(c.log_level, "debug");
        assert_eq!(c.listen, PathBuf::from("/run/podrun/podrun.sock"));
        assert_eq!(
            c.cni_bin_dirs,
            vec![PathBuf::from("/opt/cni/bin"), PathBuf::from("/usr/lib/cni")]
        );
    }

    #[test]
    fn runtime_handlers_add_to_runc_and_crun_and_flags_add_to_the_file() {
        let file: File = toml::from_str(
            "default-runtime-handler = \"fast\"\n[runtime-handler]\nfast = \"/usr/bin/crun\"\nrunc = \"/opt/runc\"",
        )
        .unwrap();
        let flags = File {
            runtime_handler: Some([("other".to_owned(), PathBuf::from("runc"))].into()),
            ..File::default()
        };
        let c = Config::from(file.overlay(flags));
        let names: Vec<&str> = c.runtime_handlers.keys().map(String::as_str).collect();
        assert_eq!(names, ["crun", "fast", "other", "runc"]);
        assert_eq!(c.runtime_handlers["runc"], PathBuf::from("/opt/runc"));
        assert_eq!(c.default_runtime_handler.as_deref(), Some("fast"));
    }

    #[test]
    fn unknown_keys_are_rejected_with_the_file_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "rooot = \"/x\"").unwrap();
        let err = File::load(&path, true).unwrap_err().to_string();
        assert!(err.contains("rooot") && err.contains("c.toml"), "{err}");
    }
}
