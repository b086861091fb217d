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
//! channel, and the lane's held bytes the messages pushed but not yet taken
//! by the receiving shard (in the outbox or in the channel). Connection
//! readers stop reading while the request or response lane is high in
//! either; request receivers stop pulling while the *response* lane is high.
//! Response receivers never wait, so responses always drain and the two
//! meshes cannot deadlock each other.
//!
//! The bytes bound is what keeps a fast shard from burying a slow one:
//! a channel holds up to [`channel_batches`] batches, and a batch is the
//! whole outbox when the flusher gets its turn, so counted only until the
//! channel accepted them, items piled up in the channels without limit — a
//! publisher on a queue's owner under `drop` (its OKs never wait) fanning
//! out to a shard busy with 50 subscribers held 1.2 GB there.

use crate::event::WakerList;
use crate::msg::{Request, Response};
use glommio::channels::shared_channel::ConnectedSender;
use std::cell::{Cell, RefCell};
use std::future::poll_fn;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Poll, Waker};
use std::time::Duration;

/// Message bytes a lane may hold (pushed, not yet taken by the receiving
/// shard) before producers pause.
pub(crate) const HIGH_BYTES: u64 = 32 << 20;
/// Held bytes below which paused producers resume.
pub(crate) const LOW_BYTES: u64 = 8 << 20;
/// How often a lane over [`HIGH_BYTES`] looks again at what the other
/// shards have taken (they do not wake this one: the count is all they
/// touch, once per batch).
const BYTES_POLL: Duration = Duration::from_millis(1);

/// A count written by other shards, on a cache line of its own.
#[repr(align(128))]
#[derive(Default)]
pub(crate) struct Padded(AtomicU64);

/// Per shard and lane, the message bytes the receiving shards have taken
/// from it (monotonic; shared by the node's shards).
pub(crate) struct Taken {
    requests: Box<[Arc<Padded>]>,
    responses: Box<[Arc<Padded>]>,
}

impl Taken {
    /// Counters for `shards` shards.
    pub(crate) fn new(shards: usize) -> Taken {
        let make = || (0..shards).map(|_| Arc::default()).collect();
        Taken {
            requests: make(),
            responses: make(),
        }
    }

    /// What a receiver of shard `from`'s requests adds its takings to.
    pub(crate) fn requests_of(&self, from: usize) -> Arc<Padded> {
        self.requests[from].clone()
    }

    /// What a receiver of shard `from`'s responses adds its takings to.
    pub(crate) fn responses_of(&self, from: usize) -> Arc<Padded> {
        self.responses[from].clone()
    }
}

impl Padded {
    /// A receiver took `bytes` of the lane's messages.
    pub(crate) fn took(&self, bytes: u64) {
        if bytes > 0 {
            self.0.fetch_add(bytes, Ordering::Relaxed);
        }
    }
}

/// The message bytes an item carries, for the lanes' bytes bound (only the
/// messages themselves: everything else is small, or bounded elsewhere).
pub(crate) trait Weigh {
    /// Bytes of message content the item holds.
    fn weight(&self) -> u64;
}

impl Weigh for Request {
    fn weight(&self) -> u64 {
        match self {
            Request::Publish { frame, .. } | Request::Replicated { frame, .. } => {
                frame.bytes().len() as u64
            }
            _ => 0,
        }
    }
}

impl Weigh for Response {
    fn weight(&self) -> u64 {
        match self {
            Response::Deliver { frame, .. } | Response::Replicate { frame, .. } => {
                frame.bytes().len() as u64
            }
            _ => 0,
        }
    }
}

/// Backlog (items) above which producers pause.
pub(crate) const HIGH_WATER: usize = 64 * 1024;
/// Backlog (items) below which paused producers resume.
pub(crate) const LOW_WATER: usize = 16 * 1024;
/// Capacity of each channel, in batches, with up to 32 shards. Small
/// capacities are ruinous (PLATFORM-NOTES: every refill wakes the other
/// thread); batches are cheap.
const CHANNEL_BATCHES: usize = 256;

/// Capacity of each channel with `shards` shards: [`CHANNEL_BATCHES`] up to
/// 32, then less, down to 32 at 256 shards and more. The mesh has
/// 2·N·(N−1) channels and a slot costs 32 bytes, so at 256 slots each the
/// rings alone took 1 GiB with 256 shards before any client came; and with
/// N shards one pair of them carries about 1/N of a shard's traffic, so it
/// needs fewer batches in flight.
pub(crate) fn channel_batches(shards: usize) -> usize {
    (CHANNEL_BATCHES * 32 / shards.max(1)).clamp(32, CHANNEL_BATCHES)
}

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
    /// Message bytes pushed (monotonic).
    pushed: Cell<u64>,
    /// Of those, what the receiving shards have taken.
    taken: Arc<Padded>,
    /// A producer waits for the held bytes to fall: the watcher polls.
    over_bytes: Cell<bool>,
    /// The watcher ([`Lane::watch_bytes`]), parked while nobody waits.
    watcher: Cell<Option<Waker>>,
    /// Tasks waiting for the backlog to fall below [`LOW_WATER`] (and the
    /// held bytes below [`LOW_BYTES`]).
    waiters: WakerList,
}

impl<T: Weigh> Lane<T> {
    fn new(shards: usize, taken: Arc<Padded>) -> Self {
        Lane {
            outboxes: (0..shards).map(|_| Outbox::default()).collect(),
            backlog: Cell::new(0),
            pushed: Cell::new(0),
            taken,
            over_bytes: Cell::new(false),
            watcher: Cell::new(None),
            waiters: WakerList::default(),
        }
    }

    /// Queues `item` for shard `to`.
    pub(crate) fn push(&self, to: usize, item: T) {
        self.backlog.set(self.backlog.get() + 1);
        self.pushed.set(self.pushed.get() + item.weight());
        self.outboxes[to].push(item);
    }

    /// Message bytes pushed and not yet taken by the receiving shards.
    pub(crate) fn held_bytes(&self) -> u64 {
        let taken = self.taken.0.load(Ordering::Relaxed);
        self.pushed.get().saturating_sub(taken)
    }

    /// Wakes the producers waiting for the held bytes to fall, once they
    /// have (under [`LOW_BYTES`]); runs for the shard's life.
    pub(crate) async fn watch_bytes(&self) {
        loop {
            poll_fn(|cx| {
                if self.over_bytes.get() {
                    Poll::Ready(())
                } else {
                    self.watcher.set(Some(cx.waker().clone()));
                    Poll::Pending
                }
            })
            .await;
            while self.held_bytes() >= LOW_BYTES {
                glommio::timer::sleep(BYTES_POLL).await;
            }
            self.over_bytes.set(false);
            self.waiters.wake_all();
        }
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

    /// Registers a waiter for a low backlog; true if the backlog and the
    /// held bytes are already low.
    pub(crate) fn poll_low(&self, waker: &Waker) -> bool {
        let over_bytes = self.held_bytes() >= HIGH_BYTES;
        if self.backlog.get() < HIGH_WATER && !over_bytes {
            return true;
        }
        self.waiters.register(waker);
        if over_bytes && !self.over_bytes.replace(true) {
            if let Some(w) = self.watcher.take() {
                w.wake();
            }
        }
        false
    }

    /// Everything waiting for `to`, as one batch. The next batch starts with
    /// room for one like this: growing a Vec of large items from empty copies
    /// it over and over (perf: memmove in the mesh push under load).
    fn take_batch(&self, to: usize) -> Vec<T> {
        let mut items = self.outboxes[to].items.borrow_mut();
        let room = items.len().min(MAX_BATCH_ROOM);
        std::mem::replace(&mut *items, Vec::with_capacity(room))
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
            let batch = self.take_batch(to);
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
    /// Outboxes of shard `id` of a node of `shards` shards, whose receivers
    /// count what they take in `taken`.
    pub(crate) fn new(shards: usize, taken: &Taken, id: usize) -> Mesh {
        Mesh {
            requests: Lane::new(shards, taken.requests_of(id)),
            responses: Lane::new(shards, taken.responses_of(id)),
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::rc::Rc;
    use std::sync::atomic::AtomicUsize;
    use std::task::Wake;

    impl Weigh for u32 {
        fn weight(&self) -> u64 {
            u64::from(*self)
        }
    }

    impl Weigh for (u32, u32) {
        fn weight(&self) -> u64 {
            0
        }
    }

    impl Weigh for () {
        fn weight(&self) -> u64 {
            0
        }
    }

    #[test]
    fn producers_pause_while_the_receivers_have_not_taken_the_bytes() {
        glommio::LocalExecutorBuilder::default()
            .spawn(|| async {
                let taken = Arc::new(Padded::default());
                let lane = Rc::new(Lane::<u32>::new(2, taken.clone()));
                let l = lane.clone();
                glommio::spawn_local(async move { l.watch_bytes().await }).detach();
                let producer = Arc::new(Count(AtomicUsize::new(0)));
                let waker = Waker::from(producer.clone());
                // Handed to the channel at once (the backlog is low), but
                // not taken by the other shard: the bytes still count.
                lane.push(1, (HIGH_BYTES - 1) as u32);
                let _ = lane.take_batch(1);
                lane.sent(1);
                assert!(lane.poll_low(&waker), "under the bytes bound");
                lane.push(1, 1);
                assert_eq!(lane.backlog(), 1);
                assert!(!lane.poll_low(&waker), "at the bytes bound");
                // Taken down to just above the low mark: still waiting.
                taken.took(HIGH_BYTES - LOW_BYTES);
                glommio::timer::sleep(BYTES_POLL * 5).await;
                assert_eq!(producer.0.load(Ordering::Relaxed), 0);
                // Below it: the watcher wakes the producer by itself.
                taken.took(1);
                for _ in 0..500 {
                    if producer.0.load(Ordering::Relaxed) > 0 {
                        break;
                    }
                    glommio::timer::sleep(BYTES_POLL).await;
                }
                assert_eq!(producer.0.load(Ordering::Relaxed), 1, "woken once");
                assert!(lane.poll_low(&waker));
                assert_eq!(lane.held_bytes(), LOW_BYTES - 1);
            })
            .unwrap()
            .join()
            .unwrap();
    }

    /// A waker that counts its wake-ups.
    struct Count(AtomicUsize);
    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    #[test]
    fn what_is_pushed_before_the_flusher_runs_leaves_as_one_batch() {
        let lane: Lane<u32> = Lane::new(3, Arc::default());
        let flusher = Arc::new(Count(AtomicUsize::new(0)));
        lane.outboxes[2]
            .flusher
            .set(Some(Waker::from(flusher.clone())));
        for i in 0..100 {
            lane.push(2, i);
        }
        lane.push(1, 7);
        assert_eq!(
            flusher.0.load(Ordering::Relaxed),
            1,
            "woken once, on the first item"
        );
        assert_eq!(lane.backlog(), 101);
        let batch = lane.take_batch(2);
        assert_eq!(batch, (0..100).collect::<Vec<_>>(), "in push order");
        assert!(
            lane.outboxes[2].items.borrow().capacity() >= 100,
            "room for the next"
        );
        assert!(lane.take_batch(2).is_empty());
        assert_eq!(lane.take_batch(1), [7], "destinations are kept apart");
        lane.sent(101);
        assert_eq!(lane.backlog(), 0);
    }

    #[test]
    fn push_or_merge_folds_into_the_last_waiting_item_only() {
        let lane: Lane<(u32, u32)> = Lane::new(2, Arc::default());
        let merge = |last: &mut (u32, u32), new: &(u32, u32)| {
            if last.0 + last.1 == new.0 {
                last.1 += new.1;
                true
            } else {
                false
            }
        };
        lane.push_or_merge(1, (0, 1), merge);
        lane.push_or_merge(1, (1, 1), merge);
        lane.push_or_merge(1, (2, 1), merge);
        lane.push_or_merge(1, (9, 1), merge);
        assert_eq!(lane.backlog(), 2, "a merged item is not a new one");
        assert_eq!(lane.take_batch(1), [(0, 3), (9, 1)]);
        // Once the flusher took the batch, nothing merges into it.
        lane.push_or_merge(1, (10, 1), merge);
        assert_eq!(lane.take_batch(1), [(10, 1)]);
    }

    #[test]
    fn producers_pause_at_high_water_and_resume_below_low_water() {
        let lane: Lane<()> = Lane::new(2, Arc::default());
        let reader = Arc::new(Count(AtomicUsize::new(0)));
        let waker = Waker::from(reader.clone());
        for _ in 0..HIGH_WATER - 1 {
            lane.push(1, ());
        }
        assert!(lane.poll_low(&waker), "below the high-water mark");
        lane.push(1, ());
        assert!(!lane.poll_low(&waker), "at the high-water mark: pause");
        lane.sent(HIGH_WATER - LOW_WATER);
        assert_eq!(
            reader.0.load(Ordering::Relaxed),
            0,
            "not yet below low water"
        );
        lane.sent(1);
        assert_eq!(reader.0.load(Ordering::Relaxed), 1, "woken below low water");
        assert!(lane.poll_low(&waker));
    }
}
