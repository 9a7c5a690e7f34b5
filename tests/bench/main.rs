//! `podrun-bench`: how fast pods and containers start and how much memory each pod costs,
//! measured against a real podrund (the binaries next to this one), a real registry and
//! the node's CNI plugins. Run through `hack/bench`. Prints a table; `--json FILE` too.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Parser;
use podrun_proto::{client, cri};
use podrun_tests::registry::{busybox_image, Registry};
use podrun_tests::{Chain, Client, TestNode};

#[derive(Parser)]
struct Args {
    /// Pods started one after another.
    #[arg(long, default_value_t = 20)]
    sequential: usize,
    /// Pods started at once.
    #[arg(long, default_value_t = 20)]
    concurrent: usize,
    /// OCI runtime handler ("" for podrund's default).
    #[arg(long, default_value = "")]
    runtime: String,
    /// Also write the figures as JSON here.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
}

struct Timing {
    pod_ready: Duration,
    container_started: Duration,
}

fn percentile(mut v: Vec<f64>, p: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() - 1) as f64 * p).round() as usize]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// (RSS, PSS) in KiB from /proc/PID/smaps_rollup.
fn memory(pid: i64) -> (u64, u64) {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
    let field = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
            .unwrap_or(0)
    };
    (field("Rss:"), field("Pss:"))
}

async fn start_one(
    rt: &mut Client,
    node: &TestNode,
    image: &str,
    name: &str,
    handler: &str,
) -> Result<(String, Timing)> {
    let mut pod = node.pod_config(name);
    pod.log_directory = node.dir.join("logs").join(name).display().to_string();
    let t0 = Instant::now();
    let req = cri::RunPodSandboxRequest {
        config: Some(pod.clone()),
        runtime_handler: handler.into(),
    };
    let pod_id = rt.run_pod_sandbox(req).await?.into_inner().pod_sandbox_id;
    node.remember(&pod_id);
    let t1 = Instant::now();
    let config = cri::ContainerConfig {
        metadata: Some(cri::ContainerMetadata {
            name: "app".into(),
            attempt: 0,
        }),
        image: Some(cri::ImageSpec {
            image: image.into(),
            ..Default::default()
        }),
        command: vec!["sleep".into(), "100000".into()],
        log_path: "app.log".into(),
        ..Default::default()
    };
    let req = cri::CreateContainerRequest {
        pod_sandbox_id: pod_id.clone(),
        config: Some(config),
        sandbox_config: Some(pod),
    };
    let id = rt.create_container(req).await?.into_inner().container_id;
    rt.start_container(cri::StartContainerRequest { container_id: id })
        .await?;
    Ok((
        pod_id,
        Timing {
            pod_ready: t1 - t0,
            container_started: Instant::now() - t1,
        },
    ))
}

async fn teardown(rt: &mut Client, pods: &[String]) -> Result<Vec<f64>> {
    let mut times = Vec::new();
    for id in pods {
        let t = Instant::now();
        rt.stop_pod_sandbox(cri::StopPodSandboxRequest {
            pod_sandbox_id: id.clone(),
        })
        .await?;
        rt.remove_pod_sandbox(cri::RemovePodSandboxRequest {
            pod_sandbox_id: id.clone(),
        })
        .await?;
        times.push(ms(t.elapsed()));
    }
    Ok(times)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let args = Args::parse();
    let registry = Registry::start();
    let node = std::sync::Arc::new(TestNode::start(Chain::Standard));
    registry.push("busybox:bench", &busybox_image()).await;
    let image = format!("{}/busybox:bench", registry.addr);
    let mut images = client::image(&node.socket).await?;
    images
        .pull_image(cri::PullImageRequest {
            image: Some(cri::ImageSpec {
                image: image.clone(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await?;
    let mut rt = node.client().await;
    let daemon_pid = std::fs::read_dir("/proc")?
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i64>().ok())
        .find(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
                String::from_utf8_lossy(&c)
                    .contains(&node.socket.parent().unwrap().display().to_string())
                    && String::from_utf8_lossy(&c).contains("podrund")
            })
        })
        .context("podrund not found")?;
    let idle = memory(daemon_pid).0;

    // Sequential.
    let mut timings = Vec::new();
    let mut pods = Vec::new();
    for i in 0..args.sequential {
        let (id, t) = start_one(&mut rt, &node, &image, &format!("seq-{i}"), &args.runtime).await?;
        timings.push(t);
        pods.push(id);
    }
    // Memory per pod: each pod's shim and pause.
    let (mut rss, mut pss) = (Vec::new(), Vec::new());
    for id in &pods {
        let status = rt
            .pod_sandbox_status(cri::PodSandboxStatusRequest {
                pod_sandbox_id: id.clone(),
                verbose: true,
            })
            .await?
            .into_inner();
        let info: serde_json::Value = serde_json::from_str(&status.info["info"])?;
        let (s, p) = (
            memory(info["shimPid"].as_i64().unwrap_or(0)),
            memory(info["pausePid"].as_i64().unwrap_or(0)),
        );
        rss.push((s.0 + p.0) as f64);
        pss.push((s.1 + p.1) as f64);
    }
    let busy = memory(daemon_pid).0;
    let teardown_ms = teardown(&mut rt, &pods).await?;

    // Concurrent.
    let t = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..args.concurrent {
        let (mut rt, image, handler, node) = (
            rt.clone(),
            image.clone(),
            args.runtime.clone(),
            node.clone(),
        );
        tasks.push(tokio::spawn(async move {
            start_one(&mut rt, &node, &image, &format!("con-{i}"), &handler).await
        }));
    }
    let (mut failures, mut concurrent) = (0, Vec::new());
    for task in tasks {
        match task.await? {
            Ok((id, _)) => concurrent.push(id),
            Err(e) => {
                failures += 1;
                eprintln!("concurrent start failed: {e:#}");
            }
        }
    }
    let wall = ms(t.elapsed());
    teardown(&mut rt, &concurrent).await?;

    let pod_ready: Vec<f64> = timings.iter().map(|t| ms(t.pod_ready)).collect();
    let started: Vec<f64> = timings.iter().map(|t| ms(t.container_started)).collect();
    let ready: Vec<f64> = timings
        .iter()
        .map(|t| ms(t.pod_ready + t.container_started))
        .collect();
    let mut figures = BTreeMap::new();
    figures.insert("runp_p50_ms", percentile(pod_ready.clone(), 0.5));
    figures.insert("runp_p95_ms", percentile(pod_ready.clone(), 0.95));
    figures.insert("runp_max_ms", percentile(pod_ready, 1.0));
    figures.insert("container_started_p50_ms", percentile(started.clone(), 0.5));
    figures.insert("container_started_p95_ms", percentile(started, 0.95));
    figures.insert("ready_p50_ms", percentile(ready.clone(), 0.5));
    figures.insert("ready_p95_ms", percentile(ready.clone(), 0.95));
    figures.insert("ready_max_ms", percentile(ready, 1.0));
    figures.insert("concurrent_wall_ms", wall);
    figures.insert("concurrent_failures", failures as f64);
    figures.insert("per_pod_rss_kb", percentile(rss, 0.5));
    figures.insert("per_pod_pss_kb", percentile(pss, 0.5));
    figures.insert("daemon_idle_rss_kb", idle as f64);
    figures.insert("daemon_rss_with_pods_kb", busy as f64);
    figures.insert("teardown_p50_ms", percentile(teardown_ms, 0.5));
    let runtime = if args.runtime.is_empty() {
        "default".to_owned()
    } else {
        args.runtime.clone()
    };
    println!(
        "podrun ({runtime} runtime), {} sequential and {} concurrent pods with one container each",
        args.sequential, args.concurrent
    );
    for (k, v) in &figures {
        println!("  {k:<28} {v:>10.1}");
    }
    if let Some(path) = args.json {
        let key = if args.runtime.is_empty() {
            "podrun".to_owned()
        } else {
            format!("podrun-{}", args.runtime)
        };
        std::fs::write(
            &path,
            serde_json::to_string_pretty(&serde_json::json!({ key: figures }))?,
        )?;
    }
    node.assert_no_leaks();
    Ok(())
}
