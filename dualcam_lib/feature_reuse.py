"""A frozen backbone that remembers its outputs, so that an image it has seen is never run through it again.

The backbone and the softmax head of a dual-branch model never change, so the features of an image are a constant.
An evaluation loop runs the backbone once for the class scores and once more per CAM method, and cross-fitting runs
it again on images whose training features were just extracted; :class:`MemoizedBackbone` answers those repeats from
memory. The key of an image is a hash of the exact bytes of the normalised input, so a changed image (another
augmentation, another resize) is a new entry, never a stale one.
"""
from __future__ import annotations

import hashlib
from collections import OrderedDict

import torch
from torch import nn


class MemoizedBackbone(nn.Module):
    """Wrap a frozen backbone ``inner``: ``(B, 3, H, W) float -> inner's (B, ...) output``, keeping up to
    ``capacity`` images' outputs (the oldest leave first). Only the images not yet stored go through ``inner``, as one
    sub-batch. Inputs that require grad (a CAM method that differentiates the input) and ``capacity <= 0`` bypass the
    store. Entries are private copies, so a caller may modify what it gets back. Set ``backbone = MemoizedBackbone(
    backbone, n)`` on a :class:`~dualcam_lib.models.SplitModel` before wrapping it in a ``DualBranchModel``.
    ``accept_new = False`` keeps answering from the store but stores nothing new (one-off inputs, such as the
    masked images of a fidelity metric, then cannot evict the images that are looked up again and again).
    """

    def __init__(self, inner: nn.Module, capacity: int):
        super().__init__()
        self.inner, self.capacity = inner, int(capacity)
        self.store: OrderedDict[bytes, torch.Tensor] = OrderedDict()
        self.hits = self.misses = 0
        self.accept_new = True

    @staticmethod
    def keys_of(x: torch.Tensor) -> list[bytes]:
        """One 16-byte key per image of ``x`` ``(B, ...)``: a BLAKE2b digest of its exact bytes (hashing needs them
        on the host; this is one copy of the batch, small next to a backbone pass)."""
        flat = x.detach().reshape(x.shape[0], -1).cpu().contiguous()
        return [hashlib.blake2b(row.numpy().tobytes(), digest_size=16).digest() for row in flat]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.capacity <= 0 or x.requires_grad:
            return self.inner(x)
        keys = self.keys_of(x)
        missing = [i for i, k in enumerate(keys) if k not in self.store]
        self.misses += len(missing)
        self.hits += len(keys) - len(missing)
        if len(missing) == len(keys):
            result = self.inner(x)
            fresh = dict(enumerate(result))
        else:
            out = self.inner(x[missing]) if missing else None
            fresh = dict(zip(missing, out)) if missing else {}
            result = torch.stack([fresh[i] if i in fresh else self.store[k] for i, k in enumerate(keys)])
        for i, f in fresh.items() if self.accept_new else ():
            self.store[keys[i]] = f.detach().clone()  # a private copy: callers may modify `result`
        while len(self.store) > self.capacity:  # evict only after this batch has been answered
            self.store.popitem(last=False)
        return result

    def clear(self) -> None:
        """Forget every stored output (the counters too)."""
        self.store.clear()
        self.hits = self.misses = 0
