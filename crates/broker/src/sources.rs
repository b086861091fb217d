//! Where a would-be replicant may connect from when nothing else vouches
//! for it (§6: `cluster_nodes` and `allowed_replicants` list *hosts*).
//!
//! With `cluster_secret` the challenge-response proves who dials, and with
//! `cluster_tls` the client certificate does. Without either, the name a
//! replicant gives is only a claim, and what the original CoreMQ checked —
//! the address the connection comes from — is all there is: it must be the
//! claimed name's host (an IP address, compared as is) or one of the
//! addresses that host name resolves to. Host names are resolved on the
//! executor's blocking thread, never on the shard thread, at most once a
//! [`RETRY`] per name, and the answer counts for [`FRESH`]; a name still
//! being resolved is refused, and the dialer's next attempt (its backoff
//! starts at 100 ms) finds it resolved.

use std::cell::RefCell;
use std::net::{IpAddr, ToSocketAddrs};
use std::rc::Rc;
use std::time::{Duration, Instant};

/// How long a resolution counts (a restarted peer may come back elsewhere).
const FRESH: Duration = Duration::from_secs(30);
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
        let fresh = e.done.is_some_and(|t| now.duration_since(t) < FRESH);
        if fresh && e.ips.contains(&from) {
            return Source::Matches;
        }
        // Stale, never resolved, or another address (the host may have
        // moved): resolve again, at most once a RETRY.
        if !e.busy && e.started.is_none_or(|t| now.duration_since(t) >= RETRY) {
            e.busy = true;
            e.started = Some(now);
            self.resolve(bare.to_string());
        }
        if fresh {
            Source::Differs(e.ips.clone())
        } else {
            Source::Resolving
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
            let ips = ips.unwrap_or_else(|e| {
                tracing::warn!(%host, cause = %e, "cannot resolve a listed replicant host");
                Vec::new()
            });
            if let Some(e) = me.hosts.borrow_mut().get_mut(host.as_str()) {
                e.ips = ips;
                e.done = Some(Instant::now());
                e.busy = false;
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
