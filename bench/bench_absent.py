"""Benchmark: annotators who stop answering mid-batch do not stall it (the shared queue's leases).

Self-contained and loopback only (it reuses ``bench/bench_submit.py``'s database, gunicorn and
HTTP client): a throw-away database (``--db sqlite``, the embedded default of ``scripts/run.sh``,
or ``postgresql``), migrated; a project whose ``--users`` annotators are its members and whose
first batch holds ``--items`` images (no secured set, so the batch can complete); gunicorn with
the project's default settings and a short lease (``ROBUSTAL_LEASE_SECONDS=--lease``). Every
annotator does the browser's loop: ``GET next/?prefetch=1`` (their item and one held ahead),
``--think-ms`` of looking, ``POST .../annotation/``; with no work they ask again every
``--poll-ms``. Once half the batch is answered, ``--absent`` of them take one more item (and
one ahead) and never come back.

While it runs, it reads the database (never through the app): when the queue first runs dry
(every item claimed), when the batch completes (nothing waiting, nothing claimed), and, each
time an active annotator is told there is no work, whether an unclaimed item existed at that
moment (a waiting slot read after the empty answer was waiting during it: nothing returns
items to the queue here) or a claim whose lease had run out over a second before. It prints one
table and checks stored annotations = acknowledged answers.

    .venv/bin/python bench/bench_absent.py                    # 50 annotators, 5 absent, 600 items, lease 10 s
    .venv/bin/python bench/bench_absent.py --db postgresql --items 1000
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bench_submit import Bench, RawClient, log, pct  # noqa: E402

SETUP_SCRIPT = r'''
import json, sys, time
import django
django.setup()
from django.contrib.auth import get_user_model
from rest_framework.authtoken.models import Token
from labeling import membership, services
from labeling.models import Assignment, Item

n_users, n_items, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
t0 = time.perf_counter()
users = [get_user_model().objects.create_user(username=f"absent{i:03d}") for i in range(n_users)]
for u in users:
    services.add_annotator(u)
classes = ["cat", "dog", "bird"]
project = services.create_project(
    name="absent benchmark", classes=classes,
    config={"strategy": "random", "batch_size": 1, "initial_size": n_items, "secured_size": 0, "h": 2,
            "backbone": "flatten", "feature_size": 8, "channels": 1})
# No image files: next and answers never open them. One item more than the batch stays in the pool.
Item.objects.bulk_create([Item(project=project, index=k, image=f"labeling/bench/{k}.png", width=8, height=8,
                               source=f"bench-{k}") for k in range(n_items + 1)], batch_size=5000)
membership.set_members(project=project, users=users)
batch = services.start_project(project=project)
json.dump({"project": project.pk, "batch": batch.pk,
           "items": Assignment.objects.filter(batch=batch).count(),
           "tokens": [Token.objects.create(user=u).key for u in users],
           "seconds": round(time.perf_counter() - t0, 1)}, open(out, "w"))
'''


@dataclass
class Run:
    items: int
    half: int
    t0: float = 0.0
    answered: int = 0  # acknowledged (201) answers
    errors: dict = field(default_factory=dict)
    latency: dict = field(default_factory=lambda: {"next": [], "submit": []})
    gone: list = field(default_factory=list)  # (annotator, seconds, items they held when they left)
    by_absent: int = 0  # answers the absent gave before leaving
    empty_active: int = 0  # "no work" answers to active annotators
    waited_unclaimed: int = 0  # ... while an item waited unclaimed
    waited_expired: int = 0  # ... while a claim had expired over a second before
    first_empty: float | None = None  # first time an active annotator found no work
    all_claimed: float | None = None  # the queue first ran dry
    complete: float | None = None  # nothing waiting, nothing claimed
    stop: bool = False


class Probe:
    """Read-only counts straight from the database (sqlite3 or psycopg), outside the app."""

    def __init__(self, db_url: str, batch_id: int):
        self.batch = batch_id
        if db_url.startswith("sqlite:///"):
            import sqlite3

            self.conn = sqlite3.connect(db_url.removeprefix("sqlite:///"), timeout=30, isolation_level=None)
            self.mark = "?"
        else:
            import psycopg

            self.conn = psycopg.connect(db_url, autocommit=True)
            self.mark = "%s"

    def counts(self, expired_before: datetime | None = None) -> dict:
        m = self.mark
        rows = self.conn.execute(f"SELECT status, count(*) FROM labeling_assignment WHERE batch_id = {m} "
                                 "GROUP BY status", (self.batch,)).fetchall()
        out = {s: n for s, n in rows}
        if expired_before is not None:  # SQLite stores Django's UTC text; PostgreSQL takes the datetime
            when = expired_before.strftime("%Y-%m-%d %H:%M:%S.%f") if m == "?" else expired_before
            out["expired"] = self.conn.execute(
                f"SELECT count(*) FROM labeling_assignment WHERE batch_id = {m} AND status = 'open' "
                f"AND lease_until < {m}", (self.batch, when)).fetchone()[0]
        return out

    def annotations(self) -> int:
        return self.conn.execute("SELECT count(*) FROM labeling_annotation").fetchone()[0]

    def close(self) -> None:
        self.conn.close()


async def annotator(client: RawClient, k: int, absent: bool, run: Run, probe: Probe, args, next_url: str) -> None:
    think, poll = args.think_ms / 1000, args.poll_ms / 1000
    try:
        while not run.stop:
            t = time.perf_counter()
            try:
                code, body = await client.get(next_url)
            except Exception:
                code, body = 0, b""
            run.latency["next"].append(time.perf_counter() - t)
            if code != 200:
                run.errors[f"next {code}"] = run.errors.get(f"next {code}", 0) + 1
                await asyncio.sleep(poll)
                continue
            data = json.loads(body)
            aid = (data.get("assignment") or {}).get("id")
            if aid is None:
                if not absent:
                    now = time.perf_counter()
                    run.empty_active += 1
                    if run.first_empty is None:
                        run.first_empty = now - run.t0
                    c = probe.counts(expired_before=datetime.now(timezone.utc) - timedelta(seconds=1))
                    run.waited_unclaimed += int(c.get("queued", 0) > 0)
                    run.waited_expired += int(c.get("expired", 0) > 0)
                await asyncio.sleep(poll)
                continue
            if absent and run.answered >= run.half:  # leaves mid-batch, holding this one and the one ahead
                run.gone.append((k, time.perf_counter() - run.t0, 1 + int(bool(data.get("upcoming")))))
                return
            await asyncio.sleep(think)
            t = time.perf_counter()
            try:
                code, _ = await client.post(f"/api/labeling/assignments/{aid}/annotation/",
                                            b'{"label": %d, "seconds": 1.0}' % (aid % 3))
            except Exception:
                code = 0
            run.latency["submit"].append(time.perf_counter() - t)
            if code == 201:
                run.answered += 1
                run.by_absent += int(absent)
            else:
                run.errors[f"submit {code}"] = run.errors.get(f"submit {code}", 0) + 1
    finally:
        client.close()


async def monitor(run: Run, probe: Probe, args) -> None:
    deadline = time.perf_counter() + args.max_seconds
    while not run.stop:
        c = probe.counts()
        now = time.perf_counter() - run.t0
        if run.all_claimed is None and c.get("queued", 0) == 0:
            run.all_claimed = now
        if c.get("queued", 0) == 0 and c.get("open", 0) == 0:
            run.complete = now
            run.stop = True
            return
        if time.perf_counter() > deadline:
            run.stop = True
            return
        await asyncio.sleep(0.1)


async def drive(base: str, tokens: list[str], project: int, run: Run, probe: Probe, args) -> None:
    next_url = f"/api/labeling/next/?project={project}&prefetch=1"
    absent = set(range(len(tokens) - args.absent, len(tokens)))
    run.t0 = time.perf_counter()
    await asyncio.gather(monitor(run, probe, args),
                         *(annotator(RawClient(base, tok), k, k in absent, run, probe, args, next_url)
                           for k, tok in enumerate(tokens)))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--users", type=int, default=50)
    p.add_argument("--absent", type=int, default=5, help="annotators who stop answering mid-batch (default 5)")
    p.add_argument("--items", type=int, default=600, help="images in the batch (default 600)")
    p.add_argument("--lease", type=float, default=10.0, help="ROBUSTAL_LEASE_SECONDS for the run (default 10)")
    p.add_argument("--think-ms", type=float, default=100.0, help="time an annotator looks at an image (default 100)")
    p.add_argument("--poll-ms", type=float, default=500.0, help="pause before asking again after 'no work'")
    p.add_argument("--max-seconds", type=float, default=120.0, help="give up after this long")
    p.add_argument("--db", choices=("sqlite", "postgresql"), default="sqlite",
                   help="sqlite (default): the embedded default that scripts/run.sh starts")
    p.add_argument("--pg-url", default=os.environ.get("BENCH_PG_URL", "postgres://postgres@127.0.0.1:5432/postgres"))
    args = p.parse_args(argv)
    if not 0 <= args.absent < args.users:
        p.error("--absent must be below --users")

    def on_term(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    args.secured, args.no_next = 0, False  # what Bench reads of the submit benchmark's options
    bench = Bench(args)
    bench.env["ROBUSTAL_LEASE_SECONDS"] = str(args.lease)
    probe = None
    try:
        t = time.perf_counter()
        bench.create_db()
        bench.django("migrate", "--noinput")
        out = bench.tmp / "setup.json"
        bench.django(str(args.users), str(args.items), str(out), script=SETUP_SCRIPT)
        data = json.loads(out.read_text())
        log(f"project {data['project']}: {data['items']} items for {args.users} members "
            f"(setup {time.perf_counter() - t:.1f} s)")
        from bench_submit import default_config

        worker_class, workers, threads = default_config()
        base = bench.start_gunicorn(worker_class, workers, threads, data["tokens"][0])
        probe = Probe(bench.db_url, data["batch"])
        run = Run(items=data["items"], half=data["items"] // 2)
        try:
            asyncio.run(drive(base, data["tokens"], data["project"], run, probe, args))
        finally:
            bench.stop_gunicorn()
        stored = probe.annotations()
        counts = probe.counts()
    except KeyboardInterrupt:
        log("interrupted: cleaning up")
        return 130
    finally:
        if probe is not None:
            probe.close()
        bench.cleanup()

    after_out = (run.complete - run.first_empty) if run.complete is not None and run.first_empty is not None else None
    within = after_out is not None and after_out <= args.lease
    lat = {k: sorted(v) for k, v in run.latency.items()}
    print()
    print(f"absent-annotator benchmark: {args.users} annotators ({args.absent} leave once half the batch is "
          f"answered, each holding an item and one ahead), {run.items} items, lease {args.lease:g} s, think "
          f"{args.think_ms:g} ms, poll {args.poll_ms:g} ms; {'SQLite (run.sh)' if args.db == 'sqlite' else 'PostgreSQL'}"
          f", gunicorn {worker_class} {workers}x{threads}; {os.cpu_count()} CPUs shared by everything")
    print()
    rows = [
        ("items answered (acknowledged) / in the batch", f"{run.answered} / {run.items}"),
        ("answered by the absent before leaving", str(run.by_absent)),
        ("absent left at (s), holding items", ", ".join(f"{s:.1f}: {n}" for _, s, n in run.gone) or "-"),
        ("queue ran dry (every item claimed) at (s)", _s(run.all_claimed)),
        ("first active annotator out of work at (s)", _s(run.first_empty)),
        ("batch complete at (s)", _s(run.complete) if run.complete is not None else "NOT complete"),
        ("complete after the others ran out of work (s)", _s(after_out)),
        (f"within one lease ({args.lease:g} s)", "yes" if within else "NO"),
        ("'no work' answers to active annotators", str(run.empty_active)),
        ("  of them while an item waited unclaimed", str(run.waited_unclaimed)),
        ("  of them while a claim had expired > 1 s before", str(run.waited_expired)),
        ("next/ p50 / p95 ms", f"{pct(lat['next'], 50) * 1000:.0f} / {pct(lat['next'], 95) * 1000:.0f}"),
        ("submit p50 / p95 ms", f"{pct(lat['submit'], 50) * 1000:.0f} / {pct(lat['submit'], 95) * 1000:.0f}"),
        ("errors", ", ".join(f"{k}: {v}" for k, v in sorted(run.errors.items())) or "0"),
        ("stored annotations = acknowledged", f"{stored} = {run.answered}: {'OK' if stored == run.answered else 'MISMATCH'}"),
    ]
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"  {k:<{width}}  {v}")
    ok = (run.complete is not None and within and stored == run.answered and run.waited_unclaimed == 0
          and counts.get("done", 0) == run.items)
    return 0 if ok else 1


def _s(value) -> str:
    return "-" if value is None else f"{value:.1f}"


if __name__ == "__main__":
    sys.exit(main())
