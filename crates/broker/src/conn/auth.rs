//! `coremq_auth` and the two clocks of access control (PROTOCOL.md §8).
//!
//! A password is checked with Argon2id, which takes tens of milliseconds by
//! design: that runs on the shard's blocking pool, never on the shard, so the
//! shard's other connections do not wait for it, and in turn by source
//! address (logins.rs), so one client's burst of wrong passwords does not
//! hold everyone else's logins up; a pair checked before is
//! answered from the authority's cache at once. Meanwhile nothing more of
//! this connection is read, so the requests it pipelined behind its
//! `coremq_auth` are judged with the rights the answer gives. Tokens are
//! checked in place (a signature check costs microseconds).
//!
//! The clocks: a connection that can do nothing without authenticating is
//! closed after `auth_timeout` unless it authenticates (credentials it sent
//! in time are checked first, however long that waits), and one that
//! authenticated with a token is closed when the token expires, unless a new
//! `coremq_auth` for the same user moved the expiry.

use super::state::{Conn, ReplyKind};
use crate::logins::Checked;
use crate::refusal::Refusal;
use crate::shard::Shard;
use crate::stats::Counters;
use coremq_auth::{AuthError, Identity};
use coremq_protocol::{self as proto, AuthRequest};
use futures_lite::future;
use glommio::timer::sleep;
use std::future::poll_fn;
use std::rc::{Rc, Weak};
use std::task::Poll;
use std::time::SystemTime;

/// What a client reads when it authenticated.
const OK_AUTHENTICATED: &str = "OK: Authenticated";

/// How often the `auth_timeout` clock looks again at a connection whose
/// password is being checked when it runs out.
const VERIFYING_POLL: std::time::Duration = std::time::Duration::from_millis(20);

/// Starts the clocks for a new connection: without anonymous rights it has
/// `auth_timeout` to authenticate.
pub(crate) fn on_open(shard: &Rc<Shard>, conn: &Rc<Conn>) {
    let Some(access) = &conn.access else {
        return;
    };
    if access.anonymous_grants_nothing() {
        start_auth_clock(shard, conn);
    }
}

/// After a reload of the access rules: a connection left without any right
/// (`[anonymous]` emptied, and it never authenticated) gets `auth_timeout`
/// from now to authenticate, as a new one has from its opening.
pub(crate) fn on_reload(shard: &Rc<Shard>) {
    for conn in shard.all_conns() {
        if conn
            .access
            .as_ref()
            .is_some_and(|a| a.anonymous_grants_nothing())
        {
            start_auth_clock(shard, &conn);
        }
    }
}

/// Gives a connection that cannot do anything without authenticating
/// `auth_timeout` to do so (from its opening, or from the reload that took
/// `[anonymous]`'s rights away), unless a clock runs for it already.
pub(crate) fn start_auth_clock(shard: &Rc<Shard>, conn: &Rc<Conn>) {
    let Some(access) = &conn.access else {
        return;
    };
    if !access.start_auth_clock() {
        return;
    }
    let timeout = shard.cfg().auth_timeout;
    let weak = Rc::downgrade(conn);
    let shard = shard.clone();
    glommio::spawn_local(async move {
        sleep(timeout).await;
        // Credentials sent in time are checked, however long other logins
        // keep the check waiting (logins.rs: in turn by source address).
        while weak.upgrade().is_some_and(|c| super::task::verifying(&c)) {
            sleep(VERIFYING_POLL).await;
        }
        let Some(conn) = weak.upgrade() else {
            return;
        };
        let Some(access) = &conn.access else {
            return;
        };
        // A reload meanwhile may have given `[anonymous]` rights again.
        if !access.anonymous_grants_nothing() || conn.st.borrow().ending.is_some() {
            access.end_auth_clock();
            return;
        }
        tracing::info!(conn_id = %conn.id, "closed: no authentication within auth_timeout");
        shard.refuse(&conn, &Refusal::AuthTimeout);
    })
    .detach();
}

/// Handles a `coremq_auth` request.
pub(crate) fn authenticate(shard: &Rc<Shard>, conn: &Rc<Conn>, req: AuthRequest) {
    let Some(access) = &conn.access else {
        return shard.refuse(conn, &Refusal::AuthNotEnabled);
    };
    let authority = access.rules().authority();
    match req {
        AuthRequest::Token { user, token } => match authority.verify_token(token.expose()) {
            Ok(who) if user.as_deref().is_some_and(|named| named != &*who.user) => {
                tracing::warn!(conn_id = %conn.id, named = ?user, "authentication failed: the token is another user's");
                shard.refuse(conn, &Refusal::AuthFailed);
            }
            result => conclude(shard, conn, result),
        },
        AuthRequest::Password { user, password } => {
            if let Some(who) = authority.password_cached(&user, password.expose()) {
                return conclude(shard, conn, Ok(who));
            }
            access.set_verifying(true);
            let (shard, conn) = (shard.clone(), conn.clone());
            let source = conn.st.borrow().source;
            glommio::spawn_local(async move {
                let check = move || authority.verify_password(&user, password.expose());
                // Not checked for a connection gone by its turn.
                let open = || shard.is_open(&conn);
                let checked = crate::logins::check(source, open, check).await;
                if let Some(access) = &conn.access {
                    access.set_verifying(false);
                }
                let result = match checked {
                    Checked::Done(result) => result,
                    Checked::Busy => Err(AuthError::TooManyWaiting),
                    Checked::Gone => return,
                };
                conclude(&shard, &conn, result);
                // Reading and parsing resume.
                conn.wake();
            })
            .detach();
        }
    }
}

/// Applies the outcome of a check: the user's rights and the OK, or the
/// failure and the end of the connection.
fn conclude(shard: &Rc<Shard>, conn: &Rc<Conn>, result: Result<Identity, AuthError>) {
    let Some(access) = &conn.access else {
        return;
    };
    let who = match result {
        Ok(who) => who,
        Err(cause) => {
            // The cause is for the operator; the client only learns that it
            // failed. Neither ever sees the password or token.
            tracing::warn!(conn_id = %conn.id, %cause, "authentication failed");
            return shard.refuse(conn, &Refusal::AuthFailed);
        }
    };
    let user = who.user.clone();
    let token = who.expires.is_some();
    if access.become_user(who).is_err() {
        tracing::warn!(conn_id = %conn.id, user = %user, was = ?access.user(), "authentication failed: a connection cannot change user");
        return shard.refuse(conn, &Refusal::AuthFailed);
    }
    tracing::debug!(conn_id = %conn.id, user = %user, token, "authenticated");
    Counters::add(&shard.counters().logins, 1);
    let mut json = Vec::new();
    proto::response_json(OK_AUTHENTICATED, &mut json);
    json.pop();
    json.extend_from_slice(b", \"user\": ");
    proto::write_json_string(&user, &mut json);
    json.push(b'}');
    conn.reply(ReplyKind::Json(json));
    // A refreshed token may carry narrower claims than the one it replaces.
    shard.revoke(conn);
    if access.expiry_changed() {
        watch_expiry(Rc::downgrade(conn));
    }
}

/// Makes a new connection act as `who`, proven before it opened (a
/// WebSocket handshake's credentials).
pub(crate) fn adopt(shard: &Shard, conn: &Rc<Conn>, who: Identity) {
    let Some(access) = &conn.access else {
        return;
    };
    Counters::add(&shard.counters().logins, 1);
    if access.become_user(who).is_ok() && access.expiry_changed() {
        watch_expiry(Rc::downgrade(conn));
    }
}

/// Closes the connection when its token runs out. A later login wakes it
/// at once: a refreshed token moves the deadline (earlier too — a token
/// with other claims that expires sooner ends the connection when it does),
/// a password login (same user) ends the watch, and a token after that
/// starts a new one.
fn watch_expiry(weak: Weak<Conn>) {
    glommio::spawn_local(async move {
        loop {
            let Some(conn) = weak.upgrade() else {
                return;
            };
            let Some(access) = &conn.access else {
                return;
            };
            let Some(expires) = access.token_expiry() else {
                access.end_expiry_watch();
                return;
            };
            match expires.duration_since(SystemTime::now()) {
                Ok(left) if !left.is_zero() => {
                    drop(conn);
                    let w = weak.clone();
                    let moved = poll_fn(move |cx| match w.upgrade() {
                        Some(c)
                            if !c
                                .access
                                .as_ref()
                                .is_some_and(|a| a.expiry_moved(cx.waker())) =>
                        {
                            Poll::Pending
                        }
                        _ => Poll::Ready(()),
                    });
                    future::or(sleep(left), moved).await;
                }
                _ => {
                    tracing::info!(conn_id = %conn.id, "closed: token expired");
                    conn.refuse(&Refusal::TokenExpired);
                    return;
                }
            }
        }
    })
    .detach();
}
