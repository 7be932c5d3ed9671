"""Celery tasks of the labeling app: thin, idempotent wrappers that load ids and call a service.

The model-work tasks' names start with ``labeling.tasks.train.`` and ``CELERY_TASK_ROUTES``
sends them to the ``train`` queue; the loop sweeper is light and runs on ``default`` (beat sends it
periodically, and every worker runs it once when it starts).
"""
from __future__ import annotations

import logging

from celery import group, shared_task
from celery.signals import worker_ready
from django.db import InterfaceError, OperationalError

log = logging.getLogger(__name__)

_RETRY = {"autoretry_for": (OperationalError, InterfaceError), "retry_backoff": 2, "retry_backoff_max": 60,
          "max_retries": 5}


@shared_task(name="labeling.tasks.train.process_batch", **_RETRY)
def process_batch(batch_id: int) -> str:
    """One step of the live loop for a complete batch (a redelivery finds it processed: no-op)."""
    from . import loop_step

    try:
        outcome = loop_step.advance_loop(batch_id=int(batch_id))
    except (OperationalError, InterfaceError):
        raise  # transient: retried
    except Exception as exc:
        loop_step.record_loop_error(batch_id=int(batch_id), error=f"{exc.__class__.__name__}: {exc}")
        raise
    log.info("process_batch(%s): %s", batch_id, outcome)
    return outcome


@shared_task(name="labeling.tasks.train.prepare_features", **_RETRY)
def prepare_features(project_id: int) -> int:
    """Fan feature extraction out: one ``extract_features_chunk`` task per chunk of the pool."""
    from . import features
    from .models import Project

    project = Project.objects.filter(pk=project_id).first()
    if project is None or features.features_file(project).is_file():
        return 0
    chunks = features.chunk_plan(project)
    group(extract_features_chunk.si(project_id, start, stop) for start, stop in chunks).apply_async()
    return len(chunks)


@shared_task(name="labeling.tasks.train.extract_features_chunk", **_RETRY)
def extract_features_chunk(project_id: int, start: int, stop: int) -> bool:
    """Features of items ``start <= index < stop``; the last chunk to finish assembles the file."""
    from . import features
    from .models import Project

    project = Project.objects.filter(pk=project_id).first()
    if project is None:
        return False
    return features.write_chunk(project, int(start), int(stop))


@shared_task(name="labeling.tasks.train.reextract_finetune_chunk", **_RETRY)
def reextract_finetune_chunk(project_id: int, iteration: int, digest: str, start: int, stop: int) -> bool:
    """After a finetune refit: features of items ``start <= index < stop`` through the stage saved for
    ``iteration`` (hash ``digest``); the loop task assembles them (``features.reextract``) and computes
    whatever no worker wrote. A no-op once the loop has assembled them or for another try's stage."""
    from . import features
    from .models import Project

    project = Project.objects.filter(pk=project_id).first()
    if project is None:
        return False
    wrote = features.write_refit_chunk(project, int(iteration), str(digest), int(start), int(stop))
    log.info("reextract_finetune_chunk(%s, %s, %s-%s): %s", project_id, iteration, start, stop,
             "written" if wrote else "nothing to do")
    return wrote


@shared_task(name="labeling.tasks.sweep_loop", **_RETRY)
def sweep_loop() -> list[int]:
    """Re-send lost loop tasks (``services.sweep_stalled_loops``); idempotent, cheap when nothing is stalled."""
    from . import services

    return services.sweep_stalled_loops()


@worker_ready.connect
def _sweep_at_worker_start(**kwargs) -> None:
    """A worker coming back (after a crash or a broker outage) first re-sends what was lost meanwhile."""
    from django.db import connections

    from . import services

    try:
        sent = services.sweep_stalled_loops()
        if sent:
            log.warning("worker start: re-sent the loop task for batches %s", sent)
    except Exception as exc:  # the database may be down too; beat's sweep will try again
        log.warning("worker start: loop sweep failed (%s: %s)", exc.__class__.__name__, exc)
    finally:
        connections.close_all()  # the main process keeps no connection (prefork children make their own)
