//! The public handle: requests, replies and received messages
//! (`subscriptions`: subscribing, resuming and what is known about it;
//! `requests`: one request and its reply; `kv`: the key-value store).

pub(crate) mod kv;
mod requests;
mod subscriptions;

use requests::Expect;

use crate::auth::{Credentials, OK_AUTH};
use crate::config::ClientConfig;
use crate::error::ClientError;
use crate::handshake;
use crate::message::Message;
use crate::reader;
use crate::state::{Server, Shared, State};
use crate::wire::{check_queue_name, command_frame, publish_frame, GET_HISTORY, OPTIONS, STATUS};
use coremq_protocol::{OK_OPTIONS, OK_SENT};
use serde::Serialize;
use serde_json::{Map, Value};
use std::fmt;
use std::net::{Shutdown, ToSocketAddrs};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The option the client keeps for itself: it pairs replies with requests by
/// their order, which only works if every publish is answered.
const RESERVED_OPTION: &str = "ack";

/// A connection to a CoreMQ server that stays connected.
///
/// All methods take `&self`: one thread may block in [`recv`](Self::recv)
/// while others publish. Requests are answered in order, each within the
/// configured request timeout.
///
/// # Reconnection
///
/// When the connection breaks (server restart, network failure, `BYE`), a
/// background thread reconnects with exponential backoff, subscribes again to
/// every queue subscribed through this client and sets the options again,
/// before any new request is sent. A client given several servers (the nodes
/// of a cluster, [`connect_any`](Self::connect_any)) fails over: each round
/// tries the server it was on, then the others in turn, and the backoff
/// pause comes between rounds.
///
/// Each queue is resumed after the newest of its messages that the client
/// queued for [`recv`](Self::recv) from each server (docs/protocol.md §10;
/// the newest [`MAX_SINCE_SERVERS`](crate::MAX_SINCE_SERVERS) servers, and
/// the single position form when the queue's messages came from one server
/// only): the server sends the messages published meanwhile that it still
/// retains, marked
/// [`is_replay`](Message::is_replay), then the live ones. The client drops any
/// replay of a message it already delivered, so none arrives twice. Where
/// the server cannot vouch that nothing was missed — the position is older
/// than what it retains, it does not know it (a restarted node), it does not
/// support resuming, or the queue had no position yet because none of its
/// messages had arrived — a [`Gap`](crate::Gap) is recorded in [`gaps`](Self::gaps)
/// before any message that follows it is queued. So after a reconnect the
/// application receives every message, or learns from a gap that some may
/// be lost.
///
/// What is *not* carried over:
///
/// - the connection id changes (see [`id`](Self::id)): messages sent to the
///   old id are lost;
/// - requests in flight when the connection broke fail with
///   [`ClientError::Disconnected`] (the server may or may not have acted on
///   them; a publish is not retried, as that could deliver it twice);
/// - a request made while disconnected waits for the reconnection, up to the
///   request timeout. Nothing is queued across a disconnect.
///
/// # Authentication
///
/// With [`ClientConfig::credentials`] or [`ClientConfig::token`], every
/// connection authenticates right after the welcome, before the re-subscribe.
/// If the server refuses the credentials, [`connect_with`](Self::connect_with)
/// fails with [`ClientError::AuthenticationFailed`]; on a reconnect the
/// client stops reconnecting instead (the same credentials would be refused
/// at every attempt) and every later call fails with that error. A token that
/// runs out ends the connection the same way, with
/// [`ClientError::TokenExpired`]: replace it in time with
/// [`reauthenticate_with_token`](Self::reauthenticate_with_token).
///
/// When the server takes a subscription away (its users file was reloaded),
/// the queue is no longer re-subscribed and shows up in
/// [`revoked`](Self::revoked); so does one whose re-subscribe after a
/// reconnect is refused for lack of permission.
///
/// # Positions
///
/// [`position`](Self::position) is the position of the last message of a
/// queue that the application received. An application that must not miss
/// messages across its own restarts stores it (after handling the message)
/// and passes it to [`subscribe_since`](Self::subscribe_since) next time.
/// In a cluster, [`positions`](Self::positions) (one per server) and
/// [`subscribe_since_per_server`](Self::subscribe_since_per_server) do the
/// same without missing another node's message that was still on its way.
///
/// Dropping the client closes it and stops the background thread.
pub struct Client {
    /// State shared with the reader thread.
    shared: Arc<Shared>,
    /// The reader thread, joined on close.
    thread: Option<JoinHandle<()>>,
}

impl Client {
    /// Connects with the default [`ClientConfig`].
    ///
    /// ```no_run
    /// let client = coremq_client::Client::connect("127.0.0.1:6747")?;
    /// println!("connected as {:?}", client.id());
    /// # Ok::<(), coremq_client::ClientError>(())
    /// ```
    pub fn connect<A: ToSocketAddrs + fmt::Display>(addr: A) -> Result<Client, ClientError> {
        Client::connect_with(addr, ClientConfig::default())
    }

    /// Connects, reads the welcome and starts the background reader. The first
    /// connection is not retried: an unreachable server is reported at once.
    pub fn connect_with<A: ToSocketAddrs + fmt::Display>(
        addr: A,
        config: ClientConfig,
    ) -> Result<Client, ClientError> {
        Client::connect_any([addr], config)
    }

    /// Connects to the first of several servers (the nodes of a cluster) that
    /// answers, trying them in the order given, and fails over between them:
    /// after a lost connection, each reconnection round tries the server the
    /// client was on first, then the others in turn, with the configured
    /// backoff between rounds (see "Reconnection" above).
    /// [`server_addr`](Self::server_addr) tells which one it is on.
    ///
    /// Every address is resolved now, once; one that does not resolve fails
    /// the call with [`ClientError::Resolve`], as does an empty list. When no
    /// server answers, the error is the last one's. A round can take up to
    /// one [`connect_timeout`](ClientConfig::connect_timeout) per server.
    ///
    /// ```no_run
    /// use coremq_client::{Client, ClientConfig};
    ///
    /// let nodes = ["mq1:6747", "mq2:6747", "mq3:6747"];
    /// let client = Client::connect_any(nodes, ClientConfig::default())?;
    /// println!("on {:?}", client.server_addr());
    /// # Ok::<(), coremq_client::ClientError>(())
    /// ```
    pub fn connect_any<I, A>(addrs: I, mut config: ClientConfig) -> Result<Client, ClientError>
    where
        I: IntoIterator<Item = A>,
        A: ToSocketAddrs + fmt::Display,
    {
        let servers = addrs
            .into_iter()
            .map(|addr| {
                let text = addr.to_string();
                match addr.to_socket_addrs() {
                    Ok(resolved) => {
                        let addrs: Vec<_> = resolved.collect();
                        if addrs.is_empty() {
                            Err(ClientError::Resolve {
                                addr: text,
                                cause: std::io::Error::other("no addresses"),
                            })
                        } else {
                            Ok(Server { text, addrs })
                        }
                    }
                    Err(cause) => Err(ClientError::Resolve { addr: text, cause }),
                }
            })
            .collect::<Result<Vec<_>, _>>()?;
        if servers.is_empty() {
            return Err(ClientError::Resolve {
                addr: "[]".into(),
                cause: std::io::Error::other("no server address given"),
            });
        }
        if let Some(tls) = &mut config.tls {
            tls.prepare()?;
        }
        let credentials = config.credentials.clone();
        let shared = Arc::new(Shared {
            state: std::sync::Mutex::new(State {
                credentials: credentials.clone(),
                ..State::default()
            }),
            changed: Default::default(),
            config,
            servers,
        });
        let mut conn = handshake::open(&shared, 0, credentials.as_ref(), &[], &Map::new())?;
        reader::install(&shared, &mut conn);
        let thread = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("coremq-client".into())
                .spawn(move || reader::run(shared, conn))
                .map_err(|e| {
                    ClientError::NotConnected(format!("cannot start the reader thread: {e}"))
                })?
        };
        Ok(Client {
            shared,
            thread: Some(thread),
        })
    }

    /// The current connection id (the queue other clients publish to to reach
    /// this one), or `None` while reconnecting. It changes on every reconnect.
    pub fn id(&self) -> Option<String> {
        self.state().live.as_ref().map(|l| l.id.clone())
    }

    /// The server's node name, from the welcome frame.
    pub fn server_name(&self) -> Option<String> {
        self.state().live.as_ref().map(|l| l.node.clone())
    }

    /// The address of the server the client is connected to, as given to
    /// [`connect_any`](Self::connect_any) (or `connect`), or `None` while
    /// reconnecting. It changes when the client fails over to another server.
    pub fn server_addr(&self) -> Option<String> {
        let server = self.state().live.as_ref().map(|l| l.server)?;
        Some(self.shared.servers[server].text.clone())
    }

    /// The user the server authenticated the current connection as (from
    /// its `OK: Authenticated`); `None` without credentials or while
    /// reconnecting.
    pub fn user(&self) -> Option<String> {
        self.state().live.as_ref().and_then(|l| l.user.clone())
    }

    /// Is there a connection right now (past its handshake)?
    pub fn is_connected(&self) -> bool {
        self.state().live.is_some()
    }

    /// How many times the client has reconnected.
    pub fn reconnects(&self) -> u64 {
        self.state().reconnects
    }

    /// The last problem seen: why the connection was lost, a failed
    /// re-subscribe, or an `ERROR:` for a [`publish_nowait`](Self::publish_nowait).
    pub fn last_error(&self) -> Option<String> {
        self.state().last_error.clone()
    }

    /// Waits until the client is connected (subscriptions and options already
    /// re-applied), for at most `timeout`.
    pub fn wait_connected(&self, timeout: Duration) -> Result<(), ClientError> {
        let deadline = Instant::now() + timeout;
        self.wait_live(deadline, timeout).map(|_| ())
    }

    /// Publishes `message` (anything that serializes to a JSON object) to
    /// `queue` and waits for the server's `OK: Message sent`. Once it returns,
    /// every history request sees the message and every subscriber that was
    /// subscribed before receives it (guarantees G2, G3).
    ///
    /// Publishing to another connection's id reaches that connection alone.
    ///
    /// ```no_run
    /// # let client = coremq_client::Client::connect("127.0.0.1:6747")?;
    /// client.publish("news", &serde_json::json!({"headline": "hello"}))?;
    /// # Ok::<(), coremq_client::ClientError>(())
    /// ```
    pub fn publish<T: Serialize + ?Sized>(
        &self,
        queue: &str,
        message: &T,
    ) -> Result<(), ClientError> {
        let frame = publish_frame(queue, message)?;
        self.request(move |_| frame.clone(), Expect::Response(OK_SENT))
            .map(|_| ())
    }

    /// Publishes without waiting for the reply: returns once the frame is
    /// written. The server's OK is discarded; an `ERROR:` becomes
    /// [`last_error`](Self::last_error). A message written just before the
    /// connection breaks may be lost.
    pub fn publish_nowait<T: Serialize + ?Sized>(
        &self,
        queue: &str,
        message: &T,
    ) -> Result<(), ClientError> {
        let frame = publish_frame(queue, message)?;
        let deadline = Instant::now() + self.timeout();
        self.send(&move |_| frame.clone(), false, &[], deadline)
            .map(|_| ())
    }

    /// Sets connection options (a `null` value removes one) and remembers them
    /// for reconnects. `"echo": true` delivers this client's own publishes back
    /// to it. `"ack"` is refused with [`ClientError::ReservedOption`]: the client
    /// relies on every publish being answered, and
    /// [`publish_nowait`](Self::publish_nowait) already skips the wait.
    ///
    /// ```no_run
    /// # let client = coremq_client::Client::connect("127.0.0.1:6747")?;
    /// let mut options = serde_json::Map::new();
    /// options.insert("echo".into(), true.into());
    /// client.set_options(options)?;
    /// # Ok::<(), coremq_client::ClientError>(())
    /// ```
    pub fn set_options(&self, options: Map<String, Value>) -> Result<(), ClientError> {
        if options.contains_key(RESERVED_OPTION) {
            return Err(ClientError::ReservedOption(RESERVED_OPTION.into()));
        }
        let before = {
            let mut st = self.state();
            let before = st.options.clone();
            for (k, v) in &options {
                if v.is_null() {
                    st.options.remove(k);
                } else {
                    st.options.insert(k.clone(), v.clone());
                }
            }
            before
        };
        let value = Value::Object(options);
        let result = self.request(
            move |id| command_frame(id, OPTIONS, value.clone()),
            Expect::Response(OK_OPTIONS),
        );
        if let Err(ClientError::Server(_)) = &result {
            self.state().options = before;
        }
        result.map(|_| ())
    }

    /// Sets one option; see [`set_options`](Self::set_options).
    pub fn set_option(&self, key: &str, value: impl Into<Value>) -> Result<(), ClientError> {
        let mut options = Map::new();
        options.insert(key.to_string(), value.into());
        self.set_options(options)
    }

    /// The options in force (as set through this client).
    pub fn options(&self) -> Map<String, Value> {
        self.state().options.clone()
    }

    /// The recent messages of `queues`: grouped by queue in the order asked,
    /// oldest first within each queue. Queues without history add nothing.
    ///
    /// ```no_run
    /// # let client = coremq_client::Client::connect("127.0.0.1:6747")?;
    /// for msg in client.history(["news"])? {
    ///     println!("{} {:?}", msg.queue, msg.body);
    /// }
    /// # Ok::<(), coremq_client::ClientError>(())
    /// ```
    pub fn history<I, S>(&self, queues: I) -> Result<Vec<Message>, ClientError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let names = names(queues)?;
        let value = Value::from(names.clone());
        let mut reply = self.request(
            move |id| command_frame(id, GET_HISTORY, value.clone()),
            Expect::Key("history"),
        )?;
        let Some(Value::Object(mut history)) = reply.remove("history") else {
            return Err(ClientError::Protocol(
                "history reply without a history object".into(),
            ));
        };
        let mut out = Vec::new();
        for name in names {
            let Some(entries) = history.remove(&name) else {
                continue;
            };
            let Value::Array(entries) = entries else {
                return Err(ClientError::Protocol(format!(
                    "history of {name:?} is not a list"
                )));
            };
            for entry in entries {
                let Value::Object(body) = entry else {
                    return Err(ClientError::Protocol(format!(
                        "history of {name:?} holds a non-object"
                    )));
                };
                out.push(Message::from_history(name.clone(), body));
            }
        }
        Ok(out)
    }

    /// Replaces the connection's token with `token` (for the same user)
    /// before the old one expires, and uses it for every reconnection from
    /// now on. Works for a client that authenticated with a password too.
    ///
    /// If the server refuses the token this fails with
    /// [`ClientError::AuthenticationFailed`]; the server then closes the
    /// connection and the client reconnects with the credentials it had.
    ///
    /// ```no_run
    /// # let client = coremq_client::Client::connect("127.0.0.1:6747")?;
    /// # let fresh_token = String::new();
    /// client.reauthenticate_with_token(fresh_token)?;
    /// # Ok::<(), coremq_client::ClientError>(())
    /// ```
    pub fn reauthenticate_with_token(&self, token: impl Into<String>) -> Result<(), ClientError> {
        let credentials = Credentials::Token(token.into());
        let sent = credentials.clone();
        match self.request(move |id| sent.frame(id), Expect::Response(OK_AUTH)) {
            Ok(reply) => {
                let user = reply.get("user").and_then(Value::as_str).map(String::from);
                let mut st = self.state();
                st.credentials = Some(credentials);
                if let Some(live) = st.live.as_mut() {
                    live.user = user.or(live.user.take());
                }
                Ok(())
            }
            Err(ClientError::Server(reply)) => Err(ClientError::AuthenticationFailed(reply)),
            Err(e) => Err(e),
        }
    }

    /// The server's status object (docs/protocol.md §7).
    pub fn status(&self) -> Result<Value, ClientError> {
        self.request(
            |id| command_frame(id, STATUS, Value::Bool(true)),
            Expect::Key("master"),
        )
        .map(Value::Object)
    }

    /// The next received message, waiting as long as it takes (across
    /// reconnects). Fails only when the client is closed, or disconnected with
    /// reconnection turned off.
    pub fn recv(&self) -> Result<Message, ClientError> {
        loop {
            if let Some(m) = self.recv_timeout(Duration::from_secs(3600))? {
                return Ok(m);
            }
        }
    }

    /// The next received message, or `None` if none arrives within `timeout`.
    pub fn recv_timeout(&self, timeout: Duration) -> Result<Option<Message>, ClientError> {
        let deadline = Instant::now() + timeout;
        let mut st = self.state();
        loop {
            if let Some(m) = st.inbox.pop_front() {
                st.positions.received(&m);
                drop(st);
                // The reader may be waiting for room in the inbox.
                self.shared.changed.notify_all();
                return Ok(Some(m));
            }
            if st.closed {
                return Err(ClientError::Closed);
            }
            if st.stopped {
                return Err(not_connected(&st));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            st = match self.shared.changed.wait_timeout(st, left) {
                Ok((g, _)) => g,
                Err(e) => e.into_inner().0,
            };
        }
    }

    /// A received message if one is waiting, without blocking.
    pub fn try_recv(&self) -> Result<Option<Message>, ClientError> {
        self.recv_timeout(Duration::ZERO)
    }

    /// Closes the connection and stops the background thread. Messages not yet
    /// received are discarded. Also done on drop.
    pub fn close(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        {
            let mut st = self.state();
            st.closed = true;
            if let Some(live) = &st.live {
                let _ = live.socket.shutdown(Shutdown::Both);
            }
            if let Some(s) = &st.connecting {
                let _ = s.shutdown(Shutdown::Both);
            }
        }
        self.shared.changed.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        self.shutdown();
    }
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // No credentials here: they must never reach a log.
        f.debug_struct("Client")
            .field("server", &self.server_addr())
            .field(
                "servers",
                &self
                    .shared
                    .servers
                    .iter()
                    .map(|s| &s.text)
                    .collect::<Vec<_>>(),
            )
            .field("id", &self.id())
            .field("user", &self.user())
            .finish()
    }
}

fn not_connected(st: &State) -> ClientError {
    if let Some(fatal) = &st.fatal {
        return fatal.to_error();
    }
    ClientError::NotConnected(
        st.last_error
            .clone()
            .unwrap_or_else(|| "connection lost".into()),
    )
}

/// Queue names from the caller, checked.
fn names<I, S>(queues: I) -> Result<Vec<String>, ClientError>
where
    I: IntoIterator<Item = S>,
    S: AsRef<str>,
{
    queues
        .into_iter()
        .map(|q| {
            let q = q.as_ref();
            check_queue_name(q).map(|_| q.to_string())
        })
        .collect()
}
