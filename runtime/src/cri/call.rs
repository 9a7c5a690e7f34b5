//! How every RPC runs: the one mapping of errors to gRPC status codes, the request's log
//! line, span and Prometheus count (`handle`), and the paging of the `Stream*` list RPCs.

use std::future::Future;
use std::pin::Pin;
use std::time::Instant;

use podrun_proto::cri;
use tonic::{Response, Status};

use crate::error::{Error, Kind};

pub(crate) fn to_status(e: &Error) -> Status {
    let msg = e.to_string();
    match e.kind() {
        Kind::InvalidArgument => Status::invalid_argument(msg),
        Kind::NotFound => Status::not_found(msg),
        Kind::FailedPrecondition => Status::failed_precondition(msg),
        Kind::DeadlineExceeded => Status::deadline_exceeded(msg),
        Kind::Unimplemented => Status::unimplemented(msg),
        Kind::Internal => Status::internal(msg),
    }
}

/// The pod and the container a request is about, as far as its fields say.
pub(crate) fn subject(req: &dyn std::any::Any) -> (String, String) {
    macro_rules! by {
        ($field:ident, $($t:ident),*) => {
            $(if let Some(r) = req.downcast_ref::<cri::$t>() {
                return by!(@$field r);
            })*
        };
        (@pod $r:ident) => { ($r.pod_sandbox_id.clone(), String::new()) };
        (@container $r:ident) => { (String::new(), $r.container_id.clone()) };
    }
    by!(
        pod,
        StopPodSandboxRequest,
        RemovePodSandboxRequest,
        PodSandboxStatusRequest,
        CreateContainerRequest,
        PodSandboxStatsRequest,
        PortForwardRequest,
        UpdatePodSandboxResourcesRequest
    );
    by!(
        container,
        StartContainerRequest,
        StopContainerRequest,
        RemoveContainerRequest,
        ContainerStatusRequest,
        UpdateContainerResourcesRequest,
        ReopenContainerLogRequest,
        ExecSyncRequest,
        ExecRequest,
        AttachRequest,
        ContainerStatsRequest,
        CheckpointContainerRequest
    );
    (String::new(), String::new())
}

/// Runs one request: logs it with its duration, in a span naming the method and the pod or
/// container it is about (JSON logs put those on every line), and maps its error.
pub(crate) async fn handle<T>(
    method: &'static str,
    (pod, container): (String, String),
    work: impl Future<Output = Result<T, Error>>,
) -> Result<Response<T>, Status> {
    let span = match (pod.is_empty(), container.is_empty()) {
        (false, _) => tracing::info_span!("cri", method, pod),
        (_, false) => tracing::info_span!("cri", method, container),
        _ => tracing::info_span!("cri", method),
    };
    let start = Instant::now();
    let result = tracing::Instrument::instrument(work, span.clone()).await;
    let _entered = span.enter();
    let took = start.elapsed();
    let ms = took.as_secs_f64() * 1000.0;
    match result {
        Ok(v) => {
            crate::prometheus::cri_request(method, "OK".into(), took);
            tracing::debug!(method, ms, "ok");
            Ok(Response::new(v))
        }
        Err(e) => {
            let status = to_status(&e);
            crate::prometheus::cri_request(method, format!("{:?}", status.code()), took);
            match e.kind() {
                Kind::Internal | Kind::DeadlineExceeded => {
                    tracing::error!(method, ms, error = %e, "failed")
                }
                _ => tracing::info!(method, ms, code = ?status.code(), error = %e, "refused"),
            }
            Err(status)
        }
    }
}

/// Items per message of the cri-api v0.36 `Stream*` list RPCs.
const PAGE: usize = 256;

/// A list as a stream of pages of at most PAGE items (the `Stream*` RPCs exist so that a
/// long list need not fit in one message); an empty list is one empty page.
pub(crate) async fn pages<T: Send + 'static, R: Send + 'static>(
    method: &'static str,
    list: impl Future<Output = Result<Vec<T>, Error>>,
    page: fn(Vec<T>) -> R,
) -> Result<Response<Stream<R>>, Status> {
    let items = handle(method, Default::default(), list).await?.into_inner();
    let mut out = Vec::new();
    let mut items = items.into_iter().peekable();
    loop {
        let chunk: Vec<T> = items.by_ref().take(PAGE).collect();
        out.push(Ok(page(chunk)));
        if items.peek().is_none() {
            break;
        }
    }
    Ok(Response::new(Box::pin(tokio_stream::iter(out))))
}

pub(crate) type Stream<T> =
    Pin<Box<dyn tokio_stream::Stream<Item = Result<T, Status>> + Send + 'static>>;
