//! `podrun-soak`: pod and container churn as kubelet makes it, for a long time, with podrund
//! SIGKILLed and restarted every so often in the middle of it. Each cycle runs a pod, creates
//! and starts a container in it, then stops and removes the pod; cycles whose podrund died
//! under them are cleaned up after the restart, as kubelet would. At the end: cycles per
//! second, p50/p99 of each RPC, podrund's RSS and open fds at the start and the end,
//! `podctl doctor`'s findings and an independent count of what was left. Run through
//! `hack/soak`; exit status 1 when anything was left behind.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use clap::Parser;
use podrun_proto::cri;
use podrun_tests::registry::{busybox_image, Registry};
use podrun_tests::workload::pull;
use podrun_tests::{Chain, Client, TestNode};
use tokio::sync::RwLock;

#[derive(Parser)]
struct Args {
    /// Pod + container cycles in all.
    #[arg(long, default_value_t = 1000)]
    cycles: usize,
    /// Cycles at once.
    #[arg(long, default_value_t = 10)]
    concurrency: usize,
    /// SIGKILL and restart podrund after every this many cycles (0: never).
    #[arg(long, default_value_t = 100)]
    restart_every: usize,
}

/// Latencies (ms) per RPC, and how many cycles a restart interrupted.
#[derive(Default)]
struct Figures {
    rpc: BTreeMap<&'static str, Vec<f64>>,
    interrupted: usize,
    /// The first few errors of interrupted cycles.
    errors: Vec<String>,
    /// podrund's (RSS, fds) once a tenth of the cycles are done (warmed up).
    warm: Option<(u64, usize)>,
}

fn percentile(mut v: Vec<f64>, p: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() - 1) as f64 * p).round() as usize]
}

/// (RSS in KiB, open fds) of a process.
fn usage(pid: i32) -> (u64, usize) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0);
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count());
    (rss, fds)
}

fn note_interrupted(figures: &Mutex<Figures>, n: usize, e: &tonic::Status) {
    let mut f = figures.lock().unwrap();
    f.interrupted += 1;
    if f.errors.len() < 5 {
        f.errors
            .push(format!("cycle {n}: {:?}: {}", e.code(), e.message()));
    }
}

/// Times one call into `figures`.
async fn timed<T>(
    figures: &Mutex<Figures>,
    rpc: &'static str,
    call: impl std::future::Future<Output = Result<T, tonic::Status>>,
) -> Result<T, tonic::Status> {
    let start = Instant::now();
    let out = call.await;
    if out.is_ok() {
        let ms = start.elapsed().as_secs_f64() * 1000.0;
        figures.lock().unwrap().rpc.entry(rpc).or_default().push(ms);
    }
    out
}

async fn cycle(
    rt: &mut Client,
    config: cri::PodSandboxConfig,
    image: &str,
    n: usize,
    figures: &Mutex<Figures>,
) -> Result<(), tonic::Status> {
    let run = cri::RunPodSandboxRequest {
        config: Some(config.clone()),
        runtime_handler: String::new(),
    };
    let pod = timed(figures, "RunPodSandbox", rt.run_pod_sandbox(run))
        .await?
        .into_inner()
        .pod_sandbox_id;
    let create = cri::CreateContainerRequest {
        pod_sandbox_id: pod.clone(),
        config: Some(cri::ContainerConfig {
            metadata: Some(cri::ContainerMetadata {
                name: "app".into(),
                attempt: 0,
            }),
            image: Some(cri::ImageSpec {
                image: image.into(),
                ..Default::default()
            }),
            command: vec!["sleep".into(), "1000".into()],
            log_path: format!("soak-{n}.log"),
            ..Default::default()
        }),
        sandbox_config: Some(config),
    };
    let c = timed(figures, "CreateContainer", rt.create_container(create))
        .await?
        .into_inner()
        .container_id;
    let start = cri::StartContainerRequest { container_id: c };
    timed(figures, "StartContainer", rt.start_container(start)).await?;
    let stop = cri::StopPodSandboxRequest {
        pod_sandbox_id: pod.clone(),
    };
    timed(figures, "StopPodSandbox", rt.stop_pod_sandbox(stop)).await?;
    let remove = cri::RemovePodSandboxRequest {
        pod_sandbox_id: pod,
    };
    timed(figures, "RemovePodSandbox", rt.remove_pod_sandbox(remove)).await?;
    Ok(())
}

/// After a restart: stops and removes the pod of cycle `n`, if podrund has it.
async fn clean_up(rt: &mut Client, n: usize) -> Result<(), tonic::Status> {
    let filter = cri::PodSandboxFilter {
        label_selector: [("test".to_owned(), format!("soak-{n}"))].into(),
        ..Default::default()
    };
    let pods = rt
        .list_pod_sandbox(cri::ListPodSandboxRequest {
            filter: Some(filter),
        })
        .await?
        .into_inner()
        .items;
    for p in pods {
        podrun_tests::stop_and_remove(rt, &p.id).await;
    }
    Ok(())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let args = Args::parse();
    let registry = Registry::start();
    let node = Arc::new(RwLock::new(TestNode::start(Chain::Operator)));
    let image = format!("{}/busybox:1", registry.addr);
    registry.push("busybox:1", &busybox_image()).await;
    pull(&*node.read().await, &image).await;

    let figures = Arc::new(Mutex::new(Figures::default()));
    let next = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    let restarts = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let pid = node.read().await.daemon_pid().unwrap_or_default();
    let first = usage(pid);
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..args.concurrency.max(1) {
        let (node, figures, next, done) =
            (node.clone(), figures.clone(), next.clone(), done.clone());
        let (image, restarts) = (image.clone(), restarts.clone());
        let (cycles, every) = (args.cycles, args.restart_every);
        workers.spawn(async move {
            loop {
                let n = next.fetch_add(1, Ordering::SeqCst);
                if n >= cycles {
                    return;
                }
                // The worker that completes every `every`-th cycle kills podrund, with the
                // other workers' cycles in flight, and starts it again.
                if every > 0 && n > 0 && n % every == 0 {
                    let mut node = node.write().await;
                    node.kill_daemon();
                    node.spawn_daemon();
                    restarts.fetch_add(1, Ordering::SeqCst);
                }
                // The node is locked only to read from it: a restart may come mid-cycle.
                let (mut rt, config) = {
                    let node = node.read().await;
                    let mut config = node.pod_config(&format!("soak-{n}"));
                    config.log_directory = node.dir.join("logs").display().to_string();
                    (node.client().await, config)
                };
                let ok = cycle(&mut rt, config, &image, n, &figures).await;
                if let Err(e) = &ok {
                    note_interrupted(&figures, n, e);
                    // podrund died under this cycle: once it is back, tidy up as kubelet.
                    for _ in 0..100 {
                        let mut rt = node.read().await.client().await;
                        if clean_up(&mut rt, n).await.is_ok() {
                            break;
                        }
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
                if done.fetch_add(1, Ordering::SeqCst) + 1 == (cycles / 10).max(1) {
                    let pid = node.read().await.daemon_pid().unwrap_or_default();
                    figures.lock().unwrap().warm = Some(usage(pid));
                }
            }
        });
    }
    // A progress line every 10 s.
    let progress = {
        let done = done.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(10)).await;
                eprintln!("podrun-soak: {} cycles done", done.load(Ordering::SeqCst));
            }
        })
    };
    while workers.join_next().await.is_some() {}
    progress.abort();
    let elapsed = started.elapsed();

    let node = node.read().await;
    let last = usage(node.daemon_pid().unwrap_or_default());
    let doctor = node.doctor(&[]);
    let left = node.leftovers();
    let figures = figures.lock().unwrap();
    println!(
        "cycles {}  concurrency {}  elapsed {:.1} s  cycles/s {:.2}  podrund restarts {}  cycles interrupted {}",
        args.cycles,
        args.concurrency,
        elapsed.as_secs_f64(),
        args.cycles as f64 / elapsed.as_secs_f64(),
        restarts.load(Ordering::SeqCst),
        figures.interrupted
    );
    println!(
        "{:<18} {:>8} {:>10} {:>10}",
        "rpc", "calls", "p50 ms", "p99 ms"
    );
    for (rpc, v) in &figures.rpc {
        println!(
            "{rpc:<18} {:>8} {:>10.1} {:>10.1}",
            v.len(),
            percentile(v.clone(), 0.5),
            percentile(v.clone(), 0.99)
        );
    }
    let warm = figures.warm.unwrap_or(first);
    println!(
        "podrund RSS {} kB at start, {} kB after a tenth of the cycles, {} kB at the end; \
         open fds {} -> {} -> {} (with restarts: the instance running at each point)",
        first.0, warm.0, last.0, first.1, warm.1, last.1
    );
    for e in &figures.errors {
        println!("interrupted: {e}");
    }
    match doctor.0 {
        Some(0) => println!("doctor: clean"),
        _ => println!("doctor found: {:#}", doctor.1["found"]),
    }
    println!("independent count of leftovers: {left:?}");
    if doctor.0 != Some(0) || !left.is_empty() {
        bail!("something was left behind");
    }
    Ok(())
}
