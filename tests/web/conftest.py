"""Fixtures for Django-side tests: a real Celery worker subprocess on a real broker."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT, services_required


def database_url_for_tests() -> str:
    """The URL of the database pytest-django created, for worker subprocesses."""
    from django.db import connection

    s = connection.settings_dict
    if s["ENGINE"].endswith("sqlite3"):
        return f"sqlite:///{s['NAME']}"
    if s["ENGINE"].endswith("postgresql"):
        auth = s["USER"] or ""
        if s.get("PASSWORD"):
            auth += f":{s['PASSWORD']}"
        host = s.get("HOST") or "127.0.0.1"
        port = s.get("PORT") or 5432
        return f"postgres://{auth}@{host}:{port}/{s['NAME']}"
    raise RuntimeError(f"unsupported engine for worker tests: {s['ENGINE']}")


@dataclass
class WorkerProcess:
    process: subprocess.Popen
    broker_url: str
    transport_options: dict
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def connection(self):
        """A producer connection to the same broker the worker consumes from."""
        from config.celery import app

        return app.connection_for_write(self.broker_url, transport_options=self.transport_options)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


def start_worker(*, broker_url: str, transport_options: dict, env_extra: dict, tmp_path: Path,
                 queues: str = "default,train") -> WorkerProcess:
    env = dict(os.environ)
    env.update(env_extra)
    env["DATABASE_URL"] = database_url_for_tests()
    env["CELERY_BROKER_URL"] = broker_url
    env.setdefault("SECRET_KEY", "test-only-secret")
    log_path = tmp_path / "worker.log"
    process = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "config", "worker", "-Q", queues,
         "--pool", "solo", "--without-heartbeat", "--without-gossip", "--without-mingle",
         "-l", "info", "-n", f"test-worker-{os.getpid()}@%h"],
        cwd=REPO_ROOT, env=env, stdout=log_path.open("w"), stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    return WorkerProcess(process, broker_url, transport_options, log_path)


def wait_until(predicate, timeout: float, interval: float = 0.2, worker: WorkerProcess | None = None):
    """Poll ``predicate`` until it returns truthy or fail with the worker's log."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        if worker is not None and worker.process.poll() is not None:
            pytest.fail(f"worker exited with {worker.process.returncode}:\n{worker.log()}")
        time.sleep(interval)
    pytest.fail(f"condition not met within {timeout}s" + (f"\nworker log:\n{worker.log()}" if worker else ""))


@pytest.fixture
def redis_url() -> str:
    import redis

    url = os.environ.get("ROBUSTAL_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
    try:
        redis.Redis.from_url(url, socket_connect_timeout=2).ping()
    except Exception as exc:  # pragma: no cover - depends on the machine
        if services_required():
            pytest.fail(f"Redis required but not reachable at {url}: {exc}")
        pytest.skip(f"Redis not reachable at {url}: {exc}")
    redis.Redis.from_url(url).flushdb()
    return url


@pytest.fixture
def redis_worker(transactional_db, redis_url, tmp_path):
    worker = start_worker(broker_url=redis_url, transport_options={}, env_extra={}, tmp_path=tmp_path)
    yield worker
    worker.stop()


@pytest.fixture
def filesystem_worker(transactional_db, tmp_path):
    from config.settings import filesystem_broker_options

    broker_dir = tmp_path / "broker"
    options = filesystem_broker_options(broker_dir)
    worker = start_worker(
        broker_url="filesystem://", transport_options=options,
        env_extra={"ROBUSTAL_BROKER_DIR": str(broker_dir)}, tmp_path=tmp_path,
    )
    yield worker
    worker.stop()


@pytest.fixture(autouse=True)
def _fresh_cache():
    """API throttle counters live in the (per-process) cache: no test inherits another's requests."""
    from django.core.cache import cache

    cache.clear()
    yield
