import json
import subprocess
import sys

import nbformat
import pytest

from dualcam_lib.cli import MAX_TAG, parse_grid, run_grid, run_tag
from dualcam_lib.results import read_rows


def _notebook(path):
    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell("value = 1.0\nresults_path = None")
    params.metadata["tags"] = ["parameters"]
    body = nbformat.v4.new_code_cell(
        "from dualcam_lib.results import make_row, write_rows\n"
        "if value == 'fail':\n    raise RuntimeError('asked to fail')\n"
        "write_rows(results_path, [make_row(dataset='d', backbone='b', method='m', branch='sigmoid',\n"
        "                                   metric='score', value=value, run_id=str(value))])")
    nb.cells = [params, body]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)
    return path


def test_parse_grid_keeps_lists_and_dicts_whole():
    grid = parse_grid(["methods=['cam','gradcam'],['cam']", "epochs={'a': 1, 'b': 2}"])
    assert grid == [{"methods": ["cam", "gradcam"], "epochs": {"a": 1, "b": 2}},
                    {"methods": ["cam"], "epochs": {"a": 1, "b": 2}}]
    with pytest.raises(SystemExit, match="unbalanced"):
        parse_grid(["methods=['cam'"])


def test_run_tag_stays_short_and_distinct_for_long_parameter_sets():
    a = {"data_root": "/work/shared/data", "methods": ["cam", "gradcam", "gradcampp", "xgradcam", "layercam"],
         "backbone": "efficientnet_lite0", "weights": "default", "fidelity": True, "head_init": "fresh"}
    b = dict(a, backbone="mobilenet_v2")
    assert len(run_tag(a)) <= MAX_TAG and len(run_tag(b)) <= MAX_TAG
    assert run_tag(a) != run_tag(b) and run_tag(a) == run_tag(dict(a))
    assert run_tag({"epochs": 2}) == "epochs-2"


def test_parse_grid_is_the_cartesian_product():
    grid = parse_grid(["a=1,2", "b=x,None"])
    assert grid == [{"a": 1, "b": "x"}, {"a": 1, "b": None}, {"a": 2, "b": "x"}, {"a": 2, "b": None}]


def test_grid_collects_rows_reports_failures_and_resumes(tmp_path):
    nb = _notebook(tmp_path / "nb.ipynb")
    results = tmp_path / "all.csv"
    logs = []
    summary = run_grid(nb, parse_grid(["value=1.5,fail,2.5"]), tmp_path / "out", results, log=logs.append)
    assert summary["ok"] == ["value-1.5", "value-2.5"]
    assert [t for t, _ in summary["failed"]] == ["value-fail"]
    assert "asked to fail" in summary["failed"][0][1]
    assert sorted(read_rows(results).value.tolist()) == [1.5, 2.5]  # the failure lost nobody's rows
    # a second run resumes: finished parameter sets are skipped, the failed one is tried again
    summary2 = run_grid(nb, parse_grid(["value=1.5,fail,2.5"]), tmp_path / "out", results, log=logs.append)
    assert summary2["skipped"] == ["value-1.5", "value-2.5"] and len(summary2["failed"]) == 1


def test_cli_grid_exit_code_and_json(tmp_path):
    nb = _notebook(tmp_path / "nb.ipynb")
    out = subprocess.run([sys.executable, "-m", "dualcam_lib", "grid", "--notebook", str(nb), "--param", "value=3",
                          "--out", str(tmp_path / "o")], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout[out.stdout.index("{"):])["ok"] == ["value-3"]
    missing = subprocess.run([sys.executable, "-m", "dualcam_lib", "grid", "--notebook", str(tmp_path / "nope.ipynb"),
                              "--out", str(tmp_path / "o")], capture_output=True, text=True, timeout=60)
    assert missing.returncode == 2 and "nope.ipynb" in missing.stderr
