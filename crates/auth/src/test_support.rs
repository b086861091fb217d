//! Helpers shared by the unit tests: cheap hashes, the checked-in test keys,
//! signed tokens.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use argon2::password_hash::{PasswordHasher, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use jsonwebtoken::{EncodingKey, Header};

/// The label errors name.
pub(crate) const PATH: &str = "/etc/coremq/users";

pub(crate) fn path() -> &'static Path {
    Path::new(PATH)
}

/// Test-only keys made once with openssl (tests/keys/README.md).
pub(crate) const RSA_PRIVATE: &str = include_str!("../tests/keys/rsa_private.pem");
pub(crate) const RSA_PUBLIC: &str = include_str!("../tests/keys/rsa_public.pem");
pub(crate) const RSA1024_PUBLIC: &str = include_str!("../tests/keys/rsa1024_public.pem");
pub(crate) const EC_PRIVATE: &str = include_str!("../tests/keys/ec_private.pem");
pub(crate) const EC_PUBLIC: &str = include_str!("../tests/keys/ec_public.pem");
pub(crate) const EC384_PUBLIC: &str = include_str!("../tests/keys/ec384_public.pem");
pub(crate) const ED25519_PUBLIC: &str = include_str!("../tests/keys/ed25519_public.pem");

/// An HS256 secret long enough.
pub(crate) const SECRET: &[u8] = b"test-secret-0123456789abcdef-0123456789";

/// An Argon2id hash at the lowest cost, with a salt never used before in
/// this process, so that tests sharing the process-wide login cache never
/// share an entry.
pub(crate) fn hash(password: &str) -> String {
    static SALTS: AtomicU64 = AtomicU64::new(0);
    let n = SALTS.fetch_add(1, Ordering::Relaxed);
    hash_with(Algorithm::Argon2id, password, n)
}

pub(crate) fn hash_with(alg: Algorithm, password: &str, salt: u64) -> String {
    let argon = Argon2::new(alg, Version::V0x13, Params::new(8, 1, 1, None).unwrap());
    let salt = SaltString::encode_b64(format!("salt-{salt:08}").as_bytes()).unwrap();
    argon
        .hash_password(password.as_bytes(), &salt)
        .unwrap()
        .to_string()
}

pub(crate) fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// `claims` signed with `key` under `alg`.
pub(crate) fn sign(
    alg: jsonwebtoken::Algorithm,
    key: &EncodingKey,
    claims: &serde_json::Value,
) -> String {
    jsonwebtoken::encode(&Header::new(alg), claims, key).unwrap()
}

/// HS256 with [`SECRET`].
pub(crate) fn hs256(claims: &serde_json::Value) -> String {
    sign(
        jsonwebtoken::Algorithm::HS256,
        &EncodingKey::from_secret(SECRET).unwrap(),
        claims,
    )
}
