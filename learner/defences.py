"""Training-set sanitisation against clean-label poisoning, applied before each head training.

Plain numpy + scikit-learn (no Django, no torch).

``dknn``  Deep k-NN (Peri et al., "Deep k-NN Defense against Clean-label Data Poisoning
          Attacks", ECCV-W 2020): in the feature space of the (frozen) backbone, a labeled point
          whose label differs from the plurality label of its k nearest labeled neighbours is
          left out of training. Feature-collision poisons sit among the target's class in feature
          space while carrying the base class's label, so their neighbours out-vote them; a
          correctly labeled point inside its own class is kept. Also drops stray mislabels (a
          side effect that costs nothing in budget: the item is only skipped, not re-bought).
"""

from __future__ import annotations

import numpy as np

__all__ = ["DEFENCES", "deep_knn_keep", "apply_defence"]

DEFENCES = ("none", "dknn")


def deep_knn_keep(features: np.ndarray, labels: np.ndarray, k: int = 10, n_classes: int | None = None) -> np.ndarray:
    """Mask of the points Deep k-NN keeps.

    Parameters
    ----------
    features : numpy.ndarray
        (N, D) features of the labeled points (the space the head trains in).
    labels : numpy.ndarray
        (N,) int labels.
    k : int, default 10
        Neighbours consulted (the point itself excluded). Peri et al. recommend k at least about
        the number of poisons that may be labeled together; with fewer than ``k + 1`` points k
        shrinks to ``N - 1``.
    n_classes : int, optional
        Default ``max(labels) + 1``.

    Returns
    -------
    numpy.ndarray
        bool (N,): True = keep. A point is dropped only when another label has strictly more
        votes than its own among its neighbours (ties keep it, so balanced borders stay).

    Raises
    ------
    ValueError
        Shapes disagree, or k < 1.
    """
    from sklearn.neighbors import NearestNeighbors

    features = np.asarray(features, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    if features.ndim != 2 or len(features) != len(labels):
        raise ValueError(f"features (N, D) and labels (N,) must agree, got {features.shape} and {labels.shape}")
    if k < 1:
        raise ValueError("k must be >= 1")
    n = len(labels)
    if n < 3:
        return np.ones(n, dtype=bool)
    k_eff = min(k, n - 1)
    nn = NearestNeighbors(n_neighbors=k_eff + 1).fit(features)
    _, idx = nn.kneighbors(features)
    # Drop the point itself: the first neighbour, except with exact duplicates (then any column).
    own = idx == np.arange(n)[:, None]
    first_own = own.argmax(axis=1)
    has_own = own.any(axis=1)
    drop_col = np.where(has_own, first_own, k_eff)
    keep_cols = np.ones_like(idx, dtype=bool)
    keep_cols[np.arange(n), drop_col] = False
    neigh = idx[keep_cols].reshape(n, k_eff)
    n_cls = int(n_classes or labels.max() + 1)
    votes = np.zeros((n, n_cls), dtype=np.int64)
    np.add.at(votes, (np.repeat(np.arange(n), k_eff), labels[neigh].ravel()), 1)
    own_votes = votes[np.arange(n), labels]
    return own_votes >= votes.max(axis=1)


def apply_defence(name: str | None, features: np.ndarray, labels: np.ndarray, *, k: int = 10,
                  n_classes: int | None = None) -> np.ndarray:
    """Mask of the training points a named defence keeps (``None``/"none": all).

    Raises
    ------
    ValueError
        Unknown defence name.
    """
    if name in (None, "none"):
        return np.ones(len(labels), dtype=bool)
    if name == "dknn":
        return deep_knn_keep(features, labels, k=k, n_classes=n_classes)
    raise ValueError(f"unknown defence {name!r}; choose from {', '.join(DEFENCES)}")
