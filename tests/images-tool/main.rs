//! `podrun-test-images`: builds podrun's small test images from Debian's static busybox
//! and pushes them to a registry (what the tests do for themselves), for people who want to
//! run containers on an offline node. Used by `hack/images`.
//!
//! Images: `busybox:1` (sh, httpd, nc, sleep, wget, ...; runs `sh`) and `busybox-app:1`
//! (the same, as user `app`, uid 1000, StopSignal SIGUSR1, runs `sleep 100000`), and
//! `pause:1` (podrun-pause as `/pause`, a sandbox image for containerd).
//!
//! `podrun-test-images --layout DIR NAME` writes `busybox:1` as an OCI image layout in DIR
//! instead, named NAME (for `podctl import` on nodes that reach no registry).

use anyhow::{Context, Result};
use podrun_tests::registry::{
    busybox_image, image, layer, pause_image, push_to, Compression, LayerBuilder,
};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    let usage = "usage: podrun-test-images HOST:PORT | --layout DIR NAME";
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let [flag, dir, name] = args.as_slice() {
        anyhow::ensure!(flag == "--layout", "{usage}");
        let img = busybox_image();
        let digest = img.write_layout(
            std::path::Path::new(dir),
            serde_json::json!({"io.containerd.image.name": name}),
        );
        println!("{dir}: {name}  {digest}  id {}", img.id());
        return Ok(());
    }
    let registry = args.first().context(usage)?.clone();
    let app = image(
        vec![layer(
            LayerBuilder::default().busybox().tar(),
            Compression::Gzip,
        )],
        serde_json::json!({"User": "app", "StopSignal": "SIGUSR1", "Cmd": ["sleep", "100000"], "Env": ["PATH=/bin"]}),
    );
    let pause = std::env::current_exe()?.with_file_name("podrun-pause");
    anyhow::ensure!(pause.is_file(), "{} is not built", pause.display());
    let images = [
        ("busybox:1", busybox_image()),
        ("busybox-app:1", app),
        ("pause:1", pause_image(&pause)),
    ];
    for (name, img) in images {
        let digest = push_to(&registry, name, &img).await;
        println!("{registry}/{name}  {digest}  id {}", img.id());
    }
    Ok(())
}
