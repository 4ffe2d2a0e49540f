//! [`validate`]: required keys, entry-point files and references.

use std::collections::HashSet;

use serde_json::{Map, Value};

use crate::packfs::PackDir;

use super::fsutil::{self, PathProblem};
use super::load::workflow_source;
use super::{
    Component, ComponentKind, ComponentReference, LoadedPack, NO_FILE_RUNNERS, SCRIPT_RUNNERS,
    ST2_BUILTIN_CORE_ACTIONS, WORKFLOW_RUNNERS,
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
        let message = format!(
            "{}: {target} '{}' is not defined in this pack",
            r.key, r.r#ref
        );
        if builtin {
            loaded.warn(&c.file, message);
        } else {
            loaded.error(&c.file, message);
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
        } else {
            loaded.error(
                &c.file,
                format!(
                    "{}: pack '{target_pack}' has no {target} '{}'",
                    r.key, r.r#ref
                ),
            );
        }
    }
}
