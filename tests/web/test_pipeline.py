"""``pipeline`` in the web app: two open batches, the older one processed while people label the
younger one, whose answers never enter the older one's step (issue 16, item 3)."""
from __future__ import annotations

import numpy as np
import pytest
from django.test import Client

from labeling import answering, loop_step, selectors, workflow
from labeling.models import Annotation, Assignment, IterationMetric, Project, QueryBatch
from tests.web.factories import StaffFactory
from tests.web.labeling_support import (annotators, claim, digits_project, labeling_dirs,  # noqa: F401
                                        take_turns)

pytestmark = pytest.mark.django_db


@pytest.fixture
def project(labeling_dirs, annotators):
    return digits_project(config={"pipeline": True})


@pytest.fixture
def sent(monkeypatch):
    """The loop tasks the services send (the test runs the loop itself)."""
    calls = []
    monkeypatch.setattr(workflow, "enqueue", lambda name, *args, countdown=None: calls.append((name, args)))
    return calls


def batches(project) -> list[QueryBatch]:
    return list(QueryBatch.objects.filter(project=project).order_by("iteration"))


def answer_batch(project, batch, *, limit=None, wrong_for=()) -> int:
    """The members take turns answering work of ``batch`` (truthfully, or wrongly for ``wrong_for``)
    until none of them is handed any or ``limit`` answers were given. A member handed work of
    another batch gives it back and sits out (the queue had nothing of ``batch`` for them)."""
    from labeling import queue
    from django.contrib.auth import get_user_model

    users = list(get_user_model().objects.filter(pk__in=selectors.member_ids(project)).order_by("id"))
    n, k, misses = 0, 0, 0
    while users and misses < len(users) and (limit is None or n < limit):
        user = users[k % len(users)]
        k += 1
        asg = answering.next_assignment(user=user, project=project)
        if asg is None or asg.batch_id != batch.pk:
            if asg is not None:
                queue.release_claims(user=user, project=project)
                users.remove(user)
                misses = 0
            else:
                misses += 1
            continue
        misses = 0
        label = asg.item.ground_truth
        if user.username in wrong_for:
            label = (label + 1) % project.n_classes
        answering.submit_annotation(user=user, assignment_id=asg.pk, label=label, seconds=0.5)
        n += 1
    return n


def close(batch) -> str:
    """Run the loop on ``batch`` until it closes, answering its re-annotation rounds truthfully."""
    outcome = loop_step.advance_loop(batch_id=batch.pk)
    for _ in range(10):
        if not outcome.startswith("reannotation"):
            break
        answer_batch(batch.project, batch)
        outcome = loop_step.advance_loop(batch_id=batch.pk)
    return outcome


def test_start_opens_two_batches_and_the_queue_hands_out_the_older_first(project, annotators):
    b0, b1 = batches(project)
    assert (b0.iteration, b1.iteration) == (0, 1) and b0.closed_at is None and b1.closed_at is None
    assert project.state == Project.State.LABELING and project.iteration == 1
    first = list(b1.assignments.all())
    assert len(first) == 6 and {(a.kind, a.status, a.labeler_id) for a in first} == {("first_label", "queued", None)}
    secured = set(project.items.filter(is_secured=True).values_list("pk", flat=True))
    items0, items1 = (set(b.assignments.values_list("item_id", flat=True)) for b in (b0, b1))
    assert not items1 & items0 and not items1 & secured
    handed = []
    for user, asg in take_turns(project):
        handed.append(asg.batch_id)
        answering.submit_annotation(user=user, assignment_id=asg.pk, label=asg.item.ground_truth)
    assert handed == [b0.pk] * b0.assignments.count() + [b1.pk] * 6  # every slot of batch 0 before batch 1's


def test_without_pipeline_start_opens_one_batch(labeling_dirs, annotators):
    project = digits_project(name="sync")
    assert [b.iteration for b in batches(project)] == [0] and project.iteration == 0


def test_the_younger_batchs_answers_never_enter_the_older_batchs_step(project, annotators, sent):
    b0, b1 = batches(project)
    answer_batch(project, b0)
    project.refresh_from_db()
    assert selectors.batch_is_complete(b0) and project.state == Project.State.UPDATING
    assert sent == [("process_batch", (b0.pk,))]
    before, _ = loop_step.engine_state(project, b0)
    plan_before = loop_step._plan(loop_step._take_snapshot(b0.pk))
    # the model updates with batch 0 (frozen); people go on with batch 1, some of them wrongly
    b0.refresh_from_db()
    assert b0.frozen_at is not None
    assert answer_batch(project, b1, limit=4, wrong_for=("ann_a", "ann_b", "ann_c")) == 4
    assert Annotation.objects.filter(assignment__batch=b1).count() == 4
    after, pool = loop_step.engine_state(project, b0)
    items1 = sorted(b1.assignments.values_list("item__index", flat=True))
    assert after.pending.tolist() == items1  # the engine's pending batch: paid for, not part of the state
    assert (after.labels[items1] == -1).all() and (pool.labels[items1] == -1).all()
    assert np.array_equal(after.labels, before.labels) and np.array_equal(after.labeler_of, before.labeler_of)
    assert after.bought == before.bought == selectors.labels_bought(project) - 4
    assert after.answers == before.answers and after.first_labels == before.first_labels
    assert after.batch.tolist() == before.batch.tolist()
    # the same plan whatever people did with batch 1 meanwhile
    snap = loop_step._take_snapshot(b0.pk)
    plan = loop_step._plan(snap)
    assert (plan.phase, plan.next_items, [r.item for r in plan.requests]) == (
        plan_before.phase, plan_before.next_items, [r.item for r in plan_before.requests])
    assert not set(plan.next_items) & set(items1)  # never queries the batch being labeled


def test_the_loop_closes_the_older_batch_while_the_younger_is_labeled(project, annotators, sent):
    b0, b1 = batches(project)
    answer_batch(project, b0)
    snap = loop_step._take_snapshot(b0.pk)  # the loop task starts: batch 0 frozen, the project updating
    project.refresh_from_db()
    assert project.state == Project.State.UPDATING
    # meanwhile the queue hands out batch 1, and answers to it are taken (the API too)
    user = annotators[0]
    asg = claim(user, project)
    assert asg.batch_id == b1.pk
    from rest_framework.test import APIClient

    api = APIClient()
    api.force_authenticate(user)
    r = api.post(f"/api/labeling/assignments/{asg.pk}/annotation/", {"label": asg.item.ground_truth}, format="json")
    assert r.status_code == 201, r.content
    # an undo in the younger batch does not call the update off
    answering.undo(user=user, assignment_id=asg.pk)
    project.refresh_from_db()
    assert project.state == Project.State.UPDATING
    answering.submit_annotation(user=user, assignment_id=asg.pk, label=asg.item.ground_truth)
    outcome = loop_step._persist(snap, loop_step._plan(snap))
    while outcome.startswith("reannotation"):
        answer_batch(project, b0)
        outcome = loop_step.advance_loop(batch_id=b0.pk)
    assert outcome.startswith("opened batch 2"), outcome
    project.refresh_from_db()
    b0, b1, b2 = batches(project)
    assert b0.closed_at is not None and b1.closed_at is None and b1.frozen_at is None and b2.closed_at is None
    assert project.state == Project.State.LABELING and project.iteration == 2
    assert Annotation.objects.filter(assignment__batch=b1).count() == 1  # kept
    items = [set(b.assignments.values_list("item_id", flat=True)) for b in (b0, b1, b2)]
    assert len(items[2]) == 6 and not items[2] & (items[0] | items[1])
    metric = IterationMetric.objects.get(project=project, iteration=0)
    paid = Annotation.objects.filter(assignment__batch=b0).count() + 6  # secured (admin) labels
    assert metric.labels_bought == paid + 6  # batch 1 counts as bought once F_0 is ready (as in simulate)
    # batch 1's work comes before batch 2's; batch 2 is labeled while batch 1 is processed
    handed = [asg.batch_id for _, asg in _answer_all(project)]
    assert handed == [b1.pk] * 5 + [b2.pk] * 6


def _answer_all(project):
    for user, asg in take_turns(project):
        answering.submit_annotation(user=user, assignment_id=asg.pk, label=asg.item.ground_truth)
        yield user, asg


def test_the_younger_batch_complete_first_is_processed_when_the_older_closes(project, annotators, sent):
    b0, b1 = batches(project)
    list(_answer_all(project))  # both batches answered before the loop ran at all
    assert selectors.batch_is_complete(b0) and selectors.batch_is_complete(b1)
    assert sent == [("process_batch", (b0.pk,))]  # batch 1's last answer sends nothing: batch 0 is still open
    assert loop_step.advance_loop(batch_id=b1.pk) == "noop: an older batch is still open"
    project.refresh_from_db()
    assert project.state == Project.State.UPDATING and batches(project)[1].frozen_at is None
    outcome = close(b0)
    assert outcome == f"opened batch 2 with 6 items; batch 1 complete, sent", outcome
    assert sent[-1] == ("process_batch", (b1.pk,))
    project.refresh_from_db()
    assert project.state == Project.State.UPDATING  # the model goes on with batch 1 at once
    assert close(b1).startswith("opened batch 3")
    project.refresh_from_db()
    assert project.state == Project.State.LABELING
    assert [b.iteration for b in batches(project) if b.closed_at is None] == [2, 3]


def test_a_redelivered_task_does_nothing(project, annotators, sent):
    b0, b1 = batches(project)
    answer_batch(project, b0)
    assert close(b0).startswith("opened batch 2")
    state = [(b.pk, b.phase, b.closed_at, b.frozen_at) for b in batches(project)]
    for _ in range(2):
        assert loop_step.advance_loop(batch_id=b0.pk) == "noop: batch already closed"
    assert [(b.pk, b.phase, b.closed_at, b.frozen_at) for b in batches(project)] == state
    assert IterationMetric.objects.filter(project=project).count() == 1
    # a task for batch 1 while it is incomplete, then twice once it is complete and processed
    assert loop_step.advance_loop(batch_id=b1.pk) == "noop: batch not complete"
    answer_batch(project, b1)
    assert close(b1).startswith("opened batch 3")
    assert loop_step.advance_loop(batch_id=b1.pk) == "noop: batch already closed"
    assert [b.iteration for b in batches(project)] == [0, 1, 2, 3]
    assert IterationMetric.objects.filter(project=project).count() == 2


def test_reannotation_of_the_closing_batch_while_the_younger_is_labeled(project, annotators, sent):
    """ann_a labels batch 1 wrongly; F_0 doubts it: batch 1's re-annotation rounds come first in
    the queue (never to ann_a, who gets batch 2's work meanwhile), and batch 2 keeps its answers."""
    a = annotators[0]
    b0, b1 = batches(project)
    answer_batch(project, b0)
    answer_batch(project, b1, wrong_for=("ann_a",))
    assert close(b0).startswith("opened batch 2")
    b2 = batches(project)[2]
    outcome = loop_step.advance_loop(batch_id=b1.pk)
    assert outcome.startswith("reannotation"), outcome
    b1.refresh_from_db()
    project.refresh_from_db()
    assert b1.phase == "reannotation" and b1.frozen_at is None and project.state == Project.State.LABELING
    rounds = Assignment.objects.filter(batch=b1, kind="reannotation", status="queued")
    assert rounds.filter(original_labeler=a).exists()
    # ann_a may not re-annotate their own labels: if only those wait, they get batch 2's work
    others = rounds.exclude(original_labeler=a).count()
    mine = claim(a, project)
    assert mine.batch_id == (b1.pk if others else b2.pk) and mine.original_labeler_id != a.pk
    answering.submit_annotation(user=a, assignment_id=mine.pk, label=mine.item.ground_truth)
    # everyone else gets batch 1's rounds before any of batch 2's work
    for user in annotators[1:]:
        waiting = Assignment.objects.filter(batch=b1, status="queued").exclude(original_labeler=user).exists()
        asg = claim(user, project)
        assert asg.batch_id == (b1.pk if waiting else b2.pk)
        answering.submit_annotation(user=user, assignment_id=asg.pk, label=asg.item.ground_truth)
    answered_b2 = Annotation.objects.filter(assignment__batch=b2).count()
    answer_batch(project, b1)  # the rest of the rounds
    outcome = close(b1)
    assert outcome.startswith("opened batch 3"), outcome
    re = Assignment.objects.filter(batch=b1, kind="reannotation")
    assert all(asg.labeler_id not in (None, asg.original_labeler_id) for asg in re)
    assert Annotation.objects.filter(assignment__batch=b2).count() >= answered_b2
    b2.refresh_from_db()
    assert b2.closed_at is None and b2.phase == "labeling"


def test_a_stop_closes_the_younger_batch_too(labeling_dirs, annotators, sent):
    project = digits_project(name="stops", config={"pipeline": True, "target": 0.0})
    b0, b1 = batches(project)
    answer_batch(project, b0)
    answer_batch(project, b1, limit=2)
    assert close(b0) == "finished: target"
    project.refresh_from_db()
    assert project.state == Project.State.FINISHED
    assert all(b.closed_at is not None and b.phase == "closed" for b in batches(project))
    assert Annotation.objects.filter(assignment__batch=b1).count() == 2  # answers given stay
    assert all(answering.next_assignment(user=u, project=project) is None for u in annotators)


def test_staff_may_choose_pipeline(labeling_dirs):
    from rest_framework.test import APIClient

    staff = StaffFactory(username="pipeline_boss")
    api = APIClient()
    api.force_authenticate(staff)
    r = api.post("/api/labeling/projects/", {"name": "pipelined", "classes": ["a", "b"],
                                             "config": {"pipeline": True}}, format="json")
    assert r.status_code == 201, r.content
    assert Project.objects.get(name="pipelined").config["pipeline"] is True
    page = Client()
    page.force_login(staff)
    r = page.post("/labeling/staff/projects/new/", {"name": "pipelined form", "classes": "a, b", "pipeline": "on"})
    assert r.status_code == 302, r.content.decode()[:2000]
    assert Project.objects.get(name="pipelined form").config["pipeline"] is True
