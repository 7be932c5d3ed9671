"""The Celery worker's own sign of life: one ``WorkerHeartbeat`` row per worker, written by the worker.

When a worker is ready it writes its row (name, queues, pid); a daemon thread in the worker's
main process touches ``last_seen`` every ``ROBUSTAL_WORKER_HEARTBEAT_SECONDS`` (default 30) while
it runs; every finished task touches it too and counts the task; a clean shutdown stamps
``stopped_at``. The web side only reads the table (``learner.selectors.worker_status``), so the
staff home page can say how long ago a worker was seen, with any database the web and the
workers share (the embedded SQLite file included) and any broker.

Imported by ``learner.tasks`` (the worker imports every task module when it starts, which
connects the signals below). Every write is a short statement on its own connection, closed
afterwards: the worker's main process keeps no connection that forked pool children could
inherit. A failed write (database down) is logged and never stops the worker.

At start the worker also logs the device its model work uses (``learner.device``: CUDA when
present, with its free and total memory; else the CPU and the system's memory): a solo or
thread pool logs it when ready, each prefork pool process when it starts (the parent never
touches CUDA, which forked children could not use after it).
"""
from __future__ import annotations

import logging
import os
import socket
import threading

from celery.signals import task_postrun, worker_process_init, worker_ready, worker_shutdown
from django.conf import settings
from django.db import connection
from django.db.models import F
from django.utils import timezone

log = logging.getLogger(__name__)


def interval_seconds() -> float:
    return float(getattr(settings, "ROBUSTAL_WORKER_HEARTBEAT_SECONDS", 30))


# --------------------------------------------------------------------------------------
# Writes (services)
# --------------------------------------------------------------------------------------


def record_ready(*, hostname: str, queues: list[str], pid: int | None = None):
    """A worker became ready: (re)start its row."""
    from .models import WorkerHeartbeat

    now = timezone.now()
    row, _ = WorkerHeartbeat.objects.update_or_create(hostname=hostname, defaults={
        "queues": sorted(queues), "pid": pid, "started_at": now, "last_seen": now, "last_task_at": None,
        "tasks_done": 0, "stopped_at": None})
    return row


def record_beat(*, hostname: str, task_done: bool = False, stopped: bool = False) -> None:
    """Touch ``last_seen`` (and count a finished task, or stamp a clean stop)."""
    from .models import WorkerHeartbeat

    now = timezone.now()
    fields: dict = {"last_seen": now}
    if task_done:
        fields.update(last_task_at=now, tasks_done=F("tasks_done") + 1)
    fields["stopped_at"] = now if stopped else None
    if not WorkerHeartbeat.objects.filter(hostname=hostname).update(**fields):
        # no row yet (a task finished before the ready signal's write, or the row was deleted)
        WorkerHeartbeat.objects.get_or_create(hostname=hostname, defaults={
            "started_at": now, "last_seen": now, "last_task_at": now if task_done else None,
            "tasks_done": int(task_done), "stopped_at": now if stopped else None, "pid": os.getpid()})


def _safely(action, *args, close: bool = True, **kwargs) -> None:
    try:
        action(*args, **kwargs)
    except Exception as exc:  # the database may be down: the worker goes on, the next beat tries again
        log.warning("worker heartbeat not written (%s: %s)", exc.__class__.__name__, exc)
    finally:
        if close and not connection.in_atomic_block:
            connection.close()


# --------------------------------------------------------------------------------------
# The worker's side: signals and the timer thread
# --------------------------------------------------------------------------------------

_beat = {"hostname": None, "stop": threading.Event(), "thread": None}


def _queues_of(consumer) -> list[str]:
    try:
        return [q.name for q in consumer.task_consumer.queues]
    except Exception:  # an older/other consumer shape: what the app was told to consume
        return list(getattr(consumer.app.amqp.queues, "consume_from", {}) or [])


def _run_timer(hostname: str, stop: threading.Event) -> None:
    while not stop.wait(interval_seconds()):
        _safely(record_beat, hostname=hostname)


@worker_ready.connect
def _on_worker_ready(sender=None, **kwargs) -> None:
    hostname = getattr(sender, "hostname", None) or f"celery@{socket.gethostname()}"
    _safely(record_ready, hostname=hostname, queues=_queues_of(sender), pid=os.getpid())
    _beat["hostname"] = hostname
    _beat["stop"] = stop = threading.Event()
    thread = threading.Thread(target=_run_timer, args=(hostname, stop), name="robustal-heartbeat", daemon=True)
    _beat["thread"] = thread
    thread.start()
    log.info("worker heartbeat: %s every %.0f s", hostname, interval_seconds())
    if _forks_children(sender):  # CUDA must not start in the parent of forked children: they say it
        log.info("worker device: logged by each pool process when it starts")
    else:
        _log_device("worker")


def _forks_children(consumer) -> bool:
    """Does the worker run its tasks in forked (prefork) pool processes?"""
    pool_cls = getattr(getattr(consumer, "controller", None), "pool_cls", None)
    try:
        from celery.concurrency.prefork import TaskPool

        return isinstance(pool_cls, type) and issubclass(pool_cls, TaskPool)
    except ImportError:  # pragma: no cover - prefork ships with celery
        return False


def _log_device(where: str) -> None:
    """Which device this process's model work uses and how much memory it has free
    (:mod:`learner.device`; CUDA when torch sees it, ``ROBUSTAL_DEVICE`` overrides)."""
    try:
        from .device import info

        log.info("%s %s device: %s", where, os.getpid(), info().describe())
    except Exception as exc:  # a broken CUDA setup is reported, and the task that needs it fails loudly
        log.warning("%s %s device: unknown (%s: %s)", where, os.getpid(), exc.__class__.__name__, exc)


@worker_process_init.connect
def _on_pool_process_start(**kwargs) -> None:
    _log_device("pool process")


@task_postrun.connect
def _on_task_done(sender=None, **kwargs) -> None:
    request = getattr(sender, "request", None)
    if request is None or getattr(request, "is_eager", False):
        return  # run in-process (eager, .apply()): no worker answered
    hostname = getattr(request, "hostname", None) or _beat["hostname"]
    if hostname:  # the task's own connection: Celery's Django fixup manages it
        _safely(record_beat, hostname=hostname, task_done=True, close=False)


@worker_shutdown.connect
def _on_worker_shutdown(**kwargs) -> None:
    _beat["stop"].set()
    if _beat["hostname"]:
        _safely(record_beat, hostname=_beat["hostname"], stopped=True)
