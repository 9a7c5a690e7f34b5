//! Import: the images of an OCI image layout (a directory, or a tar of one, gzipped or
//! not) that lies on this node, for nodes that cannot reach a registry. Blobs are checked
//! against their digests exactly as in a pull, and a layout that fails half-way leaves the
//! store as it was.

use std::io::Read;
use std::path::Path;

use oci_client::manifest::OciImageManifest;
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::pull::{layout_blob, sha256_file, tempdir_in, Progress, Source};
use super::reference::{parse, repository};
use super::unpack::hex;
use super::{Image, ImageStore};
use crate::error::{Error, Result};

const INDEX_TYPES: [&str; 2] = [
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
];

impl ImageStore {
    /// Imports every image `path` holds; `name` names those the layout leaves unnamed.
    pub async fn import(&self, path: &Path, name: &str) -> Result<Vec<Image>> {
        if !path.is_absolute() {
            return Err(Error::invalid(
                "path",
                "must be an absolute path on the node",
            ));
        }
        let meta = std::fs::metadata(path)
            .map_err(|e| Error::invalid("path", format!("{}: {e}", path.display())))?;
        if meta.is_dir() {
            return self.import_layout(path, name).await;
        }
        let tmp = tempdir_in(&self.tmp_dir())?;
        let (archive, dir) = (path.to_owned(), tmp.clone());
        let result = async {
            tokio::task::spawn_blocking(move || untar(&archive, &dir))
                .await
                .map_err(|e| Error::Internal(e.to_string()))??;
            self.import_layout(&tmp, name).await
        }
        .await;
        let _ = std::fs::remove_dir_all(&tmp);
        result
    }

    async fn import_layout(&self, dir: &Path, name: &str) -> Result<Vec<Image>> {
        let layout: Value = read_json(&dir.join("oci-layout"))?;
        if layout["imageLayoutVersion"].as_str().is_none() {
            return Err(Error::invalid(
                "path",
                "oci-layout has no imageLayoutVersion: not an OCI image layout",
            ));
        }
        let index: Value = read_json(&dir.join("index.json"))?;
        let entries = index["manifests"].as_array().cloned().unwrap_or_default();
        if entries.is_empty() {
            return Err(Error::invalid("path", "index.json lists no manifests"));
        }
        // Resolve and name everything first, so a bad entry changes nothing.
        let mut wanted = Vec::new();
        for entry in &entries {
            let full = image_name(&entry["annotations"], name)?;
            let (digest, manifest) = manifest_for(dir, entry)?;
            for blob in std::iter::once(&manifest.config).chain(&manifest.layers) {
                let path = layout_blob(dir, &blob.digest)?;
                let got = match path.exists() {
                    true => sha256_file(&path)?,
                    false => "nothing".into(),
                };
                if got != blob.digest {
                    return Err(Error::invalid(
                        "path",
                        format!("blob {} has {got}: the layout is damaged", blob.digest),
                    ));
                }
            }
            wanted.push((parse(&full)?, digest, manifest));
        }
        let mut images = Vec::new();
        for (reference, digest, manifest) in wanted {
            let whole = reference.whole();
            let lock = self.lock_for(format!("ref:{whole}"));
            let _one_at_a_time = lock.lock().await;
            let digest = format!("{}@{digest}", repository(&reference));
            let tag = reference.digest().is_none().then(|| whole.clone());
            let progress = Progress::new(Vec::new());
            let source = Source::Layout(dir);
            images.push(
                self.store(&source, &manifest, &whole, tag, digest, &progress)
                    .await?,
            );
        }
        Ok(images)
    }
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let bytes = std::fs::read(path)
        .map_err(|e| Error::invalid("path", format!("{}: {e}", path.display())))?;
    serde_json::from_slice(&bytes)
        .map_err(|e| Error::invalid("path", format!("{}: {e}", path.display())))
}

/// A blob of the layout, verified against its digest.
fn verified_blob(dir: &Path, digest: &str) -> Result<Vec<u8>> {
    let path = layout_blob(dir, digest)?;
    let bytes = std::fs::read(&path)
        .map_err(|e| Error::invalid("path", format!("{}: {e}", path.display())))?;
    let got = format!("sha256:{}", hex(&Sha256::digest(&bytes)));
    if got != digest {
        return Err(Error::invalid(
            "path",
            format!("blob {digest} has digest {got}: the layout is damaged"),
        ));
    }
    Ok(bytes)
}

/// The image manifest an index entry leads to (an index picks linux/amd64), and the
/// digest the image is known by (the entry's).
fn manifest_for(dir: &Path, entry: &Value) -> Result<(String, OciImageManifest)> {
    let digest = entry["digest"].as_str().unwrap_or_default().to_owned();
    let mut bytes = verified_blob(dir, &digest)?;
    let media_type = entry["mediaType"].as_str().unwrap_or_default();
    if INDEX_TYPES.contains(&media_type) {
        let index: Value = serde_json::from_slice(&bytes)
            .map_err(|e| Error::invalid("path", format!("index {digest}: {e}")))?;
        let chosen = index["manifests"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|m| m["platform"]["os"] == "linux" && m["platform"]["architecture"] == "amd64")
            .and_then(|m| m["digest"].as_str())
            .ok_or_else(|| {
                Error::invalid("path", format!("index {digest} has no linux/amd64 image"))
            })?;
        bytes = verified_blob(dir, chosen)?;
    }
    let manifest = serde_json::from_slice(&bytes)
        .map_err(|e| Error::invalid("path", format!("manifest of {digest}: {e}")))?;
    Ok((digest, manifest))
}

/// The name an index entry is imported as: containerd's `io.containerd.image.name`, or an
/// `org.opencontainers.image.ref.name` that is a whole name; a bare tag there (what skopeo
/// and buildah write) goes with `given`; else `given` itself.
fn image_name(annotations: &Value, given: &str) -> Result<String> {
    if let Some(name) = annotations["io.containerd.image.name"].as_str() {
        return Ok(name.to_owned());
    }
    let ref_name = annotations["org.opencontainers.image.ref.name"].as_str();
    if let Some(name) = ref_name.filter(|n| n.contains('/')) {
        return Ok(name.to_owned());
    }
    if given.is_empty() {
        return Err(Error::invalid(
            "name",
            "the layout does not name its image: give a name",
        ));
    }
    let has_tag = given
        .rsplit('/')
        .next()
        .is_some_and(|last| last.contains(':'));
    Ok(match ref_name {
        Some(tag) if !has_tag && !given.contains('@') => format!("{given}:{tag}"),
        _ => given.to_owned(),
    })
}

/// Unpacks a tar (or tar.gz) of a layout into `dir`; the tar crate refuses entries that
/// would land outside it.
fn untar(archive: &Path, dir: &Path) -> Result<()> {
    let mut file = std::fs::File::open(archive)
        .map_err(|e| Error::invalid("path", format!("{}: {e}", archive.display())))?;
    let mut magic = [0u8; 2];
    let gzipped = file.read_exact(&mut magic).is_ok() && magic == [0x1f, 0x8b];
    let file = std::fs::File::open(archive).map_err(Error::io("opening", archive))?;
    let reader: Box<dyn Read> = match gzipped {
        true => Box::new(flate2::read::GzDecoder::new(file)),
        false => Box::new(file),
    };
    tar::Archive::new(reader).unpack(dir).map_err(|e| {
        Error::invalid(
            "path",
            format!("{}: not a readable tar: {e}", archive.display()),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_come_from_annotations_or_the_given_name() {
        let a = |v: Value| image_name(&v, "127.0.0.1:5000/app");
        assert_eq!(
            a(serde_json::json!({"io.containerd.image.name": "docker.io/library/x:1"})).unwrap(),
            "docker.io/library/x:1"
        );
        assert_eq!(
            a(serde_json::json!({"org.opencontainers.image.ref.name": "reg.io/y:2"})).unwrap(),
            "reg.io/y:2"
        );
        assert_eq!(
            a(serde_json::json!({"org.opencontainers.image.ref.name": "v3"})).unwrap(),
            "127.0.0.1:5000/app:v3"
        );
        assert_eq!(
            image_name(
                &serde_json::json!({"org.opencontainers.image.ref.name": "v3"}),
                "app:9"
            )
            .unwrap(),
            "app:9"
        );
        assert_eq!(a(Value::Null).unwrap(), "127.0.0.1:5000/app");
        assert!(image_name(&Value::Null, "").is_err());
    }
}
