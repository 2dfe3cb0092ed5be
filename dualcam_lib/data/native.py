"""Readers for the datasets' native on-disk formats, producing the same :class:`WSOLMetadata` records.

Each reader returns ``(metadata, class_names)``; pass them to ``WSOLImageDataset(image_root, metadata=...,
class_names=...)``, or write them once as wsolevaluation files with ``write_wsol_metadata``. Where the native
format has no image sizes, ``metadata.sizes`` is a :class:`HeaderSizes` mapping that opens an image's header
(PIL, no decoding) the first time its size is asked for.

- CUB-200-2011 as distributed (:func:`read_cub`): ``images.txt`` (``id relpath``), ``bounding_boxes.txt``
  (``id x y w h``, floats), ``image_class_labels.txt`` (``id label``, 1-based), ``train_test_split.txt``
  (``id is_train``), ``classes.txt`` (``id name``); images under ``images/``. Boxes become
  ``(int(x), int(y), int(x + w), int(y + h))``, the conversion behind wsolevaluation's CUB metadata.
- Stanford Cars devkit (:func:`read_stanford_cars`): ``cars_train_annos.mat`` / ``cars_test_annos_withlabels.mat``
  (struct array ``annotations`` with ``bbox_x1, bbox_y1, bbox_x2, bbox_y2, class`` (1-based), ``fname``) and
  ``cars_meta.mat`` (``class_names``). Boxes are kept as given (x2 may equal the image width).
- ImageNet validation images (:func:`read_imagenet_val`): a folder of ``ILSVRC2012_val_*.JPEG`` (flat, or in
  class sub-folders) with wsolevaluation's ILSVRC metadata; optionally rescales boxes to images stored at another
  size (as the pre-scaled 227 x 227 copies).
- OpenImages-30K (:func:`read_openimages30k`): wsolevaluation's images + instance masks + ignore masks; checks
  that every mask file exists.
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from .wsol_metadata import MetadataError, WSOLMetadata, _Reader, read_wsol_metadata


class HeaderSizes(Mapping):
    """id -> (W, H) read from each image file's header on first access (cached)."""

    def __init__(self, image_root: str | os.PathLike, image_ids, known: dict | None = None):
        self.image_root = Path(image_root)
        self._ids = list(image_ids)
        self._members = set(self._ids)
        self._cache: dict[str, tuple[int, int]] = dict(known or {})

    def __getitem__(self, image_id: str) -> tuple[int, int]:
        if image_id not in self._members:
            raise KeyError(image_id)
        if image_id not in self._cache:
            from PIL import Image

            from .datasets import ImageReadError

            path = self.image_root / image_id
            try:
                with Image.open(path) as im:
                    self._cache[image_id] = tuple(im.size)
            except Exception as e:  # noqa: BLE001 - any failure means the same: no size
                raise ImageReadError(f"cannot read the size of image file '{path}': {e}") from e
        return self._cache[image_id]

    def __iter__(self):
        return iter(self._ids)

    def __len__(self) -> int:
        return len(self._ids)

    def __contains__(self, image_id) -> bool:
        return image_id in self._members

    def get(self, image_id, default=None):
        return self[image_id] if image_id in self._members else default

    def restrict(self, image_ids) -> "HeaderSizes":
        ids = [i for i in image_ids if i in self._members]
        return HeaderSizes(self.image_root, ids, {i: self._cache[i] for i in ids if i in self._cache})


def check_boxes_in_images(meta: WSOLMetadata, skip_bad: bool = False) -> WSOLMetadata:
    """Read every image size (headers) and check each box lies inside its image; returns the (filtered) metadata.

    A box with ``x1 > W`` or ``y1 > H`` raises :class:`MetadataError` naming the image, or with ``skip_bad`` drops
    the image and records it in ``.skipped``.
    """
    kept = []
    for image_id in meta.image_ids:
        w, h = meta.sizes[image_id]
        bad = [b for b in meta.boxes.get(image_id, ()) if b[2] > w or b[3] > h]
        if bad:
            reason = f"box {bad[0]} of image {image_id!r} lies outside its {w}x{h} pixels"
            if not skip_bad:
                raise MetadataError(reason)
            meta.skipped.append((image_id, 0, reason))
            continue
        kept.append(image_id)
    if len(kept) == len(meta.image_ids):
        return meta
    out = meta.subset(kept)
    out.skipped = list(meta.skipped)
    return out


def _whitespace_table(r: _Reader, name: str, fields: int, what: str) -> dict[str, tuple[list[str], int]]:
    """``id field...`` lines -> id -> (fields, line number); malformed lines go through ``r.bad``."""
    rows: dict[str, tuple[list[str], int]] = {}
    for n, line in enumerate(r.lines(name), 1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != fields + 1:
            r.bad(name, n, f"expected {what}, got {line!r}")
            continue
        if parts[0] in rows:
            r.bad(name, n, f"duplicate id {parts[0]!r} (first on line {rows[parts[0]][1]})")
            continue
        rows[parts[0]] = (parts[1:], n)
    return rows


def read_cub(cub_dir: str | os.PathLike, split: str = "test", skip_bad: bool = False) -> tuple[WSOLMetadata, list[str]]:
    """CUB-200-2011 as distributed -> (metadata with ids relative to ``cub_dir/images``, 200 class names).

    split: ``train`` (is_train = 1) | ``test`` (is_train = 0) | ``all``. Labels are 0-based (``label - 1``); boxes
    ``(int(x), int(y), int(x + w), int(y + h))``. Errors name the file and line; ``skip_bad`` drops bad records
    and lists them in ``.skipped``. Sizes come from the image headers, lazily.
    """
    if split not in ("train", "test", "all"):
        raise ValueError(f"read_cub: split must be 'train', 'test' or 'all', got {split!r}")
    cub_dir = Path(cub_dir)
    if not cub_dir.is_dir():
        raise FileNotFoundError(f"CUB-200-2011 folder '{cub_dir}' does not exist")
    r = _Reader(cub_dir, skip_bad)
    paths = _whitespace_table(r, "images.txt", 1, "'IMAGE_ID RELATIVE_PATH'")
    classes = _whitespace_table(r, "classes.txt", 1, "'CLASS_ID NAME'")
    labels_raw = _whitespace_table(r, "image_class_labels.txt", 1, "'IMAGE_ID CLASS_ID'")
    boxes_raw = _whitespace_table(r, "bounding_boxes.txt", 4, "'IMAGE_ID x y width height'")
    split_raw = _whitespace_table(r, "train_test_split.txt", 1, "'IMAGE_ID IS_TRAINING_IMAGE'")

    class_ids = sorted(classes, key=int) if all(k.isdigit() for k in classes) else sorted(classes)
    names = [classes[k][0][0] for k in class_ids]
    num_classes = len(names)

    image_ids, labels, boxes = [], {}, {}
    for cid, (fields, n) in paths.items():
        relpath = fields[0]
        missing = [f for f, table in (("image_class_labels.txt", labels_raw), ("bounding_boxes.txt", boxes_raw),
                                      ("train_test_split.txt", split_raw)) if cid not in table]
        if missing:
            r.bad("images.txt", n, f"image id {cid} has no record in {', '.join(missing)}")
            continue
        is_train, sn = split_raw[cid]
        if is_train[0] not in ("0", "1"):
            r.bad("train_test_split.txt", sn, f"is_training_image must be 0 or 1, got {is_train[0]!r}")
            continue
        if split != "all" and (is_train[0] == "1") != (split == "train"):
            continue
        (label_text,), ln = labels_raw[cid]
        try:
            label = int(label_text) - 1
        except ValueError:
            r.bad("image_class_labels.txt", ln, f"class id {label_text!r} is not an integer")
            continue
        if not 0 <= label < num_classes:
            r.bad("image_class_labels.txt", ln, f"class id {label + 1} is outside 1..{num_classes} (classes.txt)")
            continue
        box_text, bn = boxes_raw[cid]
        try:
            x, y, w, h = (float(v) for v in box_text)
        except ValueError:
            r.bad("bounding_boxes.txt", bn, f"box {' '.join(box_text)!r} is not four numbers")
            continue
        if x < 0 or y < 0 or w < 0 or h < 0:
            r.bad("bounding_boxes.txt", bn, f"box x={x} y={y} w={w} h={h} has a negative value")
            continue
        image_ids.append(relpath)
        labels[relpath] = label
        boxes[relpath] = [(int(x), int(y), int(x + w), int(y + h))]
    for table, name in ((labels_raw, "image_class_labels.txt"), (boxes_raw, "bounding_boxes.txt"),
                        (split_raw, "train_test_split.txt")):
        for cid, (_, n) in table.items():
            if cid not in paths:
                r.bad(name, n, f"image id {cid} is not in images.txt")
    sizes = HeaderSizes(cub_dir / "images", image_ids)
    meta = WSOLMetadata(image_ids, labels, sizes, boxes, {}, {}, r.skipped, cub_dir)
    return meta, names


def _mat_field(record, field: str):
    value = record[field]
    while hasattr(value, "shape") and value.size == 1 and value.dtype == object:
        value = value.flat[0]
    if hasattr(value, "shape"):
        value = value.flat[0] if value.size == 1 else value
    return value


def read_stanford_cars(devkit_dir: str | os.PathLike, split: str = "test", image_root=None,
                       annotations_file: str | os.PathLike | None = None,
                       skip_bad: bool = False) -> tuple[WSOLMetadata, list[str]]:
    """Stanford Cars devkit ``.mat`` files -> (metadata with ids = ``fname``, 196 class names).

    ``annotations_file`` defaults to ``devkit_dir/cars_train_annos.mat`` (train) or
    ``devkit_dir/cars_test_annos_withlabels.mat`` (test; the labelled test file released after the challenge, also
    looked for beside the devkit folder). Labels are ``class - 1``; boxes ``(bbox_x1, bbox_y1, bbox_x2, bbox_y2)``.
    ``image_root`` (the ``cars_train`` / ``cars_test`` folder) lets sizes be read lazily from the image headers.
    Errors name the file and the annotation's 1-based index (``record N``).
    """
    from scipy.io import loadmat

    if split not in ("train", "test"):
        raise ValueError(f"read_stanford_cars: split must be 'train' or 'test', got {split!r}")
    devkit = Path(devkit_dir)
    if annotations_file is None:
        name = "cars_train_annos.mat" if split == "train" else "cars_test_annos_withlabels.mat"
        candidates = [devkit / name, devkit.parent / name]
        annotations_file = next((p for p in candidates if p.is_file()), candidates[0])
    ann_path = Path(annotations_file)
    meta_path = devkit / "cars_meta.mat"
    for p, what in ((ann_path, "Stanford Cars annotation file"), (meta_path, "Stanford Cars class-name file")):
        if not p.is_file():
            raise FileNotFoundError(f"{what} '{p}' is missing (the devkit's {p.name})")
    r = _Reader(ann_path.parent, skip_bad)

    try:
        names_raw = loadmat(meta_path)["class_names"]
    except Exception as e:  # noqa: BLE001
        raise MetadataError(f"{meta_path}: cannot read the 'class_names' cell array: {e}") from e
    names = [str(_mat_field({"v": c}, "v")) for c in names_raw.reshape(-1)]
    try:
        annotations = loadmat(ann_path)["annotations"].reshape(-1)
    except Exception as e:  # noqa: BLE001
        raise MetadataError(f"{ann_path}: cannot read the 'annotations' struct array: {e}") from e
    wanted = ("bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "class", "fname")
    missing = [f for f in wanted if f not in (annotations.dtype.names or ())]
    if missing:
        raise MetadataError(f"{ann_path}: the annotations lack the field(s) {missing} (expected {list(wanted)}; "
                            f"the unlabelled cars_test_annos.mat has no 'class' - use cars_test_annos_withlabels.mat)")
    image_ids, labels, boxes = [], {}, {}
    for n, rec in enumerate(annotations, 1):
        try:
            x0, y0, x1, y1, cls = (int(_mat_field(rec, f)) for f in wanted[:5])
            fname = str(_mat_field(rec, "fname"))
        except (TypeError, ValueError) as e:
            r.bad(ann_path.name, n, f"record {n} has a non-numeric field: {e}")
            continue
        if not 1 <= cls <= len(names):
            r.bad(ann_path.name, n, f"record {n} ({fname}): class {cls} is outside 1..{len(names)}")
            continue
        if x1 < x0 or y1 < y0 or x0 < 0 or y0 < 0:
            r.bad(ann_path.name, n, f"record {n} ({fname}): box ({x0},{y0},{x1},{y1}) is not x0 <= x1, y0 <= y1, >= 0")
            continue
        if fname in labels:
            r.bad(ann_path.name, n, f"record {n}: file name {fname!r} appears twice")
            continue
        image_ids.append(fname)
        labels[fname] = cls - 1
        boxes[fname] = [(x0, y0, x1, y1)]
    sizes = HeaderSizes(image_root, image_ids) if image_root is not None else {}
    # record numbers stand in for line numbers in .skipped
    return WSOLMetadata(image_ids, labels, sizes, boxes, {}, {}, r.skipped, ann_path.parent), names


def read_imagenet_val(val_dir: str | os.PathLike, metadata_dir: str | os.PathLike,
                      rescale_to_files: bool = False, skip_bad: bool = False) -> WSOLMetadata:
    """ImageNet validation images (flat or in class sub-folders) + wsolevaluation ILSVRC metadata -> metadata.

    Image ids are rewritten to the files' paths relative to ``val_dir`` (matched by file name). An id whose file is
    absent raises (or is skipped with ``skip_bad``). With ``rescale_to_files`` the boxes are rescaled from the
    metadata's image sizes to the stored files' sizes (``int(x * W_file / W_meta)``), for copies stored at another
    size; otherwise a size mismatch is caught when the image is loaded.
    """
    val_dir = Path(val_dir)
    if not val_dir.is_dir():
        raise FileNotFoundError(f"ImageNet validation folder '{val_dir}' does not exist")
    meta = read_wsol_metadata(metadata_dir, skip_bad=skip_bad)
    where: dict[str, str] = {}
    for dirpath, _, files in os.walk(val_dir):
        rel = os.path.relpath(dirpath, val_dir)
        for f in files:
            where.setdefault(f, f if rel == "." else f"{rel}/{f}")
    ids, labels, sizes, boxes = [], {}, {}, {}
    for k, image_id in enumerate(meta.image_ids, 1):
        name = Path(image_id).name
        if name not in where:
            reason = f"image id {image_id!r} has no file named {name!r} under '{val_dir}'"
            if not skip_bad:
                raise MetadataError(f"{Path(metadata_dir) / 'image_ids.txt'}, line {k}: {reason}")
            meta.skipped.append(("image_ids.txt", k, reason))
            continue
        new = where[name]
        ids.append(new)
        labels[new] = meta.labels[image_id]
        boxes[new] = meta.boxes.get(image_id, [])
        if image_id in meta.sizes:
            sizes[new] = meta.sizes[image_id]
    if rescale_to_files:
        from ..box_scaling import rescale_boxes
        import torch

        files = HeaderSizes(val_dir, ids)
        for i in ids:
            fw, fh = files[i]
            if i in sizes and sizes[i] != (fw, fh):
                b = rescale_boxes(torch.tensor(boxes[i]).reshape(-1, 4), sizes[i], (fw, fh))
                boxes[i] = [tuple(x) for x in b.tolist()]
            sizes[i] = (fw, fh)
    return WSOLMetadata(ids, labels, sizes, boxes, {}, {}, meta.skipped, meta.metadata_dir)


def read_openimages30k(image_root: str | os.PathLike, metadata_dir: str | os.PathLike, mask_root=None,
                       check_files: bool = True, skip_bad: bool = False) -> WSOLMetadata:
    """OpenImages-30K (wsolevaluation): images + instance masks + ignore masks -> metadata.

    ``mask_root`` defaults to ``image_root`` (wsolevaluation keeps ``<id>_m<class>_<hash>.png`` masks beside the
    images). With ``check_files`` every referenced mask and ignore file must exist: a missing one raises naming
    the file and its ``localization.txt`` record, or with ``skip_bad`` drops the image (recorded in ``.skipped``).
    Sizes (absent from this format) are read lazily from the image headers.
    """
    image_root = Path(image_root)
    mask_root = Path(mask_root) if mask_root is not None else image_root
    meta = read_wsol_metadata(metadata_dir, skip_bad=skip_bad)
    if meta.boxes:
        raise MetadataError(f"{Path(metadata_dir) / 'localization.txt'}: holds boxes, but OpenImages-30K "
                            f"localisation is 'IMAGE_ID,MASK_PATH,IGNORE_PATH' per instance mask")
    kept = meta.image_ids
    if check_files and meta.mask_paths:
        kept = []
        for image_id in meta.image_ids:
            files = list(meta.mask_paths.get(image_id, []))
            if meta.ignore_paths.get(image_id):
                files.append(meta.ignore_paths[image_id])
            absent = [f for f in files if not (mask_root / f).is_file()]
            if absent:
                reason = f"mask file '{mask_root / absent[0]}' of image {image_id!r} does not exist"
                if not skip_bad:
                    raise FileNotFoundError(f"{Path(metadata_dir) / 'localization.txt'}: {reason}")
                meta.skipped.append(("localization.txt", 0, reason))
                continue
            kept.append(image_id)
    out = meta.subset(kept) if len(kept) != len(meta.image_ids) else meta
    out.skipped = list(meta.skipped)
    if not out.sizes:
        out.sizes = HeaderSizes(image_root, out.image_ids)
    return out
