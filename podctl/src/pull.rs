//! `podctl pull` with a progress bar per layer (podrun's own Pull; plain CRI PullImage
//! against other runtimes) and `podctl import` of OCI image layouts.

use std::collections::BTreeSet;
use std::io::{IsTerminal, Write};
use std::path::Path;

use anyhow::{Context, Result};
use podrun_proto::podrun::v1 as api;
use podrun_proto::{client, cri};

const BAR: usize = 30;

fn human(bytes: i64) -> String {
    match bytes {
        b if b >= 1 << 20 => format!("{:.1} MiB", b as f64 / (1 << 20) as f64),
        b if b >= 1 << 10 => format!("{:.1} KiB", b as f64 / 1024.0),
        b => format!("{b} B"),
    }
}

fn line(l: &api::LayerProgress) -> String {
    let short = l.digest.trim_start_matches("sha256:");
    let short = &short[..short.len().min(12)];
    let fetched = match l.state.as_str() {
        "done" | "unpacking" => l.size,
        _ => l.fetched.min(l.size),
    };
    let filled = match l.size {
        0 => BAR,
        size => (fetched as usize * BAR) / size as usize,
    };
    let bar = format!("{}{}", "=".repeat(filled), " ".repeat(BAR - filled));
    format!(
        "{short}  {:<9}  [{bar}]  {} / {}",
        l.state,
        human(fetched),
        human(l.size)
    )
}

/// Pulls `image`, drawing one bar per layer on a terminal (redrawn in place) or one line
/// per finished layer otherwise. Returns the image id.
pub async fn pull(endpoint: &Path, image: &str, auth: Option<cri::AuthConfig>) -> Result<String> {
    let spec = Some(cri::ImageSpec {
        image: image.into(),
        ..Default::default()
    });
    let mut podrun = client::podrun_images(endpoint).await?;
    let req = api::PullRequest {
        image: spec.clone(),
        auth: auth.clone(),
    };
    let mut stream = match podrun.pull(req).await {
        Ok(s) => s.into_inner(),
        // Another CRI runtime: a plain pull, no progress.
        Err(e) if e.code() == tonic::Code::Unimplemented => {
            let mut im = client::image(endpoint).await?;
            let req = cri::PullImageRequest {
                image: spec,
                auth,
                sandbox_config: None,
            };
            return Ok(im.pull_image(req).await?.into_inner().image_ref);
        }
        Err(e) => return Err(e.into()),
    };
    let tty = std::io::stdout().is_terminal();
    let mut out = std::io::stdout().lock();
    let (mut drawn, mut reported) = (0, BTreeSet::new());
    while let Some(msg) = stream.message().await.context("pulling")? {
        if tty {
            if drawn > 0 {
                write!(out, "\x1b[{drawn}A")?;
            }
            for l in &msg.layers {
                writeln!(out, "\x1b[2K{}", line(l))?;
            }
            drawn = msg.layers.len();
        } else {
            for l in &msg.layers {
                if matches!(l.state.as_str(), "done" | "present")
                    && reported.insert(l.digest.clone())
                {
                    writeln!(out, "{}", line(l))?;
                }
            }
        }
        out.flush()?;
        if !msg.image_ref.is_empty() {
            return Ok(msg.image_ref);
        }
    }
    anyhow::bail!("the pull of {image} ended without an image")
}

pub async fn import(endpoint: &Path, path: &Path, name: String) -> Result<()> {
    let path = std::path::absolute(path).with_context(|| format!("{}", path.display()))?;
    let mut podrun = client::podrun_images(endpoint).await?;
    let req = api::ImportRequest {
        path: path.display().to_string(),
        name,
    };
    for image in podrun.import(req).await?.into_inner().images {
        let names = [image.repo_tags, image.repo_digests].concat();
        println!("imported {} ({})", names.join(", "), image.id);
    }
    Ok(())
}
