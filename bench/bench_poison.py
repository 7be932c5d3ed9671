"""Feature-collision crafting: ART's FeatureCollisionAttack (reference) vs the batched torch path.

Both run the same forward-backward splitting against the same frozen backbone, from the same bases
towards the same targets. Printed per implementation: poisons per second, the mean relative feature
distance ||f(p) - f(t)|| / ||f(b) - f(t)|| (0 = full collision, 1 = no progress), the mean pixel
change (L2 in [0, 1] units), and the share of targets whose poison set flips the target under a head
trained on the full poisoned pool.

    python bench/bench_poison.py --weights ~/.cache/robustal/backbones/cifar8-resnet20/weights.pt \
        --targets 2 --bases 10 --max-iter 60
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from learner.backbones import build_backbone, extract_features  # noqa: E402
from learner.data import load_dataset  # noqa: E402
from learner.poison import (  # noqa: E402
    _features,
    _quantize,
    craft_feature_collision,
    craft_feature_collision_art,
    poison_succeeds,
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weights", default=os.path.expanduser("~/.cache/robustal/backbones/cifar8-resnet20/weights.pt"))
    ap.add_argument("--backbone", default="resnet20")
    ap.add_argument("--targets", type=int, default=2)
    ap.add_argument("--bases", type=int, default=10)
    ap.add_argument("--max-iter", type=int, default=60)
    ap.add_argument("--watermark", type=float, default=0.2)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    ds = load_dataset("cifar2", pool_size=3000, test_size=2000, seed=0)
    full = load_dataset("cifar2", seed=0)
    outside_x, outside_y = full.x_pool[3000:], full.y_pool[3000:]  # same seeded permutation: not in the pool
    bb = build_backbone(args.backbone, weights=args.weights)
    pf, tf = extract_features(bb, ds.x_pool), extract_features(bb, ds.x_test)
    rows = []
    for impl, craft in (("fast (batched torch)", craft_feature_collision), ("ART FeatureCollisionAttack", craft_feature_collision_art)):
        secs, dists, l2s, hits = 0.0, [], [], 0
        for ti in range(args.targets):
            t_label = int(ds.y_test[ti])
            b_label = 1 - t_label
            bases = outside_x[outside_y == b_label][: args.bases]
            start = time.perf_counter()
            x = craft(bb, ds.x_test[ti], bases, max_iter=args.max_iter, watermark=args.watermark)
            secs += time.perf_counter() - start
            imgs = _quantize(x)
            fp, fb, ft = _features(bb, imgs), _features(bb, bases), tf[ti]
            dists.append(np.mean(np.linalg.norm(fp - ft, axis=1) / np.linalg.norm(fb - ft, axis=1)))
            l2s.append(np.mean(np.linalg.norm((x - bases / 255.0).reshape(len(x), -1), axis=1)))
            hits += poison_succeeds(pf, ds.y_pool, fp, b_label, ft, 2)
        rows.append((impl, args.targets * args.bases / secs, float(np.mean(dists)), float(np.mean(l2s)),
                     hits / args.targets, secs))
    print(f"\n{args.targets} targets x {args.bases} bases, max_iter {args.max_iter}, watermark {args.watermark}, "
          f"{args.threads} threads, backbone {args.backbone}")
    print(f"{'implementation':<28}{'poisons/s':>11}{'rel. feat. dist':>17}{'pixel L2':>10}{'success':>9}{'seconds':>9}")
    for impl, rate, dist, l2, succ, secs in rows:
        print(f"{impl:<28}{rate:>11.2f}{dist:>17.3f}{l2:>10.2f}{succ:>9.0%}{secs:>9.1f}")


if __name__ == "__main__":
    main()
