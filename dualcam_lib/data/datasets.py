"""Image datasets in the wsolevaluation format, the batched record :class:`WSOLBatch`, and :func:`load_dataset`.

Every dataset item is a dict (the same keys for the synthetic sets)::

    image     (3, S, S) float in [0, 1], NOT normalised
    label     int
    boxes     (K, 4) long, (x0, y0, x1, y1) inclusive, in the S x S image's pixels
    mask      (S, S) bool union of the instance masks, or None
    ignore    (S, S) bool pixels to leave out of PxAP (the ignore mask minus the foreground), or None
    image_id  str

and :func:`collate_wsol` turns a list of items into a :class:`WSOLBatch`.

Geometry follows wsolevaluation: the test transform is ``Resize((S, S))`` (no centre crop, aspect ratio not kept)
and a box coordinate ``x`` of a ``W x H`` image becomes ``int(x * S / W)`` (``int(y * S / H)`` for y; a coordinate
equal to ``W``, as Stanford Cars has, becomes ``S``, as in wsolevaluation). Masks are
resized with nearest neighbour exactly as ``cv2.INTER_NEAREST`` (see :func:`nearest_source_index`). The
train transform is ``Resize((R, R))`` with ``R = round(S * 256 / 224)``, ``RandomCrop(S)``, ``RandomHorizontalFlip``;
boxes and masks follow the same crop and flip.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator, NamedTuple

import torch

from ..box_scaling import rescale_boxes
from .wsol_metadata import WSOLMetadata, read_wsol_metadata

TRAIN_RESIZE_RATIO = 256 / 224  # the paper's Resize(256) -> RandomCrop(224)


class WSOLBatch(NamedTuple):
    """A batch of images with their weak (label) and strong (box / mask) ground truth.

    images    ``(B, 3, H, W) float`` in [0, 1], NOT normalised (``SplitClassifier.normalize`` does that)
    labels    ``(B,) long``
    boxes     list of B ``(K_i, 4) long`` tensors, (x0, y0, x1, y1) inclusive, in this batch's image pixels
    masks     ``(B, H, W) bool`` object masks, or None
    ignore    ``(B, H, W) bool`` pixels to leave out of PxAP, or None
    image_ids list of B str
    """

    images: torch.Tensor
    labels: torch.Tensor
    boxes: list
    masks: torch.Tensor | None
    ignore: torch.Tensor | None
    image_ids: list

    def to(self, device, non_blocking: bool = False) -> "WSOLBatch":
        """The same batch with every tensor on ``device``."""
        def mv(t):
            return None if t is None else t.to(device, non_blocking=non_blocking)

        return WSOLBatch(mv(self.images), mv(self.labels), [mv(b) for b in self.boxes], mv(self.masks),
                         mv(self.ignore), list(self.image_ids))


def collate_wsol(items: list) -> WSOLBatch:
    """Items (dicts, see the module docstring) -> :class:`WSOLBatch`; ``None`` items (skipped images) are dropped.

    ``masks`` is None unless every item has a mask; ``ignore`` is None when no item has one, otherwise items without
    an ignore mask contribute all-False maps.
    """
    items = [it for it in items if it is not None]
    if not items:
        raise ValueError("collate_wsol: every item of the batch was skipped (unreadable images?)")
    images = torch.stack([it["image"] for it in items])
    labels = torch.tensor([int(it["label"]) for it in items], dtype=torch.long)
    boxes = [torch.as_tensor(it["boxes"], dtype=torch.long).reshape(-1, 4) for it in items]
    masks = None
    if all(it.get("mask") is not None for it in items):
        masks = torch.stack([it["mask"] for it in items])
    ignore = None
    if any(it.get("ignore") is not None for it in items):
        blank = torch.zeros(images.shape[-2:], dtype=torch.bool)
        ignore = torch.stack([it["ignore"] if it.get("ignore") is not None else blank for it in items])
    return WSOLBatch(images, labels, boxes, masks, ignore, [it["image_id"] for it in items])


class ImageReadError(OSError):
    """An image or mask file that is missing or cannot be decoded; the message names the file."""


def read_rgb(path: str | os.PathLike):
    """Decode ``path`` as an RGB PIL image, or raise :class:`ImageReadError` naming the file."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except FileNotFoundError as e:
        raise ImageReadError(f"image file '{path}' does not exist") from e
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise ImageReadError(f"cannot decode image file '{path}': {e}") from e


def read_binary_mask(path: str | os.PathLike) -> torch.Tensor:
    """Read a mask PNG as ``(H, W) bool`` (grey value > 0), or raise :class:`ImageReadError` naming the file."""
    import numpy as np
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return torch.from_numpy(np.asarray(im.convert("L")) > 0)
    except FileNotFoundError as e:
        raise ImageReadError(f"mask file '{path}' does not exist") from e
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise ImageReadError(f"cannot decode mask file '{path}': {e}") from e


def nearest_source_index(n_in: int, n_out: int) -> torch.Tensor:
    """``(n_out,) long`` source pixel of each output pixel under cv2.INTER_NEAREST: ``floor(i * (1 / (out / in)))``
    in double precision, clamped to ``n_in - 1`` (the exact arithmetic matters: e.g. 35 * 1600 / 224 lands on 249)."""
    inv = 1.0 / (n_out / n_in)
    return (torch.arange(n_out, dtype=torch.float64) * inv).floor().long().clamp_(max=n_in - 1)


def resize_mask_nearest(mask: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``(H, W) -> size (H', W')`` nearest-neighbour resize, pixel for pixel as wsolevaluation's cv2.INTER_NEAREST."""
    h, w = mask.shape[-2:]
    rows = nearest_source_index(h, size[0]).to(mask.device)
    cols = nearest_source_index(w, size[1]).to(mask.device)
    return mask[..., rows, :][..., cols]


def class_names_from_ids(meta: WSOLMetadata) -> list[str]:
    """Class names from the image ids' parent folders when they map one-to-one onto labels
    (CUB: ``001.Black_footed_Albatross``, OpenImages: ``01226z``), else ``"class k"``."""
    folder_of: dict[int, set] = {}
    for image_id, label in meta.labels.items():
        folder_of.setdefault(label, set()).add(Path(image_id).parent.name)
    names = [f"class {k}" for k in range(meta.num_classes)]
    single = {k: next(iter(v)) for k, v in folder_of.items() if len(v) == 1}
    if len(single) == len(folder_of) and len(set(single.values())) == len(single) and "" not in single.values():
        for k, name in single.items():
            names[k] = name
    return names


class WSOLImageDataset(torch.utils.data.Dataset):
    """Images on disk + wsolevaluation metadata -> items (see the module docstring), ``size x size`` pixels.

    image_root: folder the image ids are relative to. metadata_dir: a wsolevaluation metadata folder, or pass an
    already-built ``metadata`` (from :mod:`dualcam_lib.data.native`). mask_root: folder the mask paths are
    relative to (default: ``image_root``, as in wsolevaluation where masks sit beside the images).
    train: use the random train transform instead of ``Resize((S, S))``.
    check_sizes: an image whose decoded size differs from ``image_sizes.txt`` is an error (its boxes would be
    rescaled wrongly). skip_bad: an unreadable image (or a size mismatch, or a box outside the decoded image) yields
    ``None`` (dropped by :func:`collate_wsol`) and is recorded in ``.skipped`` instead of raising.
    """

    def __init__(self, image_root, metadata_dir=None, size: int = 224, train: bool = False,
                 metadata: WSOLMetadata | None = None, mask_root=None, skip_bad: bool = False,
                 check_sizes: bool = True, class_names: list[str] | None = None, name: str = "wsol",
                 imagenet_index: list[int] | None = None):
        if (metadata_dir is None) == (metadata is None):
            raise ValueError("WSOLImageDataset: pass exactly one of metadata_dir or metadata")
        self.image_root = Path(image_root)
        if not self.image_root.is_dir():
            raise FileNotFoundError(f"image folder '{self.image_root}' does not exist")
        self.metadata = metadata if metadata is not None else read_wsol_metadata(metadata_dir, skip_bad=skip_bad)
        self.mask_root = Path(mask_root) if mask_root is not None else self.image_root
        if size < 8:
            raise ValueError(f"WSOLImageDataset: size must be >= 8 pixels, got {size}")
        self.size = int(size)
        self.train = bool(train)
        self.skip_bad = bool(skip_bad)
        self.check_sizes = bool(check_sizes)
        self.name = name
        self.class_names = list(class_names) if class_names is not None else class_names_from_ids(self.metadata)
        self.skipped: list[tuple[str, str]] = []  # (file, reason) for images skipped while loading
        # ImageNet subsets: the 1000-class row of each of the set's labels (None for other sets)
        self.imagenet_index = None if imagenet_index is None else [int(i) for i in imagenet_index]

    # --- what the dataset holds -------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.metadata.image_ids)

    @property
    def image_ids(self) -> list[str]:
        return self.metadata.image_ids

    @property
    def labels(self) -> torch.Tensor:
        """``(N,) long`` labels in item order."""
        return torch.tensor([self.metadata.labels[i] for i in self.metadata.image_ids], dtype=torch.long)

    @property
    def num_classes(self) -> int:
        return max(len(self.class_names), self.metadata.num_classes)

    @property
    def image_size(self) -> int:
        return self.size

    def subset(self, idx) -> "WSOLImageDataset":
        """A dataset over the items ``idx`` (ints, a slice, or a long/bool tensor)."""
        ids = self.metadata.image_ids
        if isinstance(idx, slice):
            chosen = ids[idx]
        else:
            idx = torch.as_tensor(idx)
            if idx.dtype == torch.bool:
                idx = idx.nonzero().squeeze(1)
            chosen = [ids[int(i)] for i in idx.reshape(-1)]
        return WSOLImageDataset(self.image_root, size=self.size, train=self.train,
                                metadata=self.metadata.subset(chosen), mask_root=self.mask_root,
                                skip_bad=self.skip_bad, check_sizes=self.check_sizes, class_names=self.class_names,
                                name=self.name, imagenet_index=self.imagenet_index)

    # --- loading ------------------------------------------------------------------------------------------------

    def _skip_or_raise(self, path, error: Exception):
        if not self.skip_bad:
            raise error
        self.skipped.append((str(path), str(error)))
        return None

    def __getitem__(self, index: int) -> dict | None:
        meta = self.metadata
        image_id = meta.image_ids[index]
        path = self.image_root / image_id
        try:
            pil = read_rgb(path)
        except ImageReadError as e:
            return self._skip_or_raise(path, e)
        w, h = pil.size
        expected = meta.sizes.get(image_id)
        if self.check_sizes and expected is not None and tuple(expected) != (w, h):
            return self._skip_or_raise(path, ValueError(
                f"image '{path}' is {w}x{h} but image_sizes.txt in '{meta.metadata_dir}' says "
                f"{expected[0]}x{expected[1]}; its boxes would be rescaled wrongly (pass check_sizes=False to "
                f"trust the metadata sizes)"))
        ref_w, ref_h = expected if expected is not None else (w, h)

        boxes = torch.tensor(meta.boxes.get(image_id, []), dtype=torch.long).reshape(-1, 4)
        if len(boxes) and ((boxes[:, 2] > ref_w) | (boxes[:, 3] > ref_h)).any():
            return self._skip_or_raise(path, ValueError(
                f"a box of image '{path}' lies outside its {ref_w}x{ref_h} pixels: {boxes.tolist()}"))
        try:
            mask, ignore = self._masks(image_id)
        except ImageReadError as e:
            return self._skip_or_raise(e.filename or path, e)

        s = self.size
        if not self.train:
            image = _to_tensor(pil.resize((s, s), _bilinear()))
            boxes = rescale_boxes(boxes, (ref_w, ref_h), (s, s))
            mask = None if mask is None else resize_mask_nearest(mask, (s, s))
            ignore = None if ignore is None else resize_mask_nearest(ignore, (s, s))
        else:
            image, boxes, mask, ignore = self._train_transform(pil, boxes, (ref_w, ref_h), mask, ignore)
        if ignore is not None:
            ignore = ignore & ~mask if mask is not None else ignore
        return {"image": image, "label": meta.labels[image_id], "boxes": boxes, "mask": mask, "ignore": ignore,
                "image_id": image_id}

    def _masks(self, image_id: str):
        paths = self.metadata.mask_paths.get(image_id)
        if not paths:
            return None, None
        mask = None
        for p in paths:
            m = read_binary_mask(self.mask_root / p)
            if mask is not None and m.shape != mask.shape:
                raise ImageReadError(f"mask file '{self.mask_root / p}' is {m.shape[1]}x{m.shape[0]}, the other "
                                     f"masks of '{image_id}' are {mask.shape[1]}x{mask.shape[0]}")
            mask = m if mask is None else mask | m
        ignore = None
        ignore_path = self.metadata.ignore_paths.get(image_id)
        if ignore_path:
            ignore = read_binary_mask(self.mask_root / ignore_path)
            if ignore.shape != mask.shape:
                ignore = resize_mask_nearest(ignore, tuple(mask.shape))
        return mask, ignore

    def _train_transform(self, pil, boxes, ref_size, mask, ignore):
        s = self.size
        r = max(s, round(s * TRAIN_RESIZE_RATIO))
        image = _to_tensor(pil.resize((r, r), _bilinear()))
        boxes = rescale_boxes(boxes, ref_size, (r, r))
        mask = None if mask is None else resize_mask_nearest(mask, (r, r))
        ignore = None if ignore is None else resize_mask_nearest(ignore, (r, r))
        top = int(torch.randint(0, r - s + 1, (1,)))
        left = int(torch.randint(0, r - s + 1, (1,)))
        flip = bool(torch.rand(()) < 0.5)
        image = image[:, top:top + s, left:left + s]
        mask = None if mask is None else mask[top:top + s, left:left + s]
        ignore = None if ignore is None else ignore[top:top + s, left:left + s]
        boxes = boxes - torch.tensor([left, top, left, top])
        inside = (boxes[:, 2] >= 0) & (boxes[:, 3] >= 0) & (boxes[:, 0] <= s - 1) & (boxes[:, 1] <= s - 1)
        boxes = boxes[inside].clamp(0, s - 1)  # boxes cropped away vanish, the others are clipped to the crop
        if flip:
            image = image.flip(-1)
            mask = None if mask is None else mask.flip(-1)
            ignore = None if ignore is None else ignore.flip(-1)
            boxes = torch.stack([s - 1 - boxes[:, 2], boxes[:, 1], s - 1 - boxes[:, 0], boxes[:, 3]], dim=1)
        return image, boxes, mask, ignore

    # --- iteration ------------------------------------------------------------------------------------------------

    def loader(self, batch_size: int, shuffle: bool = False, seed: int = 0, num_workers: int = 0,
               drop_last: bool = False) -> torch.utils.data.DataLoader:
        """A DataLoader yielding :class:`WSOLBatch` es (seeded shuffling)."""
        gen = torch.Generator().manual_seed(seed)
        return torch.utils.data.DataLoader(self, batch_size=batch_size, shuffle=shuffle, generator=gen,
                                           num_workers=num_workers, collate_fn=collate_wsol, drop_last=drop_last)

    def batches(self, batch_size: int, shuffle: bool = False, seed: int = 0, num_workers: int = 0,
                drop_last: bool = False) -> Iterator[WSOLBatch]:
        """Iterate over :class:`WSOLBatch` es, like ``SyntheticSet.batches``."""
        return iter(self.loader(batch_size, shuffle, seed, num_workers, drop_last))

    def verify(self) -> list[tuple[str, str]]:
        """Open every image header (fast, no decoding); with ``skip_bad`` drop unreadable ones, else raise.

        Returns the (file, reason) pairs skipped by this call.
        """
        from PIL import Image

        bad, kept = [], []
        for image_id in self.metadata.image_ids:
            path = self.image_root / image_id
            try:
                with Image.open(path) as im:
                    size = im.size
            except Exception as e:  # noqa: BLE001 - any decoder failure means the same to the user
                err = ImageReadError(f"cannot open image file '{path}': {e}")
                if not self.skip_bad:
                    raise err from e
                bad.append((str(path), str(err)))
                continue
            expected = self.metadata.sizes.get(image_id)
            if self.check_sizes and expected is not None and tuple(expected) != size:
                reason = f"image '{path}' is {size[0]}x{size[1]} but image_sizes.txt says {expected[0]}x{expected[1]}"
                if not self.skip_bad:
                    raise ValueError(reason)
                bad.append((str(path), reason))
                continue
            kept.append(image_id)
        if bad:
            self.metadata = self.metadata.subset(kept)
            self.skipped.extend(bad)
        return bad


def _bilinear():
    from PIL import Image

    return Image.Resampling.BILINEAR


def _to_tensor(pil) -> torch.Tensor:
    """PIL RGB -> ``(3, H, W) float`` in [0, 1]."""
    import numpy as np

    arr = torch.from_numpy(np.asarray(pil, dtype=np.uint8).copy())
    return arr.permute(2, 0, 1).float().div_(255)


# --------------------------------------------------------------------------------------------------------------
# load_dataset: one name -> a dataset under the data root
# --------------------------------------------------------------------------------------------------------------

SYNTHETIC_NAMES = ("synthetic", "finegrained", "digits")
IMAGENET_SUBSETS = ("imagenette-224", "imagewoof-224")
REAL_NAMES = ("imagenet-val-1000", "imagenet", "cub", "cars", "openimages") + IMAGENET_SUBSETS
DATASET_NAMES = SYNTHETIC_NAMES + REAL_NAMES

# key in wsol-metadata/, image folder(s) under the data root (first existing wins), splits
_REAL_LAYOUT = {
    "imagenet": ("ILSVRC", {"*": ("ILSVRC",)}, ("train", "val", "test")),
    "cub": ("CUB", {"*": ("CUB", "CUB_200_2011/images")}, ("train", "val", "test")),
    "cars": ("CARS", {"train": ("CARS/cars_train", "CARS/train"), "test": ("CARS/cars_test", "CARS/test")},
             ("train", "test")),
    "openimages": ("OpenImages", {"*": ("OpenImages",)}, ("train", "val", "test")),
}


def _not_found(what: str, tried: list[Path], root: Path) -> FileNotFoundError:
    lines = "\n  ".join(str(p) for p in tried)
    return FileNotFoundError(
        f"{what} not found under the data root '{root}'; looked for:\n  {lines}\n"
        f"Point the data root at your copy with the notebook parameter `data_root`, load_dataset(..., "
        f"data_root=...), the CLI option --data-root, or the environment variable DUALCAM_DATA_ROOT.")


def _first_existing(paths: list[Path]) -> Path | None:
    return next((p for p in paths if p.exists()), None)


def _sample(n_total: int, n: int | None, seed: int) -> torch.Tensor | None:
    if n is None or n >= n_total:
        return None
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    return torch.randperm(n_total, generator=torch.Generator().manual_seed(seed))[:n].sort().values


def load_dataset(name: str, split: str = "test", data_root=None, size: int | None = None, n: int | None = None,
                 seed: int = 0, **kwargs):
    """One dataset by name; returns a ``SyntheticSet`` (embedded) or a :class:`WSOLImageDataset` (on disk).

    Embedded, generated in memory (``split`` train | test, seeds from ``synthetic.split_seeds(seed)``; ``n``
    defaults to 4000 train / 1000 test, ``size`` to 64; extra kwargs such as ``num_classes`` go to the
    generator): ``synthetic``, ``finegrained``, ``digits``.

    On disk, under ``dualcam_lib.paths.data_root(data_root)`` (``size`` defaults to 224; ``n`` takes a seeded
    random subset, kept in metadata order; extra kwargs such as ``train``, ``skip_bad`` go to
    :class:`WSOLImageDataset`; ``train`` defaults to ``split == "train"``):

    - ``imagenet-val-1000`` (split test): images ``imagenet-val-1000/images/<id>``, metadata
      ``imagenet-val-1000/metadata/test``.
    - ``imagenette-224``, ``imagewoof-224`` (train | val | test): images ``<name>/images/<id>``, metadata
      ``<name>/metadata/<split>`` (train: labels only; val and test: boxes), and ``<name>/classes.txt`` mapping the
      set's labels to ImageNet rows: the dataset's ``imagenet_index`` (a list, one row per class) restricts a
      pretrained 1000-class head to the set (:func:`dualcam_lib.models.restrict_head`).
    - ``imagenet`` (train | val | test): images ``ILSVRC/<id>`` (ids are ``train/n01440764/...JPEG``,
      ``val/ILSVRC2012_val_*.JPEG`` for test, ``val2/...`` for wsolevaluation's val split).
    - ``cub`` (train | val | test): images ``CUB/<id>`` or ``CUB_200_2011/images/<id>``; val is wsolevaluation's
      CUBV2 split (images ``CUB/<id>`` as shipped by wsolevaluation).
    - ``cars`` (train | test): images ``CARS/cars_train/<id>`` / ``CARS/cars_test/<id>`` (the devkit's folders; or
      ``CARS/train``, ``CARS/test``).
    - ``openimages`` (train | val | test): images and masks ``OpenImages/<id>`` (masks beside the images, as
      wsolevaluation stores them).

    Metadata for these four is looked for in ``wsol-metadata/<KEY>/<split>`` (this project's layout),
    ``metadata/<KEY>/<split>`` (wsolevaluation's layout) and ``<images folder>/metadata/<split>``, with KEY one of
    ILSVRC, CUB, CARS, OpenImages. Without any of them, ``cub`` and ``cars`` fall back to the native formats (the
    ``CUB_200_2011`` folder as distributed; the Stanford Cars devkit ``.mat`` files, see
    :mod:`dualcam_lib.data.native`).
    """
    from ..paths import data_root as resolve_root

    key = name.lower()
    if key in SYNTHETIC_NAMES:
        from .synthetic import GENERATORS, split_seeds

        if split not in ("train", "test"):
            raise ValueError(f"load_dataset({name!r}): split must be 'train' or 'test', got {split!r}")
        train_seed, test_seed = split_seeds(seed)
        count = n if n is not None else (4000 if split == "train" else 1000)
        return GENERATORS[key](count, seed=train_seed if split == "train" else test_seed, size=size or 64, **kwargs)
    if key not in REAL_NAMES:
        raise ValueError(f"unknown dataset {name!r}; expected one of {list(DATASET_NAMES)}")

    root = resolve_root(data_root)
    size = size or 224
    kwargs.setdefault("train", split == "train")
    if key in IMAGENET_SUBSETS:
        if split not in ("train", "val", "test"):
            raise ValueError(f"load_dataset({name!r}): split must be 'train', 'val' or 'test', got {split!r}")
        base = root / key
        meta_dir, images = base / "metadata" / split, base / "images"
        if not meta_dir.is_dir() or not images.is_dir():
            raise _not_found(f"the {key} set ({split})", [meta_dir, images], root)
        classes = read_imagenet_subset_classes(base / "classes.txt")
        ds = WSOLImageDataset(images, meta_dir, size=size, class_names=classes.names, name=key,
                              imagenet_index=classes.imagenet_index, **kwargs)
        if ds.metadata.num_classes > len(classes.names):
            raise ValueError(f"{meta_dir / 'class_labels.txt'}: label {ds.metadata.num_classes - 1} has no line in "
                             f"{base / 'classes.txt'} ({len(classes.names)} classes)")
    elif key == "imagenet-val-1000":
        if split not in ("test", "val"):
            raise ValueError(f"load_dataset('imagenet-val-1000'): the only split is 'test', got {split!r}")
        base = root / "imagenet-val-1000"
        meta_dir, images = base / "metadata" / "test", base / "images"
        if not meta_dir.is_dir() or not images.is_dir():
            raise _not_found("the imagenet-val-1000 set", [meta_dir, images], root)
        from ..labels import imagenet_class_names

        ds = WSOLImageDataset(images, meta_dir, size=size, class_names=imagenet_class_names(),
                              name="imagenet-val-1000", **kwargs)
    else:
        meta_key, image_dirs, splits = _REAL_LAYOUT[key]
        if split not in splits:
            raise ValueError(f"load_dataset({name!r}): split must be one of {splits}, got {split!r}")
        image_candidates = [root / d for d in image_dirs.get(split, image_dirs.get("*"))]
        images = _first_existing(image_candidates)
        meta_candidates = [root / "wsol-metadata" / meta_key / split, root / "metadata" / meta_key / split]
        meta_candidates += [p / "metadata" / split for p in image_candidates]
        meta_dir = _first_existing(meta_candidates)
        ds = _load_native(key, split, root, size, kwargs) if meta_dir is None and key in ("cub", "cars") else None
        if ds is None:
            if meta_dir is None:
                native_files = {"cub": [root / "CUB_200_2011" / "images.txt"],
                                "cars": [root / "CARS" / "devkit" / "cars_meta.mat"]}.get(key, [])
                raise _not_found(f"wsolevaluation metadata for {name} ({split})"
                                 + (" or the dataset's native files" if native_files else ""),
                                 meta_candidates + native_files, root)
            if images is None:
                raise _not_found(f"the {name} images", image_candidates, root)
            class_names = None
            if key == "imagenet":
                from ..labels import imagenet_class_names

                class_names = imagenet_class_names()
            elif key == "cars":
                class_names = _cars_class_names(root)
            ds = WSOLImageDataset(images, meta_dir, size=size, class_names=class_names, name=key, **kwargs)
    chosen = _sample(len(ds), n, seed)
    return ds if chosen is None else ds.subset(chosen)


class ImageNetSubsetClasses(NamedTuple):
    """A 10-class ImageNet subset's ``classes.txt``: per set label ``k``, its wnid, ImageNet row and name."""

    wnids: list[str]
    imagenet_index: list[int]
    names: list[str]


def read_imagenet_subset_classes(path: str | os.PathLike, num_imagenet_classes: int = 1000) -> ImageNetSubsetClasses:
    """Parse ``classes.txt`` lines ``label,wnid,imagenet_index,name`` (the name may hold commas).

    Labels must be 0..K-1 in order, ImageNet rows distinct integers in ``[0, num_imagenet_classes)``. Errors name
    the file and the line.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"class map '{path}' is missing; it maps the set's labels to ImageNet rows "
                                "(lines 'label,wnid,imagenet_index,name')")
    wnids, rows, names = [], [], []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split(",", 3)
        if len(parts) != 4:
            raise ValueError(f"{path}, line {n}: expected 'label,wnid,imagenet_index,name', got {line!r}")
        label, wnid, row, name = (p.strip() for p in parts)
        if not (label.isdigit() and int(label) == len(wnids)):
            raise ValueError(f"{path}, line {n}: label {label!r} out of order; expected {len(wnids)}")
        if not row.isdigit() or not 0 <= int(row) < num_imagenet_classes:
            raise ValueError(f"{path}, line {n}: imagenet_index {row!r} is not an integer in "
                             f"[0, {num_imagenet_classes})")
        if int(row) in rows:
            raise ValueError(f"{path}, line {n}: imagenet_index {row} repeats line {rows.index(int(row)) + 1}")
        wnids.append(wnid)
        rows.append(int(row))
        names.append(name)
    if not wnids:
        raise ValueError(f"{path}: no classes")
    return ImageNetSubsetClasses(wnids, rows, names)


def _cars_class_names(root: Path) -> list[str] | None:
    """The 196 names from the devkit's ``cars_meta.mat`` when it is under the data root, else None."""
    meta = _first_existing([root / "CARS" / "devkit" / "cars_meta.mat", root / "CARS" / "cars_meta.mat"])
    if meta is None:
        return None
    from scipy.io import loadmat

    return [str(c.flat[0]) for c in loadmat(meta)["class_names"].reshape(-1)]


def _load_native(key: str, split: str, root: Path, size: int, kwargs: dict):
    from . import native

    if key == "cub":
        base = root / "CUB_200_2011"
        if not (base / "images.txt").is_file():
            return None
        if split == "val":
            raise ValueError("the native CUB-200-2011 format has no val split (wsolevaluation's CUBV2 val set "
                             "needs its metadata); use split 'train' or 'test'")
        meta, names = native.read_cub(base, split)
        return WSOLImageDataset(base / "images", metadata=meta, size=size, class_names=names, name="cub", **kwargs)
    devkit = _first_existing([root / "CARS" / "devkit", root / "CARS" / "car_devkit" / "devkit", root / "devkit"])
    if devkit is None:
        return None
    images = _first_existing([root / "CARS" / f"cars_{split}", root / f"cars_{split}"])
    if images is None:
        raise _not_found(f"the Stanford Cars {split} images", [root / "CARS" / f"cars_{split}"], root)
    meta, names = native.read_stanford_cars(devkit, split, image_root=images)
    return WSOLImageDataset(images, metadata=meta, size=size, class_names=names, name="cars", **kwargs)
