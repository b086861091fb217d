//! Who an HTTP request or a WebSocket handshake comes from (PROTOCOL.md §8):
//! HTTP Basic (user and password), `Authorization: Bearer <token>`, or — for
//! `/ws`, since browsers cannot set headers on a WebSocket — `?token=` on the
//! URL. Without `users_file` none of this runs.
//!
//! Passwords are checked like `coremq_auth`'s: from the authority's cache,
//! else with Argon2id on the blocking pool, in turn with other addresses'
//! logins (logins.rs), so a page reload does not hold the shard.

use super::http::Head;
use crate::shard::Shard;
use coremq_auth::{AuthError, Authority, Identity};
use std::sync::Arc;

/// Why a request was not let in.
pub(crate) enum Denied {
    /// No credentials, or wrong ones: 401, and the browser asks.
    Unauthorized,
    /// A user without the right: 403.
    Forbidden,
}

/// Why credentials were not accepted (for the log; the client gets a 401).
#[derive(Debug)]
pub(crate) enum Failure {
    /// The authority refused them.
    Auth(AuthError),
    /// An `Authorization` header that is neither Basic nor Bearer, or Basic
    /// that is not base64 of `user:password`.
    BadHeader,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Auth(e) => e.fmt(f),
            Failure::BadHeader => f.write_str("malformed Authorization header"),
        }
    }
}

/// The credentials a request carries, if any.
enum Credentials {
    Basic { user: String, password: String },
    Token(String),
}

/// The identity a request proves, `Ok(None)` when it carries no
/// credentials; `Err` when it carries wrong ones.
pub(crate) async fn identify(
    authority: &Arc<Authority>,
    head: &Head,
    source: crate::logins::Source,
) -> Result<Option<Identity>, Failure> {
    let Some(credentials) = credentials(head, head.path == "/ws")? else {
        return Ok(None);
    };
    match credentials {
        Credentials::Token(token) => authority
            .verify_token(&token)
            .map(Some)
            .map_err(Failure::Auth),
        Credentials::Basic { user, password } => {
            if let Some(who) = authority.password_cached(&user, &password) {
                return Ok(Some(who));
            }
            let authority = authority.clone();
            // A request's connection stays while it waits (nothing to skip).
            let check = move || authority.verify_password(&user, &password);
            match crate::logins::check(source, || true, check).await {
                crate::logins::Checked::Done(result) => result.map(Some).map_err(Failure::Auth),
                _ => Err(Failure::Auth(AuthError::TooManyWaiting)),
            }
        }
    }
}

/// Lets a request for status, metrics or the dashboard in if it comes from
/// a user with `monitor` (or `[anonymous]` has it): the user of its
/// credentials, else of its TLS client certificate (`cert`), else anonymous.
pub(crate) async fn may_monitor(
    shard: &Shard,
    head: &Head,
    cert: Option<&Identity>,
    source: crate::logins::Source,
) -> Result<(), Denied> {
    let Some(rules) = shard.rules() else {
        return Ok(());
    };
    let authority = rules.authority();
    let perms = match identify(&authority, head, source).await {
        Ok(Some(who)) => authority.perms(&who),
        Ok(None) => match cert {
            Some(who) => authority.perms(who),
            None => authority.anonymous(),
        },
        Err(cause) => {
            tracing::warn!(%cause, path = %head.path, "HTTP authentication failed");
            crate::stats::Counters::add(&shard.counters().auth_failures, 1);
            return Err(Denied::Unauthorized);
        }
    };
    if perms.monitor() {
        Ok(())
    } else if head.header("authorization").is_none() && cert.is_none() {
        Err(Denied::Unauthorized)
    } else {
        Err(Denied::Forbidden)
    }
}

/// Reads the `Authorization` header, else (on `/ws`, where browsers cannot
/// set headers) `?token=`.
fn credentials(head: &Head, query: bool) -> Result<Option<Credentials>, Failure> {
    if let Some(value) = head.header("authorization") {
        let (scheme, rest) = value.split_once(' ').unwrap_or((value, ""));
        let rest = rest.trim();
        if scheme.eq_ignore_ascii_case("bearer") {
            return Ok(Some(Credentials::Token(rest.to_owned())));
        }
        if scheme.eq_ignore_ascii_case("basic") {
            let decoded = data_encoding::BASE64
                .decode(rest.as_bytes())
                .ok()
                .and_then(|b| String::from_utf8(b).ok())
                .ok_or(Failure::BadHeader)?;
            let (user, password) = decoded.split_once(':').ok_or(Failure::BadHeader)?;
            return Ok(Some(Credentials::Basic {
                user: user.to_owned(),
                password: password.to_owned(),
            }));
        }
        return Err(Failure::BadHeader);
    }
    if !query {
        return Ok(None);
    }
    Ok(query_param(&head.query, "token").map(Credentials::Token))
}

/// The value of `name` in a query string, percent-decoded.
fn query_param(query: &str, name: &str) -> Option<String> {
    let raw = query
        .split('&')
        .find_map(|pair| pair.strip_prefix(name)?.strip_prefix('='))?;
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::query_param;

    #[test]
    fn token_from_the_query() {
        assert_eq!(
            query_param("token=a.b.c", "token").as_deref(),
            Some("a.b.c")
        );
        assert_eq!(
            query_param("x=1&token=a%2Eb&y=2", "token").as_deref(),
            Some("a.b")
        );
        assert_eq!(query_param("tokens=1", "token"), None);
        assert_eq!(query_param("", "token"), None);
        assert_eq!(query_param("token=%4", "token"), None);
    }
}
