"""Server CPU of the annotators' loop, measured in-process: ``GET next/?prefetch=1`` then ``POST`` the answer.

Builds the same throw-away project as ``bench/bench_submit.py`` (its ``Bench`` class: a fresh
PostgreSQL database or SQLite file, ``--users`` members, a shared queue that never runs dry),
then, in a Django subprocess with the benchmark's settings (``DEBUG=0``, token auth, the
project's middleware), calls the WSGI application itself (``config.wsgi.application``, what
gunicorn calls) with prebuilt WSGI environs, the annotators taking turns: ``next`` then a valid
answer, ``--iterations`` loops. It reports, per database, the CPU time of the process
(``time.process_time()``: user + system, not disturbed much by other jobs on the machine)
per ``next``, per submit and per loop (the median of five blocks of loops; the fastest and
slowest block's loop in brackets), and the SQL statements per request
(``CaptureQueriesContext``, a separate pass). With ``--profile N`` it prints cProfile's top
``N`` functions of a third pass (by own time and by cumulative time).

No HTTP parsing or socket work is included (gunicorn's share), so the figures are below what
``bench_submit.py`` reports as gunicorn CPU per loop; they measure Django's and the app's share.

    .venv/bin/python bench/profile_loop.py                       # both databases, 1000 loops each
    .venv/bin/python bench/profile_loop.py --db sqlite --iterations 1000 --profile 40
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_submit import NEXT_URL, SUBMIT_URL, Bench, log  # noqa: E402

DRIVER = r'''
import cProfile, gc, io, json, pstats, sys, time
import django
django.setup()
from django.db import connection
from django.test.utils import CaptureQueriesContext
from config.wsgi import application

setup = json.load(open(sys.argv[1]))
iterations, warmup, top = int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
NEXT_URL, SUBMIT_URL = sys.argv[5], sys.argv[6]
users = [u["token"] for u in setup["users"]]
n_classes = setup["n_classes"]
path, _, query = NEXT_URL.partition("?")


def environ(method, path, query, token, body=b""):
    import io as _io
    env = {"REQUEST_METHOD": method, "PATH_INFO": path, "QUERY_STRING": query, "SCRIPT_NAME": "",
           "SERVER_NAME": "127.0.0.1", "SERVER_PORT": "8000", "SERVER_PROTOCOL": "HTTP/1.1",
           "HTTP_HOST": "127.0.0.1:8000", "HTTP_AUTHORIZATION": f"Token {token}", "HTTP_ACCEPT": "application/json",
           "REMOTE_ADDR": "127.0.0.1", "wsgi.url_scheme": "http", "wsgi.input": _io.BytesIO(body),
           "wsgi.errors": sys.stderr, "wsgi.version": (1, 0), "wsgi.multithread": True,
           "wsgi.multiprocess": True, "wsgi.run_once": False}
    if body:
        env["CONTENT_TYPE"] = "application/json"
        env["CONTENT_LENGTH"] = str(len(body))
    return env


def call(env):
    """What gunicorn does with the application: call it, read the body, close the response."""
    status = []
    result = application(env, lambda s, h, exc_info=None: status.append(s))
    try:
        body = b"".join(result)
    finally:
        if hasattr(result, "close"):
            result.close()
    return int(status[0][:3]), body


turn = [0]


def loop(times=None):
    token = users[turn[0] % len(users)]
    turn[0] += 1
    env = environ("GET", path, query, token)
    t0 = time.process_time()
    code, body = call(env)
    t1 = time.process_time()
    assert code == 200, (code, body[:300])
    aid = json.loads(body)["assignment"]["id"]
    env = environ("POST", SUBMIT_URL.format(id=aid), "", token, b'{"label": %d, "seconds": 1.5}' % (aid % n_classes))
    t2 = time.process_time()
    code, body = call(env)
    t3 = time.process_time()
    assert code == 201, (code, body[:300])
    if times is not None:
        times["next"] += t1 - t0
        times["submit"] += t3 - t2


for _ in range(warmup):
    loop()
gc.collect()
gc.freeze()  # as gunicorn's post_worker_init does
blocks = []  # the loops in 5 blocks: the median block is robust to other jobs' bursts
for _ in range(5):
    times = {"next": 0.0, "submit": 0.0}
    for _ in range(iterations // 5):
        loop(times)
    blocks.append({k: v * 1000 / (iterations // 5) for k, v in times.items()})
blocks.sort(key=lambda b: b["next"] + b["submit"])
out = {"iterations": iterations, "next_ms": blocks[2]["next"], "submit_ms": blocks[2]["submit"],
       "loop_range": [round(blocks[0]["next"] + blocks[0]["submit"], 2),
                      round(blocks[-1]["next"] + blocks[-1]["submit"], 2)]}

# statements per request (separate pass: capturing costs CPU), one fresh context per request
counts = {"next": [], "submit": []}
orig_call = call


def counted(kind):
    def wrapped(env):
        with CaptureQueriesContext(connection) as ctx:
            r = orig_call(env)
        counts[kind].append(len(ctx.captured_queries))
        return r
    return wrapped


for _ in range(20):
    token = users[turn[0] % len(users)]
    turn[0] += 1
    code, body = counted("next")(environ("GET", path, query, token))
    aid = json.loads(body)["assignment"]["id"]
    counted("submit")(environ("POST", SUBMIT_URL.format(id=aid), "", token,
                              b'{"label": %d, "seconds": 1.5}' % (aid % n_classes)))
out["next_sql"] = sum(counts["next"]) / len(counts["next"])
out["submit_sql"] = sum(counts["submit"]) / len(counts["submit"])

if top:
    prof = cProfile.Profile(time.process_time)  # CPU, not wall time (fsync waits)
    prof.enable()
    for _ in range(min(iterations, 300)):
        loop()
    prof.disable()
    for key in ("tottime", "cumulative"):
        s = io.StringIO()
        pstats.Stats(prof, stream=s).sort_stats(key).print_stats(top)
        print(s.getvalue())
print(json.dumps(out))
'''


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--db", choices=("sqlite", "postgresql", "both"), default="both")
    p.add_argument("--iterations", type=int, default=1000, help="measured loops per database (default 1000)")
    p.add_argument("--warmup", type=int, default=50, help="unmeasured loops first (default 50)")
    p.add_argument("--users", type=int, default=50, help="project members taking turns (default 50)")
    p.add_argument("--profile", type=int, default=0, metavar="N", help="print cProfile's top N functions")
    p.add_argument("--pg-url", default=os.environ.get("BENCH_PG_URL", "postgres://postgres@127.0.0.1:5432/postgres"))
    args = p.parse_args(argv)
    rows = []
    for db in (("sqlite", "postgresql") if args.db == "both" else (args.db,)):
        ns = argparse.Namespace(db=db, pg_url=args.pg_url, users=args.users, secured=2, no_next=False)
        bench = Bench(ns)
        loops = args.iterations + args.warmup + 20 + (min(args.iterations, 300) if args.profile else 0)
        per_user = math.ceil(2 * loops / args.users) + 2  # each loop answers one item and claims one ahead
        try:
            data = bench.setup(per_user)
            out = bench.django(str(bench.tmp / "setup.json"), str(args.iterations), str(args.warmup),
                               str(args.profile), NEXT_URL, SUBMIT_URL, script=DRIVER, capture=True)
            lines = out.strip().splitlines()
            if args.profile:
                print(f"==== cProfile, {db} ====")
                print("\n".join(lines[:-1]))
            res = json.loads(lines[-1])
        finally:
            bench.cleanup()
        log(f"{db}: {res}")
        rows.append((db, res, data["first_label"]))
    print()
    print(f"in-process CPU (time.process_time) of the WSGI application, median of 5 blocks of {args.iterations // 5} loops "
          f"(GET next/?prefetch=1 + POST answer), {args.users} members taking turns, DEBUG=0, token auth")
    head = (f"{'database':<11} {'next ms':>8} {'submit ms':>9} {'loop ms':>8} {'(blocks)':>13} {'SQL/next':>8} "
            f"{'SQL/submit':>10}")
    print(head)
    print("-" * len(head))
    for db, r, _ in rows:
        print(f"{db:<11} {r['next_ms']:>8.2f} {r['submit_ms']:>9.2f} {r['next_ms'] + r['submit_ms']:>8.2f} "
              f"{'%.2f-%.2f' % tuple(r['loop_range']):>13} {r['next_sql']:>8.1f} {r['submit_sql']:>10.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
