"""``batch_per_annotator`` in the web app: the next batch holds that many items per member working
now (issue 16, item 3), counted by :func:`labeling.queue.active_labeler_count`."""
from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from labeling import answering, loop_step, queue
from labeling.models import Assignment, LabelerProfile, QueryBatch
from tests.web.factories import AnnotatorFactory
from tests.web.labeling_support import claim, digits_project, labeling_dirs  # noqa: F401

pytestmark = pytest.mark.django_db


@pytest.fixture
def five(db):
    return [AnnotatorFactory(username=f"ann_{c}") for c in "abcde"]


def answer_with(project, users, batch=None) -> int:
    """``users`` take turns answering (truthfully) what the queue hands them, until none gets any."""
    n, k, misses = 0, 0, 0
    while misses < len(users):
        user = users[k % len(users)]
        k += 1
        asg = answering.next_assignment(user=user, project=project)
        if asg is None:
            misses += 1
            continue
        misses = 0
        answering.submit_annotation(user=user, assignment_id=asg.pk, label=asg.item.ground_truth, seconds=0.5)
        n += 1
    return n


def test_active_members_are_those_who_answered_or_hold_a_claim_within_the_lease(labeling_dirs, five, settings):
    settings.LABELING_LEASE_SECONDS = 300
    a, b, c, d, e = five
    project = digits_project(members=five)
    assert queue.active_labeler_count(project) == 1  # nobody has worked yet: at least one
    answering.submit_annotation(user=a, assignment_id=claim(a, project).pk, label=0)  # answered just now
    claim(b, project)  # holds a claim
    held_c = claim(c, project)  # held a claim, long ago: its lease ran out
    Assignment.objects.filter(pk=held_c.pk).update(lease_until=timezone.now() - timedelta(seconds=1))
    answering.submit_annotation(user=d, assignment_id=claim(d, project).pk, label=0)  # answered long ago
    Assignment.objects.filter(labeler=d).update(completed_at=timezone.now() - timedelta(seconds=301))
    answering.submit_annotation(user=e, assignment_id=claim(e, project).pk, label=0)  # then flagged
    LabelerProfile.objects.update_or_create(user=e, defaults={"is_flagged": True})
    assert queue.active_labeler_count(project) == 2  # a and b
    LabelerProfile.objects.update_or_create(user=a, defaults={"is_suspended": True})
    assert queue.active_labeler_count(project) == 1
    other = digits_project(name="other", members=five)  # work in another project does not count there
    assert queue.active_labeler_count(other) == 1
    Assignment.objects.filter(labeler=d).update(completed_at=timezone.now() - timedelta(seconds=299))
    assert queue.active_labeler_count(project) == 2  # b, and d within the lease


@pytest.mark.parametrize("pipeline", [False, True], ids=["sync", "pipeline"])
def test_three_of_five_members_working_get_a_batch_of_three_times_k(labeling_dirs, five, pipeline, monkeypatch):
    """batch_size 6, batch_per_annotator 4: three members answered everything (d answered long
    ago, e never), so the batch the step opens holds 3 x 4 = 12 items; the ones start opened keep
    their set sizes."""
    from labeling import workflow

    monkeypatch.setattr(workflow, "enqueue", lambda *args, **kwargs: None)  # the test runs the loop itself
    a, b, c, d, e = five
    project = digits_project(members=five, config={"batch_per_annotator": 4, "budget": 200, "pipeline": pipeline})
    working = [a, b, c]
    answering.submit_annotation(user=d, assignment_id=claim(d, project).pk, label=0)
    Assignment.objects.filter(labeler=d).update(completed_at=timezone.now() - timedelta(seconds=400))
    answer_with(project, working)
    first = QueryBatch.objects.get(project=project, iteration=0)
    started = QueryBatch.objects.filter(project=project).count()
    assert started == (2 if pipeline else 1)
    assert all(b.assignments.filter(kind="first_label").count() == 6 for b in QueryBatch.objects.filter(project=project))
    assert queue.active_labeler_count(project) == 3
    state, _ = loop_step.engine_state(project, first)
    assert state.active_labelers == 3
    outcome = loop_step.advance_loop(batch_id=first.pk)
    for _ in range(10):  # re-annotation rounds go to the three who are working
        if not outcome.startswith("reannotation"):
            break
        answer_with(project, working)
        outcome = loop_step.advance_loop(batch_id=first.pk)
    assert outcome.startswith("opened batch"), outcome
    new = QueryBatch.objects.filter(project=project).order_by("-iteration").first()
    assert new.iteration == started
    assert new.assignments.filter(kind="first_label").count() == 12


def test_without_the_setting_the_state_counts_nobody(labeling_dirs, five):
    project = digits_project(members=five)
    state, _ = loop_step.engine_state(project, QueryBatch.objects.get(project=project, iteration=0))
    assert state.active_labelers is None
