//! `containerd-shim-podrun-v2`: podrun's per-pod shim. One small process per pod, detached
//! from whoever started it: it starts the pod's pause and reaps its children as their
//! subreaper, and serves containerd's shim v2 Task API over ttrpc on the listening socket
//! it inherits as fd 3 (the way containerd's own shims hand the socket to their server).
//!
//! Invocation, as containerd's shims take it: `containerd-shim-podrun-v2 [-namespace NS]
//! [-address ADDR] [-publish-binary BIN] [-id ID] [-debug] [start|delete]`. Without an
//! action it serves.

mod containerd;
mod crilog;
mod mounts;
mod oci;
mod pause;
mod quiet;
mod reaper;
mod stats;
mod stdio;
mod task;

use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::net::UnixListener;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use containerd_shim_protos::shim_async::create_task;
use containerd_shim_protos::ttrpc::r#async::transport::Listener;
use containerd_shim_protos::ttrpc::r#async::Server;
use tokio::signal::unix::{signal, SignalKind};

/// The fd on which the listening socket is inherited.
const LISTENER_FD: i32 = 3;

#[derive(Default)]
pub struct Args {
    pub id: String,
    pub namespace: String,
    pub address: String,
    pub bundle: String,
    pub debug: bool,
    pub action: Option<String>,
}

fn parse_args() -> Result<Args> {
    let mut args = Args::default();
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.trim_start_matches('-') {
            "publish-binary" | "socket" => {
                it.next().with_context(|| format!("{arg} needs a value"))?;
            }
            "id" => args.id = it.next().context("-id needs a value")?,
            "namespace" => args.namespace = it.next().context("-namespace needs a value")?,
            "address" => args.address = it.next().context("-address needs a value")?,
            "bundle" => args.bundle = it.next().context("-bundle needs a value")?,
            "debug" => args.debug = true,
            "v" | "version" => {
                println!("containerd-shim-podrun-v2 {}", env!("CARGO_PKG_VERSION"));
                std::process::exit(0);
            }
            action if !arg.starts_with('-') => args.action = Some(action.to_owned()),
            _ => bail!("unknown flag {arg}"),
        }
    }
    Ok(args)
}

fn main() -> Result<()> {
    let args = parse_args()?;
    // containerd reads everything `start` and `delete` print as their answer.
    match args.action.as_deref() {
        None => {}
        Some("start") => return containerd::start(&args),
        Some("delete") => return containerd::delete(&args),
        Some(other) => bail!("unknown action {other:?}"),
    }
    // A plain level, not an EnvFilter: parsing filter directives compiles regexes, which
    // maps hundreds of KiB of regex code into every pod's shim for nothing.
    let level = match args.debug {
        true => tracing::Level::DEBUG,
        false => tracing::Level::INFO,
    };
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_max_level(level)
        .with_ansi(false)
        .init();
    // SAFETY: plain prctl on this process.
    if unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) } != 0 {
        bail!(
            "prctl(PR_SET_CHILD_SUBREAPER): {}",
            std::io::Error::last_os_error()
        );
    }
    // Out of the starter's session and process group, so that signals meant for it (a
    // terminal's ^C, a hang-up) do not reach the pod. Already so when containerd's
    // `start` started us.
    let _ = nix::unistd::setsid();
    std::env::set_current_dir("/").context("chdir /")?;
    let listener = take_listener()?;
    // Children (pause, OCI runtimes) must not hold our listener open after we are gone.
    nix::fcntl::fcntl(
        &listener,
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
    )
    .context("marking the listener close-on-exec")?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(serve(listener, args))
}

/// The listening socket we inherited: fd 3 as containerd hands it over, or the fd podrund
/// names (its stdin, which then becomes /dev/null).
fn take_listener() -> Result<UnixListener> {
    let name = podrun_core::SHIM_LISTENER_ENV;
    let fd = match std::env::var(name) {
        Ok(fd) => fd.parse().context("bad listener fd")?,
        Err(_) => LISTENER_FD,
    };
    // Not for the runtimes we start. No other thread exists yet to read the environment.
    std::env::remove_var(name);
    // SAFETY: by contract with whoever started us, `fd` is our listening unix socket and
    // nothing else in this process owns it.
    let mut inherited = unsafe { OwnedFd::from_raw_fd(fd) };
    if fd > 2 {
        return Ok(inherited.into());
    }
    // Off the stdio slots, which children must not inherit a socket on.
    let listener = inherited.try_clone().context("duplicating the listener")?;
    let null = std::fs::File::open("/dev/null")?;
    nix::unistd::dup2(&null, &mut inherited).context("replacing the listener's fd")?;
    // The slot now holds /dev/null, for good.
    std::mem::forget(inherited);
    Ok(listener.into())
}

async fn serve(listener: UnixListener, args: Args) -> Result<()> {
    let id = args.id;
    let socket_path = listener
        .local_addr()
        .ok()
        .and_then(|a| a.as_pathname().map(|p| p.to_owned()));
    listener.set_nonblocking(true)?;
    let reaper = Arc::new(reaper::Reaper::default());
    let publisher = containerd::Publisher::connect(args.namespace)?;
    let shim = Arc::new(task::Shim::new(reaper.clone(), publisher));
    let mut children = signal(SignalKind::child())?;
    tokio::spawn(async move {
        loop {
            reaper.reap();
            if children.recv().await.is_none() {
                return;
            }
        }
    });
    let mut services = create_task(shim.clone());
    // containerd 1.x speaks the same Task service under its v2 name.
    if let Some(v2) = create_task(shim.clone()).remove("containerd.task.v3.Task") {
        services.insert("containerd.task.v2.Task".into(), v2);
    }
    let busy = Arc::new(tokio::sync::Notify::new());
    let services = quiet::noted(services, &busy);
    let listener = Listener::try_from(listener).context("wrapping the listening socket")?;
    let mut server = Server::new()
        .add_listener(listener)
        .register_service(services);
    server.start().await.context("starting the ttrpc server")?;
    tracing::info!(%id, "shim serving");
    // Most of this static binary was mapped while starting; serving needs a fraction.
    podrun_pause::release_executable_pages();
    tokio::spawn(quiet::release_at_rest(busy));
    let mut term = signal(SignalKind::terminate())?;
    tokio::select! {
        _ = shim.shutdown.notified() => tracing::info!(%id, "shutdown requested"),
        _ = term.recv() => tracing::info!(%id, "SIGTERM"),
    }
    let _ = server.shutdown().await;
    if let Some(path) = socket_path {
        let _ = std::fs::remove_file(path);
    }
    Ok(())
}
