//! The subset of the OCI runtime spec (`config.json`) that podrun reads and writes. Unknown
//! fields are ignored on read, so the shim can read the full specs containerd writes.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Annotation containerd's CRI plugin (and podrund) put on a pod's infra container.
pub const CONTAINER_TYPE: &str = "io.kubernetes.cri.container-type";
pub const CONTAINER_TYPE_SANDBOX: &str = "sandbox";
pub const SANDBOX_ID: &str = "io.kubernetes.cri.sandbox-id";

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, rename_all = "camelCase")]
pub struct Spec {
    pub oci_version: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub process: Option<Process>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub linux: Option<Linux>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, rename_all = "camelCase")]
pub struct Process {
    pub args: Vec<String>,
    pub cwd: String,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub terminal: bool,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, rename_all = "camelCase")]
pub struct Linux {
    pub namespaces: Vec<Namespace>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cgroups_path: Option<String>,
}

/// A namespace entry: with a path the process joins it, without one it gets a new one;
/// a type that is absent means the runtime's own (the node's).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct Namespace {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
}

impl Spec {
    pub fn is_sandbox(&self) -> bool {
        self.annotations.get(CONTAINER_TYPE).map(String::as_str) == Some(CONTAINER_TYPE_SANDBOX)
    }

    pub fn namespace(&self, kind: &str) -> Option<&Namespace> {
        self.linux
            .as_ref()?
            .namespaces
            .iter()
            .find(|n| n.kind == kind)
    }
}
