import numpy as np
import pytest

from learner.heads import HeadConfig, accuracy, fit_standardizer, train_head


def test_head_learns_digits(digits):
    xp, yp, xt, yt = digits
    head = train_head(xp, yp, 10, standardizer=fit_standardizer(xp), seed=0)
    assert accuracy(head, xt, yt) > 0.93
    proba = head.predict_proba(xt[:5])
    assert proba.shape == (5, 10)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-6)


def test_binary_head_is_sigmoid_and_boundary_distance_is_exact(digits):
    xp, yp, *_ = digits
    mask = (yp == 0) | (yp == 1)
    x, y = xp[mask], (yp[mask] == 1).astype(int)
    head = train_head(x, y, 2, seed=0)
    w, b = head.class_weights()
    z = x @ w.T + b
    np.testing.assert_allclose(z[:, 0], b[0])  # 2 classes: logits [0, z]
    # distance to the boundary of a linear binary model: |w.x + b| / ||w||
    expected = np.abs(z[:, 1] - z[:, 0]) / np.linalg.norm(w[1] - w[0])
    np.testing.assert_allclose(head.boundary_distance(x), expected, rtol=1e-6)
    # stepping just past that distance along the normal flips the prediction
    i = 0
    direction = (w[0] - w[1]) if head.predict(x[:1])[0] == 1 else (w[1] - w[0])
    moved = x[i] + direction / np.linalg.norm(direction) * expected[i] * 1.01
    assert head.predict(moved[None])[0] != head.predict(x[:1])[0]


def test_zero_weight_excludes_labels(digits):
    xp, yp, xt, yt = digits
    flipped = yp.copy()
    bad = flipped == 3
    flipped[bad] = 8  # poison every 3 as 8
    w = np.where(bad, 0.0, 1.0)
    head = train_head(xp, flipped, 10, sample_weight=w, seed=0)
    # with the poisoned labels excluded, the model never learned "3 -> 8"
    pred_on_3 = head.predict(xt[yt == 3])
    assert (pred_on_3 == 8).mean() < 0.2
    poisoned = train_head(xp, flipped, 10, seed=0)
    assert (poisoned.predict(xt[yt == 3]) == 8).mean() > 0.8


def test_training_is_deterministic(digits):
    xp, yp, xt, _ = digits
    a = train_head(xp[:200], yp[:200], 10, seed=3, config=HeadConfig(epochs=30))
    b = train_head(xp[:200], yp[:200], 10, seed=3, config=HeadConfig(epochs=30))
    np.testing.assert_array_equal(a.predict_proba(xt), b.predict_proba(xt))


def test_mismatched_lengths_are_refused():
    with pytest.raises(ValueError, match="differ in length"):
        train_head(np.zeros((3, 2)), np.zeros(2, dtype=int), 2)
