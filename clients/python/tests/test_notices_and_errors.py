"""Frames that answer no request, and replies that answer none the client
waits for: the ``drop`` policy's ``WARN: Dropped N messages`` (§9), errors of
publishes sent with ``ack`` off, ``Unsubscribed: permission revoked`` after a
reload (§8), refused subscribes, and broken or oversized framing. Each must
neither shift the pairing of replies nor survive into a reconnect."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import threading
import time

import pytest

import coremq
from coremq import MessageQueue
from coremq import _protocol as p
from conftest import hs256_token

PASSWORD = "alice-pw-123"
T = 10


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 60))


# -- WARN: Dropped N messages (defect 1) -------------------------------------


def drop_broker(make_broker):
    # One shard: a publisher's ack then comes after the delivery (and its
    # notice) was queued to the subscriber.
    return make_broker(1, slow_consumer_policy="dq.*:drop,*:block", max_message_size="16384", max_pending="65536")


def drops(status) -> int:
    return sum(s.get("drops", 0) for s in status["shards"])


def flood_until_drops(pub: MessageQueue, queue: str) -> int:
    """Publish (ack off) to a subscriber that does not read until the broker
    counts drops; returns the count. The status requests are fenced."""
    pub.set_options(ack=False)
    pad = "x" * 4000
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        for i in range(100):
            assert pub.send_message(queue, {"pad": pad, "i": i}) == (None, None)
        n = drops(pub.status())
        if n > 0:
            pub.set_options(ack=None)
            return n
    pytest.fail("the broker dropped nothing")


def test_unit_drop_notice_is_a_notice_not_a_reply():
    n = {"response": "WARN: Dropped 12 messages", "queue": "q"}
    assert p.dropped_notice(n) == ("q", 12)
    assert p.is_notice(n) and not p.is_reply("id", "id", n)
    # Without its queue it is not one (as the Rust client).
    assert p.dropped_notice({"response": "WARN: Dropped 12 messages"}) is None
    assert p.dropped_notice({"response": "OK: Message sent"}) is None


def test_sync_drop_notice_is_counted_not_taken_for_a_reply(make_broker):
    b = drop_broker(make_broker)
    m = MessageQueue("127.0.0.1", b.port, timeout=10)
    pub = MessageQueue("127.0.0.1", b.port, timeout=10)
    m.subscribe("dq.a")
    flood_until_drops(pub, "dq.a")
    while m.get_message(timeout=0.5) != (None, None):  # catch up
        pass
    assert m.dropped == {}
    pub.send_message("dq.a", {"after": 1})  # preceded by the notice for m
    # The notice waits before this request's reply: it is not the reply.
    status = m.status()
    assert "shards" in status, status
    total = drops(status)
    assert m.dropped == {"dq.a": total}
    # get_message still returns the notice frame, then the message.
    q, notice = m.get_message(timeout=T)
    assert q == m.connection_id
    assert notice == {"response": "WARN: Dropped %d messages" % total, "queue": "dq.a"}
    q, msg = m.get_message(timeout=T)
    assert q == "dq.a" and msg["after"] == 1
    assert m.send_message("other", {"x": 1})[1] == {"response": "OK: Message sent"}
    m.close()
    pub.close()


def test_aio_drop_notice_is_counted_not_paired(make_broker):
    b = drop_broker(make_broker)
    pub = MessageQueue("127.0.0.1", b.port, timeout=10)

    async def main():
        async with coremq.connect("127.0.0.1", b.port, timeout=T) as c:
            sub = await c.subscribe("dq.a")
            # Blocking calls: the event loop, so the client, reads nothing.
            flood_until_drops(pub, "dq.a")
            size = -1
            while sub._inbox.qsize() != size:  # until the client caught up
                size = sub._inbox.qsize()
                await asyncio.sleep(0.3)
            assert c.dropped == {}
            pub.send_message("dq.a", {"after": 1})  # the notice is on its way
            # Written before the read loop runs again: the notice comes
            # while this request waits for its reply.
            status = await asyncio.ensure_future(c.status())
            assert "shards" in status, status
            total = drops(status)
            while True:
                msg = await sub.get(timeout=T)
                if msg.get("after"):
                    break
            # Counted before the message after it reached the subscription.
            assert c.dropped == {"dq.a": total}
            assert await c.publish("other", {"x": 1}) == {"response": "OK: Message sent"}
    run(main())
    pub.close()


# -- errors of publishes with ack off (defect 2) -----------------------------


def test_sync_ack_off_publish_error_does_not_shift_replies(auth_broker):
    m = MessageQueue("127.0.0.1", auth_broker.port, user="alice", password=PASSWORD)
    m.set_options(ack=False)
    assert m.send_message("bob.secret", {"a": 1}) == (None, None)   # refused
    assert m.send_message("alice.inbox", {"a": 2}) == (None, None)  # fine
    # The refusal is not this request's reply, nor does it shift later ones.
    hist = m.get_history("alice.inbox")[1]
    assert hist["history"]["alice.inbox"][0]["a"] == 2
    assert [type(e) for e in m.publish_errors] == [coremq.PermissionDenied]
    assert m.last_error.response == "ERROR: Permission denied: publish bob.secret"
    # One that comes while no request waits is not a message either.
    m.send_message("bob.other", {"a": 3})
    assert m.get_message(timeout=1) == (None, None)
    assert m.last_error.response == "ERROR: Permission denied: publish bob.other"
    m.send_message("bob.third", {"a": 4})
    assert m.set_options(ack=None) == (m.connection_id, {"response": "OK: Options set"})
    assert len(m.publish_errors) == 3
    assert m.send_message("alice.inbox", {"a": 5})[1] == {"response": "OK: Message sent"}
    with pytest.raises(coremq.PermissionDenied):
        m.send_message("bob.secret", {"a": 6})  # ack on: raised again
    assert len(m.publish_errors) == 3
    m.close()


def test_aio_ack_off_publish_error_does_not_shift_replies(auth_broker):
    async def main():
        async with coremq.connect("127.0.0.1", auth_broker.port, user="alice",
                                  password=PASSWORD, timeout=T) as c:
            await c.set_options(ack=False)
            assert await c.publish("bob.secret", {"a": 1}) is None
            assert await c.publish("alice.inbox", {"a": 2}) is None
            hist, hist2 = await asyncio.gather(c.history("alice.inbox"), c.history("shared"))
            assert hist["alice.inbox"][0]["a"] == 2 and hist2 == {}
            assert [type(e) for e in c.publish_errors] == [coremq.PermissionDenied]
            assert c.last_error.response == "ERROR: Permission denied: publish bob.secret"
            assert c.errors == []
            await c.publish("bob.x", {"a": 3})
            assert await c.set_options(ack=None) == {"response": "OK: Options set"}
            assert len(c.publish_errors) == 2
            with pytest.raises(coremq.PermissionDenied):
                await c.publish("bob.secret", {"a": 4})
            assert (await c.history("alice.inbox"))["alice.inbox"][0]["a"] == 2
    run(main())


# -- Unsubscribed: permission revoked (defect 3) -----------------------------


def revoke_alice_inbox(broker) -> None:
    users = broker.extra["users_file"]
    with open(users) as f:
        text = f.read()
    assert "subscribe = alice.*, shared" in text
    with open(users, "w") as f:
        f.write(text.replace("subscribe = alice.*, shared", "subscribe = shared"))
    broker.proc.send_signal(signal.SIGHUP)


def test_sync_revoked_queue_is_not_resubscribed(auth_broker):
    m = MessageQueue("127.0.0.1", auth_broker.port, user="alice", password=PASSWORD,
                     backoff=(0.05, 0.5), reconnect_timeout=5)
    m.subscribe("alice.inbox", "shared")
    revoke_alice_inbox(auth_broker)
    for _ in range(20):
        q, msg = m.get_message(timeout=0.5)
        if q == m.connection_id:
            break
    assert msg == {"response": "Unsubscribed: permission revoked", "queues": ["alice.inbox"]}
    assert m.subscriptions == ["shared"]
    auth_broker.restart()
    pub = MessageQueue("127.0.0.1", auth_broker.port, user="alice", password=PASSWORD)
    for _ in range(20):
        q, msg = m.get_message(timeout=0.25)  # BYE, then the reconnect
        if m.socket is not None and q is None:
            break
    pub.send_message("shared", {"n": 1})
    for _ in range(20):
        q, msg = m.get_message(timeout=0.5)
        if q == "shared":
            break
    assert q == "shared" and msg["n"] == 1
    m.close()
    pub.close()


def test_aio_revoked_queue_is_not_resubscribed(auth_broker):
    async def main():
        async with coremq.connect("127.0.0.1", auth_broker.port, user="alice",
                                  password=PASSWORD, backoff=(0.05, 0.5),
                                  reconnect_timeout=5) as c:
            sub = await c.subscribe("alice.inbox", "shared")
            revoke_alice_inbox(auth_broker)
            for _ in range(50):
                if "alice.inbox" not in c._subs:
                    break
                await asyncio.sleep(0.1)
            assert list(c._subs) == ["shared"]
            first = c.connection_id
            auth_broker.restart()
            for _ in range(100):
                if c.connection_id != first and c._ready.is_set():
                    break
                await asyncio.sleep(0.1)
            async with coremq.connect("127.0.0.1", auth_broker.port, user="alice",
                                      password=PASSWORD) as a:
                await a.publish("shared", {"n": 1})
            assert (await sub.get(timeout=T))["n"] == 1
            await sub.unsubscribe()  # the revoked queue is not sent again
    run(main())


# -- a refused subscribe (defect 4) ------------------------------------------


def test_sync_refused_subscribe_is_not_kept_for_reconnects(auth_broker):
    m = MessageQueue("127.0.0.1", auth_broker.port, token=hs256_token("bob"),
                     backoff=(0.05, 0.5), reconnect_timeout=5)
    m.subscribe("shared")
    with pytest.raises(coremq.PermissionDenied):
        m.subscribe("shared", "alice.inbox")
    with pytest.raises(coremq.PermissionDenied):
        m.subscribe_since("alice.x", 1.0, "pytest:1")
    assert m.subscriptions == ["shared"]
    auth_broker.restart()
    pub = MessageQueue("127.0.0.1", auth_broker.port, user="alice", password=PASSWORD)
    for _ in range(20):
        q, msg = m.get_message(timeout=0.25)
        if m.socket is not None and q is None:
            break
    pub.send_message("shared", {"n": 2})
    for _ in range(20):
        q, msg = m.get_message(timeout=0.5)
        if q == "shared":
            break
    assert q == "shared" and msg["n"] == 2
    m.close()
    pub.close()


def test_aio_refused_subscribe_is_not_kept(auth_broker):
    async def main():
        async with coremq.connect("127.0.0.1", auth_broker.port,
                                  token=hs256_token("bob")) as c:
            await c.subscribe("shared")
            with pytest.raises(coremq.PermissionDenied):
                await c.subscribe("alice.inbox", "shared")
            assert list(c._subs) == ["shared"] and len(c._subs["shared"]) == 1
    run(main())


# -- broken framing and oversized frames (defects 5, 6) ----------------------


class FakeServer:
    """A listener whose n-th connection gets a welcome and then, for each
    request read, ``script(n, queue, request)`` as raw bytes."""

    def __init__(self, script) -> None:
        self.script = script
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.conns = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            n, self.conns = self.conns, self.conns + 1
            threading.Thread(target=self._serve, args=(c, n), daemon=True).start()

    def _serve(self, c: socket.socket, n: int) -> None:
        cid = "conn-%d" % n
        r = p.FrameReader()
        with c:
            c.sendall(p.encode_frame(cid, json.dumps({"response": "OK: Welcome to CoreMQ server"})))
            while True:
                try:
                    data = c.recv(65536)
                except OSError:
                    return
                if not data:
                    return
                r.feed(data)
                while True:
                    f = r.next()
                    if f is None:
                        break
                    c.sendall(self.script(n, cid, json.loads(f[1])))

    def close(self) -> None:
        self.sock.close()


def reply(cid: str, obj) -> bytes:
    return p.encode_frame(cid, json.dumps(obj))


def test_sync_framing_error_closes_the_connection():
    def script(n, cid, req):
        if n == 0 and "coremq_status" in req:
            return b"xx this is not a frame\n"
        if n == 0:  # a frame that cannot be decoded: framing intact
            return p.encode_frame(cid, b"{not json")
        return reply(cid, {"conn": n})
    srv = FakeServer(script)
    m = MessageQueue("127.0.0.1", srv.port, timeout=5, backoff=(0.01, 0.05))
    m.connect()
    with pytest.raises(coremq.ProtocolError):
        m.get_history("q")  # undecodable JSON: the connection stays
    assert m.socket is not None and m.connection_id == "conn-0"
    with pytest.raises(coremq.FramingError):
        m.status()
    assert m.socket is None  # not kept with the bad bytes
    assert m.status() == {"conn": 1}
    assert m.connection_id == "conn-1"
    m.close()
    srv.close()


def test_unit_frame_length_limit():
    r = p.FrameReader(max_frame=10)
    r.feed(b"+10 q 12345678")
    assert r.next() == ("q", b"12345678")
    r.feed(b"+11 q ")
    with pytest.raises(p.FramingError):
        r.next()  # at once, before the body
    for header in (b"+1073741824 q ", b"+99999999999999999999 q "):
        r = p.FrameReader()
        r.feed(header)
        with pytest.raises(p.FramingError):
            r.next()


def test_sync_oversized_frame_is_refused_at_once():
    def script(n, cid, req):
        if n == 0:
            return b"+99999999999999999999 " + cid.encode() + b" {"
        return reply(cid, {"conn": n, "pad": "x" * 500})
    srv = FakeServer(script)
    m = MessageQueue("127.0.0.1", srv.port, timeout=5, backoff=(0.01, 0.05), max_frame=1000)
    m.connect()
    t = time.monotonic()
    with pytest.raises(coremq.FramingError):
        m.status()
    assert time.monotonic() - t < 2 and m.socket is None
    assert m.status()["conn"] == 1  # under the limit
    m.close()
    srv.close()


def test_aio_oversized_frame_drops_the_connection():
    def script(n, cid, req):
        return reply(cid, {"conn": n, "pad": "x" * (2000 if n == 0 else 10)})
    srv = FakeServer(script)

    async def main():
        async with coremq.connect("127.0.0.1", srv.port, timeout=5, backoff=(0.01, 0.05),
                                  max_frame=1000) as c:
            # Conn 0's reply is over the limit: the connection is made again
            # and the request with it.
            assert (await c.status())["conn"] == 1
    run(main())
    srv.close()
