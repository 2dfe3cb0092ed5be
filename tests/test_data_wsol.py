"""wsolevaluation metadata parsing, the image dataset (resize / box / mask conventions) and the real sets."""
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dualcam_lib.data import MetadataError, WSOLBatch, read_wsol_metadata, write_wsol_metadata
from dualcam_lib.data.datasets import (ImageReadError, WSOLImageDataset, collate_wsol, load_dataset,
                                       rescale_boxes, resize_mask_nearest)


def write_meta(folder: Path, ids, labels, sizes, loc):
    """Write the four metadata files from lists of text lines (``None`` leaves a file out)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, lines in (("image_ids.txt", ids), ("class_labels.txt", labels), ("image_sizes.txt", sizes),
                        ("localization.txt", loc)):
        if lines is not None:
            (folder / name).write_text("".join(line + "\n" for line in lines))
    return folder


GOOD = dict(
    ids=["a/1.jpg", "a/2.jpg", "b/3.jpg"],
    labels=["a/1.jpg,0", "a/2.jpg,0", "b/3.jpg,1"],
    sizes=["a/1.jpg,40,30", "a/2.jpg,50,50", "b/3.jpg,20,10"],
    loc=["a/1.jpg,1,2,20,29", "a/2.jpg,0,0,49,49", "a/2.jpg,5,5,10,10", "b/3.jpg,0,0,20,10"],
)


def good_meta(tmp_path, **override):
    fields = dict(GOOD, **override)
    return write_meta(tmp_path / "meta", fields["ids"], fields["labels"], fields["sizes"], fields["loc"])


# --------------------------------------------------------------------------------------------------------------
# metadata
# --------------------------------------------------------------------------------------------------------------


def test_parse_boxes(tmp_path):
    meta = read_wsol_metadata(good_meta(tmp_path))
    assert meta.image_ids == GOOD["ids"]
    assert meta.labels == {"a/1.jpg": 0, "a/2.jpg": 0, "b/3.jpg": 1}
    assert meta.sizes["a/1.jpg"] == (40, 30)
    assert meta.boxes["a/2.jpg"] == [(0, 0, 49, 49), (5, 5, 10, 10)]
    assert meta.localization == "boxes" and meta.num_classes == 2 and meta.skipped == []
    assert meta.mask_paths == {}


def test_parse_masks_with_optional_ignore(tmp_path):
    folder = write_meta(tmp_path / "m", ["x/1.jpg", "x/2.jpg"], ["x/1.jpg,3", "x/2.jpg,0"], [],
                        ["x/1.jpg,x/1_m_a.png,x/1_ignore.png", "x/1.jpg,x/1_m_b.png,", "x/2.jpg,x/2_m.png,"])
    meta = read_wsol_metadata(folder)
    assert meta.localization == "masks" and meta.sizes == {}
    assert meta.mask_paths == {"x/1.jpg": ["x/1_m_a.png", "x/1_m_b.png"], "x/2.jpg": ["x/2_m.png"]}
    assert meta.ignore_paths == {"x/1.jpg": "x/1_ignore.png", "x/2.jpg": None}


def test_empty_localization_means_no_ground_truth(tmp_path):
    meta = read_wsol_metadata(good_meta(tmp_path, loc=[], sizes=[]))
    assert len(meta) == 3 and meta.localization == "none"


def test_missing_file_names_it(tmp_path):
    folder = good_meta(tmp_path)
    (folder / "class_labels.txt").unlink()
    with pytest.raises(FileNotFoundError, match="class_labels.txt"):
        read_wsol_metadata(folder)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_wsol_metadata(tmp_path / "nowhere")


def test_mask_metadata_may_leave_out_image_sizes(tmp_path):
    """wsolevaluation ships OpenImages' image_sizes.txt empty; mask metadata without the file is read, box metadata
    without it is refused with the file named (its boxes could not be rescaled)."""
    folder = tmp_path / "masks"
    folder.mkdir()
    (folder / "image_ids.txt").write_text("val/a/1.jpg\nval/a/2.jpg\n")
    (folder / "class_labels.txt").write_text("val/a/1.jpg,0\nval/a/2.jpg,1\n")
    (folder / "localization.txt").write_text("val/a/1.jpg,val/a/1_m.png,val/a/1_ig.png\nval/a/2.jpg,val/a/2_m.png,\n")
    meta = read_wsol_metadata(folder)
    assert meta.localization == "masks" and len(meta) == 2 and meta.sizes == {}
    boxes = good_meta(tmp_path / "boxes")
    (boxes / "image_sizes.txt").unlink()
    with pytest.raises(FileNotFoundError, match=r"image_sizes.txt' is missing.*mask"):
        read_wsol_metadata(boxes)


@pytest.mark.parametrize("field, lines, where, what", [
    ("labels", ["a/1.jpg,0", "a/2.jpg;0", "b/3.jpg,1"], "class_labels.txt, line 2", "IMAGE_ID,LABEL"),
    ("labels", ["a/1.jpg,0", "a/2.jpg,zero", "b/3.jpg,1"], "class_labels.txt, line 2", "not an integer"),
    ("labels", ["a/1.jpg,0", "a/2.jpg,0", "b/3.jpg,1", "c/9.jpg,1"], "class_labels.txt, line 4",
     "not in image_ids.txt"),
    ("labels", ["a/1.jpg,0", "b/3.jpg,1"], "image_ids.txt, line 2", "has no label"),
    ("sizes", ["a/1.jpg,40,30", "a/2.jpg,50", "b/3.jpg,20,10"], "image_sizes.txt, line 2", "IMAGE_ID,W,H"),
    ("loc", ["a/1.jpg,1,2,20,29", "a/2.jpg,0,0,49,49", "b/3.jpg,0,0,21,10"], "localization.txt, line 3",
     "outside the image"),
    ("loc", ["a/1.jpg,1,2,20,29", "a/2.jpg,30,0,10,49", "b/3.jpg,0,0,20,10"], "localization.txt, line 2",
     "x1 < x0"),
    ("loc", ["a/1.jpg,1,2,20,29", "a/2.jpg,0,0,49", "b/3.jpg,0,0,20,10"], "localization.txt, line 2",
     "IMAGE_ID,x0,y0,x1,y1"),
    ("loc", ["a/1.jpg,1,2,20,29", "b/3.jpg,0,0,20,10"], "image_ids.txt, line 2", "no boxes"),
    ("ids", ["a/1.jpg", "a/2.jpg", "a/1.jpg", "b/3.jpg"], "image_ids.txt, line 3", "duplicate"),
])
def test_bad_records_name_file_and_line(tmp_path, field, lines, where, what):
    folder = good_meta(tmp_path, **{field: lines})
    with pytest.raises(MetadataError) as err:
        read_wsol_metadata(folder)
    assert where in str(err.value) and what in str(err.value)


def test_skip_bad_counts_and_reports(tmp_path):
    folder = good_meta(tmp_path, loc=["a/1.jpg,1,2,20,29", "a/2.jpg,0,0,49,49", "a/2.jpg,5,5,10,10",
                                      "b/3.jpg,0,0,21,10", "zzz.jpg,0,0,1,1"])
    meta = read_wsol_metadata(folder, skip_bad=True)
    # the out-of-image box and the unknown id are skipped; b/3.jpg is left without a box and dropped too
    assert meta.image_ids == ["a/1.jpg", "a/2.jpg"]
    assert [(f, n) for f, n, _ in meta.skipped] == [("localization.txt", 4), ("localization.txt", 5),
                                                    ("image_ids.txt", 3)]
    assert "b/3.jpg" not in meta.labels and "2 images" in meta.summary() and "3 skipped" in meta.summary()


def test_write_read_round_trip(tmp_path):
    meta = read_wsol_metadata(good_meta(tmp_path))
    again = read_wsol_metadata(write_wsol_metadata(meta, tmp_path / "copy"))
    assert (again.image_ids, again.labels, again.sizes, again.boxes) == \
           (meta.image_ids, meta.labels, meta.sizes, meta.boxes)
    sub = meta.subset(["b/3.jpg", "a/1.jpg"])
    assert sub.image_ids == ["b/3.jpg", "a/1.jpg"] and set(sub.boxes) == {"b/3.jpg", "a/1.jpg"}


# --------------------------------------------------------------------------------------------------------------
# image dataset
# --------------------------------------------------------------------------------------------------------------


def make_images(root: Path, sizes: dict, fmt="JPEG"):
    rng = np.random.default_rng(0)
    for image_id, (w, h) in sizes.items():
        path = root / image_id
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path, fmt)


def test_dataset_resizes_images_and_boxes(tmp_path):
    meta_dir = good_meta(tmp_path)
    make_images(tmp_path / "img", {"a/1.jpg": (40, 30), "a/2.jpg": (50, 50), "b/3.jpg": (20, 10)})
    ds = WSOLImageDataset(tmp_path / "img", meta_dir, size=16)
    item = ds[0]
    assert item["image"].shape == (3, 16, 16) and item["image"].dtype == torch.float32
    assert 0 <= item["image"].min() and item["image"].max() <= 1
    # wsolevaluation: int(x * S / W), int(y * S / H)
    assert item["boxes"].tolist() == [[int(1 * 16 / 40), int(2 * 16 / 30), int(20 * 16 / 40), int(29 * 16 / 30)]]
    assert item["mask"] is None and item["label"] == 0 and item["image_id"] == "a/1.jpg"
    batch = collate_wsol([ds[i] for i in range(3)])
    assert isinstance(batch, WSOLBatch) and batch.images.shape == (3, 3, 16, 16)
    assert batch.labels.tolist() == [0, 0, 1] and [len(b) for b in batch.boxes] == [1, 2, 1]
    assert batch.masks is None and batch.ignore is None
    assert ds.labels.tolist() == [0, 0, 1] and ds.class_names == ["a", "b"]
    loaded = list(ds.batches(2))
    assert [len(b.image_ids) for b in loaded] == [2, 1]


def test_rescale_boxes_matches_int_truncation():
    boxes = torch.tensor([[0, 5, 226, 226], [113, 1, 114, 200]])
    got = rescale_boxes(boxes, (227, 227), (224, 224))
    want = [[int(v * 224 / 227) for v in row] for row in boxes.tolist()]
    assert got.tolist() == want


@pytest.mark.parametrize("width", [640, 320, 374, 612])
def test_loader_and_metrics_rescale_boxes_agree_where_the_orders_differ(width):
    """wsolevaluation computes int(x * S / W); floor(x * (S / W)) is one pixel off for some (W, x), e.g. W = 640,
    x = 180 at S = 224 (63 against 62). The loader and the metrics must both give wsolevaluation's value."""
    from dualcam_lib.metrics import rescale_boxes as metrics_rescale

    xs = torch.arange(width)
    boxes = torch.stack([xs, xs, xs, xs], 1)
    want = [int(x * 224 / width) for x in range(width)]
    ratio_first = [int(np.floor(x * (224 / width))) for x in range(width)]
    assert want != ratio_first  # these widths are where the two orders disagree
    got = rescale_boxes(boxes, (width, width), (224, 224))
    assert got.dtype == torch.int64 and got[:, 0].tolist() == want and got[:, 1].tolist() == want
    assert metrics_rescale(boxes.numpy(), (width, width), (224, 224))[:, 2].tolist() == want
    if width == 640:
        assert rescale_boxes(torch.tensor([[180, 0, 180, 0]]), (640, 480), (224, 224))[0, 0].item() == 63


def test_mask_resize_matches_cv2_nearest():
    cv2 = pytest.importorskip("cv2")
    rng = np.random.default_rng(1)
    mask = rng.random((37, 53)) > 0.5
    big = rng.random((1066, 1600)) > 0.5  # 35 * 1600 / 224 is 250 in exact arithmetic, 249 in cv2's
    for out in ((224, 224), (16, 9), (300, 500)):
        for m in (mask, big):
            want = cv2.resize(m.astype(np.uint8), (out[1], out[0]), interpolation=cv2.INTER_NEAREST) > 0
            got = resize_mask_nearest(torch.from_numpy(m), out).numpy()
            assert (got == want).all()


def test_dataset_masks_union_and_ignore(tmp_path):
    meta_dir = write_meta(tmp_path / "m", ["v/1.jpg", "v/2.jpg"], ["v/1.jpg,0", "v/2.jpg,1"], [],
                          ["v/1.jpg,v/1_a.png,v/1_ignore.png", "v/1.jpg,v/1_b.png,", "v/2.jpg,v/2_a.png,"])
    make_images(tmp_path / "img", {"v/1.jpg": (20, 10), "v/2.jpg": (8, 8)})
    a = np.zeros((10, 20), np.uint8); a[:, :5] = 255
    b = np.zeros((10, 20), np.uint8); b[:, 15:] = 1  # any non-zero grey counts as foreground
    ign = np.zeros((10, 20), np.uint8); ign[:, :10] = 255  # overlaps mask a: the overlap is not ignored
    Image.fromarray(a).save(tmp_path / "img/v/1_a.png")
    Image.fromarray(b).save(tmp_path / "img/v/1_b.png")
    Image.fromarray(ign).convert("RGB").save(tmp_path / "img/v/1_ignore.png")
    Image.fromarray(np.full((8, 8), 255, np.uint8)).save(tmp_path / "img/v/2_a.png")
    ds = WSOLImageDataset(tmp_path / "img", meta_dir, size=20)
    item = ds[0]
    cols = item["mask"].any(0)
    assert cols[:5].all() and not cols[5:15].any() and cols[15:].all()
    assert item["ignore"][:, 5:10].all() and not item["ignore"][:, :5].any() and not item["ignore"][:, 10:].any()
    batch = collate_wsol([ds[0], ds[1]])
    assert batch.masks.shape == (2, 20, 20) and batch.masks[1].all()
    assert batch.ignore.shape == (2, 20, 20) and not batch.ignore[1].any()
    assert [b.shape for b in batch.boxes] == [(0, 4), (0, 4)]


def test_train_transform_keeps_boxes_and_masks_on_the_object(tmp_path):
    meta_dir = write_meta(tmp_path / "m", ["o.png"], ["o.png,0"], ["o.png,64,64"], ["o.png,20,10,43,37"])
    rgb = np.zeros((64, 64, 3), np.uint8)
    rgb[10:38, 20:44] = (255, 0, 0)  # the box (inclusive 20..43, 10..37) is red
    Image.fromarray(rgb).save(tmp_path / "o.png")
    ds = WSOLImageDataset(tmp_path, meta_dir, size=56, train=True)
    seen_flip = set()
    for _ in range(6):
        item = ds[0]
        assert item["image"].shape == (3, 56, 56)
        x0, y0, x1, y1 = item["boxes"][0].tolist()
        red = item["image"][0] > 0.5
        ys, xs = red.nonzero(as_tuple=True)
        # the box follows the resize (x 64/56*... ), crop and flip: it hugs the red area to within a pixel
        assert abs(xs.min() - x0) <= 1 and abs(xs.max() - x1) <= 1 and abs(ys.min() - y0) <= 1
        assert abs(ys.max() - y1) <= 1
        seen_flip.add(bool(xs.min() > 56 - 1 - xs.max()))
    assert len(seen_flip) == 2, "six draws should include flipped and unflipped crops"


def test_unreadable_image_raises_naming_the_file_or_is_skipped(tmp_path):
    meta_dir = good_meta(tmp_path)
    make_images(tmp_path / "img", {"a/1.jpg": (40, 30), "a/2.jpg": (50, 50), "b/3.jpg": (20, 10)})
    (tmp_path / "img/a/2.jpg").write_bytes(b"not a jpeg at all")
    ds = WSOLImageDataset(tmp_path / "img", meta_dir, size=16)
    with pytest.raises(ImageReadError, match=r"a/2\.jpg"):
        ds[1]
    (tmp_path / "img/b/3.jpg").unlink()
    with pytest.raises(ImageReadError, match=r"b/3\.jpg.*does not exist"):
        ds[2]
    skipping = WSOLImageDataset(tmp_path / "img", meta_dir, size=16, skip_bad=True)
    batch = next(skipping.batches(3))
    assert batch.image_ids == ["a/1.jpg"] and len(skipping.skipped) == 2
    assert "a/2.jpg" in skipping.skipped[0][0]
    checked = WSOLImageDataset(tmp_path / "img", meta_dir, size=16, skip_bad=True)
    assert len(checked.verify()) == 2 and len(checked) == 1


def test_size_mismatch_is_caught(tmp_path):
    meta_dir = good_meta(tmp_path)
    make_images(tmp_path / "img", {"a/1.jpg": (41, 30), "a/2.jpg": (50, 50), "b/3.jpg": (20, 10)})
    ds = WSOLImageDataset(tmp_path / "img", meta_dir, size=16)
    with pytest.raises(ValueError, match=r"41x30 but image_sizes.txt .* 40x30"):
        ds[0]
    assert WSOLImageDataset(tmp_path / "img", meta_dir, size=16, check_sizes=False)[0]["boxes"].shape == (1, 4)


def test_load_dataset_errors_name_the_path_and_option(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        load_dataset("imagenet-val-1000", "test", data_root=tmp_path)
    assert str(tmp_path / "imagenet-val-1000") in str(err.value) and "DUALCAM_DATA_ROOT" in str(err.value)
    with pytest.raises(FileNotFoundError, match="wsol-metadata/CUB/test"):
        load_dataset("cub", "test", data_root=tmp_path)
    with pytest.raises(ValueError, match="unknown dataset"):
        load_dataset("mnist", "test", data_root=tmp_path)


def test_load_dataset_wsolevaluation_layout(tmp_path):
    make_images(tmp_path / "OpenImages", {"test/c1/1.jpg": (30, 20)})
    Image.fromarray(np.full((20, 30), 255, np.uint8)).save(tmp_path / "OpenImages/test/c1/1_m.png")
    write_meta(tmp_path / "metadata/OpenImages/test", ["test/c1/1.jpg"], ["test/c1/1.jpg,0"], [],
               ["test/c1/1.jpg,test/c1/1_m.png,"])
    ds = load_dataset("openimages", "test", data_root=tmp_path, size=32)
    item = ds[0]
    assert item["mask"].shape == (32, 32) and item["mask"].all() and ds.class_names == ["c1"]


# --------------------------------------------------------------------------------------------------------------
# the real sets in ../shared/data
# --------------------------------------------------------------------------------------------------------------

REAL_COUNTS = {("ILSVRC", "test"): 50000, ("ILSVRC", "val"): 10000, ("CUB", "train"): 5994, ("CUB", "val"): 1000,
               ("CUB", "test"): 5794, ("CARS", "train"): 8144, ("CARS", "test"): 8041,
               ("OpenImages", "train"): 29819, ("OpenImages", "val"): 2500, ("OpenImages", "test"): 5000}


@pytest.mark.parametrize("key, split", sorted(REAL_COUNTS))
def test_real_wsol_metadata_parses(shared_data_root, key, split):
    folder = shared_data_root / "wsol-metadata" / key / split
    start = time.process_time()  # CPU time: the wall clock of a shared CI machine says little
    meta = read_wsol_metadata(folder)
    elapsed = time.process_time() - start
    assert len(meta) == REAL_COUNTS[key, split] and meta.skipped == []
    assert elapsed < 1.0 * max(1, len(meta) / 10_000), f"{elapsed:.2f} s for {len(meta)} ids"
    expected_classes = {"ILSVRC": 1000, "CUB": 200, "CARS": 196, "OpenImages": 100}[key]
    assert meta.num_classes == expected_classes
    if key == "OpenImages":
        assert meta.localization == ("none" if split == "train" else "masks")
    else:
        assert meta.localization == "boxes" and all(meta.boxes[i] for i in meta.image_ids[:100])
    if (key, split) == ("ILSVRC", "test"):
        assert sum(map(len, meta.boxes.values())) == 80477


def test_imagenet_val_1000(shared_data_root):
    ds = load_dataset("imagenet-val-1000", "test", data_root=shared_data_root, size=224)
    assert len(ds) == 1000 and ds.num_classes == 1000 and len(ds.class_names) == 1000
    labels = ds.labels
    assert labels.min() >= 0 and labels.max() <= 999
    meta = ds.metadata
    assert set(meta.sizes.values()) == {(227, 227)}
    assert all(0 <= b[0] <= b[2] <= 227 and 0 <= b[1] <= b[3] <= 227 for bs in meta.boxes.values() for b in bs)
    batch = collate_wsol([ds[i] for i in (0, 1, 2)])
    assert batch.images.shape == (3, 3, 224, 224) and 0 <= batch.images.min() and batch.images.max() <= 1
    for i, image_id in enumerate(batch.image_ids):
        want = [[int(v * 224 / 227) for v in b] for b in meta.boxes[image_id]]
        assert batch.boxes[i].tolist() == want
    sub = load_dataset("imagenet-val-1000", "test", data_root=shared_data_root, n=10, seed=1)
    assert len(sub) == 10 and set(sub.image_ids) <= set(ds.image_ids)


def test_openimages_real_masks(shared_data_root, tmp_path):
    """The 11 real mask PNGs of 5 OpenImages val images (no photos: stand-in JPEGs of the right size)."""
    from dualcam_lib.data.native import read_openimages30k

    mask_root = shared_data_root / "openimages-test-masks" / "test_masks"
    pngs = sorted(mask_root.rglob("*.png"))
    assert len(pngs) == 11
    stems = {p.name.split("_")[0] for p in pngs}
    full = read_wsol_metadata(shared_data_root / "wsol-metadata" / "OpenImages" / "val")
    ids = [i for i in full.image_ids if Path(i).stem in stems]
    assert len(ids) == 5  # (the data README says 4; the 11 PNGs belong to 5 images)
    sub_dir = write_wsol_metadata(full.subset(ids), tmp_path / "meta")
    sizes = {}
    for i in ids:
        with Image.open(mask_root / full.mask_paths[i][0]) as m:
            sizes[i] = m.size
    make_images(tmp_path / "img", sizes)
    meta = read_openimages30k(tmp_path / "img", sub_dir, mask_root=mask_root)
    assert meta.sizes[ids[0]] == sizes[ids[0]]  # read lazily from the stand-in image headers
    ds = WSOLImageDataset(tmp_path / "img", metadata=meta, mask_root=mask_root, size=224)
    batch = collate_wsol([ds[k] for k in range(len(ds))])
    assert batch.masks.shape == (5, 224, 224) and batch.ignore.shape == (5, 224, 224)
    assert not (batch.masks & batch.ignore).any()
    cv2 = pytest.importorskip("cv2")
    for k, image_id in enumerate(batch.image_ids):  # wsolevaluation's own recipe, with OpenCV
        union = np.stack([cv2.resize(cv2.imread(str(mask_root / p), cv2.IMREAD_GRAYSCALE), (224, 224),
                                     interpolation=cv2.INTER_NEAREST) > 0.5 for p in full.mask_paths[image_id]])
        assert (batch.masks[k].numpy() == union.any(0)).all()


def test_train_crop_drops_boxes_outside_and_clips_the_rest(tmp_path):
    meta_dir = write_meta(tmp_path / "m", ["o.png"], ["o.png,0"], ["o.png,64,64"],
                          ["o.png,0,0,3,3", "o.png,60,60,63,63", "o.png,10,10,50,50"])
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(tmp_path / "o.png")
    ds = WSOLImageDataset(tmp_path, meta_dir, size=32, train=True)  # resize to 37, crop 32: corners may fall out
    for _ in range(8):
        boxes = ds[0]["boxes"]
        assert ((boxes >= 0) & (boxes <= 31)).all() and (boxes[:, 2:] >= boxes[:, :2]).all()
        assert 1 <= len(boxes) <= 3 and ((boxes[:, 2] - boxes[:, 0]) >= 20).any()  # the big box always survives
