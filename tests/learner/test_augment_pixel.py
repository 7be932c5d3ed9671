"""Pixel-space crafting through backbone + head, as the live loop and `--augment-space pixel` use it."""
import numpy as np
import pytest
from sklearn.datasets import load_digits

from learner.augment import craft_pixel_space
from learner.backbones import build_backbone, extract_features
from learner.heads import fit_standardizer, train_head
from learner.loop import LoopConfig, LoopData, run_loop
from learner.oracles import LabelerPool


@pytest.fixture(scope="module")
def pixel_data():
    x, y = load_digits(return_X_y=True)
    mask = np.isin(y, [3, 8])
    images = np.round(x[mask] / 16.0 * 255).astype(np.uint8).reshape(-1, 8, 8, 1)
    labels = (y[mask] == 8).astype(int)
    backbone = build_backbone("flatten", in_channels=1)
    feats = extract_features(backbone, images)
    n = 250
    return LoopData(feats[:n], labels[:n], feats[n:], labels[n:], 2, pool_images=images[:n], backbone=backbone)


@pytest.mark.parametrize("impl", ["fast", "art"])
def test_pixel_space_adversarial_copies_flip_the_model(pixel_data, impl):
    d = pixel_data
    st = fit_standardizer(d.pool_features)
    model = train_head(d.pool_features[:120], d.pool_labels[:120], 2, standardizer=st, seed=0)
    items = np.flatnonzero(model.predict(d.pool_features) == d.pool_labels)[:6]
    cfg = LoopConfig(augment=("cw", "deepfool", "noise"), augment_space="pixel", attack_impl=impl,
                     noise_variance=0.01).resolved()
    rows, l2 = craft_pixel_space(d, model, items, d.pool_labels[items], cfg, np.random.default_rng(0))
    assert len(rows) == len(items)
    assert np.isfinite(l2).all() and (l2 > 0).all()
    for item, r in zip(items, rows):
        assert r.shape[1] == d.pool_features.shape[1]
        assert 2 <= len(r) <= 3  # C&W and DeepFool when they succeed, plus one noise copy
        flipped = model.predict(r[:-1]) != d.pool_labels[item]
        assert flipped.all()  # adversarial copies cross the boundary (noise copy is last)
        # each adversarial copy is at least as far as the item's minimal perturbation
        dist = np.linalg.norm(r[:-1] - d.pool_features[item], axis=1)
        assert dist.min() >= l2[list(items).index(item)] * 0.999


def test_loop_runs_with_pixel_space_crafting(pixel_data):
    result = run_loop(pixel_data, LoopConfig(strategy="robust", augment_space="pixel", budget=120,
                                             noise_variance=0.01), LabelerPool.build(2), seed=0)
    assert result.history[-1].n_artificial > 0
    assert all(np.isfinite(h.min_perturbation) for h in result.history[1:])
