"""The CAM engine's mechanics: one backbone pass for both branches, hooks always released, no memory growth,
model state left as found, ViT token grids found without a reshape function."""
import gc
import tracemalloc
import warnings

import pytest
import torch
from torch import nn

from dualcam_lib.cams import CamEngine
from dualcam_lib.heads import DualBranchModel
from dualcam_lib.models import GapLinearHead, SplitClassifier, TokenHead, build_classifier


def small_dual(width=8, num_classes=5, **kwargs):
    return DualBranchModel(build_classifier("small_cnn", num_classes=num_classes, width=width), **kwargs)


def tiny_vit_split(grid=True):
    timm = pytest.importorskip("timm")
    vit = timm.models.vision_transformer.VisionTransformer(img_size=32, patch_size=8, depth=2, embed_dim=32,
                                                           num_heads=2, num_classes=5)

    class VitTokens(nn.Module):
        def __init__(self, vit):
            super().__init__()
            self.vit = vit

        def forward(self, x):
            return self.vit.forward_features(x)

    head = TokenHead(32, 5, num_prefix_tokens=vit.num_prefix_tokens)
    head.fc = vit.head
    return SplitClassifier("tiny_vit", VitTokens(vit), head, 5, input_size=32, kind="vit",
                           grid=tuple(vit.patch_embed.grid_size) if grid else None,
                           num_prefix_tokens=vit.num_prefix_tokens, meta={"target_layer": vit.blocks[-1].norm1}), vit


def count_calls(module):
    calls = []
    handle = module.register_forward_hook(lambda *a: calls.append(1))
    return calls, handle


# ---------------------------------------------------------------------------------------------- one backbone pass


ONE_PASS_CASES = [(m, inner) for m in ("gradcam", "gradcampp", "xgradcam", "layercam", "cam", "eigencam")
                  for inner in (False, True) if not (m == "cam" and inner)]  # CAM lives at the heads' input only


@pytest.mark.parametrize("method,inner", ONE_PASS_CASES)
def test_one_backbone_forward_for_both_branches(method, inner):
    dual = small_dual()
    x = torch.randn(3, 3, 32, 32)
    calls, handle = count_calls(dual.backbone)
    layer = dual.backbone.features[2] if inner else None
    with CamEngine(dual, target_layer=layer) as engine:
        for n in range(1, 4):
            maps = engine.compute(x, torch.tensor([0, 3, 1]), method=method,
                                  scores=("softmax_logit", "sigmoid_logit"))
            assert len(calls) == n
            assert set(maps) == {"softmax_logit", "sigmoid_logit"}
    handle.remove()


def test_default_layer_backprops_through_the_heads_only():
    dual = small_dual()
    for p in dual.parameters():
        p.requires_grad_(True)
    x = torch.randn(2, 3, 32, 32)
    with CamEngine(dual) as engine:
        engine.compute(x, torch.tensor([0, 1]), method="gradcam")
    # No gradient reached any parameter: the backbone ran without autograd, gradients went to feature leaves.
    assert all(p.grad is None for p in dual.parameters())


# ---------------------------------------------------------------------------------------------- hooks


def test_hooks_registered_inside_and_removed_on_exit_and_on_exception():
    dual = small_dual()
    layer = dual.backbone.features[2]
    x = torch.randn(1, 3, 32, 32)
    engine = CamEngine(dual, target_layer=layer)
    assert len(layer._forward_hooks) == 0
    with engine:
        assert len(layer._forward_hooks) == 1
        engine.compute(x, torch.tensor([0]))
    assert len(layer._forward_hooks) == 0
    with pytest.raises(RuntimeError, match="boom"):
        with CamEngine(dual, target_layer=layer):
            raise RuntimeError("boom")
    assert len(layer._forward_hooks) == 0
    with pytest.raises(ValueError):
        with CamEngine(dual, target_layer=layer) as engine:
            engine.compute(x, torch.tensor([9]))
    assert len(layer._forward_hooks) == 0
    engine.compute(x, torch.tensor([0]))  # outside a `with`: registers and removes its own hook
    assert len(layer._forward_hooks) == 0


def test_hooks_released_when_compute_fails_mid_forward_and_engine_recovers():
    dual = small_dual()
    shared = dual.backbone.features[3]
    layer = dual.backbone.features[1]
    x = torch.randn(1, 3, 32, 32)
    original = dual.backbone.forward
    dual.backbone.forward = lambda inp: shared(shared(dual.backbone.features[2](layer(dual.backbone.features[0](inp)))))
    with pytest.raises(RuntimeError, match="ran 2 times"):
        with CamEngine(dual, target_layer=shared) as engine:
            engine.compute(x, torch.tensor([0]))
    assert len(shared._forward_hooks) == 0
    dual.backbone.forward = original
    with CamEngine(dual, target_layer=layer) as engine:
        with pytest.raises(ValueError):
            engine.compute(x, torch.tensor([0]), method="cam", scores="log_softmax")
        maps = engine.compute(x, torch.tensor([0]), method="gradcam")
        # Inside the `with` block other forward passes are left alone (the hook is idle between computes).
        out = dual(x)
    assert maps["softmax_logit"].shape == (1, 16, 16) and out.softmax_logits.shape == (1, 5)
    assert len(layer._forward_hooks) == 0


def test_in_place_op_after_target_layer_does_not_corrupt_activations():
    dual = small_dual()
    conv_bn = dual.backbone.features[3][1]  # BatchNorm, followed by ReLU(inplace=True)
    x = torch.randn(2, 3, 32, 32)
    with CamEngine(dual, target_layer=conv_bn) as engine:
        maps = engine.compute(x, torch.tensor([0, 1]), method="eigencam", scores="softmax_logit")
    captured = []
    h = conv_bn.register_forward_hook(lambda m, i, o: captured.append(o.detach().clone()))
    with torch.no_grad():
        dual.backbone(x)
    h.remove()
    assert (captured[0] < 0).any()  # the true BN output has negative values the in-place ReLU would erase
    from dualcam_lib.cams import first_principal_projection
    torch.testing.assert_close(maps["softmax_logit"], first_principal_projection(captured[0]))


# ---------------------------------------------------------------------------------------------- state and memory


def test_model_modes_restored_and_maps_computed_in_eval_mode():
    split = build_classifier("small_cnn", num_classes=5, width=8)
    split.head = GapLinearHead(32, 5, dropout=0.5)
    dual = DualBranchModel(split, init="copy")
    dual.train(True)
    assert dual.sigmoid_head.training
    x = torch.randn(2, 3, 32, 32)
    with CamEngine(dual) as engine:
        a = engine.compute(x, torch.tensor([0, 1]), method="gradcam", clamp=False)
        b = engine.compute(x, torch.tensor([0, 1]), method="gradcam", clamp=False)
    torch.testing.assert_close(a["sigmoid_logit"], b["sigmoid_logit"])  # dropout was off
    torch.testing.assert_close(a["sigmoid_logit"], a["softmax_logit"])  # copied head: identical maps
    assert dual.sigmoid_head.training and dual.sigmoid_head.dropout.training
    assert not dual.backbone.training and not dual.softmax_head.training


def live_tensors() -> int:
    gc.collect()
    with warnings.catch_warnings():  # isinstance on some gc-tracked objects touches deprecated torch attributes
        warnings.simplefilter("ignore")
        return sum(1 for o in gc.get_objects() if isinstance(o, torch.Tensor))


@pytest.mark.parametrize("inner", [False, True])
def test_no_memory_growth_over_1000_calls(inner):
    dual = small_dual(width=2, num_classes=3)
    x = torch.randn(2, 3, 8, 8)
    t = torch.tensor([0, 2])
    layer = dual.backbone.features[2] if inner else None
    with CamEngine(dual, target_layer=layer) as engine:
        for _ in range(20):
            maps = engine.compute(x, t, method="gradcam")
        del maps
        tensors_before = live_tensors()
        for i in range(1000):
            if inner and i == 700:  # heap watch over the last 300 calls: tracemalloc triples the cost per call
                tracemalloc.start()
                start = tracemalloc.get_traced_memory()[0]
            maps = engine.compute(x, t, method="gradcam")
        del maps
        if inner:
            gc.collect()
            growth = tracemalloc.get_traced_memory()[0] - start
            tracemalloc.stop()
            assert growth < 32 * 1024, f"python heap grew by {growth} bytes over 300 calls"
            assert len(layer._forward_hooks) == 1
        assert live_tensors() == tensors_before
    assert all(len(m._forward_hooks) == 0 for m in dual.modules())


# ---------------------------------------------------------------------------------------------- ViT and devices


def test_vit_grid_found_from_the_model_without_a_declared_grid():
    split, vit = tiny_vit_split(grid=False)
    dual = DualBranchModel(split, init="default")
    x = torch.randn(2, 3, 32, 32)
    with CamEngine(dual) as engine:
        assert engine.target_layer is vit.blocks[-1].norm1
        maps = engine.compute(x, torch.tensor([0, 4]), method="gradcam")
        cam = engine.compute(x, torch.tensor([0, 4]), method="cam")
    assert maps["softmax_logit"].shape == (2, 4, 4) and cam["sigmoid_logit"].shape == (2, 4, 4)
    # CAM on tokens: the head's weight row times each patch token at the heads' input.
    with torch.no_grad():
        tokens = dual.backbone(x)
    w = dual.softmax_head.fc.weight[[0, 4]]
    expected = torch.einsum("bd,btd->bt", w, tokens[:, 1:]).view(2, 4, 4)
    torch.testing.assert_close(cam["softmax_logit"], expected)


def test_vit_token_output_at_the_heads_input():
    split, vit = tiny_vit_split()
    split.meta = {}
    split.head.pool = "mean"  # mean pooling: every patch token reaches the logit
    with CamEngine(split) as engine:
        assert engine.target_layer is None
        maps = engine.compute(torch.randn(2, 3, 32, 32), torch.tensor([1, 2]), method="gradcam")
    assert maps["softmax_logit"].shape == (2, 4, 4) and maps["softmax_logit"].abs().sum() > 0
