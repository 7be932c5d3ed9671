"""The wiring, for real: a worker process consumes from a real broker and writes to the database."""
from __future__ import annotations

import subprocess
import sys
import uuid

import pytest

from learner.models import WorkerPing
from learner.tasks import ping_train_worker, ping_worker
from tests.conftest import REPO_ROOT
from tests.web.conftest import wait_until


def _send_and_wait(worker, task):
    token = uuid.uuid4().hex
    with worker.connection() as conn:
        task.apply_async(args=[token], connection=conn)
    ping = wait_until(lambda: WorkerPing.objects.filter(token=token).first(), timeout=90, worker=worker)
    return ping


def test_worker_over_real_redis_writes_to_database(redis_worker):
    ping = _send_and_wait(redis_worker, ping_worker)
    assert ping.hostname.startswith("test-worker-")
    assert ping.queue == "default"


def test_train_queue_is_routed_and_consumed_over_redis(redis_worker):
    ping = _send_and_wait(redis_worker, ping_train_worker)
    assert ping.queue == "train"


def test_worker_over_embedded_filesystem_broker_writes_to_database(filesystem_worker):
    ping = _send_and_wait(filesystem_worker, ping_worker)
    assert ping.hostname.startswith("test-worker-")


def test_redelivered_ping_is_idempotent(db):
    from learner.services import record_worker_ping

    first = record_worker_ping(token="same", hostname="a")
    second = record_worker_ping(token="same", hostname="b")
    assert first.pk == second.pk
    assert WorkerPing.objects.filter(token="same").count() == 1


def _manage(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "manage.py", *args], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=120)


def test_manage_check_is_clean():
    result = _manage("check", "--fail-level", "WARNING")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout


def test_migrations_are_up_to_date():
    result = _manage("makemigrations", "--check", "--dry-run")
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.django_db
def test_login_page_answers(client):
    response = client.get("/accounts/login/")
    assert response.status_code == 200
    assert b"Log in" in response.content


@pytest.mark.django_db
def test_home_requires_login(client):
    response = client.get("/")
    assert response.status_code == 302
    assert "/accounts/login/" in response["Location"]


@pytest.mark.django_db
def test_health_reports_database(client):
    response = client.get("/health/")
    assert response.status_code == 200
    assert response.json()["database"] == "up"
