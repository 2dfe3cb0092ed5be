"""AG-CAM, attention rollout and AG-CAM's metrics (dualcam_lib.vit) on a tiny timm ViT (32 px, 8 px patches, depth 2)."""
import math

import pytest
import torch
from timm.models.vision_transformer import VisionTransformer

from dualcam_lib import vit as V
from dualcam_lib.cams import postprocess
from dualcam_lib.heads import DualBranchModel
from dualcam_lib.models import build_classifier, split_vit

C = 5


def tiny_split(depth=2, seed=0, global_pool="token"):
    torch.manual_seed(seed)
    net = VisionTransformer(img_size=32, patch_size=8, num_classes=C, embed_dim=32, depth=depth, num_heads=2,
                            global_pool=global_pool)
    # A trained-looking head: larger weights than timm's init, so gradients are not all tiny.
    with torch.no_grad():
        net.head.weight.normal_(0, 0.5)
        net.head.bias.normal_(0, 0.5)
    return split_vit(net, "tiny")


def tiny_dual(depth=2, seed=0):
    dual = DualBranchModel(tiny_split(depth, seed), init="fresh", init_std=0.5)
    return dual


@pytest.fixture
def inputs():
    g = torch.Generator().manual_seed(1)
    return torch.randn(4, 3, 32, 32, generator=g), torch.tensor([0, 3, 1, 4])


def attn_of(split):
    return [b.attn for b in split.backbone.vit.blocks]


# ------------------------------------------------------------------------------------------------ capture


def test_captured_scores_reproduce_fused_attention_output(inputs):
    x, _ = inputs
    split = tiny_split()
    mod = attn_of(split)[1]
    mod.fused_attn = True  # the original forward runs SDPA: no attention matrix exists there
    seen = {}
    h_in = mod.register_forward_pre_hook(lambda m, a: seen.__setitem__("x", a[0].detach()))
    h_out = mod.register_forward_hook(lambda m, a, o: seen.__setitem__("y", o.detach()))
    try:
        with torch.no_grad():
            split.backbone(x)
            y_fused, x_in = seen["y"], seen["x"]
            with V.capture_attention(split.backbone) as rec:
                split.backbone(x)
                scores, attn = rec.scores[1], rec.attentions[1]
    finally:
        h_in.remove(), h_out.remove()
    b, n, c = x_in.shape
    assert scores.shape == (b, 2, n, n)
    v = mod.qkv(x_in).reshape(b, n, 3, 2, c // 2).permute(2, 0, 3, 1, 4)[2]
    y = mod.proj((scores.softmax(-1) @ v).transpose(1, 2).reshape(b, n, c))
    torch.testing.assert_close(y, y_fused, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(attn, scores.softmax(-1))
    # and the scores are q k^T * scale of that input
    q, k = mod.qkv(x_in).reshape(b, n, 3, 2, c // 2).permute(2, 0, 3, 1, 4)[:2]
    torch.testing.assert_close(scores, (q @ k.transpose(-2, -1)) * mod.scale, atol=1e-5, rtol=1e-5)


def test_capture_leaves_outputs_unchanged(inputs):
    x, _ = inputs
    split = tiny_split()
    with torch.no_grad():
        before = split.backbone(x)
        with V.capture_attention(split.backbone, detach_input=True) as rec:
            during = split.backbone(x)
        assert len(rec.scores) == 0  # cleared on exit
    torch.testing.assert_close(during, before, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("fused", [True, False])
def test_hooks_and_fused_attn_restored_also_on_exceptions(inputs, fused):
    x, t = inputs
    dual = tiny_dual()
    mods = attn_of(dual.split)
    for m in mods:
        m.fused_attn = fused
    with torch.no_grad():
        reference = dual(x).softmax_logits

    def untouched():
        for m in mods:
            assert "forward" not in m.__dict__
            assert m.fused_attn is fused
            assert not m._forward_hooks and not m._forward_pre_hooks and not m._backward_hooks

    with V.capture_attention(dual.backbone):
        assert all(m.fused_attn is False and "forward" in m.__dict__ for m in mods)
    untouched()
    with pytest.raises(RuntimeError, match="boom"):
        with V.capture_attention(dual.backbone):
            raise RuntimeError("boom")
    untouched()
    # an error raised by the model's own forward inside agcam / rollout (wrong input size for the patch grid)
    with pytest.raises(Exception):
        V.agcam(dual, torch.randn(2, 3, 40, 40), t[:2])
    untouched()
    with pytest.raises(Exception):
        V.attention_rollout(dual, torch.randn(2, 3, 40, 40))
    untouched()
    V.agcam(dual, x, t)
    V.attention_rollout(dual, x)
    untouched()
    with torch.no_grad():
        torch.testing.assert_close(dual(x).softmax_logits, reference)
    assert all(not p.requires_grad for p in dual.backbone.parameters())
    assert all(p.grad is None for p in dual.parameters())


def test_training_flags_restored(inputs):
    x, t = inputs
    dual = tiny_dual()
    dual.train(True)
    V.agcam(dual, x, t)
    assert dual.sigmoid_head.training and not dual.backbone.training


# ------------------------------------------------------------------------------------------------ AG-CAM


def reference_agcam(split, head, x1, target, detach=True):
    """The authors' recipe written out for one image: explicit blocks, x.detach() at each attention input,
    retain the post-softmax attention's gradient, sum sigmoid(S) * ReLU(grad) over heads and layers."""
    vit = split.backbone.vit
    z = vit.norm_pre(vit.patch_drop(vit._pos_embed(vit.patch_embed(x1))))
    rows = []
    for blk in vit.blocks:
        a = blk.attn
        h = blk.norm1(z)
        h = h.detach() if detach else h
        n, c = h.shape[1], h.shape[2]
        q, k, v = a.qkv(h).reshape(1, n, 3, a.num_heads, c // a.num_heads).permute(2, 0, 3, 1, 4)
        s = (q * a.scale) @ k.transpose(-2, -1)
        att = s.softmax(-1)
        if not att.requires_grad:
            att = att.detach().requires_grad_(True)
        att.retain_grad()
        rows.append((s.detach(), att))
        z = z + blk.ls1(a.proj((att @ v).transpose(1, 2).reshape(1, n, c)))
        z = z + blk.ls2(blk.mlp(blk.norm2(z)))
    tokens = vit.norm(z)
    torch.testing.assert_close(tokens, split.backbone(x1), atol=1e-5, rtol=1e-5)  # the loop is the model
    head(tokens)[0, target].backward()
    m = sum((torch.sigmoid(s[0, :, 0, 1:]) * att.grad[0, :, 0, 1:].clamp(min=0)).sum(0) for s, att in rows)
    return m.reshape(split.grid)


@pytest.mark.parametrize("detach", [True, False])
def test_agcam_matches_per_image_reference(inputs, detach):
    x, t = inputs
    dual = tiny_dual()
    maps = V.agcam(dual, x, t, scores=("softmax_logit", "sigmoid_logit"), detach_attention_input=detach)
    for i in range(x.shape[0]):
        for score, head in (("softmax_logit", dual.softmax_head), ("sigmoid_logit", dual.sigmoid_head)):
            ref = reference_agcam(dual.split, head, x[i:i + 1], int(t[i]), detach)
            torch.testing.assert_close(maps[score][i], ref, atol=1e-6, rtol=1e-4)
    assert maps["softmax_logit"].shape == (4, 4, 4) and bool((maps["softmax_logit"] >= 0).all())


def test_batched_equals_per_image(inputs):
    x, t = inputs
    dual = tiny_dual()
    scores = ("softmax_logit", "softmax_prob", "log_softmax", "sigmoid_logit")
    for detach in (True, False):
        batched = V.agcam(dual, x, t, scores=scores, detach_attention_input=detach)
        for i in range(x.shape[0]):
            single = V.agcam(dual, x[i:i + 1], t[i:i + 1], scores=scores, detach_attention_input=detach)
            for s in scores:
                torch.testing.assert_close(batched[s][i:i + 1], single[s], atol=1e-6, rtol=1e-4)
    roll = V.attention_rollout(dual, x)
    grad = V.vit_gradcam(dual, x, t)
    for i in range(x.shape[0]):
        torch.testing.assert_close(roll[i:i + 1], V.attention_rollout(dual, x[i:i + 1]), atol=1e-6, rtol=1e-5)
        one = V.vit_gradcam(dual, x[i:i + 1], t[i:i + 1])
        for s in one:
            torch.testing.assert_close(grad[s][i:i + 1], one[s], atol=1e-6, rtol=1e-4)


def test_skip_gradients_equal_full_gradients_with_one_block(inputs):
    x, t = inputs
    one = tiny_dual(depth=1)
    a = V.agcam(one, x, t, detach_attention_input=True)["softmax_logit"]
    b = V.agcam(one, x, t, detach_attention_input=False)["softmax_logit"]
    torch.testing.assert_close(a, b)
    two = tiny_dual(depth=2)
    a = V.agcam(two, x, t, detach_attention_input=True)["softmax_logit"]
    b = V.agcam(two, x, t, detach_attention_input=False)["softmax_logit"]
    assert (a - b).abs().max() > 1e-4  # with a later attention module the two gradient paths differ


def test_per_layer_sums_to_total(inputs):
    x, t = inputs
    dual = tiny_dual()
    total = V.agcam(dual, x, t)["sigmoid_logit"]
    layers = V.agcam(dual, x, t, per_layer=True)["sigmoid_logit"]
    assert layers.shape == (4, 2, 4, 4)
    torch.testing.assert_close(layers.sum(1), total)


# ------------------------------------------------------------------------------------------------ invariances
# The chapter states: (1) adding the same linear function of the CLS feature to every softmax logit (the same
# vector added to every row of fc.weight, the same constant to every bias) leaves the softmax probabilities, hence
# the AG-CAM maps from the probability and the log-softmax, unchanged, but changes the map from the softmax logit;
# (2) scaling a head by k > 0 scales its logit map by k (identical after min-max), but not the probability map;
# (3) the sigmoid branch's maps do not depend on the softmax head; (4) rollout does not depend on any head.


def _shift_softmax_head(dual, seed=5):
    g = torch.Generator().manual_seed(seed)
    fc = dual.softmax_head.fc
    with torch.no_grad():
        fc.weight += torch.randn(1, fc.weight.shape[1], generator=g) * 2.0
        fc.bias += 3.0


def _norm(m):
    return postprocess(m, relu=False, mode="nearest", normalize=True)


def test_common_logit_shift_changes_logit_map_only(inputs):
    x, t = inputs
    dual = tiny_dual()
    scores = ("softmax_logit", "softmax_prob", "log_softmax", "sigmoid_logit")
    before = V.agcam(dual, x, t, scores=scores)
    with torch.no_grad():
        p0 = dual(x).softmax_logits.softmax(-1)
    _shift_softmax_head(dual)
    with torch.no_grad():
        torch.testing.assert_close(dual(x).softmax_logits.softmax(-1), p0, atol=1e-6, rtol=1e-5)
    after = V.agcam(dual, x, t, scores=scores)
    for s in ("softmax_prob", "log_softmax", "sigmoid_logit"):
        torch.testing.assert_close(after[s], before[s], atol=1e-6, rtol=1e-4)
    diff = (_norm(after["softmax_logit"]) - _norm(before["softmax_logit"])).abs().max()
    assert diff > 0.05


def test_head_scaling_invariance_of_logit_maps(inputs):
    x, t = inputs
    dual = tiny_dual()
    before = V.agcam(dual, x, t, scores=("softmax_logit", "softmax_prob", "sigmoid_logit"))
    with torch.no_grad():
        for head in (dual.softmax_head, dual.sigmoid_head):
            head.fc.weight *= 3.0
            head.fc.bias *= 3.0
    after = V.agcam(dual, x, t, scores=("softmax_logit", "softmax_prob", "sigmoid_logit"))
    for s in ("softmax_logit", "sigmoid_logit"):
        torch.testing.assert_close(after[s], 3.0 * before[s], atol=1e-6, rtol=1e-4)
        torch.testing.assert_close(_norm(after[s]), _norm(before[s]), atol=1e-5, rtol=1e-4)
    # the probability is not a positive multiple of the logit: its map changes shape, and as the scaled softmax
    # saturates its magnitude collapses instead of growing threefold
    assert (_norm(after["softmax_prob"]) - _norm(before["softmax_prob"])).abs().max() > 0.02
    assert float(after["softmax_prob"].sum()) < 0.5 * float(before["softmax_prob"].sum())


def test_sigmoid_branch_and_rollout_ignore_the_softmax_head(inputs):
    x, t = inputs
    dual = tiny_dual()
    sig = V.agcam(dual, x, t, scores="sigmoid_logit")["sigmoid_logit"]
    roll = V.attention_rollout(dual, x)
    with torch.no_grad():
        dual.softmax_head.fc.weight.normal_()
    torch.testing.assert_close(V.agcam(dual, x, t, scores="sigmoid_logit")["sigmoid_logit"], sig)
    torch.testing.assert_close(V.attention_rollout(dual, x), roll)
    torch.testing.assert_close(V.attention_rollout(dual.split, x), roll)


# ------------------------------------------------------------------------------------------------ rollout


def test_rollout_matches_explicit_product(inputs):
    x, _ = inputs
    split = tiny_split()
    with torch.no_grad(), V.capture_attention(split.backbone) as rec:
        split.backbone(x)
        atts = [a.clone() for a in rec.attentions]
    out = V.attention_rollout(split, x)
    n = atts[0].shape[-1]
    for i in range(x.shape[0]):
        r = torch.eye(n)
        for a in atts:
            m = (a[i].mean(0) + torch.eye(n)) / 2
            m = m / m.sum(-1, keepdim=True)
            r = m @ r
        torch.testing.assert_close(out[i], r[0, 1:].reshape(4, 4))
        assert math.isclose(float(r[0].sum()), 1.0, rel_tol=1e-5)  # rows stay stochastic
    for fusion in ("max", "min"):
        assert V.attention_rollout(split, x, head_fusion=fusion).shape == (4, 4, 4)


# ------------------------------------------------------------------------------------------------ errors


def test_bad_inputs_raise_clear_errors(inputs):
    x, t = inputs
    dual = tiny_dual()
    with pytest.raises(ValueError, match="unknown score"):
        V.agcam(dual, x, t, scores="prob")
    with pytest.raises(ValueError, match="targets"):
        V.agcam(dual, x, t[:2])
    with pytest.raises(ValueError, match="sigmoid branch"):
        V.agcam(dual.split, x, t, scores="sigmoid_logit")
    with pytest.raises(ValueError, match="ViT split"):
        V.agcam(build_classifier("small_cnn", num_classes=3), torch.randn(1, 3, 64, 64), torch.tensor([0]))
    with pytest.raises(ValueError, match="pools 'mean'"):
        V.agcam(tiny_split(global_pool="avg"), x, t)
    with pytest.raises(ValueError, match="no timm Attention"):
        with V.capture_attention(torch.nn.Linear(2, 2)):
            pass
    with pytest.raises(ValueError, match="head_fusion"):
        V.attention_rollout(dual, x, head_fusion="sum")


# ------------------------------------------------------------------------------------------------ localisation


def test_boxes_to_mask_is_the_union_of_inclusive_boxes():
    m = V.boxes_to_mask([torch.tensor([[1, 2, 3, 4], [2, 2, 5, 2]]), torch.zeros(0, 4, dtype=torch.long)], (8, 8))
    assert m.shape == (2, 8, 8) and m.dtype == torch.bool
    assert int(m[0].sum()) == 3 * 3 + 2  # x 1..3, y 2..4, plus (4,2) and (5,2) from the second box
    assert bool(m[0, 4, 3]) and not bool(m[0, 5, 3]) and bool(m[0, 2, 5]) and not bool(m[1].any())


def test_localization_scores_perfect_empty_and_box_region():
    gt = V.boxes_to_mask([torch.tensor([[2, 2, 5, 5]])] * 3, (10, 10))
    perfect = gt.float()
    empty = torch.zeros(10, 10)
    ell = torch.zeros(10, 10)
    ell[2:6, 2] = 1.0
    ell[5, 2:6] = 1.0  # an L inside the box: its bounding box is the GT box
    maps = torch.stack([perfect[0], empty, ell])
    px = V.localization_scores(maps, gt, region="pixels")
    bx = V.localization_scores(maps, gt, region="boxes")
    for k in ("pixel_acc", "iou", "dice", "precision", "recall"):
        assert math.isclose(float(px[k][0]), 1.0, rel_tol=1e-6) and math.isclose(float(bx[k][0]), 1.0, rel_tol=1e-6)
    assert float(px["iou"][1]) < 1e-6 and math.isclose(float(px["pixel_acc"][1]), 84 / 100, rel_tol=1e-6)
    assert math.isclose(float(px["iou"][2]), 7 / 16, rel_tol=1e-5)
    assert math.isclose(float(bx["iou"][2]), 1.0, rel_tol=1e-6)
    assert math.isclose(float(px["dice"][2]), 2 * 7 / (7 + 16), rel_tol=1e-5)


def test_localization_accumulator_skips_wrong_predictions_and_batches():
    g = torch.Generator().manual_seed(0)
    maps = torch.rand(6, 16, 16, generator=g)
    boxes = [torch.tensor([[i, i, i + 7, i + 6]]) for i in range(6)]
    correct = torch.tensor([True, False, True, True, False, True])
    whole = V.AGCAMLocalization()
    whole.accumulate(maps, boxes, correct)
    parts = V.AGCAMLocalization()
    parts.accumulate(maps[:4], boxes[:4], correct[:4])
    parts.accumulate(maps[4:], boxes[4:], correct[4:])
    a, b = whole.compute(), parts.compute()
    assert a["num_images"] == b["num_images"] == 4
    for k in ("pixel_acc", "iou", "dice"):
        assert math.isclose(a[k], b[k], rel_tol=1e-12)
    kept = V.localization_scores(maps[correct], V.boxes_to_mask([boxes[i] for i in range(6) if correct[i]], (16, 16)))
    assert math.isclose(a["iou"], 100 * float(kept["iou"].mean()), rel_tol=1e-9)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        whole.accumulate(maps * 2, boxes, None)


# ------------------------------------------------------------------------------------------------ ABPC


def _fraction_removed_probs(z):
    """A 'model' whose class-0 probability is the fraction of zeroed pixels (inputs have no exact zeros)."""
    frac = (z == 0).all(dim=1).flatten(1).float().mean(1)
    return torch.stack([frac, 1 - frac], dim=1)


def test_perturbation_curves_remove_floor_fraction_of_pixels():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(3, 3, 10, 10, generator=g) + 0.1
    maps = torch.rand(3, 10, 10, generator=g)
    morf, lerf = V.perturbation_curves(_fraction_removed_probs, x, maps, torch.zeros(3, dtype=torch.long), steps=10)
    expected = torch.tensor([(100 * i // 10) / 100 for i in range(11)], dtype=torch.float64)
    torch.testing.assert_close(morf, expected.expand(3, 11))
    torch.testing.assert_close(lerf, expected.expand(3, 11))


def test_abpc_sign_order_and_batching():
    g = torch.Generator().manual_seed(0)
    region = torch.zeros(12, 12, dtype=torch.bool)
    region[3:8, 4:9] = True

    def prob_fn(z):  # confidence in class 0 falls as the region's pixels are zeroed
        evidence = (z.abs().sum(1) * region).flatten(1).sum(1) / region.sum()
        logits = torch.stack([3 * evidence, torch.zeros_like(evidence)], 1)
        return logits.softmax(1)

    x = torch.rand(4, 3, 12, 12, generator=g) + 0.5
    good = region.float() + 0.01 * torch.rand(4, 12, 12, generator=g)
    t = torch.zeros(4, dtype=torch.long)
    m, l = V.perturbation_curves(prob_fn, x, good, t)
    assert bool((V.abpc(m, l) > 0).all())
    m2, l2 = V.perturbation_curves(prob_fn, x, -good, t)
    torch.testing.assert_close(V.abpc(m2, l2), -V.abpc(m, l))  # reversing the order swaps MoRF and LeRF
    torch.testing.assert_close(m[:, 0], prob_fn(x)[:, 0].double())
    torch.testing.assert_close(m[:, -1], prob_fn(torch.zeros_like(x))[:, 0].double())
    acc = V.ABPCAccumulator()
    acc.accumulate(m[:1], l[:1])
    acc.accumulate(m[1:], l[1:])
    assert math.isclose(acc.compute()["abpc"], float(V.abpc(m, l).mean()), rel_tol=1e-9)
    for i in range(4):
        mi, li = V.perturbation_curves(prob_fn, x[i:i + 1], good[i:i + 1], t[i:i + 1])
        torch.testing.assert_close(mi, m[i:i + 1])
        torch.testing.assert_close(li, l[i:i + 1])


# ------------------------------------------------------------------------------------------------ evaluation


def test_evaluate_vit_on_tiny_synthetic_data():
    from dualcam_lib.data import make_synthetic_wsol

    data = make_synthetic_wsol(8, seed=0, size=32, num_classes=C)
    dual = tiny_dual()
    report = V.evaluate_vit(dual, data, methods=("agcam", "rollout", "gradcam"), batch_size=4, abpc_images=3,
                            correct_only=False)
    table = report.table()
    assert list(table["method"]) == ["agcam", "agcam", "rollout", "gradcam", "gradcam"]
    assert set(table["branch"]) == {"softmax", "sigmoid", "none"}
    for col in ("maxboxacc_v2", "gt_known_loc", "pxap", "pixel_acc", "iou", "dice"):
        assert table[col].between(0, 100).all(), col
    assert table["abpc"].between(-100, 100).all()
    assert report.curves[("agcam", "softmax_logit")]["morf_curve"].shape == (11,)
    rows = report.rows(dataset="synthetic", backbone="tiny", setting="test")
    assert {r["branch"] for r in rows} == {"softmax", "sigmoid", ""}
