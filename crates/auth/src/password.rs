//! Argon2id password checks against the users file's PHC strings, and the
//! stand-in hash that unknown users are checked against so that a login's
//! timing does not tell which users exist.

use argon2::password_hash::{Output, PasswordHash, Salt};
use argon2::{Argon2, PasswordVerifier};

/// Salt of the stand-in hash: any valid one; no password ever matches the
/// all-zero output below.
const DUMMY_SALT: &str = "Y29yZW1xLWR1bW15LXNhbHQ";

/// The stand-in when no user has a password: Argon2's default cost, which
/// is what `coremq-cli passwd` makes.
const DEFAULT_DUMMY: &str = "$argon2id$v=19$m=19456,t=2,p=1$Y29yZW1xLWR1bW15LXNhbHQ$\
                             AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";

/// A hash with the cost parameters and output length of `like` (a user's
/// PHC string), so that checking an unknown user takes as long as checking
/// that user, but that no password matches.
pub(crate) fn dummy_like(like: Option<&str>) -> String {
    let dummy = |phc: &str| -> Option<String> {
        let mut hash = PasswordHash::new(phc).ok()?;
        let len = hash.hash?.len();
        hash.salt = Some(Salt::from_b64(DUMMY_SALT).ok()?);
        hash.hash = Some(Output::new(&[0; Output::MAX_LENGTH][..len]).ok()?);
        Some(hash.to_string())
    };
    like.and_then(dummy)
        .unwrap_or_else(|| DEFAULT_DUMMY.to_owned())
}

/// Whether `password` matches `phc` (checked at load to be Argon2id). Slow by
/// design: tens of milliseconds at the default cost.
pub(crate) fn verify(phc: &str, password: &str) -> bool {
    PasswordHash::new(phc).is_ok_and(|hash| {
        Argon2::default()
            .verify_password(password.as_bytes(), &hash)
            .is_ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use argon2::password_hash::{PasswordHasher, SaltString};
    use argon2::{Algorithm, Params, Version};

    #[test]
    fn default_dummy_is_a_valid_argon2id_hash() {
        let hash = PasswordHash::new(DEFAULT_DUMMY).unwrap();
        assert_eq!(hash.algorithm, argon2::ARGON2ID_IDENT);
        let (params, default) = (Params::try_from(&hash).unwrap(), Params::default());
        assert_eq!(
            (params.m_cost(), params.t_cost(), params.p_cost()),
            (default.m_cost(), default.t_cost(), default.p_cost())
        );
        assert_eq!(params.output_len(), Some(Params::DEFAULT_OUTPUT_LEN));
        assert_eq!(dummy_like(None), DEFAULT_DUMMY);
        assert_eq!(dummy_like(Some("not a hash")), DEFAULT_DUMMY);
    }

    #[test]
    fn dummy_copies_cost_and_length_but_matches_nothing() {
        let argon = Argon2::new(
            Algorithm::Argon2id,
            Version::V0x13,
            Params::new(8, 1, 1, Some(24)).unwrap(),
        );
        let salt = SaltString::encode_b64(b"0123456789abcdef").unwrap();
        let real = argon.hash_password(b"pw", &salt).unwrap().to_string();
        let dummy = dummy_like(Some(&real));
        let (r, d) = (
            PasswordHash::new(&real).unwrap(),
            PasswordHash::new(&dummy).unwrap(),
        );
        assert_eq!(r.params, d.params);
        assert_eq!(d.hash.unwrap().len(), 24);
        assert_ne!(r.salt, d.salt);
        assert!(verify(&real, "pw"));
        assert!(!verify(&dummy, "pw") && !verify(&dummy, ""));
    }
}
