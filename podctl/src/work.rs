//! podctl's image and container commands, crictl's verbs over the same CRI calls.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Subcommand;
use podrun_proto::{client, cri};
use serde_json::json;

use crate::{ago, info_json, print_json, read_config};

#[derive(Subcommand)]
pub enum Command {
    /// Pull an image (name[:tag] or name@digest).
    Pull {
        image: String,
        /// user:password for the registry.
        #[arg(long)]
        creds: Option<String>,
    },
    /// Import the images of an OCI image layout (a directory, or a tar of one) into the
    /// node's store, for nodes without a registry.
    Import {
        path: PathBuf,
        /// Name for an image the layout does not name (a bare tag in it is appended).
        #[arg(long, default_value = "")]
        name: String,
    },
    /// List images.
    Images {
        #[arg(long, short = 'q')]
        quiet: bool,
        #[arg(long, short = 'o', default_value = "table")]
        output: String,
    },
    /// Status of an image (by id, tag or digest).
    Inspecti { image: String },
    /// Remove images (by id, tag or digest).
    Rmi { images: Vec<String> },
    /// Create a container in a pod from crictl-style config files.
    Create {
        pod_id: String,
        container_config: PathBuf,
        pod_config: PathBuf,
    },
    /// Start containers.
    Start { ids: Vec<String> },
    /// Stop containers: the stop signal, then SIGKILL after the timeout.
    Stop {
        ids: Vec<String>,
        #[arg(long, short = 't', default_value_t = 10)]
        timeout: i64,
    },
    /// Remove containers (stopping them first).
    Rm { ids: Vec<String> },
    /// List containers (running ones unless -a).
    Ps {
        #[arg(long, short = 'a')]
        all: bool,
        #[arg(long, short = 'p')]
        pod: Option<String>,
        #[arg(long, short = 'q')]
        quiet: bool,
        #[arg(long, short = 'o', default_value = "table")]
        output: String,
    },
    /// Status of a container, with the runtime's verbose info.
    Inspect { id: String },
    /// Print a container's log (CRI format, as written).
    Logs {
        id: String,
        /// Keep printing what is appended.
        #[arg(long, short = 'f')]
        follow: bool,
    },
    /// Run a command in a running container and print its output (ExecSync).
    /// Run a command in a container: ExecSync, or a streaming session with -i or -t.
    Exec {
        id: String,
        /// ExecSync's time limit in seconds (0: none).
        #[arg(long, default_value_t = 0)]
        timeout: i64,
        /// Keep stdin open: a streaming session.
        #[arg(short = 'i', long)]
        interactive: bool,
        /// A terminal: a streaming session.
        #[arg(short = 't', long)]
        tty: bool,
        /// spdy or websocket.
        #[arg(long, default_value = "spdy")]
        transport: podrun_stream::Transport,
        #[arg(trailing_var_arg = true, required = true)]
        cmd: Vec<String>,
    },
    /// Attach to a running container's stdio (its terminal if it has one).
    Attach {
        id: String,
        /// Send stdin too.
        #[arg(short = 'i', long)]
        interactive: bool,
        /// The container has a terminal (its tty setting decides; this says how to show it).
        #[arg(short = 't', long)]
        tty: bool,
        #[arg(long, default_value = "spdy")]
        transport: podrun_stream::Transport,
    },
    /// Forward local ports to a pod: LOCAL:REMOTE or PORT, until interrupted.
    PortForward {
        pod_id: String,
        #[arg(required = true)]
        ports: Vec<String>,
        #[arg(long, default_value = "127.0.0.1")]
        address: String,
        #[arg(long, default_value = "spdy")]
        transport: podrun_stream::Transport,
    },
    /// Pull the image if needed, run the pod, create and start the container.
    Run {
        container_config: PathBuf,
        pod_config: PathBuf,
        #[arg(long)]
        runtime: Option<String>,
    },
}

fn spec(image: &str) -> Option<cri::ImageSpec> {
    Some(cri::ImageSpec {
        image: image.into(),
        ..Default::default()
    })
}

pub async fn run(endpoint: &Path, command: Command) -> Result<()> {
    let mut rt = client::runtime(endpoint)
        .await
        .with_context(|| format!("connecting to {}", endpoint.display()))?;
    let mut im = client::image(endpoint).await?;
    match command {
        Command::Pull { image, creds } => {
            let auth = creds.map(|c| {
                let (u, p) = c.split_once(':').unwrap_or((&c, ""));
                cri::AuthConfig {
                    username: u.into(),
                    password: p.into(),
                    ..Default::default()
                }
            });
            let id = crate::pull::pull(endpoint, &image, auth).await?;
            println!("Image is up to date for {id}");
        }
        Command::Import { path, name } => crate::pull::import(endpoint, &path, name).await?,
        Command::Images { quiet, output } => {
            let images = im
                .list_images(cri::ListImagesRequest::default())
                .await?
                .into_inner()
                .images;
            match (quiet, output.as_str()) {
                (true, _) => images.iter().for_each(|i| println!("{}", i.id)),
                (false, "json") => print_json(&json!({"images": images}))?,
                _ => {
                    println!("{:<50}  {:<20}  {:<13}  SIZE", "IMAGE", "TAG", "IMAGE ID");
                    for i in &images {
                        let short =
                            i.id.trim_start_matches("sha256:")
                                .chars()
                                .take(13)
                                .collect::<String>();
                        let tags: Vec<(String, String)> = match i.repo_tags.is_empty() {
                            true => vec![("<none>".into(), "<none>".into())],
                            false => i
                                .repo_tags
                                .iter()
                                .map(|t| {
                                    t.rsplit_once(':')
                                        .map(|(n, t)| (n.into(), t.into()))
                                        .unwrap_or((t.clone(), String::new()))
                                })
                                .collect(),
                        };
                        for (name, tag) in tags {
                            println!(
                                "{name:<50}  {tag:<20}  {short:<13}  {:.1}MB",
                                i.size as f64 / 1e6
                            );
                        }
                    }
                }
            }
        }
        Command::Inspecti { image } => {
            let r = im
                .image_status(cri::ImageStatusRequest {
                    image: spec(&image),
                    verbose: true,
                })
                .await?
                .into_inner();
            if r.image.is_none() {
                bail!("image {image:?} not present");
            }
            print_json(&json!({"status": r.image, "info": info_json(&r.info)}))?;
        }
        Command::Rmi { images } => {
            for image in images {
                im.remove_image(cri::RemoveImageRequest {
                    image: spec(&image),
                })
                .await?;
                println!("Deleted: {image}");
            }
        }
        Command::Create {
            pod_id,
            container_config,
            pod_config,
        } => {
            let config: cri::ContainerConfig = read_config(&container_config)?;
            let pod: cri::PodSandboxConfig = read_config(&pod_config)?;
            let req = cri::CreateContainerRequest {
                pod_sandbox_id: pod_id,
                config: Some(config),
                sandbox_config: Some(pod),
            };
            println!(
                "{}",
                rt.create_container(req).await?.into_inner().container_id
            );
        }
        Command::Start { ids } => {
            for id in ids {
                rt.start_container(cri::StartContainerRequest {
                    container_id: id.clone(),
                })
                .await?;
                println!("{id}");
            }
        }
        Command::Stop { ids, timeout } => {
            for id in ids {
                rt.stop_container(cri::StopContainerRequest {
                    container_id: id.clone(),
                    timeout,
                })
                .await?;
                println!("{id}");
            }
        }
        Command::Rm { ids } => {
            for id in ids {
                rt.remove_container(cri::RemoveContainerRequest {
                    container_id: id.clone(),
                })
                .await?;
                println!("{id}");
            }
        }
        Command::Ps {
            all,
            pod,
            quiet,
            output,
        } => {
            let state = (!all).then_some(cri::ContainerStateValue {
                state: cri::ContainerState::ContainerRunning as i32,
            });
            let filter = cri::ContainerFilter {
                pod_sandbox_id: pod.unwrap_or_default(),
                state,
                ..Default::default()
            };
            let list = rt
                .list_containers(cri::ListContainersRequest {
                    filter: Some(filter),
                })
                .await?
                .into_inner();
            match (quiet, output.as_str()) {
                (true, _) => list.containers.iter().for_each(|c| println!("{}", c.id)),
                (false, "json") => print_json(&list)?,
                _ => {
                    println!(
                        "{:<13}  {:<40}  {:<14}  {:<17}  {:<20}  {:<7}  POD ID",
                        "CONTAINER", "IMAGE", "CREATED", "STATE", "NAME", "ATTEMPT"
                    );
                    for c in &list.containers {
                        let m = c.metadata.clone().unwrap_or_default();
                        let state = cri::ContainerState::try_from(c.state)
                            .map(|s| s.as_str_name().trim_start_matches("CONTAINER_").to_owned())
                            .unwrap_or_default();
                        let image = c
                            .image
                            .as_ref()
                            .map(|i| i.image.as_str())
                            .unwrap_or_default();
                        println!(
                            "{:<13}  {image:<40}  {:<14}  {state:<17}  {:<20}  {:<7}  {}",
                            &c.id[..13],
                            ago(c.created_at),
                            m.name,
                            m.attempt,
                            &c.pod_sandbox_id[..13]
                        );
                    }
                }
            }
        }
        Command::Inspect { id } => {
            let r = rt
                .container_status(cri::ContainerStatusRequest {
                    container_id: id,
                    verbose: true,
                })
                .await?
                .into_inner();
            print_json(&json!({"status": r.status, "info": info_json(&r.info)}))?;
        }
        Command::Logs { id, follow } => {
            let r = rt
                .container_status(cri::ContainerStatusRequest {
                    container_id: id,
                    verbose: false,
                })
                .await?
                .into_inner();
            let path = r.status.map(|s| s.log_path).unwrap_or_default();
            if path.is_empty() {
                bail!("the container has no log path (its pod or config names none)");
            }
            follow_log(Path::new(&path), follow).await?;
        }
        Command::Exec {
            id,
            cmd,
            interactive,
            tty,
            transport,
            ..
        } if interactive || tty => {
            let code = crate::stream::exec(endpoint, id, cmd, interactive, tty, transport).await?;
            std::process::exit(code);
        }
        Command::Attach {
            id,
            interactive,
            tty,
            transport,
        } => {
            let code = crate::stream::attach(endpoint, id, interactive, tty, transport).await?;
            std::process::exit(code);
        }
        Command::PortForward {
            pod_id,
            ports,
            address,
            transport,
        } => crate::stream::port_forward(endpoint, pod_id, ports, address, transport).await?,
        Command::Exec {
            id, timeout, cmd, ..
        } => {
            let r = rt
                .exec_sync(cri::ExecSyncRequest {
                    container_id: id,
                    cmd,
                    timeout,
                })
                .await?
                .into_inner();
            use std::io::Write;
            std::io::stdout().write_all(&r.stdout)?;
            std::io::stderr().write_all(&r.stderr)?;
            if r.exit_code != 0 {
                std::process::exit(r.exit_code);
            }
        }
        Command::Run {
            container_config,
            pod_config,
            runtime,
        } => {
            let config: cri::ContainerConfig = read_config(&container_config)?;
            let pod: cri::PodSandboxConfig = read_config(&pod_config)?;
            let image = config
                .image
                .as_ref()
                .map(|i| i.image.clone())
                .unwrap_or_default();
            let present = im
                .image_status(cri::ImageStatusRequest {
                    image: spec(&image),
                    verbose: false,
                })
                .await?
                .into_inner()
                .image
                .is_some();
            if !present {
                im.pull_image(cri::PullImageRequest {
                    image: spec(&image),
                    ..Default::default()
                })
                .await?;
            }
            let req = cri::RunPodSandboxRequest {
                config: Some(pod.clone()),
                runtime_handler: runtime.unwrap_or_default(),
            };
            let pod_id = rt.run_pod_sandbox(req).await?.into_inner().pod_sandbox_id;
            let req = cri::CreateContainerRequest {
                pod_sandbox_id: pod_id,
                config: Some(config),
                sandbox_config: Some(pod),
            };
            let id = rt.create_container(req).await?.into_inner().container_id;
            rt.start_container(cri::StartContainerRequest {
                container_id: id.clone(),
            })
            .await?;
            println!("{id}");
        }
    }
    Ok(())
}

/// Prints the log file, and with `follow` what is appended (across ReopenContainerLog too).
async fn follow_log(path: &Path, follow: bool) -> Result<()> {
    use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};
    let mut offset = 0u64;
    let mut out = tokio::io::stdout();
    loop {
        let mut f = tokio::fs::File::open(path)
            .await
            .with_context(|| format!("opening {}", path.display()))?;
        let len = f.metadata().await?.len();
        if len < offset {
            offset = 0; // rotated: a new file
        }
        f.seek(std::io::SeekFrom::Start(offset)).await?;
        let mut buf = Vec::new();
        f.read_to_end(&mut buf).await?;
        offset += buf.len() as u64;
        out.write_all(&buf).await?;
        out.flush().await?;
        if !follow {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
