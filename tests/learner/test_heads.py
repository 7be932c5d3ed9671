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


@pytest.mark.parametrize("n_classes,batch_size", [(2, None), (10, None), (10, 64)])
def test_numpy_training_matches_torch_adam_and_autograd(digits, n_classes, batch_size):
    """Without dropout (the only random draw that differs) the hand-written gradients and Adam
    give the weights ``torch.optim.Adam`` gives through autograd, full batch and mini-batch."""
    from bench.bench_head import torch_reference_fit

    xp, yp, *_ = digits
    x, y = xp[:300], yp[:300] % n_classes
    weight = np.linspace(0.2, 1.0, len(y))
    config = HeadConfig(dropout=0.0, epochs=40, batch_size=batch_size)
    ours = train_head(x, y, n_classes, sample_weight=weight, config=config, seed=5)
    reference = torch_reference_fit(x, y, n_classes, sample_weight=weight, config=config, seed=5)
    w_ours, b_ours = ours.class_weights()
    w_ref, b_ref = reference.class_weights()
    np.testing.assert_allclose(w_ours, w_ref, rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(b_ours, b_ref, rtol=1e-3, atol=1e-4)


def test_dropout_is_seeded_and_changes_the_fit(digits):
    xp, yp, *_ = digits
    x, y = xp[:300], yp[:300]
    a = train_head(x, y, 10, seed=1, config=HeadConfig(epochs=20))
    b = train_head(x, y, 10, seed=2, config=HeadConfig(epochs=20))
    no_dropout = train_head(x, y, 10, seed=1, config=HeadConfig(epochs=20, dropout=0.0))
    assert not np.allclose(a.class_weights()[0], b.class_weights()[0])
    assert not np.allclose(a.class_weights()[0], no_dropout.class_weights()[0])
