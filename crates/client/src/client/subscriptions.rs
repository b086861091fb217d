//! Subscriptions: subscribing (plainly or resuming after positions),
//! unsubscribing, and what the client knows about them — the queues it
//! re-subscribes after a reconnect, their positions, revocations and gaps.

use super::{names, Expect};
use crate::error::ClientError;
use crate::position::Position;
use crate::resume::{self, subscribe_frame, Gap, Since};
use crate::wire::{check_queue_name, command_frame, UNSUBSCRIBE};
use crate::Client;
use coremq_protocol::{OK_SUBSCRIBE, OK_UNSUBSCRIBE};
use serde_json::Value;
use std::collections::BTreeMap;

impl Client {
    /// Subscribes to `queues` and waits until the server has registered them
    /// all. They are remembered and subscribed again after a reconnect.
    ///
    /// ```no_run
    /// # use std::time::Duration;
    /// # let client = coremq_client::Client::connect("127.0.0.1:6747")?;
    /// client.subscribe(["news", "weather"])?;
    /// if let Some(msg) = client.recv_timeout(Duration::from_secs(5))? {
    ///     println!("{}: {:?}", msg.queue, msg.body);
    /// }
    /// # Ok::<(), coremq_client::ClientError>(())
    /// ```
    pub fn subscribe<I, S>(&self, queues: I) -> Result<(), ClientError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        self.subscribe_resuming(names(queues)?, Vec::new())
            .map(|_| ())
    }

    /// Subscribes to `queues` and to the queues of `positions`, asking the
    /// server to send first the messages it retains that were published after
    /// each given position (docs/protocol.md §10): for an application that
    /// stored [`position`](Self::position) or [`Message::position`](crate::Message::position) and
    /// resumes after a restart. Queues without a position subscribe as
    /// [`subscribe`](Self::subscribe) does.
    ///
    /// Returns, per queue given a position, whether the server resumed from
    /// it. `false` means messages were missed: the position is older than
    /// what the server retains, or unknown to it, or the server does not
    /// support resuming; what it retains is still sent. Each `false` is also
    /// recorded in [`gaps`](Self::gaps). The resent messages arrive through
    /// [`recv`](Self::recv) with [`is_replay`](crate::Message::is_replay) set.
    ///
    /// ```no_run
    /// # let client = coremq_client::Client::connect("127.0.0.1:6747")?;
    /// let stored: coremq_client::Position = "1796182109.38108@mq1:6747".parse()?;
    /// let recovered = client.subscribe_since(["sport"], [("news", stored)])?;
    /// if !recovered["news"] {
    ///     eprintln!("some news was missed");
    /// }
    /// # Ok::<(), coremq_client::ClientError>(())
    /// ```
    pub fn subscribe_since<I, S, P, Q>(
        &self,
        queues: I,
        positions: P,
    ) -> Result<BTreeMap<String, bool>, ClientError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
        P: IntoIterator<Item = (Q, Position)>,
        Q: AsRef<str>,
    {
        let positions = positions.into_iter().map(|(q, p)| (q, [p]));
        self.subscribe_since_per_server(queues, positions)
    }

    /// [`subscribe_since`](Self::subscribe_since) with several positions per
    /// queue, one per server the queue's messages came from — what
    /// [`positions`](Self::positions) returns. The server replays a message
    /// of a listed server when it is after that server's position, and one
    /// of any other server when it is after the earliest position given;
    /// `recovered` says whether nothing after the earliest was dropped.
    ///
    /// In a cluster this is what resumes without a hole: a message another
    /// node stamped before the last one received, but that had not arrived
    /// yet, is after its own server's position, so it is still replayed.
    ///
    /// A server given twice for a queue counts with its earliest position. At
    /// most [`MAX_SINCE_SERVERS`](crate::MAX_SINCE_SERVERS) positions per
    /// queue are sent, the newest. A queue with a single position is sent as
    /// `subscribe_since` sends it, so that servers which only know that form
    /// understand it; one with more needs a server that accepts a list.
    ///
    /// ```no_run
    /// # let client = coremq_client::Client::connect("127.0.0.1:6747")?;
    /// # let stored = |q: &str| client.positions(q);
    /// let news = stored("news"); // e.g. [1796182109.2@mq2:6747, 1796182109.38108@mq1:6747]
    /// let recovered = client.subscribe_since_per_server(["sport"], [("news", news)])?;
    /// # Ok::<(), coremq_client::ClientError>(())
    /// ```
    pub fn subscribe_since_per_server<I, S, P, Q, L>(
        &self,
        queues: I,
        positions: P,
    ) -> Result<BTreeMap<String, bool>, ClientError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
        P: IntoIterator<Item = (Q, L)>,
        Q: AsRef<str>,
        L: IntoIterator<Item = Position>,
    {
        let mut names = names(queues)?;
        let mut since: Vec<Since> = Vec::new();
        for (queue, list) in positions {
            let queue = queue.as_ref();
            check_queue_name(queue)?;
            if !names.iter().any(|n| n == queue) {
                names.push(queue.to_string());
            }
            // The last positions given for a queue win, as in a JSON object.
            since.retain(|(q, _)| q != queue);
            let list = resume::per_server(list);
            if !list.is_empty() {
                since.push((queue.to_string(), list));
            }
        }
        self.subscribe_resuming(names, since)
    }

    /// Subscribes to `names`, resuming the queues of `since` after their
    /// positions; returns the `recovered` answer for those.
    fn subscribe_resuming(
        &self,
        names: Vec<String>,
        since: Vec<Since>,
    ) -> Result<BTreeMap<String, bool>, ClientError> {
        if names.is_empty() {
            return Ok(BTreeMap::new());
        }
        // Remembered before sending: if the connection breaks before the reply,
        // the reconnect subscribes them anyway, from the positions given.
        let (added, replaced) = {
            let mut st = self.state();
            let new: Vec<String> = names
                .iter()
                .filter(|n| !st.subscriptions.contains(n))
                .cloned()
                .collect();
            st.subscriptions.extend(new.iter().cloned());
            let replaced: Vec<_> = since
                .iter()
                .map(|(q, p)| (q.clone(), st.positions.start_at(q, p)))
                .collect();
            (new, replaced)
        };
        let asked = since.clone();
        let result = self.request_resuming(
            move |id| subscribe_frame(id, &names, &since),
            Expect::Response(OK_SUBSCRIBE),
            &asked,
        );
        match result {
            Ok(reply) => Ok(resume::recovered(&reply, &asked)),
            Err(e) => {
                if let ClientError::Server(_) = &e {
                    let mut st = self.state();
                    st.subscriptions.retain(|s| !added.contains(s));
                    for (queue, before) in replaced {
                        st.positions.restore(&queue, before);
                    }
                }
                Err(e)
            }
        }
    }

    /// Unsubscribes from `queues` (they are no longer re-subscribed).
    pub fn unsubscribe<I, S>(&self, queues: I) -> Result<(), ClientError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let names = names(queues)?;
        if names.is_empty() {
            return Ok(());
        }
        {
            let mut st = self.state();
            st.subscriptions.retain(|s| !names.contains(s));
            st.positions.forget(&names);
        }
        let value = Value::from(names);
        self.request(
            move |id| command_frame(id, UNSUBSCRIBE, value.clone()),
            Expect::Response(OK_UNSUBSCRIBE),
        )
        .map(|_| ())
    }

    /// Queues the server has unsubscribed this client from because the user
    /// lost the right to them, oldest first. They were removed from
    /// [`subscriptions`](Self::subscriptions) and are not re-subscribed.
    pub fn revoked(&self) -> Vec<String> {
        self.state().revoked.clone()
    }

    /// Subscriptions (re-)established without the server vouching that no
    /// message was missed, oldest first: after a reconnect, each queue that
    /// the server did not resume (`recovered: false`, or no answer) or that
    /// had no position to resume from; and each `false` of
    /// [`subscribe_since`](Self::subscribe_since). A gap is recorded before
    /// any message that follows it is queued for [`recv`](Self::recv), so an
    /// application that looks here after each message it receives sees the
    /// gap no later than the first message after it.
    pub fn gaps(&self) -> Vec<Gap> {
        self.state().gaps.clone()
    }

    /// How many messages of each queue the server dropped for this client
    /// under the `drop` policy (docs/flow-control.md), in all since the
    /// client was made (the server's `WARN: Dropped N messages` notices,
    /// which are not replies to any request). A drop is counted before the
    /// queue's next message is queued for [`recv`](Self::recv), so an
    /// application that looks here after each message it receives sees it
    /// no later than the first message after it.
    pub fn dropped(&self) -> std::collections::BTreeMap<String, u64> {
        self.state().dropped.clone()
    }

    /// The position of the last message of `queue` the application received
    /// (through [`recv`](Self::recv) and its siblings), or the position
    /// given to [`subscribe_since`](Self::subscribe_since) until one arrives;
    /// `None` for a queue not subscribed or without either. Store it to
    /// resume there after a restart.
    pub fn position(&self, queue: &str) -> Option<Position> {
        self.state().positions.position(queue)
    }

    /// Per server, the newest position of `queue` the application received
    /// (or those given to [`subscribe_since_per_server`](Self::subscribe_since_per_server)
    /// until newer ones arrive), earliest first; at most
    /// [`MAX_SINCE_SERVERS`](crate::MAX_SINCE_SERVERS), the newest. Empty for
    /// a queue not subscribed or without any. Stored and passed to
    /// `subscribe_since_per_server` after a restart, it resumes without the
    /// cross-node hole that a single [`position`](Self::position) leaves in a
    /// cluster: another node's message stamped before the last one received
    /// but still on its way.
    pub fn positions(&self, queue: &str) -> Vec<Position> {
        self.state().positions.positions(queue)
    }

    /// The queues this client is subscribed to (besides its own id).
    pub fn subscriptions(&self) -> Vec<String> {
        self.state().subscriptions.clone()
    }
}
