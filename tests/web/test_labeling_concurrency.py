"""Concurrent answers under PostgreSQL's real row locks (skipped on SQLite, which serialises writers).

Answers take the project row FOR SHARE and their own assignment FOR NO KEY UPDATE, so they do
not wait for each other; the batch-completion step must still send the loop task exactly once,
and the loop task's FOR UPDATE on the project must still keep answers out.
"""
from __future__ import annotations

import threading
import time

import pytest
from django.db import connection, connections
from django.utils import timezone

from labeling import services
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
    monkeypatch.setattr(services, "_enqueue", lambda name, *args, countdown=None: out.append((name, args)))
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


def answer_all_but(project: Project, keep: int) -> list[Assignment]:
    """Answer every open assignment of the open batch except the last ``keep``; return those."""
    batch = QueryBatch.objects.get(project=project, closed_at__isnull=True)
    todo = list(Assignment.objects.filter(batch=batch, status="open").select_related("labeler").order_by("id"))
    assert len(todo) > keep
    for asg in todo[:-keep]:
        services.submit_annotation(user=asg.labeler, assignment_id=asg.pk, label=0)
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
    barrier = threading.Barrier(2, timeout=20)
    original = services._batch_has_open_work
    first_call = threading.local()

    def racing_check(batch_id):
        if not getattr(first_call, "done", False):
            first_call.done = True
            barrier.wait()
        return original(batch_id)

    monkeypatch.setattr(services, "_batch_has_open_work", racing_check)
    results = run_threads(*(lambda a=a: services.submit_annotation(user=a.labeler, assignment_id=a.pk, label=1)
                            for a in last))
    assert all(isinstance(r, tuple) and r[1] is True for r in results), results
    project.refresh_from_db()
    batch = last[0].batch
    assert project.state == Project.State.UPDATING
    assert sent[1:] == [("process_batch", (batch.pk,))]
    assert not Assignment.objects.filter(batch=batch, status__in=["open", "paused"]).exists()


def test_a_double_submit_of_the_last_answer_neither_deadlocks_nor_duplicates(pg, labeling_dirs, annotators, sent):
    project = digits_project()
    (asg,) = answer_all_but(project, 1)
    barrier = threading.Barrier(2, timeout=20)

    def submit():
        barrier.wait()
        return services.submit_annotation(user=asg.labeler, assignment_id=asg.pk, label=2)

    results = run_threads(submit, submit)
    assert all(isinstance(r, tuple) for r in results), results
    assert sorted(created for _, created in results) == [False, True]
    assert Annotation.objects.filter(assignment=asg).count() == 1
    assert [s for s in sent if s[0] == "process_batch"] == [("process_batch", (asg.batch_id,))]


def test_the_loop_tasks_project_lock_keeps_answers_out_and_they_see_the_freeze(pg, labeling_dirs, annotators, sent):
    """An answer arriving while the loop task holds the project FOR UPDATE waits, then sees the frozen batch."""
    project = digits_project()
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
            services.submit_annotation(user=asg.labeler, assignment_id=asg.pk, label=0)
        except services.Conflict as exc:
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
