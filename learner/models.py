"""Database records of the learner: worker pings and heartbeats, simulated experiments.

The numerical core (data, backbones, strategies, attacks, oracles, the loop) lives in plain
modules of this package and never imports the ORM.
"""
from __future__ import annotations

from django.db import models


class WorkerPing(models.Model):
    """A round trip through the broker: the web side sends a token, a worker writes this row."""

    token = models.CharField(max_length=64, unique=True)
    hostname = models.CharField(max_length=255)
    queue = models.CharField(max_length=64, blank=True)
    answered_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-answered_at"]

    def __str__(self) -> str:
        return f"{self.hostname} at {self.answered_at:%Y-%m-%d %H:%M:%S}"


class WorkerHeartbeat(models.Model):
    """The last sign of life of one Celery worker (one row per worker name, overwritten).

    Written by the worker itself (:mod:`learner.heartbeat`): when it is ready, every
    ``ROBUSTAL_WORKER_HEARTBEAT_SECONDS`` while it runs, after each task, and when it shuts down.
    The staff home page reads it to say how long ago a worker was last seen.
    """

    hostname = models.CharField(max_length=255, unique=True, help_text="Celery node name, e.g. celery@host.")
    queues = models.JSONField(default=list, blank=True)
    pid = models.PositiveIntegerField(null=True, blank=True)
    started_at = models.DateTimeField(help_text="When this worker process became ready.")
    last_seen = models.DateTimeField(db_index=True)
    last_task_at = models.DateTimeField(null=True, blank=True, help_text="When it last finished a task.")
    tasks_done = models.PositiveIntegerField(default=0, help_text="Tasks finished since it started.")
    stopped_at = models.DateTimeField(null=True, blank=True, help_text="Set when it shut down cleanly.")

    class Meta:
        ordering = ["-last_seen"]

    def __str__(self) -> str:
        return f"{self.hostname} seen {self.last_seen:%Y-%m-%d %H:%M:%S}"


class Experiment(models.Model):
    """One ``simulate`` invocation: its parameters, status and summary results."""

    class Status(models.TextChoices):
        RUNNING = "running", "running"
        FINISHED = "finished", "finished"
        FAILED = "failed", "failed"

    name = models.CharField(max_length=200)
    scenario = models.CharField(max_length=32)
    dataset = models.CharField(max_length=200)
    strategies = models.JSONField(default=list)
    runs = models.PositiveIntegerField()
    seed = models.BigIntegerField()
    parameters = models.JSONField(default=dict)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.RUNNING)
    summary = models.JSONField(default=dict, blank=True)
    output_dir = models.CharField(max_length=500, blank=True)
    error = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.name} ({self.scenario}, {self.status})"
