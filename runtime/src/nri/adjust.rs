//! Applying NRI plugins' container adjustments to the OCI spec, in the plugins' order. A
//! key, destination or path marked with a leading `-` removes what it names. Two plugins
//! may not set (or remove) the same thing, as NRI's reference rules say: the second is
//! refused, naming both. What podrun
//! does not apply (CDI devices from a plugin, the cgroup path, namespaces, I/O priority,
//! seccomp, network devices, scheduler, RDT, memory policy, hugepages, block I/O classes)
//! is refused with FailedPrecondition naming the plugin and the field, never ignored.

use std::path::{Path, PathBuf};

use ::oci_spec::runtime as oci;
use podrun_proto::nri as api;

use crate::error::{Error, Result};
use crate::oci_edit;

fn refuse(plugin: &str, what: &str) -> Error {
    Error::FailedPrecondition(format!(
        "NRI plugin {plugin} adjusts {what}, which podrun does not apply"
    ))
}

fn removal(key: &str) -> Option<&str> {
    key.strip_prefix('-')
}

/// Applies `adjustments` (plugin, adjustment) to `spec`; `oom_floor` is the lowest
/// oom_score_adj podrund may give.
pub fn adjust(
    spec: &mut oci::Spec,
    adjustments: &[(String, api::ContainerAdjustment)],
    oom_floor: i64,
) -> Result<()> {
    let mut owners: std::collections::HashMap<String, &str> = Default::default();
    for (plugin, a) in adjustments {
        for field in fields(a) {
            match owners.get(&field) {
                Some(other) if other != plugin => {
                    return Err(Error::FailedPrecondition(format!(
                        "NRI plugins {other} and {plugin} both tried to set {field}"
                    )))
                }
                _ => owners.insert(field, plugin),
            };
        }
        if !a.cdi_devices.is_empty() {
            return Err(refuse(plugin, "CDI_devices"));
        }
        annotations(spec, &a.annotations);
        for m in &a.mounts {
            mount(spec, m);
        }
        env(spec, &a.env)?;
        if let Some(h) = &a.hooks {
            hooks(spec, h);
        }
        process(spec, a, plugin)?;
        if let Some(linux) = &a.linux {
            self::linux(spec, linux, plugin, oom_floor)?;
        }
    }
    Ok(())
}

/// What an adjustment sets or removes, one name per thing (hooks only add, and are not
/// listed; args given with NRI's override marker, a leading "", are not claimed).
fn fields(a: &api::ContainerAdjustment) -> Vec<String> {
    let bare = |k: &str| removal(k).unwrap_or(k).to_owned();
    let mut fields: Vec<String> = a
        .annotations
        .keys()
        .map(|k| format!("annotation {}", bare(k)))
        .collect();
    fields.extend(
        a.mounts
            .iter()
            .map(|m| format!("mount {}", bare(&m.destination))),
    );
    fields.extend(a.env.iter().map(|e| format!("env {}", bare(&e.key))));
    if a.args.first().is_some_and(|f| !f.is_empty()) {
        fields.push("args".into());
    }
    fields.extend(a.rlimits.iter().map(|r| format!("rlimit {}", r.r#type)));
    let Some(linux) = &a.linux else {
        return fields;
    };
    fields.extend(
        linux
            .devices
            .iter()
            .map(|d| format!("device {}", bare(&d.path))),
    );
    fields.extend(linux.sysctl.keys().map(|k| format!("sysctl {}", bare(k))));
    if linux.oom_score_adj.is_some() {
        fields.push("oom_score_adj".into());
    }
    let resources = linux.resources.as_ref();
    if let Some(m) = resources.and_then(|r| r.memory.as_ref()) {
        let set = [
            ("memory limit", m.limit.is_some()),
            ("memory reservation", m.reservation.is_some()),
            ("memory swap", m.swap.is_some()),
            ("memory swappiness", m.swappiness.is_some()),
            ("memory disable_oom_killer", m.disable_oom_killer.is_some()),
        ];
        fields.extend(set.iter().filter(|(_, s)| *s).map(|(f, _)| f.to_string()));
    }
    if let Some(c) = resources.and_then(|r| r.cpu.as_ref()) {
        let set = [
            ("cpu shares", c.shares.is_some()),
            ("cpu quota", c.quota.is_some()),
            ("cpu period", c.period.is_some()),
            ("cpu cpus", !c.cpus.is_empty()),
            ("cpu mems", !c.mems.is_empty()),
        ];
        fields.extend(set.iter().filter(|(_, s)| *s).map(|(f, _)| f.to_string()));
    }
    if resources.is_some_and(|r| r.pids.is_some()) {
        fields.push("pids limit".into());
    }
    fields
}

fn annotations(spec: &mut oci::Spec, given: &std::collections::HashMap<String, String>) {
    if given.is_empty() {
        return;
    }
    let annotations = spec.annotations_mut().get_or_insert_with(Default::default);
    for (key, value) in given {
        match removal(key) {
            Some(key) => annotations.remove(key),
            None => annotations.insert(key.clone(), value.clone()),
        };
    }
}

fn mount(spec: &mut oci::Spec, m: &api::Mount) {
    if let Some(dest) = removal(&m.destination) {
        return oci_edit::put_mount(spec, Path::new(dest), None);
    }
    let mut mount = oci::Mount::default();
    mount
        .set_destination(PathBuf::from(&m.destination))
        .set_typ(Some(m.r#type.clone()).filter(|t| !t.is_empty()))
        .set_source(Some(PathBuf::from(&m.source)).filter(|_| !m.source.is_empty()))
        .set_options(Some(m.options.clone()).filter(|o| !o.is_empty()));
    oci_edit::put_mount(spec, Path::new(&m.destination), Some(mount));
}

fn env(spec: &mut oci::Spec, given: &[api::KeyValue]) -> Result<()> {
    if given.is_empty() {
        return Ok(());
    }
    let process = oci_edit::process(spec)?;
    for kv in given {
        match removal(&kv.key) {
            Some(key) => oci_edit::set_env(process, key, None),
            None => oci_edit::set_env(process, &kv.key, Some(&kv.value)),
        }
    }
    Ok(())
}

fn hooks(spec: &mut oci::Spec, given: &api::Hooks) {
    let phases = [
        &given.prestart,
        &given.create_runtime,
        &given.create_container,
        &given.start_container,
        &given.poststart,
        &given.poststop,
    ];
    for (name, list) in oci_edit::HOOK_PHASES.iter().zip(phases) {
        for h in list {
            let mut hook = oci::Hook::default();
            hook.set_path(PathBuf::from(&h.path))
                .set_args(Some(h.args.clone()).filter(|a| !a.is_empty()))
                .set_env(Some(h.env.clone()).filter(|e| !e.is_empty()))
                .set_timeout(h.timeout.as_ref().map(|t| t.value));
            oci_edit::add_hook(spec, name, hook);
        }
    }
}

/// Args and rlimits.
fn process(spec: &mut oci::Spec, a: &api::ContainerAdjustment, plugin: &str) -> Result<()> {
    if a.args.is_empty() && a.rlimits.is_empty() {
        return Ok(());
    }
    let process = oci_edit::process(spec)?;
    let args: Vec<String> = match a.args.first().map(String::as_str) {
        Some("") => a.args[1..].to_vec(),
        _ => a.args.clone(),
    };
    if !args.is_empty() {
        process.set_args(Some(args));
    }
    if !a.rlimits.is_empty() {
        let mut rlimits = process.rlimits().clone().unwrap_or_default();
        for r in &a.rlimits {
            let kind: oci::PosixRlimitType = serde_json::from_value(serde_json::json!(r.r#type))
                .map_err(|_| refuse(plugin, &format!("rlimit {:?}", r.r#type)))?;
            rlimits.retain(|old| old.typ() != kind);
            let limit = oci::PosixRlimitBuilder::default()
                .typ(kind)
                .hard(r.hard)
                .soft(r.soft)
                .build()
                .map_err(|e| Error::Internal(format!("building an rlimit: {e}")))?;
            rlimits.push(limit);
        }
        process.set_rlimits(Some(rlimits));
    }
    Ok(())
}

fn linux(
    spec: &mut oci::Spec,
    a: &api::LinuxContainerAdjustment,
    plugin: &str,
    oom_floor: i64,
) -> Result<()> {
    let unsupported = [
        (!a.cgroups_path.is_empty(), "linux.cgroups_path"),
        (!a.namespaces.is_empty(), "linux.namespaces"),
        (a.io_priority.is_some(), "linux.io_priority"),
        (a.seccomp_policy.is_some(), "linux.seccomp_policy"),
        (!a.net_devices.is_empty(), "linux.net_devices"),
        (a.scheduler.is_some(), "linux.scheduler"),
        (a.rdt.is_some(), "linux.rdt"),
        (a.memory_policy.is_some(), "linux.memory_policy"),
    ];
    if let Some((_, what)) = unsupported.iter().find(|(set, _)| *set) {
        return Err(refuse(plugin, what));
    }
    if let Some(oom) = &a.oom_score_adj {
        let process = oci_edit::process(spec)?;
        process.set_oom_score_adj(Some(oom.value.clamp(oom_floor, 1000) as i32));
    }
    let linux = oci_edit::linux(spec)?;
    if !a.sysctl.is_empty() {
        let mut sysctl = linux.sysctl().clone().unwrap_or_default();
        for (key, value) in &a.sysctl {
            match removal(key) {
                Some(key) => sysctl.remove(key),
                None => sysctl.insert(key.clone(), value.clone()),
            };
        }
        linux.set_sysctl(Some(sysctl));
    }
    for d in &a.devices {
        device(linux, d, plugin)?;
    }
    if let Some(r) = &a.resources {
        resources(linux, r, plugin)?;
    }
    Ok(())
}

fn device(linux: &mut oci::Linux, d: &api::LinuxDevice, plugin: &str) -> Result<()> {
    if let Some(path) = removal(&d.path) {
        oci_edit::remove_device(linux, Path::new(path));
        return Ok(());
    }
    let typ: oci::LinuxDeviceType = d
        .r#type
        .parse()
        .map_err(|_| refuse(plugin, &format!("device {} of type {:?}", d.path, d.r#type)))?;
    let mut device = oci::LinuxDevice::default();
    device
        .set_path(PathBuf::from(&d.path))
        .set_typ(typ)
        .set_major(d.major)
        .set_minor(d.minor)
        .set_file_mode(d.file_mode.as_ref().map(|m| m.value))
        .set_uid(d.uid.as_ref().map(|u| u.value))
        .set_gid(d.gid.as_ref().map(|g| g.value));
    let rule = oci_edit::allow_rule(typ, d.major, d.minor, "rwm");
    oci_edit::put_device(linux, device, rule);
    Ok(())
}

fn resources(linux: &mut oci::Linux, r: &api::LinuxResources, plugin: &str) -> Result<()> {
    let unsupported = [
        (
            !r.hugepage_limits.is_empty(),
            "linux.resources.hugepage_limits",
        ),
        (r.blockio_class.is_some(), "linux.resources.blockio_class"),
        (r.rdt_class.is_some(), "linux.resources.rdt_class"),
        (!r.devices.is_empty(), "linux.resources.devices"),
        (!r.unified.is_empty(), "linux.resources.unified"),
    ];
    if let Some((_, what)) = unsupported.iter().find(|(set, _)| *set) {
        return Err(refuse(plugin, what));
    }
    let mut resources = linux.resources().clone().unwrap_or_default();
    if let Some(m) = &r.memory {
        if m.kernel.is_some() || m.kernel_tcp.is_some() || m.use_hierarchy.is_some() {
            return Err(refuse(
                plugin,
                "linux.resources.memory.kernel, kernel_tcp or use_hierarchy",
            ));
        }
        let mut memory = resources.memory().unwrap_or_default();
        if let Some(v) = &m.limit {
            memory.set_limit(Some(v.value));
        }
        if let Some(v) = &m.reservation {
            memory.set_reservation(Some(v.value));
        }
        if let Some(v) = &m.swap {
            memory.set_swap(Some(v.value));
        }
        if let Some(v) = &m.swappiness {
            memory.set_swappiness(Some(v.value));
        }
        if let Some(v) = &m.disable_oom_killer {
            memory.set_disable_oom_killer(Some(v.value));
        }
        resources.set_memory(Some(memory));
    }
    if let Some(c) = &r.cpu {
        if c.realtime_runtime.is_some() || c.realtime_period.is_some() {
            return Err(refuse(plugin, "linux.resources.cpu.realtime_*"));
        }
        let mut cpu = resources.cpu().clone().unwrap_or_default();
        if let Some(v) = &c.shares {
            cpu.set_shares(Some(v.value));
        }
        if let Some(v) = &c.quota {
            cpu.set_quota(Some(v.value));
        }
        if let Some(v) = &c.period {
            cpu.set_period(Some(v.value));
        }
        if !c.cpus.is_empty() {
            cpu.set_cpus(Some(c.cpus.clone()));
        }
        if !c.mems.is_empty() {
            cpu.set_mems(Some(c.mems.clone()));
        }
        resources.set_cpu(Some(cpu));
    }
    if let Some(p) = &r.pids {
        let mut pids = oci::LinuxPids::default();
        pids.set_limit(p.limit);
        resources.set_pids(Some(pids));
    }
    linux.set_resources(Some(resources));
    Ok(())
}
