"""Benchmark (c): ``robust`` selection time and peak memory on large pools of 512-d features.

Each pool size runs in a fresh subprocess so that its peak resident memory is its own.

    .venv/bin/python bench/bench_selection.py                 # 10k, 100k, 1M
    .venv/bin/python bench/bench_selection.py --sizes 10000 --strategies robust,margin,coreset
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def one(size: int, dim: int, strategy_name: str, batch: int, labeled: int, seed: int) -> dict:
    import numpy as np

    from learner.heads import HeadConfig, fit_standardizer, train_head
    from learner.strategies import make_strategy

    rng = np.random.default_rng(seed)
    n_classes = 10
    centers = rng.normal(size=(n_classes, dim)).astype(np.float32) * 2.0
    y = rng.integers(n_classes, size=size)
    x = np.empty((size, dim), dtype=np.float32)
    for start in range(0, size, 100_000):  # a Gaussian mixture, generated in chunks
        stop = min(size, start + 100_000)
        x[start:stop] = centers[y[start:stop]] + rng.normal(size=(stop - start, dim)).astype(np.float32) * 3.0
    mask = np.zeros(size, dtype=bool)
    mask[rng.choice(size, labeled, replace=False)] = True
    lab = np.flatnonzero(mask)
    t0 = time.perf_counter()
    model = train_head(x[lab], y[lab], n_classes, standardizer=fit_standardizer(x[lab]),
                       config=HeadConfig(epochs=100), seed=seed)
    t_train = time.perf_counter() - t0
    strategy = make_strategy(strategy_name)
    if strategy_name == "robust":
        strategy.labels_of_labeled = np.where(mask, y, -1)
    t0 = time.perf_counter()
    picked = strategy.query(x, mask, model, batch, rng=rng)
    t_first = time.perf_counter() - t0
    mask[picked] = True
    t0 = time.perf_counter()
    strategy.query(x, mask, model, batch, rng=rng)  # next iteration: clusters are cached
    t_next = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 / 1024  # KiB -> GiB
    return {"size": size, "dim": dim, "strategy": strategy_name, "batch": batch, "picked": int(len(picked)),
            "first_s": t_first, "next_s": t_next, "train_s": t_train, "peak_gib": peak,
            "features_gib": x.nbytes / 2**30}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--strategies", default="robust")
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--labeled", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        size, strategy = args.one.split(":")
        print(json.dumps(one(int(size), args.dim, strategy, args.batch, args.labeled, args.seed)))
        return
    rows = []
    print(f"{'strategy':<9}{'pool':>10}{'dim':>5}{'batch':>6}{'first query s':>15}{'next query s':>14}"
          f"{'peak RSS GiB':>14}{'features GiB':>14}")
    for strategy in args.strategies.split(","):
        for size in [int(s) for s in args.sizes.split(",")]:
            out = subprocess.run([sys.executable, __file__, "--one", f"{size}:{strategy}", "--dim", str(args.dim),
                                  "--batch", str(args.batch), "--labeled", str(args.labeled),
                                  "--seed", str(args.seed)], capture_output=True, text=True,
                                 env={**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")})
            if out.returncode != 0:
                print(f"{strategy:<9}{size:>10}  FAILED: {out.stderr.strip().splitlines()[-1:]}")
                continue
            r = json.loads(out.stdout.strip().splitlines()[-1])
            rows.append(r)
            print(f"{strategy:<9}{size:>10}{r['dim']:>5}{r['batch']:>6}{r['first_s']:>15.2f}{r['next_s']:>14.2f}"
                  f"{r['peak_gib']:>14.2f}{r['features_gib']:>14.2f}", flush=True)


if __name__ == "__main__":
    main()
