"""DDP with 2 CPU processes (gloo) gives the single-process result: extraction, fast and faithful head training."""
import types

import pytest
import torch

from dualcam_lib.distributed import fit_distributed, init_distributed, spawn
from dualcam_lib.heads import DualBranchModel
from dualcam_lib.models import build_classifier
from dualcam_lib.train import extract_features, fit_sigmoid_head, fit_sigmoid_head_fast

C = 3
# 23 images (not divisible by 2 ranks: shards of 12 and 11); global batch 5 over 2 views = 46 rows, so the last
# global batch has a single row and one rank trains on an empty slice in that step.
N, BATCH, VIEWS, EPOCHS = 23, 5, 2, 2


def problem():
    torch.manual_seed(0)
    split = build_classifier("small_cnn", C, width=4, input_size=16)
    g = torch.Generator().manual_seed(1)
    data = types.SimpleNamespace(images=torch.rand(N, 3, 16, 16, generator=g), labels=torch.arange(N) % C)
    torch.manual_seed(2)
    return DualBranchModel(split), data


FIT = dict(lr=5e-2, batch_size=BATCH, seed=4, progress=False)


def _worker(rank, world_size, out_dir):
    ctx = init_distributed()
    assert (ctx.rank, ctx.world_size) == (rank, world_size)
    dual, data = problem()
    fast = fit_distributed(dual, data, ctx, EPOCHS, mode="fast", views=VIEWS,
                           checkpoint_path=f"{out_dir}/fast_ckpt.pt", **FIT)
    from dualcam_lib.distributed import extract_features_distributed

    cache = extract_features_distributed(dual, data, ctx, views=VIEWS, seed=FIT["seed"], progress=False)
    dual2, _ = problem()
    fit_distributed(dual2, data, ctx, EPOCHS, mode="faithful", **FIT)
    torch.save({"fast": dual.sigmoid_head.state_dict(), "faithful": dual2.sigmoid_head.state_dict(),
                "cache": cache.features, "labels": cache.labels, "loss": fast.history[-1]["loss"]},
               f"{out_dir}/rank{rank}.pt")


@pytest.mark.slow
def test_two_gloo_processes_match_one_process(tmp_path):
    spawn(_worker, 2, str(tmp_path))
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=True)

    dual, data = problem()
    cache = extract_features(dual, data, views=VIEWS, seed=FIT["seed"], progress=False)
    assert torch.equal(r0["labels"], cache.labels)
    assert torch.allclose(r0["cache"], cache.features, atol=1e-6)  # gathered shards back in dataset order
    single = fit_sigmoid_head_fast(dual, cache, EPOCHS, **FIT)
    dual2, _ = problem()
    fit_sigmoid_head(dual2, data, EPOCHS, **FIT)

    for name, ref in (("fast", dual.sigmoid_head), ("faithful", dual2.sigmoid_head)):
        for k, v in ref.state_dict().items():
            assert torch.allclose(r0[name][k], v, atol=1e-5), (name, k)
            assert torch.equal(r0[name][k], r1[name][k]), (name, k)  # DDP keeps the ranks in lockstep
    assert r0["loss"] == pytest.approx(single.history[-1]["loss"], rel=1e-5)
    assert (tmp_path / "fast_ckpt.pt").exists()  # written by rank 0


def test_single_process_context_without_torchrun(monkeypatch):
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(k, raising=False)
    ctx = init_distributed(device="cpu")
    assert (ctx.rank, ctx.world_size, ctx.distributed, ctx.is_main) == (0, 1, False, True)


def test_command_line_help(capsys):
    from dualcam_lib.distributed import main

    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "torchrun --nproc_per_node=N" in out and "--views" in out and "--checkpoint" in out
