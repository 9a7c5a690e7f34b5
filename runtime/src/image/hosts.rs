//! Registry hosts configured the way containerd reads them: a directory with one
//! `<registry host>/hosts.toml` per registry (and `_default/hosts.toml` for the others):
//!
//! ```toml
//! server = "https://registry-1.docker.io"     # the upstream, tried last
//!
//! [host."http://127.0.0.1:5000"]              # mirrors, tried first, in file order
//!   capabilities = ["pull", "resolve"]
//!   ca = "/etc/podrun/certs.d/mirror-ca.pem"  # or a list
//!   skip_verify = false
//! ```
//! A mirror serves a pull only if it has both `pull` and `resolve` (tags are resolved
//! through it). The image keeps the name it was asked for, whoever served it.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::{Error, Result};

/// One place to pull from.
#[derive(Debug, Clone, PartialEq)]
pub struct Endpoint {
    /// host[:port] to put in the reference.
    pub host: String,
    pub plain_http: bool,
    pub ca: Vec<PathBuf>,
    pub skip_verify: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct File {
    server: Option<String>,
    #[serde(rename = "host")]
    hosts: toml::Table,
    ca: Option<toml::Value>,
    skip_verify: Option<bool>,
}

fn paths(v: Option<&toml::Value>) -> Vec<PathBuf> {
    match v {
        Some(toml::Value::String(s)) => vec![s.into()],
        Some(toml::Value::Array(a)) => a
            .iter()
            .filter_map(|v| v.as_str().map(PathBuf::from))
            .collect(),
        _ => Vec::new(),
    }
}

/// "https://host:port/path" -> ("host:port", plain_http)
fn split_url(url: &str) -> (String, bool) {
    let (plain, rest) = match url.split_once("://") {
        Some(("http", rest)) => (true, rest),
        Some((_, rest)) => (false, rest),
        None => (false, url),
    };
    (rest.split('/').next().unwrap_or(rest).to_owned(), plain)
}

/// Where to pull `registry` from, in order: its mirrors, then its server (the registry
/// itself unless `server` says otherwise). `local` registries default to plain HTTP.
pub fn endpoints(dir: &Path, registry: &str, local: bool) -> Result<Vec<Endpoint>> {
    let host_dir = if registry == "docker.io" {
        "docker.io"
    } else {
        registry
    };
    let file = [
        dir.join(host_dir).join("hosts.toml"),
        dir.join("_default").join("hosts.toml"),
    ]
    .into_iter()
    .find(|p| p.is_file());
    let upstream = |server: Option<&str>, ca: Vec<PathBuf>, skip_verify: bool| {
        let (host, plain_http) = match server {
            Some(url) => split_url(url),
            None => (
                if registry == "docker.io" {
                    "registry-1.docker.io".to_owned()
                } else {
                    registry.to_owned()
                },
                local,
            ),
        };
        Endpoint {
            host,
            plain_http,
            ca,
            skip_verify,
        }
    };
    let Some(path) = file else {
        return Ok(vec![upstream(None, Vec::new(), false)]);
    };
    let text = std::fs::read_to_string(&path).map_err(Error::io("reading", &path))?;
    let parsed: File = toml::from_str(&text)
        .map_err(|e| Error::invalid("registry config", format!("{}: {e}", path.display())))?;
    Ok(from_file(&parsed, upstream))
}

/// The endpoints a parsed hosts.toml lists (mirrors that can pull and resolve), then its
/// server as `upstream` makes it.
fn from_file(
    parsed: &File,
    upstream: impl Fn(Option<&str>, Vec<PathBuf>, bool) -> Endpoint,
) -> Vec<Endpoint> {
    let mut out = Vec::new();
    for (url, host) in &parsed.hosts {
        let caps: Vec<&str> = host
            .get("capabilities")
            .and_then(|c| c.as_array())
            .map(|a| a.iter().filter_map(|v| v.as_str()).collect())
            .unwrap_or_else(|| vec!["pull", "resolve"]);
        if !(caps.contains(&"pull") && caps.contains(&"resolve")) {
            continue;
        }
        let (h, plain_http) = split_url(url);
        out.push(Endpoint {
            host: h,
            plain_http,
            ca: paths(host.get("ca")),
            skip_verify: host
                .get("skip_verify")
                .and_then(|v| v.as_bool())
                .unwrap_or(false),
        });
    }
    out.push(upstream(
        parsed.server.as_deref(),
        paths(parsed.ca.as_ref()),
        parsed.skip_verify.unwrap_or(false),
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Any hosts.toml: no panic, and every endpoint has a host.
    #[test]
    fn fuzz_hosts_toml() {
        let seed = br#"server = "https://registry-1.docker.io"
ca = "/etc/ca.pem"
[host."http://127.0.0.1:5000"]
  capabilities = ["pull", "resolve"]
  skip_verify = true
  ca = ["/a.pem", "/b.pem"]
"#;
        let tokens: &[&[u8]] = &[
            b"[host.\"",
            b"\"]",
            b"capabilities",
            b"= [",
            b"http://",
            b"\n",
            b"skip_verify = true",
        ];
        podrun_fuzzkit::fuzz("hosts-toml", &[seed], tokens, |input| {
            let Ok(text) = std::str::from_utf8(input) else {
                return;
            };
            let Ok(parsed) = toml::from_str::<File>(text) else {
                return;
            };
            let upstream = |server: Option<&str>, ca, skip_verify| Endpoint {
                host: server.map_or("registry.example".to_owned(), |s| split_url(s).0),
                plain_http: false,
                ca,
                skip_verify,
            };
            let endpoints = from_file(&parsed, upstream);
            assert!(!endpoints.is_empty());
        });
    }

    #[test]
    fn mirrors_come_first_in_file_order_then_the_server() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("registry.k8s.io")).unwrap();
        std::fs::write(
            dir.path().join("registry.k8s.io/hosts.toml"),
            r#"server = "https://registry.k8s.io"
[host."http://127.0.0.1:5000"]
  capabilities = ["pull", "resolve"]
[host."https://push-only.example"]
  capabilities = ["push"]
[host."https://mirror.example/v2"]
  capabilities = ["pull", "resolve"]
  ca = ["/etc/ca.pem"]
  skip_verify = true
"#,
        )
        .unwrap();
        let got = endpoints(dir.path(), "registry.k8s.io", false).unwrap();
        let hosts: Vec<(&str, bool)> = got
            .iter()
            .map(|e| (e.host.as_str(), e.plain_http))
            .collect();
        assert_eq!(
            hosts,
            [
                ("127.0.0.1:5000", true),
                ("mirror.example", false),
                ("registry.k8s.io", false)
            ]
        );
        assert_eq!(got[1].ca, [PathBuf::from("/etc/ca.pem")]);
        assert!(got[1].skip_verify);
    }

    #[test]
    fn without_a_file_the_registry_itself_and_docker_hub_is_registry_1() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(
            endpoints(dir.path(), "docker.io", false).unwrap()[0].host,
            "registry-1.docker.io"
        );
        let local = &endpoints(dir.path(), "127.0.0.1:5000", true).unwrap()[0];
        assert!(local.plain_http && local.host == "127.0.0.1:5000");
    }
}
