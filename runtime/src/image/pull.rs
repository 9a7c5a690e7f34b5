//! PullImage: resolve the name (an index or manifest list picks linux/amd64), fetch the
//! config and every layer not already unpacked, verify each against its digest (and each
//! unpacked layer against the config's diff id), and only then record the image. A broken
//! or truncated pull leaves the store as it was; pulls of one name, and unpacks of one
//! layer, happen once however many callers ask at the same time.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use oci_client::client::{Certificate, CertificateEncoding, ClientConfig, ClientProtocol};
use oci_client::manifest::{OciDescriptor, OciImageManifest};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncWrite, AsyncWriteExt};

use super::hosts::{endpoints, Endpoint};
use super::reference::{parse, repository};
use super::unpack::{chain_ids, hex, unpack};
use super::{Image, ImageStore};
use crate::error::{Error, Result};

#[derive(Debug, Clone)]
pub struct PullOptions {
    /// containerd-style `certs.d` directory: `<registry>/hosts.toml` mirrors, CAs, HTTP.
    pub registry_config: PathBuf,
    /// How long a registry may take to accept a connection or to send more of an answer.
    /// A pull waiting behind another pull of the same image waits at most twice that.
    pub timeout: std::time::Duration,
}

impl Default for PullOptions {
    fn default() -> Self {
        PullOptions {
            registry_config: PathBuf::new(),
            timeout: std::time::Duration::from_secs(60),
        }
    }
}

/// Credentials for one pull, from the CRI AuthConfig.
#[derive(Clone, Default)]
pub enum Auth {
    #[default]
    Anonymous,
    Basic(String, String),
    Bearer(String),
}

impl From<Auth> for RegistryAuth {
    fn from(a: Auth) -> RegistryAuth {
        match a {
            Auth::Anonymous => RegistryAuth::Anonymous,
            Auth::Basic(u, p) => RegistryAuth::Basic(u, p),
            Auth::Bearer(t) => RegistryAuth::Bearer(t),
        }
    }
}

fn is_local(registry: &str) -> bool {
    let host = registry.rsplit_once(':').map_or(registry, |(h, port)| {
        if port.chars().all(|c| c.is_ascii_digit()) {
            h
        } else {
            registry
        }
    });
    matches!(host, "localhost" | "127.0.0.1" | "[::1]")
}

fn pull_error(reference: &str, e: oci_client::errors::OciDistributionError) -> Error {
    let text = e.to_string();
    let lower = text.to_lowercase();
    let not_found = matches!(
        e,
        oci_client::errors::OciDistributionError::ImageManifestNotFoundError(_)
    ) || [
        "manifest unknown",
        "manifest_unknown",
        "name unknown",
        "name_unknown",
        "code: 404",
    ]
    .iter()
    .any(|m| lower.contains(m));
    match not_found {
        true => Error::NotFound {
            what: "image",
            id: reference.to_owned(),
        },
        false => Error::Internal(format!("pulling {reference}: {text}")),
    }
}

pub(super) fn sha256_file(path: &Path) -> Result<String> {
    let mut f = std::fs::File::open(path).map_err(Error::io("opening", path))?;
    let mut hash = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f.read(&mut buf).map_err(Error::io("reading", path))?;
        if n == 0 {
            return Ok(format!("sha256:{}", hex(&hash.finalize())));
        }
        hash.update(&buf[..n]);
    }
}

impl ImageStore {
    pub(super) fn lock_for(&self, key: String) -> Arc<tokio::sync::Mutex<()>> {
        self.pulls.get(key)
    }

    /// A client for one endpoint, and the reference to ask it for.
    fn client_for(&self, ep: &Endpoint, requested: &Reference) -> Result<(Client, Reference)> {
        let mut extra_root_certificates = Vec::new();
        for ca in &ep.ca {
            let data = std::fs::read(ca).map_err(Error::io("reading registry CA", ca))?;
            extra_root_certificates.push(Certificate {
                encoding: CertificateEncoding::Pem,
                data,
            });
        }
        let config = ClientConfig {
            protocol: if ep.plain_http {
                ClientProtocol::Http
            } else {
                ClientProtocol::Https
            },
            accept_invalid_certificates: ep.skip_verify,
            extra_root_certificates,
            connect_timeout: Some(self.options.timeout),
            read_timeout: Some(self.options.timeout),
            ..Default::default()
        };
        let repository = requested.repository().to_owned();
        let source = match (requested.digest(), requested.tag()) {
            (Some(d), _) => Reference::with_digest(ep.host.clone(), repository, d.to_owned()),
            (None, t) => Reference::with_tag(
                ep.host.clone(),
                repository,
                t.unwrap_or("latest").to_owned(),
            ),
        };
        Ok((Client::new(config), source))
    }

    /// Pulls `name` and returns the image it now names; `progress` follows each layer.
    pub async fn pull(&self, name: &str, auth: Auth, progress: &Progress) -> Result<Image> {
        let requested = parse(name)?;
        let whole = requested.whole();
        let lock = self.lock_for(format!("ref:{whole}"));
        // Behind a pull of the same image that hangs, a waiter gives up on its own.
        let wait = self.options.timeout * 2;
        let _one_at_a_time =
            tokio::time::timeout(wait, lock.lock())
                .await
                .map_err(|_| Error::Timeout {
                    what: format!("waiting for another pull of {whole}"),
                    secs: wait.as_secs(),
                })?;
        let auth: RegistryAuth = auth.into();
        // Mirrors first, then the registry itself: the first that resolves the name serves it.
        let mut failure = None;
        let mut resolved = None;
        for ep in endpoints(
            &self.options.registry_config,
            requested.registry(),
            is_local(requested.registry()),
        )? {
            let (client, source) = self.client_for(&ep, &requested)?;
            match client
                .pull_image_manifest_and_list_digest(&source, &auth)
                .await
            {
                Ok(found) => {
                    resolved = Some((client, source, found));
                    break;
                }
                Err(e) => {
                    tracing::info!(image = %whole, endpoint = %ep.host, error = %e, "endpoint did not resolve the image");
                    failure = Some(pull_error(&whole, e));
                }
            }
        }
        let Some((client, reference, (manifest, manifest_digest, list_digest))) = resolved else {
            return Err(failure.unwrap_or(Error::NotFound {
                what: "image",
                id: whole,
            }));
        };

        let tag = requested.digest().is_none().then(|| whole.clone());
        let digest = format!(
            "{}@{}",
            repository(&requested),
            list_digest.unwrap_or(manifest_digest)
        );
        let source = Source::Registry(&client, &reference);
        self.store(&source, &manifest, &whole, tag, digest, progress)
            .await
    }

    /// Fetches what `manifest` lists from `source` (the config, then each layer not
    /// already unpacked), verifying everything, then records the image as `tag`/`digest`.
    pub(super) async fn store(
        &self,
        source: &Source<'_>,
        manifest: &OciImageManifest,
        whole: &str,
        tag: Option<String>,
        digest: String,
        progress: &Progress,
    ) -> Result<Image> {
        check_manifest(manifest)?;
        // The config: small, kept as a blob named by its digest (the image id).
        let mut config_bytes = Vec::new();
        source
            .blob(&manifest.config, Capped(&mut config_bytes))
            .await?;
        let id = format!("sha256:{}", hex(&Sha256::digest(&config_bytes)));
        if id != manifest.config.digest {
            return Err(Error::Internal(format!(
                "{whole}: config digest {id} does not match the manifest's {}",
                manifest.config.digest
            )));
        }
        let (config, diff_ids) = parse_config(whole, &config_bytes, manifest.layers.len())?;
        let chains = chain_ids(&diff_ids);
        let _in_use = self.use_layers(&chains);
        progress.send_replace(
            manifest
                .layers
                .iter()
                .map(|l| LayerProgress {
                    digest: l.digest.clone(),
                    size: l.size.max(0) as u64,
                    fetched: 0,
                    state: LayerState::Waiting,
                })
                .collect(),
        );
        for (i, ((layer, diff_id), chain)) in manifest
            .layers
            .iter()
            .zip(&diff_ids)
            .zip(&chains)
            .enumerate()
        {
            let layer_progress = LayerSink { progress, layer: i };
            self.fetch_layer(source, layer, diff_id, chain, &layer_progress)
                .await?;
        }
        crate::store::write_bytes_atomic(&self.blob_path(&id)?, &config_bytes)?;

        let size = manifest.config.size.max(0) as u64
            + manifest
                .layers
                .iter()
                .map(|l| l.size.max(0) as u64)
                .sum::<u64>();
        let image = Image {
            id,
            repo_tags: Vec::new(),
            repo_digests: Vec::new(),
            layers: chains,
            size,
            config: config["config"].clone(),
        };
        tracing::info!(image = %whole, id = %image.id, "stored");
        self.add(image, tag, digest)
    }

    /// Makes sure layer `chain` is unpacked: fetch to a temp file, check the digest,
    /// unpack into a temp dir, check the diff id, then rename into place.
    async fn fetch_layer(
        &self,
        source: &Source<'_>,
        layer: &OciDescriptor,
        diff_id: &str,
        chain: &str,
        progress: &LayerSink<'_>,
    ) -> Result<()> {
        let lock = self.lock_for(format!("layer:{chain}"));
        let _one_at_a_time = lock.lock().await;
        let dest = self.layer_path(chain)?;
        if dest.exists() {
            progress.set(LayerState::Present);
            return Ok(());
        }
        let tmp = tempdir_in(&self.tmp_dir())?;
        let blob = tmp.join("blob");
        let result = async {
            let file = tokio::fs::File::create(&blob)
                .await
                .map_err(Error::io("creating", &blob))?;
            progress.set(LayerState::Fetching);
            source.blob(layer, progress.count(file)).await?;
            let blob2 = blob.clone();
            let got = tokio::task::spawn_blocking(move || sha256_file(&blob2))
                .await
                .map_err(|e| Error::Internal(e.to_string()))??;
            if got != layer.digest {
                return Err(Error::Internal(format!(
                    "layer {}: fetched content has digest {got}",
                    layer.digest
                )));
            }
            progress.set(LayerState::Unpacking);
            let (blob2, unpacked) = (blob.clone(), tmp.join("layer"));
            let unpacked2 = unpacked.clone();
            let got = tokio::task::spawn_blocking(move || unpack(&blob2, &unpacked2))
                .await
                .map_err(|e| Error::Internal(e.to_string()))??;
            if got != diff_id {
                return Err(Error::Internal(format!(
                    "layer {}: unpacked diff id {got}, config says {diff_id}",
                    layer.digest
                )));
            }
            std::fs::rename(&unpacked, &dest).map_err(Error::io("publishing layer", &dest))?;
            progress.set(LayerState::Done);
            Ok(())
        }
        .await;
        let _ = std::fs::remove_dir_all(&tmp);
        result
    }
}

/// The largest image config podrund reads (they are a few KiB; the biggest seen in the
/// wild are under 1 MiB).
const MAX_CONFIG: usize = 8 << 20;

/// Every digest a manifest names is checked before any is used, and every size: a layer
/// is fetched only up to the size its manifest gives, the config only up to MAX_CONFIG.
pub(super) fn check_manifest(manifest: &OciImageManifest) -> Result<()> {
    super::digest::sha256_hex("manifest config digest", &manifest.config.digest)?;
    if !(0..=MAX_CONFIG as i64).contains(&manifest.config.size) {
        return Err(Error::invalid(
            "manifest config size",
            format!("{} bytes (at most {MAX_CONFIG})", manifest.config.size),
        ));
    }
    for layer in &manifest.layers {
        super::digest::sha256_hex("manifest layer digest", &layer.digest)?;
        if layer.size < 0 {
            return Err(Error::invalid(
                "manifest layer size",
                format!("{}", layer.size),
            ));
        }
    }
    Ok(())
}

/// A buffer that refuses to grow past MAX_CONFIG.
struct Capped<'a>(&'a mut Vec<u8>);

impl AsyncWrite for Capped<'_> {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        if this.0.len() + buf.len() > MAX_CONFIG {
            let e = std::io::Error::other(format!("image config larger than {MAX_CONFIG} bytes"));
            return std::task::Poll::Ready(Err(e));
        }
        this.0.extend_from_slice(buf);
        std::task::Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}

/// An image config blob: its JSON, and its layers' diff ids, each a well-formed digest and
/// one per layer of the manifest.
pub(super) fn parse_config(
    whole: &str,
    bytes: &[u8],
    layers: usize,
) -> Result<(serde_json::Value, Vec<String>)> {
    let config: serde_json::Value = serde_json::from_slice(bytes)
        .map_err(|e| Error::Internal(format!("{whole}: bad image config: {e}")))?;
    let diff_ids: Vec<String> = config["rootfs"]["diff_ids"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|d| {
            let d = d.as_str().unwrap_or_default();
            super::digest::sha256_hex("image config rootfs.diff_ids", d).map(|_| d.to_owned())
        })
        .collect::<Result<_>>()?;
    if diff_ids.len() != layers {
        return Err(Error::Internal(format!(
            "{whole}: {layers} layers but {} diff ids",
            diff_ids.len()
        )));
    }
    Ok((config, diff_ids))
}

/// Where an image's blobs come from: a registry, or an OCI image layout on disk.
pub(super) enum Source<'a> {
    Registry(&'a Client, &'a Reference),
    Layout(&'a Path),
}

impl Source<'_> {
    /// Copies blob `desc` into `out`. The caller checks the digest.
    async fn blob(&self, desc: &OciDescriptor, out: impl AsyncWrite + Unpin + Send) -> Result<()> {
        match self {
            Source::Registry(client, reference) => client
                .pull_blob(reference, desc, out)
                .await
                .map_err(|e| pull_error(&reference.whole(), e)),
            Source::Layout(dir) => {
                let path = layout_blob(dir, &desc.digest)?;
                let mut file = tokio::fs::File::open(&path)
                    .await
                    .map_err(|e| Error::invalid("path", format!("{}: {e}", path.display())))?;
                let mut out = out;
                tokio::io::copy(&mut file, &mut out)
                    .await
                    .map_err(Error::io("copying", &path))?;
                out.shutdown().await.map_err(Error::io("copying", &path))
            }
        }
    }
}

/// The file of blob `digest` in layout `dir` (`blobs/<algorithm>/<hex>`).
pub(super) fn layout_blob(dir: &Path, digest: &str) -> Result<PathBuf> {
    let hex = super::digest::sha256_hex("path", digest)?;
    Ok(dir.join("blobs/sha256").join(hex))
}

/// How far each layer of one pull or import has got; `watch` subscribers see every change.
pub type Progress = tokio::sync::watch::Sender<Vec<LayerProgress>>;

#[derive(Debug, Clone, PartialEq)]
pub struct LayerProgress {
    pub digest: String,
    pub size: u64,
    pub fetched: u64,
    pub state: LayerState,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum LayerState {
    Waiting,
    Fetching,
    Unpacking,
    Done,
    /// Unpacked before this pull: nothing to fetch.
    Present,
}

impl LayerState {
    pub fn as_str(self) -> &'static str {
        match self {
            LayerState::Waiting => "waiting",
            LayerState::Fetching => "fetching",
            LayerState::Unpacking => "unpacking",
            LayerState::Done => "done",
            LayerState::Present => "present",
        }
    }
}

/// One layer's entry in a `Progress`.
struct LayerSink<'a> {
    progress: &'a Progress,
    layer: usize,
}

impl<'a> LayerSink<'a> {
    fn set(&self, state: LayerState) {
        self.progress.send_modify(|l| l[self.layer].state = state);
    }

    /// `out`, counting what is written through it as fetched.
    fn count<W: AsyncWrite + Unpin>(&'a self, out: W) -> Counted<'a, W> {
        Counted { out, sink: self }
    }
}

struct Counted<'a, W> {
    out: W,
    sink: &'a LayerSink<'a>,
}

impl<W: AsyncWrite + Unpin> AsyncWrite for Counted<'_, W> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let this = &mut *self;
        // A registry that sends more than the manifest says is cut off: its layer cannot
        // fill the node's disk.
        let sink = this.sink;
        let over = sink.progress.borrow()[sink.layer]
            .fetched
            .saturating_add(buf.len() as u64)
            > sink.progress.borrow()[sink.layer].size;
        if over {
            let e = std::io::Error::other("the registry sent more than the layer's size");
            return std::task::Poll::Ready(Err(e));
        }
        let written = std::pin::Pin::new(&mut this.out).poll_write(cx, buf);
        if let std::task::Poll::Ready(Ok(n)) = written {
            let sink = this.sink;
            sink.progress
                .send_modify(|l| l[sink.layer].fetched += n as u64);
        }
        written
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.out).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.out).poll_shutdown(cx)
    }
}

pub(super) fn tempdir_in(dir: &Path) -> Result<std::path::PathBuf> {
    let path = dir.join(crate::store::new_id()?);
    std::fs::create_dir(&path).map_err(Error::io("creating", &path))?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Any manifest and config JSON: no panic, and whatever is accepted names only paths
    /// inside the store.
    #[test]
    fn fuzz_manifests_and_configs() {
        let d = format!("sha256:{}", "a".repeat(64));
        let manifest = format!(
            r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{d}","size":7}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"{d}","size":1}}]}}"#
        );
        let config = format!(
            r#"{{"architecture":"amd64","os":"linux","config":{{"Cmd":["sh"],"User":"1000:1000"}},"rootfs":{{"type":"layers","diff_ids":["{d}","{d}"]}}}}"#
        );
        let dir = tempfile::tempdir().unwrap();
        let store = super::super::ImageStore::open(dir.path(), PullOptions::default()).unwrap();
        let tokens: &[&[u8]] = &[
            b"sha256:", b"/etc", b"..", b"\"", b"[", b"]", b"{", b"}", b",", b"null",
        ];
        podrun_fuzzkit::fuzz(
            "manifest-config",
            &[manifest.as_bytes(), config.as_bytes()],
            tokens,
            |input| {
                if let Ok(m) = serde_json::from_slice::<OciImageManifest>(input) {
                    if check_manifest(&m).is_ok() {
                        for l in &m.layers {
                            assert!(store.blob_path(&l.digest).unwrap().starts_with(dir.path()));
                        }
                    }
                }
                for layers in 0..3 {
                    if let Ok((_, diff_ids)) = parse_config("x", input, layers) {
                        for chain in chain_ids(&diff_ids) {
                            let path = store.layer_path(&chain).unwrap();
                            assert!(
                                path.starts_with(dir.path().join("images/layers")),
                                "{path:?}"
                            );
                        }
                    }
                }
            },
        );
    }

    #[test]
    fn only_loopback_registries_are_plain_http_by_default() {
        assert!(is_local("127.0.0.1:5000") && is_local("localhost") && is_local("localhost:80"));
        assert!(
            !is_local("registry.k8s.io")
                && !is_local("10.0.0.1:5000")
                && !is_local("localhost.example.com")
        );
    }
}
