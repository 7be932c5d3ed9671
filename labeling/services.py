"""Writes of the labeling app (HackSoft-style services): people and the project lifecycle.

Answering (the annotators' hot path) is :mod:`labeling.answering`; the live loop (one engine
step per Celery task) is :mod:`labeling.loop_step`; shared errors, transitions and task sending
are in :mod:`labeling.workflow`.

Locking rule (avoids deadlocks on PostgreSQL): a service that changes assignments locks the
*project* row first, then the rows it changes. Answers and skips (the hot path) take the project
``FOR SHARE`` and then their own assignment row only, so annotators never wait for each other;
everything else (undo, the loop task, reassignment, staff actions) takes it ``FOR UPDATE`` and so
excludes answers in flight. An answer never waits for an exclusive project lock while holding
rows (that could deadlock): the batch-completion step upgrades with ``NOWAIT`` or runs again
after commit (:func:`labeling.answering.complete_batch_if_done`). SQLite serialises writers anyway. Celery tasks are
enqueued with ``transaction.on_commit`` so a worker never sees uncommitted rows.
"""
from __future__ import annotations

import logging
from datetime import timedelta

import numpy as np
from django.conf import settings
from django.contrib.auth.models import Group
from django.db import transaction
from django.utils import timezone

from learner import engine, live

from . import answering, queue, selectors, workflow
from .workflow import Conflict, loop_delay_seconds
from .models import ANNOTATORS_GROUP, Assignment, Item, LabelerProfile, Project, QueryBatch

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------
# People
# --------------------------------------------------------------------------------------


def ensure_profile(user) -> LabelerProfile:
    profile, _ = LabelerProfile.objects.get_or_create(user=user)
    return profile


def add_annotator(user) -> LabelerProfile:
    """Put ``user`` in the annotators group and give them a profile."""
    group, _ = Group.objects.get_or_create(name=ANNOTATORS_GROUP)
    user.groups.add(group)
    return ensure_profile(user)


def set_labeler_status(*, user, suspended: bool | None = None, flagged: bool | None = None) -> LabelerProfile:
    """Suspend/reinstate or flag/unflag a labeler; the items they hold return to the queue when they stop."""
    with transaction.atomic():
        profile = ensure_profile(user)
        profile = LabelerProfile.objects.select_for_update().get(pk=profile.pk)
        if suspended is not None:
            profile.is_suspended = suspended
        if flagged is not None:
            profile.is_flagged = flagged
        profile.save()
        if profile.is_suspended or profile.is_flagged:
            release_open_work(user=user)
    return profile


def release_open_work(*, user) -> int:
    """Return every item ``user`` holds in open batches to the shared queue, for the others."""
    return queue.release_claims(user=user)


# --------------------------------------------------------------------------------------
# Projects
# --------------------------------------------------------------------------------------


def create_project(*, name: str, classes: list[str], description: str = "", config: dict | None = None,
                   created_by=None) -> Project:
    project = Project(name=name, classes=list(classes), description=description,
                      config=live.LiveConfig.from_dict(config or {}).to_dict(), created_by=created_by)
    project.full_clean()
    project.save()
    return project


def start_project(*, project: Project) -> QueryBatch:
    """Draft -> labeling: choose the secured set and the random initial batch, queue it.

    With ``pipeline`` a second random batch (the engine's ``following``) opens as well: the queue
    hands out the first batch's work first, then the second's, which people label while the
    model trains on the first.

    Secured items with an imported ground truth count as admin-verified (one label each);
    the others are queued ``h`` times each (consensus of distinct members). Feature extraction
    starts in the background (chunked over workers) while the first batch is labeled. A project
    without members is refused: staff choose who labels it first.
    """
    with transaction.atomic():
        project = Project.objects.select_for_update().get(pk=project.pk)
        if project.state != Project.State.DRAFT:
            raise Conflict(f"project {project.name!r} is already {project.state}")
        cfg = project.live_config
        items = list(project.items.order_by("index"))
        if not items:
            raise Conflict("the project has no items; import images first")
        need = min(cfg.secured_size, len(items) - 1) + cfg.initial_size
        if len(items) <= need:
            raise Conflict(f"the pool has {len(items)} images: the secured set ({cfg.secured_size}) and the first "
                           f"batch ({cfg.initial_size}) would take them all and leave the model nothing to choose; "
                           "import more images or lower secured_size or initial_size")
        if not selectors.member_ids(project):
            raise Conflict("the project has no annotators: choose its members first")
        known = np.array([i.ground_truth is not None for i in items], dtype=bool)
        plan = engine.start(cfg, len(items), label_known=known, crowd=selectors.eligible_labelers(project))
        if len(plan.secured):
            Item.objects.filter(project=project, index__in=plan.secured.tolist()).update(is_secured=True)
        if len(plan.initial) == 0:
            raise Conflict("nothing to label: the pool is empty or the budget is spent by the secured set")
        batch = QueryBatch.objects.create(project=project, iteration=0, strategy="random",
                                          bought_before=selectors.labels_bought(project))
        # first labels with the gold questions spread among them (engine.start_queue: one order for
        # the queue and the planners); a gold question is a secured-set slot of an item the admin labeled
        kinds = {"first": Assignment.Kind.FIRST_LABEL, "gold": Assignment.Kind.SECURED}
        Assignment.objects.bulk_create([Assignment(item=items[index], batch=batch, kind=kinds[kind])
                                        for kind, index, _ in engine.start_queue(plan)])
        # The engine's voters only size the queue: h slots per secured item, claimed by distinct members.
        Assignment.objects.bulk_create([Assignment(item=items[index], batch=batch, kind=Assignment.Kind.SECURED)
                                        for index, voters in plan.secured_voters.items() for _ in voters])
        if len(plan.following):  # pipeline: a second random batch, labeled while the first is processed
            following = QueryBatch.objects.create(project=project, iteration=1, strategy="random",
                                                  bought_before=batch.bought_before)
            _assign_first_labels(following, [items[i] for i in plan.following])
        workflow.transition(project, Project.State.LABELING)
        project.iteration = 1 if len(plan.following) else 0
        project.save(update_fields=["state", "iteration", "updated_at"])
        workflow.enqueue("prepare_features", project.pk)
    return batch


def _assign_first_labels(batch: QueryBatch, items: list[Item]) -> list[Assignment]:
    """One queued first-label slot per item, in the engine's order (the queue's order)."""
    return Assignment.objects.bulk_create([Assignment(item=item, batch=batch, kind=Assignment.Kind.FIRST_LABEL)
                                           for item in items])


def resume_loop(*, project: Project) -> bool:
    """Re-send the loop task for the open batch when it is complete (staff button; idempotent)."""
    batch = selectors.open_batch(project)
    if batch is None or not selectors.batch_is_complete(batch):
        return False
    with transaction.atomic():
        p = Project.objects.select_for_update().get(pk=project.pk)
        if p.state == Project.State.LABELING:
            workflow.transition(p, Project.State.UPDATING)
            p.save(update_fields=["state", "updated_at"])
        workflow.enqueue("process_batch", batch.pk)
    return True


def pause_project(*, project: Project) -> Project:
    """Stop handing out the project's work (staff); idempotent.

    Annotators get no new assignment from it until :func:`unpause_project`; an answer to work
    already on someone's screen is still accepted (nothing is lost), and a batch that completes
    meanwhile is still processed by the loop (its next batch is assigned, and handed out after the
    resume).
    """
    with transaction.atomic():
        p = Project.objects.select_for_update().get(pk=project.pk)
        if p.state not in (Project.State.LABELING, Project.State.UPDATING):
            raise Conflict(f"only a project that is labeling can be paused; {p.name!r} is {p.get_state_display()}")
        if p.paused_at is None:
            p.paused_at = timezone.now()
            p.save(update_fields=["paused_at"])  # not updated_at: the loop sweeper's clock
    log.info("project %s paused", p.pk)
    return p


def unpause_project(*, project: Project) -> Project:
    """Hand out the project's work again after :func:`pause_project`; idempotent."""
    with transaction.atomic():
        p = Project.objects.select_for_update().get(pk=project.pk)
        if p.paused_at is not None:
            p.paused_at = None
            p.save(update_fields=["paused_at"])
    log.info("project %s resumed", p.pk)
    return p


def sweep_stalled_loops(*, older_than: float | None = None) -> list[int]:
    """Send the loop task again for complete batches whose task was lost; returns their batch ids.

    The database is the source of truth, the broker only a doorbell: an answer commits even when
    the broker is down (``_enqueue`` logs and gives up), so something must ring again. This runs
    at worker start and periodically (beat) and finds:

    - projects "model updating" since more than ``older_than`` seconds (plus the grace period)
      whose open batch no task has started on (not frozen), or whose task started more than
      ``LABELING_STALE_TASK_SECONDS`` ago and never finished (its worker died on a broker that
      does not redeliver, e.g. the filesystem one);
    - projects still "labeling" whose open batch is complete (the completion step after the last
      answer's commit was lost).

    Each hit is taken under the project's row lock (``skip_locked``) with its age re-checked and
    the project's ``updated_at`` touched, so concurrent sweepers send it once and the next sweep
    waits another period. A duplicate send is harmless anyway (:func:`advance_loop` is idempotent).
    """
    age = float(getattr(settings, "LABELING_SWEEP_AFTER_SECONDS", 60)) if older_than is None else older_than
    now = timezone.now()
    cutoff = now - timedelta(seconds=age + loop_delay_seconds())
    stale_task = now - timedelta(seconds=float(getattr(settings, "LABELING_STALE_TASK_SECONDS", 3600)))
    sent: list[int] = []
    candidates = Project.objects.filter(state__in=[Project.State.UPDATING, Project.State.LABELING],
                                        updated_at__lt=cutoff).values_list("pk", "state")
    for project_id, state in candidates:
        # the oldest open batch is the one the loop closes next (with pipeline a younger one is open too)
        batch = QueryBatch.objects.filter(project_id=project_id, closed_at__isnull=True).order_by("iteration").first()
        if batch is None:
            continue
        if state == Project.State.LABELING:
            if answering.complete_batch_if_done(batch_id=batch.pk):
                log.warning("sweeper: batch %s was complete but its project still labeling; loop task sent", batch.pk)
                sent.append(batch.pk)
            continue
        if batch.frozen_at is not None and batch.frozen_at >= stale_task:
            continue  # a task is on it (a dead Redis worker's task comes back after the visibility timeout)
        with transaction.atomic():
            project = (Project.objects.select_for_update(skip_locked=True)
                       .filter(pk=project_id, state=Project.State.UPDATING, updated_at__lt=cutoff).first())
            batch = QueryBatch.objects.select_for_update().filter(pk=batch.pk, closed_at__isnull=True).first()
            if project is None or batch is None or (batch.frozen_at is not None and batch.frozen_at >= stale_task):
                continue
            if batch.frozen_at is not None:
                batch.frozen_at = now  # restart the stale clock: one more send per period at most
                batch.save(update_fields=["frozen_at"])
            project.save(update_fields=["updated_at"])
            workflow.enqueue("process_batch", batch.pk)
        log.warning("sweeper: project %s waited over %.0f s for its loop task; batch %s sent again",
                    project_id, age, batch.pk)
        sent.append(batch.pk)
    return sent


