"""Speed of the data module: metadata parsing, synthetic generation against a training step, image loading.

Reports CPU time beside wall time (a shared machine's wall clock says more about its neighbours than about us).

1. ``read_wsol_metadata`` on every split under ``<data root>/wsol-metadata`` (ms per 10k image ids);
2. images/s of each synthetic generator against images/s of one small_cnn softmax-CE training step (forward,
   backward, Adam) at the same size: generation must never dominate training;
3. images/s of ``WSOLImageDataset`` (decode + resize to 224) on ``imagenet-val-1000``.

    .venv/bin/python benchmarks/bench_data.py                 # defaults: 1024 images, 1 thread
    .venv/bin/python benchmarks/bench_data.py --n 256 --threads 2
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from dualcam_lib.data import make_synthetic_digits, make_synthetic_finegrained, make_synthetic_wsol  # noqa: E402
from dualcam_lib.data import read_wsol_metadata  # noqa: E402
from dualcam_lib.data.datasets import load_dataset  # noqa: E402
from dualcam_lib.models import build_classifier  # noqa: E402
from dualcam_lib.paths import data_root  # noqa: E402


def timed(fn, repeat: int = 1):
    """(result, best CPU seconds, best wall seconds) over ``repeat`` runs."""
    best_cpu = best_wall = float("inf")
    out = None
    for _ in range(repeat):
        c, w = time.process_time(), time.perf_counter()
        out = fn()
        best_cpu = min(best_cpu, time.process_time() - c)
        best_wall = min(best_wall, time.perf_counter() - w)
    return out, best_cpu, best_wall


def bench_metadata(root: Path) -> None:
    base = root / "wsol-metadata"
    if not base.is_dir():
        print(f"[metadata] skipped: {base} not found")
        return
    print("\n[metadata] read_wsol_metadata, best of 3")
    print(f"{'split':<18}{'ids':>8}{'loc lines':>11}{'cpu ms':>9}{'wall ms':>9}{'cpu ms/10k ids':>16}")
    total_ids = total_cpu = 0.0
    for folder in sorted(p for p in base.glob("*/*") if p.is_dir()):
        meta, cpu, wall = timed(lambda: read_wsol_metadata(folder), repeat=3)
        loc = sum(map(len, meta.boxes.values())) + sum(map(len, meta.mask_paths.values()))
        total_ids += len(meta)
        total_cpu += cpu
        print(f"{folder.parent.name + '/' + folder.name:<18}{len(meta):>8}{loc:>11}{cpu * 1e3:>9.0f}{wall * 1e3:>9.0f}"
              f"{cpu * 1e3 / len(meta) * 1e4:>16.0f}")
    per_10k = total_cpu * 1e3 / total_ids * 1e4
    print(f"{'all':<18}{int(total_ids):>8}{'':>11}{total_cpu * 1e3:>9.0f}{'':>9}{per_10k:>16.0f}")


def bench_generation_vs_training(n: int, size: int) -> None:
    print(f"\n[synthetic] {n} images of {size} px vs one small_cnn training step (batch 64), "
          f"{torch.get_num_threads()} thread(s)")
    split = build_classifier("small_cnn", num_classes=10, input_size=size)
    model = split.as_module().train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = torch.rand(64, 3, size, size)
    y = torch.randint(0, 10, (64,))

    def step():
        loss = F.cross_entropy(model(split.normalize(x)), y)
        opt.zero_grad()
        loss.backward()
        opt.step()

    step()  # warm-up
    _, cpu, wall = timed(lambda: [step() for _ in range(5)], repeat=2)
    train_rate = 64 * 5 / cpu
    print(f"{'small_cnn train step':<22}{train_rate:>10.0f} img/s (cpu)  {64 * 5 / wall:>8.0f} img/s (wall)")
    for name, make in (("synthetic (wsol)", make_synthetic_wsol), ("finegrained", make_synthetic_finegrained),
                       ("digits", make_synthetic_digits)):
        make(8, seed=0, size=size)  # warm-up (digits: loads the glyphs once)
        _, cpu, wall = timed(lambda: make(n, seed=1, size=size), repeat=2)
        rate = n / cpu
        print(f"{name:<22}{rate:>10.0f} img/s (cpu)  {n / wall:>8.0f} img/s (wall)   "
              f"= {rate / train_rate:.1f}x the training rate")


def bench_image_loading(root: Path, n: int) -> None:
    try:
        ds = load_dataset("imagenet-val-1000", "test", data_root=root, size=224)
    except FileNotFoundError as e:
        print(f"\n[images] skipped: {e.args[0].splitlines()[0]}")
        return
    n = min(n, len(ds))
    _, cpu, wall = timed(lambda: [ds[i] for i in range(n)])
    print(f"\n[images] imagenet-val-1000 decode + Resize((224, 224)), {n} images: {n / cpu:.0f} img/s (cpu), "
          f"{n / wall:.0f} img/s (wall)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1024, help="synthetic images per generator")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--images", type=int, default=200, help="real images to decode")
    parser.add_argument("--data-root", default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    root = data_root(args.data_root)
    bench_metadata(root)
    bench_generation_vs_training(args.n, args.size)
    bench_image_loading(root, args.images)


if __name__ == "__main__":
    main()
