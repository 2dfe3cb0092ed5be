"""CAM methods, scores and post-processing: clamping semantics, the softmax invariances the book relies on
(additive logit shift, Eq. 9 of the paper), and the map post-processing steps."""
import cv2
import numpy as np
import pytest
import torch
from torch import nn

from dualcam_lib.cams import (METHODS, CamEngine, find_grid, first_principal_projection, paper_postprocess,
                              postprocess, tokens_to_maps)
from dualcam_lib.heads import DualBranchModel
from dualcam_lib.models import PoolMLPHead, build_classifier

TARGETS = torch.tensor([0, 3, 1])
K = 3  # the class whose head rows the clamping tests edit


def small_dual(num_classes=5, width=8):
    split = build_classifier("small_cnn", num_classes=num_classes, width=width)
    return DualBranchModel(split, init="default")


def features(dual, x):
    with torch.no_grad():
        return dual.backbone(x)


# ---------------------------------------------------------------------------------------------- CAM identities


def test_cam_is_head_weight_row_times_features_and_ignores_bias():
    dual = small_dual()
    x = torch.randn(3, 3, 32, 32)
    f = features(dual, x)
    with CamEngine(dual) as engine:
        maps = engine.compute(x, TARGETS, method="cam", clamp=False)
        dual.softmax_head.fc.bias.data += 5.0
        shifted = engine.compute(x, TARGETS, method="cam", clamp=False)
    w = dual.softmax_head.fc.weight[TARGETS]
    torch.testing.assert_close(maps["softmax_logit"], torch.einsum("bn,bnpq->bpq", w, f))
    torch.testing.assert_close(shifted["softmax_logit"], maps["softmax_logit"])
    assert maps["softmax_logit"].shape == (3, 8, 8) and maps["softmax_logit"].dtype == torch.float32


def test_cam_equals_gradcam_times_positions_for_gap_linear_head():
    # d logit_k / d F_n(p, q) = w_kn / (P Q), so Grad-CAM's alpha is w_kn / (P Q): CAM = P Q * Grad-CAM.
    dual = small_dual()
    x = torch.randn(3, 3, 32, 32)
    with CamEngine(dual) as engine:
        cam = engine.compute(x, TARGETS, method="cam", clamp=False)
        grad = engine.compute(x, TARGETS, method="gradcam", clamp=False)
    for s in cam:
        torch.testing.assert_close(cam[s], 64 * grad[s], rtol=1e-4, atol=1e-6)


# ---------------------------------------------------------------------------------------------- clamping


def set_row(head, k, channel0):
    """Head row k: positive weights except channel 0, which gets the (negative) value `channel0`."""
    with torch.no_grad():
        head.fc.weight[k] = torch.linspace(0.1, 1.0, head.fc.weight.shape[1])
        head.fc.weight[k, 0] = channel0


@pytest.mark.parametrize("method", ["cam", "gradcam", "xgradcam"])
def test_sigmoid_branch_default_clamp_drops_negative_channel(method):
    dual = small_dual()
    x = torch.randn(3, 3, 32, 32)
    t = torch.full((3,), K)
    f = features(dual, x)
    assert (f[:, 0] > 0).any()  # channel 0 is active, so a non-zero weight on it would show
    maps = {}
    with CamEngine(dual) as engine:
        for value in (-1.0, -5.0):
            set_row(dual.sigmoid_head, K, value)
            maps[value] = engine.compute(x, t, method=method)["sigmoid_logit"]
            maps[value, "off"] = engine.compute(x, t, method=method, clamp=False)["sigmoid_logit"]
    torch.testing.assert_close(maps[-1.0], maps[-5.0])  # the negative channel contributes nothing
    assert (maps[-1.0, "off"] - maps[-5.0, "off"]).abs().max() > 1e-4  # ...but does without the clamp
    if method == "cam":
        positive = dual.sigmoid_head.fc.weight[K].clamp(min=0).expand(3, -1)
        torch.testing.assert_close(maps[-1.0], torch.einsum("bn,bnpq->bpq", positive, f))


def test_ablationcam_clamp_drops_channels_whose_ablation_raises_the_score():
    # For a GAP-linear head, S - S_n = w_n * mean(F_n) exactly, so alpha_n = w_n mean(F_n) / S.
    dual = small_dual()
    x = torch.randn(3, 3, 32, 32)
    t = torch.full((3,), K)
    f = features(dual, x)
    set_row(dual.sigmoid_head, K, -1.0)
    with CamEngine(dual) as engine:
        on = engine.compute(x, t, method="ablationcam")["sigmoid_logit"]
        off = engine.compute(x, t, method="ablationcam", clamp=False)["sigmoid_logit"]
    w, b = dual.sigmoid_head.fc.weight[K], dual.sigmoid_head.fc.bias[K]
    contribution = w * f.mean(dim=(2, 3))  # (B, N)
    alpha = contribution / (contribution.sum(1, keepdim=True) + b)
    assert (alpha[:, 0] != 0).all() and (alpha < 0).any()
    assert (on - off).abs().max() > 1e-4
    torch.testing.assert_close(off, torch.einsum("bn,bnpq->bpq", alpha, f), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(on, torch.einsum("bn,bnpq->bpq", alpha.clamp(min=0), f), rtol=1e-4, atol=1e-5)


def test_softmax_default_is_not_clamped_and_clamp_true_forces_it():
    dual = small_dual()
    x = torch.randn(3, 3, 32, 32)
    t = torch.full((3,), K)
    maps = {}
    with CamEngine(dual) as engine:
        for value in (-1.0, -5.0):
            set_row(dual.softmax_head, K, value)
            maps[value] = engine.compute(x, t, method="gradcam")["softmax_logit"]
            maps[value, True] = engine.compute(x, t, method="gradcam", clamp=True)["softmax_logit"]
    assert (maps[-1.0] - maps[-5.0]).abs().max() > 1e-5
    torch.testing.assert_close(maps[-1.0, True], maps[-5.0, True])


def test_clamp_is_noop_for_gradcampp_on_relu_features_and_skipped_for_layercam():
    dual = small_dual()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        dual.sigmoid_head.fc.weight.normal_()  # plenty of negative weights
    with CamEngine(dual) as engine:
        for method in ("gradcampp", "layercam"):
            on = engine.compute(x, TARGETS, method=method, clamp=True)
            off = engine.compute(x, TARGETS, method=method, clamp=False)
            for s in on:
                torch.testing.assert_close(on[s], off[s])


def test_clamp_argument_is_validated():
    dual = small_dual()
    with CamEngine(dual) as engine, pytest.raises(ValueError, match="clamp"):
        engine.compute(torch.randn(1, 3, 32, 32), torch.tensor([0]), clamp="yes")


# ---------------------------------------------------------------------------------------------- invariances


def all_score_maps(engine, x, method):
    return engine.compute(x, TARGETS, method=method, scores=("softmax_logit", "softmax_prob", "log_softmax"),
                          clamp=False)


@pytest.mark.parametrize("inner", [False, True])
def test_constant_logit_shift_leaves_every_softmax_gradcam_unchanged(inner):
    dual = small_dual()
    x = torch.randn(3, 3, 32, 32)
    layer = dual.backbone.features[2] if inner else None
    with CamEngine(dual, target_layer=layer) as engine:
        before = all_score_maps(engine, x, "gradcam")
        dual.softmax_head.fc.bias.data += 7.5  # adds the same constant to every softmax logit
        after = all_score_maps(engine, x, "gradcam")
    for s in before:
        scale = before[s].abs().max()
        assert scale > 0
        torch.testing.assert_close(after[s] / scale, before[s] / scale, atol=1e-5, rtol=0)


@pytest.mark.parametrize("inner", [False, True])
def test_per_channel_weight_shift_eq9(inner):
    """w'[:, i] += delta for every class: softmax probabilities unchanged (Eq. 8), softmax_logit CAM moves by
    exactly delta * F_i (Eq. 9) and softmax_logit Grad-CAM changes, softmax_prob / log_softmax Grad-CAM do not."""
    dual = small_dual()
    x = torch.randn(3, 3, 32, 32)
    i, delta = 5, 3.0
    f = features(dual, x)
    layer = dual.backbone.features[2] if inner else None
    with CamEngine(dual, target_layer=layer) as engine, CamEngine(dual) as head_engine:
        probs_before = dual(x).softmax_logits.softmax(1)
        grad_before = all_score_maps(engine, x, "gradcam")
        cam_before = head_engine.compute(x, TARGETS, method="cam", scores="softmax_logit", clamp=False)
        dual.softmax_head.fc.weight.data[:, i] += delta
        probs_after = dual(x).softmax_logits.softmax(1)
        grad_after = all_score_maps(engine, x, "gradcam")
        cam_after = head_engine.compute(x, TARGETS, method="cam", scores="softmax_logit", clamp=False)
    torch.testing.assert_close(probs_after, probs_before, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(cam_after["softmax_logit"] - cam_before["softmax_logit"], delta * f[:, i],
                               atol=1e-4, rtol=1e-4)
    logit_change = (grad_after["softmax_logit"] - grad_before["softmax_logit"]).abs().max()
    assert logit_change > 0.05 * grad_before["softmax_logit"].abs().max()
    for s in ("softmax_prob", "log_softmax"):
        scale = grad_before[s].abs().max()
        torch.testing.assert_close(grad_after[s] / scale, grad_before[s] / scale, atol=1e-4, rtol=0)


def test_sigmoid_maps_ignore_the_softmax_head():
    dual = small_dual()
    x = torch.randn(3, 3, 32, 32)
    with CamEngine(dual) as engine:
        before = engine.compute(x, TARGETS, method="gradcam")["sigmoid_logit"]
        dual.softmax_head.fc.weight.data.normal_()
        after = engine.compute(x, TARGETS, method="gradcam")["sigmoid_logit"]
    torch.testing.assert_close(after, before)


# ---------------------------------------------------------------------------------------------- every method


@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_method_returns_finite_float32_maps_per_score(method):
    dual = small_dual(width=4)
    x = torch.randn(2, 3, 16, 16)
    scores = ("softmax_logit", "sigmoid_logit") if method == "cam" else \
        ("softmax_logit", "softmax_prob", "log_softmax", "sigmoid_logit")
    with CamEngine(dual) as engine:
        maps = engine.compute(x, torch.tensor([1, 4]), method=method, scores=scores)
    assert tuple(maps) == scores
    for m in maps.values():
        assert m.shape == (2, 4, 4) and m.dtype == torch.float32 and torch.isfinite(m).all()
        assert not m.requires_grad


def test_gradient_methods_depend_on_the_target_class():
    dual = small_dual()
    x = torch.randn(1, 3, 32, 32)
    with CamEngine(dual) as engine:
        for method in ("gradcam", "gradcampp", "xgradcam", "layercam", "cam"):
            a = engine.compute(x, torch.tensor([0]), method=method)
            b = engine.compute(x, torch.tensor([2]), method=method)
            assert (a["softmax_logit"] - b["softmax_logit"]).abs().max() > 0


def test_scorecam_chunking_does_not_change_maps():
    dual = small_dual(width=4)
    x = torch.randn(2, 3, 16, 16)
    with CamEngine(dual) as engine:
        one = engine.compute(x, torch.tensor([1, 2]), method="scorecam", batch_size=1000)
        chunked = engine.compute(x, torch.tensor([1, 2]), method="scorecam", batch_size=7)
    for s in one:
        torch.testing.assert_close(chunked[s], one[s])


def test_eigencam_sign_convention_and_projection():
    acts = torch.rand(2, 6, 5, 4)
    proj = first_principal_projection(acts)
    assert proj.shape == (2, 5, 4)
    flat = proj.flatten(1)
    assert (flat.amax(1).abs() >= flat.amin(1).abs()).all()
    torch.testing.assert_close(first_principal_projection(acts), proj)  # deterministic


# ---------------------------------------------------------------------------------------------- bad input


def test_cam_needs_a_linear_fc_head():
    split = build_classifier("small_cnn", num_classes=5, width=4)
    split.head = PoolMLPHead(nn.AdaptiveAvgPool2d(1), nn.Linear(16, 5))
    with CamEngine(split) as engine:
        with pytest.raises(ValueError, match="Linear `.fc`"):
            engine.compute(torch.randn(1, 3, 16, 16), torch.tensor([0]), method="cam")
        assert engine.compute(torch.randn(1, 3, 16, 16), torch.tensor([0]))["softmax_logit"].shape == (1, 4, 4)


def test_cam_rejects_non_logit_scores_and_inner_layers():
    dual = small_dual(width=4)
    x = torch.randn(1, 3, 16, 16)
    with CamEngine(dual) as engine, pytest.raises(ValueError, match="not a logit"):
        engine.compute(x, torch.tensor([0]), method="cam", scores="softmax_prob")
    inner = dual.backbone.features[1]
    with CamEngine(dual, target_layer=inner) as engine, pytest.raises(ValueError, match="heads' input"):
        engine.compute(x, torch.tensor([0]), method="cam")


def test_clear_errors_for_scores_methods_and_targets():
    split = build_classifier("small_cnn", num_classes=5, width=4)
    x = torch.randn(2, 3, 16, 16)
    with CamEngine(split) as engine:
        assert set(engine.compute(x, torch.tensor([0, 1]))) == {"softmax_logit"}
        with pytest.raises(ValueError, match="sigmoid branch"):
            engine.compute(x, torch.tensor([0, 1]), scores=("softmax_logit", "sigmoid_logit"))
        with pytest.raises(ValueError, match="unknown score"):
            engine.compute(x, torch.tensor([0, 1]), scores="softmax")
        with pytest.raises(ValueError, match="unknown CAM method"):
            engine.compute(x, torch.tensor([0, 1]), method="gradcam++")
        with pytest.raises(ValueError, match=r"\(B,\) tensor with B = 2"):
            engine.compute(x, torch.tensor([0]))
        with pytest.raises(ValueError, match="integer class indices"):
            engine.compute(x, torch.tensor([0.0, 1.0]))
        with pytest.raises(ValueError, match=r"\[0, 5\)"):
            engine.compute(x, torch.tensor([0, 5]))
        with pytest.raises(TypeError, match="scorecam"):
            engine.compute(x, torch.tensor([0, 1]), method="scorecam", chunk=3)
    with pytest.raises(TypeError, match="DualBranchModel or a SplitClassifier"):
        CamEngine(split.as_module())
    with pytest.raises(ValueError, match="not a module of the backbone"):
        CamEngine(split, target_layer=nn.Conv2d(1, 1, 1))


# ---------------------------------------------------------------------------------------------- post-processing


def test_postprocess_range_constant_maps_and_relu():
    maps = torch.stack([torch.arange(16.0).view(4, 4) - 8, torch.full((4, 4), 3.0), -torch.ones(4, 4)])
    out = postprocess(maps, size=(8, 8))
    assert out.shape == (3, 8, 8) and out.dtype == torch.float32
    assert out[0].min() == 0 and out[0].max() == 1
    assert (out[1] == 0).all() and (out[2] == 0).all()  # constant map, and all-negative map after ReLU
    signed = postprocess(maps, relu=False)
    assert signed[0].min() == 0 and signed[0].max() == 1 and (signed[0] > 0).sum() == 15
    raw = postprocess(maps, size=(8, 8), relu=False, normalize=False)
    assert raw.min() < 0
    nan = postprocess(torch.full((1, 2, 2), float("nan")))
    assert (nan == 0).all()


@pytest.mark.parametrize("mode,flag", [("bilinear", cv2.INTER_LINEAR), ("bicubic", cv2.INTER_CUBIC)])
def test_postprocess_upsampling_matches_cv2_resize(mode, flag):
    maps = torch.rand(2, 7, 5)
    ours = postprocess(maps, size=(28, 20), relu=False, mode=mode, normalize=False)
    theirs = np.stack([cv2.resize(m, (20, 28), interpolation=flag) for m in maps.numpy()])
    np.testing.assert_allclose(ours.numpy(), theirs, atol=1e-5)


def test_bicubic_overshoot_stays_in_unit_range():
    maps = torch.zeros(1, 4, 4)
    maps[0, 1, 1] = 1.0  # a spike: bicubic rings below 0 around it
    assert postprocess(maps, size=(16, 16), relu=False, mode="bicubic", normalize=False).min() < 0
    out = postprocess(maps, size=(16, 16), **paper_postprocess("cam"))
    assert out.min() == 0 and out.max() == 1
    relu_only = postprocess(maps, size=(16, 16), relu=True, mode="bicubic", normalize=False)
    assert relu_only.min() == 0


def test_paper_postprocess_presets():
    assert paper_postprocess("cam") == {"relu": False, "mode": "bicubic", "normalize": True}
    for m in ("gradcam", "gradcampp", "xgradcam", "layercam", "scorecam"):
        assert paper_postprocess(m) == {"relu": True, "mode": "bilinear", "normalize": True}
    with pytest.raises(ValueError, match="unknown CAM method"):
        paper_postprocess("gradcam2")
    with pytest.raises(ValueError, match="mode"):
        postprocess(torch.rand(1, 2, 2), mode="lanczos")
    with pytest.raises(ValueError, match=r"\(B, P, Q\)"):
        postprocess(torch.rand(2, 2))


# ---------------------------------------------------------------------------------------------- token grids


def test_tokens_to_maps_places_each_patch_token():
    tokens = torch.arange(2 * (1 + 6) * 3, dtype=torch.float32).view(2, 7, 3)
    maps = tokens_to_maps(tokens, (2, 3), num_prefix_tokens=1)
    assert maps.shape == (2, 3, 2, 3)
    for p in range(2):
        for q in range(3):
            torch.testing.assert_close(maps[:, :, p, q], tokens[:, 1 + p * 3 + q])


def test_find_grid_sources_and_ambiguity():
    class PatchEmbed(nn.Module):
        grid_size = (2, 6)
        patch_size = (8, 8)

    model = nn.Sequential(PatchEmbed())
    assert find_grid(12, grid=(3, 4)) == (3, 4)
    assert find_grid(12, model=model) == (2, 6)
    assert find_grid(8, model=model, image_size=(16, 32)) == (2, 4)  # dynamic image size via patch_size
    assert find_grid(16) == (4, 4)
    with pytest.raises(ValueError, match="not a perfect square"):
        find_grid(12)
    with pytest.raises(ValueError, match="no patch tokens"):
        find_grid(0)
