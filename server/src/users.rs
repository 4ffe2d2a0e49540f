//! Users who log in with email and password (the REST gateway's `/api/v1/auth/login`).
//! Each user has grants (`users.grants`); login mints tokens carrying exactly those.
//!
//! Passwords are stored as argon2id hashes. An unknown email and a wrong password get
//! the same answer after the same work (a dummy hash is verified for unknown emails).
//!
//! Login is the one door reachable without credentials, so everything it spends is
//! bounded before it is spent:
//! - input sizes are checked before anything else (email ≤ 254 bytes, password ≤
//!   `login.max_password_bytes`);
//! - an attempt is admitted by the [`Throttle`] (per email and per client address)
//!   *before* any database or hashing work, and admission reserves the attempt under
//!   one lock, so parallel guesses are treated exactly like sequential ones: the
//!   surplus is refused with a retry time, not hashed;
//! - admitted attempts verify in the [`HashPool`]: at most `login.hash_concurrency`
//!   hashes run, each in a memory block the pool owns and reuses, so argon2 memory is
//!   `hash_concurrency × m_cost` whatever the load; a queue longer than
//!   `login.max_waiting` is refused at once;
//! - the throttle table holds at most `login.max_tracked` entries, keyed by a salted
//!   hash of the normalised email (or address), never the email itself.

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{
        Arc, LazyLock, Mutex,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use argon2::{
    Algorithm, Argon2, Block, Params, Version,
    password_hash::{
        PasswordHasher,
        phc::{Output, PasswordHash},
    },
};
use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;

use crate::{
    auth::Authenticator,
    config::LoginSection,
    grants::GrantSet,
    store::{Db, StoreError},
};

/// Lifetime of tokens issued by login.
pub const TOKEN_TTL: Duration = Duration::from_secs(3600);
/// The longest address SMTP can carry (RFC 5321 path limit); nothing longer is an email.
pub const MAX_EMAIL_BYTES: usize = 254;

#[derive(Debug, thiserror::Error)]
pub enum UserError {
    #[error("invalid email or password")]
    InvalidCredentials,
    #[error("a user with email '{0}' already exists")]
    Exists(String),
    #[error("there is no user with email '{0}'")]
    NoSuchUser(String),
    #[error("{0}")]
    Invalid(String),
    #[error("the email is {len} bytes long; at most {MAX_EMAIL_BYTES} are accepted")]
    EmailTooLong { len: usize },
    #[error(
        "the password is {len} bytes long; at most {max} are accepted (login.max_password_bytes)"
    )]
    PasswordTooLong { len: usize, max: usize },
    #[error("too many failed logins; retry in {} s", secs_rounded_up(*retry_after))]
    Throttled { retry_after: Duration },
    #[error("too many logins are waiting for verification; retry in a moment")]
    Busy,
    #[error("cannot hash the password: {0}")]
    Hash(String),
    #[error(
        "the stored grants of this user are not a list of grant names ({reason}); fix users.grants"
    )]
    StoredGrants { reason: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Whole seconds, rounded up, so that a wait is never announced as 0 s (`Retry-After: 0`
/// would invite an immediate retry that is refused again).
pub fn secs_rounded_up(wait: Duration) -> u64 {
    wait.as_secs() + u64::from(wait.subsec_nanos() > 0)
}

pub fn hash_password(password: &str) -> Result<String, UserError> {
    Argon2::default()
        .hash_password(password.as_bytes())
        .map(|h| h.to_string())
        .map_err(|e| UserError::Hash(e.to_string()))
}

/// Verifies `password` against the PHC string `phc`, computing the hash in `memory`
/// (grown to the hash's `m_cost` if needed, never shrunk), so the argon2 working set
/// is the caller's, not a fresh allocation per call.
fn verify_password_in(phc: &str, password: &str, memory: &mut Vec<Block>) -> bool {
    let Ok(hash) = PasswordHash::new(phc) else {
        return false;
    };
    let (Some(salt), Some(expected)) = (&hash.salt, &hash.hash) else {
        return false;
    };
    let Ok(algorithm) = Algorithm::try_from(hash.algorithm.as_str()) else {
        return false;
    };
    let Ok(version) = hash
        .version
        .map_or(Ok(Version::default()), Version::try_from)
    else {
        return false;
    };
    let Ok(params) = Params::try_from(&hash) else {
        return false;
    };
    let blocks = params.block_count();
    if memory.len() < blocks {
        memory.resize(blocks, Block::default());
    }
    let mut out = vec![0u8; expected.len()];
    Argon2::new(algorithm, version, params)
        .hash_password_into_with_memory(
            password.as_bytes(),
            salt.as_ref(),
            &mut out,
            &mut memory[..blocks],
        )
        .is_ok()
        && Output::new(&out).is_ok_and(|computed| &computed == expected)
}

#[cfg(test)]
fn verify_password(phc: &str, password: &str) -> bool {
    verify_password_in(phc, password, &mut Vec::new())
}

/// Verified instead of a real hash for unknown emails, so both cost the same.
static DUMMY_HASH: LazyLock<String> =
    LazyLock::new(|| hash_password("attune-packs timing equaliser").unwrap_or_default());

/// Adds a user with every grant. The email is normalised to lowercase.
pub async fn add_user(db: &Db, email: &str, password: &str) -> Result<(), UserError> {
    add_user_with_grants(db, email, password, &GrantSet::all()).await
}

/// Adds a user whose logins get tokens carrying `grants`. The email is normalised to
/// lowercase.
pub async fn add_user_with_grants(
    db: &Db,
    email: &str,
    password: &str,
    grants: &GrantSet,
) -> Result<(), UserError> {
    let email = normalise(email)?;
    if password.chars().count() < 8 {
        return Err(UserError::Invalid(
            "the password must have at least 8 characters".into(),
        ));
    }
    let password = password.to_string();
    let hash = tokio::task::spawn_blocking(move || hash_password(&password))
        .await
        .map_err(|e| UserError::Hash(e.to_string()))??;
    if db
        .create_user_with_grants(&email, &hash, &stored_grants(grants))
        .await?
    {
        Ok(())
    } else {
        Err(UserError::Exists(email))
    }
}

/// Replaces what `email`'s logins may do; tokens already minted keep their grants
/// until they expire (at most [`TOKEN_TTL`]).
pub async fn set_grants(db: &Db, email: &str, grants: &GrantSet) -> Result<(), UserError> {
    let email = normalise(email)?;
    if db.set_user_grants(&email, &stored_grants(grants)).await? {
        Ok(())
    } else {
        Err(UserError::NoSuchUser(email))
    }
}

/// `users.grants` as stored: a JSON array of grant names.
fn stored_grants(grants: &GrantSet) -> String {
    serde_json::to_string(&grants.names()).expect("a list of strings serialises")
}

fn normalise(email: &str) -> Result<String, UserError> {
    if email.len() > MAX_EMAIL_BYTES {
        return Err(UserError::EmailTooLong { len: email.len() });
    }
    let email = email.trim().to_lowercase();
    if email.is_empty() || !email.contains('@') {
        return Err(UserError::Invalid(format!(
            "'{}' is not an email address",
            email.escape_debug()
        )));
    }
    Ok(email)
}

/// Counts of the pool's work, for operators and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HashStats {
    /// Hashes computed since start.
    pub verified: u64,
    /// The most hashes that ever ran at the same time.
    pub peak_concurrent: usize,
    /// Argon2 memory the pool holds, in bytes.
    pub memory_bytes: usize,
}

/// At most `concurrency` argon2 verifications at a time, each in a memory block the
/// pool keeps for the next one.
pub struct HashPool {
    permits: Arc<Semaphore>,
    max_waiting: usize,
    waiting: AtomicUsize,
    memory: Arc<Mutex<Vec<Vec<Block>>>>,
    running: Arc<AtomicUsize>,
    peak: Arc<AtomicUsize>,
    verified: Arc<AtomicU64>,
}

/// Leaves the queue when the waiting login does, however it ends.
struct Waiting<'a>(&'a AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl HashPool {
    pub fn new(concurrency: usize, max_waiting: usize) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(concurrency.max(1))),
            max_waiting,
            waiting: AtomicUsize::new(0),
            memory: Arc::default(),
            running: Arc::default(),
            peak: Arc::default(),
            verified: Arc::default(),
        }
    }

    /// Verifies in the pool. The slot stays taken until the hash finishes, even when
    /// the caller gives up first, so the bound holds against disconnecting clients.
    /// `None` verifies the dummy hash (an unknown email) at the same cost.
    pub async fn verify(&self, phc: Option<String>, password: String) -> Result<bool, UserError> {
        if self.waiting.fetch_add(1, Ordering::SeqCst) >= self.max_waiting {
            self.waiting.fetch_sub(1, Ordering::SeqCst);
            return Err(UserError::Busy);
        }
        let queued = Waiting(&self.waiting);
        let permit = Arc::clone(&self.permits)
            .acquire_owned()
            .await
            .map_err(|_| UserError::Busy)?;
        drop(queued);
        let memory = Arc::clone(&self.memory);
        let running = Arc::clone(&self.running);
        let peak = Arc::clone(&self.peak);
        let verified = Arc::clone(&self.verified);
        tokio::task::spawn_blocking(move || {
            let now = running.fetch_add(1, Ordering::SeqCst) + 1;
            peak.fetch_max(now, Ordering::SeqCst);
            let mut scratch = memory
                .lock()
                .expect("hash memory lock")
                .pop()
                .unwrap_or_default();
            let phc = phc.as_deref().unwrap_or(DUMMY_HASH.as_str());
            let valid = verify_password_in(phc, &password, &mut scratch);
            memory.lock().expect("hash memory lock").push(scratch);
            verified.fetch_add(1, Ordering::SeqCst);
            running.fetch_sub(1, Ordering::SeqCst);
            drop(permit);
            valid
        })
        .await
        .map_err(|e| UserError::Hash(e.to_string()))
    }

    pub fn stats(&self) -> HashStats {
        let memory_bytes = self
            .memory
            .lock()
            .expect("hash memory lock")
            .iter()
            .map(|m| m.capacity() * std::mem::size_of::<Block>())
            .sum();
        HashStats {
            verified: self.verified.load(Ordering::SeqCst),
            peak_concurrent: self.peak.load(Ordering::SeqCst),
            memory_bytes,
        }
    }
}

/// What the throttle table is keyed by: a salted SHA-256 of the normalised email or
/// the client's address, truncated. The table never holds an email.
type ThrottleKey = [u8; 16];

#[derive(Debug, Clone, Copy)]
struct ThrottleEntry {
    /// Attempts admitted (and not since succeeded) in the current window.
    attempts: u32,
    last_seen: Instant,
    /// No attempt is admitted before this.
    not_before: Instant,
}

/// Failure throttling per email and per client address, in one bounded table.
pub struct Throttle {
    salt: [u8; 16],
    free_per_email: u32,
    free_per_address: u32,
    base_delay: Duration,
    max_delay: Duration,
    window: Duration,
    max_tracked: usize,
    entries: Mutex<HashMap<ThrottleKey, ThrottleEntry>>,
}

/// The keys of one attempt, and how many free failures each allows.
struct AttemptKeys {
    keys: Vec<(ThrottleKey, u32)>,
}

impl Throttle {
    pub fn new(settings: &LoginSection) -> Self {
        let mut salt = [0u8; 16];
        // Without randomness the salt is fixed; keys are still not emails.
        let _ = getrandom::fill(&mut salt);
        Self {
            salt,
            free_per_email: settings.free_failures_per_email,
            free_per_address: settings.free_failures_per_address,
            base_delay: settings.base_delay,
            max_delay: settings.max_delay,
            window: settings.failure_window,
            max_tracked: settings.max_tracked.max(1),
            entries: Mutex::default(),
        }
    }

    fn key(&self, kind: &[u8], value: &[u8]) -> ThrottleKey {
        let digest = Sha256::new()
            .chain_update(self.salt)
            .chain_update(kind)
            .chain_update(value)
            .finalize();
        let mut key = [0u8; 16];
        key.copy_from_slice(&digest[..16]);
        key
    }

    fn keys(&self, email: &str, address: Option<IpAddr>) -> AttemptKeys {
        let mut keys = vec![(self.key(b"email\0", email.as_bytes()), self.free_per_email)];
        if let Some(address) = address {
            keys.push((
                self.key(b"address\0", address_prefix(address).as_bytes()),
                self.free_per_address,
            ));
        }
        AttemptKeys { keys }
    }

    /// The wait imposed after `attempts` admitted attempts with `free` free ones.
    fn delay(&self, attempts: u32, free: u32) -> Duration {
        if attempts < free.max(1) {
            return Duration::ZERO;
        }
        let doublings = (attempts - free.max(1)).min(20);
        self.base_delay
            .saturating_mul(1u32 << doublings)
            .min(self.max_delay)
    }

    /// Admits the attempt, reserving it for every key at once, or says how long to wait.
    /// Nothing is reserved when the attempt is refused.
    fn admit(&self, keys: &AttemptKeys) -> Result<(), Duration> {
        let mut entries = self.entries.lock().expect("throttle lock");
        // Read under the lock: an earlier reading could lie before a `not_before` that
        // a concurrent admission just set to its own (later) now.
        let now = Instant::now();
        let mut wait = Duration::ZERO;
        for (key, _) in &keys.keys {
            if let Some(entry) = entries.get(key)
                && now.duration_since(entry.last_seen) < self.window
                && entry.not_before > now
            {
                wait = wait.max(entry.not_before - now);
            }
        }
        if !wait.is_zero() {
            return Err(wait);
        }
        for (key, free) in &keys.keys {
            if !entries.contains_key(key) && entries.len() >= self.max_tracked {
                self.make_room(&mut entries, now);
            }
            let entry = entries.entry(*key).or_insert(ThrottleEntry {
                attempts: 0,
                last_seen: now,
                not_before: now,
            });
            if now.duration_since(entry.last_seen) >= self.window {
                entry.attempts = 0;
            }
            entry.attempts = entry.attempts.saturating_add(1);
            entry.last_seen = now;
            entry.not_before = now + self.delay(entry.attempts, *free);
        }
        Ok(())
    }

    /// Forgets expired entries, or else the least recently seen one.
    fn make_room(&self, entries: &mut HashMap<ThrottleKey, ThrottleEntry>, now: Instant) {
        entries.retain(|_, e| now.duration_since(e.last_seen) < self.window);
        if entries.len() >= self.max_tracked
            && let Some(oldest) = entries
                .iter()
                .min_by_key(|(_, e)| e.last_seen)
                .map(|(k, _)| *k)
        {
            entries.remove(&oldest);
        }
    }

    /// A successful login clears its email and gives its address the attempt back.
    fn succeeded(&self, keys: &AttemptKeys) {
        let mut entries = self.entries.lock().expect("throttle lock");
        let (email, _) = keys.keys[0];
        entries.remove(&email);
        for (key, free) in &keys.keys[1..] {
            if let Some(entry) = entries.get_mut(key) {
                entry.attempts = entry.attempts.saturating_sub(1);
                entry.not_before = entry.last_seen + self.delay(entry.attempts, *free);
                if entry.attempts == 0 {
                    entries.remove(key);
                }
            }
        }
    }

    /// Entries currently tracked.
    pub fn tracked(&self) -> usize {
        self.entries.lock().expect("throttle lock").len()
    }
}

/// IPv6 callers usually own a whole /64, so that is what counts as one address.
fn address_prefix(address: IpAddr) -> String {
    match address {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None => {
                let s = v6.segments();
                format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
            }
        },
    }
}

/// Everything a login needs besides the database and the token issuer.
pub struct LoginGate {
    pub throttle: Throttle,
    pub hashes: HashPool,
    max_password_bytes: usize,
}

impl LoginGate {
    pub fn new(settings: &LoginSection) -> Self {
        Self {
            throttle: Throttle::new(settings),
            hashes: HashPool::new(settings.hash_concurrency, settings.max_waiting),
            max_password_bytes: settings.max_password_bytes,
        }
    }

    /// Checks the credentials and issues a bearer token the gRPC side accepts too.
    /// `address` is the client's, when known.
    pub async fn login(
        &self,
        db: &Db,
        auth: &Authenticator,
        email: &str,
        password: &str,
        address: Option<IpAddr>,
    ) -> Result<(String, Duration), UserError> {
        if email.len() > MAX_EMAIL_BYTES {
            return Err(UserError::EmailTooLong { len: email.len() });
        }
        if password.len() > self.max_password_bytes {
            return Err(UserError::PasswordTooLong {
                len: password.len(),
                max: self.max_password_bytes,
            });
        }
        let email = email.trim().to_lowercase();
        let keys = self.throttle.keys(&email, address);
        self.throttle
            .admit(&keys)
            .map_err(|retry_after| UserError::Throttled { retry_after })?;
        let (stored, grants) = db.login_record(&email).await?.unzip();
        let known = stored.is_some();
        let valid = self.hashes.verify(stored, password.to_string()).await? && known;
        if !valid {
            return Err(UserError::InvalidCredentials);
        }
        self.throttle.succeeded(&keys);
        let grants = parse_stored_grants(grants.as_deref().unwrap_or_default())?;
        Ok((
            auth.issue_with_grants(&email, TOKEN_TTL, &grants),
            TOKEN_TTL,
        ))
    }
}

/// `users.grants` as stored: a JSON array of grant names.
fn parse_stored_grants(text: &str) -> Result<GrantSet, UserError> {
    let names: Vec<String> = serde_json::from_str(text).map_err(|e| UserError::StoredGrants {
        reason: e.to_string(),
    })?;
    GrantSet::parse(&names).map_err(|e| UserError::StoredGrants {
        reason: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_grants_are_read_strictly() {
        assert_eq!(
            parse_stored_grants(r#"["packs:read","packs:delete"]"#).unwrap(),
            GrantSet::parse(&["packs:read", "packs:delete"]).unwrap()
        );
        assert_eq!(parse_stored_grants("[]").unwrap(), GrantSet::none());
        for bad in ["", "packs:read", r#"["packs:root"]"#, "{}"] {
            let err = parse_stored_grants(bad).unwrap_err();
            assert!(err.to_string().contains("users.grants"), "{bad}: {err}");
        }
    }

    fn settings() -> LoginSection {
        LoginSection {
            base_delay: Duration::from_secs(10),
            ..LoginSection::default()
        }
    }

    #[test]
    fn hashes_verify_and_differ() {
        let a = hash_password("correct horse").unwrap();
        let b = hash_password("correct horse").unwrap();
        assert_ne!(a, b, "salted");
        assert!(a.starts_with("$argon2id$"));
        assert!(verify_password(&a, "correct horse"));
        assert!(!verify_password(&a, "wrong"));
        assert!(!verify_password("garbage", "x"));
    }

    #[test]
    fn pool_memory_is_reused_across_verifications() {
        let a = hash_password("correct horse").unwrap();
        let mut memory = Vec::new();
        assert!(verify_password_in(&a, "correct horse", &mut memory));
        let held = memory.capacity();
        assert_eq!(
            memory.len(),
            Params::DEFAULT_M_COST as usize,
            "one block per KiB"
        );
        assert!(!verify_password_in(&a, "wrong", &mut memory));
        assert_eq!(memory.capacity(), held);
    }

    #[test]
    fn attempts_beyond_the_free_ones_must_wait_whoever_sends_them() {
        let t = Throttle::new(&settings());
        let keys = t.keys("a@x", None);
        for _ in 0..settings().free_failures_per_email - 1 {
            assert_eq!(t.admit(&keys), Ok(()));
        }
        // The last free attempt is admitted and arms the wait for the next one.
        assert_eq!(t.admit(&keys), Ok(()));
        let wait = t.admit(&keys).unwrap_err();
        assert!(wait > Duration::from_secs(9), "{wait:?}");
        // Refused attempts reserve nothing: the wait does not grow.
        assert!(t.admit(&keys).unwrap_err() <= wait);
        assert_eq!(t.admit(&t.keys("b@x", None)), Ok(()), "per email");
        t.succeeded(&keys);
        assert_eq!(t.admit(&keys), Ok(()));
    }

    #[test]
    fn one_address_is_throttled_across_emails() {
        let t = Throttle::new(&LoginSection {
            free_failures_per_address: 5,
            ..settings()
        });
        let address: IpAddr = "192.0.2.7".parse().unwrap();
        for i in 0..5 {
            assert_eq!(t.admit(&t.keys(&format!("u{i}@x"), Some(address))), Ok(()));
        }
        assert!(t.admit(&t.keys("u9@x", Some(address))).is_err());
        let other: IpAddr = "192.0.2.8".parse().unwrap();
        assert_eq!(t.admit(&t.keys("u9@x", Some(other))), Ok(()));
    }

    #[test]
    fn the_table_stays_bounded_and_never_holds_an_email() {
        let t = Throttle::new(&LoginSection {
            max_tracked: 50,
            ..settings()
        });
        for i in 0..1_000 {
            let _ = t.admit(&t.keys(&format!("user{i}@example.com"), None));
        }
        assert_eq!(t.tracked(), 50);
        let entries = t.entries.lock().unwrap();
        assert!(entries.keys().all(|k| k.len() == 16));
    }

    #[test]
    fn ipv6_callers_count_per_64() {
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        assert_eq!(address_prefix(a), address_prefix(b));
        let mapped: IpAddr = "::ffff:192.0.2.1".parse().unwrap();
        assert_eq!(address_prefix(mapped), "192.0.2.1");
    }
}
