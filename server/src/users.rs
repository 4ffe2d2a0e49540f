//! Users who log in with email and password (the REST gateway's `/api/v1/auth/login`).
//!
//! Passwords are stored as argon2id hashes. An unknown email and a wrong password get
//! the same answer after the same work (a dummy hash is verified for unknown emails),
//! and repeated failures for one email are slowed down.

use std::{
    collections::HashMap,
    sync::{LazyLock, Mutex},
    time::{Duration, Instant},
};

use argon2::{
    Argon2,
    password_hash::{PasswordHasher, PasswordVerifier, phc::PasswordHash},
};

use crate::{
    auth::Authenticator,
    store::{Db, StoreError},
};

/// Lifetime of tokens issued by login.
pub const TOKEN_TTL: Duration = Duration::from_secs(3600);
/// Failures for one email before each further attempt is delayed.
const FREE_FAILURES: u32 = 3;
/// Failures are forgotten after this long without another one.
const FAILURE_WINDOW: Duration = Duration::from_secs(15 * 60);
const MAX_DELAY: Duration = Duration::from_secs(8);

#[derive(Debug, thiserror::Error)]
pub enum UserError {
    #[error("invalid email or password")]
    InvalidCredentials,
    #[error("a user with email '{0}' already exists")]
    Exists(String),
    #[error("{0}")]
    Invalid(String),
    #[error("cannot hash the password: {0}")]
    Hash(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

pub fn hash_password(password: &str) -> Result<String, UserError> {
    Argon2::default()
        .hash_password(password.as_bytes())
        .map(|h| h.to_string())
        .map_err(|e| UserError::Hash(e.to_string()))
}

fn verify_password(phc: &str, password: &str) -> bool {
    PasswordHash::new(phc).is_ok_and(|hash| {
        Argon2::default()
            .verify_password(password.as_bytes(), &hash)
            .is_ok()
    })
}

/// Verified instead of a real hash for unknown emails, so both cost the same.
static DUMMY_HASH: LazyLock<String> =
    LazyLock::new(|| hash_password("attune-packs timing equaliser").unwrap_or_default());

/// Adds a user. The email is normalised to lowercase.
pub async fn add_user(db: &Db, email: &str, password: &str) -> Result<(), UserError> {
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
    if db.create_user(&email, &hash).await? {
        Ok(())
    } else {
        Err(UserError::Exists(email))
    }
}

fn normalise(email: &str) -> Result<String, UserError> {
    let email = email.trim().to_lowercase();
    if email.is_empty() || !email.contains('@') {
        return Err(UserError::Invalid(format!(
            "'{email}' is not an email address"
        )));
    }
    Ok(email)
}

/// Recent login failures per email, to slow down guessing.
#[derive(Default)]
pub struct LoginThrottle {
    failures: Mutex<HashMap<String, (u32, Instant)>>,
}

impl LoginThrottle {
    fn delay(&self, email: &str) -> Duration {
        let mut map = self.failures.lock().expect("throttle lock");
        map.retain(|_, (_, last)| last.elapsed() < FAILURE_WINDOW);
        match map.get(email) {
            Some((n, _)) if *n >= FREE_FAILURES => {
                let exponent = (*n - FREE_FAILURES).min(6);
                (Duration::from_millis(250) * 2u32.pow(exponent)).min(MAX_DELAY)
            }
            _ => Duration::ZERO,
        }
    }

    fn failed(&self, email: &str) {
        let mut map = self.failures.lock().expect("throttle lock");
        let entry = map.entry(email.to_string()).or_insert((0, Instant::now()));
        entry.0 += 1;
        entry.1 = Instant::now();
    }

    fn succeeded(&self, email: &str) {
        self.failures.lock().expect("throttle lock").remove(email);
    }
}

/// Checks the credentials and issues a bearer token the gRPC side accepts too.
pub async fn login(
    db: &Db,
    auth: &Authenticator,
    throttle: &LoginThrottle,
    email: &str,
    password: &str,
) -> Result<(String, Duration), UserError> {
    let email = email.trim().to_lowercase();
    let delay = throttle.delay(&email);
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let stored = db.password_hash(&email).await?;
    let password = password.to_string();
    let valid = tokio::task::spawn_blocking(move || {
        let hash = stored.as_deref().unwrap_or(DUMMY_HASH.as_str());
        verify_password(hash, &password) && stored.is_some()
    })
    .await
    .unwrap_or(false);
    if !valid {
        throttle.failed(&email);
        return Err(UserError::InvalidCredentials);
    }
    throttle.succeeded(&email);
    Ok((auth.issue(&email, TOKEN_TTL), TOKEN_TTL))
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn repeated_failures_are_slowed_down() {
        let t = LoginThrottle::default();
        for _ in 0..FREE_FAILURES {
            assert_eq!(t.delay("a@x"), Duration::ZERO);
            t.failed("a@x");
        }
        let first = t.delay("a@x");
        assert!(first > Duration::ZERO);
        t.failed("a@x");
        assert!(t.delay("a@x") > first);
        assert_eq!(t.delay("b@x"), Duration::ZERO, "per email");
        t.succeeded("a@x");
        assert_eq!(t.delay("a@x"), Duration::ZERO);
    }
}
