//! What a connection's frames mean: one function per command, all answering
//! through the connection's ordered replies.
//!
//! Errors inside a well-framed body are [`Refusal`]s: an `ERROR:` reply, and
//! the connection stays open.

use super::state::{Conn, ReplyKind, SubState, Waiting};
use crate::consts::{is_conn_id, name_limit};
use crate::link_auth;
use crate::msg::{MsgKey, Request, Since, Subscription};
use crate::refusal::Refusal;
use crate::shard::Shard;
use crate::sources::Source;
use coremq_auth::Action;
use coremq_protocol::{self as proto, ClientMessage, OptionValue, Position};
use std::rc::Rc;

/// Handles one frame body from `conn`.
pub(crate) fn handle_body(shard: &Rc<Shard>, conn: &Rc<Conn>, body: &[u8]) {
    let max_q = shard.cfg().max_queue_name_length;
    // The frame's QUEUE of a command is ignored (clients send commands on
    // their 36-byte connection id), so the configured limit applies to it only
    // when the frame is a publish, and not to a publish to a connection id. The parsed publish is used where it lies
    // (moving it out of the `Result` cost a measurable copy per message).
    let fail = |e: proto::BodyError| {
        tracing::debug!(cause = %e, "bad frame body");
        shard.refuse(conn, &Refusal::Body(e));
    };
    let (queue, json) = match proto::split_body(body, proto::MAX_QUEUE_NAME_LEN) {
        Ok(x) => x,
        Err(e) => return fail(e),
    };
    match proto::parse_message_limited(json, max_q, shard.cfg().max_json_depth) {
        Ok(ClientMessage::Publish(ref p)) => {
            if queue.len() > name_limit(queue, max_q) {
                return fail(proto::BodyError::QueueNameTooLong {
                    len: queue.len(),
                    max: max_q,
                });
            }
            shard.publish(conn, queue, p)
        }
        Ok(command) => dispatch(shard, conn, queue, command),
        Err(e) => fail(e),
    }
}

/// Carries out one parsed message (TCP and WebSocket share this).
pub(crate) fn dispatch(shard: &Rc<Shard>, conn: &Rc<Conn>, queue: &str, msg: ClientMessage<'_>) {
    match msg {
        // By reference: moving the publish out of `msg` copied it once more.
        ClientMessage::Publish(ref p) => shard.publish(conn, queue, p),
        ClientMessage::Subscribe(names) => subscribe(shard, conn, names, Vec::new()),
        ClientMessage::Resume(names, since) => {
            // Carried out by the parser before the next frame (Conn::gate):
            // at once, or once this node has its cluster peers' history.
            wait(conn, Waiting::Resume(names, since));
        }
        ClientMessage::Unsubscribe(names) => unsubscribe(shard, conn, names),
        ClientMessage::Options(opts) => options(conn, opts),
        // On a node that has just started, once it has its cluster peers'
        // history (G3 for what they took while it was down).
        ClientMessage::GetHistory(names) if !conn.in_sync() => {
            wait(conn, Waiting::History(names));
        }
        ClientMessage::GetHistory(names) => history(shard, conn, names),
        ClientMessage::Status => status(shard, conn),
        ClientMessage::Replicant(req) => replicant(shard, conn, req),
        ClientMessage::Auth(req) => super::auth::authenticate(shard, conn, req),
        ClientMessage::KvSet(set) => super::kv::set(shard, conn, set),
        ClientMessage::KvGet(keys) => super::kv::get(shard, conn, keys),
        ClientMessage::KvDelete(keys) => super::kv::delete(shard, conn, keys),
        ClientMessage::KvIncr(incr) => super::kv::incr(shard, conn, incr),
    }
}

/// Subscribes `conn` to `queue` on its owner; `seq` is the reply waiting for it.
pub(crate) fn subscribe_one(
    shard: &Shard,
    conn: &Conn,
    queue: Box<str>,
    seq: Option<u32>,
    own_id: bool,
    since: Option<Box<Since>>,
) {
    conn.st
        .borrow_mut()
        .subs
        .insert(queue.clone(), SubState::Pending);
    let owner = shard.owner_of(&queue);
    shard.request(
        owner,
        Request::Subscribe(Subscription {
            queue,
            conn: conn.key,
            seq,
            own_id,
            since,
        }),
    );
}

/// Refuses a list of more than `max_list_length` names (before any work
/// that grows with it).
pub(super) fn list_too_long(shard: &Shard, conn: &Conn, names: &[String]) -> bool {
    too_many(shard, conn, names, "queues")
}

/// The same for a list of keys (`coremq_get`, `coremq_delete`).
pub(super) fn keys_too_many(shard: &Shard, conn: &Conn, keys: &[String]) -> bool {
    too_many(shard, conn, keys, "keys")
}

fn too_many(shard: &Shard, conn: &Conn, names: &[String], what: &'static str) -> bool {
    let max = shard.cfg().max_list_length;
    if names.len() <= max {
        return false;
    }
    shard.refuse(conn, &Refusal::TooManyQueues { max, what });
    true
}

/// Refuses a request the connection's user may not make for every one of
/// `names` (§8; nothing when access control is off).
fn not_allowed(shard: &Shard, conn: &Conn, action: Action, names: &[String]) -> bool {
    let Some(access) = &conn.access else {
        return false;
    };
    match access.check_all(action, &conn.id, names.iter().map(String::as_str)) {
        Ok(()) => false,
        Err(refusal) => {
            shard.refuse(conn, &refusal);
            true
        }
    }
}

/// Refuses a request naming another connection's id queue (private, §2).
fn names_private(shard: &Shard, conn: &Conn, action: &'static str, names: &[String]) -> bool {
    let Some(queue) = names.iter().find(|q| is_conn_id(q) && **q != *conn.id) else {
        return false;
    };
    tracing::debug!(action, queue, "refused: another connection's id queue");
    let queue = queue.as_str().into();
    shard.refuse(conn, &Refusal::PermissionDenied { action, queue });
    true
}

/// Leaves `request` for the parser to carry out before the next frame
/// ([`Conn::gate`]).
fn wait(conn: &Conn, request: Waiting) {
    let mut st = conn.st.borrow_mut();
    debug_assert!(st.waiting.is_none(), "parsing waits behind one");
    st.waiting = Some(Box::new(request));
}

/// Carries out the connection's waiting request, once [`Conn::gate`] says
/// it may go on (before the frames that came after it).
pub(crate) fn run_waiting(shard: &Shard, conn: &Conn) {
    let waiting = conn.st.borrow_mut().waiting.take();
    match waiting.map(|w| *w) {
        Some(Waiting::Resume(names, since)) => subscribe(shard, conn, names, since),
        Some(Waiting::History(names)) => history(shard, conn, names),
        None => {}
    }
}

fn subscribe(shard: &Shard, conn: &Conn, names: Vec<String>, since: Vec<(String, Vec<Position>)>) {
    // A resume replays retained messages: for those queues it is a history
    // read too, and needs that right as well (§8).
    let resumed: Vec<String> = since.iter().map(|(q, _)| q.clone()).collect();
    if list_too_long(shard, conn, &names)
        || names_private(shard, conn, "subscribe", &names)
        || not_allowed(shard, conn, Action::Subscribe, &names)
        || not_allowed(shard, conn, Action::History, &resumed)
    {
        return;
    }
    let mut names = dedup(names);
    names.retain(|q| !conn.st.borrow().subs.contains_key(&**q));
    // The connection's own id is a subscription too, but not the client's
    // (whether it holds it now or takes it back after an unsubscribe).
    let own = |q: &str| q == &*conn.id;
    let held = {
        let st = conn.st.borrow();
        st.subs.len() - usize::from(st.subs.contains_key(&*conn.id))
    };
    let adding = names.iter().filter(|q| !own(q)).count();
    let max = shard.cfg().max_subscriptions;
    if held + adding > max {
        // Refused whole: nothing of it takes effect.
        return shard.refuse(conn, &Refusal::TooManySubscriptions { max });
    }
    // The reply waits for every owner to register its part (G2); a resume's
    // also carries what each owner retained after the position (§10).
    let kind = if since.is_empty() {
        ReplyKind::Subscribed(names.clone())
    } else {
        ReplyKind::Resumed {
            recovered: Vec::new(),
            replay: Vec::new(),
        }
    };
    let seq = conn.reserve(kind, names.len() as u32);
    for q in names {
        // `since` is in queue-name order (binary search: no cost that grows
        // with the product of the two lists).
        let found = since.binary_search_by(|(s, _)| s.as_str().cmp(&q));
        let resume = found.ok().map(|i| &since[i].1).map(|ps| {
            let keys = ps
                .iter()
                .map(|p| MsgKey {
                    sent_us: p.sent_us,
                    origin: crate::msg::origin_of(&p.server),
                })
                .collect();
            Box::new(Since::new(keys))
        });
        subscribe_one(shard, conn, q, Some(seq), false, resume);
    }
}

fn unsubscribe(shard: &Shard, conn: &Conn, names: Vec<String>) {
    if list_too_long(shard, conn, &names) {
        return;
    }
    for q in dedup(names) {
        shard.drop_subscription(conn, q);
    }
    conn.reply(ReplyKind::Text(proto::OK_UNSUBSCRIBE));
}

fn options(conn: &Conn, opts: Vec<(String, OptionValue)>) {
    {
        let mut st = conn.st.borrow_mut();
        for (name, value) in opts {
            match value {
                OptionValue::Ack(on) => st.opts.no_ack = !on,
                OptionValue::Echo(on) => st.opts.echo = on,
                OptionValue::Seq(on) => st.opts.seq = on,
                OptionValue::Remove => match name.as_str() {
                    "ack" => st.opts.no_ack = false,
                    "echo" => st.opts.echo = false,
                    "seq" => st.opts.seq = false,
                    _ => {}
                },
                // Accepted, as the original did, but not kept: nothing
                // reads them, and kept they grew without bound (a client
                // could send any number of new names).
                OptionValue::Other(_) => {}
            }
        }
    }
    conn.reply(ReplyKind::Text(proto::OK_OPTIONS));
}

fn history(shard: &Shard, conn: &Conn, names: Vec<String>) {
    if list_too_long(shard, conn, &names)
        || names_private(shard, conn, "history", &names)
        || not_allowed(shard, conn, Action::History, &names)
    {
        return;
    }
    let names = dedup(names);
    // Group the requested queues by owner so each owner gets one request.
    let mut groups: Vec<(usize, HistoryPart)> = Vec::new();
    for (i, q) in names.iter().enumerate() {
        let owner = shard.owner_of(q);
        let item = (i as u16, q.clone());
        match groups.iter_mut().find(|(o, _)| *o == owner) {
            Some((_, v)) => v.push(item),
            None => groups.push((owner, vec![item])),
        }
    }
    let parts = vec![Vec::new(); names.len()];
    let seq = conn.reserve(ReplyKind::History { names, parts }, groups.len() as u32);
    for (owner, queues) in groups {
        shard.request(
            owner,
            Request::History {
                queues,
                conn: conn.key,
                seq,
            },
        );
    }
}

/// Refuses `coremq_status` (and `corews_status`) to a user without
/// `monitor` (§8).
pub(crate) fn may_monitor(shard: &Shard, conn: &Conn) -> bool {
    match conn.access.as_ref().map(|a| a.check_monitor()) {
        Some(Err(refusal)) => {
            shard.refuse(conn, &refusal);
            false
        }
        _ => true,
    }
}

fn status(shard: &Rc<Shard>, conn: &Rc<Conn>) {
    if !may_monitor(shard, conn) {
        return;
    }
    // The reply keeps its place in the reply order while every shard answers.
    let seq = conn.reserve(ReplyKind::Status(Vec::new()), 1);
    let (shard, conn) = (shard.clone(), conn.clone());
    glommio::spawn_local(async move {
        let stats = shard.gather_stats().await;
        conn.complete(seq, |kind| *kind = ReplyKind::Status(stats));
    })
    .detach();
}

fn replicant(shard: &Shard, conn: &Conn, req: proto::ReplicantRequest) {
    let cfg = shard.cfg();
    let host = req
        .name
        .rsplit_once(':')
        .map(|(h, _)| h)
        .unwrap_or(&req.name);
    let listed = cfg
        .cluster_nodes
        .iter()
        .chain(cfg.allowed_replicants.iter())
        .any(|n| *n == req.name || n.rsplit_once(':').map(|(h, _)| h).unwrap_or(n) == host);
    // Whatever was pending is answered by this request or dropped.
    let pending = conn.st.borrow_mut().challenge.take();
    let refuse = |why: &str| {
        // The name is a claim, never a secret; proofs and nonces are not logged.
        // (It is printable ASCII — the parser refuses anything else — and
        // shown quoted besides.)
        tracing::warn!(name = ?req.name, why, "replicant refused");
        shard.refuse(conn, &Refusal::NotReplicant);
    };
    if !listed {
        return refuse("not in cluster_nodes or allowed_replicants");
    }
    // A node never dials itself: a claim of our own entry is someone
    // wanting us to answer our own challenge.
    let me = shard.node().shared.self_entry.as_str();
    if req.name == me {
        return refuse("claims this node's own entry");
    }
    if cfg.tls.cluster {
        // cluster_tls: only over TLS, with a certificate from
        // tls_client_ca_file (verified in the handshake) that names the
        // host the peer claims to be.
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        let names = conn.st.borrow().tls_names.clone();
        match names {
            None => return refuse("cluster_tls: not over TLS with a verified certificate"),
            Some(names) if !names.iter().any(|n| n.eq_ignore_ascii_case(bare)) => {
                return refuse(
                    "cluster_tls: the certificate does not name this host \
                     (a DNS or IP subject alternative name of a server certificate)",
                )
            }
            Some(_) => {}
        }
    }
    if cfg.cluster_secret.is_none() && !cfg.tls.cluster {
        // Nothing proves who dials: the connection must come from the
        // claimed name's host, as §6's lists are of hosts (sources.rs).
        let from = conn.st.borrow().source;
        let Some(from) = from else {
            return refuse("its source address is unknown");
        };
        match shard.sources().check(host, from) {
            Source::Matches => {}
            Source::Resolving => {
                return refuse(&format!(
                    "connects from {from}; {host} is being resolved, try again"
                ))
            }
            Source::Differs(ips) if ips.is_empty() => {
                return refuse(&format!(
                    "connects from {from}; {host} resolves to no address"
                ))
            }
            Source::Differs(ips) => {
                return refuse(&format!(
                    "connects from {from}, not from {host} ({ips:?}); \
                     set cluster_secret for peers behind NAT or with several addresses"
                ))
            }
        }
    }
    if let Some(secret) = &cfg.cluster_secret {
        if let Some(proof) = &req.proof {
            let proven = pending.filter(|p| {
                p.name == req.name
                    && link_auth::dial_proof_ok(
                        secret,
                        link_auth::Ends {
                            dialer: &p.name,
                            acceptor: me,
                        },
                        &p.accept_nonce,
                        &p.dial_nonce,
                        proof,
                    )
            });
            let Some(p) = proven else {
                return refuse("wrong proof of cluster_secret");
            };
            let ends = link_auth::Ends {
                dialer: &p.name,
                acceptor: me,
            };
            // Only now, to a dialer that proved the secret, our proof (for
            // the dialer to check before it uses the link).
            let ours = link_auth::accept_proof(secret, ends, &p.dial_nonce, &p.accept_nonce);
            return accept_replicant(conn, req.name, req.seq, Some(&ours));
        } else {
            let Some(dial_nonce) = req
                .nonce
                .filter(|n| !n.is_empty() && n.len() <= link_auth::MAX_NONCE)
            else {
                return refuse("no challenge-response (cluster_secret is set)");
            };
            let accept_nonce = link_auth::nonce();
            // No proof of ours yet: given before the dialer proved the
            // secret, it let anyone who reaches this port test guesses of
            // the secret offline.
            let mut json = Vec::new();
            proto::response_json(link_auth::CHALLENGE, &mut json);
            json.pop();
            json.extend_from_slice(b", \"name\": ");
            proto::write_json_string(me, &mut json);
            json.extend_from_slice(b", \"nonce\": ");
            proto::write_json_string(&accept_nonce, &mut json);
            json.push(b'}');
            conn.st.borrow_mut().challenge = Some(Box::new(link_auth::Pending {
                name: req.name,
                dial_nonce,
                accept_nonce,
            }));
            return conn.reply(ReplyKind::Json(json));
        }
    }
    accept_replicant(conn, req.name, req.seq, None);
}

/// Accepts replicant `name`: the OK (with this node's `proof` of
/// `cluster_secret`, when set), then the socket goes to the control shard.
fn accept_replicant(conn: &Conn, name: String, seq: bool, proof: Option<&str>) {
    tracing::info!(name = ?name, "replicant accepted; handing the connection to the control shard");
    conn.st.borrow_mut().handover = Some((name, seq));
    // `"seq": true`: this node reads coremq_seq on the link's frames (§10),
    // so the dialer may send it; a dialer that asked for it gets it too.
    let mut json = Vec::new();
    proto::response_json(proto::OK_REPLICANT, &mut json);
    json.pop();
    json.extend_from_slice(b", \"seq\": true");
    if let Some(proof) = proof {
        json.extend_from_slice(b", \"proof\": ");
        proto::write_json_string(proof, &mut json);
    }
    json.push(b'}');
    conn.reply(ReplyKind::Json(json));
}

/// (index in the request, queue name) of the queues one owner is asked for.
type HistoryPart = Vec<(u16, Box<str>)>;

/// Removes duplicates, keeping the first occurrence's position; linear in
/// the number of names (a client controls the list).
pub(super) fn dedup(names: Vec<String>) -> Vec<Box<str>> {
    let mut seen: ahash::HashSet<&str> = ahash::HashSet::default();
    seen.reserve(names.len());
    let keep: Vec<bool> = names.iter().map(|n| seen.insert(n.as_str())).collect();
    drop(seen);
    names
        .into_iter()
        .zip(keep)
        .filter_map(|(n, keep)| keep.then(|| n.into_boxed_str()))
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn dedup_keeps_first_occurrences_in_order() {
        let names = ["b", "a", "b", "c", "a"].map(String::from).to_vec();
        let out = super::dedup(names);
        assert_eq!(out, ["b", "a", "c"].map(Box::<str>::from).to_vec());
        assert!(super::dedup(Vec::new()).is_empty());
    }
}
