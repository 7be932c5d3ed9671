"""Artificial data for the loop: adversarial and noise copies of newly labeled items.

Two spaces:

* ``feature`` (default for simulations): with a frozen backbone and a linear head, the minimal
  L2 perturbation that flips an item is exact and closed-form (the point C&W with confidence 0
  and DeepFool both converge to), so the adversarial copy is ``z + (1 + overshoot) r`` and the
  noise copy adds Gaussian noise of the given variance on the head's (standardised) input.
* ``pixel``: C&W L2 and DeepFool through backbone + head on the images (fast batched torch or
  ART, ``LoopConfig.attack_impl``), Gaussian pixel noise, then the backbone's features of the
  crafted images.

Both return, per item, the artificial feature rows (labelled later with the item's label) and
the item's minimal perturbation (0 when the model already gets the item wrong).
"""
from __future__ import annotations

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


def craft_pixel_space(data, model, items, labels, config, rng):
    """C&W / DeepFool / noise on the images through backbone + head; features of the results."""
    import torch
    from torch import nn

    from . import attacks
    from .backbones import to_tensor

    if data.pool_images is None or data.backbone is None:
        raise ValueError("pixel-space crafting needs the pool's images and the backbone")
    classifier = nn.Sequential(data.backbone, model.torch_module()).eval()
    x = to_tensor(data.pool_images[items])
    with torch.no_grad():
        pred = classifier(x).argmax(dim=1).numpy()
    right = pred == np.asarray(labels)
    l2 = np.where(right, np.inf, 0.0)
    adversarial: list[list[tuple[np.ndarray, float]]] = [[] for _ in items]
    idx = np.flatnonzero(right)
    suffix = "_art" if config.attack_impl == "art" else ""
    for method in ("cw", "deepfool"):
        if method not in config.augment or len(idx) == 0:
            continue
        kw = {"max_iter": 20} if method == "cw" else {"max_iter": 100}
        result = attacks.craft(method + suffix, classifier, x[idx].numpy(), **kw)
        for k, n in enumerate(idx):
            if result.success[k]:
                adversarial[n].append((result.adversarial[k], float(result.perturbation_l2[k])))
    noisy = (attacks.gaussian_noise(x.numpy(), variance=config.noise_variance, rng=rng)
             if "noise" in config.augment else None)
    labels = np.asarray(labels)
    width = data.pool_features.shape[1]
    rows = []
    for n in range(len(items)):
        adv_feats = _features(data.backbone, [img for img, _ in adversarial[n]], width)
        # A minimal perturbation lands next to the boundary, where torch float32 (the attack's
        # check) and the head's own float64 prediction can disagree; keep only copies that the
        # head the loop trains really puts across the boundary.
        crossed = model.predict(adv_feats) != labels[n] if len(adv_feats) else np.zeros(0, bool)
        for (_, dist), ok in zip(adversarial[n], crossed):
            if ok:
                l2[n] = min(l2[n], dist)
        parts = [adv_feats[crossed]]
        if noisy is not None:
            parts.append(_features(data.backbone, [noisy[n]], width))
        rows.append(np.concatenate(parts).astype(np.float32))
    return rows, l2


def _features(backbone, images, width):
    """Backbone features of float images (NCHW, clipped to [0, 1]); (0, width) when none."""
    import torch

    if not images:
        return np.zeros((0, width), dtype=np.float32)
    arr = torch.from_numpy(np.clip(np.stack(images), 0.0, 1.0).astype(np.float32))
    with torch.no_grad():  # float images: 8-bit rounding could undo a minimal perturbation
        return backbone.eval()(arr).reshape(len(arr), -1).numpy().astype(np.float32)
