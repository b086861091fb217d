//! PROTOCOL.md §8, logging in: every way a login can fail fails the same
//! way (`ERROR: Authentication failed`, then the connection closes), tokens
//! expire and can be refreshed, a silent connection is closed after
//! `auth_timeout`, and many Argon2 logins do not hold up a shard's other
//! clients.

mod common;

use common::auth::{assert_auth_fails_and_closes, auth_reply, hash, login, token, token_with};
use common::auth::{Fixture, SECRET};
use common::*;
use jsonwebtoken::{EncodingKey, Header};
use serde_json::json;
use std::path::PathBuf;
use std::time::{Duration, Instant};

fn users() -> String {
    format!(
        "[user:alice]\npassword = {}\npublish = *\nsubscribe = *\nmonitor = true\n\n[user:bob]\npassword = {}\npublish = *\n",
        hash("alice-pw"),
        hash("bob-pw")
    )
}

/// The test keys of the auth crate.
fn key(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("crates/auth/tests/keys")
        .join(name)
}

fn b64url(json: &serde_json::Value) -> String {
    data_encoding::BASE64URL_NOPAD.encode(json.to_string().as_bytes())
}

#[test]
fn every_wrong_login_fails_and_closes() {
    let f = Fixture::new(&users());
    let b = Broker::start(f.opts(2));
    let exp = common::auth::unix_now() + 60;
    let alg_none = format!(
        "{}.{}.",
        b64url(&json!({"alg": "none", "typ": "JWT"})),
        b64url(&json!({"sub": "alice", "exp": exp}))
    );
    let cases = [
        (
            "wrong password",
            json!({"user": "alice", "password": "nope"}),
        ),
        (
            "unknown user",
            json!({"user": "mallory", "password": "alice-pw"}),
        ),
        (
            "bad signature",
            json!({"token": token_with("another-secret-of-enough-length-000000", "alice", 60, None)}),
        ),
        ("alg none", json!({ "token": alg_none })),
        ("expired token", json!({"token": token("alice", -5)})),
        (
            "token for another user",
            json!({"user": "bob", "token": token("alice", 60)}),
        ),
        ("not a token", json!({"token": "abc.def.ghi"})),
    ];
    for (what, auth) in cases {
        let mut c = b.client();
        eprintln!("case: {what}");
        assert_auth_fails_and_closes(&mut c, auth);
    }
    // A connection cannot change user: the second login fails and closes.
    let mut c = b.client();
    login(&mut c, "alice", "alice-pw");
    assert_auth_fails_and_closes(&mut c, json!({"user": "bob", "password": "bob-pw"}));
    // The right ones work (and the broker is unharmed).
    let mut c = b.client();
    login(&mut c, "alice", "alice-pw");
    let r = auth_reply(&mut b.client(), json!({"token": token("bob", 60)}));
    assert_eq!(r, json!({"response": "OK: Authenticated", "user": "bob"}));
    // Status counts them: every failure above, and the three logins.
    let s = c.status();
    assert_eq!(shard_sum(&s, "auth_failures"), 8, "{s}");
    assert_eq!(shard_sum(&s, "logins"), 3, "{s}");
}

#[test]
fn rs256_keys_refuse_hs256_signed_with_the_public_key() {
    let f = Fixture::new(&users());
    let opts = BrokerOpts::new(1)
        .set("users_file", &f.users.display().to_string())
        .set(
            "jwt_public_key_file",
            &key("rsa_public.pem").display().to_string(),
        );
    let b = Broker::start(opts);
    let claims = json!({"sub": "alice", "exp": common::auth::unix_now() + 60});
    let private = std::fs::read(key("rsa_private.pem")).expect("test key");
    let good = jsonwebtoken::encode(
        &Header::new(jsonwebtoken::Algorithm::RS256),
        &claims,
        &EncodingKey::from_rsa_pem(&private).expect("rsa key"),
    )
    .expect("sign");
    let r = auth_reply(&mut b.client(), json!({ "token": good }));
    assert_eq!(r, json!({"response": "OK: Authenticated", "user": "alice"}));
    // The classic confusion: HS256 with the public key as the HMAC secret.
    let public = std::fs::read(key("rsa_public.pem")).expect("test key");
    let forged = jsonwebtoken::encode(
        &Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(&public).expect("secret"),
    )
    .expect("sign");
    assert_auth_fails_and_closes(&mut b.client(), json!({ "token": forged }));
    let _ = SECRET;
}

#[test]
fn es256_tokens_are_accepted() {
    let f = Fixture::new(&users());
    let opts = BrokerOpts::new(1)
        .set("users_file", &f.users.display().to_string())
        .set(
            "jwt_public_key_file",
            &key("ec_public.pem").display().to_string(),
        );
    let b = Broker::start(opts);
    let claims = json!({"sub": "bob", "exp": common::auth::unix_now() + 60});
    let private = std::fs::read(key("ec_private.pem")).expect("test key");
    let t = jsonwebtoken::encode(
        &Header::new(jsonwebtoken::Algorithm::ES256),
        &claims,
        &EncodingKey::from_ec_pem(&private).expect("ec key"),
    )
    .expect("sign");
    let r = auth_reply(&mut b.client(), json!({ "token": t }));
    assert_eq!(r, json!({"response": "OK: Authenticated", "user": "bob"}));
}

#[test]
fn an_expiring_token_closes_unless_refreshed() {
    let f = Fixture::new(&users());
    let b = Broker::start(f.opts(2));
    let q = uniq("q");

    // Expires in 2 s: then the error and the close.
    let mut short = b.client();
    let r = auth_reply(&mut short, json!({"token": token("alice", 2)}));
    assert_eq!(r["response"], json!("OK: Authenticated"));
    let (frames, eof) = short.read_until_eof(Duration::from_secs(10));
    assert!(eof, "closed after the token expired");
    let last = frames.last().expect("an error before the close");
    assert_eq!(last.json, json!({"response": "ERROR: Token expired"}));

    // Refreshed before it runs out: still served after the first expiry.
    // (4 s: `exp` is in whole seconds, and the refresh must come before it
    // even on a starved CI machine.)
    let mut kept = b.client();
    auth_reply(&mut kept, json!({"token": token("alice", 4)}));
    let r = auth_reply(&mut kept, json!({"token": token("alice", 60)}));
    assert_eq!(r, json!({"response": "OK: Authenticated", "user": "alice"}));
    std::thread::sleep(Duration::from_secs(5));
    kept.publish(&q, &json!({"n": 1}));
}

/// `c` is closed, its last frame `ERROR: Token expired` (within 15 s).
fn closes_with_token_expired(c: &mut Client) {
    let (frames, eof) = c.read_until_eof(Duration::from_secs(15));
    assert!(eof);
    assert_eq!(
        frames.last().map(|f| f.json.clone()),
        Some(json!({"response": "ERROR: Token expired"}))
    );
}

/// A refresh moves the expiry either way: a token that expires sooner than
/// the one it replaces (with claims of its own: here `monitor`) ends the
/// connection when it expires, not when the first one would have. It used
/// to be noticed only at the first token's expiry, an hour on here, its
/// claims in force all that time.
#[test]
fn a_refresh_that_expires_sooner_ends_the_connection_then() {
    let f = Fixture::new(&users());
    let b = Broker::start(f.opts(2));
    let mut c = b.client();
    auth_reply(&mut c, json!({"token": token("bob", 3600)}));
    let sooner = token_with(SECRET, "bob", 2, Some(json!({"monitor": true})));
    let r = auth_reply(&mut c, json!({ "token": sooner }));
    assert_eq!(r, json!({"response": "OK: Authenticated", "user": "bob"}));
    // Its claim is in force until it expires.
    c.status();
    closes_with_token_expired(&mut c);
}

/// A password login ends the watch on the token it replaces (the
/// connection outlives that token), and a token after it is watched
/// again: it used to be never checked, its claims good for the life of the
/// connection.
#[test]
fn a_token_after_a_password_login_still_expires() {
    let f = Fixture::new(&users());
    let b = Broker::start(f.opts(1));
    let q = uniq("q");
    let mut c = b.client();
    auth_reply(&mut c, json!({"token": token("alice", 2)}));
    login(&mut c, "alice", "alice-pw");
    std::thread::sleep(Duration::from_secs(3));
    c.publish(&q, &json!({"after the first token": true}));
    let r = auth_reply(&mut c, json!({"token": token("alice", 2)}));
    assert_eq!(r, json!({"response": "OK: Authenticated", "user": "alice"}));
    closes_with_token_expired(&mut c);
}

#[test]
fn a_silent_connection_is_closed_after_auth_timeout() {
    let f = Fixture::new(&users());
    let b = Broker::start(f.opts(2).set("auth_timeout", "1"));
    let mut silent = b.client();
    let mut authed = b.client();
    login(&mut authed, "alice", "alice-pw");
    let (frames, eof) = silent.read_until_eof(Duration::from_secs(10));
    assert!(eof);
    assert_eq!(
        frames.last().map(|f| f.json.clone()),
        Some(
            json!({"response": "ERROR: Authentication required: none within auth_timeout; closing"})
        )
    );
    // The authenticated one is still served well after the timeout.
    std::thread::sleep(Duration::from_millis(500));
    let q = uniq("q");
    authed.publish(&q, &json!({"n": 1}));
}

/// Round trips of `pinger` on `q` while `LOGINS` connections log in as
/// carol with `password`; returns (time the logins took, sorted round trips).
fn round_trips_during_logins(
    b: &Broker,
    pinger: &mut Client,
    q: &str,
    password: &'static str,
) -> (Duration, Vec<Duration>) {
    const LOGINS: usize = 1000;
    let addr = b.addr();
    let loginer = std::thread::spawn(move || {
        let started = Instant::now();
        for _ in 0..LOGINS {
            let mut c = Client::connect(addr);
            let r = auth_reply(&mut c, json!({"user": "carol", "password": password}));
            let expected = if password == "carol-pw" {
                "OK: Authenticated"
            } else {
                "ERROR: Authentication failed"
            };
            assert_eq!(r["response"], json!(expected));
        }
        started.elapsed()
    });
    let mut rtts = Vec::new();
    while !loginer.is_finished() {
        let t = Instant::now();
        pinger.publish(q, &json!({"ping": rtts.len()}));
        assert_eq!(pinger.recv_msg().json["ping"], json!(rtts.len()));
        rtts.push(t.elapsed());
        std::thread::sleep(Duration::from_millis(5));
    }
    let took = loginer.join().expect("logins");
    rtts.sort();
    assert!(!rtts.is_empty());
    (took, rtts)
}

/// 1,000 logins that each run Argon2id (wrong passwords are never cached)
/// beside 1,000 answered from the cache, while another client of the same
/// shard does round trips: every login and round trip must complete; the
/// figures are printed side by side (no wall-clock assertions).
#[test]
fn argon2_logins_do_not_stall_other_clients() {
    // A fifth of the default cost (`coremq-cli passwd` makes m=19456, t=2),
    // so the thousand runs take seconds, not half a minute; what matters is
    // where they run, not how long each takes.
    let params = argon2::Params::new(4096, 2, 1, None).unwrap();
    let salt = argon2::password_hash::SaltString::encode_b64(b"coremq-stall-test").unwrap();
    let hashed = argon2::password_hash::PasswordHasher::hash_password(
        &argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params),
        b"carol-pw",
        &salt,
    )
    .unwrap()
    .to_string();
    let f = Fixture::new(&format!(
        "[user:carol]\npassword = {hashed}\npublish = *\nsubscribe = *\n"
    ));
    let b = Broker::start(f.opts(1));
    let q = uniq("rtt");
    let mut pinger = b.client();
    login(&mut pinger, "carol", "carol-pw");
    pinger.options(json!({"echo": true}));
    pinger.subscribe(&[&q]);
    for (what, password) in [("cached", "carol-pw"), ("Argon2id", "wrong")] {
        let (took, rtts) = round_trips_during_logins(&b, &mut pinger, &q, password);
        let pct = |p: f64| rtts[((rtts.len() - 1) as f64 * p) as usize];
        println!(
            "1000 {what} logins in {took:?}; another client's round trips meanwhile ({}): \
             p50 {:?}, p99 {:?}, max {:?}",
            rtts.len(),
            pct(0.5),
            pct(0.99),
            rtts.last().unwrap()
        );
    }
}

/// Bursts of wrong passwords — each an Argon2 run of the default cost, the
/// lot far longer than `auth_timeout` — wait in their addresses' lines: a
/// login from another address is checked while nearly all of them still
/// wait; one queued behind a burst on its own address is checked in the
/// end, not closed for having sent nothing within `auth_timeout`; and an
/// address with 16 checks waiting gets no more in line (its further logins
/// fail at once, with the cause in the log), so it cannot hold thousands of
/// connections open waiting.
/// (Handed to the shard's one blocking thread as they came, a burst shut
/// every login out for its length.)
#[test]
fn bursts_of_wrong_logins_hold_up_their_own_addresses_only() {
    const ADDRESSES: u8 = 8;
    const EACH: usize = 16;
    // What `coremq-cli passwd` makes (m=19456, t=2): tens of milliseconds.
    let salt = argon2::password_hash::SaltString::encode_b64(b"coremq-burst-test").unwrap();
    let hashed = argon2::password_hash::PasswordHasher::hash_password(
        &argon2::Argon2::default(),
        b"alice-pw",
        &salt,
    )
    .unwrap()
    .to_string();
    let f = Fixture::new(&format!("[user:alice]\npassword = {hashed}\npublish = *\n"));
    let b = Broker::start(f.opts(1).set("auth_timeout", "1"));
    let ip = |last: u8| std::net::IpAddr::from([127, 0, 0, last]);
    let wrong = json!({"coremq_auth": {"user": "alice", "password": "wrong"}});
    // One address sends 40 at once: past 16 waiting, the rest fail at once.
    let mut flood: Vec<Client> = (0..40)
        .map(|_| {
            let mut c = Client::connect_from(ip(4), b.addr(), NODE);
            c.command(&wrong);
            c
        })
        .collect();
    wait_log(&b, "too many password checks waiting from this address");
    let mut burst: Vec<Client> = Vec::new();
    for a in 0..ADDRESSES {
        for _ in 0..EACH {
            let mut c = Client::connect_from(ip(10 + a), b.addr(), NODE);
            c.command(&wrong);
            burst.push(c);
        }
    }
    // Behind 15 wrong ones of its own address.
    let mut same = Vec::new();
    for _ in 0..EACH - 1 {
        let mut c = Client::connect_from(ip(3), b.addr(), NODE);
        c.command(&wrong);
        same.push(c);
    }
    let mut behind = Client::connect_from(ip(3), b.addr(), NODE);
    behind.command(&json!({"coremq_auth": {"user": "alice", "password": "alice-pw"}}));
    let mut other = Client::connect_from(ip(2), b.addr(), NODE);
    let r = auth_reply(&mut other, json!({"user": "alice", "password": "alice-pw"}));
    assert_eq!(r, json!({"response": "OK: Authenticated", "user": "alice"}));
    // How much of the bursts had been checked by then.
    let total = burst.len();
    let mut failed = vec![false; total];
    let mut answered = 0;
    for (i, c) in burst.iter_mut().enumerate() {
        if let Ok(f) = c.try_recv_reply(Duration::from_millis(1)) {
            assert_eq!(f.json, json!({"response": "ERROR: Authentication failed"}));
            failed[i] = true;
            answered += 1;
        }
    }
    println!("the other address's login was answered after {answered} of {total} wrong ones");
    // (The flood's line had drained by then: its 16 went in turn too.)
    assert!(
        answered < total / 2,
        "the other address's login waited for {answered} of {total} wrong ones"
    );
    // The one behind its own address's burst: checked, not timed out.
    let r = behind
        .try_recv_reply(Duration::from_secs(120))
        .expect("the login behind the burst answered");
    assert_eq!(
        r.json,
        json!({"response": "OK: Authenticated", "user": "alice"})
    );
    // And every wrong one failed.
    let rest = burst
        .iter_mut()
        .enumerate()
        .filter(|(i, _)| !failed[*i])
        .map(|(_, c)| c)
        .chain(same.iter_mut())
        .chain(flood.iter_mut());
    for c in rest {
        let f = c
            .try_recv_reply(Duration::from_secs(60))
            .unwrap_or_else(|e| panic!("a wrong login unanswered: {e:?}"));
        assert_eq!(f.json, json!({"response": "ERROR: Authentication failed"}));
    }
}
