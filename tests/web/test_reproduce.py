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
