"""The simulator's driver of the loop engine (:mod:`learner.engine`), with simulated labelers.

Everything works on arrays: the pool's features (frozen backbone, computed once), its true labels
(only the simulated labelers and the evaluation read them), the test set, and optionally the
pool's images plus the backbone for pixel-space crafting. One call of :func:`run_loop` is one
run; :mod:`learner.experiments` repeats it over strategies and seeds.

The loop itself (audit, augmentation, training, secured-set check, re-annotation, trust, the
stop rules and the next batch) is :func:`learner.engine.step`, the same function the web app's
Celery task runs. This driver only answers the engine's questions with
:class:`learner.oracles.LabelerPool` and measures: test accuracy after every iteration, and the
labels bought when it first reaches ``target_accuracy`` (the experiment's end; a live project has
no test set and stops on its secured set instead).
"""
from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field

import numpy as np

from . import engine, live
from .defences import POOL_DEFENCES
from .heads import HeadConfig, LinearHead, accuracy, fit_standardizer, train_head
from .oracles import LabelerPool
from .strategies import RobustMinimax
from .trust import LabelerTrust, Status, TrustPolicy

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
    secured_verification: str = "admin"  # "admin" (1 label each) or "consensus" (h each)
    audit_confidence: float | None = 0.5  # ours: re-annotate labels the model contradicts this surely
    audit_confidence_proven: float | None = 0.9  # ours: ... once the labeler's checked labels mostly held
    audit_proven_after: int = 10  # checked labels before a labeler can be proven
    recheck: bool = True  # ours: audit earlier standing labels the newer model contradicts
    secured_evidence: bool = True  # ours: S votes (consensus verification) count in the refuted-label test
    gold_per_labeler: int = 0  # ours: gold questions on S items the admin labeled (LiveConfig.gold_per_labeler)
    verify_labels: bool = False  # ours: re-annotate every first label (LiveConfig.verify_labels)
    probation_labels: int = 4  # ours: re-annotate a labeler's labels until this many were confirmed (LiveConfig.probation_labels)
    pipeline: bool = False  # people label the next batch (chosen by F_{i-1}) while F_i trains
    batch_per_annotator: int | None = None  # batches of max(batch_size, this x eligible labelers)
    audit_posterior: float | None = None  # ours: audit where a label is this likely wrong (engine.posterior_threshold)
    reannotation: str = "adaptive"  # ours: ask one re-annotator first, the others only on a disagreement
    escalate_votes: int = 2  # ours: a split round asks this many more voters (LiveConfig.escalate_votes)
    augment: tuple[str, ...] | None = None  # subset of ATTACKS (None: all for robust, none otherwise)
    augment_space: str = "feature"  # "feature" (exact, frozen backbone) or "pixel" (through it)
    augment_weight: float = 0.1  # ours: 0.25 left some runs just under the target (docs/method.md)
    attack_impl: str = "fast"  # pixel space: "fast" (batched torch) or "art" (reference)
    training_mode: str = "head"  # "head" (frozen backbone) or "finetune" (its last stage too; learner.finetune)
    overshoot: float = 0.02
    noise_variance: float = 0.3  # paper: variance 0.3 "on the model's input scale"
    n_clusters: int = 10
    candidate_factor: float = 3.0
    robust_pick: str = "farthest"  # the paper's eq. (4) among the candidates; "margin": fragile first (ours)
    robust_size_weight: float = 1.0
    robust_fragile_top: bool = False  # ours: N_c from the pool's most fragile items
    defence: str | None = None  # training-set filter before each head training (learner.defences)
    defence_k: int = 25  # neighbours consulted by the dknn defence (>~ 3x the poisons labeled together)
    confusion_min_rate: float | None = 0.5  # Dawid-Skene check (None: off)
    confusion_min_count: int = 3
    redundancy: int = 1  # labels per queried item (the practitioners' baselines; learner.aggregation)
    aggregation: str = "majority"  # "majority" or "dawid_skene" (crowd-kit)
    trust_weights: bool = True  # weight labels by their labeler's trust (ablation: false)
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
        if out.training_mode not in live.TRAINING_MODES:
            raise ValueError(f"training_mode must be one of {live.TRAINING_MODES}, got {out.training_mode!r}")
        if out.secured_verification not in ("admin", "consensus"):
            raise ValueError("secured_verification must be 'admin' or 'consensus'")
        out.engine_config(0)  # validates the rest
        return out

    def engine_config(self, seed: int) -> live.LiveConfig:
        """The engine's settings for a run with ``seed`` (the web app stores the same per project)."""
        t = self.trust
        return live.LiveConfig(
            strategy=self.strategy, batch_size=self.batch_size, initial_size=self.initial_size,
            secured_size=self.secured_size, epsilon=t.epsilon, h=t.h, budget=self.budget, target=None,
            tau=self.tau, defenses=self.defenses, audit_confidence=self.audit_confidence,
            audit_confidence_proven=self.audit_confidence_proven, audit_proven_after=self.audit_proven_after,
            recheck=self.recheck, secured_evidence=self.secured_evidence, gold_per_labeler=self.gold_per_labeler, probation_labels=self.probation_labels, verify_labels=self.verify_labels, augment_space=self.augment_space, training_mode=self.training_mode, pipeline=self.pipeline, batch_per_annotator=self.batch_per_annotator, audit_posterior=self.audit_posterior, reannotation=self.reannotation, escalate_votes=self.escalate_votes, augment=None if self.augment is None else tuple(self.augment),
            augment_weight=self.augment_weight, noise_variance=self.noise_variance, overshoot=self.overshoot,
            n_clusters=self.n_clusters, candidate_factor=self.candidate_factor, robust_pick=self.robust_pick,
            robust_size_weight=self.robust_size_weight, robust_fragile_top=self.robust_fragile_top,
            pool_defence=self.defence if self.defence in POOL_DEFENCES else "none", seed=int(seed),
            trust_penalty=t.penalty, trust_reward=t.reward, alert_confidence=t.alert_confidence,
            flag_alpha=t.flag_alpha, suspend_alpha=t.suspend_alpha, audit_alpha=t.audit_alpha, trust_window=t.window, p1=t.p_1,
            confusion_min_rate=self.confusion_min_rate, confusion_min_count=self.confusion_min_count,
            redundancy=self.redundancy, aggregation=self.aggregation, trust_weights=self.trust_weights,
            trust_decrease=t.decrease)


@dataclass
class LoopData:
    """Arrays a run needs. ``pool_images`` and ``backbone`` only for pixel-space crafting and
    ``finetune`` (which also needs ``test_images``: the test set's features follow the stage)."""

    pool_features: np.ndarray
    pool_labels: np.ndarray
    test_features: np.ndarray
    test_labels: np.ndarray
    n_classes: int
    pool_images: np.ndarray | None = None  # uint8 NHWC
    backbone: object | None = None  # torch module: images [0,1] NCHW -> features
    test_images: np.ndarray | None = None  # uint8 NHWC (finetune)
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
    bought_by_kind: dict[str, int] = field(default_factory=dict)  # first / secured / reannotation
    craft_failed: int = 0  # attacks that found no adversarial example (dropped; engine metric)


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
    # what the run would export when it stops: every item with a resolved label (S included)
    exported: int = 0
    exported_accuracy: float = float("nan")  # share of those labels that are right
    bought_by_kind: dict[str, int] = field(default_factory=dict)  # at the target (else at the end)
    # answers each adversary gave in attack before the run stopped (a sleeper that never turned: 0)
    adversary_attacks: dict[int, int] = field(default_factory=dict)

    @property
    def reached(self) -> bool:
        return self.labels_to_target is not None


class _Run:
    """One simulated run: the engine's state in memory, questions answered by the labelers."""

    def __init__(self, data: LoopData, config: LoopConfig, labelers: LabelerPool, seed: int):
        self.data, self.cfg, self.labelers, self.seed = data, config.resolved(), labelers, seed
        self.ecfg = self.cfg.engine_config(seed)
        n = len(data.pool_labels)
        self.test_features = data.test_features  # follow the stage under finetune
        self.tuner = self._fine_tuner() if self.cfg.training_mode == "finetune" else None
        self.pool = engine.Pool(features=data.pool_features, n_classes=data.n_classes,
                                standardizer=fit_standardizer(data.pool_features),
                                cache_key=f"sim:{id(data)}:{n}", head=self.cfg.head,
                                crafter=self._pixel_crafter() if self.cfg.augment_space == "pixel" else None,
                                refit=self._refit() if self.tuner is not None else None,
                                train_filter=self._train_filter() if self.cfg.defence not in (
                                    None, "none", *POOL_DEFENCES) else None)
        self.state = engine.EngineState(
            labels=np.full(n, -1, dtype=np.int64), labeler_of=np.full(n, -1, dtype=np.int64),
            discarded=np.zeros(n, dtype=bool), secured=np.zeros(n, dtype=bool),
            secured_labels=np.full(n, -1, dtype=np.int64),
            trust={i: LabelerTrust() for i in labelers.ids}, crowd=list(labelers.ids))
        self.times_answered: dict[tuple[int, int], int] = {}
        self.bought_by_kind = {"first": 0, "secured": 0, "reannotation": 0}
        self.redundant_given: Counter = Counter()  # labels a redundancy baseline's extra asks took
        self.attacks: Counter = Counter()  # adversary -> answers given in attack (Labeler.attacks)
        self.history: list[IterationRecord] = []

    # ---- hooks of the engine that only the simulator has ------------------------------------
    def _pixel_crafter(self):
        """The live app's pixel-space crafter (:func:`learner.augment.pixel_crafter`) on the pool's images."""
        from .augment import PixelSettings, pixel_crafter

        if self.data.pool_images is None or self.data.backbone is None:
            raise ValueError("pixel-space crafting needs the pool's images and the backbone")
        images = self.data.pool_images
        settings = PixelSettings(tuple(self.cfg.augment), self.cfg.noise_variance, self.cfg.attack_impl)
        if self.tuner is not None:  # finetune: through the current stage (a fresh copy per call)
            return lambda *args: pixel_crafter(lambda items: images[items], self.tuner.backbone(), settings)(*args)
        return pixel_crafter(lambda items: images[items], self.data.backbone, settings)

    def _fine_tuner(self):
        """finetune: the pool's and the test set's last-stage inputs, computed once per run."""
        from .finetune import FineTuner, stage_inputs

        d = self.data
        if d.pool_images is None or d.test_images is None or d.backbone is None:
            raise ValueError("training_mode 'finetune' needs the pool's and the test set's images and the backbone")
        if d.watch_features is not None:
            raise ValueError("training_mode 'finetune' does not follow watched features (the poison scenario)")
        tuner = FineTuner(d.backbone, stage_inputs(d.backbone, d.pool_images))
        self.test_inputs = stage_inputs(d.backbone, d.test_images)
        return tuner

    def _refit(self):
        from .finetune import refit_hook

        def follow(tuner, _features):  # the test set is measured through the same stage
            self.test_features = tuner.features(self.test_inputs)
        return refit_hook(self.tuner, self.data.n_classes, after=follow)

    def _train_filter(self):
        from .defences import apply_defence

        def keep(items, labels):
            mean, scale = self.pool.standardizer
            return apply_defence(self.cfg.defence, (self.pool.features[items] - mean) / scale, labels,
                                 k=self.cfg.defence_k, n_classes=self.data.n_classes)
        return keep

    # ---- answering -------------------------------------------------------------------------
    def ask(self, labeler: int, item: int, kind: str) -> int:
        """One answer, bought and recorded as the web app records an annotation."""
        st = self.state
        nth = self.times_answered.get((labeler, item), 0)
        self.times_answered[(labeler, item)] = nth + 1
        first = kind == "first"
        # a redundancy baseline's extra labels look like first labels to whoever gives them
        # (nothing tells them apart), unlike a re-annotation request
        given_before = len(st.first_labels.get(labeler, [])) + self.redundant_given[labeler]
        truth = int(self.data.pool_labels[item])
        label = self.labelers.answer(labeler, item, truth, seed=self.seed, nth=nth,
                                     first_label=first or kind == "redundant", given_before=given_before)
        if self.labelers.labelers[labeler].attacks(truth, first_label=first or kind == "redundant",
                                                   given_before=given_before):
            self.attacks[labeler] += 1
        if kind == "redundant":
            self.redundant_given[labeler] += 1
        st.bought += 1
        self.bought_by_kind["reannotation" if kind == "redundant" else kind] += 1
        st.trust[labeler].labels_given += 1
        st.answers.append((int(item), int(labeler), int(label)))
        if first:
            st.first_labels.setdefault(labeler, []).append((int(item), int(label)))
            if st.trust[labeler].status is not Status.SUSPENDED:
                st.labels[item], st.labeler_of[item] = label, labeler
        return label

    def label_batch(self, items, assignees) -> None:
        for item, who in zip(items, assignees):
            if who is not None:
                self.ask(int(who), int(item), "first")

    # ---- the loop --------------------------------------------------------------------------
    def record(self, plan: engine.Plan, iteration: int, in_flight: int = 0) -> None:
        """``in_flight``: first labels of the batch people label while this step runs (pipeline):
        bought by the time the model is ready, so they count (all of them, to be safe)."""
        st, m = self.state, plan.metric
        split = dict(self.bought_by_kind)
        split["first"] += in_flight
        self.history.append(IterationRecord(
            iteration=iteration, labels_bought=st.bought + in_flight, n_labeled=m["n_labeled"],
            n_artificial=m["n_artificial"], test_accuracy=self.evaluate(plan.model),
            secured_accuracy=float("nan") if m["secured_accuracy"] is None else m["secured_accuracy"],
            check_triggered=m["check_triggered"], reannotated=m["reannotated"], discarded=m["discarded"],
            min_perturbation=float("nan") if m["min_perturbation"] is None else m["min_perturbation"],
            flagged=[i for i, t in st.trust.items() if t.status is Status.FLAGGED],
            suspended=[i for i, t in st.trust.items() if t.status is Status.SUSPENDED],
            bought_by_kind=split, craft_failed=int(m.get("craft_failed", 0))))

    def step(self, previous) -> engine.Plan:
        """One engine step. The people working are the eligible labelers: the simulated ones answer
        everything they are asked (``LiveConfig.batch_per_annotator`` sizes the next batch by them)."""
        self.state.active_labelers = len(self.state.eligible())
        return engine.step(self.ecfg, self.pool, self.state, previous_model=previous)

    def evaluate(self, model: LinearHead) -> float:
        return accuracy(model, self.test_features, self.data.test_labels)

    def run(self) -> RunResult:
        st, n = self.state, len(self.data.pool_labels)
        known = np.full(n, self.cfg.secured_verification == "admin")
        quarantined = (live.quarantined_items(self.ecfg, self.data.pool_features, cache_key=self.pool.cache_key)
                       if self.ecfg.pool_defence != "none" else np.zeros(n, dtype=bool))
        sp = engine.start(self.ecfg, n, label_known=known, crowd=st.crowd, buy_secured=self.ecfg.defenses_on,
                          excluded=quarantined)
        st.secured[sp.secured] = True
        st.bought += sp.admin_labels
        self.bought_by_kind["secured"] += sp.admin_labels
        for item in sp.secured:
            if known[item]:
                st.secured_labels[item] = self.data.pool_labels[item]
        for item, voters in sp.secured_voters.items():
            label = engine.secured_label([self.ask(v, item, "secured") for v in voters])
            st.secured_labels[item] = -1 if label is None else label
        st.gold = st.secured & known
        self.label_batch(sp.initial, sp.assignees)
        for item, labeler in sp.gold:  # gold questions: answered as any secured-set vote, bought as one
            self.ask(labeler, item, "secured")
        st.batch = np.asarray(sp.initial, dtype=np.int64)
        pipeline = self.ecfg.pipeline
        st.pending, waiting = np.asarray(sp.following, dtype=np.int64), list(sp.following_assignees)
        previous, stop, model = None, "", None
        while True:
            iteration = st.iteration
            plan = self.step(previous)
            while not plan.closed:
                for req in plan.requests:
                    kind = "redundant" if self.ecfg.redundancy > 1 else "reannotation"
                    req.votes += [self.ask(v, req.item, kind) for v in req.new_voters]
                plan = self.step(previous)
            # pipeline: st.batch is now the batch people were labeling while this step ran
            self.record(plan, iteration, in_flight=len(st.batch) if pipeline else 0)
            model = previous = plan.model
            if self._target_reached() is not None:
                stop = "target"
            elif plan.stop:
                stop = plan.stop
            if stop:
                break
            if pipeline:
                self.label_batch(st.batch, waiting)
                waiting = list(plan.assignees)
            else:
                self.label_batch(plan.next_items, plan.assignees)
        labeled = np.flatnonzero(st.labeled)
        export = np.where(st.secured_labels >= 0, st.secured_labels, st.labels)
        exported = np.flatnonzero(export >= 0)
        reached = self._target_reached()
        split = next((r.bought_by_kind for r in self.history if r.labels_bought == reached), None) \
            if reached is not None else None
        return RunResult(
            strategy=self.cfg.strategy, seed=self.seed, history=self.history,
            target_accuracy=self.cfg.target_accuracy, labels_to_target=self._target_reached(),
            stop_reason=stop, trust={i: {"trust": t.trust, "status": t.status.value,
                                         "labels_given": t.labels_given, "disagreements": t.disagreements,
                                         "alerts": t.alerts} for i, t in st.trust.items()},
            malicious=[lab.ident for lab in self.labelers.labelers if lab.malicious],
            adversary_attacks={lab.ident: int(self.attacks[lab.ident]) for lab in self.labelers.labelers
                               if lab.malicious},
            final_accuracy=self.history[-1].test_accuracy,
            label_accuracy=float((st.labels[labeled] == self.data.pool_labels[labeled]).mean()) if len(labeled) else float("nan"),
            watch_predictions=(model.predict(self.data.watch_features).tolist()
                               if self.data.watch_features is not None else None),
            defence_dropped=st.filtered,
            quarantined=np.flatnonzero(quarantined).tolist(),
            exported=int(len(exported)),
            exported_accuracy=float((export[exported] == self.data.pool_labels[exported]).mean())
            if len(exported) else float("nan"),
            bought_by_kind=dict(split or self.bought_by_kind),
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
