"""Races with real threads on PostgreSQL (each thread has its own connection; skipped on SQLite,
which serialises writers and has no row locks).

- two annotators asking for work at the same instant never get the same first-label assignment
  (the shared queue's claim: ``FOR UPDATE SKIP LOCKED``);
- a double submit is harmless: one Annotation (a one-to-one column in the database), the second
  request gets the existing answer (same label) or a 409 (another label);
- a re-annotation never goes to the original labeler, even when everybody asks at once (and the
  database refuses it anyway: a CHECK constraint);
- the loop task run twice at once for the same batch makes one next batch.
"""
from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from django.db import IntegrityError, connection, transaction
from django.utils import timezone
from rest_framework.test import APIClient

from labeling import answering, loop_step, services, tasks
from labeling.models import Annotation, Assignment, IterationMetric, Item, QueryBatch
from tests.web.factories import AnnotatorFactory
from tests.web.labeling_support import digits_project, labeling_dirs, take_turns  # noqa: F401

ROUNDS = 15


@pytest.fixture
def pg(transactional_db):
    if connection.vendor != "postgresql":
        pytest.skip("race tests need PostgreSQL row locks (pass 2)")


@pytest.fixture
def no_broker(monkeypatch):
    """Record loop-task sends instead of publishing them (no worker here)."""
    sent = []
    monkeypatch.setattr(tasks.process_batch, "apply_async", lambda args, countdown=None: sent.append(args[0]))
    monkeypatch.setattr(tasks.prepare_features, "apply_async", lambda args, countdown=None: None)
    return sent


def run_together(fns: list, rounds: int = 1) -> list[list]:
    """Run ``fns[k](round)`` in one thread per function, all released at once each round."""
    from django.db import connections

    barrier = threading.Barrier(len(fns))
    results = [[None] * rounds for _ in fns]
    errors = []

    def body(k):
        try:
            for r in range(rounds):
                barrier.wait(timeout=60)
                try:
                    results[k][r] = fns[k](r)
                except Exception as exc:  # keep the other threads going; reported below
                    results[k][r] = exc
                barrier.wait(timeout=60)
        except Exception as exc:  # a broken barrier
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=body, args=(k,)) for k in range(len(fns))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not errors, errors
    return results


def test_simultaneous_next_never_shares_a_first_label_assignment(pg, labeling_dirs, no_broker):
    users = [AnnotatorFactory(username=f"racer{k}") for k in range(2)]
    # one shared queue: every first-label assignment waits to be claimed
    project = digits_project(n=48, config={"initial_size": 2 * ROUNDS + 4, "secured_size": 6, "batch_size": 6})
    assert not Assignment.objects.filter(batch__project=project, kind="first_label").exclude(status="queued").exists()

    def claim_and_answer(user):
        def step(r):
            asg = answering.next_assignment(user=user)
            assert asg is not None and asg.labeler_id == user.pk
            answering.submit_annotation(user=user, assignment_id=asg.pk, label=0)  # frees them for the next round
            return asg.pk
        return step

    results = run_together([claim_and_answer(u) for u in users], rounds=ROUNDS)
    flat = [x for row in results for x in row]
    assert not [x for x in flat if isinstance(x, Exception)], flat
    assert all(a != b for a, b in zip(*results))  # never the same one in a round
    assert len(set(flat)) == 2 * ROUNDS  # nor across rounds
    for user, mine in zip(users, results):
        assert set(Assignment.objects.filter(pk__in=mine).values_list("labeler_id", flat=True)) == {user.pk}
    assert Annotation.objects.filter(assignment__batch__project=project).count() == 2 * ROUNDS
    assert no_broker == []  # the batch is not complete: nothing sent


def test_double_submit_makes_one_annotation(pg, labeling_dirs, no_broker):
    users = [AnnotatorFactory(username=n) for n in ("ann_a", "ann_b", "ann_c")]
    project = digits_project(n=48, config={"initial_size": 12, "secured_size": 6, "batch_size": 6})
    waiting = list(Assignment.objects.filter(batch__project=project, status="queued").order_by("id"))
    assert len(waiting) == 12
    for k, asg in enumerate(waiting):  # claimed up front, round-robin (the race here is the double submit)
        Assignment.objects.filter(pk=asg.pk).update(labeler=users[k % 3], status="open",
                                                    lease_until=timezone.now() + timedelta(hours=1))
    open_asgs = list(Assignment.objects.filter(pk__in=[a.pk for a in waiting]).order_by("id").select_related("labeler"))
    same, different = open_asgs[:5], open_asgs[5:10]  # two left open: the batch never completes

    def post(asg, label):
        api = APIClient()
        api.force_authenticate(asg.labeler)
        return api.post(f"/api/labeling/assignments/{asg.pk}/annotation/", {"label": label}, format="json").status_code

    codes = run_together([lambda r: post(same[r], 1), lambda r: post(same[r], 1)], rounds=len(same))
    assert [sorted(pair) for pair in zip(*codes)] == [[200, 201]] * len(same), codes
    codes = run_together([lambda r: post(different[r], 1), lambda r: post(different[r], 2)], rounds=len(different))
    assert [sorted(pair) for pair in zip(*codes)] == [[201, 409]] * len(different), codes
    for asg in same + different:
        assert Annotation.objects.filter(assignment=asg).count() == 1
    # the guarantee is the database's, not only the Python check
    with pytest.raises(IntegrityError), transaction.atomic():
        Annotation.objects.create(assignment=same[0], label=2)


def test_reannotation_never_reaches_the_original_labeler_under_concurrency(pg, labeling_dirs, no_broker):
    users = [AnnotatorFactory(username=f"voter{k}") for k in range(3)]
    project = digits_project(n=60, config={"initial_size": 6, "secured_size": 6, "batch_size": 6})
    original = users[0]
    batch = QueryBatch.objects.get(project=project, iteration=0)
    used = set(Assignment.objects.filter(batch=batch).values_list("item_id", flat=True))
    items = list(Item.objects.filter(project=project, is_secured=False).exclude(pk__in=used).order_by("index")[:24])
    # re-annotations of the original labeler's items, waiting in the queue with the first labels
    Assignment.objects.bulk_create([Assignment(item=i, batch=batch, labeler=None, original_labeler=original,
                                               kind="reannotation", status="queued") for i in items])

    def ask(user):
        def step(r):
            asg = answering.next_assignment(user=user)
            if asg is None:
                return None
            answering.submit_annotation(user=user, assignment_id=asg.pk, label=1)
            return asg.pk, asg.kind
        return step

    results = run_together([ask(u) for u in users], rounds=10)
    flat = [x for row in results for x in row if x is not None]
    assert not [x for x in flat if isinstance(x, Exception)], flat
    claimed = [pk for pk, _ in flat]
    assert len(claimed) == len(set(claimed))  # never the same one twice
    assert not any(kind == "reannotation" for pk, kind in (x for x in results[0] if x is not None))
    assert sum(kind == "reannotation" for _, kind in flat) >= 10  # the others took them
    assert not Assignment.objects.filter(kind="reannotation", labeler=original).exists()
    # and the database refuses it outright
    reannotation = Assignment.objects.filter(kind="reannotation", status="queued").first()
    with pytest.raises(IntegrityError), transaction.atomic():
        Assignment.objects.filter(pk=reannotation.pk).update(labeler=original, status="open",
                                                             lease_until=timezone.now())


def test_loop_task_twice_at_once_makes_one_next_batch(pg, labeling_dirs, no_broker):
    users = [AnnotatorFactory(username=n) for n in ("ann_a", "ann_b", "ann_c")]
    project = digits_project(n=36, config={"initial_size": 6, "secured_size": 6, "batch_size": 6})
    batch0 = QueryBatch.objects.get(project=project, iteration=0)
    for user, asg in take_turns(project):
        answering.submit_annotation(user=user, assignment_id=asg.pk, label=asg.item.ground_truth)
    assert no_broker == [batch0.pk]
    outcomes = run_together([lambda r: loop_step.advance_loop(batch_id=batch0.pk)] * 2)
    outcomes = sorted(str(o[0]) for o in outcomes)
    assert sum(not o.startswith("noop") for o in outcomes) == 1, outcomes
    assert QueryBatch.objects.filter(project=project).count() == 2
    assert IterationMetric.objects.filter(project=project).count() == 1
