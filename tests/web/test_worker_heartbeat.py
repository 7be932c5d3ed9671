"""The worker status on the staff home is true: it comes from heartbeats the worker writes itself.

A real worker process (embedded filesystem broker, the test database) writes its row when ready,
touches it on a timer without any task, counts the tasks it finishes and stamps a clean
shutdown; the staff home says "last seen N s ago" while it runs and "no worker seen for ..."
after. The page's wording for each case is checked against rows with known ages.
"""
from __future__ import annotations

import re
import uuid
from datetime import timedelta

import pytest
from django.test import Client
from django.utils import timezone

from learner import heartbeat
from learner.models import WorkerHeartbeat, WorkerPing
from learner.selectors import seconds_as_words, worker_status
from learner.tasks import ping_worker
from tests.web.conftest import start_worker, wait_until
from tests.web.factories import StaffFactory


def home_text(staff) -> str:
    client = Client()
    client.force_login(staff)
    r = client.get("/")
    assert r.status_code == 200
    return " ".join(re.sub(r"<[^>]+>", "", r.content.decode()).split())  # the words a person reads


def make_row(hostname="celery@box", *, seen=5.0, task=None, stopped=None, tasks_done=0):
    now = timezone.now()
    return WorkerHeartbeat.objects.create(
        hostname=hostname, queues=["default", "train"], pid=1, started_at=now - timedelta(hours=1),
        last_seen=now - timedelta(seconds=seen), tasks_done=tasks_done,
        last_task_at=None if task is None else now - timedelta(seconds=task),
        stopped_at=None if stopped is None else now - timedelta(seconds=stopped))


def test_seconds_as_words():
    assert [seconds_as_words(s) for s in (0, 12.4, 89, 120, 420, 5400, 7200, 3 * 86400)] == [
        "0 s", "12 s", "89 s", "2 min", "7 min", "2 h", "2 h", "3 days"]


@pytest.mark.django_db
def test_home_says_when_no_worker_ever_started():
    text = home_text(StaffFactory())
    assert "no worker has started yet" in text and "no worker has answered yet" not in text


@pytest.mark.django_db
def test_home_shows_a_running_worker_with_its_last_sign_of_life(settings):
    settings.ROBUSTAL_WORKER_HEARTBEAT_SECONDS = 30
    make_row(seen=12, task=180, tasks_done=10)
    text = home_text(StaffFactory())
    assert "1 worker running" in text
    assert re.search(r"celery@box \(queues default, train\): last seen 1\d s ago", text), text  # 12 s + the request
    assert "last task finished 3 min ago, 10 since it started" in text


@pytest.mark.django_db
def test_home_says_how_long_no_worker_was_seen(settings):
    settings.ROBUSTAL_WORKER_HEARTBEAT_SECONDS = 30
    make_row(seen=7 * 60, task=600, tasks_done=10)  # silent for 7 min: more than 3 heartbeat periods
    staff = StaffFactory()
    text = home_text(staff)
    assert "no worker seen for 7 min (last: celery@box)" in text and "running" not in text
    WorkerHeartbeat.objects.all().delete()
    make_row(seen=20, stopped=20)  # shut down cleanly 20 s ago: not running, however recent
    assert "no worker seen for 20 s (last: celery@box, which shut down 20 s ago)" in home_text(staff)


@pytest.mark.django_db
def test_status_lists_every_live_worker_and_ignores_stale_ones(settings):
    settings.ROBUSTAL_WORKER_HEARTBEAT_SECONDS = 10
    make_row("celery@a", seen=3)
    make_row("celery@b", seen=20)
    make_row("celery@c", seen=36)  # 3 periods + 5 s grace = 35 s
    status = worker_status()
    assert [w.hostname for w in status.alive] == ["celery@a", "celery@b"] and status.last is None


@pytest.mark.django_db
def test_beats_without_a_ready_row_create_one_and_eager_tasks_do_not_count():
    heartbeat.record_beat(hostname="celery@late", task_done=True)
    row = WorkerHeartbeat.objects.get(hostname="celery@late")
    assert row.tasks_done == 1 and row.last_task_at is not None and row.stopped_at is None
    heartbeat.record_beat(hostname="celery@late", task_done=True)
    heartbeat.record_beat(hostname="celery@late", stopped=True)
    row.refresh_from_db()
    assert row.tasks_done == 2 and row.stopped_at is not None
    ping_worker.apply(args=["eager"])  # in-process: no worker answered, no heartbeat
    assert WorkerPing.objects.filter(token="eager").exists()
    assert list(WorkerHeartbeat.objects.values_list("hostname", flat=True)) == ["celery@late"]


@pytest.fixture
def fast_heartbeat_worker(transactional_db, tmp_path):
    from config.settings import filesystem_broker_options

    broker_dir = tmp_path / "broker"
    options = filesystem_broker_options(broker_dir)
    worker = start_worker(broker_url="filesystem://", transport_options=options, tmp_path=tmp_path,
                          env_extra={"ROBUSTAL_BROKER_DIR": str(broker_dir), "ROBUSTAL_WORKER_HEARTBEAT_SECONDS": "1"})
    yield worker
    worker.stop()


def test_a_real_worker_beats_counts_its_tasks_and_says_goodbye(fast_heartbeat_worker, settings):
    worker = fast_heartbeat_worker
    settings.ROBUSTAL_WORKER_HEARTBEAT_SECONDS = 1
    row = wait_until(lambda: WorkerHeartbeat.objects.filter(hostname__startswith="test-worker-").first(),
                     timeout=90, worker=worker)
    assert row.queues == ["default", "train"] and row.stopped_at is None and row.tasks_done == 0
    # a solo pool says at start which device its model work uses and how much memory is free (logged
    # just after the ready signal writes the row: wait for it, a loaded machine may be a moment late)
    wait_until(lambda: re.search(r"worker \d+ device: (cpu|cuda:\d+) \(.+\): [\d.]+ GiB free of [\d.]+ GiB",
                                 worker.log()), timeout=30, worker=worker)
    first_seen = row.last_seen
    # the timer beats with no task at all
    wait_until(lambda: WorkerHeartbeat.objects.get(pk=row.pk).last_seen > first_seen, timeout=30, worker=worker)
    staff = StaffFactory()
    assert f"{row.hostname} (queues default, train): last seen" in home_text(staff)
    token = uuid.uuid4().hex
    with worker.connection() as conn:
        ping_worker.apply_async(args=[token], connection=conn)
    wait_until(lambda: WorkerHeartbeat.objects.get(pk=row.pk).tasks_done >= 1, timeout=90, worker=worker)
    assert WorkerPing.objects.filter(token=token).exists()
    assert WorkerHeartbeat.objects.get(pk=row.pk).last_task_at is not None
    worker.stop()
    row.refresh_from_db()
    assert row.stopped_at is not None, worker.log()
    text = home_text(staff)
    assert "no worker seen for" in text and "which shut down" in text and "running" not in text


def test_a_prefork_worker_leaves_cuda_to_its_pool_processes_which_log_their_device(caplog):
    from types import SimpleNamespace

    from celery.concurrency.prefork import TaskPool
    from celery.concurrency.solo import TaskPool as SoloPool

    assert heartbeat._forks_children(SimpleNamespace(controller=SimpleNamespace(pool_cls=TaskPool)))
    assert not heartbeat._forks_children(SimpleNamespace(controller=SimpleNamespace(pool_cls=SoloPool)))
    assert not heartbeat._forks_children(SimpleNamespace())
    with caplog.at_level("INFO", logger="learner.heartbeat"):
        heartbeat._on_pool_process_start()
    assert re.search(r"pool process \d+ device: (cpu|cuda:\d+) .* free of", caplog.text), caplog.text
