"""Explanation fidelity: Average Drop, Increase in Confidence (Chattopadhay et al., Grad-CAM++) and the
deletion / insertion curves (Petsiuk et al., RISE), batched.

Average Drop and Increase in Confidence compare ``y``, the softmax probability of the predicted class on the image,
with ``o``, the same class's probability on the image multiplied by its ``[0, 1]`` map:
``Average Drop = mean(max(0, y - o) / y) x 100`` (lower is better) and
``Increase in Confidence = mean(o > y) x 100`` (higher is better).

Which image is multiplied matters. By default (``space="rgb"``) the ``[0, 1]`` RGB image is multiplied *before*
the model's input normalisation, so a zero map gives a black image; ``space="normalized"`` multiplies the already
normalised tensor instead (a zero map then gives the dataset-mean image), which is what several public
implementations do. ``explanation_inputs`` builds either.
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import torch


def _check_probabilities(y, o) -> tuple[torch.Tensor, torch.Tensor]:
    y, o = torch.as_tensor(y), torch.as_tensor(o)
    if y.dim() != 1 or y.shape != o.shape:
        raise ValueError(f"y and o must both have shape (B,), got {tuple(y.shape)} and {tuple(o.shape)}")
    for name, value in (("y", y), ("o", o)):
        if not value.is_floating_point() or not bool(torch.isfinite(value).all()):
            raise ValueError(f"{name} must hold finite float probabilities")
        if value.numel() and (float(value.min()) < 0 or float(value.max()) > 1):
            raise ValueError(f"{name} must be probabilities within [0, 1]; min={float(value.min())}, "
                             f"max={float(value.max())}")
    if y.numel() and float(y.min()) <= 0:
        raise ValueError("y must be positive: Average Drop divides by the probability on the full image")
    return y, o.to(y.device)


def average_drop(y, o, reduce: bool = True) -> torch.Tensor:
    """``(B,)`` probabilities on the image / on the explanation -> ``mean(max(0, y - o) / y) * 100`` (0-dim),
    or the ``(B,)`` per-image terms (``* 100``) with ``reduce=False``."""
    y, o = _check_probabilities(y, o)
    drops = (y - o).clamp(min=0) / y * 100
    return drops.mean() if reduce else drops


def increase_in_confidence(y, o, reduce: bool = True) -> torch.Tensor:
    """``(B,)`` probabilities on the image / on the explanation -> ``mean(o > y) * 100`` (0-dim),
    or the ``(B,)`` per-image indicators (``* 100``) with ``reduce=False``."""
    y, o = _check_probabilities(y, o)
    increases = (o > y).to(y.dtype) * 100
    return increases.mean() if reduce else increases


class FidelityAccumulator:
    """Average Drop and Increase in Confidence over batches: ``accumulate(y, o)`` with ``(B,)`` probabilities,
    ``compute()`` -> ``{"average_drop", "increase_in_confidence", "num_images"}`` (percent, floats).
    ``per_image()`` -> ``{"y", "o"}``, the ``(N,)`` probabilities of every image (for the bootstrap in
    ``dualcam_lib.metrics.bootstrap``)."""

    def __init__(self):
        self.reset()

    def reset(self) -> None:
        self.drop_sum = 0.0
        self.num_increases = 0
        self.num_images = 0
        self._y_list: list[torch.Tensor] = []  # per-image probabilities (CPU), concatenated by per_image()
        self._o_list: list[torch.Tensor] = []

    def accumulate(self, y, o) -> None:
        """y: ``(B,)`` probability of the predicted class on the image; o: on the image times its map."""
        y, o = _check_probabilities(y, o)
        self.drop_sum += float(((y - o).clamp(min=0) / y).to(torch.float64).sum())
        self.num_increases += int((o > y).sum())
        self.num_images += y.numel()
        self._y_list.append(y.detach().cpu().clone())
        self._o_list.append(o.detach().cpu().clone())

    def per_image(self) -> dict:
        """``{"y": (N,), "o": (N,)}`` CPU float tensors of every image accumulated so far, in order (both in the
        widest dtype seen); ``average_drop(y, o)`` and ``increase_in_confidence(y, o)`` give ``compute()``'s
        numbers (Average Drop up to the float rounding of the summation order)."""
        if self.num_images == 0:
            raise RuntimeError("FidelityAccumulator.per_image() called before any accumulate()")
        dtype = self._y_list[0].dtype
        for item in self._y_list + self._o_list:
            dtype = torch.promote_types(dtype, item.dtype)
        for items in (self._y_list, self._o_list):
            if len(items) > 1 or items[0].dtype != dtype:
                items[:] = [torch.cat([item.to(dtype) for item in items])]
        return {"y": self._y_list[0], "o": self._o_list[0]}

    def compute(self) -> dict:
        if self.num_images == 0:
            raise RuntimeError("FidelityAccumulator.compute() called before any accumulate()")
        return {
            "average_drop": self.drop_sum / self.num_images * 100,
            "increase_in_confidence": self.num_increases / self.num_images * 100,
            "num_images": self.num_images,
        }


def _check_images_and_maps(images, maps) -> tuple[torch.Tensor, torch.Tensor]:
    images, maps = torch.as_tensor(images), torch.as_tensor(maps)
    if images.dim() != 4:
        raise ValueError(f"images must have shape (B, C, H, W), got {tuple(images.shape)}")
    if maps.dim() == 4 and maps.shape[1] == 1:
        maps = maps[:, 0]
    if maps.dim() != 3 or maps.shape[0] != images.shape[0] or maps.shape[1:] != images.shape[2:]:
        raise ValueError(f"maps must have shape (B, H, W) = {(images.shape[0], *images.shape[2:])} to match the "
                         f"images, got {tuple(maps.shape)} (upsample the maps to the image size first)")
    if not maps.is_floating_point():
        raise ValueError(f"maps must be floating point, got {maps.dtype}")
    return images, maps.to(images.device)


def explanation_inputs(images, maps, normalize: Callable | None = None, space: str = "rgb") -> torch.Tensor:
    """The explanation image: ``(B, 3, H, W)`` images times their ``(B, H, W)`` [0, 1] maps -> ``(B, 3, H, W)``.

    space="rgb" (default): ``images`` are ``[0, 1]`` RGB (not normalised); the product is passed through
    ``normalize`` (e.g. ``SplitClassifier.normalize``) when given, so the result feeds the model directly.
    space="normalized": ``images`` are already normalised and are multiplied as they are (``normalize`` unused).
    """
    images, maps = _check_images_and_maps(images, maps)
    masked = images * maps[:, None].to(images.dtype)
    if space == "rgb":
        return normalize(masked) if normalize is not None else masked
    if space == "normalized":
        if normalize is not None:
            raise ValueError("space='normalized' multiplies already-normalised images; do not pass normalize")
        return masked
    raise ValueError(f"space must be 'rgb' or 'normalized', got {space!r}")


class DeletionInsertion(NamedTuple):
    """Per-image deletion / insertion AUCs ``(B,)``, their curves ``(B, steps + 1)`` and the pixel fractions
    ``(steps + 1,)`` at which the curves were measured."""

    deletion: torch.Tensor
    insertion: torch.Tensor
    deletion_curve: torch.Tensor
    insertion_curve: torch.Tensor
    fractions: torch.Tensor


def _baseline_images(images: torch.Tensor, baseline) -> torch.Tensor:
    if isinstance(baseline, torch.Tensor):
        return baseline.to(images).expand_as(images)
    if isinstance(baseline, (int, float)):
        return torch.full_like(images, float(baseline))
    if baseline == "zeros":
        return torch.zeros_like(images)
    if baseline == "mean":
        return images.mean(dim=(2, 3), keepdim=True).expand_as(images)
    if baseline == "blur":
        from torchvision.transforms.functional import gaussian_blur

        return gaussian_blur(images, kernel_size=[11, 11], sigma=[5.0, 5.0])  # RISE's insertion baseline
    raise ValueError(f"baseline must be 'zeros', 'mean', 'blur', a number or a tensor, got {baseline!r}")


@torch.no_grad()
def deletion_insertion_auc(score_fn: Callable[[torch.Tensor], torch.Tensor], images, maps, targets,
                           steps: int = 32, baseline="zeros") -> DeletionInsertion:
    """Deletion and insertion AUCs of saliency maps, batched.

    score_fn: ``(B, C, H, W)`` images -> ``(B, K)`` class probabilities (apply the softmax inside; normalise inside
    if ``images`` are raw RGB). images ``(B, C, H, W)``; maps ``(B, H, W)`` (same size); targets ``(B,)`` long.
    Pixels are ranked by map value (ties: lower pixel index first). Deletion replaces the top ``k`` pixels of the
    image by ``baseline``; insertion puts them into the baseline; ``k`` goes from 0 to ``H * W`` in ``steps``
    steps. The AUC is the trapezoid area of the target's probability over the removed / inserted fraction
    (deletion: lower is better; insertion: higher is better). baseline: "zeros" | "mean" | "blur" | a number |
    a tensor broadcastable to the images, in the same space as ``images``.
    """
    images, maps = _check_images_and_maps(images, maps)
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    batch, _, height, width = images.shape
    targets = torch.as_tensor(targets, device=images.device).reshape(-1).long()
    if targets.numel() != batch:
        raise ValueError(f"targets has {targets.numel()} entries for {batch} images")
    num_pixels = height * width
    order = torch.argsort(-maps.reshape(batch, -1).to(torch.float64), dim=1, stable=True)
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(num_pixels, device=order.device).expand(batch, -1))
    ranks = ranks.reshape(batch, 1, height, width)
    base = _baseline_images(images, baseline)
    counts = torch.round(torch.arange(steps + 1, dtype=torch.float64) * num_pixels / steps).long()
    deletion_curve = torch.empty(batch, steps + 1, dtype=torch.float64, device=images.device)
    insertion_curve = torch.empty_like(deletion_curve)
    rows = torch.arange(batch, device=images.device)
    for step, count in enumerate(counts.tolist()):
        chosen = ranks < count
        for curve, image in ((deletion_curve, torch.where(chosen, base, images)),
                             (insertion_curve, torch.where(chosen, images, base))):
            probabilities = score_fn(image)
            if probabilities.dim() != 2 or probabilities.shape[0] != batch:
                raise ValueError(f"score_fn must return (B, K) probabilities, got {tuple(probabilities.shape)}")
            curve[:, step] = probabilities[rows, targets].to(torch.float64)
    fractions = (counts.to(torch.float64) / num_pixels).to(images.device)
    return DeletionInsertion(
        deletion=torch.trapezoid(deletion_curve, fractions, dim=1),
        insertion=torch.trapezoid(insertion_curve, fractions, dim=1),
        deletion_curve=deletion_curve,
        insertion_curve=insertion_curve,
        fractions=fractions,
    )
