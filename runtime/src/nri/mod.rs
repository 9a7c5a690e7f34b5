//! NRI, containerd's Node Resource Interface, on podrund's side: plugins (resource policies,
//! device injectors, logging sidecars) connect to `nri-socket` (off unless set; containerd's
//! is /var/run/nri/nri.sock), register, are configured and told the pods and containers
//! that exist, and from then on see pods and containers come and go. At CreateContainer
//! each subscribed plugin, in the order of its index, may adjust the container (env,
//! mounts, annotations, args, hooks, devices, CPU and memory, oom_score_adj, rlimits).
//!
//! A plugin that refuses a CreateContainer fails it. A plugin that does not answer within
//! the request timeout, or whose connection ends, is dropped and disconnected. Lifecycle
//! events other than CreateContainer and StopContainer go through `StateChange`, which
//! every NRI plugin library answers. Container updates a plugin asks for are answered as
//! failed and evictions are not carried out: podrun applies neither. UpdateContainer,
//! UpdatePodSandbox and their Post events are not sent; a plugin that wants to validate
//! other plugins' adjustments (ValidateContainerAdjustment) is refused, since it would
//! never be asked.

mod adjust;
mod conn;
pub mod convert;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use podrun_proto::nri as api;
use prost::Message;

pub use adjust::adjust;
use conn::Conn;

use crate::error::{Error, Result};

pub const REGISTRATION_TIMEOUT: Duration = Duration::from_secs(5);
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
const NRI_VERSION: &str = "v0.12.2";
/// Every event NRI defines (bits 1 << (event - 1)).
const VALID_EVENTS: i32 = (1 << (api::Event::Last as i32 - 1)) - 1;

/// A registered plugin.
pub struct Plugin {
    pub name: String,
    pub index: String,
    events: i32,
    conn: Arc<Conn>,
}

impl Plugin {
    fn wants(&self, event: api::Event) -> bool {
        self.events & (1 << (event as i32 - 1)) != 0
    }
}

/// The plugins connected now, by index.
#[derive(Default)]
pub struct Nri {
    plugins: Mutex<Vec<Arc<Plugin>>>,
}

/// What a plugin is told at registration: the pods and containers there are now.
pub type Snapshot = Box<dyn Fn() -> (Vec<api::PodSandbox>, Vec<api::Container>) + Send + Sync>;

impl Nri {
    /// Whether any plugin wants `event`: when none does, nothing need be built for it.
    pub fn wants(&self, event: api::Event) -> bool {
        let plugins = self.plugins.lock().unwrap_or_else(|p| p.into_inner());
        plugins.iter().any(|p| p.wants(event))
    }

    pub fn plugins(&self) -> Vec<Arc<Plugin>> {
        self.plugins
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    async fn drop_plugin(&self, plugin: &Plugin, why: &str) {
        tracing::warn!(plugin = %plugin.name, index = %plugin.index, why, "NRI plugin dropped");
        {
            let mut plugins = self.plugins.lock().unwrap_or_else(|p| p.into_inner());
            plugins.retain(|p| !Arc::ptr_eq(&p.conn, &plugin.conn));
        }
        plugin.conn.close().await;
    }

    /// Accepts plugins on `socket` until the process ends. `quiet` is held shared by every
    /// pod operation: a plugin is synchronized and joins the others with it held
    /// exclusively, so no pod or container can come or go unseen in between.
    pub async fn serve(
        self: Arc<Self>,
        socket: PathBuf,
        snapshot: Snapshot,
        quiet: Arc<tokio::sync::RwLock<()>>,
    ) -> Result<()> {
        let listener = listen(&socket)?;
        tracing::info!(socket = %socket.display(), "NRI: accepting plugins");
        let snapshot = Arc::new(snapshot);
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            };
            let (nri, snapshot, quiet) = (self.clone(), snapshot.clone(), quiet.clone());
            tokio::spawn(async move {
                if let Err(e) = nri.register(stream, &snapshot, &quiet).await {
                    tracing::warn!(error = %e, "NRI plugin not registered");
                }
            });
        }
    }

    /// RegisterPlugin, Configure, Synchronize; then the plugin gets events until its
    /// connection ends. A plugin that fails on the way is disconnected.
    async fn register(
        &self,
        stream: tokio::net::UnixStream,
        snapshot: &Snapshot,
        quiet: &tokio::sync::RwLock<()>,
    ) -> Result<()> {
        let (conn, mut requests) = Conn::start(stream, REQUEST_TIMEOUT);
        let joined = async {
            let plugin = Arc::new(handshake(&conn, &mut requests).await?);
            // Pod operations wait (at most the request timeout) while the plugin learns
            // what there is and joins the others.
            let _quiet = quiet.write().await;
            synchronize(&plugin, snapshot).await?;
            let mut plugins = self.plugins.lock().unwrap_or_else(|p| p.into_inner());
            plugins.push(plugin.clone());
            plugins.sort_by(|a, b| a.index.cmp(&b.index));
            Ok(plugin)
        };
        let plugin: Arc<Plugin> = match joined.await {
            Ok(plugin) => plugin,
            Err(e) => {
                conn.close().await;
                return Err(e);
            }
        };
        tracing::info!(plugin = %plugin.name, index = %plugin.index, events = format!("{:#x}", plugin.events), "NRI plugin registered");
        // The plugin's own requests (UpdateContainers) for as long as it is connected.
        while let Some(request) = requests.recv().await {
            let answer = match request.method.as_str() {
                "UpdateContainers" => {
                    let asked = api::UpdateContainersRequest::decode(&request.payload[..]);
                    let failed = asked.map(|r| r.update).unwrap_or_default();
                    Ok(api::UpdateContainersResponse { failed }.encode_to_vec())
                }
                other => Err((12, format!("podrun does not serve {other}"))),
            };
            let _ = request.answer.send(answer);
        }
        self.drop_plugin(&plugin, "its connection ended").await;
        Ok(())
    }

    /// CreateContainer: each subscribed plugin's adjustment, in index order.
    pub async fn create_container(
        &self,
        pod: &api::PodSandbox,
        container: &api::Container,
    ) -> Result<Vec<(String, api::ContainerAdjustment)>> {
        let mut adjustments = Vec::new();
        for plugin in self.plugins() {
            if !plugin.wants(api::Event::CreateContainer) {
                continue;
            }
            let request = api::CreateContainerRequest {
                pod: Some(pod.clone()),
                container: Some(container.clone()),
            };
            let answer = match plugin.conn.call("CreateContainer", &request).await {
                Ok(answer) => answer,
                Err(Error::FailedPrecondition(refusal)) => {
                    return Err(Error::FailedPrecondition(format!(
                        "NRI plugin {} ({}): {refusal}",
                        plugin.index, plugin.name
                    )))
                }
                Err(e) => {
                    self.drop_plugin(&plugin, &e.to_string()).await;
                    continue;
                }
            };
            let response = api::CreateContainerResponse::decode(&answer[..])
                .map_err(|e| Error::Internal(format!("NRI CreateContainer answer: {e}")))?;
            if !response.update.is_empty() || !response.evict.is_empty() {
                tracing::warn!(plugin = %plugin.name, "NRI: updates and evictions at CreateContainer are not applied");
            }
            if let Some(adjust) = response.adjust {
                adjustments.push((format!("{}-{}", plugin.index, plugin.name), adjust));
            }
        }
        Ok(adjustments)
    }

    /// Tells the subscribed plugins of `event`, in index order; a plugin that fails is
    /// logged (and dropped when it is gone), the event goes on.
    pub async fn notify(
        &self,
        event: api::Event,
        pod: &api::PodSandbox,
        container: Option<&api::Container>,
    ) {
        for plugin in self.plugins() {
            if !plugin.wants(event) {
                continue;
            }
            let sent = match event {
                api::Event::StopContainer => {
                    let request = api::StopContainerRequest {
                        pod: Some(pod.clone()),
                        container: container.cloned(),
                    };
                    plugin.conn.call("StopContainer", &request).await
                }
                _ => {
                    let request = api::StateChangeEvent {
                        event: event as i32,
                        pod: Some(pod.clone()),
                        container: container.cloned(),
                    };
                    plugin.conn.call("StateChange", &request).await
                }
            };
            match sent {
                Ok(_) => {}
                Err(Error::FailedPrecondition(e)) => {
                    tracing::warn!(plugin = %plugin.name, event = ?event, error = %e, "NRI plugin refused an event")
                }
                Err(e) => self.drop_plugin(&plugin, &e.to_string()).await,
            }
        }
    }
}

/// RegisterPlugin (within the registration timeout) and Configure.
async fn handshake(
    conn: &Arc<Conn>,
    requests: &mut tokio::sync::mpsc::Receiver<conn::Incoming>,
) -> Result<Plugin> {
    let first = tokio::time::timeout(REGISTRATION_TIMEOUT, requests.recv()).await;
    let Ok(Some(first)) = first else {
        return Err(Error::FailedPrecondition(
            "plugin registration timed out".into(),
        ));
    };
    let registered = match first.method.as_str() {
        "RegisterPlugin" => api::RegisterPluginRequest::decode(&first.payload[..])
            .map_err(|e| e.to_string())
            .and_then(|r| check_name(&r).map(|()| r)),
        other => Err(format!("expected RegisterPlugin, got {other}")),
    };
    let request = match registered {
        Ok(r) => {
            let _ = first.answer.send(Ok(api::Empty {}.encode_to_vec()));
            r
        }
        Err(e) => {
            let _ = first.answer.send(Err((3, e.clone())));
            return Err(Error::invalid("plugin", e));
        }
    };
    let configure = api::ConfigureRequest {
        config: String::new(),
        runtime_name: "podrun".into(),
        runtime_version: env!("CARGO_PKG_VERSION").into(),
        registration_timeout: REGISTRATION_TIMEOUT.as_millis() as i64,
        request_timeout: REQUEST_TIMEOUT.as_millis() as i64,
        nri_version: NRI_VERSION.into(),
    };
    let answer = conn.call("Configure", &configure).await?;
    let events = api::ConfigureResponse::decode(&answer[..])
        .map_err(|e| Error::Internal(format!("Configure answer: {e}")))?
        .events;
    let events = match events {
        0 => VALID_EVENTS,
        e if e & !VALID_EVENTS != 0 => {
            return Err(Error::invalid(
                "plugin",
                format!("invalid plugin events: {e:#x}"),
            ))
        }
        e => e,
    };
    if events & (1 << (api::Event::ValidateContainerAdjustment as i32 - 1)) != 0 {
        return Err(Error::FailedPrecondition(format!(
            "plugin {}: podrun does not ask plugins to validate adjustments",
            request.plugin_name
        )));
    }
    Ok(Plugin {
        name: request.plugin_name,
        index: request.plugin_idx,
        events,
        conn: conn.clone(),
    })
}

/// Pods or containers per Synchronize message: a large node's would not fit in one ttrpc
/// message (4 MiB).
const SYNC_CHUNK: usize = 128;

/// Tells a plugin the pods and containers there are now, in messages of at most
/// [`SYNC_CHUNK`] each, all but the last marked `more`.
async fn synchronize(plugin: &Plugin, snapshot: &Snapshot) -> Result<()> {
    let (pods, containers) = snapshot();
    let mut messages: Vec<api::SynchronizeRequest> = pods
        .chunks(SYNC_CHUNK)
        .map(|p| api::SynchronizeRequest {
            pods: p.to_vec(),
            ..Default::default()
        })
        .chain(
            containers
                .chunks(SYNC_CHUNK)
                .map(|c| api::SynchronizeRequest {
                    containers: c.to_vec(),
                    ..Default::default()
                }),
        )
        .collect();
    if messages.is_empty() {
        messages.push(api::SynchronizeRequest::default());
    }
    let last = messages.len() - 1;
    for (i, mut message) in messages.into_iter().enumerate() {
        message.more = i < last;
        let answer = plugin.conn.call("Synchronize", &message).await?;
        let updates = api::SynchronizeResponse::decode(&answer[..]).map(|r| r.update.len());
        if updates.unwrap_or(0) > 0 {
            tracing::warn!(plugin = %plugin.name, "NRI: container updates at Synchronize are not applied");
        }
    }
    Ok(())
}

/// A plugin's name: `[a-zA-Z0-9_.+-]+`; its index: two digits.
fn check_name(r: &api::RegisterPluginRequest) -> std::result::Result<(), String> {
    let name_ok = !r.plugin_name.is_empty()
        && r.plugin_name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.+-".contains(c));
    let index_ok = r.plugin_idx.len() == 2 && r.plugin_idx.chars().all(|c| c.is_ascii_digit());
    match (name_ok, index_ok) {
        (true, true) => Ok(()),
        (false, _) => Err(format!("invalid plugin name {:?}", r.plugin_name)),
        (_, false) => Err(format!(
            "invalid plugin index {:?}: two digits",
            r.plugin_idx
        )),
    }
}

/// The socket; its directory, when podrund makes it, only root can enter (as containerd
/// makes it). An existing directory keeps its mode.
fn listen(socket: &Path) -> Result<tokio::net::UnixListener> {
    use std::os::unix::fs::DirBuilderExt;
    if let Some(dir) = socket.parent().filter(|d| !d.exists()) {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(Error::io("creating", dir))?;
    }
    match std::fs::remove_file(socket) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(Error::io("removing", socket)(e))
        }
        _ => {}
    }
    let listener = tokio::net::UnixListener::bind(socket)
        .map_err(|e| Error::invalid("nri-socket", format!("{}: {e}", socket.display())))?;
    // A plugin may change any container: only root may connect.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o600))
        .map_err(Error::io("setting the mode of", socket))?;
    Ok(listener)
}

#[cfg(test)]
mod tests;
