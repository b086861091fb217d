//! Names and numbers that several layers agree on. A leaf: it imports nothing
//! from the crate, so any module may use it.

/// The shard that also runs the WebSocket/HTTP listener, the statistics
/// publisher and the cluster links.
pub(crate) const CONTROL_SHARD: usize = 0;

/// Queues whose names start with this belong to the broker: clients may
/// subscribe to them but not publish.
pub(crate) const RESERVED_PREFIX: &str = "$coremq.";

/// Watch queues of the key-value store (`kv_watch`, PROTOCOL.md §13): a
/// change of key `k` is published to `$kv.<k>` by the broker. Reserved like
/// `$coremq.` queues, but reading one takes `kv_read` on the key instead of
/// `monitor`.
pub(crate) const KV_WATCH_PREFIX: &str = "$kv.";

/// Whether clients may not publish to `queue` (its messages are the
/// broker's own: never replicated nor written to disk).
pub(crate) fn is_reserved(queue: &str) -> bool {
    queue.starts_with(RESERVED_PREFIX) || queue.starts_with(KV_WATCH_PREFIX)
}

/// Whether `queue` has the shape of a connection id (a lower-case hyphenated
/// UUID, as every node gives them out). Such queues are private to their
/// connection (PROTOCOL.md §2): knowing an id lets a client send to it, not
/// read it. Checked by shape, so it holds for ids of every node of a cluster
/// without asking anyone.
pub(crate) fn is_conn_id(queue: &str) -> bool {
    let b = queue.as_bytes();
    b.len() == 36
        && b.iter().enumerate().all(|(i, &c)| match i {
            8 | 13 | 18 | 23 => c == b'-',
            _ => c.is_ascii_digit() || (b'a'..=b'f').contains(&c),
        })
}

/// The longest name `queue` may have under `max_queue_name_length` = `max`:
/// `max`, but a connection id's own length for a connection id, which is the
/// broker's name for a connection, not one the client chose: it stays
/// reachable whatever the limit (PROTOCOL.md §2). The id's shape is looked
/// at only for a name over `max`.
pub(crate) fn name_limit(queue: &str, max: usize) -> usize {
    if queue.len() > max && is_conn_id(queue) {
        queue.len()
    } else {
        max
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_ids_are_recognised_by_shape() {
        let id = uuid::Uuid::new_v4().hyphenated().to_string();
        assert!(is_conn_id(&id));
        assert!(is_conn_id("00000000-0000-4000-8000-000000000001"));
        assert!(
            !is_conn_id(&id.to_uppercase()),
            "another queue: names are case-sensitive"
        );
        assert!(!is_conn_id(&id[1..]));
        assert!(!is_conn_id(&format!("{id}x")));
        assert!(!is_conn_id("00000000x0000-4000-8000-000000000001"));
        assert!(!is_conn_id("news"));
    }

    #[test]
    fn a_connection_id_is_under_any_name_limit() {
        let id = "00000000-0000-4000-8000-000000000001";
        assert_eq!(name_limit(id, 10), 36);
        assert_eq!(name_limit(&"q".repeat(36), 10), 10);
        assert_eq!(name_limit("short", 10), 10);
        assert_eq!(name_limit(id, 255), 255);
    }

    #[test]
    fn reserved_names_are_the_prefixed_ones() {
        assert!(is_reserved("$coremq.stats"));
        assert!(is_reserved("$coremq."));
        assert!(!is_reserved("$coremq"));
        assert!(!is_reserved("news"));
        assert!(!is_reserved("x$coremq.stats"));
    }
}
