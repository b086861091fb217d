//! Collecting one answer from every shard.
//!
//! A status reply, the HTTP endpoints and the statistics queue need the
//! figures of every shard; a new cluster link needs every shard's history.
//! Each collection gets a token; answers arrive as responses on the mesh and
//! are kept here until all are in.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::future::poll_fn;
use std::task::{Poll, Waker};

/// One collection in progress.
struct Gather<T> {
    /// Answers so far.
    parts: Vec<T>,
    /// Answers expected in all.
    expected: usize,
    /// The task waiting for the result.
    waker: Option<Waker>,
}

/// Collections in progress on one shard.
pub(crate) struct Gathers<T> {
    /// Token of the next collection.
    next: Cell<u64>,
    /// In-progress collections by token.
    pending: RefCell<HashMap<u64, Gather<T>>>,
}

impl<T> Default for Gathers<T> {
    fn default() -> Self {
        Gathers {
            next: Cell::new(0),
            pending: RefCell::new(HashMap::new()),
        }
    }
}

impl<T> Gathers<T> {
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
    pub(crate) fn arrived(&self, token: u64, part: T) {
        let mut pending = self.pending.borrow_mut();
        if let Some(g) = pending.get_mut(&token) {
            g.parts.push(part);
            if g.parts.len() >= g.expected {
                if let Some(w) = g.waker.take() {
                    w.wake();
                }
            }
        }
    }

    /// Waits for every answer of `token`, in arrival order.
    pub(crate) async fn wait(&self, token: u64) -> Vec<T> {
        poll_fn(|cx| {
            let mut pending = self.pending.borrow_mut();
            let Some(g) = pending.get_mut(&token) else {
                return Poll::Ready(Vec::new());
            };
            if g.parts.len() >= g.expected {
                Poll::Ready(pending.remove(&token).map(|g| g.parts).unwrap_or_default())
            } else {
                g.waker = Some(cx.waker().clone());
                Poll::Pending
            }
        })
        .await
    }
}
