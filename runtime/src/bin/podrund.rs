//! `podrund`: podrun's CRI server. See README.md for its flags and configuration file.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::Parser;
use podrun_runtime::config::{Config, File, DEFAULT_CONFIG};
use podrun_runtime::node::Node;
use tokio::signal::unix::{signal, SignalKind};

/// The podrun CRI server: pods with real networking, driven over CRI.
#[derive(Parser)]
#[command(version)]
struct Flags {
    /// TOML configuration file; its keys are these flags' names.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Unix socket to serve CRI on [default: <state>/podrun.sock].
    #[arg(long)]
    listen: Option<PathBuf>,
    /// Durable metadata directory [default: /var/lib/podrun].
    #[arg(long)]
    root: Option<PathBuf>,
    /// Volatile state directory [default: /run/podrun].
    #[arg(long)]
    state: Option<PathBuf>,
    /// CNI configuration directory [default: /etc/cni/net.d].
    #[arg(long)]
    cni_conf_dir: Option<PathBuf>,
    /// CNI plugin directory; repeat for several [default: /opt/cni/bin, /usr/lib/cni].
    #[arg(long)]
    cni_bin_dir: Vec<PathBuf>,
    /// CDI spec directory; repeat for several, lowest priority first
    /// [default: /etc/cdi, /var/run/cdi].
    #[arg(long)]
    cdi_spec_dir: Vec<PathBuf>,
    /// The NRI socket plugins connect to (containerd's is /var/run/nri/nri.sock)
    /// [default: none, NRI off].
    #[arg(long)]
    nri_socket: Option<PathBuf>,
    /// error, warn, info, debug or trace (or a tracing filter).
    #[arg(long)]
    log_level: Option<String>,
    /// text, or json: one JSON object per line, with the method and the pod and container
    /// ids of the request it is about [default: text].
    #[arg(long)]
    log_format: Option<String>,
    /// Registry hosts directory in containerd's certs.d layout [default: /etc/podrun/certs.d].
    #[arg(long)]
    registry_config_path: Option<PathBuf>,
    /// host:port of the streaming server for exec, attach and port-forward [default:
    /// 127.0.0.1:0, a free port].
    #[arg(long)]
    streaming_address: Option<String>,
    /// host:port of podrund's Prometheus endpoint, GET /metrics (e.g. 127.0.0.1:9090)
    /// [default: none, off].
    #[arg(long)]
    metrics_address: Option<String>,
    /// Seconds an exec, attach or port-forward URL stays valid unused [default: 60].
    #[arg(long)]
    streaming_token_ttl: Option<u64>,
    /// Seconds a registry may take to accept a connection or to send more of an answer,
    /// before the pull fails [default: 60].
    #[arg(long)]
    registry_timeout: Option<u64>,
    /// Seconds one CNI plugin call may take before it is killed and the step fails
    /// [default: 60].
    #[arg(long)]
    cni_timeout: Option<u64>,
    /// A RuntimeClass handler: NAME=RUNTIME (an OCI runtime binary, a path or a name on
    /// PATH); repeat for several. runc and crun are always there.
    #[arg(long, value_parser = handler_arg)]
    runtime_handler: Vec<(String, PathBuf)>,
    /// The handler pods that name none run with [default: crun where it can run, else runc].
    #[arg(long)]
    default_runtime_handler: Option<String>,
}

fn handler_arg(s: &str) -> Result<(String, PathBuf), String> {
    match s.split_once('=') {
        Some((name, runtime)) if !name.is_empty() && !runtime.is_empty() => {
            Ok((name.to_owned(), runtime.into()))
        }
        _ => Err(format!("{s:?}: expected NAME=RUNTIME")),
    }
}

fn main() -> Result<()> {
    let flags = Flags::parse();
    let file = match &flags.config {
        Some(path) => File::load(path, true)?,
        None => File::load(DEFAULT_CONFIG.as_ref(), false)?,
    };
    let config = Config::from(
        file.overlay(File {
            listen: flags.listen,
            root: flags.root,
            state: flags.state,
            cni_conf_dir: flags.cni_conf_dir,
            cni_bin_dir: (!flags.cni_bin_dir.is_empty()).then_some(flags.cni_bin_dir),
            cdi_spec_dir: (!flags.cdi_spec_dir.is_empty()).then_some(flags.cdi_spec_dir),
            nri_socket: flags.nri_socket,
            log_level: flags.log_level,
            log_format: flags.log_format,
            registry_config_path: flags.registry_config_path,
            streaming_address: flags.streaming_address,
            metrics_address: flags.metrics_address,
            streaming_token_ttl: flags.streaming_token_ttl,
            registry_timeout: flags.registry_timeout,
            cni_timeout: flags.cni_timeout,
            runtime_handler: (!flags.runtime_handler.is_empty())
                .then(|| flags.runtime_handler.into_iter().collect()),
            default_runtime_handler: flags.default_runtime_handler,
        }),
    );
    let logs = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_new(log_filter(&config.log_level))
                .context("--log-level")?,
        )
        .with_writer(std::io::stderr);
    match config.log_format.as_str() {
        "text" => logs
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
        // The request's span (method, pod, container) goes onto each line as fields.
        "json" => logs
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .init(),
        other => anyhow::bail!("--log-format: {other:?} is neither text nor json"),
    }
    let node = Arc::new(Node::new(config)?);
    match (&node.binaries.shim, &node.binaries.pause) {
        (Ok(shim), Ok(pause)) => {
            tracing::info!(shim = %shim.display(), pause = %pause.display(), "helper binaries")
        }
        _ => tracing::error!(
            missing = node.binaries.missing().unwrap_or_default(),
            "cannot start pods"
        ),
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let shutdown = async move {
            tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
            tracing::info!("shutting down; pods keep running");
        };
        podrun_runtime::cri::serve(node, shutdown)
            .await
            .map_err(anyhow::Error::from)
    })
}

/// A bare level applies to podrun's own crates (libraries stay at warn); anything else is a
/// full tracing filter.
fn log_filter(level: &str) -> String {
    match level {
        "error" | "warn" | "info" | "debug" | "trace" => {
            format!("warn,podrund={level},podrun_runtime={level},podrun_core={level}")
        }
        filter => filter.to_owned(),
    }
}
