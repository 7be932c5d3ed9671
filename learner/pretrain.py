"""Supervised pretraining of a clean feature extractor on a labeled source set.

Plain Python + torch (no Django). The reproduction pretrains a CIFAR ResNet-20 on the eight
CIFAR-10 classes other than airplane and frog (another pair: the eight other than that pair,
:func:`source_classes_for`), so the extractor never saw the target classes (the spirit of the
paper's ImageNet transfer learning, which cannot be downloaded here).

Why ResNet-20: on 2 CPU cores one epoch over 40,000 32x32 images costs about 2 minutes; a
ResNet-56 would cost ~3x that for a few points of source accuracy, and the 64-d features
keep the per-round head training and the k-NN / clustering steps of the loop cheap.

Output, in ``<cache dir>/backbones/<name>/`` (never in the repository):

``weights.pt``       state_dict of the backbone alone (the temporary head is dropped);
                     loadable with ``build_backbone(arch, weights=path)``.
``meta.json``        architecture, source, source classes, epochs, optimiser, seed, source
                     train/test accuracy, data fingerprint, weights sha256, wall time.
``checkpoint.pt``    written after every epoch (backbone, head, optimiser, scheduler and RNG
                     states); a re-run with the same settings resumes from it.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .backbones import _augment, build_backbone, to_tensor
from .data import cache_dir, file_sha256, load_dataset

__all__ = ["PretrainResult", "pretrain_backbone", "pretrained_dir", "source_classes_for", "classes_seen",
           "CIFAR10_CLASSES", "CIFAR2_SOURCE_CLASSES"]

# CIFAR-10's class names in its label order.
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def source_classes_for(targets: Sequence[str]) -> tuple[str, ...]:
    """The CIFAR-10 classes a backbone for the target classes ``targets`` is pretrained on: every
    other class, in CIFAR-10's order (a pair leaves eight), so the extractor never sees a target.

    Raises ValueError for a name that is not a CIFAR-10 class, or when fewer than two classes are left.
    """
    targets = tuple(targets)
    unknown = [c for c in targets if c not in CIFAR10_CLASSES]
    if unknown:
        raise ValueError(f"unknown CIFAR-10 class(es) {unknown}; available: {list(CIFAR10_CLASSES)}")
    rest = tuple(c for c in CIFAR10_CLASSES if c not in targets)
    if len(rest) < 2:
        raise ValueError(f"targets {list(targets)} leave {len(rest)} CIFAR-10 class(es) to pretrain on; need 2")
    return rest


def classes_seen(meta: dict | None, targets: Sequence[str]) -> list[str]:
    """The target classes a pretrained backbone's ``meta.json`` says it was trained on (empty: clean)."""
    seen = set((meta or {}).get("source_classes") or ())
    return [c for c in targets if c in seen]


# CIFAR-10 minus the CIFAR-2 targets (airplane, frog).
CIFAR2_SOURCE_CLASSES = source_classes_for(("airplane", "frog"))

_CKPT_VERSION = 1


@dataclass(frozen=True)
class PretrainResult:
    """Where a pretrained backbone lives and what it reached."""

    weights_path: Path
    meta_path: Path
    meta: dict


def pretrained_dir(name: str) -> Path:
    """Folder of a named pretrained backbone under the cache dir."""
    if not name or any(c in name for c in "/\\") or name.startswith("."):
        raise ValueError(f"backbone name must be a plain folder name, got {name!r}")
    return cache_dir() / "backbones" / name


def _atomic_torch_save(obj, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, suffix=".tmp")
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, target)  # atomic: an interrupted save never leaves half a checkpoint
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def weights_digest(state_dict: dict) -> str:
    """sha256 of the weights themselves (each tensor's name, dtype, shape and bytes, in order).

    The file's own sha256 differs between two saves of the same tensors in two processes (torch
    writes a per-process serialization id into the archive), so it cannot tell whether two
    pretraining runs gave the same network; this digest can."""
    h = hashlib.sha256()
    for name, tensor in state_dict.items():
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.numpy().tobytes() if t.dtype != torch.bfloat16 else t.float().numpy().tobytes())
    return h.hexdigest()


def _accuracy(backbone: nn.Module, head: nn.Module, x: np.ndarray, y: np.ndarray, bs: int = 500) -> float:
    if len(y) == 0:
        return float("nan")
    backbone.eval()
    head.eval()
    correct = 0
    with torch.inference_mode():
        for s in range(0, len(y), bs):
            pred = head(backbone(to_tensor(x[s : s + bs]))).argmax(1).numpy()
            correct += int((pred == y[s : s + bs]).sum())
    return correct / len(y)


def pretrain_backbone(
    source: str,
    classes: Sequence[str] | None,
    *,
    arch: str = "resnet20",
    epochs: int = 10,
    batch_size: int = 128,
    lr: float = 0.1,
    weight_decay: float = 5e-4,
    seed: int = 0,
    name: str | None = None,
    train_size: int | None = None,
    test_size: int | None = None,
    augment: bool = True,
    resume: bool = True,
    progress: bool = True,
    log=None,
) -> PretrainResult:
    """Train ``arch`` with a temporary linear head on ``source`` (restricted to ``classes``).

    One-cycle SGD (Nesterov momentum 0.9) with random 4-px crops and horizontal flips.

    Parameters
    ----------
    source : str
        Anything :func:`learner.data.load_dataset` accepts: ``"cifar10"`` (the shared JPEG
        tarball), a ``.tar.gz`` of ``train|test/<class>/*.jpg``, an image folder, an ``.npz``.
        Its pool (train split) is trained on; its test split gives the source accuracy.
    classes : sequence of str or None
        Source classes (None: all).
    arch : str, default "resnet20"
        A trainable name of :func:`learner.backbones.build_backbone`.
    epochs, batch_size, lr, weight_decay
        Schedule (``lr`` is the one-cycle peak).
    seed : int, default 0
        Seeds the data draw, init, shuffling and augmentation; a run (also a resumed one)
        is reproducible on the same machine and torch build.
    name : str, optional
        Folder name under ``<cache dir>/backbones``; default derived from the settings.
    train_size, test_size : int, optional
        Seeded sub-sample of the source (tests use a tiny slice).
    augment : bool, default True
    resume : bool, default True
        Continue from ``checkpoint.pt`` when its settings match; False starts over.
    progress : bool, default True
        tqdm bar over the steps of each epoch.
    log : callable, optional
        Receives one line per epoch (e.g. ``self.stdout.write``).

    Returns
    -------
    PretrainResult

    Raises
    ------
    ValueError
        Bad settings, or a checkpoint whose settings differ (pass ``resume=False``).
    """
    if epochs < 1 or batch_size < 2 or lr <= 0:
        raise ValueError("epochs >= 1, batch_size >= 2 and lr > 0 are required")
    if arch == "flatten":
        raise ValueError("'flatten' has no trainable parameters to pretrain")
    log = log or (lambda s: None)
    classes = tuple(classes) if classes is not None else None
    ds = load_dataset(source, classes=classes, pool_size=train_size, test_size=test_size, seed=seed)
    x_tr, y_tr, x_te, y_te = ds.x_pool, ds.y_pool, ds.x_test, ds.y_test
    if len(y_tr) < 2:
        raise ValueError(f"source {source!r} holds {len(y_tr)} training image(s) of {classes}")
    config = {
        "version": _CKPT_VERSION, "arch": arch, "source": str(source), "source_name": ds.name,
        "source_classes": list(ds.classes), "data_fingerprint": ds.fingerprint, "epochs": epochs,
        "batch_size": batch_size, "lr": lr, "weight_decay": weight_decay, "seed": seed,
        "augment": augment, "train_size": len(y_tr), "test_size": len(y_te),
        "optimizer": "sgd-nesterov-0.9 one-cycle",
    }
    if name is None:
        tag = hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:10]
        name = f"{arch}-{ds.name or 'source'}-{len(ds.classes)}cls-e{epochs}-s{seed}-{tag}"
    out = pretrained_dir(name)
    out.mkdir(parents=True, exist_ok=True)
    ckpt_path, weights_path, meta_path = out / "checkpoint.pt", out / "weights.pt", out / "meta.json"

    torch.manual_seed(seed)
    backbone = build_backbone(arch, in_channels=x_tr.shape[-1])
    with torch.no_grad():
        dim = backbone(to_tensor(x_tr[:2])).shape[1]
    head = nn.Linear(dim, len(ds.classes))
    params = list(backbone.parameters()) + list(head.parameters())
    opt = torch.optim.SGD(params, lr=lr, momentum=0.9, nesterov=True, weight_decay=weight_decay)
    steps = (len(y_tr) + batch_size - 1) // batch_size
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * steps)
    gen = torch.Generator().manual_seed(seed)
    start_epoch, elapsed, history = 0, 0.0, []

    if resume and ckpt_path.is_file():
        ck = torch.load(ckpt_path, map_location="cpu", weights_only=False)
        if ck.get("config") != config:
            raise ValueError(
                f"{ckpt_path} was written with other settings; pass resume=False (--restart) to start over"
            )
        backbone.load_state_dict(ck["backbone"])
        head.load_state_dict(ck["head"])
        opt.load_state_dict(ck["optimizer"])
        sched.load_state_dict(ck["scheduler"])
        gen.set_state(ck["generator"])
        torch.set_rng_state(ck["torch_rng"])
        start_epoch, elapsed, history = ck["epoch"], ck["elapsed_s"], ck["history"]
        log(f"resuming {name} after epoch {start_epoch}/{epochs}")

    x_all = to_tensor(x_tr)
    y_all = torch.from_numpy(y_tr)
    for epoch in range(start_epoch, epochs):
        t0 = time.perf_counter()
        backbone.train()
        head.train()
        perm = torch.randperm(len(y_tr), generator=gen)
        batches = range(0, len(y_tr), batch_size)
        if progress:
            from tqdm.auto import tqdm

            batches = tqdm(batches, desc=f"epoch {epoch + 1}/{epochs}", unit="step", leave=False)
        loss_sum, seen, correct = 0.0, 0, 0
        for s in batches:
            idx = perm[s : s + batch_size]
            xb = x_all[idx]
            if augment:
                xb = _augment(xb, gen)
            yb = y_all[idx]
            if len(idx) < 2:
                # BatchNorm cannot train on one image; still step the schedule to keep its length.
                sched.step()
                continue
            logits = head(backbone(xb))
            loss = F.cross_entropy(logits, yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            loss_sum += loss.item() * len(idx)
            correct += int((logits.argmax(1) == yb).sum())
            seen += len(idx)
            if progress:
                batches.set_postfix(loss=f"{loss_sum / seen:.3f}", acc=f"{correct / seen:.3f}")
        elapsed += time.perf_counter() - t0
        test_acc = _accuracy(backbone, head, x_te, y_te)
        history.append({
            "epoch": epoch + 1, "train_loss": loss_sum / max(seen, 1),
            "train_acc_running": correct / max(seen, 1), "test_acc": test_acc,
            "epoch_s": round(time.perf_counter() - t0, 1),
        })
        _atomic_torch_save({
            "config": config, "epoch": epoch + 1, "backbone": backbone.state_dict(),
            "head": head.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
            "generator": gen.get_state(), "torch_rng": torch.get_rng_state(),
            "elapsed_s": elapsed, "history": history,
        }, ckpt_path)
        # After the checkpoint: an interrupt from here on loses nothing.
        log(
            f"epoch {epoch + 1}/{epochs}: loss {loss_sum / max(seen, 1):.4f}, running train acc "
            f"{correct / max(seen, 1):.4f}, source test acc {test_acc:.4f}, {history[-1]['epoch_s']} s"
        )

    _atomic_torch_save(backbone.state_dict(), weights_path)
    meta = {
        **config,
        "name": name,
        "feature_dim": int(dim),
        "source_test_accuracy": history[-1]["test_acc"] if history else None,
        "source_train_accuracy": _accuracy(backbone, head, x_tr[:10000], y_tr[:10000]),
        "train_time_s": round(elapsed, 1),
        "history": history,
        "weights_sha256": file_sha256(weights_path),  # of the file: differs between processes for equal weights
        "weights_digest": weights_digest(backbone.state_dict()),  # of the weights: equal weights, equal digest
        "torch_version": torch.__version__,
        "threads": torch.get_num_threads(),
    }
    tmp = meta_path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(meta, indent=2))
    os.replace(tmp, meta_path)
    return PretrainResult(weights_path=weights_path, meta_path=meta_path, meta=meta)
