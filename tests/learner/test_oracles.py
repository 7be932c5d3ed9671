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


def test_pool_build_marks_the_adversaries():
    pool = LabelerPool.build(2, n_labelers=11, n_malicious=1, mapping={0: 1})
    assert [lab.malicious for lab in pool.labelers] == [False] * 10 + [True]
    spam = LabelerPool.build(3, n_labelers=11, n_malicious=2, kind="spammer")
    assert [lab.spammer for lab in spam.labelers].count(True) == 2


def test_answers_do_not_depend_on_the_order_questions_come_in():
    pool = LabelerPool.build(3, n_labelers=5, error_rate=0.3)
    items = list(range(200))
    forward = [pool.answer(j, i, i % 3, seed=7) for j in range(5) for i in items]
    backward = {(j, i): pool.answer(j, i, i % 3, seed=7) for j in reversed(range(5)) for i in reversed(items)}
    assert forward == [backward[(j, i)] for j in range(5) for i in items]
    assert forward != [pool.answer(j, i, i % 3, seed=8) for j in range(5) for i in items]  # the seed matters
    assert pool.answer(0, 3, 0, seed=7, nth=1) is not None  # a second answer to the same item draws anew


def test_a_sleeper_is_honest_for_exactly_its_first_30_first_labels():
    sleeper = LabelerPool.build(3, n_labelers=2, n_malicious=1, mapping={0: 2}, kind="sleeper",
                                error_rate=0.0).labelers[1]
    rng = np.random.default_rng(0)
    assert [sleeper.label(0, 3, rng, given_before=k) for k in range(30)] == [0] * 30
    assert sleeper.label(0, 3, rng, given_before=30) == 2
    assert sleeper.label(0, 3, rng, first_label=False, given_before=100) == 0  # honest on re-annotations
    assert sleeper.label(1, 3, rng, given_before=100) == 1  # outside its mapping


def test_a_spammer_answers_uniformly_at_random():
    spammer = LabelerPool.build(4, n_labelers=2, n_malicious=1, kind="spammer").labelers[1]
    rng = np.random.default_rng(0)
    counts = np.bincount([spammer.label(0, 4, rng) for _ in range(4000)], minlength=4)
    assert counts.min() > 900 and counts.max() < 1100


def test_pool_validation():
    with pytest.raises(ValueError):
        LabelerPool.build(2, n_labelers=3, n_malicious=4, mapping={0: 1})
    with pytest.raises(ValueError):
        LabelerPool.build(2, n_labelers=3, n_malicious=1)
    with pytest.raises(ValueError, match="unknown adversary kind"):
        LabelerPool.build(2, n_labelers=3, n_malicious=1, mapping={0: 1}, kind="troll")


def test_attacks_says_which_answers_are_attacks():
    sleeper = LabelerPool.build(3, n_labelers=2, n_malicious=1, mapping={0: 2}, kind="sleeper",
                                error_rate=0.0).labelers[1]
    assert not sleeper.attacks(0, given_before=29)
    assert sleeper.attacks(0, given_before=30)
    assert not sleeper.attacks(0, first_label=False, given_before=30)  # re-annotations stay honest
    assert not sleeper.attacks(1, given_before=30)  # outside its mapping
    mapper = Labeler(0, mapping={1: 7})
    assert mapper.attacks(1, first_label=False) and not mapper.attacks(2)
    assert Labeler(0, spammer=True).attacks(5)
    assert not Labeler(0, error_rate=0.5).attacks(1)  # an honest error is no attack
