"""The README's "A short session" and docs/protocol.md's "A client by hand"
run as written (with the test broker's port for 6747), so they stay true."""

from __future__ import annotations

import re

from conftest import REPO


def blocks(path, heading):
    text = (REPO / path).read_text()
    start = text.index(heading)
    level = heading.split(" ")[0]
    nxt = re.search(r"^#{1,%d} " % len(level), text[start + len(heading):], re.M)
    section = text[start:start + len(heading) + (nxt.start() if nxt else len(text))]
    return re.findall(r"```python\n(.*?)```", section, re.S)


def test_readme_short_session(broker, capsys):
    sync_block, aio_block = blocks("README.md", "## A short session")
    ns = {}
    exec(sync_block.replace("6747", str(broker.port)), ns)
    m = ns["m"]
    assert m.subscriptions == ["news"]
    assert m.get_history("news")[1]["history"]["news"][0]["headline"] == "hello"
    m.close()
    exec(aio_block.replace("6747", str(broker.port)), {})
    out = capsys.readouterr().out
    assert "OK: Welcome to CoreMQ server" in out
    assert out.strip().endswith("news hello")


def test_protocol_client_by_hand(broker):
    (block,) = blocks("docs/protocol.md", "### A client by hand")
    ns = {}
    exec(block.replace("6747", str(broker.port)), ns)
    assert ns["welcome"]["response"] == "OK: Welcome to CoreMQ server"
    ns["send"](ns["my_id"], {"coremq_gethistory": ["news"]})
    assert ns["recv"]()[1]["history"]["news"][0]["coremq_sender"] == ns["my_id"]
    ns["s"].close()
