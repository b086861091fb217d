use super::*;
use crate::perms::Action::{History, Publish, Subscribe};
use crate::test_support::*;
use serde_json::json;
use std::time::{Duration, UNIX_EPOCH};

fn authority(text: &str) -> Authority {
    Authority::from_text(text, path(), Some(JwtKey::hs256(SECRET, path()).unwrap()))
        .unwrap_or_else(|e| panic!("{e}"))
}

fn login(who: &str) -> Identity {
    Identity {
        user: who.into(),
        claims: None,
        expires: None,
    }
}

#[test]
fn shared_between_shards() {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<Authority>();
    send_sync::<Identity>();
    send_sync::<Perms>();
}

#[test]
fn anonymous_rights() {
    let a = authority("[anonymous]\nsubscribe = public.*\nhistory = public.*\n");
    let anon = a.anonymous();
    assert!(anon.allows(Subscribe, "public.news") && anon.allows(History, "public.x"));
    assert!(!anon.allows(Publish, "public.news"));
    assert!(!anon.allows(Subscribe, "private"));
    assert!(
        !anon.direct() && !anon.monitor(),
        "[anonymous] defaults: no direct, no monitor"
    );
    let none = authority("[user:alice]\n").anonymous();
    assert!(none.grants_nothing());
    assert_eq!(*none, Perms::nothing());
}

#[test]
fn user_rights_with_percent_u() {
    let a = authority(
        "[user:alice]\npublish = orders.*, chat.%u\nsubscribe = chat.*\n\
         deny = orders.secret, %u.private\nmonitor = true\n\
         [user:bob]\ndirect = false\npublish = inbox.%u\n",
    );
    let p = a.perms(&login("alice"));
    assert!(p.allows(Publish, "chat.alice") && !p.allows(Publish, "chat.bob"));
    assert!(p.allows(Publish, "orders.1") && !p.allows(Publish, "orders.secret"));
    assert!(p.allows(Subscribe, "chat.bob"));
    assert!(!p.allows(Subscribe, "alice.private") && !p.allows(History, "chat.alice"));
    assert!(p.direct() && p.monitor());
    let p = a.perms(&login("bob"));
    assert!(p.allows(Publish, "inbox.bob") && !p.allows(Publish, "inbox.alice"));
    assert!(!p.direct() && !p.monitor());
    // Unknown (or removed by a reload) without a token: nothing.
    assert!(a.perms(&login("carol")).grants_nothing());
    assert!(
        a.perms(&login("Alice")).grants_nothing(),
        "names are case-sensitive"
    );
}

#[test]
fn passwords() {
    let a = authority(&format!(
        "[user:alice]\npassword = {}\n[user:tokenonly]\npublish = x\n",
        hash("right horse")
    ));
    let who = a.verify_password("alice", "right horse").unwrap();
    assert_eq!(who, login("alice"));
    assert!(!a.perms(&who).allows(Publish, "anything"));
    assert_eq!(
        a.verify_password("alice", "wrong"),
        Err(AuthError::WrongPassword)
    );
    assert_eq!(
        a.verify_password("alice", ""),
        Err(AuthError::WrongPassword)
    );
    assert_eq!(
        a.verify_password("mallory", "x"),
        Err(AuthError::UnknownUser)
    );
    assert_eq!(
        a.verify_password("tokenonly", "x"),
        Err(AuthError::NoPasswordSet)
    );
}

#[test]
fn unknown_users_cost_an_argon2_run_like_known_ones() {
    let first = hash("pw");
    let a = authority(&format!("[user:a]\n[user:b]\npassword = {first}\n"));
    let (d, f) = (
        argon2::PasswordHash::new(&a.dummy_hash).unwrap(),
        argon2::PasswordHash::new(&first).unwrap(),
    );
    assert_eq!(d.params, f.params);
    assert_eq!(d.algorithm, f.algorithm);
}

#[test]
fn login_cache() {
    let old = hash("s3cret");
    let a = authority(&format!("[user:cached]\npassword = {old}\n"));
    assert_eq!(
        a.password_cached("cached", "s3cret"),
        None,
        "not before a success"
    );
    assert!(a.verify_password("cached", "wrong").is_err());
    assert_eq!(
        a.password_cached("cached", "wrong"),
        None,
        "failures are not cached"
    );
    a.verify_password("cached", "s3cret").unwrap();
    assert_eq!(a.password_cached("cached", "s3cret"), Some(login("cached")));
    assert_eq!(a.password_cached("cached", "s3cret!"), None);
    assert_eq!(a.password_cached("other", "s3cret"), None);

    // A reload with the same hash keeps the entry; a new hash (even of the
    // same password) does not match it.
    let same = authority(&format!("[user:cached]\npassword = {old}\n"));
    assert_eq!(
        same.password_cached("cached", "s3cret"),
        Some(login("cached"))
    );
    let changed = authority(&format!("[user:cached]\npassword = {}\n", hash("s3cret")));
    assert_eq!(changed.password_cached("cached", "s3cret"), None);
    let removed = authority("[user:cached]\n");
    assert_eq!(removed.password_cached("cached", "s3cret"), None);
    assert_eq!(authority("").password_cached("cached", "s3cret"), None);
}

#[test]
fn tokens() {
    let a = authority(
        "[user:alice]\npublish = orders.*\nsubscribe = orders.*\nhistory = orders.*\n\
         deny = orders.secret\ndirect = false\n",
    );
    assert!(a.tokens_enabled());
    let exp = now() + 60;
    let who = a
        .verify_token(&hs256(&json!({"sub": "alice", "exp": exp})))
        .unwrap();
    assert_eq!(&*who.user, "alice");
    assert_eq!(who.expires, Some(UNIX_EPOCH + Duration::from_secs(exp)));
    assert_eq!(
        *a.perms(&who),
        *a.perms(&login("alice")),
        "no claim: the section"
    );

    // The claim replaces the lists it has, and monitor; deny and direct stay.
    let token = hs256(&json!({"sub": "alice", "exp": exp, "coremq": {
        "subscribe": ["*"], "history": [], "monitor": true
    }}));
    let p = a.perms(&a.verify_token(&token).unwrap());
    assert!(p.allows(Publish, "orders.1") && !p.allows(Publish, "chat"));
    assert!(p.allows(Subscribe, "chat") && !p.allows(Subscribe, "orders.secret"));
    assert!(!p.allows(History, "orders.1"));
    assert!(p.monitor() && !p.direct());

    // No section: the claim's lists, direct, no monitor, no deny.
    let token = hs256(&json!({"sub": "dave", "exp": exp, "coremq": {"publish": ["%u.*"]}}));
    let p = a.perms(&a.verify_token(&token).unwrap());
    assert!(p.allows(Publish, "dave.x") && !p.allows(Publish, "alice.x"));
    assert!(!p.allows(Subscribe, "dave.x"));
    assert!(p.direct() && !p.monitor());
    let bare = a
        .verify_token(&hs256(&json!({"sub": "erin", "exp": exp})))
        .unwrap();
    let p = a.perms(&bare);
    assert!(p.direct() && !p.allows(Publish, "x") && !p.grants_nothing());
}

#[test]
fn tokens_not_configured() {
    let a = Authority::from_text("", path(), None).unwrap();
    assert!(!a.tokens_enabled());
    let token = hs256(&json!({"sub": "alice", "exp": now() + 60}));
    assert_eq!(a.verify_token(&token), Err(AuthError::TokensNotConfigured));
}

#[test]
fn nothing_secret_in_errors_or_debug() {
    let password = "hunter2-password";
    let a = authority(&format!("[user:alice]\npassword = {}\n", hash(password)));
    let token = hs256(&json!({"sub": "alice", "exp": now() - 5}));
    let errors = [
        a.verify_password("alice", "hunter2-wrong").unwrap_err(),
        a.verify_password("nobody", password).unwrap_err(),
        a.verify_token(&token).unwrap_err(),
        a.verify_token("hunter2.hunter2.hunter2").unwrap_err(),
    ];
    for e in errors {
        let shown = format!("{e} {e:?}");
        assert!(
            !shown.contains("hunter2") && !shown.contains(&token),
            "{shown}"
        );
    }
    let shown = format!("{a:?}");
    assert!(
        !shown.contains("argon2") && !shown.contains("test-secret"),
        "{shown}"
    );
    assert_eq!(
        shown,
        "Authority { users: 1, anonymous: false, jwt: Some(JwtKey(HS256)) }"
    );
}

#[test]
fn load_from_files() {
    let dir = std::env::temp_dir().join(format!("coremq-auth-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let users = dir.join("users");
    let secret = dir.join("jwt_secret");
    let public = dir.join("jwt.pem");
    std::fs::write(&users, "[user:alice]\npublish = a\n").unwrap();
    std::fs::write(&secret, [SECRET, b"\n"].concat()).unwrap();
    std::fs::write(&public, EC_PUBLIC).unwrap();

    let a = Authority::load(&users, Some(&secret), None).unwrap();
    let token = hs256(&json!({"sub": "alice", "exp": now() + 60}));
    assert!(a
        .perms(&a.verify_token(&token).unwrap())
        .allows(Publish, "a"));
    let a = Authority::load(&users, None, Some(&public)).unwrap();
    assert_eq!(a.verify_token(&token), Err(AuthError::AlgorithmNotAllowed));
    assert!(!Authority::load(&users, None, None)
        .unwrap()
        .tokens_enabled());

    let both = Authority::load(&users, Some(&secret), Some(&public)).unwrap_err();
    assert_eq!(
        both.to_string(),
        "jwt_secret_file and jwt_public_key_file are both set; set only one \
         (HS256 with a shared secret, or RS256/ES256 with a public key)"
    );
    let missing = dir.join("missing");
    let e = Authority::load(&missing, None, None)
        .unwrap_err()
        .to_string();
    assert!(e.starts_with(&format!(
        "users file {}: cannot read it: ",
        missing.display()
    )));

    std::fs::write(&users, b"[user:alice]\npublish = \xff\n").unwrap();
    let e = Authority::load(&users, None, None).unwrap_err().to_string();
    assert_eq!(e, format!("users file {}: not UTF-8 text", users.display()));

    std::fs::write(&users, "[user:alice]\n[user:alice]\n").unwrap();
    let e = Authority::load(&users, None, None).unwrap_err().to_string();
    assert!(e.starts_with(&format!(
        "users file {}, line 2, [user:alice]: ",
        users.display()
    )));
    std::fs::remove_dir_all(&dir).unwrap();
}
