"""The annotators' side of the labeling app: next, answer, skip, undo, and completing a batch.

The hot path: a first answer to an open assignment is one SQL statement on PostgreSQL
(:func:`_answer_in_one_statement`); everything else takes the general path, which says exactly
why an answer is refused. Locking follows :mod:`labeling.services`' rule: answers and skips take
the project ``FOR SHARE`` and their own assignment row; undo and batch completion take it
``FOR UPDATE``.
"""
from __future__ import annotations

import functools
import math
from datetime import timedelta

from django.db import IntegrityError, OperationalError, connection, transaction
from django.db.models import F
from django.utils import timezone

from . import queue, selectors, workflow
from .db import instances, prepared_cursor
from .models import TAKES_ANSWERS, Annotation, Assignment, LabelerProfile, Project, QueryBatch
from .workflow import Conflict, InvalidInput, NotFound, loop_delay_seconds, undo_seconds


# --------------------------------------------------------------------------------------
# Annotators: next, answer, skip, undo
# --------------------------------------------------------------------------------------


def next_assignment(*, user, project: Project | None = None) -> Assignment | None:
    """The item the user should label now: their current claim, or a new one from the shared queue."""
    return queue.next_work(user=user, project=project).current


@functools.cache
def _answer_sql(vendor: str) -> dict[str, str]:
    """Hand-written statements of the answer path (one set per database vendor).

    Django compiles every ORM query anew, about 1 ms of CPU for a join; these run on every
    answer, so they are written once here, with the INSERT and the two plain UPDATEs of every
    answer; the other writes stay in the ORM.
    """
    q = connection.ops.quote_name
    p, a, b, n = (q(m._meta.db_table) for m in (Project, Assignment, QueryBatch, Annotation))
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
        "open_left": f"SELECT EXISTS(SELECT 1 FROM {a} WHERE batch_id = %s AND status IN (%s, %s))",  # open, queued
        "insert": f"INSERT INTO {n} (assignment_id, label, seconds, created_at) VALUES (%s, %s, %s, %s) RETURNING id",
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
    with connection.cursor() as cursor:  # not Model.objects.raw: see labeling.db.instances
        cursor.execute(sql["project"] + sql["exclusive" if exclusive else "share"], [assignment_id, user.pk])
        project = next(iter(instances(Project, cursor)), None)
        if project is None:
            raise NotFound(_not_yours(assignment_id))
        cursor.execute(sql["assignment"], [assignment_id, user.pk])
        asg = next(iter(instances(Assignment, cursor)), None)
    if asg is None or asg.batch_project_id != project.pk:  # handed to someone else meanwhile
        raise NotFound(_not_yours(assignment_id))
    return project, asg


def _not_yours(assignment_id: int) -> str:
    """Why an answer to ``assignment_id`` is refused (error path only: one more query)."""
    if Assignment.objects.filter(pk=assignment_id).exists():
        from .queue import lease_seconds

        lease = lease_seconds()
        span = f"{lease:.0f} s" if lease < 120 else f"{lease / 60:.0f} min"
        return (f"this image is not (or no longer) yours to answer: a claim lasts {span} without an answer, "
                "then the image goes back to the queue for someone else; your answer was not recorded")
    return "no such assignment for you"


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
    WHERE a.id = %(aid)s AND a.labeler_id + 0 = %(uid)s AND a.status = %(open)s
      AND prj.state IN (%(labeling)s, %(updating)s)
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
    WHERE o.status IN (%(open)s, %(queued)s) AND o.id <> asg.id LIMIT 1 FOR SHARE OF o SKIP LOCKED
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
    if type(label) is not int or not 0 <= label < 2**15 or not 0 < assignment_id < 2**63:  # label: smallint
        return None
    now = timezone.now()
    params = {"aid": assignment_id, "uid": user.pk, "label": label, "seconds": seconds, "now": now,
              "open": Assignment.Status.OPEN.value, "queued": Assignment.Status.QUEUED.value,
              "done": Assignment.Status.DONE.value, "labeling": TAKES_ANSWERS[0], "updating": TAKES_ANSWERS[1]}
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
    """Whether an assignment of the batch is claimed or waiting in the queue (a cheap EXISTS)."""
    with connection.cursor() as cursor:
        cursor.execute(_answer_sql(connection.vendor)["open_left"],
                       [batch_id, Assignment.Status.OPEN.value, Assignment.Status.QUEUED.value])
        return bool(cursor.fetchone()[0])


def _check_answerable(project: Project, asg: Assignment) -> None:
    if asg.batch_closed or asg.batch_frozen:
        raise Conflict("this batch is closed: the model is updating with it")
    if project.state not in TAKES_ANSWERS:  # "updating": with pipeline a younger batch is labeled meanwhile
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
    raise Conflict("this assignment is already answered with another label; undo that answer first to change it")


def _insert_annotation(assignment_id: int, label: int, seconds: float | None) -> Annotation:
    """``Annotation.objects.create(...)`` as one hand-written INSERT (the ORM compiles it anew each time)."""
    now = timezone.now()
    with connection.cursor() as cursor:
        cursor.execute(_answer_sql(connection.vendor)["insert"],
                       [assignment_id, label, seconds, connection.ops.adapt_datetimefield_value(now)])
        annotation_id = cursor.fetchone()[0]
    annotation = Annotation(id=annotation_id, assignment_id=assignment_id, label=label, seconds=seconds,
                            created_at=now)
    annotation._state.adding, annotation._state.db = False, connection.alias
    return annotation


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
        LabelerProfile.objects.get_or_create(user=user)


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
            annotation = _insert_annotation(asg.pk, parsed, seconds)
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
    """Skip an item: it goes back to the queue for someone else. Skipping twice is harmless.

    The skipped assignment stays as a record (``skipped``, with the user's name, so the queue never
    hands them that item again in this batch) and a new queued slot takes its place
    (``requeued_as``), unless no other eligible member could label it: then the item leaves the
    batch (it returns to the pool, where the strategy may pick it again).
    """
    with transaction.atomic():
        project, asg = _lock_assignment(user, assignment_id)
        if asg.status == Assignment.Status.SKIPPED:
            return asg
        if asg.status != Assignment.Status.OPEN:
            raise Conflict(f"this assignment is {asg.status}")
        _check_answerable(project, asg)
        asg.status, asg.completed_at, asg.lease_until, asg.prefetched = (
            Assignment.Status.SKIPPED, timezone.now(), None, False)
        asg.save(update_fields=["status", "completed_at", "lease_until", "prefetched"])
        if queue.someone_else_may_take(asg, user, project):
            asg.requeued_as = queue.requeue(asg)
            asg.save(update_fields=["requeued_as"])
        _after_progress(project, asg.batch_id)
    return asg


def retire_stale_skips(*, project: Project) -> int:
    """Skipped first labels that waited a whole lease in the queue leave their batch (the items
    return to the pool, where the strategy may pick them again); returns how many.

    A skip puts the item back for someone else (:func:`skip_assignment`). A copy still queued a
    lease later, that no member working now may take (:func:`labeling.queue.someone_working_may_take`:
    those who could are absent), would stall the batch for whoever is working; it leaves instead
    (the absent-annotator rule of a claim, applied to a skip). A copy someone working may take
    keeps waiting for them, however old (in a long batch it queues behind older slots).
    Re-annotation slots keep waiting: a check of someone's label needs another person. Called when
    someone asks for work and gets none (one indexed query on that path while nothing is stale).
    """
    cutoff = timezone.now() - timedelta(seconds=queue.lease_seconds())
    stale = Assignment.objects.filter(
        batch__project_id=project.pk, batch__closed_at__isnull=True, batch__frozen_at__isnull=True,
        status=Assignment.Status.QUEUED, kind=Assignment.Kind.FIRST_LABEL, requeued_from__isnull=False,
        created_at__lt=cutoff)
    if not stale.exists():
        return 0
    with transaction.atomic():
        locked = Project.objects.select_for_update().get(pk=project.pk)  # the locking rule: project first
        if locked.state != Project.State.LABELING or locked.is_paused:
            return 0
        rows = [(a.pk, a.batch_id) for a in stale.select_for_update(of=("self",))
                if not queue.someone_working_may_take(a, locked)]
        if not rows:
            return 0
        _, deleted = Assignment.objects.filter(pk__in=[pk for pk, _ in rows], status=Assignment.Status.QUEUED).delete()
        retired = deleted.get(Assignment._meta.label, 0)
        for batch_id in sorted({b for _, b in rows}):
            _after_progress(locked, batch_id)
    return retired


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
    """Labeling -> updating and the loop task; the caller holds the project FOR UPDATE.

    Only the oldest open batch is processed: with ``pipeline`` the younger batch may be complete
    first (people label it while the older one is re-annotated); the loop step that closes the
    older batch sends its task then (:mod:`labeling.loop_step`)."""
    if project.state != Project.State.LABELING or batch.closed_at is not None or batch.frozen_at is not None:
        return False
    if QueryBatch.objects.filter(project_id=project.pk, closed_at__isnull=True, iteration__lt=batch.iteration).exists():
        return False
    workflow.transition(project, Project.State.UPDATING)
    project.save(update_fields=["state", "updated_at"])
    workflow.enqueue("process_batch", batch.pk, countdown=loop_delay_seconds())
    return True


def undo(*, user, assignment_id: int | None = None) -> Assignment:
    """Take back the user's last answer (or skip) within the undo window while the batch is open.

    The item is theirs again (a fresh claim). Undoing a skip takes its item back from the queue,
    unless someone else claimed it meanwhile (then the skip stands: 409).
    """
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
        elif asg.requeued_as_id is not None:
            copy = Assignment.objects.select_for_update().filter(pk=asg.requeued_as_id).first()
            if copy is not None and copy.status != Assignment.Status.QUEUED:
                raise Conflict("too late to undo the skip: someone else is already labeling this image")
            if copy is not None:
                copy.delete()
        asg.status, asg.completed_at, asg.requeued_as = Assignment.Status.OPEN, None, None
        asg.lease_until, asg.prefetched = timezone.now() + timedelta(seconds=queue.lease_seconds()), False
        asg.save(update_fields=["status", "completed_at", "requeued_as", "lease_until", "prefetched"])
        oldest = QueryBatch.objects.filter(project_id=project.pk, closed_at__isnull=True).order_by("iteration").first()
        if project.state == Project.State.UPDATING and oldest is not None and oldest.pk == asg.batch_id:
            # the batch waiting for the loop task is incomplete again (an answer to a younger
            # batch, labeled while the model updates with pipeline, changes nothing)
            workflow.transition(project, Project.State.LABELING)
            project.save(update_fields=["state", "updated_at"])
    return asg
