"""The CAM engine: CAM variants from the softmax and sigmoid branches, batched torch in and out.

``CamEngine(model, target_layer=None)`` computes raw signed maps ``(B, P, Q)``; ``postprocess`` turns them into
``(B, H, W)`` images in [0, 1]; ``paper_postprocess(method)`` gives the paper's post-processing for a method.
"""
from .engine import SCORE_BRANCH, CamEngine, score_values
from .methods import METHODS, CamContext, CamMethod, first_principal_projection, get_method, weighted_sum
from .postprocess import minmax_normalize, paper_postprocess, postprocess
from .tokens import as_feature_maps, find_grid, tokens_to_maps

SCORES = tuple(SCORE_BRANCH)

__all__ = [
    "CamEngine", "SCORES", "SCORE_BRANCH", "score_values",
    "METHODS", "CamContext", "CamMethod", "get_method", "weighted_sum", "first_principal_projection",
    "postprocess", "paper_postprocess", "minmax_normalize",
    "find_grid", "tokens_to_maps", "as_feature_maps",
]
