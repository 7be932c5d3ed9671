"""training_mode "finetune": the backbone's last stage learns on the labeled items (learner.finetune)."""
import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

from learner import engine
from learner.backbones import build_backbone, extract_features, to_tensor
from learner.finetune import FineTuner, split_last_stage, stage_inputs
from learner.heads import accuracy, fit_standardizer, train_head
from learner.live import LiveConfig
from learner.loop import LoopConfig, LoopData, run_loop
from learner.oracles import LabelerPool


@pytest.fixture(scope="module")
def digit_images():
    x, y = load_digits(return_X_y=True)
    images = np.round(x / 16.0 * 255).astype(np.uint8).reshape(-1, 8, 8, 1)
    return images, y


def _smallcnn():
    torch.manual_seed(0)
    return build_backbone("smallcnn", in_channels=1)


@pytest.mark.parametrize("name", ["smallcnn", "resnet20", "resnet50"])
def test_the_split_backbone_computes_the_same_features(name):
    torch.manual_seed(0)
    backbone = build_backbone(name, in_channels=3)
    images = (np.random.default_rng(0).random((4, 32, 32, 3)) * 255).astype(np.uint8)
    stem, last = split_last_stage(backbone)
    with torch.no_grad():
        np.testing.assert_allclose(last(stem(to_tensor(images))).numpy(), backbone(to_tensor(images)).numpy(),
                                   rtol=0, atol=1e-6)


def test_flatten_has_no_stage_to_finetune_and_says_so():
    with pytest.raises(ValueError, match="trainable last stage"):
        split_last_stage(build_backbone("flatten"))
    with pytest.raises(ValueError, match="trainable last stage"):
        LiveConfig.from_dict({"training_mode": "finetune"})  # backbone flatten (the default)
    with pytest.raises(ValueError, match="training_mode must be one of"):
        LiveConfig.from_dict({"training_mode": "full", "backbone": "smallcnn"})
    assert LiveConfig.from_dict({"training_mode": "finetune", "backbone": "resnet20"}).training_mode == "finetune"
    from learner.experiments import ExperimentSpec

    with pytest.raises(ValueError, match="trainable last stage"):
        ExperimentSpec(backbone="flatten", loop=LoopConfig(training_mode="finetune"))
    with pytest.raises(ValueError, match="training_mode must be one of"):
        LoopConfig(training_mode="full").resolved()


def test_a_refit_changes_the_features_and_they_generalise_better(digit_images):
    images, y = digit_images
    backbone = _smallcnn()
    frozen = extract_features(backbone, images)
    tuner = FineTuner(backbone, stage_inputs(backbone, images))
    np.testing.assert_allclose(tuner.features(), frozen, rtol=0, atol=1e-5)  # before any refit: the frozen ones
    items, rest = np.arange(300), np.arange(300, len(y))  # 300 labeled digits; the others held out
    weights = np.ones(len(items))

    def accuracies(feats):
        head = train_head(feats[items], y[items], 10, standardizer=fit_standardizer(feats), seed=0)
        return accuracy(head, feats[items], y[items]), accuracy(head, feats[rest], y[rest])

    train_before, held_before = accuracies(frozen)
    assert tuner.fit(items, y[items], weights, 10, seed=1)
    tuned = tuner.features()
    assert tuned.shape == frozen.shape and np.abs(tuned - frozen).max() > 1e-3
    train_after, held_after = accuracies(tuned)
    # a head on random smallcnn features fits 300 digits already (training accuracy 1.0 both
    # times): the fine-tuned stage shows on the 1,497 held-out digits (0.807 -> 0.857 here)
    assert train_after >= train_before
    assert held_after > held_before + 0.02, (held_before, held_after)
    # the frozen backbone is left as it was; the same seed gives the same stage
    np.testing.assert_allclose(extract_features(backbone, images), frozen, rtol=0, atol=0)
    again = FineTuner(backbone, tuner.inputs)
    again.fit(items, y[items], weights, 10, seed=1)
    np.testing.assert_array_equal(again.features(), tuned)
    # nothing to learn from (one class, or every weight 0): the stage stays
    other = FineTuner(backbone, tuner.inputs)
    assert not other.fit(items[:5], np.zeros(5, int), np.ones(5), 10, seed=1)
    assert not other.fit(items, y[items], np.zeros(len(items)), 10, seed=1)
    np.testing.assert_allclose(other.features(), frozen, rtol=0, atol=1e-5)


def test_trust_weights_steer_the_refit(digit_images):
    images, y = digit_images
    backbone = _smallcnn()
    inputs = stage_inputs(backbone, images[:300])
    items = np.arange(100)
    w = np.ones(len(items))
    down = w.copy()
    down[:50] = 0.05  # half the labels from a distrusted labeler
    a, b = FineTuner(backbone, inputs), FineTuner(backbone, inputs)
    a.fit(items, y[items], w, 10, seed=2)
    b.fit(items, y[items], down, 10, seed=2)
    assert np.abs(a.features() - b.features()).max() > 1e-4


@pytest.fixture(scope="module")
def image_data(digit_images):
    images, y = digit_images
    mask = np.isin(y, [3, 8])
    images, labels = images[mask], (y[mask] == 8).astype(int)
    backbone = _smallcnn()
    feats = extract_features(backbone, images)
    n = 250
    return LoopData(feats[:n], labels[:n], feats[n:], labels[n:], 2, pool_images=images[:n], backbone=backbone,
                    test_images=images[n:])


def test_simulate_finetune_two_iterations(image_data):
    d = image_data
    cfg = LoopConfig(strategy="robust", training_mode="finetune", augment_space="pixel", noise_variance=0.01,
                     secured_size=20,
                     initial_size=20, batch_size=20, budget=20 + 20 + 20)  # S, batch 0, batch 1
    labelers = LabelerPool.build(2, n_labelers=5)
    result = run_loop(d, cfg, labelers, seed=0)
    assert [h.iteration for h in result.history] == [0, 1]
    assert result.history[1].n_artificial > 0  # pixel-space copies through the fine-tuned stage
    assert all(0.0 <= h.test_accuracy <= 1.0 for h in result.history)
    again = run_loop(d, cfg, labelers, seed=0)  # deterministic for a seed
    assert [h.test_accuracy for h in again.history] == [h.test_accuracy for h in result.history]
    assert [h.labels_bought for h in again.history] == [h.labels_bought for h in result.history]
    # the test set is measured through the fine-tuned stage, not the frozen features
    head_only = run_loop(d, LoopConfig(**{**cfg.__dict__, "training_mode": "head"}), labelers, seed=0)
    assert [h.test_accuracy for h in head_only.history] != [h.test_accuracy for h in result.history]


def test_the_engine_refuses_finetune_without_a_refit_hook():
    cfg = LiveConfig(training_mode="finetune", backbone="smallcnn")
    pool = engine.Pool(features=np.zeros((4, 2), np.float32), n_classes=2)
    state = engine.EngineState(labels=np.full(4, -1), labeler_of=np.full(4, -1), discarded=np.zeros(4, bool),
                               secured=np.zeros(4, bool), secured_labels=np.full(4, -1), trust={}, crowd=[])
    with pytest.raises(ValueError, match="Pool.refit"):
        engine.step(cfg, pool, state, previous_model=None)


def test_stage_hash_names_one_stage():
    """The web app keys re-extraction chunks by this hash: equal states give equal hashes, any change
    of a weight, a buffer or a name gives another."""
    import torch

    from learner.finetune import stage_hash

    state = {"w": torch.arange(6, dtype=torch.float32).view(2, 3), "n": torch.tensor(3)}
    same = {"n": torch.tensor(3), "w": torch.arange(6, dtype=torch.float32).view(2, 3)}
    assert stage_hash(state) == stage_hash(same) and len(stage_hash(state)) == 64
    moved = {"w": state["w"].clone(), "n": torch.tensor(3)}
    moved["w"][1, 2] += 1e-6
    assert stage_hash(moved) != stage_hash(state)
    assert stage_hash({"w": state["w"].view(3, 2), "n": state["n"]}) != stage_hash(state)  # shape
    assert stage_hash({"w": state["w"], "n": torch.tensor(4)}) != stage_hash(state)  # a buffer
    assert stage_hash({"v": state["w"], "n": state["n"]}) != stage_hash(state)  # a name
