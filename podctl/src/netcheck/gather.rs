//! Gathering the pods to check: a node's ready pods, asked of its CRI endpoint, with the
//! netns and IP the runtime reports for each. Their eth0 is read later, from inside the
//! netns, with the checks.

use anyhow::{bail, Context, Result};
use podrun_proto::{client, cri};
use serde_json::Value;

use super::path::Eth0;
use super::Pod;

/// Ready pods of the node at `endpoint`, narrowed to `wanted` (ids or prefixes) if given.
pub(super) async fn pods_of(
    endpoint: &std::path::Path,
    node: &str,
    wanted: &[String],
) -> Result<Vec<Pod>> {
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
