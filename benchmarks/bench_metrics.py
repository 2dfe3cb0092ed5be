"""Speed of the WSOL metrics against the plain reference (tests/reference_wsol.py), results checked identical.

Runs on one CPU core (``torch.set_num_threads(1)``, numba single-threaded) in one process. Two kinds of maps:
"cam" (realistic CAM-like maps: a 7x7 random field upsampled bilinearly, min-max normalised, with 1-3 GT boxes)
and "noisy" (the same plus uniform pixel noise, so there are many small components and holes at every level).

    .venv/bin/python benchmarks/bench_metrics.py            # 1000 maps of 224x224, 1000 thresholds
    .venv/bin/python benchmarks/bench_metrics.py --n 20     # a quick smoke run
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("NUMBA_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

import reference_wsol  # noqa: E402
from dualcam_lib.metrics import BoxAccuracy, PxAP  # noqa: E402


def make_maps(n: int, size: int, noise: float, seed: int) -> torch.Tensor:
    """``(n, size, size)`` float32 CAM-like maps in [0, 1]: a 7x7 random field, bilinear upsampling, optional noise."""
    generator = torch.Generator().manual_seed(seed)
    field = torch.rand(n, 1, 7, 7, generator=generator) ** 2
    maps = F.interpolate(field, size=(size, size), mode="bilinear", align_corners=False)[:, 0]
    maps = maps + noise * torch.rand(maps.shape, generator=generator)
    low = maps.amin(dim=(1, 2), keepdim=True)
    high = maps.amax(dim=(1, 2), keepdim=True)
    return ((maps - low) / (high - low)).float()


def make_boxes(n: int, size: int, seed: int) -> list[torch.Tensor]:
    """``n`` tensors ``(K, 4)`` of 1-3 random GT boxes (x0, y0, x1, y1 inclusive)."""
    rng = np.random.default_rng(seed)
    boxes = []
    for _ in range(n):
        corners = np.sort(rng.integers(0, size, size=(rng.integers(1, 4), 2, 2)), axis=1)  # (K, {lo,hi}, {x,y})
        boxes.append(torch.from_numpy(corners.reshape(-1, 4)))
    return boxes


def make_masks(maps: torch.Tensor, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Foreground masks correlated with the maps, and ignore regions (a band around part of the foreground)."""
    generator = torch.Generator().manual_seed(seed)
    masks = maps + 0.5 * torch.rand(maps.shape, generator=generator) > 0.8
    ignore = (maps > 0.5) & ~masks
    return masks, ignore


def time_boxes(maps, boxes, correct, thresholds, batch_size):
    fast = BoxAccuracy(thresholds=thresholds)
    fast.accumulate(maps[:2], boxes[:2], correct[:2])  # compile / load the numba kernel outside the timing
    fast.reset()
    start, cpu = time.perf_counter(), time.process_time()
    for first in range(0, len(maps), batch_size):
        chunk = slice(first, first + batch_size)
        fast.accumulate(maps[chunk], boxes[chunk], correct[chunk])
    fast_result = fast.compute()
    fast_seconds = (time.perf_counter() - start, time.process_time() - cpu)

    reference = reference_wsol.ReferenceBoxEvaluator(thresholds=thresholds)
    start, cpu = time.perf_counter(), time.process_time()
    maps64 = maps.double().numpy()
    for index in range(len(maps)):
        reference.accumulate_one(maps64[index], boxes[index].numpy(), bool(correct[index]))
    reference_result = reference.compute()
    reference_seconds = (time.perf_counter() - start, time.process_time() - cpu)

    identical = (np.array_equal(fast.num_correct, reference_result["num_correct"])
                 and fast_result["gt_known_loc"] == reference_result["gt_known_loc"]
                 and fast_result["top1_loc"] == reference_result["top1_loc"]
                 and fast_result["maxboxacc_v2"] == reference_result["maxboxacc_v2"]
                 and fast_result["best_threshold"] == reference_result["best_threshold"])
    return fast_seconds, reference_seconds, identical, fast_result


def time_pxap(maps, masks, ignore, thresholds, batch_size):
    fast = PxAP(thresholds=thresholds)
    start, cpu = time.perf_counter(), time.process_time()
    for first in range(0, len(maps), batch_size):
        chunk = slice(first, first + batch_size)
        fast.accumulate(maps[chunk], masks[chunk], ignore[chunk])
    fast_result = fast.compute()
    fast_seconds = (time.perf_counter() - start, time.process_time() - cpu)

    reference = reference_wsol.ReferenceMaskEvaluator(thresholds=thresholds)
    start, cpu = time.perf_counter(), time.process_time()
    maps64 = maps.double().numpy()
    for index in range(len(maps)):
        reference.accumulate_one(maps64[index], masks[index].numpy(), ignore[index].numpy())
    reference_result = reference.compute()
    reference_seconds = (time.perf_counter() - start, time.process_time() - cpu)
    identical = (fast_result["pxap"] == reference_result["pxap"]
                 and np.array_equal(fast.true_hist, reference.true_hist)
                 and np.array_equal(fast.false_hist, reference.false_hist))
    return fast_seconds, reference_seconds, identical, fast_result


def report(label: str, n: int, reference_seconds, fast_seconds, identical: bool, extra: str) -> None:
    """One line: wall and CPU seconds of both, the speed-ups (CPU time is the fairer one on a busy machine)."""
    (ref_wall, ref_cpu), (fast_wall, fast_cpu) = reference_seconds, fast_seconds
    print(f"[{label}] reference {ref_cpu:8.2f} s CPU ({ref_cpu / n * 1e3:7.2f} ms/map, wall {ref_wall:.2f} s) | "
          f"fast {fast_cpu:7.3f} s CPU ({fast_cpu / n * 1e3:6.3f} ms/map, wall {fast_wall:.3f} s) | "
          f"speed-up {ref_cpu / fast_cpu:6.1f}x CPU, {ref_wall / fast_wall:6.1f}x wall | identical {identical} | "
          f"{extra}", flush=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1000, help="CAM-like maps (default 1000)")
    parser.add_argument("--n-noisy", type=int, default=100,
                        help="noisy maps (default 100: the reference needs ~1 s per noisy map)")
    parser.add_argument("--noise", type=float, default=0.1, help="noise amplitude of the noisy case")
    parser.add_argument("--size", type=int, default=224, help="map side in pixels (default 224)")
    parser.add_argument("--batch-size", type=int, default=100, help="maps per accumulate() call")
    parser.add_argument("--cases", default="cam,noisy", help="comma-separated subset of: cam, noisy")
    parser.add_argument("--skip-pxap", action="store_true", help="time only the box metrics")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    thresholds = np.arange(0, 1, 0.001)
    all_identical = True
    print(f"maps of {args.size}x{args.size}, {len(thresholds)} thresholds, 1 thread, batch {args.batch_size}, "
          f"numba {'on' if numba_available() else 'off'}")
    for case in args.cases.split(","):
        n, noise = {"cam": (args.n, 0.0), "noisy": (args.n_noisy, args.noise)}[case]
        maps = make_maps(n, args.size, noise, seed=1)
        boxes = make_boxes(n, args.size, seed=2)
        correct = torch.rand(n, generator=torch.Generator().manual_seed(3)) < 0.8
        fast_s, ref_s, identical, result = time_boxes(maps, boxes, correct, thresholds, args.batch_size)
        all_identical &= identical
        report(f"boxes/{case} n={n}", n, ref_s, fast_s, identical,
               f"MaxBoxAccV2 {result['maxboxacc_v2']:.2f}, GT-known {result['gt_known_loc']:.2f}")
        if not args.skip_pxap:
            masks, ignore = make_masks(maps, seed=4)
            fast_s, ref_s, identical, result = time_pxap(maps, masks, ignore, thresholds, args.batch_size)
            all_identical &= identical
            report(f"pxap/{case} n={n}", n, ref_s, fast_s, identical, f"PxAP {result['pxap']:.2f}")
    print("all results identical" if all_identical else "MISMATCH between fast and reference results")
    return 0 if all_identical else 1


def numba_available() -> bool:
    from dualcam_lib.metrics import boxes

    return boxes.numba is not None


if __name__ == "__main__":
    raise SystemExit(main())
