"""bench/compare --kv: the key-value workload (issue 27) against CoreMQ's
memcached_port, memcached and redis-server.

One generator (`coremq-bench --workload kv`) speaks memcached's text protocol
to CoreMQ's memcached_port and to Debian's memcached (`-t <cores>`), and RESP
(GET/SET) to redis-server: a preload stores every key (not measured), then a
mix of 90 % gets and 10 % sets of 1 KiB values on 100,000 keys drawn at
random, pipelined 32 deep on 4 connections. Every repetition runs the three
back to back, in an order that rotates between repetitions. Misses after the
preload, error replies and wrong values are counted (every get should hit).
Results: bench/results/<date>[-quick]-kv.{md,json}. The helpers (starting and
stopping processes, the build, the disturbance readings) are bench/compare's,
handed in as `c`.
"""

import datetime
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

# The workload: coremq-bench arguments, and the ops of the measured mix in a
# full and a --quick run.
KV_ARGS = ["--workload", "kv", "--kv-keys", "100000", "--kv-value", "1024", "--kv-depth", "32",
           "--kv-get-percent", "90"]
# Connections of the generator (bench/compare --kv-connections changes it).
KV_CONNECTIONS = 4
KV_OPS = (1_000_000, 100_000)
# The targets: CoreMQ at least memcached's ops/s, and 1.5× redis-server's.
TARGETS = {"memcached": 1.0, "redis": 1.5}
# Enough for 100,000 values of 1 KiB and their keys with room to spare, so
# nothing is evicted (a miss would then be the store's fault, not the size's).
KV_MEMORY = "1G"


def ensure(c, no_install):
    want = {"memcached": "memcached", "redis-server": "redis-server"}
    missing = [pkg for tool, pkg in want.items() if shutil.which(tool) is None]
    if not missing or no_install:
        return
    c.log(f"installing {' '.join(missing)} with apt-get")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    sudo = [] if os.geteuid() == 0 else ["sudo", "-n"]
    try:
        c.run(sudo + ["apt-get", "update", "-qq"], env=env, stdout=subprocess.DEVNULL)
        c.run(sudo + ["apt-get", "install", "-y", "-qq"] + missing, env=env, stdout=subprocess.DEVNULL)
    except (subprocess.CalledProcessError, OSError) as e:
        c.log(f"apt-get failed ({e}); missing servers will be skipped")


def coremq_name(shards, default):
    """The row of a CoreMQ with `shards` shards: `coremq` for the run's shard count."""
    return "coremq" if shards == default else f"coremq-{shards}shard"


def start_servers(c, tmp, shard_counts, ncpu):
    """CoreMQ (memcached_port; one per shard count, the first being the run's),
    memcached, redis-server: [(name, proto, addr, pid)], notes."""
    targets, notes = [], []
    for shards in shard_counts:
        port = c.free_port()
        p, info = c.start_coremq(tmp, shards, False, tag="coremq-kv",
                                 extra=f"memcached_port = {port}\nkv_memory = {KV_MEMORY}\n")
        addr = info.get("memcached") or f"127.0.0.1:{port}"
        name = coremq_name(shards, shard_counts[0])
        targets.append((name, "memcached", addr, p.pid))
        notes.append(f"`{name}` is CoreMQ (shards = {shards}, `kv_memory = {KV_MEMORY}`) on its "
                     "`memcached_port`.")
    if len(shard_counts) > 1:
        notes.append("Why a 1-shard row: redis-server serves from one thread, so a 1-shard CoreMQ is the "
                     "like-for-like per core; `coremq` (shards = cores) is the default configuration, and on a "
                     "machine whose cores the generator shares, its cross-shard hops (half the keys of every "
                     "batch live on the other shard) cost wake-ups that a machine with a core per shard and "
                     "clients elsewhere does not pay. Each CoreMQ row is judged against the targets on its own.")
    if shutil.which("memcached"):
        mport = c.free_port()
        cmd = ["memcached", "-u", "nobody", "-l", "127.0.0.1", "-p", str(mport), "-U", "0",
               "-t", str(ncpu), "-m", "1024", "-c", "4096"]
        mp = c.start(cmd, os.path.join(tmp, "memcached.log"))
        c.wait_port(mport, mp, "memcached")
        targets.append(("memcached", "memcached", f"127.0.0.1:{mport}", mp.pid))
        notes.append(f"`memcached` is Debian's memcached ({c.output(['memcached', '-V'])}), "
                     f"`{' '.join(cmd[:1] + cmd[3:])}` (threads = cores, 1 GiB).")
    else:
        notes.append("memcached is not installed: no memcached figures, no ratio against it.")
    if shutil.which("redis-server"):
        rport = c.free_port()
        cmd = ["redis-server", "--bind", "127.0.0.1", "--port", str(rport), "--save", "",
               "--appendonly", "no", "--dir", tmp]
        rp = c.start(cmd, os.path.join(tmp, "redis.log"))
        c.wait_port(rport, rp, "redis-server")
        targets.append(("redis", "redis", f"127.0.0.1:{rport}", rp.pid))
        notes.append(f"`redis` is Debian's redis-server ({c.output(['redis-server', '--version'])[:60]}), "
                     "no persistence (`--save '' --appendonly no`), GET and SET over RESP.")
    else:
        notes.append("redis-server is not installed: no redis figures, no ratio against it.")
    return targets, notes


def run_one(c, target, ops, max_seconds):
    name, proto, addr, pid = target
    cmd = [c.BENCH, "--json", "--quiet", "--proto", proto, "--addr", addr, "--label", name,
           "--broker-pid", str(pid), "--max-seconds", str(max_seconds), "--kv-ops", str(ops),
           "--kv-connections", str(KV_CONNECTIONS)] + KV_ARGS
    before = c.others_sample()
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=max_seconds + 300)
    others = c.others_since(before)
    if r.returncode != 0:
        return {"target": name, "error": (r.stderr or r.stdout).strip()[:500], "others_cores": others}
    rep = json.loads(r.stdout)
    rep["others_cores"] = others
    return rep


def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def fmt_range(xs, f="{:,.0f}"):
    xs = [x for x in xs if x is not None]
    if not xs:
        return "—"
    return f"{f.format(statistics.median(xs))} ({f.format(min(xs))}–{f.format(max(xs))})"


def rerender(path):
    """Writes the .md of a saved .json again (after a change to the table)."""
    with open(path) as f:
        d = json.load(f)
    global KV_CONNECTIONS
    KV_CONNECTIONS = d.get("connections", 4)
    names = list(d["results"])
    md = render(d["command"], d["results"], names, d["reps"], d["ops"], d["shards"], d["ncpu"], d["notes"],
                d.get("elapsed_s", 0))
    md = md.replace(f"({d['reps']} repetitions, 0.0 min)", f"({d['reps']} repetitions)")
    with open(path[:-len(".json")] + ".md", "w") as f:
        f.write(md)


def main(args, c):
    global KV_CONNECTIONS
    KV_CONNECTIONS = args.kv_connections
    reps = 1 if args.quick else max(1, args.reps)
    ops = KV_OPS[1] if args.quick else KV_OPS[0]
    command = "bench/compare " + " ".join(sys.argv[1:])
    c.atexit_register()
    ensure(c, args.no_install)
    if not args.no_build:
        c.log("building coremq and coremq-bench (release)")
        c.run(["cargo", "build", "--release", "--quiet", "-p", "coremq", "-p", "coremq-bench"], cwd=c.ROOT)
    for b in (c.COREMQ, c.BENCH):
        if not os.access(b, os.X_OK):
            sys.exit(f"bench/compare: no {b} (build it, or see --bin-dir)")
    ncpu = os.cpu_count() or 1
    shards = args.shards or ncpu
    # The run's shard count, and one shard beside it (redis-server's one thread).
    shard_counts = [shards] + ([1] if shards > 1 else [])
    tmp = tempfile.mkdtemp(prefix="coremq-compare-kv-")
    t0 = time.time()
    targets, notes = start_servers(c, tmp, shard_counts, ncpu)
    names = [t[0] for t in targets]
    results = {n: [] for n in names}
    for rep in range(reps):
        k = rep % len(targets)
        for t in targets[k:] + targets[:k]:
            c.log(f"rep {rep + 1}/{reps}: kv on {t[0]}")
            r = run_one(c, t, ops, 120)
            r["rep"] = rep
            results[t[0]].append(r)
            if "error" in r:
                c.log(f"  {t[0]} failed: {r['error']}")
            else:
                c.log(f"  {t[0]}: {r['ops_per_s']:,.0f} ops/s, misses {r['misses']}, errors {r['errors']}, "
                      f"server {r.get('server_cpu_us_per_op') or 0:.2f} µs/op")
    c.stop_all()
    elapsed = time.time() - t0
    versions = {"coremq": c.output([c.COREMQ, "--version"])}
    conns = "" if KV_CONNECTIONS == 4 else f"-c{KV_CONNECTIONS}"
    stamp = datetime.date.today().isoformat() + ("-quick" if args.quick else "") + conns + "-kv"
    os.makedirs(args.out, exist_ok=True)
    base = os.path.join(args.out, stamp)
    with open(base + ".json", "w") as f:
        json.dump({"command": command, "reps": reps, "ops": ops, "workload": KV_ARGS,
                   "connections": KV_CONNECTIONS, "shards": shards,
                   "ncpu": ncpu, "notes": notes, "versions": versions, "elapsed_s": elapsed,
                   "results": results}, f, indent=1)
    md = render(command, results, names, reps, ops, shards, ncpu, notes, elapsed)
    with open(base + ".md", "w") as f:
        f.write(md)
    print(md)
    c.log(f"wrote {base}.md and {base}.json")
    return 0


def gen_us(r):
    """The generator's CPU µs per operation of a run."""
    g, n = r.get("generator_cpu_s"), r.get("ops")
    return g * 1e6 / n if g is not None and n else None


def ok_runs(runs):
    return [r for r in runs if "error" not in r]


def failures(r):
    """Operations of a run that failed: the preload's sets not stored, error
    replies, misses (after the preload every get should hit) and wrong values.
    Every one should have succeeded, so a run with any is no figure to judge."""
    return r["preload_errors"] + r["errors"] + r["misses"] + r["wrong_values"]


def paired(results, a, b, key="ops_per_s"):
    """Per repetition, a's figure over b's (both ran back to back)."""
    by_rep = {r["rep"]: r for r in ok_runs(results.get(b, []))}
    out = []
    for r in ok_runs(results.get(a, [])):
        o = by_rep.get(r["rep"])
        if o and o.get(key):
            out.append(r[key] / o[key])
    return out


def render(command, results, names, reps, ops, shards, ncpu, notes, elapsed):
    lines = [f"# Key-value workload: CoreMQ's memcached port, memcached, redis-server ({datetime.date.today()})",
             "",
             f"Command: `{command}` ({reps} repetitions, {elapsed / 60:.1f} min). Machine: {ncpu} cores, "
             "shared with other builds and tests (see the disturbance column).",
             "",
             "Workload (`coremq-bench " + " ".join(KV_ARGS) + f" --kv-connections {KV_CONNECTIONS} "
             f"--kv-ops {ops:,}`): a preload stores "
             "all 100,000 keys (1 KiB values, not measured), then 90 % gets / 10 % sets on keys drawn "
             f"uniformly at random, pipelined 32 deep on {KV_CONNECTIONS} connections (each batch written in one call, "
             "its replies read before the next). Every value starts with its key, so a wrong value is "
             "seen; after the preload every get should hit.",
             "",
             "| server | ops/s median (min–max) | server CPU µs/op | generator CPU µs/op | batch p50 / p99 µs | "
             "misses | errors | wrong values | others' CPU (cores) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for n in names:
        runs = ok_runs(results[n])
        failed = len(results[n]) - len(runs)
        lat = (f"{med([r['batch_us']['p50'] for r in runs]) or 0:,.0f} / "
               f"{med([r['batch_us']['p99'] for r in runs]) or 0:,.0f}") if runs else "—"
        lines.append(
            f"| {n} | {fmt_range([r['ops_per_s'] for r in runs])}"
            + (f" ({failed} failed)" if failed else "")
            + f" | {fmt_range([r.get('server_cpu_us_per_op') for r in runs], '{:.2f}')} | "
            f"{fmt_range([gen_us(r) for r in runs], '{:.2f}')} | {lat} | "
            f"{sum(r['misses'] for r in runs)} | {sum(r['errors'] + r['preload_errors'] for r in runs)} | "
            f"{sum(r['wrong_values'] for r in runs)} | "
            f"{fmt_range([r.get('others_cores') for r in runs], '{:.2f}')} |")
    lines += ["", "## Against the targets", ""]
    for me in [n for n in names if n.startswith("coremq")]:
        cm = med([r["ops_per_s"] for r in ok_runs(results.get(me, []))])
        for peer, target in TARGETS.items():
            if peer not in names or not cm:
                continue
            pm = med([r["ops_per_s"] for r in ok_runs(results[peer])])
            if not pm:
                continue
            pr = paired(results, me, peer)
            cpu_c = med([r.get("server_cpu_us_per_op") for r in ok_runs(results[me])])
            cpu_p = med([r.get("server_cpu_us_per_op") for r in ok_runs(results[peer])])
            bad = {n: sum(failures(r) for r in ok_runs(results[n])) for n in (me, peer)}
            bad = {n: f for n, f in bad.items() if f}
            if bad:
                verdict = "**not judged**: failed operations (" + ", ".join(
                    f"{n} {f:,}" for n, f in bad.items()) + ")"
            else:
                verdict = "met" if cm / pm >= target else "**not met**"
            lines.append(
                f"- {me}/{peer}: ops/s ratio of medians {cm / pm:.2f} (paired per repetition: "
                + ", ".join(f"{x:.2f}" for x in pr)
                + f"); target ≥ {target:g}: {verdict}. Server CPU per operation: {me} {cpu_c or 0:.2f} µs, "
                f"{peer} {cpu_p or 0:.2f} µs (ratio {((cpu_c or 0) / cpu_p) if cpu_p else 0:.2f}).")
    lines += ["", "## Setup", ""] + [f"- {n}" for n in notes]
    failed = [(n, r["error"]) for n in names for r in results[n] if "error" in r]
    if failed:
        lines += ["", "## Failed runs", ""] + [f"- {n}: `{e}`" for n, e in failed]
    return "\n".join(lines) + "\n"
