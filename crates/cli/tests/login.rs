//! Commands authenticate first when given credentials (flags or $COREMQ_*),
//! a refusal is exit 1 with the server's reply and never the password, and
//! credential mistakes are usage errors found before connecting. Against the
//! client crate's scripted fake server.

mod common;

use common::fake_server::{auth_failed, ok_reply, FakeServer, Received, Step};
use common::{cli, text};
use serde_json::json;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(5);

/// The kinds of the frames, in order.
fn kinds(frames: &[Received]) -> Vec<&str> {
    frames.iter().map(Received::kind).collect()
}

#[test]
fn every_command_authenticates_first() {
    let server = FakeServer::accepting();
    let addr = server.addr();
    let out = cli(
        &[
            "-s",
            &addr,
            "--user",
            "alice",
            "--password",
            "pw-1",
            "pub",
            "news",
            "hi",
        ],
        b"",
        &[],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let frames = server.frames(2, WAIT);
    assert_eq!(kinds(&frames), ["coremq_auth", "publish"]);
    assert_eq!(
        frames[0].json,
        json!({"coremq_auth": {"user": "alice", "password": "pw-1"}})
    );

    // From the environment, and a token.
    let out = cli(
        &["status"],
        b"",
        &[("COREMQ_SERVER", &addr), ("COREMQ_TOKEN", "tok-1")],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let frames = server.frames(2, WAIT);
    assert_eq!(kinds(&frames), ["coremq_auth", "coremq_status"]);
    assert_eq!(frames[0].json, json!({"coremq_auth": {"token": "tok-1"}}));

    let out = cli(
        &["-s", &addr, "history", "news"],
        b"",
        &[("COREMQ_USER", "bob"), ("COREMQ_PASSWORD", "pw-2")],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let frames = server.frames(2, WAIT);
    assert_eq!(kinds(&frames), ["coremq_auth", "coremq_gethistory"]);
    assert_eq!(
        frames[0].json,
        json!({"coremq_auth": {"user": "bob", "password": "pw-2"}})
    );

    // Without credentials nothing changes.
    let out = cli(&["-s", &addr, "status"], b"", &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(kinds(&server.frames(1, WAIT)), ["coremq_status"]);
}

#[test]
fn refused_credentials_are_exit_1_with_the_reply_and_no_secret() {
    let server = FakeServer::start(|f| match f.kind() {
        "coremq_auth" => auth_failed(),
        _ => vec![Step::Send(ok_reply(f))],
    });
    let addr = server.addr();
    for (args, env) in [
        (
            vec![
                "-s",
                &addr,
                "-u",
                "alice",
                "--password",
                "pw-XYZZY",
                "status",
            ],
            vec![],
        ),
        (
            vec!["-s", &addr, "sub", "news"],
            vec![("COREMQ_TOKEN", "tok-PLUGH")],
        ),
    ] {
        let out = cli(&args, b"", &env);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let stderr = text(&out.stderr);
        assert!(stderr.contains("ERROR: Authentication failed"), "{stderr}");
        assert!(
            !stderr.contains("XYZZY") && !stderr.contains("PLUGH"),
            "{stderr}"
        );
        assert!(out.stdout.is_empty());
        assert_eq!(server.frames(1, WAIT)[0].kind(), "coremq_auth");
    }
    assert!(server.next_frame(Duration::from_millis(50)).is_none());
}

#[test]
fn credential_mistakes_are_usage_errors_before_connecting() {
    let server = FakeServer::accepting();
    let addr = server.addr();
    for (args, env) in [
        // No terminal to ask for the password on.
        (vec!["-s", &addr, "--user", "alice", "status"], vec![]),
        (vec!["-s", &addr, "--password", "pw", "status"], vec![]),
        (
            vec!["-s", &addr, "--token", "t", "--user", "alice", "status"],
            vec![],
        ),
        (
            vec!["-s", &addr, "--token", "t", "status"],
            vec![("COREMQ_PASSWORD", "pw-GRUE")],
        ),
        // An empty token (an unset variable in a script) is not sent.
        (vec!["-s", &addr, "--token", "", "status"], vec![]),
    ] {
        let out = cli(&args, b"", &env);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(!text(&out.stderr).contains("GRUE"));
    }
    assert_eq!(server.connections(), 0);
}

#[test]
fn sub_reports_revoked_queues_and_ends_when_none_is_left() {
    let server = FakeServer::start(|f| {
        let mut steps = vec![Step::Send(ok_reply(f))];
        if f.kind() == "coremq_subscribe" {
            steps.push(Step::Send(json!({
                "response": "Unsubscribed: permission revoked",
                "queues": f.json["coremq_subscribe"],
            })));
        }
        steps
    });
    let out = cli(
        &[
            "-s",
            &server.addr(),
            "-u",
            "alice",
            "--password",
            "pw",
            "--timeout",
            "5",
            "sub",
            "a",
            "b",
        ],
        b"",
        &[],
    );
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("permission revoked") && stderr.contains("a b"),
        "{stderr}"
    );
}
