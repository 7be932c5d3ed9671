"""Tests for learner.data (no Django)."""

from __future__ import annotations

import io
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from learner import data
from learner.data import (
    LabeledImages,
    load_cifar10_jpeg_tarball,
    load_cifar10_python,
    load_dataset,
    load_digits,
    load_image_folder,
    load_npz,
    shared_data_dir,
)


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ROBUSTAL_CACHE_DIR", str(tmp_path / "cache"))


def _row_set(x: np.ndarray) -> set[bytes]:
    return {img.tobytes() for img in x}


# ------------------------------------------------------------------------------ digits


def test_digits_shapes_dtypes_defaults():
    ds = load_digits()
    assert ds.x_pool.shape == (1000, 8, 8, 1) and ds.x_pool.dtype == np.uint8
    assert ds.x_test.shape == (797, 8, 8, 1) and ds.x_test.dtype == np.uint8
    assert ds.y_pool.dtype == np.int64 and ds.y_test.dtype == np.int64
    assert ds.classes == tuple(str(i) for i in range(10))
    assert ds.x_pool.max() == 255  # 16 -> 255
    assert set(np.unique(ds.y_pool)) == set(range(10))
    assert ds.name == "digits" and len(ds.fingerprint) == 16


def test_digits_deterministic_and_seed_dependent():
    a, b, c = load_digits(seed=3), load_digits(seed=3), load_digits(seed=4)
    assert a.fingerprint == b.fingerprint
    np.testing.assert_array_equal(a.x_pool, b.x_pool)
    np.testing.assert_array_equal(a.y_test, b.y_test)
    assert a.fingerprint != c.fingerprint
    assert not np.array_equal(a.y_pool, c.y_pool)


def test_digits_pool_and_test_partition_the_set():
    from sklearn.datasets import load_digits as sk

    ds = load_digits(pool_size=500, test_size=300, seed=0)
    assert len(ds.x_pool) == 500 and len(ds.x_test) == 300
    full = load_digits(pool_size=1797, test_size=0, seed=0)
    assert len(full.x_test) == 0
    # The full draw is a permutation of sklearn's images (with its labels).
    d = sk()
    expected = np.round(d.images * 255 / 16).astype(np.uint8)
    order = np.lexsort(full.x_pool.reshape(1797, -1).T)
    order_sk = np.lexsort(expected.reshape(1797, -1).T)
    np.testing.assert_array_equal(full.x_pool[order, ..., 0], expected[order_sk])


def test_digits_class_subset_reindexes_in_given_order():
    from sklearn.datasets import load_digits as sk

    ds = load_digits(classes=("3", "1"), seed=0)
    assert ds.classes == ("3", "1")
    assert set(np.unique(np.concatenate([ds.y_pool, ds.y_test]))) == {0, 1}
    n3 = int((sk().target == 3).sum())
    n1 = int((sk().target == 1).sum())
    assert len(ds.x_pool) + len(ds.x_test) == n3 + n1
    d = sk()
    threes = _row_set(np.round(d.images[d.target == 3] * 255 / 16).astype(np.uint8)[..., None])
    assert all(img.tobytes() in threes for img in ds.x_pool[ds.y_pool == 0])
    assert not any(img.tobytes() in threes for img in ds.x_pool[ds.y_pool == 1])


def test_digits_bad_arguments():
    with pytest.raises(ValueError, match="unknown class"):
        load_digits(classes=("3", "x"))
    with pytest.raises(ValueError, match="single string"):
        load_digits(classes="3")
    with pytest.raises(ValueError, match="exceeds"):
        load_digits(pool_size=1500, test_size=500)


# ------------------------------------------------------------------------------ container


def test_labeled_images_validation():
    x = np.zeros((2, 4, 4, 3), np.uint8)
    ok = LabeledImages(x, np.array([0, 1]), x, np.array([1, 0]), ("a", "b"), "t")
    assert ok.num_classes == 2 and ok.image_shape == (4, 4, 3)
    with pytest.raises(ValueError, match="uint8"):
        LabeledImages(x.astype(np.float32), np.array([0, 1]), x, np.array([1, 0]), ("a", "b"))
    with pytest.raises(ValueError, match="outside"):
        LabeledImages(x, np.array([0, 2]), x, np.array([1, 0]), ("a", "b"))
    with pytest.raises(ValueError, match="channels"):
        LabeledImages(np.zeros((2, 4, 4, 2), np.uint8), np.array([0, 1]), x, np.array([1, 0]), ("a", "b"))
    # Fingerprint depends on content and class names.
    other = LabeledImages(x, np.array([0, 1]), x, np.array([1, 0]), ("a", "c"), "t")
    assert ok.fingerprint != other.fingerprint


# ------------------------------------------------------------------------------ npz


def _make_split_npz(path: Path, n_train=30, n_test=12, with_classes=True):
    # Image i is filled with value i (train) or 100 + i (test); class = i % 3.
    x_train = np.repeat(np.arange(n_train, dtype=np.uint8), 4 * 4 * 3).reshape(n_train, 4, 4, 3)
    x_test = np.repeat(100 + np.arange(n_test, dtype=np.uint8), 4 * 4 * 3).reshape(n_test, 4, 4, 3)
    arrays = dict(
        x_train=x_train, y_train=np.arange(n_train) % 3, x_test=x_test, y_test=np.arange(n_test) % 3
    )
    if with_classes:
        arrays["classes"] = np.array(["a", "b", "c"])
    np.savez(path, **arrays)


def test_npz_split_layout(tmp_path):
    p = tmp_path / "tiny.npz"
    _make_split_npz(p)
    ds = load_npz(p, pool_size=10, test_size=5, seed=1)
    assert ds.x_pool.shape == (10, 4, 4, 3) and ds.x_test.shape == (5, 4, 4, 3)
    assert ds.classes == ("a", "b", "c") and ds.name == "tiny"
    # Pool images come from train (values < 100), test images from test.
    assert ds.x_pool.max() < 100 and ds.x_test.min() >= 100
    # Labels still agree with the image content (class = value % 3).
    np.testing.assert_array_equal(ds.y_pool, ds.x_pool[:, 0, 0, 0] % 3)
    np.testing.assert_array_equal(ds.y_test, (ds.x_test[:, 0, 0, 0] - 100) % 3)
    # Shuffled before slicing: not simply the first 10 training images.
    assert set(ds.x_pool[:, 0, 0, 0]) != set(range(10))
    again = load_npz(p, pool_size=10, test_size=5, seed=1)
    assert again.fingerprint == ds.fingerprint
    assert load_npz(p, pool_size=10, test_size=5, seed=2).fingerprint != ds.fingerprint
    full = load_npz(p)
    assert len(full.x_pool) == 30 and len(full.x_test) == 12


def test_npz_class_subset(tmp_path):
    p = tmp_path / "tiny.npz"
    _make_split_npz(p)
    ds = load_npz(p, classes=("c", "a"), seed=0)
    assert ds.classes == ("c", "a")
    assert len(ds.x_pool) == 20 and len(ds.x_test) == 8
    # "c" (old label 2) is now 0, "a" (old 0) is now 1.
    old = ds.x_pool[:, 0, 0, 0] % 3
    np.testing.assert_array_equal(ds.y_pool, np.where(old == 2, 0, 1))
    assert not np.any(old == 1)
    with pytest.raises(ValueError, match="unknown class"):
        load_npz(p, classes=("z",))
    with pytest.raises(ValueError, match="pool_size"):
        load_npz(p, pool_size=31)


def test_npz_xy_layout_and_grayscale(tmp_path):
    p = tmp_path / "xy.npz"
    x = np.repeat(np.arange(50, dtype=np.uint8), 36).reshape(50, 6, 6)  # NHW grayscale
    np.savez(p, x=x, y=np.arange(50) % 2)
    ds = load_npz(p, seed=0)
    assert ds.x_pool.shape == (40, 6, 6, 1) and ds.x_test.shape == (10, 6, 6, 1)
    assert ds.classes == ("0", "1")
    # Pool and test are disjoint and together the whole set.
    vals = np.concatenate([ds.x_pool[:, 0, 0, 0], ds.x_test[:, 0, 0, 0]])
    assert sorted(vals) == list(range(50))
    ds2 = load_npz(p, pool_size=7, test_size=3, seed=0)
    assert len(ds2.x_pool) == 7 and len(ds2.x_test) == 3


def test_npz_float_and_nchw_are_converted(tmp_path):
    p = tmp_path / "f.npz"
    x = np.full((4, 3, 5, 5), 1.0, np.float32)  # NCHW float in [0, 1]
    np.savez(p, x=x, y=np.array([0, 1, 0, 1]))
    ds = load_npz(p, pool_size=2, test_size=2)
    assert ds.x_pool.shape == (2, 5, 5, 3) and ds.x_pool.dtype == np.uint8 and ds.x_pool.max() == 255


def test_npz_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_npz(tmp_path / "missing.npz")
    p = tmp_path / "bad.npz"
    np.savez(p, images=np.zeros((2, 4, 4, 3), np.uint8))
    with pytest.raises(ValueError, match="expected keys"):
        load_npz(p)


def _real_cifar2() -> Path | None:
    base = shared_data_dir()
    f = base / "cifar2" / "cifar2.npz" if base else None
    return f if f is not None and f.is_file() else None


@pytest.mark.skipif(_real_cifar2() is None, reason="shared cifar2.npz not present")
def test_real_cifar2_paper_setting():
    ds = load_dataset("cifar2", pool_size=3000, test_size=2000, seed=0)
    assert ds.x_pool.shape == (3000, 32, 32, 3) and ds.x_test.shape == (2000, 32, 32, 3)
    assert ds.classes == ("airplane", "frog") and ds.name == "cifar2"
    counts = np.bincount(ds.y_pool, minlength=2)
    assert counts.min() > 1200  # shuffled before slicing: both classes present
    assert np.bincount(ds.y_test).tolist() == [1000, 1000]
    assert load_dataset("cifar2", pool_size=3000, test_size=2000, seed=0).fingerprint == ds.fingerprint
    assert load_dataset("cifar2", pool_size=3000, test_size=2000, seed=1).fingerprint != ds.fingerprint
    sub = load_dataset("cifar2", classes=("frog",), pool_size=10, test_size=10)
    assert sub.classes == ("frog",) and set(sub.y_pool) == {0}


# ------------------------------------------------------------------------------ image folder

COLORS = {"cat": (250, 10, 10), "dog": (10, 250, 10), "eel": (10, 10, 250)}


def _write_png(path: Path, color, size=(5, 6), mode="RGB"):
    path.parent.mkdir(parents=True, exist_ok=True)
    if mode == "L":
        Image.new("L", size, color).save(path)
    else:
        Image.new("RGB", size, color).save(path)


def _make_flat_folder(root: Path, per_class=4):
    for cls, col in COLORS.items():
        for i in range(per_class):
            _write_png(root / cls / f"{i:03d}.png", col)
    (root / "cat" / "notes.txt").write_text("not an image")


def _label_colors_ok(ds: LabeledImages):
    for x, y in ((ds.x_pool, ds.y_pool), (ds.x_test, ds.y_test)):
        for img, lab in zip(x, y):
            assert tuple(img[0, 0]) == COLORS[ds.classes[lab]]


def test_image_folder_flat_layout(tmp_path):
    _make_flat_folder(tmp_path / "imgs")
    ds = load_image_folder(tmp_path / "imgs", seed=0)
    assert ds.classes == ("cat", "dog", "eel")
    assert ds.x_pool.shape == (10, 6, 5, 3)  # PIL size (w=5, h=6) -> (H=6, W=5)
    assert len(ds.x_test) == 2  # 20 % of 12
    _label_colors_ok(ds)
    sub = load_image_folder(tmp_path / "imgs", classes=("eel", "cat"), pool_size=5, test_size=3)
    assert sub.classes == ("eel", "cat") and len(sub.x_pool) == 5 and len(sub.x_test) == 3
    _label_colors_ok(sub)


def test_image_folder_train_test_layout_and_resize(tmp_path):
    root = tmp_path / "tt"
    for cls, col in COLORS.items():
        for i in range(3):
            _write_png(root / "train" / cls / f"{i}.png", col, size=(8, 8))
        _write_png(root / "test" / cls / "0.png", col, size=(12, 10))  # another size
    ds = load_image_folder(root)
    assert len(ds.x_pool) == 9 and len(ds.x_test) == 3
    assert ds.x_pool.shape[1:] == (8, 8, 3) and ds.x_test.shape[1:] == (8, 8, 3)
    _label_colors_ok(ds)
    ds16 = load_image_folder(root, image_size=16, pool_size=2)
    assert ds16.x_pool.shape == (2, 16, 16, 3) and ds16.x_test.shape == (3, 16, 16, 3)


def test_image_folder_grayscale_and_mixed(tmp_path):
    for i in range(3):
        _write_png(tmp_path / "g" / "a" / f"{i}.png", 30, mode="L")
        _write_png(tmp_path / "g" / "b" / f"{i}.png", 200, mode="L")
    ds = load_image_folder(tmp_path / "g", pool_size=4)
    assert ds.x_pool.shape == (4, 6, 5, 1)
    np.testing.assert_array_equal(ds.x_pool[:, 0, 0, 0], np.where(ds.y_pool == 0, 30, 200))
    _write_png(tmp_path / "g" / "b" / "c.png", (1, 2, 3))
    assert load_image_folder(tmp_path / "g").x_pool.shape[-1] == 3


def test_image_folder_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_image_folder(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no class"):
        load_image_folder(tmp_path / "empty")
    _make_flat_folder(tmp_path / "imgs")
    with pytest.raises(ValueError, match="unknown class"):
        load_image_folder(tmp_path / "imgs", classes=("cow",))


# ------------------------------------------------------------------------------ CIFAR python

CIFAR_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def _cifar_batch(n, offset):
    rng = np.random.default_rng(offset)
    data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
    labels = [(offset + i) % 10 for i in range(n)]
    return {b"batch_label": b"x", b"labels": labels, b"data": data, b"filenames": [b"f"] * n}


def _make_cifar_python(folder: Path, n=4):
    folder.mkdir(parents=True)
    batches = {}
    for i in range(1, 6):
        batches[f"data_batch_{i}"] = _cifar_batch(n, 10 * i)
    batches["test_batch"] = _cifar_batch(n, 99)
    for name, b in batches.items():
        with open(folder / name, "wb") as fh:
            pickle.dump(b, fh, protocol=2)
    with open(folder / "batches.meta", "wb") as fh:
        pickle.dump({b"label_names": [c.encode() for c in CIFAR_NAMES], b"num_vis": 3072}, fh, protocol=2)
    return batches


def _check_cifar(ds: LabeledImages, batches):
    train = [batches[f"data_batch_{i}"] for i in range(1, 6)]
    rows = np.concatenate([b[b"data"] for b in train])
    labels = np.concatenate([b[b"labels"] for b in train])
    assert ds.classes == tuple(CIFAR_NAMES)
    assert ds.x_pool.shape == (20, 32, 32, 3) and ds.x_test.shape == (4, 32, 32, 3)
    # Row layout is 1024 R, then G, then B, each row-major 32x32.
    by_first = {r[:16].tobytes(): (r, lab) for r, lab in zip(rows, labels)}
    for img, lab in zip(ds.x_pool, ds.y_pool):
        row, true_lab = by_first[img[0, :16, 0].tobytes()]
        np.testing.assert_array_equal(img[..., 1], row[1024:2048].reshape(32, 32))
        np.testing.assert_array_equal(img[..., 2], row[2048:].reshape(32, 32))
        assert lab == true_lab


def test_cifar_python_folder(tmp_path):
    batches = _make_cifar_python(tmp_path / "c" / "cifar-10-batches-py")
    for p in (tmp_path / "c", tmp_path / "c" / "cifar-10-batches-py"):
        _check_cifar(load_cifar10_python(p, seed=0), batches)
    ds = load_dataset(str(tmp_path / "c"))  # dispatcher: folder holding cifar-10-batches-py
    _check_cifar(ds, batches)
    sub = load_cifar10_python(tmp_path / "c", classes=("frog", "airplane"), pool_size=2)
    assert sub.classes == ("frog", "airplane") and len(sub.x_pool) == 2


def test_cifar_python_tarball(tmp_path):
    batches = _make_cifar_python(tmp_path / "src" / "cifar-10-batches-py")
    arc = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(arc, "w:gz") as tf:
        tf.add(tmp_path / "src" / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    _check_cifar(load_cifar10_python(arc), batches)
    _check_cifar(load_dataset(arc), batches)  # sniffed as CIFAR python


def test_cifar_python_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="download=True"):
        load_cifar10_python(tmp_path / "nothing")
    folder = tmp_path / "partial"
    _make_cifar_python(folder)
    (folder / "test_batch").unlink()
    with pytest.raises(FileNotFoundError, match="test_batch"):
        load_cifar10_python(folder)


# ------------------------------------------------------------------------------ JPEG tarball


def _jpeg_bytes(color, size=(8, 8)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def _make_jpeg_tarball(path: Path, n_train=3, n_test=2, prefix="", shift=0):
    """Same layout as the shared cifar10-jpeg.tar.gz: train/<class>/NNNN.jpg, with dir entries."""
    with tarfile.open(path, "w:gz") as tf:
        def add_dir(name):
            ti = tarfile.TarInfo(prefix + name)
            ti.type = tarfile.DIRTYPE
            tf.addfile(ti)

        for split, n in (("train", n_train), ("test", n_test)):
            add_dir(f"{split}/")
            for cls, col in COLORS.items():
                add_dir(f"{split}/{cls}/")
                for i in range(n):
                    data = _jpeg_bytes(tuple(min(255, c + shift) for c in col))
                    ti = tarfile.TarInfo(f"{prefix}{split}/{cls}/{i:04d}.jpg")
                    ti.size = len(data)
                    tf.addfile(ti, io.BytesIO(data))


def _close_colors_ok(ds: LabeledImages):
    for x, y in ((ds.x_pool, ds.y_pool), (ds.x_test, ds.y_test)):
        for img, lab in zip(x, y):
            assert np.abs(img.mean((0, 1)) - np.array(COLORS[ds.classes[lab]])).max() < 8


def test_jpeg_tarball_loads_and_caches(tmp_path, monkeypatch):
    arc = tmp_path / "cifar10-jpeg.tar.gz"
    _make_jpeg_tarball(arc)
    calls = []
    real = data._decode_image
    monkeypatch.setattr(data, "_decode_image", lambda *a: calls.append(1) or real(*a))

    ds = load_cifar10_jpeg_tarball(arc, classes=("eel", "cat"), seed=0)
    assert ds.classes == ("eel", "cat")
    assert ds.x_pool.shape == (6, 8, 8, 3) and ds.x_test.shape == (4, 8, 8, 3)
    _close_colors_ok(ds)
    # Only the requested classes were decoded (plus one decode to learn the size per split).
    assert len(calls) <= 10 + 2
    assert len(list((tmp_path / "cache" / "datasets").glob("*.npz"))) == 1

    # Second call: served from the cache, no decoding at all.
    monkeypatch.setattr(data, "_decode_image", lambda *a: pytest.fail("decoded despite cache"))
    again = load_cifar10_jpeg_tarball(arc, classes=("eel", "cat"), seed=0)
    assert again.fingerprint == ds.fingerprint
    # Same class set in another order reuses the cache and re-indexes labels.
    swapped = load_cifar10_jpeg_tarball(arc, classes=("cat", "eel"), seed=0)
    assert swapped.classes == ("cat", "eel")
    _close_colors_ok(swapped)


def test_jpeg_tarball_all_classes_prefix_and_dispatch(tmp_path):
    arc = tmp_path / "imgs.tar.gz"
    _make_jpeg_tarball(arc, prefix="cifar10/")
    ds = load_dataset(arc, pool_size=5, test_size=4, seed=1)  # sniffed as an image tarball
    assert ds.classes == ("cat", "dog", "eel")
    assert len(ds.x_pool) == 5 and len(ds.x_test) == 4
    _close_colors_ok(ds)
    with pytest.raises(ValueError, match="unknown class"):
        load_cifar10_jpeg_tarball(arc, classes=("cow",))


def test_jpeg_tarball_cache_invalidated_by_new_content(tmp_path):
    arc = tmp_path / "t.tar.gz"
    _make_jpeg_tarball(arc)
    first = load_cifar10_jpeg_tarball(arc, classes=("dog",))
    _make_jpeg_tarball(arc, shift=40)  # same path, other pixels
    second = load_cifar10_jpeg_tarball(arc, classes=("dog",))
    assert first.fingerprint != second.fingerprint
    assert second.x_pool[0, 0, 0, 0] > first.x_pool[0, 0, 0, 0] + 20
    assert len(list((tmp_path / "cache" / "datasets").glob("*.npz"))) == 2


# ------------------------------------------------------------------------------ dispatcher


def test_dispatcher_errors(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="unknown data set"):
        load_dataset("mnist-please")
    with pytest.raises(FileNotFoundError):
        load_dataset(str(tmp_path / "missing.npz"))
    with pytest.raises(FileNotFoundError):
        load_dataset(str(tmp_path / "nope" / "folder"))
    txt = tmp_path / "x.txt"
    txt.write_text("hi")
    with pytest.raises(ValueError, match="unsupported"):
        load_dataset(txt)
    junk = tmp_path / "junk.tar.gz"
    with tarfile.open(junk, "w:gz") as tf:
        ti = tarfile.TarInfo("readme.md")
        ti.size = 2
        tf.addfile(ti, io.BytesIO(b"hi"))
    with pytest.raises(ValueError, match="unrecognised tarball"):
        load_dataset(junk)
    monkeypatch.setenv("ROBUSTAL_SHARED_DIR", str(tmp_path / "no_shared"))
    assert shared_data_dir() is None
    with pytest.raises(FileNotFoundError, match="ROBUSTAL_SHARED_DIR"):
        load_dataset("cifar2")


def test_dispatcher_routes(tmp_path, monkeypatch):
    assert load_dataset("digits", pool_size=10, test_size=5).x_pool.shape == (10, 8, 8, 1)
    p = tmp_path / "tiny.npz"
    _make_split_npz(p)
    assert load_dataset(str(p), pool_size=3).x_pool.shape == (3, 4, 4, 3)
    _make_flat_folder(tmp_path / "imgs")
    assert load_dataset(tmp_path / "imgs").classes == ("cat", "dog", "eel")
    # "cifar2" resolves through ROBUSTAL_SHARED_DIR.
    shared = tmp_path / "shared"
    (shared / "data" / "cifar2").mkdir(parents=True)
    _make_split_npz(shared / "data" / "cifar2" / "cifar2.npz")
    monkeypatch.setenv("ROBUSTAL_SHARED_DIR", str(shared))
    assert shared_data_dir() == shared / "data"
    ds = load_dataset("cifar2", pool_size=4)
    assert ds.name == "cifar2" and ds.classes == ("a", "b", "c") and len(ds.x_pool) == 4
