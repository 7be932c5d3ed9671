"""The robust active-learning loop (paper Fig. 2) with simulated labelers.

Everything works on arrays: the pool's features (frozen backbone, computed once), its true labels
(only the simulated labelers and the evaluation read them), the test set, and optionally the
pool's images plus the backbone for pixel-space crafting. One call of :func:`run_loop` is one
run; :mod:`learner.experiments` repeats it over strategies and seeds.

Per iteration: query a batch -> label it (one random active labeler per item) -> audit labels
that contradict a confident model (ours) -> craft adversarial + noise copies of the batch ->
train F_i on D + artificial data, each label weighted by its labeler's trust -> performance
check on the secured set S (re-annotate D' by h others when accuracy drops by > epsilon) ->
trust updates, flagging and review -> stop rules (target accuracy, budget, tau).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from trust import scoring
from trust.scoring import LabelerTrust, Outcome, Status, TrustPolicy

from .defences import POOL_DEFENCES, quarantine
from .heads import HeadConfig, LinearHead, accuracy, fit_standardizer, train_head
from .oracles import LabelerPool
from .strategies import QueryContext, RobustMinimax, make_strategy

ATTACKS = ("cw", "deepfool", "noise")


@dataclass
class LoopConfig:
    """Parameters of one run (defaults: the paper's, or ours where it is silent)."""

    strategy: str = "robust"
    initial_size: int = 20  # m
    batch_size: int = 20
    budget: int | None = None  # labels that may be bought in all (None: the pool size)
    target_accuracy: float | None = None  # stop once the test accuracy reaches it
    tau: float | None = None  # stop once every adversarial example needs more than tau
    defenses: bool | None = None  # secured set, re-annotation, trust (None: on for robust)
    secured_size: int = 50  # |S|
    secured_refresh: int | None = None  # q (None: never)
    secured_verification: str = "admin"  # "admin" (1 label each) or "consensus" (h each)
    audit_confidence: float | None = 0.5  # ours: re-annotate labels the model contradicts this surely
    audit_confidence_proven: float | None = 0.9  # ours: ... once the labeler's checked labels mostly held
    audit_proven_after: int = 10  # checked labels before a labeler can be proven
    adaptive_audit: bool = True  # ours: an audit stops at the first re-annotator who confirms the label
    augment: tuple[str, ...] | None = None  # subset of ATTACKS (None: all for robust, none otherwise)
    augment_space: str = "feature"  # "feature" (exact, frozen backbone) or "pixel" (through it)
    augment_weight: float = 0.1  # ours: 0.25 left some runs just under the target (docs/method.md)
    attack_impl: str = "fast"  # pixel space: "fast" (batched torch) or "art" (reference)
    overshoot: float = 0.02
    noise_variance: float = 0.3  # paper: variance 0.3 "on the model's input scale"
    n_clusters: int = 10
    candidate_factor: float = 3.0
    defence: str | None = None  # training-set filter before each head training (learner.defences)
    defence_k: int = 25  # neighbours consulted by the dknn defence (>~ 3x the poisons labeled together)
    head: HeadConfig = field(default_factory=HeadConfig)
    trust: TrustPolicy = field(default_factory=TrustPolicy)

    def resolved(self) -> "LoopConfig":
        robust = self.strategy == "robust"
        out = LoopConfig(**{**asdict(self), "head": self.head, "trust": self.trust})
        if out.defenses is None:
            out.defenses = robust
        if out.augment is None:
            out.augment = ATTACKS if robust else ()
        unknown = set(out.augment) - set(ATTACKS)
        if unknown:
            raise ValueError(f"unknown augmentation(s) {sorted(unknown)}; choose from {ATTACKS}")
        if out.augment_space not in ("feature", "pixel"):
            raise ValueError("augment_space must be 'feature' or 'pixel'")
        if out.secured_verification not in ("admin", "consensus"):
            raise ValueError("secured_verification must be 'admin' or 'consensus'")
        return out


@dataclass
class LoopData:
    """Arrays a run needs. ``pool_images``/``classifier_backbone`` only for pixel-space crafting."""

    pool_features: np.ndarray
    pool_labels: np.ndarray
    test_features: np.ndarray
    test_labels: np.ndarray
    n_classes: int
    pool_images: np.ndarray | None = None  # uint8 NHWC
    backbone: object | None = None  # torch module: images [0,1] NCHW -> features
    watch_features: np.ndarray | None = None  # e.g. poisoning targets: the final model's predictions are reported


@dataclass
class IterationRecord:
    iteration: int
    labels_bought: int
    n_labeled: int
    n_artificial: int
    test_accuracy: float
    secured_accuracy: float
    check_triggered: bool
    reannotated: int
    discarded: int
    min_perturbation: float
    flagged: list[int]
    suspended: list[int]


@dataclass
class RunResult:
    strategy: str
    seed: int
    history: list[IterationRecord]
    target_accuracy: float | None
    labels_to_target: int | None  # labels bought when the target was first reached
    stop_reason: str
    trust: dict[int, dict]
    malicious: list[int]
    final_accuracy: float
    label_accuracy: float  # share of training labels that are correct (resolved)
    watch_predictions: list[int] | None = None  # final model on LoopData.watch_features
    defence_dropped: int = 0  # labeled items the defence left out of the last training
    quarantined: list[int] = field(default_factory=list)  # pool items a pool-level defence kept out

    @property
    def reached(self) -> bool:
        return self.labels_to_target is not None


class _Run:
    def __init__(self, data: LoopData, config: LoopConfig, labelers: LabelerPool, seed: int):
        self.data, self.cfg, self.labelers, self.seed = data, config.resolved(), labelers, seed
        self.rng = np.random.default_rng(seed)
        n = len(data.pool_labels)
        self.budget = self.cfg.budget if self.cfg.budget is not None else n
        self.bought = 0
        self.labels = np.full(n, -1, dtype=np.int64)  # resolved label of each labeled item
        self.labeler_of = np.full(n, -1, dtype=np.int64)  # whose label it is (-1: consensus/admin)
        self.discarded = np.zeros(n, dtype=bool)
        self.secured = np.zeros(n, dtype=bool)
        self.quarantined = np.zeros(n, dtype=bool)  # a pool-level defence keeps these from everyone
        self.artificial: dict[int, np.ndarray] = {}  # pool index -> artificial feature rows
        self.trust = {i: LabelerTrust() for i in labelers.ids}
        self.standardizer = fit_standardizer(data.pool_features)
        self.strategy = make_strategy(self.cfg.strategy, **self._strategy_kwargs())
        self.history: list[IterationRecord] = []
        self.perturbations: dict[int, float] = {}
        self.defence_dropped = 0

    def _strategy_kwargs(self) -> dict:
        if self.cfg.strategy == "robust":
            return {"n_clusters": self.cfg.n_clusters, "candidate_factor": self.cfg.candidate_factor,
                    "seed": self.seed}
        return {}

    # ---- labeling ------------------------------------------------------------------------
    def active_labelers(self) -> list[int]:
        active = [i for i, t in self.trust.items() if t.status is Status.ACTIVE]
        return active or [i for i, t in self.trust.items() if t.status is not Status.SUSPENDED]

    def ask(self, labeler: int, item: int) -> int:
        self.bought += 1
        self.trust[labeler].labels_given += 1
        return self.labelers.annotate(labeler, self.data.pool_labels[item], self.rng)

    def label_items(self, items: np.ndarray) -> None:
        who = self.labelers.assign(len(items), self.active_labelers(), self.rng)
        for item, labeler in zip(items, who):
            self.labels[item] = self.ask(int(labeler), int(item))
            self.labeler_of[item] = labeler

    def labeled_mask(self) -> np.ndarray:
        return self.labels >= 0

    def weights(self, items: np.ndarray) -> np.ndarray:
        who = self.labeler_of[items]
        w = np.ones(len(items))
        mask = who >= 0
        w[mask] = [self._label_weight(int(i)) for i in who[mask]]
        return w

    def _label_weight(self, labeler: int) -> float:
        state = self.trust[labeler]
        if state.status is Status.SUSPENDED and scoring.systematic_confusion(
                state, self.data.n_classes, self.cfg.trust) is not None:
            return max(state.trust, 0.0)  # its doubted labels already left D (exclude_labels_of)
        return state.weight

    # ---- secured set ---------------------------------------------------------------------
    def build_secured_set(self) -> None:
        free = np.flatnonzero(~self.labeled_mask() & ~self.secured & ~self.discarded & ~self.quarantined)
        k = min(self.cfg.secured_size, len(free), max(self.budget - self.bought, 0))
        if k <= 0:
            return
        self.secured[:] = False
        self.secured_labels = np.full(len(self.labels), -1)
        for item in self.rng.choice(free, size=k, replace=False):
            if self.cfg.secured_verification == "admin":
                self.bought += 1
                label = int(self.data.pool_labels[item])
            else:
                voters = self.labelers.assign_reannotation(-1, self.cfg.trust.h, self.active_labelers(), self.rng)
                votes = [self.ask(v, int(item)) for v in voters]
                outcome, label = scoring.resolve(votes[0], votes[1:])
                if label is None:
                    continue
            self.secured[item] = True
            self.secured_labels[item] = label

    def secured_accuracy(self, model: LinearHead) -> float:
        if not self.secured.any():
            return float("nan")
        idx = np.flatnonzero(self.secured)
        return accuracy(model, self.data.pool_features[idx], self.secured_labels[idx])

    # ---- training ------------------------------------------------------------------------
    def train(self) -> LinearHead:
        items = np.flatnonzero(self.labeled_mask())
        if self.cfg.defence not in (None, "none") and len(items):
            from .defences import apply_defence
            mean, scale = self.standardizer
            keep = apply_defence(self.cfg.defence, (self.data.pool_features[items] - mean) / scale,
                                 self.labels[items], k=self.cfg.defence_k, n_classes=self.data.n_classes)
            self.defence_dropped = int((~keep).sum())
            items = items[keep]  # dropped items' artificial copies go too (below)
        dropped = set() if self.cfg.defence in (None, "none") else set(
            np.flatnonzero(self.labeled_mask()).tolist()) - set(items.tolist())
        feats = [self.data.pool_features[items]]
        labels = [self.labels[items]]
        weights = [self.weights(items)]
        for item, rows in self.artificial.items():
            if self.labels[item] < 0 or item in dropped:
                continue  # its source label was discarded, excluded or filtered by the defence
            feats.append(rows)
            labels.append(np.full(len(rows), self.labels[item]))
            weights.append(np.full(len(rows), self.cfg.augment_weight * self.weights(np.array([item]))[0]))
        return train_head(np.concatenate(feats), np.concatenate(labels), self.data.n_classes,
                          sample_weight=np.concatenate(weights), standardizer=self.standardizer,
                          config=self.cfg.head, seed=self.seed + len(self.history))

    # ---- artificial data -----------------------------------------------------------------
    def craft(self, model: LinearHead, items: np.ndarray) -> float:
        """Add adversarial and noise copies of ``items``; return the smallest perturbation."""
        if not self.cfg.augment or len(items) == 0:
            return float("nan")
        if self.cfg.augment_space == "pixel":
            from .augment import craft_pixel_space
            rows, l2 = craft_pixel_space(self.data, model, items, self.labels[items], self.cfg, self.rng)
        else:
            from .augment import craft_feature_space
            rows, l2 = craft_feature_space(self.data.pool_features, self.standardizer, model, items,
                                           self.labels[items], self.cfg, self.rng)
        for item, r in zip(items, rows):
            if len(r):
                self.artificial[int(item)] = r
        self.perturbations = {int(i): float(v) for i, v in zip(items, l2)}
        finite = l2[np.isfinite(l2)]
        return float(finite.min()) if len(finite) else float("inf")

    # ---- re-annotation and trust ---------------------------------------------------------
    def reannotate(self, items: np.ndarray, model: LinearHead, *, adaptive: bool = False) -> tuple[int, int]:
        """Send items to h other labelers; resolve; update trust. Returns (done, discarded).

        ``adaptive`` (audits): the first re-annotator who confirms the original label settles the
        item (two independent labelers agree), so an audit of a correct label costs one label
        instead of h; a disagreement goes on to all h votes as usual.
        """
        h = self.cfg.trust.h
        done = discarded = 0
        proba = model.predict_proba(self.data.pool_features[items]) if len(items) else None
        for row, item in enumerate(items):
            original = int(self.labeler_of[item])
            if original < 0 or self.budget - self.bought < h:
                continue
            voters = self.labelers.assign_reannotation(original, h, self.active_labelers(), self.rng)
            if len(voters) < h:
                continue
            votes: list[int] = []
            for voter in voters:  # sequential: two different answers already mean "inconsistent"
                votes.append(self.ask(voter, int(item)))
                if len(set(votes)) > 1 or (adaptive and votes[0] == self.labels[item]):
                    break
            done += 1
            outcome, keep = scoring.resolve(int(self.labels[item]), votes)
            p_orig = float(proba[row, self.labels[item]])
            p_cons = float(proba[row, keep]) if keep is not None else 0.0
            state = scoring.apply_outcome(self.trust[original], outcome, prob_original=p_orig,
                                          prob_consensus=p_cons, policy=self.cfg.trust,
                                          original_label=int(self.labels[item]), consensus_label=keep)
            if (state.status is Status.ACTIVE
                    and scoring.systematic_confusion(state, self.data.n_classes, self.cfg.trust) is not None):
                state.status = Status.FLAGGED  # a pattern, not one slip: send to review
            if outcome is Outcome.INCONSISTENT:
                self.labels[item] = -1
                self.discarded[item] = True
                discarded += 1
            else:
                self.labels[item] = keep
                self.labeler_of[item] = -1  # verified by consensus: no longer one labeler's word
        return done, discarded

    def audit(self, batch: np.ndarray, previous: LinearHead) -> tuple[int, int]:
        """Check the new labels against the previous model (ours); returns (re-annotated, discarded).

        Labels the model confidently agrees with earn their labeler a little trust; a label it
        contradicts at the labeler's audit threshold (:func:`trust.scoring.audit_threshold`) goes
        to other labelers.
        """
        cfg = self.cfg
        proba = previous.predict_proba(self.data.pool_features[batch])
        top = proba.max(axis=1)
        agrees = proba.argmax(axis=1) == self.labels[batch]
        for item in batch[(top >= cfg.audit_confidence) & agrees]:
            scoring.apply_confirmation(self.trust[int(self.labeler_of[item])], cfg.trust)
        threshold = np.array([scoring.audit_threshold(
            self.trust[int(self.labeler_of[item])], cfg.audit_confidence, cfg.audit_confidence_proven,
            cfg.audit_proven_after) for item in batch])
        suspicious = batch[(top >= threshold) & ~agrees]
        if not len(suspicious):
            return 0, 0
        return self.reannotate(suspicious, previous, adaptive=cfg.adaptive_audit)

    def review_flagged(self) -> None:
        for ident, state in self.trust.items():
            if state.status is Status.FLAGGED:
                if scoring.review(state, self.cfg.trust, self.data.n_classes) is Status.SUSPENDED:
                    self.exclude_labels_of(ident)
            elif state.status is Status.SUSPENDED:
                self.exclude_labels_of(ident)

    def exclude_labels_of(self, labeler: int) -> None:
        """A suspended labeler's unverified labels leave D; the items return to the pool.

        When review found a systematic confusion (true c -> given c'), only its labels c' are
        doubted (ours): its other labels agree with everyone else's and relabeling them would
        only spend budget; they keep counting with the labeler's (low) trust as weight.
        """
        mine = self.labeler_of == labeler
        pair = scoring.systematic_confusion(self.trust[labeler], self.data.n_classes, self.cfg.trust)
        if pair is not None:
            mine &= self.labels == pair[1]
        self.labels[mine] = -1
        self.labeler_of[mine] = -1

    # ---- the loop ------------------------------------------------------------------------
    def evaluate(self, model: LinearHead) -> float:
        return accuracy(model, self.data.test_features, self.data.test_labels)

    def record(self, model, it, s_acc, triggered, reann, disc, min_pert) -> float:
        test_acc = self.evaluate(model)
        self.history.append(IterationRecord(
            iteration=it, labels_bought=self.bought, n_labeled=int(self.labeled_mask().sum()),
            n_artificial=int(sum(len(r) for i, r in self.artificial.items() if self.labels[i] >= 0)),
            test_accuracy=test_acc, secured_accuracy=s_acc, check_triggered=triggered,
            reannotated=reann, discarded=disc, min_perturbation=min_pert,
            flagged=[i for i, t in self.trust.items() if t.status is Status.FLAGGED],
            suspended=[i for i, t in self.trust.items() if t.status is Status.SUSPENDED],
        ))
        return test_acc

    def run(self) -> RunResult:
        cfg = self.cfg
        if cfg.defence in POOL_DEFENCES:
            mean, scale = self.standardizer
            self.quarantined = quarantine(cfg.defence, (self.data.pool_features - mean) / scale)
        if cfg.defenses:
            self.build_secured_set()
        pool_free = lambda: np.flatnonzero(  # noqa: E731
            ~self.labeled_mask() & ~self.secured & ~self.discarded & ~self.quarantined)
        first = self.rng.choice(pool_free(), size=min(cfg.initial_size, len(pool_free()),
                                                      self.budget - self.bought), replace=False)
        self.label_items(first)
        model = self.train()
        s_acc = self.secured_accuracy(model)
        self.record(model, 0, s_acc, False, 0, 0, float("nan"))
        target_at = self._target_reached()
        stop = "target" if target_at is not None else ""
        it = 0
        while not stop:
            it += 1
            if self.bought >= self.budget:
                stop = "budget"
                break
            if cfg.defenses and cfg.secured_refresh and it % cfg.secured_refresh == 0:
                self.build_secured_set()
            blocked = self.labeled_mask() | self.secured | self.discarded | self.quarantined
            if hasattr(self.strategy, "labels_of_labeled"):
                self.strategy.labels_of_labeled = self.labels
            context = QueryContext(item_perturbations=self.perturbations, budget_left=self.budget - self.bought)
            batch = self.strategy.query(self.data.pool_features, blocked, model, cfg.batch_size,
                                        rng=self.rng, context=context)
            if len(batch) == 0:
                stop = "pool exhausted"
                break
            previous, prev_s_acc = model, s_acc
            self.label_items(batch)
            reann = disc = 0
            if cfg.defenses and cfg.audit_confidence is not None:
                reann, disc = self.audit(batch, previous)
            min_pert = self.craft(previous, batch[self.labels[batch] >= 0])
            model = self.train()
            s_acc = self.secured_accuracy(model)
            triggered = cfg.defenses and scoring.performance_dropped(s_acc, prev_s_acc, cfg.trust.epsilon)
            if triggered:
                todo = batch[(self.labels[batch] >= 0) & (self.labeler_of[batch] >= 0)]
                r, d = self.reannotate(todo, model)
                reann, disc = reann + r, disc + d
            if cfg.defenses:
                self.review_flagged()
            if triggered or reann:
                model = self.train()
                s_acc = self.secured_accuracy(model)
            self.record(model, it, s_acc, bool(triggered), reann, disc, min_pert)
            if self._target_reached() is not None:
                stop = "target"
            elif cfg.tau is not None and np.isfinite(min_pert) and min_pert > cfg.tau:
                stop = "tau"
        final = self.history[-1]
        labeled = np.flatnonzero(self.labeled_mask())
        return RunResult(
            strategy=cfg.strategy, seed=self.seed, history=self.history,
            target_accuracy=cfg.target_accuracy, labels_to_target=self._target_reached(),
            stop_reason=stop, trust={i: {"trust": t.trust, "status": t.status.value,
                                         "labels_given": t.labels_given, "disagreements": t.disagreements,
                                         "alerts": t.alerts} for i, t in self.trust.items()},
            malicious=[lab.ident for lab in self.labelers.labelers if lab.malicious],
            final_accuracy=final.test_accuracy,
            label_accuracy=float((self.labels[labeled] == self.data.pool_labels[labeled]).mean()) if len(labeled) else float("nan"),
            watch_predictions=(model.predict(self.data.watch_features).tolist()
                               if self.data.watch_features is not None else None),
            defence_dropped=self.defence_dropped,
            quarantined=np.flatnonzero(self.quarantined).tolist(),
        )

    def _target_reached(self) -> int | None:
        if self.cfg.target_accuracy is None:
            return None
        for rec in self.history:
            if rec.test_accuracy >= self.cfg.target_accuracy - 1e-12:
                return rec.labels_bought
        return None


def run_loop(data: LoopData, config: LoopConfig, labelers: LabelerPool, seed: int) -> RunResult:
    """Run robust active learning once.

    Parameters
    ----------
    data : LoopData
        Pool/test features and labels (true labels feed only the simulated labelers and metrics).
    config : LoopConfig
    labelers : LabelerPool
        Simulated crowd.
    seed : int
        Seeds the initial set, the labelers' randomness, training and tie breaks.

    Returns
    -------
    RunResult
    """
    return _Run(data, config, labelers, seed).run()


def full_pool_accuracy(data: LoopData, head: HeadConfig | None = None, seed: int = 0) -> float:
    """Test accuracy of the same head trained on the whole pool with its true labels (the target)."""
    model = train_head(data.pool_features, data.pool_labels, data.n_classes,
                       standardizer=fit_standardizer(data.pool_features), config=head, seed=seed)
    return accuracy(model, data.test_features, data.test_labels)


__all__ = ["LoopConfig", "LoopData", "RunResult", "IterationRecord", "run_loop", "full_pool_accuracy",
           "RobustMinimax"]
