"""Database records of the learner: worker pings and simulated experiments.

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
