"""Faults with real processes: a worker SIGKILLed mid-task, Redis stopped while annotators answer,
the database unavailable, and the loop sweeper that catches up after a lost enqueue.

The worker/Redis tests need PostgreSQL (pass 2 of ``scripts/test.sh``): a killed worker's open
transaction must not block the test database, and row locks are what they exercise. The Redis
outage uses a private ``redis-server`` on a free port, so stopping it disturbs nobody.
"""
from __future__ import annotations

import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

import pytest
from django.db import OperationalError, connection, transaction
from django.utils import timezone
from rest_framework.test import APIClient

from labeling import answering, loop_step, services
from labeling.models import Annotation, Assignment, IterationMetric, Project, QueryBatch
from tests.conftest import REPO_ROOT
from tests.web.conftest import WorkerProcess, database_url_for_tests, wait_until
from tests.web.labeling_support import annotators, digits_project, labeling_dirs, take_turns  # noqa: F401
from tests.web.test_labeling_worker import answer_batch

ENQUEUED = "enqueued labeling.tasks.train.process_batch"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pg_only():
    if connection.vendor != "postgresql":
        pytest.skip("fault test with a real worker: PostgreSQL + Redis pass only")


def spawn_worker(*, broker_url: str, log_dir: Path, env_extra: dict, beat: bool = False) -> WorkerProcess:
    """A ``celery worker`` subprocess on the test database (optionally with embedded beat)."""
    log_dir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, **env_extra, "DATABASE_URL": database_url_for_tests(), "CELERY_BROKER_URL": broker_url}
    env.setdefault("SECRET_KEY", "test-only-secret")
    log_path = log_dir / "worker.log"
    cmd = [sys.executable, "-m", "celery", "-A", "config", "worker", "-Q", "default,train", "--pool", "solo",
           "--without-heartbeat", "--without-gossip", "--without-mingle", "-l", "info",
           "-n", f"fault-worker-{os.getpid()}-{log_dir.name}@%h"]
    if beat:
        cmd += ["-B", "-s", str(log_dir / "celerybeat-schedule")]
    process = subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdout=log_path.open("w"), stderr=subprocess.STDOUT,
                               start_new_session=True)
    return WorkerProcess(process, broker_url, {}, log_path)


@contextmanager
def producer_to(worker: WorkerProcess):
    """Publish from this process to the worker's broker.

    Celery prefers the ``CELERY_BROKER_URL`` environment variable over ``app.conf.broker_url``, so
    both are switched. kombu keeps connection and producer pools in a global registry per URL:
    it is cleared (every pool closed and forgotten), so that later publishers get fresh pools.
    Emptying a pool while keeping it registered left it with no connections to hand out, and
    the next test that published to the same URL blocked forever.
    """
    from kombu import pools

    from config.celery import app

    def reset():
        pools.reset()
        app._pool = None
        app.amqp._producer_pool = None

    saved_env, saved_conf = os.environ.get("CELERY_BROKER_URL"), app.conf.broker_url
    os.environ["CELERY_BROKER_URL"] = app.conf.broker_url = worker.broker_url
    reset()
    try:
        yield
    finally:
        app.conf.broker_url = saved_conf
        if saved_env is None:
            os.environ.pop("CELERY_BROKER_URL", None)
        else:
            os.environ["CELERY_BROKER_URL"] = saved_env
        reset()


def kill_hard(worker: WorkerProcess) -> None:
    """SIGKILL the worker's whole process group (no shutdown, no ack, no cleanup)."""
    if worker.process.poll() is None:
        os.killpg(worker.process.pid, signal.SIGKILL)
        worker.process.wait(timeout=10)


def enqueue_records(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "labeling.workflow"]


def received_ids(log: str) -> list[str]:
    return re.findall(r"Task labeling\.tasks\.train\.process_batch\[([0-9a-f-]+)\] received", log)


# ---------------------------------------------------------------------------------------------
# (a) the worker is SIGKILLed in the middle of the retraining task
# ---------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_worker_killed_mid_retraining_task_is_redelivered_once(labeling_dirs, annotators, redis_url, tmp_path,
                                                               caplog, transactional_db):
    pg_only()
    caplog.set_level(logging.INFO, logger="labeling.workflow")
    env = {"CELERY_VISIBILITY_TIMEOUT": "6"}  # redelivery 6 s after the kill (restore scan every 1 s)
    first = spawn_worker(broker_url=redis_url, log_dir=tmp_path / "w1", env_extra=env)
    second = None
    try:
        with producer_to(first):
            project = digits_project(n=36, config={"secured_size": 6, "initial_size": 6, "batch_size": 6})
            batch0 = QueryBatch.objects.get(project=project, iteration=0)
            accepted = answer_batch(project)
            # the task has taken its snapshot (batch frozen) and is training: hold the project row
            # so it cannot write its result, check it has not, and kill it right there
            wait_until(lambda: QueryBatch.objects.get(pk=batch0.pk).frozen_at is not None, timeout=90,
                       interval=0.02, worker=first)
            with transaction.atomic():
                Project.objects.select_for_update().get(pk=project.pk)
                batch0.refresh_from_db()
                assert batch0.closed_at is None and QueryBatch.objects.filter(project=project).count() == 1
                kill_hard(first)
            project.refresh_from_db()
            assert project.state == Project.State.UPDATING
            delivered_to_first = received_ids(first.log())
            assert len(delivered_to_first) == 1, first.log()

            second = spawn_worker(broker_url=redis_url, log_dir=tmp_path / "w2", env_extra=env)
            wait_until(lambda: Project.objects.filter(pk=project.pk, iteration=1, state="labeling").exists(),
                       timeout=120, worker=second)
            # let any extra delivery show up before counting
            time.sleep(2)
    finally:
        kill_hard(first)
        if second is not None:
            second.stop()
    log2 = second.log()
    # the very same message came back (late ack + visibility timeout), not a new send
    assert received_ids(log2) == delivered_to_first, log2
    assert log2.count(f"process_batch({batch0.pk}): opened batch 1") == 1, log2
    assert [m for m in enqueue_records(caplog) if m.startswith(ENQUEUED)] == [f"{ENQUEUED}({batch0.pk},)"]
    assert QueryBatch.objects.filter(project=project).count() == 2
    assert IterationMetric.objects.filter(project=project, iteration=0).count() == 1
    # no accepted label lost
    assert Annotation.objects.filter(assignment__batch=batch0).count() == accepted == 6
    assert not Assignment.objects.filter(batch=batch0, kind="first_label").exclude(status="done").exists()


# ---------------------------------------------------------------------------------------------
# (b) Redis is stopped while annotators keep answering
# ---------------------------------------------------------------------------------------------


class PrivateRedis:
    def __init__(self, tmp: Path):
        self.port, self.dir, self.process = free_port(), tmp, None
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.dir),
             "--appendonly", "yes", "--save", ""], stdout=(self.dir / "redis.log").open("a"),
            stderr=subprocess.STDOUT, start_new_session=True)
        import redis

        wait_until(lambda: self._ping(redis), timeout=10)

    def _ping(self, redis) -> bool:
        try:
            return redis.Redis.from_url(self.url, socket_connect_timeout=0.5).ping()
        except Exception:
            return False

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)


@pytest.fixture
def private_redis(tmp_path):
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server binary not found")
    server = PrivateRedis(tmp_path)
    server.start()
    yield server
    server.stop()


@pytest.mark.slow
def test_redis_down_answers_are_stored_and_the_loop_catches_up_once(labeling_dirs, annotators, private_redis,
                                                                      tmp_path, caplog, transactional_db):
    pg_only()
    caplog.set_level(logging.INFO, logger="labeling.workflow")
    # sweep every second; re-send what waited over 15 s (longer than this worker's busiest stretch:
    # a shorter wait would re-send a task still queued behind others, harmless but counted here)
    env = {"LABELING_SWEEP_INTERVAL_SECONDS": "1", "LABELING_SWEEP_AFTER_SECONDS": "15",
           "LABELING_LOOP_DELAY_SECONDS": "0"}
    worker = spawn_worker(broker_url=private_redis.url, log_dir=tmp_path / "w", env_extra=env, beat=True)
    try:
        wait_until(lambda: " ready." in worker.log(), timeout=60, worker=worker)
        with producer_to(worker):
            project = digits_project(n=36, config={"secured_size": 6, "initial_size": 6, "batch_size": 6})
            batch0 = QueryBatch.objects.get(project=project, iteration=0)
            turns = take_turns(project)

            def answer(user, asg):
                api = APIClient()
                api.force_authenticate(user)
                return api.post(f"/api/labeling/assignments/{asg.pk}/annotation/",
                                {"label": asg.item.ground_truth, "seconds": 1}, format="json")

            for _ in range(3):
                assert answer(*next(turns)).status_code == 201
            private_redis.stop()
            answered = 3
            for user, asg in turns:  # the last one completes the batch: its enqueue fails
                r = answer(user, asg)
                assert r.status_code == 201, r.content
                answered += 1
            assert answered == 6
            api = APIClient()
            api.force_authenticate(annotators[0])
            r = api.get(f"/api/labeling/next/?project={project.pk}")
            assert r.status_code == 200 and r.json()["project_state"] == "updating", r.content
            messages = enqueue_records(caplog)
            assert not [m for m in messages if m.startswith(ENQUEUED)]
            assert sum("could not enqueue labeling.tasks.train.process_batch" in m for m in messages) == 1
            assert Annotation.objects.filter(assignment__batch=batch0).count() == 6  # the database has them

            time.sleep(2)
            private_redis.start()  # same port, same append-only file
            wait_until(lambda: Project.objects.filter(pk=project.pk, iteration=1, state="labeling").exists(),
                       timeout=120, worker=worker)
            time.sleep(3)  # a few more sweeps: none may send it again
    finally:
        worker.stop()
    log = worker.log()
    assert log.count(f"{ENQUEUED}({batch0.pk},)") == 1, log  # the sweeper sent it once
    assert log.count(f"process_batch({batch0.pk}): opened batch 1") == 1, log
    assert len(received_ids(log)) == 1, log
    assert QueryBatch.objects.filter(project=project).count() == 2
    assert Annotation.objects.filter(assignment__batch=batch0).count() == 6


# ---------------------------------------------------------------------------------------------
# The sweeper itself (both passes: no worker, the enqueue is observed in the log)
# ---------------------------------------------------------------------------------------------


def _age(project: Project, seconds: float) -> None:
    Project.objects.filter(pk=project.pk).update(updated_at=timezone.now() - timedelta(seconds=seconds))


def test_sweeper_resends_only_lost_loop_tasks(labeling_dirs, annotators, settings, caplog, monkeypatch,
                                              django_capture_on_commit_callbacks):
    from labeling import tasks

    sent = []
    monkeypatch.setattr(tasks.process_batch, "apply_async", lambda args, countdown=None: sent.append(args[0]))
    settings.LABELING_SWEEP_AFTER_SECONDS, settings.LABELING_STALE_TASK_SECONDS = 60, 3600
    project = digits_project(n=36, config={"secured_size": 6, "initial_size": 6, "batch_size": 6})
    batch0 = QueryBatch.objects.get(project=project, iteration=0)

    with django_capture_on_commit_callbacks(execute=True):
        assert services.sweep_stalled_loops() == []  # labeling, batch incomplete: nothing
    for user, asg in take_turns(project):
        with django_capture_on_commit_callbacks(execute=True):
            answering.submit_annotation(user=user, assignment_id=asg.pk, label=asg.item.ground_truth)
    assert sent == [batch0.pk]  # the normal send after the last answer
    project.refresh_from_db()
    assert project.state == "updating"

    with django_capture_on_commit_callbacks(execute=True):
        assert services.sweep_stalled_loops() == []  # too young: its task may be in the queue
    _age(project, 120)
    with django_capture_on_commit_callbacks(execute=True):
        assert services.sweep_stalled_loops() == [batch0.pk]  # lost: sent again, once
        assert services.sweep_stalled_loops() == []  # the send restarted the clock
    assert sent == [batch0.pk, batch0.pk]

    # a task is on it (batch frozen recently): left alone; frozen long ago (dead worker): sent again
    _age(project, 120)
    QueryBatch.objects.filter(pk=batch0.pk).update(frozen_at=timezone.now())
    with django_capture_on_commit_callbacks(execute=True):
        assert services.sweep_stalled_loops() == []
    QueryBatch.objects.filter(pk=batch0.pk).update(frozen_at=timezone.now() - timedelta(hours=2))
    with django_capture_on_commit_callbacks(execute=True):
        assert services.sweep_stalled_loops() == [batch0.pk]
    assert QueryBatch.objects.get(pk=batch0.pk).frozen_at > timezone.now() - timedelta(minutes=1)

    # still "labeling" with a complete batch (the completion step was lost): completed and sent
    Project.objects.filter(pk=project.pk).update(state="labeling")
    QueryBatch.objects.filter(pk=batch0.pk).update(frozen_at=None)
    _age(project, 120)
    with django_capture_on_commit_callbacks(execute=True):
        assert services.sweep_stalled_loops() == [batch0.pk]
    assert Project.objects.get(pk=project.pk).state == "updating"
    assert sent == [batch0.pk] * 4

    # the task runs: the batch closes and nothing is left to sweep
    monkeypatch.undo()
    assert loop_step.advance_loop(batch_id=batch0.pk).startswith("opened batch 1")
    _age(project, 120)
    with django_capture_on_commit_callbacks(execute=True):
        assert services.sweep_stalled_loops() == []


def test_enqueue_failure_is_logged_and_the_answer_commits(labeling_dirs, annotators, caplog, monkeypatch,
                                                          django_capture_on_commit_callbacks):
    from labeling import tasks

    def broker_down(*args, **kwargs):
        raise ConnectionRefusedError(111, "Connection refused")

    monkeypatch.setattr(tasks.process_batch, "apply_async", broker_down)
    caplog.set_level(logging.INFO, logger="labeling.workflow")
    project = digits_project(n=36, config={"secured_size": 6, "initial_size": 6, "batch_size": 6})
    batch0 = QueryBatch.objects.get(project=project, iteration=0)
    for user, asg in take_turns(project):
        api = APIClient()
        api.force_authenticate(user)
        with django_capture_on_commit_callbacks(execute=True):
            r = api.post(f"/api/labeling/assignments/{asg.pk}/annotation/", {"label": asg.item.ground_truth},
                         format="json")
        assert r.status_code == 201, r.content
    assert Annotation.objects.filter(assignment__batch=batch0).count() == 6
    assert Project.objects.get(pk=project.pk).state == "updating"
    assert any("could not enqueue labeling.tasks.train.process_batch" in r.getMessage()
               and "sweeper will send it again" in r.getMessage() for r in caplog.records)


# ---------------------------------------------------------------------------------------------
# (c) the database is unavailable: a clear 503
# ---------------------------------------------------------------------------------------------


def test_database_errors_become_a_clear_503_and_service_resumes(client, annotators, monkeypatch):
    from django.db.backends.utils import CursorWrapper

    user = annotators[0]
    client.force_login(user)
    api = APIClient()
    api.force_authenticate(user)
    real_execute = CursorWrapper.execute

    def down(self, sql, params=None):
        raise OperationalError('connection to server at "127.0.0.1", port 5432 failed: Connection refused')

    monkeypatch.setattr(CursorWrapper, "execute", down)
    r = api.get("/api/labeling/next/")
    assert r.status_code == 503
    assert r["Content-Type"].startswith("application/json") and r["Retry-After"]
    assert r.json()["code"] == "database_unavailable" and "database is unavailable" in r.json()["detail"]
    page = client.get("/")  # the session is read from the database
    assert page.status_code == 503 and page["Content-Type"].startswith("text/html")
    assert b"database is unavailable" in page.content and b"Traceback" not in page.content

    monkeypatch.setattr(CursorWrapper, "execute", real_execute)  # back: requests work again
    assert api.get("/api/labeling/next/").status_code == 200
    assert client.get("/").status_code == 200


def test_integrity_errors_are_not_hidden_as_503(client, monkeypatch):
    """Only connection-level errors mean "unavailable"; anything else keeps its normal handling."""
    from django.db import IntegrityError

    from config.middleware import DatabaseUnavailableMiddleware

    mw = DatabaseUnavailableMiddleware(lambda request: None)
    assert mw.process_exception(client.request().wsgi_request, IntegrityError("dup")) is None


def test_real_server_with_its_database_down_answers_503(tmp_path):
    """gunicorn whose DATABASE_URL points at a closed port: JSON 503 for the API, HTML 503 for pages."""
    import urllib.error
    import urllib.request

    port, dead = free_port(), free_port()
    env = {**os.environ, "DATABASE_URL": f"postgres://postgres@127.0.0.1:{dead}/nothing", "DEBUG": "0",
           "SECRET_KEY": "test-only-secret-key-for-the-503-check-0123456789", "ALLOWED_HOSTS": "127.0.0.1",
           "SECURE_SSL_REDIRECT": "0", "SESSION_COOKIE_SECURE": "0", "CSRF_COOKIE_SECURE": "0",
           "CELERY_BROKER_URL": "filesystem://", "ROBUSTAL_DATA_DIR": str(tmp_path)}
    log = (tmp_path / "gunicorn.log").open("w")
    server = subprocess.Popen([sys.executable, "-m", "gunicorn", "config.wsgi", "--bind", f"127.0.0.1:{port}",
                               "--workers", "1", "--timeout", "30"], cwd=REPO_ROOT, env=env, stdout=log,
                              stderr=subprocess.STDOUT, start_new_session=True)

    def get(path, headers):
        req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                return resp.status, resp.headers, resp.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.headers, exc.read()

    try:
        def up():
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                return True
            except OSError:
                return False

        wait_until(up, timeout=30)
        status, headers, body = get("/api/labeling/next/", {"Authorization": "Token " + "a" * 40})
        assert status == 503, body
        assert headers["Content-Type"].startswith("application/json") and b"database_unavailable" in body
        status, headers, body = get("/", {"Cookie": "sessionid=" + "b" * 32})
        assert status == 503 and headers["Content-Type"].startswith("text/html"), body
        assert b"database is unavailable" in body and b"Traceback" not in body
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=20)
        log.close()
