//! The cross-shard channels: per-destination outboxes, their flushers and the
//! receivers.
//!
//! Producers never await: they push into the outbox of the destination shard and
//! a flusher task sends the whole outbox as one batch (`Vec<T>`) over a bounded
//! glommio channel. Because tasks are cooperative, a connection that parses a
//! whole read buffer fills the outbox before the flusher runs, so channel
//! traffic is batched for free (one channel send per batch, not per message).
//!
//! Backpressure: `backlog` counts items pushed but not yet handed to the
//! channel. Connection readers stop reading while the request or response
//! backlog is high; request receivers stop pulling while the *response* backlog
//! is high. Response receivers never wait, so responses always drain and the two
//! meshes cannot deadlock each other.

use crate::event::WakerList;
use crate::msg::{Request, Response};
use glommio::channels::shared_channel::ConnectedSender;
use std::cell::{Cell, RefCell};
use std::future::poll_fn;
use std::task::{Poll, Waker};

/// Backlog (items) above which producers pause.
pub(crate) const HIGH_WATER: usize = 64 * 1024;
/// Backlog (items) below which paused producers resume.
pub(crate) const LOW_WATER: usize = 16 * 1024;
/// Capacity of each channel, in batches. Small capacities are ruinous
/// (PLATFORM-NOTES: every refill wakes the other thread); batches are cheap.
pub(crate) const CHANNEL_BATCHES: usize = 256;

/// Most items a fresh outbox batch reserves room for.
const MAX_BATCH_ROOM: usize = 4096;

/// Items waiting for one destination shard.
pub(crate) struct Outbox<T> {
    /// Pushed, not yet taken by the flusher.
    items: RefCell<Vec<T>>,
    /// The flusher, parked while the outbox is empty.
    flusher: Cell<Option<Waker>>,
}

impl<T> Default for Outbox<T> {
    fn default() -> Self {
        Outbox {
            items: RefCell::new(Vec::new()),
            flusher: Cell::new(None),
        }
    }
}

impl<T> Outbox<T> {
    fn push(&self, item: T) {
        let mut items = self.items.borrow_mut();
        items.push(item);
        if items.len() == 1 {
            if let Some(w) = self.flusher.take() {
                w.wake();
            }
        }
    }
}

/// One kind of traffic (requests or responses) towards every other shard.
pub(crate) struct Lane<T> {
    /// Indexed by destination shard; this shard's own entry is unused.
    outboxes: Vec<Outbox<T>>,
    /// Items pushed and not yet accepted by a channel.
    backlog: Cell<usize>,
    /// Tasks waiting for the backlog to fall below [`LOW_WATER`].
    waiters: WakerList,
}

impl<T> Lane<T> {
    fn new(shards: usize) -> Self {
        Lane {
            outboxes: (0..shards).map(|_| Outbox::default()).collect(),
            backlog: Cell::new(0),
            waiters: WakerList::default(),
        }
    }

    /// Queues `item` for shard `to`.
    pub(crate) fn push(&self, to: usize, item: T) {
        self.backlog.set(self.backlog.get() + 1);
        self.outboxes[to].push(item);
    }

    /// Queues `item` for shard `to` unless `merge` folds it into the last
    /// item waiting there (e.g. consecutive acknowledgements of one
    /// connection travel as one range).
    pub(crate) fn push_or_merge(&self, to: usize, item: T, merge: impl FnOnce(&mut T, &T) -> bool) {
        let outbox = &self.outboxes[to];
        {
            let mut items = outbox.items.borrow_mut();
            if let Some(last) = items.last_mut() {
                if merge(last, &item) {
                    return;
                }
            }
        }
        self.push(to, item);
    }

    /// Items not yet handed to a channel.
    pub(crate) fn backlog(&self) -> usize {
        self.backlog.get()
    }

    fn sent(&self, n: usize) {
        let b = self.backlog.get().saturating_sub(n);
        self.backlog.set(b);
        if b < LOW_WATER {
            self.waiters.wake_all();
        }
    }

    /// Registers a waiter for a low backlog; true if the backlog is already low.
    pub(crate) fn poll_low(&self, waker: &Waker) -> bool {
        if self.backlog.get() < HIGH_WATER {
            return true;
        }
        self.waiters.register(waker);
        false
    }

    /// Sends batches for destination `to` until the channel closes.
    pub(crate) async fn flush_loop(&self, to: usize, tx: ConnectedSender<Vec<T>>)
    where
        T: Send + 'static,
    {
        let outbox = &self.outboxes[to];
        loop {
            poll_fn(|cx| {
                if outbox.items.borrow().is_empty() {
                    outbox.flusher.set(Some(cx.waker().clone()));
                    Poll::Pending
                } else {
                    Poll::Ready(())
                }
            })
            .await;
            // The next batch starts with room for one like this: growing a
            // Vec of large items from empty copies it over and over
            // (perf: memmove in the mesh push under load).
            let batch = {
                let mut items = outbox.items.borrow_mut();
                let room = items.len().min(MAX_BATCH_ROOM);
                std::mem::replace(&mut *items, Vec::with_capacity(room))
            };
            let n = batch.len();
            if tx.send(batch).await.is_err() {
                // The other shard is gone (shutdown or failure): nothing more
                // can be delivered there.
                self.sent(n);
                return;
            }
            self.sent(n);
        }
    }
}

/// Both lanes of one shard.
pub(crate) struct Mesh {
    /// Home → owner traffic.
    pub requests: Lane<Request>,
    /// Owner → home traffic.
    pub responses: Lane<Response>,
}

impl Mesh {
    /// Outboxes for a node of `shards` shards.
    pub(crate) fn new(shards: usize) -> Mesh {
        Mesh {
            requests: Lane::new(shards),
            responses: Lane::new(shards),
        }
    }

    /// Total items waiting to leave this shard.
    pub(crate) fn backlog(&self) -> usize {
        self.requests.backlog() + self.responses.backlog()
    }

    /// Ready when both lanes are below the high-water mark (for readers of client sockets).
    pub(crate) fn poll_low(&self, waker: &Waker) -> bool {
        self.requests.poll_low(waker) && self.responses.poll_low(waker)
    }

    /// Waits until the response lane is low (for request receivers).
    pub(crate) async fn responses_low(&self) {
        poll_fn(|cx| {
            if self.responses.poll_low(cx.waker()) {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
        .await
    }
}
