//! What the caller's threads and the background reader share: the live
//! connection (if any), the requests waiting for replies, the received
//! messages, and what must be re-applied after a reconnect (subscriptions
//! with the positions to resume them from, options, credentials).
//!
//! One mutex guards it all and one condition variable announces every change;
//! a client has few threads and this keeps the invariants in one place. The
//! socket writer has a mutex of its own so that a slow write never holds up
//! the reader (lock order: writer, then state).

use crate::auth::Credentials;
use crate::config::ClientConfig;
use crate::error::ClientError;
use crate::message::Message;
use crate::resume::{Gap, Positions, Since};
use serde_json::{Map, Value};
use std::collections::VecDeque;
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::mpsc::SyncSender;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

/// A reply as handed to the waiting caller.
pub(crate) type Reply = Result<Map<String, Value>, ClientError>;

/// Shared between [`Client`](crate::Client) and its reader thread.
pub(crate) struct Shared {
    /// Everything that changes.
    pub state: Mutex<State>,
    /// Signalled on every change of `state`.
    pub changed: Condvar,
    /// Fixed at connect.
    pub config: ClientConfig,
    /// The servers (cluster nodes) the client may connect to, in the
    /// caller's order; never empty.
    pub servers: Vec<Server>,
}

/// One server address as the caller gave it.
pub(crate) struct Server {
    /// As the caller wrote it: for messages and
    /// [`Client::server_addr`](crate::Client::server_addr).
    pub text: String,
    /// Its socket addresses, resolved once at connect and tried in order.
    pub addrs: Vec<SocketAddr>,
}

/// The mutable part of [`Shared`].
#[derive(Default)]
pub(crate) struct State {
    /// The connection requests go to; `None` while (re)connecting.
    pub live: Option<Live>,
    /// Counts connections, so a request prepared for one connection is never
    /// written to the next (its id, and its place in the reply order, differ).
    pub generation: u64,
    /// Queues to subscribe again after a reconnect, in first-subscribed order.
    pub subscriptions: Vec<String>,
    /// Options to set again after a reconnect (`null`s already applied).
    pub options: Map<String, Value>,
    /// Messages received and not yet taken by `recv`.
    pub inbox: VecDeque<Message>,
    /// The caller closed the client.
    pub closed: bool,
    /// The reader thread has ended (reconnection off, or closed).
    pub stopped: bool,
    /// Successful reconnections so far.
    pub reconnects: u64,
    /// The last problem seen (connection loss, an `ERROR:` nobody waited for).
    pub last_error: Option<String>,
    /// The socket of a reconnection in progress, so `close` can interrupt it.
    pub connecting: Option<TcpStream>,
    /// What the next (re)connection authenticates with: the config's, until
    /// a token refresh replaces it.
    pub credentials: Option<Credentials>,
    /// Queues the server unsubscribed us from because the user lost the right
    /// (oldest first); they are no longer re-subscribed.
    pub revoked: Vec<String>,
    /// How far each subscribed queue has got: where a reconnect resumes it,
    /// which deliveries are replays, what the application received.
    pub positions: Positions,
    /// Subscriptions (re-)established without the server vouching that
    /// nothing was missed, oldest first.
    pub gaps: Vec<Gap>,
    /// Messages the server dropped for this client under the `drop` policy,
    /// per queue, since the client was made.
    pub dropped: std::collections::BTreeMap<String, u64>,
    /// Why reconnecting stopped for good although it is on: the credentials
    /// no longer work, and retrying them would only hammer the server.
    pub fatal: Option<Fatal>,
}

/// An end that other credentials, not time, would cure.
#[derive(Debug, Clone)]
pub(crate) enum Fatal {
    /// The server refused the credentials on a reconnect (its reply).
    Auth(String),
    /// The server closed the connection because the token ran out.
    TokenExpired,
}

impl Fatal {
    /// The error every later call fails with.
    pub fn to_error(&self) -> ClientError {
        match self {
            Fatal::Auth(reply) => ClientError::AuthenticationFailed(reply.clone()),
            Fatal::TokenExpired => ClientError::TokenExpired,
        }
    }
}

/// A connection that is open and past its handshake.
pub(crate) struct Live {
    /// The connection id from the welcome frame; commands are sent to it.
    pub id: String,
    /// The server's node name from the welcome frame.
    pub node: String,
    /// Which of [`Shared::servers`] it is connected to.
    pub server: usize,
    /// The user the server authenticated this connection as, if any.
    pub user: Option<String>,
    /// Write side; its own lock (see the module docs).
    pub writer: Arc<Mutex<crate::tls::Writer>>,
    /// A handle to shut the socket down from any thread without the writer lock.
    pub socket: TcpStream,
    /// Requests written and not yet answered, oldest first: the server answers
    /// one connection's requests in order (docs/protocol.md §3), so the next
    /// reply belongs to the front entry.
    pub pending: VecDeque<Pending>,
    /// Which connection this is (see [`State::generation`]).
    pub generation: u64,
}

/// One request waiting for its reply.
pub(crate) struct Pending {
    /// Where the reply goes; `None` for fire-and-forget publishes, whose OK is
    /// dropped and whose `ERROR:` is kept as `last_error`.
    pub reply: Option<SyncSender<Reply>>,
    /// For a subscribe with positions: the queues and positions asked, so
    /// that the reader records the gaps its reply reveals before it reads
    /// (and queues) the replayed messages that follow the reply.
    pub since: Vec<Since>,
}

impl Shared {
    /// Locks the state. A panic elsewhere while it was held leaves data that
    /// is still consistent enough for a client, so poisoning is ignored.
    pub fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl State {
    /// Puts a delivered message in the inbox unless it is a replay of one
    /// already delivered.
    pub fn enqueue(&mut self, msg: Message) {
        if self.positions.admit(&msg, &self.subscriptions) {
            self.inbox.push_back(msg);
        }
    }

    /// Drops the live connection: its pending requests fail with
    /// [`ClientError::Disconnected`] (their senders are dropped).
    pub fn drop_live(&mut self, why: String) {
        if let Some(live) = self.live.take() {
            let _ = live.socket.shutdown(Shutdown::Both);
        }
        self.last_error = Some(why);
    }

    /// Forgets `queues` as subscriptions (the server dropped them) and keeps
    /// them for [`Client::revoked`](crate::Client::revoked).
    pub fn revoke(&mut self, queues: Vec<String>) {
        if queues.is_empty() {
            return;
        }
        self.subscriptions.retain(|s| !queues.contains(s));
        self.positions.forget(&queues);
        self.last_error = Some(format!(
            "unsubscribed by the server, permission revoked: {}",
            queues.join(" ")
        ));
        self.revoked.extend(queues);
    }
}
