//! Framing seen from outside: streaming decode under any TCP split, robustness on
//! arbitrary bytes, and frames as an original (character-counting) client reads them.

use coremq_protocol::{
    decode_frame, encode_frame, error_json, parse_message, response_json, split_body, welcome_json,
    ClientMessage, FramingError, OK_SENT,
};
use proptest::prelude::*;

const MAX: usize = 1 << 20;

/// Feeds `chunks` one by one into a buffer and decodes every complete frame, the way a
/// connection's read loop does.
fn stream_decode(chunks: &[&[u8]]) -> Result<(Vec<Vec<u8>>, Vec<u8>), FramingError> {
    let mut buf = Vec::new();
    let mut bodies = Vec::new();
    for chunk in chunks {
        buf.extend_from_slice(chunk);
        while let Some((frame, used)) = decode_frame(&buf, MAX)? {
            bodies.push(frame.body.to_vec());
            buf.drain(..used);
        }
    }
    Ok((bodies, buf))
}

/// A frame with `zeros` leading zeros on its length.
fn encode_padded(queue: &str, json: &[u8], zeros: usize) -> Vec<u8> {
    let mut out = Vec::new();
    encode_frame(queue, json, &mut out);
    out.splice(1..1, std::iter::repeat_n(b'0', zeros));
    out
}

fn frames() -> impl Strategy<Value = Vec<(String, Vec<u8>, usize)>> {
    prop::collection::vec(
        (
            "[!-~]{1,12}",
            prop::collection::vec(any::<u8>(), 0..40),
            0usize..3,
        ),
        0..12,
    )
}

proptest! {
    #[test]
    fn any_split_decodes_the_same_frames(
        frames in frames(),
        cuts in prop::collection::vec(0usize..64, 0..40),
    ) {
        let stream: Vec<u8> = frames
            .iter()
            .flat_map(|(q, j, z)| encode_padded(q, j, *z))
            .collect();
        // Cut the stream into chunks of the generated sizes (0 = an empty read).
        let mut chunks = Vec::new();
        let mut rest = &stream[..];
        for cut in cuts {
            let (a, b) = rest.split_at(cut.min(rest.len()));
            chunks.push(a);
            rest = b;
        }
        chunks.push(rest);
        let (bodies, left) = stream_decode(&chunks).expect("valid stream");
        prop_assert!(left.is_empty());
        prop_assert_eq!(bodies.len(), frames.len());
        for (body, (queue, json, _)) in bodies.iter().zip(&frames) {
            let (q, j) = split_body(body, 255).expect("valid body");
            prop_assert_eq!(q, queue.as_str());
            prop_assert_eq!(j, &json[..]);
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
        let _ = decode_frame(&bytes, MAX);
        let _ = decode_frame(&bytes, 3);
        let _ = split_body(&bytes, 255);
        if let Ok(ClientMessage::Publish(p)) = parse_message(&bytes, 255) {
            let mut out = Vec::new();
            p.write_stored("s", 1.0, "n:1", &mut out);
            prop_assert!(out.is_ascii());
        }
    }

    /// Bytes drawn from JSON's alphabet reach much deeper into the parser than random
    /// bytes; whatever is accepted as a publish must come out as valid ASCII JSON.
    #[test]
    fn json_like_bytes_never_panic_and_accepted_publishes_stay_valid(
        bytes in prop::collection::vec(
            prop::sample::select(b"{}[]\":,\\/u0123456789abcdefDdtrnl.+-eE \n\xc3\xa9\xff".to_vec()),
            0..80,
        ),
    ) {
        let mut text = b"{".to_vec();
        text.extend_from_slice(&bytes);
        for input in [&bytes[..], &text[..]] {
            let _ = decode_frame(input, MAX);
            let _ = split_body(input, 255);
            if let Ok(ClientMessage::Publish(p)) = parse_message(input, 255) {
                let mut out = Vec::new();
                p.write_stored("s\u{e9}", 2.5, "n:1", &mut out);
                prop_assert!(out.is_ascii());
                let v: serde_json::Value = serde_json::from_slice(&out).expect("valid JSON");
                prop_assert!(v.is_object());
            }
        }
    }

    #[test]
    fn character_counting_client_reads_server_frames(
        texts in prop::collection::vec(any::<String>(), 1..6),
    ) {
        let mut stream = Vec::new();
        let mut expected = Vec::new();
        for text in &texts {
            let mut json = Vec::new();
            response_json(text, &mut json);
            let id = "6f1c2b7e-8d2a-4c3b-9e55-0d7c1a2b3c4d";
            let before = stream.len();
            encode_frame(id, &json, &mut stream);
            expected.push(stream[before..].to_vec());
        }
        let read = read_like_original_client(&stream);
        prop_assert_eq!(read, expected.iter().map(|f| body_of(f)).collect::<Vec<_>>());
    }
}

/// The body part of one encoded frame.
fn body_of(frame: &[u8]) -> String {
    let space = frame.iter().position(|&b| b == b' ').expect("header");
    String::from_utf8(frame[space + 1..].to_vec()).expect("ASCII")
}

/// Reads frames the way the original Python client did: decode the stream as text,
/// read 10 characters, parse `+LEN `, then read `LEN - (10 - header)` more characters.
fn read_like_original_client(stream: &[u8]) -> Vec<String> {
    let text = std::str::from_utf8(stream).expect("frames are text");
    let chars: Vec<char> = text.chars().collect();
    let mut pos = 0;
    let mut bodies = Vec::new();
    while pos < chars.len() {
        let first: String = chars[pos..pos + 10].iter().collect();
        pos += 10;
        let space = first.find(' ').expect("header in the first 10 characters");
        let len: usize = first[1..space].parse().expect("decimal length");
        let remaining = len - (10 - (space + 1));
        let rest: String = chars[pos..pos + remaining].iter().collect();
        pos += remaining;
        bodies.push(format!("{}{}", &first[space + 1..], rest));
    }
    bodies
}

#[test]
fn original_client_reads_welcome_publish_and_error_frames() {
    let id = "6f1c2b7e-8d2a-4c3b-9e55-0d7c1a2b3c4d";
    let mut stream = Vec::new();
    let mut bodies = Vec::new();
    let mut json = Vec::new();
    welcome_json("m\u{fc}nchen-1", &mut json);
    let mut push = |queue: &str, json: &[u8], stream: &mut Vec<u8>| {
        encode_frame(queue, json, stream);
        bodies.push(format!(
            "{queue} {}",
            std::str::from_utf8(json).expect("ASCII")
        ));
    };
    push(id, &json, &mut stream);
    let ClientMessage::Publish(p) =
        parse_message("{\"t\": \"caf\u{e9} \u{1f600} \u{4e2d}\"}".as_bytes(), 255)
            .expect("publish")
    else {
        panic!("expected a publish");
    };
    json.clear();
    p.write_stored(id, 1_764_302_775.123_456, "n\u{e9}:6747", &mut json);
    push("chat", &json, &mut stream);
    json.clear();
    error_json("queue name \"\u{e9}\" is bad", &mut json);
    push(id, &json, &mut stream);
    json.clear();
    response_json(OK_SENT, &mut json);
    push(id, &json, &mut stream);
    assert!(stream.is_ascii());
    assert_eq!(read_like_original_client(&stream), bodies);
}

#[test]
fn framing_error_mid_stream_is_reported_after_good_frames() {
    let mut stream = Vec::new();
    encode_frame("q", b"{}", &mut stream);
    stream.extend_from_slice(b"+12x");
    assert_eq!(stream_decode(&[&stream]), Err(FramingError::MissingSpace));
    let mut buf = stream.clone();
    let (_, used) = decode_frame(&buf, MAX).expect("ok").expect("complete");
    buf.drain(..used);
    assert_eq!(decode_frame(&buf, MAX), Err(FramingError::MissingSpace));
}
