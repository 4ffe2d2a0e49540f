//! StackStorm policy types: a policy with `policy_type` must name one of the built-in
//! types, and its `parameters` must be what that type takes, as StackStorm checks them
//! (unknown parameters and wrong types are errors).
//!
//! | type                      | parameters                                                |
//! |---------------------------|-----------------------------------------------------------|
//! | `action.concurrency`      | `threshold` (integer ≥ 0, required), `action` (`delay` or `cancel`) |
//! | `action.concurrency.attr` | the same, and `attributes` (a list of distinct non-empty strings) |
//! | `action.retry`            | `retry_on` (`failure` or `timeout`, required), `max_retry_count` (integer ≥ 0), `delay` (number ≥ 0) |
//!
//! Attune's own policies (`concurrency`, `rate_limit`, `quotas`, without `policy_type`)
//! are checked by `load`.

use serde_json::{Map, Value};

use super::{ComponentKind, Issue, LoadedPack};

/// What a parameter of a built-in policy type accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Accepts {
    OneOf(&'static [&'static str]),
    NonNegativeInteger,
    NonNegativeNumber,
    DistinctStrings,
}

impl Accepts {
    fn describe(self) -> String {
        match self {
            Accepts::OneOf(values) => format!("one of {}", values.join(", ")),
            Accepts::NonNegativeInteger => "a whole number ≥ 0".into(),
            Accepts::NonNegativeNumber => "a number ≥ 0".into(),
            Accepts::DistinctStrings => "a list of distinct non-empty strings".into(),
        }
    }

    fn accepts(self, value: &Value) -> bool {
        match self {
            Accepts::OneOf(values) => value.as_str().is_some_and(|s| values.contains(&s)),
            Accepts::NonNegativeInteger => value.is_u64(),
            Accepts::NonNegativeNumber => value.as_f64().is_some_and(|n| n >= 0.0),
            Accepts::DistinctStrings => value.as_array().is_some_and(|items| {
                items.iter().enumerate().all(|(i, item)| {
                    item.as_str().is_some_and(|s| !s.is_empty()) && !items[..i].contains(item)
                })
            }),
        }
    }
}

struct Parameter {
    name: &'static str,
    accepts: Accepts,
    required: bool,
}

const fn param(name: &'static str, accepts: Accepts, required: bool) -> Parameter {
    Parameter {
        name,
        accepts,
        required,
    }
}

const CONCURRENCY_ACTIONS: &[&str] = &["delay", "cancel"];

/// The built-in policy types and their parameters.
const POLICY_TYPES: &[(&str, &[Parameter])] = &[
    (
        "action.concurrency",
        &[
            param("action", Accepts::OneOf(CONCURRENCY_ACTIONS), false),
            param("threshold", Accepts::NonNegativeInteger, true),
        ],
    ),
    (
        "action.concurrency.attr",
        &[
            param("action", Accepts::OneOf(CONCURRENCY_ACTIONS), false),
            param("threshold", Accepts::NonNegativeInteger, true),
            param("attributes", Accepts::DistinctStrings, false),
        ],
    ),
    (
        "action.retry",
        &[
            param("retry_on", Accepts::OneOf(&["failure", "timeout"]), true),
            param("max_retry_count", Accepts::NonNegativeInteger, false),
            param("delay", Accepts::NonNegativeNumber, false),
        ],
    ),
];

/// The names of the built-in policy types.
pub fn known_policy_types() -> impl Iterator<Item = &'static str> {
    POLICY_TYPES.iter().map(|(name, _)| *name)
}

/// One problem with a policy's type or parameters.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyProblem {
    #[error("policy_type: '{given}' is not a built-in policy type (known: {known})")]
    UnknownType { given: String, known: String },
    #[error("parameters.{name}: unknown parameter of policy type {policy_type} (known: {known})")]
    UnknownParameter {
        policy_type: &'static str,
        name: String,
        known: String,
    },
    #[error(
        "parameters.{name}: {found} is not allowed for policy type {policy_type}; expected {expected}"
    )]
    WrongValue {
        policy_type: &'static str,
        name: &'static str,
        found: String,
        expected: String,
    },
    #[error("parameters.{name} is required by policy type {policy_type} ({expected})")]
    Missing {
        policy_type: &'static str,
        name: &'static str,
        expected: String,
    },
}

/// Adds the problems of every policy to the pack's errors.
pub(super) fn report(loaded: &mut LoadedPack) {
    let found: Vec<Issue> = loaded
        .of_kind(ComponentKind::Policy)
        .flat_map(|c| {
            let problems = c.definition.as_object().map(problems).unwrap_or_default();
            problems.into_iter().map(|p| Issue {
                file: c.file.clone(),
                message: p.to_string(),
            })
        })
        .collect();
    loaded.errors.extend(found);
}

/// The problems of one policy definition. A `policy_type` or `parameters` of the wrong
/// JSON type was already reported by `load`.
pub fn problems(def: &Map<String, Value>) -> Vec<PolicyProblem> {
    let mut out = Vec::new();
    let Some(given) = def.get("policy_type").and_then(Value::as_str) else {
        return out;
    };
    let given = given.trim();
    let Some((policy_type, parameters)) = POLICY_TYPES.iter().find(|(name, _)| *name == given)
    else {
        out.push(PolicyProblem::UnknownType {
            given: given.to_string(),
            known: known_policy_types().collect::<Vec<_>>().join(", "),
        });
        return out;
    };
    let empty = Map::new();
    let values = match def.get("parameters") {
        None | Some(Value::Null) => &empty,
        Some(Value::Object(values)) => values,
        Some(_) => return out,
    };
    for (name, value) in values {
        match parameters.iter().find(|p| p.name == name) {
            None => out.push(PolicyProblem::UnknownParameter {
                policy_type,
                name: name.clone(),
                known: parameters
                    .iter()
                    .map(|p| p.name)
                    .collect::<Vec<_>>()
                    .join(", "),
            }),
            Some(p) if !p.accepts.accepts(value) => out.push(PolicyProblem::WrongValue {
                policy_type,
                name: p.name,
                found: describe(value),
                expected: p.accepts.describe(),
            }),
            Some(_) => {}
        }
    }
    for p in parameters.iter().filter(|p| p.required) {
        if !values.contains_key(p.name) {
            out.push(PolicyProblem::Missing {
                policy_type,
                name: p.name,
                expected: p.accepts.describe(),
            });
        }
    }
    out
}

fn describe(v: &Value) -> String {
    match v {
        Value::String(s) => format!("'{s}'"),
        Value::Array(_) | Value::Object(_) => super::load::type_name(v).to_string(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn messages(def: Value) -> Vec<String> {
        problems(def.as_object().unwrap())
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    #[test]
    fn stackstorm_exchange_policies_pass() {
        // Shapes of StackStorm's own examples and Exchange packs.
        for def in [
            json!({"name": "my_action.concurrency", "resource_ref": "examples.my_action",
                   "policy_type": "action.concurrency", "enabled": true,
                   "parameters": {"action": "delay", "threshold": 10}}),
            json!({"name": "my_action.concurrency.attr", "resource_ref": "examples.my_action",
                   "policy_type": "action.concurrency.attr",
                   "parameters": {"threshold": 1, "attributes": ["host"], "action": "cancel"}}),
            json!({"name": "http.retry", "resource_ref": "core.http",
                   "policy_type": "action.retry",
                   "parameters": {"retry_on": "timeout", "max_retry_count": 2, "delay": 0.5}}),
            json!({"name": "noop", "resource_ref": "core.noop", "policy_type": "action.retry",
                   "parameters": {"retry_on": "failure"}}),
            // Attune's format has no policy_type.
            json!({"ref": "limit", "action_ref": "send", "concurrency": {"limit": 2, "method": "enqueue"}}),
        ] {
            assert_eq!(messages(def.clone()), Vec::<String>::new(), "{def}");
        }
    }

    #[test]
    fn each_mistake_is_named() {
        assert_eq!(
            messages(
                json!({"policy_type": "action.retry", "parameters": {"retry_on": "sometimes"}})
            ),
            [
                "parameters.retry_on: 'sometimes' is not allowed for policy type action.retry; \
              expected one of failure, timeout"
            ]
        );
        assert_eq!(
            messages(
                json!({"policy_type": "action.concurrency", "parameters": {"threshold": -1, "treshold": 2}})
            ),
            [
                "parameters.threshold: -1 is not allowed for policy type action.concurrency; \
                 expected a whole number ≥ 0",
                "parameters.treshold: unknown parameter of policy type action.concurrency \
                 (known: action, threshold)",
            ]
        );
        assert_eq!(
            messages(json!({"policy_type": "action.concurrency"})),
            [
                "parameters.threshold is required by policy type action.concurrency (a whole number ≥ 0)"
            ]
        );
        assert_eq!(
            messages(json!({"policy_type": "action.concurrency.attr",
                            "parameters": {"threshold": 1, "attributes": ["a", "a"]}})),
            ["parameters.attributes: list is not allowed for policy type action.concurrency.attr; \
              expected a list of distinct non-empty strings"
                .replace("list is", "a list is")]
        );
        assert_eq!(
            messages(json!({"policy_type": "action.retry",
                            "parameters": {"retry_on": "failure", "delay": "5", "max_retry_count": 1.5}})),
            [
                "parameters.delay: '5' is not allowed for policy type action.retry; expected a number ≥ 0",
                "parameters.max_retry_count: 1.5 is not allowed for policy type action.retry; \
                 expected a whole number ≥ 0",
            ]
        );
        assert_eq!(
            messages(json!({"policy_type": "action.throttle", "parameters": {}})),
            [
                "policy_type: 'action.throttle' is not a built-in policy type (known: \
              action.concurrency, action.concurrency.attr, action.retry)"
            ]
        );
    }
}
