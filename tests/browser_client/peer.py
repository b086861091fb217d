"""A CoreMQ peer for tests/browser_client.rs: the Python package
(clients/python, asyncio client) driven by JSON lines on stdin.

Commands, one JSON object per line:
  {"op": "sub", "queue": q}            subscribe     -> {"ok": "sub"}
  {"op": "pub", "queue": q, "body": o} publish (at the OK) -> {"ok": "pub"}
  {"op": "id"}                         -> {"id": <current connection id>}
Everything received comes out as {"msg": <message>, "queue": q} (messages to
the connection's id too), resume gaps as {"gap": q}, a failed command as
{"error": "..."}. The peer reconnects and resumes by itself (the package's
defaults) and ends at EOF on stdin.
"""

import asyncio
import json
import sys

import coremq


def out(obj):
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


async def pump(sub):
    async for m in sub:
        out({"msg": m.data, "queue": m.queue})


async def main(host, port):
    client = coremq.connect(host, port, on_gap=lambda gap: out({"gap": gap.queue}))
    await client.connect()
    tasks = [asyncio.ensure_future(pump(await client.direct().start()))]
    out({"id": client.connection_id})
    loop = asyncio.get_running_loop()
    while True:
        line = await loop.run_in_executor(None, sys.stdin.readline)
        if not line:
            break
        cmd = json.loads(line)
        try:
            if cmd["op"] == "sub":
                sub = await client.subscribe(cmd["queue"]).start()
                tasks.append(asyncio.ensure_future(pump(sub)))
                out({"ok": "sub"})
            elif cmd["op"] == "pub":
                await client.publish(cmd["queue"], cmd["body"])
                out({"ok": "pub"})
            elif cmd["op"] == "id":
                await client.status()  # a round trip: connected now
                out({"id": client.connection_id})
            else:
                out({"error": "unknown op %r" % cmd["op"]})
        except Exception as e:  # reported to the test, which fails on it
            out({"error": "%s: %s" % (type(e).__name__, e)})
    await client.close()
    for t in tasks:
        t.cancel()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2])))
