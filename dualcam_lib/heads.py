"""The dual-branch wrapper: one frozen backbone, the frozen softmax head, and a trainable sigmoid head.

``DualBranchModel(split)`` replicates ``split.head`` into a sigmoid branch of the same architecture and returns both
branches' logits and the feature maps from ONE backbone pass.
"""
from __future__ import annotations

import copy
from typing import NamedTuple

import torch
from torch import nn

from .models import SplitClassifier

HEAD_INITS = ("fresh", "default", "copy")


class DualOutput(NamedTuple):
    """``features``: backbone output (``(B, N, P, Q)`` or ViT tokens);
    ``softmax_logits`` / ``sigmoid_logits``: ``(B, C)``."""

    features: torch.Tensor
    softmax_logits: torch.Tensor
    sigmoid_logits: torch.Tensor


def replicate_head(head: nn.Module, init: str = "fresh", std: float = 0.01) -> nn.Module:
    """A copy of ``head`` with the same architecture (pooling, dropout, norms and every Linear/conv layer).

    ``init``: ``"fresh"`` re-initialises every Linear / conv with weights ~ N(0, ``std``) and zero bias (the
    paper's released code); ``"default"`` uses PyTorch's default ``reset_parameters`` (Kaiming-uniform weights, the
    paper's text); ``"copy"`` keeps the softmax head's weights as the starting point. In ``"fresh"`` and ``"default"``
    any other layer with parameters or statistics (LayerNorm, BatchNorm) is reset to its PyTorch default too, so no
    trained value of the softmax head leaks into the new branch.
    """
    if init not in HEAD_INITS:
        raise ValueError(f"head init must be one of {HEAD_INITS}, got {init!r}")
    if std <= 0:
        raise ValueError(f"init_std must be > 0, got {std!r}")
    new = copy.deepcopy(head)
    if init == "copy":
        return new
    for m in new.modules():
        if init == "fresh" and isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d)):
            nn.init.normal_(m.weight, 0.0, std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif hasattr(m, "reset_parameters"):
            m.reset_parameters()
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
    return new


def freeze(module: nn.Module) -> nn.Module:
    """Set ``requires_grad=False`` on every parameter and put the module in eval mode; returns it."""
    for p in module.parameters():
        p.requires_grad_(False)
    return module.eval()


class DualBranchModel(nn.Module):
    """Backbone + frozen softmax head + trainable sigmoid head.

    ``forward(x)`` with ``x`` ``(B, 3, H, W)`` returns :class:`DualOutput`. ``train(True)`` only puts the sigmoid head
    in train mode: the backbone (batch-norm statistics included) and the softmax head always stay in eval mode, and
    their parameters have ``requires_grad=False`` (an optimiser over ``parameters()`` leaves them unchanged, weight
    decay included, because they never get a gradient). A new model starts in eval mode, like a loaded pretrained
    model; call ``.train()`` before fitting the sigmoid head.

    The wrapper shares (and freezes) ``split.backbone`` and ``split.head``; the sigmoid head is
    :func:`replicate_head` of ``split.head`` (``init``, ``init_std``) unless ``sigmoid_head`` is given. Both heads read
    the same feature tensor, so heads must not modify their input in place (none of :mod:`dualcam_lib.models` does).
    """

    def __init__(self, split: SplitClassifier, init: str = "fresh", init_std: float = 0.01,
                 sigmoid_head: nn.Module | None = None):
        super().__init__()
        self.split = split
        self.backbone = freeze(split.backbone)
        self.softmax_head = freeze(split.head)
        self.sigmoid_head = sigmoid_head if sigmoid_head is not None else replicate_head(split.head, init, init_std)
        for p in self.sigmoid_head.parameters():
            p.requires_grad_(True)
        self.head_init = init
        self.eval()

    @property
    def num_classes(self) -> int:
        return self.split.num_classes

    def train(self, mode: bool = True):
        self.training = mode
        self.backbone.eval()
        self.softmax_head.eval()
        self.sigmoid_head.train(mode)
        return self

    def trainable_parameters(self) -> list[nn.Parameter]:
        """The parameters training should update: the sigmoid head's (everything else is frozen)."""
        return [p for p in self.sigmoid_head.parameters() if p.requires_grad]

    def heads(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Both heads on given features: ``features -> ((B, C) softmax logits, (B, C) sigmoid logits)``."""
        return self.softmax_head(features), self.sigmoid_head(features)

    def forward(self, x: torch.Tensor) -> DualOutput:
        """``(B, 3, H, W)`` normalised images -> :class:`DualOutput` (features, ``(B, C)`` softmax-branch logits,
        ``(B, C)`` sigmoid-branch logits), from one backbone pass."""
        features = self.backbone(x)
        soft, sig = self.heads(features)
        return DualOutput(features, soft, sig)


def restrict_classes(split, rows) -> "SplitClassifier":
    """A classifier over a subset of ``split``'s classes: the head's last Linear layer keeps only ``rows``.

    ``rows``: the original class index of each new class (e.g. a 10-class ImageNet subset's ``imagenet_index``).
    Backbone and the other head layers are shared, not copied; the kept weights and biases are copied unchanged, so
    the new head's logits are exactly the selected columns of the old head's: ``(B, C) -> (B, len(rows))``.
    """
    import dataclasses

    rows = [int(r) for r in rows]
    last = [m for m in split.head.modules() if isinstance(m, nn.Linear)]
    if not last:
        raise ValueError(f"restrict_classes: {split.name}'s head {type(split.head).__name__} has no Linear layer")
    fc = last[-1]
    if not rows or min(rows) < 0 or max(rows) >= fc.out_features or len(set(rows)) != len(rows):
        raise ValueError(f"restrict_classes: rows must be distinct class indices in [0, {fc.out_features}), got {rows}")
    head = copy.copy(split.head)  # shallow: every layer but the last Linear stays shared
    head._modules = dict(split.head._modules)
    small = nn.Linear(fc.in_features, len(rows), bias=fc.bias is not None)
    with torch.no_grad():
        small.weight.copy_(fc.weight[rows])
        if fc.bias is not None:
            small.bias.copy_(fc.bias[rows])
    _replace_module(head, fc, small)
    meta = {**split.meta, "restricted_to": rows}
    return dataclasses.replace(split, head=head, num_classes=len(rows), meta=meta)


def _replace_module(root: nn.Module, old: nn.Module, new: nn.Module) -> None:
    # Find ``old`` among root's descendants (copying each container on the path, so the original head is untouched).
    for name, child in list(root._modules.items()):
        if child is old:
            root._modules[name] = new
            return
        if child is not None and any(m is old for m in child.modules()):
            clone = copy.copy(child)
            clone._modules = dict(child._modules)
            root._modules[name] = clone
            _replace_module(clone, old, new)
            return
    raise ValueError("module to replace not found")
