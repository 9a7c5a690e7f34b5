//! The image store under `<root>/images`: content-addressed blobs (`blobs/sha256/HEX`),
//! layers unpacked once per chain id and shared by every image (`layers/HEX`), and an index
//! of images (`index.json`, written atomically) keyed by image id ("sha256:" + the config
//! digest), each with the names (repo tags and digests) that point at it.

mod digest;
mod hosts;
mod import;
mod pull;
mod reference;
pub mod unpack;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::store;

pub use pull::{Auth, LayerProgress, LayerState, Progress, PullOptions};
pub use reference::normalize;

const INDEX_VERSION: u32 = 1;

/// One image as the store knows it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Image {
    /// "sha256:" + the config blob's digest.
    pub id: String,
    /// "name:tag", e.g. "docker.io/library/busybox:latest".
    pub repo_tags: Vec<String>,
    /// "name@sha256:..." of the manifest (or index) the name resolved to.
    pub repo_digests: Vec<String>,
    /// Chain ids of the layers, bottom first.
    pub layers: Vec<String>,
    /// Compressed size of config and layers, as the registry served them.
    pub size: u64,
    /// The image config (the `config` object of the image's config blob).
    pub config: serde_json::Value,
}

impl Image {
    /// The image's user: `uid` when numeric, else `username`.
    pub fn user(&self) -> (Option<i64>, String) {
        let user = self.config["User"].as_str().unwrap_or_default();
        let name = user.split(':').next().unwrap_or_default();
        match name.parse::<i64>() {
            Ok(uid) => (Some(uid), String::new()),
            Err(_) => (None, name.to_owned()),
        }
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Index {
    version: u32,
    images: BTreeMap<String, Image>,
}

pub struct ImageStore {
    dir: PathBuf,
    index: Mutex<Index>,
    /// One lock per reference being pulled: a second pull of it waits and reuses the first.
    pulls: crate::store::KeyedLocks<String>,
    /// Layers pulls are using before their image is recorded: RemoveImage keeps these.
    in_use: Mutex<HashMap<String, usize>>,
    pub options: PullOptions,
}

/// Marks layers as used by a pull in progress, until dropped.
pub(crate) struct LayersInUse<'a> {
    store: &'a ImageStore,
    chains: Vec<String>,
}

impl Drop for LayersInUse<'_> {
    fn drop(&mut self) {
        let mut used = self.store.in_use.lock().unwrap_or_else(|p| p.into_inner());
        for c in &self.chains {
            if let Some(n) = used.get_mut(c) {
                *n -= 1;
                if *n == 0 {
                    used.remove(c);
                }
            }
        }
    }
}

impl ImageStore {
    pub fn open(root: &Path, options: PullOptions) -> Result<ImageStore> {
        let dir = root.join("images");
        for sub in ["blobs/sha256", "layers", "tmp"] {
            std::fs::create_dir_all(dir.join(sub)).map_err(Error::io("creating", dir.join(sub)))?;
        }
        // Whatever a crashed pull left half-done is garbage.
        let _ = std::fs::remove_dir_all(dir.join("tmp"));
        std::fs::create_dir_all(dir.join("tmp")).map_err(Error::io("creating", dir.join("tmp")))?;
        let path = dir.join("index.json");
        let index = match store::read_json::<Index>(&path) {
            Ok(index) if index.version == INDEX_VERSION => index,
            Ok(index) => {
                return Err(Error::Internal(format!(
                    "{}: unknown version {}",
                    path.display(),
                    index.version
                )))
            }
            Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
                Index {
                    version: INDEX_VERSION,
                    ..Default::default()
                }
            }
            Err(e) => return Err(e),
        };
        Ok(ImageStore {
            dir,
            index: Mutex::new(index),
            pulls: Default::default(),
            in_use: Mutex::default(),
            options,
        })
    }

    pub(crate) fn use_layers(&self, chains: &[String]) -> LayersInUse<'_> {
        let mut used = self.in_use.lock().unwrap_or_else(|p| p.into_inner());
        for c in chains {
            *used.entry(c.clone()).or_default() += 1;
        }
        LayersInUse {
            store: self,
            chains: chains.to_vec(),
        }
    }

    fn index(&self) -> std::sync::MutexGuard<'_, Index> {
        self.index.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn save(&self, index: &Index) -> Result<()> {
        store::write_atomic(&self.dir.join("index.json"), index)
    }

    /// The file of blob `digest`; only a well-formed sha256 digest names one.
    pub fn blob_path(&self, digest: &str) -> Result<PathBuf> {
        Ok(self
            .dir
            .join("blobs/sha256")
            .join(digest::sha256_hex("blob digest", digest)?))
    }

    /// The directory of layer `chain_id`; only a well-formed sha256 digest names one, so
    /// no id from an image can point the store at a path it did not make.
    pub fn layer_path(&self, chain_id: &str) -> Result<PathBuf> {
        Ok(self
            .dir
            .join("layers")
            .join(digest::sha256_hex("layer chain id", chain_id)?))
    }

    fn tmp_dir(&self) -> PathBuf {
        self.dir.join("tmp")
    }

    pub fn list(&self) -> Vec<Image> {
        self.index().images.values().cloned().collect()
    }

    /// Finds an image by id (full or a unique hex prefix), by name:tag, or by name@digest.
    /// A bare name means `:latest`; a name without a registry means docker.io.
    pub fn find(&self, reference: &str) -> Option<Image> {
        let index = self.index();
        let hex = reference.trim_start_matches("sha256:");
        if let Some(image) = index.images.get(&format!("sha256:{hex}")) {
            return Some(image.clone());
        }
        if let Ok(name) = normalize(reference) {
            if let Some(image) = index
                .images
                .values()
                .find(|i| i.repo_tags.contains(&name) || i.repo_digests.contains(&name))
            {
                return Some(image.clone());
            }
        }
        let is_hex = hex.len() >= 6 && hex.chars().all(|c| c.is_ascii_hexdigit());
        let mut matches = index
            .images
            .values()
            .filter(|i| is_hex && i.id.trim_start_matches("sha256:").starts_with(hex));
        match (matches.next(), matches.next()) {
            (Some(image), None) => Some(image.clone()),
            _ => None,
        }
    }

    /// Records a pulled image under `name` (moving the tag away from any other image).
    fn add(&self, mut image: Image, tag: Option<String>, digest: String) -> Result<Image> {
        let mut index = self.index();
        for other in index.images.values_mut() {
            if let Some(tag) = &tag {
                other.repo_tags.retain(|t| t != tag);
            }
        }
        if let Some(existing) = index.images.get(&image.id) {
            image.repo_tags = existing.repo_tags.clone();
            image.repo_digests = existing.repo_digests.clone();
        }
        if let Some(tag) = tag {
            image.repo_tags.push(tag);
        }
        if !image.repo_digests.contains(&digest) {
            image.repo_digests.push(digest);
        }
        image.repo_tags.sort();
        image.repo_tags.dedup();
        index.images.insert(image.id.clone(), image.clone());
        self.save(&index)?;
        Ok(image)
    }

    /// Removes what `reference` names: by tag, only that tag (the image goes when no name
    /// is left); by id or digest, the whole image. Unknown references are not an error.
    /// An image that would go while containers use it (`users` names them) is refused.
    /// Layers and blobs no other image uses are deleted: moved aside under the locks, then
    /// deleted after them, so a slow delete holds up no other image call. Blocking: run it
    /// off the async workers.
    pub fn remove(&self, reference: &str, users: impl Fn(&str) -> Vec<String>) -> Result<()> {
        let Some(image) = self.find(reference) else {
            return Ok(());
        };
        let mut trash = Vec::new();
        {
            let mut index = self.index();
            let tag = normalize(reference)
                .ok()
                .filter(|n| image.repo_tags.contains(n));
            let entry = index
                .images
                .get(&image.id)
                .cloned()
                .ok_or_else(|| Error::Internal("image vanished".into()))?;
            let mut kept = entry.clone();
            if let Some(tag) = &tag {
                kept.repo_tags.retain(|t| t != tag);
                let name = tag.rsplit_once(':').map(|(n, _)| n).unwrap_or_default();
                if !kept
                    .repo_tags
                    .iter()
                    .any(|t| t.starts_with(&format!("{name}:")))
                {
                    kept.repo_digests
                        .retain(|d| !d.starts_with(&format!("{name}@")));
                }
            }
            let gone = tag.is_none() || (kept.repo_tags.is_empty() && kept.repo_digests.is_empty());
            if gone {
                let containers = users(&image.id);
                if !containers.is_empty() {
                    return Err(Error::FailedPrecondition(format!(
                        "image {} is in use by container(s) {}",
                        image.id,
                        containers.join(", ")
                    )));
                }
                index.images.remove(&image.id);
            } else {
                index.images.insert(image.id.clone(), kept);
            }
            self.save(&index)?;
            if gone {
                // Under the in-use lock: a pull that has not marked a layer yet will find
                // it gone and fetch it again.
                let pulling = self.in_use.lock().unwrap_or_else(|p| p.into_inner());
                let used: Vec<&String> = index
                    .images
                    .values()
                    .flat_map(|i| &i.layers)
                    .chain(pulling.keys())
                    .collect();
                for chain in image.layers.iter().filter(|l| !used.contains(l)) {
                    let path = self.layer_path(chain)?;
                    let aside = self.tmp_dir().join(format!("removed-{}", store::new_id()?));
                    match std::fs::rename(&path, &aside) {
                        Ok(()) => trash.push(aside),
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                        Err(e) => return Err(Error::io("removing layer", &path)(e)),
                    }
                }
                let _ = std::fs::remove_file(self.blob_path(&image.id)?);
            }
        }
        for dir in trash {
            std::fs::remove_dir_all(&dir).map_err(Error::io("removing layer", &dir))?;
        }
        Ok(())
    }

    /// The bytes and inodes the store uses, and where it lives.
    pub fn usage(&self) -> (PathBuf, u64, u64) {
        fn walk(p: &Path, bytes: &mut u64, inodes: &mut u64) {
            if let Ok(meta) = std::fs::symlink_metadata(p) {
                *inodes += 1;
                *bytes += std::os::unix::fs::MetadataExt::blocks(&meta) * 512;
                if meta.is_dir() {
                    for e in std::fs::read_dir(p).into_iter().flatten().flatten() {
                        walk(&e.path(), bytes, inodes);
                    }
                }
            }
        }
        let (mut bytes, mut inodes) = (0, 0);
        walk(&self.dir, &mut bytes, &mut inodes);
        (self.dir.clone(), bytes, inodes)
    }
}

#[cfg(test)]
mod tests;
