//! Logins that already succeeded, so that a client reconnecting with the same
//! password skips Argon2 (tens of milliseconds of CPU a time, on purpose).
//!
//! An entry is an HMAC-SHA256, under a key drawn at random once per process,
//! of the user, the password and the PHC string it was verified against:
//! the cache holds no password, and neither a memory dump nor the users file
//! lets one test guesses against it. The PHC string in the tag means that
//! once a reload changes a user's hash, the old password stops matching, so
//! one cache can serve every [`Authority`](crate::Authority) the process
//! builds, and a SIGHUP does not send every client back through Argon2.

use std::collections::HashSet;
use std::sync::{Mutex, OnceLock, PoisonError};

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Entries kept before the cache starts over; 128 KiB of tags.
const CAPACITY: usize = 4096;

type Tag = [u8; 32];

pub(crate) struct SuccessCache {
    /// `None` if the system had no random bytes to give: then nothing is
    /// cached (a guessable key would make tags guessable).
    key: Option<[u8; 32]>,
    capacity: usize,
    /// Tags are HMACs under a secret key, so an ordinary (not constant-time)
    /// set lookup tells an attacker nothing they could compute themselves.
    tags: Mutex<HashSet<Tag>>,
}

impl SuccessCache {
    fn new(capacity: usize) -> SuccessCache {
        let mut key = [0; 32];
        SuccessCache {
            key: getrandom::fill(&mut key).ok().map(|()| key),
            capacity,
            tags: Mutex::new(HashSet::new()),
        }
    }

    /// The process's cache.
    pub(crate) fn global() -> &'static SuccessCache {
        static CACHE: OnceLock<SuccessCache> = OnceLock::new();
        CACHE.get_or_init(|| SuccessCache::new(CAPACITY))
    }

    fn tag(&self, user: &str, password: &str, phc: &str) -> Option<Tag> {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key?).ok()?;
        // Length-prefixed, so ("ab", "c") and ("a", "bc") differ.
        for part in [user, password, phc] {
            mac.update(&(part.len() as u64).to_le_bytes());
            mac.update(part.as_bytes());
        }
        Some(mac.finalize().into_bytes().into())
    }

    /// Whether this exact (user, password, hash) succeeded before.
    pub(crate) fn contains(&self, user: &str, password: &str, phc: &str) -> bool {
        self.tag(user, password, phc)
            .is_some_and(|tag| self.lock().contains(&tag))
    }

    /// Remembers a success. When full, starts over: the cost is one more
    /// Argon2 run per user who logs in again, and no bookkeeping per login.
    pub(crate) fn insert(&self, user: &str, password: &str, phc: &str) {
        if let Some(tag) = self.tag(user, password, phc) {
            let mut tags = self.lock();
            if tags.len() >= self.capacity {
                tags.clear();
            }
            tags.insert(tag);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashSet<Tag>> {
        // A set of tags cannot be left half-updated: ignore poisoning.
        self.tags.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hit_only_for_the_same_user_password_and_hash() {
        let cache = SuccessCache::new(8);
        cache.insert("alice", "pw", "$h1");
        assert!(cache.contains("alice", "pw", "$h1"));
        assert!(!cache.contains("alice", "pw", "$h2"));
        assert!(!cache.contains("alice", "pw2", "$h1"));
        assert!(!cache.contains("bob", "pw", "$h1"));
        assert!(!cache.contains("alicep", "w", "$h1"));
    }

    #[test]
    fn bounded() {
        let cache = SuccessCache::new(3);
        for i in 0..3 {
            cache.insert("u", &i.to_string(), "$h");
        }
        assert!(cache.contains("u", "0", "$h"));
        cache.insert("u", "3", "$h");
        assert!(cache.lock().len() <= 3);
        assert!(cache.contains("u", "3", "$h"));
        assert!(!cache.contains("u", "0", "$h"));
    }

    #[test]
    fn keyed_per_cache() {
        let (a, b) = (SuccessCache::new(1), SuccessCache::new(1));
        assert_ne!(a.tag("u", "p", "h"), b.tag("u", "p", "h"));
    }
}
