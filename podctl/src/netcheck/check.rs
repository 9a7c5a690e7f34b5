//! Running the checks, on a thread of their own: each pod's reported IP against its eth0,
//! then TCP probes from every local pod to every other pod (and to each --remote IP) and
//! from the node to every pod, each with the path the kernel would send it on and, when it
//! fails, the hop where that path breaks.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use anyhow::Result;
use serde_json::{json, Value};

use super::path::{self, Hop};
use super::probe::{self, Listener, Outcome};
use super::{Args, Check, Pod, Rule};

pub(super) fn check_all(
    mut local: Vec<Pod>,
    mut remote: Vec<Pod>,
    args: &Args,
) -> Result<Vec<Check>> {
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

/// A check that fails before it starts: `to` has no IP to reach.
fn no_ip(
    kind: &'static str,
    scope: &'static str,
    from: Value,
    to: &Pod,
    label: String,
) -> Check {
    let rule = Rule {
        rule: "reach",
        ok: false,
        detail: format!("{} has no IP", to.name),
    };
    let c = check(
        kind,
        scope,
        from,
        to.describe(),
        vec![rule],
        Vec::new(),
        label,
    );
    finish(c, false)
}

fn pod_to_pod(a: &Pod, b: &Pod, scope: &'static str, port: u16, timeout: Duration) -> Check {
    let label = format!("{} -> {}", a.label(), b.label());
    let Some(ip) = b.ip else {
        return no_ip("pod-to-pod", scope, a.describe(), b, label);
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
        return no_ip("node-to-pod", scope, json!({"node": "this node"}), b, label);
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
