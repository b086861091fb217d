//! Counting deliveries per subscriber. Each subscriber sees one publisher's stream
//! of sequence numbers 0, 1, 2, … and must see each exactly once, in order; the
//! tracker says how far it got and what went wrong.

/// Per-subscriber delivery bookkeeping.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SeqTracker {
    /// The sequence number expected next.
    next: u64,
    /// Messages received (including repeats), the figure throughput is based on.
    pub received: u64,
    /// Sequence numbers jumped over (gaps: messages missing from the stream).
    pub skipped: u64,
    /// Messages whose number was lower than expected (repeats or reordering).
    pub out_of_order: u64,
    /// Messages without a readable marker.
    pub unreadable: u64,
}

impl SeqTracker {
    /// A tracker expecting sequence number 0 first.
    pub fn new() -> SeqTracker {
        SeqTracker::default()
    }

    /// Record one delivered message's sequence number (`None`: no marker).
    pub fn record(&mut self, seq: Option<u64>) {
        self.received += 1;
        match seq {
            None => self.unreadable += 1,
            Some(s) if s == self.next => self.next += 1,
            Some(s) if s > self.next => {
                self.skipped += s - self.next;
                self.next = s + 1;
            }
            Some(_) => self.out_of_order += 1,
        }
    }

    /// Messages received in order, each once: what throughput counts (a
    /// repeat is no delivery, and counting it would also have the
    /// subscriber stop reading before the stream's end).
    pub fn in_order(&self) -> u64 {
        self.received - self.out_of_order - self.unreadable
    }

    /// How far into the stream the subscriber has seen: one past the highest
    /// number received. The stream is done when this reaches its length,
    /// whatever came twice or went missing on the way.
    pub fn seen_through(&self) -> u64 {
        self.next
    }

    /// Messages of `published` this subscriber never got: what it did not receive in
    /// order, counting gaps even if later repeats made the total look right.
    pub fn lost(&self, published: u64) -> u64 {
        published.saturating_sub(self.in_order()).max(self.skipped)
    }

    /// Did this subscriber see exactly `published` messages, in order?
    pub fn is_complete(&self, published: u64) -> bool {
        self.lost(published) == 0 && self.out_of_order == 0 && self.unreadable == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(seqs: impl IntoIterator<Item = u64>) -> SeqTracker {
        let mut t = SeqTracker::new();
        for s in seqs {
            t.record(Some(s));
        }
        t
    }

    #[test]
    fn complete_stream() {
        let t = feed(0..1000);
        assert_eq!(t.lost(1000), 0);
        assert!(t.is_complete(1000));
    }

    #[test]
    fn gap_in_the_middle_is_reported() {
        let t = feed((0..1000).filter(|&s| !(500..503).contains(&s)));
        assert_eq!(t.skipped, 3);
        assert_eq!(t.lost(1000), 3);
        assert!(!t.is_complete(1000));
    }

    #[test]
    fn missing_tail_is_reported() {
        let t = feed(0..990);
        assert_eq!(t.skipped, 0);
        assert_eq!(t.lost(1000), 10);
    }

    #[test]
    fn repeat_does_not_hide_a_gap() {
        // 1000 messages arrive, but 7 is missing and 8 came twice.
        let t = feed((0..1000).filter(|&s| s != 7).chain([8]));
        assert_eq!(t.received, 1000);
        assert_eq!(t.out_of_order, 1);
        assert_eq!(t.lost(1000), 1);
        assert_eq!((t.in_order(), t.seen_through()), (999, 1000));
    }

    #[test]
    fn repeats_are_no_deliveries_and_do_not_end_the_stream_early() {
        // Every 100th message twice: nothing lost, 10 repeats.
        let mut t = SeqTracker::new();
        for s in 0..990 {
            t.record(Some(s));
            if s % 100 == 0 {
                t.record(Some(s));
            }
        }
        assert_eq!(t.received, 1000, "as many frames as the stream has");
        assert_eq!(t.seen_through(), 990, "but not at its end");
        for s in 990..1000 {
            t.record(Some(s));
        }
        assert_eq!((t.in_order(), t.out_of_order, t.lost(1000)), (1000, 10, 0));
    }

    #[test]
    fn reordering_is_reported() {
        let t = feed([0, 2, 1, 3]);
        assert_eq!(t.out_of_order, 1);
        assert!(!t.is_complete(4));
    }

    #[test]
    fn unreadable_messages_count_against_completeness() {
        let mut t = feed(0..3);
        t.record(None);
        assert_eq!(t.unreadable, 1);
        assert_eq!(t.lost(4), 1);
    }
}
