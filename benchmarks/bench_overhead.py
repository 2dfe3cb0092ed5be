"""Benchmark: what the dual-branch head costs at inference, side by side in one run (the paper's Table 3).

For each backbone: the plain classifier's forward (backbone + softmax head) against the dual-branch forward (ONE
backbone pass, both heads), on the same random batch, timed interleaved round by round (the overhead is the ratio
of the medians; on a CPU also from process CPU time, which a shared machine's load barely
touches -- use ``--threads 1`` for it; and paired round by round). Timing the extra head alone on the backbone's
features gives its share of the plain forward with the least timing noise, and the FLOPs counted by PyTorch's
``FlopCounterMode`` for both forwards give the arithmetic the branch adds with none. Parameter counts come from
:func:`dualcam_lib.overhead.parameter_report`.
With ``--cam`` (needs ``dualcam_lib.cams``) it also times "plain model + Grad-CAM of the softmax logit" against
"dual model + Grad-CAM from both branches" (the paper's inference time includes CAM generation).

Goal: dual-branch forward overhead under 3 % (the paper reports +14-20 % per image including the CAM).

    python benchmarks/bench_overhead.py                                   # CPU, batch 8 at 224, 4 backbones
    python benchmarks/bench_overhead.py --archs resnet50,vgg16_gap --cam --device cuda --rounds 20 --iters 10
"""
from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import torch

from dualcam_lib.heads import DualBranchModel
from dualcam_lib.models import ARCHITECTURES, build_classifier
from dualcam_lib.overhead import compare_forward, flop_report, parameter_report, time_forward

# Per-image inference time from the paper's Table 3 (RTX A6000, includes CAM generation): baseline, ours, delta %.
# Its VGG-16 / InceptionV3 rows are wsolevaluation's GAP variants (the parameter counts say so).
PAPER_INFERENCE_MS = {"vgg16_gap": (84.7, 101.2, 19.48), "resnet50": (117.4, 138.4, 17.89),
                      "inception_v3_gap": (108.1, 123.4, 14.15)}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--archs", default="resnet50,mobilenet_v2,efficientnet_lite0,vgg16",
                   help="comma-separated names from dualcam_lib.models.ARCHITECTURES")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, mps ...")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--size", type=int, default=None, help="input size (default: each model's input_size)")
    p.add_argument("--num-classes", type=int, default=1000)
    p.add_argument("--rounds", type=int, default=10, help="interleaved rounds")
    p.add_argument("--iters", type=int, default=1, help="timed calls per function per round")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--cam", action="store_true", help="also time Grad-CAM: plain (softmax) vs dual (both branches)")
    p.add_argument("--csv", type=Path, default=None, help="write one row per backbone to this CSV file")
    args = p.parse_args(argv)
    unknown = [a for a in args.archs.split(",") if a not in ARCHITECTURES]
    if unknown:
        p.error(f"--archs: unknown {unknown}; expected names from {sorted(ARCHITECTURES)}")
    if args.batch < 1 or args.rounds < 1 or args.iters < 1:
        p.error("--batch, --rounds and --iters must be >= 1")
    return args


def _ci(interval: tuple) -> str:
    return f"[{interval[0]:+.1f}, {interval[1]:+.1f}]"


def bench_one(name: str, args, device: torch.device) -> dict:
    torch.manual_seed(0)
    split = build_classifier(name, num_classes=args.num_classes)  # random init: timing does not depend on weights
    dual = DualBranchModel(split).to(device).eval()
    plain = split.as_module().eval()  # the same backbone and softmax head modules as the dual model
    size = args.size or split.input_size
    x = torch.randn(args.batch, 3, size, size, device=device)
    params = parameter_report(dual)
    timing = compare_forward({"plain": plain, "dual": dual}, x, rounds=args.rounds, iters=args.iters,
                             warmup=args.warmup)
    # The dual forward is the plain forward plus exactly one more head on the same features: timing that head alone
    # gives its share of the forward with far less noise than the difference of two end-to-end timings.
    with torch.inference_mode():
        features = dual.backbone(x)
    head = time_forward(dual.sigmoid_head, features, iters=max(10, args.rounds * args.iters), warmup=args.warmup)
    flops = flop_report(dual, x)
    row = {
        "arch": name, "device": str(device), "batch": args.batch, "size": size,
        "params_baseline_M": params["baseline_M"], "params_dual_M": params["dual_M"],
        "params_delta_pct": round(params["delta_pct"], 2),
        "plain_ms": round(timing["plain"]["median_ms"], 2), "dual_ms": round(timing["dual"]["median_ms"], 2),
        "forward_overhead_pct": round(timing["dual"]["overhead_pct"], 2),
        "forward_overhead_ci95": _ci(timing["dual"]["overhead_ci95_pct"]),
        "paired_overhead_pct": round(timing["dual"]["paired_overhead_pct"], 2),
        "paired_overhead_ci95": _ci(timing["dual"]["paired_overhead_ci95_pct"]),
        "min_overhead_pct": round(timing["dual"]["min_overhead_pct"], 2),
        "plain_cpu_ms": round(timing["plain"]["cpu_median_ms"], 2),
        "dual_cpu_ms": round(timing["dual"]["cpu_median_ms"], 2),
        "forward_cpu_overhead_pct": round(timing["dual"]["cpu_overhead_pct"], 2),
        "forward_cpu_overhead_ci95": _ci(timing["dual"]["cpu_overhead_ci95_pct"]),
        "gflops_plain": round(flops["plain_flops"] / 1e9 / args.batch, 3),
        "gflops_dual": round(flops["dual_flops"] / 1e9 / args.batch, 3),
        "flops_overhead_pct": round(flops["overhead_pct"], 3),
        "extra_head_ms": round(head["median_ms"], 3),
        "extra_head_pct": round(100.0 * head["median_ms"] / timing["plain"]["median_ms"], 3),
        "extra_head_cpu_pct": round(100.0 * head["cpu_median_ms"] / timing["plain"]["cpu_median_ms"], 3),
    }
    if args.cam:
        from dualcam_lib.cams import CamEngine

        targets = torch.randint(0, args.num_classes, (args.batch,), device=device)
        plain_engine, dual_engine = CamEngine(split), CamEngine(dual)
        cam = compare_forward({
            "plain+gradcam": lambda t: plain_engine.compute(t, targets, "gradcam", scores=("softmax_logit",)),
            "dual+gradcam_both": lambda t: dual_engine.compute(t, targets, "gradcam",
                                                               scores=("softmax_logit", "sigmoid_logit")),
        }, x, rounds=args.rounds, iters=args.iters, warmup=args.warmup, inference_mode=False)
        row.update({
            "plain_gradcam_ms": round(cam["plain+gradcam"]["median_ms"], 2),
            "dual_gradcam_ms": round(cam["dual+gradcam_both"]["median_ms"], 2),
            "gradcam_overhead_pct": round(cam["dual+gradcam_both"]["overhead_pct"], 2),
            "gradcam_cpu_overhead_pct": round(cam["dual+gradcam_both"]["cpu_overhead_pct"], 2),
        })
    del dual, plain, split
    return row


def print_table(rows: list[dict], cam: bool, cpu: bool) -> None:
    cols = ["arch", "size", "batch", "params_baseline_M", "params_dual_M", "params_delta_pct", "plain_ms", "dual_ms",
            "forward_overhead_pct", "forward_overhead_ci95", "paired_overhead_pct", "paired_overhead_ci95",
            "min_overhead_pct"]
    if cpu:
        cols += ["plain_cpu_ms", "dual_cpu_ms", "forward_cpu_overhead_pct", "forward_cpu_overhead_ci95"]
    cols += ["extra_head_ms", "extra_head_pct"] + (["extra_head_cpu_pct"] if cpu else [])
    cols += ["gflops_plain", "gflops_dual", "flops_overhead_pct"]
    if cam:
        cols += ["plain_gradcam_ms", "dual_gradcam_ms", "gradcam_overhead_pct"]
        cols += ["gradcam_cpu_overhead_pct"] if cpu else []
    cols += ["paper_delta_pct"]
    table = [[str(r.get(c, "")) for c in cols] for r in rows]
    widths = [max(len(c), *(len(t[i]) for t in table)) for i, c in enumerate(cols)]
    print("  ".join(c.rjust(w) for c, w in zip(cols, widths)))
    for t in table:
        print("  ".join(v.rjust(w) for v, w in zip(t, widths)))


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(f"device={device} threads={torch.get_num_threads()} batch={args.batch} rounds={args.rounds} "
          f"iters={args.iters} torch={torch.__version__}")
    rows = []
    for name in args.archs.split(","):
        row = bench_one(name, args, device)
        paper = PAPER_INFERENCE_MS.get(name)
        row["paper_delta_pct"] = paper[2] if paper else ""
        rows.append(row)
        print(f"  {name}: plain {row['plain_ms']} ms, dual {row['dual_ms']} ms, "
              f"overhead {row['forward_overhead_pct']:+.2f} % wall, {row['forward_cpu_overhead_pct']:+.2f} % CPU time, "
              f"paired by round {row['paired_overhead_pct']:+.2f} % {row['paired_overhead_ci95']}, "
              f"fastest call against fastest call {row['min_overhead_pct']:+.2f} %; "
              f"the extra head alone: {row['extra_head_ms']} ms = {row['extra_head_pct']:.3f} % of the plain forward "
              f"({row['extra_head_cpu_pct']:.3f} % in CPU time); counted FLOPs +{row['flops_overhead_pct']:.3f} %",
              flush=True)
    print()
    print_table(rows, args.cam, cpu=device.type == "cpu")
    worst = max(r["forward_overhead_pct"] for r in rows)
    worst_cpu = max(r["forward_cpu_overhead_pct"] for r in rows)
    worst_head = max(r["extra_head_pct"] for r in rows)
    worst_paired = max(r["paired_overhead_pct"] for r in rows)
    worst_flops = max(r["flops_overhead_pct"] for r in rows)
    worst_min = max(r["min_overhead_pct"] for r in rows)
    print(f"\nworst dual-branch forward overhead: end to end {worst:+.2f} % wall"
          + (f", {worst_cpu:+.2f} % CPU time" if device.type == "cpu" else "")
          + f", paired by round {worst_paired:+.2f} %"
          + f" (interleaved medians), fastest against fastest call {worst_min:+.2f} %; "
          f"the extra head alone {worst_head:.3f} % of the time, counted FLOPs "
          f"+{worst_flops:.3f} %. Goal < 3 %; the paper reports +14-20 % "
          "incl. CAM (paper_delta_pct = its Table 3 inference column).")
    if args.csv:
        args.csv.parent.mkdir(parents=True, exist_ok=True)
        with open(args.csv, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        print(f"wrote {args.csv}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
