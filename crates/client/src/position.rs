//! A message's place in its queue (docs/protocol.md §10): the server's
//! (`coremq_sent`, `coremq_server`) stamps, which a resuming subscribe sends
//! back as `coremq_since`.
//!
//! The time is kept as the text the server wrote, not only as an `f64`: the
//! server finds the position by what it gets back, so it gets back exactly
//! what it sent. The `f64` (Rust's correctly rounded parse of that text) is
//! only for ordering.

use crate::error::ClientError;
use coremq_protocol::{SENT_KEY, SERVER_KEY};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value};
use std::cmp::Ordering;
use std::fmt;
use std::str::FromStr;

/// Where a message stands in its queue: when (`coremq_sent`) and where
/// (`coremq_server`) the server accepted it. Positions are unique in a
/// cluster and ordered by time, then server name.
///
/// Its text form, `SENT@SERVER` (e.g. `1796182109.38108@mq1:6747`), is what
/// [`Display`](fmt::Display) writes and [`FromStr`] reads, for applications
/// that store positions to resume from them with
/// [`Client::subscribe_since`](crate::Client::subscribe_since).
///
/// ```
/// use coremq_client::Position;
///
/// let p: Position = "1796182109.381080@mq1:6747".parse()?;
/// assert_eq!(p.sent_text(), "1796182109.381080");
/// assert_eq!(p.server(), "mq1:6747");
/// assert!(p < "1796182109.381081@mq0:6747".parse()?);
/// # Ok::<(), coremq_client::ClientError>(())
/// ```
///
/// Two positions are equal when their times are equal as numbers, whatever
/// their text (`1.5` and `1.50`), so that equality agrees with the order.
#[derive(Clone)]
pub struct Position {
    /// `coremq_sent` as written by the server: a JSON number, checked.
    sent_text: String,
    /// The same time as a number, for ordering.
    sent: f64,
    /// `coremq_server`.
    server: String,
}

/// The separator of the text form; not in a JSON number, so the first one
/// ends the time and a server name may hold more.
const SEPARATOR: char = '@';

impl Position {
    /// A position from the time's text (a positive JSON number, as in
    /// `coremq_sent`) and the server's name. The text is sent back to the
    /// server unchanged.
    pub fn new(sent: &str, server: &str) -> Result<Position, ClientError> {
        let bad = |reason| ClientError::BadPosition {
            text: format!("{sent}{SEPARATOR}{server}"),
            reason,
        };
        if !is_json_number(sent) {
            return Err(bad(
                "the time must be a number of seconds like 1796182109.38108",
            ));
        }
        // The server refuses a time that no message can have, and with it
        // the whole subscribe; better said here, before anything is sent.
        let seconds = match sent.parse::<f64>() {
            Ok(s) if s.is_finite() && s > 0.0 => s,
            _ => return Err(bad("the time must be positive and in range")),
        };
        if server.is_empty() {
            return Err(bad("the server name is empty"));
        }
        Ok(Position {
            sent_text: sent.to_string(),
            sent: seconds,
            server: server.to_string(),
        })
    }

    /// The time the server accepted the message, in Unix seconds.
    pub fn sent(&self) -> f64 {
        self.sent
    }

    /// The time exactly as the server wrote it.
    pub fn sent_text(&self) -> &str {
        &self.sent_text
    }

    /// The accepting server, `"<node>:<port>"`.
    pub fn server(&self) -> &str {
        &self.server
    }

    /// The position of a delivered message, from its JSON text (for the
    /// time's exact text) and its parsed object. `None` when the stamps are
    /// missing or malformed: such a message is delivered but not tracked.
    pub(crate) fn of_delivery(json: &[u8], body: &Map<String, Value>) -> Option<Position> {
        // Only the time's text is wanted; the object is already parsed.
        #[derive(Deserialize)]
        struct Sent<'a> {
            #[serde(borrow, rename = "coremq_sent")]
            sent: Option<&'a RawValue>,
        }
        if !body.contains_key(SENT_KEY) {
            return None;
        }
        let server = body.get(SERVER_KEY)?.as_str()?;
        let sent = serde_json::from_slice::<Sent<'_>>(json).ok()?.sent?;
        Position::new(sent.get(), server).ok()
    }

    /// The position of a message whose text is gone (an entry of a history
    /// reply): the time as serde_json writes the parsed number, the same
    /// value for every time the server writes (microseconds on ten-digit
    /// seconds fit an `f64` exactly).
    pub(crate) fn of_body(body: &Map<String, Value>) -> Option<Position> {
        let sent = body.get(SENT_KEY)?;
        if !sent.is_number() {
            return None;
        }
        Position::new(&sent.to_string(), body.get(SERVER_KEY)?.as_str()?).ok()
    }
}

/// A JSON number without a minus sign (RFC 8259 §6): what
/// goes into `coremq_since` unquoted must not be able to be anything else.
fn is_json_number(s: &str) -> bool {
    let b = s.as_bytes();
    let digits = |mut i: usize| {
        let start = i;
        while b.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        (i > start).then_some(i)
    };
    let Some(mut i) = (match b.first() {
        Some(b'0') => Some(1),
        Some(b'1'..=b'9') => digits(0),
        _ => None,
    }) else {
        return false;
    };
    if b.get(i) == Some(&b'.') {
        let Some(next) = digits(i + 1) else {
            return false;
        };
        i = next;
    }
    if matches!(b.get(i), Some(b'e' | b'E')) {
        i += 1;
        if matches!(b.get(i), Some(b'+' | b'-')) {
            i += 1;
        }
        let Some(next) = digits(i) else {
            return false;
        };
        i = next;
    }
    i == b.len()
}

impl FromStr for Position {
    type Err = ClientError;

    /// Reads `SENT@SERVER`.
    fn from_str(s: &str) -> Result<Position, ClientError> {
        match s.split_once(SEPARATOR) {
            Some((sent, server)) => Position::new(sent, server),
            None => Err(ClientError::BadPosition {
                text: s.to_string(),
                reason: "expected SENT@SERVER, e.g. 1796182109.38108@mq1:6747",
            }),
        }
    }
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{SEPARATOR}{}", self.sent_text, self.server)
    }
}

impl fmt::Debug for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Position({self})")
    }
}

impl Ord for Position {
    fn cmp(&self, other: &Self) -> Ordering {
        self.sent
            .total_cmp(&other.sent)
            .then_with(|| self.server.cmp(&other.server))
    }
}

impl PartialOrd for Position {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Position {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Position {}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pos(s: &str) -> Position {
        s.parse().expect("valid position")
    }

    #[test]
    fn text_form_round_trips_and_keeps_the_time_text() {
        for s in [
            "1796182109.381080@mq1:6747",
            "1796182109.38108@mq1:6747",
            "0.5@a",
            "1796182109@a@b",
            "1.5e9@n",
            "1E+9@n",
        ] {
            assert_eq!(pos(s).to_string(), s);
        }
        let p = pos("1796182109@a@b");
        assert_eq!((p.sent_text(), p.server()), ("1796182109", "a@b"));
    }

    #[test]
    fn bad_text_is_refused() {
        for s in [
            "",
            "1796182109.38108",
            "1796182109.38108@",
            "@mq1:6747",
            "abc@mq1",
            "-1@mq1",
            "+1@mq1",
            "01@mq1",
            ".5@mq1",
            "5.@mq1",
            "1e@mq1",
            "NaN@mq1",
            "inf@mq1",
            "1e400@mq1",
            "0@mq1",
            "0.0@mq1",
            "0e5@mq1",
            " 1@mq1",
            "1 @mq1",
            "1,\"x\":2@mq1",
        ] {
            assert!(
                matches!(s.parse::<Position>(), Err(ClientError::BadPosition { .. })),
                "{s:?} accepted"
            );
        }
    }

    #[test]
    fn ordered_by_time_then_server_as_numbers() {
        assert!(pos("9.5@z") < pos("10@a"));
        assert!(pos("10@a") < pos("10@b"));
        assert_eq!(pos("1.5@a"), pos("1.50@a"));
        assert!(pos("1796182109.381080@a") < pos("1796182109.381081@a"));
    }

    #[test]
    fn from_a_delivery_keeps_the_exact_text() {
        let text = br#"{"x": 1, "coremq_sent": 1796182109.381080, "coremq_server": "mq1:6747"}"#;
        let body: Map<String, Value> = serde_json::from_slice(text).expect("json");
        let p = Position::of_delivery(text, &body).expect("stamped");
        assert_eq!(p.to_string(), "1796182109.381080@mq1:6747");
        // From the parsed object alone the value is the same, the text shorter.
        let q = Position::of_body(&body).expect("stamped");
        assert_eq!(q.sent_text(), "1796182109.38108");
        assert_eq!(p, q);

        let unstamped = json!({"coremq_sent": "soon", "coremq_server": "mq1"});
        let unstamped = unstamped.as_object().expect("object");
        let text = serde_json::to_vec(unstamped).expect("json");
        assert_eq!(Position::of_delivery(&text, unstamped), None);
        assert_eq!(Position::of_body(unstamped), None);
    }
}
