"""Boxes from score maps, exactly as the wsolevaluation protocol draws them, and fast.

The protocol (Choe et al., CVPR 2020; ``../shared/DESIGN.md``, "Protocol details") quantises a score map to
``uint8(map * 255)``, keeps the pixels strictly above ``int(t * max)`` for each threshold ``t``, runs
``cv2.findContours(RETR_TREE, CHAIN_APPROX_SIMPLE)`` and turns every contour into the box
``(x, y, min(x + w, W - 1), min(y + h, H - 1))`` of its bounding rectangle (no contour: ``[0, 0, 0, 0]``).

Running a contour search for each of 1000 thresholds is slow. Two facts make it fast without changing a result:

1. Only the integer level ``L = int(t * max)`` matters, so there are at most 256 distinct binary masks
   ``{q > L}`` per image, and they are nested: lowering ``L`` only adds pixels.
2. With ``RETR_TREE`` the contours of ``{q > L}`` are exactly
   - one outer contour per 8-connected foreground component, whose bounding rectangle is the component's
     pixel extent, and
   - one hole contour per 4-connected background component that does not touch the image border (OpenCV
     treats the outside of the image as background). The hole contour runs through the foreground pixels that
     are 4-adjacent to the hole, so its rectangle is the hole's extent grown by one pixel on every side.
   Only the set of rectangles matters for "best IoU over boxes", not the contours' order or count.

So one union-find sweep from high to low values tracks the foreground components' extents at every level. For the
holes, a priority flood from the border first gives each pixel its spill level (the lowest level at which it
joins the outside); only pixels below their spill level ever lie in a hole, all pixels of one hole share its
spill level, and a second, small union-find sweep from low to high values over those pixels tracks the holes until
they open. Each sweep keeps, per IoU level ``delta``, how many live components reach ``IoU >= delta`` with a GT
box; an image is a hit at ``L`` when either count is positive. This is ``hits_per_level`` (numba, about 2 ms for
a 224 x 224 map on one core). Without numba the same table comes from one OpenCV contour search per distinct
level (exact, a few times slower than numba). ``tests/test_metrics_boxes.py`` checks every level of many hard
cases against the contour search.

GT-known Loc needs the largest contour at a single threshold; that is one OpenCV call per image
(``largest_contour_boxes``), identical to the protocol by construction.
"""
from __future__ import annotations

import os
from typing import Sequence

import cv2
import numpy as np
import torch

from dualcam_lib.box_scaling import rescale_boxes  # noqa: F401  (re-exported: the metrics' public API)

try:  # numba makes the level sweep ~50x faster than a contour search per threshold; it is optional
    import numba
except ImportError:  # pragma: no cover - exercised only where numba is absent
    numba = None
else:
    # numba's default cache sits beside the source (the package's __pycache__): that dirties a checkout and fails on
    # a read-only install. Unless the user chose a folder (NUMBA_CACHE_DIR), compiled kernels go to the user's cache.
    if not os.environ.get("NUMBA_CACHE_DIR"):
        from dualcam_lib.paths import numba_cache_dir

        numba.config.CACHE_DIR = str(numba_cache_dir())

DEFAULT_THRESHOLDS = np.arange(0, 1, 0.001)
"""The protocol's score-map thresholds 0.000, 0.001, ..., 0.999 (float64, exactly ``np.arange(0, 1, 0.001)``)."""

NUM_LEVELS = 256


# --------------------------------------------------------------------------------------------- validation, levels
def check_scoremaps(maps, name: str = "maps", check_values: bool = True) -> torch.Tensor:
    """Validate ``(B, H, W)`` float score maps in [0, 1] (finite) and return them as a tensor (device kept).

    ``check_values=False`` checks only the type and shape (``quantize_scoremaps`` checks the values itself).
    """
    if not isinstance(maps, torch.Tensor):
        maps = torch.as_tensor(np.asarray(maps))
    if maps.dim() != 3:
        raise ValueError(f"{name} must have shape (B, H, W), got {tuple(maps.shape)}")
    if not maps.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor with values in [0, 1], got dtype {maps.dtype}")
    if maps.numel() == 0:
        raise ValueError(f"{name} is empty (shape {tuple(maps.shape)})")
    if check_values:
        low, high = torch.aminmax(maps.detach())
        low, high = float(low), float(high)
        if not (low >= 0 and high <= 1):  # NaN fails both comparisons, infinities the range
            if not bool(torch.isfinite(maps).all()):
                raise ValueError(f"{name} contains NaN or infinite values")
            raise ValueError(f"{name} must lie within [0, 1]; min={low}, max={high}")
    return maps.detach()


def check_thresholds(thresholds, name: str = "thresholds") -> np.ndarray:
    """``None`` -> the protocol's 1000 thresholds; otherwise a non-empty 1-D float64 array within [0, 1]."""
    if thresholds is None:
        return DEFAULT_THRESHOLDS.copy()
    values = np.asarray(thresholds, dtype=np.float64).reshape(-1)
    if values.size == 0 or not np.isfinite(values).all() or values.min() < 0 or values.max() > 1:
        raise ValueError(f"{name} must be a non-empty sequence of numbers within [0, 1]")
    return values


def quantize_scoremaps(maps, name: str = "maps") -> np.ndarray:
    """Validated ``(B, H, W)`` float maps in [0, 1] -> ``(B, H, W)`` uint8 numpy ``uint8(map * 255)``.

    The protocol feeds float64 maps, so the product is taken in float64 (a float32 product can round across an
    integer and change the uint8 value); casting truncates, as numpy's ``astype(uint8)`` does. CPU maps go through
    one fused pass (numba); maps on an accelerator are quantised there and only the bytes come back.
    """
    maps = check_scoremaps(maps, name, check_values=False)
    if maps.device.type == "cpu" and numba is not None:
        if maps.dtype not in (torch.float32, torch.float64):
            maps = maps.float()  # float16 / bfloat16 -> float32 is exact
        array = maps.contiguous().numpy()
        quantized = np.empty(array.shape, dtype=np.uint8)
        if not _quantize_checked(array.reshape(-1), quantized.reshape(-1)):
            check_scoremaps(maps, name)  # raises the detailed error
        return quantized
    maps = check_scoremaps(maps, name)
    if maps.device.type == "mps":  # no float64 there
        maps = maps.cpu()
    quantized = (maps.to(torch.float64) * 255).to(torch.uint8)
    return np.ascontiguousarray(quantized.cpu().numpy())


def threshold_levels(thresholds: np.ndarray, max_values: np.ndarray) -> np.ndarray:
    """``(T,)`` thresholds x ``(B,)`` uint8 maxima -> ``(B, T)`` int64 levels ``int(t * max)``, capped at 255.

    Pixels strictly above the level are foreground; a level >= the map's maximum leaves none.
    """
    products = np.asarray(thresholds, dtype=np.float64)[None, :] * np.asarray(max_values, np.float64)[:, None]
    return np.minimum(products.astype(np.int64), NUM_LEVELS - 1)


def as_box_list(gt_boxes, batch_size: int, name: str = "gt_boxes") -> list[np.ndarray]:
    """Validate a list of ``B`` ``(K_i, 4)`` integer boxes (x0, y0, x1, y1 inclusive) -> list of int64 arrays."""
    if isinstance(gt_boxes, torch.Tensor) and gt_boxes.dim() == 3:
        gt_boxes = list(gt_boxes)
    if len(gt_boxes) != batch_size:
        raise ValueError(f"{name} has {len(gt_boxes)} entries for {batch_size} maps")
    boxes = []
    for index, item in enumerate(gt_boxes):
        if isinstance(item, torch.Tensor):
            item = item.detach().cpu().numpy()
        array = np.asarray(item)
        if array.size == 0:
            raise ValueError(f"{name}[{index}] has no box; every image needs at least one GT box")
        if array.ndim == 1:
            array = array.reshape(1, -1)
        if array.ndim != 2 or array.shape[1] != 4:
            raise ValueError(f"{name}[{index}] must have shape (K, 4), got {array.shape}")
        if not np.array_equal(array, np.round(array)):
            raise ValueError(f"{name}[{index}] must hold integer pixel coordinates, got {array.tolist()}")
        array = array.astype(np.int64)
        if (array < 0).any() or (array[:, 2] < array[:, 0]).any() or (array[:, 3] < array[:, 1]).any():
            raise ValueError(f"{name}[{index}] must be non-negative (x0, y0, x1, y1) with x1 >= x0 and y1 >= y0, "
                             f"got {array.tolist()}")
        boxes.append(array)
    return boxes


# ------------------------------------------------------------------------------------------------------ IoU, boxes
def box_iou(boxes_a, boxes_b) -> torch.Tensor:
    """``(A, 4)`` x ``(B, 4)`` integer boxes (x0, y0, x1, y1 inclusive) -> ``(A, B)`` float64 IoU, +1 areas.

    Degenerate unions (impossible for valid boxes) give 0, as in the protocol.
    """
    a = torch.as_tensor(boxes_a).to(torch.int64).reshape(-1, 4)[:, None, :]
    b = torch.as_tensor(boxes_b).to(device=a.device, dtype=torch.int64).reshape(-1, 4)[None, :, :]
    inter_w = (torch.minimum(a[..., 2], b[..., 2]) - torch.maximum(a[..., 0], b[..., 0]) + 1).clamp(min=0)
    inter_h = (torch.minimum(a[..., 3], b[..., 3]) - torch.maximum(a[..., 1], b[..., 1]) + 1).clamp(min=0)
    intersection = inter_w * inter_h
    area_a = (a[..., 2] - a[..., 0] + 1) * (a[..., 3] - a[..., 1] + 1)
    area_b = (b[..., 2] - b[..., 0] + 1) * (b[..., 3] - b[..., 1] + 1)
    union = area_a + area_b - intersection
    degenerate = union <= 0
    iou = intersection.to(torch.float64) / torch.where(degenerate, torch.ones_like(union), union).to(torch.float64)
    return torch.where(degenerate, torch.zeros_like(iou), iou)


def _contour_boxes(mask: np.ndarray, multi_contour: bool) -> np.ndarray:
    """``(H, W)`` uint8 binary mask -> ``(K, 4)`` int64 protocol boxes (all contours or the largest)."""
    height, width = mask.shape
    contours = cv2.findContours(mask, cv2.RETR_TREE, cv2.CHAIN_APPROX_SIMPLE)[0]
    if len(contours) == 0:
        return np.zeros((1, 4), dtype=np.int64)
    if not multi_contour:
        contours = [max(contours, key=cv2.contourArea)]  # max() keeps the first of equal areas, like the protocol
    rects = np.array([cv2.boundingRect(c) for c in contours], dtype=np.int64).reshape(-1, 4)
    x, y, w, h = rects.T
    return np.stack([x, y, np.minimum(x + w, width - 1), np.minimum(y + h, height - 1)], axis=1)


def boxes_from_map(scoremap, thresholds=None, multi_contour: bool = True) -> list[torch.Tensor]:
    """Protocol boxes of one ``(H, W)`` map in [0, 1] at each threshold -> list of ``T`` ``(K_t, 4)`` long tensors.

    ``multi_contour=True``: one box per contour (MaxBoxAccV2); ``False``: the largest contour's box (GT-known Loc).
    Thresholds that fall on the same integer level share one contour search. Meant for figures and inspection.
    """
    scoremap = torch.as_tensor(scoremap)
    maps = check_scoremaps(scoremap[None] if scoremap.dim() == 2 else scoremap, "scoremap")
    if maps.shape[0] != 1:
        raise ValueError(f"boxes_from_map takes one (H, W) map, got shape {tuple(scoremap.shape)}")
    image = quantize_scoremaps(maps)[0]
    levels = threshold_levels(check_thresholds(thresholds), image.max()[None])[0]
    by_level = {}
    for level in np.unique(levels):
        mask = np.where(image > level, 255, 0).astype(np.uint8)
        by_level[int(level)] = torch.from_numpy(_contour_boxes(mask, multi_contour))
    return [by_level[int(level)].clone() for level in levels]


def largest_contour_boxes(images: np.ndarray, levels: np.ndarray) -> np.ndarray:
    """``(B, H, W)`` uint8 score images, ``(B,)`` levels -> ``(B, 4)`` int64 box of the largest contour of ``q > L``."""
    boxes = np.empty((len(images), 4), dtype=np.int64)
    for index, (image, level) in enumerate(zip(images, levels)):
        mask = np.where(image > level, 255, 0).astype(np.uint8)
        boxes[index] = _contour_boxes(mask, multi_contour=False)[0]
    return boxes


def _iou_matrix(boxes_a: np.ndarray, boxes_b: np.ndarray) -> np.ndarray:
    """numpy twin of ``box_iou``: ``(A, 4)`` x ``(B, 4)`` int64 -> ``(A, B)`` float64."""
    a, b = boxes_a[:, None, :], boxes_b[None, :, :]
    inter_w = np.maximum(0, np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]) + 1)
    inter_h = np.maximum(0, np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]) + 1)
    intersection = inter_w * inter_h
    union = ((a[..., 2] - a[..., 0] + 1) * (a[..., 3] - a[..., 1] + 1)
             + (b[..., 2] - b[..., 0] + 1) * (b[..., 3] - b[..., 1] + 1) - intersection)
    return np.where(union > 0, intersection / np.where(union > 0, union, 1), 0.0)


def best_iou_per_image(boxes: np.ndarray, gt_boxes: list[np.ndarray]) -> np.ndarray:
    """``(B, 4)`` one predicted box per image, ``B`` arrays ``(K_i, 4)`` -> ``(B,)`` float64 best IoU (protocol's)."""
    padded, counts = pad_boxes(gt_boxes)
    a = np.asarray(boxes, dtype=np.int64)[:, None, :]
    inter_w = np.maximum(0, np.minimum(a[..., 2], padded[..., 2]) - np.maximum(a[..., 0], padded[..., 0]) + 1)
    inter_h = np.maximum(0, np.minimum(a[..., 3], padded[..., 3]) - np.maximum(a[..., 1], padded[..., 1]) + 1)
    intersection = inter_w * inter_h
    area_a = (a[..., 2] - a[..., 0] + 1) * (a[..., 3] - a[..., 1] + 1)
    area_b = (padded[..., 2] - padded[..., 0] + 1) * (padded[..., 3] - padded[..., 1] + 1)
    union = area_a + area_b - intersection
    iou = np.where(union > 0, intersection / np.where(union > 0, union, 1), 0.0)
    iou[np.arange(padded.shape[1])[None, :] >= counts[:, None]] = -1.0  # padding
    return iou.max(axis=1)


# -------------------------------------------------------------------------------------------- hits at every level
def pad_boxes(boxes: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """List of ``(K_i, 4)`` int64 -> ``(B, K_max, 4)`` int64 (zero padded) and ``(B,)`` counts."""
    counts = np.array([len(b) for b in boxes], dtype=np.int64)
    padded = np.zeros((len(boxes), max(1, int(counts.max(initial=1))), 4), dtype=np.int64)
    for index, b in enumerate(boxes):
        padded[index, :len(b)] = b
    return padded, counts


def hits_per_level(images: np.ndarray, gt_boxes: list[np.ndarray], iou_thresholds: Sequence[float],
                   levels_needed: np.ndarray | None = None, backend: str = "auto") -> np.ndarray:
    """Whether each image's best all-contour IoU reaches each ``delta`` at each integer level.

    images: ``(B, H, W)`` uint8 quantised maps; gt_boxes: ``B`` arrays ``(K_i, 4)``; iou_thresholds: ``(D,)``.
    Returns ``(B, 256, D)`` bool: entry ``[b, L, d]`` is ``max IoU(boxes of {q_b > L}, GT_b) >= delta_d``.
    ``backend``: "numba" (union-find sweeps), "opencv" (one contour search per level in ``levels_needed``, other
    levels left False) or "auto" (numba when installed).
    """
    deltas = np.asarray(iou_thresholds, dtype=np.float64)
    images = np.ascontiguousarray(images, dtype=np.uint8)
    if backend == "auto":
        backend = "numba" if numba is not None else "opencv"
    if backend == "numba":
        if numba is None:
            raise RuntimeError("backend='numba' needs the numba package (pip install numba)")
        if len(deltas) > 30:
            raise ValueError(f"at most 30 IoU thresholds, got {len(deltas)}")
        padded, counts = pad_boxes(gt_boxes)
        return _sweep_batch(images, padded, counts, deltas, *_NEIGHBOUR_GROUPS[8], *_NEIGHBOUR_GROUPS[4]).astype(bool)
    if backend != "opencv":
        raise ValueError(f"backend must be 'auto', 'numba' or 'opencv', got {backend!r}")
    hits = np.zeros((len(images), NUM_LEVELS, len(deltas)), dtype=bool)
    for index, (image, boxes) in enumerate(zip(images, gt_boxes)):
        wanted = range(NUM_LEVELS) if levels_needed is None else np.unique(levels_needed[index])
        for level in wanted:
            mask = np.where(image > level, 255, 0).astype(np.uint8)
            best = _iou_matrix(_contour_boxes(mask, multi_contour=True), boxes).max()
            hits[index, level] = best >= deltas
    return hits


_NEIGHBOUR_STEPS = ((-1, 0), (1, 0), (0, -1), (0, 1), (-1, -1), (-1, 1), (1, -1), (1, 1))
"""(dy, dx) of the neighbours, in the order of the kernels' ``offsets``: the 4-neighbours, then the diagonals."""


def _neighbour_groups(connectivity: int) -> tuple[np.ndarray, np.ndarray]:
    """For each bit mask of active neighbours (bit j: ``_NEIGHBOUR_STEPS[j]``), one representative neighbour per
    group of mutually connected active neighbours -> ``(2**c, 4)`` int64 indices and ``(2**c,)`` counts.

    Active neighbours that are adjacent to each other (under the connectivity) were joined when the later of them
    was added, so a new pixel needs one find per group only.
    """
    steps = _NEIGHBOUR_STEPS[:connectivity]

    def adjacent(a, b):
        dy, dx = abs(a[0] - b[0]), abs(a[1] - b[1])
        return max(dy, dx) == 1 if connectivity == 8 else dy + dx == 1

    representatives = np.zeros((2 ** connectivity, 4), dtype=np.int64)
    counts = np.zeros(2 ** connectivity, dtype=np.int64)
    for mask in range(2 ** connectivity):
        active = [j for j in range(connectivity) if mask >> j & 1]
        group = {j: j for j in active}  # tiny union-find over the active neighbours
        for a in active:
            for b in active:
                if a < b and adjacent(steps[a], steps[b]):
                    old, new = group[b], group[a]
                    group = {j: (new if g == old else g) for j, g in group.items()}
        leaders = sorted(set(group.values()))
        counts[mask] = len(leaders)
        representatives[mask, :len(leaders)] = leaders
    return representatives, counts


_NEIGHBOUR_GROUPS = {8: _neighbour_groups(8), 4: _neighbour_groups(4)}


# The kernels below are plain Python that numba compiles (lazily, cached under __pycache__); without numba they
# are never called (the "opencv" backend is used instead). Pixel indices inside them live in a frame padded by
# one pixel, so neighbours need no bounds checks: padded index = pixel + 2 * y + W + 3 for pixel = y * W + x.
#
# Union-find layout, kept small so that it stays in cache: ``parent`` holds one int32 per padded pixel: -1 for an
# inactive pixel, the index of another pixel of the same set, or ``-2 - s`` for the root of set ``s``. Only sets
# (components) have a row in the ``sets`` table; its columns are below.
_jit = numba.njit(cache=True, nogil=True) if numba is not None else (lambda function: function)

_SIZE, _X0, _Y0, _X1, _Y1, _STAMP, _HITS, _ROOT = range(8)
# size, extent (inclusive), last level at which the set was queued for rescoring, bit mask of the IoU thresholds
# its box reaches (bit d: IoU >= delta d), root pixel (-1 once merged into another set)
_NUM_COLUMNS = 8


@_jit
def _find_root(parent, p):
    """Root pixel of active pixel ``p``'s set, halving the path on the way."""
    while True:
        up = parent[p]
        if up < 0:
            return p
        above = parent[up]
        if above < 0:
            return up
        parent[p] = above
        p = above


@_jit
def _hit_mask(x0, y0, x1, y1, gt, num_gt, deltas):
    """Bit d set when the box's best IoU over ``num_gt`` GT boxes reaches ``deltas[d]`` (inclusive areas, float64
    division, as the protocol computes it)."""
    best = 0.0
    area = (x1 - x0 + 1) * (y1 - y0 + 1)
    for k in range(num_gt):
        inter_w = min(x1, gt[k, 2]) - max(x0, gt[k, 0]) + 1
        inter_h = min(y1, gt[k, 3]) - max(y0, gt[k, 1]) + 1
        inter = max(0, inter_w) * max(0, inter_h)
        union = area + (gt[k, 2] - gt[k, 0] + 1) * (gt[k, 3] - gt[k, 1] + 1) - inter
        iou = 0.0 if union <= 0 else inter / union
        if iou > best:
            best = iou
    mask = 0
    for d in range(deltas.shape[0]):
        if best >= deltas[d]:
            mask |= 1 << d
    return mask


@_jit
def _rescore(s, new, sets, counts):
    """Set set ``s``'s hit mask, keeping ``counts[d]`` = number of live sets whose box reaches delta d."""
    old = sets[s, _HITS]
    if new != old:
        for d in range(counts.shape[0]):
            counts[d] += ((new >> d) & 1) - ((old >> d) & 1)
        sets[s, _HITS] = new


@_jit
def _level_sweep(foreground, order, starts, padded_width, height, width, top, gt, num_gt, deltas, hits, parent, sets,
                 dirty, dying, dying_starts, representatives, num_representatives):
    """One union-find sweep over the levels of one image, marking ``hits[L, d]`` when some contour's box at level
    ``L`` reaches ``deltas[d]``. ``order[starts[v]:starts[v + 1]]`` are the padded indices of the pixels of value
    ``v`` that take part.

    foreground=True: adds the pixels from value ``top`` down to 1 with 8-connectivity; after value ``v`` the sets
    are the components of ``{q > v - 1}`` and their boxes are the protocol's outer-contour boxes.
    foreground=False: adds the hole pixels (``q < spill``, see ``_spill_levels``) from value 0 up to ``top - 1``
    with 4-connectivity. The pixels of one hole share its spill level, at which the whole hole joins the outside;
    ``dying[dying_starts[L]:dying_starts[L + 1]]`` are the hole pixels whose hole disappears at level ``L``. A hole
    contour runs through the foreground pixels 4-adjacent to the hole, so its box is the hole's extent grown by one
    pixel on each side (then clipped like any box). ``representatives`` / ``num_representatives``: the
    ``_NEIGHBOUR_GROUPS`` table for the connectivity.
    """
    offsets = np.array([-padded_width, padded_width, -1, 1,
                        -padded_width - 1, -padded_width + 1, padded_width - 1, padded_width + 1])
    inverse_width = 1.0 / padded_width  # (p + 0.5) * inverse_width never rounds across a row: no division needed
    num_neighbours = 8 if foreground else 4
    grow = 0 if foreground else 1
    parent[:] = -1  # the padding frame stays inactive for ever
    counts = np.zeros(deltas.shape[0], dtype=np.int64)
    num_sets = 0
    if foreground:
        first, last, step = top, 0, -1
    else:
        first, last, step = 0, top, 1
    for v in range(first, last, step):
        num_dirty = 0
        for i in range(starts[v], starts[v + 1]):
            p = order[i]
            y = np.int32((p + 0.5) * inverse_width)  # padded coordinates: the image starts at (1, 1)
            x = np.int32(p - y * padded_width)
            root = -1  # root pixel of the set p joins
            # which neighbours are active (bit j: offsets[j]); active neighbours adjacent to each other are
            # already in one set, so only one representative per group of them needs a find
            mask = 0
            for j in range(num_neighbours):
                mask |= np.int64(parent[p + offsets[j]] != -1) << j
            for t in range(num_representatives[mask]):
                q = p + offsets[representatives[mask, t]]
                up = parent[q]
                if up == root or q == root:
                    continue  # already in p's set
                other = _find_root(parent, q)
                if other == root:
                    continue
                if root < 0:
                    root = other
                    continue
                # p touches two sets: merge the smaller into the larger
                keep, gone = -2 - parent[root], -2 - parent[other]
                if sets[keep, _SIZE] < sets[gone, _SIZE]:
                    keep, gone = gone, keep
                    root, other = other, root
                parent[other] = root
                sets[keep, _SIZE] += sets[gone, _SIZE]
                sets[keep, _X0] = min(sets[keep, _X0], sets[gone, _X0])
                sets[keep, _Y0] = min(sets[keep, _Y0], sets[gone, _Y0])
                sets[keep, _X1] = max(sets[keep, _X1], sets[gone, _X1])
                sets[keep, _Y1] = max(sets[keep, _Y1], sets[gone, _Y1])
                sets[gone, _ROOT] = -1
                if sets[gone, _HITS] != 0:
                    _rescore(gone, 0, sets, counts)  # merged away: no longer a box of its own
            if root < 0:  # a new component
                s = num_sets
                num_sets += 1
                parent[p] = -2 - s
                sets[s, _SIZE] = 1
                sets[s, _X0] = x
                sets[s, _Y0] = y
                sets[s, _X1] = x
                sets[s, _Y1] = y
                sets[s, _STAMP] = -1
                sets[s, _HITS] = 0
                sets[s, _ROOT] = p
            else:
                parent[p] = root
                s = -2 - parent[root]
                sets[s, _SIZE] += 1
                sets[s, _X0] = min(sets[s, _X0], x)
                sets[s, _Y0] = min(sets[s, _Y0], y)
                sets[s, _X1] = max(sets[s, _X1], x)
                sets[s, _Y1] = max(sets[s, _Y1], y)
            if sets[s, _STAMP] != v:  # rescore the set at the end of the level
                sets[s, _STAMP] = v
                dirty[num_dirty] = s
                num_dirty += 1
        for i in range(num_dirty):
            s = dirty[i]
            if sets[s, _ROOT] < 0:
                continue
            # the protocol's box: x1 = min(x + w, W - 1), w being the bounding rectangle's width (and the padded
            # coordinates are one more than the image's)
            x0, y0 = sets[s, _X0] - 1 - grow, sets[s, _Y0] - 1 - grow
            x1 = min(sets[s, _X1] + grow, width - 1)
            y1 = min(sets[s, _Y1] + grow, height - 1)
            _rescore(s, _hit_mask(x0, y0, x1, y1, gt, num_gt, deltas), sets, counts)
        if not foreground:
            for i in range(dying_starts[v], dying_starts[v + 1]):
                root = _find_root(parent, dying[i])
                _rescore(-2 - parent[root], 0, sets, counts)  # the hole opens to the outside
        level = v - 1 if foreground else v
        for d in range(deltas.shape[0]):
            if counts[d] > 0:
                hits[level, d] = 1


@_jit
def _counting_sort(keys, items, num_items, order, starts):
    """Sort ``items[:num_items]`` by ``keys[item]`` (uint8-range values) into ``order``; afterwards
    ``order[starts[k]:starts[k + 1]]`` are the items with key ``k``, in their original order."""
    starts[:] = 0
    for i in range(num_items):
        starts[keys[items[i]] + 2] += 1
    for k in range(2, starts.shape[0]):
        starts[k] += starts[k - 1]
    for i in range(num_items):
        slot = keys[items[i]] + 1
        order[starts[slot]] = items[i]
        starts[slot] += 1


@_jit
def _spill_levels(padded_values, height, width, spill, following, hole_pixels):
    """Priority flood from the border (4-connectivity): ``spill[p]`` becomes the lowest level ``L`` at which pixel
    ``p`` lies in a component of ``{q <= L}`` that reaches the border, i.e. the smallest, over 4-paths to the
    border, of the largest value on the path. A pixel lies in a hole exactly at the levels ``q <= L < spill``.
    Writes the pixels with ``q < spill`` to ``hole_pixels`` and returns their number. ``following``: scratch."""
    padded_width = width + 2
    offsets = np.array([-padded_width, padded_width, -1, 1])
    spill[:] = 0  # the frame counts as already visited
    heads = np.full(256, -1, dtype=np.int32)
    for y in range(1, height + 1):
        for x in range(1, width + 1):
            p = y * padded_width + x
            if y == 1 or x == 1 or y == height or x == width:
                level = np.int32(padded_values[p])
                spill[p] = level
                following[p] = heads[level]
                heads[level] = p
            else:
                spill[p] = -1
    num_holes = 0
    for level in range(256):
        while heads[level] >= 0:
            p = heads[level]
            heads[level] = following[p]
            for j in range(4):
                q = p + offsets[j]
                if spill[q] < 0:
                    value = np.int32(padded_values[q])
                    if value < level:
                        hole_pixels[num_holes] = q
                        num_holes += 1
                        reached = level
                    else:
                        reached = value
                    spill[q] = reached
                    following[q] = heads[reached]
                    heads[reached] = q
    return num_holes


@_jit
def _sweep_batch(images, gt, num_gt, deltas, reps8, num_reps8, reps4, num_reps4):
    """``(B, H, W)`` uint8, ``(B, K, 4)`` GT, ``(B,)`` GT counts, ``(D,)`` deltas -> ``(B, 256, D)`` uint8 hits.
    ``reps8`` .. ``num_reps4``: ``_neighbour_groups(8)`` and ``_neighbour_groups(4)``."""
    batch, height, width = images.shape
    n = height * width
    padded_width = width + 2
    padded = (height + 2) * padded_width
    num_deltas = deltas.shape[0]
    hits = np.zeros((batch, 256, num_deltas), dtype=np.uint8)
    padded_values = np.zeros(padded, dtype=np.uint8)
    pixels = np.empty(n, dtype=np.int32)
    for y in range(height):
        for x in range(width):
            pixels[y * width + x] = (y + 1) * padded_width + x + 1
    parent = np.empty(padded, dtype=np.int32)
    sets = np.empty((n, _NUM_COLUMNS), dtype=np.int32)
    dirty = np.empty(n, dtype=np.int32)
    spill = np.empty(padded, dtype=np.int32)
    following = np.empty(padded, dtype=np.int32)
    order = np.empty(n, dtype=np.int32)
    hole_pixels = np.empty(n, dtype=np.int32)
    hole_order = np.empty(n, dtype=np.int32)
    dying = np.empty(n, dtype=np.int32)
    starts = np.empty(258, dtype=np.int64)
    hole_starts = np.empty(258, dtype=np.int64)
    dying_starts = np.empty(258, dtype=np.int64)
    for b in range(batch):
        top = 0
        for y in range(height):
            for x in range(width):
                value = images[b, y, x]
                padded_values[(y + 1) * padded_width + x + 1] = value
                top = max(top, value)
        _counting_sort(padded_values, pixels, n, order, starts)
        _level_sweep(True, order, starts, padded_width, height, width, top, gt[b], num_gt[b], deltas, hits[b],
                     parent, sets, dirty, dying, dying_starts, reps8, num_reps8)
        num_holes = _spill_levels(padded_values, height, width, spill, following, hole_pixels)
        _counting_sort(padded_values, hole_pixels, num_holes, hole_order, hole_starts)
        _counting_sort(spill, hole_pixels, num_holes, dying, dying_starts)
        _level_sweep(False, hole_order, hole_starts, padded_width, height, width, top, gt[b], num_gt[b], deltas,
                     hits[b], parent, sets, dirty, dying, dying_starts, reps4, num_reps4)
        # levels at or above the maximum: no foreground, no contour, the box [0, 0, 0, 0]
        empty = _hit_mask(0, 0, 0, 0, gt[b], num_gt[b], deltas)
        for level in range(top, 256):
            for d in range(num_deltas):
                hits[b, level, d] = (empty >> d) & 1
    return hits


@_jit
def _quantize_checked(values, out):
    """``out[i] = uint8(float64(values[i]) * 255)``; returns False at the first value outside [0, 1] (or NaN)."""
    for i in range(values.shape[0]):
        value = np.float64(values[i])
        if not (value >= 0.0 and value <= 1.0):
            return False
        out[i] = np.uint8(value * 255.0)
    return True


@_jit
def _score_histograms(values, foreground, counted, edges, guess, true_hist, false_hist):
    """Adds each score to the histogram of its pixel's class: bin ``i`` holds ``edges[i] <= v < edges[i + 1]``
    (the last bin closed), np.histogram's convention; scores below ``edges[0]`` are dropped. ``foreground``:
    GT-true pixels; ``counted``: pixels that count at all (not in the ignore region). ``guess[c]`` is the bin of
    ``c / len(guess)``, a starting point that the two loops correct exactly."""
    num_cells = guess.shape[0]
    last = edges.shape[0] - 2
    for i in range(values.shape[0]):
        if not counted[i]:
            continue
        value = np.float64(values[i])
        index = guess[min(max(np.int64(value * num_cells), 0), num_cells - 1)]
        while index < last and edges[index + 1] <= value:
            index += 1
        while index >= 0 and edges[index] > value:
            index -= 1
        if index < 0:
            continue
        if foreground[i]:
            true_hist[index] += 1
        else:
            false_hist[index] += 1
