//! Version selectors (`latest`, exact versions, semver ranges) and `ref@spec`
//! dependency strings.

use std::fmt;

use semver::{Version, VersionReq};

use crate::manifest::is_valid_pack_ref;

/// What a caller asks for when resolving a pack.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VersionSelector {
    /// The highest non-yanked release; stable releases are preferred over
    /// pre-releases.
    Latest,
    /// Exactly this version. May select a yanked release (an explicit pin).
    Exact(Version),
    /// The highest non-yanked release matching the requirement (Cargo semantics:
    /// `^1.2`, `~1.2`, `>=1.0, <2`, `1.x`, `*`). Pre-releases only match when the
    /// requirement names a pre-release of the same `major.minor.patch`.
    Range(VersionReq),
}

/// A version selector string could not be understood.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid version selector '{input}': {reason}")]
pub struct SelectorError {
    pub input: String,
    pub reason: String,
}

impl VersionSelector {
    /// `None`, `""` or `"latest"` → [`Latest`](Self::Latest); a full semver
    /// version such as `"1.2.0"` → [`Exact`](Self::Exact); anything else is
    /// parsed as a range (`"^1.2"`, `">=1.0, <2"`, `"1.x"`, `"~1.2"`, `"=1.2.0"`).
    pub fn parse(s: Option<&str>) -> Result<Self, SelectorError> {
        let Some(raw) = s else {
            return Ok(Self::Latest);
        };
        let t = raw.trim();
        if t.is_empty() || t.eq_ignore_ascii_case("latest") {
            return Ok(Self::Latest);
        }
        if let Ok(v) = Version::parse(t) {
            return Ok(Self::Exact(v));
        }
        VersionReq::parse(t)
            .map(Self::Range)
            .map_err(|e| SelectorError {
                input: raw.to_string(),
                reason: e.to_string(),
            })
    }

    /// Whether `v` satisfies this selector (yanked status is not considered here).
    pub fn matches(&self, v: &Version) -> bool {
        match self {
            Self::Latest => true,
            Self::Exact(want) => want == v,
            Self::Range(req) => req.matches(v),
        }
    }
}

impl fmt::Display for VersionSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Latest => f.write_str("latest"),
            Self::Exact(v) => write!(f, "{v}"),
            Self::Range(r) => write!(f, "{r}"),
        }
    }
}

/// One entry of `dependencies.packs`: `"ref"` or `"ref@spec"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackRequirement {
    pub pack_ref: String,
    pub selector: VersionSelector,
}

impl PackRequirement {
    /// Parses `"core"`, `"core@latest"`, `"core@1.2.0"`, `"core@>=1.0, <2"`.
    pub fn parse(s: &str) -> Result<Self, RequirementError> {
        let (r, spec) = match s.split_once('@') {
            Some((r, spec)) => (r.trim(), Some(spec)),
            None => (s.trim(), None),
        };
        if !is_valid_pack_ref(r) {
            return Err(RequirementError::InvalidRef {
                requirement: s.to_string(),
                pack_ref: r.to_string(),
            });
        }
        let selector =
            VersionSelector::parse(spec).map_err(|source| RequirementError::InvalidSelector {
                requirement: s.to_string(),
                source,
            })?;
        Ok(Self {
            pack_ref: r.to_string(),
            selector,
        })
    }
}

/// Why a `dependencies.packs` entry of an index is not a requirement.
#[derive(Debug, thiserror::Error)]
pub enum RequirementError {
    #[error("'{requirement}': '{pack_ref}' is not a valid pack ref")]
    InvalidRef {
        requirement: String,
        pack_ref: String,
    },
    #[error("'{requirement}': {source}")]
    InvalidSelector {
        requirement: String,
        #[source]
        source: SelectorError,
    },
}

impl fmt::Display for PackRequirement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.selector {
            VersionSelector::Latest => f.write_str(&self.pack_ref),
            ref s => write!(f, "{}@{s}", self.pack_ref),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selector_parse() {
        assert_eq!(
            VersionSelector::parse(None).unwrap(),
            VersionSelector::Latest
        );
        assert_eq!(
            VersionSelector::parse(Some(" LATEST ")).unwrap(),
            VersionSelector::Latest
        );
        assert_eq!(
            VersionSelector::parse(Some("1.2.0")).unwrap(),
            VersionSelector::Exact(Version::new(1, 2, 0))
        );
        for r in ["^1.2", ">=1.0, <2", "1.x", "~1.2", "=1.2.0", "1", "*"] {
            assert!(
                matches!(
                    VersionSelector::parse(Some(r)).unwrap(),
                    VersionSelector::Range(_)
                ),
                "{r}"
            );
        }
        let err = VersionSelector::parse(Some("banana")).unwrap_err();
        assert!(err.to_string().contains("banana"));
        assert!(VersionSelector::parse(Some("v1.2.0")).is_err());
    }

    #[test]
    fn selector_matching() {
        let r = VersionSelector::parse(Some("^1.2")).unwrap();
        assert!(r.matches(&Version::new(1, 9, 0)));
        assert!(!r.matches(&Version::new(2, 0, 0)));
        assert!(!r.matches(&Version::parse("1.3.0-rc.1").unwrap()));
        assert_eq!(r.to_string(), "^1.2");
    }

    #[test]
    fn refs_and_requirements() {
        assert!(is_valid_pack_ref("core"));
        assert!(is_valid_pack_ref("nodejs_example"));
        assert!(is_valid_pack_ref("a-b9"));
        for bad in ["", "Core", "9a", "../x", "a.b", "a/b", "a b"] {
            assert!(!is_valid_pack_ref(bad), "{bad}");
        }
        let r = PackRequirement::parse("core").unwrap();
        assert_eq!(r.selector, VersionSelector::Latest);
        let r = PackRequirement::parse("core@>=1.0, <2").unwrap();
        assert_eq!(r.pack_ref, "core");
        assert!(matches!(r.selector, VersionSelector::Range(_)));
        assert_eq!(
            PackRequirement::parse("core@1.0.0").unwrap().to_string(),
            "core@1.0.0"
        );
        assert!(PackRequirement::parse("Core@1").is_err());
        assert!(PackRequirement::parse("core@nope").is_err());
    }
}
