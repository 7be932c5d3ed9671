"""Fine-tuning the backbone's last stage on the labeled items (``training_mode = "finetune"``).

Plain Python + torch, no Django. With ``head`` (the default) the backbone stays frozen and only
the linear head learns. With ``finetune`` a copy of the backbone's last stage (ResNet-20: the
third residual stage; ResNet-50: ``layer4``; SmallCNN: the last conv block) learns too:

* the inputs of that stage are computed once for the pool (:func:`stage_inputs`), so a refit
  and the re-extraction of the pool's features run the last stage only;
* :meth:`FineTuner.fit` trains the stage with a temporary linear head on the labeled items,
  each weighted by its label's trust weight: first the head alone on the current features
  (a linear probe, so the stage is not pulled by a random head), then both together for
  ``epochs`` passes; BatchNorm keeps its running statistics (eval mode), its affine weights
  learn. Each refit starts from the stage of the refit before (the drivers keep it: the
  simulator in memory, the web app next to the project's feature cache);
* :meth:`FineTuner.features` re-extracts the pool's features through the new stage (the web
  app spreads this over ``train`` workers chunk by chunk, ``labeling.features.reextract``; a
  chunk is ``features(inputs[start:stop])`` and the stage is named by :func:`stage_hash`).

The loop engine calls this through ``Pool.refit`` once per iteration, when the iteration's labels
are final (:func:`learner.engine.step`); the head of that iteration is then trained again on the
new features. Crafted copies are not used to train the stage. Runs on
:func:`learner.device.pick` (CUDA when present, else the CPU); deterministic for a seed on the CPU.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

# backbones with a trainable last stage (learner.live repeats the names so validating a config
# does not import torch)
FINETUNE_BACKBONES = ("smallcnn", "resnet20", "resnet50")


@dataclass(frozen=True)
class FineTuneSettings:
    epochs: int = 5  # passes over the labeled items per refit (stage and head together)
    learning_rate: float = 1e-3  # the stage's (AdamW)
    head_learning_rate: float = 1e-2  # the temporary head's
    probe_steps: int = 100  # full-batch steps of the temporary head alone, before the stage moves
    weight_decay: float = 5e-4
    batch_size: int = 64
    chunk_size: int = 1024  # items per forward pass when re-extracting features


class _Shift(nn.Module):
    def __init__(self, offset: float):
        super().__init__()
        self.offset = offset

    def forward(self, x):
        return x + self.offset


class _ResNet20Stem(nn.Module):
    def __init__(self, net):
        super().__init__()
        self.normalize, self.conv1, self.bn1 = net.normalize, net.conv1, net.bn1
        self.layer1, self.layer2 = net.layer1, net.layer2

    def forward(self, x):
        return self.layer2(self.layer1(F.relu(self.bn1(self.conv1(self.normalize(x))))))


class _ResNet50Stem(nn.Module):
    def __init__(self, outer):
        super().__init__()
        self.outer = outer  # ResNet50Features: its resizing and normalisation
        n = outer.net
        self.body = nn.Sequential(n.conv1, n.bn1, n.relu, n.maxpool, n.layer1, n.layer2, n.layer3)

    def forward(self, x):
        return self.body(self.outer.prepared(x))


def split_last_stage(backbone: nn.Module) -> tuple[nn.Module, nn.Module]:
    """``(stem, last stage)`` with ``backbone(x) == last(stem(x))``.

    The stem shares the backbone's (frozen) modules; the last stage is a copy (trainable).
    Raises ValueError for a backbone without a trainable last stage (``flatten``)."""
    from .backbones import ResNet20, ResNet50Features, SmallCNN

    if isinstance(backbone, ResNet20):
        stem = _ResNet20Stem(backbone)
        last = nn.Sequential(copy.deepcopy(backbone.layer3), nn.AdaptiveAvgPool2d(1), nn.Flatten(1))
    elif isinstance(backbone, SmallCNN):
        layers = list(backbone.features.children())
        stem = nn.Sequential(_Shift(-0.5), *layers[:8])  # two conv blocks and their pools
        last = copy.deepcopy(nn.Sequential(*layers[8:]))  # the last conv block, pooling, flatten
    elif isinstance(backbone, ResNet50Features):
        stem = _ResNet50Stem(backbone)
        last = nn.Sequential(copy.deepcopy(backbone.net.layer4), nn.AdaptiveAvgPool2d(1), nn.Flatten(1))
    else:
        name = getattr(backbone, "backbone_name", type(backbone).__name__)
        raise ValueError(f"training_mode 'finetune' needs a backbone with a trainable last stage "
                         f"({', '.join(FINETUNE_BACKBONES)}); {name!r} has none")
    for p in stem.parameters():
        p.requires_grad_(False)
    return stem.eval(), last.eval()


def stage_inputs(backbone: nn.Module, images_uint8: np.ndarray, *, batch_size: int = 256,
                 device=None) -> np.ndarray:
    """The last stage's inputs (float32, N x C x H x W) of uint8 NHWC images."""
    from .backbones import to_tensor
    from .device import pick

    dev = pick() if device is None else torch.device(device)
    stem, _ = split_last_stage(backbone)
    stem = stem.to(dev)
    out = []
    with torch.inference_mode():
        for s in range(0, len(images_uint8), batch_size):
            out.append(stem(to_tensor(images_uint8[s:s + batch_size]).to(dev)).float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0,), np.float32)


def _bn_eval(module: nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()


class FineTuner:
    """A trainable copy of ``backbone``'s last stage over the pool's cached stage inputs.

    ``inputs`` are :func:`stage_inputs` of the pool's images (row i = item i)."""

    def __init__(self, backbone: nn.Module, inputs: np.ndarray, *, settings: FineTuneSettings | None = None,
                 device=None):
        from .device import pick

        self.stem, self.stage = split_last_stage(backbone)
        self.inputs = inputs
        self.settings = settings or FineTuneSettings()
        self.device = pick() if device is None else torch.device(device)

    # -- the stage's weights (persisted by the drivers) ---------------------------------------
    def state_dict(self) -> dict:
        return {k: v.detach().cpu().clone() for k, v in self.stage.state_dict().items()}

    def load_state_dict(self, state: dict) -> None:
        self.stage.load_state_dict(state, strict=True)

    def backbone(self) -> nn.Module:
        """Stem + the current stage (eval mode): what pixel-space crafting attacks."""
        return nn.Sequential(self.stem, self.stage).eval()

    # -- features ----------------------------------------------------------------------------
    def features(self, inputs: np.ndarray | None = None) -> np.ndarray:
        """Features (float32, N x D) of ``inputs`` (default: the pool's) through the current stage."""
        inputs = self.inputs if inputs is None else inputs
        stage = self.stage.to(self.device).eval()
        step = self.settings.chunk_size
        out = []
        with torch.inference_mode():
            for s in range(0, len(inputs), step):
                x = torch.from_numpy(np.array(inputs[s:s + step], dtype=np.float32)).to(self.device)  # a copy (memory-mapped input)
                out.append(stage(x).float().cpu().numpy())
        return np.concatenate(out).astype(np.float32, copy=False) if out else np.zeros((0, 0), np.float32)

    # -- training ----------------------------------------------------------------------------
    def fit(self, items, labels, weights, n_classes: int, seed: int) -> bool:
        """Train the stage (and a temporary head) on ``items`` with ``labels`` weighted by
        ``weights`` (trust; 0 leaves an item out). Returns False when there was nothing to learn
        from (fewer than two weighted items, or one class only): the stage is unchanged."""
        items = np.asarray(items, dtype=np.int64)
        labels = np.asarray(labels, dtype=np.int64)
        weights = np.asarray(weights, dtype=np.float64)
        keep = weights > 0
        items, labels, weights = items[keep], labels[keep], weights[keep]
        if len(items) < 2 or len(np.unique(labels)) < 2:
            return False
        s, dev = self.settings, self.device
        torch.manual_seed(int(seed))
        gen = torch.Generator().manual_seed(int(seed))
        x = torch.from_numpy(np.ascontiguousarray(self.inputs[items], dtype=np.float32))
        y = torch.from_numpy(labels)
        w = torch.from_numpy(weights.astype(np.float32))
        stage = self.stage.to(dev)
        with torch.no_grad():
            stage.eval()
            z = torch.cat([stage(x[k:k + s.chunk_size].to(dev)) for k in range(0, len(x), s.chunk_size)])
            mean, scale = z.mean(0), z.std(0).clamp_min(1e-6)
        head = nn.Linear(z.shape[1], n_classes).to(dev)
        with torch.no_grad():
            head.weight.zero_()
            head.bias.zero_()

        def loss_of(logits, yb, wb):
            return (F.cross_entropy(logits, yb, reduction="none") * wb).sum() / wb.sum().clamp_min(1e-12)

        yd, wd = y.to(dev), w.to(dev)
        probe = torch.optim.Adam(head.parameters(), lr=s.head_learning_rate)
        zs = (z - mean) / scale
        for _ in range(s.probe_steps):  # the head alone on the current features
            probe.zero_grad(set_to_none=True)
            loss_of(head(zs), yd, wd).backward()
            probe.step()
        opt = torch.optim.AdamW([{"params": stage.parameters(), "lr": s.learning_rate},
                                 {"params": head.parameters(), "lr": s.head_learning_rate}],
                                weight_decay=s.weight_decay)
        stage.train()
        _bn_eval(stage)  # few labels: keep the running statistics the pool's features were made with
        for _ in range(s.epochs):
            order = torch.randperm(len(items), generator=gen)
            for k in range(0, len(items), s.batch_size):
                idx = order[k:k + s.batch_size]
                xb = x[idx].to(dev)
                opt.zero_grad(set_to_none=True)
                loss_of(head((stage(xb) - mean) / scale), yd[idx], wd[idx]).backward()
                opt.step()
        stage.eval()
        return True


def stage_hash(state: dict) -> str:
    """sha256 (hex) of a stage's state_dict: names, dtypes, shapes and bytes, in key order. Names
    one fine-tuned stage, so files made from it (the web app's re-extraction chunks) are never
    mixed with another stage's."""
    import hashlib

    h = hashlib.sha256()
    for key in sorted(state):
        t = state[key].detach().cpu().contiguous()
        h.update(f"{key}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def refit_hook(tuner: FineTuner, n_classes: int, *, after=None, extract=None):
    """The engine's ``Pool.refit``: fine-tune on the labeled items, return the pool's new
    features. ``extract(tuner)`` computes them (default :meth:`FineTuner.features`, in this
    process); ``after(tuner, features)`` lets a driver persist the stage (or re-extract its
    test set) once the features are new."""

    def refit(items, labels, weights, seed):
        tuner.fit(items, labels, weights, n_classes, seed)
        feats = tuner.features() if extract is None else extract(tuner)
        if after is not None:
            after(tuner, feats)
        return feats
    return refit


__all__ = ["FINETUNE_BACKBONES", "FineTuneSettings", "FineTuner", "split_last_stage", "stage_inputs", "stage_hash", "refit_hook"]
