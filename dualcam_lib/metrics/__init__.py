"""Metrics: WSOL localisation (boxes, MaxBoxAccV2, GT-known / Top-1 Loc, PxAP) and explanation fidelity."""
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
    "DEFAULT_THRESHOLDS",
    "BoxAccuracy",
    "DeletionInsertion",
    "FidelityAccumulator",
    "PxAP",
    "average_drop",
    "box_iou",
    "boxes_from_map",
    "check_scoremaps",
    "deletion_insertion_auc",
    "explanation_inputs",
    "hits_per_level",
    "increase_in_confidence",
    "quantize_scoremaps",
    "rescale_boxes",
    "threshold_levels",
]
