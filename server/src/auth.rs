//! Bearer-token authentication: HS256 JWTs signed with the secret the main Attune API
//! uses, checked for signature and expiry, carrying the caller's grants (see
//! [`crate::grants`]) in a `grants` claim.
//!
//! Transport-neutral: the gRPC interceptor and the REST layer both call
//! [`Authenticator::verify_header`] and map [`AuthError`] to their own status.

use std::{
    fs,
    io::Write,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation, errors::ErrorKind};
use serde::{Deserialize, Serialize};

use crate::{config::Secret, grants::GrantSet};

/// File in the data dir holding the generated secret when none is configured.
pub const SECRET_FILE: &str = "jwt-secret";

/// Who is calling, as proven by the token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub subject: String,
    /// What the token allows; `None` for a token without a `grants` claim (issued
    /// before grants existed, or by a signer that does not know them), which may do
    /// everything only while `auth.legacy_tokens_full_access` is true.
    pub grants: Option<GrantSet>,
}

/// The most grants a token may list (there are four; duplicates are tolerated).
const MAX_GRANT_CLAIMS: usize = 16;

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    sub: String,
    exp: u64,
    iat: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    nbf: Option<u64>,
    /// Kept raw so that a claim that is present but not a list of known grants is
    /// refused with its own reason, and told apart from an absent one.
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    grants: Option<serde_json::Value>,
}

/// `Some` whenever the claim is there, `null` included.
fn present<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<serde_json::Value>, D::Error> {
    serde_json::Value::deserialize(deserializer).map(Some)
}

/// The `grants` claim read strictly: a signed token is still refused when the claim is
/// not a list of known grant names, rather than read as more or less than it says.
fn grants_claim(claim: Option<&serde_json::Value>) -> Result<Option<GrantSet>, AuthError> {
    let Some(claim) = claim else {
        return Ok(None);
    };
    let serde_json::Value::Array(items) = claim else {
        return Err(AuthError::Invalid(
            "the `grants` claim must be a list of grant names such as \"packs:read\"".into(),
        ));
    };
    if items.len() > MAX_GRANT_CLAIMS {
        return Err(AuthError::Invalid(format!(
            "the `grants` claim lists {} entries; at most {MAX_GRANT_CLAIMS} are accepted",
            items.len()
        )));
    }
    let names = items
        .iter()
        .map(|item| {
            item.as_str().ok_or_else(|| {
                AuthError::Invalid(format!(
                    "the `grants` claim holds {item}, which is not a grant name such as \"packs:read\""
                ))
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    GrantSet::parse(&names)
        .map(Some)
        .map_err(|e| AuthError::Invalid(format!("the `grants` claim names an {e}")))
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    #[error("missing authorization: send `authorization: Bearer <token>`")]
    Missing,
    #[error("malformed authorization: {0}")]
    Malformed(String),
    #[error("token expired")]
    Expired,
    #[error("token not valid yet (its `nbf` is in the future)")]
    NotYetValid,
    #[error("token signature is invalid (not signed with this server's secret)")]
    BadSignature,
    #[error("token rejected: {0}")]
    Invalid(String),
}

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("cannot read JWT secret {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot create JWT secret {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("JWT secret {path} is empty")]
    Empty { path: PathBuf },
    #[error("cannot generate a random secret: {0}")]
    Random(String),
    /// Only `serve` generates a secret: a token signed with one made elsewhere would be
    /// refused by the server.
    #[error(
        "no JWT secret: {} does not exist and jwt_secret is not set; start the server once \
         with `attune-packs-server serve` (it generates the secret there), set \
         ATTUNE_PACKS_JWT_SECRET, or pass --data-dir <the server's data dir>",
        path.display()
    )]
    Missing { path: PathBuf },
}

/// Where the secret tokens are signed with came from. Shown to operators; the secret
/// itself never is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretSource {
    /// `jwt_secret` from this environment variable.
    Env(String),
    /// `jwt_secret` in this configuration file.
    ConfigFile(PathBuf),
    /// `jwt_secret` set by the embedding program (tests), from no file or variable.
    Setting,
    /// The file the server generated (or will generate) in its data dir.
    DataDir(PathBuf),
}

impl std::fmt::Display for SecretSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SecretSource::Env(var) => write!(f, "environment variable {var}"),
            SecretSource::ConfigFile(path) => {
                write!(f, "jwt_secret in config file {}", path.display())
            }
            SecretSource::Setting => f.write_str("the jwt_secret setting"),
            SecretSource::DataDir(path) => write!(f, "{}", path.display()),
        }
    }
}

/// Whether a missing secret may be generated: only by the server itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MissingSecret {
    Generate,
    Fail,
}

/// The secret the server signs and checks tokens with, and where it came from.
#[derive(Debug, Clone)]
pub struct ResolvedSecret {
    pub secret: Secret,
    pub source: SecretSource,
}

/// The one way every command finds the secret: `jwt_secret` (environment or config
/// file), else `<data dir>/jwt-secret`, which only `serve` creates when missing.
pub fn resolve_secret(
    config: &crate::config::Config,
    missing: MissingSecret,
) -> Result<ResolvedSecret, SecretError> {
    let source = secret_source(config);
    let secret = match (&config.jwt_secret, missing) {
        (Some(secret), _) => secret.clone(),
        (None, MissingSecret::Generate) => {
            load_or_create_secret(None, &config.data_dir_absolute())?
        }
        (None, MissingSecret::Fail) => {
            let path = secret_path(config);
            read_secret_file(&path)?.ok_or(SecretError::Missing { path })?
        }
    };
    Ok(ResolvedSecret { secret, source })
}

/// Where [`resolve_secret`] takes the secret from, without reading it.
pub fn secret_source(config: &crate::config::Config) -> SecretSource {
    use crate::config::SettingOrigin;
    match (&config.jwt_secret, &config.jwt_secret_origin) {
        (Some(_), Some(SettingOrigin::Env(var))) => SecretSource::Env(var.clone()),
        (Some(_), Some(SettingOrigin::File(file))) => SecretSource::ConfigFile(file.clone()),
        (Some(_), None) => SecretSource::Setting,
        (None, _) => SecretSource::DataDir(secret_path(config)),
    }
}

/// Where the server keeps the secret it generated: `<data dir>/jwt-secret`.
pub fn secret_path(config: &crate::config::Config) -> PathBuf {
    config.data_dir_absolute().join(SECRET_FILE)
}

/// The secret stored at `path`, `None` when there is no such file.
fn read_secret_file(path: &Path) -> Result<Option<Secret>, SecretError> {
    match fs::read_to_string(path) {
        Ok(text) => {
            let text = text.trim();
            if text.is_empty() {
                return Err(SecretError::Empty {
                    path: path.to_path_buf(),
                });
            }
            Ok(Some(Secret::new(text)))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(SecretError::Read {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Verifies and issues tokens. Cheap to clone.
#[derive(Clone)]
pub struct Authenticator {
    inner: Arc<Keys>,
}

struct Keys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
}

impl Authenticator {
    pub fn new(secret: &Secret) -> Self {
        let bytes = secret.expose().as_bytes();
        let mut validation = Validation::new(Algorithm::HS256);
        // `exp` and `nbf` are both checked, with the same (zero) leeway.
        validation.leeway = 0;
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp", "sub"]);
        Self {
            inner: Arc::new(Keys {
                encoding: EncodingKey::from_secret(bytes),
                decoding: DecodingKey::from_secret(bytes),
                validation,
            }),
        }
    }

    /// Checks the value of an `authorization` header or metadata entry.
    pub fn verify_header(&self, header: Option<&str>) -> Result<Principal, AuthError> {
        let header = header.ok_or(AuthError::Missing)?.trim();
        let (scheme, token) = header
            .split_once(' ')
            .ok_or_else(|| AuthError::Malformed("expected `Bearer <token>`".into()))?;
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(AuthError::Malformed(format!(
                "unsupported scheme `{scheme}`, expected `Bearer`"
            )));
        }
        self.verify_token(token.trim())
    }

    pub fn verify_token(&self, token: &str) -> Result<Principal, AuthError> {
        if token.is_empty() {
            return Err(AuthError::Malformed("empty bearer token".into()));
        }
        let data =
            jsonwebtoken::decode::<Claims>(token, &self.inner.decoding, &self.inner.validation)
                .map_err(|e| match e.kind() {
                    ErrorKind::ExpiredSignature => AuthError::Expired,
                    ErrorKind::ImmatureSignature => AuthError::NotYetValid,
                    ErrorKind::InvalidSignature => AuthError::BadSignature,
                    ErrorKind::InvalidToken
                    | ErrorKind::Base64(_)
                    | ErrorKind::Json(_)
                    | ErrorKind::Utf8(_) => AuthError::Malformed("not a JWT".into()),
                    ErrorKind::InvalidAlgorithm => {
                        AuthError::Invalid("token must be signed with HS256".into())
                    }
                    ErrorKind::MissingRequiredClaim(claim) => {
                        AuthError::Invalid(format!("missing claim `{claim}`"))
                    }
                    other => AuthError::Invalid(format!("{other:?}")),
                })?;
        check_subject(&data.claims.sub)?;
        let grants = grants_claim(data.claims.grants.as_ref())?;
        Ok(Principal {
            subject: data.claims.sub,
            grants,
        })
    }

    /// Signs a token for `subject` with every grant, valid for `ttl`.
    pub fn issue(&self, subject: &str, ttl: Duration) -> String {
        self.issue_with_grants(subject, ttl, &GrantSet::all())
    }

    /// Signs a token for `subject` carrying exactly `grants`, valid for `ttl`.
    pub fn issue_with_grants(&self, subject: &str, ttl: Duration, grants: &GrantSet) -> String {
        let now = unix_now();
        self.sign(&Claims {
            sub: subject.to_string(),
            iat: now,
            exp: now + ttl.as_secs(),
            nbf: None,
            grants: Some(grants.names().into()),
        })
    }

    /// Signs a token with whatever `grants` claim is given, or none (tests of tokens
    /// issued before grants existed, and of malformed claims).
    #[doc(hidden)]
    pub fn issue_with_raw_grants(
        &self,
        subject: &str,
        ttl: Duration,
        grants: Option<serde_json::Value>,
    ) -> String {
        let now = unix_now();
        self.sign(&Claims {
            sub: subject.to_string(),
            iat: now,
            exp: now + ttl.as_secs(),
            nbf: None,
            grants,
        })
    }

    /// Signs a token with explicit timestamps (tests of expiry).
    #[doc(hidden)]
    pub fn issue_with_times(&self, subject: &str, iat: u64, exp: u64) -> String {
        self.sign(&Claims {
            sub: subject.to_string(),
            iat,
            exp,
            nbf: None,
            grants: Some(GrantSet::all().names().into()),
        })
    }

    /// Signs a token that is not valid before `nbf` (tests of `nbf`).
    #[doc(hidden)]
    pub fn issue_not_before(&self, subject: &str, nbf: u64, ttl: Duration) -> String {
        let now = unix_now();
        self.sign(&Claims {
            sub: subject.to_string(),
            iat: now,
            exp: now.max(nbf) + ttl.as_secs(),
            nbf: Some(nbf),
            grants: Some(GrantSet::all().names().into()),
        })
    }

    fn sign(&self, claims: &Claims) -> String {
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &self.inner.encoding)
            .expect("HS256 signing with an in-memory key cannot fail")
    }
}

/// The longest token subject accepted (bytes). Subjects are user names, emails
/// (at most 254 bytes) or service ids; anything longer is not one.
pub const MAX_SUBJECT_BYTES: usize = 256;

/// A subject reaches log lines, spans and the `installed_by` column: one with control
/// characters (newlines, ESC) could forge log lines or terminal output, so the token
/// is refused rather than the subject altered.
fn check_subject(subject: &str) -> Result<(), AuthError> {
    if subject.is_empty() {
        return Err(AuthError::Invalid("the `sub` claim is empty".into()));
    }
    if subject.len() > MAX_SUBJECT_BYTES {
        return Err(AuthError::Invalid(format!(
            "the `sub` claim is {} bytes long; at most {MAX_SUBJECT_BYTES} are accepted",
            subject.len()
        )));
    }
    if subject.chars().any(char::is_control) {
        return Err(AuthError::Invalid(
            "the `sub` claim contains control characters".into(),
        ));
    }
    Ok(())
}

/// `text` with control characters escaped (`\n`, `\u{1b}`), for log fields that hold
/// caller-chosen strings.
pub fn escape_for_log(text: &str) -> String {
    if text.chars().any(char::is_control) {
        text.escape_debug().to_string()
    } else {
        text.to_string()
    }
}

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The configured secret, else the one stored in the data dir, else a new one
/// generated there with mode 0600. The secret itself is never logged.
pub fn load_or_create_secret(
    configured: Option<&Secret>,
    data_dir: &Path,
) -> Result<Secret, SecretError> {
    if let Some(secret) = configured {
        return Ok(secret.clone());
    }
    let path = data_dir.join(SECRET_FILE);
    if let Some(secret) = read_secret_file(&path)? {
        return Ok(secret);
    }
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| SecretError::Random(e.to_string()))?;
    let secret = hex::encode(bytes);
    write_private(&path, &secret).map_err(|source| SecretError::Write {
        path: path.clone(),
        source,
    })?;
    tracing::info!(path = %path.display(), "generated a new JWT secret");
    // Two processes may race to create it: whoever lost reads the winner's file.
    match fs::read_to_string(&path) {
        Ok(text) if !text.trim().is_empty() => Ok(Secret::new(text.trim())),
        Ok(_) => Err(SecretError::Empty { path }),
        Err(source) => Err(SecretError::Read { path, source }),
    }
}

fn write_private(path: &Path, content: &str) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent)?;
    }
    let mut file = match fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(f) => f,
        // Someone else created it first; theirs wins.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Ok(()),
        Err(e) => return Err(e),
    };
    file.write_all(content.as_bytes())?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn auth(secret: &str) -> Authenticator {
        Authenticator::new(&Secret::new(secret))
    }

    #[test]
    fn round_trip() {
        let a = auth("one");
        let t = a.issue("alice", Duration::from_secs(60));
        let p = a.verify_header(Some(&format!("Bearer {t}"))).unwrap();
        assert_eq!(p.subject, "alice");
        // The scheme is case-insensitive, as in RFC 7235.
        assert!(a.verify_header(Some(&format!("bearer {t}"))).is_ok());
    }

    #[test]
    fn each_failure_says_what_is_wrong() {
        let a = auth("one");
        assert_eq!(a.verify_header(None), Err(AuthError::Missing));
        assert!(matches!(
            a.verify_header(Some("Basic abc")),
            Err(AuthError::Malformed(_))
        ));
        assert!(matches!(
            a.verify_header(Some("Bearer not.a.jwt")),
            Err(AuthError::Malformed(_))
        ));
        let expired = a.issue_with_times("bob", 1_000, 2_000);
        assert_eq!(
            a.verify_header(Some(&format!("Bearer {expired}"))),
            Err(AuthError::Expired)
        );
        let foreign = auth("two").issue("eve", Duration::from_secs(60));
        assert_eq!(
            a.verify_header(Some(&format!("Bearer {foreign}"))),
            Err(AuthError::BadSignature)
        );
    }

    #[test]
    fn grants_travel_in_the_token_and_an_absent_claim_is_told_apart() {
        let a = auth("one");
        let read = GrantSet::parse(&["packs:read"]).unwrap();
        let p = a
            .verify_token(&a.issue_with_grants("ro", Duration::from_secs(60), &read))
            .unwrap();
        assert_eq!(p.grants, Some(read));
        let p = a
            .verify_token(&a.issue("all", Duration::from_secs(60)))
            .unwrap();
        assert_eq!(p.grants, Some(GrantSet::all()));
        let p = a
            .verify_token(&a.issue_with_raw_grants("old", Duration::from_secs(60), None))
            .unwrap();
        assert_eq!(p.grants, None);
        let empty = a.issue_with_raw_grants("none", Duration::from_secs(60), Some(json!([])));
        assert_eq!(
            a.verify_token(&empty).unwrap().grants,
            Some(GrantSet::none())
        );
    }

    #[test]
    fn a_malformed_grants_claim_is_refused_naming_the_problem() {
        let a = auth("one");
        let many = json!(vec!["packs:read"; MAX_GRANT_CLAIMS + 1]);
        for (claim, expected) in [
            (json!("packs:read"), "must be a list"),
            (json!(null), "must be a list"),
            (json!({"packs": "read"}), "must be a list"),
            (json!(["packs:read", 7]), "holds 7"),
            (
                json!(["packs:read", "packs:write"]),
                "unknown grant `packs:write`",
            ),
            (many, "at most 16"),
        ] {
            let token = a.issue_with_raw_grants("x", Duration::from_secs(60), Some(claim.clone()));
            let err = a.verify_token(&token).unwrap_err();
            assert!(matches!(err, AuthError::Invalid(_)), "{claim}: {err}");
            assert!(err.to_string().contains(expected), "{claim}: {err}");
        }
    }

    #[test]
    fn nbf_in_the_future_is_refused_and_in_the_past_accepted() {
        let a = auth("one");
        let later = a.issue_not_before("carol", unix_now() + 3600, Duration::from_secs(60));
        assert_eq!(
            a.verify_header(Some(&format!("Bearer {later}"))),
            Err(AuthError::NotYetValid)
        );
        let earlier = a.issue_not_before("carol", unix_now() - 10, Duration::from_secs(60));
        assert!(a.verify_header(Some(&format!("Bearer {earlier}"))).is_ok());
    }

    #[test]
    fn subjects_that_could_forge_log_lines_are_refused() {
        let a = auth("one");
        for bad in ["alice\nINFO forged", "\u{1b}[31mred", "tab\there", ""] {
            let t = a.issue(bad, Duration::from_secs(60));
            let err = a.verify_token(&t).unwrap_err();
            assert!(matches!(err, AuthError::Invalid(_)), "{bad:?}: {err}");
        }
        let long = "x".repeat(MAX_SUBJECT_BYTES + 1);
        let err = a
            .verify_token(&a.issue(&long, Duration::from_secs(60)))
            .unwrap_err();
        assert!(err.to_string().contains("at most 256"), "{err}");
        assert!(
            a.verify_token(&a.issue("ünïcode@example.com", Duration::from_secs(60)))
                .is_ok()
        );
        assert_eq!(escape_for_log("a\nb\u{1b}"), "a\\nb\\u{1b}");
    }

    #[test]
    fn generated_secret_is_private_and_stable() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let first = load_or_create_secret(None, dir.path()).unwrap();
        let second = load_or_create_secret(None, dir.path()).unwrap();
        assert_eq!(first, second);
        assert_eq!(first.expose().len(), 64);
        let mode = fs::metadata(dir.path().join(SECRET_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let configured = Secret::new("configured");
        assert_eq!(
            load_or_create_secret(Some(&configured), dir.path()).unwrap(),
            configured
        );
    }

    #[test]
    fn resolve_secret_names_its_source_and_only_serve_generates_one() {
        use crate::config::{Config, Overrides};
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let load = |env: &[(&str, &str)], file: Option<&Path>| {
            Config::load(
                file,
                env.iter().map(|(k, v)| (k.to_string(), v.to_string())),
                &Overrides {
                    data_dir: Some(data.clone()),
                    ..Default::default()
                },
            )
            .unwrap()
        };
        // Nothing anywhere: an error naming the fixes, and nothing created.
        let err = resolve_secret(&load(&[], None), MissingSecret::Fail).unwrap_err();
        assert!(matches!(err, SecretError::Missing { .. }), "{err}");
        assert!(!data.exists());
        // `serve` generates it; then every command reads the same file.
        let generated = resolve_secret(&load(&[], None), MissingSecret::Generate).unwrap();
        let read = resolve_secret(&load(&[], None), MissingSecret::Fail).unwrap();
        assert_eq!(generated.secret, read.secret);
        assert_eq!(read.source, SecretSource::DataDir(data.join(SECRET_FILE)));
        // jwt_secret wins, named by where it was set; the environment over the file.
        let file = dir.path().join("server.yaml");
        fs::write(&file, "jwt_secret: from-file\n").unwrap();
        let r = resolve_secret(&load(&[], Some(&file)), MissingSecret::Fail).unwrap();
        assert_eq!(r.secret.expose(), "from-file");
        assert_eq!(r.source, SecretSource::ConfigFile(file.clone()));
        assert!(r.source.to_string().contains("config file"));
        let env = [("ATTUNE_PACKS_JWT_SECRET", "from-env")];
        let r = resolve_secret(&load(&env, Some(&file)), MissingSecret::Fail).unwrap();
        assert_eq!(r.secret.expose(), "from-env");
        assert_eq!(
            r.source.to_string(),
            "environment variable ATTUNE_PACKS_JWT_SECRET"
        );
        assert!(!r.source.to_string().contains("from-env"));
    }
}
