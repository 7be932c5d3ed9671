"""Per-annotator statistics on the staff project page: labels, speed, agreement with the verified
label, trust and state, from a fixed number of queries however many annotators there are."""
from __future__ import annotations

import re

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext

from labeling import services
from labeling.models import Annotation, Assignment, LabelerProfile
from tests.web.factories import (AnnotatorFactory, AssignmentFactory, ItemFactory, ProjectFactory, QueryBatchFactory,
                                 StaffFactory)
from tests.web.labeling_support import labeling_dirs  # noqa: F401

pytestmark = pytest.mark.django_db


def answer(batch, item, user, label, seconds, kind=Assignment.Kind.SECURED):
    asg = AssignmentFactory(batch=batch, item=item, labeler=user, kind=kind, status=Assignment.Status.DONE)
    Annotation.objects.create(assignment=asg, label=label, seconds=seconds)


def build(n_extra: int = 0):
    project = ProjectFactory(name="stats", state="labeling")
    batch = QueryBatchFactory(project=project)
    items = [ItemFactory(project=project, is_secured=True) for _ in range(4)]  # verified: their ground truth
    good, sloppy = AnnotatorFactory(username="st_good"), AnnotatorFactory(username="st_sloppy")
    for item, secs in zip(items, (1.0, 2.0, 3.0, 10.0)):
        answer(batch, item, good, item.ground_truth, secs)
    for k, item in enumerate(items):
        answer(batch, item, sloppy, item.ground_truth if k < 2 else (item.ground_truth + 1) % 3, 4.0)
    AssignmentFactory(batch=batch, item=ItemFactory(project=project), labeler=sloppy)  # open
    for user in (good, sloppy):
        services.ensure_profile(user)
    LabelerProfile.objects.filter(user=sloppy).update(is_flagged=True, trust=0.7)
    for k in range(n_extra):
        user = AnnotatorFactory(username=f"st_extra{k}")
        for item in items:
            answer(batch, item, user, item.ground_truth, 2.0)
    return project, good, sloppy


def row(html: str, user) -> str:
    m = re.search(rf'<tr class="annotator-row" data-user="{user.pk}"[^>]*>(.*?)</tr>', html, re.S)
    assert m, user.username
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", m.group(1))).strip()


def test_staff_page_lists_each_annotator_with_speed_agreement_and_state(labeling_dirs):
    project, good, sloppy = build()
    c = Client()
    c.force_login(StaffFactory(username="st_boss"))
    html = c.get(f"/labeling/staff/projects/{project.pk}/").content.decode()
    assert 'id="annotator-stats"' in html
    # name, state, trust, labels, skipped, open, median seconds, agreement, ground truth
    assert row(html, good) == "st_good active 1.00 4 0 0 2.5 100 % of 4 100 % of 4 –"  # no completion time here
    assert row(html, sloppy).startswith("st_sloppy flagged 0.70 4 0 1 4.0 50 % of 4 50 % of 4")
    assert f'href="/trust/labelers/{sloppy.pk}/"' in html
    assert html.index('data-user="%d"' % good.pk) < html.index('data-user="%d"' % sloppy.pk)


def page_queries(project) -> int:
    c = Client()
    c.force_login(StaffFactory(username=f"st_q{project.pk}"))
    c.get("/")  # session and the like warmed up
    with CaptureQueriesContext(connection) as ctx:
        assert c.get(f"/labeling/staff/projects/{project.pk}/").status_code == 200
    return len(ctx.captured_queries)


def test_the_statistics_take_the_same_queries_for_2_or_12_annotators(labeling_dirs):
    small, _, _ = build()
    n_small = page_queries(small)
    for model in (Annotation, Assignment):
        model.objects.all().delete()
    small.delete()
    big, _, _ = build(n_extra=10)
    assert page_queries(big) == n_small, n_small


def test_staff_page_says_why_a_batch_waits_for_checks_with_the_projects_own_settings(labeling_dirs):
    project, _, _ = build()
    project.config = {**project.config, "probation_labels": 6, "epsilon": 0.07, "verify_labels": False}
    project.save(update_fields=["config"])
    c = Client()
    c.force_login(StaffFactory(username="st_why"))
    html = c.get(f"/labeling/staff/projects/{project.pk}/").content.decode()
    why = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html.split('id="reannotation-why"', 1)[1].split("</p>", 1)[0]))
    assert "fewer than 6 of their labels confirmed" in why and "by more than 0.07" in why
    assert "second opinion" not in why
    project.config = {**project.config, "verify_labels": True}
    project.save(update_fields=["config"])
    html = c.get(f"/labeling/staff/projects/{project.pk}/").content.decode()
    assert "every label gets a second opinion" in re.sub(r"\s+", " ", html)
