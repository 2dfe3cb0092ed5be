"""Atomic, resumable checkpoints for sigmoid-head training.

A checkpoint is one ``torch.save`` file written to a temporary name in the same folder and moved into place with
``os.replace`` (atomic on POSIX and Windows), so a crash never leaves a half-written file. It holds:

- ``head``: the sigmoid head's state_dict; ``optimizer``: the optimiser's state_dict;
- ``epoch`` (epochs completed) and ``step`` (optimiser steps taken);
- ``rng``: the torch (CPU and CUDA), numpy and python RNG states at the moment of saving;
- ``config``: the training configuration (plain python values); ``fingerprint``: see :func:`arch_fingerprint`;
- ``history``: per-epoch losses so far.

Everything is stored as tensors and plain python values so it loads with ``torch.load(..., weights_only=True)``.
"""
from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

CHECKPOINT_FORMAT = 1


class CheckpointMismatchError(ValueError):
    """A checkpoint does not fit the model it is loaded into (architecture, classes or parameter shapes)."""


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save(obj)`` to ``path`` atomically: write a temp file in the same folder, fsync, ``os.replace``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files; give the usual permissions
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def arch_fingerprint(arch: str, num_classes: int, head: nn.Module) -> dict:
    """What a head checkpoint must match: ``{"arch", "num_classes", "head_class", "head_shapes": {name: [dims]}}``."""
    return {
        "arch": str(arch),
        "num_classes": int(num_classes),
        "head_class": type(head).__name__,
        "head_shapes": {k: list(v.shape) for k, v in head.state_dict().items()},
    }


def check_fingerprint(found: dict, expected: dict, source: str = "checkpoint") -> None:
    """Raise :class:`CheckpointMismatchError` naming the first difference between two fingerprints."""
    if found.get("arch") != expected["arch"]:
        raise CheckpointMismatchError(
            f"{source} was written for architecture {found.get('arch')!r}, but the model is {expected['arch']!r}")
    if found.get("num_classes") != expected["num_classes"]:
        raise CheckpointMismatchError(
            f"{source} was written for {found.get('num_classes')} classes, but the model has {expected['num_classes']}")
    if found.get("head_class") != expected["head_class"]:
        raise CheckpointMismatchError(
            f"{source} holds a {found.get('head_class')} sigmoid head, but the model's head is {expected['head_class']}")
    fs, es = found.get("head_shapes", {}), expected["head_shapes"]
    missing = sorted(set(es) - set(fs))
    extra = sorted(set(fs) - set(es))
    if missing or extra:
        raise CheckpointMismatchError(
            f"{source} head parameters differ from the model's: missing {missing}, unexpected {extra}")
    for name, shape in es.items():
        if list(fs[name]) != list(shape):
            raise CheckpointMismatchError(
                f"{source} parameter {name!r} has shape {tuple(fs[name])}, but the model's has shape {tuple(shape)}")


def capture_rng_states() -> dict:
    """The torch (CPU + every CUDA device), numpy and python RNG states, as tensors and plain values."""
    np_state = np.random.get_state()
    py_state = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": [s for s in torch.cuda.get_rng_state_all()] if torch.cuda.is_available() else [],
        "numpy": {
            "keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "python": {"version": py_state[0], "state": list(py_state[1]),
                   "gauss": py_state[2]},
    }


def restore_rng_states(states: dict) -> None:
    """Inverse of :func:`capture_rng_states`. CUDA states are restored only where the device count matches."""
    torch.set_rng_state(states["torch"])
    cuda = states.get("cuda") or []
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)
    n = states["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    p = states["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss"]))


def save_checkpoint(path: str | os.PathLike, *, head: nn.Module, optimizer: torch.optim.Optimizer, epoch: int,
                    step: int, config: dict, fingerprint: dict, history: list | None = None,
                    rng: dict | None = None) -> Path:
    """Write a training checkpoint atomically (see the module docstring for its contents); returns the path."""
    state = {
        "format": CHECKPOINT_FORMAT,
        "head": {k: v.detach().cpu().clone() for k, v in head.state_dict().items()},
        "optimizer": optimizer.state_dict(),
        "epoch": int(epoch),
        "step": int(step),
        "rng": rng if rng is not None else capture_rng_states(),
        "config": dict(config),
        "fingerprint": fingerprint,
        "history": list(history or []),
    }
    return atomic_torch_save(state, path)


def load_checkpoint(path: str | os.PathLike, expected_fingerprint: dict | None = None,
                    map_location: str | torch.device = "cpu") -> dict:
    """Read a checkpoint (``weights_only=True``) and check it against ``expected_fingerprint`` if given.

    Raises ``FileNotFoundError`` if absent, ``ValueError`` if the file is not a DualCAM head checkpoint, and
    :class:`CheckpointMismatchError` naming the architecture / class count / parameter and both shapes on mismatch.
    """
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"checkpoint not found: '{p}'")
    try:
        state = torch.load(p, map_location=map_location, weights_only=True)
    except Exception as e:  # truncated or foreign file
        raise ValueError(f"could not read checkpoint '{p}': {e}") from None
    if not isinstance(state, dict) or "fingerprint" not in state or "head" not in state:
        raise ValueError(f"'{p}' is not a sigmoid-head checkpoint (expected keys 'head' and 'fingerprint')")
    if expected_fingerprint is not None:
        check_fingerprint(state["fingerprint"], expected_fingerprint, source=f"checkpoint '{p}'")
    return state
