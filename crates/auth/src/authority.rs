//! The [`Authority`]: one loaded users file and token key, answering who a
//! client is and what it may do. The broker builds one at start-up and a new
//! one on every SIGHUP, and shares it between shards in an `Arc`; so nothing
//! here changes after loading except the process-wide login cache.

use std::collections::HashMap;
use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::time::SystemTime;

use crate::cache::SuccessCache;
use crate::error::{AuthError, LoadError};
use crate::password;
use crate::perms::{expand, Patterns, Perms};
use crate::token::{self, Claims, JwtKey};
use crate::users::{self, Section};

/// Who a connection authenticated as.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    /// The user's name (a token's `sub`).
    pub user: Arc<str>,
    /// `Some` for a token (empty lists without a `coremq` claim), `None` for
    /// a password login; see [`Authority::perms`].
    pub claims: Option<Arc<Claims>>,
    /// When the token expires and the broker must end the connection;
    /// `None` for a password login.
    pub expires: Option<SystemTime>,
}

/// One `[user:NAME]` section, ready to use.
struct User {
    /// Shared with every [`Identity`] of this user.
    name: Arc<str>,
    /// The Argon2id PHC string, if the user may log in with a password.
    password: Option<String>,
    /// The section's rights with `%u` expanded, built once here rather than
    /// on every login.
    perms: Arc<Perms>,
}

/// A loaded users file and token key; `Send + Sync`.
pub struct Authority {
    users: HashMap<Arc<str>, User>,
    /// `[anonymous]`, or no rights.
    anonymous: Arc<Perms>,
    /// Shared by everyone who gets no rights, so that is no allocation.
    nothing: Arc<Perms>,
    /// What unknown users are checked against (see `password::dummy_like`).
    dummy_hash: String,
    /// `None`: tokens are refused.
    jwt: Option<JwtKey>,
}

impl fmt::Debug for Authority {
    /// Counts only: the hashes stay out of logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Authority")
            .field("users", &self.users.len())
            .field("anonymous", &!self.anonymous.grants_nothing())
            .field("jwt", &self.jwt)
            .finish()
    }
}

impl Authority {
    /// Reads `users_file` and at most one of the token key files
    /// (`jwt_secret_file` for HS256, `jwt_public_key_file` for RS256/ES256).
    pub fn load(
        users_file: &Path,
        jwt_secret_file: Option<&Path>,
        jwt_public_key_file: Option<&Path>,
    ) -> Result<Authority, LoadError> {
        let jwt = match (jwt_secret_file, jwt_public_key_file) {
            (Some(_), Some(_)) => return Err(LoadError::BothJwtKeys),
            (Some(secret), None) => Some(JwtKey::from_secret_file(secret)?),
            (None, Some(public)) => Some(JwtKey::from_public_key_file(public)?),
            (None, None) => None,
        };
        let bytes = std::fs::read(users_file).map_err(|source| LoadError::Read {
            what: "users file",
            path: users_file.to_owned(),
            source,
        })?;
        let text = String::from_utf8(bytes).map_err(|_| LoadError::File {
            what: "users file",
            path: users_file.to_owned(),
            problem: "not UTF-8 text".to_owned(),
        })?;
        Authority::from_text(&text, users_file, jwt)
    }

    /// Builds from the text of a users file; `label` names it in errors.
    pub fn from_text(
        users_text: &str,
        label: &Path,
        jwt: Option<JwtKey>,
    ) -> Result<Authority, LoadError> {
        let file = users::parse(users_text, label)?;
        let first_hash = file.users.iter().find_map(|(_, s)| s.password.as_deref());
        let dummy_hash = password::dummy_like(first_hash);
        let users = file
            .users
            .into_iter()
            .map(|(name, section)| {
                let name: Arc<str> = name.into();
                let user = User {
                    perms: Arc::new(perms_of(&section, Some(&name))),
                    password: section.password,
                    name: name.clone(),
                };
                (name, user)
            })
            .collect();
        Ok(Authority {
            users,
            anonymous: Arc::new(
                file.anonymous
                    .map_or_else(Perms::nothing, |s| perms_of(&s, None)),
            ),
            nothing: Arc::new(Perms::nothing()),
            dummy_hash,
            jwt,
        })
    }

    /// The rights of a connection that has not authenticated.
    pub fn anonymous(&self) -> Arc<Perms> {
        self.anonymous.clone()
    }

    /// The rights of `who`: its user's section, with a token's claim lists
    /// in place of the section's. A token's user needs no section (then it
    /// has the claim's lists, `direct`, and no `deny`); a password user
    /// whose section is gone (a reload removed it) has no rights.
    pub fn perms(&self, who: &Identity) -> Arc<Perms> {
        let user = self.users.get(&*who.user);
        let Some(claims) = &who.claims else {
            return user.map_or_else(|| self.nothing.clone(), |u| u.perms.clone());
        };
        let mut perms = user.map_or_else(
            || Perms {
                direct: true,
                ..Perms::nothing()
            },
            |u| Perms::clone(&u.perms),
        );
        let replace = |list: &mut Patterns, claim: &Option<Vec<String>>| {
            if let Some(claim) = claim {
                *list = Patterns::new(claim.clone());
            }
        };
        replace(&mut perms.publish, &claims.publish);
        replace(&mut perms.subscribe, &claims.subscribe);
        replace(&mut perms.history, &claims.history);
        replace(&mut perms.kv_read, &claims.kv_read);
        replace(&mut perms.kv_write, &claims.kv_write);
        if let Some(monitor) = claims.monitor {
            perms.monitor = monitor;
        }
        Arc::new(perms)
    }

    /// The fast path of a password login: `Some` if this exact user and
    /// password were verified before against the user's current hash (by
    /// this or an earlier `Authority` of the process), without Argon2.
    pub fn password_cached(&self, user: &str, password: &str) -> Option<Identity> {
        let u = self.users.get(user)?;
        SuccessCache::global()
            .contains(user, password, u.password.as_deref()?)
            .then(|| password_identity(u))
    }

    /// Checks a password with Argon2id: slow on purpose, so the broker calls
    /// it off its shards. A success is remembered for
    /// [`password_cached`](Self::password_cached). An unknown user, or one
    /// without a password, costs one Argon2 run all the same, so that the
    /// time taken does not tell which users exist.
    pub fn verify_password(&self, user: &str, password: &str) -> Result<Identity, AuthError> {
        let (u, phc) = match self.users.get(user) {
            Some(
                u @ User {
                    password: Some(phc),
                    ..
                },
            ) => (u, phc),
            found => {
                password::verify(&self.dummy_hash, password);
                return Err(match found {
                    None => AuthError::UnknownUser,
                    Some(_) => AuthError::NoPasswordSet,
                });
            }
        };
        if !password::verify(phc, password) {
            return Err(AuthError::WrongPassword);
        }
        SuccessCache::global().insert(user, password, phc);
        Ok(password_identity(u))
    }

    /// Checks a JWT (signature, `alg`, `exp`, `sub`, the `coremq` claim).
    pub fn verify_token(&self, token: &str) -> Result<Identity, AuthError> {
        let key = self.jwt.as_ref().ok_or(AuthError::TokensNotConfigured)?;
        let verified = token::verify(key, token)?;
        let user = match self.users.get(verified.user.as_str()) {
            Some(u) => u.name.clone(),
            None => verified.user.into(),
        };
        Ok(Identity {
            user,
            claims: Some(Arc::new(verified.claims)),
            expires: Some(verified.expires),
        })
    }

    /// Whether a token key is configured, so the broker can say so at start.
    pub fn tokens_enabled(&self) -> bool {
        self.jwt.is_some()
    }
}

fn password_identity(user: &User) -> Identity {
    Identity {
        user: user.name.clone(),
        claims: None,
        expires: None,
    }
}

/// A section's rights, `%u` expanded with `user` (`None` for `[anonymous]`,
/// which the parser keeps free of `%u`).
fn perms_of(section: &Section, user: Option<&str>) -> Perms {
    let list = |l: &[String]| {
        Patterns::new(
            l.iter()
                .map(|p| user.map_or_else(|| p.clone(), |u| expand(p, u)))
                .collect(),
        )
    };
    Perms {
        publish: list(&section.publish),
        subscribe: list(&section.subscribe),
        history: list(&section.history),
        kv_read: list(&section.kv_read),
        kv_write: list(&section.kv_write),
        deny: list(&section.deny),
        direct: section.direct,
        monitor: section.monitor,
    }
}

#[cfg(test)]
mod tests;
