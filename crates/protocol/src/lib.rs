//! The CoreMQ wire protocol (see `docs/` and PROTOCOL.md §1–§5), with no I/O.
//!
//! Everything here turns bytes into meaning or meaning into bytes, so it can be unit-,
//! property- and fuzz-tested on its own and reused by the broker, the client library
//! and the WebSocket gateway. It sits on the broker's hot path: a publish is decoded,
//! validated and rewritten in a couple of passes over its bytes, without a JSON DOM
//! and, for ordinary messages, without heap allocation beyond the caller's reused
//! output buffer (the exceptions, one allocation each, are listed in `scan.rs` and
//! pinned by `tests/no_alloc.rs`).
//!
//! The parts, in the order a frame meets them:
//!
//! - [`frame`](decode_frame): `'+' LEN ' ' BODY` framing; "incomplete" is normal flow,
//!   a [`FramingError`] ends the connection.
//! - [`body`](split_body): `QUEUE ' ' JSON` and the queue-name rule.
//! - [`message`](parse_message): what the JSON object means ([`ClientMessage`]); one
//!   validating pass finds command keys and the members a publish must lose.
//! - `command`: the values of the command keys ([`OptionValue`], [`ReplicantRequest`]);
//!   `auth`: `coremq_auth`'s ([`AuthRequest`], whose [`Secret`]s never print).
//! - [`publish`](Publish): writing a publish as stored and delivered, with
//!   `coremq_sender`/`coremq_sent`/`coremq_server` replaced; [`rewrite_object`] is the
//!   same operation for any keys.
//! - [`escape`](escape_non_ascii): ASCII-only JSON output, since original clients count
//!   characters where the header counts bytes.
//! - [`reply`](response_json): the server's canned replies and [`HistoryWriter`].
//! - [`error`](BodyError): [`FramingError`] and [`BodyError`], whose `Display` texts
//!   are what clients read after `ERROR: `.
//!
//! Policy decisions worth knowing:
//!
//! - Strings with a lone UTF-16 surrogate escape (`"\ud800"`) are refused
//!   ([`BodyError::LoneSurrogate`]): JSON's grammar allows them but they encode no
//!   character, and a stored message must parse in every strict consumer.
//! - Duplicate keys are kept as sent, except the three stamp keys, every copy of
//!   which is removed; readers that take the last duplicate see the same object as
//!   before the rewrite.
//! - Nesting depth is not limited: the scanner keeps its own stack of open containers
//!   (a bit per level) instead of recursing, so depth cannot overflow the stack here
//!   (consumers with recursion limits may still refuse very deep messages).
//! - What counts as valid JSON is what serde_json accepts: the hand-written scanner
//!   on the hot path (`validate.rs`) hands every text it refuses to a serde_json pass,
//!   which decides again and words the error (`scan.rs`).

#![warn(missing_docs)]

mod auth;
mod body;
mod command;
mod error;
mod escape;
mod frame;
mod kv;
mod message;
mod publish;
mod reply;
mod scan;
#[doc(hidden)]
pub mod scan_internals;
mod since;
mod validate;

pub use auth::{AuthRequest, Secret};
pub use body::{split_body, validate_queue_name, MAX_QUEUE_NAME_LEN};
pub use command::{OptionValue, ReplicantRequest};
pub use error::{BodyError, FramingError};
pub use escape::{escape_non_ascii, write_json_string};
pub use frame::{decode_frame, encode_frame, frame_len, Frame, MAX_LEN_DIGITS};
pub use kv::{valid_key, KvCond, KvIncr, KvSet, MAX_KEY_LEN};
pub use message::{
    parse_message, parse_message_limited, parse_ws_message, ClientMessage, WsMembers,
};
pub use publish::{
    append_member_fast, rewrite_object, seconds_to_micros, write_sent, Publish, Stamps, REPLAY_KEY,
    SENDER_KEY, SENT_KEY, SEQ_KEY, SERVER_KEY, STAMP_KEYS,
};
pub use reply::{
    error_json, response_json, welcome_json, HistoryWriter, BYE, ERR_NOT_REPLICANT, ERR_NOT_STORED,
    OK_OPTIONS, OK_REPLICANT, OK_SENT, OK_SUBSCRIBE, OK_UNSUBSCRIBE, WELCOME,
};
pub use since::Position;
