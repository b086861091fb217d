"""One session of the original client's calls, printed as JSON lines with the
ids and times normalised. Run by test_against_the_original_client.py under
the original client and under this package, which must print the same."""
import sys, json
port = int(sys.argv[1])
Q = sys.argv[3]
from coremq import MessageQueue
def norm(x, ids):
    if isinstance(x, tuple): return [norm(v, ids) for v in x]
    if isinstance(x, list): return [norm(v, ids) for v in x]
    if isinstance(x, dict):
        return {ids.get(k, k): ("<t>" if k == "coremq_sent" else norm(v, ids)) for k, v in x.items()}
    if isinstance(x, str) and x in ids: return ids[x]
    return x
out = []
m = MessageQueue('127.0.0.1', port); m.connect()
p = MessageQueue('127.0.0.1', port); p.connect()
ids = {m.connection_id: "<m>", p.connection_id: "<p>", Q: "<q>"}
out.append(("welcome", norm(m.welcome_message, ids)))
out.append(("subscribe", norm(m.subscribe(Q), ids)))
out.append(("send", norm(p.send_message(queue=Q, message=dict(a=1)), ids)))
out.append(("get", norm(m.get_message(timeout=2), ids)))
out.append(("send str", norm(p.send_message(Q, 'hello'), ids)))
out.append(("get", norm(m.get_message(timeout=2), ids)))
out.append(("history", norm(m.get_history(Q), ids)))
out.append(("options", norm(m.set_options(echo=True), ids)))
out.append(("p2p", norm(p.send_message(m.connection_id, {'x': 1}), ids)))
out.append(("get p2p", norm(m.get_message(timeout=2), ids)))
out.append(("unsubscribe", norm(m.unsubscribe(Q), ids)))
out.append(("timeout", norm(m.get_message(timeout=0.3), ids)))
out.append(("error", norm(p.send_message('$coremq.x', {'a': 1}), ids) if sys.argv[2] == 'orig' else "raises"))
m.close(); p.close()
for step in out: print(json.dumps(step, sort_keys=True))
