"""The synchronous MessageQueue against a real broker (1 and 3 shards)."""

from __future__ import annotations

import datetime
import decimal
import json

import pytest

import coremq
from coremq import MessageQueue


def wait_message(m: MessageQueue, tries: int = 10):
    """The next message within ``tries`` seconds, or fail."""
    for _ in range(tries):
        q, msg = m.get_message(timeout=1)
        if q is not None:
            return q, msg
    pytest.fail("no message within %s s" % tries)


def test_original_client_calls_work_the_same(broker):
    """The original README's session and the original's return shapes:
    welcome_message and connection_id after connect(), (queue, reply)
    tuples from subscribe/send_message/get_history/unsubscribe/set_options,
    (None, None) from get_message on timeout, strings as coremq_string."""
    m = MessageQueue("127.0.0.1", broker.port)
    assert m.socket is None and m.connection_id is None
    m.connect()
    m.connect()  # a second connect is a no-op, as in the original
    assert m.welcome_message["response"] == "OK: Welcome to CoreMQ server"
    assert m.welcome_message["server"] == "pytest"
    assert len(m.connection_id) == 36

    p = MessageQueue("127.0.0.1", broker.port)
    p.connect()
    assert m.subscribe("test") == (m.connection_id, {"response": "OK: Subscribe successful"})
    assert m.subscriptions == ["test"]
    assert p.send_message(queue="test", message=dict(a=1)) == \
        (p.connection_id, {"response": "OK: Message sent"})
    q, msg = wait_message(m)
    assert q == "test" and msg["a"] == 1
    assert msg["coremq_sender"] == p.connection_id
    assert msg["coremq_server"] == "pytest:%d" % broker.port
    assert isinstance(msg["coremq_sent"], float)

    p.send_message("test", "just a string")
    q, msg = wait_message(m)
    assert msg["coremq_string"] == "just a string"

    q, reply = m.get_history("test")
    assert q == m.connection_id
    assert [x.get("a", x.get("coremq_string")) for x in reply["history"]["test"]] == \
        [1, "just a string"]
    # With no argument: the subscriptions, as in the original.
    assert m.get_history()[1] == reply

    assert m.set_options(echo=True) == (m.connection_id, {"response": "OK: Options set"})
    assert m.options == {"echo": True}
    m.send_message("test", {"own": 1})
    q, msg = wait_message(m)
    assert msg["own"] == 1
    m.set_options(echo=None)
    assert m.options == {}

    assert m.unsubscribe("test") == (m.connection_id, {"response": "OK: Unsubscribe successful"})
    assert m.subscriptions == []
    p.send_message("test", {"after": 1})
    assert m.get_message(timeout=0.3) == (None, None)

    with pytest.raises(ValueError):
        m.subscribe()
    m.close()
    assert m.socket is None
    # After close(), calls connect again (the original's behaviour).
    assert m.send_message("test", {"x": 1})[1] == {"response": "OK: Message sent"}
    m.close()
    p.close()


def test_the_original_module_stress_and_message_types(broker, capsys):
    """What else of the original's surface programs use: ``coremq.client``
    as the module, ``stress()`` (publishes ``{"iteration": i}`` and prints
    the rate) and ValueError for a message that is neither a dict nor a
    string (nothing is sent)."""
    from coremq.client import MessageQueue as Original
    assert Original is MessageQueue
    sub = MessageQueue("127.0.0.1", broker.port)
    sub.subscribe("stress.q")
    p = Original("127.0.0.1", broker.port)
    rate = p.stress("stress.q", count=50)
    assert rate > 0
    out = capsys.readouterr().out
    assert "Stress results:" in out and "Iterations: 50" in out
    got = [wait_message(sub)[1]["iteration"] for _ in range(50)]
    assert got == list(range(50))
    for bad in ([1, 2], 7, None):
        with pytest.raises(ValueError):
            p.send_message("stress.q", bad)
    # None of them reached the broker: the next message is the string's.
    p.send_message("stress.q", "a string still goes")
    assert wait_message(sub)[1]["coremq_string"] == "a string still goes"
    sub.close()
    p.close()


def test_pubsub_several_queues_in_order(broker):
    sub = MessageQueue("127.0.0.1", broker.port)
    pub = MessageQueue("127.0.0.1", broker.port)
    sub.subscribe(["q.a", "q.b"])
    for i in range(50):
        pub.send_message("q.a" if i % 2 else "q.b", {"i": i})
    got = {"q.a": [], "q.b": []}
    for _ in range(50):
        q, msg = wait_message(sub)
        got[q].append(msg["i"])
    assert got["q.a"] == list(range(1, 50, 2))
    assert got["q.b"] == list(range(0, 50, 2))
    sub.close()
    pub.close()


def test_point_to_point_by_connection_id(broker):
    a = MessageQueue("127.0.0.1", broker.port)
    b = MessageQueue("127.0.0.1", broker.port)
    a.connect()
    b.connect()
    b.send_message(a.connection_id, {"hello": "a"})
    q, msg = wait_message(a)
    assert q == a.connection_id
    assert msg["hello"] == "a" and msg["coremq_sender"] == b.connection_id
    # Private: b cannot subscribe to a's id.
    with pytest.raises(coremq.PermissionDenied) as e:
        b.subscribe(a.connection_id)
    assert "Permission denied: subscribe" in e.value.response
    # The connection stays usable after the refusal.
    assert b.send_message(a.connection_id, {"again": 1})[1]["response"] == "OK: Message sent"
    assert wait_message(a)[1]["again"] == 1
    a.close()
    b.close()


def test_history_window_and_typed_errors(broker):
    m = MessageQueue("127.0.0.1", broker.port)
    for i in range(12):
        m.send_message("hist", {"i": i})
    _, reply = m.get_history("hist", "nothing-here")
    assert [x["i"] for x in reply["history"]["hist"]] == list(range(2, 12))
    assert "nothing-here" not in reply["history"]
    with pytest.raises(coremq.CoreMQError) as e:
        m.send_message("$coremq.x", {"a": 1})
    assert e.value.response.startswith("ERROR")
    m.close()


def test_custom_encoder_and_decoder(broker):
    """Dates and decimals through a user's encoder/decoder."""

    def enc(o):
        return json.dumps(o, default=lambda v: {"$d": str(v)} if isinstance(v, decimal.Decimal)
                          else {"$t": v.isoformat()})

    def hook(d):
        if "$d" in d:
            return decimal.Decimal(d["$d"])
        if "$t" in d:
            return datetime.date.fromisoformat(d["$t"])
        return d

    def dec(s):
        return json.loads(s, object_hook=hook)

    sub = MessageQueue("127.0.0.1", broker.port, decoder=dec)
    pub = MessageQueue("127.0.0.1", broker.port, encoder=enc)
    sub.subscribe("typed")
    pub.send_message("typed", {"price": decimal.Decimal("1.10"), "day": datetime.date(2026, 1, 2)})
    _, msg = wait_message(sub)
    assert msg["price"] == decimal.Decimal("1.10")
    assert msg["day"] == datetime.date(2026, 1, 2)
    sub.close()
    pub.close()


def test_ack_off_returns_none_and_still_delivers(broker):
    sub = MessageQueue("127.0.0.1", broker.port)
    pub = MessageQueue("127.0.0.1", broker.port)
    sub.subscribe("noack")
    pub.set_options(ack=False)
    assert pub.send_message("noack", {"n": 1}) == (None, None)
    assert wait_message(sub)[1]["n"] == 1
    sub.close()
    pub.close()


def test_connect_refused_raises_oserror():
    from conftest import free_port
    m = MessageQueue("127.0.0.1", free_port(), timeout=2)
    with pytest.raises(OSError):
        m.connect()


def test_a_frame_the_decoder_refuses_raises_and_the_connection_stays(broker):
    def picky(s):
        d = json.loads(s)
        if isinstance(d, dict) and d.get("bad"):
            raise ValueError("refused by the decoder")
        return d

    sub = MessageQueue("127.0.0.1", broker.port, decoder=picky)
    pub = MessageQueue("127.0.0.1", broker.port)
    sub.subscribe("picky")
    first_id = sub.connection_id
    pub.send_message("picky", {"bad": True})
    pub.send_message("picky", {"good": 1})
    with pytest.raises(coremq.ProtocolError) as e:
        for _ in range(10):
            sub.get_message(timeout=1)
    assert "refused by the decoder" in str(e.value)
    assert wait_message(sub)[1]["good"] == 1
    assert sub.connection_id == first_id
    sub.close()
    pub.close()


def test_large_messages_both_ways(broker):
    """~900 KB frames (under the 1 MiB default limit): written whole after a
    short get_message timeout, read back whole."""
    sub = MessageQueue("127.0.0.1", broker.port)
    pub = MessageQueue("127.0.0.1", broker.port)
    sub.subscribe("big")
    pub.get_message(timeout=0.01)  # leaves the socket with a tiny timeout
    big = "x" * 900_000
    for i in range(3):
        assert pub.send_message("big", {"i": i, "blob": big})[1]["response"] == "OK: Message sent"
    for i in range(3):
        _, msg = wait_message(sub)
        assert msg["i"] == i and msg["blob"] == big
    sub.close()
    pub.close()


def test_subscribe_since_a_stored_position_replays_what_followed(broker):
    pub = MessageQueue("127.0.0.1", broker.port)
    for i in range(5):
        pub.send_message("since.q", {"i": i})
    _, reply = pub.get_history("since.q")
    second = reply["history"]["since.q"][1]
    sub = MessageQueue("127.0.0.1", broker.port)
    _, r = sub.subscribe_since("since.q", second["coremq_sent"], second["coremq_server"])
    assert r == {"response": "OK: Subscribe successful", "recovered": {"since.q": True}}
    got = [wait_message(sub)[1] for _ in range(3)]
    assert [m["i"] for m in got] == [2, 3, 4]
    assert all(m["coremq_replay"] is True for m in got)
    pub.send_message("since.q", {"i": 5})
    assert wait_message(sub)[1]["i"] == 5
    assert sub.gaps == []
    _, r = sub.subscribe_since("since.never", 1.0, second["coremq_server"])
    assert r["recovered"] == {"since.never": False}
    assert sub.gaps == [coremq.Gap("since.never", coremq.Position(1.0, second["coremq_server"]))]
    sub.close()
    pub.close()
