//! `podrun-bench`: podrun and containerd side by side on this machine, driven by the same
//! CRI client code: how fast pods and containers start, how fast they go, and what each pod
//! and each daemon costs in memory. podrun runs with its default OCI runtime (crun) and
//! with runc; containerd (Debian's, its CRI plugin, runc) gets the same CNI plugin chain,
//! the same image from the same local registry, and podrun's pause as its sandbox image. A
//! floor line times what any runtime must do: netns creation plus the CNI ADD chain, run
//! directly. Sequential starts take turns between the runtimes, one pod each, so that the
//! machine's own ups and downs fall on all of them alike; memory is read for each runtime
//! with only its own pods up. Run through `hack/bench`; `--json FILE` writes the figures
//! too.

mod floor;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Parser;
use podrun_proto::{client, cri};
use podrun_tests::containerd::Containerd;
use podrun_tests::registry::{busybox_image, pause_image, Registry};
use podrun_tests::{bin_dir, Chain, Client, TestNode};

#[derive(Parser)]
struct Args {
    /// Pods started one after another, per runtime.
    #[arg(long, default_value_t = 20)]
    sequential: usize,
    /// Pods started at once, per runtime.
    #[arg(long, default_value_t = 20)]
    concurrent: usize,
    /// Also write the figures as JSON here.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
    /// Seconds over which the idle CPU of each runtime's processes is read, with its
    /// sequential pods up.
    #[arg(long, default_value_t = 60)]
    idle_seconds: u64,
    /// The runtimes to measure, of podrun, podrun-runc and containerd. podrun and
    /// podrun-runc share one node and its /24 pod network: for a density run over 126 pods
    /// measure one of them.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "podrun,podrun-runc,containerd"
    )]
    runtimes: Vec<String>,
}

/// How long pods are left alone before their memory is read, and the node after a
/// teardown before the next phase.
const SETTLE: Duration = Duration::from_secs(3);

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
fn memory(pid: i32) -> (u64, u64) {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
    let field = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
            .unwrap_or(0)
    };
    (field("Rss:"), field("Pss:"))
}

/// CPU time (user + system, in clock ticks) a process used so far.
fn cpu_ticks(pid: i32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let rest = stat.rfind(')').map_or("", |i| &stat[i + 2..]);
    let f: Vec<&str> = rest.split_whitespace().collect();
    // Fields 14 and 15 of /proc/PID/stat: the 12th and 13th after the command name.
    let at = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    at(11) + at(12)
}

fn children(pid: i32) -> Vec<i32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

fn cmdline(pid: i32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
        .unwrap_or_default()
}

/// One runtime under test: where its CRI is and how to find a pod's processes.
struct Target<'a> {
    name: &'static str,
    node: &'a TestNode,
    socket: std::path::PathBuf,
    handler: &'static str,
    daemon: i32,
}

impl Target<'_> {
    /// The pod's per-pod processes: its shim and the shim's pause child.
    fn pod_processes(&self, pod: &str) -> Vec<i32> {
        // Both shims are started with `-id <pod id>` (containerd groups a pod's containers
        // under its sandbox's id).
        let needle = format!("-id {pod}");
        let shim = std::fs::read_dir("/proc")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
            .find(|p| cmdline(*p).contains("containerd-shim") && cmdline(*p).contains(&needle));
        let Some(shim) = shim else { return Vec::new() };
        let pause = children(shim)
            .into_iter()
            .filter(|c| cmdline(*c).contains("pause"));
        std::iter::once(shim).chain(pause).collect()
    }
}

impl Target<'_> {
    fn pod(&self, name: &str) -> cri::PodSandboxConfig {
        let mut pod = self.node.pod_config(name);
        pod.log_directory = self.node.dir.join("logs").join(name).display().to_string();
        pod
    }
}

/// RunPodSandbox, then one container: ((pod id, container id), time to pod ready, time to
/// container started).
async fn start_one(
    mut rt: Client,
    pod: cri::PodSandboxConfig,
    handler: &str,
    image: String,
) -> Result<((String, String), Duration, Duration)> {
    let t0 = Instant::now();
    let req = cri::RunPodSandboxRequest {
        config: Some(pod.clone()),
        runtime_handler: handler.into(),
    };
    let pod_id = rt.run_pod_sandbox(req).await?.into_inner().pod_sandbox_id;
    let t1 = Instant::now();
    let config = cri::ContainerConfig {
        metadata: Some(cri::ContainerMetadata {
            name: "app".into(),
            attempt: 0,
        }),
        image: Some(cri::ImageSpec {
            image,
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
    rt.start_container(cri::StartContainerRequest {
        container_id: id.clone(),
    })
    .await?;
    Ok(((pod_id, id), t1 - t0, Instant::now() - t1))
}

async fn teardown(rt: &mut Client, pods: &[String]) -> Result<Vec<f64>> {
    let mut times = Vec::new();
    for id in pods {
        let t = Instant::now();
        let pod_sandbox_id = id.clone();
        rt.stop_pod_sandbox(cri::StopPodSandboxRequest { pod_sandbox_id })
            .await?;
        let pod_sandbox_id = id.clone();
        rt.remove_pod_sandbox(cri::RemovePodSandboxRequest { pod_sandbox_id })
            .await?;
        times.push(ms(t.elapsed()));
    }
    Ok(times)
}

/// What one runtime's runs gave.
#[derive(Default)]
struct Runs {
    runp: Vec<f64>,
    ready: Vec<f64>,
    pods: Vec<String>,
    /// Pods and containers started one after another, and at once, which podrund logged
    /// phases for.
    ids: Vec<String>,
    concurrent_ids: Vec<String>,
    down: Vec<f64>,
    rss: Vec<f64>,
    pss: Vec<f64>,
    idle: u64,
    busy: u64,
    wall: f64,
    failures: usize,
    /// ListContainerStats with every sequential pod up (kubelet calls it every 10 s).
    stats: Vec<f64>,
    /// ListPodSandbox and ListContainers with every sequential pod up (kubelet relists
    /// every second).
    list_pods: Vec<f64>,
    list_containers: Vec<f64>,
    /// CPU of the daemon, shims and pauses with the pods up and no calls, % of one core.
    idle_cpu: f64,
}

/// Measures every runtime. Sequential starts are interleaved, one pod per runtime in
/// turn, so that whatever else the machine does weighs on all of them alike; memory,
/// teardowns and concurrent starts go one runtime after another.
async fn measure_all(
    targets: &[Target<'_>],
    image: &str,
    args: &Args,
) -> Result<BTreeMap<&'static str, Runs>> {
    let mut runs: BTreeMap<&'static str, Runs> = BTreeMap::new();
    let mut clients = Vec::new();
    for t in targets {
        let mut images = client::image(&t.socket).await?;
        let spec = cri::ImageSpec {
            image: image.into(),
            ..Default::default()
        };
        images
            .pull_image(cri::PullImageRequest {
                image: Some(spec),
                ..Default::default()
            })
            .await
            .with_context(|| format!("{}: pulling {image}", t.name))?;
        clients.push(client::runtime(&t.socket).await?);
    }
    // Settle, then the daemons at rest.
    tokio::time::sleep(Duration::from_millis(500)).await;
    for t in targets {
        runs.entry(t.name).or_default().idle = memory(t.daemon).0;
    }

    let turns = |i: usize| (0..targets.len()).map(move |k| (i + k) % targets.len());
    for i in 0..args.sequential {
        // Who goes first rotates, so that no runtime always follows the same one.
        for k in turns(i) {
            let (t, rt) = (&targets[k], &clients[k]);
            let config = t.pod(&format!("{}-seq-{i}", t.name));
            let (ids, pod, ctr) = start_one(rt.clone(), config, t.handler, image.to_owned())
                .await
                .with_context(|| format!("{}: starting pod {i}", t.name))?;
            t.node.remember(&ids.0);
            let r = runs.entry(t.name).or_default();
            r.runp.push(ms(pod));
            r.ready.push(ms(pod + ctr));
            r.pods.push(ids.0.clone());
            r.ids.extend([ids.0, ids.1]);
        }
    }
    // Memory per pod at rest, as it stays for the pod's life, not in the middle of its
    // start-up, read for each runtime with only its own pods up: podrun and podrun-runc
    // share podrund and the shim's pages, so the other's pods would lower a PSS and raise
    // the daemon's RSS. Hence teardowns go one runtime after another, last first.
    tokio::time::sleep(SETTLE).await;
    for (t, rt) in targets.iter().zip(clients.iter_mut()).rev() {
        let r = runs.entry(t.name).or_default();
        for id in &r.pods {
            let procs = t.pod_processes(id);
            anyhow::ensure!(!procs.is_empty(), "{}: no shim found for pod {id}", t.name);
            let m: Vec<(u64, u64)> = procs.iter().map(|p| memory(*p)).collect();
            r.rss.push(m.iter().map(|x| x.0).sum::<u64>() as f64);
            r.pss.push(m.iter().map(|x| x.1).sum::<u64>() as f64);
        }
        r.busy = memory(t.daemon).0;
        // Idle CPU: the daemon and every pod's shim and pause, no calls meanwhile.
        let procs: Vec<i32> = std::iter::once(t.daemon)
            .chain(r.pods.iter().flat_map(|id| t.pod_processes(id)))
            .collect();
        let before: u64 = procs.iter().map(|p| cpu_ticks(*p)).sum();
        tokio::time::sleep(Duration::from_secs(args.idle_seconds)).await;
        let after: u64 = procs.iter().map(|p| cpu_ticks(*p)).sum();
        let ticks = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
            .ok()
            .flatten()
            .unwrap_or(100) as f64;
        r.idle_cpu = (after - before) as f64 / ticks / args.idle_seconds.max(1) as f64 * 100.0;
        for _ in 0..5 {
            let start = Instant::now();
            rt.list_pod_sandbox(cri::ListPodSandboxRequest::default())
                .await
                .with_context(|| format!("{}: ListPodSandbox", t.name))?;
            r.list_pods.push(ms(start.elapsed()));
            let start = Instant::now();
            rt.list_containers(cri::ListContainersRequest::default())
                .await
                .with_context(|| format!("{}: ListContainers", t.name))?;
            r.list_containers.push(ms(start.elapsed()));
        }
        for _ in 0..5 {
            let start = Instant::now();
            let listed = rt
                .list_container_stats(cri::ListContainerStatsRequest::default())
                .await
                .with_context(|| format!("{}: ListContainerStats", t.name))?
                .into_inner()
                .stats;
            r.stats.push(ms(start.elapsed()));
            anyhow::ensure!(
                listed.len() >= r.pods.len(),
                "{}: {} stats for {} pods",
                t.name,
                listed.len(),
                r.pods.len()
            );
        }
        r.down = teardown(rt, &r.pods).await?;
    }

    for (t, rt) in targets.iter().zip(clients.iter_mut()) {
        // The kernel frees network namespaces asynchronously, on its own workers: let it
        // finish with the last phase's before timing a concurrent start.
        tokio::time::sleep(SETTLE).await;
        let start = Instant::now();
        let mut tasks = Vec::new();
        for i in 0..args.concurrent {
            let config = t.pod(&format!("{}-con-{i}", t.name));
            let (rt, handler, image) = (rt.clone(), t.handler, image.to_owned());
            tasks.push(tokio::spawn(start_one(rt, config, handler, image)));
        }
        let (mut failures, mut started, mut ids) = (0, Vec::new(), Vec::new());
        for task in tasks {
            match task.await? {
                Ok(((pod, container), _, _)) => {
                    t.node.remember(&pod);
                    started.push(pod.clone());
                    ids.extend([pod, container]);
                }
                Err(e) => {
                    failures += 1;
                    eprintln!("{}: concurrent start failed: {e:#}", t.name);
                }
            }
        }
        let r = runs.entry(t.name).or_default();
        r.wall = ms(start.elapsed());
        r.failures = failures;
        r.concurrent_ids = ids;
        teardown(rt, &started).await?;
    }
    Ok(runs)
}

impl Runs {
    fn figures(&self) -> BTreeMap<&'static str, f64> {
        let p = |v: &Vec<f64>, q| percentile(v.clone(), q);
        BTreeMap::from([
            ("runp_p50_ms", p(&self.runp, 0.5)),
            ("runp_p95_ms", p(&self.runp, 0.95)),
            ("runp_max_ms", p(&self.runp, 1.0)),
            ("ready_p50_ms", p(&self.ready, 0.5)),
            ("ready_p95_ms", p(&self.ready, 0.95)),
            ("ready_max_ms", p(&self.ready, 1.0)),
            ("list_container_stats_p50_ms", p(&self.stats, 0.5)),
            ("list_pod_sandbox_p50_ms", p(&self.list_pods, 0.5)),
            ("list_containers_p50_ms", p(&self.list_containers, 0.5)),
            ("pods_total_pss_kb", self.pss.iter().sum()),
            ("idle_cpu_percent", self.idle_cpu),
            ("concurrent_wall_ms", self.wall),
            ("concurrent_failures", self.failures as f64),
            ("teardown_p50_ms", p(&self.down, 0.5)),
            ("per_pod_rss_kb", p(&self.rss, 0.5)),
            ("per_pod_pss_kb", p(&self.pss, 0.5)),
            ("daemon_idle_rss_kb", self.idle as f64),
            ("daemon_rss_with_pods_kb", self.busy as f64),
        ])
    }
}

/// Medians of the `*_ms` fields podrund logged for each phase of the pods and containers
/// in `ids`.
fn phase_medians(log: &str, ids: &[String]) -> BTreeMap<String, f64> {
    let mut all: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    let ours = |l: &&str| ids.iter().any(|id| l.contains(&format!("={id} ")));
    for line in log.lines().filter(|l| l.contains(" phases")).filter(ours) {
        for field in line.split_whitespace() {
            let Some((k, v)) = field.split_once('=') else {
                continue;
            };
            if let (true, Ok(v)) = (k.ends_with("_ms"), v.parse::<f64>()) {
                all.entry(k.to_owned()).or_default().push(v);
            }
        }
    }
    all.into_iter()
        .map(|(k, v)| (k, percentile(v, 0.5)))
        .collect()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let args = Args::parse();
    let registry = Registry::start();
    registry.push("busybox:bench", &busybox_image()).await;
    registry
        .push("pause:bench", &pause_image(&bin_dir().join("podrun-pause")))
        .await;
    let image = format!("{}/busybox:bench", registry.addr);

    let node = TestNode::start(Chain::Operator);
    let wanted = |name: &str| args.runtimes.iter().any(|r| r == name);
    let ctrd = match wanted("containerd") {
        true => Some(Containerd::start(&format!("{}/pause:bench", registry.addr))),
        false => None,
    };
    let podrund = node.daemon_pid().context("podrund")?;
    let mut targets = Vec::new();
    for (name, handler) in [("podrun", ""), ("podrun-runc", "runc")] {
        if wanted(name) {
            targets.push(Target {
                name,
                node: &node,
                socket: node.socket.clone(),
                handler,
                daemon: podrund,
            });
        }
    }
    if let Some(ctrd) = &ctrd {
        targets.push(Target {
            name: "containerd",
            node: &ctrd.node,
            socket: ctrd.socket.clone(),
            handler: "",
            daemon: ctrd.pid().context("containerd")?,
        });
    }
    anyhow::ensure!(
        targets.len() == args.runtimes.len(),
        "--runtimes takes podrun, podrun-runc and containerd, not {:?}",
        args.runtimes
    );
    let runs = measure_all(&targets, &image, &args).await?;
    let results: BTreeMap<&str, BTreeMap<&str, f64>> =
        runs.iter().map(|(k, r)| (*k, r.figures())).collect();
    let log = node.log();
    let phases = |ids: &[String]| phase_medians(&log, ids);
    let podruns: Vec<&str> = ["podrun", "podrun-runc"]
        .into_iter()
        .filter(|n| runs.contains_key(n))
        .collect();
    let mut columns = Vec::new();
    for concurrent in [false, true] {
        for n in &podruns {
            let r = &runs[n];
            columns.push(phases(if concurrent {
                &r.concurrent_ids
            } else {
                &r.ids
            }));
        }
    }
    let floor = floor::measure(&node, args.sequential.max(1)).await?;

    println!(
        "{} sequential and {} concurrent pods per runtime, one container each (pull excluded)",
        args.sequential, args.concurrent
    );
    let names: Vec<&str> = targets.iter().map(|t| t.name).collect();
    let header: String = names.iter().map(|n| format!(" {n:>12}")).collect();
    println!("{:<26}{header} {:>18}", "", "podrun/containerd");
    let first = &results[names[0]];
    for key in first.keys() {
        let row: String = names
            .iter()
            .map(|n| format!(" {:>12.1}", results[n][key]))
            .collect();
        let ratio = match (results.get("podrun"), results.get("containerd")) {
            (Some(p), Some(c)) if c[key] > 0.0 => format!("{:.2}", p[key] / c[key]),
            _ => "-".into(),
        };
        println!("{key:<26}{row} {ratio:>18}");
    }
    println!(
        "floor: netns + CNI ADD chain, run directly: p50 {:.1} ms (netns {:.1}, CNI ADD {:.1})",
        floor.0 + floor.1,
        floor.0,
        floor.1
    );
    println!("podrund phase medians (ms), one pod at a time and all at once:");
    let header: String = podruns
        .iter()
        .map(|n| format!(" {n:>12}"))
        .chain(
            podruns
                .iter()
                .map(|n| format!(" {:>12}", format!("{n} x N"))),
        )
        .collect();
    println!("  {:<24}{header}", "");
    for k in columns.first().map(|c| c.keys()).into_iter().flatten() {
        let row: String = columns
            .iter()
            .map(|c| format!(" {:>12.1}", c.get(k).copied().unwrap_or(f64::NAN)))
            .collect();
        println!("  {k:<24}{row}");
    }
    if let Some(path) = &args.json {
        let mut json = serde_json::to_value(&results)?;
        json["floor"] = serde_json::json!({"netns_ms": floor.0, "cni_add_ms": floor.1});
        std::fs::write(path, serde_json::to_string_pretty(&json)?)?;
    }
    node.assert_no_leaks();
    if let Some(ctrd) = &ctrd {
        ctrd.node.assert_no_leaks();
    }
    Ok(())
}
