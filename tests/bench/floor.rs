//! The floor: what any runtime must do for a pod's network, done as directly as it gets:
//! `ip netns add`, then each plugin of the node's CNI conflist run by hand with the previous
//! result (CNI 1.0), timed; then DEL in reverse and the netns removed.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use podrun_tests::TestNode;

fn run_plugin(
    command: &str,
    plugin: &serde_json::Value,
    list: &serde_json::Value,
    netns: &str,
    id: &str,
    prev: Option<&serde_json::Value>,
) -> Result<serde_json::Value> {
    let mut conf = plugin.clone();
    conf["cniVersion"] = list["cniVersion"].clone();
    conf["name"] = list["name"].clone();
    if let Some(prev) = prev {
        conf["prevResult"] = prev.clone();
    }
    let kind = plugin["type"].as_str().unwrap_or_default();
    let mut child = Command::new(format!("/usr/lib/cni/{kind}"))
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", id)
        .env("CNI_NETNS", netns)
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", "/usr/lib/cni")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("running CNI plugin {kind}"))?;
    child
        .stdin
        .take()
        .context("stdin")?
        .write_all(conf.to_string().as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!("{kind} {command}: {}", String::from_utf8_lossy(&out.stdout));
    }
    Ok(serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null))
}

/// (netns ms, CNI ADD ms), medians over `n` pods.
pub async fn measure(node: &TestNode, n: usize) -> Result<(f64, f64)> {
    let list: serde_json::Value =
        serde_json::from_slice(&std::fs::read(node.dir.join("cni/10-test.conflist"))?)?;
    let plugins = list["plugins"].as_array().cloned().unwrap_or_default();
    let (mut netns_ms, mut add_ms) = (Vec::new(), Vec::new());
    for i in 0..n {
        let name = format!("podrun-floor-{}-{i}", std::process::id());
        let id = format!("floor{i}");
        let t = Instant::now();
        let ok = Command::new("ip").args(["netns", "add", &name]).status()?;
        anyhow::ensure!(ok.success(), "ip netns add {name}");
        netns_ms.push(t.elapsed().as_secs_f64() * 1000.0);
        let netns = format!("/run/netns/{name}");
        let t = Instant::now();
        let mut prev = None;
        let mut result = Ok(());
        for p in &plugins {
            match run_plugin("ADD", p, &list, &netns, &id, prev.as_ref()) {
                Ok(r) => prev = Some(r),
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
        add_ms.push(t.elapsed().as_secs_f64() * 1000.0);
        for p in plugins.iter().rev() {
            let _ = run_plugin("DEL", p, &list, &netns, &id, prev.as_ref());
        }
        let _ = Command::new("ip").args(["netns", "del", &name]).status();
        result?;
    }
    Ok((
        super::percentile(netns_ms, 0.5),
        super::percentile(add_ms, 0.5),
    ))
}
