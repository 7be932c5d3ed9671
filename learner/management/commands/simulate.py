"""``manage.py simulate``: the whole robust active-learning loop with simulated labelers.

Prints the paper's budget table, writes JSON/CSV/PNG to an output folder and records the
experiment in the database (admin: Learner > Experiments).
"""
from __future__ import annotations

import time
import traceback
from datetime import datetime, timezone
from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from learner import services
from learner.defences import DEFENCES
from learner.experiments import (SCENARIOS, ExperimentSpec, attack_success, control_misclassification,
                                 format_table, run_experiment, split_strategy, summary_table, write_outputs)
from learner.heads import HeadConfig
from learner.loop import ATTACKS, LoopConfig
from learner.strategies import STRATEGIES
from learner.trust import TrustPolicy
from learner.management.db_ready import ensure_migrated


def _csv(value: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in value.split(",") if part.strip())


def _mapping(value: str | None) -> dict[str, str] | None:
    if not value:
        return None
    out = {}
    for pair in value.split(","):
        if ":" not in pair:
            raise CommandError(f"--mapping expects src:dst pairs such as airplane:frog, got {pair!r}")
        src, dst = (p.strip() for p in pair.split(":", 1))
        out[src] = dst
    return out


class Command(BaseCommand):
    help = "Run robust active learning with simulated labelers and report labeling budgets."

    def add_arguments(self, parser):
        g = parser.add_argument_group("experiment")
        g.add_argument("--scenario", choices=SCENARIOS, default="benign")
        g.add_argument("--strategies", default="random,margin,robust",
                       help=f"comma-separated, from {', '.join(STRATEGIES)}; 'robust+density' or 'robust+dknn' adds a defence")
        g.add_argument("--runs", type=int, default=30)
        g.add_argument("--seed", type=int, default=0)
        g.add_argument("--jobs", type=int, default=1, help="parallel runs (processes)")
        g.add_argument("--name", default="")
        g.add_argument("--out", default="", help="output folder (default: $ROBUSTAL_DATA_DIR/experiments/<name>)")
        d = parser.add_argument_group("data and model")
        d.add_argument("--dataset", default="digits",
                       help="digits | cifar2 | cifar10 | a .npz, .tar.gz or image folder")
        d.add_argument("--classes", default="", help="class subset, e.g. airplane,frog")
        d.add_argument("--pool-size", type=int, default=None)
        d.add_argument("--test-size", type=int, default=None)
        d.add_argument("--backbone", default="flatten", help="flatten | smallcnn | resnet20 | resnet50")
        d.add_argument("--weights", default=None, help="state_dict path, or 'imagenet' (resnet50, local cache)")
        o = parser.add_argument_group("labelers")
        o.add_argument("--labelers", type=int, default=11)
        o.add_argument("--pr", type=float, default=0.05, help="benign error rate")
        o.add_argument("--malicious", type=int, default=1, help="malicious labelers (malicious scenario)")
        o.add_argument("--mapping", default=None, help="malicious mapping src:dst (default 1:7 on digits, otherwise "
                       "the first class to the second: airplane:frog on cifar2)")
        lp = parser.add_argument_group("loop (algorithm.md)")
        lp.add_argument("--initial", type=int, default=20, help="m, initial random labels")
        lp.add_argument("--batch", type=int, default=20)
        lp.add_argument("--batch-per-annotator", type=int, default=None,
                        help="batches of max(--batch, this x eligible labelers) (LiveConfig.batch_per_annotator)")
        lp.add_argument("--budget", type=int, default=None, help="labels in all (default: pool size)")
        lp.add_argument("--target", type=float, default=None, help="default: full-pool accuracy")
        lp.add_argument("--tau", type=float, default=None)
        lp.add_argument("--defenses", choices=["auto", "on", "off"], default="auto",
                        help="secured set + re-annotation + trust (auto: robust only)")
        lp.add_argument("--secured-size", type=int, default=50)
        lp.add_argument("--secured-verification", choices=["admin", "consensus"], default="admin")
        lp.add_argument("--epsilon", type=float, default=0.05)
        lp.add_argument("--p-h", type=float, default=0.9995)
        lp.add_argument("--p1", type=float, default=0.9391)
        lp.add_argument("--audit-confidence", type=float, default=LoopConfig.audit_confidence,
                        help="re-annotate labels the model contradicts with this confidence; <=0 disables")
        lp.add_argument("--reannotation", choices=["adaptive", "parallel"], default="adaptive",
                        help="adaptive: a round asks one re-annotator first and the other h-1 only when that "
                             "one disagrees; parallel: h at once (both run live too)")
        lp.add_argument("--augment", default="auto", help="cw,deepfool,noise | none | auto (robust only)")
        lp.add_argument("--augment-space", choices=["feature", "pixel"], default="feature")
        lp.add_argument("--attack-impl", choices=["fast", "art"], default="fast")
        lp.add_argument("--training-mode", choices=["head", "finetune"], default="head",
                        help="head: frozen backbone, linear head; finetune: the backbone's last stage learns too "
                             "(once per iteration, trust-weighted; needs smallcnn, resnet20 or resnet50)")
        lp.add_argument("--noise-variance", type=float, default=0.3)
        lp.add_argument("--augment-weight", type=float, default=LoopConfig.augment_weight,
                        help="training weight of an artificial example relative to its source label")
        lp.add_argument("--n-clusters", type=int, default=10)
        lp.add_argument("--candidate-factor", type=float, default=3.0)
        lp.add_argument("--head-epochs", type=int, default=HeadConfig.epochs)
        df = parser.add_argument_group("poisoning and defence")
        df.add_argument("--defence", choices=DEFENCES, default="none",
                        help="training-set filter before each head training (dknn: deep k-NN, Peri et al. 2020)")
        df.add_argument("--defence-k", type=int, default=LoopConfig.defence_k)
        df.add_argument("--poison-targets", type=int, default=10, help="successful poison sets (run r faces set r mod n)")
        df.add_argument("--poison-bases", type=int, default=50)
        df.add_argument("--poison-watermarks", default="0.1,0.2,0.3", help="tried in order per target")
        df.add_argument("--poison-impl", choices=["fast", "art"], default="fast")
        df.add_argument("--poison-max-iter", type=int, default=120)
        df.add_argument("--poison-max-attempts", type=int, default=None)
        df.add_argument("--poison-min-confidence", type=float, default=0.0,
                        help="targets the clean full-pool head classifies at least this surely")
        df.add_argument("--no-poison-control", action="store_true",
                        help="skip the clean-pool control runs that watch the same targets")
        parser.add_argument("--no-progress", action="store_true")

    def handle(self, *args, **o):
        ensure_migrated(self.stdout)
        strategies = _csv(o["strategies"])
        if not strategies:
            raise CommandError(f"--strategies is empty; choose from {', '.join(STRATEGIES)}")
        for name in strategies:
            try:
                split_strategy(name)
            except ValueError as exc:
                raise CommandError(f"unknown strategies [{name!r}]: {exc}") from exc
        augment = None if o["augment"] == "auto" else (() if o["augment"] == "none" else _csv(o["augment"]))
        if augment and set(augment) - set(ATTACKS):
            raise CommandError(f"--augment takes {', '.join(ATTACKS)} or none")
        try:
            trust = TrustPolicy(p_h=o["p_h"], p_1=o["p1"], epsilon=o["epsilon"])
            trust.h  # validates p_h and p_1
            loop = LoopConfig(
                initial_size=o["initial"], batch_size=o["batch"], budget=o["budget"], tau=o["tau"],
                batch_per_annotator=o["batch_per_annotator"],
                defenses={"auto": None, "on": True, "off": False}[o["defenses"]],
                secured_size=o["secured_size"],
                secured_verification=o["secured_verification"],
                audit_confidence=o["audit_confidence"] if o["audit_confidence"] > 0 else None,
                reannotation=o["reannotation"],
                augment=augment, augment_space=o["augment_space"], attack_impl=o["attack_impl"],
                training_mode=o["training_mode"],
                noise_variance=o["noise_variance"], augment_weight=o["augment_weight"], n_clusters=o["n_clusters"],
                candidate_factor=o["candidate_factor"], head=HeadConfig(epochs=o["head_epochs"]), trust=trust,
                defence=None if o["defence"] == "none" else o["defence"], defence_k=o["defence_k"],
            )
            spec = ExperimentSpec(
                scenario=o["scenario"], strategies=strategies, runs=o["runs"], seed=o["seed"],
                dataset=o["dataset"], classes=_csv(o["classes"]) or None, pool_size=o["pool_size"],
                test_size=o["test_size"], backbone=o["backbone"], weights=o["weights"],
                n_labelers=o["labelers"], error_rate=o["pr"], n_malicious=o["malicious"],
                mapping=_mapping(o["mapping"]), target_accuracy=o["target"], loop=loop, jobs=o["jobs"],
                poison_targets=o["poison_targets"], poison_bases=o["poison_bases"],
                poison_watermarks=tuple(float(w) for w in _csv(o["poison_watermarks"])),
                poison_impl=o["poison_impl"], poison_max_iter=o["poison_max_iter"],
                poison_max_attempts=o["poison_max_attempts"],
                poison_min_confidence=o["poison_min_confidence"], poison_control=not o["no_poison_control"],
            )
        except ValueError as exc:
            raise CommandError(str(exc)) from exc
        stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
        name = o["name"] or f"{spec.scenario}-{Path(str(spec.dataset)).name}-{stamp}"
        out_dir = Path(o["out"] or Path(settings.DATA_DIR) / "experiments" / name)
        experiment = services.start_experiment(name=name, spec=spec)
        self.stdout.write(f"experiment #{experiment.pk} {name}: {spec.scenario} on {spec.dataset}, "
                          f"strategies {', '.join(strategies)}, {spec.runs} runs, seed {spec.seed}")
        start = time.perf_counter()
        try:
            result = run_experiment(spec, progress=not o["no_progress"])
            files = write_outputs(result, out_dir)
        except (ValueError, FileNotFoundError) as exc:
            services.fail_experiment(experiment, error=str(exc))
            raise CommandError(str(exc)) from exc
        except BaseException:
            services.fail_experiment(experiment, error=traceback.format_exc())
            raise
        services.finish_experiment(experiment, result=result, output_dir=str(out_dir))
        wall = time.perf_counter() - start
        self.stdout.write(f"target accuracy {result.target_accuracy:.4f} "
                          f"({'given' if spec.target_accuracy else 'full-pool accuracy of the same model'}); "
                          f"budget cap {result.budget_cap} labels")
        self.stdout.write(format_table(summary_table(result), pool_size=result.budget_cap))
        if result.poison:
            p = result.poison
            tried = len({a["target_index"] for a in p["attempts"]})
            self.stdout.write(f"poison sets: {len(p['sets'])} successful of {tried} targets tried "
                              f"({p['seconds']:.1f} s crafting + checks)")
            for s in p["sets"]:
                self.stdout.write(f"  target {s['target_index']} ({s['target_label']}->{s['base_label']}), "
                                  f"watermark {s['watermark']}, relative feature distance {s['feature_distance']:.3f}")
            control = control_misclassification(result)
            for name, rate in attack_success(result).items():
                hits = p["hits"][name]
                line = f"attack success {name}: {rate:.1%} ({sum(h['hit'] for h in hits)}/{len(hits)} runs)"
                if name in control:
                    line += f"; target misclassified without poisons: {control[name]:.1%}"
                quarantined = sum(h.get("poisons_quarantined", 0) for h in hits)
                if quarantined:
                    line += f"; poisons quarantined: {quarantined / len(hits):.1f} per run"
                self.stdout.write(line)
        self.stdout.write(f"wall time {wall:.1f} s; outputs in {out_dir}")
        for key, path in files.items():
            self.stdout.write(f"  {key}: {path}")
