"""Clean-label feature-collision poisoning (Shafahi et al. 2018) against a frozen backbone + linear head.

Plain Python + torch (no Django). The attacker picks a target image ``t`` of class ``c_t`` and
50 base images ``b`` of another class ``c_b``; each poison solves

    argmin_x ||f(x) - f(t)||^2 + beta ||x - b||^2,   beta = similarity_coeff * (D / (C*H*W))^2

by forward-backward splitting (a gradient step on the feature term, then the closed-form proximal
step towards the base), ``f`` = the backbone's penultimate layer, in pixel space. A watermark
``w * t`` is added at the end (the paper: w in 0.1-0.3). Humans label a poison as ``c_b`` (it looks
like its base); a head trained on it pulls ``t`` into ``c_b``.

Two implementations of the same optimisation:

``art``   ART's ``FeatureCollisionAttack`` (the reference; one base at a time).
``fast``  batched torch: all bases of a target optimised at once, each with its own step size
          decayed by the same rule as ART's (halve when the objective stops improving).

A poison set is kept only when it succeeds against a head trained on the full poisoned pool (the
paper's rule). Sets are cached on disk (``<cache dir>/poisons/<key>.npz``), keyed by the backbone
weights' hash, the data fingerprint, the target, the seed and the crafting parameters.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .backbones import _weights_digest, to_tensor
from .data import cache_dir
from .heads import HeadConfig, fit_standardizer, train_head

__all__ = [
    "PoisonSet",
    "craft_feature_collision",
    "craft_feature_collision_art",
    "make_poison_sets",
    "poison_succeeds",
]

POISON_VERSION = 1


@dataclass
class PoisonSet:
    """One target and its poisons (images quantised to uint8, as a labeler would receive them)."""

    target_index: int  # index of the target in the test split
    target_label: int
    base_label: int
    base_indices: np.ndarray  # indices of the bases in the source images they came from
    images: np.ndarray  # uint8 (P, H, W, C)
    features: np.ndarray  # float32 (P, D), the backbone's features of ``images``
    target_features: np.ndarray  # float32 (D,)
    watermark: float
    success: bool  # the target flips to base_label under a head trained on the full poisoned pool
    feature_distance: float  # mean ||f(p) - f(t)|| / ||f(b) - f(t)|| (1 = no progress, 0 = collision)
    seconds: float
    meta: dict = field(default_factory=dict)


# --------------------------------------------------------------------------------------
# Crafting
# --------------------------------------------------------------------------------------


def _beta(similarity_coeff: float, dim_features: int, num_pixels: int) -> float:
    return similarity_coeff * (dim_features / num_pixels) ** 2


def craft_feature_collision(
    backbone: torch.nn.Module,
    target: np.ndarray,
    bases: np.ndarray,
    *,
    max_iter: int = 120,
    learning_rate: float = 0.5,
    similarity_coeff: float = 256.0,
    decay_coeff: float = 0.5,
    watermark: float = 0.2,
    patience: int = 5,
) -> np.ndarray:
    """Batched feature collision in pure torch (all bases of one target at once).

    Parameters
    ----------
    backbone : torch.nn.Module
        Frozen feature extractor, float NCHW in [0, 1] -> (N, D); used in eval mode.
    target : numpy.ndarray
        uint8 (H, W, C) target image.
    bases : numpy.ndarray
        uint8 (P, H, W, C) base images (another class).
    max_iter : int, default 120
        Forward-backward steps (ART's default).
    learning_rate : float, default 0.5
        Initial step on the feature loss, per image, in [0, 1] pixel units.
    similarity_coeff : float, default 256
        ART's ``similarity_coeff``; sets beta as in ART.
    decay_coeff : float, default 0.5
        A poison's step is multiplied by this when its objective did not improve; the step is
        then rejected (ART's rule, per image instead of per call).
    watermark : float, default 0.2
        Opacity of the target added to every poison at the end (0 disables).
    patience : int, default 5
        Unused steps allowed before a poison's step decays.

    Returns
    -------
    numpy.ndarray
        float32 poisons, (P, H, W, C) in [0, 1].
    """
    if not 0 <= watermark < 1:
        raise ValueError("watermark must be in [0, 1)")
    collided = _collide(backbone, target, bases, max_iter=max_iter, learning_rate=learning_rate,
                        similarity_coeff=similarity_coeff, decay_coeff=decay_coeff, patience=patience)
    return add_watermark(collided, target, watermark)


def add_watermark(collided: np.ndarray, target: np.ndarray, watermark: float) -> np.ndarray:
    """``collided`` (float (P, H, W, C) in [0, 1], :func:`_collide`) plus ``watermark`` times the
    target image, clipped to [0, 1]: the last step of :func:`craft_feature_collision`. The
    optimisation never sees the watermark, so one collision serves every watermark tried."""
    if not 0 <= watermark < 1:
        raise ValueError("watermark must be in [0, 1)")
    x = torch.from_numpy(np.ascontiguousarray(collided)).permute(0, 3, 1, 2)
    t = to_tensor(target[None]).to(x.dtype)
    with torch.no_grad():
        x = (x + watermark * t).clamp_(0, 1)
    return x.permute(0, 2, 3, 1).numpy().astype(np.float32)


def _collide(backbone: torch.nn.Module, target: np.ndarray, bases: np.ndarray, *, max_iter: int = 120,
             learning_rate: float = 0.5, similarity_coeff: float = 256.0, decay_coeff: float = 0.5,
             patience: int = 5) -> np.ndarray:
    """The feature-collision optimisation of :func:`craft_feature_collision` without the watermark:
    float32 (P, H, W, C) in [0, 1]."""
    if bases.ndim != 4 or target.shape != bases.shape[1:]:
        raise ValueError(f"bases (P, H, W, C) and target (H, W, C) must match, got {bases.shape}, {target.shape}")
    backbone.eval()
    dev = next(backbone.parameters()).device
    b = to_tensor(bases).to(dev)
    t = to_tensor(target[None]).to(dev)
    with torch.no_grad():
        ft = backbone(t)
    beta = _beta(similarity_coeff, ft.shape[1], b[0].numel())
    p = len(b)
    lr = torch.full((p, 1, 1, 1), float(learning_rate), device=dev)
    x = b.clone()

    def objective(xx: torch.Tensor, feats: torch.Tensor) -> torch.Tensor:
        return (feats - ft).norm(dim=1) + beta * (xx - b).flatten(1).norm(dim=1)

    with torch.no_grad():
        best_obj = objective(x, backbone(x))
    stale = torch.zeros(p, dtype=torch.long, device=dev)
    for _ in range(max_iter):
        xg = x.clone().requires_grad_(True)
        loss = (backbone(xg) - ft).norm(dim=1).sum()  # images are independent in eval mode
        (grad,) = torch.autograd.grad(loss, xg)
        with torch.no_grad():
            cand = xg - lr * grad  # forward step on the feature term
            cand = ((cand + lr * beta * b) / (1 + beta * lr)).clamp_(0, 1)  # proximal step to the base
            obj = objective(cand, backbone(cand))
            better = obj < best_obj
            x = torch.where(better[:, None, None, None], cand, x)
            best_obj = torch.where(better, obj, best_obj)
            stale = torch.where(better, torch.zeros_like(stale), stale + 1)
            decay = stale >= patience
            lr = torch.where(decay[:, None, None, None], lr * decay_coeff, lr)
            stale[decay] = 0
    return x.permute(0, 2, 3, 1).cpu().numpy().astype(np.float32)


class _WithHead(torch.nn.Module):
    """Backbone + a linear layer so ART sees a classifier; the feature layer is ``features``."""

    def __init__(self, backbone: torch.nn.Module, n_classes: int, dim: int):
        super().__init__()
        self.features = backbone
        self.fc = torch.nn.Linear(dim, n_classes)

    def forward(self, x):
        return self.fc(self.features(x))


def craft_feature_collision_art(
    backbone: torch.nn.Module,
    target: np.ndarray,
    bases: np.ndarray,
    *,
    n_classes: int = 2,
    max_iter: int = 120,
    learning_rate: float = 0.5,
    similarity_coeff: float = 256.0,
    decay_coeff: float = 0.5,
    watermark: float = 0.2,
) -> np.ndarray:
    """The same attack through ART's ``FeatureCollisionAttack`` (reference implementation).

    Parameters and return value as :func:`craft_feature_collision` (ART decays one shared
    step size, processes bases one by one, and stops early on a tiny relative change).
    """
    from art.attacks.poisoning import FeatureCollisionAttack
    from art.estimators.classification import PyTorchClassifier

    dim = int(backbone(to_tensor(target[None])).shape[1])
    model = _WithHead(backbone, n_classes, dim).eval()
    clf = PyTorchClassifier(
        model=model, loss=torch.nn.CrossEntropyLoss(), input_shape=tuple(to_tensor(target[None]).shape[1:]),
        nb_classes=n_classes, clip_values=(0.0, 1.0),
    )
    t = to_tensor(target[None]).numpy()
    attack = FeatureCollisionAttack(
        clf, t, "features", learning_rate=learning_rate, max_iter=max_iter, similarity_coeff=similarity_coeff,
        decay_coeff=decay_coeff, watermark=watermark if watermark > 0 else None, verbose=False,
    )
    poisons, _ = attack.poison(to_tensor(bases).numpy())
    return np.transpose(poisons, (0, 2, 3, 1)).astype(np.float32)


# --------------------------------------------------------------------------------------
# Success check, sets, cache
# --------------------------------------------------------------------------------------


def _quantize(images01: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(images01 * 255.0), 0, 255).astype(np.uint8)


def _features(backbone, images_uint8: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        return backbone(to_tensor(images_uint8)).float().numpy()


def poison_succeeds(
    pool_features: np.ndarray,
    pool_labels: np.ndarray,
    poison_features: np.ndarray,
    base_label: int,
    target_features: np.ndarray,
    n_classes: int,
    *,
    head: HeadConfig | None = None,
    seed: int = 0,
) -> bool:
    """Does a head trained on the full pool plus the poisons (labeled ``base_label``) classify the
    target as ``base_label``? (The paper's criterion for keeping a poison set.)"""
    x = np.concatenate([pool_features, poison_features])
    y = np.concatenate([pool_labels, np.full(len(poison_features), base_label)])
    model = train_head(x, y, n_classes, standardizer=fit_standardizer(x), config=head, seed=seed)
    return int(model.predict(target_features[None])[0]) == int(base_label)


def _cache_file(key_parts: list) -> Path:
    key = hashlib.sha256(json.dumps(key_parts, sort_keys=True, default=str).encode()).hexdigest()[:24]
    return cache_dir() / "poisons" / f"fc-{key}.npz"


def _save(path: Path, ps: PoisonSet) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp.npz")
    os.close(fd)
    try:
        np.savez(
            tmp, images=ps.images, features=ps.features, target_features=ps.target_features,
            base_indices=ps.base_indices,
            info=np.array(json.dumps({
                "target_index": ps.target_index, "target_label": ps.target_label, "base_label": ps.base_label,
                "watermark": ps.watermark, "success": ps.success, "feature_distance": ps.feature_distance,
                "seconds": ps.seconds, "meta": ps.meta,
            })),
        )
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _load(path: Path) -> PoisonSet:
    with np.load(path, allow_pickle=False) as z:
        info = json.loads(str(z["info"]))
        return PoisonSet(
            target_index=info["target_index"], target_label=info["target_label"], base_label=info["base_label"],
            base_indices=z["base_indices"], images=z["images"], features=z["features"],
            target_features=z["target_features"], watermark=info["watermark"], success=info["success"],
            feature_distance=info["feature_distance"], seconds=info["seconds"], meta=info.get("meta", {}),
        )


def make_poison_sets(
    backbone: torch.nn.Module,
    weights,
    *,
    pool_features: np.ndarray,
    pool_labels: np.ndarray,
    test_images: np.ndarray,
    test_features: np.ndarray,
    test_labels: np.ndarray,
    base_images: np.ndarray,
    base_labels: np.ndarray,
    n_classes: int,
    data_fingerprint: str,
    n_targets: int = 10,
    n_bases: int = 50,
    watermarks: tuple[float, ...] = (0.1, 0.2, 0.3),
    max_attempts: int | None = None,
    impl: str = "fast",
    max_iter: int = 120,
    seed: int = 0,
    head: HeadConfig | None = None,
    min_target_confidence: float = 0.0,
    use_cache: bool = True,
    progress: bool = False,
    log=None,
) -> tuple[list[PoisonSet], list[dict]]:
    """Craft poison sets until ``n_targets`` succeed (or ``max_attempts`` targets were tried).

    Targets are test images the clean full-pool head classifies correctly (with at least
    ``min_target_confidence`` probability on their class), drawn in a seeded order, alternating
    classes. The bases of a target are the first ``n_bases`` images of
    ``base_images`` of another class (the paper: "first 50 training instances from a different
    class"); pass training images that are *not* in the pool, so poisons are new items. For each
    target the watermarks are tried in increasing order (the paper: 0.1-0.3 by difficulty) and the
    first one that succeeds is kept.

    Parameters
    ----------
    backbone, weights
        The frozen feature extractor and its weights path (part of the cache key).
    pool_features, pool_labels
        The clean pool (features of the backbone; true labels).
    test_images, test_features, test_labels
        Candidate targets.
    base_images, base_labels
        uint8 images and labels the bases are taken from.
    n_classes : int
    data_fingerprint : str
        Fingerprint of the data set (cache key).
    n_targets : int, default 10
        Successful sets wanted.
    n_bases : int, default 50
    watermarks : tuple of float
    max_attempts : int, optional
        Targets tried at most (default ``4 * n_targets``).
    impl : {"fast", "art"}
    max_iter : int, default 120
    seed : int, default 0
    head : HeadConfig, optional
        Head used by the success check (the loop's).
    min_target_confidence : float, default 0
        Skip targets the clean head classifies with less probability on their class: a target
        next to the boundary is misclassified by half-trained models without any poison, so its
        "success" would measure the learner's own errors, not the attack.
    use_cache : bool, default True
    progress : bool, default False
    log : callable, optional
        One line per target.

    Returns
    -------
    sets : list of PoisonSet
        The successful sets, in the order found.
    attempts : list of dict
        Every target tried: index, classes, watermark, success, feature distance, seconds, cached.
    """
    if impl not in ("fast", "art"):
        raise ValueError("impl must be 'fast' or 'art'")
    if n_targets < 1 or n_bases < 1:
        raise ValueError("n_targets and n_bases must be >= 1")
    log = log or (lambda s: None)
    max_attempts = max_attempts or 4 * n_targets
    clean = train_head(pool_features, pool_labels, n_classes, standardizer=fit_standardizer(pool_features),
                       config=head, seed=seed)
    proba = clean.predict_proba(test_features)
    correct = np.flatnonzero((proba.argmax(axis=1) == test_labels)
                             & (proba[np.arange(len(test_labels)), test_labels] >= min_target_confidence))
    rng = np.random.default_rng(seed)
    by_class = [rng.permutation(correct[test_labels[correct] == c]) for c in range(n_classes)]
    order = [int(i) for group in zip(*by_class) for i in group]  # alternate the target classes
    wdigest = _weights_digest(weights)
    backbone.eval()
    sets: list[PoisonSet] = []
    attempts: list[dict] = []
    iterator = order[:max_attempts]
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(iterator, desc="poison targets", unit="target")
    for ti in iterator:
        if len(sets) >= n_targets:
            break
        t_label = int(test_labels[ti])
        # Two classes: the other one; more: the next class (a fixed, documented choice).
        b_label = (t_label + 1) % n_classes
        cand = np.flatnonzero(base_labels == b_label)[:n_bases]
        if len(cand) < n_bases:
            raise ValueError(f"only {len(cand)} base images of class {b_label}; {n_bases} needed")
        found = None
        collided = None  # fast: one optimisation per target, whatever the watermarks tried
        for wm in watermarks:
            key = [POISON_VERSION, wdigest, data_fingerprint, int(ti), int(b_label), n_bases, float(wm), impl,
                   max_iter, seed, hashlib.sha256(base_images[cand].tobytes()).hexdigest()[:16]]
            path = _cache_file(key)
            cached = use_cache and path.is_file()
            if cached:
                ps = _load(path)
            else:
                start = time.perf_counter()
                if impl == "fast":
                    if collided is None:
                        collided = _collide(backbone, test_images[ti], base_images[cand], max_iter=max_iter)
                    poisons = add_watermark(collided, test_images[ti], wm)
                else:
                    poisons = craft_feature_collision_art(backbone, test_images[ti], base_images[cand],
                                                          max_iter=max_iter, watermark=wm, n_classes=n_classes)
                images = _quantize(poisons)
                feats = _features(backbone, images)
                ft = test_features[ti].astype(np.float32)
                fb = _features(backbone, base_images[cand])
                dist = float(np.mean(np.linalg.norm(feats - ft, axis=1) / np.maximum(
                    np.linalg.norm(fb - ft, axis=1), 1e-12)))
                ok = poison_succeeds(pool_features, pool_labels, feats, b_label, ft, n_classes, head=head, seed=seed)
                ps = PoisonSet(
                    target_index=int(ti), target_label=t_label, base_label=int(b_label), base_indices=cand,
                    images=images, features=feats, target_features=ft, watermark=float(wm), success=ok,
                    feature_distance=dist, seconds=time.perf_counter() - start, meta={"impl": impl, "max_iter": max_iter},
                )
                if use_cache:
                    _save(path, ps)
            attempts.append({"target_index": int(ti), "target_label": t_label, "base_label": int(b_label),
                             "watermark": float(wm), "success": ps.success,
                             "feature_distance": ps.feature_distance, "seconds": ps.seconds, "cached": cached})
            log(f"target {ti} ({t_label}->{b_label}) watermark {wm}: {'hit' if ps.success else 'miss'}, "
                f"relative feature distance {ps.feature_distance:.3f}, {ps.seconds:.1f} s{' (cached)' if cached else ''}")
            if ps.success:
                found = ps
                break
        if found is not None:
            sets.append(found)
    return sets, attempts
