"""Artificial data for the loop: adversarial and noise copies of newly labeled items.

Two spaces:

* ``feature`` (default for simulations): with a frozen backbone and a linear head, the minimal
  L2 perturbation that flips an item is exact and closed-form (the point C&W with confidence 0
  and DeepFool both converge to), so the adversarial copy is ``z + (1 + overshoot) r`` and the
  noise copy adds Gaussian noise of the given variance on the head's (standardised) input.
* ``pixel``: C&W L2 and DeepFool through backbone + head on the images (fast batched torch or
  ART, ``LoopConfig.attack_impl``), Gaussian pixel noise, then the backbone's features of the
  crafted images. :func:`pixel_crafter` is the loop engine's crafter for both drivers
  (``simulate --augment-space pixel`` and a live project with ``augment_space = "pixel"``).

Both return, per item, the artificial feature rows (labelled later with the item's label) and
the item's minimal perturbation (0 when the model already gets the item wrong, inf when no
attack flipped it); pixel space also counts the attacks that failed (their images are dropped).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def craft_feature_space(pool_features, standardizer, model, items, labels, config, rng):
    """Adversarial + noise copies in feature space. Returns (rows per item, L2 per item)."""
    w, b = model.class_weights()
    z = np.asarray(pool_features[items], dtype=np.float64)
    logits = z @ w.T + b
    pred = logits.argmax(axis=1)
    l2 = np.zeros(len(items))
    rows: list[np.ndarray] = []
    _, scale = standardizer
    for n, (item_z, y, p) in enumerate(zip(z, labels, pred)):
        out = []
        if p == y and ({"cw", "deepfool"} & set(config.augment)):
            gaps = logits[n, p] - logits[n]
            dw = w[p][None, :] - w
            norms = np.linalg.norm(dw, axis=1)
            with np.errstate(divide="ignore", invalid="ignore"):
                dist = np.where(norms > 0, gaps / norms, np.inf)
            dist[p] = np.inf
            j = int(np.argmin(dist))
            l2[n] = dist[j]
            if np.isfinite(dist[j]):
                r = -(gaps[j] / norms[j] ** 2) * dw[j]
                out.append(item_z + (1.0 + config.overshoot) * r)
        elif p != y:
            l2[n] = 0.0
        if "noise" in config.augment:
            noise = rng.normal(0.0, np.sqrt(config.noise_variance), size=item_z.shape) * scale
            out.append(item_z + noise)
        rows.append(np.asarray(out, dtype=np.float32).reshape(len(out), -1))
    return rows, l2


@dataclass(frozen=True)
class PixelSettings:
    """What pixel-space crafting reads of a run's or a project's settings."""

    augment: tuple[str, ...]  # subset of ("cw", "deepfool", "noise")
    noise_variance: float
    attack_impl: str = "fast"  # "fast" (batched torch, learner.attacks) or "art" (reference)


@dataclass
class PixelCrafted:
    """Pixel-space copies of a batch of items (one entry per item, in the items' order)."""

    rows: list[np.ndarray]  # features of the kept copies: adversarial ones first, the noise copy last
    l2: np.ndarray  # minimal perturbation in pixels (0: the model gets the item wrong; inf: no attack flipped it)
    failed: int  # attacks (item x method) that found no image the head puts across the boundary: dropped
    images: list[np.ndarray]  # the kept copies as float images (NCHW, in [0, 1]), same order as rows


def craft_pixel_space(images_uint8, backbone, model, labels, settings: PixelSettings, rng, *,
                      device=None) -> PixelCrafted:
    """C&W / DeepFool / noise on the images through backbone + head; features of the results.

    ``images_uint8`` are the items' images (NHWC, the ones their features were computed from),
    ``backbone`` maps [0, 1] NCHW images to those features and ``model`` is the head
    (:class:`learner.heads.LinearHead`). An attack's image is kept only when the head puts its
    features across the boundary; the others are dropped and counted in ``failed``, never
    replaced by the input. Runs on ``device`` (default :func:`learner.device.pick`; ``backbone``
    is moved there) with batch sizes from :func:`learner.device.crafting_batch_size`.
    """
    import torch
    from torch import nn

    from . import attacks
    from . import device as devices
    from .backbones import to_tensor

    dev = devices.pick() if device is None else torch.device(device)
    labels = np.asarray(labels)
    backbone = backbone.to(dev).eval()
    classifier = nn.Sequential(backbone, model.torch_module().to(dev)).eval()
    x = to_tensor(np.asarray(images_uint8))
    batch = devices.crafting_batch_size(classifier, x[:1].to(dev), dev) if len(x) else 1
    with torch.no_grad():
        pred = torch.cat([classifier(x[s:s + batch].to(dev)).argmax(dim=1).cpu()
                          for s in range(0, len(x), batch)]).numpy() if len(x) else np.zeros(0, np.int64)
    right = pred == labels
    l2 = np.where(right, np.inf, 0.0)
    adversarial: list[list[tuple[np.ndarray, float]]] = [[] for _ in range(len(x))]
    attempted = np.zeros(len(x), dtype=np.int64)
    idx = np.flatnonzero(right)
    art = settings.attack_impl == "art"
    for method in ("cw", "deepfool"):
        if method not in settings.augment or len(idx) == 0:
            continue
        kw = {"max_iter": 20} if method == "cw" else {"max_iter": 100}
        if not art:
            kw["batch_size"] = batch
        result = attacks.craft(method + ("_art" if art else ""), classifier, x[idx].numpy(), device=dev, **kw)
        attempted[idx] += 1
        for k, n in enumerate(idx):
            if result.success[k]:
                adversarial[n].append((result.adversarial[k], float(result.perturbation_l2[k])))
    noisy = (attacks.gaussian_noise(x.numpy(), variance=settings.noise_variance, rng=rng)
             if "noise" in settings.augment else None)
    width = len(model.mean)  # the head's input: the backbone's feature width
    # every candidate image through the backbone at once (batched), then split per item
    owner = [n for n in range(len(x)) for _ in adversarial[n]]
    adv_all = _features(backbone, [img for n in range(len(x)) for img, _ in adversarial[n]], dev, batch, width)
    noise_all = _features(backbone, list(noisy), dev, batch, width) if noisy is not None else None
    # A minimal perturbation lands next to the boundary, where torch float32 (the attack's check)
    # and the head's own float64 prediction can disagree; keep only copies that the head the loop
    # trains really puts across the boundary.
    owner = np.asarray(owner, dtype=np.int64)
    crossed_all = (model.predict(adv_all) != labels[owner]) if len(adv_all) else np.zeros(0, bool)
    rows, kept_images, failed = [], [], 0
    for n in range(len(x)):
        mine = np.flatnonzero(owner == n)
        crossed = crossed_all[mine]
        for (_, dist), ok in zip(adversarial[n], crossed):
            if ok:
                l2[n] = min(l2[n], dist)
        failed += int(attempted[n] - crossed.sum())
        parts = [adv_all[mine][crossed]]
        images = [img for (img, _), ok in zip(adversarial[n], crossed) if ok]
        if noise_all is not None:
            parts.append(noise_all[n:n + 1])
            images.append(np.clip(noisy[n], 0.0, 1.0))
        rows.append(np.concatenate(parts).astype(np.float32))
        kept_images.append(np.stack(images).astype(np.float32) if images else np.zeros((0, *x.shape[1:]), np.float32))
    return PixelCrafted(rows=rows, l2=l2, failed=failed, images=kept_images)


def pixel_crafter(images_of, backbone, settings: PixelSettings, *, device=None):
    """The engine's ``Pool.crafter`` for pixel space; both drivers use it (``simulate
    --augment-space pixel`` and a live project with ``augment_space = "pixel"``).

    ``images_of(items)`` returns the uint8 NHWC images of pool items. The backbone is copied
    once onto the device (the caller's module is left where it is).
    """
    import copy

    import torch

    from . import device as devices

    dev = devices.pick() if device is None else torch.device(device)
    own = copy.deepcopy(backbone).to(dev).eval()

    def crafter(model, items, labels, seed):
        items = np.asarray(items, dtype=np.int64)
        out = craft_pixel_space(images_of(items), own, model, labels, settings, np.random.default_rng(seed),
                                device=dev)
        return ({int(i): r for i, r in zip(items, out.rows) if len(r)},
                {int(i): float(v) for i, v in zip(items, out.l2)}, out.failed)
    return crafter


def _features(backbone, images, device, batch_size, width):
    """Backbone features of float images (NCHW, clipped to [0, 1]) as float32 numpy; (0, width) when none."""
    import torch

    if not images:
        return np.zeros((0, width), dtype=np.float32)
    arr = torch.from_numpy(np.clip(np.stack(images), 0.0, 1.0).astype(np.float32))
    out = []
    with torch.no_grad():  # float images: 8-bit rounding could undo a minimal perturbation
        for s in range(0, len(arr), batch_size):
            out.append(backbone(arr[s:s + batch_size].to(device)).reshape(len(arr[s:s + batch_size]), -1).cpu())
    return torch.cat(out).numpy().astype(np.float32)
