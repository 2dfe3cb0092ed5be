"""Multi-process (DistributedDataParallel) feature extraction and sigmoid-head training, for ImageNet scale.

Run one process per GPU with ``torchrun``::

    torchrun --nproc_per_node=8 -m dualcam_lib.distributed \\
        --arch resnet50 --weights default --dataset imagenet --split train --data-root /data \\
        --views 2 --epochs 30 --lr 5e-3 --cache /scratch/r50_feats.pt --checkpoint /scratch/r50_head.pt \\
        --out r50_sigmoid_head.pt

(``python -m dualcam_lib.distributed --help`` lists every option; the same code runs on CPUs with ``--backend gloo``.)

How the work is split, and why the result equals a single process:

- **Extraction** (:func:`extract_features_distributed`): rank ``r`` runs the frozen backbone on images
  ``r, r + W, r + 2W, ...`` (``DistributedSampler(shuffle=False)`` order) and the shards are gathered (in row chunks,
  so the collective never needs the whole cache at once) and interleaved back into dataset order. Augmented views
  draw their random parameters for the whole dataset from ``(seed, view)``, so every image gets the same view as
  in a single process.
- **Head training** (:func:`fit_distributed`): every rank draws the same global permutation from ``(seed, epoch)``
  and takes its contiguous slice of each global batch (``batch_size`` is the *global* batch). Each rank's loss is
  the sum over its images divided by the global batch size, times ``W``; DDP averages gradients over the ``W``
  ranks, so every optimiser step sees the gradient of the mean loss over the global batch, as one process does.
  Results match a single process up to float summation order.
- Rank 0 alone writes checkpoints (atomically) and the feature cache; every rank resumes from them.
"""
from __future__ import annotations

import argparse
import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from .heads import DualBranchModel
from .train import (PAPER_BATCH_SIZE, PAPER_WEIGHT_DECAY, FeatureCache, FitResult, _is_indexable, _is_map_dataset,
                    data_fingerprint, extract_features, fit_sigmoid_head, fit_sigmoid_head_fast)


@dataclass
class DistContext:
    """Where this process sits: ``rank``, ``world_size``, ``local_rank``, its ``device`` and the ``backend``."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    backend: str | None = None

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(backend: str | None = None, device: str | None = None) -> DistContext:
    """Join the process group that ``torchrun`` (or :func:`spawn`) describes in ``RANK``/``WORLD_SIZE``/
    ``LOCAL_RANK``/``MASTER_ADDR``/``MASTER_PORT``; without them, a single-process context.

    ``backend``: default ``"nccl"`` with CUDA, else ``"gloo"``. ``device``: default ``cuda:LOCAL_RANK`` with CUDA,
    else ``cpu``.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", str(rank)))
    cuda = torch.cuda.is_available() and device != "cpu"
    dev = torch.device(device) if device else torch.device(f"cuda:{local_rank}" if cuda else "cpu")
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if world == 1:
        return DistContext(0, 1, 0, dev, None)
    backend = backend or ("nccl" if dev.type == "cuda" else "gloo")
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, rank=rank, world_size=world)
    return DistContext(rank, world, local_rank, dev, backend)


def _collective_device(ctx: DistContext) -> torch.device:
    return ctx.device if ctx.backend == "nccl" else torch.device("cpu")


def _all_gather_rows(local: torch.Tensor, ctx: DistContext, chunk_rows: int = 8192) -> list[torch.Tensor]:
    """All-gather equally shaped ``(L, ...)`` CPU tensors from every rank, ``chunk_rows`` rows at a time -> W tensors."""
    dev = _collective_device(ctx)
    out = [torch.empty_like(local) for _ in range(ctx.world_size)]
    for start in range(0, max(1, local.shape[0]), chunk_rows):
        piece = local[start:start + chunk_rows].to(dev).contiguous()
        bufs = [torch.empty_like(piece) for _ in range(ctx.world_size)]
        dist.all_gather(bufs, piece)
        for o, b in zip(out, bufs):
            o[start:start + chunk_rows] = b.cpu()
    return out


def extract_features_distributed(dual: DualBranchModel, data, ctx: DistContext, views: int = 1,
                                 augment=True, include_clean: bool = True, batch_size: int | None = None,
                                 seed: int = 0, feature_dtype: torch.dtype | None = None,
                                 cache_path: str | Path | None = None, num_workers: int = 0,
                                 progress: bool = True) -> FeatureCache:
    """:func:`~dualcam_lib.train.extract_features` with the images sharded over ranks; every rank gets the whole
    :class:`~dualcam_lib.train.FeatureCache` (``(views * N, ...)`` rows in dataset order). ``data``: SyntheticSet-like
    or a map-style dataset (e.g. ``WSOLImageDataset``; sharded ``rank::W`` with its ``subset`` or ``Subset``).
    ``cache_path``: rank 0 saves the gathered cache; if it exists, every rank loads it instead."""
    kw = dict(views=views, augment=augment, include_clean=include_clean, batch_size=batch_size, seed=seed,
              device=ctx.device, feature_dtype=feature_dtype, num_workers=num_workers)
    if not ctx.distributed:
        return extract_features(dual, data, cache_path=cache_path, progress=progress, **kw)
    if cache_path is not None and Path(cache_path).exists():
        return extract_features(dual, data, cache_path=cache_path, progress=False, **kw)  # loads and checks it
    w, r = ctx.world_size, ctx.rank
    if _is_indexable(data):
        n = len(data.labels)
        part = extract_features(dual, data, rank=r, world_size=w, progress=progress and ctx.is_main, **kw)
        meta = dict(part.meta)
    elif _is_map_dataset(data):
        n = len(data)
        idx = torch.arange(r, n, w)
        shard = data.subset(idx) if hasattr(data, "subset") else torch.utils.data.Subset(data, idx.tolist())
        part = extract_features(dual, shard, progress=progress and ctx.is_main, **kw)
        # Metadata as a single process over the whole dataset would record it.
        meta = dict(part.meta, data=data_fingerprint(data))
    else:
        raise TypeError("extract_features_distributed: data must be SyntheticSet-like or a map-style dataset "
                        f"(len + getitem), got {type(data).__name__}")
    per_rank = math.ceil(n / w)
    local_rows = part.labels.shape[0] // views
    feats = part.features.view(views, local_rows, *part.features.shape[1:])
    labels = part.labels.view(views, local_rows)
    if local_rows < per_rank:  # pad this shard to the common length (the padding is dropped after gathering)
        pad = per_rank - local_rows
        feats = torch.cat([feats, feats[:, :1].expand(views, pad, *feats.shape[2:])], dim=1)
        labels = torch.cat([labels, labels[:, :1].expand(views, pad)], dim=1)
    gathered_f = _all_gather_rows(feats.transpose(0, 1).contiguous(), ctx)  # W x (L, V, ...)
    gathered_l = _all_gather_rows(labels.transpose(0, 1).contiguous(), ctx)
    # rank r row j is image r + W*j: stack as (L, W, V, ...) and flatten (L, W) -> dataset order.
    f = torch.stack(gathered_f, dim=1).flatten(0, 1)[:n].transpose(0, 1)  # (V, N, ...)
    lb = torch.stack(gathered_l, dim=1).flatten(0, 1)[:n].transpose(0, 1)
    cache = FeatureCache(f.reshape(views * n, *f.shape[2:]).contiguous(), lb.reshape(-1).contiguous(), meta)
    if cache_path is not None and ctx.is_main:
        cache.save(cache_path)
    dist.barrier()
    return cache


def ddp_wrapper(ctx: DistContext):
    """``module -> DistributedDataParallel(module)`` on this rank's device (identity when not distributed)."""
    if not ctx.distributed:
        return None

    def wrap(module: nn.Module) -> nn.Module:
        from torch.nn.parallel import DistributedDataParallel as DDP

        module.to(ctx.device)
        ids = [ctx.device.index] if ctx.device.type == "cuda" else None
        return DDP(module, device_ids=ids)

    return wrap


def fit_distributed(dual: DualBranchModel, data, ctx: DistContext, epochs: int, lr: float, mode: str = "fast",
                    **kwargs) -> FitResult:
    """Train ``dual.sigmoid_head`` with DDP across the ranks of ``ctx``, in place on every rank.

    ``mode="fast"``: ``data`` is a :class:`~dualcam_lib.train.FeatureCache` (e.g. from
    :func:`extract_features_distributed`) or data to extract one from (sharded here); then
    :func:`~dualcam_lib.train.fit_sigmoid_head_fast`. ``mode="faithful"``: end to end through the frozen backbone,
    :func:`~dualcam_lib.train.fit_sigmoid_head` (SyntheticSet-like data is split by global batches; a DataLoader must
    be sharded by the caller with a ``DistributedSampler``). ``batch_size`` is the global batch. Other keyword
    arguments go to the fit function (``checkpoint_path`` is written by rank 0 only).
    """
    kwargs.setdefault("progress", ctx.is_main)
    dual = dual.to(ctx.device)
    if mode == "fast":
        if not isinstance(data, FeatureCache):
            ex = {k: kwargs.pop(k) for k in ("views", "augment", "include_clean", "cache_path", "num_workers")
                  if k in kwargs}
            data = extract_features_distributed(dual, data, ctx, seed=kwargs.get("seed", 0),
                                                batch_size=kwargs.pop("extract_batch_size", None),
                                                progress=kwargs["progress"], **ex)
        return fit_sigmoid_head_fast(dual, data, epochs, lr, device=ctx.device, rank=ctx.rank,
                                     world_size=ctx.world_size, wrap=ddp_wrapper(ctx), **kwargs)
    if mode == "faithful":
        return fit_sigmoid_head(dual, data, epochs, lr, device=ctx.device, rank=ctx.rank, world_size=ctx.world_size,
                                wrap=ddp_wrapper(ctx), **kwargs)
    raise ValueError(f"mode must be 'fast' or 'faithful', got {mode!r}")


def spawn(fn, world_size: int, *args, backend: str = "gloo", port: int | None = None) -> None:
    """Run ``fn(rank, world_size, *args)`` in ``world_size`` local processes with the env ``torchrun`` would set
    (for tests and CPU experiments; ``fn`` must be importable, i.e. a module-level function)."""
    import socket

    import torch.multiprocessing as mp

    if port is None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
    mp.spawn(_spawned, args=(world_size, port, backend, fn, args), nprocs=world_size, join=True)


def _spawned(rank: int, world_size: int, port: int, backend: str, fn, args) -> None:
    os.environ.update({"RANK": str(rank), "WORLD_SIZE": str(world_size), "LOCAL_RANK": str(rank),
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    torch.set_num_threads(1)
    dist.init_process_group(backend=backend, rank=rank, world_size=world_size)
    try:
        fn(rank, world_size, *args)
    finally:
        dist.destroy_process_group()


# ----------------------------------------------------------------------------------------------------------------
# Command line: torchrun --nproc_per_node=N -m dualcam_lib.distributed ...
# ----------------------------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m dualcam_lib.distributed",
        description="Train the dual-branch sigmoid head with DistributedDataParallel. Launch with "
                    "`torchrun --nproc_per_node=N -m dualcam_lib.distributed ...` (one process per GPU); "
                    "without torchrun it runs as one process.")
    p.add_argument("--arch", default="small_cnn", help="architecture name from dualcam_lib.models.ARCHITECTURES")
    p.add_argument("--weights", default="zoo",
                   help="'default' (torchvision/package weights), a local state_dict path, 'zoo' (the embedded "
                        "synthetic classifier, trained once and cached) or 'none' (random init, for smoke tests)")
    p.add_argument("--dataset", default="synthetic",
                   help="synthetic | finegrained | digits | imagenet | cub | cars | openimages | imagenet-val-1000")
    p.add_argument("--split", default="train")
    p.add_argument("--data-root", default=None, help="dataset root (default: DUALCAM_DATA_ROOT or ../shared/data)")
    p.add_argument("--image-size", type=int, default=None, help="input side (default: the model's input size)")
    p.add_argument("--num-images", type=int, default=None, help="use a seeded subset of this many images")
    p.add_argument("--mode", choices=("fast", "faithful"), default="fast")
    p.add_argument("--views", type=int, default=1, help="fast mode: cached views per image (view 0 is clean)")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--batch-size", type=int, default=PAPER_BATCH_SIZE, help="global batch size")
    p.add_argument("--optimizer", choices=("adam", "adamw", "sgd"), default="adam")
    p.add_argument("--weight-decay", type=float, default=PAPER_WEIGHT_DECAY)
    p.add_argument("--lr-schedule", choices=("constant", "cosine"), default="constant")
    p.add_argument("--pos-weight", type=float, default=None, help="BCE positive weight (default C-1)")
    p.add_argument("--weighting", choices=("pos_weight", "eq12"), default="pos_weight")
    p.add_argument("--head-init", choices=("fresh", "default", "copy"), default="fresh")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num-workers", type=int, default=4)
    p.add_argument("--cache", default=None, help="feature cache file (fast mode): reused if present")
    p.add_argument("--checkpoint", default=None, help="checkpoint file: written every epoch, resumed if present")
    p.add_argument("--out", default=None, help="where rank 0 writes the trained sigmoid head's state_dict")
    p.add_argument("--backend", default=None, help="nccl (default with CUDA) or gloo")
    p.add_argument("--device", default=None, help="default cuda:LOCAL_RANK with CUDA, else cpu")
    p.add_argument("--no-progress", action="store_true")
    return p


def run_distributed_fit(args: argparse.Namespace | None = None, **overrides) -> FitResult:
    """The command-line job: build the model and data, extract (fast mode) and train with DDP, save the head.

    ``args``: parsed :func:`build_parser` options (default: parse ``sys.argv``); ``overrides`` replace options by
    their attribute name (e.g. ``run_distributed_fit(build_parser().parse_args([]), epochs=3)``).
    """
    args = args if args is not None else build_parser().parse_args()
    for k, v in overrides.items():
        setattr(args, k, v)
    ctx = init_distributed(args.backend, args.device)
    torch.manual_seed(args.seed)
    from .models import build_classifier

    data_kw = {} if args.num_images is None else {"n": args.num_images}
    if args.weights == "zoo":
        from .zoo import embedded_classifier

        split = embedded_classifier(dataset=args.dataset, arch=args.arch, seed=args.seed, progress=False)
    else:
        split = None
    from .data.datasets import load_dataset

    size = args.image_size or (split.input_size if split is not None else None)
    data = load_dataset(args.dataset, args.split, data_root=args.data_root, size=size, seed=args.seed, **data_kw)
    if split is None:
        num_classes = getattr(data, "num_classes", None)
        num_classes = int(num_classes) if num_classes is not None else int(data.labels.max()) + 1
        weights = None if args.weights == "none" else args.weights
        split = build_classifier(args.arch, num_classes=num_classes, weights=weights)
    torch.manual_seed(args.seed)  # the same fresh head on every rank
    dual = DualBranchModel(split, init=args.head_init)
    fit_kw = dict(batch_size=args.batch_size, optimizer=args.optimizer, weight_decay=args.weight_decay,
                  pos_weight=args.pos_weight, weighting=args.weighting, lr_schedule=args.lr_schedule,
                  seed=args.seed, checkpoint_path=args.checkpoint, progress=not args.no_progress,
                  num_workers=args.num_workers)
    if args.mode == "fast":
        fit_kw.update(views=args.views, cache_path=args.cache)
    result = fit_distributed(dual, data, ctx, args.epochs, args.lr, mode=args.mode, **fit_kw)
    if args.out and ctx.is_main:
        from .checkpoint import atomic_torch_save

        atomic_torch_save({k: v.cpu() for k, v in dual.sigmoid_head.state_dict().items()}, args.out)
    if ctx.is_main:
        print(f"trained {args.arch} sigmoid head ({args.mode}, {ctx.world_size} process(es)): "
              f"{result.epochs} epochs, final loss {result.final_loss:.4f}, {result.seconds:.1f} s")
    return result


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        run_distributed_fit(args)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
