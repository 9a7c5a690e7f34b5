//! podrund's own Prometheus metrics (the `prometheus-client` crate), served over HTTP on
//! `metrics-address` when it is set (off by default): CRI requests by method and status
//! code with their latency, CNI plugin calls by command and plugin with their latency and
//! failures, pods and containers by state, shim starts, pods whose pause or shim died,
//! image pulls (outcome, bytes, duration) and the findings of the leak audit at start.
//! (`metrics.rs` is something else: the cAdvisor metrics of pods and containers that the
//! CRI serves kubelet.)

use std::net::SocketAddr;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::error::{Error, Result};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Rpc {
    method: &'static str,
    code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Plugin {
    command: &'static str,
    plugin: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct State {
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Reason {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Outcome {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Finding {
    kind: String,
}

type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

/// Latencies from 1 ms to about 65 s.
fn latency() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 17))
}

struct Metrics {
    registry: Registry,
    cri_requests: Family<Rpc, Counter>,
    cri_seconds: Histograms<Rpc>,
    cni_seconds: Histograms<Plugin>,
    cni_failures: Family<Plugin, Counter>,
    pods: Family<State, Gauge>,
    containers: Family<State, Gauge>,
    shim_starts: Counter,
    pods_died: Family<Reason, Counter>,
    pulls: Family<Outcome, Counter>,
    pull_bytes: Counter,
    pull_seconds: Histogram,
    audit_findings: Family<Finding, Gauge>,
}

static METRICS: LazyLock<Metrics> = LazyLock::new(|| {
    let mut registry = Registry::with_prefix("podrun");
    let m = Metrics {
        cri_requests: Family::default(),
        cri_seconds: Family::new_with_constructor(latency),
        cni_seconds: Family::new_with_constructor(latency),
        cni_failures: Family::default(),
        pods: Family::default(),
        containers: Family::default(),
        shim_starts: Counter::default(),
        pods_died: Family::default(),
        pulls: Family::default(),
        pull_bytes: Counter::default(),
        pull_seconds: latency(),
        audit_findings: Family::default(),
        registry: Registry::default(),
    };
    let r = &mut registry;
    r.register(
        "cri_requests",
        "CRI requests by method and gRPC status code",
        m.cri_requests.clone(),
    );
    r.register(
        "cri_request_duration_seconds",
        "CRI request latency by method and code",
        m.cri_seconds.clone(),
    );
    r.register(
        "cni_duration_seconds",
        "CNI plugin calls by command and plugin: latency",
        m.cni_seconds.clone(),
    );
    r.register(
        "cni_failures",
        "CNI plugin calls that failed, by command and plugin",
        m.cni_failures.clone(),
    );
    r.register("pods", "Pod sandboxes by state", m.pods.clone());
    r.register("containers", "Containers by state", m.containers.clone());
    r.register(
        "shim_starts",
        "Per-pod shims started",
        m.shim_starts.clone(),
    );
    r.register(
        "pods_died",
        "Ready pods whose pause or shim died, by which",
        m.pods_died.clone(),
    );
    r.register("image_pulls", "Image pulls by outcome", m.pulls.clone());
    r.register(
        "image_pull_bytes",
        "Bytes fetched from registries by pulls",
        m.pull_bytes.clone(),
    );
    r.register(
        "image_pull_duration_seconds",
        "Image pull latency",
        m.pull_seconds.clone(),
    );
    r.register(
        "leak_audit_findings",
        "What the leak audit at podrund's start found, by kind",
        m.audit_findings.clone(),
    );
    Metrics { registry, ..m }
});

/// One CRI request's outcome (`code` is the gRPC code's name, `OK` on success).
pub fn cri_request(method: &'static str, code: String, took: Duration) {
    let labels = Rpc { method, code };
    METRICS.cri_requests.get_or_create(&labels).inc();
    METRICS
        .cri_seconds
        .get_or_create(&labels)
        .observe(took.as_secs_f64());
}

/// One CNI plugin call.
pub fn cni_call(command: &'static str, plugin: &str, took: Duration, failed: bool) {
    let labels = Plugin {
        command,
        plugin: plugin.to_owned(),
    };
    METRICS
        .cni_seconds
        .get_or_create(&labels)
        .observe(took.as_secs_f64());
    if failed {
        METRICS.cni_failures.get_or_create(&labels).inc();
    }
}

pub fn shim_started() {
    METRICS.shim_starts.inc();
}

/// A Ready pod lost its pause or its shim (`reason` says which).
pub fn pod_died(reason: &'static str) {
    METRICS.pods_died.get_or_create(&Reason { reason }).inc();
}

pub fn image_pull(ok: bool, bytes: u64, took: Duration) {
    let outcome = if ok { "ok" } else { "failed" };
    METRICS.pulls.get_or_create(&Outcome { outcome }).inc();
    METRICS.pull_bytes.inc_by(bytes);
    METRICS.pull_seconds.observe(took.as_secs_f64());
}

/// What the gauges show, read at each scrape: pods and containers by state, and the leak
/// audit's findings at start by kind.
#[derive(Debug, Default)]
pub struct Gauges {
    pub pods: Vec<(&'static str, i64)>,
    pub containers: Vec<(&'static str, i64)>,
    pub findings: Vec<(String, usize)>,
}

/// The metrics as Prometheus' text format, with these gauges.
pub fn render(gauges: Gauges) -> String {
    for (state, n) in gauges.pods {
        METRICS.pods.get_or_create(&State { state }).set(n);
    }
    for (state, n) in gauges.containers {
        METRICS.containers.get_or_create(&State { state }).set(n);
    }
    for (kind, found) in gauges.findings {
        let labels = Finding { kind };
        METRICS
            .audit_findings
            .get_or_create(&labels)
            .set(found as i64);
    }
    let mut text = String::new();
    let _ = encode(&mut text, &METRICS.registry);
    text
}

/// Serves `GET /metrics` on `address` until the process ends.
pub async fn serve<F>(address: &str, gauges: Arc<F>) -> Result<()>
where
    F: Fn() -> Gauges + Send + Sync + 'static,
{
    let addr: SocketAddr = address
        .parse()
        .map_err(|e| Error::invalid("metrics-address", format!("{address:?}: {e}")))?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(Error::io("binding the metrics address", address))?;
    tracing::info!(address = %listener.local_addr().map_or(addr, |a| a), "serving Prometheus metrics on /metrics");
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let gauges = gauges.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                let text = (req.method() == hyper::Method::GET && req.uri().path() == "/metrics")
                    .then(|| render(gauges()));
                async move { Ok::<_, std::convert::Infallible>(answer(text)) }
            });
            let io = hyper_util::rt::TokioIo::new(stream);
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(io, service)
                .await;
        });
    }
}

/// The metrics for `GET /metrics` (`text`), else 404.
fn answer(text: Option<String>) -> Response<String> {
    let mut response = match text {
        Some(text) => Response::new(text),
        None => {
            let mut r = Response::new("only GET /metrics is served here\n".to_owned());
            *r.status_mut() = StatusCode::NOT_FOUND;
            r
        }
    };
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        ),
    );
    response
}
