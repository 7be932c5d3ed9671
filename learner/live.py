"""Glue for the web app's *live* loop: pure functions on arrays, no ORM.

The web app (``labeling/services.py``) turns its database rows into arrays (features of the
project's items, the resolved label of each item, the weight of each label, the secured set) and
calls these functions to train the head, run the secured-set check and the audit, craft
augmentations, choose the next batch and spread work over labelers. Everything here is
deterministic given its ``seed`` so a redelivered Celery task computes the same answer.

Persisted artefacts (heads and artificial rows) are small ``.npz`` files written atomically.
"""
from __future__ import annotations

import dataclasses
import hashlib
import math
import os
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

ATTACKS = ("cw", "deepfool", "noise")
STRATEGY_NAMES = ("random", "margin", "entropy", "coreset", "robust")
# Same names as learner.backbones.BACKBONE_NAMES, repeated so that validating a config (web
# requests, admin forms) does not import torch.
BACKBONE_NAMES = ("flatten", "smallcnn", "resnet20", "resnet50")
# settings of earlier versions, ignored when a stored project config is read (trust thresholds
# replaced by the refuted-label test: flag_alpha, suspend_alpha)
RETIRED_SETTINGS = ("flag_below", "suspend_below")
AGGREGATIONS = ("majority", "dawid_skene")  # learner.aggregation
AUGMENT_SPACES = ("feature", "pixel")  # learner.augment
TRAINING_MODES = ("head", "finetune")  # learner.finetune
FINETUNE_BACKBONES = ("smallcnn", "resnet20", "resnet50")  # = learner.finetune.FINETUNE_BACKBONES


# --------------------------------------------------------------------------------------
# Configuration of a live project
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LiveConfig:
    """Active-learning settings of one web project (stored as JSON on the project).

    ``defenses`` / ``augment`` left as None follow the simulator's rule: on for ``robust``,
    off otherwise. ``h`` is the number of independent re-annotators (capped by the number of
    other eligible labelers at the time). ``target`` is compared with the *secured-set*
    accuracy (the live app has no test labels).
    """

    strategy: str = "robust"
    batch_size: int = 20
    initial_size: int = 20
    secured_size: int = 50
    epsilon: float = 0.05
    h: int = 3
    budget: int | None = None
    target: float | None = None
    tau: float | None = None
    defenses: bool | None = None
    audit_confidence: float | None = 0.5
    # a labeler whose >= audit_proven_after checked labels mostly held is audited only at this
    # confidence (learner.trust.audit_threshold); null: every labeler at audit_confidence
    audit_confidence_proven: float | None = 0.9
    audit_proven_after: int = 10
    # re-examine every label still standing on one labeler's word with each new model, not only
    # the new batch's (learner.engine._recheck; ours, measured in docs/method.md)
    recheck: bool = True
    # people label the next batch, chosen by the model of the step before, while the model of this
    # one trains (nobody waits for the model; learner.engine, EngineState.pending). Both drivers run
    # it: learner.loop and the web app (labeling.loop_step: two open batches)
    pipeline: bool = False
    # each new batch holds max(batch_size, batch_per_annotator * active annotators) items, budget
    # permitting; the drivers count who is working (EngineState.active_labelers: the web app, members
    # who answered or held a claim within the last lease; learner.loop, its eligible labelers). null: off
    batch_per_annotator: int | None = None
    # audit a contradicted label when it is more than this likely to be wrong given its labeler's
    # record (learner.engine.posterior_threshold; replaces audit_confidence(_proven)); null: off
    audit_posterior: float | None = None
    # "adaptive": a re-annotation round asks one labeler first and the other h - 1 only when that
    # one disagrees with the label under review; "parallel": h at once (learner.trust.resolve_votes)
    reannotation: str = "adaptive"
    # a round whose votes split with the label under review among them asks up to this many more
    # voters and keeps the class at least h votes and a majority gave (learner.trust.resolve_votes;
    # ours, measured in docs/method.md); 0: the paper's rule, the item is discarded
    escalate_votes: int = 2
    augment: tuple[str, ...] | None = None
    augment_weight: float = 0.1
    noise_variance: float = 0.3
    overshoot: float = 0.02
    # where C&W / DeepFool / noise copies are made: "feature" (closed form on the frozen features:
    # exact for the linear head, instant) or "pixel" (on the images through backbone + head,
    # learner.augment.pixel_crafter, as simulate --augment-space pixel; slow on a CPU worker)
    augment_space: str = "feature"
    n_clusters: int = 10
    candidate_factor: float = 3.0
    # robust's pick inside a cluster (learner.strategies.RobustMinimax): "farthest" or "margin",
    # and the weight of a cluster's size next to its fragility when sharing out the batch
    robust_pick: str = "farthest"
    robust_size_weight: float = 1.0
    robust_fragile_top: bool = False  # N_c from the pool's most fragile items (learner.strategies)
    # "density": never query items of an abnormally dense feature-space cluster (feature-collision
    # poisons; learner.defences.dense_cluster_mask); "none": query from the whole pool
    pool_defence: str = "none"
    backbone: str = "flatten"
    weights: str | None = None
    # "head": frozen backbone, the linear head learns; "finetune": the backbone's last stage learns
    # too, on the labeled items with their trust weights, once per iteration, and the pool's
    # features are re-extracted through it (learner.finetune; slow on a CPU worker)
    training_mode: str = "head"
    feature_size: int = 32
    channels: int = 3
    feature_chunk_size: int = 2000
    seed: int = 0
    # trust rules (learner.trust.TrustPolicy; see docs/method.md "Trust"): trust is each label's
    # weight; flags and suspensions come from the refuted-label test and Dawid-Skene
    trust_penalty: float = 0.1
    trust_reward: float = 0.01
    alert_confidence: float = 0.9
    flag_alpha: float = 0.03
    suspend_alpha: float = 1e-4
    audit_alpha: float = 0.01
    trust_window: int = 20
    # count each labeler's votes on the secured set S against the other voters' common answer in
    # the refuted-label test (learner.engine.EngineState.secured_history; ours, no extra labels)
    secured_evidence: bool = True
    # gold questions (ours): items of S whose label the admin gave, this many per labeler, spread
    # among the first batch's first labels (learner.engine.start; the live queue hands each to
    # whoever reaches it); a wrong answer is evidence in the refuted-label test
    # from the first step on. Each is a label bought; off by default (no gain beyond the runs'
    # spread in the trust benchmark, docs/method.md)
    gold_per_labeler: int = 0
    # probation (ours): every first label of a labeler is re-annotated whatever the model says until
    # this many of theirs were confirmed by others (learner.engine.on_probation); adaptive rounds
    # make a confirmed one cost one label. 0: off (measured in docs/method.md)
    probation_labels: int = 4
    # a second opinion on every label (ours, off by default; with the defence package on, as
    # probation): every first label is re-annotated whatever the model says (one other labeler
    # confirms it; adaptive rounds ask h more only when they disagree). At most about one label per
    # label; +12 to +33 % labels to the target on CIFAR-2 (docs/method.md)
    verify_labels: bool = False
    p1: float = 0.9391  # an honest labeler's accuracy P_1 (the refuted-label test's null hypothesis)
    # Dawid-Skene check (learner.confusion): flag a labeler whose confusion[a, b] >= min_rate over
    # >= min_count expected labels; null min_rate turns the check off
    confusion_min_rate: float | None = 0.5
    confusion_min_count: int = 3
    # the practitioners' alternative to the defence package (learner.aggregation): every queried
    # item labeled by ``redundancy`` distinct labelers at once and their answers aggregated by
    # "majority" (Label Studio's overlap) or "dawid_skene" (crowd-kit, over every answer so far).
    # 1: one label per item. Needs the defence package off.
    redundancy: int = 1
    aggregation: str = "majority"
    # train with each label weighted by its labeler's trust (false: every label weight 1; ablation)
    trust_weights: bool = True
    # how much a refuted label costs its labeler's trust (learner.trust.trust_decrease): "ours"
    # (1 - the model's probability of the refuted label) or "paper" (inverse to its confidence)
    trust_decrease: str = "ours"

    # -- parsing ---------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: dict | None) -> "LiveConfig":
        """Validate a JSON config; unknown keys and out-of-range values raise ValueError."""
        data = {k: v for k, v in dict(data or {}).items() if k not in RETIRED_SETTINGS}
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"unknown setting(s) {unknown}; known: {sorted(names)}")
        if "augment" in data and data["augment"] is not None:
            aug = data["augment"]
            if isinstance(aug, str):
                aug = [a for a in aug.split(",") if a.strip()] if aug not in ("", "none") else []
            data["augment"] = tuple(str(a).strip() for a in aug)
        try:
            cfg = cls(**data)
        except TypeError as exc:  # pragma: no cover - guarded by the key check above
            raise ValueError(str(exc)) from None
        cfg.validate()
        return cfg

    def validate(self) -> None:
        def _int(name, lo, hi=None, none_ok=False):
            v = getattr(self, name)
            if v is None and none_ok:
                return
            if isinstance(v, bool) or not isinstance(v, int) or v < lo or (hi is not None and v > hi):
                rng = f">= {lo}" if hi is None else f"in {lo}..{hi}"
                raise ValueError(f"{name} must be an integer {rng}, got {v!r}")

        def _float(name, lo, hi, none_ok=False):
            v = getattr(self, name)
            if v is None and none_ok:
                return
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not (lo <= float(v) <= hi):
                raise ValueError(f"{name} must be a number in [{lo}, {hi}], got {v!r}")

        if self.strategy not in STRATEGY_NAMES:
            raise ValueError(f"strategy must be one of {STRATEGY_NAMES}, got {self.strategy!r}")
        _int("batch_size", 1, 100_000)
        _int("initial_size", 1, 100_000)
        _int("batch_per_annotator", 1, 100_000, none_ok=True)
        _int("secured_size", 0, 100_000)
        _float("epsilon", 0.0, 1.0)
        _int("h", 1, 50)
        _int("budget", 1, None, none_ok=True)
        _float("target", 0.0, 1.0, none_ok=True)
        _float("tau", 0.0, 1e9, none_ok=True)
        _float("audit_confidence", 0.0, 1.0, none_ok=True)
        _float("audit_confidence_proven", 0.0, 1.0, none_ok=True)
        _int("audit_proven_after", 0, 1_000_000)
        _float("augment_weight", 0.0, 100.0)
        _float("noise_variance", 0.0, 100.0)
        _float("overshoot", 0.0, 10.0)
        _int("n_clusters", 1, 1000)
        _float("candidate_factor", 1.0, 1000.0)
        _int("feature_size", 4, 1024)
        _int("feature_chunk_size", 1, 10_000_000)
        _int("seed", 0, 2**32 - 1)
        _float("trust_penalty", 0.0, 1.0)
        _float("trust_reward", 0.0, 1.0)
        _float("alert_confidence", 0.0, 1.0)
        _float("flag_alpha", 0.0, 1.0)
        _float("suspend_alpha", 0.0, 1.0)
        _float("audit_alpha", 0.0, 1.0)
        if self.suspend_alpha > self.flag_alpha:
            raise ValueError(f"suspend_alpha ({self.suspend_alpha}) must not exceed flag_alpha ({self.flag_alpha})")
        _int("trust_window", 1, 1_000_000)
        _float("p1", 0.5, 0.999999)
        if self.augment_space not in AUGMENT_SPACES:
            raise ValueError(f"augment_space must be one of {AUGMENT_SPACES}, got {self.augment_space!r}")
        if self.reannotation not in ("adaptive", "parallel"):
            raise ValueError(f"reannotation must be 'adaptive' or 'parallel', got {self.reannotation!r}")
        _float("confusion_min_rate", 0.0, 1.0, none_ok=True)
        _int("confusion_min_count", 1, 1_000_000)
        _int("redundancy", 1, 15)
        if self.aggregation not in AGGREGATIONS:
            raise ValueError(f"aggregation must be one of {AGGREGATIONS}, got {self.aggregation!r}")
        if self.redundancy > 1 and self.defenses_on:
            raise ValueError("redundancy > 1 is the alternative to the defence package (secured set, audits, "
                             "trust): set defenses to false or redundancy to 1")
        if self.trust_decrease not in ("ours", "paper"):
            raise ValueError(f"trust_decrease must be 'ours' or 'paper', got {self.trust_decrease!r}")
        _float("audit_posterior", 0.0, 1.0, none_ok=True)
        if self.robust_pick not in ("farthest", "margin"):
            raise ValueError(f"robust_pick must be 'farthest' or 'margin', got {self.robust_pick!r}")
        _float("robust_size_weight", 0.0, 100.0)
        if not isinstance(self.robust_fragile_top, bool):
            raise ValueError("robust_fragile_top must be true or false")
        if not isinstance(self.pipeline, bool):
            raise ValueError("pipeline must be true or false")
        _int("gold_per_labeler", 0, 1000)
        _int("probation_labels", 0, 1000)
        _int("escalate_votes", 0, 20)
        if not isinstance(self.secured_evidence, bool):
            raise ValueError("secured_evidence must be true or false")
        if not isinstance(self.recheck, bool):
            raise ValueError("recheck must be true or false")
        if not isinstance(self.verify_labels, bool):
            raise ValueError("verify_labels must be true or false")
        if not isinstance(self.trust_weights, bool):
            raise ValueError("trust_weights must be true or false")
        if self.channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {self.channels!r}")
        if self.defenses is not None and not isinstance(self.defenses, bool):
            raise ValueError("defenses must be true, false or null")
        if self.augment is not None:
            bad = sorted(set(self.augment) - set(ATTACKS))
            if bad:
                raise ValueError(f"unknown augmentation(s) {bad}; choose from {list(ATTACKS)}")
        from .defences import POOL_DEFENCES

        if self.pool_defence not in ("none", *POOL_DEFENCES):
            raise ValueError(f"pool_defence must be one of {['none', *POOL_DEFENCES]}, got {self.pool_defence!r}")
        if self.backbone not in BACKBONE_NAMES:
            raise ValueError(f"backbone must be one of {BACKBONE_NAMES}, got {self.backbone!r}")
        if self.training_mode not in TRAINING_MODES:
            raise ValueError(f"training_mode must be one of {TRAINING_MODES}, got {self.training_mode!r}")
        if self.training_mode == "finetune" and self.backbone not in FINETUNE_BACKBONES:
            raise ValueError(f"training_mode 'finetune' needs a backbone with a trainable last stage "
                             f"({', '.join(FINETUNE_BACKBONES)}); {self.backbone!r} has none")

    def to_dict(self) -> dict:
        out = dataclasses.asdict(self)
        if out["augment"] is not None:
            out["augment"] = list(out["augment"])
        return out

    # -- resolved switches -----------------------------------------------------------------
    @property
    def defenses_on(self) -> bool:
        return self.strategy == "robust" if self.defenses is None else bool(self.defenses)

    @property
    def augmentations(self) -> tuple[str, ...]:
        if self.augment is None:
            return ATTACKS if self.strategy == "robust" else ()
        return tuple(self.augment)


@dataclass(frozen=True)
class _CraftSettings:
    """The attributes :func:`learner.augment.craft_feature_space` reads."""

    augment: tuple[str, ...]
    overshoot: float
    noise_variance: float


# --------------------------------------------------------------------------------------
# Seeds
# --------------------------------------------------------------------------------------


def rng_for(seed: int, *parts: int) -> np.random.Generator:
    """A generator seeded by the project seed plus e.g. (iteration, phase): reproducible."""
    return np.random.default_rng([int(seed), *[int(p) for p in parts]])


# --------------------------------------------------------------------------------------
# Training and evaluation
# --------------------------------------------------------------------------------------


def train_model(features: np.ndarray, labels: np.ndarray, weights: np.ndarray, n_classes: int, *,
                artificial: dict[int, np.ndarray] | None = None, augment_weight: float = 0.1,
                standardizer=None, seed: int = 0, head=None):
    """Train the head on labeled items (``labels >= 0``) plus artificial rows of labeled items.

    Parameters
    ----------
    features : (N, D) pool features
    labels : (N,) resolved label per item, -1 for unlabeled or discarded
    weights : (N,) weight per label (labeler trust; 0 excludes)
    artificial : {item index: (k, D) rows} crafted from that item; they take its label and
        ``augment_weight`` times its weight
    """
    from .heads import fit_standardizer, train_head

    labels = np.asarray(labels, dtype=np.int64)
    items = np.flatnonzero(labels >= 0)
    feats = [np.asarray(features[items], dtype=np.float32)]
    ys = [labels[items]]
    ws = [np.asarray(weights, dtype=np.float64)[items]]
    for item, rows in sorted((artificial or {}).items()):
        if 0 <= item < len(labels) and labels[item] >= 0 and len(rows):
            feats.append(np.asarray(rows, dtype=np.float32))
            ys.append(np.full(len(rows), labels[item], dtype=np.int64))
            ws.append(np.full(len(rows), augment_weight * float(weights[item])))
    std = standardizer if standardizer is not None else fit_standardizer(np.asarray(features, dtype=np.float32))
    x = np.concatenate(feats)
    with _few_threads(x.size):
        return train_head(x, np.concatenate(ys), n_classes, sample_weight=np.concatenate(ws),
                          standardizer=std, seed=seed, config=head)


@contextmanager
def _few_threads(n_values: int, small: int = 4_000_000):
    """One torch thread for small heads: on a busy machine thread start-up and contention cost
    more than the arithmetic (a 300 x 64 head trains 10-30x faster single-threaded)."""
    import torch

    if n_values >= small:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def accuracy_on(model, features: np.ndarray, labels: np.ndarray, mask: np.ndarray) -> float | None:
    """Accuracy of ``model`` on the items of ``mask`` (None when the mask is empty)."""
    idx = np.flatnonzero(mask)
    if model is None or len(idx) == 0:
        return None
    return float((model.predict(features[idx]) == np.asarray(labels)[idx]).mean())


def performance_dropped(acc_new: float | None, acc_previous: float | None, epsilon: float) -> bool:
    """The paper's check via :func:`learner.trust.performance_dropped` (None means unknown)."""
    from .trust import performance_dropped as dropped

    if acc_new is None or acc_previous is None:
        return False
    return dropped(float(acc_new), float(acc_previous), epsilon)


def audit(model, features: np.ndarray, items: np.ndarray, labels: np.ndarray,
          confidence: float | None, contradiction_confidence: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(confirmed, suspicious) items: labels the model agrees with at >= ``confidence``, and
    labels it contradicts at >= ``contradiction_confidence`` (per item; default ``confidence``)."""
    items = np.asarray(items, dtype=np.int64)
    if model is None or confidence is None or len(items) == 0:
        return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64)
    proba = model.predict_proba(features[items])
    top = proba.max(axis=1)
    agrees = proba.argmax(axis=1) == np.asarray(labels)[items]
    contra = confidence if contradiction_confidence is None else np.asarray(contradiction_confidence, dtype=float)
    return items[(top >= confidence) & agrees], items[(top >= contra) & ~agrees]


def class_probabilities(model, features: np.ndarray, items: Sequence[int]) -> dict[int, np.ndarray]:
    """``{item: probabilities}`` (empty without a model)."""
    if model is None or not len(items):
        return {}
    idx = np.asarray(list(items), dtype=np.int64)
    proba = model.predict_proba(features[idx])
    return {int(i): p for i, p in zip(idx, proba)}


def craft(features: np.ndarray, standardizer, model, items: np.ndarray, labels: np.ndarray,
          cfg: LiveConfig, seed: int) -> tuple[dict[int, np.ndarray], dict[int, float]]:
    """Feature-space adversarial + noise copies of ``items`` (see :mod:`learner.augment`).

    Returns ``({item: rows}, {item: minimal L2 perturbation})``; empty without a model or with
    augmentation off.
    """
    from .augment import craft_feature_space

    items = np.asarray(items, dtype=np.int64)
    if model is None or not cfg.augmentations or len(items) == 0:
        return {}, {}
    settings = _CraftSettings(cfg.augmentations, cfg.overshoot, cfg.noise_variance)
    rows, l2 = craft_feature_space(features, standardizer, model, items, np.asarray(labels)[items],
                                   settings, np.random.default_rng(seed))
    crafted = {int(i): np.asarray(r, dtype=np.float32) for i, r in zip(items, rows) if len(r)}
    return crafted, {int(i): float(v) for i, v in zip(items, l2)}


def min_perturbation(perturbations: dict[int, float]) -> float | None:
    """The smallest minimal perturbation over the batch's adversarial examples (the tau rule's
    measure). An item the model already gets wrong (stored as 0) has no adversarial example and
    does not count, nor does an attack that found none (inf): counting misclassified items as 0,
    as an earlier version did, kept the rule from ever firing."""
    crafted = [v for v in perturbations.values() if math.isfinite(v) and v > 0]
    return min(crafted) if crafted else None


# --------------------------------------------------------------------------------------
# Querying
# --------------------------------------------------------------------------------------

_STRATEGY_CACHE: dict[tuple, object] = {}


def select_batch(cfg: LiveConfig, features: np.ndarray, blocked: np.ndarray, labels: np.ndarray,
                 model, k: int, *, perturbations: dict[int, float] | None = None,
                 seed: int = 0, cache_key: str | None = None) -> np.ndarray:
    """Indices of the next ``k`` items to label with the configured strategy.

    ``blocked`` marks items that may not be chosen (labeled, secured, discarded); ``labels`` are
    the resolved labels (-1 unknown). ``cache_key`` (e.g. the features file) lets repeated calls
    in one worker process reuse the robust strategy's k-means clustering.
    """
    from .strategies import QueryContext, make_strategy

    if k <= 0:
        return np.empty(0, dtype=np.int64)
    kwargs = {}
    if cfg.strategy == "robust":
        kwargs = {"n_clusters": cfg.n_clusters, "candidate_factor": cfg.candidate_factor, "seed": cfg.seed,
                  "pick": cfg.robust_pick, "size_weight": cfg.robust_size_weight,
                  "fragile_top": cfg.robust_fragile_top}
    key = (cache_key, cfg.strategy, tuple(sorted(kwargs.items())))
    strategy = _STRATEGY_CACHE.get(key) if cache_key else None
    if strategy is None:
        strategy = make_strategy(cfg.strategy, **kwargs)
        if cache_key:
            _STRATEGY_CACHE.clear()  # one project at a time is enough; keeps memory bounded
            _STRATEGY_CACHE[key] = strategy
    if hasattr(strategy, "labels_of_labeled"):
        strategy.labels_of_labeled = np.asarray(labels, dtype=np.int64)
    blocked = np.asarray(blocked, dtype=bool)
    if cfg.pool_defence != "none":
        blocked = blocked | quarantined_items(cfg, features, cache_key=cache_key)
    context = QueryContext(item_perturbations=dict(perturbations or {}))
    rng = np.random.default_rng(seed)
    chosen = strategy.query(features, blocked, model, k, rng=rng, context=context)
    return np.asarray(chosen, dtype=np.int64)


_QUARANTINE_CACHE: dict = {}


def quarantined_items(cfg: LiveConfig, features: np.ndarray, *, cache_key: str | None = None) -> np.ndarray:
    """Mask of the pool items the project's pool defence keeps from labelers (all False for "none").

    Computed on standardised features; cached per ``cache_key`` (the features file) because the
    pool's features do not change between batches.
    """
    from .defences import quarantine
    from .heads import fit_standardizer

    if cfg.pool_defence == "none":
        return np.zeros(len(features), dtype=bool)
    key = (cache_key, cfg.pool_defence, len(features))
    if cache_key and key in _QUARANTINE_CACHE:
        return _QUARANTINE_CACHE[key]
    mean, scale = fit_standardizer(features)
    mask = quarantine(cfg.pool_defence, (np.asarray(features, dtype=np.float64) - mean) / scale)
    if cache_key:
        _QUARANTINE_CACHE.clear()
        _QUARANTINE_CACHE[key] = mask
    return mask


def random_items(candidates: np.ndarray, k: int, seed: int) -> np.ndarray:
    """``k`` distinct items drawn from ``candidates`` (sorted for stable storage order)."""
    candidates = np.asarray(candidates, dtype=np.int64)
    k = min(int(k), len(candidates))
    if k <= 0:
        return np.empty(0, dtype=np.int64)
    return np.sort(np.random.default_rng(seed).choice(candidates, size=k, replace=False))


# --------------------------------------------------------------------------------------
# Spreading work over labelers
# --------------------------------------------------------------------------------------


def spread(n_items: int, labelers: Sequence[int], load: dict[int, int] | None = None,
           seed: int = 0) -> list[int | None]:
    """One labeler per item, balancing the open work (``load``); None when nobody is eligible."""
    if not labelers:
        return [None] * n_items
    load = {int(u): int((load or {}).get(u, 0)) for u in labelers}
    rng = np.random.default_rng(seed)
    tie = {u: float(r) for u, r in zip(labelers, rng.random(len(labelers)))}
    out: list[int | None] = []
    for _ in range(n_items):
        who = min(load, key=lambda u: (load[u], tie[u]))
        out.append(who)
        load[who] += 1
    return out


def choose_distinct(h: int, candidates: Sequence[int], exclude: Iterable[int] = (),
                    load: dict[int, int] | None = None, seed: int = 0) -> list[int]:
    """Up to ``h`` distinct labelers from ``candidates`` minus ``exclude``, least loaded first."""
    excluded = {int(e) for e in exclude}
    pool = [int(c) for c in candidates if int(c) not in excluded]
    rng = np.random.default_rng(seed)
    tie = {u: float(r) for u, r in zip(pool, rng.random(len(pool)))}
    load = load or {}
    pool.sort(key=lambda u: (load.get(u, 0), tie[u]))
    return pool[: max(int(h), 0)]


# --------------------------------------------------------------------------------------
# Persisted artefacts: heads, artificial rows, feature chunks
# --------------------------------------------------------------------------------------


def _atomic_write(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
        os.replace(tmp, path)  # readers never see half a file
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_model(path: Path, model) -> None:
    """Store a :class:`learner.heads.LinearHead` (standardiser + linear layer)."""
    lin = model.module.linear
    arrays = {
        "mean": model.mean, "scale": model.scale,
        "weight": lin.weight.detach().cpu().numpy(), "bias": lin.bias.detach().cpu().numpy(),
        "n_classes": np.array(model.n_classes),
    }
    _atomic_write(Path(path), lambda fh: np.savez(fh, **arrays))


def save_state_dict(path: Path, state: dict) -> None:
    """Store a torch state_dict (e.g. a fine-tuned stage, :mod:`learner.finetune`) atomically."""
    import torch

    _atomic_write(Path(path), lambda fh: torch.save(state, fh))


def load_model(path: Path):
    """The head saved by :func:`save_model`, or None when the file is missing."""
    import torch

    from .heads import LinearHead, LinearHeadModule

    path = Path(path)
    if not path.is_file():
        return None
    with np.load(path) as z:
        weight, bias = z["weight"], z["bias"]
        module = LinearHeadModule(weight.shape[1], int(z["n_classes"]))
        with torch.no_grad():
            module.linear.weight.copy_(torch.from_numpy(weight))
            module.linear.bias.copy_(torch.from_numpy(bias))
        return LinearHead(z["mean"], z["scale"], module)


def save_artificial(path: Path, rows: dict[int, np.ndarray]) -> None:
    items = np.array(sorted(rows), dtype=np.int64)
    counts = np.array([len(rows[int(i)]) for i in items], dtype=np.int64)
    data = (np.concatenate([rows[int(i)] for i in items]).astype(np.float32)
            if len(items) else np.zeros((0, 0), np.float32))
    _atomic_write(Path(path), lambda fh: np.savez(fh, items=items, counts=counts, rows=data))


def load_artificial(paths: Iterable[Path]) -> dict[int, np.ndarray]:
    """Merge artificial rows of several iterations (later files win for the same item)."""
    out: dict[int, np.ndarray] = {}
    for p in paths:
        p = Path(p)
        if not p.is_file():
            continue
        with np.load(p) as z:
            start = 0
            for item, count in zip(z["items"], z["counts"]):
                out[int(item)] = z["rows"][start:start + count]
                start += int(count)
    return out


def plan_chunks(n: int, chunk_size: int) -> list[tuple[int, int]]:
    """``[(start, stop), ...]`` covering ``range(n)`` in chunks of at most ``chunk_size``."""
    chunk_size = max(int(chunk_size), 1)
    return [(s, min(s + chunk_size, n)) for s in range(0, n, chunk_size)]


def features_key(cfg: LiveConfig, item_names: Sequence[str]) -> str:
    """Cache key of a project's features: backbone, weights (content hash), input size, seed
    and the ordered item list (see :func:`learner.backbones.feature_cache_key`)."""
    from .backbones import feature_cache_key

    items = hashlib.sha256("\x1f".join(item_names).encode()).hexdigest()[:32]
    return feature_cache_key(items, cfg.backbone, cfg.weights, "live",
                             extra=f"{cfg.feature_size}-{cfg.channels}-{cfg.seed}")


def assemble_chunks(paths: Sequence[Path]) -> np.ndarray:
    parts = [np.load(p) for p in paths]
    return np.concatenate(parts).astype(np.float32, copy=False) if parts else np.zeros((0, 0), np.float32)


def save_array(path: Path, array: np.ndarray) -> None:
    _atomic_write(Path(path), lambda fh: np.save(fh, np.asarray(array, dtype=np.float32)))


def project_backbone(cfg: LiveConfig):
    """The project's frozen backbone (on the CPU): the same module for its features and for
    pixel-space crafting, also for random-init backbones (seeded by the project's seed)."""
    import torch

    from .backbones import build_backbone

    torch.manual_seed(cfg.seed)  # random-init backbones: same seed, same weights
    return build_backbone(cfg.backbone, in_channels=cfg.channels, weights=cfg.weights)


def extract(images_uint8: np.ndarray, cfg: LiveConfig) -> np.ndarray:
    """Features of uint8 NHWC images under the configured backbone, on the worker's device
    (:func:`learner.device.pick`; CPU and CUDA agree to float32 rounding)."""
    from .backbones import extract_features
    from .device import pick

    return extract_features(project_backbone(cfg), images_uint8, batch_size=256, device=pick())


__all__ = [
    "LiveConfig", "train_model", "accuracy_on", "save_state_dict", "performance_dropped", "audit", "craft",
    "select_batch", "quarantined_items", "random_items", "spread", "choose_distinct", "save_model", "load_model",
    "save_artificial", "load_artificial", "plan_chunks", "features_key", "assemble_chunks",
    "save_array", "extract", "project_backbone", "rng_for", "min_perturbation", "class_probabilities",
]
