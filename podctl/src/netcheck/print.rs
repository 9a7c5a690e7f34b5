//! The text report (without --json): a line per check with its verdict and rules, the
//! path under it with broken hops marked `X`, and a count at the end.

use super::Check;

pub(super) fn print_text(checks: &[Check]) {
    for c in checks {
        let verdict = if c.ok { "PASS" } else { "FAIL" };
        let rules: Vec<String> = c
            .rules
            .iter()
            .map(|r| {
                format!(
                    "{} {} ({})",
                    r.rule,
                    if r.ok { "ok" } else { "FAILED" },
                    r.detail
                )
            })
            .collect();
        println!(
            "{verdict} {} ({}) {}: {}",
            c.kind,
            c.scope,
            c.label,
            rules.join("; ")
        );
        if !c.path.is_empty() {
            let hops: Vec<String> = c
                .path
                .iter()
                .map(|h| format!("{}{} [{}]", if h.ok { "" } else { "X " }, h.hop, h.detail))
                .collect();
            println!("     {}", hops.join("\n  -> "));
        }
        if let Some(h) = c.failed_hop {
            println!("     broken at: {h}");
        }
    }
    let failed = checks.iter().filter(|c| !c.ok).count();
    println!("{} checks, {failed} failed", checks.len());
}
