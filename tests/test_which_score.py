"""The invariances the "which score" chapter claims, on a small random model.

Two ways to change a softmax head without changing its probabilities:
(a) add a constant c to every logit (the bias);
(b) the per-channel shift of the paper's Eq. 9: ``w'[:, i] = w[:, i] + delta`` for every class, which adds
    ``delta * mean(F_i)`` to every logit: an offset that depends on the input.
"""
import copy

import pytest
import torch

from dualcam_lib.cams import CamEngine
from dualcam_lib.heads import DualBranchModel
from dualcam_lib.models import build_classifier

GRADIENT_METHODS = ("gradcam", "gradcampp", "xgradcam", "layercam")
ALL_SCORES = ("softmax_logit", "softmax_prob", "log_softmax", "sigmoid_logit")
CHANNEL, DELTA = 3, 0.7


def _split(seed=0):
    torch.manual_seed(seed)
    split = build_classifier("small_cnn", num_classes=5, width=8)
    split.as_module().eval()
    with torch.no_grad():  # BN statistics that keep the post-ReLU features varied
        for m in split.backbone.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
        split.head.fc.weight.mul_(8)  # logits of a few units: softmax neither flat nor saturated
    return split


def _shifted(split, kind):
    other = copy.deepcopy(split)
    with torch.no_grad():
        if kind == "bias":
            other.head.fc.bias += 5.0
        else:
            other.head.fc.weight[:, CHANNEL] += DELTA
    return other


def _pair(kind):
    split = _split()
    sigmoid_head = copy.deepcopy(split.head)
    with torch.no_grad():
        sigmoid_head.fc.weight.normal_(0, 0.3)
    other = _shifted(split, kind)
    # The same sigmoid branch on both: it is trained on the features, never on the softmax head.
    return (DualBranchModel(split, sigmoid_head=copy.deepcopy(sigmoid_head)),
            DualBranchModel(other, sigmoid_head=copy.deepcopy(sigmoid_head)))


def _inputs():
    g = torch.Generator().manual_seed(1)
    return torch.randn(4, 3, 32, 32, generator=g), torch.tensor([0, 1, 2, 4])


def _maps(model, x, t, method, scores=ALL_SCORES):
    return CamEngine(model).compute(x, t, method=method, scores=scores, clamp=False)


def _close(a, b):
    scale = max(float(a.abs().max()), float(b.abs().max()), 1e-12)
    return float((a - b).abs().max()) <= 1e-4 * scale


@pytest.mark.parametrize("kind", ["bias", "channel"])
def test_both_shifts_keep_the_softmax_output(kind):
    a, b = _pair(kind)
    x, _ = _inputs()
    with torch.no_grad():
        oa, ob = a(x), b(x)
    torch.testing.assert_close(oa.softmax_logits.softmax(-1), ob.softmax_logits.softmax(-1), rtol=1e-5, atol=1e-6)
    diff = ob.softmax_logits - oa.softmax_logits
    # every class's logit moves by the same amount ...
    torch.testing.assert_close(diff, diff[:, :1].expand_as(diff), rtol=1e-5, atol=1e-5)
    # ... a constant for the bias shift, delta * mean(F_i) (input dependent) for the channel shift
    if kind == "bias":
        torch.testing.assert_close(diff[:, 0], torch.full((4,), 5.0), rtol=1e-5, atol=1e-5)
    else:
        expected = DELTA * oa.features[:, CHANNEL].mean(dim=(1, 2))
        torch.testing.assert_close(diff[:, 0], expected, rtol=1e-4, atol=1e-5)
        assert float(expected.std()) > 1e-3  # it really depends on the image


@pytest.mark.parametrize("method", GRADIENT_METHODS)
def test_constant_logit_offset_changes_no_map(method):
    a, b = _pair("bias")
    x, t = _inputs()
    ma, mb = _maps(a, x, t, method), _maps(b, x, t, method)
    for s in ALL_SCORES:  # a constant has zero gradient: even the logit maps are unchanged
        assert _close(ma[s], mb[s]), s


@pytest.mark.parametrize("method", GRADIENT_METHODS)
def test_channel_shift_leaves_post_softmax_and_sigmoid_maps_unchanged(method):
    a, b = _pair("channel")
    x, t = _inputs()
    ma, mb = _maps(a, x, t, method), _maps(b, x, t, method)
    for s in ("softmax_prob", "log_softmax", "sigmoid_logit"):
        assert _close(ma[s], mb[s]), s


@pytest.mark.parametrize("method", GRADIENT_METHODS)
def test_channel_shift_changes_the_softmax_logit_map(method):
    a, b = _pair("channel")
    x, t = _inputs()
    ma, mb = _maps(a, x, t, method, ("softmax_logit",)), _maps(b, x, t, method, ("softmax_logit",))
    change = float((ma["softmax_logit"] - mb["softmax_logit"]).abs().max())
    assert change > 0.05 * float(ma["softmax_logit"].abs().max())


def test_channel_shift_changes_gradcam_and_cam_exactly_by_delta_times_the_channel():
    a, b = _pair("channel")
    x, t = _inputs()
    with torch.no_grad():
        feats = a.backbone(x)
    f_i = feats[:, CHANNEL]
    p, q = f_i.shape[-2:]
    # Grad-CAM: every channel weight alpha_i gains delta / (P Q), so the map gains (delta / PQ) F_i
    ga, gb = _maps(a, x, t, "gradcam", ("softmax_logit",)), _maps(b, x, t, "gradcam", ("softmax_logit",))
    torch.testing.assert_close(gb["softmax_logit"] - ga["softmax_logit"], DELTA / (p * q) * f_i,
                               rtol=1e-4, atol=1e-5)
    # CAM: the map gains delta F_i (the paper's Eq. 9)
    ca, cb = _maps(a, x, t, "cam", ("softmax_logit",)), _maps(b, x, t, "cam", ("softmax_logit",))
    torch.testing.assert_close(cb["softmax_logit"] - ca["softmax_logit"], DELTA * f_i, rtol=1e-4, atol=1e-5)


def test_log_softmax_gradcam_weights_are_logit_weights_minus_their_probability_weighted_mean():
    a, _ = _pair("channel")
    x, t = _inputs()
    with torch.no_grad():
        feats = a.backbone(x)
        probs = a.softmax_head(feats).softmax(-1)
    p, q = feats.shape[-2:]
    w = a.softmax_head.fc.weight  # GAP + Linear: d z_k / d F = w_k / PQ at every position
    alpha = (w[t] - probs @ w) / (p * q)
    expected = torch.einsum("bn,bnpq->bpq", alpha, feats)
    got = _maps(a, x, t, "gradcam", ("log_softmax",))["log_softmax"]
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


def test_the_sigmoid_head_has_no_such_family():
    """The same per-channel shift applied to the sigmoid head changes its outputs: a sigmoid branch's logits are
    pinned down by its probabilities, so its maps cannot drift along this direction without changing the model."""
    a, _ = _pair("channel")
    x, _ = _inputs()
    shifted = copy.deepcopy(a.sigmoid_head)
    with torch.no_grad():
        shifted.fc.weight[:, CHANNEL] += DELTA
        feats = a.backbone(x)
        before, after = a.sigmoid_head(feats).sigmoid(), shifted(feats).sigmoid()
    assert float((before - after).abs().min()) > 1e-3  # every class of every image moves (softmax: < 1e-6)


@pytest.mark.parametrize("method", ["gradcam", "xgradcam", "layercam"])
def test_probability_maps_are_log_softmax_maps_times_the_probability(method):
    """d p_k = p_k d log p_k: for methods linear (or positively homogeneous) in the gradient the two post-softmax
    scores give the same map up to a positive factor per image, hence the same map after min-max normalisation."""
    a, _ = _pair("channel")
    x, t = _inputs()
    with torch.no_grad():
        p = a(x).softmax_logits.softmax(-1).gather(1, t[:, None])[:, 0]
    m = _maps(a, x, t, method, ("softmax_prob", "log_softmax"))
    torch.testing.assert_close(m["softmax_prob"], p[:, None, None] * m["log_softmax"], rtol=1e-4, atol=1e-7)


def test_gradcampp_is_not_scale_free_in_the_gradient():
    """Grad-CAM++'s weights a = g^2 / (2 g^2 + sum(A) g^3) change when g is scaled, so probability and log-softmax
    give different Grad-CAM++ maps (not just a rescaling)."""
    from dualcam_lib.cams import postprocess

    a, _ = _pair("channel")
    x, t = _inputs()
    m = _maps(a, x, t, "gradcampp", ("softmax_prob", "log_softmax"))
    pa, pb = (postprocess(m[s], size=(32, 32)) for s in ("softmax_prob", "log_softmax"))
    assert float((pa - pb).abs().max()) > 1e-3
