//! What one connection may do: its user's permission lists with `%u`
//! already replaced by the user's name, ready for [`Perms::allows`], which
//! runs on every publish and so neither allocates nor parses.

use std::fmt;

use coremq_config::glob_match;

/// Something done to a queue that a permission list controls.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Action {
    /// Send to a queue (`publish`).
    Publish,
    /// Receive a queue's new messages (`subscribe`).
    Subscribe,
    /// Read a queue's stored messages (`history`).
    History,
    /// Read a key of the key-value store (`kv_read`): `coremq_get`, and
    /// subscribing to the key's `$kv.<key>` watch queue.
    KvRead,
    /// Change a key (`kv_write`): `coremq_set`, `coremq_delete`, `coremq_incr`.
    KvWrite,
}

impl fmt::Display for Action {
    /// The word of `ERROR: Permission denied: <action> <queue>` and of the
    /// users file's key.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Action::Publish => "publish",
            Action::Subscribe => "subscribe",
            Action::History => "history",
            Action::KvRead => "kv_read",
            Action::KvWrite => "kv_write",
        })
    }
}

/// One permission list, compiled just enough for a fast check.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Patterns {
    /// One of the patterns is all stars: it matches every queue, so the
    /// common `publish = *` costs one branch instead of a glob per message.
    all: bool,
    /// The patterns, `%u` expanded.
    list: Box<[Box<str>]>,
}

impl Patterns {
    /// Patterns already checked with [`check_pattern`] and expanded.
    pub(crate) fn new(list: Vec<String>) -> Patterns {
        Patterns {
            all: list
                .iter()
                .any(|p| !p.is_empty() && p.bytes().all(|b| b == b'*')),
            list: list.into_iter().map(String::into_boxed_str).collect(),
        }
    }

    fn matches(&self, queue: &str) -> bool {
        self.all || self.list.iter().any(|p| glob_match(p, queue))
    }

    fn is_empty(&self) -> bool {
        self.list.is_empty()
    }
}

/// A connection's rights: the allow lists and `deny` of its user's section
/// (or token), plus the two flags that are not about one queue.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Perms {
    pub(crate) publish: Patterns,
    pub(crate) subscribe: Patterns,
    pub(crate) history: Patterns,
    /// Key patterns of the key-value store (a namespace of its own: `deny`
    /// lists queues and does not apply to keys).
    pub(crate) kv_read: Patterns,
    pub(crate) kv_write: Patterns,
    /// Wins over every allow list: the way to carve a secret queue out of a
    /// broad `*`, which a token's claim cannot undo.
    pub(crate) deny: Patterns,
    pub(crate) direct: bool,
    pub(crate) monitor: bool,
}

impl Perms {
    /// Whether `action` on `queue` (a key, for the key-value actions) is
    /// allowed: some allow pattern of that action matches and, for queues,
    /// no `deny` pattern does.
    pub fn allows(&self, action: Action, queue: &str) -> bool {
        let allow = match action {
            Action::Publish => &self.publish,
            Action::Subscribe => &self.subscribe,
            Action::History => &self.history,
            Action::KvRead => return self.kv_read.matches(queue),
            Action::KvWrite => return self.kv_write.matches(queue),
        };
        allow.matches(queue) && !self.deny.matches(queue)
    }

    /// Whether the key-value `action` is allowed on every key there is (a
    /// pattern of stars only): what emptying the whole store takes.
    pub fn allows_every_key(&self, action: Action) -> bool {
        match action {
            Action::KvRead => self.kv_read.all,
            Action::KvWrite => self.kv_write.all,
            _ => false,
        }
    }

    /// Whether the connection may publish to connection ids (PROTOCOL.md §2).
    pub fn direct(&self) -> bool {
        self.direct
    }

    /// Whether the connection may use `coremq_status`, `/status`, `/metrics`
    /// and the dashboard.
    pub fn monitor(&self) -> bool {
        self.monitor
    }

    /// Whether these rights allow nothing at all, so the broker can treat
    /// the connection as unauthenticated (`Authentication required`, the
    /// `auth_timeout` close). A `deny = *` cancels every allow list.
    pub fn grants_nothing(&self) -> bool {
        let no_queue = self.deny.all
            || (self.publish.is_empty() && self.subscribe.is_empty() && self.history.is_empty());
        let no_key = self.kv_read.is_empty() && self.kv_write.is_empty();
        no_queue && no_key && !self.direct && !self.monitor
    }

    /// No rights: what a connection has before it authenticates when the
    /// users file has no `[anonymous]` section.
    pub fn nothing() -> Perms {
        Perms {
            publish: Patterns::default(),
            subscribe: Patterns::default(),
            history: Patterns::default(),
            kv_read: Patterns::default(),
            kv_write: Patterns::default(),
            deny: Patterns::default(),
            direct: false,
            monitor: false,
        }
    }

    /// Every right: what every connection has when no `users_file` is set,
    /// so the broker can check permissions the same way in both cases.
    pub fn everything() -> Perms {
        let all = || Patterns::new(vec!["*".to_owned()]);
        Perms {
            publish: all(),
            subscribe: all(),
            history: all(),
            kv_read: all(),
            kv_write: all(),
            deny: Patterns::default(),
            direct: true,
            monitor: true,
        }
    }
}

/// Checks one queue pattern as written (before `%u` is expanded); the error
/// says what a pattern may hold.
pub(crate) fn check_pattern(pattern: &str) -> Result<(), String> {
    if !pattern.is_empty() && pattern.bytes().all(|b| b.is_ascii_graphic()) {
        return Ok(());
    }
    let shown = if pattern.is_empty() {
        "an empty item".to_owned()
    } else {
        format!("{pattern:?}")
    };
    Err(format!(
        "{shown} is not a queue pattern (expected comma-separated patterns of printable \
         ASCII without spaces: * any run, ? one character, %u the user's name)"
    ))
}

/// `pattern` with every `%u` replaced by `user`. User names are restricted to
/// `[A-Za-z0-9._@-]`, so what comes out is still a pattern and matches only
/// that user's queues: a name cannot smuggle in a `*`.
pub(crate) fn expand(pattern: &str, user: &str) -> String {
    pattern.replace("%u", user)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn perms(publish: &[&str], deny: &[&str]) -> Perms {
        let list = |l: &[&str]| Patterns::new(l.iter().map(|s| s.to_string()).collect());
        Perms {
            publish: list(publish),
            deny: list(deny),
            ..Perms::nothing()
        }
    }

    #[test]
    fn star_and_question_mark() {
        let p = perms(&["orders.*", "q?"], &[]);
        assert!(p.allows(Action::Publish, "orders.1"));
        assert!(p.allows(Action::Publish, "orders."));
        assert!(!p.allows(Action::Publish, "orders"));
        assert!(p.allows(Action::Publish, "q1"));
        assert!(!p.allows(Action::Publish, "q"));
        assert!(!p.allows(Action::Publish, "q12"));
        // Lists are per action.
        assert!(!p.allows(Action::Subscribe, "orders.1"));
        assert!(!p.allows(Action::History, "q1"));
    }

    #[test]
    fn deny_beats_allow() {
        let p = perms(&["*"], &["orders.secret", "admin.*"]);
        assert!(p.allows(Action::Publish, "orders.public"));
        assert!(!p.allows(Action::Publish, "orders.secret"));
        assert!(!p.allows(Action::Publish, "admin.x"));
        let p = perms(&["orders.*"], &["*"]);
        assert!(!p.allows(Action::Publish, "orders.1"));
        assert!(p.grants_nothing());
    }

    #[test]
    fn all_stars_match_everything() {
        let p = perms(&["**"], &[]);
        assert!(p.publish.all);
        assert!(p.allows(Action::Publish, ""));
        assert!(p.allows(Action::Publish, "anything at all"));
        assert!(!perms(&["a*"], &[]).publish.all);
        let empty = perms(&[""], &[]);
        assert!(!empty.allows(Action::Publish, "x") && empty.allows(Action::Publish, ""));
    }

    #[test]
    fn nothing_everything_and_flags() {
        let n = Perms::nothing();
        assert!(n.grants_nothing() && !n.direct() && !n.monitor());
        assert!(!n.allows(Action::History, "x"));
        let e = Perms::everything();
        assert!(!e.grants_nothing() && e.direct() && e.monitor());
        for a in [
            Action::Publish,
            Action::Subscribe,
            Action::History,
            Action::KvRead,
            Action::KvWrite,
        ] {
            assert!(e.allows(a, "any.queue"));
            assert!(!n.allows(a, "any.queue"));
        }
        assert!(!perms(&["x"], &[]).grants_nothing());
        assert!(!Perms {
            direct: true,
            ..Perms::nothing()
        }
        .grants_nothing());
        assert!(!Perms {
            monitor: true,
            ..Perms::nothing()
        }
        .grants_nothing());
        // Key rights are rights too (a memcached-only anonymous user).
        assert!(!Perms {
            kv_read: Patterns::new(vec!["cache.*".into()]),
            ..Perms::nothing()
        }
        .grants_nothing());
    }

    #[test]
    fn key_rights_are_their_own_namespace() {
        let p = Perms {
            kv_read: Patterns::new(vec!["cache.*".into()]),
            kv_write: Patterns::new(vec!["cache.mine".into()]),
            deny: Patterns::new(vec!["cache.*".into()]),
            ..Perms::nothing()
        };
        // `deny` lists queues: it does not take keys away.
        assert!(p.allows(Action::KvRead, "cache.x"));
        assert!(!p.allows(Action::KvWrite, "cache.x"));
        assert!(p.allows(Action::KvWrite, "cache.mine"));
        assert!(!p.allows(Action::KvRead, "other"));
        // ... and key rights give no queue rights.
        assert!(!p.allows(Action::Subscribe, "cache.x"));
        assert!(!p.allows_every_key(Action::KvRead));
        let any = Perms {
            kv_write: Patterns::new(vec!["?".into(), "**".into()]),
            ..Perms::nothing()
        };
        assert!(any.allows_every_key(Action::KvWrite));
        let one_char = Perms {
            kv_write: Patterns::new(vec!["?".into()]),
            ..Perms::nothing()
        };
        assert!(
            one_char.allows(Action::KvWrite, "*") && !one_char.allows_every_key(Action::KvWrite)
        );
        assert_eq!(Action::KvRead.to_string(), "kv_read");
        assert_eq!(Action::KvWrite.to_string(), "kv_write");
    }

    #[test]
    fn action_words() {
        assert_eq!(Action::Publish.to_string(), "publish");
        assert_eq!(Action::Subscribe.to_string(), "subscribe");
        assert_eq!(Action::History.to_string(), "history");
    }

    #[test]
    fn pattern_alphabet_and_expansion() {
        for ok in ["a", "*", "?", "chat.%u", "a!~#", "%"] {
            assert!(check_pattern(ok).is_ok(), "{ok}");
        }
        for bad in ["", "a b", "caf\u{e9}", "tab\t", "\u{7f}"] {
            assert!(check_pattern(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            check_pattern("a b").unwrap_err(),
            "\"a b\" is not a queue pattern (expected comma-separated patterns of printable \
             ASCII without spaces: * any run, ? one character, %u the user's name)"
        );
        assert_eq!(expand("chat.%u.%u", "bob"), "chat.bob.bob");
        assert_eq!(expand("100%", "bob"), "100%");
    }
}
