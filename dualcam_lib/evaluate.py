"""Score saved score maps from any tool with the WSOL protocol, against a wsolevaluation metadata folder.

    python -m dualcam_lib.evaluate --scoremaps scoremaps/ --metadata metadata/ILSVRC/test
    python -m dualcam_lib.evaluate --scoremaps maps.npy --metadata meta/ --predictions top1.csv --output out.json
    python -m dualcam_lib.evaluate --scoremaps scoremaps/ --metadata metadata/OpenImages/test --mask-root masks/

Score maps (float, ``[0, 1]``, one ``(H, W)`` map per image, any size):
- a folder with one file per image named ``<image_id>.npy`` (wsolevaluation's convention, e.g.
  ``scoremaps/val/ILSVRC2012_val_00000001.JPEG.npy``; ``<image_id>.npz`` holding one array also works), or
- one ``.npy`` / ``.npz`` file with an ``(N, H, W)`` array in ``image_ids.txt`` order (an ``.npz`` may hold
  ``scoremaps`` and, to give another order, ``image_ids``).

Box metadata (CUB, ILSVRC, Stanford Cars): GT boxes are rescaled from ``image_sizes.txt`` to each map's size with
``int(x * S / W)`` as wsolevaluation does; the metrics are MaxBoxAccV2 (with each IoU level and its best
threshold), GT-known Loc and, given ``--predictions`` (CSV ``image_id,class``), Top-1 Loc. Mask metadata
(OpenImages): masks under ``--mask-root`` are resized to the map size (nearest) and PxAP is computed. The metrics
are printed as JSON (``--output`` also writes them to a file, atomically).
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np
import torch

from dualcam_lib.metrics import BoxAccuracy, PxAP, rescale_boxes


class ScoremapError(ValueError):
    """A score map file that is missing or not an ``(H, W)`` float map in [0, 1]; the message names the file."""


# ------------------------------------------------------------------------------------------------- reading maps
class ScoremapSource:
    """Random access to the score map of each image id, from a folder of per-image files or one stacked array."""

    def __init__(self, path: str | os.PathLike, image_ids: list[str]):
        self.path = Path(path)
        self.image_ids = image_ids
        self._stack = None
        self._row = None
        if self.path.is_dir():
            return
        if not self.path.is_file():
            raise ScoremapError(f"score maps '{self.path}' not found (expected a folder of <image_id>.npy files or "
                                "one .npy / .npz file)")
        if self.path.suffix == ".npy":
            stack, stored_ids = np.load(self.path, mmap_mode="r"), None
        elif self.path.suffix == ".npz":
            archive = np.load(self.path)
            stored_ids = [str(i) for i in archive["image_ids"]] if "image_ids" in archive.files else None
            names = [n for n in archive.files if n != "image_ids"]
            key = "scoremaps" if "scoremaps" in names else ("maps" if "maps" in names else None)
            if key is None and len(names) != 1:
                raise ScoremapError(f"{self.path}: holds arrays {names}; expected one array or one named 'scoremaps'")
            stack = archive[key or names[0]]
        else:
            raise ScoremapError(f"{self.path}: expected a .npy or .npz file, or a folder")
        if stack.ndim != 3:
            raise ScoremapError(f"{self.path}: expected an (N, H, W) array of maps, got shape {stack.shape}")
        if stored_ids is None:
            if len(stack) != len(image_ids):
                raise ScoremapError(f"{self.path}: {len(stack)} maps for {len(image_ids)} image ids in image_ids.txt")
            self._row = {image_id: row for row, image_id in enumerate(image_ids)}
        else:
            if len(stored_ids) != len(stack):
                raise ScoremapError(f"{self.path}: {len(stored_ids)} image_ids for {len(stack)} maps")
            self._row = {image_id: row for row, image_id in enumerate(stored_ids)}
            missing = [i for i in image_ids if i not in self._row]
            if missing:
                raise ScoremapError(f"{self.path}: no map for {len(missing)} image ids, e.g. {missing[:3]}")
        self._stack = stack

    def load(self, image_id: str) -> np.ndarray:
        """The validated ``(H, W)`` float map of one image."""
        if self._stack is not None:
            where = f"{self.path}[{self._row[image_id]}] ({image_id})"
            return _checked_map(np.asarray(self._stack[self._row[image_id]]), where)
        file = self.path / f"{image_id}.npy"
        if file.is_file():
            return _checked_map(np.load(file), str(file))
        alternative = self.path / f"{image_id}.npz"
        if alternative.is_file():
            archive = np.load(alternative)
            if len(archive.files) != 1:
                raise ScoremapError(f"{alternative}: expected exactly one array, found {archive.files}")
            return _checked_map(archive[archive.files[0]], str(alternative))
        raise ScoremapError(f"missing score map for image '{image_id}': expected {file}")


def _checked_map(scoremap: np.ndarray, where: str) -> np.ndarray:
    if scoremap.ndim == 3 and scoremap.shape[0] == 1:
        scoremap = scoremap[0]
    if scoremap.ndim != 2:
        raise ScoremapError(f"{where}: expected an (H, W) map, got shape {scoremap.shape}")
    if not np.issubdtype(scoremap.dtype, np.floating):
        raise ScoremapError(f"{where}: expected a float map with values in [0, 1], got dtype {scoremap.dtype}")
    low, high = float(np.min(scoremap)), float(np.max(scoremap))
    if not (low >= 0 and high <= 1):
        raise ScoremapError(f"{where}: values must be finite and within [0, 1]; min={low}, max={high}")
    return scoremap


def _batches(source: ScoremapSource, image_ids: list[str], batch_size: int) -> Iterator[tuple[list[str], np.ndarray]]:
    """Consecutive images whose maps share a shape, ``batch_size`` at most: (ids, (B, H, W) float array)."""
    ids, maps = [], []
    for image_id in image_ids:
        scoremap = source.load(image_id)
        if maps and (scoremap.shape != maps[0].shape or len(maps) == batch_size):
            yield ids, np.stack(maps)
            ids, maps = [], []
        ids.append(image_id)
        maps.append(scoremap)
    if maps:
        yield ids, np.stack(maps)


def _to_tensor(maps: np.ndarray) -> torch.Tensor:
    # float64 maps stay float64 (the protocol's own type); others are exact in float32
    return torch.from_numpy(np.ascontiguousarray(maps, dtype=np.float64 if maps.dtype == np.float64 else np.float32))


# ------------------------------------------------------------------------------------------ reading ground truth
def read_predictions(path: str | os.PathLike) -> dict[str, int]:
    """CSV of ``image_id,class`` lines (an optional header line is skipped) -> id -> predicted class."""
    predictions = {}
    with open(path, newline="", encoding="utf-8") as handle:
        for line_number, row in enumerate(csv.reader(handle), 1):
            if not row or not "".join(row).strip():
                continue
            if len(row) != 2:
                raise ValueError(f"{path}, line {line_number}: expected 'image_id,class', got {','.join(row)!r}")
            try:
                predictions[row[0].strip()] = int(row[1])
            except ValueError:
                if line_number == 1:
                    continue  # a header
                raise ValueError(f"{path}, line {line_number}: class {row[1]!r} is not an integer") from None
    return predictions


def load_masks(mask_root: Path, mask_paths: list[str], ignore_path: str | None,
               size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """OpenImages masks of one image resized to ``size = (H, W)`` (nearest) -> (foreground, ignore) bool arrays.

    Foreground is the union of the instance masks (``> 0.5`` after resizing the float image); the ignore region is
    the ignore mask minus the foreground, as in wsolevaluation.
    """
    height, width = size

    def read(relative: str) -> np.ndarray:
        file = mask_root / relative
        image = cv2.imread(str(file), cv2.IMREAD_GRAYSCALE)
        if image is None:
            raise FileNotFoundError(f"mask '{file}' is missing or not an image")
        return cv2.resize(image.astype(np.float32), (width, height), interpolation=cv2.INTER_NEAREST) > 0.5

    foreground = np.zeros(size, dtype=bool)
    for relative in mask_paths:
        foreground |= read(relative)
    ignore = read(ignore_path) & ~foreground if ignore_path else np.zeros(size, dtype=bool)
    return foreground, ignore


# ------------------------------------------------------------------------------------------------------ evaluate
def evaluate_scoremaps(scoremaps, metadata_dir, mask_root=None, predictions=None, thresholds=None,
                       iou_thresholds=(0.3, 0.5, 0.7), cam_threshold: float = 0.2, batch_size: int = 64,
                       curves: bool = False) -> dict:
    """Score the maps at ``scoremaps`` (folder or stacked file, see the module doc) against ``metadata_dir``.

    Returns a JSON-ready dict: for boxes ``maxboxacc_v2``, ``maxboxacc`` {"0.3": ...}, ``best_threshold``,
    ``gt_known_loc``, ``top1_loc`` (None without predictions), ``num_images``; for masks ``pxap`` and
    ``num_images``. ``curves=True`` adds the per-threshold accuracies (boxes) or precision / recall (masks).
    """
    from dualcam_lib.data import read_wsol_metadata

    metadata = read_wsol_metadata(metadata_dir)
    image_ids = list(metadata.image_ids)
    source = ScoremapSource(scoremaps, image_ids)
    kind = metadata.localization
    if kind == "boxes":
        return _evaluate_boxes(metadata, source, image_ids, predictions, thresholds, iou_thresholds, cam_threshold,
                               batch_size, curves)
    if kind == "masks":
        if mask_root is None:
            raise ValueError(f"{metadata_dir}: the metadata has masks (OpenImages); pass --mask-root")
        return _evaluate_masks(metadata, source, image_ids, Path(mask_root), thresholds, batch_size, curves)
    raise ValueError(f"{metadata_dir}: localization.txt holds no boxes or masks to evaluate against")


def _evaluate_boxes(metadata, source, image_ids, predictions, thresholds, iou_thresholds, cam_threshold,
                    batch_size, curves) -> dict:
    predicted = None
    if predictions is not None:
        predicted = read_predictions(predictions)
        missing = [i for i in image_ids if i not in predicted]
        if missing:
            raise ValueError(f"{predictions}: no prediction for {len(missing)} images, e.g. {missing[:3]}")
    metric = BoxAccuracy(thresholds=thresholds, iou_thresholds=iou_thresholds, cam_threshold=cam_threshold)
    for ids, maps in _batches(source, image_ids, batch_size):
        height, width = maps.shape[1:]
        boxes = []
        for image_id in ids:
            if image_id not in metadata.sizes:
                raise ValueError(f"image_sizes.txt has no size for '{image_id}': its boxes cannot be rescaled")
            scaled = rescale_boxes(metadata.boxes[image_id], metadata.sizes[image_id], (width, height))
            boxes.append(torch.from_numpy(scaled))
        correct = None
        if predicted is not None:
            correct = torch.tensor([predicted[i] == metadata.labels[i] for i in ids])
        metric.accumulate(_to_tensor(maps), boxes, correct)
    result = metric.compute()
    output = {
        "localization": "boxes",
        "num_images": result["num_images"],
        "maxboxacc_v2": result["maxboxacc_v2"],
        "maxboxacc": {str(delta): value for delta, value in result["maxboxacc"].items()},
        "best_threshold": {str(delta): value for delta, value in result["best_threshold"].items()},
        "gt_known_loc": result["gt_known_loc"],
        "top1_loc": result["top1_loc"],
        "cam_threshold": cam_threshold,
    }
    if predicted is not None:
        output["top1_cls"] = 100.0 * float(np.mean([predicted[i] == metadata.labels[i] for i in image_ids]))
    if curves:
        output["thresholds"] = result["thresholds"].tolist()
        output["curves"] = {str(delta): result["curves"][:, d].tolist()
                            for d, delta in enumerate(metric.iou_thresholds)}
    return output


def _evaluate_masks(metadata, source, image_ids, mask_root, thresholds, batch_size, curves) -> dict:
    metric = PxAP(thresholds=thresholds)
    for ids, maps in _batches(source, image_ids, batch_size):
        size = maps.shape[1:]
        pairs = [load_masks(mask_root, metadata.mask_paths.get(i, []), metadata.ignore_paths.get(i), size)
                 for i in ids]
        masks = torch.from_numpy(np.stack([p[0] for p in pairs]))
        ignore = torch.from_numpy(np.stack([p[1] for p in pairs]))
        metric.accumulate(_to_tensor(maps), masks, ignore)
    result = metric.compute()
    output = {"localization": "masks", "num_images": result["num_images"], "pxap": result["pxap"]}
    if curves:
        output["pr_thresholds"] = result["thresholds"].tolist()
        # NaN precision (no positive prediction at a threshold) becomes null in the JSON
        output["precision"] = [None if np.isnan(v) else v for v in result["precision"].tolist()]
        output["recall"] = result["recall"].tolist()
    return output


def write_json_atomically(data: dict, path: str | os.PathLike) -> None:
    """Write ``data`` as JSON to ``path`` through a temporary file in the same folder and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            json.dump(data, stream, indent=2)
            stream.write("\n")
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    """The evaluator's options, added to ``parser`` (``dualcam evaluate``'s subparser) or to a new parser."""
    if parser is None:
        parser = argparse.ArgumentParser(prog="python -m dualcam_lib.evaluate", description=__doc__,
                                         formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scoremaps", required=True, help="folder of <image_id>.npy maps, or one (N, H, W) .npy/.npz")
    parser.add_argument("--metadata", required=True, help="wsolevaluation metadata folder (image_ids.txt, ...)")
    parser.add_argument("--mask-root", default=None, help="root of the OpenImages mask PNGs (PxAP)")
    parser.add_argument("--predictions", default=None, help="CSV 'image_id,class' of top-1 predictions (Top-1 Loc)")
    parser.add_argument("--cam-curve-interval", type=float, default=0.001,
                        help="threshold step: thresholds are arange(0, 1, step) (default 0.001)")
    parser.add_argument("--iou-thresholds", type=float, nargs="+", default=[0.3, 0.5, 0.7],
                        help="IoU levels of MaxBoxAccV2 (default 0.3 0.5 0.7)")
    parser.add_argument("--cam-threshold", type=float, default=0.2, help="threshold of GT-known / Top-1 Loc")
    parser.add_argument("--batch-size", type=int, default=64, help="maps per metric update")
    parser.add_argument("--curves", action="store_true", help="include the per-threshold curves in the JSON")
    parser.add_argument("--output", default=None, help="also write the JSON to this file (atomically)")
    return parser


def main(argv=None) -> int:
    """Command-line entry point; returns the exit status (0: success, 2: bad input)."""
    parser = build_parser()
    return run(parser.parse_args(argv), parser)


def run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """Evaluate with parsed options (shared by ``python -m dualcam_lib.evaluate`` and ``dualcam evaluate``)."""
    if not 0 < args.cam_curve_interval < 1:
        parser.error(f"--cam-curve-interval must be in (0, 1), got {args.cam_curve_interval}")
    if args.batch_size < 1:
        parser.error(f"--batch-size must be >= 1, got {args.batch_size}")
    try:
        result = evaluate_scoremaps(
            args.scoremaps, args.metadata, mask_root=args.mask_root, predictions=args.predictions,
            thresholds=np.arange(0, 1, args.cam_curve_interval), iou_thresholds=tuple(args.iou_thresholds),
            cam_threshold=args.cam_threshold, batch_size=args.batch_size, curves=args.curves)
    except (ValueError, FileNotFoundError, KeyError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    text = json.dumps(result, indent=2)
    print(text)
    if args.output:
        write_json_atomically(result, args.output)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
