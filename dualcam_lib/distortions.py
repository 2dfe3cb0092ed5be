"""The paper's two softmax distortions as head edits that leave every softmax probability unchanged.

For a GAP + Linear head with weights ``W (C, N)`` (Oh & Noh 2025, Sec. 3.2):

- :func:`shift_channel`: ``W[:, i] += delta`` for every class (Eq. 9). Every logit moves by ``delta * mean(F_i)``,
  so softmax is unchanged, while every class's CAM becomes ``M_k + delta * F_i``.
- :func:`sign_collapse`: ``W -= delta`` for every channel and class (Eq. 10). Every logit moves by
  ``-delta * sum_i mean(F_i)``; for a large ``delta`` every weight turns negative and the CAM flips.
- :func:`shift_logits`: ``b += c``, a constant added to every logit (Eq. 8); CAM ignores the bias.

Each returns a new head (the input is not modified); wrap it with :func:`dualcam_lib.analysis.with_head`.
"""
from __future__ import annotations

import copy

import torch
from torch import nn


def _linear(head: nn.Module) -> nn.Linear:
    fc = getattr(head, "fc", head)
    if not isinstance(fc, nn.Linear):
        raise TypeError(f"expected a head with a Linear `.fc` (GAP + Linear), got {type(head).__name__}")
    return fc


def shift_channel(head: nn.Module, channel: int, delta: float) -> nn.Module:
    """A copy of ``head`` with ``delta`` added to channel ``channel``'s weight for every class (Eq. 9)."""
    new = copy.deepcopy(head)
    fc = _linear(new)
    if not 0 <= channel < fc.in_features:
        raise ValueError(f"channel must be in [0, {fc.in_features}), got {channel}")
    with torch.no_grad():
        fc.weight[:, channel] += delta
    return new


def sign_collapse(head: nn.Module, delta: float) -> nn.Module:
    """A copy of ``head`` with ``delta`` subtracted from every weight (Eq. 10)."""
    new = copy.deepcopy(head)
    with torch.no_grad():
        _linear(new).weight -= delta
    return new


def shift_logits(head: nn.Module, constant: float) -> nn.Module:
    """A copy of ``head`` whose bias is raised by ``constant``: the same constant on every logit (Eq. 8)."""
    new = copy.deepcopy(head)
    fc = _linear(new)
    if fc.bias is None:
        raise ValueError("shift_logits needs a head with a bias")
    with torch.no_grad():
        fc.bias += constant
    return new


def gap_logits64(head: nn.Module, features: torch.Tensor) -> torch.Tensor:
    """The GAP + Linear head's logits computed in float64: ``(B, N, P, Q) -> (B, C)`` float64.

    Used to show that distorted heads give the *same* probabilities, without float32 rounding blurring the point.
    """
    fc = _linear(head)
    pooled = features.detach().double().mean(dim=(2, 3))
    bias = fc.bias.detach().double() if fc.bias is not None else 0.0
    return pooled @ fc.weight.detach().double().T + bias
