//! The owner side on its own: what it stores and what it tells each home,
//! watched through a recording [`Outbox`].

use super::*;

/// A client subscription (not an own id, no resume).
fn sub(queue: Box<str>, conn: ConnKey, seq: Option<u32>) -> Subscription {
    Subscription {
        queue,
        conn,
        seq,
        own_id: false,
        since: None,
    }
}
use crate::msg::MsgKey;
use std::cell::RefCell;

/// Records what the owner says.
#[derive(Default)]
struct Recorder {
    said: RefCell<Vec<Said>>,
}

#[derive(Debug, PartialEq)]
enum Said {
    /// Deliver to home `to` (this shard's own home: `deliver_here`).
    Deliver {
        to: usize,
        json: String,
        skip: Option<ConnKey>,
    },
    Ack {
        to: usize,
        conn: ConnKey,
        seq: Option<u32>,
    },
    Subscribed {
        to: usize,
        queue: String,
    },
    History {
        to: usize,
        part: Vec<(u16, Vec<String>)>,
    },
    Replicate {
        to: usize,
        queue: String,
    },
    LinkPressure {
        queue: String,
        on: bool,
    },
}

impl Outbox for Recorder {
    fn respond(&self, to: usize, resp: Response) {
        let said = match resp {
            Response::Deliver { frame, skip } => Said::Deliver {
                to,
                json: json(&frame),
                skip,
            },
            Response::Subscribed { queue, .. } => Said::Subscribed {
                to,
                queue: queue.into(),
            },
            Response::History { part, .. } => Said::History {
                to,
                part: part
                    .into_iter()
                    .map(|(i, msgs)| (i, msgs.iter().map(json).collect()))
                    .collect(),
            },
            Response::Replicate { frame, .. } => Said::Replicate {
                to,
                queue: frame.queue().into(),
            },
            Response::LinkPressure { queue, on } => Said::LinkPressure {
                queue: queue.into(),
                on,
            },
            other => panic!("an owner does not say {other:?}"),
        };
        self.said.borrow_mut().push(said);
    }

    fn ack(&self, to: usize, conn: ConnKey, seq: Option<u32>, bytes: u32, _batch: u64) {
        assert!(bytes > 0, "a confirmation frees the publish's bytes");
        self.said.borrow_mut().push(Said::Ack { to, conn, seq });
    }

    fn deliver_here(&self, frame: &MsgFrame, skip: Option<ConnKey>) {
        self.said.borrow_mut().push(Said::Deliver {
            to: ME,
            json: json(frame),
            skip,
        });
    }

    fn restamp(&self, frame: &MsgFrame, after: MsgKey) -> MsgFrame {
        let key = MsgKey {
            sent_us: after.sent_us + 1,
            origin: frame.key().origin,
        };
        let json = format!(
            r#"{{"restamped": {}, "was": {}}}"#,
            key.sent_us,
            json(frame)
        );
        MsgFrame::new(frame.queue(), json.as_bytes(), key)
    }
}

impl Recorder {
    fn take(&self) -> Vec<Said> {
        std::mem::take(&mut *self.said.borrow_mut())
    }
}

/// The owner's shard.
const ME: usize = 1;

fn json(f: &MsgFrame) -> String {
    String::from_utf8(f.json().to_vec()).unwrap()
}

fn owner(cfg: MqConfig) -> Owner {
    Owner::new(ME, 3, Rc::new(cfg))
}

fn conn(slot: u32) -> ConnKey {
    ConnKey {
        slot,
        generation: 1,
    }
}

fn msg(queue: &str, n: u64) -> MsgFrame {
    let key = MsgKey {
        sent_us: 1000 + n,
        origin: 7,
    };
    MsgFrame::new(queue, format!(r#"{{"n": {n}}}"#).as_bytes(), key)
}

fn from(home: usize, slot: u32, echo: bool) -> Publisher {
    Publisher {
        home,
        conn: conn(slot),
        echo,
    }
}

#[test]
fn one_delivery_per_home_then_the_ack() {
    let o = owner(MqConfig::default());
    let out = Recorder::default();
    // Two subscribers on home 0, one on home 2, one here.
    for home in [0, 0, 2, ME] {
        o.subscribe(&out, home, sub("news".into(), conn(9), None));
    }
    assert_eq!(out.take().len(), 4, "each subscription is answered");
    o.publish(&out, msg("news", 1), from(0, 5, false), Some(42));
    let said = out.take();
    assert_eq!(said.len(), 4, "{said:?}");
    let delivers: Vec<usize> = said
        .iter()
        .filter_map(|s| match s {
            Said::Deliver { to, .. } => Some(*to),
            _ => None,
        })
        .collect();
    let mut sorted = delivers.clone();
    sorted.sort_unstable();
    assert_eq!(
        sorted,
        [0, ME, 2],
        "one delivery per home, not per subscriber"
    );
    assert_eq!(
        said.last(),
        Some(&Said::Ack {
            to: 0,
            conn: conn(5),
            seq: Some(42)
        }),
        "the OK comes after the message is stored and delivered (G3)"
    );
    // The publisher's own home leaves the publisher out (echo off) ...
    assert!(said.contains(&Said::Deliver {
        to: 0,
        json: r#"{"n": 1}"#.into(),
        skip: Some(conn(5)),
    }));
    // ... the others skip nobody.
    assert!(said.contains(&Said::Deliver {
        to: 2,
        json: r#"{"n": 1}"#.into(),
        skip: None,
    }));
}

#[test]
fn echo_on_skips_nobody_and_acks_off_is_still_confirmed() {
    let o = owner(MqConfig::default());
    let out = Recorder::default();
    o.subscribe(&out, 0, sub("q".into(), conn(1), Some(3)));
    out.take();
    o.publish(&out, msg("q", 1), from(0, 1, true), None);
    assert_eq!(
        out.take(),
        [
            Said::Deliver {
                to: 0,
                json: r#"{"n": 1}"#.into(),
                skip: None
            },
            Said::Ack {
                to: 0,
                conn: conn(1),
                seq: None
            }
        ]
    );
}

#[test]
fn a_stalled_queue_holds_its_confirmations_and_only_its_own() {
    let o = owner(MqConfig::default());
    let out = Recorder::default();
    o.subscribe(&out, 2, sub("slow".into(), conn(1), None));
    o.subscribe(&out, 2, sub("fast".into(), conn(1), None));
    out.take();
    o.pressure(&out, "slow", true, false);
    o.publish(&out, msg("slow", 1), from(0, 5, false), Some(1));
    o.publish(&out, msg("fast", 2), from(0, 5, false), Some(2));
    o.publish(&out, msg("slow", 3), from(0, 6, false), None);
    let said = out.take();
    assert_eq!(
        said.len(),
        4,
        "three deliveries, one confirmation: {said:?}"
    );
    assert_eq!(
        said[2],
        Said::Ack {
            to: 0,
            conn: conn(5),
            seq: Some(2)
        },
        "the other queue is not held up"
    );
    assert!(
        matches!(said[0], Said::Deliver { to: 2, .. }),
        "messages are still delivered"
    );
    o.pressure(&out, "slow", false, false);
    assert_eq!(
        out.take(),
        [
            Said::Ack {
                to: 0,
                conn: conn(5),
                seq: Some(1)
            },
            Said::Ack {
                to: 0,
                conn: conn(6),
                seq: None
            }
        ],
        "released in order once the subscriber caught up"
    );
}

#[test]
fn history_keeps_the_window_in_key_order_and_answers_by_index() {
    let o = owner(MqConfig::default()); // history_length = 10
    let out = Recorder::default();
    // Another node's messages, arriving newest first, keep their positions
    // (this node's own are stamped in order: see the test below).
    for n in (1..=12).rev() {
        o.replicated(&out, msg("h", n), Via::Exchange, Relay::Nowhere);
    }
    out.take();
    o.history(
        &out,
        3,
        vec![(1, "h".into()), (0, "none".into())],
        conn(1),
        7,
    );
    let expected: Vec<String> = (3..=12).map(|n| format!(r#"{{"n": {n}}}"#)).collect();
    assert_eq!(
        out.take(),
        [Said::History {
            to: 3,
            part: vec![(1, expected), (0, vec![])]
        }]
    );
}

#[test]
fn a_message_seen_twice_is_stored_and_delivered_once() {
    let o = owner(MqConfig::default());
    let out = Recorder::default();
    o.subscribe(&out, 0, sub("q".into(), conn(1), None));
    out.take();
    o.replicated(&out, msg("q", 1), Via::Live, Relay::Nowhere);
    o.replicated(&out, msg("q", 1), Via::Live, Relay::Nowhere);
    o.replicated(&out, msg("q", 1), Via::Exchange, Relay::Nowhere);
    assert_eq!(out.take().len(), 1, "the duplicate is dropped");
    let mut stats = ShardStats::default();
    o.fill_stats(&mut stats);
    assert_eq!(stats.history_messages, 1);
    // A history-exchange message (not live) is stored, never delivered.
    o.replicated(&out, msg("q", 2), Via::Exchange, Relay::Nowhere);
    assert!(out.take().is_empty());
    o.fill_stats(&mut stats);
    assert_eq!(stats.history_messages, 2);
}

#[test]
fn unsubscribed_homes_get_nothing() {
    let o = owner(MqConfig::default());
    let out = Recorder::default();
    o.subscribe(&out, 0, sub("q".into(), conn(1), None));
    o.unsubscribe(0, "q");
    out.take();
    o.publish(&out, msg("q", 1), from(2, 1, false), Some(1));
    assert_eq!(
        out.take(),
        [Said::Ack {
            to: 2,
            conn: conn(1),
            seq: Some(1)
        }]
    );
    let mut stats = ShardStats::default();
    o.fill_stats(&mut stats);
    assert_eq!((stats.queues, stats.subscriptions), (1, 0));
}

#[test]
fn in_a_cluster_local_publishes_go_to_the_links_and_replicas_do_not() {
    let cfg = MqConfig {
        cluster_nodes: vec!["a:1".into(), "b:2".into()],
        ..MqConfig::default()
    };
    let o = owner(cfg);
    let out = Recorder::default();
    o.publish(&out, msg("q", 1), from(0, 1, false), None);
    assert_eq!(
        out.take()[0],
        Said::Replicate {
            to: CONTROL_SHARD,
            queue: "q".into()
        }
    );
    o.publish(&out, msg("$coremq.stats", 2), from(0, 1, false), None);
    assert_eq!(
        out.take().len(),
        1,
        "broker queues stay on their node: a confirmation only"
    );
    o.replicated(&out, msg("q", 3), Via::Live, Relay::Nowhere);
    assert!(out.take().is_empty(), "one hop: never sent on");
}

#[test]
fn in_a_cluster_a_local_stall_is_told_to_the_links_and_a_remote_one_is_not() {
    let cfg = MqConfig {
        cluster_nodes: vec!["a:1".into(), "b:2".into()],
        ..MqConfig::default()
    };
    let o = owner(cfg);
    let out = Recorder::default();
    o.pressure(&out, "q", true, false);
    o.pressure(&out, "q", true, false);
    assert_eq!(
        out.take(),
        [Said::LinkPressure {
            queue: "q".into(),
            on: true
        }],
        "once, when the first subscriber here stalls"
    );
    o.pressure(&out, "q", true, true);
    o.pressure(&out, "q", false, true);
    assert!(out.take().is_empty(), "a remote stall is not echoed back");
    o.pressure(&out, "q", false, false);
    o.pressure(&out, "q", false, false);
    assert_eq!(
        out.take(),
        [Said::LinkPressure {
            queue: "q".into(),
            on: false
        }]
    );
}

/// Publishers on different shards stamp their messages independently, so
/// one can arrive after a message with a later position: it is stamped anew
/// after it, so that a queue's messages are delivered in position order and
/// a client resuming from the last position it got misses nothing (§10).
/// Messages from other nodes keep their positions.
#[test]
fn a_late_local_message_is_stamped_after_the_newest() {
    let o = owner(MqConfig::default());
    let out = Recorder::default();
    o.subscribe(&out, 0, sub("q".into(), conn(9), None));
    out.take();
    o.publish(&out, msg("q", 5), from(2, 1, false), None);
    o.publish(&out, msg("q", 3), from(2, 2, false), None);
    let delivered: Vec<String> = out
        .take()
        .into_iter()
        .filter_map(|s| match s {
            Said::Deliver { json, .. } => Some(json),
            _ => None,
        })
        .collect();
    assert_eq!(
        delivered,
        [r#"{"n": 5}"#, r#"{"restamped": 1006, "was": {"n": 3}}"#]
    );
    // A replicated message older than the newest keeps its position: it is
    // another node's, and every node must agree on it.
    o.replicated(&out, msg("q", 4), Via::Live, Relay::Nowhere);
    let h: Vec<u64> = o
        .queues
        .borrow()
        .history("q")
        .iter()
        .map(|f| f.key().sent_us)
        .collect();
    assert_eq!(h, [1004, 1005, 1006]);
    // Another node's clock running ahead does not make this node rewrite
    // its own messages: they are ordered against it per server (§10).
    o.replicated(&out, msg("q", 9_000), Via::Live, Relay::Nowhere);
    out.take();
    o.publish(&out, msg("q", 7), from(2, 3, false), None);
    assert!(
        out.take()
            .iter()
            .any(|s| matches!(s, Said::Deliver { json, .. } if json == r#"{"n": 7}"#)),
        "stamped as it came"
    );
}

/// A live message from a link goes on as its relay says (a peer's to the
/// replicants, a replicant's to the other links), the first time only: a
/// repeat is neither delivered nor passed on again.
#[test]
fn a_relayed_message_is_passed_on_once() {
    let o = owner(MqConfig::default());
    let out = Recorder::default();
    o.replicated(&out, msg("q", 1), Via::Live, Relay::Replicants);
    o.replicated(&out, msg("q", 1), Via::Live, Relay::Replicants);
    o.replicated(&out, msg("q", 2), Via::Live, Relay::AllBut(7));
    o.replicated(&out, msg("q", 3), Via::Live, Relay::Nowhere);
    let relayed = out
        .take()
        .into_iter()
        .filter(|s| matches!(s, Said::Replicate { .. }))
        .count();
    assert_eq!(relayed, 2);
}

/// A message of `origin` stamped `ms` milliseconds after now (after the
/// owner's start).
fn news(queue: &str, origin: u64, ms: u64) -> MsgFrame {
    let key = MsgKey {
        sent_us: crate::clock::unix_now_us() + ms * 1000,
        origin,
    };
    MsgFrame::new(
        queue,
        format!(r#"{{"o": {origin}, "ms": {ms}}}"#).as_bytes(),
        key,
    )
}

/// What was delivered, in order.
fn delivered(out: &Recorder) -> Vec<String> {
    out.take()
        .into_iter()
        .filter_map(|s| match s {
            Said::Deliver { json, .. } => Some(json),
            _ => None,
        })
        .collect()
}

/// Three nodes: another peer's history exchange brings server 9's messages
/// before 9's own (slow) link does. They are stored, not delivered; 9's
/// link then delivers every one of them, once and in 9's order. (Delivered
/// from the exchange, they came before 9's older ones still on their way,
/// and twice once they had left the window.)
#[test]
fn another_peers_exchange_does_not_deliver_a_servers_messages_ahead_of_its_link() {
    let o = owner(MqConfig::default());
    let out = Recorder::default();
    o.subscribe(&out, 0, sub("q".into(), conn(1), None));
    out.take();
    let m: Vec<MsgFrame> = (1..=5).map(|ms| news("q", 9, 10 + ms)).collect();
    for f in &m[2..] {
        o.replicated(&out, f.clone(), Via::Exchange, Relay::Nowhere);
    }
    assert!(delivered(&out).is_empty());
    for f in &m {
        o.replicated(&out, f.clone(), Via::Live, Relay::Nowhere);
    }
    let want: Vec<String> = m.iter().map(json).collect();
    assert_eq!(delivered(&out), want);
    // Again, by any path: never twice.
    for f in &m {
        o.replicated(&out, f.clone(), Via::Live, Relay::Nowhere);
        o.replicated(&out, f.clone(), Via::OwnExchange, Relay::Nowhere);
    }
    assert!(delivered(&out).is_empty());
}

/// A peer's own messages in its exchange are delivered when this node's
/// subscribers missed them: newer than what its link brought, never one
/// it brought, never behind a later one; another server's never, nor
/// anything from before this node started.
#[test]
fn a_peers_own_exchange_delivers_what_its_dropped_link_withheld() {
    let o = owner(MqConfig::default());
    let out = Recorder::default();
    o.subscribe(&out, 0, sub("q".into(), conn(1), None));
    out.take();
    let live = news("q", 9, 10);
    o.replicated(&out, live.clone(), Via::Live, Relay::Nowhere);
    assert_eq!(delivered(&out), [json(&live)]);
    // The link dropped; its exchange brings 9's messages again and after.
    let missed: Vec<MsgFrame> = (11..=13).map(|ms| news("q", 9, ms)).collect();
    o.replicated(&out, live.clone(), Via::OwnExchange, Relay::Nowhere);
    for f in &missed {
        o.replicated(&out, f.clone(), Via::OwnExchange, Relay::Nowhere);
    }
    let want: Vec<String> = missed.iter().map(json).collect();
    assert_eq!(delivered(&out), want);
    // Behind the newest delivered of 9: stored, not delivered.
    o.replicated(&out, news("q", 9, 5), Via::OwnExchange, Relay::Nowhere);
    // Another server's, in this exchange: stored only.
    o.replicated(&out, news("q", 8, 20), Via::Exchange, Relay::Nowhere);
    // From before this owner started: history.
    let old = MsgFrame::new(
        "q",
        b"{}",
        MsgKey {
            sent_us: 1000,
            origin: 9,
        },
    );
    o.replicated(&out, old, Via::OwnExchange, Relay::Nowhere);
    assert!(delivered(&out).is_empty());
}
