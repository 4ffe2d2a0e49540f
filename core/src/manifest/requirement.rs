//! Version requirements found in `pack.yaml`: pack dependencies (`core@>=1.0`) and
//! runtime requirements (`python: "3.9"`), plus a lenient parser for the versions that
//! tools such as `python3 --version` report.
//!
//! Everything is expressed with the `semver` crate so that one set of rules applies
//! everywhere (Attune has two hand-rolled matchers that disagree).

use std::fmt;

use semver::{Version, VersionReq};

use super::is_valid_pack_ref;

/// One entry of the `dependencies` list (or `dependencies.packs`).
///
/// Accepted spellings, all with optional whitespace around operators:
///
/// * `core`, `core@*`: any version;
/// * `core@<req>` where `<req>` is a `semver` requirement: `>=1.0`, `^1.2`, `~1.2.3`,
///   `1.x`, `>=1.0, <2.0` (a comma means AND);
/// * `core<op><version>` without `@`: `core>=1.0`, `core<2`, `core^1.2`, `core~1.2`;
/// * StackStorm's exact pins `core=1.0.0` and `core==1.0.0` (`==` is read as `=`).
///
/// A bare version after `@` (`core@1.2.0`) follows Cargo/`semver` semantics: it means
/// `^1.2.0`, i.e. `>=1.2.0, <2.0.0`. Write `core@=1.2.0` (or `core==1.2.0`) to pin.
///
/// As everywhere in `semver`, a pre-release such as `2.0.0-beta.1` only matches a
/// requirement that names a pre-release of the same `MAJOR.MINOR.PATCH`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackDependency {
    /// The ref of the required pack.
    pub pack_ref: String,
    /// The parsed requirement (`VersionReq::STAR` when none was given).
    pub req: VersionReq,
    /// Normalised requirement text to show users (`"*"` when none was given);
    /// a bare version shows its meaning, e.g. `^1.2.0`.
    pub spec: String,
    /// The entry exactly as written (trimmed).
    pub raw: String,
}

/// Why a dependency entry or a runtime requirement does not parse; the display is the
/// message a pack author sees.
#[derive(Debug, thiserror::Error)]
pub enum RequirementError {
    #[error("empty dependency entry")]
    EmptyDependency,
    #[error(
        "invalid pack ref `{name}` in dependency `{entry}` \
         (expected lowercase letters, digits, `_` or `-`, starting with a letter, 2-64 chars)"
    )]
    InvalidRef { name: String, entry: String },
    #[error("empty version requirement after `@` in `{entry}`")]
    EmptyAfterAt { entry: String },
    #[error("invalid version requirement in dependency `{entry}`: {source}")]
    InvalidDependencyRequirement {
        entry: String,
        #[source]
        source: Box<RequirementError>,
    },
    #[error(
        "cannot parse dependency `{entry}`: expected `<pack>`, `<pack>@<requirement>` \
         or `<pack><operator><version>` (e.g. `core@>=1.0`)"
    )]
    UnparsableDependency { entry: String },
    #[error("empty comparator in `{spec}`")]
    EmptyComparator { spec: String },
    #[error("operator `{operator}` without a version in `{spec}`")]
    OperatorWithoutVersion { operator: String, spec: String },
    #[error("`{spec}`: {source}")]
    Semver {
        spec: String,
        #[source]
        source: semver::Error,
    },
    #[error("empty version requirement")]
    EmptyRequirement,
    #[error("empty alternative in `{requirement}`")]
    EmptyAlternative { requirement: String },
    #[error("empty list of versions")]
    EmptyVersionList,
    #[error("invalid version `{entry}`: {source}")]
    InvalidFamilyVersion {
        entry: String,
        #[source]
        source: Box<RequirementError>,
    },
}

/// Characters that can start a comparison operator.
const OPERATOR_CHARS: &[char] = &['>', '<', '=', '^', '~'];

impl PackDependency {
    /// Parses one dependency entry; the error's display is a message for the user.
    pub fn parse(entry: &str) -> Result<PackDependency, RequirementError> {
        let raw = entry.trim();
        if raw.is_empty() {
            return Err(RequirementError::EmptyDependency);
        }
        let (name, spec) = split_dependency(raw)?;
        if !is_valid_pack_ref(name) {
            return Err(RequirementError::InvalidRef {
                name: name.to_string(),
                entry: raw.to_string(),
            });
        }
        let req = match spec {
            None => VersionReq::STAR,
            Some("") => {
                return Err(RequirementError::EmptyAfterAt {
                    entry: raw.to_string(),
                });
            }
            Some("*") => VersionReq::STAR,
            Some(spec) => parse_req(spec, BareVersion::Caret).map_err(|source| {
                RequirementError::InvalidDependencyRequirement {
                    entry: raw.to_string(),
                    source: Box::new(source),
                }
            })?,
        };
        Ok(PackDependency {
            pack_ref: name.to_string(),
            spec: req.to_string(),
            req,
            raw: raw.to_string(),
        })
    }

    /// Whether an installed version of the required pack satisfies this dependency.
    pub fn matches(&self, version: &Version) -> bool {
        self.req.matches(version)
    }
}

impl fmt::Display for PackDependency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.req == VersionReq::STAR {
            f.write_str(&self.pack_ref)
        } else {
            write!(f, "{}@{}", self.pack_ref, self.spec)
        }
    }
}

/// Splits `core@spec`, `core>=1.0` or `core` into the ref and the optional spec.
fn split_dependency(raw: &str) -> Result<(&str, Option<&str>), RequirementError> {
    if let Some((name, spec)) = raw.split_once('@') {
        return Ok((name.trim(), Some(spec.trim())));
    }
    let end = raw
        .find(|c: char| OPERATOR_CHARS.contains(&c) || c.is_whitespace())
        .unwrap_or(raw.len());
    let (name, rest) = (&raw[..end], raw[end..].trim());
    if rest.is_empty() {
        return Ok((name, None));
    }
    if !rest.starts_with(OPERATOR_CHARS) {
        return Err(RequirementError::UnparsableDependency {
            entry: raw.to_string(),
        });
    }
    Ok((name, Some(rest)))
}

/// What a comparator without an operator means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BareVersion {
    /// `semver`'s default: `1.2` means `^1.2` (pack dependencies).
    Caret,
    /// A minimum: `3.9` means `>=3.9` (runtime requirements, Attune's intent).
    AtLeast,
}

/// Parses a comma-separated (AND) requirement after normalising the spellings `semver`
/// does not accept: `==` becomes `=`, whitespace between operator and version goes.
fn parse_req(spec: &str, bare: BareVersion) -> Result<VersionReq, RequirementError> {
    let mut parts = Vec::new();
    for part in spec.split(',') {
        let part = part.trim();
        if part.is_empty() {
            return Err(RequirementError::EmptyComparator {
                spec: spec.to_string(),
            });
        }
        let op_len = part.len() - part.trim_start_matches(OPERATOR_CHARS).len();
        let (op, version) = (&part[..op_len], part[op_len..].trim());
        if version.is_empty() {
            return Err(RequirementError::OperatorWithoutVersion {
                operator: op.to_string(),
                spec: spec.to_string(),
            });
        }
        let op = match op {
            "==" => "=",
            "" if bare == BareVersion::AtLeast && !is_wildcard(version) => ">=",
            other => other,
        };
        parts.push(format!("{op}{version}"));
    }
    VersionReq::parse(&parts.join(", ")).map_err(|source| RequirementError::Semver {
        spec: spec.to_string(),
        source,
    })
}

/// `*`, `3.x`, `3.*`, `3.9.X`: wildcards keep their meaning even where a bare version
/// would otherwise mean "at least".
fn is_wildcard(version: &str) -> bool {
    version.split('.').any(|c| matches!(c, "*" | "x" | "X"))
}

/// A runtime version requirement (`python`, `nodejs`, `python_versions`,
/// `dependencies.python_version`, `attune_version`).
///
/// Semantics of [`RuntimeRequirement::parse`]:
///
/// * a bare version is a minimum: `3.9` means `>=3.9.0` (Attune turns `python: "3.9"`
///   into `python3>=3.9`); in a comma list each bare comparator is a minimum too;
/// * an operator form is a `semver` requirement where partial versions are allowed:
///   `>=3.9`, `^3.9`, `~3.11`, `=3.9` (any 3.9.x), `==3.9` (same as `=`), `<4`;
/// * a comma means AND: `>=3.9, <4`;
/// * wildcards: `*`, `3.x`, `3.*` (any 3.y.z);
/// * `||` separates alternatives that are OR-ed: `~3.9 || >=3.11`.
///
/// StackStorm's `python_versions: ["2", "3"]` is built with
/// [`RuntimeRequirement::from_version_families`]: each entry names a version family
/// (`"3"` is any 3.x, `"3.9"` any 3.9.x) and the entries are OR-ed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimeRequirement {
    /// The requirement as written (for `python_versions`, the entries joined by ` || `).
    pub raw: String,
    /// Alternatives; a version satisfies the requirement if it matches any of them.
    pub any_of: Vec<VersionReq>,
}

impl RuntimeRequirement {
    /// Parses a requirement string; the error's display is a message for the user.
    pub fn parse(raw: &str) -> Result<Self, RequirementError> {
        let raw = raw.trim();
        if raw.is_empty() {
            return Err(RequirementError::EmptyRequirement);
        }
        let any_of = raw
            .split("||")
            .map(|alt| {
                let alt = alt.trim();
                if alt.is_empty() {
                    Err(RequirementError::EmptyAlternative {
                        requirement: raw.to_string(),
                    })
                } else {
                    parse_req(alt, BareVersion::AtLeast)
                }
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(RuntimeRequirement {
            raw: raw.to_string(),
            any_of,
        })
    }

    /// Builds the requirement of StackStorm's `python_versions` list: each entry that is a
    /// bare version names a family (`"3"` ⇒ `3.*`, `"3.9"` ⇒ `3.9.*`, `"3.9.1"` ⇒
    /// `=3.9.1`); an entry with an operator is parsed as in [`RuntimeRequirement::parse`].
    /// Entries are OR-ed.
    pub fn from_version_families<S: AsRef<str>>(entries: &[S]) -> Result<Self, RequirementError> {
        if entries.is_empty() {
            return Err(RequirementError::EmptyVersionList);
        }
        let mut alternatives = Vec::new();
        let mut any_of = Vec::new();
        for entry in entries {
            let entry = entry.as_ref().trim();
            let text = if entry.starts_with(|c: char| c.is_ascii_digit()) && !is_wildcard(entry) {
                match entry.split('.').count() {
                    1 | 2 => format!("{entry}.*"),
                    _ => format!("={entry}"),
                }
            } else {
                entry.to_string()
            };
            let parsed = RuntimeRequirement::parse(&text).map_err(|source| {
                RequirementError::InvalidFamilyVersion {
                    entry: entry.to_string(),
                    source: Box::new(source),
                }
            })?;
            any_of.extend(parsed.any_of);
            alternatives.push(text);
        }
        Ok(RuntimeRequirement {
            raw: alternatives.join(" || "),
            any_of,
        })
    }

    /// Whether a detected runtime version satisfies the requirement.
    ///
    /// The pre-release and build parts of `version` are ignored, so an interpreter that
    /// reports `3.13.0rc1` counts as `3.13.0`: runtimes are matched by release line,
    /// unlike pack versions (see [`PackDependency`]).
    pub fn matches(&self, version: &Version) -> bool {
        let release = Version::new(version.major, version.minor, version.patch);
        self.any_of.iter().any(|req| req.matches(&release))
    }

    /// True when every version matches (`*`).
    pub fn is_any(&self) -> bool {
        self.any_of.contains(&VersionReq::STAR)
    }
}

impl fmt::Display for RuntimeRequirement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.raw)
    }
}

/// Parses a version reported by a tool, leniently.
///
/// * Surrounding whitespace, a leading `Python` word (any case) and a `v`/`V` prefix are
///   stripped: `Python 3.9.7`, `v20.20.2`.
/// * The first one to three dot-separated numeric components are taken and missing ones
///   padded with 0: `3` → `3.0.0`, `3.12` → `3.12.0`; a fourth component and anything
///   after it are ignored (`3.9.7.1` → `3.9.7`).
/// * A pre-release directly after the numbers is kept: `3.12.0rc1` and `3.12.0-rc1`
///   → `3.12.0-rc1`, `3.13.0a2` → `3.13.0-a2`. Build metadata (`+...`) and text after
///   whitespace or other punctuation (`5.1.16(1)-release`) are dropped.
///
/// Returns `None` when the text does not start with a number (after the prefixes).
pub fn parse_lenient_version(s: &str) -> Option<Version> {
    let mut rest = s.trim();
    if rest.len() >= 6 && rest[..6].eq_ignore_ascii_case("python") {
        rest = rest[6..].trim_start();
    }
    rest = rest.strip_prefix(['v', 'V']).unwrap_or(rest);

    let mut numbers = [0u64; 3];
    let mut count = 0;
    while count < 3 {
        let digits = rest.len() - rest.trim_start_matches(|c: char| c.is_ascii_digit()).len();
        if digits == 0 {
            if count == 0 {
                return None;
            }
            // "3." followed by a non-digit: drop the dangling dot with the rest.
            rest = "";
            break;
        }
        numbers[count] = rest[..digits].parse().ok()?;
        count += 1;
        rest = &rest[digits..];
        match rest.strip_prefix('.') {
            Some(after) if count < 3 => rest = after,
            _ => break,
        }
    }

    let mut version = Version::new(numbers[0], numbers[1], numbers[2]);
    if let Some(pre) = lenient_pre_release(rest) {
        version.pre = pre;
    }
    Some(version)
}

/// The pre-release part of what follows the numbers, if it is a valid one.
fn lenient_pre_release(rest: &str) -> Option<semver::Prerelease> {
    let candidate = match rest.strip_prefix('-') {
        Some(after) => after,
        None if rest.starts_with(|c: char| c.is_ascii_alphabetic()) => rest,
        None => return None,
    };
    let end = candidate
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '.' || c == '-'))
        .unwrap_or(candidate.len());
    let text = candidate[..end].trim_end_matches(['.', '-']);
    if text.is_empty() {
        return None;
    }
    semver::Prerelease::new(text).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> Version {
        Version::parse(s).unwrap()
    }

    /// Asserts which of the given versions satisfy the dependency.
    fn dep_matches(entry: &str, yes: &[&str], no: &[&str]) -> PackDependency {
        let dep = PackDependency::parse(entry).unwrap_or_else(|e| panic!("{entry}: {e}"));
        assert_eq!(dep.pack_ref, "core", "{entry}");
        for s in yes {
            assert!(
                dep.matches(&v(s)),
                "{entry} should match {s} (req {})",
                dep.req
            );
        }
        for s in no {
            assert!(
                !dep.matches(&v(s)),
                "{entry} should not match {s} (req {})",
                dep.req
            );
        }
        dep
    }

    #[test]
    fn dependency_without_requirement_matches_anything() {
        for entry in ["core", "core@*", "  core  ", "core@ *"] {
            let dep = dep_matches(entry, &["0.0.1", "1.0.0", "99.1.2"], &[]);
            assert_eq!(dep.spec, "*");
            assert_eq!(dep.req, VersionReq::STAR);
        }
    }

    #[test]
    fn dependency_with_at_and_operator() {
        let dep = dep_matches("core@>=1.0", &["1.0.0", "1.5.0", "3.0.0"], &["0.9.9"]);
        assert_eq!(dep.spec, ">=1.0");
        assert_eq!(dep.raw, "core@>=1.0");
        dep_matches("core@^1.2", &["1.2.0", "1.9.9"], &["1.1.9", "2.0.0"]);
        dep_matches("core@~1.2.3", &["1.2.3", "1.2.9"], &["1.3.0", "1.2.2"]);
        dep_matches("core@1.x", &["1.0.0", "1.99.0"], &["2.0.0", "0.9.0"]);
        dep_matches("core@<2", &["1.9.9"], &["2.0.0"]);
    }

    #[test]
    fn dependency_bare_version_after_at_is_caret() {
        let dep = dep_matches("core@1.2.0", &["1.2.0", "1.3.0"], &["1.1.0", "2.0.0"]);
        assert_eq!(dep.spec, "^1.2.0");
    }

    #[test]
    fn dependency_comma_is_and() {
        for entry in [
            "core@>=1.0, <2.0",
            "core@>=1.0,<2.0",
            "core @ >= 1.0 , < 2.0",
        ] {
            let dep = dep_matches(entry, &["1.0.0", "1.9.9"], &["0.9.0", "2.0.0"]);
            assert_eq!(dep.spec, ">=1.0, <2.0", "{entry}");
        }
    }

    #[test]
    fn dependency_operator_without_at() {
        dep_matches("core>=1.0", &["1.0.0", "2.0.0"], &["0.9.0"]);
        dep_matches("core<2", &["1.9.0"], &["2.0.0"]);
        dep_matches("core^1.2", &["1.2.0", "1.8.0"], &["2.0.0", "1.1.0"]);
        dep_matches("core~1.2", &["1.2.0", "1.2.7"], &["1.3.0"]);
        dep_matches("core >= 1.0", &["1.0.0"], &["0.1.0"]);
        dep_matches("core>= 1.0 , <2", &["1.5.0"], &["2.0.0"]);
    }

    #[test]
    fn dependency_stackstorm_exact_pins() {
        for entry in [
            "core=1.0.0",
            "core==1.0.0",
            "core == 1.0.0",
            "core@=1.0.0",
            "core@==1.0.0",
        ] {
            let dep = dep_matches(entry, &["1.0.0"], &["1.0.1", "0.9.0", "1.1.0"]);
            assert_eq!(dep.spec, "=1.0.0", "{entry}");
        }
    }

    #[test]
    fn dependency_pre_release_needs_explicit_opt_in() {
        dep_matches("core@>=1.0", &[], &["2.0.0-beta.1"]);
        dep_matches("core@>=2.0.0-beta.1", &["2.0.0-beta.1", "2.0.0"], &[]);
    }

    #[test]
    fn dependency_errors_name_the_problem() {
        let err = PackDependency::parse("core@>=banana")
            .unwrap_err()
            .to_string();
        assert!(err.contains("core@>=banana"), "{err}");
        let err = PackDependency::parse("Core@1.0").unwrap_err().to_string();
        assert!(err.contains("invalid pack ref `Core`"), "{err}");
        let err = PackDependency::parse("core@").unwrap_err().to_string();
        assert!(err.contains("empty version requirement"), "{err}");
        let err = PackDependency::parse("core 1.0").unwrap_err().to_string();
        assert!(err.contains("cannot parse dependency"), "{err}");
        let err = PackDependency::parse("core.utils").unwrap_err().to_string();
        assert!(err.contains("invalid pack ref"), "{err}");
        assert!(PackDependency::parse("core@>=1.0,").is_err());
        assert!(PackDependency::parse("core@>=").is_err());
        assert!(PackDependency::parse("   ").is_err());
    }

    #[test]
    fn dependency_display_round_trips() {
        for entry in ["core", "core@>=1.0, <2.0", "core==1.0.0", "core@1.2"] {
            let dep = PackDependency::parse(entry).unwrap();
            let again = PackDependency::parse(&dep.to_string()).unwrap();
            assert_eq!(again.req, dep.req, "{entry}");
        }
    }

    fn rt(raw: &str, yes: &[&str], no: &[&str]) -> RuntimeRequirement {
        let req = RuntimeRequirement::parse(raw).unwrap_or_else(|e| panic!("{raw}: {e}"));
        for s in yes {
            let ver = parse_lenient_version(s).unwrap();
            assert!(req.matches(&ver), "{raw} should match {s}");
        }
        for s in no {
            let ver = parse_lenient_version(s).unwrap();
            assert!(!req.matches(&ver), "{raw} should not match {s}");
        }
        req
    }

    #[test]
    fn runtime_bare_version_is_a_minimum() {
        let req = rt(
            "3.9",
            &["3.9", "3.9.7", "3.12.1", "4.0"],
            &["3.8.10", "2.7.18"],
        );
        assert_eq!(req.raw, "3.9");
        rt("3", &["3.0.0", "4.1"], &["2.7"]);
        rt("18", &["18.0.0", "v20.20.2"], &["v16.20.0"]);
        rt("3.9, <4", &["3.9.0", "3.13"], &["4.0.0", "3.8"]);
    }

    #[test]
    fn runtime_operator_forms() {
        rt(">=3.9", &["3.9.0", "3.12"], &["3.8.18"]);
        rt(">= 3.9", &["3.10"], &["3.8"]);
        rt("^3.9", &["3.9.0", "3.13.1"], &["4.0.0", "3.8.0"]);
        rt("~3.11", &["3.11.0", "3.11.9"], &["3.12.0", "3.10.0"]);
        rt(">=3.9, <4", &["3.9.1", "3.12"], &["4.0", "3.8"]);
        rt("=3.9", &["3.9.0", "3.9.18"], &["3.10.0"]);
        rt("==3.9.7", &["3.9.7"], &["3.9.8"]);
        rt("<3.12", &["3.11.9"], &["3.12.0"]);
    }

    #[test]
    fn runtime_wildcards_and_alternatives() {
        rt("3.x", &["3.0", "3.12.4"], &["2.7", "4.0"]);
        rt("3.*", &["3.6"], &["4.0"]);
        let any = rt("*", &["0.1", "99"], &[]);
        assert!(any.is_any());
        let req = rt(
            "~3.9 || >=3.11",
            &["3.9.2", "3.11.0", "3.13"],
            &["3.10.0", "3.8"],
        );
        assert_eq!(req.any_of.len(), 2);
    }

    #[test]
    fn runtime_pre_release_of_detected_version_is_ignored() {
        rt(">=3.9", &["3.13.0rc1"], &[]);
        rt(">=3.13", &["3.13.0rc1"], &[]);
    }

    #[test]
    fn runtime_errors() {
        for bad in ["", "   ", "python3", ">=", "3.9 ||", ">=3.9, ", "=>3.9"] {
            assert!(RuntimeRequirement::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn version_families_are_ored() {
        let req = RuntimeRequirement::from_version_families(&["3"]).unwrap();
        assert_eq!(req.raw, "3.*");
        for s in ["3.0.0", "3.6", "3.12.1"] {
            assert!(req.matches(&parse_lenient_version(s).unwrap()), "{s}");
        }
        assert!(!req.matches(&v("2.7.18")));
        assert!(!req.matches(&v("4.0.0")));

        let req = RuntimeRequirement::from_version_families(&["2", "3"]).unwrap();
        assert!(req.matches(&v("2.7.18")));
        assert!(req.matches(&v("3.11.0")));
        assert!(!req.matches(&v("1.0.0")));

        let req = RuntimeRequirement::from_version_families(&["3.9", "3.11.2"]).unwrap();
        assert!(req.matches(&v("3.9.7")));
        assert!(req.matches(&v("3.11.2")));
        assert!(!req.matches(&v("3.11.3")));
        assert!(!req.matches(&v("3.10.0")));

        assert!(RuntimeRequirement::from_version_families::<&str>(&[]).is_err());
        assert!(RuntimeRequirement::from_version_families(&["three"]).is_err());
        // Same meaning, same value: lets the manifest compare `python` with `python_versions`.
        assert_eq!(
            RuntimeRequirement::from_version_families(&["3"])
                .unwrap()
                .any_of,
            RuntimeRequirement::parse("3.x").unwrap().any_of
        );
    }

    #[test]
    fn lenient_versions() {
        let cases = [
            ("3", "3.0.0"),
            ("3.12", "3.12.0"),
            ("3.9.7", "3.9.7"),
            ("Python 3.9.7", "3.9.7"),
            ("python3.11.4", "3.11.4"),
            ("  Python 3.12.1\n", "3.12.1"),
            ("v20.20.2", "20.20.2"),
            ("V18", "18.0.0"),
            ("3.12.0rc1", "3.12.0-rc1"),
            ("3.13.0a2", "3.13.0-a2"),
            ("3.12.0-rc.1", "3.12.0-rc.1"),
            ("1.2.3+build.5", "1.2.3"),
            ("3.9.7.1", "3.9.7"),
            ("5.1.16(1)-release", "5.1.16"),
            ("3.", "3.0.0"),
            ("3.12 (main, Jun 2024)", "3.12.0"),
        ];
        for (input, expected) in cases {
            assert_eq!(parse_lenient_version(input), Some(v(expected)), "{input:?}");
        }
        for bad in ["", "Python", "vx", "abc", "-3"] {
            assert_eq!(parse_lenient_version(bad), None, "{bad:?}");
        }
    }
}
