//! The path a packet takes, as the kernel would send it, read from the kernel's own tables
//! with iproute2 (`ip -j`, `bridge -j`) run inside the right namespace: the sender's eth0
//! and route, the host end of its veth, the bridge (FDB entry and ARP neighbour for the next
//! hop), the node's route (direct, via a node IP, or a VXLAN device and remote node), and
//! the peer.

use std::net::IpAddr;
use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context, Result};
use serde::Serialize;
use serde_json::Value;

use super::probe::in_netns;

/// One hop of a path. `ok` false names where the path breaks.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Hop {
    pub hop: &'static str,
    pub ok: bool,
    pub detail: String,
}

fn hop(hop: &'static str, ok: bool, detail: impl Into<String>) -> Hop {
    Hop {
        hop,
        ok,
        detail: detail.into(),
    }
}

/// Runs `tool -j args` (tool: ip or bridge) in `netns` (None: the node's) and parses it.
fn json(netns: Option<&Path>, tool: &'static str, args: &[&str]) -> Result<Vec<Value>> {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    let shown = format!("{tool} {}", args.join(" "));
    // The child inherits the namespace of the thread that forks it.
    let out = in_netns(netns, move || {
        Command::new(tool).arg("-j").args(&args).output()
    })?
    .with_context(|| format!("running {tool} (install iproute2)"))?;
    if !out.status.success() {
        bail!(
            "{shown}: {}",
            String::from_utf8_lossy(&out.stderr)
                .trim()
                .replace('\n', "; ")
        );
    }
    let text = String::from_utf8_lossy(&out.stdout);
    if text.trim().is_empty() {
        return Ok(Vec::new());
    }
    Ok(serde_json::from_str::<Value>(&text)
        .with_context(|| format!("{shown}: parsing {text:?}"))?
        .as_array()
        .cloned()
        .unwrap_or_default())
}

fn s<'a>(v: &'a Value, key: &str) -> &'a str {
    v[key].as_str().unwrap_or_default()
}

/// A pod's eth0 as seen from inside: address, MAC, state and the ifindex of its veth peer.
#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct Eth0 {
    pub ip: Option<IpAddr>,
    pub mac: String,
    pub up: bool,
    pub peer_ifindex: Option<u64>,
}

pub(crate) fn eth0(netns: &Path) -> Result<Eth0> {
    let link = json(Some(netns), "ip", &["link", "show", "dev", "eth0"])?;
    let link = link.first().context("no eth0")?;
    let addrs = json(Some(netns), "ip", &["-4", "addr", "show", "dev", "eth0"])?;
    let ip = addrs
        .first()
        .and_then(|a| a["addr_info"].as_array())
        .and_then(|a| a.first())
        .and_then(|a| a["local"].as_str())
        .and_then(|a| a.parse().ok());
    Ok(Eth0 {
        ip,
        mac: s(link, "address").to_owned(),
        up: link["flags"]
            .as_array()
            .is_some_and(|f| f.iter().any(|f| f == "UP")),
        peer_ifindex: link["link_index"].as_u64(),
    })
}

/// The ARP neighbour for `ip` on `dev`: "lladdr STATE", or None when there is none.
fn neighbour(netns: Option<&Path>, ip: &str, dev: &str) -> Option<(String, String)> {
    let n = json(netns, "ip", &["neigh", "show", "to", ip, "dev", dev]).ok()?;
    let n = n.first()?;
    let state = n["state"]
        .as_array()
        .map(|s| {
            s.iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default();
    Some((s(n, "lladdr").to_owned(), state))
}

fn neighbour_ok(state: &str) -> bool {
    !(state.contains("FAILED") || state.contains("INCOMPLETE"))
}

/// The route the node would use for `dst`, as "prefix via gw dev X proto P".
fn route_entry(dst: IpAddr) -> String {
    let routes =
        json(None, "ip", &["route", "show", "match", &dst.to_string()]).unwrap_or_default();
    let prefix_len = |r: &Value| -> u32 {
        match s(r, "dst") {
            "default" => 0,
            d => d
                .split_once('/')
                .and_then(|(_, l)| l.parse().ok())
                .unwrap_or(32),
        }
    };
    routes
        .iter()
        .max_by_key(|r| prefix_len(r))
        .map(|r| {
            let mut text = s(r, "dst").to_owned();
            if let Some(gw) = r["gateway"].as_str() {
                text += &format!(" via {gw}");
            }
            text += &format!(" dev {}", s(r, "dev"));
            if let Some(p) = r["protocol"].as_str() {
                text += &format!(" proto {p}");
            }
            if r["flags"]
                .as_array()
                .is_some_and(|f| f.iter().any(|f| f == "onlink"))
            {
                text += " onlink";
            }
            text
        })
        .unwrap_or_else(|| "no matching route".into())
}

/// The host end of a pod's veth, in the node's namespace: (name, master bridge).
fn host_veth(ifindex: u64) -> Result<(String, Option<String>, bool)> {
    let links = json(None, "ip", &["link", "show"])?;
    let l = links
        .iter()
        .find(|l| l["ifindex"].as_u64() == Some(ifindex))
        .with_context(|| format!("no link with ifindex {ifindex} on this node"))?;
    let up = s(l, "operstate") != "DOWN";
    Ok((
        s(l, "ifname").to_owned(),
        l["master"].as_str().map(str::to_owned),
        up,
    ))
}

/// Where `bridge` forwards frames for `mac`: the port of its FDB entry, or itself.
fn fdb_port(bridge: &str, mac: &str) -> Option<String> {
    let own = json(None, "ip", &["link", "show", "dev", bridge]).ok()?;
    if own.first().is_some_and(|l| s(l, "address") == mac) {
        return Some(format!("{bridge} itself"));
    }
    let fdb = json(None, "bridge", &["fdb", "show", "br", bridge]).ok()?;
    fdb.iter()
        .find(|e| {
            s(e, "mac") == mac
                && !e["flags"]
                    .as_array()
                    .is_some_and(|f| f.iter().any(|f| f == "self"))
        })
        .map(|e| s(e, "ifname").to_owned())
}

/// The hops from the bridge to a pod on this node whose next hop MAC is `mac`.
fn bridge_hop(bridge: &str, next_hop: &str, neigh: Option<(String, String)>) -> Hop {
    match neigh {
        None => hop(
            "bridge",
            false,
            format!("{bridge}: no ARP entry for {next_hop}"),
        ),
        Some((mac, state)) if mac.is_empty() || !neighbour_ok(&state) => hop(
            "bridge",
            false,
            format!("{bridge}: ARP for {next_hop} unanswered ({state})"),
        ),
        Some((mac, state)) => match fdb_port(bridge, &mac) {
            Some(port) => hop(
                "bridge",
                true,
                format!("{bridge}: neigh {next_hop} lladdr {mac} {state}; fdb {mac} on {port}"),
            ),
            None => hop(
                "bridge",
                false,
                format!("{bridge}: neigh {next_hop} lladdr {mac} {state}; no fdb entry for {mac}"),
            ),
        },
    }
}

/// The path from a pod (its netns and eth0) to `dst`.
pub(crate) fn from_pod(netns: &Path, eth0: &Eth0, dst: IpAddr) -> Vec<Hop> {
    let mut path = Vec::new();
    let src = eth0.ip.map(|i| i.to_string()).unwrap_or_default();
    let ok = eth0.up && eth0.ip.is_some();
    path.push(hop(
        "pod eth0",
        ok,
        format!(
            "eth0 {} {}{}",
            if src.is_empty() { "(no IPv4)" } else { &src },
            eth0.mac,
            if eth0.up { "" } else { " DOWN" }
        ),
    ));
    let route = match json(Some(netns), "ip", &["route", "get", &dst.to_string()]) {
        Ok(r) if !r.is_empty() => r[0].clone(),
        Ok(_) => {
            path.push(hop(
                "pod route",
                false,
                format!("no route to {dst} in the pod"),
            ));
            return path;
        }
        Err(e) => {
            path.push(hop(
                "pod route",
                false,
                format!("no route to {dst} in the pod: {e:#}"),
            ));
            return path;
        }
    };
    let gw = route["gateway"].as_str().map(str::to_owned);
    let next_hop = gw.clone().unwrap_or_else(|| dst.to_string());
    path.push(hop(
        "pod route",
        true,
        match &gw {
            Some(gw) => format!("{dst} via {gw} dev {}", s(&route, "dev")),
            None => format!("{dst} dev {} (same subnet)", s(&route, "dev")),
        },
    ));
    let Some(peer_index) = eth0.peer_ifindex else {
        path.push(hop(
            "host veth",
            false,
            "eth0 is not a veth (no peer ifindex)",
        ));
        return path;
    };
    let bridge = match host_veth(peer_index) {
        Ok((name, Some(master), true)) => {
            path.push(hop("host veth", true, format!("{name} on bridge {master}")));
            master
        }
        Ok((name, master, up)) => {
            let why = if up { "is on no bridge" } else { "is down" };
            path.push(hop(
                "host veth",
                false,
                format!("{name} {why} (master {master:?})"),
            ));
            return path;
        }
        Err(e) => {
            path.push(hop("host veth", false, format!("{e:#}")));
            return path;
        }
    };
    let neigh = neighbour(Some(netns), &next_hop, "eth0");
    path.push(bridge_hop(&bridge, &next_hop, neigh));
    if gw.is_some() {
        path.extend(from_node(dst, Some((&src, &bridge))));
    }
    path
}

/// The path from the node (or, with `from`, from a pod whose packets the node routes: its
/// source address and the bridge they arrive on) to `dst`.
pub(crate) fn from_node(dst: IpAddr, from: Option<(&str, &str)>) -> Vec<Hop> {
    let mut path = Vec::new();
    let dst_s = dst.to_string();
    let mut args = vec!["route", "get", dst_s.as_str()];
    if let Some((src, iif)) = from {
        args.extend(["from", src, "iif", iif]);
    }
    let route = match json(None, "ip", &args) {
        Ok(r) if !r.is_empty() => r[0].clone(),
        other => {
            let why = other.err().map(|e| format!(": {e:#}")).unwrap_or_default();
            path.push(hop(
                "node route",
                false,
                format!("no route to {dst} on the node{why}"),
            ));
            return path;
        }
    };
    let dev = s(&route, "dev").to_owned();
    let gw = route["gateway"].as_str().map(str::to_owned);
    path.push(hop("node route", true, route_entry(dst)));
    let kind = json(None, "ip", &["-d", "link", "show", "dev", &dev])
        .ok()
        .and_then(|l| l.first().cloned())
        .unwrap_or_default();
    let info = &kind["linkinfo"];
    match (s(info, "info_kind"), gw) {
        ("vxlan", gw) => {
            let data = &info["info_data"];
            let next_hop = gw.unwrap_or_else(|| dst_s.clone());
            let head = format!(
                "{dev} (VNI {}, UDP {})",
                data["id"].as_u64().unwrap_or_default(),
                data["port"].as_u64().unwrap_or_default()
            );
            let detail = match neighbour(None, &next_hop, &dev) {
                Some((mac, state)) if !mac.is_empty() && neighbour_ok(&state) => {
                    let fdb =
                        json(None, "bridge", &["fdb", "show", "dev", &dev]).unwrap_or_default();
                    match fdb.iter().find(|e| s(e, "mac") == mac && e["dst"].is_string()) {
                        Some(e) => Ok(format!(
                            "{head}: neigh {next_hop} lladdr {mac}; fdb {mac} dst {} (remote node)",
                            s(e, "dst")
                        )),
                        None => Err(format!("{head}: neigh {next_hop} lladdr {mac}; no fdb entry for {mac}: no remote node")),
                    }
                }
                _ => Err(format!("{head}: no neighbour entry for {next_hop}")),
            };
            path.push(match detail {
                Ok(d) => hop("vxlan", true, d),
                Err(d) => hop("vxlan", false, d),
            });
        }
        ("bridge", None) => {
            let neigh = neighbour(None, &dst_s, &dev);
            path.push(bridge_hop(&dev, &dst_s, neigh));
        }
        (_, Some(gw)) => path.push(match neighbour(None, &gw, &dev) {
            Some((mac, state)) if !mac.is_empty() && neighbour_ok(&state) => hop(
                "next node",
                true,
                format!("{gw} lladdr {mac} {state} on {dev}"),
            ),
            Some((_, state)) => hop(
                "next node",
                false,
                format!("{gw} on {dev}: ARP unanswered ({state})"),
            ),
            None => hop("next node", false, format!("{gw} on {dev}: no ARP entry")),
        }),
        (_, None) => {}
    }
    path
}
