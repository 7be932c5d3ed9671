"""``manage.py simulate`` end to end on digits: table, files, database record."""
from __future__ import annotations

import json

import pytest
from django.core.management import CommandError, call_command

from learner.models import Experiment


@pytest.mark.django_db
def test_simulate_on_digits_end_to_end(tmp_path, capsys):
    out = tmp_path / "exp"
    call_command("simulate", "--scenario", "malicious", "--strategies", "random,robust", "--runs", "2",
                 "--budget", "120", "--seed", "7", "--out", str(out), "--no-progress")
    printed = capsys.readouterr().out
    assert "strategy" in printed and "random" in printed and "robust" in printed and "reached" in printed
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["summary"]) == {"random", "robust"}
    for row in summary["summary"].values():
        assert row["runs"] == 2 and row["min"] <= row["50%"] <= row["max"] <= 120
    for name in ("random", "robust"):
        png = out / f"accuracy_{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = (out / "iterations.csv").read_text().splitlines()
    assert rows[0].startswith("strategy,seed,iteration,labels_bought")
    assert len(rows) > 4
    exp = Experiment.objects.get()
    assert exp.status == Experiment.Status.FINISHED
    assert exp.scenario == "malicious" and exp.runs == 2 and exp.seed == 7
    assert exp.summary["budgets"]["robust"]["runs"] == 2
    assert exp.output_dir == str(out)


@pytest.mark.django_db
def test_simulate_same_seed_same_numbers(tmp_path):
    args = ["--strategies", "robust", "--runs", "1", "--budget", "80", "--seed", "3", "--no-progress"]
    call_command("simulate", *args, "--out", str(tmp_path / "a"))
    call_command("simulate", *args, "--out", str(tmp_path / "b"))
    a = json.loads((tmp_path / "a" / "runs.json").read_text())
    b = json.loads((tmp_path / "b" / "runs.json").read_text())
    assert a == b


@pytest.mark.django_db
@pytest.mark.parametrize("args, message", [
    (["--strategies", "nope"], "unknown strategies"),
    (["--augment", "pgd"], "--augment takes"),
    (["--dataset", "/no/such/file.npz"], "not found"),
    (["--scenario", "malicious", "--mapping", "cat:dog"], "names classes not in"),
    (["--p1", "1.5"], "strictly between"),
    (["--training-mode", "finetune"], "trainable last stage"),  # the default backbone is flatten
])
def test_simulate_bad_input_is_a_clear_error(args, message, tmp_path):
    with pytest.raises(CommandError, match=message):
        call_command("simulate", *args, "--runs", "1", "--no-progress", "--out", str(tmp_path))


@pytest.mark.slow
def test_simulate_on_a_fresh_data_folder_migrates_the_embedded_database(tmp_path):
    """A newcomer's first `simulate` on a fresh data folder works instead of 'no such table'."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "ROBUSTAL_DATA_DIR": str(tmp_path / "fresh"), "DEBUG": "1", "SECRET_KEY": "test"}
    env.pop("DATABASE_URL", None)
    done = subprocess.run([sys.executable, "manage.py", "simulate", "--dataset", "digits", "--runs", "1",
                           "--strategies", "random", "--budget", "40", "--no-progress"],
                          cwd=root, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "migrating the embedded database" in done.stdout
    assert (tmp_path / "fresh" / "db.sqlite3").is_file()
