//! Access control where requests are parsed (PROTOCOL.md §8; DESIGN.md: the
//! home shard checks, once per connection and queue, and the owner never
//! re-checks).
//!
//! [`Rules`] is a shard's view of the node's [`Authority`] (replaced whole on
//! a reload); [`Access`] is one connection's standing: who it acts as, the
//! rights that gives it, and the verdict for the queue it last published to,
//! so that a publisher pipelining to one queue pays one string comparison per
//! message. A node without `users_file` has no `Rules` and its connections no
//! `Access`: nothing here runs.

use crate::consts::{is_conn_id, is_reserved, KV_WATCH_PREFIX};
use crate::refusal::Refusal;
use coremq_auth::{Action, Authority, Identity, Perms};
use std::cell::{Cell, Ref, RefCell};
use std::rc::Rc;
use std::sync::Arc;
use std::task::Waker;
use std::time::SystemTime;

/// A shard's current access rules.
pub(crate) struct Rules {
    /// The users file and token keys as last (re)loaded.
    authority: RefCell<Arc<Authority>>,
    /// Bumped on every reload, so each connection re-derives its rights
    /// (lazily, at its next request) instead of the reload walking them all.
    generation: Cell<u64>,
}

impl Rules {
    /// Rules from a loaded authority.
    pub(crate) fn new(authority: Arc<Authority>) -> Rules {
        Rules {
            authority: RefCell::new(authority),
            generation: Cell::new(0),
        }
    }

    /// The authority in force (cloned out: checking a password or token must
    /// not hold a borrow).
    pub(crate) fn authority(&self) -> Arc<Authority> {
        self.authority.borrow().clone()
    }

    /// Puts a reloaded authority in force.
    pub(crate) fn replace(&self, authority: Arc<Authority>) {
        *self.authority.borrow_mut() = authority;
        self.generation.set(self.generation.get() + 1);
    }
}

/// One connection's standing.
pub(crate) struct Access {
    rules: Rc<Rules>,
    /// Who the connection acts as; `None` until a `coremq_auth` succeeds.
    who: RefCell<Option<Identity>>,
    /// What `who` (or `[anonymous]`) may do, as of `generation`.
    perms: RefCell<Arc<Perms>>,
    /// The [`Rules`] generation `perms` was derived under.
    generation: Cell<u64>,
    /// The queue last published to, whether that was allowed, and whether
    /// it is a connection id (`direct`).
    last_publish: RefCell<Option<(Box<str>, bool, bool)>>,
    /// A password is being checked off the shard: nothing more of this
    /// connection is read until the answer, so its next requests are judged
    /// with the rights the answer gives.
    verifying: Cell<bool>,
    /// A task watches the token's expiry ([`crate::conn::auth`]).
    watching_expiry: Cell<bool>,
    /// A later login moved the expiry (or ended it) since the watch last
    /// looked, and the watch to wake for it.
    expiry_moved: Cell<bool>,
    expiry_waker: RefCell<Option<Waker>>,
    /// A task counts `auth_timeout` for this connection.
    auth_clock: Cell<bool>,
}

impl Access {
    /// A connection that has not authenticated: `[anonymous]`'s rights.
    pub(crate) fn new(rules: Rc<Rules>) -> Access {
        let perms = rules.authority.borrow().anonymous();
        let generation = rules.generation.get();
        Access {
            rules,
            who: RefCell::new(None),
            perms: RefCell::new(perms),
            generation: Cell::new(generation),
            last_publish: RefCell::new(None),
            verifying: Cell::new(false),
            watching_expiry: Cell::new(false),
            expiry_moved: Cell::new(false),
            expiry_waker: RefCell::new(None),
            auth_clock: Cell::new(false),
        }
    }

    /// The shard's rules.
    pub(crate) fn rules(&self) -> &Rc<Rules> {
        &self.rules
    }

    /// The connection's rights, re-derived first if the rules were reloaded.
    /// Inlined: it runs on every publish (perf showed it as a call of its
    /// own, half of the access checks' ~1 %).
    #[inline]
    fn perms(&self) -> Ref<'_, Arc<Perms>> {
        let generation = self.rules.generation.get();
        if self.generation.get() != generation {
            let authority = self.rules.authority.borrow();
            let fresh = match &*self.who.borrow() {
                Some(who) => authority.perms(who),
                None => authority.anonymous(),
            };
            *self.perms.borrow_mut() = fresh;
            self.generation.set(generation);
            *self.last_publish.borrow_mut() = None;
        }
        self.perms.borrow()
    }

    /// The refusal for `action` on `queue`: before authentication it is the
    /// lack of it that the client must fix.
    fn refusal(&self, action: &'static str, queue: &str) -> Refusal {
        if self.who.borrow().is_none() {
            Refusal::AuthRequired
        } else {
            Refusal::PermissionDenied {
                action,
                queue: queue.into(),
            }
        }
    }

    /// Whether the connection may publish to `queue` (a connection id needs
    /// `direct`). A publisher pipelining to one queue pays one comparison.
    pub(crate) fn check_publish(&self, queue: &str) -> Result<(), Refusal> {
        let perms = self.perms();
        let cached = match &*self.last_publish.borrow() {
            Some((q, ok, direct)) if **q == *queue => Some((*ok, *direct)),
            _ => None,
        };
        let (ok, direct) = cached.unwrap_or_else(|| {
            let direct = is_conn_id(queue);
            let ok = if direct {
                perms.direct()
            } else {
                perms.allows(Action::Publish, queue)
            };
            *self.last_publish.borrow_mut() = Some((queue.into(), ok, direct));
            (ok, direct)
        });
        drop(perms);
        if ok {
            Ok(())
        } else {
            Err(self.refusal(if direct { "direct" } else { "publish" }, queue))
        }
    }

    /// Whether the connection may do `action` on every one of `queues`
    /// (`own` is its own id, which it may always use); the first refused
    /// queue refuses the whole request.
    pub(crate) fn check_all<'q>(
        &self,
        action: Action,
        own: &str,
        queues: impl IntoIterator<Item = &'q str>,
    ) -> Result<(), Refusal> {
        let perms = self.perms();
        let refused = queues
            .into_iter()
            .find(|q| *q != own && !may(&perms, action, q));
        drop(perms);
        match refused {
            None => Ok(()),
            Some(q) => Err(self.refusal(action_name(action), q)),
        }
    }

    /// Whether the connection may do the key-value `action` (`KvRead` or
    /// `KvWrite`) on every one of `keys` (§13).
    pub(crate) fn check_kv<'k>(
        &self,
        action: Action,
        keys: impl IntoIterator<Item = &'k str>,
    ) -> Result<(), Refusal> {
        let perms = self.perms();
        let refused = keys.into_iter().find(|k| !perms.allows(action, k));
        drop(perms);
        match refused {
            None => Ok(()),
            Some(k) => Err(self.refusal(action_name(action), k)),
        }
    }

    /// Whether the connection may do the key-value `action` on every key
    /// there is (memcached's `flush_all`).
    pub(crate) fn check_kv_every(&self, action: Action) -> Result<(), Refusal> {
        if self.perms().allows_every_key(action) {
            Ok(())
        } else {
            Err(self.refusal(action_name(action), "*"))
        }
    }

    /// Whether the connection may read status (`monitor`).
    pub(crate) fn check_monitor(&self) -> Result<(), Refusal> {
        if self.perms().monitor() {
            Ok(())
        } else {
            Err(self.refusal("status", ""))
        }
    }

    /// Of `subscribed`, the queues the current rules no longer allow (after
    /// a reload).
    pub(crate) fn revoked<'q>(
        &self,
        own: &str,
        subscribed: impl IntoIterator<Item = &'q str>,
    ) -> Vec<Box<str>> {
        let perms = self.perms();
        subscribed
            .into_iter()
            .filter(|q| *q != own && !may(&perms, Action::Subscribe, q))
            .map(Box::from)
            .collect()
    }

    /// Takes on `who` after a successful `coremq_auth`. A connection acts as
    /// one user for its whole life (its subscriptions were checked for
    /// them): a different user is refused; the same user may refresh a token.
    pub(crate) fn become_user(&self, who: Identity) -> Result<(), Identity> {
        if let Some(current) = &*self.who.borrow() {
            if current.user != who.user {
                return Err(who);
            }
        }
        let perms = self.rules.authority.borrow().perms(&who);
        *self.perms.borrow_mut() = perms;
        self.generation.set(self.rules.generation.get());
        *self.last_publish.borrow_mut() = None;
        *self.who.borrow_mut() = Some(who);
        Ok(())
    }

    /// The user the connection acts as.
    pub(crate) fn user(&self) -> Option<Arc<str>> {
        self.who.borrow().as_ref().map(|w| w.user.clone())
    }

    /// Whether the connection can do anything at all without authenticating.
    pub(crate) fn anonymous_grants_nothing(&self) -> bool {
        self.who.borrow().is_none() && self.perms().grants_nothing()
    }

    /// When the connection's token runs out (`None`: not a token, or none).
    pub(crate) fn token_expiry(&self) -> Option<SystemTime> {
        self.who.borrow().as_ref().and_then(|w| w.expires)
    }

    /// Marks a password check as running (or done).
    pub(crate) fn set_verifying(&self, on: bool) {
        self.verifying.set(on);
    }

    /// Whether a password check is running: reading and parsing wait.
    pub(crate) fn verifying(&self) -> bool {
        self.verifying.get()
    }

    /// After a login: true if the caller must start the expiry watch (a
    /// token, and no watch running). A watch already running is told that
    /// the expiry moved — earlier or later — or that there is none now (a
    /// password login), and looks again at once.
    pub(crate) fn expiry_changed(&self) -> bool {
        if self.watching_expiry.get() {
            self.expiry_moved.set(true);
            if let Some(w) = self.expiry_waker.take() {
                w.wake();
            }
            return false;
        }
        let start = self.token_expiry().is_some();
        self.watching_expiry.set(start);
        start
    }

    /// For the expiry watch: true (once) if a login moved the expiry since
    /// it last looked; else `waker` is woken when one does.
    pub(crate) fn expiry_moved(&self, waker: &Waker) -> bool {
        if self.expiry_moved.replace(false) {
            return true;
        }
        *self.expiry_waker.borrow_mut() = Some(waker.clone());
        false
    }

    /// The expiry watch ends (no token any more): the next token login
    /// starts a new one.
    pub(crate) fn end_expiry_watch(&self) {
        self.watching_expiry.set(false);
        self.expiry_moved.set(false);
        self.expiry_waker.take();
    }

    /// True if no `auth_timeout` clock runs: the caller starts one.
    pub(crate) fn start_auth_clock(&self) -> bool {
        !self.auth_clock.replace(true)
    }

    /// The `auth_timeout` clock ran out without closing the connection (it
    /// had rights by then): a later reload that takes them may start another.
    pub(crate) fn end_auth_clock(&self) {
        self.auth_clock.set(false);
    }
}

/// Whether `perms` allow `action` on `queue`. The broker's own queues
/// (`$coremq.stats`) carry its figures: they go with `monitor` — which the
/// dashboard needs them for — and not with the queue patterns (`subscribe =
/// *` is every client queue, not the broker's statistics).
fn may(perms: &Perms, action: Action, queue: &str) -> bool {
    if let Some(key) = queue.strip_prefix(KV_WATCH_PREFIX) {
        // A key's watch queue is read with the right to read the key.
        matches!(action, Action::Subscribe | Action::History) && perms.allows(Action::KvRead, key)
    } else if is_reserved(queue) {
        perms.monitor()
    } else {
        perms.allows(action, queue)
    }
}

/// The word a refusal uses for `action`.
fn action_name(action: Action) -> &'static str {
    match action {
        Action::Publish => "publish",
        Action::Subscribe => "subscribe",
        Action::History => "history",
        Action::KvRead => "kv_read",
        Action::KvWrite => "kv_write",
    }
}
