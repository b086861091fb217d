//! `token`: an HS256 JWT that the server accepts in place of a password
//! (docs/protocol.md §8), signed with the server's `jwt_secret_file`.
//!
//! The secret is never printed, not even in part: errors say how long it is,
//! and where it was read from.

use crate::exit::{Failure, USAGE};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Map, Value};
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

/// HS256 with a shorter key is open to guessing the key offline from any
/// token (RFC 7518 §3.2 asks for at least the hash size).
pub const MIN_SECRET: usize = 32;

/// Prints a token for `user`, valid for `ttl` seconds from now.
pub fn run(
    user: &str,
    secret_file: &Path,
    ttl: u64,
    claims: Option<&Map<String, Value>>,
) -> Result<(), Failure> {
    let secret = read_secret(secret_file)?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_err(|_| Failure::new(USAGE, "the system clock is before 1970"))?
        .as_secs();
    let exp = now
        .checked_add(ttl)
        .ok_or_else(|| Failure::new(USAGE, "--ttl is too long"))?;
    let mut payload = Map::new();
    payload.insert("sub".into(), user.into());
    payload.insert("iat".into(), now.into());
    payload.insert("exp".into(), exp.into());
    if let Some(claims) = claims {
        payload.insert("coremq".into(), Value::Object(claims.clone()));
    }
    let key = EncodingKey::from_secret(&secret)
        .map_err(|e| Failure::new(USAGE, format!("cannot use the secret: {e}")))?;
    let token = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &payload, &key)
        .map_err(|e| Failure::new(USAGE, format!("cannot sign the token: {e}")))?;
    println!("{token}");
    Ok(())
}

/// The file's bytes without trailing whitespace (the newline an editor or
/// `echo` adds is not part of the secret; the server trims the same way).
fn read_secret(path: &Path) -> Result<Vec<u8>, Failure> {
    let mut secret = std::fs::read(path).map_err(|e| {
        Failure::new(
            USAGE,
            format!("cannot read the secret file {}: {e}", path.display()),
        )
    })?;
    while secret.last().is_some_and(u8::is_ascii_whitespace) {
        secret.pop();
    }
    if secret.len() < MIN_SECRET {
        return Err(Failure::new(
            USAGE,
            format!(
                "the secret in {} is {} bytes long; HS256 needs at least {MIN_SECRET} \
                 (make one with: head -c 48 /dev/urandom | base64)",
                path.display(),
                secret.len()
            ),
        ));
    }
    Ok(secret)
}

/// Parses --ttl: whole seconds, or a number with `s`, `m`, `h` or `d`.
pub fn parse_ttl(text: &str) -> Result<u64, String> {
    let bad = || format!("{text:?} is not a duration like 90s, 30m, 1h, 2d or 3600");
    let (number, unit) = match text.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => (&text[..i], c),
        _ => (text, 's'),
    };
    let scale = match unit {
        's' => 1,
        'm' => 60,
        'h' => 3600,
        'd' => 86_400,
        _ => return Err(bad()),
    };
    match number.parse::<u64>() {
        Ok(n) if n > 0 => n.checked_mul(scale).ok_or_else(bad),
        _ => Err(bad()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttl_units() {
        assert_eq!(parse_ttl("1h"), Ok(3600));
        assert_eq!(parse_ttl("30m"), Ok(1800));
        assert_eq!(parse_ttl("90s"), Ok(90));
        assert_eq!(parse_ttl("2d"), Ok(172_800));
        assert_eq!(parse_ttl("3600"), Ok(3600));
        for bad in [
            "",
            "0",
            "0s",
            "h",
            "1w",
            "-5",
            "1.5h",
            " 1h",
            "99999999999999999999d",
        ] {
            assert!(parse_ttl(bad).is_err(), "{bad:?} was accepted");
        }
    }
}
