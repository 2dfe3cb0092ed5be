"""Boxes from score maps: the fast level sweep against the plain OpenCV reference (tests/reference_wsol.py).

The strongest check is per integer level: for every level of every hard case, each box the reference draws is
used as a GT box, so the fast path must report IoU 1.0 (hit at delta = 1) exactly where the reference has that box,
and the hit table over a grid of deltas must match for the case's own GT boxes.
"""
from pathlib import Path

import numpy as np
import pytest
import torch

import reference_wsol as ref
from dualcam_lib.metrics import boxes as boxes_module
from dualcam_lib.metrics.boxes import (
    DEFAULT_THRESHOLDS,
    as_box_list,
    box_iou,
    boxes_from_map,
    check_scoremaps,
    hits_per_level,
    quantize_scoremaps,
    rescale_boxes,
    threshold_levels,
)

DELTA_GRID = np.round(np.arange(0.0, 1.0001, 0.05), 2)
BACKENDS = ["numba", "opencv"]  # numba is a requirement; "opencv" is the fallback without it


def reference_hit_table(image: np.ndarray, gt: np.ndarray, deltas) -> np.ndarray:
    """(256, D) bool: best IoU of all reference contour boxes at level L against ``gt`` >= delta."""
    table = np.zeros((256, len(deltas)), dtype=bool)
    for level in range(256):
        best = ref.iou_matrix(ref.boxes_at_level(image, level, multi_contour=True), gt).max()
        table[level] = best >= np.asarray(deltas)
    return table


@pytest.mark.parametrize("backend", BACKENDS)
def test_hit_tables_match_reference_on_hard_cases(backend):
    cases = ref.structured_cases()
    images = [ref.quantise(m) for _, m, _ in cases]
    for (name, _, gt), image in zip(cases, images):
        fast = hits_per_level(image[None], [gt], DELTA_GRID, backend=backend)[0]
        expected = reference_hit_table(image, gt, DELTA_GRID)
        mismatch = np.argwhere(fast != expected)
        assert mismatch.size == 0, f"{name}: levels/deltas differ {mismatch[:5].tolist()}"


def test_every_reference_box_is_found_exactly():
    """Each contour box (outer and hole) of the reference, used as the GT box, gives IoU 1 at its level."""
    checked = 0
    for name, scoremap, _ in ref.structured_cases():
        image = ref.quantise(scoremap)
        boxes_per_level = [ref.boxes_at_level(image, level, multi_contour=True) for level in range(256)]
        candidates = np.unique(np.concatenate(boxes_per_level[:int(image.max()) + 1]), axis=0)
        picked = candidates[np.linspace(0, len(candidates) - 1, min(len(candidates), 8)).astype(int)]
        fast = hits_per_level(np.repeat(image[None], len(picked), 0), [box[None] for box in picked], [1.0],
                              backend="numba")[:, :, 0]
        for box, found in zip(picked, fast):
            expected = [bool((level_boxes == box).all(axis=1).any()) for level_boxes in boxes_per_level]
            assert found.tolist() == expected, f"{name}: box {box.tolist()}"
            checked += 1
    assert checked > 100


def test_hole_boxes_are_found_in_a_ring():
    """A ring's hole contour gives a box the outer contour does not: the fast path must report it."""
    ring = np.zeros((20, 20))
    ring[3:15, 4:16] = 1.0
    ring[6:11, 7:13] = 0.0
    image = ref.quantise(ring)
    boxes = ref.boxes_at_level(image, 0, multi_contour=True)
    hole_box = [6, 5, 14, 12]  # the hole's extent (x 7..12, y 6..10) grown by one pixel, far corner + 1
    assert hole_box in boxes.tolist()
    hits = hits_per_level(image[None], [np.array([hole_box])], [1.0])[0, :, 0]
    assert hits[0] and hits[200]  # present at every level below the ring's value 255
    assert not hits[255]


@pytest.mark.parametrize("backend", BACKENDS)
def test_random_maps_match_reference(backend):
    maps = np.concatenate([ref.random_cam_maps(6, (24, 30), seed=1), ref.random_cam_maps(4, (24, 30), seed=2,
                                                                                         noise=0.3)])
    gts = ref.random_boxes(len(maps), (24, 30), seed=3)
    images = np.stack([ref.quantise(m) for m in maps])
    fast = hits_per_level(images, gts, DELTA_GRID, backend=backend)
    for index in range(len(maps)):
        assert np.array_equal(fast[index], reference_hit_table(images[index], gts[index], DELTA_GRID)), index


def test_quantisation_is_float64_truncation():
    # float32 values just below k / 255: a float32 product would round up to k, the protocol's float64 one not
    values = torch.tensor([np.nextafter(np.float32(k / 255), np.float32(0)) for k in range(1, 256)],
                          dtype=torch.float32)
    maps = values.reshape(1, 15, 17)
    expected = (maps.double().numpy() * 255).astype(np.uint8)
    assert np.array_equal(quantize_scoremaps(maps), expected)
    assert np.array_equal(quantize_scoremaps(maps.double()), expected)
    assert np.array_equal(quantize_scoremaps(maps.half()), (maps.half().double().numpy() * 255).astype(np.uint8))


def test_quantisation_without_numba_matches(monkeypatch):
    maps = torch.rand(3, 9, 11)
    fast = quantize_scoremaps(maps)
    monkeypatch.setattr(boxes_module, "numba", None)
    assert np.array_equal(quantize_scoremaps(maps), fast)


@pytest.mark.parametrize("bad, message", [
    (torch.zeros(4, 4), "shape"),
    (torch.zeros(1, 4, 4, dtype=torch.int64), "floating-point"),
    (torch.full((1, 4, 4), float("nan")), "NaN"),
    (torch.full((1, 4, 4), float("inf")), "NaN or infinite"),
    (torch.full((1, 4, 4), 1.5), "within"),
    (torch.full((1, 4, 4), -0.1), "within"),
    (torch.zeros(0, 4, 4), "empty"),
])
def test_invalid_maps_raise_clear_errors(bad, message):
    with pytest.raises(ValueError, match=message):
        check_scoremaps(bad)
    with pytest.raises(ValueError, match=message):
        quantize_scoremaps(bad)


@pytest.mark.parametrize("boxes, message", [
    ([[[0, 0, 3]]], "shape"),
    ([[[3, 0, 1, 2]]], "x1 >= x0"),
    ([[[-1, 0, 1, 2]]], "non-negative"),
    ([[[0.5, 0, 1, 2]]], "integer"),
    ([np.zeros((0, 4))], "no box"),
    ([[[0, 0, 1, 1]], [[0, 0, 1, 1]]], "2 entries for 1"),
])
def test_invalid_gt_boxes_raise(boxes, message):
    with pytest.raises(ValueError, match=message):
        as_box_list(boxes, 1)


def test_box_iou_matches_reference():
    rng = np.random.default_rng(0)
    a = np.sort(rng.integers(0, 30, size=(40, 2, 2)), axis=1).reshape(40, 4)[:, [0, 2, 1, 3]]
    b = np.sort(rng.integers(0, 30, size=(7, 2, 2)), axis=1).reshape(7, 4)[:, [0, 2, 1, 3]]
    assert torch.equal(box_iou(a, b), torch.from_numpy(ref.iou_matrix(a, b)))
    assert box_iou([[0, 0, 0, 0]], [[0, 0, 0, 0]]).item() == 1.0
    assert box_iou([[0, 0, 1, 1]], [[2, 2, 3, 3]]).item() == 0.0


def test_threshold_levels_follow_int_of_product():
    maxima = np.array([0, 1, 37, 254, 255], dtype=np.uint8)
    levels = threshold_levels(DEFAULT_THRESHOLDS, maxima)
    expected = np.array([[int(t * m) for t in DEFAULT_THRESHOLDS] for m in maxima])
    assert np.array_equal(levels, expected)
    assert threshold_levels(np.array([1.0]), np.array([255]))[0, 0] == 255  # nothing is above the maximum


def test_rescale_boxes_like_wsolevaluation():
    boxes = [[0, 5, 226, 200], [13, 17, 100, 99]]
    scaled = rescale_boxes(boxes, (227, 201), (224, 224))
    expected = [[int(float(x) * 224 / 227), int(float(y) * 224 / 201), int(float(x1) * 224 / 227),
                 int(float(y1) * 224 / 201)] for x, y, x1, y1 in boxes]
    assert scaled.tolist() == expected


@pytest.mark.parametrize("multi_contour", [True, False])
def test_boxes_from_map_matches_reference(multi_contour):
    thresholds = [0.0, 0.05, 0.2, 0.5, 0.9, 0.999, 1.0]
    for name, scoremap, _ in ref.structured_cases():
        image = ref.quantise(scoremap)
        fast = boxes_from_map(torch.from_numpy(scoremap), thresholds, multi_contour=multi_contour)
        assert len(fast) == len(thresholds)
        for t, boxes in zip(thresholds, fast):
            expected = ref.boxes_at_threshold(image, t, multi_contour)
            assert boxes.tolist() == expected.tolist(), (name, t)


def _compiled_cache_files(folder):
    return {p: p.stat().st_mtime_ns for p in Path(folder).rglob("*") if p.suffix in (".nbi", ".nbc")}


def test_numba_cache_dir_honours_numba_cache_dir_then_xdg(tmp_path, monkeypatch):
    from dualcam_lib.paths import numba_cache_dir

    monkeypatch.setenv("NUMBA_CACHE_DIR", str(tmp_path / "chosen"))
    assert numba_cache_dir() == tmp_path / "chosen"
    monkeypatch.delenv("NUMBA_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert numba_cache_dir() == tmp_path / "xdg" / "dualcam_lib" / "numba"
    assert numba_cache_dir().is_dir()


@pytest.mark.skipif(boxes_module.numba is None, reason="numba is not installed: nothing is compiled or cached")
@pytest.mark.parametrize("chosen", [False])  # one fresh compile (about a minute); the NUMBA_CACHE_DIR rule is above
def test_numba_caches_outside_the_package(tmp_path, chosen):
    """The compiled kernels are cached in the user's cache folder (or NUMBA_CACHE_DIR), never in the package."""
    import os
    import subprocess
    import sys

    package = Path(boxes_module.__file__).resolve().parent.parent
    before = _compiled_cache_files(package)
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_CACHE_DIR"}
    env["XDG_CACHE_HOME"] = str(tmp_path / "xdg")
    if chosen:
        env["NUMBA_CACHE_DIR"] = str(tmp_path / "chosen")
    code = ("import numpy as np, torch; from dualcam_lib.metrics import BoxAccuracy; "
            "m = torch.zeros(1, 16, 16); m[0, 4:9, 4:9] = 1; "
            "a = BoxAccuracy(backend='numba'); a.accumulate(m, [torch.tensor([[4, 4, 8, 8]])]); "
            "print(a.compute()['maxboxacc_v2'])")
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    m = torch.zeros(1, 16, 16)
    m[0, 4:9, 4:9] = 1
    from dualcam_lib.metrics import BoxAccuracy

    here = BoxAccuracy()
    here.accumulate(m, [torch.tensor([[4, 4, 8, 8]])])
    assert float(done.stdout.split()[-1]) == here.compute()["maxboxacc_v2"]
    expected = tmp_path / ("chosen" if chosen else "xdg/dualcam_lib/numba")
    assert _compiled_cache_files(expected), f"no compiled kernels cached under {expected}"
    assert _compiled_cache_files(package) == before, "numba wrote its cache into the package folder"
