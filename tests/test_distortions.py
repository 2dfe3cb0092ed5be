import torch

from dualcam_lib.analysis import centre_head, with_head
from dualcam_lib.cams import CamEngine
from dualcam_lib.distortions import gap_logits64, shift_channel, shift_logits, sign_collapse
from dualcam_lib.models import build_classifier


def _setup():
    split = build_classifier("small_cnn", num_classes=6, width=8)
    split.backbone.eval()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        feats = split.backbone(x)
    return split, x, feats


def _maps(split, x, targets, scores):
    with CamEngine(split) as eng:
        out = {s: eng.compute(x, targets, method="gradcam", scores=(s,))[s] for s in scores}
        out["cam"] = eng.compute(x, targets, method="cam", scores=("softmax_logit",))["softmax_logit"]
    return out


def test_every_distortion_keeps_probabilities():
    split, _, feats = _setup()
    p0 = gap_logits64(split.head, feats).softmax(-1)
    for head in (shift_channel(split.head, 2, 3.0), sign_collapse(split.head, 5.0), shift_logits(split.head, -7.0)):
        # exact in real arithmetic; what is left is the float32 rounding of the edited weights
        assert (gap_logits64(head, feats).softmax(-1) - p0).abs().max() < 1e-7
    assert not torch.equal(shift_channel(split.head, 2, 3.0).fc.weight, split.head.fc.weight)


def test_channel_shift_moves_cam_by_delta_times_feature_map_and_spares_probability_gradcam():
    split, x, feats = _setup()
    targets = torch.tensor([0, 3, 5])
    scores = ("softmax_logit", "softmax_prob", "log_softmax")
    base = _maps(split, x, targets, scores)
    shifted = _maps(with_head(split, shift_channel(split.head, 4, 2.5)), x, targets, scores)
    assert torch.allclose(shifted["cam"], base["cam"] + 2.5 * feats[:, 4], atol=1e-5)
    assert not torch.allclose(shifted["softmax_logit"], base["softmax_logit"], atol=1e-4)
    for s in ("softmax_prob", "log_softmax"):
        assert torch.allclose(shifted[s], base[s], atol=1e-6), s


def test_sign_collapse_flips_the_cam_and_centring_undoes_every_shift():
    split, x, feats = _setup()
    targets = torch.tensor([1, 1, 2])
    collapsed = with_head(split, sign_collapse(split.head, 10.0))
    cam = _maps(collapsed, x, targets, ())["cam"]
    # with every weight strongly negative, the map is minus the (non-negative) feature energy: all values < 0
    assert (cam < 0).all()
    centred = [centre_head(h.fc).weight for h in (split.head, shift_channel(split.head, 1, 4.0),
                                                  sign_collapse(split.head, 10.0))]
    assert torch.allclose(centred[0], centred[1], atol=1e-5) and torch.allclose(centred[0], centred[2], atol=1e-5)
