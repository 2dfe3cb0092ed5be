"""SoftCAM (Djoumessi & Berens 2025): a CNN whose class evidence maps *are* its prediction.

The head is a 1x1-convolution class-evidence layer on the backbone's feature maps, followed by spatial average
pooling::

    A = conv1x1(F)                 (B, N, P, Q) -> (B, C, P, Q)   evidence maps, one per class
    logits = mean_{p,q} A          (B, C, P, Q) -> (B, C)

trained end to end with cross-entropy plus an ElasticNet penalty on the evidence maps
(``L = CE + l1 * sum|A| + l2 * sum A^2``). The maps need no post-hoc method: the logit of class ``k`` is exactly the
average of ``A[:, k]``.

How it relates to CAM: a 1x1 convolution is the head's Linear layer applied at every position, and averaging
commutes with it, so ``mean(conv1x1(F)) = fc(GAP(F))``. A *dense* SoftCAM (no penalty) is therefore the same
function class as a GAP + Linear CNN, and its evidence map of class ``k`` is that CNN's CAM plus the bias ``b_k``
(a constant, removed by min-max normalisation). What SoftCAM adds on such a backbone is the penalty, which acts on
the maps themselves. :class:`SoftCamHead` stores the 1x1 kernel as a Linear ``fc`` (``fc.weight[:, :, None, None]``
is the convolution's kernel), so the CAM engine's ``"cam"`` method reads it like any GAP + Linear head and returns
``A[:, k] - b_k``.

Contents:
- :class:`SoftCamHead`, :func:`to_softcam`, :func:`build_softcam`: the head and SplitClassifier packaging.
- :func:`elasticnet_penalty` and :data:`VARIANTS` (dense / sparse / ridge).
- :func:`train_softcam`: training with cross-entropy + penalty, end to end (from scratch with the zoo's recipe, or
  fine-tuned from a trained CNN) or the evidence layer alone on a frozen backbone (:func:`frozen_features`);
  deterministic for a seed and thread count; optional cache like :mod:`dualcam_lib.zoo`.
- :func:`evidence_maps`, :func:`class_evidence`: the explanation itself.
- :func:`activation_precision`, :func:`activation_sensitivity`, :class:`ActivationOverlap`,
  :func:`evaluate_activation_overlap`: the localisation metrics SoftCAM reports (definitions below).

Activation precision and sensitivity (our exact definitions). The SoftCAM paper reports both against expert
annotations; the summary we work from does not give its binarisation, so we fix one and apply it to every method
alike. Each map is first post-processed like every other map in this library (upsampled to the image, min-max to
[0, 1]; :func:`dualcam_lib.cams.paper_postprocess`). The *activated region* of image ``b`` is
``R_b = {x : m_b(x) >= threshold}`` (default ``threshold = 0.5``: at least half-way between the map's minimum and its
maximum). With the ground-truth mask ``G_b``:

- activation precision ``= |R_b ∩ G_b| / |R_b|``: the fraction of the activated pixels that lie on the object
  (0 when ``R_b`` is empty, i.e. a constant map);
- activation sensitivity ``= |R_b ∩ G_b| / |G_b|``: the fraction of the object the activated region covers.

Both are averaged over images and reported in percent. They are the pixel precision and recall of the map at one
fixed operating point; PxAP is the area under the whole precision-recall curve of the same pixels.
"""
from __future__ import annotations

import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .models import GapLinearHead, SplitClassifier, build_classifier

# lambda values (l1, l2) of the three variants on the embedded data (small_cnn, 10 classes, 16x16 maps), with the
# penalty normalised as in elasticnet_penalty (sum over classes and positions, mean over images). Picked from a small
# sweep (l1 in 1e-5..3e-4, l2 in 1e-6..3e-5; evidence layer on the frozen zoo backbone, 2000 training images, 10
# epochs) on training quantities only: the values that shrink the mean |A| on the training batches about 2.5-fold
# while the training accuracy stays within half a point of the dense layer's. On another backbone or map size
# the scale changes (the sums grow with C*P*Q): sweep again.
VARIANTS: dict[str, tuple[float, float]] = {
    "dense": (0.0, 0.0),
    "sparse": (1e-4, 0.0),
    "ridge": (0.0, 1e-5),
}


# ----------------------------------------------------------------------------------------------------------------
# The head
# ----------------------------------------------------------------------------------------------------------------


class SoftCamHead(nn.Module):
    """Class-evidence head: ``(B, N, P, Q) features -> (B, C)`` logits = spatial mean of the evidence maps.

    ``evidence_maps(features)`` returns ``A = conv1x1(features)``, ``(B, C, P, Q)``, bias included; ``forward``
    returns ``A.mean(dim=(2, 3))`` computed from exactly those maps. The 1x1 kernel is stored as the Linear ``fc``
    (``fc.weight`` ``(C, N)``, ``fc.bias`` ``(C,)``) so code that reads a GAP + Linear head's ``fc`` (CAM) works
    unchanged; :meth:`as_conv` returns an equivalent ``nn.Conv2d``.
    """

    def __init__(self, in_channels: int, num_classes: int):
        super().__init__()
        if in_channels < 1 or num_classes < 1:
            raise ValueError(f"SoftCamHead needs in_channels >= 1 and num_classes >= 1, got {in_channels}, "
                             f"{num_classes}")
        self.fc = nn.Linear(in_channels, num_classes)

    @classmethod
    def from_linear(cls, fc: nn.Linear) -> "SoftCamHead":
        """A head whose 1x1 kernel copies ``fc`` (a GAP + ``fc`` head's function, now with explicit maps)."""
        head = cls(fc.in_features, fc.out_features)
        with torch.no_grad():
            head.fc.weight.copy_(fc.weight)
            if fc.bias is not None:
                head.fc.bias.copy_(fc.bias)
            else:
                head.fc.bias.zero_()
        return head

    @property
    def in_channels(self) -> int:
        return self.fc.in_features

    @property
    def num_classes(self) -> int:
        return self.fc.out_features

    def evidence_maps(self, features: torch.Tensor) -> torch.Tensor:
        """``(B, N, P, Q) -> (B, C, P, Q)``: the class evidence at every position (bias included)."""
        if features.dim() != 4 or features.shape[1] != self.in_channels:
            raise ValueError(f"SoftCamHead expects features (B, {self.in_channels}, P, Q), got "
                             f"{tuple(features.shape)}")
        return F.conv2d(features, self.fc.weight[:, :, None, None], self.fc.bias)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.evidence_maps(features).mean(dim=(2, 3))

    def as_conv(self) -> nn.Conv2d:
        """An ``nn.Conv2d(N, C, 1)`` with the same weights (a copy), e.g. to export the SoftCAM layer as in the paper."""
        conv = nn.Conv2d(self.in_channels, self.num_classes, kernel_size=1)
        with torch.no_grad():
            conv.weight.copy_(self.fc.weight[:, :, None, None])
            conv.bias.copy_(self.fc.bias)
        return conv.to(self.fc.weight.device)


def _feature_channels(split: SplitClassifier) -> int:
    head = split.head
    if isinstance(head, GapLinearHead):
        return head.fc.in_features
    # Any other CNN head: ask the backbone (one tiny forward pass, no gradients, eval mode restored).
    was = split.backbone.training
    split.backbone.eval()
    try:
        with torch.no_grad():
            param = next(split.backbone.parameters())
            x = torch.zeros(1, 3, split.input_size, split.input_size, device=param.device, dtype=param.dtype)
            feats = split.backbone(x)
    finally:
        split.backbone.train(was)
    if feats.dim() != 4:
        raise ValueError(f"to_softcam: the backbone of {split.name!r} returns {tuple(feats.shape)}, not feature maps "
                         "(B, N, P, Q)")
    return int(feats.shape[1])


def to_softcam(split: SplitClassifier, init: str = "copy") -> SplitClassifier:
    """The SoftCAM version of a CNN ``split``: same backbone (shared, not copied), head replaced by a
    :class:`SoftCamHead`.

    ``init``: ``"copy"`` starts the evidence layer from the head's ``fc`` when the head is a
    :class:`~dualcam_lib.models.GapLinearHead` (same function, dropout dropped), else like ``"fresh"``;
    ``"fresh"``: PyTorch's default Linear initialisation. Returns a new :class:`SplitClassifier` named
    ``"softcam_<name>"`` with ``meta["softcam"] = True``.
    """
    if split.kind != "cnn":
        raise ValueError(f"to_softcam: SoftCAM needs a CNN with feature maps; {split.name!r} is kind {split.kind!r}")
    if init not in ("copy", "fresh"):
        raise ValueError(f"to_softcam: init must be 'copy' or 'fresh', got {init!r}")
    if init == "copy" and isinstance(split.head, GapLinearHead):
        head = SoftCamHead.from_linear(split.head.fc)
    else:
        head = SoftCamHead(_feature_channels(split), split.num_classes)
    param = next(split.backbone.parameters(), None)
    if param is not None:
        head = head.to(param.device)
    return SplitClassifier(f"softcam_{split.name}", split.backbone, head, split.num_classes, mean=split.mean,
                           std=split.std, input_size=split.input_size, kind="cnn", feature_layer=split.feature_layer,
                           meta={**split.meta, "softcam": True, "base": split.name})


def build_softcam(arch: str = "small_cnn", num_classes: int = 10, weights=None, **options) -> SplitClassifier:
    """``build_classifier(arch, num_classes, weights, **options)`` turned into SoftCAM by :func:`to_softcam`
    (``init="copy"``: the evidence layer starts from the architecture's own classifier initialisation, so a seed
    gives the same starting weights as the softmax model it is compared with)."""
    return to_softcam(build_classifier(arch, num_classes=num_classes, weights=weights, **options), init="copy")


def _softcam_head(split: SplitClassifier) -> SoftCamHead:
    if not isinstance(split.head, SoftCamHead):
        raise TypeError(f"{split.name!r} has a {type(split.head).__name__} head, not a SoftCamHead; build it with "
                        "build_softcam / to_softcam")
    return split.head


# ----------------------------------------------------------------------------------------------------------------
# The explanation
# ----------------------------------------------------------------------------------------------------------------


def evidence_maps(split: SplitClassifier, x: torch.Tensor) -> torch.Tensor:
    """Evidence maps of a SoftCAM ``split``: ``(B, 3, H, W)`` normalised images -> ``(B, C, P, Q)``.

    Computed in eval mode (batch-norm running statistics, as the CAM engine does; modules in training mode are
    switched back afterwards) and without gradients."""
    head = _softcam_head(split)
    training = [m for m in split.as_module().modules() if m.training]
    for m in training:
        m.training = False
    try:
        with torch.no_grad():
            return head.evidence_maps(split.backbone(x))
    finally:
        for m in training:
            m.training = True


def class_evidence(split: SplitClassifier, x: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The evidence map of class ``targets[b]`` for image ``b``: ``(B, 3, H, W)``, ``(B,)`` long -> ``(B, P, Q)``
    raw signed maps (post-process them with ``postprocess(..., **paper_postprocess("cam"))``)."""
    maps = evidence_maps(split, x)
    targets = torch.as_tensor(targets, device=maps.device).long()
    if targets.shape != (maps.shape[0],):
        raise ValueError(f"class_evidence: targets must be ({maps.shape[0]},), got {tuple(targets.shape)}")
    return maps[torch.arange(maps.shape[0], device=maps.device), targets]


# ----------------------------------------------------------------------------------------------------------------
# The penalty and training
# ----------------------------------------------------------------------------------------------------------------


def elasticnet_penalty(evidence: torch.Tensor, l1: float = 0.0, l2: float = 0.0) -> torch.Tensor:
    """The SoftCAM ElasticNet penalty ``l1 * sum|A| + l2 * sum A^2`` on evidence maps ``(B, C, P, Q)`` -> scalar.

    Normalisation: the sums run over classes and positions of each image and are **averaged over the batch**
    (``/ B``), so the penalty is on the same per-image scale as the batch-mean cross-entropy and does not change
    with the batch size. The paper writes the penalty per image, ``L = CE + l1 sum_ijc |A_ij^c| + l2 sum_ijc
    (A_ij^c)^2``. (The released code, kdjoumessi/SoftCAM ``train.py``, penalises only the first image of each
    batch and uses the un-squared L2 norm ``||A||_2``; its lambda values are therefore not on our scale.)
    """
    if evidence.dim() != 4:
        raise ValueError(f"elasticnet_penalty: evidence must be (B, C, P, Q), got {tuple(evidence.shape)}")
    if l1 < 0 or l2 < 0:
        raise ValueError(f"elasticnet_penalty: l1 and l2 must be >= 0, got {l1}, {l2}")
    b = evidence.shape[0]
    penalty = evidence.new_zeros(())
    if l1:
        penalty = penalty + l1 * evidence.abs().sum() / b
    if l2:
        penalty = penalty + l2 * evidence.pow(2).sum() / b
    return penalty


def variant_lambdas(variant: str) -> tuple[float, float]:
    """``(l1, l2)`` of a named variant in :data:`VARIANTS` (dense, sparse, ridge)."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown SoftCAM variant {variant!r}; expected one of {sorted(VARIANTS)}")
    return VARIANTS[variant]


def softcam_config(backbone_arch: str = "small_cnn", l1: float = 0.0, l2: float = 0.0, seed: int = 0,
                   num_classes: int = 10, arch_kwargs: dict | None = None, **recipe) -> dict:
    """The full training configuration (the zoo's recipe for ``backbone_arch`` with ``recipe`` overrides; ``None``
    values keep the zoo's). Keys the cache of :func:`train_softcam`."""
    from .zoo import ZOO_RECIPES

    if backbone_arch not in ZOO_RECIPES:
        raise ValueError(f"train_softcam: no training recipe for {backbone_arch!r}; expected one of "
                         f"{sorted(ZOO_RECIPES)} (or pass every recipe key)")
    base = dict(ZOO_RECIPES[backbone_arch])
    unknown = sorted(set(recipe) - set(base))
    if unknown:
        raise ValueError(f"train_softcam: unknown option(s) {unknown}; recipe options are {sorted(base)}")
    base.update({k: v for k, v in recipe.items() if v is not None})
    return {"format": 1, "arch": backbone_arch, "l1": float(l1), "l2": float(l2), "seed": int(seed),
            "num_classes": int(num_classes), "arch_kwargs": dict(arch_kwargs or {}), "recipe": base}


def _fit(split: SplitClassifier, params, n: int, labels: torch.Tensor, maps_of, config: dict, device,
         progress: bool, set_train, val_set=None) -> list[dict]:
    """The training loop both modes share: cross-entropy on the spatial mean of the maps + ElasticNet on the maps,
    with the batches (shuffled by ``(seed, epoch)``), optimiser and learning-rate schedule of
    :func:`dualcam_lib.train.train_classifier` (which has no hook for a loss on intermediate maps).
    ``maps_of(idx, epoch_state)`` returns the evidence maps of training rows ``idx``; ``set_train(mode)``."""
    from .train import _epoch_generator, _global_batches, _progress, _set_lr, evaluate_accuracy, lr_factor, make_optimizer

    r = config["recipe"]
    l1, l2 = config["l1"], config["l2"]
    opt = make_optimizer(params, r["optimizer"], r["lr"], r["weight_decay"])
    steps_per_epoch = math.ceil(n / r["batch_size"])
    total = steps_per_epoch * r["epochs"]
    warmup = int(round(r["warmup_epochs"] * steps_per_epoch))
    history, step = [], 0
    bar = _progress(total=r["epochs"], desc=f"train {split.name} l1={l1:g} l2={l2:g}", enabled=progress)
    for epoch in range(r["epochs"]):
        t0 = time.perf_counter()
        gen = _epoch_generator(config["seed"], epoch)
        batches = _global_batches(n, r["batch_size"], gen)
        epoch_state = maps_of.epoch(n, gen) if hasattr(maps_of, "epoch") else None
        set_train(True)
        sums = {k: torch.zeros((), device=device) for k in ("loss", "ce", "penalty", "mean_abs_evidence")}
        correct = torch.zeros((), device=device, dtype=torch.long)
        for idx in batches:
            y = labels[idx].to(device)
            _set_lr(opt, r["lr"] * lr_factor(r["lr_schedule"], step, total, warmup))
            maps = maps_of(idx, epoch_state)
            logits = maps.mean(dim=(2, 3))
            ce = F.cross_entropy(logits, y, label_smoothing=r["label_smoothing"])
            penalty = elasticnet_penalty(maps, l1, l2)
            loss = ce + penalty
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            for key, v in (("loss", loss), ("ce", ce), ("penalty", penalty),
                           ("mean_abs_evidence", maps.detach().abs().mean())):
                sums[key] += v.detach() * len(idx)
            correct += (logits.detach().argmax(1) == y).sum()
        set_train(False)
        row = {"epoch": epoch + 1, **{k: float(v) / n for k, v in sums.items()},
               "train_acc": 100.0 * int(correct) / n, "seconds": time.perf_counter() - t0}
        if val_set is not None:
            row["val_acc"] = evaluate_accuracy(split, val_set, device=device)
        history.append(row)
        bar.set_postfix(loss=f"{row['loss']:.3f}", acc=f"{row['train_acc']:.1f}")
        bar.update(1)
    bar.close()
    return history


class _EndToEndMaps:
    """Evidence maps of augmented training images through the whole (trainable) network."""

    def __init__(self, split, train_set, max_shift, device):
        from .augment import FlipTranslate

        self.split, self.train_set, self.device = split, train_set, device
        self.aug = FlipTranslate(max_shift)

    def epoch(self, n, gen):
        return self.aug.sample(n, gen, *self.train_set.images.shape[-2:])

    def __call__(self, idx, params):
        from .augment import index_params

        images = self.aug.apply(self.train_set.images[idx].to(self.device), index_params(params, idx))
        return self.split.head.evidence_maps(self.split.backbone(self.split.normalize(images)))


@torch.no_grad()
def frozen_features(split: SplitClassifier, images: torch.Tensor, batch_size: int = 256,
                    device: str | torch.device = "cpu") -> torch.Tensor:
    """Backbone features of clean images, backbone in eval mode: ``(N, 3, S, S)`` in [0, 1] -> ``(N, C, P, Q)`` on
    ``device``. Compute them once and pass them to several :func:`train_softcam` calls (``features=``)."""
    was = split.backbone.training
    split.backbone.to(device).eval()
    try:
        return torch.cat([split.backbone(split.normalize(images[i:i + batch_size].to(device)))
                          for i in range(0, images.shape[0], batch_size)])
    finally:
        split.backbone.train(was)


def _check_features(features: torch.Tensor, split: SplitClassifier, train_set, device) -> torch.Tensor:
    n = len(train_set.labels)
    if not torch.is_tensor(features) or features.dim() != 4 or features.shape[0] != n:
        raise ValueError(f"train_softcam: features must be (N={n}, C, P, Q) backbone features of train_set's images, "
                         f"got {tuple(features.shape) if torch.is_tensor(features) else type(features).__name__}")
    # A cheap guard against features of other images or another backbone: recompute the first two.
    probe = frozen_features(split, train_set.images[:2], device=device)
    if probe.shape[1:] != features.shape[1:] or not torch.allclose(probe, features[:2].to(device), rtol=1e-4,
                                                                   atol=1e-5):
        raise ValueError("train_softcam: the given features are not init_from's backbone features of train_set's "
                         "images (the first two differ); compute them with frozen_features(init_from, "
                         "train_set.images)")
    return features.to(device)


def _state_fingerprint(module: nn.Module) -> str:
    import hashlib

    h = hashlib.sha256()
    for k, v in module.state_dict().items():
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def train_softcam(backbone_arch: str, train_set, epochs: int | None = None, lr: float | None = None,
                  l1: float = 0.0, l2: float = 0.0, seed: int = 0, *, init_from: SplitClassifier | None = None,
                  train_backbone: bool = True, head_init: str = "copy", features: torch.Tensor | None = None,
                  batch_size: int | None = None,
                  weight_decay: float | None = None, optimizer: str | None = None, lr_schedule: str | None = None,
                  warmup_epochs: float | None = None, max_shift: int | None = None,
                  label_smoothing: float | None = None, arch_kwargs: dict | None = None,
                  device: str | torch.device = "cpu", progress: bool = False, val_set=None, cache: bool = False,
                  cache_root=None) -> SplitClassifier:
    """Train a SoftCAM classifier with cross-entropy + :func:`elasticnet_penalty` on its evidence maps.

    Two modes:

    - end to end (``train_backbone=True``, the paper's): the whole network learns, on flip + shift augmented images.
      From scratch (``init_from=None``, ``build_softcam(backbone_arch)`` under ``torch.manual_seed(seed)``) or
      fine-tuned from a trained CNN ``init_from`` (its backbone and, with ``head_init="copy"``, its GAP + Linear
      head turned into the evidence layer: the same function to start with).
    - evidence layer only (``train_backbone=False``, needs ``init_from``): the backbone of ``init_from`` stays frozen
      in eval mode, its features of the clean training images are computed once, and only the 1x1 evidence layer
      learns (``head_init="copy"`` starts from ``init_from``'s head, ``"fresh"`` from PyTorch's default init under
      the seed). The budget version, on the same footing as the dual-branch sigmoid head (a new head on a frozen
      backbone); the penalty can then shape the maps only within the span of the frozen features, and the problem
      is convex in the layer's weights. ``features``: the backbone's features of ``train_set.images`` from
      :func:`frozen_features`, to share them between several calls (the first two are re-checked).

    ``train_set``: SyntheticSet-like (``.images (N, 3, S, S)`` in [0, 1], ``.labels (N,)``). Every recipe option
    left ``None`` takes the value of :data:`dualcam_lib.zoo.ZOO_RECIPES` for ``backbone_arch`` (the zoo softmax
    model's recipe: AdamW, cosine schedule with warm-up, batch 64), so a from-scratch dense run differs from the zoo's
    model only in where the spatial average is taken. ``l1``/``l2``: the penalty weights (see :data:`VARIANTS`).

    Deterministic: initialisation and training run inside ``torch.random.fork_rng`` seeded with ``seed`` (the
    caller's RNG state is untouched) and each epoch's shuffling and augmentation depend only on ``(seed, epoch)``,
    so the weights are a function of the configuration and ``torch.get_num_threads()``. ``cache=True`` saves the
    state_dict under ``cache_dir()/softcam/``, keyed by a hash of the configuration, the training data's and
    ``init_from``'s fingerprints, and loads it (``weights_only=True``) on later calls.
    Returns the SoftCAM :class:`SplitClassifier` in eval mode on the CPU; ``meta["softcam"]`` holds the config, the
    per-epoch history (loss, ce, penalty, ``mean_abs_evidence`` = mean |A| per map entry on the training batches,
    train_acc, seconds) and the training seconds.
    """
    import copy

    from .checkpoint import atomic_torch_save
    from .paths import cache_dir
    from .train import _check_indexable, _is_indexable, data_fingerprint
    from .zoo import config_hash

    if not _is_indexable(train_set):
        raise TypeError("train_softcam: train_set must have .images (N, 3, S, S) and .labels (N,) tensors")
    _check_indexable(train_set, "train_softcam")
    if head_init not in ("copy", "fresh"):
        raise ValueError(f"train_softcam: head_init must be 'copy' or 'fresh', got {head_init!r}")
    if features is not None and train_backbone:
        raise ValueError("train_softcam: features= is for train_backbone=False (the evidence layer on a frozen "
                         "backbone)")
    if not train_backbone and init_from is None:
        raise ValueError("train_softcam: train_backbone=False trains only the evidence layer on a frozen backbone; "
                         "pass init_from=<a trained SplitClassifier>")
    if init_from is not None and init_from.name not in (backbone_arch, f"softcam_{backbone_arch}"):
        raise ValueError(f"train_softcam: init_from is a {init_from.name!r} model but backbone_arch is "
                         f"{backbone_arch!r}")
    num_classes = int(init_from.num_classes if init_from is not None else
                      getattr(train_set, "num_classes", int(train_set.labels.max()) + 1))
    config = softcam_config(backbone_arch, l1, l2, seed, num_classes, arch_kwargs, epochs=epochs, lr=lr,
                            batch_size=batch_size, weight_decay=weight_decay, optimizer=optimizer,
                            lr_schedule=lr_schedule, warmup_epochs=warmup_epochs, max_shift=max_shift,
                            label_smoothing=label_smoothing)
    config.update(data=data_fingerprint(train_set), train_backbone=bool(train_backbone),
                  head_init=head_init if init_from is not None else "copy",
                  init=None if init_from is None else _state_fingerprint(init_from.as_module()))
    mode = "e2e" if train_backbone else "head"
    path = (cache_dir(cache_root) / "softcam" /
            f"{backbone_arch}-{mode}-l1_{l1:g}-l2_{l2:g}-s{seed}-{config_hash(config)}.pt")
    device = torch.device(device)

    def fresh_model() -> SplitClassifier:
        if init_from is None:
            return build_softcam(backbone_arch, num_classes=num_classes, **config["arch_kwargs"])
        return to_softcam(copy.deepcopy(init_from), init=head_init)

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        split = fresh_model()
        if cache and path.exists():
            state = torch.load(path, map_location="cpu", weights_only=True)
            split.as_module().load_state_dict(state["state_dict"])
            split.as_module().to("cpu").eval()
            split.meta["softcam"] = {**state["info"], "path": str(path), "loaded": True}
            return split
        t0 = time.perf_counter()
        labels = train_set.labels
        n = len(labels)
        if train_backbone:
            model = split.as_module().to(device)
            maps_of = _EndToEndMaps(split, train_set, config["recipe"]["max_shift"], device)
            history = _fit(split, model.parameters(), n, labels, maps_of, config, device, progress,
                           set_train=model.train, val_set=val_set)
        else:
            split.as_module().to(device)
            feats = (frozen_features(split, train_set.images, device=device) if features is None
                     else _check_features(features, split, train_set, device))
            head = split.head

            def maps_of(idx, _state):
                return head.evidence_maps(feats[idx.to(device)])

            history = _fit(split, head.parameters(), n, labels, maps_of, config, device, progress,
                           set_train=head.train, val_set=val_set)
            del feats
        info = {"config": config, "history": history, "train_seconds": time.perf_counter() - t0,
                "threads": torch.get_num_threads()}
        split.as_module().to("cpu").eval()
        if cache:
            atomic_torch_save({"state_dict": split.as_module().state_dict(), "info": info}, Path(path))
        split.meta["softcam"] = {**info, "path": str(path) if cache else None, "loaded": False}
        return split


# ----------------------------------------------------------------------------------------------------------------
# Activation precision / sensitivity
# ----------------------------------------------------------------------------------------------------------------


def _check_maps_masks(maps: torch.Tensor, masks: torch.Tensor, threshold: float) -> tuple[torch.Tensor, torch.Tensor]:
    if not torch.is_tensor(maps) or maps.dim() != 3 or not maps.is_floating_point():
        raise ValueError(f"maps must be a float tensor (B, H, W) in [0, 1], got "
                         f"{tuple(maps.shape) if torch.is_tensor(maps) else type(maps).__name__}")
    masks = torch.as_tensor(masks, device=maps.device)
    if masks.shape != maps.shape:
        raise ValueError(f"masks must have the maps' shape {tuple(maps.shape)} (B, H, W), got {tuple(masks.shape)}; "
                         "upsample the maps to the image size first")
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"threshold must be in (0, 1], got {threshold}")
    if maps.numel() and (not torch.isfinite(maps).all() or maps.min() < 0 or maps.max() > 1):
        raise ValueError("maps must be finite and in [0, 1] (post-process them first: postprocess(..., normalize=True))")
    return maps, masks.bool()


def _overlap_counts(maps, masks, threshold):
    maps, masks = _check_maps_masks(maps, masks, threshold)
    region = maps >= threshold
    inter = (region & masks).flatten(1).sum(1).to(maps.dtype)
    return inter, region.flatten(1).sum(1).to(maps.dtype), masks.flatten(1).sum(1).to(maps.dtype)


def activation_precision(maps: torch.Tensor, masks: torch.Tensor, threshold: float = 0.5,
                         reduce: bool = True) -> torch.Tensor:
    """``|R ∩ G| / |R|`` with ``R = {maps >= threshold}``: maps ``(B, H, W)`` in [0, 1], masks ``(B, H, W)`` bool
    -> mean over images in percent (``reduce``) or ``(B,)`` fractions. An empty ``R`` (constant map) counts as 0."""
    inter, region, _ = _overlap_counts(maps, masks, threshold)
    per_image = torch.where(region > 0, inter / region.clamp(min=1), torch.zeros_like(inter))
    return 100.0 * per_image.mean() if reduce else per_image


def activation_sensitivity(maps: torch.Tensor, masks: torch.Tensor, threshold: float = 0.5,
                           reduce: bool = True) -> torch.Tensor:
    """``|R ∩ G| / |G|`` with ``R = {maps >= threshold}``: maps ``(B, H, W)`` in [0, 1], masks ``(B, H, W)`` bool
    -> mean over images in percent (``reduce``) or ``(B,)`` fractions. Images with an empty mask count as 0."""
    inter, _, gt = _overlap_counts(maps, masks, threshold)
    per_image = torch.where(gt > 0, inter / gt.clamp(min=1), torch.zeros_like(inter))
    return 100.0 * per_image.mean() if reduce else per_image


class ActivationOverlap:
    """Accumulates activation precision and sensitivity over batches: ``accumulate(maps (B, H, W) in [0, 1],
    masks (B, H, W) bool)``; ``compute() -> {"activation_precision", "activation_sensitivity"}`` (percent, mean over
    images) plus ``"empty_maps"`` (how many images had an empty activated region) and ``"num_images"``."""

    def __init__(self, threshold: float = 0.5):
        if not 0.0 < threshold <= 1.0:
            raise ValueError(f"threshold must be in (0, 1], got {threshold}")
        self.threshold = float(threshold)
        self.reset()

    def reset(self) -> None:
        self._precision = 0.0
        self._sensitivity = 0.0
        self._empty = 0
        self._n = 0

    def accumulate(self, maps: torch.Tensor, masks: torch.Tensor) -> None:
        inter, region, gt = _overlap_counts(maps, masks, self.threshold)
        self._precision += float(torch.where(region > 0, inter / region.clamp(min=1), torch.zeros_like(inter)).sum())
        self._sensitivity += float(torch.where(gt > 0, inter / gt.clamp(min=1), torch.zeros_like(inter)).sum())
        self._empty += int((region == 0).sum())
        self._n += int(inter.shape[0])

    def compute(self) -> dict:
        n = max(self._n, 1)
        return {"activation_precision": 100.0 * self._precision / n,
                "activation_sensitivity": 100.0 * self._sensitivity / n,
                "empty_maps": self._empty, "num_images": self._n}


def evaluate_activation_overlap(model, data, methods=("cam",), scores=("softmax_logit",), threshold: float = 0.5,
                                clamp: bool | None = None, batch_size: int = 64,
                                device: str | torch.device = "cpu") -> dict:
    """Activation precision / sensitivity of CAM ``methods`` from ``scores`` on ``data`` (which must have masks).

    ``model``: a DualBranchModel or SplitClassifier (a SoftCAM split's ``"cam"`` map is its evidence map minus the
    class bias, i.e. the same map after min-max). Maps of the ground-truth class, post-processed with
    ``paper_postprocess(method)`` as in :func:`dualcam_lib.experiments.evaluate_cams`.
    Returns ``{(method, score): ActivationOverlap.compute()}``.
    """
    from .cams import CamEngine, paper_postprocess, postprocess
    from .experiments import _normalizer, batches_of

    device = torch.device(device)
    normalize = _normalizer(model)
    if isinstance(model, SplitClassifier):
        model.as_module().to(device)
    else:
        model = model.to(device)
    acc = {(m, s): ActivationOverlap(threshold) for m in methods for s in scores}
    with CamEngine(model) as engine:
        for batch in batches_of(data, batch_size):
            if batch.masks is None:
                raise ValueError("evaluate_activation_overlap: the data has no masks (activation precision and "
                                 "sensitivity need ground-truth masks)")
            images = batch.images.to(device)
            x = normalize(images)
            labels = batch.labels.to(device)
            masks = batch.masks.to(device)
            for m in methods:
                raw = engine.compute(x, labels, method=m, scores=scores, clamp=clamp)
                for s in scores:
                    maps = postprocess(raw[s], size=images.shape[-2:], **paper_postprocess(m))
                    acc[(m, s)].accumulate(maps, masks)
    return {k: a.compute() for k, a in acc.items()}
