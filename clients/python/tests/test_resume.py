"""A broker restart mid-stream: the clients reconnect and resume with
``coremq_since``. With durable history (``data_dir``) nothing is missed and
no gap is reported; without it the restarted node cannot vouch for the
resume and the client reports ``recovered: false`` as a :class:`Gap`."""

from __future__ import annotations

import asyncio

import pytest

import coremq
from coremq import MessageQueue

SHARDS = pytest.mark.parametrize("shards", [1, 3], ids=["1shard", "3shards"])


def collect(m: MessageQueue, queue: str, n: int, tries: int = 40):
    """``n`` messages of ``queue`` (BYE and other notices skipped)."""
    got = []
    for _ in range(tries * 4):
        q, msg = m.get_message(timeout=0.25)
        if q == queue:
            got.append(msg)
            if len(got) == n:
                return got
    pytest.fail("got %d of %d messages: %r" % (len(got), n, got))


def publish_range(port: int, queue: str, numbers) -> None:
    p = MessageQueue("127.0.0.1", port)
    for i in numbers:
        assert p.send_message(queue, {"i": i})[1] == {"response": "OK: Message sent"}
    p.close()


@SHARDS
def test_sync_resume_after_restart_durable_misses_nothing(make_broker, tmp_path, shards):
    b = make_broker(shards, data_dir=str(tmp_path / "data"), fsync="always")
    gaps = []
    sub = MessageQueue("127.0.0.1", b.port, backoff=(0.05, 0.5), on_gap=gaps.append)
    sub.subscribe("stream")
    publish_range(b.port, "stream", range(1, 6))
    assert [m["i"] for m in collect(sub, "stream", 5)] == [1, 2, 3, 4, 5]
    first_id = sub.connection_id

    b.restart()
    # Published while the subscriber is away (it reconnects on its next call).
    publish_range(b.port, "stream", range(6, 11))
    got = collect(sub, "stream", 5)
    assert [m["i"] for m in got] == [6, 7, 8, 9, 10]
    assert all(m.get("coremq_replay") is True for m in got)
    assert sub.connection_id != first_id
    assert sub.gaps == [] and gaps == []
    # Live again after the replay, and nothing twice.
    publish_range(b.port, "stream", [11])
    assert [m["i"] for m in collect(sub, "stream", 1)] == [11]
    assert sub.get_message(timeout=0.3) == (None, None)
    sub.close()


def test_sync_resume_without_durable_history_reports_the_gap(make_broker):
    b = make_broker(1)
    gaps = []
    sub = MessageQueue("127.0.0.1", b.port, backoff=(0.05, 0.5), on_gap=gaps.append)
    sub.subscribe("volatile", "quiet")
    publish_range(b.port, "volatile", [1, 2])
    last = collect(sub, "volatile", 2)[-1]

    b.restart()
    publish_range(b.port, "volatile", [3])
    assert [m["i"] for m in collect(sub, "volatile", 1)] == [3]
    # "volatile" resumed after message 2 on a node that no longer knows it:
    # recovered false; "quiet" had no message, so no position to resume from.
    want = {"volatile": coremq.Position(last["coremq_sent"], last["coremq_server"]),
            "quiet": None}
    assert {g.queue: g.since for g in sub.gaps} == want
    assert gaps == sub.gaps
    sub.close()


@SHARDS
def test_asyncio_resume_after_restart(make_broker, tmp_path, shards):
    b = make_broker(shards, data_dir=str(tmp_path / "data"), fsync="always")

    async def main():
        gaps = []
        async with coremq.connect("127.0.0.1", b.port, backoff=(0.05, 0.5),
                                  on_gap=gaps.append) as c:
            sub = await c.subscribe("astream")
            async with coremq.connect("127.0.0.1", b.port, reconnect=False) as p:
                for i in range(1, 4):
                    await p.publish("astream", {"i": i})
            got = [(await sub.get(timeout=10))["i"] for _ in range(3)]
            first_id = c.connection_id
            await asyncio.get_running_loop().run_in_executor(None, b.stop)
            # Give the client's reconnect loop no broker for a moment; then
            # publish while it is still away (or not yet resubscribed).
            await asyncio.get_running_loop().run_in_executor(None, b.restart)
            async with coremq.connect("127.0.0.1", b.port) as p:
                for i in range(4, 8):
                    await p.publish("astream", {"i": i})
            got += [(await sub.get(timeout=15))["i"] for _ in range(4)]
            assert got == list(range(1, 8))
            assert c.connection_id != first_id
            assert gaps == [] and c.gaps == []
            # Requests work on the new connection.
            assert [m["i"] for m in (await c.history("astream"))["astream"]] == list(range(1, 8))
            with pytest.raises(asyncio.TimeoutError):
                await sub.get(timeout=0.3)
    asyncio.run(asyncio.wait_for(main(), 90))


def test_asyncio_gap_without_durable_history(make_broker):
    b = make_broker(1)

    async def main():
        async with coremq.connect("127.0.0.1", b.port, backoff=(0.05, 0.5)) as c:
            sub = await c.subscribe("av")
            async with coremq.connect("127.0.0.1", b.port) as p:
                await p.publish("av", {"i": 1})
            await sub.get(timeout=10)
            await asyncio.get_running_loop().run_in_executor(None, b.restart)
            async with coremq.connect("127.0.0.1", b.port) as p:
                await p.publish("av", {"i": 2})
            assert (await sub.get(timeout=15))["i"] == 2
            assert [g.queue for g in c.gaps] == ["av"]
            assert c.gaps[0].since is not None
    asyncio.run(asyncio.wait_for(main(), 90))
