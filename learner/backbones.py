"""Feature extractors: float32 NCHW images in [0, 1] -> (N, D) features.

Plain Python + torch (no Django). Every backbone built here takes pixels in [0, 1];
any input normalisation a backbone needs lives inside the module, so callers
(heads, attacks that work in pixel space) never have to know about it.

Names
-----
``flatten``   pixels flattened, D = C*H*W (tiny data such as 8x8 digits).
``smallcnn``  3 conv layers + global average pooling, D = 64.
``resnet20``  CIFAR-style ResNet-20 (He et al. 2016, 3 stages x 3 basic blocks,
              16/32/64 channels), D = 64; CIFAR mean/std normalisation inside.
``resnet50``  torchvision ResNet-50 with ``fc`` = Identity, D = 2048; ImageNet
              normalisation inside; inputs smaller than 64 px are upsampled to 64 px.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn
import torch.nn.functional as F

from .data import cache_dir

__all__ = [
    "BACKBONE_NAMES",
    "build_backbone",
    "load_state_dict_file",
    "to_tensor",
    "extract_features",
    "feature_cache_key",
    "train_backbone_supervised",
    "imagenet_weights_path",
    "SmallCNN",
    "ResNet20",
    "ResNet50Features",
]

BACKBONE_NAMES = ("flatten", "smallcnn", "resnet20", "resnet50")

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Bump when a backbone's preprocessing or architecture changes: cached features then miss.
FEATURE_VERSION = 1


# --------------------------------------------------------------------------------------
# Tensors
# --------------------------------------------------------------------------------------


def to_tensor(images_uint8: np.ndarray) -> torch.Tensor:
    """Convert uint8 NHWC images to a float32 NCHW tensor in [0, 1].

    Parameters
    ----------
    images_uint8 : numpy.ndarray
        Shape (N, H, W, C) (or (N, H, W) for grayscale), dtype uint8.

    Returns
    -------
    torch.Tensor
        float32, shape (N, C, H, W), values in [0, 1].
    """
    x = np.asarray(images_uint8)
    if x.dtype != np.uint8:
        raise ValueError(f"to_tensor expects uint8 images, got {x.dtype}")
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4:
        raise ValueError(f"to_tensor expects (N, H, W, C) images, got shape {x.shape}")
    # astype copies, so the result never aliases (possibly read-only) caller memory.
    t = torch.from_numpy(x.astype(np.float32)).permute(0, 3, 1, 2).contiguous()
    return t.div_(255.0)


class _Normalize(nn.Module):
    """Per-channel (x - mean) / std; buffers are non-persistent so state_dicts stay plain."""

    def __init__(self, mean: Sequence[float], std: Sequence[float], in_channels: int):
        super().__init__()
        mean_t = torch.tensor(mean, dtype=torch.float32)
        std_t = torch.tensor(std, dtype=torch.float32)
        if in_channels == 1:
            # One grey channel: use the average statistics of the colour channels.
            mean_t, std_t = mean_t.mean(0, keepdim=True), std_t.mean(0, keepdim=True)
        self.register_buffer("mean", mean_t.view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", std_t.view(1, -1, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


# --------------------------------------------------------------------------------------
# Architectures
# --------------------------------------------------------------------------------------


class Flatten(nn.Module):
    """Pixels flattened to (N, C*H*W); values stay in [0, 1] (scaling is the head's job)."""

    feature_dim: int | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(x, 1)


class SmallCNN(nn.Module):
    """Three 3x3 conv/BN/ReLU layers (32, 64, 64 channels), two 2x max-pools, global
    average pooling: D = 64. Works from 8x8 inputs up."""

    feature_dim = 64

    def __init__(self, in_channels: int = 3):
        super().__init__()

        def block(i, o):
            return [nn.Conv2d(i, o, 3, padding=1, bias=False), nn.BatchNorm2d(o), nn.ReLU(inplace=True)]

        self.features = nn.Sequential(
            *block(in_channels, 32), nn.MaxPool2d(2),
            *block(32, 64), nn.MaxPool2d(2),
            *block(64, 64),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Centre [0, 1] pixels; the first BN does the rest.
        return self.features(x - 0.5)


class _BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            # Projection shortcut (option B): simple and as accurate as zero-padding here.
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet20(nn.Module):
    """CIFAR ResNet-20: conv 16 -> 3 stages x 3 basic blocks (16, 32, 64 channels,
    strides 1, 2, 2) -> global average pooling: D = 64. CIFAR normalisation inside."""

    feature_dim = 64

    def __init__(self, in_channels: int = 3, blocks_per_stage: int = 3):
        super().__init__()
        self.normalize = _Normalize(CIFAR_MEAN, CIFAR_STD, in_channels)
        self.conv1 = nn.Conv2d(in_channels, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        layers, cin = [], 16
        for cout, stride in ((16, 1), (32, 2), (64, 2)):
            stage = []
            for b in range(blocks_per_stage):
                stage.append(_BasicBlock(cin, cout, stride if b == 0 else 1))
                cin = cout
            layers.append(nn.Sequential(*stage))
        self.layer1, self.layer2, self.layer3 = layers
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(self.normalize(x))))
        x = self.layer3(self.layer2(self.layer1(x)))
        return torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)


class ResNet50Features(nn.Module):
    """torchvision ResNet-50 with ``fc`` replaced by Identity: D = 2048.

    ImageNet normalisation is inside. Grayscale input is repeated to 3 channels so ImageNet
    weights still apply. Inputs smaller than ``min_size`` (default 64) are upsampled
    bilinearly to ``min_size``: at 32 px the last stage would see a 1x1 map, while 224 px
    would cost ~49x the compute of 32 px on CPU; 64 px is the compromise (ours).
    """

    feature_dim = 2048

    def __init__(self, in_channels: int = 3, min_size: int = 64):
        super().__init__()
        import torchvision

        self.in_channels = in_channels
        self.min_size = min_size
        self.normalize = _Normalize(IMAGENET_MEAN, IMAGENET_STD, 3)
        self.net = torchvision.models.resnet50(weights=None)
        self.net.fc = nn.Identity()

    def prepared(self, x: torch.Tensor) -> torch.Tensor:
        """The network's input: three channels, at least ``min_size`` a side, normalised."""
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        h, w = x.shape[-2:]
        if self.min_size and min(h, w) < self.min_size:
            scale = self.min_size / min(h, w)
            size = (max(self.min_size, round(h * scale)), max(self.min_size, round(w * scale)))
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        return self.normalize(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.prepared(x))


# --------------------------------------------------------------------------------------
# Weights
# --------------------------------------------------------------------------------------


def imagenet_weights_path() -> Path:
    """Where torchvision's ResNet-50 IMAGENET1K_V2 file is expected in the torch hub cache.

    Returns
    -------
    pathlib.Path
        ``<torch hub dir>/checkpoints/resnet50-11ad3fa6.pth`` (may not exist).
    """
    from torchvision.models import ResNet50_Weights

    fname = ResNet50_Weights.IMAGENET1K_V2.url.rsplit("/", 1)[-1]
    return Path(torch.hub.get_dir()) / "checkpoints" / fname


def _read_state_dict(path: Path) -> dict:
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    # weights_only: a state_dict needs no pickled code, and this refuses files that carry it.
    obj = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]  # common checkpoint wrapper
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: expected a state_dict (dict of tensors), got {type(obj).__name__}")
    return obj


def load_state_dict_file(module: nn.Module, path: str | os.PathLike, *, name: str = "") -> nn.Module:
    """Load a state_dict file into ``module`` strictly.

    Parameters
    ----------
    module : torch.nn.Module
        A backbone from :func:`build_backbone`.
    path : str or path-like
        File written by ``torch.save(backbone.state_dict(), path)``. For ``resnet50`` a plain
        torchvision ResNet-50 state_dict (keys ``conv1.weight``, ..., ``fc.*``) is accepted
        too; its ``fc`` entries are dropped.
    name : str, optional
        Backbone name for error messages.

    Returns
    -------
    torch.nn.Module
        ``module``, with the weights loaded.

    Raises
    ------
    FileNotFoundError
        When the file does not exist.
    ValueError
        When keys or shapes do not match the architecture.
    """
    path = Path(path).expanduser()
    sd = _read_state_dict(path)
    sd = {k[7:] if k.startswith("module.") else k: v for k, v in sd.items()}  # DataParallel prefix
    target = module
    if isinstance(module, ResNet50Features) and not any(k.startswith("net.") for k in sd):
        target = module.net
        sd = {k: v for k, v in sd.items() if not k.startswith("fc.")}
    try:
        target.load_state_dict(sd, strict=True)
    except RuntimeError as e:
        expected = set(target.state_dict())
        missing = sorted(expected - set(sd))
        unexpected = sorted(set(sd) - expected)
        detail = str(e).split("\n\t", 1)[-1][:500]
        raise ValueError(
            f"weights {path} do not fit backbone {name or type(module).__name__!r}: "
            f"{len(missing)} missing keys {missing[:5]}, {len(unexpected)} unexpected keys "
            f"{unexpected[:5]}; {detail}"
        ) from None
    return module


def build_backbone(
    name: str, *, in_channels: int = 3, weights: str | os.PathLike | None = None
) -> nn.Module:
    """Build a feature extractor.

    Parameters
    ----------
    name : {"flatten", "smallcnn", "resnet20", "resnet50"}
        Architecture (see the module docstring).
    in_channels : int, default 3
        Channels of the input images (1 or 3).
    weights : None, "imagenet" or path, optional
        None: random initialisation (seed torch beforehand for reproducibility).
        ``"imagenet"`` (resnet50 only): torchvision's IMAGENET1K_V2 weights, read from the
        torch hub cache if already there; nothing is ever downloaded. A path: a state_dict
        file loaded strictly (see :func:`load_state_dict_file`).

    Returns
    -------
    torch.nn.Module
        In eval mode, mapping float32 (N, C, H, W) in [0, 1] to (N, D). Attributes
        ``backbone_name`` and ``feature_dim`` (None for ``flatten``) are set.

    Raises
    ------
    ValueError
        Unknown name, bad ``in_channels``, or weights that do not fit.
    FileNotFoundError
        A weights file (or the ImageNet file in the hub cache) is missing.
    """
    if in_channels not in (1, 3):
        raise ValueError(f"in_channels must be 1 or 3, got {in_channels}")
    if isinstance(weights, str) and weights == "imagenet":
        # Checked before building: constructing a ResNet-50 takes a second or two.
        if name != "resnet50":
            raise ValueError(f"weights='imagenet' exists only for resnet50, not {name!r}")
        if not imagenet_weights_path().is_file():
            raise FileNotFoundError(
                f"ImageNet weights not in the torch hub cache ({imagenet_weights_path()}); they "
                "are never downloaded here. Copy resnet50-11ad3fa6.pth there, or pass "
                "weights=<path to a state_dict>."
            )
    if name == "flatten":
        model: nn.Module = Flatten()
    elif name == "smallcnn":
        model = SmallCNN(in_channels)
    elif name == "resnet20":
        model = ResNet20(in_channels)
    elif name == "resnet50":
        model = ResNet50Features(in_channels)
    else:
        raise ValueError(f"unknown backbone {name!r}; choose one of {BACKBONE_NAMES}")
    if isinstance(weights, str) and weights == "imagenet":
        load_state_dict_file(model, imagenet_weights_path(), name=name)
    elif weights is not None:
        load_state_dict_file(model, weights, name=name)
    model.backbone_name = name
    if not hasattr(model, "feature_dim"):
        model.feature_dim = None
    return model.eval()


# --------------------------------------------------------------------------------------
# Feature extraction and its cache
# --------------------------------------------------------------------------------------

_SAFE_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,200}$")
_weights_hash_memo: dict[tuple[str, int, int], str] = {}


def _weights_digest(weights) -> str:
    """Content hash of a weights file ("none" for random init), memoised by path/size/mtime."""
    if weights is None:
        return "none"
    p = imagenet_weights_path() if str(weights) == "imagenet" else Path(weights).expanduser()
    if not p.is_file():
        raise FileNotFoundError(f"weights file not found: {p}")
    st = p.stat()
    memo_key = (str(p.resolve()), st.st_size, st.st_mtime_ns)
    if memo_key not in _weights_hash_memo:
        h = hashlib.sha256()
        with open(p, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
        _weights_hash_memo[memo_key] = h.hexdigest()
    return _weights_hash_memo[memo_key]


def feature_cache_key(
    dataset_fingerprint: str,
    backbone_name: str,
    weights_path_or_None: str | os.PathLike | None,
    split: str,
    *,
    extra: str = "",
) -> str:
    """Cache key for the features of one data split under one backbone.

    Parameters
    ----------
    dataset_fingerprint : str
        :attr:`learner.data.LabeledImages.fingerprint`.
    backbone_name : str
        Name given to :func:`build_backbone`.
    weights_path_or_None : path, "imagenet" or None
        The weights the backbone was built with. The key holds a sha256 of the file's
        contents, so new weights (even at the same path) never hit stale features.
    split : str
        E.g. ``"pool"`` or ``"test"``.
    extra : str, optional
        Anything else the features depend on. With ``weights=None`` a parametric backbone
        is randomly initialised: pass the torch seed here, or do not cache.

    Returns
    -------
    str
        A file-name-safe key: ``<backbone>-<split>-<24 hex digits>``.
    """
    payload = json.dumps(
        [FEATURE_VERSION, dataset_fingerprint, backbone_name, _weights_digest(weights_path_or_None), split, extra]
    )
    digest = hashlib.sha256(payload.encode()).hexdigest()[:24]
    safe = lambda s: re.sub(r"[^A-Za-z0-9]+", "_", str(s))[:40] or "x"  # noqa: E731
    return f"{safe(backbone_name)}-{safe(split)}-{digest}"


def _feature_cache_file(cache_key: str) -> Path:
    if not _SAFE_KEY.match(cache_key):
        raise ValueError(f"cache_key must be a plain file name ([A-Za-z0-9._-]), got {cache_key!r}")
    return cache_dir() / "features" / f"{cache_key}.npy"


def _module_device(module: nn.Module) -> torch.device:
    for p in module.parameters():
        return p.device
    return torch.device("cpu")


def extract_features(
    backbone: nn.Module,
    images_uint8: np.ndarray,
    *,
    batch_size: int = 256,
    device: str | torch.device | None = None,
    cache_key: str | None = None,
    progress: bool = False,
) -> np.ndarray:
    """Run a backbone over uint8 images and return its features.

    Parameters
    ----------
    backbone : torch.nn.Module
        Maps float32 NCHW in [0, 1] to (N, D).
    images_uint8 : numpy.ndarray
        uint8 images, (N, H, W, C).
    batch_size : int, default 256
        Images per forward pass.
    device : str or torch.device, optional
        Default: the device of the backbone's parameters (CPU for parameter-free ones).
    cache_key : str, optional
        When given, features are stored in ``<cache dir>/features/<cache_key>.npy`` and a
        later call with the same key (and the same number of images) returns them without
        running the backbone. Build the key with :func:`feature_cache_key`.
    progress : bool, default False
        Show a tqdm progress bar.

    Returns
    -------
    numpy.ndarray
        float32, shape (N, D).

    Notes
    -----
    Runs in eval mode under ``torch.inference_mode``; the backbone's previous train/eval
    mode is restored afterwards.
    """
    n = len(images_uint8)
    cache_file = _feature_cache_file(cache_key) if cache_key is not None else None
    if cache_file is not None and cache_file.is_file():
        cached = np.load(cache_file)
        if cached.ndim == 2 and len(cached) == n:
            return cached
        # A cached array of another length cannot be these images' features: recompute.
    dev = torch.device(device) if device is not None else _module_device(backbone)
    backbone = backbone.to(dev)
    was_training = backbone.training
    backbone.eval()
    starts = range(0, n, batch_size)
    if progress:
        from tqdm.auto import tqdm

        starts = tqdm(starts, desc="features", unit="batch")
    chunks = []
    try:
        with torch.inference_mode():
            for s in starts:
                xb = to_tensor(images_uint8[s : s + batch_size]).to(dev)
                chunks.append(backbone(xb).float().cpu().numpy())
    finally:
        backbone.train(was_training)
    if chunks:
        feats = np.concatenate(chunks).astype(np.float32, copy=False)
    else:
        # N = 0: return the right width where the backbone knows it.
        feats = np.zeros((0, getattr(backbone, "feature_dim", None) or 0), np.float32)
    if cache_file is not None:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=cache_file.parent, suffix=".tmp.npy")
        try:
            with os.fdopen(fd, "wb") as fh:
                np.save(fh, feats)
            os.replace(tmp, cache_file)  # atomic: concurrent readers never see half a file
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    return feats


# --------------------------------------------------------------------------------------
# Supervised training with a temporary head
# --------------------------------------------------------------------------------------


def _augment(x: torch.Tensor, gen: torch.Generator, pad: int = 4, flip: bool = True) -> torch.Tensor:
    """Random crop (reflect-padded) and optional horizontal flip, per image, on a batch."""
    n, _, h, w = x.shape
    xp = F.pad(x, (pad, pad, pad, pad), mode="reflect")
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
    # Two gathers, rows then columns: a vectorised per-image crop without a Python loop.
    idx_r = (dy[:, None] + torch.arange(h))[:, None, :, None].expand(n, x.shape[1], h, w + 2 * pad)
    xr = xp.gather(2, idx_r)
    cols = (dx[:, None] + torch.arange(w))[:, None, None, :].expand(n, x.shape[1], h, w)
    xc = xr.gather(3, cols)
    if flip:
        mask = torch.rand(n, generator=gen) < 0.5
        xc = torch.where(mask[:, None, None, None], xc.flip(3), xc)
    return xc


def train_backbone_supervised(
    backbone: nn.Module,
    x_uint8: np.ndarray,
    y: np.ndarray,
    *,
    epochs: int = 10,
    batch_size: int = 128,
    lr: float = 3e-3,
    seed: int = 0,
    progress: bool = True,
    device: str | torch.device | None = None,
    optimizer: str = "adam",
    weight_decay: float = 5e-4,
    augment: bool = False,
    num_classes: int | None = None,
) -> tuple[nn.Module, float]:
    """Train a backbone end to end with a temporary linear head (cross-entropy).

    Parameters
    ----------
    backbone : torch.nn.Module
        E.g. ``build_backbone("smallcnn")``; trained in place.
    x_uint8 : numpy.ndarray
        uint8 images, (N, H, W, C).
    y : numpy.ndarray
        int labels in ``0..num_classes-1``.
    epochs, batch_size : int
        Passes over the data and images per step.
    lr : float, default 3e-3
        Peak learning rate of the one-cycle schedule.
    seed : int, default 0
        Seeds the head's init, the shuffling and the augmentation.
    progress : bool, default True
        tqdm bar over epochs.
    device : str or torch.device, optional
        Default: the backbone's device.
    optimizer : {"adam", "sgd"}, default "adam"
        AdamW, or SGD with Nesterov momentum 0.9; both with ``weight_decay``.
    weight_decay : float, default 5e-4
    augment : bool, default False
        Random 4-px crops and horizontal flips (natural images; not for digits).
    num_classes : int, optional
        Default ``max(y) + 1``.

    Returns
    -------
    backbone : torch.nn.Module
        The trained backbone, in eval mode (the head is discarded).
    train_accuracy : float
        Accuracy of backbone + head on ``(x_uint8, y)`` in eval mode after training.
    """
    y = np.asarray(y, dtype=np.int64)
    if len(x_uint8) != len(y) or len(y) == 0:
        raise ValueError("x_uint8 and y must be non-empty and of equal length")
    if not any(p.requires_grad for p in backbone.parameters()):
        raise ValueError("this backbone has no trainable parameters")
    n_cls = int(num_classes or int(y.max()) + 1)
    dev = torch.device(device) if device is not None else _module_device(backbone)
    backbone.to(dev)
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)

    x_all = to_tensor(x_uint8)  # (N, C, H, W) float in [0, 1]; CPU copy, batches move to dev
    y_all = torch.from_numpy(y)
    with torch.no_grad():
        backbone.eval()
        dim = backbone(x_all[:2].to(dev)).shape[1]
    head = nn.Linear(dim, n_cls).to(dev)
    params = list(backbone.parameters()) + list(head.parameters())
    if optimizer == "adam":
        opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    elif optimizer == "sgd":
        opt = torch.optim.SGD(params, lr=lr, momentum=0.9, nesterov=True, weight_decay=weight_decay)
    else:
        raise ValueError(f"optimizer must be 'adam' or 'sgd', got {optimizer!r}")
    steps_per_epoch = (len(y) + batch_size - 1) // batch_size
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=max(1, epochs * steps_per_epoch))

    epoch_iter = range(epochs)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        epoch_iter = bar = tqdm(epoch_iter, desc="train backbone", unit="epoch")
    for _ in epoch_iter:
        backbone.train()
        head.train()
        perm = torch.randperm(len(y), generator=gen)
        total_loss, seen = 0.0, 0
        for s in range(0, len(y), batch_size):
            idx = perm[s : s + batch_size]
            if len(idx) < 2 and len(y) >= 2:
                continue  # BatchNorm cannot train on a batch of one
            xb = x_all[idx]
            if augment:
                xb = _augment(xb, gen)
            xb, yb = xb.to(dev), y_all[idx].to(dev)
            loss = F.cross_entropy(head(backbone(xb)), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total_loss += loss.item() * len(idx)
            seen += len(idx)
        if bar is not None:
            bar.set_postfix(loss=f"{total_loss / max(seen, 1):.4f}")

    backbone.eval()
    head.eval()
    correct = 0
    with torch.inference_mode():
        for s in range(0, len(y), 512):
            logits = head(backbone(x_all[s : s + 512].to(dev)))
            correct += int((logits.argmax(1).cpu() == y_all[s : s + 512]).sum())
    return backbone, correct / len(y)
