//! `podrun.v1.Images`: what podctl uses beyond the CRI (pull with per-layer progress,
//! import of OCI image layouts). Same socket, same error mapping and logging.

use std::path::PathBuf;
use std::time::Duration;

use podrun_proto::podrun::v1 as api;
use podrun_proto::podrun::v1::images_server::Images;
use tonic::{Request, Response, Status};

use super::image::{auth, image_name, to_cri};
use super::{handle, subject, to_status, Cri, Stream};
use crate::error::Error;
use crate::image::{LayerProgress, Progress};

/// How often a pull's progress is sent at most.
const PROGRESS_EVERY: Duration = Duration::from_millis(100);

fn to_api(layers: &[LayerProgress]) -> Vec<api::LayerProgress> {
    layers
        .iter()
        .map(|l| api::LayerProgress {
            digest: l.digest.clone(),
            size: l.size as i64,
            fetched: l.fetched as i64,
            state: l.state.as_str().into(),
        })
        .collect()
}

#[tonic::async_trait]
impl Images for Cri {
    type PullStream = Stream<api::PullProgress>;

    async fn pull(
        &self,
        req: Request<api::PullRequest>,
    ) -> Result<Response<Self::PullStream>, Status> {
        let node = self.node.clone();
        handle("podrun.Pull", subject(req.get_ref()), async move {
            let req = req.into_inner();
            let name = image_name(req.image.as_ref(), "image.image")?;
            let auth = auth(req.auth);
            let (progress, mut watch) = tokio::sync::watch::channel(Vec::new());
            let (tx, rx) = tokio::sync::mpsc::channel(4);
            // The pull runs to its end whether or not anyone still watches.
            let pull = tokio::spawn(async move {
                let n = node.clone();
                node.detached("Pull", async move {
                    let progress: Progress = progress;
                    n.images.pull(&name, auth, &progress).await
                })
                .await
            });
            tokio::spawn(async move {
                while watch.changed().await.is_ok() {
                    let layers = to_api(&watch.borrow_and_update());
                    let msg = api::PullProgress {
                        layers,
                        image_ref: String::new(),
                    };
                    if tx.send(Ok(msg)).await.is_err() {
                        return;
                    }
                    tokio::time::sleep(PROGRESS_EVERY).await;
                }
                let last = match pull.await {
                    Ok(Ok(image)) => Ok(api::PullProgress {
                        layers: to_api(&watch.borrow()),
                        image_ref: image.id,
                    }),
                    Ok(Err(e)) => Err(to_status(&e)),
                    Err(e) => Err(Status::internal(format!("pull task failed: {e}"))),
                };
                let _ = tx.send(last).await;
            });
            Ok(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx)) as Self::PullStream)
        })
        .await
    }

    async fn import(
        &self,
        req: Request<api::ImportRequest>,
    ) -> Result<Response<api::ImportResponse>, Status> {
        let node = self.node.clone();
        handle("podrun.Import", subject(req.get_ref()), async move {
            let req = req.into_inner();
            if req.path.is_empty() {
                return Err(Error::invalid("path", "is required"));
            }
            let n = node.clone();
            let images = node
                .detached("Import", async move {
                    n.images.import(&PathBuf::from(req.path), &req.name).await
                })
                .await?;
            Ok(api::ImportResponse {
                images: images.iter().map(to_cri).collect(),
            })
        })
        .await
    }
}

fn to_report(r: crate::leak::Report) -> api::AuditReport {
    api::AuditReport {
        netns: r.netns,
        veths: r.veths,
        ip_reservations: r.ip_reservations,
        mounts: r.mounts,
        cgroups: r.cgroups,
        processes: r.processes,
        runtime_state: r.runtime_state,
        state_files: r.state_files,
        missing: r.missing,
        cni_leftovers: r.cni_leftovers,
    }
}

#[tonic::async_trait]
impl api::doctor_server::Doctor for Cri {
    async fn audit(
        &self,
        req: Request<api::AuditRequest>,
    ) -> Result<Response<api::AuditResponse>, Status> {
        let node = self.node.clone();
        handle("podrun.Audit", subject(req.get_ref()), async move {
            // No pod is half-made or half-removed while the audit looks (or fixes).
            let _quiet = node.inflight.write().await;
            let n = node.clone();
            let found = tokio::task::spawn_blocking(move || crate::doctor::audit(&n))
                .await
                .map_err(|e| Error::Internal(format!("audit: {e}")))?;
            let mut response = api::AuditResponse {
                found: Some(to_report(crate::leak::Report::of(&found))),
                ..Default::default()
            };
            if req.get_ref().fix {
                response.failed = crate::doctor::fix(&node, &found).await;
                let n = node.clone();
                let left = tokio::task::spawn_blocking(move || crate::doctor::audit(&n))
                    .await
                    .map_err(|e| Error::Internal(format!("audit: {e}")))?;
                response.left = Some(to_report(crate::leak::Report::of(&left)));
            }
            Ok(response)
        })
        .await
    }
}
