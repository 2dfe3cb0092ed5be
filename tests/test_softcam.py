"""SoftCAM: the evidence head, its penalty, training determinism and the activation metrics."""
import pytest
import torch

from dualcam_lib.cams import CamEngine, paper_postprocess, postprocess
from dualcam_lib.heads import DualBranchModel
from dualcam_lib.models import GapLinearHead, build_classifier
from dualcam_lib.softcam import (VARIANTS, ActivationOverlap, SoftCamHead, activation_precision,
                                 activation_sensitivity, build_softcam, class_evidence, elasticnet_penalty,
                                 evaluate_activation_overlap, evidence_maps, to_softcam, train_softcam,
                                 variant_lambdas)


def _features(b=3, n=6, p=4, q=5):
    return torch.randn(b, n, p, q)


def test_head_shapes_and_logits_are_the_mean_of_the_maps():
    head = SoftCamHead(6, 4)
    feats = _features()
    maps = head.evidence_maps(feats)
    assert maps.shape == (3, 4, 4, 5)
    logits = head(feats)
    assert logits.shape == (3, 4)
    # The prediction is exactly (bitwise) the spatial average of the maps the head returns.
    assert torch.equal(logits, maps.mean(dim=(2, 3)))


def test_maps_are_a_1x1_convolution_with_the_fc_weights():
    head = SoftCamHead(6, 4)
    feats = _features()
    conv = head.as_conv()
    assert isinstance(conv, torch.nn.Conv2d) and conv.kernel_size == (1, 1)
    torch.testing.assert_close(head.evidence_maps(feats), conv(feats))
    # by hand: A[b, c, p, q] = sum_n W[c, n] F[b, n, p, q] + bias[c]
    by_hand = torch.einsum("cn,bnpq->bcpq", head.fc.weight, feats) + head.fc.bias[None, :, None, None]
    torch.testing.assert_close(head.evidence_maps(feats), by_hand)


def test_dense_head_equals_gap_linear_head_with_the_same_weights():
    gap = GapLinearHead(6, 4)
    head = SoftCamHead.from_linear(gap.fc)
    feats = _features()
    torch.testing.assert_close(head(feats), gap(feats), rtol=1e-5, atol=1e-6)


def test_head_rejects_wrong_channels():
    with pytest.raises(ValueError, match=r"\(B, 6, P, Q\)"):
        SoftCamHead(6, 4).evidence_maps(torch.randn(2, 5, 3, 3))


def test_penalty_matches_a_hand_computation():
    a = torch.tensor([[[[1.0, -2.0], [0.5, 0.0]]], [[[3.0, 0.0], [-1.0, 2.0]]]])  # (2, 1, 2, 2)
    # sum |A| = 3.5 + 6 = 9.5 ; sum A^2 = 5.25 + 14 = 19.25 ; both divided by B = 2
    assert float(elasticnet_penalty(a, 0.1, 0.0)) == pytest.approx(0.1 * 9.5 / 2)
    assert float(elasticnet_penalty(a, 0.0, 0.01)) == pytest.approx(0.01 * 19.25 / 2)
    assert float(elasticnet_penalty(a, 0.1, 0.01)) == pytest.approx(0.1 * 9.5 / 2 + 0.01 * 19.25 / 2)
    assert float(elasticnet_penalty(a, 0.0, 0.0)) == 0.0
    # batch-mean normalisation: duplicating the batch does not change the penalty
    assert float(elasticnet_penalty(torch.cat([a, a]), 0.1, 0.01)) == pytest.approx(
        float(elasticnet_penalty(a, 0.1, 0.01)))


def test_penalty_gradient_is_sign_and_linear():
    a = torch.tensor([[[[1.0, -2.0]]]], requires_grad=True)
    elasticnet_penalty(a, 0.5, 0.25).backward()
    # d/dA (0.5 |A| + 0.25 A^2) = 0.5 sign(A) + 0.5 A
    torch.testing.assert_close(a.grad, torch.tensor([[[[0.5 + 0.5, -0.5 - 1.0]]]]))


def test_penalty_rejects_bad_input():
    with pytest.raises(ValueError, match="B, C, P, Q"):
        elasticnet_penalty(torch.zeros(2, 3), 0.1, 0.0)
    with pytest.raises(ValueError, match=">= 0"):
        elasticnet_penalty(torch.zeros(1, 1, 2, 2), -0.1, 0.0)


def test_variants():
    assert variant_lambdas("dense") == (0.0, 0.0)
    l1, l2 = variant_lambdas("sparse")
    assert l1 > 0 and l2 == 0
    l1, l2 = variant_lambdas("ridge")
    assert l1 == 0 and l2 > 0
    assert set(VARIANTS) == {"dense", "sparse", "ridge"}
    with pytest.raises(ValueError, match="dense"):
        variant_lambdas("lasso-ish")


def test_build_softcam_is_a_split_classifier_with_the_same_start():
    torch.manual_seed(3)
    soft = build_classifier("small_cnn", num_classes=5, width=8)
    torch.manual_seed(3)
    sc = build_softcam("small_cnn", num_classes=5, width=8)
    assert isinstance(sc.head, SoftCamHead) and sc.name == "softcam_small_cnn" and sc.meta["softcam"]
    torch.testing.assert_close(sc.head.fc.weight, soft.head.fc.weight)
    x = torch.randn(2, 3, 32, 32)
    sc.as_module().eval(), soft.as_module().eval()
    with torch.no_grad():
        torch.testing.assert_close(sc.as_module()(x), soft.as_module()(x), rtol=1e-5, atol=1e-6)
        maps = evidence_maps(sc, x)
    assert maps.shape == (2, 5, 8, 8)
    ev = class_evidence(sc, x, torch.tensor([1, 4]))
    torch.testing.assert_close(ev, maps[[0, 1], [1, 4]])


def test_to_softcam_rejects_vit():
    split = build_classifier("small_vit", num_classes=3, depth=1, embed_dim=16, num_heads=2)
    with pytest.raises(ValueError, match="CNN"):
        to_softcam(split)


def test_cam_engine_sees_the_evidence_maps():
    torch.manual_seed(0)
    sc = build_softcam("small_cnn", num_classes=4, width=8)
    with torch.no_grad():
        sc.head.fc.bias.normal_()  # a non-zero bias: CAM ignores it, min-max removes it
    x = torch.randn(3, 3, 32, 32)
    t = torch.tensor([0, 2, 3])
    raw = CamEngine(sc).compute(x, t, method="cam", scores=("softmax_logit",))["softmax_logit"]
    ev = class_evidence(sc, x, t)
    torch.testing.assert_close(raw, ev - sc.head.fc.bias[t][:, None, None], rtol=1e-5, atol=1e-5)
    post = paper_postprocess("cam")
    torch.testing.assert_close(postprocess(raw, size=(32, 32), **post), postprocess(ev, size=(32, 32), **post),
                               rtol=1e-4, atol=1e-4)


def test_softcam_head_works_as_a_sigmoid_branch():
    torch.manual_seed(0)
    dual = DualBranchModel(build_softcam("small_cnn", num_classes=4, width=8))
    assert isinstance(dual.sigmoid_head, SoftCamHead)
    out = dual(torch.randn(2, 3, 32, 32))
    assert out.softmax_logits.shape == out.sigmoid_logits.shape == (2, 4)


class _TinySet:
    def __init__(self, n=24, size=16, classes=3, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.labels = torch.arange(n) % classes
        self.images = torch.rand(n, 3, size, size, generator=g) * 0.3
        for c in range(classes):  # class = which third of the image is bright
            self.images[self.labels == c, c % 3, :, c * size // classes:(c + 1) * size // classes] += 0.6
        self.num_classes = classes


def _train(**kw):
    return train_softcam("small_cnn", _TinySet(), epochs=2, lr=3e-3, batch_size=8, arch_kwargs={"width": 4}, **kw)


def test_training_is_deterministic_for_a_seed_and_leaves_global_rng_alone():
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a = _train(l1=1e-3, l2=1e-3, seed=5)
    after = torch.rand(1)
    assert torch.equal(before, after)  # the caller's RNG stream is untouched
    b = _train(l1=1e-3, l2=1e-3, seed=5)
    for (ka, va), (kb, vb) in zip(a.as_module().state_dict().items(), b.as_module().state_dict().items()):
        assert ka == kb and torch.equal(va, vb), ka
    c = _train(l1=1e-3, l2=1e-3, seed=6)
    assert not torch.equal(a.head.fc.weight, c.head.fc.weight)
    hist = a.meta["softcam"]["history"]
    assert len(hist) == 2 and hist[0]["penalty"] > 0
    assert hist[0]["loss"] == pytest.approx(hist[0]["ce"] + hist[0]["penalty"], rel=1e-5)
    assert not a.backbone.training and not a.head.training


def test_penalty_shrinks_the_maps():
    # measured on the training batches (batch-norm running statistics are still far from converged after a few steps)
    dense = _train(seed=1).meta["softcam"]["history"][-1]["mean_abs_evidence"]
    sparse = _train(l1=0.05, seed=1).meta["softcam"]["history"][-1]["mean_abs_evidence"]
    ridge = _train(l2=0.05, seed=1).meta["softcam"]["history"][-1]["mean_abs_evidence"]
    assert sparse < 0.85 * dense and ridge < 0.85 * dense


def test_training_cache_round_trip(tmp_path):
    a = _train(l1=1e-3, seed=2, cache=True, cache_root=tmp_path)
    assert not a.meta["softcam"]["loaded"]
    b = _train(l1=1e-3, seed=2, cache=True, cache_root=tmp_path)
    assert b.meta["softcam"]["loaded"]
    assert torch.equal(a.head.fc.weight, b.head.fc.weight)


def test_config_rejects_unknown_option_and_arch():
    from dualcam_lib.softcam import softcam_config

    with pytest.raises(ValueError, match="unknown option"):
        softcam_config("small_cnn", momentum=0.9)
    with pytest.raises(ValueError, match="no training recipe"):
        softcam_config("resnet50")
    with pytest.raises(TypeError, match="images"):
        train_softcam("small_cnn", [1, 2, 3])


# ---------------------------------------------------------------- activation precision / sensitivity


def test_activation_precision_and_sensitivity_by_hand():
    maps = torch.zeros(2, 4, 4)
    masks = torch.zeros(2, 4, 4, dtype=torch.bool)
    masks[:, :2, :2] = True                      # object: 4 pixels in each image
    maps[0, :2, :] = 1.0                         # image 0: region = top two rows (8 px), 4 on the object
    maps[1, 0, 0] = 0.7                          # image 1: region = one pixel, on the object (>= 0.5)
    maps[1, 3, 3] = 0.4                          # below the threshold
    prec = activation_precision(maps, masks, reduce=False)
    sens = activation_sensitivity(maps, masks, reduce=False)
    torch.testing.assert_close(prec, torch.tensor([4 / 8, 1.0]))
    torch.testing.assert_close(sens, torch.tensor([4 / 4, 1 / 4]))
    assert float(activation_precision(maps, masks)) == pytest.approx(100 * (0.5 + 1.0) / 2)
    assert float(activation_sensitivity(maps, masks, threshold=0.3)) == pytest.approx(100 * (1.0 + 0.25) / 2)


def test_activation_empty_region_counts_zero_and_accumulator_matches():
    maps = torch.zeros(3, 5, 5)
    maps[1, 1:3, 1:3] = 1.0
    maps[2] = torch.linspace(0, 1, 25).view(5, 5)
    masks = torch.zeros(3, 5, 5, dtype=torch.bool)
    masks[:, 1:4, 1:4] = True
    acc = ActivationOverlap(0.5)
    acc.accumulate(maps[:2], masks[:2])
    acc.accumulate(maps[2:], masks[2:])
    out = acc.compute()
    assert out["empty_maps"] == 1 and out["num_images"] == 3
    assert out["activation_precision"] == pytest.approx(float(activation_precision(maps, masks)))
    assert out["activation_sensitivity"] == pytest.approx(float(activation_sensitivity(maps, masks)))
    assert activation_precision(maps, masks, reduce=False)[0] == 0


def test_activation_metrics_validate_input():
    with pytest.raises(ValueError, match="shape"):
        activation_precision(torch.rand(2, 4, 4), torch.ones(2, 3, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        activation_precision(torch.rand(2, 4, 4) * 3, torch.ones(2, 4, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="threshold"):
        activation_sensitivity(torch.rand(2, 4, 4), torch.ones(2, 4, 4, dtype=torch.bool), threshold=0.0)


def test_evaluate_activation_overlap_on_synthetic_data():
    from dualcam_lib.data import make_synthetic_wsol

    data = make_synthetic_wsol(6, seed=0)
    torch.manual_seed(0)
    sc = build_softcam("small_cnn", num_classes=10, width=8)
    out = evaluate_activation_overlap(sc, data, methods=("cam", "gradcam"), batch_size=4)
    assert set(out) == {("cam", "softmax_logit"), ("gradcam", "softmax_logit")}
    for v in out.values():
        assert v["num_images"] == 6
        assert 0 <= v["activation_precision"] <= 100 and 0 <= v["activation_sensitivity"] <= 100


def test_evidence_layer_only_mode_keeps_the_backbone_and_starts_from_the_head():
    torch.manual_seed(0)
    base = build_classifier("small_cnn", num_classes=3, width=4)
    base.as_module().eval()
    kw = dict(epochs=2, lr=3e-3, batch_size=8, arch_kwargs={"width": 4}, init_from=base, train_backbone=False)
    with pytest.raises(ValueError, match="init_from"):
        train_softcam("small_cnn", _TinySet(), epochs=1, train_backbone=False)
    zero = train_softcam("small_cnn", _TinySet(), epochs=0, init_from=base, train_backbone=False)
    torch.testing.assert_close(zero.head.fc.weight, base.head.fc.weight)  # "copy": the softmax head to start with
    a = train_softcam("small_cnn", _TinySet(), l1=1e-2, **kw)
    b = train_softcam("small_cnn", _TinySet(), l1=1e-2, **kw)
    assert torch.equal(a.head.fc.weight, b.head.fc.weight)
    assert not torch.equal(a.head.fc.weight, base.head.fc.weight)
    for (k, va), vb in zip(a.backbone.state_dict().items(), base.backbone.state_dict().values()):
        assert torch.equal(va, vb), k  # frozen: weights and batch-norm statistics untouched
    assert a.backbone is not base.backbone  # a copy: the model it started from is not modified
    with pytest.raises(ValueError, match="backbone_arch"):
        train_softcam("resnet18", _TinySet(), init_from=base, train_backbone=False)


def test_shared_features_give_the_same_evidence_layer_and_are_checked():
    from dualcam_lib.softcam import frozen_features

    torch.manual_seed(0)
    base = build_classifier("small_cnn", num_classes=3, width=4)
    data = _TinySet()
    kw = dict(epochs=1, lr=3e-3, batch_size=8, arch_kwargs={"width": 4}, init_from=base, train_backbone=False,
              head_init="fresh", l2=1e-2)
    feats = frozen_features(base, data.images)
    assert feats.shape == (24, 16, 4, 4)
    a = train_softcam("small_cnn", data, **kw)
    b = train_softcam("small_cnn", data, features=feats, **kw)
    torch.testing.assert_close(a.head.fc.weight, b.head.fc.weight)
    with pytest.raises(ValueError, match="not init_from's backbone features"):
        train_softcam("small_cnn", data, features=feats.flip(0), **kw)
    with pytest.raises(ValueError, match="N=24"):
        train_softcam("small_cnn", data, features=feats[:5], **kw)
