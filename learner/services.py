"""Writes of the learner app (HackSoft-style services)."""
from __future__ import annotations

import socket

from .models import WorkerPing


def record_worker_ping(*, token: str, hostname: str | None = None, queue: str = "") -> WorkerPing:
    """Store that a worker answered ``token``; idempotent for redelivered tasks."""
    ping, _ = WorkerPing.objects.get_or_create(
        token=token, defaults={"hostname": hostname or socket.gethostname(), "queue": queue}
    )
    return ping
