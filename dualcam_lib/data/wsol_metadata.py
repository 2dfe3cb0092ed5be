"""The clovaai/wsolevaluation metadata format, shared by CUB, ILSVRC, OpenImages and Stanford Cars.

A metadata folder (e.g. ``metadata/ILSVRC/test``) holds four text files, one record per line, comma separated:

- ``image_ids.txt``      ``IMAGE_ID``                      (the image path relative to the image root)
- ``class_labels.txt``   ``IMAGE_ID,LABEL``                (0-based integer class)
- ``image_sizes.txt``    ``IMAGE_ID,W,H``                  (may be empty, as for OpenImages)
- ``localization.txt``   ``IMAGE_ID,x0,y0,x1,y1``          one line per box, pixels of the stored image, or
                         ``IMAGE_ID,MASK_PATH,IGNORE_PATH`` one line per instance mask (OpenImages); the ignore path
                         is given on the image's first line and is empty on the others (it may be empty everywhere).
                         The file is empty for splits without localisation (e.g. OpenImages train).

All four files must exist (any may be empty except ``image_ids.txt``). Boxes are checked against the image size
when sizes are given: ``0 <= x0 <= x1 <= W`` and ``0 <= y0 <= y1 <= H`` (``x1 == W`` is accepted because Stanford
Cars' 1-based boxes reach it). Every error names the file and the line.
"""
from __future__ import annotations

import gc
import os
from dataclasses import dataclass, field
from pathlib import Path

METADATA_FILES = ("image_ids.txt", "class_labels.txt", "image_sizes.txt", "localization.txt")

Box = tuple[int, int, int, int]


class MetadataError(ValueError):
    """A malformed or inconsistent wsolevaluation metadata record; the message names the file and line."""


@dataclass
class WSOLMetadata:
    """Parsed metadata of one split.

    ``image_ids``: list[str] in file order; ``labels``: id -> int; ``sizes``: id -> (W, H) (empty when the format
    leaves sizes out); ``boxes``: id -> list of (x0, y0, x1, y1) ints (stored-image pixels, inclusive);
    ``mask_paths``: id -> list of mask paths (relative to the mask root); ``ignore_paths``: id -> path or None;
    ``skipped``: (file, line number, reason) for every record dropped with ``skip_bad=True``.
    """

    image_ids: list[str]
    labels: dict[str, int]
    sizes: dict[str, tuple[int, int]] = field(default_factory=dict)
    boxes: dict[str, list[Box]] = field(default_factory=dict)
    mask_paths: dict[str, list[str]] = field(default_factory=dict)
    ignore_paths: dict[str, str | None] = field(default_factory=dict)
    skipped: list[tuple[str, int, str]] = field(default_factory=list)
    metadata_dir: Path | None = None

    def __len__(self) -> int:
        return len(self.image_ids)

    @property
    def localization(self) -> str:
        """``"boxes"``, ``"masks"`` or ``"none"``: which kind of ground truth ``localization.txt`` holds."""
        if self.boxes:
            return "boxes"
        if self.mask_paths:
            return "masks"
        return "none"

    @property
    def num_classes(self) -> int:
        """``max(label) + 1`` (0 when empty)."""
        return max(self.labels.values(), default=-1) + 1

    def subset(self, image_ids) -> "WSOLMetadata":
        """The same metadata restricted to ``image_ids`` (kept in the given order)."""
        ids = list(image_ids)
        missing = [i for i in ids if i not in self.labels]
        if missing:
            raise KeyError(f"image ids not in this metadata: {missing[:5]}{' ...' if len(missing) > 5 else ''}")

        def pick(d):
            return {i: d[i] for i in ids if i in d}

        # lazily read sizes (native.HeaderSizes) stay lazy
        sizes = self.sizes.restrict(ids) if hasattr(self.sizes, "restrict") else pick(self.sizes)
        return WSOLMetadata(ids, pick(self.labels), sizes, pick(self.boxes), pick(self.mask_paths),
                            pick(self.ignore_paths), list(self.skipped), self.metadata_dir)

    def summary(self) -> str:
        """One line: counts of images, classes, boxes/masks and skipped records."""
        n_loc = sum(map(len, self.boxes.values())) if self.boxes else sum(map(len, self.mask_paths.values()))
        return (f"{len(self.image_ids)} images, {self.num_classes} classes, {n_loc} {self.localization} "
                f"localisation records, {len(self.skipped)} skipped")


class _Reader:
    """Collects errors: raise at once, or record and skip when ``skip_bad``."""

    def __init__(self, metadata_dir: Path, skip_bad: bool):
        self.dir = metadata_dir
        self.skip_bad = skip_bad
        self.skipped: list[tuple[str, int, str]] = []

    def bad(self, name: str, lineno: int, reason: str) -> None:
        if not self.skip_bad:
            raise MetadataError(f"{self.dir / name}, line {lineno}: {reason}")
        self.skipped.append((name, lineno, reason))

    def lines(self, name: str, optional: bool = False) -> list[str] | None:
        """The file's lines; a missing file is an error, or None when ``optional``."""
        path = self.dir / name
        if not path.is_file() and optional:
            return None
        if not path.is_file():
            raise FileNotFoundError(
                f"wsolevaluation metadata file '{path}' is missing; a metadata folder needs "
                f"{', '.join(METADATA_FILES)} (empty files are allowed except image_ids.txt)")
        with open(path, encoding="utf-8") as f:
            return f.read().splitlines()


def _parse_int(text: str) -> int:
    # Some tools write integral coordinates as "12.0"; anything else fractional is rejected.
    try:
        return int(text)
    except ValueError:
        value = float(text)
        if not value.is_integer():
            raise
        return int(value)


def read_wsol_metadata(metadata_dir: str | os.PathLike, skip_bad: bool = False) -> WSOLMetadata:
    """Parse one wsolevaluation metadata folder into a :class:`WSOLMetadata`.

    Raises ``FileNotFoundError`` for a missing file and :class:`MetadataError` (a ValueError) naming the file and
    line for a malformed line, a duplicate id, an id present in one file but not in ``image_ids.txt`` (or the
    reverse), a box outside its image or with ``x1 < x0``. With ``skip_bad=True`` such records are dropped instead
    and listed in ``.skipped`` as (file, line, reason); an image left without a label, a size (when sizes are
    given) or any localisation record (when the split has localisation) is dropped too.
    """
    # The cyclic garbage collector would rescan the ~10^5 new tuples many times; nothing here forms cycles.
    enabled = gc.isenabled()
    gc.disable()
    try:
        return _read_wsol_metadata(Path(metadata_dir), skip_bad)
    finally:
        if enabled:
            gc.enable()


def _read_wsol_metadata(metadata_dir: Path, skip_bad: bool) -> WSOLMetadata:
    if not metadata_dir.is_dir():
        raise FileNotFoundError(f"wsolevaluation metadata folder '{metadata_dir}' does not exist")
    r = _Reader(metadata_dir, skip_bad)

    # image_ids.txt
    image_ids: list[str] = []
    id_line: dict[str, int] = {}
    for n, line in enumerate(r.lines("image_ids.txt"), 1):
        image_id = line.strip()
        if not image_id:
            continue
        if "," in image_id:
            r.bad("image_ids.txt", n, f"expected one image id per line, got {line!r}")
            continue
        if image_id in id_line:
            r.bad("image_ids.txt", n, f"duplicate image id {image_id!r} (first on line {id_line[image_id]})")
            continue
        id_line[image_id] = n
        image_ids.append(image_id)
    if not image_ids and not r.skipped:
        raise MetadataError(f"{metadata_dir / 'image_ids.txt'}: no image ids")

    # class_labels.txt
    labels: dict[str, int] = {}
    for n, line in enumerate(r.lines("class_labels.txt"), 1):
        if not line.strip():
            continue
        parts = line.split(",")
        if len(parts) != 2:
            r.bad("class_labels.txt", n, f"expected 'IMAGE_ID,LABEL', got {line!r}")
            continue
        image_id, label = parts[0].strip(), parts[1].strip()
        try:
            value = int(label)
        except ValueError:
            r.bad("class_labels.txt", n, f"label {label!r} is not an integer")
            continue
        if value < 0:
            r.bad("class_labels.txt", n, f"label {value} is negative (labels are 0-based)")
            continue
        if image_id not in id_line:
            r.bad("class_labels.txt", n, f"image id {image_id!r} is not in image_ids.txt")
            continue
        if image_id in labels:
            r.bad("class_labels.txt", n, f"second label for image id {image_id!r}")
            continue
        labels[image_id] = value

    # image_sizes.txt (may be empty)
    sizes: dict[str, tuple[int, int]] = {}
    # wsolevaluation ships OpenImages' image_sizes.txt empty, and mask metadata never needs it: it may be missing
    # there. Box metadata needs it to rescale the boxes (checked once the localisation kind is known).
    size_lines = r.lines("image_sizes.txt", optional=True)
    sizes_missing = size_lines is None
    size_lines = size_lines or []
    for n, line in enumerate(size_lines, 1):
        if not line.strip():
            continue
        parts = line.split(",")
        if len(parts) != 3:
            r.bad("image_sizes.txt", n, f"expected 'IMAGE_ID,W,H', got {line!r}")
            continue
        image_id = parts[0].strip()
        try:
            w, h = _parse_int(parts[1]), _parse_int(parts[2])
        except ValueError:
            r.bad("image_sizes.txt", n, f"width/height {parts[1]!r},{parts[2]!r} are not integers")
            continue
        if w <= 0 or h <= 0:
            r.bad("image_sizes.txt", n, f"size {w}x{h} is not positive")
            continue
        if image_id not in id_line:
            r.bad("image_sizes.txt", n, f"image id {image_id!r} is not in image_ids.txt")
            continue
        sizes[image_id] = (w, h)
    has_sizes = bool(sizes) or any(line.strip() for line in size_lines)

    # localization.txt: boxes (5 fields) or masks (3 fields), kind fixed by the first record
    boxes: dict[str, list[Box]] = {}
    mask_paths: dict[str, list[str]] = {}
    ignore_paths: dict[str, str | None] = {}
    kind = None
    loc_lines = r.lines("localization.txt", optional=True) or []  # a train split may have no localisation at all
    for n, line in enumerate(loc_lines, 1):
        if not line.strip():
            continue
        parts = line.split(",")
        if kind is None and len(parts) in (3, 5):
            kind = "boxes" if len(parts) == 5 else "masks"
        if kind == "boxes" and len(parts) == 5:
            image_id = parts[0].strip()
            try:
                x0, y0, x1, y1 = map(int, parts[1:])
            except ValueError:
                try:
                    x0, y0, x1, y1 = map(_parse_int, parts[1:])
                except ValueError:
                    r.bad("localization.txt", n, f"box coordinates {','.join(parts[1:])!r} are not integers")
                    continue
            if image_id not in id_line:
                r.bad("localization.txt", n, f"image id {image_id!r} is not in image_ids.txt")
                continue
            if x1 < x0 or y1 < y0:
                r.bad("localization.txt", n, f"box ({x0},{y0},{x1},{y1}) has x1 < x0 or y1 < y0")
                continue
            size = sizes.get(image_id)
            if x0 < 0 or y0 < 0 or (size is not None and (x1 > size[0] or y1 > size[1])):
                where = f"image size {size[0]}x{size[1]}" if size else "non-negative coordinates"
                r.bad("localization.txt", n, f"box ({x0},{y0},{x1},{y1}) lies outside the image ({where})")
                continue
            boxes.setdefault(image_id, []).append((x0, y0, x1, y1))
        elif kind == "masks" and len(parts) == 3:
            image_id, mask, ignore = (p.strip() for p in parts)
            if image_id not in id_line:
                r.bad("localization.txt", n, f"image id {image_id!r} is not in image_ids.txt")
                continue
            if not mask:
                r.bad("localization.txt", n, "empty mask path")
                continue
            mask_paths.setdefault(image_id, []).append(mask)
            if ignore or image_id not in ignore_paths:
                if ignore and ignore_paths.get(image_id):
                    r.bad("localization.txt", n, f"second ignore mask for image id {image_id!r}")
                    continue
                ignore_paths[image_id] = ignore or None
        else:
            expected = {"boxes": "'IMAGE_ID,x0,y0,x1,y1'", "masks": "'IMAGE_ID,MASK_PATH,IGNORE_PATH'",
                        None: "'IMAGE_ID,x0,y0,x1,y1' or 'IMAGE_ID,MASK_PATH,IGNORE_PATH'"}[kind]
            r.bad("localization.txt", n, f"expected {expected}, got {line!r}")

    if sizes_missing and kind != "masks":
        raise FileNotFoundError(
            f"wsolevaluation metadata file '{metadata_dir / 'image_sizes.txt'}' is missing; it may be left out only "
            "for mask (OpenImages) metadata: boxes are rescaled from the sizes it gives (an empty file is allowed)")

    # Cross-file completeness: every image needs a label, a size (if sizes are given) and localisation (if any).
    has_loc = bool(boxes or mask_paths) or (kind is not None)
    loc = boxes if kind == "boxes" else mask_paths
    kept: list[str] = []
    for image_id in image_ids:
        n = id_line[image_id]
        if image_id not in labels:
            r.bad("image_ids.txt", n, f"image id {image_id!r} has no label in class_labels.txt")
        elif has_sizes and image_id not in sizes:
            r.bad("image_ids.txt", n, f"image id {image_id!r} has no size in image_sizes.txt")
        elif has_loc and image_id not in loc:
            r.bad("image_ids.txt", n, f"image id {image_id!r} has no {kind} in localization.txt")
        else:
            kept.append(image_id)
    if len(kept) != len(image_ids):
        keep = set(kept)
        labels = {i: v for i, v in labels.items() if i in keep}
        sizes = {i: v for i, v in sizes.items() if i in keep}
        boxes = {i: v for i, v in boxes.items() if i in keep}
        mask_paths = {i: v for i, v in mask_paths.items() if i in keep}
        ignore_paths = {i: v for i, v in ignore_paths.items() if i in keep}
    return WSOLMetadata(kept, labels, sizes, boxes, mask_paths, ignore_paths, r.skipped, metadata_dir)


def write_wsol_metadata(meta: WSOLMetadata, metadata_dir: str | os.PathLike) -> Path:
    """Write ``meta`` as the four wsolevaluation files in ``metadata_dir`` (created); returns the folder.

    Used to convert the datasets' native formats once (see :mod:`dualcam_lib.data.native`) so that the official
    evaluation code can read the same split.
    """
    out = Path(metadata_dir)
    out.mkdir(parents=True, exist_ok=True)
    ids = meta.image_ids

    def write(name, rows):
        with open(out / name, "w", encoding="utf-8") as f:
            f.write("".join(row + "\n" for row in rows))

    write("image_ids.txt", ids)
    write("class_labels.txt", (f"{i},{meta.labels[i]}" for i in ids))
    write("image_sizes.txt", (f"{i},{meta.sizes[i][0]},{meta.sizes[i][1]}" for i in ids if i in meta.sizes))
    rows = []
    for i in ids:
        for b in meta.boxes.get(i, ()):
            rows.append(f"{i},{b[0]},{b[1]},{b[2]},{b[3]}")
        for k, m in enumerate(meta.mask_paths.get(i, ())):
            ignore = (meta.ignore_paths.get(i) or "") if k == 0 else ""
            rows.append(f"{i},{m},{ignore}")
    write("localization.txt", rows)
    return out
