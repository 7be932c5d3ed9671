"""Staff hear of a labeler the trust rules flagged or suspended: a mail to each staff member with an
address once the loop step commits, and a notice on the staff home and project page until they mark
it seen."""
from __future__ import annotations

from datetime import timedelta

import pytest
from django.core import mail
from django.test import Client
from django.utils import timezone

from labeling import loop_step, notice_selectors, notifications
from labeling.models import QueryBatch, TrustEvent, TrustNoticeSeen
from tests.web.factories import AnnotatorFactory, ProjectFactory, StaffFactory
from tests.web.labeling_support import annotators, answer_open, digits_project, labeling_dirs  # noqa: F401

pytestmark = pytest.mark.django_db


class BrokenBackend:
    def __init__(self, *args, **kwargs):
        pass

    def __enter__(self):
        raise ConnectionRefusedError("no mail server")

    def __exit__(self, *exc):
        return False


@pytest.fixture
def people():
    boss = StaffFactory(username="boss_n", email="boss@example.org")
    other = StaffFactory(username="other_n", email="other@example.org")
    StaffFactory(username="no_mail_n", email="")
    ann = AnnotatorFactory(username="ann_n", email="ann@example.org")
    return boss, other, ann


def event(user, reason="flagged", project=None, minutes_ago=0, note="p = 0.001 < flag_alpha"):
    e = TrustEvent.objects.create(labeler=user, project=project, reason=reason, trust_after=0.8, note=note)
    if minutes_ago:
        TrustEvent.objects.filter(pk=e.pk).update(created_at=timezone.now() - timedelta(minutes=minutes_ago))
        e.refresh_from_db()
    return e


def test_staff_with_an_address_are_mailed_with_the_review_link(people, settings):
    settings.ROBUSTAL_SITE_URL = "https://labels.example.org"
    boss, other, ann = people
    project = ProjectFactory(name="birds")
    assert notifications.notify_staff(project_id=project.pk, blocked=[(ann.pk, "flagged", "p = 0.001")]) == 2
    assert sorted(m.to[0] for m in mail.outbox) == ["boss@example.org", "other@example.org"]  # not the annotator
    m = mail.outbox[0]
    assert "ann_n" in m.subject and "flagged" in m.subject and "birds" in m.subject
    assert f"https://labels.example.org/trust/labelers/{ann.pk}/" in m.body
    assert "p = 0.001" in m.body and "no new work" in m.body


def test_a_mail_server_that_is_down_does_not_fail_the_caller(people, settings, caplog):
    settings.EMAIL_BACKEND = "tests.web.test_staff_notices.BrokenBackend"
    boss, other, ann = people
    assert notifications.notify_staff(project_id=ProjectFactory().pk, blocked=[(ann.pk, "suspended", "")]) == 0
    assert "could not mail the staff" in caplog.text


def test_the_loop_step_mails_staff_only_after_it_commits(labeling_dirs, annotators, people, monkeypatch,
                                                          django_capture_on_commit_callbacks):
    from labeling import workflow

    monkeypatch.setattr(workflow, "enqueue", lambda *args, **kwargs: None)  # no broker here
    boss, other, ann = people
    project = digits_project()
    answer_open(project)
    batch0 = QueryBatch.objects.get(project=project, iteration=0)
    flagged = annotators[0]
    real_step = loop_step.engine.step

    def step_with_a_flag(*args, **kwargs):  # the rules' verdict, as the engine reports it
        plan = real_step(*args, **kwargs)
        plan.events.append({"labeler": flagged.pk, "reason": "flagged", "delta": 0.0, "trust_after": 0.9,
                            "note": "refuted labels: p = 0.002 < flag_alpha 0.03"})
        return plan

    monkeypatch.setattr(loop_step.engine, "step", step_with_a_flag)
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        loop_step.advance_loop(batch_id=batch0.pk)
    assert mail.outbox == [] and callbacks  # nothing before the commit
    assert TrustEvent.objects.filter(labeler=flagged, reason="flagged", project=project).exists()
    for callback in callbacks:
        callback()
    assert len(mail.outbox) == 2
    assert f"/trust/labelers/{flagged.pk}/" in mail.outbox[0].body and "refuted labels" in mail.outbox[0].body
    # a redelivered task finds the batch processed: no second mail
    with django_capture_on_commit_callbacks(execute=True):
        assert loop_step.advance_loop(batch_id=batch0.pk).startswith("noop")
    assert len(mail.outbox) == 2


def test_notices_on_the_staff_pages_until_marked_seen(people):
    boss, other, ann = people
    p1, p2 = ProjectFactory(name="p-one"), ProjectFactory(name="p-two")
    event(ann, "flagged", p1, minutes_ago=5)
    c = Client()
    c.force_login(boss)
    home = c.get("/").content.decode()
    assert 'id="trust-notices"' in home and f'href="/trust/labelers/{ann.pk}/"' in home and "p-one" in home
    assert 'id="trust-notices"' in c.get(f"/labeling/staff/projects/{p1.pk}/").content.decode()
    assert 'id="trust-notices"' not in c.get(f"/labeling/staff/projects/{p2.pk}/").content.decode()
    notices = notice_selectors.trust_notices(boss)
    r = c.post("/labeling/staff/notices/seen/", {"until": notices["latest"].isoformat(), "next": "/"})
    assert r.status_code == 302 and r["Location"] == "/"
    assert 'id="trust-notices"' not in c.get("/").content.decode()
    # the other staff member has not looked yet
    c2 = Client()
    c2.force_login(other)
    assert 'id="trust-notices"' in c2.get("/").content.decode()
    # a later suspension shows again, with the state now
    event(ann, "suspended", p1)
    rows = notice_selectors.trust_notices(boss)["rows"]
    assert [(r["labeler"], r["reason"]) for r in rows] == [(ann, "suspended")]
    # annotators never see notices
    a = Client()
    a.force_login(ann)
    assert 'id="trust-notices"' not in a.get("/").content.decode()


def test_marking_seen_never_goes_back_nor_into_the_future(people):
    boss, _, ann = people
    now = timezone.now()
    mark = notifications.mark_seen(user=boss, until=now + timedelta(days=1))
    assert mark.seen_until <= timezone.now()
    notifications.mark_seen(user=boss, until=now - timedelta(days=1))
    assert TrustNoticeSeen.objects.get(user=boss).seen_until == mark.seen_until
    c = Client()
    c.force_login(boss)
    for bad in ("", "yesterday", "2020-01-01T00:00"):  # no usable time: now
        assert c.post("/labeling/staff/notices/seen/", {"until": bad, "next": "https://evil.example/"})["Location"] == "/"


def test_notices_take_two_queries_whatever_their_number(people, django_assert_num_queries):
    boss, _, _ = people
    project = ProjectFactory()
    for k in range(30):
        event(AnnotatorFactory(username=f"many_{k}"), "flagged" if k % 2 else "suspended", project)
    with django_assert_num_queries(2):
        notices = notice_selectors.trust_notices(boss, limit=20)
        assert len(notices["rows"]) == 20 and notices["more"] == 10
        assert all(r["state"] == "active" for r in notices["rows"])
