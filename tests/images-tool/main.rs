//! `podrun-test-images`: builds podrun's small test images from Debian's static busybox
//! and pushes them to a registry (what the tests do for themselves), for people who want to
//! run containers on an offline node. Used by `hack/images`.
//!
//! Images: `busybox:1` (sh, httpd, nc, sleep, wget, ...; runs `sh`) and `busybox-app:1`
//! (the same, as user `app`, uid 1000, StopSignal SIGUSR1, runs `sleep 100000`), and
//! `pause:1` (podrun-pause as `/pause`, a sandbox image for containerd).

use anyhow::{Context, Result};
use podrun_tests::registry::{
    busybox_image, image, layer, pause_image, push_to, Compression, LayerBuilder,
};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    let registry = std::env::args()
        .nth(1)
        .context("usage: podrun-test-images HOST:PORT")?;
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
