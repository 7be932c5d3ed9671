"""Project members and the shared work queue with leases (labeling/membership.py, labeling/queue.py).

Members: only they are handed a project's work; staff set them on the page or the API. The
queue: whoever asks next claims the next waiting item they may label, for a lease; an expired
claim goes to the next who asks; a skip returns the item for someone else; re-annotations never
reach the original labeler and go to distinct people; a suspended or flagged labeler's items
return at once; absent annotators do not stall a batch. The PostgreSQL races are at the end.
"""
from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from django.db import IntegrityError, connection, connections, transaction
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from rest_framework.test import APIClient

from labeling import answering, membership, queue, selectors, services, workflow
from labeling.models import Annotation, Assignment, Project, QueryBatch
from tests.web.factories import AnnotatorFactory, UserFactory
from tests.web.labeling_support import (annotators, claim, digits_project, finish_batch,  # noqa: F401
                                        labeling_dirs, staff, take_turns)

pytestmark = pytest.mark.django_db


@pytest.fixture
def project(labeling_dirs, annotators):
    return digits_project()  # 6 first labels queued for ann_a, ann_b, ann_c


def claim_item(user, project, item_id: int) -> Assignment:
    """``user`` answers what the queue hands them (label 0) until they are handed ``item_id``."""
    while (asg := claim(user, project)).item_id != item_id:
        answering.submit_annotation(user=user, assignment_id=asg.pk, label=0)
    return asg


def expire(*assignments) -> None:
    """Their leases ran out (a second ago)."""
    Assignment.objects.filter(pk__in=[a.pk for a in assignments]).update(
        lease_until=timezone.now() - timedelta(seconds=1))


# ---- members ---------------------------------------------------------------------------------


def test_only_members_are_handed_work_and_staff_choose_them(labeling_dirs, annotators, staff):
    a, b, c = annotators
    project = digits_project(members=[a, b])
    assert selectors.member_ids(project) == [a.pk, b.pk]
    assert answering.next_assignment(user=c, project=project) is None
    assert answering.next_assignment(user=c) is None  # nor without naming the project
    assert claim(a, project).batch.project_id == project.pk
    assert [p.pk for p in selectors.project_list_for(b)] == [project.pk]  # b sees it before any work
    assert selectors.project_visible_to(b, project) and not selectors.project_visible_to(c, project)
    membership.set_members(project=project, users=["ann_b", "ann_c"], actor=staff)
    assert selectors.member_ids(project) == [b.pk, c.pk]
    assert claim(c, project).batch.project_id == project.pk


def test_removing_a_member_returns_their_item_at_once(project, annotators):
    a, b, c = annotators
    held = claim(a, project)
    membership.set_members(project=project, users=[b, c])
    held.refresh_from_db()
    assert (held.labeler_id, held.status) == (None, "queued")
    assert answering.next_assignment(user=a, project=project) is None
    assert claim(b, project).pk == held.pk  # the first waiting item again


def test_members_must_be_active_annotators(project, annotators):
    UserFactory(username="not_an_annotator")
    with pytest.raises(workflow.InvalidInput) as err:
        membership.set_members(project=project, users=["ann_a", "nobody_zz", "not_an_annotator"])
    assert "no such user: nobody_zz" in err.value.message and "not an active annotator" in err.value.message
    assert "not_an_annotator" in err.value.message
    assert len(selectors.member_ids(project)) == 3  # nothing changed


def test_a_project_without_members_is_not_started(labeling_dirs, annotators):
    project = digits_project(start=False, members=[])
    with pytest.raises(workflow.Conflict, match="choose its members first"):
        services.start_project(project=project)
    project.refresh_from_db()
    assert project.state == "draft" and not project.batches.exists()


def test_members_api_for_staff(project, annotators, staff):
    api = APIClient()
    api.force_authenticate(staff)
    url = f"/api/labeling/projects/{project.pk}/members/"
    body = api.get(url).json()
    assert [m["username"] for m in body["members"]] == ["ann_a", "ann_b", "ann_c"]
    held = claim(annotators[2], project)
    r = api.put(url, {"members": ["ann_b", "ann_a"]}, format="json")
    assert r.status_code == 200 and [m["username"] for m in r.json()["members"]] == ["ann_a", "ann_b"]
    held.refresh_from_db()
    assert held.status == "queued"  # ann_c gave it back
    for bad in ({"members": ["ann_a", "ghost"]}, {"members": "ann_a"}, {"members": [1]}, {}):
        r = api.put(url, bad, format="json")
        assert r.status_code == 400 and r.json()["detail"], (bad, r.content)
    assert selectors.member_ids(project) == [annotators[0].pk, annotators[1].pk]
    annotator = APIClient()
    annotator.force_authenticate(annotators[0])
    assert annotator.get(url).status_code == 403
    assert annotator.put(url, {"members": ["ann_a"]}, format="json").status_code == 403
    assert api.get("/api/labeling/projects/999999/members/").status_code == 404


# ---- claiming --------------------------------------------------------------------------------


def test_the_queue_hands_out_items_in_the_batchs_order_one_at_a_time(project, annotators):
    a, b, c = annotators
    order = list(Assignment.objects.filter(batch__project=project).order_by("id").values_list("pk", flat=True))
    first = claim(b, project)
    assert first.pk == order[0] and first.lease_until > timezone.now() + timedelta(seconds=250)
    again = claim(b, project)  # asking again: the same item (their lease renewed), not a second one
    assert again.pk == first.pk and again.lease_until >= first.lease_until
    assert [claim(u, project).pk for u in (c, a)] == order[1:3]
    assert Assignment.objects.filter(batch__project=project, status="open").count() == 3


def test_prefetch_holds_the_next_item_and_hands_it_over(project, annotators):
    a, b, _ = annotators
    work = queue.next_work(user=a, project=project, prefetch=True)
    assert work.current is not None and work.upcoming is not None and work.upcoming.prefetched
    answering.submit_annotation(user=a, assignment_id=work.current.pk, label=0)
    after = queue.next_work(user=a, project=project, prefetch=True)
    assert after.current.pk == work.upcoming.pk and not Assignment.objects.get(pk=after.current.pk).prefetched
    # someone who runs out of work takes over an item held only ahead (never one on screen)
    while (asg := answering.next_assignment(user=b, project=project)) is not None and not asg.pk == after.upcoming.pk:
        answering.submit_annotation(user=b, assignment_id=asg.pk, label=0)
    assert asg is not None and asg.pk == after.upcoming.pk and asg.labeler_id == b.pk
    assert Assignment.objects.get(pk=after.current.pk).labeler_id == a.pk  # a's current item stays a's


def test_next_response_says_what_is_upcoming_and_the_batch_and_budget(project, annotators):
    api = APIClient()
    api.force_authenticate(annotators[0])
    body = api.get("/api/labeling/next/", {"project": project.pk, "prefetch": 1}).json()
    assert body["assignment"] and body["upcoming"]["id"] != body["assignment"]["id"]
    assert body["upcoming"]["image_url"] == f"/labeling/assignments/{body['upcoming']['id']}/image"
    assert body["progress"] == {"batch_done": 0, "batch_total": 6, "bought": 6, "budget": 60}
    api.post(f"/api/labeling/assignments/{body['assignment']['id']}/annotation/", {"label": 1}, format="json")
    body = api.get("/api/labeling/next/", {"project": project.pk}).json()
    assert body["upcoming"] is None  # only when asked for
    assert body["progress"] == {"batch_done": 1, "batch_total": 6, "bought": 7, "budget": 60}


def test_next_payload_is_the_documented_serializer_output(project, annotators):
    from labeling.api import next_payload
    from labeling.serializers import NextOutSerializer

    work = queue.next_work(user=annotators[0], project=project, prefetch=True)
    progress = selectors.progress_for(annotators[0], project, batch_id=work.batch_id, bought_before=work.bought_before)
    assert progress == selectors.progress_for(annotators[0], project)
    for asg, up, p, prog, message in ((work.current, work.upcoming, project, progress, ""),
                                      (work.current, None, project, progress, ""),
                                      (None, None, project, progress, "nothing now"), (None, None, None, None, "x")):
        documented = NextOutSerializer({"assignment": asg, "upcoming": up, "project_state": p.state if p else None,
                                        "progress": prog, "message": message}).data
        assert next_payload(asg, up, p, prog, message) == documented


def test_progress_is_one_indexed_count(project, annotators):
    for user, asg in take_turns(project):
        answering.submit_annotation(user=user, assignment_id=asg.pk, label=0)
        break
    with CaptureQueriesContext(connection) as ctx:
        progress = selectors.progress_for(annotators[0], project)
    assert progress["batch_done"] == 1 and progress["bought"] == selectors.labels_bought(project) == 7
    assert len(ctx.captured_queries) == 2  # the open batch, and one GROUP BY status on its index
    assert "GROUP BY" in ctx.captured_queries[1]["sql"]


# ---- leases ----------------------------------------------------------------------------------


def test_an_expired_claim_goes_to_the_next_who_asks(project, annotators, settings):
    a, b, c = annotators
    settings.LABELING_LEASE_SECONDS = 30
    held = claim(a, project)
    assert held.lease_until <= timezone.now() + timedelta(seconds=31)
    while (asg := answering.next_assignment(user=b, project=project)) is not None:  # b empties the queue
        answering.submit_annotation(user=b, assignment_id=asg.pk, label=0)
    assert answering.next_assignment(user=c, project=project) is None  # a's lease still runs
    expire(held)
    taken = claim(c, project)
    assert taken.pk == held.pk and taken.labeler_id == c.pk
    with pytest.raises(workflow.NotFound, match=r"no longer\) yours to answer: a claim lasts 30 s"):  # a comes back too late
        answering.submit_annotation(user=a, assignment_id=held.pk, label=0)
    with pytest.raises(workflow.NotFound, match="no such assignment for you"):
        answering.submit_annotation(user=a, assignment_id=held.pk + 10_000, label=0)
    answering.submit_annotation(user=c, assignment_id=held.pk, label=1)
    assert Annotation.objects.get(assignment=held).label == 1


def test_an_expired_claim_nobody_took_can_still_be_answered(project, annotators):
    held = claim(annotators[0], project)
    expire(held)
    again = claim(annotators[0], project)  # asking again renews it
    assert again.pk == held.pk and again.lease_until > timezone.now()
    expire(held)
    annotation, created = answering.submit_annotation(user=annotators[0], assignment_id=held.pk, label=2)
    assert created and annotation.label == 2


def test_absent_annotators_do_not_stall_the_batch(project, annotators, settings):
    """Two annotators claim and walk away; the third runs out of queued work, then gets their
    items once the leases run out, and the batch completes."""
    a, b, c = annotators
    gone = [claim(a, project), claim(b, project)]
    answered = 0
    while (asg := answering.next_assignment(user=c, project=project)) is not None:
        answering.submit_annotation(user=c, assignment_id=asg.pk, label=0)
        answered += 1
    assert answered == 4 and project.batches.get().assignments.filter(status="open").count() == 2
    project.refresh_from_db()
    assert project.state == "labeling"
    expire(*gone)
    while (asg := answering.next_assignment(user=c, project=project)) is not None:
        assert asg.pk in {g.pk for g in gone}
        answering.submit_annotation(user=c, assignment_id=asg.pk, label=0)
        answered += 1
    project.refresh_from_db()
    assert answered == 6 and project.state == "updating"  # complete: the loop task goes out
    assert selectors.batch_is_complete(project.batches.get())


# ---- skip, undo ------------------------------------------------------------------------------


def test_skip_returns_the_item_for_someone_else_never_the_skipper(project, annotators):
    a, b, c = annotators
    asg = claim(a, project)
    skipped = answering.skip_assignment(user=a, assignment_id=asg.pk)
    copy = Assignment.objects.get(pk=skipped.requeued_as_id)
    assert (copy.item_id, copy.kind, copy.status, copy.labeler_id) == (asg.item_id, asg.kind, "queued", None)
    mine = set()
    while (nxt := answering.next_assignment(user=a, project=project)) is not None:
        mine.add(nxt.item_id)
        answering.submit_annotation(user=a, assignment_id=nxt.pk, label=0)
    assert asg.item_id not in mine and len(mine) == 5  # everything else, not the skipped item
    got = claim(b, project)
    assert got.pk == copy.pk  # b gets it
    # the database refuses handing the skipper the item again in this batch
    with pytest.raises(IntegrityError), transaction.atomic():
        Assignment.objects.filter(pk=copy.pk).update(labeler=a)


def test_an_item_everyone_skipped_leaves_the_batch(labeling_dirs, annotators):
    a, b, _ = annotators
    project = digits_project(members=[a, b])
    asg = claim(a, project)
    answering.skip_assignment(user=a, assignment_id=asg.pk)
    copy = claim_item(b, project, asg.item_id)
    last = answering.skip_assignment(user=b, assignment_id=copy.pk)
    assert last.requeued_as_id is None  # nobody else may take it
    assert not Assignment.objects.filter(item=asg.item_id, status__in=["queued", "open"]).exists()


def test_a_skip_nobody_working_takes_leaves_the_batch_after_a_lease(labeling_dirs, annotators, settings):
    """Only a works; b may take a's skipped item but is absent: the page says what a waits for,
    and a lease after the skip the item leaves the batch, which then goes to the model."""
    a, b, _ = annotators
    settings.LABELING_LEASE_SECONDS = 30
    project = digits_project(members=[a, b])
    api = APIClient()
    api.force_authenticate(a)
    asg = claim(a, project)
    copy_id = answering.skip_assignment(user=a, assignment_id=asg.pk).requeued_as_id
    assert copy_id is not None  # b could label it
    while (nxt := answering.next_assignment(user=a, project=project)) is not None:
        answering.submit_annotation(user=a, assignment_id=nxt.pk, label=0)
    body = api.get(f"/api/labeling/next/?project={project.pk}").json()
    assert body["assignment"] is None and "wait for other annotators" in body["message"]
    assert "leaves the batch after 30 s" in body["message"] and "every image of this batch is taken" not in body["message"]
    project.refresh_from_db()
    assert project.state == "labeling" and Assignment.objects.filter(pk=copy_id, status="queued").exists()
    Assignment.objects.filter(pk=copy_id).update(created_at=timezone.now() - timedelta(seconds=31))
    body = api.get(f"/api/labeling/next/?project={project.pk}").json()
    assert not Assignment.objects.filter(pk=copy_id).exists()
    assert Assignment.objects.get(pk=asg.pk).status == "skipped"  # the record of the skip stays
    project.refresh_from_db()
    assert project.state == "updating"  # the batch moved on at the pace of whoever worked
    assert body["assignment"] is None and "model is updating" in body["message"]
    assert answering.retire_stale_skips(project=project) == 0  # nothing left to retire, and not while updating


def test_an_old_skip_waits_for_a_member_who_is_working(project, annotators, settings):
    """A copy older than a lease stays while someone working may take it (in a long batch it
    queues behind older slots); it leaves once they are away too."""
    a, b, _ = annotators
    settings.LABELING_LEASE_SECONDS = 30
    held = claim(b, project)  # b works: their claim's lease runs
    asg = claim(a, project)
    copy_id = answering.skip_assignment(user=a, assignment_id=asg.pk).requeued_as_id
    Assignment.objects.filter(pk=copy_id).update(created_at=timezone.now() - timedelta(seconds=31))
    assert answering.retire_stale_skips(project=project) == 0
    assert Assignment.objects.filter(pk=copy_id, status="queued").exists()
    expire(held)  # b stopped answering: nobody working may take it (c never came, a skipped it)
    assert answering.retire_stale_skips(project=project) == 1
    assert not Assignment.objects.filter(pk=copy_id).exists()


def test_a_check_of_your_own_answer_keeps_waiting_and_the_page_says_so(project, annotators, settings):
    """Re-annotation slots never leave the batch, however long they wait (a check needs another
    person); their original labeler, who may not take them, is told what is left."""
    a, b, c = annotators
    settings.LABELING_LEASE_SECONDS = 30
    api = APIClient()
    api.force_authenticate(a)
    held = claim(b, project)  # b holds one item
    mine = []
    while (nxt := answering.next_assignment(user=a, project=project)) is not None:
        answering.submit_annotation(user=a, assignment_id=nxt.pk, label=0)
        mine.append(nxt)
    check = Assignment.objects.create(item_id=mine[0].item_id, batch_id=mine[0].batch_id, kind="reannotation",
                                      original_labeler=a, status="queued")
    Assignment.objects.filter(pk=check.pk).update(created_at=timezone.now() - timedelta(minutes=10))
    body = api.get(f"/api/labeling/next/?project={project.pk}").json()
    assert body["assignment"] is None and "checks of your own answers" in body["message"]
    assert Assignment.objects.filter(pk=check.pk, status="queued").exists()  # it waits for b or c
    assert answering.retire_stale_skips(project=project) == 0
    skipped = answering.skip_assignment(user=b, assignment_id=held.pk)  # b skips: a, who works, gets it
    body = api.get(f"/api/labeling/next/?project={project.pk}").json()
    assert body["assignment"]["id"] == skipped.requeued_as_id


def test_undo_of_a_skip_takes_the_item_back_unless_someone_has_it(project, annotators):
    a, b, _ = annotators
    asg = claim(a, project)
    answering.skip_assignment(user=a, assignment_id=asg.pk)
    back = answering.undo(user=a)
    assert back.pk == asg.pk and back.status == "open" and back.labeler_id == a.pk
    assert Assignment.objects.filter(item=asg.item_id, batch=asg.batch_id).count() == 1  # the copy is gone
    skipped = answering.skip_assignment(user=a, assignment_id=asg.pk)
    taken = claim_item(b, project, asg.item_id)
    assert taken.pk == skipped.requeued_as_id
    with pytest.raises(workflow.Conflict, match="someone else"):
        answering.undo(user=a)
    assert Assignment.objects.get(pk=asg.pk).status == "skipped"


def test_undo_of_an_answer_gives_a_fresh_claim(project, annotators):
    a = annotators[0]
    asg = claim(a, project)
    answering.submit_annotation(user=a, assignment_id=asg.pk, label=1)
    claim(a, project)  # already on the next one
    back = answering.undo(user=a)
    assert back.status == "open" and back.lease_until > timezone.now()
    assert answering.next_assignment(user=a, project=project).pk == asg.pk  # shown again first


# ---- re-annotations at claim time --------------------------------------------------------------


def _reannotation_round(project, original, n: int, item_offset: int = 0) -> list[Assignment]:
    batch = QueryBatch.objects.get(project=project, closed_at__isnull=True)
    used = set(Assignment.objects.filter(batch=batch).values_list("item_id", flat=True))
    item = project.items.filter(is_secured=False).exclude(pk__in=used).order_by("index")[item_offset]
    return Assignment.objects.bulk_create([Assignment(item=item, batch=batch, original_labeler=original,
                                                      kind="reannotation", status="queued") for _ in range(n)])


def test_a_reannotation_never_reaches_the_original_labeler_and_goes_to_distinct_people(project, annotators):
    a, b, c = annotators
    Assignment.objects.filter(batch__project=project, kind="first_label").delete()  # only the round waits
    slots = _reannotation_round(project, original=a, n=2)
    assert answering.next_assignment(user=a, project=project) is None  # their own label: never
    first = claim(b, project)
    answering.submit_annotation(user=b, assignment_id=first.pk, label=0)
    assert answering.next_assignment(user=b, project=project) is None  # the sibling slot: not b again
    second = claim(c, project)
    assert {first.pk, second.pk} == {s.pk for s in slots} and second.labeler_id == c.pk
    # and the database refuses either outright
    extra = _reannotation_round(project, original=a, n=1)[0]
    now = timezone.now()
    with pytest.raises(IntegrityError), transaction.atomic():
        Assignment.objects.filter(pk=extra.pk).update(labeler=a, status="open", lease_until=now)
    with pytest.raises(IntegrityError), transaction.atomic():
        Assignment.objects.create(item_id=first.item_id, batch_id=first.batch_id, labeler=b, original_labeler=a,
                                  kind="reannotation", status="open", lease_until=now)


def test_a_flagged_labeler_gives_back_their_item_and_gets_none(project, annotators):
    a, b, _ = annotators
    held = claim(a, project)
    services.set_labeler_status(user=a, flagged=True)
    held.refresh_from_db()
    assert held.status == "queued" and held.labeler_id is None
    assert answering.next_assignment(user=a, project=project) is None
    assert claim(b, project).pk == held.pk


def test_when_every_member_is_flagged_the_flagged_still_get_work(project, annotators):
    """The engine's rule (learner.engine.EngineState.eligible), kept by the claim statement: work
    goes to active members, else to flagged ones, never to suspended ones."""
    a, b, c = annotators
    for u in (a, b):
        services.set_labeler_status(user=u, flagged=True)
    assert answering.next_assignment(user=a, project=project) is None  # c is active: not a
    services.set_labeler_status(user=c, suspended=True)
    assert selectors.eligible_labelers(project) == [a.pk, b.pk]
    assert claim(a, project) and claim(b, project)  # nobody active is left: the flagged ones
    assert answering.next_assignment(user=c, project=project) is None


def test_a_staff_paused_project_hands_out_nothing(project, annotators):
    Project.objects.filter(pk=project.pk).update(paused_at=timezone.now())
    assert answering.next_assignment(user=annotators[0], project=project) is None
    Project.objects.filter(pk=project.pk).update(paused_at=None)
    assert claim(annotators[0], project)


def test_the_next_batch_is_queued_for_the_members(project, annotators):
    for user, asg in take_turns(project):
        answering.submit_annotation(user=user, assignment_id=asg.pk, label=asg.item.ground_truth)
    batch0 = QueryBatch.objects.get(project=project, iteration=0)
    assert finish_batch(project, batch0).startswith("opened batch 1")
    batch1 = QueryBatch.objects.get(project=project, iteration=1)
    assert set(batch1.assignments.values_list("status", "labeler_id")) == {("queued", None)}
    assert batch1.bought_before == selectors.labels_bought(project) >= 12
    assert selectors.progress_for(annotators[0], project)["bought"] == batch1.bought_before


# ---- PostgreSQL: concurrent claims -------------------------------------------------------------


def _run_together(fns: list) -> list:
    barrier = threading.Barrier(len(fns))
    results = [None] * len(fns)

    def body(k):
        try:
            barrier.wait(timeout=30)
            results[k] = fns[k]()
        except Exception as exc:  # reported to the test
            results[k] = exc
        finally:
            connections.close_all()

    threads = [threading.Thread(target=body, args=(k,)) for k in range(len(fns))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
        assert not t.is_alive(), "a thread hung"
    return results


@pytest.mark.django_db(transaction=True)
def test_pg_many_annotators_claiming_at_once_never_hold_the_same_item(labeling_dirs, monkeypatch):
    if connection.vendor != "postgresql":
        pytest.skip("row-lock concurrency needs PostgreSQL (SQLite serialises writers)")
    monkeypatch.setattr(workflow, "enqueue", lambda *args, **kwargs: None)
    people = [AnnotatorFactory(username=f"crowd{k}") for k in range(8)]
    project = digits_project(n=60, config={"initial_size": 44, "secured_size": 6, "batch_size": 6, "budget": 100})
    for r in range(3):  # three rounds: each person holds one item and one ahead, all claimed at the same instant
        works = _run_together([lambda u=u: queue.next_work(user=u, project=project, prefetch=True) for u in people])
        assert not [w for w in works if isinstance(w, Exception)], works
        if r == 0:  # plenty waiting: nobody comes away empty-handed (claims skip rows others are taking)
            assert all(w.current is not None and w.upcoming is not None for w in works), works
        held = [(u.pk, a.pk) for u, w in zip(people, works) for a in (w.current, w.upcoming) if a is not None]
        assert len({pk for _, pk in held}) == len(held)  # nobody shares an item
        owners = dict(Assignment.objects.filter(pk__in=[pk for _, pk in held]).values_list("pk", "labeler_id"))
        assert all(owners[pk] == uid for uid, pk in held)  # and each is still the claimer's
        for u, w in zip(people, works):  # answer the current ones
            if w.current is not None:
                answering.submit_annotation(user=u, assignment_id=w.current.pk, label=0)
    # everything left held by people[0], whose leases ran out: the others ask at once, and each
    # expired item goes to exactly one of them
    Assignment.objects.filter(batch__project=project, status__in=["queued", "open"]).update(
        status="open", labeler=people[0], lease_until=timezone.now() - timedelta(seconds=1), prefetched=False)
    expired = set(Assignment.objects.filter(batch__project=project, status="open").values_list("pk", flat=True))
    got = _run_together([lambda u=u: answering.next_assignment(user=u, project=project) for u in people[1:]])
    assert not [g for g in got if isinstance(g, Exception)], got
    taken = [g.pk for g in got if g is not None]
    assert len(taken) == len(set(taken)) == min(len(people) - 1, len(expired)) and set(taken) <= expired
    assert Project.objects.get(pk=project.pk).state == "labeling"
