"""Feature-collision poisoning: crafting (fast and ART), the success check, the cache, injection."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from learner.backbones import build_backbone, extract_features
from learner.experiments import poisoned_data
from learner.loop import LoopData
from learner.poison import (
    _features,
    craft_feature_collision,
    craft_feature_collision_art,
    make_poison_sets,
    poison_succeeds,
)


def _images(n, seed, hw=32):
    """Smooth images: a random colour per image plus a gradient and mild noise (pure noise images
    all look alike to a CNN with average pooling)."""
    rng = np.random.default_rng(seed)
    colour = rng.uniform(30, 225, size=(n, 1, 1, 3))
    ramp = np.linspace(-25, 25, hw)[None, :, None, None] * rng.choice([-1, 1], size=(n, 1, 1, 1))
    x = colour + ramp + rng.normal(0, 8, size=(n, hw, hw, 3))
    return np.clip(x, 0, 255).astype(np.uint8)


class _Scaled(torch.nn.Module):
    """A random small CNN's features are ~100x smaller than a trained one's; the attack's beta
    (ART's formula) assumes trained-network scales, so scale them up like training would."""

    def __init__(self, net, factor=50.0):
        super().__init__()
        self.net, self.factor = net, factor

    def forward(self, x):
        return self.net(x) * self.factor


@pytest.fixture(scope="module")
def backbone():
    torch.manual_seed(0)
    return _Scaled(build_backbone("smallcnn", in_channels=3)).eval()


def _rel_distance(backbone, poisons01, bases, target):
    ft = _features(backbone, target[None])[0]
    fp = _features(backbone, np.clip(np.rint(poisons01 * 255), 0, 255).astype(np.uint8))
    fb = _features(backbone, bases)
    return float(np.mean(np.linalg.norm(fp - ft, axis=1) / np.linalg.norm(fb - ft, axis=1)))


def test_fast_crafting_collides_in_feature_space_and_stays_near_the_base(backbone):
    bases, target = _images(4, 1), _images(1, 2)[0]
    x = craft_feature_collision(backbone, target, bases, max_iter=30, watermark=0.0)
    assert x.shape == bases.shape and x.dtype == np.float32
    assert x.min() >= 0 and x.max() <= 1
    assert _rel_distance(backbone, x, bases, target) < 0.8  # 1.0 = not moved at all
    # the proximal term keeps each poison visibly its base (mean change well under the image range)
    assert np.abs(x - bases / 255.0).mean() < 0.15


def test_watermark_blends_the_target_in(backbone):
    bases, target = _images(3, 3), _images(1, 4)[0]
    x0 = craft_feature_collision(backbone, target, bases, max_iter=3, watermark=0.0)
    x3 = craft_feature_collision(backbone, target, bases, max_iter=3, watermark=0.3)
    expected = np.clip(x0 + 0.3 * target / 255.0, 0, 1)
    np.testing.assert_allclose(x3, expected, atol=1e-5)
    with pytest.raises(ValueError, match="watermark"):
        craft_feature_collision(backbone, target, bases, watermark=1.5)
    with pytest.raises(ValueError, match="must match"):
        craft_feature_collision(backbone, target[:5], bases)


def test_art_reference_runs_the_same_attack(backbone):
    bases, target = _images(2, 5), _images(1, 6)[0]
    x = craft_feature_collision_art(backbone, target, bases, max_iter=10, watermark=0.0)
    assert x.shape == bases.shape
    assert _rel_distance(backbone, x, bases, target) < 1.0  # ART moves towards the target too


def test_success_check_is_a_real_retraining():
    rng = np.random.default_rng(0)
    pool = np.concatenate([rng.normal(-2, 1, (50, 4)), rng.normal(2, 1, (50, 4))]).astype(np.float32)
    labels = np.repeat([0, 1], 50)
    target = np.full(4, -0.6, np.float32)  # class-0 side, near the boundary
    on_target = target + rng.normal(0, 0.01, (40, 4)).astype(np.float32)
    far = rng.normal(2, 0.3, (40, 4)).astype(np.float32)  # "poisons" that stayed with their base class
    assert poison_succeeds(pool, labels, on_target, 1, target, 2)
    assert not poison_succeeds(pool, labels, far, 1, target, 2)


@pytest.fixture(scope="module")
def colour_backbone():
    """Mean colours of the four image quadrants through a fixed random linear map: a backbone in
    which collisions are reachable within a few steps (what a trained extractor offers the attacker)."""
    torch.manual_seed(1)
    net = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(2), torch.nn.Flatten(), torch.nn.Linear(12, 16))
    return _Scaled(net, factor=20.0).eval()


def test_make_poison_sets_keeps_successes_caches_and_injects(colour_backbone, tmp_path, monkeypatch):
    backbone = colour_backbone
    monkeypatch.setenv("ROBUSTAL_CACHE_DIR", str(tmp_path))
    # Class 0 = dark smooth images, class 1 = bright ones: a random CNN separates them.
    def imgs(n, seed, lo, hi):
        x = _images(n, seed, hw=16).astype(float)
        return np.clip(lo + x * (hi - lo) / 255.0, 0, 255).astype(np.uint8)

    x_pool = np.concatenate([imgs(40, 10, 0, 150), imgs(40, 11, 105, 255)])
    y_pool = np.repeat([0, 1], 40)
    x_test = np.concatenate([imgs(10, 12, 0, 150), imgs(10, 13, 105, 255)])
    y_test = np.repeat([0, 1], 10)
    x_base = np.concatenate([imgs(8, 14, 0, 150), imgs(8, 15, 105, 255)])
    y_base = np.repeat([0, 1], 8)
    pf, tf = extract_features(backbone, x_pool), extract_features(backbone, x_test)
    kw = dict(pool_features=pf, pool_labels=y_pool, test_images=x_test, test_features=tf, test_labels=y_test,
              base_images=x_base, base_labels=y_base, n_classes=2, data_fingerprint="fp", n_targets=1,
              n_bases=8, max_iter=25, max_attempts=6)
    sets, attempts = make_poison_sets(backbone, None, **kw)
    assert attempts and not any(a["cached"] for a in attempts)
    assert len(sets) == 1, attempts
    ps = sets[0]
    assert ps.success and ps.images.dtype == np.uint8 and ps.images.shape == (8, 16, 16, 3)
    assert ps.base_label != ps.target_label
    # the kept set really flips the target under a head trained on pool + poisons
    assert poison_succeeds(pf, y_pool, ps.features, ps.base_label, ps.target_features, 2)
    again, attempts2 = make_poison_sets(backbone, None, **kw)
    assert all(a["cached"] for a in attempts2)
    # no target is classified more surely than certainty: nothing to try
    assert make_poison_sets(backbone, None, **{**kw, "min_target_confidence": 1.01}) == ([], [])
    np.testing.assert_array_equal(again[0].images, ps.images)
    assert list((tmp_path / "poisons").glob("fc-*.npz"))

    data = LoopData(pool_features=pf, pool_labels=y_pool, test_features=tf, test_labels=y_test, n_classes=2,
                    pool_images=x_pool)
    pdata = poisoned_data(data, ps)
    assert len(pdata.pool_features) == len(pf) + 8 and len(pdata.pool_images) == len(x_pool) + 8
    assert (pdata.pool_labels[-8:] == ps.base_label).all()  # clean label: humans see the base
    np.testing.assert_array_equal(pdata.watch_features[0], ps.target_features)
    assert data.watch_features is None  # the clean data is not modified


def test_make_poison_sets_rejects_bad_settings(backbone):
    with pytest.raises(ValueError, match="impl"):
        make_poison_sets(backbone, None, pool_features=None, pool_labels=None, test_images=None,
                         test_features=None, test_labels=None, base_images=None, base_labels=None,
                         n_classes=2, data_fingerprint="x", impl="gpu")


def test_one_collision_per_target_serves_every_watermark(colour_backbone, monkeypatch):
    """The watermark is added after the optimisation, so every watermark of a target is tried on
    one collision (three watermarks cost one optimisation, not three); the poisons are those of
    crafting with that watermark directly."""
    from learner import poison

    backbone = colour_backbone
    x_pool, x_test = _images(20, 20, hw=16), _images(6, 21, hw=16)
    y_pool, y_test = np.repeat([0, 1], 10), np.repeat([0, 1], 3)
    x_base, y_base = _images(8, 22, hw=16), np.repeat([0, 1], 4)
    pf, tf = extract_features(backbone, x_pool), extract_features(backbone, x_test)
    calls, crafted = [], {}
    real = poison._collide

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    def never(pool_features, pool_labels, poison_features, base_label, target_features, n_classes, **kw):
        crafted.setdefault(len(calls), []).append(poison_features)
        return False

    monkeypatch.setattr(poison, "_collide", counting)
    monkeypatch.setattr(poison, "poison_succeeds", never)
    sets, attempts = make_poison_sets(
        backbone, None, pool_features=pf, pool_labels=y_pool, test_images=x_test, test_features=tf,
        test_labels=y_test, base_images=x_base, base_labels=y_base, n_classes=2, data_fingerprint="fp",
        n_targets=1, n_bases=4, max_iter=5, max_attempts=2, watermarks=(0.1, 0.2, 0.3), min_target_confidence=0.0,
        use_cache=False)
    assert sets == [] and len(attempts) == 6  # 2 targets x 3 watermarks, all tried...
    assert len(calls) == 2  # ...on one collision per target
    first = attempts[0]["target_index"]
    cand = np.flatnonzero(y_base == (y_test[first] + 1) % 2)[:4]
    for wm, feats in zip((0.1, 0.2, 0.3), crafted[1]):
        direct = poison._quantize(craft_feature_collision(backbone, x_test[first], x_base[cand], max_iter=5,
                                                          watermark=wm))
        np.testing.assert_array_equal(poison._features(backbone, direct), feats)
