"""CAM methods behind one signature: ``method(ctx, clamp, **options) -> {score: (B, P, Q) raw signed map}``.

The engine (:mod:`dualcam_lib.cams.engine`) runs the model once and hands every method a :class:`CamContext`:
the target layer's activations, per-score gradients (gradient methods only) and callables that re-evaluate the
model on perturbed inputs (Score-CAM, Ablation-CAM). Every method returns one map per requested score.

``clamp[score]`` is the paper's negative-weight clamping (``max(0, w)`` on channel weights before the weighted
sum). Per method:

- CAM: clamps the head's weight row ``fc.weight[k]`` (the bias is ignored, as in CAM itself).
- Grad-CAM, XGrad-CAM, Ablation-CAM, Score-CAM: clamp their channel weights ``alpha``.
- Grad-CAM++: the weights are ReLU'd gradients times non-negative ``a_ij`` whenever the layer's activations are
  non-negative (post-ReLU CNN features), so the clamp is a no-op there, as the paper says; on signed activations
  (ViT tokens) ``a_ij`` can turn negative and the clamp keeps the "no negative channel weight" meaning.
- Layer-CAM: skipped; its per-pixel weights are already ``ReLU(gradient)`` (the paper's Layer-CAM exception).
- Eigen-CAM: class-agnostic, has no class weights; ignored.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

# Small constants taken from pytorch-grad-cam so the maps agree with it to float precision.
GRADCAMPP_EPS = 1e-6
XGRADCAM_EPS = 1e-7
SCORECAM_EPS = 1e-8


@dataclass
class CamContext:
    """What the engine gives a method. Shapes: B images, N channels, (P, Q) grid, C classes.

    ``activations``: ``(B, N, P, Q)`` target-layer output (detached). ``gradients``: score -> ``(B, N, P, Q)``
    d(score of the target class)/d(activations), filled for gradient methods only. ``targets``: ``(B,)`` long.
    ``scores``: the requested score names. ``images``: ``(B, 3, H, W)`` the model input.
    ``original_scores``: score -> ``(B,)`` the score values on the unperturbed input.
    ``head_input``: ``(B, N', P, Q)`` the head's input as maps (CAM); ``head_weight(score)`` -> ``(C, N')`` the
    ``fc.weight`` of that score's branch (raises a clear error when the head has none).
    ``score_images(images (M, 3, H, W), image_index (M,))`` -> score -> ``(M,)``: the full model on new images, the
    class of image ``image_index[m]``. ``score_channels_set(image_index (M,), channel (M,), value)`` -> score ->
    ``(M,)``: the model with target-layer channel ``channel[m]`` of image ``image_index[m]`` set to ``value``.
    """

    activations: torch.Tensor
    gradients: dict
    targets: torch.Tensor
    scores: tuple
    images: torch.Tensor
    original_scores: dict
    head_input: torch.Tensor | None
    head_weight: Callable[[str], torch.Tensor]
    score_images: Callable[[torch.Tensor, torch.Tensor], dict]
    score_channels_set: Callable[[torch.Tensor, torch.Tensor, float], dict]


@dataclass(frozen=True)
class CamMethod:
    """A registered method: ``fn(ctx, clamp: dict[str, bool], **options) -> dict[str, (B, P, Q)]``."""

    name: str
    fn: Callable
    needs_gradients: bool


METHODS: dict[str, CamMethod] = {}


def register(name: str, needs_gradients: bool):
    def deco(fn):
        METHODS[name] = CamMethod(name, fn, needs_gradients)
        return fn

    return deco


def get_method(name: str) -> CamMethod:
    """The registered method called ``name`` (``ValueError`` naming the choices otherwise)."""
    if name not in METHODS:
        raise ValueError(f"unknown CAM method {name!r}; expected one of {sorted(METHODS)}")
    return METHODS[name]


def weighted_sum(weights: torch.Tensor, activations: torch.Tensor, clamp: bool = False) -> torch.Tensor:
    """``sum_n w[b, n] * A[b, n]``: ``(B, N)`` weights, ``(B, N, P, Q)`` maps -> ``(B, P, Q)``;
    ``clamp`` zeroes negative weights first."""
    if clamp:
        weights = weights.clamp(min=0)
    return torch.einsum("bn,bnpq->bpq", weights, activations)


def _spatial_sum(t: torch.Tensor) -> torch.Tensor:
    return t.sum(dim=(2, 3))


@register("cam", needs_gradients=False)
def cam(ctx: CamContext, clamp: dict) -> dict:
    """CAM (Zhou et al. 2016): ``M = sum_n fc.weight[k, n] * F_n`` at the head's input; bias ignored."""
    out = {}
    for score in ctx.scores:
        if score not in ("softmax_logit", "sigmoid_logit"):
            raise ValueError(f"method 'cam' explains a branch's logit through its weights; score {score!r} is not "
                             "a logit (use 'softmax_logit' or 'sigmoid_logit', or a gradient method)")
        weight = ctx.head_weight(score)
        if ctx.head_input is None or weight.shape[1] != ctx.head_input.shape[1]:
            raise ValueError(f"method 'cam' needs the head's Linear to act on the feature channels directly "
                             f"(fc.in_features == channels); got fc weight {tuple(weight.shape)} for features "
                             f"{None if ctx.head_input is None else tuple(ctx.head_input.shape)}")
        rows = weight[ctx.targets].to(ctx.head_input.dtype)
        out[score] = weighted_sum(rows, ctx.head_input, clamp[score])
    return out


@register("gradcam", needs_gradients=True)
def gradcam(ctx: CamContext, clamp: dict) -> dict:
    """Grad-CAM (Selvaraju et al. 2017): ``alpha_n = mean_pq dS/dA_n``; ``M = sum_n alpha_n A_n``."""
    return {s: weighted_sum(ctx.gradients[s].mean(dim=(2, 3)), ctx.activations, clamp[s]) for s in ctx.scores}


@register("gradcampp", needs_gradients=True)
def gradcampp(ctx: CamContext, clamp: dict) -> dict:
    """Grad-CAM++ (Chattopadhay et al. 2018), closed form for an exponential score: with g = dS/dA,
    ``a = g^2 / (2 g^2 + sum_pq(A) g^3)``, ``alpha_n = sum_pq a * ReLU(g)`` (a = 0 where g = 0)."""
    a_sum = _spatial_sum(ctx.activations)[:, :, None, None]
    out = {}
    for s in ctx.scores:
        g = ctx.gradients[s]
        g2 = g * g
        a = g2 / (2 * g2 + a_sum * g2 * g + GRADCAMPP_EPS)
        a = torch.where(g != 0, a, torch.zeros_like(a))
        out[s] = weighted_sum(_spatial_sum(g.clamp(min=0) * a), ctx.activations, clamp[s])
    return out


@register("xgradcam", needs_gradients=True)
def xgradcam(ctx: CamContext, clamp: dict) -> dict:
    """XGrad-CAM (Fu et al. 2020): ``alpha_n = sum_pq g * A_n / sum_pq A_n``."""
    a_sum = _spatial_sum(ctx.activations)[:, :, None, None]
    return {s: weighted_sum(_spatial_sum(ctx.gradients[s] * ctx.activations / (a_sum + XGRADCAM_EPS)),
                            ctx.activations, clamp[s]) for s in ctx.scores}


@register("layercam", needs_gradients=True)
def layercam(ctx: CamContext, clamp: dict) -> dict:
    """Layer-CAM (Jiang et al. 2021): ``M = sum_n ReLU(g_n) * A_n`` per pixel; clamping does not apply."""
    return {s: (ctx.gradients[s].clamp(min=0) * ctx.activations).sum(dim=1) for s in ctx.scores}


def _flat_pairs(batch: int, channels: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    image_index = torch.arange(batch, device=device).repeat_interleave(channels)
    channel = torch.arange(channels, device=device).repeat(batch)
    return image_index, channel


@register("scorecam", needs_gradients=False)
def scorecam(ctx: CamContext, clamp: dict, batch_size: int = 64, channel_softmax: bool = True) -> dict:
    """Score-CAM (Wang et al. 2020) as pytorch-grad-cam computes it: each channel, upsampled bilinearly
    (``align_corners=True``) and min-maxed to [0, 1], masks the input; ``alpha_n`` = the score on the masked
    input, softmax-ed over channels when ``channel_softmax``. ``batch_size``: masked images per forward pass.
    All requested scores (both branches) come from the same forward passes."""
    if batch_size < 1:
        raise ValueError(f"scorecam batch_size must be >= 1, got {batch_size}")
    acts, images = ctx.activations, ctx.images
    b, n = acts.shape[:2]
    size = images.shape[-2:]
    image_index, channel = _flat_pairs(b, n, acts.device)
    values = {s: [] for s in ctx.scores}
    for start in range(0, b * n, batch_size):
        idx, ch = image_index[start:start + batch_size], channel[start:start + batch_size]
        masks = F.interpolate(acts[idx, ch][:, None], size=size, mode="bilinear", align_corners=True)
        low = masks.amin(dim=(2, 3), keepdim=True)
        high = masks.amax(dim=(2, 3), keepdim=True)
        masks = (masks - low) / (high - low + SCORECAM_EPS)
        scored = ctx.score_images(images[idx] * masks.to(images.dtype), idx)
        for s in ctx.scores:
            values[s].append(scored[s])
    out = {}
    for s in ctx.scores:
        weights = torch.cat(values[s]).view(b, n).to(acts.dtype)
        if channel_softmax:
            weights = weights.softmax(dim=1)
        out[s] = weighted_sum(weights, acts, clamp[s])
    return out


@register("ablationcam", needs_gradients=False)
def ablationcam(ctx: CamContext, clamp: dict, batch_size: int = 64, ablation_value: float = 0.0) -> dict:
    """Ablation-CAM (Desai & Ramaswamy 2020): set channel n of the target layer to ``ablation_value`` and
    re-score; ``alpha_n = (S - S_n) / S`` (as pytorch-grad-cam; a score S = 0 gives non-finite weights, and a
    negative S flips every weight's sign). For ViT tokens channel n is set in every token, prefix tokens
    included (pytorch-grad-cam's ViT ablation). ``batch_size``: ablated copies per forward pass."""
    if batch_size < 1:
        raise ValueError(f"ablationcam batch_size must be >= 1, got {batch_size}")
    acts = ctx.activations
    b, n = acts.shape[:2]
    image_index, channel = _flat_pairs(b, n, acts.device)
    values = {s: [] for s in ctx.scores}
    for start in range(0, b * n, batch_size):
        scored = ctx.score_channels_set(image_index[start:start + batch_size], channel[start:start + batch_size],
                                        ablation_value)
        for s in ctx.scores:
            values[s].append(scored[s])
    out = {}
    for s in ctx.scores:
        ablated = torch.cat(values[s]).view(b, n).to(acts.dtype)
        original = ctx.original_scores[s].to(acts.dtype)[:, None]
        out[s] = weighted_sum((original - ablated) / original, acts, clamp[s])
    return out


def first_principal_projection(activations: torch.Tensor) -> torch.Tensor:
    """``(B, N, P, Q) -> (B, P, Q)``: each position's centred activation vector projected on the first right
    singular vector; the sign is fixed so the largest-magnitude value is positive (SVD's sign is arbitrary)."""
    b, n, p, q = activations.shape
    x = torch.nan_to_num(activations.float()).flatten(2).transpose(1, 2)  # (B, PQ, N)
    x = x - x.mean(dim=1, keepdim=True)
    _, _, vh = torch.linalg.svd(x, full_matrices=False)
    proj = torch.einsum("bkn,bn->bk", x, vh[:, 0])
    flip = proj.amin(dim=1).abs() > proj.amax(dim=1).abs()
    proj = torch.where(flip[:, None], -proj, proj)
    return proj.view(b, p, q).to(activations.dtype)


@register("eigencam", needs_gradients=False)
def eigencam(ctx: CamContext, clamp: dict) -> dict:
    """Eigen-CAM (Muhammad & Yeasin 2020): the first principal component of the activations. Class-agnostic:
    every score gets the same map; clamping has no weights to act on."""
    proj = first_principal_projection(ctx.activations)
    return {s: proj for s in ctx.scores}
