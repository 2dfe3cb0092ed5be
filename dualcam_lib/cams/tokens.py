"""Vision Transformer token sequences as feature maps: ``(B, prefix + P*Q, D) <-> (B, D, P, Q)``.

The CAM engine calls :func:`tokens_to_maps` on every token activation and gradient, so nobody has to write a
``reshape_transform`` by hand. The patch grid ``(P, Q)`` comes from, in order: an explicit ``grid``; the model
(timm's ``patch_embed.grid_size``, or ``patch_embed.patch_size`` with the image size for dynamic-size inputs); a
square root of the patch-token count. When none of these fits, the error says what to pass.
"""
from __future__ import annotations

import math

import torch
from torch import nn


def _pair(value) -> tuple[int, int] | None:
    if value is None:
        return None
    if isinstance(value, int):
        return (value, value)
    value = tuple(int(v) for v in value)
    return value if len(value) == 2 else None


def _model_grids(model: nn.Module, image_size: tuple[int, int] | None) -> list[tuple[int, int]]:
    """Candidate grids the model itself declares (timm-style ``patch_embed``)."""
    grids = []
    for module in model.modules():
        grid = _pair(getattr(module, "grid_size", None))
        if grid is not None:
            grids.append(grid)
        patch = _pair(getattr(module, "patch_size", None))
        if patch is not None and image_size is not None and patch[0] > 0 and patch[1] > 0:
            grids.append((image_size[0] // patch[0], image_size[1] // patch[1]))
    return grids


def find_grid(num_patch_tokens: int, model: nn.Module | None = None, grid=None,
              image_size: tuple[int, int] | None = None) -> tuple[int, int]:
    """The patch grid ``(P, Q)`` with ``P * Q == num_patch_tokens``.

    ``grid``: an explicit ``(P, Q)`` (e.g. ``SplitClassifier.grid``); used when it fits the token count.
    ``model``: searched for ``grid_size`` / ``patch_size`` attributes (timm's ``PatchEmbed``).
    ``image_size``: ``(H, W)`` of the input, for models that accept several image sizes.
    Falls back to a square grid when ``num_patch_tokens`` is a perfect square; raises ``ValueError`` otherwise.
    """
    if num_patch_tokens <= 0:
        raise ValueError(f"no patch tokens to arrange in a grid (got {num_patch_tokens}); "
                         "check num_prefix_tokens against the token count")
    candidates = []
    explicit = _pair(grid)
    if grid is not None and explicit is None:
        raise ValueError(f"grid must be a pair (P, Q), got {grid!r}")
    if explicit is not None:
        candidates.append(explicit)
    if model is not None:
        candidates.extend(_model_grids(model, image_size))
    for cand in candidates:
        if cand[0] * cand[1] == num_patch_tokens:
            return cand
    side = math.isqrt(num_patch_tokens)
    if side * side == num_patch_tokens:
        return (side, side)
    raise ValueError(
        f"cannot arrange {num_patch_tokens} patch tokens in a grid: no declared grid fits "
        f"(tried {candidates or 'none'}) and {num_patch_tokens} is not a perfect square; "
        "set SplitClassifier.grid=(P, Q) or check SplitClassifier.num_prefix_tokens")


def tokens_to_maps(tokens: torch.Tensor, grid: tuple[int, int], num_prefix_tokens: int = 0) -> torch.Tensor:
    """``(B, prefix + P*Q, D)`` tokens -> ``(B, D, P, Q)`` maps, dropping the ``num_prefix_tokens`` CLS/register
    tokens."""
    if tokens.dim() != 3:
        raise ValueError(f"tokens must be (B, T, D), got shape {tuple(tokens.shape)}")
    b, t, d = tokens.shape
    p, q = grid
    if t - num_prefix_tokens != p * q:
        raise ValueError(f"{t} tokens minus {num_prefix_tokens} prefix tokens do not fill a {p}x{q} grid")
    return tokens[:, num_prefix_tokens:].reshape(b, p, q, d).permute(0, 3, 1, 2)


def as_feature_maps(activation: torch.Tensor, model: nn.Module | None = None, grid=None,
                    num_prefix_tokens: int = 0, image_size: tuple[int, int] | None = None) -> torch.Tensor:
    """Any supported layer output as ``(B, N, P, Q)``: CNN maps pass through, ViT tokens are arranged on their grid."""
    if activation.dim() == 4:
        return activation
    if activation.dim() == 3:
        found = find_grid(activation.shape[1] - num_prefix_tokens, model, grid, image_size)
        return tokens_to_maps(activation, found, num_prefix_tokens)
    raise ValueError(f"the target layer's output must be (B, N, P, Q) maps or (B, T, D) tokens, "
                     f"got shape {tuple(activation.shape)}")
