// coremq.js — the CoreMQ client for browsers, an ES module served by the
// broker at /coremq.js on its [CoreWS] port (the dashboard uses it too).
// No dependencies; speaks the WebSocket protocol of docs/protocol.md §5.
//
//   import { connect } from "/coremq.js";   // or "http://mq.example.com:9000/coremq.js"
//
//   const mq = connect();                     // the broker that served this file, /ws
//   mq.on("recovered", (e) => { if (!e.recovered) console.warn("may have missed", e.queue); });
//   mq.on("error", (err) => console.error(err.name, err.response));
//   await mq.subscribe("news", (msg) => console.log(msg.queue, msg.title));
//   await mq.publish("news", { title: "hello" });     // resolves at "OK: Message sent"
//   const { news } = await mq.history(["news"]);       // oldest first
//
// connect(url?, options?) returns a Client at once and opens the connection.
//   url       ws:// or wss:// URL of the broker's /ws; http(s):// and relative
//             URLs are turned into ws(s):// ones. Default: /ws on the origin
//             this module was loaded from.
//   options   token     a JWT, or a function (may be async) returning one; it
//                       is called again for every connection, so a reconnect
//                       after "ERROR: Token expired" can use a fresh token.
//             user, password   log in with a password instead.
//                       Credentials go in a coremq_auth message, the first one
//                       on every connection (docs/protocol.md §8), not in the
//                       URL: a wrong one then gets a typed
//                       AuthenticationFailed error (after which the client
//                       stops reconnecting) and tokens stay out of URL logs.
//                       Without them the connection acts as the user the
//                       browser sent on the handshake (HTTP Basic of the
//                       page), or as [anonymous].
//             reconnect {min, max} in ms (default {min: 200, max: 10000}):
//                       exponential backoff, each delay drawn from the upper
//                       half of its step (jitter); false: never reconnect.
//             connectTimeout ms until a connection without a welcome is given
//                       up and retried (default 10000).
//             WebSocket a WebSocket constructor (default: the browser's).
//
// Client
//   subscribe(queue | [queues], onMessage, {since, resume}?) -> Promise
//       Calls onMessage(msg) for every message of the queues; msg is the
//       published object with "queue", "coremq_sender", "coremq_sent" and
//       "coremq_server" (and "coremq_replay": true when replayed by a resume).
//       Resolves at "OK: Subscribe successful" with the reply; rejects with a
//       CoreMQError (e.g. PermissionDenied). A queue already subscribed by this
//       client only gets onMessage added. `since`: a position {sent, server}
//       (or a list of them, one per server) you kept, e.g. from positions(q)
//       in localStorage: the broker replays what came after it first, and a
//       "recovered" event reports whether that is complete. `resume: false`:
//       do not resume this queue after a reconnect (live messages only).
//   unsubscribe(queue | [queues], onMessage?) -> Promise
//       Removes onMessage (every handler without it); the queue is
//       unsubscribed once it has no handler left.
//   publish(queue, obj) -> Promise
//       obj must be a JSON object without "queue", coremq_* command keys or
//       "corews_status". Resolves at "OK: Message sent" (at once with the
//       option ack: false); rejects with a CoreMQError, or ConnectionLost if
//       the connection dropped first (then it may or may not have been sent).
//       Called while reconnecting, it is sent once connected.
//   send(connectionId, obj)  point-to-point: publish to another connection's id.
//   history(queue | [queues]) -> Promise<{queue: [msg, ...]}>, oldest first.
//   status() -> Promise<status object>   (coremq_status; needs `monitor`).
//   setOptions({ack, echo, seq}) -> Promise   kept and set again on reconnects.
//   positions(queue) -> [{sent, server}, ...]   where a resume would start.
//   ready() -> Promise   resolves when connected (at once if connected now).
//   reconnect()          drops the connection as a network blip would (the
//                        client reconnects and resumes), or retries at once.
//   close()              closes for good; pending requests reject.
//   on(event, fn) -> function that removes fn;  off(event, fn).
//   id, server, user, connected   the connection's id, node, login, state.
//
// Events
//   "open"        {id, server, reconnected}: connected (the welcome arrived);
//                 subscriptions are being resumed.
//   "close"       {code, reason, willReconnect, shutdown}: an open connection
//                 closed; shutdown: the broker said BYE (a graceful stop).
//   "reconnecting" {delay, attempt}: the next attempt is in `delay` ms.
//   "recovered"   {queue, recovered, since}: the outcome of resuming `queue`
//                 after a reconnect (or of subscribe with `since`).
//                 recovered: false means messages published meanwhile may be
//                 missing (the broker no longer holds them all, e.g. it
//                 restarted without durable history; or nothing of the queue
//                 had arrived yet, so there was no position to resume from).
//                 What the broker did keep is delivered all the same.
//   "error"       a CoreMQError: an ERROR reply no request was waiting for, a
//                 slow-consumer cut, an expired token, a failed login, a
//                 subscription the broker withdrew (PermissionRevoked, with
//                 .queues), or a resumed subscription it refused.
//   "warning"     {queue, response, dropped}: "WARN: Dropped N messages"
//                 under the drop policy (docs/protocol.md §9).
//   "direct"      msg: a message sent to this connection's id.
//
// Resume (docs/protocol.md §10): the client keeps, per queue, the newest
// position (coremq_sent, coremq_server) received from each server; a
// reconnect subscribes again with them as coremq_since (the newest 16), and
// messages at or before a known position are dropped, so a resume delivers
// nothing twice.

const MAX_SINCE_SERVERS = 16;
// Keys that make the broker read an object as a command, not a publish
// (crates/protocol's COMMANDS, and the WebSocket's corews_status).
const COMMAND_KEYS = ["coremq_subscribe", "coremq_unsubscribe", "coremq_options",
  "coremq_gethistory", "coremq_replicant", "coremq_status", "coremq_auth",
  "coremq_set", "coremq_get", "coremq_delete", "coremq_incr", "corews_status"];

// ---- errors ---------------------------------------------------------------

/** An ERROR reply from the broker; `response` is its full text. */
export class CoreMQError extends Error {
  constructor(response) {
    super(response);
    this.name = "CoreMQError";
    this.response = response;
  }
}
/** "ERROR: Permission denied: <action> <queue>"; the connection stays. */
export class PermissionDenied extends CoreMQError {
  constructor(r) { super(r); this.name = "PermissionDenied"; }
}
/** "ERROR: Authentication required": pass credentials to connect(). */
export class AuthenticationRequired extends CoreMQError {
  constructor(r) { super(r); this.name = "AuthenticationRequired"; }
}
/** "ERROR: Authentication failed": the broker closed; not retried. */
export class AuthenticationFailed extends CoreMQError {
  constructor(r) { super(r); this.name = "AuthenticationFailed"; }
}
/** "ERROR: Token expired": the broker closed; the client reconnects. */
export class TokenExpired extends CoreMQError {
  constructor(r) { super(r); this.name = "TokenExpired"; }
}
/** "ERROR: slow consumer: …": the broker cut this connection off. */
export class SlowConsumer extends CoreMQError {
  constructor(r) { super(r); this.name = "SlowConsumer"; }
}
/** "Unsubscribed: permission revoked": `queues` are no longer subscribed. */
export class PermissionRevoked extends CoreMQError {
  constructor(r, queues) { super(r); this.name = "PermissionRevoked"; this.queues = queues; }
}
/** {"error": …}: the broker could not read a request. */
export class BadRequest extends CoreMQError {
  constructor(r) { super(r); this.name = "BadRequest"; }
}
/** The connection closed before the answer came (or the client was closed). */
export class ConnectionLost extends CoreMQError {
  constructor(r) { super(r); this.name = "ConnectionLost"; }
}

/** The typed error for an "ERROR: …" reply text. */
export function errorFor(response) {
  const body = response.startsWith("ERROR:") ? response.slice(6).trim() : response;
  if (body.startsWith("Permission denied")) return new PermissionDenied(response);
  if (body.startsWith("Authentication failed")) return new AuthenticationFailed(response);
  if (body.startsWith("Authentication required")) return new AuthenticationRequired(response);
  if (body.startsWith("Token expired")) return new TokenExpired(response);
  if (body.startsWith("slow consumer")) return new SlowConsumer(response);
  return new CoreMQError(response);
}

// ---- helpers --------------------------------------------------------------

/** Delays doubling from min to max, each from the upper half of its step. */
export class Backoff {
  constructor(min = 200, max = 10000) {
    this.min = Math.max(1, min);
    this.max = Math.max(this.min, max);
    this.next = this.min;
  }
  delay() {
    const step = this.next;
    this.next = Math.min(step * 2, this.max);
    return step / 2 + Math.random() * step / 2;
  }
  reset() { this.next = this.min; }
}

/** Why `queue` is not a valid queue name, or null (docs/protocol.md §1). */
export function queueNameError(queue) {
  if (typeof queue !== "string" || queue.length === 0) return "a queue name must be a non-empty string";
  if (queue.length > 255) return "a queue name has at most 255 characters";
  for (let i = 0; i < queue.length; i++) {
    const c = queue.charCodeAt(i);
    if (c < 0x21 || c > 0x7e) {
      return "queue name " + JSON.stringify(queue) + ": printable ASCII without spaces only";
    }
  }
  return null;
}

function names(queues) {
  const list = Array.isArray(queues) ? queues.slice() : [queues];
  if (!list.length) throw new TypeError("name at least one queue");
  for (const q of list) {
    const why = queueNameError(q);
    if (why) throw new TypeError(why);
  }
  return list;
}

function positionOf(msg) {
  const sent = msg.coremq_sent, server = msg.coremq_server;
  if (typeof sent !== "number" || !(sent > 0) || typeof server !== "string" || !server) return null;
  return { sent, server };
}

function report(e) {
  // A handler's exception must not break the client; the page still sees it.
  if (typeof reportError === "function") reportError(e);
  else setTimeout(() => { throw e; });
}

function defaultUrl() {
  try {
    return new URL("/ws", import.meta.url).href;
  } catch (e) {
    return "/ws";
  }
}

function wsUrl(url) {
  const base = typeof location !== "undefined" ? location.href : import.meta.url;
  const u = new URL(url == null ? defaultUrl() : url, base);
  if (u.protocol === "http:") u.protocol = "ws:";
  else if (u.protocol === "https:") u.protocol = "wss:";
  if (u.protocol !== "ws:" && u.protocol !== "wss:") {
    throw new TypeError("a CoreMQ URL is ws://, wss://, http:// or https://, not " + u.protocol);
  }
  // Credentials in a URL are not sent with a WebSocket handshake: use options.
  u.username = "";
  u.password = "";
  return u.href;
}

// ---- the client -----------------------------------------------------------

export class Client {
  constructor(url, options = {}) {
    this.url = wsUrl(url);
    this._token = options.token;
    this._user = options.user;
    this._password = options.password;
    if (this._user != null && this._token != null) {
      throw new TypeError("pass either token or user and password, not both");
    }
    const rc = options.reconnect;
    this._reconnect = rc !== false;
    this._backoff = new Backoff((rc && rc.min) || 200, (rc && rc.max) || 10000);
    this._connectTimeout = options.connectTimeout || 10000;
    this._WS = options.WebSocket || globalThis.WebSocket;
    if (typeof this._WS !== "function") throw new TypeError("no WebSocket constructor available");

    this.id = null;            // the connection's id (its private queue)
    this.server = null;        // the node's name, from the welcome
    this.user = null;          // the user logged in as, with credentials
    this.connected = false;    // the welcome of the current connection arrived
    this.closed = false;       // closed for good

    this._ws = null;
    this._gen = 0;             // connection generation: stale callbacks check it
    this._flushed = -1;        // generation whose handshake requests went out
    this._pending = [];        // requests sent on this connection, in order
    this._outbox = [];         // requests waiting for a connection
    this._subs = new Map();    // queue -> {handlers, resume, confirmed, live, seeded}
    this._waiters = [];        // subscribe() calls waiting for their queues
    this._positions = new Map(); // queue -> Map(server -> newest coremq_sent)
    this._options = {};
    this._listeners = new Map();
    this._attempt = 0;
    this._everOpen = false;
    this._bye = false;         // the broker said BYE on this connection
    this._fatal = null;        // why the client stopped for good
    this._timer = null;
    this._readyWaiters = [];
    this._open();
  }

  // -- events ---------------------------------------------------------------

  /** Adds a listener; returns a function that removes it. */
  on(event, fn) {
    if (typeof fn !== "function") throw new TypeError("on(event, fn) needs a function");
    if (!this._listeners.has(event)) this._listeners.set(event, new Set());
    this._listeners.get(event).add(fn);
    return () => this.off(event, fn);
  }
  off(event, fn) {
    const set = this._listeners.get(event);
    if (set) set.delete(fn);
  }
  _emit(event, arg) {
    const set = this._listeners.get(event);
    if (!set) return;
    for (const fn of Array.from(set)) {
      try { fn(arg); } catch (e) { report(e); }
    }
  }

  // -- connection -----------------------------------------------------------

  _open() {
    if (this.closed) return;
    const gen = ++this._gen;
    this._attempt++;
    let ws;
    try {
      ws = new this._WS(this.url);
    } catch (e) {
      // A URL the browser refuses (e.g. ws:// from an https:// page).
      // (Its origin and path only: a query string may hold a token.)
      const u = new URL(this.url);
      this._stop(new CoreMQError("cannot open " + u.origin + u.pathname + ": " + e.message));
      return;
    }
    this._ws = ws;
    this._timer = setTimeout(() => {
      if (gen !== this._gen || this.connected) return;
      try { ws.close(); } catch (e) { /* closing anyway */ }
      this._lost(gen, 1006, "no welcome within " + this._connectTimeout + " ms");
    }, this._connectTimeout);
    ws.onopen = () => { if (gen === this._gen) this._handshake(gen); };
    ws.onmessage = (ev) => {
      if (gen !== this._gen) return;
      let msg;
      try { msg = JSON.parse(ev.data); } catch (e) { return; }
      if (msg && typeof msg === "object" && !Array.isArray(msg)) this._incoming(msg);
    };
    ws.onclose = (ev) => this._lost(gen, ev.code, ev.reason);
    ws.onerror = () => { /* onclose follows */ };
  }

  // The requests every connection starts with: log in, options, subscribe
  // again (resuming), then what was asked for while disconnected. All
  // pipelined: the broker answers in order and judges the requests behind a
  // coremq_auth with the rights it gives.
  async _handshake(gen) {
    let auth = null;
    if (this._token != null) {
      let token = this._token;
      if (typeof token === "function") {
        try {
          token = await token();
        } catch (e) {
          report(e);
          token = null;
        }
        if (gen !== this._gen) return;
      }
      if (typeof token === "string" && token) auth = { token };
    } else if (this._user != null) {
      auth = { user: String(this._user), password: this._password == null ? "" : String(this._password) };
    }
    if (auth) this._send({ coremq_auth: auth }, { kind: "auth" });
    if (Object.keys(this._options).length) {
      this._send({ coremq_options: Object.assign({}, this._options) }, { kind: "options" });
    }
    // One request per queue: a queue refused meanwhile does not take the
    // others down with it (a list request is refused whole).
    for (const [q, sub] of this._subs) {
      const req = { coremq_subscribe: [q] };
      let resume = null;
      if (sub.resume && (sub.live || sub.seeded)) {
        const since = this.positions(q);
        if (since.length) req.coremq_since = { [q]: since.length === 1 ? since[0] : since };
        resume = { [q]: since.length ? since : null };
      }
      this._send(req, { kind: "sub", queues: [q], resume });
    }
    this._flushed = gen;
    const queued = this._outbox;
    this._outbox = [];
    for (const item of queued) this._sendItem(item);
  }

  _ready() {
    return this._flushed === this._gen && this._ws !== null && this._ws.readyState === 1;
  }

  _send(obj, entry) {
    if (entry) this._pending.push(entry);
    this._ws.send(JSON.stringify(obj));
  }

  // item: {obj, entry (the pending reply, or null), sent (called once sent), reject}
  _sendItem(item) {
    this._send(item.obj, item.entry);
    if (item.sent) item.sent();
  }

  _queueOrSend(item) {
    if (this._ready()) this._sendItem(item);
    else this._outbox.push(item);
  }

  _lost(gen, code, reason) {
    if (gen !== this._gen) return;
    this._gen++;
    clearTimeout(this._timer);
    const ws = this._ws;
    this._ws = null;
    if (ws) ws.onopen = ws.onmessage = ws.onclose = null;
    const wasOpen = this.connected;
    this.connected = false;
    this.id = null;
    const willReconnect = this._reconnect && !this.closed && !this._fatal;
    const why = this._fatal ||
      new ConnectionLost("connection lost" + (reason ? ": " + reason : code ? " (close code " + code + ")" : ""));
    for (const sub of this._subs.values()) {
      if (sub.confirmed) sub.live = true;
      sub.confirmed = false;
    }
    const pending = this._pending;
    this._pending = [];
    const again = [];
    for (const p of pending) {
      // A subscribe: the next connection subscribes again and settles its
      // subscribe() calls (or _stop rejects them).
      if (p.kind === "sub") continue;
      if (p.kind === "request" && willReconnect) {
        // Idempotent (history, status, options, unsubscribe): asked again,
        // before what was asked after them.
        again.push({ obj: p.obj, entry: p, reject: p.reject });
      } else if (p.reject) {
        // A publish may or may not have been delivered: the caller decides.
        p.reject(why);
      }
    }
    this._outbox = again.concat(this._outbox);
    const shutdown = this._bye === true;
    this._bye = false;
    if (wasOpen) this._emit("close", { code, reason, willReconnect, shutdown });
    if (willReconnect) this._scheduleReconnect();
    else this._stop(why);
  }

  _scheduleReconnect() {
    const delay = Math.round(this._backoff.delay());
    this._emit("reconnecting", { delay, attempt: this._attempt });
    this._timer = setTimeout(() => this._open(), delay);
  }

  // Stops for good: everything still waiting fails with `why`.
  _stop(why) {
    this.closed = true;
    this._fatal = this._fatal || why;
    clearTimeout(this._timer);
    for (const item of this._outbox) item.reject(why);
    this._outbox = [];
    for (const w of this._waiters) w.reject(why);
    this._waiters = [];
    for (const r of this._readyWaiters) r.reject(why);
    this._readyWaiters = [];
  }

  /** Closes the connection for good; pending requests reject with ConnectionLost. */
  close() {
    if (this.closed) return;
    this._reconnect = false;
    const ws = this._ws;
    this._lost(this._gen, 1000, "client closed");
    this._stop(new ConnectionLost("client closed"));
    if (ws) {
      try { ws.close(1000); } catch (e) { /* already closing */ }
    }
  }

  /** Drops the connection as a network blip would; the client reconnects and resumes. */
  reconnect() {
    if (this.closed) return;
    if (this._ws) {
      try { this._ws.close(1000, "reconnect"); } catch (e) { /* closing anyway */ }
    } else {
      clearTimeout(this._timer);
      this._open();
    }
  }

  /** Resolves when connected (at once if connected now). */
  ready() {
    if (this.connected) return Promise.resolve(this);
    if (this.closed) return Promise.reject(this._fatal);
    return new Promise((resolve, reject) => this._readyWaiters.push({ resolve, reject }));
  }

  // -- incoming -------------------------------------------------------------

  _incoming(msg) {
    if (this.id === null) {
      // The welcome comes first on every connection.
      if (typeof msg.response === "string" && msg.response.startsWith("OK: Welcome") &&
          typeof msg.queue === "string") {
        clearTimeout(this._timer);
        this.id = msg.queue;
        this.server = typeof msg.server === "string" ? msg.server : null;
        this.connected = true;
        const reconnected = this._everOpen;
        this._everOpen = true;
        this._attempt = 0;
        this._backoff.reset();
        const waiters = this._readyWaiters;
        this._readyWaiters = [];
        for (const r of waiters) r.resolve(this);
        this._emit("open", { id: this.id, server: this.server, reconnected });
      }
      return;
    }
    if (typeof msg.coremq_sender === "string") {
      if (msg.queue === this.id) this._emit("direct", msg);
      else this._deliver(msg);
      return;
    }
    if (msg.queue === this.id || (typeof msg.error === "string" && msg.queue === undefined)) {
      this._reply(msg);
      return;
    }
    if (typeof msg.response === "string" && msg.response.startsWith("WARN")) {
      const m = /Dropped (\d+)/.exec(msg.response);
      this._emit("warning", { queue: msg.queue, response: msg.response, dropped: m ? Number(m[1]) : null });
    }
  }

  _deliver(msg) {
    const sub = this._subs.get(msg.queue);
    if (!sub || !this._admit(msg.queue, msg)) return;
    for (const fn of Array.from(sub.handlers)) {
      try { fn(msg); } catch (e) { report(e); }
    }
  }

  /** Records a delivery's position; false for a replay of one already delivered. */
  _admit(queue, msg) {
    const pos = positionOf(msg);
    if (!pos) return true;
    let per = this._positions.get(queue);
    if (!per) this._positions.set(queue, (per = new Map()));
    const seen = per.get(pos.server);
    if (seen !== undefined && pos.sent <= seen) return false;
    per.set(pos.server, pos.sent);
    return true;
  }

  _reply(msg) {
    const r = typeof msg.response === "string" ? msg.response : null;
    // Frames on the id that answer no request.
    if (r === "BYE") {
      this._bye = true;
      return;
    }
    if (r !== null && r.startsWith("Unsubscribed")) {
      const queues = Array.isArray(msg.queues) ? msg.queues : [];
      for (const q of queues) this._forget(q);
      this._emit("error", new PermissionRevoked(r, queues));
      return;
    }
    let err = null;
    if (typeof msg.error === "string") err = new BadRequest(msg.error);
    else if (r !== null && r.startsWith("ERROR")) err = errorFor(r);
    if (err instanceof SlowConsumer || err instanceof TokenExpired ||
        (r !== null && r.indexOf("within auth_timeout") !== -1)) {
      // The broker is closing this connection; this answers no request.
      this._emit("error", err);
      return;
    }
    const p = this._pending.shift();
    if (!p) {
      if (err) this._emit("error", err);
      return;
    }
    if (p.kind === "auth") {
      if (err) {
        // The broker closes the connection; a wrong login stays wrong.
        if (err instanceof AuthenticationFailed) this._fatal = err;
        this._emit("error", err);
      } else {
        this.user = typeof msg.user === "string" ? msg.user : null;
      }
    } else if (p.kind === "sub") {
      this._subReply(p, msg, err);
    } else if (err) {
      if (p.reject) p.reject(err);
      else this._emit("error", err);
    } else if (p.resolve) {
      p.resolve(msg);
    }
  }

  _subReply(p, msg, err) {
    if (err) {
      for (const q of p.queues) this._forget(q);
      // A subscribe() call rejects; a refused resume is told as an event.
      if (!p.own) this._emit("error", err);
      this._settleSub(p.queues, err);
      return;
    }
    for (const q of p.queues) {
      const sub = this._subs.get(q);
      if (sub) sub.confirmed = true;
    }
    if (p.resume) {
      const rec = msg.recovered && typeof msg.recovered === "object" ? msg.recovered : {};
      for (const q of Object.keys(p.resume)) {
        if (!this._subs.has(q)) continue;
        const since = p.resume[q];
        this._emit("recovered", { queue: q, recovered: since !== null && rec[q] === true, since });
      }
    }
    this._settleSub(p.queues, null, msg);
  }

  _forget(q) {
    this._subs.delete(q);
    this._positions.delete(q);
  }

  // Settles the subscribe() calls waiting for `queues`: all of them failed
  // with `err`, or were confirmed by `reply`.
  _settleSub(queues, err, reply) {
    const still = [];
    for (const w of this._waiters) {
      if (err && queues.some((q) => w.queues.has(q))) {
        w.reject(err);
        continue;
      }
      for (const q of queues) w.queues.delete(q);
      // Queues unsubscribed meanwhile no longer count.
      for (const q of Array.from(w.queues)) if (!this._subs.has(q)) w.queues.delete(q);
      if (w.queues.size) still.push(w);
      else w.resolve(reply || null);
    }
    this._waiters = still;
  }

  // -- requests -------------------------------------------------------------

  _request(obj) {
    if (this.closed) return Promise.reject(this._fatal);
    return new Promise((resolve, reject) => {
      const entry = { kind: "request", obj, resolve, reject };
      this._queueOrSend({ obj, entry, reject });
    });
  }

  subscribe(queues, onMessage, opts = {}) {
    const list = names(queues);
    if (typeof onMessage !== "function") throw new TypeError("subscribe needs an onMessage function");
    if (this.closed) return Promise.reject(this._fatal);
    let since = null;
    if (opts.since != null) {
      if (list.length !== 1) throw new TypeError("since applies to one queue: subscribe to it alone");
      since = (Array.isArray(opts.since) ? opts.since : [opts.since]).map((p) => {
        if (!p || typeof p.sent !== "number" || !(p.sent > 0) || typeof p.server !== "string" || !p.server) {
          throw new TypeError("a position is {sent: <coremq_sent>, server: <coremq_server>}");
        }
        return { sent: p.sent, server: p.server };
      });
    }
    const fresh = [];
    const waitFor = new Set();
    for (const q of list) {
      let sub = this._subs.get(q);
      if (!sub) {
        sub = { handlers: new Set(), resume: opts.resume !== false, confirmed: false, live: false, seeded: false };
        this._subs.set(q, sub);
        fresh.push(q);
      }
      sub.handlers.add(onMessage);
      if (!sub.confirmed) waitFor.add(q);
    }
    if (since && fresh.length) {
      const per = new Map();
      for (const p of since) per.set(p.server, Math.max(p.sent, per.get(p.server) || 0));
      this._positions.set(fresh[0], per);
      this._subs.get(fresh[0]).seeded = true;
    }
    if (!waitFor.size) return Promise.resolve(null);
    return new Promise((resolve, reject) => {
      this._waiters.push({ queues: waitFor, resolve, reject });
      // Not connected: the connection's handshake subscribes every queue.
      if (!fresh.length || !this._ready()) return;
      const req = { coremq_subscribe: fresh };
      let resume = null;
      if (since && fresh.length) {
        const points = this.positions(fresh[0]);
        req.coremq_since = { [fresh[0]]: points.length === 1 ? points[0] : points };
        resume = { [fresh[0]]: points };
      }
      this._send(req, { kind: "sub", queues: fresh, own: true, resume });
    });
  }

  unsubscribe(queues, onMessage) {
    const list = names(queues);
    const gone = [];
    for (const q of list) {
      const sub = this._subs.get(q);
      if (!sub) continue;
      if (onMessage) sub.handlers.delete(onMessage);
      else sub.handlers.clear();
      if (!sub.handlers.size) {
        this._forget(q);
        gone.push(q);
      }
    }
    if (!gone.length) return Promise.resolve(null);
    this._settleSub([], null);
    // Not connected: the next connection just does not subscribe them.
    if (!this._ready()) return Promise.resolve(null);
    return this._request({ coremq_unsubscribe: gone });
  }

  publish(queue, obj) {
    const why = queueNameError(queue);
    if (why) return Promise.reject(new TypeError(why));
    if (!obj || typeof obj !== "object" || Array.isArray(obj)) {
      return Promise.reject(new TypeError("a message is a JSON object, e.g. {text: \"hi\"}"));
    }
    if (Object.prototype.hasOwnProperty.call(obj, "queue")) {
      return Promise.reject(new TypeError("a message cannot have a \"queue\" member: over WebSocket it names the queue"));
    }
    for (const k of COMMAND_KEYS) {
      if (Object.prototype.hasOwnProperty.call(obj, k)) {
        return Promise.reject(new TypeError("a message cannot carry the command key " + k));
      }
    }
    const wire = Object.assign({ queue }, obj);
    try { JSON.stringify(wire); } catch (e) { return Promise.reject(e); }
    if (this.closed) return Promise.reject(this._fatal);
    const ack = this._options.ack !== false;
    return new Promise((resolve, reject) => {
      const entry = ack ? { kind: "publish", resolve, reject } : null;
      this._queueOrSend({ obj: wire, entry, reject, sent: ack ? null : () => resolve(null) });
    });
  }

  /** Point-to-point: publishes to another connection's id. */
  send(connectionId, obj) { return this.publish(connectionId, obj); }

  history(queues) {
    const list = names(queues);
    return this._request({ coremq_gethistory: list }).then((r) => r.history || {});
  }

  status() { return this._request({ coremq_status: true }); }

  setOptions(options) {
    if (!options || typeof options !== "object" || Array.isArray(options)) {
      return Promise.reject(new TypeError("options is an object, e.g. {echo: true}"));
    }
    for (const k of Object.keys(options)) {
      if (options[k] === null) delete this._options[k];
      else this._options[k] = options[k];
    }
    return this._request({ coremq_options: options });
  }

  /** The newest position per server received on `queue`, earliest first (at most 16). */
  positions(queue) {
    const per = this._positions.get(queue);
    if (!per) return [];
    const list = Array.from(per, ([server, sent]) => ({ sent, server }));
    list.sort((a, b) => a.sent - b.sent || (a.server < b.server ? -1 : a.server > b.server ? 1 : 0));
    return list.slice(-MAX_SINCE_SERVERS);
  }

  /** The queues subscribed (or being subscribed). */
  get queues() { return Array.from(this._subs.keys()); }
}

/** Connects to a CoreMQ broker's WebSocket; see the top of this file. */
export function connect(url, options) {
  if (url && typeof url === "object" && !(url instanceof URL)) {
    options = url;
    url = undefined;
  }
  return new Client(url == null ? undefined : String(url), options || {});
}
