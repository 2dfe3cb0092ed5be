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
    """``features``: backbone output (``(B, N, P, Q)`` or ViT tokens); ``softmax_logits``/``sigmoid_logits``: ``(B, C)``."""

    features: torch.Tensor
    softmax_logits: torch.Tensor
    sigmoid_logits: torch.Tensor


def replicate_head(head: nn.Module, init: str = "fresh", std: float = 0.01) -> nn.Module:
    """A copy of ``head`` with the same architecture.

    ``init``: ``"fresh"`` re-initialises every Linear / 1x1 conv with weights ~ N(0, ``std``) and zero bias (the
    paper's released code); ``"default"`` uses PyTorch's default ``reset_parameters``; ``"copy"`` keeps the softmax
    head's weights as the starting point.
    """
    if init not in HEAD_INITS:
        raise ValueError(f"head init must be one of {HEAD_INITS}, got {init!r}")
    new = copy.deepcopy(head)
    if init == "copy":
        return new
    for m in new.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            if init == "fresh":
                nn.init.normal_(m.weight, 0.0, std)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            else:
                m.reset_parameters()
    return new


def freeze(module: nn.Module) -> nn.Module:
    """Set ``requires_grad=False`` on every parameter and put the module in eval mode; returns it."""
    for p in module.parameters():
        p.requires_grad_(False)
    return module.eval()


class DualBranchModel(nn.Module):
    """Backbone + frozen softmax head + trainable sigmoid head.

    ``forward(x)`` with ``x`` ``(B, 3, H, W)`` returns :class:`DualOutput`. ``train(True)`` only puts the sigmoid head
    in train mode: the backbone (batch-norm statistics included) and the softmax head always stay in eval mode.
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

    @property
    def num_classes(self) -> int:
        return self.split.num_classes

    def train(self, mode: bool = True):
        self.training = mode
        self.backbone.eval()
        self.softmax_head.eval()
        self.sigmoid_head.train(mode)
        return self

    def heads(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Both heads on given features: ``features -> ((B, C) softmax logits, (B, C) sigmoid logits)``."""
        return self.softmax_head(features), self.sigmoid_head(features)

    def forward(self, x: torch.Tensor) -> DualOutput:
        features = self.backbone(x)
        soft, sig = self.heads(features)
        return DualOutput(features, soft, sig)
