"""Dawid-Skene confusion estimates (trust/confusion.py) and the per-project trust thresholds."""
from __future__ import annotations

import numpy as np
import pytest

from learner.live import LiveConfig
from learner import trust as scoring
from learner.confusion import dawid_skene, systematic_pairs


def _crowd(n_items=300, k=3, honest=6, error=0.05, mapping=None, seed=0, votes_per_item=3):
    """Each item labeled by ``votes_per_item`` random labelers; the last labeler (if ``mapping``)
    maps class a -> b. Returns (items, workers, labels, truth)."""
    rng = np.random.default_rng(seed)
    truth = rng.integers(k, size=n_items)
    n_workers = honest + (1 if mapping else 0)
    items, workers, labels = [], [], []
    for i, t in enumerate(truth):
        for w in rng.choice(n_workers, size=votes_per_item, replace=False):
            if mapping and w == n_workers - 1 and t in mapping:
                lab = mapping[t]
            elif rng.random() < error:
                lab = (t + rng.integers(1, k)) % k
            else:
                lab = t
            items.append(i)
            workers.append(int(w))
            labels.append(int(lab))
    return items, workers, labels, truth


def test_a_systematic_mapping_is_caught_while_the_majority_label_stays_right():
    items, workers, labels, truth = _crowd(mapping={0: 1})
    ds = dawid_skene(items, workers, labels, 3)
    # the "secured-set check" view: the consensus (majority) barely suffers, so it stays quiet
    assert (ds.posterior.argmax(axis=1) == truth).mean() > 0.97
    bad = max(ds.workers)
    conf, counts = ds.of(bad)
    assert conf[0, 1] > 0.8 and counts[0, 1] > 20
    assert systematic_pairs(conf, counts) == [(0, 1)]
    for w in ds.workers:
        if w != bad:
            c, n = ds.of(w)
            assert systematic_pairs(c, n) == []  # honest 5 % errors spread over the other classes
            assert np.diag(c).min() > 0.85


def test_the_mapping_is_found_even_without_redundant_human_labels_when_the_model_votes():
    """Each item seen by one human only; the model's prediction joins as one more labeler (what the
    web loop does), so every item has two votes to compare."""
    rng = np.random.default_rng(1)
    truth = rng.integers(2, size=400)
    who = rng.integers(11, size=400)  # labeler 10 maps 0 -> 1
    given = np.where((who == 10) & (truth == 0), 1, truth)
    model_pred = np.where(rng.random(400) < 0.93, truth, 1 - truth)  # a 93 % accurate model
    ds = dawid_skene(list(range(400)) * 2, who.tolist() + ["model"] * 400, given.tolist() + model_pred.tolist(), 2)
    c, n = ds.of(10)
    assert systematic_pairs(c, n) == [(0, 1)]
    assert all(systematic_pairs(*ds.of(w)) == [] for w in range(10))


def test_rows_are_distributions_and_counts_match_the_labels():
    items, workers, labels, _ = _crowd(n_items=60, seed=3)
    ds = dawid_skene(items, workers, labels, 3)
    assert np.allclose(ds.confusion.sum(axis=2), 1.0)
    assert np.allclose(ds.posterior.sum(axis=1), 1.0)
    assert ds.counts.sum() == pytest.approx(len(labels))
    assert 1 <= ds.iterations <= 50


def test_few_labels_do_not_look_like_a_mapping():
    # one labeler, two items of class 0, both wrongly 1: rate high but under the count floor
    conf = np.array([[0.2, 0.8], [0.0, 1.0]])
    assert systematic_pairs(conf, np.array([[0.5, 2.0], [0.0, 5.0]]), min_count=3) == []
    assert systematic_pairs(conf, np.array([[0.5, 3.0], [0.0, 5.0]]), min_count=3) == [(0, 1)]


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="same length"):
        dawid_skene([0, 1], [0], [0, 1], 2)
    with pytest.raises(ValueError, match="0..1"):
        dawid_skene([0], [0], [2], 2)
    with pytest.raises(ValueError, match="at least 2"):
        dawid_skene([0], [0], [0], 1)
    assert dawid_skene([], [], [], 3).posterior.shape == (0, 3)


def test_trust_thresholds_are_validated_per_project():
    cfg = LiveConfig.from_dict({"flag_alpha": 0.01, "suspend_alpha": 0.001, "alert_confidence": 0.95,
                                "trust_penalty": 0.3, "trust_reward": 0.02, "confusion_min_rate": None})
    assert cfg.flag_alpha == 0.01 and cfg.confusion_min_rate is None
    with pytest.raises(ValueError, match="suspend_alpha"):
        LiveConfig.from_dict({"flag_alpha": 0.001, "suspend_alpha": 0.01})
    with pytest.raises(ValueError, match="alert_confidence"):
        LiveConfig.from_dict({"alert_confidence": 1.5})
    with pytest.raises(ValueError, match="confusion_min_count"):
        LiveConfig.from_dict({"confusion_min_count": 0})
    with pytest.raises(ValueError, match="audit_confidence_proven"):
        LiveConfig.from_dict({"audit_confidence_proven": 2})
    with pytest.raises(ValueError, match="pool_defence must be one of"):
        LiveConfig.from_dict({"pool_defence": "magic"})
    with pytest.raises(ValueError, match="reannotation"):
        LiveConfig.from_dict({"reannotation": "sometimes"})
    assert LiveConfig.from_dict({"pool_defence": "density", "audit_confidence_proven": None}).pool_defence == "density"
    # a project stored by an earlier version keeps loading (retired trust thresholds are ignored)
    assert LiveConfig.from_dict({"flag_below": 0.7, "suspend_below": 0.2}).flag_alpha == LiveConfig().flag_alpha


def test_project_thresholds_reach_the_scoring_rules():
    from learner.engine import policy_of

    policy = policy_of(LiveConfig.from_dict({"flag_alpha": 0.02, "alert_confidence": 0.99, "trust_penalty": 0.5,
                                             "trust_window": 7, "p1": 0.9}))
    assert (policy.flag_alpha, policy.alert_confidence, policy.penalty, policy.window, policy.p_1) == (
        0.02, 0.99, 0.5, 7, 0.9)
    state = scoring.LabelerTrust()
    # p(consensus) 0.95 < 0.99: no alert; the loss is 0.5 x (1 - 0.05)
    scoring.apply_outcome(state, scoring.Outcome.DISAGREED, prob_original=0.05, prob_consensus=0.95, policy=policy)
    assert state.alerts == 0 and state.trust == pytest.approx(0.525) and state.status is scoring.Status.ACTIVE


def test_review_suggestion_follows_the_rules():
    policy = scoring.TrustPolicy()
    slip = [(0, None)] * 29 + [(1, 0)]
    assert scoring.suggest_review(slip, 3, [], policy)[0] == "reinstate"  # 1 of 30: an honest slip
    what, why = scoring.suggest_review([(0, None)] * 21 + [(1, 0)] * 9, 3, [], policy)
    assert what == "suspend" and "implausible" in why
    what, why = scoring.suggest_review(slip, 3, [("1", "7")], policy)
    assert what == "suspend" and "1 -> 7" in why
    # a spammer whose first labels look plausible but whose re-annotation votes were refuted
    short = [(0, None)] * 5 + [(1, 0)]
    spam_votes = [(1, 0)] * 8 + [(0, 0)] * 4
    assert scoring.suggest_review(short, 3, [], policy)[0] == "reinstate"
    assert scoring.suggest_review(short, 3, [], policy, votes=[(0, 0)] * 12)[0] == "reinstate"
    what, why = scoring.suggest_review(short, 3, [], policy, votes=spam_votes)
    assert what == "suspend" and "8 of 12 re-annotation votes" in why
