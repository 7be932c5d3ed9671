"""Benchmark: the trust rules against the threat suite, through the web app's real services.

Eleven simulated annotators (``learner/oracles.py``: honest with error rate ``--pr``) label a
digits project (classes 1, 4, 7, 9; 720 images, so that every labeler gives about 65 first labels
and a sleeper has time to turn) through the live services (``trust/simulation.py``: no HTTP, no
Celery; the loop runs synchronously after each complete batch) until the pool is exhausted. Nobody
reviews flags: the rules act alone (flag, targeted audit, suspend or reinstate). Scenarios:

- ``malicious``: 1 of 11 maps digit 1 -> 7;
- ``collusion``: 3 of 11 share that mapping;
- ``sleeper``: 2 of 11 answer honestly for their first 30 first labels (and on every
  re-annotation), then map 1 -> 7;
- ``spammer``: 2 of 11 answer uniformly at random.

Per scenario it prints: adversaries flagged after at most 5 of their wrong labels (share of
adversary-runs), the wrong labels they gave before the flag (median, max) and, of them, those given
in attack (median, max; the rest are honest slips, e.g. a sleeper's before it turns), adversaries suspended
before the project stopped, honest labelers ever flagged (the false-flag rate) and suspended,
labels bought and seconds. Each run uses a throw-away SQLite database; two threads at most.

    .venv/bin/python bench/bench_trust_simulation.py                       # 4 scenarios x 30 seeds
    .venv/bin/python bench/bench_trust_simulation.py --scenarios sleeper --seeds 5 --set flag_alpha=0.01
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


SCENARIOS = {  # name: (adversaries, kind)
    "malicious": (1, "malicious"),
    "collusion": (3, "malicious"),
    "sleeper": (2, "sleeper"),
    "spammer": (2, "spammer"),
}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenarios", default=",".join(SCENARIOS), help="comma-separated, of " + ", ".join(SCENARIOS))
    parser.add_argument("--seeds", type=int, default=30, help="number of seeds (0..n-1)")
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--batches", type=int, default=1000, help="first-label batches per run at most")
    parser.add_argument("--pr", type=float, default=0.05, help="honest labelers' error rate")
    parser.add_argument("--classes", default="1,4,7,9", help="digit classes (the adversaries map 1 -> 7)")
    parser.add_argument("--pool-size", type=int, default=720)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="LiveConfig setting for the project (JSON value), e.g. flag_alpha=0.01")
    parser.add_argument("--verbose", action="store_true", help="one line per run")
    args = parser.parse_args(argv)
    scenarios = [x.strip() for x in args.scenarios.split(",") if x.strip()]
    classes = tuple(x.strip() for x in args.classes.split(",") if x.strip())
    unknown = sorted(set(scenarios) - set(SCENARIOS))
    if unknown:
        parser.error(f"unknown scenario(s) {unknown}")
    config = {"batch_size": 40}
    for item in args.set:
        key, _, value = item.partition("=")
        try:
            config[key] = json.loads(value)
        except json.JSONDecodeError:
            config[key] = value

    tmp = Path(tempfile.mkdtemp(prefix="bench-trust-"))
    os.environ.update({
        "DATABASE_URL": f"sqlite:///{tmp / 'db.sqlite3'}", "CELERY_BROKER_URL": "filesystem://",
        "ROBUSTAL_DATA_DIR": str(tmp), "MEDIA_ROOT": str(tmp / "media"), "ROBUSTAL_CACHE_DIR": str(tmp / "cache"),
        "SECRET_KEY": os.environ.get("SECRET_KEY", "bench-only"), "DEBUG": "1", "LOG_LEVEL": "WARNING",
        "OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2", "DJANGO_SETTINGS_MODULE": "config.settings",
    })
    sys.path.insert(0, str(ROOT))
    try:
        import django

        django.setup()
        import torch

        torch.set_num_threads(2)
        from django.core.management import call_command

        from learner.live import LiveConfig
        from trust import simulation

        LiveConfig.from_dict(config)  # bad settings fail here, with the reason
        call_command("migrate", verbosity=0)
        print(f"digits {'/'.join(classes)}, pool {args.pool_size}, 11 labelers, pr {args.pr}, seeds {args.first_seed}.."
              f"{args.first_seed + args.seeds - 1}, settings {config}")
        header = (f"{'scenario':<10} {'runs':>4} {'flagged <= 5 wrong':>18} {'wrong before flag':>17} {'of which attacks':>16} "
                  f"{'suspended':>10} {'honest flagged':>14} {'honest susp.':>12} {'labels':>7} {'s/run':>6}")
        print(header)
        print("-" * len(header))
        all_honest = all_flagged = 0
        for name in scenarios:
            n_bad, kind = SCENARIOS[name]
            results = []
            for seed in range(args.first_seed, args.first_seed + args.seeds):
                r = simulation.run(seed=seed, max_batches=args.batches, error_rate=args.pr, pool_size=args.pool_size,
                                   config=config, prefix=f"{name[:3]}{seed}_", n_malicious=n_bad, kind=kind,
                                   classes=classes)
                results.append(r)
                if args.verbose:
                    print(f"   {name} seed {seed}: flagged {r.flagged_at} wrong before {r.wrong_before_flag} "
                          f"(attacks {r.attacks_before_flag}) "
                          f"suspended {r.suspended_at} stop {r.stop} labels {r.labels_bought} {r.seconds:.1f} s")
            adversary_runs = [(r, u) for r in results for u in r.malicious_ids]
            wrong = [r.wrong_before_flag[u] for r, u in adversary_runs if u in r.wrong_before_flag]
            attacks = [r.attacks_before_flag[u] for r, u in adversary_runs if u in r.attacks_before_flag]
            fast = sum(1 for r, u in adversary_runs if u in r.wrong_before_flag and r.wrong_before_flag[u] <= 5)
            suspended = sum(1 for r, u in adversary_runs if u in r.suspended_at)
            honest = sum(len(r.honest_ids) for r in results)
            honest_flagged = sum(r.honest_flagged for r in results)
            honest_suspended = sum(1 for r in results for u in r.honest_ids if u in r.suspended_at)
            all_honest += honest
            all_flagged += honest_flagged
            wrong_txt = f"{statistics.median(wrong):.0f} / {max(wrong)}" if wrong else "never"
            attack_txt = f"{statistics.median(attacks):.0f} / {max(attacks)}" if attacks else "never"
            print(f"{name:<10} {len(results):>4} {fast:>7} / {len(adversary_runs):<3} {100 * fast / len(adversary_runs):>4.0f} % "
                  f"{wrong_txt:>17} {attack_txt:>16} {suspended:>4} / {len(adversary_runs):<3} {honest_flagged:>6} / {honest:<5} "
                  f"{honest_suspended:>12} {statistics.mean(r.labels_bought for r in results):>7.0f} "
                  f"{statistics.mean(r.seconds for r in results):>6.1f}")
        print("-" * len(header))
        print(f"honest false-flag rate {all_flagged / max(all_honest, 1):.3f} ({all_flagged} of {all_honest} honest "
              f"labeler-runs flagged at least once)")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
