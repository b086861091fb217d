//! The key-value store on a shard (PROTOCOL.md §13): starting an operation
//! from any connection (CoreMQ or memcached), carrying it out on the keys
//! this shard owns, and what follows a change (replication, watchers).
//!
//! An operation whose keys this shard owns is done in place, with no
//! message and no wait; otherwise each owner gets its part over the request
//! mesh and the answers are merged in request order.

use super::Shard;
use crate::consts::{CONTROL_SHARD, KV_WATCH_PREFIX};
use crate::kvop::{now_ms, KeyList, KvAnswer, KvChange, KvOp, KvValue};
use crate::msg::{KvRequest, MsgKey, Request, Response};
use crate::owner::Outbox;
use coremq_protocol as proto;

/// Keys per page of the exchange with a cluster peer.
const PAGE: usize = 512;
/// Slots a sweep visits per round, and rounds per tick at most (another
/// round follows only while a quarter of what it visited had expired).
const SWEEP_SLOTS: usize = 1000;
const SWEEP_ROUNDS: usize = 10;

/// The values read in place, and per part the indices its answer fills.
pub(crate) struct GetLocal {
    values: Vec<Option<(KvValue, u64)>>,
    index: Vec<Vec<usize>>,
}

/// An operation started with [`Shard::kv_start`].
pub(crate) enum KvPending {
    /// Done in place.
    Ready(KvAnswer),
    /// Parts sent to their owners; `layout` says how to merge the answers.
    Waiting { token: u64, layout: Layout },
}

/// How the parts of an operation come together.
pub(crate) enum Layout {
    /// One part: its answer is the answer.
    Single,
    /// A read split by owner: per part, the indices of its keys in the
    /// request, and the number of keys.
    Get(Vec<Vec<usize>>, usize),
    /// A read of which this shard's keys are done ([`Shard::kv_get_start`]):
    /// the values so far, and per part the indices its answer fills.
    /// (Boxed: it would double the size of every pending operation.)
    GetLocal(Box<GetLocal>),
    /// A delete split by owner: the counts add up.
    Delete,
    /// Every shard flushed.
    Flush,
}

impl Shard {
    /// Starts `op` (keys already validated, access already checked); the
    /// answer is ready at once when this shard owns every key.
    pub(crate) fn kv_start(&self, op: KvOp) -> KvPending {
        if let KvOp::Flush = op {
            let token = self.kv_waits.start(self.shards);
            for s in 0..self.shards {
                self.kv_send(s, token, s as u16, KvOp::Flush);
            }
            return KvPending::Waiting {
                token,
                layout: Layout::Flush,
            };
        }
        let keys = op.keys();
        let Some(first) = keys.first() else {
            return KvPending::Ready(match op {
                KvOp::Delete { .. } => KvAnswer::Deleted(0),
                _ => KvAnswer::Values(Vec::new()),
            });
        };
        let owner = self.router.owner(first);
        if keys.iter().all(|k| self.router.owner(k) == owner) {
            if owner == self.id {
                return KvPending::Ready(self.kv_apply(op));
            }
            let token = self.kv_waits.start(1);
            self.kv_send(owner, token, 0, op);
            return KvPending::Waiting {
                token,
                layout: Layout::Single,
            };
        }
        // Several owners: one part each.
        let mut groups: Vec<(usize, Vec<usize>)> = Vec::new();
        for (i, k) in keys.iter().enumerate() {
            let owner = self.router.owner(k);
            match groups.iter_mut().find(|(o, _)| *o == owner) {
                Some((_, v)) => v.push(i),
                None => groups.push((owner, vec![i])),
            }
        }
        let token = self.kv_waits.start(groups.len());
        let n = keys.len();
        let layout = match op {
            KvOp::Get { .. } => Layout::Get(groups.iter().map(|(_, v)| v.clone()).collect(), n),
            _ => Layout::Delete,
        };
        for (part, (owner, idx)) in groups.into_iter().enumerate() {
            let sub = idx.iter().map(|&i| op.keys()[i].clone()).collect();
            if let Some(sub) = op.with_keys(sub) {
                self.kv_send(owner, token, part as u16, sub);
            }
        }
        KvPending::Waiting { token, layout }
    }

    /// Starts a read of `keys` (validated, access checked) without taking
    /// them: the keys this shard owns are read at once, in place, and only
    /// the others are copied, into one request per owner. (A pipelined
    /// memcached client's run of gets, which keeps its keys for the reply.)
    pub(crate) fn kv_get_start(&self, keys: &KeyList, now_ms: u64) -> KvPending {
        let mut values = vec![None; keys.len()];
        // Per other owner: the indices of its keys, and the keys.
        let mut groups: Vec<(usize, Vec<usize>, Vec<Box<str>>)> = Vec::new();
        // This shard's keys, read together (their lookups overlap).
        let mut local = Vec::with_capacity(keys.len());
        for (i, k) in keys.iter().enumerate() {
            let owner = self.router.owner(k);
            if owner == self.id {
                local.push((i, k));
                continue;
            }
            match groups.iter_mut().find(|(o, ..)| *o == owner) {
                Some((_, idx, ks)) => {
                    idx.push(i);
                    ks.push(k.into());
                }
                None => groups.push((owner, vec![i], vec![k.into()])),
            }
        }
        self.kv
            .borrow_mut()
            .get_many(local, now_ms, |i, v| values[i] = v);
        if groups.is_empty() {
            return KvPending::Ready(KvAnswer::Values(values));
        }
        let token = self.kv_waits.start(groups.len());
        let mut index = Vec::with_capacity(groups.len());
        for (part, (owner, idx, keys)) in groups.into_iter().enumerate() {
            self.kv_send(owner, token, part as u16, KvOp::Get { keys });
            index.push(idx);
        }
        KvPending::Waiting {
            token,
            layout: Layout::GetLocal(Box::new(GetLocal { values, index })),
        }
    }

    /// Waits for the answer of an operation [`Shard::kv_start`] began.
    pub(crate) async fn kv_finish(&self, pending: KvPending) -> KvAnswer {
        let (token, layout) = match pending {
            KvPending::Ready(answer) => return answer,
            KvPending::Waiting { token, layout } => (token, layout),
        };
        let mut parts = self.kv_waits.wait(token).await;
        match layout {
            Layout::Single => parts.pop().map_or(KvAnswer::Values(Vec::new()), |(_, a)| a),
            Layout::Flush => KvAnswer::Flushed,
            Layout::Delete => KvAnswer::Deleted(
                parts
                    .iter()
                    .map(|(_, a)| match a {
                        KvAnswer::Deleted(n) => *n,
                        _ => 0,
                    })
                    .sum(),
            ),
            Layout::Get(index, n) => Self::merge_gets(vec![None; n], &index, parts),
            Layout::GetLocal(got) => Self::merge_gets(got.values, &got.index, parts),
        }
    }

    /// The values of a read split by owner, in request order.
    fn merge_gets(
        mut values: Vec<Option<(KvValue, u64)>>,
        index: &[Vec<usize>],
        parts: Vec<(u16, KvAnswer)>,
    ) -> KvAnswer {
        for (part, answer) in parts {
            let (Some(idx), KvAnswer::Values(vals)) = (index.get(part as usize), answer) else {
                continue;
            };
            for (&i, v) in idx.iter().zip(vals) {
                values[i] = v;
            }
        }
        KvAnswer::Values(values)
    }

    fn kv_send(&self, owner: usize, token: u64, part: u16, op: KvOp) {
        self.request(owner, Request::Kv(Box::new(KvRequest { token, part, op })));
    }

    /// As owner: carries out a part sent by home shard `from`.
    pub(super) fn kv_request(&self, from: usize, req: KvRequest) {
        let KvRequest { token, part, op } = req;
        let answer = self.kv_apply(op);
        self.respond(
            from,
            Response::Kv {
                token,
                part,
                answer,
            },
        );
    }

    /// Carries out `op` on this shard's keys; what it changed replicates
    /// and reaches watchers.
    fn kv_apply(&self, op: KvOp) -> KvAnswer {
        self.clock.refresh();
        let now = self.clock.now_ms();
        if matches!(op, KvOp::Flush) && self.cfg.kv.watch {
            return self.kv_flush_watched(now);
        }
        let mut changes = Vec::new();
        // Changes are copied out only for the links and watchers.
        let record = (self.kv_replicates || self.cfg.kv.watch).then_some(&mut changes);
        let answer = {
            let origin = self.origin;
            let clock = &self.clock;
            self.kv.borrow_mut().apply(
                op,
                now,
                |after| MsgKey {
                    sent_us: clock.next_above(after.sent_us),
                    origin,
                },
                record,
            )
        };
        for change in changes {
            self.kv_changed(&change);
            if self.kv_replicates {
                self.respond(CONTROL_SHARD, Response::KvReplicate(Box::new(change)));
            }
        }
        answer
    }

    /// `flush_all` with `kv_watch` on: every key it removes is a change
    /// its watchers are told of (`deleted`), as for a delete — they were
    /// told nothing, and a watcher mirroring the keys kept them for good. A
    /// flush is this node's alone (not replicated), and so are these.
    fn kv_flush_watched(&self, now: u64) -> KvAnswer {
        let mut gone = Vec::new();
        {
            let kv = self.kv.borrow();
            let mut cursor = 0;
            loop {
                let (page, next) = kv.page(cursor, PAGE, now);
                gone.extend(
                    page.into_iter()
                        .filter(|c| c.value.is_some())
                        .map(|c| c.key),
                );
                match next {
                    Some(n) => cursor = n,
                    None => break,
                }
            }
        }
        let answer = self
            .kv
            .borrow_mut()
            .apply(KvOp::Flush, now, |after| after, None);
        for key in gone {
            self.kv_changed(&KvChange {
                key,
                value: None,
                expires_ms: 0,
                pos: MsgKey::default(),
            });
        }
        answer
    }

    /// As owner: a change from another node, applied when it is newer.
    pub(super) fn kv_replicated(&self, change: KvChange) {
        let applied = self
            .kv
            .borrow_mut()
            .apply_replicated(change.clone(), now_ms());
        if applied {
            self.kv_changed(&change);
        }
    }

    /// Publishes a change to the key's watch queue (`kv_watch`):
    /// `{"key": k, "value": v}` or `{"key": k, "deleted": true}`, stamped.
    /// Each node publishes what it applies (watch queues are reserved, so
    /// their messages never cross links), in the key's order: the owner of
    /// the key sends them all to the owner of the queue over one channel.
    fn kv_changed(&self, change: &KvChange) {
        if !self.cfg.kv.watch {
            return;
        }
        let sent_us = self.next_sent();
        let mut json = Vec::with_capacity(64 + change.key.len());
        json.extend_from_slice(b"{\"key\": ");
        proto::write_json_string(&change.key, &mut json);
        match &change.value {
            Some(v) => {
                json.extend_from_slice(b", \"value\": ");
                v.write_json(&mut json);
            }
            None => json.extend_from_slice(b", \"deleted\": true"),
        }
        json.extend_from_slice(b", \"coremq_sender\": \"$coremq\", \"coremq_sent\": ");
        proto::write_sent(sent_us, &mut json);
        json.extend_from_slice(b", \"coremq_server\": ");
        proto::write_json_string(&self.node.server, &mut json);
        json.push(b'}');
        let queue = format!("{KV_WATCH_PREFIX}{}", change.key);
        self.publish_system(&queue, &json, sent_us);
    }

    /// As owner: a page of keys for a cluster link that just came up.
    pub(super) fn kv_page(&self, from: usize, token: u64, cursor: usize) {
        let page = self.kv.borrow().page(cursor, PAGE, now_ms());
        self.respond(
            from,
            Response::KvPage {
                token,
                page: Box::new(page),
            },
        );
    }

    /// A page of shard `shard`'s keys from `cursor` (for the exchange with
    /// a cluster peer), and the cursor of the rest.
    pub(crate) async fn kv_page_of(
        &self,
        shard: usize,
        cursor: usize,
    ) -> (Vec<KvChange>, Option<usize>) {
        let token = self.kv_pages.start(1);
        self.request(shard, Request::KvPage { token, cursor });
        self.kv_pages
            .wait(token)
            .await
            .pop()
            .unwrap_or((Vec::new(), None))
    }

    /// Drops expired keys nobody reads (one tick of the periodic sweep).
    pub(crate) fn kv_sweep(&self) {
        let now = now_ms();
        let mut kv = self.kv.borrow_mut();
        for _ in 0..SWEEP_ROUNDS {
            if kv.sweep(now, SWEEP_SLOTS) * 4 < SWEEP_SLOTS {
                break;
            }
        }
    }

    /// Whether this node's store holds keys at all (the sweep idles
    /// otherwise).
    pub(crate) fn kv_is_empty(&self) -> bool {
        self.kv.borrow().figures().bytes == 0
    }
}
