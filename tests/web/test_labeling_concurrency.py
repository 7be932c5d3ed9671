"""Concurrent answers under PostgreSQL's real row locks (skipped on SQLite, which serialises writers).

Answers take the project row FOR SHARE and their own assignment FOR NO KEY UPDATE, so they do
not wait for each other; the batch-completion step must still send the loop task exactly once,
and the loop task's FOR UPDATE on the project must still keep answers out.
"""
from __future__ import annotations

import threading
import time
from datetime import timedelta

import pytest
from django.db import connection, connections
from django.utils import timezone

from labeling import answering, services, workflow
from labeling.models import Annotation, Assignment, Project, QueryBatch
from tests.web.labeling_support import annotators, digits_project, labeling_dirs  # noqa: F401

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def pg(db):
    if connection.vendor != "postgresql":
        pytest.skip("row-lock concurrency needs PostgreSQL (SQLite serialises writers)")


@pytest.fixture
def sent(monkeypatch):
    """Tasks the services send (instead of a broker)."""
    out = []
    monkeypatch.setattr(workflow, "enqueue", lambda name, *args, countdown=None: out.append((name, args)))
    return out


def run_threads(*targets, timeout=30):
    """Run each target in its own thread (own DB connection); return their results or exceptions."""
    results = [None] * len(targets)

    def wrap(i, fn):
        try:
            results[i] = fn()
        except Exception as exc:  # reported to the test
            results[i] = exc
        finally:
            connections.close_all()

    threads = [threading.Thread(target=wrap, args=(i, fn)) for i, fn in enumerate(targets)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout)
        assert not t.is_alive(), "a thread hung (lock wait or deadlock)"
    return results


def meet_on_first_call(fn, barrier: threading.Barrier, timeout: float):
    """``fn`` whose first call in each thread waits (at most ``timeout``) for the other threads."""
    first = threading.local()

    def wrapped(*args):
        if not getattr(first, "done", False):
            first.done = True
            try:
                barrier.wait(timeout=timeout)
            except threading.BrokenBarrierError:
                pass
        return fn(*args)

    return wrapped


def claim_all(project: Project) -> None:
    """Every waiting item of the open batch claimed by the members in turn (one UPDATE each: the
    races here are the answers', the queue's own are in test_races.py and test_queue.py)."""
    from labeling import selectors

    members = selectors.member_ids(project)
    batch = QueryBatch.objects.get(project=project, closed_at__isnull=True)
    for k, pk in enumerate(Assignment.objects.filter(batch=batch, status="queued").order_by("id")
                           .values_list("pk", flat=True)):
        Assignment.objects.filter(pk=pk).update(labeler_id=members[k % len(members)], status="open",
                                                lease_until=timezone.now() + timedelta(hours=1))


def answer_all_but(project: Project, keep: int) -> list[Assignment]:
    """Answer every item of the open batch (all claimed first) except the last ``keep``; return those."""
    claim_all(project)
    batch = QueryBatch.objects.get(project=project, closed_at__isnull=True)
    todo = list(Assignment.objects.filter(batch=batch, status="open").select_related("labeler").order_by("id"))
    assert len(todo) > keep
    for asg in todo[:-keep]:
        answering.submit_annotation(user=asg.labeler, assignment_id=asg.pk, label=0)
    return todo[-keep:]


def test_two_concurrent_last_answers_send_the_loop_task_exactly_once(pg, labeling_dirs, annotators, sent,
                                                                       monkeypatch):
    project = digits_project()
    last = answer_all_but(project, 2)
    project.refresh_from_db()
    assert project.state == Project.State.LABELING and sent == [("prepare_features", (project.pk,))]

    # Both answers reach their completion check after writing their own row and before either
    # commits: each sees the other's assignment still open. Only the after-commit re-check can
    # see the batch complete.
    # (PostgreSQL's one-statement answer runs the check only when it saw no other open work; an
    # answer that ran strictly before the other one skips it, and the barrier times out.)
    monkeypatch.setattr(answering, "_batch_has_open_work",
                        meet_on_first_call(answering._batch_has_open_work, threading.Barrier(2), timeout=3))
    results = run_threads(*(lambda a=a: answering.submit_annotation(user=a.labeler, assignment_id=a.pk, label=1)
                            for a in last))
    assert all(isinstance(r, tuple) and r[1] is True for r in results), results
    project.refresh_from_db()
    batch = last[0].batch
    assert project.state == Project.State.UPDATING
    assert sent[1:] == [("process_batch", (batch.pk,))]
    assert not Assignment.objects.filter(batch=batch, status__in=["open", "queued"]).exists()


def test_the_completion_lock_is_held_until_the_update_is_saved(pg, labeling_dirs, annotators, sent, monkeypatch):
    """The completion step that follows a one-statement answer runs in autocommit. Two of them
    at once, for a complete batch, must start the update once: each must hold the project's row
    lock until the new state is saved, not lock, let go and then start the update on a stale
    row. Both are held inside the update step at once if they can get there together."""
    project = digits_project()
    last = answer_all_but(project, 2)
    batch = last[0].batch
    # the last two answers are in (written directly: their own completion steps are not run)
    Assignment.objects.filter(pk__in=[a.pk for a in last]).update(status=Assignment.Status.DONE)
    original_start = answering._start_update
    both_starting = threading.Barrier(2)

    def start_together(project_row, batch_row):
        try:
            both_starting.wait(timeout=2)  # with the lock held, the other thread cannot arrive
        except threading.BrokenBarrierError:
            pass
        return original_start(project_row, batch_row)

    monkeypatch.setattr(answering, "_start_update", start_together)
    results = run_threads(*(lambda: answering._complete_batch_soon(project.pk, batch.pk) for _ in range(2)))
    assert results == [None, None], results
    project.refresh_from_db()
    assert project.state == Project.State.UPDATING
    assert sent[1:] == [("process_batch", (batch.pk,))]


def test_a_double_submit_of_the_last_answer_neither_deadlocks_nor_duplicates(pg, labeling_dirs, annotators, sent):
    project = digits_project()
    (asg,) = answer_all_but(project, 1)
    barrier = threading.Barrier(2, timeout=20)

    def submit():
        barrier.wait()
        return answering.submit_annotation(user=asg.labeler, assignment_id=asg.pk, label=2)

    results = run_threads(submit, submit)
    assert all(isinstance(r, tuple) for r in results), results
    assert sorted(created for _, created in results) == [False, True]
    assert Annotation.objects.filter(assignment=asg).count() == 1
    assert [s for s in sent if s[0] == "process_batch"] == [("process_batch", (asg.batch_id,))]


def test_the_loop_tasks_project_lock_keeps_answers_out_and_they_see_the_freeze(pg, labeling_dirs, annotators, sent):
    """An answer arriving while the loop task holds the project FOR UPDATE waits, then sees the frozen batch."""
    project = digits_project()
    claim_all(project)
    asg = Assignment.objects.filter(batch__project=project, status="open").select_related("labeler").first()
    locked = threading.Event()
    release = threading.Event()

    def loop_task():
        from django.db import transaction

        with transaction.atomic():
            Project.objects.select_for_update().get(pk=project.pk)
            locked.set()
            assert release.wait(20)
            QueryBatch.objects.filter(pk=asg.batch_id).update(frozen_at=timezone.now())
        return "frozen"

    def answer():
        assert locked.wait(20)
        t0 = time.monotonic()
        try:
            answering.submit_annotation(user=asg.labeler, assignment_id=asg.pk, label=0)
        except workflow.Conflict as exc:
            return time.monotonic() - t0, exc.message
        return time.monotonic() - t0, "accepted"

    def release_later():
        assert locked.wait(20)
        time.sleep(0.5)  # the answer is waiting on the share lock meanwhile
        release.set()

    results = run_threads(loop_task, answer, release_later)
    waited, outcome = results[1]
    assert results[0] == "frozen"
    assert waited >= 0.4 and "closed" in outcome
    assert not Annotation.objects.filter(assignment=asg).exists()


def test_a_first_answer_is_one_statement_that_writes_what_the_general_path_writes(pg, labeling_dirs, annotators,
                                                                                   sent):
    from django.test.utils import CaptureQueriesContext

    from labeling.models import LabelerProfile

    project = digits_project()
    claim_all(project)
    fast = Assignment.objects.filter(batch__project=project, status="open").select_related("labeler").first()
    general = (Assignment.objects.filter(batch__project=project, status="open").exclude(labeler=fast.labeler)
               .select_related("labeler").first())
    # The general path (taken by a label sent as a string, which the one statement leaves to it)
    # is the reference.
    before = {u: LabelerProfile.objects.filter(user=u).values_list("labels_given", flat=True).first() or 0
              for u in (fast.labeler, general.labeler)}  # no profile yet: the first answer makes it
    ref, created_ref = answering.submit_annotation(user=general.labeler, assignment_id=general.pk, label="1",
                                                  seconds=0.25)
    ann, created = answering.submit_annotation(user=fast.labeler, assignment_id=fast.pk, label=1, seconds=0.25)
    assert created and created_ref
    # Once the labeler has a profile (made by their first answer), an answer is one statement.
    nxt = Assignment.objects.filter(batch__project=project, status="open", labeler=fast.labeler).first()
    with CaptureQueriesContext(connection) as ctx:
        assert answering.submit_annotation(user=fast.labeler, assignment_id=nxt.pk, label=0)[1] is True
    assert len(ctx.captured_queries) == 1 and ctx.captured_queries[0]["sql"].lstrip().startswith("WITH prj")
    before[fast.labeler] += 1  # that second answer counts too
    for a, answer in ((fast, ann), (general, ref)):
        a.refresh_from_db()
        stored = Annotation.objects.get(assignment=a)
        assert (stored.pk, stored.label, stored.seconds) == (answer.pk, 1, 0.25)
        assert a.status == "done" and a.completed_at is not None
        assert LabelerProfile.objects.get(user=a.labeler).labels_given == before[a.labeler] + 1
    assert abs((Annotation.objects.get(pk=ann.pk).created_at - ann.created_at).total_seconds()) < 1e-3
    # Resending is harmless, another label is a conflict, and someone else's assignment is not found.
    assert answering.submit_annotation(user=fast.labeler, assignment_id=fast.pk, label=1)[1] is False
    with pytest.raises(workflow.Conflict):
        answering.submit_annotation(user=fast.labeler, assignment_id=fast.pk, label=2)
    other = Assignment.objects.filter(batch__project=project, status="open").exclude(labeler=fast.labeler).first()
    with pytest.raises(workflow.NotFound):
        answering.submit_annotation(user=fast.labeler, assignment_id=other.pk, label=0)
    with pytest.raises(workflow.InvalidInput):
        answering.submit_annotation(user=other.labeler, assignment_id=other.pk, label=project.n_classes)
    assert Annotation.objects.filter(assignment=other).count() == 0


def _prepared_statements() -> list[str]:
    with connection.cursor() as cursor:
        cursor.execute("SELECT statement FROM pg_prepared_statements")
        return [row[0] for row in cursor.fetchall()]


def test_hot_path_statements_are_prepared_on_the_server(pg, labeling_dirs, annotators):
    """The token lookup and the one-statement answer are really PREPAREd (a plan kept for the
    connection); Django's own queries are not. Django connects with prepare_threshold=None,
    under which psycopg silently ignores prepare=True: this caught that."""
    from rest_framework.authtoken.models import Token
    from rest_framework.test import APIClient

    project = digits_project()
    claim_all(project)
    ann = annotators[0]
    asg = Assignment.objects.filter(batch__project=project, labeler=ann, status=Assignment.Status.OPEN).first()
    assert asg is not None
    c = APIClient()
    c.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=ann).key}")
    for _ in range(2):  # a second request reuses the plan: still one prepared statement each
        r = c.post(f"/api/labeling/assignments/{asg.pk}/annotation/", {"label": 1}, format="json")
        assert r.status_code in (200, 201), r.content
    statements = _prepared_statements()
    assert sum("authtoken_token" in s for s in statements) == 1, statements
    assert sum("WITH prj AS MATERIALIZED" in s for s in statements) == 1, statements
    assert len(statements) == 2, statements  # nothing else (Django's own queries) was prepared
