//! A real OCI registry (Debian's `docker-registry`) on 127.0.0.1 for one test, and test
//! images built locally from Debian's static busybox and pushed to it with a real client.

use std::fs;
use std::io::Write;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use oci_client::client::{ClientConfig, ClientProtocol, Config, ImageLayer};
use oci_client::manifest::{ImageIndexEntry, OciImageIndex, Platform};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use oci_spec::image::{Arch, Os};
use sha2::{Digest, Sha256};

pub const BUSYBOX: &str = "/bin/busybox";

pub struct Registry {
    pub addr: String,
    pub dir: PathBuf,
    child: Child,
}

fn sha(bytes: &[u8]) -> String {
    format!(
        "sha256:{}",
        Sha256::digest(bytes)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    )
}

impl Registry {
    pub fn start() -> Registry {
        assert!(
            Path::new("/usr/bin/docker-registry").exists(),
            "/usr/bin/docker-registry is missing: install docker-registry (hack/setup does)"
        );
        assert!(
            Path::new(BUSYBOX).exists(),
            "{BUSYBOX} is missing: install busybox-static (hack/setup does)"
        );
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dir = PathBuf::from(format!("/tmp/podrun-registry-{port}"));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let config = format!(
            "version: 0.1\nlog:\n  level: info\n  accesslog:\n    disabled: false\nstorage:\n  filesystem:\n    rootdirectory: {}/data\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n",
            dir.display()
        );
        fs::write(dir.join("config.yml"), config).unwrap();
        let log = fs::File::create(dir.join("registry.log")).unwrap();
        let child = Command::new("/usr/bin/docker-registry")
            .arg("serve")
            .arg(dir.join("config.yml"))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .expect("starting docker-registry");
        let addr = format!("127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(&addr).is_err() {
            assert!(Instant::now() < deadline, "docker-registry did not come up");
            std::thread::sleep(Duration::from_millis(20));
        }
        Registry { addr, dir, child }
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.join("registry.log")).unwrap_or_default()
    }

    fn client() -> Client {
        Client::new(ClientConfig {
            protocol: ClientProtocol::Http,
            ..Default::default()
        })
    }

    /// Pushes `image` as `name` (a "repo:tag" on this registry); returns the manifest digest.
    pub async fn push(&self, name: &str, image: &TestImage) -> String {
        push_to(&self.addr, name, image).await
    }

    /// Pushes an index naming `amd64` for linux/amd64 and `other` for linux/arm64.
    pub async fn push_index(&self, name: &str, amd64: &str, other: &str) -> String {
        let reference: Reference = format!("{}/{name}", self.addr).parse().unwrap();
        let client = Self::client();
        let mut manifests = Vec::new();
        for (repo_tag, arch) in [(other, Arch::ARM64), (amd64, Arch::Amd64)] {
            let r: Reference = format!("{}/{repo_tag}", self.addr).parse().unwrap();
            let (raw, digest) = client
                .pull_manifest_raw(
                    &r,
                    &RegistryAuth::Anonymous,
                    &["application/vnd.oci.image.manifest.v1+json"],
                )
                .await
                .unwrap();
            manifests.push(ImageIndexEntry {
                media_type: "application/vnd.oci.image.manifest.v1+json".into(),
                digest,
                size: raw.len() as i64,
                platform: Some(Platform {
                    architecture: arch,
                    os: Os::Linux,
                    os_version: None,
                    os_features: None,
                    variant: None,
                    features: None,
                }),
                annotations: None,
                artifact_type: None,
            });
        }
        let index = OciImageIndex {
            schema_version: 2,
            media_type: Some("application/vnd.oci.image.index.v1+json".into()),
            manifests,
            artifact_type: None,
            annotations: None,
        };
        client
            .push_manifest_list(&reference, &RegistryAuth::Anonymous, index)
            .await
            .expect("pushing index");
        let accept = ["application/vnd.oci.image.index.v1+json"];
        client
            .pull_manifest_raw(&reference, &RegistryAuth::Anonymous, &accept)
            .await
            .unwrap()
            .1
    }

    /// The file in the registry's storage that holds blob `digest`.
    pub fn blob_file(&self, digest: &str) -> PathBuf {
        let hex = digest.trim_start_matches("sha256:");
        self.dir.join(format!(
            "data/docker/registry/v2/blobs/sha256/{}/{hex}/data",
            &hex[..2]
        ))
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// Pushes `image` as `name` to the plain-HTTP registry at `addr`; returns the manifest digest.
pub async fn push_to(addr: &str, name: &str, image: &TestImage) -> String {
    let reference: Reference = format!("{addr}/{name}").parse().unwrap();
    let layers: Vec<ImageLayer> = image
        .layers
        .iter()
        .map(|(data, mt, _)| ImageLayer::new(data.clone(), mt.clone(), None))
        .collect();
    let config = Config::new(
        image.config.clone(),
        "application/vnd.oci.image.config.v1+json".into(),
        None,
    );
    let client = Registry::client();
    client
        .push(&reference, &layers, config, &RegistryAuth::Anonymous, None)
        .await
        .expect("pushing test image");
    let accept = ["application/vnd.oci.image.manifest.v1+json"];
    client
        .pull_manifest_raw(&reference, &RegistryAuth::Anonymous, &accept)
        .await
        .expect("reading back the manifest")
        .1
}

/// An image built in memory: layers (bytes, media type, diff id) and its config blob.
pub struct TestImage {
    pub layers: Vec<(Vec<u8>, String, String)>,
    pub config: Vec<u8>,
}

impl TestImage {
    /// The digest of layer `i` as the registry stores it (compressed).
    pub fn layer_digest(&self, i: usize) -> String {
        sha(&self.layers[i].0)
    }

    /// "sha256:" + the config digest: what CRI calls the image id.
    pub fn id(&self) -> String {
        sha(&self.config)
    }

    /// Writes the image as an OCI image layout in `dir`, its index entry carrying
    /// `annotations`; returns the manifest digest.
    pub fn write_layout(&self, dir: &Path, annotations: serde_json::Value) -> String {
        let blobs = dir.join("blobs/sha256");
        fs::create_dir_all(&blobs).unwrap();
        let put = |data: &[u8]| {
            let digest = sha(data);
            fs::write(blobs.join(digest.trim_start_matches("sha256:")), data).unwrap();
            digest
        };
        let descriptor = |data: &[u8], media_type: &str| serde_json::json!({"mediaType": media_type, "digest": put(data), "size": data.len()});
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": descriptor(&self.config, "application/vnd.oci.image.config.v1+json"),
            "layers": self.layers.iter().map(|(data, mt, _)| descriptor(data, mt)).collect::<Vec<_>>(),
        });
        let manifest = serde_json::to_vec(&manifest).unwrap();
        let mut entry = descriptor(&manifest, "application/vnd.oci.image.manifest.v1+json");
        entry["annotations"] = annotations;
        let index = serde_json::json!({"schemaVersion": 2, "manifests": [entry]});
        fs::write(dir.join("index.json"), index.to_string()).unwrap();
        fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
        entry["digest"].as_str().unwrap().to_owned()
    }
}

/// Builds tar layers entry by entry.
pub struct LayerBuilder(tar::Builder<Vec<u8>>);

impl Default for LayerBuilder {
    fn default() -> Self {
        LayerBuilder(tar::Builder::new(Vec::new()))
    }
}

impl LayerBuilder {
    fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_700_000_000);
        h.set_size(size);
        h
    }

    pub fn dir(mut self, path: &str) -> Self {
        let mut h = Self::header(tar::EntryType::Directory, 0o755, 0);
        self.0.append_data(&mut h, path, &[][..]).unwrap();
        self
    }

    pub fn file(mut self, path: &str, mode: u32, data: &[u8]) -> Self {
        let mut h = Self::header(tar::EntryType::Regular, mode, data.len() as u64);
        self.0.append_data(&mut h, path, data).unwrap();
        self
    }

    pub fn symlink(mut self, path: &str, target: &str) -> Self {
        let mut h = Self::header(tar::EntryType::Symlink, 0o777, 0);
        self.0.append_link(&mut h, path, target).unwrap();
        self
    }

    /// An entry whose name and link name are written byte for byte, unchecked: how a
    /// hostile layer carries `..`, absolute paths and links out of the layer.
    pub fn raw(mut self, kind: tar::EntryType, name: &str, link: &str, data: &[u8]) -> Self {
        let mut h = Self::header(kind, 0o644, data.len() as u64);
        let gnu = h.as_gnu_mut().unwrap();
        gnu.name[..name.len()].copy_from_slice(name.as_bytes());
        gnu.linkname[..link.len()].copy_from_slice(link.as_bytes());
        h.set_cksum();
        self.0.append(&h, data).unwrap();
        self
    }

    /// A character device node `major:minor` at `path`.
    pub fn char_device(mut self, path: &str, major: u32, minor: u32) -> Self {
        let mut h = Self::header(tar::EntryType::Char, 0o666, 0);
        h.set_device_major(major).unwrap();
        h.set_device_minor(minor).unwrap();
        self.0.append_data(&mut h, path, &[][..]).unwrap();
        self
    }

    /// A file with the given mode bits (setuid, setgid included) and owner.
    pub fn owned_file(mut self, path: &str, mode: u32, uid: u64, data: &[u8]) -> Self {
        let mut h = Self::header(tar::EntryType::Regular, mode, data.len() as u64);
        h.set_uid(uid);
        self.0.append_data(&mut h, path, data).unwrap();
        self
    }

    /// The busybox userland: /bin/busybox and its applets, /etc/passwd and /etc/group.
    pub fn busybox(self) -> Self {
        let mut b = self
            .dir("bin")
            .file("bin/busybox", 0o755, &fs::read(BUSYBOX).unwrap());
        for applet in [
            "sh", "sleep", "httpd", "nc", "cat", "echo", "hostname", "id", "ls", "ps", "wget",
            "stty", "touch", "mkdir", "rm", "true", "false", "kill", "env", "head", "yes", "dd",
            "chmod", "timeout",
        ] {
            b = b.symlink(&format!("bin/{applet}"), "busybox");
        }
        b.dir("etc")
            .file("etc/passwd", 0o644, b"root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/home/app:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/sh\n")
            .file("etc/group", 0o644, b"root:x:0:\napp:x:1000:\nextra:x:2000:app\nnobody:x:65534:\n")
            .dir("tmp")
            .dir("home")
            .dir("home/app")
    }

    pub fn tar(self) -> Vec<u8> {
        self.0.into_inner().unwrap()
    }
}

pub enum Compression {
    Gzip,
    Zstd,
    None,
}

/// Compresses a layer; returns (blob, media type, diff id).
pub fn layer(tar: Vec<u8>, how: Compression) -> (Vec<u8>, String, String) {
    let diff_id = sha(&tar);
    match how {
        Compression::Gzip => {
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            gz.write_all(&tar).unwrap();
            (
                gz.finish().unwrap(),
                "application/vnd.oci.image.layer.v1.tar+gzip".into(),
                diff_id,
            )
        }
        Compression::Zstd => (
            zstd::encode_all(&tar[..], 3).unwrap(),
            "application/vnd.oci.image.layer.v1.tar+zstd".into(),
            diff_id,
        ),
        Compression::None => (
            tar,
            "application/vnd.oci.image.layer.v1.tar".into(),
            diff_id,
        ),
    }
}

/// An image from layers and an image-config `config` object (Cmd, User, Env...).
pub fn image(layers: Vec<(Vec<u8>, String, String)>, config: serde_json::Value) -> TestImage {
    let diff_ids: Vec<&String> = layers.iter().map(|l| &l.2).collect();
    let blob = serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": config,
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    });
    TestImage {
        layers,
        config: serde_json::to_vec(&blob).unwrap(),
    }
}

/// The standard test image: busybox, `sh` by default.
pub fn busybox_image() -> TestImage {
    image(
        vec![layer(
            LayerBuilder::default().busybox().tar(),
            Compression::Gzip,
        )],
        serde_json::json!({"Cmd": ["sh"], "Env": ["PATH=/usr/sbin:/usr/bin:/sbin:/bin"]}),
    )
}

/// A sandbox ("pause") image for other runtimes: one layer holding `/pause`, podrun's own
/// pause binary at `pause`, run as 65535 like registry.k8s.io/pause.
pub fn pause_image(pause: &Path) -> TestImage {
    let binary = fs::read(pause).unwrap_or_else(|e| panic!("{}: {e}", pause.display()));
    image(
        vec![layer(
            LayerBuilder::default().file("pause", 0o755, &binary).tar(),
            Compression::Gzip,
        )],
        serde_json::json!({"Entrypoint": ["/pause"], "User": "65535:65535", "Env": ["PATH=/"]}),
    )
}
