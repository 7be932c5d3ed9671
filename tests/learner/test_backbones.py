"""Tests for learner.backbones (no Django)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision

from learner import backbones
from learner.backbones import (
    build_backbone,
    extract_features,
    feature_cache_key,
    to_tensor,
    train_backbone_supervised,
)
from learner.data import load_digits


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ROBUSTAL_CACHE_DIR", str(tmp_path / "cache"))


def _images(n=6, size=32, c=3, seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=(n, size, size, c), dtype=np.uint8)


# ------------------------------------------------------------------------------ to_tensor


def test_to_tensor():
    x = np.zeros((2, 4, 5, 3), np.uint8)
    x[0, 1, 2, 1] = 255
    t = to_tensor(x)
    assert t.dtype == torch.float32 and t.shape == (2, 3, 4, 5)
    assert t[0, 1, 1, 2] == 1.0 and float(t.sum()) == 1.0
    assert to_tensor(np.zeros((2, 4, 4), np.uint8)).shape == (2, 1, 4, 4)
    ro = x.copy()
    ro.setflags(write=False)  # read-only input must work (and not be aliased)
    assert to_tensor(ro).shape == (2, 3, 4, 5)
    with pytest.raises(ValueError, match="uint8"):
        to_tensor(x.astype(np.float32))


# ------------------------------------------------------------------------------ architectures


@pytest.mark.parametrize(
    "name,c,size,dim",
    [
        ("flatten", 3, 8, 3 * 8 * 8),
        ("flatten", 1, 8, 64),
        ("smallcnn", 1, 8, 64),
        ("smallcnn", 3, 32, 64),
        ("resnet20", 3, 32, 64),
        ("resnet20", 1, 8, 64),
        ("resnet50", 3, 32, 2048),
        ("resnet50", 1, 16, 2048),
    ],
)
def test_backbone_output_shapes(name, c, size, dim):
    torch.manual_seed(0)
    m = build_backbone(name, in_channels=c)
    assert not m.training and m.backbone_name == name
    if name != "flatten":
        assert m.feature_dim == dim
    x = _images(3, size, c)
    with torch.no_grad():
        out = m(to_tensor(x))
    assert out.shape == (3, dim) and torch.isfinite(out).all()
    if name == "flatten":
        # Pixels pass through unchanged, in [0, 1].
        np.testing.assert_allclose(out.numpy(), to_tensor(x).flatten(1).numpy())


def test_backbone_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="unknown backbone"):
        build_backbone("vgg")
    with pytest.raises(ValueError, match="in_channels"):
        build_backbone("resnet20", in_channels=2)
    with pytest.raises(ValueError, match="only for resnet50"):
        build_backbone("resnet20", weights="imagenet")
    with pytest.raises(FileNotFoundError):
        build_backbone("resnet20", weights=tmp_path / "missing.pt")


def test_resnet20_structure_and_normalisation():
    m = build_backbone("resnet20")
    convs = [mod for mod in m.modules() if isinstance(mod, torch.nn.Conv2d) and mod.kernel_size == (3, 3)]
    assert len(convs) == 19  # 1 stem + 3 stages x 3 blocks x 2 convs
    assert [s[0].conv1.out_channels for s in (m.layer1, m.layer2, m.layer3)] == [16, 32, 64]
    # Normalisation is inside, but kept out of the state_dict.
    assert not any(k.startswith("normalize") for k in m.state_dict())
    x = torch.full((1, 3, 4, 4), 0.4914)
    assert torch.allclose(m.normalize(x)[0, 0], torch.zeros(4, 4), atol=1e-6)


def test_weights_roundtrip_and_mismatch(tmp_path):
    torch.manual_seed(1)
    src = build_backbone("resnet20")
    p = tmp_path / "r20.pt"
    torch.save(src.state_dict(), p)
    torch.manual_seed(2)
    loaded = build_backbone("resnet20", weights=p)
    fresh = build_backbone("resnet20")
    x = _images(4)
    np.testing.assert_allclose(extract_features(loaded, x), extract_features(src, x), rtol=1e-5, atol=1e-6)
    assert not np.allclose(extract_features(fresh, x), extract_features(src, x))
    torch.save(build_backbone("smallcnn").state_dict(), tmp_path / "small.pt")
    with pytest.raises(ValueError, match="do not fit backbone 'resnet20'"):
        build_backbone("resnet20", weights=tmp_path / "small.pt")


def test_resnet50_local_state_dict_and_imagenet_lookup(tmp_path, monkeypatch):
    x = _images(1)
    # Missing ImageNet file: a clear error, raised before anything is built or downloaded.
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "empty_hub"))
    with pytest.raises(FileNotFoundError, match="never downloaded"):
        build_backbone("resnet50", weights="imagenet")
    # 1) A whole-backbone state_dict file.
    torch.manual_seed(3)
    src = build_backbone("resnet50")
    ref = extract_features(src, x)
    p = tmp_path / "r50.pt"
    torch.save(src.state_dict(), p)
    np.testing.assert_allclose(
        extract_features(build_backbone("resnet50", weights=p), x), ref, rtol=1e-4, atol=1e-5
    )
    # 2) A plain torchvision ResNet-50 state_dict (trunk + fc), as the hub cache holds it,
    #    found through weights="imagenet" (the hub cache is only read, never downloaded to).
    tv_sd = dict(src.net.state_dict())
    tv_sd["fc.weight"], tv_sd["fc.bias"] = torch.zeros(1000, 2048), torch.zeros(1000)
    with torch.device("meta"):  # key list only: no memory, no init cost
        assert set(tv_sd) == set(torchvision.models.resnet50(weights=None).state_dict())
    hub_file = tmp_path / "hub" / "checkpoints" / backbones.imagenet_weights_path().name
    hub_file.parent.mkdir(parents=True)
    torch.save(tv_sd, hub_file)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    np.testing.assert_allclose(
        extract_features(build_backbone("resnet50", weights="imagenet"), x), ref, rtol=1e-4, atol=1e-5
    )


# ------------------------------------------------------------------------------ extraction + cache


def test_extract_features_matches_forward_and_restores_mode():
    torch.manual_seed(0)
    m = build_backbone("smallcnn")
    x = _images(10)
    with torch.no_grad():
        direct = m(to_tensor(x)).numpy()
    m.train()
    bn = next(mod for mod in m.modules() if isinstance(mod, torch.nn.BatchNorm2d))
    stats = bn.running_mean.clone()
    f = extract_features(m, x, batch_size=3)
    assert f.dtype == np.float32 and f.shape == (10, 64)
    np.testing.assert_allclose(f, direct, rtol=1e-5, atol=1e-6)
    assert m.training  # previous mode restored
    assert torch.equal(bn.running_mean, stats)  # eval mode: BN statistics untouched
    assert extract_features(m, x[:0]).shape == (0, 64)


def test_extract_features_cache(tmp_path):
    torch.manual_seed(0)
    m = build_backbone("smallcnn")
    x = _images(5)
    key = "unit-test-key"
    f1 = extract_features(m, x, cache_key=key)
    cache_file = tmp_path / "cache" / "features" / f"{key}.npy"
    assert cache_file.is_file()
    np.testing.assert_array_equal(np.load(cache_file), f1)

    class Boom(torch.nn.Module):
        def forward(self, x):
            raise AssertionError("backbone ran despite a cached result")

    np.testing.assert_array_equal(extract_features(Boom(), x, cache_key=key), f1)
    # Another number of images cannot be served by that cache entry.
    assert extract_features(m, _images(3), cache_key=key).shape == (3, 64)
    with pytest.raises(ValueError, match="cache_key"):
        extract_features(m, x, cache_key="../escape")


def test_feature_cache_key_tracks_weights_content(tmp_path):
    w = tmp_path / "w.pt"
    torch.manual_seed(0)
    torch.save(build_backbone("smallcnn").state_dict(), w)
    k1 = feature_cache_key("fp1", "smallcnn", w, "pool")
    assert k1 == feature_cache_key("fp1", "smallcnn", str(w), "pool")
    assert k1.startswith("smallcnn-pool-")
    assert k1 != feature_cache_key("fp1", "smallcnn", w, "test")
    assert k1 != feature_cache_key("fp2", "smallcnn", w, "pool")
    assert k1 != feature_cache_key("fp1", "smallcnn", None, "pool")
    assert feature_cache_key("fp1", "smallcnn", None, "pool", extra="seed=1") != feature_cache_key(
        "fp1", "smallcnn", None, "pool", extra="seed=2"
    )
    # New weights at the same path: new key, so stale features are never returned.
    torch.manual_seed(1)
    torch.save(build_backbone("smallcnn").state_dict(), w)
    k2 = feature_cache_key("fp1", "smallcnn", w, "pool")
    assert k2 != k1
    x = _images(4)
    f_old = extract_features(build_backbone("smallcnn"), x, cache_key=k1)
    f_new = extract_features(build_backbone("smallcnn", weights=w), x, cache_key=k2)
    assert not np.allclose(f_old, f_new)
    with pytest.raises(FileNotFoundError):
        feature_cache_key("fp1", "smallcnn", tmp_path / "missing.pt", "pool")


# ------------------------------------------------------------------------------ training


def _linear_probe(train_f, train_y, test_f, test_y) -> float:
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    sc = StandardScaler().fit(train_f)
    clf = LogisticRegression(max_iter=1000).fit(sc.transform(train_f), train_y)
    return clf.score(sc.transform(test_f), test_y)


def test_train_backbone_supervised_improves_digits():
    ds = load_digits(pool_size=1000, seed=0)
    torch.manual_seed(0)
    m = build_backbone("smallcnn", in_channels=1)
    before = _linear_probe(
        extract_features(m, ds.x_pool), ds.y_pool, extract_features(m, ds.x_test), ds.y_test
    )
    m, train_acc = train_backbone_supervised(
        m, ds.x_pool, ds.y_pool, epochs=4, batch_size=64, lr=3e-3, seed=0, progress=False
    )
    assert not m.training
    assert train_acc >= 0.95
    after = _linear_probe(
        extract_features(m, ds.x_pool), ds.y_pool, extract_features(m, ds.x_test), ds.y_test
    )
    # Random conv features are already decent on digits; training must at least halve the error.
    assert after >= 0.97 and (1 - after) < 0.5 * (1 - before), (before, after)


def test_train_backbone_supervised_deterministic_and_augment():
    x = _images(24, 16)
    y = np.arange(24) % 2
    states = []
    for _ in range(2):
        torch.manual_seed(0)
        m = build_backbone("resnet20")
        m, acc = train_backbone_supervised(
            m, x, y, epochs=1, batch_size=8, seed=5, progress=False, augment=True, optimizer="sgd", lr=0.05
        )
        assert 0.0 <= acc <= 1.0
        states.append(m.state_dict())
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])
    with pytest.raises(ValueError, match="no trainable"):
        train_backbone_supervised(build_backbone("flatten"), x, y, epochs=1, progress=False)
    with pytest.raises(ValueError, match="optimizer"):
        train_backbone_supervised(build_backbone("smallcnn"), x, y, epochs=1, progress=False, optimizer="lbfgs")


def test_augment_is_a_crop_and_flip():
    x = torch.arange(2 * 1 * 6 * 6, dtype=torch.float32).view(2, 1, 6, 6)
    gen = torch.Generator().manual_seed(0)
    out = backbones._augment(x, gen, pad=2, flip=True)
    xp = torch.nn.functional.pad(x, (2, 2, 2, 2), mode="reflect")
    for i in range(2):
        crops = [xp[i, 0, r : r + 6, c : c + 6] for r in range(5) for c in range(5)]
        assert any(torch.equal(out[i, 0], cr) or torch.equal(out[i, 0], cr.flip(1)) for cr in crops)
