"""Every chapter runs through papermill with a tiny parameter set (the interface a GPU user drives).

nbval (``pytest --nbval notebooks/``) checks that the default parameters reproduce the stored outputs; these tests
check the other half of the contract: the ``parameters`` cell really parameterises the notebook, the notebook runs
top to bottom with other values, and the chapters that produce result rows write valid tidy rows to
``results_path``.

The kernels use the repository's default cache (``.cache``) and two threads, exactly like nbval and the book build,
so feature caches and any embedded zoo model not shipped with the package, built here, are the ones the notebooks
would build (same seed, same threads), and later runs reuse them.
"""
from __future__ import annotations

import math
from pathlib import Path

import nbformat
import pytest

from dualcam_lib.paths import REPO_ROOT
from dualcam_lib.results import read_rows

NOTEBOOKS = REPO_ROOT / "notebooks"

# notebook stem -> (tiny parameters, whether it writes result rows to results_path)
TINY = {
    "01_first_look": ({"shifts": [0.0, 1.0]}, False),
    "02_softmax_distortions": ({"photos": ["chelsea"], "shifts": [0.0, 1.0]}, False),
    "03_datasets": ({"n_grid": 4, "n_stats": 40, "n_speed": 32}, False),
    "04_dual_branch_head": ({"epochs": 1, "n_equiv": 32, "n_show": 2, "n_background": 40}, False),
    "05_fine_tuning": ({"max_images": 120, "epochs": 1}, True),
    "05a_real_photos": ({}, False),
    "06_wsol_benchmark": ({"epochs": 1}, True),
    "07_fidelity": ({"datasets": ["synthetic"], "epochs": {"synthetic": 1}, "n_test": 40, "chunk": 20,
                     "eval_batch_size": 20, "n_coverage": 10}, True),
    "08_ablations": ({"epochs": 1, "n_test": 40, "eval_batch_size": 20, "timing_archs": {"small_cnn": 2},
                      "timing_rounds": 1, "timing_iters": 1, "imbalance_of": 0}, True),
    "09_qualitative": ({"datasets": ["synthetic"], "epochs": 1, "n_eval": 40, "n_first": 2, "n_extreme": 1}, False),
    "10_benchmark_tables": ({}, False),
    "11_which_score": ({"n_train": 200, "n_test": 40, "n_demo": 8, "sigmoid_epochs": 1}, True),
    "12_softcam": ({"n_train": 200, "n_test": 40, "softcam_epochs": 1, "sigmoid_epochs": 1}, True),
    "13_agcam_vit": ({"n_head_train": 200, "head_epochs": 1, "n_eval": 32, "abpc_images": 8}, True),
    "14_critical_reading": ({"n_train": 200, "n_test": 50, "n_fidelity": 20, "head_epochs": 1}, False),
}


def test_every_notebook_has_a_tiny_parameter_set():
    stems = sorted(p.stem for p in NOTEBOOKS.glob("[0-9][0-9]*_*.ipynb"))
    assert stems == sorted(TINY), "keep TINY in step with notebooks/"


def _parameter_names(path: Path) -> set[str]:
    nb = nbformat.read(path, as_version=4)
    cells = [c for c in nb.cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(cells) == 1, f"{path.name}: expected exactly one cell tagged 'parameters', found {len(cells)}"
    names = set()
    for line in cells[0].source.splitlines():
        head = line.split("#", 1)[0]
        if "=" in head and not line.startswith((" ", "\t")):
            names.add(head.split("=", 1)[0].strip())
    return names


def _execute(path: Path, out: Path, parameters: dict) -> None:
    """Run one chapter through papermill the way a GPU user does (the notebooks folder as working directory)."""
    import papermill as pm

    pm.execute_notebook(str(path), str(out), parameters=parameters, cwd=str(NOTEBOOKS), progress_bar=False,
                        kernel_name="python3")


@pytest.mark.slow
@pytest.mark.parametrize("stem", sorted(TINY))
def test_notebook_runs_through_papermill_with_tiny_parameters(stem, tmp_path, monkeypatch):
    path = NOTEBOOKS / f"{stem}.ipynb"
    if not path.exists():
        pytest.fail(f"{path} is missing")
    params, writes_rows = TINY[stem]
    names = _parameter_names(path)
    unknown = set(params) - names
    assert not unknown, f"{stem}: tiny parameters {sorted(unknown)} are not in its parameters cell"
    params = dict(params)
    if "num_threads" in names:
        params["num_threads"] = 2
    results = tmp_path / "rows.csv"
    if writes_rows:
        assert "results_path" in names
        params["results_path"] = str(results)
    # Same cache and threads as nbval and the book build (see the module docstring).
    monkeypatch.delenv("DUALCAM_CACHE_DIR", raising=False)
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    out = tmp_path / f"{stem}.out.ipynb"
    _execute(path, out, params)
    executed = nbformat.read(out, as_version=4)
    errors = [o for c in executed.cells if c.cell_type == "code" for o in c.get("outputs", [])
              if o.get("output_type") == "error"]
    assert not errors
    if writes_rows:
        rows = read_rows(results)
        assert len(rows) > 0, f"{stem} wrote no rows to results_path"
        assert all(math.isfinite(v) for v in rows["value"]), f"{stem} wrote non-finite values"
        assert set(rows["source"]) == {"ours"}


@pytest.mark.slow
def test_fine_tuning_runs_an_ablation_as_a_variant(tmp_path, monkeypatch):
    # Chapter 5 with one change of the paper's recipe (here two at once: no clamping, the 1:1 positive weight) writes
    # the sigmoid branch's rows only, under the variant name the tables chapter sets beside the paper's ablations.
    monkeypatch.delenv("DUALCAM_CACHE_DIR", raising=False)
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    results = tmp_path / "rows.csv"
    params = {"max_images": 60, "epochs": 1, "clamp": False, "pos_weight": "1:1", "results_path": str(results),
              "num_threads": 2}
    _execute(NOTEBOOKS / "05_fine_tuning.ipynb", tmp_path / "out.ipynb", params)
    rows = read_rows(results)
    assert set(rows["variant"]) == {"no_clamp,pos_1:1"} and set(rows["branch"]) == {"sigmoid"}
    assert set(rows["method"]) == {"cam", "gradcam"} and "top1_cls" not in set(rows["metric"])
    with pytest.raises(Exception, match="pos_weight must be None, a number or one of"):
        _execute(NOTEBOOKS / "05_fine_tuning.ipynb", tmp_path / "bad.ipynb",
                 {"max_images": 20, "epochs": 1, "pos_weight": "2:1"})


@pytest.mark.slow
def test_fine_tuning_cross_fits_real_imagenet_photos(shared_data_root, tmp_path, monkeypatch):
    # The path that produced the committed ImageNet-val-1000 rows, on 24 real photos: the real loader, torchvision's
    # MobileNetV2 from the weights root, cross-fitted halves, the memoised backbone, and rows for every image once.
    from dualcam_lib.paths import weights_root

    weights = "mobilenet_v2_imagenet_coral_dequant.pth"  # found under the weights root by the notebook
    if not (weights_root() / weights).exists():
        pytest.skip(f"{weights} not under {weights_root()} (set DUALCAM_WEIGHTS_ROOT)")
    monkeypatch.setenv("DUALCAM_CACHE_DIR", str(tmp_path / "cache"))  # tiny real runs stay out of the shared cache
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    results = tmp_path / "rows.csv"
    params = {"dataset": "imagenet-val-1000", "backbone": "mobilenet_v2", "weights": weights,
              "data_root": str(shared_data_root),
              "max_images": 24, "epochs": 1, "methods": ["cam"], "results_path": str(results), "num_threads": 2}
    _execute(NOTEBOOKS / "05_fine_tuning.ipynb", tmp_path / "out.ipynb", params)
    rows = read_rows(results)
    assert set(rows["dataset"]) == {"imagenet-val-1000"} and set(rows["backbone"]) == {"mobilenet_v2"}
    assert set(rows["setting"]) == {"imagenet-val-1000 cross-fit, fresh init"}
    assert set(rows["branch"]) == {"softmax", "sigmoid"}
    config = rows["config"].iloc[0]
    assert '"num_images": 24' in config and '"cross_fit": true' in config
    top1 = rows[(rows["metric"] == "top1_cls") & (rows["branch"] == "softmax")]["value"]
    assert len(top1) == 1 and 0 <= float(top1.iloc[0]) <= 100
