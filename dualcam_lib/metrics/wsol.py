"""WSOL metrics as accumulate/compute objects: MaxBoxAccV2, GT-known Loc, Top-1 Loc (``BoxAccuracy``) and PxAP.

The numbers are those of the wsolevaluation protocol (Choe et al., CVPR 2020) for the same score maps, bit for
bit: counts are equal, not close (``tests/test_metrics_wsol.py`` compares against ``tests/reference_wsol.py``).
How the boxes are found fast is explained in ``dualcam_lib.metrics.boxes``.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from dualcam_lib.metrics import boxes as _boxes
from dualcam_lib.metrics.boxes import (
    as_box_list,
    best_iou_per_image,
    check_scoremaps,
    check_thresholds,
    hits_per_level,
    largest_contour_boxes,
    quantize_scoremaps,
    threshold_levels,
)


class BoxAccuracy:
    """MaxBoxAccV2 over many thresholds, plus GT-known Loc and Top-1 Loc at one threshold.

    thresholds: score-map thresholds (default ``np.arange(0, 1, 0.001)``); iou_thresholds: the IoU levels
    ``delta`` of MaxBoxAccV2; cam_threshold: the threshold of GT-known / Top-1 Loc, which use the largest contour
    and ``IoU >= loc_iou_threshold``. backend: "auto" | "numba" | "opencv" (see ``hits_per_level``).
    per_image: also keep each image's hits, for ``per_image()`` and the bootstrap in
    ``dualcam_lib.metrics.bootstrap`` (``T * D`` bools per image: 3 kB with the default thresholds).
    """

    def __init__(self, thresholds=None, iou_thresholds: Sequence[float] = (0.3, 0.5, 0.7),
                 cam_threshold: float = 0.2, loc_iou_threshold: float = 0.5, backend: str = "auto",
                 per_image: bool = False):
        self.thresholds = check_thresholds(thresholds)
        self.iou_thresholds = tuple(float(delta) for delta in iou_thresholds)
        if not self.iou_thresholds or any(not 0 <= delta <= 1 for delta in self.iou_thresholds):
            raise ValueError(f"iou_thresholds must be non-empty numbers in [0, 1], got {iou_thresholds}")
        self.cam_threshold = float(check_thresholds([cam_threshold], "cam_threshold")[0])
        self.loc_iou_threshold = float(loc_iou_threshold)
        self.backend = backend
        self.keep_per_image = bool(per_image)
        self.reset()

    def reset(self) -> None:
        self.num_correct = np.zeros((len(self.thresholds), len(self.iou_thresholds)), dtype=np.int64)
        self.num_gt_known = 0
        self.num_top1 = 0
        self.num_images = 0
        self._with_correct = None  # whether batches came with top-1 correctness (must not change)
        # per-image tables (per_image=True): lists of batch arrays, concatenated on demand by per_image()
        self._hits_list: list[np.ndarray] = []
        self._gt_known_list: list[np.ndarray] = []
        self._top1_list: list[np.ndarray] = []

    def accumulate(self, maps, gt_boxes, correct=None) -> None:
        """maps ``(B, H, W)`` float in [0, 1] (any device); gt_boxes ``B`` tensors ``(K_i, 4)`` (x0, y0, x1, y1
        inclusive, in map pixels); correct ``(B,)`` bool (the classifier's top-1 class is right) or None."""
        images = quantize_scoremaps(maps)  # validates the maps too
        boxes = as_box_list(gt_boxes, len(images))
        if correct is not None:
            correct = torch.as_tensor(correct).detach().cpu().reshape(-1)
            if correct.numel() != len(images):
                raise ValueError(f"correct has {correct.numel()} entries for {len(images)} maps")
            correct = correct.numpy().astype(bool)
        if self._with_correct is None:
            self._with_correct = correct is not None
        elif self._with_correct != (correct is not None):
            raise ValueError("pass `correct` with every batch or with none (Top-1 Loc needs it for all images)")

        max_values = images.reshape(len(images), -1).max(axis=1)
        levels = threshold_levels(self.thresholds, max_values)  # (B, T)
        hits = hits_per_level(images, boxes, self.iou_thresholds, levels_needed=levels, backend=self.backend)
        rows = np.arange(len(images))[:, None]
        image_hits = hits[rows, levels]  # (B, T, D) bool
        self.num_correct += image_hits.sum(axis=0, dtype=np.int64)  # (T, D)

        loc_levels = threshold_levels(np.array([self.cam_threshold]), max_values)[:, 0]
        largest = largest_contour_boxes(images, loc_levels)
        gt_known = best_iou_per_image(largest, boxes) >= self.loc_iou_threshold
        self.num_gt_known += int(gt_known.sum())
        if correct is not None:
            self.num_top1 += int((gt_known & correct).sum())
        self.num_images += len(images)
        if self.keep_per_image:
            self._hits_list.append(np.ascontiguousarray(image_hits, dtype=bool))
            self._gt_known_list.append(np.asarray(gt_known, dtype=bool).reshape(-1))
            if correct is not None:
                self._top1_list.append(np.asarray(gt_known & correct, dtype=bool).reshape(-1))

    def per_image(self) -> dict:
        """Per-image results of every image accumulated so far, in order (needs ``per_image=True``).

        Returns ``hits`` ``(N, T, D)`` bool (the image's box hits at each threshold and IoU level; summed over
        ``N`` they give ``compute()``'s counts), ``gt_known`` ``(N,)`` bool, ``top1_loc`` ``(N,)`` bool (None
        without ``correct``), ``thresholds`` ``(T,)`` and ``iou_thresholds`` (the ``D`` deltas).
        """
        if not self.keep_per_image:
            raise RuntimeError("BoxAccuracy.per_image() needs BoxAccuracy(per_image=True)")
        if self.num_images == 0:
            raise RuntimeError("BoxAccuracy.per_image() called before any accumulate()")
        for items in (self._hits_list, self._gt_known_list, self._top1_list):
            if len(items) > 1:  # concatenate once, keep the result for later calls and batches
                items[:] = [np.concatenate(items)]
        return {
            "hits": self._hits_list[0],
            "gt_known": self._gt_known_list[0],
            "top1_loc": self._top1_list[0] if self._with_correct else None,
            "thresholds": self.thresholds.copy(),
            "iou_thresholds": self.iou_thresholds,
        }

    def compute(self) -> dict:
        """Metrics in percent.

        Returns ``maxboxacc_v2`` (mean over the IoU levels), ``maxboxacc`` {delta: best accuracy},
        ``best_threshold`` {delta: first threshold reaching it}, ``curves`` ``(T, D)`` float64 accuracy per
        threshold, ``thresholds`` ``(T,)``, ``gt_known_loc``, ``top1_loc`` (None without ``correct``),
        ``num_images``.
        """
        if self.num_images == 0:
            raise RuntimeError("BoxAccuracy.compute() called before any accumulate()")
        curves = self.num_correct * 100.0 / float(self.num_images)
        maxboxacc = {delta: float(curves[:, d].max()) for d, delta in enumerate(self.iou_thresholds)}
        best = {delta: float(self.thresholds[int(np.argmax(curves[:, d]))])
                for d, delta in enumerate(self.iou_thresholds)}
        return {
            "maxboxacc_v2": float(np.mean([maxboxacc[delta] for delta in self.iou_thresholds])),
            "maxboxacc": maxboxacc,
            "best_threshold": best,
            "curves": torch.from_numpy(curves),
            "thresholds": torch.from_numpy(self.thresholds.copy()),
            "gt_known_loc": self.num_gt_known * 100.0 / float(self.num_images),
            "top1_loc": self.num_top1 * 100.0 / float(self.num_images) if self._with_correct else None,
            "num_images": self.num_images,
        }


class PxAP:
    """Pixel average precision: the area under the pixel precision-recall curve over the thresholds, x 100.

    Scores are binned at the edges ``thresholds + [1, 2, 3]``; foreground pixels feed one histogram, background
    pixels outside the ignore region the other (the ignore region never removes foreground pixels).
    """

    def __init__(self, thresholds=None):
        self.thresholds = check_thresholds(thresholds)
        if (np.diff(self.thresholds) <= 0).any() or self.thresholds[-1] >= 1:
            raise ValueError("PxAP thresholds must increase strictly and stay below 1")
        self.bin_edges = np.append(self.thresholds, [1.0, 2.0, 3.0])
        # bin of c / G for G cells: where the exact bin search of each score starts
        cells = 4 * len(self.bin_edges)
        self._guess = (np.searchsorted(self.bin_edges, np.arange(cells) / cells, side="right") - 1).astype(np.int64)
        self.reset()

    def reset(self) -> None:
        self.true_hist = np.zeros(len(self.bin_edges) - 1, dtype=np.int64)
        self.false_hist = np.zeros(len(self.bin_edges) - 1, dtype=np.int64)
        self.num_images = 0

    def accumulate(self, maps, masks, ignore=None) -> None:
        """maps ``(B, H, W)`` float in [0, 1]; masks ``(B, H, W)`` bool foreground; ignore ``(B, H, W)`` bool or
        None (ignored pixels count neither as foreground nor as background, unless they are foreground)."""
        maps = check_scoremaps(maps)
        masks = _check_mask(masks, maps, "masks")
        counted = ~_check_mask(ignore, maps, "ignore") | masks if ignore is not None else torch.ones_like(masks)
        num_bins = len(self.bin_edges) - 1
        if maps.device.type == "cpu" and _boxes.numba is not None:
            if maps.dtype not in (torch.float32, torch.float64):
                maps = maps.float()
            true_hist = np.zeros(num_bins, dtype=np.int64)
            false_hist = np.zeros(num_bins, dtype=np.int64)
            _boxes._score_histograms(maps.contiguous().numpy().reshape(-1), masks.contiguous().numpy().reshape(-1),
                                     counted.contiguous().numpy().reshape(-1), self.bin_edges, self._guess,
                                     true_hist, false_hist)
        else:
            values = maps.cpu() if maps.device.type == "mps" else maps  # no float64 on mps
            values = values.to(torch.float64)
            edges = torch.as_tensor(self.bin_edges, dtype=torch.float64, device=values.device)
            # bin i holds edges[i] <= v < edges[i + 1], np.histogram's convention
            bins = torch.bucketize(values, edges, right=True) - 1
            masks, counted = masks.to(values.device), counted.to(values.device)
            hists = []
            for selected in (masks, counted & ~masks):
                chosen = bins[selected]
                chosen = chosen[(chosen >= 0) & (chosen < num_bins)]
                hists.append(torch.bincount(chosen, minlength=num_bins).cpu().numpy())
            true_hist, false_hist = hists
        self.true_hist += true_hist
        self.false_hist += false_hist
        self.num_images += maps.shape[0]

    def compute(self) -> dict:
        """``pxap`` (percent); ``precision``, ``recall`` ``(T + 2,)`` float64 tensors at the thresholds
        ``thresholds`` ``(T + 2,)`` = ``[2, 1, t_last, ..., t_0]`` (a pixel counts as positive at ``t`` when its
        score is ``>= t``)."""
        true_hist = self.true_hist.astype(np.float64)
        false_hist = self.false_hist.astype(np.float64)
        tp = true_hist[::-1].cumsum()
        fn = true_hist.sum() - tp
        fp = false_hist[::-1].cumsum()
        if ((tp + fn) <= 0).all():
            raise RuntimeError("PxAP: no foreground pixel in the accumulated masks")
        if ((tp + fp) <= 0).all():
            raise RuntimeError("PxAP: no pixel scored at or above any threshold")
        defined = (tp + fp) != 0
        with np.errstate(invalid="ignore", divide="ignore"):
            precision = tp / (tp + fp)
            recall = tp / (tp + fn)
        pxap = (precision[1:] * np.diff(recall))[defined[1:]].sum() * 100
        return {
            "pxap": float(pxap),
            "precision": torch.from_numpy(precision),
            "recall": torch.from_numpy(recall),
            "thresholds": torch.from_numpy(self.bin_edges[:-1][::-1].copy()),
            "num_images": self.num_images,
        }


def _check_mask(mask, maps: torch.Tensor, name: str) -> torch.Tensor:
    mask = torch.as_tensor(mask)
    if mask.dtype != torch.bool:
        raise ValueError(f"{name} must be a bool tensor, got dtype {mask.dtype}")
    if tuple(mask.shape) != tuple(maps.shape):
        raise ValueError(f"{name} has shape {tuple(mask.shape)} but maps have shape {tuple(maps.shape)}; "
                         "resize masks to the map size (nearest) first")
    return mask.detach().to(maps.device)
