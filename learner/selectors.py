"""Reads of the learner app."""
from __future__ import annotations

from .models import Experiment, WorkerPing


def last_worker_ping() -> WorkerPing | None:
    """The most recent worker answer, or None when no worker ever answered."""
    return WorkerPing.objects.order_by("-answered_at").first()


def experiment_list():
    return Experiment.objects.order_by("-created_at")
