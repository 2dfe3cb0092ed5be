"""The evaluation pipeline every chapter shares: one loop from data to tidy result rows.

data -> model (one backbone pass per batch per method) -> CAMs from the requested scores (both branches together)
-> the paper's post-processing -> WSOL metrics (GT class) and fidelity metrics (predicted class) -> rows.

- :func:`evaluate_cams` runs the loop for several methods and scores at once and returns a :class:`CamReport`.
- :func:`cross_fit_halves` splits a labelled set into two halves for cross-fitting (train the sigmoid head on one half,
  evaluate on the other, swap), used where no separate training set exists (the ImageNet-val-1000 run).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Sequence

import pandas as pd
import torch

from .cams import CamEngine, paper_postprocess, postprocess
from .cams.engine import SCORE_BRANCH
from .heads import DualBranchModel
from .metrics import BoxAccuracy, FidelityAccumulator, PxAP
from .results import make_row

DEFAULT_SCORES = ("softmax_logit", "sigmoid_logit")
METRIC_ORDER = ["top1_cls", "top1_loc", "gt_known_loc", "maxboxacc_v2", "maxboxacc_30", "maxboxacc_50",
                "maxboxacc_70", "pxap", "avg_drop", "inc_conf"]


def batches_of(data, batch_size: int):
    """Iterate ``WSOLBatch`` objects from a SyntheticSet / WSOLImageDataset (``.batches``) or any iterable of them."""
    if hasattr(data, "batches"):
        return data.batches(batch_size)
    return iter(data)


@dataclass
class CamReport:
    """Metrics per (method, score) plus classification accuracy; ``rows(...)`` turns them into tidy result rows."""

    top1_cls: float
    num_images: int
    wsol: dict = field(default_factory=dict)      # (method, score) -> BoxAccuracy.compute()
    pxap: dict = field(default_factory=dict)      # (method, score) -> PxAP.compute()
    fidelity: dict = field(default_factory=dict)  # (method, score) -> FidelityAccumulator.compute()
    per_image: dict = field(default_factory=dict)  # (method, score) -> per-image table (evaluate_cams(per_image=True))
    clamp: bool | None = None

    def metrics(self, method: str, score: str) -> dict:
        """Flat ``metric -> value`` (percent) for one (method, score)."""
        out = {}
        w = self.wsol.get((method, score))
        if w:
            out["top1_loc"] = w.get("top1_loc")
            out["gt_known_loc"] = w["gt_known_loc"]
            out["maxboxacc_v2"] = w["maxboxacc_v2"]
            for delta, v in w["maxboxacc"].items():
                out[f"maxboxacc_{int(round(float(delta) * 100))}"] = v
        if (method, score) in self.pxap:
            out["pxap"] = self.pxap[(method, score)]["pxap"]
        f = self.fidelity.get((method, score))
        if f:
            out["avg_drop"] = f["average_drop"]
            out["inc_conf"] = f["increase_in_confidence"]
        return {k: float(v) for k, v in out.items() if v is not None}

    def table(self) -> pd.DataFrame:
        """One row per (method, score): columns in the paper's order (``METRIC_ORDER``), values in percent."""
        keys = list(dict.fromkeys([*self.wsol, *self.pxap, *self.fidelity]))
        recs = []
        for m, s in keys:
            rec = {"method": m, "score": s, "branch": SCORE_BRANCH[s], "top1_cls": self.top1_cls}
            rec.update(self.metrics(m, s))
            recs.append(rec)
        df = pd.DataFrame(recs)
        cols = ["method", "score", "branch"] + [c for c in METRIC_ORDER if c in df.columns]
        return df[cols]

    def rows(self, *, dataset: str, backbone: str, setting: str, run_id: str = "", config: dict | None = None,
             variant: str = "") -> list[dict]:
        """Tidy rows (see :mod:`dualcam_lib.results`); the softmax branch also carries ``top1_cls``."""
        rows = []
        for (m, s) in dict.fromkeys([*self.wsol, *self.pxap, *self.fidelity]):
            branch = SCORE_BRANCH[s]
            v = variant
            if s not in DEFAULT_SCORES:
                v = f"score={s}" + (f",{variant}" if variant else "")
            metrics = self.metrics(m, s)
            if branch == "softmax":
                metrics = {"top1_cls": self.top1_cls, **metrics}
            for metric, value in metrics.items():
                rows.append(make_row(dataset=dataset, backbone=backbone, method=m, branch=branch, variant=v,
                                     metric=metric, value=value, setting=setting, run_id=run_id, config=config))
        return rows


def _normalizer(model):
    split = model.split if isinstance(model, DualBranchModel) else model
    return split.normalize


@torch.no_grad()
def _softmax_probs(model, x: torch.Tensor) -> torch.Tensor:
    if isinstance(model, DualBranchModel):
        return model(x).softmax_logits.softmax(-1)
    return model.head(model.backbone(x)).softmax(-1)


def evaluate_cams(model, data, *, methods: Sequence[str] = ("cam", "gradcam"), scores: Sequence[str] = DEFAULT_SCORES,
                  clamp: bool | None = None, wsol: bool = True, pxap: bool | None = None, fidelity: bool = False,
                  batch_size: int = 64, device: str | torch.device = "cpu", thresholds=None, target_layer=None,
                  method_kwargs: dict | None = None, accumulate_into: "CamReport | None" = None,
                  progress: bool = False, per_image: bool = False) -> CamReport:
    """Evaluate CAM ``methods`` from ``scores`` on ``data`` with the paper's protocol.

    ``model``: a DualBranchModel (both branches) or a SplitClassifier (softmax scores only).
    WSOL: maps of the ground-truth class, post-processed with ``paper_postprocess(method)``, scored by BoxAccuracy
    (Top-1 Loc needs the softmax branch's top-1 to be right) and, where the data has masks (``pxap=None`` -> auto),
    PxAP. Fidelity (``fidelity=True``): maps of the softmax branch's predicted class; ``y`` = its softmax probability
    on the image, ``o`` = on the [0, 1] RGB image multiplied by the map, then normalised (Average Drop, Increase in
    Confidence). ``accumulate_into``: continue the accumulators of an earlier report (cross-fitting).
    ``per_image``: also keep each image's results in ``report.per_image[(method, score)]`` (a dict with ``hits``
    ``(N, T, D)``, ``gt_known``, ``top1_loc`` and, with fidelity, ``y``, ``o``), the input of
    :func:`dualcam_lib.metrics.bootstrap.paired_bootstrap`.
    Returns a :class:`CamReport` (percentages).
    """
    from tqdm.auto import tqdm

    device = torch.device(device)
    normalize = _normalizer(model)
    model = model.to(device)
    method_kwargs = method_kwargs or {}
    keys = [(m, s) for m in methods for s in scores]
    if accumulate_into is not None and hasattr(accumulate_into, "_acc"):
        acc = accumulate_into._acc
    else:
        acc = {"box": {k: BoxAccuracy(thresholds, per_image=per_image) for k in keys}, "px": {k: PxAP(thresholds) for k in keys},
               "fid": {k: FidelityAccumulator() for k in keys}, "correct": 0, "n": 0, "has_masks": False}
    it = batches_of(data, batch_size)
    with CamEngine(model, target_layer=target_layer) as engine:
        for batch in tqdm(it, disable=not progress, desc="evaluate"):
            images = batch.images.to(device)
            labels = batch.labels.to(device)
            x = normalize(images)
            probs = _softmax_probs(model, x)
            pred = probs.argmax(-1)
            correct = pred == labels
            acc["correct"] += int(correct.sum())
            acc["n"] += len(labels)
            use_px = pxap if pxap is not None else batch.masks is not None
            if use_px and batch.masks is None:
                raise ValueError("pxap=True but the data has no masks")
            acc["has_masks"] |= bool(use_px)
            for m in methods:
                post = paper_postprocess(m)
                if wsol or use_px:
                    raw = engine.compute(x, labels, method=m, scores=scores, clamp=clamp, **method_kwargs)
                    for s in scores:
                        maps = postprocess(raw[s], size=images.shape[-2:], **post)
                        if wsol:
                            acc["box"][(m, s)].accumulate(maps, batch.boxes, correct)
                        if use_px:
                            masks = batch.masks.to(device)
                            ignore = None if batch.ignore is None else batch.ignore.to(device)
                            acc["px"][(m, s)].accumulate(maps, masks, ignore)
                if fidelity:
                    raw = engine.compute(x, pred, method=m, scores=scores, clamp=clamp, **method_kwargs)
                    y = probs.gather(1, pred[:, None])[:, 0]
                    for s in scores:
                        maps = postprocess(raw[s], size=images.shape[-2:], **post)
                        o = _softmax_probs(model, normalize(images * maps[:, None])).gather(1, pred[:, None])[:, 0]
                        acc["fid"][(m, s)].accumulate(y, o)
    report = CamReport(top1_cls=100.0 * acc["correct"] / max(acc["n"], 1), num_images=acc["n"], clamp=clamp)
    for k in keys:
        if wsol:
            report.wsol[k] = acc["box"][k].compute()
        if acc["has_masks"]:
            report.pxap[k] = acc["px"][k].compute()
        if fidelity:
            report.fidelity[k] = acc["fid"][k].compute()
    if per_image:
        for k in keys:
            table = dict(acc["box"][k].per_image()) if wsol else {}
            if fidelity:
                table.update(acc["fid"][k].per_image())
            report.per_image[k] = table
    report._acc = acc
    return report


def cross_fit_halves(num_items: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Two disjoint halves of ``range(num_items)`` (seeded random split), each sorted: ``(idx_a, idx_b)``."""
    perm = torch.randperm(num_items, generator=torch.Generator().manual_seed(seed))
    half = num_items // 2
    return perm[:half].sort().values, perm[half:].sort().values


def table_from_rows(rows: Iterable[dict] | pd.DataFrame, index=("backbone", "method", "branch"),
                    metrics: Sequence[str] | None = None) -> pd.DataFrame:
    """Pivot tidy rows into a paper-style table: one row per ``index``, one column per metric (paper order)."""
    df = rows if isinstance(rows, pd.DataFrame) else pd.DataFrame(list(rows))
    if df.empty:
        return df
    table = df.pivot_table(index=list(index), columns="metric", values="value", aggfunc="first")
    order = [c for c in METRIC_ORDER if c in table.columns] + [c for c in table.columns if c not in METRIC_ORDER]
    if metrics is not None:
        order = [c for c in metrics if c in table.columns]
    return table[order]
