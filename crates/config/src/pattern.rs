//! Per-queue history lengths (`queue_history = chat.*:100, audit:1000`).
//! The broker asks for a queue's length once, when it creates the queue's ring
//! buffer, so matching is simple and allocation-free rather than compiled.

use crate::value;

/// One `PATTERN:LENGTH` entry of `queue_history`: queues whose name matches
/// `pattern` keep `length` messages of history instead of `history_length`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueueHistoryRule {
    /// Glob over the queue name: `*` matches any run of characters (also none),
    /// `?` exactly one character; everything else matches itself.
    pub pattern: String,
    /// Messages kept for matching queues; 0 keeps no history at all.
    pub length: usize,
}

/// What happens to a subscriber that has more than `max_pending` bytes
/// waiting (PROTOCOL.md G5, §9).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SlowConsumerPolicy {
    /// Stop reading the queue's publishers until it catches up, for at most
    /// `max_stall`; then disconnect it.
    Block,
    /// Disconnect it at once; publishers never wait.
    Disconnect,
    /// Skip messages while it is over, then tell it how many it missed.
    Drop,
}

/// One `PATTERN:POLICY` entry of `slow_consumer_policy`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyRule {
    /// Glob over the queue name, as in `queue_history`.
    pub pattern: String,
    /// The policy of matching queues.
    pub policy: SlowConsumerPolicy,
}

impl PolicyRule {
    /// Whether `queue` matches this rule's pattern.
    pub fn matches(&self, queue: &str) -> bool {
        glob_match(&self.pattern, queue)
    }
}

/// Parses `slow_consumer_policy`: comma-separated `PATTERN:POLICY`.
pub(crate) fn parse_policy_rules(text: &str) -> Result<Vec<PolicyRule>, String> {
    value::list(text)
        .map(|entry| {
            let bad = |why: &str| {
                format!(
                    "entry \"{entry}\" {why} (expected comma-separated PATTERN:POLICY with \
                     POLICY block, disconnect or drop, e.g. *:block, metrics.*:drop)"
                )
            };
            let (pattern, policy) = entry
                .rsplit_once(':')
                .ok_or_else(|| bad("has no ':POLICY'"))?;
            let pattern = pattern.trim();
            if pattern.is_empty() || pattern.bytes().any(|b| b.is_ascii_whitespace()) {
                return Err(bad("has an empty pattern or one with spaces"));
            }
            let policy = match policy.trim() {
                "block" => SlowConsumerPolicy::Block,
                "disconnect" => SlowConsumerPolicy::Disconnect,
                "drop" => SlowConsumerPolicy::Drop,
                _ => return Err(bad("has an unknown policy")),
            };
            Ok(PolicyRule {
                pattern: pattern.to_owned(),
                policy,
            })
        })
        .collect()
}

/// Same ceiling as `history_length`: a ring buffer per queue must stay bounded.
pub(crate) const MAX_HISTORY: usize = 1_000_000;

impl QueueHistoryRule {
    /// Whether `queue` matches this rule's pattern (the whole name, not a prefix).
    pub fn matches(&self, queue: &str) -> bool {
        glob_match(&self.pattern, queue)
    }
}

/// Whether all of `text` matches glob `pattern`: `*` matches any run of
/// characters (also none), `?` exactly one character, everything else itself.
/// The one matcher for queue names (`queue_history`, `slow_consumer_policy`,
/// the users file's permissions), so they all read a pattern the same way.
/// Allocation-free; the access-control check runs it on every publish.
///
/// Iterative, with single-star backtracking: on a mismatch, the most recent
/// `*` takes one more character and matching resumes after it. That is enough
/// because an earlier `*` never needs to give back what a later one can take.
/// Works on UTF-8 bytes; `?` and the backtracking step move by whole
/// characters so `?` means one character, not one byte.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let (pattern, text) = (pattern.as_bytes(), text.as_bytes());
    let (mut p, mut t) = (0, 0);
    // (pattern index just after the last `*`, text index where its match ends)
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        match pattern.get(p) {
            Some(b'*') => {
                p += 1;
                star = Some((p, t));
            }
            Some(b'?') => {
                p += 1;
                t += char_len(text[t]);
            }
            Some(&c) if c == text[t] => {
                p += 1;
                t += 1;
            }
            _ => match star {
                Some((after_star, end)) => {
                    let end = end + char_len(text[end]);
                    star = Some((after_star, end));
                    p = after_star;
                    t = end;
                }
                None => return false,
            },
        }
    }
    pattern[p.min(pattern.len())..].iter().all(|&c| c == b'*')
}

/// Length of the UTF-8 character starting with byte `lead`.
fn char_len(lead: u8) -> usize {
    match lead {
        0xF0.. => 4,
        0xE0.. => 3,
        0xC0.. => 2,
        _ => 1,
    }
}

/// One entry of `history_ttl`: matching queues keep a message of history at
/// most `ttl` (zero: as long as `history_length` allows).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HistoryTtlRule {
    /// Glob over the queue name, as in [`QueueHistoryRule`].
    pub pattern: String,
    /// How long a message stays in the history.
    pub ttl: std::time::Duration,
}

impl HistoryTtlRule {
    /// Whether `queue` matches this rule's pattern.
    pub fn matches(&self, queue: &str) -> bool {
        glob_match(&self.pattern, queue)
    }
}

/// Longest `history_ttl` accepted: a week (history is memory).
const MAX_TTL_SECS: usize = 7 * 24 * 3600;

/// Parses `history_ttl`: `SECONDS` for every queue, or comma-separated
/// `PATTERN:SECONDS` (first match wins), in order.
pub(crate) fn parse_ttl_rules(text: &str) -> Result<Vec<HistoryTtlRule>, String> {
    value::list(text)
        .map(|entry| {
            let bad = |why: &str| {
                format!(
                    "entry \"{entry}\" {why} (expected SECONDS, or comma-separated \
                     PATTERN:SECONDS with SECONDS 0-{MAX_TTL_SECS}, e.g. chat.*:300, audit:0)"
                )
            };
            let (pattern, secs) = entry.rsplit_once(':').unwrap_or(("*", entry));
            let pattern = pattern.trim();
            if pattern.is_empty() || pattern.bytes().any(|b| b.is_ascii_whitespace()) {
                return Err(bad("has an empty pattern or one with spaces"));
            }
            let secs = value::count(secs.trim(), 0, MAX_TTL_SECS, "")
                .map_err(|_| bad("has a bad number of seconds"))?;
            Ok(HistoryTtlRule {
                pattern: pattern.to_owned(),
                ttl: std::time::Duration::from_secs(secs as u64),
            })
        })
        .collect()
}

/// Parses `queue_history`: comma-separated `PATTERN:LENGTH`, in order.
pub(crate) fn parse_rules(text: &str) -> Result<Vec<QueueHistoryRule>, String> {
    value::list(text)
        .map(|entry| {
            let bad = |why: &str| {
                format!(
                    "entry \"{entry}\" {why} (expected comma-separated PATTERN:LENGTH \
                     with LENGTH 0-{MAX_HISTORY}, e.g. chat.*:100, audit:1000)"
                )
            };
            let (pattern, length) = entry
                .rsplit_once(':')
                .ok_or_else(|| bad("has no ':LENGTH'"))?;
            let pattern = pattern.trim();
            if pattern.is_empty() || pattern.bytes().any(|b| b.is_ascii_whitespace()) {
                return Err(bad("has an empty pattern or one with spaces"));
            }
            let length = value::count(length.trim(), 0, MAX_HISTORY, "")
                .map_err(|_| bad("has a bad length"))?;
            Ok(QueueHistoryRule {
                pattern: pattern.to_owned(),
                length,
            })
        })
        .collect()
}

#[cfg(test)]
mod ttl_tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn ttl_rules_parse_and_refuse() {
        let rules = parse_ttl_rules("300").unwrap();
        assert_eq!(
            rules,
            [HistoryTtlRule {
                pattern: "*".into(),
                ttl: Duration::from_secs(300)
            }]
        );
        let rules = parse_ttl_rules("chat.*:60, audit:0").unwrap();
        assert!(rules[0].matches("chat.x") && !rules[0].matches("audit"));
        assert_eq!(rules[1].ttl, Duration::ZERO);
        for bad in ["x", "chat.*:", ":5", "a b:5", "chat:-1", "chat:999999999"] {
            assert!(parse_ttl_rules(bad).is_err(), "{bad}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_rules_parse_and_refuse() {
        let r = parse_policy_rules("metrics.*:drop, audit: disconnect ,*:block").unwrap();
        assert_eq!(r.len(), 3);
        assert_eq!(r[0].policy, SlowConsumerPolicy::Drop);
        assert_eq!(r[1].pattern, "audit");
        assert_eq!(r[1].policy, SlowConsumerPolicy::Disconnect);
        assert!(r[0].matches("metrics.cpu") && !r[0].matches("metric"));
        for bad in ["x", "*:fast", ":block", "a b:drop"] {
            assert!(parse_policy_rules(bad).is_err(), "{bad}");
        }
    }

    fn m(pattern: &str, queue: &str) -> bool {
        QueueHistoryRule {
            pattern: pattern.into(),
            length: 0,
        }
        .matches(queue)
    }

    #[test]
    fn star_alone_matches_everything() {
        assert!(m("*", ""));
        assert!(m("*", "a"));
        assert!(m("*", "chat.room.1"));
        assert!(m("**", "x"));
    }

    #[test]
    fn exact_match_is_whole_name() {
        assert!(m("audit", "audit"));
        assert!(!m("audit", "audit2"));
        assert!(!m("audit", "xaudit"));
        assert!(!m("audit", "audi"));
        assert!(!m("audit", ""));
        assert!(m("", ""));
        assert!(!m("", "a"));
    }

    #[test]
    fn prefix_suffix_and_infix_stars() {
        assert!(m("chat.*", "chat."));
        assert!(m("chat.*", "chat.room"));
        assert!(!m("chat.*", "chat"));
        assert!(m("*.log", "app.log"));
        assert!(!m("*.log", "app.log.1"));
        assert!(m("a*b*c", "abc"));
        assert!(m("a*b*c", "aXbYc"));
        assert!(m("a*b*c", "abbbcbc"));
        assert!(m("a*b*c", "a-b-b-c-c"));
        assert!(!m("a*b*c", "aXbY"));
        assert!(!m("a*b*c", "acb"));
        assert!(!m("a*b*c", "Xabc"));
    }

    #[test]
    fn question_mark_is_one_character() {
        assert!(m("?", "a"));
        assert!(!m("?", ""));
        assert!(!m("?", "ab"));
        assert!(m("q?", "q1"));
        assert!(!m("q?", "q"));
        assert!(m("??*", "ab"));
        assert!(!m("??*", "a"));
        assert!(m("a?c*", "abcdef"));
        // One character even when it is several bytes.
        assert!(m("?", "é"));
        assert!(m("caf?", "café"));
        assert!(!m("??", "é"));
        assert!(m("*é", "caféé"));
    }

    #[test]
    fn parse_entries() {
        let rules = parse_rules(" chat.*:100, audit : 1000 ,, tmp.*:0,").unwrap();
        assert_eq!(
            rules,
            [
                QueueHistoryRule {
                    pattern: "chat.*".into(),
                    length: 100
                },
                QueueHistoryRule {
                    pattern: "audit".into(),
                    length: 1000
                },
                QueueHistoryRule {
                    pattern: "tmp.*".into(),
                    length: 0
                },
            ]
        );
        // The last ':' separates the length, so a pattern may contain ':'.
        assert_eq!(parse_rules("a:b:5").unwrap()[0].pattern, "a:b");
        assert!(parse_rules("").unwrap().is_empty());
    }

    #[test]
    fn bad_entries() {
        for bad in ["chat.*", ":5", "chat:x", "chat:-1", "chat:1000001", "a b:1"] {
            let err = parse_rules(bad).unwrap_err();
            assert!(err.contains(bad), "{bad}: {err}");
        }
    }
}
