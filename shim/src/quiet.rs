//! Keeping a resting shim small. Serving a burst of requests (a container created and
//! started, an exec) faults in the parts of this static executable that serve it, and they
//! would stay mapped, counted in this pod's RSS, for the pod's whole life. Once the shim has
//! had no request for [`QUIET`], it unmaps them again: they stay in the page cache, shared
//! by every pod's shim, and the next request faults in what it needs.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use containerd_shim_protos::ttrpc;
use tokio::sync::Notify;
use ttrpc::r#async::{MethodHandler, Service, TtrpcContext};

/// How long without a request counts as at rest.
pub const QUIET: Duration = Duration::from_secs(2);

/// `services` with every unary method noting, as it finishes, that the shim was busy.
pub fn noted(services: HashMap<String, Service>, busy: &Arc<Notify>) -> HashMap<String, Service> {
    services
        .into_iter()
        .map(|(name, mut service)| {
            service.methods = service
                .methods
                .into_iter()
                .map(|(method, inner)| {
                    let noted: Box<dyn MethodHandler + Send + Sync> = Box::new(Noted {
                        inner,
                        busy: busy.clone(),
                    });
                    (method, noted)
                })
                .collect();
            (name, service)
        })
        .collect()
}

struct Noted {
    inner: Box<dyn MethodHandler + Send + Sync>,
    busy: Arc<Notify>,
}

#[async_trait]
impl MethodHandler for Noted {
    async fn handler(
        &self,
        ctx: TtrpcContext,
        req: ttrpc::Request,
    ) -> ttrpc::Result<ttrpc::Response> {
        let response = self.inner.handler(ctx, req).await;
        self.busy.notify_one();
        response
    }
}

/// Forever: after each spell of requests, once [`QUIET`] has passed without one, releases
/// the executable's pages.
pub async fn release_at_rest(busy: Arc<Notify>) {
    loop {
        busy.notified().await;
        while tokio::time::timeout(QUIET, busy.notified()).await.is_ok() {}
        podrun_pause::release_executable_pages();
    }
}
