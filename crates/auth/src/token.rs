//! JWTs accepted in place of a password (PROTOCOL.md §8): HS256 with a shared
//! secret, or RS256/ES256 with the issuer's public key.
//!
//! Exactly one algorithm is accepted, the one the configured key is for, and
//! the token's own `alg` is checked against it before anything else: that
//! refuses `alg: none` and the HS256 token "signed" with a public key that
//! everybody has. `exp` is required (no token lives forever), `sub` names
//! the user, and there is no leeway: the broker ends a connection when its
//! token expires, and a leeway here would only make that disagree.

use std::fmt;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::crypto::CryptoProvider;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, DecodingKeyKind, Validation};
use serde::Deserialize;

use crate::error::{AuthError, LoadError};
use crate::perms::{check_pattern, expand};
use crate::users::valid_user_name;

/// Shortest HS256 secret accepted: 256 bits, the size of the MAC itself.
const MIN_SECRET: usize = 32;

/// Shortest RSA modulus accepted (2048 bits): shorter keys are factorable
/// by a determined attacker and no longer allowed for signatures.
const MIN_RSA_BYTES: usize = 256;

/// The key tokens are verified with, and so the one algorithm accepted.
#[derive(Clone)]
pub struct JwtKey {
    alg: Algorithm,
    key: DecodingKey,
}

impl fmt::Debug for JwtKey {
    /// The algorithm only: the secret must not reach a log.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "JwtKey({})", self.algorithm())
    }
}

impl JwtKey {
    /// HS256 with the contents of `jwt_secret_file`.
    pub fn from_secret_file(path: &Path) -> Result<JwtKey, LoadError> {
        JwtKey::hs256(&read("jwt_secret_file", path)?, path)
    }

    /// RS256 or ES256, whichever `jwt_public_key_file` holds a key for.
    pub fn from_public_key_file(path: &Path) -> Result<JwtKey, LoadError> {
        JwtKey::from_public_key_pem(&read("jwt_public_key_file", path)?, path)
    }

    /// HS256 with `secret` less trailing whitespace (the newline an editor
    /// or `echo` leaves is not part of the secret); `label` names it in errors.
    pub fn hs256(secret: &[u8], label: &Path) -> Result<JwtKey, LoadError> {
        backend("jwt_secret_file", label)?;
        let end = secret
            .iter()
            .rposition(|b| !b.is_ascii_whitespace())
            .map_or(0, |i| i + 1);
        let secret = &secret[..end];
        let too_short = || LoadError::File {
            what: "jwt_secret_file",
            path: label.to_owned(),
            problem: format!(
                "the secret is shorter than {MIN_SECRET} bytes; \
                 make one with: head -c 48 /dev/urandom | base64"
            ),
        };
        if secret.len() < MIN_SECRET {
            return Err(too_short());
        }
        let key = DecodingKey::from_secret(secret).map_err(|_| too_short())?;
        Ok(JwtKey {
            alg: Algorithm::HS256,
            key,
        })
    }

    /// RS256 for an RSA public key, ES256 for an EC P-256 one, in PEM;
    /// `label` names it in errors.
    pub fn from_public_key_pem(pem: &[u8], label: &Path) -> Result<JwtKey, LoadError> {
        let backend = backend("jwt_public_key_file", label)?;
        let problem = if pem.windows(11).any(|w| w == b"PRIVATE KEY") {
            "holds a private key; give the public one \
             (openssl pkey -in PRIVATE.pem -pubout)"
        } else if let Ok(key) = DecodingKey::from_rsa_pem(pem) {
            match rsa_modulus_len(backend, &key) {
                Some(len) if len >= MIN_RSA_BYTES => {
                    return Ok(JwtKey {
                        alg: Algorithm::RS256,
                        key,
                    })
                }
                Some(_) => "holds an RSA key shorter than 2048 bits; RS256 needs 2048 or more",
                None => "holds an RSA key that does not parse",
            }
        } else {
            match DecodingKey::from_ec_pem(pem) {
                Ok(key) if verifier_accepts(Algorithm::ES256, &key) => {
                    return Ok(JwtKey {
                        alg: Algorithm::ES256,
                        key,
                    })
                }
                Ok(_) => "holds an EC key that is not on curve P-256; ES256 needs P-256",
                Err(_) => {
                    "not an RSA or EC P-256 public key in PEM \
                     (-----BEGIN PUBLIC KEY-----); tokens must be RS256 or ES256"
                }
            }
        };
        Err(LoadError::File {
            what: "jwt_public_key_file",
            path: label.to_owned(),
            problem: problem.to_owned(),
        })
    }

    /// `HS256`, `RS256` or `ES256`: the `alg` a token must carry.
    pub fn algorithm(&self) -> &'static str {
        match self.alg {
            Algorithm::HS256 => "HS256",
            Algorithm::RS256 => "RS256",
            _ => "ES256",
        }
    }
}

fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, LoadError> {
    std::fs::read(path).map_err(|source| LoadError::Read {
        what,
        path: path.to_owned(),
        source,
    })
}

/// jsonwebtoken's crypto backend. It has one only when exactly one of its
/// `rust_crypto` and `aws_lc_rs` features is on (the workspace picks
/// `rust_crypto`); without one every verification would panic, so a key is
/// refused at load instead.
fn backend(what: &'static str, label: &Path) -> Result<&'static CryptoProvider, LoadError> {
    CryptoProvider::try_get_default().ok_or_else(|| LoadError::File {
        what,
        path: label.to_owned(),
        problem: "this build has no JWT crypto backend (jsonwebtoken needs exactly one of \
                  its rust_crypto and aws_lc_rs features)"
            .to_owned(),
    })
}

/// The RSA modulus's length in bytes, parsed by the backend the way each
/// token's verification parses it, so a broken key fails at load rather than
/// on every token; `None` if it does not parse.
fn rsa_modulus_len(backend: &CryptoProvider, key: &DecodingKey) -> Option<usize> {
    let DecodingKeyKind::SecretOrDer(der) = key.kind() else {
        return None;
    };
    let (n, _e) = (backend.key_utils.rsa_pub_components_from_public_key)(der).ok()?;
    Some(n.len())
}

/// Whether `alg`'s verifier can be built from `key`: the EC verifier parses
/// the point there, so a P-384 key (or no valid point at all) fails at load
/// rather than on every token.
fn verifier_accepts(alg: Algorithm, key: &DecodingKey) -> bool {
    jsonwebtoken::crypto::verify("AAAA", b"probe", key, alg).is_ok()
}

/// The token's `coremq` claim, its patterns checked and `%u` expanded with
/// the token's `sub`. Each list present replaces the same list of the user's
/// section for this connection; `deny` and `direct` are not in it, because a
/// token issuer must not be able to lift what the users file forbids.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Claims {
    /// Replaces `publish`.
    pub publish: Option<Vec<String>>,
    /// Replaces `subscribe`.
    pub subscribe: Option<Vec<String>>,
    /// Replaces `history`.
    pub history: Option<Vec<String>>,
    /// Replaces `kv_read`.
    pub kv_read: Option<Vec<String>>,
    /// Replaces `kv_write`.
    pub kv_write: Option<Vec<String>>,
    /// Replaces `monitor`.
    pub monitor: Option<bool>,
}

/// The claim as sent; unknown fields are refused so a typo like
/// `"subscibe"` fails the token instead of silently granting nothing.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawClaims {
    publish: Option<Vec<String>>,
    subscribe: Option<Vec<String>>,
    history: Option<Vec<String>>,
    kv_read: Option<Vec<String>>,
    kv_write: Option<Vec<String>>,
    monitor: Option<bool>,
}

#[derive(Deserialize)]
struct Header {
    alg: String,
}

/// What the payload must hold; loose types so that the checks below, not
/// JSON decoding, decide which error a bad claim gets.
#[derive(Deserialize)]
struct Payload {
    #[serde(default)]
    sub: serde_json::Value,
    #[serde(default)]
    exp: serde_json::Value,
    #[serde(default)]
    coremq: serde_json::Value,
}

/// A token that verified.
pub(crate) struct Verified {
    pub user: String,
    /// Always present, empty without a `coremq` claim: it marks the identity
    /// as a token's, which needs no section in the users file.
    pub claims: Claims,
    pub expires: SystemTime,
}

/// Checks `token` against `key` and the rules in the module comment.
pub(crate) fn verify(key: &JwtKey, token: &str) -> Result<Verified, AuthError> {
    let header = token.split('.').next().unwrap_or_default();
    let header: Header = URL_SAFE_NO_PAD
        .decode(header)
        .ok()
        .and_then(|json| serde_json::from_slice(&json).ok())
        .ok_or(AuthError::MalformedToken)?;
    if header.alg != key.algorithm() {
        return Err(AuthError::AlgorithmNotAllowed);
    }
    let mut validation = Validation::new(key.alg);
    validation.leeway = 0;
    validation.validate_nbf = true;
    validation.set_required_spec_claims(&["exp", "sub"]);
    // No audience is configured, so the default (`validate_aud`) refuses a
    // token that names one: it was meant for some other service.
    let payload = jsonwebtoken::decode::<Payload>(token, &key.key, &validation)
        .map_err(|e| map_error(e.kind()))?
        .claims;
    let user = match payload.sub.as_str() {
        Some(sub) if valid_user_name(sub) => sub.to_owned(),
        _ => return Err(AuthError::BadSub),
    };
    let expires = payload
        .exp
        .as_u64()
        .or_else(|| payload.exp.as_f64().map(|f| f as u64))
        .and_then(|secs| UNIX_EPOCH.checked_add(Duration::from_secs(secs)))
        .ok_or(AuthError::MissingExp)?;
    let claims = match payload.coremq {
        serde_json::Value::Null => Claims::default(),
        claim => claims(claim, &user).ok_or(AuthError::BadClaim)?,
    };
    Ok(Verified {
        user,
        claims,
        expires,
    })
}

fn claims(claim: serde_json::Value, user: &str) -> Option<Claims> {
    let raw: RawClaims = serde_json::from_value(claim).ok()?;
    let list = |l: Option<Vec<String>>| -> Option<Option<Vec<String>>> {
        match l {
            None => Some(None),
            Some(l) => l
                .iter()
                .map(|p| check_pattern(p).ok().map(|()| expand(p, user)))
                .collect::<Option<Vec<_>>>()
                .map(Some),
        }
    };
    Some(Claims {
        publish: list(raw.publish)?,
        subscribe: list(raw.subscribe)?,
        history: list(raw.history)?,
        kv_read: list(raw.kv_read)?,
        kv_write: list(raw.kv_write)?,
        monitor: raw.monitor,
    })
}

fn map_error(kind: &ErrorKind) -> AuthError {
    match kind {
        ErrorKind::InvalidSignature => AuthError::BadSignature,
        ErrorKind::InvalidAlgorithm => AuthError::AlgorithmNotAllowed,
        ErrorKind::ExpiredSignature => AuthError::TokenExpired,
        ErrorKind::ImmatureSignature => AuthError::TokenNotYetValid,
        ErrorKind::MissingRequiredClaim(c) | ErrorKind::InvalidClaimFormat(c) if c == "exp" => {
            AuthError::MissingExp
        }
        ErrorKind::MissingRequiredClaim(c) if c == "sub" => AuthError::BadSub,
        ErrorKind::InvalidAudience => AuthError::AudienceNotAccepted,
        _ => AuthError::MalformedToken,
    }
}

#[cfg(test)]
mod tests;
