//! The key-value commands of a CoreMQ connection (PROTOCOL.md §13):
//! `coremq_set`, `coremq_get`, `coremq_delete`, `coremq_incr`, each
//! answered in the connection's reply order.

use super::handler::{dedup, keys_too_many};
use super::reply::ReplyKind;
use super::state::Conn;
use crate::kvop::{now_ms, Expiry, KvAnswer, KvOp, KvValue, SetCond};
use crate::refusal::Refusal;
use crate::shard::{KvPending, Shard};
use coremq_auth::Action;
use coremq_protocol::{self as proto, KvCond, KvIncr, KvSet};
use std::rc::Rc;

/// `{"response": "OK: Stored"}` and the reply to a set whose condition did
/// not hold.
pub(crate) const OK_STORED: &str = "OK: Stored";
pub(crate) const OK_NOT_STORED: &str = "OK: Not stored";
pub(crate) const OK_DELETED: &str = "OK: Deleted";

/// Refuses a request that reads the store (a get, a delete's count, an
/// increment, a conditional set) on a node whose store is not yet in sync
/// with its cluster peers since it started: its answer would be wrong, and
/// an increment or conditional set made from it would replicate
/// everywhere. (An unconditional set needs nothing the store holds.)
fn not_in_sync(shard: &Shard, conn: &Conn) -> bool {
    if shard.node().shared.kv_ready() {
        return false;
    }
    shard.refuse(conn, &Refusal::KvNotInSync);
    true
}

/// Refuses a key-value request the connection's user may not make for
/// every one of `keys` (nothing when access control is off).
fn not_allowed<'k>(
    shard: &Shard,
    conn: &Conn,
    action: Action,
    keys: impl IntoIterator<Item = &'k str>,
) -> bool {
    let Some(access) = &conn.access else {
        return false;
    };
    match access.check_kv(action, keys) {
        Ok(()) => false,
        Err(refusal) => {
            shard.refuse(conn, &refusal);
            true
        }
    }
}

pub(super) fn set(shard: &Rc<Shard>, conn: &Rc<Conn>, set: KvSet) {
    if not_allowed(shard, conn, Action::KvWrite, [set.key.as_str()])
        || (set.cond != KvCond::Always && not_in_sync(shard, conn))
    {
        return;
    }
    let text = set.value.get().as_bytes();
    let max = shard.cfg().kv.max_value;
    let too_large = |len| Refusal::KvValueTooLarge { len, max };
    // The escaped form is never shorter: a text already over is refused
    // before it is copied.
    if text.len() > max {
        return shard.refuse(conn, &too_large(text.len()));
    }
    // Stored ASCII-only, as every frame CoreMQ sends (original clients
    // count characters where the header counts bytes).
    let mut ascii = Vec::with_capacity(text.len());
    proto::escape_non_ascii(text, &mut ascii);
    // kv_max_value bounds the stored form (`\uXXXX` for each non-ASCII
    // character makes it up to 3× the text): checked on the text alone, a
    // value could pass, be answered OK: Stored and be dropped at once by a
    // store that cannot hold it, with the rest of its shard.
    if ascii.len() > max {
        return shard.refuse(conn, &too_large(ascii.len()));
    }
    let op = KvOp::Set {
        key: set.key.into(),
        value: KvValue::json(&ascii),
        expiry: set
            .ttl
            .map_or(Expiry::Never, |ttl| Expiry::after(now_ms(), ttl)),
        cond: match set.cond {
            KvCond::Always => SetCond::Always,
            KvCond::Absent => SetCond::Absent,
            KvCond::Present => SetCond::Present,
        },
    };
    run(shard, conn, op, None);
}

pub(super) fn get(shard: &Rc<Shard>, conn: &Rc<Conn>, keys: Vec<String>) {
    if keys_too_many(shard, conn, &keys)
        || not_allowed(shard, conn, Action::KvRead, keys.iter().map(String::as_str))
        || not_in_sync(shard, conn)
    {
        return;
    }
    run(shard, conn, KvOp::Get { keys: dedup(keys) }, None);
}

pub(super) fn delete(shard: &Rc<Shard>, conn: &Rc<Conn>, keys: Vec<String>) {
    if keys_too_many(shard, conn, &keys)
        || not_allowed(
            shard,
            conn,
            Action::KvWrite,
            keys.iter().map(String::as_str),
        )
        || not_in_sync(shard, conn)
    {
        return;
    }
    run(shard, conn, KvOp::Delete { keys: dedup(keys) }, None);
}

pub(super) fn incr(shard: &Rc<Shard>, conn: &Rc<Conn>, incr: KvIncr) {
    // The reply is the key's new value: reading it takes kv_read as well
    // (with kv_write alone, `"by": 0` would read any number).
    if not_allowed(shard, conn, Action::KvWrite, [incr.key.as_str()])
        || not_allowed(shard, conn, Action::KvRead, [incr.key.as_str()])
        || not_in_sync(shard, conn)
    {
        return;
    }
    let key: Box<str> = incr.key.into();
    let op = KvOp::Incr {
        key: key.clone(),
        by: incr.by,
    };
    run(shard, conn, op, Some(key));
}

/// Starts `op` and answers it in the connection's reply order: at once when
/// this shard owns its keys, else when the owners answered.
fn run(shard: &Rc<Shard>, conn: &Rc<Conn>, op: KvOp, key: Option<Box<str>>) {
    let keys: Vec<Box<str>> = match &op {
        KvOp::Get { keys } => keys.clone(),
        _ => Vec::new(),
    };
    match shard.kv_start(op) {
        KvPending::Ready(answer) => {
            let kind = reply(shard, conn, &keys, key.as_deref(), answer);
            conn.reply(kind);
        }
        pending => {
            let seq = conn.reserve(ReplyKind::Json(Vec::new()), 1);
            let (shard, conn) = (shard.clone(), conn.clone());
            glommio::spawn_local(async move {
                let answer = shard.kv_finish(pending).await;
                let kind = reply(&shard, &conn, &keys, key.as_deref(), answer);
                conn.complete(seq, |k| *k = kind);
            })
            .detach();
        }
    }
}

/// The reply to an answer (§13's exact shapes); an incr that cannot be
/// done is an `ERROR:` through the one error map.
fn reply(
    shard: &Shard,
    conn: &Conn,
    keys: &[Box<str>],
    key: Option<&str>,
    a: KvAnswer,
) -> ReplyKind {
    let mut json = Vec::with_capacity(64);
    let refused = |r: Refusal| {
        shard.refused(&r, conn.transport());
        ReplyKind::Json(r.json(conn.transport()))
    };
    match a {
        KvAnswer::Stored(true) => proto::response_json(OK_STORED, &mut json),
        KvAnswer::Stored(false) => proto::response_json(OK_NOT_STORED, &mut json),
        KvAnswer::Deleted(n) => {
            proto::response_json(OK_DELETED, &mut json);
            json.pop();
            json.extend_from_slice(format!(", \"deleted\": {n}}}").as_bytes());
        }
        KvAnswer::Number(n) => json.extend_from_slice(format!("{{\"value\": {n}}}").as_bytes()),
        KvAnswer::Values(values) => {
            json.extend_from_slice(b"{\"values\": {");
            let mut first = true;
            for (k, v) in keys.iter().zip(values) {
                let Some((v, _)) = v else { continue };
                if !first {
                    json.extend_from_slice(b", ");
                }
                first = false;
                proto::write_json_string(k, &mut json);
                json.extend_from_slice(b": ");
                v.write_json(&mut json);
                if json.len() > conn.max_reply() {
                    // Built no further than one value past the limit.
                    return refused(Refusal::ReplyTooLarge {
                        command: "coremq_get",
                        fewer: "keys",
                        max: conn.max_reply(),
                    });
                }
            }
            json.extend_from_slice(b"}}");
        }
        KvAnswer::NotANumber => {
            return refused(Refusal::KvNotANumber(key.unwrap_or_default().into()));
        }
        KvAnswer::Overflow => return refused(Refusal::KvOverflow(key.unwrap_or_default().into())),
        // Not answers to CoreMQ's commands.
        KvAnswer::McNumber(_) | KvAnswer::NotFound | KvAnswer::Touched | KvAnswer::Flushed => {
            proto::response_json(OK_STORED, &mut json)
        }
    }
    ReplyKind::Json(json)
}
