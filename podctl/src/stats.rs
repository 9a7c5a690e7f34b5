//! podctl's `stats`, `statsp` and `events`: crictl's resource figures and the runtime's
//! container event stream.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Subcommand;
use podrun_proto::cri::runtime_service_client::RuntimeServiceClient;
use podrun_proto::{client, cri};
use tonic::transport::Channel;

use crate::Output;

#[derive(Subcommand)]
pub enum Command {
    /// Resource use of containers: CPU %, memory working set, writable layer.
    Stats {
        #[command(flatten)]
        select: Select,
        /// Only the containers of pods whose id starts with this.
        #[arg(long, short = 'p')]
        pod: Option<String>,
    },
    /// Resource use of pods: CPU %, memory working set, network, processes.
    Statsp {
        #[command(flatten)]
        select: Select,
    },
    /// Print container events (created, started, stopped, deleted) as they happen.
    Events {
        #[arg(long, short = 'o', value_enum, default_value = "table")]
        output: Output,
    },
}

#[derive(clap::Args)]
pub struct Select {
    /// Only the one whose id starts with this.
    #[arg(long)]
    id: Option<String>,
    /// key=value; repeat to require several.
    #[arg(long)]
    label: Vec<String>,
    #[arg(long, short = 'o', value_enum, default_value = "table")]
    output: Output,
    /// Keep printing, every --seconds.
    #[arg(long, short = 'w')]
    watch: bool,
    /// Seconds between the two samples a CPU % is taken from.
    #[arg(long, short = 's', default_value_t = 1)]
    seconds: u64,
}

impl Command {
    /// Watching and following events have no end.
    pub fn endless(&self) -> bool {
        match self {
            Command::Stats { select, .. } | Command::Statsp { select } => select.watch,
            Command::Events { .. } => true,
        }
    }
}

/// One row: a container's or a pod's id and name, and its cumulative CPU nanoseconds.
struct Sample {
    id: String,
    name: String,
    timestamp: i64,
    cpu_ns: Option<u64>,
    columns: Vec<String>,
}

pub async fn run(endpoint: &Path, command: Command) -> Result<()> {
    let mut rt = client::runtime(endpoint)
        .await
        .with_context(|| format!("connecting to {}", endpoint.display()))?;
    let (select, pods, pod) = match command {
        Command::Events { output } => return events(&mut rt, output).await,
        Command::Stats { select, pod } => (select, false, pod.unwrap_or_default()),
        Command::Statsp { select } => (select, true, String::new()),
    };
    let labels = labels(&select.label)?;
    let id = select.id.clone().unwrap_or_default();
    let mut sample = async || -> Result<(Vec<Sample>, serde_json::Value)> {
        if pods {
            let filter = cri::PodSandboxStatsFilter {
                id: id.clone(),
                label_selector: labels.clone(),
            };
            let r = rt
                .list_pod_sandbox_stats(cri::ListPodSandboxStatsRequest {
                    filter: Some(filter),
                })
                .await?
                .into_inner();
            Ok((
                r.stats.iter().map(pod_row).collect(),
                serde_json::to_value(&r)?,
            ))
        } else {
            let filter = cri::ContainerStatsFilter {
                id: id.clone(),
                pod_sandbox_id: pod.clone(),
                label_selector: labels.clone(),
            };
            let r = rt
                .list_container_stats(cri::ListContainerStatsRequest {
                    filter: Some(filter),
                })
                .await?
                .into_inner();
            Ok((
                r.stats.iter().map(container_row).collect(),
                serde_json::to_value(&r)?,
            ))
        }
    };
    let interval = Duration::from_secs(select.seconds.max(1));
    let (mut before, _) = sample().await?;
    loop {
        tokio::time::sleep(interval).await;
        let (now, json) = sample().await?;
        match select.output {
            Output::Json => crate::print_json(&json)?,
            Output::Table => print_table(pods, &before, &now),
        }
        if !select.watch {
            return Ok(());
        }
        before = now;
    }
}

fn labels(list: &[String]) -> Result<HashMap<String, String>> {
    list.iter()
        .map(|l| {
            l.split_once('=')
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .with_context(|| format!("--label {l:?}: use key=value"))
        })
        .collect()
}

fn value(v: &Option<cri::UInt64Value>) -> Option<u64> {
    v.as_ref().map(|v| v.value)
}

fn container_row(s: &cri::ContainerStats) -> Sample {
    let a = s.attributes.clone().unwrap_or_default();
    let cpu = s.cpu.unwrap_or_default();
    let memory = s.memory.as_ref().and_then(|m| value(&m.working_set_bytes));
    let layer = s.writable_layer.clone().unwrap_or_default();
    Sample {
        name: a.metadata.map(|m| m.name).unwrap_or_default(),
        id: a.id,
        timestamp: cpu.timestamp,
        cpu_ns: value(&cpu.usage_core_nano_seconds),
        columns: vec![
            bytes(memory),
            bytes(value(&layer.used_bytes)),
            count(value(&layer.inodes_used)),
        ],
    }
}

fn pod_row(s: &cri::PodSandboxStats) -> Sample {
    let a = s.attributes.clone().unwrap_or_default();
    let linux = s.linux.clone().unwrap_or_default();
    let cpu = linux.cpu.unwrap_or_default();
    let memory = linux
        .memory
        .as_ref()
        .and_then(|m| value(&m.working_set_bytes));
    let net = linux.network.and_then(|n| n.default_interface);
    let processes = linux.process.and_then(|p| p.process_count).map(|c| c.value);
    let name = a
        .metadata
        .map(|m| format!("{}/{}", m.namespace, m.name))
        .unwrap_or_default();
    Sample {
        id: a.id,
        name,
        timestamp: cpu.timestamp,
        cpu_ns: value(&cpu.usage_core_nano_seconds),
        columns: vec![
            bytes(memory),
            bytes(net.as_ref().and_then(|n| value(&n.rx_bytes))),
            bytes(net.as_ref().and_then(|n| value(&n.tx_bytes))),
            count(processes),
        ],
    }
}

fn print_table(pods: bool, before: &[Sample], now: &[Sample]) {
    let header: &[&str] = if pods {
        &["POD ID", "POD", "CPU %", "MEM", "NET RX", "NET TX", "PIDS"]
    } else {
        &["CONTAINER", "NAME", "CPU %", "MEM", "DISK", "INODES"]
    };
    let mut rows = vec![header.iter().map(|h| h.to_string()).collect::<Vec<_>>()];
    for s in now {
        let earlier = before.iter().find(|b| b.id == s.id);
        let mut row = vec![s.id[..13.min(s.id.len())].to_owned(), s.name.clone()];
        row.push(earlier.map_or("-".into(), |b| cpu_percent(b, s)));
        row.extend(s.columns.iter().cloned());
        rows.push(row);
    }
    let widths: Vec<usize> = (0..header.len())
        .map(|i| rows.iter().map(|r| r[i].len()).max().unwrap_or(0))
        .collect();
    for row in rows {
        let cells: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        println!("{}", cells.join("  ").trim_end());
    }
}

/// CPU time used between two samples over the wall time between them; 100 is one core.
fn cpu_percent(before: &Sample, now: &Sample) -> String {
    let (Some(b), Some(n)) = (before.cpu_ns, now.cpu_ns) else {
        return "-".into();
    };
    let wall = now.timestamp - before.timestamp;
    if wall <= 0 {
        return "-".into();
    }
    format!("{:.2}", n.saturating_sub(b) as f64 * 100.0 / wall as f64)
}

fn bytes(v: Option<u64>) -> String {
    let Some(v) = v else { return "-".into() };
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut x = v as f64;
    let mut unit = 0;
    while x >= 1000.0 && unit < UNITS.len() - 1 {
        x /= 1000.0;
        unit += 1;
    }
    match unit {
        0 => format!("{v}B"),
        _ => format!("{x:.1}{}", UNITS[unit]),
    }
}

fn count(v: Option<u64>) -> String {
    v.map_or("-".into(), |v| v.to_string())
}

async fn events(rt: &mut RuntimeServiceClient<Channel>, output: Output) -> Result<()> {
    let mut stream = rt
        .get_container_events(cri::GetEventsRequest {})
        .await?
        .into_inner();
    if let Output::Table = output {
        println!(
            "{:<30}  {:<8}  {:<13}  {:<13}  POD",
            "TIME", "EVENT", "CONTAINER", "POD ID"
        );
    }
    while let Some(e) = stream.message().await.context("the event stream broke")? {
        match output {
            Output::Json => println!("{}", serde_json::to_string(&e)?),
            Output::Table => {
                let kind = cri::ContainerEventType::try_from(e.container_event_type)
                    .map(|t| t.as_str_name())
                    .unwrap_or("UNKNOWN");
                let kind = kind
                    .trim_start_matches("CONTAINER_")
                    .trim_end_matches("_EVENT")
                    .to_lowercase();
                let pod = e.pod_sandbox_status.unwrap_or_default();
                let m = pod.metadata.unwrap_or_default();
                println!(
                    "{:<30}  {kind:<8}  {:<13}  {:<13}  {}/{}",
                    time(e.created_at),
                    &e.container_id[..13.min(e.container_id.len())],
                    &pod.id[..13.min(pod.id.len())],
                    m.namespace,
                    m.name
                );
            }
        }
    }
    Ok(())
}

/// Nanoseconds since the epoch as RFC 3339 UTC.
fn time(nanos: i64) -> String {
    let t = std::time::UNIX_EPOCH + Duration::from_nanos(nanos.max(0) as u64);
    podrun_core::clock::rfc3339_nano(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_times_and_sizes() {
        assert_eq!(
            time(1_796_038_350_500_000_000),
            "2026-11-30T11:32:30.500000000Z"
        );
        assert_eq!(bytes(Some(999)), "999B");
        assert_eq!(bytes(Some(1_234_567)), "1.2MB");
        assert_eq!(bytes(None), "-");
    }

    #[test]
    fn cpu_percent_is_cpu_time_over_wall_time() {
        let at = |t: i64, ns: u64| Sample {
            id: "c".into(),
            name: "c".into(),
            timestamp: t,
            cpu_ns: Some(ns),
            columns: vec![],
        };
        assert_eq!(
            cpu_percent(&at(0, 0), &at(1_000_000_000, 500_000_000)),
            "50.00"
        );
        assert_eq!(
            cpu_percent(&at(0, 0), &at(2_000_000_000, 4_000_000_000)),
            "200.00"
        );
        assert_eq!(cpu_percent(&at(5, 0), &at(5, 10)), "-");
    }
}
