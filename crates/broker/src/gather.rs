//! Collecting one [`ShardStats`] from every shard.
//!
//! A status reply, the HTTP endpoints and the statistics queue all need the
//! figures of every shard. Each collection gets a token; answers arrive as
//! responses on the mesh and are kept here until all are in.

use crate::stats::ShardStats;
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::future::poll_fn;
use std::task::{Poll, Waker};

/// One collection in progress.
struct Gather {
    /// Answers so far.
    parts: Vec<ShardStats>,
    /// Answers expected in all.
    expected: usize,
    /// The task waiting for the result.
    waker: Option<Waker>,
}

/// Collections in progress on one shard.
#[derive(Default)]
pub(crate) struct Gathers {
    /// Token of the next collection.
    next: Cell<u64>,
    /// In-progress collections by token.
    pending: RefCell<HashMap<u64, Gather>>,
}

impl Gathers {
    /// Opens a collection expecting `expected` answers.
    pub(crate) fn start(&self, expected: usize) -> u64 {
        let token = self.next.get();
        self.next.set(token.wrapping_add(1));
        self.pending.borrow_mut().insert(
            token,
            Gather {
                parts: Vec::with_capacity(expected),
                expected,
                waker: None,
            },
        );
        token
    }

    /// One answer for `token`.
    pub(crate) fn arrived(&self, token: u64, stats: ShardStats) {
        let mut pending = self.pending.borrow_mut();
        if let Some(g) = pending.get_mut(&token) {
            g.parts.push(stats);
            if g.parts.len() >= g.expected {
                if let Some(w) = g.waker.take() {
                    w.wake();
                }
            }
        }
    }

    /// Waits for every answer of `token`; the result is ordered by shard.
    pub(crate) async fn wait(&self, token: u64) -> Vec<ShardStats> {
        poll_fn(|cx| {
            let mut pending = self.pending.borrow_mut();
            let Some(g) = pending.get_mut(&token) else {
                return Poll::Ready(Vec::new());
            };
            if g.parts.len() >= g.expected {
                let mut parts = pending.remove(&token).map(|g| g.parts).unwrap_or_default();
                parts.sort_by_key(|p| p.shard);
                Poll::Ready(parts)
            } else {
                g.waker = Some(cx.waker().clone());
                Poll::Pending
            }
        })
        .await
    }
}
