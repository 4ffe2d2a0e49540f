//! `pack.yaml`: parsing, normalisation and validation of a pack manifest.
//!
//! Both the canonical Attune keys and the legacy/StackStorm spellings are accepted
//! (Attune's registration reads only the legacy ones and silently drops the canonical
//! ones; here both work):
//!
//! | canonical     | legacy            |
//! |---------------|-------------------|
//! | `label`       | `name`            |
//! | `conf_schema` | `config_schema`   |
//! | `meta`        | `metadata`        |
//! | `tags`        | `keywords`        |
//! | `python`      | `python_versions` (StackStorm list, e.g. `["3"]`), `dependencies.python_version` |
//! | `nodejs`      | `dependencies.nodejs_version` |
//!
//! When both spellings are present they must agree, else an error names both keys.
//!
//! Reading rules the YAML itself leaves open:
//!
//! * A key whose value is `null` (`description:` with nothing after it) counts as absent.
//! * Unknown top-level keys are not errors (real packs carry many); they are kept in
//!   [`Manifest::extra`] as JSON.
//! * Every problem is reported, not only the first: [`ManifestError::Invalid`] carries
//!   all issues. Suspicious but usable input gives [`Manifest::warnings`] instead.

pub mod dir_name;
mod fields;
mod reader;
pub mod requirement;
pub mod testing;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde_yaml::Value;

use crate::packfs::{PackDir, PackFsError, PackReadLimits};

pub use self::requirement::{
    PackDependency, RequirementError, RuntimeRequirement, parse_lenient_version,
};
pub use self::testing::{ResultFormat, RunnerType, TestDiscovery, TestRunner, Testing};

/// File name of the manifest inside a pack directory.
pub const MANIFEST_FILE: &str = "pack.yaml";

/// Longest accepted pack ref.
pub const MAX_PACK_REF_LEN: usize = 64;

/// Whether `s` is a valid pack ref: `^[a-z][a-z0-9_-]+$`, 2 to 64 characters.
///
/// This is the CHECK constraint of Attune's `pack.ref` column. Attune's `RefValidator`
/// also accepts 1-character refs, which the database then rejects; the stricter rule
/// is used so a ref accepted here can be stored. Dots are not allowed because
/// `pack.action` refs are split on the first dot. The upper bound keeps refs usable as
/// directory names and identifiers.
pub fn is_valid_pack_ref(s: &str) -> bool {
    let mut chars = s.chars();
    (2..=MAX_PACK_REF_LEN).contains(&s.len())
        && chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
}

/// A validated `pack.yaml`.
#[derive(Debug, Clone, PartialEq)]
pub struct Manifest {
    /// `ref`. StackStorm packs sometimes have no `ref`: then the directory name is the
    /// ref when it is a valid one, else `name` (also the label) when it is, with a
    /// warning (see [`Manifest::parse`]).
    pub pack_ref: String,
    /// `label`, or legacy `name`; defaults to the ref.
    pub label: String,
    pub description: Option<String>,
    /// Strict SemVer. `1` and `1.0` (StackStorm style, also unquoted YAML numbers) are
    /// padded to `1.0.0` with a warning.
    pub version: semver::Version,
    /// `conf_schema` or `config_schema`; a JSON object, `{}` when absent.
    pub conf_schema: serde_json::Value,
    /// `config` (default configuration); a JSON object, `{}` when absent.
    pub config: serde_json::Value,
    /// `meta` or `metadata`; a JSON object, `{}` when absent.
    pub meta: serde_json::Value,
    /// `tags` or `keywords`.
    pub tags: Vec<String>,
    /// `runtime_deps`, verbatim (`python`, `shell`, ...).
    pub runtime_deps: Vec<String>,
    /// `dependencies` (list form) or `dependencies.packs` (object form).
    pub dependencies: Vec<PackDependency>,
    /// `python`, `dependencies.python_version` or `python_versions` (see
    /// [`RuntimeRequirement`] for the semantics). Two of them with different meanings
    /// are an error, since picking one silently could hide a mistake.
    pub python: Option<RuntimeRequirement>,
    /// `nodejs` or `dependencies.nodejs_version`.
    pub nodejs: Option<RuntimeRequirement>,
    /// `attune_version` or `dependencies.attune_version`: the Attune versions the pack
    /// supports, with the same semantics as runtime requirements.
    pub attune_version: Option<RuntimeRequirement>,
    pub testing: Option<Testing>,
    /// Problems that did not prevent reading the manifest.
    pub warnings: Vec<ManifestIssue>,

    // Informational keys (index metadata), not used for installation.
    pub author: Option<String>,
    pub email: Option<String>,
    pub license: Option<String>,
    pub homepage: Option<String>,
    pub repository: Option<String>,
    pub use_case: Option<String>,
    pub contributors: Vec<String>,
    /// `system`: "system pack" flag (documented by Attune, not acted upon).
    pub system: Option<bool>,
    /// `enabled` (documented by Attune, not acted upon).
    pub enabled: Option<bool>,
    /// StackStorm's `stackstorm_version` requirement, kept as written once it parses as
    /// a version requirement (it is not compared with anything).
    pub stackstorm_version: Option<String>,
    /// Every other top-level key, converted to JSON (`worker_selector`, inline
    /// `actions`, ...).
    pub extra: BTreeMap<String, serde_json::Value>,
}

impl Manifest {
    /// Reads and validates `<pack_dir>/pack.yaml`; issues name that path as their file.
    /// The directory is opened and the file read through [`PackDir`] (no links, no
    /// FIFOs or devices, at most `limits.manifest_bytes`). `dir_name`: see
    /// [`Manifest::parse`].
    pub fn load(
        pack_dir: &Path,
        dir_name: Option<&str>,
        limits: &PackReadLimits,
    ) -> Result<Manifest, ManifestError> {
        let dir = PackDir::open(pack_dir).map_err(|source| ManifestError::Unreadable {
            path: pack_dir.join(MANIFEST_FILE),
            source,
        })?;
        Manifest::read(&dir, dir_name, limits)
    }

    /// Reads and validates `pack.yaml` of the opened pack directory `dir`. `dir_name`:
    /// see [`Manifest::parse`].
    pub fn read(
        dir: &PackDir,
        dir_name: Option<&str>,
        limits: &PackReadLimits,
    ) -> Result<Manifest, ManifestError> {
        let path = dir.path().join(MANIFEST_FILE);
        let text = dir
            .read_text(MANIFEST_FILE, limits.manifest())
            .map_err(|source| {
                if source.is_not_found() {
                    ManifestError::NotFound { path: path.clone() }
                } else {
                    ManifestError::Unreadable {
                        path: path.clone(),
                        source,
                    }
                }
            })?;
        Manifest::parse(&text, &path, dir_name)
    }

    /// Parses and validates manifest text; `file` is only used in messages.
    ///
    /// `dir_name` is the name of the pack's directory where it has a meaningful one (the
    /// directory given, a git repository's name, an archive's top directory; see
    /// [`dir_name`]), `None` where it has not (a staging directory). Without `ref`, it
    /// is the pack ref when it is a valid one, else `name` is (StackStorm's rule), with
    /// a warning either way.
    pub fn parse(
        text: &str,
        file: &Path,
        dir_name: Option<&str>,
    ) -> Result<Manifest, ManifestError> {
        let syntax = |e: serde_yaml::Error| ManifestError::Syntax {
            path: file.to_path_buf(),
            line: e.location().map(|l| l.line()),
            message: e.to_string(),
        };
        crate::yaml_limits::check_current(text).map_err(|source| ManifestError::Limit {
            path: file.to_path_buf(),
            source,
        })?;
        let mut value: Value = serde_yaml::from_str(text).map_err(syntax)?;
        // `<<: *anchor` merge keys are YAML conventions that authors expect to work.
        value.apply_merge().map_err(syntax)?;

        let mut cx = reader::Ctx::new(text, file);
        let manifest = match &value {
            Value::Mapping(map) => fields::read_manifest(map, dir_name, &mut cx),
            other => {
                cx.error(
                    "",
                    format!(
                        "the top level must be a mapping of keys to values, found {}",
                        reader::type_name(other)
                    ),
                );
                None
            }
        };
        match manifest {
            Some(mut manifest) if cx.errors.is_empty() => {
                manifest.warnings = cx.warnings;
                Ok(manifest)
            }
            _ => {
                if cx.errors.is_empty() {
                    // Every failing path reports; this only guards against a silent failure.
                    cx.error("", "invalid pack manifest");
                }
                Err(ManifestError::Invalid {
                    path: file.to_path_buf(),
                    issues: cx.errors,
                })
            }
        }
    }
}

/// One problem found in a manifest. Displays as `<file>: <key>: <message>`, or
/// `<file>: <message>` when the problem is not about one key (`key` is empty).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestIssue {
    pub file: PathBuf,
    /// Dotted path of the key, with list indexes: `version`, `tags[2]`,
    /// `testing.runners.python.entry_point`; empty for the whole document.
    pub key: String,
    pub message: String,
}

impl fmt::Display for ManifestIssue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() {
            write!(f, "{}: {}", self.file.display(), self.message)
        } else {
            write!(f, "{}: {}: {}", self.file.display(), self.key, self.message)
        }
    }
}

/// Why a manifest could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("{}: pack manifest not found", path.display())]
    NotFound { path: PathBuf },
    /// Opening or reading the file was refused (a link, a FIFO or device, too large,
    /// not UTF-8) or failed.
    #[error("cannot read the pack manifest: {source}")]
    Unreadable {
        path: PathBuf,
        #[source]
        source: PackFsError,
    },
    /// The file is not valid YAML. `line` is 1-based.
    #[error("{}: invalid YAML: {message}", path.display())]
    Syntax {
        path: PathBuf,
        line: Option<usize>,
        message: String,
    },
    /// The YAML crosses a size, depth, alias or expansion limit (checked before it is
    /// parsed into values).
    #[error("{}: {source}", path.display())]
    Limit {
        path: PathBuf,
        #[source]
        source: crate::yaml_limits::YamlLimitError,
    },
    /// The YAML is valid but the manifest is not; displays one issue per line.
    #[error("{}", display_issues(issues))]
    Invalid {
        path: PathBuf,
        issues: Vec<ManifestIssue>,
    },
}

impl ManifestError {
    /// The validation issues (empty unless [`ManifestError::Invalid`]).
    pub fn issues(&self) -> &[ManifestIssue] {
        match self {
            ManifestError::Invalid { issues, .. } => issues,
            _ => &[],
        }
    }

    /// The manifest file concerned.
    pub fn path(&self) -> &Path {
        match self {
            ManifestError::NotFound { path }
            | ManifestError::Unreadable { path, .. }
            | ManifestError::Syntax { path, .. }
            | ManifestError::Limit { path, .. }
            | ManifestError::Invalid { path, .. } => path,
        }
    }
}

fn display_issues(issues: &[ManifestIssue]) -> String {
    issues
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use semver::Version;
    use serde_json::json;

    const FILE: &str = "packs/x/pack.yaml";

    fn parse(text: &str) -> Manifest {
        Manifest::parse(text, Path::new(FILE), None).unwrap_or_else(|e| panic!("{e}"))
    }

    fn issues(text: &str) -> Vec<ManifestIssue> {
        match Manifest::parse(text, Path::new(FILE), None) {
            Err(ManifestError::Invalid { issues, path }) => {
                assert_eq!(path, Path::new(FILE));
                issues
            }
            other => panic!("expected Invalid, got {other:?}"),
        }
    }

    /// The issue for `key`; fails when there is none.
    fn issue_for<'a>(issues: &'a [ManifestIssue], key: &str) -> &'a ManifestIssue {
        issues
            .iter()
            .find(|i| i.key == key)
            .unwrap_or_else(|| panic!("no issue for `{key}` in {issues:#?}"))
    }

    fn ver(s: &str) -> Version {
        Version::parse(s).unwrap()
    }

    const ATTUNE_PACK: &str = r##"
ref: slack
label: "Slack Integration"
description: "Send messages and monitor Slack channels"
version: "2.1.0"
author: "Example Team"
email: "team@example.com"
license: "Apache-2.0"
conf_schema:
  api_token: {type: string, description: "Bot token", required: true, secret: true}
  default_channel: {type: string, default: "#general"}
config:
  default_channel: "#general"
meta:
  category: "chatops"
  documentation_url: "https://example.com/docs/slack"
tags: [slack, messaging]
runtime_deps: [python]
dependencies:
  - core@>=1.0.0
python: "3.9"
testing:
  enabled: true
  discovery: {method: directory, path: tests}
  runners:
    python: {type: pytest, entry_point: tests/test_actions.py, timeout: 120, result_format: simple}
  result_path: tests/results/
  min_pass_rate: 1.0
  on_failure: block
"##;

    #[test]
    fn canonical_attune_pack() {
        let m = parse(ATTUNE_PACK);
        assert_eq!(m.pack_ref, "slack");
        assert_eq!(m.label, "Slack Integration");
        assert_eq!(
            m.description.as_deref(),
            Some("Send messages and monitor Slack channels")
        );
        assert_eq!(m.version, ver("2.1.0"));
        assert_eq!(m.author.as_deref(), Some("Example Team"));
        assert_eq!(m.email.as_deref(), Some("team@example.com"));
        assert_eq!(m.license.as_deref(), Some("Apache-2.0"));
        assert_eq!(m.conf_schema["api_token"]["secret"], json!(true));
        assert_eq!(
            m.conf_schema["default_channel"]["default"],
            json!("#general")
        );
        assert_eq!(m.config, json!({"default_channel": "#general"}));
        assert_eq!(m.meta["category"], json!("chatops"));
        assert_eq!(m.tags, ["slack", "messaging"]);
        assert_eq!(m.runtime_deps, ["python"]);

        assert_eq!(m.dependencies.len(), 1);
        let core = &m.dependencies[0];
        assert_eq!(
            (core.pack_ref.as_str(), core.spec.as_str()),
            ("core", ">=1.0.0")
        );
        assert!(core.matches(&ver("1.4.2")));
        assert!(!core.matches(&ver("0.9.0")));

        let python = m.python.as_ref().unwrap();
        assert_eq!(python.raw, "3.9");
        assert!(python.matches(&parse_lenient_version("Python 3.12.1").unwrap()));
        assert!(!python.matches(&parse_lenient_version("3.8.10").unwrap()));
        assert!(m.nodejs.is_none());

        let testing = m.testing.as_ref().unwrap();
        assert!(testing.enabled);
        assert_eq!(
            testing.discovery,
            Some(TestDiscovery {
                method: "directory".into(),
                path: Some("tests".into())
            })
        );
        assert_eq!(
            testing.runners["python"],
            TestRunner {
                runner_type: RunnerType::Pytest,
                entry_point: "tests/test_actions.py".into(),
                timeout_secs: Some(120),
                result_format: ResultFormat::Simple,
            }
        );
        assert_eq!(testing.result_path.as_deref(), Some("tests/results/"));
        assert_eq!(testing.min_pass_rate, Some(1.0));
        assert_eq!(testing.on_failure.as_deref(), Some("block"));

        assert!(m.warnings.is_empty(), "{:?}", m.warnings);
        assert!(m.extra.is_empty(), "{:?}", m.extra);
    }

    #[test]
    fn stackstorm_exchange_pack() {
        let m = parse(
            r#"---
ref: aws
name: aws
description: st2 content pack containing Amazon Web Services integrations.
keywords:
  - aws
  - amazon web services
version: 1.0.2
python_versions:
  - "3"
author: StackStorm, Inc.
email: info@stackstorm.com
contributors:
  - "Jane Doe <jane@example.com>"
stackstorm_version: ">=3.0.0"
"#,
        );
        assert_eq!(m.pack_ref, "aws");
        assert_eq!(m.label, "aws");
        assert_eq!(m.tags, ["aws", "amazon web services"]);
        assert_eq!(m.version, ver("1.0.2"));
        assert_eq!(m.author.as_deref(), Some("StackStorm, Inc."));
        assert_eq!(m.email.as_deref(), Some("info@stackstorm.com"));
        assert_eq!(m.contributors, ["Jane Doe <jane@example.com>"]);
        assert_eq!(m.stackstorm_version.as_deref(), Some(">=3.0.0"));
        let python = m.python.as_ref().unwrap();
        assert!(python.matches(&ver("3.6.0")));
        assert!(python.matches(&ver("3.12.4")));
        assert!(!python.matches(&ver("2.7.18")));
        assert_eq!(m.conf_schema, json!({}));
        assert!(m.warnings.is_empty(), "{:?}", m.warnings);
    }

    #[test]
    fn legacy_only_keys_fill_canonical_fields() {
        let m = parse(
            r#"
ref: legacy_pack
name: "Legacy Pack"
version: "0.3.1"
config_schema:
  host: {type: string, required: true}
metadata: {category: misc}
keywords: [old, style]
"#,
        );
        assert_eq!(m.label, "Legacy Pack");
        assert_eq!(
            m.conf_schema,
            json!({"host": {"type": "string", "required": true}})
        );
        assert_eq!(m.meta, json!({"category": "misc"}));
        assert_eq!(m.tags, ["old", "style"]);
    }

    #[test]
    fn same_value_under_both_spellings_is_fine() {
        let m = parse("ref: ab\nversion: 1.0.0\nlabel: AB\nname: AB\ntags: [x]\nkeywords: [x]\n");
        assert_eq!(m.label, "AB");
        assert_eq!(m.tags, ["x"]);
    }

    #[test]
    fn name_is_used_as_ref_when_ref_is_missing() {
        let m = parse("name: my_pack\nversion: 1.0.0\n");
        assert_eq!(m.pack_ref, "my_pack");
        assert_eq!(m.label, "my_pack");
        assert_eq!(m.warnings.len(), 1);
        assert_eq!(m.warnings[0].key, "ref");

        let found = issues("name: My Pack\nversion: 1.0.0\n");
        assert!(issue_for(&found, "ref").message.contains("not a valid ref"));
    }

    #[test]
    fn the_directory_name_is_the_ref_when_ref_is_missing() {
        let parse_in = |text: &str, dir: Option<&str>| {
            Manifest::parse(text, Path::new(FILE), dir).unwrap_or_else(|e| panic!("{e}"))
        };
        let m = parse_in("name: Other Name\nversion: 1.0.0\n", Some("dirname_pack"));
        assert_eq!(m.pack_ref, "dirname_pack");
        assert_eq!(m.label, "Other Name");
        assert_eq!(m.warnings.len(), 1, "{:?}", m.warnings);
        assert_eq!(
            m.warnings[0].to_string(),
            "packs/x/pack.yaml: ref: missing; using the directory name \"dirname_pack\" as the \
             pack ref (StackStorm's rule; set ref to choose it)"
        );
        // The directory wins over a valid `name` too, as in StackStorm.
        let m = parse_in("name: my_pack\nversion: 1.0.0\n", Some("my-pack"));
        assert_eq!(m.pack_ref, "my-pack");

        // A directory name that is no ref gives way to `name`, and the warning says why.
        let m = parse_in("name: my_pack\nversion: 1.0.0\n", Some("My Pack"));
        assert_eq!(m.pack_ref, "my_pack");
        assert_eq!(
            m.warnings[0].message,
            "missing; using `name` (\"my_pack\") as the pack ref (the directory name \
             \"My Pack\" is not a valid pack ref; set ref to choose it)"
        );
        let m = parse_in("name: my_pack\nversion: 1.0.0\n", None);
        assert!(
            m.warnings[0]
                .message
                .ends_with("(the directory has no name to use; set ref to choose it)"),
            "{}",
            m.warnings[0]
        );

        // `ref` always wins, silently.
        let m = parse_in(
            "ref: chosen\nname: my_pack\nversion: 1.0.0\n",
            Some("dirname_pack"),
        );
        assert_eq!(m.pack_ref, "chosen");
        assert!(m.warnings.is_empty());

        let found = match Manifest::parse(
            "name: Other Name\nversion: 1.0.0\n",
            Path::new(FILE),
            Some("Not A Ref"),
        ) {
            Err(e) => e.issues().to_vec(),
            Ok(m) => panic!("{m:?}"),
        };
        assert_eq!(
            issue_for(&found, "ref").message,
            "required key is missing, and neither the directory name \"Not A Ref\" nor `name` \
             (\"Other Name\") is a valid ref to use instead"
        );
    }

    #[test]
    fn stackstorm_version_must_be_a_specifier() {
        for ok in [">=2.9.0", ">=3.0.0,<4", ">=1.8.0, <2.2.0", ">1.6.0", "3.4"] {
            let m = parse(&format!(
                "ref: pk\nversion: 1.0.0\nstackstorm_version: \"{ok}\"\n"
            ));
            assert_eq!(m.stackstorm_version.as_deref(), Some(ok));
        }
        let found = issues("ref: pk\nversion: 1.0.0\nstackstorm_version: latest\n");
        let issue = issue_for(&found, "stackstorm_version");
        assert!(
            issue
                .message
                .starts_with("\"latest\" is not a version specifier (`latest`: "),
            "{issue}"
        );
        assert!(
            issue
                .message
                .ends_with("write e.g. \">=3.0.0\" or \">=3.0.0, <4\""),
            "{issue}"
        );
        let found = issues("ref: pk\nversion: 1.0.0\nstackstorm_version: \">=3.0.0,\"\n");
        issue_for(&found, "stackstorm_version");
        let found = issues("ref: pk\nversion: 1.0.0\nattune_version: \">=x\"\n");
        assert!(issue_for(&found, "attune_version").message.contains(">=x"));
    }

    #[test]
    fn python_versions_are_2_or_3() {
        let m = parse("ref: pk\nversion: 1.0.0\npython_versions: [\"2\", 3]\n");
        assert!(m.python.unwrap().matches(&ver("2.7.18")));
        let found =
            issues("ref: pk\nversion: 1.0.0\npython_versions: [\"3\", \"3.9\", 4, \"3\"]\n");
        assert_eq!(
            issue_for(&found, "python_versions[1]").message,
            "\"3.9\" is not allowed: StackStorm accepts only \"2\" and \"3\" here (use \
             `python` for a finer requirement such as \">=3.9\")"
        );
        issue_for(&found, "python_versions[2]");
        assert_eq!(
            issue_for(&found, "python_versions[3]").message,
            "\"3\" is listed twice"
        );
        assert_eq!(found.len(), 3, "{found:#?}");
    }

    #[test]
    fn label_defaults_to_ref() {
        let m = parse("ref: core\nversion: 1.0.0\n");
        assert_eq!(m.label, "core");
        assert_eq!(m.description, None);
        assert_eq!(m.meta, json!({}));
        assert!(m.tags.is_empty() && m.dependencies.is_empty() && m.testing.is_none());
    }

    #[test]
    fn conflicting_canonical_and_legacy_keys() {
        let found = issues(
            r#"
ref: slack
label: "Slack Integration"
name: "Slack"
version: 1.0.0
conf_schema: {a: {type: string}}
config_schema: {b: {type: string}}
meta: {x: 1}
metadata: {x: 2}
tags: [a]
keywords: [b]
"#,
        );
        assert_eq!(found.len(), 4, "{found:#?}");
        for (canonical, legacy) in [
            ("label", "name"),
            ("conf_schema", "config_schema"),
            ("meta", "metadata"),
            ("tags", "keywords"),
        ] {
            let issue = issue_for(&found, canonical);
            assert!(issue.message.contains(&format!("`{canonical}`")), "{issue}");
            assert!(issue.message.contains(&format!("`{legacy}`")), "{issue}");
        }
        let label = issue_for(&found, "label");
        assert!(
            label.message.contains("\"Slack Integration\"") && label.message.contains("\"Slack\"")
        );
    }

    #[test]
    fn every_problem_is_reported_with_its_key() {
        let found = issues(
            r#"
ref: My.Pack
version: "1.0.0.0"
description: [not, a, string]
tags: [ok, fine, 3]
conf_schema: "nope"
dependencies:
  - core@>=banana
  - 12
  - utils
  - utils@1.0
python: ">=three"
testing:
  runners:
    unit: {type: nose, entry_point: ../escape.py, timeout: 0, result_format: xml}
  min_pass_rate: 1.5
"#,
        );
        let expected = [
            ("ref", "invalid pack ref"),
            ("version", "not a semantic version"),
            ("description", "expected a string, found a list"),
            ("tags[2]", "expected a string, found a number"),
            ("conf_schema", "expected a mapping"),
            ("dependencies[0]", "core@>=banana"),
            ("dependencies[1]", "expected a string"),
            ("dependencies[3]", "duplicate dependency on pack `utils`"),
            ("python", ">=three"),
            (
                "testing.runners.unit.type",
                "expected one of: script, unittest, pytest",
            ),
            ("testing.runners.unit.entry_point", "must not contain `..`"),
            ("testing.runners.unit.timeout", "positive"),
            (
                "testing.runners.unit.result_format",
                "unknown result format `xml`",
            ),
            ("testing.min_pass_rate", "between 0.0 and 1.0"),
        ];
        for (key, text) in expected {
            let issue = issue_for(&found, key);
            assert!(issue.message.contains(text), "{key}: {}", issue.message);
            assert_eq!(issue.file, Path::new(FILE));
        }
        assert_eq!(found.len(), expected.len(), "{found:#?}");

        // The error's Display lists them all, one per line, as `<file>: <key>: <message>`.
        let err =
            Manifest::parse("ref: 12\ntags: a\nversion: [1]\n", Path::new(FILE), None).unwrap_err();
        let text = err.to_string();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert!(
            lines.contains(&"packs/x/pack.yaml: ref: expected a string, found a number"),
            "{text}"
        );
        assert!(
            lines.contains(&"packs/x/pack.yaml: tags: expected a list of strings, found a string"),
            "{text}"
        );
        assert!(
            lines.contains(&"packs/x/pack.yaml: version: expected a version string, found a list"),
            "{text}"
        );
        assert_eq!(err.issues().len(), 3);
    }

    #[test]
    fn missing_required_keys() {
        let found = issues("description: nothing else\n");
        assert_eq!(issue_for(&found, "ref").message, "required key is missing");
        assert_eq!(
            issue_for(&found, "version").message,
            "required key is missing"
        );
        // `ref:` with no value is missing too.
        let found = issues("ref:\nversion: 1.0.0\n");
        assert_eq!(issue_for(&found, "ref").message, "required key is missing");
    }

    #[test]
    fn pack_ref_grammar() {
        for ok in ["core", "ab", "my_pack-2", "a1"] {
            assert!(is_valid_pack_ref(ok), "{ok}");
        }
        let long = "a".repeat(65);
        for bad in [
            "",
            "a",
            "Core",
            "1pack",
            "my.pack",
            "_x",
            "pack name",
            "paquête",
            long.as_str(),
        ] {
            assert!(!is_valid_pack_ref(bad), "{bad}");
        }
        assert!(is_valid_pack_ref(&"a".repeat(64)));
    }

    #[test]
    fn short_versions_are_padded_with_a_warning() {
        for (yaml, expected) in [
            ("version: \"1.0\"", "1.0.0"),
            ("version: 1.0", "1.0.0"),
            ("version: 1.10", "1.10.0"),
            ("version: 2", "2.0.0"),
        ] {
            let m = parse(&format!("ref: pk\n{yaml}\n"));
            assert_eq!(m.version, ver(expected), "{yaml}");
            assert_eq!(m.warnings.len(), 1, "{yaml}");
            assert_eq!(m.warnings[0].key, "version");
            assert!(
                m.warnings[0]
                    .message
                    .contains(&format!("read as {expected}"))
            );
        }
        let m = parse("ref: pk\nversion: 1.0\n");
        assert!(
            m.warnings[0].message.contains("quote it"),
            "{}",
            m.warnings[0]
        );

        for bad in [
            "version: v1.0.0",
            "version: latest",
            "version: \"1.0-beta\"",
            "version: true",
        ] {
            let found = issues(&format!("ref: pk\n{bad}\n"));
            issue_for(&found, "version");
        }
    }

    #[test]
    fn dependency_list_spellings() {
        let m = parse(
            r#"
ref: mine
version: 1.0.0
dependencies:
  - core
  - aa@>=1.0
  - ab@1.2.0
  - ac@^1.2
  - ad@~1.2.3
  - ae@1.x
  - af@*
  - ag@>=1.0, <2.0
  - ah>=1.0
  - ai<2
  - aj^1.2
  - ak~1.2
  - al=1.0.0
  - am==1.0.0
  - "an >= 1.0 , < 2"
"#,
        );
        let by_ref: BTreeMap<&str, &PackDependency> = m
            .dependencies
            .iter()
            .map(|d| (d.pack_ref.as_str(), d))
            .collect();
        let check = |r: &str, yes: &[&str], no: &[&str]| {
            let dep = by_ref[r];
            for s in yes {
                assert!(dep.matches(&ver(s)), "{} should match {s}", dep.raw);
            }
            for s in no {
                assert!(!dep.matches(&ver(s)), "{} should not match {s}", dep.raw);
            }
        };
        check("core", &["0.1.0", "9.9.9"], &[]);
        check("aa", &["1.0.0", "2.5.0"], &["0.9.9"]);
        check("ab", &["1.2.0", "1.9.0"], &["1.1.9", "2.0.0"]);
        check("ac", &["1.2.0", "1.99.0"], &["2.0.0", "1.1.0"]);
        check("ad", &["1.2.3", "1.2.10"], &["1.3.0", "1.2.2"]);
        check("ae", &["1.0.0", "1.7.3"], &["2.0.0"]);
        check("af", &["0.0.1", "42.0.0"], &[]);
        check("ag", &["1.0.0", "1.99.99"], &["2.0.0", "0.9.0"]);
        check("ah", &["1.0.0", "3.0.0"], &["0.9.0"]);
        check("ai", &["1.99.0"], &["2.0.0"]);
        check("aj", &["1.2.0", "1.3.0"], &["2.0.0"]);
        check("ak", &["1.2.0", "1.2.5"], &["1.3.0"]);
        check("al", &["1.0.0"], &["1.0.1"]);
        check("am", &["1.0.0"], &["1.0.1"]);
        check("an", &["1.5.0"], &["2.0.0", "0.5.0"]);
        assert_eq!(by_ref["core"].spec, "*");
        assert_eq!(by_ref["ab"].spec, "^1.2.0");
        assert_eq!(by_ref["al"].spec, "=1.0.0");
        assert_eq!(by_ref["ag"].raw, "ag@>=1.0, <2.0");
        assert_eq!(m.dependencies.len(), 15);
    }

    #[test]
    fn dependency_object_form() {
        let m = parse(
            r#"
ref: mine
version: 1.0.0
dependencies:
  attune_version: ">=0.5.0"
  python_version: 3.10
  nodejs_version: ">=18"
  packs: [core@>=1.0, utils]
"#,
        );
        let refs: Vec<&str> = m.dependencies.iter().map(|d| d.pack_ref.as_str()).collect();
        assert_eq!(refs, ["core", "utils"]);
        // An unquoted 3.10 is a YAML float (3.1); its text is kept.
        let python = m.python.unwrap();
        assert_eq!(python.raw, "3.10");
        assert!(python.matches(&ver("3.10.2")) && !python.matches(&ver("3.9.18")));
        assert!(m.nodejs.unwrap().matches(&ver("20.20.2")));
        assert!(m.attune_version.unwrap().matches(&ver("0.6.0")));

        let found = issues("ref: mine\nversion: 1.0.0\ndependencies: {packs: [core, 3]}\n");
        issue_for(&found, "dependencies.packs[1]");
        let found = issues("ref: mine\nversion: 1.0.0\ndependencies: core\n");
        assert!(
            issue_for(&found, "dependencies")
                .message
                .contains("expected a list")
        );
        let found = issues("ref: mine\nversion: 1.0.0\ndependencies: [mine@1.0]\n");
        assert!(
            issue_for(&found, "dependencies[0]")
                .message
                .contains("itself")
        );
    }

    #[test]
    fn runtime_requirements() {
        let m = parse("ref: pk\nversion: 1.0.0\npython: \">=3.9, <4\"\nnodejs: \"18\"\n");
        let python = m.python.unwrap();
        assert!(python.matches(&ver("3.11.0")));
        assert!(!python.matches(&ver("4.0.0")));
        assert!(!python.matches(&ver("3.8.0")));
        let nodejs = m.nodejs.unwrap();
        assert!(nodejs.matches(&parse_lenient_version("v20.20.2").unwrap()));
        assert!(!nodejs.matches(&parse_lenient_version("v16.20.2").unwrap()));

        let m = parse("ref: pk\nversion: 1.0.0\npython: 3.10\n");
        assert!(
            !m.python.unwrap().matches(&ver("3.9.0")),
            "3.10 must not become 3.1"
        );

        let m = parse("ref: pk\nversion: 1.0.0\npython_versions: [\"2\", \"3\"]\n");
        let python = m.python.unwrap();
        assert!(python.matches(&ver("2.7.18")) && python.matches(&ver("3.9.0")));

        let m = parse("ref: pk\nversion: 1.0.0\npython_versions: [3]\n");
        assert!(m.python.unwrap().matches(&ver("3.4.0")));
    }

    #[test]
    fn python_and_python_versions_must_agree() {
        let m = parse("ref: pk\nversion: 1.0.0\npython: \"3.x\"\npython_versions: [\"3\"]\n");
        assert!(m.python.unwrap().matches(&ver("3.1.0")));

        let found = issues("ref: pk\nversion: 1.0.0\npython: \"3.9\"\npython_versions: [\"3\"]\n");
        let issue = issue_for(&found, "python");
        assert!(issue.message.contains("`python_versions`"), "{issue}");

        let found = issues("ref: pk\nversion: 1.0.0\npython_versions: \"3\"\n");
        issue_for(&found, "python_versions");
        let found = issues("ref: pk\nversion: 1.0.0\npython_versions: [\"3\", [x]]\n");
        issue_for(&found, "python_versions[1]");
    }

    #[test]
    fn testing_block_defaults_and_errors() {
        let m = parse(
            r#"
ref: pk
version: 1.0.0
testing:
  runners:
    shell: {type: script, entry_point: tests/run.sh}
    unit: {type: unittest, entry_point: tests, result_format: json, timeout: 30}
"#,
        );
        let testing = m.testing.unwrap();
        assert!(testing.enabled, "enabled defaults to true");
        assert_eq!(testing.discovery, None);
        let names: Vec<&String> = testing.runners.keys().collect();
        assert_eq!(names, ["shell", "unit"]);
        assert_eq!(testing.runners["shell"].runner_type, RunnerType::Script);
        assert_eq!(testing.runners["shell"].timeout_secs, None);
        assert_eq!(testing.runners["shell"].result_format, ResultFormat::Simple);
        assert_eq!(testing.runners["unit"].result_format, ResultFormat::Json);
        assert_eq!(testing.runners["unit"].timeout_secs, Some(30));

        let m = parse(
            "ref: pk\nversion: 1.0.0\ntesting: {enabled: true, discovery: {method: directory}, timout: 5}\n",
        );
        let keys: Vec<&str> = m.warnings.iter().map(|w| w.key.as_str()).collect();
        assert_eq!(keys, ["testing.timout", "testing.runners"]);

        let m = parse("ref: pk\nversion: 1.0.0\ntesting: {enabled: false}\n");
        assert!(!m.testing.unwrap().enabled);
        assert!(m.warnings.is_empty());

        let found = issues(
            r#"
ref: pk
version: 1.0.0
testing:
  enabled: "yes"
  discovery: {path: /abs}
  runners:
    a: {entry_point: /etc/run.sh}
    b: {type: pytest}
    c: {type: pytest, entry_point: t.py, timeout: 1.5}
    d: "tests/run.sh"
  min_pass_rate: high
"#,
        );
        let expected = [
            ("testing.enabled", "expected a boolean"),
            ("testing.discovery.method", "required key is missing"),
            ("testing.discovery.path", "relative"),
            ("testing.runners.a.type", "required key is missing"),
            ("testing.runners.a.entry_point", "relative"),
            ("testing.runners.b.entry_point", "required key is missing"),
            ("testing.runners.c.timeout", "positive whole number"),
            ("testing.runners.d", "expected a mapping"),
            ("testing.min_pass_rate", "expected a number"),
        ];
        for (key, text) in expected {
            let issue = issue_for(&found, key);
            assert!(issue.message.contains(text), "{key}: {}", issue.message);
        }
        assert_eq!(found.len(), expected.len(), "{found:#?}");
    }

    #[test]
    fn free_form_objects_and_extra_keys() {
        let m = parse(
            r#"
ref: pk
version: 1.0.0
meta:
  nested: {list: [1, 2.5, null, true]}
  1: numeric key
worker_selector: {zone: eu}
homepage: https://example.com
repository: https://example.com/repo.git
use_case: demo
system: false
enabled: true
"#,
        );
        assert_eq!(m.meta["nested"], json!({"list": [1, 2.5, null, true]}));
        assert_eq!(m.meta["1"], json!("numeric key"));
        assert_eq!(m.extra["worker_selector"], json!({"zone": "eu"}));
        assert_eq!(m.extra.len(), 1);
        assert_eq!(m.homepage.as_deref(), Some("https://example.com"));
        assert_eq!(
            m.repository.as_deref(),
            Some("https://example.com/repo.git")
        );
        assert_eq!(m.use_case.as_deref(), Some("demo"));
        assert_eq!((m.system, m.enabled), (Some(false), Some(true)));

        let found = issues("ref: pk\nversion: 1.0.0\nconfig: [a]\nmeta: 3\nsystem: maybe\n");
        issue_for(&found, "config");
        issue_for(&found, "meta");
        issue_for(&found, "system");
    }

    #[test]
    fn yaml_anchors_and_merge_keys_work() {
        let m = parse(
            "ref: pk\nversion: 1.0.0\nconf_schema:\n  base: &b {type: string}\n  other:\n    <<: *b\n    default: x\n",
        );
        assert_eq!(
            m.conf_schema["other"],
            json!({"type": "string", "default": "x"})
        );
    }

    #[test]
    fn yaml_syntax_error_reports_the_line() {
        let text = "ref: pk\nversion: 1.0.0\ntags: [a, b\ndescription: x\n";
        match Manifest::parse(text, Path::new(FILE), None) {
            Err(ManifestError::Syntax {
                path,
                line,
                message,
            }) => {
                assert_eq!(path, Path::new(FILE));
                assert!(matches!(line, Some(3..=4)), "line {line:?}: {message}");
            }
            other => panic!("expected a syntax error, got {other:?}"),
        }
        let text = "ref: pk\nversion: 1.0.0\n  bad indent: [\n";
        let err = Manifest::parse(text, Path::new(FILE), None).unwrap_err();
        assert!(
            matches!(err, ManifestError::Syntax { line: Some(_), .. }),
            "{err:?}"
        );
        assert!(
            err.to_string()
                .starts_with("packs/x/pack.yaml: invalid YAML: "),
            "{err}"
        );
    }

    #[test]
    fn top_level_must_be_a_mapping() {
        for text in ["", "- a\n- b\n", "just a string\n"] {
            let found = issues(text);
            assert_eq!(found.len(), 1, "{text:?}");
            assert_eq!(found[0].key, "");
            assert!(found[0].message.contains("must be a mapping"));
            assert!(
                found[0]
                    .to_string()
                    .starts_with("packs/x/pack.yaml: the top level")
            );
        }
    }

    #[test]
    fn load_reads_pack_yaml_from_the_pack_directory() {
        let dir = tempfile::tempdir().unwrap();
        let missing = Manifest::load(dir.path(), None, &PackReadLimits::default()).unwrap_err();
        let expected_path = dir.path().join(MANIFEST_FILE);
        assert!(
            matches!(&missing, ManifestError::NotFound { path } if *path == expected_path),
            "{missing:?}"
        );
        assert_eq!(missing.path(), expected_path);
        assert!(missing.to_string().contains("pack manifest not found"));

        std::fs::write(&expected_path, ATTUNE_PACK).unwrap();
        let m = Manifest::load(dir.path(), None, &PackReadLimits::default()).unwrap();
        assert_eq!(m.pack_ref, "slack");

        std::fs::write(&expected_path, "ref: pk\n").unwrap();
        let err = Manifest::load(dir.path(), None, &PackReadLimits::default()).unwrap_err();
        let issue = &err.issues()[0];
        assert_eq!(issue.file, expected_path);
        assert_eq!(issue.key, "version");
        assert_eq!(
            err.to_string(),
            format!(
                "{}: version: required key is missing",
                expected_path.display()
            )
        );

        // A directory where the file should be is an I/O error, not "not found".
        let nested = dir.path().join("nested");
        std::fs::create_dir_all(nested.join(MANIFEST_FILE)).unwrap();
        assert!(matches!(
            Manifest::load(&nested, None, &PackReadLimits::default()),
            Err(ManifestError::Unreadable {
                source: PackFsError::IsADirectory { .. },
                ..
            })
        ));
    }

    /// docs/pack-yaml.md, the annotated pack.yaml users copy from.
    const PACK_YAML_DOC: &str = include_str!("../../../docs/pack-yaml.md");

    /// The ```yaml blocks of a Markdown text, in order.
    fn yaml_blocks(markdown: &str) -> Vec<&str> {
        markdown
            .split("```yaml\n")
            .skip(1)
            .map(|rest| rest.split("\n```").next().unwrap())
            .collect()
    }

    fn requirement_matches(req: &Option<RuntimeRequirement>, version: &str) -> bool {
        req.as_ref().unwrap().matches(&ver(version))
    }

    #[test]
    fn documented_pack_yaml_parses_as_documented() {
        let blocks = yaml_blocks(PACK_YAML_DOC);
        assert_eq!(blocks.len(), 3, "docs/pack-yaml.md has three yaml blocks");

        // The complete pack.yaml: every key is one the parser reads, every value as
        // its comment says, nothing to warn about.
        let m = Manifest::parse(blocks[0], Path::new("pack.yaml"), None)
            .unwrap_or_else(|e| panic!("docs/pack-yaml.md: {e}"));
        assert!(m.warnings.is_empty(), "{:#?}", m.warnings);
        assert!(
            m.extra.is_empty(),
            "keys the parser does not read: {:?}",
            m.extra
        );
        for key in fields::KNOWN_KEYS {
            let documented = blocks
                .iter()
                .any(|b| b.lines().any(|l| l.starts_with(&format!("{key}:"))));
            assert!(
                documented,
                "pack.yaml key `{key}` is not in docs/pack-yaml.md"
            );
        }
        assert_eq!(m.pack_ref, "chatops_demo");
        assert_eq!(m.label, "ChatOps demo");
        assert_eq!(
            m.description.as_deref(),
            Some("Posts messages to chat and reacts to chat events")
        );
        assert_eq!(m.version, ver("1.4.0"));
        assert_eq!(m.author.as_deref(), Some("Example Team"));
        assert_eq!(m.email.as_deref(), Some("team@example.com"));
        assert_eq!(m.contributors, ["Ada Lovelace <ada@example.com>"]);
        assert_eq!(m.license.as_deref(), Some("Apache-2.0"));
        assert_eq!(
            m.homepage.as_deref(),
            Some("https://example.com/chatops_demo")
        );
        assert_eq!(
            m.repository.as_deref(),
            Some("https://github.com/example/chatops_demo")
        );
        assert_eq!(m.use_case.as_deref(), Some("chatops"));
        assert_eq!(m.tags, ["chat", "messaging"]);
        assert_eq!((m.system, m.enabled), (Some(false), Some(true)));
        assert_eq!(m.meta, json!({"category": "chatops"}));
        assert_eq!(m.conf_schema["api_token"]["secret"], json!(true));
        assert_eq!(m.conf_schema["channel"]["default"], json!("#general"));
        assert_eq!(m.config, json!({"channel": "#general"}));
        assert_eq!(m.runtime_deps, ["python", "shell"]);
        // "3.9 or newer".
        assert!(requirement_matches(&m.python, "3.9.0"));
        assert!(requirement_matches(&m.python, "3.12.1"));
        assert!(!requirement_matches(&m.python, "3.8.10"));
        assert!(requirement_matches(&m.nodejs, "20.1.0"));
        assert!(!requirement_matches(&m.nodejs, "16.0.0"));
        assert!(requirement_matches(&m.attune_version, "1.5.0"));
        assert!(!requirement_matches(&m.attune_version, "2.0.0"));
        assert_eq!(m.stackstorm_version.as_deref(), Some(">=3.8.0"));

        // Each dependency spelling means what its comment says.
        let dep = |pack_ref: &str| {
            m.dependencies
                .iter()
                .find(|d| d.pack_ref == pack_ref)
                .unwrap_or_else(|| panic!("no dependency on {pack_ref}"))
        };
        assert_eq!(m.dependencies.len(), 8);
        let cases: [(&str, &[&str], &[&str]); 8] = [
            ("core", &["0.0.1", "9.9.9"], &[]),
            ("linux", &["1.2.0", "1.9.0"], &["1.1.9", "2.0.0"]),
            ("aws", &["1.0.0", "1.9.9"], &["0.9.0", "2.0.0"]),
            ("slack", &["2.0.0", "3.0.0"], &["1.9.9"]),
            ("github", &["1.2.0", "1.9.0"], &["1.1.0", "2.0.0"]),
            ("jira", &["1.2.3", "1.2.9"], &["1.2.2", "1.3.0"]),
            ("email", &["1.0.0", "1.7.3"], &["0.9.0", "2.0.0"]),
            ("chatops", &["3.1.0"], &["3.1.1", "3.0.9"]),
        ];
        for (pack_ref, yes, no) in cases {
            let d = dep(pack_ref);
            for v in yes {
                assert!(d.matches(&ver(v)), "{} should accept {v}", d.raw);
            }
            for v in no {
                assert!(!d.matches(&ver(v)), "{} should refuse {v}", d.raw);
            }
        }
        assert!(!dep("github").matches(&ver("2.0.0-beta.1")));

        let testing = m.testing.as_ref().unwrap();
        assert!(testing.enabled);
        let unit = &testing.runners["unit"];
        assert_eq!(unit.runner_type, RunnerType::Pytest);
        assert_eq!(unit.entry_point, "tests");
        assert_eq!(unit.timeout_secs, Some(120));
        assert_eq!(unit.result_format, ResultFormat::Simple);
        assert_eq!(testing.min_pass_rate, Some(1.0));
        assert_eq!(testing.on_failure.as_deref(), Some("block"));
        assert_eq!(
            testing.discovery,
            Some(TestDiscovery {
                method: "directory".into(),
                path: Some("tests".into())
            })
        );

        // StackStorm spellings: named after the directory, else after `name`; the
        // version padded; legacy keys read into the canonical fields.
        let st2 = Manifest::parse(blocks[1], Path::new("pack.yaml"), Some("aws"))
            .unwrap_or_else(|e| panic!("docs/pack-yaml.md: {e}"));
        assert_eq!(st2.pack_ref, "aws");
        let st2 = Manifest::parse(blocks[1], Path::new("pack.yaml"), None)
            .unwrap_or_else(|e| panic!("docs/pack-yaml.md: {e}"));
        assert_eq!(st2.pack_ref, "aws_helpers");
        assert_eq!(st2.label, "aws_helpers");
        assert_eq!(st2.version, ver("1.0.0"));
        let warned: Vec<&str> = st2.warnings.iter().map(|w| w.key.as_str()).collect();
        assert_eq!(warned, ["ref", "version"], "{:#?}", st2.warnings);
        assert_eq!(st2.tags, ["aws", "cloud"]);
        assert_eq!(st2.contributors, ["Jane Doe"]);
        assert!(requirement_matches(&st2.python, "3.6.0"));
        assert!(!requirement_matches(&st2.python, "2.7.18"));
        assert_eq!(st2.stackstorm_version.as_deref(), Some(">=3.0.0"));
        assert_eq!(st2.conf_schema["region"]["default"], json!("us-east-1"));
        assert_eq!(st2.meta, json!({"origin": "exchange"}));
        assert!(st2.dependencies[0].matches(&ver("1.0.0")));
        assert!(!st2.dependencies[0].matches(&ver("1.0.1")));
        assert!(st2.extra.is_empty(), "{:?}", st2.extra);

        // The object form of `dependencies`.
        let object = Manifest::parse(blocks[2], Path::new("pack.yaml"), None)
            .unwrap_or_else(|e| panic!("docs/pack-yaml.md: {e}"));
        assert!(object.warnings.is_empty(), "{:#?}", object.warnings);
        assert!(requirement_matches(&object.python, "3.11.2"));
        assert!(!requirement_matches(&object.python, "3.10.9"));
        assert!(requirement_matches(&object.nodejs, "20.0.0"));
        assert!(requirement_matches(&object.attune_version, "1.0.0"));
        assert_eq!(object.dependencies[0].pack_ref, "core");
        assert!(object.dependencies[0].matches(&ver("1.2.0")));
        assert!(!object.dependencies[0].matches(&ver("0.9.0")));
    }
}
