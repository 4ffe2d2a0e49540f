//! StackStorm-world packs, one case per directory of `tests/fixtures/stackstorm/`:
//! `<case>/expect.yaml` says what RegisterBatch must do with `<case>/<pack_dir>`, once
//! without and once with `strict`, each on a fresh server (SQLite, and PostgreSQL with
//! `TEST_POSTGRES_URL`). Cases are found, not listed: adding a directory adds a case.
//!
//! `expect.yaml` (unknown keys are refused, so a typo cannot pass silently):
//!
//! ```yaml
//! pack_dir: <dir name of the pack inside the case dir>
//! default:              # and `strict:`, the same keys
//!   registered: true    # else the pack fails
//!   ref: <ref>          # required when registered, refused otherwise
//!   error_stage: validation   # required when not registered, refused otherwise
//!   errors: [substring, ...]  # each in one error entry "<file>: <message>"
//!   warnings: [substring, ...]
//!   counts: {actions: 1, ...} # optional, registered only: exact components_registered
//! ```
//!
//! Error entries are the pack's `validation_results.errors` when it registered, and the
//! entries of the failure's `error` (which lists each validation error as
//! `<file>: <message>`) when it did not. Warning entries are
//! `validation_results.warnings`, so only a registered pack has them.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use attune_packs_client::pb;
use serde::Deserialize;

use crate::common::{Backend, TestServer, on_both_backends, path_str};

fn cases_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/stackstorm")
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Expect {
    pack_dir: String,
    default: Outcome,
    strict: Outcome,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Outcome {
    registered: bool,
    #[serde(rename = "ref")]
    pack_ref: Option<String>,
    error_stage: Option<String>,
    #[serde(default)]
    errors: Vec<String>,
    #[serde(default)]
    warnings: Vec<String>,
    counts: Option<BTreeMap<String, u32>>,
}

const COUNTERS: &[&str] = &[
    "actions",
    "sensors",
    "triggers",
    "rules",
    "workflows",
    "policies",
    "aliases",
];

impl Outcome {
    /// Why an expectation cannot be checked (naming the case and mode), if it cannot.
    fn check_shape(&self, case: &str, mode: &str) -> Result<(), String> {
        let at = format!("{case}/expect.yaml `{mode}`");
        let require = |ok: bool, why: String| {
            if ok {
                Ok(())
            } else {
                Err(format!("{at}: {why}"))
            }
        };
        if self.registered {
            require(self.pack_ref.is_some(), "registered needs `ref`".into())?;
            require(
                self.error_stage.is_none(),
                "`error_stage` is only for a pack that is not registered".into(),
            )?;
        } else {
            require(
                self.error_stage.is_some(),
                "a pack that is not registered needs `error_stage`".into(),
            )?;
            require(
                self.pack_ref.is_none() && self.counts.is_none(),
                "`ref` and `counts` are only for a registered pack".into(),
            )?;
            require(
                self.warnings.is_empty(),
                "a pack that is not registered has no validation_results to hold warnings".into(),
            )?;
        }
        for key in self.counts.iter().flat_map(BTreeMap::keys) {
            require(
                COUNTERS.contains(&key.as_str()),
                format!("unknown counter `{key}` (known: {})", COUNTERS.join(", ")),
            )?;
        }
        for s in self.errors.iter().chain(&self.warnings) {
            require(!s.is_empty(), "an empty substring matches anything".into())?;
        }
        Ok(())
    }
}

struct Case {
    name: String,
    dir: PathBuf,
    expect: Expect,
}

/// Every case directory, sorted; panics on none and on a malformed expect.yaml.
fn cases() -> Vec<Case> {
    let root = cases_root();
    let entries =
        std::fs::read_dir(&root).unwrap_or_else(|e| panic!("cannot list {}: {e}", root.display()));
    let mut cases = Vec::new();
    for entry in entries {
        let entry = entry.unwrap();
        if !entry.file_type().unwrap().is_dir() {
            continue;
        }
        let name = entry.file_name().to_string_lossy().into_owned();
        let dir = entry.path();
        let file = dir.join("expect.yaml");
        let text = std::fs::read_to_string(&file)
            .unwrap_or_else(|e| panic!("case {name}: cannot read {}: {e}", file.display()));
        let expect: Expect = serde_yaml::from_str(&text)
            .unwrap_or_else(|e| panic!("case {name}: malformed expect.yaml: {e}"));
        for (outcome, mode) in [(&expect.default, "default"), (&expect.strict, "strict")] {
            if let Err(why) = outcome.check_shape(&name, mode) {
                panic!("{why}");
            }
        }
        let pack = dir.join(&expect.pack_dir);
        assert!(
            std::fs::symlink_metadata(&pack).is_ok_and(|m| m.is_dir()),
            "case {name}: pack_dir '{}' is not a directory of the case",
            expect.pack_dir
        );
        cases.push(Case { name, dir, expect });
    }
    cases.sort_by(|a, b| a.name.cmp(&b.name));
    assert!(
        !cases.is_empty(),
        "no case found under {}: the harness would test nothing",
        root.display()
    );
    cases
}

/// `cp -a`: links stay links (a case may test what a link does), modes are kept.
fn copy_case(from: &Path, into: &Path) {
    std::fs::create_dir_all(into).unwrap();
    let status = std::process::Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(into)
        .status()
        .expect("run cp");
    assert!(status.success(), "cp -a {} failed", from.display());
}

fn counters(c: &pb::ComponentCounts) -> BTreeMap<&'static str, u32> {
    BTreeMap::from([
        ("actions", c.actions),
        ("sensors", c.sensors),
        ("triggers", c.triggers),
        ("rules", c.rules),
        ("workflows", c.workflows),
        ("policies", c.policies),
        ("aliases", c.aliases),
    ])
}

/// What is wrong with `result` against `want`; empty when it matches.
fn judge(result: &pb::RegisterBatchResult, want: &Outcome) -> Vec<String> {
    let mut wrong = Vec::new();
    let (errors, warnings): (Vec<String>, Vec<String>) =
        match (&result.registered_packs[..], &result.failed_packs[..]) {
            ([p], []) => {
                if !want.registered {
                    wrong.push(format!("registered as {}, expected to fail", p.pack_ref));
                }
                if let Some(r) = &want.pack_ref
                    && &p.pack_ref != r
                {
                    wrong.push(format!("registered ref {}, expected {r}", p.pack_ref));
                }
                if let Some(counts) = &want.counts {
                    let got = counters(&p.components_registered.unwrap_or_default());
                    for (key, n) in counts {
                        if got[key.as_str()] != *n {
                            wrong.push(format!(
                                "{key}: {} registered, expected {n}",
                                got[key.as_str()]
                            ));
                        }
                    }
                }
                let v = p.validation_results.clone().unwrap_or_default();
                let entries = |list: &[pb::ValidationIssue]| -> Vec<String> {
                    list.iter()
                        .map(|i| format!("{}: {}", i.file, i.message))
                        .collect()
                };
                (entries(&v.errors), entries(&v.warnings))
            }
            ([], [f]) => {
                if want.registered {
                    wrong.push(format!(
                        "failed ({}): {}, expected to register",
                        f.error_stage, f.error
                    ));
                }
                if let Some(stage) = &want.error_stage
                    && &f.error_stage != stage
                {
                    wrong.push(format!(
                        "failed at stage {}, expected {stage}: {}",
                        f.error_stage, f.error
                    ));
                }
                (vec![f.error.clone()], Vec::new())
            }
            _ => {
                wrong.push(format!(
                    "expected exactly one pack in the result: {result:#?}"
                ));
                return wrong;
            }
        };
    for (level, needles, entries) in [
        ("error", &want.errors, &errors),
        ("warning", &want.warnings, &warnings),
    ] {
        for needle in needles {
            if !entries.iter().any(|e| e.contains(needle.as_str())) {
                wrong.push(format!(
                    "no {level} contains {needle:?}; {level}s: {entries:#?}"
                ));
            }
        }
    }
    wrong
}

async fn register_case(backend: Backend, case: &Case, strict: bool) -> Vec<String> {
    let server = TestServer::start(backend).await;
    let root = server.root.path().canonicalize().unwrap();
    let cases = root.join("cases");
    copy_case(&case.dir, &cases);
    let pack = cases.join(&case.name).join(&case.expect.pack_dir);
    let mut client = server.client().await;
    let result = client
        .register_batch(pb::RegisterBatchRequest {
            pack_paths: vec![path_str(&pack)],
            packs_base_dir: Some(path_str(&root.join("base"))),
            strict: Some(strict),
            ..Default::default()
        })
        .await
        .unwrap();
    let want = if strict {
        &case.expect.strict
    } else {
        &case.expect.default
    };
    let wrong = judge(&result, want);
    server.stop().await;
    wrong
}

async fn every_case_registers_as_expected(backend: Backend) {
    let mut failures = Vec::new();
    let cases = cases();
    for case in &cases {
        for strict in [false, true] {
            let mode = if strict { "strict" } else { "default" };
            for problem in register_case(backend, case, strict).await {
                failures.push(format!("{} ({mode}, {backend:?}): {problem}", case.name));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} problem(s) in {} case(s):\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}
on_both_backends!(every_case_registers_as_expected);

register_test!(sync malformed_expectations_are_refused);
/// The harness itself: a malformed expectation is refused, not taken as "expect nothing".
fn malformed_expectations_are_refused() {
    let parse = |text: &str| serde_yaml::from_str::<Expect>(text);
    assert!(parse("pack_dir: p\ndefault: {registered: true}\n").is_err());
    assert!(
        parse(
            "pack_dir: p\ndefault: {registered: true, warning: [x]}\nstrict: {registered: false}\n"
        )
        .is_err()
    );
    let shape = |text: &str| {
        let e = parse(text).unwrap();
        e.default.check_shape("c", "default").is_ok()
    };
    assert!(!shape(
        "pack_dir: p\ndefault: {registered: true}\nstrict: {registered: false}\n"
    ));
    assert!(!shape(
        "pack_dir: p\ndefault: {registered: false}\nstrict: {registered: false}\n"
    ));
    assert!(!shape(
        "pack_dir: p\ndefault: {registered: true, ref: p, counts: {action: 1}}\nstrict: {registered: false}\n"
    ));
    assert!(shape(
        "pack_dir: p\ndefault: {registered: true, ref: p, counts: {actions: 1}}\nstrict: {registered: false}\n"
    ));
}
