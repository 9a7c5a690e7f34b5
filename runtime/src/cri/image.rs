//! The CRI ImageService over the image store.

use std::collections::HashMap;

use podrun_proto::cri;
use podrun_proto::cri::image_service_server::ImageService;
use tonic::{Request, Response, Status};

use super::{handle, subject, Cri, Stream};
use crate::error::Error;
use crate::image::{Auth, Image, Progress};

pub(super) fn to_cri(image: &Image) -> cri::Image {
    let (uid, username) = image.user();
    cri::Image {
        id: image.id.clone(),
        repo_tags: image.repo_tags.clone(),
        repo_digests: image.repo_digests.clone(),
        size: image.size,
        uid: uid.map(|value| cri::Int64Value { value }),
        username,
        spec: Some(cri::ImageSpec {
            image: image.id.clone(),
            ..Default::default()
        }),
        pinned: false,
    }
}

pub(super) fn auth(config: Option<cri::AuthConfig>) -> Auth {
    let Some(a) = config else {
        return Auth::Anonymous;
    };
    if !a.registry_token.is_empty() {
        return Auth::Bearer(a.registry_token);
    }
    if !a.identity_token.is_empty() {
        return Auth::Bearer(a.identity_token);
    }
    if !a.username.is_empty() {
        return Auth::Basic(a.username, a.password);
    }
    // `auth` is base64("user:password"), as in docker's config.json.
    let decoded = podrun_proto::go_bytes::decode(&a.auth).and_then(|b| String::from_utf8(b).ok());
    match decoded.as_deref().and_then(|s| s.split_once(':')) {
        Some((u, p)) => Auth::Basic(u.to_owned(), p.to_owned()),
        None => Auth::Anonymous,
    }
}

pub(super) fn image_name(
    spec: Option<&cri::ImageSpec>,
    field: &'static str,
) -> Result<String, Error> {
    match spec.map(|s| s.image.as_str()) {
        Some(name) if !name.is_empty() => Ok(name.to_owned()),
        _ => Err(Error::invalid(field, "is required")),
    }
}

#[tonic::async_trait]
impl ImageService for Cri {
    type StreamImagesStream = Stream<cri::StreamImagesResponse>;

    async fn list_images(
        &self,
        req: Request<cri::ListImagesRequest>,
    ) -> Result<Response<cri::ListImagesResponse>, Status> {
        let images = self.images(req.into_inner().filter);
        handle("ListImages", Default::default(), async {
            Ok(cri::ListImagesResponse { images })
        })
        .await
    }

    async fn stream_images(
        &self,
        req: Request<cri::StreamImagesRequest>,
    ) -> Result<Response<Self::StreamImagesStream>, Status> {
        let images = self.images(req.into_inner().filter);
        super::pages("StreamImages", async { Ok(images) }, |images| {
            cri::StreamImagesResponse { images }
        })
        .await
    }

    async fn image_status(
        &self,
        req: Request<cri::ImageStatusRequest>,
    ) -> Result<Response<cri::ImageStatusResponse>, Status> {
        handle("ImageStatus", subject(req.get_ref()), async {
            let req = req.into_inner();
            let name = image_name(req.image.as_ref(), "image.image")?;
            // CRI: an image that is not present is an empty answer, not an error.
            let Some(image) = self.node.images.find(&name) else {
                return Ok(cri::ImageStatusResponse::default());
            };
            let mut info = HashMap::new();
            if req.verbose {
                let verbose = serde_json::json!({"id": image.id, "layers": image.layers, "config": image.config});
                info.insert("info".to_owned(), verbose.to_string());
            }
            Ok(cri::ImageStatusResponse { image: Some(to_cri(&image)), info })
        })
        .await
    }

    async fn pull_image(
        &self,
        req: Request<cri::PullImageRequest>,
    ) -> Result<Response<cri::PullImageResponse>, Status> {
        let node = self.node.clone();
        handle("PullImage", subject(req.get_ref()), async move {
            let req = req.into_inner();
            let name = image_name(req.image.as_ref(), "image.image")?;
            // A pull runs to its end even if the client gives up: the next one reuses it.
            let auth = auth(req.auth);
            let n = node.clone();
            let image = node
                .detached("PullImage", async move {
                    let (start, progress) = (std::time::Instant::now(), Progress::new(Vec::new()));
                    let image = n.images.pull(&name, auth, &progress).await;
                    let bytes = progress.borrow().iter().map(|l| l.fetched).sum();
                    crate::prometheus::image_pull(image.is_ok(), bytes, start.elapsed());
                    image
                })
                .await?;
            Ok(cri::PullImageResponse {
                image_ref: image.id,
            })
        })
        .await
    }

    async fn remove_image(
        &self,
        req: Request<cri::RemoveImageRequest>,
    ) -> Result<Response<cri::RemoveImageResponse>, Status> {
        handle("RemoveImage", subject(req.get_ref()), async {
            let name = image_name(req.get_ref().image.as_ref(), "image.image")?;
            let node = self.node.clone();
            tokio::task::spawn_blocking(move || {
                node.images
                    .remove(&name, |id| node.containers.using_image(id))
            })
            .await
            .map_err(|e| Error::Internal(format!("RemoveImage task failed: {e}")))??;
            Ok(cri::RemoveImageResponse {})
        })
        .await
    }

    async fn image_fs_info(
        &self,
        _: Request<cri::ImageFsInfoRequest>,
    ) -> Result<Response<cri::ImageFsInfoResponse>, Status> {
        handle("ImageFsInfo", Default::default(), async {
            let node = self.node.clone();
            let (dir, bytes, inodes) = tokio::task::spawn_blocking(move || node.images.usage())
                .await
                .map_err(|e| Error::Internal(format!("ImageFsInfo task failed: {e}")))?;
            let now = crate::clock::now_nanos();
            let usage = cri::FilesystemUsage {
                timestamp: now,
                fs_id: Some(cri::FilesystemIdentifier {
                    mountpoint: dir.display().to_string(),
                }),
                used_bytes: Some(cri::UInt64Value { value: bytes }),
                inodes_used: Some(cri::UInt64Value { value: inodes }),
            };
            Ok(cri::ImageFsInfoResponse {
                image_filesystems: vec![usage],
                container_filesystems: vec![],
            })
        })
        .await
    }
}

impl Cri {
    /// The images `filter` names (all when it names none).
    fn images(&self, filter: Option<cri::ImageFilter>) -> Vec<cri::Image> {
        let wanted = filter
            .and_then(|f| f.image)
            .map(|s| s.image)
            .filter(|s| !s.is_empty());
        let images = match wanted {
            Some(name) => self.node.images.find(&name).into_iter().collect(),
            None => self.node.images.list(),
        };
        images.iter().map(to_cri).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auth_config_forms_become_credentials() {
        let basic = |a: Auth| match a {
            Auth::Basic(u, p) => Some((u, p)),
            _ => None,
        };
        let from_auth = auth(Some(cri::AuthConfig {
            auth: "dXNlcjpwYXNz".into(),
            ..Default::default()
        }));
        assert_eq!(basic(from_auth), Some(("user".into(), "pass".into())));
        let explicit = auth(Some(cri::AuthConfig {
            username: "u".into(),
            password: "p".into(),
            ..Default::default()
        }));
        assert_eq!(basic(explicit), Some(("u".into(), "p".into())));
        assert!(
            matches!(auth(Some(cri::AuthConfig { registry_token: "t".into(), ..Default::default() })), Auth::Bearer(t) if t == "t")
        );
        assert!(matches!(auth(None), Auth::Anonymous));
    }
}
