#!/usr/bin/env bash
# The embedded-default result rows that chapter 10 (notebooks/10_benchmark_tables.ipynb) reads: every chapter that
# produces rows, run through papermill with its default parameters and `results_path` set, rows merged atomically
# into results/embedded_<chapter>.csv. A run whose per-run CSV exists under runs/embedded/ is skipped, so an
# interrupted script resumes; pass --force to run everything again. Extra arguments go to `python -m dualcam_lib grid`.
#
# About 10 minutes on 2 CPU cores once the embedded zoo models are cached (the book build caches them).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-.venv/bin/python}"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}"
status=0
for nb in 05_fine_tuning 06_wsol_benchmark 07_fidelity 08_ablations 11_which_score 12_softcam 13_agcam_vit; do
  "$PYTHON" -m dualcam_lib grid --notebook "notebooks/$nb.ipynb" --out "runs/embedded/$nb" \
      --results "results/embedded_${nb#??_}.csv" --param num_threads=2 "$@" || status=$?
done
# chapter 5 also on the fine-grained set (the CUB analogue)
"$PYTHON" -m dualcam_lib grid --notebook notebooks/05_fine_tuning.ipynb --out runs/embedded/05_fine_tuning \
    --results results/embedded_fine_tuning.csv --param dataset=finegrained --param num_threads=2 "$@" || status=$?
exit $status
