"""Tidy result rows: one row per (dataset, backbone, method, branch, variant, metric), written atomically.

Columns (``COLUMNS``): ``source`` ("ours" or "paper"), ``setting`` (e.g. "embedded", "imagenet-val-1000 cross-fit"),
``dataset``, ``backbone``, ``method``, ``branch`` ("softmax" or "sigmoid"), ``variant`` (ablation tag, "" for the
default), ``metric``, ``value``, ``run_id``, ``config`` (JSON of the run's parameters).
The paper's published numbers (Oh & Noh 2025, Tables 1-5) are available as reference rows: :func:`paper_rows`.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Iterable

import pandas as pd

COLUMNS = ["source", "setting", "dataset", "backbone", "method", "branch", "variant", "metric", "value", "run_id",
           "config"]
KEY = ["source", "setting", "dataset", "backbone", "method", "branch", "variant", "metric", "run_id"]


def make_row(*, dataset: str, backbone: str, method: str, branch: str, metric: str, value: float,
             setting: str = "embedded", variant: str = "", run_id: str = "", config: dict | None = None,
             source: str = "ours") -> dict:
    """One tidy row; ``config`` is stored as sorted JSON so identical runs give identical rows."""
    if branch not in ("softmax", "sigmoid", ""):
        raise ValueError(f"branch must be 'softmax', 'sigmoid' or '', got {branch!r}")
    return dict(source=source, setting=setting, dataset=dataset, backbone=backbone, method=method, branch=branch,
                variant=variant, metric=metric, value=float(value), run_id=run_id,
                config=json.dumps(config or {}, sort_keys=True, default=str))


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` via a temporary file in the same folder and ``os.replace`` (never half-written)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def read_rows(path: str | os.PathLike) -> pd.DataFrame:
    """Rows from one CSV (empty frame with ``COLUMNS`` when the file does not exist); checks the columns."""
    path = Path(path)
    if not path.exists():
        return pd.DataFrame(columns=COLUMNS)
    df = pd.read_csv(path, dtype={"variant": str, "run_id": str, "config": str}, keep_default_na=False)
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"results file '{path}' lacks columns {missing}; expected {COLUMNS}")
    df["value"] = pd.to_numeric(df["value"], errors="raise")
    return df[COLUMNS]


def write_rows(path: str | os.PathLike, rows: Iterable[dict] | pd.DataFrame, replace: bool = True) -> pd.DataFrame:
    """Merge ``rows`` into the CSV at ``path`` atomically; rows with the same key (``KEY``) replace older ones.

    Returns the merged frame. With ``replace=False`` the file is overwritten with ``rows`` alone.
    """
    new = rows if isinstance(rows, pd.DataFrame) else pd.DataFrame(list(rows))
    for c in COLUMNS:
        if c not in new.columns:
            new[c] = ""
    new = new[COLUMNS]
    old = read_rows(path) if replace else pd.DataFrame(columns=COLUMNS)
    merged = pd.concat([old, new], ignore_index=True) if len(old) else new
    merged = merged.drop_duplicates(subset=KEY, keep="last").reset_index(drop=True)
    atomic_write_text(path, merged.to_csv(index=False, float_format="%.6g"))
    return merged


def read_all(results_dir: str | os.PathLike) -> pd.DataFrame:
    """Every ``*.csv`` under ``results_dir`` concatenated (with a ``file`` column)."""
    frames = []
    for p in sorted(Path(results_dir).glob("*.csv")):
        df = read_rows(p)
        df["file"] = p.name
        frames.append(df)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=COLUMNS + ["file"])


# ------------------------------------------------------------------------------------------------------------------
# The paper's published numbers (Oh & Noh 2025, arXiv:2511.05590). Values as printed in the paper.
# ------------------------------------------------------------------------------------------------------------------

# Table 1: (backbone, method) -> (CUB avg drop, CUB inc conf, Cars avg drop, Cars inc conf) for softmax / sigmoid.
_TABLE1 = {
    ("vgg16", "cam"): ((45.36, 7.08, 31.45, 9.68), (37.20, 18.86, 43.58, 10.74)),
    ("vgg16", "gradcam"): ((38.88, 11.36, 56.10, 8.11), (35.66, 22.06, 9.96, 19.46)),
    ("vgg16", "gradcampp"): ((31.11, 14.46, 39.63, 11.71), (33.98, 21.75, 9.46, 18.46)),
    ("vgg16", "xgradcam"): ((38.56, 11.10, 50.59, 9.14), (38.04, 20.99, 9.69, 20.53)),
    ("vgg16", "layercam"): ((37.19, 11.27, 47.51, 9.70), (41.58, 19.50, 10.51, 19.39)),
    ("resnet50", "cam"): ((44.17, 14.76, 48.86, 4.32), (13.86, 18.42, 3.77, 40.62)),
    ("resnet50", "gradcam"): ((46.38, 13.07, 29.53, 14.56), (19.07, 13.22, 3.66, 41.41)),
    ("resnet50", "gradcampp"): ((43.15, 14.50, 24.68, 17.31), (18.88, 13.72, 3.65, 41.62)),
    ("resnet50", "xgradcam"): ((46.38, 13.07, 29.53, 14.56), (19.07, 13.22, 3.66, 41.41)),
    ("resnet50", "layercam"): ((43.69, 13.91, 22.64, 18.90), (19.07, 13.22, 3.66, 41.39)),
}

# Table 2: (backbone, method) -> {branch: (IN top1 cls, top1 loc, gt-known loc, MaxBoxAccV2, OI top1 cls, PxAP)}.
# The sigmoid rows reuse the frozen softmax head's classification ("-" in the paper).
_TABLE2 = {
    ("vgg16", "cam"): ((66.56, 43.13, 59.54, 60.00, 70.00, 58.17), (None, 43.14, 59.57, 60.25, None, 60.11)),
    ("vgg16", "gradcam"): ((69.61, 37.04, 49.02, 52.49, 70.12, 55.25), (None, 44.68, 59.43, 60.17, None, 56.53)),
    ("resnet50", "cam"): ((73.89, 47.69, 60.80, 63.53, 74.02, 59.36), (None, 49.44, 62.68, 64.73, None, 60.49)),
    ("resnet50", "gradcam"): ((69.01, 41.14, 55.28, 57.04, 74.02, 60.56), (None, 40.34, 53.61, 57.98, None, 60.24)),
    ("inception_v3", "cam"): ((69.72, 42.16, 57.69, 63.51, 56.22, 62.25), (None, 44.11, 60.12, 64.98, None, 63.65)),
    ("inception_v3", "gradcam"): ((67.79, 34.57, 46.35, 52.30, 68.56, 49.64), (None, 33.72, 45.18, 53.06, None, 48.16)),
}

# Table 4 (negative-weight clamping) and Table 5 (positive-class weighting), ImageNet-1K, sigmoid branch:
# (backbone, method, variant) -> (top1 loc, gt-known loc, MaxBoxAccV2).
_TABLE45 = {
    ("vgg16", "cam", "no_clamp"): (40.12, 53.92, 55.24), ("vgg16", "cam", "clamp"): (43.14, 59.57, 60.25),
    ("vgg16", "gradcam", "no_clamp"): (43.24, 56.90, 58.45), ("vgg16", "gradcam", "clamp"): (44.68, 59.43, 60.17),
    ("resnet50", "cam", "no_clamp"): (39.82, 50.22, 55.78), ("resnet50", "cam", "clamp"): (49.44, 62.68, 64.73),
    ("resnet50", "gradcam", "no_clamp"): (41.11, 54.60, 56.31),
    ("resnet50", "gradcam", "clamp"): (40.34, 53.61, 57.98),
    ("vgg16", "cam", "pos_1:1"): (43.60, 60.70, 61.34), ("vgg16", "cam", "pos_half"): (43.19, 59.57, 60.28),
    ("vgg16", "cam", "pos_C-1"): (43.14, 59.57, 60.25),
    ("vgg16", "gradcam", "pos_1:1"): (9.28, 12.45, 44.17), ("vgg16", "gradcam", "pos_half"): (44.97, 59.79, 60.76),
    ("vgg16", "gradcam", "pos_C-1"): (44.68, 59.43, 60.17),
    ("resnet50", "cam", "pos_1:1"): (47.29, 59.84, 61.54), ("resnet50", "cam", "pos_half"): (49.27, 62.36, 64.59),
    ("resnet50", "cam", "pos_C-1"): (49.44, 62.68, 64.73),
    ("resnet50", "gradcam", "pos_1:1"): (35.66, 47.17, 54.77),
    ("resnet50", "gradcam", "pos_half"): (40.55, 53.90, 58.05),
    ("resnet50", "gradcam", "pos_C-1"): (40.34, 53.61, 57.98),
}

# Table 3 (ImageNet-1K, one RTX A6000): backbone -> (train h, inference ms, params M) for (baseline, ours).
_TABLE3 = {
    "vgg16": ((17.67, 84.7, 20.46), (20.87, 101.2, 21.49)),
    "resnet50": ((58.19, 117.4, 25.56), (70.69, 138.4, 27.61)),
    "inception_v3": ((50.42, 108.1, 26.51), (52.84, 123.4, 27.54)),
}


def paper_rows() -> pd.DataFrame:
    """The paper's Tables 1-5 as tidy rows with ``source="paper"``."""
    rows = []

    def add(**kw):
        rows.append(make_row(source="paper", setting="paper", run_id="paper", **kw))

    for (bb, m), branches in _TABLE1.items():
        for branch, vals in zip(("softmax", "sigmoid"), branches):
            for ds, (drop, inc) in zip(("cub", "cars"), (vals[:2], vals[2:])):
                add(dataset=ds, backbone=bb, method=m, branch=branch, metric="avg_drop", value=drop)
                add(dataset=ds, backbone=bb, method=m, branch=branch, metric="inc_conf", value=inc)
    names = ("top1_cls", "top1_loc", "gt_known_loc", "maxboxacc_v2", "top1_cls", "pxap")
    for (bb, m), branches in _TABLE2.items():
        for branch, vals in zip(("softmax", "sigmoid"), branches):
            for j, (metric, v) in enumerate(zip(names, vals)):
                if v is None:
                    continue
                add(dataset="imagenet" if j < 4 else "openimages", backbone=bb, method=m, branch=branch,
                    metric=metric, value=v)
    for (bb, m, variant), vals in _TABLE45.items():
        for metric, v in zip(("top1_loc", "gt_known_loc", "maxboxacc_v2"), vals):
            add(dataset="imagenet", backbone=bb, method=m, branch="sigmoid", variant=variant, metric=metric, value=v)
    for bb, (base, ours) in _TABLE3.items():
        for branch, vals in zip(("softmax", "sigmoid"), (base, ours)):
            for metric, v in zip(("train_hours", "inference_ms", "params_m"), vals):
                add(dataset="imagenet", backbone=bb, method="overhead", branch=branch, metric=metric, value=v)
    return pd.DataFrame(rows, columns=COLUMNS)
