"""What the labeling app's services share: timing settings, the errors the API maps to HTTP
answers, project state transitions and sending Celery tasks after commit."""
from __future__ import annotations

import logging

from django.conf import settings
from django.db import transaction

from .models import Project

log = logging.getLogger(__name__)


def undo_seconds() -> float:
    return float(getattr(settings, "LABELING_UNDO_SECONDS", 10))


def loop_delay_seconds() -> float:
    """Grace period between a batch's last answer and the loop task (lets that answer be undone)."""
    return float(getattr(settings, "LABELING_LOOP_DELAY_SECONDS", undo_seconds()))


# --------------------------------------------------------------------------------------
# Errors the API maps to HTTP answers
# --------------------------------------------------------------------------------------


class LabelingError(Exception):
    status_code = 400

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class InvalidInput(LabelingError):
    status_code = 400


class NotFound(LabelingError):
    status_code = 404


class Conflict(LabelingError):
    status_code = 409


# --------------------------------------------------------------------------------------
# State transitions and tasks
# --------------------------------------------------------------------------------------


def transition(project: Project, to: str) -> None:
    """Move ``project`` to state ``to`` (unsaved); a transition the state machine forbids is a conflict."""
    if project.state == to:
        return
    if not project.can_transition(to):
        raise Conflict(f"project {project.name!r} cannot go from {project.state} to {to}")
    project.state = to


def enqueue(task_name: str, *args, countdown: float | None = None) -> None:
    """Send a task once the surrounding transaction commits (never fail the request on a broker hiccup)."""
    def send():
        from . import tasks

        task = getattr(tasks, task_name)
        try:
            task.apply_async(args=list(args), countdown=countdown or None)
        except Exception as exc:  # broker down: the answer stays committed; sweep_stalled_loops sends it later
            log.warning("could not enqueue %s%r (%s: %s); the loop sweeper will send it again", task.name, args,
                        exc.__class__.__name__, exc)
        else:  # one line per send: the fault tests and bench/soak.py count these
            log.info("enqueued %s%r", task.name, args)

    transaction.on_commit(send)
