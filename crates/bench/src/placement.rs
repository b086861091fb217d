//! Where a CoreMQ run's traffic went: the shard its publisher lived on, the shard
//! that delivered to its subscriber, and the shard that owned its queue.
//!
//! With more than one shard, a connection stays on the shard that accepted it (the
//! kernel picks by a hash of the addresses) and a queue lives on the shard its name
//! hashes to, so every 1→1 run draws a placement, and the draw moves its msg/s by
//! up to a third (`bench/results/ANALYSIS.md`). The broker's per-shard counters
//! (`coremq_status`) before and after a run tell which it drew: the shard whose
//! `messages_in` grew took the publishes, the one whose `messages_out` grew
//! delivered them, and the one whose `history_messages` grew owns the queue (the
//! harness names its queues anew in every run, so the owner's history grows).
//!
//! Runs with several publishers, subscribers or queues (fan-out, 4×4) draw too:
//! their [`Spread`] says how many of each landed on every shard, from each
//! shard's share of the same counters' growth.

use crate::conn::handshake;
use crate::conn::{Proto, Target};
use crate::error::BenchError;
use crate::report::Report;
use crate::wire;
use serde_json::Value;

/// One shard's counters, as far as placement needs them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ShardCounts {
    /// The shard's index.
    pub shard: usize,
    /// Publishes the shard accepted from its connections.
    pub messages_in: u64,
    /// Deliveries the shard wrote to its connections.
    pub messages_out: u64,
    /// Messages in the histories of the queues the shard owns.
    pub history_messages: u64,
}

/// The shards a run's publisher, subscriber and queue were on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Placement {
    /// The publisher's shard (its publishes were parsed and stamped there).
    pub publisher: usize,
    /// The subscriber's shard (its deliveries were written there).
    pub subscriber: usize,
    /// The queue's owner (history and order).
    pub owner: usize,
}

impl Placement {
    /// Which hops between shards a message made: `no hop`, `deliveries cross`
    /// (publisher at the owner, subscriber elsewhere), `publishes cross` (the
    /// reverse), `both hops` (publisher and subscriber together, the owner
    /// elsewhere) or `all apart` (three shards).
    pub fn label(&self) -> &'static str {
        let (x, y, o) = (self.publisher, self.subscriber, self.owner);
        match (x == o, y == o, x == y) {
            (true, true, _) => "no hop",
            (true, false, _) => "deliveries cross",
            (false, true, _) => "publishes cross",
            (false, false, true) => "both hops",
            (false, false, false) => "all apart",
        }
    }
}

/// The placement the counters' growth between `before` and `after` shows; `None`
/// when the two do not list the same shards or a counter grew nowhere (no
/// message went through, or the queue existed before and kept no new history).
pub fn placement(before: &[ShardCounts], after: &[ShardCounts]) -> Option<Placement> {
    if before.len() != after.len() || after.is_empty() {
        return None;
    }
    // The shard where `field` grew most (a tie goes to the lower index).
    let grew_most = |field: fn(&ShardCounts) -> u64| -> Option<usize> {
        let mut best: Option<(u64, usize)> = None;
        for a in after {
            let b = before.iter().find(|b| b.shard == a.shard)?;
            let grown = field(a).saturating_sub(field(b));
            if grown > 0 && best.is_none_or(|(most, _)| grown > most) {
                best = Some((grown, a.shard));
            }
        }
        best.map(|(_, shard)| shard)
    };
    Some(Placement {
        publisher: grew_most(|c| c.messages_in)?,
        subscriber: grew_most(|c| c.messages_out)?,
        owner: grew_most(|c| c.history_messages)?,
    })
}

/// How a run's publishers, subscribers and queues spread over the shards: how
/// many of each every shard had, by shard index.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Spread {
    /// Publishers whose publishes each shard parsed (their connections' shard).
    pub publishers: Vec<usize>,
    /// Subscribers each shard delivered to.
    pub subscribers: Vec<usize>,
    /// Queues each shard owns.
    pub queues: Vec<usize>,
}

impl Spread {
    /// `publishers 3+1, subscribers 2+2, queues 1+3` (shard 0 first).
    pub fn label(&self) -> String {
        let join = |v: &[usize]| {
            v.iter()
                .map(|n| n.to_string())
                .collect::<Vec<_>>()
                .join("+")
        };
        format!(
            "publishers {}, subscribers {}, queues {}",
            join(&self.publishers),
            join(&self.subscribers),
            join(&self.queues)
        )
    }
}

/// The spread the counters' growth between `before` and `after` shows for a run
/// of `publishers` publishers and `subscribers` subscribers that each carried
/// the same number of messages, on `queues` queues whose histories all grew
/// alike: each shard's share of each counter's growth, times the count,
/// rounded. `None` when the shard lists differ or a counter grew nowhere.
pub fn spread(
    before: &[ShardCounts],
    after: &[ShardCounts],
    publishers: usize,
    subscribers: usize,
    queues: usize,
) -> Option<Spread> {
    if before.len() != after.len() || after.is_empty() {
        return None;
    }
    let grown = |field: fn(&ShardCounts) -> u64| -> Option<Vec<u64>> {
        after
            .iter()
            .map(|a| {
                let b = before.iter().find(|b| b.shard == a.shard)?;
                Some(field(a).saturating_sub(field(b)))
            })
            .collect()
    };
    let share = |field: fn(&ShardCounts) -> u64, n: usize| -> Option<Vec<usize>> {
        let g = grown(field)?;
        let total: u64 = g.iter().sum();
        (total > 0).then(|| {
            g.iter()
                .map(|&x| ((x as f64 / total as f64) * n as f64).round() as usize)
                .collect()
        })
    };
    // Listed by shard index, whatever order the status gave.
    let mut order: Vec<usize> = (0..after.len()).collect();
    order.sort_by_key(|&i| after[i].shard);
    let by_shard = |v: Vec<usize>| order.iter().map(|&i| v[i]).collect();
    Some(Spread {
        publishers: by_shard(share(|c| c.messages_in, publishers)?),
        subscribers: by_shard(share(|c| c.messages_out, subscribers)?),
        queues: by_shard(share(|c| c.history_messages, queues)?),
    })
}

/// Runs `run` between two readings of the broker's counters and puts the placement
/// they show into its report. A reading that fails does not fail the run: the
/// report says so in a note and has no placement.
pub fn measured(
    t: &Target,
    run: impl FnOnce() -> Result<Report, BenchError>,
) -> Result<Report, BenchError> {
    around(t, run, |report, before, after| {
        report.placement = placement(before, after);
        report.placement.is_some()
    })
}

/// Like [`measured`], for a run of several `publishers`, `subscribers` and
/// `queues`: puts their [`Spread`] into the report.
pub fn measured_spread(
    t: &Target,
    (publishers, subscribers, queues): (usize, usize, usize),
    run: impl FnOnce() -> Result<Report, BenchError>,
) -> Result<Report, BenchError> {
    around(t, run, |report, before, after| {
        report.spread = spread(before, after, publishers, subscribers, queues);
        report.spread.is_some()
    })
}

/// Reads the counters before and after `run` and hands both to `apply`, which
/// says whether they showed anything; a failed reading or a `false` becomes a
/// note.
fn around(
    t: &Target,
    run: impl FnOnce() -> Result<Report, BenchError>,
    apply: impl FnOnce(&mut Report, &[ShardCounts], &[ShardCounts]) -> bool,
) -> Result<Report, BenchError> {
    let before = shard_counts(t);
    let mut report = run()?;
    if report.skipped.is_some() {
        return Ok(report);
    }
    match (before, shard_counts(t)) {
        (Ok(before), Ok(after)) => {
            if !apply(&mut report, &before, &after) {
                report
                    .notes
                    .push("placement unknown: the shard counters did not show it".into());
            }
        }
        (Err(e), _) | (_, Err(e)) => report.notes.push(format!("placement unknown: {e}")),
    }
    Ok(report)
}

/// Reads the per-shard counters out of a `coremq_status` reply.
pub fn parse_shards(status: &Value) -> Result<Vec<ShardCounts>, BenchError> {
    let bad = |why: &str| BenchError::Handshake {
        context: format!("CoreMQ status ({why})"),
        reply: crate::error::preview(status.to_string().as_bytes()),
    };
    let shards = status["shards"]
        .as_array()
        .ok_or_else(|| bad("no shards list"))?;
    shards
        .iter()
        .map(|s| {
            let n = |key: &str| s[key].as_u64().ok_or_else(|| bad(key));
            Ok(ShardCounts {
                shard: usize::try_from(n("shard")?).map_err(|_| bad("shard"))?,
                messages_in: n("messages_in")?,
                messages_out: n("messages_out")?,
                history_messages: n("history_messages")?,
            })
        })
        .collect()
}

/// Asks a CoreMQ broker (TCP, or TLS like `t`) for its per-shard counters, on a connection of its
/// own, logged in with `t`'s credentials (a broker with `users_file` answers
/// status only to a user with `monitor`). Bounded like every set-up step.
pub fn shard_counts(t: &Target) -> Result<Vec<ShardCounts>, BenchError> {
    let mut target = Target::new(Proto::CoreMq, t.addr.clone());
    target.auth = t.auth.clone();
    target.tls = t.tls.clone();
    let mut o = handshake::open(&target, 64 << 10)?;
    let mut req = Vec::new();
    wire::coremq::encode_frame(&mut req, &o.id, br#"{"coremq_status": true}"#);
    o.fs.send(&req, "coremq_status")?;
    // The reply comes on the connection's id; nothing else is sent to it.
    let (_, json) = o.fs.expect_coremq("CoreMQ status")?;
    let status: Value = serde_json::from_slice(&json).map_err(|e| BenchError::Handshake {
        context: format!("CoreMQ status is not JSON ({e})"),
        reply: crate::error::preview(&json),
    })?;
    parse_shards(&status)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn counts(rows: &[(u64, u64, u64)]) -> Vec<ShardCounts> {
        rows.iter()
            .enumerate()
            .map(|(shard, &(i, o, h))| ShardCounts {
                shard,
                messages_in: i,
                messages_out: o,
                history_messages: h,
            })
            .collect()
    }

    #[test]
    fn growth_names_the_shards_and_the_label_the_hops() {
        // Earlier runs left counts everywhere; only the growth counts.
        let before = counts(&[(500, 700, 30), (900, 100, 40)]);
        let cases = [
            // (after, publisher, subscriber, owner, label)
            ([(600, 800, 40), (900, 100, 40)], 0, 0, 0, "no hop"),
            (
                [(600, 700, 40), (900, 200, 40)],
                0,
                1,
                0,
                "deliveries cross",
            ),
            (
                [(500, 800, 40), (1000, 100, 40)],
                1,
                0,
                0,
                "publishes cross",
            ),
            ([(600, 800, 30), (900, 100, 50)], 0, 0, 1, "both hops"),
        ];
        for (after, x, y, o, label) in cases {
            let p = placement(&before, &counts(&after)).expect("placement");
            assert_eq!((p.publisher, p.subscriber, p.owner), (x, y, o), "{after:?}");
            assert_eq!(p.label(), label);
        }
        let apart = Placement {
            publisher: 0,
            subscriber: 1,
            owner: 2,
        };
        assert_eq!(apart.label(), "all apart");
    }

    #[test]
    fn the_shard_that_grew_most_wins() {
        // A status connection or a straggler elsewhere adds a little; the run's
        // own traffic adds the most.
        let before = counts(&[(0, 0, 0), (0, 0, 0), (0, 0, 0)]);
        let after = counts(&[(3, 1000, 0), (1000, 2, 0), (0, 0, 10)]);
        let p = placement(&before, &after).expect("placement");
        assert_eq!((p.publisher, p.subscriber, p.owner), (1, 0, 2));
        assert_eq!(p.label(), "all apart");
    }

    #[test]
    fn no_placement_without_growth_or_with_other_shards() {
        let before = counts(&[(5, 5, 5), (5, 5, 5)]);
        // Nothing grew.
        assert_eq!(placement(&before, &before), None);
        // No new history (the queue existed before): no owner.
        assert_eq!(placement(&before, &counts(&[(9, 9, 5), (5, 5, 5)])), None);
        // A different shard list.
        assert_eq!(placement(&before, &counts(&[(9, 9, 9)])), None);
        assert_eq!(placement(&[], &[]), None);
    }

    #[test]
    fn spread_counts_what_each_shard_had() {
        // 4×4, 1000 messages per publisher and subscriber, 10 history each:
        // three publishers on shard 0, subscribers two and two, one queue
        // owned by shard 0; a status connection adds a stray count.
        let before = counts(&[(100, 100, 50), (0, 0, 0)]);
        let after = counts(&[(3100, 2101, 60), (1000, 2000, 30)]);
        let sp = spread(&before, &after, 4, 4, 4).expect("spread");
        assert_eq!(sp.publishers, [3, 1]);
        assert_eq!(sp.subscribers, [2, 2]);
        assert_eq!(sp.queues, [1, 3]);
        assert_eq!(sp.label(), "publishers 3+1, subscribers 2+2, queues 1+3");
        // Fan-out: one publisher, ten subscribers, one queue, three shards.
        let before = counts(&[(0, 0, 0), (0, 0, 0), (0, 0, 0)]);
        let after = counts(&[(0, 700, 0), (100, 300, 0), (0, 0, 10)]);
        let sp = spread(&before, &after, 1, 10, 1).expect("spread");
        assert_eq!(
            sp.label(),
            "publishers 0+1+0, subscribers 7+3+0, queues 0+0+1"
        );
        // Listed by shard index whatever order the status used.
        let mut shuffled = counts(&[(0, 700, 0), (100, 300, 0), (0, 0, 10)]);
        shuffled.reverse();
        let mut before_rev = before.clone();
        before_rev.reverse();
        assert_eq!(spread(&before_rev, &shuffled, 1, 10, 1), Some(sp));
        // Nothing grew, or other shards: no spread.
        assert_eq!(spread(&before, &before, 1, 10, 1), None);
        assert_eq!(spread(&before, &counts(&[(1, 1, 1)]), 1, 1, 1), None);
    }

    #[test]
    fn counters_come_from_the_status_reply() {
        let status = json!({"connections": 3, "shards": [
            {"shard": 0, "messages_in": 1, "messages_out": 2, "history_messages": 3, "queues": 9},
            {"shard": 1, "messages_in": 4, "messages_out": 5, "history_messages": 6, "queues": 9},
        ]});
        let got = parse_shards(&status).expect("parsed");
        assert_eq!(got, counts(&[(1, 2, 3), (4, 5, 6)]));
        for bad in [
            json!({"connections": 3}),
            json!({"shards": [{"shard": 0, "messages_in": 1}]}),
            json!({"shards": [{"shard": -1, "messages_in": 1, "messages_out": 1, "history_messages": 1}]}),
        ] {
            let e = parse_shards(&bad).expect_err("refused");
            assert!(e.to_string().contains("CoreMQ status"), "{e}");
        }
    }
}
