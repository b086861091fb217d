"""Reconnect on the publishing side, and giving up: both clients."""

from __future__ import annotations

import asyncio

import pytest

import coremq
from coremq import MessageQueue


def test_sync_publisher_reconnects_after_restart(make_broker):
    b = make_broker(3)
    pub = MessageQueue("127.0.0.1", b.port, backoff=(0.05, 0.5))
    assert pub.send_message("rq", {"n": 1})[1]["response"] == "OK: Message sent"
    old = pub.connection_id
    b.restart()
    # The idle connection's BYE and end of stream are noticed before the
    # next publish is written: it goes out on a new connection.
    assert pub.send_message("rq", {"n": 2})[1]["response"] == "OK: Message sent"
    assert pub.connection_id != old
    assert [m["n"] for m in pub.get_history("rq")[1]["history"]["rq"]] == [2]
    pub.close()


def test_sync_publish_into_a_dropped_connection_is_reported_lost(make_broker):
    b = make_broker(1)
    pub = MessageQueue("127.0.0.1", b.port, reconnect_timeout=1, backoff=(0.05, 0.2))
    pub.send_message("lost", {"n": 1})
    b.kill()  # no BYE; and nothing to reconnect to
    with pytest.raises(coremq.ConnectionLost):
        pub.send_message("lost", {"n": 2})


def test_sync_gives_up_after_reconnect_timeout(make_broker):
    b = make_broker(1)
    sub = MessageQueue("127.0.0.1", b.port, reconnect_timeout=1, backoff=(0.05, 0.2))
    sub.subscribe("gone")
    b.stop()
    with pytest.raises(coremq.ConnectionLost):
        for _ in range(10):  # BYE first, then the reconnect that fails
            sub.get_message(timeout=0.5)


def test_sync_without_reconnect_raises(make_broker):
    b = make_broker(1)
    sub = MessageQueue("127.0.0.1", b.port, reconnect=False)
    sub.subscribe("x")
    b.kill()  # no BYE: the connection just drops
    with pytest.raises(OSError):
        for _ in range(10):
            sub.get_message(timeout=0.5)


def test_asyncio_publisher_waits_for_the_reconnect(make_broker):
    b = make_broker(3)

    async def main():
        async with coremq.connect("127.0.0.1", b.port, backoff=(0.05, 0.5)) as c:
            await c.publish("arq", {"n": 1})
            old = c.connection_id
            await asyncio.get_running_loop().run_in_executor(None, b.restart)
            # Published after the client noticed (or while it reconnects):
            # waits for the new connection, then resolves with its OK.
            for _ in range(50):
                if c.connection_id != old:
                    break
                await asyncio.sleep(0.1)
            assert c.connection_id != old
            assert await c.publish("arq", {"n": 2}) == {"response": "OK: Message sent"}
            assert [m["n"] for m in (await c.history("arq"))["arq"]] == [2]
    asyncio.run(asyncio.wait_for(main(), 60))


def test_asyncio_gives_up_and_ends_iteration_with_the_error(make_broker):
    b = make_broker(1)

    async def main():
        async with coremq.connect("127.0.0.1", b.port, reconnect_timeout=1,
                                  backoff=(0.05, 0.2)) as c:
            sub = await c.subscribe("gone")
            await asyncio.get_running_loop().run_in_executor(None, b.stop)
            with pytest.raises(coremq.ConnectionLost):
                async for _ in sub:
                    pass
            with pytest.raises(coremq.ConnectionLost):  # and again, not a hang
                await sub.get(timeout=5)
            with pytest.raises(coremq.ConnectionLost):
                await c.publish("gone", {"n": 1})
    asyncio.run(asyncio.wait_for(main(), 60))
