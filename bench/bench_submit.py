"""Benchmark (d): annotation submission under load (gunicorn + PostgreSQL or the embedded SQLite, token auth).

Self-contained: creates a throw-away PostgreSQL database, migrates it, creates a project whose
``--users`` annotators are its members and whose open batch holds ``--users x --per-user``
first-label items in the shared queue (plus secured-set ones that nobody answers, so the batch
never completes and the loop task is never enqueued), starts gunicorn on a free loopback port,
and drives it with ``--users`` concurrent simulated annotators for ``--seconds``. Each annotator
does the browser's loop: ``GET /api/labeling/next/`` (which claims the next waiting item, or
returns the one they hold), then ``POST /api/labeling/assignments/<id>/annotation/`` for it with
a valid label (closed loop, no think time unless ``--think-ms``). With ``--no-next`` the items are
claimed for them up front (``--per-user`` each) and they only POST. Afterwards it checks that the number of
Annotation rows equals the number of accepted (2xx) submits, optionally shows the SQL one submit
runs (``CaptureQueriesContext``, rolled back), and cleans up (gunicorn, database, temp dir), also
on Ctrl-C and errors.

The load generator runs on asyncio in this process: by default a minimal keep-alive HTTP/1.1
client on asyncio streams (``RawConnection``, about half of aiohttp's CPU per request),
or aiohttp (``--client aiohttp``). It shares the
machine with gunicorn and PostgreSQL; its own CPU time, gunicorn's, PostgreSQL's and the rest of
the machine's are printed so you can tell what was the bottleneck. Closed loop (no think time):
by Little's law the mean latency is annotators / throughput (50 annotators at 300 submits/s wait
167 ms on average), so p95 under 50 ms with 50 closed-loop annotators would take over 1,000
submits/s; ``--think-ms`` paces each annotator like a person and measures latency at a given
rate instead.

    .venv/bin/python bench/bench_submit.py                        # 30 s, 50 annotators, config/gunicorn.conf.py
    .venv/bin/python bench/bench_submit.py --seconds 10 --config sync:5:1 --config gthread:4:8
    .venv/bin/python bench/bench_submit.py --no-next --no-profile
    .venv/bin/python bench/bench_submit.py --db sqlite --think-ms 150      # what scripts/run.sh starts

``--config CLASS:WORKERS:THREADS`` may repeat: each runs against a fresh gunicorn on the same
database (later configs see a batch with more answered rows). Needs PostgreSQL on
``--pg-url`` (default ``postgres://postgres@127.0.0.1:5432/postgres``, a role that may create
databases); Redis is not used (``CELERY_BROKER_URL=filesystem://`` in a temp dir).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
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
GUNICORN_CONF = ROOT / "config" / "gunicorn.conf.py"
NEXT_URL = "/api/labeling/next/?prefetch=1"  # what the annotate page asks: its item and one ahead
SUBMIT_URL = "/api/labeling/assignments/{id}/annotation/"

# ---------------------------------------------------------------------------------------------
# Scripts run in Django subprocesses (settings from the environment, cwd = repository root)
# ---------------------------------------------------------------------------------------------

SETUP_SCRIPT = r'''
import json, sys, time
import django
django.setup()
from django.contrib.auth import get_user_model
from rest_framework.authtoken.models import Token
from datetime import timedelta
from django.utils import timezone
from labeling import membership, services
from labeling.models import Assignment, Item

n_users, per_user, secured, out = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
preclaim = sys.argv[5] == "preclaim"  # --no-next: claimed up front (one UPDATE each), POST only
t0 = time.perf_counter()
User = get_user_model()
users = []
for i in range(n_users):
    u = User.objects.create_user(username=f"bench{i:03d}")  # no usable password: token only
    services.add_annotator(u)
    users.append(u)
n_first = n_users * per_user
classes = ["cat", "dog", "bird"]
project = services.create_project(
    name="submit benchmark", classes=classes,
    config={"strategy": "random", "batch_size": 1, "initial_size": n_first, "secured_size": secured,
            "h": 2, "backbone": "flatten", "feature_size": 8, "channels": 1})
n_items = n_first + secured + 1  # one item stays in the pool (what a later batch of 1 would need)
# No image files: submit and next never open them (only the image URL is reversed).
Item.objects.bulk_create([Item(project=project, index=k, image=f"labeling/bench/{k}.png", width=8, height=8,
                               source=f"bench-{k}") for k in range(n_items)], batch_size=5000)
membership.set_members(project=project, users=users)
batch = services.start_project(project=project)  # the random initial batch, queued for the members
mine = {u.pk: [] for u in users}
if preclaim:
    rows = (Assignment.objects.filter(batch=batch, kind=Assignment.Kind.FIRST_LABEL).order_by("id")
            .values_list("id", flat=True))
    for k, aid in enumerate(rows):
        mine[users[k % n_users].pk].append(aid)
    for uid, ids in mine.items():
        Assignment.objects.filter(pk__in=ids).update(labeler_id=uid, status="open",
                                                     lease_until=timezone.now() + timedelta(days=1))
payload = {
    "project": project.pk, "batch": batch.pk, "n_classes": len(classes),
    "first_label": Assignment.objects.filter(batch=batch, kind=Assignment.Kind.FIRST_LABEL).count(),
    "secured_open": Assignment.objects.filter(batch=batch, kind=Assignment.Kind.SECURED).count(),
    "users": [{"username": u.username, "token": Token.objects.create(user=u).key, "assignments": mine[u.pk]}
              for u in users],
    "seconds": round(time.perf_counter() - t0, 1),
}
with open(out, "w") as f:
    json.dump(payload, f)
'''

PROFILE_SCRIPT = r'''
import json, sys, time
import django
django.setup()
from django.db import connection, transaction
from rest_framework.test import APIClient

token, label = sys.argv[1], int(sys.argv[3])
client = APIClient(SERVER_NAME="127.0.0.1")
client.credentials(HTTP_AUTHORIZATION=f"Token {token}")
captured = []


def timed(execute, sql, params, many, context):  # like CaptureQueriesContext, with microsecond timing
    t0 = time.perf_counter()
    try:
        return execute(sql, params, many, context)
    finally:
        try:
            text = sql % tuple(repr(p) for p in params) if params and not many else sql
        except (TypeError, ValueError):
            text = f"{sql} {params!r}"
        captured.append({"ms": round((time.perf_counter() - t0) * 1000, 3), "sql": text})


out = {}
held = {}


def next_claim():
    resp = client.get("/api/labeling/next/?prefetch=1")
    held["id"] = (resp.json().get("assignment") or {}).get("id")
    return resp


def submit():
    return client.post(f"/api/labeling/assignments/{held['id']}/annotation/", {"label": label, "seconds": 1.5},
                       format="json")


with transaction.atomic():  # everything below is rolled back: the benchmark's counts stay exact
    next_claim()  # warm (imports, URL resolver, first-query costs), then answer what it handed out
    submit()
    for name, call in (("next", next_claim), ("submit", submit)):  # the browser's loop, timed
        captured.clear()
        t0 = time.perf_counter()
        with connection.execute_wrapper(timed):
            resp = call()
        out[name] = {"status": resp.status_code, "total_ms": round((time.perf_counter() - t0) * 1000, 2),
                     "queries": list(captured)}
    transaction.set_rollback(True)
print(json.dumps(out))
'''


# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------


def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def with_db(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + name, parts.query, parts.fragment))


def pct(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of an ascending list (nan when empty)."""
    if not sorted_values:
        return float("nan")
    k = max(0, min(len(sorted_values) - 1, math.ceil(q / 100 * len(sorted_values)) - 1))
    return sorted_values[k]


def machine_cpu() -> tuple[int, int]:
    """(busy, total) jiffies of the whole machine from /proc/stat."""
    with open("/proc/stat") as f:
        vals = [int(v) for v in f.readline().split()[1:]]
    idle = vals[3] + (vals[4] if len(vals) > 4 else 0)
    return sum(vals) - idle, sum(vals)


def proc_cpu(root_pid: int) -> tuple[float, dict[int, float]]:
    """CPU seconds (user + system) of ``root_pid`` with its direct children (gunicorn and its
    workers), and per ``postgres`` process on the machine (PostgreSQL's share; other databases'
    sessions included, so an upper bound)."""
    tick = os.sysconf("SC_CLK_TCK")
    tree, pg = 0.0, {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                head, tail = f.read().rsplit(")", 1)
        except OSError:
            continue
        fields = tail.split()
        pid, ppid, cpu = int(entry), int(fields[1]), (int(fields[11]) + int(fields[12])) / tick
        if pid == root_pid or ppid == root_pid:
            tree += cpu
        elif head.split("(", 1)[1] == "postgres":
            pg[pid] = cpu
    return tree, pg


def pg_delta(before: dict[int, float], after: dict[int, float]) -> float:
    """CPU seconds postgres processes used between two samples (new ones count from zero)."""
    return sum(cpu - before.get(pid, 0.0) for pid, cpu in after.items())


@dataclass
class Annotator:
    username: str
    token: str
    assignments: list[int]
    cursor: int = 0

    def take(self) -> int | None:
        if self.cursor >= len(self.assignments):
            return None
        aid = self.assignments[self.cursor]
        self.cursor += 1
        return aid


@dataclass
class Stats:
    latencies: dict[str, list[float]] = field(default_factory=lambda: {"submit": [], "next": []})
    statuses: dict[str, Counter] = field(default_factory=lambda: {"submit": Counter(), "next": Counter()})
    exhausted: int = 0
    no_work: int = 0  # next/ answered 200 without an assignment
    attempted: int = 0  # submits sent

    def ok(self, kind: str) -> int:
        return sum(n for s, n in self.statuses[kind].items() if 200 <= s < 300)

    def requests(self, kind: str) -> int:
        return sum(self.statuses[kind].values())


# ---------------------------------------------------------------------------------------------
# Load generator
# ---------------------------------------------------------------------------------------------


async def _annotator_loop(client, who: Annotator, stats: Stats, deadline: float, n_classes: int,
                          with_next: bool, think: float) -> None:
    """One simulated annotator; ``client`` has ``get(path)`` and ``post(path, body)`` coroutines
    returning (status, body) on this annotator's own connection, and ``close()``."""
    try:
        while time.perf_counter() < deadline:
            if with_next:  # the browser's loop: next/ claims (or returns) the item to answer
                aid = None
                t0 = time.perf_counter()
                try:
                    code, body = await client.get(NEXT_URL)
                    stats.latencies["next"].append(time.perf_counter() - t0)
                    if code == 200:
                        aid = (json.loads(body).get("assignment") or {}).get("id")
                except Exception:  # connection error: counted as status 0
                    code = 0
                    await asyncio.sleep(0.05)
                stats.statuses["next"][code] += 1
                if aid is None:
                    stats.no_work += int(code == 200)
                    await asyncio.sleep(0.2)
                    continue
            else:
                aid = who.take()
                if aid is None:
                    stats.exhausted += 1
                    return
            stats.attempted += 1
            t0 = time.perf_counter()
            try:
                code, _ = await client.post(SUBMIT_URL.format(id=aid),
                                            b'{"label": %d, "seconds": 1.5}' % (aid % n_classes))
                stats.latencies["submit"].append(time.perf_counter() - t0)
            except Exception:
                code = 0
                await asyncio.sleep(0.05)
            stats.statuses["submit"][code] += 1
            if think:
                await asyncio.sleep(think)
    finally:
        client.close()


class AiohttpClient:
    """An annotator on a shared aiohttp session (its connection pool)."""

    def __init__(self, session, base: str, token: str):
        self.session, self.base = session, base
        self.headers = {"Authorization": f"Token {token}", "Content-Type": "application/json"}

    async def get(self, path: str) -> tuple[int, bytes]:
        async with self.session.get(self.base + path, headers=self.headers) as resp:
            return resp.status, await resp.read()

    async def post(self, path: str, body: bytes) -> tuple[int, bytes]:
        async with self.session.post(self.base + path, headers=self.headers, data=body) as resp:
            return resp.status, await resp.read()

    def close(self) -> None:
        pass


class RawConnection:
    """One keep-alive HTTP/1.1 connection on asyncio streams: the cheapest client we could write.

    The load generator shares the two cores with gunicorn and PostgreSQL, so its own CPU per
    request is taken from the server; measured here (sync workers, a new connection per request)
    aiohttp spent 1.45 ms of CPU per request and this 0.68 ms. It sends prebuilt requests and
    reads a ``Content-Length`` or chunked body.
    """

    def __init__(self, host: str, port: int):
        self.host, self.port = host, port
        self.reader = self.writer = None

    async def request(self, data: bytes) -> tuple[int, bytes]:
        for attempt in (0, 1):  # a keep-alive connection the server closed meanwhile: reconnect once
            if self.writer is None:
                self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
            try:
                self.writer.write(data)
                head = await self.reader.readuntil(b"\r\n\r\n")
                break
            except (ConnectionError, asyncio.IncompleteReadError):
                self.close()
                if attempt:
                    raise
        status = int(head[9:12])
        lower = head.lower()
        at = lower.find(b"\r\ncontent-length:")
        if at >= 0:
            end = lower.index(b"\r\n", at + 2)
            body = await self.reader.readexactly(int(lower[at + 17:end]))
        elif b"\r\ntransfer-encoding: chunked" in lower:
            parts = []
            while True:
                size = int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16)
                parts.append(await self.reader.readexactly(size + 2))
                if size == 0:
                    break
            body = b"".join(p[:-2] for p in parts)
        else:
            body = await self.reader.read()
        if b"\r\nconnection: close" in lower:
            self.close()
        return status, body

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


class RawClient:
    """An annotator on its own :class:`RawConnection`, with prebuilt request heads."""

    def __init__(self, base: str, token: str):
        parts = urlsplit(base)
        self.conn = RawConnection(parts.hostname, parts.port)
        self.head = f"Host: {parts.netloc}\r\nAuthorization: Token {token}\r\nAccept: application/json\r\n"

    async def get(self, path: str) -> tuple[int, bytes]:
        return await self._send(f"GET {path} HTTP/1.1\r\n{self.head}\r\n".encode())

    async def post(self, path: str, body: bytes) -> tuple[int, bytes]:
        return await self._send(f"POST {path} HTTP/1.1\r\n{self.head}Content-Type: application/json\r\n"
                                f"Content-Length: {len(body)}\r\n\r\n".encode() + body)

    async def _send(self, data: bytes) -> tuple[int, bytes]:
        try:
            return await self.conn.request(data)
        except Exception:
            self.conn.close()  # start afresh on the next request
            raise

    def close(self) -> None:
        self.conn.close()


async def drive(base: str, annotators: list[Annotator], seconds: float, n_classes: int, with_next: bool,
                think: float, client: str = "raw") -> tuple[Stats, float]:
    stats = Stats()

    async def run(clients) -> float:
        start = time.perf_counter()
        await asyncio.gather(*(_annotator_loop(c, a, stats, start + seconds, n_classes, with_next, think)
                               for c, a in zip(clients, annotators)))
        return time.perf_counter() - start

    if client == "raw":
        return stats, await run([RawClient(base, a.token) for a in annotators])
    import aiohttp

    connector = aiohttp.TCPConnector(limit=0, limit_per_host=0, force_close=False, ttl_dns_cache=None)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60)) as session:
        return stats, await run([AiohttpClient(session, base, a.token) for a in annotators])


# ---------------------------------------------------------------------------------------------
# The benchmark
# ---------------------------------------------------------------------------------------------


class Bench:
    def __init__(self, args):
        self.args = args
        self.tmp = Path(tempfile.mkdtemp(prefix="robustal-bench-submit-"))
        self.db_name = f"robustal_bench_{os.getpid()}"
        self.db_created = False
        self.admin_url = args.pg_url
        self.sqlite = args.db == "sqlite"  # the embedded default that scripts/run.sh starts
        self.db_url = (f"sqlite:///{self.tmp / 'data' / 'db.sqlite3'}" if self.sqlite
                       else with_db(args.pg_url, self.db_name))
        self.gunicorn: subprocess.Popen | None = None
        self.accepted_total = 0  # 2xx submits of every run, warm-ups included (for the row check)
        self.attempted_total = 0
        self.python = sys.executable
        venv_gunicorn = Path(sys.executable).parent / "gunicorn"
        self.gunicorn_bin = str(venv_gunicorn) if venv_gunicorn.exists() else (shutil.which("gunicorn") or "gunicorn")
        self.env = dict(os.environ)
        self.env.update({
            "DJANGO_SETTINGS_MODULE": "config.settings", "DATABASE_URL": self.db_url,
            # scripts/run.sh (the embedded default) starts the server with DEBUG=0 since 2026-12-07
            "SECRET_KEY": "bench-submit-" + os.urandom(16).hex(),
            "DEBUG": args.debug if args.debug is not None else "0",
            "SECURE_SSL_REDIRECT": "0", "SESSION_COOKIE_SECURE": "0", "CSRF_COOKIE_SECURE": "0",
            "ALLOWED_HOSTS": "127.0.0.1,localhost", "CELERY_BROKER_URL": "filesystem://",
            "ROBUSTAL_DATA_DIR": str(self.tmp / "data"), "ROBUSTAL_CACHE_DIR": str(self.tmp / "cache"),
            "LOG_LEVEL": "WARNING", "PYTHONUNBUFFERED": "1",
        })
        for k in ("ROBUSTAL_BROKER_DIR", "MEDIA_ROOT", "STATIC_ROOT", "CELERY_RESULT_BACKEND",
                  "CELERY_TASK_ALWAYS_EAGER"):
            self.env.pop(k, None)

    # -- database --------------------------------------------------------------------------
    def _admin(self, sql: str) -> None:
        import psycopg

        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(sql)

    def create_db(self) -> None:
        if self.sqlite:
            (self.tmp / "data").mkdir(parents=True, exist_ok=True)  # migrate creates the file
            return
        self._admin(f'CREATE DATABASE "{self.db_name}"')
        self.db_created = True

    def drop_db(self) -> None:
        if self.db_created:
            self._admin(f'DROP DATABASE IF EXISTS "{self.db_name}" WITH (FORCE)')
            self.db_created = False

    def db_counts(self, batch_id: int) -> dict:
        if self.sqlite:
            import sqlite3

            conn = sqlite3.connect(self.db_url.removeprefix("sqlite:///"))
            try:
                q = lambda sql, *p: conn.execute(sql.replace("%s", "?"), p).fetchone()[0]  # noqa: E731
                return {"annotations": q("SELECT count(*) FROM labeling_annotation"),
                        "done": q("SELECT count(*) FROM labeling_assignment WHERE batch_id = %s AND status = 'done'",
                                  batch_id),
                        "project_state": q("SELECT state FROM labeling_project"),
                        "batch_closed": bool(q("SELECT closed_at IS NOT NULL FROM labeling_querybatch WHERE id = %s",
                                               batch_id))}
            finally:
                conn.close()
        import psycopg

        with psycopg.connect(self.db_url, autocommit=True) as conn:
            annotations = conn.execute("SELECT count(*) FROM labeling_annotation").fetchone()[0]
            done = conn.execute("SELECT count(*) FROM labeling_assignment WHERE batch_id = %s AND status = 'done'",
                                (batch_id,)).fetchone()[0]
            state = conn.execute("SELECT state FROM labeling_project").fetchone()[0]
            closed = conn.execute("SELECT closed_at IS NOT NULL FROM labeling_querybatch WHERE id = %s",
                                  (batch_id,)).fetchone()[0]
        return {"annotations": annotations, "done": done, "project_state": state, "batch_closed": closed}

    # -- django subprocesses -----------------------------------------------------------------
    def django(self, *argv: str, script: str | None = None, capture: bool = False) -> str:
        cmd = [self.python, "-c", script, *argv] if script else [self.python, "manage.py", *argv]
        res = subprocess.run(cmd, cwd=ROOT, env=self.env, text=True,
                             stdout=subprocess.PIPE if capture else subprocess.DEVNULL, stderr=subprocess.PIPE)
        if res.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd[:3])} failed ({res.returncode}):\n{res.stderr[-3000:]}")
        return res.stdout if capture else ""

    def setup(self, per_user: int) -> dict:
        t0 = time.perf_counter()
        self.create_db()
        self.django("migrate", "--noinput")
        log(f"database {self.db_name} created and migrated in {time.perf_counter() - t0:.1f} s")
        out = self.tmp / "setup.json"
        self.django(str(self.args.users), str(per_user), str(self.args.secured), str(out),
                    "preclaim" if self.args.no_next else "queue", script=SETUP_SCRIPT)
        data = json.loads(out.read_text())
        log(f"project {data['project']}: {data['first_label']} first-label items for {self.args.users} "
            f"members ({'claimed up front' if self.args.no_next else 'in the shared queue'}) + "
            f"{data['secured_open']} secured-set ones left open (setup {data['seconds']} s)")
        return data

    # -- gunicorn ------------------------------------------------------------------------------
    def start_gunicorn(self, worker_class: str, workers: int, threads: int, token: str) -> str:
        port = free_port()
        # the project's settings file (keep-alive, timeouts), with this run's workers and threads
        if worker_class == "granian":
            if not (Path(sys.executable).parent / "granian").exists():
                raise RuntimeError(f"--config granian needs granian: {Path(sys.executable).parent}/pip install granian")
            # granian (Rust HTTP server, WSGI interface): keep-alive, threads per worker block on the DB
            cmd = [str(Path(sys.executable).parent / "granian"), "--interface", "wsgi", "--host", "127.0.0.1",
                   "--port", str(port), "--workers", str(workers), "--blocking-threads", str(threads),
                   "--runtime-threads", "1", "--log-level", "warning", "--no-ws", "config.wsgi:application"]
        else:
            cmd = [self.gunicorn_bin, "-c", str(GUNICORN_CONF), "config.wsgi", "--bind", f"127.0.0.1:{port}",
                   "--workers", str(workers), "--worker-class", worker_class, "--threads", str(threads),
                   "--log-level", "warning", "--graceful-timeout", "5", "--timeout", "60"]
        self.gunicorn_log_path = self.tmp / f"gunicorn-{port}.log"
        self.gunicorn_log = open(self.gunicorn_log_path, "w")
        self.gunicorn = subprocess.Popen(cmd, cwd=ROOT, env=self.env, stdout=self.gunicorn_log,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        base = f"http://127.0.0.1:{port}"
        self._wait_ready(base, token)
        log(f"gunicorn {worker_class} workers={workers} threads={threads} on {base} (pid {self.gunicorn.pid})")
        return base

    def _wait_ready(self, base: str, token: str) -> None:
        import urllib.request

        deadline = time.monotonic() + 90
        req = urllib.request.Request(base + NEXT_URL, headers={"Authorization": f"Token {token}"})
        while time.monotonic() < deadline:
            if self.gunicorn.poll() is not None:
                raise RuntimeError("gunicorn exited:\n" + self.gunicorn_log_path.read_text()[-3000:])
            try:
                with urllib.request.urlopen(req, timeout=5) as resp:
                    if resp.status == 200:
                        return
            except Exception:
                pass
            time.sleep(0.3)
        raise RuntimeError("gunicorn did not answer GET next/ with 200 within 90 s")

    def stop_gunicorn(self) -> None:
        proc, self.gunicorn = self.gunicorn, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                pass
        try:  # leftovers of its own session (its workers), by its process-group id
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        self.gunicorn_log.close()

    def cleanup(self) -> None:
        for step in (self.stop_gunicorn, self.drop_db, lambda: shutil.rmtree(self.tmp, ignore_errors=True)):
            try:
                step()
            except Exception as exc:  # keep cleaning up
                log(f"cleanup step failed: {exc!r}")

    # -- one measured run ----------------------------------------------------------------------
    def run_config(self, spec: tuple[str, int, int], annotators: list[Annotator], n_classes: int) -> dict:
        worker_class, workers, threads = spec
        base = self.start_gunicorn(worker_class, workers, threads, annotators[0].token)
        try:
            think = self.args.think_ms / 1000
            if self.args.warmup > 0:
                warm, _ = asyncio.run(drive(base, annotators, self.args.warmup, n_classes, not self.args.no_next,
                                            think, self.args.client))
                self.accepted_total += warm.ok("submit")
                self.attempted_total += warm.attempted
            busy0, total0 = machine_cpu()
            server0, pg0 = proc_cpu(self.gunicorn.pid)
            client0 = time.process_time()
            stats, elapsed = asyncio.run(drive(base, annotators, self.args.seconds, n_classes,
                                               not self.args.no_next, think, self.args.client))
            client = time.process_time() - client0
            server1, pg1 = proc_cpu(self.gunicorn.pid)
            server, pg = server1 - server0, pg_delta(pg0, pg1)
            busy1, total1 = machine_cpu()
            self.accepted_total += stats.ok("submit")
            self.attempted_total += stats.attempted
        finally:
            self.stop_gunicorn()
        ncpu = os.cpu_count() or 1
        return {"config": f"{worker_class} w{workers} t{threads}", "stats": stats, "elapsed": elapsed,
                "client_cpu": client / elapsed, "server_cpu": server / elapsed, "pg_cpu": pg / elapsed,
                "machine_busy": (busy1 - busy0) / max(total1 - total0, 1) * ncpu}


def default_config() -> tuple[str, int, int]:
    """Worker class, workers and threads of config/gunicorn.conf.py (as the environment sets them)."""
    import runpy

    conf = runpy.run_path(str(GUNICORN_CONF))
    return conf["worker_class"], int(conf["workers"]), int(conf["threads"])


def parse_config(text: str) -> tuple[str, int, int]:
    parts = text.split(":")
    if len(parts) != 3 or parts[0] not in ("sync", "gthread", "granian"):
        raise argparse.ArgumentTypeError("--config wants CLASS:WORKERS:THREADS with CLASS sync|gthread (gunicorn) "
                                         f"or granian, got {text!r}")
    return parts[0], int(parts[1]), int(parts[2])


def print_table(results: list[dict], with_next: bool) -> None:
    head = (f"{'gunicorn':<16} {'endpoint':<8} {'requests':>8} {'errors':>6} {'ok/s':>7} "
            f"{'p50 ms':>7} {'p95 ms':>7} {'p99 ms':>7} {'max ms':>7}  cores: client gunicorn postgres other machine; "
            "gunicorn CPU ms per loop")
    print(head)
    print("-" * len(head))
    for r in results:
        st: Stats = r["stats"]
        for kind in (["submit", "next"] if with_next else ["submit"]):
            lat = sorted(x * 1000 for x in st.latencies[kind])
            n = st.requests(kind)
            ok = st.ok(kind)
            other = r["machine_busy"] - r["client_cpu"] - r["server_cpu"] - r["pg_cpu"]
            cpu = (f"  {r['client_cpu']:.2f}   {r['server_cpu']:.2f}   {r['pg_cpu']:.2f}   {other:.2f}   "
                   f"{r['machine_busy']:.2f}   {r['server_cpu'] * 1000 / max(ok / r['elapsed'], 1e-9):.2f}"
                   if kind == "submit" else "")
            print(f"{r['config']:<16} {kind:<8} {n:>8} {n - ok:>6} {ok / r['elapsed']:>7.1f} "
                  f"{pct(lat, 50):>7.1f} {pct(lat, 95):>7.1f} {pct(lat, 99):>7.1f} {(lat[-1] if lat else float('nan')):>7.1f}{cpu}")
    for r in results:
        st = r["stats"]
        bad = {k: {s: n for s, n in c.items() if not 200 <= s < 300} for k, c in st.statuses.items()}
        bad = {k: v for k, v in bad.items() if v}
        extra = []
        if bad:
            extra.append(f"non-2xx by status (0 = connection error): {bad}")
        if st.exhausted:
            extra.append(f"{st.exhausted} annotators ran out of assignments (raise --per-user)")
        if st.no_work:
            extra.append(f"next/ found no work {st.no_work} times (raise --per-user)")
        if extra:
            print(f"  {r['config']}: " + "; ".join(extra))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=30.0, help="measured duration per config (default 30)")
    p.add_argument("--warmup", type=float, default=3.0, help="unmeasured load before each measured run (default 3)")
    p.add_argument("--users", type=int, default=50, help="concurrent simulated annotators (default 50)")
    p.add_argument("--per-user", type=int, default=None,
                   help="open first-label assignments per annotator (default: enough for ~450 submits/s; every config run answers into the same batch, so run one config per invocation to compare them on equal terms)")
    p.add_argument("--secured", type=int, default=2, help="secured items left open so the batch never completes")
    p.add_argument("--config", type=parse_config, action="append", metavar="CLASS:WORKERS:THREADS",
                   help="gunicorn worker class, workers and threads; repeatable "
                        "(default: those of config/gunicorn.conf.py)")
    p.add_argument("--no-next", action="store_true", help="only POST submits (no GET next/ before each)")
    p.add_argument("--think-ms", type=float, default=0.0, help="pause after each submit (default 0: closed loop)")
    p.add_argument("--client", choices=("raw", "aiohttp"), default="raw",
                   help="load generator: raw keep-alive HTTP/1.1 on asyncio streams (default, least CPU) or aiohttp")
    p.add_argument("--no-profile", action="store_true", help="skip the per-request SQL listing")
    p.add_argument("--db", choices=("postgresql", "sqlite"), default="postgresql",
                   help="sqlite: the embedded default of scripts/run.sh (a file in the temp dir, WAL)")
    p.add_argument("--debug", choices=("0", "1"), default=None,
                   help="DEBUG of the server (default 0, as scripts/run.sh and a deployment start it)")
    p.add_argument("--pg-url", default=os.environ.get("BENCH_PG_URL", "postgres://postgres@127.0.0.1:5432/postgres"),
                   help="PostgreSQL URL of a role that may create databases (env BENCH_PG_URL)")
    args = p.parse_args(argv)
    configs = args.config or [default_config()]
    if args.secured < 1:
        p.error("--secured must be at least 1 (it keeps the batch open)")
    try:
        import aiohttp  # noqa: F401
        import psycopg  # noqa: F401
    except ImportError as exc:
        p.error(f"{exc.name} is missing: {Path(sys.executable).parent}/pip install aiohttp 'psycopg[binary]'")
    per_user = args.per_user or max(20, math.ceil(450 * (args.seconds + args.warmup) * len(configs) / args.users) + 1)

    def on_term(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    bench = Bench(args)
    try:
        data = bench.setup(per_user)
        n_classes = data["n_classes"]
        annotators = [Annotator(u["username"], u["token"], u["assignments"]) for u in data["users"]]
        results = []
        for spec in configs:
            results.append(bench.run_config(spec, annotators, n_classes))
            r = results[-1]
            log(f"{r['config']}: {r['stats'].ok('submit') / r['elapsed']:.1f} submits/s")
        # Every submit made (warm-up included) went to a distinct assignment: rows must match 2xx answers.
        sent = bench.attempted_total
        counts = bench.db_counts(data["batch"])
        print()
        print(f"submit benchmark: {args.users} annotators, {args.seconds:g} s per config "
              f"(+{args.warmup:g} s warm-up), {'GET next/ + POST' if not args.no_next else 'POST only'} per loop, "
              f"think {args.think_ms:g} ms; load generator: {client_name(args.client)} (asyncio, 1 process, "
              "one keep-alive connection per annotator); "
              f"{os.cpu_count()} CPUs shared by client, gunicorn and {'SQLite (in gunicorn)' if args.db == 'sqlite' else 'PostgreSQL'}; "
              f"server DEBUG={bench.env['DEBUG']}")
        print(f"batch: {data['first_label']} first-label + {data['secured_open']} secured items in the members' queue; "
              "ok/s = 2xx answers per second (for submit: submissions/s); cpu columns in cores busy")
        print()
        print_table(results, not args.no_next)
        if not args.think_ms:
            print(f"closed loop: mean latency = {args.users} annotators / throughput (Little's law); p95 under 50 ms "
                  f"needs well over {args.users / 0.05:.0f} submits/s with no think time")
        print()
        accepted = bench.accepted_total
        ok = counts["annotations"] == accepted == counts["done"]
        print(f"check: {counts['annotations']} Annotation rows, {counts['done']} done assignments, "
              f"{accepted} accepted (2xx) submits over {sent} attempted (warm-ups included): "
              f"{'OK' if ok else 'MISMATCH'}; project {counts['project_state']}, "
              f"batch {'CLOSED' if counts['batch_closed'] else 'open'}")
        if not args.no_profile and args.db == "postgresql":
            profile(bench, annotators, n_classes)
        return 0 if ok else 1
    except KeyboardInterrupt:
        log("interrupted: cleaning up")
        return 130
    finally:
        bench.cleanup()


def client_name(client: str) -> str:
    if client == "raw":
        return "raw HTTP/1.1 on asyncio streams (bench/bench_submit.py RawConnection)"
    import aiohttp

    return f"aiohttp {aiohttp.__version__}"


def profile(bench: Bench, annotators: list[Annotator], n_classes: int) -> None:
    who = annotators[-1]
    out = json.loads(bench.django(who.token, "0", "1", script=PROFILE_SCRIPT,
                                  capture=True).strip().splitlines()[-1])
    for name in ("submit", "next"):
        qs = out[name]["queries"]
        print()
        print(f"SQL of one {name} {'(prefetch=1, after an answer: the held item, one claimed ahead) ' if name == 'next' else ''}"
              f"(in-process, single request, rolled back; status {out[name]['status']}): "
              f"{len(qs)} queries, {sum(q['ms'] for q in qs):.2f} ms in them, {out[name]['total_ms']:.1f} ms "
              "in the whole request")
        for q in qs:
            sql = " ".join(q["sql"].split())
            print(f"  {q['ms']:7.3f} ms  {sql[:160]}{'...' if len(sql) > 160 else ''}")


if __name__ == "__main__":
    sys.exit(main())
