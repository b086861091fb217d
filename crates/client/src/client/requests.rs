//! Requests: writing one on the live connection (waiting for a reconnect
//! when there is none), and pairing its reply by order, within the request
//! timeout.

use super::not_connected;
use crate::error::ClientError;
use crate::resume::Since;
use crate::state::{Pending, Reply, State};
use crate::Client;
use serde_json::{Map, Value};
use std::io::Write;
use std::net::Shutdown;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, MutexGuard};
use std::time::{Duration, Instant};

/// Which reply a request must get to have succeeded.
pub(super) enum Expect {
    /// `{"response": "<this text>"}`.
    Response(&'static str),
    /// An object with this key (history, status).
    Key(&'static str),
}

impl Client {
    pub(super) fn state(&self) -> MutexGuard<'_, State> {
        self.shared.lock()
    }

    pub(super) fn timeout(&self) -> Duration {
        self.shared.config.request_timeout
    }

    /// Sends a request and waits for its reply, checking it is the expected one.
    pub(super) fn request(
        &self,
        build: impl Fn(&str) -> Vec<u8>,
        expect: Expect,
    ) -> Result<Map<String, Value>, ClientError> {
        self.request_resuming(build, expect, &[])
    }

    /// [`request`](Self::request) for a subscribe that resumes the queues of
    /// `since` (empty for any other request).
    pub(super) fn request_resuming(
        &self,
        build: impl Fn(&str) -> Vec<u8>,
        expect: Expect,
        since: &[Since],
    ) -> Result<Map<String, Value>, ClientError> {
        let deadline = Instant::now() + self.timeout();
        let rx = self.send(&build, true, since, deadline)?;
        let Some(rx) = rx else {
            return Err(ClientError::Disconnected);
        };
        let left = deadline.saturating_duration_since(Instant::now());
        let reply: Reply = match rx.recv_timeout(left) {
            Ok(r) => r,
            Err(RecvTimeoutError::Timeout) => return Err(ClientError::Timeout(self.timeout())),
            Err(RecvTimeoutError::Disconnected) => {
                // Say why, when the server ended the connection for good.
                let fatal = self.state().fatal.as_ref().map(|f| f.to_error());
                return Err(fatal.unwrap_or(ClientError::Disconnected));
            }
        };
        let reply = reply?;
        let response = reply.get("response").and_then(Value::as_str);
        if let Some(r) = response.filter(|r| r.starts_with("ERROR")) {
            return Err(ClientError::Server(r.to_string()));
        }
        let ok = match expect {
            Expect::Response(text) => response == Some(text),
            Expect::Key(key) => reply.contains_key(key),
        };
        if ok {
            Ok(reply)
        } else {
            Err(ClientError::Protocol(format!(
                "unexpected reply {}",
                Value::Object(reply)
            )))
        }
    }

    /// Writes one request on the live connection (waiting for one until
    /// `deadline`) and registers it for the next reply, with the positions
    /// of a resuming subscribe. Returns the reply's receiver when
    /// `want_reply`.
    pub(super) fn send(
        &self,
        build: &dyn Fn(&str) -> Vec<u8>,
        want_reply: bool,
        since: &[Since],
        deadline: Instant,
    ) -> Result<Option<Receiver<Reply>>, ClientError> {
        loop {
            let (writer, generation, id) = self.wait_live(deadline, self.timeout())?;
            let bytes = build(&id);
            let mut w = writer.lock().unwrap_or_else(|e| e.into_inner());
            let rx = {
                let mut st = self.state();
                let Some(live) = st.live.as_mut().filter(|l| l.generation == generation) else {
                    // Reconnected between the two locks: build again for the new id.
                    continue;
                };
                let (tx, rx) = if want_reply {
                    let (tx, rx) = mpsc::sync_channel(1);
                    (Some(tx), Some(rx))
                } else {
                    (None, None)
                };
                live.pending.push_back(Pending {
                    reply: tx,
                    since: since.to_vec(),
                });
                rx
            };
            if w.write_all(&bytes).is_err() {
                // The reader notices the shutdown and reconnects; the pending
                // entry fails with the connection.
                let _ = w.shutdown(Shutdown::Both);
                return Err(ClientError::Disconnected);
            }
            return Ok(rx);
        }
    }

    /// Waits for a live connection; returns its writer, generation and id.
    pub(super) fn wait_live(
        &self,
        deadline: Instant,
        timeout: Duration,
    ) -> Result<(Arc<std::sync::Mutex<crate::tls::Writer>>, u64, String), ClientError> {
        let mut st = self.state();
        loop {
            if st.closed {
                return Err(ClientError::Closed);
            }
            if let Some(l) = &st.live {
                return Ok((l.writer.clone(), l.generation, l.id.clone()));
            }
            if st.stopped {
                return Err(not_connected(&st));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(ClientError::NotConnected(format!(
                    "no connection within {timeout:?}; last error: {}",
                    st.last_error.as_deref().unwrap_or("none")
                )));
            }
            st = match self.shared.changed.wait_timeout(st, left) {
                Ok((g, _)) => g,
                Err(e) => e.into_inner().0,
            };
        }
    }
}
