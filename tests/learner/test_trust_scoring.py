import math

import pytest

from learner.trust import (LabelerTrust, Outcome, Status, TrustPolicy, apply_confirmation, apply_outcome, assess,
                           is_alert, performance_dropped, refutation_pvalue, rejected_class, required_labelers, resolve,
                           resolve_votes, tarone_tests,
                           trust_decrease, votes_needed)


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
    # nobody backs the original label, but the others disagree: discarded, and the original refuted
    assert resolve(1, [0, 2, 0]) == (Outcome.REJECTED, None)
    assert rejected_class([2, 0, 0]) == 0 and rejected_class([2, 0]) == 2


def test_a_rejected_round_changes_no_training_weight():
    policy = TrustPolicy()
    state = LabelerTrust()
    assert apply_outcome(state, Outcome.REJECTED, prob_original=0.1, prob_consensus=0.6, policy=policy) is None
    assert state.checked == 0 and state.trust == 1.0  # the refutation counts in assess (engine verdicts)


def test_decrease_shrinks_as_the_model_believes_the_original_label():
    assert trust_decrease(0.05, 0.1) > trust_decrease(0.5, 0.1) > trust_decrease(0.95, 0.1)
    assert trust_decrease(1.0, 0.1) == 0.0


def test_one_high_confidence_disagreement_is_an_alert_not_a_flag():
    policy = TrustPolicy()
    state = LabelerTrust()
    assert apply_outcome(state, Outcome.DISAGREED, prob_original=0.02, prob_consensus=0.98, policy=policy) == "alert"
    assert state.status is Status.ACTIVE and state.alerts == 1
    assert state.trust == pytest.approx(1 - 0.1 * 0.98)
    verdict = assess(state, [(1, 0)] + [(0, None)] * 19, 2, systematic=False, unchecked=5, policy=policy)
    assert verdict.status is Status.ACTIVE  # one refuted label of 20: an honest slip
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
    state = LabelerTrust()
    assert apply_outcome(state, Outcome.INCONSISTENT, prob_original=0.0, prob_consensus=0.0,
                         policy=TrustPolicy()) is None
    assert state.trust == 1.0 and state.checked == 0


def test_suspended_weight_is_zero():
    assert LabelerTrust(trust=0.8, status=Status.SUSPENDED).weight == 0.0
    assert LabelerTrust(trust=0.8, status=Status.FLAGGED).weight == 0.8


def test_adaptive_rounds_settle_on_a_confirming_first_vote():
    assert resolve_votes(1, [1], 3, adaptive=True) == (Outcome.AGREED, 1)
    assert resolve_votes(1, [0], 3, adaptive=True) == (None, None)  # ask the others
    assert resolve_votes(1, [0, 0, 0], 3, adaptive=True) == (Outcome.DISAGREED, 0)
    assert resolve_votes(1, [0, 1], 3, adaptive=True) == (Outcome.INCONSISTENT, None)
    assert resolve_votes(1, [0, 2], 3, adaptive=True) == (Outcome.REJECTED, None)  # two others, neither says 1
    assert resolve_votes(1, [1], 3, adaptive=False) == (None, None)
    assert resolve_votes(1, [1, 1, 1], 3, adaptive=False) == (Outcome.AGREED, 1)


def test_a_split_round_escalates_to_a_majority_of_h():
    """Colluders split a round on their partner's mapped label (1 -> 0 here: one colluding voter
    says 1 with the original, two honest voters say 0): with escalation two more voters are asked
    and the majority of h decides, so the mapped label is refuted instead of discarded unjudged."""
    split = [0, 1, 0]
    assert resolve_votes(1, split, 3, adaptive=True) == (Outcome.INCONSISTENT, None)  # the paper's rule
    assert resolve_votes(1, split, 3, adaptive=True, escalate=2) == (None, None)
    assert votes_needed(1, split, 3, escalate=2) == 2
    assert votes_needed(1, split, 3) == 0
    assert votes_needed(1, [0], 3, escalate=2) == 2  # no split yet: the usual h in all
    assert resolve_votes(1, split + [0, 0], 3, adaptive=True, escalate=2) == (Outcome.DISAGREED, 0)
    assert resolve_votes(1, split + [0, 1], 3, adaptive=True, escalate=2) == (Outcome.DISAGREED, 0)  # 3 of 5
    assert resolve_votes(1, [0, 1, 1, 1, 0], 3, adaptive=True, escalate=2) == (Outcome.AGREED, 1)
    assert resolve_votes(1, [0, 1, 2, 2, 1], 3, adaptive=True, escalate=2) == (Outcome.INCONSISTENT, None)  # no 3
    # nobody else can be asked: a split round is decided on the votes it has (3 of 4), or not at all
    assert resolve_votes(1, [0, 1, 0, 0], 3, adaptive=True, escalate=2) == (None, None)
    assert resolve_votes(1, [0, 1, 0, 0], 3, adaptive=True, escalate=2, final=True) == (Outcome.DISAGREED, 0)
    assert resolve_votes(1, [0, 1, 0], 3, adaptive=True, escalate=2, final=True) == (Outcome.INCONSISTENT, None)
    assert resolve_votes(1, [0, 0], 3, adaptive=True, final=True) == (Outcome.DISAGREED, 0)  # fewer than h, agreeing
    # a rejected round (the original label among no votes) ends at once, as before
    assert resolve_votes(1, [0, 2], 3, adaptive=True, escalate=2) == (Outcome.REJECTED, None)


def test_refuted_label_test_separates_honest_slips_from_a_mapping():
    policy = TrustPolicy()
    slips = [(1, 0), (0, 1), (2, 1), (1, 2), (0, 2)]  # 5 % refuted, spread over classes and time
    held = [(k % 3, None) for k in range(90)]  # an honest labeler's labels held, of every class
    honest = [x for j, slip in enumerate(slips) for x in held[18 * j:18 * (j + 1)] + [slip]]
    assert refutation_pvalue(honest, 3, policy) > policy.flag_alpha
    # the same slips in one burst are a cluster worth a look (a flag, which an audit then clears)
    assert refutation_pvalue(held + slips, 3, policy) < policy.flag_alpha
    # a short record is charged only for the distinct tests it allows: 3 refuted of 5 flags
    spam = [(1, 0), (0, None), (2, 1), (3, None), (1, 2)]  # 15 tests would make it 0.031
    assert refutation_pvalue(spam, 4, policy) < policy.flag_alpha
    mapper = [(0, None), (2, None), (7, 1), (0, None), (7, 1), (7, 1)]  # every label of true class 1 -> 7
    assert refutation_pvalue(mapper, 10, policy) < policy.flag_alpha
    assert refutation_pvalue(mapper + [(7, 1)] * 2, 10, policy) < policy.suspend_alpha
    # a sleeper: 30 honest labels, then its recent window turns
    sleeper = [(0, None)] * 30 + [(7, 1), (0, None), (7, 1), (7, 1), (2, None), (7, 1)]
    assert refutation_pvalue(sleeper, 10, policy) < policy.flag_alpha


def test_assess_flags_audits_then_suspends_or_reinstates():
    policy = TrustPolicy()
    state = LabelerTrust()
    mapper = [(7, 1)] * 3 + [(0, None)] * 3
    assert assess(state, mapper, 10, systematic=False, unchecked=3, policy=policy).status is Status.FLAGGED
    state.status = Status.FLAGGED
    # the audit is still running: stay flagged
    assert assess(state, mapper, 10, systematic=False, unchecked=2, policy=policy).status is Status.FLAGGED
    # the audit is done and the whole record is damning: suspended
    worse = [(7, 1)] * 3 + [(0, 0)] * 3 + [(3, 1)] * 2
    assert assess(state, worse, 10, systematic=False, unchecked=0, policy=policy).status is Status.SUSPENDED
    # the audit found its other labels right: one burst in a long honest record is reinstated
    burst = [(0, 0), (1, 1)] * 30 + [(7, 1)] * 4 + [(0, 0)] * 5
    verdict = assess(state, burst, 10, systematic=False, unchecked=0, policy=policy)
    assert verdict.status is Status.ACTIVE and "audit done" in verdict.reason
    # ... unless Dawid-Skene still sees a class mapping (a sleeper's recent turn in a long record)
    assert assess(state, burst, 10, systematic=False, unchecked=0, policy=policy,
                  pattern=True).status is Status.SUSPENDED
    # a second episode: cleared by that audit, flagged again by new labels alone, and the recent
    # runs stay improbable after the second audit: suspended although the whole record is diluted
    again = LabelerTrust(status=Status.FLAGGED, cleared=len(burst))
    second = burst + [(0, 0)] * 3 + [(7, 1)] * 4
    assert assess(again, second, 10, systematic=False, unchecked=0, policy=policy).status is Status.SUSPENDED
    # ... but not on a record the recent runs do not condemn (two slips in the new labels)
    mild = burst + [(0, 0)] * 3 + [(7, 1), (0, 0), (0, 0), (7, 1)]
    assert assess(again, mild, 10, systematic=False, unchecked=0, policy=policy).status is Status.ACTIVE
    # a systematic pair from Dawid-Skene flags as well
    assert assess(LabelerTrust(), [(0, None)] * 5, 3, systematic=True, unchecked=5,
                  policy=policy).status is Status.FLAGGED


def test_audit_threshold_rises_only_for_proven_labelers():
    from learner.trust import LabelerTrust, Status, audit_threshold

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


def test_paper_decrease_is_inverse_to_the_model_confidence():
    # the paper: a inversely proportional to the model's confidence in its classification
    sure, unsure = trust_decrease(0.02, 0.1, rule="paper", prob_consensus_label=0.98), \
        trust_decrease(0.45, 0.1, rule="paper", prob_consensus_label=0.55)
    assert sure < unsure <= 0.1
    assert trust_decrease(0.5, 0.1, rule="paper", prob_consensus_label=0.5) == pytest.approx(0.1)
    with pytest.raises(ValueError):
        trust_decrease(0.5, 0.1, rule="magic")


def test_suspension_needs_a_record_implausible_at_twice_the_honest_error_rate():
    policy = TrustPolicy()
    assert policy.suspend_error == pytest.approx(2 * (1 - policy.p_1))
    unlucky = [(0, None)] * 6 + [(1, 0)] * 5  # 5 refuted of 11: flags, but a suspension needs more
    state = LabelerTrust(status=Status.FLAGGED)
    verdict = assess(state, unlucky, 4, systematic=False, unchecked=0, policy=policy)
    assert refutation_pvalue(unlucky, 4, policy) < policy.flag_alpha
    assert verdict.status is Status.ACTIVE  # audit done: reinstated
    spammer = [(0, None)] * 3 + [(1, 0), (2, 3), (3, 1)] * 3  # 9 refuted of 12
    verdict = assess(LabelerTrust(status=Status.FLAGGED), spammer, 4, systematic=False, unchecked=0, policy=policy)
    assert verdict.status is Status.SUSPENDED


def test_tarone_charges_only_the_tests_that_can_reach_alpha():
    """A class seen once can never be significant (its smallest p-value is 1 - P_1): the flag test
    is not charged for it (Tarone), so two refuted labels of three flag a new labeler, and the
    family-wise error of one assessment stays below alpha for an honest labeler (exact, by enumeration)."""
    policy = TrustPolicy()
    spam = [(1, 0), (2, 3), (1, None)]  # three classes seen once each, two labels refuted
    assert refutation_pvalue(spam, 4, policy) > policy.flag_alpha  # charged for every test
    assert refutation_pvalue(spam, 4, policy, alpha=policy.flag_alpha) < policy.flag_alpha
    assert tarone_tests([0.06, 0.06, 1e-4], 0.03) == 1 and tarone_tests([1e-4] * 3, 0.03) == 3
    # honest labeler, 6 labels of classes 0,0,1,1,2,3, each refuted with probability 1 - P_1
    import itertools
    e, labels, false_flag = 1 - policy.p_1, [0, 0, 1, 1, 2, 3], 0.0
    for pattern in itertools.product([False, True], repeat=len(labels)):
        hist = [(y, (y + 1) % 4 if r else None) for y, r in zip(labels, pattern)]
        prob = math.prod(e if r else 1 - e for r in pattern)
        if refutation_pvalue(hist, 4, policy, alpha=policy.flag_alpha) < policy.flag_alpha:
            false_flag += prob
    assert false_flag < policy.flag_alpha
