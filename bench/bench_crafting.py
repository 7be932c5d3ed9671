"""Benchmark: fast batched C&W / DeepFool against ART's reference implementations.

Builds a CIFAR-style ResNet-20 with a 2-class (sigmoid, exposed as logits ``[0, z]``) head,
trains it briefly on CIFAR-2 (cached under ``$ROBUSTAL_CACHE_DIR``, default
``~/.cache/robustal``), then attacks the same test images with every implementation and prints
images/s, success rate, median L2 over successful examples and the speed-up over ART.

Usage::

    python bench/bench_crafting.py                 # ResNet-20 on CIFAR-2, 64 images, 2 threads
    python bench/bench_crafting.py --model tiny    # small CNN, seconds
    python bench/bench_crafting.py --skip-art      # fast attacks only
    python bench/bench_crafting.py --previous-cw   # also the fast C&W's settings before its speed-up

CIFAR-2 is read from ``--npz`` or ``$ROBUSTAL_SHARED_DIR/data/cifar2/cifar2.npz`` (default
shared dir ``/work/shared``); without it the model stays randomly initialised and the images
are random.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from learner import attacks  # noqa: E402


# --------------------------------------------------------------------------------------------
# models
# --------------------------------------------------------------------------------------------


class _Block(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.short = (
            nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
            if stride != 1 or cin != cout
            else nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.short(x))


class BinaryHead(nn.Module):
    """Expose a single sigmoid logit ``z`` as two logits ``[0, z]`` (softmax == sigmoid)."""

    def __init__(self, features: int) -> None:
        super().__init__()
        self.fc = nn.Linear(features, 1)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        z = self.fc(h)
        return torch.cat([torch.zeros_like(z), z], dim=1)


class CifarResNet(nn.Module):
    """ResNet-20 for 32x32 inputs (3 stages x 3 blocks, 16/32/64 channels), pixels in [0, 1]."""

    MEAN = (0.4914, 0.4822, 0.4465)
    STD = (0.2470, 0.2435, 0.2616)

    def __init__(self, blocks: int = 3, width: int = 16) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(self.MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(self.STD).view(1, 3, 1, 1))
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        layers, cin = [], width
        for stage, cout in enumerate((width, 2 * width, 4 * width)):
            for b in range(blocks):
                layers.append(_Block(cin, cout, 2 if (stage > 0 and b == 0) else 1))
                cin = cout
        self.layers = nn.Sequential(*layers)
        self.head = BinaryHead(cin)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        h = self.layers(self.stem((x - self.mean) / self.std))
        return h.mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class TinyCNN(nn.Module):
    """A two-conv CNN for quick runs."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, 16, 3, 2, 1), nn.ReLU(), nn.Conv2d(16, 32, 3, 2, 1), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )
        self.head = BinaryHead(32)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


# --------------------------------------------------------------------------------------------
# data and training
# --------------------------------------------------------------------------------------------


def cache_dir() -> Path:
    d = Path(os.environ.get("ROBUSTAL_CACHE_DIR", Path.home() / ".cache" / "robustal"))
    d.mkdir(parents=True, exist_ok=True)
    return d


def default_npz() -> Path:
    shared = Path(os.environ.get("ROBUSTAL_SHARED_DIR", "/work/shared"))
    return shared / "data" / "cifar2" / "cifar2.npz"


def load_cifar2(npz: Path) -> dict[str, np.ndarray] | None:
    """CIFAR-2 as float32 NCHW in [0, 1] and 0/1 labels, or None if the file is missing."""
    if not npz.exists():
        return None
    with np.load(npz) as f:
        out = {}
        for split in ("train", "test"):
            out[f"x_{split}"] = f[f"x_{split}"].transpose(0, 3, 1, 2).astype(np.float32) / 255.0
            y = f[f"y_{split}"].astype(np.int64).ravel()
            # Map whatever two label values are used to 0/1.
            out[f"y_{split}"] = (y == np.unique(y)[-1]).astype(np.int64)
    return out


def train(model: nn.Module, x: np.ndarray, y: np.ndarray, *, epochs: int, seed: int = 0) -> None:
    """Short SGD + one-cycle training with random crops and flips (BCE on the single logit)."""
    g = torch.Generator().manual_seed(seed)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y).float()
    bs = 128
    steps = epochs * ((len(xt) + bs - 1) // bs)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4, nesterov=True)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=steps)
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(xt), generator=g)
        for i in range(0, len(xt), bs):
            idx = perm[i : i + bs]
            xb = xt[idx]
            # Augmentation: random flip and a 4-pixel-padded random crop.
            flip = torch.rand(len(xb), generator=g) < 0.5
            xb = torch.where(flip.view(-1, 1, 1, 1), xb.flip(3), xb)
            pad = nn.functional.pad(xb, (4, 4, 4, 4), mode="reflect")
            dx, dy = torch.randint(0, 9, (2,), generator=g).tolist()
            xb = pad[:, :, dy : dy + 32, dx : dx + 32]
            z = model(xb)[:, 1]
            loss = nn.functional.binary_cross_entropy_with_logits(z, yt[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    model.eval()


@torch.no_grad()
def accuracy(model: nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    model.eval()
    pred = torch.cat([model(torch.from_numpy(x[i : i + 500])).argmax(1) for i in range(0, len(x), 500)])
    return float((pred.numpy() == y).mean())


def build(kind: str, npz: Path, epochs: int, seed: int = 0) -> tuple[nn.Module, dict | None, str]:
    torch.manual_seed(seed)
    model = CifarResNet() if kind == "resnet" else TinyCNN()
    data = load_cifar2(npz)
    if data is None:
        return model.eval(), None, "random init (CIFAR-2 npz not found)"
    weights = cache_dir() / f"bench_crafting_{kind}_e{epochs}_s{seed}.pt"
    if weights.exists():
        model.load_state_dict(torch.load(weights, map_location="cpu"))
        how = f"cached weights {weights}"
    else:
        t = time.perf_counter()
        train(model, data["x_train"], data["y_train"], epochs=epochs, seed=seed)
        torch.save(model.state_dict(), weights)
        how = f"trained {epochs} epochs in {time.perf_counter() - t:.0f} s"
    acc = accuracy(model, data["x_test"], data["y_test"])
    return model.eval(), data, f"{how}; CIFAR-2 test accuracy {acc:.3f}"


# --------------------------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n-images", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--model", choices=("tiny", "resnet"), default="resnet")
    p.add_argument("--npz", type=Path, default=None, help="CIFAR-2 npz (default: shared data dir)")
    p.add_argument("--epochs", type=int, default=3, help="training epochs if no cached weights")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--skip-art", action="store_true", help="only the fast implementations")
    p.add_argument("--previous-cw", action="store_true",
                   help="also run the fast C&W with its previous settings (5 x 20 Adam steps, no DeepFool seed)")
    p.add_argument("--device", default="cpu", help="cpu (default, the reference setting) or cuda")
    args = p.parse_args(argv)

    torch.set_num_threads(args.threads)
    model, data, how = build(args.model, args.npz or default_npz(), args.epochs, args.seed)
    print(f"model: {args.model} ({how}); threads={args.threads}; device={args.device}")
    rng = np.random.default_rng(args.seed)
    if data is not None:
        idx = rng.choice(len(data["x_test"]), size=args.n_images, replace=False)
        x = data["x_test"][idx]
    else:
        x = rng.random((args.n_images, 3, 32, 32), dtype=np.float32)

    runs = [
        ("ART C&W (max_iter=20)", "cw_art", {"max_iter": 20}),
        ("fast C&W", "cw", {}),
        ("ART DeepFool (max_iter=100)", "deepfool_art", {"max_iter": 100}),
        ("fast DeepFool", "deepfool", {}),
    ]
    if args.previous_cw:
        # the fast C&W's settings up to commit d76c045 (5 x 20 Adam steps from x, no seed)
        runs.insert(2, ("fast C&W, previous settings", "cw",
                        {"binary_search_steps": 5, "init": None, "refine_step": 0.0, "stop_tol": 0.0}))
    if args.skip_art:
        runs = [r for r in runs if not r[1].endswith("_art")]
    # Warm-up: the first autograd/optimizer call of a process pays one-time lazy imports
    # (seconds on CPU) that would otherwise be charged to whichever attack runs first.
    attacks.carlini_l2_fast(model, x[:2], max_iter=1, binary_search_steps=1, device=args.device)
    attacks.deepfool_fast(model, x[:2], max_iter=1, device=args.device)
    results = {}
    for name, method, kw in runs:
        res = attacks.craft(method, model, x, device=args.device, **kw)
        results[name] = res
        load = "/".join(f"{v:.1f}" for v in os.getloadavg())
        print(f"  done {name}: {res.seconds:.1f} s (load average 1/5/15 min after it: {load})", flush=True)

    print()
    print(f"| method | images/s | success | median L2 | speed-up vs ART |")
    print(f"|---|---|---|---|---|")
    art_of = {method: name for name, method, _ in runs if method.endswith("_art")}
    for name, method, _ in runs:
        res = results[name]
        ips = len(x) / res.seconds
        ref = results.get(art_of.get(method.replace("_art", "") + "_art", ""))
        speed = f"{res_ips(ref, len(x)) and ips / res_ips(ref, len(x)):.1f}x" if ref else "-"
        print(f"| {name} | {ips:.2f} | {res.success_rate:.2f} | {res.median_l2():.3f} | {speed} |")
    return 0


def res_ips(res: attacks.AttackResult | None, n: int) -> float:
    return n / res.seconds if res is not None else 0.0


if __name__ == "__main__":
    raise SystemExit(main())
