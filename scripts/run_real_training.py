"""The real-photo experiments: Imagenette and Imagewoof x EfficientNet-Lite0 and MobileNetV2 x the paper's two settings.

Usage (from the repository root; the data root and weights root as everywhere, see README.md):

    .venv/bin/python scripts/run_real_training.py [--only imagewoof-224] [--force]

Every configuration goes through :func:`dualcam_lib.runner.run_experiment`. Its rows are written atomically to
``runs/real/<tag>.csv`` and merged into ``results/real_<dataset>.csv``; a configuration whose per-run file exists is
skipped (so an interrupted run resumes), unless ``--force``. About 2 hours on 2 CPU cores in all (the closing note
of the issue gives each run's time); a GPU server passes ``--device cuda``.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from dualcam_lib.results import read_rows, write_rows  # noqa: E402
from dualcam_lib.runner import ALL_METHODS, RunConfig, run_controls, run_experiment  # noqa: E402

DATASETS = ("imagenette-224", "imagewoof-224")
BACKBONES = {"mobilenet_v2": "mobilenet_v2_imagenet_coral_dequant.pth", "efficientnet_lite0": "default"}


def configs(device: str, fidelity_everywhere: bool = False) -> list[RunConfig]:
    """The grid, most informative first: the pretrained sub-head with fresh init (plus the Table 1 fidelity metrics,
    the Table 4 / 5 ablations and, for MobileNetV2, the fast-against-faithful check), the fine-tuned linear and MLP
    heads, then the copy init (one seed). Fidelity costs one backbone pass per masked image (3000 per run): on 2 CPU cores it is
    scored for the sub-head runs only; pass --fidelity-everywhere on a faster machine."""
    out = []
    gradcam_family = tuple(m for m in ALL_METHODS if m != "cam")
    for setting, init, extra in (("subhead", "fresh", {"ablations": True}),
                                 ("finetuned_linear", "fresh", {"fidelity": fidelity_everywhere}),
                                 ("finetuned_mlp", "fresh", {"methods": gradcam_family,
                                                             "fidelity": fidelity_everywhere}),
                                 ("subhead", "copy", {"fidelity": fidelity_everywhere, "seeds": (0,)})):
        for dataset in DATASETS:
            for backbone, weights in BACKBONES.items():
                kw = dict(extra)
                if setting == "subhead" and init == "fresh" and backbone == "mobilenet_v2":
                    kw["faithful_train"] = 1000
                out.append(RunConfig(dataset=dataset, backbone=backbone, weights=weights, setting=setting,
                                     head_init=init, device=device, **kw))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default=None, help="run only the configurations whose tag contains this text")
    ap.add_argument("--out", default="runs/real", help="folder of the per-run CSVs")
    ap.add_argument("--results", default="results", help="folder of the merged results/real_<dataset>.csv")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--force", action="store_true", help="run again configurations that already have rows")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    ap.add_argument("--fidelity-everywhere", action="store_true",
                    help="score Average Drop / Increase in Confidence in every setting, not only the sub-head runs")
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    failed = []
    for config in configs(args.device, args.fidelity_everywhere):
        if args.only and args.only not in config.tag:
            continue
        per_run = out / f"{config.tag}.csv"
        if per_run.exists() and not args.force:
            print(f"[real] {config.tag}: already done ({per_run}), skipped", flush=True)
            if config.controls and "untrained" not in set(read_rows(per_run)["variant"]):
                t0 = time.time()  # a run made before the controls existed: add them
                write_rows(per_run, run_controls(config, log=lambda msg: print(msg, flush=True)))
                print(f"[real] {config.tag}: controls added in {time.time() - t0:.0f} s", flush=True)
        else:
            t0 = time.time()
            try:
                result = run_experiment(config, log=lambda msg: print(msg, flush=True))
            except Exception as error:  # report, keep the other runs going, exit non-zero at the end
                failed.append(config.tag)
                print(f"[real] {config.tag}: FAILED after {time.time() - t0:.0f} s: {error!r}", flush=True)
                continue
            write_rows(per_run, result.rows)
            print(f"[real] {config.tag}: {len(result.rows)} rows in {time.time() - t0:.0f} s "
                  f"({', '.join(f'{k} {v:.0f} s' for k, v in result.seconds.items())})", flush=True)
        name = config.dataset.replace("-224", "").replace("-", "_")
        write_rows(Path(args.results) / f"real_{name}.csv", read_rows(per_run))
    if failed:
        print(f"[real] failed: {failed}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
