"""Writes of the labeling app (HackSoft-style services).

Locking rule (avoids deadlocks on PostgreSQL): a service that changes assignments locks the
*project* row first, then the rows it changes. Answers and skips (the hot path) take the project
``FOR SHARE`` and then their own assignment row only, so annotators never wait for each other;
everything else (undo, the loop task, reassignment, staff actions) takes it ``FOR UPDATE`` and so
excludes answers in flight. An answer never waits for an exclusive project lock while holding
rows (that could deadlock): the batch-completion step upgrades with ``NOWAIT`` or runs again
after commit (:func:`complete_batch_if_done`). SQLite serialises writers anyway. Celery tasks are
enqueued with ``transaction.on_commit`` so a worker never sees uncommitted rows.

The live loop (:func:`advance_loop`) runs in three steps so the heavy part holds no lock:
1. a short transaction checks the batch is complete, freezes it (undo is refused from then on)
   and reads a snapshot of the label state;
2. training, the secured-set check, the audit, crafting and the next query run on arrays
   (``learner.live``), deterministic for a given project seed and iteration;
3. a short transaction re-checks that nobody processed the batch meanwhile (same phase, not
   closed) and writes the results. A redelivered or duplicated task therefore finds the batch
   closed (or in the next phase) and does nothing; ``unique (project, iteration)`` backs this up.
"""
from __future__ import annotations

import functools
import logging
import math
from collections import Counter
from dataclasses import dataclass, field
from datetime import timedelta

import numpy as np
from django.conf import settings
from django.contrib.auth.models import Group
from django.db import IntegrityError, OperationalError, connection, transaction
from django.db.models import F
from django.utils import timezone

from learner import live
from trust import scoring
from trust import selectors as trust_selectors
from trust import services as trust_services

from . import features as feature_cache
from .db import prepared_cursor
from . import selectors
from .models import (ANNOTATORS_GROUP, Annotation, Assignment, Item, IterationMetric, LabelerProfile, Project,
                     QueryBatch)

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
    """Suspend/reinstate or flag/unflag a labeler; their open work goes to others when they stop."""
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
    """Hand ``user``'s open assignments in open batches to other eligible labelers (or pause them)."""
    moved = 0
    project_ids = (Assignment.objects.filter(labeler=user, status=Assignment.Status.OPEN, batch__closed_at__isnull=True)
                   .values_list("batch__project_id", flat=True).distinct())
    for project_id in sorted(set(project_ids)):
        with transaction.atomic():
            Project.objects.select_for_update().get(pk=project_id)
            eligible = [u for u in selectors.eligible_labelers() if u != user.pk]
            for asg in (Assignment.objects.select_for_update()
                        .filter(labeler=user, status=Assignment.Status.OPEN, batch__project_id=project_id,
                                batch__closed_at__isnull=True).order_by("id")):
                holders = set(Assignment.objects.filter(item=asg.item_id, batch=asg.batch_id)
                              .exclude(labeler__isnull=True).values_list("labeler_id", flat=True))
                exclude = holders | ({asg.original_labeler_id} if asg.original_labeler_id else set())
                choice = live.choose_distinct(1, eligible, exclude=exclude, load=selectors.open_load(asg.batch),
                                              seed=asg.pk)
                if choice:
                    asg.labeler_id = choice[0]
                else:
                    asg.labeler_id, asg.status = None, Assignment.Status.PAUSED
                asg.save(update_fields=["labeler", "status"])
                moved += 1
    return moved


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


def _seed(cfg: live.LiveConfig, *parts: int) -> int:
    """A seed derived from the project's seed and e.g. (iteration, purpose): same inputs, same draw."""
    return int(live.rng_for(cfg.seed, *parts).integers(2**31))


def _transition(project: Project, to: str) -> None:
    if project.state == to:
        return
    if not project.can_transition(to):
        raise Conflict(f"project {project.name!r} cannot go from {project.state} to {to}")
    project.state = to


def _enqueue(task_name: str, *args, countdown: float | None = None) -> None:
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


def start_project(*, project: Project) -> QueryBatch:
    """Draft -> labeling: choose the secured set and the random initial batch, assign it.

    Secured items with an imported ground truth count as admin-verified (one label each);
    the others go to ``h`` labelers each (consensus). Feature extraction starts in the
    background (chunked over workers) while the first batch is labeled.
    """
    with transaction.atomic():
        project = Project.objects.select_for_update().get(pk=project.pk)
        if project.state != Project.State.DRAFT:
            raise Conflict(f"project {project.name!r} is already {project.state}")
        cfg = project.live_config
        items = list(project.items.order_by("index"))
        if not items:
            raise Conflict("the project has no items; import images first")
        indices = np.arange(len(items))
        secured = live.random_items(indices, min(cfg.secured_size, max(len(items) - 1, 0)), _seed(cfg, 0, 1))
        if len(secured):
            Item.objects.filter(project=project, index__in=secured.tolist()).update(is_secured=True)
        free = np.setdiff1d(indices, secured)
        admin_labels = sum(1 for i in secured if items[i].ground_truth is not None)
        consensus = [items[i] for i in secured if items[i].ground_truth is None]
        budget_left = (cfg.budget if cfg.budget is not None else 10**12) - admin_labels - cfg.h * len(consensus)
        initial = live.random_items(free, min(cfg.initial_size, max(budget_left, 0)), _seed(cfg, 0, 2))
        if len(initial) == 0:
            raise Conflict("nothing to label: the pool is empty or the budget is spent by the secured set")
        batch = QueryBatch.objects.create(project=project, iteration=0, strategy="random")
        _assign_first_labels(batch, [items[i] for i in initial], seed=cfg.seed)
        eligible = selectors.eligible_labelers()
        for item in consensus:
            voters = live.choose_distinct(cfg.h, eligible, load=selectors.open_load(batch), seed=cfg.seed + item.index)
            for voter in voters:
                Assignment.objects.create(item=item, batch=batch, labeler_id=voter, kind=Assignment.Kind.SECURED)
        _transition(project, Project.State.LABELING)
        project.iteration = 0
        project.save(update_fields=["state", "iteration", "updated_at"])
        _enqueue("prepare_features", project.pk)
    return batch


def _assign_first_labels(batch: QueryBatch, items: list[Item], *, seed: int) -> list[Assignment]:
    eligible = selectors.eligible_labelers()
    who = live.spread(len(items), eligible, selectors.open_load(batch), seed=seed + batch.iteration)
    rows = [Assignment(item=item, batch=batch, labeler_id=w, kind=Assignment.Kind.FIRST_LABEL,
                       status=Assignment.Status.OPEN if w is not None else Assignment.Status.PAUSED)
            for item, w in zip(items, who)]
    return Assignment.objects.bulk_create(rows)


def resume_loop(*, project: Project) -> bool:
    """Re-send the loop task for the open batch when it is complete (staff button; idempotent)."""
    batch = selectors.open_batch(project)
    if batch is None or not selectors.batch_is_complete(batch):
        return False
    with transaction.atomic():
        p = Project.objects.select_for_update().get(pk=project.pk)
        if p.state == Project.State.LABELING:
            _transition(p, Project.State.UPDATING)
            p.save(update_fields=["state", "updated_at"])
        _enqueue("process_batch", batch.pk)
    return True


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
        batch = QueryBatch.objects.filter(project_id=project_id, closed_at__isnull=True).order_by("-iteration").first()
        if batch is None:
            continue
        if state == Project.State.LABELING:
            if complete_batch_if_done(batch_id=batch.pk):
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
            _enqueue("process_batch", batch.pk)
        log.warning("sweeper: project %s waited over %.0f s for its loop task; batch %s sent again",
                    project_id, age, batch.pk)
        sent.append(batch.pk)
    return sent


# --------------------------------------------------------------------------------------
# Annotators: next, answer, skip, undo
# --------------------------------------------------------------------------------------


def next_assignment(*, user, project: Project | None = None) -> Assignment | None:
    """The user's next open assignment; claims a paused one when they have none."""
    asg = selectors.next_assignment_for(user, project)
    if asg is not None or user.pk not in set(selectors.eligible_labelers()):
        return asg
    paused = (Assignment.objects.filter(status=Assignment.Status.PAUSED, labeler__isnull=True,
                                        batch__closed_at__isnull=True, batch__project__state=Project.State.LABELING)
              .exclude(original_labeler=user).order_by("id"))
    if project is not None:
        paused = paused.filter(batch__project=project)
    for candidate in paused[:50]:
        with transaction.atomic():
            Project.objects.select_for_update().get(pk=candidate.batch.project_id)
            asg = Assignment.objects.select_for_update().filter(pk=candidate.pk, status=Assignment.Status.PAUSED,
                                                                labeler__isnull=True).first()
            if asg is None or Assignment.objects.filter(item=asg.item_id, batch=asg.batch_id, labeler=user).exists():
                continue
            asg.labeler, asg.status = user, Assignment.Status.OPEN
            asg.save(update_fields=["labeler", "status"])
        return selectors.next_assignment_for(user, project)
    return None


@functools.cache
def _answer_sql(vendor: str) -> dict[str, str]:
    """Hand-written statements of the answer path (one set per database vendor).

    Django compiles every ORM query anew, about 1 ms of CPU for a join; these run on every
    answer, so they are written once here, with the two plain UPDATEs of every answer; the
    other writes stay in the ORM.
    """
    q = connection.ops.quote_name
    p, a, b = (q(m._meta.db_table) for m in (Project, Assignment, QueryBatch))
    locks = vendor == "postgresql"  # SQLite serialises writers: no row locks there
    return {
        # the project of the user's assignment (Django has no FOR SHARE)
        "project": (f"SELECT p.* FROM {p} p WHERE p.id = (SELECT b.project_id FROM {a} a JOIN {b} b "
                    "ON b.id = a.batch_id WHERE a.id = %s AND a.labeler_id = %s)"),
        "share": " FOR SHARE" if locks else "",
        "exclusive": " FOR UPDATE" if locks else "",
        # the assignment row alone is locked; its batch's state comes along unlocked
        "assignment": (f"SELECT a.*, b.project_id AS batch_project_id, b.closed_at IS NOT NULL AS batch_closed, "
                       f"b.frozen_at IS NOT NULL AS batch_frozen FROM {a} a JOIN {b} b ON b.id = a.batch_id "
                       "WHERE a.id = %s AND a.labeler_id = %s" + (" FOR NO KEY UPDATE OF a" if locks else "")),
        "open_left": f"SELECT EXISTS(SELECT 1 FROM {a} WHERE batch_id = %s AND status IN (%s, %s))",
        "mark": f"UPDATE {a} SET status = %s, completed_at = %s WHERE id = %s",
        "count_label": (f"UPDATE {q(LabelerProfile._meta.db_table)} SET labels_given = labels_given + 1 "
                        "WHERE user_id = %s"),
    }


def _lock_assignment(user, assignment_id: int, *, exclusive: bool = False) -> tuple[Project, Assignment]:
    """Lock the project, then the user's assignment row (404 when it is not theirs).

    Answers and skips take the project ``FOR SHARE``: they do not wait for each other, while
    every ``FOR UPDATE`` on the project (the loop task, undo, reassignment) still waits for them
    and keeps them out. ``exclusive`` takes it ``FOR UPDATE`` (undo may change the project
    state). The assignment comes from a second statement, so the batch state it carries
    (``batch_closed``, ``batch_frozen``) is read after the project lock was granted and a
    freeze by the loop task is seen.
    """
    if not 0 < assignment_id < 2**63:  # keep out-of-range ids from reaching the database
        raise NotFound("no such assignment for you")
    sql = _answer_sql(connection.vendor)
    project = next(iter(Project.objects.raw(sql["project"] + sql["exclusive" if exclusive else "share"],
                                            [assignment_id, user.pk])), None)
    if project is None:
        raise NotFound("no such assignment for you")
    asg = next(iter(Assignment.objects.raw(sql["assignment"], [assignment_id, user.pk])), None)
    if asg is None or asg.batch_project_id != project.pk:  # handed to someone else meanwhile
        raise NotFound("no such assignment for you")
    return project, asg


@functools.cache
def _one_statement_answer_sql() -> str:
    """The whole first answer as one PostgreSQL statement (data-modifying CTEs).

    Each CTE feeds the next, which fixes their order: the project ``FOR SHARE`` (re-checked
    after any wait, so a loop task that took it meanwhile is seen), the user's own assignment
    (by primary key: ``labeler_id + 0`` keeps the planner off the (labeler, status) index, which
    it rated equal and which scans every open assignment of the labeler)
    ``FOR NO KEY UPDATE`` only while it is open, its batch open and the label in range (the
    batch row is share-locked too, so that a freeze committed while this statement waited for
    the project is seen: PostgreSQL re-checks locked rows at their newest version; ``FOR KEY
    SHARE`` would not, a non-key update does not make it look again), then
    the insert, the status update and the labeler's counter. ``other_open`` looks for other
    open work in the batch, skipping rows that concurrent answers hold: two simultaneous last
    answers then both see "nothing left" and both run the (locked, idempotent) completion check
    after commit, instead of each seeing the other's row still open.
    """
    q = connection.ops.quote_name
    p, a, b, n, lp = (q(m._meta.db_table) for m in (Project, Assignment, QueryBatch, Annotation, LabelerProfile))
    return f"""
WITH prj AS MATERIALIZED (
    SELECT p.id, p.state, jsonb_array_length(p.classes) AS n_classes FROM {p} p
    WHERE p.id = (SELECT b.project_id FROM {a} a JOIN {b} b ON b.id = a.batch_id
                  WHERE a.id = %(aid)s AND a.labeler_id = %(uid)s)
    FOR SHARE
), asg AS MATERIALIZED (
    SELECT a.id, a.batch_id FROM {a} a JOIN {b} b ON b.id = a.batch_id JOIN prj ON prj.id = b.project_id
    WHERE a.id = %(aid)s AND a.labeler_id + 0 = %(uid)s AND a.status = %(open)s AND prj.state = %(labeling)s
      AND b.closed_at IS NULL AND b.frozen_at IS NULL AND %(label)s < prj.n_classes
    FOR NO KEY UPDATE OF a FOR SHARE OF b
), ins AS (
    INSERT INTO {n} (assignment_id, label, seconds, created_at)
    SELECT asg.id, %(label)s, %(seconds)s, %(now)s FROM asg RETURNING id, assignment_id
), mark AS (
    UPDATE {a} SET status = %(done)s, completed_at = %(now)s FROM ins WHERE {a}.id = ins.assignment_id
    RETURNING {a}.id
), counted AS (
    UPDATE {lp} SET labels_given = labels_given + 1
    WHERE user_id = %(uid)s AND EXISTS (SELECT 1 FROM mark) RETURNING user_id
), other_open AS MATERIALIZED (
    SELECT o.id FROM {a} o JOIN asg ON o.batch_id = asg.batch_id
    WHERE o.status IN (%(open)s, %(paused)s) AND o.id <> asg.id LIMIT 1 FOR SHARE OF o SKIP LOCKED
)
SELECT ins.id, prj.id, asg.batch_id, EXISTS (SELECT 1 FROM other_open), (SELECT count(*) FROM counted)
FROM ins JOIN asg ON asg.id = ins.assignment_id CROSS JOIN prj
"""


def _answer_in_one_statement(user, assignment_id: int, label, seconds: float | None) -> Annotation | None:
    """First answer to an open assignment in one round trip (PostgreSQL); None when not that case.

    The annotators' hot path: the general path below takes nine round trips (BEGIN, two
    locks, insert, two updates, the open-work check, COMMIT, a check after commit) and each
    costs CPU in both Django and PostgreSQL; this one takes one. It writes exactly what the
    general path writes. Returns None, having written nothing, when the assignment is not the
    user's, not open, its batch or project not taking answers, or the label not a class index.
    """
    if type(label) is not int or label < 0 or not 0 < assignment_id < 2**63:
        return None
    now = timezone.now()
    params = {"aid": assignment_id, "uid": user.pk, "label": label, "seconds": seconds, "now": now,
              "open": Assignment.Status.OPEN.value, "paused": Assignment.Status.PAUSED.value,
              "done": Assignment.Status.DONE.value, "labeling": Project.State.LABELING.value}
    # No BEGIN/COMMIT of our own: a single statement is atomic, and in autocommit it commits at
    # once (inside a caller's transaction it simply joins it).
    with prepared_cursor() as cursor:
        cursor.execute(_one_statement_answer_sql(), params)
        row = cursor.fetchone()
    if row is None:
        return None
    annotation_id, project_id, batch_id, other_open, counted = row
    if not counted:  # the labeler's first answer ever: no profile row yet
        _count_label(user)
    if not other_open:  # after this statement's commit (or inside the caller's transaction)
        _complete_batch_soon(project_id, batch_id)
    annotation = Annotation(id=annotation_id, assignment_id=assignment_id, label=label, seconds=seconds,
                            created_at=now)
    annotation._state.adding, annotation._state.db = False, connection.alias
    return annotation


def _batch_has_open_work(batch_id: int) -> bool:
    """Whether an assignment of the batch is open or waiting for a labeler (a cheap EXISTS)."""
    with connection.cursor() as cursor:
        cursor.execute(_answer_sql(connection.vendor)["open_left"],
                       [batch_id, Assignment.Status.OPEN.value, Assignment.Status.PAUSED.value])
        return bool(cursor.fetchone()[0])


def _check_answerable(project: Project, asg: Assignment) -> None:
    if asg.batch_closed or asg.batch_frozen:
        raise Conflict("this batch is closed: the model is updating with it")
    if project.state != Project.State.LABELING:
        raise Conflict(f"the project is {project.get_state_display()}; answers are not accepted now")


def parse_label(project: Project, label) -> int:
    if isinstance(label, bool) or label is None:
        raise InvalidInput(f"label must be an integer class index from 0 to {project.n_classes - 1}")
    if isinstance(label, str) and label.strip().lstrip("-").isdigit():
        label = int(label.strip())
    if isinstance(label, float) and label.is_integer():
        label = int(label)
    if not isinstance(label, int) or not 0 <= label < project.n_classes:
        raise InvalidInput(f"label must be an integer class index from 0 to {project.n_classes - 1} "
                           f"({', '.join(f'{i}={c}' for i, c in enumerate(project.classes[:20]))}); got {label!r}")
    return label


def _parse_seconds(seconds) -> float | None:
    if seconds is None:
        return None
    try:
        seconds = float(seconds)
    except (TypeError, ValueError):
        raise InvalidInput("seconds must be a number") from None
    if not math.isfinite(seconds) or seconds < 0:
        raise InvalidInput("seconds must be a non-negative number")
    return min(seconds, 86400.0)


def _existing_answer(annotation: Annotation, label: int) -> Annotation:
    """The same answer again is harmless; another label for an answered assignment is a conflict."""
    if annotation.label == label:
        return annotation
    raise Conflict("this assignment is already answered with another label; undo it first")


def _mark(asg: Assignment, status: str) -> None:
    """Set the assignment's status and completion time (one UPDATE; the row is locked)."""
    asg.status, asg.completed_at = status, timezone.now()
    with connection.cursor() as cursor:
        cursor.execute(_answer_sql(connection.vendor)["mark"],
                       [str(status), connection.ops.adapt_datetimefield_value(asg.completed_at), asg.pk])


def _count_label(user) -> None:
    """labels_given + 1 in one UPDATE (the profile is created on the user's first answer)."""
    for _ in range(2):
        with connection.cursor() as cursor:
            cursor.execute(_answer_sql(connection.vendor)["count_label"], [user.pk])
            if cursor.rowcount:
                return
        ensure_profile(user)


def submit_annotation(*, user, assignment_id: int, label, seconds: float | None = None) -> tuple[Annotation, bool]:
    """Answer an assignment. Returns (annotation, created).

    Re-sending the same answer returns the existing annotation (created False); a different
    label for an answered assignment is a conflict (undo first).
    """
    seconds = _parse_seconds(seconds)
    if connection.vendor == "postgresql":
        annotation = _answer_in_one_statement(user, assignment_id, label, seconds)
        if annotation is not None:
            return annotation, True
        # Anything but a first answer to an open assignment (a resend, someone else's, a bad
        # label, a closed batch, ...) takes the general path, which says exactly why.
    parsed = None
    try:
        with transaction.atomic():
            project, asg = _lock_assignment(user, assignment_id)
            parsed = parse_label(project, label)
            if asg.status == Assignment.Status.DONE:
                return _existing_answer(Annotation.objects.get(assignment=asg), parsed), False
            if asg.status != Assignment.Status.OPEN:
                raise Conflict(f"this assignment is {asg.status}")
            _check_answerable(project, asg)
            # No savepoint around the insert: the row lock above makes a duplicate impossible on
            # PostgreSQL, and the rare SQLite race is handled below, after the rollback.
            annotation = Annotation.objects.create(assignment=asg, label=parsed, seconds=seconds)
            _mark(asg, Assignment.Status.DONE)
            _count_label(user)
            _after_progress(project, asg.batch_id)
    except IntegrityError:  # a concurrent identical submit won the one-to-one race
        existing = Annotation.objects.filter(assignment_id=assignment_id, assignment__labeler=user).first()
        if existing is None or parsed is None:
            raise
        return _existing_answer(existing, parsed), False
    return annotation, True


def skip_assignment(*, user, assignment_id: int) -> Assignment:
    """Skip an item (it returns to the pool). Skipping a skipped assignment is harmless."""
    with transaction.atomic():
        project, asg = _lock_assignment(user, assignment_id)
        if asg.status == Assignment.Status.SKIPPED:
            return asg
        if asg.status != Assignment.Status.OPEN:
            raise Conflict(f"this assignment is {asg.status}")
        _check_answerable(project, asg)
        _mark(asg, Assignment.Status.SKIPPED)
        _after_progress(project, asg.batch_id)
    return asg


def _after_progress(project: Project, batch_id: int) -> None:
    """After an answer or skip, inside its transaction (the project is held FOR SHARE).

    When the batch looks complete, the project goes to "model updating" and the loop task is
    sent (after the grace period) right here, if the project row can be upgraded to FOR UPDATE
    without waiting (waiting could deadlock with another answer holding the share lock).
    Otherwise the check runs again after commit: two concurrent last answers each see the
    other's row still open, and only a check after both commits sees the batch complete.
    """
    if project.state != Project.State.LABELING:
        return
    _complete_batch_soon(project.pk, batch_id)


def _complete_batch_soon(project_id: int, batch_id: int) -> None:
    """Start the update now if the batch is complete and the project lock is free, else after commit."""
    if not _batch_has_open_work(batch_id):
        # The lock must be held until the state change commits. Inside the caller's transaction
        # this block is a savepoint and the lock lasts until the caller commits; after the
        # one-statement answer (autocommit) it is the transaction itself. Taking the lock in a
        # block of its own let two last answers each lock, release, and start the update.
        with transaction.atomic():
            try:
                with transaction.atomic():  # savepoint: a refused lock must not undo the answer
                    locked = Project.objects.select_for_update(nowait=True).get(pk=project_id)
            except OperationalError:
                locked = None
            if locked is not None:
                _start_update(locked, QueryBatch.objects.get(pk=batch_id))
                return
    transaction.on_commit(lambda: complete_batch_if_done(batch_id=batch_id), robust=True)


def complete_batch_if_done(*, batch_id: int) -> bool:
    """Put the project in "model updating" and send the loop task once when the batch is complete.

    Idempotent: the project row is locked and its state re-checked, so concurrent callers send
    the task at most once. Returns True when this call started the update.
    """
    if _batch_has_open_work(batch_id):
        return False
    with transaction.atomic():
        project_id = QueryBatch.objects.filter(pk=batch_id).values_list("project_id", flat=True).first()
        if project_id is None:
            return False
        project = Project.objects.select_for_update().get(pk=project_id)
        batch = QueryBatch.objects.get(pk=batch_id)
        if _batch_has_open_work(batch_id):  # undone meanwhile
            return False
        return _start_update(project, batch)


def _start_update(project: Project, batch: QueryBatch) -> bool:
    """Labeling -> updating and the loop task; the caller holds the project FOR UPDATE."""
    if project.state != Project.State.LABELING or batch.closed_at is not None or batch.frozen_at is not None:
        return False
    _transition(project, Project.State.UPDATING)
    project.save(update_fields=["state", "updated_at"])
    _enqueue("process_batch", batch.pk, countdown=loop_delay_seconds())
    return True


def undo(*, user, assignment_id: int | None = None) -> Assignment:
    """Take back the user's last answer (or skip) within the undo window while the batch is open."""
    since = timezone.now() - timedelta(seconds=undo_seconds())
    if assignment_id is None:
        last = selectors.last_undoable(user, since=since)
        if last is None:
            raise Conflict(f"nothing to undo (answers can be undone for {undo_seconds():g} s)")
        assignment_id = last.pk
    with transaction.atomic():
        project, asg = _lock_assignment(user, assignment_id, exclusive=True)
        if asg.status not in (Assignment.Status.DONE, Assignment.Status.SKIPPED):
            raise Conflict("this assignment has no answer to undo")
        if asg.completed_at is None or asg.completed_at < since:
            raise Conflict(f"too late to undo (answers can be undone for {undo_seconds():g} s)")
        if asg.batch_closed or asg.batch_frozen:
            raise Conflict("too late to undo: the model is already updating with this answer")
        if asg.status == Assignment.Status.DONE:
            Annotation.objects.filter(assignment=asg).delete()
            LabelerProfile.objects.filter(user=user, labels_given__gt=0).update(labels_given=F("labels_given") - 1)
        asg.status, asg.completed_at = Assignment.Status.OPEN, None
        asg.save(update_fields=["status", "completed_at"])
        if project.state == Project.State.UPDATING:
            _transition(project, Project.State.LABELING)
            project.save(update_fields=["state", "updated_at"])
    return asg


# --------------------------------------------------------------------------------------
# The live loop
# --------------------------------------------------------------------------------------


@dataclass
class _Snapshot:
    project: Project
    batch: QueryBatch
    cfg: live.LiveConfig
    pool: selectors.PoolLabels
    batch_items: np.ndarray  # first-labeled items of this batch (answered)
    reannotated_here: list[int]  # items re-annotated in this batch (phase reannotation)
    previous_secured_accuracy: float | None
    bought: int
    eligible: list[int]
    trust: dict[int, scoring.LabelerTrust]
    # (item index, labeler id, label) of every answer not discarded by an admin (Dawid-Skene input)
    annotations: list[tuple[int, int, int]] = field(default_factory=list)
    reported_pairs: set[tuple[int, int, int]] = field(default_factory=set)  # (labeler, true, given) already flagged


@dataclass
class _Plan:
    reannotate: list[tuple[int, int]] = field(default_factory=list)  # (item index, original labeler)
    confirmations: list[int] = field(default_factory=list)  # labeler ids (one per confirmed label)
    trust: dict[int, scoring.LabelerTrust] = field(default_factory=dict)  # updated trust states
    loop_state: dict = field(default_factory=dict)
    metric: dict = field(default_factory=dict)
    next_items: list[int] = field(default_factory=list)
    stop: str = ""
    events: list[dict] = field(default_factory=list)  # trust.services.record_events rows, in order
    rounds: list[dict] = field(default_factory=list)  # resolved re-annotation rounds
    confusion: dict[int, dict] = field(default_factory=dict)  # labeler -> Dawid-Skene estimate


def _trust_of(profile: LabelerProfile) -> scoring.LabelerTrust:
    status = (scoring.Status.SUSPENDED if profile.is_suspended else
              scoring.Status.FLAGGED if profile.is_flagged else scoring.Status.ACTIVE)
    return scoring.LabelerTrust(trust=profile.trust, status=status, labels_given=profile.labels_given,
                                checked=profile.checked, disagreements=profile.disagreements, alerts=profile.alerts)


def _policy(cfg: live.LiveConfig) -> scoring.TrustPolicy:
    """The project's trust thresholds (LiveConfig) as a scoring policy."""
    return scoring.TrustPolicy(epsilon=cfg.epsilon, penalty=cfg.trust_penalty, reward=cfg.trust_reward,
                               alert_confidence=cfg.alert_confidence, flag_below=cfg.flag_below,
                               suspend_below=cfg.suspend_below)


def _event(plan: _Plan, uid: int, reason: str, before: float, state: scoring.LabelerTrust, *, item: int | None = None,
           confidence: float | None = None, original: int | None = None, consensus: int | None = None,
           note: str = "") -> None:
    plan.events.append({"labeler": uid, "reason": reason, "item_index": item, "delta": state.trust - before,
                        "trust_after": state.trust, "model_confidence": confidence, "original_label": original,
                        "consensus_label": consensus, "note": note})


def _perturbations_to_json(p: dict[int, float]) -> dict[str, float | None]:
    return {str(k): (v if math.isfinite(v) else None) for k, v in p.items()}


def _perturbations_from_json(p: dict) -> dict[int, float]:
    return {int(k): (float("inf") if v is None else float(v)) for k, v in (p or {}).items()}


def advance_loop(*, batch_id: int) -> str:
    """Process a complete batch: one loop step (see the module docstring). Idempotent.

    Returns a short description of what happened (for logs and tests).
    """
    snap = _take_snapshot(batch_id)
    if isinstance(snap, str):
        return snap
    features, features_file = feature_cache.features_for(snap.project)
    if snap.batch.phase == QueryBatch.Phase.LABELING:
        plan = _plan_after_labeling(snap, features, features_file)
    else:
        plan = _plan_after_reannotation(snap, features, features_file)
    return _apply_plan(snap, plan)


def _take_snapshot(batch_id: int) -> _Snapshot | str:
    with transaction.atomic():
        batch = QueryBatch.objects.filter(pk=batch_id).first()
        if batch is None:
            return "noop: no such batch"
        project = Project.objects.select_for_update().get(pk=batch.project_id)
        batch = QueryBatch.objects.select_for_update().get(pk=batch_id)
        if batch.closed_at is not None:
            return "noop: batch already closed"
        if project.state == Project.State.FINISHED:
            return "noop: project finished"
        if not selectors.batch_is_complete(batch):
            if project.state == Project.State.UPDATING:  # an answer was undone during the grace period
                _transition(project, Project.State.LABELING)
                project.save(update_fields=["state", "updated_at"])
            return "noop: batch not complete"
        if project.state != Project.State.UPDATING:
            _transition(project, Project.State.UPDATING)
            project.save(update_fields=["state", "updated_at"])
        if batch.frozen_at is None:
            batch.frozen_at = timezone.now()
            batch.save(update_fields=["frozen_at"])
        cfg = project.live_config
        pool = selectors.pool_labels(project)
        batch_items = np.array(sorted(Assignment.objects.filter(batch=batch, kind=Assignment.Kind.FIRST_LABEL,
                                                                status=Assignment.Status.DONE)
                                      .values_list("item__index", flat=True)), dtype=np.int64)
        reannotated = sorted(set(Assignment.objects.filter(batch=batch, kind=Assignment.Kind.REANNOTATION)
                                 .values_list("item__index", flat=True)))
        prev = IterationMetric.objects.filter(project=project, iteration=batch.iteration - 1).first()
        labelers = {int(v) for v in pool.labeler_of if v >= 0} | {lab for (_, lab, _) in pool.first_label.values()}
        for uid in labelers:
            LabelerProfile.objects.get_or_create(user_id=uid)
        trust = {p.user_id: _trust_of(p) for p in LabelerProfile.objects.filter(user_id__in=labelers)}
        return _Snapshot(project=project, batch=batch, cfg=cfg, pool=pool, batch_items=batch_items,
                         reannotated_here=reannotated,
                         previous_secured_accuracy=prev.secured_accuracy if prev else None,
                         bought=selectors.labels_bought(project), eligible=selectors.eligible_labelers(),
                         trust=trust, annotations=trust_selectors.annotation_triples(project),
                         reported_pairs=trust_selectors.reported_pairs(project))


def _previous_model(snap: _Snapshot, features: np.ndarray, standardizer):
    """F_{i-1}: saved by the previous iteration; retrained without this batch if the file is gone."""
    i = snap.batch.iteration
    if i == 0:
        return None
    model = live.load_model(feature_cache.model_path(snap.project, i - 1))
    if model is None:
        log.warning("project %s: model of iteration %s missing from the cache; retraining it", snap.project.pk, i - 1)
        labels = snap.pool.labels.copy()
        labels[snap.batch_items] = -1
        if (labels >= 0).any():
            model = live.train_model(features, labels, snap.pool.weights, snap.project.n_classes,
                                     standardizer=standardizer, seed=snap.cfg.seed + i - 1)
    return model


def _plan_after_labeling(snap: _Snapshot, features: np.ndarray, features_file) -> _Plan:
    from learner.heads import fit_standardizer

    cfg, pool, i = snap.cfg, snap.pool, snap.batch.iteration
    standardizer = fit_standardizer(features)
    previous = _previous_model(snap, features, standardizer)
    labeled_now = snap.batch_items[pool.labels[snap.batch_items] >= 0] if len(snap.batch_items) else snap.batch_items
    plan = _Plan()
    suspicious = np.empty(0, dtype=np.int64)
    if cfg.defenses_on and previous is not None:
        contra = None
        if cfg.audit_confidence is not None:
            contra = np.array([
                scoring.audit_threshold(snap.trust[int(pool.labeler_of[item])], cfg.audit_confidence,
                                        cfg.audit_confidence_proven, cfg.audit_proven_after)
                if int(pool.labeler_of[item]) in snap.trust else cfg.audit_confidence
                for item in labeled_now], dtype=float)
        confirmed, suspicious = live.audit(previous, features, labeled_now, pool.labels, cfg.audit_confidence,
                                           contradiction_confidence=contra)
        policy = _policy(cfg)
        proba = live.class_probabilities(previous, features, confirmed)
        for item in confirmed:
            uid = int(pool.labeler_of[item])
            if uid >= 0 and uid in snap.trust:
                before = snap.trust[uid].trust
                scoring.apply_confirmation(snap.trust[uid], policy)
                plan.trust[uid] = snap.trust[uid]
                if snap.trust[uid].trust != before:  # capped at 1: no change, no event
                    label = int(pool.labels[item])
                    _event(plan, uid, "confirmed", before, snap.trust[uid], item=int(item),
                           confidence=float(proba[int(item)][label]), original=label, consensus=label)
    rows, perts = live.craft(features, standardizer, previous, labeled_now, pool.labels, cfg,
                             seed=_seed(cfg, i, 3))
    live.save_artificial(feature_cache.artificial_path(snap.project, i), rows)
    artificial = live.load_artificial(feature_cache.artificial_path(snap.project, k) for k in range(i + 1))
    weights = _weights(snap, plan.trust)
    model = live.train_model(features, pool.labels, weights, snap.project.n_classes, artificial=artificial,
                             augment_weight=cfg.augment_weight, standardizer=standardizer, seed=cfg.seed + i)
    s_acc = live.accuracy_on(model, features, pool.secured_labels, pool.secured)
    triggered = cfg.defenses_on and live.performance_dropped(s_acc, snap.previous_secured_accuracy, cfg.epsilon)
    todo = set(int(x) for x in suspicious)
    if triggered:
        todo |= {int(x) for x in labeled_now if pool.labeler_of[x] >= 0}
    plan.loop_state = {"secured_accuracy_before_check": s_acc, "check_triggered": bool(triggered),
                       "audited": int(len(suspicious)), "perturbations": _perturbations_to_json(perts),
                       "n_artificial": int(sum(len(r) for k, r in artificial.items() if pool.labels[k] >= 0))}
    if cfg.defenses_on and todo:
        others_exist = lambda orig: any(u != orig for u in snap.eligible)  # noqa: E731
        plan.reannotate = [(item, int(pool.labeler_of[item])) for item in sorted(todo)
                           if pool.labeler_of[item] >= 0 and others_exist(int(pool.labeler_of[item]))]
        if cfg.budget is not None:  # re-annotations are bought too: h labels per item, never past the budget
            plan.reannotate = plan.reannotate[: max(cfg.budget - snap.bought, 0) // cfg.h]
        if plan.reannotate:
            return plan
    _plan_finish(snap, plan, features, features_file, model, s_acc, perts, artificial)
    return plan


def _weights(snap: _Snapshot, updated: dict[int, scoring.LabelerTrust]) -> np.ndarray:
    """Label weights with this step's trust changes applied (verified labels keep weight 1)."""
    w = snap.pool.weights.copy()
    for uid, state in updated.items():
        w[snap.pool.labeler_of == uid] = state.weight
    return w


def _plan_after_reannotation(snap: _Snapshot, features: np.ndarray, features_file) -> _Plan:
    from learner.heads import fit_standardizer

    cfg, pool, i = snap.cfg, snap.pool, snap.batch.iteration
    standardizer = fit_standardizer(features)
    previous = _previous_model(snap, features, standardizer)
    plan = _Plan()
    policy = _policy(cfg)
    proba = live.class_probabilities(previous, features, snap.reannotated_here)
    discarded = 0
    for item in snap.reannotated_here:
        if item not in pool.first_label or item not in pool.reannotations:
            continue
        original, uid, _ = pool.first_label[item]
        outcome, keep = scoring.resolve(original, pool.reannotations[item])
        discarded += int(keep is None)
        p = proba.get(item)
        p_orig = float(p[original]) if p is not None else None
        p_cons = float(p[keep]) if p is not None and keep is not None else None
        plan.rounds.append({"item_index": int(item), "outcome": outcome.value, "consensus_label": keep,
                            "prob_original": p_orig, "prob_consensus": p_cons})
        if uid in snap.trust and p is not None:
            state = snap.trust[uid]
            before, alerts = state.trust, state.alerts
            scoring.apply_outcome(state, outcome, prob_original=p_orig,
                                  prob_consensus=p_cons if p_cons is not None else 0.0, policy=policy,
                                  original_label=original, consensus_label=keep)
            plan.trust[uid] = state
            if outcome is not scoring.Outcome.INCONSISTENT:  # nobody is blamed for an ambiguous item
                reason = ("agreed" if outcome is scoring.Outcome.AGREED else
                          "alert" if state.alerts > alerts else "disagreement")
                _event(plan, uid, reason, before, state, item=int(item), confidence=p_cons,
                       original=int(original), consensus=keep)
    # suspended labelers' unverified labels leave D (their items return to the pool)
    labels = pool.labels.copy()
    for uid, state in plan.trust.items():
        if state.status is scoring.Status.SUSPENDED:
            labels[pool.labeler_of == uid] = -1
    pool.labels = labels
    artificial = live.load_artificial(feature_cache.artificial_path(snap.project, k) for k in range(i + 1))
    model = live.train_model(features, labels, _weights(snap, plan.trust), snap.project.n_classes,
                             artificial=artificial, augment_weight=cfg.augment_weight, standardizer=standardizer,
                             seed=cfg.seed + i)
    s_acc = live.accuracy_on(model, features, pool.secured_labels, pool.secured)
    state = dict(snap.batch.loop_state or {})
    state.update({"reannotated": len(snap.reannotated_here), "discarded": discarded,
                  "n_artificial": int(sum(len(r) for k, r in artificial.items() if labels[k] >= 0))})
    plan.loop_state = state
    _plan_finish(snap, plan, features, features_file, model, s_acc,
                 _perturbations_from_json(state.get("perturbations")), artificial)
    return plan


def _plan_finish(snap: _Snapshot, plan: _Plan, features, features_file, model, s_acc, perts, artificial) -> None:
    """Save F_i, compute the metric, apply the stop rules and query the next batch."""
    cfg, pool, i = snap.cfg, snap.pool, snap.batch.iteration
    live.save_model(feature_cache.model_path(snap.project, i), model)
    _plan_confusion_check(snap, plan, features, model)
    truth = (pool.ground_truth >= 0) & ~pool.secured_items
    min_pert = live.min_perturbation(perts)
    plan.metric = {
        "labels_bought": snap.bought, "n_labeled": int((pool.labels >= 0).sum()),
        "n_artificial": int(plan.loop_state.get("n_artificial", 0)),
        "secured_accuracy": s_acc, "ground_truth_accuracy": live.accuracy_on(model, features, pool.ground_truth, truth),
        "check_triggered": bool(plan.loop_state.get("check_triggered", False)),
        "reannotated": int(plan.loop_state.get("reannotated", 0)),
        "discarded": int(plan.loop_state.get("discarded", 0)), "min_perturbation": min_pert,
    }
    budget_left = (cfg.budget - snap.bought) if cfg.budget is not None else None
    if budget_left is not None and budget_left <= 0:
        plan.stop = "budget"
    elif cfg.target is not None and s_acc is not None and s_acc >= cfg.target - 1e-12:
        plan.stop = "target"
    elif cfg.tau is not None and min_pert is not None and min_pert > cfg.tau:
        plan.stop = "tau"
    if plan.stop:
        return
    k = cfg.batch_size if budget_left is None else min(cfg.batch_size, budget_left)
    blocked = (pool.labels >= 0) | pool.secured_items | pool.discarded
    chosen = live.select_batch(cfg, features, blocked, pool.labels, model, k, perturbations=perts,
                               seed=_seed(cfg, i + 1, 4),
                               cache_key=str(features_file))
    plan.next_items = [int(x) for x in chosen]
    if not plan.next_items:
        plan.stop = "pool exhausted"


def _plan_confusion_check(snap: _Snapshot, plan: _Plan, features: np.ndarray, model) -> None:
    """Dawid-Skene confusion matrices of every labeler (the model's predictions join as one more
    labeler); a systematic (true, given) mapping flags the labeler even when the secured-set check
    stayed quiet. Each pair is reported once per labeler and project (an admin who reinstates the
    labeler has seen it)."""
    from trust import confusion

    cfg = snap.cfg
    if cfg.confusion_min_rate is None or not cfg.defenses_on or not snap.annotations or model is None:
        return
    items = [a[0] for a in snap.annotations]
    workers = [a[1] for a in snap.annotations]
    labels = [a[2] for a in snap.annotations]
    seen = np.array(sorted(set(items)), dtype=np.int64)
    predicted = model.predict(features[seen])
    ds = confusion.dawid_skene(items + seen.tolist(), workers + ["model"] * len(seen),
                               labels + [int(x) for x in predicted], snap.project.n_classes)
    n_given = Counter(workers)
    for uid in ds.workers:
        if uid == "model":
            continue
        conf, counts = ds.of(uid)
        pairs = confusion.systematic_pairs(conf, counts, min_rate=cfg.confusion_min_rate,
                                           min_count=cfg.confusion_min_count)
        plan.confusion[int(uid)] = {"matrix": conf.round(4).tolist(), "counts": counts.round(3).tolist(),
                                    "n_labels": int(n_given[uid]), "pairs": [list(p) for p in pairs]}
        state = plan.trust.get(uid) or snap.trust.get(uid)
        new = [p for p in pairs if (int(uid), *p) not in snap.reported_pairs]
        if state is None or not new or state.status is scoring.Status.SUSPENDED:
            continue
        true_c, given_c = new[0]
        before = state.trust
        state.status = scoring.Status.FLAGGED
        plan.trust[int(uid)] = state
        names = snap.project.classes
        _event(plan, int(uid), "systematic_confusion", before, state, original=int(given_c), consensus=int(true_c),
               confidence=float(conf[true_c, given_c]),
               note="; ".join(f"{names[a]} -> {names[b]}: rate {conf[a, b]:.2f} over {counts[a, b]:.1f} labels"
                              for a, b in new))


def record_loop_error(*, batch_id: int, error: str) -> None:
    """Keep the loop task's last failure on the project (shown on the staff page)."""
    Project.objects.filter(batches__pk=batch_id).update(loop_error=error[:5000])


def _apply_plan(snap: _Snapshot, plan: _Plan) -> str:
    with transaction.atomic():
        project = Project.objects.select_for_update().get(pk=snap.project.pk)
        project.loop_error = ""
        batch = QueryBatch.objects.select_for_update().get(pk=snap.batch.pk)
        if batch.closed_at is not None or batch.phase != snap.batch.phase:
            return "noop: processed meanwhile"
        if not selectors.batch_is_complete(batch):
            return "noop: batch changed meanwhile"
        newly_blocked = _save_trust(plan.trust, project=project, events=plan.events)
        for uid in sorted(newly_blocked):  # their open work elsewhere goes to others
            transaction.on_commit(lambda uid=uid: _release_after_commit(uid))
        if plan.rounds:
            trust_services.resolve_rounds(batch=batch, rounds=plan.rounds)
        if plan.confusion:
            trust_services.save_confusion(project=project, estimates=plan.confusion)
        if plan.reannotate:
            created = _open_reannotation(batch, plan.reannotate, snap.cfg)
            batch.phase, batch.loop_state = QueryBatch.Phase.REANNOTATION, plan.loop_state
            batch.frozen_at = None  # its new assignments may be answered (and undone) again
            batch.save(update_fields=["phase", "loop_state", "frozen_at"])
            _transition(project, Project.State.LABELING)
            project.save(update_fields=["state", "loop_error", "updated_at"])
            if not created:  # nobody could take them: go on at once
                _enqueue("process_batch", batch.pk)
            return f"reannotation: {created} assignments for {len(plan.reannotate)} items"
        IterationMetric.objects.get_or_create(project=project, iteration=batch.iteration,
                                              defaults={**plan.metric, "started_at": batch.opened_at})
        batch.phase, batch.closed_at, batch.loop_state = QueryBatch.Phase.CLOSED, timezone.now(), plan.loop_state
        batch.save(update_fields=["phase", "closed_at", "loop_state"])
        if plan.stop:
            _transition(project, Project.State.FINISHED)
            project.stop_reason = plan.stop
            project.save(update_fields=["state", "stop_reason", "loop_error", "updated_at"])
            return f"finished: {plan.stop}"
        nxt = QueryBatch.objects.create(project=project, iteration=batch.iteration + 1, strategy=snap.cfg.strategy)
        items = {i.index: i for i in project.items.filter(index__in=plan.next_items)}
        _assign_first_labels(nxt, [items[k] for k in plan.next_items], seed=snap.cfg.seed)
        project.iteration = nxt.iteration
        _transition(project, Project.State.LABELING)
        project.save(update_fields=["state", "iteration", "loop_error", "updated_at"])
        return f"opened batch {nxt.iteration} with {len(plan.next_items)} items"


def _release_after_commit(uid: int) -> None:
    from django.contrib.auth import get_user_model

    user = get_user_model().objects.filter(pk=uid).first()
    if user is not None:
        release_open_work(user=user)


def _save_trust(states: dict[int, scoring.LabelerTrust], *, project: Project | None = None,
                events: list[dict] | None = None) -> set[int]:
    """Write trust changes and their history; returns the labelers flagged or suspended just now.

    ``events`` (from the plan) are recorded as TrustEvents in order, followed by one "flagged" /
    "suspended" event per labeler whose state changed here.
    """
    newly_blocked = set()
    rows = list(events or [])
    for uid, st in sorted(states.items()):
        profile, _ = LabelerProfile.objects.select_for_update().get_or_create(user_id=uid)
        was_blocked = profile.is_suspended or profile.is_flagged
        was_suspended, was_flagged = profile.is_suspended, profile.is_flagged
        profile.trust = min(max(float(st.trust), 0.0), 1.0)
        profile.checked, profile.disagreements, profile.alerts = st.checked, st.disagreements, st.alerts
        profile.is_suspended = profile.is_suspended or st.status is scoring.Status.SUSPENDED
        profile.is_flagged = profile.is_flagged or st.status is scoring.Status.FLAGGED
        profile.save()
        if profile.is_suspended and not was_suspended:
            rows.append({"labeler": uid, "reason": "suspended", "delta": 0.0, "trust_after": profile.trust,
                         "note": f"trust {profile.trust:.3f}" + (" (below the suspension threshold)"
                                                                  if st.trust < (project.live_config.suspend_below
                                                                                 if project else 0.2) else "")})
        elif profile.is_flagged and not was_flagged and not profile.is_suspended:
            rows.append({"labeler": uid, "reason": "flagged", "delta": 0.0, "trust_after": profile.trust,
                         "note": f"trust {profile.trust:.3f}; open work handed to others until reviewed"})
        if not was_blocked and (profile.is_suspended or profile.is_flagged):
            newly_blocked.add(uid)
    if rows:
        trust_services.record_events(project=project, events=rows)
    return newly_blocked


def _open_reannotation(batch: QueryBatch, todo: list[tuple[int, int]], cfg: live.LiveConfig) -> int:
    """h distinct labelers per item, never its original labeler (the DB refuses that too)."""
    eligible = selectors.eligible_labelers()
    load = selectors.open_load(batch)
    items = {i.index: i for i in batch.project.items.filter(index__in=[k for k, _ in todo])}
    created = 0
    for index, original in todo:
        voters = live.choose_distinct(cfg.h, eligible, exclude={original}, load=load, seed=cfg.seed + index)
        made = []
        for voter in voters:
            made.append(Assignment.objects.create(item=items[index], batch=batch, labeler_id=voter,
                                                  original_labeler_id=original, kind=Assignment.Kind.REANNOTATION))
            load[voter] = load.get(voter, 0) + 1
            created += 1
        trust_services.open_round(batch=batch, item=items[index], original_labeler_id=original, assignments=made)
    return created
