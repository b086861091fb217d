//! CoreMQ's access control (PROTOCOL.md §8): who a client is, and what it
//! may do. Pure policy: it reads the files it is given and nothing else, and
//! knows nothing of connections or glommio, so the broker decides when to
//! ask and what to tell the client.
//!
//! The parts:
//!
//! - `users` reads the users file, strict INI: `[user:NAME]` sections with
//!   an Argon2id `password` and permission lists, and an optional
//!   `[anonymous]`. Every mistake is an error naming file, line, section and
//!   key.
//! - [`Perms`] (`perms`) is one connection's rights with `%u` expanded;
//!   [`Perms::allows`] runs on every publish, so it does not allocate.
//! - `password` verifies Argon2id hashes, and checks unknown users against a
//!   stand-in of the same cost so timing does not reveal who exists;
//!   `cache` remembers successful logins (as keyed MACs, never passwords) so
//!   reconnecting clients skip Argon2.
//! - [`JwtKey`] and [`Claims`] (`token`): JWTs in place of passwords, HS256
//!   or RS256/ES256, exactly one algorithm, `exp` required.
//! - [`Authority`] (`authority`) ties them together: built once per (re)load
//!   from the files, shared by all shards, answering logins and
//!   [`Authority::perms`].
//! - [`LoadError`] and [`AuthError`] (`error`): the operator's mistakes,
//!   worded to be fixed, and a client's, for the log only. Neither ever
//!   holds a password, token or secret.

#![warn(missing_docs)]

mod authority;
mod cache;
mod error;
mod password;
mod perms;
#[cfg(test)]
mod test_support;
mod token;
mod users;

pub use authority::{Authority, Identity};
pub use error::{AuthError, LoadError};
pub use perms::{Action, Perms};
pub use token::{Claims, JwtKey};
