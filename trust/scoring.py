"""Trust math: pure functions, no ORM (used by the simulator and by the web app's services).

Rules (from the paper, with our choices marked):

* ``h = ceil(log(1 - P_h) / log(1 - P_1))`` independent labelers re-annotate an item.
* Performance check: re-annotate the new batch when ``acc(F_i, S) < acc(F_{i-1}, S) - epsilon``.
* Re-annotation outcome: the h answers disagree among themselves -> the item is discarded;
  they agree with the original -> the original labeler gains ``reward``; they agree on another
  class -> the original labeler loses ``a = penalty * (1 - p_F(original label))`` (ours: the
  less the model believes the original label, the larger the loss; "a inversely related to the
  model's confidence in that (mis)classification"), and when the model gives the consensus class
  at least ``alert_confidence`` the disagreement is an *alert*.
* Labels the model confidently agrees with when they arrive also earn ``reward`` (ours), so
  trust tracks the *rate* of refuted labels, not their count.
* States (ours): trust below ``flag_below`` or any alert -> *flagged*; trust below
  ``suspend_below`` -> *suspended*. Flagged labelers get no new work until reviewed; their labels
  count with weight = trust. Suspended labelers' labels are excluded (weight 0).
* Review (ours, what the simulator's "admin" does; humans do it in the web app): suspend when
  one (true, given) class pair dominates the labeler's refuted labels beyond chance
  (:func:`systematic_confusion`), or when the labeler's refuted rate is implausible for an
  honest labeler (one-sided
  binomial test of its refuted labels among all labels it gave, against ``1 - P_1``, at level
  ``review_alpha``), otherwise reinstate.
"""
from __future__ import annotations

import enum
import math
from collections import Counter
from dataclasses import dataclass, field

from scipy.stats import binom


class Status(str, enum.Enum):
    ACTIVE = "active"
    FLAGGED = "flagged"
    SUSPENDED = "suspended"


class Outcome(str, enum.Enum):
    AGREED = "agreed"  # consensus equals the original label
    DISAGREED = "disagreed"  # consistent consensus on another label
    INCONSISTENT = "inconsistent"  # the re-annotators disagree: discard the item


@dataclass(frozen=True)
class TrustPolicy:
    """Thresholds of the trust rules (configurable per project)."""

    p_h: float = 0.9995
    p_1: float = 0.9391
    epsilon: float = 0.05
    penalty: float = 0.1
    reward: float = 0.01
    alert_confidence: float = 0.9
    flag_below: float = 0.7
    suspend_below: float = 0.2
    review_alpha: float = 0.01

    @property
    def h(self) -> int:
        return required_labelers(self.p_h, self.p_1)


def required_labelers(p_h: float = 0.9995, p_1: float = 0.9391) -> int:
    """Independent labelers needed so that at least one is right with probability ``p_h``.

    >>> required_labelers(0.9995, 0.9391)
    3
    """
    if not (0 < p_1 < 1) or not (0 < p_h < 1):
        raise ValueError("p_h and p_1 must lie strictly between 0 and 1")
    return max(1, math.ceil(math.log(1 - p_h) / math.log(1 - p_1) - 1e-12))


def performance_dropped(acc_new: float, acc_previous: float | None, epsilon: float) -> bool:
    """The paper's check: did accuracy on the secured set fall by more than ``epsilon``?"""
    if acc_previous is None or math.isnan(acc_previous) or math.isnan(acc_new):
        return False
    return acc_new < acc_previous - epsilon


def resolve(original_label: int, reannotations: list[int]) -> tuple[Outcome, int | None]:
    """Outcome of a re-annotation round and the label to keep (None: discard the item)."""
    if not reannotations:
        return Outcome.AGREED, int(original_label)
    counts = Counter(int(x) for x in reannotations)
    if len(counts) > 1:
        return Outcome.INCONSISTENT, None
    consensus = next(iter(counts))
    if consensus == int(original_label):
        return Outcome.AGREED, consensus
    return Outcome.DISAGREED, consensus


def trust_decrease(prob_original_label: float, penalty: float = 0.2) -> float:
    """``a``: how much a consistent disagreement costs the original labeler."""
    p = min(max(float(prob_original_label), 0.0), 1.0)
    return penalty * (1.0 - p)


def is_alert(prob_consensus_label: float, alert_confidence: float = 0.9) -> bool:
    """A high-confidence disagreement: the model is sure of the consensus class."""
    return float(prob_consensus_label) >= alert_confidence


@dataclass
class LabelerTrust:
    """Trust bookkeeping of one labeler."""

    trust: float = 1.0
    status: Status = Status.ACTIVE
    labels_given: int = 0  # every label this labeler gave (the review's denominator)
    checked: int = 0  # labels confirmed or refuted by re-annotation
    disagreements: int = 0
    alerts: int = 0
    refuted_pairs: Counter = field(default_factory=Counter)  # (consensus, given) -> count
    history: list[tuple[str, float]] = field(default_factory=list)  # (reason, change)

    @property
    def weight(self) -> float:
        """Weight of this labeler's labels in training."""
        return 0.0 if self.status is Status.SUSPENDED else max(self.trust, 0.0)


def apply_outcome(state: LabelerTrust, outcome: Outcome, *, prob_original: float,
                  prob_consensus: float, policy: TrustPolicy, original_label: int | None = None,
                  consensus_label: int | None = None) -> LabelerTrust:
    """Update ``state`` in place after one re-annotation round of one of its labels."""
    if outcome is Outcome.INCONSISTENT:
        return state  # the item was ambiguous: nobody is blamed
    state.checked += 1
    if outcome is Outcome.AGREED:
        change = min(policy.reward, 1.0 - state.trust)
        state.trust += change
        state.history.append(("confirmed", change))
    else:
        change = -trust_decrease(prob_original, policy.penalty)
        state.trust = max(0.0, state.trust + change)
        state.disagreements += 1
        if original_label is not None and consensus_label is not None:
            state.refuted_pairs[(int(consensus_label), int(original_label))] += 1
        alert = is_alert(prob_consensus, policy.alert_confidence)
        state.alerts += int(alert)
        state.history.append(("alert" if alert else "disagreement", change))
        if alert and state.status is Status.ACTIVE:
            state.status = Status.FLAGGED
    if state.status is not Status.SUSPENDED:
        if state.trust < policy.suspend_below:
            state.status = Status.SUSPENDED
        elif state.trust < policy.flag_below and state.status is Status.ACTIVE:
            state.status = Status.FLAGGED
    return state


def apply_confirmation(state: LabelerTrust, policy: TrustPolicy) -> LabelerTrust:
    """A label the model confidently agreed with when it was given: a small trust gain (ours)."""
    change = min(policy.reward, 1.0 - state.trust)
    state.trust += change
    return state


def audit_threshold(state: LabelerTrust, confidence: float, proven_confidence: float | None = None,
                    proven_after: int = 10) -> float:
    """Model confidence above which a label the model contradicts is re-annotated (ours).

    Every labeler starts at ``confidence``: any contradiction is checked, which is what exposes a
    malicious labeler within a few batches. Once ``proven_after`` of a labeler's labels were
    checked by re-annotation and most of them (more than half) held, the labeler is *proven* and
    only ``proven_confidence`` contradictions are checked: near the decision boundary, where
    active learning queries, the model is as often wrong as the labeler, and re-buying those
    labels is what made audits the largest cost in the benign scenario. A labeler whose checked
    labels were mostly refuted never becomes proven.

    Parameters
    ----------
    state : LabelerTrust
    confidence : float
        Threshold for labelers not (yet) proven.
    proven_confidence : float, optional
        Threshold for proven labelers (``None``: no distinction).
    proven_after : int, default 10
        Checked labels needed before a labeler can be proven.

    Returns
    -------
    float
    """
    if (proven_confidence is None or state.status is not Status.ACTIVE or state.checked < proven_after
            or 2 * state.disagreements >= state.checked):
        return confidence
    return max(confidence, proven_confidence)


def review_rejects(labels_given: int, disagreements: int, policy: TrustPolicy) -> bool:
    """True when ``disagreements`` refuted labels out of ``labels_given`` are implausible for an
    honest labeler (whose error rate is at most ``1 - P_1``)."""
    if labels_given == 0 or disagreements == 0:
        return False
    honest_error = 1.0 - policy.p_1
    # P(X >= disagreements) for X ~ Binomial(labels_given, honest_error)
    return float(binom.sf(disagreements - 1, labels_given, honest_error)) < policy.review_alpha


def systematic_confusion(state: LabelerTrust, n_classes: int, policy: TrustPolicy) -> tuple[int, int] | None:
    """The (true, given) class pair this labeler confuses far more often than chance, if any.

    An honest labeler's errors spread over the other classes, so one given pair occurs with
    probability about ``(1 - P_1) / (K - 1)`` per label; a malicious mapping such as 1 -> 7 piles
    up on one pair. One-sided binomial test per pair, Bonferroni over the K(K-1) pairs (ours).
    """
    if n_classes < 2 or not state.refuted_pairs:
        return None
    n = max(state.labels_given, state.checked)
    rate = (1.0 - policy.p_1) / (n_classes - 1)
    level = policy.review_alpha / (n_classes * (n_classes - 1))
    (pair, count), = state.refuted_pairs.most_common(1)
    if count >= 2 and float(binom.sf(count - 1, n, rate)) < level:
        return pair
    return None


def review(state: LabelerTrust, policy: TrustPolicy, n_classes: int = 2) -> Status:
    """Simulated admin review of a flagged labeler: suspend or reinstate (in place)."""
    if state.status is Status.FLAGGED:
        if (review_rejects(max(state.labels_given, state.checked), state.disagreements, policy)
                or systematic_confusion(state, n_classes, policy) is not None
                or state.trust < policy.suspend_below):
            state.status = Status.SUSPENDED
            state.history.append(("suspended by review", 0.0))
        else:
            state.status = Status.ACTIVE
            state.history.append(("reinstated by review", 0.0))
    return state.status


def suggest_review(labels_given: int, disagreements: int, systematic: list | tuple, policy: TrustPolicy,
                   trust: float = 1.0) -> tuple[str, str]:
    """What the simulated review (:func:`review`) would do with a flagged labeler, and why, for the
    admins' review page: ``("suspend" | "reinstate", reason)``.

    ``systematic``: the (true, given) pairs found by the confusion check (Dawid-Skene in the web
    app), any non-empty value suspends.
    """
    if systematic:
        return "suspend", "systematic confusion " + ", ".join(f"{a} -> {b}" for a, b in systematic)
    if trust < policy.suspend_below:
        return "suspend", f"trust {trust:.2f} below {policy.suspend_below}"
    if review_rejects(labels_given, disagreements, policy):
        return "suspend", (f"{disagreements} refuted of {labels_given} labels is implausible for an honest "
                           f"labeler (error rate <= {1 - policy.p_1:.3f}, level {policy.review_alpha})")
    return "reinstate", (f"{disagreements} refuted of {labels_given} labels is plausible for an honest labeler "
                         f"(error rate <= {1 - policy.p_1:.3f}, level {policy.review_alpha}); no systematic confusion")
