//! Helpers that read loosely-typed YAML values while collecting every problem, instead
//! of stopping at the first one as a typed `serde` derive would.

use std::path::{Component, Path, PathBuf};

use serde::Deserialize;
use serde::de::{DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_yaml::{Mapping, Value};

use super::ManifestIssue;

/// Collects issues for one file while a manifest is read.
pub(super) struct Ctx<'a> {
    /// The manifest text, kept to recover how numbers were written (see [`number_text`]).
    pub text: &'a str,
    pub file: PathBuf,
    pub errors: Vec<ManifestIssue>,
    pub warnings: Vec<ManifestIssue>,
}

impl<'a> Ctx<'a> {
    pub fn new(text: &'a str, file: &Path) -> Self {
        Ctx {
            text,
            file: file.to_path_buf(),
            errors: Vec::new(),
            warnings: Vec::new(),
        }
    }

    pub fn error(&mut self, key: impl Into<String>, message: impl Into<String>) {
        let issue = self.issue(key.into(), message.into());
        self.errors.push(issue);
    }

    pub fn warn(&mut self, key: impl Into<String>, message: impl Into<String>) {
        let issue = self.issue(key.into(), message.into());
        self.warnings.push(issue);
    }

    fn issue(&self, key: String, message: String) -> ManifestIssue {
        ManifestIssue {
            file: self.file.clone(),
            key,
            message,
        }
    }

    /// Reports a value of the wrong type.
    pub fn wrong_type(&mut self, key: &str, expected: &str, found: &Value) {
        self.error(
            key,
            format!("expected {expected}, found {}", type_name(found)),
        );
    }

    /// A string value; `None` (with an error) for anything else.
    pub fn string(&mut self, value: &Value, key: &str) -> Option<String> {
        match value {
            Value::String(s) => Some(s.clone()),
            other => {
                self.wrong_type(key, "a string", other);
                None
            }
        }
    }

    pub fn bool(&mut self, value: &Value, key: &str) -> Option<bool> {
        match value {
            Value::Bool(b) => Some(*b),
            other => {
                self.wrong_type(key, "a boolean (true or false)", other);
                None
            }
        }
    }

    /// A list of strings; each bad element is reported as `key[i]`. Returns the good
    /// elements when the value is a list at all.
    pub fn string_list(&mut self, value: &Value, key: &str) -> Option<Vec<String>> {
        let Value::Sequence(items) = value else {
            self.wrong_type(key, "a list of strings", value);
            return None;
        };
        let mut out = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            if let Some(s) = self.string(item, &format!("{key}[{i}]")) {
                out.push(s);
            }
        }
        Some(out)
    }

    /// A mapping converted to a JSON object.
    pub fn json_object(&mut self, value: &Value, key: &str) -> Option<serde_json::Value> {
        if !matches!(untag(value), Value::Mapping(_)) {
            self.wrong_type(key, "a mapping (object)", value);
            return None;
        }
        match yaml_to_json(value) {
            Ok(json) => Some(json),
            Err(problem) => {
                self.error(key, problem.to_string());
                None
            }
        }
    }

    /// A scalar that may legitimately be written as a YAML number (`version: 1.0`,
    /// `python: 3.10`): returns the text as the author wrote it and whether it was a
    /// number. `path` locates the value in the document for [`number_text`].
    pub fn version_text(
        &mut self,
        value: &Value,
        key: &str,
        path: &[Seg<'_>],
    ) -> Option<(String, bool)> {
        match value {
            Value::String(s) => Some((s.clone(), false)),
            Value::Number(n) => {
                let text = number_text(self.text, path).unwrap_or_else(|| n.to_string());
                Some((text, true))
            }
            other => {
                self.wrong_type(key, "a version string", other);
                None
            }
        }
    }
}

/// Looks a key up, treating an explicit `null` (`key:` with nothing after it) as absent.
pub(super) fn get<'v>(map: &'v Mapping, key: &str) -> Option<&'v Value> {
    map.get(key).filter(|v| !v.is_null())
}

/// Describes a value's type for error messages.
pub(super) fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Sequence(_) => "a list",
        Value::Mapping(_) => "a mapping",
        Value::Tagged(_) => "a tagged value",
    }
}

fn untag(value: &Value) -> &Value {
    match value {
        Value::Tagged(tagged) => untag(&tagged.value),
        other => other,
    }
}

/// Converts YAML to JSON. Scalar mapping keys become strings (`1: x` → `"1": x`) and
/// YAML tags are dropped (the tagged value is kept), since JSON has neither.
pub(super) fn yaml_to_json(value: &Value) -> Result<serde_json::Value, ValueProblem> {
    use serde_json::Value as J;
    Ok(match value {
        Value::Null => J::Null,
        Value::Bool(b) => J::Bool(*b),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                J::from(i)
            } else if let Some(u) = n.as_u64() {
                J::from(u)
            } else {
                let f = n.as_f64().unwrap_or(f64::NAN);
                serde_json::Number::from_f64(f)
                    .map(J::Number)
                    .ok_or_else(|| ValueProblem::NumberNotJson(n.to_string()))?
            }
        }
        Value::String(s) => J::String(s.clone()),
        Value::Sequence(items) => {
            J::Array(items.iter().map(yaml_to_json).collect::<Result<_, _>>()?)
        }
        Value::Mapping(map) => {
            let mut object = serde_json::Map::new();
            for (k, v) in map {
                object.insert(key_text(k)?, yaml_to_json(v)?);
            }
            J::Object(object)
        }
        Value::Tagged(tagged) => yaml_to_json(&tagged.value)?,
    })
}

/// The text of a scalar mapping key.
pub(super) fn key_text(key: &Value) -> Result<String, ValueProblem> {
    match untag(key) {
        Value::String(s) => Ok(s.clone()),
        Value::Number(n) => Ok(n.to_string()),
        Value::Bool(b) => Ok(b.to_string()),
        Value::Null => Ok("null".to_string()),
        other => Err(ValueProblem::NonScalarKey(type_name(other))),
    }
}

/// Checks a path inside the pack: relative, without `..`, not empty.
pub(super) fn check_relative_path(path: &str) -> Result<(), ValueProblem> {
    if path.trim().is_empty() {
        return Err(ValueProblem::EmptyPath);
    }
    // `Path::is_absolute` alone misses `\x` and `C:\x` on Unix; packs are portable.
    let looks_absolute = path.starts_with(['/', '\\'])
        || path.as_bytes().get(1) == Some(&b':')
        || Path::new(path).is_absolute();
    if looks_absolute {
        return Err(ValueProblem::AbsolutePath(path.to_string()));
    }
    let escapes = path.split(['/', '\\']).any(|part| part == "..")
        || Path::new(path)
            .components()
            .any(|c| matches!(c, Component::ParentDir));
    if escapes {
        return Err(ValueProblem::PathEscapes(path.to_string()));
    }
    Ok(())
}

/// Why a YAML value cannot be used as written; the display is the message for the author.
#[derive(Debug, thiserror::Error)]
pub(super) enum ValueProblem {
    #[error("number {0} cannot be represented in JSON")]
    NumberNotJson(String),
    #[error("mapping keys must be scalars, found {0}")]
    NonScalarKey(&'static str),
    #[error("must not be empty")]
    EmptyPath,
    #[error("`{0}` must be a path relative to the pack directory")]
    AbsolutePath(String),
    #[error("`{0}` must not contain `..`")]
    PathEscapes(String),
}

/// One step of a path into the YAML document.
#[derive(Debug, Clone, Copy)]
pub(super) enum Seg<'a> {
    Key(&'a str),
    Index(usize),
}

/// Re-reads the scalar at `path` as text.
///
/// YAML reads `version: 1.10` as the float 1.1 and `python: 3.10` as 3.1; the parsed
/// [`Value`] has lost what the author meant, so the document is read again, keeping the
/// scalar's text. `None` if the path does not lead to a scalar.
pub(super) fn number_text(text: &str, path: &[Seg<'_>]) -> Option<String> {
    Find { path }
        .deserialize(serde_yaml::Deserializer::from_str(text))
        .ok()
        .flatten()
}

struct Find<'p, 'a> {
    path: &'p [Seg<'a>],
}

impl<'de> DeserializeSeed<'de> for Find<'_, '_> {
    type Value = Option<String>;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        match self.path.first() {
            None => String::deserialize(d).map(Some),
            Some(Seg::Key(_)) => d.deserialize_map(self),
            Some(Seg::Index(_)) => d.deserialize_seq(self),
        }
    }
}

impl<'de> Visitor<'de> for Find<'_, '_> {
    type Value = Option<String>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a mapping or a list")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let (Some(Seg::Key(wanted)), rest) = (self.path.first(), &self.path[1..]) else {
            return Ok(None);
        };
        let mut found = None;
        while let Some(key) = map.next_key::<Value>()? {
            if key.as_str() == Some(*wanted) {
                found = map.next_value_seed(Find { path: rest })?;
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(found)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let (Some(Seg::Index(wanted)), rest) = (self.path.first(), &self.path[1..]) else {
            return Ok(None);
        };
        let mut found = None;
        let mut i = 0;
        loop {
            if i == *wanted {
                match seq.next_element_seed(Find { path: rest })? {
                    Some(text) => found = text,
                    None => break,
                }
            } else if seq.next_element::<IgnoredAny>()?.is_none() {
                break;
            }
            i += 1;
        }
        Ok(found)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn number_text_recovers_what_was_written() {
        let text = "version: 1.10\npython: 3.10\nlist: [a, 3.10]\ndeps:\n  python_version: 3.10\n";
        assert_eq!(
            number_text(text, &[Seg::Key("version")]).as_deref(),
            Some("1.10")
        );
        assert_eq!(
            number_text(text, &[Seg::Key("python")]).as_deref(),
            Some("3.10")
        );
        assert_eq!(
            number_text(text, &[Seg::Key("list"), Seg::Index(1)]).as_deref(),
            Some("3.10")
        );
        assert_eq!(
            number_text(text, &[Seg::Key("deps"), Seg::Key("python_version")]).as_deref(),
            Some("3.10")
        );
        assert_eq!(number_text(text, &[Seg::Key("missing")]), None);
        assert_eq!(number_text(text, &[Seg::Key("list")]), None);
    }

    #[test]
    fn relative_paths() {
        for ok in ["tests/run.sh", "run.sh", "./tests/x.py", "tests/..hidden"] {
            assert!(check_relative_path(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "/etc/passwd",
            "../x",
            "tests/../../x",
            "\\x",
            "C:\\x",
            "a\\..\\b",
        ] {
            assert!(check_relative_path(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn yaml_keys_become_strings() {
        let value: Value = serde_yaml::from_str("1: a\ntrue: b\nk: [1, 2.5, null]").unwrap();
        let json = yaml_to_json(&value).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"1": "a", "true": "b", "k": [1, 2.5, null]})
        );
    }
}
