//! Password checks in turn by source address (PROTOCOL.md §8).
//!
//! Argon2id takes tens of milliseconds by design, on the shard's one
//! blocking thread. Handed to that thread as they came, a burst of wrong
//! passwords from one client (300 connections, one `coremq_auth` each)
//! queued 15 s of checks ahead of every other login of the shard, and kept
//! checking for connections that had long gone. Checks now wait here, one
//! line per source address, and the thread takes the lines in turn: a
//! login from elsewhere waits for at most one check of each address that
//! has some waiting. A check whose requester is gone by its turn (its
//! connection closed by the broker, e.g. at a stop) is skipped, not run; a
//! client that only went away is not seen as gone (a connection waiting for
//! its check is not read), which the line's limit below bounds.
//!
//! A line holds at most [`MAX_WAITING`] checks: past that a login fails at
//! once (`too many password checks waiting`), so that one address cannot
//! keep thousands of connections open waiting for their turn (a check's
//! connection is not closed by `auth_timeout` while it waits, and one that
//! only sent its end is owed the answer). An IPv6 address's line is its
//! /64, which one client usually holds whole; an IPv4-mapped address is its
//! IPv4 address.
//!
//! One line per shard thread (each shard is one executor with its own
//! blocking thread), so nothing here is shared between threads.

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::future::poll_fn;
use std::net::IpAddr;
use std::task::{Poll, Waker};

/// Where a check comes from: the peer's address, `None` where the
/// transport does not say (they share one line).
pub(crate) type Source = Option<IpAddr>;

/// Checks one line may hold waiting (besides the one being run).
pub(crate) const MAX_WAITING: usize = 16;

/// How a check ended.
pub(crate) enum Checked<T> {
    /// Run: its result.
    Done(T),
    /// Its requester was gone by its turn: not run.
    Gone,
    /// Its address's line was full: not run.
    Busy,
}

/// The line of `source`: an IPv6 address's /64, an IPv4-mapped one's IPv4.
fn line_of(source: Source) -> Source {
    match source? {
        IpAddr::V6(v6) => Some(match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6((u128::from(v6) & !u128::from(u64::MAX)).into()),
        }),
        v4 => Some(v4),
    }
}

#[derive(Default)]
struct Lines {
    /// A check is on the blocking thread (or has been given its turn).
    busy: bool,
    next_ticket: u64,
    /// Sources with checks waiting, in the order their next is served.
    order: VecDeque<Source>,
    /// Each source's waiting tickets, oldest first.
    waiting: HashMap<Source, VecDeque<u64>>,
    /// Wakers of waiting tickets.
    wakers: HashMap<u64, Waker>,
    /// The ticket given the thread and not yet taken up by its waiter.
    granted: Option<u64>,
}

thread_local! {
    static LINES: RefCell<Lines> = RefCell::new(Lines::default());
}

impl Lines {
    /// The thread is free: the next source's oldest check gets it.
    fn pass_on(&mut self) {
        self.busy = false;
        self.granted = None;
        while let Some(source) = self.order.pop_front() {
            let Some(line) = self.waiting.get_mut(&source) else {
                continue;
            };
            let Some(ticket) = line.pop_front() else {
                self.waiting.remove(&source);
                continue;
            };
            if line.is_empty() {
                self.waiting.remove(&source);
            } else {
                self.order.push_back(source);
            }
            self.busy = true;
            self.granted = Some(ticket);
            if let Some(w) = self.wakers.remove(&ticket) {
                w.wake();
            }
            return;
        }
    }

    /// A waiter went away before its turn came (or with its turn).
    fn leave(&mut self, source: Source, ticket: u64) {
        self.wakers.remove(&ticket);
        if self.granted == Some(ticket) {
            return self.pass_on();
        }
        if let Some(line) = self.waiting.get_mut(&source) {
            line.retain(|&t| t != ticket);
            if line.is_empty() {
                self.waiting.remove(&source);
                self.order.retain(|s| *s != source);
            }
        }
    }
}

/// Holds the thread: given back (and passed on) when dropped.
struct Turn;

impl Drop for Turn {
    fn drop(&mut self) {
        LINES.with(|l| l.borrow_mut().pass_on());
    }
}

/// Waits in `source`'s line until the blocking thread is this check's
/// (`None`: the line is full). Dropped while waiting, it leaves the line.
async fn turn(source: Source) -> Option<Turn> {
    let ticket = LINES.with(|l| {
        let mut l = l.borrow_mut();
        if !l.busy {
            l.busy = true;
            return Ok(None);
        }
        let line = l.waiting.entry(source).or_default();
        if line.len() >= MAX_WAITING {
            return Err(());
        }
        let first = line.is_empty();
        let t = l.next_ticket;
        l.next_ticket += 1;
        if first {
            l.order.push_back(source);
        }
        l.waiting.get_mut(&source).unwrap().push_back(t);
        Ok(Some(t))
    });
    let ticket = match ticket {
        Err(()) => return None,
        Ok(None) => return Some(Turn),
        Ok(Some(t)) => t,
    };
    struct Waiting(Source, u64, bool);
    impl Drop for Waiting {
        fn drop(&mut self) {
            if !self.2 {
                LINES.with(|l| l.borrow_mut().leave(self.0, self.1));
            }
        }
    }
    let mut waiting = Waiting(source, ticket, false);
    poll_fn(|cx| {
        LINES.with(|l| {
            let mut l = l.borrow_mut();
            if l.granted == Some(ticket) {
                l.granted = None;
                waiting.2 = true;
                Poll::Ready(Some(Turn))
            } else {
                l.wakers.insert(ticket, cx.waker().clone());
                Poll::Pending
            }
        })
    })
    .await
}

/// Runs `check` on the shard's blocking thread when `source`'s turn comes,
/// unless `wanted` says by then that nobody waits for the answer, or the
/// line is full.
pub(crate) async fn check<T: Send + 'static>(
    source: Source,
    wanted: impl Fn() -> bool,
    check: impl FnOnce() -> T + Send + 'static,
) -> Checked<T> {
    let Some(turn) = turn(line_of(source)).await else {
        return Checked::Busy;
    };
    if !wanted() {
        return Checked::Gone;
    }
    let result = glommio::executor().spawn_blocking(check).await;
    drop(turn);
    Checked::Done(result)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;
    use std::rc::Rc;
    use std::time::Duration;

    fn ip(last: u8) -> Source {
        Some(IpAddr::from([10, 0, 0, last]))
    }

    #[test]
    fn sources_take_turns_and_the_gone_are_skipped() {
        glommio::LocalExecutorBuilder::default()
            .spawn(|| async {
                let ran = Rc::new(RefCell::new(Vec::new()));
                let mut tasks = Vec::new();
                // One source sends five, then two others one each; the
                // fourth of the first has gone by its turn.
                let plan = [(1, 0), (1, 1), (1, 2), (1, 3), (1, 4), (2, 5), (3, 6)];
                for (src, n) in plan {
                    let ran = ran.clone();
                    tasks.push(glommio::spawn_local(async move {
                        let out = check(
                            ip(src),
                            || n != 3,
                            move || {
                                std::thread::sleep(Duration::from_millis(5));
                                n
                            },
                        )
                        .await;
                        if let Checked::Done(n) = out {
                            ran.borrow_mut().push(n);
                        }
                    }));
                    futures_lite::future::yield_now().await;
                }
                for t in tasks {
                    t.await;
                }
                // 0 took the free thread at once; then 1 (source 1), 5, 6,
                // then the rest of source 1 without 3.
                assert_eq!(*ran.borrow(), vec![0, 1, 5, 6, 2, 4]);
                LINES.with(|l| {
                    let l = l.borrow();
                    assert!(!l.busy && l.order.is_empty() && l.waiting.is_empty());
                    assert!(l.wakers.is_empty() && l.granted.is_none());
                });
            })
            .unwrap()
            .join()
            .unwrap();
    }

    #[test]
    fn a_full_line_refuses_and_v6_lines_are_a_64() {
        let v6 = |s: &str| Some(s.parse::<IpAddr>().unwrap());
        assert_eq!(line_of(v6("2001:db8::1")), line_of(v6("2001:db8::ffff:2")));
        assert_ne!(line_of(v6("2001:db8::1")), line_of(v6("2001:db8:0:1::1")));
        assert_eq!(line_of(v6("::ffff:10.0.0.1")), ip(1));
        assert_eq!(line_of(ip(1)), ip(1));
        assert_eq!(line_of(None), None);
        glommio::LocalExecutorBuilder::default()
            .spawn(|| async {
                let slow = || std::thread::sleep(Duration::from_millis(30));
                let running = glommio::spawn_local(check(ip(1), || true, slow));
                futures_lite::future::yield_now().await;
                let waiting: Vec<_> = (0..MAX_WAITING)
                    .map(|_| glommio::spawn_local(check(ip(1), || true, || ())))
                    .collect();
                futures_lite::future::yield_now().await;
                assert!(matches!(check(ip(1), || true, || ()).await, Checked::Busy));
                // Another address still gets in line.
                let other = glommio::spawn_local(check(ip(2), || true, || ()));
                assert!(matches!(running.await, Checked::Done(())));
                for w in waiting {
                    assert!(matches!(w.await, Checked::Done(())));
                }
                assert!(matches!(other.await, Checked::Done(())));
            })
            .unwrap()
            .join()
            .unwrap();
    }

    #[test]
    fn a_waiter_dropped_before_or_at_its_turn_passes_it_on() {
        glommio::LocalExecutorBuilder::default()
            .spawn(|| async {
                let first = glommio::spawn_local(check(
                    ip(1),
                    || true,
                    || {
                        std::thread::sleep(Duration::from_millis(20));
                        1
                    },
                ));
                futures_lite::future::yield_now().await;
                // Waits behind the first, then is dropped unserved.
                let dropped = glommio::spawn_local(check(ip(2), || true, || 2));
                futures_lite::future::yield_now().await;
                let third = glommio::spawn_local(check(ip(3), || true, || 3));
                futures_lite::future::yield_now().await;
                drop(dropped);
                assert!(matches!(first.await, Checked::Done(1)));
                assert!(matches!(third.await, Checked::Done(3)));
                LINES.with(|l| {
                    let l = l.borrow();
                    assert!(!l.busy && l.order.is_empty() && l.waiting.is_empty());
                });
            })
            .unwrap()
            .join()
            .unwrap();
    }
}
