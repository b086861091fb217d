//! The background thread: reads frames, hands replies to the requests that
//! wait for them and messages to the inbox (dropping replays of messages
//! already there or received), and when the connection is lost, reconnects
//! with backoff between rounds over the servers — the one it was on first,
//! as a short outage of it is the common case, then the others in turn
//! (authenticating, resuming subscriptions and re-applying options through
//! the handshake).
//!
//! Credentials that the server refuses on a reconnect, and a token that ran
//! out, end the reconnecting for good: the same credentials would be refused
//! again at every attempt, and a client that keeps trying a bad password
//! looks to the server like someone guessing it.

use crate::auth::{notice, Notice};
use crate::backoff::Backoff;
use crate::error::ClientError;
use crate::handshake::{self, is_reply, Connection};
use crate::message::Message;
use crate::resume;
use crate::state::{Fatal, Live, Shared};
use crate::wire::ServerFrame;
use coremq_protocol::{BYE, OK_SUBSCRIBE};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Makes `conn` the live connection: requests may use it from now on.
/// Returns false if the client was closed meanwhile.
pub(crate) fn install(shared: &Shared, conn: &mut Connection) -> bool {
    let (Ok(writer), Ok(socket)) = (conn.stream.writer(), conn.stream.socket().try_clone()) else {
        return false;
    };
    // A write that cannot finish within the request timeout means a stuck
    // connection; failing it makes the reader reconnect.
    let _ = writer.set_write_timeout(Some(shared.config.request_timeout));
    let mut st = shared.lock();
    if st.closed {
        return false;
    }
    st.generation += 1;
    st.live = Some(Live {
        id: conn.id.clone(),
        node: conn.node.clone(),
        server: conn.server,
        user: conn.user.clone(),
        writer: Arc::new(Mutex::new(writer)),
        socket,
        pending: Default::default(),
        generation: st.generation,
    });
    if let Some(w) = conn.warning.take() {
        st.last_error = Some(w);
    }
    st.revoke(std::mem::take(&mut conn.revoked));
    // Before the messages: an application that looks at the gaps after each
    // message it receives learns of a gap before any message that follows it.
    st.gaps.append(&mut conn.gaps);
    for (queue, n) in conn.dropped.drain(..) {
        *st.dropped.entry(queue).or_default() += n;
    }
    for msg in conn.early.drain(..) {
        st.enqueue(msg);
    }
    drop(st);
    shared.changed.notify_all();
    true
}

/// The thread's body: serve `conn`, and after it breaks, reconnect until the
/// client is closed (or for good, if reconnection is off).
pub(crate) fn run(shared: Arc<Shared>, mut conn: Connection) {
    let config = &shared.config;
    let mut backoff = Backoff::new(config.reconnect_min, config.reconnect_max);
    'serve: loop {
        let why = serve(&shared, &mut conn);
        {
            let mut st = shared.lock();
            st.drop_live(why);
            if st.closed || !config.reconnect || st.fatal.is_some() {
                break 'serve;
            }
        }
        shared.changed.notify_all();
        loop {
            if pause(&shared, backoff.next_delay()) {
                break 'serve;
            }
            let (credentials, subs, options) = {
                let st = shared.lock();
                let st = &*st;
                let subs: Vec<handshake::Resume> = st
                    .subscriptions
                    .iter()
                    .map(|q| (q.clone(), st.positions.resume_points(q)))
                    .collect();
                (st.credentials.clone(), subs, st.options.clone())
            };
            match handshake::open(&shared, conn.server, credentials.as_ref(), &subs, &options) {
                Ok(mut next) => {
                    if !install(&shared, &mut next) {
                        break 'serve;
                    }
                    shared.lock().reconnects += 1;
                    backoff.reset();
                    conn = next;
                    continue 'serve;
                }
                Err(ClientError::AuthenticationFailed(reply)) => {
                    let mut st = shared.lock();
                    st.last_error = Some(format!("authentication failed: {reply}"));
                    st.fatal = Some(Fatal::Auth(reply));
                    break 'serve;
                }
                Err(e) => shared.lock().last_error = Some(e.to_string()),
            }
        }
    }
    let mut st = shared.lock();
    st.stopped = true;
    st.live = None;
    drop(st);
    shared.changed.notify_all();
}

/// Waits `delay` unless the client is closed first (returns true then).
fn pause(shared: &Shared, delay: Duration) -> bool {
    let deadline = std::time::Instant::now() + delay;
    let mut st = shared.lock();
    loop {
        if st.closed {
            return true;
        }
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return false;
        }
        st = match shared.changed.wait_timeout(st, left) {
            Ok((g, _)) => g,
            Err(e) => e.into_inner().0,
        };
    }
}

/// Reads until the connection ends; returns why it ended.
fn serve(shared: &Shared, conn: &mut Connection) -> String {
    let mut bye = false;
    loop {
        let frame = match conn.reader.read(&mut conn.stream) {
            Ok(frame) => frame,
            Err(end) if bye => return format!("server stopped (BYE); {}", end.describe()),
            Err(end) => return format!("connection lost: {}", end.describe()),
        };
        if is_reply(&frame, &conn.id) {
            match notice(&frame.json) {
                Some(Notice::Revoked(queues)) => {
                    shared.lock().revoke(queues);
                    shared.changed.notify_all();
                }
                // The server closes the connection next; the end of `serve`
                // then finds `fatal` and does not reconnect.
                Some(Notice::TokenExpired) => shared.lock().fatal = Some(Fatal::TokenExpired),
                // Before the queue's next message: an application that looks
                // after each message it receives learns of the drop no later
                // than the first message after it.
                Some(Notice::Dropped { queue, messages }) => {
                    *shared.lock().dropped.entry(queue).or_default() += messages;
                    shared.changed.notify_all();
                }
                None if frame.response() == Some(BYE) => bye = true,
                None => reply(shared, frame),
            }
        } else if !deliver(shared, frame) {
            return "client closed".into();
        }
    }
}

/// Hands a reply to the oldest waiting request.
fn reply(shared: &Shared, frame: ServerFrame) {
    let mut st = shared.lock();
    let pending = st.live.as_mut().and_then(|l| l.pending.pop_front());
    let error = frame
        .response()
        .filter(|r| r.starts_with("ERROR"))
        .map(str::to_string);
    match pending {
        Some(p) => {
            // Recorded here, not by the caller: the replayed messages right
            // behind this reply must not reach the inbox before their gap.
            if !p.since.is_empty() && frame.response() == Some(OK_SUBSCRIBE) {
                let gaps = resume::gaps(&frame.json, &p.since);
                st.gaps.extend(gaps);
            }
            match p.reply {
                // The caller may have timed out and gone; then the reply is dropped.
                Some(tx) => drop(tx.try_send(Ok(frame.json))),
                None => {
                    if let Some(e) = error {
                        st.last_error = Some(e);
                    }
                }
            }
        }
        // Nothing asked: the server's own notice (a slow-consumer cut-off).
        None => st.last_error = error.or(Some(format!("unexpected frame: {:?}", frame.json))),
    }
}

/// Puts a message in the inbox (unless it is a replay already delivered),
/// waiting while it is full. Returns false if the client was closed while
/// waiting.
fn deliver(shared: &Shared, frame: ServerFrame) -> bool {
    let max = shared.config.max_buffered;
    let mut st = shared.lock();
    while st.inbox.len() >= max {
        if st.closed {
            return false;
        }
        st = match shared.changed.wait(st) {
            Ok(g) => g,
            Err(e) => e.into_inner(),
        };
    }
    st.enqueue(Message::from(frame));
    drop(st);
    shared.changed.notify_all();
    true
}
