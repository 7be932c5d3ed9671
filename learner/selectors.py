"""Reads of the learner app."""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from django.utils import timezone

from .models import Experiment, WorkerHeartbeat, WorkerPing


def last_worker_ping() -> WorkerPing | None:
    """The most recent worker answer, or None when no worker ever answered."""
    return WorkerPing.objects.order_by("-answered_at").first()


def seconds_as_words(seconds: float) -> str:
    """12 s, 7 min, 3 h, 2 days."""
    seconds = max(0.0, seconds)
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    if seconds < 36 * 3600:
        return f"{seconds / 3600:.0f} h"
    return f"{seconds / 86400:.0f} days"


@dataclass
class WorkerRow:
    hostname: str
    queues: list[str]
    seen_ago: str  # "12 s"
    last_task_ago: str | None
    tasks_done: int
    stopped_ago: str | None  # a clean shutdown, or None


@dataclass
class WorkerStatus:
    """What the staff home says about the workers, from the rows the workers write themselves."""

    alive: list[WorkerRow] = field(default_factory=list)  # seen within 3 heartbeat periods, not stopped
    last: WorkerRow | None = None  # the most recently seen worker when none is alive
    silent_for: str | None = None  # how long no worker has been seen
    checked_at: datetime | None = None


def worker_status(now: datetime | None = None) -> WorkerStatus:
    from .heartbeat import interval_seconds

    now = now or timezone.now()
    fresh = 3 * interval_seconds() + 5
    status = WorkerStatus(checked_at=now)
    for hb in WorkerHeartbeat.objects.order_by("-last_seen")[:50]:
        age = (now - hb.last_seen).total_seconds()
        row = WorkerRow(hostname=hb.hostname, queues=list(hb.queues or []), seen_ago=seconds_as_words(age),
                        last_task_ago=(seconds_as_words((now - hb.last_task_at).total_seconds())
                                       if hb.last_task_at else None),
                        tasks_done=hb.tasks_done,
                        stopped_ago=seconds_as_words((now - hb.stopped_at).total_seconds()) if hb.stopped_at else None)
        if hb.stopped_at is None and age <= fresh:
            status.alive.append(row)
        elif status.last is None and not status.alive:
            status.last, status.silent_for = row, row.seen_ago
    if status.alive:
        status.last = status.silent_for = None
    return status


def experiment_list():
    return Experiment.objects.order_by("-created_at")
