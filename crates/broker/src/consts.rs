//! Names and numbers that several layers agree on. A leaf: it imports nothing
//! from the crate, so any module may use it.

/// The shard that also runs the WebSocket/HTTP listener, the statistics
/// publisher and the cluster links.
pub(crate) const CONTROL_SHARD: usize = 0;

/// Queues whose names start with this belong to the broker: clients may
/// subscribe to them but not publish.
pub(crate) const RESERVED_PREFIX: &str = "$coremq.";

/// Whether clients may not publish to `queue`.
pub(crate) fn is_reserved(queue: &str) -> bool {
    queue.starts_with(RESERVED_PREFIX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserved_names_are_the_prefixed_ones() {
        assert!(is_reserved("$coremq.stats"));
        assert!(is_reserved("$coremq."));
        assert!(!is_reserved("$coremq"));
        assert!(!is_reserved("news"));
        assert!(!is_reserved("x$coremq.stats"));
    }
}
