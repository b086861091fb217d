//! `sub --since SENT@SERVER` (docs/protocol.md §10): the position is checked
//! before connecting, sent as coremq_since for every queue with its digits
//! unchanged, and the server's recovered answer goes to stderr — at the
//! start and after a reconnect. Against the client crate's fake server.

mod common;

use common::fake_server::{delivery, ok_reply, FakeServer, Received, Step};
use common::{cli, text};
use serde_json::json;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(5);

/// The subscribes the server got, in order.
fn subscribes(server: &FakeServer, n: usize) -> Vec<Received> {
    let mut out = Vec::new();
    while out.len() < n {
        let f = server
            .next_frame(WAIT)
            .unwrap_or_else(|| panic!("only {} of {n} subscribes", out.len()));
        if f.kind() == "coremq_subscribe" {
            out.push(f);
        }
    }
    out
}

#[test]
fn a_bad_since_is_a_usage_error_before_connecting() {
    let server = FakeServer::accepting();
    let addr = server.addr();
    for since in [
        "",
        "1796182109.38108",
        "1796182109.38108@",
        "@mq1:6747",
        "yesterday@mq1:6747",
        "-1@mq1:6747",
        "0@mq1:6747",
        "1,2@mq1:6747",
        "1e999@mq1:6747",
    ] {
        // `=`, so that clap does not take "-1@…" for an option.
        let arg = format!("--since={since}");
        let out = cli(&["-s", &addr, "sub", &arg, "news"], b"", &[]);
        assert_eq!(out.status.code(), Some(2), "--since {since:?}");
        let stderr = text(&out.stderr);
        assert!(stderr.contains("--since"), "{stderr}");
        assert!(out.stdout.is_empty());
    }
    assert_eq!(server.connections(), 0);
}

#[test]
fn since_is_sent_for_every_queue_and_recovered_goes_to_stderr() {
    let server = FakeServer::start(|f| {
        if f.kind() != "coremq_subscribe" {
            return vec![Step::Send(ok_reply(f))];
        }
        vec![
            Step::Send(json!({
                "response": "OK: Subscribe successful",
                "recovered": {"news": true, "sport": false},
            })),
            delivery(
                "news",
                r#""n": 1, "coremq_replay": true, "#,
                "1796182109.381090",
                "mq1:6747",
            ),
        ]
    });
    let out = cli(
        &[
            "-s",
            &server.addr(),
            "--timeout",
            "5",
            "sub",
            "--since",
            "1796182109.381080@mq1:6747",
            "-n",
            "1",
            "news",
            "sport",
        ],
        b"",
        &[],
    );
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("recovered news: true"), "{stderr}");
    assert!(stderr.contains("recovered sport: false"), "{stderr}");
    assert_eq!(
        subscribes(&server, 1)[0].raw,
        r#"{"coremq_subscribe":["news","sport"],"coremq_since":{"news":{"sent":1796182109.381080,"server":"mq1:6747"},"sport":{"sent":1796182109.381080,"server":"mq1:6747"}}}"#
    );
    let line: serde_json::Value =
        serde_json::from_str(text(&out.stdout).trim_end()).expect("one JSON line");
    assert_eq!(line["queue"], "news");
    assert_eq!(line["message"]["coremq_replay"], true);
    assert_eq!(line["message"]["coremq_server"], "mq1:6747");
}

#[test]
fn a_reconnect_resumes_and_says_what_was_not_recovered() {
    let server = FakeServer::start(|f| match (f.conn, f.kind()) {
        (0, "coremq_subscribe") => vec![
            Step::Send(ok_reply(f)),
            delivery("news", "", "1.5", "s"),
            Step::Close,
        ],
        (_, "coremq_subscribe") => vec![
            Step::Send(json!({
                "response": "OK: Subscribe successful",
                "recovered": {"news": false},
            })),
            delivery("news", r#""coremq_replay": true, "#, "2.5", "s"),
        ],
        _ => vec![Step::Send(ok_reply(f))],
    });
    let out = cli(
        &[
            "-s",
            &server.addr(),
            "--timeout",
            "5",
            "sub",
            "-n",
            "2",
            "news",
        ],
        b"",
        &[],
    );
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("recovered news: false (messages published after 1.5@s were missed)"),
        "{stderr}"
    );
    let frames = subscribes(&server, 2);
    assert!(frames[0].json.get("coremq_since").is_none());
    assert_eq!(
        frames[1].raw,
        r#"{"coremq_subscribe":["news"],"coremq_since":{"news":{"sent":1.5,"server":"s"}}}"#
    );
    let sent: Vec<f64> = text(&out.stdout)
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("JSON line");
            v["message"]["coremq_sent"].as_f64().expect("stamped")
        })
        .collect();
    assert_eq!(sent, [1.5, 2.5]);
}

#[test]
fn since_repeated_sends_one_position_per_server_for_every_queue() {
    let server = FakeServer::start(|f| {
        if f.kind() != "coremq_subscribe" {
            return vec![Step::Send(ok_reply(f))];
        }
        vec![
            Step::Send(json!({
                "response": "OK: Subscribe successful",
                "recovered": {"news": true, "sport": true},
            })),
            delivery(
                "news",
                r#""coremq_replay": true, "#,
                "1796182109.3",
                "mq2:6747",
            ),
        ]
    });
    let out = cli(
        &[
            "-s",
            &server.addr(),
            "--timeout",
            "5",
            "sub",
            "--since",
            "1796182109.381080@mq1:6747",
            "--since",
            "1796182109.2@mq2:6747",
            "-n",
            "1",
            "news",
            "sport",
        ],
        b"",
        &[],
    );
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("recovered news: true"), "{stderr}");
    let list = concat!(
        r#"[{"sent":1796182109.2,"server":"mq2:6747"},"#,
        r#"{"sent":1796182109.381080,"server":"mq1:6747"}]"#
    );
    assert_eq!(
        subscribes(&server, 1)[0].raw,
        format!(
            r#"{{"coremq_subscribe":["news","sport"],"coremq_since":{{"news":{list},"sport":{list}}}}}"#
        )
    );
}
