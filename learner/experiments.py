"""Repeat the loop over strategies and seeds, summarise budgets, write tables and plots.

This is what ``manage.py simulate`` drives; it is plain Python so notebooks and benchmarks can
use it too.
"""
from __future__ import annotations

import csv
import json
import math
import os
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from .loop import LoopConfig, LoopData, RunResult, full_pool_accuracy, run_loop
from .oracles import LabelerPool

SCENARIOS = ("benign", "malicious", "collusion", "sleeper", "spammer", "poison")
# the crowd's adversaries per scenario: (how many of the labelers, kind; learner.oracles)
ADVERSARIES = {"malicious": (None, "malicious"), "collusion": (3, "malicious"), "sleeper": (2, "sleeper"),
               "spammer": (2, "spammer")}
# Digits' malicious mapping (1 -> 7, the most confusable pair of digits); every other class set
# maps its first class to its second (default_mapping: the paper's airplane -> frog on CIFAR-2).
DEFAULT_MAPPINGS = {"1": "7"}


@dataclass
class ExperimentSpec:
    """Everything one experiment needs (the paper's defaults where it has them)."""

    scenario: str = "benign"
    strategies: tuple[str, ...] = ("random", "margin", "robust")
    runs: int = 30
    seed: int = 0
    dataset: str = "digits"
    classes: tuple[str, ...] | None = None
    pool_size: int | None = None
    test_size: int | None = None
    backbone: str = "flatten"
    weights: str | None = None
    n_labelers: int = 11
    error_rate: float = 0.05  # pr
    n_malicious: int = 1  # used by the malicious scenario
    mapping: dict[str, str] | None = None  # class name -> class name (malicious scenario)
    target_accuracy: float | None = None  # None: full-pool accuracy of the same model
    loop: LoopConfig = field(default_factory=LoopConfig)
    jobs: int = 1
    # poison scenario: feature-collision sets (learner.poison); run r faces set r mod n
    poison_targets: int = 10  # successful sets wanted
    poison_bases: int = 50  # poisons per target (the paper's 50 base images)
    poison_watermarks: tuple[float, ...] = (0.1, 0.2, 0.3)
    poison_impl: str = "fast"  # "fast" (batched torch) or "art" (ART's FeatureCollisionAttack)
    poison_max_iter: int = 120
    poison_max_attempts: int | None = None
    poison_min_confidence: float = 0.0  # targets the clean full-pool head gets right at least this surely
    poison_control: bool = True  # also run every strategy on the clean pool, watching the same targets

    def __post_init__(self):
        if self.scenario not in SCENARIOS:
            raise ValueError(f"unknown scenario {self.scenario!r}; choose from {', '.join(SCENARIOS)}")
        if self.runs < 1:
            raise ValueError("runs must be at least 1")
        from .defences import DEFENCES

        for name in self.strategies:
            split_strategy(name)
        if self.loop.defence not in (None, *DEFENCES):
            raise ValueError(f"unknown defence {self.loop.defence!r}; choose from {', '.join(DEFENCES)}")
        if self.loop.defence_k < 1:
            raise ValueError("defence_k must be >= 1")
        if self.poison_impl not in ("fast", "art"):
            raise ValueError("poison_impl must be 'fast' or 'art'")
        if self.scenario == "poison" and self.backbone == "flatten":
            raise ValueError("the poison scenario needs a trainable backbone (smallcnn, resnet20, resnet50): "
                             "feature collision optimises through the backbone")
        if self.loop.training_mode == "finetune":
            from .live import FINETUNE_BACKBONES

            if self.backbone not in FINETUNE_BACKBONES:
                raise ValueError(f"training_mode 'finetune' needs a backbone with a trainable last stage "
                                 f"({', '.join(FINETUNE_BACKBONES)}); {self.backbone!r} has none")
            if self.scenario == "poison":
                raise ValueError("training_mode 'finetune' is not supported in the poison scenario")
        if any(not 0 <= w < 1 for w in self.poison_watermarks) or not self.poison_watermarks:
            raise ValueError("poison watermarks must be in [0, 1)")


@dataclass
class PreparedData:
    loop_data: LoopData
    classes: tuple[str, ...]
    dataset_name: str
    fingerprint: str
    seconds: float
    poison_sets: list = field(default_factory=list)  # learner.poison.PoisonSet, successful ones
    poison_attempts: list = field(default_factory=list)  # every target tried
    poison_seconds: float = 0.0


def prepare_data(spec: ExperimentSpec, progress: bool = False) -> PreparedData:
    """Load the data set and compute (or read cached) backbone features of pool and test."""
    from .backbones import build_backbone, extract_features, feature_cache_key
    from .data import load_dataset

    start = time.perf_counter()
    kw = {"seed": spec.seed}
    if spec.classes:
        kw["classes"] = tuple(spec.classes)
    if spec.pool_size is not None:
        kw["pool_size"] = spec.pool_size
    if spec.test_size is not None:
        kw["test_size"] = spec.test_size
    ds = load_dataset(spec.dataset, **kw)
    in_channels = ds.x_pool.shape[-1]
    import torch

    torch.manual_seed(spec.seed)  # random-init backbones: the seed is part of the cache key
    backbone = build_backbone(spec.backbone, in_channels=in_channels, weights=spec.weights)
    extra = "" if spec.weights or spec.backbone == "flatten" else f"seed{spec.seed}"
    feats = {}
    for split, images in (("pool", ds.x_pool), ("test", ds.x_test)):
        key = feature_cache_key(ds.fingerprint, spec.backbone, spec.weights, split, extra=extra)
        feats[split] = extract_features(backbone, images, cache_key=key, progress=progress)
    images_needed = spec.loop.augment_space == "pixel" or spec.loop.training_mode == "finetune"
    data = LoopData(
        pool_features=feats["pool"], pool_labels=ds.y_pool, test_features=feats["test"],
        test_labels=ds.y_test, n_classes=len(ds.classes),
        pool_images=ds.x_pool if images_needed else None,
        backbone=backbone if images_needed else None,
        test_images=ds.x_test if spec.loop.training_mode == "finetune" else None,
    )
    prepared = PreparedData(data, tuple(ds.classes), ds.name, ds.fingerprint, time.perf_counter() - start)
    if spec.scenario == "poison":
        _prepare_poisons(spec, prepared, ds, backbone, kw, progress)
    return prepared


def _outside_images(spec: ExperimentSpec, ds, kw: dict) -> tuple[np.ndarray, np.ndarray]:
    """Images of the source that are in neither the pool nor the test set (the poisons' bases:
    new items injected into the pool, as an attacker would upload them)."""
    from .data import load_dataset

    full = load_dataset(spec.dataset, **{k: v for k, v in kw.items() if k not in ("pool_size", "test_size")})
    x = np.concatenate([full.x_pool, full.x_test])
    y = np.concatenate([full.y_pool, full.y_test])
    used = {bytes(im) for im in np.concatenate([ds.x_pool, ds.x_test]).reshape(len(ds.x_pool) + len(ds.x_test), -1)}
    keep = np.array([bytes(im) not in used for im in x.reshape(len(x), -1)], dtype=bool)
    return x[keep], y[keep]


def _prepare_poisons(spec: ExperimentSpec, prepared: PreparedData, ds, backbone, kw: dict, progress: bool) -> None:
    from .poison import make_poison_sets

    start = time.perf_counter()
    bx, by = _outside_images(spec, ds, kw)
    d = prepared.loop_data
    sets, attempts = make_poison_sets(
        backbone, spec.weights, pool_features=d.pool_features, pool_labels=d.pool_labels,
        test_images=ds.x_test, test_features=d.test_features, test_labels=d.test_labels,
        base_images=bx, base_labels=by, n_classes=len(ds.classes), data_fingerprint=ds.fingerprint,
        n_targets=spec.poison_targets, n_bases=spec.poison_bases, watermarks=tuple(spec.poison_watermarks),
        max_attempts=spec.poison_max_attempts, impl=spec.poison_impl, max_iter=spec.poison_max_iter,
        seed=spec.seed, head=spec.loop.head, min_target_confidence=spec.poison_min_confidence, progress=progress,
    )
    if not sets:
        raise ValueError(f"no poison set succeeded against the full poisoned pool in {len(attempts)} attempts")
    prepared.poison_sets, prepared.poison_attempts = sets, attempts
    prepared.poison_seconds = time.perf_counter() - start


def poisoned_data(data: LoopData, ps) -> LoopData:
    """``data`` with the poisons of ``ps`` appended to the unlabeled pool (their true label is their
    base class: humans see the base image) and the target watched."""
    from dataclasses import replace

    images = None
    if data.pool_images is not None:
        images = np.concatenate([data.pool_images, ps.images])
    return replace(
        data, pool_features=np.concatenate([data.pool_features, ps.features]).astype(np.float32),
        pool_labels=np.concatenate([data.pool_labels, np.full(len(ps.features), ps.base_label)]),
        pool_images=images, watch_features=ps.target_features[None].astype(np.float32),
    )


def split_strategy(name: str, default_defence: str | None = None) -> tuple[str, str | None, bool | None]:
    """``"margin+defended"`` -> ``("margin", default_defence, True)``, ``"robust+dknn"`` ->
    ``("robust", "dknn", None)``: the base strategy, a defence, and the defence package (secured
    set, audits, re-annotation, trust) switched on (True) or left to the strategy's default (None).
    """
    from .defences import DEFENCES
    from .strategies import STRATEGIES

    base, *extras = name.split("+")
    if base not in STRATEGIES:
        raise ValueError(f"unknown strategy {base!r}; choose from {', '.join(STRATEGIES)}")
    defence, defended = default_defence, None
    for extra in extras:
        if extra == "defended":
            defended = True
        elif extra in DEFENCES:
            defence = extra
        elif extra not in VARIANTS:
            raise ValueError(f"unknown suffix {extra!r} in {name!r}; choose 'defended', a defence from "
                             f"{', '.join(DEFENCES)} or a variant from {', '.join(VARIANTS)}")
    return base, defence, defended


# Suffixes that change the run's settings (LoopConfig fields): the practitioners' redundancy
# baselines (k labels per item, aggregated by crowd-kit; learner.aggregation) and the defence
# package's parts switched off one by one (ablation).
VARIANTS = {
    "vote3": {"redundancy": 3, "aggregation": "majority", "defenses": False},
    "ds2": {"redundancy": 2, "aggregation": "dawid_skene", "defenses": False},
    "ds3": {"redundancy": 3, "aggregation": "dawid_skene", "defenses": False},
    "no-secured": {"secured_size": 0},
    "no-audits": {"audit_confidence": None},
    "no-augment": {"augment": ()},
    "augment": {"augment": ("cw", "deepfool", "noise")},  # robust's crafted copies for another strategy
    "no-trust": {"trust_weights": False},
    "no-confusion": {"confusion_min_rate": None},
    "paper-decrease": {"trust_decrease": "paper"},
    "recheck": {"recheck": True},
    "pipeline": {"pipeline": True},
    "no-recheck": {"recheck": False},
    "no-gold": {"secured_evidence": False, "gold_per_labeler": 0},
    "probation": {"probation_labels": 4},
    "no-probation": {"probation_labels": 0},
    "verify": {"verify_labels": True},
    "no-escalate": {"escalate_votes": 0},
    "pick-margin": {"robust_pick": "margin"},
    "pick-farthest": {"robust_pick": "farthest"},
    "size0": {"robust_size_weight": 0.0},
    "size1": {"robust_size_weight": 1.0},
    "top": {"robust_fragile_top": True},
    "post10": {"audit_posterior": 0.1},
    "post20": {"audit_posterior": 0.2},
    "post35": {"audit_posterior": 0.35},
}


def variant_overrides(name: str) -> dict:
    """The LoopConfig fields a strategy name's variant suffixes set (``"margin+vote3"`` ->
    redundancy 3 with majority vote, ``"robust+no-augment"`` -> no crafted copies)."""
    out: dict = {}
    for extra in name.split("+")[1:]:
        out.update(VARIANTS.get(extra, {}))
    return out


def default_mapping(classes: tuple[str, ...]) -> dict[str, str]:
    """The malicious labelers' class mapping when none is given: ``1 -> 7`` where both digits are
    among ``classes``, otherwise the first class -> the second (CIFAR-2's ``("airplane", "frog")``
    gives the paper's airplane -> frog; ``--classes deer,truck`` gives deer -> truck). Empty for
    fewer than two classes."""
    classes = tuple(classes)
    names = {k: v for k, v in DEFAULT_MAPPINGS.items() if k in classes and v in classes}
    if names:
        return names
    return {classes[0]: classes[1]} if len(classes) >= 2 else {}


def labeler_pool(spec: ExperimentSpec, classes: tuple[str, ...]) -> LabelerPool:
    """The simulated crowd of the scenario: honest labelers with error rate pr, plus the
    scenario's adversaries (:data:`ADVERSARIES`; ``n_malicious`` in the malicious scenario).
    benign and poison have honest labelers only (the paper's poisoning experiment, Table V: the
    attack is in the pool, not in the crowd)."""
    if spec.scenario in ("benign", "poison"):
        return LabelerPool.build(len(classes), n_labelers=spec.n_labelers, error_rate=spec.error_rate)
    count, kind = ADVERSARIES[spec.scenario]
    count = spec.n_malicious if count is None else count
    if kind == "spammer":
        return LabelerPool.build(len(classes), n_labelers=spec.n_labelers, error_rate=spec.error_rate,
                                 n_malicious=count, kind=kind)
    names = spec.mapping or default_mapping(classes)
    if not names:
        raise ValueError(f"no malicious mapping given and no default applies to classes {classes}")
    try:
        mapping = {classes.index(src): classes.index(dst) for src, dst in names.items()}
    except ValueError:
        raise ValueError(f"mapping {names} names classes not in {classes}") from None
    return LabelerPool.build(len(classes), n_labelers=spec.n_labelers, error_rate=spec.error_rate,
                             n_malicious=count, mapping=mapping, kind=kind)


def _one_run(data: LoopData, config: LoopConfig, labelers: LabelerPool, seed: int) -> RunResult:
    import torch

    torch.set_num_threads(1)  # runs are parallel across processes, not inside one
    return run_loop(data, config, labelers, seed)


@dataclass
class ExperimentResult:
    spec: ExperimentSpec
    classes: tuple[str, ...]
    target_accuracy: float
    budget_cap: int
    runs: dict[str, list[RunResult]]
    seconds: dict[str, float]
    data_seconds: float
    poison: dict | None = None  # poison scenario: sets, attempts, per-run hits


def run_experiment(spec: ExperimentSpec, progress: bool = True, prepared: PreparedData | None = None,
                   on_run=None) -> ExperimentResult:
    """Run every strategy ``spec.runs`` times (run r of every strategy uses seed ``seed + r``)."""
    from joblib import Parallel, delayed
    from tqdm import tqdm

    prepared = prepared or prepare_data(spec, progress=progress)
    data = prepared.loop_data
    target = spec.target_accuracy
    if target is None:
        target = full_pool_accuracy(data, spec.loop.head, seed=spec.seed)
    cap = spec.loop.budget if spec.loop.budget is not None else len(data.pool_labels)
    labelers = labeler_pool(spec, prepared.classes)
    results: dict[str, list[RunResult]] = {}
    seconds: dict[str, float] = {}
    control: dict[str, list[bool]] = {}
    with_control = bool(prepared.poison_sets) and spec.poison_control
    bar = tqdm(total=spec.runs * len(spec.strategies) * (2 if with_control else 1),
               desc=f"simulate {spec.scenario}", unit="run", disable=not progress)
    for name in spec.strategies:
        strategy, defence, defended = split_strategy(name, spec.loop.defence)
        overrides = variant_overrides(name)
        trust = spec.loop.trust
        if "trust_decrease" in overrides:  # a TrustPolicy field, not a LoopConfig one
            trust = replace(trust, decrease=overrides.pop("trust_decrease"))
        config = LoopConfig(**{**asdict(spec.loop), "head": spec.loop.head, "trust": trust,
                               "strategy": strategy, "defence": defence, "target_accuracy": target,
                               "budget": cap, "defenses": True if defended else spec.loop.defenses,
                               **overrides})
        start = time.perf_counter()
        if prepared.poison_sets:
            sets = prepared.poison_sets
            jobs = [delayed(_one_run)(poisoned_data(data, sets[r % len(sets)]), config, labelers, spec.seed + r)
                    for r in range(spec.runs)]
        else:
            jobs = [delayed(_one_run)(data, config, labelers, spec.seed + r) for r in range(spec.runs)]
        out = []
        for res in Parallel(n_jobs=spec.jobs, return_as="generator")(jobs):
            out.append(res)
            bar.set_postfix_str(f"{name}: {res.labels_to_target or '-'} labels")
            bar.update(1)
            if on_run is not None:
                on_run(name, res)
        results[name] = out
        seconds[name] = time.perf_counter() - start
        if with_control:
            # The same runs on the clean pool, watching the same targets: how often the learner
            # gets a target wrong on its own (the floor under any attack success rate).
            sets = prepared.poison_sets
            jobs = [delayed(_one_run)(replace(data, watch_features=sets[r % len(sets)].target_features[None]
                                              .astype(np.float32)), config, labelers, spec.seed + r)
                    for r in range(spec.runs)]
            control[name] = []
            for i, res in enumerate(Parallel(n_jobs=spec.jobs, return_as="generator")(jobs)):
                control[name].append(bool(res.watch_predictions[0] == sets[i % len(sets)].base_label))
                bar.update(1)
    bar.close()
    poison = None
    if prepared.poison_sets:
        sets = prepared.poison_sets
        hits = {
            name: [{"seed": r.seed, "target_index": sets[i % len(sets)].target_index,
                    "hit": bool(r.watch_predictions and r.watch_predictions[0] == sets[i % len(sets)].base_label)}
                   for i, r in enumerate(runs)]
            for name, runs in results.items()
        }
        n_clean = len(data.pool_labels)
        for name, runs in results.items():
            for i, (r, h) in enumerate(zip(runs, hits[name])):
                h["poisons_quarantined"] = sum(1 for j in r.quarantined if j >= n_clean)
                h["natural_quarantined"] = sum(1 for j in r.quarantined if j < n_clean)
                if name in control:
                    h["hit_without_poisons"] = control[name][i]
        poison = {"sets": [{"target_index": s.target_index, "target_label": s.target_label,
                            "base_label": s.base_label, "watermark": s.watermark,
                            "feature_distance": s.feature_distance, "seconds": s.seconds} for s in sets],
                  "attempts": prepared.poison_attempts, "hits": hits, "seconds": prepared.poison_seconds}
    return ExperimentResult(spec, prepared.classes, target, cap, results, seconds, prepared.seconds, poison)


def control_misclassification(result: ExperimentResult) -> dict[str, float]:
    """Share of clean-pool control runs whose final model put the target into the base class
    anyway (no poison), per strategy: the floor under :func:`attack_success`."""
    if not result.poison:
        return {}
    out = {}
    for name, hits in result.poison["hits"].items():
        flags = [h["hit_without_poisons"] for h in hits if "hit_without_poisons" in h]
        if flags:
            out[name] = float(np.mean(flags))
    return out


def attack_success(result: ExperimentResult) -> dict[str, float]:
    """Share of runs whose final model put the poisoning target into the base class, per strategy."""
    if not result.poison:
        return {}
    return {name: float(np.mean([h["hit"] for h in hits])) for name, hits in result.poison["hits"].items()}


def budget_summary(runs: list[RunResult], cap: int) -> dict:
    """The paper's budget table row: labels bought to reach the target (a run that never
    reaches it counts as the cap), plus how many runs reached it."""
    values = np.array([r.labels_to_target if r.reached else cap for r in runs], dtype=float)
    q = np.percentile(values, [0, 25, 50, 75, 100])
    return {
        "mean": float(values.mean()), "std": float(values.std(ddof=1)) if len(values) > 1 else 0.0,
        "min": float(q[0]), "25%": float(q[1]), "50%": float(q[2]), "75%": float(q[3]), "max": float(q[4]),
        "reached": int(sum(r.reached for r in runs)), "runs": len(runs),
        # per run, by its seed: every strategy of an experiment runs the same seeds, so differences pair up
        "labels_by_seed": {str(r.seed): float(v) for r, v in zip(runs, values)},
        "final_accuracy_mean": float(np.mean([r.final_accuracy for r in runs])),
        # the labels bought, split by what they bought (at the target; a run that never reaches it: at the end)
        "first_mean": float(np.mean([r.bought_by_kind.get("first", 0) for r in runs])),
        "secured_mean": float(np.mean([r.bought_by_kind.get("secured", 0) for r in runs])),
        "extra_mean": float(np.mean([r.bought_by_kind.get("reannotation", 0) for r in runs])),
        # the dataset each run would export (resolved labels, S included) against the truth
        "exported_accuracy_mean": _nanmean([r.exported_accuracy for r in runs]),
        "exported_accuracy_min": _nanmin([r.exported_accuracy for r in runs]),
        "exported_99": int(sum(r.exported_accuracy >= 0.99 for r in runs)),
        # adversaries (the scenario's), and honest labelers, by how the run left them
        **_statuses(runs),
    }


def _nanmean(values) -> float:
    v = np.asarray(values, dtype=float)
    return float(np.nanmean(v)) if np.isfinite(v).any() else float("nan")


def _nanmin(values) -> float:
    v = np.asarray(values, dtype=float)
    return float(np.nanmin(v)) if np.isfinite(v).any() else float("nan")


def _statuses(runs: list[RunResult]) -> dict:
    """Runs in which every adversary ended suspended (and flagged or suspended), and honest
    labelers suspended over all runs."""
    adversarial = [r for r in runs if r.malicious]
    def every(r, states):
        return all(r.trust.get(i, {}).get("status") in states for i in r.malicious)
    # an adversary that never attacked before the stop (a sleeper whose turn never came) gave
    # nothing to catch: counted apart, so the suspension figure can be read against it
    acted = [(r, i) for r in adversarial for i in r.malicious if r.adversary_attacks.get(i, 0) > 0]
    return {
        "adversaries": int(sum(len(r.malicious) for r in adversarial)),
        "adversaries_attacked": len(acted),
        "attackers_suspended": int(sum(r.trust.get(i, {}).get("status") == "suspended" for r, i in acted)),
        "adversary_runs": len(adversarial),
        "adversaries_suspended": int(sum(every(r, ("suspended",)) for r in adversarial)),
        "adversaries_caught": int(sum(every(r, ("flagged", "suspended")) for r in adversarial)),
        "honest_suspended": int(sum(1 for r in runs for i, t in r.trust.items()
                                    if i not in r.malicious and t.get("status") == "suspended")),
    }


def summary_table(result: ExperimentResult) -> dict[str, dict]:
    return {name: budget_summary(runs, result.budget_cap) for name, runs in result.runs.items()}


def format_table(summary: dict[str, dict], pool_size: int | None = None) -> str:
    """The budget table as fixed-width text."""
    cols = ["mean", "std", "min", "50%", "max"]
    width = max([16] + [len(n) + 1 for n in summary])
    head = f"{'strategy':<{width}}" + "".join(f"{c:>8}" for c in cols) + f"{'reached':>9}"
    if pool_size:
        head += f"{'/pool':>8}"
    head += f"{'first':>7}{'S':>5}{'extra':>7}{'export ok':>11}{'>=99%':>7}{'adv susp':>10}{'honest susp':>12}"
    lines = [head, "-" * len(head)]
    for name, row in summary.items():
        line = (f"{name:<{width}}" + "".join(f"{row[c]:>8.1f}" for c in cols)
                + f"{row['reached']:>5}/{row['runs']:<3}")
        if pool_size:
            line += f"{100 * row['mean'] / pool_size:>7.1f}%"
        adv = f"{row['adversaries_suspended']}/{row['adversary_runs']}" if row.get("adversary_runs") else "-"
        line += (f"{row['first_mean']:>7.0f}{row['secured_mean']:>5.0f}{row['extra_mean']:>7.0f}"
                 f"{100 * row['exported_accuracy_mean']:>10.2f}%{row['exported_99']:>4}/{row['runs']:<2}"
                 f"{adv:>10}{row['honest_suspended']:>12}")
        lines.append(line)
    lines.append("first/S/extra: mean labels by kind (first labels, secured set, audits + re-annotations + "
                 "redundant labels) at the target; export ok: mean share of the exported labels that are "
                 "right; >=99%: runs whose export is at least 99 % right; adv susp: runs that ended with "
                 "every adversary suspended; honest susp: honest labelers suspended over all runs")
    return "\n".join(lines)


def _clean(value):
    if isinstance(value, float) and (math.isnan(value) or math.isinf(value)):
        return None
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, (np.floating, np.integer)):
        return _clean(value.item())
    return value


def write_outputs(result: ExperimentResult, out_dir: str | os.PathLike) -> dict[str, str]:
    """Write ``summary.json``, ``runs.json``, ``iterations.csv`` and one accuracy-vs-labels
    PNG per strategy (one line per run, as the paper's Figs. 5-8). Returns the file paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary = summary_table(result)
    spec = asdict(result.spec)
    files = {}
    (out / "summary.json").write_text(json.dumps(_clean({
        "spec": spec, "classes": result.classes, "target_accuracy": result.target_accuracy,
        "budget_cap": result.budget_cap, "summary": summary, "seconds": result.seconds,
        "data_seconds": result.data_seconds, "attack_success": attack_success(result),
        "poison": result.poison,
    }), indent=2))
    files["summary"] = str(out / "summary.json")
    runs_payload = {
        name: [{**{k: v for k, v in asdict(r).items() if k != "history"},
                "history": [asdict(h) for h in r.history]} for r in runs]
        for name, runs in result.runs.items()
    }
    (out / "runs.json").write_text(json.dumps(_clean(runs_payload)))
    files["runs"] = str(out / "runs.json")
    with (out / "iterations.csv").open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["strategy", "seed", "iteration", "labels_bought", "n_labeled", "n_artificial",
                         "test_accuracy", "secured_accuracy", "check_triggered", "reannotated",
                         "discarded", "min_perturbation", "flagged", "suspended"])
        for name, runs in result.runs.items():
            for r in runs:
                for h in r.history:
                    writer.writerow([name, r.seed, h.iteration, h.labels_bought, h.n_labeled, h.n_artificial,
                                     f"{h.test_accuracy:.4f}", f"{h.secured_accuracy:.4f}", int(h.check_triggered),
                                     h.reannotated, h.discarded, f"{h.min_perturbation:.5f}",
                                     " ".join(map(str, h.flagged)), " ".join(map(str, h.suspended))])
    files["iterations"] = str(out / "iterations.csv")
    for name, runs in result.runs.items():
        fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=110)
        for r in runs:
            ax.plot([h.labels_bought for h in r.history], [h.test_accuracy for h in r.history], lw=0.8, alpha=0.7)
        ax.axhline(result.target_accuracy, color="k", ls="--", lw=1, label=f"target {result.target_accuracy:.3f}")
        ax.set_xlabel("labels bought (re-annotations and secured set included)")
        ax.set_ylabel("test accuracy")
        ax.set_title(f"{name} · {result.spec.scenario} · {result.spec.dataset} ({len(runs)} runs)")
        ax.legend(loc="lower right")
        ax.grid(alpha=0.3)
        fig.tight_layout()
        path = out / f"accuracy_{name}.png"
        fig.savefig(path)
        plt.close(fig)
        files[f"plot_{name}"] = str(path)
    table = format_table(summary, pool_size=result.budget_cap)
    (out / "budget_table.txt").write_text(table + "\n")
    files["table"] = str(out / "budget_table.txt")
    return files
