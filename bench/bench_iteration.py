"""Benchmark (b): where one active-learning iteration spends its time on a 3,000-image pool.

Steps timed: backbone features of the pool (once per pool; cached afterwards), head training,
crafting (pixel-space C&W + DeepFool + noise through backbone + head for one batch, and the
feature-space path the simulator uses), and ``robust`` selection (first call clusters the pool).

    .venv/bin/python bench/bench_iteration.py                      # CIFAR-2 from ../shared, ResNet-20
    .venv/bin/python bench/bench_iteration.py --weights ~/.cache/robustal/weights/resnet20.pt
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="cifar2")
    parser.add_argument("--pool-size", type=int, default=3000)
    parser.add_argument("--test-size", type=int, default=2000)
    parser.add_argument("--backbone", default="resnet20")
    parser.add_argument("--weights", default=None)
    parser.add_argument("--labeled", type=int, default=400)
    parser.add_argument("--batch", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from learner.attacks import craft, gaussian_noise
    from learner.augment import craft_feature_space
    from learner.backbones import build_backbone, extract_features, to_tensor
    from learner.data import load_dataset
    from learner.heads import fit_standardizer, train_head
    from learner.loop import LoopConfig
    from learner.strategies import make_strategy

    ds = load_dataset(args.dataset, pool_size=args.pool_size, test_size=args.test_size, seed=0)
    torch.manual_seed(0)
    backbone = build_backbone(args.backbone, in_channels=ds.x_pool.shape[-1], weights=args.weights)
    rows = []
    feats, t = timed(lambda: extract_features(backbone, ds.x_pool, batch_size=256))
    rows.append(("features: backbone over the pool (once, then cached)", t, f"{len(ds.x_pool)} images"))
    rng = np.random.default_rng(0)
    labeled = np.zeros(len(ds.y_pool), dtype=bool)
    labeled[rng.choice(len(labeled), args.labeled, replace=False)] = True
    st = fit_standardizer(feats)
    lab = np.flatnonzero(labeled)
    model, t = timed(lambda: train_head(feats[lab], ds.y_pool[lab], len(ds.classes), standardizer=st, seed=0))
    rows.append(("training: head on labeled features", t, f"{len(lab)} labels"))
    strategy = make_strategy("robust")
    strategy.labels_of_labeled = np.where(labeled, ds.y_pool, -1)
    batch, t = timed(lambda: strategy.query(feats, labeled, model, args.batch, rng=rng))
    rows.append(("selection: robust, first call (k-means of the pool)", t, f"batch {args.batch}"))
    _, t = timed(lambda: strategy.query(feats, labeled, model, args.batch, rng=rng))
    rows.append(("selection: robust, later iterations", t, f"batch {args.batch}"))
    _, t = timed(lambda: make_strategy("margin").query(feats, labeled, model, args.batch, rng=rng))
    rows.append(("selection: margin (for comparison)", t, f"batch {args.batch}"))
    classifier = torch.nn.Sequential(backbone, model.torch_module()).eval()
    x = to_tensor(ds.x_pool[batch]).numpy()
    cw, t = timed(lambda: craft("cw", classifier, x, max_iter=20))
    rows.append(("crafting: fast C&W L2 (pixels, through backbone)", t, f"success {cw.success.mean():.2f}"))
    df, t = timed(lambda: craft("deepfool", classifier, x, max_iter=100))
    rows.append(("crafting: fast DeepFool (pixels, through backbone)", t, f"success {df.success.mean():.2f}"))
    noisy, t0 = timed(lambda: gaussian_noise(x, variance=0.3, rng=rng))
    _, t1 = timed(lambda: extract_features(backbone, (np.clip(noisy, 0, 1).transpose(0, 2, 3, 1) * 255).astype(np.uint8)))
    rows.append(("crafting: noise copies + their features", t0 + t1, ""))
    cfg = LoopConfig().resolved()
    _, t = timed(lambda: craft_feature_space(feats, st, model, batch, ds.y_pool[batch], cfg, rng))
    rows.append(("crafting: feature-space path (simulator)", t, "exact minimal perturbation"))

    print(f"dataset {args.dataset} pool {len(ds.y_pool)} · backbone {args.backbone} "
          f"({'weights ' + args.weights if args.weights else 'random init'}) · {args.threads} threads")
    print(f"{'step':<56}{'seconds':>10}  note")
    print("-" * 86)
    for name, secs, note in rows:
        print(f"{name:<56}{secs:>10.3f}  {note}")


if __name__ == "__main__":
    main()
