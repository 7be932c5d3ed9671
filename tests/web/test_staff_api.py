"""The staff REST API: create, fill, start, pause/resume and read a project; and README's staff script.

Who may call what is the permission matrix's job (``test_permission_matrix.py``); fuzzing is
``test_api_fuzz.py``. Here: what each endpoint does, its validation and its refusals.
"""
from __future__ import annotations

import io
import os
import re
import subprocess
import sys
import zipfile

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from labeling import answering
from labeling.models import Assignment, Item, Project
from tests.conftest import REPO_ROOT
from tests.web.factories import PASSWORD, AnnotatorFactory, ProjectFactory, StaffFactory, png_bytes
from tests.web.labeling_support import DEFAULT_CONFIG, annotators, answer_open, digits_project, labeling_dirs  # noqa: F401

pytestmark = pytest.mark.django_db

API = "/api/labeling/projects/"
SMALL = {**DEFAULT_CONFIG, "secured_size": 4, "initial_size": 6, "batch_size": 6}


@pytest.fixture
def staff_api(labeling_dirs):
    client = APIClient()
    staff = StaffFactory(username="api_boss")
    client.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=staff).key}")
    return client


def make_zip(entries: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return buf.getvalue()


def create(client, **fields):
    body = {"name": "api project", "classes": ["cat", "dog"], "config": SMALL, **fields}
    return client.post(API, body, format="json")


# ---- create ----------------------------------------------------------------------------------


def test_create_with_settings_and_read_it_back(staff_api):
    r = create(staff_api, description="Cats left, dogs right.", classes=[" cat", "dog "])
    assert r.status_code == 201, r.content
    body = r.json()
    project = Project.objects.get(pk=body["id"])
    assert project.classes == ["cat", "dog"] and project.description == "Cats left, dogs right."
    assert project.config["secured_size"] == 4 and project.config["strategy"] == "robust"
    assert project.config["epsilon"] == 0.05  # defaults filled in, as the page does
    assert body["state"] == "draft" and body["paused"] is False and body["n_items"] == 0
    assert body["open_batch"] is None
    assert staff_api.get(f"{API}{project.pk}/").json() == body
    listed = staff_api.get(API).json()
    assert [(p["id"], p["name"], p["n_items"]) for p in listed] == [(project.pk, "api project", 0)]


@pytest.mark.parametrize("fields, words", [
    ({"config": {"strategy": "nope"}}, "config: strategy must be one of"),
    ({"config": {"batch_size": 0}}, "config: batch_size must be an integer in 1..100000, got 0"),
    ({"config": {"colour": "red"}}, "config: unknown setting(s) ['colour']"),
    ({"config": "robust"}, "config:"),
    ({"classes": ["cat"]}, "classes:"),
    ({"classes": ["cat", "cat"]}, "classes: class names must be unique"),
    ({"classes": ["a/b", "c"]}, "invalid class name"),
    ({"name": ""}, "name:"),
])
def test_create_refuses_bad_settings_with_a_reason(staff_api, fields, words):
    r = create(staff_api, **fields)
    assert r.status_code == 400, r.content
    assert words in r.json()["detail"], r.json()
    assert not Project.objects.exists()


def test_create_refuses_a_duplicate_name(staff_api):
    assert create(staff_api).status_code == 201
    r = create(staff_api)
    assert r.status_code == 400 and "name" in r.json()["detail"] and "already exists" in r.json()["detail"]
    assert Project.objects.count() == 1


# ---- images ----------------------------------------------------------------------------------


def test_upload_files_imports_them_and_reports(staff_api, labeling_dirs):
    project = ProjectFactory(classes=["cat", "dog"])
    files = [SimpleUploadedFile(f"{k}.png", png_bytes(value=k)) for k in range(3)]
    r = staff_api.post(f"{API}{project.pk}/images/", {"files": files}, format="multipart")
    assert r.status_code == 201, r.content
    body = r.json()
    assert body["ok"] and body["imported"] == 3 and body["n_items"] == 3 and body["errors"] == []
    assert sorted(Item.objects.values_list("source", flat=True)) == ["0.png", "1.png", "2.png"]
    assert not Item.objects.filter(ground_truth__isnull=False).exists()  # no folders, no classes


def test_upload_is_strict_by_default_and_lists_each_refused_file(staff_api, labeling_dirs):
    project = ProjectFactory(classes=["cat", "dog"])
    files = lambda: [SimpleUploadedFile("good.png", png_bytes()),  # noqa: E731
                     SimpleUploadedFile("broken.png", b"\x89PNG not really"),
                     SimpleUploadedFile("notes.txt", b"hello")]
    r = staff_api.post(f"{API}{project.pk}/images/", {"files": files()}, format="multipart")
    assert r.status_code == 400, r.content
    body = r.json()
    assert body["imported"] == 0 and not Item.objects.exists()
    assert [e["file"] for e in body["errors"]] == ["broken.png"] and "not an image" in body["errors"][0]["reason"]
    assert body["skipped"] == [{"file": "notes.txt", "reason": "not an image file name (extension)"}]
    assert "skip_invalid" in body["detail"]
    r = staff_api.post(f"{API}{project.pk}/images/", {"files": files(), "skip_invalid": "true"}, format="multipart")
    assert r.status_code == 201 and r.json()["imported"] == 1 and len(r.json()["errors"]) == 1
    assert Item.objects.count() == 1


def test_upload_a_zip_with_class_folders_gives_ground_truth(staff_api, labeling_dirs):
    project = ProjectFactory(classes=["cat", "dog"])
    archive = make_zip({"cat/a.png": png_bytes(value=1), "dog/b.png": png_bytes(value=2)})
    r = staff_api.post(f"{API}{project.pk}/images/", {"archive": SimpleUploadedFile("x.zip", archive)},
                       format="multipart")
    assert r.status_code == 201, r.content
    assert sorted(Item.objects.values_list("source", "ground_truth")) == [("cat/a.png", 0), ("dog/b.png", 1)]
    slip = make_zip({"../../evil.png": png_bytes()})
    r = staff_api.post(f"{API}{project.pk}/images/", {"archive": SimpleUploadedFile("x.zip", slip)},
                       format="multipart")
    assert r.status_code == 400 and "zip-slip" in r.json()["errors"][0]["reason"]
    r = staff_api.post(f"{API}{project.pk}/images/", {"archive": SimpleUploadedFile("x.zip", b"nope")},
                       format="multipart")
    assert r.status_code == 400 and "not a valid zip" in r.json()["detail"]


def test_upload_needs_exactly_one_source(staff_api, labeling_dirs):
    project = ProjectFactory(classes=["cat", "dog"])
    r = staff_api.post(f"{API}{project.pk}/images/", {}, format="multipart")
    assert r.status_code == 400 and "exactly one" in r.json()["detail"]
    r = staff_api.post(f"{API}{project.pk}/images/", {"skip_invalid": "yes"}, format="json")
    assert r.status_code == 415 and r.json()["detail"]


def test_import_a_data_set_and_a_folder(staff_api, labeling_dirs, settings, tmp_path):
    project = ProjectFactory(classes=["0", "1"])
    r = staff_api.post(f"{API}{project.pk}/import/", {"dataset": "digits", "pool_size": 12, "upscale": 2},
                       format="json")
    assert r.status_code == 201, r.content
    assert r.json()["imported"] == 12 and Item.objects.filter(ground_truth__isnull=False).count() == 12
    assert Item.objects.first().width == 16  # 8 px digits, upscaled twice
    folder = tmp_path / "imports" / "pets"
    (folder / "1").mkdir(parents=True)
    (folder / "1" / "x.png").write_bytes(png_bytes())
    settings.LABELING_IMPORT_ROOTS = [tmp_path / "imports"]
    r = staff_api.post(f"{API}{project.pk}/import/", {"folder": str(folder)}, format="json")
    assert r.status_code == 201 and r.json()["n_items"] == 13
    r = staff_api.post(f"{API}{project.pk}/import/", {"folder": str(tmp_path)}, format="json")
    assert r.status_code == 400 and "outside the allowed import folders" in r.json()["detail"]
    r = staff_api.post(f"{API}{project.pk}/import/", {"folder": "x", "dataset": "digits"}, format="json")
    assert r.status_code == 400 and "exactly one" in r.json()["detail"]
    r = staff_api.post(f"{API}{project.pk}/import/", {"dataset": "digits", "upscale": 99}, format="json")
    assert r.status_code == 400 and "upscale" in r.json()["detail"]


# ---- start, pause, resume --------------------------------------------------------------------


def test_start_refuses_a_pool_the_settings_would_use_up(staff_api, labeling_dirs):
    project = Project.objects.get(pk=create(staff_api).json()["id"])
    r = staff_api.post(f"{API}{project.pk}/start/")
    assert r.status_code == 409 and "no items" in r.json()["detail"]
    files = [SimpleUploadedFile(f"{k}.png", png_bytes(value=k)) for k in range(10)]
    assert staff_api.post(f"{API}{project.pk}/images/", {"files": files}, format="multipart").status_code == 201
    r = staff_api.post(f"{API}{project.pk}/start/")
    assert r.status_code == 409, r.content
    assert "the pool has 10 images" in r.json()["detail"] and "secured set (4)" in r.json()["detail"]
    project.refresh_from_db()
    assert project.state == "draft" and not Assignment.objects.exists()


def test_start_then_pause_and_resume_what_annotators_get(staff_api, labeling_dirs, annotators):
    project = Project.objects.get(pk=create(staff_api).json()["id"])
    files = [SimpleUploadedFile(f"{k}.png", png_bytes(value=k)) for k in range(20)]
    assert staff_api.post(f"{API}{project.pk}/images/", {"files": files}, format="multipart").status_code == 201
    r = staff_api.put(f"{API}{project.pk}/members/", {"members": [a.username for a in annotators]}, format="json")
    assert r.status_code == 200, r.content
    r = staff_api.post(f"{API}{project.pk}/start/")
    assert r.status_code == 200, r.content
    body = r.json()
    assert body["project"]["state"] == "labeling" and body["batch"]["iteration"] == 0
    assert body["batch"]["total"] == Assignment.objects.count() > 0
    assert staff_api.post(f"{API}{project.pk}/start/").status_code == 409  # already started
    late = staff_api.post(f"{API}{project.pk}/images/", {"files": [SimpleUploadedFile("z.png", png_bytes())]},
                          format="multipart")
    assert late.status_code == 409 and "draft" in late.json()["detail"]

    annotator = APIClient()
    annotator.force_authenticate(annotators[0])
    shown = annotator.get("/api/labeling/next/").json()["assignment"]
    assert shown is not None

    r = staff_api.post(f"{API}{project.pk}/pause/")
    assert r.status_code == 200 and r.json()["paused"] is True and r.json()["paused_at"]
    assert staff_api.post(f"{API}{project.pk}/pause/").json()["paused"] is True  # idempotent
    for user in annotators:
        assert answering.next_assignment(user=user) is None
    nxt = annotator.get(f"/api/labeling/next/?project={project.pk}").json()
    assert nxt["assignment"] is None and "paused" in nxt["message"]
    assert annotator.get(f"/api/labeling/projects/{project.pk}/status/").json()["paused"] is True
    # the answer to the image already on screen is kept
    kept = annotator.post(f"/api/labeling/assignments/{shown['id']}/annotation/", {"label": 1}, format="json")
    assert kept.status_code == 201

    r = staff_api.post(f"{API}{project.pk}/resume/")
    assert r.status_code == 200 and r.json()["paused"] is False and r.json()["paused_at"] is None
    assert staff_api.post(f"{API}{project.pk}/resume/").status_code == 200  # idempotent
    assert annotator.get(f"/api/labeling/next/?project={project.pk}").json()["assignment"] is not None


def test_only_a_labeling_project_can_be_paused(staff_api, labeling_dirs):
    project = ProjectFactory()
    r = staff_api.post(f"{API}{project.pk}/pause/")
    assert r.status_code == 409 and "only a project that is labeling" in r.json()["detail"]
    assert staff_api.post(f"{API}999999/pause/").status_code == 404


# ---- reads -----------------------------------------------------------------------------------


def test_batches_and_annotator_progress(staff_api, labeling_dirs, annotators):
    project = digits_project(name="reads", n=40)
    answer_open(project, wrong_for=("ann_b",))
    batches = staff_api.get(f"{API}{project.pk}/batches/").json()
    assert len(batches) == 1
    counts = batches[0]["assignments"]
    assert batches[0]["iteration"] == 0 and counts["open"] == 0
    assert counts["done"] == counts["total"] == Assignment.objects.filter(batch__project=project).count()
    kinds = batches[0]["kinds"]
    assert kinds["first_label"] == 6 and kinds["first_label"] + kinds["secured"] == counts["total"]

    rows = {r["username"]: r for r in staff_api.get(f"{API}{project.pk}/annotators/").json()}
    assert set(rows) == {"ann_a", "ann_b", "ann_c"}
    for name, row in rows.items():
        mine = Assignment.objects.filter(batch__project=project, labeler__username=name)
        assert row["assigned"] == row["done"] == mine.count() == row["batch_finished"] == row["batch_assigned"]
        assert row["ground_truth_n"] == row["done"]  # every digit has a ground truth
        assert row["median_seconds"] == 0.5 and row["standing"] == "active"
    assert rows["ann_a"]["ground_truth_accuracy"] == 1.0 and rows["ann_b"]["ground_truth_accuracy"] == 0.0
    detail = staff_api.get(f"{API}{project.pk}/").json()
    assert detail["n_items"] == 40 and detail["n_ground_truth"] == 40
    assert detail["labels_bought"] == sum(r["done"] for r in rows.values()) + Item.objects.filter(
        project=project, is_secured=True, ground_truth__isnull=False).count()


def test_agreement_counts_only_verified_labels(labeling_dirs, annotators):
    """A secured item with a known label: a labeler who gave it agrees (1.0) or not (0.0)."""
    from labeling import staff_selectors
    from tests.web.factories import AssignmentFactory, ItemFactory, QueryBatchFactory
    from labeling.models import Annotation

    project = ProjectFactory(state=Project.State.LABELING)
    batch = QueryBatchFactory(project=project)
    secured = ItemFactory(project=project, is_secured=True, ground_truth=1)
    plain = ItemFactory(project=project, ground_truth=0)
    a, b = annotators[:2]
    for user, item, label in ((a, secured, 1), (b, secured, 0), (a, plain, 2)):
        kind = Assignment.Kind.SECURED if item.is_secured else Assignment.Kind.FIRST_LABEL
        asg = AssignmentFactory(batch=batch, item=item, labeler=user, kind=kind, status=Assignment.Status.DONE)
        Annotation.objects.create(assignment=asg, label=label)
    rows = {r["username"]: r for r in staff_selectors.annotator_progress(project)}
    assert (rows["ann_a"]["agreement"], rows["ann_a"]["agreement_n"]) == (1.0, 1)  # its own first label: not counted
    assert (rows["ann_b"]["agreement"], rows["ann_b"]["agreement_n"]) == (0.0, 1)
    assert (rows["ann_a"]["ground_truth_accuracy"], rows["ann_a"]["ground_truth_n"]) == (0.5, 2)


# ---- README's script -------------------------------------------------------------------------

BEGIN, END = "<!-- staff-api-script:begin -->", "<!-- staff-api-script:end -->"


def readme_script() -> str:
    text = (REPO_ROOT / "README.md").read_text()
    assert text.count(BEGIN) == 1 and text.count(END) == 1, "README.md must hold the staff script once"
    block = text.split(BEGIN, 1)[1].split(END, 1)[0]
    match = re.fullmatch(r"\s*```python\n(.*?)```\s*", block, flags=re.S)
    assert match, "the staff script in README.md must be one ```python block between the markers"
    return match.group(1)


@pytest.mark.django_db(transaction=True)
def test_readme_staff_script_creates_fills_and_starts_a_project(live_server, labeling_dirs, tmp_path, settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    StaffFactory(username="readme_staff")
    for name in ("ann_1", "ann_2", "ann_3"):
        AnnotatorFactory(username=name)
    images = tmp_path / "images"
    images.mkdir()
    for k in range(40):
        (images / f"{k:02d}.png").write_bytes(png_bytes(size=16, value=k))
    script = tmp_path / "staff_script.py"
    script.write_text(readme_script())
    env = {**os.environ, "ROBUSTAL_URL": live_server.url, "IMAGES": str(images),
           "ROBUSTAL_USER": "readme_staff", "ROBUSTAL_PASSWORD": PASSWORD, "ANNOTATORS": "ann_1,ann_2,ann_3"}
    run = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    project = Project.objects.get(name="digits from a script")
    assert project.state == Project.State.LABELING and project.items.count() == 40
    assert project.classes == ["0", "1", "2"] and project.config["secured_size"] == 20
    assert "40 image(s) imported" in run.stdout
    assert f"project {project.pk} is labeling: batch 0 with " in run.stdout
    assert sorted(project.members.values_list("username", flat=True)) == ["ann_1", "ann_2", "ann_3"]
    assert Assignment.objects.filter(batch__project=project, status="queued").exists()  # the members' queue
    again = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=120)
    assert again.returncode != 0 and "400 name: Project with this Name already exists." in again.stderr, again.stderr



def test_staff_page_pause_button(staff_api, labeling_dirs, annotators, client):
    """The staff project page pauses and resumes what the API does, and says so."""
    project = Project.objects.get(pk=create(staff_api).json()["id"])
    files = [SimpleUploadedFile(f"{k}.png", png_bytes(value=k)) for k in range(20)]
    staff_api.post(f"{API}{project.pk}/images/", {"files": files}, format="multipart")
    staff_api.put(f"{API}{project.pk}/members/", {"members": [a.username for a in annotators]}, format="json")
    page = f"/labeling/staff/projects/{project.pk}/"
    client.force_login(StaffFactory())
    r = client.post(f"{page}pause/", {"action": "pause"}, follow=True)
    assert "only a project that is labeling can be paused" in r.content.decode()  # a draft: refused, said
    assert staff_api.post(f"{API}{project.pk}/start/").status_code == 200
    r = client.post(f"{page}pause/", {"action": "pause"}, follow=True)
    html = r.content.decode()
    assert "Paused: annotators get no new images" in html and "Resume handing out work" in html
    project.refresh_from_db()
    assert project.paused_at is not None
    assert all(answering.next_assignment(user=u) is None for u in annotators)
    r = client.post(f"{page}pause/", {"action": "unpause"}, follow=True)
    assert "Work is handed out again." in r.content.decode()
    project.refresh_from_db()
    assert project.paused_at is None and answering.next_assignment(user=annotators[0]) is not None


@pytest.mark.parametrize("setting", [{"redundancy": 3, "defenses": False}])
def test_simulator_only_settings_are_refused_with_the_reason(staff_api, setting):
    r = create(staff_api, config=setting)
    assert r.status_code == 400 and "manage.py simulate" in r.json()["detail"]
    assert not Project.objects.exists()
