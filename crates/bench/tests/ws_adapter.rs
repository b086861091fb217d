//! The CoreMQ WebSocket adapter (`--proto coremq-ws`) against an in-process
//! tungstenite server playing the broker, for what a real broker does not
//! send on demand: a delivery fragmented over three frames with a ping
//! between its pieces, and a close. (The adapter against the real broker is
//! in tests/bench_adapters.rs.)

use coremq_bench::conn;
use coremq_bench::payload::{read_marker, Payload};
use coremq_bench::{Proto, Target};
use std::net::TcpListener;
use std::thread;
use std::time::{Duration, Instant};
use tungstenite::protocol::frame::coding::{CloseCode, Data, OpCode};
use tungstenite::protocol::frame::{CloseFrame, Frame};
use tungstenite::Message;

fn delivery(seq: u64) -> String {
    let mut p = Payload::new(16);
    let marker = String::from_utf8(p.stamp(seq, 0).to_vec()).unwrap();
    format!(r#"{{"d": "{marker}", "queue": "q"}}"#)
}

#[test]
fn subscriber_joins_fragments_answers_pings_and_echoes_the_close() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let server = thread::spawn(move || {
        let (sock, _) = listener.accept().unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut ws = tungstenite::accept(sock).unwrap();
        ws.send(Message::text(
            r#"{"queue": "c1", "response": "OK: Welcome to CoreMQ server", "server": "t"}"#,
        ))
        .unwrap();
        match ws.read().unwrap() {
            Message::Text(t) => assert!(t.contains("coremq_subscribe") && t.contains("\"q\"")),
            other => panic!("expected the subscribe, got {other:?}"),
        }
        ws.send(Message::text(
            r#"{"queue": "c1", "response": "OK: Subscribe successful"}"#,
        ))
        .unwrap();
        for seq in 0..3 {
            ws.write(Message::text(delivery(seq))).unwrap();
        }
        let d = delivery(3).into_bytes();
        let pieces = [&d[..5], &d[5..20], &d[20..]];
        for (i, piece) in pieces.iter().enumerate() {
            let op = if i == 0 { Data::Text } else { Data::Continue };
            let f = Frame::message(piece.to_vec(), OpCode::Data(op), i == 2);
            ws.write(Message::Frame(f)).unwrap();
            if i == 1 {
                ws.write(Message::Ping(b"k".to_vec().into())).unwrap();
            }
        }
        ws.write(Message::text(delivery(4))).unwrap();
        ws.flush().unwrap();
        match ws.read().unwrap() {
            Message::Pong(p) => assert_eq!(&p[..], b"k", "the ping's payload echoed"),
            other => panic!("expected a pong, got {other:?}"),
        }
        ws.close(Some(CloseFrame {
            code: CloseCode::Away,
            reason: "bye".into(),
        }))
        .unwrap();
        // The client's reply completes the closing handshake.
        loop {
            match ws.read() {
                Ok(Message::Close(_)) => {}
                Ok(other) => panic!("after the close: {other:?}"),
                Err(tungstenite::Error::ConnectionClosed) => return,
                Err(e) => panic!("no close reply: {e}"),
            }
        }
    });

    let t = Target::new(Proto::CoreMqWs, addr);
    let mut sub = conn::open_subscriber(&t, &["q".to_string()], 64 << 10).unwrap();
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let open = sub
            .pump(&mut |m| got.push(read_marker(m).expect("a marker").0))
            .unwrap();
        if !open {
            break;
        }
        assert!(Instant::now() < deadline, "no close; got {got:?}");
    }
    assert_eq!(got, [0, 1, 2, 3, 4]);
    assert_eq!(sub.errors().count, 0);
    server.join().unwrap();
}

/// A server that sends a masked frame breaks the protocol: the pump says so
/// (a malformed-input error), it does not take the bytes as messages.
#[test]
fn a_masked_server_frame_is_an_error() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let server = thread::spawn(move || {
        use std::io::Write;
        let (sock, _) = listener.accept().unwrap();
        let mut ws = tungstenite::accept(sock).unwrap();
        ws.send(Message::text(
            r#"{"queue": "c1", "response": "OK: Welcome to CoreMQ server"}"#,
        ))
        .unwrap();
        let _ = ws.read().unwrap();
        ws.send(Message::text(
            r#"{"queue": "c1", "response": "OK: Subscribe successful"}"#,
        ))
        .unwrap();
        // A text frame "x" masked with key 0: the mask bit is what is wrong.
        ws.get_mut()
            .write_all(&[0x81, 0x81, 0, 0, 0, 0, b'x'])
            .unwrap();
        thread::sleep(Duration::from_millis(500));
    });
    let t = Target::new(Proto::CoreMqWs, addr);
    let mut sub = conn::open_subscriber(&t, &["q".to_string()], 64 << 10).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let err = loop {
        match sub.pump(&mut |m| panic!("not a message: {m:?}")) {
            Ok(true) => assert!(Instant::now() < deadline, "no error"),
            Ok(false) => panic!("closed without an error"),
            Err(e) => break e.to_string(),
        }
    };
    assert!(err.contains("masked frame"), "{err}");
    server.join().unwrap();
}
