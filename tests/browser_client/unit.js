// Unit checks of /coremq.js, run in headless Chromium by
// tests/browser_client.rs (`module_unit_checks`): an async function of the
// imported module that returns the failures found (an empty list passes).
//
// The broker is played by a scripted fake WebSocket (the `WebSocket` option
// of connect()), so every frame the client sends can be checked exactly and
// the awkward cases — a reply after a drop, a replay of a message already
// had, a failed login — happen on cue. The real broker is the other tests'.
async (m) => {
  const failures = [];
  const check = (what, ok, detail) => {
    if (!ok) failures.push(what + (detail === undefined ? "" : ": " + JSON.stringify(detail)));
  };
  const same = (what, got, want) => {
    const g = JSON.stringify(got), w = JSON.stringify(want);
    if (g !== w) failures.push(what + ": got " + g + ", want " + w);
  };
  const tick = () => new Promise((r) => setTimeout(r, 0));
  const until = async (what, cond) => {
    for (let i = 0; i < 2000; i++) {
      if (cond()) return true;
      await new Promise((r) => setTimeout(r, 1));
    }
    failures.push("timed out waiting for " + what);
    return false;
  };
  // A promise's outcome, or "hung" if it has none within 2 s.
  const within = (p) => Promise.race([
    p.then((v) => ({ state: "resolved", value: v }), (e) => ({ state: "rejected", value: e })),
    new Promise((r) => setTimeout(() => r({ state: "hung" }), 2000)),
  ]);
  const settled = (p) => {
    const s = { state: "pending", value: undefined };
    p.then((v) => { s.state = "resolved"; s.value = v; }, (e) => { s.state = "rejected"; s.value = e; });
    return s;
  };

  // A WebSocket whose server side the checks play.
  function fake() {
    const conns = [];
    class FakeWS {
      constructor(url) {
        this.url = url;
        this.readyState = 0;
        this.sent = [];
        conns.push(this);
      }
      send(text) {
        if (this.readyState !== 1) throw new Error("send on a socket that is not open");
        this.sent.push(JSON.parse(text));
      }
      close() {
        if (this.readyState === 3) return;
        this.readyState = 3;
        setTimeout(() => this.onclose && this.onclose({ code: 1000, reason: "" }), 0);
      }
      // The server's side.
      open(id) {
        this.readyState = 1;
        this.onopen && this.onopen({});
        if (id) this.recv({ response: "OK: Welcome to CoreMQ server", server: "fake", queue: id });
      }
      recv(obj) { this.onmessage && this.onmessage({ data: JSON.stringify(obj) }); }
      reply(obj) { this.recv(Object.assign({}, obj, { queue: this.id })); }
      drop(code) {
        this.readyState = 3;
        this.onclose && this.onclose({ code: code || 1006, reason: "" });
      }
    }
    return { WS: FakeWS, conns, last: () => conns[conns.length - 1] };
  }
  const fast = { min: 1, max: 4 };
  const events = (c, names) => {
    const log = [];
    for (const n of names) c.on(n, (e) => log.push([n, e]));
    return log;
  };
  const OK_SUB = { response: "OK: Subscribe successful" };
  const OK_SENT = { response: "OK: Message sent" };

  // ---- pure parts ----------------------------------------------------------

  {
    const b = new m.Backoff(100, 1000);
    const steps = [100, 200, 400, 800, 1000, 1000];
    steps.forEach((step, i) => {
      const d = b.delay();
      check("backoff delay " + i + " within [step/2, step) of " + step, d >= step / 2 && d < step, d);
    });
    const firsts = new Set();
    for (let i = 0; i < 20; i++) firsts.add(new m.Backoff(100, 1000).delay());
    check("backoff delays are jittered", firsts.size > 1, Array.from(firsts));
    b.reset();
    const d = b.delay();
    check("backoff restarts at min after reset", d >= 50 && d <= 100, d);
  }
  {
    const cases = [
      ["ERROR: Permission denied: publish x", m.PermissionDenied],
      ["ERROR: Authentication failed", m.AuthenticationFailed],
      ["ERROR: Authentication required", m.AuthenticationRequired],
      ["ERROR: Token expired", m.TokenExpired],
      ["ERROR: slow consumer: more than 10 bytes waiting", m.SlowConsumer],
      ["ERROR: queue $coremq.x is reserved for the broker", m.CoreMQError],
    ];
    for (const [text, cls] of cases) {
      const e = m.errorFor(text);
      check("errorFor(" + text + ") is " + cls.name, e instanceof cls && e instanceof m.CoreMQError && e.response === text, e.name);
    }
  }
  {
    for (const bad of ["", "a b", "é", "tab\there", "x".repeat(256), 7, null]) {
      check("queue name " + JSON.stringify(bad) + " is refused", m.queueNameError(bad) !== null);
    }
    for (const good of ["news", "orders.eu-1", "$coremq.stats", "x".repeat(255)]) {
      check("queue name " + good.slice(0, 20) + " is accepted", m.queueNameError(good) === null);
    }
  }
  {
    const f = fake();
    const url = (u) => { const c = m.connect(u, { WebSocket: f.WS }); const r = c.url; c.close(); return r; };
    same("http:// becomes ws://", url("http://mq.example:9000/ws"), "ws://mq.example:9000/ws");
    same("https:// becomes wss://", url("https://mq.example/ws"), "wss://mq.example/ws");
    same("credentials are stripped", url("ws://u:p@mq.example/ws"), "ws://mq.example/ws");
    same("a relative URL is on the page's host", url("/ws"), "ws://" + location.host + "/ws");
    same("the default is /ws where the module came from", url(undefined), "ws://" + location.host + "/ws");
    let threw = null;
    try { m.connect("ftp://x/", { WebSocket: f.WS }); } catch (e) { threw = e; }
    check("an ftp:// URL is a TypeError", threw instanceof TypeError, String(threw));
  }

  // ---- publish checks its input before anything is sent ----------------------

  {
    const f = fake();
    const c = m.connect("ws://x/ws", { WebSocket: f.WS, reconnect: fast });
    const ws = f.last();
    ws.open("id-1");
    ws.id = "id-1";
    for (const [what, q, obj] of [
      ["a \"queue\" member", "q", { queue: "other" }],
      ["a command key", "q", { coremq_subscribe: "x" }],
      ["corews_status", "q", { corews_status: 1 }],
      ["a key-value command key", "q", { coremq_incr: { key: "k", by: 1 } }],
      ["an array", "q", [1, 2]],
      ["null", "q", null],
      ["a bad queue name", "a b", { x: 1 }],
    ]) {
      const r = await within(c.publish(q, obj));
      check("publish with " + what + " rejects with a TypeError", r.state === "rejected" && r.value instanceof TypeError, r);
    }
    same("nothing was sent for them", ws.sent, []);
    c.close();
  }

  // ---- login first, a fresh token per connection ----------------------------

  {
    const f = fake();
    let n = 0;
    const c = m.connect("ws://x/ws", { WebSocket: f.WS, reconnect: fast, token: async () => "tok" + n++ });
    const log = events(c, ["open", "close", "error"]);
    const sub = settled(c.subscribe("a", () => {}));
    let ws = f.last();
    ws.open();
    await until("the login is sent", () => ws.sent.length >= 2);
    same("the token goes first, then the subscribe", ws.sent, [{ coremq_auth: { token: "tok0" } }, { coremq_subscribe: ["a"] }]);
    ws.id = "id-1";
    ws.recv({ response: "OK: Welcome to CoreMQ server", server: "fake", queue: "id-1" });
    ws.reply({ response: "OK: Authenticated", user: "alice" });
    ws.reply(OK_SUB);
    await tick();
    same("the subscribe resolves at its OK", sub.state, "resolved");
    same("user from the login reply", c.user, "alice");
    same("open event", log.filter((e) => e[0] === "open").map((e) => e[1]), [{ id: "id-1", server: "fake", reconnected: false }]);
    ws.drop();
    await until("a reconnect", () => f.conns.length === 2);
    ws = f.last();
    ws.open();
    await until("the second login", () => ws.sent.length >= 1);
    same("the token function is called again", ws.sent[0], { coremq_auth: { token: "tok1" } });
    c.close();
  }
  {
    const f = fake();
    const c = m.connect("ws://x/ws", { WebSocket: f.WS, reconnect: fast, user: "bob", password: "pw" });
    const log = events(c, ["error", "close", "reconnecting"]);
    const ws = f.last();
    ws.id = "id-1";
    ws.open("id-1");
    same("user and password go first", ws.sent[0], { coremq_auth: { user: "bob", password: "pw" } });
    const pub = settled(c.publish("q", { x: 1 }));
    ws.reply({ response: "ERROR: Authentication failed" });
    ws.drop(1000);
    await new Promise((r) => setTimeout(r, 30));
    const errs = log.filter((e) => e[0] === "error").map((e) => e[1]);
    check("a failed login is an AuthenticationFailed error event", errs.length === 1 && errs[0] instanceof m.AuthenticationFailed, errs.map(String));
    same("a failed login is not retried", f.conns.length, 1);
    same("... nor is a reconnect announced", log.filter((e) => e[0] === "reconnecting").length, 0);
    same("the close says so", log.filter((e) => e[0] === "close").map((e) => e[1].willReconnect), [false]);
    check("the client is closed", c.closed === true);
    check("a publish waiting behind it rejects with the reason", pub.state === "rejected" && pub.value instanceof m.AuthenticationFailed, pub);
    const r = await within(c.ready());
    check("ready() rejects once closed", r.state === "rejected" && r.value instanceof m.AuthenticationFailed, r);
    c.close();
  }

  // ---- replies pair with requests in order ----------------------------------

  {
    const f = fake();
    const c = m.connect("ws://x/ws", { WebSocket: f.WS, reconnect: fast });
    const log = events(c, ["error", "direct", "warning"]);
    const ws = f.last();
    ws.id = "id-1";
    ws.open("id-1");
    const p1 = settled(c.publish("q", { n: 1 }));
    const p2 = settled(c.publish("q", { n: 2 }));
    const h = settled(c.history(["q"]));
    same("publishes and history as sent", ws.sent, [{ queue: "q", n: 1 }, { queue: "q", n: 2 }, { coremq_gethistory: ["q"] }]);
    ws.reply(OK_SENT);
    ws.reply({ response: "ERROR: Permission denied: publish q" });
    // Unsolicited frames do not take a request's reply.
    ws.reply({ response: "ERROR: slow consumer: more than 10 bytes waiting to be read (max_pending); disconnecting" });
    ws.recv({ response: "WARN: Dropped 3 messages", queue: "q" });
    ws.recv({ hi: 1, coremq_sender: "other", coremq_sent: 1, coremq_server: "s:1", queue: "id-1" });
    ws.reply({ history: { q: [{ n: 1 }] } });
    await tick();
    same("the first publish resolves", p1.state, "resolved");
    check("the second rejects with PermissionDenied", p2.state === "rejected" && p2.value instanceof m.PermissionDenied, String(p2.value));
    same("history resolves with the queues", h.value, { q: [{ n: 1 }] });
    const errs = log.filter((e) => e[0] === "error").map((e) => e[1]);
    check("the slow-consumer cut is an error event", errs.length === 1 && errs[0] instanceof m.SlowConsumer, errs.map(String));
    same("the drop warning", log.filter((e) => e[0] === "warning").map((e) => e[1]),
      [{ queue: "q", response: "WARN: Dropped 3 messages", dropped: 3 }]);
    same("a message to the id is a direct event", log.filter((e) => e[0] === "direct").map((e) => e[1].hi), [1]);
    const bad = settled(c.status());
    ws.recv({ error: "unknown message" });
    await tick();
    check("an {error} reply rejects with BadRequest", bad.state === "rejected" && bad.value instanceof m.BadRequest, String(bad.value));
    // Options are kept: with ack off a publish resolves once sent.
    const o = settled(c.setOptions({ ack: false }));
    ws.reply({ response: "OK: Options set" });
    await tick();
    same("setOptions resolves", o.state, "resolved");
    const p3 = settled(c.publish("q", { n: 3 }));
    await tick();
    same("with ack off a publish resolves when sent", p3.state, "resolved");
    same("... and takes no reply", ws.sent[ws.sent.length - 1], { queue: "q", n: 3 });
    c.close();
  }

  // ---- resume after a reconnect ------------------------------------------------

  {
    const f = fake();
    const c = m.connect("ws://x/ws", { WebSocket: f.WS, reconnect: fast });
    const log = events(c, ["recovered", "close", "open"]);
    const got = [];
    const on = (msg) => got.push(msg.queue + ":" + msg.coremq_server + ":" + msg.coremq_sent);
    for (const q of ["a", "b", "c"]) c.subscribe(q, on);
    c.subscribe("d", on, { resume: false });
    let ws = f.last();
    ws.id = "id-1";
    ws.open("id-1");
    same("first connection: plain subscribes, no positions", ws.sent,
      [{ coremq_subscribe: ["a"] }, { coremq_subscribe: ["b"] }, { coremq_subscribe: ["c"] }, { coremq_subscribe: ["d"] }]);
    for (let i = 0; i < 4; i++) ws.reply(OK_SUB);
    const msg = (q, server, sent, extra) => Object.assign({ queue: q, coremq_sender: "p", coremq_sent: sent, coremq_server: server }, extra || {});
    ws.recv(msg("a", "s1:1", 10));
    ws.recv(msg("a", "s2:1", 10.5));
    ws.recv(msg("a", "s1:1", 11));
    ws.recv(msg("b", "s1:1", 20));
    for (let i = 0; i < 20; i++) ws.recv(msg("e", "x" + i, 100 + i)); // not subscribed: ignored
    same("no recovered event on the first connection", log.filter((e) => e[0] === "recovered").length, 0);
    const pub = settled(c.publish("a", { n: 1 }));
    const hist = settled(c.history("a"));
    ws.drop();
    await tick();
    check("a publish without its OK rejects with ConnectionLost", pub.state === "rejected" && pub.value instanceof m.ConnectionLost, String(pub.value));
    same("close event", log.filter((e) => e[0] === "close").map((e) => e[1].willReconnect), [true]);
    await until("a reconnect", () => f.conns.length === 2);
    ws = f.last();
    ws.id = "id-2";
    ws.open("id-2");
    same("the reconnect resumes per queue with per-server positions, then asks again", ws.sent, [
      { coremq_subscribe: ["a"], coremq_since: { a: [{ sent: 10.5, server: "s2:1" }, { sent: 11, server: "s1:1" }] } },
      { coremq_subscribe: ["b"], coremq_since: { b: { sent: 20, server: "s1:1" } } },
      { coremq_subscribe: ["c"] },
      { coremq_subscribe: ["d"] },
      { coremq_gethistory: ["a"] },
    ]);
    ws.reply(Object.assign({ recovered: { a: true } }, OK_SUB));
    ws.recv(msg("a", "s1:1", 11, { coremq_replay: true }));   // had it: dropped
    ws.recv(msg("a", "s2:1", 10.5, { coremq_replay: true })); // had it: dropped
    ws.recv(msg("a", "s1:1", 12, { coremq_replay: true }));
    ws.reply(Object.assign({ recovered: { b: false } }, OK_SUB));
    ws.reply(OK_SUB);
    ws.reply(OK_SUB);
    ws.reply({ history: { a: [] } });
    await tick();
    same("recovered events", log.filter((e) => e[0] === "recovered").map((e) => e[1]), [
      { queue: "a", recovered: true, since: [{ sent: 10.5, server: "s2:1" }, { sent: 11, server: "s1:1" }] },
      { queue: "b", recovered: false, since: [{ sent: 20, server: "s1:1" }] },
      { queue: "c", recovered: false, since: null },
    ]);
    same("each message once", got, ["a:s1:1:10", "a:s2:1:10.5", "a:s1:1:11", "b:s1:1:20", "a:s1:1:12"]);
    same("the history asked before the drop is answered", hist.value, { a: [] });
    same("open says reconnected", log.filter((e) => e[0] === "open").map((e) => e[1].reconnected), [false, true]);
    // At most 16 positions, the newest ones, earliest first.
    for (let i = 0; i < 20; i++) ws.recv(msg("c", "n" + String(i).padStart(2, "0"), 200 + i));
    const since = c.positions("c");
    same("16 positions", since.length, 16);
    same("the newest 16, earliest first", [since[0], since[15]], [{ sent: 204, server: "n04" }, { sent: 219, server: "n19" }]);
    // Unsubscribe: forgotten, and later messages of it ignored.
    const u = settled(c.unsubscribe("b"));
    same("unsubscribe is sent", ws.sent[ws.sent.length - 1], { coremq_unsubscribe: ["b"] });
    ws.reply({ response: "OK: Unsubscribe successful" });
    ws.recv(msg("b", "s1:1", 30));
    await tick();
    same("unsubscribe resolves", u.state, "resolved");
    check("b is gone", c.queues.indexOf("b") === -1 && c.positions("b").length === 0, c.queues);
    check("nothing of b after", got.indexOf("b:s1:1:30") === -1, got);
    c.close();
  }

  // ---- subscribe with a stored position; notices --------------------------------

  {
    const f = fake();
    const c = m.connect("ws://x/ws", { WebSocket: f.WS, reconnect: fast });
    const log = events(c, ["recovered", "error", "close"]);
    const ws = f.last();
    ws.id = "id-1";
    ws.open("id-1");
    const got = [];
    const s = settled(c.subscribe("e", (msg) => got.push(msg.coremq_sent), { since: { sent: 5, server: "s1:1" } }));
    same("since goes with the subscribe", ws.sent[0], { coremq_subscribe: ["e"], coremq_since: { e: { sent: 5, server: "s1:1" } } });
    ws.reply(Object.assign({ recovered: { e: true } }, OK_SUB));
    ws.recv({ queue: "e", coremq_sender: "p", coremq_sent: 5, coremq_server: "s1:1", coremq_replay: true });
    ws.recv({ queue: "e", coremq_sender: "p", coremq_sent: 6, coremq_server: "s1:1", coremq_replay: true });
    await tick();
    same("subscribe resolves", s.state, "resolved");
    same("recovered for it", log.filter((e) => e[0] === "recovered").map((e) => e[1].recovered), [true]);
    same("the position's own message is not delivered again", got, [6]);
    let threw = null;
    try { c.subscribe(["e", "f"], () => {}, { since: { sent: 1, server: "s" } }); } catch (e) { threw = e; }
    check("since with several queues is a TypeError", threw instanceof TypeError, String(threw));
    const denied = settled(c.subscribe("g", () => {}));
    ws.reply({ response: "ERROR: Permission denied: subscribe g" });
    await tick();
    check("a refused subscribe rejects", denied.state === "rejected" && denied.value instanceof m.PermissionDenied, String(denied.value));
    check("... and the queue is not kept", c.queues.indexOf("g") === -1, c.queues);
    const h = settled(c.history("e"));
    ws.reply({ response: "Unsubscribed: permission revoked", queues: ["e"] });
    ws.reply({ history: {} });
    await tick();
    const errs = log.filter((e) => e[0] === "error").map((e) => e[1]);
    check("a withdrawn subscription is a PermissionRevoked event", errs.length === 1 && errs[0] instanceof m.PermissionRevoked &&
      JSON.stringify(errs[0].queues) === '["e"]', errs.map(String));
    same("... that does not take a reply", h.value, {});
    check("... and e is no longer subscribed", c.queues.indexOf("e") === -1, c.queues);
    ws.reply({ response: "BYE" });
    ws.drop(1001);
    await tick();
    same("BYE makes the close a shutdown", log.filter((e) => e[0] === "close").map((e) => e[1].shutdown), [true]);
    c.close();
  }

  // ---- requests made while disconnected; close(); the connect timeout ----------

  {
    const f = fake();
    const c = m.connect("ws://x/ws", { WebSocket: f.WS, reconnect: fast, connectTimeout: 20 });
    const pub = settled(c.publish("q", { early: true }));
    await until("a second attempt after the connect timeout", () => f.conns.length >= 2);
    const ws = f.last();
    ws.id = "id-9";
    ws.open("id-9");
    same("what was asked while disconnected is sent once connected", ws.sent, [{ queue: "q", early: true }]);
    ws.reply(OK_SENT);
    await tick();
    same("... and answered", pub.state, "resolved");
    const h = settled(c.history("q"));
    const log = events(c, ["close", "reconnecting"]);
    c.close();
    await tick();
    check("close() rejects what is pending with ConnectionLost", h.state === "rejected" && h.value instanceof m.ConnectionLost, String(h.value));
    await new Promise((r) => setTimeout(r, 20));
    same("close() does not reconnect", [f.conns.length, log.filter((e) => e[0] === "reconnecting").length], [f.conns.length, 0]);
    const r = await within(c.publish("q", { late: 1 }));
    check("a publish after close() rejects", r.state === "rejected" && r.value instanceof m.ConnectionLost, r);
  }

  return failures;
}
