import numpy as np
import pytest

from learner.oracles import Labeler, LabelerPool


def test_benign_labeler_errs_at_rate_pr_uniformly():
    rng = np.random.default_rng(0)
    labeler = Labeler(0, error_rate=0.05)
    truth = rng.integers(10, size=40000)
    given = np.array([labeler.label(t, 10, rng) for t in truth])
    wrong = given != truth
    assert abs(wrong.mean() - 0.05) < 0.006
    # errors spread over the other classes: each wrong class gets about 1/9 of the errors of class 0
    errs_of_0 = given[(truth == 0) & wrong]
    counts = np.bincount(errs_of_0, minlength=10)
    assert counts[0] == 0
    assert counts[1:].min() > 0.4 * counts[1:].mean()


def test_malicious_labeler_flips_all_of_its_target_class():
    rng = np.random.default_rng(0)
    labeler = Labeler(0, error_rate=0.05, mapping={1: 7})
    assert all(labeler.label(1, 10, rng) == 7 for _ in range(500))
    others = np.array([labeler.label(3, 10, rng) for _ in range(5000)])
    assert abs((others != 3).mean() - 0.05) < 0.015


def test_pool_build_marks_malicious_and_assigns_active_only():
    pool = LabelerPool.build(2, n_labelers=11, n_malicious=1, mapping={0: 1})
    assert [lab.malicious for lab in pool.labelers].count(True) == 1
    rng = np.random.default_rng(0)
    who = pool.assign(1000, [0, 2, 4], rng)
    assert set(who.tolist()) == {0, 2, 4}


def test_reannotation_never_goes_to_the_original_labeler():
    pool = LabelerPool.build(2, n_labelers=11)
    rng = np.random.default_rng(0)
    for original in range(11):
        chosen = pool.assign_reannotation(original, 3, pool.ids, rng)
        assert len(chosen) == 3 and len(set(chosen)) == 3 and original not in chosen


def test_pool_validation():
    with pytest.raises(ValueError):
        LabelerPool.build(2, n_labelers=3, n_malicious=4, mapping={0: 1})
    with pytest.raises(ValueError):
        LabelerPool.build(2, n_labelers=3, n_malicious=1)
    with pytest.raises(RuntimeError):
        LabelerPool.build(2).assign(3, [], np.random.default_rng(0))
