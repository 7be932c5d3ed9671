"""Pixel-space crafting through backbone + head, as the live loop and `--augment-space pixel` use it."""
import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

from learner import device as devices
from learner.augment import PixelSettings, craft_pixel_space, pixel_crafter
from learner.backbones import build_backbone, extract_features, to_tensor
from learner.heads import fit_standardizer, train_head
from learner.live import LiveConfig
from learner.loop import LoopConfig, LoopData, run_loop
from learner.oracles import LabelerPool

ALL = PixelSettings(("cw", "deepfool", "noise"), noise_variance=0.01)


@pytest.fixture(scope="module")
def pixel_data():
    x, y = load_digits(return_X_y=True)
    mask = np.isin(y, [3, 8])
    images = np.round(x[mask] / 16.0 * 255).astype(np.uint8).reshape(-1, 8, 8, 1)
    labels = (y[mask] == 8).astype(int)
    backbone = build_backbone("flatten", in_channels=1)
    feats = extract_features(backbone, images)
    n = 250
    return LoopData(feats[:n], labels[:n], feats[n:], labels[n:], 2, pool_images=images[:n], backbone=backbone)


@pytest.fixture(scope="module")
def head(pixel_data):
    d = pixel_data
    return train_head(d.pool_features[:120], d.pool_labels[:120], 2, standardizer=fit_standardizer(d.pool_features),
                      seed=0)


@pytest.mark.parametrize("impl", ["fast", "art"])
def test_pixel_space_adversarial_copies_flip_the_model(pixel_data, head, impl):
    d, model = pixel_data, head
    items = np.flatnonzero(model.predict(d.pool_features) == d.pool_labels)[:6]
    settings = PixelSettings(("cw", "deepfool", "noise"), noise_variance=0.01, attack_impl=impl)
    out = craft_pixel_space(d.pool_images[items], d.backbone, model, d.pool_labels[items], settings,
                            np.random.default_rng(0))
    rows, l2 = out.rows, out.l2
    assert len(rows) == len(items)
    assert np.isfinite(l2).all() and (l2 > 0).all()
    for item, r in zip(items, rows):
        assert r.shape[1] == d.pool_features.shape[1]
        assert 2 <= len(r) <= 3  # C&W and DeepFool when they succeed, plus one noise copy
        flipped = model.predict(r[:-1]) != d.pool_labels[item]
        assert flipped.all()  # adversarial copies cross the boundary (noise copy is last)
        # each adversarial copy is at least as far as the item's minimal perturbation
        dist = np.linalg.norm(r[:-1] - d.pool_features[item], axis=1)
        assert dist.min() >= l2[list(items).index(item)] * 0.999
    # every attack that found no copy is counted, none silently kept
    assert out.failed == 2 * len(items) - sum(len(r) - 1 for r in rows)


def test_crafted_images_are_valid_images_and_the_kept_adversarial_ones_change_the_prediction(pixel_data, head):
    d, model = pixel_data, head
    items = np.arange(40)
    labels = d.pool_labels[items].copy()
    labels[:5] = 1 - labels[:5]  # wrong labels: the model "gets these items wrong", nothing to attack
    out = craft_pixel_space(d.pool_images[items], d.backbone, model, labels, ALL, np.random.default_rng(1))
    right = model.predict(d.pool_features[items]) == labels
    assert (~right).any() and right.any()
    classifier = torch.nn.Sequential(d.backbone, model.torch_module()).eval()
    kept_adversarial = 0
    for n, (imgs, rows) in enumerate(zip(out.images, out.rows)):
        assert imgs.shape[1:] == (1, 8, 8) and len(imgs) == len(rows)
        assert np.isfinite(imgs).all() and imgs.min() >= 0.0 and imgs.max() <= 1.0  # the images' box
        # features of the kept images are what the loop trains on
        with torch.no_grad():
            np.testing.assert_allclose(d.backbone(torch.from_numpy(imgs)).numpy(), rows, atol=1e-6)
        adversarial = imgs[:-1]  # the noise copy is last
        if not right[n]:
            assert len(adversarial) == 0 and out.l2[n] == 0.0  # already wrong: nothing to attack
            continue
        kept_adversarial += len(adversarial)
        with torch.no_grad():
            pred = classifier(torch.from_numpy(adversarial)).argmax(dim=1).numpy()
        assert (pred != labels[n]).all() and (model.predict(rows[:-1]) != labels[n]).all()
        original = to_tensor(d.pool_images[items[n:n + 1]]).numpy()
        assert all(np.abs(a - original[0]).max() > 0 for a in adversarial)  # never the input itself
        if len(adversarial):
            dist = np.sqrt(((adversarial - original) ** 2).reshape(len(adversarial), -1).sum(axis=1))
            assert abs(dist.min() - out.l2[n]) < 1e-3  # the reported minimal perturbation is a kept image's
    assert kept_adversarial > 0
    assert out.failed == 2 * int(right.sum()) - kept_adversarial


def test_failed_attacks_are_dropped_and_counted_never_copied(pixel_data, head):
    """A head that predicts class 1 whatever the image: no attack can flip it."""
    import copy

    d = pixel_data
    constant = copy.deepcopy(head)
    with torch.no_grad():
        constant.module.linear.weight.zero_()
        constant.module.linear.bias.fill_(5.0)
    items = np.flatnonzero(d.pool_labels == 1)[:5]
    out = craft_pixel_space(d.pool_images[items], d.backbone, constant, d.pool_labels[items], ALL,
                            np.random.default_rng(0))
    assert out.failed == 2 * len(items)
    assert all(len(r) == 1 for r in out.rows)  # the noise copy only
    assert np.isinf(out.l2).all()  # no adversarial example: the tau rule ignores these items


def test_the_engine_crafter_returns_rows_perturbations_and_failures(pixel_data, head):
    d = pixel_data
    crafter = pixel_crafter(lambda items: d.pool_images[items], d.backbone, ALL)
    items = np.arange(10)
    rows, perts, failed = crafter(head, items, d.pool_labels[items], 7)
    again = crafter(head, items, d.pool_labels[items], 7)
    assert set(perts) == set(range(10)) and set(rows) <= set(range(10)) and isinstance(failed, int)
    for k in rows:  # same seed, same rows (a redelivered task crafts the same)
        np.testing.assert_array_equal(rows[k], again[0][k])


def test_crafting_batch_size_follows_free_memory(monkeypatch):
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.ReLU(), torch.nn.Flatten(),
                                torch.nn.Linear(16 * 32 * 32, 2))
    sample = torch.zeros(1, 3, 32, 32)
    per_image = devices.activation_bytes(model, sample)
    assert per_image == 4 * (3 * 32 * 32 + 16 * 32 * 32 * 2 + 16 * 32 * 32 + 2)  # input, conv, relu, flatten, linear

    def free(gib):
        monkeypatch.setattr(devices, "info", lambda dev=None: devices.DeviceInfo("cpu", "test", 2**40, int(gib * 2**30)))
        return devices.crafting_batch_size(model, sample)

    expected = int(0.5 * 2**30 * devices.MEMORY_SHARE // (per_image * devices.ACTIVATION_FACTOR))
    assert free(0.5) == expected and 1 < expected < devices.MAX_BATCH
    assert free(1.0) >= 2 * expected - 1  # twice the memory, about twice the batch
    assert free(1e-6) == devices.MIN_BATCH and free(1e4) == devices.MAX_BATCH


def test_device_is_cpu_without_cuda_and_can_be_forced(monkeypatch):
    monkeypatch.delenv("ROBUSTAL_DEVICE", raising=False)
    assert devices.pick().type == ("cuda" if torch.cuda.is_available() else "cpu")
    monkeypatch.setenv("ROBUSTAL_DEVICE", "cpu")
    assert devices.pick().type == "cpu"
    info = devices.info()
    assert info.device == "cpu" and "free of" in info.describe()
    if not torch.cuda.is_available():
        monkeypatch.setenv("ROBUSTAL_DEVICE", "cuda")
        with pytest.raises(RuntimeError, match="no CUDA"):
            devices.pick()


def test_augment_space_is_validated_and_reaches_the_engine_config():
    assert LiveConfig().augment_space == "feature"
    assert LiveConfig.from_dict({"augment_space": "pixel"}).augment_space == "pixel"
    with pytest.raises(ValueError, match="augment_space must be one of"):
        LiveConfig.from_dict({"augment_space": "latent"})
    assert LoopConfig(augment_space="pixel").resolved().engine_config(0).augment_space == "pixel"


def test_loop_runs_with_pixel_space_crafting(pixel_data):
    result = run_loop(pixel_data, LoopConfig(strategy="robust", augment_space="pixel", budget=120,
                                             noise_variance=0.01), LabelerPool.build(2), seed=0)
    assert result.history[-1].n_artificial > 0
    assert all(np.isfinite(h.min_perturbation) for h in result.history[1:])
    assert all(h.craft_failed >= 0 for h in result.history) and result.history[0].craft_failed == 0
