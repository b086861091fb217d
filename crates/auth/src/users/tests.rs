use super::*;
use crate::test_support::{hash, hash_with, path};

fn parse_ok(text: &str) -> UsersFile {
    parse(text, path()).unwrap_or_else(|e| panic!("{e}"))
}

/// The error `text` gets, as the operator reads it.
fn err(text: &str) -> String {
    match parse(text, path()) {
        Ok(_) => panic!("accepted: {text}"),
        Err(e) => e.to_string(),
    }
}

const AT: &str = "users file /etc/coremq/users, line";

#[test]
fn every_key_parses() {
    let alice = hash("pw");
    let text = format!(
        "\u{feff}# comment\n; another\n\n[anonymous]\nsubscribe = public.*\nhistory = public.*\n\n\
         [user:alice]\npassword = {alice}\npublish = orders.*, chat.%u\n\
         subscribe = \"orders.*,chat.*\"\nhistory =\ndeny = orders.secret\n\
         direct = false\nmonitor = TRUE\n\
         [ USER:Bob.x@y-z_1 ]\n  PUBLISH=a  \n\n[user:carol]\npassword = \"{alice}\"\n"
    );
    let file = parse_ok(&text);
    let anon = file.anonymous.unwrap();
    assert_eq!(anon.subscribe, ["public.*"]);
    assert_eq!(anon.history, ["public.*"]);
    assert!(anon.publish.is_empty() && anon.password.is_none());
    assert!(
        !anon.direct && !anon.monitor,
        "[anonymous] defaults to direct = false"
    );

    let names: Vec<_> = file.users.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["alice", "Bob.x@y-z_1", "carol"]);
    let a = &file.users[0].1;
    assert_eq!(a.password.as_deref(), Some(alice.as_str()));
    // %u stays as written until the user's rights are built.
    assert_eq!(a.publish, ["orders.*", "chat.%u"]);
    assert_eq!(a.subscribe, ["orders.*", "chat.*"]);
    assert!(a.history.is_empty());
    assert_eq!(a.deny, ["orders.secret"]);
    assert!(!a.direct && a.monitor);

    let b = &file.users[1].1;
    assert_eq!(b.publish, ["a"]);
    assert!(b.password.is_none(), "a user without password is fine");
    assert!(
        b.direct && !b.monitor,
        "defaults: direct true, monitor false"
    );
    assert_eq!(file.users[2].1.password.as_deref(), Some(alice.as_str()));
}

#[test]
fn empty_file_and_user_names_are_case_sensitive() {
    let file = parse_ok("");
    assert!(file.anonymous.is_none() && file.users.is_empty());
    let file = parse_ok("[user:Alice]\n[user:alice]\n");
    assert_eq!(file.users.len(), 2);
    assert!(valid_user_name(&"a".repeat(64)));
    assert!(!valid_user_name(&"a".repeat(65)));
    assert!(!valid_user_name(""));
}

#[test]
fn section_errors() {
    let cases = [
        (
            "[users]",
            "1, [users]: unknown section (expected [user:NAME] or [anonymous])",
        ),
        (
            "[user:al ice]",
            "1, [user:al ice]: a user name is 1-64 characters of A-Z a-z 0-9 . _ @ -",
        ),
        (
            "[user:]",
            "1, [user:]: a user name is 1-64 characters of A-Z a-z 0-9 . _ @ -",
        ),
        (
            "[user:a*]",
            "1, [user:a*]: a user name is 1-64 characters of A-Z a-z 0-9 . _ @ -",
        ),
        ("[user:alice", "1: a section header must end with ]"),
        (
            "[user:a]\n[anonymous]\n\n[user:a]",
            "4, [user:a]: section appears twice (first at line 1); merge the two",
        ),
        (
            "[anonymous]\n[Anonymous]",
            "2, [anonymous]: section appears twice (first at line 1); merge the two",
        ),
    ];
    for (text, want) in cases {
        assert_eq!(err(text), format!("{AT} {want}"), "{text}");
    }
    let long = format!("[user:{}]", "a".repeat(65));
    assert!(err(&long).ends_with("a user name is 1-64 characters of A-Z a-z 0-9 . _ @ -"));
}

#[test]
fn line_and_key_errors() {
    let cases = [
        (
            "[user:a]\npasword = x",
            "2, [user:a] pasword: unknown key (expected password, publish, subscribe, \
             history, kv_read, kv_write, deny, direct or monitor)",
        ),
        (
            "[anonymous]\nmonitr = true",
            "2, [anonymous] monitr: unknown key (expected publish, subscribe, history, \
             kv_read, kv_write, deny, direct or monitor)",
        ),
        // Not a near miss of any key: not named (it may be a secret).
        (
            "[anonymous]\nadmin = true",
            "2, [anonymous]: unknown key (expected publish, subscribe, history, \
             kv_read, kv_write, deny, direct or monitor)",
        ),
        (
            "[user:a]\nHunter2Secret=",
            "2, [user:a]: unknown key (expected password, publish, subscribe, \
             history, kv_read, kv_write, deny, direct or monitor)",
        ),
        (
            "1/oiArm6AOe95d/srFEfsdanV/3+Zq0kP4x8wq7Yt==",
            "1: key outside any section (put it under [user:NAME] or [anonymous])",
        ),
        (
            "[anonymous]\npassword = x",
            "2, [anonymous] password: [anonymous] has no password (anonymous connections do \
             not log in); expected publish, subscribe, history, kv_read, kv_write, deny, \
             direct or monitor",
        ),
        (
            "[user:a]\npublish = x\n# c\nPublish = y",
            "4, [user:a] publish: set twice in this section (first at line 2)",
        ),
        (
            "[user:a]\njust words",
            "2, [user:a]: line is neither a [section], a key = value nor a # comment",
        ),
        (
            "stray words",
            "1: line is neither a [section], a key = value nor a # comment",
        ),
        (
            "publish = x",
            "1, publish: key outside any section (put it under [user:NAME] or [anonymous])",
        ),
        (
            "[user:a]\ndirect = yes",
            "2, [user:a] direct: \"yes\" is not true or false",
        ),
        (
            "[user:a]\nmonitor =",
            "2, [user:a] monitor: \"\" is not true or false",
        ),
        (
            "[user:a]\npublish = ok, a b",
            "2, [user:a] publish: \"a b\" is not a queue pattern (expected comma-separated \
             patterns of printable ASCII without spaces: * any run, ? one character, \
             %u the user's name)",
        ),
        (
            "[user:a]\ndeny = x,,y",
            "2, [user:a] deny: an empty item is not a queue pattern (expected comma-separated \
             patterns of printable ASCII without spaces: * any run, ? one character, \
             %u the user's name)",
        ),
        (
            "[user:a]\nsubscribe = caf\u{e9}",
            "2, [user:a] subscribe: \"caf\u{e9}\" is not a queue pattern (expected \
             comma-separated patterns of printable ASCII without spaces: * any run, \
             ? one character, %u the user's name)",
        ),
        (
            "[anonymous]\nhistory = chat.%u",
            "2, [anonymous] history: \"chat.%u\": %u in [anonymous] (anonymous connections \
             have no user name)",
        ),
        (
            "[user:a]\npublish = \"x",
            "2, [user:a] publish: unbalanced \" quote (quote the whole value or nothing)",
        ),
    ];
    for (text, want) in cases {
        assert_eq!(err(text), format!("{AT} {want}"), "{text}");
    }
}

#[test]
fn password_must_be_argon2id() {
    let argon2i = hash_with(argon2::Algorithm::Argon2i, "pw", 1);
    let argon2d = hash_with(argon2::Algorithm::Argon2d, "pw", 1);
    let id = hash("pw");
    let no_hash = id.rsplit_once('$').unwrap().0.to_owned();
    let bad_cost = id.replace("m=8,", "m=1,");
    for bad in [
        "hunter2",
        "",
        "$2b$12$R9h/cIPz0gi.URNNX3kh2OPST9/PgBkqquzi.Ss7KIUgO2t0jWMUW",
        &argon2i,
        &argon2d,
        &no_hash,
        &bad_cost,
        "$argon2id$v=19$m=8,t=1,p=1",
    ] {
        let text = format!("[user:alice]\npassword = {bad}\n");
        let e = err(&text);
        assert_eq!(
            e,
            format!(
                "{AT} 2, [user:alice] password: not an Argon2id hash ($argon2id$...); \
                 make one with coremq-cli passwd"
            )
        );
    }
}

#[test]
fn no_password_in_any_error() {
    let secret = "hunter2-Sup3rSecret";
    let good = hash(secret);
    for text in [
        format!("[user:a]\npassword = {secret}"),
        format!("[user:a]\npassword = \"{secret}"),
        format!("[user:a]\npassword: {secret}"),
        format!("[user:a]\n{secret}"),
        format!("[user:a]\npassword = {good}\npassword = {secret}"),
        format!("[user:a]\npassword = {good}\npassword = {good}"),
        format!("[anonymous]\npassword = {secret}"),
        format!("[anonymous]\npassword = {good}"),
        format!("password = {secret}"),
        format!("[user:a]\npassword = {good}\ndirect = maybe\n"),
    ] {
        let e = parse(&text, path()).err().expect(&text);
        let shown = format!("{e} {e:?}");
        assert!(!shown.contains(secret), "{shown}");
        assert!(!shown.contains(&good), "{shown}");
        assert!(!shown.contains("$argon2id$v"), "{shown}");
    }
}
