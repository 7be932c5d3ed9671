"""Deep k-NN defence: a constructed clean-label poisoning case, and its hook in the loop."""
from __future__ import annotations

import numpy as np
import pytest

from learner.defences import apply_defence, deep_knn_keep, dense_cluster_mask, quarantine
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
    """Class 0 around (0, 0), class 1 around (3, 3); a class-0 target near the boundary and ten
    class-1-labeled poisons on top of it (feature collision in 2-d)."""
    x, y = _blobs(80, seed=1)
    target = np.array([[1.25, 1.25]])
    poisons = target + np.random.default_rng(2).normal(0, 0.02, size=(10, 2))
    xt, yt = _blobs(40, seed=3)
    return LoopData(
        pool_features=np.concatenate([x, poisons]).astype(np.float32),
        pool_labels=np.concatenate([y, np.ones(10, dtype=int)]),
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
        assert res.defence_dropped >= 10  # the poisons (and at most a few border points)
        assert res.defence_dropped <= 14
    else:
        assert res.defence_dropped == 0


# ---- density: quarantine of abnormally dense pool clusters ---------------------------------


def _collision_pool(n_per_class=300, n_poisons=40, dim=16, seed=0):
    """Two Gaussian classes in ``dim``-d plus ``n_poisons`` class-1-labeled points collided onto
    one class-0 target near the boundary (what feature collision does to a frozen backbone)."""
    rng = np.random.default_rng(seed)
    shift = np.zeros(dim)
    shift[0] = 4.0
    x = np.concatenate([rng.normal(0, 1, (n_per_class, dim)), rng.normal(0, 1, (n_per_class, dim)) + shift])
    y = np.repeat([0, 1], n_per_class)
    target = np.zeros((1, dim))
    target[0, 0] = 1.8  # class 0, but not by much
    poisons = target + rng.normal(0, 0.05, (n_poisons, dim))
    return x, y, target, poisons


def test_density_quarantines_a_collided_cluster_and_little_else():
    x, y, _, poisons = _collision_pool()
    feats = np.concatenate([x, poisons])
    flagged = dense_cluster_mask(feats)
    assert flagged[len(x):].all()  # every poison
    # the densest cores of the natural classes go too (a Gaussian's centre is its densest part):
    # a small, measured cost; on CIFAR-2 it is 1.5 % of the pool (docs/results.md)
    assert flagged[: len(x)].mean() < 0.08
    assert dense_cluster_mask(x).mean() < 0.08
    assert quarantine("density", feats).sum() == flagged.sum()
    assert not quarantine("dknn", feats).any() and not quarantine(None, feats).any()
    # density acts on the pool, not on each training set
    assert apply_defence("density", feats, np.zeros(len(feats), dtype=int)).all()


def test_density_rejects_bad_input_and_passes_tiny_pools():
    with pytest.raises(ValueError, match=r"\(N, D\)"):
        dense_cluster_mask(np.zeros(10))
    with pytest.raises(ValueError, match="min_samples"):
        dense_cluster_mask(np.zeros((100, 2)), min_samples=0)
    assert not dense_cluster_mask(np.random.default_rng(0).normal(size=(30, 4))).any()
    with pytest.raises(ValueError, match="unknown defence"):
        quarantine("magic", np.zeros((5, 2)))


@pytest.mark.parametrize("defence, flipped", [(None, True), ("density", False)])
def test_loop_density_keeps_the_poisons_from_labelers_and_training(defence, flipped):
    x, y, target, poisons = _collision_pool()
    xt, yt, _, _ = _collision_pool(n_per_class=100, seed=5)
    n_clean = len(x)
    data = LoopData(
        pool_features=np.concatenate([x, poisons]).astype(np.float32),
        pool_labels=np.concatenate([y, np.ones(len(poisons), dtype=int)]),
        test_features=xt.astype(np.float32), test_labels=yt, n_classes=2,
        watch_features=target.astype(np.float32),
    )
    labelers = LabelerPool.build(2, n_labelers=3, error_rate=0.0)
    # Label everything that may be labeled (no early stop): the poisons too, unless quarantined.
    cfg = LoopConfig(strategy="random", initial_size=20, batch_size=200, defenses=False, augment=(),
                     defence=defence)
    res = run_loop(data, cfg, labelers, seed=0)
    assert (res.watch_predictions[0] == 1) is flipped
    poisons_out = [i for i in res.quarantined if i >= n_clean]
    if defence == "density":
        assert len(poisons_out) == len(poisons)
        assert res.history[-1].n_labeled == len(data.pool_labels) - len(res.quarantined)
        assert res.history[-1].labels_bought == res.history[-1].n_labeled  # quarantine costs no label
    else:
        assert res.quarantined == [] and res.history[-1].n_labeled == len(data.pool_labels)


def test_poison_experiment_reports_control_runs_and_quarantined_poisons():
    """run_experiment on a poison set: hits per run, the clean-pool control on the same target,
    and how many poisons the density defence kept out."""
    from learner.experiments import (ExperimentSpec, PreparedData, attack_success, control_misclassification,
                                     run_experiment)
    from learner.poison import PoisonSet

    x, y, target, poisons = _collision_pool()
    xt, yt, _, _ = _collision_pool(n_per_class=100, seed=5)
    data = LoopData(pool_features=x.astype(np.float32), pool_labels=y, test_features=xt.astype(np.float32),
                    test_labels=yt, n_classes=2)
    ps = PoisonSet(target_index=0, target_label=0, base_label=1, base_indices=np.arange(len(poisons)),
                   images=np.zeros((len(poisons), 2, 2, 3), np.uint8), features=poisons.astype(np.float32),
                   target_features=target[0].astype(np.float32), watermark=0.1, success=True,
                   feature_distance=0.0, seconds=0.0)
    prepared = PreparedData(data, ("a", "b"), "synthetic", "fp", 0.0, poison_sets=[ps],
                            poison_attempts=[{"target_index": 0}])
    loop = LoopConfig(initial_size=20, batch_size=200, augment=(), defenses=False)
    spec = ExperimentSpec(scenario="poison", strategies=("random", "random+density"), runs=2, backbone="smallcnn",
                          loop=loop, target_accuracy=1.01)  # never reached: every run labels all it may
    result = run_experiment(spec, progress=False, prepared=prepared)
    asr, control = attack_success(result), control_misclassification(result)
    assert asr == {"random": 1.0, "random+density": 0.0}
    assert control == {"random": 0.0, "random+density": 0.0}  # the target is class 0 without poisons
    hits = result.poison["hits"]
    assert [h["poisons_quarantined"] for h in hits["random+density"]] == [len(poisons)] * 2
    assert [h["poisons_quarantined"] for h in hits["random"]] == [0, 0]
    assert all(h["hit_without_poisons"] is False for h in hits["random"])
    # the paper's poisoning experiment has an honest crowd: the attack is in the pool
    assert all(r.malicious == [] for runs in result.runs.values() for r in runs)
