"""Benchmark: ``training_mode`` head vs finetune on CIFAR-2 with the pretrained ResNet-20 (issue 19).

Two parts, both on the data ``reproduce_paper`` uses (``simulate --dataset cifar2 --pool-size
3000 --test-size 2000``: airplane / frog, pool 3,000, test 2,000, split seed ``--seed``) and the named pretrained backbone
(``$ROBUSTAL_CACHE_DIR/backbones/<--pretrain-name>/weights.pt``, or ``--weights``):

1. Full-pool accuracy (the target of the loop runs): ``head`` is
   :func:`learner.loop.full_pool_accuracy` (linear head on the frozen features, whole clean pool);
   ``finetune`` first fine-tunes the backbone's last stage on the whole clean pool with
   :class:`learner.finetune.FineTuner` (the settings the loop uses), then trains the same head on
   the new features and measures it on the test set through the same stage. One number per head
   seed (``--full-pool-seeds``; the fine-tuning uses the same seed).
2. The robust loop (:func:`learner.loop.run_loop`, the default settings of ``simulate``;
   ``--scenario`` benign by default) per cell = training mode x augmentation space, runs with seeds
   ``seed .. seed + runs - 1`` in ``--jobs`` processes (one torch thread each). Every cell stops at
   the same target: head's full-pool accuracy (``--finetune-own-target`` adds a finetune cell
   whose target is finetune's own). Per cell: mean labels bought to the target (a run that never
   reaches it counts as the pool size), runs that reached it, mean final test accuracy (at the
   stop), mean test accuracy once 100 / 200 labels were bought (a run that stopped earlier counts
   with its last accuracy), and the seconds of one loop step (the engine calls that complete an
   iteration: audit, crafting, training, refit; iteration 0 crafts nothing and is left out; under
   finetune the simulator's re-extraction of the test set, which a live step does not do, is
   measured apart and left out too), plus the seconds per run (once per run: finetune computes
   the last stage's inputs of pool and test).

    .venv/bin/python bench/bench_finetune.py --pretrain-name cifar8-resnet20-e3 --runs 10 --jobs 2
    .venv/bin/python bench/bench_finetune.py --spaces pixel --runs 3 --full-pool-seeds 0 --jobs 2
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

LABEL_MARKS = (100, 200)


def _settings(epochs: int | None, lr: float | None):
    from learner.finetune import FineTuneSettings

    s = FineTuneSettings()
    if epochs is not None:
        s = replace(s, epochs=epochs)
    if lr is not None:
        s = replace(s, learning_rate=lr)
    return s


def full_pool_finetune(data, settings, head, seed: int) -> tuple[float, float]:
    """(test accuracy, seconds): the last stage fine-tuned on the whole clean pool, then the head."""
    from learner.finetune import FineTuner, stage_inputs
    from learner.loop import full_pool_accuracy

    start = time.perf_counter()
    tuner = FineTuner(data.backbone, stage_inputs(data.backbone, data.pool_images), settings=settings)
    n = len(data.pool_labels)
    tuner.fit(np.arange(n), data.pool_labels, np.ones(n), data.n_classes, seed)
    tuned = replace(data, pool_features=tuner.features(),
                    test_features=tuner.features(stage_inputs(data.backbone, data.test_images)))
    acc = full_pool_accuracy(tuned, head, seed=seed)
    return acc, time.perf_counter() - start


def _timed_run(data, config, labelers, seed: int, settings) -> dict:
    """One :func:`learner.loop.run_loop` run with its step times (in a worker process)."""
    import torch

    from learner.finetune import refit_hook
    from learner.loop import _Run

    torch.set_num_threads(1)  # as learner.experiments: runs are parallel across processes

    class TimedRun(_Run):
        def __init__(self, *args):
            self.step_seconds: dict[int, float] = {}
            self.eval_seconds: dict[int, float] = {}
            start = time.perf_counter()
            super().__init__(*args)
            if self.tuner is not None:
                self.tuner.settings = settings
            self.setup_seconds = time.perf_counter() - start

        def _refit(self):  # _Run._refit, with the test set's re-extraction timed apart
            def follow(tuner, _features):
                t0 = time.perf_counter()
                self.test_features = tuner.features(self.test_inputs)
                it = self.state.iteration
                self.eval_seconds[it] = self.eval_seconds.get(it, 0.0) + time.perf_counter() - t0
            return refit_hook(self.tuner, self.data.n_classes, after=follow)

        def step(self, previous):
            it = self.state.iteration
            t0 = time.perf_counter()
            plan = super().step(previous)
            self.step_seconds[it] = self.step_seconds.get(it, 0.0) + time.perf_counter() - t0
            return plan

    start = time.perf_counter()
    run = TimedRun(data, config, labelers, seed)
    res = run.run()
    steps = {it: s - run.eval_seconds.get(it, 0.0) for it, s in run.step_seconds.items()}
    history = [(h.labels_bought, h.test_accuracy) for h in res.history]
    at = {}
    for mark in LABEL_MARKS:
        before = [acc for bought, acc in history if bought <= mark]
        at[mark] = before[-1] if before else None
    return {"seed": seed, "labels_to_target": res.labels_to_target, "reached": res.reached,
            "final_accuracy": res.final_accuracy, "stop": res.stop_reason, "iterations": len(res.history),
            "labels_bought": res.history[-1].labels_bought, "accuracy_at": at,
            "craft_failed": sum(h.craft_failed for h in res.history),
            "step_seconds": [steps[k] for k in sorted(steps)],
            "test_reextraction_seconds": sum(run.eval_seconds.values()),
            "setup_seconds": run.setup_seconds, "run_seconds": time.perf_counter() - start,
            "exported_accuracy": res.exported_accuracy,
            "adversaries_suspended": bool(res.malicious) and all(res.trust[i]["status"] == "suspended"
                                                                 for i in res.malicious)}


def summarize(rows: list[dict], cap: int) -> dict:
    labels = np.array([r["labels_to_target"] if r["reached"] else cap for r in rows], dtype=float)
    steps = [s for r in rows for s in r["step_seconds"][1:]]
    out = {"runs": len(rows), "reached": int(sum(r["reached"] for r in rows)),
           "labels_mean": float(labels.mean()), "labels_std": float(labels.std(ddof=1)) if len(rows) > 1 else 0.0,
           "labels_median": float(np.median(labels)), "labels_min": float(labels.min()),
           "labels_max": float(labels.max()),
           "final_accuracy_mean": float(np.mean([r["final_accuracy"] for r in rows])),
           "step_seconds_mean": float(np.mean(steps)) if steps else float("nan"),
           "step_seconds_max": float(np.max(steps)) if steps else float("nan"),
           "run_seconds_mean": float(np.mean([r["run_seconds"] for r in rows])),
           "setup_seconds_mean": float(np.mean([r["setup_seconds"] for r in rows])),
           "craft_failed_mean": float(np.mean([r["craft_failed"] for r in rows]))}
    for mark in LABEL_MARKS:
        vals = [r["accuracy_at"][mark] for r in rows if r["accuracy_at"][mark] is not None]
        out[f"accuracy_at_{mark}"] = float(np.mean(vals)) if vals else float("nan")
    return out


def format_cells(cells: list[dict]) -> str:
    head = (f"{'mode':<9}{'space':<8}{'target (of)':>17}{'runs':>5}{'labels mean (std)':>19}{'median':>8}"
            f"{'min-max':>11}{'reached':>9}{'final acc':>10}"
            + "".join(f"{'acc@' + str(m):>8}" for m in LABEL_MARKS)
            + f"{'step s':>8}{'max s':>7}{'run s':>7}")
    lines = [head, "-" * len(head)]
    for c in cells:
        if "summary" not in c:
            continue
        s = c["summary"]
        lines.append(
            f"{c['mode']:<9}{c['space']:<8}{c['target']:>8.4f} ({c['target_of']:<8}){s['runs']:>5}"
            f"{s['labels_mean']:>11.1f} ({s['labels_std']:>5.1f})"
            f"{s['labels_median']:>8.0f}{s['labels_min']:>5.0f}-{s['labels_max']:<5.0f}"
            f"{s['reached']:>5}/{s['runs']:<3}{s['final_accuracy_mean']:>10.4f}"
            + "".join(f"{s[f'accuracy_at_{m}']:>8.4f}" for m in LABEL_MARKS)
            + f"{s['step_seconds_mean']:>8.2f}{s['step_seconds_max']:>7.1f}{s['run_seconds_mean']:>7.0f}")
    return "\n".join(lines)


def markdown(reports: list[dict]) -> str:
    """The tables of one or more ``--json`` reports as markdown (for docs/results.md)."""
    lines = []
    for r in reports:
        fp = r["full_pool"]
        if fp.get("finetune"):
            seeds = sorted(fp["finetune"], key=int)
            heads = [fp["head"][s] for s in seeds]
            fts = [fp["finetune"][s] for s in seeds]
            lines += [f"| full pool ({r['pool']:,} true labels) | " + " | ".join(f"seed {s}" for s in seeds) + " | mean |",
                      "|---|" + "---|" * (len(seeds) + 1),
                      "| head | " + " | ".join(f"{100 * v:.2f} %" for v in heads) + f" | {100 * np.mean(heads):.2f} % |",
                      "| finetune | " + " | ".join(f"{100 * v:.2f} %" for v in fts) + f" | {100 * np.mean(fts):.2f} % |",
                      ""]
    lines += ["| scenario | mode | augmentation | target | runs | labels to target, mean (std) | min / median / max | "
              "reached | final accuracy | accuracy at 100 / 200 labels | s per loop step (max) | s per run |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in reports:
        for c in r["cells"]:
            if "summary" not in c:  # interrupted before its first run
                continue
            s = c["summary"]
            lines.append(
                f"| {r['args']['scenario']} | {c['mode']} | {c['space']} | {100 * c['target']:.2f} % ({c['target_of']}'s"
                + (f", budget {r['budget']}" if r.get("budget", r["pool"]) != r["pool"] else "") + f") | {s['runs']} | "
                f"{s['labels_mean']:.1f} ({s['labels_std']:.1f}) | {s['labels_min']:.0f} / {s['labels_median']:.0f} / "
                f"{s['labels_max']:.0f} | {s['reached']}/{s['runs']} | {100 * s['final_accuracy_mean']:.2f} % | "
                + " / ".join(f"{100 * s[f'accuracy_at_{m}']:.1f} %" for m in LABEL_MARKS)
                + f" | {s['step_seconds_mean']:.2f} ({s['step_seconds_max']:.1f}) | {s['run_seconds_mean']:.0f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="cifar2")
    parser.add_argument("--classes", default="")
    parser.add_argument("--pool-size", type=int, default=3000, help="the paper's (and reproduce_paper's) 3,000")
    parser.add_argument("--test-size", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0, help="split seed; run r uses seed + r")
    parser.add_argument("--backbone", default="resnet20")
    parser.add_argument("--pretrain-name", default="cifar8-resnet20-e3",
                        help="the cached backbone $ROBUSTAL_CACHE_DIR/backbones/<name>/weights.pt")
    parser.add_argument("--weights", default=None, help="a weights file (overrides --pretrain-name)")
    parser.add_argument("--scenario", default="benign")
    parser.add_argument("--modes", default="head,finetune")
    parser.add_argument("--spaces", default="feature", help="feature, pixel or feature,pixel")
    parser.add_argument("--runs", type=int, default=10, help="runs per feature-space cell")
    parser.add_argument("--pixel-runs", type=int, default=None, help="runs per pixel-space cell (default --runs)")
    parser.add_argument("--finetune-own-target", action="store_true",
                        help="also a finetune cell (feature space) whose target is finetune's full-pool accuracy")
    parser.add_argument("--budget", type=int, default=None, help="labels a run may buy (default: the pool size); "
                        "a run that never reaches its target counts as this")
    parser.add_argument("--full-pool-seeds", type=int, default=3, help="head/fine-tuning seeds of part 1 (0: skip "
                        "finetune's full-pool accuracy; head's at --seed is always computed: it is the target)")
    parser.add_argument("--ft-epochs", type=int, default=None, help="FineTuneSettings.epochs (default: the loop's)")
    parser.add_argument("--ft-lr", type=float, default=None, help="FineTuneSettings.learning_rate (default: the loop's)")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="torch threads of part 1 and the data preparation")
    parser.add_argument("--json", default="", help="write every figure and run here")
    parser.add_argument("--markdown", nargs="+", metavar="JSON", default=None,
                        help="print the tables of these --json reports as markdown and exit (runs nothing)")
    args = parser.parse_args(argv)
    if args.markdown:
        print(markdown([json.loads(Path(f).read_text()) for f in args.markdown]))
        return 0

    import platform

    import torch
    from joblib import Parallel, delayed

    from learner.experiments import ExperimentSpec, labeler_pool, prepare_data
    from learner.heads import HeadConfig
    from learner.loop import LoopConfig, full_pool_accuracy
    from learner.pretrain import pretrained_dir

    torch.set_num_threads(args.threads)
    weights = args.weights or str(pretrained_dir(args.pretrain_name) / "weights.pt")
    if not Path(weights).is_file():
        parser.error(f"weights not found: {weights}")
    settings = _settings(args.ft_epochs, args.ft_lr)
    spec = ExperimentSpec(scenario=args.scenario, strategies=("robust",), runs=args.runs, seed=args.seed,
                          dataset=args.dataset, classes=tuple(c for c in args.classes.split(",") if c) or None,
                          pool_size=args.pool_size, test_size=args.test_size, backbone=args.backbone,
                          weights=weights, loop=LoopConfig(training_mode="finetune", augment_space="pixel"))
    t0 = time.perf_counter()
    prepared = prepare_data(spec)  # images and backbone included (finetune + pixel)
    data = prepared.loop_data
    cap = args.budget or len(data.pool_labels)
    head = HeadConfig()
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    print(f"{prepared.dataset_name} {', '.join(prepared.classes)}: pool {len(data.pool_labels)}, budget {cap}, test {len(data.test_labels)}, "
          f"split seed {args.seed}; {args.backbone} weights {weights}; data {time.perf_counter() - t0:.1f} s")
    print(f"finetune settings {asdict(settings)}; CPU {cpu}, jobs {args.jobs}, torch threads per run 1")
    report = {"args": vars(args), "weights": weights, "finetune_settings": asdict(settings), "cpu": cpu,
              "started": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "pool": len(data.pool_labels), "budget": cap,
              "test": len(data.test_labels), "full_pool": {}, "cells": []}

    def save():
        if args.json:
            Path(args.json).write_text(json.dumps(report, indent=1))

    # -- part 1: full-pool accuracies ------------------------------------------------------------
    target_head = full_pool_accuracy(data, head, seed=args.seed)
    seeds = [args.seed + k for k in range(args.full_pool_seeds)]
    fp = {"head": {args.seed: target_head}, "finetune": {}, "finetune_seconds": {}}
    for s in seeds:
        fp["head"][s] = full_pool_accuracy(data, head, seed=s)
        acc, secs = full_pool_finetune(data, settings, head, s)
        fp["finetune"][s], fp["finetune_seconds"][s] = acc, secs
        print(f"full pool, seed {s}: head {fp['head'][s]:.4f}, finetune {acc:.4f} ({secs:.1f} s)", flush=True)
    report["full_pool"] = {k: {str(s): v for s, v in d.items()} for k, d in fp.items()}
    save()
    print(f"\nfull-pool accuracy (test {len(data.test_labels)}): head {np.mean(list(fp['head'].values())):.4f}"
          + (f", finetune {np.mean(list(fp['finetune'].values())):.4f} (mean of seeds {seeds})" if seeds else ""))

    # -- part 2: loop runs ------------------------------------------------------------------------
    labelers = labeler_pool(spec, prepared.classes)
    cells = [(m, sp, "head") for sp in args.spaces.split(",") if sp for m in args.modes.split(",") if m]
    if args.finetune_own_target:
        if args.seed not in fp["finetune"]:
            parser.error("--finetune-own-target needs --full-pool-seeds >= 1")
        cells.append(("finetune", "feature", "finetune"))
    for mode, space, target_of in cells:
        target = target_head if target_of == "head" else fp["finetune"][args.seed]
        runs = args.pixel_runs if space == "pixel" and args.pixel_runs is not None else args.runs
        config = LoopConfig(strategy="robust", training_mode=mode, augment_space=space, target_accuracy=target,
                            budget=cap)
        start = time.perf_counter()
        rows = []
        cell = {"mode": mode, "space": space, "target_of": target_of, "target": target, "complete": False,
                "rows": rows}
        report["cells"].append(cell)
        jobs = [delayed(_timed_run)(data, config, labelers, args.seed + r, settings) for r in range(runs)]
        for row in Parallel(n_jobs=args.jobs, return_as="generator")(jobs):
            rows.append(row)
            cell.update(wall_seconds=time.perf_counter() - start, summary=summarize(rows, cap))
            save()  # an interrupted benchmark keeps the runs it finished
            print(f"  {mode}/{space} seed {row['seed']}: {row['labels_to_target'] or '-'} labels, final "
                  f"{row['final_accuracy']:.4f}, {row['iterations']} iterations, step "
                  f"{np.mean(row['step_seconds'][1:] or [float('nan')]):.2f} s, run {row['run_seconds']:.0f} s",
                  flush=True)
        cell["complete"] = True
        save()
        print(f"{mode}/{space}: {cell['wall_seconds']:.0f} s wall", flush=True)

    print(f"\nrobust loop, {args.scenario}, target = head's full-pool accuracy {target_head:.4f} "
          f"(unless the target column says otherwise); a run that never reaches it counts as {cap}")
    print(format_cells(report["cells"]))
    print(f"acc@N: mean test accuracy once N labels were bought; step s: mean (max) seconds of one loop step, "
          f"iteration 0 left out; run s: mean seconds per run ({args.jobs} runs in parallel, one thread each)")
    report["finished"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    save()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
