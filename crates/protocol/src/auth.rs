//! The value of `coremq_auth` (PROTOCOL.md §8): a user and password, or a
//! token. Both are secrets, so nothing here ever prints them.

use std::fmt;

use serde::Deserialize;

use crate::error::BodyError;

/// What `coremq_auth` takes.
const AUTH: &str = "{\"user\": \"...\", \"password\": \"...\"} or {\"token\": \"...\"}";

/// A password or a token: its `Debug` never shows it, so a request can be
/// logged or asserted on without leaking it.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// The secret itself, for the one place that checks it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// A `coremq_auth` request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthRequest {
    /// `{"user": …, "password": …}`.
    Password {
        /// The user's name.
        user: String,
        /// The password, checked against the users file's Argon2id hash.
        password: Secret,
    },
    /// `{"token": …}`, optionally with the `"user"` it must name.
    Token {
        /// A user the token's `sub` must match, when the client names one.
        user: Option<String>,
        /// The JWT.
        token: Secret,
    },
}

/// Parses the value of `coremq_auth`.
pub(crate) fn auth(value: &str) -> Result<AuthRequest, BodyError> {
    /// The object form; unknown fields are refused so a misspelt `pasword`
    /// is reported instead of read as "no password".
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Object {
        #[serde(default)]
        user: Option<String>,
        #[serde(default)]
        password: Option<Secret>,
        #[serde(default)]
        token: Option<Secret>,
    }
    let bad = || BodyError::BadCommand {
        command: "coremq_auth",
        expected: AUTH,
    };
    // Objects only (serde would read the struct from an array too).
    if !value.starts_with('{') {
        return Err(bad());
    }
    let o: Object = serde_json::from_str(value).map_err(|_| bad())?;
    match (o.user, o.password, o.token) {
        (user, None, Some(token)) if !token.0.is_empty() => Ok(AuthRequest::Token { user, token }),
        (Some(user), Some(password), None) if !user.is_empty() => {
            Ok(AuthRequest::Password { user, password })
        }
        _ => Err(bad()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn password_and_token_forms() {
        assert_eq!(
            auth(r#"{"user": "alice", "password": "pw"}"#),
            Ok(AuthRequest::Password {
                user: "alice".into(),
                password: Secret("pw".into())
            })
        );
        assert_eq!(
            auth(r#"{"token": "t.t.t"}"#),
            Ok(AuthRequest::Token {
                user: None,
                token: Secret("t.t.t".into())
            })
        );
        assert!(matches!(
            auth(r#"{"user": "bob", "token": "t"}"#),
            Ok(AuthRequest::Token { user: Some(u), .. }) if u == "bob"
        ));
    }

    #[test]
    fn bad_shapes_are_refused() {
        for bad in [
            r#""alice""#,
            "{}",
            r#"{"user": "alice"}"#,
            r#"{"password": "pw"}"#,
            r#"{"user": "", "password": "pw"}"#,
            r#"{"token": ""}"#,
            r#"{"user": "a", "password": "pw", "token": "t"}"#,
            r#"{"user": "a", "pasword": "pw"}"#,
            r#"{"user": 1, "password": "pw"}"#,
            r#"["alice", "pw"]"#,
            r#"["alice", "pw", null]"#,
        ] {
            assert!(
                matches!(
                    auth(bad),
                    Err(BodyError::BadCommand {
                        command: "coremq_auth",
                        ..
                    })
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn debug_never_shows_the_secret() {
        let r = auth(r#"{"user": "alice", "password": "hunter2"}"#).unwrap();
        let t = auth(r#"{"token": "eyJsecret"}"#).unwrap();
        for shown in [format!("{r:?}"), format!("{t:?}")] {
            assert!(
                !shown.contains("hunter2") && !shown.contains("eyJsecret"),
                "{shown}"
            );
            assert!(shown.contains("<redacted>"), "{shown}");
        }
    }
}
