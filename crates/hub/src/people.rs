//! People (signed-in users) and their place in teams: password hashing,
//! email and password rules, team roles and what each may do, the failed
//! sign-in limiter and invitation codes. Pure logic; the store and the
//! `/auth/v1` routes do the I/O.

use argon2::password_hash::phc::PasswordHash;
use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use argon2::Argon2;
use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

/// GoTrue's default minimum password length.
pub const MIN_PASSWORD_LEN: usize = 6;

/// A team role, from most to least powerful.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Owner,
    Admin,
    Member,
    Viewer,
}

pub const ALL_ROLES: &[&str] = &["owner", "admin", "member", "viewer"];
/// Roles that may dispatch work (jobs, subagents) to their team's gateways.
pub const DISPATCH_ROLES: &[&str] = &["owner", "admin", "member"];
/// Roles that manage the team: pairing codes, gateways, full control,
/// resources, members and invitations.
pub const MANAGE_ROLES: &[&str] = &["owner", "admin"];

impl Role {
    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "owner" => Some(Role::Owner),
            "admin" => Some(Role::Admin),
            "member" => Some(Role::Member),
            "viewer" => Some(Role::Viewer),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Owner => "owner",
            Role::Admin => "admin",
            Role::Member => "member",
            Role::Viewer => "viewer",
        }
    }

    /// Whether someone holding `self` may hand out `granted` (invite or
    /// promote): managers only, and only owners make owners.
    pub fn may_grant(self, granted: Role) -> bool {
        match self {
            Role::Owner => true,
            Role::Admin => granted != Role::Owner,
            Role::Member | Role::Viewer => false,
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("cannot hash the password: {0}")]
pub struct HashError(String);

/// An Argon2id PHC string (default parameters, random salt).
pub fn hash_password(password: &str) -> Result<String, HashError> {
    Argon2::default()
        .hash_password(password.as_bytes())
        .map(|h| h.to_string())
        .map_err(|e| HashError(e.to_string()))
}

/// Whether `password` matches a stored PHC string. A malformed stored hash
/// never matches.
pub fn verify_password(password: &str, phc: &str) -> bool {
    PasswordHash::new(phc)
        .map(|h| {
            Argon2::default()
                .verify_password(password.as_bytes(), &h)
                .is_ok()
        })
        .unwrap_or(false)
}

/// A hash to verify against when the email is unknown, so that an unknown
/// email costs the same time as a wrong password.
pub fn decoy_hash() -> &'static str {
    static DECOY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DECOY.get_or_init(|| hash_password("decoy password never used").unwrap_or_default())
}

/// Lower-cased, trimmed email, or why it is not one.
pub fn normalize_email(email: &str) -> Result<String, &'static str> {
    let e = email.trim().to_lowercase();
    let valid = e.len() <= 255
        && e.split_once('@').is_some_and(|(local, domain)| {
            !local.is_empty() && !domain.is_empty() && !domain.contains('@')
        })
        && !e.chars().any(char::is_whitespace);
    if valid {
        Ok(e)
    } else {
        Err("Unable to validate email address: invalid format")
    }
}

/// GoTrue's weak-password rule (length only, as its default).
pub fn check_password(password: &str) -> Result<(), String> {
    if password.chars().count() < MIN_PASSWORD_LEN {
        Err(format!(
            "Password should be at least {MIN_PASSWORD_LEN} characters."
        ))
    } else {
        Ok(())
    }
}

/// A fresh invitation code: 128 random bits, URL-safe. Only its hash is
/// stored.
pub fn new_invitation_code() -> String {
    use base64::Engine;
    use rand::RngCore;
    let mut bytes = [0u8; 16];
    rand::thread_rng().fill_bytes(&mut bytes);
    format!(
        "inv_{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    )
}

/// Counts failed sign-ins per key (an account, a client address) in a
/// sliding window; a key at its limit is refused until the oldest failure
/// leaves the window.
pub struct FailureLimiter {
    limit: usize,
    window: Duration,
    failures: HashMap<String, VecDeque<Instant>>,
}

impl FailureLimiter {
    pub fn new(limit: usize, window: Duration) -> FailureLimiter {
        FailureLimiter {
            limit,
            window,
            failures: HashMap::new(),
        }
    }

    fn prune(&mut self, key: &str, now: Instant) -> usize {
        let window = self.window;
        match self.failures.get_mut(key) {
            Some(q) => {
                while q.front().is_some_and(|t| now.duration_since(*t) >= window) {
                    q.pop_front();
                }
                let n = q.len();
                if n == 0 {
                    self.failures.remove(key);
                }
                n
            }
            None => 0,
        }
    }

    /// Tracked keys past which a failure first sweeps out expired ones.
    const SWEEP_AT: usize = 10_000;

    /// How many keys are tracked (for tests and metrics).
    pub fn tracked(&self) -> usize {
        self.failures.len()
    }

    /// Whether any of `keys` has used up its failures.
    pub fn blocked(&mut self, keys: &[&str], now: Instant) -> bool {
        keys.iter().any(|k| self.prune(k, now) >= self.limit)
    }

    pub fn record_failure(&mut self, keys: &[&str], now: Instant) {
        // Failures for ever-new emails must not grow the map without
        // bound: past a size, forget every key whose window has passed.
        if self.failures.len() >= Self::SWEEP_AT {
            let stale: Vec<String> = self.failures.keys().cloned().collect();
            for k in stale {
                self.prune(&k, now);
            }
        }
        for k in keys {
            self.prune(k, now);
            self.failures
                .entry(k.to_string())
                .or_default()
                .push_back(now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_verify_only_against_their_own_hash() {
        let h = hash_password("correct horse").unwrap();
        assert!(h.starts_with("$argon2id$"));
        assert!(verify_password("correct horse", &h));
        assert!(!verify_password("correct horsf", &h));
        assert!(!verify_password("correct horse", "not a phc string"));
        assert!(!verify_password("x", decoy_hash()));
    }

    #[test]
    fn emails_are_normalized_and_checked() {
        assert_eq!(
            normalize_email(" Ada@Example.COM ").unwrap(),
            "ada@example.com"
        );
        for bad in ["", "ada", "@x", "ada@", "a b@x.y", "a@b@c"] {
            assert!(normalize_email(bad).is_err(), "{bad:?}");
        }
        assert!(check_password("12345").is_err());
        assert!(check_password("123456").is_ok());
    }

    #[test]
    fn only_managers_grant_and_only_owners_make_owners() {
        assert!(Role::Owner.may_grant(Role::Owner));
        assert!(Role::Admin.may_grant(Role::Member));
        assert!(!Role::Admin.may_grant(Role::Owner));
        assert!(!Role::Member.may_grant(Role::Viewer));
        for r in ALL_ROLES {
            assert_eq!(Role::parse(r).unwrap().as_str(), *r);
        }
        assert_eq!(Role::parse("root"), None);
    }

    #[test]
    fn the_limiter_blocks_at_the_limit_and_forgets_after_the_window() {
        let mut l = FailureLimiter::new(3, Duration::from_secs(60));
        let t0 = Instant::now();
        for i in 0..3 {
            assert!(!l.blocked(&["a"], t0), "attempt {i}");
            l.record_failure(&["a", "ip"], t0);
        }
        assert!(l.blocked(&["a"], t0));
        assert!(l.blocked(&["b", "ip"], t0), "the address is shared");
        assert!(!l.blocked(&["b"], t0));
        assert!(!l.blocked(&["a", "ip"], t0 + Duration::from_secs(60)));
    }

    #[test]
    fn the_limiter_forgets_expired_keys_when_it_grows() {
        let mut l = FailureLimiter::new(5, Duration::from_secs(60));
        let t0 = Instant::now();
        for i in 0..FailureLimiter::SWEEP_AT {
            l.record_failure(&[&format!("email:{i}")], t0);
        }
        assert_eq!(l.tracked(), FailureLimiter::SWEEP_AT);
        l.record_failure(&["email:new"], t0 + Duration::from_secs(61));
        assert_eq!(l.tracked(), 1, "expired keys were swept");
    }

    #[test]
    fn invitation_codes_are_unique_and_url_safe() {
        let a = new_invitation_code();
        assert_ne!(a, new_invitation_code());
        assert!(
            a.len() > 20
                && a.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "_-".contains(c))
        );
    }
}
