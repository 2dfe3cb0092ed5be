"""Atomic checkpoints, exact resume, and clear errors for checkpoints that do not fit."""
import dataclasses
import random
import types

import numpy as np
import pytest
import torch

from dualcam_lib.checkpoint import (CheckpointMismatchError, arch_fingerprint, atomic_torch_save, capture_rng_states,
                                    load_checkpoint, restore_rng_states)
from dualcam_lib.heads import DualBranchModel
from dualcam_lib.models import GapLinearHead, build_classifier
from dualcam_lib.train import fit_sigmoid_head, fit_sigmoid_head_fast

C = 4


def tiny_split(width=8):
    torch.manual_seed(0)
    return build_classifier("small_cnn", C, width=width, input_size=32)


def tiny_data(n=24):
    g = torch.Generator().manual_seed(0)
    return types.SimpleNamespace(images=torch.rand(n, 3, 32, 32, generator=g), labels=torch.arange(n) % C)


def dual_with_dropout(split, seed):
    """A sigmoid head with dropout, so resuming must also restore the global RNG exactly."""
    torch.manual_seed(seed)
    return DualBranchModel(split, sigmoid_head=GapLinearHead(split.backbone.out_channels, C, dropout=0.3))


class Interrupt(Exception):
    pass


def stop_after(k):
    def callback(epoch, row):
        if epoch == k:
            raise Interrupt

    return callback


def assert_same_head(a, b):
    sa, sb = a.sigmoid_head.state_dict(), b.sigmoid_head.state_dict()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


def test_faithful_resume_after_interruption_gives_identical_weights(tmp_path):
    split, data = tiny_split(), tiny_data()
    kw = dict(epochs=4, lr=1e-2, batch_size=8, seed=5, progress=False)
    ref = dual_with_dropout(split, seed=1)
    fit_sigmoid_head(ref, data, **kw)

    ckpt = tmp_path / "head.pt"
    first = dual_with_dropout(split, seed=1)
    with pytest.raises(Interrupt):
        fit_sigmoid_head(first, data, checkpoint_path=ckpt, callback=stop_after(2), **kw)
    torch.rand(100)  # the process does other things before it resumes: the RNG moves on
    resumed = dual_with_dropout(split, seed=99)  # a different fresh head: everything must come from the checkpoint
    res = fit_sigmoid_head(resumed, data, checkpoint_path=ckpt, **kw)
    assert res.resumed_from == 2 and [r["epoch"] for r in res.history] == [1, 2, 3, 4]
    assert_same_head(ref, resumed)


def test_fast_resume_from_shorter_run_gives_identical_weights(tmp_path):
    split, data = tiny_split(), tiny_data()
    kw = dict(lr=1e-2, batch_size=8, views=2, seed=3, progress=False)
    ref = dual_with_dropout(split, seed=1)
    fit_sigmoid_head_fast(ref, data, epochs=5, **kw)

    ckpt = tmp_path / "head.pt"
    fit_sigmoid_head_fast(dual_with_dropout(split, seed=1), data, epochs=2, checkpoint_path=ckpt, **kw)
    resumed = dual_with_dropout(split, seed=7)
    res = fit_sigmoid_head_fast(resumed, data, epochs=5, checkpoint_path=ckpt, **kw)
    assert res.resumed_from == 2 and res.epochs == 5
    assert_same_head(ref, resumed)
    state = load_checkpoint(ckpt)
    assert state["epoch"] == 5 and state["step"] == res.steps
    assert {"head", "optimizer", "rng", "config", "fingerprint", "history"} <= set(state)
    # A finished checkpoint is a cache: asking for the same epochs trains nothing and restores the weights.
    again = dual_with_dropout(split, seed=8)
    res2 = fit_sigmoid_head_fast(again, data, epochs=5, checkpoint_path=ckpt, **kw)
    assert res2.history[-1] == res.history[-1] and res2.steps == res.steps
    assert_same_head(ref, again)


def test_checkpoint_is_written_atomically_and_loads_weights_only(tmp_path):
    split, data = tiny_split(), tiny_data()
    ckpt = tmp_path / "sub" / "head.pt"
    fit_sigmoid_head_fast(DualBranchModel(split), data, epochs=1, lr=1e-2, checkpoint_path=ckpt, progress=False)
    assert sorted(p.name for p in ckpt.parent.iterdir()) == ["head.pt"]  # no temp file left behind
    torch.load(ckpt, weights_only=True)

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("fails half-way")

    with pytest.raises(RuntimeError, match="half-way"):
        atomic_torch_save({"a": torch.ones(3), "b": Unpicklable()}, ckpt)
    assert sorted(p.name for p in ckpt.parent.iterdir()) == ["head.pt"]  # the old file survived intact
    assert load_checkpoint(ckpt)["epoch"] == 1


def test_wrong_architecture_or_shape_fails_with_a_clear_message(tmp_path):
    split, data = tiny_split(), tiny_data()
    ckpt = tmp_path / "head.pt"
    fit_sigmoid_head_fast(DualBranchModel(split), data, epochs=1, lr=1e-2, checkpoint_path=ckpt, progress=False)
    kw = dict(epochs=2, lr=1e-2, checkpoint_path=ckpt, progress=False)

    other_arch = dataclasses.replace(tiny_split(), name="resnet18")
    with pytest.raises(CheckpointMismatchError, match="architecture 'small_cnn', but the model is 'resnet18'"):
        fit_sigmoid_head_fast(DualBranchModel(other_arch), data, **kw)

    wider = tiny_split(width=16)  # same arch name, fc.weight (4, 64) instead of (4, 32)
    with pytest.raises(CheckpointMismatchError, match=r"'fc.weight' has shape \(4, 32\).*shape \(4, 64\)"):
        fit_sigmoid_head_fast(DualBranchModel(wider), data, **kw)

    torch.manual_seed(0)
    five = build_classifier("small_cnn", 5, width=8, input_size=32)
    data5 = types.SimpleNamespace(images=data.images, labels=torch.arange(24) % 5)
    with pytest.raises(CheckpointMismatchError, match="written for 4 classes, but the model has 5"):
        fit_sigmoid_head_fast(DualBranchModel(five), data5, **kw)

    with pytest.raises(CheckpointMismatchError, match="lr=0.01, but this run has lr=0.1"):
        fit_sigmoid_head_fast(DualBranchModel(split), data, epochs=2, lr=0.1, checkpoint_path=ckpt, progress=False)

    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="could not read checkpoint"):
        load_checkpoint(garbage)
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        load_checkpoint(tmp_path / "missing.pt")


def test_fingerprint_names_the_mismatch():
    a = arch_fingerprint("small_cnn", 4, GapLinearHead(32, 4))
    b = arch_fingerprint("small_cnn", 4, GapLinearHead(32, 4, dropout=0.5))
    assert a == b  # dropout has no parameters: the same checkpoint fits


def test_rng_states_round_trip():
    states = capture_rng_states()
    expected = (torch.rand(3), np.random.rand(3), random.random())
    torch.rand(10), np.random.rand(10), random.random()
    restore_rng_states(states)
    got = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(expected[0], got[0]) and np.array_equal(expected[1], got[1]) and expected[2] == got[2]


def test_resume_with_a_shuffling_dataloader_gives_identical_weights(tmp_path):
    """A DataLoader without its own generator shuffles from the global torch RNG, which the checkpoint restores."""
    split, data = tiny_split(), tiny_data()
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(data.images, data.labels), batch_size=8,
                                         shuffle=True)
    kw = dict(epochs=3, lr=1e-2, seed=2, progress=False)
    ref = dual_with_dropout(split, seed=1)  # seeds the global RNG: both runs shuffle from the same state
    fit_sigmoid_head(ref, loader, **kw)

    ckpt = tmp_path / "head.pt"
    with pytest.raises(Interrupt):
        fit_sigmoid_head(dual_with_dropout(split, seed=1), loader, checkpoint_path=ckpt, callback=stop_after(1), **kw)
    resumed = dual_with_dropout(split, seed=5)
    fit_sigmoid_head(resumed, loader, checkpoint_path=ckpt, **kw)
    assert_same_head(ref, resumed)
