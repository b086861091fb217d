//! `passwd` and `token` run through the built binary: what they print is
//! what the broker verifies (an Argon2id PHC string, an HS256 JWT with the
//! same secret), and bad input is refused without echoing any secret.

mod common;

use argon2::password_hash::{PasswordHash, PasswordVerifier};
use argon2::Argon2;
use common::{cli, text};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{json, Value};
use std::path::PathBuf;

/// A file in a fresh directory of its own under the target's tmp dir.
fn temp_file(name: &str, contents: &[u8]) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("cli-offline-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join(name);
    std::fs::write(&path, contents).expect("write temp file");
    path
}

fn verifies(hash: &str, password: &str) -> bool {
    let parsed = PasswordHash::new(hash).expect("a PHC string");
    Argon2::default()
        .verify_password(password.as_bytes(), &parsed)
        .is_ok()
}

#[test]
fn passwd_prints_an_argon2id_hash_of_the_stdin_line() {
    let out = cli(&["passwd"], b"correct horse  \n", &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 1, "{stdout}");
    let hash = lines[0];
    assert!(
        hash.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
        "{hash}"
    );
    // Only the line end is dropped: other whitespace is part of the password.
    assert!(verifies(hash, "correct horse  "));
    assert!(!verifies(hash, "correct horse"));

    // --stdin takes the same path; a fresh salt makes every hash differ.
    let again = cli(&["passwd", "--stdin"], b"correct horse  \r\n", &[]);
    assert!(again.status.success(), "{}", text(&again.stderr));
    let hash2 = text(&again.stdout).trim_end().to_string();
    assert_ne!(hash, hash2);
    assert!(verifies(&hash2, "correct horse  "));
}

#[test]
fn passwd_refuses_no_or_an_empty_password() {
    for input in [&b""[..], b"\n"] {
        let out = cli(&["passwd"], input, &[]);
        assert_eq!(out.status.code(), Some(2), "{input:?}");
        assert!(out.stdout.is_empty());
    }
}

/// The claims of `token`, checked with `secret` as the broker checks them.
fn decode(token: &str, secret: &[u8]) -> jsonwebtoken::errors::Result<Value> {
    let key = DecodingKey::from_secret(secret)?;
    jsonwebtoken::decode::<Value>(token, &key, &Validation::new(Algorithm::HS256))
        .map(|data| data.claims)
}

#[test]
fn token_is_an_hs256_jwt_with_sub_exp_and_claims() {
    let secret = b"0123456789abcdef0123456789abcdef-token-test";
    let mut file = secret.to_vec();
    file.extend_from_slice(b" \n\n");
    let path = temp_file("secret", &file);
    let path = path.to_str().expect("utf-8 path");
    let claims = json!({"publish": ["a.*"], "subscribe": ["b", "%u.*"], "monitor": true});
    let out = cli(
        &[
            "token",
            "--user",
            "alice",
            "--secret-file",
            path,
            "--ttl",
            "30m",
            "--claims",
            &claims.to_string(),
        ],
        b"",
        &[],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let token = text(&out.stdout).trim_end().to_string();
    let decoded = decode(&token, secret).expect("valid with the trimmed secret");
    assert_eq!(decoded["sub"], "alice");
    assert_eq!(decoded["coremq"], claims);
    let (iat, exp) = (
        decoded["iat"].as_u64().expect("iat"),
        decoded["exp"].as_u64().expect("exp"),
    );
    assert_eq!(exp - iat, 1800);
    // The trailing whitespace is not part of the key.
    assert!(decode(&token, &file).is_err());

    // The default lifetime is an hour, and without --claims there is no claim.
    let out = cli(&["--user", "bob", "token", "--secret-file", path], b"", &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let decoded = decode(text(&out.stdout).trim_end(), secret).expect("valid");
    assert_eq!(decoded["sub"], "bob");
    assert_eq!(
        decoded["exp"].as_u64().expect("exp") - decoded["iat"].as_u64().expect("iat"),
        3600
    );
    assert!(decoded.get("coremq").is_none());
}

#[test]
fn token_refuses_a_short_secret_without_showing_it() {
    let secret = "short-secret-XYZZY-31-bytes-lon";
    assert_eq!(secret.len(), 31);
    let path = temp_file("short", format!("{secret}\n").as_bytes());
    let path = path.to_str().expect("utf-8 path");
    let out = cli(
        &["token", "--user", "alice", "--secret-file", path],
        b"",
        &[],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(out.stdout.is_empty());
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("31 bytes") && stderr.contains("32"),
        "{stderr}"
    );
    assert!(!stderr.contains("XYZZY"), "{stderr}");
}

#[test]
fn token_refuses_bad_claims_ttl_and_a_missing_user() {
    let secret = "a-long-enough-secret-PLUGH-0123456789";
    let path = temp_file("secret-claims", secret.as_bytes());
    let path = path.to_str().expect("utf-8 path");
    for claims in [
        "not json",
        "[1]",
        r#"{"publish": "a"}"#,
        r#"{"monitor": 1}"#,
        r#"{"admin": true}"#,
    ] {
        let args = [
            "token",
            "--user",
            "alice",
            "--secret-file",
            path,
            "--claims",
            claims,
        ];
        let out = cli(&args, b"", &[]);
        assert_eq!(out.status.code(), Some(2), "{claims}");
        assert!(out.stdout.is_empty(), "{claims}");
        let stderr = text(&out.stderr);
        assert!(stderr.contains("claims"), "{stderr}");
        assert!(!stderr.contains("PLUGH"), "{stderr}");
    }
    // $COREMQ_USER is who one logs in as, not who a token is for.
    let out = cli(
        &["token", "--secret-file", path],
        b"",
        &[("COREMQ_USER", "alice")],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(out.stdout.is_empty());
    for ttl in ["0", "1w", "soon"] {
        let args = ["token", "-u", "alice", "--secret-file", path, "--ttl", ttl];
        let out = cli(&args, b"", &[]);
        assert_eq!(out.status.code(), Some(2), "{ttl}");
        assert!(out.stdout.is_empty(), "{ttl}");
    }
}

#[test]
fn help_never_shows_secret_environment_values() {
    let env = [
        ("COREMQ_PASSWORD", "pw-in-env-FROBOZZ"),
        ("COREMQ_TOKEN", "token-in-env-GRUE"),
    ];
    for args in [&["--help"][..], &["pub", "--help"], &["help", "status"]] {
        let out = cli(args, b"", &env);
        let shown = text(&out.stdout) + &text(&out.stderr);
        assert!(shown.contains("COREMQ_PASSWORD"), "{args:?}: {shown}");
        assert!(!shown.contains("FROBOZZ"), "{args:?}");
        assert!(!shown.contains("GRUE"), "{args:?}");
    }
}
