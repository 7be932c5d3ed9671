"""Celery tasks of the learner: thin, idempotent wrappers around services."""
from __future__ import annotations

from celery import shared_task

from . import heartbeat  # noqa: F401  (connects the worker's heartbeat signals)
from . import services


@shared_task(name="learner.tasks.ping_worker", bind=True)
def ping_worker(self, token: str) -> int:
    """Answer a ping by writing a row: proves broker, worker and database work together."""
    queue = (self.request.delivery_info or {}).get("routing_key", "") or ""
    return services.record_worker_ping(token=token, hostname=self.request.hostname, queue=queue).pk


@shared_task(name="learner.tasks.train.ping_worker", bind=True)
def ping_train_worker(self, token: str) -> int:
    """The same ping routed to the ``train`` queue (checks that heavy-work workers listen)."""
    queue = (self.request.delivery_info or {}).get("routing_key", "") or ""
    return services.record_worker_ping(token=token, hostname=self.request.hostname, queue=queue).pk
