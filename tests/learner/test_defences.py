"""Deep k-NN defence: a constructed clean-label poisoning case, and its hook in the loop."""
from __future__ import annotations

import numpy as np
import pytest

from learner.defences import apply_defence, deep_knn_keep
from learner.loop import LoopConfig, LoopData, run_loop
from learner.oracles import LabelerPool


def _two_blobs(n=60, seed=0):
    rng = np.random.default_rng(seed)
    x0 = rng.normal([0, 0], 0.7, size=(n, 2))
    x1 = rng.normal([4, 0], 0.7, size=(n, 2))
    return np.concatenate([x0, x1]), np.repeat([0, 1], n)


def test_dknn_drops_poisons_inside_the_other_class_and_keeps_clean_points():
    x, y = _two_blobs()
    poisons = np.array([[0.2, 0.1], [0.0, -0.2], [-0.1, 0.1], [0.1, 0.0]])  # inside class 0, labeled 1
    feats = np.concatenate([x, poisons])
    labels = np.concatenate([y, np.ones(len(poisons), dtype=int)])
    keep = deep_knn_keep(feats, labels, k=10)
    assert not keep[-len(poisons):].any()
    assert keep[: len(x)].mean() > 0.97  # the blobs barely overlap: (almost) every clean point stays


def test_dknn_ties_keep_and_small_sets_pass_through():
    feats = np.array([[0.0], [1.0], [2.0], [3.0]])
    labels = np.array([0, 1, 0, 1])
    # k = 2: point 1 has neighbours 0 and 2 (both 0) -> dropped; point 0 has 1 (label 1) and 2 (label 0) -> tie, kept.
    keep = deep_knn_keep(feats, labels, k=2)
    assert keep[0] and not keep[1]
    assert deep_knn_keep(np.zeros((2, 3)), np.array([0, 1]), k=5).all()
    assert apply_defence(None, feats, labels).all() and apply_defence("none", feats, labels).all()


def test_dknn_rejects_bad_input():
    with pytest.raises(ValueError, match="must agree"):
        deep_knn_keep(np.zeros((5, 2)), np.zeros(4, dtype=int))
    with pytest.raises(ValueError, match="k must be"):
        deep_knn_keep(np.zeros((5, 2)), np.zeros(5, dtype=int), k=0)
    with pytest.raises(ValueError, match="unknown defence"):
        apply_defence("magic", np.zeros((5, 2)), np.zeros(5, dtype=int))


def _blobs(n, seed):
    rng = np.random.default_rng(seed)
    x = np.concatenate([rng.normal([0, 0], 0.6, size=(n, 2)), rng.normal([3, 3], 0.6, size=(n, 2))])
    return x, np.repeat([0, 1], n)


def _poisoned_loop_data():
    """Class 0 around (0, 0), class 1 around (3, 3); a class-0 target near the boundary and eight
    class-1-labeled poisons on top of it (feature collision in 2-d)."""
    x, y = _blobs(80, seed=1)
    target = np.array([[1.25, 1.25]])
    poisons = target + np.random.default_rng(2).normal(0, 0.02, size=(8, 2))
    xt, yt = _blobs(40, seed=3)
    return LoopData(
        pool_features=np.concatenate([x, poisons]).astype(np.float32),
        pool_labels=np.concatenate([y, np.ones(8, dtype=int)]),
        test_features=xt.astype(np.float32), test_labels=yt, n_classes=2,
        watch_features=target.astype(np.float32),
    )


@pytest.mark.parametrize("defence, flipped", [(None, True), ("dknn", False)])
def test_loop_defence_stops_the_constructed_poisoning(defence, flipped):
    data = _poisoned_loop_data()
    labelers = LabelerPool.build(2, n_labelers=3, error_rate=0.0)
    n = len(data.pool_labels)
    # Label the whole pool (no early stop): every poison ends up in D, labeled as its base class.
    cfg = LoopConfig(strategy="random", initial_size=20, batch_size=200, budget=n, defenses=False,
                     augment=(), defence=defence, defence_k=25)
    res = run_loop(data, cfg, labelers, seed=0)
    assert res.history[-1].n_labeled == n
    assert (res.watch_predictions[0] == 1) is flipped
    if defence == "dknn":
        assert res.defence_dropped >= 8  # the poisons (and at most a few border points)
        assert res.defence_dropped <= 12
    else:
        assert res.defence_dropped == 0
