"""The benchmark scripts run end to end on a tiny setting: they print their table and write their CSV.

Only the plumbing is checked here (columns, the CSV, argument errors); the speed numbers themselves belong to the
benchmark runs, not to tests.
"""
import csv
import importlib.util
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"


def _load(name):
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bench_overhead_prints_and_writes_every_estimate(tmp_path, capsys):
    bench = _load("bench_overhead")
    out = tmp_path / "overhead.csv"
    assert bench.main(["--archs", "small_cnn", "--batch", "2", "--rounds", "3", "--threads", "1",
                       "--csv", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "worst dual-branch forward overhead" in printed and "fastest against fastest call" in printed
    (row,) = list(csv.DictReader(open(out)))
    assert row["arch"] == "small_cnn" and row["batch"] == "2"
    for key in ("forward_overhead_pct", "paired_overhead_pct", "min_overhead_pct", "flops_overhead_pct",
                "extra_head_pct"):
        float(row[key])  # every estimate is a number
    # the sigmoid head is a copy of the softmax head: it adds FLOPs, and exactly its own parameters
    assert float(row["flops_overhead_pct"]) > 0
    assert float(row["params_dual_M"]) > float(row["params_baseline_M"])


def test_bench_overhead_rejects_an_unknown_architecture(capsys):
    bench = _load("bench_overhead")
    with pytest.raises(SystemExit):
        bench.main(["--archs", "resnet51"])
    assert "--archs: unknown ['resnet51']" in capsys.readouterr().err


def test_bench_train_rejects_a_zero_extraction_batch(capsys):
    bench = _load("bench_train")
    with pytest.raises(SystemExit):
        bench.parse_args(["--extract-batch-size", "0"])
    assert "--extract-batch-size must be >= 1" in capsys.readouterr().err
