//! `podctl exec -i/-t`, `attach` and `port-forward`: the CRI hands out a URL on the runtime's
//! streaming server, and podctl speaks SPDY or WebSocket to it (`--transport`), as crictl
//! and kubectl do.

use std::path::Path;

use anyhow::{bail, Context, Result};
use podrun_proto::{client, cri};
use podrun_stream::{Options, Outcome, PortForwarder, Session, TerminalSize, Transport};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::term;

/// Joins the local terminal (or pipes) to a session until it ends; returns the exit code.
async fn run_session(mut s: Session, tty: bool) -> Result<i32> {
    let raw = tty.then(term::RawMode::enter).flatten();
    if let Some(resize) = s.resize.take() {
        let mut sizes = term::sizes();
        tokio::spawn(async move {
            while let Some((width, height)) = sizes.recv().await {
                if resize.send(TerminalSize { width, height }).await.is_err() {
                    return;
                }
            }
        });
    }
    if let Some(mut stdin) = s.stdin.take() {
        tokio::spawn(async move {
            let mut local = tokio::io::stdin();
            let mut buf = vec![0u8; 8192];
            while let Ok(n) = local.read(&mut buf).await {
                if n == 0 || stdin.write_all(&buf[..n]).await.is_err() {
                    break;
                }
            }
            // Dropping it closes the remote stdin.
        });
    }
    let out = s.stdout.take().map(|mut r| {
        tokio::spawn(async move {
            let _ = tokio::io::copy(&mut r, &mut tokio::io::stdout()).await;
        })
    });
    let err = s.stderr.take().map(|mut r| {
        tokio::spawn(async move {
            let _ = tokio::io::copy(&mut r, &mut tokio::io::stderr()).await;
        })
    });
    for t in [out, err].into_iter().flatten() {
        let _ = t.await;
    }
    let outcome = s.outcome().await;
    drop(raw);
    let _ = tokio::io::stdout().flush().await;
    match outcome {
        Outcome::Exited(code) => Ok(code),
        Outcome::Failed(why) => bail!("{why}"),
    }
}

/// Connects to an exec or attach URL asking for these streams, and runs the session.
async fn connect_and_run(url: String, stdin: bool, tty: bool, transport: Transport) -> Result<i32> {
    let opts = Options {
        stdin,
        stdout: true,
        stderr: !tty,
        tty,
    };
    let session = podrun_stream::exec(&url, transport, opts)
        .await
        .with_context(|| format!("connecting to {url}"))?;
    run_session(session, tty).await
}

pub async fn exec(
    endpoint: &Path,
    id: String,
    cmd: Vec<String>,
    stdin: bool,
    tty: bool,
    transport: Transport,
) -> Result<i32> {
    let mut rt = client::runtime(endpoint).await?;
    let req = cri::ExecRequest {
        container_id: id,
        cmd,
        tty,
        stdin,
        stdout: true,
        stderr: !tty,
    };
    let url = rt.exec(req).await?.into_inner().url;
    connect_and_run(url, stdin, tty, transport).await
}

pub async fn attach(
    endpoint: &Path,
    id: String,
    stdin: bool,
    tty: bool,
    transport: Transport,
) -> Result<i32> {
    let mut rt = client::runtime(endpoint).await?;
    let req = cri::AttachRequest {
        container_id: id,
        stdin,
        tty,
        stdout: true,
        stderr: !tty,
    };
    let url = rt.attach(req).await?.into_inner().url;
    connect_and_run(url, stdin, tty, transport).await
}

/// `LOCAL:REMOTE` or `PORT` (the same on both sides).
fn parse_mapping(m: &str) -> Result<(u16, u16)> {
    let (local, remote) = m.split_once(':').unwrap_or((m, m));
    let parse = |p: &str| {
        p.parse::<u16>()
            .with_context(|| format!("port {p:?} in {m:?}"))
    };
    Ok((parse(local)?, parse(remote)?))
}

/// Listens on `address:LOCAL` for each mapping and forwards every connection to REMOTE in
/// the pod, until interrupted. SPDY carries all connections over one URL; WebSocket takes a
/// URL (one CRI call) per connection.
pub async fn port_forward(
    endpoint: &Path,
    pod: String,
    mappings: Vec<String>,
    address: String,
    transport: Transport,
) -> Result<()> {
    let mappings: Vec<(u16, u16)> = mappings
        .iter()
        .map(|m| parse_mapping(m))
        .collect::<Result<_>>()?;
    let remote_ports: Vec<i32> = mappings.iter().map(|(_, r)| *r as i32).collect();
    let url = |ports: Vec<i32>| {
        let pod = pod.clone();
        async move {
            let mut rt = client::runtime(endpoint).await?;
            let req = cri::PortForwardRequest {
                pod_sandbox_id: pod,
                port: ports,
            };
            anyhow::Ok(rt.port_forward(req).await?.into_inner().url)
        }
    };
    let shared = match transport {
        Transport::Spdy => {
            let u = url(remote_ports).await?;
            Some(std::sync::Arc::new(
                PortForwarder::connect(&u, transport, &[]).await?,
            ))
        }
        Transport::WebSocket => None,
    };
    let mut listeners = Vec::new();
    for (local, remote) in mappings {
        let l = tokio::net::TcpListener::bind((address.as_str(), local))
            .await
            .with_context(|| format!("listening on {address}:{local}"))?;
        println!("Forwarding from {} -> {remote}", l.local_addr()?);
        listeners.push((l, remote));
    }
    let mut tasks = Vec::new();
    for (listener, remote) in listeners {
        let shared = shared.clone();
        let endpoint = endpoint.to_owned();
        let pod = pod.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                let Ok((conn, peer)) = listener.accept().await else {
                    return;
                };
                let shared = shared.clone();
                let (endpoint, pod) = (endpoint.clone(), pod.clone());
                tokio::spawn(async move {
                    let forwarder = match shared {
                        Some(f) => f,
                        None => {
                            let mut rt = match client::runtime(&endpoint).await {
                                Ok(rt) => rt,
                                Err(e) => return eprintln!("{peer}: {e}"),
                            };
                            let req = cri::PortForwardRequest {
                                pod_sandbox_id: pod,
                                port: vec![remote as i32],
                            };
                            let u = match rt.port_forward(req).await {
                                Ok(r) => r.into_inner().url,
                                Err(e) => return eprintln!("{peer}: {}", e.message()),
                            };
                            match PortForwarder::connect(&u, Transport::WebSocket, &[remote]).await
                            {
                                Ok(f) => std::sync::Arc::new(f),
                                Err(e) => return eprintln!("{peer}: {e}"),
                            }
                        }
                    };
                    match forwarder.open(remote).await {
                        Ok(f) => {
                            tokio::spawn(async move {
                                if let Ok(Some(why)) = f.error.await {
                                    eprintln!("error forwarding to port {remote}: {}", why.trim());
                                }
                            });
                            let (mut pr, mut pw) = tokio::io::split(f.pipe);
                            let (mut cr, mut cw) = conn.into_split();
                            let up = async {
                                let _ = tokio::io::copy(&mut cr, &mut pw).await;
                                let _ = pw.shutdown().await;
                            };
                            let down = async {
                                let _ = tokio::io::copy(&mut pr, &mut cw).await;
                                let _ = cw.shutdown().await;
                            };
                            tokio::join!(up, down);
                        }
                        Err(e) => eprintln!("{peer}: {e}"),
                    }
                });
            }
        }));
    }
    tokio::signal::ctrl_c().await?;
    Ok(())
}
