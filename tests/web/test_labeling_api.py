"""Labeling REST API: permissions, bad input, idempotent answers, skip and undo, no leaks."""
from __future__ import annotations

import json
from datetime import timedelta

import pytest
from django.utils import timezone
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from labeling import answering, services, workflow
from labeling.models import Annotation, Assignment, Project
from tests.web.labeling_support import annotators, digits_project, labeling_dirs, staff  # noqa: F401

pytestmark = pytest.mark.django_db

NEXT = "/api/labeling/next/"
FORBIDDEN_KEYS = {"ground_truth", "source", "is_secured", "kind", "original_labeler", "trust", "item", "index"}


def client_for(user=None) -> APIClient:
    c = APIClient()
    if user is not None:
        c.force_authenticate(user)
    return c


def answer_url(asg_id):
    return f"/api/labeling/assignments/{asg_id}/annotation/"


@pytest.fixture
def project(labeling_dirs, annotators):
    return digits_project()


def open_assignment(user, project) -> Assignment:
    """The item ``user`` holds now (claimed from the queue if they hold none)."""
    return answering.next_assignment(user=user, project=project)


def walk_keys(obj):
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield k
            yield from walk_keys(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from walk_keys(v)


# ---- permissions -----------------------------------------------------------------------


def test_anonymous_is_refused_everywhere(project, client):
    anon = client_for()
    asg = Assignment.objects.first()
    for method, url in [("get", NEXT), ("post", answer_url(asg.pk)), ("post", "/api/labeling/undo/"),
                        ("get", f"/api/labeling/projects/{project.pk}/status/"),
                        ("get", f"/api/labeling/projects/{project.pk}/export/raw.csv")]:
        assert getattr(anon, method)(url).status_code in (401, 403), url
    assert client.get(f"/labeling/assignments/{asg.pk}/image").status_code == 302  # to the login page
    assert client.get(f"/labeling/projects/{project.pk}/annotate/").status_code == 302


def test_annotator_cannot_touch_someone_elses_assignment(project, annotators, client):
    a, b, _ = annotators
    theirs = open_assignment(b, project)
    api = client_for(a)
    r = api.post(answer_url(theirs.pk), {"label": 0}, format="json")
    assert r.status_code == 404
    assert api.post(f"/api/labeling/assignments/{theirs.pk}/skip/").status_code == 404
    assert api.post("/api/labeling/undo/", {"assignment": theirs.pk}, format="json").status_code == 404
    client.force_login(a)
    assert client.get(f"/labeling/assignments/{theirs.pk}/image").status_code == 404
    theirs.refresh_from_db()
    assert theirs.status == "open" and not Annotation.objects.filter(assignment=theirs).exists()


def test_non_annotator_user_is_refused(project):
    from tests.web.factories import UserFactory

    nobody = UserFactory()
    assert client_for(nobody).get(NEXT).status_code == 403


def test_staff_only_endpoints(project, annotators, staff):
    a = annotators[0]
    for url in [f"/api/labeling/projects/{project.pk}/metrics/", f"/api/labeling/projects/{project.pk}/export/raw.csv",
                f"/api/labeling/projects/{project.pk}/export/resolved.json"]:
        assert client_for(a).get(url).status_code == 403, url
        assert client_for(staff).get(url).status_code == 200, url
    annotator_view = client_for(a).get(f"/api/labeling/projects/{project.pk}/status/").json()
    staff_view = client_for(staff).get(f"/api/labeling/projects/{project.pk}/status/").json()
    assert "history" not in annotator_view and "labels_bought" not in annotator_view and "config" not in annotator_view
    assert staff_view["labels_bought"] == 6 and "history" in staff_view  # 6 admin-verified secured labels


def test_status_of_a_project_without_my_work_is_404(labeling_dirs, annotators):
    project = digits_project()
    from tests.web.factories import AnnotatorFactory

    outsider = AnnotatorFactory()
    assert client_for(outsider).get(f"/api/labeling/projects/{project.pk}/status/").status_code == 404


def test_token_auth(project, annotators):
    token = Token.objects.create(user=annotators[0])
    c = APIClient()
    c.credentials(HTTP_AUTHORIZATION=f"Token {token.key}")
    assert c.get(NEXT).status_code == 200
    c.credentials(HTTP_AUTHORIZATION="Token nope")
    assert c.get(NEXT).status_code in (401, 403)  # DRF: 403 when session auth comes first


def test_token_auth_answers_the_annotator_check_in_its_own_query(project, annotators):
    """The group check rides on the token lookup, and is never stale: leaving the group refuses at once."""
    from tests.web.factories import UserFactory

    a = annotators[0]
    c = APIClient()
    c.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=a).key}")
    asg = open_assignment(a, project)
    r = c.post(answer_url(asg.pk), {"label": 1}, format="json")
    assert r.status_code == 201
    held = open_assignment(a, project)
    a.groups.clear()
    assert c.get(NEXT).status_code == 403
    assert c.post(answer_url(held.pk), {"label": 1}, format="json").status_code == 403
    outsider = c.__class__()
    outsider.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=UserFactory()).key}")
    assert outsider.get(NEXT).status_code == 403
    a.is_active = False
    a.save()
    services.add_annotator(a)
    assert c.get(NEXT).status_code in (401, 403)  # inactive users are refused by the token lookup


# ---- what an annotator sees ------------------------------------------------------------


def test_next_reveals_nothing_secret(project, annotators, client):
    a = annotators[0]
    body = client_for(a).get(NEXT, {"project": project.pk}).json()
    asg = body["assignment"]
    assert asg is not None and asg["classes"] == ["0", "1", "2"]
    assert not (set(walk_keys(body)) & FORBIDDEN_KEYS)
    item = Assignment.objects.get(pk=asg["id"]).item
    assert asg["image_url"] == f"/labeling/assignments/{asg['id']}/image"
    raw = json.dumps(body)
    assert item.image.name.rsplit("/", 1)[-1] not in raw and str(project.storage_key) not in raw
    client.force_login(a)
    img = client.get(asg["image_url"])
    assert img.status_code == 200 and img["Content-Type"] == "image/png"
    assert b"".join(img.streaming_content)[:8] == b"\x89PNG\r\n\x1a\n"
    assert "file-" not in img.get("Content-Disposition", "") and item.image.name not in img.get("Content-Disposition", "")
    page = client.get(f"/labeling/projects/{project.pk}/annotate/").content.decode()
    for secret in ("ground_truth", "is_secured", "reannotation"):
        assert secret not in page


# ---- bad input -------------------------------------------------------------------------


@pytest.mark.parametrize("label", [3, -1, "cat", None, True, 1.5, [0]])
def test_invalid_label_is_a_clear_400(project, annotators, label):
    a = annotators[0]
    asg = open_assignment(a, project)
    r = client_for(a).post(answer_url(asg.pk), {"label": label}, format="json")
    assert r.status_code == 400
    assert "label must be an integer class index from 0 to 2" in r.json()["detail"]
    asg.refresh_from_db()
    assert asg.status == "open"


def test_missing_label_and_bad_seconds(project, annotators):
    a = annotators[0]
    asg = open_assignment(a, project)
    assert client_for(a).post(answer_url(asg.pk), {}, format="json").status_code == 400
    r = client_for(a).post(answer_url(asg.pk), {"label": 0, "seconds": -3}, format="json")
    assert r.status_code == 400


# ---- idempotency, skip, undo -----------------------------------------------------------


def test_double_submit_is_harmless(project, annotators):
    a = annotators[0]
    asg = open_assignment(a, project)
    api = client_for(a)
    first = api.post(answer_url(asg.pk), {"label": 1, "seconds": 2.5}, format="json")
    again = api.post(answer_url(asg.pk), {"label": 1}, format="json")
    assert first.status_code == 201 and again.status_code == 200
    assert first.json()["id"] == again.json()["id"]
    assert Annotation.objects.filter(assignment=asg).count() == 1
    other = api.post(answer_url(asg.pk), {"label": 2}, format="json")
    assert other.status_code == 409 and "undo" in other.json()["detail"]
    assert Annotation.objects.get(assignment=asg).label == 1


def test_skip_then_undo_then_answer(project, annotators):
    a = annotators[0]
    api = client_for(a)
    asg = open_assignment(a, project)
    assert api.post(f"/api/labeling/assignments/{asg.pk}/skip/").status_code == 200
    assert api.post(f"/api/labeling/assignments/{asg.pk}/skip/").status_code == 200  # harmless
    assert api.post(answer_url(asg.pk), {"label": 0}, format="json").status_code == 409
    assert api.post("/api/labeling/undo/", {}, format="json").status_code == 200
    asg.refresh_from_db()
    assert asg.status == "open"
    assert api.post(answer_url(asg.pk), {"label": 0}, format="json").status_code == 201


def test_undo_takes_back_the_last_answer_only_within_the_window(project, annotators, settings):
    a = annotators[0]
    api = client_for(a)
    asg = open_assignment(a, project)
    api.post(answer_url(asg.pk), {"label": 2}, format="json")
    r = api.post("/api/labeling/undo/", {}, format="json")
    assert r.status_code == 200 and r.json()["id"] == asg.pk
    assert not Annotation.objects.filter(assignment=asg).exists()
    assert api.get(NEXT, {"project": project.pk}).json()["assignment"]["id"] == asg.pk  # shown again
    assert api.post("/api/labeling/undo/", {}, format="json").status_code == 409  # nothing left to undo
    api.post(answer_url(asg.pk), {"label": 2}, format="json")
    Assignment.objects.filter(pk=asg.pk).update(completed_at=timezone.now() - timedelta(seconds=60))
    r = api.post("/api/labeling/undo/", {"assignment": asg.pk}, format="json")
    assert r.status_code == 409 and "too late" in r.json()["detail"]


def test_undo_refused_once_the_model_update_started(project, annotators):
    a = annotators[0]
    api = client_for(a)
    asg = open_assignment(a, project)
    api.post(answer_url(asg.pk), {"label": 0}, format="json")
    asg.batch.__class__.objects.filter(pk=asg.batch_id).update(frozen_at=timezone.now())
    r = api.post("/api/labeling/undo/", {}, format="json")
    assert r.status_code == 409 and "updating" in r.json()["detail"]


def test_last_answer_puts_the_project_in_updating_and_undo_reverts_it(project, annotators, monkeypatch,
                                                                       django_capture_on_commit_callbacks):
    sent = []
    monkeypatch.setattr(workflow, "enqueue", lambda name, *args, countdown=None: sent.append((name, args)))
    answered = 0
    with django_capture_on_commit_callbacks(execute=True):  # incl. the after-commit completion re-checks
        for k in range(6):
            user = annotators[k % 3]
            asg = answering.next_assignment(user=user, project=project)
            answering.submit_annotation(user=user, assignment_id=asg.pk, label=0)
            last, answered = asg, answered + 1
            if len(sent) == 0:
                project.refresh_from_db()
                assert project.state == Project.State.LABELING
    assert answered == 6
    assert sent == [("process_batch", (last.batch_id,))]  # exactly one loop task, sent by the batch's last answer
    project.refresh_from_db()
    assert project.state == Project.State.UPDATING
    body = client_for(last.labeler).get(NEXT, {"project": project.pk}).json()
    assert body["assignment"] is None and body["project_state"] == "updating" and "updating" in body["message"]
    answering.undo(user=last.labeler)
    project.refresh_from_db()
    assert project.state == Project.State.LABELING


# ---- schema ----------------------------------------------------------------------------


def test_openapi_schema_lists_the_labeling_api(client):
    r = client.get("/api/schema/", HTTP_ACCEPT="application/json")
    assert r.status_code == 200
    paths = json.loads(r.content)["paths"] if r["Content-Type"].startswith("application/json") else r.content.decode()
    for p in ("/api/labeling/next/", "/api/labeling/assignments/{assignment_id}/annotation/", "/api/labeling/undo/",
              "/api/labeling/projects/{project_id}/status/"):
        assert p in paths


def test_token_endpoint_and_home_page(project, annotators, staff, client):
    from tests.web.factories import PASSWORD

    r = client.post("/api/token/", {"username": "ann_a", "password": PASSWORD})
    assert r.status_code == 200 and len(r.json()["token"]) == 40
    client.force_login(annotators[0])
    home = client.get("/").content.decode()
    assert project.name in home and f"/labeling/projects/{project.pk}/annotate/" in home and "Staff page" not in home
    client.force_login(staff)
    home = client.get("/").content.decode()
    assert f"/labeling/staff/projects/{project.pk}/" in home and "New project" in home


def test_answer_payload_is_the_documented_serializer_output(project, annotators):
    """The hot path writes the answer's JSON by hand; it must stay what the schema documents."""
    from labeling.api import annotation_payload
    from labeling.serializers import AnnotationOutSerializer

    a = annotators[0]
    api = client_for(a)
    asg = open_assignment(a, project)
    # Bodies off the fast path get the serializer's rules: a word is not a number of seconds ...
    r = api.post(answer_url(asg.pk), {"label": 1, "seconds": "soon"}, format="json")
    assert r.status_code == 400 and "seconds" in r.json()["detail"]
    # ... nor an integer too large for a float (a 400, not a 500) ...
    r = api.post(answer_url(asg.pk), '{"label": 1, "seconds": 1' + "0" * 400 + "}", content_type="application/json")
    assert r.status_code == 400 and "seconds" in r.json()["detail"]
    # ... a numeric string is, and an unknown key is ignored.
    r = api.post(answer_url(asg.pk), {"label": 1, "seconds": "1.5", "x": 1}, format="json")
    assert r.status_code == 201, r.content
    stored = Annotation.objects.get(assignment=asg)
    assert stored.seconds == 1.5 and r.json() == AnnotationOutSerializer(stored).data == annotation_payload(stored)
    asg = open_assignment(a, project)  # the fast path, with an int number of seconds
    r = api.post(answer_url(asg.pk), {"label": 0, "seconds": 2}, format="json")
    assert r.status_code == 201, r.content
    stored = Annotation.objects.get(assignment=asg)
    assert stored.seconds == 2.0 and r.json() == AnnotationOutSerializer(stored).data == annotation_payload(stored)


def test_a_flagged_or_suspended_annotator_is_told_why_there_is_no_work(project, annotators):
    a = annotators[0]
    c = client_for(a)
    asg = open_assignment(a, project)
    answering.submit_annotation(user=a, assignment_id=asg.pk, label=asg.item.ground_truth)  # they worked here
    services.set_labeler_status(user=a, flagged=True)  # their open work goes to others
    body = c.get(f"/api/labeling/next/?project={project.pk}").json()
    assert body.get("assignment") is None and "double-checking some of your recent answers" in body["message"]
    services.set_labeler_status(user=a, flagged=False, suspended=True)
    body = c.get(f"/api/labeling/next/?project={project.pk}").json()
    assert body.get("assignment") is None and "paused for a review" in body["message"]
    b, c = annotators[1:]  # an active annotator who finds every item taken sees the usual message
    Assignment.objects.filter(batch__project=project, status="queued").update(
        labeler=c, status="open", lease_until=timezone.now() + timedelta(minutes=5))
    body = client_for(b).get(f"/api/labeling/next/?project={project.pk}").json()
    assert body["assignment"] is None and "every image of this batch is taken" in body["message"]
    assert "double-checking" not in body["message"] and "paused" not in body["message"]
