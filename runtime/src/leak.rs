//! What a leak audit finds (`doctor`): the kinds of things podrund made and no longer
//! owns, and the report that lists them. Kept apart from the audit so that the node can
//! hold the last report without depending on the audit that walks it.

use std::path::PathBuf;

use serde::Serialize;

/// Something podrund made and no longer owns, or that a pod it knows lacks.
#[derive(Debug, Clone, PartialEq)]
pub enum Finding {
    Netns(PathBuf),
    Veth(String),
    /// A host-local reservation: its file, the pod id and interface it names.
    Ip {
        file: PathBuf,
        pod: String,
        ifname: String,
    },
    Mount(PathBuf),
    /// A cgroup path, relative to each hierarchy's root.
    Cgroup(String),
    Process {
        pid: i32,
        what: String,
    },
    RuntimeState {
        runtime: &'static str,
        id: String,
    },
    StateFile(PathBuf),
    /// A pod's CNI attachment whose DEL kept failing after the pod went.
    CniLeftover(PathBuf),
    Missing(String),
}

/// The audit's report: one list per kind, all empty on a clean node.
#[derive(Debug, Default, Serialize, PartialEq)]
pub struct Report {
    pub netns: Vec<String>,
    pub veths: Vec<String>,
    pub ip_reservations: Vec<String>,
    pub mounts: Vec<String>,
    pub cgroups: Vec<String>,
    pub processes: Vec<String>,
    pub runtime_state: Vec<String>,
    pub state_files: Vec<String>,
    pub cni_leftovers: Vec<String>,
    /// What a known pod should have and lacks (not fixed: StopPodSandbox handles those).
    pub missing: Vec<String>,
}

impl Report {
    /// How many of each kind it lists, by the kind's name (`netns`, `veths`, ...).
    pub fn counts(&self) -> Vec<(String, usize)> {
        let value = serde_json::to_value(self).unwrap_or_default();
        let lists = value.as_object().into_iter().flatten();
        lists
            .map(|(kind, list)| (kind.clone(), list.as_array().map_or(0, Vec::len)))
            .collect()
    }

    pub fn of(findings: &[Finding]) -> Report {
        let mut r = Report::default();
        for f in findings {
            let (list, text) = match f {
                Finding::Netns(p) => (&mut r.netns, p.display().to_string()),
                Finding::Veth(name) => (&mut r.veths, name.clone()),
                Finding::Ip { file, pod, .. } => (
                    &mut r.ip_reservations,
                    format!("{} (pod {pod})", file.display()),
                ),
                Finding::Mount(p) => (&mut r.mounts, p.display().to_string()),
                Finding::Cgroup(c) => (&mut r.cgroups, c.clone()),
                Finding::Process { pid, what } => (&mut r.processes, format!("{pid} {what}")),
                Finding::RuntimeState { runtime, id } => {
                    (&mut r.runtime_state, format!("{runtime} {id}"))
                }
                Finding::StateFile(p) => (&mut r.state_files, p.display().to_string()),
                Finding::CniLeftover(p) => (&mut r.cni_leftovers, p.display().to_string()),
                Finding::Missing(m) => (&mut r.missing, m.clone()),
            };
            list.push(text);
        }
        r
    }

    pub fn is_clean(&self) -> bool {
        *self == Report::default()
    }
}
