//! Deliveries into a connection's buffer and what happens when it is too full
//! to take them: the slow-consumer policies (G4, G5, §9).

use super::{Close, Conn, Queued, Transport};
use crate::frame::Forms;
use crate::msg::MsgFrame;
use crate::refusal::Refusal;
use coremq_config::SlowConsumerPolicy;
use coremq_protocol as proto;

impl Conn {
    /// Queues a delivered frame of `queue` unless the connection is closing,
    /// as `policy` says when it is over `max_pending` (G5, §9). `forms`
    /// holds the frame's other forms (with its `coremq_seq` (§10), for
    /// WebSocket): encoded by the first connection that needs one, shared
    /// by the others.
    pub(crate) fn deliver(
        &self,
        msg: &MsgFrame,
        forms: &mut Forms,
        policy: SlowConsumerPolicy,
        queue: &str,
    ) -> Queued {
        let mut st = self.st.borrow_mut();
        if st.closing.is_some() {
            return Queued::Closing;
        }
        let frame = forms.pick(msg, self.transport == Transport::WebSocket, st.opts.seq);
        if st.resuming && st.subs.get(queue) == Some(&super::SubState::Resuming) {
            // After the resume's reply and replayed messages (§10); held
            // bytes count toward the hard cap like queued ones.
            st.held_bytes += frame.len();
            if st.out.len() + st.held_bytes > self.hard_cap {
                drop(st);
                self.make_slow();
                return Queued::BecameSlow;
            }
            st.held.push((queue.into(), frame.clone()));
            return Queued::Ok;
        }
        let size = st.out.len() + frame.len();
        let mut stalled = false;
        // Nothing waiting: one message is taken whatever its size. A stored
        // message escapes non-ASCII text and can be ~3× max_message_size,
        // which max_pending (≥ max_message_size + 1 KiB) need not hold; a
        // subscriber that keeps up must still get it.
        if size > self.max_pending && !st.out.is_empty() {
            match policy {
                SlowConsumerPolicy::Block if size <= self.hard_cap => {
                    stalled = self.flow.stall();
                    if stalled {
                        crate::stats::Counters::add(&self.counters.stalls, 1);
                    }
                }
                SlowConsumerPolicy::Drop => {
                    drop(st);
                    self.flow.dropped(queue);
                    crate::stats::Counters::add(&self.counters.drops, 1);
                    return Queued::Dropped;
                }
                SlowConsumerPolicy::Block | SlowConsumerPolicy::Disconnect => {
                    drop(st);
                    self.make_slow();
                    return Queued::BecameSlow;
                }
            }
        }
        let was_empty = st.out.is_empty();
        if let Some(n) = self.flow.take_drops(queue) {
            // What it missed, right before the next message of that queue.
            let mut json = Vec::new();
            proto::response_json(&format!("WARN: Dropped {n} messages"), &mut json);
            json.pop();
            json.extend_from_slice(b", \"queue\": ");
            proto::write_json_string(queue, &mut json);
            json.push(b'}');
            // WebSocket sends objects on an empty queue as they are (its
            // "queue" is the dropping one's, not the connection's id).
            let on = match self.transport {
                Transport::Tcp => &*self.id,
                Transport::WebSocket => "",
            };
            st.out.push_with(|out| self.encode(on, &json, out));
        }
        st.out.push_shared(frame);
        drop(st);
        if was_empty || stalled {
            // A stall is news for the task too: it arms the max_stall timer.
            self.wake();
        }
        if stalled {
            Queued::Stalled
        } else {
            Queued::Ok
        }
    }

    /// Whether the connection's input may be read: its publishes in flight
    /// are under their window and its own backlog is under `max_pending`
    /// (a client that does not read its replies is not read either).
    pub(crate) fn may_read(&self) -> bool {
        self.flow.window_open()
            && self.st.borrow().out.len() <= self.max_pending
            && !self.access.as_ref().is_some_and(|a| a.verifying())
    }

    /// Owners confirmed `bytes` of this connection's publishes.
    pub(crate) fn confirmed(&self, bytes: u32) {
        if self.flow.confirmed(bytes as usize) {
            self.wake();
        }
    }

    /// Cuts off a subscriber that stayed stalled for `max_stall`.
    pub(crate) fn stall_expired(&self) {
        self.make_slow();
    }

    /// Marks the connection a slow consumer: drops what it has not been sent
    /// yet beyond what the socket may already hold, queues the error and closes.
    pub(super) fn make_slow(&self) {
        if self.st.borrow().closing.is_some() {
            return;
        }
        self.end_stall();
        crate::stats::Counters::add(&self.counters.slow_consumers, 1);
        tracing::warn!(conn_id = %self.id, max_pending = self.max_pending, "slow consumer disconnected");
        let json = Refusal::SlowConsumer {
            max_pending: self.max_pending,
        }
        .json(self.transport);
        {
            // Frames not yet started will never be read in time: drop them, so
            // the error follows right after what the peer already has and the
            // memory goes back at once. The frame being written is kept whole.
            self.st.borrow_mut().out.cut_after_current_frame();
        }
        self.close_with(Close::SlowConsumer, &json);
    }

    /// `n` bytes were written to the socket. A stalled subscriber that is
    /// down to half of `max_pending` has caught up.
    pub(crate) fn written(&self, n: usize) {
        let mut st = self.st.borrow_mut();
        st.out.advance(n);
        // A reply that can be large waited for the buffer to come down
        // ([`Conn::flush_replies`]).
        let waiting = st.out.len() <= self.max_pending
            && st.replies.front().is_some_and(|s| s.remaining == 0);
        if self.flow.stalled_since().is_some() && st.out.len() <= self.max_pending / 2 {
            drop(st);
            self.end_stall();
        } else {
            drop(st);
        }
        if waiting {
            self.flush_replies();
        }
    }

    /// Ends a stall episode (counted in status).
    pub(super) fn end_stall(&self) {
        if let Some(d) = self.flow.unstall() {
            crate::stats::Counters::add(&self.counters.stall_us, d.as_micros() as u64);
        }
    }
}
