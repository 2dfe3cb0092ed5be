"""Parameter counts against the paper's Table 3, and the timing helpers."""
import time

import pytest
import torch
from torch import nn

from dualcam_lib.heads import DualBranchModel
from dualcam_lib.models import build_classifier
from dualcam_lib.overhead import (compare_forward, count_flops, count_parameters, flop_report, parameter_report,
                                  time_forward)


def _report(name, **kw):
    with torch.device("meta"):  # counts only: no memory, no init time
        return parameter_report(build_classifier(name, num_classes=1000, **kw))


def test_resnet50_matches_the_paper_table3():
    r = _report("resnet50")
    assert (r["baseline_params"], r["dual_params"], r["delta_params"]) == (25_557_032, 27_606_032, 2_049_000)
    assert (r["baseline_M"], r["dual_M"], r["delta_M"]) == (25.56, 27.61, 2.05)  # paper: 25.56 -> 27.61, +2.05
    assert round(r["delta_pct"], 2) == 8.02  # paper: 8.02 %


def test_vgg16_gap_is_the_papers_vgg16():
    r = _report("vgg16_gap")
    assert (r["baseline_params"], r["delta_params"]) == (20_459_304, 1_025_000)  # paper: 20.46M, +1.03M
    assert r["baseline_M"] == 20.46 and round(r["delta_pct"], 2) == 5.01  # paper 5.03 (from rounded figures)


def test_inception_v3_gap_is_the_papers_inception_v3():
    r = _report("inception_v3_gap")
    assert (r["baseline_params"], r["delta_params"]) == (26_507_976, 1_025_000)  # paper: 26.51M, +1.03M
    assert (r["baseline_M"], r["dual_M"]) == (26.51, 27.53) and round(r["delta_pct"], 2) == 3.87  # paper 27.54, 3.89


def test_other_counts_documented_in_the_module():
    vgg, inc = _report("vgg16"), _report("inception_v3")
    assert (vgg["baseline_params"], vgg["delta_params"]) == (138_357_544, 123_642_856)
    # torchvision Inception-v3 without aux head; the paper's 26.51M is wsolevaluation's InceptionCam
    assert (inc["baseline_params"], inc["delta_params"]) == (23_834_568, 2_049_000)


def test_report_of_a_dual_model_counts_its_sigmoid_head():
    split = build_classifier("small_cnn", num_classes=10)
    from_split = parameter_report(split)
    dual = DualBranchModel(split)
    from_dual = parameter_report(dual)
    assert from_split == from_dual
    assert from_dual["delta_params"] == 128 * 10 + 10
    assert from_dual["backbone_params"] + from_dual["head_params"] == from_dual["baseline_params"]
    dual.sigmoid_head = nn.Linear(128, 3)  # a different sigmoid head is what gets counted
    assert parameter_report(dual)["delta_params"] == 128 * 3 + 3
    with pytest.raises(TypeError, match="SplitClassifier or a DualBranchModel"):
        parameter_report(nn.Linear(2, 2))


def test_shared_parameters_count_once():
    lin = nn.Linear(3, 4)
    assert count_parameters(lin, nn.Sequential(lin)) == 16


def test_time_forward_calls_warmup_plus_iters_and_times_each():
    calls = []
    res = time_forward(lambda x: calls.append(torch.is_inference_mode_enabled()), torch.zeros(5, 2), iters=4,
                       warmup=2)
    assert len(calls) == 6 and all(calls)
    assert len(res["times_s"]) == len(res["cpu_times_s"]) == 4 and res["iters"] == 4 and res["batch"] == 5
    assert 0 <= res["min_ms"] <= res["median_ms"] and res["mean_ms"] >= res["min_ms"]
    with pytest.raises(ValueError, match="iters"):
        time_forward(lambda x: x, torch.zeros(1), iters=0)
    modes = []
    time_forward(lambda x: modes.append(torch.is_inference_mode_enabled()), torch.zeros(1), iters=1, warmup=0,
                 inference_mode=False)
    assert modes == [False]


def _busy(seconds):
    end = time.process_time() + seconds
    while time.process_time() < end:
        pass


def test_compare_forward_sees_a_slower_function():
    fns = {"fast": lambda x: time.sleep(0.002), "slow": lambda x: time.sleep(0.006)}
    res = compare_forward(fns, torch.zeros(1), rounds=3, iters=2, warmup=0)
    assert set(res) == {"fast", "slow"} and res["fast"]["overhead_pct"] == 0.0
    assert res["slow"]["overhead_pct"] > 40 and res["slow"]["median_ms"] > res["fast"]["median_ms"]
    assert len(res["slow"]["round_medians_ms"]) == 3
    low, high = res["slow"]["overhead_ci95_pct"]
    assert low <= res["slow"]["overhead_pct"] <= high and low > 0
    paired_low, paired_high = res["slow"]["paired_overhead_ci95_pct"]
    assert paired_low <= res["slow"]["paired_overhead_pct"] <= paired_high and paired_low > 40
    assert res["fast"]["paired_overhead_pct"] == 0.0
    assert res["fast"]["min_overhead_pct"] == 0.0 and res["slow"]["min_overhead_pct"] > 40
    assert res["slow"]["min_ms"] <= res["slow"]["median_ms"]
    # sleeping costs no CPU time; spinning does
    assert res["slow"]["cpu_median_ms"] < 2
    busy = compare_forward({"a": lambda x: _busy(0.002), "b": lambda x: _busy(0.006)}, torch.zeros(1), rounds=3,
                           iters=1, warmup=0)
    assert busy["b"]["cpu_overhead_pct"] > 100 and busy["b"]["cpu_median_ms"] >= 6
    with pytest.raises(ValueError, match="baseline"):
        compare_forward(fns, torch.zeros(1), baseline="medium")


def test_dual_forward_adds_exactly_the_sigmoid_heads_flops():
    torch.manual_seed(0)
    split = build_classifier("small_cnn", 10, width=8, input_size=32)
    dual = DualBranchModel(split).eval()
    x = torch.randn(3, 3, 32, 32)
    plain, both = count_flops(split.as_module().eval(), x), count_flops(dual, x)
    fc = dual.sigmoid_head.fc
    assert plain > 0 and both - plain == 2 * x.shape[0] * fc.in_features * fc.out_features
    report = flop_report(dual, x)
    assert (report["plain_flops"], report["dual_flops"]) == (plain, both)
    assert report["overhead_pct"] == pytest.approx(100.0 * (both / plain - 1.0))
