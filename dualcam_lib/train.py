"""Training: the class-balanced BCE, the embedded classifiers (softmax CE) and the sigmoid head, two ways.

- :class:`ClassBalancedBCE`: ``BCEWithLogitsLoss(pos_weight=C-1)`` on one-hot targets (the paper's code), any
  positive:negative ratio, or the paper's Eq. 12 written per image.
- :func:`train_classifier`: softmax cross-entropy training of a whole :class:`~dualcam_lib.models.SplitClassifier`.
- :func:`fit_sigmoid_head` (faithful): every step runs the frozen backbone on a freshly augmented batch (the paper's
  ``Resize -> RandomCrop -> flip``), as the paper's recipe does.
- :func:`fit_sigmoid_head_fast`: the frozen backbone runs once per cached view (:func:`extract_features`), and the
  head trains on the cached head inputs. Because the backbone is frozen and in eval mode, its output for a given
  input image is a constant, so the gradients are the same as end to end for the same views; only the set of views
  differs (a few fixed ones instead of a fresh random one per epoch).

Both sigmoid-head fits checkpoint every epoch (:mod:`dualcam_lib.checkpoint`) and resume from ``checkpoint_path``;
each epoch's shuffling and augmentation are drawn from a generator seeded by ``(seed, epoch)`` and the global RNG
states are restored, so an interrupted run ends with exactly the weights of an uninterrupted one.
"""
from __future__ import annotations

import hashlib
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from .augment import Augmentation, FlipTranslate, NoAugment, PaperAugment, index_params, resolve_augment
from .checkpoint import (CheckpointMismatchError, arch_fingerprint, atomic_torch_save, capture_rng_states,
                         load_checkpoint, restore_rng_states, save_checkpoint)
from .heads import DualBranchModel
from .models import GapLinearHead, PoolMLPHead, SplitClassifier, TokenHead

# Learning rates of the paper's "+ Ours" runs (Appendix C), by CAM family and backbone; Adam, batch 32.
PAPER_LR = {
    "cam": {"vgg16": 3e-3, "resnet50": 1e-4, "inception_v3": 5e-4},
    "gradcam": {"vgg16": 1e-4, "resnet50": 5e-3, "inception_v3": 5e-4},
}
# Epochs of the paper's sigmoid-head fine-tuning ("up to"), by dataset.
PAPER_EPOCHS = {"imagenet": 10, "openimages": 10, "cub": 12, "cars": 10}
PAPER_BATCH_SIZE = 32
# The paper follows Choe et al. (wsolevaluation) for weight decay: 1e-4.
PAPER_WEIGHT_DECAY = 1e-4

LOSS_WEIGHTINGS = ("pos_weight", "eq12")
OPTIMIZERS = ("adam", "adamw", "sgd")
LR_SCHEDULES = ("constant", "cosine")


def paper_lr(arch: str, family: str = "gradcam") -> float:
    """The paper's sigmoid-head learning rate for ``arch`` in {vgg16, resnet50, inception_v3} and ``family`` in
    {"cam", "gradcam"} (CAM + Ours / Grad-CAM + Ours, Appendix C)."""
    if family not in PAPER_LR:
        raise ValueError(f"family must be one of {sorted(PAPER_LR)}, got {family!r}")
    if arch not in PAPER_LR[family]:
        raise ValueError(f"the paper gives no learning rate for {arch!r}; it covers {sorted(PAPER_LR[family])}")
    return PAPER_LR[family][arch]


# ----------------------------------------------------------------------------------------------------------------
# Loss
# ----------------------------------------------------------------------------------------------------------------


def ablation_pos_weights(num_classes: int) -> dict[str, float]:
    """The paper's Table 5 ratios for ``C`` classes: ``{"1:1": 1, "(C-1)/2:1": (C-1)/2, "C-1:1": C-1}``."""
    c = num_classes
    return {"1:1": 1.0, "(C-1)/2:1": (c - 1) / 2, "C-1:1": float(c - 1)}


class ClassBalancedBCE(nn.Module):
    """Class-balanced binary cross-entropy for one positive class per image.

    ``forward(logits (B, C), target)`` with ``target`` either labels ``(B,) long`` or one-hot ``(B, C) float``.

    - ``weighting="pos_weight"`` (the paper's code): ``BCEWithLogitsLoss(pos_weight=r)`` with a scalar ``r``
      (default ``C-1``), averaged over ``B x C``:
      ``L = -1/(B C) sum_n [ r log s_y + sum_{k != y} log(1 - s_k) ]``.
    - ``weighting="eq12"`` (the paper's Eq. 12, per image): positive term weighted ``r/(r+1)``, the sum of the
      negatives ``1/(r+1)``, averaged over ``B``. With ``r = C-1`` the weights are ``1 - 1/C`` and ``1/C`` and the
      value equals the ``pos_weight`` form exactly (multiply out ``1/C``); for other ``r`` it is the ``pos_weight``
      value times ``C/(r+1)``.

    ``reduction``: ``"mean"`` (scalar), ``"sum"`` or ``"none"`` (per-image ``(B,)``, whose mean is the ``"mean"``).
    """

    def __init__(self, num_classes: int, pos_weight: float | None = None, weighting: str = "pos_weight",
                 reduction: str = "mean", check_labels: bool = True):
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"ClassBalancedBCE needs num_classes >= 2, got {num_classes}")
        if weighting not in LOSS_WEIGHTINGS:
            raise ValueError(f"weighting must be one of {LOSS_WEIGHTINGS}, got {weighting!r}")
        if reduction not in ("mean", "sum", "none"):
            raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
        pw = float(num_classes - 1) if pos_weight is None else float(pos_weight)
        if not pw > 0:
            raise ValueError(f"pos_weight must be > 0, got {pos_weight!r}")
        self.num_classes = int(num_classes)
        self.pos_weight = pw
        self.weighting = weighting
        self.reduction = reduction
        self.check_labels = check_labels  # the range check syncs with the device; training loops check once

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, pos_weight={self.pos_weight:g}, weighting={self.weighting!r}"

    def _one_hot(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if logits.dim() != 2 or logits.shape[1] != self.num_classes:
            raise ValueError(f"ClassBalancedBCE: logits must be (B, {self.num_classes}), got {tuple(logits.shape)}")
        if target.dim() == 1:
            if target.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
                raise ValueError(f"ClassBalancedBCE: label targets must be an integer tensor, got {target.dtype}")
            if self.check_labels and target.numel() and (int(target.min()) < 0 or int(target.max()) >= self.num_classes):
                raise ValueError(f"ClassBalancedBCE: labels must lie in [0, {self.num_classes - 1}]")
            return F.one_hot(target.long(), self.num_classes).to(logits.dtype)
        if target.shape != logits.shape:
            raise ValueError(f"ClassBalancedBCE: one-hot target shape {tuple(target.shape)} != logits "
                             f"{tuple(logits.shape)}")
        return target.to(logits.dtype)

    def forward(self, logits: torch.Tensor, target: torch.Tensor, reduction: str | None = None) -> torch.Tensor:
        reduction = reduction or self.reduction
        y = self._one_hot(logits, target)
        if self.weighting == "pos_weight":
            pw = torch.full((self.num_classes,), self.pos_weight, dtype=logits.dtype, device=logits.device)
            per_image = F.binary_cross_entropy_with_logits(logits, y, pos_weight=pw, reduction="none").mean(dim=1)
        else:
            r = self.pos_weight
            pos = -(y * F.logsigmoid(logits)).sum(dim=1)  # -log s_y
            neg = -((1 - y) * F.logsigmoid(-logits)).sum(dim=1)  # -sum_{k != y} log(1 - s_k)
            per_image = (r / (r + 1)) * pos + (1 / (r + 1)) * neg
        if reduction == "none":
            return per_image
        return per_image.sum() if reduction == "sum" else per_image.mean()


# ----------------------------------------------------------------------------------------------------------------
# Data sources: SyntheticSet-like (indexable tensors) or an iterable of batches
# ----------------------------------------------------------------------------------------------------------------


def _is_indexable(data) -> bool:
    return isinstance(getattr(data, "images", None), torch.Tensor) and isinstance(getattr(data, "labels", None),
                                                                                  torch.Tensor)


def _is_map_dataset(data) -> bool:
    """A map-style dataset yielding items for ``collate_wsol`` (e.g. ``WSOLImageDataset``), not a tensor set."""
    return (isinstance(data, torch.utils.data.Dataset) and hasattr(data, "__len__")
            and not _is_indexable(data) and not isinstance(data, torch.utils.data.IterableDataset))


def _epoch_loader(data, batch_size: int | None, shuffle: bool, generator: torch.Generator | None, num_workers: int,
                  batch_sampler=None):
    """A DataLoader over a map-style dataset for one pass (``collate_wsol`` batches)."""
    from .data.datasets import collate_wsol

    if batch_sampler is not None:
        return torch.utils.data.DataLoader(data, batch_sampler=batch_sampler, num_workers=num_workers,
                                           collate_fn=collate_wsol)
    return torch.utils.data.DataLoader(data, batch_size=batch_size, shuffle=shuffle, generator=generator,
                                       num_workers=num_workers, collate_fn=collate_wsol)


def _interleave_empty(locals_: list, loaded):
    """Yield the loaded ``(images, labels)`` per local slice, and an empty batch where a slice is empty (a rank
    whose share of a short final global batch is nothing still takes part in the DDP step)."""
    shape = None
    for idx in locals_:
        if len(idx):
            images, labels = next(loaded)
            shape = images.shape[1:]
            yield images, labels
        else:
            if shape is None:
                raise ValueError("the global batch size must be at least the number of processes")
            yield torch.zeros((0, *shape)), torch.zeros(0, dtype=torch.long)


def _batch_tensors(batch, where: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``(images01, labels)`` from a WSOLBatch, any object with ``.images``/``.labels``, or an (images, labels) pair."""
    if hasattr(batch, "images") and hasattr(batch, "labels"):
        images, labels = batch.images, batch.labels
    elif isinstance(batch, (tuple, list)) and len(batch) >= 2:
        images, labels = batch[0], batch[1]
    else:
        raise TypeError(f"{where}: expected WSOLBatch (or an (images, labels) pair), got {type(batch).__name__}")
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"{where}: images must be (B, 3, H, W), got "
                         f"{tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__}")
    if not torch.is_floating_point(images):
        raise ValueError(f"{where}: images must be float in [0, 1] (not normalised), got {images.dtype}")
    labels = torch.as_tensor(labels).long()
    if labels.shape != (images.shape[0],):
        raise ValueError(f"{where}: labels must be ({images.shape[0]},), got {tuple(labels.shape)}")
    return images, labels


def _check_indexable(data, where: str) -> None:
    images, labels = data.images, data.labels
    if images.dim() != 4 or images.shape[1] != 3 or not torch.is_floating_point(images):
        raise ValueError(f"{where}: data.images must be float (N, 3, H, W) in [0, 1], got {images.dtype} "
                         f"{tuple(images.shape)}")
    if labels.shape != (images.shape[0],):
        raise ValueError(f"{where}: data.labels must be ({images.shape[0]},), got {tuple(labels.shape)}")


def _check_label_range(labels: torch.Tensor, num_classes: int, where: str) -> None:
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise ValueError(f"{where}: labels must lie in [0, {num_classes - 1}], found "
                         f"[{int(labels.min())}, {int(labels.max())}]")


def _epoch_generator(seed: int, epoch: int, salt: int = 0) -> torch.Generator:
    """A CPU generator that depends only on (seed, epoch, salt): an epoch's randomness never depends on history."""
    return torch.Generator().manual_seed((int(seed) * 1_000_003 + int(epoch) * 7919 + int(salt)) % (2**63 - 1))


def _global_batches(n: int, batch_size: int, generator: torch.Generator | None, drop_last: bool = False):
    """Index tensors of each global mini-batch: a permutation (or ``arange`` without a generator) cut in pieces."""
    order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
    stop = (n // batch_size) * batch_size if drop_last else n
    return [order[i:i + batch_size] for i in range(0, stop, batch_size)]


def _local_part(idx: torch.Tensor, rank: int, world_size: int) -> torch.Tensor:
    """This rank's contiguous slice of a global batch (identical global batches split across ranks)."""
    if world_size == 1:
        return idx
    return torch.tensor_split(idx, world_size)[rank]


def _num_batches(data, batch_size: int) -> int | None:
    if _is_indexable(data):
        return math.ceil(len(data.labels) / batch_size)
    if _is_map_dataset(data):
        return math.ceil(len(data) / batch_size)
    try:
        return len(data)
    except TypeError:
        return None


# ----------------------------------------------------------------------------------------------------------------
# Optimisation helpers
# ----------------------------------------------------------------------------------------------------------------


def make_optimizer(params, name: str, lr: float, weight_decay: float, momentum: float = 0.9) -> torch.optim.Optimizer:
    """``"adam"`` (the paper), ``"adamw"`` or ``"sgd"`` (momentum 0.9, as wsolevaluation)."""
    params = [p for p in params if p.requires_grad]
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {name!r}")


def lr_factor(schedule: str, step: int, total_steps: int | None, warmup_steps: int = 0) -> float:
    """Multiplier of the base learning rate at optimiser step ``step`` (0-based). A pure function of the step, so a
    resumed run follows the same schedule. ``"constant"``, or ``"cosine"`` (to 0 at ``total_steps``) after a linear
    warm-up of ``warmup_steps``."""
    if schedule not in LR_SCHEDULES:
        raise ValueError(f"lr_schedule must be one of {LR_SCHEDULES}, got {schedule!r}")
    if warmup_steps and step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    if not total_steps:
        raise ValueError("lr_schedule='cosine' needs a known number of steps (data with a length)")
    t = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return 0.5 * (1.0 + math.cos(math.pi * t))


def _set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for g in optimizer.param_groups:
        g["lr"] = lr


def _progress(iterable=None, *, total=None, desc="", enabled=True, leave=False):
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, desc=desc, disable=not enabled, leave=leave, dynamic_ncols=True)


# ----------------------------------------------------------------------------------------------------------------
# Softmax classifier training (the embedded backbones)
# ----------------------------------------------------------------------------------------------------------------


@torch.no_grad()
def evaluate_accuracy(split: SplitClassifier, data, batch_size: int = 256, device="cpu") -> float:
    """Top-1 accuracy (percent) of ``split`` on a SyntheticSet-like ``data`` or an iterable of batches."""
    model = split.as_module().to(device).eval()
    correct = total = 0
    batches = ((data.images[i:i + batch_size], data.labels[i:i + batch_size])
               for i in range(0, len(data.labels), batch_size)) if _is_indexable(data) else \
        (_batch_tensors(b, "evaluate_accuracy") for b in data)
    for images, labels in batches:
        pred = model(split.normalize(images.to(device))).argmax(1).cpu()
        correct += int((pred == labels).sum())
        total += len(labels)
    return 100.0 * correct / max(1, total)


def train_classifier(split: SplitClassifier, train_set, epochs: int, lr: float, batch_size: int = 64,
                     weight_decay: float = 5e-4, seed: int = 0, optimizer: str = "adamw",
                     lr_schedule: str = "cosine", warmup_epochs: float = 0.5,
                     augment: Augmentation | bool | None = None, label_smoothing: float = 0.0,
                     device: str | torch.device = "cpu", progress: bool = True,
                     val_set=None, channels_last: bool = True) -> list[dict]:
    """Train the whole ``split`` (backbone + head) with softmax cross-entropy, in place.

    ``train_set``: SyntheticSet-like (``.images (N, 3, S, S)`` in [0, 1], ``.labels (N,)``); images are normalised
    with ``split.normalize``. ``augment``: default :class:`~dualcam_lib.augment.FlipTranslate` (random flip + up to
    4 px shift); ``False`` for none. Shuffling and augmentation depend only on ``(seed, epoch)``; with the same
    initial weights and ``torch.get_num_threads()`` the result is bitwise reproducible on the CPU.
    ``channels_last``: train CNNs in the channels-last memory format (about 1.3x faster on CPUs with oneDNN); the
    weights are returned in the default format. Returns per-epoch ``{"epoch", "loss", "train_acc", "seconds"
    [, "val_acc"]}``; the model ends in eval mode.
    """
    if not _is_indexable(train_set):
        raise TypeError("train_classifier: train_set must have .images (N, 3, S, S) and .labels (N,) tensors")
    _check_indexable(train_set, "train_classifier")
    aug = FlipTranslate(4) if augment is None or augment is True else resolve_augment(augment)
    fmt = torch.channels_last if channels_last and split.kind == "cnn" else torch.contiguous_format
    model = split.as_module().to(device, memory_format=fmt)
    opt = make_optimizer(model.parameters(), optimizer, lr, weight_decay)
    n = len(train_set.labels)
    steps_per_epoch = math.ceil(n / batch_size)
    total = steps_per_epoch * epochs
    warmup = int(round(warmup_epochs * steps_per_epoch))
    history, step = [], 0
    bar = _progress(total=epochs, desc=f"train {split.name}", enabled=progress)
    for epoch in range(epochs):
        t0 = time.perf_counter()
        gen = _epoch_generator(seed, epoch)
        batches = _global_batches(n, batch_size, gen)
        params = aug.sample(n, gen, *train_set.images.shape[-2:])
        model.train()
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device, dtype=torch.long)
        for idx in batches:
            images = aug.apply(train_set.images[idx].to(device), index_params(params, idx))
            labels = train_set.labels[idx].to(device)
            _set_lr(opt, lr * lr_factor(lr_schedule, step, total, warmup))
            logits = model(split.normalize(images).contiguous(memory_format=fmt))
            loss = F.cross_entropy(logits, labels, label_smoothing=label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            loss_sum += loss.detach() * len(idx)
            correct += (logits.detach().argmax(1) == labels).sum()
        row = {"epoch": epoch + 1, "loss": float(loss_sum) / n, "train_acc": 100.0 * int(correct) / n,
               "seconds": time.perf_counter() - t0}
        if val_set is not None:
            model.to(memory_format=torch.contiguous_format)
            row["val_acc"] = evaluate_accuracy(split, val_set, device=device)
            model.to(memory_format=fmt)
        history.append(row)
        bar.set_postfix(loss=f"{row['loss']:.3f}", acc=f"{row['train_acc']:.1f}")
        bar.update(1)
    bar.close()
    model.to(memory_format=torch.contiguous_format).eval()
    return history


# ----------------------------------------------------------------------------------------------------------------
# The head's input, reduced for caching
# ----------------------------------------------------------------------------------------------------------------


class HeadOnReduced(nn.Module):
    """The sigmoid head applied to its *reduced* input: ``reduced (B, ...) -> (B, C)``; shares the head's parameters.

    A head ``h(F) = g(r(F))`` whose first step ``r`` has no parameters and no randomness can be trained on cached
    ``r(F)`` instead of ``F`` with identical logits and identical gradients for every parameter (they all live in
    ``g``, and ``r(F)`` is a constant because the backbone is frozen). This holds for:

    - :class:`GapLinearHead` ``fc(dropout(gap(F)))``: ``r`` = global average pool ``(B, N, P, Q) -> (B, N)`` (the
      head's own kernel). Its dropout acts on the pooled vector, so it stays in ``g`` and is applied to the cache
      exactly as end to end (train mode included);
    - :class:`TokenHead` ``fc(dropout(norm(pool(T))))``: ``r`` = the CLS token or the mean of the patch tokens
      ``-> (B, D)``; ``norm`` (with its parameters) stays in ``g``;
    - :class:`PoolMLPHead` with a parameter-free pooling (e.g. VGG-16's AdaptiveAvgPool(7, 7)): ``r`` = pool + flatten.

    Any other head caches the full feature map (``r`` = identity). :meth:`check` verifies ``g(r(F)) == h(F)``.
    """

    def __init__(self, head: nn.Module):
        super().__init__()
        self.head = head
        if isinstance(head, GapLinearHead):
            self.kind = "gap"
        elif isinstance(head, TokenHead):
            self.kind = f"token_{head.pool}"
        elif isinstance(head, PoolMLPHead) and not any(True for _ in head.pool.parameters()):
            self.kind = "pool_flatten"
        else:
            self.kind = "identity"

    @torch.no_grad()
    def reduce(self, features: torch.Tensor) -> torch.Tensor:
        """Backbone output -> what is cached: ``(B, N)``, ``(B, D)``, ``(B, N*p*q)`` or the features unchanged."""
        h = self.head
        if self.kind == "gap":
            return torch.flatten(F.adaptive_avg_pool2d(features, 1), 1)
        if self.kind == "token_cls":
            return features[:, 0]
        if self.kind == "token_mean":
            return features[:, h.num_prefix_tokens:].mean(dim=1)
        if self.kind == "pool_flatten":
            return torch.flatten(h.pool(features), 1)
        return features

    def forward(self, reduced: torch.Tensor) -> torch.Tensor:
        h = self.head
        if self.kind == "gap":
            return h.fc(h.dropout(reduced))
        if self.kind.startswith("token"):
            return h.fc(h.dropout(h.norm(reduced)))
        if self.kind == "pool_flatten":
            return h.mlp(reduced)
        return h(reduced)

    @torch.no_grad()
    def check(self, features: torch.Tensor) -> None:
        """Raise if ``self(reduce(F))`` differs from ``head(F)`` (eval mode): guards against a head whose forward
        changed without this class following."""
        was = self.head.training
        self.head.eval()
        full, red = self.head(features), self(self.reduce(features))
        self.head.train(was)
        if not torch.allclose(full, red, rtol=1e-4, atol=1e-5):
            raise RuntimeError(f"HeadOnReduced({type(self.head).__name__}, kind={self.kind!r}) no longer reproduces "
                               f"the head's logits (max diff {float((full - red).abs().max()):.3g}); update it")


# ----------------------------------------------------------------------------------------------------------------
# Feature cache
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class FeatureCache:
    """Cached sigmoid-head inputs from the frozen backbone.

    ``features``: ``(V*N, ...)`` rows in view-major order (rows ``v*N .. v*N+N-1`` are view ``v`` of images
    ``0..N-1``); ``labels``: ``(V*N,) long``; ``meta``: how it was made (arch, num_classes, reduction, views,
    augmentation, seed, a data fingerprint). Save/load with :meth:`save` (atomic) and :meth:`load`.
    """

    features: torch.Tensor
    labels: torch.Tensor
    meta: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def save(self, path: str | Path) -> Path:
        """Write atomically (temp file + ``os.replace``)."""
        return atomic_torch_save({"features": self.features.cpu(), "labels": self.labels.cpu(),
                                  "meta": dict(self.meta)}, path)

    @classmethod
    def load(cls, path: str | Path, map_location="cpu") -> "FeatureCache":
        p = Path(path)
        if not p.exists():
            raise FileNotFoundError(f"feature cache not found: '{p}'")
        state = torch.load(p, map_location=map_location, weights_only=True)
        if not isinstance(state, dict) or not {"features", "labels", "meta"} <= set(state):
            raise ValueError(f"'{p}' is not a feature cache (expected keys features, labels, meta)")
        return cls(state["features"], state["labels"], state["meta"])

    def check_matches(self, expected_meta: dict, source: str = "feature cache") -> None:
        """Raise ``ValueError`` naming the first field of ``expected_meta`` that this cache's meta disagrees with."""
        for k, v in expected_meta.items():
            if self.meta.get(k) != v:
                raise ValueError(f"{source} was made with {k}={self.meta.get(k)!r}, but {k}={v!r} was asked for")


def data_fingerprint(data) -> str:
    """A short hash of a dataset to key caches: SyntheticSet-like (shape, labels, a sample of pixels), a dataset
    with ``image_ids`` (the ids and its size), else ``"iterable"`` (not checked)."""
    h = hashlib.sha256()
    if not _is_indexable(data):
        ids = getattr(data, "image_ids", None)
        if isinstance(ids, (list, tuple)):
            h.update("\n".join(map(str, ids)).encode())
            h.update(str(getattr(data, "size", "")).encode())
            return h.hexdigest()[:16]
        return "iterable"
    h.update(str(tuple(data.images.shape)).encode())
    h.update(data.labels.cpu().numpy().tobytes())
    flat = data.images.reshape(data.images.shape[0], -1)
    step = max(1, flat.shape[1] // 64)
    h.update(flat[:, ::step].contiguous().cpu().float().numpy().tobytes())
    return h.hexdigest()[:16]


# Frozen-backbone inference batch when none is given. On a CPU a large batch's activations spill out of the cache:
# measured at 1 thread, ResNet-18 at 224 px runs 75 ms/img at batch 8 and 109 at 128, the small CNN at 64 px
# 4.4 ms/img at 32 and 6.4 at 128. An accelerator wants large batches. The features are the same bits either way
# (tests/test_train_fit.py checks this), so the choice only changes the speed.
EXTRACT_BATCH_SIZE = {"cpu": 32, "accelerator": 256}


def default_extract_batch_size(device: str | torch.device) -> int:
    """The inference batch :func:`extract_features` uses for ``batch_size=None`` on ``device``."""
    return EXTRACT_BATCH_SIZE["cpu" if torch.device(device).type == "cpu" else "accelerator"]


def _view_augment(view: int, include_clean: bool, augment: Augmentation) -> Augmentation:
    return NoAugment() if (include_clean and view == 0) else augment


@torch.no_grad()
def extract_features(dual: DualBranchModel, data, views: int = 1, augment: Augmentation | bool = True,
                     include_clean: bool = True, batch_size: int | None = None, seed: int = 0,
                     device: str | torch.device = "cpu", feature_dtype: torch.dtype | None = None,
                     progress: bool = True, cache_path: str | Path | None = None, num_workers: int = 0,
                     rank: int = 0, world_size: int = 1) -> FeatureCache:
    """Run the frozen backbone once per view and cache the sigmoid head's (reduced) input.

    ``data``: SyntheticSet-like, a map-style dataset of ``collate_wsol`` items (e.g. ``WSOLImageDataset``; loaded
    with ``num_workers``) or an iterable of WSOLBatch (re-iterable for ``views > 1``). ``views``: how many
    views per image; view 0 is the clean test-time image when ``include_clean`` and the others are ``augment``
    (default the paper's :class:`~dualcam_lib.augment.PaperAugment`) with draws depending only on ``(seed, view)``.
    Returns a :class:`FeatureCache` with ``features (views*N, ...)`` (see :class:`HeadOnReduced` for the shape) on
    the CPU in ``feature_dtype`` (default: the backbone's dtype). With ``cache_path``: load it if it exists and was
    made the same way, else extract and save it atomically.
    ``rank``/``world_size``: extract only this rank's shard (images ``rank::world_size``; used by
    :mod:`dualcam_lib.distributed`, which gathers the shards). ``batch_size``: the inference batch (``None``:
    :func:`default_extract_batch_size` for ``device``, small on a CPU, large on an accelerator).
    """
    if views < 1:
        raise ValueError(f"views must be >= 1, got {views}")
    if batch_size is None:
        batch_size = default_extract_batch_size(device)
    if batch_size < 1:
        raise ValueError(f"extract_features: batch_size must be >= 1 or None, got {batch_size}")
    aug = resolve_augment(augment)
    reducer = HeadOnReduced(dual.sigmoid_head)
    meta = {"arch": dual.split.name, "num_classes": dual.num_classes, "reduction": reducer.kind, "views": int(views),
            "include_clean": bool(include_clean), "augment": repr(aug), "seed": int(seed),
            "data": data_fingerprint(data)}
    if cache_path is not None and Path(cache_path).exists():
        cache = FeatureCache.load(cache_path)
        cache.check_matches(meta, source=f"feature cache '{cache_path}'")
        return cache
    dual = dual.to(device).eval()
    indexable = _is_indexable(data)
    if indexable:
        _check_indexable(data, "extract_features")
        n_all = len(data.labels)
        shard = torch.arange(rank, n_all, world_size)
        n_batches = math.ceil(len(shard) / batch_size) * views
        total_rows = len(shard) * views
    else:
        if world_size != 1:
            raise ValueError("extract_features: sharding needs SyntheticSet-like data; shard an iterable yourself "
                             "(DistributedSampler) and call with world_size=1")
        n_batches = (_num_batches(data, batch_size) or 0) * views or None
        total_rows = len(data) * views if _is_map_dataset(data) else None
    # Rows go straight into one preallocated tensor when the count is known (no second copy at ImageNet scale).
    out, out_labels, rows, pieces = None, None, 0, []
    bar = _progress(total=n_batches, desc=f"features {dual.split.name}", enabled=progress)
    for view in range(views):
        v_aug = _view_augment(view, include_clean, aug)
        gen = _epoch_generator(seed, view, salt=1)
        if indexable:
            params = v_aug.sample(n_all, gen, *data.images.shape[-2:])
            chunks = ((data.images[i], data.labels[i], index_params(params, i))
                      for i in torch.split(shard, batch_size))
        else:
            source = _epoch_loader(data, batch_size, False, None, num_workers) if _is_map_dataset(data) else data
            chunks = ((im, lb, v_aug.sample(im.shape[0], gen, *im.shape[-2:]))
                      for im, lb in (_batch_tensors(b, "extract_features") for b in source))
        got = 0
        for images, lab, prm in chunks:
            x = dual.split.normalize(v_aug.apply(images.to(device), prm))
            full = dual.backbone(x)
            if rows == 0 and not pieces:
                reducer.check(full[:4])
            f = reducer.reduce(full).to("cpu", dtype=feature_dtype or full.dtype)
            b = f.shape[0]
            if total_rows is not None and out is None:
                out = torch.empty((total_rows, *f.shape[1:]), dtype=f.dtype)
                out_labels = torch.empty(total_rows, dtype=torch.long)
            if out is not None and rows + b <= total_rows:
                out[rows:rows + b] = f
                out_labels[rows:rows + b] = lab
            else:
                pieces.append((f, lab.cpu().long()))
            rows += b
            got += 1
            bar.update(1)
        if got == 0 and not indexable:
            raise ValueError(f"extract_features: data yielded no batches for view {view}; pass a re-iterable "
                             "(a list or a DataLoader), not a one-shot generator")
    bar.close()
    if out is not None:
        if pieces:
            raise RuntimeError(f"extract_features: the data yielded more than the {total_rows} rows its length says")
        feats, labels = out[:rows], out_labels[:rows]  # fewer rows when a dataset skipped unreadable images
    else:
        feats, labels = torch.cat([p[0] for p in pieces]), torch.cat([p[1] for p in pieces])
    cache = FeatureCache(feats, labels, meta)
    if cache_path is not None:
        cache.save(cache_path)
    return cache


# ----------------------------------------------------------------------------------------------------------------
# The sigmoid-head training loop (shared by the faithful and the fast path, and by DDP)
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class FitResult:
    """What a sigmoid-head fit did: per-epoch ``history`` ({"epoch", "loss", "seconds"}), ``epochs`` completed,
    optimiser ``steps``, wall ``seconds`` of this call (``extract_seconds`` of it spent on the feature cache) and
    ``resumed_from`` (the epoch a checkpoint supplied, or None)."""

    history: list
    epochs: int
    steps: int
    seconds: float
    extract_seconds: float = 0.0
    resumed_from: int | None = None

    @property
    def final_loss(self) -> float:
        return self.history[-1]["loss"] if self.history else float("nan")


# The config fields a checkpoint must agree on to resume (everything but the number of epochs).
_RESUME_KEYS = ("path", "lr", "optimizer", "weight_decay", "batch_size", "seed", "pos_weight", "weighting",
                "lr_schedule", "augment", "views", "include_clean")


def _check_resume_config(found: dict, expected: dict, path) -> None:
    # A cosine schedule depends on the total number of steps: only a constant one may be extended.
    keys = _RESUME_KEYS + (("epochs",) if expected.get("lr_schedule") != "constant" else ())
    for k in keys:
        if k in expected and found.get(k) != expected[k]:
            raise CheckpointMismatchError(
                f"checkpoint '{path}' was written with {k}={found.get(k)!r}, but this run has {k}={expected[k]!r}; "
                "use a new checkpoint_path or the same setting")


def _all_reduce_sum(t: torch.Tensor, world_size: int) -> torch.Tensor:
    if world_size > 1:
        import torch.distributed as dist

        dist.all_reduce(t)
    return t


def _fit_loop(*, dual: DualBranchModel, module: nn.Module, set_train: Callable[[bool], None],
              epoch_batches: Callable[[int], Iterator[tuple[torch.Tensor, torch.Tensor, int]]],
              steps_per_epoch: int | None, epochs: int, lr: float, optimizer: str, weight_decay: float,
              loss_fn: ClassBalancedBCE, lr_schedule: str, config: dict, checkpoint_path, resume: bool,
              callback, progress: bool, desc: str, device, rank: int = 0, world_size: int = 1) -> FitResult:
    """Train ``dual.sigmoid_head`` (through ``module``) for ``epochs`` epochs; see the module docstring."""
    t_start = time.perf_counter()
    head = dual.sigmoid_head
    opt = make_optimizer(head.parameters(), optimizer, lr, weight_decay)
    fingerprint = arch_fingerprint(dual.split.name, dual.num_classes, head)
    start_epoch, step, history, resumed_from = 0, 0, [], None
    if checkpoint_path is not None and resume and Path(checkpoint_path).exists():
        state = load_checkpoint(checkpoint_path, fingerprint, map_location="cpu")
        _check_resume_config(state["config"], config, checkpoint_path)
        head.load_state_dict(state["head"])
        opt.load_state_dict(state["optimizer"])
        start_epoch, step, history = state["epoch"], state["step"], list(state["history"])
        restore_rng_states(state["rng"])
        resumed_from = start_epoch
    total_steps = steps_per_epoch * epochs if steps_per_epoch else None
    bar = _progress(total=epochs, desc=desc, enabled=progress and rank == 0)
    bar.update(min(start_epoch, epochs))
    for epoch in range(start_epoch, epochs):
        t0 = time.perf_counter()
        set_train(True)
        loss_sum = torch.zeros((), device=device)
        count = torch.zeros((), device=device)
        for inputs, labels, global_count in epoch_batches(epoch):
            _set_lr(opt, lr * lr_factor(lr_schedule, step, total_steps))
            per_image = loss_fn(module(inputs), labels, reduction="none")
            # Sum over this rank's images / the global batch size; DDP averages gradients over ranks, so the
            # parameters see d(mean over the global batch), exactly as a single process would.
            loss = per_image.sum() * (world_size / global_count)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            loss_sum += per_image.detach().sum()
            count += per_image.shape[0]
        _all_reduce_sum(loss_sum, world_size)
        _all_reduce_sum(count, world_size)
        if int(count) == 0:
            raise ValueError(f"{desc}: epoch {epoch + 1} saw no data; pass a re-iterable (a list or a DataLoader), "
                             "not a one-shot generator")
        history.append({"epoch": epoch + 1, "loss": float(loss_sum / count), "seconds": time.perf_counter() - t0})
        set_train(False)
        if checkpoint_path is not None and rank == 0:
            save_checkpoint(checkpoint_path, head=head, optimizer=opt, epoch=epoch + 1, step=step,
                            config=config, fingerprint=fingerprint, history=history)
        if world_size > 1:
            import torch.distributed as dist

            dist.barrier()
        bar.set_postfix(loss=f"{history[-1]['loss']:.4f}")
        bar.update(1)
        if callback is not None:
            callback(epoch + 1, history[-1])
    bar.close()
    set_train(False)
    return FitResult(history, max(start_epoch, epochs), step, time.perf_counter() - t_start,
                     resumed_from=resumed_from)


def _config(path: str, **kw) -> dict:
    return {"path": path, **{k: (repr(v) if isinstance(v, Augmentation) else v) for k, v in kw.items()}}


def fit_sigmoid_head(dual: DualBranchModel, data, epochs: int, lr: float, batch_size: int = PAPER_BATCH_SIZE,
                     optimizer: str = "adam", weight_decay: float = PAPER_WEIGHT_DECAY,
                     augment: Augmentation | bool = True, pos_weight: float | None = None,
                     weighting: str = "pos_weight", lr_schedule: str = "constant", seed: int = 0,
                     checkpoint_path: str | Path | None = None, resume: bool = True,
                     device: str | torch.device = "cpu", progress: bool = True,
                     callback: Callable[[int, dict], None] | None = None, num_workers: int = 0,
                     rank: int = 0, world_size: int = 1, wrap: Callable[[nn.Module], nn.Module] | None = None
                     ) -> FitResult:
    """The paper's recipe: train ``dual.sigmoid_head`` end to end through the frozen backbone, in place.

    Each step: augment a batch (``augment=True``: the paper's Resize -> RandomCrop -> flip, see
    :class:`~dualcam_lib.augment.PaperAugment`), normalise with ``dual.split.normalize``, run the frozen backbone
    (eval mode, no autograd: nothing upstream of the head is trainable), then the sigmoid head, and one
    optimiser step on :class:`ClassBalancedBCE` (``pos_weight``, ``weighting``). Defaults follow Appendix C:
    Adam, batch 32, weight decay 1e-4, constant lr (see :data:`PAPER_LR` / :func:`paper_lr`, :data:`PAPER_EPOCHS`).

    ``data``: SyntheticSet-like (``.images (N, 3, S, S)`` in [0, 1], ``.labels``), shuffled per epoch by
    ``(seed, epoch)``; a map-style dataset of ``collate_wsol`` items (e.g. ``WSOLImageDataset``), loaded with
    ``num_workers`` and shuffled by ``(seed, epoch)``; or a re-iterable of WSOLBatch (e.g. a DataLoader with
    ``collate_wsol``), used in its own order. ``checkpoint_path``: written atomically after every epoch; if it
    exists and ``resume``, training continues from it (same config required, ``epochs`` may grow).
    ``callback(epoch, row)`` runs after each epoch's checkpoint (raise from it to stop). ``rank``/``world_size``/
    ``wrap`` are set by :mod:`dualcam_lib.distributed` (each rank takes its slice of the same global batch).
    Returns a :class:`FitResult`; the backbone and the softmax head are never modified.
    """
    aug = resolve_augment(augment)
    indexable = _is_indexable(data)
    if indexable:
        _check_indexable(data, "fit_sigmoid_head")
        _check_label_range(data.labels, dual.num_classes, "fit_sigmoid_head")
    loss_fn = ClassBalancedBCE(dual.num_classes, pos_weight, weighting, check_labels=not indexable)
    dual = dual.to(device)
    module = wrap(dual.sigmoid_head) if wrap is not None else dual.sigmoid_head

    def forward_images(images: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return dual.backbone(dual.split.normalize(images.to(device)))

    map_style = _is_map_dataset(data)

    def epoch_batches(epoch: int):
        gen = _epoch_generator(seed, epoch)
        if indexable or map_style:
            n = len(data.labels) if indexable else len(data)
            batches = _global_batches(n, batch_size, gen)
            # Augmentation drawn for the whole epoch (after the permutation): batching- and sharding-invariant.
            params = aug.sample(n, gen, *data.images.shape[-2:]) if indexable else None
            locals_ = [_local_part(idx, rank, world_size) for idx in batches]
            if indexable:
                loaded = ((data.images[i], data.labels[i]) for i in locals_)
            else:  # a DataLoader over exactly this rank's slices (num_workers decode in parallel)
                loader = _epoch_loader(data, None, False, None, num_workers,
                                       batch_sampler=[i.tolist() for i in locals_ if len(i)])
                loaded = _interleave_empty(locals_, (_batch_tensors(b, "fit_sigmoid_head") for b in loader))
            for idx, local, (images, labels) in zip(batches, locals_, loaded):
                if params is None:
                    params = aug.sample(n, gen, *images.shape[-2:])
                if images.shape[0] == len(local):
                    images = aug.apply(images.to(device), index_params(params, local))
                else:  # the dataset skipped unreadable images: draw for this batch instead
                    images = aug(images.to(device), gen)
                yield forward_images(images), labels.to(device), len(idx)
        else:
            for b in data:  # already this rank's shard under DDP (DistributedSampler): a local mean per rank
                images, labels = _batch_tensors(b, "fit_sigmoid_head")
                images = aug(images.to(device), gen)
                yield forward_images(images), labels.to(device), len(labels) * world_size

    config = _config("faithful", lr=lr, optimizer=optimizer, weight_decay=weight_decay, batch_size=batch_size,
                     seed=seed, pos_weight=loss_fn.pos_weight, weighting=weighting, lr_schedule=lr_schedule,
                     augment=aug, world_size=world_size, epochs=epochs)
    def set_train(mode: bool) -> None:
        dual.train(mode)
        module.train(mode)

    return _fit_loop(dual=dual, module=module, set_train=set_train, epoch_batches=epoch_batches,
                     steps_per_epoch=_num_batches(data, batch_size), epochs=epochs, lr=lr, optimizer=optimizer,
                     weight_decay=weight_decay, loss_fn=loss_fn, lr_schedule=lr_schedule, config=config,
                     checkpoint_path=checkpoint_path, resume=resume, callback=callback, progress=progress,
                     desc=f"sigmoid head (faithful) {dual.split.name}", device=device, rank=rank,
                     world_size=world_size)


def fit_sigmoid_head_fast(dual: DualBranchModel, data, epochs: int, lr: float, views: int = 1,
                          batch_size: int = PAPER_BATCH_SIZE, optimizer: str = "adam",
                          weight_decay: float = PAPER_WEIGHT_DECAY, augment: Augmentation | bool = True,
                          include_clean: bool = True, pos_weight: float | None = None,
                          weighting: str = "pos_weight", lr_schedule: str = "constant", seed: int = 0,
                          checkpoint_path: str | Path | None = None, resume: bool = True,
                          cache_path: str | Path | None = None, extract_batch_size: int | None = None,
                          device: str | torch.device = "cpu", progress: bool = True,
                          callback: Callable[[int, dict], None] | None = None, num_workers: int = 0,
                          rank: int = 0, world_size: int = 1, wrap: Callable[[nn.Module], nn.Module] | None = None
                          ) -> FitResult:
    """Train ``dual.sigmoid_head`` on cached frozen-backbone features, in place.

    ``data``: a :class:`FeatureCache` (from :func:`extract_features`), or data as for :func:`fit_sigmoid_head`, in
    which case the features are extracted first (``views``, ``augment``, ``include_clean``; ``cache_path`` saves
    them / reuses a matching saved cache). The head then trains for ``epochs`` passes over the ``views * N``
    cached rows, shuffled by ``(seed, epoch)``, in batches of ``batch_size``, with the same loss, optimiser,
    checkpointing and resume semantics as :func:`fit_sigmoid_head`. ``extract_batch_size``: the extraction's
    inference batch (``None``: :func:`default_extract_batch_size`). ``FitResult.extract_seconds`` reports the
    extraction time (included in ``seconds``).
    """
    t0 = time.perf_counter()
    if isinstance(data, FeatureCache):
        cache = data
    else:
        cache = extract_features(dual, data, views=views, augment=augment, include_clean=include_clean,
                                 batch_size=extract_batch_size, seed=seed, device=device, progress=progress,
                                 cache_path=cache_path, num_workers=num_workers)
    extract_seconds = time.perf_counter() - t0
    expected = {"arch": dual.split.name, "num_classes": dual.num_classes}
    cache.check_matches(expected)
    reduced_head = HeadOnReduced(dual.sigmoid_head)
    if cache.meta.get("reduction", reduced_head.kind) != reduced_head.kind:
        raise ValueError(f"feature cache holds {cache.meta.get('reduction')!r} inputs but the sigmoid head needs "
                         f"{reduced_head.kind!r}")
    dual = dual.to(device)
    module = wrap(reduced_head) if wrap is not None else reduced_head
    feats = cache.features.to(device)
    labels = cache.labels.to(device)
    compute_dtype = next(dual.sigmoid_head.parameters()).dtype
    _check_label_range(cache.labels, dual.num_classes, "fit_sigmoid_head_fast")
    loss_fn = ClassBalancedBCE(dual.num_classes, pos_weight, weighting, check_labels=False)

    def epoch_batches(epoch: int):
        # The same generator as fit_sigmoid_head: with views=1, no augmentation and a clean view, both paths visit
        # the same images in the same order, so they train the same head (up to float rounding).
        gen = _epoch_generator(seed, epoch)
        for idx in _global_batches(len(labels), batch_size, gen):
            local = _local_part(idx, rank, world_size).to(device)
            yield feats[local].to(compute_dtype), labels[local], len(idx)

    config = _config("fast", lr=lr, optimizer=optimizer, weight_decay=weight_decay, batch_size=batch_size,
                     seed=seed, pos_weight=loss_fn.pos_weight, weighting=weighting, lr_schedule=lr_schedule,
                     augment=cache.meta.get("augment"), views=cache.meta.get("views"),
                     include_clean=cache.meta.get("include_clean"), world_size=world_size, epochs=epochs)
    def set_train(mode: bool) -> None:
        dual.train(mode)
        module.train(mode)

    result = _fit_loop(dual=dual, module=module, set_train=set_train, epoch_batches=epoch_batches,
                       steps_per_epoch=math.ceil(len(labels) / batch_size), epochs=epochs, lr=lr,
                       optimizer=optimizer, weight_decay=weight_decay, loss_fn=loss_fn, lr_schedule=lr_schedule,
                       config=config, checkpoint_path=checkpoint_path, resume=resume, callback=callback,
                       progress=progress, desc=f"sigmoid head (fast) {dual.split.name}", device=device, rank=rank,
                       world_size=world_size)
    result.extract_seconds = extract_seconds
    result.seconds = time.perf_counter() - t0
    return result
