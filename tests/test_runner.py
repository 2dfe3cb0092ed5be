"""The experiment runner on a generated Imagenette-format set with the small CNN: rows, choices, val-only tuning."""
import json

import pandas as pd
import pytest
import torch

from dualcam_lib.heads import restrict_classes
from dualcam_lib.models import build_classifier
from dualcam_lib.runner import RunConfig, run_experiment
from test_data_imagenet_subsets import make_imagenet_subset

SMALL = dict(dataset="imagenette-224", backbone="small_cnn", weights=None, image_size=32, lr_grid=(1e-3, 3e-2),
             epoch_grid=(1, 3), ce_lr_grid=(1e-2,), ce_epoch_grid=(2, 4), seeds=(0, 1), bootstrap_resamples=200,
             methods=("cam", "gradcam"), eval_batch_size=8)


@pytest.fixture
def root(tmp_path):
    return make_imagenet_subset(tmp_path, per_class=(8, 3, 4), size=40)


def run(root, tmp_path, **kw):
    config = RunConfig(**{**SMALL, "data_root": str(root), **kw})
    return run_experiment(config, cache_dir=tmp_path / "cache", log=lambda msg: None)


def test_rows_choices_and_intervals(root, tmp_path):
    result = run(root, tmp_path, ablations=True)
    rows = result.rows
    assert set(rows["branch"]) == {"softmax", "sigmoid"}
    main = rows[rows["variant"] == ""]
    for seed in (0, 1):
        ran = main[main["run_id"].str.endswith(f"-s{seed}")]
        assert set(ran["method"]) == {"cam", "gradcam"}
        assert {"maxboxacc_v2", "gt_known_loc", "top1_loc", "maxboxacc_50"} <= set(ran["metric"])
    # fidelity on the first seed only
    fid = main[main["metric"] == "avg_drop"]
    assert len(fid) == 4 and fid["run_id"].str.endswith("-s0").all()
    # every delta has its interval around it, and a spread over the two seeds
    wide = main[main["metric"].str.startswith("delta_")].pivot_table(index="method", columns="metric", values="value")
    for metric in ("maxboxacc_v2", "gt_known_loc", "avg_drop", "inc_conf"):
        assert (wide[f"delta_{metric}_low"] <= wide[f"delta_{metric}"] + 1e-9).all()
        assert (wide[f"delta_{metric}"] <= wide[f"delta_{metric}_high"] + 1e-9).all()
        # the spread over seeds where every seed is scored (fidelity is scored on the first seed only)
        assert (f"delta_{metric}_seed_sd" in wide.columns) == (metric in ("maxboxacc_v2", "gt_known_loc"))
    # the delta is sigmoid minus softmax of the first seed's rows
    s0 = main[main["run_id"].str.endswith("-s0") & (main["metric"] == "maxboxacc_v2")]
    by = s0.set_index(["method", "branch"])["value"]
    assert wide.loc["cam", "delta_maxboxacc_v2"] == pytest.approx(by["cam", "sigmoid"] - by["cam", "softmax"])
    # ablations: sigmoid rows only
    ablations = rows[rows["variant"].isin(["no_clamp", "pos_1:1", "pos_half"])]
    assert set(rows["variant"]) == {"", "no_clamp", "pos_1:1", "pos_half", "untrained", "clamped"}
    assert (ablations["branch"] == "sigmoid").all()
    # the config records what was searched, what was chosen and the code version
    config = json.loads(main["config"].iloc[0])
    assert config["code_version"] and config["num_test"] == 12 and config["num_val"] == 9
    for family in ("cam", "gradcam"):
        choice = config["choices"][family]
        assert len(choice["grid"]) == 4 and choice["lr"] in SMALL["lr_grid"] and choice["epochs"] in (1, 3)
        assert choice["val_maxboxacc_v2"] == max(g["val_maxboxacc_v2"] for g in choice["grid"])
    assert result.choices == config["choices"]


def test_choices_never_look_at_test_and_runs_repeat(root, tmp_path):
    first = run(root, tmp_path, fidelity=False, seeds=(0,))
    again = run(root, tmp_path, fidelity=False, seeds=(0,))
    pd.testing.assert_frame_equal(first.rows, again.rows)
    # Move every test box to a corner: test metrics change, the val-chosen settings must not.
    loc = root / "imagenette-224" / "metadata" / "test" / "localization.txt"
    loc.write_text("".join(line.split(",")[0] + ",0,0,3,3\n" for line in loc.read_text().splitlines()))
    moved = run(root, tmp_path, fidelity=False, seeds=(0,))
    assert moved.choices == first.choices
    metric = lambda r: r.rows.query("metric == 'maxboxacc_v2' and variant == ''")["value"].tolist()  # noqa: E731
    assert metric(moved) != metric(first)


def test_controls_separate_training_from_clamping(root, tmp_path):
    from dualcam_lib.runner import run_controls

    copy = run(root, tmp_path, head_init="copy", fidelity=False, seeds=(0,))
    rows = copy.rows.query("metric == 'maxboxacc_v2'").set_index(["method", "variant", "branch"])["value"]
    # an untrained copy of the softmax head, clamped, is the clamped softmax branch: the same CAM
    assert rows["cam", "untrained", "sigmoid"] == rows["cam", "clamped", "softmax"]
    only = run_controls(RunConfig(**{**SMALL, "data_root": str(root), "head_init": "copy", "fidelity": False,
                                     "seeds": (0,)}), cache_dir=tmp_path / "cache", log=lambda msg: None)
    assert set(only["variant"]) == {"untrained", "clamped"}
    again = only.query("metric == 'maxboxacc_v2'").set_index(["method", "variant", "branch"])["value"]
    assert again.sort_index().equals(rows[again.index].sort_index())


def test_fine_tuned_heads_and_fast_against_faithful(root, tmp_path):
    result = run(root, tmp_path, setting="finetuned_mlp", methods=("gradcam",), fidelity=False, seeds=(0,),
                 faithful_train=6, faithful_epochs=1)
    softmax_head = result.choices["softmax_head"]
    assert softmax_head["lr"] == 1e-2 and softmax_head["epochs"] in (2, 4) and len(softmax_head["grid"]) == 2
    variants = set(result.rows["variant"])
    assert {"fast_subset", "faithful_subset"} <= variants
    config = json.loads(result.rows.query("variant == 'faithful_subset'")["config"].iloc[0])
    assert config["faithful_train"] == 6 and config["faithful_epochs"] == 1


@pytest.mark.parametrize("change, message", [
    (dict(setting="finetuned"), "RunConfig.setting must be one of"),
    (dict(setting="finetuned_mlp", methods=("cam",)), "CAM needs a linear head"),
    (dict(methods=("gradcam", "nope")), "RunConfig.methods"),
    (dict(lr_grid=()), "RunConfig.lr_grid must not be empty"),
    (dict(head_init="zeros"), "RunConfig.head_init"),
])
def test_bad_configs_are_named(change, message):
    with pytest.raises(ValueError, match=message):
        RunConfig(**{**SMALL, **change})


def test_restrict_classes_keeps_the_selected_logits_and_the_original():
    split = build_classifier("small_cnn", num_classes=10, weights=None)
    split.head.eval()
    before = {k: v.clone() for k, v in split.head.state_dict().items()}
    small = restrict_classes(split, [7, 2, 5])
    small.head.eval()
    features = torch.randn(4, *split.backbone(torch.rand(1, 3, 64, 64)).shape[1:])
    assert torch.equal(small.head(features), split.head(features)[:, [7, 2, 5]])
    assert small.num_classes == 3 and split.num_classes == 10
    assert all(torch.equal(before[k], v) for k, v in split.head.state_dict().items())
    with pytest.raises(ValueError, match="distinct class indices"):
        restrict_classes(split, [1, 1])


def test_the_run_command(root, tmp_path):
    """``python -m dualcam_lib run --set ...`` builds the RunConfig from the command line and merges the rows."""
    from dualcam_lib.cli import main, run_config_from

    config = run_config_from(["dataset=imagewoof-224", "seeds=0,1", "lr_grid=1e-4,1e-3", "fidelity=False",
                              "max_eval=None", "faithful_train=10"])
    assert config.seeds == (0, 1) and config.lr_grid == (1e-4, 1e-3) and config.fidelity is False
    assert config.max_eval is None and config.faithful_train == 10
    for bad, message in ((["nope=1"], "not a RunConfig field"), (["fidelity=maybe"], "expected True or False"),
                         (["batch_size=big"], "expected a number"), (["setting=other"], "RunConfig.setting")):
        with pytest.raises(ValueError, match=message):
            run_config_from(bad)
    out = tmp_path / "rows.csv"
    args = ["run", "--results", str(out), "--cache-dir", str(tmp_path / "cache")]
    for k, v in {**SMALL, "data_root": str(root), "fidelity": False, "seeds": (0,)}.items():
        value = ",".join(map(str, v)) if isinstance(v, tuple) else str(v)
        args += ["--set", f"{k}={value}"]
    assert main(args) == 0
    rows = pd.read_csv(out)
    assert set(rows["branch"]) == {"softmax", "sigmoid"} and (rows["dataset"] == "imagenette-224").all()
    assert main(["run", "--results", str(out), "--set", "setting=bad"]) == 2
