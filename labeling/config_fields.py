"""What each project setting (``learner.live.LiveConfig``) means, for the staff settings form.

Plain data and two pure functions; no ORM. ``FIELDS`` holds one :class:`FieldInfo` per
``LiveConfig`` field (a test fails when a field has no explanation). ``LIVE_EDITABLE`` names the
settings that may change once labeling has started: each is read afresh by every loop step and
only bounds or sizes what comes next. The others keep the reason they are fixed.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from learner import live
from learner.live import ATTACKS, BACKBONE_NAMES, STRATEGY_NAMES, LiveConfig
from learner.defences import POOL_DEFENCES

GROUPS = (
    ("loop", "Labeling loop"),
    ("defences", "Defences against bad labels and poisons"),
    ("trust", "Audits and trust rules"),
    ("model", "Model and features"),
)

# Read by every loop step and only bounding or sizing what comes next: safe to change while labeling.
LIVE_EDITABLE = ("batch_size", "batch_per_annotator", "budget", "target", "tau", "verify_labels")

_FIXED_AT_START = "used once, when labeling started"
_METHOD = "changing the method halfway would mix two methods in one run"
_FEATURES = "the pool's features were extracted with it"
_TRUST = "the trust evidence gathered so far was judged with it"
_ROUNDS = "re-annotation rounds already open were sized with it"


@dataclass(frozen=True)
class FieldInfo:
    name: str
    group: str
    label: str
    help: str
    locked_reason: str = ""  # why it cannot change after labeling started ("" for LIVE_EDITABLE)
    choices: tuple = ()  # fixed choices (value, text)
    blank_means: str = ""  # what an empty value means for a setting that may be null ("no limit")
    optional: bool = False  # null allowed
    kind: str = "str"  # form input: int, float, str, choice, bool, tristate (null/true/false), list


    @property
    def editable_after_start(self) -> bool:
        return self.name in LIVE_EDITABLE

    @property
    def default(self):
        value = _DEFAULTS[self.name]
        return list(value) if isinstance(value, tuple) else value


_DEFAULTS = LiveConfig().to_dict()

_INFO = {
    # -- the loop ---------------------------------------------------------------------------
    "strategy": ("loop", "Query strategy",
                 "How each batch is chosen. robust: the paper's method (minimax diversity inside feature "
                 "clusters, more picks where the model is fragile or wrong, with the defences and crafted "
                 "examples on); margin and entropy: the most uncertain items; coreset: farthest-first "
                 "diversity; random: the baseline.", _METHOD),
    "batch_size": ("loop", "Batch size", "Items queried per iteration; each gets one first label. Re-annotations "
                   "come on top."),
    "batch_per_annotator": ("loop", "Batch per annotator", "Each new batch holds this many items per annotator "
                            "working now (members who answered or held an item within the last lease), and never "
                            "fewer than the batch size; the budget still caps it. E.g. 6 per person keeps 50 people "
                            "busy while the model trains (measured with pipelined batches and people who take 3 s "
                            "per image); see docs/reliability.md. The batches start opens keep their set sizes.", "", "off: every batch has the batch size"),
    "initial_size": ("loop", "First batch", "Items drawn at random and labeled before the first model exists "
                     "(batch 0).", _FIXED_AT_START),
    "secured_size": ("loop", "Secured set", "Items set aside at start and labeled by h annotators in agreement (or "
                     "by imported ground truth). The model never trains on them; its accuracy on them drives the "
                     "performance check and the target. Taken from the pool: the pool must hold more than the "
                     "secured set plus the first batch.", _FIXED_AT_START),
    "budget": ("loop", "Label budget", "Stop after this many labels bought (first labels, re-annotations and "
               "secured-set labels all count). Lowering it below what was bought stops the loop after the "
               "open batch.", "", "no limit"),
    "target": ("loop", "Target accuracy", "Stop when the model's accuracy on the secured set reaches this "
               "(0 to 1).", "", "no target"),
    "tau": ("loop", "Robustness stop (tau)", "Stop when the smallest adversarial perturbation of the crafted "
            "examples exceeds tau: the model has become hard to fool.", "", "off"),
    "h": ("loop", "Re-annotators (h)", "Independent annotators asked about a disputed label and about each "
          "secured item (never the original annotator; capped by how many others there are). The paper's "
          "h = 3 makes a wrong consensus unlikely (P_h = 0.9995 at P_1 = 0.9391).", _ROUNDS),
    "reannotation": ("loop", "Re-annotation rounds", "adaptive: ask one other annotator first and the other "
                     "h - 1 only when that one disagrees with the label under review; parallel: ask h at once.",
                     _ROUNDS),
    "escalate_votes": ("loop", "More voters for a split round", "When the annotators asked about a label "
                       "disagree among themselves, ask up to this many more and keep the class that at least h of "
                       "them and a majority gave; 0: the paper's rule (the item is discarded).", _ROUNDS),
    "pipeline": ("loop", "Pipelined batches", "Annotators label the next batch, chosen by the model of the step "
                 "before, while this step's model trains: nobody waits for the model, at the price of choosing with "
                 "a model one batch old. Two batches are open at once (start opens two random ones); the older one's "
                 "work, re-annotations included, is handed out first.", _METHOD),
    "epsilon": ("loop", "Performance check (epsilon)", "When the accuracy on the secured set drops by more than "
                "epsilon from one iteration to the next, the batch's labels go to re-annotation.", _METHOD),
    # -- defences ---------------------------------------------------------------------------
    "defenses": ("defences", "Defences", "Secured-set check, re-annotation and trust weighting of labels. auto: "
                 "on for robust, off for the other strategies.", _METHOD),
    "augment": ("defences", "Crafted examples", "Artificial training examples made from each newly labeled item "
                "(cw: Carlini-Wagner, deepfool: DeepFool, noise: Gaussian copies); they cost no labels. auto: all "
                "three for robust, none otherwise; none: off; or a comma-separated list.", _METHOD),
    "augment_weight": ("defences", "Weight of crafted examples", "Training weight of a crafted example relative "
                       "to the label it was made from.", _METHOD),
    "noise_variance": ("defences", "Noise variance", "Variance of the Gaussian-noise copies (paper: 0.3).", _METHOD),
    "overshoot": ("defences", "Adversarial overshoot", "How far past the decision boundary an adversarial "
                  "example is pushed (relative).", _METHOD),
    "augment_space": ("defences", "Where examples are crafted", "feature: closed-form copies on the frozen "
                      "features (exact for the linear head, instant). pixel: C&W and DeepFool on the new labels' "
                      "images through the backbone and the current model, and Gaussian noise on the pixels, as "
                      "manage.py simulate --augment-space pixel does; attacks that find no example are dropped "
                      "and counted. Slow on a CPU worker: one step with 20 new labels took about 9 s with "
                      "resnet20 and 95 s with resnet50 on one CPU thread (0.3 s in feature space); with resnet50 "
                      "run the train workers on a GPU.", _METHOD),
    "pool_defence": ("defences", "Pool defence", "density: never query items of an abnormally dense feature-space "
                     "cluster (feature-collision poisons); none: query from the whole pool.", _METHOD),
    "n_clusters": ("defences", "Feature clusters", "Clusters of the pool in feature space; robust picks inside each "
                   "(k-means).", _METHOD),
    "candidate_factor": ("defences", "Candidates per pick", "robust considers this many times N_c of a cluster's "
                         "most fragile unlabeled items before picking the N_c farthest from the labeled ones.",
                         _METHOD),
    "robust_pick": ("defences", "Pick inside a cluster", "robust's choice among a cluster's candidates: farthest "
                    "(farthest from the labeled items, the paper's eq. 4) or margin (the most fragile first, skipping "
                    "near-duplicates of labeled items).", _METHOD),
    "robust_fragile_top": ("defences", "Fragility by ranking", "robust shares the batch out by how many of the "
                           "pool's most fragile unlabeled items each cluster holds (instead of a soft sum over "
                           "the cluster).", _METHOD),
    "robust_size_weight": ("defences", "Cluster size weight", "Weight of a cluster's size next to its fragility when "
                           "robust shares the batch out among clusters.", _METHOD),
    "redundancy": ("defences", "Labels per item (redundancy)", "Every queried item labeled by this many different "
                   "annotators at once and their answers aggregated: the usual alternative to the defences (needs "
                   "the defences off). 1: one label per item. Above 1 only in simulations for now (manage.py simulate).",
                   _METHOD),
    "aggregation": ("defences", "Aggregation", "How redundant answers become one label: majority, or dawid_skene "
                    "(annotators weighed by their estimated confusion, over every answer so far).", _METHOD),
    "trust_weights": ("defences", "Trust-weighted training", "Train with each label weighted by its annotator's "
                      "trust (off: every label weighs 1).", _METHOD),
    # -- trust ------------------------------------------------------------------------------
    "audit_confidence": ("trust", "Audit confidence", "A label the model contradicts at least this surely goes to "
                         "re-annotation.", _TRUST, "no audits"),
    "audit_confidence_proven": ("trust", "Audit confidence (proven annotators)", "For an annotator whose checked "
                                "labels mostly held, only contradictions this sure are re-annotated.", _TRUST,
                                "every annotator at the audit confidence"),
    "recheck": ("trust", "Re-check standing labels", "With each new model, re-examine every label still standing on "
                "one annotator's word, not only the new batch's.", _TRUST),
    "audit_posterior": ("trust", "Audit by posterior", "Audit a contradicted label when it is more than this likely "
                        "to be wrong given its annotator's record (replaces the two audit confidences).", _TRUST,
                        "off"),
    "audit_proven_after": ("trust", "Proven after", "Checked labels before an annotator can count as proven.",
                           _TRUST),
    "trust_penalty": ("trust", "Trust penalty", "Trust (the weight of an annotator's labels) lost per refuted "
                      "label, times the model's doubt about it.", _TRUST),
    "trust_reward": ("trust", "Trust reward", "Trust gained per label confirmed by others or by a confident model "
                     "(capped at 1).", _TRUST),
    "trust_decrease": ("trust", "Trust loss rule", "How much a refuted label costs its annotator's trust: ours "
                       "(the penalty times 1 minus the model's probability of the refuted label) or paper (inversely "
                       "proportional to the model's confidence).", _TRUST),
    "alert_confidence": ("trust", "Alert confidence", "A refuted label whose consensus the model gives at least "
                         "this probability is recorded as an alert.", _TRUST),
    "flag_alpha": ("trust", "Flag threshold (p)", "Flag an annotator (no new work, their standing labels "
                   "re-checked) when their refuted labels are this improbable for an honest annotator.", _TRUST),
    "suspend_alpha": ("trust", "Suspend threshold (p)", "Suspend at once when the refuted labels are this "
                      "improbable (at most the flag threshold).", _TRUST),
    "audit_alpha": ("trust", "Suspend after audit (p)", "After the targeted audit of a flagged annotator: suspend "
                    "when their recent labels stay this improbable, else reinstate.", _TRUST),
    "trust_window": ("trust", "Recent labels", "How many of an annotator's latest labels the tests of recent "
                     "behaviour look at.", _TRUST),
    "secured_evidence": ("trust", "Check annotators on the secured set", "Count an annotator's answers on the secured "
                         "set against the other annotators' common answer when testing for unreliable annotators "
                         "(no extra labels).", _TRUST),
    "gold_per_labeler": ("trust", "Gold questions per annotator", "Secured-set images whose label you gave, this many "
                         "per annotator, spread among the first batch's images and looking like any other image "
                         "(whoever reaches one answers it); a wrong answer counts against whoever gave it from the "
                         "first model update on. Each is one label bought; 0: none.",
                         _TRUST),
    "probation_labels": ("trust", "Probation (confirmed labels)", "Every label of an annotator is checked by another "
                         "annotator, whatever the model thinks of it, until this many of their labels were confirmed "
                         "(a second and third checker only when the first disagrees); 0: only the labels the model "
                         "contradicts are checked.", _TRUST),
    "verify_labels": ("trust", "Second opinion on every label", "With the defences on (robust, or defenses on): "
                      "every label is checked by another annotator, whatever the model thinks of it (a second and "
                      "third checker only when the first disagrees). Up to one more label per label (12-33 % more "
                      "on CIFAR-2) for a dataset whose labels are nearly all right (docs/method.md).",
                      _TRUST),
    "p1": ("trust", "Honest accuracy (P_1)", "Accuracy assumed for an honest annotator (CIFAR-10 humans: "
           "0.9391); the flag and suspend tests measure against it.", _TRUST),
    "confusion_min_rate": ("trust", "Confusion rate", "Dawid-Skene check: flag an annotator who maps one class to "
                           "another at least this often.", _TRUST, "off"),
    "confusion_min_count": ("trust", "Confusion count", "Dawid-Skene check: the mapping must rest on at least "
                            "this many expected labels.", _TRUST),
    # -- model ------------------------------------------------------------------------------
    "backbone": ("model", "Backbone", "Feature extractor: flatten (raw pixels, fast), smallcnn, resnet20, resnet50.",
                 _FEATURES),
    "weights": ("model", "Backbone weights", "A weights file for the backbone (empty: its built-in "
                "initialisation).", _FEATURES, "built-in"),
    "training_mode": ("model", "Training mode", "head: the backbone stays frozen and only the linear head "
                      "learns (fast on a CPU worker). finetune: once per iteration the backbone's last stage (the "
                      "last residual stage of resnet20 and resnet50, the last conv block of smallcnn) learns too, on "
                      "the labeled items weighted by their annotators' trust, and the pool's features are "
                      "re-extracted through it; flatten has no stage to train. Runs on a CPU worker, slowly: give "
                      "the train workers a GPU for large pools or resnet50.", _METHOD),
    "feature_size": ("model", "Input size", "Images are resized to this many pixels a side before feature "
                     "extraction.", _FEATURES),
    "channels": ("model", "Channels", "1: grayscale, 3: colour.", _FEATURES),
    "feature_chunk_size": ("model", "Extraction chunk", "Items per feature-extraction task (spread over "
                           "workers).", _FEATURES),
    "seed": ("model", "Seed", "Seed of every random draw of the run (the secured set, the first batch, crafting): "
             "the same seed and answers give the same run.", "the run's draws so far came from it"),
}

_CHOICES = {
    "strategy": tuple((s, s) for s in STRATEGY_NAMES),
    "reannotation": (("adaptive", "adaptive"), ("parallel", "parallel")),
    "augment_space": tuple((s, s) for s in live.AUGMENT_SPACES),
    "training_mode": tuple((s, s) for s in live.TRAINING_MODES),
    "pool_defence": tuple((s, s) for s in ("none", *POOL_DEFENCES)),
    "backbone": tuple((s, s) for s in BACKBONE_NAMES),
    "channels": ((1, "1 (grayscale)"), (3, "3 (colour)")),
    "defenses": (("auto", "auto"), ("on", "on"), ("off", "off")),
    "trust_decrease": (("ours", "ours"), ("paper", "paper")),
    "robust_pick": (("farthest", "farthest"), ("margin", "margin")),
    "aggregation": tuple((s, s) for s in getattr(live, "AGGREGATIONS", ("majority", "dawid_skene"))),
}


def _optional(f: dataclasses.Field) -> bool:
    return "None" in str(f.type)


def _info(f: dataclasses.Field) -> FieldInfo:
    group, label, text, *rest = _INFO.get(f.name, ("other", f.name, ""))
    locked = rest[0] if rest else ""
    blank = rest[1] if len(rest) > 1 else ""
    if f.name in LIVE_EDITABLE:
        locked = ""
    elif not locked:
        locked = "it may not change once labeling has started"
    kind = _kind(f)
    choices = _CHOICES.get(f.name) or {"bool": (("on", "on"), ("off", "off")),
                                       "tristate": (("auto", "auto"), ("on", "on"), ("off", "off"))}.get(kind, ())
    return FieldInfo(name=f.name, group=group, label=label, help=text, locked_reason=locked,
                     choices=choices, blank_means=blank, optional=_optional(f), kind=kind)


def _kind(f: dataclasses.Field) -> str:
    t = str(f.type)
    if t.startswith("bool"):
        return "tristate" if "None" in t else "bool"
    if f.name in _CHOICES:
        return "choice"
    if t.startswith("tuple"):
        return "list"
    return "int" if t.startswith("int") else "float" if t.startswith("float") else "str"


FIELDS: dict[str, FieldInfo] = {f.name: _info(f) for f in dataclasses.fields(LiveConfig)}
AUGMENT_CHOICES = ATTACKS


def grouped() -> list[tuple[str, str, list[FieldInfo]]]:
    """(group key, title, fields) in display order."""
    groups = [(key, title, [i for i in FIELDS.values() if i.group == key]) for key, title in GROUPS]
    other = [i for i in FIELDS.values() if i.group not in dict(GROUPS)]
    return [g for g in groups if g[2]] + ([("other", "Other", other)] if other else [])


# --------------------------------------------------------------------------------------
# Does the pool fit the settings?
# --------------------------------------------------------------------------------------


def pool_fit(cfg: LiveConfig, n_items: int) -> dict:
    """What start would take from a pool of ``n_items``, and whether start would refuse it.

    The rule is :func:`labeling.services.start_project`'s: the secured set (at most all but one
    item) and the first batch must leave at least one item for the model to choose from.
    """
    secured = min(cfg.secured_size, max(n_items - 1, 0))
    need = secured + cfg.initial_size
    left = n_items - need
    fits = n_items > need
    if n_items == 0:
        message = (f"No images yet. Start will need more than {cfg.secured_size + cfg.initial_size}: the secured set "
                   f"({cfg.secured_size}) plus the first batch ({cfg.initial_size}), and then some for the model "
                   "to choose from.")
    elif not fits:
        message = (f"The pool has {n_items} images: the secured set ({cfg.secured_size}) and the first batch "
                   f"({cfg.initial_size}) would take them all, so start will refuse. Import more images or lower "
                   "the secured set or the first batch.")
    elif left < cfg.batch_size:
        message = (f"The pool has {n_items} images; after the secured set ({secured}) and the first batch "
                   f"({cfg.initial_size}) only {left} remain, less than one batch of {cfg.batch_size}.")
    else:
        message = (f"The pool has {n_items} images: {secured} go to the secured set, {cfg.initial_size} to the first "
                   f"batch, {left} remain for the model to choose from ({left // cfg.batch_size} batches of "
                   f"{cfg.batch_size}).")
    return {"n_items": n_items, "secured": secured, "initial": cfg.initial_size, "left": left, "fits": fits,
            "tight": fits and left < cfg.batch_size, "message": message}
