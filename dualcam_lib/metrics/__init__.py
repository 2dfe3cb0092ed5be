"""Metrics: WSOL localisation (boxes, MaxBoxAccV2, GT-known / Top-1 Loc, PxAP), explanation fidelity and
seeded (paired) bootstrap intervals on per-image tables."""
from dualcam_lib.metrics.bootstrap import (
    METRICS as BOOTSTRAP_METRICS,
    bootstrap_indices,
    bootstrap_interval,
    paired_bootstrap,
    resample_weights,
)
from dualcam_lib.metrics.boxes import (
    DEFAULT_THRESHOLDS,
    box_iou,
    boxes_from_map,
    check_scoremaps,
    hits_per_level,
    quantize_scoremaps,
    rescale_boxes,
    threshold_levels,
)
from dualcam_lib.metrics.fidelity import (
    DeletionInsertion,
    FidelityAccumulator,
    average_drop,
    deletion_insertion_auc,
    explanation_inputs,
    increase_in_confidence,
)
from dualcam_lib.metrics.wsol import PxAP, BoxAccuracy

__all__ = [
    "BOOTSTRAP_METRICS",
    "DEFAULT_THRESHOLDS",
    "BoxAccuracy",
    "DeletionInsertion",
    "FidelityAccumulator",
    "PxAP",
    "average_drop",
    "bootstrap_indices",
    "bootstrap_interval",
    "box_iou",
    "boxes_from_map",
    "check_scoremaps",
    "deletion_insertion_auc",
    "explanation_inputs",
    "hits_per_level",
    "increase_in_confidence",
    "paired_bootstrap",
    "quantize_scoremaps",
    "rescale_boxes",
    "resample_weights",
    "threshold_levels",
]
