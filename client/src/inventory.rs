//! How `list`, `show` and `verify` look on a terminal.

use attune_packs_client::pb;

use crate::output::table;

fn when(ms: i64) -> String {
    if ms <= 0 {
        return "-".into();
    }
    // UTC, to the second, without a date crate: days since the epoch to a civil date.
    let secs = ms.div_euclid(1000);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

fn components(c: Option<&pb::ComponentCounts>) -> String {
    let Some(c) = c else { return "-".into() };
    let parts: Vec<String> = [
        (c.actions, "action", "actions"),
        (c.sensors, "sensor", "sensors"),
        (c.triggers, "trigger", "triggers"),
        (c.rules, "rule", "rules"),
        (c.workflows, "workflow", "workflows"),
        (c.policies, "policy", "policies"),
        (c.aliases, "alias", "aliases"),
    ]
    .iter()
    .filter(|(n, _, _)| *n > 0)
    .map(|(n, one, many)| attune_packs_core::progress::count(*n, one, many))
    .collect();
    if parts.is_empty() {
        "-".into()
    } else {
        parts.join(", ")
    }
}

fn environments(envs: &[pb::EnvironmentState]) -> String {
    if envs.is_empty() {
        return "-".into();
    }
    envs.iter()
        .map(|e| format!("{} {}", e.runtime, e.status))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The packs of one or more pages, and how many there are in all.
pub fn print_list(packs: &[pb::InstalledPackSummary], total: u64, next_page_token: &str) {
    if packs.is_empty() {
        println!("no installed packs match");
        return;
    }
    let rows: Vec<Vec<String>> = packs
        .iter()
        .map(|p| {
            vec![
                p.r#ref.clone(),
                p.version.clone(),
                if p.source_type.is_empty() {
                    "-".into()
                } else {
                    p.source_type.clone()
                },
                when(p.installed_at_ms),
                components(p.components.as_ref()),
                environments(&p.environments),
            ]
        })
        .collect();
    println!(
        "{}",
        table(
            &[
                "REF",
                "VERSION",
                "SOURCE",
                "INSTALLED",
                "COMPONENTS",
                "ENVIRONMENTS"
            ],
            &rows
        )
    );
    println!(
        "{} of {}",
        packs.len(),
        attune_packs_core::progress::count(total, "installed pack", "installed packs")
    );
    if !next_page_token.is_empty() {
        println!("more: --page-token {next_page_token} (or --all)");
    }
}

pub fn print_show(d: &pb::PackDetail) {
    let Some(p) = &d.pack else { return };
    println!("{} {} — {}", p.r#ref, p.version, p.label);
    if !p.description.is_empty() {
        println!("  {}", p.description);
    }
    println!("  stored at:   {}", d.storage_path);
    println!(
        "  installed:   {} by {}",
        when(p.installed_at_ms),
        if p.installed_by.is_empty() {
            "-"
        } else {
            &p.installed_by
        }
    );
    if let Some(v) = &d.provenance {
        println!("provenance");
        let line = |name: &str, value: &str| {
            if !value.is_empty() {
                println!("  {name:<18} {value}");
            }
        };
        line("source:", &v.source);
        line("source type:", &v.source_type);
        line("source url:", &v.source_url);
        line("git ref:", &v.source_ref);
        line("git commit:", &v.git_commit);
        line("registry:", &v.registry_url);
        line("registry trust:", &v.registry_trust);
        line("index entry:", &v.index_entry);
        line("expected checksum:", &v.expected_checksum);
        line("checksum:", &v.actual_checksum);
        println!(
            "  {:<18} {}",
            "verified:",
            if v.checksum_verified { "yes" } else { "no" }
        );
    }
    println!("components ({})", components(p.components.as_ref()));
    for c in &d.components {
        println!("  {:<9} {:<40} {}", c.kind, c.r#ref, c.file);
    }
    if !d.environments.is_empty() {
        println!("environments");
        for e in &d.environments {
            println!("  {} {} {}", e.runtime, e.status, e.path);
            if !e.interpreter.is_empty() {
                println!(
                    "    interpreter {}, built {}, inputs {}",
                    e.interpreter,
                    when(e.built_at_ms),
                    e.inputs_hash.get(..16).unwrap_or(&e.inputs_hash)
                );
            }
        }
    }
    match &d.last_test {
        Some(t) => println!(
            "last test: {} ({} passed, {} failed, {} skipped of {})",
            t.status, t.passed, t.failed, t.skipped, t.total_tests
        ),
        None => println!("last test: none recorded"),
    }
    let links = |title: &str, links: &[pb::PackDependencyLink], none: &str| {
        if links.is_empty() {
            println!("{title}: {none}");
            return;
        }
        println!("{title}");
        for l in links {
            let installed = if l.installed_version.is_empty() {
                "not installed".to_string()
            } else {
                l.installed_version.clone()
            };
            let mark = if l.satisfied { "ok" } else { "NOT SATISFIED" };
            println!("  {} {} ({installed}) {mark}", l.r#ref, l.requirement);
        }
    };
    links("depends on", &d.depends_on, "nothing");
    links("required by", &d.required_by, "no installed pack");
    if !d.kept_versions.is_empty() {
        println!("kept versions");
        for k in &d.kept_versions {
            println!("  {} kept {} {}", k.version, when(k.kept_at_ms), k.checksum);
        }
    }
}

/// `rpm -V`-like lines: one per finding, then a summary.
pub fn print_verify(r: &pb::VerifyPacksResult) {
    for p in &r.packs {
        if p.status == "ok" && p.message.is_empty() {
            println!("{:<13} {}", "ok", p.r#ref);
            continue;
        }
        println!("{:<13} {}", p.status, p.r#ref);
        for (mark, paths) in [("M", &p.modified), ("A", &p.added), ("D", &p.missing)] {
            for path in paths {
                println!("  {mark} {path}");
            }
        }
        for odd in &p.irregular {
            println!("  ! {odd}");
        }
        if !p.message.is_empty() {
            println!("  {}", p.message);
        }
    }
    println!("{} ok, {} not ok", r.ok, r.failed);
}

/// Whether `verify` found something to act on (the exit code says so).
pub fn verify_clean(r: &pb::VerifyPacksResult) -> bool {
    r.packs
        .iter()
        .all(|p| matches!(p.status.as_str(), "ok" | "unverifiable"))
}

#[cfg(test)]
mod tests {
    use super::pb;

    #[test]
    fn component_counts_agree_with_their_nouns() {
        let c = pb::ComponentCounts {
            actions: 1,
            sensors: 2,
            policies: 1,
            aliases: 1,
            ..Default::default()
        };
        assert_eq!(
            super::components(Some(&c)),
            "1 action, 2 sensors, 1 policy, 1 alias"
        );
    }

    #[test]
    fn dates_are_utc_civil_dates() {
        assert_eq!(super::when(0), "-");
        assert_eq!(super::when(86_400_000), "1970-01-02 00:00:00Z");
        assert_eq!(super::when(1_764_669_600_123), "2025-12-02 10:00:00Z");
    }
}
