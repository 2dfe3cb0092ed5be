"""Native-format readers on fixtures written in exactly the distributed formats (CUB, Stanford Cars devkit,
an ImageNet val folder, OpenImages-30K)."""
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dualcam_lib.data import MetadataError, read_wsol_metadata, write_wsol_metadata
from dualcam_lib.data.datasets import WSOLImageDataset, collate_wsol, load_dataset
from dualcam_lib.data.native import (HeaderSizes, check_boxes_in_images, read_cub, read_imagenet_val,
                                     read_openimages30k, read_stanford_cars)


def save_image(path: Path, w: int, h: int, fmt: str = "JPEG", seed: int = 0):
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path, fmt)


# --------------------------------------------------------------------------------------------------------------
# CUB-200-2011
# --------------------------------------------------------------------------------------------------------------

CUB_IMAGES = [  # id, relpath, class id (1-based), is_train, (x, y, w, h), (W, H)
    (1, "001.Black_footed_Albatross/Black_Footed_Albatross_0001_1.jpg", 1, 1, (3.0, 4.0, 20.0, 10.0), (40, 30)),
    (2, "001.Black_footed_Albatross/Black_Footed_Albatross_0002_2.jpg", 1, 0, (0.0, 0.0, 31.0, 20.0), (32, 24)),
    (3, "002.Laysan_Albatross/Laysan_Albatross_0003_3.jpg", 2, 1, (5.5, 2.0, 10.25, 8.0), (36, 20)),
    (4, "002.Laysan_Albatross/Laysan_Albatross_0004_4.jpg", 2, 0, (1.0, 1.0, 12.0, 12.0), (20, 20)),
    (5, "003.Sooty_Albatross/Sooty_Albatross_0005_5.jpg", 3, 0, (2.0, 3.0, 4.0, 5.0), (16, 16)),
]


def write_cub(root: Path, images=CUB_IMAGES, drop_line=None):
    base = root / "CUB_200_2011"
    base.mkdir(parents=True)
    files = {"images.txt": [], "image_class_labels.txt": [], "train_test_split.txt": [], "bounding_boxes.txt": []}
    for cid, rel, cls, is_train, (x, y, w, h), (iw, ih) in images:
        files["images.txt"].append(f"{cid} {rel}")
        files["image_class_labels.txt"].append(f"{cid} {cls}")
        files["train_test_split.txt"].append(f"{cid} {is_train}")
        files["bounding_boxes.txt"].append(f"{cid} {x} {y} {w} {h}")
        save_image(base / "images" / rel, iw, ih, seed=cid)
    files["classes.txt"] = ["1 001.Black_footed_Albatross", "2 002.Laysan_Albatross", "3 003.Sooty_Albatross"]
    if drop_line:
        name, k = drop_line
        del files[name][k]
    for name, lines in files.items():
        (base / name).write_text("\n".join(lines) + "\n")
    return base


def test_read_cub_splits_labels_boxes(tmp_path):
    base = write_cub(tmp_path)
    meta, names = read_cub(base, "test")
    assert names == ["001.Black_footed_Albatross", "002.Laysan_Albatross", "003.Sooty_Albatross"]
    assert meta.image_ids == [CUB_IMAGES[k][1] for k in (1, 3, 4)]
    assert [meta.labels[i] for i in meta.image_ids] == [0, 1, 2]
    assert meta.boxes[CUB_IMAGES[1][1]] == [(0, 0, 31, 20)]  # x + w, y + h
    train, _ = read_cub(base, "train")
    assert train.image_ids == [CUB_IMAGES[0][1], CUB_IMAGES[2][1]]
    assert train.boxes[CUB_IMAGES[2][1]] == [(5, 2, 15, 10)]  # int(5.5), int(5.5 + 10.25)
    assert isinstance(train.sizes, HeaderSizes) and train.sizes._cache == {}  # nothing opened yet
    assert train.sizes[CUB_IMAGES[2][1]] == (36, 20) and len(train.sizes._cache) == 1
    assert len(read_cub(base, "all")[0]) == 5


def test_cub_matches_wsolevaluation_conversion(shared_data_root, tmp_path):
    """The first CUB test image: native box 60 27 325 304 -> wsolevaluation's 60,27,385,331."""
    real = read_wsol_metadata(shared_data_root / "wsol-metadata" / "CUB" / "test")
    image_id = "001.Black_footed_Albatross/Black_Footed_Albatross_0046_18.jpg"
    rows = [(1, image_id, 1, 0, (60.0, 27.0, 325.0, 304.0), real.sizes[image_id])]
    meta, _ = read_cub(write_cub(tmp_path, rows), "test")
    assert meta.boxes[image_id] == real.boxes[image_id] and meta.sizes[image_id] == real.sizes[image_id]


def test_cub_dataset_and_metadata_export(tmp_path):
    base = write_cub(tmp_path)
    meta, names = read_cub(base, "train")
    ds = WSOLImageDataset(base / "images", metadata=meta, size=20, class_names=names)
    item = ds[0]
    assert item["boxes"].tolist() == [[int(3 * 20 / 40), int(4 * 20 / 30), int(23 * 20 / 40), int(14 * 20 / 30)]]
    exported = read_wsol_metadata(write_wsol_metadata(meta, tmp_path / "wsol"))  # sizes read from headers
    assert exported.sizes == {CUB_IMAGES[0][1]: (40, 30), CUB_IMAGES[2][1]: (36, 20)}
    assert exported.boxes == meta.boxes
    via_root = load_dataset("cub", "test", data_root=tmp_path, size=16)  # no wsol metadata -> native fallback
    assert len(via_root) == 3 and via_root.class_names == names and not via_root.train


@pytest.mark.parametrize("drop, skipped", [
    (("bounding_boxes.txt", 2), [("images.txt", 3)]),  # image 3 has no box
    (("images.txt", 1), [("image_class_labels.txt", 2), ("bounding_boxes.txt", 2),  # records of an image
                         ("train_test_split.txt", 2)]),  # that images.txt lacks
])
def test_cub_missing_record_names_file_and_line(tmp_path, drop, skipped):
    base = write_cub(tmp_path, drop_line=drop)
    file, line = skipped[0]
    with pytest.raises(MetadataError, match=rf"{file}, line {line}"):
        read_cub(base, "all")
    meta, _ = read_cub(base, "all", skip_bad=True)
    assert len(meta) == 4 and [(f, n) for f, n, _ in meta.skipped] == skipped


def test_cub_bad_values(tmp_path):
    rows = list(CUB_IMAGES)
    rows[1] = (2, rows[1][1], 7, 0, rows[1][4], rows[1][5])  # class 7 of 3
    base = write_cub(tmp_path, rows)
    with pytest.raises(MetadataError, match=r"image_class_labels.txt, line 2: class id 7 is outside 1..3"):
        read_cub(base, "test")
    (base / "classes.txt").unlink()
    with pytest.raises(FileNotFoundError, match="classes.txt"):
        read_cub(base, "test")


def test_cub_box_outside_image_found_from_headers(tmp_path):
    rows = list(CUB_IMAGES)
    rows[0] = (1, rows[0][1], 1, 1, (30.0, 4.0, 20.0, 10.0), (40, 30))  # x + w = 50 > 40
    meta, _ = read_cub(write_cub(tmp_path, rows), "train")
    with pytest.raises(MetadataError, match=r"outside its 40x30"):
        check_boxes_in_images(meta)
    kept = check_boxes_in_images(meta, skip_bad=True)
    assert len(kept) == 1 and len(kept.skipped) == 1
    ds = WSOLImageDataset(tmp_path / "CUB_200_2011" / "images", metadata=meta, size=16)
    with pytest.raises(ValueError, match="outside"):
        ds[0]


# --------------------------------------------------------------------------------------------------------------
# Stanford Cars devkit
# --------------------------------------------------------------------------------------------------------------

CARS = [("00001.jpg", (2, 3, 30, 20), 2, (31, 24)), ("00002.jpg", (0, 0, 15, 15), 1, (16, 16)),
        ("00003.jpg", (5, 1, 9, 7), 3, (12, 8))]


def write_cars(root: Path, records=CARS, annotations_name="cars_test_annos_withlabels.mat", with_class=True):
    from scipy.io import savemat

    devkit = root / "CARS" / "devkit"
    devkit.mkdir(parents=True)
    fields = ["bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2"] + (["class"] if with_class else []) + ["fname"]
    ann = np.zeros((1, len(records)), dtype=[(f, "O") for f in fields])
    for k, (fname, (x1, y1, x2, y2), cls, (w, h)) in enumerate(records):
        values = [x1, y1, x2, y2] + ([cls] if with_class else [])
        for f, v in zip(fields, values):
            ann[0, k][f] = np.array([[v]], dtype=np.uint16 if f != "class" else np.uint8)
        ann[0, k]["fname"] = np.array([fname])
        save_image(root / "CARS" / "cars_test" / fname, w, h, seed=k)
    savemat(devkit / annotations_name, {"annotations": ann})
    names = np.empty((1, 3), dtype=object)
    names[0, :] = ["AM General Hummer SUV 2000", "Acura RL Sedan 2012", "Acura TL Sedan 2012"]
    savemat(devkit / "cars_meta.mat", {"class_names": names})
    return devkit


def test_read_stanford_cars(tmp_path):
    devkit = write_cars(tmp_path)
    meta, names = read_stanford_cars(devkit, "test", image_root=tmp_path / "CARS" / "cars_test")
    assert names == ["AM General Hummer SUV 2000", "Acura RL Sedan 2012", "Acura TL Sedan 2012"]
    assert meta.image_ids == ["00001.jpg", "00002.jpg", "00003.jpg"]
    assert [meta.labels[i] for i in meta.image_ids] == [1, 0, 2]
    assert meta.boxes["00001.jpg"] == [(2, 3, 30, 20)] and meta.sizes["00003.jpg"] == (12, 8)
    ds = load_dataset("cars", "test", data_root=tmp_path, size=8)
    batch = collate_wsol([ds[i] for i in range(3)])
    assert batch.labels.tolist() == [1, 0, 2]
    assert batch.boxes[2].tolist() == [[int(5 * 8 / 12), int(1 * 8 / 8), int(9 * 8 / 12), int(7 * 8 / 8)]]
    # converted once to wsolevaluation files, the same split loads through them, with the devkit's class names
    write_wsol_metadata(meta, tmp_path / "wsol-metadata" / "CARS" / "test")
    converted = load_dataset("cars", "test", data_root=tmp_path, size=8)
    assert converted.metadata.metadata_dir == tmp_path / "wsol-metadata" / "CARS" / "test"
    assert converted.class_names == names and converted.labels.tolist() == [1, 0, 2]


def test_stanford_cars_bad_input(tmp_path):
    bad = [CARS[0], ("00002.jpg", (10, 0, 5, 15), 1, (16, 16)), ("00003.jpg", (5, 1, 9, 7), 9, (12, 8))]
    devkit = write_cars(tmp_path, bad)
    with pytest.raises(MetadataError, match=r"cars_test_annos_withlabels.mat, line 2: record 2 \(00002.jpg\)"):
        read_stanford_cars(devkit, "test")
    meta, _ = read_stanford_cars(devkit, "test", skip_bad=True)
    assert meta.image_ids == ["00001.jpg"] and [n for _, n, _ in meta.skipped] == [2, 3]
    with pytest.raises(FileNotFoundError, match="cars_train_annos.mat"):
        read_stanford_cars(devkit, "train")


def test_stanford_cars_unlabelled_test_file_is_explained(tmp_path):
    devkit = write_cars(tmp_path, annotations_name="cars_test_annos.mat", with_class=False)
    with pytest.raises(MetadataError, match="cars_test_annos_withlabels.mat"):
        read_stanford_cars(devkit, "test", annotations_file=devkit / "cars_test_annos.mat")


# --------------------------------------------------------------------------------------------------------------
# ImageNet val folder + wsolevaluation metadata
# --------------------------------------------------------------------------------------------------------------


def write_ilsvrc_meta(folder: Path):
    folder.mkdir(parents=True)
    ids = ["val/ILSVRC2012_val_00000001.JPEG", "val/ILSVRC2012_val_00000002.JPEG"]
    (folder / "image_ids.txt").write_text("\n".join(ids) + "\n")
    (folder / "class_labels.txt").write_text(f"{ids[0]},65\n{ids[1]},970\n")
    (folder / "image_sizes.txt").write_text(f"{ids[0]},50,40\n{ids[1]},30,30\n")
    (folder / "localization.txt").write_text(f"{ids[0]},10,8,49,39\n{ids[0]},0,0,5,5\n{ids[1]},3,3,20,29\n")
    return folder


def test_imagenet_val_folder_flat_or_by_class(tmp_path):
    meta_dir = write_ilsvrc_meta(tmp_path / "meta")
    save_image(tmp_path / "val" / "n01751748" / "ILSVRC2012_val_00000001.JPEG", 25, 20)  # stored at half size
    save_image(tmp_path / "val" / "ILSVRC2012_val_00000002.JPEG", 30, 30)
    meta = read_imagenet_val(tmp_path / "val", meta_dir)
    assert meta.image_ids == ["n01751748/ILSVRC2012_val_00000001.JPEG", "ILSVRC2012_val_00000002.JPEG"]
    assert meta.labels["ILSVRC2012_val_00000002.JPEG"] == 970
    ds = WSOLImageDataset(tmp_path / "val", metadata=meta, size=10)
    with pytest.raises(ValueError, match="25x20 but image_sizes.txt"):
        ds[0]
    scaled = read_imagenet_val(tmp_path / "val", meta_dir, rescale_to_files=True)
    assert scaled.boxes["n01751748/ILSVRC2012_val_00000001.JPEG"] == [(5, 4, 24, 19), (0, 0, 2, 2)]
    assert WSOLImageDataset(tmp_path / "val", metadata=scaled, size=10)[0]["boxes"].shape == (2, 4)
    (tmp_path / "val" / "ILSVRC2012_val_00000002.JPEG").unlink()
    with pytest.raises(MetadataError, match=r"image_ids.txt, line 2: .*ILSVRC2012_val_00000002"):
        read_imagenet_val(tmp_path / "val", meta_dir)
    assert len(read_imagenet_val(tmp_path / "val", meta_dir, skip_bad=True).skipped) == 1


# --------------------------------------------------------------------------------------------------------------
# OpenImages-30K
# --------------------------------------------------------------------------------------------------------------


def test_openimages30k_masks_and_missing_files(tmp_path):
    root = tmp_path / "OpenImages"
    ids = ["test/01226z/aaa.jpg", "test/01226z/bbb.jpg"]
    for k, image_id in enumerate(ids):
        save_image(root / image_id, 24, 16, seed=k)
    full = np.zeros((16, 24), np.uint8)
    full[4:12, 6:18] = 255
    Image.fromarray(full).save(root / "test/01226z/aaa_m01226z_1.png")
    Image.fromarray(full).convert("1").save(root / "test/01226z/bbb_m01226z_1.png")
    Image.fromarray(np.full((16, 24), 255, np.uint8)).save(root / "test/01226z/aaa_ignore.png")
    meta_dir = tmp_path / "metadata" / "OpenImages" / "test"
    meta_dir.mkdir(parents=True)
    (meta_dir / "image_ids.txt").write_text("\n".join(ids) + "\n")
    (meta_dir / "class_labels.txt").write_text(f"{ids[0]},0\n{ids[1]},0\n")
    (meta_dir / "image_sizes.txt").write_text("")
    (meta_dir / "localization.txt").write_text(
        f"{ids[0]},test/01226z/aaa_m01226z_1.png,test/01226z/aaa_ignore.png\n"
        f"{ids[1]},test/01226z/bbb_m01226z_1.png,\n")
    meta = read_openimages30k(root, meta_dir)
    assert meta.sizes[ids[1]] == (24, 16)
    ds = WSOLImageDataset(root, metadata=meta, size=12)
    batch = collate_wsol([ds[0], ds[1]])
    assert batch.masks[0].sum() == batch.masks[1].sum() == 6 * 6  # rows 4..11 of 16 and cols 6..17 of 24, at 12x12
    assert batch.ignore[0].sum() == 12 * 12 - 6 * 6 and not batch.ignore[1].any()
    (root / "test/01226z/bbb_m01226z_1.png").unlink()
    with pytest.raises(FileNotFoundError, match="bbb_m01226z_1.png"):
        read_openimages30k(root, meta_dir)
    kept = read_openimages30k(root, meta_dir, skip_bad=True)
    assert kept.image_ids == ids[:1] and len(kept.skipped) == 1
    assert torch.equal(WSOLImageDataset(root, metadata=kept, size=12)[0]["mask"], batch.masks[0])
