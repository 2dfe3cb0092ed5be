"""The CAM engine: every CAM method from either branch, batched, on any device, in one backbone pass.

Usage::

    with CamEngine(dual) as engine:                       # DualBranchModel, or SplitClassifier (softmax only)
        maps = engine.compute(x, targets, method="gradcam")  # {"softmax_logit": (B,P,Q), "sigmoid_logit": (B,P,Q)}
    images = postprocess(maps["sigmoid_logit"], size=x.shape[-2:], **paper_postprocess("gradcam"))

Target layer:
- default: the backbone's output (the heads' input). The backbone runs once WITHOUT autograd; its output becomes
  one leaf per score and gradients flow through the (tiny) heads only. For a ``SplitClassifier`` of kind
  ``"vit"`` the default is ``split.meta["target_layer"]`` when present (the last block's ``norm1``).
- a module inside the backbone: a forward hook replaces its output by a detached leaf (so nothing before it
  enters the autograd graph), the rest of the backbone and both heads run once, and ``torch.autograd.grad``
  w.r.t. that leaf gives each score's gradient (the graph is retained across the scores).
ViT token outputs ``(B, prefix + P*Q, D)`` are arranged as ``(B, D, P, Q)`` automatically (:mod:`.tokens`).

Scores: ``"softmax_logit"``, ``"softmax_prob"``, ``"log_softmax"`` (softmax branch) and ``"sigmoid_logit"``
(the sigmoid branch's pre-sigmoid logit), each of the class ``targets[b]`` for image ``b``.

Clamping (``clamp``): ``None`` is the paper's default, clamp negative channel weights for the sigmoid branch and
not for softmax scores; ``True``/``False`` force it for every requested score. See :mod:`.methods` for what it
means per method.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from ..heads import DualBranchModel
from ..models import SplitClassifier
from .methods import CamContext, get_method
from .tokens import find_grid, tokens_to_maps

SCORE_BRANCH = {
    "softmax_logit": "softmax",
    "softmax_prob": "softmax",
    "log_softmax": "softmax",
    "sigmoid_logit": "sigmoid",
}


def score_values(score: str, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The named score of class ``targets[b]``: ``(B, C)`` branch logits, ``(B,)`` long -> ``(B,)``."""
    if score in ("softmax_logit", "sigmoid_logit"):
        chosen = logits
    elif score == "softmax_prob":
        chosen = logits.softmax(dim=1)
    elif score == "log_softmax":
        chosen = logits.log_softmax(dim=1)
    else:
        raise ValueError(f"unknown score {score!r}; expected one of {sorted(SCORE_BRANCH)}")
    return chosen.gather(1, targets[:, None])[:, 0]


@dataclass
class _Capture:
    """State of the target-layer hook during one engine forward pass."""

    need_grad: bool = False
    activation: torch.Tensor | None = None  # the layer's output, detached (a leaf requiring grad when need_grad)
    replacement: torch.Tensor | None = None  # when set, the layer's output is replaced by this (Ablation-CAM)
    calls: int = 0


class CamEngine:
    """CAMs from a :class:`~dualcam_lib.heads.DualBranchModel` (both branches) or a
    :class:`~dualcam_lib.models.SplitClassifier` (softmax branch only).

    ``target_layer``: ``None`` (the heads' input; a ViT's ``split.meta["target_layer"]`` when set) or a module
    of the backbone. Use as a context manager: the forward hook is registered on entry and removed on exit,
    also when an exception is raised. ``compute`` outside a ``with`` block registers and removes the hook itself.
    """

    def __init__(self, model: DualBranchModel | SplitClassifier, target_layer: nn.Module | None = None):
        if isinstance(model, DualBranchModel):
            self.split = model.split
            self.backbone = model.backbone
            self.heads = {"softmax": model.softmax_head, "sigmoid": model.sigmoid_head}
        elif isinstance(model, SplitClassifier):
            self.split = model
            self.backbone = model.backbone
            self.heads = {"softmax": model.head}
        else:
            raise TypeError(f"CamEngine needs a DualBranchModel or a SplitClassifier, got {type(model).__name__}")
        self.model = model
        self.explicit_target = target_layer is not None
        if target_layer is None and self.split.kind == "vit":
            target_layer = self.split.meta.get("target_layer")
        if target_layer is self.backbone:
            target_layer = None
        if target_layer is not None:
            if not isinstance(target_layer, nn.Module):
                raise TypeError("target_layer must be an nn.Module inside the backbone, got "
                                f"{type(target_layer).__name__}")
            if not any(m is target_layer for m in self.backbone.modules()):
                raise ValueError(f"target_layer {type(target_layer).__name__} is not a module of the backbone of "
                                 f"{self.split.name!r}; pass a module from model.backbone "
                                 "(or None for the heads' input)")
        self.target_layer = target_layer
        self._handle = None
        self._capture: _Capture | None = None
        self._grids: dict = {}

    # ---------------------------------------------------------------- hooks
    def __enter__(self) -> "CamEngine":
        self._register()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self._remove()

    def _register(self) -> None:
        if self.target_layer is not None and self._handle is None:
            self._handle = self.target_layer.register_forward_hook(self._on_forward)

    def _remove(self) -> None:
        self._capture = None
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    @contextmanager
    def _hooks_for_call(self):
        owned = self._handle is None
        self._register()
        try:
            yield
        finally:
            self._capture = None
            if owned:
                self._remove()

    def _on_forward(self, module, inputs, output):
        state = self._capture
        if state is None:  # someone else's forward pass inside the `with` block: leave it alone
            return None
        if not torch.is_tensor(output):
            raise TypeError(f"target layer {type(module).__name__} returns {type(output).__name__}; "
                            "pick a layer whose output is one tensor")
        state.calls += 1
        if state.calls > 1:
            raise RuntimeError(f"target layer {type(module).__name__} ran {state.calls} times in one forward pass; "
                               "pick a layer that runs once")
        if state.replacement is not None:
            return state.replacement
        act = output.detach()
        if state.need_grad:
            act.requires_grad_(True)
        state.activation = act
        # A copy goes downstream so that in-place ops after the layer (ReLU(inplace=True)) cannot touch `act`.
        return act.clone()

    @contextmanager
    def _eval_mode(self):
        # Flip only the modules in training mode (usually just the sigmoid head) and restore exactly those.
        training = [m for root in (self.backbone, *self.heads.values()) for m in root.modules() if m.training]
        for m in training:
            m.training = False
        try:
            yield
        finally:
            for m in training:
                m.training = True

    # ---------------------------------------------------------------- shapes
    def _as_maps(self, t: torch.Tensor, image_size) -> torch.Tensor:
        """Layer output -> ``(B, N, P, Q)``."""
        if t.dim() == 4:
            return t
        if t.dim() != 3:
            raise ValueError(f"the target layer's output must be (B, N, P, Q) maps or (B, T, D) tokens, "
                             f"got shape {tuple(t.shape)}")
        prefix = self.split.num_prefix_tokens
        key = (t.shape[1], tuple(image_size))
        if key not in self._grids:
            self._grids[key] = find_grid(t.shape[1] - prefix, self.backbone, self.split.grid, tuple(image_size))
        return tokens_to_maps(t, self._grids[key], prefix)

    # ---------------------------------------------------------------- checks
    def _check_scores(self, scores) -> tuple:
        if scores is None:
            scores = ("softmax_logit", "sigmoid_logit") if "sigmoid" in self.heads else ("softmax_logit",)
        if isinstance(scores, str):
            scores = (scores,)
        scores = tuple(dict.fromkeys(scores))
        if not scores:
            raise ValueError("scores is empty; name at least one of " + ", ".join(SCORE_BRANCH))
        for s in scores:
            if s not in SCORE_BRANCH:
                raise ValueError(f"unknown score {s!r}; expected one of {sorted(SCORE_BRANCH)}")
            if SCORE_BRANCH[s] not in self.heads:
                raise ValueError(f"score {s!r} needs the {SCORE_BRANCH[s]} branch, but the model is a "
                                 "SplitClassifier with the softmax branch only; wrap it in DualBranchModel")
        return scores

    def _check_inputs(self, x, targets) -> tuple[torch.Tensor, torch.Tensor]:
        if not torch.is_tensor(x) or x.dim() != 4 or not x.is_floating_point():
            raise ValueError(f"x must be a float tensor (B, 3, H, W), got "
                             f"{tuple(x.shape) if torch.is_tensor(x) else type(x).__name__}")
        targets = torch.as_tensor(targets, device=x.device)
        if targets.dim() != 1 or targets.shape[0] != x.shape[0]:
            raise ValueError(f"targets must be a (B,) tensor with B = {x.shape[0]} (one class per image), "
                             f"got shape {tuple(targets.shape)}")
        if targets.is_floating_point() or targets.is_complex() or targets.dtype == torch.bool:
            raise ValueError(f"targets must hold integer class indices, got dtype {targets.dtype}")
        targets = targets.long()
        c = self.split.num_classes
        if targets.numel() and (targets.min() < 0 or targets.max() >= c):
            raise ValueError(f"targets must be class indices in [0, {c}), got values in "
                             f"[{int(targets.min())}, {int(targets.max())}]")
        return x, targets

    def _head_weight(self, score: str) -> torch.Tensor:
        branch = SCORE_BRANCH[score]
        fc = getattr(self.heads[branch], "fc", None)
        if not isinstance(fc, nn.Linear):
            raise ValueError(f"method 'cam' needs a head with a Linear `.fc` (GapLinearHead, TokenHead); the "
                             f"{branch} head is {type(self.heads[branch]).__name__}; use a gradient method instead")
        return fc.weight.detach()

    # ---------------------------------------------------------------- public
    def compute(self, x: torch.Tensor, targets: torch.Tensor, method: str = "gradcam", scores=None,
                clamp: bool | None = None, **method_kwargs) -> dict[str, torch.Tensor]:
        """Raw signed CAMs of class ``targets[b]`` for image ``b``, at feature resolution.

        ``x``: ``(B, 3, H, W)`` normalised input; ``targets``: ``(B,)`` long. ``method``: one of
        ``dualcam_lib.cams.METHODS``. ``scores``: names from ``SCORE_BRANCH`` (default: both branches' logits, or
        the softmax logit for a SplitClassifier). ``clamp``: ``None`` (paper default), ``True`` or ``False``.
        ``method_kwargs``: method options (e.g. ``batch_size`` for Score-CAM / Ablation-CAM).
        Returns score -> ``(B, P, Q)`` float32 on ``x.device`` (no ReLU, no upsampling, no normalisation).
        """
        spec = get_method(method)
        scores = self._check_scores(scores)
        x, targets = self._check_inputs(x, targets)
        if clamp is not None and not isinstance(clamp, bool):
            raise ValueError(f"clamp must be None (paper default), True or False, got {clamp!r}")
        clamp_of = {s: (SCORE_BRANCH[s] == "sigmoid") if clamp is None else clamp for s in scores}
        if method == "cam" and self.explicit_target and self.target_layer is not None:
            raise ValueError("method 'cam' uses the head's weights and is defined at the heads' input; "
                             "create the engine with target_layer=None")
        with self._hooks_for_call(), self._eval_mode():
            ctx = self._run(x, targets, scores, spec.needs_gradients)
            try:
                maps = spec.fn(ctx, clamp_of, **method_kwargs)
            except TypeError as e:
                if "unexpected keyword" in str(e):
                    raise TypeError(f"method {method!r}: {e}") from None
                raise
        return {s: maps[s].detach().float() for s in scores}

    # ---------------------------------------------------------------- internals
    def _logits(self, feats: torch.Tensor, branches) -> dict:
        return {b: self.heads[b](feats) for b in branches}

    def _run(self, x, targets, scores, need_grad) -> CamContext:
        branches = tuple(dict.fromkeys(SCORE_BRANCH[s] for s in scores))
        size = x.shape[-2:]
        grads, original = {}, {}
        if self.target_layer is None:
            with torch.no_grad():
                layer_out = self.backbone(x)
            if not torch.is_tensor(layer_out):
                raise TypeError(f"the backbone of {self.split.name!r} returns {type(layer_out).__name__}, not a tensor")
            if need_grad:
                # One leaf per score: a single autograd.grad call then yields every score's gradient separately.
                with torch.enable_grad():
                    leaves = [layer_out.detach().requires_grad_(True) for _ in scores]
                    values = [score_values(s, self.heads[SCORE_BRANCH[s]](leaf), targets)
                              for s, leaf in zip(scores, leaves)]
                    raw = torch.autograd.grad([v.sum() for v in values], leaves, allow_unused=True)
                for s, leaf, v, g in zip(scores, leaves, values, raw):
                    grads[s] = self._as_maps(torch.zeros_like(leaf) if g is None else g, size)
                    original[s] = v.detach()
            else:
                with torch.no_grad():
                    logits = self._logits(layer_out, branches)
                original = {s: score_values(s, logits[SCORE_BRANCH[s]], targets) for s in scores}
            head_out = layer_out
        else:
            state = _Capture(need_grad=need_grad)
            self._capture = state
            try:
                with torch.set_grad_enabled(need_grad):
                    head_out = self.backbone(x)
                    if state.activation is None:
                        raise RuntimeError(f"target layer {type(self.target_layer).__name__} did not run during "
                                           "the backbone's forward pass")
                    logits = self._logits(head_out, branches)
                    values = {s: score_values(s, logits[SCORE_BRANCH[s]], targets) for s in scores}
                    act = state.activation
                    for i, s in enumerate(scores):
                        if need_grad and values[s].requires_grad:
                            (g,) = torch.autograd.grad(values[s].sum(), act, retain_graph=i < len(scores) - 1,
                                                       allow_unused=True)
                        else:
                            g = None
                        if need_grad:
                            grads[s] = self._as_maps(torch.zeros_like(act) if g is None else g, size)
                        original[s] = values[s].detach()
            finally:
                self._capture = None
            layer_out = act.detach()
            head_out = head_out.detach()
            del logits, values

        try:
            head_input = self._as_maps(head_out, size)
        except ValueError:
            head_input = None

        def score_images(images: torch.Tensor, image_index: torch.Tensor) -> dict:
            with torch.no_grad():
                lg = self._logits(self.backbone(images), branches)
            t = targets[image_index]
            return {s: score_values(s, lg[SCORE_BRANCH[s]], t) for s in scores}

        def score_channels_set(image_index: torch.Tensor, channel: torch.Tensor, value: float) -> dict:
            changed = layer_out[image_index].clone()
            rows = torch.arange(changed.shape[0], device=changed.device)
            if changed.dim() == 3:  # tokens (M, T, D): the channel in every token, prefix tokens included
                changed[rows, :, channel] = value
            else:
                changed[rows, channel] = value
            with torch.no_grad():
                if self.target_layer is None:
                    feats = changed
                else:
                    self._capture = _Capture(replacement=changed)
                    try:
                        feats = self.backbone(x[image_index])
                    finally:
                        self._capture = None
                lg = self._logits(feats, branches)
            t = targets[image_index]
            return {s: score_values(s, lg[SCORE_BRANCH[s]], t) for s in scores}

        return CamContext(
            activations=self._as_maps(layer_out, size),
            gradients=grads,
            targets=targets,
            scores=scores,
            images=x,
            original_scores=original,
            head_input=head_input,
            head_weight=self._head_weight,
            score_images=score_images,
            score_channels_set=score_channels_set,
        )
