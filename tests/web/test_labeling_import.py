"""Importing images: validation per file, zip-slip, bombs, atomicity, the staff page, the demo command."""
from __future__ import annotations

import io
import re
import zipfile
from pathlib import Path

import numpy as np
import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.management import call_command
from PIL import Image

from labeling import importers
from labeling.models import Assignment, Item, Project
from tests.web.factories import ProjectFactory, png_bytes
from tests.web.labeling_support import annotators, labeling_dirs, staff  # noqa: F401

pytestmark = pytest.mark.django_db


def make_zip(entries: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return buf.getvalue()


@pytest.fixture
def project(labeling_dirs):
    return ProjectFactory(classes=["cat", "dog"])


def media_files(media: Path) -> list[Path]:
    return [p for p in media.rglob("*") if p.is_file()]


def test_zip_with_class_folders_imports_everything_with_ground_truth(project, labeling_dirs):
    media, _ = labeling_dirs
    data = make_zip({"set/cat/a.png": png_bytes(value=1), "set/dog/b.jpg": _jpeg(), "set/cat/c.png": png_bytes(value=3),
                     "set/README.txt": b"hello", "__MACOSX/set/._a.png": b"junk"})
    report = importers.import_zip(project=project, file=io.BytesIO(data))
    assert report.ok and report.imported == 3 and not report.errors
    assert {n for n, _ in report.skipped} == {"set/README.txt", "__MACOSX/set/._a.png"}
    items = list(Item.objects.filter(project=project).order_by("index"))
    assert [i.index for i in items] == [0, 1, 2]
    assert sorted((i.source, i.ground_truth) for i in items) == [("set/cat/a.png", 0), ("set/cat/c.png", 0),
                                                                  ("set/dog/b.jpg", 1)]
    for item in items:  # re-encoded PNGs under random names, nothing else left behind
        path = media / item.image.name
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert re.fullmatch(r"labeling/[0-9a-f-]{36}/[0-9a-f]{32}\.png", item.image.name)
    assert len(media_files(media)) == 3


def test_flat_zip_has_no_ground_truth(project):
    report = importers.import_zip(project=project, file=io.BytesIO(make_zip({"1.png": png_bytes(), "2.png": png_bytes(value=2)})))
    assert report.imported == 2
    assert set(Item.objects.values_list("ground_truth", flat=True)) == {None}


@pytest.mark.parametrize("name,data,reason", [
    ("../evil.png", png_bytes(), "zip-slip"),
    ("/abs/evil.png", png_bytes(), "zip-slip"),
    ("cat/../../evil.png", png_bytes(), "zip-slip"),
    ("cat/fake.png", b"this is not an image at all", "not an image"),
    ("cat/trunc.png", png_bytes(size=64)[:60], "corrupt"),
    ("horse/h.png", png_bytes(), "unknown class 'horse'"),
    ("a/b/c/deep.png", png_bytes(), "nested too deeply"),
])
def test_bad_files_are_refused_with_a_reason_and_nothing_is_imported(project, labeling_dirs, name, data, reason):
    media, _ = labeling_dirs
    archive = make_zip({"cat/ok.png": png_bytes(), name: data})
    report = importers.import_zip(project=project, file=io.BytesIO(archive))
    assert not report.ok and report.imported == 0
    assert [n for n, _ in report.errors] == [name]
    assert reason in report.errors[0][1]
    assert not Item.objects.exists() and media_files(media) == []  # atomic: nothing written


def test_skip_invalid_imports_the_rest_and_lists_exactly_what_was_refused(project):
    archive = make_zip({"cat/ok.png": png_bytes(), "dog/ok.png": png_bytes(value=5), "dog/bad.png": b"nope",
                        "../x.png": png_bytes()})
    report = importers.import_zip(project=project, file=io.BytesIO(archive), strict=False)
    assert report.ok and report.imported == 2
    assert sorted(n for n, _ in report.errors) == ["../x.png", "dog/bad.png"]
    assert Item.objects.count() == 2


def test_too_many_bytes_and_pixels(project, settings, monkeypatch):
    settings.LABELING_MAX_IMAGE_BYTES = 200
    big = png_bytes(size=64)
    report = importers.import_zip(project=project, file=io.BytesIO(make_zip({"cat/big.png": big})))
    assert "too large" in report.errors[0][1] and "bytes" in report.errors[0][1]
    settings.LABELING_MAX_IMAGE_BYTES = 10**6
    settings.LABELING_MAX_IMAGE_PIXELS = 1000
    report = importers.import_zip(project=project, file=io.BytesIO(make_zip({"cat/big.png": big})))
    assert "too large" in report.errors[0][1] and "pixels" in report.errors[0][1]


def test_decompression_bomb_is_refused(project, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # Pillow raises DecompressionBombError above 2x
    report = importers.import_zip(project=project, file=io.BytesIO(make_zip({"cat/bomb.png": png_bytes(size=64)})))
    assert report.imported == 0 and "decompression bomb" in report.errors[0][1]
    warn = png_bytes(size=40)  # 1600 pixels: between 1x and 2x the limit -> a warning, refused too
    report = importers.import_zip(project=project, file=io.BytesIO(make_zip({"cat/warn.png": warn})))
    assert "decompression bomb" in report.errors[0][1]


def test_empty_and_malformed_archives(project):
    with pytest.raises(importers.ImportFailed, match="no images found"):
        importers.import_zip(project=project, file=io.BytesIO(make_zip({})))
    with pytest.raises(importers.ImportFailed, match="no images found"):
        importers.import_zip(project=project, file=io.BytesIO(make_zip({"notes.txt": b"x"})))
    with pytest.raises(importers.ImportFailed, match="not a valid zip"):
        importers.import_zip(project=project, file=io.BytesIO(b"PK\x03\x04 definitely broken"))


def test_failure_while_committing_leaves_no_files_and_no_rows(project, labeling_dirs, monkeypatch):
    media, _ = labeling_dirs

    def boom(*args, **kwargs):
        raise RuntimeError("database went away")

    monkeypatch.setattr(Item.objects, "bulk_create", boom)
    with pytest.raises(RuntimeError):
        importers.import_zip(project=project, file=io.BytesIO(make_zip({"cat/a.png": png_bytes()})))
    assert not Item.objects.exists() and media_files(media) == []


def test_only_draft_projects_accept_images(project):
    Project.objects.filter(pk=project.pk).update(state=Project.State.LABELING)
    project.refresh_from_db()
    with pytest.raises(importers.ImportFailed, match="draft"):
        importers.import_zip(project=project, file=io.BytesIO(make_zip({"cat/a.png": png_bytes()})))


def test_folder_import_stays_inside_the_import_roots(project, settings, tmp_path):
    root = tmp_path / "imports"
    (root / "ds" / "dog").mkdir(parents=True)
    (root / "ds" / "dog" / "d.png").write_bytes(png_bytes())
    (root / "ds" / "c.png").write_bytes(png_bytes(value=9))
    settings.LABELING_IMPORT_ROOTS = [root]
    report = importers.import_folder(project=project, path=root / "ds")
    assert report.imported == 2 and sorted(Item.objects.values_list("ground_truth", flat=True), key=str) == [1, None]
    with pytest.raises(importers.ImportFailed, match="outside the allowed import folders"):
        importers.import_folder(project=project, path=tmp_path)
    with pytest.raises(importers.ImportFailed, match="outside the allowed import folders"):
        importers.import_folder(project=project, path=root / ".." / "..")


def test_npz_dataset_import(project, settings, tmp_path):
    settings.LABELING_IMPORT_ROOTS = [tmp_path]
    x = np.random.default_rng(0).integers(0, 256, (10, 6, 6, 3), dtype=np.uint8)
    y = np.array([0, 1] * 5)
    np.savez(tmp_path / "tiny.npz", x=x, y=y, classes=np.array(["cat", "dog"]))
    report = importers.import_dataset(project=project, spec=str(tmp_path / "tiny.npz"), pool_size=8, upscale=2)
    assert report.imported == 8
    item = Item.objects.first()
    assert (item.width, item.height) == (12, 12) and item.ground_truth in (0, 1)
    with pytest.raises(importers.ImportFailed, match="cannot load"):
        importers.import_dataset(project=project, spec=str(tmp_path / "missing.npz"), check_roots=False)


def test_staff_import_page(project, staff, annotators, client):
    url = f"/labeling/staff/projects/{project.pk}/import/"
    client.force_login(annotators[0])
    assert client.post(url, {}).status_code == 403  # not staff: the 403 page (not the admin login)
    client.force_login(staff)
    bad = client.post(url, {"archive": SimpleUploadedFile("x.zip", b"not a zip")})
    assert bad.status_code == 400 and b"not a valid zip" in bad.content
    single = client.post(url, {"archive": SimpleUploadedFile("cat.png", png_bytes())})  # one image, not a zip
    assert single.status_code == 400 and b"this is a single image; put the images in a .zip" in single.content
    assert b"data-focus-on-load" in single.content  # the page opens on the error, at the import section
    slip = client.post(url, {"archive": SimpleUploadedFile("x.zip", make_zip({"../../x.png": png_bytes()}))})
    assert slip.status_code == 400 and b"zip-slip" in slip.content
    assert slip.content.count(b"1 refused") == 1  # the summary once, in the import section (not also on top)
    none = client.post(url, {})
    assert none.status_code == 400 and b"exactly one source" in none.content
    ok = client.post(url, {"archive": SimpleUploadedFile("x.zip", make_zip({"cat/a.png": png_bytes()}))})
    assert ok.status_code == 302 and Item.objects.count() == 1
    page = client.get(f"/labeling/staff/projects/{project.pk}/")
    assert page.status_code == 200 and b"Start labeling" in page.content


def test_staff_creates_and_starts_a_project(staff, annotators, client, labeling_dirs):
    client.force_login(staff)
    r = client.post("/labeling/staff/projects/new/", {"name": "p", "classes": "cat, dog", "config": '{"strategy": "nope"}'})
    assert r.status_code == 200 and b"strategy must be one of" in r.content
    r = client.post("/labeling/staff/projects/new/", {"name": "p", "classes": "cat\ndog",
                                                       "config": '{"initial_size": 2, "secured_size": 0}'})
    project = Project.objects.get(name="p")
    assert r.status_code == 302 and project.classes == ["cat", "dog"] and project.config["initial_size"] == 2
    importers.import_zip(project=project, file=io.BytesIO(make_zip({f"cat/{k}.png": png_bytes(value=k) for k in range(4)})))
    r = client.post(f"/labeling/staff/projects/{project.pk}/start/", follow=True)
    project.refresh_from_db()
    assert project.state == "draft" and b"choose its members first" in r.content  # nobody to label it yet
    page = client.get(f"/labeling/staff/projects/{project.pk}/").content.decode()
    assert 'id="members-form"' in page and all(a.username in page for a in annotators)
    r = client.post(f"/labeling/staff/projects/{project.pk}/members/", {"members": [a.pk for a in annotators[:2]]})
    assert r.status_code == 302 and sorted(project.members.values_list("pk", flat=True)) == [a.pk for a in annotators[:2]]
    r = client.post(f"/labeling/staff/projects/{project.pk}/start/")
    project.refresh_from_db()
    assert r.status_code == 302 and project.state == "labeling"
    assert Assignment.objects.filter(batch__project=project).count() == 2


def test_load_demo_project_command(labeling_dirs):
    call_command("load_demo_project", "--pool-size", "40", "--secured-size", "5", "--initial-size", "6")
    project = Project.objects.get(name="Digits demo")
    assert project.state == "labeling" and project.items.count() == 40
    assert project.items.filter(is_secured=True).count() == 5
    assert project.items.filter(ground_truth__isnull=True).count() == 0
    assert sorted(project.members.values_list("username", flat=True)) == ["alice", "bob", "carol"]
    assert set(Assignment.objects.filter(batch__project=project).values_list("status", flat=True)) == {"queued"}
    first = project.items.first()
    assert (first.width, first.height) == (64, 64)
    call_command("load_demo_project")  # idempotent
    assert Project.objects.count() == 1


def _jpeg() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (5, 7), (200, 10, 10)).save(buf, format="JPEG")
    return buf.getvalue()
