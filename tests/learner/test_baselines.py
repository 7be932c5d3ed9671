"""Fair baselines: redundancy with crowd-kit aggregation, the budget split, the exported labels,
the ablation switches and the tau rule firing once the model is robust."""
from __future__ import annotations

import numpy as np
import pytest

from learner import engine, live
from learner.aggregation import aggregate
from learner.experiments import split_strategy, variant_overrides
from learner.heads import fit_standardizer
from learner.loop import LoopConfig, LoopData, run_loop
from learner.oracles import LabelerPool
from learner.trust import LabelerTrust


@pytest.fixture(scope="module")
def binary(digits):
    xp, yp, xt, yt = digits
    mp, mt = np.isin(yp, [1, 7]), np.isin(yt, [1, 7])
    return LoopData(xp[mp], (yp[mp] == 7).astype(int), xt[mt], (yt[mt] == 7).astype(int), 2)


def test_crowdkit_majority_and_dawid_skene():
    answers = [(0, 1, 0), (0, 2, 0), (0, 3, 1), (1, 1, 1), (1, 2, 1), (1, 3, 1)]
    assert aggregate(answers, "majority") == {0: 0, 1: 1}
    assert aggregate(answers, "dawid_skene", items=[1]) == {1: 1}
    with pytest.raises(ValueError):
        aggregate(answers, "mean")


def test_variant_suffixes():
    assert split_strategy("margin+vote3") == ("margin", None, None)
    assert variant_overrides("margin+vote3") == {"redundancy": 3, "aggregation": "majority", "defenses": False}
    assert variant_overrides("margin+ds2")["aggregation"] == "dawid_skene"
    assert variant_overrides("robust+no-augment+no-trust") == {"augment": (), "trust_weights": False}
    with pytest.raises(ValueError, match="defence package"):
        live.LiveConfig.from_dict({"strategy": "robust", "redundancy": 3})


@pytest.mark.parametrize("variant,k", [("vote3", 3), ("ds2", 2), ("ds3", 3)])
def test_redundancy_buys_k_labels_per_item_and_the_split_adds_up(digits, variant, k):
    xp, yp, xt, yt = digits
    data = LoopData(xp, yp, xt, yt, 10)
    cfg = LoopConfig(strategy="margin", budget=240, **variant_overrides(f"margin+{variant}"))
    result = run_loop(data, cfg, LabelerPool.build(10, n_labelers=11), seed=0)
    for rec in result.history:
        split = rec.bought_by_kind
        assert split["first"] + split["secured"] + split["reannotation"] == rec.labels_bought
        assert split["secured"] == 0  # undefended: no secured set
        assert split["reannotation"] == (k - 1) * split["first"]  # k distinct labelers per item
    assert result.history[-1].labels_bought <= 240
    assert 0.9 <= result.exported_accuracy <= 1.0


def test_majority_of_three_outvotes_one_liar(binary):
    """Three labelers of 11 map every 1 to 7: three-way majority exports more right labels than
    one label per item."""
    pool = LabelerPool.build(2, n_labelers=11, error_rate=0.0, n_malicious=3, mapping={0: 1})
    plain = run_loop(binary, LoopConfig(strategy="margin", budget=150), pool, seed=1)
    voted = run_loop(binary, LoopConfig(strategy="margin", budget=450, **variant_overrides("margin+vote3")),
                     pool, seed=1)
    assert plain.exported_accuracy < 0.9
    assert voted.exported_accuracy > plain.exported_accuracy
    assert voted.exported == plain.exported  # the same number of items, three labels each


def test_engine_majority_resolves_the_batch(digits):
    x, y, _, _ = digits
    pool = engine.Pool(features=x, n_classes=10, standardizer=fit_standardizer(x))
    cfg = live.LiveConfig(strategy="margin", redundancy=3, aggregation="majority", augment=(), secured_size=0)
    n = len(y)
    state = engine.EngineState(labels=np.full(n, -1), labeler_of=np.full(n, -1), discarded=np.zeros(n, bool),
                               secured=np.zeros(n, bool), secured_labels=np.full(n, -1),
                               trust={u: LabelerTrust() for u in range(5)}, crowd=list(range(5)))
    batch = np.arange(20)
    given = (y[batch] + 1) % 10  # labeler 0 is wrong on every item
    state.labels[batch], state.labeler_of[batch], state.batch = given, 0, batch
    state.answers = [(int(i), 0, int(g)) for i, g in zip(batch, given)]
    plan = engine.step(cfg, pool, state, previous_model=None)
    assert not plan.closed and len(plan.requests) == 20
    for req in plan.requests:
        assert len(req.new_voters) == 2 and 0 not in req.new_voters
        req.votes += [int(y[req.item])] * 2
        state.answers += [(req.item, v, int(y[req.item])) for v in req.new_voters]
    plan = engine.step(cfg, pool, state, previous_model=None)
    assert plan.closed
    assert (state.labels[batch] == y[batch]).all() and (state.labeler_of[batch] == -1).all()
    assert {r["outcome"] for r in plan.rounds} == {"disagreed"}


def test_ablation_switches_reach_the_engine():
    cfg = LoopConfig(strategy="robust", **variant_overrides("robust+no-secured+no-audits+no-trust")).engine_config(0)
    assert cfg.secured_size == 0 and cfg.audit_confidence is None and cfg.trust_weights is False


def test_tau_fires_once_the_model_is_robust(binary):
    """The crafted examples of the queried batch need ever larger perturbations as the boundary
    region runs out of items; the rule stops the run there (misclassified items have no
    adversarial example and no longer pin the minimum at 0)."""
    cfg = dict(strategy="robust", defenses=False, budget=400)
    free = run_loop(binary, LoopConfig(**cfg), LabelerPool.build(2, error_rate=0.0), seed=0)
    perts = np.array([h.min_perturbation for h in free.history[1:]])
    assert np.nanmin(perts) > 0  # never pinned at 0 by a misclassified item
    tau = float(np.nanmax(perts[:3])) * 1.2  # above anything the first batches needed
    stopped = run_loop(binary, LoopConfig(tau=tau, **cfg), LabelerPool.build(2, error_rate=0.0), seed=0)
    assert stopped.stop_reason == "tau"
    assert stopped.history[-1].labels_bought < 400
    assert stopped.history[-1].min_perturbation > tau
    assert stopped.final_accuracy >= 0.99


def test_fragile_first_takes_fragile_items_and_skips_near_duplicates():
    from learner.strategies import fragile_first

    features = np.array([[0.0, 0.0], [0.01, 0.0], [1.0, 1.0], [2.0, 0.0], [5.0, 5.0]])
    centers = np.array([4])  # one labeled item far away
    # candidates in fragility order: 0, then 1 (a near-duplicate of 0), then 2 and 3
    chosen = fragile_first(np.array([0, 1, 2, 3]), features, centers, 3)
    assert chosen.tolist() == [0, 2, 3]
    assert fragile_first(np.array([0, 1]), features, centers, 2).tolist() == [0, 1]  # too few: fill in order


def test_posterior_threshold_audits_an_honest_labeler_only_where_the_model_is_sure():
    from learner.engine import posterior_threshold

    fresh = posterior_threshold(LabelerTrust(), 0.2, 0.9391)
    refuted = posterior_threshold(LabelerTrust(checked=4, disagreements=4), 0.2, 0.9391)
    held = posterior_threshold(LabelerTrust(checked=30, disagreements=0), 0.2, 0.9391)
    assert refuted < 0.5 < fresh < held < 1.0


def test_pipeline_labels_the_batch_chosen_one_step_earlier(binary):
    """With ``pipeline`` people label batch i+1 (chosen by F_{i-1}) while F_i trains: batches never
    overlap, the in-flight batch counts as bought, and the budget holds."""
    cfg = LoopConfig(strategy="margin", budget=200, pipeline=True)
    run = run_loop(binary, cfg, LabelerPool.build(2, error_rate=0.0), seed=0)
    sync = run_loop(binary, LoopConfig(strategy="margin", budget=200), LabelerPool.build(2, error_rate=0.0), seed=0)
    bought = [h.labels_bought for h in run.history]
    assert bought[0] == 40  # the random first batch + the second one labeled while F_0 trains
    assert bought == sorted(bought) and bought[-1] <= 200
    assert run.history[-1].n_labeled == 200 and sync.history[-1].n_labeled == 200  # every label bought is used
    assert len(run.history) == len(sync.history)  # the same batches, each chosen one model earlier
    for rec in run.history:
        assert sum(rec.bought_by_kind.values()) == rec.labels_bought


def test_pipeline_never_queries_the_pending_batch(digits):
    x, y, _, _ = digits
    pool = engine.Pool(features=x, n_classes=10, standardizer=fit_standardizer(x))
    cfg = live.LiveConfig(strategy="margin", pipeline=True, batch_size=20, secured_size=0, defenses=False)
    n = len(y)
    sp = engine.start(cfg, n, label_known=np.ones(n, bool), crowd=[0, 1], buy_secured=False)
    assert len(sp.following) == 20 and not set(sp.following) & set(sp.initial)
    state = engine.EngineState(labels=np.full(n, -1), labeler_of=np.full(n, -1), discarded=np.zeros(n, bool),
                               secured=np.zeros(n, bool), secured_labels=np.full(n, -1),
                               trust={0: LabelerTrust(), 1: LabelerTrust()}, crowd=[0, 1])
    state.labels[sp.initial], state.labeler_of[sp.initial] = y[sp.initial], 0
    state.batch, state.pending = sp.initial, sp.following
    plan = engine.step(cfg, pool, state, previous_model=None)
    assert plan.closed and len(plan.next_items) == 20
    assert not set(plan.next_items) & set(sp.following)
    assert state.batch.tolist() == sp.following.tolist() and state.pending.tolist() == plan.next_items
