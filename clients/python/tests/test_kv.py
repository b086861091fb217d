"""The key-value store (docs/protocol.md §13) through both clients, against
a real broker (1 and 3 shards), each checked against the other client and
against memcached's protocol on the same broker."""

from __future__ import annotations

import asyncio
import socket
import time

import pytest

import coremq
from coremq import MessageQueue

from conftest import free_port


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 60))


def test_sync_get_set_delete_incr(broker):
    m = MessageQueue("127.0.0.1", broker.port)
    m.connect()
    assert m.kv_set("a", {"x": [1, "two"]}) is True
    assert m.kv_set("s", "text") is True
    assert m.kv_set("n", 41) is True
    assert m.kv_get("a", "s", "n", "missing") == {"a": {"x": [1, "two"]}, "s": "text", "n": 41}
    assert m.kv_get(["a", "n"]) == {"a": {"x": [1, "two"]}, "n": 41}
    assert m.kv_set("a", 1, only_if="absent") is False
    assert m.kv_set("fresh", 1, only_if="absent") is True
    assert m.kv_set("nowhere", 1, only_if="present") is False
    assert m.kv_set("fresh", 2, only_if="present") is True
    assert m.kv_incr("n") == 42
    assert m.kv_incr("counter", -5) == -5
    with pytest.raises(coremq.CoreMQError):
        m.kv_incr("s", 1)
    assert m.kv_delete("a", "s", "missing") == 2
    assert m.kv_delete("a") == 0
    assert m.kv_get("a", "s") == {}
    # Bad input is refused before anything is sent; the connection is fine.
    for bad in ("has space", "", "k" * 251, "caf\u00e9"):
        with pytest.raises(ValueError):
            m.kv_get(bad)
    with pytest.raises(ValueError):
        m.kv_set("k", 1, only_if="maybe")
    with pytest.raises(ValueError):
        m.kv_set("k", 1, ttl=0)
    with pytest.raises(TypeError):
        m.kv_incr("k", 1.5)
    assert m.kv_get("fresh", "counter") == {"fresh": 2, "counter": -5}
    m.close()


def test_sync_ttl_expires(broker):
    m = MessageQueue("127.0.0.1", broker.port)
    m.connect()
    assert m.kv_set("short", 1, ttl=0.3)
    assert m.kv_set("long", 2)
    deadline = time.monotonic() + 10
    while "short" in m.kv_get("short"):
        assert time.monotonic() < deadline, "a 0.3 s ttl did not expire in 10 s"
        time.sleep(0.05)
    assert m.kv_get("long") == {"long": 2}
    m.close()


def test_asyncio_get_set_delete_incr_and_the_other_client_sees_it(broker):
    async def main():
        async with coremq.connect("127.0.0.1", broker.port) as c:
            assert await c.kv_set("a", [1, 2]) is True
            assert await c.kv_set("a", 0, only_if="absent") is False
            assert await c.kv_set("t", "gone soon", ttl=0.2) is True
            # Pipelined: each reply pairs with its request.
            got = await asyncio.gather(*(c.kv_incr("n", i) for i in range(1, 11)))
            assert sorted(got)[-1] == 55 and len(set(got)) == 10
            assert await c.kv_get("a", "n") == {"a": [1, 2], "n": 55}
            with pytest.raises(coremq.CoreMQError):
                await c.kv_incr("a")
            with pytest.raises(ValueError):
                await c.kv_delete("bad key")
            deadline = time.monotonic() + 10
            while "t" in await c.kv_get("t"):
                assert time.monotonic() < deadline, "a 0.2 s ttl did not expire"
                await asyncio.sleep(0.05)
            assert await c.kv_delete("a", "t") == 1
    run(main())
    m = MessageQueue("127.0.0.1", broker.port)
    m.connect()
    assert m.kv_get("a", "n") == {"n": 55}
    m.close()


def test_keys_meet_memcached_clients(make_broker):
    port = free_port()
    b = make_broker(2, memcached_port=str(port))
    m = MessageQueue("127.0.0.1", b.port)
    m.connect()
    assert m.kv_set("greeting", "hello")
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"get greeting\r\nset from.mc 0 0 3\r\nabc\r\n")
        want = b"VALUE greeting 0 5\r\nhello\r\nEND\r\nSTORED\r\n"
        got = b""
        while len(got) < len(want):
            chunk = s.recv(4096)
            assert chunk, "memcached port closed"
            got += chunk
        assert got == want
    assert m.kv_get("from.mc") == {"from.mc": "abc"}
    m.close()
