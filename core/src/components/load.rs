//! [`load`]: reading the component files of one pack.

use std::collections::{HashMap, HashSet};

use serde_json::{Map, Value};

use crate::packfs::{PackDir, PackFsError, ReadCap};

use super::fsutil::{self, EntryKind, PathProblem, YamlEntry};
use super::names::{attune_compatible, is_template, is_valid_name, qualify_reference};
use super::{
    CONCURRENCY_METHODS, Component, ComponentKind, ComponentReference, LoadedPack, OUTPUT_FORMATS,
    PARAMETER_DELIVERIES, PARAMETER_FORMATS, REFERENCE_VISIBILITIES, WORKFLOW_RUNNERS,
    is_builtin_runner, yaml,
};

type Doc = Map<String, Value>;

pub(super) fn load(pack_dir: &PackDir, pack: &str, cap: ReadCap) -> LoadedPack {
    let mut l = Loader {
        pack_dir,
        pack,
        cap,
        out: LoadedPack::default(),
        seen: HashMap::new(),
        workflow_files: HashMap::new(),
        refused: HashSet::new(),
    };
    l.dir(ComponentKind::PermissionSet);
    l.dir(ComponentKind::Runtime);
    l.dir(ComponentKind::Trigger);
    l.actions();
    l.dir(ComponentKind::Workflow);
    l.unreferenced_workflows();
    l.dir(ComponentKind::Queue);
    l.dir(ComponentKind::Policy);
    l.dir(ComponentKind::Rule);
    l.dir(ComponentKind::Alias);
    l.dir(ComponentKind::Sensor);
    let mut out = l.out;
    out.components.sort_by_key(|c| c.kind.order());
    super::schema::report(&mut out, pack_dir, cap);
    super::policy_types::report(&mut out);
    out
}

/// The workflow file an action points at: `("workflow_file", path)` for Attune, or
/// `("entry_point", path)` when the runner is a workflow runner.
pub(super) fn workflow_source(def: &Doc) -> Option<(&'static str, String)> {
    let non_empty = |key: &str| {
        def.get(key)
            .and_then(Value::as_str)
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
    };
    if let Some(path) = non_empty("workflow_file") {
        return Some(("workflow_file", path));
    }
    let runner = def
        .get("runner_type")
        .and_then(Value::as_str)
        .map(|r| r.trim().to_ascii_lowercase())?;
    if WORKFLOW_RUNNERS.contains(&runner.as_str()) {
        non_empty("entry_point").map(|p| ("entry_point", p))
    } else {
        None
    }
}

pub(super) fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a mapping",
    }
}

/// Where the name comes from when neither `ref` nor `name` is present.
enum Fallback {
    /// The file stem, with a warning.
    Stem(String),
    /// The name of the action linking this workflow file.
    Linked(String),
    /// None: a name is required (triggers declared in sensors).
    Required,
}

struct Loader<'a> {
    pack_dir: &'a PackDir,
    pack: &'a str,
    /// Largest component file read.
    cap: ReadCap,
    out: LoadedPack,
    /// (kind, ref) → file defining it.
    seen: HashMap<(ComponentKind, String), String>,
    /// Action-linked workflow files already processed (pack-relative path) → the ref of
    /// the Workflow component created for it, if any.
    workflow_files: HashMap<String, Option<String>>,
    /// Links already refused (relative to the pack root).
    refused: HashSet<String>,
}

impl Loader<'_> {
    // ----- files ---------------------------------------------------------------------

    fn listing(&mut self, dir_rel: &str) -> Vec<YamlEntry> {
        let listing = fsutil::list_yaml(self.pack_dir, dir_rel);
        for (link, message) in listing.links {
            self.refuse(&link, message);
        }
        for (file, message) in listing.errors {
            self.out.error(file, message);
        }
        for (file, message) in listing.warnings {
            self.out.warn(file, message);
        }
        let mut files = Vec::new();
        for e in listing.entries {
            match e.kind {
                EntryKind::File => files.push(e),
                EntryKind::Dir => self.out.warn(
                    &e.rel,
                    "is a directory; skipped (component directories are not read recursively)",
                ),
                EntryKind::Other(kind) => self.out.error(
                    &e.rel,
                    format!(
                        "is a {kind}; packs may contain only regular files and directories, so it is not read"
                    ),
                ),
            }
        }
        files
    }

    fn refuse(&mut self, link: &str, message: String) {
        if self.refused.insert(link.to_string()) {
            self.out.error(link, message);
        }
    }

    fn read_doc(&mut self, rel: &str) -> Option<Doc> {
        let text = match self.pack_dir.read_text(rel, self.cap) {
            Ok(t) => t,
            Err(e @ PackFsError::Link { .. }) => {
                if let Some(refusal) = fsutil::link_refusal(self.pack_dir, &e) {
                    self.refuse(&refusal.link, refusal.reason);
                }
                return None;
            }
            Err(e) => {
                self.out.error(rel, e.reason());
                return None;
            }
        };
        match yaml::parse(&text) {
            Ok(Value::Object(map)) => Some(map),
            Ok(Value::Null) => {
                self.out
                    .error(rel, "the file is empty; expected a mapping of keys");
                None
            }
            Ok(other) => {
                self.out.error(
                    rel,
                    format!(
                        "expected a mapping of keys at the top level, found {}",
                        type_name(&other)
                    ),
                );
                None
            }
            Err(problem) => {
                self.out.error(rel, problem.to_string());
                None
            }
        }
    }

    // ----- directories ---------------------------------------------------------------

    fn dir(&mut self, kind: ComponentKind) {
        for e in self.listing(kind.dir()) {
            if kind == ComponentKind::Workflow && self.workflow_files.contains_key(&e.rel) {
                continue; // already loaded through an action's workflow_file
            }
            let Some(doc) = self.read_doc(&e.rel) else {
                continue;
            };
            if let Some((c, extra)) = self.build(kind, &e.rel, doc, Fallback::Stem(stem(&e.name))) {
                self.add(c);
                for t in extra {
                    self.add(t);
                }
            }
        }
    }

    fn actions(&mut self) {
        let mut docs = Vec::new();
        for e in self.listing("actions") {
            if let Some(doc) = self.read_doc(&e.rel) {
                docs.push((e, doc));
            }
        }
        // actions/*.yaml files that an action uses as its workflow are workflows.
        let linked: HashSet<String> = docs
            .iter()
            .filter_map(|(_, d)| workflow_source(d))
            .filter_map(|(_, p)| fsutil::resolve_in_pack(self.pack_dir, "actions", &p).ok())
            .collect();
        for (e, doc) in docs {
            if linked.contains(&e.rel) {
                continue;
            }
            let source = workflow_source(&doc);
            let Some((mut action, _)) = self.build(
                ComponentKind::Action,
                &e.rel,
                doc,
                Fallback::Stem(stem(&e.name)),
            ) else {
                continue;
            };
            if let Some((key, path)) = source
                && let Some(wf) = self.linked_workflow(&action, &path)
            {
                action.references.push(ComponentReference {
                    kind: ComponentKind::Workflow,
                    r#ref: wf,
                    key: key.to_string(),
                });
            }
            self.add(action);
        }
    }

    /// Loads the workflow file `path` (relative to `actions/`) of `action`, once per file.
    /// Path problems other than symlinks are left to `validate`.
    fn linked_workflow(&mut self, action: &Component, path: &str) -> Option<String> {
        let rel = match fsutil::resolve_in_pack(self.pack_dir, "actions", path) {
            Ok(rel) => rel,
            Err(PathProblem::Symlink(refusal)) => {
                self.refuse(&refusal.link, refusal.reason);
                return None;
            }
            Err(_) => return None,
        };
        if let Some(done) = self.workflow_files.get(&rel) {
            return done.clone();
        }
        self.workflow_files.insert(rel.clone(), None);
        let doc = self.read_doc(&rel)?;
        let (mut wf, _) = self.build(
            ComponentKind::Workflow,
            &rel,
            doc,
            Fallback::Linked(action.name.clone()),
        )?;
        if wf.label.is_none() {
            wf.label.clone_from(&action.label);
        }
        if wf.description.is_none() {
            wf.description.clone_from(&action.description);
        }
        if let Some(def) = wf.definition.as_object_mut() {
            def.insert("action_ref".into(), Value::String(action.r#ref.clone()));
        }
        let r = wf.r#ref.clone();
        if self.add(wf) {
            self.workflow_files.insert(rel, Some(r.clone()));
            Some(r)
        } else {
            None
        }
    }

    fn unreferenced_workflows(&mut self) {
        for e in self.listing("actions/workflows") {
            if !self.workflow_files.contains_key(&e.rel) {
                self.out.warn(
                    &e.rel,
                    "not referenced by any action (workflow_file, or entry_point with an \
                     orquesta/action-chain runner); not loaded",
                );
            }
        }
    }

    /// Adds a component unless one of the same kind and ref exists. Returns whether it
    /// was added.
    fn add(&mut self, c: Component) -> bool {
        let key = (c.kind, c.r#ref.clone());
        if let Some(first) = self.seen.get(&key) {
            let declared_in_sensor = c.kind == ComponentKind::Trigger
                && (first.starts_with("sensors/") || c.file.starts_with("sensors/"));
            if !declared_in_sensor {
                let message = format!(
                    "duplicate {} ref '{}': already defined in {}",
                    c.kind.noun(),
                    c.r#ref,
                    first
                );
                self.out.error(&c.file, message);
            }
            return false;
        }
        self.seen.insert(key, c.file.clone());
        self.out.components.push(c);
        true
    }

    // ----- one component ---------------------------------------------------------------

    fn build(
        &mut self,
        kind: ComponentKind,
        file: &str,
        mut doc: Doc,
        fallback: Fallback,
    ) -> Option<(Component, Vec<Component>)> {
        let (r, name) = self.own_ref(kind, file, "", &doc, fallback)?;
        self.check_pack_key(file, "", &doc);
        self.check_bool(file, &doc, "enabled");
        let label = self.opt_string(file, &doc, "label");
        let description = self.opt_string(file, &doc, "description");
        let mut refs = Vec::new();
        let mut extra = Vec::new();
        match kind {
            ComponentKind::Action => self.action(file, &mut doc, &mut refs),
            ComponentKind::Sensor => self.sensor(file, &r, &mut doc, &mut refs, &mut extra),
            ComponentKind::Trigger => self.trigger(file, "", &mut doc),
            ComponentKind::Rule => self.rule(file, &mut doc, &mut refs),
            ComponentKind::Workflow => self.workflow(file, &doc, &mut refs),
            ComponentKind::Policy => self.policy(file, &mut doc, &mut refs),
            ComponentKind::Alias => self.alias(file, &mut doc, &mut refs),
            ComponentKind::Runtime => {}
            ComponentKind::PermissionSet => {
                if let Some(v) = present(&doc, "grants")
                    && !v.is_array()
                {
                    self.out.error(
                        file,
                        format!("grants: expected a list of grants, found {}", type_name(v)),
                    );
                }
            }
            ComponentKind::Queue => {
                if let Some(a) = self.opt_string(file, &doc, "dispatch_action") {
                    self.reference(
                        file,
                        &mut refs,
                        ComponentKind::Action,
                        "dispatch_action",
                        &a,
                    );
                }
                self.permission_sets(file, &doc, &mut refs);
            }
        }
        doc.insert("ref".into(), Value::String(r.clone()));
        let c = Component {
            kind,
            r#ref: r,
            name,
            label,
            description,
            file: file.to_string(),
            definition: Value::Object(doc),
            references: refs,
        };
        Some((c, extra))
    }

    /// The qualified ref and name of a component defined in `file` (`at` prefixes
    /// messages for entries inside the file, e.g. `trigger_types[0]: `).
    fn own_ref(
        &mut self,
        kind: ComponentKind,
        file: &str,
        at: &str,
        doc: &Doc,
        fallback: Fallback,
    ) -> Option<(String, String)> {
        let pack = self.pack;
        let name = match present(doc, "ref") {
            Some(Value::String(r)) => {
                let r = r.trim();
                match r.split_once('.') {
                    Some((p, n)) if p == pack => n.to_string(),
                    Some((p, _)) => {
                        self.out.error(
                            file,
                            format!(
                                "{at}ref '{r}' belongs to pack '{p}', not '{pack}': a pack may \
                                 only define its own components"
                            ),
                        );
                        return None;
                    }
                    None => r.to_string(),
                }
            }
            Some(v) => {
                let message = format!("{at}ref: expected a string, found {}", type_name(v));
                self.out.error(file, message);
                return None;
            }
            None => match present(doc, "name") {
                Some(Value::String(n)) if kind != ComponentKind::Runtime => n.trim().to_string(),
                Some(v) if kind != ComponentKind::Runtime => {
                    let message = format!("{at}name: expected a string, found {}", type_name(v));
                    self.out.error(file, message);
                    return None;
                }
                _ if kind == ComponentKind::Sensor
                    && let Some(Value::String(class)) = present(doc, "class_name") =>
                {
                    // StackStorm sensors are named after their Python class.
                    class.trim().to_string()
                }
                _ => match fallback {
                    Fallback::Stem(s) => {
                        self.out.warn(
                            file,
                            format!(
                                "no `ref` or `name`; using the file name: {} {pack}.{s}",
                                kind.noun()
                            ),
                        );
                        s
                    }
                    Fallback::Linked(n) => n,
                    Fallback::Required => {
                        self.out.error(
                            file,
                            format!("{at}a {} needs a `name` (or `ref`)", kind.noun()),
                        );
                        return None;
                    }
                },
            },
        };
        if !is_valid_name(&name) {
            self.out.error(
                file,
                format!(
                    "{at}invalid {} name '{name}': only ASCII letters, digits, '_', '-' and \
                     '.' are allowed, not starting or ending with a dot, at most {} characters",
                    kind.noun(),
                    super::MAX_NAME_LEN
                ),
            );
            return None;
        }
        if !attune_compatible(&name) {
            self.out.warn(
                file,
                format!(
                    "{at}{} name '{name}' contains uppercase letters or dots, which Attune's \
                     database does not accept in refs",
                    kind.noun()
                ),
            );
        }
        Some((format!("{pack}.{name}"), name))
    }

    /// StackStorm's `pack:` key must name this pack.
    fn check_pack_key(&mut self, file: &str, at: &str, doc: &Doc) {
        match present(doc, "pack") {
            None => {}
            Some(Value::String(p)) if p.trim() == self.pack => {}
            Some(Value::String(p)) => {
                let message = format!(
                    "{at}pack: '{p}' is not this pack ('{}'); a pack may only define its own \
                     components",
                    self.pack
                );
                self.out.error(file, message);
            }
            Some(v) => {
                let message = format!("{at}pack: expected a string, found {}", type_name(v));
                self.out.error(file, message);
            }
        }
    }

    // ----- kinds -----------------------------------------------------------------------

    fn action(&mut self, file: &str, doc: &mut Doc, refs: &mut Vec<ComponentReference>) {
        match present(doc, "runner_type") {
            None => {
                doc.insert("runner_type".into(), Value::String("shell".into()));
            }
            Some(Value::String(s)) if !s.trim().is_empty() => {
                let runner = s.trim().to_string();
                if !is_builtin_runner(&runner) {
                    // A runtime ref, e.g. `mypack.ruby` (a bare name means this pack);
                    // `validate` reports it as an unknown runner when nothing defines it.
                    self.reference(file, refs, ComponentKind::Runtime, "runner_type", &runner);
                }
            }
            Some(v) => {
                let message = format!(
                    "runner_type: expected a non-empty string, found {}",
                    describe(v)
                );
                self.out.error(file, message);
            }
        }
        self.opt_string(file, doc, "entry_point");
        self.opt_string(file, doc, "workflow_file");
        self.enum_key(
            file,
            doc,
            "parameter_delivery",
            PARAMETER_DELIVERIES,
            Some("stdin"),
        );
        self.enum_key(
            file,
            doc,
            "parameter_format",
            PARAMETER_FORMATS,
            Some("json"),
        );
        self.enum_key(file, doc, "output_format", OUTPUT_FORMATS, Some("text"));
        self.enum_key(
            file,
            doc,
            "reference_visibility",
            REFERENCE_VISIBILITIES,
            None,
        );
        alias(doc, "output_schema", "output");
        let timeout_key = if present(doc, "timeout_seconds").is_some() {
            "timeout_seconds"
        } else {
            "timeout"
        };
        if let Some(v) = present(doc, timeout_key).cloned() {
            if v.as_u64().is_some_and(|n| n > 0) {
                doc.insert("timeout_seconds".into(), v);
            } else {
                self.out.error(
                    file,
                    format!(
                        "{timeout_key}: expected a positive whole number of seconds, found {}",
                        describe(&v)
                    ),
                );
            }
        }
        for key in ["parameters", "output"] {
            self.check_mapping(file, "", doc, key);
        }
        for r in self.string_list(file, doc, "default_execution_permission_set_refs") {
            self.reference(
                file,
                refs,
                ComponentKind::PermissionSet,
                "default_execution_permission_set_refs",
                &r,
            );
        }
    }

    fn sensor(
        &mut self,
        file: &str,
        sensor_ref: &str,
        doc: &mut Doc,
        refs: &mut Vec<ComponentReference>,
        extra: &mut Vec<Component>,
    ) {
        let entry_point = self.opt_string(file, doc, "entry_point");
        let class_name = self.opt_string(file, doc, "class_name");
        match present(doc, "runner_type") {
            None => {
                let python = class_name.is_some()
                    || entry_point.as_deref().is_some_and(|e| e.ends_with(".py"));
                let runner = if python { "python" } else { "native" };
                doc.insert("runner_type".into(), Value::String(runner.into()));
            }
            Some(Value::String(s)) if !s.trim().is_empty() => {}
            Some(v) => {
                let message = format!(
                    "runner_type: expected a non-empty string, found {}",
                    describe(v)
                );
                self.out.error(file, message);
            }
        }
        self.check_mapping(file, "", doc, "parameters");
        if let Some(t) = self.opt_string(file, doc, "trigger_type") {
            self.reference(file, refs, ComponentKind::Trigger, "trigger_type", &t);
        }
        let types = match present(doc, "trigger_types") {
            None => return,
            Some(Value::Array(items)) => items.clone(),
            Some(v) => {
                let message = format!(
                    "trigger_types: expected a list of trigger refs or trigger type mappings, \
                     found {}",
                    type_name(v)
                );
                self.out.error(file, message);
                return;
            }
        };
        for (i, item) in types.into_iter().enumerate() {
            let at = format!("trigger_types[{i}]: ");
            match item {
                Value::String(s) => {
                    self.reference(file, refs, ComponentKind::Trigger, "trigger_types", &s);
                }
                Value::Object(mut obj) => {
                    let Some((r, name)) =
                        self.own_ref(ComponentKind::Trigger, file, &at, &obj, Fallback::Required)
                    else {
                        continue;
                    };
                    self.check_pack_key(file, &at, &obj);
                    let label = self.opt_string_at(file, &at, &obj, "label");
                    let description = self.opt_string_at(file, &at, &obj, "description");
                    self.trigger(file, &at, &mut obj);
                    obj.insert("ref".into(), Value::String(r.clone()));
                    obj.insert("sensor_ref".into(), Value::String(sensor_ref.to_string()));
                    refs.push(ComponentReference {
                        kind: ComponentKind::Trigger,
                        r#ref: r.clone(),
                        key: "trigger_types".into(),
                    });
                    extra.push(Component {
                        kind: ComponentKind::Trigger,
                        r#ref: r,
                        name,
                        label,
                        description,
                        file: file.to_string(),
                        definition: Value::Object(obj),
                        references: Vec::new(),
                    });
                }
                other => {
                    let message = format!(
                        "{at}expected a trigger ref or a trigger type mapping, found {}",
                        type_name(&other)
                    );
                    self.out.error(file, message);
                }
            }
        }
    }

    /// Trigger files and trigger types declared in sensors.
    fn trigger(&mut self, file: &str, at: &str, doc: &mut Doc) {
        alias(doc, "parameters_schema", "parameters");
        alias(doc, "payload_schema", "output");
        for key in ["parameters", "output"] {
            self.check_mapping(file, at, doc, key);
        }
    }

    fn rule(&mut self, file: &str, doc: &mut Doc, refs: &mut Vec<ComponentReference>) {
        if present(doc, "enabled").is_none() {
            doc.insert("enabled".into(), Value::Bool(true));
        }
        self.rule_target(file, doc, refs, ComponentKind::Trigger, "type");
        self.rule_target(file, doc, refs, ComponentKind::Action, "ref");
        self.permission_sets(file, doc, refs);
    }

    /// A rule's trigger or action: Attune `<kind>_ref` + `<kind>_params`, or StackStorm
    /// `<kind>: {<field>, parameters}`. Normalises both into the Attune keys.
    fn rule_target(
        &mut self,
        file: &str,
        doc: &mut Doc,
        refs: &mut Vec<ComponentReference>,
        kind: ComponentKind,
        field: &str,
    ) {
        let noun = kind.as_str();
        let flat_key = format!("{noun}_ref");
        let params_key = format!("{noun}_params");
        let flat = self.opt_string(file, doc, &flat_key);
        let (nested, params) = match present(doc, noun) {
            None => (None, None),
            Some(Value::String(s)) => (Some((noun.to_string(), s.clone())), None),
            Some(Value::Object(m)) => {
                let key = format!("{noun}.{field}");
                let r = match present(m, field) {
                    None => None,
                    Some(Value::String(s)) => Some((key, s.clone())),
                    Some(v) => {
                        let message = format!("{key}: expected a string, found {}", type_name(v));
                        self.out.error(file, message);
                        None
                    }
                };
                (r, present(m, "parameters").cloned())
            }
            Some(v) => {
                let message = format!(
                    "{noun}: expected a mapping with `{field}`, found {}",
                    type_name(v)
                );
                self.out.error(file, message);
                (None, None)
            }
        };
        let chosen = match (flat, nested) {
            (Some(a), Some((key, b))) => {
                let same = matches!(
                    (qualify_reference(self.pack, &a), qualify_reference(self.pack, &b)),
                    (Ok(x), Ok(y)) if x == y
                );
                if !same {
                    self.out.error(
                        file,
                        format!("{flat_key} '{a}' and {key} '{b}' disagree; give only one"),
                    );
                }
                Some((flat_key.clone(), a))
            }
            (Some(a), None) => Some((flat_key.clone(), a)),
            (None, Some(kb)) => Some(kb),
            (None, None) => None,
        };
        if let Some((key, raw)) = chosen {
            let value = self.reference(file, refs, kind, &key, &raw).unwrap_or(raw);
            doc.insert(flat_key, Value::String(value));
        }
        if let Some(p) = params
            && present(doc, &params_key).is_none()
        {
            doc.insert(params_key, p);
        }
    }

    /// A StackStorm action alias. Absent `action_ref`/`formats` are `validate`'s to report.
    fn alias(&mut self, file: &str, doc: &mut Doc, refs: &mut Vec<ComponentReference>) {
        if present(doc, "enabled").is_none() {
            doc.insert("enabled".into(), Value::Bool(true));
        }
        if let Some(raw) = self.opt_string(file, doc, "action_ref") {
            let value = self
                .reference(file, refs, ComponentKind::Action, "action_ref", &raw)
                .unwrap_or(raw);
            doc.insert("action_ref".into(), Value::String(value));
        }
        for key in ["ack", "result", "immutable_parameters"] {
            self.check_mapping(file, "", doc, key);
        }
        let formats = match present(doc, "formats") {
            None => return,
            Some(Value::Array(items)) => items.clone(),
            Some(v) => {
                let message = format!(
                    "formats: expected a list of phrases (strings or {{display, \
                     representation}} mappings), found {}",
                    type_name(v)
                );
                self.out.error(file, message);
                return;
            }
        };
        for (i, item) in formats.iter().enumerate() {
            match item {
                Value::String(s) if !s.trim().is_empty() => {}
                Value::Object(m) => self.alias_format(file, i, m),
                other => self.out.error(
                    file,
                    format!(
                        "formats[{i}]: expected a non-empty string or a {{display, \
                         representation}} mapping, found {}",
                        describe(other)
                    ),
                ),
            }
        }
    }

    /// `{display: <string>, representation: [<string>, ...]}`; at least one of the two.
    fn alias_format(&mut self, file: &str, i: usize, m: &Doc) {
        if let Some(key) = m
            .keys()
            .find(|k| !["display", "representation"].contains(&k.as_str()))
        {
            let message =
                format!("formats[{i}]: unknown key '{key}' (allowed: display, representation)");
            self.out.error(file, message);
        }
        match present(m, "display") {
            None | Some(Value::String(_)) => {}
            Some(v) => {
                let message = format!(
                    "formats[{i}].display: expected a string, found {}",
                    type_name(v)
                );
                self.out.error(file, message);
            }
        }
        match present(m, "representation") {
            None if present(m, "display").is_some() => {}
            None => self.out.error(
                file,
                format!("formats[{i}]: needs `representation` (a list of phrases) or `display`"),
            ),
            Some(Value::Array(items)) if !items.is_empty() => {
                for (j, r) in items.iter().enumerate() {
                    if r.as_str().is_none_or(|s| s.trim().is_empty()) {
                        let message = format!(
                            "formats[{i}].representation[{j}]: expected a non-empty string, \
                             found {}",
                            describe(r)
                        );
                        self.out.error(file, message);
                    }
                }
            }
            Some(v) => {
                let message = format!(
                    "formats[{i}].representation: expected a non-empty list of strings, found {}",
                    describe(v)
                );
                self.out.error(file, message);
            }
        }
    }

    fn policy(&mut self, file: &str, doc: &mut Doc, refs: &mut Vec<ComponentReference>) {
        self.opt_string(file, doc, "policy_type");
        let action_ref = self.opt_string(file, doc, "action_ref");
        let resource_ref = self.opt_string(file, doc, "resource_ref");
        let chosen = match (action_ref, resource_ref) {
            (Some(a), Some(b)) => {
                if qualify_reference(self.pack, &a) != qualify_reference(self.pack, &b) {
                    self.out.error(
                        file,
                        format!("action_ref '{a}' and resource_ref '{b}' disagree; give only one"),
                    );
                }
                Some(("action_ref", a))
            }
            (Some(a), None) => Some(("action_ref", a)),
            (None, Some(b)) => Some(("resource_ref", b)),
            (None, None) => None,
        };
        if let Some((key, raw)) = chosen {
            let value = self
                .reference(file, refs, ComponentKind::Action, key, &raw)
                .unwrap_or(raw);
            doc.insert("action_ref".into(), Value::String(value));
        }
        if let Some(p) = self.opt_string(file, doc, "pack_ref")
            && p != self.pack
        {
            let message = format!(
                "pack_ref: '{p}' is not this pack ('{}'); a pack may only define its own policies",
                self.pack
            );
            self.out.error(file, message);
        }
        self.check_mapping(file, "", doc, "parameters");
        match present(doc, "concurrency") {
            None => {}
            Some(Value::Object(c)) => {
                match present(c, "limit") {
                    None => self.out.error(
                        file,
                        "concurrency.limit is required (a positive whole number)",
                    ),
                    Some(v) if v.as_u64().is_some_and(|n| n > 0) => {}
                    Some(v) => self.out.error(
                        file,
                        format!(
                            "concurrency.limit: expected a positive whole number, found {}",
                            describe(v)
                        ),
                    ),
                }
                match present(c, "method") {
                    None => self.out.error(
                        file,
                        format!(
                            "concurrency.method is required (allowed: {})",
                            CONCURRENCY_METHODS.join(", ")
                        ),
                    ),
                    Some(Value::String(m))
                        if CONCURRENCY_METHODS
                            .contains(&m.trim().to_ascii_lowercase().as_str()) => {}
                    Some(v) => self.out.error(
                        file,
                        format!(
                            "concurrency.method: {} is not allowed (allowed: {})",
                            describe(v),
                            CONCURRENCY_METHODS.join(", ")
                        ),
                    ),
                }
            }
            Some(v) => {
                let message = format!("concurrency: expected a mapping, found {}", type_name(v));
                self.out.error(file, message);
            }
        }
        match present(doc, "rate_limit") {
            None => {}
            Some(Value::Object(r)) => {
                for key in ["max_executions", "window_seconds"] {
                    match present(r, key) {
                        Some(v) if v.as_u64().is_some_and(|n| n > 0) => {}
                        Some(v) => self.out.error(
                            file,
                            format!(
                                "rate_limit.{key}: expected a positive whole number, found {}",
                                describe(v)
                            ),
                        ),
                        None => self.out.error(
                            file,
                            format!("rate_limit.{key} is required (a positive whole number)"),
                        ),
                    }
                }
            }
            Some(v) => {
                let message = format!("rate_limit: expected a mapping, found {}", type_name(v));
                self.out.error(file, message);
            }
        }
        match present(doc, "quotas") {
            None => {}
            Some(Value::Array(quotas)) => {
                for (i, q) in quotas.iter().enumerate() {
                    let ok = q.get("quota_type").is_some_and(Value::is_string)
                        && q.get("limit").is_some_and(|l| l.as_u64().is_some());
                    if !ok {
                        self.out.error(
                            file,
                            format!(
                                "quotas[{i}]: expected {{quota_type: <string>, limit: <whole \
                                 number>}}"
                            ),
                        );
                    }
                }
            }
            Some(v) => {
                let message = format!("quotas: expected a list, found {}", type_name(v));
                self.out.error(file, message);
            }
        }
    }

    fn workflow(&mut self, file: &str, doc: &Doc, refs: &mut Vec<ComponentReference>) {
        match present(doc, "tasks") {
            Some(Value::Array(tasks)) => self.task_list(file, tasks, "tasks", refs),
            Some(Value::Object(tasks)) => {
                // Orquesta: tasks is a mapping name → task.
                for (name, task) in tasks {
                    if let Some(a) = task.get("action").and_then(Value::as_str) {
                        self.task_action(file, a, &format!("tasks.{name}.action"), refs);
                    }
                }
            }
            _ => {}
        }
        if let Some(Value::Array(chain)) = present(doc, "chain") {
            // Action-chain: chain is a list of {name, ref, params, on-success, …}.
            for (i, link) in chain.iter().enumerate() {
                if let Some(a) = link.get("ref").and_then(Value::as_str) {
                    let id = link
                        .get("name")
                        .and_then(Value::as_str)
                        .map_or_else(|| i.to_string(), str::to_string);
                    self.task_action(file, a, &format!("chain.{id}.ref"), refs);
                }
            }
        }
    }

    /// Attune task lists (nested `tasks` for parallel tasks).
    fn task_list(
        &mut self,
        file: &str,
        tasks: &[Value],
        prefix: &str,
        refs: &mut Vec<ComponentReference>,
    ) {
        for (i, task) in tasks.iter().enumerate() {
            let id = task
                .get("name")
                .and_then(Value::as_str)
                .map_or_else(|| i.to_string(), str::to_string);
            if let Some(a) = task.get("action").and_then(Value::as_str) {
                self.task_action(file, a, &format!("{prefix}.{id}.action"), refs);
            }
            if let Some(Value::Array(sub)) = task.get("tasks") {
                self.task_list(file, sub, &format!("{prefix}.{id}.tasks"), refs);
            }
        }
    }

    /// A task's action; Orquesta allows inline parameters (`core.echo message="hi"`), so
    /// only the first word is the ref. Templates cannot be resolved and are skipped.
    fn task_action(
        &mut self,
        file: &str,
        raw: &str,
        key: &str,
        refs: &mut Vec<ComponentReference>,
    ) {
        let raw = raw.trim();
        if raw.starts_with("{{") || raw.starts_with("{%") || raw.starts_with("<%") {
            return;
        }
        if let Some(first) = raw.split_whitespace().next()
            && !is_template(first)
        {
            self.reference(file, refs, ComponentKind::Action, key, first);
        }
    }

    fn permission_sets(&mut self, file: &str, doc: &Doc, refs: &mut Vec<ComponentReference>) {
        for key in ["permission_set_refs", "permission_set_ref"] {
            for r in self.string_list(file, doc, key) {
                self.reference(file, refs, ComponentKind::PermissionSet, key, &r);
            }
        }
    }

    // ----- value helpers ---------------------------------------------------------------

    /// Qualifies and records a reference; reports an invalid one. Returns the qualified ref.
    fn reference(
        &mut self,
        file: &str,
        refs: &mut Vec<ComponentReference>,
        kind: ComponentKind,
        key: &str,
        raw: &str,
    ) -> Option<String> {
        match qualify_reference(self.pack, raw) {
            Ok(r) => {
                refs.push(ComponentReference {
                    kind,
                    r#ref: r.clone(),
                    key: key.to_string(),
                });
                Some(r)
            }
            Err(problem) => {
                self.out
                    .error(file, format!("{key}: {} reference {problem}", kind.noun()));
                None
            }
        }
    }

    fn opt_string(&mut self, file: &str, doc: &Doc, key: &str) -> Option<String> {
        self.opt_string_at(file, "", doc, key)
    }

    fn opt_string_at(&mut self, file: &str, at: &str, doc: &Doc, key: &str) -> Option<String> {
        match present(doc, key)? {
            Value::String(s) => Some(s.clone()),
            v => {
                let message = format!("{at}{key}: expected a string, found {}", type_name(v));
                self.out.error(file, message);
                None
            }
        }
    }

    /// A string or a list of strings; empty strings are errors.
    fn string_list(&mut self, file: &str, doc: &Doc, key: &str) -> Vec<String> {
        let items = match present(doc, key) {
            None => return Vec::new(),
            Some(Value::String(s)) => vec![Value::String(s.clone())],
            Some(Value::Array(a)) => a.clone(),
            Some(v) => {
                let message = format!(
                    "{key}: expected a string or a list of strings, found {}",
                    type_name(v)
                );
                self.out.error(file, message);
                return Vec::new();
            }
        };
        let mut out = Vec::new();
        for (i, item) in items.iter().enumerate() {
            match item.as_str().map(str::trim) {
                Some(s) if !s.is_empty() => out.push(s.to_string()),
                _ => self.out.error(
                    file,
                    format!(
                        "{key}[{i}]: expected a non-empty string, found {}",
                        describe(item)
                    ),
                ),
            }
        }
        out
    }

    fn check_bool(&mut self, file: &str, doc: &Doc, key: &str) {
        if let Some(v) = present(doc, key)
            && !v.is_boolean()
        {
            let message = format!("{key}: expected true or false, found {}", describe(v));
            self.out.error(file, message);
        }
    }

    fn check_mapping(&mut self, file: &str, at: &str, doc: &Doc, key: &str) {
        if let Some(v) = present(doc, key)
            && !v.is_object()
        {
            let message = format!("{at}{key}: expected a mapping, found {}", type_name(v));
            self.out.error(file, message);
        }
    }

    /// An enumerated string: lowercased into the definition, default inserted when absent,
    /// error listing the allowed values otherwise.
    fn enum_key(
        &mut self,
        file: &str,
        doc: &mut Doc,
        key: &str,
        allowed: &[&str],
        default: Option<&str>,
    ) {
        match present(doc, key) {
            None => {
                if let Some(d) = default {
                    doc.insert(key.into(), Value::String(d.into()));
                }
            }
            Some(Value::String(s)) if allowed.contains(&s.trim().to_ascii_lowercase().as_str()) => {
                let v = s.trim().to_ascii_lowercase();
                doc.insert(key.into(), Value::String(v));
            }
            Some(v) => {
                let mut message = format!(
                    "{key}: {} is not allowed (allowed: {})",
                    describe(v),
                    allowed.join(", ")
                );
                if key == "parameter_delivery" && v.as_str().map(str::trim) == Some("env") {
                    message.push_str(
                        "; Attune's documentation mentions 'env', but its database rejects it",
                    );
                }
                self.out.error(file, message);
            }
        }
    }
}

/// The value of `key` unless absent or `null`.
fn present<'d>(doc: &'d Doc, key: &str) -> Option<&'d Value> {
    doc.get(key).filter(|v| !v.is_null())
}

/// Copies `from` into `to` when only `from` is present (documented vs. loader spellings).
fn alias(doc: &mut Doc, from: &str, to: &str) {
    if present(doc, to).is_none()
        && let Some(v) = present(doc, from).cloned()
    {
        doc.insert(to.into(), v);
    }
}

/// A value for messages: strings quoted, scalars as written, containers by type.
fn describe(v: &Value) -> String {
    match v {
        Value::String(s) => format!("'{s}'"),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        other => type_name(other).to_string(),
    }
}

fn stem(file_name: &str) -> String {
    file_name
        .strip_suffix(".yaml")
        .or_else(|| file_name.strip_suffix(".yml"))
        .unwrap_or(file_name)
        .to_string()
}
