"""The class-mean direction of a linear softmax head (dualcam_lib.analysis): invariance under cross-entropy
gradient steps, geometric decay under weight decay, drift under Adam, and prediction-equivalent centring."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dualcam_lib.analysis import (ClassMeanTracker, centre_head, centred_split, class_mean_cam,
                                  class_mean_component, class_mean_ratio, sgd_class_mean_factor, train_linear_head,
                                  with_head)
from dualcam_lib.cams import CamEngine
from dualcam_lib.models import GapLinearHead, SplitClassifier
from dualcam_lib.train import fit_sigmoid_head_fast
from dualcam_lib.heads import DualBranchModel

C, N, M = 7, 12, 96


def _data(dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(M) % C
    centres = torch.randn(C, N, generator=g, dtype=dtype)
    feats = F.relu(centres[labels] + 0.5 * torch.randn(M, N, generator=g, dtype=dtype))  # >= 0, like GAP of ReLU
    return feats, labels


def _shift(dtype=torch.float64):
    return torch.linspace(-0.5, 0.8, N, dtype=dtype)


# ------------------------------------------------------------------------------------------------ basic quantities
def test_class_mean_component_and_ratio():
    w = torch.tensor([[1.0, 2.0, 0.0], [3.0, -2.0, 0.0]])
    assert torch.equal(class_mean_component(w), torch.tensor([2.0, 0.0, 0.0]))
    # RMS(m) = sqrt(4/3), RMS(W) = sqrt(18/6) = sqrt(3)
    assert class_mean_ratio(w) == pytest.approx((4 / 3) ** 0.5 / 3 ** 0.5)
    assert class_mean_ratio(w - w.mean(0)) == pytest.approx(0.0, abs=1e-12)
    assert class_mean_ratio(torch.ones(4, 3)) == pytest.approx(1.0)


def test_bad_weight_shapes_raise():
    with pytest.raises(ValueError, match=r"\(C, N\)"):
        class_mean_component(torch.zeros(5))
    with pytest.raises(ValueError, match="at least 2 classes"):
        class_mean_ratio(torch.ones(1, 4))
    with pytest.raises(ValueError, match="Linear"):
        centre_head(nn.Conv2d(3, 3, 1))


# ------------------------------------------------------------------------------------------------ the invariance
@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_ce_sgd_without_weight_decay_keeps_class_mean(momentum):
    feats, labels = _data()
    start = nn.Linear(N, C).double()
    with torch.no_grad():
        start.weight.add_(_shift()[None])  # a large class-mean to start from
    head = train_linear_head(feats, labels, C, loss="ce", optimizer="sgd", lr=0.5, momentum=momentum,
                             weight_decay=0.0, epochs=20, batch_size=16, start=start)
    # the head learned something (the weights moved a lot) ...
    moved = (head.weight - start.weight).abs().max()
    assert moved > 0.5
    acc = (head(feats).argmax(1) == labels).double().mean()
    assert acc > 0.9
    # ... but its per-channel class-mean and its mean bias did not move, to float64 tolerance
    torch.testing.assert_close(class_mean_component(head.weight), class_mean_component(start.weight),
                               rtol=0, atol=1e-12)
    assert abs(float(head.bias.detach().mean() - start.bias.detach().mean())) < 1e-12


def test_ce_invariance_in_float32_and_tracker_records_no_drift():
    """A hand-written loop (momentum SGD, label smoothing) with the tracker following the trained Linear."""
    feats, labels = _data(torch.float32)
    start = nn.Linear(N, C)
    with torch.no_grad():
        start.weight.add_(_shift(torch.float32)[None])
    head = train_linear_head(feats, labels, C, optimizer="sgd", lr=0.5, epochs=1, batch_size=16, start=start)
    tracker = ClassMeanTracker(head)
    opt = torch.optim.SGD(head.parameters(), lr=0.5, momentum=0.9)
    for step in range(1, 201):
        idx = torch.randint(0, M, (16,), generator=torch.Generator().manual_seed(step))
        loss = F.cross_entropy(head(feats[idx]), labels[idx], label_smoothing=0.1)  # smoothing keeps sum(y)=1
        opt.zero_grad()
        loss.backward()
        opt.step()
        tracker(step)
    frame = tracker.frame()
    assert list(frame.columns) == ["step", "ratio", "mean_rms", "drift_rms", "bias_mean"]
    assert len(frame) == 201 and frame["step"].iloc[-1] == 200
    assert frame["mean_rms"].iloc[0] > 0.3
    assert frame["drift_rms"].max() < 1e-5  # float32 rounding only, vs a class-mean of RMS ~0.4
    torch.testing.assert_close(class_mean_component(head.weight), class_mean_component(start.weight),
                               rtol=0, atol=1e-5)


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_ce_sgd_weight_decay_shrinks_class_mean_by_predicted_factor(momentum):
    feats, labels = _data()
    start = nn.Linear(N, C).double()
    with torch.no_grad():
        start.weight.add_(_shift()[None])
    lr, wd, epochs, bs = 0.2, 0.1, 10, 16
    steps = epochs * (M // bs)
    head = train_linear_head(feats, labels, C, optimizer="sgd", lr=lr, momentum=momentum, weight_decay=wd,
                             epochs=epochs, batch_size=bs, start=start)
    factor = sgd_class_mean_factor(steps, lr, wd, momentum)[-1].item()
    if momentum == 0:
        assert factor == pytest.approx((1 - lr * wd) ** steps, rel=1e-12)
    assert factor < 0.5  # a visible decay, so the check below can fail
    torch.testing.assert_close(class_mean_component(head.weight), factor * class_mean_component(start.weight),
                               rtol=0, atol=1e-12)
    # torch applies weight_decay to every parameter in the group, the bias included
    assert float(head.bias.detach().mean()) == pytest.approx(factor * float(start.bias.detach().mean()), abs=1e-12)


def test_sgd_class_mean_factor_edge_cases():
    assert torch.equal(sgd_class_mean_factor(5, 0.1, 0.0, 0.9), torch.ones(6, dtype=torch.float64))
    f = sgd_class_mean_factor(3, 0.1, 0.5, 0.0)
    torch.testing.assert_close(f, torch.tensor([1.0, 0.95, 0.95 ** 2, 0.95 ** 3], dtype=torch.float64))
    with pytest.raises(ValueError):
        sgd_class_mean_factor(-1, 0.1, 0.1)


def test_adam_breaks_the_invariance():
    """Adam divides each coordinate's update by its own RMS, so the updates no longer sum to zero over classes."""
    feats, labels = _data()
    start = nn.Linear(N, C).double()
    with torch.no_grad():
        start.weight.add_(_shift()[None])
    head = train_linear_head(feats, labels, C, optimizer="adam", lr=0.01, weight_decay=0.0, epochs=10,
                             batch_size=16, start=start)
    drift = (class_mean_component(head.weight) - class_mean_component(start.weight)).abs().max()
    assert drift > 1e-3  # nine orders of magnitude above the SGD tolerance


def test_bce_moves_the_class_mean():
    """BCE's per-class gradients do not sum to zero: the sigmoid head learns its class-mean from the data."""
    feats, labels = _data()
    start = nn.Linear(N, C).double()
    with torch.no_grad():
        start.weight.add_(_shift()[None])
    head = train_linear_head(feats, labels, C, loss="bce", optimizer="sgd", lr=0.5, epochs=10, batch_size=16,
                             start=start)
    drift = (class_mean_component(head.weight) - class_mean_component(start.weight)).abs().max()
    assert drift > 1e-2


def test_tracker_as_fit_sigmoid_head_callback():
    """The tracker plugs into dualcam_lib.train's sigmoid-head fit (callback(epoch, row))."""
    from dualcam_lib.train import FeatureCache

    feats, labels = _data(torch.float32)
    head = GapLinearHead(N, C)
    split = SplitClassifier("toy", nn.Identity(), head, C)
    dual = DualBranchModel(split)
    tracker = ClassMeanTracker(dual.sigmoid_head)
    cache = FeatureCache(feats, labels, {"arch": "toy", "num_classes": C, "reduction": "gap"})
    fit_sigmoid_head_fast(dual, cache, epochs=3, lr=0.05, optimizer="sgd", weight_decay=0.0, progress=False,
                          callback=tracker)
    assert [r["step"] for r in tracker.history] == [0, 1, 2, 3]
    assert tracker.history[-1]["drift_rms"] > 1e-4  # BCE moves it


def test_train_linear_head_is_reproducible_and_validates():
    feats, labels = _data(torch.float32)
    a = train_linear_head(feats, labels, C, epochs=2, seed=3)
    b = train_linear_head(feats, labels, C, epochs=2, seed=3)
    assert torch.equal(a.weight, b.weight)
    shifted = train_linear_head(feats, labels, C, epochs=0, seed=3, init_shift=torch.ones(N))
    torch.testing.assert_close(class_mean_component(shifted.weight), torch.ones(N), atol=0.02, rtol=0)
    with pytest.raises(ValueError, match="loss"):
        train_linear_head(feats, labels, C, loss="mse")
    with pytest.raises(ValueError, match="labels"):
        train_linear_head(feats, labels + C, C)
    with pytest.raises(ValueError, match="init_shift"):
        train_linear_head(feats, labels, C, init_shift=torch.ones(N + 1))


# ------------------------------------------------------------------------------------------------ centring
def _toy_split(seed=0):
    torch.manual_seed(seed)
    backbone = nn.Sequential(nn.Conv2d(3, N, 3, padding=1), nn.ReLU())
    head = GapLinearHead(N, C)
    with torch.no_grad():
        head.fc.weight.add_(_shift(torch.float32)[None])
        head.fc.bias.add_(0.7)
    return SplitClassifier("toy", backbone.eval(), head.eval(), C, mean=(0.5,) * 3, std=(0.5,) * 3, input_size=8)


def test_centring_keeps_predictions_and_changes_cams_by_the_class_mean_map():
    split = _toy_split()
    centred = centred_split(split)
    assert centred.backbone is split.backbone and centred.head is not split.head
    assert class_mean_ratio(centred.head.fc.weight) < 1e-6
    assert abs(float(centred.head.fc.bias.detach().mean())) < 1e-6
    x = torch.randn(5, 3, 8, 8)
    with torch.no_grad():
        feats = split.backbone(x)
        p_orig = split.head(feats).softmax(-1)
        p_cent = centred.head(feats).softmax(-1)
    torch.testing.assert_close(p_orig, p_cent, rtol=1e-5, atol=1e-6)
    assert torch.equal(p_orig.argmax(1), p_cent.argmax(1))
    targets = torch.tensor([0, 1, 2, 3, 6])
    with CamEngine(split) as e1, CamEngine(centred) as e2:
        cam_orig = e1.compute(x, targets, method="cam", scores="softmax_logit")["softmax_logit"]
        cam_cent = e2.compute(x, targets, method="cam", scores="softmax_logit")["softmax_logit"]
    diff = cam_orig - cam_cent
    torch.testing.assert_close(diff, class_mean_cam(split.head.fc.weight, feats), rtol=1e-5, atol=1e-5)
    assert diff.abs().max() > 0.1  # the shift is large, so the check is not vacuous
    # the original head is untouched
    assert class_mean_ratio(split.head.fc.weight) > 0.3


def test_centre_head_of_linear_and_with_head():
    lin = nn.Linear(4, 3)
    c = centre_head(lin)
    assert c is not lin and isinstance(c, nn.Linear)
    torch.testing.assert_close(c.weight.sum(0), torch.zeros(4), atol=1e-6, rtol=0)
    split = _toy_split()
    other = with_head(split, GapLinearHead(N, C))
    assert other.head is not split.head and other.backbone is split.backbone and other.mean == split.mean


@pytest.mark.parametrize("method", ["cam", "gradcam"])
def test_linear_head_cams_match_the_engine(method):
    from dualcam_lib.analysis import linear_head_cams, with_linear

    split = _toy_split()
    second = with_linear(split.head, centre_head(split.head))
    dual = DualBranchModel(split, sigmoid_head=second)
    x = torch.randn(4, 3, 8, 8)
    targets = torch.tensor([0, 2, 4, 6])
    with CamEngine(dual) as engine:  # paper default: the second ("sigmoid") slot is clamped, softmax is not
        maps = engine.compute(x, targets, method=method)
    with torch.no_grad():
        feats = split.backbone(x)
    torch.testing.assert_close(linear_head_cams(split.head.fc.weight, feats, targets, method),
                               maps["softmax_logit"], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(linear_head_cams(second.fc.weight, feats, targets, method, clamp=True),
                               maps["sigmoid_logit"], rtol=1e-5, atol=1e-6)


def test_linear_head_localisation_finds_a_perfect_box():
    from dualcam_lib.analysis import linear_head_localisation

    feats = torch.zeros(2, 2, 16, 16)
    feats[:, 0, 4:8, 4:8] = 1.0  # channel 0 fires on the object
    feats[:, 1, 10:, 10:] = 1.0  # channel 1 on a distractor
    weight = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    boxes = torch.tensor([[16, 16, 31, 31], [16, 16, 31, 31]])  # the object at 64 px
    good = linear_head_localisation(weight, feats, torch.tensor([0, 0]), boxes, (64, 64))
    bad = linear_head_localisation(weight, feats, torch.tensor([1, 1]), boxes, (64, 64))
    assert good["gt_known_loc"] == 100.0 and bad["gt_known_loc"] == 0.0


def test_evaluate_centring_matches_the_shared_pipeline():
    """One-pass evaluate_centring == experiments.evaluate_cams with the centred head in the second slot."""
    import numpy as np

    from dualcam_lib.analysis import evaluate_centring, with_linear
    from dualcam_lib.data import make_synthetic_wsol
    from dualcam_lib.experiments import evaluate_cams

    data = make_synthetic_wsol(12, seed=3, size=32, num_classes=C)
    torch.manual_seed(0)
    backbone = nn.Sequential(nn.Conv2d(3, N, 3, stride=2, padding=1), nn.ReLU()).eval()
    head = GapLinearHead(N, C).eval()
    with torch.no_grad():
        head.fc.weight.add_(_shift(torch.float32)[None])
    split = SplitClassifier("toy", backbone, head, C, mean=(0.5,) * 3, std=(0.5,) * 3, input_size=32)
    thresholds = np.arange(0, 1, 0.01)
    rows = evaluate_centring(split, data, methods=("cam", "gradcam"), batch_size=5, thresholds=thresholds)
    got = {(r["method"], r["variant"], r["metric"]): r["value"] for r in rows}
    assert got[("head", "", "class_mean_ratio")] == pytest.approx(class_mean_ratio(head.fc.weight))
    assert got[("head", "", "num_images")] == 12
    dual = DualBranchModel(split, sigmoid_head=with_linear(head, centre_head(head)))
    report = evaluate_cams(dual, data, methods=("cam", "gradcam"), clamp=False, batch_size=5, thresholds=thresholds)
    for m in ("cam", "gradcam"):
        for score, variant in (("softmax_logit", ""), ("sigmoid_logit", "centred")):
            ref = report.metrics(m, score)
            for k in ("gt_known_loc", "maxboxacc_v2", "top1_loc"):
                assert got[(m, variant, k)] == pytest.approx(ref[k]), (m, variant, k)
            assert got[(m, variant, "top1_cls")] == pytest.approx(report.top1_cls)


def test_linear_head_fidelity_matches_the_shared_pipeline():
    from dualcam_lib.analysis import linear_head_fidelity, with_linear
    from dualcam_lib.data import make_synthetic_wsol
    from dualcam_lib.experiments import evaluate_cams

    data = make_synthetic_wsol(10, seed=4, size=32, num_classes=C)
    torch.manual_seed(1)
    backbone = nn.Sequential(nn.Conv2d(3, N, 3, stride=2, padding=1), nn.ReLU()).eval()
    head = GapLinearHead(N, C).eval()
    split = SplitClassifier("toy", backbone, head, C, mean=(0.5,) * 3, std=(0.5,) * 3, input_size=32)
    second = nn.Linear(N, C)
    with torch.no_grad():
        second.weight.normal_()
    dual = DualBranchModel(split, sigmoid_head=with_linear(head, second))
    report = evaluate_cams(dual, data, methods=("cam", "gradcam"), wsol=False, fidelity=True, batch_size=4)
    for m in ("cam", "gradcam"):
        for w, clamp, score in ((head.fc.weight, False, "softmax_logit"), (second.weight, True, "sigmoid_logit")):
            got = linear_head_fidelity(split, w.detach(), data.images, method=m, clamp=clamp, batch_size=4)
            ref = report.metrics(m, score)
            assert got["average_drop"] == pytest.approx(ref["avg_drop"], abs=1e-4), (m, score)
            assert got["increase_in_confidence"] == pytest.approx(ref["inc_conf"]), (m, score)


def test_tracker_attaches_to_the_head_train_linear_head_trains():
    feats, labels = _data()
    tracker = ClassMeanTracker()
    head = train_linear_head(feats, labels, C, optimizer="sgd", lr=0.5, epochs=2, batch_size=16,
                             init_shift=_shift(), callback=tracker, every=3)
    assert tracker.linear is head
    steps = [r["step"] for r in tracker.history]
    assert steps == [0, 3, 6, 9, 12]
    assert tracker.history[0]["mean_rms"] > 0.3 and max(r["drift_rms"] for r in tracker.history) < 1e-12
    with pytest.raises(RuntimeError, match="no Linear"):
        ClassMeanTracker().record(0)
