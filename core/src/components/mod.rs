//! Pack components: reading `actions/`, `sensors/`, `triggers/`, `rules/`, `workflows/`,
//! `policies/`, `aliases/`, `runtimes/`, `permission_sets/` and `queues/` of a pack, in
//! both the Attune and the StackStorm Exchange formats, and checking what they refer to.
//!
//! [`load`] reads every component file and reports every problem it finds as an
//! [`Issue`] naming the file (relative to the pack root). Unlike Attune, nothing is
//! silently skipped and one broken file never hides the others
//! (Attune aborted the whole load on some YAML errors and skipped files on others).
//! [`validate`] then checks required keys, entry-point files and references, within the
//! pack and into other packs.
//!
//! # Pack errors and component problems
//!
//! Problems come in two levels, as in StackStorm:
//!
//! * **Pack errors** ([`LoadedPack::errors`]) fail the pack whatever the mode: a file that
//!   cannot be read or is not YAML, a component that breaks the format (a missing
//!   required key, a wrong type, a value outside an enumeration, a ref naming another
//!   pack, a missing entry-point file, malformed alias `formats`, …).
//! * **Component problems** ([`LoadedPack::problems`]) concern one component that is
//!   otherwise well formed: a reference that does not resolve (a trigger type, an
//!   action, a policy target, a permission set, a runtime — in this pack, or in another
//!   pack of the batch or installed) and an action runner that is neither a built-in
//!   runner of Attune or StackStorm ([`is_builtin_runner`]) nor a runtime of this pack,
//!   the batch or the installed packs. [`Strictness::Lenient`] (the default) makes each
//!   a warning and drops the component: it is not registered, and neither is anything
//!   of the pack that refers to a dropped component (to a fixpoint: a rule on an action
//!   whose workflow was dropped goes too; trigger types declared by a dropped sensor go
//!   with it). [`Strictness::Strict`] (StackStorm's `--register-fail-on-failure`) makes
//!   each a pack error.
//!
//! References into a pack that is neither in the batch nor installed stay warnings and
//! keep their component (real packs point at `core.*` all the time), as do StackStorm
//! built-ins of pack `core`.
//!
//! # Files
//!
//! * Only regular `*.yaml`/`*.yml` files directly inside each component directory are
//!   read (no recursion), sorted by file name. Names starting with `.` are skipped with a
//!   warning (editor and macOS `._*` droppings).
//! * A symbolic link that stays inside the pack is read as the file (or directory) it
//!   points to; one that leaves the pack, points to nothing or is a loop is refused with
//!   an error naming the link and why, both for component files and for files reached
//!   through `entry_point`/`workflow_file` (a pack must not make the server read outside
//!   it). A component directory that is itself such a link is refused the same way. Other non-regular files (FIFOs, devices) are errors;
//!   directories named `*.yaml` are skipped with a warning.
//! * Files are opened through the pack's directory descriptor ([`PackDir`]). Files
//!   larger than the `pack_files.max_component_bytes` setting (1 MiB by default, as
//!   Attune's workflow sync) and files that are not UTF-8 are errors. A YAML syntax error is an error for that file (the message carries the
//!   line and column); the other files are still loaded. An empty document, or one that
//!   is not a mapping, is an error. YAML merge keys (`<<`) are applied.
//! * Workflows: standalone `workflows/*.yaml` are Workflow components. StackStorm keeps
//!   workflow graphs in `actions/workflows/`; such a file (in fact any file inside the
//!   pack) becomes a Workflow component when an action references it, through
//!   `workflow_file` (Attune, any runner) or through `entry_point` with a workflow runner
//!   (`orquesta`, `action-chain`, `mistral-v2`, `workflow`). Paths are relative to
//!   `actions/`. A file referenced by several actions is loaded once. An `actions/*.yaml`
//!   file referenced this way is a workflow, not an action. Files in `actions/workflows/`
//!   that no action references get a warning and are not loaded.
//!
//! # Refs
//!
//! A component's ref is `<pack>.<name>`:
//!
//! * `ref`, when present. A bare name is qualified with the pack ref. When it contains a
//!   dot, the part before the **first** dot must be this pack: a ref naming another pack
//!   is an error (a pack may only define its own components).
//! * else StackStorm's `name` (not for runtimes, whose `name` is a display name);
//! * else, for sensors, StackStorm's `class_name` (StackStorm names sensors after their
//!   class, e.g. `mypack.WatchSensor`);
//! * else the file stem, with a warning (for an action-linked workflow file: the action's
//!   name, without warning; for a trigger type declared in a sensor, `name` is required).
//!
//! `label` is only the `label` key (policies' Attune `name` is not used as a label);
//! [`generate_label`] gives Attune's default.
//!
//! The name part may contain ASCII letters, digits, `_`, `-` and `.` (StackStorm allows
//! uppercase and dotted names such as trigger `st2.IntervalTimer`), must not start or end
//! with a dot, and is at most [`MAX_NAME_LEN`] characters. Names Attune's database would
//! reject (anything but lowercase letters, digits, `_` and `-`) get a warning.
//! References (a rule's trigger, a policy's action, …) are qualified the same way: a
//! bare name means this pack, otherwise the first dot separates the pack, so
//! `core.st2.IntervalTimer` is trigger `st2.IntervalTimer` of pack `core`.
//!
//! An invalid reference (`trigger_ref: "a b"`) is an error from [`load`]; it is not
//! recorded in [`Component::references`], and [`validate`] does not report the key as
//! missing again.
//!
//! Two components of the same kind with the same ref are an error naming both files,
//! except triggers declared in sensor files (`trigger_types` entries): those are
//! deduplicated silently against `triggers/` files and other sensors (first one wins;
//! `triggers/` files are read before sensors).
//!
//! # Normalised keys in [`Component::definition`]
//!
//! The definition is the YAML converted to JSON, with these keys set or added:
//!
//! * every kind: `ref` = the qualified ref.
//! * action: `runner_type` (default `shell`), `parameter_delivery` (default `stdin`),
//!   `parameter_format` (default `json`), `output_format` (default `text`), all three
//!   lowercased; `output` from the documented `output_schema` and `timeout_seconds` from
//!   the documented `timeout` when only those spellings are used.
//!   `parameter_delivery: env` is an **error**: Attune documents it, but its database
//!   rejects it and the action silently disappeared.
//! * sensor: `runner_type` (default `python` when `class_name` is present or the entry
//!   point ends in `.py`, as in StackStorm; else Attune's default `native`).
//! * trigger (files and sensor declarations): `parameters` from `parameters_schema` and
//!   `output` from `payload_schema` when only the documented/StackStorm spellings are
//!   used. Triggers declared in a sensor also get `sensor_ref`.
//! * rule: `trigger_ref`, `action_ref` (qualified; from StackStorm `trigger.type` and
//!   `action.ref` too), `trigger_params`, `action_params` (from `trigger.parameters` and
//!   `action.parameters`), `enabled` (default true). StackStorm `criteria` is kept as is.
//! * policy: `action_ref` (qualified; from StackStorm `resource_ref` too).
//! * alias (StackStorm action aliases, `aliases/*.yaml`): `action_ref` (qualified),
//!   `enabled` (default true). `formats` must be a non-empty list of strings or of
//!   `{display, representation: [strings]}` mappings; `ack` and `result` mappings.
//! * workflow linked to an action: `action_ref` (the first action referencing it).
//!
//! # Runners and entry points (checked by [`validate`])
//!
//! * Workflow runners: the workflow file must exist inside the pack.
//! * Runners that take no file ([`NO_FILE_RUNNERS`]: `local-shell-cmd`,
//!   `remote-shell-cmd`, `http-request`, `noop`, `native`, …): `entry_point` is not
//!   checked (native entry points name binaries shipped with the platform).
//! * Script runners ([`SCRIPT_RUNNERS`]: Attune `shell`, `python`, `node`, … and
//!   StackStorm `local-shell-script`, `python-script`, …): `entry_point` is required and
//!   must be a regular file inside the pack, relative to `actions/`.
//! * Any other runner (a custom runtime ref): `entry_point`, when given, must exist.
//! * With `workflow_file`, `entry_point` is not checked (Attune replaces it).
//! * Sensors: `entry_point` is required; for interpreted runners (python, node, shell) it
//!   must exist relative to `sensors/`.
//!
//! # Components with errors
//!
//! A component whose file parsed but has errors (a bad enum value, a wrong type) is still
//! listed, so counts and later checks stay meaningful; any error means the pack must not
//! be registered. Files that could not be read or parsed produce no component.
//!
//! [`LoadedPack::components`] is ordered by kind in Attune's registration order
//! (permission sets, runtimes, triggers, actions, workflows, queues, policies, rules,
//! aliases, sensors; see [`ComponentKind::ALL`]) and by file name within a kind.

mod fsutil;
mod load;
mod names;
pub mod policy_types;
pub mod schema;
mod validate;
mod yaml;

#[cfg(test)]
mod tests;

use std::fmt;

use crate::packfs::{PackDir, ReadCap};

pub use self::names::{generate_label, is_valid_name};

/// Longest accepted name part of a component ref.
pub const MAX_NAME_LEN: usize = 255;

/// Whether `runner` (any case) is a runner Attune or StackStorm provides, as opposed to a
/// runtime a pack defines.
pub fn is_builtin_runner(runner: &str) -> bool {
    let lower = runner.trim().to_ascii_lowercase();
    [WORKFLOW_RUNNERS, NO_FILE_RUNNERS, SCRIPT_RUNNERS]
        .iter()
        .any(|list| list.contains(&lower.as_str()))
}

/// Runners whose `entry_point` is a workflow file (relative to `actions/`).
pub const WORKFLOW_RUNNERS: &[&str] = &["orquesta", "action-chain", "mistral-v2", "workflow"];

/// Runners that do not execute a file from the pack: their `entry_point` is not checked.
pub const NO_FILE_RUNNERS: &[&str] = &[
    "local-shell-cmd",
    "remote-shell-cmd",
    "http-request",
    "noop",
    "announcement",
    "inquirer",
    "winrm-cmd",
    "winrm-ps-cmd",
    "native",
    "builtin",
    "standalone",
];

/// Runners that execute a script from the pack: `entry_point` is required.
pub const SCRIPT_RUNNERS: &[&str] = &[
    "shell",
    "bash",
    "sh",
    "python",
    "python3",
    "node",
    "nodejs",
    "node.js",
    "local-shell-script",
    "remote-shell-script",
    "python-script",
    "winrm-ps-script",
];

/// Allowed `parameter_delivery` values (Attune's database CHECK).
pub const PARAMETER_DELIVERIES: &[&str] = &["stdin", "file"];
/// Allowed `parameter_format` values.
pub const PARAMETER_FORMATS: &[&str] = &["dotenv", "json", "yaml"];
/// Allowed `output_format` values.
pub const OUTPUT_FORMATS: &[&str] = &["text", "json", "yaml", "jsonl"];
/// Allowed `reference_visibility` values.
pub const REFERENCE_VISIBILITIES: &[&str] = &["public", "private", "restricted"];
/// Allowed policy `concurrency.method` values.
pub const CONCURRENCY_METHODS: &[&str] = &["cancel", "enqueue"];

/// StackStorm built-in actions, provided by pack `core` (names after `core.`).
pub const ST2_BUILTIN_CORE_ACTIONS: &[&str] = &[
    "local",
    "local_sudo",
    "remote",
    "remote_sudo",
    "noop",
    "http",
    "sendmail",
    "announcement",
    "inquiry",
    "ask",
    "echo",
    "error",
    "pause",
    "uuid",
    "winrm_cmd",
    "winrm_ps_cmd",
    "winrm_ps_script",
];

/// The kinds of component a pack can define.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ComponentKind {
    Action,
    Sensor,
    Trigger,
    Rule,
    Workflow,
    Policy,
    Runtime,
    PermissionSet,
    Queue,
    /// A StackStorm action alias (`aliases/*.yaml`): chat-ops phrases bound to an action.
    Alias,
}

impl ComponentKind {
    /// Every kind, in Attune's registration order (the order of
    /// [`LoadedPack::components`]).
    pub const ALL: [ComponentKind; 10] = [
        ComponentKind::PermissionSet,
        ComponentKind::Runtime,
        ComponentKind::Trigger,
        ComponentKind::Action,
        ComponentKind::Workflow,
        ComponentKind::Queue,
        ComponentKind::Policy,
        ComponentKind::Rule,
        ComponentKind::Alias,
        ComponentKind::Sensor,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ComponentKind::Action => "action",
            ComponentKind::Sensor => "sensor",
            ComponentKind::Trigger => "trigger",
            ComponentKind::Rule => "rule",
            ComponentKind::Workflow => "workflow",
            ComponentKind::Policy => "policy",
            ComponentKind::Runtime => "runtime",
            ComponentKind::PermissionSet => "permission_set",
            ComponentKind::Queue => "queue",
            ComponentKind::Alias => "alias",
        }
    }

    /// The inverse of [`ComponentKind::as_str`].
    pub fn parse(s: &str) -> Option<ComponentKind> {
        ComponentKind::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// The directory (relative to the pack root) holding this kind's files.
    pub fn dir(self) -> &'static str {
        match self {
            ComponentKind::Action => "actions",
            ComponentKind::Sensor => "sensors",
            ComponentKind::Trigger => "triggers",
            ComponentKind::Rule => "rules",
            ComponentKind::Workflow => "workflows",
            ComponentKind::Policy => "policies",
            ComponentKind::Runtime => "runtimes",
            ComponentKind::PermissionSet => "permission_sets",
            ComponentKind::Queue => "queues",
            ComponentKind::Alias => "aliases",
        }
    }

    /// Human wording for messages: `permission set` instead of `permission_set`.
    fn noun(self) -> &'static str {
        match self {
            ComponentKind::PermissionSet => "permission set",
            ComponentKind::Alias => "action alias",
            k => k.as_str(),
        }
    }

    fn order(self) -> usize {
        ComponentKind::ALL
            .iter()
            .position(|k| *k == self)
            .unwrap_or(usize::MAX)
    }
}

impl fmt::Display for ComponentKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One component defined by a pack.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Component {
    pub kind: ComponentKind,
    /// Fully qualified `<pack>.<name>`.
    pub r#ref: String,
    /// The part after the first dot.
    pub name: String,
    /// `label`, when the file has one (see [`generate_label`] for Attune's default).
    pub label: Option<String>,
    pub description: Option<String>,
    /// Relative to the pack root, `/`-separated, e.g. `actions/echo.yaml`. For triggers
    /// declared in a sensor, the sensor file.
    pub file: String,
    /// The YAML as read, converted to JSON, plus the normalised keys listed in the
    /// module documentation.
    pub definition: serde_json::Value,
    /// What this component points at.
    pub references: Vec<ComponentReference>,
}

/// A reference from one component to another (of this pack or of another pack).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ComponentReference {
    pub kind: ComponentKind,
    /// Qualified `<pack>.<name>`.
    pub r#ref: String,
    /// Where it was found, e.g. `trigger.type`, `action_ref`, `entry_point`,
    /// `trigger_types`, `tasks.notify.action`.
    pub key: String,
}

impl ComponentReference {
    /// The pack part of the ref (before the first dot).
    pub fn pack(&self) -> &str {
        self.r#ref.split_once('.').map_or("", |(p, _)| p)
    }
}

/// A problem found in one file. Displays as `file: message`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, serde::Serialize)]
#[error("{file}: {message}")]
pub struct Issue {
    /// Relative to the pack root, `/`-separated.
    pub file: String,
    pub message: String,
}

/// A component problem: one component that is well formed but refers to something that
/// does not exist (see the module documentation). Displays as `file: message`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, serde::Serialize)]
#[error("{file}: {message}")]
pub struct ComponentProblem {
    /// The component concerned.
    pub kind: ComponentKind,
    pub r#ref: String,
    /// Relative to the pack root, `/`-separated.
    pub file: String,
    /// What is unresolved, e.g. `trigger.type: trigger 'p.b' is not defined in this pack`.
    pub message: String,
}

/// What a component problem does to its pack.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Strictness {
    /// A warning; the component (and whatever of the pack refers to it) is not
    /// registered, the pack registers with the rest. StackStorm's default.
    #[default]
    Lenient,
    /// A pack error: the pack is not registered. StackStorm's
    /// `--register-fail-on-failure`.
    Strict,
}

/// Everything [`load`] found in a pack (and [`validate`] added).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LoadedPack {
    pub components: Vec<Component>,
    /// Pack errors: the pack must not be registered.
    pub errors: Vec<Issue>,
    pub warnings: Vec<Issue>,
    /// Component problems [`validate`] found, also those of components it dropped
    /// (which are no longer in `components`). Already turned into warnings or errors
    /// according to the [`Strictness`].
    pub problems: Vec<ComponentProblem>,
}

impl LoadedPack {
    /// Number of components of `kind` (duplicates already removed).
    pub fn count(&self, kind: ComponentKind) -> u32 {
        let n = self.components.iter().filter(|c| c.kind == kind).count();
        u32::try_from(n).unwrap_or(u32::MAX)
    }

    /// The components of `kind`, in file order.
    pub fn of_kind(&self, kind: ComponentKind) -> impl Iterator<Item = &Component> {
        self.components.iter().filter(move |c| c.kind == kind)
    }

    /// The component of `kind` with the qualified ref `r`.
    pub fn get(&self, kind: ComponentKind, r: &str) -> Option<&Component> {
        self.components
            .iter()
            .find(|c| c.kind == kind && c.r#ref == r)
    }

    pub fn has_errors(&self) -> bool {
        !self.errors.is_empty()
    }

    fn error(&mut self, file: impl Into<String>, message: impl Into<String>) {
        self.errors.push(Issue {
            file: file.into(),
            message: message.into(),
        });
    }

    /// Records a component problem of `c` (judged later, by [`Strictness`]).
    fn problem(&mut self, c: &Component, message: impl Into<String>) {
        self.problems.push(ComponentProblem {
            kind: c.kind,
            r#ref: c.r#ref.clone(),
            file: c.file.clone(),
            message: message.into(),
        });
    }

    fn warn(&mut self, file: impl Into<String>, message: impl Into<String>) {
        self.warnings.push(Issue {
            file: file.into(),
            message: message.into(),
        });
    }
}

/// Reads every component file of the pack. Never panics on bad input; problems become
/// errors/warnings.
pub fn load(pack_dir: &PackDir, pack_ref: &str, cap: ReadCap) -> LoadedPack {
    load::load(pack_dir, pack_ref, cap)
}

/// [`validate_with`] in the default, [`Strictness::Lenient`], mode.
pub fn validate(
    loaded: &mut LoadedPack,
    pack_dir: &PackDir,
    pack_ref: &str,
    pack_exists: &dyn Fn(&str) -> bool,
    component_exists: &dyn Fn(ComponentKind, &str) -> bool,
) {
    validate_with(
        loaded,
        pack_dir,
        pack_ref,
        pack_exists,
        component_exists,
        Strictness::Lenient,
    )
}

/// Checks required keys, entry-point files and references. `pack_exists(ref)` answers
/// whether another pack (in the same batch or already installed) exists.
/// `component_exists(kind, qualified_ref)` answers for components of OTHER packs (batch
/// or installed). Adds to errors/warnings/problems and, when lenient, removes the
/// components with problems from [`LoadedPack::components`].
///
/// A reference into this pack must resolve to a component of this pack, and a reference
/// into another pack that exists must resolve through `component_exists`: otherwise it
/// is a component problem. A reference into a pack that does not exist is a warning
/// naming that pack. StackStorm built-ins of pack `core` (`core.st2.*` triggers,
/// [`ST2_BUILTIN_CORE_ACTIONS`]) are never problems: warnings only, when `core` or the
/// component is missing.
pub fn validate_with(
    loaded: &mut LoadedPack,
    pack_dir: &PackDir,
    pack_ref: &str,
    pack_exists: &dyn Fn(&str) -> bool,
    component_exists: &dyn Fn(ComponentKind, &str) -> bool,
    strictness: Strictness,
) {
    validate::validate(loaded, pack_dir, pack_ref, pack_exists, component_exists);
    validate::settle(loaded, pack_ref, strictness);
}
