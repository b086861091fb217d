//! The shard's side of durable history: what the writer asks of it, and
//! taking back what was on disk at start.

use super::Shard;
use crate::msg::MsgFrame;
use crate::store::{Deferred, Source, Store};
use std::rc::Rc;

impl Source for Shard {
    fn release(&self, d: Deferred) {
        self.send_deferred(d);
    }

    fn retained(&self) -> Vec<MsgFrame> {
        match &self.store {
            Some(store) => self.owner.retained(|q| store.persists(q)),
            None => Vec::new(),
        }
    }

    fn retained_queues(&self) -> Vec<Box<str>> {
        match &self.store {
            Some(store) => self.owner.retained_queues(|q| store.persists(q)),
            None => Vec::new(),
        }
    }

    fn retained_page(
        &self,
        queue: &str,
        after: Option<crate::msg::MsgKey>,
        max: usize,
    ) -> Vec<MsgFrame> {
        self.owner.retained_page(queue, after, max)
    }

    fn retained_bytes(&self) -> u64 {
        self.owner.retained_bytes()
    }
}

impl Shard {
    /// The durable history of this shard's queues, if `data_dir` is set.
    pub(crate) fn store(&self) -> Option<&Rc<Store>> {
        self.store.as_ref()
    }

    /// Stores messages read from disk at start (before serving); how many
    /// were kept. Records of queues `persist` no longer names are left out
    /// (and leave the disk at the next compaction): their history since is
    /// not on disk, so they would bring back an old one, and with it
    /// `coremq_seq` numbers already used and resumes answered "recovered".
    ///
    /// Left out is not gone, though: until a compaction rewrites the files,
    /// a later start whose `persist` (or `queue_history`) names the queue
    /// again read them back — an old history in place of the one since,
    /// `coremq_seq` numbers used again, and a resume across the gap
    /// answered "recovered". So when any is left out, the writer compacts
    /// first thing ([`Store::compact_at_start`]).
    pub(crate) fn restore(&self, mut frames: Vec<MsgFrame>) -> usize {
        if let Some(store) = &self.store {
            let cfg = self.cfg();
            let before = frames.len();
            frames.retain(|f| store.persists(f.queue()) && cfg.history_length_for(f.queue()) > 0);
            if frames.len() < before {
                store.compact_at_start();
            }
        }
        self.owner.restore(frames, self.origin)
    }

    /// After [`Self::restore`]: messages up to `upto` may be missing from
    /// what was read back (a segment was lost), so no queue of this shard
    /// answers a resume from before it as recovered.
    pub(crate) fn history_lost_upto(&self, upto: crate::msg::MsgKey) {
        self.owner.history_lost_upto(upto);
    }
}
