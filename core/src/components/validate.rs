//! [`validate`]: required keys, entry-point files and references.

use std::collections::{HashMap, HashSet};

use serde_json::{Map, Value};

use crate::packfs::PackDir;

use super::fsutil::{self, PathProblem};
use super::load::workflow_source;
use super::{
    Component, ComponentKind, ComponentProblem, ComponentReference, LoadedPack, NO_FILE_RUNNERS,
    SCRIPT_RUNNERS, ST2_BUILTIN_CORE_ACTIONS, Strictness, WORKFLOW_RUNNERS,
};

type Doc = Map<String, Value>;

/// Sensor runners whose `entry_point` is a file of the pack (relative to `sensors/`).
const INTERPRETED_SENSOR_RUNNERS: &[&str] = &[
    "python", "python3", "node", "nodejs", "node.js", "shell", "bash", "sh",
];

pub(super) fn validate(
    loaded: &mut LoadedPack,
    pack_dir: &PackDir,
    pack: &str,
    pack_exists: &dyn Fn(&str) -> bool,
    component_exists: &dyn Fn(ComponentKind, &str) -> bool,
) {
    let own: HashSet<(ComponentKind, String)> = loaded
        .components
        .iter()
        .map(|c| (c.kind, c.r#ref.clone()))
        .collect();
    let components = std::mem::take(&mut loaded.components);
    let empty = Doc::new();
    for c in &components {
        let def = c.definition.as_object().unwrap_or(&empty);
        match c.kind {
            ComponentKind::Action => action(loaded, pack_dir, c, def),
            ComponentKind::Sensor => sensor(loaded, pack_dir, c, def),
            ComponentKind::Rule => rule(loaded, c, def),
            ComponentKind::Policy => policy(loaded, pack, c, def),
            ComponentKind::Workflow => workflow(loaded, c, def),
            ComponentKind::Alias => alias(loaded, c, def),
            _ => {}
        }
        for r in &c.references {
            reference(loaded, pack, &own, c, r, pack_exists, component_exists);
        }
    }
    loaded.components = components;
}

fn non_empty_str<'d>(def: &'d Doc, key: &str) -> Option<&'d str> {
    def.get(key)
        .and_then(Value::as_str)
        .map(str::trim)
        .filter(|s| !s.is_empty())
}

fn action(loaded: &mut LoadedPack, pack_dir: &PackDir, c: &Component, def: &Doc) {
    let runner = non_empty_str(def, "runner_type")
        .unwrap_or("shell")
        .to_ascii_lowercase();
    if let Some((key, path)) = workflow_source(def) {
        match fsutil::resolve_in_pack(pack_dir, "actions", &path) {
            // Symlinks were refused (and reported) by `load`.
            Ok(_) | Err(PathProblem::Symlink(_)) => {}
            Err(p) => loaded.error(&c.file, p.message(key, &path)),
        }
        return;
    }
    if WORKFLOW_RUNNERS.contains(&runner.as_str()) {
        loaded.error(
            &c.file,
            format!(
                "runner_type '{runner}' needs entry_point naming the workflow file (relative \
                 to actions/)"
            ),
        );
        return;
    }
    if NO_FILE_RUNNERS.contains(&runner.as_str()) {
        return;
    }
    match non_empty_str(def, "entry_point") {
        Some(ep) => {
            if let Err(p) = fsutil::resolve_in_pack(pack_dir, "actions", ep) {
                loaded.error(&c.file, p.message("entry_point", ep));
            }
        }
        None if SCRIPT_RUNNERS.contains(&runner.as_str()) => loaded.error(
            &c.file,
            format!(
                "entry_point is required for runner_type '{runner}' (the script, relative to \
                 actions/)"
            ),
        ),
        None => {}
    }
}

fn sensor(loaded: &mut LoadedPack, pack_dir: &PackDir, c: &Component, def: &Doc) {
    let Some(ep) = non_empty_str(def, "entry_point") else {
        loaded.error(&c.file, "sensor needs an entry_point");
        return;
    };
    let runner = non_empty_str(def, "runner_type")
        .unwrap_or("native")
        .to_ascii_lowercase();
    if INTERPRETED_SENSOR_RUNNERS.contains(&runner.as_str())
        && let Err(p) = fsutil::resolve_in_pack(pack_dir, "sensors", ep)
    {
        loaded.error(&c.file, p.message("entry_point", ep));
    }
}

fn rule(loaded: &mut LoadedPack, c: &Component, def: &Doc) {
    if non_empty_str(def, "trigger_ref").is_none() {
        loaded.error(
            &c.file,
            "rule needs a trigger (`trigger_ref`, or StackStorm `trigger: {type: ...}`)",
        );
    }
    if non_empty_str(def, "action_ref").is_none() {
        loaded.error(
            &c.file,
            "rule needs an action (`action_ref`, or StackStorm `action: {ref: ...}`)",
        );
    }
}

fn policy(loaded: &mut LoadedPack, pack: &str, c: &Component, def: &Doc) {
    let has_action = non_empty_str(def, "action_ref").is_some();
    if def.get("policy_type").is_some_and(|v| !v.is_null()) {
        if !has_action {
            loaded.error(
                &c.file,
                "StackStorm policy needs resource_ref (the action it applies to)",
            );
        }
        return;
    }
    if !has_action && non_empty_str(def, "pack_ref").is_none() {
        loaded.error(
            &c.file,
            format!(
                "policy has neither action_ref nor pack_ref, so it would be a global policy \
                 that is never removed with the pack; add `action_ref` or `pack_ref: {pack}`"
            ),
        );
    }
    let has = |key: &str| match def.get(key) {
        None | Some(Value::Null) => false,
        Some(Value::Array(a)) => !a.is_empty(),
        Some(_) => true,
    };
    if !has("concurrency") && !has("rate_limit") && !has("quotas") {
        loaded.error(
            &c.file,
            "policy needs at least one of concurrency, rate_limit or quotas (or `policy_type` \
             for a StackStorm policy)",
        );
    }
}

fn workflow(loaded: &mut LoadedPack, c: &Component, def: &Doc) {
    let tasks = match def.get("tasks") {
        Some(Value::Array(a)) => !a.is_empty(),
        Some(Value::Object(m)) => !m.is_empty(),
        _ => false,
    };
    let chain = matches!(def.get("chain"), Some(Value::Array(a)) if !a.is_empty());
    if !tasks && !chain {
        loaded.error(
            &c.file,
            "workflow has no tasks (expected a non-empty `tasks` list or mapping, or an \
             action-chain `chain` list)",
        );
    } else if tasks && def.get("version").is_none_or(Value::is_null) {
        loaded.error(&c.file, "workflow needs a `version`");
    }
}

fn alias(loaded: &mut LoadedPack, c: &Component, def: &Doc) {
    if non_empty_str(def, "action_ref").is_none() {
        loaded.error(
            &c.file,
            "action alias needs `action_ref` (the action its phrases run)",
        );
    }
    // Malformed values were reported by `load`; here only absence.
    let absent = match def.get("formats") {
        None | Some(Value::Null) => true,
        Some(Value::Array(a)) => a.is_empty(),
        Some(_) => false,
    };
    if absent {
        loaded.error(
            &c.file,
            "action alias needs `formats`: a non-empty list of phrases (strings, or \
             `{display: ..., representation: [...]}` mappings)",
        );
    }
}

/// A StackStorm built-in of pack `core`: never an error when missing.
fn is_st2_builtin(r: &ComponentReference) -> bool {
    match r.r#ref.split_once('.') {
        Some(("core", name)) => match r.kind {
            ComponentKind::Trigger => name.starts_with("st2."),
            ComponentKind::Action => ST2_BUILTIN_CORE_ACTIONS.contains(&name),
            _ => false,
        },
        _ => false,
    }
}

fn reference(
    loaded: &mut LoadedPack,
    pack: &str,
    own: &HashSet<(ComponentKind, String)>,
    c: &Component,
    r: &ComponentReference,
    pack_exists: &dyn Fn(&str) -> bool,
    component_exists: &dyn Fn(ComponentKind, &str) -> bool,
) {
    let target_pack = r.pack();
    let (user, target) = (c.kind.noun(), r.kind.noun());
    let builtin = is_st2_builtin(r);
    if target_pack == pack {
        if own.contains(&(r.kind, r.r#ref.clone())) {
            return;
        }
        if builtin {
            let message = format!(
                "{}: {target} '{}' is not defined in this pack",
                r.key, r.r#ref
            );
            loaded.warn(&c.file, message);
        } else if is_runner(r) {
            let message = unknown_runner(c, "this pack");
            loaded.problem(c, message);
        } else {
            let message = format!(
                "{}: {target} '{}' is not defined in this pack",
                r.key, r.r#ref
            );
            loaded.problem(c, message);
        }
    } else if !pack_exists(target_pack) {
        loaded.warn(
            &c.file,
            format!(
                "{user} {} uses {target} {} ({}) from pack '{target_pack}', which is neither in \
                 this batch nor installed",
                c.r#ref, r.r#ref, r.key
            ),
        );
    } else if !component_exists(r.kind, &r.r#ref) {
        if builtin {
            loaded.warn(
                &c.file,
                format!(
                    "{user} {} uses the StackStorm built-in {target} {} ({}), which pack \
                     '{target_pack}' does not provide",
                    c.r#ref, r.r#ref, r.key
                ),
            );
        } else if is_runner(r) {
            let message = unknown_runner(c, &format!("pack '{target_pack}'"));
            loaded.problem(c, message);
        } else {
            let message = format!(
                "{}: pack '{target_pack}' has no {target} '{}'",
                r.key, r.r#ref
            );
            loaded.problem(c, message);
        }
    }
}

/// An action's `runner_type` that is not a built-in runner, recorded by `load` as a
/// runtime reference.
fn is_runner(r: &ComponentReference) -> bool {
    r.kind == ComponentKind::Runtime && r.key == "runner_type"
}

fn unknown_runner(c: &Component, looked_in: &str) -> String {
    let runner = c
        .definition
        .get("runner_type")
        .and_then(Value::as_str)
        .unwrap_or_default();
    format!(
        "runner_type: unknown runner '{runner}': neither a runner of Attune or StackStorm nor \
         a runtime of {looked_in}"
    )
}

/// Applies `strictness` to the component problems `validate` found: pack errors, or
/// warnings with the components dropped — together with every component of the pack
/// that refers to a dropped one, until nothing left refers to a dropped component.
pub(super) fn settle(loaded: &mut LoadedPack, pack: &str, strictness: Strictness) {
    if strictness == Strictness::Strict {
        for p in &loaded.problems {
            loaded.errors.push(super::Issue {
                file: p.file.clone(),
                message: p.message.clone(),
            });
        }
        return;
    }
    // (kind, ref) of each dropped component → its file, for the messages.
    let mut dropped: HashMap<(ComponentKind, String), String> = loaded
        .problems
        .iter()
        .map(|p| ((p.kind, p.r#ref.clone()), p.file.clone()))
        .collect();
    loop {
        let mut stranded = Vec::new();
        for c in &loaded.components {
            if dropped.contains_key(&(c.kind, c.r#ref.clone())) {
                continue;
            }
            let via_reference = c.references.iter().find_map(|r| {
                if r.pack() != pack {
                    return None;
                }
                let file = dropped.get(&(r.kind, r.r#ref.clone()))?;
                Some(format!(
                    "{}: {} '{}' is not registered (see {file})",
                    r.key,
                    r.kind.noun(),
                    r.r#ref
                ))
            });
            // A trigger type declared in a sensor file belongs to that sensor.
            let via_sensor = || {
                let sensor = c.definition.get("sensor_ref").and_then(Value::as_str)?;
                dropped
                    .contains_key(&(ComponentKind::Sensor, sensor.to_string()))
                    .then(|| format!("declared by sensor {sensor}, which is not registered"))
            };
            let reason = via_reference.or_else(|| {
                if c.kind == ComponentKind::Trigger {
                    via_sensor()
                } else {
                    None
                }
            });
            if let Some(message) = reason {
                stranded.push(ComponentProblem {
                    kind: c.kind,
                    r#ref: c.r#ref.clone(),
                    file: c.file.clone(),
                    message,
                });
            }
        }
        if stranded.is_empty() {
            break;
        }
        for p in stranded {
            dropped.insert((p.kind, p.r#ref.clone()), p.file.clone());
            loaded.problems.push(p);
        }
    }
    loaded
        .components
        .retain(|c| !dropped.contains_key(&(c.kind, c.r#ref.clone())));
    let warnings: Vec<super::Issue> = loaded
        .problems
        .iter()
        .map(|p| super::Issue {
            file: p.file.clone(),
            message: format!(
                "{}; {} {} is not registered",
                p.message,
                p.kind.noun(),
                p.r#ref
            ),
        })
        .collect();
    loaded.warnings.extend(warnings);
}
