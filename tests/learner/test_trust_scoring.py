import math

import pytest

from trust.scoring import (LabelerTrust, Outcome, Status, TrustPolicy, apply_confirmation, apply_outcome,
                           is_alert, performance_dropped, required_labelers, resolve, review, review_rejects,
                           trust_decrease)


def test_h_formula_matches_the_paper():
    assert required_labelers(0.9995, 0.9391) == 3
    assert required_labelers(0.99, 0.9) == 2
    assert required_labelers(0.9, 0.9) == 1
    assert required_labelers(0.9999, 0.8) == math.ceil(math.log(1e-4) / math.log(0.2))
    with pytest.raises(ValueError):
        required_labelers(1.0, 0.9)


def test_performance_check():
    assert performance_dropped(0.80, 0.90, 0.05)
    assert not performance_dropped(0.86, 0.90, 0.05)
    assert not performance_dropped(0.5, None, 0.05)


def test_resolve_outcomes():
    assert resolve(1, [1, 1, 1]) == (Outcome.AGREED, 1)
    assert resolve(1, [0, 0, 0]) == (Outcome.DISAGREED, 0)
    assert resolve(1, [0, 1, 0]) == (Outcome.INCONSISTENT, None)


def test_decrease_shrinks_as_the_model_believes_the_original_label():
    assert trust_decrease(0.05, 0.1) > trust_decrease(0.5, 0.1) > trust_decrease(0.95, 0.1)
    assert trust_decrease(1.0, 0.1) == 0.0


def test_high_confidence_disagreement_flags_at_once():
    policy = TrustPolicy()
    state = apply_outcome(LabelerTrust(), Outcome.DISAGREED, prob_original=0.02, prob_consensus=0.98, policy=policy)
    assert state.status is Status.FLAGGED and state.alerts == 1
    assert state.trust == pytest.approx(1 - 0.1 * 0.98)
    mild = apply_outcome(LabelerTrust(), Outcome.DISAGREED, prob_original=0.45, prob_consensus=0.55, policy=policy)
    assert mild.status is Status.ACTIVE and mild.alerts == 0
    assert is_alert(0.9) and not is_alert(0.89)


def test_agreement_and_confirmation_restore_trust_up_to_one():
    policy = TrustPolicy()
    state = LabelerTrust(trust=0.95)
    apply_outcome(state, Outcome.AGREED, prob_original=0.9, prob_consensus=0.9, policy=policy)
    assert state.trust == pytest.approx(0.96)
    for _ in range(20):
        apply_confirmation(state, policy)
    assert state.trust == 1.0


def test_inconsistent_blames_nobody():
    state = apply_outcome(LabelerTrust(), Outcome.INCONSISTENT, prob_original=0.0, prob_consensus=0.0,
                          policy=TrustPolicy())
    assert state.trust == 1.0 and state.checked == 0


def test_trust_below_threshold_suspends_and_weight_is_zero():
    policy = TrustPolicy()
    state = LabelerTrust(trust=0.25)
    apply_outcome(state, Outcome.DISAGREED, prob_original=0.2, prob_consensus=0.8, policy=policy)
    assert state.status is Status.SUSPENDED
    assert state.weight == 0.0


def test_review_separates_honest_from_malicious():
    policy = TrustPolicy()
    assert not review_rejects(100, 5, policy)  # 5 % errors: an honest labeler
    assert review_rejects(100, 20, policy)  # 20 %: not plausible
    honest = LabelerTrust(status=Status.FLAGGED, labels_given=80, checked=4, disagreements=3)
    assert review(honest, policy) is Status.ACTIVE
    liar = LabelerTrust(status=Status.FLAGGED, labels_given=40, checked=12, disagreements=10)
    assert review(liar, policy) is Status.SUSPENDED


def test_audit_threshold_rises_only_for_proven_labelers():
    from trust.scoring import LabelerTrust, Status, audit_threshold

    new = LabelerTrust()
    assert audit_threshold(new, 0.5, 0.9, proven_after=10) == 0.5  # nothing checked yet
    proven = LabelerTrust(checked=10, disagreements=2)
    assert audit_threshold(proven, 0.5, 0.9, proven_after=10) == 0.9
    assert audit_threshold(proven, 0.5, None, proven_after=10) == 0.5  # the distinction is off
    assert audit_threshold(proven, 0.95, 0.9, proven_after=10) == 0.95  # never below the base
    refuted = LabelerTrust(checked=12, disagreements=6)  # half refuted: a pattern, keep checking
    assert audit_threshold(refuted, 0.5, 0.9, proven_after=10) == 0.5
    flagged = LabelerTrust(checked=20, disagreements=0, status=Status.FLAGGED)
    assert audit_threshold(flagged, 0.5, 0.9, proven_after=10) == 0.5
