//! How results and progress look on a terminal.

use attune_packs_client::pb;
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
    let verdict = if r.missing_dependencies.is_empty() && r.errors.is_empty() {
        "ready to build and register"
    } else {
        "not ready"
    };
    println!(
        "{} packs analysed, {} dependencies, {} missing, {} errors: {verdict}",
        r.analyzed_packs.len(),
        r.dependencies.len(),
        r.missing_dependencies.len(),
        r.errors.len(),
    );
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
    println!(
        "{} of {} packs downloaded, {} failed",
        r.success_count, r.total_count, r.failure_count
    );
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
        println!(
            "{} of {} packs registered, {} components, {} ms",
            s.success_count, s.total_packs, s.total_components, s.duration_ms
        );
    }
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
        println!(
            "{} of {} packs ready ({} python, {} nodejs environments), {} ms",
            s.success_count,
            s.total_packs,
            s.python_envs_built,
            s.nodejs_envs_built,
            s.total_duration_ms
        );
    }
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
    println!("{} packs", r.packs.len());
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
        println!(
            "{} {} {}: {} components, {tests}, stored at {}",
            p.action,
            p.pack_ref,
            p.version,
            c.actions + c.sensors + c.triggers + c.rules + c.workflows + c.policies + c.aliases,
            p.storage_path
        );
    }
    for e in &r.errors {
        println!("failed ({}): {}: {}", e.stage, e.pack, e.error);
    }
    let s = r.summary.unwrap_or_default();
    if r.dry_run {
        println!(
            "dry run: {} pack(s) planned, {} already installed; nothing was changed",
            s.planned, s.kept
        );
    } else if r.success {
        println!(
            "installed {} pack(s), kept {} ({} ms)",
            s.installed, s.kept, s.duration_ms
        );
    } else {
        println!("nothing was installed ({} ms)", s.duration_ms);
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
    match (r.success, r.dry_run) {
        (true, true) => println!("dry run: {} pack(s) would be removed", r.removed.len()),
        (true, false) => println!("{} pack(s) removed", r.removed.len()),
        (false, _) => println!("nothing was removed"),
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
