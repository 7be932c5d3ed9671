"""``manage.py reproduce_paper`` end to end on a tiny digits slice (no shared data needed), and the
``pretrain_backbone`` command on a tiny slice of the shared CIFAR-10 tarball (skipped without it)."""
from __future__ import annotations

import json

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError


def test_reproduce_paper_digits_smoke(tmp_path, monkeypatch):
    monkeypatch.setenv("ROBUSTAL_CACHE_DIR", str(tmp_path / "cache"))
    out, docs = tmp_path / "out", tmp_path / "docs"
    call_command(
        "reproduce_paper", "--dataset", "digits", "--classes", "1,7", "--pool-size", "80", "--test-size", "60",
        "--backbone", "flatten", "--weights", "none", "--scenarios", "benign,malicious",
        "--strategies", "random,margin+vote3,robust", "--runs", "1", "--jobs", "1", "--out", str(out),
        "--docs", str(docs), "--no-progress", "--note", "smoke run", "--split-seeds", "3",
    )
    report = json.loads((out / "report.json").read_text())
    assert list(report["scenarios"]) == ["benign", "benign (split seed 3)", "malicious", "malicious (split seed 3)"]
    md = (docs / "results.md").read_text()
    for key, r in report["scenarios"].items():
        assert set(r["summary"]) == {"random", "margin+vote3", "robust"}
        for name, png in r["plots"].items():
            assert (docs / "results" / png).stat().st_size > 1000
            assert f"results/{png}" in md
        robust = r["summary"]["robust"]
        assert f"| robust | {robust['mean']:.1f} (" in md  # the table shows the measured numbers
        assert f"{robust['first_mean']:.0f} / {robust['secured_mean']:.0f} / {robust['extra_mean']:.0f}" in md
        vote = r["summary"]["margin+vote3"]
        assert vote["extra_mean"] == 2 * vote["first_mean"] and vote["secured_mean"] == 0  # 3 labels per item
        assert (out / f"{r['scenario']}-seed{r['seed']}" / "summary.json").is_file()
    assert "smoke run" in md and "Paper (Table III" in md and "Paper (Table IV" in md
    assert "Issue 18's targets for `robust` here:" in md and "every adversary suspended" in md
    mal = report["scenarios"]["malicious"]["summary"]["robust"]
    assert mal["adversaries"] == 1 and mal["adversaries_attacked"] <= 1
    assert (f"adversaries that gave at least one attacking answer before the run stopped: "
            f"{mal['adversaries_attacked']} of 1") in md


def test_reproduce_paper_rejects_bad_input(tmp_path):
    with pytest.raises(CommandError, match="unknown suffix"):
        call_command("reproduce_paper", "--strategies", "robust+magic", "--weights", "none",
                     "--docs", str(tmp_path), "--out", str(tmp_path))
    with pytest.raises(CommandError, match="weights file not found"):
        call_command("reproduce_paper", "--weights", str(tmp_path / "missing.pt"),
                     "--docs", str(tmp_path), "--out", str(tmp_path))


def test_pretrain_backbone_command_on_a_tiny_cifar_slice(shared_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("ROBUSTAL_SHARED_DIR", str(shared_dir))
    monkeypatch.setenv("ROBUSTAL_CACHE_DIR", str(tmp_path / "cache"))
    call_command("pretrain_backbone", "--classes", "cat,dog", "--arch", "smallcnn", "--epochs", "1",
                 "--train-size", "64", "--test-size", "32", "--name", "tiny", "--no-progress", "--threads", "1")
    meta = json.loads((tmp_path / "cache" / "backbones" / "tiny" / "meta.json").read_text())
    assert meta["source_classes"] == ["cat", "dog"] and meta["train_size"] == 64 and meta["epochs"] == 1
    assert (tmp_path / "cache" / "backbones" / "tiny" / "weights.pt").is_file()
    assert "source test accuracy" in capsys.readouterr().out
    with pytest.raises(CommandError, match="unknown class"):
        call_command("pretrain_backbone", "--classes", "unicorn", "--epochs", "1", "--name", "bad", "--no-progress")


def test_results_markdown_shows_attack_success_next_to_the_control():
    from learner.management.commands.reproduce_paper import render_markdown

    row = {"mean": 450.0, "std": 90.0, "min": 300.0, "50%": 440.0, "max": 700.0, "reached": 2, "runs": 2,
           "final_accuracy_mean": 0.93}
    hits = {"robust": [{"hit": True, "hit_without_poisons": False, "poisons_quarantined": 0},
                       {"hit": False, "hit_without_poisons": False, "poisons_quarantined": 0}],
            "robust+density": [{"hit": False, "hit_without_poisons": True, "poisons_quarantined": 50},
                               {"hit": False, "hit_without_poisons": False, "poisons_quarantined": 48}]}
    report = {"command": "python manage.py reproduce_paper", "finished": "now", "total_s": 60.0, "note": "",
              "backbone": None, "weights": None, "scenarios": {"poison": {
                  "pool": 3000, "target_accuracy": 0.93, "runs": 2, "dataset": "cifar2", "wall_s": 60.0,
                  "data_s": 1.0, "poison_s": 2.0, "strategy_s": {"robust": 3.0, "robust+density": 4.0},
                  "summary": {"robust": row, "robust+density": row},
                  "attack_success": {"robust": 0.5, "robust+density": 0.0},
                  "control_misclassification": {"robust": 0.0, "robust+density": 0.5},
                  "poison": {"hits": hits, "attempts": [{"target_index": 7}], "seconds": 2.0,
                             "sets": [{"watermark": 0.1}]},
                  "plots": {"robust": "poison_robust.png"}}}}
    md = render_markdown(report)
    assert "| robust | 50.0 % (1/2) | 0.0 % (0/2) | 0.0 |" in md
    assert "| robust+density | 0.0 % (0/2) | 50.0 % (1/2) | 49.0 |" in md
    assert "- mean labels 450.0 = 15.0 % of the pool (at most 15 %) — met" in md
    assert "- attack success at most 5 %: 50.0 % — **NOT met**" in md


def test_another_pair_gets_its_own_backbone_name_and_report_name():
    from learner.management.commands.reproduce_paper import pretrain_plan, results_name, target_classes
    from learner.pretrain import CIFAR2_SOURCE_CLASSES

    assert target_classes("cifar2", ()) == ("airplane", "frog")
    assert target_classes("cifar10", ("deer", "truck")) == ("deer", "truck")
    assert target_classes("digits", ("1", "7")) is None
    assert pretrain_plan(("airplane", "frog"), "resnet20", 3) == (CIFAR2_SOURCE_CLASSES, "cifar8-resnet20-e3")
    source, name = pretrain_plan(("deer", "truck"), "resnet20", 3)
    assert name == "cifar8-no-deer-truck-resnet20-e3" and "deer" not in source and "truck" not in source
    assert "airplane" in source and "frog" in source and len(source) == 8
    assert results_name("cifar2", ()) == "results" and results_name("digits", ("1", "7")) == "results"
    assert results_name("cifar10", ("deer", "truck")) == "results-deer-truck"
    with pytest.raises(ValueError, match="plain name"):
        results_name("cifar10", ("deer", "truck"), "../results")


def test_a_cached_backbone_that_saw_the_pair_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("ROBUSTAL_CACHE_DIR", str(tmp_path / "cache"))
    folder = tmp_path / "cache" / "backbones" / "cifar8-resnet20-e3"
    folder.mkdir(parents=True)
    (folder / "weights.pt").write_bytes(b"not read: refused first")
    (folder / "meta.json").write_text(json.dumps({"source_classes": ["automobile", "bird", "cat", "deer", "dog",
                                                                     "horse", "ship", "truck"]}))
    with pytest.raises(CommandError, match="pretrained on deer, truck"):
        call_command("reproduce_paper", "--dataset", "cifar10", "--classes", "deer,truck",
                     "--pretrain-name", "cifar8-resnet20-e3", "--pretrain-epochs", "3",
                     "--docs", str(tmp_path / "docs"), "--out", str(tmp_path / "out"), "--no-progress")
    assert not (tmp_path / "docs").exists()  # refused before anything was written


def test_a_pair_report_leaves_results_md_and_adds_its_section(tmp_path, monkeypatch):
    monkeypatch.setenv("ROBUSTAL_CACHE_DIR", str(tmp_path / "cache"))
    docs = tmp_path / "docs"
    docs.mkdir()
    main = "# Reproduction results\n\nthe airplane / frog tables\n\n## Exact command\n\n```bash\nx\n```\n"
    (docs / "results.md").write_text(main)
    args = ["reproduce_paper", "--dataset", "digits", "--classes", "7,1", "--pool-size", "80", "--test-size", "60",
            "--backbone", "flatten", "--weights", "none", "--scenarios", "benign,malicious",
            "--strategies", "margin,robust", "--runs", "1", "--jobs", "1", "--out", str(tmp_path / "out"),
            "--docs", str(docs), "--no-progress", "--results-name", "results-7-1"]
    call_command(*args)
    report = json.loads((docs / "results" / "7-1" / "report.json").read_text())
    assert report["pair"] == "7-1" and report["classes"] == ["7", "1"] and report["mapping"] == {"1": "7"}
    page = (docs / "results-7-1.md").read_text()
    assert page.startswith("# Second CIFAR-10 pair: 7 / 1") and "Paper (Table" not in page
    for r in report["scenarios"].values():
        for png in r["plots"].values():
            assert (docs / "results" / "7-1" / png).is_file() and f"(results/7-1/{png})" in page
    assert not list((docs / "results").glob("*.png"))  # nothing beside the main report's plots
    text = (docs / "results.md").read_text()
    head, rest = main.split("## Exact command")
    assert text.startswith(head) and text.endswith("## Exact command" + rest)  # the rest byte for byte
    assert "## Second CIFAR-10 pair" in text and "[results-7-1.md](results-7-1.md)" in text
    robust = report["scenarios"]["malicious"]["summary"]["robust"]
    assert f"| malicious | robust | {robust['mean']:.1f} ({robust['std']:.1f}) |" in text
    call_command(*args)  # a second run replaces the section, never stacks it
    assert (docs / "results.md").read_text().count("## Second CIFAR-10 pair") == 1

    # regenerating results.md itself renders the same section from the pair's report.json
    from learner.management.commands.reproduce_paper import render_markdown

    assert render_markdown(json.loads((tmp_path / "out" / "report.json").read_text()), docs).count(
        "## Second CIFAR-10 pair") == 0  # a pair page never lists pairs
    smoke = dict(report, pair=None, results_name="results", plots_dir="results")
    assert "## Second CIFAR-10 pair" in render_markdown(smoke, docs)


def test_regenerating_results_md_keeps_the_training_mode_section(tmp_path):
    from learner.management.commands.reproduce_paper import KEPT_MARKERS, render_markdown

    docs = tmp_path / "docs"
    docs.mkdir()
    start, end = KEPT_MARKERS[0]
    block = f"{start}\n## Training mode: head vs finetune (issue 19)\n\n| mode | labels |\n|---|---|\n| head | 1 |\n{end}"
    (docs / "results.md").write_text(f"# Reproduction results\n\nold tables\n\n{block}\n\n## Exact command\n\nx\n")
    report = {"command": "python manage.py reproduce_paper", "finished": "now", "total_s": 60.0, "note": "",
              "backbone": None, "scenarios": {}, "pair": None, "results_name": "results", "plots_dir": "results"}
    md = render_markdown(report, docs)
    assert md.count(block) == 1 and md.index(block) < md.index("## Exact command")
    assert "old tables" not in md  # the rest is regenerated
    (docs / "results.md").write_text(md)
    assert render_markdown(report, docs).count(start) == 1  # regenerating again never stacks it
    (docs / "results.md").write_text("# Reproduction results\n")
    assert start not in render_markdown(report, docs)  # nothing to keep


def test_another_seed_is_a_second_split_beside_results_md(tmp_path, monkeypatch):
    from learner.management.commands.reproduce_paper import results_name

    assert results_name("cifar2", (), seed=7) == "results-seed7"
    assert results_name("cifar10", ("deer", "truck"), seed=7) == "results-deer-truck-seed7"
    monkeypatch.setenv("ROBUSTAL_CACHE_DIR", str(tmp_path / "cache"))
    docs = tmp_path / "docs"
    docs.mkdir()
    main = "# Reproduction results\n\nthe seed-0 tables\n\n## Exact command\n\n```bash\nx\n```\n"
    (docs / "results.md").write_text(main)
    call_command("reproduce_paper", "--dataset", "digits", "--pool-size", "80", "--test-size", "60",
                 "--backbone", "flatten", "--weights", "none", "--scenarios", "benign", "--strategies",
                 "margin,robust", "--runs", "1", "--jobs", "1", "--seed", "7", "--out", str(tmp_path / "out"),
                 "--docs", str(docs), "--no-progress")
    report = json.loads((docs / "results" / "seed7" / "report.json").read_text())
    assert report["side"] == "split" and report["seed"] == 7
    assert (docs / "results-seed7.md").read_text().startswith("# Second data split:")
    text = (docs / "results.md").read_text()
    assert "the seed-0 tables" in text and "## Second data split" in text  # the seed-0 report is kept
    assert "## Second CIFAR-10 pair" not in text and "[results-seed7.md](results-seed7.md)" in text
    robust = report["scenarios"]["benign"]["summary"]["robust"]
    assert f"| benign | robust | {robust['mean']:.1f} ({robust['std']:.1f}) |" in text


def test_the_run_time_is_reported_as_run_and_with_caches_against_60_minutes():
    from learner.results_md import run_time_line

    report = {"total_s": 69 * 60.0, "scenarios": {"benign": {"data_s": 60.0, "poison_s": 0.0},
                                                  "poison": {"data_s": 5.0, "poison_s": 2385.0}}}
    line = run_time_line(report)
    assert "69.0 min as run, of which 40.8 min" in line and "28.2 min without them" in line
    assert "— met; as run it is over 60 min" in line
    report["scenarios"]["poison"]["poison_s"] = 0.0
    assert "**NOT met**" in run_time_line(report)


def test_robust_is_compared_with_each_baseline_run_by_run():
    from learner.results_md import paired_difference, target_lines

    ours = {"labels_by_seed": {"0": 100.0, "1": 200.0, "2": 300.0}}
    other = {"labels_by_seed": {"0": 110.0, "1": 215.0, "2": 305.0, "3": 999.0}}  # seed 3 has no pair
    mean, low, high, n = paired_difference(ours, other)
    assert n == 3 and mean == -10.0 and low < -10.0 < high
    assert abs((high - low) / 2 - 4.303 * 5.0 / 3 ** 0.5) < 1e-2  # t(0.975, 2) x sd / sqrt(n)
    assert paired_difference({"mean": 1.0}, other) is None  # an older report: no per-run figures
    row = {"mean": 200.0, "runs": 3, "reached": 3, "exported_99": 3, "exported_accuracy_min": 0.99}
    summary = {"robust": {**row, **ours}, "margin": {**row, "mean": 210.0, **other}}
    lines = target_lines("benign", {"summary": summary, "pool": 3000})
    assert any("paired by run seed" in line and "margin -10.0 [" in line for line in lines)


def test_the_verified_baseline_is_a_rival_when_it_does_the_job():
    """margin+defended+verify (a second opinion on every label) counts among the baselines whose
    cheapest one that reaches the target with 99 % right labels robust must not exceed."""
    from learner.results_md import target_lines

    row = {"runs": 30, "reached": 30, "exported_accuracy_min": 0.97}
    summary = {"robust": {**row, "mean": 350.0, "exported_99": 14},
               "margin+defended": {**row, "mean": 340.0, "exported_99": 15},
               "margin+defended+verify": {**row, "mean": 415.0, "exported_99": 30}}
    lines = target_lines("benign", {"summary": summary, "pool": 3000})
    assert any("cheapest baseline that does the job (margin+defended+verify, 415.0)" in line and "met" in line
               for line in lines), lines
    summary["margin+defended+verify"]["exported_99"] = 25
    assert any("no crowd baseline reached" in line for line in target_lines("benign", {"summary": summary,
                                                                                      "pool": 3000}))


def test_render_only_rebuilds_the_markdown_from_the_runs_outputs(tmp_path, monkeypatch):
    monkeypatch.setenv("ROBUSTAL_CACHE_DIR", str(tmp_path / "cache"))
    docs, out = tmp_path / "docs", tmp_path / "out"
    common = ["--docs", str(docs), "--out", str(out), "--no-progress"]
    with pytest.raises(CommandError, match="no readable report.json"):
        call_command("reproduce_paper", "--render-only", *common)
    call_command("reproduce_paper", "--dataset", "digits", "--pool-size", "80", "--test-size", "60",
                 "--backbone", "flatten", "--weights", "none", "--scenarios", "benign", "--strategies",
                 "margin,robust", "--runs", "2", "--jobs", "1", *common)
    report = json.loads((out / "report.json").read_text())
    per_run = dict(report["scenarios"]["benign"]["summary"]["robust"]["labels_by_seed"])
    assert len(per_run) == 2
    first = (docs / "results.md").read_text()
    assert "paired by run seed" in first
    for s in report["scenarios"]["benign"]["summary"].values():  # a report from before per-run figures
        del s["labels_by_seed"]
    (out / "report.json").write_text(json.dumps(report))
    assert "paired by run seed" not in __import__("learner.results_md", fromlist=["x"]).render_markdown(report)
    call_command("reproduce_paper", "--render-only", *common)
    again = (docs / "results.md").read_text()
    assert "paired by run seed" in again and "Rendered again from the run's own outputs" in again
    assert json.loads((out / "report.json").read_text())["scenarios"]["benign"]["summary"]["robust"][
        "labels_by_seed"] == per_run  # the same figures, read back from runs.json
