//! `podctl doctor`: podrund's leak audit, and `--fix` to remove what it found.

use std::path::Path;

use anyhow::{Context, Result};
use podrun_proto::podrun::v1 as api;

#[derive(clap::Args)]
pub struct Args {
    /// Print one JSON object (a list per kind of resource).
    #[arg(long)]
    json: bool,
    /// Remove the orphans (CNI DEL first, then the rest), then audit again.
    #[arg(long)]
    fix: bool,
}

/// Exit status: 0 when the node is clean (after fixing, with --fix), 1 otherwise.
pub async fn run(endpoint: &Path, args: Args) -> Result<i32> {
    let channel = podrun_proto::client::channel(endpoint)
        .await
        .with_context(|| format!("connecting to {}", endpoint.display()))?;
    let mut doctor = api::doctor_client::DoctorClient::new(channel);
    let r = doctor
        .audit(api::AuditRequest { fix: args.fix })
        .await?
        .into_inner();
    let found = r.found.clone().unwrap_or_default();
    let result = if args.fix {
        r.left.clone().unwrap_or_default()
    } else {
        found.clone()
    };
    if args.json {
        crate::print_json(&r)?;
    } else {
        print(&found, "found");
        if args.fix {
            print(&result, "left after fixing");
            for f in &r.failed {
                println!("could not remove: {f}");
            }
        }
    }
    Ok(if is_clean(&result) { 0 } else { 1 })
}

fn kinds(r: &api::AuditReport) -> [(&'static str, &Vec<String>); 10] {
    [
        ("netns", &r.netns),
        ("veths", &r.veths),
        ("IP reservations", &r.ip_reservations),
        ("mounts", &r.mounts),
        ("cgroups", &r.cgroups),
        ("processes", &r.processes),
        ("OCI runtime state", &r.runtime_state),
        ("state files", &r.state_files),
        ("CNI attachments whose DEL failed", &r.cni_leftovers),
        ("missing from known pods", &r.missing),
    ]
}

fn is_clean(r: &api::AuditReport) -> bool {
    kinds(r).iter().all(|(_, list)| list.is_empty())
}

fn print(r: &api::AuditReport, what: &str) {
    if is_clean(r) {
        println!("{what}: nothing; the node is clean");
        return;
    }
    println!("{what}:");
    for (kind, list) in kinds(r) {
        if !list.is_empty() {
            println!("  {kind}:");
            for item in list {
                println!("    {item}");
            }
        }
    }
}
