"""Sigmoid-against-softmax comparisons of the runner's rows, with their intervals, verdicts and the paper beside them.

Input: tidy rows (:mod:`dualcam_lib.results`, columns ``source, setting, dataset, backbone, method, branch, variant,
metric, value, run_id, config``) as :func:`dualcam_lib.runner.run_experiment` writes them: per-seed values
(``run_id`` ends in ``-s<seed>``) and, on the first seed's ``run_id``, ``delta_<metric>`` with ``_low`` / ``_high``
(paired bootstrap 95% interval over the test photos) and ``_seed_mean`` / ``_seed_sd`` (over the seeds).

- :func:`verdict`, :func:`better_direction`: a delta is called only when its interval excludes 0.
- :func:`delta_table`: one row per (dataset, backbone, setting, method), per metric softmax, sigmoid, delta, interval,
  seed sd, verdict and the paper's delta for the same method (:func:`paper_delta`).
- :func:`verdict_counts`: how many verdicts of each kind, per setting / dataset; :func:`identical_methods`: rows
  that repeat another method's comparison exactly (Grad-CAM and XGrad-CAM on a linear head).
- :func:`variant_table`: sigmoid-branch variants (Table 4 / 5 ablations, fast against faithful) beside a reference.
- :func:`controls_table`: the clamped softmax branch and the untrained sigmoid branch beside the trained one.
- :func:`choices_table`: what was chosen on val.
- :func:`check_rows`: internal consistency of the rows (delta = sigmoid - softmax, delta inside its interval, ...).
- :func:`styled`, :func:`styled_frame`: pandas Stylers for the book (HTML, deterministic ids).
"""
from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from .results import paper_rows

KEYS = ["dataset", "backbone", "setting", "method"]
FIELDS = ("softmax", "sigmoid", "delta", "low", "high", "seed_sd", "verdict")
LOWER_IS_BETTER = frozenset({"avg_drop"})
BETTER, WORSE, UNRESOLVED, NO_INTERVAL = "sigmoid better", "sigmoid worse", "not resolved", "no interval"
VERDICTS = (BETTER, WORSE, UNRESOLVED, NO_INTERVAL)

DATASET_NAMES = {"imagenette-224": "Imagenette", "imagewoof-224": "Imagewoof"}
BACKBONE_NAMES = {"efficientnet_lite0": "EfficientNet-Lite0", "mobilenet_v2": "MobileNetV2", "vgg16": "VGG-16",
                  "resnet50": "ResNet-50", "inception_v3": "InceptionV3", "small_cnn": "small CNN"}
METHOD_NAMES = {"cam": "CAM", "gradcam": "Grad-CAM", "gradcampp": "Grad-CAM++", "xgradcam": "XGrad-CAM",
                "layercam": "Layer-CAM"}
METRIC_NAMES = {"maxboxacc_v2": "MaxBoxAccV2", "gt_known_loc": "GT-known Loc", "top1_loc": "Top-1 Loc",
                "maxboxacc_30": "MaxBoxAcc@0.3", "maxboxacc_50": "MaxBoxAcc@0.5", "maxboxacc_70": "MaxBoxAcc@0.7",
                "avg_drop": "Average Drop (lower is better)", "inc_conf": "Increase in Confidence"}
SETTING_ORDER = ("pretrained sub-head, fresh init", "fine-tuned linear head, fresh init",
                 "fine-tuned MLP head, fresh init", "pretrained sub-head, copy init")
METHOD_ORDER = tuple(METHOD_NAMES)
# The paper's default of each ablation variant (Tables 4 and 5): clamping on, positive weight C-1 : 1.
PAPER_DEFAULT_OF = {"no_clamp": "clamp", "pos_1:1": "pos_C-1", "pos_half": "pos_C-1"}
VARIANT_NAMES = {"no_clamp": "no clamp", "pos_1:1": "1 : 1", "pos_half": "(C-1)/2 : 1", "fast_subset": "fast",
                 "faithful_subset": "faithful"}
VERDICT_COLOURS = {BETTER: "#e3f1e4", WORSE: "#f8e0dd", UNRESOLVED: "#eeeeee", NO_INTERVAL: "#ffffff"}


# ------------------------------------------------------------------------------------------------------- verdicts
def better_direction(metric: str) -> int:
    """+1 where a larger value is better (accuracies, Increase in Confidence), -1 for Average Drop."""
    return -1 if metric in LOWER_IS_BETTER else 1


def verdict(low: float, high: float, metric: str | None = None) -> str:
    """The call on a sigmoid-minus-softmax delta with the 95% interval ``[low, high]``.

    Without ``metric``: "gain" (``low > 0``), "loss" (``high < 0``) or "not resolved" (the interval holds 0).
    With ``metric``: "sigmoid better" / "sigmoid worse" / "not resolved", the direction taken from
    :func:`better_direction` (for Average Drop a negative delta is better). A missing bound: "no interval"."""
    if low is None or high is None or pd.isna(low) or pd.isna(high):
        return NO_INTERVAL
    if low > 0:
        sign = 1
    elif high < 0:
        sign = -1
    else:
        return UNRESOLVED
    if metric is None:
        return "gain" if sign > 0 else "loss"
    return BETTER if sign * better_direction(metric) > 0 else WORSE


# ---------------------------------------------------------------------------------------------------- the paper
@dataclass(frozen=True)
class PaperDelta:
    """The paper's sigmoid-minus-softmax (or variant-minus-default) deltas for one method and metric.

    ``deltas``: {(dataset, backbone): delta}; ``summary``: "+0.8 .. +7.7 (3 backbones)" ("" without rows);
    ``word``: "paper: gain" / "paper: loss" / "paper: backbones disagree" / "paper has no such row", where gain /
    loss follow :func:`better_direction` (for Average Drop a fall is a gain)."""

    method: str
    metric: str
    deltas: dict = field(default_factory=dict)
    summary: str = ""
    word: str = "paper has no such row"

    @property
    def span(self) -> str:
        """The range of the deltas, "+0.8 .. +7.7" ("" without rows)."""
        return self.summary.split(" (")[0]

    @property
    def cell(self) -> str:
        """One table cell: "+0.8 .. +7.7: gain", or "no such row" (the count of backbones is in :attr:`summary`)."""
        if not self.deltas:
            return "no such row"
        return f"{self.span}: {self.word.removeprefix('paper: ')}"


def _summarise(method: str, metric: str, deltas: dict, unit: str) -> PaperDelta:
    if not deltas:
        return PaperDelta(method, metric)
    values = list(deltas.values())
    n = len(values)
    lo, hi = min(values), max(values)
    num = lambda v: f"{v:+.2f}" if abs(v) < 0.095 else f"{v:+.1f}"  # noqa: E731  (+0.03 is not "+0.0")
    span = num(lo) if num(lo) == num(hi) else f"{num(lo)} .. {num(hi)}"
    summary = f"{span} ({n} {unit}{'' if n == 1 else 's'})"
    good = [v * better_direction(metric) for v in values]
    word = ("paper: gain" if all(g > 0 for g in good) else "paper: loss" if all(g < 0 for g in good)
            else "paper: backbones disagree")
    return PaperDelta(method, metric, dict(deltas), summary, word)


def paper_delta(method: str, metric: str, paper: pd.DataFrame | None = None) -> PaperDelta:
    """The paper's sigmoid-minus-softmax deltas of ``method`` on ``metric`` over its backbones.

    WSOL metrics come from Table 2 (ImageNet-1K; CAM and Grad-CAM only, VGG-16 / ResNet-50 / InceptionV3), Average
    Drop / Increase in Confidence from Table 1 (CUB and Cars, VGG-16 / ResNet-50: four backbone-set pairs). A method
    or metric the paper does not report gives ``word == "paper has no such row"``."""
    paper = paper_rows() if paper is None else paper
    table1 = metric in ("avg_drop", "inc_conf")
    p = paper[(paper["method"] == method) & (paper["metric"] == metric) & (paper["variant"] == "")]
    p = p[p["dataset"].isin(("cub", "cars"))] if table1 else p[p["dataset"] == "imagenet"]
    wide = p.pivot_table(index=["dataset", "backbone"], columns="branch", values="value", aggfunc="first")
    deltas = {}
    if {"softmax", "sigmoid"} <= set(wide.columns):
        d = (wide["sigmoid"] - wide["softmax"]).dropna()
        deltas = {k: float(v) for k, v in d.items()}
    return _summarise(method, metric, deltas, "backbone-set pair" if table1 else "backbone")


def paper_variant_delta(method: str, variant: str, metric: str = "maxboxacc_v2",
                        paper: pd.DataFrame | None = None) -> PaperDelta:
    """Tables 4 / 5: the paper's sigmoid-branch ``variant`` ("no_clamp", "pos_1:1", "pos_half") minus its default
    (clamping, positive weight C-1 : 1) on ImageNet-1K, per backbone. Other variants: "paper has no such row"."""
    paper = paper_rows() if paper is None else paper
    default = PAPER_DEFAULT_OF.get(variant)
    if default is None:
        return PaperDelta(method, metric)
    p = paper[(paper["method"] == method) & (paper["metric"] == metric) & (paper["branch"] == "sigmoid")]
    wide = p.pivot_table(index="backbone", columns="variant", values="value", aggfunc="first")
    deltas = {}
    if {variant, default} <= set(wide.columns):
        deltas = {("imagenet", k): float(v) for k, v in (wide[variant] - wide[default]).dropna().items()}
    return _summarise(method, metric, deltas, "backbone")


# --------------------------------------------------------------------------------------------------- our rows
def seed_of(run_id: str) -> int | None:
    """The seed of a runner ``run_id`` ("...-s2" -> 2); None when it has no such suffix."""
    m = re.search(r"-s(\d+)$", str(run_id))
    return int(m.group(1)) if m else None


def short_setting(setting: str, dataset: str) -> str:
    """ "imagenette-224 pretrained sub-head, fresh init" -> "pretrained sub-head, fresh init"."""
    return setting[len(dataset) + 1:] if setting.startswith(dataset + " ") else setting


def _ours(rows: pd.DataFrame) -> pd.DataFrame:
    """Our rows with ``seed`` (int, -1 when unknown) and the dataset-free ``setting``."""
    r = rows[rows["source"] != "paper"] if "source" in rows.columns else rows
    if r.empty:
        return r.assign(seed=pd.Series(dtype=int))
    return r.assign(seed=r["run_id"].map(lambda s: -1 if seed_of(s) is None else seed_of(s)),
                    setting=[short_setting(s, d) for s, d in zip(r["setting"], r["dataset"])])


def book_order(index: pd.MultiIndex | pd.Index) -> list:
    """The tuples of ``index`` (levels dataset, backbone, setting, method, ...) sorted with settings and methods in
    book order (:data:`SETTING_ORDER`, :data:`METHOD_ORDER`), other levels alphabetically."""
    def key(t):
        t = t if isinstance(t, tuple) else (t,)
        out = []
        for name, v in zip(index.names, t):
            if name == "setting":
                out.append((SETTING_ORDER.index(v) if v in SETTING_ORDER else len(SETTING_ORDER), v))
            elif name == "method":
                out.append((METHOD_ORDER.index(v) if v in METHOD_ORDER else len(METHOD_ORDER), v))
            else:
                out.append((0, str(v)))
        return out
    return sorted(index, key=key)


def _num_test(r: pd.DataFrame) -> pd.Series:
    first = r.drop_duplicates(KEYS).set_index(KEYS)["config"]
    return first.map(lambda c: json.loads(c).get("num_test", np.nan) if c else np.nan).astype(float)


def delta_table(rows: pd.DataFrame, metrics=("maxboxacc_v2", "gt_known_loc"), variant: str = "", seed: int = 0,
                paper: bool = True) -> pd.DataFrame:
    """Sigmoid against softmax, one row per (dataset, backbone, setting, method) that has rows for ``metrics``.

    Index: (dataset, backbone, setting, method), ``setting`` without the dataset prefix. Columns: a MultiIndex
    ``(metric, field)`` with fields ``softmax``, ``sigmoid`` (seed ``seed``'s values), ``delta`` (the runner's
    ``delta_<metric>``, else sigmoid - softmax), ``low`` / ``high`` (its bootstrap 95% interval, NaN if absent),
    ``seed_sd`` (the delta's sd over seeds, NaN if absent), ``verdict`` (:func:`verdict` with the metric), and with
    ``paper`` also ``paper`` (:attr:`PaperDelta.cell`) and ``paper_word``; plus ``("n_test", "")``, the number of
    test photos from the rows' config."""
    fields = FIELDS + (("paper", "paper_word") if paper else ())
    columns = pd.MultiIndex.from_tuples([("n_test", "")] + [(m, f) for m in metrics for f in fields])
    r = _ours(rows)
    r = r[(r["variant"] == variant) & (r["seed"] == seed)] if len(r) else r
    names = {}
    for m in metrics:
        names[(m, "softmax")] = (m, "softmax")
        names[(m, "sigmoid")] = (m, "sigmoid")
        for suffix, f in (("", "delta"), ("_low", "low"), ("_high", "high"), ("_seed_sd", "seed_sd")):
            names[(f"delta_{m}{suffix}", "sigmoid")] = (m, f)
    pick = [names.get((m, b)) for m, b in zip(r["metric"], r["branch"])] if len(r) else []
    r = r.assign(col=pick)
    r = r[r["col"].notna()]
    if r.empty:
        return pd.DataFrame(columns=columns, index=pd.MultiIndex.from_tuples([], names=KEYS))
    wide = r.pivot_table(index=KEYS, columns="col", values="value", aggfunc="first")
    wide.columns = pd.MultiIndex.from_tuples(wide.columns)
    out = pd.DataFrame(index=wide.index, columns=columns, dtype=object)
    out[("n_test", "")] = _num_test(r).reindex(wide.index)
    for m in metrics:
        get = lambda f: wide[(m, f)] if (m, f) in wide.columns else pd.Series(np.nan, index=wide.index)  # noqa: E731
        soft, sig, delta = get("softmax"), get("sigmoid"), get("delta")
        delta = delta.where(delta.notna(), sig - soft)
        low, high = get("low"), get("high")
        out[(m, "softmax")], out[(m, "sigmoid")], out[(m, "delta")] = soft, sig, delta
        out[(m, "low")], out[(m, "high")], out[(m, "seed_sd")] = low, high, get("seed_sd")
        out[(m, "verdict")] = [verdict(lo, hi, m) if not math.isnan(d) else NO_INTERVAL
                               for lo, hi, d in zip(low, high, delta)]
        if paper:
            ref = {meth: paper_delta(meth, m) for meth in out.index.get_level_values("method").unique()}
            out[(m, "paper")] = [ref[k[3]].cell for k in out.index]
            out[(m, "paper_word")] = [ref[k[3]].word for k in out.index]
    has_any = out[[(m, "delta") for m in metrics]].notna().any(axis=1)
    out = out[has_any]
    out = out.reindex(pd.MultiIndex.from_tuples(book_order(out.index), names=KEYS))
    for c in out.columns:
        if c[1] not in ("verdict", "paper", "paper_word"):
            out[c] = out[c].astype(float)
    return out


def verdict_counts(table: pd.DataFrame, metric: str = "maxboxacc_v2", by=("setting", "dataset")) -> pd.DataFrame:
    """How many (backbone, method) rows of a :func:`delta_table` got each verdict on ``metric``.

    Returns one row per group of ``by`` (index levels of the table; ``()`` for one overall row named "all"), columns
    "sigmoid better", "sigmoid worse", "not resolved" (always present), "no interval" (when any) and "total"."""
    words = [BETTER, WORSE, UNRESOLVED]
    if table.empty:
        return pd.DataFrame(columns=words + ["total"], dtype=int)
    v = table[(metric, "verdict")]
    by = list(by)
    if by:
        counts = v.groupby(level=by, sort=False).value_counts().unstack(fill_value=0)
    else:
        counts = v.value_counts().to_frame("all").T
    if NO_INTERVAL in counts.columns:
        words.append(NO_INTERVAL)
    counts = counts.reindex(columns=words, fill_value=0).astype(int)
    counts.columns.name = None
    counts["total"] = counts.sum(axis=1)
    if by:
        counts = counts.reindex(book_order(counts.index))
    return counts


def identical_methods(table: pd.DataFrame, metrics=None) -> pd.Series:
    """Which rows of a :func:`delta_table` repeat another method's comparison exactly.

    For each row: the first method (book order) of the same (dataset, backbone, setting) whose softmax and sigmoid
    values agree with this row's on every metric of ``metrics`` (default: all of the table's) to 4 decimals, else "".
    On a GAP + linear head Grad-CAM and XGrad-CAM give the same map (the gradient is constant over positions), so
    their rows repeat each other: a count of verdicts should not count them twice."""
    metrics = list(metrics or dict.fromkeys(c[0] for c in table.columns if c[0] != "n_test"))
    cols = [(m, b) for m in metrics for b in ("softmax", "sigmoid")]
    out = pd.Series("", index=table.index, dtype=object)
    first: dict = {}
    for key, r in table.iterrows():
        values = tuple(f"{float(r[c]):.4f}" for c in cols)
        ref = first.setdefault((key[0], key[1], key[2], values), key[3])
        if ref != key[3]:
            out[key] = ref
    return out


def variant_table(rows: pd.DataFrame, variants, metrics=("maxboxacc_v2",), reference: str = "", seed: int = 0,
                  paper: bool = True) -> pd.DataFrame:
    """The sigmoid branch's ``variants`` beside the ``reference`` variant ("" = the default head), seed ``seed``.

    Index (dataset, backbone, setting, method), rows where any variant is present. Columns: a MultiIndex
    ``(metric, name)`` with names ``reference`` label ("default" for ""), each variant, ``"Δ <variant>"`` (variant
    minus reference) and with ``paper`` ``"paper Δ <variant>"`` (:func:`paper_variant_delta`'s cell)."""
    ref_name = reference or "default"
    r = _ours(rows)
    if len(r):
        r = r[(r["branch"] == "sigmoid") & (r["seed"] == seed) & r["metric"].isin(metrics)
              & r["variant"].isin((reference,) + tuple(variants))]
    cols = [(m, n) for m in metrics for n in [ref_name, *variants, *[f"Δ {v}" for v in variants],
                                               *([f"paper Δ {v}" for v in variants] if paper else [])]]
    if r.empty or not r["variant"].isin(variants).any():
        return pd.DataFrame(columns=pd.MultiIndex.from_tuples(cols), index=pd.MultiIndex.from_tuples([], names=KEYS))
    wide = r.pivot_table(index=KEYS, columns=["metric", "variant"], values="value", aggfunc="first")
    keep = [k for k in wide.index if any((m, v) in wide.columns and not pd.isna(wide.loc[k, (m, v)])
                                         for m in metrics for v in variants)]
    wide = wide.loc[keep]
    out = pd.DataFrame(index=pd.MultiIndex.from_tuples(book_order(wide.index), names=KEYS),
                       columns=pd.MultiIndex.from_tuples(cols), dtype=object)
    wide = wide.reindex(out.index)
    nan = pd.Series(np.nan, index=out.index)
    for m in metrics:
        ref = wide[(m, reference)] if (m, reference) in wide.columns else nan
        out[(m, ref_name)] = ref.astype(float)
        for v in variants:
            val = wide[(m, v)] if (m, v) in wide.columns else nan
            out[(m, v)] = val.astype(float)
            out[(m, f"Δ {v}")] = (val - ref).astype(float)
            if paper:
                out[(m, f"paper Δ {v}")] = [paper_variant_delta(k[3], v, m).cell for k in out.index]
    return out


CONTROL_COLUMNS = ("softmax", "clamped softmax", "untrained sigmoid", "trained sigmoid", "Δ clamping",
                   "Δ training")


def controls_table(rows: pd.DataFrame, metric: str = "maxboxacc_v2", seed: int = 0) -> pd.DataFrame:
    """What clamping alone and what training add, per (dataset, backbone, setting, method), seed ``seed``.

    Columns (:data:`CONTROL_COLUMNS`): the softmax branch, the softmax branch with its negative weights clamped
    (variant "clamped"), the sigmoid branch as initialised and never trained (variant "untrained", clamped as the
    paper does), the trained sigmoid branch; ``Δ clamping`` = clamped softmax - softmax, ``Δ training`` = trained -
    untrained sigmoid. Rows only where both controls are present."""
    r = _ours(rows)
    empty = pd.DataFrame(columns=list(CONTROL_COLUMNS), index=pd.MultiIndex.from_tuples([], names=KEYS))
    if r.empty:
        return empty
    r = r[(r["seed"] == seed) & (r["metric"] == metric)]
    r = r[((r["branch"] == "softmax") & r["variant"].isin(["", "clamped"]))
          | ((r["branch"] == "sigmoid") & r["variant"].isin(["", "untrained"]))]
    if r.empty or not {"clamped", "untrained"} <= set(r["variant"]):
        return empty
    names = {("softmax", ""): "softmax", ("softmax", "clamped"): "clamped softmax",
             ("sigmoid", "untrained"): "untrained sigmoid", ("sigmoid", ""): "trained sigmoid"}
    r = r.assign(column=[names[(b, v)] for b, v in zip(r["branch"], r["variant"])])
    wide = r.pivot_table(index=KEYS, columns="column", values="value", aggfunc="first")
    wide = wide.dropna(subset=[c for c in ("clamped softmax", "untrained sigmoid") if c in wide.columns], how="all")
    wide = wide.reindex(columns=list(CONTROL_COLUMNS[:4]))
    wide["Δ clamping"] = wide["clamped softmax"] - wide["softmax"]
    wide["Δ training"] = wide["trained sigmoid"] - wide["untrained sigmoid"]
    return wide.loc[book_order(wide.index)]


def choices_table(rows: pd.DataFrame) -> pd.DataFrame:
    """What each run chose on val, from the rows' config ``choices``.

    Index (dataset, backbone, setting, family), family "cam" / "gradcam" (sigmoid heads) or "softmax head" (the
    fine-tuned settings' cross-entropy head). Columns: lr, epochs, val MaxBoxAccV2 (sigmoid heads), val top-1 (softmax
    head), grid edge ("lr min", "epochs max", ... when the choice sits on the smallest / largest value searched: the
    grid may not reach the best value)."""
    r = _ours(rows)
    out = []
    if len(r):
        for key, cfg in r.drop_duplicates(["dataset", "backbone", "setting"]).set_index(
                ["dataset", "backbone", "setting"])["config"].items():
            cfg = json.loads(cfg) if cfg else {}
            for family, ch in cfg.get("choices", {}).items():
                grid = ch.get("grid", [])
                edge = []
                for name in ("lr", "epochs"):
                    searched = sorted({g[name] for g in grid})
                    if len(searched) > 1 and ch.get(name) in (searched[0], searched[-1]):
                        edge.append(f"{name} {'min' if ch.get(name) == searched[0] else 'max'}")
                out.append({"dataset": key[0], "backbone": key[1], "setting": key[2],
                            "family": "softmax head" if family == "softmax_head" else family,
                            "lr": ch.get("lr"), "epochs": ch.get("epochs"),
                            "val MaxBoxAccV2": ch.get("val_maxboxacc_v2", np.nan),
                            "val top-1": ch.get("val_top1", np.nan), "grid edge": ", ".join(edge)})
    index = ["dataset", "backbone", "setting", "family"]
    if not out:
        return pd.DataFrame(columns=["lr", "epochs", "val MaxBoxAccV2", "val top-1", "grid edge"],
                            index=pd.MultiIndex.from_tuples([], names=index))
    df = pd.DataFrame(out).set_index(index)
    fam_order = {"softmax head": 0, "cam": 1, "gradcam": 2}
    keys = sorted(df.index, key=lambda k: (k[0], k[1], SETTING_ORDER.index(k[2]) if k[2] in SETTING_ORDER else 9,
                                           k[2], fam_order.get(k[3], 9)))
    return df.loc[keys]


def check_rows(rows: pd.DataFrame, seeds=(0, 1, 2), tol: float = 1e-3) -> pd.DataFrame:
    """Internal consistency of the runner's rows; an empty frame when everything holds.

    Checks, per (dataset, backbone, setting, method) of the default variant: ``delta_<metric>`` equals sigmoid minus
    softmax of the first seed (within ``tol``, the CSV keeps 6 significant digits); the delta lies inside its
    interval; accuracies and fidelity values lie in [0, 100] (Increase in Confidence too; Average Drop may not
    exceed 100); every seed of ``seeds`` is present. Columns: dataset, backbone, setting, method, metric, problem."""
    r = _ours(rows)
    problems = []
    if r.empty:
        return pd.DataFrame(columns=KEYS + ["metric", "problem"])
    main = r[r["variant"] == ""]
    for key, g in main.groupby(KEYS, sort=False):
        s0 = g[g["seed"] == min(seeds)]
        plain = s0[~s0["metric"].str.startswith("delta_")].pivot_table(index="metric", columns="branch",
                                                                        values="value", aggfunc="first")
        d = s0[s0["metric"].str.startswith("delta_")].set_index("metric")["value"]
        for name in d.index:
            m = re.fullmatch(r"delta_(.+?)(_low|_high|_seed_mean|_seed_sd)?", name)
            if m.group(2):
                continue
            metric = m.group(1)
            if metric in plain.index and {"softmax", "sigmoid"} <= set(plain.columns):
                expect = plain.loc[metric, "sigmoid"] - plain.loc[metric, "softmax"]
                if abs(expect - d[name]) > tol:
                    problems.append((*key, metric, f"delta {d[name]:.3f} but sigmoid - softmax = {expect:.3f}"))
            lo, hi = d.get(f"{name}_low"), d.get(f"{name}_high")
            if lo is not None and hi is not None and not (lo - tol <= d[name] <= hi + tol):
                problems.append((*key, metric, f"delta {d[name]:.3f} outside its interval [{lo:.3f}, {hi:.3f}]"))
        plain_rows = g[~g["metric"].str.startswith("delta_")]
        bad = plain_rows[(plain_rows["value"] < 0) & (plain_rows["metric"] != "inc_conf") |
                         (plain_rows["value"] > 100)]
        for _, b in bad.iterrows():
            problems.append((*key, b["metric"], f"{b['branch']} value {b['value']:.2f} outside [0, 100]"))
        missing = sorted(set(seeds) - set(g["seed"]))
        if missing:
            problems.append((*key, "", f"seeds {missing} missing"))
    return pd.DataFrame(problems, columns=KEYS + ["metric", "problem"])


# ------------------------------------------------------------------------------------------------------ display
def _fmt(v, signed: bool = False) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "—"
    return f"{v:+.1f}" if signed else f"{v:.1f}"


def delta_text(delta: float, low: float = float("nan"), high: float = float("nan")) -> str:
    """ "+1.2 [-0.4, +2.9]" (no interval part when a bound is missing); 2 decimals when every number is below 0.1
    in size, so a resolved interval never reads "[+0.0, +0.0]"."""
    finite = [abs(v) for v in (delta, low, high) if not pd.isna(v)]
    if not finite:
        return "—"
    p = 2 if max(finite) < 0.1 else 1
    out = f"{delta:+.{p}f}"
    return out if pd.isna(low) or pd.isna(high) else f"{out} [{low:+.{p}f}, {high:+.{p}f}]"


def _nice_index(index: pd.MultiIndex) -> pd.MultiIndex:
    names = {"dataset": DATASET_NAMES, "backbone": BACKBONE_NAMES, "method": METHOD_NAMES}
    tuples = [tuple(names.get(n, {}).get(v, v) for n, v in zip(index.names, t)) for t in index]
    return pd.MultiIndex.from_tuples(tuples, names=[{"dataset": "set"}.get(n, n) for n in index.names])


def _drop_constant(frame: pd.DataFrame, levels) -> pd.DataFrame:
    """Drop the index ``levels`` that hold one value (the caption names it); levels that vary stay."""
    drop = [lvl for lvl in levels if lvl in frame.index.names and frame.index.get_level_values(lvl).nunique() <= 1]
    drop = drop[:frame.index.nlevels - 1]
    return frame.droplevel(drop) if drop else frame


def _deterministic(styler, frame: pd.DataFrame, caption: str | None):
    """Stable HTML: a uuid from the content (so stored outputs compare equal) and compact, non-wrapping cells."""
    uuid = hashlib.sha1((frame.to_csv() + str(caption)).encode()).hexdigest()[:8]
    styler = styler.set_uuid(uuid).set_table_styles([
        {"selector": "th, td", "props": "padding: 2px 8px; white-space: nowrap; font-size: 0.85em;"},
        {"selector": "td", "props": "text-align: right;"},
        {"selector": "caption", "props": "caption-side: top; text-align: left; font-weight: bold;"}])
    return styler.set_caption(caption) if caption else styler


def styled(table: pd.DataFrame, metrics=None, caption: str | None = None, hide_levels=("setting",),
           same_as: pd.Series | None = None):
    """A :func:`delta_table` as a pandas Styler for the book.

    One block of columns per metric: softmax, sigmoid (1 decimal), "Δ [95% CI]" ("+1.2 [-0.4, +2.9]"), seed sd (when
    any row has it), verdict (coloured mildly) and the paper's delta (when the table has it). Index levels in
    ``hide_levels`` that hold a single value are dropped (name it in the caption), names are spelled out. Renders with
    ``.to_html()``; the HTML is the same for the same table. ``same_as`` (:func:`identical_methods`) adds a last
    column "same numbers as" when any row repeats another."""
    metrics = list(metrics or dict.fromkeys(c[0] for c in table.columns if c[0] != "n_test"))
    blocks = {}
    for m in metrics:
        name = METRIC_NAMES.get(m, m)
        blocks[(name, "softmax")] = [_fmt(v) for v in table[(m, "softmax")]]
        blocks[(name, "sigmoid")] = [_fmt(v) for v in table[(m, "sigmoid")]]
        bounds = zip(table[(m, "delta")], table[(m, "low")], table[(m, "high")])
        blocks[(name, "Δ [95% CI]")] = [delta_text(d, lo, hi) for d, lo, hi in bounds]
        if table[(m, "seed_sd")].notna().any():
            blocks[(name, "seed sd")] = [_fmt(v) for v in table[(m, "seed_sd")]]
        blocks[(name, "verdict")] = list(table[(m, "verdict")])
        if (m, "paper") in table.columns:
            blocks[(name, "paper Δ")] = list(table[(m, "paper")])
    if same_as is not None and (same_as.reindex(table.index).fillna("") != "").any():
        blocks[("", "same numbers as")] = [METHOD_NAMES.get(v, v) for v in same_as.reindex(table.index).fillna("")]
    frame = pd.DataFrame(blocks, index=table.index)
    frame.columns = pd.MultiIndex.from_tuples(frame.columns)
    frame = _drop_constant(frame, hide_levels)
    frame.index = _nice_index(frame.index) if isinstance(frame.index, pd.MultiIndex) else frame.index

    def colour(v):
        if v in VERDICT_COLOURS:
            return f"background-color: {VERDICT_COLOURS[v]}"
        for word, w in (("gain", BETTER), ("loss", WORSE), ("disagree", UNRESOLVED)):
            if isinstance(v, str) and v.endswith(word):
                return f"background-color: {VERDICT_COLOURS[w]}"
        return ""

    styler = frame.style.map(colour, subset=[c for c in frame.columns if c[1] in ("verdict", "paper Δ")])
    return _deterministic(styler, frame, caption)


def styled_frame(frame: pd.DataFrame, caption: str | None = None, signed=(), formats: dict | None = None,
                 hide_levels=()):
    """Any numeric table as a Styler: floats with 1 decimal ("+" sign for the columns in ``signed`` or whose last
    level starts with "Δ"), integers as integers, NaN as "—", ``formats`` {column: format string or callable}
    overriding; index values, metric keys and variant tags in column labels spelled out. Deterministic HTML, like
    :func:`styled`."""
    frame = _drop_constant(frame.copy(), hide_levels)
    if isinstance(frame.index, pd.MultiIndex):
        frame.index = _nice_index(frame.index)
    fmt = {}
    for c in frame.columns:
        last = c[-1] if isinstance(c, tuple) else c
        if formats and c in formats:
            fmt[c] = formats[c]
        elif pd.api.types.is_integer_dtype(frame[c]):
            fmt[c] = "{:d}"
        elif pd.api.types.is_float_dtype(frame[c]) or frame[c].map(lambda v: isinstance(v, float)).all():
            sign = c in signed or str(last).startswith("Δ")
            fmt[c] = (lambda v, s=sign: _fmt(v, s))
    styler = frame.style.format(fmt, na_rep="—").format_index(_label, axis=1)
    return _deterministic(styler, frame, caption)


def _label(value) -> str:
    """A column label for the reader: metric keys and variant tags spelled out ("Δ no_clamp" -> "Δ no clamp")."""
    text = METRIC_NAMES.get(value, str(value))
    for tag, name in VARIANT_NAMES.items():
        text = re.sub(rf"(?<![\w:]){re.escape(tag)}(?![\w:])", name, text)
    return text
