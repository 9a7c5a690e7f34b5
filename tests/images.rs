//! The ImageService against a real registry on 127.0.0.1 with locally built images.

use std::path::Path;
use std::process::Command;

use podrun_proto::client;
use podrun_proto::cri;
use podrun_proto::cri::image_service_client::ImageServiceClient;
use podrun_tests::registry::{busybox_image, image, layer, Compression, LayerBuilder, Registry};
use podrun_tests::{Chain, TestNode};
use tonic::transport::Channel;

type Images = ImageServiceClient<Channel>;

async fn images(node: &TestNode) -> Images {
    client::image(&node.socket).await.expect("connecting")
}

fn spec(name: &str) -> Option<cri::ImageSpec> {
    Some(cri::ImageSpec {
        image: name.into(),
        ..Default::default()
    })
}

async fn pull(c: &mut Images, name: &str) -> Result<String, tonic::Status> {
    c.pull_image(cri::PullImageRequest {
        image: spec(name),
        ..Default::default()
    })
    .await
    .map(|r| r.into_inner().image_ref)
}

async fn status(c: &mut Images, name: &str) -> Option<cri::Image> {
    c.image_status(cri::ImageStatusRequest {
        image: spec(name),
        verbose: false,
    })
    .await
    .unwrap()
    .into_inner()
    .image
}

/// What the image store holds on disk: layer dirs and leftovers of pulls.
fn store_contents(node: &TestNode) -> (usize, usize) {
    let count = |p: &Path| std::fs::read_dir(p).map(|d| d.count()).unwrap_or(0);
    let dir = node.dir.join("root/images");
    (count(&dir.join("layers")), count(&dir.join("tmp")))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_list_inspect_and_remove_by_every_kind_of_name() {
    let registry = Registry::start();
    let node = TestNode::start(Chain::Operator);
    let mut c = images(&node).await;
    let img = busybox_image();
    let digest = registry.push("busybox:1", &img).await;
    registry.push("busybox:2", &img).await;
    let user_img = image(
        vec![layer(
            LayerBuilder::default().busybox().tar(),
            Compression::Gzip,
        )],
        serde_json::json!({"User": "app", "StopSignal": "SIGUSR1", "Cmd": ["sleep", "1000"]}),
    );
    registry.push("app:1", &user_img).await;

    let tag1 = format!("{}/busybox:1", registry.addr);
    let id = pull(&mut c, &tag1).await.expect("pull");
    assert_eq!(id, img.id(), "PullImage answers the image id");
    let image = status(&mut c, &tag1).await.expect("present after pull");
    assert_eq!(image.id, img.id());
    assert_eq!(image.repo_tags, vec![tag1.clone()]);
    assert_eq!(
        image.repo_digests,
        vec![format!("{}/busybox@{digest}", registry.addr)]
    );
    assert!(image.size > 1_000_000, "size {}", image.size);
    // The same image by id, id prefix and digest.
    for name in [
        img.id(),
        img.id()["sha256:".len()..][..12].to_owned(),
        format!("{}/busybox@{digest}", registry.addr),
    ] {
        assert_eq!(
            status(&mut c, &name).await.map(|i| i.id),
            Some(img.id()),
            "by {name}"
        );
    }
    // A second tag of the same image adds a name, and shares the layer.
    pull(&mut c, &format!("{}/busybox:2", registry.addr))
        .await
        .unwrap();
    let app = pull(&mut c, &format!("{}/app:1", registry.addr))
        .await
        .unwrap();
    assert_eq!(status(&mut c, &tag1).await.unwrap().repo_tags.len(), 2);
    assert_eq!(status(&mut c, &app).await.unwrap().username, "app");
    assert_eq!(
        store_contents(&node),
        (1, 0),
        "one shared layer, no leftovers"
    );
    let listed = c
        .list_images(cri::ListImagesRequest::default())
        .await
        .unwrap()
        .into_inner()
        .images;
    assert_eq!(listed.len(), 2);
    let verbose = c
        .image_status(cri::ImageStatusRequest {
            image: spec(&tag1),
            verbose: true,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(verbose.info.contains_key("info"));
    let fs = c
        .image_fs_info(cri::ImageFsInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(fs.image_filesystems[0].used_bytes.as_ref().unwrap().value > 1_000_000);

    // Removing one tag leaves the other; removing by id takes the image.
    c.remove_image(cri::RemoveImageRequest { image: spec(&tag1) })
        .await
        .unwrap();
    assert!(
        status(&mut c, &tag1).await.is_none(),
        "ImageStatus of a missing image is empty"
    );
    assert_eq!(
        status(&mut c, &img.id()).await.unwrap().repo_tags,
        vec![format!("{}/busybox:2", registry.addr)]
    );
    c.remove_image(cri::RemoveImageRequest {
        image: spec(&img.id()),
    })
    .await
    .unwrap();
    c.remove_image(cri::RemoveImageRequest {
        image: spec(&img.id()),
    })
    .await
    .expect("removing twice is fine");
    assert_eq!(
        store_contents(&node).0,
        1,
        "the app image still uses the layer"
    );
    c.remove_image(cri::RemoveImageRequest { image: spec(&app) })
        .await
        .unwrap();
    assert_eq!(store_contents(&node), (0, 0));
    assert!(c
        .list_images(cri::ListImagesRequest::default())
        .await
        .unwrap()
        .into_inner()
        .images
        .is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_tag_is_not_found_and_a_corrupt_blob_changes_nothing() {
    let registry = Registry::start();
    let node = TestNode::start(Chain::Operator);
    let mut c = images(&node).await;
    let missing = format!("{}/busybox:nope", registry.addr);
    let err = pull(&mut c, &missing).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound, "{err:?}");
    assert!(err.message().contains(&missing), "{}", err.message());
    let err = pull(&mut c, "").await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);

    let img = busybox_image();
    registry.push("busybox:bad", &img).await;
    // Flip bytes in the stored layer blob: same length, wrong content.
    let blob = registry.blob_file(&img.layer_digest(0));
    let mut data = std::fs::read(&blob).unwrap();
    let mid = data.len() / 2;
    data[mid] ^= 0xff;
    std::fs::write(&blob, data).unwrap();
    let err = pull(&mut c, &format!("{}/busybox:bad", registry.addr))
        .await
        .unwrap_err();
    assert!(err.message().contains("digest"), "{}", err.message());
    assert!(c
        .list_images(cri::ListImagesRequest::default())
        .await
        .unwrap()
        .into_inner()
        .images
        .is_empty());
    assert_eq!(
        store_contents(&node),
        (0, 0),
        "a failed pull left something behind"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_pulls_of_one_image_download_each_layer_once() {
    let registry = Registry::start();
    let node = TestNode::start(Chain::Operator);
    let c = images(&node).await;
    let img = busybox_image();
    registry.push("busybox:1", &img).await;
    let name = format!("{}/busybox:1", registry.addr);
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let (mut c, name) = (c.clone(), name.clone());
        tasks.push(tokio::spawn(async move { pull(&mut c, &name).await }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap().unwrap(), img.id());
    }
    let layer_digest = img.layer_digest(0);
    // The access log has one line per request: `... "GET /v2/busybox/blobs/sha256:... HTTP/1.1" 200 ...`.
    let wanted = format!("\"GET /v2/busybox/blobs/{layer_digest} ");
    let gets = registry
        .log()
        .lines()
        .filter(|l| l.contains(&wanted))
        .count();
    assert_eq!(
        gets,
        1,
        "the layer was downloaded {gets} times:\n{}",
        registry.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn layers_of_every_compression_stack_with_whiteouts_and_an_index_picks_amd64() {
    let registry = Registry::start();
    let node = TestNode::start(Chain::Operator);
    let mut c = images(&node).await;
    let base = LayerBuilder::default()
        .busybox()
        .dir("data")
        .file("data/old", 0o644, b"old")
        .file("etc/motd", 0o644, b"hi")
        .tar();
    let top = LayerBuilder::default()
        .dir("data")
        .file("data/.wh..wh..opq", 0o644, b"")
        .file("data/new", 0o644, b"new")
        .file("etc/.wh.motd", 0o644, b"")
        .tar();
    let third = LayerBuilder::default()
        .file("plain", 0o644, b"uncompressed")
        .tar();
    let img = image(
        vec![
            layer(base, Compression::Gzip),
            layer(top, Compression::Zstd),
            layer(third, Compression::None),
        ],
        serde_json::json!({"Cmd": ["sh"]}),
    );
    registry.push("stack:amd64", &img).await;
    let other = image(
        vec![layer(
            LayerBuilder::default().file("arm", 0o644, b"arm").tar(),
            Compression::Gzip,
        )],
        serde_json::json!({}),
    );
    registry.push("stack:arm64", &other).await;
    let index_digest = registry
        .push_index("stack:multi", "stack:amd64", "stack:arm64")
        .await;
    let id = pull(&mut c, &format!("{}/stack:multi", registry.addr))
        .await
        .unwrap();
    assert_eq!(id, img.id(), "the linux/amd64 image was chosen");
    let image = status(&mut c, &id).await.unwrap();
    assert_eq!(
        image.repo_digests,
        vec![format!("{}/stack@{index_digest}", registry.addr)],
        "the digest the name resolved to"
    );

    // Mount the layers as overlayfs lowers, as a container's rootfs would be.
    let info = c
        .image_status(cri::ImageStatusRequest {
            image: spec(&id),
            verbose: true,
        })
        .await
        .unwrap()
        .into_inner();
    let info: serde_json::Value = serde_json::from_str(&info.info["info"]).unwrap();
    let layers: Vec<String> = info["layers"]
        .as_array()
        .unwrap()
        .iter()
        .rev()
        .map(|l| {
            node.dir
                .join("root/images/layers")
                .join(l.as_str().unwrap().trim_start_matches("sha256:"))
                .display()
                .to_string()
        })
        .collect();
    let mnt = node.dir.join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    let ok = Command::new("mount")
        .args([
            "-t",
            "overlay",
            "overlay",
            "-o",
            &format!("lowerdir={}", layers.join(":")),
        ])
        .arg(&mnt)
        .status()
        .unwrap();
    assert!(ok.success());
    let seen = {
        let data: Vec<String> = std::fs::read_dir(mnt.join("data"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        (
            data,
            mnt.join("etc/motd").exists(),
            std::fs::read_to_string(mnt.join("plain")).unwrap_or_default(),
            mnt.join("bin/busybox").exists(),
        )
    };
    let _ = Command::new("umount").arg(&mnt).status();
    assert_eq!(
        seen,
        (
            vec!["new".to_owned()],
            false,
            "uncompressed".to_owned(),
            true
        )
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mirror_in_hosts_toml_serves_pulls_and_the_image_keeps_its_requested_name() {
    let registry = Registry::start();
    let node = TestNode::start(Chain::Operator);
    let img = busybox_image();
    registry.push("pause:3.10", &img).await;
    // containerd's certs.d layout: registry.k8s.io is served by the local mirror. The
    // upstream is unreachable from here, so only the mirror can make this pull work.
    let dir = node.dir.join("certs.d/registry.k8s.io");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("hosts.toml"),
        format!("server = \"https://registry.k8s.io\"\n\n[host.\"http://{}\"]\n  capabilities = [\"pull\", \"resolve\"]\n", registry.addr),
    )
    .unwrap();
    let mut c = images(&node).await;
    let id = pull(&mut c, "registry.k8s.io/pause:3.10")
        .await
        .expect("pull through the mirror");
    assert_eq!(id, img.id());
    let image = status(&mut c, "registry.k8s.io/pause:3.10").await.unwrap();
    assert_eq!(
        image.repo_tags,
        vec!["registry.k8s.io/pause:3.10".to_owned()]
    );
    assert!(
        image.repo_digests[0].starts_with("registry.k8s.io/pause@sha256:"),
        "{:?}",
        image.repo_digests
    );
}

/// A two-layer image: busybox, then a layer with /marker holding `marker`.
fn marked_image(marker: &str) -> podrun_tests::registry::TestImage {
    image(
        vec![
            layer(LayerBuilder::default().busybox().tar(), Compression::Gzip),
            layer(
                LayerBuilder::default()
                    .file("marker", 0o644, marker.as_bytes())
                    .tar(),
                Compression::Gzip,
            ),
        ],
        serde_json::json!({"Cmd": ["sleep", "1000"], "Env": ["PATH=/bin"]}),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn podctl_pull_reports_each_layer() {
    let registry = Registry::start();
    let node = TestNode::start(Chain::Operator);
    let img = marked_image("progress");
    registry.push("layers:1", &img).await;
    let name = format!("{}/layers:1", registry.addr);
    let short = |i: usize| img.layer_digest(i)[7..19].to_owned();
    // Not a terminal: one line per finished layer, then the image id.
    let out = node.podctl(&["pull", &name]);
    for i in 0..2 {
        let line = out.lines().find(|l| l.starts_with(&short(i)));
        let line = line.unwrap_or_else(|| panic!("no line for layer {i}: {out}"));
        assert!(line.contains("done") && line.contains("[======"), "{line}");
    }
    assert!(
        out.ends_with(&format!("Image is up to date for {}\n", img.id())),
        "{out}"
    );
    // Again: nothing is fetched, and it says so.
    let out = node.podctl(&["pull", &name]);
    assert_eq!(out.matches("present").count(), 2, "{out}");
    // A name the registry does not have fails like the CRI pull, naming the image.
    let out = Command::new(podrun_tests::bin_dir().join("podctl"))
        .arg("-r")
        .arg(&node.socket)
        .args(["pull", &format!("{}/nothing:1", registry.addr)])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("nothing:1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn podctl_imports_oci_layouts_from_a_directory_and_a_tar_and_runs_them() {
    let node = TestNode::start(Chain::Operator);
    let mut c = images(&node).await;
    // skopeo/buildah style: the index names a tag only; the name comes from --name.
    let dir = node.dir.join("layout");
    let first = marked_image("from a directory");
    let digest = first.write_layout(
        &dir,
        serde_json::json!({"org.opencontainers.image.ref.name": "v1"}),
    );
    let out = node.podctl(&[
        "import",
        dir.to_str().unwrap(),
        "--name",
        "example.com/offline",
    ]);
    assert!(out.contains("example.com/offline:v1"), "{out}");
    let image = status(&mut c, "example.com/offline:v1").await.unwrap();
    assert_eq!(image.id, first.id());
    assert_eq!(
        image.repo_digests,
        vec![format!("example.com/offline@{digest}")]
    );

    // containerd's export style, as a tar: the index carries the whole name.
    let second = marked_image("from a tar");
    let dir2 = node.dir.join("layout2");
    second.write_layout(
        &dir2,
        serde_json::json!({"io.containerd.image.name": "example.com/other:2"}),
    );
    let tar = node.dir.join("layout2.tar");
    let ok = Command::new("tar")
        .arg("-cf")
        .arg(&tar)
        .arg("-C")
        .arg(&dir2)
        .arg(".")
        .status()
        .unwrap();
    assert!(ok.success());
    node.podctl(&["import", tar.to_str().unwrap()]);
    assert_eq!(
        status(&mut c, "example.com/other:2").await.unwrap().id,
        second.id()
    );
    // The busybox layer is shared: three layers on disk, and no leftovers.
    assert_eq!(store_contents(&node), (3, 0));

    // The imported image runs, with its own top layer.
    let pod_file = node.dir.join("pod.json");
    let pod = serde_json::json!({
        "metadata": {"name": "imported", "namespace": "podrun-test", "uid": "imported-uid"},
        "log_directory": node.dir.join("logs/imported"),
        "linux": {"cgroup_parent": node.cgroup_parent},
    });
    std::fs::write(&pod_file, pod.to_string()).unwrap();
    let ctr_file = node.dir.join("ctr.json");
    let ctr = serde_json::json!({
        "metadata": {"name": "offline"},
        "image": {"image": "example.com/offline:v1"},
        "log_path": "offline.log",
    });
    std::fs::write(&ctr_file, ctr.to_string()).unwrap();
    let id = node.podctl(&[
        "run",
        ctr_file.to_str().unwrap(),
        pod_file.to_str().unwrap(),
    ]);
    let pod_id = node.podctl(&["pods", "-q"]).trim().to_owned();
    node.remember(&pod_id);
    assert_eq!(
        node.podctl(&["exec", id.trim(), "cat", "/marker"]),
        "from a directory"
    );
    node.podctl(&["stopp", &pod_id]);
    node.podctl(&["rmp", &pod_id]);
    node.assert_no_leaks();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_or_unnamed_layout_is_refused_and_changes_nothing() {
    let node = TestNode::start(Chain::Operator);
    let podctl = |args: &[&str]| {
        let out = Command::new(podrun_tests::bin_dir().join("podctl"))
            .arg("-r")
            .arg(&node.socket)
            .args(args)
            .output()
            .unwrap();
        assert!(!out.status.success(), "podctl {args:?} should fail");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let img = marked_image("damaged");
    let dir = node.dir.join("layout");
    img.write_layout(&dir, serde_json::json!({}));
    let err = podctl(&["import", dir.to_str().unwrap()]);
    assert!(err.contains("name") && err.contains("give a name"), "{err}");

    // One flipped byte in the top layer: refused before anything is unpacked.
    let blob = dir.join("blobs/sha256").join(&img.layer_digest(1)[7..]);
    let mut data = std::fs::read(&blob).unwrap();
    let last = data.len() - 1;
    data[last] ^= 0xff;
    std::fs::write(&blob, data).unwrap();
    let err = podctl(&["import", dir.to_str().unwrap(), "--name", "x.io/broken:1"]);
    assert!(
        err.contains("InvalidArgument") || err.contains("invalid"),
        "{err}"
    );
    assert!(err.contains("damaged"), "{err}");
    let err = podctl(&["import", "/nonexistent/layout.tar"]);
    assert!(err.contains("/nonexistent/layout.tar"), "{err}");
    let mut c = images(&node).await;
    assert!(status(&mut c, "x.io/broken:1").await.is_none());
    assert_eq!(store_contents(&node), (0, 0));
}

/// RemoveImage (kubelet's image GC, or a user) refuses an image whose layers a container's
/// rootfs stands on, naming the container, and removes it once the container is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_in_use_by_a_container_is_not_removed() {
    let mut bed = podrun_tests::workload::Bed::start().await;
    let mut c = images(&bed.node).await;
    let pod = bed.pod("in-use", "").await;
    let id = bed
        .run(&pod, bed.container("user", &["sleep", "1000"]))
        .await;
    let image = bed.busybox.clone();
    let err = c
        .remove_image(cri::RemoveImageRequest {
            image: spec(&image),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err:?}");
    assert!(
        err.message().contains(&id),
        "names the container: {}",
        err.message()
    );
    assert!(status(&mut c, &image).await.is_some(), "the image stays");
    assert_eq!(
        bed.out(&id, &["echo", "still-running"]).await,
        "still-running\n"
    );
    bed.remove_pod(&pod.0).await;
    c.remove_image(cri::RemoveImageRequest {
        image: spec(&image),
    })
    .await
    .expect("removed once no container uses it");
    assert!(status(&mut c, &image).await.is_none());
    assert_eq!(
        store_contents(&bed.node),
        (0, 0),
        "its layers and nothing else left"
    );
    bed.assert_no_leaks();
}

/// A client's deadline (grpc-timeout) that expires mid-pull answers DEADLINE_EXCEEDED, as
/// critest and kubelet expect; the pull itself finishes for the next caller.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_deadline_answers_deadline_exceeded_and_the_pull_completes() {
    let registry = Registry::start();
    let node = TestNode::start(Chain::Operator);
    let mut c = images(&node).await;
    let img = busybox_image();
    registry.push("busybox:1", &img).await;
    let name = format!("{}/busybox:1", registry.addr);

    // tonic's client would enforce the deadline itself: send the header as Go clients do.
    let req = cri::PullImageRequest {
        image: spec(&name),
        ..Default::default()
    };
    let (code, message) = grpc_with_timeout(&node.socket, "PullImage", req, "1m").await;
    assert_eq!(code, tonic::Code::DeadlineExceeded as i32, "{message}");

    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while status(&mut c, &name).await.is_none() {
        assert!(
            std::time::Instant::now() < deadline,
            "the pull never finished"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(pull(&mut c, &name).await.unwrap(), img.id());
}

/// One unary ImageService call over a bare HTTP/2 connection with a `grpc-timeout`
/// header; answers grpc-status and grpc-message.
async fn grpc_with_timeout(
    socket: &Path,
    method: &str,
    req: impl prost::Message,
    timeout: &str,
) -> (i32, String) {
    use http_body_util::BodyExt;
    let stream = tokio::net::UnixStream::connect(socket).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let msg = req.encode_to_vec();
    let mut body = vec![0u8];
    body.extend((msg.len() as u32).to_be_bytes());
    body.extend(msg);
    let request =
        hyper::Request::post(format!("http://localhost/runtime.v1.ImageService/{method}"))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .header("grpc-timeout", timeout)
            .body(http_body_util::Full::new(hyper::body::Bytes::from(body)))
            .unwrap();
    let response = send.send_request(request).await.unwrap();
    let mut headers = response.headers().clone();
    let collected = response.into_body().collect().await.unwrap();
    if let Some(trailers) = collected.trailers() {
        headers.extend(trailers.clone());
    }
    let get = |k: &str| {
        headers
            .get(k)
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default()
    };
    (
        get("grpc-status").parse().expect("grpc-status"),
        get("grpc-message"),
    )
}

/// A full disk under podrund's root: a pull fails naming the cause and leaves no partial
/// layer, RunPodSandbox fails and rolls back; once there is room again both work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_fails_pulls_and_pods_cleanly_until_there_is_room() {
    let registry = Registry::start();
    let disk = podrun_tests::SmallDisk::mount("full-disk", "16m");
    let mut node = podrun_tests::TestNode::prepare(Chain::Operator);
    let root = node.dir.join("root");
    std::os::unix::fs::symlink(&disk.path, &root).unwrap();
    node.spawn_daemon();
    let mut c = images(&node).await;
    // 4 MiB of incompressible bytes: a layer that cannot fit once the disk is full.
    let mut noise = vec![0u8; 4 << 20];
    let mut x: u64 = 0x9e3779b97f4a7c15;
    for b in noise.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    let big = image(
        vec![layer(
            LayerBuilder::default().file("noise", 0o644, &noise).tar(),
            Compression::Gzip,
        )],
        serde_json::json!({"Cmd": ["true"]}),
    );
    registry.push("big:1", &big).await;
    let name = format!("{}/big:1", registry.addr);

    let filler = disk.fill();

    let err = pull(&mut c, &name).await.unwrap_err();
    assert!(err.message().contains("No space left"), "{err:?}");
    assert_eq!(
        store_contents(&node),
        (0, 0),
        "no partial layer, no leftovers"
    );
    let mut rt = node.client().await;
    let err = node
        .run_pod(&mut rt, node.pod_config("full"))
        .await
        .unwrap_err();
    assert!(err.message().contains("No space left"), "{err:?}");
    let pods = podrun_tests::list_pods(&mut rt).await;
    assert!(pods.is_empty(), "{pods:?}");
    node.assert_no_leaks();

    std::fs::remove_file(&filler).unwrap();
    assert_eq!(pull(&mut c, &name).await.unwrap(), big.id());
    let id = node
        .run_pod(&mut rt, node.pod_config("room"))
        .await
        .unwrap();
    podrun_tests::stop_and_remove(&mut rt, &id).await;
    node.assert_no_leaks();
}
