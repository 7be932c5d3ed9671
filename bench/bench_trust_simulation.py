"""Benchmark: how fast the web loop's trust rules catch a malicious labeler, and how many honest
labelers they flag on the way.

Eleven simulated annotators (``learner/oracles.py``: honest with error rate ``--pr``, the last one
maps digit 1 -> 7) label a digits project (classes 1, 4, 7) through the real services of the web
app (``trust/simulation.py``: no HTTP, no Celery; the loop service runs synchronously after each
complete batch). Nobody reviews flags during the run. Per seed it prints the batches until the
malicious labeler was flagged (iteration 0 is the random initial batch, so "2" means it was
flagged when batch 1 was processed), what flagged it, the honest labelers flagged (the false-flag
rate) and the labels bought; then the mean over seeds.

Self-contained: a throw-away SQLite database, media and cache folders in a temp dir (removed at
the end). Two threads at most.

    .venv/bin/python bench/bench_trust_simulation.py                   # 5 seeds x 8 batches
    .venv/bin/python bench/bench_trust_simulation.py --seeds 10 --batches 10 --set alert_confidence=0.99
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=5, help="number of seeds (0..n-1)")
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--batches", type=int, default=8, help="first-label batches per run (iteration 0 included)")
    parser.add_argument("--pr", type=float, default=0.05, help="honest labelers' error rate")
    parser.add_argument("--pool-size", type=int, default=360)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="LiveConfig setting for the project (JSON value), e.g. alert_confidence=0.99")
    args = parser.parse_args(argv)
    config = {}
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
        print(f"digits 1/4/7, pool {args.pool_size}, 11 labelers (1 maps 1 -> 7), pr {args.pr}, "
              f"{args.batches} batches, settings {config or 'defaults'}")
        header = (f"{'seed':>4} {'batches':>7} {'malicious flagged after':>23} {'by':<28} "
                  f"{'honest flagged':>14} {'false-flag rate':>15} {'labels':>6} {'s':>6}")
        print(header)
        print("-" * len(header))
        results = []
        for seed in range(args.first_seed, args.first_seed + args.seeds):
            r = simulation.run(seed=seed, max_batches=args.batches, error_rate=args.pr, pool_size=args.pool_size,
                               config=config, prefix=f"b{seed}_")
            results.append(r)
            bad = r.malicious_ids[0]
            after = r.malicious_flagged_after
            print(f"{seed:>4} {r.batches:>7} {('never' if after is None else after):>23} "
                  f"{','.join(x for x in r.reasons.get(bad, []) if x not in ('flagged', 'suspended')) or '-':<28} "
                  f"{r.honest_flagged:>10} / {len(r.honest_ids):<2} {r.honest_false_flag_rate:>15.2f} "
                  f"{r.labels_bought:>6} {r.seconds:>6.1f}  {r.stop}")
        from collections import Counter

        why = Counter(x for r in results for u in r.honest_ids for x in r.reasons.get(u, [])
                      if x not in ("flagged", "suspended"))
        caught = [r.malicious_flagged_after for r in results if r.malicious_flagged_after is not None]
        rate = sum(r.honest_false_flag_rate for r in results) / len(results)
        print("-" * len(header))
        print(f"malicious flagged in {len(caught)}/{len(results)} runs"
              + (f", after {sum(caught) / len(caught):.1f} batches on average (max {max(caught)})" if caught else "")
              + f"; honest false-flag rate {rate:.3f} (mean over runs, {sum(r.honest_flagged for r in results)} of "
              f"{sum(len(r.honest_ids) for r in results)} honest labeler-runs)")
        print(f"what flagged honest labelers: {dict(why) or 'nothing'}")
        sugg = Counter((("malicious" if u in r.malicious_ids else "honest"), s)
                       for r in results for u, s in r.suggestions.items())
        print("review suggestion at the end (learner.trust.suggest_review): "
              + ", ".join(f"{who} -> {what}: {n}" for (who, what), n in sorted(sugg.items())))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
