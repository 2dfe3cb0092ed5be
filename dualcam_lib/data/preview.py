"""A sample grid for dataset cards: images with their ground-truth boxes and mask outlines drawn on top."""
from __future__ import annotations

from typing import Sequence

import torch

BOX_COLOUR = "#d62728"  # ground-truth boxes: red, as elsewhere in the book
MASK_COLOUR = "#ffffff"
PART_COLOUR = "#00e5ff"


def sample_grid(images: torch.Tensor, boxes=None, masks: torch.Tensor | None = None,
                part_masks: torch.Tensor | None = None, titles: Sequence[str] | None = None, ncols: int = 8,
                size: float = 1.5, title_size: float = 6):
    """Draw ``images (N, 3, H, W)`` in [0, 1] with boxes (``(N, 4)`` or a list of ``(K_i, 4)``, inclusive pixels),
    mask outlines ``(N, H, W) bool`` (white) and part-mask outlines (cyan). Returns the matplotlib figure."""
    import matplotlib.pyplot as plt

    n = images.shape[0]
    nrows = max(1, (n + ncols - 1) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(size * ncols, size * nrows), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.set_axis_off()
        if i >= n:
            continue
        ax.imshow(images[i].detach().float().clamp(0, 1).permute(1, 2, 0).cpu().numpy(), interpolation="nearest")
        for m, colour in ((masks, MASK_COLOUR), (part_masks, PART_COLOUR)):
            if m is not None and m[i].any():
                ax.contour(m[i].detach().float().cpu().numpy(), levels=[0.5], colors=colour, linewidths=0.6)
        if boxes is not None:
            for x0, y0, x1, y1 in torch.as_tensor(boxes[i]).reshape(-1, 4).tolist():
                ax.add_patch(plt.Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0 + 1, y1 - y0 + 1, fill=False,
                                           edgecolor=BOX_COLOUR, linewidth=1.2))
        if titles is not None:
            ax.set_title(titles[i], fontsize=title_size)
    fig.tight_layout()
    return fig
