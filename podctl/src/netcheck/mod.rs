//! `podctl netcheck`: checks the Kubernetes network model for the pods on a node, from the
//! inside: pod to pod on this node and (given other nodes' CRI endpoints on this machine, or
//! remote pod IPs) on other nodes, node to pod, and no NAT (the source address a receiver
//! sees is the sender's own eth0 address). Probes are TCP connections made from inside the
//! pods' netns by this process itself; for each pair it prints the path the kernel would
//! send a packet on, and a failure names the hop where that path breaks.
//!
//! Run it in the node's network namespace (it probes "node to pod" from its own).

mod path;
mod probe;
mod svg;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use podrun_proto::{client, cri};
use serde::Serialize;
use serde_json::{json, Value};

use path::{Eth0, Hop};
use probe::{Listener, Outcome};

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

/// Ready pods of the node at `endpoint`, narrowed to `wanted` (ids or prefixes) if given.
async fn pods_of(endpoint: &std::path::Path, node: &str, wanted: &[String]) -> Result<Vec<Pod>> {
    let mut rt = client::runtime(endpoint)
        .await
        .with_context(|| format!("connecting to {}", endpoint.display()))?;
    let ready = cri::PodSandboxStateValue {
        state: cri::PodSandboxState::SandboxReady as i32,
    };
    let items = rt
        .list_pod_sandbox(cri::ListPodSandboxRequest {
            filter: Some(cri::PodSandboxFilter {
                state: Some(ready),
                ..Default::default()
            }),
        })
        .await?
        .into_inner()
        .items;
    for w in wanted {
        if !items.iter().any(|p| p.id.starts_with(w.as_str())) {
            bail!("no ready pod {w} on {node}");
        }
    }
    let mut pods = Vec::new();
    for p in items {
        if !wanted.is_empty() && !wanted.iter().any(|w| p.id.starts_with(w.as_str())) {
            continue;
        }
        let s = rt
            .pod_sandbox_status(cri::PodSandboxStatusRequest {
                pod_sandbox_id: p.id.clone(),
                verbose: true,
            })
            .await?
            .into_inner();
        let info: Value = s
            .info
            .get("info")
            .and_then(|i| serde_json::from_str(i).ok())
            .unwrap_or_default();
        let Some(netns) = info["netnsPath"].as_str().filter(|n| !n.is_empty()) else {
            continue; // host-network pod: nothing of its own to check
        };
        let status = s.status.unwrap_or_default();
        pods.push(Pod {
            id: p.id.clone(),
            name: status.metadata.map(|m| m.name).unwrap_or_default(),
            node: node.to_owned(),
            ip: status.network.and_then(|n| n.ip.parse().ok()),
            netns: netns.into(),
            eth0: Eth0::default(),
        });
    }
    Ok(pods)
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

fn check_all(mut local: Vec<Pod>, mut remote: Vec<Pod>, args: &Args) -> Result<Vec<Check>> {
    let timeout = Duration::from_secs(args.probe_timeout);
    let mut checks = Vec::new();
    for p in local.iter_mut().chain(remote.iter_mut()) {
        p.eth0 = path::eth0(&p.netns).unwrap_or_default();
    }
    for p in &local {
        let ok = p.ip.is_some() && p.ip == p.eth0.ip;
        let eth0 = p.eth0.ip.map(|i| i.to_string()).unwrap_or("none".into());
        let reported = p.ip.map(|i| i.to_string()).unwrap_or("none".into());
        checks.push(Check {
            kind: "pod-ip",
            scope: "same-node",
            from: p.describe(),
            to: Value::Null,
            ok,
            rules: vec![Rule {
                rule: "pod-ip",
                ok,
                detail: format!("runtime reports {reported}, eth0 has {eth0}"),
            }],
            path: Vec::new(),
            failed_hop: None,
            label: p.label(),
        });
    }
    // A listener in every receiver's netns.
    let mut ports = std::collections::HashMap::new();
    for p in local.iter().chain(remote.iter()) {
        ports.insert(p.id.clone(), Listener::start(&p.netns)?.port);
    }
    for a in &local {
        for (b, scope) in local
            .iter()
            .filter(|b| b.id != a.id)
            .map(|b| (b, "same-node"))
            .chain(remote.iter().map(|b| (b, "other-node")))
        {
            checks.push(pod_to_pod(a, b, scope, ports[&b.id], timeout));
        }
        for ip in &args.remotes {
            checks.push(pod_to_ip(a, *ip, args.remote_port, timeout));
        }
    }
    for (b, scope) in local
        .iter()
        .map(|b| (b, "same-node"))
        .chain(remote.iter().map(|b| (b, "other-node")))
    {
        checks.push(node_to_pod(b, scope, ports[&b.id], timeout));
    }
    Ok(checks)
}

/// Marks where the path breaks. When the probe got through, hops whose tables showed
/// nothing (an aged-out FDB entry, say) are not where it breaks.
fn finish(mut c: Check, reached: bool) -> Check {
    if reached {
        for h in &mut c.path {
            h.ok = true;
        }
    } else if c.path.iter().all(|h| h.ok) {
        if let Some(last) = c.path.last_mut() {
            last.ok = false;
        }
    }
    c.failed_hop = c.path.iter().find(|h| !h.ok).map(|h| h.hop);
    c.ok = c.rules.iter().all(|r| r.ok);
    c
}

fn reach_rule(outcome: &Outcome) -> Rule {
    Rule {
        rule: "reach",
        ok: outcome.reached(),
        detail: match outcome {
            Outcome::Seen(ip) => format!("connected; receiver saw {ip}"),
            Outcome::Connected(s) => format!("connected; receiver said {s:?}"),
            Outcome::Refused => "reset by the peer: reachable, nothing listening".into(),
            Outcome::Failed(e) => e.clone(),
        },
    }
}

fn peer_hop(ip: IpAddr, who: &str, outcome: &Outcome) -> Hop {
    let mut detail = format!("{ip} {who}");
    if let Outcome::Failed(e) = outcome {
        detail += &format!(": {e}");
    }
    Hop {
        hop: "peer",
        ok: true,
        detail,
    }
}

fn pod_to_pod(a: &Pod, b: &Pod, scope: &'static str, port: u16, timeout: Duration) -> Check {
    let label = format!("{} -> {}", a.label(), b.label());
    let Some(ip) = b.ip else {
        let rule = Rule {
            rule: "reach",
            ok: false,
            detail: format!("{} has no IP", b.name),
        };
        return finish(
            check(
                "pod-to-pod",
                scope,
                a.describe(),
                b.describe(),
                vec![rule],
                Vec::new(),
                label,
            ),
            false,
        );
    };
    let outcome = probe::dial(Some(&a.netns), SocketAddr::new(ip, port), timeout);
    let mut rules = vec![reach_rule(&outcome)];
    if let Outcome::Seen(seen) = outcome {
        let own = a.eth0.ip;
        rules.push(Rule {
            rule: "no-nat",
            ok: Some(seen) == own,
            detail: format!(
                "{} saw {seen}; {}'s eth0 is {}",
                b.name,
                a.name,
                own.map(|i| i.to_string()).unwrap_or("unknown".into())
            ),
        });
    }
    let mut hops = path::from_pod(&a.netns, &a.eth0, ip);
    hops.push(peer_hop(
        ip,
        &format!("pod {} on {}", b.name, b.node),
        &outcome,
    ));
    let reached = outcome.reached();
    finish(
        check(
            "pod-to-pod",
            scope,
            a.describe(),
            b.describe(),
            rules,
            hops,
            label,
        ),
        reached,
    )
}

fn pod_to_ip(a: &Pod, ip: IpAddr, port: u16, timeout: Duration) -> Check {
    let outcome = probe::dial(Some(&a.netns), SocketAddr::new(ip, port), timeout);
    let mut hops = path::from_pod(&a.netns, &a.eth0, ip);
    hops.push(peer_hop(ip, "(remote)", &outcome));
    let label = format!("{} -> {ip}:{port}", a.label());
    let reached = outcome.reached();
    let to = json!({"ip": ip, "port": port});
    finish(
        check(
            "pod-to-pod",
            "other-node",
            a.describe(),
            to,
            vec![reach_rule(&outcome)],
            hops,
            label,
        ),
        reached,
    )
}

fn node_to_pod(b: &Pod, scope: &'static str, port: u16, timeout: Duration) -> Check {
    let label = format!("node -> {}", b.label());
    let Some(ip) = b.ip else {
        let rule = Rule {
            rule: "reach",
            ok: false,
            detail: format!("{} has no IP", b.name),
        };
        return finish(
            check(
                "node-to-pod",
                scope,
                json!({"node": "this node"}),
                b.describe(),
                vec![rule],
                Vec::new(),
                label,
            ),
            false,
        );
    };
    let outcome = probe::dial(None, SocketAddr::new(ip, port), timeout);
    let mut hops = path::from_node(ip, None);
    hops.push(peer_hop(
        ip,
        &format!("pod {} on {}", b.name, b.node),
        &outcome,
    ));
    let reached = outcome.reached();
    finish(
        check(
            "node-to-pod",
            scope,
            json!({"node": "this node"}),
            b.describe(),
            vec![reach_rule(&outcome)],
            hops,
            label,
        ),
        reached,
    )
}

fn check(
    kind: &'static str,
    scope: &'static str,
    from: Value,
    to: Value,
    rules: Vec<Rule>,
    path: Vec<Hop>,
    label: String,
) -> Check {
    Check {
        kind,
        scope,
        from,
        to,
        ok: false,
        rules,
        path,
        failed_hop: None,
        label,
    }
}

fn print_text(checks: &[Check]) {
    for c in checks {
        let verdict = if c.ok { "PASS" } else { "FAIL" };
        let rules: Vec<String> = c
            .rules
            .iter()
            .map(|r| {
                format!(
                    "{} {} ({})",
                    r.rule,
                    if r.ok { "ok" } else { "FAILED" },
                    r.detail
                )
            })
            .collect();
        println!(
            "{verdict} {} ({}) {}: {}",
            c.kind,
            c.scope,
            c.label,
            rules.join("; ")
        );
        if !c.path.is_empty() {
            let hops: Vec<String> = c
                .path
                .iter()
                .map(|h| format!("{}{} [{}]", if h.ok { "" } else { "X " }, h.hop, h.detail))
                .collect();
            println!("     {}", hops.join("\n  -> "));
        }
        if let Some(h) = c.failed_hop {
            println!("     broken at: {h}");
        }
    }
    let failed = checks.iter().filter(|c| !c.ok).count();
    println!("{} checks, {failed} failed", checks.len());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_path(hops: &[(&'static str, bool)], reached: bool) -> Check {
        let path = hops
            .iter()
            .map(|&(hop, ok)| Hop {
                hop,
                ok,
                detail: String::new(),
            })
            .collect();
        let rule = Rule {
            rule: "reach",
            ok: reached,
            detail: String::new(),
        };
        finish(
            check(
                "pod-to-pod",
                "other-node",
                Value::Null,
                Value::Null,
                vec![rule],
                path,
                String::new(),
            ),
            reached,
        )
    }

    #[test]
    fn a_failed_probe_is_broken_at_the_first_failing_hop() {
        let c = with_path(
            &[("pod eth0", true), ("node route", false), ("peer", true)],
            false,
        );
        assert!(!c.ok);
        assert_eq!(c.failed_hop, Some("node route"));
    }

    #[test]
    fn a_failed_probe_on_a_sound_path_is_broken_at_the_peer() {
        let c = with_path(
            &[("pod eth0", true), ("node route", true), ("peer", true)],
            false,
        );
        assert_eq!(c.failed_hop, Some("peer"));
    }

    #[test]
    fn a_probe_that_got_through_breaks_nowhere() {
        let c = with_path(
            &[("pod eth0", true), ("bridge", false), ("peer", true)],
            true,
        );
        assert!(c.ok);
        assert_eq!(c.failed_hop, None);
        assert!(c.path.iter().all(|h| h.ok));
    }
}
