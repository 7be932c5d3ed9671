"""gunicorn settings of the web server (``gunicorn -c config/gunicorn.conf.py config.wsgi``).

Every value can be overridden by an environment variable (below) or on the command line
(command-line flags win). Default: ``gthread`` workers, two per core (at most 8), 8 threads
each, which keep-alive connections and slow clients cannot starve. On an idle 2-core machine
``bench/bench_submit.py`` (50 annotators pausing 150 ms, README "Submit throughput") measured
``sync`` 4 x 1 and ``gthread`` 3 x 1 at 304-310 submits/s with p95 39-59 ms, the default
``gthread`` 4 x 8 at 294/s with p95 66 ms: no GIL hand-offs between threads. Sync workers need a
buffering proxy (nginx) in front, since a slow client holds a whole worker; behind one, set
``GUNICORN_WORKER_CLASS=sync GUNICORN_WORKERS=4``. Each thread keeps its own database
connection (``DB_CONN_MAX_AGE``), so workers x threads must stay below PostgreSQL's
``max_connections`` (100 by default) minus the Celery workers'.
"""
from __future__ import annotations

import multiprocessing
import os


def _int(name: str, default: int) -> int:
    value = os.environ.get(name, "").strip()
    if not value:
        return default
    try:
        return int(value)
    except ValueError:
        raise SystemExit(f"{name} must be an integer, got {value!r}") from None


bind = os.environ.get("GUNICORN_BIND", "127.0.0.1:8000")
workers = _int("GUNICORN_WORKERS", _int("WEB_CONCURRENCY", min(2 * multiprocessing.cpu_count(), 8)))
worker_class = os.environ.get("GUNICORN_WORKER_CLASS", "gthread")
threads = _int("GUNICORN_THREADS", 8)
keepalive = _int("GUNICORN_KEEPALIVE", 5)  # seconds an idle annotator connection stays open
timeout = _int("GUNICORN_TIMEOUT", 120)  # staff uploads of large data sets take a while
graceful_timeout = _int("GUNICORN_GRACEFUL_TIMEOUT", 30)
accesslog = os.environ.get("GUNICORN_ACCESS_LOG") or None  # e.g. "-" for stdout; off by default (CPU)
errorlog = os.environ.get("GUNICORN_ERROR_LOG", "-")
loglevel = os.environ.get("GUNICORN_LOG_LEVEL", "info")


def post_worker_init(worker):
    """Move everything the worker loaded (Django, the app, numpy, torch ...) out of the garbage
    collector's generations: full collections then walk only request garbage, so the pauses
    that showed up in the submit benchmark's p95 get short."""
    import gc

    gc.collect()
    gc.freeze()
