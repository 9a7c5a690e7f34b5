//! `podctl netcheck --svg FILE`: the node's pod network drawn the way the Kubernetes
//! networking articles draw it, from what the checks found: each node a box; in it each pod
//! with its eth0 (IP, MAC), the veth pair to the bridge, the bridge with the ARP and FDB
//! entries the paths used, and the node's routes; between nodes, the next hop (a node IP, a
//! VXLAN device's FDB entry, a BGP-learned route). Every pod-to-pod check is a line from
//! sender to receiver, green when it passed, red when it failed, with the failed hop named.

use std::collections::BTreeMap;
use std::fmt::Write;

use serde_json::Value;

use super::Check;

const POD_W: i64 = 190;
const POD_H: i64 = 64;
const GAP: i64 = 24;
const NODE_PAD: i64 = 20;

/// Escapes text for SVG.
fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn text(out: &mut String, x: i64, y: i64, class: &str, s: &str) {
    let _ = writeln!(
        out,
        r#"<text x="{x}" y="{y}" class="{class}">{}</text>"#,
        esc(s)
    );
}

/// One pod as the checks describe it.
struct Pod {
    id: String,
    name: String,
    ip: String,
    mac: String,
    veth: Option<String>,
}

/// What one node's box shows.
#[derive(Default)]
struct Node {
    pods: Vec<Pod>,
    /// Table rows the paths went through, and whether the path broke there.
    bridge: Vec<(String, bool)>,
    routes: Vec<(String, bool)>,
    next: Vec<(String, bool)>,
}

fn pod_of(v: &Value) -> Option<Pod> {
    Some(Pod {
        id: v["pod"].as_str()?.to_owned(),
        name: v["name"].as_str().unwrap_or_default().to_owned(),
        ip: v["eth0"]["ip"]
            .as_str()
            .or(v["ip"].as_str())
            .unwrap_or("no IP")
            .to_owned(),
        mac: v["eth0"]["mac"].as_str().unwrap_or_default().to_owned(),
        veth: None,
    })
}

fn push_unique(list: &mut Vec<(String, bool)>, row: &str, ok: bool) {
    if !row.is_empty() && !list.iter().any(|x| x.0 == row) {
        list.push((row.to_owned(), ok));
    }
}

/// Gathers nodes, pods and the tables the paths went through; paths that start from the
/// node itself (node-to-pod) are `local`'s.
fn nodes(checks: &[Check], local: &str) -> BTreeMap<String, Node> {
    let mut nodes: BTreeMap<String, Node> = BTreeMap::new();
    for c in checks {
        for end in [&c.from, &c.to] {
            let (Some(node), Some(pod)) = (end["node"].as_str(), pod_of(end)) else {
                continue;
            };
            let n = nodes.entry(node.to_owned()).or_default();
            if !n.pods.iter().any(|p| p.id == pod.id) {
                n.pods.push(pod);
            }
        }
        let node = match c.from["pod"].is_string() {
            true => c.from["node"].as_str().unwrap_or(local),
            false => local,
        };
        let from = c.from["pod"].as_str().unwrap_or_default().to_owned();
        let n = nodes.entry(node.to_owned()).or_default();
        for h in &c.path {
            match h.hop {
                "host veth" => {
                    if let Some(p) = n.pods.iter_mut().find(|p| p.id == from) {
                        p.veth.get_or_insert_with(|| h.detail.clone());
                    }
                }
                "bridge" => push_unique(&mut n.bridge, &h.detail, h.ok),
                "node route" => push_unique(&mut n.routes, &h.detail, h.ok),
                "vxlan" | "next node" => push_unique(&mut n.next, &h.detail, h.ok),
                _ => {}
            }
        }
    }
    nodes
}

/// The whole picture as an SVG document.
pub(crate) fn draw(checks: &[Check], local: &str) -> String {
    let nodes = nodes(checks, local);
    let widest = nodes
        .values()
        .map(|n| n.pods.len().max(1))
        .max()
        .unwrap_or(1) as i64;
    // Wide enough for the longest table row and check line (about 6.5 px a character).
    let longest = nodes
        .values()
        .flat_map(|n| n.bridge.iter().chain(&n.routes).chain(&n.next))
        .map(|r| r.0.len() + 4)
        .chain(checks.iter().map(|c| c.label.len() + 60))
        .max()
        .unwrap_or(0) as i64;
    let node_w = (widest * (POD_W + GAP) - GAP + 2 * NODE_PAD)
        .max(520)
        .max(longest * 13 / 2 + 2 * NODE_PAD);
    let line = 16;
    let tables = |n: &Node| (n.bridge.len() + n.routes.len() + n.next.len() + 3) as i64 * line;
    let node_h = |n: &Node| 40 + POD_H + 50 + 34 + tables(n) + NODE_PAD;
    let nodes_h: i64 = nodes.values().map(|n| node_h(n) + GAP).sum();
    let checks_h = (checks.len() as i64 + 2) * line;
    let (width, height) = (node_w + 40, 60 + nodes_h + checks_h);

    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" font-family="sans-serif">"#
    );
    out.push_str(
        "<style>.title{font-size:16px;font-weight:bold}.node{font-size:14px;font-weight:bold}\
         .pod{font-size:12px;font-weight:bold}.small{font-size:11px}\
         .ok{font-size:11px;fill:#1a7f37}.bad{font-size:11px;fill:#cf222e;font-weight:bold}</style>\n",
    );
    let _ = writeln!(
        out,
        r#"<rect width="{width}" height="{height}" fill="white"/>"#
    );
    let failed = checks.iter().filter(|c| !c.ok).count();
    text(
        &mut out,
        20,
        28,
        "title",
        &format!("podctl netcheck: {} checks, {failed} failed", checks.len()),
    );

    // Where each pod's box is, to draw the checks between them.
    let mut centres: BTreeMap<String, (i64, i64)> = BTreeMap::new();
    let mut y = 50;
    for (name, n) in &nodes {
        let (x0, h) = (20, node_h(n));
        let _ = writeln!(
            out,
            r##"<rect x="{x0}" y="{y}" width="{node_w}" height="{h}" rx="8" fill="#f6f8fa" stroke="#57606a"/>"##
        );
        text(&mut out, x0 + 10, y + 22, "node", &format!("node {name}"));
        let pods_y = y + 40;
        let bridge_y = pods_y + POD_H + 50;
        for (i, p) in n.pods.iter().enumerate() {
            let px = x0 + NODE_PAD + i as i64 * (POD_W + GAP);
            let _ = writeln!(
                out,
                r##"<rect x="{px}" y="{pods_y}" width="{POD_W}" height="{POD_H}" rx="6" fill="#ddf4ff" stroke="#0969da"/>"##
            );
            text(
                &mut out,
                px + 8,
                pods_y + 18,
                "pod",
                &format!("pod {}", p.name),
            );
            text(
                &mut out,
                px + 8,
                pods_y + 36,
                "small",
                &format!("eth0 {}", p.ip),
            );
            text(&mut out, px + 8, pods_y + 52, "small", &p.mac);
            // The veth pair: pod eth0 down to its host end on the bridge.
            let vx = px + POD_W / 2;
            let _ = writeln!(
                out,
                r##"<line x1="{vx}" y1="{}" x2="{vx}" y2="{bridge_y}" stroke="#57606a" stroke-width="2"/>"##,
                pods_y + POD_H
            );
            let veth = p.veth.as_deref().unwrap_or("veth");
            text(&mut out, vx + 6, pods_y + POD_H + 28, "small", veth);
            centres.insert(p.id.clone(), (vx, pods_y + POD_H / 2));
        }
        let _ = writeln!(
            out,
            r##"<rect x="{}" y="{bridge_y}" width="{}" height="24" rx="4" fill="#fff8c5" stroke="#9a6700"/>"##,
            x0 + NODE_PAD,
            node_w - 2 * NODE_PAD
        );
        text(&mut out, x0 + NODE_PAD + 8, bridge_y + 16, "pod", "bridge");
        let mut ty = bridge_y + 24 + 20;
        for (title, rows) in [
            ("bridge (ARP, FDB)", &n.bridge),
            ("node routes", &n.routes),
            ("to other nodes", &n.next),
        ] {
            if rows.is_empty() {
                continue;
            }
            text(&mut out, x0 + NODE_PAD, ty, "pod", title);
            ty += line;
            for (row, ok) in rows {
                let class = if *ok { "small" } else { "bad" };
                text(&mut out, x0 + NODE_PAD + 12, ty, class, row);
                ty += line;
            }
        }
        y += h + GAP;
    }

    // The checks: a line from sender to receiver, and one line of text each.
    for c in checks.iter().filter(|c| c.kind == "pod-to-pod") {
        let ends = (
            c.from["pod"].as_str().and_then(|p| centres.get(p)),
            c.to["pod"].as_str().and_then(|p| centres.get(p)),
        );
        if let (Some(&(x1, y1)), Some(&(x2, y2))) = ends {
            let colour = if c.ok { "#1a7f37" } else { "#cf222e" };
            let dash = if c.ok {
                ""
            } else {
                r#" stroke-dasharray="6 4""#
            };
            let bend = (x1 + x2) / 2 + 40;
            let _ = writeln!(
                out,
                r#"<path d="M {x1} {y1} Q {bend} {} {x2} {y2}" fill="none" stroke="{colour}" stroke-width="2" opacity="0.7"{dash}/>"#,
                (y1 + y2) / 2 - 30
            );
        }
    }
    text(&mut out, 20, y + 4, "node", "checks");
    let mut ty = y + 4 + line;
    for c in checks {
        let (class, verdict) = match (c.ok, c.failed_hop) {
            (true, _) => ("ok", "ok".to_owned()),
            (false, Some(hop)) => ("bad", format!("FAILED, broken at: {hop}")),
            (false, None) => ("bad", "FAILED".to_owned()),
        };
        text(
            &mut out,
            32,
            ty,
            class,
            &format!("{} {}: {} — {verdict}", c.kind, c.scope, c.label),
        );
        ty += line;
    }
    out.push_str("</svg>\n");
    out
}
