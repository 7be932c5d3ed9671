"""Soak test: simulated annotators on the real HTTP API while the real loop trains, with one fault.

Self-contained and loopback only: creates a throw-away PostgreSQL database, starts a private
``redis-server`` on a free port, gunicorn, and one Celery worker (both queues, embedded beat for
the loop sweeper); creates a digits project (real images, flatten backbone, the robust strategy)
and ``--users`` annotators with API tokens; then drives them for ``--minutes``. Each annotator
loops: ``GET /api/labeling/next/``; with an assignment, "looks" for ``--think`` seconds and posts
the true label (the simulated annotator's eyes: one read-only SQL query for the item's ground
truth); without one, waits ``--poll`` seconds. Midway one fault is injected (``--fault``):

- ``kill-worker``: the worker is SIGKILLed while a loop task is running (waits up to 60 s for
  one), then restarted at once (as a supervisor would); the task comes back after
  ``CELERY_VISIBILITY_TIMEOUT`` (``--visibility``).
- ``stop-redis``: the Redis server is stopped for ``--outage`` seconds, then started again on the
  same port (append-only file kept); answers keep coming, the loop sweeper catches up.
- ``none``.

``--pipeline`` turns the project's ``pipeline`` setting on (two open batches: people label the
next one while the model trains on the last); the report's utilisation lines (the share of
``next`` requests that found work, and of the annotators' time spent looking at images) measure
how long people wait for the model either way. ``--batch-per-annotator N`` sets the project's
``batch_per_annotator`` (each batch a step opens holds N items per annotator working).

After the run it waits (up to ``--drain`` s) for the loop to settle and prints: requests served
per kind, errors by kind, p50/p95/max latency, annotations accepted (201) vs stored (rows),
batches made vs expected (one per processed batch, no duplicate iteration, every closed batch
with exactly one metric), loop-task enqueues (duplicates), and the loop task outcomes.
Everything it started is stopped and the database dropped, also on Ctrl-C and errors.

    .venv/bin/python bench/soak.py                                  # 10 min, 50 annotators, kill-worker
    .venv/bin/python bench/soak.py --minutes 2 --fault stop-redis
"""
from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parent.parent
NEXT_URL = "/api/labeling/next/"
SUBMIT_URL = "/api/labeling/assignments/{id}/annotation/"
ENQUEUED = re.compile(r"enqueued labeling\.tasks\.train\.process_batch\((\d+),\)")
NOT_ENQUEUED = re.compile(r"could not enqueue labeling\.tasks\.train\.process_batch\((\d+),\)")
OUTCOME = re.compile(r"process_batch\((\d+)\): (\w+)")
RECEIVED = re.compile(r"Task labeling\.tasks\.train\.process_batch\[([0-9a-f-]+)\] received")

SETUP_SCRIPT = r'''
import json, sys, time
import numpy as np
import django
django.setup()
from django.contrib.auth import get_user_model
from rest_framework.authtoken.models import Token
from labeling import importers, membership, services
from learner.data import load_digits

n_users, copies, batch, out = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
extra = json.loads(sys.argv[5])
t0 = time.perf_counter()
users = []
for i in range(n_users):
    u = get_user_model().objects.create_user(username=f"soak{i:03d}")
    services.add_annotator(u)
    users.append(u)
classes = [str(k) for k in range(10)]
data = load_digits(classes=classes, pool_size=None, test_size=0, seed=0)
rng = np.random.default_rng(0)
x = np.concatenate([data.x_pool] + [np.clip(data.x_pool.astype(np.int16) + rng.integers(-12, 13, data.x_pool.shape),
                                            0, 255).astype(np.uint8) for _ in range(copies - 1)])
y = np.concatenate([data.y_pool] * copies)
project = services.create_project(name="soak digits", classes=classes, config={
    "strategy": "robust", "batch_size": batch, "initial_size": batch, "secured_size": 50, "h": 2,
    "backbone": "flatten", "feature_size": 8, "channels": 1, "n_clusters": 10, **extra})
report = importers.import_arrays(project=project, images=x, labels=y, upscale=2)
assert report.ok, report.errors
membership.set_members(project=project, users=users)
services.start_project(project=project)
json.dump({"project": project.pk, "items": int(len(x)),
           "users": [{"username": u.username, "token": Token.objects.create(user=u).key} for u in users],
           "seconds": round(time.perf_counter() - t0, 1)}, open(out, "w"))
'''


def log(msg: str) -> None:
    print(f"[soak {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def with_db(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + name, parts.query, parts.fragment))


def pct(values: list[float], q: float) -> float:
    """Nearest-rank percentile (nan when empty)."""
    if not values:
        return float("nan")
    s = sorted(values)
    return s[max(0, min(len(s) - 1, math.ceil(q / 100 * len(s)) - 1))]


@dataclass
class Stats:
    latency: dict[str, list[float]] = field(default_factory=lambda: {"next": [], "submit": []})
    status: dict[str, Counter] = field(default_factory=lambda: {"next": Counter(), "submit": Counter()})
    created: int = 0  # 201: an annotation accepted by the server
    found: int = 0  # next requests answered with an assignment (work found)
    looked: float = 0.0  # seconds annotators spent looking at images (their busy time)
    resent: int = 0  # 200 on submit: the same answer again (harmless)
    timeline: list[tuple[float, str, int]] = field(default_factory=list)
    polls: list[tuple[float, bool]] = field(default_factory=list)  # (wall clock, found work) of each 200 next


class Soak:
    def __init__(self, args):
        self.args = args
        self.tmp = Path(tempfile.mkdtemp(prefix="robustal-soak-"))
        self.db_name = f"robustal_soak_{os.getpid()}"
        self.db_url = with_db(args.pg_url, self.db_name)
        self.db_created = False
        self.redis_port = free_port()
        self.redis_url = f"redis://127.0.0.1:{self.redis_port}/0"
        self.redis: subprocess.Popen | None = None
        self.gunicorn: subprocess.Popen | None = None
        self.workers: list[subprocess.Popen] = []
        self.fault_log: list[str] = []
        bindir = Path(sys.executable).parent
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("ROBUSTAL_", "CELERY_", "LABELING_"))}
        self.env.update({
            "DJANGO_SETTINGS_MODULE": "config.settings", "DATABASE_URL": self.db_url,
            "SECRET_KEY": "soak-" + os.urandom(16).hex(), "DEBUG": "0", "SECURE_SSL_REDIRECT": "0",
            "SESSION_COOKIE_SECURE": "0", "CSRF_COOKIE_SECURE": "0", "ALLOWED_HOSTS": "127.0.0.1,localhost",
            "CELERY_BROKER_URL": self.redis_url, "CELERY_VISIBILITY_TIMEOUT": str(args.visibility),
            "ROBUSTAL_DATA_DIR": str(self.tmp / "data"), "ROBUSTAL_CACHE_DIR": str(self.tmp / "cache"),
            "LABELING_LOOP_DELAY_SECONDS": str(args.loop_delay), "LABELING_SWEEP_INTERVAL_SECONDS": "10",
            "LABELING_SWEEP_AFTER_SECONDS": str(args.sweep_after), "LOG_LEVEL": "INFO", "PYTHONUNBUFFERED": "1",
            "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
        })
        self.gunicorn_bin = str(bindir / "gunicorn") if (bindir / "gunicorn").exists() else "gunicorn"

    # -- services ------------------------------------------------------------------------------
    def _admin(self, sql: str) -> None:
        import psycopg

        with psycopg.connect(self.args.pg_url, autocommit=True) as conn:
            conn.execute(sql)

    def start_redis(self) -> None:
        self.redis = subprocess.Popen(
            ["redis-server", "--port", str(self.redis_port), "--bind", "127.0.0.1", "--dir", str(self.tmp),
             "--appendonly", "yes", "--save", ""], stdout=open(self.tmp / "redis.log", "a"),
            stderr=subprocess.STDOUT, start_new_session=True)
        import redis

        for _ in range(100):
            try:
                if redis.Redis(port=self.redis_port, socket_connect_timeout=0.5).ping():
                    return
            except Exception:
                time.sleep(0.1)
        raise RuntimeError("redis-server did not start")

    def stop_redis(self) -> None:
        if self.redis is not None and self.redis.poll() is None:
            self.redis.terminate()
            self.redis.wait(timeout=20)

    def django(self, *argv: str, script: str | None = None) -> None:
        cmd = [sys.executable, "-c", script, *argv] if script else [sys.executable, "manage.py", *argv]
        res = subprocess.run(cmd, cwd=ROOT, env=self.env, text=True, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE)
        if res.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd[:3])} failed:\n{res.stderr[-3000:]}")

    def start_worker(self) -> subprocess.Popen:
        n = len(self.workers)
        proc = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "config", "worker", "-Q", "default,train", "--pool", "solo",
             "-B", "-s", str(self.tmp / "celerybeat-schedule"), "-l", "info", "-n", f"soak{n}@%h",
             "--without-gossip", "--without-mingle"],
            cwd=ROOT, env=self.env, stdout=open(self.tmp / f"worker{n}.log", "w"), stderr=subprocess.STDOUT,
            start_new_session=True)
        self.workers.append(proc)
        return proc

    def start_gunicorn(self) -> str:
        port = free_port()
        self.gunicorn = subprocess.Popen(
            [self.gunicorn_bin, "config.wsgi", "--bind", f"127.0.0.1:{port}", "--workers", str(self.args.web_workers),
             "--worker-class", "gthread", "--threads", "8", "--timeout", "60", "--graceful-timeout", "5",
             "--keep-alive", "30"],
            cwd=ROOT, env=self.env, stdout=open(self.tmp / "gunicorn.log", "w"), stderr=subprocess.STDOUT,
            start_new_session=True)
        return f"http://127.0.0.1:{port}"

    def wait_ready(self, base: str, token: str) -> None:
        import urllib.request

        req = urllib.request.Request(base + NEXT_URL, headers={"Authorization": f"Token {token}"})
        for _ in range(300):
            try:
                with urllib.request.urlopen(req, timeout=5) as resp:
                    if resp.status == 200:
                        return
            except Exception:
                time.sleep(0.3)
        raise RuntimeError("gunicorn did not answer")

    def cleanup(self) -> None:
        procs = ([self.gunicorn] if self.gunicorn else []) + self.workers
        for proc in procs:
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        for proc in procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
        self.stop_redis()
        if self.db_created:
            self._admin(f'DROP DATABASE IF EXISTS "{self.db_name}" WITH (FORCE)')
        if not self.args.keep:
            shutil.rmtree(self.tmp, ignore_errors=True)
        else:
            log(f"logs kept in {self.tmp}")

    # -- database reads (the simulated annotators' eyes, the fault trigger, the final check) -----
    def query(self, sql: str, params=()) -> list[tuple]:
        import psycopg

        with psycopg.connect(self.db_url, autocommit=True) as conn:
            return conn.execute(sql, params).fetchall()

    # -- faults --------------------------------------------------------------------------------
    async def inject(self, at: float, t0: float) -> None:
        await asyncio.sleep(at)
        fault = self.args.fault
        if fault == "kill-worker":
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:  # a loop task in the middle of its work
                running = await asyncio.to_thread(self.query, "SELECT id FROM labeling_querybatch WHERE frozen_at "
                                                  "IS NOT NULL AND closed_at IS NULL")
                if running:
                    break
                await asyncio.sleep(0.05)
            victim = self.workers[-1]
            os.killpg(victim.pid, signal.SIGKILL)
            victim.wait()
            t = time.perf_counter() - t0
            self.fault_log.append(f"{t:.0f} s: worker SIGKILLed" + (f" during the loop task of batch {running[0][0]}"
                                                                    if running else " (no loop task was running)"))
            self.start_worker()
            self.fault_log.append(f"{t:.0f} s: worker restarted")
        elif fault == "stop-redis":
            await asyncio.to_thread(self.stop_redis)
            self.fault_log.append(f"{time.perf_counter() - t0:.0f} s: redis-server stopped")
            await asyncio.sleep(self.args.outage)
            await asyncio.to_thread(self.start_redis)
            self.fault_log.append(f"{time.perf_counter() - t0:.0f} s: redis-server started again "
                                  f"({self.args.outage:.0f} s outage)")

    # -- load ----------------------------------------------------------------------------------
    async def annotator(self, session, base: str, token: str, stats: Stats, deadline: float, truth_conn,
                        truth_lock, rng: random.Random, t0: float) -> None:
        headers = {"Authorization": f"Token {token}"}
        while time.perf_counter() < deadline:
            start = time.perf_counter()
            asg = None
            try:
                async with session.get(base + NEXT_URL, headers=headers) as resp:
                    body = await resp.read()
                    code = resp.status
                if code == 200:
                    asg = json.loads(body).get("assignment")
            except Exception:
                code = 0
            stats.latency["next"].append(time.perf_counter() - start)
            stats.status["next"][code] += 1
            if code == 200:
                stats.polls.append((time.time(), asg is not None))
            if code != 200 or asg is None:
                await asyncio.sleep(self.args.poll)
                continue
            stats.found += 1
            async with truth_lock:  # the simulated annotator looks at the image
                cur = await truth_conn.execute("SELECT i.ground_truth FROM labeling_assignment a JOIN labeling_item i "
                                               "ON i.id = a.item_id WHERE a.id = %s", (asg["id"],))
                row = await cur.fetchone()
            look = rng.uniform(0.5, 1.5) * self.args.think
            stats.looked += min(look, max(deadline - time.perf_counter(), 0.0))
            await asyncio.sleep(look)
            start = time.perf_counter()
            try:
                async with session.post(base + SUBMIT_URL.format(id=asg["id"]), headers=headers,
                                        json={"label": int(row[0]), "seconds": self.args.think}) as resp:
                    await resp.read()
                    code = resp.status
            except Exception:
                code = 0
            stats.latency["submit"].append(time.perf_counter() - start)
            stats.status["submit"][code] += 1
            stats.created += int(code == 201)
            stats.resent += int(code == 200)
            if code not in (200, 201):
                stats.timeline.append((time.perf_counter() - t0, "submit", code))

    async def drive(self, base: str, users: list[dict]) -> tuple[Stats, float]:
        import aiohttp
        import psycopg

        stats = Stats()
        seconds = self.args.minutes * 60
        truth_conn = await psycopg.AsyncConnection.connect(self.db_url, autocommit=True)
        lock = asyncio.Lock()
        connector = aiohttp.TCPConnector(limit=0)
        try:
            async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60)) as session:
                t0 = time.perf_counter()
                deadline = t0 + seconds
                jobs = [self.annotator(session, base, u["token"], stats, deadline, truth_conn, lock,
                                       random.Random(k), t0) for k, u in enumerate(users)]
                if self.args.fault != "none":
                    jobs.append(self.inject(seconds / 2, t0))
                await asyncio.gather(*jobs)
                elapsed = time.perf_counter() - t0
        finally:
            await truth_conn.close()
        return stats, elapsed

    # -- the final check -----------------------------------------------------------------------
    def settle(self, project: int) -> float:
        """Wait until no project is 'model updating' (the loop caught up); returns the seconds waited."""
        t0 = time.monotonic()
        while time.monotonic() - t0 < self.args.drain:
            state = self.query("SELECT state FROM labeling_project WHERE id = %s", (project,))[0][0]
            if state != "updating":
                break
            time.sleep(1)
        return time.monotonic() - t0

    def report(self, stats: Stats, elapsed: float, project: int, settled: float) -> bool:
        q = self.query
        stored = q("SELECT count(*) FROM labeling_annotation")[0][0]
        batches = q("SELECT iteration, phase, closed_at IS NOT NULL FROM labeling_querybatch WHERE project_id = %s "
                    "ORDER BY iteration", (project,))
        metrics = q("SELECT iteration, count(*) FROM labeling_iterationmetric WHERE project_id = %s GROUP BY 1",
                    (project,))
        state, stop = q("SELECT state, stop_reason FROM labeling_project WHERE id = %s", (project,))[0]
        closed = sum(1 for _, _, c in batches if c)
        iterations = [i for i, _, _ in batches]
        # each processed batch opens exactly one next; pipeline keeps two open (the start opens two)
        expected = closed + (0 if state == "finished" else 2 if self.args.pipeline else 1)
        logs = "".join(p.read_text(errors="replace") for p in sorted(self.tmp.glob("*.log")))
        enq = Counter(ENQUEUED.findall(logs))
        not_enq = len(NOT_ENQUEUED.findall(logs))
        outcomes = Counter(o for _, o in OUTCOME.findall(logs))
        received = Counter(RECEIVED.findall(logs))
        redelivered = sum(1 for n in received.values() if n > 1)
        steps = sum(n for o, n in outcomes.items() if o != "noop")  # loop steps that changed something
        extra = sum(enq.values()) - steps  # sends beyond one per step (a lost send is re-sent: counts here)
        metric_ok = all(n == 1 for _, n in metrics) and len(metrics) == closed
        all_req = {k: sum(v.values()) for k, v in stats.status.items()}

        print(f"\nSoak: {self.args.users} annotators, {elapsed / 60:.1f} min, fault "
              f"{self.args.fault}; gunicorn gthread {self.args.web_workers}x8, 1 worker (solo, -B), PostgreSQL, "
              f"private Redis; {os.cpu_count()} CPUs")
        for line in self.fault_log:
            print(f"  fault: {line}")
        print(f"  loop settled {settled:.0f} s after the load stopped; project {state}"
              + (f" ({stop})" if stop else ""))
        print()
        print(f"| {'request':8} | {'served':>7} | {'2xx':>7} | {'errors (by status)':28} | {'p50 ms':>7} | "
              f"{'p95 ms':>7} | {'max ms':>8} |")
        print(f"|{'-' * 10}|{'-' * 9}|{'-' * 9}|{'-' * 30}|{'-' * 9}|{'-' * 9}|{'-' * 10}|")
        for kind in ("next", "submit"):
            c = stats.status[kind]
            ok = sum(n for s, n in c.items() if 200 <= s < 300)
            errs = ", ".join(f"{'conn' if s == 0 else s}: {n}" for s, n in sorted(c.items()) if not 200 <= s < 300)
            lat = [x * 1000 for x in stats.latency[kind]]
            print(f"| {kind:8} | {all_req[kind]:7d} | {ok:7d} | {errs or 'none':28} | {pct(lat, 50):7.1f} | "
                  f"{pct(lat, 95):7.1f} | {max(lat) if lat else float('nan'):8.1f} |")
        total = sum(all_req.values())
        nexts = sum(n for s, n in stats.status["next"].items() if s == 200)
        print(f"\n  requests served: {total} ({total / elapsed:.1f}/s)")
        print(f"  utilisation: {stats.found} of {nexts} next requests found work "
              f"({100 * stats.found / max(nexts, 1):.1f} %); annotators spent {stats.looked:.0f} of "
              f"{self.args.users * elapsed:.0f} annotator-seconds looking at images "
              f"({100 * stats.looked / max(self.args.users * elapsed, 1e-9):.1f} %); "
              f"{stats.created / elapsed:.2f} labels/s; pipeline {'on' if self.args.pipeline else 'off'}, "
              f"batch {self.args.batch}"
              f"{f' (or {self.args.batch_per_annotator} per active annotator)' if self.args.batch_per_annotator else ''}"
              f", think {self.args.think:g} s")
        # the start: until the first loop step closed batch 0, nobody can have a model-chosen batch;
        # a project that stopped (pool exhausted, budget) has no work left for anyone after its last step
        first = q("SELECT extract(epoch FROM closed_at) FROM labeling_querybatch WHERE project_id = %s "
                  "AND iteration = 0 AND closed_at IS NOT NULL", (project,))
        end = (q("SELECT extract(epoch FROM max(closed_at)) FROM labeling_querybatch WHERE project_id = %s",
                 (project,))[0][0] if state == "finished" else None)
        end = float("inf") if end is None else float(end)
        if first:
            cut = float(first[0][0])
            for name, part in (("start (until the first step closed batch 0)", [f for t, f in stats.polls if t < cut]),
                               ("after the start" + (", until the project stopped" if end < float("inf") else ""),
                                [f for t, f in stats.polls if cut <= t < end]),
                               ("after the project stopped", [f for t, f in stats.polls if t >= end])):
                if part:
                    print(f"  utilisation {name}: {sum(part)} of {len(part)} next requests found work "
                          f"({100 * sum(part) / len(part):.1f} %)")
        print(f"  annotations accepted (201): {stats.created}; stored rows: {stored}; "
              f"{'EQUAL' if stored == stats.created else 'MISMATCH'} (same answer re-sent, 200: {stats.resent})")
        print(f"  batches made: {len(batches)} (iterations {iterations[0] if iterations else '-'}.."
              f"{iterations[-1] if iterations else '-'}, closed {closed}); expected {expected} "
              f"(closed + the open {'two' if self.args.pipeline else 'one'}); iterations contiguous: {iterations == list(range(len(iterations)))}; "
              f"one metric per closed batch: {metric_ok}")
        print(f"  loop-task sends: {sum(enq.values())} for {steps} loop steps (a batch with re-annotation takes "
              f"two); sends beyond one per step: {extra}; failed sends (broker down): {not_enq}")
        print(f"  loop-task messages delivered {sum(received.values())} times, {redelivered} of them redelivered "
              f"after a worker died; outcomes: " + ", ".join(f"{k}: {v}" for k, v in sorted(outcomes.items())))
        ok = (stored == stats.created and len(batches) == expected and metric_ok and extra == 0
              and iterations == list(range(len(iterations))) and state != "updating")
        print(f"  verdict: {'PASS' if ok else 'FAIL'}")
        if stats.timeline:
            print("  non-2xx submits (t s, status): " + ", ".join(f"{t:.0f}:{c}" for t, _, c in stats.timeline[:20]))
        return ok

    def run(self) -> int:
        try:
            self._admin(f'CREATE DATABASE "{self.db_name}"')
            self.db_created = True
            self.django("migrate", "--noinput")
            self.start_redis()
            out = self.tmp / "setup.json"
            self.django(str(self.args.users), str(self.args.copies), str(self.args.batch), str(out),
                        json.dumps({**({"pipeline": True} if self.args.pipeline else {}),
                                    **({"batch_per_annotator": self.args.batch_per_annotator}
                                       if self.args.batch_per_annotator else {})}), script=SETUP_SCRIPT)
            data = json.loads(out.read_text())
            log(f"project {data['project']}: {data['items']} digits images, {self.args.users} annotators "
                f"(setup {data['seconds']} s)")
            self.start_worker()
            base = self.start_gunicorn()
            self.wait_ready(base, data["users"][0]["token"])
            log(f"gunicorn on {base}; driving for {self.args.minutes} min, fault {self.args.fault} midway")
            stats, elapsed = asyncio.run(self.drive(base, data["users"]))
            log("load stopped; waiting for the loop to settle")
            settled = self.settle(data["project"])
            time.sleep(2)
            return 0 if self.report(stats, elapsed, data["project"], settled) else 1
        finally:
            self.cleanup()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--users", type=int, default=50)
    p.add_argument("--fault", choices=["kill-worker", "stop-redis", "none"], default="kill-worker")
    p.add_argument("--outage", type=float, default=30.0, help="seconds Redis stays down (stop-redis)")
    p.add_argument("--visibility", type=int, default=60, help="CELERY_VISIBILITY_TIMEOUT of this run")
    p.add_argument("--sweep-after", type=float, default=20.0, help="LABELING_SWEEP_AFTER_SECONDS of this run")
    p.add_argument("--loop-delay", type=float, default=3.0, help="LABELING_LOOP_DELAY_SECONDS of this run")
    p.add_argument("--batch", type=int, default=50, help="query batch size")
    p.add_argument("--copies", type=int, default=3, help="the digits pool (1,797 images) this many times, noised")
    p.add_argument("--think", type=float, default=1.0, help="mean seconds an annotator looks at an image")
    p.add_argument("--poll", type=float, default=1.0, help="seconds between next/ polls when there is no work")
    p.add_argument("--pipeline", action="store_true", help="the project's pipeline setting on (two open batches)")
    p.add_argument("--batch-per-annotator", type=int, default=None,
                   help="the project's batch_per_annotator: the loop opens batches of max(--batch, N x the "
                        "annotators working); those start opens keep --batch")
    p.add_argument("--web-workers", type=int, default=2)
    p.add_argument("--drain", type=float, default=120.0, help="max seconds to wait for the loop afterwards")
    p.add_argument("--pg-url", default=os.environ.get("ROBUSTAL_SOAK_PG_URL", "postgres://postgres@127.0.0.1:5432/postgres"))
    p.add_argument("--keep", action="store_true", help="keep the temp folder with the logs")
    args = p.parse_args(argv)
    if shutil.which("redis-server") is None:
        p.error("redis-server not found on PATH")
    return Soak(args).run()


if __name__ == "__main__":
    sys.exit(main())
