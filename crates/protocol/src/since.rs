//! `coremq_since` beside `coremq_subscribe` (PROTOCOL.md §10): the position a
//! client has every message up to, per queue, so that a subscribe resumes
//! after it.

use serde::Deserialize;
use std::collections::{BTreeMap, HashSet};

use crate::body::validate_queue_name;
use crate::error::BodyError;
use crate::publish::seconds_to_micros;

/// What `coremq_since` takes.
const SINCE: &str =
    "an object of queue names and positions (or lists of positions, one per server), e.g. {\"news\": {\"sent\": 1796182109.38108, \"server\": \"mq1:6747\"}}";

/// Most positions one queue's entry may list (one per origin server).
const MAX_POSITIONS: usize = 64;

/// A message's position: its `coremq_sent` and `coremq_server`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Position {
    /// `coremq_sent` in whole microseconds.
    pub sent_us: u64,
    /// `coremq_server`.
    pub server: String,
}

/// Parses `coremq_since`, in queue-name order; every queue it names must be
/// one being subscribed to (`names`), so that a typo is reported, not
/// ignored. A
/// queue's entry is one position, or a list of positions one per origin
/// server (in a cluster, another node's message stamped before the last one
/// a client got can arrive after it: per-server positions still find it).
pub(crate) fn since(
    value: &str,
    names: &[String],
    max_queue_len: usize,
) -> Result<Vec<(String, Vec<Position>)>, BodyError> {
    /// One position as the client writes it (unknown fields refused: a
    /// misspelt `sever` must not read as "no server").
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Raw {
        sent: f64,
        server: String,
    }
    /// One position, or several.
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Entry {
        One(Raw),
        Many(Vec<Raw>),
    }
    let bad = || BodyError::BadCommand {
        command: "coremq_since",
        expected: SINCE,
    };
    let map: BTreeMap<String, Entry> = serde_json::from_str(value).map_err(|_| bad())?;
    // A set, not a scan of `names` per entry: both lists are the client's,
    // and their product must not be what a request costs.
    let subscribing: HashSet<&str> = names.iter().map(String::as_str).collect();
    let mut out = Vec::with_capacity(map.len());
    for (queue, entry) in map {
        validate_queue_name(queue.as_bytes(), max_queue_len)
            .map_err(|_| BodyError::bad_name_in("coremq_since", &queue, max_queue_len))?;
        let raws = match entry {
            Entry::One(raw) => vec![raw],
            Entry::Many(raws) => raws,
        };
        let reason = if !subscribing.contains(queue.as_str()) {
            Some("is not in coremq_subscribe")
        } else if raws.is_empty() || raws.len() > MAX_POSITIONS {
            Some("lists no position, or more than 64")
        } else if raws
            .iter()
            .any(|r| !r.sent.is_finite() || r.sent <= 0.0 || r.server.is_empty())
        {
            Some("needs a positive \"sent\" and a non-empty \"server\" (a message's coremq_sent and coremq_server)")
        } else {
            None
        };
        if let Some(reason) = reason {
            return Err(BodyError::BadSince { queue, reason });
        }
        let positions = raws
            .into_iter()
            .map(|r| Position {
                sent_us: seconds_to_micros(r.sent),
                server: r.server,
            })
            .collect();
        out.push((queue, positions));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn positions_per_queue() {
        let got = since(
            r#"{"news": {"sent": 1796182109.381080, "server": "mq1:6747"}}"#,
            &names(&["news", "sport"]),
            255,
        )
        .unwrap();
        assert_eq!(
            got,
            vec![(
                "news".to_owned(),
                vec![Position {
                    sent_us: 1_796_182_109_381_080,
                    server: "mq1:6747".to_owned()
                }]
            )]
        );
        let got = since(
            r#"{"news": [{"sent": 2.0, "server": "a:1"}, {"sent": 1.5, "server": "b:1"}]}"#,
            &names(&["news"]),
            255,
        )
        .unwrap();
        assert_eq!(got[0].1.len(), 2);
        assert_eq!(got[0].1[1].sent_us, 1_500_000);
        // In queue-name order, whatever the client's order (the broker
        // looks entries up by binary search).
        let got = since(
            r#"{"b": {"sent": 1.0, "server": "s"}, "a": {"sent": 1.0, "server": "s"}}"#,
            &names(&["b", "a"]),
            255,
        )
        .unwrap();
        let order: Vec<&str> = got.iter().map(|(q, _)| q.as_str()).collect();
        assert_eq!(order, ["a", "b"]);
        assert!(since(r#"{"news": []}"#, &names(&["news"]), 255).is_err());
    }

    #[test]
    fn refusals() {
        let n = names(&["news"]);
        for bad in [
            "[]",
            r#"{"news": 1}"#,
            r#"{"news": {"sent": 1.0}}"#,
            r#"{"news": {"sent": "1", "server": "a"}}"#,
            r#"{"news": {"sent": 1.0, "server": "a", "x": 1}}"#,
        ] {
            assert!(
                matches!(since(bad, &n, 255), Err(BodyError::BadCommand { .. })),
                "{bad}"
            );
        }
        assert_eq!(
            since(r#"{"other": {"sent": 1.0, "server": "a"}}"#, &n, 255)
                .unwrap_err()
                .to_string(),
            "coremq_since: \"other\" is not in coremq_subscribe"
        );
        assert!(since(r#"{"news": {"sent": -1.0, "server": "a"}}"#, &n, 255).is_err());
        assert!(since(r#"{"news": {"sent": 1.0, "server": ""}}"#, &n, 255).is_err());
    }
}
