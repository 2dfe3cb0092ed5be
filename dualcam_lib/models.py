"""Classifiers cut at their CAM feature layer: ``backbone`` (image -> features) and ``head`` (features -> logits).

Every architecture the library supports is built by :func:`build_classifier` and returned as a
:class:`SplitClassifier`, which knows its feature layer, its head and its input normalisation. Heads
include their pooling, so ``head(backbone(x))`` equals the original model's logits exactly.

Feature conventions:
- CNN: ``backbone(x)`` is ``(B, N, P, Q) float``, the output of the CAM target layer.
- ViT: ``backbone(x)`` is ``(B, prefix + P*Q, D) float`` tokens after the final norm; ``grid`` gives (P, Q).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
HALF_MEAN = (0.5, 0.5, 0.5)  # mean = std = 0.5: inputs scaled to [-1, 1]
HALF_STD = (0.5, 0.5, 0.5)


class GapLinearHead(nn.Module):
    """Global average pooling then one Linear layer: ``(B, N, P, Q) -> (B, C)``. CAM applies directly (``fc.weight``)."""

    def __init__(self, in_features: int, num_classes: int, dropout: float = 0.0):
        super().__init__()
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.fc = nn.Linear(in_features, num_classes)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.fc(self.dropout(features.mean(dim=(2, 3))))


class PoolMLPHead(nn.Module):
    """A pooling step, flatten, then an arbitrary MLP (e.g. VGG-16's 3-layer ``classifier``): ``(B, N, P, Q) -> (B, C)``."""

    def __init__(self, pool: nn.Module, mlp: nn.Module):
        super().__init__()
        self.pool = pool
        self.mlp = mlp

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.mlp(torch.flatten(self.pool(features), 1))


class TokenHead(nn.Module):
    """ViT head on tokens ``(B, prefix + T, D) -> (B, C)``: the CLS token (or the mean of patch tokens) then Linear."""

    def __init__(self, in_features: int, num_classes: int, pool: str = "cls", num_prefix_tokens: int = 1):
        super().__init__()
        if pool not in ("cls", "mean"):
            raise ValueError(f"TokenHead pool must be 'cls' or 'mean', got {pool!r}")
        self.pool = pool
        self.num_prefix_tokens = num_prefix_tokens
        self.fc = nn.Linear(in_features, num_classes)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = tokens[:, 0] if self.pool == "cls" else tokens[:, self.num_prefix_tokens:].mean(dim=1)
        return self.fc(x)


@dataclass
class SplitClassifier:
    """A classifier split at its CAM feature layer.

    ``backbone``: ``(B, 3, H, W) -> features``; ``head``: ``features -> (B, C) logits``.
    ``mean``/``std``: the input normalisation the weights expect (applied by the data pipeline, not the model).
    ``kind``: ``"cnn"`` or ``"vit"``; for ViTs ``grid`` is the patch grid (P, Q) and ``num_prefix_tokens`` the
    number of CLS/register tokens before the patch tokens.
    """

    name: str
    backbone: nn.Module
    head: nn.Module
    num_classes: int
    mean: tuple = IMAGENET_MEAN
    std: tuple = IMAGENET_STD
    input_size: int = 224
    kind: str = "cnn"
    grid: tuple | None = None
    num_prefix_tokens: int = 0
    feature_layer: str = ""
    meta: dict = field(default_factory=dict)

    def as_module(self) -> nn.Sequential:
        """The whole classifier as one module: ``(B, 3, H, W) -> (B, C)``."""
        return nn.Sequential(self.backbone, self.head)

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` RGB in [0, 1] -> normalised input for this model (same device and dtype)."""
        mean = torch.as_tensor(self.mean, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
        std = torch.as_tensor(self.std, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
        return (images - mean) / std


# name -> builder(num_classes, weights, **kwargs) -> SplitClassifier; filled by @register below and in other modules.
ARCHITECTURES: dict[str, Callable[..., SplitClassifier]] = {}


def register(name: str):
    def deco(fn):
        ARCHITECTURES[name] = fn
        return fn

    return deco


def build_classifier(name: str, num_classes: int = 1000, weights: str | None = None, **kwargs) -> SplitClassifier:
    """Build a supported classifier by name and split it.

    ``weights``: ``None`` (random init), ``"default"`` (torchvision's / the package's pretrained weights), or a path
    to a local state_dict of the *original* model (loaded with ``torch.load(..., weights_only=True)``, strict).
    """
    if name not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {name!r}; expected one of {sorted(ARCHITECTURES)}")
    return ARCHITECTURES[name](num_classes=num_classes, weights=weights, **kwargs)


def load_state_dict_file(model: nn.Module, path, arch: str) -> None:
    """Load a local state_dict into ``model`` (strict, ``weights_only=True``) with an error that names the mismatch."""
    from pathlib import Path

    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"weights file for {arch!r} not found: '{p}'")
    state = torch.load(p, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise RuntimeError(f"weights file '{p}' does not fit architecture {arch!r}: {e}") from None


# ----------------------------------------------------------------------------------------------------------------
# Small CNN for the embedded synthetic data
# ----------------------------------------------------------------------------------------------------------------


class SmallCNNBackbone(nn.Module):
    """Four conv blocks, two of them stride-2 downsamples: ``(B, 3, H, W) -> (B, width*4, H/4, W/4)``."""

    def __init__(self, width: int = 32):
        super().__init__()

        def block(cin, cout, stride):
            return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))

        self.features = nn.Sequential(
            block(3, width, 1),
            block(width, width * 2, 2),
            block(width * 2, width * 4, 2),
            block(width * 4, width * 4, 1),
        )
        self.out_channels = width * 4

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)


@register("small_cnn")
def _small_cnn(num_classes: int = 10, weights=None, width: int = 32, input_size: int = 64, **_) -> SplitClassifier:
    backbone = SmallCNNBackbone(width)
    head = GapLinearHead(backbone.out_channels, num_classes)
    split = SplitClassifier("small_cnn", backbone, head, num_classes, mean=HALF_MEAN, std=HALF_STD,
                            input_size=input_size, feature_layer="features[-1]")
    if weights not in (None, "default"):
        load_state_dict_file(split.as_module(), weights, "small_cnn")
    return split


# ----------------------------------------------------------------------------------------------------------------
# torchvision CNNs
# ----------------------------------------------------------------------------------------------------------------


def _tv_weights(enum_cls, weights):
    return enum_cls.DEFAULT if weights == "default" else None


def _make_resnet(arch: str):
    def build(num_classes: int = 1000, weights=None, **_) -> SplitClassifier:
        import torchvision

        enum = {"resnet18": torchvision.models.ResNet18_Weights, "resnet50": torchvision.models.ResNet50_Weights}[arch]
        model = getattr(torchvision.models, arch)(weights=_tv_weights(enum, weights))
        if weights not in (None, "default"):
            load_state_dict_file(model, weights, arch)
        if num_classes != model.fc.out_features:
            model.fc = nn.Linear(model.fc.in_features, num_classes)
        backbone = nn.Sequential(model.conv1, model.bn1, model.relu, model.maxpool,
                                 model.layer1, model.layer2, model.layer3, model.layer4)
        head = GapLinearHead(model.fc.in_features, num_classes)
        head.fc = model.fc
        return SplitClassifier(arch, backbone, head, num_classes, feature_layer="layer4[-1]")

    return build


ARCHITECTURES["resnet18"] = _make_resnet("resnet18")
ARCHITECTURES["resnet50"] = _make_resnet("resnet50")


@register("mobilenet_v2")
def _mobilenet_v2(num_classes: int = 1000, weights=None, **_) -> SplitClassifier:
    """torchvision MobileNetV2. A local file (e.g. ``../shared/weights/mobilenet_v2_imagenet_coral_dequant.pth``)
    expects inputs scaled to [-1, 1] (mean = std = 0.5); torchvision's own weights use ImageNet mean/std."""
    import torchvision

    model = torchvision.models.mobilenet_v2(weights=_tv_weights(torchvision.models.MobileNet_V2_Weights, weights))
    mean, std = IMAGENET_MEAN, IMAGENET_STD
    if weights not in (None, "default"):
        load_state_dict_file(model, weights, "mobilenet_v2")
        mean, std = HALF_MEAN, HALF_STD
    fc: nn.Linear = model.classifier[-1]
    if num_classes != fc.out_features:
        fc = nn.Linear(fc.in_features, num_classes)
    head = GapLinearHead(fc.in_features, num_classes, dropout=0.2)
    head.fc = fc
    return SplitClassifier("mobilenet_v2", model.features, head, num_classes, mean=mean, std=std,
                           feature_layer="features[-1]")
