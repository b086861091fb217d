#!/usr/bin/env python3
"""Publish throughput of the Python clients against one local broker.

    python3 clients/python/bench/throughput.py [--bin target/release/coremq]
        [--n 20000] [--rounds 5] [--shards 1]

Workloads (each acknowledged publish is one `OK: Message sent`):

* original-style: what the original CoreMQ client does per send_message —
  write the frame, then read the reply as it did (10 bytes, then the rest);
  one publish in flight. Written here from the protocol (the original is not
  vendored), as the baseline the issue asks the asyncio client to be shown
  beside.
* sync MessageQueue.send_message: the new synchronous class, one in flight.
* asyncio publish, awaited one by one: one in flight.
* asyncio publish, pipelined: a window of --window publishes in flight
  (asyncio.gather), every OK still awaited.
* asyncio end to end: a pipelined publisher and an asyncio subscriber on
  another connection; time until the subscriber has all N.

Prints a Markdown table (median and range of --rounds) and the JSON of every
round on stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import coremq  # noqa: E402

PAYLOAD = {"iteration": 0, "text": "x" * 32}


def start_broker(binary: str, shards: int):
    d = Path(tempfile.mkdtemp(prefix="coremq-pybench-"))
    (d / "coremq.conf").write_text(
        "[CoreMQ]\naddress = 127.0.0.1\nport = 0\nshards = %d\nnode_name = bench\n"
        "log_level = WARN\nlog_file = stdout\n\n[CoreWS]\nenabled = false\n" % shards)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COREMQ_", "COREWS_"))}
    proc = subprocess.Popen([binary, "--config", str(d / "coremq.conf"), "--ready-file",
                             str(d / "ready.json")], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=env)
    for _ in range(1000):
        try:
            ready = json.loads((d / "ready.json").read_text())
            return proc, int(ready["tcp"].rsplit(":", 1)[1])
        except (OSError, ValueError):
            if proc.poll() is not None:
                sys.exit("broker exited with %s" % proc.returncode)
            time.sleep(0.02)
    proc.kill()
    sys.exit("broker not ready")


def original_style(port: int, n: int) -> float:
    s = socket.create_connection(("127.0.0.1", port))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def read_frame():
        data = s.recv(10).decode()
        length, data = data.split(" ", 1)
        expected = int(length[1:])
        while len(data) < expected:
            data += s.recv(expected - len(data)).decode()
        q, m = data.split(" ", 1)
        return q, json.loads(m)

    cid, _ = read_frame()
    t = time.perf_counter()
    for i in range(n):
        body = json.dumps(dict(PAYLOAD, iteration=i)).encode()
        s.send(b"+%d bench.orig %s" % (len(body) + 11, body))
        q, m = read_frame()
        assert q == cid and m["response"] == "OK: Message sent", m
    dt = time.perf_counter() - t
    s.close()
    return n / dt


def sync_client(port: int, n: int) -> float:
    m = coremq.MessageQueue("127.0.0.1", port)
    m.connect()
    t = time.perf_counter()
    for i in range(n):
        m.send_message("bench.sync", dict(PAYLOAD, iteration=i))
    dt = time.perf_counter() - t
    m.close()
    return n / dt


async def aio_sequential(port: int, n: int) -> float:
    async with coremq.connect("127.0.0.1", port) as c:
        t = time.perf_counter()
        for i in range(n):
            await c.publish("bench.aseq", dict(PAYLOAD, iteration=i))
        return n / (time.perf_counter() - t)


async def aio_pipelined(port: int, n: int, window: int) -> float:
    async with coremq.connect("127.0.0.1", port) as c:
        t = time.perf_counter()
        for start in range(0, n, window):
            acks = await asyncio.gather(*(c.publish("bench.apipe", dict(PAYLOAD, iteration=i))
                                          for i in range(start, min(n, start + window))))
            assert acks[-1] == {"response": "OK: Message sent"}
        return n / (time.perf_counter() - t)


async def aio_end_to_end(port: int, n: int, window: int) -> float:
    async with coremq.connect("127.0.0.1", port) as sub_c, \
            coremq.connect("127.0.0.1", port) as pub_c:
        sub = await sub_c.subscribe("bench.e2e")

        async def consume():
            got = 0
            async for msg in sub:
                got += 1
                if got == n:
                    return msg["iteration"]

        t = time.perf_counter()
        consumer = asyncio.ensure_future(consume())
        for start in range(0, n, window):
            await asyncio.gather(*(pub_c.publish("bench.e2e", dict(PAYLOAD, iteration=i))
                                   for i in range(start, min(n, start + window))))
        last = await asyncio.wait_for(consumer, 120)
        assert last == n - 1
        return n / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bin", default=os.environ.get("COREMQ_BIN", "target/release/coremq"))
    ap.add_argument("--n", type=int, default=20000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--shards", type=int, default=1)
    ap.add_argument("--window", type=int, default=500)
    a = ap.parse_args()
    proc, port = start_broker(a.bin, a.shards)
    work = [
        ("original-style (send, read reply; 1 in flight)", lambda: original_style(port, a.n)),
        ("sync MessageQueue.send_message (1 in flight)", lambda: sync_client(port, a.n)),
        ("asyncio publish, awaited one by one", lambda: asyncio.run(aio_sequential(port, a.n))),
        ("asyncio publish, pipelined (window %d)" % a.window,
         lambda: asyncio.run(aio_pipelined(port, a.n, a.window))),
        ("asyncio end to end: pipelined pub -> async for sub",
         lambda: asyncio.run(aio_end_to_end(port, a.n, a.window))),
    ]
    results = {name: [] for name, _ in work}
    try:
        for r in range(a.rounds):  # interleaved, so drift hits every workload alike
            for name, fn in work:
                results[name].append(fn())
    finally:
        proc.terminate()
        proc.wait(timeout=15)
    print(json.dumps({"n": a.n, "rounds": a.rounds, "shards": a.shards, "window": a.window,
                      "python": platform.python_version(), "results": results}), file=sys.stderr)
    print("| workload | msg/s median | min | max |")
    print("|---|---:|---:|---:|")
    for name, xs in results.items():
        print("| %s | %.0f | %.0f | %.0f |" % (name, statistics.median(xs), min(xs), max(xs)))


if __name__ == "__main__":
    main()
