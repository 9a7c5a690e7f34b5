//! Hostile images: ids that are paths, layers that climb out with `..`, absolute names,
//! symlinks and hard links, whiteouts through symlinks, setuid files. Each is pulled from a
//! real registry by a real podrund, and each asserts the refusal (or a harmless unpack) and
//! that the host is untouched: a canary directory outside the store survives as it was.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use podrun_proto::client;
use podrun_proto::cri;
use podrun_tests::registry::{layer, Compression, LayerBuilder, Registry, TestImage};
use podrun_tests::{Chain, TestNode};
use tar::EntryType;

async fn pull(node: &TestNode, name: &str) -> Result<String, tonic::Status> {
    let mut images = client::image(&node.socket).await.expect("connecting");
    images
        .pull_image(cri::PullImageRequest {
            image: Some(cri::ImageSpec {
                image: name.into(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .map(|r| r.into_inner().image_ref)
}

/// An image of `layers` whose config lists `diff_ids` as given, true or not.
fn image_with_diff_ids(layers: Vec<(Vec<u8>, String, String)>, diff_ids: &[String]) -> TestImage {
    let config = serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {"Cmd": ["sh"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    });
    TestImage {
        layers,
        config: serde_json::to_vec(&config).unwrap(),
    }
}

/// A directory outside podrund's root with a file in it, and its content.
struct Canary(PathBuf);

impl Canary {
    fn new(node: &TestNode) -> Canary {
        let dir = node.dir.join("canary");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("precious"), "keep").unwrap();
        Canary(dir)
    }

    fn assert_untouched(&self, what: &str) {
        let names: Vec<String> = std::fs::read_dir(&self.0)
            .unwrap_or_else(|e| panic!("{what}: the canary directory is gone: {e}"))
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["precious"], "{what}: the canary directory changed");
        assert_eq!(
            std::fs::read_to_string(self.0.join("precious")).unwrap(),
            "keep",
            "{what}: the canary file changed"
        );
        let meta = std::fs::symlink_metadata(self.0.join("precious")).unwrap();
        assert_eq!(meta.permissions().mode() & 0o7777, 0o644, "{what}");
    }
}

fn mounts_under(dir: &Path) -> Vec<String> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter(|l| l.contains(&*dir.to_string_lossy()))
        .map(str::to_owned)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn diff_ids_that_are_paths_are_refused_and_never_touch_the_host() {
    let registry = Registry::start();
    let node = TestNode::start(Chain::Operator);
    let canary = Canary::new(&node);
    let tar = LayerBuilder::default().file("hello", 0o644, b"hi").tar();
    let blob = layer(tar, Compression::Gzip);
    let hostile = [
        format!("sha256:{}", canary.0.display()),
        "sha256:../../../canary".to_owned(),
        "sha256:/etc".to_owned(),
        format!("sha512:{}", "a".repeat(128)),
        format!("sha256:{}", "A".repeat(64)),
    ];
    for (i, diff_id) in hostile.iter().enumerate() {
        let img = image_with_diff_ids(vec![blob.clone()], std::slice::from_ref(diff_id));
        registry.push(&format!("hostile:{i}"), &img).await;
        let err = pull(&node, &format!("{}/hostile:{i}", registry.addr))
            .await
            .expect_err(diff_id);
        assert_eq!(
            err.code(),
            tonic::Code::InvalidArgument,
            "{diff_id}: {err:?}"
        );
        assert!(
            err.message().contains("rootfs.diff_ids") && err.message().contains(diff_id.as_str()),
            "the error names the field and the value: {}",
            err.message()
        );
        canary.assert_untouched(diff_id);
    }
    let mut images = client::image(&node.socket).await.unwrap();
    let listed = images
        .list_images(cri::ListImagesRequest::default())
        .await
        .unwrap()
        .into_inner()
        .images;
    assert!(listed.is_empty(), "nothing was recorded: {listed:?}");
    assert!(mounts_under(&canary.0).is_empty());
    node.assert_no_leaks();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn layers_that_climb_out_of_the_store_are_refused_or_kept_inside() {
    let registry = Registry::start();
    let node = TestNode::start(Chain::Operator);
    let canary = Canary::new(&node);
    let target = canary.0.join("precious").display().to_string();
    let outside = node.dir.join("escaped");
    // Each trick is an image of its own, so a refusal of one cannot hide another.
    let tricks: Vec<(&str, LayerBuilder)> = vec![
        (
            "dot-dot from the layer",
            LayerBuilder::default().raw(
                EntryType::Regular,
                "../../../../canary/precious",
                "",
                b"pwned",
            ),
        ),
        (
            "dot-dot from the unpack dir",
            LayerBuilder::default().raw(
                EntryType::Regular,
                "../../../../../canary/precious",
                "",
                b"pwned",
            ),
        ),
        (
            "dot-dot to a new file",
            LayerBuilder::default().raw(EntryType::Regular, "../../../../../escaped", "", b"pwned"),
        ),
        (
            "absolute name",
            LayerBuilder::default().raw(EntryType::Regular, &target, "", b"pwned"),
        ),
        (
            "through a symlink",
            LayerBuilder::default()
                .symlink("evil", &canary.0.display().to_string())
                .file("evil/precious", 0o644, b"pwned"),
        ),
        (
            "through a relative symlink",
            LayerBuilder::default()
                .symlink("evil", "../../../../canary")
                .file("evil/precious", 0o644, b"pwned"),
        ),
        (
            "hard link to a host file",
            LayerBuilder::default().raw(EntryType::Link, "hl", &target, b""),
        ),
        (
            "hard link by dot-dot",
            LayerBuilder::default().raw(EntryType::Link, "hl", "../../../../canary/precious", b""),
        ),
        (
            "whiteout through a symlink",
            LayerBuilder::default()
                .symlink("evil", &canary.0.display().to_string())
                .raw(EntryType::Regular, "evil/.wh.precious", "", b""),
        ),
        (
            "whiteout by dot-dot",
            LayerBuilder::default().raw(
                EntryType::Regular,
                "../../../../canary/.wh.precious",
                "",
                b"",
            ),
        ),
        (
            "opaque marker through a symlink",
            LayerBuilder::default()
                .symlink("evil", &canary.0.display().to_string())
                .raw(EntryType::Regular, "evil/.wh..wh..opq", "", b""),
        ),
        (
            "chmod through a symlink",
            LayerBuilder::default()
                .symlink("evil", &target)
                .owned_file("evil", 0o4777, 0, b""),
        ),
    ];
    for (i, (what, builder)) in tricks.into_iter().enumerate() {
        let blob = layer(builder.tar(), Compression::Gzip);
        let diff_id = blob.2.clone();
        registry
            .push(
                &format!("trick:{i}"),
                &image_with_diff_ids(vec![blob], &[diff_id]),
            )
            .await;
        let pulled = pull(&node, &format!("{}/trick:{i}", registry.addr)).await;
        canary.assert_untouched(what);
        assert!(!outside.exists(), "{what}: wrote {}", outside.display());
        eprintln!("{what}: {:?}", pulled.as_ref().map_err(|e| e.message()));
    }
    assert!(mounts_under(&canary.0).is_empty());
    node.assert_no_leaks();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn setuid_files_of_images_are_out_of_reach_of_host_users() {
    let registry = Registry::start();
    let node = TestNode::start(Chain::Operator);
    let tar = LayerBuilder::default()
        .dir("bin")
        .owned_file("bin/rootshell", 0o4755, 0, b"#!/bin/sh\n")
        .tar();
    let blob = layer(tar, Compression::Gzip);
    let diff_id = blob.2.clone();
    registry
        .push("suid:1", &image_with_diff_ids(vec![blob], &[diff_id]))
        .await;
    pull(&node, &format!("{}/suid:1", registry.addr))
        .await
        .expect("an image with a setuid file is a valid image");
    // The file keeps its mode for the container, but no unprivileged host user can reach
    // it: the directories that hold container filesystems are closed to them.
    let (root, state) = (node.dir.join("root"), node.dir.join("state"));
    for dir in [root.join("images"), root.join("containers")] {
        let mode = std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode & 0o077, 0, "{} is {mode:o}", dir.display());
    }
    // These only traverse (a user-namespaced container's runtime reaches its rootfs as the
    // pod's root); each container's own directory under state/containers is 0700.
    for dir in [root, state.clone(), state.join("containers")] {
        let mode = std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
        assert_eq!(
            mode & 0o066,
            0,
            "{} is {mode:o}: others may not list it",
            dir.display()
        );
    }
    node.assert_no_leaks();
}

/// A registry that accepts connections and never answers: the pull fails after the
/// registry timeout instead of hanging, a second pull of the same image waiting behind it
/// gives up too, and pulls from a working registry go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registry_that_never_answers_fails_the_pull_and_blocks_nothing() {
    let registry = Registry::start();
    let mut node = TestNode::prepare(Chain::Operator);
    node.extra_args = vec!["--registry-timeout".into(), "2".into()];
    node.spawn_daemon();
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for conn in silent.incoming().flatten() {
            held.push(conn); // read nothing, answer nothing, close nothing
        }
    });
    let name = format!("127.0.0.1:{port}/stuck:1");
    let guard = std::time::Duration::from_secs(60);
    let (a, b) = tokio::join!(
        tokio::time::timeout(guard, pull(&node, &name)),
        tokio::time::timeout(guard, pull(&node, &name)),
    );
    for result in [a, b] {
        let err = result
            .expect("the pull came back")
            .expect_err("nothing was served");
        assert!(err.message().contains(&name), "{}", err.message());
    }
    registry
        .push("busybox:1", &podrun_tests::registry::busybox_image())
        .await;
    pull(&node, &format!("{}/busybox:1", registry.addr))
        .await
        .expect("other pulls go on");
    node.assert_no_leaks();
}

/// Peak resident memory of process `pid`, in KiB.
fn peak_rss_kib(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// Reads from `tcp` until the server closes it; panics if it has not within `limit`.
async fn closed_within(tcp: &mut tokio::net::TcpStream, limit: std::time::Duration) -> Vec<u8> {
    use tokio::io::AsyncReadExt;
    let mut got = Vec::new();
    tokio::time::timeout(limit, async {
        let mut buf = [0u8; 4096];
        while let Ok(n) = tcp.read(&mut buf).await {
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
        }
    })
    .await
    .expect("the server closed the connection");
    got
}

/// Streaming clients are untrusted: a SPDY header block that inflates to 64 MiB closes
/// the session without podrund ever holding it, and a client that never finishes its
/// request head (slowloris) is cut off. podrund keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streaming_clients_that_bomb_or_dawdle_are_cut_off() {
    use podrun_stream::spdy::frame::{Frame, HeaderWriter};
    use tokio::io::AsyncWriteExt;
    let mut bed = podrun_tests::workload::Bed::start().await;
    let pod = bed.pod("streams", "").await;
    let id = bed
        .run(&pod, bed.container("cat", &["sleep", "1000"]))
        .await;
    let url = bed
        .rt
        .exec(cri::ExecRequest {
            container_id: id.clone(),
            cmd: vec!["cat".into()],
            stdin: true,
            stdout: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .url;
    let rest = url.strip_prefix("http://").unwrap();
    let (addr, path) = rest.split_at(rest.find('/').unwrap());
    let pid = bed.node.daemon_pid().unwrap();
    let before = peak_rss_kib(pid);

    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let upgrade = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\n\
         X-Stream-Protocol-Version: v4.channel.k8s.io\r\nContent-Length: 0\r\n\r\n"
    );
    tcp.write_all(upgrade.as_bytes()).await.unwrap();
    let bomb = Frame::SynStream {
        id: 1,
        fin: false,
        headers: vec![("streamtype".into(), "a".repeat(64 << 20))],
    }
    .encode(&mut HeaderWriter::new())
    .unwrap();
    tcp.write_all(&bomb).await.unwrap();
    let answer = closed_within(&mut tcp, std::time::Duration::from_secs(20)).await;
    assert!(
        String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 101"),
        "the upgrade was accepted first: {:?}",
        String::from_utf8_lossy(&answer[..answer.len().min(200)])
    );
    let grown = peak_rss_kib(pid).saturating_sub(before);
    assert!(
        grown < 16 * 1024,
        "podrund's peak memory grew by {grown} KiB"
    );

    // Slowloris: half a request head, then nothing.
    let mut slow = tokio::net::TcpStream::connect(addr).await.unwrap();
    slow.write_all(b"GET /exec/nothing HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    closed_within(&mut slow, std::time::Duration::from_secs(30)).await;

    // podrund still serves, streaming included.
    assert_eq!(bed.out(&id, &["echo", "fine"]).await, "fine\n");
    bed.remove_pod(&pod.0).await;
    bed.assert_no_leaks();
}

/// An image config far larger than any real one is refused before podrund holds it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_image_config_is_refused() {
    let registry = Registry::start();
    let node = TestNode::start(Chain::Operator);
    let blob = layer(
        LayerBuilder::default().file("x", 0o644, b"x").tar(),
        Compression::Gzip,
    );
    let padding = "p".repeat(9 << 20);
    let config = serde_json::json!({
        "architecture": "amd64", "os": "linux", "config": {"Env": [padding]},
        "rootfs": {"type": "layers", "diff_ids": [blob.2.clone()]},
    });
    let img = TestImage {
        layers: vec![blob],
        config: serde_json::to_vec(&config).unwrap(),
    };
    registry.push("huge:1", &img).await;
    // A first pull sets podrund's registry client up: measure after it.
    registry
        .push("small:1", &podrun_tests::registry::busybox_image())
        .await;
    pull(&node, &format!("{}/small:1", registry.addr))
        .await
        .unwrap();
    let pid = node.daemon_pid().unwrap();
    let before = peak_rss_kib(pid);
    let err = pull(&node, &format!("{}/huge:1", registry.addr))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("config size"), "{}", err.message());
    assert!(peak_rss_kib(pid).saturating_sub(before) < 8 * 1024);
    node.assert_no_leaks();
}

/// A device node in a layer is kept (as containerd keeps them), but a container without
/// privilege cannot use it: the device cgroup denies it. A setuid file runs with the
/// container's capabilities only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_nodes_from_images_are_not_usable_in_containers() {
    let mut bed = podrun_tests::workload::Bed::start().await;
    let tar = LayerBuilder::default()
        .busybox()
        .char_device("tmp/mem", 1, 1)
        .char_device("tmp/kmsg", 1, 11)
        .tar();
    let img = podrun_tests::registry::image(
        vec![layer(tar, Compression::Gzip)],
        serde_json::json!({"Cmd": ["sleep", "1000"]}),
    );
    bed.registry.push("devices:1", &img).await;
    let name = format!("{}/devices:1", bed.registry.addr);
    pull(&bed.node, &name).await.unwrap();
    let pod = bed.pod("devices", "").await;
    let mut c = bed.container("reader", &["sleep", "1000"]);
    c.image = Some(cri::ImageSpec {
        image: name,
        ..Default::default()
    });
    let id = bed.run(&pod, c).await;
    for dev in ["/tmp/mem", "/tmp/kmsg"] {
        let listed = bed.out(&id, &["ls", "-l", dev]).await;
        assert!(
            listed.starts_with('c'),
            "kept as a character device: {listed}"
        );
        let r = bed.exec(&id, &["head", "-c", "1", dev], 10).await.unwrap();
        assert_ne!(r.exit_code, 0, "{dev} was readable");
        let stderr = String::from_utf8_lossy(&r.stderr);
        assert!(
            stderr.contains("not permitted") || stderr.contains("denied"),
            "{dev}: {stderr}"
        );
    }
    bed.remove_pod(&pod.0).await;
    bed.assert_no_leaks();
}
