//! The JSON Schemas a pack declares, checked as StackStorm checks them: action
//! `parameters` and `output_schema`/`output`, trigger `parameters_schema`/`parameters`
//! and `payload_schema`/`output` (trigger files and the `trigger_types` of sensors), and
//! the pack's `config.schema.yaml`.
//!
//! * A schema is JSON Schema draft 4 plus StackStorm's keys `secret`, `immutable`
//!   (booleans), `position` (a number ≥ 0) and `required` as a boolean inside a property
//!   (draft 4's list of property names is accepted too). Any other key is an error
//!   (`typ:`, `requried:`), as are type names outside draft 4 (`type: stringa`).
//! * A value written as a mapping of names to definitions (`channel: {type: string}`,
//!   how StackStorm and Attune write parameters) is checked one definition at a time;
//!   a value with a `type` of its own (or `$schema`, or `properties` with a `required`
//!   list) is one whole schema (how StackStorm writes trigger schemas).
//! * A `default` must be valid under its own definition (one of its `enum` values, of its
//!   type, ...). A `null` default (StackStorm allows it) and a default holding a Jinja
//!   expression (`"{{ config_context.port }}"`, rendered when the action runs) are not
//!   checked.
//! * Two action parameters with the same `position` are an error (StackStorm's rule).
//! * `$ref` may only point inside the same schema (`#/definitions/...`): nothing is ever
//!   fetched, and a reference elsewhere (`https://...`, `other.json`) is an error.
//! * `config.schema.yaml`, when present, is a non-empty mapping of option names to
//!   definitions checked the same way.
//!
//! The functions here return typed problems; [`report`] turns them into issues of the
//! pack.

use std::sync::OnceLock;

use jsonschema::error::ValidationErrorKind;
use jsonschema::paths::LocationSegment;
use jsonschema::{Draft, Retrieve, Uri, ValidationError, Validator};
use serde_json::{Map, Value};

use crate::packfs::{PackDir, ReadCap};

use super::{Component, ComponentKind, Issue, LoadedPack, yaml};

/// File name of a pack's configuration schema, at the pack root.
pub const CONFIG_SCHEMA_FILE: &str = "config.schema.yaml";

/// Draft 4's type names.
pub const JSON_SCHEMA_TYPES: [&str; 7] = [
    "array", "boolean", "integer", "null", "number", "object", "string",
];

/// Draft 4, every key listed and no other allowed, with StackStorm's keys.
const META_SCHEMA: &str = r##"{
  "$schema": "http://json-schema.org/draft-04/schema#",
  "definitions": {
    "schemaArray": {"type": "array", "minItems": 1, "items": {"$ref": "#"}},
    "nonNegativeInteger": {"type": "integer", "minimum": 0},
    "simpleTypes": {"enum": ["array", "boolean", "integer", "null", "number", "object", "string"]},
    "stringArray": {"type": "array", "items": {"type": "string"}, "minItems": 1, "uniqueItems": true},
    "propertyNames": {"type": "array", "items": {"type": "string"}, "uniqueItems": true}
  },
  "type": "object",
  "properties": {
    "id": {"type": "string"},
    "$schema": {"type": "string"},
    "$ref": {"type": "string"},
    "title": {"type": "string"},
    "description": {"type": "string"},
    "default": {},
    "format": {"type": "string"},
    "multipleOf": {"type": "number", "minimum": 0, "exclusiveMinimum": true},
    "maximum": {"type": "number"},
    "exclusiveMaximum": {"type": "boolean"},
    "minimum": {"type": "number"},
    "exclusiveMinimum": {"type": "boolean"},
    "maxLength": {"$ref": "#/definitions/nonNegativeInteger"},
    "minLength": {"$ref": "#/definitions/nonNegativeInteger"},
    "pattern": {"type": "string", "format": "regex"},
    "additionalItems": {"anyOf": [{"type": "boolean"}, {"$ref": "#"}]},
    "items": {"anyOf": [{"$ref": "#"}, {"$ref": "#/definitions/schemaArray"}]},
    "maxItems": {"$ref": "#/definitions/nonNegativeInteger"},
    "minItems": {"$ref": "#/definitions/nonNegativeInteger"},
    "uniqueItems": {"type": "boolean"},
    "maxProperties": {"$ref": "#/definitions/nonNegativeInteger"},
    "minProperties": {"$ref": "#/definitions/nonNegativeInteger"},
    "required": {"anyOf": [{"type": "boolean"}, {"$ref": "#/definitions/propertyNames"}]},
    "additionalProperties": {"anyOf": [{"type": "boolean"}, {"$ref": "#"}]},
    "definitions": {"type": "object", "additionalProperties": {"$ref": "#"}},
    "properties": {"type": "object", "additionalProperties": {"$ref": "#"}},
    "patternProperties": {"type": "object", "additionalProperties": {"$ref": "#"}},
    "dependencies": {
      "type": "object",
      "additionalProperties": {"anyOf": [{"$ref": "#"}, {"$ref": "#/definitions/stringArray"}]}
    },
    "enum": {"type": "array", "minItems": 1, "uniqueItems": true},
    "type": {
      "anyOf": [
        {"$ref": "#/definitions/simpleTypes"},
        {"type": "array", "items": {"$ref": "#/definitions/simpleTypes"}, "minItems": 1, "uniqueItems": true}
      ]
    },
    "allOf": {"$ref": "#/definitions/schemaArray"},
    "anyOf": {"$ref": "#/definitions/schemaArray"},
    "oneOf": {"$ref": "#/definitions/schemaArray"},
    "not": {"$ref": "#"},
    "secret": {"type": "boolean"},
    "immutable": {"type": "boolean"},
    "position": {"type": "number", "minimum": 0}
  },
  "dependencies": {"exclusiveMaximum": ["maximum"], "exclusiveMinimum": ["minimum"]},
  "additionalProperties": false
}"##;

/// One problem with a declared schema. Displays as `<path>: <message>`, the path being
/// where the value is in its file (`parameters.channel.type`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SchemaProblem {
    #[error("{path}: unknown key{}", suggestion.as_ref().map_or_else(
        || " (a definition takes JSON Schema draft 4 keys and StackStorm's secret, required, immutable and position)".to_string(),
        |s| format!(" (did you mean `{s}`?)")))]
    UnknownKey {
        path: String,
        suggestion: Option<&'static str>,
    },
    #[error("{path}: \"{name}\" is not a JSON Schema type (one of {}){}", JSON_SCHEMA_TYPES.join(", "),
        if name == "raw_string" { "; StackStorm's raw_string is not supported, use string" } else { "" })]
    UnknownType { path: String, name: String },
    #[error("{path}: expected a mapping (a JSON Schema definition), found {found}")]
    NotAMapping { path: String, found: &'static str },
    /// What the meta-schema says, in its words.
    #[error("{path}: {message}")]
    Invalid { path: String, message: String },
    #[error(
        "{path}: \"{reference}\" points outside this schema; references are never fetched, \
         only local ones (\"#/definitions/...\") are allowed"
    )]
    RemoteRef { path: String, reference: String },
    #[error("{path}: the schema cannot be used: {message}")]
    Unusable { path: String, message: String },
    #[error("{path}.default: {value} is not valid under its own definition: {message}")]
    BadDefault {
        path: String,
        value: String,
        message: String,
    },
    #[error(
        "{path}.position: {position} is also the position of parameter `{other}`; positions \
         must be unique"
    )]
    DuplicatePosition {
        path: String,
        position: String,
        other: String,
    },
    #[error(
        "the file is empty; expected a mapping of option names to their definitions \
         (delete the file if the pack has no configuration)"
    )]
    EmptyConfigSchema,
    #[error("expected a mapping of option names to their definitions, found {found}")]
    ConfigSchemaNotAMapping { found: &'static str },
}

/// Adds the schema problems of every component and of `config.schema.yaml` to the
/// pack's errors.
pub(super) fn report(loaded: &mut LoadedPack, pack_dir: &PackDir, cap: ReadCap) {
    let mut found = Vec::new();
    for c in &loaded.components {
        for problem in component_problems(c) {
            found.push(Issue {
                file: c.file.clone(),
                message: problem.to_string(),
            });
        }
    }
    found.extend(config_schema_file(pack_dir, cap));
    loaded.errors.extend(found);
}

/// The schema problems of one component.
pub fn component_problems(c: &Component) -> Vec<SchemaProblem> {
    let mut out = Vec::new();
    let Some(def) = c.definition.as_object() else {
        return out;
    };
    match c.kind {
        ComponentKind::Action => {
            if let Some(params) = def.get("parameters") {
                check_declared("parameters", params, true, &mut out);
            }
            for key in spellings(def, "output_schema", "output") {
                check_declared(key, &def[key], false, &mut out);
            }
        }
        // Triggers declared in a sensor are checked with their sensor, where their
        // index in `trigger_types` is known.
        ComponentKind::Trigger if !c.file.starts_with("sensors/") => {
            trigger_schemas("", def, &mut out);
        }
        ComponentKind::Sensor => {
            if let Some(Value::Array(types)) = def.get("trigger_types") {
                for (i, t) in types.iter().enumerate() {
                    if let Value::Object(t) = t {
                        trigger_schemas(&format!("trigger_types[{i}]."), t, &mut out);
                    }
                }
            }
        }
        _ => {}
    }
    out
}

fn trigger_schemas(prefix: &str, def: &Map<String, Value>, out: &mut Vec<SchemaProblem>) {
    for (documented, normalised) in [
        ("parameters_schema", "parameters"),
        ("payload_schema", "output"),
    ] {
        for key in spellings(def, documented, normalised) {
            check_declared(&format!("{prefix}{key}"), &def[key], false, out);
        }
    }
}

/// The keys to check among a documented spelling and the one `load` normalises it to
/// (a copy of the first unless both were written).
fn spellings<'k>(
    def: &Map<String, Value>,
    documented: &'k str,
    normalised: &'k str,
) -> Vec<&'k str> {
    let present = |k: &str| def.get(k).is_some_and(|v| !v.is_null());
    let mut keys = Vec::new();
    if present(documented) {
        keys.push(documented);
    }
    if present(normalised) && (!present(documented) || def[documented] != def[normalised]) {
        keys.push(normalised);
    }
    keys
}

/// Checks a declared schema value at `path`: a mapping of names to definitions, or one
/// whole schema. A value that is not a mapping was already reported by `load`.
fn check_declared(path: &str, value: &Value, positions: bool, out: &mut Vec<SchemaProblem>) {
    let Value::Object(map) = value else {
        return;
    };
    if is_whole_schema(map) {
        check_schema(path, value, out);
    } else {
        check_definitions(path, map, positions, out);
    }
}

/// Whether a mapping is one schema rather than a mapping of names to definitions.
fn is_whole_schema(map: &Map<String, Value>) -> bool {
    matches!(map.get("type"), Some(Value::String(_) | Value::Array(_)))
        || map.contains_key("$schema")
        || (map.get("properties").is_some_and(Value::is_object)
            && map.get("required").is_some_and(Value::is_array))
}

/// Checks each definition of a mapping of names to definitions (parameters, a config
/// schema). A `null` definition means any value, as in StackStorm.
fn check_definitions(
    path: &str,
    map: &Map<String, Value>,
    positions: bool,
    out: &mut Vec<SchemaProblem>,
) {
    let mut seen_positions: Vec<(f64, &str)> = Vec::new();
    for (name, definition) in map {
        let at = join(path, name);
        match definition {
            Value::Null => continue,
            Value::Object(_) => check_schema(&at, definition, out),
            other => {
                out.push(SchemaProblem::NotAMapping {
                    path: at,
                    found: type_name(other),
                });
                continue;
            }
        }
        if positions && let Some(position) = definition.get("position").and_then(Value::as_f64) {
            match seen_positions.iter().find(|(p, _)| *p == position) {
                Some((_, other)) => out.push(SchemaProblem::DuplicatePosition {
                    path: at,
                    position: definition["position"].to_string(),
                    other: (*other).to_string(),
                }),
                None => seen_positions.push((position, name)),
            }
        }
    }
}

/// Checks one schema (a definition) at `path`: against the meta-schema, then its
/// references, that it compiles, and its defaults.
pub fn check_schema(path: &str, schema: &Value, out: &mut Vec<SchemaProblem>) {
    if !schema.is_object() {
        out.push(SchemaProblem::NotAMapping {
            path: path.to_string(),
            found: type_name(schema),
        });
        return;
    }
    let before = out.len();
    for error in meta_validator().iter_errors(schema) {
        translate(path, &error, out);
    }
    remote_refs(path, schema, out);
    if out.len() > before {
        return;
    }
    if let Err(message) = compile(schema) {
        out.push(SchemaProblem::Unusable {
            path: path.to_string(),
            message,
        });
        return;
    }
    defaults(path, schema, out);
}

fn meta_validator() -> &'static Validator {
    static META: OnceLock<Validator> = OnceLock::new();
    META.get_or_init(|| {
        let meta: Value = serde_json::from_str(META_SCHEMA).expect("the meta-schema is JSON");
        // Formats on: `pattern` must be a valid regular expression.
        options()
            .should_validate_formats(true)
            .build(&meta)
            .expect("the meta-schema is a valid draft 4 schema")
    })
}

/// Draft 4 and a retriever that refuses everything: a schema from a pack never makes
/// the server read a file or open a connection. Formats are not asserted (StackStorm
/// does not check a default's `format` either).
fn options() -> jsonschema::ValidationOptions<'static> {
    jsonschema::options()
        .with_draft(Draft::Draft4)
        .should_validate_formats(false)
        .with_retriever(NeverFetch)
}

struct NeverFetch;

impl Retrieve for NeverFetch {
    fn retrieve(
        &self,
        uri: &Uri<String>,
    ) -> Result<Value, Box<dyn std::error::Error + Send + Sync>> {
        Err(Box::new(NotFetched(uri.as_str().to_string())))
    }
}

#[derive(Debug, thiserror::Error)]
#[error("\"{0}\" is outside the schema and is never fetched")]
struct NotFetched(String);

/// Turns one meta-schema error into problems.
fn translate(base: &str, error: &ValidationError<'_>, out: &mut Vec<SchemaProblem>) {
    let path = instance_path(base, error);
    match error.kind() {
        ValidationErrorKind::AdditionalProperties { unexpected } => {
            for key in unexpected {
                out.push(SchemaProblem::UnknownKey {
                    path: join(&path, key),
                    suggestion: closest_key(key),
                });
            }
        }
        ValidationErrorKind::Enum { options } if is_type_list(options) => {
            match error.instance().as_ref() {
                Value::String(name) => out.push(SchemaProblem::UnknownType {
                    path,
                    name: name.clone(),
                }),
                other => out.push(SchemaProblem::Invalid {
                    path,
                    message: format!(
                        "expected a type name or a list of type names, found {}",
                        describe(other)
                    ),
                }),
            }
        }
        ValidationErrorKind::AnyOf { context } => {
            // The alternative that fits the value's shape says what is wrong inside it (an
            // unknown key deep in `items`, say): first one whose errors are all deeper
            // than the value, then one that does not refuse the value's JSON type. With
            // neither, the value has the wrong type altogether.
            let own = |e: &ValidationError<'_>| e.instance_path() == error.instance_path();
            let deeper_only = context
                .iter()
                .find(|branch| !branch.is_empty() && !branch.iter().any(own));
            let right_type = || {
                context.iter().find(|branch| {
                    !branch.is_empty()
                        && !branch
                            .iter()
                            .any(|e| own(e) && matches!(e.kind(), ValidationErrorKind::Type { .. }))
                })
            };
            match deeper_only.or_else(right_type) {
                Some(branch) => {
                    for e in branch {
                        translate(base, e, out);
                    }
                }
                None => {
                    let last = path.rsplit(['.', '[']).next().unwrap_or_default();
                    let expected = match last {
                        "type" => "a type name or a list of type names".to_string(),
                        "required" => {
                            "true or false (or, for an object, a list of property names)".into()
                        }
                        "items" => "a schema or a list of schemas".into(),
                        "additionalItems" | "additionalProperties" => {
                            "true, false or a schema".into()
                        }
                        _ => "a schema or a list of property names".into(),
                    };
                    out.push(SchemaProblem::Invalid {
                        path,
                        message: format!(
                            "expected {expected}, found {}",
                            describe(error.instance().as_ref())
                        ),
                    });
                }
            }
        }
        _ => out.push(SchemaProblem::Invalid {
            path,
            message: error.to_string(),
        }),
    }
}

fn is_type_list(options: &Value) -> bool {
    options.as_array().is_some_and(|o| {
        o.len() == JSON_SCHEMA_TYPES.len()
            && o.iter()
                .zip(JSON_SCHEMA_TYPES)
                .all(|(a, b)| a.as_str() == Some(b))
    })
}

/// `base` followed by the error's place in the instance: `.key` and `[index]`.
fn instance_path(base: &str, error: &ValidationError<'_>) -> String {
    let mut path = base.to_string();
    for segment in error.instance_path().iter() {
        match segment {
            LocationSegment::Property(key) => path = join(&path, &key),
            LocationSegment::Index(i) => path.push_str(&format!("[{i}]")),
        }
    }
    path
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

/// Every key a definition may have (StackStorm's included).
fn known_keys() -> impl Iterator<Item = &'static str> {
    static KEYS: OnceLock<Vec<String>> = OnceLock::new();
    KEYS.get_or_init(|| {
        let meta: Value = serde_json::from_str(META_SCHEMA).expect("the meta-schema is JSON");
        meta["properties"]
            .as_object()
            .map(|p| p.keys().cloned().collect())
            .unwrap_or_default()
    })
    .iter()
    .map(String::as_str)
}

/// The known key closest to a misspelt one (`typ` → `type`), if one is close.
fn closest_key(key: &str) -> Option<&'static str> {
    let lower = key.to_ascii_lowercase();
    known_keys()
        .map(|k| (edit_distance(&lower, &k.to_ascii_lowercase()), k))
        .filter(|(d, k)| *d <= 2 && *d < k.len())
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.iter().enumerate() {
        let mut current = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let substitution = previous[j] + usize::from(ca != cb);
            current.push(substitution.min(previous[j + 1] + 1).min(current[j] + 1));
        }
        previous = current;
    }
    previous[b.len()]
}

/// `$ref`s that leave the schema. Values of `default` and `enum` are data, not schemas.
fn remote_refs(path: &str, schema: &Value, out: &mut Vec<SchemaProblem>) {
    match schema {
        Value::Object(map) => {
            for (key, value) in map {
                match (key.as_str(), value) {
                    ("default" | "enum", _) => {}
                    ("$ref", Value::String(r)) if !r.starts_with('#') => {
                        out.push(SchemaProblem::RemoteRef {
                            path: join(path, key),
                            reference: r.clone(),
                        });
                    }
                    _ => remote_refs(&join(path, key), value, out),
                }
            }
        }
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                remote_refs(&format!("{path}[{i}]"), item, out);
            }
        }
        _ => {}
    }
}

/// Compiles a definition as a draft 4 schema, StackStorm's keys taken out.
fn compile(schema: &Value) -> Result<Validator, String> {
    options()
        .build(&without_stackstorm_keys(schema))
        .map_err(|e| e.to_string())
}

/// A copy without StackStorm's keys, which draft 4 does not know (a boolean `required`
/// means nothing there). Only values of their own type are taken out, so a property
/// named `secret` stays.
fn without_stackstorm_keys(schema: &Value) -> Value {
    match schema {
        Value::Object(map) => Value::Object(
            map.iter()
                .filter(|(k, v)| {
                    !matches!(
                        (k.as_str(), v),
                        ("secret" | "immutable" | "required", Value::Bool(_))
                            | ("position", Value::Number(_))
                    )
                })
                .map(|(k, v)| {
                    let v = if matches!(k.as_str(), "default" | "enum") {
                        v.clone()
                    } else {
                        without_stackstorm_keys(v)
                    };
                    (k.clone(), v)
                })
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(without_stackstorm_keys).collect()),
        other => other.clone(),
    }
}

/// Checks the `default` of a definition and of its nested `properties`.
fn defaults(path: &str, schema: &Value, out: &mut Vec<SchemaProblem>) {
    if let Some(default) = schema.get("default")
        && !default.is_null()
        && !has_template(default)
        && !has_ref(schema)
        && let Ok(validator) = compile(schema)
        && let Some(error) = validator.iter_errors(default).next()
    {
        let inner = instance_path("", &error);
        let message = if inner.is_empty() {
            error.to_string()
        } else {
            format!("{inner}: {error}")
        };
        out.push(SchemaProblem::BadDefault {
            path: path.to_string(),
            value: short(default),
            message,
        });
    }
    if let Some(Value::Object(properties)) = schema.get("properties") {
        for (name, sub) in properties {
            defaults(&join(&join(path, "properties"), name), sub, out);
        }
    }
}

/// Jinja in a default is rendered when the action runs; it cannot be judged here.
fn has_template(value: &Value) -> bool {
    match value {
        Value::String(s) => s.contains("{{") || s.contains("{%"),
        Value::Array(items) => items.iter().any(has_template),
        Value::Object(map) => map.values().any(has_template),
        _ => false,
    }
}

/// A nested definition with a `$ref` only means something inside its whole schema.
fn has_ref(value: &Value) -> bool {
    match value {
        Value::Object(map) => map
            .iter()
            .any(|(k, v)| k == "$ref" || (k != "default" && k != "enum" && has_ref(v))),
        Value::Array(items) => items.iter().any(has_ref),
        _ => false,
    }
}

/// A value for messages, shortened so one problem stays one line.
fn short(value: &Value) -> String {
    let text = value.to_string();
    if text.chars().count() <= 60 {
        text
    } else {
        format!("{}...", text.chars().take(57).collect::<String>())
    }
}

fn type_name(v: &Value) -> &'static str {
    super::load::type_name(v)
}

fn describe(v: &Value) -> String {
    match v {
        Value::Object(_) | Value::Array(_) => type_name(v).to_string(),
        other => other.to_string(),
    }
}

/// Problems of `config.schema.yaml` at the pack root, read like every component file.
fn config_schema_file(pack_dir: &PackDir, cap: ReadCap) -> Vec<Issue> {
    let issue = |message: String| Issue {
        file: CONFIG_SCHEMA_FILE.to_string(),
        message,
    };
    let text = match pack_dir.read_text(CONFIG_SCHEMA_FILE, cap) {
        Ok(text) => text,
        Err(e) if e.is_not_found() => return Vec::new(),
        Err(e) => return vec![issue(e.reason())],
    };
    let problems = match yaml::parse(&text) {
        Ok(value) => config_schema_problems(&value),
        Err(problem) => return vec![issue(problem.to_string())],
    };
    problems.into_iter().map(|p| issue(p.to_string())).collect()
}

/// The problems of a parsed `config.schema.yaml`.
pub fn config_schema_problems(value: &Value) -> Vec<SchemaProblem> {
    let mut out = Vec::new();
    match value {
        Value::Null => out.push(SchemaProblem::EmptyConfigSchema),
        Value::Object(map) if map.is_empty() => out.push(SchemaProblem::EmptyConfigSchema),
        Value::Object(map) => check_definitions("", map, false, &mut out),
        other => out.push(SchemaProblem::ConfigSchemaNotAMapping {
            found: type_name(other),
        }),
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packfs::PackReadLimits;

    fn component(kind: ComponentKind, file: &str, text: &str) -> Component {
        Component {
            kind,
            r#ref: "p.x".into(),
            name: "x".into(),
            label: None,
            description: None,
            file: file.into(),
            definition: yaml::parse(text).unwrap(),
            references: Vec::new(),
        }
    }

    fn messages(kind: ComponentKind, text: &str) -> Vec<String> {
        let file = match kind {
            ComponentKind::Sensor => "sensors/s.yaml",
            ComponentKind::Trigger => "triggers/t.yaml",
            _ => "actions/a.yaml",
        };
        component_problems(&component(kind, file, text))
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    fn action(text: &str) -> Vec<String> {
        messages(ComponentKind::Action, text)
    }

    #[test]
    fn stackstorm_shapes_pass() {
        // The shapes of StackStorm's core pack and of Exchange packs.
        let http_like = r##"
name: http
runner_type: http-request
parameters:
  auth: {type: string, description: "Auth string"}
  headers: {type: object, description: HTTP headers}
  method:
    description: HTTP method to use.
    enum: [HEAD, GET, POST, PUT, DELETE]
  timeout: {type: number, default: 60}
  verify_ssl_cert: {type: boolean, default: true}
  url: {type: string, required: true, position: 0}
  body: {type: string, position: 1}
  tags: {type: array, items: {type: string, minLength: 1}, uniqueItems: true, default: []}
  port: {type: integer, default: "{{ config_context.port }}"}
  channel: {type: string, default: null}
  token: {type: string, secret: true, required: false}
"##;
        assert_eq!(action(http_like), Vec::<String>::new());
        let output_schema = r##"
name: with_output
runner_type: python-script
entry_point: run.py
parameters:
  message: {type: string, required: true, default: abc}
  cmd: {type: string, required: true, default: 'echo "{{message}}"', immutable: true}
output_schema:
  secret_param: {type: string, required: true, secret: true, default: SSS}
  result:
    type: object
    properties:
      ok: {type: boolean}
      items: {type: array, items: [{type: string}, {type: integer}], additionalItems: false}
    required: [ok]
    additionalProperties: {type: string}
"##;
        assert_eq!(action(output_schema), Vec::<String>::new());
        let sensor = r##"
class_name: WatchSensor
entry_point: watch.py
trigger_types:
  - name: file_created
    payload_schema:
      type: object
      properties:
        path: {type: string}
        size: {type: integer, minimum: 0}
  - name: timer
    parameters_schema:
      $schema: "http://json-schema.org/draft-04/schema#"
      type: object
      properties:
        unit: {enum: [weeks, days, hours, minutes, seconds], default: seconds}
        delta: {type: integer, required: true}
      additionalProperties: false
"##;
        assert_eq!(
            messages(ComponentKind::Sensor, sensor),
            Vec::<String>::new()
        );
        let trigger = r##"
name: webhook
parameters_schema:
  type: object
  properties:
    url: {type: string, pattern: "^/[a-z]+$"}
    kind: {$ref: "#/definitions/kind"}
  required: [url]
  definitions:
    kind: {type: string, enum: [a, b]}
payload_schema: {type: object}
"##;
        assert_eq!(
            messages(ComponentKind::Trigger, trigger),
            Vec::<String>::new()
        );
        // Attune's own spellings.
        let attune = "ref: p.echo\nparameters:\n  message: {type: string, required: true}\noutput:\n  stdout: {type: string}\n";
        assert_eq!(action(attune), Vec::<String>::new());
    }

    #[test]
    fn unknown_type_names_the_file_field_and_the_types() {
        let found = report_of(
            "actions/post.yaml",
            "name: post\nparameters:\n  channel: {type: stringa}\n",
        );
        assert_eq!(
            found,
            [
                "actions/post.yaml: parameters.channel.type: \"stringa\" is not a JSON Schema \
              type (one of array, boolean, integer, null, number, object, string)"
            ]
        );
        assert_eq!(
            action(
                "parameters:\n  a: {type: [string, strin]}\n  b: {type: raw_string}\n  c: {type: 5}\n"
            ),
            [
                "parameters.a.type[1]: \"strin\" is not a JSON Schema type (one of array, \
                 boolean, integer, null, number, object, string)",
                "parameters.b.type: \"raw_string\" is not a JSON Schema type (one of array, \
                 boolean, integer, null, number, object, string); StackStorm's raw_string is \
                 not supported, use string",
                "parameters.c.type: expected a type name or a list of type names, found 5",
            ]
        );
    }

    /// The issues the pack hook adds for one action file.
    fn report_of(file: &str, text: &str) -> Vec<String> {
        let dir = tempfile::tempdir().unwrap();
        let pack = PackDir::open(dir.path()).unwrap();
        let mut loaded = LoadedPack {
            components: vec![component(ComponentKind::Action, file, text)],
            ..LoadedPack::default()
        };
        report(&mut loaded, &pack, PackReadLimits::default().component());
        loaded.errors.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn unknown_keys_are_named_with_a_suggestion() {
        assert_eq!(
            action("parameters:\n  channel: {typ: string, requried: true, colour: red}\n"),
            [
                "parameters.channel.colour: unknown key (a definition takes JSON Schema draft 4 \
                 keys and StackStorm's secret, required, immutable and position)",
                "parameters.channel.requried: unknown key (did you mean `required`?)",
                "parameters.channel.typ: unknown key (did you mean `type`?)",
            ]
        );
        // Deep inside `items` and `properties`, through the meta-schema's anyOf.
        assert_eq!(
            action(
                "parameters:\n  hosts:\n    type: array\n    items: {type: string, minLenght: 1}\n  \
                 opts:\n    type: object\n    properties:\n      x: {type: integer, maximun: 3}\n"
            ),
            [
                "parameters.hosts.items.minLenght: unknown key (did you mean `minLength`?)",
                "parameters.opts.properties.x.maximun: unknown key (did you mean `maximum`?)",
            ]
        );
    }

    #[test]
    fn defaults_must_fit_their_definition() {
        assert_eq!(
            action(
                "parameters:\n  level: {type: string, enum: [info, warning], default: critical}\n"
            ),
            [
                "parameters.level.default: \"critical\" is not valid under its own definition: \
              \"critical\" is not one of \"info\" or \"warning\""
            ]
        );
        let found = action("parameters:\n  count: {type: integer, default: ten}\n");
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(
            found[0].starts_with(
                "parameters.count.default: \"ten\" is not valid under its own definition: "
            ),
            "{found:?}"
        );
        let found = action(
            "parameters:\n  opts:\n    type: object\n    properties:\n      n: {type: integer, minimum: 1, default: 0}\n",
        );
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(
            found[0].starts_with("parameters.opts.properties.n.default: 0 is not valid"),
            "{found:?}"
        );
        let found = action(
            "parameters:\n  opts: {type: object, default: {a: 1}, properties: {a: {type: string}}}\n",
        );
        assert!(
            found[0].contains("default: {\"a\":1} is not valid under its own definition: a: "),
            "{found:?}"
        );
    }

    #[test]
    fn other_meta_schema_violations() {
        let found = action(
            "parameters:\n  a: {type: string, required: \"yes\"}\n  b: {type: string, minLength: -1}\n  \
             c: {type: string, pattern: \"(unclosed\"}\n  d: {type: string, position: 0}\n  \
             e: {type: string, position: 0}\n  f: string\n  g:\n",
        );
        assert_eq!(found.len(), 5, "{found:#?}");
        assert_eq!(
            found[0],
            "parameters.a.required: expected true or false (or, for an object, a list of \
             property names), found \"yes\""
        );
        assert!(
            found[1].starts_with("parameters.b.minLength: -1 is less than the minimum of 0"),
            "{found:?}"
        );
        assert!(found[2].starts_with("parameters.c.pattern: "), "{found:?}");
        assert_eq!(
            found[3],
            "parameters.e.position: 0 is also the position of parameter `d`; positions must be unique"
        );
        assert_eq!(
            found[4],
            "parameters.f: expected a mapping (a JSON Schema definition), found a string"
        );
    }

    #[test]
    fn remote_references_are_refused_and_never_fetched() {
        assert_eq!(
            action(
                "parameters:\n  a: {$ref: \"https://example.com/schema.json\"}\n  b: {$ref: \"other.json#/x\"}\n"
            ),
            [
                "parameters.a.$ref: \"https://example.com/schema.json\" points outside this \
                 schema; references are never fetched, only local ones (\"#/definitions/...\") \
                 are allowed",
                "parameters.b.$ref: \"other.json#/x\" points outside this schema; references \
                 are never fetched, only local ones (\"#/definitions/...\") are allowed",
            ]
        );
        // An `id` cannot turn a local-looking reference into a fetch either.
        let found = action(
            "parameters:\n  a:\n    id: \"http://127.0.0.1:9/base.json\"\n    $ref: \"#/definitions/missing\"\n",
        );
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(
            found[0].starts_with("parameters.a: the schema cannot be used: "),
            "{found:?}"
        );
    }

    #[test]
    fn config_schemas() {
        let parse = |text: &str| -> Vec<String> {
            config_schema_problems(&yaml::parse(text).unwrap())
                .iter()
                .map(ToString::to_string)
                .collect()
        };
        assert_eq!(
            parse(
                "api_token: {type: string, secret: true, required: true}\nregion: {type: string, default: us-east-1}\n"
            ),
            Vec::<String>::new()
        );
        for empty in ["", "{}\n", "# nothing\n"] {
            assert_eq!(
                parse(empty),
                [
                    "the file is empty; expected a mapping of option names to their definitions \
                  (delete the file if the pack has no configuration)"
                ],
                "{empty:?}"
            );
        }
        assert_eq!(
            parse("- a\n"),
            ["expected a mapping of option names to their definitions, found a list"]
        );
        assert_eq!(
            parse("api_token: {type: string, scret: true}\n"),
            ["api_token.scret: unknown key (did you mean `secret`?)"]
        );
    }

    #[test]
    fn the_hook_reports_files_of_the_pack() {
        let dir = tempfile::tempdir().unwrap();
        let write = |rel: &str, text: &str| {
            let path = dir.path().join(rel);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
        };
        write("config.schema.yaml", "");
        write(
            "actions/post.yaml",
            "name: post\nrunner_type: local-shell-cmd\nparameters:\n  channel: {type: stringa}\n",
        );
        write(
            "sensors/watch.yaml",
            "class_name: Watch\nentry_point: watch.py\ntrigger_types:\n  - name: ok\n  - name: bad\n    payload_schema: {type: object, properties: {p: {tipe: string}}}\n",
        );
        write(
            "triggers/t.yaml",
            "name: t\nparameters_schema: {type: object, properties: {n: {type: integer, default: x}}}\n",
        );
        let pack = PackDir::open(dir.path()).unwrap();
        let loaded = super::super::load(&pack, "p", PackReadLimits::default().component());
        let errors: Vec<String> = loaded.errors.iter().map(ToString::to_string).collect();
        assert_eq!(
            errors,
            [
                "triggers/t.yaml: parameters_schema.properties.n.default: \"x\" is not valid \
                 under its own definition: \"x\" is not of type \"integer\"",
                "actions/post.yaml: parameters.channel.type: \"stringa\" is not a JSON Schema \
                 type (one of array, boolean, integer, null, number, object, string)",
                "sensors/watch.yaml: trigger_types[1].payload_schema.properties.p.tipe: unknown \
                 key (did you mean `type`?)",
                "config.schema.yaml: the file is empty; expected a mapping of option names to \
                 their definitions (delete the file if the pack has no configuration)",
            ]
        );
    }
}
