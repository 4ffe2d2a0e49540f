//! The `testing` block of `pack.yaml`: how a pack's own tests are run.

use std::collections::BTreeMap;
use std::fmt;

use serde_yaml::{Mapping, Value};

use super::reader::{Ctx, check_relative_path, get, key_text};

/// The `testing` block.
///
/// Unlike Attune (where every non-optional field is required), only `runners[*].type`
/// and `runners[*].entry_point` are required here: `enabled` defaults to `true` (writing
/// the block at all means the author wants tests), a missing `runners` map means no
/// suites (with a warning when enabled). Unknown keys inside the block give warnings,
/// so that a typo like `timout` does not go unnoticed.
#[derive(Debug, Clone, PartialEq)]
pub struct Testing {
    pub enabled: bool,
    pub discovery: Option<TestDiscovery>,
    /// Runner name → runner; ordered so that suites run in a stable order.
    pub runners: BTreeMap<String, TestRunner>,
    pub result_format: Option<String>,
    /// Relative to the pack directory (checked like `entry_point`).
    pub result_path: Option<String>,
    /// Fraction of tests that must pass, `0.0..=1.0`.
    pub min_pass_rate: Option<f64>,
    /// What to do when tests fail (Attune uses `block`); kept as written.
    pub on_failure: Option<String>,
}

/// `testing.discovery`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestDiscovery {
    pub method: String,
    /// Relative to the pack directory.
    pub path: Option<String>,
}

/// One entry of `testing.runners`: one test suite.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestRunner {
    /// YAML key `type`.
    pub runner_type: RunnerType,
    /// Script or test module, relative to the pack directory, without `..`.
    pub entry_point: String,
    /// YAML key `timeout`, seconds, > 0. `None` lets the executor choose.
    pub timeout_secs: Option<u64>,
    /// Defaults to [`ResultFormat::Simple`].
    pub result_format: ResultFormat,
}

/// How a runner is started.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RunnerType {
    /// A shell script.
    Script,
    /// `python -m unittest <entry_point>`.
    Unittest,
    /// `python -m pytest <entry_point>`.
    Pytest,
}

impl RunnerType {
    pub const ALL: [RunnerType; 3] = [RunnerType::Script, RunnerType::Unittest, RunnerType::Pytest];

    pub fn as_str(self) -> &'static str {
        match self {
            RunnerType::Script => "script",
            RunnerType::Unittest => "unittest",
            RunnerType::Pytest => "pytest",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.as_str() == name)
    }
}

impl fmt::Display for RunnerType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a runner's output is read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum ResultFormat {
    /// `Total Tests: N` / `Passed: N` / ... lines, else the exit code.
    #[default]
    Simple,
    Json,
}

impl ResultFormat {
    pub const ALL: [ResultFormat; 2] = [ResultFormat::Simple, ResultFormat::Json];

    pub fn as_str(self) -> &'static str {
        match self {
            ResultFormat::Simple => "simple",
            ResultFormat::Json => "json",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|f| f.as_str() == name)
    }
}

impl fmt::Display for ResultFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

const TESTING_KEYS: &[&str] = &[
    "enabled",
    "discovery",
    "runners",
    "result_format",
    "result_path",
    "min_pass_rate",
    "on_failure",
];
const DISCOVERY_KEYS: &[&str] = &["method", "path"];
const RUNNER_KEYS: &[&str] = &["type", "entry_point", "timeout", "result_format"];

/// Reads the `testing` block; `None` when it has errors (they are in `cx`).
pub(super) fn parse_testing(value: &Value, cx: &mut Ctx<'_>) -> Option<Testing> {
    let Value::Mapping(map) = value else {
        cx.wrong_type("testing", "a mapping", value);
        return None;
    };
    let errors_before = cx.errors.len();
    warn_unknown_keys(map, "testing", TESTING_KEYS, cx);

    let enabled = get(map, "enabled")
        .and_then(|v| cx.bool(v, "testing.enabled"))
        .unwrap_or(true);
    let discovery = get(map, "discovery").and_then(|v| parse_discovery(v, cx));
    let runners = match get(map, "runners") {
        Some(v) => parse_runners(v, cx),
        None => BTreeMap::new(),
    };
    if enabled && runners.is_empty() && cx.errors.len() == errors_before {
        cx.warn(
            "testing.runners",
            "testing is enabled but no runners are defined",
        );
    }
    let result_format =
        get(map, "result_format").and_then(|v| cx.string(v, "testing.result_format"));
    let result_path = get(map, "result_path")
        .and_then(|v| cx.string(v, "testing.result_path"))
        .filter(|p| relative_or_report(p, "testing.result_path", cx));
    let min_pass_rate = get(map, "min_pass_rate").and_then(|v| parse_pass_rate(v, cx));
    let on_failure = get(map, "on_failure").and_then(|v| cx.string(v, "testing.on_failure"));

    (cx.errors.len() == errors_before).then_some(Testing {
        enabled,
        discovery,
        runners,
        result_format,
        result_path,
        min_pass_rate,
        on_failure,
    })
}

fn parse_discovery(value: &Value, cx: &mut Ctx<'_>) -> Option<TestDiscovery> {
    let Value::Mapping(map) = value else {
        cx.wrong_type("testing.discovery", "a mapping", value);
        return None;
    };
    warn_unknown_keys(map, "testing.discovery", DISCOVERY_KEYS, cx);
    let method = match get(map, "method") {
        Some(v) => cx.string(v, "testing.discovery.method"),
        None => {
            cx.error("testing.discovery.method", "required key is missing");
            None
        }
    };
    let path = get(map, "path")
        .and_then(|v| cx.string(v, "testing.discovery.path"))
        .filter(|p| relative_or_report(p, "testing.discovery.path", cx));
    Some(TestDiscovery {
        method: method?,
        path,
    })
}

fn parse_runners(value: &Value, cx: &mut Ctx<'_>) -> BTreeMap<String, TestRunner> {
    let mut runners = BTreeMap::new();
    let Value::Mapping(map) = value else {
        cx.wrong_type(
            "testing.runners",
            "a mapping of runner name to runner",
            value,
        );
        return runners;
    };
    for (name, runner) in map {
        let name = match key_text(name) {
            Ok(name) => name,
            Err(problem) => {
                cx.error("testing.runners", problem.to_string());
                continue;
            }
        };
        if let Some(runner) = parse_runner(runner, &format!("testing.runners.{name}"), cx) {
            runners.insert(name, runner);
        }
    }
    runners
}

fn parse_runner(value: &Value, key: &str, cx: &mut Ctx<'_>) -> Option<TestRunner> {
    let Value::Mapping(map) = value else {
        cx.wrong_type(key, "a mapping with `type` and `entry_point`", value);
        return None;
    };
    warn_unknown_keys(map, key, RUNNER_KEYS, cx);

    let type_key = format!("{key}.type");
    let runner_type = match get(map, "type") {
        None => {
            cx.error(
                &type_key,
                format!("required key is missing (one of: {})", runner_type_names()),
            );
            None
        }
        Some(v) => cx.string(v, &type_key).and_then(|s| {
            let parsed = RunnerType::from_name(&s);
            if parsed.is_none() {
                cx.error(
                    &type_key,
                    format!(
                        "unknown runner type `{s}` (expected one of: {})",
                        runner_type_names()
                    ),
                );
            }
            parsed
        }),
    };

    let entry_key = format!("{key}.entry_point");
    let entry_point = match get(map, "entry_point") {
        None => {
            cx.error(&entry_key, "required key is missing");
            None
        }
        Some(v) => cx
            .string(v, &entry_key)
            .filter(|p| relative_or_report(p, &entry_key, cx)),
    };

    // `Some(None)`: absent; `None`: present but invalid (reported).
    let timeout_key = format!("{key}.timeout");
    let timeout_secs = match get(map, "timeout") {
        None => Some(None),
        Some(v) => match v.as_u64() {
            Some(secs) if secs > 0 => Some(Some(secs)),
            _ => {
                let found = show(v);
                cx.error(
                    &timeout_key,
                    format!("expected a positive whole number of seconds, found {found}"),
                );
                None
            }
        },
    };
    let format_key = format!("{key}.result_format");
    let result_format = match get(map, "result_format") {
        None => Some(ResultFormat::default()),
        Some(v) => cx.string(v, &format_key).and_then(|s| {
            let parsed = ResultFormat::from_name(&s);
            if parsed.is_none() {
                cx.error(
                    &format_key,
                    format!("unknown result format `{s}` (expected one of: simple, json)"),
                );
            }
            parsed
        }),
    };

    Some(TestRunner {
        runner_type: runner_type?,
        entry_point: entry_point?,
        timeout_secs: timeout_secs?,
        result_format: result_format?,
    })
}

fn parse_pass_rate(value: &Value, cx: &mut Ctx<'_>) -> Option<f64> {
    match value.as_f64() {
        Some(rate) if (0.0..=1.0).contains(&rate) => Some(rate),
        Some(rate) => {
            cx.error(
                "testing.min_pass_rate",
                format!("must be between 0.0 and 1.0, found {rate}"),
            );
            None
        }
        None => {
            cx.wrong_type(
                "testing.min_pass_rate",
                "a number between 0.0 and 1.0",
                value,
            );
            None
        }
    }
}

fn relative_or_report(path: &str, key: &str, cx: &mut Ctx<'_>) -> bool {
    match check_relative_path(path) {
        Ok(()) => true,
        Err(problem) => {
            cx.error(key, problem.to_string());
            false
        }
    }
}

fn warn_unknown_keys(map: &Mapping, key: &str, known: &[&str], cx: &mut Ctx<'_>) {
    for k in map.keys() {
        let name = key_text(k).unwrap_or_else(|_| "?".to_string());
        if !known.contains(&name.as_str()) {
            cx.warn(
                format!("{key}.{name}"),
                format!("unknown key ignored (known keys: {})", known.join(", ")),
            );
        }
    }
}

fn runner_type_names() -> String {
    RunnerType::ALL.map(RunnerType::as_str).join(", ")
}

/// A short rendering of a scalar for messages.
fn show(value: &Value) -> String {
    match value {
        Value::Number(n) => n.to_string(),
        Value::String(s) => format!("\"{s}\""),
        Value::Bool(b) => b.to_string(),
        other => super::reader::type_name(other).to_string(),
    }
}
