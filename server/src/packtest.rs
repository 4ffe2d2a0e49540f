//! Running a pack's own tests: the `testing` block of `pack.yaml`.
//!
//! Fixes the Attune test executor's bugs: `min_pass_rate` is
//! honoured, `json` results are read, timed-out suites are killed with everything they
//! started, output is read while the suite runs (no pipe deadlock), runners run in a
//! stable (name) order, and zero tests is `skipped`, not `passed`.
//!
//! # How each runner is started
//!
//! The working directory is the pack directory; stdin is `/dev/null`.
//!
//! * `script`: when the file starts with a `#!` line, its interpreter (and the single
//!   optional argument, as Linux passes it) is run with the script as argument, so
//!   `#!/usr/bin/env python3` works and no execute bit is needed (archives lose it).
//!   Otherwise `/bin/sh <entry>` for `*.sh` and `/bin/bash <entry>` for anything else,
//!   as Attune does.
//! * `unittest`: `<python> -m unittest -v <entry>` for a file (`tests/test_x.py`; Python
//!   ≥ 3.5 turns the path into a module name) or a module (`tests.test_x`);
//!   `<python> -m unittest discover -v -s <entry> -t .` for a directory.
//! * `pytest`: `<python> -m pytest -v -p no:cacheprovider <entry>` (no `.pytest_cache`
//!   is written into the pack). A node id (`tests/test_x.py::test_a`) is accepted.
//!
//! The entry point must be relative, without `..`, exist, and still be inside the pack
//! once symlinks are resolved; otherwise the suite is an error and nothing is run.
//!
//! Suites run confined (see [`crate::sandbox`]): as the sandbox user, able to read the
//! pack and the interpreter's prefix but not to write the pack; they write to their
//! private `HOME`/`TMPDIR`.
//!
//! # Environment
//!
//! Nothing of the server's environment is passed except `PATH`. `HOME` and `TMPDIR` are
//! the run's private directory (see [`crate::process`]; removed afterwards), `LANG=C.UTF-8`,
//! `PYTHONDONTWRITEBYTECODE=1`, `PYTHONUNBUFFERED=1`, then
//! [`TestRunOptions::extra_env`] (which may override any of these).
//!
//! # Reading results
//!
//! `simple` (the default): the output (stdout and stderr) is scanned for
//! `Total Tests: N`, `Passed: N`, `Failed: N`, `Skipped: N` (case-insensitive, anywhere
//! in a line, the last occurrence wins). Missing counts are derived from the others
//! (`total = passed + failed + skipped`, `passed = total - failed - skipped`, ...).
//! Without any of these lines, `unittest` and `pytest` suites are read from their own
//! summaries (`Ran N tests` + `OK` / `OK (skipped=c)` / `FAILED (failures=a, errors=b,
//! ...)`; pytest's `N passed, M failed, K skipped, E errors in Xs`); errors count as
//! failures, expected failures and unexpected passes (`xfailed`, `xpassed`) as passes,
//! except unittest's unexpected successes, which fail the run. When nothing can be
//! read, the exit code decides: one test, passed on 0, failed otherwise, with a note.
//!
//! `json`: the last line of **stdout** that is a JSON object with integer `passed` and
//! `failed`:
//!
//! ```json
//! {"total": 3, "passed": 1, "failed": 1, "skipped": 1, "errors": 0,
//!  "tests": [{"name": "t1", "status": "passed", "duration_ms": 12, "message": null}]}
//! ```
//!
//! `skipped` and `errors` (counted as failures) default to 0; `total` defaults to the
//! sum and, when given, must equal it. `tests` is optional; `status` is one of
//! `passed`, `failed`, `skipped`, `error` (`ok`/`pass`, `fail`/`failure`, `skip` also
//! accepted), `duration_ms` and `message` are optional. No such line → suite error.
//!
//! Then, whatever the format: a non-zero exit (or death by signal) while the counts
//! say 0 failed adds one failed test (the exit code is trusted over the output),
//! except exit code 5 with 0 tests from `pytest`/`unittest`, which is their "no tests
//! collected" code. A suite error (entry point, spawn failure, timeout, unreadable
//! json, cancel) makes the suite count as 1 test, 1 failed, with one `error` case.
//!
//! # Aggregate status and pass rate
//!
//! `pass_rate = passed / (total - skipped)`; when that is 0 (no tests, or all skipped)
//! the pass rate is 0 and `min_pass_rate` (default 1.0) is not met. Status: `failed` on
//! any failure or suite error; `passed` when every test passed (and there is at least
//! one); `skipped` when all tests were skipped or there were none; otherwise `partial`.
//! [`PackTestResult::passed`] is what gates an install: the minimum pass rate is met,
//! no suite had an error and the run was not cancelled. Note that a pack with testing
//! disabled or no runners is `skipped` and not `passed()`: callers decide what
//! `skipped` means for them (`testing.on_failure` is passed through for that purpose).
//!
//! `testing.discovery`, `testing.result_format` and `testing.result_path` are not used
//! (each runner has its own result format; results are read from the output).

use std::ffi::OsString;
use std::io::Read;
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::manifest::{ResultFormat, RunnerType, TestRunner, Testing};
use crate::process::{self, CommandSpec, Finished, ProcessError, Stream};
use crate::progress::{Level, Reporter, Stage};

/// Output lines streamed as progress per suite; the rest are counted only.
const MAX_PROGRESS_LINES: usize = 1000;
/// Longest line sent as progress (characters).
const MAX_PROGRESS_LINE_CHARS: usize = 2000;
/// Combined output (both streams, in arrival order) kept per suite.
const OUTPUT_TAIL_BYTES: usize = 16 * 1024;
/// Test cases kept per suite.
const MAX_CASES: usize = 10_000;

/// How pack tests are run.
#[derive(Debug, Clone)]
pub struct TestRunOptions {
    /// Interpreter for `unittest` and `pytest` runners: the pack's virtualenv python
    /// when there is one.
    pub python: PathBuf,
    /// For runners without a `timeout`.
    pub default_timeout: Duration,
    /// Added to the (otherwise minimal) environment of every suite.
    pub extra_env: Vec<(OsString, OsString)>,
    /// Readable by the suite besides the pack and the interpreter's prefix.
    pub read_paths: Vec<PathBuf>,
}

impl Default for TestRunOptions {
    fn default() -> Self {
        Self {
            python: PathBuf::from("python3"),
            default_timeout: Duration::from_secs(300),
            extra_env: Vec::new(),
            read_paths: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TestStatus {
    Passed,
    Failed,
    Partial,
    Skipped,
}

impl TestStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            TestStatus::Passed => "passed",
            TestStatus::Failed => "failed",
            TestStatus::Partial => "partial",
            TestStatus::Skipped => "skipped",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CaseStatus {
    Passed,
    Failed,
    Skipped,
    Error,
}

impl CaseStatus {
    fn from_name(name: &str) -> Option<Self> {
        Some(match name.to_ascii_lowercase().as_str() {
            "passed" | "pass" | "ok" | "success" => CaseStatus::Passed,
            "failed" | "fail" | "failure" => CaseStatus::Failed,
            "skipped" | "skip" => CaseStatus::Skipped,
            "error" | "errored" => CaseStatus::Error,
            _ => return None,
        })
    }
}

/// One test, when the runner's output names them (json `tests`, unittest `-v`,
/// pytest `-v`), or the error of a suite that could not run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TestCase {
    pub name: String,
    pub status: CaseStatus,
    pub duration_ms: Option<u64>,
    pub message: Option<String>,
}

/// One runner of `testing.runners`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SuiteResult {
    pub name: String,
    pub runner_type: String,
    pub result_format: String,
    pub total: u32,
    pub passed: u32,
    pub failed: u32,
    pub skipped: u32,
    pub duration_ms: u64,
    pub timed_out: bool,
    pub exit_code: Option<i32>,
    /// Set when the suite could not run or its result could not be read; such a suite
    /// counts as 1 failed test.
    pub error: Option<String>,
    /// How the result was obtained when that is worth knowing (exit-code fallback,
    /// inconsistent counts, output not streamed, ...).
    pub notes: Vec<String>,
    /// The end of the combined stdout and stderr.
    pub output_tail: String,
    pub cases: Vec<TestCase>,
}

/// All suites of a pack.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PackTestResult {
    pub pack_ref: String,
    pub pack_version: String,
    pub status: TestStatus,
    pub total_tests: u32,
    pub passed: u32,
    pub failed: u32,
    pub skipped: u32,
    /// `passed / (total_tests - skipped)`, 0 when that is 0.
    pub pass_rate: f64,
    pub duration_ms: u64,
    pub suites: Vec<SuiteResult>,
    pub min_pass_rate: f64,
    pub meets_min_pass_rate: bool,
    /// `testing.on_failure` as written (Attune uses `block`).
    pub on_failure: Option<String>,
    /// The run was cancelled (the reporter's receiver went away); later suites did
    /// not run.
    pub cancelled: bool,
    pub notes: Vec<String>,
}

impl PackTestResult {
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or(serde_json::Value::Null)
    }

    /// Good enough to install: the minimum pass rate is met, no suite had an error and
    /// the run was not cancelled.
    pub fn passed(&self) -> bool {
        self.meets_min_pass_rate && !self.cancelled && self.suites.iter().all(|s| s.error.is_none())
    }
}

/// Runs every runner of `testing`, in name order, and never fails as a whole: problems
/// become suite errors.
#[tracing::instrument(skip_all, fields(pack = %pack_ref, version = %pack_version))]
pub async fn run_pack_tests(
    pack_dir: &Path,
    pack_ref: &str,
    pack_version: &str,
    testing: &Testing,
    opts: &TestRunOptions,
    reporter: &Reporter,
) -> PackTestResult {
    let started = Instant::now();
    let mut suites = Vec::new();
    let mut notes = Vec::new();
    let mut cancelled = false;

    if !testing.enabled {
        notes.push("testing is disabled in pack.yaml".to_string());
        reporter.info(Stage::Test, "pack tests are disabled in pack.yaml");
    } else if testing.runners.is_empty() {
        notes.push("no test runners are defined".to_string());
        reporter.warn(Stage::Test, "no test runners are defined: no tests ran");
    } else {
        let count = testing.runners.len() as u64;
        let root = pack_dir.canonicalize().map_err(std::sync::Arc::new);
        for (i, (name, runner)) in testing.runners.iter().enumerate() {
            if reporter.is_cancelled() {
                cancelled = true;
                notes.push(format!(
                    "cancelled: {} not run",
                    crate::progress::count(testing.runners.len() - i, "suite", "suites")
                ));
                break;
            }
            reporter.count(
                Stage::Test,
                format!(
                    "running test suite `{name}` ({}, {})",
                    runner.runner_type, runner.entry_point
                ),
                i as u64,
                Some(count),
            );
            let suite = match &root {
                Ok(root) => run_suite(root, name, runner, opts, reporter).await,
                Err(e) => SuiteResult::errored(
                    name,
                    runner,
                    SuiteError::PackDir {
                        path: pack_dir.to_path_buf(),
                        source: e.clone(),
                    },
                    Duration::ZERO,
                ),
            };
            if matches!(&suite.error, Some(e) if e == CANCELLED) {
                cancelled = true;
            }
            report_suite(reporter, &suite, i as u64 + 1, count);
            suites.push(suite);
            if cancelled {
                let left = testing.runners.len() - i - 1;
                if left > 0 {
                    notes.push(format!(
                        "cancelled: {} not run",
                        crate::progress::count(left, "suite", "suites")
                    ));
                }
                break;
            }
        }
    }

    let result = aggregate(
        pack_ref,
        pack_version,
        testing,
        suites,
        notes,
        cancelled,
        started.elapsed(),
    );
    let message = format!(
        "pack tests {}: {} passed, {} failed, {} skipped of {} (pass rate {:.0}%, minimum {:.0}%{})",
        result.status.as_str(),
        result.passed,
        result.failed,
        result.skipped,
        result.total_tests,
        result.pass_rate * 100.0,
        result.min_pass_rate * 100.0,
        if result.meets_min_pass_rate {
            ", met"
        } else {
            ", not met"
        },
    );
    let level = if result.passed() {
        Level::Info
    } else if result.status == TestStatus::Skipped {
        Level::Warning
    } else {
        Level::Error
    };
    reporter.emit(Stage::Test, level, message, None, None);
    result
}

const CANCELLED: &str = "cancelled";

/// Why a suite could not run or its result could not be read; such a suite counts as
/// one failed test, and its text is the suite's `error`.
#[derive(Debug, thiserror::Error)]
pub enum SuiteError {
    #[error("pack directory {}: {source}", .path.display())]
    /// Shared by every suite of the pack, each of which fails with it.
    PackDir {
        path: PathBuf,
        #[source]
        source: std::sync::Arc<std::io::Error>,
    },
    #[error("entry point `{entry}`: {problem}")]
    EntryPoint {
        entry: String,
        #[source]
        problem: EntryPointProblem,
    },
    #[error("entry point `{entry}` is not a file")]
    NotAFile { entry: String },
    #[error("{CANCELLED}")]
    Cancelled,
    #[error(transparent)]
    Run(ProcessError),
    #[error("json result: {0}")]
    JsonResult(#[source] JsonResultError),
    #[error("json result: no line of stdout is a JSON object with `passed` and `failed`")]
    NoJsonResult,
    #[error("timed out after {}s; the suite's processes were killed", .timeout.as_secs_f64())]
    TimedOut { timeout: Duration },
}

/// What is wrong with a runner's `entry_point`.
#[derive(Debug, thiserror::Error)]
pub enum EntryPointProblem {
    #[error("is empty")]
    Empty,
    #[error("must be a path relative to the pack directory")]
    Absolute,
    #[error("must not contain `..`")]
    ParentDir,
    #[error("does not exist in the pack")]
    Missing(#[source] std::io::Error),
    #[error("resolves (through a symlink) to a path outside the pack")]
    OutsidePack,
}

/// A `json` result line that does not have the documented shape.
#[derive(Debug, thiserror::Error)]
pub enum JsonResultError {
    #[error("`{key}` is missing")]
    Missing { key: &'static str },
    #[error("`{key}` must be a non-negative integer, found {value}")]
    NotACount {
        key: &'static str,
        value: serde_json::Value,
    },
    #[error("`total` is {total} but passed + failed + errors + skipped is {sum}")]
    TotalMismatch { total: u32, sum: u32 },
    #[error("`tests[{index}]` is not an object")]
    CaseNotObject { index: usize },
    #[error("`tests[{index}].status` must be one of passed, failed, skipped, error")]
    CaseStatus { index: usize },
    #[error("`tests` must be an array")]
    TestsNotArray,
}

fn report_suite(reporter: &Reporter, suite: &SuiteResult, done: u64, total: u64) {
    let mut message = format!(
        "test suite `{}`: {} passed, {} failed, {} skipped of {} in {:.1}s",
        suite.name,
        suite.passed,
        suite.failed,
        suite.skipped,
        suite.total,
        suite.duration_ms as f64 / 1000.0
    );
    if let Some(error) = &suite.error {
        message.push_str(&format!(" — error: {error}"));
    }
    let level = if suite.error.is_some() || suite.failed > 0 {
        Level::Error
    } else {
        Level::Info
    };
    reporter.emit(Stage::Test, level, message, Some(done), Some(total));
}

fn aggregate(
    pack_ref: &str,
    pack_version: &str,
    testing: &Testing,
    suites: Vec<SuiteResult>,
    mut notes: Vec<String>,
    cancelled: bool,
    elapsed: Duration,
) -> PackTestResult {
    let sum = |f: fn(&SuiteResult) -> u32| suites.iter().map(f).fold(0u32, u32::saturating_add);
    let total = sum(|s| s.total);
    let passed = sum(|s| s.passed);
    let failed = sum(|s| s.failed);
    let skipped = sum(|s| s.skipped);
    let any_error = suites.iter().any(|s| s.error.is_some());

    let ran = total.saturating_sub(skipped);
    let pass_rate = if ran > 0 {
        f64::from(passed) / f64::from(ran)
    } else {
        0.0
    };
    let min_pass_rate = testing.min_pass_rate.unwrap_or(1.0);
    // A small tolerance so that 2/3 meets a written 0.6667-ish threshold as expected.
    let meets_min_pass_rate = ran > 0 && pass_rate + 1e-9 >= min_pass_rate;

    let status = if failed > 0 || any_error {
        TestStatus::Failed
    } else if total > 0 && passed == total {
        TestStatus::Passed
    } else if total == 0 || skipped == total {
        if total == 0 && testing.enabled && !testing.runners.is_empty() {
            notes.push("no tests ran: zero tests is not a pass".to_string());
        }
        TestStatus::Skipped
    } else {
        TestStatus::Partial
    };

    PackTestResult {
        pack_ref: pack_ref.to_string(),
        pack_version: pack_version.to_string(),
        status,
        total_tests: total,
        passed,
        failed,
        skipped,
        pass_rate,
        duration_ms: millis(elapsed),
        suites,
        min_pass_rate,
        meets_min_pass_rate,
        on_failure: testing.on_failure.clone(),
        cancelled,
        notes,
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl SuiteResult {
    fn new(name: &str, runner: &TestRunner) -> Self {
        Self {
            name: name.to_string(),
            runner_type: runner.runner_type.as_str().to_string(),
            result_format: runner.result_format.as_str().to_string(),
            total: 0,
            passed: 0,
            failed: 0,
            skipped: 0,
            duration_ms: 0,
            timed_out: false,
            exit_code: None,
            error: None,
            notes: Vec::new(),
            output_tail: String::new(),
            cases: Vec::new(),
        }
    }

    fn errored(name: &str, runner: &TestRunner, error: SuiteError, elapsed: Duration) -> Self {
        let mut suite = Self::new(name, runner);
        suite.set_error(error);
        suite.duration_ms = millis(elapsed);
        suite
    }

    /// A suite error: counts as one failed test. Its text is what the result carries.
    fn set_error(&mut self, error: SuiteError) {
        let error = error.to_string();
        self.total = 1;
        self.passed = 0;
        self.failed = 1;
        self.skipped = 0;
        self.push_case(TestCase {
            name: self.name.clone(),
            status: CaseStatus::Error,
            duration_ms: None,
            message: Some(error.clone()),
        });
        self.error = Some(error);
    }

    fn push_case(&mut self, case: TestCase) {
        if self.cases.len() < MAX_CASES {
            self.cases.push(case);
        }
    }
}

#[tracing::instrument(skip_all, fields(suite = %name, runner = %runner.runner_type))]
async fn run_suite(
    root: &Path,
    name: &str,
    runner: &TestRunner,
    opts: &TestRunOptions,
    reporter: &Reporter,
) -> SuiteResult {
    let started = Instant::now();
    let entry = match resolve_entry(root, &runner.entry_point, runner.runner_type) {
        Ok(entry) => entry,
        Err(problem) => {
            return SuiteResult::errored(
                name,
                runner,
                SuiteError::EntryPoint {
                    entry: runner.entry_point.clone(),
                    problem,
                },
                started.elapsed(),
            );
        }
    };
    let (program, args) = match build_command(runner, &entry, opts) {
        Ok(command) => command,
        Err(e) => return SuiteResult::errored(name, runner, e, started.elapsed()),
    };
    let timeout = runner
        .timeout_secs
        .map(Duration::from_secs)
        .unwrap_or(opts.default_timeout);
    let mut env: Vec<(OsString, OsString)> = vec![
        ("LANG".into(), "C.UTF-8".into()),
        ("PYTHONDONTWRITEBYTECODE".into(), "1".into()),
        ("PYTHONUNBUFFERED".into(), "1".into()),
    ];
    env.extend(opts.extra_env.iter().cloned());
    // The pack is read, never written: what is tested is what gets stored.
    let mut access = crate::sandbox::Access {
        read: vec![root.to_path_buf()],
        write: Vec::new(),
    };
    if let Some(prefix) = interpreter_prefix(&opts.python) {
        access.read.push(prefix);
    }
    access.read.extend(opts.read_paths.iter().cloned());
    let spec = CommandSpec {
        program,
        args,
        cwd: root.to_path_buf(),
        env,
        env_clear: true,
        timeout,
        access,
    };
    reporter.info(
        Stage::Test,
        format!(
            "[{name}] $ {} (timeout {}s)",
            spec.display_command(),
            timeout.as_secs()
        ),
    );

    let mut scan = OutputScan::default();
    let mut tail = OutputTail::default();
    let mut streamed = 0usize;
    let on_line = |stream: Stream, line: &str| {
        scan.line(stream, line);
        tail.push(line);
        streamed += 1;
        if streamed <= MAX_PROGRESS_LINES {
            reporter.info(
                Stage::Test,
                format!("[{name}] {}", clip(line, MAX_PROGRESS_LINE_CHARS)),
            );
        } else if streamed == MAX_PROGRESS_LINES + 1 {
            reporter.warn(
                Stage::Test,
                format!(
                    "[{name}] more than {MAX_PROGRESS_LINES} output lines: the rest is not streamed"
                ),
            );
        }
    };
    let outcome = process::run(
        &spec,
        on_line,
        process::poll_cancelled(|| reporter.is_cancelled()),
    )
    .await;

    let mut suite = SuiteResult::new(name, runner);
    suite.output_tail = tail.into_string();
    if streamed > MAX_PROGRESS_LINES {
        suite.notes.push(format!(
            "{} of {streamed} output lines were not streamed as progress",
            streamed - MAX_PROGRESS_LINES
        ));
    }
    match outcome {
        Ok(finished) => assess(&mut suite, runner, &finished, scan, timeout),
        Err(ProcessError::Cancelled { .. }) => suite.set_error(SuiteError::Cancelled),
        Err(e) => suite.set_error(SuiteError::Run(e)),
    }
    suite.duration_ms = millis(started.elapsed());
    suite
}

/// Turns the run's output and exit status into counts.
fn assess(
    suite: &mut SuiteResult,
    runner: &TestRunner,
    finished: &Finished,
    scan: OutputScan,
    timeout: Duration,
) {
    suite.exit_code = finished.code();
    suite.timed_out = finished.timed_out;
    let is_python = matches!(
        runner.runner_type,
        RunnerType::Unittest | RunnerType::Pytest
    );

    let counts = match runner.result_format {
        ResultFormat::Json => match scan.json {
            Some(json) => match json_counts(&json) {
                Ok((counts, cases)) => {
                    for case in cases {
                        suite.push_case(case);
                    }
                    Some(counts)
                }
                Err(e) => {
                    if !finished.timed_out {
                        suite.set_error(SuiteError::JsonResult(e));
                        return;
                    }
                    None
                }
            },
            None => {
                if !finished.timed_out {
                    suite.set_error(SuiteError::NoJsonResult);
                    return;
                }
                None
            }
        },
        ResultFormat::Simple => {
            let from_simple = scan.simple.counts(&mut suite.notes);
            from_simple.or(match runner.runner_type {
                RunnerType::Unittest => scan.unittest.counts(),
                RunnerType::Pytest => scan.pytest,
                RunnerType::Script => None,
            })
        }
    };

    if finished.timed_out {
        for case in scan.cases {
            suite.push_case(case);
        }
        suite.set_error(SuiteError::TimedOut { timeout });
        return;
    }

    if runner.result_format == ResultFormat::Simple && is_python {
        for case in scan.cases {
            suite.push_case(case);
        }
    }

    let mut counts = match counts {
        Some(c) => c,
        None => {
            let ok = finished.success();
            suite.notes.push(format!(
                "no test counts found in the output; result taken from the {}",
                finished.describe_status()
            ));
            Counts {
                total: 1,
                passed: u32::from(ok),
                failed: u32::from(!ok),
                skipped: 0,
            }
        }
    };

    if !finished.success() && counts.failed == 0 {
        let no_tests_code = is_python && counts.total == 0 && finished.code() == Some(5);
        if !no_tests_code {
            counts.failed += 1;
            counts.total += 1;
            suite.notes.push(format!(
                "the runner ended with {} but its output reported no failures: counted as 1 failed test",
                finished.describe_status()
            ));
            suite.push_case(TestCase {
                name: format!("{} (exit status)", suite.name),
                status: CaseStatus::Failed,
                duration_ms: None,
                message: Some(finished.describe_status()),
            });
        }
    }
    suite.total = counts.total;
    suite.passed = counts.passed;
    suite.failed = counts.failed;
    suite.skipped = counts.skipped;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct Counts {
    total: u32,
    passed: u32,
    failed: u32,
    skipped: u32,
}

/// Everything read from the output while it streams (the output itself is not kept).
#[derive(Default)]
struct OutputScan {
    simple: SimpleScan,
    unittest: UnittestScan,
    pytest: Option<Counts>,
    /// The last stdout line that is a JSON object with `passed` and `failed`.
    json: Option<serde_json::Map<String, serde_json::Value>>,
    cases: Vec<TestCase>,
}

impl OutputScan {
    fn line(&mut self, stream: Stream, line: &str) {
        self.simple.line(line);
        self.unittest.line(line);
        if let Some(counts) = parse_pytest_summary(line) {
            self.pytest = Some(counts);
        }
        if stream == Stream::Stdout {
            let trimmed = line.trim();
            if trimmed.starts_with('{')
                && let Ok(serde_json::Value::Object(map)) = serde_json::from_str(trimmed)
                && map.contains_key("passed")
                && map.contains_key("failed")
            {
                self.json = Some(map);
            }
        }
        if self.cases.len() < MAX_CASES
            && let Some(case) = parse_case_line(line)
        {
            self.cases.push(case);
        }
    }
}

/// `Total Tests: N`, `Passed: N`, `Failed: N`, `Skipped: N`.
#[derive(Default)]
struct SimpleScan {
    total: Option<u32>,
    passed: Option<u32>,
    failed: Option<u32>,
    skipped: Option<u32>,
}

impl SimpleScan {
    fn line(&mut self, line: &str) {
        let lower = line.to_ascii_lowercase();
        for (key, slot) in [
            ("total tests", &mut self.total),
            ("passed", &mut self.passed),
            ("failed", &mut self.failed),
            ("skipped", &mut self.skipped),
        ] {
            if let Some(n) = find_count(&lower, key) {
                *slot = Some(n);
            }
        }
    }

    /// `None` when no count was found at all.
    fn counts(&self, notes: &mut Vec<String>) -> Option<Counts> {
        if self.total.is_none() && self.passed.is_none() && self.failed.is_none() {
            return None;
        }
        let failed = self.failed.unwrap_or(0);
        let skipped = self.skipped.unwrap_or(0);
        let counts = match (self.total, self.passed) {
            (Some(total), Some(passed)) => {
                let sum = passed.saturating_add(failed).saturating_add(skipped);
                let failed = if self.failed.is_none() && total > sum {
                    total - passed - skipped
                } else {
                    failed
                };
                let sum = passed.saturating_add(failed).saturating_add(skipped);
                if sum != total {
                    notes.push(format!(
                        "inconsistent counts in the output (total {total}, passed {passed}, failed {failed}, skipped {skipped}): total taken as {sum}"
                    ));
                }
                Counts {
                    total: sum,
                    passed,
                    failed,
                    skipped,
                }
            }
            (Some(total), None) => Counts {
                total,
                passed: total.saturating_sub(failed).saturating_sub(skipped),
                failed,
                skipped,
            },
            (None, passed) => {
                let passed = passed.unwrap_or(0);
                Counts {
                    total: passed + failed + skipped,
                    passed,
                    failed,
                    skipped,
                }
            }
        };
        Some(counts)
    }
}

/// The number after `key` `:` in `lower` (already lower-case), the last occurrence
/// winning; `key` must start at a word boundary.
fn find_count(lower: &str, key: &str) -> Option<u32> {
    let mut found = None;
    for (at, _) in lower.match_indices(key) {
        let boundary = lower[..at]
            .chars()
            .next_back()
            .is_none_or(|c| !c.is_alphanumeric() && c != '_');
        if !boundary {
            continue;
        }
        let rest = lower[at + key.len()..].trim_start();
        let Some(rest) = rest.strip_prefix(':') else {
            continue;
        };
        let rest = rest.trim_start();
        let digits: &str = &rest[..rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len())];
        if let Ok(n) = digits.parse() {
            found = Some(n);
        }
    }
    found
}

/// `Ran N tests in Xs` followed by `OK`, `OK (skipped=1)`, `FAILED (failures=1, ...)`
/// or `NO TESTS RAN`.
#[derive(Default)]
struct UnittestScan {
    ran: Option<u32>,
    outcome: Option<Counts>,
}

impl UnittestScan {
    fn line(&mut self, line: &str) {
        let line = line.trim();
        if let Some(rest) = line.strip_prefix("Ran ") {
            let mut words = rest.split_whitespace();
            if let (Some(n), Some(w)) = (words.next(), words.next())
                && (w == "test" || w == "tests")
                && let Ok(n) = n.parse()
            {
                self.ran = Some(n);
                self.outcome = None;
            }
            return;
        }
        let Some(ran) = self.ran else { return };
        if line == "NO TESTS RAN" {
            self.outcome = Some(Counts::default());
            return;
        }
        let (ok, details) = if let Some(rest) = line.strip_prefix("OK") {
            (true, rest)
        } else if let Some(rest) = line.strip_prefix("FAILED") {
            (false, rest)
        } else {
            return;
        };
        let details = details.trim();
        if !(details.is_empty() || details.starts_with('(') && details.ends_with(')')) {
            return;
        }
        let mut failed = 0u32;
        let mut skipped = 0u32;
        for part in details.trim_matches(['(', ')']).split(',') {
            let Some((key, value)) = part.split_once('=') else {
                continue;
            };
            let Ok(n) = value.trim().parse::<u32>() else {
                continue;
            };
            match key.trim() {
                "failures" | "errors" | "unexpected successes" => failed += n,
                "skipped" => skipped += n,
                _ => {}
            }
        }
        if !ok && failed == 0 {
            failed = 1;
        }
        let total = ran.max(failed + skipped);
        self.outcome = Some(Counts {
            total,
            passed: total - failed - skipped,
            failed,
            skipped,
        });
    }

    fn counts(&self) -> Option<Counts> {
        self.outcome
    }
}

/// pytest's final line: `=== 1 failed, 2 passed, 1 skipped in 0.12s ===`,
/// `no tests ran in 0.01s`.
fn parse_pytest_summary(line: &str) -> Option<Counts> {
    let line = line
        .trim()
        .trim_matches(|c: char| c == '=' || c.is_whitespace());
    let (counts, time) = line.rsplit_once(" in ")?;
    let time = time.split_whitespace().next()?;
    if !time.ends_with('s') || !time.starts_with(|c: char| c.is_ascii_digit()) {
        return None;
    }
    if counts == "no tests ran" {
        return Some(Counts::default());
    }
    let mut c = Counts::default();
    for part in counts.split(", ") {
        let (n, word) = part.trim().split_once(' ')?;
        let n: u32 = n.parse().ok()?;
        match word {
            "passed" | "xfailed" | "xpassed" => c.passed += n,
            "failed" | "error" | "errors" => c.failed += n,
            "skipped" => c.skipped += n,
            "warning" | "warnings" | "deselected" | "rerun" | "reruns" => {}
            _ => return None,
        }
    }
    c.total = c.passed + c.failed + c.skipped;
    Some(c)
}

/// unittest `-v` (`test_x (mod.Class.test_x) ... ok`) and pytest `-v`
/// (`tests/test_x.py::test_a PASSED  [ 50%]`) result lines.
fn parse_case_line(line: &str) -> Option<TestCase> {
    let case = |name: &str, status, message: Option<&str>| TestCase {
        name: name.trim().to_string(),
        status,
        duration_ms: None,
        message: message.map(str::to_string),
    };
    if let Some((name, result)) = line.rsplit_once(" ... ") {
        let result = result.trim();
        let status = match result {
            "ok" | "expected failure" => CaseStatus::Passed,
            "FAIL" | "unexpected success" => CaseStatus::Failed,
            "ERROR" => CaseStatus::Error,
            r if r.starts_with("skipped") => {
                return Some(case(name, CaseStatus::Skipped, Some(r)));
            }
            _ => return None,
        };
        return Some(case(name, status, None));
    }
    let mut words = line.split_whitespace();
    let (name, result) = (words.next()?, words.next()?);
    if !name.contains("::") {
        return None;
    }
    let status = match result {
        "PASSED" | "XFAIL" | "XPASS" => CaseStatus::Passed,
        "FAILED" => CaseStatus::Failed,
        "SKIPPED" => CaseStatus::Skipped,
        "ERROR" => CaseStatus::Error,
        _ => return None,
    };
    Some(case(name, status, None))
}

/// Reads the json result object (shape in the module documentation).
fn json_counts(
    map: &serde_json::Map<String, serde_json::Value>,
) -> Result<(Counts, Vec<TestCase>), JsonResultError> {
    let count = |key: &'static str, required: bool| -> Result<u32, JsonResultError> {
        match map.get(key) {
            None | Some(serde_json::Value::Null) if !required => Ok(0),
            None => Err(JsonResultError::Missing { key }),
            Some(v) => v
                .as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .ok_or_else(|| JsonResultError::NotACount {
                    key,
                    value: v.clone(),
                }),
        }
    };
    let passed = count("passed", true)?;
    let failed = count("failed", true)?.saturating_add(count("errors", false)?);
    let skipped = count("skipped", false)?;
    let sum = passed.saturating_add(failed).saturating_add(skipped);
    let total = match map.get("total") {
        None | Some(serde_json::Value::Null) => sum,
        Some(_) => count("total", true)?,
    };
    if total != sum {
        return Err(JsonResultError::TotalMismatch { total, sum });
    }
    let mut cases = Vec::new();
    match map.get("tests") {
        None | Some(serde_json::Value::Null) => {}
        Some(serde_json::Value::Array(tests)) => {
            for (i, t) in tests.iter().enumerate() {
                let serde_json::Value::Object(t) = t else {
                    return Err(JsonResultError::CaseNotObject { index: i });
                };
                let name = t
                    .get("name")
                    .and_then(|v| v.as_str())
                    .map_or_else(|| format!("test {}", i + 1), str::to_string);
                let status = t
                    .get("status")
                    .and_then(|v| v.as_str())
                    .and_then(CaseStatus::from_name)
                    .ok_or(JsonResultError::CaseStatus { index: i })?;
                cases.push(TestCase {
                    name,
                    status,
                    duration_ms: t.get("duration_ms").and_then(|v| v.as_u64()),
                    message: t
                        .get("message")
                        .and_then(|v| v.as_str())
                        .map(str::to_string),
                });
                if cases.len() >= MAX_CASES {
                    break;
                }
            }
        }
        Some(_) => return Err(JsonResultError::TestsNotArray),
    }
    Ok((
        Counts {
            total,
            passed,
            failed,
            skipped,
        },
        cases,
    ))
}

/// The entry point, checked: relative, no `..`, exists, inside the pack.
struct Entry {
    /// As written (relative to the pack directory), `./`-prefixed if it starts with
    /// `-` so that it cannot be taken for an option.
    arg: String,
    /// Resolved path (for a pytest node id, the file part).
    path: PathBuf,
}

fn resolve_entry(
    root: &Path,
    entry: &str,
    runner_type: RunnerType,
) -> Result<Entry, EntryPointProblem> {
    let trimmed = entry.trim();
    if trimmed.is_empty() {
        return Err(EntryPointProblem::Empty);
    }
    let looks_absolute = trimmed.starts_with(['/', '\\'])
        || trimmed.as_bytes().get(1) == Some(&b':')
        || Path::new(trimmed).is_absolute();
    if looks_absolute {
        return Err(EntryPointProblem::Absolute);
    }
    if trimmed.split(['/', '\\']).any(|p| p == "..")
        || Path::new(trimmed)
            .components()
            .any(|c| matches!(c, Component::ParentDir))
    {
        return Err(EntryPointProblem::ParentDir);
    }
    // pytest node ids: check the file part.
    let file_part = match runner_type {
        RunnerType::Pytest => trimmed.split("::").next().unwrap_or(trimmed),
        _ => trimmed,
    };
    let mut candidate = root.join(file_part);
    if !candidate.exists() && runner_type == RunnerType::Unittest && !file_part.contains('/') {
        // A dotted module name: `tests.test_x` → tests/test_x.py or tests/test_x/.
        let as_path = file_part.replace('.', "/");
        let file = root.join(format!("{as_path}.py"));
        candidate = if file.is_file() {
            file
        } else {
            root.join(as_path)
        };
    }
    let resolved = candidate
        .canonicalize()
        .map_err(EntryPointProblem::Missing)?;
    if !resolved.starts_with(root) {
        return Err(EntryPointProblem::OutsidePack);
    }
    let arg = if trimmed.starts_with('-') {
        format!("./{trimmed}")
    } else {
        trimmed.to_string()
    };
    Ok(Entry {
        arg,
        path: resolved,
    })
}

fn build_command(
    runner: &TestRunner,
    entry: &Entry,
    opts: &TestRunOptions,
) -> Result<(OsString, Vec<OsString>), SuiteError> {
    let python = || opts.python.clone().into_os_string();
    Ok(match runner.runner_type {
        RunnerType::Script => {
            if !entry.path.is_file() {
                return Err(SuiteError::NotAFile {
                    entry: entry.arg.clone(),
                });
            }
            match read_shebang(&entry.path) {
                Some((interpreter, arg)) => {
                    let mut args: Vec<OsString> = arg.into_iter().map(Into::into).collect();
                    args.push(entry.arg.clone().into());
                    (interpreter.into(), args)
                }
                None if entry.arg.ends_with(".sh") => {
                    ("/bin/sh".into(), vec![entry.arg.clone().into()])
                }
                None => ("/bin/bash".into(), vec![entry.arg.clone().into()]),
            }
        }
        RunnerType::Unittest if entry.path.is_dir() => (
            python(),
            [
                "-m", "unittest", "discover", "-v", "-s", &entry.arg, "-t", ".",
            ]
            .map(OsString::from)
            .to_vec(),
        ),
        RunnerType::Unittest => (
            python(),
            ["-m", "unittest", "-v", &entry.arg]
                .map(OsString::from)
                .to_vec(),
        ),
        RunnerType::Pytest => (
            python(),
            ["-m", "pytest", "-v", "-p", "no:cacheprovider", &entry.arg]
                .map(OsString::from)
                .to_vec(),
        ),
    })
}

/// `#!interpreter [one argument]` from the first line of `path` (a resolved path in
/// the pack), opened as a regular file without following a link or waiting on a FIFO.
fn read_shebang(path: &Path) -> Option<(String, Option<String>)> {
    let mut head = [0u8; 256];
    let dir = crate::packfs::PackDir::open(path.parent()?).ok()?;
    let mut file = dir.open_file(path.file_name()?).ok()?.file;
    let n = file.read(&mut head).ok()?;
    let head = head[..n].strip_prefix(b"#!")?;
    let line = head.split(|&b| b == b'\n').next()?;
    let line = std::str::from_utf8(line).ok()?.trim();
    let (interpreter, arg) = match line.split_once([' ', '\t']) {
        Some((i, a)) => (i, Some(a.trim().to_string()).filter(|a| !a.is_empty())),
        None => (line, None),
    };
    (!interpreter.is_empty()).then(|| (interpreter.to_string(), arg))
}

/// The end of the combined output, whole lines.
#[derive(Default)]
struct OutputTail {
    lines: std::collections::VecDeque<String>,
    bytes: usize,
}

impl OutputTail {
    fn push(&mut self, line: &str) {
        let line = clip_end(line, OUTPUT_TAIL_BYTES);
        self.bytes += line.len() + 1;
        self.lines.push_back(line.to_string());
        while self.bytes > OUTPUT_TAIL_BYTES {
            match self.lines.pop_front() {
                Some(old) => self.bytes -= old.len() + 1,
                None => break,
            }
        }
    }

    fn into_string(self) -> String {
        let mut out = String::with_capacity(self.bytes);
        for line in self.lines {
            out.push_str(&line);
            out.push('\n');
        }
        out
    }
}

/// At most `max` characters of `s`, with `…` when cut.
fn clip(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((at, _)) => format!("{}…", &s[..at]),
        None => s.to_string(),
    }
}

/// The last (at most) `max` bytes of `s`, on a character boundary.
fn clip_end(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut start = s.len() - max;
    while !s.is_char_boundary(start) {
        start += 1;
    }
    &s[start..]
}

/// The installation prefix of an interpreter given by absolute path (`<venv>` for
/// `<venv>/bin/python`): the sandboxed suite must read it. Links are not resolved
/// here: the rule is taken on the directory they lead to.
fn interpreter_prefix(python: &Path) -> Option<PathBuf> {
    if !python.is_absolute() {
        return None;
    }
    let prefix = python.parent()?.parent()?;
    (prefix != Path::new("/")).then(|| prefix.to_path_buf())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::progress::ProgressEvent;

    struct Pack {
        dir: tempfile::TempDir,
    }

    impl Pack {
        fn new() -> Self {
            Self {
                dir: tempfile::tempdir().unwrap(),
            }
        }

        fn file(&self, rel: &str, content: &str) -> &Self {
            let path = self.dir.path().join(rel);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, content).unwrap();
            self
        }

        fn path(&self) -> &Path {
            self.dir.path()
        }
    }

    fn runner(runner_type: RunnerType, entry: &str) -> TestRunner {
        TestRunner {
            runner_type,
            entry_point: entry.to_string(),
            timeout_secs: None,
            result_format: ResultFormat::Simple,
        }
    }

    fn testing(runners: Vec<(&str, TestRunner)>) -> Testing {
        Testing {
            enabled: true,
            discovery: None,
            runners: runners
                .into_iter()
                .map(|(n, r)| (n.to_string(), r))
                .collect::<BTreeMap<_, _>>(),
            result_format: None,
            result_path: None,
            min_pass_rate: None,
            on_failure: None,
        }
    }

    async fn run(pack: &Pack, testing: &Testing) -> (PackTestResult, Vec<ProgressEvent>) {
        let (reporter, mut rx) = Reporter::channel("demo");
        let result = run_pack_tests(
            pack.path(),
            "demo",
            "1.0.0",
            testing,
            &TestRunOptions::default(),
            &reporter,
        )
        .await;
        let mut events = Vec::new();
        while let Ok(e) = rx.try_recv() {
            events.push(e);
        }
        (result, events)
    }

    fn pid_gone(pid: i32) -> bool {
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Ok(stat) => {
                let state = stat
                    .rsplit(')')
                    .next()
                    .and_then(|s| s.split_whitespace().next());
                matches!(state, Some("Z" | "X"))
            }
            Err(_) => true,
        }
    }

    #[tokio::test]
    async fn script_with_simple_counts() {
        let pack = Pack::new();
        pack.file(
            "tests/run.sh",
            "echo 'starting'\necho 'Total Tests: 3'\necho '  passed:   2 (fine)'\necho 'FAILED: 0'\necho 'Skipped: 1' >&2\n",
        );
        let t = testing(vec![("shell", runner(RunnerType::Script, "tests/run.sh"))]);
        let (result, events) = run(&pack, &t).await;
        let suite = &result.suites[0];
        assert_eq!(
            (suite.total, suite.passed, suite.failed, suite.skipped),
            (3, 2, 0, 1)
        );
        assert_eq!(suite.exit_code, Some(0));
        assert!(suite.error.is_none(), "{suite:?}");
        assert_eq!(result.status, TestStatus::Partial);
        assert_eq!(result.pass_rate, 1.0);
        assert!(result.meets_min_pass_rate);
        assert!(result.passed());
        assert!(suite.output_tail.contains("Total Tests: 3"));
        // Progress: suite started, each output line, suite finished with counts.
        assert!(events.iter().all(|e| e.stage == Stage::Test));
        assert!(
            events
                .iter()
                .any(|e| e.message.contains("running test suite `shell`"))
        );
        assert!(events.iter().any(|e| e.message == "[shell] starting"));
        assert!(events.iter().any(|e| {
            e.message
                .starts_with("test suite `shell`: 2 passed, 0 failed, 1 skipped of 3")
        }));
        let json = result.to_json();
        assert_eq!(json["status"], "partial");
        assert_eq!(json["suites"][0]["runner_type"], "script");
    }

    #[tokio::test]
    async fn nonzero_exit_with_zero_failed_counts_as_failure() {
        let pack = Pack::new();
        pack.file(
            "t.sh",
            "echo 'Total Tests: 2'; echo 'Passed: 2'; echo 'Failed: 0'; exit 1\n",
        );
        let t = testing(vec![("s", runner(RunnerType::Script, "t.sh"))]);
        let (result, _) = run(&pack, &t).await;
        let suite = &result.suites[0];
        assert_eq!((suite.total, suite.passed, suite.failed), (3, 2, 1));
        assert_eq!(suite.exit_code, Some(1));
        assert!(
            suite.notes.iter().any(|n| n.contains("exit code 1")),
            "{:?}",
            suite.notes
        );
        assert_eq!(result.status, TestStatus::Failed);
        assert!(!result.passed());
    }

    #[tokio::test]
    async fn script_without_counts_falls_back_to_exit_code() {
        let pack = Pack::new();
        pack.file("ok.bash", "echo hello\n")
            .file("bad.sh", "exit 7\n");
        let t = testing(vec![
            ("a", runner(RunnerType::Script, "ok.bash")),
            ("b", runner(RunnerType::Script, "bad.sh")),
        ]);
        let (result, _) = run(&pack, &t).await;
        let (a, b) = (&result.suites[0], &result.suites[1]);
        assert_eq!((a.name.as_str(), a.total, a.passed), ("a", 1, 1));
        assert_eq!(
            (b.name.as_str(), b.total, b.failed, b.exit_code),
            ("b", 1, 1, Some(7))
        );
        assert!(a.notes[0].contains("exit code 0"), "{:?}", a.notes);
        assert_eq!(result.status, TestStatus::Failed);
        assert_eq!(result.pass_rate, 0.5);
    }

    #[tokio::test]
    async fn shebang_scripts_use_their_interpreter() {
        let pack = Pack::new();
        pack.file(
            "tests/run_tests",
            "#!/usr/bin/env python3\nimport sys\nprint('Total Tests: 4')\nprint('Passed: 4', file=sys.stderr)\n",
        );
        let t = testing(vec![("py", runner(RunnerType::Script, "tests/run_tests"))]);
        let (result, _) = run(&pack, &t).await;
        assert_eq!(result.suites[0].passed, 4, "{:?}", result.suites[0]);
        assert_eq!(result.status, TestStatus::Passed);
    }

    const UNITTEST_FILE: &str = r#"import unittest

class Sample(unittest.TestCase):
    def test_pass(self):
        self.assertEqual(1 + 1, 2)

    def test_fail(self):
        self.assertEqual(1 + 1, 3)

    @unittest.skip("not today")
    def test_skip(self):
        pass
"#;

    #[tokio::test]
    async fn unittest_pass_fail_skip() {
        let pack = Pack::new();
        pack.file("tests/__init__.py", "")
            .file("tests/test_sample.py", UNITTEST_FILE);
        let t = testing(vec![
            ("by_dir", runner(RunnerType::Unittest, "tests")),
            (
                "by_module",
                runner(RunnerType::Unittest, "tests.test_sample"),
            ),
            (
                "by_path",
                runner(RunnerType::Unittest, "tests/test_sample.py"),
            ),
        ]);
        let (result, _) = run(&pack, &t).await;
        for suite in &result.suites {
            assert_eq!(
                (suite.total, suite.passed, suite.failed, suite.skipped),
                (3, 1, 1, 1),
                "{suite:#?}"
            );
            assert_eq!(suite.exit_code, Some(1));
            assert!(suite.error.is_none());
            let statuses: Vec<_> = suite.cases.iter().map(|c| c.status).collect();
            assert_eq!(statuses.len(), 3, "{:?}", suite.cases);
            assert!(statuses.contains(&CaseStatus::Passed));
            assert!(statuses.contains(&CaseStatus::Failed));
            assert!(statuses.contains(&CaseStatus::Skipped));
        }
        assert_eq!(
            (
                result.total_tests,
                result.passed,
                result.failed,
                result.skipped
            ),
            (9, 3, 3, 3)
        );
        assert_eq!(result.status, TestStatus::Failed);
        assert_eq!(result.pass_rate, 0.5);
        // No bytecode written into the pack.
        assert!(!pack.path().join("tests/__pycache__").exists());
    }

    #[tokio::test]
    async fn pytest_when_available() {
        let available = std::process::Command::new("python3")
            .args(["-m", "pytest", "--version"])
            .output()
            .is_ok_and(|o| o.status.success());
        if !available {
            eprintln!("NOTICE: `python3 -m pytest` is not available; pytest runner test skipped");
            return;
        }
        let pack = Pack::new();
        pack.file(
            "tests/test_p.py",
            "import pytest\n\ndef test_ok():\n    assert True\n\ndef test_bad():\n    assert False\n\n@pytest.mark.skip(reason='no')\ndef test_skip():\n    pass\n",
        );
        let t = testing(vec![("pt", runner(RunnerType::Pytest, "tests/test_p.py"))]);
        let (result, _) = run(&pack, &t).await;
        let suite = &result.suites[0];
        assert_eq!(
            (suite.total, suite.passed, suite.failed, suite.skipped),
            (3, 1, 1, 1),
            "{suite:#?}"
        );
        assert!(!pack.path().join(".pytest_cache").exists());
    }

    #[tokio::test]
    async fn json_results() {
        let pack = Pack::new();
        pack.file(
            "t.sh",
            r#"echo '{"note": "not a result"}'
echo 'some log line'
echo '{"total": 3, "passed": 1, "failed": 1, "skipped": 1, "tests": [{"name": "a", "status": "passed", "duration_ms": 5}, {"name": "b", "status": "failed", "message": "boom"}, {"name": "c", "status": "skipped"}]}'
echo 'trailing noise'
exit 1
"#,
        )
        .file("bad.sh", "echo '{\"total\": 1}'\necho not json\n")
        .file("wrong.sh", "echo '{\"total\": 5, \"passed\": 1, \"failed\": 0}'\n");
        let json = |entry: &str| TestRunner {
            result_format: ResultFormat::Json,
            ..runner(RunnerType::Script, entry)
        };
        let t = testing(vec![
            ("a", json("t.sh")),
            ("b", json("bad.sh")),
            ("c", json("wrong.sh")),
        ]);
        let (result, _) = run(&pack, &t).await;
        let a = &result.suites[0];
        assert_eq!(
            (a.total, a.passed, a.failed, a.skipped),
            (3, 1, 1, 1),
            "{a:#?}"
        );
        assert!(a.error.is_none());
        assert_eq!(a.cases.len(), 3);
        assert_eq!(a.cases[0].duration_ms, Some(5));
        assert_eq!(a.cases[1].message.as_deref(), Some("boom"));
        let b = &result.suites[1];
        assert!(
            b.error.as_deref().unwrap().contains("no line of stdout"),
            "{b:?}"
        );
        assert_eq!((b.total, b.failed), (1, 1));
        let c = &result.suites[2];
        assert!(
            c.error.as_deref().unwrap().contains("`total` is 5"),
            "{c:?}"
        );
        assert_eq!(result.status, TestStatus::Failed);
    }

    #[tokio::test]
    async fn timeout_kills_grandchildren_and_later_suites_still_run() {
        let pack = Pack::new();
        pack.file("slow.sh", "sleep 1000 &\necho \"bg=$!\"\nsleep 1000\n")
            .file("quick.sh", "echo 'Passed: 1'\n");
        let slow = TestRunner {
            timeout_secs: Some(1),
            ..runner(RunnerType::Script, "slow.sh")
        };
        let t = testing(vec![
            ("a_slow", slow),
            ("b_quick", runner(RunnerType::Script, "quick.sh")),
        ]);
        let started = Instant::now();
        let (result, _) = run(&pack, &t).await;
        assert!(started.elapsed() < Duration::from_secs(20));
        let slow = &result.suites[0];
        assert!(slow.timed_out);
        assert!(
            slow.error
                .as_deref()
                .unwrap()
                .contains("timed out after 1s")
        );
        assert_eq!((slow.total, slow.failed), (1, 1));
        let pid: i32 = slow
            .output_tail
            .lines()
            .find_map(|l| l.strip_prefix("bg="))
            .unwrap()
            .parse()
            .unwrap();
        let mut gone = false;
        for _ in 0..50 {
            gone = pid_gone(pid);
            if gone {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(gone, "grandchild {pid} survived the timeout");
        assert_eq!(result.suites[1].passed, 1);
        assert_eq!(result.status, TestStatus::Failed);
    }

    #[tokio::test]
    async fn ten_megabytes_of_output_do_not_deadlock() {
        let pack = Pack::new();
        pack.file(
            "loud.sh",
            "head -c 10485760 /dev/zero | tr '\\0' 'x' | fold -w 1000\necho\necho 'Total Tests: 1'\necho 'Passed: 1' >&2\n",
        );
        let t = testing(vec![("loud", runner(RunnerType::Script, "loud.sh"))]);
        let (result, events) = run(&pack, &t).await;
        assert_eq!(
            result.status,
            TestStatus::Passed,
            "{:?}",
            result.suites[0].notes
        );
        assert!(
            events.len() < MAX_PROGRESS_LINES + 20,
            "{} events",
            events.len()
        );
        assert!(
            result.suites[0]
                .notes
                .iter()
                .any(|n| n.contains("not streamed"))
        );
        assert!(result.suites[0].output_tail.len() <= OUTPUT_TAIL_BYTES + 1);
    }

    #[tokio::test]
    async fn entry_points_must_stay_inside_the_pack() {
        let outside = tempfile::tempdir().unwrap();
        let marker = outside.path().join("ran");
        let evil = outside.path().join("evil.sh");
        std::fs::write(&evil, format!("touch {}\n", marker.display())).unwrap();
        let pack = Pack::new();
        std::os::unix::fs::symlink(&evil, pack.path().join("link.sh")).unwrap();
        let escape = format!(
            "../{}/evil.sh",
            outside.path().file_name().unwrap().to_string_lossy()
        );
        let t = testing(vec![
            ("abs", runner(RunnerType::Script, &evil.to_string_lossy())),
            ("dotdot", runner(RunnerType::Script, &escape)),
            ("link", runner(RunnerType::Script, "link.sh")),
            ("missing", runner(RunnerType::Script, "nope.sh")),
        ]);
        let (result, _) = run(&pack, &t).await;
        let errors: Vec<_> = result
            .suites
            .iter()
            .map(|s| s.error.clone().unwrap())
            .collect();
        assert!(errors[0].contains("relative"), "{errors:?}");
        assert!(errors[1].contains(".."), "{errors:?}");
        assert!(errors[2].contains("outside the pack"), "{errors:?}");
        assert!(errors[3].contains("does not exist"), "{errors:?}");
        assert!(!marker.exists(), "an escaping entry point was run");
        assert_eq!(result.status, TestStatus::Failed);
        assert_eq!(result.failed, 4);
    }

    #[tokio::test]
    async fn min_pass_rate_half() {
        let pack = Pack::new();
        pack.file(
            "t.sh",
            "echo 'Total Tests: 2'; echo 'Passed: 1'; echo 'Failed: 1'; exit 1\n",
        );
        let mut t = testing(vec![("s", runner(RunnerType::Script, "t.sh"))]);
        t.min_pass_rate = Some(0.5);
        t.on_failure = Some("block".into());
        let (result, _) = run(&pack, &t).await;
        assert_eq!(
            (result.total_tests, result.passed, result.failed),
            (2, 1, 1)
        );
        assert_eq!(result.pass_rate, 0.5);
        assert!(result.meets_min_pass_rate);
        assert_eq!(result.status, TestStatus::Failed);
        assert!(result.passed());
        assert_eq!(result.to_json()["on_failure"], "block");

        t.min_pass_rate = Some(0.75);
        let (result, _) = run(&pack, &t).await;
        assert!(!result.meets_min_pass_rate);
        assert!(!result.passed());
    }

    #[tokio::test]
    async fn zero_tests_is_skipped_not_passed() {
        let pack = Pack::new();
        pack.file("t.sh", "echo 'Total Tests: 0'\n");
        let t = testing(vec![("s", runner(RunnerType::Script, "t.sh"))]);
        let (result, _) = run(&pack, &t).await;
        assert_eq!(result.status, TestStatus::Skipped);
        assert_eq!(result.pass_rate, 0.0);
        assert!(!result.passed());
        assert!(result.notes.iter().any(|n| n.contains("zero tests")));

        let (result, _) = run(&pack, &testing(vec![])).await;
        assert_eq!(result.status, TestStatus::Skipped);
        assert!(!result.passed());

        let mut disabled = testing(vec![("s", runner(RunnerType::Script, "t.sh"))]);
        disabled.enabled = false;
        let (result, _) = run(&pack, &disabled).await;
        assert_eq!(result.status, TestStatus::Skipped);
        assert!(result.suites.is_empty());
    }

    #[tokio::test]
    async fn environment_does_not_leak() {
        // SAFETY: set once, before this test spawns anything; other tests only read the
        // environment through std (which locks it) when spawning children.
        unsafe { std::env::set_var("ATTUNE_TEST_SECRET", "hunter2") };
        let pack = Pack::new();
        pack.file("env.sh", "env\necho \"HOME is $HOME\"\necho 'Passed: 1'\n");
        let t = testing(vec![("env", runner(RunnerType::Script, "env.sh"))]);
        let (result, events) = run(&pack, &t).await;
        let tail = &result.suites[0].output_tail;
        assert!(
            !tail.contains("ATTUNE_TEST_SECRET") && !tail.contains("hunter2"),
            "{tail}"
        );
        assert!(!events.iter().any(|e| e.message.contains("hunter2")));
        assert!(!tail.contains("CARGO"), "{tail}");
        assert!(tail.contains("PYTHONUNBUFFERED=1"));
        assert!(tail.contains("LANG=C.UTF-8"));
        assert!(
            tail.contains("HOME is /") && tail.contains("attune-run-"),
            "{tail}"
        );
        assert_eq!(result.status, TestStatus::Passed);
    }

    #[tokio::test]
    async fn cancel_stops_the_running_suite_and_the_rest() {
        let pack = Pack::new();
        pack.file("slow.sh", "echo started\nsleep 1000\n");
        let t = testing(vec![
            ("a", runner(RunnerType::Script, "slow.sh")),
            ("b", runner(RunnerType::Script, "slow.sh")),
        ]);
        let (reporter, mut rx) = Reporter::channel("demo");
        let opts = TestRunOptions::default();
        let path = pack.path().to_path_buf();
        let task = tokio::spawn(async move {
            run_pack_tests(&path, "demo", "1.0.0", &t, &opts, &reporter).await
        });
        while let Some(e) = rx.recv().await {
            if e.message == "[a] started" {
                break;
            }
        }
        drop(rx);
        let result = tokio::time::timeout(Duration::from_secs(20), task)
            .await
            .unwrap()
            .unwrap();
        assert!(result.cancelled);
        assert_eq!(result.suites.len(), 1);
        assert_eq!(result.suites[0].error.as_deref(), Some(CANCELLED));
        assert!(!result.passed());
        assert!(
            result.notes.iter().any(|n| n.contains("1 suite not run")),
            "{:?}",
            result.notes
        );
    }

    #[test]
    fn simple_count_parsing() {
        assert_eq!(find_count("total tests: 12", "total tests"), Some(12));
        assert_eq!(find_count("[ok] passed:3 of them", "passed"), Some(3));
        assert_eq!(find_count("unpassed: 3", "passed"), None);
        assert_eq!(find_count("passed 3", "passed"), None);
        assert_eq!(find_count("passed: 1, later passed: 2", "passed"), Some(2));
    }

    #[test]
    fn unittest_summaries() {
        let scan = |lines: &[&str]| {
            let mut s = UnittestScan::default();
            for l in lines {
                s.line(l);
            }
            s.counts()
        };
        let c = |total, passed, failed, skipped| Counts {
            total,
            passed,
            failed,
            skipped,
        };
        assert_eq!(
            scan(&["Ran 4 tests in 0.001s", "", "OK"]),
            Some(c(4, 4, 0, 0))
        );
        assert_eq!(
            scan(&["Ran 4 tests in 0.001s", "OK (skipped=2)"]),
            Some(c(4, 2, 0, 2))
        );
        assert_eq!(
            scan(&[
                "Ran 5 tests in 0.1s",
                "FAILED (failures=1, errors=1, skipped=1, expected failures=1)"
            ]),
            Some(c(5, 2, 2, 1))
        );
        assert_eq!(
            scan(&["Ran 0 tests in 0.000s", "NO TESTS RAN"]),
            Some(c(0, 0, 0, 0))
        );
        assert_eq!(scan(&["OK"]), None);
    }

    #[test]
    fn pytest_summaries() {
        let c = |total, passed, failed, skipped| Counts {
            total,
            passed,
            failed,
            skipped,
        };
        assert_eq!(
            parse_pytest_summary("==== 1 failed, 2 passed, 1 skipped, 1 warning in 0.12s ===="),
            Some(c(4, 2, 1, 1))
        );
        assert_eq!(
            parse_pytest_summary("3 passed, 1 error in 1.50s"),
            Some(c(4, 3, 1, 0))
        );
        assert_eq!(
            parse_pytest_summary("===== no tests ran in 0.01s ====="),
            Some(c(0, 0, 0, 0))
        );
        assert_eq!(parse_pytest_summary("I went in 3s"), None);
        assert_eq!(
            parse_case_line("tests/test_p.py::test_bad FAILED        [ 66%]").map(|c| c.status),
            Some(CaseStatus::Failed)
        );
    }
}
