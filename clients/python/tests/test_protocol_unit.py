"""The codec and the resume bookkeeping, without a broker."""

from __future__ import annotations

import json

import pytest

from coremq import _protocol as p


def test_frames_split_and_coalesced_anywhere():
    frames = [p.encode_frame("q%d" % i, json.dumps({"i": i, "s": "é"})) for i in range(5)]
    data = b"".join(frames)
    for size in (1, 2, 3, 7, len(data)):
        r, out = p.FrameReader(), []
        for k in range(0, len(data), size):
            r.feed(data[k:k + size])
            while True:
                f = r.next()
                if f is None:
                    break
                out.append((f[0], json.loads(f[1])))
        assert out == [("q%d" % i, {"i": i, "s": "é"}) for i in range(5)]


def test_length_counts_bytes_and_bad_input_is_refused():
    assert p.encode_frame("q", "{\"a\":\"é\"}") == b"+12 q {\"a\":\"\xc3\xa9\"}"
    for bad in (b"x12 q {}", b"+1a q {}", b"+" + b"1" * 25):
        r = p.FrameReader()
        r.feed(bad)
        with pytest.raises(p.ProtocolError):
            r.next()
    for q in ("", "a b", "é"):
        with pytest.raises(ValueError):
            p.encode_frame(q, "{}")


def test_errors_are_typed():
    assert type(p.error_for("ERROR: Permission denied: publish x")) is p.PermissionDenied
    assert type(p.error_for("ERROR: Authentication failed")) is p.AuthenticationFailed
    assert type(p.error_for("ERROR: Authentication required")) is p.AuthenticationRequired
    assert type(p.error_for("ERROR: Token expired")) is p.TokenExpired
    assert type(p.error_for("ERROR: anything else")) is p.CoreMQError
    assert p.reply_error({"response": "OK: Message sent"}) is None
    assert isinstance(p.ConnectionLost("x"), OSError)


def msg(sent, server):
    return {"coremq_sent": sent, "coremq_server": server}


def test_positions_drop_replays_per_server_and_resume_with_a_list():
    ps = p.Positions()
    subs = ["q"]
    assert ps.admit("q", msg(10.0, "a:1"), subs)
    assert ps.admit("q", msg(5.0, "b:1"), subs)      # older, but another server
    assert not ps.admit("q", msg(10.0, "a:1"), subs)  # a replay
    assert not ps.admit("q", msg(4.0, "b:1"), subs)
    assert ps.admit("q", msg(11.0, "a:1"), subs)
    assert ps.admit("other", msg(1.0, "a:1"), subs)   # not subscribed: untracked
    assert ps.admit("other", msg(1.0, "a:1"), subs)
    cmd, since = p.subscribe_command(["q", "new"], ps, resume=True)
    assert cmd == {"coremq_subscribe": ["q", "new"],
                   "coremq_since": {"q": [{"sent": 5.0, "server": "b:1"},
                                          {"sent": 11.0, "server": "a:1"}]}}
    # Not recovered: the gap names the earliest position; "new" had none.
    gaps = p.gaps_of({"response": "OK: Subscribe successful", "recovered": {"q": False}}, since)
    assert gaps == [p.Gap("q", p.Position(5.0, "b:1")), p.Gap("new", None)]
    assert p.gaps_of({"recovered": {"q": True}}, since) == [p.Gap("new", None)]
    # A server that ignores coremq_since (no "recovered") is a gap too.
    assert p.Gap("q", p.Position(5.0, "b:1")) in p.gaps_of({"response": "OK"}, since)
    ps.forget(["q"])
    assert p.subscribe_command(["q"], ps, resume=True)[0] == {"coremq_subscribe": ["q"]}


def test_one_server_uses_the_object_form_and_at_most_16_servers_are_sent():
    ps = p.Positions()
    ps.admit("q", msg(1.5, "a:1"), ["q"])
    assert p.subscribe_command(["q"], ps, True)[0]["coremq_since"] == \
        {"q": {"sent": 1.5, "server": "a:1"}}
    for i in range(20):
        ps.admit("q", msg(100.0 + i, "s%d:1" % i), ["q"])
    sent = p.subscribe_command(["q"], ps, True)[0]["coremq_since"]["q"]
    assert len(sent) == 16 and sent[0]["server"] == "s4:1" and sent[-1]["server"] == "s19:1"


def test_position_float_text_round_trips_to_the_same_microsecond():
    # The broker rounds the time to whole microseconds; Python's shortest
    # repr of the float it sent must land on the same one.
    for text in ("1796182109.381080", "1764302775.123456", "1764302775.000001"):
        f = json.loads(text)
        back = json.loads(json.dumps({"sent": f}))["sent"]
        assert round(back * 1e6) == round(float(text) * 1e6)
