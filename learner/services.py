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


def start_experiment(*, name: str, spec) -> "Experiment":
    """Record a simulated experiment before it runs (so the admin lists it as running)."""
    from dataclasses import asdict

    from .experiments import _clean
    from .models import Experiment

    params = _clean({k: v for k, v in asdict(spec).items() if k not in {"strategies", "runs", "seed", "dataset"}})
    return Experiment.objects.create(
        name=name, scenario=spec.scenario, dataset=spec.dataset, strategies=list(spec.strategies),
        runs=spec.runs, seed=spec.seed, parameters=params,
    )


def finish_experiment(experiment, *, result, output_dir: str) -> "Experiment":
    """Store the budget table, target and timings of a finished experiment."""
    from django.utils import timezone

    from .experiments import _clean, summary_table
    from .models import Experiment

    experiment.summary = _clean({
        "target_accuracy": result.target_accuracy, "budget_cap": result.budget_cap,
        "classes": list(result.classes), "budgets": summary_table(result), "seconds": result.seconds,
    })
    experiment.output_dir = output_dir
    experiment.status = Experiment.Status.FINISHED
    experiment.finished_at = timezone.now()
    experiment.save()
    return experiment


def fail_experiment(experiment, *, error: str) -> "Experiment":
    from django.utils import timezone

    from .models import Experiment

    experiment.status = Experiment.Status.FAILED
    experiment.error = error[:10000]
    experiment.finished_at = timezone.now()
    experiment.save(update_fields=["status", "error", "finished_at"])
    return experiment
