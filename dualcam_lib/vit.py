"""Explaining Vision Transformers: Attention-Guided CAM, attention rollout, Grad-CAM, and AG-CAM's own metrics.

Methods (all batched, one target class per image, maps ``(B, P, Q)`` on the patch grid):

- :func:`agcam` -- Attention-Guided CAM (Leem & Seo, AAAI 2024). For every block ``k`` and head ``h`` take the
  pre-softmax attention scores ``S = q k^T * scale`` and the gradient ``G = d y / d A`` of the target score ``y``
  w.r.t. the post-softmax attention ``A = softmax(S)``; the map is
  ``sum_k sum_h sigmoid(S[k,h])[CLS, patches] * ReLU(G[k,h])[CLS, patches]``, reshaped to the grid.
  By default the gradients follow the authors' code: every attention module's *input* is detached, so ``d y / d A_k``
  reaches ``A_k`` through the residual (skip) connections and MLPs of the later blocks only, not through the later
  attention modules (the paper's ``dE^{k+1}_1 / dE^k_2 = I``). ``detach_attention_input=False`` gives plain autograd.
  ``y`` is any score of :data:`dualcam_lib.cams.SCORE_BRANCH`: the softmax branch's logit / probability /
  log-softmax, or the sigmoid branch's logit (a :class:`~dualcam_lib.heads.DualBranchModel` on a ViT split, whose
  sigmoid head is a copy of the CLS :class:`~dualcam_lib.models.TokenHead`).
- :func:`attention_rollout` -- Abnar & Zuidema (2020): head-fused attention plus the identity for the residual
  stream, rows renormalised, multiplied through the layers; the CLS row over the patches. Class-agnostic.
- :func:`vit_gradcam` -- Grad-CAM (or any CAM method) on the ViT through :class:`dualcam_lib.cams.CamEngine`.

timm's ``Attention`` may run fused scaled-dot-product attention, which never forms the attention matrix. Inside
:func:`capture_attention` every timm ``Attention`` module runs an explicit forward instead (same operations, same
output up to float rounding) that records ``S`` and ``A``; on exit the original ``forward`` and ``fused_attn`` are
restored, also when an exception is raised.

AG-CAM's metrics (the authors' ``localization.py`` and ``ABPC.py``), batched:

- :class:`AGCAMLocalization` -- pixel accuracy, IoU, Dice (and precision, recall) of the map thresholded at 0.5
  against the ground-truth box mask.
- :func:`perturbation_curves` / :func:`abpc` / :class:`ABPCAccumulator` -- Area Between the Perturbation Curves.

:func:`evaluate_vit` runs every method from every score over a dataset and reports our WSOL metrics (MaxBoxAccV2,
GT-known / Top-1 Loc, PxAP) beside AG-CAM's.
"""
from __future__ import annotations

import types
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Iterator, Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn

from .cams import CamEngine, postprocess
from .cams.engine import SCORE_BRANCH, score_values
from .cams.tokens import find_grid
from .heads import DualBranchModel
from .metrics import BoxAccuracy, PxAP
from .models import SplitClassifier, TokenHead
from .results import make_row

ROLLOUT_SCORE = "class-agnostic"  # the "score" key of attention rollout, which uses no class score at all
AGCAM_METHODS = ("agcam", "agcam_full")  # skip-connection gradients (the authors' code) / plain autograd
ABPC_STEPS = 10


# ----------------------------------------------------------------------------------------------------------------
# Capturing the attention of every block
# ----------------------------------------------------------------------------------------------------------------


def _timm_attention_class():
    from timm.models.vision_transformer import Attention

    return Attention


def attention_modules(module: nn.Module) -> list[nn.Module]:
    """The timm ``Attention`` modules inside ``module``, in registration (= forward) order.

    Only modules whose class uses timm's own ``Attention.forward`` are returned: a subclass with another forward
    (RoPE, relative position bias ...) would compute something the explicit forward here does not reproduce.
    """
    attention = _timm_attention_class()
    found = [m for m in module.modules() if isinstance(m, attention)]
    odd = [type(m).__name__ for m in found if type(m).forward is not attention.forward]
    if odd:
        raise ValueError(f"attention modules {sorted(set(odd))} override timm's Attention.forward; AG-CAM and "
                         "rollout here support timm's standard multi-head Attention only")
    return found


@dataclass
class AttentionRecord:
    """What :func:`capture_attention` records per attention module, in forward order.

    ``scores``: pre-softmax scores ``q k^T * scale`` ``(B, heads, N, N)``, detached.
    ``attentions``: post-softmax attention ``(B, heads, N, N)``; while autograd is on they are tensors of the
    graph that ``torch.autograd.grad`` can differentiate with respect to (the gradient w.r.t. ``A`` itself).
    """

    scores: list = field(default_factory=list)
    attentions: list = field(default_factory=list)

    def clear(self) -> None:
        self.scores.clear()
        self.attentions.clear()


def _explicit_attention_forward(module: nn.Module, x: torch.Tensor, attn_mask: torch.Tensor | None = None,
                                is_causal: bool = False, *, record: AttentionRecord,
                                detach_input: bool) -> torch.Tensor:
    """timm ``Attention.forward`` with an explicit attention matrix (never SDPA): ``(B, N, C) -> (B, N, C_out)``."""
    if attn_mask is not None or is_causal:
        raise NotImplementedError("capture_attention: attention masks / causal attention are not supported "
                                  "(a ViT classifier uses neither)")
    if detach_input:
        x = x.detach()
    b, n, c = x.shape
    heads = module.num_heads
    head_dim = getattr(module, "head_dim", c // heads)
    attn_dim = getattr(module, "attn_dim", heads * head_dim)
    gate_layer = getattr(module, "gate", None)
    gate = gate_layer(x).sigmoid() if gate_layer is not None else None
    qkv = module.qkv(x).reshape(b, n, 3, heads, head_dim).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)
    q = getattr(module, "q_norm", nn.Identity())(q)
    k = getattr(module, "k_norm", nn.Identity())(k)
    scores = (q * module.scale) @ k.transpose(-2, -1)  # timm's order: scale q, then the product
    attn = scores.softmax(dim=-1)
    if torch.is_grad_enabled() and not attn.requires_grad:
        # Nothing upstream needs a gradient (frozen backbone, or a detached input): make A a leaf so that
        # d y / d A exists. Later layers depend on it, so gradients still flow through them as usual.
        attn = attn.detach().requires_grad_(True)
    record.scores.append(scores.detach())
    record.attentions.append(attn)
    out = module.attn_drop(attn) @ v
    out = out.transpose(1, 2).reshape(b, n, attn_dim)
    out = getattr(module, "norm", nn.Identity())(out)
    if gate is not None:
        out = out * gate
    return module.proj_drop(module.proj(out))


_NO_INSTANCE_FORWARD = object()


@contextmanager
def capture_attention(module: nn.Module, detach_input: bool = False) -> Iterator[AttentionRecord]:
    """Record every timm ``Attention``'s scores and attention during forward passes inside the ``with`` block.

    ``module``: a ViT (or a backbone / model containing one). ``detach_input``: detach each attention module's
    input, so gradients w.r.t. an attention matrix reach it only through the skip connections (AG-CAM's choice);
    forward values are unchanged. Each forward pass appends one entry per attention module to the
    :class:`AttentionRecord` (call ``record.clear()`` between passes). On exit, also after an exception, every
    module gets its own ``forward`` and ``fused_attn`` back.
    """
    modules = attention_modules(module)
    if not modules:
        raise ValueError(f"capture_attention: no timm Attention module found in {type(module).__name__}; "
                         "pass a timm VisionTransformer (or a model that contains one)")
    record = AttentionRecord()
    saved = []
    try:
        for m in modules:
            saved.append((m, m.__dict__.get("forward", _NO_INSTANCE_FORWARD), m.__dict__.get("fused_attn"),
                          "fused_attn" in m.__dict__))
            # The explicit forward never calls SDPA; the flag says so to anyone who reads it meanwhile.
            m.fused_attn = False
            fwd = _explicit_attention_forward

            def bound(self, x, attn_mask=None, is_causal=False, _f=fwd):
                return _f(self, x, attn_mask, is_causal, record=record, detach_input=detach_input)

            m.forward = types.MethodType(bound, m)
        yield record
    finally:
        for m, fwd, fused, had_fused in reversed(saved):
            if fwd is _NO_INSTANCE_FORWARD:
                m.__dict__.pop("forward", None)
            else:
                m.forward = fwd
            if had_fused:
                m.fused_attn = fused
            else:
                m.__dict__.pop("fused_attn", None)
        record.clear()


# ----------------------------------------------------------------------------------------------------------------
# Model plumbing shared by the methods
# ----------------------------------------------------------------------------------------------------------------


def _parts(model) -> tuple[SplitClassifier, nn.Module, dict]:
    """(split, backbone, {branch: head}) of a DualBranchModel or a SplitClassifier of kind 'vit'."""
    if isinstance(model, DualBranchModel):
        split, heads = model.split, {"softmax": model.softmax_head, "sigmoid": model.sigmoid_head}
    elif isinstance(model, SplitClassifier):
        split, heads = model, {"softmax": model.head}
    else:
        raise TypeError(f"expected a DualBranchModel or a SplitClassifier, got {type(model).__name__}")
    if split.kind != "vit":
        raise ValueError(f"{split.name!r} is a {split.kind!r} model; these methods need a ViT split (kind='vit')")
    return split, split.backbone, heads


def _check_scores(scores, heads: dict) -> tuple:
    if scores is None:
        scores = ("softmax_logit", "sigmoid_logit") if "sigmoid" in heads else ("softmax_logit",)
    if isinstance(scores, str):
        scores = (scores,)
    scores = tuple(dict.fromkeys(scores))
    if not scores:
        raise ValueError("scores is empty; name at least one of " + ", ".join(SCORE_BRANCH))
    for s in scores:
        if s not in SCORE_BRANCH:
            raise ValueError(f"unknown score {s!r}; expected one of {sorted(SCORE_BRANCH)}")
        if SCORE_BRANCH[s] not in heads:
            raise ValueError(f"score {s!r} needs the {SCORE_BRANCH[s]} branch; wrap the split in DualBranchModel")
    return scores


def _check_inputs(x: torch.Tensor, targets, num_classes: int) -> torch.Tensor:
    if not torch.is_tensor(x) or x.dim() != 4 or not x.is_floating_point():
        raise ValueError(f"x must be a float tensor (B, 3, H, W), got "
                         f"{tuple(x.shape) if torch.is_tensor(x) else type(x).__name__}")
    targets = torch.as_tensor(targets, device=x.device)
    if targets.dim() != 1 or targets.shape[0] != x.shape[0] or targets.is_floating_point():
        raise ValueError(f"targets must be a (B,) integer tensor with B = {x.shape[0]}, got shape "
                         f"{tuple(targets.shape)} dtype {targets.dtype}")
    targets = targets.long()
    if targets.numel() and (targets.min() < 0 or targets.max() >= num_classes):
        raise ValueError(f"targets must be class indices in [0, {num_classes})")
    return targets


@contextmanager
def _eval_mode(*roots: nn.Module):
    """Eval mode for every module under ``roots`` that is training; exactly those are flipped back on exit."""
    training = [m for r in roots for m in r.modules() if m.training]
    for m in training:
        m.training = False
    try:
        yield
    finally:
        for m in training:
            m.training = True


def _patch_layout(split: SplitClassifier, backbone: nn.Module, num_tokens: int, image_size) -> tuple[int, tuple]:
    prefix = int(split.num_prefix_tokens)
    if prefix < 1:
        raise ValueError(f"{split.name!r} has no class token (num_prefix_tokens=0); AG-CAM and rollout read the "
                         "class token's attention row")
    return prefix, find_grid(num_tokens - prefix, backbone, split.grid, tuple(image_size))


# ----------------------------------------------------------------------------------------------------------------
# AG-CAM
# ----------------------------------------------------------------------------------------------------------------


def agcam(model, x: torch.Tensor, targets, scores=None, detach_attention_input: bool = True,
          per_layer: bool = False) -> dict[str, torch.Tensor]:
    """Attention-Guided CAM of class ``targets[b]`` for image ``b``, from each requested score.

    ``model``: :class:`DualBranchModel` or :class:`SplitClassifier` on a timm ViT with a class token and a CLS
    :class:`TokenHead`. ``x``: ``(B, 3, H, W)`` normalised input; ``targets``: ``(B,)`` long.
    ``scores``: names from ``SCORE_BRANCH`` (default: each branch's logit). ``detach_attention_input``: ``True``
    (default) follows the authors' code (gradients through the skip connections only, see the module docstring).
    ``per_layer``: also keep the layer axis.
    Returns score -> ``(B, P, Q)`` float32 (``(B, L, P, Q)`` with ``per_layer``), non-negative, not normalised:
    ``sum_{layers, heads} sigmoid(S)[CLS, patch] * ReLU(dy/dA)[CLS, patch]``. One backbone pass for all scores.
    """
    split, backbone, heads = _parts(model)
    scores = _check_scores(scores, heads)
    targets = _check_inputs(x, targets, split.num_classes)
    for branch in {SCORE_BRANCH[s] for s in scores}:
        head = heads[branch]
        if isinstance(head, TokenHead) and head.pool != "cls":
            raise ValueError(f"AG-CAM reads the class token's attention row, but the {branch} head pools "
                             f"{head.pool!r}; use a ViT with a CLS-token head")
    out = {}
    with _eval_mode(backbone, *heads.values()), capture_attention(backbone, detach_attention_input) as rec, \
            torch.enable_grad():
        tokens = backbone(x)
        prefix, grid = _patch_layout(split, backbone, tokens.shape[1], x.shape[-2:])
        branches = tuple(dict.fromkeys(SCORE_BRANCH[s] for s in scores))
        logits = {br: heads[br](tokens) for br in branches}
        guide = torch.stack([torch.sigmoid(s[:, :, 0, prefix:]) for s in rec.scores], dim=1)  # (B, L, heads, T)
        for i, s in enumerate(scores):
            value = score_values(s, logits[SCORE_BRANCH[s]], targets)
            grads = torch.autograd.grad(value.sum(), rec.attentions, retain_graph=i < len(scores) - 1,
                                        allow_unused=True)
            cls_rows = torch.stack([torch.zeros_like(a[:, :, 0, prefix:]) if g is None else g[:, :, 0, prefix:]
                                    for a, g in zip(rec.attentions, grads)], dim=1)  # (B, L, heads, T)
            layer_maps = (guide * cls_rows.clamp(min=0)).sum(dim=2)  # (B, L, T)
            maps = layer_maps if per_layer else layer_maps.sum(dim=1)
            out[s] = maps.reshape(*maps.shape[:-1], *grid).detach().float()
    return out


# ----------------------------------------------------------------------------------------------------------------
# Attention rollout
# ----------------------------------------------------------------------------------------------------------------

HEAD_FUSIONS = ("mean", "max", "min")


@torch.no_grad()
def attention_rollout(model, x: torch.Tensor, head_fusion: str = "mean", residual: bool = True) -> torch.Tensor:
    """Attention rollout (Abnar & Zuidema 2020), batched: ``(B, 3, H, W)`` normalised -> ``(B, P, Q)`` float32.

    Per layer: fuse the heads (``head_fusion`` mean | max | min) into ``(B, N, N)``; with ``residual`` add the
    identity for the skip connection, ``0.5 * (A + I)``, and renormalise each row to sum to 1; multiply the layers,
    ``R = A_L ... A_1``. The map is the class token's row of ``R`` over the patch tokens. It uses no class score,
    so it is the same for every target class and for both branches. (jacobgil/vit-explain's ``discard_ratio`` is
    not implemented: 0, the setting the AG-CAM authors compare against.)
    ``model``: DualBranchModel, SplitClassifier (kind "vit") or the ViT backbone itself.
    """
    if head_fusion not in HEAD_FUSIONS:
        raise ValueError(f"head_fusion must be one of {HEAD_FUSIONS}, got {head_fusion!r}")
    if isinstance(model, nn.Module) and not isinstance(model, DualBranchModel):
        backbone, split = model, None
    else:
        split, backbone, _ = _parts(model)
    with _eval_mode(backbone), capture_attention(backbone) as rec:
        tokens = backbone(x)
        if split is None:
            prefix = int(getattr(getattr(backbone, "vit", backbone), "num_prefix_tokens", 1))
            grid = find_grid(tokens.shape[1] - prefix, backbone, None, tuple(x.shape[-2:]))
        else:
            prefix, grid = _patch_layout(split, backbone, tokens.shape[1], x.shape[-2:])
        n = tokens.shape[1]
        eye = torch.eye(n, device=x.device, dtype=torch.float32)
        rollout = eye.expand(x.shape[0], n, n)
        for attn in rec.attentions:
            a = attn.float()
            fused = a.mean(dim=1) if head_fusion == "mean" else (a.amax(dim=1) if head_fusion == "max"
                                                                 else a.amin(dim=1))
            if residual:
                fused = 0.5 * (fused + eye)
                fused = fused / fused.sum(dim=-1, keepdim=True)
            rollout = fused @ rollout
    return rollout[:, 0, prefix:].reshape(x.shape[0], *grid)


# ----------------------------------------------------------------------------------------------------------------
# Grad-CAM through the CAM engine
# ----------------------------------------------------------------------------------------------------------------


def vit_gradcam(model, x: torch.Tensor, targets, scores=None, method: str = "gradcam", target_layer=None,
                clamp: bool | None = None) -> dict[str, torch.Tensor]:
    """Grad-CAM (or another :data:`dualcam_lib.cams.METHODS` method) on a ViT via :class:`CamEngine`:
    score -> ``(B, P, Q)`` raw signed maps. ``target_layer`` ``None`` is ``split.meta["target_layer"]`` (the last
    block's ``norm1``, pytorch-grad-cam's ViT convention); tokens are arranged on the grid by the engine."""
    with CamEngine(model, target_layer=target_layer) as engine:
        return engine.compute(x, targets, method=method, scores=scores, clamp=clamp)


def vit_maps(model, x: torch.Tensor, targets, methods: Sequence[str] = ("agcam", "rollout", "gradcam"),
             scores=None) -> dict[tuple[str, str], torch.Tensor]:
    """Raw maps of several methods: ``(method, score) -> (B, P, Q)``; rollout appears once, as
    ``("rollout", ROLLOUT_SCORE)``. ``"agcam"`` uses skip-connection gradients, ``"agcam_full"`` plain autograd;
    any other name goes to :func:`vit_gradcam`."""
    _, _, heads = _parts(model)
    scores = _check_scores(scores, heads)
    out = {}
    for m in methods:
        if m in AGCAM_METHODS:
            maps = agcam(model, x, targets, scores, detach_attention_input=(m == "agcam"))
        elif m == "rollout":
            maps = {ROLLOUT_SCORE: attention_rollout(model, x)}
        else:
            maps = vit_gradcam(model, x, targets, scores, method=m)
        out.update({(m, s): v for s, v in maps.items()})
    return out


# ----------------------------------------------------------------------------------------------------------------
# AG-CAM's localisation metrics
# ----------------------------------------------------------------------------------------------------------------


def boxes_to_mask(boxes, size: tuple[int, int], device=None) -> torch.Tensor:
    """Union of boxes per image: ``B`` tensors ``(K_i, 4)`` (x0, y0, x1, y1 inclusive) -> ``(B, H, W)`` bool."""
    h, w = int(size[0]), int(size[1])
    if torch.is_tensor(boxes) and boxes.dim() == 2:
        boxes = list(boxes.unsqueeze(1))
    boxes = [torch.as_tensor(b).reshape(-1, 4) for b in boxes]
    device = device if device is not None else (boxes[0].device if boxes else "cpu")
    ys = torch.arange(h, device=device).view(1, h, 1)
    xs = torch.arange(w, device=device).view(1, 1, w)
    out = torch.zeros(len(boxes), h, w, dtype=torch.bool, device=device)
    owner = torch.cat([torch.full((len(b),), i, dtype=torch.long) for i, b in enumerate(boxes)]).to(device)
    if owner.numel() == 0:
        return out
    allb = torch.cat(boxes).to(device).long()
    x0, y0, x1, y1 = (allb[:, j].view(-1, 1, 1) for j in range(4))
    inside = (xs >= x0) & (xs <= x1) & (ys >= y0) & (ys <= y1)  # (M, H, W)
    counts = torch.zeros(len(boxes), h, w, dtype=torch.int32, device=device)
    counts.index_add_(0, owner, inside.to(torch.int32))
    return counts > 0


def _component_box_masks(binary: torch.Tensor) -> torch.Tensor:
    """``(B, H, W)`` bool -> ``(B, H, W)`` bool: the union of the bounding boxes of the external contours
    (OpenCV, 8-connected), each box inclusive of its last row and column."""
    import cv2

    arr = binary.detach().to("cpu", torch.uint8).numpy() * 255
    out = np.zeros(arr.shape, dtype=bool)
    for i, img in enumerate(arr):
        contours, _ = cv2.findContours(np.ascontiguousarray(img), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        for c in contours:
            x, y, w, h = cv2.boundingRect(c)
            out[i, y:y + h, x:x + w] = True
    return torch.from_numpy(out).to(binary.device)


REGIONS = ("boxes", "pixels")


def localization_scores(maps: torch.Tensor, gt_masks: torch.Tensor, threshold: float = 0.5, region: str = "boxes",
                        eps: float = 1e-5) -> dict[str, torch.Tensor]:
    """Per-image pixel accuracy, IoU, Dice, precision and recall (fractions in [0, 1]), each ``(B,)`` float64.

    ``maps``: ``(B, H, W)`` in [0, 1] (min-max normalised); ``gt_masks``: ``(B, H, W)`` bool, the union of the GT
    boxes (:func:`boxes_to_mask`). Foreground = ``maps > threshold`` (strictly). ``region="boxes"`` (the authors'
    ``localization.py``) replaces the foreground by the union of the bounding boxes of its external contours;
    ``"pixels"`` scores the thresholded pixels as they are. The authors' boxes reach one pixel further right and
    down (``x + w`` inclusive); ours cover exactly the contour's pixels. Like theirs, every ratio is
    ``(a + eps) / (b + eps)``, so an empty prediction of an empty mask scores 1.
    """
    if region not in REGIONS:
        raise ValueError(f"region must be one of {REGIONS}, got {region!r}")
    if maps.dim() != 3 or gt_masks.shape != maps.shape or gt_masks.dtype != torch.bool:
        raise ValueError(f"maps (B, H, W) and gt_masks (B, H, W) bool must match; got {tuple(maps.shape)} and "
                         f"{tuple(gt_masks.shape)} {gt_masks.dtype}")
    pred = maps > threshold
    if region == "boxes":
        pred = _component_box_masks(pred)
    pred, gt = pred.flatten(1).double(), gt_masks.to(pred.device).flatten(1).double()
    tp = (pred * gt).sum(1)
    fp = (pred * (1 - gt)).sum(1)
    fn = ((1 - pred) * gt).sum(1)
    tn = ((1 - pred) * (1 - gt)).sum(1)
    return {
        "pixel_acc": (tp + tn + eps) / (tp + tn + fp + fn + eps),
        "iou": (tp + eps) / (tp + fp + fn + eps),
        "dice": (2 * tp + eps) / (2 * tp + fp + fn + eps),
        "precision": (tp + eps) / (tp + fp + eps),
        "recall": (tp + eps) / (tp + fn + eps),
    }


class AGCAMLocalization:
    """AG-CAM's localisation metrics over batches (the authors' ``localization.py``), in percent.

    ``accumulate(maps (B, H, W) in [0, 1], gt_boxes B x (K, 4), correct (B,) bool | None)``: images with
    ``correct == False`` (the classifier's top-1 is wrong) are skipped, as the authors do; ``None`` keeps all.
    ``compute()`` -> ``{"pixel_acc", "iou", "dice", "precision", "recall"}`` (means over the kept images x 100)
    and ``num_images``. ``threshold``: 0.5 in the paper; ``region``: see :func:`localization_scores`.
    """

    def __init__(self, threshold: float = 0.5, region: str = "boxes"):
        if not 0 <= threshold < 1:
            raise ValueError(f"threshold must be in [0, 1), got {threshold}")
        if region not in REGIONS:
            raise ValueError(f"region must be one of {REGIONS}, got {region!r}")
        self.threshold, self.region = float(threshold), region
        self.sums: dict[str, float] = {}
        self.num_images = 0

    def accumulate(self, maps: torch.Tensor, gt_boxes, correct=None) -> None:
        maps = maps.detach()
        if maps.dim() != 3 or not maps.is_floating_point():
            raise ValueError(f"maps must be (B, H, W) float in [0, 1], got {tuple(maps.shape)} {maps.dtype}")
        if maps.numel() and (not bool(torch.isfinite(maps).all()) or maps.min() < 0 or maps.max() > 1):
            raise ValueError("maps must be finite and in [0, 1] (min-max normalise them first)")
        gt = boxes_to_mask(gt_boxes, maps.shape[-2:], device=maps.device)
        if gt.shape[0] != maps.shape[0]:
            raise ValueError(f"{gt.shape[0]} box lists for {maps.shape[0]} maps")
        per_image = localization_scores(maps, gt, self.threshold, self.region)
        keep = torch.ones(maps.shape[0], dtype=torch.bool, device=maps.device)
        if correct is not None:
            keep = torch.as_tensor(correct, device=maps.device).reshape(-1).bool()
            if keep.numel() != maps.shape[0]:
                raise ValueError(f"correct has {keep.numel()} entries for {maps.shape[0]} maps")
        for k, v in per_image.items():
            self.sums[k] = self.sums.get(k, 0.0) + float(v[keep].sum())
        self.num_images += int(keep.sum())

    def compute(self) -> dict:
        if self.num_images == 0:
            raise RuntimeError("AGCAMLocalization.compute(): no image accumulated (or none predicted correctly)")
        out = {k: 100.0 * v / self.num_images for k, v in self.sums.items()}
        out["num_images"] = self.num_images
        return out


# ----------------------------------------------------------------------------------------------------------------
# ABPC: area between the perturbation curves
# ----------------------------------------------------------------------------------------------------------------


def removal_ranks(maps: torch.Tensor, most_relevant_first: bool) -> torch.Tensor:
    """``(B, H, W)`` -> ``(B, H*W)`` long: the step at which each pixel is removed (0 = first). Ties go to the lower
    flat index (stable sort), so the order is deterministic."""
    flat = maps.flatten(1)
    order = torch.argsort(-flat if most_relevant_first else flat, dim=1, stable=True)
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(flat.shape[1], device=flat.device).expand_as(order))
    return ranks


@torch.no_grad()
def perturbation_curves(prob_fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, maps: torch.Tensor,
                        targets, steps: int = ABPC_STEPS) -> tuple[torch.Tensor, torch.Tensor]:
    """MoRF and LeRF curves, ``((B, steps+1), (B, steps+1))`` float64 probabilities.

    ``prob_fn``: normalised images ``(M, 3, H, W)`` -> class probabilities ``(M, C)``. ``x``: ``(B, 3, H, W)``
    normalised input; ``maps``: ``(B, H, W)`` at the input size (any scale; only the order matters).
    At step ``i`` the ``k_i = floor(H*W*i/steps)`` most (MoRF) or least (LeRF) relevant pixels are set to 0 *in
    the normalised input* (the authors multiply the normalised tensor by a 0/1 mask: with mean = std = 0.5 this is
    mid-grey, with ImageNet mean/std the dataset-mean colour) and the probability of ``targets[b]`` is read.
    Step 0 (nothing removed) and step ``steps`` (everything removed) are shared by both curves.
    """
    if maps.dim() != 3 or x.dim() != 4 or maps.shape[0] != x.shape[0] or maps.shape[-2:] != x.shape[-2:]:
        raise ValueError(f"maps must be (B, H, W) at the input size of x {tuple(x.shape)}, got {tuple(maps.shape)}")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    targets = torch.as_tensor(targets, device=x.device).long().reshape(-1)
    b, hw = x.shape[0], x.shape[-2] * x.shape[-1]
    ranks = {True: removal_ranks(maps, True), False: removal_ranks(maps, False)}
    morf = torch.empty(b, steps + 1, dtype=torch.float64, device=x.device)
    lerf = torch.empty_like(morf)

    def probs(batch: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        p = prob_fn(batch)
        return p.gather(1, t[:, None])[:, 0].double()

    ends = probs(torch.cat([x, torch.zeros_like(x)]), torch.cat([targets, targets]))
    morf[:, 0] = lerf[:, 0] = ends[:b]
    morf[:, steps] = lerf[:, steps] = ends[b:]
    for i in range(1, steps):
        k = hw * i // steps
        keep = [(ranks[first] >= k).view(b, 1, *x.shape[-2:]).to(x.dtype) for first in (True, False)]
        p = probs(torch.cat([x * keep[0], x * keep[1]]), torch.cat([targets, targets]))
        morf[:, i], lerf[:, i] = p[:b], p[b:]
    return morf, lerf


def abpc(morf: torch.Tensor, lerf: torch.Tensor) -> torch.Tensor:
    """Per-image ABPC in percent, ``(B,)``: ``100 * mean_i (LeRF_i - MoRF_i)`` over the ``steps + 1`` points.

    The AG-CAM authors' definition (``ABPC.py``): the area under the least-relevant-first curve minus the area
    under the most-relevant-first curve, each area the plain mean of the probabilities at the removal fractions
    0, 0.1, ..., 1.0 (11 points for ``steps = 10``, no trapezoid). Higher is better: removing what the map calls
    relevant should hurt the prediction more than removing what it calls irrelevant.
    """
    return 100.0 * (lerf - morf).mean(dim=1)


class ABPCAccumulator:
    """ABPC over batches: ``accumulate(morf, lerf)`` with the curves of :func:`perturbation_curves`;
    ``compute()`` -> ``{"abpc", "auc_morf", "auc_lerf"}`` (percent, means over images), the mean curves and
    ``num_images``."""

    def __init__(self):
        self.morf_sum = None
        self.lerf_sum = None
        self.num_images = 0

    def accumulate(self, morf: torch.Tensor, lerf: torch.Tensor) -> None:
        m, l = morf.detach().double().sum(0).cpu(), lerf.detach().double().sum(0).cpu()
        self.morf_sum = m if self.morf_sum is None else self.morf_sum + m
        self.lerf_sum = l if self.lerf_sum is None else self.lerf_sum + l
        self.num_images += morf.shape[0]

    def compute(self) -> dict:
        if self.num_images == 0:
            raise RuntimeError("ABPCAccumulator.compute() called before any accumulate()")
        morf, lerf = self.morf_sum / self.num_images, self.lerf_sum / self.num_images
        return {"abpc": float(100 * (lerf - morf).mean()), "auc_morf": float(100 * morf.mean()),
                "auc_lerf": float(100 * lerf.mean()), "morf_curve": morf, "lerf_curve": lerf,
                "num_images": self.num_images}


# ----------------------------------------------------------------------------------------------------------------
# Evaluation over a dataset
# ----------------------------------------------------------------------------------------------------------------

VIT_METRIC_ORDER = ["top1_loc", "gt_known_loc", "maxboxacc_v2", "pxap", "pixel_acc", "iou", "dice", "abpc"]


def _branch_of(score: str) -> str:
    return SCORE_BRANCH.get(score, "")


@dataclass
class ViTReport:
    """Metrics per ``(method, score)`` (percent) and the softmax branch's top-1 accuracy; see :func:`evaluate_vit`."""

    top1_cls: float
    num_images: int
    metrics: dict = field(default_factory=dict)  # (method, score) -> {metric: value}
    curves: dict = field(default_factory=dict)   # (method, score) -> {"morf_curve", "lerf_curve"} (B-means)

    def table(self) -> pd.DataFrame:
        """One row per (method, score); columns ``method, score, branch`` then :data:`VIT_METRIC_ORDER`."""
        recs = [{"method": m, "score": s, "branch": _branch_of(s) or "none", **v} for (m, s), v in self.metrics.items()]
        df = pd.DataFrame(recs)
        return df[["method", "score", "branch"] + [c for c in VIT_METRIC_ORDER if c in df.columns]]

    def rows(self, *, dataset: str, backbone: str, setting: str, run_id: str = "", config: dict | None = None
             ) -> list[dict]:
        """Tidy rows (:mod:`dualcam_lib.results`); rollout's branch is ``""`` (class-agnostic); scores other than
        the two logits go into ``variant`` as ``score=<name>``."""
        rows = []
        for (m, s), values in self.metrics.items():
            branch = _branch_of(s)
            variant = "" if s in ("softmax_logit", "sigmoid_logit", ROLLOUT_SCORE) else f"score={s}"
            for metric, value in values.items():
                rows.append(make_row(dataset=dataset, backbone=backbone, method=m, branch=branch, variant=variant,
                                     metric=metric, value=value, setting=setting, run_id=run_id, config=config))
        rows.append(make_row(dataset=dataset, backbone=backbone, method="classifier", branch="softmax",
                             metric="top1_cls", value=self.top1_cls, setting=setting, run_id=run_id, config=config))
        return rows


def _batches(data, batch_size: int):
    return data.batches(batch_size) if hasattr(data, "batches") else iter(data)


def evaluate_vit(model, data, methods: Sequence[str] = ("agcam", "rollout", "gradcam"), scores=None, *,
                 batch_size: int = 64, abpc_images: int | None = None, abpc_steps: int = ABPC_STEPS,
                 threshold: float = 0.5, region: str = "boxes", correct_only: bool = True, wsol: bool = True,
                 pxap: bool | None = None, device: str | torch.device = "cpu") -> ViTReport:
    """Every method from every score on ``data`` (SyntheticSet-like or an iterable of WSOLBatch).

    Maps of the ground-truth class, upsampled bilinearly to the image size and min-max normalised (ReLU first, which
    changes only Grad-CAM: AG-CAM and rollout are non-negative). Per (method, score):
    our WSOL metrics -- MaxBoxAccV2, GT-known Loc, Top-1 Loc (:class:`~dualcam_lib.metrics.BoxAccuracy`; ``wsol=False``
    skips them, the slow part without numba) and PxAP where the data has masks -- and AG-CAM's -- pixel accuracy,
    IoU, Dice at ``threshold`` on the images the softmax branch classifies correctly (``correct_only``, as the
    authors), and ABPC on the first ``abpc_images`` images (all when None; 0 skips it) with the softmax branch's
    probability of the ground-truth class.
    Returns a :class:`ViTReport`.
    """
    split, _, heads = _parts(model)
    scores = _check_scores(scores, heads)
    device = torch.device(device)
    model = model.to(device)
    keys = [(m, s) for m in methods for s in ((ROLLOUT_SCORE,) if m == "rollout" else scores)]
    box = {k: BoxAccuracy() for k in keys}
    px = {k: PxAP() for k in keys}
    loc = {k: AGCAMLocalization(threshold, region) for k in keys}
    ab = {k: ABPCAccumulator() for k in keys}
    n_seen = n_correct = 0
    has_masks = False
    softmax_head = heads["softmax"]

    def prob_fn(z: torch.Tensor) -> torch.Tensor:
        return softmax_head(split.backbone(z)).softmax(-1)

    with _eval_mode(split.backbone, *heads.values()):
        for batch in _batches(data, batch_size):
            images, labels = batch.images.to(device), batch.labels.to(device)
            x = split.normalize(images)
            with torch.no_grad():
                correct = prob_fn(x).argmax(-1) == labels
            raw = vit_maps(model, x, labels, methods, scores)
            use_px = pxap if pxap is not None else batch.masks is not None
            has_masks |= bool(use_px)
            n_abpc = x.shape[0] if abpc_images is None else max(0, min(x.shape[0], abpc_images - n_seen))
            for k in keys:
                maps = postprocess(raw[k], size=images.shape[-2:], relu=True, mode="bilinear")
                if wsol:
                    box[k].accumulate(maps, batch.boxes, correct)
                if use_px:
                    px[k].accumulate(maps, batch.masks.to(device),
                                     None if batch.ignore is None else batch.ignore.to(device))
                loc[k].accumulate(maps, batch.boxes, correct if correct_only else None)
                if n_abpc:
                    ab[k].accumulate(*perturbation_curves(prob_fn, x[:n_abpc], maps[:n_abpc], labels[:n_abpc],
                                                          abpc_steps))
            n_seen += x.shape[0]
            n_correct += int(correct.sum())
    report = ViTReport(top1_cls=100.0 * n_correct / max(n_seen, 1), num_images=n_seen)
    for k in keys:
        v = {}
        if wsol:
            w = box[k].compute()
            v.update(top1_loc=w["top1_loc"], gt_known_loc=w["gt_known_loc"], maxboxacc_v2=w["maxboxacc_v2"])
        if has_masks:
            v["pxap"] = px[k].compute()["pxap"]
        v.update({m: loc[k].compute()[m] for m in ("pixel_acc", "iou", "dice")})
        if ab[k].num_images:
            a = ab[k].compute()
            v["abpc"] = a["abpc"]
            report.curves[k] = {"morf_curve": a["morf_curve"], "lerf_curve": a["lerf_curve"]}
        report.metrics[k] = {name: float(val) for name, val in v.items()}
    return report


# The AG-CAM paper's ImageNet results for AG-CAM on ViT-B/16 (Leem & Seo 2024; pixel accuracy, IoU, Dice at
# threshold 0.5, ABPC), in percent: reference values, from a different setting than the embedded data.
PAPER_AGCAM_IMAGENET = {"pixel_acc": 73.41, "iou": 52.12, "dice": 65.15, "abpc": 36.91}
