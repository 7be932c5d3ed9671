"""Trust math: pure functions, no ORM (the loop engine's; the trust app's models and review pages
build on it).

Rules (from the paper, with our choices marked):

* ``h = ceil(log(1 - P_h) / log(1 - P_1))`` independent labelers re-annotate an item.
* Performance check: re-annotate the new batch when ``acc(F_i, S) < acc(F_{i-1}, S) - epsilon``.
* Re-annotation outcome: the h answers disagree among themselves -> the item is discarded;
  they agree with the original -> the original labeler gains ``reward``; they agree on another
  class -> the original labeler loses ``a = penalty * (1 - p_F(original label))`` (ours: the
  less the model believes the original label, the larger the loss; "a inversely related to the
  model's confidence in that (mis)classification"), and when the model gives the consensus class
  at least ``alert_confidence`` the disagreement is an *alert*.
* Labels the model confidently agree with when they arrive also earn ``reward`` (ours). Trust is
  the weight of a labeler's labels in training; it does not decide who is flagged.
* Flag and suspend (ours, :func:`assess`): evidence, not single slips. A labeler's first labels,
  in the order given, are marked refuted when a consensus of others overturned them. Under the
  honest hypothesis each label is refuted with probability at most ``1 - P_1`` (an honest
  labeler's error rate), so the refuted count among the last m labels (of one true class, or of
  all) is at most Binomial(m, 1 - P_1); :func:`refutation_pvalue` scans a few m (a scan test),
  charging the flag test only for the runs that can reach ``flag_alpha`` at all (Tarone). Two more
  kinds of evidence join the record: answers to gold questions (items of the secured set whose
  label the admin gave, judged by that label) and re-annotation votes judged by the item's other
  answers (:func:`vote_history`, one extra whole-record test). A p-value below ``flag_alpha``,
  or a systematic class mapping found by Dawid-Skene (:mod:`learner.confusion`, also over each labeler's recent labels),
  *flags* the labeler: no new work, and every label of theirs that nobody checked yet goes to
  ``h`` others (a targeted audit). Below ``suspend_alpha`` (over all their labels) the labeler is
  *suspended*: their unverified labels leave the training set. When the audit has checked every
  label of theirs, it decides: the recent runs still below ``audit_alpha`` and the whole record
  below ``flag_alpha`` suspend; otherwise the rules reinstate the labeler, and the labels the
  audit covered no longer count towards a new flag (``LabelerTrust.cleared``); admins can still
  suspend or reinstate.
"""
from __future__ import annotations

import enum
import math
from collections import Counter
from dataclasses import dataclass

import numpy as np
from scipy.stats import binom


class Status(str, enum.Enum):
    ACTIVE = "active"
    FLAGGED = "flagged"
    SUSPENDED = "suspended"


class Outcome(str, enum.Enum):
    AGREED = "agreed"  # consensus equals the original label
    DISAGREED = "disagreed"  # consistent consensus on another label
    INCONSISTENT = "inconsistent"  # the re-annotators disagree: discard the item
    REJECTED = "rejected"  # the re-annotators disagree, but none of them gave the original label: discard, refuted


@dataclass(frozen=True)
class TrustPolicy:
    """Thresholds of the trust rules (configurable per project)."""

    p_h: float = 0.9995
    p_1: float = 0.9391
    epsilon: float = 0.05
    penalty: float = 0.1
    reward: float = 0.01
    alert_confidence: float = 0.9  # a disagreement the model is this sure of is recorded as an alert
    flag_alpha: float = 0.03  # flag (pause + targeted audit) when the refuted labels are this improbable for an honest labeler
    suspend_alpha: float = 1e-4  # suspend at once when they are this improbable
    audit_alpha: float = 0.01  # after a targeted audit: suspend when recent runs stay this improbable
    window: int = 20  # the longest recent run scanned besides all labels (see scan_lengths)
    # suspensions test against this many times the honest error rate (ours): a suspension needs a
    # record implausible for someone who errs twice as often as P_1 allows, not just an unlucky run
    suspend_error_factor: float = 2.0
    decrease: str = "ours"  # trust_decrease's rule: "ours" or "paper" (docs/method.md, measured)

    @property
    def h(self) -> int:
        return required_labelers(self.p_h, self.p_1)

    @property
    def suspend_error(self) -> float:
        """The error rate the suspension tests assume for an honest labeler."""
        return min(0.5, self.suspend_error_factor * (1.0 - self.p_1))

    @property
    def scan_lengths(self) -> tuple[int, ...]:
        """The recent-run lengths :func:`refutation_pvalue` scans (0: all labels)."""
        return tuple(sorted({max(self.window // 5, 2), self.window})) + (0,)


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
    """Outcome of a re-annotation round and the label to keep (None: discard the item).

    Re-annotators who disagree among themselves make the item inconsistent (discarded, the paper).
    When none of them gave the original label the round is ``REJECTED`` (ours): the item is
    discarded all the same, but the original label was refuted by every other labeler asked, which
    an honest labeler's label is at most as often as it is wrong (two or more independent others
    all missing a correct label is rarer still), so it counts as evidence in :func:`assess`, as a
    consistent disagreement does. Without it, a spammer's wrong labels that meet another spammer
    or an honest slip among the re-annotators blamed nobody.
    """
    if not reannotations:
        return Outcome.AGREED, int(original_label)
    counts = Counter(int(x) for x in reannotations)
    if len(counts) > 1:
        if int(original_label) not in counts:
            return Outcome.REJECTED, None
        return Outcome.INCONSISTENT, None
    consensus = next(iter(counts))
    if consensus == int(original_label):
        return Outcome.AGREED, consensus
    return Outcome.DISAGREED, consensus


DECREASE_RULES = ("ours", "paper")


def trust_decrease(prob_original_label: float, penalty: float = 0.2, *, rule: str = "ours",
                   prob_consensus_label: float | None = None) -> float:
    """``a``: how much a consistent disagreement costs the original labeler.

    ``"ours"``: ``penalty * (1 - p)`` with ``p`` the model's probability of the refuted label, so a
    label the model also found plausible costs little. ``"paper"``: ``a`` inversely proportional to
    the model's confidence in its classification, ``penalty * 0.5 / max(c, 0.5)`` with ``c`` the
    larger of the two probabilities (the paper gives no constant; this one makes both rules cost
    ``penalty`` at most). docs/method.md reports the measured difference.
    """
    p = min(max(float(prob_original_label), 0.0), 1.0)
    if rule == "ours":
        return penalty * (1.0 - p)
    if rule == "paper":
        c = max(p, float(prob_consensus_label or 0.0), 0.5)
        return penalty * 0.5 / c
    raise ValueError(f"unknown trust decrease rule {rule!r}; choose from {DECREASE_RULES}")


def rejected_class(votes: list[int]) -> int:
    """The class a rejected round's votes point to most (ties: the earliest vote's): the item's
    likely class for the per-class refutation test and the trust event."""
    counts = Counter(int(v) for v in votes)
    return max(counts, key=lambda c: (counts[c], -[int(v) for v in votes].index(c)))


def is_alert(prob_consensus_label: float, alert_confidence: float = 0.9) -> bool:
    """A high-confidence disagreement: the model is sure of the consensus class."""
    return float(prob_consensus_label) >= alert_confidence



def resolve_votes(original_label: int, votes: list[int], h: int, *, adaptive: bool,
                  escalate: int = 0, final: bool = False) -> tuple[Outcome | None, int | None]:
    """Outcome of a re-annotation round so far; ``(None, None)`` while more votes are needed.

    Two different votes end the round (inconsistent, or rejected when neither is the original
    label; see :func:`resolve`), unless ``escalate`` > 0 and the original label is among them
    (ours): then up to ``escalate`` more voters are asked (:func:`votes_needed`), and the round
    resolves to the class that at least ``h`` votes and a strict majority of them gave
    (:func:`majority`); without one it is inconsistent. Two colluders among the voters can no
    longer shield each other's mapped label by splitting the round. ``adaptive``: a first vote that
    confirms the original label settles it (two independent labelers agree; ours, it makes an
    audit of a correct label cost one label instead of ``h``). Otherwise the round needs ``h``
    votes that all agree. ``final``: nobody else can be asked (a small crowd); the round is
    decided on the votes it has.
    """
    votes = [int(v) for v in votes]
    if len(set(votes)) > 1:
        if escalate and int(original_label) in votes:
            if len(votes) < h + escalate and not final:
                return None, None
            consensus = majority(votes, h)
            if consensus is not None:
                return (Outcome.AGREED if consensus == int(original_label) else Outcome.DISAGREED), consensus
        return resolve(original_label, votes)
    if votes and adaptive and votes[0] == int(original_label):
        return Outcome.AGREED, int(original_label)
    if len(votes) >= h or (final and votes):
        return resolve(original_label, votes)
    return None, None


def majority(votes: list[int], h: int) -> int | None:
    """The class at least ``h`` of ``votes`` and more than half of them gave, else None."""
    counts = Counter(int(v) for v in votes)
    label, n = counts.most_common(1)[0]
    return int(label) if n >= h and 2 * n > len(votes) else None


def votes_needed(original_label: int, votes: list[int], h: int, escalate: int = 0) -> int:
    """How many more voters a round that :func:`resolve_votes` left open needs: up to ``h`` in
    all, or ``h + escalate`` once its votes split with the original label among them."""
    votes = [int(v) for v in votes]
    split = len(set(votes)) > 1 and int(original_label) in votes
    return max(0, (h + escalate if escalate and split else h) - len(votes))


@dataclass
class LabelerTrust:
    """Trust bookkeeping of one labeler."""

    trust: float = 1.0
    status: Status = Status.ACTIVE
    labels_given: int = 0  # every label this labeler gave
    checked: int = 0  # labels confirmed or refuted by re-annotation
    disagreements: int = 0
    alerts: int = 0
    cleared: int = 0  # first labels already covered by an audit (or review) that cleared the labeler

    @property
    def weight(self) -> float:
        """Weight of this labeler's labels in training."""
        return 0.0 if self.status is Status.SUSPENDED else max(self.trust, 0.0)


def apply_outcome(state: LabelerTrust, outcome: Outcome, *, prob_original: float,
                  prob_consensus: float, policy: TrustPolicy) -> str | None:
    """Update ``state``'s trust in place after one re-annotation round of one of its labels.

    Returns the reason recorded ("agreed", "disagreement" or "alert"; None for an inconsistent
    or a rejected round, which change no trust: a rejected label is evidence for :func:`assess`
    (the engine records it as refuted) but does not lower its labeler's training weight; on digits
    it did and cost 593 labels to the target against 480, 6 runs, docs/method.md). The status is
    left to :func:`assess`.
    """
    if outcome in (Outcome.INCONSISTENT, Outcome.REJECTED):
        return None
    state.checked += 1
    if outcome is Outcome.AGREED:
        state.trust += min(policy.reward, 1.0 - state.trust)
        return "agreed"
    state.trust = max(0.0, state.trust - trust_decrease(prob_original, policy.penalty, rule=policy.decrease,
                                                        prob_consensus_label=prob_consensus))
    state.disagreements += 1
    alert = is_alert(prob_consensus, policy.alert_confidence)
    state.alerts += int(alert)
    return "alert" if alert else "disagreement"


def apply_confirmation(state: LabelerTrust, policy: TrustPolicy) -> LabelerTrust:
    """A label the model confidently agreed with when it was given: a small trust gain (ours)."""
    state.trust += min(policy.reward, 1.0 - state.trust)
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
    """
    if (proven_confidence is None or state.status is not Status.ACTIVE or state.checked < proven_after
            or 2 * state.disagreements >= state.checked):
        return confidence
    return max(confidence, proven_confidence)


def tarone_tests(minimal: list[float], alpha: float) -> int:
    """Tarone's count of tests for a Bonferroni correction at level ``alpha`` (Tarone 1990).

    A discrete test whose smallest attainable p-value (``minimal``) exceeds ``alpha / K`` can never
    reject, so it need not be charged: K is the smallest count with at most K tests able to reach
    ``alpha / K``. The family-wise error stays at most ``alpha``.

    >>> tarone_tests([1e-5, 0.06, 0.06, 0.06], 0.03)
    1
    >>> tarone_tests([1e-5, 0.004, 0.06], 0.03)
    2
    """
    for k in range(1, len(minimal) + 1):
        if sum(1 for pi in minimal if pi <= alpha / k) <= k:
            return k
    return max(len(minimal), 1)


def refutation_pvalue(history: list[tuple[int, int | None]], n_classes: int, policy: TrustPolicy,
                      lengths: tuple[int, ...] | None = None, *, distinct: bool = True,
                      error: float | None = None, alpha: float | None = None,
                      votes: list[tuple[int, int | None]] | None = None) -> float:
    """How improbable a labeler's refuted first labels are for an honest labeler (a scan test).

    ``history``: one ``(given label, consensus label or None)`` per first label, in the order
    given; a consensus that differs from the given label means the label was refuted. An honest
    labeler's label of an item of class a is refuted with probability at most ``1 - P_1``. The
    true class of a label nobody refuted is taken to be the given one. For all labels together
    and for the labels of each true class, the refuted count among the last m of them is then at
    most Binomial(m, 1 - P_1); m runs over :meth:`TrustPolicy.scan_lengths` (short runs catch a
    sleeper's recent turn, all of them a slow drip). The smallest one-sided p-value, times the
    number of distinct tests (Bonferroni; a run longer than the labels there are is the same test
    as all of them, so a short record is not charged for tests it cannot have), is returned.
    ``distinct=False`` charges every scanned length for all labels and every class (the
    conservative count that suspensions use; ours); ``error`` replaces ``1 - P_1`` (suspensions
    use :attr:`TrustPolicy.suspend_error`). A mapping a -> b is caught in class a, where
    every label is refuted; a spammer overall. ``lengths=(0,)`` tests the whole record only.

    ``alpha`` (with ``distinct``): charge only the tests that can reach ``alpha`` at all
    (:func:`tarone_tests`; ours): a run of one or two labels of a class can never be significant,
    so a short record is not charged for it. The result is then meant for comparison with that
    ``alpha`` (the flag test's ``flag_alpha``).

    ``votes``: the labeler's re-annotation votes as ``(vote, verdict or None)``
    (:meth:`learner.engine.EngineState.vote_history`) add one test, of first labels and votes
    together over the whole record (ours): a spammer's votes are refuted about as often as its
    first labels, so its first steps give more evidence than its first labels alone.
    """
    honest_error = 1.0 - policy.p_1 if error is None else float(error)
    true = np.array([g if c is None else c for g, c in history], dtype=np.int64)
    refuted = np.array([c is not None and c != g for g, c in history], dtype=bool)
    votes = list(votes or [])
    n_cast = len(history) + len(votes)
    k_cast = int(refuted.sum()) + sum(1 for g, c in votes if c is not None and c != g)
    if not k_cast:
        return 1.0
    lengths = policy.scan_lengths if lengths is None else lengths

    def runs(n: int) -> set[int]:  # the distinct run lengths among the scanned ones for n labels
        return {min(m, n) if m else n for m in lengths} if n else set()

    sizes = [r for n in [len(history)] + [int((true == a).sum()) for a in range(n_classes)] for r in runs(n)]
    if votes:
        sizes.append(n_cast)
    if not distinct:
        tests = len(lengths) * (n_classes + 1) + int(bool(votes))
    elif alpha is not None:
        tests = tarone_tests([honest_error ** r for r in sizes], alpha)
    else:
        tests = len(sizes)
    best = 1.0
    for mask in [np.ones(len(history), dtype=bool)] + [true == a for a in np.unique(true[refuted])]:
        seq = refuted[mask]
        for m in lengths:
            part = seq[-m:] if m else seq
            k = int(part.sum())
            if k:
                best = min(best, float(binom.sf(k - 1, len(part), honest_error)))
    if votes:
        best = min(best, float(binom.sf(k_cast - 1, n_cast, honest_error)))
    return min(1.0, best * tests)


def vote_history(answers: list[tuple[int, int, int]], firsts: set[tuple[int, int]], *,
                 exclude: set[int] = frozenset()) -> dict[int, list[tuple[int, int | None, int]]]:
    """Per labeler, (their vote, verdict or None, first labels they had given before it) of each
    re-annotation vote, in the order given (ours).

    ``answers``: (item, labeler, label) of every answer, in the order given; ``firsts``: the
    (item, labeler) pairs that are first labels (every other answer on a pool item is a vote);
    ``exclude``: items that are not pool items (the secured set). A vote is judged by the item's
    other answers (the first label and the other votes): when at least three of them agree on one
    class, that class is the verdict, and a vote against it is refuted. An honest vote is refuted at
    most as often as it is wrong, unless three others share a wrong answer (colluders). A round
    settled by one confirming vote, or whose answers split, judges nobody (None: counted, never
    refuted), so the test stays conservative.
    """
    by_item: dict[int, list[tuple[int, int, int]]] = {}
    given: Counter = Counter()
    position: dict[int, int] = {}  # answer index -> first labels its labeler had given before it
    for k, (item, uid, label) in enumerate(answers):
        item, uid = int(item), int(uid)
        position[k] = given[uid]
        if (item, uid) in firsts:
            given[uid] += 1
        if item not in exclude:
            by_item.setdefault(item, []).append((k, uid, int(label)))
    out: dict[int, list[tuple[int, int, int | None, int]]] = {}
    for item, rows in by_item.items():
        for k, uid, label in rows:
            if (item, uid) in firsts:
                continue
            others = {lab for k2, _, lab in rows if k2 != k}
            verdict = next(iter(others)) if len(others) == 1 and len(rows) >= 4 else None
            out.setdefault(uid, []).append((k, label, verdict, position[k]))
    return {uid: [(g, c, pos) for _, g, c, pos in sorted(rows)] for uid, rows in out.items()}


@dataclass(frozen=True)
class Assessment:
    """What the rules conclude about one labeler (:func:`assess`)."""

    status: Status
    reason: str  # "" when nothing changed
    pvalue: float


def assess(state: LabelerTrust, history: list[tuple[int, int | None]], n_classes: int, *, systematic: bool,
           unchecked: int, policy: TrustPolicy, pattern: bool = False, cleared: int | None = None,
           votes: list[tuple[int, int | None, int]] = ()) -> Assessment:
    """The labeler's status after this step's evidence (see the module docstring).

    Parameters
    ----------
    state : current status and counters
    history : per first label in order, (given label, consensus label or None); see
        :func:`refutation_pvalue`
    systematic : Dawid-Skene found a (true, given) mapping not reported before
    pattern : Dawid-Skene sees a (true, given) mapping now (reported before or not)
    unchecked : this labeler's labels still standing on their word alone (the targeted audit's work)
    cleared : entries of ``history`` an audit or a review already cleared (default ``state.cleared``)
    votes : (vote, verdict or None, first labels given before it) of each re-annotation vote
        (:meth:`learner.engine.EngineState.vote_history`); votes cast before ``state.cleared``
        first labels are cleared with them
    """
    cleared = state.cleared if cleared is None else cleared
    cast = [(g, c) for g, c, _ in votes]
    cast_new = [(g, c) for g, c, pos in votes if pos >= state.cleared]
    # suspensions rest on the conservative count of tests and on twice the honest error rate, flags
    # on the sharper test (a flag costs an audit, a suspension the labeler's work)
    p = refutation_pvalue(history, n_classes, policy, distinct=False, error=policy.suspend_error, votes=cast)
    if state.status is Status.SUSPENDED:
        return Assessment(Status.SUSPENDED, "", p)
    if p < policy.suspend_alpha:
        return Assessment(Status.SUSPENDED, f"refuted labels p = {p:.1e} < {policy.suspend_alpha:g}", p)
    # evidence an audit already cleared does not flag twice: only labels given since count
    p_new = refutation_pvalue(history[cleared:], n_classes, policy, alpha=policy.flag_alpha, votes=cast_new)
    if state.status is Status.ACTIVE and (p_new < policy.flag_alpha or systematic):
        why = "systematic confusion" if systematic else f"refuted labels p = {p_new:.1e} < {policy.flag_alpha:g}"
        return Assessment(Status.FLAGGED, why, p_new)
    if state.status is Status.FLAGGED and unchecked == 0:
        # every label of theirs is now checked: suspend when the recent runs stay improbable
        # (below audit_alpha) and the whole record shows an excess too (below flag_alpha) or this
        # is the second episode (an audit or a review cleared them before, and new labels alone
        # flagged them again: a sleeper's long honest start dilutes its whole record), or when
        # a class mapping persists with the recent runs below flag_alpha; a chance cluster in an
        # honest labeler's short run is diluted in the whole record and maps no class (ours)
        whole = refutation_pvalue(history, n_classes, policy, lengths=(0,), distinct=False,
                                  error=policy.suspend_error)
        # the second episode is judged on the labels given since the first was cleared
        since = (refutation_pvalue(history[cleared:], n_classes, policy, distinct=False, error=policy.suspend_error,
                                   votes=cast_new) if cleared else 1.0)
        why = (f"audit done; recent runs p = {p:.1e}, whole record p = {whole:.1e}"
               + (f"; since cleared p = {since:.1e}" if cleared else "")
               + ("; a class mapping persists" if pattern else ""))
        if ((p < policy.audit_alpha and whole < policy.flag_alpha) or since < policy.audit_alpha
                or (pattern and p < policy.flag_alpha)):
            return Assessment(Status.SUSPENDED, why, p)
        return Assessment(Status.ACTIVE, why, p)
    return Assessment(state.status, "", p)


def suggest_review(history: list[tuple[int, int | None]], n_classes: int, systematic: list | tuple,
                   policy: TrustPolicy, votes: list[tuple[int, int | None]] = ()) -> tuple[str, str]:
    """What the rules suggest to an admin reviewing a flagged labeler: ``("suspend" | "reinstate", why)``.

    ``votes``: their re-annotation votes as (vote, verdict or None) (:func:`vote_history`)."""
    votes = list(votes)
    p = refutation_pvalue(history, n_classes, policy, distinct=False, error=policy.suspend_error, votes=votes)
    k, n = sum(1 for g, c in history if c is not None and c != g), len(history)
    kv = sum(1 for g, c in votes if c is not None and c != g)
    record = f"{k} refuted of {n} labels" + (f" and {kv} of {len(votes)} re-annotation votes" if votes else "")
    if systematic:
        return "suspend", "systematic confusion " + ", ".join(f"{a} -> {b}" for a, b in systematic)
    if p < policy.flag_alpha:
        return "suspend", (f"{record} is implausible for an honest labeler "
                           f"(error rate <= {policy.suspend_error:.3f}; p = {p:.1e})")
    return "reinstate", (f"{record} is plausible for an honest labeler "
                         f"(error rate <= {policy.suspend_error:.3f}; p = {p:.2f}); no systematic confusion")
