//! The two ways access control fails: the operator's files are wrong
//! ([`LoadError`], printed before the broker refuses to start or to reload),
//! or a client's credentials are ([`AuthError`], logged; the client only ever
//! reads `Authentication failed`).
//!
//! Neither holds a password, token or secret, nor the text of a line that
//! could be one (a `password: x` typo is a line that is neither section nor
//! key): errors end up in logs, and logs are read by more people than the
//! users file.

use std::path::{Path, PathBuf};

/// Why the users file or a JWT key file could not be loaded, worded for the
/// operator who has to fix it: the file, the line, the section and key, and
/// what would have been accepted.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file could not be read at all.
    #[error("{what} {}: cannot read it: {source}", .path.display())]
    Read {
        /// The setting that named the file (`users file`, `jwt_secret_file`, ...).
        what: &'static str,
        /// The file as given.
        path: PathBuf,
        /// What the operating system said.
        #[source]
        source: std::io::Error,
    },

    /// A line of the users file that is wrong.
    #[error("users file {}, line {line}{}: {problem}", .path.display(), place(.section, .key))]
    Users {
        /// The users file (or the label given to [`Authority::from_text`](crate::Authority::from_text)).
        path: PathBuf,
        /// 1-based.
        line: usize,
        /// The section the line is in, as written between the brackets.
        section: Option<String>,
        /// The key, in lower case.
        key: Option<String>,
        /// What is wrong and what would be accepted; never a password.
        problem: String,
    },

    /// A whole file that is wrong: a users file that is not UTF-8, a secret
    /// too short, a public key of the wrong kind.
    #[error("{what} {}: {problem}", .path.display())]
    File {
        /// The setting that named the file.
        what: &'static str,
        /// The file as given.
        path: PathBuf,
        /// What is wrong; never the file's contents.
        problem: String,
    },

    /// Both kinds of token key: which one signs is ambiguous, and accepting
    /// either would widen what a stolen key can forge.
    #[error(
        "jwt_secret_file and jwt_public_key_file are both set; set only one \
         (HS256 with a shared secret, or RS256/ES256 with a public key)"
    )]
    BothJwtKeys,
}

impl LoadError {
    /// A [`LoadError::Users`] at `line` of `path`.
    pub(crate) fn users(
        path: &Path,
        line: usize,
        section: Option<&str>,
        key: Option<&str>,
        problem: impl Into<String>,
    ) -> LoadError {
        LoadError::Users {
            path: path.to_owned(),
            line,
            section: section.map(str::to_owned),
            key: key.map(str::to_owned),
            problem: problem.into(),
        }
    }
}

/// `, [section] key`, `, [section]` or nothing.
fn place(section: &Option<String>, key: &Option<String>) -> String {
    match (section, key) {
        (Some(s), Some(k)) => format!(", [{s}] {k}"),
        (Some(s), None) => format!(", [{s}]"),
        (None, Some(k)) => format!(", {k}"),
        (None, None) => String::new(),
    }
}

/// Why a login or a token was refused. For the log only: telling the client
/// which part was wrong would tell it which users exist, so the broker always
/// answers `ERROR: Authentication failed`. The variants carry no data, so none
/// can leak a credential.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No `[user:NAME]` section for that name.
    #[error("unknown user")]
    UnknownUser,
    /// The password does not match the section's hash.
    #[error("wrong password")]
    WrongPassword,
    /// The user's section has no `password`: it may log in with a token only.
    #[error("no password set")]
    NoPasswordSet,
    /// The token's signature does not verify with the configured key.
    #[error("bad signature")]
    BadSignature,
    /// The token's `alg` is not the one configured (`none`, or HS256 against
    /// a public key: the classic forgeries).
    #[error("algorithm not allowed")]
    AlgorithmNotAllowed,
    /// `exp` is in the past.
    #[error("token expired")]
    TokenExpired,
    /// `nbf` is in the future.
    #[error("token not yet valid")]
    TokenNotYetValid,
    /// No `exp`, or not a number: a token must not be valid forever.
    #[error("missing exp")]
    MissingExp,
    /// No `sub`, an empty one, or one that is not a user name
    /// (`[A-Za-z0-9._@-]`, 1-64 characters; `%u` expands to it).
    #[error("missing or invalid sub")]
    BadSub,
    /// The token has an `aud` claim: it was issued for some audience, and
    /// CoreMQ has none configured to match it against.
    #[error("aud claim not accepted")]
    AudienceNotAccepted,
    /// Not three base64url parts of JSON, or claims of the wrong types.
    #[error("malformed token")]
    MalformedToken,
    /// Neither `jwt_secret_file` nor `jwt_public_key_file` is set.
    #[error("tokens not configured")]
    TokensNotConfigured,
    /// The `coremq` claim is not `{"publish": [...], "subscribe": [...],
    /// "history": [...], "monitor": bool}` of valid patterns.
    #[error("bad coremq claim")]
    BadClaim,
    /// The broker has as many password checks from the client's address
    /// waiting as it takes (it did not check this one).
    #[error("too many password checks waiting from this address")]
    TooManyWaiting,
}
