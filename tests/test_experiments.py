import pytest
import torch

from dualcam_lib.data import make_synthetic_wsol
from dualcam_lib.experiments import cross_fit_halves, evaluate_cams, table_from_rows
from dualcam_lib.heads import DualBranchModel
from dualcam_lib.models import build_classifier


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    data = make_synthetic_wsol(48, seed=3, size=32)
    dual = DualBranchModel(build_classifier("small_cnn", num_classes=10, width=8), init="fresh")
    return dual, data


def test_report_table_and_rows(setup):
    dual, data = setup
    rep = evaluate_cams(dual, data, methods=("cam", "gradcam"), fidelity=True, batch_size=16)
    table = rep.table()
    assert list(table.columns[:4]) == ["method", "score", "branch", "top1_cls"]
    assert len(table) == 4 and set(table.branch) == {"softmax", "sigmoid"}
    for col in ("maxboxacc_v2", "gt_known_loc", "pxap", "avg_drop", "inc_conf"):
        assert table[col].between(0, 100).all(), col
    rows = rep.rows(dataset="synthetic", backbone="small_cnn", setting="test")
    # top1_cls only on softmax rows; every (method, branch) carries the WSOL and fidelity metrics
    assert sum(r["metric"] == "top1_cls" for r in rows) == 2
    pivot = table_from_rows(rows)
    assert pivot.loc[("small_cnn", "cam", "sigmoid"), "maxboxacc_v2"] == pytest.approx(
        float(table.query("method == 'cam' and branch == 'sigmoid'").maxboxacc_v2.iloc[0]))


def test_cross_fit_accumulation_equals_one_joint_evaluation(setup):
    dual, data = setup
    a, b = cross_fit_halves(len(data), seed=1)
    assert len(set(a.tolist()) & set(b.tolist())) == 0 and len(a) + len(b) == len(data)
    joint = evaluate_cams(dual, data, methods=("gradcam",), batch_size=16)
    part = evaluate_cams(dual, data.subset(a), methods=("gradcam",), batch_size=16)
    both = evaluate_cams(dual, data.subset(b), methods=("gradcam",), batch_size=16, accumulate_into=part)
    assert both.num_images == len(data)
    for key in joint.wsol:
        assert both.wsol[key]["maxboxacc_v2"] == pytest.approx(joint.wsol[key]["maxboxacc_v2"])
        assert both.wsol[key]["gt_known_loc"] == pytest.approx(joint.wsol[key]["gt_known_loc"])
        assert both.pxap[key]["pxap"] == pytest.approx(joint.pxap[key]["pxap"], abs=1e-9)


def test_pxap_requested_without_masks_is_an_error(setup):
    dual, data = setup
    no_masks = [b._replace(masks=None) for b in data.batches(16)]
    with pytest.raises(ValueError, match="no masks"):
        evaluate_cams(dual, no_masks, methods=("cam",), pxap=True)
