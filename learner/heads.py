"""Heads on frozen features: dropout 0.2 + one linear layer (sigmoid for 2 classes, else softmax).

Heads train on cached features in well under a second. ``LinearHead`` also answers the
questions the query strategies ask: class probabilities and, because it is linear, the exact
minimal feature-space perturbation that changes its prediction (its distance to the boundary).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn


@dataclass
class HeadConfig:
    """Training settings of a head (defaults: the paper's dropout 0.2)."""

    dropout: float = 0.2
    epochs: int = 150
    learning_rate: float = 0.05
    weight_decay: float = 1e-3
    batch_size: int | None = None  # None: full batch (fast and deterministic on small data)


class LinearHeadModule(nn.Module):
    """Dropout + linear layer; exposes K logits (2 classes: ``[0, z]`` so softmax == sigmoid)."""

    def __init__(self, in_features: int, n_classes: int, dropout: float = 0.2):
        super().__init__()
        if n_classes < 2:
            raise ValueError("a classifier needs at least two classes")
        self.n_classes = n_classes
        self.dropout = nn.Dropout(dropout)
        self.linear = nn.Linear(in_features, 1 if n_classes == 2 else n_classes)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        out = self.linear(self.dropout(z))
        if self.n_classes == 2:
            return torch.cat([torch.zeros_like(out), out], dim=1)
        return out


class LinearHead:
    """A trained head on standardised features.

    Parameters
    ----------
    mean, scale : np.ndarray
        Feature standardisation (fitted on the pool's features, labeled or not).
    module : LinearHeadModule
        The trained torch module (eval mode).
    """

    def __init__(self, mean: np.ndarray, scale: np.ndarray, module: LinearHeadModule):
        self.mean = mean.astype(np.float32)
        self.scale = scale.astype(np.float32)
        self.module = module.eval()
        self.n_classes = module.n_classes

    # -- weights in the original feature space (used by boundary distances and attacks) --
    def class_weights(self) -> tuple[np.ndarray, np.ndarray]:
        """Return ``(W, b)`` with logits = features @ W.T + b on *unscaled* features."""
        w = self.module.linear.weight.detach().cpu().numpy().astype(np.float64)
        b = self.module.linear.bias.detach().cpu().numpy().astype(np.float64)
        if self.n_classes == 2:
            w = np.vstack([np.zeros_like(w), w])
            b = np.concatenate([[0.0], b])
        w_raw = w / self.scale[None, :]
        b_raw = b - w_raw @ self.mean
        return w_raw, b_raw

    def logits(self, features: np.ndarray) -> np.ndarray:
        w, b = self.class_weights()
        return np.asarray(features, dtype=np.float64) @ w.T + b

    def predict_proba(self, features: np.ndarray) -> np.ndarray:
        """Class probabilities, shape (N, K)."""
        z = self.logits(features)
        z -= z.max(axis=1, keepdims=True)
        p = np.exp(z)
        return p / p.sum(axis=1, keepdims=True)

    def predict(self, features: np.ndarray) -> np.ndarray:
        return self.logits(features).argmax(axis=1)

    def boundary_distance(self, features: np.ndarray, chunk: int = 65536) -> np.ndarray:
        """Smallest L2 feature perturbation that changes the prediction (what DeepFool finds).

        For a linear head this is ``min_j (z_pred - z_j) / ||w_pred - w_j||`` over j != pred.
        """
        w, b = self.class_weights()
        # ||w_p - w_j|| depends only on the class pair: a K x K table, not an (N, K, D) tensor
        pair_norm = np.linalg.norm(w[:, None, :] - w[None, :, :], axis=2)
        np.fill_diagonal(pair_norm, np.inf)
        out = np.empty(len(features), dtype=np.float64)
        for start in range(0, len(features), chunk):
            f = np.asarray(features[start:start + chunk], dtype=np.float64)
            z = f @ w.T + b
            pred = z.argmax(axis=1)
            gap = z[np.arange(len(z)), pred][:, None] - z  # >= 0
            with np.errstate(divide="ignore", invalid="ignore"):
                dist = gap / pair_norm[pred]
            dist[np.arange(len(z)), pred] = np.inf
            out[start:start + chunk] = dist.min(axis=1)
        return out

    def torch_module(self) -> nn.Module:
        """The head as a torch module on unscaled features (for end-to-end pixel attacks)."""
        w, b = self.class_weights()
        lin = nn.Linear(w.shape[1], w.shape[0])
        with torch.no_grad():
            lin.weight.copy_(torch.from_numpy(w).float())
            lin.bias.copy_(torch.from_numpy(b).float())
        return lin.eval()


def fit_standardizer(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and scale of features (scale 1 where a feature is constant)."""
    mean = features.mean(axis=0)
    scale = features.std(axis=0)
    scale[scale < 1e-8] = 1.0
    return mean.astype(np.float32), scale.astype(np.float32)


def train_head(
    features: np.ndarray,
    labels: np.ndarray,
    n_classes: int,
    *,
    sample_weight: np.ndarray | None = None,
    standardizer: tuple[np.ndarray, np.ndarray] | None = None,
    config: HeadConfig | None = None,
    seed: int = 0,
) -> LinearHead:
    """Train dropout + linear head with (weighted) cross-entropy.

    Parameters
    ----------
    features : (N, D) array
    labels : (N,) int array of class indices
    n_classes : number of classes K (2 gives a sigmoid head)
    sample_weight : (N,) non-negative weights, e.g. labeler trust; zero excludes a label
    standardizer : (mean, scale) fitted on the pool; default fits on ``features``
    config : HeadConfig
    seed : seed of initialisation and dropout

    Returns
    -------
    LinearHead
    """
    config = config or HeadConfig()
    features = np.asarray(features, dtype=np.float32)
    labels = np.asarray(labels, dtype=np.int64)
    if len(features) != len(labels):
        raise ValueError("features and labels differ in length")
    mean, scale = standardizer if standardizer is not None else fit_standardizer(features)
    generator = torch.Generator().manual_seed(int(seed))
    module = LinearHeadModule(features.shape[1], n_classes, config.dropout)
    with torch.no_grad():
        bound = 1.0 / np.sqrt(features.shape[1])
        module.linear.weight.uniform_(-bound, bound, generator=generator)
        module.linear.bias.zero_()
    if len(features) == 0:
        return LinearHead(mean, scale, module)
    return _fit(module, features, labels, sample_weight, mean, scale, config, generator, int(seed))


def _fit(module, features, labels, sample_weight, mean, scale, config, generator, seed) -> LinearHead:
    """Full-batch (or mini-batch) Adam on weighted cross-entropy, gradients written out.

    The same optimisation as ``torch.optim.Adam`` on ``LinearHeadModule`` in train mode (L2 weight
    decay added to the gradient, bias-corrected moments), in NumPy: a head this small spent its
    time in torch's per-operation overhead and in ``bernoulli_`` drawing dropout masks (profiled);
    the NumPy fit is 5-6x faster at 500-3,000 labels (``bench/bench_head.py``). Dropout masks come
    from ``numpy.random.default_rng(seed)``, mini-batch orders from ``generator``.
    """
    x = (features - mean) / scale
    n = len(labels)
    w = np.ones(n, np.float32) if sample_weight is None else np.asarray(sample_weight, np.float32)
    if float(w.sum()) <= 0:
        return LinearHead(mean, scale, module)
    weight = module.linear.weight.detach().numpy().copy()
    bias = module.linear.bias.detach().numpy().copy()
    binary = module.n_classes == 2
    # binary heads have one logit z (probabilities [1 - s(z), s(z)]); the gradient is s(z) - y
    target = labels.astype(np.float32)[:, None] if binary else np.eye(module.n_classes, dtype=np.float32)[labels]
    keep = np.float32(1.0 - config.dropout)
    lr, decay, beta1, beta2, eps = config.learning_rate, config.weight_decay, 0.9, 0.999, 1e-8
    params = (weight, bias)
    moments = [(np.zeros_like(p), np.zeros_like(p)) for p in params]
    rng = np.random.default_rng(seed)
    batch = config.batch_size or n
    step = 0
    for _ in range(config.epochs):
        order = torch.randperm(n, generator=generator).numpy() if batch < n else None
        for start in range(0, n, batch):
            idx = order[start:start + batch] if order is not None else slice(None)
            xb, wb = x[idx], w[idx]
            if config.dropout > 0:
                xb = xb * ((rng.random(xb.shape, dtype=np.float32) < keep) / keep)
            z = xb @ weight.T + bias
            if binary:
                p = 1.0 / (1.0 + np.exp(-z))
            else:
                p = np.exp(z - z.max(axis=1, keepdims=True))
                p /= p.sum(axis=1, keepdims=True)
            dz = (p - target[idx]) * (wb / max(float(wb.sum()), 1e-12))[:, None]
            step += 1
            step_size = lr / (1 - beta1 ** step)
            correction2 = np.sqrt(1 - beta2 ** step)
            for param, grad, (m, v) in zip(params, (dz.T @ xb, dz.sum(axis=0)), moments):
                grad = grad + decay * param
                m += (1 - beta1) * (grad - m)
                v *= beta2
                v += (1 - beta2) * grad * grad
                param -= step_size * m / (np.sqrt(v) / correction2 + eps)
    with torch.no_grad():
        module.linear.weight.copy_(torch.from_numpy(weight))
        module.linear.bias.copy_(torch.from_numpy(bias))
    return LinearHead(mean, scale, module.eval())


def accuracy(head: LinearHead, features: np.ndarray, labels: np.ndarray) -> float:
    """Share of ``labels`` that ``head`` predicts (nan for an empty set)."""
    if len(labels) == 0:
        return float("nan")
    return float((head.predict(features) == np.asarray(labels)).mean())
