"""Benchmark: training a head (dropout + linear layer) in NumPy against torch autograd.

``learner.heads.train_head`` writes the gradients and Adam out in NumPy. This script times it
against the same optimisation through ``torch.optim.Adam`` and autograd (``torch_reference_fit``,
also the reference of ``tests/learner/test_heads.py``) on Gaussian features of the sizes the loop
trains (a few hundred to a few thousand labels, ResNet-20's 64 features), and prints, per size,
seconds per head for both and how often the two heads' predictions agree (different dropout
draws, so not always) and their test accuracies.

    .venv/bin/python bench/bench_head.py
    .venv/bin/python bench/bench_head.py --sizes 500,3000 --dim 512 --classes 10
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from learner.heads import HeadConfig, LinearHead, LinearHeadModule, fit_standardizer, train_head  # noqa: E402


def torch_reference_fit(features, labels, n_classes, *, sample_weight=None, standardizer=None,
                        config: HeadConfig | None = None, seed: int = 0) -> LinearHead:
    """The same head trained with ``torch.optim.Adam`` and autograd (dropout from torch's generator)."""
    config = config or HeadConfig()
    features = np.asarray(features, dtype=np.float32)
    mean, scale = standardizer if standardizer is not None else fit_standardizer(features)
    generator = torch.Generator().manual_seed(int(seed))
    torch.manual_seed(int(seed))
    module = LinearHeadModule(features.shape[1], n_classes, config.dropout)
    with torch.no_grad():
        bound = 1.0 / np.sqrt(features.shape[1])
        module.linear.weight.uniform_(-bound, bound, generator=generator)
        module.linear.bias.zero_()
    x = torch.from_numpy((features - mean) / scale)
    y = torch.as_tensor(np.asarray(labels, dtype=np.int64))
    w = torch.ones(len(y)) if sample_weight is None else torch.as_tensor(sample_weight, dtype=torch.float32)
    optimizer = torch.optim.Adam(module.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    loss_fn = nn.CrossEntropyLoss(reduction="none")
    module.train()
    n = len(y)
    batch = config.batch_size or n
    for _ in range(config.epochs):
        order = torch.randperm(n, generator=generator) if batch < n else None
        for start in range(0, n, batch):
            idx = order[start:start + batch] if order is not None else slice(None)
            optimizer.zero_grad(set_to_none=True)
            wb = w[idx]
            loss = (loss_fn(module(x[idx]), y[idx]) * wb).sum() / wb.sum().clamp_min(1e-12)
            loss.backward()
            optimizer.step()
    return LinearHead(mean, scale, module.eval())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="200,500,1500,3000")
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--classes", type=int, default=2)
    parser.add_argument("--seeds", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(args.classes, args.dim)).astype(np.float32) * 0.3

    def draw(n):
        y = rng.integers(args.classes, size=n)
        return (centers[y] + rng.normal(size=(n, args.dim)).astype(np.float32)), y

    print(f"heads on {args.dim} Gaussian features, {args.classes} classes, 150 full-batch epochs, "
          f"{args.seeds} seeds, one thread")
    print(f"{'labels':>7} {'numpy s':>9} {'torch s':>9} {'speed-up':>9} {'same pred':>10} {'acc numpy':>10} {'acc torch':>10}")
    x_test, y_test = draw(4000)
    for n in [int(s) for s in args.sizes.split(",")]:
        x, y = draw(n)
        weight = rng.uniform(0.3, 1.0, size=n)
        times, accs, preds = {}, {}, {}
        for name, fit in (("numpy", train_head), ("torch", torch_reference_fit)):
            start = time.perf_counter()
            heads = [fit(x, y, args.classes, sample_weight=weight, seed=s) for s in range(args.seeds)]
            times[name] = (time.perf_counter() - start) / args.seeds
            preds[name] = [h.predict(x_test) for h in heads]
            accs[name] = float(np.mean([(p == y_test).mean() for p in preds[name]]))
        same = float(np.mean([(a == b).mean() for a, b in zip(preds["numpy"], preds["torch"])]))
        print(f"{n:>7} {times['numpy']:>9.3f} {times['torch']:>9.3f} {times['torch'] / times['numpy']:>8.1f}x "
              f"{same:>10.3f} {accs['numpy']:>10.4f} {accs['torch']:>10.4f}")


if __name__ == "__main__":
    main()
