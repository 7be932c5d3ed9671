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
        "--strategies", "random,robust+dknn", "--runs", "1", "--jobs", "1", "--out", str(out),
        "--docs", str(docs), "--no-progress", "--note", "smoke run",
    )
    report = json.loads((out / "report.json").read_text())
    assert set(report["scenarios"]) == {"benign", "malicious"}
    md = (docs / "results.md").read_text()
    for scenario, r in report["scenarios"].items():
        assert set(r["summary"]) == {"random", "robust+dknn"}
        for name, png in r["plots"].items():
            assert (docs / "results" / png).stat().st_size > 1000
            assert f"results/{png}" in md
        mean = r["summary"]["robust+dknn"]["mean"]
        assert f"| robust+dknn | {mean:.1f} (" in md  # the table shows the measured numbers
        assert (out / scenario / "summary.json").is_file()
    assert "smoke run" in md and "Paper (Table III" in md and "Paper (Table IV" in md


def test_reproduce_paper_rejects_bad_input(tmp_path):
    with pytest.raises(CommandError, match="unknown defence"):
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
