//! CNI (spec 1.0) as a runtime drives it: the first network configuration of the conf dir
//! (`.conflist`, `.conf` or `.json`, sorted by file name), ADD through the plugin chain with
//! each result fed to the next as `prevResult`, DEL in reverse order with the cached
//! result, and capability arguments (`portMappings`, `dns`) handed only to plugins that
//! declare them. GC (spec 1.1) for networks of that version, at podrund's start.

mod exec;

use std::fs;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use crate::error::{Error, Result};

pub use exec::{Exec, ProcessExec};

/// One network configuration list, as read from the conf dir.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Network {
    pub name: String,
    pub cni_version: String,
    /// The plugin configurations, in chain order.
    pub plugins: Vec<Value>,
    pub source: PathBuf,
    /// `disableGC`: the administrator turned GC off for this network.
    #[serde(default)]
    pub disable_gc: bool,
}

impl Network {
    /// Parses a `.conflist` (with `plugins`) or a single-plugin `.conf`.
    pub fn parse(bytes: &[u8], source: &Path) -> Result<Network> {
        let bad = |reason: String| {
            Error::invalid("CNI config", format!("{}: {reason}", source.display()))
        };
        let v: Value = serde_json::from_slice(bytes).map_err(|e| bad(e.to_string()))?;
        let name = v["name"]
            .as_str()
            .ok_or_else(|| bad("no \"name\"".into()))?
            .to_owned();
        let cni_version = v["cniVersion"].as_str().unwrap_or("0.4.0").to_owned();
        let plugins = match v.get("plugins") {
            Some(Value::Array(list)) if !list.is_empty() => list.clone(),
            Some(_) => return Err(bad("\"plugins\" must be a non-empty list".into())),
            None => vec![v.clone()],
        };
        if let Some(p) = plugins
            .iter()
            .find(|p| p["type"].as_str().is_none_or(str::is_empty))
        {
            return Err(bad(format!("plugin without \"type\": {p}")));
        }
        // A type names a binary in the plugin directories, never a path elsewhere.
        if let Some(t) = plugins
            .iter()
            .filter_map(|p| p["type"].as_str())
            .find(|t| t.contains('/') || *t == "." || *t == "..")
        {
            return Err(bad(format!("plugin type {t:?} is not a plain binary name")));
        }
        Ok(Network {
            name,
            cni_version,
            plugins,
            source: source.to_owned(),
            disable_gc: v["disableGC"].as_bool().unwrap_or(false),
        })
    }

    /// The first valid configuration in `dir`, by file name; None when there is none.
    pub fn load_first(dir: &Path) -> Result<Option<Network>> {
        let mut files: Vec<PathBuf> = match fs::read_dir(dir) {
            Ok(entries) => entries.filter_map(|e| e.ok().map(|e| e.path())).collect(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io("reading CNI conf dir", dir)(e)),
        };
        files.retain(|p| {
            matches!(
                p.extension().and_then(|e| e.to_str()),
                Some("conf" | "conflist" | "json")
            )
        });
        files.sort();
        for path in files {
            let Ok(bytes) = fs::read(&path) else { continue };
            match Network::parse(&bytes, &path) {
                Ok(net) => return Ok(Some(net)),
                Err(e) => tracing::warn!(error = %e, "skipping CNI config"),
            }
        }
        Ok(None)
    }

    /// A plugin's output, or the error it reported (as a JSON error object on stdout).
    fn check(
        &self,
        command: &'static str,
        plugin: &Value,
        out: Result<exec::Output>,
    ) -> Result<Vec<u8>> {
        let out = out.map_err(|e| self.fail(command, plugin, e.to_string()))?;
        if out.success {
            return Ok(out.stdout);
        }
        // Plugins report failure as a JSON error object on stdout.
        let message = match serde_json::from_slice::<Value>(&out.stdout) {
            Ok(v) if v["msg"].is_string() => match v["details"].as_str() {
                Some(d) if !d.is_empty() => {
                    format!("{}: {d}", v["msg"].as_str().unwrap_or_default())
                }
                _ => v["msg"].as_str().unwrap_or_default().to_owned(),
            },
            _ => {
                let text = String::from_utf8_lossy(if out.stderr.is_empty() {
                    &out.stdout
                } else {
                    &out.stderr
                });
                format!("{} ({})", text.trim(), out.status)
            }
        };
        Err(self.fail(command, plugin, message))
    }

    fn fail(&self, command: &'static str, plugin: &Value, message: String) -> Error {
        Error::Cni {
            plugin: plugin_type(plugin).to_owned(),
            command,
            network: self.name.clone(),
            message,
        }
    }

    /// GC (spec 1.1): tells every plugin of the chain which attachments are in use, so that
    /// it releases whatever else it holds (IPAM reservations of pods nobody knows). Only
    /// for networks of version 1.1.0 or later without `disableGC`; answers whether GC ran.
    /// It must not overlap an ADD: podrund runs it at start, before it serves.
    pub async fn gc(&self, valid: &[(String, String)], exec: &dyn Exec) -> Result<bool> {
        if self.disable_gc || version_below(&self.cni_version, (1, 1)) {
            return Ok(false);
        }
        let valid: Vec<Value> = valid
            .iter()
            .map(|(id, ifname)| json!({"containerID": id, "ifname": ifname}))
            .collect();
        let env = [("CNI_COMMAND".to_owned(), "GC".to_owned())];
        let mut first_err = None;
        for plugin in &self.plugins {
            let mut conf = plugin.as_object().cloned().unwrap_or_default();
            conf.insert("name".into(), json!(self.name));
            conf.insert("cniVersion".into(), json!(self.cni_version));
            conf.insert("cni.dev/valid-attachments".into(), json!(valid));
            let stdin = serde_json::to_vec(&conf).unwrap_or_default();
            let out = call(exec, "GC", plugin, &env, stdin).await;
            if let Err(e) = self.check("GC", plugin, out) {
                first_err.get_or_insert(e);
            }
        }
        first_err.map_or(Ok(true), Err)
    }
}

/// Everything about one pod's attachment that DEL needs later, cached on disk: DEL must use
/// the configuration ADD used, even if the conf dir changed since.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Attachment {
    pub network: Network,
    pub container_id: String,
    pub netns: PathBuf,
    pub ifname: String,
    /// `CNI_ARGS` pairs.
    pub args: Vec<(String, String)>,
    /// Capability arguments (`portMappings`, `dns`), keyed by capability.
    pub capabilities: Map<String, Value>,
    /// The final result of ADD, when it finished.
    pub result: Option<Value>,
}

impl Attachment {
    pub async fn add(&mut self, exec: &dyn Exec) -> Result<()> {
        let mut prev: Option<Value> = None;
        for plugin in &self.network.plugins {
            let stdin = self.stdin("ADD", plugin, prev.as_ref());
            let out = call(exec, "ADD", plugin, &self.env("ADD"), stdin).await;
            let out = self.network.check("ADD", plugin, out)?;
            prev = Some(
                serde_json::from_slice(&out)
                    .map_err(|e| self.network.fail("ADD", plugin, format!("bad result: {e}")))?,
            );
        }
        self.result = prev;
        Ok(())
    }

    /// DEL through the chain in reverse. Every plugin is tried; the first error is returned.
    pub async fn del(&self, exec: &dyn Exec) -> Result<()> {
        let mut first_err = None;
        for plugin in self.network.plugins.iter().rev() {
            let stdin = self.stdin("DEL", plugin, self.result.as_ref());
            let out = call(exec, "DEL", plugin, &self.env("DEL"), stdin).await;
            if let Err(e) = self.network.check("DEL", plugin, out) {
                first_err.get_or_insert(e);
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    fn env(&self, command: &str) -> Vec<(String, String)> {
        let args: Vec<String> = self.args.iter().map(|(k, v)| format!("{k}={v}")).collect();
        vec![
            ("CNI_COMMAND".into(), command.into()),
            ("CNI_CONTAINERID".into(), self.container_id.clone()),
            ("CNI_NETNS".into(), self.netns.display().to_string()),
            ("CNI_IFNAME".into(), self.ifname.clone()),
            ("CNI_ARGS".into(), args.join(";")),
        ]
    }

    fn stdin(&self, command: &str, plugin: &Value, prev: Option<&Value>) -> Vec<u8> {
        let mut conf = plugin.as_object().cloned().unwrap_or_default();
        conf.insert("name".into(), json!(self.network.name));
        conf.insert("cniVersion".into(), json!(self.network.cni_version));
        if let Some(prev) = prev {
            conf.insert("prevResult".into(), prev.clone());
        }
        // prevResult on DEL came with spec 0.4.0.
        if command == "DEL" && version_below(&self.network.cni_version, (0, 4)) {
            conf.remove("prevResult");
        }
        let wanted: Map<String, Value> = self
            .capabilities
            .iter()
            .filter(|(cap, _)| plugin["capabilities"][cap.as_str()].as_bool() == Some(true))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        if !wanted.is_empty() {
            conf.insert("runtimeConfig".into(), Value::Object(wanted));
        }
        serde_json::to_vec(&conf).unwrap_or_default()
    }

    /// The pod's IPs from the result: IPv4 first, then the others, in result order.
    pub fn ips(&self) -> Vec<IpAddr> {
        let Some(result) = &self.result else {
            return Vec::new();
        };
        // Only addresses on interfaces inside the pod (those with a `sandbox`) are the pod's;
        // an IP that names no interface is taken as the pod's, as libcni users do.
        let interfaces = result["interfaces"].as_array().cloned().unwrap_or_default();
        let in_pod = |ip: &Value| match ip["interface"].as_u64() {
            Some(i) => interfaces
                .get(i as usize)
                .is_none_or(|itf| itf["sandbox"].as_str().is_some_and(|s| !s.is_empty())),
            None => true,
        };
        let mut ips: Vec<IpAddr> = result["ips"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|ip| in_pod(ip))
            .filter_map(|ip| ip["address"].as_str()?.split('/').next()?.parse().ok())
            .collect();
        ips.sort_by_key(|ip| !ip.is_ipv4());
        ips
    }
}

/// Is the spec version `v` ("0.3.1") older than (major, minor)?
fn version_below(v: &str, (major, minor): (u32, u32)) -> bool {
    let mut parts = v.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    let (a, b) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    (a, b) < (major, minor)
}

/// Runs one plugin of the chain, counted in podrund's metrics.
async fn call(
    exec: &dyn Exec,
    command: &'static str,
    plugin: &Value,
    env: &[(String, String)],
    stdin: Vec<u8>,
) -> Result<exec::Output> {
    let start = std::time::Instant::now();
    let out = exec.run(plugin_type(plugin), env, stdin).await;
    let failed = !out.as_ref().is_ok_and(|o| o.success);
    crate::prometheus::cni_call(command, plugin_type(plugin), start.elapsed(), failed);
    out
}

fn plugin_type(plugin: &Value) -> &str {
    plugin["type"].as_str().unwrap_or_default()
}

#[cfg(test)]
mod tests;

/// Attachments whose DEL still failed when their pod was let go (after
/// [`DEL_ATTEMPTS`] tries): kept in `<root>/cni-leftovers/<pod id>.json`, retried when
/// podrund starts and every few minutes, shown and fixed by doctor.
pub const DEL_ATTEMPTS: u32 = 3;

pub fn leftover_dir(root: &Path) -> PathBuf {
    root.join("cni-leftovers")
}

pub fn keep_leftover(root: &Path, att: &Attachment) -> Result<()> {
    let dir = leftover_dir(root);
    fs::create_dir_all(&dir).map_err(Error::io("creating", &dir))?;
    crate::store::write_atomic(&dir.join(format!("{}.json", att.container_id)), att)
}

/// Retries DEL of every leftover; answers how many are still left.
pub async fn retry_leftovers(root: &Path, exec: &dyn Exec) -> usize {
    let mut left = 0;
    for entry in fs::read_dir(leftover_dir(root))
        .into_iter()
        .flatten()
        .flatten()
    {
        let path = entry.path();
        let Ok(att) = crate::store::read_json::<Attachment>(&path) else {
            tracing::error!(file = %path.display(), "unreadable CNI leftover; leaving it");
            left += 1;
            continue;
        };
        match att.del(exec).await {
            Ok(()) => {
                tracing::info!(pod = %att.container_id, "CNI DEL of a leftover succeeded");
                let _ = fs::remove_file(&path);
            }
            Err(e) => {
                tracing::warn!(pod = %att.container_id, error = %e, "CNI DEL of a leftover failed again");
                left += 1;
            }
        }
    }
    left
}
