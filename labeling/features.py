"""Feature cache of a project: one ``.npy`` per project under ``ROBUSTAL_CACHE_DIR`` (never the DB).

``<cache>/labeling/<project storage key>/features-<key>.npy`` holds row ``i`` = features of the
item with ``index == i``. The key hashes backbone, weights (content), input size, seed and the
ordered item list, so a changed config or item set never reads stale features.

Large pools are split into chunks (``feature_chunk_size`` items); each chunk is one Celery task
on the ``train`` queue writing ``chunks-<key>/<start>-<stop>.npy``; the task that finds every
chunk present assembles the final file (atomic rename, so two assemblers are harmless). No
result backend is needed: the join is the set of chunk files. The loop task computes whatever
is missing in-process, so a lost chunk task only costs time.
"""
from __future__ import annotations

import logging
import math
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from learner import live
from learner.data import cache_dir

from .models import Item, Project

log = logging.getLogger(__name__)

_MEMO: dict[str, np.ndarray] = {}  # path -> array: one load per worker process (and stable ids)


def project_cache_dir(project: Project) -> Path:
    return cache_dir() / "labeling" / str(project.storage_key)


def model_path(project: Project, iteration: int) -> Path:
    return project_cache_dir(project) / f"model-{iteration}.npz"


def artificial_path(project: Project, iteration: int) -> Path:
    return project_cache_dir(project) / f"artificial-{iteration}.npz"


def _item_names(project: Project) -> list[str]:
    return list(project.items.order_by("index").values_list("image", flat=True))


def features_file(project: Project) -> Path:
    key = live.features_key(project.live_config, _item_names(project))
    return project_cache_dir(project) / f"features-{key}.npy"


def load_images(project: Project, start: int, stop: int) -> np.ndarray:
    """uint8 (N, S, S, C) images of items ``start <= index < stop``, resized to ``feature_size``."""
    items = list(Item.objects.filter(project=project, index__gte=start, index__lt=stop).order_by("index"))
    if [i.index for i in items] != list(range(start, min(stop, start + len(items)))):
        raise ValueError(f"project {project.pk}: items {start}..{stop} are not dense")
    return _decode(project, items)


def load_items(project: Project, indices) -> np.ndarray:
    """uint8 (N, S, S, C) images of the items with these indices, in that order (as their features saw them)."""
    indices = [int(i) for i in indices]
    by_index = {i.index: i for i in Item.objects.filter(project=project, index__in=indices)}
    missing = sorted(set(indices) - set(by_index))
    if missing:
        raise ValueError(f"project {project.pk}: no items with index {missing[:10]}")
    return _decode(project, [by_index[i] for i in indices])


def _decode(project: Project, items: list[Item]) -> np.ndarray:
    cfg = project.live_config
    size = cfg.feature_size
    mode = "L" if cfg.channels == 1 else "RGB"
    out = np.zeros((len(items), size, size, cfg.channels), dtype=np.uint8)
    for row, item in enumerate(items):
        with item.image.open("rb") as fh, Image.open(fh) as im:
            im = im.convert(mode)
            if im.size != (size, size):
                shrink = im.size[0] >= size and im.size[1] >= size
                im = im.resize((size, size), Image.Resampling.BOX if shrink else Image.Resampling.BILINEAR)
            arr = np.asarray(im, dtype=np.uint8)
        out[row] = arr[..., None] if arr.ndim == 2 else arr
    return out


def pixel_crafter(project: Project, backbone_of=None):
    """The engine's crafter for a project with ``augment_space = "pixel"``: the new labels' images
    through the project's backbone and the current head (:func:`learner.augment.pixel_crafter`,
    the function ``simulate --augment-space pixel`` uses). ``backbone_of()`` gives the backbone
    instead of the project's frozen one (finetune: the fine-tuned stage's,
    :meth:`learner.finetune.FineTuner.backbone`)."""
    from learner.augment import PixelSettings, pixel_crafter as make

    built = []  # the backbone is built on the first call: a re-annotation step crafts nothing

    def crafter(model, items, labels, seed):
        if not built:
            cfg = project.live_config
            backbone = backbone_of() if backbone_of is not None else live.project_backbone(cfg)
            built.append(make(lambda idx: load_items(project, idx), backbone,
                              PixelSettings(tuple(cfg.augmentations), cfg.noise_variance)))
        return built[0](model, items, labels, seed)
    return crafter


# --------------------------------------------------------------------------------------
# training_mode "finetune": the last stage's inputs of the pool, and the fine-tuned stage per iteration
# --------------------------------------------------------------------------------------


def stage_inputs_file(project: Project) -> Path:
    """``stage-inputs-<key>.npy``: row i = the backbone's last-stage input of item i (same key as the features)."""
    final = features_file(project)
    return final.with_name(final.name.replace("features-", "stage-inputs-", 1))


def finetune_path(project: Project, iteration: int) -> Path:
    """The stage fine-tuned when ``iteration`` closed (a torch state_dict)."""
    return project_cache_dir(project) / f"finetune-{iteration}.pt"


def finetune_features_path(project: Project, iteration: int) -> Path:
    """The pool's features through the stage of ``iteration``."""
    return project_cache_dir(project) / f"finetune-features-{iteration}.npy"


def _stage_chunk(project: Project, start: int, stop: int) -> np.ndarray:
    from learner.device import pick
    from learner.finetune import stage_inputs

    return stage_inputs(live.project_backbone(project.live_config), load_images(project, start, stop), device=pick())


def write_stage_chunk(project: Project, start: int, stop: int) -> bool:
    """The last-stage inputs of one chunk (idempotent; the chunk tasks write them next to the
    features when the project fine-tunes); assembles the file when every chunk is there."""
    final = stage_inputs_file(project)
    if final.is_file():
        return True
    part = chunk_file(final, start, stop)
    if not part.is_file():
        try:
            live.save_array(part, _stage_chunk(project, start, stop))
        except OSError:
            if not final.is_file():
                raise
    chunks = [chunk_file(final, s, e) for s, e in chunk_plan(project)]
    if not all(c.is_file() for c in chunks):
        return final.is_file()
    try:
        arr = np.concatenate([np.load(c) for c in chunks])
    except OSError:  # assembled and removed by another process
        if final.is_file():
            return True
        raise
    if len(arr) != project.items.count():
        raise ValueError(f"assembled {len(arr)} stage-input rows for {project.items.count()} items")
    live.save_array(final, arr)
    shutil.rmtree(chunk_dir(final), ignore_errors=True)
    return True


def stage_inputs_for(project: Project) -> np.ndarray:
    """The pool's last-stage inputs (read-only, memory-mapped), computing missing chunks here."""
    final = stage_inputs_file(project)
    for start, stop in chunk_plan(project):
        if final.is_file():
            break
        write_stage_chunk(project, start, stop)
    return np.load(final, mmap_mode="r")


def fine_tuner(project: Project, through: int):
    """``(tuner, features)``: :class:`learner.finetune.FineTuner` with the stage fine-tuned when
    iteration ``through`` closed (the backbone's own stage for ``through < 0``) and the pool's
    features through that stage. Runs on :func:`learner.device.pick`."""
    import torch

    from learner.device import pick
    from learner.finetune import FineTuner

    tuner = FineTuner(live.project_backbone(project.live_config), stage_inputs_for(project), device=pick())
    if through < 0:
        return tuner, features_for(project)[0]
    path = finetune_path(project, through)
    if not path.is_file():
        log.warning("project %s: fine-tuned stage of iteration %s missing from the cache; starting from the "
                    "backbone's own stage", project.pk, through)
        return tuner, features_for(project)[0]
    tuner.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    fpath = finetune_features_path(project, through)
    feats = np.load(fpath) if fpath.is_file() else None
    if feats is None or len(feats) != len(tuner.inputs):
        feats = tuner.features()
    return tuner, feats


def finetune_refit(project: Project, tuner, iteration: int, *, dispatch: bool = True):
    """The engine's ``Pool.refit`` for iteration ``iteration``: fine-tunes ``tuner``, keeps the
    stage, re-extracts the pool's features through it (:func:`reextract`: chunk tasks on the
    ``train`` queue and this process together) and keeps them in the cache (a redelivered step
    writes the same files)."""
    from learner.finetune import refit_hook

    def keep(t, feats):
        live.save_array(finetune_features_path(project, iteration), feats)
    return refit_hook(tuner, project.n_classes, after=keep,
                      extract=lambda t: reextract(project, t, iteration, dispatch=dispatch))


# -- re-extraction after a refit, chunked over train workers ------------------------------------
#
# The refit saves the stage (finetune-<i>.pt), creates ``finetune-chunks-<i>-<stage hash>/`` and sends
# one ``reextract_finetune_chunk`` task per chunk of the pool. A task (or this process) first claims a
# chunk (``<start>-<stop>.claim``, created exclusively), then writes ``<start>-<stop>.npy``. The loop
# takes chunks from the end while workers take them from the start, then waits for the chunks others
# claimed; one whose claim is older than STALE_CLAIM_S (or 5x the loop's own time per chunk, whichever
# is larger) is computed here, so a lost task costs time, never correctness. The loop assembles the
# rows and removes the folder; a task that finds the folder gone, or the stage file of another hash
# (an older try of the step), does nothing.

STALE_CLAIM_S = 30.0
_POLL_S = 0.05


def refit_chunk_dir(project: Project, iteration: int, digest: str) -> Path:
    return project_cache_dir(project) / f"finetune-chunks-{iteration}-{digest[:16]}"


def _chunk_name(start: int, stop: int) -> str:
    return f"{start:09d}-{stop:09d}"


def _claim(path: Path) -> bool:
    """Create ``path`` exclusively: True for the one process that did (False if it exists or its folder is gone)."""
    import os

    try:
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
        return True
    except (FileExistsError, FileNotFoundError):
        return False


def _write_into(folder: Path, name: str, array: np.ndarray) -> bool:
    """Atomically write ``folder/name.npy`` without creating ``folder`` (gone = assembled: False)."""
    import os
    import tempfile

    try:
        fd, tmp = tempfile.mkstemp(dir=folder, suffix=".tmp")
    except FileNotFoundError:
        return False
    try:
        with os.fdopen(fd, "wb") as fh:
            np.save(fh, np.asarray(array, dtype=np.float32))
        os.replace(tmp, folder / f"{name}.npy")
        return True
    except FileNotFoundError:
        return False
    finally:
        Path(tmp).unlink(missing_ok=True)


def write_refit_chunk(project: Project, iteration: int, digest: str, start: int, stop: int) -> bool:
    """A ``train`` worker's share of :func:`reextract` (task ``reextract_finetune_chunk``): the features
    of items ``start <= index < stop`` through the stage saved for ``iteration``, if that stage still
    has hash ``digest`` and the loop has not assembled the features yet. True when it wrote the chunk."""
    import torch

    from learner.device import pick
    from learner.finetune import FineTuner, stage_hash

    folder = refit_chunk_dir(project, iteration, digest)
    name = _chunk_name(start, stop)
    if not folder.is_dir() or (folder / f"{name}.npy").is_file():
        return False
    spath, ipath = finetune_path(project, iteration), stage_inputs_file(project)
    if not spath.is_file() or not ipath.is_file():
        return False
    state = torch.load(spath, map_location="cpu", weights_only=True)
    if stage_hash(state) != digest or not _claim(folder / f"{name}.claim"):
        return False
    tuner = FineTuner(live.project_backbone(project.live_config), np.load(ipath, mmap_mode="r"), device=pick())
    tuner.load_state_dict(state)
    return _write_into(folder, name, tuner.features(tuner.inputs[start:stop]))


def _send_refit_chunks(project: Project, iteration: int, digest: str, chunks) -> None:
    from celery import group

    from . import tasks

    try:
        group(tasks.reextract_finetune_chunk.si(project.pk, iteration, digest, start, stop)
              for start, stop in chunks).apply_async()
    except Exception as exc:  # broker down: this process computes every chunk
        log.warning("project %s: could not send the re-extraction chunk tasks (%s: %s); computing them here",
                    project.pk, exc.__class__.__name__, exc)


def _remove_stale_chunk_dirs(project: Project, keep: Path) -> None:
    """Chunk folders of older steps (or older tries of this one): nobody assembles them any more."""
    for old in project_cache_dir(project).glob("finetune-chunks-*"):
        if old != keep:
            shutil.rmtree(old, ignore_errors=True)


def reextract(project: Project, tuner, iteration: int, *, dispatch: bool = True) -> np.ndarray:
    """The pool's features through ``tuner``'s stage, which is saved first as iteration
    ``iteration``'s. With more than one chunk and ``dispatch``, the chunks are shared with
    ``train`` workers (see above); equal to ``tuner.features()`` either way (tested)."""
    import time

    from learner.finetune import stage_hash

    state = tuner.state_dict()
    live.save_state_dict(finetune_path(project, iteration), state)
    plan = chunk_plan(project)
    if len(plan) <= 1 or not dispatch:
        return tuner.features()
    digest = stage_hash(state)
    folder = refit_chunk_dir(project, iteration, digest)
    _remove_stale_chunk_dirs(project, keep=folder)
    folder.mkdir(parents=True, exist_ok=True)
    _send_refit_chunks(project, iteration, digest, plan)
    parts: dict[int, np.ndarray] = {}
    own: list[float] = []

    def compute(start, stop):
        t = time.perf_counter()
        parts[start] = tuner.features(tuner.inputs[start:stop])
        own.append(time.perf_counter() - t)

    for start, stop in reversed(plan):  # workers start from the front
        name = _chunk_name(start, stop)
        if not (folder / f"{name}.npy").is_file() and _claim(folder / f"{name}.claim"):
            compute(start, stop)
    by_workers = 0
    while len(parts) < len(plan):
        stale = max(STALE_CLAIM_S, 5 * max(own, default=0.0))
        waiting = False
        for start, stop in plan:
            if start in parts:
                continue
            name = _chunk_name(start, stop)
            done, claim = folder / f"{name}.npy", folder / f"{name}.claim"
            if done.is_file():
                parts[start] = np.load(done)
                by_workers += 1
                continue
            try:
                age = time.time() - claim.stat().st_mtime
            except FileNotFoundError:  # folder removed under us (a concurrent try of this step)
                age = math.inf
            if age > stale:
                log.warning("project %s iteration %s: re-extraction chunk %s claimed %.0f s ago and not "
                            "written; computing it here", project.pk, iteration, name, age)
                compute(start, stop)
            else:
                waiting = True
        if waiting:
            time.sleep(_POLL_S)
    shutil.rmtree(folder, ignore_errors=True)
    log.info("project %s iteration %s: re-extracted %d chunks, %d by train workers",
             project.pk, iteration, len(plan), by_workers)
    return np.concatenate([parts[start] for start, _ in plan]).astype(np.float32, copy=False)


def compute_chunk(project: Project, start: int, stop: int) -> np.ndarray:
    return live.extract(load_images(project, start, stop), project.live_config)


def chunk_dir(final: Path) -> Path:
    return final.with_name(final.stem.replace("features-", "chunks-"))


def chunk_file(final: Path, start: int, stop: int) -> Path:
    return chunk_dir(final) / f"{start:09d}-{stop:09d}.npy"


def write_chunk(project: Project, start: int, stop: int) -> bool:
    """Compute one chunk (idempotent); assemble the final file when every chunk is there.

    Returns True when the final features file exists afterwards.
    """
    if project.live_config.training_mode == "finetune":
        write_stage_chunk(project, start, stop)
    final = features_file(project)
    if final.is_file():
        return True
    target = chunk_file(final, start, stop)
    if not target.is_file():
        _save_chunk(project, final, start, stop)
    return _assemble_if_complete(project, final)


def _save_chunk(project: Project, final: Path, start: int, stop: int) -> None:
    """Write one chunk; losing the race to a process that assembled the final file is fine.

    The assembler removes the chunk folder, which can vanish under a concurrent writer
    (``mkdir`` or the temporary file then fails): the features exist, nothing is lost.
    """
    try:
        live.save_array(chunk_file(final, start, stop), compute_chunk(project, start, stop))
    except OSError:
        if not final.is_file():
            raise


def _assemble_if_complete(project: Project, final: Path) -> bool:
    n = project.items.count()
    chunks = [chunk_file(final, s, e) for s, e in live.plan_chunks(n, project.live_config.feature_chunk_size)]
    if not all(c.is_file() for c in chunks):
        return final.is_file()
    try:
        feats = live.assemble_chunks(chunks)
    except OSError:  # another process assembled them first and removed the chunks
        if final.is_file():
            return True
        raise
    if len(feats) != n:
        raise ValueError(f"assembled {len(feats)} feature rows for {n} items")
    live.save_array(final, feats)
    shutil.rmtree(chunk_dir(final), ignore_errors=True)
    return True


def features_for(project: Project) -> tuple[np.ndarray, Path]:
    """The project's features, computing what is missing in this process (chunk by chunk)."""
    final = features_file(project)
    key = str(final)
    if key in _MEMO:
        return _MEMO[key], final
    if not final.is_file():
        n = project.items.count()
        for start, stop in live.plan_chunks(n, project.live_config.feature_chunk_size):
            if not final.is_file() and not chunk_file(final, start, stop).is_file():
                _save_chunk(project, final, start, stop)
        if not final.is_file():
            _assemble_if_complete(project, final)
    feats = np.load(final)
    if len(feats) != project.items.count():
        raise ValueError(f"features file {final} has {len(feats)} rows for {project.items.count()} items")
    _MEMO.clear()  # keep one project's features per process
    _MEMO[key] = feats
    return feats, final


def chunk_plan(project: Project) -> list[tuple[int, int]]:
    return live.plan_chunks(project.items.count(), project.live_config.feature_chunk_size)
