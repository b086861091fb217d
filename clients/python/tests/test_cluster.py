"""Resume in a two-node cluster: the subscriber has seen messages stamped by
both servers, so its resubscribe sends ``coremq_since`` as a list, one
position per server (§10), which the restarted durable node honours."""

from __future__ import annotations

import pytest

from coremq import MessageQueue
from conftest import free_port


def until(m: MessageQueue, want: int, queue: str, tries: int = 120):
    got = []
    for _ in range(tries):
        q, msg = m.get_message(timeout=0.25)
        if q == queue:
            got.append(msg)
            if len(got) == want:
                return got
    pytest.fail("got %r, wanted %d messages of %s" % (got, want, queue))


def test_resume_with_positions_of_two_servers(make_broker, tmp_path):
    p1, p2 = free_port(), free_port()
    nodes = "127.0.0.1:%d,127.0.0.1:%d" % (p1, p2)
    n1 = make_broker(2, port=str(p1), node_name="n1", cluster_nodes=nodes,
                     data_dir=str(tmp_path / "n1"), fsync="always")
    n2 = make_broker(1, port=str(p2), node_name="n2", cluster_nodes=nodes)
    sub = MessageQueue("127.0.0.1", p1, backoff=(0.05, 0.5))
    sub.subscribe("cq", "probe")
    via2 = MessageQueue("127.0.0.1", p2)
    # Wait (bounded) for the link: a probe from n2 reaches n1's subscriber.
    for attempt in range(60):
        via2.send_message("probe", {"k": attempt})
        q, _ = sub.get_message(timeout=0.5)
        if q == "probe":
            break
    else:
        pytest.fail("the cluster link did not come up:\n" + n1.logs())
    sub.unsubscribe("probe")
    via1 = MessageQueue("127.0.0.1", p1)
    via1.send_message("cq", {"i": 1})
    via2.send_message("cq", {"i": 2})
    got = until(sub, 2, "cq")
    assert sorted(m["i"] for m in got) == [1, 2]
    assert {m["coremq_server"] for m in got} == {"n1:%d" % p1, "n2:%d" % p2}
    via1.close()
    # What the resubscribe will send: the list form, one entry per server.
    assert sorted(x.server for x in sub._positions.resume_points("cq")) == \
        ["n1:%d" % p1, "n2:%d" % p2]

    n1.restart()
    via1 = MessageQueue("127.0.0.1", p1)
    via1.send_message("cq", {"i": 3})  # while the subscriber is away
    got = until(sub, 1, "cq")
    assert [m["i"] for m in got] == [3]  # replayed once; 1 and 2 not again
    assert sub.gaps == []
    assert sub.get_message(timeout=0.5) == (None, None)
    sub.close()
    via1.close()
    via2.close()
