"""Embedded synthetic datasets with exact ground truth, generated in torch from a seed.

Three generators, each returning a :class:`SyntheticSet` whose images are ``(N, 3, S, S) float`` in [0, 1]:

- :func:`make_synthetic_wsol`: textured objects (class = shape x texture) at random positions and scales on
  cluttered backgrounds with distractors from a disjoint pool of shapes and colours, so that only the object
  tells the class apart. Ground truth: the object mask (visible pixels) and its tight box.
- :func:`make_synthetic_finegrained`: "birds" that share one body plan; classes differ only in small parts (beak,
  wing bar, tail tip, crest). Ground truth: the bird mask and box, plus ``part_masks`` marking the parts that carry
  the class.
- :func:`make_synthetic_digits`: scikit-learn's real handwritten 8x8 digits, scaled up and pasted on clutter.

The output is a deterministic function of ``(n, seed, size, num_classes)`` (CPU generator; move tensors to a
device afterwards). Labels are balanced: every class appears ``n // C`` or ``n // C + 1`` times.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Iterator

import torch
import torch.nn.functional as F

from .datasets import WSOLBatch

CHUNK = 256  # images rendered together; bounds the memory of the per-pixel intermediates

# Bumped whenever a generator's output changes for the same arguments: caches of models trained on these sets
# (dualcam_lib.zoo) should include it in their key.
GENERATOR_VERSION = 1

WSOL_SHAPES = ("disk", "square", "triangle", "diamond", "cross")
WSOL_TEXTURES = ("striped", "checked", "dotted", "ringed")
# (colour A, colour B) per texture, RGB in [0, 1]
WSOL_TEXTURE_COLOURS = {
    "striped": ((0.85, 0.15, 0.10), (0.95, 0.85, 0.20)),  # red / yellow
    "checked": ((0.15, 0.25, 0.80), (0.92, 0.92, 0.92)),  # blue / white
    "dotted": ((0.10, 0.70, 0.20), (0.75, 0.20, 0.70)),  # green dots on magenta
    "ringed": ((0.95, 0.55, 0.10), (0.20, 0.80, 0.85)),  # orange / cyan
}
DISTRACTOR_SHAPES = ("bar", "ring", "half-disk")

# Fine-grained birds: one binary attribute per part; class code bit k sets part k's variant.
BIRD_PARTS = ("beak", "wing bar", "tail tip", "crest")
BIRD_VARIANTS = {
    "beak": (("short orange", (0.95, 0.55, 0.05)), ("long dark", (0.15, 0.12, 0.10))),
    "wing bar": (("white", (0.95, 0.95, 0.95)), ("yellow", (0.95, 0.85, 0.10))),
    "tail tip": (("red", (0.85, 0.10, 0.10)), ("blue", (0.10, 0.25, 0.90))),
    "crest": (("red", (0.85, 0.10, 0.10)), ("black", (0.05, 0.05, 0.05))),
}


@dataclass
class SyntheticSet:
    """An in-memory dataset with exact ground truth.

    images     ``(N, 3, S, S) float`` in [0, 1]     labels ``(N,) long``
    boxes      ``(N, 4) long`` (x0, y0, x1, y1), inclusive pixels, the tight box of ``masks``
    masks      ``(N, S, S) bool`` object pixels     part_masks ``(N, S, S) bool`` discriminative parts, or None
    class_names list[str]; ``name`` and ``seed`` identify the generator call.
    """

    images: torch.Tensor
    labels: torch.Tensor
    boxes: torch.Tensor
    masks: torch.Tensor
    part_masks: torch.Tensor | None
    class_names: list[str]
    name: str = "synthetic"
    seed: int = 0
    indices: torch.Tensor | None = field(default=None, repr=False)  # positions in the generated set (for ids)

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def image_size(self) -> int:
        return self.images.shape[-1]

    def image_ids(self, idx=None) -> list[str]:
        """Stable ids ``"<name>/<seed>/<index>"`` (the index in the generated set, kept through ``subset``)."""
        pos = self.indices if self.indices is not None else torch.arange(len(self))
        if idx is not None:
            pos = pos[idx]
        return [f"{self.name}/{self.seed}/{int(i)}" for i in pos.reshape(-1)]

    def subset(self, idx) -> "SyntheticSet":
        """A view on the items ``idx`` (slice, index list, long or bool tensor)."""
        if isinstance(idx, slice):
            idx = torch.arange(len(self))[idx]
        idx = torch.as_tensor(idx)
        if idx.dtype == torch.bool:
            idx = idx.nonzero().squeeze(1)
        pos = self.indices if self.indices is not None else torch.arange(len(self))
        return SyntheticSet(self.images[idx], self.labels[idx], self.boxes[idx], self.masks[idx],
                            None if self.part_masks is None else self.part_masks[idx], list(self.class_names),
                            self.name, self.seed, pos[idx])

    def __getitem__(self, i: int) -> dict:
        """One record in the shared item format (see :func:`dualcam_lib.data.collate_wsol`)."""
        return {"image": self.images[i], "label": int(self.labels[i]), "boxes": self.boxes[i:i + 1],
                "mask": self.masks[i], "ignore": None, "image_id": self.image_ids([i])[0],
                "part_mask": None if self.part_masks is None else self.part_masks[i]}

    def batch(self, idx) -> WSOLBatch:
        """The items ``idx`` as one :class:`WSOLBatch` (boxes: one ``(1, 4)`` tensor per image)."""
        idx = torch.as_tensor(idx)
        return WSOLBatch(self.images[idx], self.labels[idx], list(self.boxes[idx].unsqueeze(1)), self.masks[idx],
                         None, self.image_ids(idx))

    def batches(self, batch_size: int, shuffle: bool = False, seed: int = 0,
                drop_last: bool = False) -> Iterator[WSOLBatch]:
        """Iterate over :class:`WSOLBatch` es of ``batch_size`` (a seeded permutation when ``shuffle``)."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        n = len(self)
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)) if shuffle else torch.arange(n)
        stop = n - n % batch_size if drop_last else n
        for start in range(0, stop, batch_size):
            yield self.batch(order[start:start + batch_size])


# --------------------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------------------


def _check(n: int, size: int, num_classes: int, max_classes: int, what: str) -> None:
    if n < 1:
        raise ValueError(f"{what}: n must be >= 1, got {n}")
    if size < 32:
        raise ValueError(f"{what}: size must be >= 32 pixels, got {size}")
    if not 2 <= num_classes <= max_classes:
        raise ValueError(f"{what}: num_classes must be in [2, {max_classes}], got {num_classes}")


def balanced_labels(n: int, num_classes: int, g: torch.Generator) -> torch.Tensor:
    """``(n,) long``: each class ``n // C`` or ``n // C + 1`` times, in a seeded random order."""
    return (torch.arange(n) % num_classes)[torch.randperm(n, generator=g)]


def _u(g: torch.Generator, shape, lo: float, hi: float) -> torch.Tensor:
    return torch.rand(shape, generator=g) * (hi - lo) + lo


def tight_boxes(masks: torch.Tensor) -> torch.Tensor:
    """``(N, H, W) bool -> (N, 4) long`` inclusive (x0, y0, x1, y1) of each mask; an empty mask gives (0, 0, 0, 0)."""
    n, h, w = masks.shape
    cols, rows = masks.any(dim=1), masks.any(dim=2)  # (N, W), (N, H)
    x0 = cols.int().argmax(dim=1)
    x1 = w - 1 - cols.flip(1).int().argmax(dim=1)
    y0 = rows.int().argmax(dim=1)
    y1 = h - 1 - rows.flip(1).int().argmax(dim=1)
    boxes = torch.stack([x0, y0, x1, y1], dim=1).long()
    boxes[~cols.any(dim=1)] = 0
    return boxes


def _pixel_grid(size: int) -> tuple[torch.Tensor, torch.Tensor]:
    ys, xs = torch.meshgrid(torch.arange(size, dtype=torch.float32), torch.arange(size, dtype=torch.float32),
                            indexing="ij")
    return xs, ys  # (S, S) each


def _local(xs, ys, cx, cy, scale, theta):
    """Pixel grid in each item's frame: rotated by ``theta``, centred on (cx, cy), divided by ``scale``; (B, S, S)."""
    dx = xs - cx.view(-1, 1, 1)
    dy = ys - cy.view(-1, 1, 1)
    c, s = torch.cos(theta).view(-1, 1, 1), torch.sin(theta).view(-1, 1, 1)
    return (dx * c + dy * s) / scale.view(-1, 1, 1), (-dx * s + dy * c) / scale.view(-1, 1, 1)


def _paint(images: torch.Tensor, mask: torch.Tensor, colour: torch.Tensor) -> torch.Tensor:
    """Put ``colour`` ((B, 3) or (B, 3, S, S)) where ``mask`` (B, S, S) is set."""
    if colour.dim() == 2:
        colour = colour[:, :, None, None]
    return torch.where(mask.unsqueeze(1), colour.expand_as(images), images)


def _clutter(b: int, size: int, g: torch.Generator, xs, ys) -> torch.Tensor:
    """Cluttered backgrounds ``(B, 3, S, S)``: a smooth colour field, faint stripes, soft blobs."""
    low = _u(g, (b, 3, 4, 4), 0.2, 0.8)
    bg = F.interpolate(low, size=(size, size), mode="bilinear", align_corners=False)
    angle = _u(g, (b, 1, 1), 0.0, math.pi)
    freq = _u(g, (b, 1, 1), 2.0, 7.0) * 2 * math.pi / size
    phase = _u(g, (b, 1, 1), 0.0, 2 * math.pi)
    wave = torch.sin(freq * (xs * torch.cos(angle) + ys * torch.sin(angle)) + phase)  # (B, S, S)
    bg = bg + _u(g, (b, 3, 1, 1), -0.12, 0.12) * wave.unsqueeze(1)
    for _ in range(3):
        bx, by = _u(g, (b, 1, 1), 0, size), _u(g, (b, 1, 1), 0, size)
        sigma = _u(g, (b, 1, 1), 0.05, 0.15) * size
        blob = torch.exp(-((xs - bx) ** 2 + (ys - by) ** 2) / (2 * sigma ** 2))
        bg = bg + _u(g, (b, 3, 1, 1), -0.3, 0.3) * blob.unsqueeze(1)
    return bg


def _distractor_masks(kind: torch.Tensor, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Distractor shapes (bar, ring, half-disk) in local coordinates; ``kind`` (B,) long -> (B, S, S) bool."""
    rad2 = u ** 2 + v ** 2
    bar = (u ** 2 + (3 * v) ** 2) <= 1
    ring = (rad2 <= 1) & (rad2 >= 0.45)
    half = (rad2 <= 1) & (v >= 0)
    k = kind.view(-1, 1, 1)
    return torch.where(k == 0, bar, torch.where(k == 1, ring, half))


def _colours_away_from(avoid: torch.Tensor | None, b: int, g: torch.Generator, min_distance: float = 0.4,
                       tries: int = 8) -> torch.Tensor:
    """``(B, 3)`` random colours at least ``min_distance`` (RGB Euclidean) from every row of ``avoid`` (M, 3).

    Of ``tries`` candidates per item the first far enough is kept (the farthest if none is).
    """
    candidates = torch.rand(b, tries, 3, generator=g)
    if avoid is None or len(avoid) == 0:
        return candidates[:, 0]
    distance = torch.cdist(candidates, avoid.expand(b, -1, -1)).amin(dim=2)  # (B, tries)
    ok = distance >= min_distance
    pick = torch.where(ok.any(1), ok.int().argmax(1), distance.argmax(1))
    return candidates[torch.arange(b), pick]


def _distractors(images, count: int, size: int, g, xs, ys, r_range, near=None, kinds=(0, 1, 2), avoid=None):
    """Paint ``count`` plain-coloured distractors (of ``DISTRACTOR_SHAPES[kinds]``) per image, in colours away
    from the class colours ``avoid`` ((M, 3) or None) so that a distractor never looks like evidence for a class.

    Returns (images, union of the distractor masks (B, S, S) bool).
    """
    b = images.shape[0]
    union = torch.zeros(b, size, size, dtype=torch.bool)
    for _ in range(count):
        present = torch.rand(b, generator=g) < 0.8
        kind = torch.tensor(kinds)[torch.randint(0, len(kinds), (b,), generator=g)]
        r = _u(g, (b,), *r_range) * size
        if near is None:
            cx, cy = _u(g, (b,), 0, size - 1), _u(g, (b,), 0, size - 1)
        else:
            ncx, ncy, nr = near
            cx = ncx + _u(g, (b,), -1, 1) * nr
            cy = ncy + _u(g, (b,), -1, 1) * nr
        theta = _u(g, (b,), 0, 2 * math.pi)
        u, v = _local(xs, ys, cx, cy, r, theta)
        mask = _distractor_masks(kind, u, v) & present.view(-1, 1, 1)
        colour = _colours_away_from(avoid, b, g)
        shade = 1 + 0.15 * torch.randn(b, 1, size, size, generator=g)
        images = _paint(images, mask, colour[:, :, None, None] * shade)
        union |= mask
    return images, union


def _finish(images: torch.Tensor, g: torch.Generator, noise: float = 0.03) -> torch.Tensor:
    return (images + noise * torch.randn(images.shape, generator=g)).clamp_(0, 1)


# --------------------------------------------------------------------------------------------------------------
# WSOL set: textured shapes on clutter
# --------------------------------------------------------------------------------------------------------------


def wsol_class_names(num_classes: int = 10) -> list[str]:
    """``"<texture> <shape>"`` for class ``c``: shape ``c % 5``, texture ``c // 5``."""
    ns = len(WSOL_SHAPES)
    return [f"{WSOL_TEXTURES[c // ns]} {WSOL_SHAPES[c % ns]}" for c in range(num_classes)]


def _shape_masks(shape: torch.Tensor, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Class shapes in local coordinates (unit half-size); ``shape`` (B,) long -> (B, S, S) bool."""
    au, av = u.abs(), v.abs()
    masks = torch.stack([
        u ** 2 + v ** 2 <= 1.0,  # disk
        torch.maximum(au, av) <= 0.85,  # square
        (v <= 0.8) & (au <= (v + 1.0) * 0.55),  # triangle, apex up
        au / 0.8 + av / 1.05 <= 1,  # diamond: a rhombus taller than wide, so never a tilted square
        ((au <= 0.33) & (av <= 1.0)) | ((av <= 0.33) & (au <= 1.0)),  # cross
    ])
    return masks[shape, torch.arange(shape.numel())]


def _textures(texture: torch.Tensor, pu: torch.Tensor, pv: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Class textures ``(B, 3, S, S)`` from pattern coordinates (in periods); ``texture`` (B,) long."""
    b = texture.numel()
    ph = _u(g, (b, 1, 1), 0, 1)
    frac = torch.frac
    first = torch.stack([
        frac((pu + pv) * 0.7071 + ph) < 0.5,  # diagonal stripes
        (torch.floor(pu * 1.6 + ph) + torch.floor(pv * 1.6 + ph)).remainder(2) == 0,  # checks
        (frac(pu + ph) - 0.5) ** 2 + (frac(pv + ph) - 0.5) ** 2 < 0.09,  # dots
        frac(torch.sqrt(pu ** 2 + pv ** 2) + ph) < 0.5,  # rings
    ])[texture, torch.arange(b)]  # (B, S, S): True where colour A
    pal = torch.tensor([WSOL_TEXTURE_COLOURS[t] for t in WSOL_TEXTURES])  # (T, 2, 3)
    colours = (pal[texture] + _u(g, (b, 2, 3), -0.08, 0.08)).clamp(0, 1)  # (B, 2, 3)
    a, c = colours[:, 0, :, None, None], colours[:, 1, :, None, None]
    return torch.where(first.unsqueeze(1), a, c)


def _render_wsol(labels: torch.Tensor, size: int, num_classes: int, g: torch.Generator):
    b = labels.numel()
    xs, ys = _pixel_grid(size)
    images = _clutter(b, size, g, xs, ys)
    ns = len(WSOL_SHAPES)
    used = WSOL_TEXTURES[:math.ceil(num_classes / ns)]
    class_colours = torch.tensor([WSOL_TEXTURE_COLOURS[t] for t in used]).reshape(-1, 3)
    images, _ = _distractors(images, 3, size, g, xs, ys, (0.08, 0.2), avoid=class_colours)

    shape, texture = labels % ns, labels // ns
    r = _u(g, (b,), 0.125, 0.30) * size  # object side 25% .. 60% of the image
    margin = 1.08 * r
    cx = margin + torch.rand(b, generator=g) * (size - 1 - 2 * margin)
    cy = margin + torch.rand(b, generator=g) * (size - 1 - 2 * margin)
    theta = _u(g, (b,), -0.21, 0.21)  # +-12 degrees keeps squares and diamonds apart
    u, v = _local(xs, ys, cx, cy, r, theta)
    obj = _shape_masks(shape, u, v)
    period = _u(g, (b,), 0.08, 0.11) * size  # texture scale in pixels, independent of the object scale
    pu, pv = u * (r / period).view(-1, 1, 1), v * (r / period).view(-1, 1, 1)
    tex = _textures(texture, pu, pv, g) * (1 + 0.06 * torch.randn(b, 1, size, size, generator=g))
    images = _paint(images, obj, tex)

    # A small plain occluder over part of the object in about a third of the images.
    occluded = torch.rand(b, generator=g) < 0.35
    before = images
    images, occ = _distractors(images, 1, size, g, xs, ys, (0.05, 0.10), near=(cx, cy, r), avoid=class_colours)
    occ &= occluded.view(-1, 1, 1)
    images = torch.where(occ.unsqueeze(1), images, before)
    visible = obj & ~occ
    lost = ~visible.flatten(1).any(1)  # never let an occluder hide the whole object
    if lost.any():
        images[lost], visible[lost] = torch.where(obj[lost].unsqueeze(1), tex[lost], images[lost]), obj[lost]
    return _finish(images, g), visible


def make_synthetic_wsol(n: int, seed: int = 0, size: int = 64, num_classes: int = 10) -> SyntheticSet:
    """Textured objects on clutter: ``n`` images ``(n, 3, size, size)`` with exact masks and boxes.

    Class ``c`` is the shape ``WSOL_SHAPES[c % 5]`` painted with the texture ``WSOL_TEXTURES[c // 5]`` (its own
    colour pair, randomly phased, pattern period ~10% of the image), side 25-60% of the image, rotated by at most
    12 degrees, anywhere in the image. Backgrounds are a smooth colour field with faint stripes and blobs; three
    distractors (bars, rings, half-disks in random plain colours kept away from the class colours: none of the class
    shapes, textures or colours) sit under
    the object and in ~35% of images a small one occludes part of it. ``masks`` are the visible object pixels and
    ``boxes`` their tight box. ``num_classes`` in [2, 20].
    """
    _check(n, size, num_classes, len(WSOL_SHAPES) * len(WSOL_TEXTURES), "make_synthetic_wsol")
    g = torch.Generator().manual_seed(int(seed))
    labels = balanced_labels(n, num_classes, g)
    images, masks = [], []
    for start in range(0, n, CHUNK):
        im, m = _render_wsol(labels[start:start + CHUNK], size, num_classes, g)
        images.append(im)
        masks.append(m)
    masks = torch.cat(masks)
    return SyntheticSet(torch.cat(images), labels, tight_boxes(masks), masks, None, wsol_class_names(num_classes),
                        "synthetic", int(seed))


# --------------------------------------------------------------------------------------------------------------
# fine-grained set: birds that differ in small parts
# --------------------------------------------------------------------------------------------------------------


def finegrained_class_names(num_classes: int = 8) -> list[str]:
    """One name per class listing its part variants, e.g. ``"short orange beak, white wing bar, red tail tip"``."""
    bits = max(1, math.ceil(math.log2(num_classes)))
    names = []
    for c in range(num_classes):
        names.append(", ".join(f"{BIRD_VARIANTS[p][(c >> k) & 1][0]} {p}" for k, p in enumerate(BIRD_PARTS[:bits])))
    return names


def _bird_parts(u: torch.Tensor, v: torch.Tensor, long_beak: torch.Tensor) -> dict[str, torch.Tensor]:
    """Bird parts in the bird's frame (unit = body half-length, facing +u, up = -v); each (B, S, S) bool."""
    body = (u / 1.0) ** 2 + (v / 0.55) ** 2 <= 1
    head = (u - 0.95) ** 2 + (v + 0.5) ** 2 <= 0.38 ** 2
    lb = long_beak.view(-1, 1, 1)
    beak_len = torch.where(lb, torch.tensor(0.8), torch.tensor(0.45))
    beak_half = torch.where(lb, torch.tensor(0.12), torch.tensor(0.2))
    t = (u - 1.25) / beak_len
    beak = (t >= 0) & (t <= 1) & ((v + 0.5).abs() <= beak_half * (1 - t)) & ~head
    wing = ((u + 0.1) / 0.62) ** 2 + ((v + 0.05) / 0.32) ** 2 <= 1
    wing_bar = wing & ((u + 0.1).abs() <= 0.16)
    tt = (-0.8 - u) / 0.8  # 0 at the tail root, 1 at its end
    tail = (tt >= 0) & (tt <= 1) & (v.abs() <= 0.1 + 0.32 * tt)
    tail_tip = tail & (tt >= 0.6)
    tc = (v + 1.2) / 0.35  # 0 at the crest top, 1 at the head
    crest = (tc >= 0) & (tc <= 1) & ((u - 0.85).abs() <= 0.2 * tc) & ~head
    eye = (u - 1.05) ** 2 + (v + 0.58) ** 2 <= 0.08 ** 2
    return {"body": body, "head": head, "beak": beak, "wing": wing, "wing bar": wing_bar, "tail": tail,
            "tail tip": tail_tip, "crest": crest, "eye": eye}


def _render_birds(labels: torch.Tensor, size: int, bits: int, g: torch.Generator):
    b = labels.numel()
    xs, ys = _pixel_grid(size)
    images = _clutter(b, size, g, xs, ys)
    part_colours = torch.tensor([c for part in BIRD_PARTS[:bits] for _, c in BIRD_VARIANTS[part]])
    images, _ = _distractors(images, 2, size, g, xs, ys, (0.06, 0.16), avoid=part_colours)

    # Part variants: the class code for the first `bits` parts, random (uninformative) for the others.
    variant = torch.randint(0, 2, (b, len(BIRD_PARTS)), generator=g)
    for k in range(bits):
        variant[:, k] = (labels >> k) & 1
    s = _u(g, (b,), 0.15, 0.21) * size  # body half-length in pixels: the bird spans ~50-70% of the width
    facing = torch.where(torch.rand(b, generator=g) < 0.5, 1.0, -1.0)
    ext_x, ext_top, ext_bot = 2.1 * s, 1.3 * s, 0.7 * s
    cx = ext_x + torch.rand(b, generator=g) * (size - 1 - 2 * ext_x)
    cy = ext_top + torch.rand(b, generator=g) * (size - 1 - ext_top - ext_bot)
    theta = _u(g, (b,), -0.17, 0.17)
    u, v = _local(xs, ys, cx, cy, s, theta)
    u = u * facing.view(-1, 1, 1)
    parts = _bird_parts(u, v, variant[:, 0] == 1)

    body_colour = (_u(g, (b, 1), 0.3, 0.65) + _u(g, (b, 3), -0.12, 0.12)).clamp(0, 1)
    mottle = 1 + 0.08 * torch.randn(b, 1, size, size, generator=g)
    head_colour = (body_colour * _u(g, (b, 1), 0.8, 1.2)).clamp(0, 1)
    images = _paint(images, parts["tail"] | parts["body"], body_colour[:, :, None, None] * mottle)
    images = _paint(images, parts["wing"], body_colour[:, :, None, None] * 0.7 * mottle)
    images = _paint(images, parts["head"], head_colour)
    images = _paint(images, parts["eye"], torch.zeros(b, 3))
    for k, part in enumerate(BIRD_PARTS):
        pal = torch.tensor([c for _, c in BIRD_VARIANTS[part]])  # (2, 3)
        colour = (pal[variant[:, k]] + _u(g, (b, 3), -0.05, 0.05)).clamp(0, 1)
        images = _paint(images, parts[part], colour)
    bird = parts["body"] | parts["head"] | parts["beak"] | parts["wing"] | parts["tail"] | parts["crest"]
    discriminative = torch.zeros_like(bird)
    for part in BIRD_PARTS[:bits]:
        discriminative |= parts[part]
    return _finish(images, g, 0.025), bird, discriminative


def make_synthetic_finegrained(n: int, seed: int = 0, size: int = 64, num_classes: int = 8) -> SyntheticSet:
    """Bird-like objects that share one body plan; classes differ only in small parts.

    Every bird has a body, wing, head, eye, tail, beak, wing bar, tail tip and crest; the body colour, size (the bird
    spans ~50-70% of the image width), position, facing (left/right) and a small tilt are random for every class. Class
    ``c``'s binary code picks the variant of the first ``ceil(log2 C)`` parts of ``BIRD_PARTS`` (beak: short
    orange / long dark; wing bar: white / yellow; tail tip: red / blue; crest: red / black); the remaining parts get
    a random variant and carry no class information. ``masks`` is the bird, ``boxes`` its tight box,
    ``part_masks`` the union of the class-carrying parts. ``num_classes`` in [2, 16].
    """
    _check(n, size, num_classes, 2 ** len(BIRD_PARTS), "make_synthetic_finegrained")
    bits = max(1, math.ceil(math.log2(num_classes)))
    g = torch.Generator().manual_seed(int(seed))
    labels = balanced_labels(n, num_classes, g)
    images, masks, parts = [], [], []
    for start in range(0, n, CHUNK):
        im, m, p = _render_birds(labels[start:start + CHUNK], size, bits, g)
        images.append(im)
        masks.append(m)
        parts.append(p)
    masks = torch.cat(masks)
    return SyntheticSet(torch.cat(images), labels, tight_boxes(masks), masks, torch.cat(parts),
                        finegrained_class_names(num_classes), "finegrained", int(seed))


# --------------------------------------------------------------------------------------------------------------
# digits on clutter
# --------------------------------------------------------------------------------------------------------------


@lru_cache(maxsize=1)
def _load_digit_glyphs() -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's digits: ``(1797, 8, 8) float`` in [0, 1] and ``(1797,) long`` targets."""
    import importlib.util

    import numpy as np

    # Read the CSV scikit-learn ships directly: importing sklearn.datasets costs seconds; same numbers as load_digits.
    spec = importlib.util.find_spec("sklearn")
    if spec is None:
        raise ImportError("make_synthetic_digits needs scikit-learn (it ships the handwritten digits)")
    csv = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data" / "digits.csv.gz"
    if csv.is_file():
        table = np.loadtxt(csv, delimiter=",", dtype=np.float32)
        pixels, targets = table[:, :64].reshape(-1, 8, 8), table[:, 64]
    else:
        from sklearn.datasets import load_digits

        digits = load_digits()
        pixels, targets = digits.images, digits.target
    return torch.as_tensor(pixels, dtype=torch.float32) / 16.0, torch.as_tensor(targets).long()


def make_synthetic_digits(n: int, seed: int = 0, size: int = 64, num_classes: int = 10) -> SyntheticSet:
    """scikit-learn's 1797 real handwritten 8x8 digits, scaled to 30-55% of the image, coloured, on clutter.

    Class = the digit (0..num_classes-1). The glyph is placed with a per-image affine warp (bilinear), its mask is
    glyph intensity > 0.35; the glyph colour contrasts with the background under it, and plain half-disks are
    the distractors (rings and bars would look like 0s and 1s).
    """
    _check(n, size, num_classes, 10, "make_synthetic_digits")
    glyphs, targets = _load_digit_glyphs()
    g = torch.Generator().manual_seed(int(seed))
    labels = balanced_labels(n, num_classes, g)
    # a random glyph of the right digit for every image
    by_digit = [torch.nonzero(targets == d).squeeze(1) for d in range(num_classes)]
    counts = torch.tensor([len(i) for i in by_digit])
    pick = (torch.rand(n, generator=g) * counts[labels]).long()
    order = torch.cat(by_digit)
    offsets = torch.cat([torch.zeros(1, dtype=torch.long), counts.cumsum(0)[:-1]])
    glyph_idx = order[offsets[labels] + pick]

    images, masks = [], []
    xs, ys = _pixel_grid(size)
    for start in range(0, n, CHUNK):
        idx = glyph_idx[start:start + CHUNK]
        b = idx.numel()
        img = _clutter(b, size, g, xs, ys)
        # half-disks only: rings would read as 0s and bars as 1s
        img, _ = _distractors(img, 3, size, g, xs, ys, (0.08, 0.18), kinds=(2,))
        side = _u(g, (b,), 0.30, 0.55)  # glyph side / image side
        cx = _u(g, (b,), -1, 1) * (1 - side)  # centre in [-1, 1] normalised coordinates, glyph inside the image
        cy = _u(g, (b,), -1, 1) * (1 - side)
        theta = torch.zeros(b, 2, 3)
        theta[:, 0, 0] = 1 / side
        theta[:, 1, 1] = 1 / side
        theta[:, 0, 2] = -cx / side
        theta[:, 1, 2] = -cy / side
        grid = F.affine_grid(theta, (b, 1, size, size), align_corners=False)
        ink = F.grid_sample(glyphs[idx].unsqueeze(1), grid, mode="bilinear", padding_mode="zeros",
                            align_corners=False).squeeze(1)  # (B, S, S) in [0, 1]
        mask = ink > 0.35
        alpha = ink.clamp(0, 1).unsqueeze(1)
        # contrast with the background under the glyph, channel by channel
        under = (img * alpha).sum((2, 3), keepdim=True) / alpha.sum((2, 3), keepdim=True).clamp_min(1e-6)
        colour = torch.where(under > 0.5, _u(g, (b, 3, 1, 1), 0.0, 0.3), _u(g, (b, 3, 1, 1), 0.7, 1.0))
        img = img * (1 - alpha) + colour * alpha
        images.append(_finish(img, g))
        masks.append(mask)
    masks = torch.cat(masks)
    return SyntheticSet(torch.cat(images), labels, tight_boxes(masks), masks, None,
                        [str(d) for d in range(num_classes)], "digits", int(seed))


# --------------------------------------------------------------------------------------------------------------

GENERATORS = {"synthetic": make_synthetic_wsol, "finegrained": make_synthetic_finegrained,
              "digits": make_synthetic_digits}


def split_seeds(seed: int) -> tuple[int, int]:
    """(train seed, test seed) derived from one seed; never equal, and distinct across different seeds."""
    return 2 * int(seed) + 1_000_003, 2 * int(seed) + 1_000_004


def synthetic_splits(kind: str = "synthetic", n_train: int = 4000, n_test: int = 1000, seed: int = 0,
                     **kwargs) -> tuple[SyntheticSet, SyntheticSet]:
    """(train, test) sets of ``kind`` in {synthetic, finegrained, digits}, generated from disjoint seeds."""
    if kind not in GENERATORS:
        raise ValueError(f"unknown synthetic dataset {kind!r}; expected one of {sorted(GENERATORS)}")
    train_seed, test_seed = split_seeds(seed)
    make = GENERATORS[kind]
    return make(n_train, seed=train_seed, **kwargs), make(n_test, seed=test_seed, **kwargs)
