//! `podctl netcheck`: checks the Kubernetes network model for the pods on a node, from the
//! inside: pod to pod on this node and (given other nodes' CRI endpoints on this machine, or
//! remote pod IPs) on other nodes, node to pod, and no NAT (the source address a receiver
//! sees is the sender's own eth0 address). Probes are TCP connections made from inside the
//! pods' netns by this process itself; for each pair it prints the path the kernel would
//! send a packet on, and a failure names the hop where that path breaks.
//!
//! Run it in the node's network namespace (it probes "node to pod" from its own).

mod check;
mod gather;
mod path;
mod print;
mod probe;
mod svg;

use std::net::IpAddr;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use serde::Serialize;
use serde_json::{json, Value};

use check::check_all;
use gather::pods_of;
use path::{Eth0, Hop};
use print::print_text;

#[derive(clap::Args)]
pub(crate) struct Args {
    /// Pods to check (ids or id prefixes); default: every ready pod on this node.
    pods: Vec<String>,
    /// Another node's CRI endpoint on this machine: its ready pods are remote peers (probed
    /// with a listener in their netns, so no-NAT is checked too). Repeatable.
    #[arg(long = "peer-node")]
    peer_nodes: Vec<PathBuf>,
    /// A remote pod IP to reach over TCP (an answer, even a reset, counts as reached; no-NAT
    /// needs --peer-node). Repeatable.
    #[arg(long = "remote")]
    remotes: Vec<IpAddr>,
    /// TCP port for --remote probes.
    #[arg(long, default_value_t = 80)]
    remote_port: u16,
    /// Seconds each probe waits.
    #[arg(long, default_value_t = 3)]
    probe_timeout: u64,
    /// Print JSON.
    #[arg(long)]
    json: bool,
    /// Also draw the pod network and the checks as an SVG picture in FILE (failed hops in
    /// red).
    #[arg(long, value_name = "FILE")]
    svg: Option<PathBuf>,
}

/// A pod to probe from or to.
#[derive(Clone)]
struct Pod {
    id: String,
    name: String,
    node: String,
    /// The IP the runtime reports for it.
    ip: Option<IpAddr>,
    netns: PathBuf,
    eth0: Eth0,
}

impl Pod {
    fn describe(&self) -> Value {
        json!({"pod": self.id, "name": self.name, "node": self.node,
               "ip": self.ip, "eth0": self.eth0, "netns": self.netns})
    }
    fn label(&self) -> String {
        let ip = self.ip.map(|i| i.to_string()).unwrap_or_default();
        format!("{} [{ip}]", self.name)
    }
}

#[derive(Serialize)]
struct Rule {
    rule: &'static str,
    ok: bool,
    detail: String,
}

#[derive(Serialize)]
struct Check {
    kind: &'static str,
    scope: &'static str,
    from: Value,
    to: Value,
    ok: bool,
    rules: Vec<Rule>,
    path: Vec<Hop>,
    failed_hop: Option<&'static str>,
    #[serde(skip)]
    label: String,
}

pub(crate) async fn run(endpoint: &std::path::Path, args: Args) -> Result<()> {
    let here = endpoint.display().to_string();
    let local = pods_of(endpoint, &here, &args.pods).await?;
    let mut remote = Vec::new();
    for peer in &args.peer_nodes {
        remote.extend(pods_of(peer, &peer.display().to_string(), &[]).await?);
    }
    let (json_out, svg) = (args.json, args.svg.clone());
    // Probes block and switch namespaces on threads of their own: off the async runtime.
    let checks = tokio::task::spawn_blocking(move || check_all(local, remote, &args))
        .await
        .context("netcheck thread")??;
    let failed = checks.iter().filter(|c| !c.ok).count();
    if let Some(file) = svg {
        std::fs::write(&file, svg::draw(&checks, &here))
            .with_context(|| format!("writing {}", file.display()))?;
    }
    if json_out {
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({"ok": failed == 0, "checks": checks}))?
        );
    } else {
        print_text(&checks);
    }
    if failed > 0 {
        bail!("netcheck: {failed} of {} checks failed", checks.len());
    }
    Ok(())
}
