"""Hostile uploads through the real import path (the staff upload view and ``labeling.importers``).

Each hostile file is built here: zip-slip and absolute member paths, zip bombs (huge members, a
lying size header, too many members, too much unpacked), a decompression-bomb PNG (huge declared
dimensions), truncated PNG/JPEG, HTML and SVG named .png, an unknown class folder, an empty zip
and a non-zip. Every refusal names the file and the reason; a refused import leaves no Item rows
and no files behind; ``skip invalid`` imports the rest and lists exactly what it refused.
"""
from __future__ import annotations

import io
import struct
import zipfile
import zlib
from pathlib import Path

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client
from PIL import Image

from labeling import importers
from labeling.models import Item, Project
from tests.web.factories import ProjectFactory, StaffFactory, png_bytes
from tests.web.labeling_support import labeling_dirs  # noqa: F401

pytestmark = pytest.mark.django_db


def make_zip(entries: dict[str, bytes], compression=zipfile.ZIP_DEFLATED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=compression) as zf:
        for name, data in entries.items():
            zf.writestr(zipfile.ZipInfo(name), data, compress_type=compression)
    return buf.getvalue()


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_with_declared_size(width: int, height: int) -> bytes:
    """A well-formed PNG header declaring ``width`` x ``height`` pixels, with one tiny data chunk."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grey
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", zlib.compress(b"\x00" * 64))
            + png_chunk(b"IEND", b""))


def jpeg_bytes() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (32, 32), (200, 30, 30)).save(buf, format="JPEG")
    return buf.getvalue()


HTML = b"<!doctype html><html><body><script>alert(document.cookie)</script></body></html>"
SVG = (b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg" width="10" height="10">'
       b'<script>alert(1)</script></svg>')

# name in the zip -> (bytes, a words of the expected per-file reason)
HOSTILE = {
    "../../evil.png": (png_bytes(value=1), "zip-slip"),
    "cat/../../../etc/evil.png": (png_bytes(value=2), "zip-slip"),
    "/etc/absolute.png": (png_bytes(value=3), "absolute path"),
    "C:/windows/drive.png": (png_bytes(value=4), "absolute path"),
    "bomb.png": (png_with_declared_size(60_000, 60_000), "image too large (decompression bomb"),
    "truncated.png": (png_bytes(size=64, value=5)[:150], "corrupt or truncated"),
    "truncated.jpg": (jpeg_bytes()[:200], "corrupt or truncated"),
    "page.png": (HTML, "not an image"),
    "drawing.png": (SVG, "not an image"),
    "empty.png": (b"", "empty file"),
    "wolf/w.png": (png_bytes(value=6), "unknown class 'wolf'"),
    "cat/deep/er.png": (png_bytes(value=7), "nested too deeply"),
}
VALID = {"cat/ok1.png": png_bytes(value=10), "dog/ok2.jpg": jpeg_bytes()}


@pytest.fixture
def project(labeling_dirs):
    return ProjectFactory(classes=["cat", "dog"])


def media_files(media: Path) -> list[Path]:
    return [p for p in media.rglob("*") if p.is_file()]


def assert_nothing_left(project: Project, media: Path) -> None:
    assert Item.objects.filter(project=project).count() == 0
    assert media_files(media) == [], "a refused import left files behind"
    project.refresh_from_db()
    assert project.state == Project.State.DRAFT


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_each_hostile_member_is_refused_with_its_reason(name, project, labeling_dirs):
    media, _ = labeling_dirs
    data, reason = HOSTILE[name]
    report = importers.import_zip(project=project, file=io.BytesIO(make_zip({name: data, **VALID})))
    assert report.imported == 0 and not report.ok
    assert report.errors == [(name, report.errors[0][1])], report.errors
    assert reason in report.errors[0][1], report.errors
    assert_nothing_left(project, media)


def test_strict_import_lists_every_hostile_file_and_imports_nothing(project, labeling_dirs):
    media, _ = labeling_dirs
    report = importers.import_zip(project=project, file=io.BytesIO(make_zip(
        {**{n: d for n, (d, _) in HOSTILE.items()}, **VALID})))
    assert report.imported == 0
    assert {n for n, _ in report.errors} == set(HOSTILE)
    for name, why in report.errors:
        assert HOSTILE[name][1] in why, (name, why)
    assert_nothing_left(project, media)


def test_skip_invalid_imports_the_valid_files_and_reports_exactly_what_it_refused(project, labeling_dirs):
    media, _ = labeling_dirs
    report = importers.import_zip(project=project, strict=False, file=io.BytesIO(make_zip(
        {**{n: d for n, (d, _) in HOSTILE.items()}, **VALID, "notes.txt": b"hi"})))
    assert report.ok and report.imported == 2
    assert {n for n, _ in report.errors} == set(HOSTILE)
    assert report.skipped == [("notes.txt", "not an image file name (extension)")]
    assert sorted(Item.objects.filter(project=project).values_list("source", "ground_truth")) == [
        ("cat/ok1.png", 0), ("dog/ok2.jpg", 1)]
    files = media_files(media)
    assert len(files) == 2 and all(f.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for f in files)
    assert not any("evil" in str(f) or "etc" in f.parts for f in media.rglob("*"))  # nothing outside its folder


# ---- zip bombs ------------------------------------------------------------------------------


def test_zip_bomb_member_bigger_than_the_limit_is_refused_unread(project, labeling_dirs, settings):
    media, _ = labeling_dirs
    settings.LABELING_MAX_IMAGE_BYTES = 1_000_000
    data = make_zip({"cat/bomb.png": b"\x00" * 5_000_000, **VALID})  # ~5 kB on the wire, 5 MB unpacked
    assert len(data) < 20_000
    report = importers.import_zip(project=project, file=io.BytesIO(data))
    assert report.errors == [("cat/bomb.png", "file too large (5000000 bytes; limit 1000000)")]
    assert_nothing_left(project, media)


def test_zip_bomb_with_a_lying_size_header_is_cut_off(project, labeling_dirs, settings):
    """The central directory claims 100 bytes; the member inflates to 5 MB: reading stops, never trusts it."""
    media, _ = labeling_dirs
    settings.LABELING_MAX_IMAGE_BYTES = 1_000_000
    data = bytearray(make_zip({"cat/liar.png": b"\x00" * 5_000_000}))
    central = data.index(b"PK\x01\x02")
    data[central + 24:central + 28] = struct.pack("<I", 100)  # uncompressed size in the central directory
    local = data.index(b"PK\x03\x04")
    data[local + 22:local + 26] = struct.pack("<I", 100)
    report = importers.import_zip(project=project, file=io.BytesIO(bytes(data)))
    assert report.errors == [("cat/liar.png", "cannot read from the archive (Bad CRC-32 for file 'cat/liar.png')")]
    assert_nothing_left(project, media)


def test_too_many_members_and_too_much_unpacked_refuse_the_whole_archive(project, labeling_dirs, settings):
    media, _ = labeling_dirs
    settings.LABELING_MAX_IMPORT_FILES = 10
    with pytest.raises(importers.ImportFailed, match="holds 11 files; the limit is 10"):
        importers.import_zip(project=project, file=io.BytesIO(make_zip({f"{k}.png": b"x" for k in range(11)})))
    settings.LABELING_MAX_IMPORT_FILES = 1000
    settings.LABELING_MAX_UNPACKED_BYTES = 1_000_000
    with pytest.raises(importers.ImportFailed, match="unpacks to 1500000 bytes; the limit is 1000000"):
        importers.import_zip(project=project, file=io.BytesIO(make_zip({f"{k}.png": b"\x00" * 300_000
                                                                         for k in range(5)})))
    assert_nothing_left(project, media)


@pytest.mark.parametrize("data,match", [
    (make_zip({}), "no images found"),
    (make_zip({"readme.txt": b"x", "folder/": b""}), "no images found"),
    (b"PK\x03\x04 this is not really a zip", "not a valid zip archive"),
    (HTML, "not a valid zip archive"),
    (b"", "not a valid zip archive"),
])
def test_empty_and_non_zip_archives_are_refused_whole(data, match, project, labeling_dirs):
    media, _ = labeling_dirs
    with pytest.raises(importers.ImportFailed, match=match):
        importers.import_zip(project=project, file=io.BytesIO(data))
    assert_nothing_left(project, media)


# ---- through the staff upload page ----------------------------------------------------------


def staff_client(settings) -> Client:
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    c = Client()
    c.force_login(StaffFactory(username="uploader"))
    return c


def upload(client: Client, project: Project, data: bytes, name="upload.zip", skip=False):
    payload = {"archive": SimpleUploadedFile(name, data, content_type="application/zip")}
    if skip:
        payload["skip_invalid"] = "on"
    return client.post(f"/labeling/staff/projects/{project.pk}/import/", payload)


def test_upload_page_refuses_a_hostile_zip_and_lists_every_file(project, labeling_dirs, settings):
    media, _ = labeling_dirs
    r = upload(staff_client(settings), project, make_zip({**{n: d for n, (d, _) in HOSTILE.items()}, **VALID}))
    assert r.status_code == 400
    page = r.content.decode()
    assert "0 image(s) imported, 12 refused (nothing imported: strict mode)" in page
    for name, (_, reason) in HOSTILE.items():
        assert f"<code>{name}</code>" in page, name
    assert "zip-slip" in page and "image too large" in page and "unknown class &#x27;wolf&#x27;" in page
    assert_nothing_left(project, media)


def test_upload_page_with_skip_invalid_imports_the_rest(project, labeling_dirs, settings):
    r = upload(staff_client(settings), project, make_zip({"../../evil.png": png_bytes(), **VALID}), skip=True)
    assert r.status_code == 200
    assert "2 image(s) imported, 1 refused" in r.content.decode()
    assert Item.objects.filter(project=project).count() == 2


@pytest.mark.parametrize("data,message", [
    (make_zip({}), "no images found"),
    (b"<html>not a zip</html>", "not a valid zip archive"),
])
def test_upload_page_refuses_empty_and_non_zip_uploads(data, message, project, labeling_dirs, settings):
    media, _ = labeling_dirs
    r = upload(staff_client(settings), project, data)
    assert r.status_code == 400 and message in r.content.decode()
    assert_nothing_left(project, media)


def test_upload_over_the_size_limit_is_refused_with_a_message(project, labeling_dirs, settings):
    media, _ = labeling_dirs
    settings.ROBUSTAL_MAX_UPLOAD_BYTES = 1000
    r = upload(staff_client(settings), project, make_zip({"a.png": png_bytes(size=64)}) + b"\x00" * 2000)
    assert r.status_code in (400, 413)
    assert "larger than 1000 bytes" in r.content.decode()
    assert_nothing_left(project, media)
