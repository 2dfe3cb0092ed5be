"""One experiment runner: a :class:`RunConfig` in, tidy result rows out.

The paper's recipe on a dataset with train / val / test splits (Imagenette and Imagewoof here; any wsolevaluation
set with a train split), with the protocol of "Evaluating WSOL Right" (Choe et al. 2020): every choice is made on
``val``, every reported number comes from ``test``, and every sigmoid-minus-softmax delta carries a paired bootstrap
95% interval over the test photos.

Settings (``RunConfig.setting``):

- ``subhead``: the paper's ImageNet setting. The softmax branch is the pretrained ImageNet head restricted to the
  set's classes (``imagenet_index``), untouched.
- ``finetuned_linear`` / ``finetuned_mlp``: the paper's CUB / Cars setting. A softmax head (one Linear layer, or a
  2-layer MLP, the VGG-16-like case) is first trained with cross-entropy on the frozen features; its learning rate
  and epochs are chosen by val top-1 accuracy.

Then, per CAM family (CAM; the Grad-CAM family), a sigmoid head of the softmax head's architecture (``head_init``
fresh or copy) is trained with class-balanced BCE on cached frozen features (the fast path); its learning rate and
number of epochs are chosen by the val MaxBoxAccV2 of its own maps. The chosen recipe is retrained for every seed
in ``seeds`` and scored on test: WSOL metrics for the ground-truth class, fidelity for the predicted class.

Rows: one per (method, branch, metric) for each seed (``run_id`` ends in ``-s<seed>``); for the sigmoid branch also
``delta_<metric>`` (sigmoid minus softmax, seed ``seeds[0]``) with ``delta_<metric>_low`` / ``_high`` (the paired
bootstrap interval) and ``delta_<metric>_seed_mean`` / ``_seed_sd`` (over the seeds). Controls (``controls``): ``variant`` "untrained" (the
sigmoid branch as initialised, never trained) and "clamped" (the softmax branch with its negative weights clamped).
Every row's config records the searched grids, the choices and the code version.
"""
from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from .experiments import evaluate_cams
from .feature_reuse import MemoizedBackbone
from .heads import DualBranchModel, restrict_classes
from .metrics.bootstrap import paired_bootstrap, statistic
from .models import GapLinearHead, PoolMLPHead, SplitClassifier
from .results import make_row
from .train import (FeatureCache, HeadOnReduced, ablation_pos_weights, data_fingerprint, extract_features,
                    fit_sigmoid_head, fit_sigmoid_head_fast)

SETTINGS = ("subhead", "finetuned_linear", "finetuned_mlp")
SETTING_LABELS = {"subhead": "pretrained sub-head", "finetuned_linear": "fine-tuned linear head",
                  "finetuned_mlp": "fine-tuned MLP head"}
ALL_METHODS = ("cam", "gradcam", "gradcampp", "xgradcam", "layercam")
DELTA_METRICS = ("maxboxacc_v2", "maxboxacc_30", "maxboxacc_50", "maxboxacc_70", "gt_known_loc", "top1_loc",
                 "avg_drop", "inc_conf")
# Table 4 / 5 ablations, with the variant names chapter 8 uses
POS_WEIGHT_VARIANTS = {"1:1": "pos_1:1", "(C-1)/2:1": "pos_half"}


def family_of(method: str) -> str:
    """The paper tunes one learning rate per CAM family: ``"cam"`` for CAM, ``"gradcam"`` for the gradient ones."""
    return "cam" if method == "cam" else "gradcam"


def code_version() -> str:
    """The git commit of this checkout (``+dirty`` when it has uncommitted changes), else the package version."""
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=root, capture_output=True, text=True,
                                timeout=10)
        if commit.returncode == 0:
            dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                                   capture_output=True, text=True, timeout=10).stdout.strip()
            return commit.stdout.strip() + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        pass
    from importlib.metadata import PackageNotFoundError, version

    try:
        return "dualcam-lib " + version("dualcam-lib")
    except PackageNotFoundError:
        return "unknown"


@dataclass(frozen=True)
class RunConfig:
    """Everything one run depends on. ``lr_grid`` x ``epoch_grid``: the sigmoid-head search (per CAM family, on val);
    ``ce_lr_grid`` x ``ce_epoch_grid``: the fine-tuned softmax head's search (val top-1). ``ablations``: with the
    first seed, also score the Table 4 (no clamping) and Table 5 (positive-weight ratios) variants.
    ``faithful_train``: when > 0, also train the last CAM family's head on that many train photos twice, on cached
    features (fast) and end to end with the paper's augmentation at every step (faithful), same lr and at most
    ``faithful_epochs`` epochs, to check that the fast path stands for the paper's recipe on real photos.
    ``controls``: also score the untrained sigmoid branch and the clamped softmax branch (first seed). ``max_train`` / ``max_eval`` cap the
    splits (seeded subsets; for tests)."""

    dataset: str = "imagenette-224"
    backbone: str = "efficientnet_lite0"
    weights: str = "default"
    setting: str = "subhead"
    head_init: str = "fresh"
    methods: tuple = ALL_METHODS
    lr_grid: tuple = (1e-4, 1e-3, 1e-2)
    epoch_grid: tuple = (2, 5, 10)
    ce_lr_grid: tuple = (1e-3, 1e-2)
    ce_epoch_grid: tuple = (5, 10, 20)
    mlp_hidden: int = 512
    seeds: tuple = (0, 1, 2)
    fidelity: bool = True
    ablations: bool = False
    faithful_train: int = 0
    faithful_epochs: int = 2
    controls: bool = True
    bootstrap_resamples: int = 1000
    image_size: int = 224
    batch_size: int = 32
    eval_batch_size: int = 50
    max_train: int | None = None
    max_eval: int | None = None
    data_root: str | None = None
    device: str = "cpu"
    progress: bool = False

    def __post_init__(self):
        if self.setting not in SETTINGS:
            raise ValueError(f"RunConfig.setting must be one of {SETTINGS}, got {self.setting!r}")
        if self.head_init not in ("fresh", "copy", "default"):
            raise ValueError(f"RunConfig.head_init must be 'fresh', 'copy' or 'default', got {self.head_init!r}")
        unknown = [m for m in self.methods if m not in ALL_METHODS + ("scorecam",)]
        if unknown or not self.methods:
            raise ValueError(f"RunConfig.methods must be a non-empty subset of {ALL_METHODS}, got {self.methods}")
        if self.setting == "finetuned_mlp" and "cam" in self.methods:
            raise ValueError("RunConfig: CAM needs a linear head (its weight row); drop 'cam' from methods for "
                             "setting='finetuned_mlp' (the paper uses Grad-CAM for VGG-16's MLP head)")
        for name in ("lr_grid", "epoch_grid", "seeds", "ce_lr_grid", "ce_epoch_grid"):
            if not getattr(self, name):
                raise ValueError(f"RunConfig.{name} must not be empty")
        if min(self.epoch_grid) < 1 or min(self.ce_epoch_grid) < 1:
            raise ValueError("RunConfig epoch grids must hold positive numbers of epochs")

    @property
    def tag(self) -> str:
        """A file-name-safe name of this run."""
        return f"{self.dataset}-{self.backbone}-{self.setting}-{self.head_init}"

    @property
    def setting_label(self) -> str:
        return f"{self.dataset} {SETTING_LABELS[self.setting]}, {self.head_init} init"

    def as_dict(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(self).items()}


@dataclass
class RunResult:
    """What :func:`run_experiment` returns: ``rows`` (tidy), the val ``choices``, and timings in seconds."""

    rows: pd.DataFrame
    choices: dict
    seconds: dict = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------------------- pieces
def build_softmax_classifier(config: RunConfig, imagenet_index, num_classes: int) -> SplitClassifier:
    """The pretrained classifier (``config.backbone``, ``config.weights``), restricted to the set's ImageNet rows
    for the sub-head setting; for the fine-tuned settings its head is replaced by an untrained linear / MLP head of
    ``num_classes`` (trained by :func:`fit_softmax_head`)."""
    from .models import build_classifier
    from .paths import weights_root

    weights = config.weights
    if weights not in (None, "default") and not Path(weights).exists() and (weights_root() / weights).exists():
        weights = str(weights_root() / weights)
    split = build_classifier(config.backbone, weights=weights)
    split.head.eval()
    if not isinstance(split.head, GapLinearHead):
        raise ValueError(f"backbone {config.backbone!r} has a {type(split.head).__name__} head; the runner needs a "
                         "GAP + linear head (efficientnet_lite0, mobilenet_v2, resnet50, ...)")
    if config.setting == "subhead":
        if imagenet_index is None:
            raise ValueError(f"dataset {config.dataset!r} has no ImageNet class map (imagenet_index): the sub-head "
                             "setting needs one; use a fine-tuned setting")
        return restrict_classes(split, imagenet_index)
    width = split.head.fc.in_features
    if config.setting == "finetuned_linear":
        head = GapLinearHead(width, num_classes)
    else:
        head = PoolMLPHead(nn.AdaptiveAvgPool2d(1), nn.Sequential(nn.Linear(width, config.mlp_hidden), nn.ReLU(),
                                                                  nn.Linear(config.mlp_hidden, num_classes)))
    return dataclasses.replace(split, head=head.eval(), num_classes=num_classes,
                               meta={**split.meta, "head_trained": False, "head": config.setting})


def pooled_features(split: SplitClassifier, data, cache_path: Path | None, config: RunConfig) -> FeatureCache:
    """The frozen backbone's globally pooled features ``(N, width)`` of ``data``'s clean test-time views (cached).

    Both head kinds here start with a global average pool, so one cache serves the linear and the MLP heads."""
    probe = dataclasses.replace(split, head=GapLinearHead(_head_width(split), split.num_classes))
    return extract_features(DualBranchModel(probe), data, views=1, augment=False, seed=0, device=config.device,
                            progress=config.progress, cache_path=cache_path)


def _head_width(split: SplitClassifier) -> int:
    return [m for m in split.head.modules() if isinstance(m, nn.Linear)][0].in_features


def _as_cache_for(cache: FeatureCache, head: nn.Module) -> FeatureCache:
    # The pooled vector is the reduced input of both GapLinearHead ("gap") and PoolMLPHead with a global pool
    # ("pool_flatten"): the same numbers, so only the label of the reduction changes.
    kind = HeadOnReduced(head).kind
    return FeatureCache(cache.features, cache.labels, {**cache.meta, "reduction": kind})


def fit_softmax_head(head: nn.Module, train: FeatureCache, val: FeatureCache, lr_grid, epoch_grid, seed: int = 0,
                     batch_size: int = 32, weight_decay: float = 1e-4) -> tuple[nn.Module, dict]:
    """Train ``head`` with softmax cross-entropy on pooled features, choosing ``(lr, epochs)`` by val top-1.

    ``train`` / ``val``: :class:`FeatureCache` of ``(N, width)`` pooled features. Adam, batch ``batch_size``, shuffled by
    ``seed``; each lr runs to ``max(epoch_grid)`` epochs and is scored on val after each epoch in ``epoch_grid``.
    Returns the head holding the chosen weights (eval mode) and ``{"lr", "epochs", "val_top1", "grid"}``."""
    reduced_head = HeadOnReduced(head)
    best, grid = None, []
    for lr in lr_grid:
        gen = torch.Generator().manual_seed(seed)
        torch.manual_seed(seed)
        for m in head.modules():  # the same seeded initialisation for every lr
            if hasattr(m, "reset_parameters"):
                m.reset_parameters()
        opt = torch.optim.Adam(head.parameters(), lr=lr, weight_decay=weight_decay)
        for epoch in range(1, max(epoch_grid) + 1):
            head.train()
            for idx in torch.randperm(len(train.labels), generator=gen).split(batch_size):
                loss = F.cross_entropy(reduced_head(train.features[idx].float()), train.labels[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            if epoch in epoch_grid:
                head.eval()
                with torch.no_grad():
                    acc = float((reduced_head(val.features.float()).argmax(1) == val.labels).float().mean() * 100)
                grid.append({"lr": lr, "epochs": epoch, "val_top1": acc})
                if best is None or acc > best[0]:
                    best = (acc, lr, epoch, copy.deepcopy(head.state_dict()))
    head.load_state_dict(best[3])
    return head.eval(), {"lr": best[1], "epochs": best[2], "val_top1": best[0], "grid": grid}


class _Memo:
    """A backbone memo shared by every evaluation of one run: the val and test images go through the backbone once
    (:meth:`warm`); afterwards it stores nothing new, so the fidelity metric's masked images do not evict them."""

    def __init__(self, split: SplitClassifier, datasets, batch_size: int, device):
        from .experiments import batches_of

        self.backbone = MemoizedBackbone(split.backbone, sum(len(d) for d in datasets) + 8)
        self.split = dataclasses.replace(split, backbone=self.backbone)
        with torch.no_grad():
            for data in datasets:
                for batch in batches_of(data, batch_size):
                    self.backbone(split.normalize(batch.images.to(device)))
        self.backbone.accept_new = False

    def dual(self, sigmoid_head: nn.Module) -> DualBranchModel:
        return DualBranchModel(self.split, sigmoid_head=sigmoid_head).eval()


def _train_sigmoid(split, features: FeatureCache, *, init: str, lr: float, epochs: int, seed: int, pos_weight,
                   config: RunConfig, snapshot_epochs=()) -> tuple[nn.Module, dict]:
    torch.manual_seed(seed)  # the fresh initialisation draws from the global RNG
    dual = DualBranchModel(split, init=init)
    snapshots = {}

    def keep(epoch, row):
        if epoch in snapshot_epochs:
            snapshots[epoch] = copy.deepcopy(dual.sigmoid_head.state_dict())

    fit_sigmoid_head_fast(dual, _as_cache_for(features, dual.sigmoid_head), epochs=epochs, lr=lr, seed=seed,
                          batch_size=config.batch_size, pos_weight=pos_weight, device=config.device,
                          progress=config.progress, callback=keep)
    return dual.sigmoid_head.eval(), snapshots


def _load_head(template: nn.Module, state: dict) -> nn.Module:
    head = copy.deepcopy(template)
    head.load_state_dict(state)
    return head.eval()


# ---------------------------------------------------------------------------------------------------------- the run
@dataclass
class _Prepared:
    """What every part of a run shares: the splits, the softmax classifier, cached features, the backbone memo."""

    train: object
    val: object
    test: object
    split: SplitClassifier
    feats: dict
    memo: "_Memo"
    key: str
    cache_root: Path
    choices: dict
    seconds: dict


def _prepare(config: RunConfig, cache_dir, log) -> _Prepared:
    from .data import load_dataset
    from .paths import cache_dir as default_cache

    seconds = {}
    cache_root = Path(cache_dir) if cache_dir is not None else default_cache() / "runner"
    cache_root.mkdir(parents=True, exist_ok=True)
    load = dict(data_root=config.data_root, size=config.image_size, seed=0)
    train = load_dataset(config.dataset, "train", n=config.max_train, train=False, **load)
    val = load_dataset(config.dataset, "val", n=config.max_eval, **load)
    test = load_dataset(config.dataset, "test", n=config.max_eval, **load)
    for name, ds in (("train", train), ("val", val), ("test", test)):
        if len(ds) == 0:
            raise ValueError(f"dataset {config.dataset!r}: the {name} split is empty")
    num_classes = test.num_classes
    torch.manual_seed(config.seeds[0])  # any layer built without pretrained weights starts from a seeded draw
    split = build_softmax_classifier(config, getattr(test, "imagenet_index", None), num_classes)
    split.as_module().to(config.device).eval()

    # Frozen features once per (backbone, weights, data): the key names every input that changes them.
    key = hashlib.sha256(json.dumps([config.backbone, str(config.weights), config.image_size,
                                     data_fingerprint(train), data_fingerprint(val)]).encode()).hexdigest()[:12]
    t0 = time.perf_counter()
    feats = {name: pooled_features(split, ds, cache_root / f"{config.dataset}-{config.backbone}-{name}-{key}.pt",
                                   config) for name, ds in (("train", train), ("val", val))}
    seconds["features"] = time.perf_counter() - t0
    log(f"[{config.tag}] features: {seconds['features']:.0f} s")

    choices: dict = {}
    if config.setting != "subhead":
        t0 = time.perf_counter()
        head, choice = fit_softmax_head(split.head, feats["train"], feats["val"], config.ce_lr_grid,
                                        config.ce_epoch_grid, seed=config.seeds[0], batch_size=config.batch_size)
        split = dataclasses.replace(split, head=head, meta={**split.meta, "head_trained": True})
        choices["softmax_head"] = choice
        seconds["softmax_head"] = time.perf_counter() - t0
        log(f"[{config.tag}] softmax head: lr {choice['lr']}, {choice['epochs']} epochs, val top-1 "
            f"{choice['val_top1']:.1f}")

    t0 = time.perf_counter()
    memo = _Memo(split, (val, test), config.eval_batch_size, config.device)
    seconds["eval_features"] = time.perf_counter() - t0
    return _Prepared(train, val, test, split, feats, memo, key, cache_root, choices, seconds)


def _control_rows(config: RunConfig, prep: _Prepared, base_config: dict) -> list[dict]:
    """Two controls on test (first seed): ``untrained``, the sigmoid branch as initialised (``head_init``) and never
    trained, scored with the paper's clamping; ``clamped``, the softmax branch itself with its negative weights
    clamped. They separate what training the sigmoid branch adds from what clamping alone does."""
    seed = config.seeds[0]
    torch.manual_seed(seed)
    untrained = DualBranchModel(prep.split, init=config.head_init).sigmoid_head.eval()
    dual = prep.memo.dual(untrained)
    rows = []
    for variant, scores, clamp in (("untrained", ("sigmoid_logit",), None), ("clamped", ("softmax_logit",), True)):
        report = evaluate_cams(dual, prep.test, methods=list(config.methods), scores=scores, clamp=clamp,
                               batch_size=config.eval_batch_size, device=config.device)
        rows += report.rows(dataset=config.dataset, backbone=config.backbone, setting=config.setting_label,
                            run_id=f"{config.tag}-s{seed}", config={**base_config, "seed": seed, "control": variant},
                            variant=variant)
    return rows


def run_controls(config: RunConfig, cache_dir: str | Path | None = None, log: Callable[[str], None] = print
                 ) -> pd.DataFrame:
    """Only the control rows of ``config`` (see :func:`_control_rows`), for a run made before they existed: the
    same seeded classifier (a fine-tuned softmax head is retrained with the same seed and val search)."""
    prep = _prepare(config, cache_dir, log)
    base = {**config.as_dict(), "choices": prep.choices, "code_version": code_version(), "num_test": len(prep.test),
            "num_val": len(prep.val), "num_train": len(prep.train)}
    return pd.DataFrame(_control_rows(config, prep, base))


def run_experiment(config: RunConfig, cache_dir: str | Path | None = None, log: Callable[[str], None] = print
                   ) -> RunResult:
    """Run ``config`` end to end and return its rows (see the module docstring)."""
    t_start = time.perf_counter()
    prep = _prepare(config, cache_dir, log)
    train, val, test, split, feats, memo = prep.train, prep.val, prep.test, prep.split, prep.feats, prep.memo
    key, cache_root, choices, seconds = prep.key, prep.cache_root, prep.choices, prep.seconds
    num_classes = test.num_classes
    families = list(dict.fromkeys(family_of(m) for m in config.methods))
    methods_of = {f: [m for m in config.methods if family_of(m) == f] for f in families}

    # Val search per CAM family: train to max(epoch_grid) per lr, score the snapshots' maps on val.
    t0 = time.perf_counter()
    template = None
    for fam in families:
        grid = []
        for lr in config.lr_grid:
            head, snaps = _train_sigmoid(split, feats["train"], init=config.head_init, lr=lr,
                                         epochs=max(config.epoch_grid), seed=config.seeds[0], pos_weight=None,
                                         config=config, snapshot_epochs=set(config.epoch_grid))
            template = head
            for epochs, state in sorted(snaps.items()):
                report = evaluate_cams(memo.dual(_load_head(head, state)), val, methods=methods_of[fam],
                                       scores=("sigmoid_logit",), batch_size=config.eval_batch_size,
                                       device=config.device)
                score = sum(report.wsol[(m, "sigmoid_logit")]["maxboxacc_v2"] for m in methods_of[fam])
                grid.append({"lr": lr, "epochs": epochs, "val_maxboxacc_v2": score / len(methods_of[fam])})
        best = max(grid, key=lambda g: g["val_maxboxacc_v2"])  # the first of equals: the smaller lr / fewer epochs
        choices[fam] = {"lr": best["lr"], "epochs": best["epochs"], "val_maxboxacc_v2": best["val_maxboxacc_v2"],
                        "grid": grid}
        log(f"[{config.tag}] {fam}: lr {best['lr']}, {best['epochs']} epochs (val MaxBoxAccV2 "
            f"{best['val_maxboxacc_v2']:.1f})")
    seconds["val_search"] = time.perf_counter() - t0

    version = code_version()
    base_config = {**config.as_dict(), "choices": choices, "code_version": version, "num_test": len(test),
                   "num_val": len(val), "num_train": len(train)}
    rows: list[dict] = _control_rows(config, prep, base_config) if config.controls else []
    per_seed_deltas: dict = {}
    first_tables: dict = {}

    def emit(report, seed, variant="", branches=("softmax", "sigmoid"), extra=None):
        cfg = {**base_config, "seed": seed, **(extra or {})}
        for r in report.rows(dataset=config.dataset, backbone=config.backbone, setting=config.setting_label,
                             run_id=f"{config.tag}-s{seed}", config=cfg, variant=variant):
            if r["branch"] in branches:
                rows.append(r)

    t0 = time.perf_counter()
    for i, seed in enumerate(config.seeds):
        for fam in families:
            ch = choices[fam]
            head, _ = _train_sigmoid(split, feats["train"], init=config.head_init, lr=ch["lr"], epochs=ch["epochs"],
                                     seed=seed, pos_weight=None, config=config)
            dual = memo.dual(head)
            fidelity = config.fidelity and i == 0  # fidelity needs a backbone pass per masked image: first seed only
            report = evaluate_cams(dual, test, methods=methods_of[fam], batch_size=config.eval_batch_size,
                                   device=config.device, fidelity=fidelity, per_image=True)
            emit(report, seed)
            for m in methods_of[fam]:
                soft, sig = report.per_image[(m, "softmax_logit")], report.per_image[(m, "sigmoid_logit")]
                for metric in DELTA_METRICS:
                    if metric in ("avg_drop", "inc_conf") and not fidelity:
                        continue
                    if metric == "top1_loc" and sig.get("top1_loc") is None:
                        continue
                    if i == 0:
                        first_tables[(m, metric)] = paired_bootstrap(
                            soft, sig, metric, num_resamples=config.bootstrap_resamples, seed=seed)
                    else:
                        # the later seeds only need the point delta on the full test set, no resampling
                        per_seed_deltas.setdefault((m, metric), []).append(
                            statistic(sig, metric) - statistic(soft, metric))
            if i == 0 and config.ablations:
                ablation = evaluate_cams(dual, test, methods=methods_of[fam], scores=("sigmoid_logit",),
                                         clamp=False, batch_size=config.eval_batch_size, device=config.device)
                emit(ablation, seed, variant="no_clamp", branches=("sigmoid",))
                for ratio, variant in POS_WEIGHT_VARIANTS.items():
                    pw = ablation_pos_weights(num_classes)[ratio]
                    h, _ = _train_sigmoid(split, feats["train"], init=config.head_init, lr=ch["lr"],
                                          epochs=ch["epochs"], seed=seed, pos_weight=pw, config=config)
                    rep = evaluate_cams(memo.dual(h), test, methods=methods_of[fam], scores=("sigmoid_logit",),
                                        batch_size=config.eval_batch_size, device=config.device)
                    emit(rep, seed, variant=variant, branches=("sigmoid",), extra={"pos_weight": pw})
        log(f"[{config.tag}] seed {seed} scored ({time.perf_counter() - t0:.0f} s)")
    seconds["test"] = time.perf_counter() - t0
    if config.faithful_train:
        t0 = time.perf_counter()
        rows += _fast_against_faithful(config, split, memo, train, test, feats["train"], choices[families[-1]],
                                       methods_of[families[-1]], base_config, cache_root / f"faithful-{key}")
        seconds["faithful"] = time.perf_counter() - t0
        log(f"[{config.tag}] fast against faithful: {seconds['faithful']:.0f} s")

    cfg = {**base_config, "seed": config.seeds[0], "bootstrap": {"resamples": config.bootstrap_resamples,
                                                                  "level": 0.95, "seed": config.seeds[0]}}
    for (m, metric), b in first_tables.items():
        values = {f"delta_{metric}": b["delta"], f"delta_{metric}_low": b["low"], f"delta_{metric}_high": b["high"]}
        seeds = [b["delta"]] + per_seed_deltas.get((m, metric), [])
        if len(seeds) > 1:
            t = torch.tensor(seeds, dtype=torch.float64)
            values[f"delta_{metric}_seed_mean"] = float(t.mean())
            values[f"delta_{metric}_seed_sd"] = float(t.std())
        for name, value in values.items():
            rows.append(make_row(dataset=config.dataset, backbone=config.backbone, method=m, branch="sigmoid",
                                 metric=name, value=value, setting=config.setting_label,
                                 run_id=f"{config.tag}-s{config.seeds[0]}", config=cfg))
    seconds["total"] = time.perf_counter() - t_start
    log(f"[{config.tag}] done in {seconds['total']:.0f} s")
    return RunResult(pd.DataFrame(rows), choices, seconds)


def _fast_against_faithful(config: RunConfig, split, memo: _Memo, train, test, train_feats: FeatureCache, choice: dict,
                           methods, base_config: dict, checkpoint_stem: Path) -> list[dict]:
    """The same head trained twice on the same ``faithful_train`` photos, lr and epochs (capped at
    ``faithful_epochs``): on cached clean features (the fast path) and end to end with the paper's augmentation drawn
    at every step (faithful). Both are scored on test; rows ``variant`` "fast_subset" / "faithful_subset"."""
    seed = config.seeds[0]
    n = min(config.faithful_train, len(train))
    idx = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))[:n].sort().values
    sub_train = train.subset(idx)
    sub_feats = FeatureCache(train_feats.features[idx], train_feats.labels[idx],
                             {**train_feats.meta, "data": data_fingerprint(sub_train)})
    epochs = min(choice["epochs"], config.faithful_epochs)
    extra = {"faithful_train": n, "faithful_epochs": epochs, "lr": choice["lr"], "seed": seed}
    fast, _ = _train_sigmoid(split, sub_feats, init=config.head_init, lr=choice["lr"], epochs=epochs, seed=seed,
                             pos_weight=None, config=config)
    torch.manual_seed(seed)
    faithful = DualBranchModel(split, init=config.head_init)
    t0 = time.perf_counter()
    fit_sigmoid_head(faithful, sub_train, epochs=epochs, lr=choice["lr"], batch_size=config.batch_size, seed=seed,
                     device=config.device, progress=config.progress,
                     checkpoint_path=f"{checkpoint_stem}-{config.tag}-n{n}-e{epochs}-lr{choice['lr']}-s{seed}.pt")
    extra["faithful_seconds"] = round(time.perf_counter() - t0, 1)
    rows = []
    for variant, head in (("fast_subset", fast), ("faithful_subset", faithful.sigmoid_head.eval())):
        report = evaluate_cams(memo.dual(head), test, methods=methods, scores=("sigmoid_logit",),
                               batch_size=config.eval_batch_size, device=config.device)
        rows += report.rows(dataset=config.dataset, backbone=config.backbone, setting=config.setting_label,
                            run_id=f"{config.tag}-s{seed}", config={**base_config, **extra}, variant=variant)
    return rows
