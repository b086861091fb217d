//! The shard's side of a reload of the access rules: the new rules in force,
//! and every subscription they no longer allow withdrawn, live (§8).

use super::Shard;
use crate::conn::state::{Conn, ReplyKind};
use coremq_auth::Authority;
use coremq_protocol as proto;
use std::sync::Arc;

/// What a client whose subscriptions were withdrawn reads.
pub(crate) const REVOKED: &str = "Unsubscribed: permission revoked";

impl Shard {
    /// Puts reloaded rules in force and withdraws what they revoke.
    pub(crate) fn reload_access(&self, authority: Arc<Authority>) {
        let Some(rules) = &self.rules else {
            return;
        };
        rules.replace(authority);
        let mut withdrawn = 0usize;
        for conn in self.home.all() {
            withdrawn += self.revoke(&conn);
        }
        tracing::info!(shard = self.id, withdrawn, "access rules reloaded");
    }

    /// Withdraws the subscriptions of `conn` that its rights no longer
    /// allow (after a reload, or a token refreshed with narrower claims)
    /// and tells it which; returns how many.
    pub(crate) fn revoke(&self, conn: &Conn) -> usize {
        let Some(access) = &conn.access else {
            return 0;
        };
        let revoked = {
            let st = conn.st.borrow();
            access.revoked(&conn.id, st.subs.keys().map(|q| &**q))
        };
        if revoked.is_empty() {
            return 0;
        }
        let mut json = Vec::new();
        proto::response_json(REVOKED, &mut json);
        json.pop();
        json.extend_from_slice(b", \"queues\": [");
        for (i, q) in revoked.iter().enumerate() {
            if i > 0 {
                json.extend_from_slice(b", ");
            }
            proto::write_json_string(q, &mut json);
        }
        json.extend_from_slice(b"]}");
        let n = revoked.len();
        tracing::info!(conn_id = %conn.id, user = ?access.user(), queues = ?revoked, "subscriptions withdrawn: permission revoked");
        for q in revoked {
            self.drop_subscription(conn, q);
        }
        conn.reply(ReplyKind::Json(json));
        n
    }
}
