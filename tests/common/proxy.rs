//! A test-controlled TCP proxy for cluster tests: it accepts on its own port, connects
//! each accepted connection to a target and pumps bytes both ways. `partition()` closes
//! every current connection and refuses (immediately closes) new ones until `heal()`.
//!
//! `half_open()` closes only the accepting side of every current connection and
//! keeps the target side open and silent, as a peer sees a link whose other end
//! vanished without a FIN or RST.
//! `stall()` keeps the connections open but stops forwarding (a peer that is cut off
//! without a close: its bytes pile up in buffers) until `resume()`.
//!
//! Blocking `std::net` with a few threads per connection; everything stops when the
//! `Proxy` is dropped.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

struct Inner {
    target: SocketAddr,
    stop: AtomicBool,
    stalled: AtomicBool,
    /// `partitioned` and the registration of a new connection are decided under this
    /// lock, so no connection slips through a `partition()`.
    state: Mutex<State>,
    accepted: AtomicU64,
    refused: AtomicU64,
    bytes: AtomicU64,
    /// The first [`CAPTURE_MAX`] bytes that crossed, both directions, as a
    /// packet capture would see them.
    capture: Mutex<Vec<u8>>,
}

/// How much of the traffic the proxy keeps for [`Proxy::captured`].
const CAPTURE_MAX: usize = 1 << 20;

struct State {
    partitioned: bool,
    next_id: u64,
    /// (id, client side, target side) of every open pair.
    conns: Vec<(u64, TcpStream, TcpStream)>,
    /// Target sides kept open (and never read or written again) by `half_open()`.
    zombies: Vec<(u64, TcpStream)>,
}

pub struct Proxy {
    pub addr: SocketAddr,
    inner: Arc<Inner>,
    acceptor: Option<JoinHandle<()>>,
}

impl Proxy {
    /// Proxy on an already bound listener (so the port chosen by the test is kept).
    pub fn start(listener: TcpListener, target: SocketAddr) -> Proxy {
        let addr = listener.local_addr().expect("proxy local_addr");
        // Small kernel buffers (inherited by accepted sockets), so that a stall backs
        // up into the sender soon instead of into megabytes of autotuned buffers.
        set_rcvbuf(&listener, 256 * 1024);
        listener
            .set_nonblocking(true)
            .expect("proxy listener nonblocking");
        let inner = Arc::new(Inner {
            target,
            stop: AtomicBool::new(false),
            stalled: AtomicBool::new(false),
            state: Mutex::new(State {
                partitioned: false,
                next_id: 0,
                conns: Vec::new(),
                zombies: Vec::new(),
            }),
            accepted: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            capture: Mutex::new(Vec::new()),
        });
        let i2 = inner.clone();
        let acceptor = std::thread::Builder::new()
            .name(format!("proxy-{}", addr.port()))
            .spawn(move || accept_loop(listener, i2))
            .expect("spawn proxy thread");
        Proxy {
            addr,
            inner,
            acceptor: Some(acceptor),
        }
    }

    /// "host:port" of the proxy.
    pub fn entry(&self) -> String {
        self.addr.to_string()
    }

    /// Close every current connection and refuse new ones.
    pub fn partition(&self) {
        let mut st = self.inner.state.lock().unwrap();
        st.partitioned = true;
        for (_, a, b) in st.conns.drain(..) {
            let _ = a.shutdown(Shutdown::Both);
            let _ = b.shutdown(Shutdown::Both);
        }
    }

    /// Close the accepting side of every current connection; the target side stays
    /// open (nothing is forwarded on it any more). New connections are forwarded.
    pub fn half_open(&self) {
        let mut st = self.inner.state.lock().unwrap();
        let pairs: Vec<_> = st.conns.drain(..).collect();
        for (id, a, b) in pairs {
            let _ = a.shutdown(Shutdown::Both);
            st.zombies.push((id, b));
        }
    }

    /// Forward new connections again.
    pub fn heal(&self) {
        self.inner.state.lock().unwrap().partitioned = false;
    }

    /// Stop forwarding bytes (connections stay open, nothing is read from them).
    pub fn stall(&self) {
        self.inner.stalled.store(true, Ordering::SeqCst);
    }

    /// Forward bytes again after `stall()`.
    pub fn resume(&self) {
        self.inner.stalled.store(false, Ordering::SeqCst);
    }

    /// Connections forwarded so far.
    pub fn accepted(&self) -> u64 {
        self.inner.accepted.load(Ordering::SeqCst)
    }

    /// Connections refused (closed at once) while partitioned, or whose target
    /// could not be reached.
    pub fn refused(&self) -> u64 {
        self.inner.refused.load(Ordering::SeqCst)
    }

    /// Bytes forwarded (both directions).
    pub fn bytes(&self) -> u64 {
        self.inner.bytes.load(Ordering::SeqCst)
    }

    /// The first MiB of bytes that crossed the proxy (both directions).
    pub fn captured(&self) -> Vec<u8> {
        self.inner.capture.lock().unwrap().clone()
    }

    /// Connections currently forwarded.
    pub fn open(&self) -> usize {
        self.inner.state.lock().unwrap().conns.len()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.inner.stop.store(true, Ordering::SeqCst);
        {
            let mut st = self.inner.state.lock().unwrap();
            for (_, a, b) in st.conns.drain(..) {
                let _ = a.shutdown(Shutdown::Both);
                let _ = b.shutdown(Shutdown::Both);
            }
            for (_, b) in st.zombies.drain(..) {
                let _ = b.shutdown(Shutdown::Both);
            }
        }
        if let Some(h) = self.acceptor.take() {
            let _ = h.join();
        }
    }
}

fn accept_loop(listener: TcpListener, inner: Arc<Inner>) {
    while !inner.stop.load(Ordering::SeqCst) {
        let client = match listener.accept() {
            Ok((s, _)) => s,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(5));
                continue;
            }
            Err(_) => {
                std::thread::sleep(Duration::from_millis(5));
                continue;
            }
        };
        let _ = client.set_nonblocking(false);
        let _ = client.set_nodelay(true);
        if inner.state.lock().unwrap().partitioned {
            inner.refused.fetch_add(1, Ordering::SeqCst);
            let _ = client.shutdown(Shutdown::Both);
            continue;
        }
        let upstream = match TcpStream::connect_timeout(&inner.target, Duration::from_secs(2)) {
            Ok(s) => s,
            Err(_) => {
                inner.refused.fetch_add(1, Ordering::SeqCst);
                let _ = client.shutdown(Shutdown::Both);
                continue;
            }
        };
        let _ = upstream.set_nodelay(true);
        let (c2, u2, c3, u3) = match (
            client.try_clone(),
            upstream.try_clone(),
            client.try_clone(),
            upstream.try_clone(),
        ) {
            (Ok(a), Ok(b), Ok(c), Ok(d)) => (a, b, c, d),
            _ => continue,
        };
        let id = {
            let mut st = inner.state.lock().unwrap();
            if st.partitioned || inner.stop.load(Ordering::SeqCst) {
                inner.refused.fetch_add(1, Ordering::SeqCst);
                let _ = client.shutdown(Shutdown::Both);
                let _ = upstream.shutdown(Shutdown::Both);
                continue;
            }
            st.next_id += 1;
            let id = st.next_id;
            st.conns.push((id, client, upstream));
            id
        };
        inner.accepted.fetch_add(1, Ordering::SeqCst);
        let i_a = inner.clone();
        let i_b = inner.clone();
        let _ = std::thread::Builder::new()
            .name("proxy-pump".into())
            .spawn(move || pump(c2, u2, id, i_a));
        let _ = std::thread::Builder::new()
            .name("proxy-pump".into())
            .spawn(move || pump(u3, c3, id, i_b));
    }
}

/// Copy `from` to `to` until either side ends; then close both and forget the pair.
fn pump(mut from: TcpStream, mut to: TcpStream, id: u64, inner: Arc<Inner>) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        while inner.stalled.load(Ordering::SeqCst) && !inner.stop.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(5));
        }
        match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                // A read that was already waiting when stall() came must not
                // slip its bytes through either.
                while inner.stalled.load(Ordering::SeqCst) && !inner.stop.load(Ordering::SeqCst) {
                    std::thread::sleep(Duration::from_millis(5));
                }
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
                inner.bytes.fetch_add(n as u64, Ordering::SeqCst);
                let mut cap = inner.capture.lock().unwrap();
                let room = CAPTURE_MAX.saturating_sub(cap.len()).min(n);
                cap.extend_from_slice(&buf[..room]);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        }
    }
    let mut st = inner.state.lock().unwrap();
    if st.zombies.iter().any(|(z, _)| *z == id) {
        // half_open(): leave the target side open; only our clones go away.
        return;
    }
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
    st.conns.retain(|(i, _, _)| *i != id);
}

fn set_rcvbuf(l: &TcpListener, bytes: libc::c_int) {
    use std::os::unix::io::AsRawFd;
    let r = unsafe {
        libc::setsockopt(
            l.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            &bytes as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(r, 0, "setsockopt SO_RCVBUF: {}", io::Error::last_os_error());
}
