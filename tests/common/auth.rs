//! Access-control fixtures (PROTOCOL.md §8): users files with Argon2id hashes
//! cheap enough for tests, token secrets and tokens, and logging in.

use super::{unique_dir, BrokerOpts, Client};
use argon2::password_hash::{PasswordHasher, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use jsonwebtoken::{EncodingKey, Header};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

/// The HS256 secret the fixtures' brokers trust.
pub const SECRET: &str = "coremq-test-secret-0123456789-abcdefghij";

/// An Argon2id PHC string for `password`, with small costs (the broker reads
/// the costs from the string; production hashes come from `coremq-cli passwd`).
pub fn hash(password: &str) -> String {
    let params = Params::new(1024, 1, 1, None).expect("params");
    let salt = SaltString::encode_b64(super::uniq("salt").as_bytes()).expect("salt");
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
        .hash_password(password.as_bytes(), &salt)
        .expect("hash")
        .to_string()
}

/// Seconds since the epoch.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

/// An HS256 token for `sub` signed with `secret`, expiring `ttl` seconds
/// from now (negative: already expired), with an optional `coremq` claim.
pub fn token_with(secret: &str, sub: &str, ttl: i64, claim: Option<Value>) -> String {
    let exp = unix_now() as i64 + ttl;
    let mut claims = json!({"sub": sub, "exp": exp, "iat": unix_now()});
    if let Some(c) = claim {
        claims["coremq"] = c;
    }
    jsonwebtoken::encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()).expect("secret"),
    )
    .expect("token")
}

/// [`token_with`] the fixtures' [`SECRET`].
pub fn token(sub: &str, ttl: i64) -> String {
    token_with(SECRET, sub, ttl, None)
}

/// A users file and a token secret on disk.
pub struct Fixture {
    pub users: PathBuf,
    pub secret: PathBuf,
}

impl Fixture {
    /// Writes `users` (the users file's text) and the token secret.
    pub fn new(users: &str) -> Fixture {
        let dir = unique_dir("users");
        let f = Fixture {
            users: dir.join("users"),
            secret: dir.join("jwt.secret"),
        };
        std::fs::write(&f.secret, format!("{SECRET}\n")).expect("write secret");
        f.rewrite(users);
        f
    }

    /// Replaces the users file (for reloads).
    pub fn rewrite(&self, users: &str) {
        let tmp = self.users.with_extension("tmp");
        std::fs::write(&tmp, users).expect("write users file");
        std::fs::rename(&tmp, &self.users).expect("rename users file");
    }

    /// Broker options with this users file and secret, and `[CoreWS]` on.
    pub fn opts(&self, shards: usize) -> BrokerOpts {
        BrokerOpts::new(shards)
            .ws()
            .set("users_file", &self.users.display().to_string())
            .set("jwt_secret_file", &self.secret.display().to_string())
    }
}

/// The reply to `coremq_auth` on `c`.
pub fn auth_reply(c: &mut Client, auth: Value) -> Value {
    c.command(&json!({ "coremq_auth": auth }));
    c.recv_reply().json
}

/// Logs `c` in as `user` and checks the OK.
pub fn login(c: &mut Client, user: &str, password: &str) {
    let r = auth_reply(c, json!({"user": user, "password": password}));
    assert_eq!(
        r,
        json!({"response": "OK: Authenticated", "user": user}),
        "login as {user}"
    );
}

/// Checks that `c` is refused with `ERROR: Authentication failed` and closed.
pub fn assert_auth_fails_and_closes(c: &mut Client, auth: Value) {
    let r = auth_reply(c, auth);
    assert_eq!(
        r,
        json!({"response": "ERROR: Authentication failed"}),
        "failed login reply"
    );
    let (rest, eof) = c.read_until_eof(std::time::Duration::from_secs(5));
    assert!(
        eof,
        "connection not closed after a failed login; then {rest:?}"
    );
}
