"""Figures for the book: map overlays with boxes, image grids, and kernel-free slider widgets.

Everything takes torch tensors (any device; moved to the CPU only here, at the plotting boundary).
"""
from __future__ import annotations

import io
from typing import Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch

GT_COLOR = "#d62728"    # ground-truth boxes: red, as in the paper's figures
PRED_COLOR = "#2ca02c"  # predicted boxes: green


def to_numpy_image(image: torch.Tensor) -> np.ndarray:
    """``(3, H, W)`` float in [0, 1] -> ``(H, W, 3)`` numpy for imshow."""
    return image.detach().float().clamp(0, 1).permute(1, 2, 0).cpu().numpy()


def draw_boxes(ax, boxes, color: str = GT_COLOR, linewidth: float = 2.0) -> None:
    """Draw ``(K, 4)`` boxes ``x0, y0, x1, y1`` (inclusive pixel coordinates) on a matplotlib axis."""
    if boxes is None:
        return
    boxes = torch.as_tensor(boxes).reshape(-1, 4).cpu().tolist()
    for x0, y0, x1, y1 in boxes:
        ax.add_patch(plt.Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0 + 1, y1 - y0 + 1, fill=False,
                                   edgecolor=color, linewidth=linewidth))


def show_overlay(ax, image: torch.Tensor, cam: torch.Tensor | None = None, *, alpha: float = 0.5,
                 cmap: str = "jet", gt_boxes=None, pred_boxes=None, title: str | None = None,
                 vmin: float | None = 0.0, vmax: float | None = 1.0) -> None:
    """Show ``image (3, H, W)`` with an optional map ``cam (H, W)`` blended on top and GT/predicted boxes."""
    ax.imshow(to_numpy_image(image))
    if cam is not None:
        ax.imshow(cam.detach().float().cpu().numpy(), cmap=cmap, alpha=alpha, vmin=vmin, vmax=vmax)
    draw_boxes(ax, gt_boxes, GT_COLOR)
    draw_boxes(ax, pred_boxes, PRED_COLOR)
    if title:
        ax.set_title(title, fontsize=9)
    ax.set_axis_off()


def image_grid(images: torch.Tensor, maps: torch.Tensor | None = None, *, ncols: int = 8, gt_boxes=None,
               pred_boxes=None, titles: Sequence[str] | None = None, size: float = 1.6, alpha: float = 0.5):
    """A grid of ``images (N, 3, H, W)``, optionally with ``maps (N, H, W)`` and per-image box lists. Returns the figure."""
    n = images.shape[0]
    nrows = (n + ncols - 1) // ncols
    fig, axes = plt.subplots(nrows, ncols, figsize=(size * ncols, size * nrows), squeeze=False)
    for i, ax in enumerate(axes.flat):
        if i >= n:
            ax.set_axis_off()
            continue
        show_overlay(ax, images[i], None if maps is None else maps[i], alpha=alpha,
                     gt_boxes=None if gt_boxes is None else gt_boxes[i],
                     pred_boxes=None if pred_boxes is None else pred_boxes[i],
                     title=None if titles is None else titles[i])
    fig.tight_layout()
    return fig


def figure_to_png(fig) -> bytes:
    """Render a matplotlib figure to PNG bytes and close it."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=fig.dpi, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def slider_of_frames(frames: Sequence[bytes], values: Sequence[float], description: str = "value",
                     readout_format: str = ".2f"):
    """A slider that flips between pre-rendered PNG ``frames``, one per entry of ``values``.

    The slider and the image stack are linked in the browser (``jslink``), so the widget keeps working in the static
    HTML book with no kernel behind it.
    """
    import ipywidgets as widgets

    if len(frames) != len(values):
        raise ValueError(f"slider_of_frames: got {len(frames)} frames for {len(values)} values")
    images = [widgets.Image(value=f, format="png", layout=widgets.Layout(max_width="100%")) for f in frames]
    stack = widgets.Stack(images, selected_index=0)
    index = widgets.IntSlider(value=0, min=0, max=len(values) - 1, description=description, readout=False,
                              continuous_update=True)
    labels = widgets.Dropdown(options=[(f"{v:{readout_format}}", i) for i, v in enumerate(values)], value=0,
                              layout=widgets.Layout(width="110px"))
    widgets.jslink((index, "value"), (stack, "selected_index"))
    widgets.jslink((index, "value"), (labels, "index"))
    return widgets.VBox([widgets.HBox([index, labels]), stack])
