"""gunicorn settings of the web server (``gunicorn -c config/gunicorn.conf.py config.wsgi``).

Every value can be overridden by an environment variable (below) or on the command line
(command-line flags win). The defaults were chosen by measurement with
``bench/bench_submit.py`` (50 simulated annotators submitting against gunicorn + PostgreSQL on a
2-core machine; README, "Benchmarks"): ``gthread`` workers, two per core (at most 8), with 8
threads each. gthread beat sync workers (no keep-alive, one request per process at a time) at
every size tried (192 vs 136 submits/s at 4 workers), 4 x 8 and 2 x 8 tied (192 and 191/s) and
beat 3 x 4 (163/s), and in a noisier sweep 4 x 8 beat 2 x 4, 3 x 8, 4 x 4 and 6 x 4: the handlers
are short CPU-bound Python between database round trips, and threads overlap those round trips.
Each thread keeps its own database connection (``DB_CONN_MAX_AGE``), so workers x threads
must stay below PostgreSQL's ``max_connections`` (100 by default) minus the Celery workers'.
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
