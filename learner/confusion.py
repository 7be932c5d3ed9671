"""Per-labeler confusion matrices by Dawid-Skene EM (pure numpy, no ORM).

Dawid & Skene (1979): each labeler j has a confusion matrix ``pi_j[a, b]`` = P(j says b | true
class a); items' true classes are latent. EM alternates the posterior of each item's class given
every label it got (E step) and the class priors and confusion matrices given those posteriors
(M step). We add a Dirichlet prior to each row (``diag_prior`` on the diagonal, ``off_prior``
elsewhere) so a labeler with few labels starts from "mostly right" instead of a 0/1 estimate.

Why it catches what the secured-set check misses: a labeler who maps every airplane to frog
barely moves the secured-set accuracy when 10 honest labelers outvote it, but its matrix has a
large ``pi[airplane, frog]``. The web loop adds the current model's prediction of each labeled
item as one more "labeler" (ours), so items seen by a single human still carry evidence.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class DawidSkeneResult:
    """Output of :func:`dawid_skene`.

    Attributes
    ----------
    workers : list of the labeler ids, in the order of the first axis of ``confusion``
    posterior : (n_items, K) probability of each item's true class
    priors : (K,) class priors
    confusion : (n_workers, K, K) row-normalised confusion matrices
    counts : (n_workers, K, K) expected counts (posterior mass of true class a given label b)
    iterations : EM iterations run
    """

    workers: list
    posterior: np.ndarray
    priors: np.ndarray
    confusion: np.ndarray
    counts: np.ndarray
    iterations: int

    def of(self, worker) -> tuple[np.ndarray, np.ndarray]:
        """(confusion, counts) of one labeler."""
        k = self.workers.index(worker)
        return self.confusion[k], self.counts[k]


def dawid_skene(items, workers, labels, n_classes: int, *, max_iter: int = 50, tol: float = 1e-6,
                diag_prior: float = 2.0, off_prior: float = 0.1) -> DawidSkeneResult:
    """Estimate labelers' confusion matrices and items' true classes from (item, labeler, label).

    Parameters
    ----------
    items, workers, labels : sequences of equal length, one entry per label given; items and
        workers may be any hashable ids, labels integers in ``0..n_classes-1``
    n_classes : K
    max_iter, tol : EM stops after ``max_iter`` iterations or when no posterior moves by ``tol``
    diag_prior, off_prior : Dirichlet pseudo-counts added to each confusion row

    Returns
    -------
    DawidSkeneResult
    """
    items, workers, labels = list(items), list(workers), np.asarray(labels, dtype=np.int64)
    if not (len(items) == len(workers) == len(labels)):
        raise ValueError("items, workers and labels must have the same length")
    if n_classes < 2:
        raise ValueError("n_classes must be at least 2")
    if len(labels) and (labels.min() < 0 or labels.max() >= n_classes):
        raise ValueError(f"labels must lie in 0..{n_classes - 1}")
    item_ids = list(dict.fromkeys(items))
    worker_ids = list(dict.fromkeys(workers))
    ii = np.array(_index(items, item_ids), dtype=np.int64)
    ww = np.array(_index(workers, worker_ids), dtype=np.int64)
    n_i, n_w, k = len(item_ids), len(worker_ids), n_classes
    if n_i == 0:
        return DawidSkeneResult([], np.zeros((0, k)), np.full(k, 1.0 / k), np.zeros((0, k, k)),
                                np.zeros((0, k, k)), 0)

    # initialise with soft majority vote
    post = np.zeros((n_i, k))
    np.add.at(post, (ii, labels), 1.0)
    post /= post.sum(axis=1, keepdims=True)
    prior_rows = np.full((k, k), off_prior) + np.eye(k) * (diag_prior - off_prior)
    it = 0
    for it in range(1, max_iter + 1):
        # M step
        counts = np.zeros((n_w, k, k))
        np.add.at(counts, (ww, slice(None), labels), post[ii])  # counts[w, a, b] += post[i, a]
        conf = counts + prior_rows
        conf /= conf.sum(axis=2, keepdims=True)
        priors = post.sum(axis=0) + 1.0
        priors /= priors.sum()
        # E step (log space)
        log_post = np.tile(np.log(priors), (n_i, 1))
        np.add.at(log_post, ii, np.log(conf[ww, :, labels]))
        log_post -= log_post.max(axis=1, keepdims=True)
        new = np.exp(log_post)
        new /= new.sum(axis=1, keepdims=True)
        moved = np.abs(new - post).max()
        post = new
        if moved < tol:
            break
    counts = np.zeros((n_w, k, k))
    np.add.at(counts, (ww, slice(None), labels), post[ii])
    conf = counts + prior_rows
    conf /= conf.sum(axis=2, keepdims=True)
    return DawidSkeneResult(worker_ids, post, priors, conf, counts, it)


def _index(values, ids) -> list[int]:
    pos = {v: n for n, v in enumerate(ids)}
    return [pos[v] for v in values]


def systematic_pairs(confusion: np.ndarray, counts: np.ndarray, *, min_rate: float = 0.5,
                     min_count: float = 3.0) -> list[tuple[int, int]]:
    """(true, given) pairs a labeler maps systematically: off-diagonal ``confusion[a, b] >= min_rate``
    backed by at least ``min_count`` expected labels.

    An honest labeler with error rate 5 % spread over K - 1 classes has ``pi[a, b]`` near
    0.05 / (K - 1); a mapping a -> b puts it near 1. The count floor keeps one unlucky error on a
    rare class from looking like a mapping.
    """
    confusion, counts = np.asarray(confusion), np.asarray(counts)
    out = []
    k = confusion.shape[0]
    for a in range(k):
        for b in range(k):
            if a != b and confusion[a, b] >= min_rate and counts[a, b] >= min_count:
                out.append((a, b))
    return out
