"""Import images into a draft project (services: they write files and rows).

Sources: an uploaded zip (images at the top level, or one sub-folder per class), uploaded image
files (:func:`import_files`: no class, so no ground truth), a folder on the
server (inside the allowed import roots), a data set known to :func:`learner.data.load_dataset`
(``.npz``, CIFAR-10 python archive, JPEG tarball, ``digits``) or arrays.

Every file is checked with Pillow: it must decode as an image, stay under the byte and pixel
limits (``Image.MAX_IMAGE_PIXELS`` is lowered to ours; decompression bombs are refused), sit in
a known class folder, and have a safe path (no absolute paths, no ``..``: zip-slip). Accepted
images are re-encoded as PNG under random names (no metadata, no polyglots, no original names on
disk). Each problem is reported per file.

Atomicity: files are written to a temporary folder next to their destination and moved into
place inside the database transaction that creates the items; any failure removes the moved
files and rolls the rows back. ``strict=True`` (default) imports nothing when any file has a
problem; ``strict=False`` imports the valid files and lists exactly what was skipped and why.
"""
from __future__ import annotations

import io
import logging
import os
import shutil
import tempfile
import uuid
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Callable, Iterable, Iterator

import numpy as np
from django.conf import settings
from django.db import transaction
from PIL import Image, UnidentifiedImageError

from .models import Item, Project

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
ALLOWED_FORMATS = {"PNG", "JPEG", "BMP", "GIF", "WEBP", "TIFF", "MPO"}
JUNK_NAMES = {".ds_store", "thumbs.db", "desktop.ini"}


def max_image_bytes() -> int:
    return int(getattr(settings, "LABELING_MAX_IMAGE_BYTES", 20 * 1024 * 1024))


def max_image_pixels() -> int:
    return int(getattr(settings, "LABELING_MAX_IMAGE_PIXELS", 40_000_000))


def max_files() -> int:
    return int(getattr(settings, "LABELING_MAX_IMPORT_FILES", 1_000_000))


def max_unpacked_bytes() -> int:
    return int(getattr(settings, "LABELING_MAX_UNPACKED_BYTES", 8 * 1024 ** 3))


def import_roots() -> list[Path]:
    """Folders a staff member may import from by name (default: the shared folder and var/imports)."""
    roots = getattr(settings, "LABELING_IMPORT_ROOTS", None)
    if roots is None:
        roots = [settings.ROBUSTAL_SHARED_DIR, settings.DATA_DIR / "imports"]
    return [Path(r).expanduser().resolve() for r in roots]


# Refuse decompression bombs in every Pillow call of this process: lower the global limit to ours.
if Image.MAX_IMAGE_PIXELS is None or Image.MAX_IMAGE_PIXELS > max_image_pixels():
    Image.MAX_IMAGE_PIXELS = max_image_pixels()


class ImportFailed(Exception):
    """The whole import was refused (not a zip, empty, too big, project not a draft, ...)."""


class FileProblem(Exception):
    """One file was refused; the message says why."""


@dataclass
class ImportReport:
    imported: int = 0
    errors: list[tuple[str, str]] = field(default_factory=list)  # (file, reason): refused files
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (file, reason): ignored, not images
    strict: bool = True

    @property
    def ok(self) -> bool:
        return self.imported > 0 and (not self.strict or not self.errors)

    def summary(self) -> str:
        parts = [f"{self.imported} image(s) imported"]
        if self.errors:
            parts.append(f"{len(self.errors)} refused" + (" (nothing imported: strict mode)" if self.strict and not self.imported else ""))
        if self.skipped:
            parts.append(f"{len(self.skipped)} ignored")
        return ", ".join(parts)


@dataclass
class _Entry:
    name: str  # as shown to the user
    read: Callable[[], bytes]
    class_name: str | None
    size: int | None = None


@dataclass
class _Prepared:
    source: str
    tmp_path: Path
    ground_truth: int | None
    width: int
    height: int


# --------------------------------------------------------------------------------------
# One image
# --------------------------------------------------------------------------------------


def decode_image(data: bytes) -> Image.Image:
    """Decode and normalise one image (L or RGB) or raise FileProblem with a clear reason."""
    if len(data) > max_image_bytes():
        raise FileProblem(f"file too large ({len(data)} bytes; limit {max_image_bytes()})")
    if not data:
        raise FileProblem("empty file")
    limit = max_image_pixels()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as im:
                if im.format not in ALLOWED_FORMATS:
                    raise FileProblem(f"unsupported image format {im.format}")
                w, h = im.size
                if w * h > limit:
                    raise FileProblem(f"image too large ({w}x{h} = {w * h} pixels; limit {limit})")
                if w < 1 or h < 1:
                    raise FileProblem("image has no pixels")
                im.verify()
            with Image.open(io.BytesIO(data)) as im:
                im.seek(0)
                im.load()
                if im.mode in ("1", "L", "I", "I;16", "I;16B", "I;16L", "F"):
                    out = im.convert("L") if im.mode != "I;16" else im.point(lambda v: v / 256).convert("L")
                elif im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
                    rgba = im.convert("RGBA")
                    out = Image.new("RGB", rgba.size, (255, 255, 255))
                    out.paste(rgba, mask=rgba.getchannel("A"))
                else:
                    out = im.convert("RGB")
                return out
    except FileProblem:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise FileProblem(f"image too large (decompression bomb; limit {limit} pixels)") from None
    except UnidentifiedImageError:
        raise FileProblem("not an image (Pillow cannot identify it)") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise FileProblem(f"corrupt or truncated image ({exc.__class__.__name__}: {str(exc)[:120]})") from None


def _encode_png(image: Image.Image, path: Path) -> None:
    image.save(path, format="PNG", optimize=False)


# --------------------------------------------------------------------------------------
# Paths and classes
# --------------------------------------------------------------------------------------


def unsafe_path_reason(name: str) -> str | None:
    """Why an archive member name is unsafe (zip-slip and friends), or None."""
    if "\x00" in name:
        return "unsafe path (NUL byte)"
    norm = name.replace("\\", "/")
    if norm.startswith("/") or (len(norm) > 1 and norm[1] == ":"):
        return "unsafe path (absolute path; zip-slip)"
    if any(part == ".." for part in norm.split("/")):
        return "unsafe path ('..' component; zip-slip)"
    return None


def _is_junk(name: str) -> bool:
    parts = [p for p in name.replace("\\", "/").split("/") if p]
    return bool(parts) and (parts[0] == "__MACOSX" or parts[-1].lower() in JUNK_NAMES or parts[-1].startswith("._"))


def _class_layout(names: list[str], classes: list[str]) -> Callable[[str], tuple[str | None, str | None]]:
    """Map a relative file name to (class name or None, problem or None).

    Files at the top level have no class; ``<class>/<file>`` gives the class. A single common
    top folder that is not a class name (``dataset/cat/1.png``) is ignored.
    """
    split = [PurePosixPath(n.replace("\\", "/")).parts for n in names]
    strip = 0
    firsts = {p[0] for p in split if len(p) > 1}
    if split and all(len(p) > 1 for p in split) and len(firsts) == 1 and next(iter(firsts)) not in classes:
        strip = 1

    def classify(name: str) -> tuple[str | None, str | None]:
        parts = PurePosixPath(name.replace("\\", "/")).parts[strip:]
        if len(parts) <= 1:
            return None, None
        if len(parts) > 2:
            return None, f"nested too deeply (expected <class>/<file>, got {'/'.join(parts)})"
        if parts[0] not in classes:
            return None, f"unknown class {parts[0]!r} (project classes: {', '.join(classes[:20])})"
        return parts[0], None

    return classify


# --------------------------------------------------------------------------------------
# Sources
# --------------------------------------------------------------------------------------


def _zip_entries(zf: zipfile.ZipFile, classes: list[str], report: ImportReport) -> Iterator[_Entry]:
    infos = [i for i in zf.infolist() if not i.is_dir()]
    if len(infos) > max_files():
        raise ImportFailed(f"the archive holds {len(infos)} files; the limit is {max_files()}")
    total = sum(i.file_size for i in infos)
    if total > max_unpacked_bytes():
        raise ImportFailed(f"the archive unpacks to {total} bytes; the limit is {max_unpacked_bytes()}")
    candidates = []
    for info in infos:
        name = info.filename
        reason = unsafe_path_reason(name)
        if reason:
            report.errors.append((name, reason))
            continue
        if _is_junk(name):
            report.skipped.append((name, "system file"))
            continue
        if not name.lower().endswith(IMAGE_EXTENSIONS):
            report.skipped.append((name, "not an image file name (extension)"))
            continue
        candidates.append(info)
    classify = _class_layout([i.filename for i in candidates], classes)
    limit = max_image_bytes()
    for info in candidates:
        cls, problem = classify(info.filename)
        if problem:
            report.errors.append((info.filename, problem))
            continue
        if info.flag_bits & 0x1:
            report.errors.append((info.filename, "encrypted archive member"))
            continue
        if info.file_size > limit:
            report.errors.append((info.filename, f"file too large ({info.file_size} bytes; limit {limit})"))
            continue

        def read(info=info) -> bytes:
            try:
                with zf.open(info) as fh:
                    data = fh.read(limit + 1)  # never trust the header's size
            except (zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError, OSError, RuntimeError) as exc:
                raise FileProblem(f"cannot read from the archive ({exc})") from None
            if len(data) > limit:
                raise FileProblem(f"file too large (more than {limit} bytes)")
            return data

        yield _Entry(info.filename, read, cls, info.file_size)


def _folder_entries(root: Path, classes: list[str], report: ImportReport) -> Iterator[_Entry]:
    files = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames.sort()
        for fn in sorted(filenames):
            files.append(Path(dirpath) / fn)
            if len(files) > max_files():
                raise ImportFailed(f"the folder holds more than {max_files()} files")
    candidates = []
    for path in files:
        rel = path.relative_to(root).as_posix()
        if path.is_symlink():
            report.errors.append((rel, "symbolic link (not followed)"))
            continue
        if _is_junk(rel):
            report.skipped.append((rel, "system file"))
            continue
        if not rel.lower().endswith(IMAGE_EXTENSIONS):
            report.skipped.append((rel, "not an image file name (extension)"))
            continue
        candidates.append((rel, path))
    classify = _class_layout([rel for rel, _ in candidates], classes)
    limit = max_image_bytes()
    for rel, path in candidates:
        cls, problem = classify(rel)
        if problem:
            report.errors.append((rel, problem))
            continue
        size = path.stat().st_size
        if size > limit:
            report.errors.append((rel, f"file too large ({size} bytes; limit {limit})"))
            continue

        def read(path=path) -> bytes:
            with open(path, "rb") as fh:
                data = fh.read(limit + 1)
            if len(data) > limit:
                raise FileProblem(f"file too large (more than {limit} bytes)")
            return data

        yield _Entry(rel, read, cls, size)


def _upload_entries(files: list, report: ImportReport) -> Iterator[_Entry]:
    """Uploaded image files (multipart): no folders, so no class and no ground truth."""
    if len(files) > max_files():
        raise ImportFailed(f"{len(files)} files uploaded; the limit is {max_files()}")
    limit = max_image_bytes()
    for upload in files:
        name = str(getattr(upload, "name", "") or "upload")
        if _is_junk(name):
            report.skipped.append((name, "system file"))
            continue
        if not name.lower().endswith(IMAGE_EXTENSIONS):
            report.skipped.append((name, "not an image file name (extension)"))
            continue
        size = getattr(upload, "size", None)
        if size is not None and size > limit:
            report.errors.append((name, f"file too large ({size} bytes; limit {limit})"))
            continue

        def read(upload=upload) -> bytes:
            upload.seek(0)
            data = upload.read(limit + 1)
            if len(data) > limit:
                raise FileProblem(f"file too large (more than {limit} bytes)")
            return data

        yield _Entry(name, read, None, size)


# --------------------------------------------------------------------------------------
# The shared pipeline
# --------------------------------------------------------------------------------------


def _incoming_dir() -> Path:
    base = Path(settings.MEDIA_ROOT) / "labeling" / ".incoming"
    base.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix="import-", dir=base))


def _prepare(entries: Iterable[_Entry], classes: list[str], report: ImportReport, tmp: Path) -> list[_Prepared]:
    prepared = []
    index = {c: i for i, c in enumerate(classes)}
    for entry in entries:
        try:
            image = decode_image(entry.read())
        except FileProblem as exc:
            report.errors.append((entry.name, str(exc)))
            continue
        path = tmp / f"{uuid.uuid4().hex}.png"
        _encode_png(image, path)
        prepared.append(_Prepared(entry.name[:500], path, index.get(entry.class_name) if entry.class_name else None,
                                  image.width, image.height))
    return prepared


def _commit(project: Project, prepared: list[_Prepared], report: ImportReport) -> ImportReport:
    """Move the prepared files into place and create the items, all or nothing."""
    if not prepared:
        if not report.errors:
            raise ImportFailed("no images found (the archive or folder is empty or holds no image files)")
        return report
    if report.strict and report.errors:
        return report
    moved: list[Path] = []
    media = Path(settings.MEDIA_ROOT)
    folder = media / "labeling" / str(project.storage_key)
    try:
        with transaction.atomic():
            locked = Project.objects.select_for_update().get(pk=project.pk)
            if locked.state != Project.State.DRAFT:
                raise ImportFailed(f"images can only be added to a draft project (this one is {locked.state})")
            last = locked.items.order_by("-index").values_list("index", flat=True).first()
            start = 0 if last is None else last + 1
            folder.mkdir(parents=True, exist_ok=True)
            rows = []
            for k, p in enumerate(prepared):
                final = folder / p.tmp_path.name
                os.replace(p.tmp_path, final)
                moved.append(final)
                rows.append(Item(project=locked, index=start + k, image=final.relative_to(media).as_posix(),
                                 width=p.width, height=p.height, ground_truth=p.ground_truth, source=p.source))
            Item.objects.bulk_create(rows, batch_size=1000)
    except BaseException:
        for f in moved:
            f.unlink(missing_ok=True)
        raise
    report.imported = len(prepared)
    log.info("project %s: imported %s images (%s refused, %s ignored)", project.pk, report.imported,
             len(report.errors), len(report.skipped))
    return report


def _run(project: Project, entries_factory, strict: bool) -> ImportReport:
    if project.state != Project.State.DRAFT:
        raise ImportFailed(f"images can only be added to a draft project (this one is {project.state})")
    report = ImportReport(strict=strict)
    tmp = _incoming_dir()
    try:
        prepared = _prepare(entries_factory(report), list(project.classes), report, tmp)
        if strict and report.errors:
            return report
        return _commit(project, prepared, report)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# --------------------------------------------------------------------------------------
# Public services
# --------------------------------------------------------------------------------------


def import_zip(*, project: Project, file, strict: bool = True) -> ImportReport:
    """Import a zip archive (path or file object, e.g. an uploaded file)."""
    try:
        zf = zipfile.ZipFile(file)
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        hint = ""
        try:
            file.seek(0)
            head = file.read(12)
            file.seek(0)
        except (OSError, ValueError, AttributeError):
            head = b""
        if head.startswith((b"\x89PNG", b"\xff\xd8\xff", b"GIF8", b"BM")) or head[8:12] == b"WEBP":
            hint = ": this is a single image; put the images in a .zip archive (one folder per class if they have labels) and import that"
        raise ImportFailed(f"not a valid zip archive ({exc}){hint}") from None
    with zf:
        return _run(project, lambda report: _zip_entries(zf, list(project.classes), report), strict)


def import_files(*, project: Project, files: Iterable, strict: bool = True) -> ImportReport:
    """Import uploaded image files (file objects with a ``name``, e.g. a multipart upload's)."""
    files = list(files)
    return _run(project, lambda report: _upload_entries(files, report), strict)


def resolve_import_path(path: str | os.PathLike) -> Path:
    """``path`` resolved, if it lies inside an allowed import root (else ImportFailed)."""
    p = Path(path).expanduser()
    try:
        resolved = p.resolve(strict=True)
    except (OSError, RuntimeError):
        raise ImportFailed(f"path not found: {path}") from None
    for root in import_roots():
        if resolved == root or root in resolved.parents:
            return resolved
    raise ImportFailed(f"{path} is outside the allowed import folders ({', '.join(map(str, import_roots()))})")


def import_folder(*, project: Project, path, strict: bool = True, check_roots: bool = True) -> ImportReport:
    """Import a server folder (images at the top level, or one sub-folder per class)."""
    root = resolve_import_path(path) if check_roots else Path(path).resolve()
    if not root.is_dir():
        raise ImportFailed(f"not a folder: {path}")
    return _run(project, lambda report: _folder_entries(root, list(project.classes), report), strict)


def import_arrays(*, project: Project, images: np.ndarray, labels: np.ndarray | None = None,
                  sources: list[str] | None = None, upscale: int = 1, strict: bool = True) -> ImportReport:
    """Import uint8 NHWC (or NHW) images; ``labels`` (class indices) become the hidden ground truth.

    ``upscale`` enlarges tiny images (nearest neighbour) so the stored PNG is crisp to look at.
    """
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim not in (3, 4):
        raise ImportFailed("images must be a uint8 array of shape (N, H, W[, C])")
    if labels is not None and len(labels) != len(images):
        raise ImportFailed("images and labels differ in length")
    n_classes = len(project.classes)

    def entries(report: ImportReport) -> Iterator[_Entry]:
        for k in range(len(images)):
            img = images[k]
            if img.ndim == 3 and img.shape[-1] == 1:
                img = img[..., 0]
            name = sources[k] if sources else f"array[{k}]"
            label = None if labels is None else int(labels[k])
            if label is not None and not 0 <= label < n_classes:
                report.errors.append((name, f"label {label} outside 0..{n_classes - 1}"))
                continue
            pil = Image.fromarray(img)
            if upscale > 1:
                pil = pil.resize((pil.width * upscale, pil.height * upscale), Image.Resampling.NEAREST)
            buf = io.BytesIO()
            pil.save(buf, format="PNG")
            data = buf.getvalue()
            yield _Entry(name, lambda data=data: data, project.classes[label] if label is not None else None)

    return _run(project, entries, strict)


def import_dataset(*, project: Project, spec: str, pool_size: int | None = None, seed: int = 0,
                   upscale: int = 1, check_roots: bool = True, strict: bool = True) -> ImportReport:
    """Import the pool of a data set :func:`learner.data.load_dataset` reads (.npz, CIFAR-10, digits).

    The project's class names select (and order) the data set's classes.
    """
    from learner.data import load_dataset

    target = spec
    if spec not in ("digits", "cifar2", "cifar10"):
        target = str(resolve_import_path(spec) if check_roots else Path(spec).resolve())
    kwargs = {"classes": list(project.classes), "seed": seed}
    if pool_size is not None:
        kwargs["pool_size"] = pool_size
    try:
        data = load_dataset(target, **kwargs)
    except (ValueError, FileNotFoundError, OSError, KeyError) as exc:
        raise ImportFailed(f"cannot load data set {spec}: {exc}") from None
    sources = [f"{data.name or Path(str(spec)).name}:pool[{k}]" for k in range(len(data.x_pool))]
    return import_arrays(project=project, images=data.x_pool, labels=data.y_pool, sources=sources,
                         upscale=upscale, strict=strict)
