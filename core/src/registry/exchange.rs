//! The StackStorm Exchange index (`index.json` of StackStorm-Exchange/index), read
//! into the common index model. See `docs/registry-index.md`, "StackStorm Exchange
//! format".
//!
//! The document is `{"metadata": {"generated_ts", "hash"}, "packs": {"<name>": {…}}}`.
//! Each entry becomes a pack with exactly one version (its `version`), whose only
//! install source is its `repo_url` at the tag `v<version>` (how the Exchange tags
//! releases) **without a checksum**: the format carries none, so the client only
//! accepts it from a registry configured as unverified.
//!
//! Parsing is as tolerant as Attune's format (unknown keys ignored, a malformed entry
//! skipped with a warning naming it) and every entry is capped: string lengths and
//! list lengths, so a hostile index cannot make one entry arbitrarily expensive to
//! keep, search or show. The number of entries is capped for the whole document.

use std::collections::HashSet;

use serde::Deserialize;
use serde_json::{Map, Value};

use super::index::{
    ComponentSummary, EntryProblem, IndexError, IndexFormat, IndexWarning, InstallSource,
    PackContents, PackDependencies, PackEntry, PackIndex, Release, check_dependencies,
    check_source_url, null_as_default, parse_version,
};
use crate::manifest::is_valid_pack_ref;
use crate::source::check_no_credentials;

/// Most entries one Exchange document may list (the public one has under 200).
pub const MAX_PACKS: usize = 10_000;
/// Longest `description`, in bytes.
pub const MAX_DESCRIPTION_BYTES: usize = 4096;
/// Longest `name`, `author`, `email`, `version` or keyword, in bytes.
pub const MAX_SHORT_TEXT_BYTES: usize = 256;
/// Longest `repo_url`, in bytes.
pub const MAX_URL_BYTES: usize = 2048;
/// Most `keywords` (and most `dependencies`) of one entry.
pub const MAX_KEYWORDS: usize = 64;
/// Most component names listed under one kind of `content`.
pub const MAX_CONTENT_ITEMS: usize = 4096;

/// The `content` kinds that have a place in [`PackContents`]; others (`tests`,
/// `aliases`, `policies`) are ignored.
const CONTENT_KINDS: &[&str] = &["actions", "sensors", "triggers", "rules", "workflows"];

#[derive(Deserialize, Default)]
#[serde(default)]
struct RawEntry {
    #[serde(rename = "ref")]
    pack_ref: Option<String>,
    name: Option<String>,
    version: Option<String>,
    repo_url: Option<String>,
    author: Option<String>,
    email: Option<String>,
    description: Option<String>,
    #[serde(deserialize_with = "null_as_default")]
    keywords: Vec<String>,
    #[serde(deserialize_with = "null_as_default")]
    dependencies: Vec<String>,
    content: Option<Value>,
    stackstorm_version: Option<Value>,
    python_versions: Option<Value>,
}

/// Reads an Exchange document whose top level is already known to have a `packs`
/// object and a `metadata` object.
pub(super) fn parse(mut top: Map<String, Value>) -> Result<PackIndex, IndexError> {
    let Some(Value::Object(raw_packs)) = top.remove("packs") else {
        return Err(IndexError::NoPacks);
    };
    if raw_packs.len() > MAX_PACKS {
        return Err(IndexError::TooManyPacks {
            count: raw_packs.len(),
            limit: MAX_PACKS,
        });
    }
    let last_updated = top
        .get("metadata")
        .and_then(|m| m.get("generated_ts"))
        .and_then(Value::as_i64)
        .and_then(iso8601_utc)
        .unwrap_or_default();

    let mut packs = Vec::with_capacity(raw_packs.len());
    let mut warnings = Vec::new();
    let mut seen: HashSet<String> = HashSet::new();
    for (key, raw) in raw_packs {
        // The name a warning gives: the ref the entry claims, else its key.
        let claimed = raw
            .get("ref")
            .and_then(Value::as_str)
            .or_else(|| raw.get("name").and_then(Value::as_str))
            .unwrap_or(&key)
            .chars()
            .take(MAX_SHORT_TEXT_BYTES)
            .collect::<String>();
        // Entries are keyed, not positioned: the reason names the key (and the ref
        // the entry claims, when that differs).
        let at = if claimed == key {
            format!("packs[\"{}\"]", shown(&key))
        } else {
            format!("packs[\"{}\"] ('{}')", shown(&key), shown(&claimed))
        };
        match parse_entry(raw) {
            Ok(entry) => {
                if !seen.insert(entry.pack_ref.clone()) {
                    warnings.push(IndexWarning {
                        entry: None,
                        pack_ref: Some(claimed),
                        entry_skipped: true,
                        reason: format!(
                            "{at}: duplicate ref; the first entry with this ref is used"
                        ),
                    });
                    continue;
                }
                packs.push(entry);
            }
            Err(problem) => warnings.push(IndexWarning {
                entry: None,
                pack_ref: Some(claimed),
                entry_skipped: true,
                reason: format!("{at}: {problem}"),
            }),
        }
    }
    Ok(PackIndex {
        format: IndexFormat::StackStormExchange,
        registry_name: String::new(),
        registry_url: String::new(),
        format_version: IndexFormat::StackStormExchange.as_str().to_string(),
        last_updated,
        packs,
        warnings,
    })
}

/// A key or name as shown in a warning: bounded, without control characters.
fn shown(key: &str) -> String {
    key.chars()
        .filter(|c| !c.is_control())
        .take(MAX_SHORT_TEXT_BYTES)
        .collect()
}

fn parse_entry(raw: Value) -> Result<PackEntry, EntryProblem> {
    if !raw.is_object() {
        return Err(EntryProblem::EntryNotObject);
    }
    let e: RawEntry = serde_json::from_value(raw).map_err(EntryProblem::MalformedEntry)?;
    for (field, value, limit) in [
        ("ref", e.pack_ref.as_deref(), MAX_SHORT_TEXT_BYTES),
        ("name", e.name.as_deref(), MAX_SHORT_TEXT_BYTES),
        ("version", e.version.as_deref(), MAX_SHORT_TEXT_BYTES),
        ("author", e.author.as_deref(), MAX_SHORT_TEXT_BYTES),
        ("email", e.email.as_deref(), MAX_SHORT_TEXT_BYTES),
        (
            "description",
            e.description.as_deref(),
            MAX_DESCRIPTION_BYTES,
        ),
        ("repo_url", e.repo_url.as_deref(), MAX_URL_BYTES),
    ] {
        check_len(field, value.unwrap_or_default(), limit)?;
    }
    check_count("keywords", e.keywords.len(), MAX_KEYWORDS)?;
    for k in &e.keywords {
        check_len("keywords", k, MAX_SHORT_TEXT_BYTES)?;
    }
    check_count("dependencies", e.dependencies.len(), MAX_KEYWORDS)?;

    let pack_ref = e
        .pack_ref
        .clone()
        .or_else(|| e.name.clone())
        .ok_or(EntryProblem::Missing("ref` or `name"))?;
    if !is_valid_pack_ref(&pack_ref) {
        return Err(EntryProblem::InvalidRef(pack_ref));
    }
    let version = parse_version(e.version.as_deref())?;
    let repo_url = check_source_url(e.repo_url).map_err(repo_url_problem)?;
    check_no_credentials(&repo_url)
        .map_err(|e| repo_url_problem(EntryProblem::UrlCarriesCredentials(e)))?;
    let dependencies = (!e.dependencies.is_empty()).then(|| PackDependencies {
        packs: e.dependencies.clone(),
        ..PackDependencies::default()
    });
    check_dependencies(dependencies.as_ref())?;
    let contents = parse_contents(e.content.as_ref())?;

    let install_sources = vec![InstallSource::Git {
        url: repo_url.clone(),
        git_ref: format!("v{version}"),
        checksum: None,
    }];
    let mut meta = Map::new();
    if let Some(Value::String(v)) = &e.stackstorm_version
        && v.len() <= MAX_SHORT_TEXT_BYTES
    {
        meta.insert("stackstorm_version".into(), Value::String(v.clone()));
    }
    if let Some(Value::Array(vs)) = &e.python_versions
        && vs.len() <= MAX_KEYWORDS
        && vs
            .iter()
            .all(|v| v.as_str().is_some_and(|s| s.len() <= MAX_SHORT_TEXT_BYTES))
    {
        meta.insert("python_versions".into(), Value::Array(vs.clone()));
    }
    let label = e
        .name
        .filter(|n| !n.trim().is_empty())
        .unwrap_or_else(|| pack_ref.clone());
    Ok(PackEntry {
        label,
        description: e.description.unwrap_or_default(),
        use_case: None,
        version: version.clone(),
        author: e.author.unwrap_or_default(),
        email: e.email.filter(|m| !m.is_empty()),
        homepage: None,
        repository: Some(repo_url),
        license: "NOASSERTION".into(),
        keywords: e.keywords,
        runtime_deps: Vec::new(),
        install_sources: install_sources.clone(),
        contents,
        dependencies: dependencies.clone(),
        meta,
        releases: vec![Release {
            version,
            install_sources,
            dependencies,
            yanked: false,
        }],
        pack_ref,
    })
}

fn repo_url_problem(problem: EntryProblem) -> EntryProblem {
    EntryProblem::InstallSource {
        index: 0,
        problem: Box::new(problem),
    }
}

fn check_len(field: &'static str, value: &str, limit: usize) -> Result<(), EntryProblem> {
    if value.len() > limit {
        return Err(EntryProblem::FieldTooLong {
            field,
            len: value.len(),
            limit,
        });
    }
    Ok(())
}

fn check_count(field: &'static str, count: usize, limit: usize) -> Result<(), EntryProblem> {
    if count > limit {
        return Err(EntryProblem::TooManyItems {
            field,
            count,
            limit,
        });
    }
    Ok(())
}

/// `content` is `{kind: {count, resources: [name, …]}}`; only the names of kinds the
/// model has are kept. A kind whose shape is wrong is ignored (the field is
/// informational), but an oversized one makes the entry malformed.
fn parse_contents(content: Option<&Value>) -> Result<PackContents, EntryProblem> {
    let mut contents = PackContents::default();
    let Some(Value::Object(content)) = content else {
        return Ok(contents);
    };
    for &kind in CONTENT_KINDS {
        let Some(Value::Array(resources)) = content.get(kind).and_then(|k| k.get("resources"))
        else {
            continue;
        };
        check_count("content.resources", resources.len(), MAX_CONTENT_ITEMS)?;
        let mut names = Vec::with_capacity(resources.len());
        for name in resources.iter().filter_map(Value::as_str) {
            check_len("content.resources", name, MAX_SHORT_TEXT_BYTES)?;
            names.push(ComponentSummary {
                name: name.to_string(),
                description: String::new(),
            });
        }
        match kind {
            "actions" => contents.actions = names,
            "sensors" => contents.sensors = names,
            "triggers" => contents.triggers = names,
            "rules" => contents.rules = names,
            _ => contents.workflows = names,
        }
    }
    Ok(contents)
}

/// Unix seconds as `YYYY-MM-DDTHH:MM:SSZ` (proleptic Gregorian, UTC).
fn iso8601_utc(secs: i64) -> Option<String> {
    if !(0..=253_402_300_799).contains(&secs) {
        return None; // before 1970 or after 9999: not a generation time
    }
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Days since 1970-01-01 to a civil date (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    Some(format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::VersionSelector;
    use semver::Version;
    use serde_json::json;

    const FIXTURE: &str = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../server/tests/fixtures/stackstorm-exchange-index.json"
    );

    fn real() -> Value {
        serde_json::from_slice(&std::fs::read(FIXTURE).unwrap()).unwrap()
    }

    fn entry(name: &str, version: &str) -> Value {
        json!({
            "name": name, "version": version, "author": "a", "email": "a@example.com",
            "description": format!("{name} pack"), "keywords": ["k"],
            "repo_url": format!("https://github.com/StackStorm-Exchange/stackstorm-{name}"),
            "content": {"actions": {"count": 1, "resources": ["go"]}}
        })
    }

    fn doc(packs: Vec<(&str, Value)>) -> Value {
        let packs: Map<String, Value> = packs.into_iter().map(|(k, v)| (k.into(), v)).collect();
        json!({"metadata": {"generated_ts": 0, "hash": "x"}, "packs": packs})
    }

    fn git_source(e: &PackEntry) -> (&str, &str, bool) {
        match &e.install_sources[..] {
            [
                InstallSource::Git {
                    url,
                    git_ref,
                    checksum,
                },
            ] => (url.as_str(), git_ref.as_str(), checksum.is_some()),
            other => panic!("expected one git source, got {other:?}"),
        }
    }

    #[test]
    fn loads_the_real_exchange_index() {
        let idx = PackIndex::from_value(real()).unwrap();
        assert_eq!(idx.format, IndexFormat::StackStormExchange);
        assert_eq!(idx.format_version, "stackstorm-exchange-v1");
        assert_eq!(idx.packs.len(), 169);
        assert!(idx.warnings.is_empty(), "{:#?}", idx.warnings);
        assert_eq!(idx.last_updated, "2026-02-05T18:12:47Z");

        let aws = idx.get("aws").unwrap();
        assert_eq!(aws.version, Version::new(2, 0, 2));
        assert_eq!(aws.releases.len(), 1);
        assert_eq!(
            git_source(aws),
            (
                "https://github.com/StackStorm-Exchange/stackstorm-aws",
                "v2.0.2",
                false
            )
        );
        assert_eq!(aws.author, "StackStorm, Inc.");
        assert_eq!(aws.email.as_deref(), Some("info@stackstorm.com"));
        assert!(aws.keywords.iter().any(|k| k == "route53"));
        assert_eq!(
            aws.select(&VersionSelector::Latest).unwrap().version,
            Version::new(2, 0, 2)
        );
        assert!(
            aws.select(&VersionSelector::parse(Some("1.2.3")).unwrap())
                .is_none()
        );

        // `ref` wins over a display `name`, which becomes the label.
        let ci = idx.get("circle_ci").unwrap();
        assert_eq!(ci.label, "Circle CI");
        assert_eq!(ci.version, Version::new(1, 0, 0));
        assert_eq!(
            git_source(ci).0,
            "https://github.com/StackStorm-Exchange/stackstorm-circle_ci"
        );
        // Exchange dependencies become pack requirements.
        let aoscx = idx.get("aoscx").unwrap();
        assert_eq!(aoscx.dependencies.as_ref().unwrap().packs, ["core"]);
        assert_eq!(aoscx.label, "Aruba AOS-CX Pack");

        let acos = idx.get("acos").unwrap();
        assert_eq!(acos.contents.actions.len(), 35);
        assert_eq!(acos.contents.actions[0].name, "add_slb_server");
        assert!(idx.search("load BALANCER").any(|p| p.pack_ref == "acos"));
        assert!(
            idx.search("amazon web services")
                .any(|p| p.pack_ref == "aws")
        );
    }

    #[test]
    fn shape_detection() {
        // `packs` as an object without `metadata` is neither format.
        assert_eq!(
            PackIndex::from_value(json!({"packs": {"a": entry("aa", "1.0.0")}})).unwrap_err(),
            IndexError::UnrecognisedShape
        );
        assert_eq!(
            PackIndex::from_value(json!({"metadata": [], "packs": {}})).unwrap_err(),
            IndexError::UnrecognisedShape
        );
        let idx = PackIndex::from_value(doc(vec![])).unwrap();
        assert_eq!(idx.format, IndexFormat::StackStormExchange);
        assert!(idx.packs.is_empty());
        assert_eq!(idx.last_updated, "1970-01-01T00:00:00Z");
        // Attune's format with a stray `metadata` is still Attune's.
        let idx =
            PackIndex::from_value(json!({"version": "1.0", "metadata": {}, "packs": []})).unwrap();
        assert_eq!(idx.format, IndexFormat::Attune);
    }

    #[test]
    fn too_many_packs_refuse_the_whole_index() {
        let packs: Vec<(String, Value)> = (0..=MAX_PACKS)
            .map(|i| (format!("p{i}"), json!({})))
            .collect();
        let packs: Map<String, Value> = packs.into_iter().collect();
        let err = PackIndex::from_value(json!({"metadata": {}, "packs": packs})).unwrap_err();
        assert_eq!(
            err,
            IndexError::TooManyPacks {
                count: MAX_PACKS + 1,
                limit: MAX_PACKS
            }
        );
    }

    #[test]
    fn hostile_and_malformed_entries_are_skipped_naming_them() {
        let mut with_password = entry("withpw", "1.0.0");
        with_password["repo_url"] = json!("https://user:hunter2@github.com/x/y");
        let mut with_token = entry("withtoken", "1.0.0");
        with_token["repo_url"] = json!("https://github.com/x/y?access_token=abc");
        let mut file_url = entry("fileurl", "1.0.0");
        file_url["repo_url"] = json!("file:///etc");
        let mut ssh_url = entry("sshurl", "1.0.0");
        ssh_url["repo_url"] = json!("ssh://git@github.com/x/y");
        let mut option_url = entry("optionurl", "1.0.0");
        option_url["repo_url"] = json!("--upload-pack=touch /tmp/x");
        let mut no_url = entry("nourl", "1.0.0");
        no_url.as_object_mut().unwrap().remove("repo_url");
        let mut bad_version = entry("badver", "1.0");
        bad_version["version"] = json!("1.0");
        let mut long_description = entry("longdesc", "1.0.0");
        long_description["description"] = json!("x".repeat(MAX_DESCRIPTION_BYTES + 1));
        let mut many_keywords = entry("manykw", "1.0.0");
        many_keywords["keywords"] = json!(vec!["k"; MAX_KEYWORDS + 1]);
        let mut long_keyword = entry("longkw", "1.0.0");
        long_keyword["keywords"] = json!(["k".repeat(MAX_SHORT_TEXT_BYTES + 1)]);
        let mut wrong_type = entry("wrongtype", "1.0.0");
        wrong_type["keywords"] = json!("a,b");
        let mut numeric_author = entry("numauthor", "1.0.0");
        numeric_author["author"] = json!(7);
        let mut huge_content = entry("hugecontent", "1.0.0");
        huge_content["content"]["actions"]["resources"] = json!(vec!["a"; MAX_CONTENT_ITEMS + 1]);
        let mut bad_dep = entry("baddep", "1.0.0");
        bad_dep["dependencies"] = json!(["https://github.com/x/stackstorm-y"]);
        let mut refless = entry("ignored", "1.0.0");
        refless.as_object_mut().unwrap().remove("name");
        let mut dup = entry("zzz", "9.9.9");
        dup["ref"] = json!("good");
        let mut odd_content = entry("oddcontent", "1.0.0");
        odd_content["content"] = json!({"actions": "many", "sensors": {"resources": [1, "s"]}});

        let idx = PackIndex::from_value(doc(vec![
            ("good", entry("good", "1.2.3")),
            ("Spaced Name", entry("Spaced Name", "1.0.0")),
            ("withpw", with_password),
            ("withtoken", with_token),
            ("fileurl", file_url),
            ("sshurl", ssh_url),
            ("optionurl", option_url),
            ("nourl", no_url),
            ("badver", bad_version),
            ("longdesc", long_description),
            ("manykw", many_keywords),
            ("longkw", long_keyword),
            ("wrongtype", wrong_type),
            ("numauthor", numeric_author),
            ("hugecontent", huge_content),
            ("baddep", bad_dep),
            ("refless", refless),
            ("zdup", dup),
            ("oddcontent", odd_content),
            ("notobject", json!("x")),
        ]))
        .unwrap();
        let refs: Vec<&str> = idx.packs.iter().map(|p| p.pack_ref.as_str()).collect();
        assert_eq!(refs, ["good", "oddcontent"], "{:#?}", idx.warnings);
        assert_eq!(idx.get("oddcontent").unwrap().contents.sensors[0].name, "s");
        let reason = |r: &str| {
            idx.skipped_entry(r)
                .unwrap_or_else(|| panic!("{r} not skipped: {:#?}", idx.warnings))
                .to_string()
        };
        assert!(reason("Spaced Name").contains("'Spaced Name' is invalid"));
        let pw = reason("withpw");
        assert!(pw.contains("credentials"), "{pw}");
        assert!(!pw.contains("hunter2"), "{pw}");
        assert!(reason("withtoken").contains("access_token"));
        assert!(reason("fileurl").contains("scheme 'file'"));
        assert!(reason("sshurl").contains("scheme 'ssh'"));
        assert!(reason("optionurl").contains("url is invalid"));
        assert!(reason("nourl").contains("missing `url`"));
        assert!(reason("badver").contains("semantic version"));
        assert!(reason("longdesc").contains("`description` is 4097 bytes"));
        assert!(reason("manykw").contains("`keywords` has 65 items"));
        assert!(reason("longkw").contains("`keywords` is 257 bytes"));
        assert!(reason("wrongtype").contains("malformed"));
        assert!(reason("numauthor").contains("malformed"));
        assert!(reason("hugecontent").contains("content.resources"));
        assert!(reason("baddep").contains("dependencies.packs"));
        assert!(reason("refless").contains("missing `ref` or `name`"));
        assert!(reason("good").contains("duplicate"));
        assert!(
            reason("good").starts_with("packs[\"zdup\"] ('good'): duplicate ref"),
            "{}",
            reason("good")
        );
        assert!(
            idx.warnings
                .iter()
                .any(|w| w.to_string() == "packs[\"notobject\"]: entry is not a JSON object")
        );
        assert_eq!(idx.warnings.len(), 18, "{:#?}", idx.warnings);
        assert!(idx.warnings.iter().all(|w| w.entry_skipped));
        // The first `good` keeps its version.
        assert_eq!(idx.get("good").unwrap().version, Version::new(1, 2, 3));
    }

    #[test]
    fn timestamps() {
        assert_eq!(iso8601_utc(1_770_315_167).unwrap(), "2026-02-05T18:12:47Z");
        assert_eq!(iso8601_utc(951_782_400).unwrap(), "2000-02-29T00:00:00Z");
        assert_eq!(iso8601_utc(-1), None);
        assert_eq!(iso8601_utc(i64::MAX), None);
    }
}
