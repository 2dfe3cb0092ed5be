"""One rule for moving boxes between image sizes, shared by the data loaders and the metrics.

wsolevaluation's ``resize_bbox`` computes ``int(x * W' / W)``: the product first, then the division, in float64.
``floor(x * (W' / W))`` (the ratio first) differs by one pixel for some widths (640 -> 224 at x = 180 gives 63 in
wsolevaluation's order and 62 in the other), so every caller goes through this function.
"""
from __future__ import annotations

import numpy as np
import torch


def rescale_boxes(boxes, from_size: tuple[int, int], to_size: tuple[int, int]):
    """``(K, 4)`` boxes ``(x0, y0, x1, y1)`` of a ``from_size = (W, H)`` image -> the same boxes in ``to_size``.

    Each coordinate becomes ``int(x * W' / W)`` (float64, truncated; coordinates are >= 0). A torch tensor in gives
    an int64 tensor on the same device; anything else gives an int64 ndarray.
    """
    (width, height), (new_width, new_height) = from_size, to_size
    if isinstance(boxes, torch.Tensor):
        scale = torch.tensor([new_width, new_height, new_width, new_height], dtype=torch.float64, device=boxes.device)
        size = torch.tensor([width, height, width, height], dtype=torch.float64, device=boxes.device)
        return (boxes.reshape(-1, 4).to(torch.float64) * scale / size).long()
    array = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    scale = np.array([new_width, new_height, new_width, new_height], dtype=np.float64)
    size = np.array([width, height, width, height], dtype=np.float64)
    return (array * scale / size).astype(np.int64)
