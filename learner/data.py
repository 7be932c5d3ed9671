"""Image data sets for the active-learning loop.

Plain Python + numpy (no Django). Every loader returns a :class:`LabeledImages`:
a pool (the unlabeled set U the loop labels from) and a held-out test set, both as
uint8 NHWC arrays with int64 labels indexing ``classes``.

Sub-sampling rule shared by every loader: the candidate images are permuted with
``numpy.random.default_rng(seed)`` and then sliced, so the same seed always gives
the same pool and test set, and a different seed gives a different draw.
Where the source has an official train/test split the pool comes from train and
the test set from test; otherwise one seeded permutation is cut into pool + test.
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import re
import tarfile
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

__all__ = [
    "LabeledImages",
    "cache_dir",
    "shared_data_dir",
    "load_digits",
    "load_npz",
    "load_cifar10_python",
    "load_image_folder",
    "load_cifar10_jpeg_tarball",
    "load_dataset",
    "IMAGE_EXTENSIONS",
]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")

# Bump when the decoding of the JPEG tarball changes, so old caches are ignored.
_TARBALL_CACHE_VERSION = 1

_CIFAR_BATCHES = ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5")
_CIFAR_TEST = "test_batch"
_CIFAR_META = "batches.meta"

# train/<class>/<file>.jpg, optionally below a top folder (e.g. "cifar10/train/...").
_TAR_IMAGE_RE = re.compile(
    r"(?:^|/)(train|test)/([^/]+)/([^/]+\.(?:jpe?g|png|bmp|webp))$", re.IGNORECASE
)


# --------------------------------------------------------------------------------------
# Paths
# --------------------------------------------------------------------------------------


def cache_dir() -> Path:
    """Return the cache folder for decoded data sets and features.

    Returns
    -------
    pathlib.Path
        ``$ROBUSTAL_CACHE_DIR`` (default ``~/.cache/robustal``), user-expanded. It is not
        created here; writers create the sub-folder they need.
    """
    return Path(os.environ.get("ROBUSTAL_CACHE_DIR", "~/.cache/robustal")).expanduser()


def shared_data_dir() -> Path | None:
    """Return the shared ``data`` folder, or None when it does not exist.

    Returns
    -------
    pathlib.Path or None
        ``$ROBUSTAL_SHARED_DIR/data``; ``ROBUSTAL_SHARED_DIR`` defaults to the ``shared``
        folder next to the repository (``<repo>/../shared``).
    """
    root = os.environ.get("ROBUSTAL_SHARED_DIR")
    base = Path(root).expanduser() if root else Path(__file__).resolve().parents[2] / "shared"
    data = base / "data"
    return data if data.is_dir() else None


# --------------------------------------------------------------------------------------
# The data set container
# --------------------------------------------------------------------------------------


def _fingerprint(arrays: Iterable[np.ndarray], classes: Sequence[str]) -> str:
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a)
        # Shape and dtype go in so that equal bytes with another layout differ.
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(a.tobytes() if a.size == 0 else memoryview(a).cast("B"))
    h.update("\x1f".join(classes).encode("utf-8"))
    return h.hexdigest()[:16]


@dataclass(frozen=True, eq=False)
class LabeledImages:
    """A pool and a test set of labeled images.

    Parameters
    ----------
    x_pool, x_test : numpy.ndarray
        uint8 images, shape (N, H, W, C) with C in {1, 3}.
    y_pool, y_test : numpy.ndarray
        int64 class indices into ``classes``.
    classes : tuple of str
        Class names; label ``k`` means ``classes[k]``.
    name : str
        Human-readable name of the source (for logs and reports).
    fingerprint : str, optional
        Short sha256 over the arrays and class names, used as a cache key. Computed when
        left empty.

    Notes
    -----
    ``eq=False`` because numpy arrays do not define a boolean ``==``; compare
    fingerprints instead.
    """

    x_pool: np.ndarray
    y_pool: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    classes: tuple[str, ...]
    name: str = ""
    fingerprint: str = field(default="")

    def __post_init__(self) -> None:
        classes = tuple(str(c) for c in self.classes)
        object.__setattr__(self, "classes", classes)
        for split in ("pool", "test"):
            x = getattr(self, f"x_{split}")
            y = np.asarray(getattr(self, f"y_{split}"))
            if not (isinstance(x, np.ndarray) and x.dtype == np.uint8 and x.ndim == 4):
                raise ValueError(f"x_{split} must be a uint8 array of shape (N, H, W, C)")
            if x.shape[-1] not in (1, 3):
                raise ValueError(f"x_{split} must have 1 or 3 channels, got shape {x.shape}")
            if y.ndim != 1 or len(y) != len(x):
                raise ValueError(f"y_{split} must be 1-d with {len(x)} labels, got {y.shape}")
            if y.size and (y.min() < 0 or y.max() >= len(classes)):
                raise ValueError(f"y_{split} holds labels outside 0..{len(classes) - 1}")
            object.__setattr__(self, f"y_{split}", y.astype(np.int64, copy=False))
        if self.x_pool.shape[1:] != self.x_test.shape[1:] and len(self.x_test) and len(self.x_pool):
            raise ValueError(
                f"pool and test images differ in shape: {self.x_pool.shape[1:]} vs {self.x_test.shape[1:]}"
            )
        if not self.fingerprint:
            fp = _fingerprint((self.x_pool, self.y_pool, self.x_test, self.y_test), classes)
            object.__setattr__(self, "fingerprint", fp)

    @property
    def num_classes(self) -> int:
        """Number of classes."""
        return len(self.classes)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(H, W, C) of one image."""
        return tuple(self.x_pool.shape[1:])  # type: ignore[return-value]

    def __repr__(self) -> str:
        return (
            f"LabeledImages(name={self.name!r}, pool={len(self.x_pool)}, test={len(self.x_test)}, "
            f"image_shape={self.image_shape}, classes={self.classes}, fingerprint={self.fingerprint!r})"
        )


# --------------------------------------------------------------------------------------
# Shared helpers: class subsets and seeded sub-sampling
# --------------------------------------------------------------------------------------


def _as_uint8_nhwc(x: np.ndarray, what: str = "images") -> np.ndarray:
    """Coerce an image array to uint8 NHWC (accepts NHW, NCHW, and floats in [0, 1])."""
    x = np.asarray(x)
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4:
        raise ValueError(f"{what}: expected 3-d or 4-d image array, got shape {x.shape}")
    if x.shape[-1] not in (1, 3) and x.shape[1] in (1, 3):
        x = x.transpose(0, 2, 3, 1)  # NCHW -> NHWC
    if x.shape[-1] not in (1, 3):
        raise ValueError(f"{what}: expected 1 or 3 channels, got shape {x.shape}")
    if x.dtype == np.uint8:
        return np.ascontiguousarray(x)
    if np.issubdtype(x.dtype, np.integer):
        if x.size and (x.min() < 0 or x.max() > 255):
            raise ValueError(f"{what}: integer pixels must lie in 0..255")
        return np.ascontiguousarray(x.astype(np.uint8))
    if np.issubdtype(x.dtype, np.floating):
        if x.size and (x.min() < 0 or x.max() > 1):
            raise ValueError(f"{what}: float pixels must lie in [0, 1]")
        return np.ascontiguousarray(np.round(x * 255).astype(np.uint8))
    raise ValueError(f"{what}: unsupported dtype {x.dtype}")


def _select_classes(
    x: np.ndarray, y: np.ndarray, all_classes: Sequence[str], classes: Sequence[str] | None
) -> tuple[np.ndarray, np.ndarray]:
    """Keep the images of ``classes`` and re-index their labels in that order."""
    if classes is None:
        return x, y
    index = {c: i for i, c in enumerate(all_classes)}
    missing = [c for c in classes if c not in index]
    if missing:
        raise ValueError(f"unknown class(es) {missing}; available: {list(all_classes)}")
    if len(set(classes)) != len(classes):
        raise ValueError(f"duplicate class names in {list(classes)}")
    remap = np.full(len(all_classes), -1, dtype=np.int64)
    for new, c in enumerate(classes):
        remap[index[c]] = new
    new_y = remap[y]
    keep = new_y >= 0
    return x[keep], new_y[keep]


def _take(n_avail: int, size: int | None, rng: np.random.Generator, what: str) -> np.ndarray:
    if size is not None and (size < 0 or size > n_avail):
        raise ValueError(f"{what}_size={size} but only {n_avail} images are available")
    perm = rng.permutation(n_avail)
    return perm if size is None else perm[:size]


def _finalize_split(
    x_train, y_train, x_test, y_test, all_classes, *, classes, pool_size, test_size, seed, name
) -> LabeledImages:
    """Class subset + seeded draw of pool (from train) and test (from test)."""
    x_train, y_train = _select_classes(x_train, y_train, all_classes, classes)
    x_test, y_test = _select_classes(x_test, y_test, all_classes, classes)
    rng = np.random.default_rng(seed)
    ip = _take(len(x_train), pool_size, rng, "pool")
    it = _take(len(x_test), test_size, rng, "test")
    return LabeledImages(
        x_pool=x_train[ip], y_pool=y_train[ip], x_test=x_test[it], y_test=y_test[it],
        classes=tuple(classes) if classes is not None else tuple(all_classes), name=name,
    )


def _finalize_unsplit(
    x, y, all_classes, *, classes, pool_size, test_size, seed, name, default_test_fraction=0.2
) -> LabeledImages:
    """Class subset + one seeded permutation cut into pool then test.

    Sizes left as None: test takes what the pool leaves, the pool what the test leaves;
    both None gives a ``default_test_fraction`` test split.
    """
    x, y = _select_classes(x, y, all_classes, classes)
    n = len(x)
    if pool_size is None and test_size is None:
        test_size = int(round(n * default_test_fraction))
    if pool_size is None:
        pool_size = n - test_size
    if test_size is None:
        test_size = n - pool_size
    if pool_size < 0 or test_size < 0 or pool_size + test_size > n:
        raise ValueError(
            f"pool_size={pool_size} + test_size={test_size} exceeds the {n} images available"
        )
    perm = np.random.default_rng(seed).permutation(n)
    ip, it = perm[:pool_size], perm[pool_size : pool_size + test_size]
    return LabeledImages(
        x_pool=x[ip], y_pool=y[ip], x_test=x[it], y_test=y[it],
        classes=tuple(classes) if classes is not None else tuple(all_classes), name=name,
    )


def _check_classes_arg(classes) -> tuple[str, ...] | None:
    if classes is None:
        return None
    if isinstance(classes, str):
        # A bare string would otherwise be split into characters.
        raise ValueError("classes must be a sequence of class names, not a single string")
    return tuple(str(c) for c in classes)


# --------------------------------------------------------------------------------------
# Loaders
# --------------------------------------------------------------------------------------


def load_digits(
    *,
    classes: Sequence[str] | None = None,
    pool_size: int | None = 1000,
    test_size: int | None = None,
    seed: int = 0,
) -> LabeledImages:
    """Load scikit-learn's 8x8 digits (1,797 images, bundled with scikit-learn).

    Parameters
    ----------
    classes : sequence of str, optional
        Subset of ``"0"``..``"9"``; labels are re-indexed in the given order.
    pool_size : int or None, default 1000
        Pool size; None takes what the test set leaves.
    test_size : int or None, default None
        Test size; None takes the rest (797 images with the default pool).
    seed : int, default 0
        Seed of the permutation that is cut into pool and test.

    Returns
    -------
    LabeledImages
        Images of shape (8, 8, 1); grey values 0..16 are scaled to 0..255.
    """
    from sklearn.datasets import load_digits as _sk_digits

    d = _sk_digits()
    x = np.round(d.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
    y = d.target.astype(np.int64)
    all_classes = tuple(str(i) for i in range(10))
    classes = _check_classes_arg(classes)
    if classes is not None and pool_size is not None and test_size is None:
        # With a subset the default pool may exceed the images left; keep a 80/20 cut then.
        n_sub = int(np.isin(y, [all_classes.index(c) for c in classes if c in all_classes]).sum())
        if pool_size >= n_sub:
            pool_size = None
    return _finalize_unsplit(
        x, y, all_classes, classes=classes, pool_size=pool_size, test_size=test_size,
        seed=seed, name="digits",
    )


def load_npz(
    path: str | os.PathLike,
    *,
    classes: Sequence[str] | None = None,
    pool_size: int | None = None,
    test_size: int | None = None,
    seed: int = 0,
    name: str | None = None,
) -> LabeledImages:
    """Load images from an ``.npz`` file.

    Two layouts are accepted: ``x_train, y_train, x_test, y_test[, classes]`` (pool from
    train, test from test) or ``x, y[, classes]`` (one seeded permutation cut into pool
    and test; both sizes None gives an 80/20 cut).

    Parameters
    ----------
    path : str or path-like
        The ``.npz`` file.
    classes : sequence of str, optional
        Subset of the file's classes, re-indexed in the given order.
    pool_size, test_size : int or None
        Numbers of images to draw; None takes all (see above for the x/y layout).
    seed : int, default 0
        Seed of the permutations.
    name : str, optional
        Name of the data set; defaults to the file stem.

    Returns
    -------
    LabeledImages

    Raises
    ------
    FileNotFoundError
        When ``path`` does not exist.
    ValueError
        When the keys or arrays do not fit either layout.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"npz file not found: {path}")
    classes = _check_classes_arg(classes)
    with np.load(path, allow_pickle=False) as z:
        keys = set(z.files)
        if {"x_train", "y_train", "x_test", "y_test"} <= keys:
            arrays = {k: z[k] for k in ("x_train", "y_train", "x_test", "y_test")}
            split = True
        elif {"x", "y"} <= keys:
            arrays = {"x": z["x"], "y": z["y"]}
            split = False
        else:
            raise ValueError(
                f"{path}: expected keys x_train/y_train/x_test/y_test or x/y, found {sorted(keys)}"
            )
        file_classes = [str(c) for c in z["classes"]] if "classes" in keys else None
    ys = [arrays[k] for k in arrays if k.startswith("y")]
    for y in ys:
        if not np.issubdtype(y.dtype, np.integer):
            raise ValueError(f"{path}: labels must be integers, got dtype {y.dtype}")
    if file_classes is None:
        n_cls = int(max((int(y.max()) for y in ys if y.size), default=-1)) + 1
        file_classes = [str(i) for i in range(n_cls)]
    name = name or path.stem
    if split:
        return _finalize_split(
            _as_uint8_nhwc(arrays["x_train"], "x_train"), arrays["y_train"].astype(np.int64),
            _as_uint8_nhwc(arrays["x_test"], "x_test"), arrays["y_test"].astype(np.int64),
            file_classes, classes=classes, pool_size=pool_size, test_size=test_size,
            seed=seed, name=name,
        )
    return _finalize_unsplit(
        _as_uint8_nhwc(arrays["x"], "x"), arrays["y"].astype(np.int64), file_classes,
        classes=classes, pool_size=pool_size, test_size=test_size, seed=seed, name=name,
    )


def _unpickle(fileobj) -> dict:
    # The official CIFAR pickles were written by Python 2; bytes keys need encoding="bytes".
    # Pickle runs code from the file: only load archives you trust.
    return pickle.load(fileobj, encoding="bytes")


def _cifar_batch_arrays(d: dict) -> tuple[np.ndarray, np.ndarray]:
    data = np.asarray(d[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(data), np.asarray(d[b"labels"], dtype=np.int64)


def _read_cifar10_python(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """Read the official CIFAR-10 python files from a folder or a tar(.gz) archive."""
    wanted = set(_CIFAR_BATCHES) | {_CIFAR_TEST, _CIFAR_META}
    parts: dict[str, dict] = {}
    if path.is_dir():
        folder = path / "cifar-10-batches-py" if (path / "cifar-10-batches-py").is_dir() else path
        for n in wanted:
            f = folder / n
            if f.is_file():
                with open(f, "rb") as fh:
                    parts[n] = _unpickle(fh)
    else:
        # Random-access open: only the wanted members are unpickled, nothing is extracted.
        with tarfile.open(path, "r:*") as tf:
            for m in tf:
                base = m.name.rsplit("/", 1)[-1]
                if m.isfile() and base in wanted and base not in parts:
                    fh = tf.extractfile(m)
                    assert fh is not None
                    parts[base] = _unpickle(fh)
    missing = sorted(wanted - set(parts))
    if missing:
        raise FileNotFoundError(f"{path}: not a complete CIFAR-10 python set, missing {missing}")
    xs, ys = zip(*(_cifar_batch_arrays(parts[n]) for n in _CIFAR_BATCHES))
    x_test, y_test = _cifar_batch_arrays(parts[_CIFAR_TEST])
    names = [b.decode() if isinstance(b, bytes) else str(b) for b in parts[_CIFAR_META][b"label_names"]]
    return np.concatenate(xs), np.concatenate(ys), x_test, y_test, names


def load_cifar10_python(
    path: str | os.PathLike,
    *,
    classes: Sequence[str] | None = None,
    pool_size: int | None = None,
    test_size: int | None = None,
    seed: int = 0,
    download: bool = False,
) -> LabeledImages:
    """Load CIFAR-10 in its official python format.

    Parameters
    ----------
    path : str or path-like
        The ``cifar-10-batches-py`` folder, a folder containing it, or the
        ``cifar-10-python.tar.gz`` archive (read in place, not extracted).
    classes : sequence of str, optional
        Subset of CIFAR-10's class names (e.g. ``("airplane", "frog")``), re-indexed in the
        given order.
    pool_size, test_size : int or None
        Images drawn from the 50,000 training / 10,000 test images; None takes all.
    seed : int, default 0
        Seed of the permutations.
    download : bool, default False
        When ``path`` holds no data set, fetch it with ``torchvision.datasets.CIFAR10``
        into ``path`` (needs internet; never required otherwise).

    Returns
    -------
    LabeledImages
        32x32 RGB images.
    """
    path = Path(path).expanduser()
    classes = _check_classes_arg(classes)

    def present(p: Path) -> bool:
        return p.is_file() or (p / "data_batch_1").is_file() or (
            p / "cifar-10-batches-py" / "data_batch_1"
        ).is_file()

    if not present(path):
        if not download:
            raise FileNotFoundError(
                f"no CIFAR-10 python data at {path} (expected cifar-10-batches-py/ or "
                "cifar-10-python.tar.gz); pass download=True to fetch it when online"
            )
        import torchvision  # deferred: only needed for the optional download

        root = path.parent if path.name == "cifar-10-batches-py" else path
        root.mkdir(parents=True, exist_ok=True)
        torchvision.datasets.CIFAR10(root=str(root), train=True, download=True)
        path = root / "cifar-10-batches-py"
    x_train, y_train, x_test, y_test, names = _read_cifar10_python(path)
    return _finalize_split(
        x_train, y_train, x_test, y_test, names, classes=classes, pool_size=pool_size,
        test_size=test_size, seed=seed, name="cifar10",
    )


_GRAY_MODES = {"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F"}


def _norm_size(image_size) -> tuple[int, int] | None:
    """image_size argument -> (height, width)."""
    if image_size is None:
        return None
    if isinstance(image_size, int):
        return (image_size, image_size)
    h, w = image_size
    return (int(h), int(w))


def _decode_image(src, mode: str, size_hw: tuple[int, int] | None) -> np.ndarray:
    """Decode one image (path or bytes) to a uint8 HWC array in ``mode`` ("L" or "RGB")."""
    from PIL import Image

    fh = io.BytesIO(src) if isinstance(src, (bytes, bytearray)) else src
    with Image.open(fh) as im:
        im = im.convert(mode)
        if size_hw is not None and im.size != (size_hw[1], size_hw[0]):
            im = im.resize((size_hw[1], size_hw[0]), Image.Resampling.BILINEAR)
        a = np.asarray(im, dtype=np.uint8)
    return a[..., None] if a.ndim == 2 else a


def _list_class_folders(root: Path) -> dict[str, list[Path]]:
    out = {}
    for d in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        files = sorted(
            f for f in d.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS
        )
        out[d.name] = files
    return out


def load_image_folder(
    path: str | os.PathLike,
    *,
    classes: Sequence[str] | None = None,
    pool_size: int | None = None,
    test_size: int | None = None,
    seed: int = 0,
    image_size: int | tuple[int, int] | None = None,
) -> LabeledImages:
    """Load a folder with one sub-folder of images per class.

    If ``path/train`` and ``path/test`` both exist, the pool is drawn from ``train`` and the
    test set from ``test``; otherwise one seeded permutation is cut into pool and test
    (both sizes None gives an 80/20 cut). Class names are the sub-folder names, sorted.

    Parameters
    ----------
    path : str or path-like
        The root folder.
    classes : sequence of str, optional
        Subset of the class folders, re-indexed in the given order; only these are decoded.
    pool_size, test_size : int or None
        Numbers of images to draw.
    seed : int, default 0
        Seed of the permutations.
    image_size : int or (height, width), optional
        Common size images are resized to (bilinear); default the size of the first image.

    Returns
    -------
    LabeledImages
        Grayscale (C=1) when every image is grayscale, RGB (C=3) otherwise.
    """
    from PIL import Image

    root = Path(path).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"image folder not found: {root}")
    classes = _check_classes_arg(classes)
    split = (root / "train").is_dir() and (root / "test").is_dir()
    groups = {"train": _list_class_folders(root / "train"), "test": _list_class_folders(root / "test")} \
        if split else {"all": _list_class_folders(root)}
    all_classes = sorted(set().union(*(g.keys() for g in groups.values())))
    if not all_classes:
        raise ValueError(f"{root}: no class sub-folders found")
    if classes is not None:
        unknown = [c for c in classes if c not in all_classes]
        if unknown:
            raise ValueError(f"unknown class(es) {unknown}; available: {all_classes}")
    wanted = set(classes) if classes is not None else set(all_classes)
    # Only the wanted classes are decoded; labels index all_classes until _select_classes.
    files = {
        g: [(f, all_classes.index(c)) for c, fs in sorted(cls.items()) if c in wanted for f in fs]
        for g, cls in groups.items()
    }
    every = [f for g in files.values() for f, _ in g]
    if not every:
        raise ValueError(f"{root}: no image files ({', '.join(IMAGE_EXTENSIONS)}) found")
    # Opening reads only the header, so this pass over modes is cheap.
    gray = True
    for f in every:
        with Image.open(f) as im:
            if im.mode not in _GRAY_MODES:
                gray = False
                break
    mode = "L" if gray else "RGB"
    size_hw = _norm_size(image_size)
    if size_hw is None:
        with Image.open(every[0]) as im:
            size_hw = (im.size[1], im.size[0])
    c = 1 if gray else 3

    def decode(group):
        x = np.empty((len(group), *size_hw, c), dtype=np.uint8)
        for i, (f, _) in enumerate(group):
            x[i] = _decode_image(f, mode, size_hw)
        return x, np.array([lab for _, lab in group], dtype=np.int64)

    kw = dict(classes=classes, pool_size=pool_size, test_size=test_size, seed=seed, name=root.name)
    if split:
        x_tr, y_tr = decode(files["train"])
        x_te, y_te = decode(files["test"])
        return _finalize_split(x_tr, y_tr, x_te, y_te, all_classes, **kw)
    x, y = decode(files["all"])
    return _finalize_unsplit(x, y, all_classes, **kw)


def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    """sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def _atomic_savez(target: Path, **arrays) -> None:
    """Write an npz next to ``target`` and rename it, so readers never see half a file."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, suffix=".tmp.npz")
    try:
        with os.fdopen(fd, "wb") as fh:
            np.savez(fh, **arrays)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _scan_image_tarball(path: Path, wanted: set[str] | None, image_size):
    """Stream a tar of ``train|test/<class>/<file>`` images and decode the wanted classes."""
    found: dict[str, list[tuple[str, str, bytes]]] = {"train": [], "test": []}
    seen_classes: set[str] = set()
    with tarfile.open(path, "r|*") as tf:  # stream mode: one sequential pass, no extraction
        for m in tf:
            if not m.isfile():
                continue
            match = _TAR_IMAGE_RE.search(m.name)
            if not match:
                continue
            split, cls, fname = match.group(1).lower(), match.group(2), match.group(3)
            seen_classes.add(cls)
            if wanted is not None and cls not in wanted:
                continue
            fh = tf.extractfile(m)
            assert fh is not None
            found[split].append((cls, fname, fh.read()))
    all_classes = sorted(seen_classes)
    if not all_classes:
        raise ValueError(f"{path}: no members like train/<class>/<image> or test/<class>/<image>")
    if wanted is not None:
        unknown = sorted(wanted - seen_classes)
        if unknown:
            raise ValueError(f"unknown class(es) {unknown}; available: {all_classes}")
    kept = sorted(wanted) if wanted is not None else all_classes
    size_hw = _norm_size(image_size)
    out = {}
    for split, items in found.items():
        # Sorting makes the array order independent of the member order in the archive.
        items.sort(key=lambda t: (kept.index(t[0]), t[1]))
        if size_hw is None and items:
            size_hw = _decode_image(items[0][2], "RGB", None).shape[:2]
        x = np.empty((len(items), *(size_hw or (0, 0)), 3), dtype=np.uint8)
        for i, (_, _, data) in enumerate(items):
            x[i] = _decode_image(data, "RGB", size_hw)
        out[split] = (x, np.array([kept.index(c) for c, _, _ in items], dtype=np.int64))
    return out, kept, all_classes


def load_cifar10_jpeg_tarball(
    path: str | os.PathLike,
    *,
    classes: Sequence[str] | None = None,
    pool_size: int | None = None,
    test_size: int | None = None,
    seed: int = 0,
    image_size: int | tuple[int, int] | None = None,
    use_cache: bool = True,
) -> LabeledImages:
    """Load a tarball of JPEG images laid out as ``train|test/<class>/<file>.jpg``.

    Members are streamed from the archive (no extraction to disk) and only the requested
    classes are decoded. The decoded arrays (all train and test images of those classes)
    are cached as ``<cache dir>/datasets/<key>.npz``, keyed by the tarball's content
    sha256, the class set and ``image_size``, so a second call skips decoding.

    Parameters
    ----------
    path : str or path-like
        The ``.tar.gz`` (or ``.tar``) file, e.g. ``shared/data/cifar10-jpeg/cifar10-jpeg.tar.gz``.
    classes : sequence of str, optional
        Class folder names to load, re-indexed in the given order; None loads all.
    pool_size, test_size : int or None
        Images drawn from ``train`` / ``test``; None takes all.
    seed : int, default 0
        Seed of the permutations.
    image_size : int or (height, width), optional
        Common size (bilinear resize); default the size of the first image.
    use_cache : bool, default True
        Read and write the decoded-array cache.

    Returns
    -------
    LabeledImages
        RGB images (grayscale JPEGs are converted to RGB).
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"tarball not found: {path}")
    classes = _check_classes_arg(classes)
    wanted = set(classes) if classes is not None else None
    cache_file = None
    if use_cache:
        key_src = repr((
            _TARBALL_CACHE_VERSION, file_sha256(path),
            sorted(wanted) if wanted is not None else None, _norm_size(image_size),
        ))
        key = hashlib.sha256(key_src.encode()).hexdigest()[:24]
        cache_file = cache_dir() / "datasets" / f"{path.name.split('.')[0]}-{key}.npz"
    if cache_file is not None and cache_file.is_file():
        with np.load(cache_file, allow_pickle=False) as z:
            x_tr, y_tr, x_te, y_te = z["x_train"], z["y_train"], z["x_test"], z["y_test"]
            kept = [str(c) for c in z["classes"]]
    else:
        out, kept, _ = _scan_image_tarball(path, wanted, image_size)
        (x_tr, y_tr), (x_te, y_te) = out["train"], out["test"]
        if cache_file is not None:
            _atomic_savez(
                cache_file, x_train=x_tr, y_train=y_tr, x_test=x_te, y_test=y_te,
                classes=np.array(kept),
            )
    if x_tr.size == 0 and x_te.size == 0:
        raise ValueError(f"{path}: no images of classes {kept}")
    if len(x_tr) == 0:
        x_tr = np.zeros((0, *x_te.shape[1:]), np.uint8)
    if len(x_te) == 0:
        x_te = np.zeros((0, *x_tr.shape[1:]), np.uint8)
    return _finalize_split(
        x_tr, y_tr, x_te, y_te, kept, classes=classes, pool_size=pool_size,
        test_size=test_size, seed=seed, name=path.name.split(".")[0],
    )


# --------------------------------------------------------------------------------------
# Dispatcher
# --------------------------------------------------------------------------------------


def _sniff_tarball(path: Path, max_members: int = 500) -> str:
    """Return "cifar-python" or "images" from the first member names of a tarball."""
    with tarfile.open(path, "r|*") as tf:
        for i, m in enumerate(tf):
            base = m.name.rsplit("/", 1)[-1]
            if "cifar-10-batches-py" in m.name or base in _CIFAR_BATCHES or base == _CIFAR_TEST:
                return "cifar-python"
            if m.isfile() and _TAR_IMAGE_RE.search(m.name):
                return "images"
            if i >= max_members:
                break
    raise ValueError(
        f"{path}: unrecognised tarball (expected cifar-10-batches-py/* or train|test/<class>/<image>)"
    )


def _shared_file(*parts: str) -> Path:
    base = shared_data_dir()
    if base is None:
        raise FileNotFoundError(
            "shared data folder not found; set ROBUSTAL_SHARED_DIR to the folder holding data/"
        )
    f = base.joinpath(*parts)
    if not f.is_file():
        raise FileNotFoundError(f"shared data file missing: {f}")
    return f


def load_dataset(spec: str | os.PathLike, **kw) -> LabeledImages:
    """Load a data set from a short name or a path.

    Parameters
    ----------
    spec : str or path-like
        ``"digits"``; ``"cifar2"`` (the shared ``data/cifar2/cifar2.npz``); ``"cifar10"``
        (the shared ``data/cifar10-jpeg/cifar10-jpeg.tar.gz``); a path to an ``.npz``; a
        ``.tar.gz``/``.tgz``/``.tar`` (CIFAR-10 python archive or JPEG tarball, told apart by
        member names); or a folder (``cifar-10-batches-py`` or an image folder).
    **kw
        Passed to the loader (``classes``, ``pool_size``, ``test_size``, ``seed``, ...).

    Returns
    -------
    LabeledImages

    Raises
    ------
    FileNotFoundError
        When a path (or the shared data folder) does not exist.
    ValueError
        When the spec is not recognised.

    Examples
    --------
    The paper's setting:

    >>> ds = load_dataset("cifar2", pool_size=3000, test_size=2000, seed=0)  # doctest: +SKIP
    """
    s = str(spec)
    if s == "digits":
        return load_digits(**kw)
    if s == "cifar2":
        return load_npz(_shared_file("cifar2", "cifar2.npz"), name="cifar2", **kw)
    if s == "cifar10":
        return load_cifar10_jpeg_tarball(_shared_file("cifar10-jpeg", "cifar10-jpeg.tar.gz"), **kw)
    path = Path(s).expanduser()
    lower = path.name.lower()
    looks_like_path = os.sep in s or lower.endswith((".npz", ".tar.gz", ".tgz", ".tar")) or path.exists()
    if not looks_like_path:
        raise ValueError(
            f"unknown data set {s!r}: use 'digits', 'cifar2', 'cifar10', or a path to an .npz, "
            "a .tar.gz (CIFAR-10 python or JPEG tarball) or a folder"
        )
    if not path.exists():
        raise FileNotFoundError(f"data set path not found: {path}")
    if path.is_dir():
        if (path / "data_batch_1").is_file() or (path / "cifar-10-batches-py").is_dir():
            return load_cifar10_python(path, **kw)
        return load_image_folder(path, **kw)
    if lower.endswith(".npz"):
        return load_npz(path, **kw)
    if lower.endswith((".tar.gz", ".tgz", ".tar")):
        if _sniff_tarball(path) == "cifar-python":
            return load_cifar10_python(path, **kw)
        return load_cifar10_jpeg_tarball(path, **kw)
    raise ValueError(f"unsupported data set file {path}: expected .npz, .tar.gz, .tgz or .tar")
