"""Pretraining a clean backbone: metadata, weights, resume after an interrupt, seeding, errors."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from learner.backbones import build_backbone
from learner.pretrain import pretrain_backbone


@pytest.fixture
def tiny_npz(tmp_path, monkeypatch):
    """Three colour-coded classes of 12x12 images (learnable in a couple of epochs)."""
    monkeypatch.setenv("ROBUSTAL_CACHE_DIR", str(tmp_path / "cache"))
    rng = np.random.default_rng(0)
    colours = np.array([[220, 40, 40], [40, 220, 40], [40, 40, 220]])

    def make(n):
        y = np.arange(n) % 3
        x = colours[y][:, None, None, :] + rng.normal(0, 25, size=(n, 12, 12, 3))
        return np.clip(x, 0, 255).astype(np.uint8), y

    x_tr, y_tr = make(48)
    x_te, y_te = make(24)
    path = tmp_path / "src.npz"
    np.savez(path, x_train=x_tr, y_train=y_tr, x_test=x_te, y_test=y_te, classes=np.array(["r", "g", "b"]))
    return path


def _weights(path):
    return torch.load(path, map_location="cpu", weights_only=True)


def test_pretrain_writes_weights_and_metadata(tiny_npz):
    res = pretrain_backbone(str(tiny_npz), ["r", "g", "b"], arch="smallcnn", epochs=2, batch_size=16, lr=0.05,
                            name="t1", progress=False)
    meta = json.loads(res.meta_path.read_text())
    assert meta["arch"] == "smallcnn" and meta["epochs"] == 2 and meta["source_classes"] == ["r", "g", "b"]
    assert meta["train_size"] == 48 and meta["test_size"] == 24 and len(meta["history"]) == 2
    assert len(meta["data_fingerprint"]) == 16 and len(meta["weights_sha256"]) == 64
    assert meta["source_test_accuracy"] > 0.5  # three colours: far above chance (1/3)
    assert res.weights_path.parent.parent.name == "backbones"
    model = build_backbone("smallcnn", weights=res.weights_path)  # loads strictly
    assert model(torch.zeros(2, 3, 12, 12)).shape == (2, 64)


def test_resume_after_interrupt_matches_an_uninterrupted_run(tiny_npz):
    kw = dict(arch="smallcnn", epochs=3, batch_size=16, lr=0.05, seed=3, progress=False)
    full = pretrain_backbone(str(tiny_npz), ["r", "g", "b"], name="full", **kw)

    class Stop(Exception):
        pass

    def stop_after_first(line):
        if line.startswith("epoch 1/"):
            raise Stop

    with pytest.raises(Stop):
        pretrain_backbone(str(tiny_npz), ["r", "g", "b"], name="cut", log=stop_after_first, **kw)
    lines = []
    resumed = pretrain_backbone(str(tiny_npz), ["r", "g", "b"], name="cut", log=lines.append, **kw)
    assert lines[0].startswith("resuming cut after epoch 1/3") and len(lines) == 3
    a, b = _weights(full.weights_path), _weights(resumed.weights_path)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6)


def test_class_subset_and_bad_settings(tiny_npz):
    res = pretrain_backbone(str(tiny_npz), ["g", "b"], arch="smallcnn", epochs=1, batch_size=16, name="sub",
                            progress=False)
    assert res.meta["source_classes"] == ["g", "b"] and res.meta["train_size"] == 32
    with pytest.raises(ValueError, match="other settings"):
        pretrain_backbone(str(tiny_npz), ["g", "b"], arch="smallcnn", epochs=2, batch_size=16, name="sub",
                          progress=False)
    again = pretrain_backbone(str(tiny_npz), ["g", "b"], arch="smallcnn", epochs=2, batch_size=16, name="sub",
                              progress=False, resume=False)
    assert again.meta["epochs"] == 2
    with pytest.raises(ValueError, match="unknown class"):
        pretrain_backbone(str(tiny_npz), ["cat"], arch="smallcnn", epochs=1, name="x", progress=False)
    with pytest.raises(ValueError, match="trainable"):
        pretrain_backbone(str(tiny_npz), None, arch="flatten", epochs=1, name="x", progress=False)
    with pytest.raises(ValueError, match="plain folder name"):
        pretrain_backbone(str(tiny_npz), None, arch="smallcnn", epochs=1, name="../x", progress=False)


def test_source_classes_leave_out_the_targets():
    from learner.pretrain import CIFAR2_SOURCE_CLASSES, CIFAR10_CLASSES, classes_seen, source_classes_for

    assert CIFAR2_SOURCE_CLASSES == ("automobile", "bird", "cat", "deer", "dog", "horse", "ship", "truck")
    other = source_classes_for(("deer", "truck"))
    assert other == ("airplane", "automobile", "bird", "cat", "dog", "frog", "horse", "ship")
    assert set(other) | {"deer", "truck"} == set(CIFAR10_CLASSES)
    assert source_classes_for(("truck", "deer")) == other  # CIFAR-10's order, whatever the pair's
    with pytest.raises(ValueError, match="unknown CIFAR-10 class"):
        source_classes_for(("deer", "unicorn"))
    with pytest.raises(ValueError, match="need 2"):
        source_classes_for(CIFAR10_CLASSES[:9])
    # a backbone's meta.json tells whether it saw the classes a run labels
    assert classes_seen({"source_classes": list(CIFAR2_SOURCE_CLASSES)}, ("deer", "truck")) == ["deer", "truck"]
    assert classes_seen({"source_classes": list(other)}, ("deer", "truck")) == []
    assert classes_seen(None, ("deer",)) == []


def test_the_weights_digest_names_the_weights_not_the_file(tiny_npz, tmp_path):
    from learner.pretrain import weights_digest

    kw = dict(arch="smallcnn", epochs=1, batch_size=16, lr=0.05, seed=5, progress=False)
    a = pretrain_backbone(str(tiny_npz), ["r", "g", "b"], name="da", **kw)
    b = pretrain_backbone(str(tiny_npz), ["r", "g", "b"], name="db", **kw)  # the same run again
    assert a.meta["weights_digest"] == b.meta["weights_digest"] == weights_digest(_weights(a.weights_path))
    copy = tmp_path / "copy.pt"
    torch.save(_weights(a.weights_path), copy)  # the same tensors written again
    assert weights_digest(_weights(copy)) == a.meta["weights_digest"]
    other = pretrain_backbone(str(tiny_npz), ["r", "g", "b"], name="dc", **{**kw, "seed": 6})
    assert other.meta["weights_digest"] != a.meta["weights_digest"]
