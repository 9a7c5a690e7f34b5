//! `podctl`: a crictl-like CLI over the CRI API, for people and for podrun's own tests.
//! Pod config files are the JSON or YAML that crictl reads (PodSandboxConfig with
//! snake_case field names), so one file works with both tools.

mod doctor;
mod netcheck;
mod pull;
mod stats;
mod stream;
mod term;
mod work;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use podrun_proto::{client, cri};
use serde_json::{json, Value};

#[derive(Parser)]
#[command(version, about = "A crictl-like client for CRI runtimes")]
struct Cli {
    /// CRI endpoint: a unix socket path or unix:// URL.
    #[arg(
        long,
        short = 'r',
        env = "CONTAINER_RUNTIME_ENDPOINT",
        default_value = "/run/podrun/podrun.sock"
    )]
    runtime_endpoint: PathBuf,
    /// Seconds to wait for each call.
    #[arg(long, default_value_t = 120)]
    timeout: u64,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum Output {
    Table,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Runtime name and versions.
    Version,
    /// Runtime status and conditions.
    Info,
    /// Run a pod sandbox from a PodSandboxConfig file (JSON or YAML).
    Runp {
        file: PathBuf,
        /// Runtime handler to use.
        #[arg(long)]
        runtime: Option<String>,
    },
    /// Stop pod sandboxes.
    Stopp { ids: Vec<String> },
    /// Remove pod sandboxes.
    Rmp { ids: Vec<String> },
    /// List pod sandboxes.
    Pods {
        #[arg(long, short = 'o', value_enum, default_value = "table")]
        output: Output,
        /// Only pods whose id starts with this.
        #[arg(long)]
        id: Option<String>,
        /// ready or notready.
        #[arg(long)]
        state: Option<String>,
        /// key=value; repeat to require several.
        #[arg(long)]
        label: Vec<String>,
        /// Print only ids.
        #[arg(long, short = 'q')]
        quiet: bool,
    },
    /// Status of a pod sandbox, with the runtime's verbose info.
    Inspectp { id: String },
    /// Check the pod network: pod to pod, node to pod, no NAT; prints each packet path.
    Netcheck(netcheck::Args),
    /// Audit the node for what podrund made and no longer owns (exit 1 when found).
    Doctor(doctor::Args),
    #[command(flatten)]
    Work(work::Command),
    #[command(flatten)]
    Stats(stats::Command),
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    // Following a log has no end: no time limit then.
    let limit = match &cli.command {
        Command::Work(work::Command::Logs { follow: true, .. })
        | Command::Work(work::Command::Attach { .. })
        | Command::Work(work::Command::PortForward { .. }) => Duration::MAX,
        Command::Work(work::Command::Exec {
            interactive, tty, ..
        }) if *interactive || *tty => Duration::MAX,
        Command::Stats(c) if c.endless() => Duration::MAX,
        _ => Duration::from_secs(cli.timeout),
    };
    runtime.block_on(async {
        tokio::time::timeout(limit, run(&cli.runtime_endpoint, cli.command))
            .await
            .context("timed out")?
    })
}

/// Reads a PodSandboxConfig (or any CRI message) from a JSON or YAML file.
pub(crate) fn read_config<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_yaml::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

pub(crate) fn print_json(v: &impl serde::Serialize) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

/// The verbose info map holds JSON strings: show them as JSON.
pub(crate) fn info_json(info: &HashMap<String, String>) -> Value {
    info.iter()
        .map(|(k, v)| {
            (
                k.clone(),
                serde_json::from_str(v).unwrap_or_else(|_| json!(v)),
            )
        })
        .collect::<serde_json::Map<_, _>>()
        .into()
}

async fn run(endpoint: &Path, command: Command) -> Result<()> {
    let mut rt = client::runtime(endpoint)
        .await
        .with_context(|| format!("connecting to {}", endpoint.display()))?;
    match command {
        Command::Version => {
            let v = rt
                .version(cri::VersionRequest::default())
                .await?
                .into_inner();
            println!(
                "Version:  {}\nRuntimeName:  {}\nRuntimeVersion:  {}\nRuntimeApiVersion:  {}",
                v.version, v.runtime_name, v.runtime_version, v.runtime_api_version
            );
        }
        Command::Info => {
            let s = rt
                .status(cri::StatusRequest { verbose: true })
                .await?
                .into_inner();
            print_json(&json!({"status": s.status, "info": info_json(&s.info)}))?;
        }
        Command::Runp { file, runtime } => {
            let config: cri::PodSandboxConfig = read_config(&file)?;
            let req = cri::RunPodSandboxRequest {
                config: Some(config),
                runtime_handler: runtime.unwrap_or_default(),
            };
            println!(
                "{}",
                rt.run_pod_sandbox(req).await?.into_inner().pod_sandbox_id
            );
        }
        Command::Stopp { ids } => {
            for id in ids {
                rt.stop_pod_sandbox(cri::StopPodSandboxRequest {
                    pod_sandbox_id: id.clone(),
                })
                .await?;
                println!("Stopped sandbox {id}");
            }
        }
        Command::Rmp { ids } => {
            for id in ids {
                rt.remove_pod_sandbox(cri::RemovePodSandboxRequest {
                    pod_sandbox_id: id.clone(),
                })
                .await?;
                println!("Removed sandbox {id}");
            }
        }
        Command::Pods {
            output,
            id,
            state,
            label,
            quiet,
        } => {
            let state = match state.as_deref() {
                None => None,
                Some("ready") => Some(cri::PodSandboxState::SandboxReady),
                Some("notready") => Some(cri::PodSandboxState::SandboxNotready),
                Some(other) => bail!("--state {other:?}: use ready or notready"),
            };
            let mut label_selector = HashMap::new();
            for l in label {
                let (k, v) = l
                    .split_once('=')
                    .with_context(|| format!("--label {l:?}: use key=value"))?;
                label_selector.insert(k.to_owned(), v.to_owned());
            }
            let filter = cri::PodSandboxFilter {
                id: id.unwrap_or_default(),
                state: state.map(|s| cri::PodSandboxStateValue { state: s as i32 }),
                label_selector,
            };
            let pods = rt
                .list_pod_sandbox(cri::ListPodSandboxRequest {
                    filter: Some(filter),
                })
                .await?
                .into_inner();
            match (quiet, output) {
                (true, _) => pods.items.iter().for_each(|p| println!("{}", p.id)),
                (false, Output::Json) => print_json(&pods)?,
                (false, Output::Table) => print_pods(&pods.items),
            }
        }
        Command::Inspectp { id } => {
            let s = rt
                .pod_sandbox_status(cri::PodSandboxStatusRequest {
                    pod_sandbox_id: id,
                    verbose: true,
                })
                .await?
                .into_inner();
            print_json(&json!({"status": s.status, "info": info_json(&s.info)}))?;
        }
        Command::Netcheck(args) => netcheck::run(endpoint, args).await?,
        Command::Doctor(args) => std::process::exit(doctor::run(endpoint, args).await?),
        Command::Work(command) => work::run(endpoint, command).await?,
        Command::Stats(command) => stats::run(endpoint, command).await?,
    }
    Ok(())
}

fn print_pods(pods: &[cri::PodSandbox]) {
    println!(
        "{:<13}  {:<14}  {:<8}  {:<30}  {:<20}  {:<7}  RUNTIME",
        "POD ID", "CREATED", "STATE", "NAME", "NAMESPACE", "ATTEMPT"
    );
    for p in pods {
        let m = p.metadata.clone().unwrap_or_default();
        let state = match cri::PodSandboxState::try_from(p.state) {
            Ok(cri::PodSandboxState::SandboxReady) => "Ready",
            _ => "NotReady",
        };
        let runtime = if p.runtime_handler.is_empty() {
            "(default)"
        } else {
            &p.runtime_handler
        };
        println!(
            "{:<13}  {:<14}  {:<8}  {:<30}  {:<20}  {:<7}  {runtime}",
            &p.id[..13.min(p.id.len())],
            ago(p.created_at),
            state,
            m.name,
            m.namespace,
            m.attempt
        );
    }
}

pub(crate) fn ago(nanos: i64) -> String {
    let created = SystemTime::UNIX_EPOCH + Duration::from_nanos(nanos.max(0) as u64);
    let secs = SystemTime::now()
        .duration_since(created)
        .unwrap_or_default()
        .as_secs();
    match secs {
        0..60 => format!("{secs} seconds ago"),
        60..3600 => format!("{} minutes ago", secs / 60),
        3600..86400 => format!("{} hours ago", secs / 3600),
        _ => format!("{} days ago", secs / 86400),
    }
}
