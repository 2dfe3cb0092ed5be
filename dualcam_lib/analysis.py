"""The class-mean direction of a linear softmax head: what softmax cannot see, and what training does to it.

For a linear head with weights ``W (C, N)`` and bias ``b (C,)``, the per-channel mean over classes
``m_i = mean_k W[k, i]`` (:func:`class_mean_component`) adds ``sum_i m_i x_i + mean(b)`` to *every* logit, so it
never changes a softmax probability; it does change every class's CAM by the same map ``sum_i m_i F_i``
(the paper's "additive logit shift", Oh & Noh 2025, Sec. 3.2). :func:`centre_head` removes it without changing any
prediction.

Why trained heads carry little of it: the cross-entropy gradient is ``dL/dW[k] = (p_k - y_k) x`` and
``sum_k (p_k - y_k) = 0``, so every gradient step leaves ``m`` (and ``mean(b)``) unchanged. Plain or momentum SGD
therefore keeps ``m`` at its initial value, weight decay shrinks it geometrically (:func:`sgd_class_mean_factor`),
and an optimiser that rescales each parameter separately (Adam, RMSProp) breaks the zero sum and lets it drift.
:class:`ClassMeanTracker` records it during any training run; :func:`train_linear_head` is a small, seeded CE / BCE
training loop of a linear head on fixed features for controlled experiments.

Evaluating many GAP + Linear heads: :func:`linear_head_cams` (CAM / Grad-CAM from cached feature maps, equal to the
CAM engine's), :func:`linear_head_localisation` (WSOL metrics), :func:`linear_head_fidelity` (Average Drop /
Increase in Confidence) and :func:`evaluate_centring` (a pretrained classifier, original vs centred head, as rows).
"""
from __future__ import annotations

import copy
import dataclasses
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .models import SplitClassifier

HEAD_LOSSES = ("ce", "bce")


def _check_weight(weight: torch.Tensor, name: str = "weight") -> torch.Tensor:
    if not torch.is_tensor(weight) or weight.dim() != 2 or not weight.is_floating_point():
        got = tuple(weight.shape) if torch.is_tensor(weight) else type(weight).__name__
        raise ValueError(f"{name} must be a float tensor (C, N) (classes x channels), got {got}")
    if weight.shape[0] < 2:
        raise ValueError(f"{name} needs at least 2 classes (rows), got shape {tuple(weight.shape)}")
    return weight


def _linear_of(head: nn.Module) -> nn.Linear:
    """``head`` itself if it is a Linear, else its ``.fc`` Linear (GapLinearHead, TokenHead)."""
    fc = head if isinstance(head, nn.Linear) else getattr(head, "fc", None)
    if not isinstance(fc, nn.Linear):
        raise ValueError(f"expected an nn.Linear or a head with a Linear `.fc` (GapLinearHead, TokenHead), got "
                         f"{type(head).__name__}")
    return fc


# ------------------------------------------------------------------------------------------- the class-mean itself
def class_mean_component(weight: torch.Tensor) -> torch.Tensor:
    """Per-channel mean over classes: ``(C, N) -> (N,)``. The part of the weights softmax cannot see."""
    return _check_weight(weight).mean(dim=0)


def class_mean_ratio(weight: torch.Tensor) -> float:
    """``RMS(class-mean component) / RMS(weights)`` for ``(C, N)`` weights, in [0, 1].

    0: the head is centred; 1: every class has the same weights (only the class-mean is left). Because the
    centred part and the class-mean are orthogonal, ``ratio**2`` is the share of ``sum W**2`` in the class-mean.
    """
    w = _check_weight(weight).detach().double()
    rms_w = w.pow(2).mean().sqrt()
    if rms_w == 0:
        raise ValueError("class_mean_ratio: the weights are all zero")
    return float(w.mean(dim=0).pow(2).mean().sqrt() / rms_w)


def centre_head(linear: nn.Module) -> nn.Linear:
    """A new Linear with class-centred weights and bias: ``W - mean_k W[k]``, ``b - mean(b)``.

    ``linear``: an ``nn.Linear(N, C)`` or a head with a Linear ``.fc``. Every logit of an input moves by the same
    amount, so softmax probabilities (and the argmax) are unchanged; the CAM of every class loses the same map
    ``sum_i m_i F_i`` (:func:`class_mean_cam`).
    """
    fc = _linear_of(linear)
    out = copy.deepcopy(fc)
    with torch.no_grad():
        out.weight.sub_(fc.weight.mean(dim=0, keepdim=True))
        if out.bias is not None:
            out.bias.sub_(fc.bias.mean())
    return out


def with_linear(head: nn.Module, linear: nn.Linear) -> nn.Module:
    """A deep copy of ``head`` (GapLinearHead, TokenHead, or a Linear) whose Linear ``.fc`` is ``linear``."""
    if isinstance(head, nn.Linear):
        return linear
    _linear_of(head)
    new = copy.deepcopy(head)
    new.fc = linear
    return new


def with_head(split: SplitClassifier, head: nn.Module) -> SplitClassifier:
    """The same classifier (shared backbone, normalisation, metadata copy) with another ``head``."""
    return dataclasses.replace(split, head=head, meta=dict(split.meta))


def centred_split(split: SplitClassifier) -> SplitClassifier:
    """``split`` with its head's Linear centred (:func:`centre_head`); predictions are unchanged."""
    return with_head(split, with_linear(split.head, centre_head(split.head)))


def class_mean_cam(weight: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
    """The map the class-mean adds to every class's CAM: ``(C, N)`` weights, ``(B, N, P, Q)`` -> ``(B, P, Q)``."""
    m = class_mean_component(weight)
    if features.dim() != 4 or features.shape[1] != m.shape[0]:
        raise ValueError(f"features must be (B, {m.shape[0]}, P, Q), got {tuple(features.shape)}")
    return torch.einsum("n,bnpq->bpq", m.to(features.dtype), features)


# --------------------------------------------------------------------------------------------- what training does
def sgd_class_mean_factor(steps: int, lr: float, weight_decay: float, momentum: float = 0.0) -> torch.Tensor:
    """Predicted ``m_t / m_0`` for ``t = 0..steps`` under ``torch.optim.SGD`` (dampening 0, no Nesterov), constant lr,
    on any loss whose gradient sums to zero over classes (cross-entropy): ``(steps + 1,)`` float64.

    The class-mean of the update is ``lr * weight_decay * m`` fed through the momentum buffer:
    ``v_t = momentum * v_{t-1} + weight_decay * m_{t-1}`` (``v_0 = 0``), ``m_t = m_{t-1} - lr * v_t``. Without
    momentum this is ``(1 - lr * weight_decay) ** t``; without weight decay it is 1 (the invariance).
    """
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    out = torch.empty(steps + 1, dtype=torch.float64)
    m, v = 1.0, 0.0
    out[0] = m
    for t in range(1, steps + 1):
        v = momentum * v + weight_decay * m
        m = m - lr * v
        out[t] = m
    return out


class ClassMeanTracker:
    """Records the class-mean of a Linear layer during training.

    ``ClassMeanTracker(linear_or_head)`` records step 0 at once; ``ClassMeanTracker()`` attaches to the Linear that
    :func:`train_linear_head` passes in its first callback row (``row["linear"]``). Call it as
    ``tracker(step, row=None)`` (the callback signature of :func:`dualcam_lib.train.fit_sigmoid_head` and of
    :func:`train_linear_head`). ``history``: list of dicts with ``step``, ``ratio`` (:func:`class_mean_ratio`),
    ``mean_rms`` (RMS of ``m``), ``drift_rms`` (RMS of ``m_t - m_0``), ``bias_mean`` (mean of the bias);
    ``frame()`` returns it as a pandas DataFrame.
    """

    def __init__(self, linear: nn.Module | None = None):
        self.linear: nn.Linear | None = None
        self.history: list[dict] = []
        if linear is not None:
            self._attach(linear)

    def _attach(self, linear: nn.Module) -> None:
        self.linear = _linear_of(linear)
        self.m0 = class_mean_component(self.linear.weight.detach()).double().clone()
        self.record(0)

    def record(self, step: int) -> dict:
        if self.linear is None:
            raise RuntimeError("ClassMeanTracker has no Linear yet: pass one, or use it as train_linear_head's callback")
        w = self.linear.weight.detach()
        m = class_mean_component(w).double()
        b = self.linear.bias
        row = {"step": int(step), "ratio": class_mean_ratio(w), "mean_rms": float(m.pow(2).mean().sqrt()),
               "drift_rms": float((m - self.m0.to(m.device)).pow(2).mean().sqrt()),
               "bias_mean": float(b.detach().double().mean()) if b is not None else 0.0}
        self.history.append(row)
        return row

    def __call__(self, step: int, row: dict | None = None) -> None:
        if self.linear is None and isinstance(row, dict) and "linear" in row:
            self._attach(row["linear"])  # records step 0
            if step == 0:
                return
        if step == 0 and self.history and self.history[-1]["step"] == 0:
            return
        self.record(step)

    def frame(self):
        import pandas as pd

        return pd.DataFrame(self.history)


def train_linear_head(features: torch.Tensor, labels: torch.Tensor, num_classes: int, *, loss: str = "ce",
                      pos_weight: float | None = None, optimizer: str = "sgd", lr: float = 0.1,
                      momentum: float = 0.9, weight_decay: float = 0.0, epochs: int = 10, batch_size: int = 64,
                      start: nn.Linear | None = None, init_std: float = 0.01,
                      init_shift: torch.Tensor | None = None, seed: int = 0,
                      callback: Callable[[int, dict], None] | None = None, every: int = 1,
                      num_threads: int | None = 1) -> nn.Linear:
    """Train a linear head ``(N,) -> (C,)`` on fixed features; returns the trained ``nn.Linear`` (eval mode).

    ``features (M, N)`` float, ``labels (M,)`` long, on any device. ``loss``: ``"ce"`` (softmax cross-entropy) or
    ``"bce"`` (:class:`~dualcam_lib.train.ClassBalancedBCE`, ``pos_weight`` default ``C-1``). ``optimizer``:
    ``"sgd"`` (with ``momentum``), ``"adam"`` or ``"adamw"``; ``weight_decay`` as in torch (coupled L2 for SGD and
    Adam, decoupled for AdamW). Start: a copy of ``start`` if given, else weights ~ N(0, ``init_std``) and zero bias
    (the paper's fresh init); ``init_shift (N,)`` is then added to every class's row (a deliberate class-mean).
    Mini-batches: a permutation per epoch from a generator seeded by ``(seed, epoch)``; the initial weights from
    ``seed``, so a call is reproducible. ``callback(step, {"loss": ...})`` runs at step 0 and after every
    ``every``-th optimiser step with ``row["linear"]`` the Linear being trained (e.g. a :class:`ClassMeanTracker`).
    ``num_threads``: CPU threads during the loop (restored afterwards); a small head's steps take microseconds, and
    on a busy machine synchronising two threads costs far more than it saves, so the default is 1; ``None`` keeps
    the current setting.
    """
    from .train import ClassBalancedBCE, make_optimizer

    if loss not in HEAD_LOSSES:
        raise ValueError(f"loss must be one of {HEAD_LOSSES}, got {loss!r}")
    if features.dim() != 2 or not features.is_floating_point():
        raise ValueError(f"features must be a float tensor (M, N), got {tuple(features.shape)} {features.dtype}")
    if labels.dim() != 1 or labels.shape[0] != features.shape[0]:
        raise ValueError(f"labels must be (M,) with M = {features.shape[0]}, got {tuple(labels.shape)}")
    if labels.numel() == 0 or int(labels.min()) < 0 or int(labels.max()) >= num_classes:
        raise ValueError(f"labels must lie in [0, {num_classes - 1}]")
    if epochs < 0 or batch_size < 1 or every < 1:
        raise ValueError(f"need epochs >= 0, batch_size >= 1, every >= 1; got {epochs}, {batch_size}, {every}")
    n = features.shape[1]
    if start is not None:
        linear = copy.deepcopy(_linear_of(start)).to(features.device, features.dtype)
    else:
        gen = torch.Generator().manual_seed(int(seed))
        linear = nn.Linear(n, num_classes).to(features.dtype)
        with torch.no_grad():
            linear.weight.copy_(torch.randn(num_classes, n, generator=gen, dtype=torch.float64) * init_std)
            linear.bias.zero_()
        linear = linear.to(features.device)
    if linear.in_features != n or linear.out_features != num_classes:
        raise ValueError(f"start is Linear({linear.in_features}, {linear.out_features}); the features need "
                         f"Linear({n}, {num_classes})")
    if init_shift is not None:
        if init_shift.shape != (n,):
            raise ValueError(f"init_shift must have shape ({n},), got {tuple(init_shift.shape)}")
        with torch.no_grad():
            linear.weight.add_(init_shift.to(linear.weight)[None, :])
    for p in linear.parameters():
        p.requires_grad_(True)
    criterion = (ClassBalancedBCE(num_classes, pos_weight, check_labels=False) if loss == "bce"
                 else nn.CrossEntropyLoss())
    if optimizer == "sgd":
        opt = torch.optim.SGD(linear.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    else:
        opt = make_optimizer(linear.parameters(), optimizer, lr, weight_decay)
    threads_before = torch.get_num_threads()
    if num_threads is not None and features.device.type == "cpu":
        torch.set_num_threads(num_threads)
    try:
        _fit_linear(linear, criterion, opt, features, labels, epochs, batch_size, seed, callback, every)
    finally:
        torch.set_num_threads(threads_before)
    return linear.eval()


def _fit_linear(linear, criterion, opt, features, labels, epochs, batch_size, seed, callback, every) -> None:
    linear.train()
    step = 0
    if callback is not None:
        callback(0, {"loss": float("nan"), "linear": linear})
    m = features.shape[0]
    for epoch in range(epochs):
        order = torch.randperm(m, generator=torch.Generator().manual_seed(int(seed) * 100_003 + epoch))
        for idx in order.to(features.device).split(batch_size):
            value = criterion(linear(features[idx]), labels[idx])
            opt.zero_grad(set_to_none=True)
            value.backward()
            opt.step()
            step += 1
            if callback is not None and step % every == 0:
                callback(step, {"loss": float(value.detach()), "linear": linear})


@torch.no_grad()
def gap_features(split: SplitClassifier, images: torch.Tensor, batch_size: int = 256,
                 keep_maps: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Pooled backbone features of a CNN ``split`` for ``(M, 3, H, W)`` images in [0, 1]: ``(M, N)``
    (and the ``(M, N, P, Q)`` maps when ``keep_maps``), computed in eval mode on the images' device."""
    split.backbone.eval()
    pooled, maps = [], []
    for chunk in images.split(batch_size):
        f = split.backbone(split.normalize(chunk))
        if f.dim() != 4:
            raise ValueError(f"gap_features needs a CNN backbone with (B, N, P, Q) output, got {tuple(f.shape)}")
        pooled.append(F.adaptive_avg_pool2d(f, 1).flatten(1))
        if keep_maps:
            maps.append(f)
    out = torch.cat(pooled)
    return (out, torch.cat(maps)) if keep_maps else out


# --------------------------------------------------------------------------------------------- localisation of heads
@torch.no_grad()
def linear_head_cams(weight: torch.Tensor, feature_maps: torch.Tensor, targets: torch.Tensor, method: str = "cam",
                     clamp: bool = False) -> torch.Tensor:
    """Raw CAMs of a GAP + Linear head from cached feature maps: ``(C, N)``, ``(B, N, P, Q)``, ``(B,)`` ->
    ``(B, P, Q)``.

    ``"cam"``: ``sum_i w[t, i] F_i``. ``"gradcam"``: for a GAP + Linear head the channel gradient of logit ``t`` is
    ``w[t, i] / (P Q)`` everywhere, so Grad-CAM is the same sum divided by ``P Q`` (its ReLU comes in
    post-processing). ``clamp``: use ``max(0, w)`` (the paper's clamping of negative channel weights). These equal
    :class:`~dualcam_lib.cams.CamEngine`'s ``"cam"`` / ``"gradcam"`` for such a head, without a backbone pass.
    """
    _check_weight(weight)
    if feature_maps.dim() != 4 or feature_maps.shape[1] != weight.shape[1]:
        raise ValueError(f"feature_maps must be (B, {weight.shape[1]}, P, Q), got {tuple(feature_maps.shape)}")
    if method not in ("cam", "gradcam"):
        raise ValueError(f"method must be 'cam' or 'gradcam' (the two that reduce to the head's weights), got "
                         f"{method!r}")
    rows = weight.to(feature_maps)[targets.to(feature_maps.device)]
    if clamp:
        rows = rows.clamp(min=0)
    maps = torch.einsum("bn,bnpq->bpq", rows, feature_maps)
    if method == "gradcam":
        maps = maps / (feature_maps.shape[-2] * feature_maps.shape[-1])
    return maps


def linear_head_localisation(weight: torch.Tensor, feature_maps: torch.Tensor, labels: torch.Tensor, boxes,
                             image_size: tuple[int, int], *, method: str = "cam", clamp: bool = False,
                             correct: torch.Tensor | None = None, thresholds=None, batch_size: int = 256) -> dict:
    """WSOL metrics of a GAP + Linear head's CAMs of the ground-truth class, from cached feature maps.

    ``weight (C, N)``; ``feature_maps (B, N, P, Q)``; ``labels (B,)``; ``boxes``: ``B`` tensors ``(K, 4)`` or a
    ``(B, 4)`` tensor, in pixels of ``image_size``; maps post-processed as the paper's code does for ``method``
    (:func:`~dualcam_lib.cams.paper_postprocess`). ``correct (B,) bool``: the classifier's top-1 is right (for
    Top-1 Loc). Returns :meth:`~dualcam_lib.metrics.BoxAccuracy.compute`'s dict (percent).
    """
    from .cams import paper_postprocess, postprocess
    from .metrics import BoxAccuracy

    if isinstance(boxes, torch.Tensor) and boxes.dim() == 2:
        boxes = list(boxes[:, None])
    acc = BoxAccuracy(thresholds)
    post = paper_postprocess(method)
    for start in range(0, feature_maps.shape[0], batch_size):
        sl = slice(start, start + batch_size)
        raw = linear_head_cams(weight, feature_maps[sl], labels[sl], method=method, clamp=clamp)
        maps = postprocess(raw, size=image_size, **post)
        acc.accumulate(maps, boxes[sl], None if correct is None else correct[sl])
    return acc.compute()


def evaluate_centring(split: SplitClassifier, data, *, methods=("cam",), batch_size: int = 50, device="cpu",
                      dataset: str = "", setting: str = "", run_id: str = "", config: dict | None = None,
                      thresholds=None, progress: bool = False) -> list[dict]:
    """Tidy rows for a pretrained CNN with a GAP + Linear head: its class-mean ratio, top-1 accuracy and the WSOL
    metrics (:class:`~dualcam_lib.metrics.BoxAccuracy`) of its softmax-branch CAMs of the ground-truth class with
    the original head (``variant=""``) and the centred head (``variant="centred"``), neither clamped.

    One backbone pass per batch serves both heads and every method (``"cam"``, ``"gradcam"``:
    :func:`linear_head_cams`, equal to the CAM engine's maps for such a head); maps are post-processed as the
    paper's code does (:func:`~dualcam_lib.cams.paper_postprocess`). ``data``: anything with ``.batches(bs)`` or an
    iterable of :class:`~dualcam_lib.data.WSOLBatch` (images in [0, 1], normalised here with ``split.normalize``).
    """
    from tqdm.auto import tqdm

    from .cams import paper_postprocess, postprocess
    from .experiments import batches_of
    from .metrics import BoxAccuracy
    from .results import make_row

    fc = _linear_of(split.head)
    weights = {"": fc.weight.detach().to(device), "centred": centre_head(fc).weight.detach().to(device)}
    acc = {(m, v): BoxAccuracy(thresholds) for m in methods for v in weights}
    model = split.as_module().to(device).eval()
    correct_count = count = 0
    with torch.no_grad():
        for batch in tqdm(batches_of(data, batch_size), disable=not progress, desc=f"centring {split.name}"):
            images, labels = batch.images.to(device), batch.labels.to(device)
            feats = split.backbone(split.normalize(images))
            correct = split.head(feats).argmax(1) == labels
            correct_count += int(correct.sum())
            count += len(labels)
            for (m, v), box in acc.items():
                raw = linear_head_cams(weights[v], feats, labels, method=m)
                box.accumulate(postprocess(raw, size=images.shape[-2:], **paper_postprocess(m)), batch.boxes,
                               correct)
    if count == 0:
        raise ValueError(f"evaluate_centring({split.name}): the data yielded no images")
    top1 = 100.0 * correct_count / count
    common = dict(dataset=dataset, backbone=split.name, setting=setting, run_id=run_id, config=config)
    rows = [make_row(method="head", branch="softmax", metric="class_mean_ratio", value=class_mean_ratio(fc.weight),
                     **common),
            make_row(method="head", branch="softmax", metric="num_images", value=count, **common)]
    for (m, v), box in acc.items():
        r = box.compute()
        metrics = {"top1_cls": top1, "top1_loc": r["top1_loc"], "gt_known_loc": r["gt_known_loc"],
                   "maxboxacc_v2": r["maxboxacc_v2"],
                   **{f"maxboxacc_{int(round(float(d) * 100))}": val for d, val in r["maxboxacc"].items()}}
        rows += [make_row(method=m, branch="softmax", variant=v, metric=k, value=val, **common)
                 for k, val in metrics.items()]
    return rows


@torch.no_grad()
def linear_head_fidelity(split: SplitClassifier, weight: torch.Tensor, images: torch.Tensor,
                         feature_maps: torch.Tensor | None = None, *, method: str = "cam", clamp: bool = False,
                         batch_size: int = 200) -> dict:
    """Average Drop and Increase in Confidence of the CAMs that a GAP + Linear ``weight (C, N)`` gives for the
    class ``split`` predicts, judged by ``split`` (its own softmax head), as
    :func:`dualcam_lib.experiments.evaluate_cams` does with ``fidelity=True``.

    ``images (B, 3, H, W)`` in [0, 1]; ``feature_maps``: ``split.backbone`` of the normalised images if already
    computed. ``o`` is the predicted class's probability on the RGB image multiplied by its [0, 1] map
    (post-processed as :func:`~dualcam_lib.cams.paper_postprocess` ``(method)``). Returns
    :meth:`~dualcam_lib.metrics.FidelityAccumulator.compute`'s dict (percent).
    """
    from .cams import paper_postprocess, postprocess
    from .metrics import FidelityAccumulator

    acc = FidelityAccumulator()
    split.backbone.eval()
    split.head.eval()
    for start in range(0, images.shape[0], batch_size):
        x = images[start:start + batch_size]
        feats = split.backbone(split.normalize(x)) if feature_maps is None else feature_maps[start:start + batch_size]
        probs = split.head(feats).softmax(-1)
        pred = probs.argmax(-1)
        raw = linear_head_cams(weight, feats, pred, method=method, clamp=clamp)
        maps = postprocess(raw, size=x.shape[-2:], **paper_postprocess(method))
        masked = split.head(split.backbone(split.normalize(x * maps[:, None]))).softmax(-1)
        acc.accumulate(probs.gather(1, pred[:, None])[:, 0], masked.gather(1, pred[:, None])[:, 0])
    return acc.compute()
