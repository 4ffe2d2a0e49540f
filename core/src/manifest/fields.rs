//! Reads the top-level keys of `pack.yaml` into a [`Manifest`], reconciling canonical
//! and legacy spellings and collecting every issue in the [`Ctx`].

use std::collections::{BTreeMap, HashMap};

use semver::Version;
use serde_yaml::{Mapping, Value};

use super::reader::{Ctx, Seg, get, key_text, yaml_to_json};
use super::requirement::{PackDependency, RuntimeRequirement};
use super::testing::parse_testing;
use super::{MAX_PACK_REF_LEN, Manifest, is_valid_pack_ref};

/// Keys read into typed fields; everything else goes to `Manifest::extra`.
pub(super) const KNOWN_KEYS: &[&str] = &[
    "ref",
    "label",
    "name",
    "description",
    "version",
    "conf_schema",
    "config_schema",
    "config",
    "meta",
    "metadata",
    "tags",
    "keywords",
    "runtime_deps",
    "dependencies",
    "python",
    "python_versions",
    "nodejs",
    "attune_version",
    "testing",
    "author",
    "email",
    "license",
    "homepage",
    "repository",
    "use_case",
    "contributors",
    "system",
    "enabled",
    "stackstorm_version",
];

/// Keys of the object form of `dependencies` (the index builder's shape).
const DEPENDENCY_OBJECT_KEYS: &[&str] = &[
    "attune_version",
    "python_version",
    "nodejs_version",
    "packs",
];

/// Reads a manifest; `None` when there are errors (they are in `cx`). `dir_name` is
/// the name of the pack's directory, when it has a meaningful one (see
/// [`Manifest::parse`]).
pub(super) fn read_manifest(
    map: &Mapping,
    dir_name: Option<&str>,
    cx: &mut Ctx<'_>,
) -> Option<Manifest> {
    let name = optional_string(map, "name", cx);
    let label = optional_string(map, "label", cx);
    let label = reconcile(
        ("label", label),
        ("name", name.clone()),
        |s| format!("\"{s}\""),
        cx,
    );
    let pack_ref = read_ref(map, name.as_deref(), dir_name, cx);
    if label.as_deref().is_some_and(|l| l.trim().is_empty()) {
        cx.error("label", "must not be empty");
    }
    let description = optional_string(map, "description", cx);
    let version = read_version(map, cx);

    let conf_schema = reconcile(
        ("conf_schema", optional_object(map, "conf_schema", cx)),
        ("config_schema", optional_object(map, "config_schema", cx)),
        show_json,
        cx,
    );
    let config = optional_object(map, "config", cx);
    let meta = reconcile(
        ("meta", optional_object(map, "meta", cx)),
        ("metadata", optional_object(map, "metadata", cx)),
        show_json,
        cx,
    );
    let tags = reconcile(
        ("tags", optional_string_list(map, "tags", cx)),
        ("keywords", optional_string_list(map, "keywords", cx)),
        |list| format!("{list:?}"),
        cx,
    );
    let runtime_deps = optional_string_list(map, "runtime_deps", cx);

    let deps = read_dependencies(map, pack_ref.as_deref(), cx);
    let python = pick_runtime(
        vec![
            ("python", optional_runtime(map, "python", cx)),
            ("dependencies.python_version", deps.python),
            ("python_versions", read_python_versions(map, cx)),
        ],
        cx,
    );
    let nodejs = pick_runtime(
        vec![
            ("nodejs", optional_runtime(map, "nodejs", cx)),
            ("dependencies.nodejs_version", deps.nodejs),
        ],
        cx,
    );
    let attune_version = pick_runtime(
        vec![
            (
                "attune_version",
                optional_runtime(map, "attune_version", cx),
            ),
            ("dependencies.attune_version", deps.attune_version),
        ],
        cx,
    );
    let testing = get(map, "testing").and_then(|v| parse_testing(v, cx));

    let author = optional_string(map, "author", cx);
    let email = optional_string(map, "email", cx);
    let license = optional_string(map, "license", cx);
    let homepage = optional_string(map, "homepage", cx);
    let repository = optional_string(map, "repository", cx);
    let use_case = optional_string(map, "use_case", cx);
    let contributors = optional_string_list(map, "contributors", cx);
    let system = get(map, "system").and_then(|v| cx.bool(v, "system"));
    let enabled = get(map, "enabled").and_then(|v| cx.bool(v, "enabled"));
    let stackstorm_version = read_stackstorm_version(map, cx);
    let extra = read_extra(map, cx);

    if !cx.errors.is_empty() {
        return None;
    }
    let pack_ref = pack_ref?;
    Some(Manifest {
        label: label.unwrap_or_else(|| pack_ref.clone()),
        pack_ref,
        description,
        version: version?,
        conf_schema: conf_schema.unwrap_or_else(empty_object),
        config: config.unwrap_or_else(empty_object),
        meta: meta.unwrap_or_else(empty_object),
        tags: tags.unwrap_or_default(),
        runtime_deps: runtime_deps.unwrap_or_default(),
        dependencies: deps.packs,
        python,
        nodejs,
        attune_version,
        testing,
        warnings: Vec::new(),
        author,
        email,
        license,
        homepage,
        repository,
        use_case,
        contributors: contributors.unwrap_or_default(),
        system,
        enabled,
        stackstorm_version,
        extra,
    })
}

fn empty_object() -> serde_json::Value {
    serde_json::Value::Object(serde_json::Map::new())
}

fn optional_string(map: &Mapping, key: &str, cx: &mut Ctx<'_>) -> Option<String> {
    get(map, key).and_then(|v| cx.string(v, key))
}

fn optional_string_list(map: &Mapping, key: &str, cx: &mut Ctx<'_>) -> Option<Vec<String>> {
    get(map, key).and_then(|v| cx.string_list(v, key))
}

fn optional_object(map: &Mapping, key: &str, cx: &mut Ctx<'_>) -> Option<serde_json::Value> {
    get(map, key).and_then(|v| cx.json_object(v, key))
}

/// Keeps the canonical value, or the legacy one; both present with different values is
/// an error naming both keys.
fn reconcile<T: PartialEq>(
    (canonical_key, canonical): (&str, Option<T>),
    (legacy_key, legacy): (&str, Option<T>),
    show: impl Fn(&T) -> String,
    cx: &mut Ctx<'_>,
) -> Option<T> {
    match (canonical, legacy) {
        (Some(c), Some(l)) if c != l => {
            cx.error(
                canonical_key,
                format!(
                    "`{canonical_key}` ({}) conflicts with legacy key `{legacy_key}` ({}); \
                     remove `{legacy_key}` or make them equal",
                    show(&c),
                    show(&l)
                ),
            );
            Some(c)
        }
        (Some(c), _) => Some(c),
        (None, l) => l,
    }
}

/// Compact JSON for conflict messages, shortened so one issue stays one line.
fn show_json(value: &serde_json::Value) -> String {
    let text = value.to_string();
    if text.chars().count() <= 60 {
        text
    } else {
        format!("{}...", text.chars().take(57).collect::<String>())
    }
}

/// `ref`; without it, StackStorm's rule: the directory name when it is a valid ref,
/// else `name` when it is one, with a warning saying which was used.
fn read_ref(
    map: &Mapping,
    name: Option<&str>,
    dir_name: Option<&str>,
    cx: &mut Ctx<'_>,
) -> Option<String> {
    let Some(value) = get(map, "ref") else {
        if let Some(dir) = dir_name.filter(|d| is_valid_pack_ref(d)) {
            cx.warn(
                "ref",
                format!(
                    "missing; using the directory name \"{dir}\" as the pack ref \
                     (StackStorm's rule; set ref to choose it)"
                ),
            );
            return Some(dir.to_string());
        }
        let no_dir = match dir_name {
            Some(dir) => format!("the directory name \"{dir}\" is not a valid pack ref"),
            None => "the directory has no name to use".to_string(),
        };
        return match name {
            Some(name) if is_valid_pack_ref(name) => {
                cx.warn(
                    "ref",
                    format!(
                        "missing; using `name` (\"{name}\") as the pack ref ({no_dir}; set ref \
                         to choose it)"
                    ),
                );
                Some(name.to_string())
            }
            Some(name) => {
                let message = match dir_name {
                    Some(dir) => format!(
                        "required key is missing, and neither the directory name \"{dir}\" nor \
                         `name` (\"{name}\") is a valid ref to use instead"
                    ),
                    None => format!(
                        "required key is missing, and `name` (\"{name}\") is not a valid ref to \
                         use instead"
                    ),
                };
                cx.error("ref", message);
                None
            }
            None => {
                cx.error("ref", "required key is missing");
                None
            }
        };
    };
    let pack_ref = cx.string(value, "ref")?;
    if !is_valid_pack_ref(&pack_ref) {
        cx.error(
            "ref",
            format!(
                "invalid pack ref \"{pack_ref}\": must match ^[a-z][a-z0-9_-]+$ \
                 (lowercase letter first, then lowercase letters, digits, `_` or `-`; no dots) \
                 and be 2 to {MAX_PACK_REF_LEN} characters long"
            ),
        );
        return None;
    }
    Some(pack_ref)
}

/// StackStorm's `stackstorm_version`, kept as written once it parses as a version
/// requirement (`>=3.0.0`, `>=2.9.0, <4`).
fn read_stackstorm_version(map: &Mapping, cx: &mut Ctx<'_>) -> Option<String> {
    let key = "stackstorm_version";
    let value = get(map, key)?;
    let (text, _) = cx.version_text(value, key, &[Seg::Key(key)])?;
    match RuntimeRequirement::parse(&text) {
        Ok(_) => Some(text),
        Err(problem) => {
            cx.error(
                key,
                format!(
                    "\"{text}\" is not a version specifier ({problem}); write e.g. \">=3.0.0\" \
                     or \">=3.0.0, <4\""
                ),
            );
            None
        }
    }
}

fn read_version(map: &Mapping, cx: &mut Ctx<'_>) -> Option<Version> {
    let Some(value) = get(map, "version") else {
        cx.error("version", "required key is missing");
        return None;
    };
    let (text, was_number) = cx.version_text(value, "version", &[Seg::Key("version")])?;
    match parse_pack_version(text.trim()) {
        Ok((version, padded)) => {
            if padded {
                let hint = if was_number {
                    " (quote it: unquoted, YAML reads it as a number)"
                } else {
                    ""
                };
                cx.warn(
                    "version",
                    format!("\"{text}\" is not a full MAJOR.MINOR.PATCH version; read as {version}{hint}"),
                );
            }
            Some(version)
        }
        Err(problem) => {
            cx.error("version", problem.to_string());
            None
        }
    }
}

/// Strict SemVer, except that `1` and `1.0` are padded (the `bool` says so).
fn parse_pack_version(text: &str) -> Result<(Version, bool), NotSemanticVersion> {
    if let Ok(version) = Version::parse(text) {
        return Ok((version, false));
    }
    let components: Vec<&str> = text.split('.').collect();
    let short_numeric = components.len() <= 2
        && components
            .iter()
            .all(|c| !c.is_empty() && c.bytes().all(|b| b.is_ascii_digit()));
    if short_numeric {
        let padded = format!("{text}{}", ".0".repeat(3 - components.len()));
        if let Ok(version) = Version::parse(&padded) {
            return Ok((version, true));
        }
    }
    Err(NotSemanticVersion {
        text: text.to_string(),
    })
}

#[derive(Debug, thiserror::Error)]
#[error(
    "\"{text}\" is not a semantic version (expected MAJOR.MINOR.PATCH[-prerelease][+build], e.g. 1.0.0)"
)]
struct NotSemanticVersion {
    text: String,
}

/// What `dependencies` contributes.
#[derive(Default)]
struct Dependencies {
    packs: Vec<PackDependency>,
    python: Option<RuntimeRequirement>,
    nodejs: Option<RuntimeRequirement>,
    attune_version: Option<RuntimeRequirement>,
}

/// `dependencies`: a list of pack entries, or the index builder's object form
/// `{attune_version?, python_version?, nodejs_version?, packs: [...]}`.
fn read_dependencies(map: &Mapping, own_ref: Option<&str>, cx: &mut Ctx<'_>) -> Dependencies {
    let mut deps = Dependencies::default();
    match get(map, "dependencies") {
        None => {}
        Some(Value::Sequence(items)) => {
            deps.packs = read_pack_list(items, "dependencies", own_ref, cx)
        }
        Some(Value::Mapping(object)) => {
            for key in object.keys() {
                let key = key_text(key).unwrap_or_else(|_| "?".to_string());
                if !DEPENDENCY_OBJECT_KEYS.contains(&key.as_str()) {
                    cx.warn(
                        format!("dependencies.{key}"),
                        format!(
                            "unknown key ignored (known keys: {})",
                            DEPENDENCY_OBJECT_KEYS.join(", ")
                        ),
                    );
                }
            }
            let runtime = |key: &str, cx: &mut Ctx<'_>| {
                get(object, key).and_then(|v| {
                    read_runtime(
                        v,
                        &format!("dependencies.{key}"),
                        &[Seg::Key("dependencies"), Seg::Key(key)],
                        cx,
                    )
                })
            };
            deps.python = runtime("python_version", cx);
            deps.nodejs = runtime("nodejs_version", cx);
            deps.attune_version = runtime("attune_version", cx);
            match get(object, "packs") {
                None => {}
                Some(Value::Sequence(items)) => {
                    deps.packs = read_pack_list(items, "dependencies.packs", own_ref, cx);
                }
                Some(other) => {
                    cx.wrong_type("dependencies.packs", "a list of pack dependencies", other)
                }
            }
        }
        Some(other) => cx.wrong_type(
            "dependencies",
            "a list of pack dependencies or a mapping with `packs`",
            other,
        ),
    }
    deps
}

fn read_pack_list(
    items: &[Value],
    key: &str,
    own_ref: Option<&str>,
    cx: &mut Ctx<'_>,
) -> Vec<PackDependency> {
    let mut packs = Vec::new();
    let mut seen: HashMap<String, String> = HashMap::new();
    for (i, item) in items.iter().enumerate() {
        let item_key = format!("{key}[{i}]");
        let Some(entry) = cx.string(item, &item_key) else {
            continue;
        };
        let dep = match PackDependency::parse(&entry) {
            Ok(dep) => dep,
            Err(problem) => {
                cx.error(&item_key, problem.to_string());
                continue;
            }
        };
        if own_ref == Some(dep.pack_ref.as_str()) {
            cx.error(
                &item_key,
                format!("pack `{}` cannot depend on itself", dep.pack_ref),
            );
            continue;
        }
        if let Some(first) = seen.get(&dep.pack_ref) {
            cx.error(
                &item_key,
                format!(
                    "duplicate dependency on pack `{}` (also in {first})",
                    dep.pack_ref
                ),
            );
            continue;
        }
        seen.insert(dep.pack_ref.clone(), item_key);
        packs.push(dep);
    }
    packs
}

fn optional_runtime(map: &Mapping, key: &str, cx: &mut Ctx<'_>) -> Option<RuntimeRequirement> {
    get(map, key).and_then(|v| read_runtime(v, key, &[Seg::Key(key)], cx))
}

/// A runtime requirement written as a string, or as a YAML number (`python: 3.10`
/// keeps its text "3.10" rather than the float 3.1).
fn read_runtime(
    value: &Value,
    key: &str,
    path: &[Seg<'_>],
    cx: &mut Ctx<'_>,
) -> Option<RuntimeRequirement> {
    let (text, _) = cx.version_text(value, key, path)?;
    RuntimeRequirement::parse(&text)
        .map_err(|problem| cx.error(key, problem.to_string()))
        .ok()
}

/// What StackStorm accepts in `python_versions`.
const PYTHON_VERSION_FAMILIES: &[&str] = &["2", "3"];

/// StackStorm's `python_versions: ["2", "3"]`: OR-ed version families.
fn read_python_versions(map: &Mapping, cx: &mut Ctx<'_>) -> Option<RuntimeRequirement> {
    let value = get(map, "python_versions")?;
    let Value::Sequence(items) = value else {
        cx.wrong_type(
            "python_versions",
            "a list of versions such as [\"3\"]",
            value,
        );
        return None;
    };
    let mut entries: Vec<String> = Vec::new();
    let mut usable = true;
    for (i, item) in items.iter().enumerate() {
        let key = format!("python_versions[{i}]");
        let path = [Seg::Key("python_versions"), Seg::Index(i)];
        let Some((text, _)) = cx.version_text(item, &key, &path) else {
            usable = false;
            continue;
        };
        let family = text.trim();
        if !PYTHON_VERSION_FAMILIES.contains(&family) {
            cx.error(
                &key,
                format!(
                    "\"{text}\" is not allowed: StackStorm accepts only \"2\" and \"3\" here \
                     (use `python` for a finer requirement such as \">=3.9\")"
                ),
            );
            usable = false;
        } else if entries.iter().any(|e| e == family) {
            cx.error(&key, format!("\"{family}\" is listed twice"));
            usable = false;
        } else {
            entries.push(family.to_string());
        }
    }
    if !usable {
        return None;
    }
    RuntimeRequirement::from_version_families(&entries)
        .map_err(|problem| cx.error("python_versions", problem.to_string()))
        .ok()
}

/// Keeps the first requirement present; another with a different meaning is an error.
fn pick_runtime(
    candidates: Vec<(&str, Option<RuntimeRequirement>)>,
    cx: &mut Ctx<'_>,
) -> Option<RuntimeRequirement> {
    let mut present = candidates
        .into_iter()
        .filter_map(|(key, req)| req.map(|req| (key, req)));
    let (chosen_key, chosen) = present.next()?;
    for (key, other) in present {
        if other.any_of != chosen.any_of {
            cx.error(
                chosen_key,
                format!(
                    "`{chosen_key}` (\"{}\") conflicts with `{key}` (\"{}\"); keep only one",
                    chosen.raw, other.raw
                ),
            );
        }
    }
    Some(chosen)
}

/// Unknown top-level keys, as JSON. Content JSON cannot hold is a warning, not an
/// error, because unknown keys are not ours to judge.
fn read_extra(map: &Mapping, cx: &mut Ctx<'_>) -> BTreeMap<String, serde_json::Value> {
    let mut extra = BTreeMap::new();
    for (key, value) in map {
        let key = match key_text(key) {
            Ok(key) => key,
            Err(message) => {
                cx.warn("", format!("top-level key ignored: {message}"));
                continue;
            }
        };
        if KNOWN_KEYS.contains(&key.as_str()) {
            continue;
        }
        match yaml_to_json(value) {
            Ok(json) => {
                extra.insert(key, json);
            }
            Err(message) => cx.warn(key, format!("value ignored: {message}")),
        }
    }
    extra
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pack_versions() {
        let ok = [
            ("1.0.0", "1.0.0", false),
            ("2.1.0-beta.1+build.7", "2.1.0-beta.1+build.7", false),
            ("1.0", "1.0.0", true),
            ("1", "1.0.0", true),
            ("10.20", "10.20.0", true),
        ];
        for (text, expected, padded) in ok {
            let (version, was_padded) = parse_pack_version(text).unwrap();
            assert_eq!(version, Version::parse(expected).unwrap(), "{text}");
            assert_eq!(was_padded, padded, "{text}");
        }
        for bad in [
            "", "v1.0.0", "1.0.0.0", "1.0-beta", "01.0", "latest", "1..0", "1.0.",
        ] {
            assert!(parse_pack_version(bad).is_err(), "{bad}");
        }
    }
}
