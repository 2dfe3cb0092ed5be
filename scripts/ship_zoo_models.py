"""Train the embedded zoo models the notebooks use, and ship their cache files with the package.

Two reasons to ship them rather than train them on every fresh machine. Time: the small ViT of chapter 13 takes
10-15 minutes of 2 CPU cores (30 epochs on 4000 images), the small CNNs 1-2 minutes each, and the book build and the
tests would pay that on every fresh clone. Reproducibility: training from scratch for many epochs amplifies the last
bits of floating point, so a CPU whose kernels sum in another order ends with other weights, and every stored number
downstream moves (the fitted heads of the chapters, by contrast, are small convex-ish problems on fixed features and
keep such differences in the last digits). This script trains each model with exactly the call the notebooks make
(``dualcam_lib.zoo.embedded_classifier``, 2 threads, the default recipe) and copies the resulting cache file into
``dualcam_lib/pretrained/``; ``embedded_classifier`` loads a shipped file only when its name (the hash of the full
training configuration) matches, so a changed recipe trains afresh instead of using stale weights.

    .venv/bin/python scripts/ship_zoo_models.py            # uses the cached model when present
    .venv/bin/python scripts/ship_zoo_models.py --retrain  # deletes the cached model first, so it trains again
"""
from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import torch

from dualcam_lib.zoo import SHIPPED_DIR, embedded_classifier, zoo_config, zoo_path

SHIPPED = [("synthetic", "small_cnn"), ("finegrained", "small_cnn"), ("synthetic", "small_vit")]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--retrain", action="store_true", help="train again even when a cached model exists")
    args = ap.parse_args(argv)
    torch.set_num_threads(2)
    SHIPPED_DIR.mkdir(exist_ok=True)
    for dataset, arch in SHIPPED:
        if args.retrain:
            zoo_path(zoo_config(dataset, arch)).unlink(missing_ok=True)
        split = embedded_classifier(dataset, arch, shipped=False, cache=True, progress=args.retrain)
        source = Path(split.meta["zoo"]["path"])
        shutil.copyfile(source, SHIPPED_DIR / source.name)
        print(f"{dataset}/{arch}: test accuracy {split.meta['zoo']['test_acc']:.1f}% -> {SHIPPED_DIR / source.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
