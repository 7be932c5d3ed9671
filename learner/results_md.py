"""``docs/results.md`` and its side reports, rendered from ``reproduce_paper``'s report (a dict read
from or written to ``report.json``): the scenario tables beside the paper's, issue 18's targets each
with its figure and verdict, and the sections that other runs own (a second data split, a second
CIFAR-10 pair, benchmark blocks between :data:`KEPT_MARKERS`). Every number comes from a report;
nothing here runs an experiment."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from scipy.stats import t as student_t

from learner.pretrain import CIFAR10_CLASSES

# The paper's Tables III-V (CIFAR-2, ResNet50 + ImageNet, desired accuracy 89 %): labels to target.
PAPER = {
    "benign": {"table": "III", "random": "1186 (182.6)", "robust": "572.3 (51.7); min/median/max 462 / 563 / 672",
               "share": 19},
    "malicious": {"table": "IV", "random": "never reaches 89 % (accuracy 0.44-0.52)",
                  "robust": "925.3 (315.9); min/median/max 580 / 875 / 1939", "share": 31},
    "poison": {"table": "V", "random": "1221 (603)", "robust": "622 (88.9); min/median/max 484 / 599.5 / 751",
               "share": 21},
}
# issue 18's targets for ours, % of the pool at most (poison: attack success at most 5 %)
TARGET_SHARE = {"benign": 12, "malicious": 15, "collusion": 15, "sleeper": 15, "spammer": 15, "poison": 15}
OURS = ("robust", "robust+density")
# the baselines a practitioner would pick against an unreliable crowd (issue 18), beside plain margin;
# +verify: robust's defences on margin's ranking with a second opinion on every label
CROWD_BASELINES = ("margin+defended", "margin+defended+verify", "margin+vote3", "margin+ds2", "margin+ds3")
PAPER_PAIR = ("airplane", "frog")
PAIR_MARKERS = ("<!-- second-pair:start -->", "<!-- second-pair:end -->")
# sections of results.md written from other benchmarks' runs, kept when the reproduction regenerates it
KEPT_MARKERS = (("<!-- training-mode:start -->", "<!-- training-mode:end -->"),)


def _row(name: str, s: dict, pool: int) -> str:
    adv = f"{s['adversaries_suspended']}/{s['adversary_runs']}" if s.get("adversary_runs") else "-"
    export = s.get("exported_accuracy_mean", float("nan"))
    low = s.get("exported_accuracy_min", float("nan"))
    return (f"| {name} | {s['mean']:.1f} ({s['std']:.1f}) | {100 * s['mean'] / pool:.1f} % | "
            f"{s['min']:.0f} / {s['50%']:.0f} / {s['max']:.0f} | {s['reached']}/{s['runs']} | "
            f"{s.get('first_mean', 0):.0f} / {s.get('secured_mean', 0):.0f} / {s.get('extra_mean', 0):.0f} | "
            f"{100 * export:.2f} % (min {100 * low:.1f} %) | {s.get('exported_99', 0)}/{s['runs']} | {adv} | "
            f"{s.get('honest_suspended', 0)} | {s['final_accuracy_mean']:.3f} |")


def qualifies(s: dict) -> bool:
    """A baseline that does the job: the target in at least 29/30 of its runs (scaled) and labels at
    least 99 % right in that many runs."""
    need = s["runs"] - max(1, s["runs"] // 30) if s["runs"] >= 30 else s["runs"]
    return s["reached"] >= need and s.get("exported_99", 0) >= need


def paired_difference(ours: dict, other: dict) -> tuple[float, float, float, int] | None:
    """Mean of ours minus other's labels over the runs both made with the same seed, and its 95 %
    t-interval: (mean, low, high, pairs); None without per-run figures (older reports)."""
    a, b = ours.get("labels_by_seed"), other.get("labels_by_seed")
    if not a or not b:
        return None
    seeds = sorted(set(a) & set(b), key=int)
    if len(seeds) < 2:
        return None
    d = np.array([a[k] - b[k] for k in seeds], dtype=float)
    half = float(student_t.ppf(0.975, len(d) - 1) * d.std(ddof=1) / np.sqrt(len(d)))
    return float(d.mean()), float(d.mean() - half), float(d.mean() + half), len(d)


def target_lines(scenario: str, r: dict) -> list[str]:
    """Issue 18's targets for ``robust`` in one scenario, each with its figure and met / NOT met."""
    summary, pool = r["summary"], r["pool"]
    ours = summary.get("robust")
    if not ours:
        return []
    def verdict(ok: bool) -> str:
        return "met" if ok else "**NOT met**"
    out = []
    runs = ours["runs"]
    out.append(f"- target reached in every run: {ours['reached']}/{runs} — {verdict(ours['reached'] == runs)}")
    out.append(f"- exported labels at least 99 % right in every run: {ours.get('exported_99', 0)}/{runs} "
               f"(min {100 * ours.get('exported_accuracy_min', float('nan')):.1f} %) — "
               f"{verdict(ours.get('exported_99', 0) == runs)}")
    share = 100 * ours["mean"] / pool
    limit = TARGET_SHARE.get(scenario)
    if limit is not None:
        out.append(f"- mean labels {ours['mean']:.1f} = {share:.1f} % of the pool (at most {limit} %) — "
                   f"{verdict(share <= limit)}")
    margin = summary.get("margin")
    if margin:
        ratio = ours["mean"] / margin["mean"]
        out.append(f"- at most 1.25x plain margin's {margin['mean']:.1f}: {ratio:.2f}x — {verdict(ratio <= 1.25)}")
    pairs = [(n, paired_difference(ours, summary[n])) for n in ("margin", *CROWD_BASELINES) if n in summary]
    pairs = [(n, d) for n, d in pairs if d is not None]
    if pairs:
        out.append(f"- robust minus each baseline, paired by run seed (mean labels, 95 % interval over {pairs[0][1][3]} "
                   "runs; an interval below 0 is a win beyond the runs' spread): "
                   + "; ".join(f"{n} {d:+.1f} [{lo:+.1f}, {hi:+.1f}]" for n, (d, lo, hi, _) in pairs))
    rivals = {n: s for n, s in summary.items() if n in CROWD_BASELINES and qualifies(s)}
    if rivals:
        best = min(rivals, key=lambda n: rivals[n]["mean"])
        out.append(f"- at most the cheapest baseline that does the job ({best}, {rivals[best]['mean']:.1f}): "
                   f"{verdict(ours['mean'] <= rivals[best]['mean'])}")
    else:
        out.append("- no crowd baseline reached the target in 29/30 runs with 99 % right labels")
    if ours.get("adversary_runs"):
        need = ours["adversary_runs"] - max(1, ours["adversary_runs"] // 30)
        out.append(f"- every adversary suspended: {ours['adversaries_suspended']}/{ours['adversary_runs']} runs — "
                   f"{verdict(ours['adversaries_suspended'] >= need)}")
        if "adversaries_attacked" in ours:
            out.append(f"  - adversaries that gave at least one attacking answer before the run stopped: "
                       f"{ours['adversaries_attacked']} of {ours['adversaries']}; of those, suspended: "
                       f"{ours['attackers_suspended']} (an adversary that never attacked has nothing to be "
                       f"caught for: a sleeper turns after its first 30 first labels)")
    out.append(f"- honest labelers suspended: {ours.get('honest_suspended', 0)} — "
               f"{verdict(ours.get('honest_suspended', 0) == 0)}")
    if r.get("attack_success"):
        rate = r["attack_success"].get("robust")
        if rate is not None:
            out.append(f"- attack success at most 5 %: {100 * rate:.1f} % — {verdict(rate <= 0.05)}")
    return out


def _weights_id(meta: dict) -> str:
    """The backbone's identity: the digest of its weights (``learner.pretrain.weights_digest``), or for
    older backbones the sha256 of the weights file (which differs between two saves of equal weights)."""
    if meta.get("weights_digest"):
        return f"weights digest `{meta['weights_digest'][:16]}…`"
    return f"weights file sha256 `{str(meta.get('weights_sha256', '?'))[:16]}…`"


def _targets(report: dict) -> list[str]:
    """The classes the run labeled (older reports: CIFAR-10 minus the backbone's source classes)."""
    if report.get("classes"):
        return list(report["classes"])
    source = set((report.get("backbone") or {}).get("source_classes") or ())
    return [c for c in CIFAR10_CLASSES if c not in source] if source else list(PAPER_PAIR)


RUN_TIME_TARGET_MIN = 60  # issue 18: the whole committed run, features and poisons cached


def run_time_line(report: dict) -> str:
    """The run's time against issue 18's 60 minutes: as run, and without the features and poison
    sets that a rerun reads from the cache (both reported, as the issue asks)."""
    total = report["total_s"]
    cached = sum(r.get("data_s", 0) + r.get("poison_s", 0) for r in report["scenarios"].values())
    warm = total - cached
    verdict = "met" if warm <= 60 * RUN_TIME_TARGET_MIN else "**NOT met**"
    return (f"Run time: {total / 60:.1f} min as run, of which {cached / 60:.1f} min went to preparing the data "
            f"(loading images, pool/test features) and crafting poison sets, which a rerun reads from the cache "
            f"(features, poisons); {warm / 60:.1f} min without them "
            f"(issue 18: the whole run within {RUN_TIME_TARGET_MIN} min, cached features and poisons counting) — "
            f"{verdict}" + ("" if total <= 60 * RUN_TIME_TARGET_MIN else
                           f"; as run it is over {RUN_TIME_TARGET_MIN} min") + ". Pretraining the backbone, "
            "when its weights are missing, comes before and is not counted here.")


def render_markdown(report: dict, docs: Path | None = None) -> str:
    """``docs/results.md`` from the reproduction's report (every number comes from the run); for
    another CIFAR-10 pair (``report["pair"]``) its own page, without the paper's CIFAR-2 numbers.
    With ``docs``, results.md also gets the section on the pair reports found there."""
    pair = report.get("pair")
    split = bool(pair) and report.get("side") == "split"
    targets = _targets(report)
    title = (f"# Second data split: {' / '.join(targets)}, --seed {report.get('seed')} (issue 18)" if split
             else f"# Second CIFAR-10 pair: {' / '.join(targets)} (issue 18, generalisation)" if pair
             else "# Reproduction results")
    lines = [title, "",
             f"Generated by `{report['command']}` (finished {report['finished']}); "
             f"{report['total_s'] / 60:.1f} min in all. Do not edit by hand: rerun the command."
             + (f" Rendered again from the run's own outputs on {report['rendered_again']} (`--render-only`)."
                if report.get("rendered_again") else ""), ""]
    if report["scenarios"]:
        lines += [run_time_line(report), ""]
    if split:
        lines += [f"The same engine, defaults, strategies and pair as [results.md](results.md), on another data "
                  f"split: the pool (and the test set, where the source holds more test images than "
                  f"`--test-size`) and every run's seed drawn from `--seed {report.get('seed')}` instead of 0. "
                  "The paper's numbers are in results.md.", ""]
    elif pair:
        lines += ["The same engine, defaults and strategies as [results.md](results.md) (airplane / frog), on "
                  "another CIFAR-10 pair whose backbone never saw either class. The paper's CIFAR-2 numbers "
                  "do not apply here.", ""]
    if report.get("note"):
        lines += [f"**Note.** {report['note']}", ""]
    meta = report.get("backbone")
    first = next(iter(report["scenarios"].values()), None)
    lines += ["## Backbone", ""]
    if meta:
        lines += [
            f"- `{meta['arch']}` (CIFAR ResNet-20, 64-d features) pretrained from scratch with "
            f"`manage.py pretrain_backbone` on {meta['train_size']} images of the "
            f"{len(meta['source_classes'])} CIFAR-10 classes {', '.join(meta['source_classes'])} "
            f"(never {' or '.join(targets)}), from the JPEG tarball (JPEG artefacts: numbers are not exactly "
            "comparable with published CIFAR results).",
            f"- {meta['epochs']} epochs, {meta['optimizer']}, peak lr {meta['lr']}, batch {meta['batch_size']}, "
            f"crop + flip, seed {meta['seed']}; {meta['train_time_s'] / 60:.1f} min of training on this shared "
            f"2-core machine; source test accuracy **{100 * meta['source_test_accuracy']:.1f} %** "
            f"({meta['test_size']} test images of the source classes).",
            f"- data fingerprint `{meta['data_fingerprint']}`, {_weights_id(meta)} "
            f"(in `$ROBUSTAL_CACHE_DIR/backbones/{meta['name']}/`, never committed).",
        ]
    else:
        lines += [f"- weights: {report.get('weights') or 'random initialisation (smoke run)'}"]
    if first:
        lines += [f"- full-pool accuracy (desired accuracy; linear head on the frozen features, whole clean "
                  f"pool of {first['pool']}): **{100 * first['target_accuracy']:.1f} %**"
                  + ("." if pair else " — the paper's ResNet50 + ImageNet: 89 %.")]
    if report.get("mapping"):
        lines += ["- adversaries' class mapping (malicious, collusion, sleeper): "
                  + ", ".join(f"{a} → {b}" for a, b in report["mapping"].items()) + "."]
    lines.append("")
    for key, r in report["scenarios"].items():
        pool = r["pool"]
        scenario = r.get("scenario", key)
        paper = {} if pair else PAPER.get(scenario, {})
        title = f"{key[0].upper()}{key[1:]}" + (f" (paper Table {paper['table']})" if paper
                                               else "" if pair else " (beyond the paper)")
        lines += [f"## {title}", "",
                  f"{r['runs']} runs per strategy on `{r['dataset']}`; desired accuracy "
                  f"{100 * r['target_accuracy']:.2f} %; labels bought until the test accuracy first reaches it "
                  f"(re-annotations and the secured set included; a run that never does counts as the cap "
                  f"{pool}). Wall time {r['wall_s'] / 60:.1f} min (features/poisons {r['data_s'] + r['poison_s']:.0f} s; "
                  + ", ".join(f"{k} {v:.0f} s" for k, v in r["strategy_s"].items()) + ").", "",
                  "| strategy | mean (std) | share of pool | min / median / max | reached | first / S / extra "
                  "| exported labels right | runs >= 99 % | adversaries suspended | honest suspended "
                  "| final accuracy |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for name, s in r["summary"].items():
            lines.append(_row(name, s, pool))
        lines += ["", "first / S / extra: mean labels by kind at the target (first labels, the secured set, "
                      "audits + re-annotations + a redundancy baseline's extra labels). Exported labels: every "
                      "resolved label the run would export when it stops (S included) against the truth. "
                      "margin+defended gets robust's defence package; +vote3 / +ds2 / +ds3 ask 3 / 2 / 3 "
                      "labelers per item and aggregate with crowd-kit (majority / Dawid-Skene)."]
        if paper:
            lines += ["", f"Paper (Table {paper['table']}, 3,000-image pool): random {paper['random']}; "
                          f"proposed {paper['robust']} (about {paper['share']} % of the pool)."]
        checks = target_lines(scenario, r)
        if checks:
            lines += ["", "Issue 18's targets for `robust` here:", "", *checks]
        if r.get("attack_success"):
            lines += ["", "Attack success rate (share of runs whose final model puts the target into the base class):", ""]
            control = r.get("control_misclassification") or {}
            lines += ["| strategy | attack success | target misclassified without poisons (control) "
                      "| poisons quarantined (mean of 50) |", "|---|---|---|---|"]
            for name, rate in r["attack_success"].items():
                hits = r["poison"]["hits"][name]
                ctl = [h["hit_without_poisons"] for h in hits if "hit_without_poisons" in h]
                ctl_txt = f"{100 * control[name]:.1f} % ({sum(ctl)}/{len(ctl)})" if name in control else "-"
                quar = np.mean([h.get("poisons_quarantined", 0) for h in hits])
                lines.append(f"| {name} | {100 * rate:.1f} % ({sum(h['hit'] for h in hits)}/{len(hits)}) | "
                             f"{ctl_txt} | {quar:.1f} |")
            lines += ["", "The control runs are the same runs (same seeds, same strategy) on the clean pool with "
                          "the same target watched: a half-trained model can get a target wrong without any poison."]
            p = r["poison"]
            tried = len({a["target_index"] for a in p["attempts"]})
            lines += ["", f"Poison sets: {len(p['sets'])} successful of {tried} targets tried "
                          f"({p['seconds']:.0f} s crafting + success checks, batched torch path); run r faces set "
                          f"r mod {len(p['sets'])}. Watermarks used: "
                          + ", ".join(f"{s['watermark']}" for s in p["sets"]) + "."]
        lines += ["", "Accuracy against labels bought, one line per run:", ""]
        plots = report.get("plots_dir", "results")
        lines += [f"![{scenario} {name}]({plots}/{png})" for name, png in r["plots"].items()]
        lines.append("")
    if docs is not None and not pair:
        section = pairs_section(docs)
        if section:
            lines += [*section, ""]
        lines += [block + "\n" for block in kept_sections(docs / "results.md")]
    lines += ["## Exact command", "", "```bash", report["command"], "```", ""]
    return "\n".join(lines)


def kept_sections(results_md: Path) -> list[str]:
    """The blocks of an existing ``results.md`` between :data:`KEPT_MARKERS` (markers included)."""
    if not results_md.is_file():
        return []
    text, out = results_md.read_text(), []
    for start, end in KEPT_MARKERS:
        if start in text and end in text.split(start, 1)[1]:
            out.append(start + text.split(start, 1)[1].split(end, 1)[0] + end)
    return out


PAIR_ROWS = ("margin", "margin+defended", "margin+vote3", "margin+ds2", "margin+ds3", "robust", "robust+density")


def pairs_section(docs: Path) -> list[str]:
    """results.md's "Second data split" and "Second CIFAR-10 pair" sections (between
    :data:`PAIR_MARKERS`) from every ``docs/results/<name>/report.json`` present; empty when there is none."""
    reports = []
    for f in sorted((docs / "results").glob("*/report.json")):
        r = json.loads(f.read_text())
        if r.get("pair") and r.get("scenarios"):
            reports.append(r)
    if not reports:
        return []
    lines = [PAIR_MARKERS[0]]
    splits = [r for r in reports if r.get("side") == "split"]
    pairs = [r for r in reports if r.get("side") != "split"]
    if splits:
        lines += ["## Second data split", "",
                  "Issue 18: results must not rest on one draw of the data. The same engine, defaults, strategies "
                  "and pair with the pool (and the test set, where the source holds more test images than "
                  "`--test-size`) and the run seeds drawn from another `--seed` (written by "
                  "`reproduce_paper --seed N`; this section is rewritten from the split's `report.json` whenever "
                  "either report is regenerated)."]
        for r in splits:
            lines += _side_table(r, f"`--seed {r.get('seed')}`")
        lines.append("")
    if pairs:
        lines += ["## Second CIFAR-10 pair", "",
                  "Issue 18: the method must not be tuned to airplane / frog. The same engine, defaults and "
                  "strategies on another CIFAR-10 pair, with a backbone pretrained the same way on the eight other "
                  "classes (written by `reproduce_paper --dataset cifar10 --classes a,b`; this section is rewritten "
                  "from the pair's `report.json` whenever either report is regenerated)."]
        for r in pairs:
            lines += _side_table(r, f"**{' / '.join(_targets(r))}**")
    if lines[-1] == "":
        lines.pop()
    lines.append(PAIR_MARKERS[1])
    return lines


def _side_table(r: dict, name: str) -> list[str]:
    """One side report (another split or pair) as a line of context and its compact table."""
    meta = r.get("backbone") or {}
    first = next(iter(r["scenarios"].values()))
    mapping = ", ".join(f"{a} → {b}" for a, b in (r.get("mapping") or {}).items())
    lines = ["", f"{name} — full report: [{r['results_name']}.md]({r['results_name']}.md) "
                 f"(finished {r['finished']}, {r['total_s'] / 60:.1f} min of runs"
                 + (f" after {meta['train_time_s'] / 60:.1f} min of pretraining"
                    if meta.get("train_time_s") and r.get("side") != "split" else "")
                 + "). Backbone "
                 f"`{meta.get('name', '?')}` ({_weights_id(meta)}, "
                 f"{meta.get('epochs', '?')} epochs on "
                 f"{', '.join(meta.get('source_classes') or ['?'])}; source test accuracy "
                 f"{100 * (meta.get('source_test_accuracy') or float('nan')):.1f} %); desired accuracy "
                 f"{100 * first['target_accuracy']:.1f} %; {first['runs']} runs per cell"
                 + (f"; malicious mapping {mapping}" if mapping else "") + ".", "",
             "| scenario | strategy | labels to target, mean (std) | share of pool | reached | "
             "exported labels right (min) | runs >= 99 % | adversary suspended | honest suspended |",
             "|---|---|---|---|---|---|---|---|---|"]
    for key, sc in r["scenarios"].items():
        for strategy in PAIR_ROWS:
            s = sc["summary"].get(strategy)
            if not s:
                continue
            adv = f"{s['adversaries_suspended']}/{s['adversary_runs']}" if s.get("adversary_runs") else "-"
            lines.append(
                f"| {key} | {strategy} | {s['mean']:.1f} ({s['std']:.1f}) | {100 * s['mean'] / sc['pool']:.1f} % | "
                f"{s['reached']}/{s['runs']} | {100 * s.get('exported_accuracy_mean', float('nan')):.2f} % "
                f"({100 * s.get('exported_accuracy_min', float('nan')):.1f} %) | {s.get('exported_99', 0)}/{s['runs']} "
                f"| {adv} | {s.get('honest_suspended', 0)} |")
    return lines


def splice_pairs_section(results_md: Path, docs: Path) -> bool:
    """Rewrite only the "Second CIFAR-10 pair" section of an existing ``results.md`` (between
    :data:`PAIR_MARKERS`; inserted before "## Exact command" the first time); the rest of the file
    is kept byte for byte. False when there is no results.md or no pair report."""
    section = pairs_section(docs)
    if not results_md.is_file() or not section:
        return False
    text = results_md.read_text()
    block = "\n".join(section)
    start, end = PAIR_MARKERS
    if start in text and end in text:
        head, rest = text.split(start, 1)
        text = head + block + rest.split(end, 1)[1]
    elif "\n## Exact command" in text:
        head, rest = text.split("\n## Exact command", 1)
        text = head + "\n" + block + "\n\n## Exact command" + rest
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    results_md.write_text(text)
    return True
