//! Every refusal a client can read, and the one place that writes it.
//!
//! Handlers say *what* was refused with a [`Refusal`]; [`Refusal::reply`]
//! decides, in one exhaustive `match`, the exact JSON a TCP client and a
//! WebSocket client read for it (PROTOCOL.md §3: `{"response": "ERROR: …"}`;
//! §5: a WebSocket message the gateway cannot take gets `{"error": …}`). A new
//! refusal (access control, limits) is a new variant here, and the compiler
//! points at every place that must say how it looks.

use coremq_protocol::{self as proto, BodyError, FramingError};

/// The transport a client speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Transport {
    /// `+LEN QUEUE JSON` frames over TCP (§1).
    Tcp,
    /// JSON text messages over WebSocket (§5).
    WebSocket,
}

/// Something the broker will not do for a client, with what the client is told.
#[derive(Debug)]
pub(crate) enum Refusal {
    /// A frame that cannot be resynchronised: the connection closes after it.
    Framing(FramingError),
    /// A well-framed body or message that is wrong; the connection stays open.
    Body(BodyError),
    /// A publish to a `$coremq.` queue.
    ReservedQueue(Box<str>),
    /// The connection may not do `action` on `queue` (§2, §8): the whole
    /// request is refused.
    PermissionDenied {
        /// `subscribe`, `history`, ...
        action: &'static str,
        /// The queue it was refused for (empty for `status`).
        queue: Box<str>,
    },
    /// A list command naming more than `max_list_length` queues (or keys).
    TooManyQueues {
        /// The configured limit.
        max: usize,
        /// What the list names: `queues` or `keys`.
        what: &'static str,
    },
    /// A subscribe that would take the connection past `max_subscriptions`.
    TooManySubscriptions {
        /// The configured limit.
        max: usize,
    },
    /// A `coremq_replicant` from a host not in `cluster_nodes` or
    /// `allowed_replicants`, or with the wrong secret.
    NotReplicant,
    /// A subscriber over `max_pending`: disconnected after this.
    SlowConsumer {
        /// The configured limit, in bytes.
        max_pending: usize,
    },
    /// A connection over `max_connections`: closed after this.
    TooManyConnections {
        /// The configured limit.
        max: usize,
    },
    /// A WebSocket message over `max_message_size` (over TCP the same is a
    /// [`FramingError`]): the connection closes with code 1009.
    TooBig,
    /// A binary WebSocket message.
    Binary,
    /// `coremq_replicant` over WebSocket.
    ReplicantOverWebSocket,
    /// A WebSocket publish whose `"queue"` is not a string.
    QueueNotAString,
    /// A WebSocket message with `"queue"` or `"corews_status"` twice: which
    /// one was meant is not for the broker to guess.
    RepeatedMember(&'static str),
    /// A WebSocket message that is no command and names no queue.
    UnknownMessage,
    /// A request `[anonymous]` does not allow, from a connection that has
    /// not authenticated (§8).
    AuthRequired,
    /// A `coremq_auth` that failed, for whatever reason (the client is never
    /// told which): the connection closes after it.
    AuthFailed,
    /// The connection's token expired: it closes after this.
    TokenExpired,
    /// No authentication within `auth_timeout`: the connection closes after this.
    AuthTimeout,
    /// A frame holding a share of `max_frame_memory` that did not arrive
    /// within `frame_timeout` of waiting for it: the connection closes
    /// after this, and the share is free for others.
    FrameTimeout {
        /// The configured limit, in seconds.
        secs: f64,
    },
    /// A `coremq_auth` to a server without `users_file`.
    AuthNotEnabled,
    /// `coremq_incr` on a key whose value is not an integer (§13).
    KvNotANumber(Box<str>),
    /// `coremq_incr` past a 64-bit integer.
    KvOverflow(Box<str>),
    /// A `coremq_set` value over `kv_max_value`.
    KvValueTooLarge {
        /// Bytes of the value.
        len: usize,
        /// The configured limit.
        max: usize,
    },
    /// A key-value request that reads what the store holds, on a node that
    /// has not had every cluster peer's keys since it started
    /// ([`crate::node::NodeShared::kv_ready`]).
    KvNotInSync,
    /// A history or key-value read whose reply would be larger than one
    /// reply may be (`max_pending`): nothing of it is sent.
    ReplyTooLarge {
        /// `coremq_gethistory` or `coremq_get`.
        command: &'static str,
        /// What to ask for fewer of: `queues` or `keys`.
        fewer: &'static str,
        /// The limit, in bytes.
        max: usize,
    },
}

/// How a refusal reaches the connection's reply order.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Wire {
    /// A reply object on the connection's id queue (WebSocket adds `"queue"`).
    Reply(Vec<u8>),
    /// A WebSocket-only object sent as it is.
    Raw(Vec<u8>),
    /// A WebSocket close frame with this code and reason.
    Close(u16, &'static str),
}

impl Refusal {
    /// What the client is told, for `transport`.
    pub(crate) fn reply(&self, transport: Transport) -> Wire {
        use Transport::{Tcp, WebSocket};
        match (self, transport) {
            (Refusal::TooBig, WebSocket) => Wire::Close(1009, TOO_BIG),
            // The gateway's own refusals of a message it cannot take (§5).
            (Refusal::Body(e), WebSocket) => ws_error(&e.to_string()),
            (
                Refusal::Binary
                | Refusal::ReplicantOverWebSocket
                | Refusal::QueueNotAString
                | Refusal::RepeatedMember(_)
                | Refusal::UnknownMessage,
                _,
            ) => ws_error(&self.reason()),
            // Broker refusals: the same `ERROR:` reply on both transports.
            (Refusal::Body(_) | Refusal::TooBig, Tcp)
            | (
                Refusal::Framing(_)
                | Refusal::ReservedQueue(_)
                | Refusal::TooManyQueues { .. }
                | Refusal::TooManySubscriptions { .. }
                | Refusal::PermissionDenied { .. }
                | Refusal::NotReplicant
                | Refusal::SlowConsumer { .. }
                | Refusal::TooManyConnections { .. }
                | Refusal::AuthRequired
                | Refusal::AuthFailed
                | Refusal::TokenExpired
                | Refusal::AuthTimeout
                | Refusal::FrameTimeout { .. }
                | Refusal::AuthNotEnabled
                | Refusal::KvNotANumber(_)
                | Refusal::KvOverflow(_)
                | Refusal::KvValueTooLarge { .. }
                | Refusal::KvNotInSync
                | Refusal::ReplyTooLarge { .. },
                _,
            ) => {
                let mut json = Vec::new();
                proto::error_json(&self.reason(), &mut json);
                Wire::Reply(json)
            }
        }
    }

    /// Whether the connection closes after this refusal (its frame is the
    /// last one the client reads).
    pub(crate) fn ends_connection(&self) -> bool {
        matches!(
            self,
            Refusal::Framing(_)
                | Refusal::AuthFailed
                | Refusal::TokenExpired
                | Refusal::AuthTimeout
                | Refusal::FrameTimeout { .. }
        )
    }

    /// The reply JSON whatever its kind (for frames written outside the
    /// reply order: closing errors).
    pub(crate) fn json(&self, transport: Transport) -> Vec<u8> {
        match self.reply(transport) {
            Wire::Reply(j) | Wire::Raw(j) => j,
            Wire::Close(_, reason) => {
                let mut json = Vec::new();
                proto::error_json(reason, &mut json);
                json
            }
        }
    }

    /// Whether status counts it under `client_errors` (slow consumers and
    /// refused connections have counters of their own; a refused replicant is
    /// a peer's configuration, not a client's mistake).
    pub(crate) fn is_client_error(&self) -> bool {
        match self {
            Refusal::Framing(_)
            | Refusal::Body(_)
            | Refusal::ReservedQueue(_)
            | Refusal::TooManyQueues { .. }
            | Refusal::TooManySubscriptions { .. }
            | Refusal::PermissionDenied { .. }
            | Refusal::TooBig
            | Refusal::Binary
            | Refusal::ReplicantOverWebSocket
            | Refusal::QueueNotAString
            | Refusal::RepeatedMember(_)
            | Refusal::UnknownMessage
            | Refusal::AuthNotEnabled
            | Refusal::FrameTimeout { .. }
            | Refusal::KvNotANumber(_)
            | Refusal::KvOverflow(_)
            | Refusal::KvValueTooLarge { .. }
            | Refusal::ReplyTooLarge { .. } => true,
            // Counted as refused logins instead.
            Refusal::AuthRequired
            | Refusal::AuthFailed
            | Refusal::TokenExpired
            | Refusal::AuthTimeout => false,
            Refusal::NotReplicant
            | Refusal::SlowConsumer { .. }
            | Refusal::TooManyConnections { .. }
            | Refusal::KvNotInSync => false,
        }
    }

    /// The reason as a person reads it.
    fn reason(&self) -> String {
        match self {
            Refusal::Framing(e) => e.to_string(),
            Refusal::Body(e) => e.to_string(),
            Refusal::ReservedQueue(q) => {
                format!("queue {q} is reserved for the broker; subscribe to it instead")
            }
            Refusal::PermissionDenied { action, queue } if queue.is_empty() => {
                format!("Permission denied: {action}")
            }
            Refusal::PermissionDenied { action, queue } => {
                format!("Permission denied: {action} {queue}")
            }
            Refusal::AuthRequired => "Authentication required".into(),
            Refusal::AuthFailed => "Authentication failed".into(),
            Refusal::TokenExpired => "Token expired".into(),
            Refusal::AuthTimeout => {
                "Authentication required: none within auth_timeout; closing".into()
            }
            Refusal::AuthNotEnabled => {
                "Authentication is not enabled on this server (no users_file)".into()
            }
            Refusal::FrameTimeout { secs } => format!(
                "a large message did not arrive within frame_timeout ({secs} s of waiting for it); closing"
            ),
            Refusal::TooManyQueues { max, what } => {
                format!("Too many {what} in one request (max {max})")
            }
            Refusal::TooManySubscriptions { max } => {
                format!("Too many subscriptions (max_subscriptions = {max})")
            }
            Refusal::NotReplicant => "Not allowed to be a replicant".into(),
            Refusal::SlowConsumer { max_pending } => format!(
                "slow consumer: more than {max_pending} bytes waiting to be read (max_pending); disconnecting"
            ),
            Refusal::TooManyConnections { max } => {
                format!("too many connections (max_connections = {max}); try again later")
            }
            Refusal::TooBig => TOO_BIG.into(),
            Refusal::Binary => {
                "binary frames are not supported: send JSON objects as text frames".into()
            }
            Refusal::ReplicantOverWebSocket => "coremq_replicant is only available over TCP".into(),
            Refusal::RepeatedMember(name) => {
                format!("\"{name}\" is given more than once: give it once")
            }
            Refusal::QueueNotAString => {
                "\"queue\" must be a string naming the queue to publish to".into()
            }
            Refusal::UnknownMessage => "unknown message: send coremq_subscribe, coremq_unsubscribe, \
                 coremq_gethistory, coremq_options, corews_status, or an object with \"queue\" to publish"
                .into(),
            Refusal::KvNotANumber(key) => {
                format!("coremq_incr: the value of {key} is not an integer")
            }
            Refusal::KvOverflow(key) => {
                format!("coremq_incr: {key} would overflow a 64-bit integer")
            }
            Refusal::KvValueTooLarge { len, max } => {
                format!("coremq_set: a value of {len} bytes is larger than kv_max_value ({max})")
            }
            Refusal::KvNotInSync => KV_NOT_IN_SYNC.into(),
            Refusal::ReplyTooLarge {
                command,
                fewer,
                max,
            } => format!(
                "{command}: the reply would be larger than max_pending ({max} bytes); ask for fewer {fewer}"
            ),
        }
    }
}

impl From<BodyError> for Refusal {
    fn from(e: BodyError) -> Refusal {
        Refusal::Body(e)
    }
}

impl From<FramingError> for Refusal {
    fn from(e: FramingError) -> Refusal {
        Refusal::Framing(e)
    }
}

/// The reason of [`Refusal::KvNotInSync`] (the memcached port says it too).
pub(crate) const KV_NOT_IN_SYNC: &str =
    "key-value store not yet in sync with the cluster (this node has just started); try again";

/// The reason of [`Refusal::TooBig`].
const TOO_BIG: &str = "message larger than max_message_size";

/// `{"error": reason}`.
fn ws_error(reason: &str) -> Wire {
    let mut json = b"{\"error\": ".to_vec();
    proto::write_json_string(reason, &mut json);
    json.push(b'}');
    Wire::Raw(json)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a client reads for `r`: a TCP client the frame on its id queue, a
    /// WebSocket client the text message (replies get `"queue"` added, as the
    /// gateway does for everything on the connection's id queue).
    fn read_by_client(r: &Refusal, t: Transport) -> String {
        const ID: &str = "id-1";
        let out = match (r.reply(t), t) {
            (Wire::Reply(json), Transport::Tcp) => {
                let mut frame = Vec::new();
                proto::encode_frame(ID, &json, &mut frame);
                frame
            }
            (Wire::Reply(json), Transport::WebSocket) => {
                let mut q = Vec::new();
                proto::write_json_string(ID, &mut q);
                let mut out = Vec::new();
                proto::rewrite_object(&json, &["queue"], &[("queue", &q)], &mut out).unwrap();
                out
            }
            (Wire::Raw(json), _) => json,
            (Wire::Close(code, reason), _) => format!("close {code} {reason}").into_bytes(),
        };
        String::from_utf8(out).unwrap()
    }

    /// One example of every variant: the `match` has no wildcard, so a new
    /// variant does not compile until it has its row in the table below.
    fn example(r: &Refusal) -> usize {
        match r {
            Refusal::Framing(_) => 0,
            Refusal::Body(_) => 1,
            Refusal::ReservedQueue(_) => 2,
            Refusal::NotReplicant => 3,
            Refusal::SlowConsumer { .. } => 4,
            Refusal::TooManyConnections { .. } => 5,
            Refusal::Binary => 6,
            Refusal::ReplicantOverWebSocket => 7,
            Refusal::QueueNotAString => 8,
            Refusal::UnknownMessage => 9,
            Refusal::TooBig => 10,
            Refusal::TooManyQueues { .. } => 11,
            Refusal::TooManySubscriptions { .. } => 12,
            Refusal::PermissionDenied { .. } => 13,
            Refusal::AuthRequired => 14,
            Refusal::AuthFailed => 15,
            Refusal::TokenExpired => 16,
            Refusal::AuthTimeout => 17,
            Refusal::AuthNotEnabled => 18,
            Refusal::KvNotANumber(_) => 19,
            Refusal::KvOverflow(_) => 20,
            Refusal::KvValueTooLarge { .. } => 21,
            Refusal::ReplyTooLarge { .. } => 22,
            Refusal::KvNotInSync => 23,
            Refusal::RepeatedMember(_) => 24,
            Refusal::FrameTimeout { .. } => 25,
        }
    }

    #[test]
    fn every_refusal_reads_exactly_so_on_tcp_and_websocket() {
        let framing = coremq_protocol::decode_frame(b"x", 100).unwrap_err();
        let table: Vec<(Refusal, &str, &str, bool)> = vec![
            (
                Refusal::Framing(framing),
                r#"+90 id-1 {"response": "ERROR: frame must start with '+': expected '+' LEN ' ' QUEUE ' ' JSON"}"#,
                r#"{"response": "ERROR: frame must start with '+': expected '+' LEN ' ' QUEUE ' ' JSON", "queue": "id-1"}"#,
                true,
            ),
            (
                Refusal::Body(BodyError::NotAnObject),
                r#"+57 id-1 {"response": "ERROR: message must be a JSON object"}"#,
                r#"{"error": "message must be a JSON object"}"#,
                true,
            ),
            (
                Refusal::ReservedQueue("$coremq.stats".into()),
                r#"+99 id-1 {"response": "ERROR: queue $coremq.stats is reserved for the broker; subscribe to it instead"}"#,
                r#"{"response": "ERROR: queue $coremq.stats is reserved for the broker; subscribe to it instead", "queue": "id-1"}"#,
                true,
            ),
            (
                Refusal::PermissionDenied {
                    action: "subscribe",
                    queue: "00000000-0000-4000-8000-000000000001".into(),
                },
                r#"+93 id-1 {"response": "ERROR: Permission denied: subscribe 00000000-0000-4000-8000-000000000001"}"#,
                r#"{"response": "ERROR: Permission denied: subscribe 00000000-0000-4000-8000-000000000001", "queue": "id-1"}"#,
                true,
            ),
            (
                Refusal::TooManyQueues {
                    max: 1000,
                    what: "queues",
                },
                r#"+69 id-1 {"response": "ERROR: Too many queues in one request (max 1000)"}"#,
                r#"{"response": "ERROR: Too many queues in one request (max 1000)", "queue": "id-1"}"#,
                true,
            ),
            (
                Refusal::TooManyQueues {
                    max: 1000,
                    what: "keys",
                },
                r#"+67 id-1 {"response": "ERROR: Too many keys in one request (max 1000)"}"#,
                r#"{"response": "ERROR: Too many keys in one request (max 1000)", "queue": "id-1"}"#,
                true,
            ),
            (
                Refusal::TooManySubscriptions { max: 2 },
                r#"+74 id-1 {"response": "ERROR: Too many subscriptions (max_subscriptions = 2)"}"#,
                r#"{"response": "ERROR: Too many subscriptions (max_subscriptions = 2)", "queue": "id-1"}"#,
                true,
            ),
            (
                Refusal::NotReplicant,
                r#"+57 id-1 {"response": "ERROR: Not allowed to be a replicant"}"#,
                r#"{"response": "ERROR: Not allowed to be a replicant", "queue": "id-1"}"#,
                false,
            ),
            (
                Refusal::SlowConsumer { max_pending: 100 },
                r#"+110 id-1 {"response": "ERROR: slow consumer: more than 100 bytes waiting to be read (max_pending); disconnecting"}"#,
                r#"{"response": "ERROR: slow consumer: more than 100 bytes waiting to be read (max_pending); disconnecting", "queue": "id-1"}"#,
                false,
            ),
            (
                Refusal::TooManyConnections { max: 3 },
                r#"+87 id-1 {"response": "ERROR: too many connections (max_connections = 3); try again later"}"#,
                r#"{"response": "ERROR: too many connections (max_connections = 3); try again later", "queue": "id-1"}"#,
                false,
            ),
            (
                Refusal::TooBig,
                r#"+64 id-1 {"response": "ERROR: message larger than max_message_size"}"#,
                "close 1009 message larger than max_message_size",
                true,
            ),
            (
                Refusal::Binary,
                r#"{"error": "binary frames are not supported: send JSON objects as text frames"}"#,
                r#"{"error": "binary frames are not supported: send JSON objects as text frames"}"#,
                true,
            ),
            (
                Refusal::ReplicantOverWebSocket,
                r#"{"error": "coremq_replicant is only available over TCP"}"#,
                r#"{"error": "coremq_replicant is only available over TCP"}"#,
                true,
            ),
            (
                Refusal::QueueNotAString,
                r#"{"error": "\"queue\" must be a string naming the queue to publish to"}"#,
                r#"{"error": "\"queue\" must be a string naming the queue to publish to"}"#,
                true,
            ),
            (
                Refusal::RepeatedMember("queue"),
                r#"{"error": "\"queue\" is given more than once: give it once"}"#,
                r#"{"error": "\"queue\" is given more than once: give it once"}"#,
                true,
            ),
            (
                Refusal::UnknownMessage,
                r#"{"error": "unknown message: send coremq_subscribe, coremq_unsubscribe, coremq_gethistory, coremq_options, corews_status, or an object with \"queue\" to publish"}"#,
                r#"{"error": "unknown message: send coremq_subscribe, coremq_unsubscribe, coremq_gethistory, coremq_options, corews_status, or an object with \"queue\" to publish"}"#,
                true,
            ),
            (
                Refusal::PermissionDenied {
                    action: "status",
                    queue: "".into(),
                },
                r#"+53 id-1 {"response": "ERROR: Permission denied: status"}"#,
                r#"{"response": "ERROR: Permission denied: status", "queue": "id-1"}"#,
                true,
            ),
            (
                Refusal::AuthRequired,
                r#"+51 id-1 {"response": "ERROR: Authentication required"}"#,
                r#"{"response": "ERROR: Authentication required", "queue": "id-1"}"#,
                false,
            ),
            (
                Refusal::AuthFailed,
                r#"+49 id-1 {"response": "ERROR: Authentication failed"}"#,
                r#"{"response": "ERROR: Authentication failed", "queue": "id-1"}"#,
                false,
            ),
            (
                Refusal::TokenExpired,
                r#"+41 id-1 {"response": "ERROR: Token expired"}"#,
                r#"{"response": "ERROR: Token expired", "queue": "id-1"}"#,
                false,
            ),
            (
                Refusal::AuthTimeout,
                r#"+86 id-1 {"response": "ERROR: Authentication required: none within auth_timeout; closing"}"#,
                r#"{"response": "ERROR: Authentication required: none within auth_timeout; closing", "queue": "id-1"}"#,
                false,
            ),
            (
                Refusal::FrameTimeout { secs: 30.0 },
                r#"+113 id-1 {"response": "ERROR: a large message did not arrive within frame_timeout (30 s of waiting for it); closing"}"#,
                r#"{"response": "ERROR: a large message did not arrive within frame_timeout (30 s of waiting for it); closing", "queue": "id-1"}"#,
                true,
            ),
            (
                Refusal::AuthNotEnabled,
                r#"+88 id-1 {"response": "ERROR: Authentication is not enabled on this server (no users_file)"}"#,
                r#"{"response": "ERROR: Authentication is not enabled on this server (no users_file)", "queue": "id-1"}"#,
                true,
            ),
            (
                Refusal::KvNotANumber("n".into()),
                r#"+73 id-1 {"response": "ERROR: coremq_incr: the value of n is not an integer"}"#,
                r#"{"response": "ERROR: coremq_incr: the value of n is not an integer", "queue": "id-1"}"#,
                true,
            ),
            (
                Refusal::KvOverflow("n".into()),
                r#"+74 id-1 {"response": "ERROR: coremq_incr: n would overflow a 64-bit integer"}"#,
                r#"{"response": "ERROR: coremq_incr: n would overflow a 64-bit integer", "queue": "id-1"}"#,
                true,
            ),
            (
                Refusal::KvValueTooLarge {
                    len: 2000,
                    max: 1024,
                },
                r#"+96 id-1 {"response": "ERROR: coremq_set: a value of 2000 bytes is larger than kv_max_value (1024)"}"#,
                r#"{"response": "ERROR: coremq_set: a value of 2000 bytes is larger than kv_max_value (1024)", "queue": "id-1"}"#,
                true,
            ),
            (
                Refusal::ReplyTooLarge {
                    command: "coremq_get",
                    fewer: "keys",
                    max: 1000,
                },
                r#"+115 id-1 {"response": "ERROR: coremq_get: the reply would be larger than max_pending (1000 bytes); ask for fewer keys"}"#,
                r#"{"response": "ERROR: coremq_get: the reply would be larger than max_pending (1000 bytes); ask for fewer keys", "queue": "id-1"}"#,
                true,
            ),
            (
                Refusal::KvNotInSync,
                r#"+116 id-1 {"response": "ERROR: key-value store not yet in sync with the cluster (this node has just started); try again"}"#,
                r#"{"response": "ERROR: key-value store not yet in sync with the cluster (this node has just started); try again", "queue": "id-1"}"#,
                false,
            ),
        ];
        let mut covered: Vec<usize> = table.iter().map(|(r, ..)| example(r)).collect();
        covered.sort_unstable();
        covered.dedup();
        assert_eq!(
            covered,
            (0..=25).collect::<Vec<_>>(),
            "a variant lacks its row"
        );
        for (r, tcp, ws, counted) in &table {
            assert_eq!(read_by_client(r, Transport::Tcp), *tcp, "{r:?} over TCP");
            assert_eq!(
                read_by_client(r, Transport::WebSocket),
                *ws,
                "{r:?} over WebSocket"
            );
            assert_eq!(r.is_client_error(), *counted, "{r:?} counted");
        }
    }

    #[test]
    fn not_replicant_is_the_protocol_crate_text() {
        let mut expected = Vec::new();
        proto::response_json(proto::ERR_NOT_REPLICANT, &mut expected);
        assert_eq!(Refusal::NotReplicant.json(Transport::Tcp), expected);
    }
}
