//! Where a would-be replicant may connect from when nothing else vouches
//! for it (§6: `cluster_nodes` and `allowed_replicants` list *hosts*).
//!
//! With `cluster_secret` the challenge-response proves who dials, and with
//! `cluster_tls` the client certificate does. Without either, the name a
//! replicant gives is only a claim, and what the original CoreMQ checked —
//! the address the connection comes from — is all there is: it must be the
//! claimed name's host (an IP address, compared as is) or one of the
//! addresses that host name resolves to. Host names are resolved on the
//! executor's blocking thread, never on the shard thread: every listed one
//! when the shard starts ([`Sources::prefetch`]), then again when an answer
//! is older than [`FRESH`] or a claim does not match it, at most once a
//! [`RETRY`] per name. An older answer still admits a matching address
//! (while a new one is sought) for up to [`STALE`]; a name never resolved,
//! or a mismatch against an answer that is not fresh, is refused for now,
//! and the dialer's next attempt (its backoff starts at 100 ms) finds the
//! new answer.

use std::cell::RefCell;
use std::net::{IpAddr, ToSocketAddrs};
use std::rc::Rc;
use std::time::{Duration, Instant};

/// How long a resolution counts (a restarted peer may come back elsewhere).
const FRESH: Duration = Duration::from_secs(30);
/// How long an older resolution still admits the addresses it gave while a
/// new one is sought (a peer redialling after a while is not turned away
/// once by every shard).
const STALE: Duration = Duration::from_secs(600);
/// The shortest time between two resolutions of one name, whatever the
/// would-be replicants send.
const RETRY: Duration = Duration::from_secs(1);

/// The verdict on one connection's source address.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Source {
    /// It is the host's address (or one of them).
    Matches,
    /// It is not: the host's addresses, empty when the name resolves to none.
    Differs(Vec<IpAddr>),
    /// The host name is being resolved; ask again shortly.
    Resolving,
}

/// Resolved host names of one shard (only names that are listed in the
/// configuration reach it, so it stays as small as the lists).
#[derive(Default)]
pub(crate) struct Sources {
    hosts: RefCell<ahash::HashMap<Box<str>, Entry>>,
}

#[derive(Default)]
struct Entry {
    ips: Vec<IpAddr>,
    /// When the last resolution finished.
    done: Option<Instant>,
    /// When the last resolution started.
    started: Option<Instant>,
    busy: bool,
}

impl Sources {
    /// Whether `from` is an address of `host` (`a.b.c.d`, `[v6]` or a DNS
    /// name, as in a `host:port` entry).
    pub(crate) fn check(self: &Rc<Self>, host: &str, from: IpAddr) -> Source {
        let from = from.to_canonical();
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        if let Ok(ip) = bare.parse::<IpAddr>() {
            let ip = ip.to_canonical();
            return if ip == from {
                Source::Matches
            } else {
                Source::Differs(vec![ip])
            };
        }
        let now = Instant::now();
        let mut hosts = self.hosts.borrow_mut();
        let e = hosts.entry(bare.into()).or_default();
        let age = e.done.map(|t| now.duration_since(t));
        let fresh = age.is_some_and(|a| a < FRESH);
        let usable = age.is_some_and(|a| a < STALE);
        let matches = usable && e.ips.contains(&from);
        // Not fresh, or another address (the host may have moved): resolve
        // again, at most once a RETRY.
        if !(fresh && matches) {
            self.start(e, bare, now);
        }
        if matches {
            Source::Matches
        } else if fresh {
            Source::Differs(e.ips.clone())
        } else {
            Source::Resolving
        }
    }

    /// Resolves every host name among `names` (`host:port` entries) now, so
    /// that the first claims find an answer.
    pub(crate) fn prefetch<'a>(self: &Rc<Self>, names: impl IntoIterator<Item = &'a String>) {
        let now = Instant::now();
        let mut hosts = self.hosts.borrow_mut();
        for name in names {
            let host = name.rsplit_once(':').map_or(name.as_str(), |(h, _)| h);
            let bare = host.trim_start_matches('[').trim_end_matches(']');
            if bare.parse::<IpAddr>().is_err() {
                let e = hosts.entry(bare.into()).or_default();
                self.start(e, bare, now);
            }
        }
    }

    /// Starts a resolution of `host` unless one runs or one started less
    /// than a RETRY ago.
    fn start(self: &Rc<Self>, e: &mut Entry, host: &str, now: Instant) {
        if !e.busy && e.started.is_none_or(|t| now.duration_since(t) >= RETRY) {
            e.busy = true;
            e.started = Some(now);
            self.resolve(host.to_string());
        }
    }

    fn resolve(self: &Rc<Self>, host: String) {
        let me = self.clone();
        glommio::spawn_local(async move {
            let name = host.clone();
            let ips = glommio::executor()
                .spawn_blocking(move || {
                    (name.as_str(), 0).to_socket_addrs().map(|addrs| {
                        let mut ips: Vec<IpAddr> = addrs.map(|a| a.ip().to_canonical()).collect();
                        ips.sort_unstable();
                        ips.dedup();
                        ips
                    })
                })
                .await;
            let mut hosts = me.hosts.borrow_mut();
            let Some(e) = hosts.get_mut(host.as_str()) else {
                return;
            };
            e.busy = false;
            match ips {
                Ok(ips) => {
                    e.ips = ips;
                    e.done = Some(Instant::now());
                }
                // A failed lookup (the resolver down for a moment) keeps the
                // last answer, which ages as before.
                Err(cause) => {
                    tracing::warn!(%host, %cause, "cannot resolve a listed replicant host")
                }
            }
        })
        .detach();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn addresses_are_compared_as_they_are_written() {
        let s = Rc::new(Sources::default());
        assert_eq!(s.check("127.0.0.7", ip("127.0.0.7")), Source::Matches);
        // A v4 client of a dual-stack listener shows as ::ffff:a.b.c.d.
        assert_eq!(
            s.check("127.0.0.7", ip("::ffff:127.0.0.7")),
            Source::Matches
        );
        assert_eq!(s.check("[::1]", ip("::1")), Source::Matches);
        assert_eq!(
            s.check("127.0.0.7", ip("127.0.0.1")),
            Source::Differs(vec![ip("127.0.0.7")])
        );
        assert_eq!(
            s.check("[::1]", ip("127.0.0.1")),
            Source::Differs(vec![ip("::1")])
        );
    }

    #[test]
    fn a_host_name_is_resolved_off_the_shard_and_then_checked() {
        glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
            .io_memory(crate::IO_MEMORY)
            .spawn(|| async {
                let s = Rc::new(Sources::default());
                assert_eq!(s.check("localhost", ip("127.0.0.1")), Source::Resolving);
                // Asked again while it resolves: still resolving, no second lookup.
                assert_eq!(s.check("localhost", ip("127.0.0.1")), Source::Resolving);
                let mut verdict = Source::Resolving;
                for _ in 0..500 {
                    glommio::timer::sleep(Duration::from_millis(10)).await;
                    verdict = s.check("localhost", ip("127.0.0.1"));
                    if verdict != Source::Resolving {
                        break;
                    }
                }
                assert_eq!(verdict, Source::Matches);
                // Resolved ahead of the first claim.
                let ahead = Rc::new(Sources::default());
                ahead.prefetch(&["localhost:5001".to_string(), "127.0.0.9:1".to_string()]);
                for _ in 0..500 {
                    if ahead
                        .hosts
                        .borrow()
                        .get("localhost")
                        .is_some_and(|e| e.done.is_some())
                    {
                        break;
                    }
                    glommio::timer::sleep(Duration::from_millis(10)).await;
                }
                assert_eq!(ahead.check("localhost", ip("127.0.0.1")), Source::Matches);
                assert!(
                    !ahead.hosts.borrow().contains_key("127.0.0.9"),
                    "addresses need no lookup"
                );
                // An answer past FRESH still admits what it gave (a new one
                // is sought meanwhile), but not another address; past STALE
                // it admits nothing until the new one comes.
                let old = Rc::new(Sources::default());
                let aged = |age: Duration| Entry {
                    ips: vec![ip("10.1.2.3")],
                    done: Some(Instant::now() - age),
                    started: Some(Instant::now() - age),
                    busy: false,
                };
                old.hosts
                    .borrow_mut()
                    .insert("localhost".into(), aged(FRESH * 2));
                assert_eq!(old.check("localhost", ip("10.1.2.3")), Source::Matches);
                assert!(
                    old.hosts.borrow()["localhost"].busy,
                    "a new answer is sought"
                );
                old.hosts
                    .borrow_mut()
                    .insert("localhost".into(), aged(FRESH * 2));
                assert_eq!(old.check("localhost", ip("10.9.9.9")), Source::Resolving);
                old.hosts
                    .borrow_mut()
                    .insert("localhost".into(), aged(STALE * 2));
                assert_eq!(old.check("localhost", ip("10.1.2.3")), Source::Resolving);
                match s.check("localhost", ip("127.0.0.9")) {
                    Source::Differs(ips) => assert!(ips.contains(&ip("127.0.0.1")), "{ips:?}"),
                    other => panic!("127.0.0.9 is not localhost: {other:?}"),
                }
            })
            .unwrap()
            .join()
            .unwrap();
    }
}
