"""A plain, slow reference for the WSOL metrics: the wsolevaluation protocol (Choe et al., CVPR 2020) written out
one threshold and one image at a time with OpenCV contours.

This file is the ground truth for the tests of ``dualcam_lib.metrics`` and the baseline of
``benchmarks/bench_metrics.py``. It favours being obviously right over being fast: every step of the protocol is a
separate, readable line. It imports nothing from ``dualcam_lib``.

Protocol, as implemented here:
- a score map is an ``(H, W)`` float array in [0, 1]; it is taken to float64 and quantised to
  ``uint8(map * 255)`` (truncation);
- for a threshold ``t`` the binary mask keeps the pixels strictly above ``int(t * max(uint8 map))``;
- contours come from ``cv2.findContours(mask, RETR_TREE, CHAIN_APPROX_SIMPLE)`` (so hole contours count too);
- each contour gives the box ``x0 = x, y0 = y, x1 = min(x + w, W - 1), y1 = min(y + h, H - 1)`` from
  ``cv2.boundingRect``; no contour gives the box ``[0, 0, 0, 0]``;
- IoU uses inclusive pixel areas (``+ 1``), and an image's score at a threshold is the best IoU over
  (predicted boxes x ground-truth boxes);
- MaxBoxAccV2: thresholds ``np.arange(0, 1, 0.001)``, all contours, the best threshold per IoU level;
- GT-known Loc: threshold 0.2, the largest contour by ``cv2.contourArea`` only, IoU >= 0.5;
- PxAP: histograms of the scores on foreground / background pixels (ignore region left out), precision-recall
  from the cumulative counts, area under the curve x 100.
"""
from __future__ import annotations

import cv2
import numpy as np

DEFAULT_THRESHOLDS = np.arange(0, 1, 0.001)


def quantise(scoremap: np.ndarray) -> np.ndarray:
    """(H, W) float in [0, 1] -> (H, W) uint8, ``uint8(map * 255)`` computed in float64."""
    scoremap = np.asarray(scoremap, dtype=np.float64)
    if scoremap.ndim != 2:
        raise ValueError(f"a score map must be 2-D, got shape {scoremap.shape}")
    if not np.isfinite(scoremap).all() or scoremap.min() < 0 or scoremap.max() > 1:
        raise ValueError("a score map must be finite and within [0, 1]")
    return (scoremap * 255).astype(np.uint8)


def contours_at_level(image: np.ndarray, level: int) -> list:
    """All contours (RETR_TREE) of the pixels of the uint8 ``image`` strictly above ``level``."""
    _, mask = cv2.threshold(image, level, 255, cv2.THRESH_BINARY)
    contours, _hierarchy = cv2.findContours(mask, cv2.RETR_TREE, cv2.CHAIN_APPROX_SIMPLE)
    return list(contours)


def contour_box(contour: np.ndarray, height: int, width: int) -> list[int]:
    """The protocol's box of one contour: bounding rectangle with the far corner at x + w, y + h, clipped."""
    x, y, w, h = cv2.boundingRect(contour)
    return [x, y, min(x + w, width - 1), min(y + h, height - 1)]


def boxes_at_level(image: np.ndarray, level: int, multi_contour: bool) -> np.ndarray:
    """(K, 4) int boxes of one uint8 score image at one integer level: every contour, or only the largest one."""
    height, width = image.shape
    contours = contours_at_level(image, level)
    if len(contours) == 0:
        return np.array([[0, 0, 0, 0]])
    if not multi_contour:
        largest = contours[0]
        for contour in contours[1:]:
            if cv2.contourArea(contour) > cv2.contourArea(largest):
                largest = contour
        contours = [largest]
    return np.array([contour_box(c, height, width) for c in contours])


def boxes_at_threshold(image: np.ndarray, threshold: float, multi_contour: bool) -> np.ndarray:
    """(K, 4) int boxes of one uint8 score image at one threshold ``t``: the level is ``int(t * max)``."""
    return boxes_at_level(image, int(threshold * np.max(image)), multi_contour)


def iou_matrix(boxes_a: np.ndarray, boxes_b: np.ndarray) -> np.ndarray:
    """(A, 4) x (B, 4) int boxes (x0, y0, x1, y1 inclusive) -> (A, B) float64 IoU with +1 areas."""
    a = np.asarray(boxes_a, dtype=np.int64)[:, None, :]
    b = np.asarray(boxes_b, dtype=np.int64)[None, :, :]
    inter_w = np.maximum(0, np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]) + 1)
    inter_h = np.maximum(0, np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]) + 1)
    intersection = inter_w * inter_h
    area_a = (a[..., 2] - a[..., 0] + 1) * (a[..., 3] - a[..., 1] + 1)
    area_b = (b[..., 2] - b[..., 0] + 1) * (b[..., 3] - b[..., 1] + 1)
    union = area_a + area_b - intersection
    degenerate = union <= 0
    return np.where(degenerate, 0.0, intersection / np.where(degenerate, 1, union))


class ReferenceBoxEvaluator:
    """MaxBoxAccV2 (all contours, every threshold), GT-known Loc and Top-1 Loc, one image at a time."""

    def __init__(self, thresholds=DEFAULT_THRESHOLDS, iou_thresholds=(0.3, 0.5, 0.7), cam_threshold=0.2,
                 loc_iou_threshold=0.5):
        self.thresholds = np.asarray(thresholds, dtype=np.float64)
        self.iou_thresholds = tuple(iou_thresholds)
        self.cam_threshold = cam_threshold
        self.loc_iou_threshold = loc_iou_threshold
        self.num_correct = {delta: np.zeros(len(self.thresholds), dtype=np.int64) for delta in self.iou_thresholds}
        self.num_gt_known = 0
        self.num_top1 = 0
        self.saw_correct = False
        self.count = 0

    def best_iou_per_threshold(self, scoremap, gt_boxes) -> np.ndarray:
        """(T,) best IoU over all contour boxes x GT boxes at each threshold."""
        image = quantise(scoremap)
        gt_boxes = np.asarray(gt_boxes).reshape(-1, 4)
        boxes_per_threshold = [boxes_at_threshold(image, t, multi_contour=True) for t in self.thresholds]
        # one IoU call for all thresholds' boxes, then the best box per threshold
        ious = iou_matrix(np.concatenate(boxes_per_threshold), gt_boxes).max(axis=1)
        ends = np.cumsum([len(boxes) for boxes in boxes_per_threshold])
        starts = ends - np.array([len(boxes) for boxes in boxes_per_threshold])
        return np.array([ious[start:end].max() for start, end in zip(starts, ends)])

    def accumulate_one(self, scoremap, gt_boxes, correct=None):
        """One (H, W) float map, its (K, 4) GT boxes, and whether the classifier's top-1 class was right."""
        best = self.best_iou_per_threshold(scoremap, gt_boxes)
        for delta in self.iou_thresholds:
            self.num_correct[delta] += (best >= delta).astype(np.int64)

        largest = boxes_at_threshold(quantise(scoremap), self.cam_threshold, multi_contour=False)
        gt_known = iou_matrix(largest, np.asarray(gt_boxes).reshape(-1, 4)).max() >= self.loc_iou_threshold
        self.num_gt_known += int(gt_known)
        if correct is not None:
            self.saw_correct = True
            self.num_top1 += int(gt_known and bool(correct))
        self.count += 1

    def compute(self) -> dict:
        accuracies = {delta: self.num_correct[delta] * 100.0 / float(self.count) for delta in self.iou_thresholds}
        maxboxacc = {delta: float(accuracies[delta].max()) for delta in self.iou_thresholds}
        best_threshold = {delta: float(self.thresholds[int(np.argmax(accuracies[delta]))])
                          for delta in self.iou_thresholds}
        return {
            "maxboxacc_v2": float(np.mean([maxboxacc[delta] for delta in self.iou_thresholds])),
            "maxboxacc": maxboxacc,
            "best_threshold": best_threshold,
            "curves": np.stack([accuracies[delta] for delta in self.iou_thresholds], axis=1),
            "num_correct": np.stack([self.num_correct[delta] for delta in self.iou_thresholds], axis=1),
            "gt_known_loc": self.num_gt_known * 100.0 / float(self.count),
            "top1_loc": self.num_top1 * 100.0 / float(self.count) if self.saw_correct else None,
            "num_images": self.count,
        }


class ReferenceMaskEvaluator:
    """PxAP: pixel precision-recall over the thresholds, from score histograms on GT-true / GT-false pixels."""

    def __init__(self, thresholds=DEFAULT_THRESHOLDS):
        self.thresholds = np.asarray(thresholds, dtype=np.float64)
        # bins [t0, t1), ..., [t_last, 1), [1, 2), [2, 3]
        self.bin_edges = np.append(self.thresholds, [1.0, 2.0, 3.0])
        self.true_hist = np.zeros(len(self.bin_edges) - 1)
        self.false_hist = np.zeros(len(self.bin_edges) - 1)

    def accumulate_one(self, scoremap, mask, ignore=None):
        """(H, W) float map, (H, W) bool foreground mask, optional (H, W) bool ignore region."""
        scoremap = np.asarray(scoremap, dtype=np.float64)
        quantise(scoremap)  # validation only
        mask = np.asarray(mask, dtype=bool)
        ignore = np.zeros_like(mask) if ignore is None else np.asarray(ignore, dtype=bool)
        ignore = ignore & ~mask  # the ignore region never removes foreground
        true_scores = scoremap[mask]
        false_scores = scoremap[~mask & ~ignore]
        self.true_hist += np.histogram(true_scores, bins=self.bin_edges)[0]
        self.false_hist += np.histogram(false_scores, bins=self.bin_edges)[0]

    def compute(self) -> dict:
        num_true = self.true_hist.sum()
        tp = self.true_hist[::-1].cumsum()
        fn = num_true - tp
        fp = self.false_hist[::-1].cumsum()
        if ((tp + fn) <= 0).all():
            raise RuntimeError("no positive ground-truth pixel")
        if ((tp + fp) <= 0).all():
            raise RuntimeError("no positive prediction")
        defined = (tp + fp) != 0
        with np.errstate(invalid="ignore", divide="ignore"):
            precision = tp / (tp + fp)
            recall = tp / (tp + fn)
        auc = (precision[1:] * np.diff(recall))[defined[1:]].sum() * 100
        return {"pxap": float(auc), "precision": precision, "recall": recall}


# ------------------------------------------------------------------------------------------- hard cases for the tests
def structured_cases(seed: int = 0):
    """Named ``(H, W)`` float64 maps in [0, 1] that stress the protocol's corner cases, with GT boxes for each.

    Returns a list of ``(name, map, gt_boxes (K, 4) int)``.
    """
    rng = np.random.default_rng(seed)
    cases = []

    def add(name, scoremap, boxes):
        cases.append((name, np.clip(np.asarray(scoremap, dtype=np.float64), 0, 1), np.asarray(boxes).reshape(-1, 4)))

    size = (28, 32)
    yy, xx = np.mgrid[:size[0], :size[1]]
    blobs = np.zeros(size)
    for cy, cx, s, a in [(6, 7, 3, 1.0), (20, 24, 4, 0.7), (8, 25, 2, 0.5), (22, 6, 2.5, 0.85)]:
        blobs += a * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * s ** 2))
    add("several blobs", blobs / blobs.max(), [[2, 2, 12, 12], [18, 15, 30, 26]])
    border = np.exp(-((yy - 0) ** 2 + (xx - 31) ** 2) / 30) + 0.6 * np.exp(-((yy - 27) ** 2 + (xx - 0) ** 2) / 20)
    add("blobs touching the border", border / border.max(), [[24, 0, 31, 6], [0, 20, 7, 27]])
    ring = np.exp(-((np.hypot(yy - 14, xx - 16) - 8) ** 2) / 4)
    add("ring", ring, [[8, 6, 24, 22]])
    nested = (np.exp(-((np.hypot(yy - 14, xx - 16) - 11) ** 2) / 2) + 0.8 * np.exp(
        -((np.hypot(yy - 14, xx - 16) - 5) ** 2) / 2) + 0.6 * np.exp(-(np.hypot(yy - 14, xx - 16) ** 2) / 2))
    add("nested rings", nested / nested.max(), [[11, 9, 21, 19], [5, 3, 27, 25]])
    square_ring = np.zeros(size)
    square_ring[4:20, 5:25] = 1.0
    square_ring[8:16, 9:21] = 0.0
    square_ring[11:13, 14:16] = 0.6  # an island inside the hole
    add("square ring with an island", square_ring, [[9, 8, 20, 15], [14, 11, 15, 12]])
    open_ring = square_ring.copy()
    open_ring[10:13, 5:9] = 0.0  # the hole reaches the ring's outside: no hole any more
    add("ring opened sideways", open_ring, [[5, 4, 24, 19]])
    hole_at_border = np.ones(size)
    hole_at_border[0:6, 10:16] = 0.0
    hole_at_border[10:14, 12:18] = 0.2
    add("background touching the border is no hole", hole_at_border, [[12, 10, 17, 13], [0, 0, 31, 27]])
    add("constant one", np.ones(size), [[0, 0, 31, 27]])
    add("constant half", np.full(size, 0.5), [[3, 3, 10, 10]])
    add("all zero", np.zeros(size), [[0, 0, 0, 0], [5, 5, 6, 6]])
    add("all zero, box elsewhere", np.zeros(size), [[10, 10, 20, 20]])
    add("tiny and full-image boxes", blobs / blobs.max(), [[6, 5, 6, 5], [0, 0, 31, 27]])
    add("max below one", 0.3 * blobs / blobs.max(), [[2, 2, 12, 12]])
    add("max below 1/255", np.full(size, 0.003), [[0, 0, 31, 27]])
    single = np.zeros(size)
    single[[3, 10, 27, 0], [4, 31, 0, 15]] = [1.0, 0.5, 0.8, 0.9]
    add("one-pixel blobs", single, [[4, 3, 4, 3], [31, 10, 31, 10], [0, 27, 1, 27]])
    diagonal = np.zeros(size)
    for k in range(20):
        diagonal[3 + k, 4 + k] = 1.0 - 0.02 * k
        diagonal[3 + k, 26 - k] = 0.9
    add("diagonal-only connectivity", diagonal, [[4, 3, 26, 22], [10, 10, 15, 15]])
    diamond = np.zeros(size)
    for cy, cx in [(10, 10), (10, 12), (12, 10), (12, 12), (9, 11), (13, 11), (11, 9), (11, 13)]:
        diamond[cy, cx] = 1.0
    # a 4-connected hole at (11, 11) whose 8-ring is foreground, and diagonal gaps that do not open it
    add("diagonal hole walls", diamond, [[9, 9, 13, 13], [11, 11, 11, 11]])
    checker = ((yy + xx) % 2 == 0) * (0.5 + 0.5 * (yy % 4 == 0))
    add("checkerboard", checker, [[0, 0, 31, 27], [8, 8, 16, 16]])
    steps = np.floor(np.linspace(0, 1, size[1]) * 7) / 7 * np.ones(size)
    add("plateaus at k/255 edges", np.repeat(np.arange(size[1])[None, :] / 255.0, size[0], 0) * 8, [[20, 0, 31, 27]])
    add("staircase", steps, [[16, 0, 31, 27]])
    noisy = rng.random(size)
    add("white noise", noisy, [[3, 4, 20, 18], [10, 2, 30, 9]])
    holes = rng.random(size) ** 0.2
    add("noise with many holes", holes, [[1, 1, 30, 26], [12, 10, 14, 13]])
    add("one row", rng.random((1, 17)), [[2, 0, 9, 0]])
    add("one column", rng.random((13, 1)), [[0, 3, 0, 8]])
    add("two by two", np.array([[0.2, 1.0], [0.7, 0.1]]), [[0, 0, 1, 1]])
    big_box = np.zeros((16, 16))
    big_box[4:12, 4:12] = 1
    add("GT box beyond the map", big_box, [[0, 0, 40, 40]])
    return cases


def random_cam_maps(n: int, size=(32, 32), seed: int = 0, noise: float = 0.0) -> np.ndarray:
    """``(n, H, W)`` float64 CAM-like maps: 5x5 random fields upsampled bilinearly (OpenCV), min-max to [0, 1]."""
    rng = np.random.default_rng(seed)
    maps = []
    for _ in range(n):
        field = cv2.resize(rng.random((5, 5)), (size[1], size[0]), interpolation=cv2.INTER_LINEAR)
        field = field + noise * rng.random(size)
        maps.append((field - field.min()) / (field.max() - field.min()))
    return np.stack(maps)


def random_boxes(n: int, size=(32, 32), seed: int = 0) -> list:
    """``n`` int arrays ``(K, 4)`` of 1-3 random boxes inside an ``(H, W)`` map."""
    rng = np.random.default_rng(seed)
    boxes = []
    for _ in range(n):
        k = int(rng.integers(1, 4))
        xs = np.sort(rng.integers(0, size[1], size=(k, 2)), axis=1)
        ys = np.sort(rng.integers(0, size[0], size=(k, 2)), axis=1)
        boxes.append(np.stack([xs[:, 0], ys[:, 0], xs[:, 1], ys[:, 1]], axis=1))
    return boxes
