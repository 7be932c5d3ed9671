"""The robust loop's one engine: a step takes the label state and returns a plan (no ORM, no Celery).

Two drivers run it. ``learner.loop`` (``manage.py simulate`` and ``reproduce_paper``) keeps an
:class:`EngineState` in memory and answers the plan's requests with simulated labelers; the web
app (``labeling/loop_step.py``) rebuilds the state from the database, runs the same step and persists
the plan in one transaction. A parity test drives both with the same labelers and seeds.

One iteration (paper Fig. 2, our choices marked in ``docs/method.md``):

1. :func:`start`: the secured set S (its own seeded stream, drawn for every strategy so that all
   strategies start from the same initial labels) and the random initial batch.
2. After a batch's first labels (:func:`step`, phase "labeling"): audit the labels the previous
   model F_{i-1} contradicts (ours; the first batch is checked by a model of S), craft adversarial
   and noise copies of the batch, train F_i on D plus the copies with every label weighted by its
   labeler's trust, and run the secured-set check: accuracy on S down by more than epsilon sends
   the whole batch to re-annotation.
3. Re-annotation requests (``plan.requests``) go to distinct other labelers. With
   ``reannotation="adaptive"`` a round asks one labeler first and the others only when that one
   disagrees; ``"parallel"`` asks ``h`` at once. :func:`step` in phase "reannotation" resolves
   the votes (or asks for the rest), updates trust and retrains.
4. Finish: Dawid-Skene confusion check, each labeler's status from the evidence
   (:func:`learner.trust.assess`): a newly flagged labeler's unchecked labels are re-annotated
   (a targeted audit, back to 3); a suspended labeler's unverified labels leave D. Then the stop
   rules (budget, target on S, tau, pool exhausted) and the next batch with its assignees (its
   size: :func:`batch_size_for`, which may follow the number of active labelers).
"""
from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from . import live
from .trust import (LabelerTrust, Outcome, Status, TrustPolicy, apply_confirmation, apply_outcome, assess,
                    audit_threshold, refutation_pvalue, rejected_class, resolve, resolve_votes, vote_history, votes_needed)

LABELING, REANNOTATION = "labeling", "reannotation"
MIN_AUDITOR_PER_CLASS = 3  # verified S labels of every class before a model of S may audit the first batch
# an adaptive round's single confirming vote settles it only when the voter's own refuted labels
# are this plausible for an honest labeler (ours: two spammers confirmed each other's wrong labels)
CONFIRMER_ALPHA = 0.25


def seed_of(cfg: live.LiveConfig, *parts: int) -> int:
    """A seed derived from the project's seed and e.g. (iteration, purpose): same inputs, same draw."""
    return int(live.rng_for(cfg.seed, *parts).integers(2**31))


def policy_of(cfg: live.LiveConfig) -> TrustPolicy:
    """The project's trust thresholds as a :class:`learner.trust.TrustPolicy`."""
    return TrustPolicy(epsilon=cfg.epsilon, penalty=cfg.trust_penalty, reward=cfg.trust_reward,
                       alert_confidence=cfg.alert_confidence, flag_alpha=cfg.flag_alpha,
                       suspend_alpha=cfg.suspend_alpha, audit_alpha=cfg.audit_alpha, window=cfg.trust_window,
                       p_1=cfg.p1, decrease=cfg.trust_decrease)


@dataclass
class Pool:
    """What the engine reads of the data: features (frozen backbone) and optional hooks.

    ``crafter(model, items, labels, seed) -> ({item: rows}, {item: L2}, failed attacks)`` replaces
    the feature-space crafting (pixel space, :func:`learner.augment.pixel_crafter`, in both
    drivers); ``train_filter(items, labels) -> keep``
    filters the training set before each training (the dknn defence).
    ``refit(items, labels, weights, seed) -> features`` (``training_mode = "finetune"``,
    :func:`learner.finetune.refit_hook`) trains the backbone's last stage on the labeled items
    once per iteration and returns the pool's new features; the engine then refits the
    standardizer and trains the iteration's head again on them. With it, a crafted copy is kept
    as its offset from its item's features and follows the item when the features change.
    """

    features: np.ndarray
    n_classes: int
    standardizer: tuple | None = None
    cache_key: str | None = None
    crafter: Callable | None = None
    train_filter: Callable | None = None
    refit: Callable | None = None
    head: object | None = None  # learner.heads.HeadConfig (None: the default)

    def __post_init__(self):
        if self.standardizer is None:
            from .heads import fit_standardizer
            self.standardizer = fit_standardizer(self.features)


@dataclass
class Request:
    """An open re-annotation round of one item's first label."""

    item: int
    original: int  # the labeler whose first label is under review
    label: int  # that label
    votes: list[int] = field(default_factory=list)  # answers so far
    asked: list[int] = field(default_factory=list)  # labelers asked so far (never asked twice)
    new_voters: list[int] = field(default_factory=list)  # asked in this plan (the driver assigns them)


@dataclass
class EngineState:
    """The label state of a project's pool between steps (index = item index)."""

    labels: np.ndarray  # resolved label per item (-1: none, discarded, or excluded)
    labeler_of: np.ndarray  # whose word the label is (-1: verified by others, or no label)
    discarded: np.ndarray
    secured: np.ndarray  # items of S: never queried, never trained on
    secured_labels: np.ndarray  # verified labels of S (-1 unknown)
    trust: dict[int, LabelerTrust]
    crowd: list[int]  # labelers who may get work (status permitting), in a stable order
    iteration: int = 0
    phase: str = LABELING
    batch: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.int64))  # first-labeled items
    requests: dict[int, Request] = field(default_factory=dict)
    bought: int = 0
    answers: list[tuple[int, int, int]] = field(default_factory=list)  # (item, labeler, label), Dawid-Skene input
    first_labels: dict[int, list[tuple[int, int]]] = field(default_factory=dict)  # labeler -> [(item, label)] in order
    verdicts: dict[tuple[int, int], int] = field(default_factory=dict)  # (labeler, item) -> consensus of its round
    # item -> (original labeler, original label, labelers whose voice carried its verified label:
    # the original labeler when the round agreed, and the voters who gave the consensus)
    support: dict[int, tuple[int, int, set[int]]] = field(default_factory=dict)
    artificial: dict[int, np.ndarray] = field(default_factory=dict)
    perturbations: dict[int, float] = field(default_factory=dict)
    previous_secured_accuracy: float | None = None
    reported_pairs: set[tuple[int, int, int]] = field(default_factory=set)  # (labeler, true, given)
    carry: dict = field(default_factory=dict)  # step results kept between the phases of one iteration
    filtered: int = 0  # labeled items the training filter left out of the last training
    # LiveConfig.pipeline: the batch people label while this one is processed (chosen by the step
    # before; its answers are not part of this state and its items cost their first label already)
    pending: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.int64))
    # LiveConfig.batch_per_annotator: how many people are working now, counted by the driver (the
    # web app: members who answered or held a claim within the last lease; learner.loop: its
    # eligible labelers). Required when that setting is on, ignored when it is off
    active_labelers: int | None = None
    # items of S whose label the admin gave (gold questions are asked on them); None: none
    gold: np.ndarray | None = None

    @property
    def labeled(self) -> np.ndarray:
        return self.labels >= 0

    def weights(self) -> np.ndarray:
        """Weight of each label: its labeler's trust weight; verified labels 1."""
        w = np.where(self.labels >= 0, 1.0, 0.0)
        for uid in np.unique(self.labeler_of[self.labeler_of >= 0]):
            state = self.trust.get(int(uid))
            w[self.labeler_of == uid] = state.weight if state is not None else 1.0
        return w

    def eligible(self) -> list[int]:
        """Labelers who may get new work: active ones, else (everyone flagged) the non-suspended."""
        status = lambda u: self.trust.get(u, LabelerTrust()).status  # noqa: E731
        active = [u for u in self.crowd if status(u) is Status.ACTIVE]
        return active or [u for u in self.crowd if status(u) is not Status.SUSPENDED]

    def history(self, uid: int) -> list[tuple[int, int | None]]:
        """(given label, consensus of others or None) of each first label of ``uid``, in order."""
        return [(label, self.verdicts.get((uid, item))) for item, label in self.first_labels.get(uid, [])]

    def vote_history(self) -> dict[int, list[tuple[int, int | None, int]]]:
        """Per labeler, each re-annotation vote on a pool item judged by the item's other answers
        (:func:`learner.trust.vote_history`), in the order given."""
        firsts = {(int(item), int(uid)) for uid, given in self.first_labels.items() for item, _ in given}
        secured = set(np.flatnonzero(self.secured).tolist())
        return vote_history(self.answers, firsts, exclude=secured)

    def gold_history(self) -> dict[int, list[tuple[int, int]]]:
        """Per labeler, (their answer, the admin's label) of each gold question they answered, in
        the order given: a wrong answer is refuted by the truth itself (``LiveConfig.gold_per_labeler``)."""
        out: dict[int, list[tuple[int, int]]] = {}
        if self.gold is None:
            return out
        for item, uid, label in self.answers:
            if 0 <= item < len(self.gold) and self.gold[item] and self.secured_labels[item] >= 0:
                out.setdefault(int(uid), []).append((int(label), int(self.secured_labels[item])))
        return out

    def secured_history(self) -> dict[int, list[tuple[int, int]]]:
        """Per labeler, (their vote, the others' common vote) on each item of S whose other voters
        (at least two) agree, by item index: S doubles as a check of each labeler (ours, at no extra
        cost). An honest vote is refuted there about as often as it is wrong, like a first label (more
        often only when both co-voters share a mapping, as colluders do)."""
        votes: dict[int, list[tuple[int, int]]] = {}
        for item, uid, label in self.answers:
            if 0 <= item < len(self.secured) and self.secured[item] and not (self.gold is not None and self.gold[item]):
                votes.setdefault(int(item), []).append((int(uid), int(label)))
        out: dict[int, list[tuple[int, int]]] = {}
        for item in sorted(votes):
            for k, (uid, label) in enumerate(votes[item]):
                others = {lab for j, (_, lab) in enumerate(votes[item]) if j != k}
                if len(votes[item]) >= 3 and len(others) == 1:
                    out.setdefault(uid, []).append((label, next(iter(others))))
        return out


@dataclass
class StartPlan:
    secured: np.ndarray  # items of S
    secured_voters: dict[int, list[int]]  # S items without a known label -> h labelers each
    initial: np.ndarray  # the random first batch
    assignees: list[int | None]  # one per initial item
    admin_labels: int  # S items whose label is known (bought once each)
    # LiveConfig.pipeline: a second random batch, labeled while the first is processed
    following: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.int64))
    following_assignees: list[int | None] = field(default_factory=list)
    # gold questions (LiveConfig.gold_per_labeler): (item of S with a known label, labeler), asked
    # with the initial batch; start_queue() interleaves them with its first labels
    gold: list[tuple[int, int]] = field(default_factory=list)


def start_queue(plan: StartPlan) -> list[tuple[str, int, int | None]]:
    """The first batch's slots in queue order: ``("first", item, assignee)`` and ``("gold", item,
    labeler)``, the gold questions spread evenly among the first labels (so that whoever labels
    gets some, and nobody can tell them apart by their place)."""
    first = [("first", int(i), a) for i, a in zip(plan.initial, plan.assignees)]
    out: list[tuple[str, int, int | None]] = []
    n, g = len(first), len(plan.gold)
    k = 0
    for j, (item, uid) in enumerate(plan.gold):
        upto = -(-(j + 1) * n // (g + 1))  # after a first label: the queue never opens with one
        out += first[k:upto]
        k = max(k, upto)
        out.append(("gold", int(item), int(uid)))
    return out + first[k:]


@dataclass
class Plan:
    """Everything one step decided; the web driver persists it, the simulator reads it."""

    phase: str  # what the batch waits for next: REANNOTATION (requests) or "closed"
    requests: list[Request] = field(default_factory=list)  # rounds that need the new voters' answers
    trust: dict[int, LabelerTrust] = field(default_factory=dict)  # changed trust states
    events: list[dict] = field(default_factory=list)  # trust history rows, in order
    rounds: list[dict] = field(default_factory=list)  # resolved rounds
    confusion: dict[int, dict] = field(default_factory=dict)  # labeler -> Dawid-Skene estimate
    artificial: dict[int, np.ndarray] = field(default_factory=dict)  # this iteration's crafted rows
    model: object | None = None  # F_i (saved when the iteration closes)
    metric: dict = field(default_factory=dict)
    carry: dict = field(default_factory=dict)
    stop: str = ""
    next_items: list[int] = field(default_factory=list)
    assignees: list[int | None] = field(default_factory=list)

    @property
    def closed(self) -> bool:
        return self.phase == "closed"


# --------------------------------------------------------------------------------------
# Start
# --------------------------------------------------------------------------------------


def start(cfg: live.LiveConfig, n: int, *, label_known: np.ndarray, crowd: list[int], buy_secured: bool = True,
          excluded: np.ndarray | None = None) -> StartPlan:
    """S and the random initial batch. S is drawn for every strategy so that all start from the
    same initial labels; with ``buy_secured`` False (the simulator's undefended baselines) it is
    not bought and its items stay in the pool. A live project always keeps S: its accuracy on S is
    the project's measure and stop rule. ``excluded`` items (a pool defence's quarantine) are never drawn."""
    indices = np.arange(n) if excluded is None else np.flatnonzero(~np.asarray(excluded, dtype=bool))
    drawn = live.random_items(indices, min(cfg.secured_size, max(len(indices) - 1, 0)), seed_of(cfg, 0, 1))
    secured = drawn if buy_secured else np.empty(0, dtype=np.int64)
    known = np.asarray(label_known, dtype=bool)
    admin = int(known[secured].sum()) if len(secured) else 0
    consensus = [int(i) for i in secured if not known[i]]
    gold: list[tuple[int, int]] = []
    golden = sorted(int(i) for i in secured if known[i])
    if cfg.defenses_on and cfg.gold_per_labeler and golden:
        rng = live.rng_for(cfg.seed, 0, 7)
        for uid in crowd:
            picks = rng.choice(golden, size=min(cfg.gold_per_labeler, len(golden)), replace=False)
            gold += [(int(i), int(uid)) for i in picks]
    budget_left = ((cfg.budget if cfg.budget is not None else 10**12) - admin - cfg.h * len(consensus)
                   - len(gold))
    initial = live.random_items(np.setdiff1d(indices, drawn), min(cfg.initial_size, max(budget_left, 0)),
                                seed_of(cfg, 0, 2))
    following = np.empty(0, dtype=np.int64)
    if cfg.pipeline:  # people label a second random batch while the first is processed
        following = live.random_items(np.setdiff1d(indices, np.concatenate([drawn, initial])),
                                      min(cfg.batch_size, max(budget_left - len(initial), 0)), seed_of(cfg, 0, 5))
    eligible = list(crowd)
    assignees = live.spread(len(initial), eligible, {}, seed=cfg.seed)
    load = Counter(a for a in assignees if a is not None)
    voters = {}
    for item in consensus:
        voters[item] = live.choose_distinct(cfg.h, eligible, load=load, seed=cfg.seed + item)
        load.update(voters[item])
    return StartPlan(secured=secured, secured_voters=voters, initial=initial, assignees=assignees,
                     admin_labels=admin, following=following,
                     following_assignees=live.spread(len(following), eligible, {}, seed=cfg.seed + 1), gold=gold)


def secured_label(votes: list[int]) -> int | None:
    """The verified label of an S item labeled by h labelers (None when they disagree)."""
    if not votes:
        return None
    _, keep = resolve(votes[0], votes[1:])
    return keep


# --------------------------------------------------------------------------------------
# One step
# --------------------------------------------------------------------------------------


def step(cfg: live.LiveConfig, pool: Pool, state: EngineState, *, previous_model) -> Plan:
    """Advance the open batch by one step and update ``state`` to what the plan describes.

    ``previous_model`` is F_{i-1} (None at iteration 0). Deterministic for a given state and
    ``cfg.seed``, so a redelivered task or another driver computes the same plan.
    """
    if cfg.training_mode == "finetune" and pool.refit is None:
        raise ValueError("training_mode is 'finetune' but the driver gave the engine no Pool.refit")
    plan = Plan(phase=REANNOTATION)
    if state.phase == LABELING:
        model = _after_labeling(cfg, pool, state, previous_model, plan)
    elif cfg.redundancy > 1:
        model = _after_redundancy(cfg, pool, state, plan)
    else:
        model = _after_reannotation(cfg, pool, state, previous_model, plan)
    if plan.requests:
        return _wait_for_votes(state, plan)
    _finish(cfg, pool, state, previous_model, model, plan)
    if plan.requests:
        return _wait_for_votes(state, plan)
    return plan


def _wait_for_votes(state: EngineState, plan: Plan) -> Plan:
    state.phase = REANNOTATION
    plan.phase = REANNOTATION
    plan.carry = dict(state.carry)
    return plan


def _train(cfg: live.LiveConfig, pool: Pool, state: EngineState):
    labels = state.labels.copy()
    if pool.train_filter is not None:
        items = np.flatnonzero(labels >= 0)
        if len(items):
            keep = pool.train_filter(items, labels[items])
            labels[items[~keep]] = -1  # their artificial copies go too (train_model skips them)
            state.filtered = int((~keep).sum())
    weights = state.weights() if cfg.trust_weights else (labels >= 0).astype(float)
    artificial = state.artificial
    if pool.refit is not None:  # offsets from the item's current features (finetune)
        artificial = {k: pool.features[k] + off for k, off in artificial.items() if 0 <= k < len(labels)}
    return live.train_model(pool.features, labels, weights, pool.n_classes, artificial=artificial,
                            augment_weight=cfg.augment_weight, standardizer=pool.standardizer,
                            seed=cfg.seed + state.iteration, head=pool.head)


def _event(plan: Plan, uid: int, reason: str, before: float, state: LabelerTrust, *, item: int | None = None,
           confidence: float | None = None, original: int | None = None, consensus: int | None = None,
           note: str = "") -> None:
    plan.events.append({"labeler": int(uid), "reason": reason, "item_index": item, "delta": state.trust - before,
                        "trust_after": state.trust, "model_confidence": confidence, "original_label": original,
                        "consensus_label": consensus, "note": note})


def _after_labeling(cfg, pool: Pool, state: EngineState, previous, plan: Plan):
    """Audit, craft, train, secured-set check; re-annotation requests go into ``plan``."""
    batch = np.sort(np.asarray(state.batch, dtype=np.int64))  # one order for every driver (noise draws follow it)
    labeled_now = batch[state.labels[batch] >= 0]
    suspicious = np.empty(0, dtype=np.int64)
    auditor = previous
    known = state.secured_labels[state.secured_labels >= 0]
    if previous is None and len(known) and np.bincount(known, minlength=pool.n_classes).min() >= MIN_AUDITOR_PER_CLASS:
        # the random first batch comes in before any model exists: a model of the verified
        # secured set checks it (ours; S still never enters the training set of F_i)
        auditor = live.train_model(pool.features, state.secured_labels, np.ones(len(state.labels)), pool.n_classes,
                                   standardizer=pool.standardizer, seed=cfg.seed, head=pool.head)
    if cfg.defenses_on and auditor is not None and cfg.audit_confidence is not None:
        suspicious = _audit(cfg, pool, state, auditor, labeled_now, plan)
        if cfg.recheck and previous is not None:
            suspicious = np.concatenate([suspicious, _recheck(cfg, pool, state, previous, batch)])
    if cfg.defenses_on and cfg.probation_labels:
        suspicious = np.union1d(suspicious, on_probation(state, labeled_now, cfg.probation_labels))
    if cfg.defenses_on and cfg.verify_labels:  # a second opinion on every first label
        suspicious = np.union1d(suspicious, labeled_now[state.labeler_of[labeled_now] >= 0])
    if pool.crafter is not None and previous is not None and cfg.augmentations and len(labeled_now):
        rows, perts, failed = pool.crafter(previous, labeled_now, state.labels[labeled_now],
                                           seed_of(cfg, state.iteration, 3))
    else:
        rows, perts = live.craft(pool.features, pool.standardizer, previous, labeled_now, state.labels, cfg,
                                 seed=seed_of(cfg, state.iteration, 3))
        failed = sum(1 for v in perts.values() if math.isinf(v))  # no boundary to cross (degenerate head)
    if pool.refit is not None:  # finetune: kept as offsets, so they follow their item's features
        rows = {k: np.asarray(r - pool.features[k], dtype=np.float32) for k, r in rows.items()}
    plan.artificial = rows
    state.artificial.update(rows)
    state.perturbations = dict(perts)
    model = _train(cfg, pool, state)
    s_acc = live.accuracy_on(model, pool.features, state.secured_labels, state.secured_labels >= 0)
    triggered = cfg.defenses_on and live.performance_dropped(s_acc, state.previous_secured_accuracy, cfg.epsilon)
    todo = {int(x) for x in suspicious}
    if triggered:
        todo |= {int(x) for x in labeled_now if state.labeler_of[x] >= 0}
    state.carry = {"secured_accuracy_before_check": s_acc, "check_triggered": bool(triggered),
                   "audited": int(len(suspicious)), "reannotated": 0, "discarded": 0, "craft_failed": int(failed),
                   "perturbations": {str(k): (v if math.isfinite(v) else None) for k, v in perts.items()}}
    if cfg.defenses_on:
        _request(cfg, state, plan, sorted(todo))
    elif cfg.redundancy > 1:
        _request_redundant(cfg, state, plan, [int(x) for x in labeled_now if state.labeler_of[x] >= 0])
    return model


def _audit(cfg, pool: Pool, state: EngineState, model, items: np.ndarray, plan: Plan) -> np.ndarray:
    """Labels of ``items`` that ``model`` contradicts at their labeler's threshold (returned);
    labels it confidently agrees with earn their labeler a little trust."""
    if not len(items):
        return np.empty(0, dtype=np.int64)
    policy = policy_of(cfg)
    contra = np.array([_audit_threshold(cfg, state, int(u)) for u in state.labeler_of[items]], dtype=float)
    confirmed, suspicious = live.audit(model, pool.features, items, state.labels, cfg.audit_confidence,
                                       contradiction_confidence=contra)
    proba = live.class_probabilities(model, pool.features, confirmed)
    for item in confirmed:
        uid = int(state.labeler_of[item])
        if uid < 0 or uid not in state.trust:
            continue
        before = state.trust[uid].trust
        apply_confirmation(state.trust[uid], policy)
        plan.trust[uid] = state.trust[uid]
        if state.trust[uid].trust != before:  # capped at 1: no change, no event
            label = int(state.labels[item])
            _event(plan, uid, "confirmed", before, state.trust[uid], item=int(item),
                   confidence=float(proba[int(item)][label]), original=label, consensus=label)
    return suspicious


def on_probation(state: EngineState, items: np.ndarray, confirmed: int) -> np.ndarray:
    """Labels of ``items`` whose labeler is on probation (``LiveConfig.probation_labels``, ours):
    fewer than ``confirmed`` of their earlier first labels were confirmed by others in a
    re-annotation round. Those labels are re-annotated whatever the model says: a newcomer's
    first answers are checked although a weak first model neither confirms nor contradicts them,
    and a labeler whose labels keep being refuted (a spammer) stays on probation until flagged."""
    items = np.asarray(items, dtype=np.int64)
    asked = set(items.tolist())
    on = {uid for uid in {int(u) for u in state.labeler_of[items] if u >= 0}
          if sum(1 for it, given in state.first_labels.get(uid, [])
                 if it not in asked and state.verdicts.get((uid, it)) == given) < confirmed}
    return np.sort(items[np.isin(state.labeler_of[items], list(on))]).astype(np.int64)


def withdraw_support(state: EngineState) -> list[int]:
    """Verified labels that a suspended labeler's voice carried lose their verification (ours):
    the label stands again on its first labeler's word (rechecked and audited as such), or, when
    that labeler is suspended too, leaves D and the item returns to the pool. Returns the items.
    The web app derives the same from its rounds (:func:`labeling.selectors.pool_labels`)."""
    blocked = {uid for uid, t in state.trust.items() if t.status is Status.SUSPENDED}
    hit = sorted(item for item, (_, _, who) in state.support.items() if who & blocked)
    for item in hit:
        uid, label, _ = state.support.pop(item)
        if state.labeler_of[item] >= 0 or state.labels[item] < 0:
            continue  # no longer a verified label
        if uid not in blocked:
            state.labels[item], state.labeler_of[item] = label, uid
        else:
            state.labels[item], state.labeler_of[item] = -1, -1
    return hit


def _recheck(cfg, pool: Pool, state: EngineState, model, batch: np.ndarray) -> np.ndarray:
    """Earlier labels still standing on one labeler's word that the newer model contradicts at
    their labeler's threshold (ours): a label given near the boundary, where the model of its day
    could not judge it, is judged again once the model has learned more. No trust is earned here
    (a label confirmed once is not confirmed again)."""
    older = np.flatnonzero(state.labeler_of >= 0)
    older = older[~np.isin(older, batch) & ~np.isin(older, list(state.requests))]
    if not len(older):
        return older
    contra = np.array([_audit_threshold(cfg, state, int(u)) for u in state.labeler_of[older]], dtype=float)
    _, suspicious = live.audit(model, pool.features, older, state.labels, cfg.audit_confidence,
                               contradiction_confidence=contra)
    return suspicious


def posterior_threshold(trust: LabelerTrust, wrong: float, p1: float, *, n_classes: int = 2,
                        prior_labels: float = 10.0) -> float:
    """The model confidence above which a contradicted label of this labeler is more than
    ``wrong`` likely to be wrong (ours: ``LiveConfig.audit_posterior``).

    The labeler's accuracy ``a`` is the posterior mean of their re-annotated labels that held,
    with a prior of ``prior_labels`` labels at ``p1``. A label the model gives probability ``q``
    is wrong with probability ``r (1 - q) / (r (1 - q) + a q)``, ``r = (1 - a) / (K - 1)``; that
    exceeds ``wrong`` when ``q <= r (1 - wrong) / (r (1 - wrong) + wrong a)``. The threshold on the
    model's top class is ``1 - q*`` (exact for two classes, conservative for more). An honest
    labeler is audited only where the model is sure; one whose labels were refuted, everywhere.
    """
    held = trust.checked - trust.disagreements
    a = (held + prior_labels * p1) / (trust.checked + prior_labels)
    r = (1.0 - a) / max(n_classes - 1, 1)
    q = r * (1.0 - wrong) / (r * (1.0 - wrong) + wrong * a)
    return float(min(max(1.0 - q, 0.0), 1.0))


def _audit_threshold(cfg, state: EngineState, uid: int) -> float:
    """The labeler's audit threshold (:func:`learner.trust.audit_threshold`); a labeler with a
    refuted label among their last ``trust_window`` first labels is not proven (ours: a sleeper's
    first caught mapping makes every later contradiction of theirs checked)."""
    trust = state.trust.get(uid)
    if trust is None:
        return cfg.audit_confidence
    if cfg.audit_posterior is not None:
        return posterior_threshold(trust, cfg.audit_posterior, cfg.p1, n_classes=2)
    recent = state.history(uid)[-cfg.trust_window:]
    if any(c is not None and c != g for g, c in recent):
        return cfg.audit_confidence
    return audit_threshold(trust, cfg.audit_confidence, cfg.audit_confidence_proven, cfg.audit_proven_after)


def _request(cfg, state: EngineState, plan: Plan, todo: list[int]) -> None:
    """Open rounds for ``todo`` items (their standing first labels), budget permitting."""
    eligible = state.eligible()
    left = _budget_left(cfg, state) - sum(cfg.h - len(r.votes) for r in state.requests.values())
    first = 1 if cfg.reannotation == "adaptive" else cfg.h
    load: Counter = Counter()
    for item in todo:
        original = int(state.labeler_of[item])
        if original < 0 or item in state.requests or left < cfg.h:
            continue
        voters = live.choose_distinct(first, eligible, exclude={original}, load=load, seed=cfg.seed + item)
        if not voters:
            continue
        req = Request(item=item, original=original, label=int(state.labels[item]),
                      asked=list(voters), new_voters=list(voters))
        load.update(voters)
        state.requests[item] = req
        plan.requests.append(req)
        left -= cfg.h


def _request_redundant(cfg, state: EngineState, plan: Plan, items: list[int]) -> None:
    """The redundancy baseline: ``redundancy - 1`` more labelers for each first label, at once."""
    need = cfg.redundancy - 1
    left = _budget_left(cfg, state)
    load: Counter = Counter()
    for item in items:
        if left < need:
            break
        voters = live.choose_distinct(need, state.eligible(), exclude={int(state.labeler_of[item])}, load=load,
                                      seed=cfg.seed + item)
        if not voters:
            continue
        req = Request(item=item, original=int(state.labeler_of[item]), label=int(state.labels[item]),
                      asked=list(voters), new_voters=list(voters))
        load.update(voters)
        state.requests[item] = req
        plan.requests.append(req)
        left -= len(voters)


def _after_redundancy(cfg, pool: Pool, state: EngineState, plan: Plan):
    """Aggregate the redundant labels (crowd-kit, :mod:`learner.aggregation`) and retrain.

    Majority resolves the batch's items; Dawid-Skene re-estimates every labeler's confusion from
    every answer bought so far and re-resolves every redundantly labeled item with it."""
    from .aggregation import aggregate

    need = cfg.redundancy - 1
    load: Counter = Counter()
    done: list[Request] = []
    for item in sorted(state.requests):
        req = state.requests[item]
        req.new_voters = []
        if len(req.votes) < need:
            more = live.choose_distinct(need - len(req.votes), state.eligible(), exclude={req.original, *req.asked},
                                        load=load, seed=cfg.seed + item + 7919 * len(req.asked))
            if more:
                req.asked += more
                req.new_voters = list(more)
                load.update(more)
                plan.requests.append(req)
                continue
        done.append(req)
    if plan.requests:
        return None
    for req in done:
        del state.requests[req.item]
    # the redundantly labeled items: every pool item answered more than once (S is bought apart)
    counts = Counter(a[0] for a in state.answers)
    redundant = {i for i, c in counts.items() if c > 1 and not state.secured[i]}
    wanted = sorted(redundant) if cfg.aggregation == "dawid_skene" else [r.item for r in done]
    answers = [a for a in state.answers if a[0] in redundant]
    for item, label in aggregate(answers, cfg.aggregation, items=wanted).items():
        state.labels[item], state.labeler_of[item] = label, -1
    for req in done:
        plan.rounds.append({"item_index": req.item,
                            "outcome": Outcome.AGREED.value if all(v == req.label for v in req.votes)
                            else Outcome.DISAGREED.value,
                            "consensus_label": int(state.labels[req.item]), "prob_original": None,
                            "prob_consensus": None})
    state.carry["reannotated"] = int(state.carry.get("reannotated", 0)) + len(done)
    return _train(cfg, pool, state)


def _refit(cfg, pool: Pool, state: EngineState, model):
    """finetune: the backbone's last stage learns from the iteration's final labels (trust
    weighted); the pool's features, their standardizer and the head follow."""
    items = np.flatnonzero(state.labels >= 0)
    if not len(items):
        return model
    weights = state.weights() if cfg.trust_weights else (state.labels >= 0).astype(float)
    from .heads import fit_standardizer

    pool.features = np.asarray(pool.refit(items, state.labels[items], weights[items],
                                          seed_of(cfg, state.iteration, 6)), dtype=np.float32)
    pool.standardizer = fit_standardizer(pool.features)
    if pool.cache_key:  # the strategy's clustering was of the old features
        pool.cache_key = f"{pool.cache_key.split('#refit')[0]}#refit{state.iteration}"
    return _train(cfg, pool, state)


def batch_size_for(cfg: live.LiveConfig, active: int | None) -> int:
    """Items of a new batch before the budget: ``batch_size``, or with ``batch_per_annotator``
    ``max(batch_size, batch_per_annotator * active)`` (at least one person counted)."""
    if cfg.batch_per_annotator is None:
        return cfg.batch_size
    if active is None:
        raise ValueError("batch_per_annotator is set but the driver passed no EngineState.active_labelers")
    return max(cfg.batch_size, cfg.batch_per_annotator * max(int(active), 1))


def _budget_left(cfg, state: EngineState) -> int:
    """Labels that may still be bought (a pending batch's first labels are spent already)."""
    if cfg.budget is None:
        return 10**12
    return cfg.budget - state.bought - len(state.pending) * max(cfg.redundancy, 1)


def _after_reannotation(cfg, pool: Pool, state: EngineState, previous, plan: Plan):
    """Resolve the rounds whose votes are in (or ask for the rest), update trust, retrain."""
    policy = policy_of(cfg)
    eligible = state.eligible()
    adaptive = cfg.reannotation == "adaptive"
    load: Counter = Counter()
    done: list[tuple[Request, Outcome, int | None]] = []
    cast = state.vote_history() if adaptive else {}
    for item in sorted(state.requests):
        req = state.requests[item]
        req.new_voters = []
        confirms = adaptive and bool(req.asked) and _reliable(state, req.asked[0], pool.n_classes, policy, cast)
        outcome, keep = resolve_votes(req.label, req.votes, cfg.h, adaptive=confirms, escalate=cfg.escalate_votes)
        if outcome is None:
            need = votes_needed(req.label, req.votes, cfg.h, cfg.escalate_votes)
            more = live.choose_distinct(need, eligible, exclude={req.original, *req.asked}, load=load,
                                        seed=cfg.seed + item + 7919 * len(req.asked))
            if more:
                req.asked += more
                req.new_voters = list(more)
                load.update(more)
                plan.requests.append(req)
                continue
            if not req.votes:  # nobody could answer: the label stands as it was
                del state.requests[item]
                continue
            # nobody else may be asked (a small crowd): decide on the votes there are
            outcome, keep = resolve_votes(req.label, req.votes, cfg.h, adaptive=confirms,
                                          escalate=cfg.escalate_votes, final=True)
        done.append((req, outcome, keep))
    if plan.requests:  # the remaining rounds wait until every open one has its votes
        return None
    reference = previous if previous is not None else _train(cfg, pool, state)  # iteration 0: F_0
    proba = live.class_probabilities(reference, pool.features, [r.item for r, _, _ in done])
    discarded = 0
    for req, outcome, keep in done:
        del state.requests[req.item]
        p = proba.get(req.item)
        # a rejected round keeps nothing, but its votes' class is the evidence against the original
        against = rejected_class(req.votes) if outcome is Outcome.REJECTED else keep
        p_orig = float(p[req.label]) if p is not None else None
        p_cons = float(p[against]) if p is not None and against is not None else None
        plan.rounds.append({"item_index": req.item, "outcome": outcome.value, "consensus_label": against,
                            "prob_original": p_orig, "prob_consensus": p_cons})
        if outcome in (Outcome.INCONSISTENT, Outcome.REJECTED):
            state.labels[req.item], state.labeler_of[req.item] = -1, -1
            state.discarded[req.item] = True
            discarded += 1
        else:
            state.labels[req.item], state.labeler_of[req.item] = keep, -1
            state.support[req.item] = (req.original, req.label, ({req.original} if req.label == keep else set()) | {
                who for who, vote in zip(req.asked, req.votes) if vote == keep})
        if against is not None:
            state.verdicts[(req.original, req.item)] = int(against)
        trust = state.trust.get(req.original)
        if trust is None:
            continue
        before = trust.trust
        reason = apply_outcome(trust, outcome, prob_original=p_orig if p_orig is not None else 0.5,
                               prob_consensus=p_cons if p_cons is not None else 0.0, policy=policy)
        plan.trust[req.original] = trust
        if reason is not None:
            _event(plan, req.original, reason, before, trust, item=req.item, confidence=p_cons,
                   original=req.label, consensus=against)
    state.carry["reannotated"] = int(state.carry.get("reannotated", 0)) + len(done)
    state.carry["discarded"] = int(state.carry.get("discarded", 0)) + discarded
    return _train(cfg, pool, state)


def _reliable(state: EngineState, uid: int, n_classes: int, policy: TrustPolicy, cast: dict[int, list]) -> bool:
    """May ``uid``'s single vote confirm a label (adaptive rounds)? Active, and their own refuted
    labels and votes not improbable for an honest labeler at :data:`CONFIRMER_ALPHA` (``cast``:
    :meth:`EngineState.vote_history`, computed once per step)."""
    trust = state.trust.get(uid)
    if trust is not None and trust.status is not Status.ACTIVE:
        return False
    votes = [(g, c) for g, c, _ in cast.get(uid, [])]
    return refutation_pvalue(state.history(uid), n_classes, policy, votes=votes) >= CONFIRMER_ALPHA


def _confusion(cfg, pool: Pool, state: EngineState, model, plan: Plan) -> tuple[set[int], set[int]]:
    """Dawid-Skene confusion matrices (the model joins as one more labeler); returns the labelers
    with a systematic (true, given) mapping not reported before, and those with any mapping now."""
    from .confusion import dawid_skene, systematic_pairs

    if cfg.confusion_min_rate is None or not cfg.defenses_on or not state.answers or model is None:
        return set(), set()
    items = [a[0] for a in state.answers]
    workers = [a[1] for a in state.answers]
    labels = [a[2] for a in state.answers]
    seen = np.array(sorted(set(items)), dtype=np.int64)
    predicted = model.predict(pool.features[seen])
    ds = dawid_skene(items + seen.tolist(), workers + ["model"] * len(seen), labels + [int(x) for x in predicted],
                     pool.n_classes)
    n_given = Counter(workers)
    row = {item: k for k, item in enumerate(dict.fromkeys(items + seen.tolist()))}
    hits, patterns = set(), set()
    for uid in ds.workers:
        if uid == "model":
            continue
        conf, counts = ds.of(uid)
        pairs = systematic_pairs(conf, counts, min_rate=cfg.confusion_min_rate, min_count=cfg.confusion_min_count)
        # the same over the labeler's last trust_window first labels (ours: a sleeper's recent turn
        # is a small part of its whole history)
        rate = {p: (conf[p], counts[p], "") for p in pairs}
        recent = state.first_labels.get(int(uid), [])[-cfg.trust_window:]
        if recent:
            k = pool.n_classes
            rc = np.zeros((k, k))
            for item, label in recent:
                rc[:, label] += ds.posterior[row[item]]
            rconf = rc + np.full((k, k), 0.1) + np.eye(k) * 1.9  # dawid_skene's prior
            rconf /= rconf.sum(axis=1, keepdims=True)
            for p in systematic_pairs(rconf, rc, min_rate=cfg.confusion_min_rate, min_count=cfg.confusion_min_count):
                rate.setdefault(p, (rconf[p], rc[p], f" (last {len(recent)} labels)"))
            pairs = sorted(rate)
        if pairs:
            patterns.add(int(uid))
        plan.confusion[int(uid)] = {"matrix": conf.round(4).tolist(), "counts": counts.round(3).tolist(),
                                    "n_labels": int(n_given[uid]), "pairs": [list(p) for p in pairs]}
        new = [p for p in pairs if (int(uid), *p) not in state.reported_pairs]
        trust = state.trust.get(int(uid))
        if not new or trust is None or trust.status is not Status.ACTIVE:
            continue
        hits.add(int(uid))
        for true_c, given_c in new:  # one event per pair: the web driver reads reported pairs back from them
            state.reported_pairs.add((int(uid), int(true_c), int(given_c)))
            r, n, where = rate[(true_c, given_c)]
            _event(plan, int(uid), "systematic_confusion", trust.trust, trust, original=int(given_c),
                   consensus=int(true_c), confidence=float(r),
                   note=f"{true_c} -> {given_c}: rate {r:.2f} over {n:.1f} labels{where}")
    return hits, patterns


def _assess_everyone(cfg, state: EngineState, n_classes: int, systematic: set[int], patterns: set[int],
                     plan: Plan) -> tuple[list[int], list[int]]:
    """Apply :func:`learner.trust.assess` to every labeler; returns (newly flagged, newly suspended)."""
    policy = policy_of(cfg)
    flagged, suspended = [], []
    if not cfg.defenses_on:
        return flagged, suspended
    pending = {r.original for r in state.requests.values()}
    gold = state.gold_history()
    peers = state.secured_history() if cfg.secured_evidence else {}
    cast = state.vote_history()
    for uid in sorted(state.trust):
        trust = state.trust[uid]
        unchecked = int((state.labeler_of == uid).sum()) if uid not in pending else 1
        # their gold answers and S votes come first; an audit that cleared them covers those too
        mine = gold.get(uid, []) + peers.get(uid, [])
        verdict = assess(trust, mine + state.history(uid), n_classes, systematic=uid in systematic,
                         unchecked=unchecked, policy=policy, pattern=uid in patterns,
                         cleared=len(mine) + trust.cleared if trust.cleared else 0, votes=cast.get(uid, []))
        if verdict.status is trust.status:
            continue
        trust.status = verdict.status
        if verdict.status is Status.ACTIVE:  # cleared by the audit: its labels do not flag twice
            trust.cleared = len(state.first_labels.get(uid, []))
        plan.trust[uid] = trust
        reason = {Status.FLAGGED: "flagged", Status.SUSPENDED: "suspended", Status.ACTIVE: "reinstated"}[verdict.status]
        _event(plan, uid, reason, trust.trust, trust, note=verdict.reason)
        if verdict.status is Status.FLAGGED:
            flagged.append(uid)
        elif verdict.status is Status.SUSPENDED:
            suspended.append(uid)
    return flagged, suspended


def _finish(cfg, pool: Pool, state: EngineState, previous, model, plan: Plan) -> None:
    """Trust verdicts, then the metric, the stop rules and the next batch."""
    systematic, patterns = _confusion(cfg, pool, state, model, plan)
    flagged, suspended = _assess_everyone(cfg, state, pool.n_classes, systematic, patterns, plan)
    for uid in suspended:  # their unverified labels leave D; the items return to the pool
        mine = state.labeler_of == uid
        state.labels[mine], state.labeler_of[mine] = -1, -1
    if suspended:
        withdraw_support(state)
    if flagged:  # a targeted audit of every label that stands on their word alone
        todo = [int(i) for uid in flagged for i in np.flatnonzero(state.labeler_of == uid)
                if not state.secured[i]]
        _request(cfg, state, plan, todo)
        if plan.requests:
            return
    if suspended:
        model = _train(cfg, pool, state)
    if pool.refit is not None:
        model = _refit(cfg, pool, state, model)
    s_acc = live.accuracy_on(model, pool.features, state.secured_labels, state.secured_labels >= 0)
    plan.model = model
    min_pert = live.min_perturbation(state.perturbations)
    carry = state.carry
    plan.metric = {
        "labels_bought": state.bought, "n_labeled": int(state.labeled.sum()),
        "n_artificial": int(sum(len(r) for k, r in state.artificial.items() if state.labels[k] >= 0)),
        "secured_accuracy": s_acc, "check_triggered": bool(carry.get("check_triggered", False)),
        "reannotated": int(carry.get("reannotated", 0)), "discarded": int(carry.get("discarded", 0)),
        "min_perturbation": min_pert, "craft_failed": int(carry.get("craft_failed", 0)),
    }
    plan.carry = dict(carry)
    plan.phase = "closed"
    budget_left = _budget_left(cfg, state)
    per_item = max(cfg.redundancy, 1)  # labels one queried item costs
    if budget_left < per_item and not len(state.pending):  # a pending batch is paid for: process it first
        plan.stop = "budget"
    elif cfg.target is not None and s_acc is not None and s_acc >= cfg.target - 1e-12:
        plan.stop = "target"
    elif cfg.tau is not None and min_pert is not None and min_pert > cfg.tau:
        plan.stop = "tau"
    if not plan.stop:
        k = min(batch_size_for(cfg, state.active_labelers), budget_left // per_item)
        blocked = state.labeled | state.secured | state.discarded
        blocked[state.pending] = True
        chosen = live.select_batch(cfg, pool.features, blocked, state.labels, model, k,
                                   perturbations=state.perturbations, seed=seed_of(cfg, state.iteration + 1, 4),
                                   cache_key=pool.cache_key)
        plan.next_items = [int(x) for x in chosen]
        if not plan.next_items and not len(state.pending):
            plan.stop = "pool exhausted"
        else:
            plan.assignees = live.spread(len(plan.next_items), state.eligible(), {},
                                         seed=cfg.seed + state.iteration + 1)
    # the state after the step: the iteration is closed
    state.previous_secured_accuracy = s_acc
    state.phase = LABELING
    state.carry = {}
    if cfg.pipeline:  # the batch people are labeling now is the next to close; the new one follows it
        state.batch, state.pending = np.asarray(state.pending, dtype=np.int64), np.asarray(plan.next_items, dtype=np.int64)
    else:
        state.batch = np.asarray(plan.next_items, dtype=np.int64)
    state.iteration += 1


__all__ = ["EngineState", "Plan", "Pool", "Request", "StartPlan", "start", "start_queue", "step", "secured_label", "seed_of",
           "policy_of", "batch_size_for", "LABELING", "REANNOTATION"]
