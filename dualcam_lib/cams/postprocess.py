"""Turning raw signed CAMs ``(B, P, Q)`` into images ``(B, H, W)`` in [0, 1], one explicit step at a time.

Steps, in order: optional ReLU, optional upsampling, optional per-image min-max to [0, 1] (a constant map becomes
all zeros, as in wsolevaluation's ``normalize_scoremap``).

``align_corners=False`` for bilinear and bicubic: pixel centres sit at half-integer positions, which is what
OpenCV's ``cv2.resize`` (used by wsolevaluation and pytorch-grad-cam) does; torch's bicubic kernel uses the same
coefficient as OpenCV (A = -0.75), so upsampled maps agree with ``cv2.resize`` to float precision.

Min-max runs AFTER upsampling (wsolevaluation's order), so bicubic overshoot beyond the map's range is absorbed by
the normalisation. The result is still clamped to [0, 1] afterwards: ``(v - min) / (max - min)`` can land one ulp
outside [0, 1], and metrics validate their input range. Without normalisation, a ReLU'd map that is upsampled
bicubically can ring below 0; ``relu=True`` then clamps it at 0 again so "ReLU" still means "no negative values".
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

MODES = ("nearest", "bilinear", "bicubic", "area")

# What the paper's code does on each path (see ../shared/DESIGN.md, "Map post-processing"): the CAM path follows
# wsolevaluation (no ReLU, bicubic), the gradient path follows pytorch-grad-cam (ReLU, bilinear).
_CAM_PATH = {"relu": False, "mode": "bicubic", "normalize": True}
_GRADIENT_PATH = {"relu": True, "mode": "bilinear", "normalize": True}
_PATH_OF_METHOD = {"cam": _CAM_PATH}
for _name in ("gradcam", "gradcampp", "xgradcam", "layercam", "scorecam", "eigencam", "ablationcam"):
    _PATH_OF_METHOD[_name] = _GRADIENT_PATH


def paper_postprocess(method: str) -> dict:
    """Keyword arguments for :func:`postprocess` that follow the paper's code for ``method``.

    ``"cam"`` -> ``relu=False, mode="bicubic"``; every gradient/perturbation method -> ``relu=True, mode="bilinear"``;
    both with ``normalize=True``. Use as ``postprocess(maps, size, **paper_postprocess(method))``.
    """
    if method not in _PATH_OF_METHOD:
        raise ValueError(f"unknown CAM method {method!r}; expected one of {sorted(_PATH_OF_METHOD)}")
    return dict(_PATH_OF_METHOD[method])


def minmax_normalize(maps: torch.Tensor) -> torch.Tensor:
    """Per-image min-max: ``(B, H, W) -> (B, H, W)`` in [0, 1]; a constant or non-finite map becomes all zeros."""
    flat = maps.flatten(1)
    finite = torch.isfinite(flat).all(dim=1)
    flat = torch.where(finite[:, None], flat, torch.zeros_like(flat))
    low = flat.min(dim=1, keepdim=True).values
    span = flat.max(dim=1, keepdim=True).values - low
    constant = span <= 0
    out = (flat - low) / torch.where(constant, torch.ones_like(span), span)
    out = torch.where(constant, torch.zeros_like(out), out).clamp_(0.0, 1.0)
    return out.view_as(maps)


def postprocess(maps: torch.Tensor, size: tuple[int, int] | None = None, relu: bool = True, mode: str = "bilinear",
                normalize: bool = True) -> torch.Tensor:
    """Raw CAMs ``(B, P, Q)`` -> ``(B, H, W)`` float32 on the same device.

    ``size``: output ``(H, W)``; ``None`` keeps the feature resolution. ``relu``: drop negative evidence first.
    ``mode``: ``"bilinear"`` | ``"bicubic"`` | ``"nearest"`` | ``"area"`` (``align_corners=False``).
    ``normalize``: per-image min-max to [0, 1], constant maps -> zeros.
    """
    if maps.dim() != 3:
        raise ValueError(f"maps must be (B, P, Q), got shape {tuple(maps.shape)}")
    if mode not in MODES:
        raise ValueError(f"postprocess mode must be one of {MODES}, got {mode!r}")
    out = maps.float()
    if relu:
        out = out.clamp(min=0)
    if size is not None:
        size = (int(size[0]), int(size[1]))
        if tuple(out.shape[-2:]) != size:
            corners = False if mode in ("bilinear", "bicubic") else None
            out = F.interpolate(out[:, None], size=size, mode=mode, align_corners=corners)[:, 0]
            if relu and mode == "bicubic":
                out = out.clamp(min=0)  # bicubic ringing can undershoot 0 next to steep edges
    if normalize:
        out = minmax_normalize(out)
    return out
