import numpy as np
import pytest

from learner.heads import fit_standardizer, train_head
from learner.strategies import (STRATEGIES, QueryContext, RobustMinimax, k_center_greedy, largest_remainder,
                                make_strategy, min_sq_distances)


@pytest.fixture(scope="module")
def setup(digits):
    xp, yp, *_ = digits
    rng = np.random.default_rng(0)
    labeled = np.zeros(len(yp), dtype=bool)
    labeled[rng.choice(len(yp), 60, replace=False)] = True
    model = train_head(xp[labeled], yp[labeled], 10, standardizer=fit_standardizer(xp), seed=0)
    return xp, yp, labeled, model


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_every_strategy_returns_distinct_unlabeled_indices(setup, name):
    x, y, labeled, model = setup
    strategy = make_strategy(name)
    kw = {"labels_of_labeled": np.where(labeled, y, -1)} if name == "robust" else {}
    for k, v in kw.items():
        setattr(strategy, k, v)
    idx = strategy.query(x, labeled, model, 25, rng=np.random.default_rng(1))
    assert len(idx) == 25
    assert len(set(idx.tolist())) == 25
    assert not labeled[idx].any()


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_strategies_respect_budget_and_pool_end(setup, name):
    x, y, labeled, model = setup
    strategy = make_strategy(name)
    idx = strategy.query(x, labeled, model, 25, rng=np.random.default_rng(1), context=QueryContext(budget_left=7))
    assert len(idx) == 7
    almost_full = np.ones(len(y), dtype=bool)
    almost_full[[3, 5]] = False
    idx = strategy.query(x, almost_full, model, 25, rng=np.random.default_rng(1))
    assert sorted(idx.tolist()) == [3, 5]


def test_margin_picks_the_least_certain(setup):
    x, _, labeled, model = setup
    idx = make_strategy("margin").query(x, labeled, model, 10, rng=np.random.default_rng(0))
    proba = np.sort(model.predict_proba(x), axis=1)
    margins = proba[:, -1] - proba[:, -2]
    unl = np.flatnonzero(~labeled)
    assert margins[idx].max() <= np.sort(margins[unl])[9] + 1e-12


def test_k_center_greedy_maximises_min_distance():
    # points on a line; labeled at 0: the farthest point (10) first, then the middle (5)
    x = np.arange(11, dtype=np.float32)[:, None]
    picked = k_center_greedy(np.arange(1, 11), x, np.array([0]), 2, np.random.default_rng(0))
    assert picked.tolist() == [10, 5]


def test_min_sq_distances_matches_brute_force():
    rng = np.random.default_rng(0)
    p, c = rng.normal(size=(50, 4)), rng.normal(size=(7, 4))
    brute = ((p[:, None, :] - c[None]) ** 2).sum(-1).min(1)
    np.testing.assert_allclose(min_sq_distances(p, c, chunk=8), brute, rtol=1e-5, atol=1e-5)


def test_largest_remainder_allocation():
    alloc = largest_remainder(np.array([1.0, 1.0, 2.0]), 8, np.array([10, 10, 10]))
    assert alloc.tolist() == [2, 2, 4]
    capped = largest_remainder(np.array([0.0, 1.0, 100.0]), 6, np.array([5, 5, 2]))
    assert capped.sum() == 6 and capped[2] == 2


def test_robust_spends_batch_where_the_model_is_fragile(setup):
    x, y, labeled, model = setup
    strategy = RobustMinimax(n_clusters=10, seed=0)
    strategy.labels_of_labeled = np.where(labeled, y, -1)
    cluster, n_c, dist = strategy.allocation(x, labeled, model, 40)
    assert n_c.sum() == 40
    unl = ~labeled
    frag = np.array([np.exp(-dist[(cluster == c) & unl] / np.median(dist[unl])).mean() for c in range(10)])
    per_item = n_c / np.maximum(np.bincount(cluster[unl], minlength=10), 1)
    # clusters whose items are more fragile get more of the batch per item
    assert np.corrcoef(frag, per_item)[0, 1] > 0.3
    idx = strategy.query(x, labeled, model, 40, rng=np.random.default_rng(0))
    # picks are far more fragile than the pool at large
    assert np.median(dist[idx]) < np.median(dist[unl]) * 0.7


def test_robust_uses_previous_adversarial_perturbations(setup):
    x, y, labeled, model = setup
    strategy = RobustMinimax(n_clusters=10, seed=0)
    strategy.labels_of_labeled = np.where(labeled, y, -1)
    cluster, base, _ = strategy.allocation(x, labeled, model, 40)
    target = int(np.argmin(base))
    items = np.flatnonzero(cluster == target)[:3]
    others = np.flatnonzero(cluster != target)[:30]
    ctx = QueryContext(item_perturbations={**{int(i): 0.01 for i in items}, **{int(i): 1.0 for i in others}})
    _, boosted, _ = strategy.allocation(x, labeled, model, 40, ctx)
    assert boosted[target] >= base[target]


def test_unknown_strategy_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown strategy 'nope'"):
        make_strategy("nope")
