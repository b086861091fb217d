//! The byte streams under the harness's connections (`conn::link`), against
//! in-process servers on 127.0.0.1: a rustls server (certificates made here
//! with rcgen) and a tungstenite WebSocket server. What goes in on one side
//! must come out intact on the other, also while one thread writes and
//! another reads the same connection (the publisher's split), and however
//! the bytes are cut into records, messages and reads.

use coremq_bench::conn::link::{Link, WsLink};
use coremq_bench::conn::TlsClient;
use coremq_bench::BenchError;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

/// A CA named `ca_name`, and a server certificate it signed for `names`.
struct Pki {
    ca: CertificateDer<'static>,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

fn pki(ca_name: &str, names: &[&str]) -> Pki {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, ca_name);
    let ca_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let issuer = CertifiedIssuer::self_signed(params, ca_key).unwrap();
    let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    let leaf = CertificateParams::new(names).unwrap();
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let cert = leaf.signed_by(&key, &issuer).unwrap();
    Pki {
        ca: issuer.der().clone(),
        chain: vec![cert.der().clone()],
        key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
    }
}

fn client_trusting(ca: &CertificateDer<'static>) -> TlsClient {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.clone()).unwrap();
    TlsClient::trusting(roots)
}

fn server_config(p: &Pki) -> Arc<rustls::ServerConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Arc::new(
        rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(p.chain.clone(), p.key.clone_key())
            .unwrap(),
    )
}

/// A connected socket with the harness's read timeout.
fn dial(addr: &str) -> TcpStream {
    coremq_bench::conn::stream::connect(addr).unwrap()
}

/// Byte `i` of the test stream.
fn pattern(i: usize) -> u8 {
    (i.wrapping_mul(31) ^ (i >> 9)) as u8
}

/// Read exactly `n` bytes from `link`, in reads of at most `chunk` bytes,
/// checking each against the pattern (bounded wait).
fn read_pattern(link: &mut Link, n: usize, chunk: usize) {
    let mut buf = vec![0u8; chunk];
    let mut got = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    while got < n {
        assert!(Instant::now() < deadline, "only {got} of {n} bytes arrived");
        match link.read(&mut buf) {
            Ok(0) => panic!("closed after {got} of {n} bytes"),
            Ok(k) => {
                for (j, b) in buf[..k].iter().enumerate() {
                    assert_eq!(*b, pattern(got + j), "byte {} differs", got + j);
                }
                got += k;
            }
            Err(e) if coremq_bench::conn::stream::is_timeout(&e) => {}
            Err(e) => panic!("read after {got} bytes: {e}"),
        }
    }
}

/// Write the pattern's first `n` bytes to `link`, in writes of the given
/// sizes, cycled.
fn write_pattern(link: &mut Link, n: usize, sizes: &[usize]) {
    let data: Vec<u8> = (0..n).map(pattern).collect();
    let mut at = 0;
    for &size in sizes.iter().cycle() {
        if at == n {
            break;
        }
        let end = (at + size).min(n);
        link.write_all(&data[at..end], None, "test write").unwrap();
        at = end;
    }
}

/// Over TLS, one thread writes 8 MiB in writes of 1 B to 300 KiB while
/// another reads the echo of the same session through the other handle: every
/// byte comes back in order. The server echoes what it reads as it reads it,
/// so a client that stopped reading while blocked in a write would deadlock.
#[test]
fn tls_split_handles_write_and_read_one_session_at_once() {
    let p = pki("bench CA", &["localhost", "127.0.0.1"]);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let config = server_config(&p);
    let server = thread::spawn(move || {
        let (sock, _) = listener.accept().unwrap();
        let conn = rustls::ServerConnection::new(config).unwrap();
        let mut s = rustls::StreamOwned::new(conn, sock);
        let mut buf = vec![0u8; 50_000];
        let mut total = 0usize;
        loop {
            match s.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    s.write_all(&buf[..n]).unwrap();
                    total += n;
                }
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
                Err(e) => panic!("server read: {e}"),
            }
        }
        total
    });
    let client = client_trusting(&p.ca);
    let mut reader = client.handshake(dial(&addr), &addr).expect("handshake");
    assert_eq!(reader.kind(), "TLS");
    let negotiated = client.negotiated().expect("recorded after a handshake");
    assert!(negotiated.starts_with("TLSv1_3 TLS13_"), "{negotiated}");
    let mut writer = reader.split().expect("split");
    const N: usize = 8 << 20;
    let w = thread::spawn(move || {
        write_pattern(
            &mut writer,
            N,
            &[1, 100, 16_384, 16_385, 65_536, 300_000, 7],
        );
        writer
    });
    read_pattern(&mut reader, N, 256 << 10);
    let writer = w.join().unwrap();
    // Closing both handles ends the session; the server saw every byte.
    drop(writer);
    reader.socket().shutdown(std::net::Shutdown::Both).unwrap();
    drop(reader);
    assert_eq!(server.join().unwrap(), N);
}

/// Reads into small buffers take the plaintext out bit by bit, across
/// records and socket reads; the end of the session reads as 0.
#[test]
fn tls_reads_into_small_buffers_and_sees_the_close() {
    let p = pki("bench CA", &["localhost"]);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let config = server_config(&p);
    const N: usize = 1 << 20;
    let server = thread::spawn(move || {
        let (sock, _) = listener.accept().unwrap();
        let conn = rustls::ServerConnection::new(config).unwrap();
        let mut s = rustls::StreamOwned::new(conn, sock);
        let data: Vec<u8> = (0..N).map(pattern).collect();
        for part in data.chunks(70_001) {
            s.write_all(part).unwrap();
        }
        s.conn.send_close_notify();
        s.flush().unwrap();
        while s.conn.wants_write() {
            s.conn.write_tls(&mut s.sock).unwrap();
        }
    });
    let mut client = client_trusting(&p.ca);
    client.server_name = Some("localhost".into());
    let mut link = client
        .handshake(dial(&addr), &addr)
        .expect("handshake by name");
    read_pattern(&mut link, N, 1000);
    let mut buf = [0u8; 64];
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match link.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => panic!("{n} bytes after the end"),
            Err(e) if coremq_bench::conn::stream::is_timeout(&e) => {
                assert!(Instant::now() < deadline, "no end of the session")
            }
            Err(e) => panic!("{e}"),
        }
    }
    server.join().unwrap();
}

/// A certificate from another CA, or for another name, is refused with a
/// handshake error that names the TLS handshake and rustls' cause.
#[test]
fn tls_refuses_an_untrusted_or_misnamed_certificate() {
    let p = pki("bench CA", &["localhost", "127.0.0.1"]);
    let other = pki("another CA", &["localhost"]);
    for (client, want) in [
        (client_trusting(&other.ca), "UnknownIssuer"),
        (
            {
                let mut c = client_trusting(&p.ca);
                c.server_name = Some("elsewhere.example".into());
                c
            },
            "not valid for name",
        ),
    ] {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let config = server_config(&p);
        let server = thread::spawn(move || {
            let (sock, _) = listener.accept().unwrap();
            let conn = rustls::ServerConnection::new(config).unwrap();
            let mut s = rustls::StreamOwned::new(conn, sock);
            // The client's alert ends this handshake.
            let _ = s.read(&mut [0u8; 16]);
        });
        match client.handshake(dial(&addr), &addr) {
            Err(BenchError::Handshake { context, reply }) => {
                assert!(context.contains("TLS handshake with"), "{context}");
                assert!(reply.contains(want), "{want} not in {reply}");
            }
            Err(e) => panic!("expected a handshake error, got {e}"),
            Ok(_) => panic!("expected a handshake error, got a session"),
        }
        assert!(client.negotiated().is_none());
        server.join().unwrap();
    }
}

/// A byte stream inside WebSocket binary messages: the server's messages (of
/// 1 B to 200 KiB, one of them fragmented, with pings between) come out as
/// one stream whatever the read size, and what the client's writing handle
/// sends arrives as masked binary messages (a tungstenite server refuses
/// unmasked client frames) while the reading handle reads; the pings the
/// reading handle saw are answered by the writing handle, in order.
#[test]
fn websocket_link_carries_a_byte_stream_both_ways() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    const DOWN: usize = 3 << 20;
    const UP: usize = 2 << 20;
    let server = thread::spawn(move || {
        let (sock, _) = listener.accept().unwrap();
        use tungstenite::protocol::frame::coding::{Data, OpCode};
        use tungstenite::protocol::frame::Frame;
        let mut ws = tungstenite::accept(sock).unwrap();
        let data: Vec<u8> = (0..DOWN).map(pattern).collect();
        // A ping, then the first 100 kB as one message in three fragments
        // with a ping between them; the client owes two pongs.
        ws.write(tungstenite::Message::Ping(b"p1".to_vec().into()))
            .unwrap();
        for (i, (from, to)) in [(0, 10), (10, 60_000), (60_000, 100_000)]
            .into_iter()
            .enumerate()
        {
            let op = if i == 0 { Data::Binary } else { Data::Continue };
            let frame = Frame::message(data[from..to].to_vec(), OpCode::Data(op), i == 2);
            ws.write(tungstenite::Message::Frame(frame)).unwrap();
            if i == 0 {
                ws.write(tungstenite::Message::Ping(b"p2".to_vec().into()))
                    .unwrap();
            }
        }
        let mut at = 100_000;
        for size in [1usize, 5, 4096, 200_000, 65_536, 3].iter().cycle() {
            if at == DOWN {
                break;
            }
            let end = (at + size).min(DOWN);
            ws.write(tungstenite::Message::binary(data[at..end].to_vec()))
                .unwrap();
            at = end;
        }
        ws.flush().unwrap();
        let mut up = Vec::new();
        let mut messages = 0;
        let mut pongs = Vec::new();
        while up.len() < UP || pongs.len() < 2 {
            match ws.read().unwrap() {
                tungstenite::Message::Binary(b) => {
                    up.extend_from_slice(&b);
                    messages += 1;
                }
                tungstenite::Message::Pong(p) => pongs.push(p.to_vec()),
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(pongs, [b"p1".to_vec(), b"p2".to_vec()], "each ping echoed");
        assert!(
            up.iter().enumerate().all(|(i, b)| *b == pattern(i)),
            "the upstream bytes differ"
        );
        ws.close(None).unwrap();
        let _ = ws.flush();
        messages
    });
    let sock = dial(&addr);
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    coremq_bench::conn::wsio::upgrade(&sock, &format!("ws://{addr}/")).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let mut reader = Link::Ws(Box::new(WsLink::new(sock)));
    assert_eq!(reader.kind(), "WebSocket");
    let mut writer = reader.split().unwrap();
    let w = thread::spawn(move || {
        // One message per write: 5 sizes cycled over 2 MiB.
        write_pattern(&mut writer, UP, &[65_536, 1, 100_000, 17, 4096]);
        writer
    });
    read_pattern(&mut reader, DOWN, 777);
    let mut writer = w.join().unwrap();
    // Pongs go out with the writing handle's next write (the writer may have
    // written everything before the reader saw the pings): an empty one.
    writer.write_all(b"", None, "pongs").unwrap();
    let messages = server.join().unwrap();
    assert!(messages > 30, "one binary message per write: {messages}");
    // The server's close reads as the end of the stream.
    let mut buf = [0u8; 16];
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => panic!("{n} bytes after the close"),
            Err(e) if coremq_bench::conn::stream::is_timeout(&e) => {
                assert!(Instant::now() < deadline, "no close")
            }
            Err(e) => panic!("{e}"),
        }
    }
}
