import pandas as pd
import pytest

from dualcam_lib.results import COLUMNS, make_row, paper_rows, read_all, read_rows, write_rows


def _row(value, metric="maxboxacc_v2", run_id="r1"):
    return make_row(dataset="synthetic", backbone="small_cnn", method="gradcam", branch="sigmoid", metric=metric,
                    value=value, run_id=run_id, config={"epochs": 2, "lr": 1e-3})


def test_write_merges_and_replaces_same_key(tmp_path):
    path = tmp_path / "r.csv"
    write_rows(path, [_row(50.0), _row(10.0, metric="pxap")])
    merged = write_rows(path, [_row(55.0)])  # same key: replaces the older value
    assert len(merged) == 2
    back = read_rows(path)
    assert list(back.columns) == COLUMNS
    assert back.loc[back.metric == "maxboxacc_v2", "value"].tolist() == [55.0]
    assert back.loc[back.metric == "pxap", "value"].tolist() == [10.0]


def test_write_is_atomic_no_temp_files_left(tmp_path, monkeypatch):
    path = tmp_path / "r.csv"
    write_rows(path, [_row(1.0)])
    before = path.read_text()

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr("os.replace", boom)
    with pytest.raises(RuntimeError):
        write_rows(path, [_row(2.0, run_id="r2")])
    assert path.read_text() == before  # the old file is intact
    assert [p.name for p in tmp_path.iterdir()] == ["r.csv"]  # and the temporary file was removed


def test_read_rows_names_missing_columns(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("dataset,value\nx,1\n")
    with pytest.raises(ValueError, match="bad.csv.*lacks columns"):
        read_rows(bad)


def test_bad_branch_rejected():
    with pytest.raises(ValueError, match="branch"):
        make_row(dataset="d", backbone="b", method="m", branch="logit", metric="x", value=1)


def test_read_all_concatenates(tmp_path):
    write_rows(tmp_path / "a.csv", [_row(1.0)])
    write_rows(tmp_path / "b.csv", [_row(2.0, run_id="r2")])
    df = read_all(tmp_path)
    assert sorted(df.file.unique()) == ["a.csv", "b.csv"] and len(df) == 2


def test_paper_rows_match_the_published_tables():
    df = paper_rows()
    pick = lambda **kw: df.loc[(df[list(kw)] == pd.Series(kw)).all(axis=1), "value"].tolist()  # noqa: E731
    # Table 2, ResNet-50 CAM + Ours on ImageNet; Table 1, VGG-16 Grad-CAM on Stanford Cars; Table 5, VGG-16 1:1.
    assert pick(dataset="imagenet", backbone="resnet50", method="cam", branch="sigmoid", variant="",
                metric="top1_loc") == [49.44]
    assert pick(dataset="cars", backbone="vgg16", method="gradcam", branch="softmax", metric="avg_drop") == [56.10]
    assert pick(dataset="imagenet", backbone="vgg16", method="gradcam", variant="pos_1:1",
                metric="gt_known_loc") == [12.45]
    assert (df.source == "paper").all()
