//! YAML text to JSON, with messages fit for an [`super::Issue`].

use serde_json::{Map, Number, Value as Json};
use serde_yaml::Value as Yaml;

/// Parses one YAML document into JSON. Merge keys (`<<`) are applied and tags dropped.
/// The error message carries the line and column for syntax errors.
pub(super) fn parse(text: &str) -> Result<Json, YamlProblem> {
    crate::yaml_limits::check_current(text)?;
    let mut value: Yaml = serde_yaml::from_str(text).map_err(YamlProblem::Syntax)?;
    value.apply_merge().map_err(YamlProblem::MergeKey)?;
    to_json(&value, "")
}

/// Why a component file is not a usable YAML document; the display is the message of
/// the issue on that file.
#[derive(Debug, thiserror::Error)]
pub(super) enum YamlProblem {
    #[error(transparent)]
    Limits(#[from] crate::yaml_limits::YamlLimitError),
    #[error("invalid YAML: {0}")]
    Syntax(#[source] serde_yaml::Error),
    #[error("invalid YAML merge key (<<): {0}")]
    MergeKey(#[source] serde_yaml::Error),
    /// `at` is the path of the value in the document, or `document`.
    #[error("{at}: the number {number} (NaN or infinite) cannot be represented in JSON")]
    NumberNotJson { at: String, number: String },
    #[error("{at}: mapping keys must be scalars (found a list, mapping or tagged key)")]
    NonScalarKey { at: String },
}

fn at(path: &str) -> String {
    if path.is_empty() { "document" } else { path }.to_string()
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

fn to_json(value: &Yaml, path: &str) -> Result<Json, YamlProblem> {
    Ok(match value {
        Yaml::Null => Json::Null,
        Yaml::Bool(b) => Json::Bool(*b),
        Yaml::Number(n) => {
            if let Some(i) = n.as_i64() {
                Json::from(i)
            } else if let Some(u) = n.as_u64() {
                Json::from(u)
            } else {
                let f = n.as_f64().unwrap_or(f64::NAN);
                match Number::from_f64(f) {
                    Some(n) => Json::Number(n),
                    None => {
                        return Err(YamlProblem::NumberNotJson {
                            at: at(path),
                            number: n.to_string(),
                        });
                    }
                }
            }
        }
        Yaml::String(s) => Json::String(s.clone()),
        Yaml::Sequence(items) => Json::Array(
            items
                .iter()
                .enumerate()
                .map(|(i, v)| to_json(v, &format!("{path}[{i}]")))
                .collect::<Result<_, _>>()?,
        ),
        Yaml::Mapping(map) => {
            let mut out = Map::new();
            for (k, v) in map {
                let key = match k {
                    Yaml::String(s) => s.clone(),
                    Yaml::Number(n) => n.to_string(),
                    Yaml::Bool(b) => b.to_string(),
                    Yaml::Null => "null".to_string(),
                    _ => {
                        return Err(YamlProblem::NonScalarKey { at: at(path) });
                    }
                };
                let converted = to_json(v, &join(path, &key))?;
                out.insert(key, converted);
            }
            Json::Object(out)
        }
        Yaml::Tagged(tagged) => to_json(&tagged.value, path)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn converts_scalars_keys_and_merges() {
        let v = parse("base: &b {x: 1}\nitem:\n  <<: *b\n  y: 2.5\n1: true\nn: ~\n").unwrap();
        assert_eq!(
            v,
            serde_json::json!({"base": {"x": 1}, "item": {"x": 1, "y": 2.5}, "1": true, "n": null})
        );
    }

    #[test]
    fn syntax_errors_carry_the_line() {
        let e = parse("a: 1\nb: [unclosed\nc: 3\n").unwrap_err().to_string();
        assert!(e.starts_with("invalid YAML: "), "{e}");
        assert!(e.contains("line "), "{e}");
    }

    #[test]
    fn duplicate_keys_and_complex_keys_are_errors() {
        assert!(parse("a: 1\na: 2\n").is_err());
        let e = parse("x:\n  ? [1, 2]\n  : v\n").unwrap_err().to_string();
        assert!(e.contains("x: mapping keys must be scalars"), "{e}");
        let e = parse("x: .nan\n").unwrap_err().to_string();
        assert!(e.contains("cannot be represented in JSON"), "{e}");
    }
}
