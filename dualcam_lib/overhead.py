"""What the dual-branch head costs: parameter counts (the paper's Table 3, "# Params") and forward-pass timing.

Parameter counts at 1000 classes, ours (``parameter_report(build_classifier(name))``, exact counts in brackets)
beside the paper's Table 3 (baseline -> ours, delta %):

- resnet50: 25.56M -> 27.61M, +2.05M (+8.02%) [25,557,032 -> 27,606,032]; paper 25.56 -> 27.61 (+8.02%): identical
  (the new head is one Linear 2048x1000).
- vgg16_gap: 20.46M -> 21.48M, +1.03M (+5.01%) [20,459,304 -> 21,484,304]; paper 20.46 -> 21.49 (+5.03%). The
  paper's "VGG-16" row is wsolevaluation's GAP variant (new head: Linear 1024x1000); the paper adds the rounded
  figures (20.46 + 1.03).
- vgg16 (torchvision, 3-layer MLP head): 138.36M -> 262.00M, +123.64M (+89.4%); not in the paper's table.
- inception_v3_gap: 26.51M -> 27.53M, +1.03M (+3.87%) [26,507,976 -> 27,532,976]; paper 26.51 -> 27.54 (+3.89%).
  The paper's InceptionV3 row is wsolevaluation's ``InceptionCam`` (Inception-v3 up to Mixed_6e, two 3x3 convs
  768->1024->1024, a 1x1-conv classifier 1024->1000 = our GAP + Linear 1024x1000); again the paper adds rounded
  figures.
- inception_v3 (torchvision, no auxiliary head, ``Mixed_7c`` + Linear 2048x1000): 23.83M -> 25.88M, +2.05M (+8.60%)
  [23,834,568 -> 25,883,568]; not the model of the paper's table.
- mobilenet_v2: 3.50M -> 4.79M, +1.28M (+36.6%); efficientnet_lite0: 4.65M -> 5.93M, +1.28M (+27.5%);
  resnet18: 11.69M -> 12.20M (+4.39%).

Timing: :func:`time_forward` times one callable (wall and process CPU time); :func:`compare_forward` interleaves
several callables round by round (so drift in machine load hits all of them alike) and reports the ratio of their
medians. On a shared, oversubscribed CPU the wall time mostly measures the scheduler; the CPU time (with
one intra-op thread, so no spinning worker threads) measures the work.
``benchmarks/bench_overhead.py`` uses them to time the dual-branch forward (one backbone pass, both heads) against the
plain model.
"""
from __future__ import annotations

import random
import statistics
import time
from typing import Callable, Mapping

import torch
from torch import nn


def count_parameters(*modules: nn.Module) -> int:
    """Number of distinct parameter elements in ``modules`` (a parameter shared between them counts once)."""
    seen, total = set(), 0
    for module in modules:
        for p in module.parameters():
            if id(p) not in seen:
                seen.add(id(p))
                total += p.numel()
    return total


def parameter_report(model) -> dict:
    """Parameter counts of the plain classifier vs. the dual-branch model (the paper's Table 3, "# Params").

    ``model``: a ``SplitClassifier`` (the sigmoid head would be a replica of its head, so it adds as many
    parameters as the head has) or a ``DualBranchModel`` (its actual sigmoid head is counted).
    Returns ``{"name", "backbone_params", "head_params", "baseline_params", "dual_params", "delta_params",
    "delta_pct", "baseline_M", "dual_M", "delta_M"}`` (counts as ints, ``*_M`` in millions rounded to 2 decimals,
    ``delta_pct`` = 100 * delta / baseline). Works on models built on the ``meta`` device (no memory).
    """
    if hasattr(model, "sigmoid_head") and hasattr(model, "softmax_head"):
        name = getattr(getattr(model, "split", None), "name", type(model).__name__)
        backbone, head, extra = model.backbone, model.softmax_head, model.sigmoid_head
    elif hasattr(model, "backbone") and hasattr(model, "head"):
        name, backbone, head, extra = model.name, model.backbone, model.head, None
    else:
        raise TypeError(f"parameter_report expects a SplitClassifier or a DualBranchModel, got {type(model).__name__}")
    backbone_params = count_parameters(backbone)
    baseline = count_parameters(backbone, head)
    head_params = baseline - backbone_params
    delta = count_parameters(extra) if extra is not None else head_params
    dual = baseline + delta
    return {
        "name": name,
        "backbone_params": backbone_params,
        "head_params": head_params,
        "baseline_params": baseline,
        "dual_params": dual,
        "delta_params": delta,
        "delta_pct": 100.0 * delta / baseline if baseline else float("nan"),
        "baseline_M": round(baseline / 1e6, 2),
        "dual_M": round(dual / 1e6, 2),
        "delta_M": round(delta / 1e6, 2),
    }


def count_flops(fn: Callable[[torch.Tensor], object], x: torch.Tensor) -> int:
    """Floating-point operations of one call ``fn(x)`` as PyTorch's ``FlopCounterMode`` counts them (matrix
    products and convolutions: 2 per multiply-add; element-wise ops and pooling are not counted). Unlike a timing,
    the count has no noise, so it resolves an overhead far below a timer's run-to-run spread."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        fn(x)
    return int(counter.get_total_flops())


def flop_report(dual: nn.Module, x: torch.Tensor) -> dict:
    """Counted FLOPs (:func:`count_flops`) of the plain classifier and of the dual-branch forward on ``x``
    ``(B, 3, H, W) float``: ``{"plain_flops", "dual_flops", "overhead_pct"}``, where ``dual`` is a
    :class:`~dualcam_lib.heads.DualBranchModel` and the plain model is its own backbone + softmax head."""
    plain_flops = count_flops(dual.split.as_module().eval(), x)
    dual_flops = count_flops(dual, x)
    return {"plain_flops": plain_flops, "dual_flops": dual_flops,
            "overhead_pct": 100.0 * (dual_flops / plain_flops - 1.0)}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def time_forward(fn: Callable[[torch.Tensor], object], x: torch.Tensor, iters: int = 10, warmup: int = 2,
                 inference_mode: bool = True) -> dict:
    """Wall time and process CPU time of ``fn(x)``, device-synchronised around every call.

    ``x``: the input batch, e.g. ``(B, 3, H, W)`` on the device to time. ``inference_mode``: run under
    ``torch.inference_mode()`` (plain forwards); ``False`` leaves autograd to ``fn`` (e.g. Grad-CAM).
    Returns ``{"times_s": [iters wall seconds], "cpu_times_s": [iters CPU seconds], "median_ms", "mean_ms",
    "min_ms", "cpu_median_ms", "iters", "batch"}``; the ``warmup`` calls before are not timed. The CPU time
    (``time.process_time``, all threads of this process) measures the work done on the CPU whatever else the machine
    runs; on a GPU only the wall time is meaningful.
    """
    if iters < 1 or warmup < 0:
        raise ValueError(f"time_forward needs iters >= 1 and warmup >= 0, got iters={iters}, warmup={warmup}")
    times, cpu_times = [], []
    with torch.inference_mode(inference_mode):
        for _ in range(warmup):
            fn(x)
        _sync(x.device)
        for _ in range(iters):
            start, cpu_start = time.perf_counter(), time.process_time()
            fn(x)
            _sync(x.device)
            times.append(time.perf_counter() - start)
            cpu_times.append(time.process_time() - cpu_start)
    return {
        "times_s": times,
        "cpu_times_s": cpu_times,
        "median_ms": 1e3 * statistics.median(times),
        "mean_ms": 1e3 * statistics.fmean(times),
        "min_ms": 1e3 * min(times),
        "cpu_median_ms": 1e3 * statistics.median(cpu_times),
        "iters": iters,
        "batch": int(x.shape[0]) if x.ndim else 1,
    }


def compare_forward(fns: Mapping[str, Callable[[torch.Tensor], object]], x: torch.Tensor, rounds: int = 5,
                    iters: int = 3, warmup: int = 2, baseline: str | None = None,
                    inference_mode: bool = True) -> dict:
    """Interleaved timing of several callables on the same input.

    Each of ``rounds`` rounds times every callable for ``iters`` calls (:func:`time_forward`), rotating the order
    from round to round, so that load drifts hit every callable alike. Returns ``{name: {"median_ms",
    "cpu_median_ms", "round_medians_ms", "overhead_pct", "overhead_ci95_pct", "cpu_overhead_pct",
    "cpu_overhead_ci95_pct", "paired_overhead_pct", "paired_overhead_ci95_pct", "min_ms", "min_overhead_pct"}}``:
    medians over all timed calls (wall
    and process CPU time) and the overhead against ``baseline`` (default: the first name), 100 * (median / baseline's
    median - 1), from wall and from CPU time, each with a 95 % bootstrap interval (``overhead_ci95_pct``,
    ``cpu_overhead_ci95_pct``: ``(low, high)``). The paired estimate compares each round with itself: the median over
    rounds of 100 * (round median / baseline's round median - 1), with a bootstrap over rounds. Both callables of a
    round run back to back, so a load that drifts over seconds cancels in the pair. ``min_overhead_pct`` compares the
    fastest call of each (100 * (min / baseline's min - 1)): a shared machine only ever adds time to a call, so with
    enough calls the fastest approaches the undisturbed cost. ``inference_mode`` as in :func:`time_forward`.
    """
    names = list(fns)
    if not names:
        raise ValueError("compare_forward needs at least one callable")
    baseline = names[0] if baseline is None else baseline
    if baseline not in fns:
        raise ValueError(f"baseline {baseline!r} is not one of {names}")
    for name in names:  # warm every callable before any timing
        time_forward(fns[name], x, iters=1, warmup=warmup, inference_mode=inference_mode)
    wall = {n: [] for n in names}
    cpu = {n: [] for n in names}
    round_wall = {n: [] for n in names}
    for r in range(rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        for name in order:
            res = time_forward(fns[name], x, iters=iters, warmup=0, inference_mode=inference_mode)
            wall[name] += res["times_s"]
            cpu[name] += res["cpu_times_s"]
            round_wall[name].append(res["median_ms"])

    def overhead(times: dict, name: str, stat: Callable = statistics.median) -> float:
        base = stat(times[baseline])
        return 100.0 * (stat(times[name]) / base - 1.0) if base > 0 else float("nan")

    return {name: {
        "median_ms": 1e3 * statistics.median(wall[name]),
        "cpu_median_ms": 1e3 * statistics.median(cpu[name]),
        "round_medians_ms": round_wall[name],
        "overhead_pct": overhead(wall, name),
        "overhead_ci95_pct": _bootstrap_ratio_ci(wall[name], wall[baseline]),
        "cpu_overhead_pct": overhead(cpu, name),
        "cpu_overhead_ci95_pct": _bootstrap_ratio_ci(cpu[name], cpu[baseline]),
        **_paired_overhead(round_wall[name], round_wall[baseline]),
        "min_ms": 1e3 * min(wall[name]),
        "min_overhead_pct": overhead(wall, name, min),
    } for name in names}


def _paired_overhead(rounds_ms: list[float], base_ms: list[float], resamples: int = 2000, seed: int = 0) -> dict:
    """Median over rounds of the per-round overhead in percent, and its 95 % bootstrap interval over rounds."""
    pct = [100.0 * (a / b - 1.0) for a, b in zip(rounds_ms, base_ms) if b > 0]
    rng = random.Random(seed)
    stats = [statistics.median(rng.choices(pct, k=len(pct))) for _ in range(resamples)] if pct else []
    return {"paired_overhead_pct": statistics.median(pct) if pct else float("nan"),
            "paired_overhead_ci95_pct": _percentile_95(stats)}


def _percentile_95(stats: list[float]) -> tuple:
    """The 2.5th and 97.5th percentiles of bootstrap statistics (NaNs when there are none)."""
    if not stats:
        return (float("nan"), float("nan"))
    stats = sorted(stats)
    return (stats[int(0.025 * (len(stats) - 1))], stats[int(0.975 * (len(stats) - 1))])


def _bootstrap_ratio_ci(times: list[float], base: list[float], resamples: int = 2000, seed: int = 0) -> tuple:
    """95 % percentile-bootstrap interval of 100 * (median(times) / median(base) - 1), resampling both lists
    independently (fixed seed, so the interval is reproducible for the same timings)."""
    rng = random.Random(seed)
    stats = []
    for _ in range(resamples):
        a = statistics.median(rng.choices(times, k=len(times)))
        b = statistics.median(rng.choices(base, k=len(base)))
        if b > 0:
            stats.append(100.0 * (a / b - 1.0))
    return _percentile_95(stats)
