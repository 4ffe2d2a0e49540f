//! How results and progress look on a terminal.

use attune_packs_client::pb;
use attune_packs_core::progress::{count, noun};
use serde::Serialize;

pub fn print_json<T: Serialize>(value: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

pub fn print_yaml<T: Serialize>(value: &T) -> anyhow::Result<()> {
    print!("{}", serde_yaml::to_string(value)?);
    Ok(())
}

pub fn progress_line(p: &pb::Progress, colour: bool) -> String {
    let stage = pb::progress::Stage::try_from(p.stage)
        .map(|s| s.as_str_name().trim_start_matches("STAGE_").to_lowercase())
        .unwrap_or_else(|_| "?".into());
    let level = pb::progress::Level::try_from(p.level).unwrap_or(pb::progress::Level::Info);
    let counter = match (p.done, p.total) {
        (Some(d), Some(t)) => format!(" ({d}/{t})"),
        (Some(d), None) => format!(" ({d})"),
        _ => String::new(),
    };
    let mark = match (level, colour) {
        (pb::progress::Level::Error, true) => "\x1b[31m✗\x1b[0m",
        (pb::progress::Level::Warning, true) => "\x1b[33m⚠\x1b[0m",
        (_, true) => "\x1b[32m•\x1b[0m",
        (pb::progress::Level::Error, false) => "error:",
        (pb::progress::Level::Warning, false) => "warning:",
        (_, false) => "-",
    };
    format!("{mark} [{stage}] {}: {}{counter}", p.pack, p.message)
}

/// Left-aligned columns, sized to their widest cell.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_string()
    };
    let mut out = vec![line(headers.to_vec())];
    let rules: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
    out.push(line(rules.iter().map(String::as_str).collect()));
    for row in rows {
        out.push(line(row.iter().map(String::as_str).collect()));
    }
    out.join("\n")
}

pub fn print_dependencies(r: &pb::DependenciesResult) {
    let packs: Vec<Vec<String>> = r
        .analyzed_packs
        .iter()
        .map(|p| {
            vec![
                p.pack_ref.clone(),
                p.dependency_count.to_string(),
                p.pack_path.clone(),
            ]
        })
        .collect();
    println!("{}", table(&["PACK", "DEPS", "PATH"], &packs));
    if !r.dependencies.is_empty() {
        let deps: Vec<Vec<String>> = r
            .dependencies
            .iter()
            .map(|d| {
                let status = if d.already_installed {
                    format!("installed {}", d.installed_version.as_deref().unwrap_or(""))
                } else if let Some(v) = &d.provided_by_request {
                    format!("in request {v}")
                } else if let Some(v) = &d.installed_version {
                    format!("MISSING (installed {v} does not match)")
                } else {
                    "MISSING".into()
                };
                vec![
                    d.required_by.clone(),
                    d.pack_ref.clone(),
                    d.version_spec.clone(),
                    status,
                ]
            })
            .collect();
        println!();
        println!(
            "{}",
            table(&["PACK", "REQUIRES", "VERSION", "STATUS"], &deps)
        );
    }
    if !r.runtime_requirements.is_empty() {
        let mut rows: Vec<Vec<String>> = Vec::new();
        let mut refs: Vec<&String> = r.runtime_requirements.keys().collect();
        refs.sort();
        for pack in refs {
            let req = &r.runtime_requirements[pack];
            if let Some(py) = &req.python {
                rows.push(vec![
                    pack.clone(),
                    "python".into(),
                    py.version.clone(),
                    py.requirements_file.clone().unwrap_or_default(),
                ]);
            }
            if let Some(node) = &req.nodejs {
                rows.push(vec![
                    pack.clone(),
                    "nodejs".into(),
                    node.version.clone(),
                    node.package_file.clone().unwrap_or_default(),
                ]);
            }
        }
        println!();
        println!("{}", table(&["PACK", "RUNTIME", "VERSION", "FILE"], &rows));
    }
    for e in &r.errors {
        println!("error: {}: {}", e.pack_path, e.error);
    }
    println!();
    println!("{}", dependencies_summary(r));
}

fn dependencies_summary(r: &pb::DependenciesResult) -> String {
    let verdict = if r.missing_dependencies.is_empty() && r.errors.is_empty() {
        "ready to build and register"
    } else {
        "not ready"
    };
    format!(
        "{} analysed, {}, {} missing, {}: {verdict}",
        count(r.analyzed_packs.len(), "pack", "packs"),
        count(r.dependencies.len(), "dependency", "dependencies"),
        r.missing_dependencies.len(),
        count(r.errors.len(), "error", "errors"),
    )
}

pub fn print_download(r: &pb::DownloadResult) {
    if !r.downloaded_packs.is_empty() {
        let rows: Vec<Vec<String>> = r
            .downloaded_packs
            .iter()
            .map(|p| {
                vec![
                    p.pack_ref.clone(),
                    p.pack_version.clone(),
                    p.source_type.clone(),
                    p.pack_path.clone(),
                    p.git_commit
                        .as_deref()
                        .map(|c| c[..c.len().min(12)].to_string())
                        .unwrap_or_default(),
                ]
            })
            .collect();
        println!(
            "{}",
            table(&["PACK", "VERSION", "SOURCE", "PATH", "COMMIT"], &rows)
        );
    }
    for f in &r.failed_packs {
        println!("failed: {}: {}", f.source, f.error);
    }
    println!();
    println!("{}", download_summary(r));
}

fn download_summary(r: &pb::DownloadResult) -> String {
    format!(
        "{} of {} downloaded, {} failed",
        r.success_count,
        count(r.total_count, "pack", "packs"),
        r.failure_count
    )
}

pub fn print_register(r: &pb::RegisterBatchResult) {
    if !r.registered_packs.is_empty() {
        let rows: Vec<Vec<String>> = r
            .registered_packs
            .iter()
            .map(|p| {
                let c = p.components_registered.unwrap_or_default();
                let tests = p.test_result.as_ref().map_or_else(
                    || "skipped".to_string(),
                    |t| format!("{} {}/{}", t.status, t.passed, t.total_tests),
                );
                vec![
                    p.pack_ref.clone(),
                    p.pack_version.clone(),
                    p.pack_id.to_string(),
                    format!(
                        "{}a {}s {}t {}r {}w {}p {}al",
                        c.actions,
                        c.sensors,
                        c.triggers,
                        c.rules,
                        c.workflows,
                        c.policies,
                        c.aliases
                    ),
                    tests,
                    p.storage_path.clone(),
                ]
            })
            .collect();
        println!(
            "{}",
            table(
                &["PACK", "VERSION", "ID", "COMPONENTS", "TESTS", "STORED AT"],
                &rows
            )
        );
        for p in &r.registered_packs {
            for w in p.validation_results.iter().flat_map(|v| &v.warnings) {
                println!("warning: {}: {}: {}", p.pack_ref, w.file, w.message);
            }
        }
    }
    for f in &r.failed_packs {
        println!("failed ({}): {}: {}", f.error_stage, f.pack_path, f.error);
    }
    if let Some(s) = &r.summary {
        println!();
        println!("{}", register_summary(s));
    }
}

fn register_summary(s: &pb::RegisterBatchSummary) -> String {
    format!(
        "{} of {} registered, {}, {} ms",
        s.success_count,
        count(s.total_packs, "pack", "packs"),
        count(s.total_components, "component", "components"),
        s.duration_ms
    )
}

pub fn print_build_envs(r: &pb::BuildEnvsResult) {
    let mut rows: Vec<Vec<String>> = Vec::new();
    for b in &r.built_environments {
        let envs = b.environments.clone().unwrap_or_default();
        let state = |reused: bool| if reused { "reused" } else { "built" }.to_string();
        if let Some(p) = &envs.python {
            rows.push(vec![
                b.pack_ref.clone(),
                "python".into(),
                p.python_version.clone(),
                p.package_count.to_string(),
                state(p.reused),
                p.virtualenv_path.clone(),
            ]);
        }
        if let Some(n) = &envs.nodejs {
            rows.push(vec![
                b.pack_ref.clone(),
                "nodejs".into(),
                n.nodejs_version.clone(),
                n.package_count.to_string(),
                state(n.reused),
                n.node_modules_path.clone(),
            ]);
        }
        if envs.python.is_none() && envs.nodejs.is_none() {
            rows.push(vec![
                b.pack_ref.clone(),
                "-".into(),
                "-".into(),
                "0".into(),
                "none needed".into(),
                String::new(),
            ]);
        }
    }
    if !rows.is_empty() {
        println!(
            "{}",
            table(
                &["PACK", "RUNTIME", "VERSION", "PACKAGES", "STATE", "PATH"],
                &rows
            )
        );
    }
    for f in &r.failed_environments {
        println!("failed ({}): {}: {}", f.runtime, f.pack_path, f.error);
    }
    if let Some(s) = &r.summary {
        println!();
        println!("{}", build_envs_summary(s));
    }
}

fn build_envs_summary(s: &pb::BuildEnvsSummary) -> String {
    format!(
        "{} of {} ready ({} python, {} nodejs {}), {} ms",
        s.success_count,
        count(s.total_packs, "pack", "packs"),
        s.python_envs_built,
        s.nodejs_envs_built,
        noun(
            s.python_envs_built + s.nodejs_envs_built,
            "environment",
            "environments"
        ),
        s.total_duration_ms
    )
}

pub fn print_search(r: &pb::SearchPacksResponse) {
    let rows: Vec<Vec<String>> = r
        .packs
        .iter()
        .map(|p| {
            vec![
                p.pack_ref.clone(),
                p.version.clone(),
                p.description.clone(),
                p.index_name.clone().unwrap_or_else(|| p.index_url.clone()),
            ]
        })
        .collect();
    println!(
        "{}",
        table(&["PACK", "VERSION", "DESCRIPTION", "INDEX"], &rows)
    );
    println!();
    println!("{}", count(r.packs.len(), "pack", "packs"));
}

pub fn print_registries(r: &pb::ListRegistriesResponse) {
    let rows: Vec<Vec<String>> = r
        .registries
        .iter()
        .map(|i| {
            vec![
                i.priority.to_string(),
                i.name.clone().unwrap_or_default(),
                i.url.clone(),
                if i.enabled { "enabled" } else { "disabled" }.to_string(),
                if i.has_headers { "yes" } else { "no" }.to_string(),
            ]
        })
        .collect();
    println!(
        "{}",
        table(&["PRIORITY", "NAME", "URL", "STATUS", "HEADERS"], &rows)
    );
}

pub fn print_install(r: &pb::InstallResult) {
    if !r.plan.is_empty() {
        let rows: Vec<Vec<String>> = r
            .plan
            .iter()
            .map(|p| {
                let version = match &p.installed_version {
                    Some(old) if *old != p.version => format!("{old} -> {}", p.version),
                    _ => p.version.clone(),
                };
                vec![
                    p.pack_ref.clone(),
                    version,
                    p.action.clone(),
                    p.source.clone(),
                    p.reason.clone(),
                ]
            })
            .collect();
        println!(
            "{}",
            table(&["PACK", "VERSION", "ACTION", "SOURCE", "WHY"], &rows)
        );
    }
    for p in &r.installed {
        let c = p.components_registered.unwrap_or_default();
        let tests = p.test_result.as_ref().map_or_else(
            || "no tests".to_string(),
            |t| format!("tests {} {}/{}", t.status, t.passed, t.total_tests),
        );
        let components =
            c.actions + c.sensors + c.triggers + c.rules + c.workflows + c.policies + c.aliases;
        println!(
            "{} {} {}: {}, {tests}, stored at {}",
            p.action,
            p.pack_ref,
            p.version,
            count(components, "component", "components"),
            p.storage_path
        );
    }
    for e in &r.errors {
        println!("failed ({}): {}: {}", e.stage, e.pack, e.error);
    }
    println!("{}", install_summary(r));
}

fn install_summary(r: &pb::InstallResult) -> String {
    let s = r.summary.unwrap_or_default();
    if r.dry_run {
        format!(
            "dry run: {} planned, {} already installed; nothing was changed",
            count(s.planned, "pack", "packs"),
            s.kept
        )
    } else if r.success {
        format!(
            "installed {}, kept {} ({} ms)",
            count(s.installed, "pack", "packs"),
            s.kept,
            s.duration_ms
        )
    } else {
        format!("nothing was installed ({} ms)", s.duration_ms)
    }
}

pub fn print_remove(r: &pb::RemovePacksResult) {
    if !r.removed.is_empty() {
        let rows: Vec<Vec<String>> = r
            .removed
            .iter()
            .map(|p| {
                let why = if p.dependent {
                    "dependent (cascade)".to_string()
                } else if !p.left_dependents.is_empty() {
                    format!("forced; left: {}", p.left_dependents.join(", "))
                } else {
                    "requested".to_string()
                };
                vec![
                    p.r#ref.clone(),
                    p.version.clone(),
                    why,
                    p.environments.len().to_string(),
                    p.kept_versions.join(", "),
                    p.storage_path.clone(),
                ]
            })
            .collect();
        println!(
            "{}",
            table(
                &[
                    "PACK",
                    "VERSION",
                    "WHY",
                    "ENVS",
                    "KEPT VERSIONS",
                    "STORED AT"
                ],
                &rows
            )
        );
    }
    for e in &r.errors {
        println!("refused ({}): {}: {}", e.reason, e.r#ref, e.message);
    }
    println!();
    println!("{}", remove_summary(r));
}

fn remove_summary(r: &pb::RemovePacksResult) -> String {
    let packs = count(r.removed.len(), "pack", "packs");
    match (r.success, r.dry_run) {
        (true, true) => format!("dry run: {packs} would be removed"),
        (true, false) => format!("{packs} removed"),
        (false, _) => "nothing was removed".to_string(),
    }
}

/// One event of `attune-packs events`: a line of text, a JSON line, or a YAML document.
pub fn print_pack_event(e: &pb::PackEvent, format: crate::Format) -> anyhow::Result<()> {
    let payload = serde_json::from_str::<serde_json::Value>(&e.payload_json)
        .unwrap_or_else(|_| serde_json::Value::String(e.payload_json.clone()));
    let value = serde_json::json!({
        "cursor": e.cursor,
        "event_id": e.event_id,
        "event_type": e.event_type,
        "payload": payload,
        "created_at_ms": e.created_at_ms,
    });
    match format {
        crate::Format::Json => println!("{}", serde_json::to_string(&value)?),
        crate::Format::Yaml => print!("---\n{}", serde_yaml::to_string(&value)?),
        crate::Format::Table => {
            let at = std::time::UNIX_EPOCH
                + std::time::Duration::from_millis(u64::try_from(e.created_at_ms).unwrap_or(0));
            println!(
                "{:>8}  {}  {:<17} {}",
                e.cursor,
                humantime::format_rfc3339_millis(at),
                e.event_type,
                serde_json::to_string(&payload)?
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summaries_of_one_use_the_singular() {
        let deps = pb::DependenciesResult {
            analyzed_packs: vec![Default::default()],
            dependencies: vec![Default::default()],
            errors: vec![Default::default()],
            ..Default::default()
        };
        assert_eq!(
            dependencies_summary(&deps),
            "1 pack analysed, 1 dependency, 0 missing, 1 error: not ready"
        );
        let download = pb::DownloadResult {
            total_count: 1,
            success_count: 1,
            ..Default::default()
        };
        assert_eq!(
            download_summary(&download),
            "1 of 1 pack downloaded, 0 failed"
        );
        let register = pb::RegisterBatchSummary {
            total_packs: 1,
            success_count: 1,
            total_components: 1,
            duration_ms: 5,
            ..Default::default()
        };
        assert_eq!(
            register_summary(&register),
            "1 of 1 pack registered, 1 component, 5 ms"
        );
        let envs = pb::BuildEnvsSummary {
            total_packs: 1,
            success_count: 1,
            python_envs_built: 1,
            total_duration_ms: 7,
            ..Default::default()
        };
        assert_eq!(
            build_envs_summary(&envs),
            "1 of 1 pack ready (1 python, 0 nodejs environment), 7 ms"
        );
        let install = pb::InstallResult {
            success: true,
            summary: Some(pb::InstallSummary {
                installed: 1,
                duration_ms: 3,
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(install_summary(&install), "installed 1 pack, kept 0 (3 ms)");
        let remove = pb::RemovePacksResult {
            success: true,
            removed: vec![Default::default()],
            ..Default::default()
        };
        assert_eq!(remove_summary(&remove), "1 pack removed");
    }

    #[test]
    fn summaries_of_several_use_the_plural() {
        let deps = pb::DependenciesResult {
            analyzed_packs: vec![Default::default(); 2],
            ..Default::default()
        };
        assert_eq!(
            dependencies_summary(&deps),
            "2 packs analysed, 0 dependencies, 0 missing, 0 errors: ready to build and register"
        );
        let install = pb::InstallResult {
            dry_run: true,
            summary: Some(pb::InstallSummary {
                planned: 3,
                kept: 1,
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(
            install_summary(&install),
            "dry run: 3 packs planned, 1 already installed; nothing was changed"
        );
    }
}
