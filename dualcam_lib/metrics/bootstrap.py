"""Seeded (paired) bootstrap intervals for the WSOL and fidelity metrics, from per-image tables.

A per-image table is what ``BoxAccuracy(per_image=True).per_image()`` or ``FidelityAccumulator.per_image()``
returns (the accumulators themselves are accepted too): ``hits`` ``(N, T, D)`` bool, ``gt_known`` / ``top1_loc``
``(N,)`` bool, or ``y`` / ``o`` ``(N,)`` probabilities. A resample is a vector of counts ``(n,)`` (how often each
image was drawn), so ``R`` resamples are a ``(R, n)`` weight matrix and every statistic of all resamples is one
matrix product, e.g. the MaxBoxAccV2 curves ``counts @ hits.reshape(N, T * D) / n``.

``paired_bootstrap(a, b, metric)`` compares two tables of the *same* images (say the softmax and the sigmoid branch):
both are resampled with the same indices, and the interval is the percentile interval of the resampled
differences ``b - a``.

Metric names (``METRICS``): ``maxboxacc_v2``, ``maxboxacc_30`` / ``_50`` / ``_70`` (one IoU level, ``100 * delta``),
``gt_known_loc``, ``top1_loc``, ``avg_drop``, ``inc_conf``; all in percent, as ``compute()`` gives them.
"""
from __future__ import annotations

import numpy as np
import torch

METRICS = ("maxboxacc_v2", "maxboxacc_30", "maxboxacc_50", "maxboxacc_70", "gt_known_loc", "top1_loc",
           "avg_drop", "inc_conf")
DEFAULT_IOU_THRESHOLDS = (0.3, 0.5, 0.7)
_CHUNK_ELEMENTS = 1 << 24  # resampled curve entries computed at once (64 MB of float32)


# ---------------------------------------------------------------------------------------------------- resamples
def bootstrap_indices(n: int, num_resamples: int = 1000, seed: int = 0) -> np.ndarray:
    """``(R, n)`` int64 image indices drawn with replacement, from ``numpy.random.default_rng(seed)``: the same
    for the same ``(n, num_resamples, seed)``, whatever the global random state."""
    n, num_resamples = int(n), int(num_resamples)
    if n < 1:
        raise ValueError(f"the bootstrap needs at least one image, got n={n}")
    if num_resamples < 1:
        raise ValueError(f"num_resamples must be >= 1, got {num_resamples}")
    return np.random.default_rng(seed).integers(0, n, size=(num_resamples, n), dtype=np.int64)


def resample_weights(indices: np.ndarray, n: int | None = None) -> np.ndarray:
    """``(R, n)`` indices -> ``(R, n)`` float64 counts (how often each image occurs in each resample)."""
    indices = np.asarray(indices, dtype=np.int64)
    if indices.ndim != 2:
        raise ValueError(f"indices must have shape (R, n), got {indices.shape}")
    num_resamples = indices.shape[0]
    n = indices.shape[1] if n is None else int(n)
    offsets = (np.arange(num_resamples, dtype=np.int64) * n)[:, None]
    counts = np.bincount((indices + offsets).ravel(), minlength=num_resamples * n)
    return counts.reshape(num_resamples, n).astype(np.float64)


def _weights(weights, n: int) -> tuple[np.ndarray, bool]:
    """-> ``(R, n)`` float64 weights and whether to return one float (``weights=None``: every image once)."""
    if weights is None:
        return np.ones((1, n), dtype=np.float64), True
    weights = np.asarray(weights, dtype=np.float64)
    if weights.ndim == 1:
        weights = weights[None]
    if weights.ndim != 2 or weights.shape[1] != n:
        raise ValueError(f"weights must have shape (R, {n}) for {n} images, got {weights.shape}")
    if (weights < 0).any() or (weights.sum(axis=1) <= 0).any():
        raise ValueError("weights must be non-negative with a positive sum per resample")
    return weights, False


def _as_numpy(value, name: str) -> np.ndarray:
    if value is None:
        raise ValueError(f"the per-image table has no {name!r}")
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    return np.asarray(value)


def _flags(flags, name: str = "flags") -> np.ndarray:
    flags = _as_numpy(flags, name)
    if flags.ndim != 1:
        raise ValueError(f"{name} must have shape (N,), got {flags.shape}")
    return flags.astype(bool)


def _output(values: np.ndarray, single: bool):
    return float(values[0]) if single else values


# ---------------------------------------------------------------------------------------------------- statistics
def maxboxacc_per_delta(hits, weights=None):
    """hits ``(N, T, D)`` bool; weights ``(R, N)`` counts or None -> best accuracy over the thresholds per IoU
    level, percent: ``(R, D)`` float64 (``(D,)`` with ``weights=None``).

    The curves ``weights @ hits.reshape(N, T * D) * 100 / weights.sum(1)`` are computed in chunks of resamples
    (float32 when the weights are integer counts, which is exact for N < 2**24)."""
    hits = _as_numpy(hits, "hits")
    if hits.ndim != 3:
        raise ValueError(f"hits must have shape (N, T, D), got {hits.shape}")
    n, num_thresholds, num_deltas = hits.shape
    weights, single = _weights(weights, n)
    exact32 = n < (1 << 24) and bool(np.all(weights == np.round(weights)))
    dtype = np.float32 if exact32 else np.float64
    table = hits.reshape(n, num_thresholds * num_deltas).astype(dtype)
    totals = weights.sum(axis=1)
    chunk = max(1, _CHUNK_ELEMENTS // max(1, num_thresholds * num_deltas))
    best = np.empty((len(weights), num_deltas), dtype=np.float64)
    for start in range(0, len(weights), chunk):  # chunks of resamples bound the memory, each one matmul
        stop = start + chunk
        curves = (weights[start:stop].astype(dtype) @ table).astype(np.float64)  # (r, T * D) weighted counts
        curves = curves * 100.0 / totals[start:stop, None]  # the order of BoxAccuracy.compute(): bit-equal
        best[start:stop] = curves.reshape(-1, num_thresholds, num_deltas).max(axis=1)
    return best[0] if single else best


def maxboxacc_v2(hits, weights=None):
    """hits ``(N, T, D)`` bool; weights ``(R, N)`` or None -> MaxBoxAccV2 (mean over the IoU levels of the best
    accuracy over the thresholds), percent: ``(R,)`` float64, or a float with ``weights=None``."""
    best = maxboxacc_per_delta(hits, weights)
    return float(np.mean(best)) if best.ndim == 1 else best.mean(axis=1)


def hit_rate(flags, weights=None):
    """flags ``(N,)`` bool (GT-known or Top-1 Loc hits); weights ``(R, N)`` or None -> ``100 * weighted mean``:
    ``(R,)`` float64, or a float with ``weights=None``."""
    flags = _flags(flags)
    weights, single = _weights(weights, len(flags))
    return _output(weights @ flags.astype(np.float64) * 100.0 / weights.sum(axis=1), single)


def _drops_and_increases(y, o) -> tuple[np.ndarray, np.ndarray]:
    from dualcam_lib.metrics.fidelity import _check_probabilities

    y, o = _check_probabilities(torch.as_tensor(_as_numpy(y, "y")), torch.as_tensor(_as_numpy(o, "o")))
    drops = ((y - o).clamp(min=0) / y).to(torch.float64)  # as FidelityAccumulator computes them
    return drops.cpu().numpy(), (o > y).cpu().numpy().astype(np.float64)


def average_drop_stat(y, o, weights=None):
    """y, o ``(N,)`` probabilities; weights ``(R, N)`` or None -> Average Drop ``mean(max(0, y - o) / y) * 100``:
    ``(R,)`` float64, or a float with ``weights=None``."""
    drops, _ = _drops_and_increases(y, o)
    weights, single = _weights(weights, len(drops))
    return _output(weights @ drops / weights.sum(axis=1) * 100, single)


def increase_in_confidence_stat(y, o, weights=None):
    """y, o ``(N,)`` probabilities; weights ``(R, N)`` or None -> Increase in Confidence ``mean(o > y) * 100``:
    ``(R,)`` float64, or a float with ``weights=None``."""
    _, increases = _drops_and_increases(y, o)
    weights, single = _weights(weights, len(increases))
    return _output(weights @ increases / weights.sum(axis=1) * 100, single)


# ---------------------------------------------------------------------------------------------------- tables
def as_table(table) -> dict:
    """A per-image table: a dict, or an accumulator with ``per_image()`` (``BoxAccuracy(per_image=True)``,
    ``FidelityAccumulator``)."""
    if hasattr(table, "per_image") and callable(table.per_image):
        return table.per_image()
    if not isinstance(table, dict):
        raise TypeError(f"expected a per-image table (dict) or an accumulator with per_image(), got {type(table)}")
    return table


def _delta_index(table: dict, metric: str) -> int:
    deltas = tuple(table.get("iou_thresholds") or DEFAULT_IOU_THRESHOLDS)
    wanted = int(metric.rsplit("_", 1)[1])
    for index, delta in enumerate(deltas):
        if round(float(delta) * 100) == wanted:
            return index
    raise ValueError(f"{metric}: no IoU level {wanted / 100} in the table's iou_thresholds {deltas}")


def _check_metric(metric: str) -> None:
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; choose one of {METRICS}")


def num_images(table, metric: str) -> int:
    """How many images the part of ``table`` that ``metric`` reads holds."""
    _check_metric(metric)
    table = as_table(table)
    if metric.startswith("maxboxacc"):
        return int(_as_numpy(table.get("hits"), "hits").shape[0])
    if metric == "gt_known_loc":
        return len(_flags(table.get("gt_known"), "gt_known"))
    if metric == "top1_loc":
        if table.get("top1_loc") is None:
            raise ValueError("top1_loc is None in the table: accumulate with `correct` to get Top-1 Loc")
        return len(_flags(table["top1_loc"], "top1_loc"))
    return int(_as_numpy(table.get("y"), "y").shape[0])


def statistic(table, metric: str, weights=None):
    """``metric`` of a per-image table, percent: a float (``weights=None``: the full set) or ``(R,)`` float64 for
    ``(R, N)`` resampling weights."""
    _check_metric(metric)
    table = as_table(table)
    if metric == "maxboxacc_v2":
        return maxboxacc_v2(table.get("hits"), weights)
    if metric.startswith("maxboxacc_"):
        best = maxboxacc_per_delta(table.get("hits"), weights)
        index = _delta_index(table, metric)
        return float(best[index]) if best.ndim == 1 else best[:, index]
    if metric == "gt_known_loc":
        return hit_rate(_flags(table.get("gt_known"), "gt_known"), weights)
    if metric == "top1_loc":
        if table.get("top1_loc") is None:
            raise ValueError("top1_loc is None in the table: accumulate with `correct` to get Top-1 Loc")
        return hit_rate(_flags(table["top1_loc"], "top1_loc"), weights)
    if metric == "avg_drop":
        return average_drop_stat(table.get("y"), table.get("o"), weights)
    return increase_in_confidence_stat(table.get("y"), table.get("o"), weights)


def _quantiles(values: np.ndarray, level: float) -> tuple[float, float]:
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    low, high = np.quantile(values, [(1 - level) / 2, (1 + level) / 2])
    return float(low), float(high)


# ---------------------------------------------------------------------------------------------------- intervals
def bootstrap_interval(table, metric: str, num_resamples: int = 1000, seed: int = 0, level: float = 0.95) -> dict:
    """Percentile bootstrap interval of one branch's ``metric``.

    Returns ``estimate`` (on the full set, as ``compute()``), ``low`` / ``high`` (the ``(1 -+ level) / 2``
    quantiles of the ``num_resamples`` resampled values), ``se`` (their standard deviation), ``metric``,
    ``level``, ``num_resamples``, ``seed``, ``n``."""
    table = as_table(table)
    n = num_images(table, metric)
    weights = resample_weights(bootstrap_indices(n, num_resamples, seed), n)
    values = statistic(table, metric, weights)
    low, high = _quantiles(values, level)
    return {"metric": metric, "estimate": statistic(table, metric), "low": low, "high": high,
            "se": float(values.std(ddof=1)) if len(values) > 1 else 0.0, "level": level,
            "num_resamples": int(num_resamples), "seed": seed, "n": n}


def paired_bootstrap(a, b, metric: str, num_resamples: int = 1000, seed: int = 0, level: float = 0.95) -> dict:
    """Paired percentile bootstrap of ``metric(b) - metric(a)`` for two per-image tables of the same images in the
    same order (e.g. a = softmax branch, b = sigmoid branch): every resample uses the same image indices for both.

    Returns ``a``, ``b`` (point estimates on the full set), ``delta`` = b - a, ``low`` / ``high`` (percentile
    interval of the ``num_resamples`` resampled deltas), ``se`` (their standard deviation), ``excludes_zero``
    (``low > 0`` or ``high < 0``), ``metric``, ``level``, ``num_resamples``, ``seed``, ``n``. Raises ValueError
    when the tables hold different numbers of images."""
    a, b = as_table(a), as_table(b)
    n_a, n_b = num_images(a, metric), num_images(b, metric)
    if n_a != n_b:
        raise ValueError(f"paired_bootstrap needs tables of the same images: a has {n_a} images, b has {n_b}")
    weights = resample_weights(bootstrap_indices(n_a, num_resamples, seed), n_a)
    deltas = statistic(b, metric, weights) - statistic(a, metric, weights)  # (R,)
    low, high = _quantiles(deltas, level)
    value_a, value_b = statistic(a, metric), statistic(b, metric)
    return {"metric": metric, "a": value_a, "b": value_b, "delta": value_b - value_a, "low": low, "high": high,
            "se": float(deltas.std(ddof=1)) if len(deltas) > 1 else 0.0, "excludes_zero": bool(low > 0 or high < 0),
            "level": level, "num_resamples": int(num_resamples), "seed": seed, "n": n_a}
