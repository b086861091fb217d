"""The asyncio client against a real broker (1 and 3 shards)."""

from __future__ import annotations

import asyncio

import pytest

import coremq

T = 10  # seconds: the bound on every wait


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 60))


def test_publish_returns_at_ack_and_subscribe_iterates(broker):
    async def main():
        async with coremq.connect("127.0.0.1", broker.port) as sub_c, \
                coremq.connect("127.0.0.1", broker.port) as pub_c:
            assert sub_c.welcome_message["response"] == "OK: Welcome to CoreMQ server"
            assert sub_c.connection_id != pub_c.connection_id
            sub = await sub_c.subscribe("aq")
            # Pipelined publishes: each future resolves with its own OK.
            acks = await asyncio.gather(*(pub_c.publish("aq", {"i": i}) for i in range(100)))
            assert acks == [{"response": "OK: Message sent"}] * 100
            got = []
            async for msg in sub:
                assert msg.queue == "aq"
                assert msg["coremq_sender"] == pub_c.connection_id
                got.append(msg["i"])
                if len(got) == 100:
                    break
            assert got == list(range(100))
            await sub.unsubscribe()
            with pytest.raises(StopAsyncIteration):
                await sub.get(timeout=T)
    run(main())


def test_replies_pair_in_order_with_errors_between(broker):
    """An ERROR reply fails its own future only; the others still resolve."""
    async def main():
        async with coremq.connect("127.0.0.1", broker.port) as c:
            results = await asyncio.gather(
                c.publish("ok.1", {"a": 1}),
                c.publish("$coremq.nope", {"a": 2}),
                c.history("ok.1"),
                c.publish("ok.2", {"a": 3}),
                return_exceptions=True)
            assert results[0] == {"response": "OK: Message sent"}
            assert isinstance(results[1], coremq.CoreMQError)
            assert results[1].response.startswith("ERROR")
            assert [m["a"] for m in results[2]["ok.1"]] == [1]
            assert results[3] == {"response": "OK: Message sent"}
    run(main())


def test_point_to_point_and_history(broker):
    async def main():
        async with coremq.connect("127.0.0.1", broker.port) as a, \
                coremq.connect("127.0.0.1", broker.port) as b:
            inbox = await a.direct()
            await b.send(a.connection_id, {"to": "a"})
            msg = await inbox.get(timeout=T)
            assert msg.queue == a.connection_id and msg["to"] == "a"
            assert msg["coremq_sender"] == b.connection_id
            with pytest.raises(coremq.PermissionDenied):
                await b.subscribe(a.connection_id)
            for i in range(3):
                await b.publish("ah", {"i": i})
            h = await a.history("ah", "empty")
            assert list(h) == ["ah"] and [m["i"] for m in h["ah"]] == [0, 1, 2]
    run(main())


def test_two_subscriptions_share_a_queue(broker):
    async def main():
        async with coremq.connect("127.0.0.1", broker.port) as c, \
                coremq.connect("127.0.0.1", broker.port) as p:
            s1 = await c.subscribe("shared.q")
            s2 = await c.subscribe("shared.q", "other.q")
            await p.publish("shared.q", {"n": 1})
            assert (await s1.get(timeout=T))["n"] == 1
            assert (await s2.get(timeout=T))["n"] == 1
            await s1.unsubscribe()  # s2 still holds shared.q
            await p.publish("shared.q", {"n": 2})
            assert (await s2.get(timeout=T))["n"] == 2
    run(main())


def test_encoder_decoder_and_ack_off(broker):
    import json
    seen = []

    def enc(o):
        seen.append(o)
        return json.dumps(o)

    async def main():
        async with coremq.connect("127.0.0.1", broker.port,
                                  decoder=lambda s: json.loads(s, parse_float=str)) as c, \
                coremq.connect("127.0.0.1", broker.port, encoder=enc) as p:
            sub = await c.subscribe("enc")
            await p.set_options(ack=False)
            assert await p.publish("enc", {"x": 1.5}) is None
            msg = await sub.get(timeout=T)
            assert msg["x"] == "1.5"  # the decoder's float handling
            assert seen == [{"x": 1.5}]
    run(main())


def test_a_frame_the_decoder_refuses_is_skipped_and_recorded(broker):
    import json

    def picky(s):
        d = json.loads(s)
        if isinstance(d, dict) and d.get("bad"):
            raise ValueError("refused by the decoder")
        return d

    async def main():
        async with coremq.connect("127.0.0.1", broker.port, decoder=picky) as c, \
                coremq.connect("127.0.0.1", broker.port) as p:
            sub = await c.subscribe("picky")
            first_id = c.connection_id
            await p.publish("picky", {"bad": True})
            await p.publish("picky", {"good": 1})
            assert (await sub.get(timeout=T))["good"] == 1
            assert len(c.errors) == 1 and "refused by the decoder" in str(c.errors[0])
            assert c.connection_id == first_id
    run(main())


def test_subscribe_since_a_stored_position(broker):
    async def main():
        async with coremq.connect("127.0.0.1", broker.port) as c:
            for i in range(5):
                await c.publish("asince", {"i": i})
            second = (await c.history("asince"))["asince"][1]
            pos = coremq.Position(second["coremq_sent"], second["coremq_server"])
            async with coremq.connect("127.0.0.1", broker.port) as s:
                sub = await s.subscribe("asince", since={"asince": pos})
                assert sub.reply["recovered"] == {"asince": True}
                got = [await sub.get(timeout=T) for _ in range(3)]
                assert [m["i"] for m in got] == [2, 3, 4] and all(m.replay for m in got)
                assert got[-1].position.server == pos.server
                await c.publish("asince", {"i": 5})
                live = await sub.get(timeout=T)
                assert live["i"] == 5 and not live.replay
                assert s.gaps == []
                # A position from before anything the broker holds: a gap.
                old = coremq.Position(1.0, pos.server)
                sub2 = await s.subscribe("asince.other", since={"asince.other": old})
                assert sub2.reply["recovered"] == {"asince.other": False}
                assert s.gaps == [coremq.Gap("asince.other", old)]
            with pytest.raises(ValueError):
                c.subscribe("a", since={"b": pos})
    run(main())
