use super::*;
use crate::test_support::*;
use jsonwebtoken::EncodingKey;
use serde_json::json;

fn hs_key() -> JwtKey {
    JwtKey::hs256(SECRET, path()).unwrap()
}

fn rs_key() -> JwtKey {
    JwtKey::from_public_key_pem(RSA_PUBLIC.as_bytes(), path()).unwrap()
}

fn es_key() -> JwtKey {
    JwtKey::from_public_key_pem(EC_PUBLIC.as_bytes(), path()).unwrap()
}

fn rs256(claims: &serde_json::Value) -> String {
    let key = EncodingKey::from_rsa_pem(RSA_PRIVATE.as_bytes()).unwrap();
    sign(Algorithm::RS256, &key, claims)
}

fn es256(claims: &serde_json::Value) -> String {
    let key = EncodingKey::from_ec_pem(EC_PRIVATE.as_bytes()).unwrap();
    sign(Algorithm::ES256, &key, claims)
}

/// A token put together by hand, signature and all.
fn raw(header: &serde_json::Value, claims: &serde_json::Value, signature: &str) -> String {
    let part = |v: &serde_json::Value| URL_SAFE_NO_PAD.encode(v.to_string());
    format!("{}.{}.{signature}", part(header), part(claims))
}

fn alice(exp: u64) -> serde_json::Value {
    json!({"sub": "alice", "exp": exp})
}

fn refused(key: &JwtKey, token: &str) -> AuthError {
    match verify(key, token) {
        Ok(v) => panic!("accepted as {}", v.user),
        Err(e) => e,
    }
}

#[test]
fn hs256_good() {
    let exp = now() + 60;
    let v = verify(&hs_key(), &hs256(&alice(exp))).unwrap();
    assert_eq!(v.user, "alice");
    assert_eq!(v.expires, UNIX_EPOCH + Duration::from_secs(exp));
    assert_eq!(v.claims, Claims::default());
}

#[test]
fn rs256_and_es256_good() {
    let exp = now() + 60;
    assert_eq!(rs_key().algorithm(), "RS256");
    assert_eq!(
        verify(&rs_key(), &rs256(&alice(exp))).unwrap().user,
        "alice"
    );
    assert_eq!(es_key().algorithm(), "ES256");
    assert_eq!(
        verify(&es_key(), &es256(&alice(exp))).unwrap().user,
        "alice"
    );
    assert_eq!(hs_key().algorithm(), "HS256");
}

#[test]
fn wrong_key_is_a_bad_signature() {
    let claims = alice(now() + 60);
    let other = EncodingKey::from_secret(b"another-secret-0123456789abcdef-xyz").unwrap();
    let token = sign(Algorithm::HS256, &other, &claims);
    assert_eq!(refused(&hs_key(), &token), AuthError::BadSignature);
    // A claim changed after signing.
    let good = hs256(&claims);
    let forged = format!(
        "{}.{}.{}",
        good.split('.').next().unwrap(),
        URL_SAFE_NO_PAD.encode(json!({"sub": "root", "exp": now() + 60}).to_string()),
        good.rsplit('.').next().unwrap()
    );
    assert_eq!(refused(&hs_key(), &forged), AuthError::BadSignature);
}

#[test]
fn only_the_configured_algorithm() {
    let claims = alice(now() + 60);
    let none = json!({"alg": "none", "typ": "JWT"});
    for key in [hs_key(), rs_key(), es_key()] {
        assert_eq!(
            refused(&key, &raw(&none, &claims, "")),
            AuthError::AlgorithmNotAllowed
        );
        assert_eq!(
            refused(&key, &raw(&none, &claims, "AAAA")),
            AuthError::AlgorithmNotAllowed
        );
        let none_caps = json!({"alg": "None"});
        assert_eq!(
            refused(&key, &raw(&none_caps, &claims, "")),
            AuthError::AlgorithmNotAllowed
        );
    }
    // The public key is public: an HS256 token "signed" with it must not pass.
    for (key, pem) in [(rs_key(), RSA_PUBLIC), (es_key(), EC_PUBLIC)] {
        let hmac_with_pem = EncodingKey::from_secret(pem.as_bytes()).unwrap();
        let token = sign(Algorithm::HS256, &hmac_with_pem, &claims);
        assert_eq!(refused(&key, &token), AuthError::AlgorithmNotAllowed);
    }
    let hs384 = sign(
        Algorithm::HS384,
        &EncodingKey::from_secret(SECRET).unwrap(),
        &claims,
    );
    assert_eq!(refused(&hs_key(), &hs384), AuthError::AlgorithmNotAllowed);
    assert_eq!(
        refused(&es_key(), &rs256(&claims)),
        AuthError::AlgorithmNotAllowed
    );
    assert_eq!(
        refused(&rs_key(), &es256(&claims)),
        AuthError::AlgorithmNotAllowed
    );
}

#[test]
fn exp_is_required_and_enforced_without_leeway() {
    let key = hs_key();
    let expired = hs256(&alice(now() - 1));
    assert_eq!(refused(&key, &expired), AuthError::TokenExpired);
    assert_eq!(
        refused(&key, &hs256(&json!({"sub": "alice"}))),
        AuthError::MissingExp
    );
    let text_exp = hs256(&json!({"sub": "alice", "exp": "tomorrow"}));
    assert_eq!(refused(&key, &text_exp), AuthError::MissingExp);
    let later = hs256(&json!({"sub": "alice", "exp": now() + 60, "nbf": now() + 30}));
    assert_eq!(refused(&key, &later), AuthError::TokenNotYetValid);
}

#[test]
fn sub_must_be_a_user_name() {
    let key = hs_key();
    let exp = now() + 60;
    for claims in [
        json!({"exp": exp}),
        json!({"sub": "", "exp": exp}),
        json!({"sub": 7, "exp": exp}),
        json!({"sub": "a*", "exp": exp}),
        json!({"sub": "a b", "exp": exp}),
    ] {
        assert_eq!(
            refused(&key, &hs256(&claims)),
            AuthError::BadSub,
            "{claims}"
        );
    }
}

#[test]
fn audience_and_malformed() {
    let key = hs_key();
    let aud = hs256(&json!({"sub": "alice", "exp": now() + 60, "aud": "other"}));
    assert_eq!(refused(&key, &aud), AuthError::AudienceNotAccepted);
    for bad in ["", "abc", "a.b.c", "a.b", "!!!.x.y"] {
        assert_eq!(refused(&key, bad), AuthError::MalformedToken, "{bad}");
    }
    // Signed, but claims that are not an object.
    assert_eq!(
        refused(&key, &hs256(&json!([1, 2]))),
        AuthError::MalformedToken
    );
}

#[test]
fn coremq_claim() {
    let key = hs_key();
    let exp = now() + 60;
    let token = hs256(&json!({"sub": "alice", "exp": exp, "coremq": {
        "publish": ["chat.%u", "orders.*"], "history": [], "monitor": true,
        "kv_write": ["cache.%u.*"]
    }}));
    let v = verify(&key, &token).unwrap();
    assert_eq!(
        v.claims,
        Claims {
            publish: Some(vec!["chat.alice".into(), "orders.*".into()]),
            subscribe: None,
            history: Some(vec![]),
            kv_read: None,
            kv_write: Some(vec!["cache.alice.*".into()]),
            monitor: Some(true),
        }
    );
    let null = hs256(&json!({"sub": "alice", "exp": exp, "coremq": null}));
    assert_eq!(verify(&key, &null).unwrap().claims, Claims::default());
    for bad in [
        json!(5),
        json!("publish"),
        json!({"publish": "chat"}),
        json!({"publish": ["a b"]}),
        json!({"publish": [""]}),
        json!({"subscibe": ["x"]}),
        json!({"monitor": "yes"}),
        json!({"deny": []}),
        json!({"direct": false}),
    ] {
        let token = hs256(&json!({"sub": "alice", "exp": exp, "coremq": bad}));
        assert_eq!(refused(&key, &token), AuthError::BadClaim, "{bad}");
    }
}

#[test]
fn secret_files() {
    let short = b"short-secret-hunter2-xyz";
    let e = JwtKey::hs256(short, Path::new("/etc/coremq/jwt")).unwrap_err();
    assert_eq!(
        e.to_string(),
        "jwt_secret_file /etc/coremq/jwt: the secret is shorter than 32 bytes; \
         make one with: head -c 48 /dev/urandom | base64"
    );
    assert!(!format!("{e:?}").contains("hunter2"));
    // Trailing whitespace is not part of the secret.
    let mut padded = [b'x'; 31].to_vec();
    padded.extend_from_slice(b"   \n");
    assert!(JwtKey::hs256(&padded, path()).is_err());
    let mut newline = SECRET.to_vec();
    newline.extend_from_slice(b"\r\n");
    let key = JwtKey::hs256(&newline, path()).unwrap();
    assert!(verify(&key, &hs256(&alice(now() + 60))).is_ok());
    assert_eq!(format!("{key:?}"), "JwtKey(HS256)");
    assert!(!format!("{key:?}").contains("test-secret"));

    let missing = Path::new("/nonexistent/coremq-jwt");
    let e = JwtKey::from_secret_file(missing).unwrap_err().to_string();
    assert!(
        e.starts_with("jwt_secret_file /nonexistent/coremq-jwt: cannot read it: "),
        "{e}"
    );
    let e = JwtKey::from_public_key_file(missing)
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with("jwt_public_key_file /nonexistent/coremq-jwt: cannot read it: "),
        "{e}"
    );
}

#[test]
fn public_key_kinds() {
    let bad = |pem: &str| {
        JwtKey::from_public_key_pem(pem.as_bytes(), Path::new("/k.pem"))
            .unwrap_err()
            .to_string()
    };
    assert_eq!(
        bad(EC384_PUBLIC),
        "jwt_public_key_file /k.pem: holds an EC key that is not on curve P-256; ES256 needs P-256"
    );
    let not_a_key = "jwt_public_key_file /k.pem: not an RSA or EC P-256 public key in PEM \
                     (-----BEGIN PUBLIC KEY-----); tokens must be RS256 or ES256";
    assert_eq!(bad(ED25519_PUBLIC), not_a_key);
    assert_eq!(bad("hunter2"), not_a_key);
    assert_eq!(bad(""), not_a_key);
    assert_eq!(
        bad(RSA1024_PUBLIC),
        "jwt_public_key_file /k.pem: holds an RSA key shorter than 2048 bits; \
         RS256 needs 2048 or more"
    );
    // PKCS#1 framing around DER that is not an RSA key: SEQUENCE { INTEGER 1 }.
    let not_rsa = "-----BEGIN RSA PUBLIC KEY-----\nMAMCAQE=\n-----END RSA PUBLIC KEY-----\n";
    assert_eq!(
        bad(not_rsa),
        "jwt_public_key_file /k.pem: holds an RSA key that does not parse"
    );
    let private = "jwt_public_key_file /k.pem: holds a private key; give the public one \
                   (openssl pkey -in PRIVATE.pem -pubout)";
    assert_eq!(bad(RSA_PRIVATE), private);
    assert_eq!(bad(EC_PRIVATE), private);
    assert!(!bad(RSA_PRIVATE).contains("MII"));
}
