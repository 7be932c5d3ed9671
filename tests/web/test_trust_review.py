"""Trust history recorded by the loop, the admins' review actions, and who may see any of it."""
from __future__ import annotations

from datetime import timedelta

import pytest
from django.test import Client
from django.utils import timezone

from labeling import answering, loop_step, selectors, services
from labeling.models import Annotation, Assignment, LabelerProfile, QueryBatch
from tests.web.factories import AnnotatorFactory, StaffFactory
from tests.web.labeling_support import annotators, answer_open, digits_project, labeling_dirs, staff  # noqa: F401
from trust import services as trust_services
from labeling.models import ConfusionEstimate, DiscardedAnnotation, ReannotationRound, TrustEvent

pytestmark = pytest.mark.django_db


def _disputed_project(annotators):
    """ann_a labels batch 1 wrongly; the audit sends its labels to the 2 others, who answer truthfully."""
    project = digits_project()
    answer_open(project)
    loop_step.advance_loop(batch_id=QueryBatch.objects.get(project=project, iteration=0).pk)
    answer_open(project, wrong_for=("ann_a",))
    batch1 = QueryBatch.objects.get(project=project, iteration=1)
    assert loop_step.advance_loop(batch_id=batch1.pk).startswith("reannotation")
    return project, batch1


def test_rounds_open_with_the_assignments_and_resolve_with_the_outcome(labeling_dirs, annotators):
    a = annotators[0]
    project, batch1 = _disputed_project(annotators)
    rounds = ReannotationRound.objects.filter(batch=batch1)
    re = Assignment.objects.filter(batch=batch1, kind="reannotation")
    assert rounds.count() == re.values("item").distinct().count() > 0
    for rnd in rounds:
        assert rnd.outcome == "pending" and rnd.resolved_at is None
        assert set(rnd.assignments.values_list("pk", flat=True)) == set(re.filter(item=rnd.item)
                                                                        .values_list("pk", flat=True))
        assert rnd.assignments.count() == 1  # adaptive rounds: one re-annotator first
        assert rnd.original_annotation.assignment.labeler_id == rnd.original_labeler_id
        assert rnd.original_label == rnd.original_annotation.label
    for _ in range(6):  # the refuted ones get their second voter (h = 2), then everything resolves
        answer_open(project)
        outcome = loop_step.advance_loop(batch_id=batch1.pk)
        if not outcome.startswith("reannotation"):
            break
    assert outcome.startswith("opened batch 2")
    mine = ReannotationRound.objects.filter(batch=batch1, original_labeler=a)
    assert mine.exists()
    for rnd in mine:
        assert rnd.outcome == "disagreed" and rnd.resolved_at is not None
        assert rnd.consensus_label == rnd.item.ground_truth != rnd.original_label
        assert 0.0 <= rnd.prob_consensus <= 1.0 and 0.0 <= rnd.prob_original <= 1.0
    # one event per refuted label, with the change, the item, the model's confidence and the consensus
    events = TrustEvent.objects.filter(labeler=a, reason__in=["disagreement", "alert"])
    assert events.count() == mine.count()
    profile = LabelerProfile.objects.get(user=a)
    for e in events:
        assert e.delta < 0 and e.item is not None and e.project == project
        assert e.consensus_label == e.item.ground_truth and e.model_confidence is not None
    last = TrustEvent.objects.filter(labeler=a).exclude(reason__in=["flagged", "suspended"]).last()
    assert last.trust_after == pytest.approx(profile.trust)
    # the running sum of changes is the score (history is complete)
    deltas = TrustEvent.objects.filter(labeler=a).values_list("delta", flat=True)
    assert 1.0 + sum(deltas) == pytest.approx(profile.trust)
    if profile.is_flagged or profile.is_suspended:
        assert TrustEvent.objects.filter(labeler=a, reason__in=["flagged", "suspended"]).exclude(note="").exists()
    assert ConfusionEstimate.objects.filter(project=project, labeler=a).exists()


def test_confirmations_are_recorded_only_when_trust_moves(labeling_dirs, annotators):
    project = digits_project()
    answer_open(project)
    loop_step.advance_loop(batch_id=QueryBatch.objects.get(project=project, iteration=0).pk)
    assert not TrustEvent.objects.exists()  # no previous model at iteration 0, nothing to confirm
    LabelerProfile.objects.filter(user__in=annotators).update(trust=0.9)
    answer_open(project)
    loop_step.advance_loop(batch_id=QueryBatch.objects.get(project=project, iteration=1).pk)
    confirmed = TrustEvent.objects.filter(reason="confirmed")
    for e in confirmed:
        assert e.delta > 0 and e.model_confidence >= 0.5 and e.original_label == e.item.ground_truth
    for u in annotators:
        p = LabelerProfile.objects.get(user=u)
        assert 0.9 + sum(confirmed.filter(labeler=u).values_list("delta", flat=True)) == pytest.approx(p.trust)


# ---- review actions ------------------------------------------------------------------------


def test_reinstate_and_suspend_are_recorded(labeling_dirs, annotators, staff):
    a, b, c = annotators
    project = digits_project()
    for _ in range(2):  # a's labels come first
        asg = answering.next_assignment(user=a, project=project)
        answering.submit_annotation(user=a, assignment_id=asg.pk, label=asg.item.ground_truth)
    given = Annotation.objects.filter(assignment__labeler=a, assignment__kind="first_label").count()
    assert given
    services.set_labeler_status(user=a, flagged=True)
    LabelerProfile.objects.filter(user=a).update(trust=0.4)
    event = trust_services.reinstate(labeler=a, actor=staff, note="looked fine")
    p = LabelerProfile.objects.get(user=a)
    assert not p.is_flagged and not p.is_suspended and p.trust == pytest.approx(0.7)
    assert p.cleared == {str(project.pk): given}  # the reviewed labels do not flag a second time
    assert (event.reason, event.actor, event.note) == ("reinstated", staff, "looked fine")
    assert event.delta == pytest.approx(0.3) and event.trust_after == pytest.approx(0.7)
    with pytest.raises(trust_services.ReviewError, match="neither"):
        trust_services.reinstate(labeler=a, actor=staff)
    held = answering.next_assignment(user=b, project=project)
    assert held is not None
    event = trust_services.suspend(labeler=b, actor=staff)
    assert event.reason == "suspended_by_admin" and LabelerProfile.objects.get(user=b).is_suspended
    held.refresh_from_db()
    assert (held.labeler_id, held.status) == (None, "queued")  # back in the queue for the others
    assert b.pk not in selectors.eligible_labelers(project)
    with pytest.raises(trust_services.ReviewError, match="already"):
        trust_services.suspend(labeler=b, actor=staff)


def test_discard_since_a_date_requeues_items_in_the_open_batch(labeling_dirs, annotators, staff):
    a = annotators[0]
    project = digits_project()
    answer_open(project)
    loop_step.advance_loop(batch_id=QueryBatch.objects.get(project=project, iteration=0).pk)
    before = selectors.pool_labels(project)
    mine = list(Annotation.objects.filter(assignment__labeler=a, assignment__kind="first_label")
                .values_list("assignment__item__index", flat=True))
    assert mine and all(before.labels[i] >= 0 for i in mine)
    since = timezone.now() - timedelta(hours=1)
    event = trust_services.discard_labels_since(labeler=a, since=since, actor=staff, note="spam")
    assert event.reason == "labels_discarded" and event.actor == staff and "re-queued" in event.note
    assert DiscardedAnnotation.objects.filter(event=event).count() == Annotation.objects.filter(
        assignment__labeler=a).count()
    after = selectors.pool_labels(project)
    assert all(after.labels[i] == -1 for i in mine)  # the loop no longer reads them
    batch1 = selectors.open_batch(project)
    requeued = Assignment.objects.filter(batch=batch1, kind="first_label", item__index__in=mine)
    assert requeued.count() == len(mine)
    assert set(requeued.values_list("labeler_id", "status", "original_labeler_id")) == {(None, "queued", a.pk)}
    assert str(len(mine)) in event.note
    with pytest.raises(trust_services.ReviewError, match="no label"):
        trust_services.discard_labels_since(labeler=a, since=since, actor=staff)  # nothing left
    with pytest.raises(trust_services.ReviewError, match="future"):
        trust_services.discard_labels_since(labeler=a, since=timezone.now() + timedelta(days=1), actor=staff)
    while (asg := answering.next_assignment(user=a, project=project)) is not None:  # a never gets them back
        assert asg.item.index not in mine
        answering.submit_annotation(user=a, assignment_id=asg.pk, label=0)


# ---- pages and permissions -----------------------------------------------------------------


def _urls(labeler_id: int, item_id: int) -> list[tuple[str, str]]:
    return [("get", "/trust/"), ("get", f"/trust/labelers/{labeler_id}/"),
            ("get", f"/trust/items/{item_id}/image"),
            ("post", f"/trust/labelers/{labeler_id}/reinstate/"), ("post", f"/trust/labelers/{labeler_id}/suspend/"),
            ("post", f"/trust/labelers/{labeler_id}/discard/")]


def test_annotators_can_never_read_or_change_trust_data(labeling_dirs, annotators):
    a, b, _ = annotators
    project, _ = _disputed_project(annotators)
    item = project.items.first()
    client = Client()
    client.force_login(b)
    for method, url in _urls(a.pk, item.pk) + _urls(b.pk, item.pk):
        response = getattr(client, method)(url, {"since": "2020-01-01T00:00"} if method == "post" else None)
        assert response.status_code == 403, url
    anon = Client()
    for method, url in _urls(a.pk, item.pk):
        response = getattr(anon, method)(url)
        assert response.status_code == 302 and "/accounts/login/" in response["Location"], url
    assert not TrustEvent.objects.filter(actor__isnull=False).exists()  # nothing was done
    # the admin's trust models are staff-only too
    assert client.get("/admin/trust/trustevent/").status_code == 403
    # and the annotator API carries no trust fields
    from rest_framework.test import APIClient

    api = APIClient()
    api.force_authenticate(b)
    for url in ("/api/labeling/next/", f"/api/labeling/projects/{project.pk}/status/"):
        body = api.get(url).content.decode()
        assert "trust" not in body and "flagged" not in body, url


def test_staff_pages_show_ranking_confusion_and_disputed_items(labeling_dirs, annotators, staff):
    a = annotators[0]
    project, batch1 = _disputed_project(annotators)
    answer_open(project)
    loop_step.advance_loop(batch_id=batch1.pk)
    services.set_labeler_status(user=a, flagged=True)
    client = Client()
    client.force_login(staff)
    page = client.get("/trust/").content.decode()
    assert page.index("ann_a") < min(page.index("ann_b"), page.index("ann_c"))  # flagged first
    assert "<svg" in page
    detail = client.get(f"/trust/labelers/{a.pk}/").content.decode()
    assert "Confusion matrices" in detail and "digits" in detail and 'class="confusion"' in detail
    assert 'id="suggestion"' in detail and "Suggested by the rules" in detail
    rnd = ReannotationRound.objects.filter(original_labeler=a).exclude(outcome="agreed").first()
    assert f"/trust/items/{rnd.item_id}/image" in detail
    image = client.get(f"/trust/items/{rnd.item_id}/image")
    assert image.status_code == 200 and image["Content-Type"] == "image/png"
    assert client.get("/trust/items/999999/image").status_code == 404
    assert client.get("/trust/labelers/999999/").status_code == 404
    # actions through the pages
    response = client.post(f"/trust/labelers/{a.pk}/reinstate/", {"note": "ok"})
    assert response.status_code == 302 and not LabelerProfile.objects.get(user=a).is_flagged
    response = client.post(f"/trust/labelers/{a.pk}/discard/", {"since": "not a date"}, follow=True)
    assert "valid date" in response.content.decode()
    assert client.get(f"/trust/labelers/{a.pk}/reinstate/").status_code == 405
    assert client.get("/admin/trust/trustevent/").status_code == 200
    assert client.get("/admin/trust/trustevent/add/").status_code == 403  # history is read-only


def test_a_labeler_who_only_reannotated_still_gets_a_page(labeling_dirs):
    staff_user = StaffFactory(username="boss2")
    newcomer = AnnotatorFactory(username="newcomer")
    client = Client()
    client.force_login(staff_user)
    assert client.get(f"/trust/labelers/{newcomer.pk}/").status_code == 200
    assert "newcomer" in client.get("/trust/").content.decode()


def test_django_admin_actions_suspend_and_reinstate_with_history(labeling_dirs, annotators):
    from django.contrib.auth import get_user_model

    a = annotators[0]
    boss = get_user_model().objects.create_superuser("boss_zq", password="boss-pass-123", email="")
    c = Client()
    c.force_login(boss)
    profile = services.ensure_profile(a)
    url = "/admin/labeling/labelerprofile/"
    r = c.post(url, {"action": "suspend", "_selected_action": [profile.pk]}, follow=True)
    assert r.status_code == 200 and "1 labeler(s) suspended." in r.content.decode()
    assert LabelerProfile.objects.get(user=a).is_suspended
    r = c.post(url, {"action": "reinstate", "_selected_action": [profile.pk]}, follow=True)
    assert "1 labeler(s) reinstated." in r.content.decode() and not LabelerProfile.objects.get(user=a).is_suspended
    r = c.post(url, {"action": "reinstate", "_selected_action": [profile.pk]}, follow=True)
    assert "0 labeler(s) reinstated." in r.content.decode()  # nothing to reinstate: skipped, not an error
    assert list(TrustEvent.objects.filter(labeler=a).values_list("reason", flat=True)) == [
        "suspended_by_admin", "reinstated"]


def test_a_suspended_voters_rounds_no_longer_verify_labels(labeling_dirs, annotators, staff):
    """The web app's label state withdraws the voice of a suspended labeler as the engine does
    (learner.engine.withdraw_support): a label their vote carried stands again on its first
    labeler's word, or leaves D when that labeler is suspended too."""
    a = annotators[0]
    project, batch1 = _disputed_project(annotators)
    for _ in range(6):
        answer_open(project)
        if not loop_step.advance_loop(batch_id=batch1.pk).startswith("reannotation"):
            break
    refuted = ReannotationRound.objects.filter(batch=batch1, original_labeler=a, outcome="disagreed")
    assert refuted.exists()
    rnd = refuted.first()
    index = rnd.item.index
    voters = set(rnd.assignments.values_list("labeler_id", flat=True))
    before = selectors.pool_labels(project)
    assert before.labels[index] == rnd.consensus_label and before.labeler_of[index] == -1
    assert before.support[index] == (a.pk, rnd.original_label, voters)
    trust_services.suspend(labeler=type(a).objects.get(pk=sorted(voters)[0]), actor=staff)
    after = selectors.pool_labels(project)
    assert after.labels[index] == rnd.original_label and after.labeler_of[index] == a.pk
    assert index not in after.support
    trust_services.suspend(labeler=a, actor=staff)
    assert selectors.pool_labels(project).labels[index] == -1  # the first labeler is suspended too


@pytest.mark.django_db
def test_a_paused_annotator_is_told_on_the_home_page(client):
    ann, boss = AnnotatorFactory(username="paused_ann"), StaffFactory(username="paused_boss")
    client.force_login(ann)
    assert b'id="standing"' not in client.get("/").content
    trust_services.suspend(labeler=ann, actor=boss, note="")
    page = client.get("/").content.decode()
    assert 'id="standing"' in page and "paused for a review" in page
    trust_services.reinstate(labeler=ann, actor=boss)
    assert b'id="standing"' not in client.get("/").content

