//! What a reply to a client can be, and how a history reply is written.

use super::state::Close;
use crate::msg::MsgFrame;
use crate::stats::ShardStats;
use coremq_protocol as proto;

/// The content of a reply once complete.
pub(crate) enum ReplyKind {
    /// The welcome frame (sent once the own-id subscription is registered).
    Welcome,
    /// `{"response": TEXT}`.
    Text(&'static str),
    /// `OK: Message sent`, the one reply on the publish hot path.
    Sent,
    /// A JSON object built in advance (errors, options).
    Json(Vec<u8>),
    /// A history reply being assembled from owner shards.
    History {
        /// Requested queue names, de-duplicated, in request order.
        names: Vec<Box<str>>,
        /// Messages per name, filled as owners answer.
        parts: Vec<Vec<MsgFrame>>,
    },
    /// `OK: Subscribe successful` for these queues: their deliveries that
    /// arrive before it is written wait for it (an owner registers its part
    /// and delivers before another owner, or an earlier reply, is done; a
    /// client written for the original reads the next frame as the answer).
    Subscribed(Vec<Box<str>>),
    /// A subscribe with `coremq_since` (§10), assembled as owners answer.
    Resumed {
        /// Whether each resumed queue lost nothing after its position.
        recovered: Vec<(Box<str>, bool)>,
        /// The retained messages after the positions.
        replay: Vec<MsgFrame>,
    },
    /// A status reply being assembled from every shard.
    Status(Vec<ShardStats>),
    /// A JSON object sent as it is, with no queue: WebSocket-only replies such
    /// as `{"error": …}` (framed with an empty queue name, which no real queue
    /// can have, so the WebSocket side knows not to add `"queue"`).
    Raw(Vec<u8>),
    /// The last frame (a framing error or BYE): once written, the connection
    /// closes. It waits for every earlier reply, so a client that pipelined
    /// requests before the end gets all their answers first.
    Final(Close, Vec<u8>),
}

/// `{"history": {"q": [m, ...], ...}}`; queues without messages are left out.
/// `seq`: each message with its `coremq_seq` (§10), for a connection that
/// asked for it.
pub(super) fn write_history(
    names: &[Box<str>],
    parts: &[Vec<MsgFrame>],
    seq: bool,
    out: &mut Vec<u8>,
) {
    let mut w = proto::HistoryWriter::new(out);
    for (name, msgs) in names.iter().zip(parts) {
        if seq {
            let with: Vec<Vec<u8>> = msgs.iter().map(json_with_seq).collect();
            w.push_queue(name, with.iter().map(Vec::as_slice));
        } else {
            w.push_queue(name, msgs.iter().map(MsgFrame::json));
        }
    }
    w.finish();
}

/// A stored message's JSON with its `coremq_seq` last (as it is without one).
fn json_with_seq(m: &MsgFrame) -> Vec<u8> {
    let mut json = Vec::with_capacity(m.json().len() + 40);
    m.write_json_with_seq(&mut json);
    json
}
