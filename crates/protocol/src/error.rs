//! The two ways a client's bytes can be wrong.
//!
//! The split follows what the connection can do next (PROTOCOL.md §1): a
//! [`FramingError`] means the byte stream can no longer be cut into frames, so the
//! connection gets one `ERROR:` reply and is closed; a [`BodyError`] is confined to one
//! well-framed body, so the connection gets an `ERROR:` reply and stays open.
//!
//! The `Display` text of every variant is exactly what the client reads after
//! `"ERROR: "`, so each one says what was wrong and what is expected.

use thiserror::Error;

/// The frame header promised by PROTOCOL.md §1, repeated in framing errors so that a
/// person reading the reply knows the expected shape without looking it up.
const FRAME_SHAPE: &str = "expected '+' LEN ' ' QUEUE ' ' JSON";

/// The stream cannot be cut into frames any more: reply once, then close.
///
/// There is no resynchronisation in the protocol (a frame has no end marker), so none
/// of these are recoverable.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum FramingError {
    /// The first byte of a frame is not `'+'`.
    #[error("frame must start with '+': {FRAME_SHAPE}")]
    MissingPlus,
    /// Something other than a decimal digit follows the `'+'`.
    #[error("frame length must be ASCII decimal digits right after '+': {FRAME_SHAPE}")]
    BadLength,
    /// The length is above the configured limit. Reported as soon as the digits seen so
    /// far exceed it, so a hostile client cannot make the server wait for (or buffer) a
    /// body that would be refused anyway.
    #[error("frame length {len} exceeds max_message_size {max}")]
    TooLarge {
        /// The length announced, or the part of it read before it went over `max`.
        len: u64,
        /// The limit in force (`max_message_size`), so the client can see it.
        max: usize,
    },
    /// The length has more digits than any accepted length can need. Leading zeros are
    /// allowed, but not without bound: otherwise a client could keep a header open
    /// forever and grow the read buffer without ever sending a body.
    #[error("frame length has more than {max_digits} digits: {FRAME_SHAPE}")]
    TooManyDigits {
        /// The digit limit, shown to the client.
        max_digits: usize,
    },
    /// Digits were followed by something other than the single space.
    #[error("frame length must be followed by one space: {FRAME_SHAPE}")]
    MissingSpace,
}

/// One well-framed body is wrong: reply with `ERROR:` and keep the connection.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum BodyError {
    /// The body has no space, so there is no QUEUE/JSON split.
    #[error("frame body must be QUEUE ' ' JSON, but there is no space after the queue name")]
    MissingQueue,
    /// The queue name is empty or holds a byte outside `'!'..='~'`.
    #[error("queue name must be 1 to 255 printable ASCII characters (no spaces)")]
    BadQueueName,
    /// The queue name is longer than the configured `max_queue_name_length`. Kept apart
    /// from [`BodyError::BadQueueName`] so the reply can state the configured limit.
    #[error("queue name is {len} bytes long; max_queue_name_length is {max}")]
    QueueNameTooLong {
        /// Length of the name that was sent.
        len: usize,
        /// The configured limit.
        max: usize,
    },
    /// The JSON bytes are not UTF-8. Checked explicitly because the JSON parser would
    /// otherwise let invalid bytes through inside strings it skips.
    #[error("message is not valid UTF-8: JSON text must be encoded as UTF-8")]
    InvalidUtf8,
    /// The JSON text does not parse; holds the parser's description with its position.
    #[error("invalid JSON: {0}")]
    InvalidJson(String),
    /// A `\uD800`–`\uDFFF` escape that is not half of a surrogate pair. JSON's grammar
    /// allows it, but it stands for no character: stored messages would then fail in
    /// every strict parser downstream (serde_json, for one), so it is refused here.
    #[error(
        "invalid JSON: string escape \\u{code:04x} at byte {at} is a lone UTF-16 \
         surrogate; strings must be valid Unicode"
    )]
    LoneSurrogate {
        /// The surrogate code unit.
        code: u16,
        /// Byte offset of its backslash in the JSON text.
        at: usize,
    },
    /// Containers nest deeper than the configured `max_json_depth` (many
    /// subscribers' parsers fail on deep JSON, so it is refused before it is
    /// stored or delivered).
    #[error("JSON nested {depth} levels deep; max_json_depth is {max}")]
    TooDeep {
        /// How deep the message nests (the object itself is level 1).
        depth: usize,
        /// The configured limit.
        max: usize,
    },
    /// The JSON is valid but is not an object.
    #[error("message must be a JSON object")]
    NotAnObject,
    /// A command key has a value of the wrong shape.
    #[error("{command} takes {expected}")]
    BadCommand {
        /// The command key, e.g. `coremq_subscribe`.
        command: &'static str,
        /// What the value must be, phrased to follow "takes".
        expected: &'static str,
    },
    /// A `coremq_since` entry that cannot be resumed from.
    #[error("coremq_since: {queue:?} {reason}")]
    BadSince {
        /// The queue the entry names.
        queue: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A queue name inside a command's value is not valid.
    #[error(
        "{command}: {name:?} is not a valid queue name; queue names are 1 to {max} \
         printable ASCII characters (no spaces)"
    )]
    BadCommandQueueName {
        /// The command key whose value held the name.
        command: &'static str,
        /// The offending name, cut to a readable length.
        name: String,
        /// The configured limit on name length.
        max: usize,
    },
    /// A key of a key-value command is not valid (§13).
    #[error(
        "{command}: {key:?} is not a valid key; keys are 1 to {max} printable ASCII \
         characters (no spaces)"
    )]
    BadKey {
        /// The command.
        command: &'static str,
        /// The offending key, cut to a readable length.
        key: String,
        /// The longest key.
        max: usize,
    },
    /// A known option of `coremq_options` has a value of the wrong type.
    #[error("option {name:?} {reason}")]
    BadOption {
        /// The option's name as sent.
        name: String,
        /// What its value must be, phrased to follow the name.
        reason: &'static str,
    },
}

impl BodyError {
    /// Builds [`BodyError::BadCommandQueueName`], cutting a long name so that an error
    /// reply stays small whatever the client sent.
    pub(crate) fn bad_name_in(command: &'static str, name: &str, max: usize) -> Self {
        const SHOWN: usize = 80;
        let mut end = name.len().min(SHOWN);
        while !name.is_char_boundary(end) {
            end -= 1;
        }
        let mut shown = name[..end].to_owned();
        if end < name.len() {
            shown.push_str("...");
        }
        BodyError::BadCommandQueueName {
            command,
            name: shown,
            max,
        }
    }
}
