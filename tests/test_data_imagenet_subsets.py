"""Imagenette / Imagewoof loaders: generated folders in the sets' real on-disk format, and the real sets when present."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from dualcam_lib.data import load_dataset
from dualcam_lib.data.datasets import read_imagenet_subset_classes

CLASSES = [("n01440764", 0, "tench, Tinca tinca"), ("n02102040", 217, "English springer, English springer spaniel"),
           ("n02979186", 482, "cassette player")]


def _jpeg(path, rng, size, label):
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = rng.integers(0, 80, (size, size, 3), dtype=np.uint8)
    lo, hi = size // 4, 3 * size // 4
    pixels[lo:hi, lo:hi, label % 3] = 230  # one bright square per photo, its colour says the class
    Image.fromarray(pixels).save(path, quality=92)
    return lo, lo, hi - 1, hi - 1


def make_imagenet_subset(root, name="imagenette-224", per_class=(6, 2, 3), size=48, seed=0):
    """A folder laid out exactly as ``../shared/data/<name>``: ``classes.txt``, ``images/train/<wnid>/*.JPEG``,
    ``images/val/ILSVRC2012_val_*.JPEG`` and wsolevaluation metadata for train (no boxes), val and test."""
    rng = np.random.default_rng(seed)
    base = root / name
    base.mkdir(parents=True)
    (base / "classes.txt").write_text("".join(f"{k},{w},{row},{n}\n" for k, (w, row, n) in enumerate(CLASSES)))
    counter = 0
    for split, count in zip(("train", "val", "test"), per_class):
        ids, boxes = [], {}
        for label, (wnid, _, _) in enumerate(CLASSES):
            for j in range(count):
                counter += 1
                image_id = (f"train/{wnid}/{wnid}_{j}.JPEG" if split == "train"
                            else f"val/ILSVRC2012_val_{counter:08d}.JPEG")
                boxes[image_id] = _jpeg(base / "images" / image_id, rng, size, label)
                ids.append((image_id, label))
        meta = base / "metadata" / split
        meta.mkdir(parents=True)
        (meta / "image_ids.txt").write_text("".join(f"{i}\n" for i, _ in ids))
        (meta / "class_labels.txt").write_text("".join(f"{i},{k}\n" for i, k in ids))
        (meta / "image_sizes.txt").write_text("".join(f"{i},{size},{size}\n" for i, _ in ids))
        if split != "train":
            (meta / "localization.txt").write_text("".join(f"{i},{','.join(map(str, boxes[i]))}\n" for i, _ in ids))
    return root


@pytest.fixture
def subset_root(tmp_path):
    return make_imagenet_subset(tmp_path)


def test_three_splits_in_the_real_format(subset_root):
    sizes = {}
    for split in ("train", "val", "test"):
        ds = load_dataset("imagenette-224", split, data_root=subset_root, size=32)
        sizes[split] = len(ds)
        assert ds.num_classes == 3 and ds.imagenet_index == [0, 217, 482]
        assert ds.class_names[0] == "tench, Tinca tinca"  # names keep their commas
        item = ds[0]
        assert item["image"].shape == (3, 32, 32)
        assert item["boxes"].shape == ((0, 4) if split == "train" else (1, 4))
        if split != "train":  # a 48-px box [12, 35] at 32 px: int(x * 32 / 48)
            assert item["boxes"][0].tolist() == [8, 8, 23, 23]
    assert sizes == {"train": 18, "val": 6, "test": 9}
    sub = load_dataset("imagenette-224", "test", data_root=subset_root, size=32, n=4, seed=1)
    assert len(sub) == 4 and sub.imagenet_index == [0, 217, 482]
    assert load_dataset("imagenette-224", "train", data_root=subset_root).train  # the random train transform


@pytest.mark.parametrize("lines, message", [
    (["0,n01440764,0,tench", "2,n02102040,217,springer"], "line 2: label '2' out of order"),
    (["0,n01440764,zero,tench"], "line 1: imagenet_index 'zero'"),
    (["0,n01440764,1000,tench"], r"\[0, 1000\)"),
    (["0,n01440764,5,tench", "1,n02102040,5,springer"], "line 2: imagenet_index 5 repeats line 1"),
    (["0,n01440764"], "line 1: expected 'label,wnid,imagenet_index,name'"),
])
def test_bad_class_maps_name_the_file_and_line(tmp_path, lines, message):
    path = tmp_path / "classes.txt"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=message) as info:
        read_imagenet_subset_classes(path)
    assert str(path) in str(info.value)


def test_missing_parts_and_bad_labels_are_named(subset_root):
    with pytest.raises(ValueError, match="split must be 'train', 'val' or 'test'"):
        load_dataset("imagenette-224", "valid", data_root=subset_root)
    with pytest.raises(FileNotFoundError, match="imagewoof-224"):
        load_dataset("imagewoof-224", "val", data_root=subset_root)
    labels = subset_root / "imagenette-224" / "metadata" / "val" / "class_labels.txt"
    text = labels.read_text().splitlines()
    labels.write_text("\n".join(text[:-1] + [text[-1].rsplit(",", 1)[0] + ",7"]) + "\n")
    with pytest.raises(ValueError, match=r"class_labels.txt.*label 7 has no line in .*classes.txt"):
        load_dataset("imagenette-224", "val", data_root=subset_root)
    (subset_root / "imagenette-224" / "classes.txt").unlink()
    with pytest.raises(FileNotFoundError, match="classes.txt"):
        load_dataset("imagenette-224", "test", data_root=subset_root)


@pytest.mark.parametrize("name", ["imagenette-224", "imagewoof-224"])
def test_the_real_sets(shared_data_root, name):
    if not (shared_data_root / name).exists():
        pytest.skip(f"{name} not under {shared_data_root}")
    counts = {split: load_dataset(name, split) for split in ("train", "val", "test")}
    assert {k: len(v) for k, v in counts.items()} == {"train": 5000, "val": 100, "test": 300}
    for split, ds in counts.items():
        assert torch.equal(torch.bincount(ds.labels, minlength=10), torch.full((10,), len(ds) // 10))
        assert len(ds.imagenet_index) == 10 and ds.num_classes == 10
    test = counts["test"]
    boxes = test[0]["boxes"]
    assert boxes.shape[1] == 4 and len(boxes) >= 1 and int(boxes.max()) < 224
    assert json.dumps(test.imagenet_index)  # plain ints
