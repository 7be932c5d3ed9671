"""``manage.py reproduce_paper``: the paper's three experiments in one command.

Pretrains the clean backbone when its weights are missing, computes pool/test features once
(cached), runs the benign / malicious / poison scenarios for every strategy (``robust+dknn`` =
robust with the deep k-NN defence), writes raw outputs (JSON, CSV, plots) to ``--out``, copies the
plots to ``docs/results/`` and generates ``docs/results.md`` with the paper's numbers side by side.

The paper's setting: ``manage.py reproduce_paper`` (CIFAR-2, pool 3,000, test 2,000, 30 runs).
CI's smoke test: ``--dataset digits --backbone smallcnn --weights none --runs 1 ...``.

Another CIFAR-10 pair (issue 18, generalisation): ``--dataset cifar10 --classes deer,truck``
pretrains the backbone on the eight other classes (``cifar8-no-deer-truck-<arch>-e<epochs>``;
a cached backbone whose ``meta.json`` lists a class of the pair is refused), the malicious labeler
maps the first class to the second, and the report goes to ``docs/results-deer-truck.md`` (plots
and ``report.json`` in ``docs/results/deer-truck/``), never to ``docs/results.md``. Instead the
"Second CIFAR-10 pair" section of ``docs/results.md`` (between the ``second-pair`` markers) is
rewritten from every ``docs/results/<pair>/report.json`` present, and a regeneration of
``docs/results.md`` renders the same section, so neither run loses the other.

A second data split (issue 18): ``--seed 7`` draws another pool, test set and run seeds. Its
report goes to ``docs/results-seed7.md`` (plots and ``report.json`` in ``docs/results/seed7/``),
and results.md gets it in a "Second data split" section the same way, beside the seed-0 tables.

Sections other benchmarks write into ``docs/results.md`` between :data:`KEPT_MARKERS` (the
"Training mode" figures of ``bench/bench_finetune.py``) are carried over byte for byte when
``docs/results.md`` is regenerated. The markdown itself is rendered by :mod:`learner.results_md`.
"""
from __future__ import annotations

import json
import shlex
import shutil
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from learner.experiments import (ExperimentSpec, attack_success, control_misclassification, default_mapping,
                                 format_table, prepare_data, run_experiment, split_strategy, summary_table,
                                 write_outputs)
from learner.data import file_sha256
from learner.loop import LoopConfig
from learner.pretrain import (CIFAR10_CLASSES, CIFAR2_SOURCE_CLASSES, classes_seen, pretrain_backbone,
                              pretrained_dir, source_classes_for, weights_digest)
from learner.results_md import KEPT_MARKERS, PAPER_PAIR, render_markdown, splice_pairs_section

__all__ = ["Command", "KEPT_MARKERS", "pretrain_plan", "render_markdown", "results_name", "target_classes"]


def _csv(value: str) -> tuple[str, ...]:
    return tuple(p.strip() for p in value.split(",") if p.strip())


def target_classes(dataset: str, classes: tuple[str, ...]) -> tuple[str, ...] | None:
    """The CIFAR-10 classes a run labels (None: not CIFAR-10, e.g. digits)."""
    if dataset == "cifar2":
        return classes or PAPER_PAIR
    if dataset == "cifar10":
        return classes or CIFAR10_CLASSES
    return None


def pretrain_plan(targets: tuple[str, ...] | None, arch: str, epochs: int) -> tuple[tuple[str, ...], str]:
    """(source classes, default backbone name): the paper's pair (or a data set other than CIFAR-10)
    keeps the eight classes other than airplane and frog, ``cifar8-<arch>-e<epochs>``; another pair
    gets the classes other than its own, named after what it left out."""
    if targets is None or set(targets) <= set(PAPER_PAIR):
        return CIFAR2_SOURCE_CLASSES, f"cifar8-{arch}-e{epochs}"
    source = source_classes_for(targets)
    return source, f"cifar{len(source)}-no-{'-'.join(targets)}-{arch}-e{epochs}"


def results_name(dataset: str, classes: tuple[str, ...], explicit: str = "", seed: int = 0) -> str:
    """Markdown file stem under docs: ``results`` (the paper's pair, digits smoke runs) or
    ``results-<a>-<b>`` for ``--dataset cifar10 --classes a,b``; another data split (``--seed`` other
    than 0) adds ``-seed<seed>``, so it never overwrites the committed seed-0 report."""
    name = explicit or ((f"results-{'-'.join(classes)}" if dataset == "cifar10" and classes else "results")
                        + (f"-seed{seed}" if seed else ""))
    if not name.startswith("results") or any(c in name for c in "/\\ ."):
        raise ValueError(f"--results-name must be a plain name starting with 'results', got {name!r}")
    return name


class Command(BaseCommand):
    help = "Regenerate the paper's three experiments, plots and docs/results.md."

    def add_arguments(self, parser):
        parser.add_argument("--dataset", default="cifar2")
        parser.add_argument("--classes", default="")
        parser.add_argument("--pool-size", type=int, default=3000)
        parser.add_argument("--test-size", type=int, default=2000)
        parser.add_argument("--backbone", default="resnet20")
        parser.add_argument("--weights", default="auto",
                            help="auto (pretrained cache; pretrains when missing) | none (random init) | a path")
        parser.add_argument("--pretrain-name", default="",
                            help="backbone folder (default cifar8-<backbone>-e<epochs> for airplane/frog, "
                                 "cifar8-no-<a>-<b>-<backbone>-e<epochs> for another pair)")
        parser.add_argument("--pretrain-epochs", type=int, default=10)
        parser.add_argument("--pretrain-train-size", type=int, default=0,
                            help="seeded sub-sample of the 40,000 source images (0: all)")
        parser.add_argument("--scenarios", default="benign,malicious,poison,collusion,sleeper,spammer",
                            help="the paper's three first, then the threat suite beyond the paper")
        parser.add_argument("--strategies",
                            default="random,margin,margin+defended,margin+vote3,margin+ds2,robust,robust+density",
                            help="robust+dknn adds the deep k-NN defence (slow: its runs rarely stop early); "
                                 "+vote3 / +ds2 / +ds3: k labels per item aggregated by crowd-kit")
        parser.add_argument("--runs", type=int, default=30)
        parser.add_argument("--jobs", type=int, default=2)
        parser.add_argument("--seed", type=int, default=0)
        parser.add_argument("--split-seeds", default="",
                            help="more data splits, e.g. '7': every scenario again with --seed 7, reported beside")
        parser.add_argument("--defence-k", type=int, default=LoopConfig.defence_k)
        parser.add_argument("--poison-targets", type=int, default=10)
        parser.add_argument("--poison-bases", type=int, default=50)
        parser.add_argument("--poison-max-iter", type=int, default=120)
        parser.add_argument("--poison-max-attempts", type=int, default=None)
        parser.add_argument("--poison-min-confidence", type=float, default=0.0,
                            help="targets the clean full-pool head classifies at least this surely")
        parser.add_argument("--out", default="", help="raw outputs (default $ROBUSTAL_DATA_DIR/reproduction)")
        parser.add_argument("--docs", default=str(Path(settings.BASE_DIR) / "docs"),
                            help="folder receiving results.md and results/*.png")
        parser.add_argument("--note", default="", help="a sentence added to results.md (e.g. why fewer runs)")
        parser.add_argument("--results-name", default="",
                            help="markdown stem under --docs (default results; results-<a>-<b> for "
                                 "--dataset cifar10 --classes a,b, which never touches results.md's tables)")
        parser.add_argument("--no-progress", action="store_true")
        parser.add_argument("--render-only", action="store_true",
                            help="run nothing: render the markdown again from --out's report.json (and the "
                                 "per-run figures in each scenario's runs.json), e.g. after the rendering changed; "
                                 "--note, when given, replaces the report's note")

    # ---------------------------------------------------------------------------------
    def _weights(self, o, targets: tuple[str, ...] | None) -> tuple[str | None, dict | None]:
        w = o["weights"]
        if w == "none":
            return None, None
        if w != "auto":
            if not Path(w).expanduser().is_file():
                raise CommandError(f"weights file not found: {w}")
            meta_file = Path(w).expanduser().with_name("meta.json")
            meta = json.loads(meta_file.read_text()) if meta_file.is_file() else None
            self._refuse_seen(w, meta, targets)
            return w, meta
        source, default_name = pretrain_plan(targets, o["backbone"], o["pretrain_epochs"])
        name = o["pretrain_name"] or default_name
        folder = pretrained_dir(name)
        if (folder / "meta.json").is_file():  # refused before anything is trained or run on it
            self._refuse_seen(name, json.loads((folder / "meta.json").read_text()), targets)
        if not (folder / "weights.pt").is_file():
            self.stdout.write(f"pretrained weights missing in {folder}: pretraining {o['backbone']} "
                              f"({o['pretrain_epochs']} epochs) on {', '.join(source)}")
            pretrain_backbone(
                "cifar10", source, arch=o["backbone"], epochs=o["pretrain_epochs"],
                train_size=o["pretrain_train_size"] or None, seed=o["seed"], name=name,
                progress=not o["no_progress"], log=self.stdout.write,
            )
        meta = json.loads((folder / "meta.json").read_text())
        self._refuse_seen(name, meta, targets)
        return str(folder / "weights.pt"), meta

    @staticmethod
    def _refuse_seen(name: str, meta: dict | None, targets: tuple[str, ...] | None) -> None:
        seen = classes_seen(meta, targets or ())
        if seen:
            raise CommandError(f"backbone {name} was pretrained on {', '.join(seen)}, which this run labels: "
                               "choose another --pretrain-name (or leave it to the default for these classes)")

    def handle(self, *args, **o):
        if o["render_only"]:
            return self._render_only(o)
        torch.set_num_threads(2)  # features and crafting here; each parallel run uses 1 thread
        scenarios, strategies = _csv(o["scenarios"]), _csv(o["strategies"])
        classes = _csv(o["classes"])
        try:
            for s in strategies:
                split_strategy(s)
            targets = target_classes(o["dataset"], classes)
            stem = results_name(o["dataset"], classes, o["results_name"], o["seed"])
            weights, meta = self._weights(o, targets)
        except (ValueError, FileNotFoundError) as exc:
            raise CommandError(str(exc)) from exc
        pair = stem[len("results-"):] if stem != "results" else None
        out = Path(o["out"] or Path(settings.DATA_DIR) / ("reproduction" + (f"-{pair}" if pair else "")))
        docs = Path(o["docs"])
        plots_dir = "results" + (f"/{pair}" if pair else "")
        (docs / plots_dir).mkdir(parents=True, exist_ok=True)
        # a side report on the paper's pair (or no pair named) is another data split, else another pair
        side = "split" if not classes or set(classes) == set(PAPER_PAIR) else "pair"
        report = {"scenarios": {}, "backbone": meta, "weights": weights, "results_name": stem, "pair": pair,
                  "plots_dir": plots_dir, "side": side, "seed": o["seed"]}
        total_start = time.perf_counter()
        seeds = [o["seed"], *[int(x) for x in _csv(o["split_seeds"])]]
        for scenario, seed in [(sc, sd) for sc in scenarios for sd in seeds]:
            key = scenario if seed == o["seed"] else f"{scenario} (split seed {seed})"
            try:
                spec = ExperimentSpec(
                    scenario=scenario, strategies=strategies, runs=o["runs"], seed=seed, dataset=o["dataset"],
                    classes=_csv(o["classes"]) or None, pool_size=o["pool_size"], test_size=o["test_size"],
                    backbone=o["backbone"], weights=weights, jobs=o["jobs"],
                    loop=LoopConfig(defence_k=o["defence_k"]), poison_targets=o["poison_targets"],
                    poison_bases=o["poison_bases"], poison_max_iter=o["poison_max_iter"],
                    poison_max_attempts=o["poison_max_attempts"],
                    poison_min_confidence=o["poison_min_confidence"],
                )
                start = time.perf_counter()
                prepared = prepare_data(spec, progress=not o["no_progress"])
                report.setdefault("classes", list(prepared.classes))
                report.setdefault("mapping", default_mapping(prepared.classes))
                result = run_experiment(spec, progress=not o["no_progress"], prepared=prepared)
                wall = time.perf_counter() - start
                files = write_outputs(result, out / f"{scenario}-seed{seed}")
            except (ValueError, FileNotFoundError) as exc:
                raise CommandError(f"{scenario}: {exc}") from exc
            summary = summary_table(result)
            self.stdout.write(f"\n== {key}: target accuracy {result.target_accuracy:.4f}, {wall:.0f} s")
            self.stdout.write(format_table(summary, pool_size=result.budget_cap))
            plots = {}
            for name in strategies:
                src = Path(files[f"plot_{name}"])
                suffix = "" if seed == o["seed"] else f"_seed{seed}"
                dst = docs / plots_dir / f"{scenario}{suffix}_{name.replace('+', '_')}.png"
                shutil.copyfile(src, dst)
                plots[name] = dst.name
            asr = attack_success(result)
            for name, rate in asr.items():
                self.stdout.write(f"attack success {name}: {rate:.1%}")
            report["scenarios"][key] = {"scenario": scenario, "seed": seed,
                "target_accuracy": result.target_accuracy, "pool": result.budget_cap, "summary": summary,
                "attack_success": asr, "control_misclassification": control_misclassification(result),
                "poison": result.poison, "wall_s": wall, "data_s": prepared.seconds,
                "poison_s": prepared.poison_seconds, "strategy_s": result.seconds, "plots": plots,
                "runs": o["runs"], "dataset": o["dataset"],
            }
            self._write(report, total_start, out, docs, o)
        self._write(report, total_start, out, docs, o)
        self.stdout.write(f"\nwrote {docs / (report['results_name'] + '.md')} and {out / 'report.json'} "
                          f"({report['total_s']:.0f} s in all)")

    def _render_only(self, o: dict) -> None:
        """The markdown again from a finished run's outputs: nothing is run, every figure is the run's own.
        A report written before the summaries carried per-run labels gets them from runs.json."""
        if not o["out"]:
            raise CommandError("--render-only needs --out: the folder of the run's report.json")
        out, docs = Path(o["out"]), Path(o["docs"])
        try:
            report = json.loads((out / "report.json").read_text())
        except (OSError, ValueError) as exc:
            raise CommandError(f"no readable report.json in {out}: {exc}") from exc
        for key, r in report["scenarios"].items():
            runs_file = out / f"{r['scenario']}-seed{r['seed']}" / "runs.json"
            if not runs_file.is_file():
                continue
            runs = json.loads(runs_file.read_text())
            for name, summary in r["summary"].items():
                if "labels_by_seed" not in summary and name in runs:
                    summary["labels_by_seed"] = {
                        str(run["seed"]): float(r["pool"] if run["labels_to_target"] is None else run["labels_to_target"])
                        for run in runs[name]}
        meta = report.get("backbone") or {}
        weights = Path(report.get("weights") or "")
        if meta and "weights_digest" not in meta and weights.is_file() and file_sha256(weights) == meta.get("weights_sha256"):
            # the very file the run used (same bytes): name its weights by their digest too
            meta["weights_digest"] = weights_digest(torch.load(weights, map_location="cpu", weights_only=True))
        if o["note"]:
            report["note"] = o["note"]
        report["rendered_again"] = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        (docs / report.get("plots_dir", "results")).mkdir(parents=True, exist_ok=True)
        (out / "report.json").write_text(json.dumps(report, indent=2, default=str))
        (docs / f"{report['results_name']}.md").write_text(render_markdown(report, docs))
        if report.get("pair"):
            (docs / report["plots_dir"] / "report.json").write_text(json.dumps(report, indent=2, default=str))
            splice_pairs_section(docs / "results.md", docs)
        self.stdout.write(f"rendered {docs / (report['results_name'] + '.md')} from {out / 'report.json'}")

    def _write(self, report: dict, total_start: float, out: Path, docs: Path, o: dict) -> None:
        """Write report.json and the markdown (after every scenario: an interrupted run keeps what it did);
        a pair run also its report.json beside its plots and its section of results.md."""
        report["total_s"] = time.perf_counter() - total_start
        argv = sys.argv[2:] if len(sys.argv) > 1 and sys.argv[1] == "reproduce_paper" else []
        report["command"] = " ".join(["python manage.py reproduce_paper", *map(shlex.quote, argv)])
        report["finished"] = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        report["note"] = o["note"]
        out.mkdir(parents=True, exist_ok=True)
        (out / "report.json").write_text(json.dumps(report, indent=2, default=str))
        (docs / f"{report['results_name']}.md").write_text(render_markdown(report, docs))
        if report["pair"]:
            # the pair's summary beside its plots (small), then its section in results.md
            (docs / report["plots_dir"] / "report.json").write_text(json.dumps(report, indent=2, default=str))
            splice_pairs_section(docs / "results.md", docs)
