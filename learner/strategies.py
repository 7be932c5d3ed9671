"""Query strategies behind one small interface (the shape scikit-activeml made familiar).

Every strategy answers one question: given the pool's features, which items are labeled, the
current model and a batch size, which unlabeled indices should be labeled next?

>>> strategy = make_strategy("robust")
>>> batch = strategy.query(features, labeled_mask, model, 20, rng=np.random.default_rng(0))

``model`` needs ``predict_proba(X)``; ``robust`` also uses ``boundary_distance(X)`` (the minimal
feature-space perturbation that flips the prediction; see :class:`learner.heads.LinearHead`).
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
from sklearn.cluster import KMeans


class ProbabilisticModel(Protocol):
    def predict_proba(self, features: np.ndarray) -> np.ndarray: ...


@dataclass
class QueryContext:
    """Signals from the previous iteration that some strategies use.

    Attributes
    ----------
    item_perturbations : dict[int, float]
        Minimal pixel-space L2 perturbation of adversarial examples crafted from pool items in
        the previous iteration (``inf`` where the attack failed).
    budget_left : int | None
        Labels the loop may still buy; a strategy never returns more.
    """

    item_perturbations: dict[int, float] = field(default_factory=dict)
    budget_left: int | None = None


class QueryStrategy(Protocol):
    name: str

    def query(self, features: np.ndarray, labeled_mask: np.ndarray, model: ProbabilisticModel | None,
              batch_size: int, *, rng: np.random.Generator,
              context: QueryContext | None = None) -> np.ndarray: ...


def _candidates(labeled_mask: np.ndarray, batch_size: int, context: QueryContext | None) -> tuple[np.ndarray, int]:
    unlabeled = np.flatnonzero(~labeled_mask)
    k = min(batch_size, len(unlabeled))
    if context is not None and context.budget_left is not None:
        k = min(k, max(context.budget_left, 0))
    return unlabeled, k


class RandomSampling:
    """Uniformly random unlabeled items (the paper's baseline)."""

    name = "random"

    def query(self, features, labeled_mask, model, batch_size, *, rng, context=None):
        unlabeled, k = _candidates(labeled_mask, batch_size, context)
        return np.sort(rng.choice(unlabeled, size=k, replace=False)) if k else np.empty(0, dtype=np.int64)


class _ScoreSampling(ABC):
    """Pick the ``k`` unlabeled items with the highest uncertainty score (ties broken at random)."""

    name = "score"

    @abstractmethod
    def score(self, proba: np.ndarray) -> np.ndarray:
        """Informativeness of each item (higher first)."""

    def query(self, features, labeled_mask, model, batch_size, *, rng, context=None):
        unlabeled, k = _candidates(labeled_mask, batch_size, context)
        if k == 0:
            return np.empty(0, dtype=np.int64)
        s = self.score(model.predict_proba(features[unlabeled]))
        jitter = rng.random(len(s)) * 1e-12
        return unlabeled[np.argsort(-(s + jitter), kind="stable")[:k]]


class MarginSampling(_ScoreSampling):
    """Smallest gap between the two most probable classes."""

    name = "margin"

    def score(self, proba):
        top2 = np.sort(proba, axis=1)[:, -2:]
        return -(top2[:, 1] - top2[:, 0])


class EntropySampling(_ScoreSampling):
    """Largest predictive entropy."""

    name = "entropy"

    def score(self, proba):
        p = np.clip(proba, 1e-12, 1.0)
        return -(p * np.log(p)).sum(axis=1)


def min_sq_distances(points: np.ndarray, centers: np.ndarray, chunk: int = 8192) -> np.ndarray:
    """Squared Euclidean distance from each point to its nearest center (inf with no centers)."""
    out = np.full(len(points), np.inf, dtype=np.float64)
    if len(centers) == 0 or len(points) == 0:
        return out
    c = np.asarray(centers, dtype=np.float32)
    c_sq = (c.astype(np.float64) ** 2).sum(axis=1)
    for start in range(0, len(points), chunk):
        p = np.asarray(points[start:start + chunk], dtype=np.float32)
        p_sq = (p.astype(np.float64) ** 2).sum(axis=1)
        for cs in range(0, len(c), chunk):
            d = p_sq[:, None] - 2.0 * (p @ c[cs:cs + chunk].T) + c_sq[None, cs:cs + chunk]
            np.minimum(out[start:start + chunk], d.min(axis=1), out=out[start:start + chunk])
    return np.maximum(out, 0.0)


def k_center_greedy(candidates: np.ndarray, features: np.ndarray, centers: np.ndarray, k: int,
                    rng: np.random.Generator) -> np.ndarray:
    """Greedy max-min selection (eq. 4): repeatedly take the candidate farthest from its nearest
    center, then count it as a center. Returns indices into ``candidates``' positions' values."""
    if k <= 0 or len(candidates) == 0:
        return np.empty(0, dtype=np.int64)
    x = features[candidates]
    dist = min_sq_distances(x, features[centers]) if len(centers) else np.full(len(candidates), np.inf)
    chosen: list[int] = []
    for _ in range(min(k, len(candidates))):
        if np.isinf(dist).all():
            j = int(rng.integers(len(candidates)))
        else:
            j = int(np.argmax(dist))
        chosen.append(j)
        d_new = ((x - x[j]) ** 2).sum(axis=1, dtype=np.float64)
        np.minimum(dist, d_new, out=dist)
        dist[j] = -1.0
    return candidates[np.asarray(chosen, dtype=np.int64)]


def fragile_first(candidates: np.ndarray, features: np.ndarray, centers: np.ndarray, k: int,
                  duplicate: float = 0.5) -> np.ndarray:
    """Take ``candidates`` in their order (most fragile first), skipping near-duplicates: a
    candidate closer to a labeled or already taken item than ``duplicate`` times the candidates'
    median nearest-neighbour distance waits until the others are taken."""
    if k <= 0 or len(candidates) == 0:
        return np.empty(0, dtype=np.int64)
    x = np.asarray(features[candidates], dtype=np.float64)
    dist = min_sq_distances(x, features[centers]) if len(centers) else np.full(len(candidates), np.inf)
    floor = 0.0
    if len(candidates) > 1:
        sq = (x * x).sum(axis=1)
        pair = np.maximum(sq[:, None] + sq[None, :] - 2.0 * (x @ x.T), 0.0)
        np.fill_diagonal(pair, np.inf)
        floor = duplicate ** 2 * float(np.median(pair.min(axis=1)))
    taken = np.zeros(len(candidates), dtype=bool)
    chosen: list[int] = []
    for j in range(len(candidates)):
        if len(chosen) == k:
            break
        if dist[j] >= floor:
            chosen.append(j)
            taken[j] = True
            np.minimum(dist, ((x - x[j]) ** 2).sum(axis=1, dtype=np.float64), out=dist)
    for j in np.flatnonzero(~taken)[: k - len(chosen)]:  # not enough distinct ones: the rest in order
        chosen.append(int(j))
    return candidates[np.asarray(chosen, dtype=np.int64)]


class CoreSet:
    """k-center greedy over the whole pool (Sener & Savarese 2018)."""

    name = "coreset"

    def query(self, features, labeled_mask, model, batch_size, *, rng, context=None):
        unlabeled, k = _candidates(labeled_mask, batch_size, context)
        return k_center_greedy(unlabeled, features, np.flatnonzero(labeled_mask), k, rng)


def largest_remainder(weights: np.ndarray, total: int, caps: np.ndarray) -> np.ndarray:
    """Split ``total`` into integers proportional to ``weights`` without exceeding ``caps``."""
    weights = np.where(caps > 0, np.maximum(weights, 0.0), 0.0)
    alloc = np.zeros(len(weights), dtype=np.int64)
    total = int(min(total, caps.sum()))
    while alloc.sum() < total:
        open_ = alloc < caps
        w = np.where(open_, weights, 0.0)
        if w.sum() <= 0:
            w = open_.astype(float)
        remaining = total - alloc.sum()
        share = w / w.sum() * remaining
        add = np.minimum(np.floor(share).astype(np.int64), caps - alloc)
        if add.sum() == 0:  # hand out the remainder one by one, largest fraction first
            order = np.argsort(-(share - np.floor(share)) - open_ * 1e-9)
            for j in order:
                if alloc.sum() >= total:
                    break
                if alloc[j] < caps[j]:
                    alloc[j] += 1
        else:
            alloc += add
    return alloc


@dataclass
class RobustMinimax:
    """The paper's per-cluster minimax diversity selection, driven by adversarial fragility.

    1. Cluster the pool in feature space once (k-means; ``n_clusters``).
    2. ``N_c``, the share of cluster c in the batch, grows with the *fragility* of its unlabeled
       items (mass of small minimal perturbations: ``sum exp(-d / median d)`` with d the
       feature-space distance to the boundary, and, when given, the previous iteration's
       pixel-space adversarial perturbations of items of c relative to all) and with the model's
       *error* on the labeled items of c; clusters with no labeled item count as fully wrong.
    3. Inside c, the candidates are the ``candidate_factor * N_c`` most fragile unlabeled items
       (ours), from which eq. (4) picks greedily: the candidate farthest from every labeled or
       already picked item.
    """

    n_clusters: int = 10
    candidate_factor: float = 3.0
    seed: int = 0
    fit_sample: int = 50_000
    # inside a cluster: "farthest" (the paper's eq. 4 among the fragile candidates) or "margin"
    # (ours: the most fragile first, skipping near-duplicates of labeled or picked items)
    pick: str = "farthest"
    size_weight: float = 1.0  # weight of a cluster's share of the unlabeled pool in N_c (fragility: 1)
    fragile_top: bool = False  # fragility mass = count among the pool's most fragile items (ours)
    name: str = "robust"
    labels_of_labeled: np.ndarray | None = None  # set by the loop: labels used for cluster error
    _cluster_cache: dict = field(default_factory=dict, repr=False)

    def clusters(self, features: np.ndarray) -> np.ndarray:
        """Cluster id of every pool item (computed once per pool and cached).

        Large pools fit k-means on a seeded sample of ``fit_sample`` items and then assign every
        item to its nearest centroid, which keeps 1M x 512 pools well under a minute.
        """
        # keyed by content (a strided sample), not id(): a new array with the same values hits
        step = max(1, len(features) // 1024)
        key = (features.shape, hash(np.ascontiguousarray(features[::step]).tobytes()), self.n_clusters)
        if key not in self._cluster_cache:
            k = min(self.n_clusters, len(features))
            rng = np.random.default_rng(self.seed)
            sample = features
            if len(features) > self.fit_sample:
                sample = features[np.sort(rng.choice(len(features), self.fit_sample, replace=False))]
            km = KMeans(n_clusters=k, random_state=self.seed, n_init=1).fit(sample)
            centroids = km.cluster_centers_.astype(np.float32)
            labels = np.empty(len(features), dtype=np.int64)
            c_sq = (centroids.astype(np.float64) ** 2).sum(axis=1)
            for start in range(0, len(features), 65536):
                chunk = np.asarray(features[start:start + 65536], dtype=np.float32)
                labels[start:start + 65536] = np.argmin(c_sq[None, :] - 2.0 * (chunk @ centroids.T), axis=1)
            self._cluster_cache.clear()
            self._cluster_cache[key] = labels
        return self._cluster_cache[key]

    def allocation(self, features, labeled_mask, model, batch_size, context=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Return (cluster ids, N_c per cluster, boundary distances of the pool)."""
        cluster = self.clusters(features)
        k = cluster.max() + 1
        dist = model.boundary_distance(features)
        unl = ~labeled_mask
        scale = np.median(dist[unl]) if unl.any() else 1.0
        scale = scale if np.isfinite(scale) and scale > 0 else 1.0
        fragile = np.exp(-np.minimum(dist, 50 * scale) / scale) * unl
        mass = np.bincount(cluster, weights=fragile, minlength=k)
        # error of the model on each cluster's labeled items
        err = np.ones(k)
        if self.labels_of_labeled is not None and (labeled_mask & (self.labels_of_labeled >= 0)).any():
            # blocked items without a label (secured, discarded) say nothing about the model's error
            lab = np.flatnonzero(labeled_mask & (self.labels_of_labeled >= 0))
            wrong = (model.predict_proba(features[lab]).argmax(axis=1) != self.labels_of_labeled[lab])
            n_lab = np.bincount(cluster[lab], minlength=k)
            n_wrong = np.bincount(cluster[lab], weights=wrong.astype(float), minlength=k)
            err = np.where(n_lab > 0, (n_wrong + 0.5) / (n_lab + 1.0), 1.0)
        # previous iteration's pixel-space perturbations: small => fragile cluster
        adv = np.ones(k)
        if context is not None and context.item_perturbations:
            items = np.fromiter(context.item_perturbations.keys(), dtype=np.int64)
            l2 = np.fromiter(context.item_perturbations.values(), dtype=float)
            finite = np.isfinite(l2)
            if finite.any():
                global_med = np.median(l2[finite])
                for c in np.unique(cluster[items[finite]]):
                    med_c = np.median(l2[finite][cluster[items[finite]] == c])
                    adv[c] = float(np.clip(global_med / max(med_c, 1e-12), 0.5, 2.0))
        # fragility share blended with the cluster's share of the unlabeled pool (representativeness)
        size = np.bincount(cluster, weights=unl.astype(float), minlength=k)
        if self.fragile_top:
            # ours: the fragile mass is the count of the pool's candidate_factor x batch most fragile
            # unlabeled items (the margin ranking) in each cluster, not a soft sum over the cluster
            cand = np.flatnonzero(unl)
            top = cand[np.argsort(dist[cand], kind="stable")[: int(np.ceil(self.candidate_factor * batch_size))]]
            mass = np.bincount(cluster[top], minlength=k).astype(float)
        share = mass / max(mass.sum(), 1e-12) + self.size_weight * size / max(size.sum(), 1e-12)
        weight = share * (0.5 + err) * adv
        caps = np.bincount(cluster, weights=unl.astype(float), minlength=k).astype(np.int64)
        return cluster, largest_remainder(weight, batch_size, caps), dist

    def query(self, features, labeled_mask, model, batch_size, *, rng, context=None):
        unlabeled, k = _candidates(labeled_mask, batch_size, context)
        if k == 0:
            return np.empty(0, dtype=np.int64)
        if model is None or not hasattr(model, "boundary_distance"):
            return CoreSet().query(features, labeled_mask, model, k, rng=rng)
        cluster, n_c, dist = self.allocation(features, labeled_mask, model, k, context)
        centers = np.flatnonzero(labeled_mask)
        picked: list[np.ndarray] = []
        for c in np.flatnonzero(n_c):
            members = np.flatnonzero((cluster == c) & ~labeled_mask)
            m = max(int(np.ceil(self.candidate_factor * n_c[c])), n_c[c])
            cand = members[np.argsort(dist[members], kind="stable")[:m]]
            if self.pick == "margin":
                chosen = fragile_first(cand, features, centers, int(n_c[c]))
            else:
                chosen = k_center_greedy(cand, features, centers, int(n_c[c]), rng)
            picked.append(chosen)
            centers = np.concatenate([centers, chosen])
        return np.concatenate(picked) if picked else np.empty(0, dtype=np.int64)


STRATEGIES = {
    "random": RandomSampling,
    "margin": MarginSampling,
    "entropy": EntropySampling,
    "coreset": CoreSet,
    "robust": RobustMinimax,
}


def make_strategy(name: str, **kwargs) -> QueryStrategy:
    """Build a strategy by name (``random``, ``margin``, ``entropy``, ``coreset``, ``robust``)."""
    try:
        cls = STRATEGIES[name]
    except KeyError:
        raise ValueError(f"unknown strategy {name!r}; choose from {', '.join(STRATEGIES)}") from None
    return cls(**kwargs)
