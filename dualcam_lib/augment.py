"""Batched, seeded image augmentations on tensors (any device).

An augmentation is an object with two steps, so that the random draws can be made once for a whole epoch and then
applied batch by batch (the result for an image then does not depend on how the data is batched or sharded across
processes):

- ``params = aug.sample(n, generator, height, width)``: a dict of ``(n,)`` CPU tensors drawn from ``generator``;
- ``aug.apply(images (B, 3, H, W), params_for_these_images) -> (B, 3, h, w)``.

``aug(images, generator)`` does both for one batch. Random numbers always come from a CPU ``torch.Generator``, so a
fixed seed gives the same augmentation on every device.

The paper's training transform (Appendix C, following wsolevaluation) is ``Resize(256, 256) -> RandomCrop(224) ->
RandomHorizontalFlip``. :class:`PaperAugment` applies the same shape at any input size: resize by 256/224, random
crop back to the input size, flip (64 px synthetic images: resize to 73, crop 64). For the exact paper transform on
real photos load them at 256 x 256 and use ``PaperAugment(size=224)``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

# The paper's Resize(256) -> RandomCrop(224) ratio.
PAPER_RESIZE_RATIO = 256 / 224


def _check_images(images: torch.Tensor, what: str) -> None:
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"{what}: expected images (B, 3, H, W), got shape {tuple(images.shape)}")


def flip_where(images: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
    """Flip horizontally the images where ``flip (B,) bool`` is set: ``(B, 3, H, W) -> (B, 3, H, W)``."""
    flip = flip.to(images.device).view(-1, 1, 1, 1)
    return torch.where(flip, images.flip(-1), images)


def batched_crop(images: torch.Tensor, top: torch.Tensor, left: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Crop a different window from each image: ``(B, 3, H, W)``, offsets ``(B,) long`` -> ``(B, 3, height, width)``."""
    _check_images(images, "batched_crop")
    b = images.shape[0]
    dev = images.device
    rows = top.to(dev).long().view(b, 1, 1) + torch.arange(height, device=dev).view(1, height, 1)  # (B, h, 1)
    cols = left.to(dev).long().view(b, 1, 1) + torch.arange(width, device=dev).view(1, 1, width)  # (B, 1, w)
    batch = torch.arange(b, device=dev).view(b, 1, 1)
    # Advanced indices on dims 0, 2, 3 around a slice on dim 1 put the channel dim last: (B, h, w, 3).
    return images[batch, :, rows, cols].permute(0, 3, 1, 2).contiguous()


def resize(images: torch.Tensor, size: int | tuple[int, int]) -> torch.Tensor:
    """Bilinear resize, antialiased when shrinking (as torchvision on tensors): ``(B, 3, H, W) -> (B, 3, h, w)``."""
    h, w = (size, size) if isinstance(size, int) else size
    if tuple(images.shape[-2:]) == (h, w):
        return images
    return F.interpolate(images, size=(h, w), mode="bilinear", align_corners=False, antialias=True)


class Augmentation:
    """Base class: ``sample`` draws per-image parameters, ``apply`` uses them; ``__call__`` does both for a batch."""

    def sample(self, n: int, generator: torch.Generator, height: int, width: int) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def apply(self, images: torch.Tensor, params: dict[str, torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        _check_images(images, type(self).__name__)
        return self.apply(images, self.sample(images.shape[0], generator, *images.shape[-2:]))


def index_params(params: dict[str, torch.Tensor], idx: torch.Tensor | slice) -> dict[str, torch.Tensor]:
    """The parameters of a subset of images (``idx`` indexes the first dimension of every entry)."""
    return {k: v[idx] for k, v in params.items()}


class PaperAugment(Augmentation):
    """The paper's train transform at any size: resize to ``round(size * 256/224)`` square, random crop ``size``, flip.

    ``size``: the output side (default: the input image's own side, i.e. the training resolution is unchanged).
    """

    def __init__(self, size: int | None = None, resize_ratio: float = PAPER_RESIZE_RATIO, flip: bool = True):
        self.size = size
        self.resize_ratio = resize_ratio
        self.flip = flip

    def _sizes(self, height: int, width: int) -> tuple[int, int]:
        size = self.size or width
        return size, int(round(size * self.resize_ratio))

    def sample(self, n, generator, height, width):
        size, big = self._sizes(height, width)
        return {
            "top": torch.randint(0, big - size + 1, (n,), generator=generator),
            "left": torch.randint(0, big - size + 1, (n,), generator=generator),
            "flip": torch.rand(n, generator=generator) < (0.5 if self.flip else 0.0),
        }

    def apply(self, images, params):
        _check_images(images, "PaperAugment")
        size, big = self._sizes(*images.shape[-2:])
        out = batched_crop(resize(images, (big, big)), params["top"], params["left"], size, size)
        return flip_where(out, params["flip"])

    def __repr__(self) -> str:
        return f"PaperAugment(size={self.size}, resize_ratio={self.resize_ratio:.4f}, flip={self.flip})"


class FlipTranslate(Augmentation):
    """Random horizontal flip + a translation of up to ``max_shift`` px (edge pixels fill in): same shape out."""

    def __init__(self, max_shift: int = 4):
        self.max_shift = int(max_shift)

    def sample(self, n, generator, height, width):
        s = self.max_shift
        return {
            "flip": torch.rand(n, generator=generator) < 0.5,
            "top": torch.randint(0, 2 * s + 1, (n,), generator=generator),
            "left": torch.randint(0, 2 * s + 1, (n,), generator=generator),
        }

    def apply(self, images, params):
        _check_images(images, "FlipTranslate")
        out = flip_where(images, params["flip"])
        if self.max_shift <= 0:
            return out
        H, W = images.shape[-2:]
        padded = F.pad(out, (self.max_shift,) * 4, mode="replicate")
        return batched_crop(padded, params["top"], params["left"], H, W)

    def __repr__(self) -> str:
        return f"FlipTranslate(max_shift={self.max_shift})"


class NoAugment(Augmentation):
    """The identity (test-time view)."""

    def sample(self, n, generator, height, width):
        return {}

    def apply(self, images, params):
        return images

    def __repr__(self) -> str:
        return "NoAugment()"


def resolve_augment(augment) -> Augmentation:
    """``True`` -> :class:`PaperAugment`, ``False``/``None`` -> :class:`NoAugment`, an :class:`Augmentation` as is."""
    if augment is True:
        return PaperAugment()
    if augment is False or augment is None:
        return NoAugment()
    if isinstance(augment, Augmentation):
        return augment
    raise TypeError(f"augment must be True, False, None or an Augmentation (sample/apply), got {augment!r}")
