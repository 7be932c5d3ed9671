from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def digits():
    """sklearn's digits as features in [0, 1] with a seeded pool/test split."""
    x, y = load_digits(return_X_y=True)
    x = x.astype(np.float32) / 16.0
    order = np.random.default_rng(0).permutation(len(y))
    pool, test = order[:1000], order[1000:]
    return x[pool], y[pool], x[test], y[test]
