"""The comparison logic behind chapter 5a: verdicts, the delta table, the paper's deltas, the Styler."""
import json
import math

import pandas as pd
import pytest

from dualcam_lib import report
from dualcam_lib.results import make_row, paper_rows

SETTING = "imagenette-224 pretrained sub-head, fresh init"


def runner_rows(method="gradcam", soft=(50.0, 40.0, 30.0), sig=(54.0, 41.0, 31.0), interval=(1.5, 6.5), sd=1.25,
                dataset="imagenette-224", backbone="mobilenet_v2", setting=SETTING, num_test=300, fidelity=None):
    """Rows in the runner's schema: per-seed MaxBoxAccV2 of both branches (seeds 0, 1, 2 from ``soft`` / ``sig``),
    seed 0's delta with its interval and seed sd; ``fidelity``: {metric: (softmax, sigmoid, low, high)} on seed 0."""
    tag = f"{dataset}-{backbone}-subhead-fresh"
    cfg = {"num_test": num_test, "choices": {}}
    kw = dict(dataset=dataset, backbone=backbone, method=method, setting=setting, config=cfg)
    rows = []
    for seed, (a, b) in enumerate(zip(soft, sig)):
        rows.append(make_row(branch="softmax", metric="maxboxacc_v2", value=a, run_id=f"{tag}-s{seed}", **kw))
        rows.append(make_row(branch="sigmoid", metric="maxboxacc_v2", value=b, run_id=f"{tag}-s{seed}", **kw))
    deltas = {"delta_maxboxacc_v2": sig[0] - soft[0], "delta_maxboxacc_v2_low": interval[0],
              "delta_maxboxacc_v2_high": interval[1], "delta_maxboxacc_v2_seed_sd": sd}
    for metric, (a, b, lo, hi) in (fidelity or {}).items():
        rows.append(make_row(branch="softmax", metric=metric, value=a, run_id=f"{tag}-s0", **kw))
        rows.append(make_row(branch="sigmoid", metric=metric, value=b, run_id=f"{tag}-s0", **kw))
        deltas.update({f"delta_{metric}": b - a, f"delta_{metric}_low": lo, f"delta_{metric}_high": hi})
    for metric, value in deltas.items():
        rows.append(make_row(branch="sigmoid", metric=metric, value=value, run_id=f"{tag}-s0", **kw))
    return rows


def frame(*groups):
    return pd.DataFrame([r for g in groups for r in g])


@pytest.mark.parametrize("low, high, metric, expected", [
    (0.5, 3.0, None, "gain"), (-3.0, -0.5, None, "loss"), (-1.0, 2.0, None, "not resolved"),
    (0.0, 2.0, None, "not resolved"),  # an interval touching 0 does not exclude it
    (0.5, 3.0, "maxboxacc_v2", "sigmoid better"), (-3.0, -0.5, "inc_conf", "sigmoid worse"),
    (0.5, 3.0, "avg_drop", "sigmoid worse"),  # Average Drop rose: worse
    (-3.0, -0.5, "avg_drop", "sigmoid better"),
    (-1.0, 2.0, "avg_drop", "not resolved"),
    (float("nan"), 2.0, "maxboxacc_v2", "no interval"),
])
def test_verdict(low, high, metric, expected):
    assert report.verdict(low, high, metric) == expected


def test_better_direction():
    assert report.better_direction("avg_drop") == -1
    assert report.better_direction("maxboxacc_v2") == report.better_direction("inc_conf") == 1


def test_delta_table_takes_seed_0_and_its_interval():
    # seed 0: 50 -> 54 (interval [1.5, 6.5], better); seeds 1 and 2 differ and must not be used
    rows = frame(runner_rows(),
                 runner_rows(method="cam", soft=(60.0, 0, 0), sig=(58.0, 0, 0), interval=(-4.0, -0.1), sd=0.5),
                 runner_rows(method="layercam", soft=(60.0, 0, 0), sig=(60.5, 0, 0), interval=(-1.0, 2.0)))
    table = report.delta_table(rows, metrics=("maxboxacc_v2",))
    assert list(table.index.get_level_values("method")) == ["cam", "gradcam", "layercam"]  # book order
    key = ("imagenette-224", "mobilenet_v2", "pretrained sub-head, fresh init", "gradcam")
    row = table.loc[key]
    assert row[("maxboxacc_v2", "softmax")] == 50.0 and row[("maxboxacc_v2", "sigmoid")] == 54.0
    assert row[("maxboxacc_v2", "delta")] == pytest.approx(4.0)
    assert (row[("maxboxacc_v2", "low")], row[("maxboxacc_v2", "high")]) == (1.5, 6.5)
    assert row[("maxboxacc_v2", "seed_sd")] == 1.25
    assert row[("n_test", "")] == 300
    assert list(table[("maxboxacc_v2", "verdict")]) == ["sigmoid worse", "sigmoid better", "not resolved"]
    assert row[("maxboxacc_v2", "paper_word")] == "paper: gain"
    assert table.loc[key[:3] + ("layercam",), ("maxboxacc_v2", "paper_word")] == "paper has no such row"
    counts = report.verdict_counts(table, by=())
    assert counts.loc["all"].to_dict() == {"sigmoid better": 1, "sigmoid worse": 1, "not resolved": 1, "total": 3}


def test_delta_table_fidelity_is_lower_is_better_and_has_no_seed_sd():
    rows = frame(runner_rows(fidelity={"avg_drop": (40.0, 30.0, -14.0, -6.0), "inc_conf": (10.0, 9.0, -3.0, 1.0)}))
    table = report.delta_table(rows, metrics=("avg_drop", "inc_conf"))
    assert table[("avg_drop", "delta")].iloc[0] == pytest.approx(-10.0)
    assert table[("avg_drop", "verdict")].iloc[0] == "sigmoid better"
    assert table[("inc_conf", "verdict")].iloc[0] == "not resolved"
    assert math.isnan(table[("avg_drop", "seed_sd")].iloc[0])


def test_delta_table_of_missing_rows_is_empty_not_an_error():
    empty = report.delta_table(pd.DataFrame(columns=paper_rows().columns))
    assert empty.empty and ("maxboxacc_v2", "verdict") in empty.columns
    assert report.verdict_counts(empty).empty
    assert "<table" in report.styled(empty).to_html()


def test_verdict_counts_per_setting_and_dataset():
    rows = frame(runner_rows(), runner_rows(dataset="imagewoof-224", setting="imagewoof-224 pretrained sub-head, "
                                            "fresh init", interval=(-1.0, 1.0)))
    counts = report.verdict_counts(report.delta_table(rows), by=("setting", "dataset"))
    assert counts.loc[("pretrained sub-head, fresh init", "imagenette-224"), "sigmoid better"] == 1
    assert counts.loc[("pretrained sub-head, fresh init", "imagewoof-224"), "not resolved"] == 1
    assert (counts["total"] == 1).all()


def test_paper_delta_tells_no_such_row_from_disagreement():
    cam = report.paper_delta("cam", "maxboxacc_v2")  # Table 2: all three backbones gain
    assert cam.word == "paper: gain" and len(cam.deltas) == 3
    assert cam.summary == "+0.2 .. +1.5 (3 backbones)"
    mixed = report.paper_delta("gradcam", "gt_known_loc")  # VGG-16 gains, ResNet-50 and InceptionV3 lose
    assert mixed.word == "paper: backbones disagree" and mixed.summary.startswith("-1.7 .. +10.4")
    none = report.paper_delta("gradcampp", "maxboxacc_v2")  # no WSOL row for Grad-CAM++ in the paper
    assert none.word == "paper has no such row" and none.deltas == {} and none.cell == "no such row"
    # Table 1 (fidelity): Average Drop falls for Grad-CAM on all four backbone-set pairs, which is a gain
    drop = report.paper_delta("gradcam", "avg_drop")
    assert drop.word == "paper: gain" and all(v < 0 for v in drop.deltas.values()) and len(drop.deltas) == 4


def test_paper_delta_of_edited_rows():
    paper = paper_rows()
    sel = (paper["method"] == "cam") & (paper["metric"] == "maxboxacc_v2") & (paper["branch"] == "sigmoid") & \
          (paper["backbone"] == "vgg16") & (paper["variant"] == "") & (paper["dataset"] == "imagenet")
    paper.loc[sel, "value"] = 0.0
    assert report.paper_delta("cam", "maxboxacc_v2", paper).word == "paper: backbones disagree"


def test_paper_variant_delta():
    no_clamp = report.paper_variant_delta("cam", "no_clamp")  # Table 4: clamping helps CAM on both backbones
    assert no_clamp.word == "paper: loss"
    assert no_clamp.deltas[("imagenet", "vgg16")] == pytest.approx(55.24 - 60.25)
    assert report.paper_variant_delta("cam", "faithful_subset").word == "paper has no such row"


def test_variant_table_against_the_default():
    rows = runner_rows()
    for variant, value in (("no_clamp", 45.0), ("pos_1:1", 56.0)):
        rows.append(make_row(dataset="imagenette-224", backbone="mobilenet_v2", method="gradcam", branch="sigmoid",
                             metric="maxboxacc_v2", value=value, setting=SETTING, variant=variant,
                             run_id="imagenette-224-mobilenet_v2-subhead-fresh-s0"))
    table = report.variant_table(frame(rows), ("no_clamp", "pos_1:1"))
    row = table.iloc[0]
    assert row[("maxboxacc_v2", "default")] == 54.0  # seed 0's default sigmoid head
    assert row[("maxboxacc_v2", "Δ no_clamp")] == pytest.approx(-9.0)
    assert row[("maxboxacc_v2", "Δ pos_1:1")] == pytest.approx(2.0)
    assert row[("maxboxacc_v2", "paper Δ no_clamp")].endswith("loss")
    assert report.variant_table(frame(runner_rows()), ("no_clamp",)).empty


def test_choices_table_and_grid_edge():
    rows = runner_rows()
    cfg = {"num_test": 300, "choices": {
        "gradcam": {"lr": 0.01, "epochs": 5, "val_maxboxacc_v2": 61.0,
                    "grid": [{"lr": lr, "epochs": e, "val_maxboxacc_v2": 50.0} for lr in (1e-3, 1e-2) for e in (2, 5)]},
        "softmax_head": {"lr": 1e-3, "epochs": 5, "val_top1": 88.0,
                         "grid": [{"lr": lr, "epochs": e, "val_top1": 80.0} for lr in (1e-3, 1e-2) for e in (5, 10)]},
        "cam": {"lr": 1e-3, "epochs": 5, "val_maxboxacc_v2": 60.0,  # inside a 3 x 3 grid: no edge
                "grid": [{"lr": lr, "epochs": e, "val_maxboxacc_v2": 50.0} for lr in (1e-4, 1e-3, 1e-2)
                         for e in (2, 5, 10)]}}}
    for r in rows:
        r["config"] = json.dumps(cfg)
    table = report.choices_table(frame(rows))
    assert list(table.index.get_level_values("family")) == ["softmax head", "cam", "gradcam"]
    assert table.loc[table.index.get_level_values("family") == "cam", "grid edge"].item() == ""
    assert table.iloc[0]["val top-1"] == 88.0 and table.iloc[0]["grid edge"] == "lr min, epochs min"
    assert table.iloc[2]["grid edge"] == "lr max, epochs max" and table.iloc[2]["val MaxBoxAccV2"] == 61.0


def test_check_rows_finds_a_wrong_delta():
    rows = frame(runner_rows())
    assert report.check_rows(rows).empty
    bad = rows.copy()
    bad.loc[bad["metric"] == "delta_maxboxacc_v2", "value"] = 9.0
    problems = report.check_rows(bad)
    assert problems["problem"].str.contains("sigmoid - softmax").any()
    assert problems["problem"].str.contains("outside its interval").any()


def test_styled_renders_the_numbers_and_is_deterministic():
    table = report.delta_table(frame(runner_rows()), metrics=("maxboxacc_v2",))
    html = report.styled(table, caption="Imagenette").to_html()
    for text in ("50.0", "54.0", "+4.0 [+1.5, +6.5]", "1.2", "sigmoid better", "MaxBoxAccV2", "MobileNetV2",
                 "Grad-CAM", "+0.8 .. +7.7: gain", "#e3f1e4", "Imagenette"):
        assert text in html, text
    assert "pretrained sub-head" not in html  # the constant setting level is left to the caption
    assert report.styled(table, caption="Imagenette").to_html() == html
    rows = runner_rows()
    rows.append(make_row(dataset="imagenette-224", backbone="mobilenet_v2", method="gradcam", branch="sigmoid",
                         metric="maxboxacc_v2", value=45.04, setting=SETTING, variant="no_clamp",
                         run_id="imagenette-224-mobilenet_v2-subhead-fresh-s0"))
    plain = report.styled_frame(report.variant_table(frame(rows), ("no_clamp",))).to_html()
    for text in ("MaxBoxAccV2", "no clamp", "45.0", "-9.0", "-1.7: loss"):  # paper: -1.72 and -1.67
        assert text in plain, text
    counts = report.styled_frame(pd.DataFrame({"rows": [3, 12], "share": [0.25, 1.0]})).to_html()
    assert ">12<" in counts and ">12.0<" not in counts and ">0.2<" in counts


def test_delta_text_keeps_small_resolved_intervals_readable():
    assert report.delta_text(1.234, -0.44, 2.91) == "+1.2 [-0.4, +2.9]"
    assert report.delta_text(0.03, 0.01, 0.05) == "+0.03 [+0.01, +0.05]"  # not "+0.0 [+0.0, +0.0]"
    assert report.delta_text(-2.0) == "-2.0"
    assert report.delta_text(float("nan")) == "—"


def test_identical_methods_marks_repeated_comparisons():
    rows = frame(runner_rows(method="gradcam"), runner_rows(method="xgradcam"),
                 runner_rows(method="layercam", sig=(54.5, 0, 0)))
    table = report.delta_table(rows, metrics=("maxboxacc_v2",))
    same = report.identical_methods(table)
    assert list(same) == ["", "gradcam", ""]  # XGrad-CAM repeats Grad-CAM; Layer-CAM's sigmoid value differs
    html = report.styled(table, same_as=same).to_html()
    assert "same numbers as" in html and ">Grad-CAM<" in html
    assert "same numbers as" not in report.styled(table).to_html()


def test_controls_table_separates_clamping_from_training():
    from dualcam_lib.report import controls_table
    from dualcam_lib.results import make_row

    def row(branch, variant, value, seed=0):
        return make_row(dataset="imagenette-224", backbone="mobilenet_v2", method="cam", branch=branch,
                        variant=variant, metric="maxboxacc_v2", value=value,
                        setting="imagenette-224 pretrained sub-head, fresh init",
                        run_id=f"imagenette-224-mobilenet_v2-subhead-fresh-s{seed}")

    rows = pd.DataFrame([row("softmax", "", 50.0), row("softmax", "clamped", 53.0), row("sigmoid", "untrained", 52.0),
                         row("sigmoid", "", 52.5), row("sigmoid", "", 40.0, seed=1)])
    table = controls_table(rows)
    got = table.loc[("imagenette-224", "mobilenet_v2", "pretrained sub-head, fresh init", "cam")]
    assert got["Δ clamping"] == pytest.approx(3.0) and got["Δ training"] == pytest.approx(0.5)
    assert got["trained sigmoid"] == 52.5  # seed 0, not seed 1
    assert controls_table(rows[rows["variant"] != "untrained"]).empty
