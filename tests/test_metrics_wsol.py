"""BoxAccuracy (MaxBoxAccV2, GT-known Loc, Top-1 Loc) and PxAP against the plain reference: identical numbers."""
import numpy as np
import pytest
import torch

import reference_wsol as ref
from dualcam_lib.metrics import BoxAccuracy, PxAP
from dualcam_lib.metrics import boxes as boxes_module

COARSE = np.arange(0, 1, 0.01)


def run_reference(maps, gts, correct, thresholds, **kwargs):
    evaluator = ref.ReferenceBoxEvaluator(thresholds=thresholds, **kwargs)
    for index, scoremap in enumerate(maps):
        evaluator.accumulate_one(scoremap, gts[index], None if correct is None else correct[index])
    return evaluator.compute()


def assert_same_box_results(fast: dict, expected: dict):
    assert fast["num_images"] == expected["num_images"]
    assert fast["maxboxacc"] == expected["maxboxacc"]
    assert fast["best_threshold"] == expected["best_threshold"]
    assert fast["maxboxacc_v2"] == expected["maxboxacc_v2"]
    assert np.array_equal(fast["curves"].numpy(), expected["curves"])
    assert fast["gt_known_loc"] == expected["gt_known_loc"]
    assert fast["top1_loc"] == expected["top1_loc"]


@pytest.mark.parametrize("backend", ["numba", "opencv"])
def test_box_accuracy_identical_on_hard_cases(backend):
    cases = ref.structured_cases()
    correct = [i % 3 != 0 for i in range(len(cases))]
    metric = BoxAccuracy(thresholds=COARSE, backend=backend)
    for index, (_, scoremap, gt) in enumerate(cases):  # shapes differ: one map per batch
        metric.accumulate(torch.from_numpy(scoremap)[None].float(), [torch.from_numpy(gt)],
                          torch.tensor([correct[index]]))
    maps = [torch.from_numpy(m).float().double().numpy() for _, m, _ in cases]
    expected = run_reference(maps, [gt for _, _, gt in cases], correct, COARSE)
    assert_same_box_results(metric.compute(), expected)


def test_box_accuracy_identical_with_default_thresholds_in_batches():
    maps = np.concatenate([ref.random_cam_maps(6, (32, 32), seed=4), ref.random_cam_maps(2, (32, 32), seed=5,
                                                                                         noise=0.2)])
    gts = ref.random_boxes(len(maps), (32, 32), seed=6)
    # boxes around the maps' peaks, so that the accuracies are not all zero
    for index, scoremap in enumerate(maps[:4]):
        ys, xs = np.nonzero(scoremap > 0.6)
        gts[index] = np.array([[xs.min(), ys.min(), xs.max(), ys.max()]])
    correct = torch.tensor([True, False, True, True, False, True, True, True])
    metric = BoxAccuracy()
    tensor = torch.from_numpy(maps).float()
    metric.accumulate(tensor[:5], [torch.from_numpy(g) for g in gts[:5]], correct[:5])
    metric.accumulate(tensor[5:], [torch.from_numpy(g) for g in gts[5:]], correct[5:])
    fast = metric.compute()
    expected = run_reference(tensor.double().numpy(), gts, correct.tolist(), ref.DEFAULT_THRESHOLDS)
    assert_same_box_results(fast, expected)
    assert fast["curves"].shape == (1000, 3)
    assert fast["maxboxacc"][0.3] > 0 and fast["gt_known_loc"] > 0


def test_box_accuracy_without_numba_is_identical(monkeypatch):
    maps = torch.from_numpy(ref.random_cam_maps(5, (20, 24), seed=7)).float()
    gts = [torch.from_numpy(g) for g in ref.random_boxes(5, (20, 24), seed=8)]
    with_numba = BoxAccuracy(thresholds=COARSE)
    with_numba.accumulate(maps, gts)
    monkeypatch.setattr(boxes_module, "numba", None)
    without = BoxAccuracy(thresholds=COARSE)
    without.accumulate(maps, gts)
    assert np.array_equal(with_numba.num_correct, without.num_correct)
    assert with_numba.compute()["gt_known_loc"] == without.compute()["gt_known_loc"]


def test_box_shaped_maps_localise_perfectly():
    maps = torch.zeros(3, 40, 48)
    boxes = [[5, 6, 30, 33], [0, 0, 47, 39], [20, 10, 40, 20]]
    for index, (x0, y0, x1, y1) in enumerate(boxes):
        maps[index, y0:y1 + 1, x0:x1 + 1] = 1.0
    metric = BoxAccuracy()
    metric.accumulate(maps, [torch.tensor([b]) for b in boxes], correct=torch.tensor([True, True, False]))
    result = metric.compute()
    assert result["maxboxacc"] == {0.3: 100.0, 0.5: 100.0, 0.7: 100.0}
    assert result["maxboxacc_v2"] == 100.0
    assert result["gt_known_loc"] == 100.0
    assert result["top1_loc"] == pytest.approx(200 / 3)
    assert result["best_threshold"][0.5] == 0.0


def test_box_accuracy_options_and_errors():
    maps = torch.from_numpy(ref.random_cam_maps(4, (16, 16), seed=9)).double()
    gts = [torch.from_numpy(g) for g in ref.random_boxes(4, (16, 16), seed=10)]
    metric = BoxAccuracy(thresholds=[0.1, 0.5], iou_thresholds=(0.1, 0.9), cam_threshold=0.5)
    with pytest.raises(RuntimeError, match="before any accumulate"):
        metric.compute()
    metric.accumulate(maps, gts)
    result = metric.compute()
    expected = run_reference(maps.numpy(), [g.numpy() for g in gts], None, [0.1, 0.5], iou_thresholds=(0.1, 0.9),
                             cam_threshold=0.5)
    assert_same_box_results(result, expected)
    assert result["top1_loc"] is None
    with pytest.raises(ValueError, match="every batch or with none"):
        metric.accumulate(maps, gts, correct=torch.ones(4, dtype=torch.bool))
    with pytest.raises(ValueError, match="3 entries for 4 maps"):
        BoxAccuracy().accumulate(maps, gts, correct=torch.ones(3, dtype=torch.bool))
    with pytest.raises(ValueError, match="thresholds"):
        BoxAccuracy(thresholds=[-0.1, 0.5])
    with pytest.raises(ValueError, match="within"):
        BoxAccuracy().accumulate(maps * 2, gts)


def test_half_precision_maps_are_accepted():
    maps = torch.from_numpy(ref.random_cam_maps(3, (16, 16), seed=11))
    gts = [torch.from_numpy(g) for g in ref.random_boxes(3, (16, 16), seed=12)]
    half = BoxAccuracy(thresholds=COARSE)
    half.accumulate(maps.half(), gts)
    expected = run_reference(maps.half().double().numpy(), [g.numpy() for g in gts], None, COARSE)
    assert_same_box_results(half.compute(), expected)


# ----------------------------------------------------------------------------------------------------------- PxAP
def make_mask_cases(seed=0):
    rng = np.random.default_rng(seed)
    maps = ref.random_cam_maps(6, (24, 28), seed=seed)
    masks = (maps + 0.4 * rng.random(maps.shape)) > 0.75
    ignore = (maps > 0.4) & (rng.random(maps.shape) > 0.5)  # overlaps the foreground on purpose
    return maps, masks, ignore


@pytest.mark.parametrize("use_numba", [True, False])
@pytest.mark.parametrize("thresholds", [None, np.arange(0, 1, 0.05), [0.0, 0.3, 0.31, 0.9]])
def test_pxap_identical_to_reference(use_numba, thresholds, monkeypatch):
    if not use_numba:
        monkeypatch.setattr(boxes_module, "numba", None)
    maps, masks, ignore = make_mask_cases()
    structured = [(m, m > 0.5) for _, m, _ in ref.structured_cases() if m.shape == (28, 32)]
    metric = PxAP(thresholds=thresholds)
    reference = ref.ReferenceMaskEvaluator(thresholds=ref.DEFAULT_THRESHOLDS if thresholds is None else thresholds)
    tensor = torch.from_numpy(maps).float()
    metric.accumulate(tensor[:4], torch.from_numpy(masks[:4]), torch.from_numpy(ignore[:4]))
    metric.accumulate(tensor[4:], torch.from_numpy(masks[4:]))
    for index in range(len(maps)):
        reference.accumulate_one(tensor[index].double().numpy(), masks[index], ignore[index] if index < 4 else None)
    for scoremap, mask in structured:
        metric.accumulate(torch.from_numpy(scoremap)[None], torch.from_numpy(mask)[None])
        reference.accumulate_one(scoremap, mask)
    fast, expected = metric.compute(), reference.compute()
    assert fast["pxap"] == expected["pxap"]
    assert np.array_equal(metric.true_hist, reference.true_hist)
    assert np.array_equal(metric.false_hist, reference.false_hist)
    np.testing.assert_array_equal(fast["precision"].numpy(), expected["precision"])
    np.testing.assert_array_equal(fast["recall"].numpy(), expected["recall"])
    assert fast["thresholds"][0] == 2.0 and fast["thresholds"][1] == 1.0


def test_pxap_known_values():
    masks = torch.zeros(2, 10, 10, dtype=torch.bool)
    masks[:, 2:6, 3:8] = True
    perfect = PxAP()
    perfect.accumulate(masks.float(), masks)
    assert perfect.compute()["pxap"] == 100.0
    inverted = PxAP()
    inverted.accumulate((~masks).float(), masks)
    assert inverted.compute()["pxap"] < 30
    ignored = PxAP()  # the background scored high, but all of it ignored: perfect again
    maps = torch.where(masks, torch.ones(()), torch.full((), 0.9))
    ignored.accumulate(maps, masks, ignore=~masks)
    assert ignored.compute()["pxap"] == 100.0


def test_pxap_errors():
    metric = PxAP()
    maps = torch.rand(2, 6, 6)
    with pytest.raises(ValueError, match="masks has shape"):
        metric.accumulate(maps, torch.zeros(2, 5, 6, dtype=torch.bool))
    with pytest.raises(ValueError, match="bool"):
        metric.accumulate(maps, torch.zeros(2, 6, 6))
    with pytest.raises(ValueError, match="ignore has shape"):
        metric.accumulate(maps, torch.zeros(2, 6, 6, dtype=torch.bool), torch.zeros(1, 6, 6, dtype=torch.bool))
    metric.accumulate(maps, torch.zeros(2, 6, 6, dtype=torch.bool))
    with pytest.raises(RuntimeError, match="no foreground"):
        metric.compute()
    with pytest.raises(ValueError, match="increase"):
        PxAP(thresholds=[0.5, 0.2])


# ------------------------------------------------------------------------------------------- per-image results
@pytest.mark.parametrize("backend", ["numba", "opencv"])
def test_box_accuracy_per_image_recomputes_compute_exactly(backend):
    maps = torch.from_numpy(np.concatenate([ref.random_cam_maps(7, (24, 24), seed=21),
                                            ref.random_cam_maps(5, (24, 24), seed=22, noise=0.3)])).float()
    gts = ref.random_boxes(len(maps), (24, 24), seed=23)
    for index, scoremap in enumerate(maps[:6].numpy()):  # boxes around the peaks: some hits at every level
        ys, xs = np.nonzero(scoremap > 0.5 + 0.05 * index)
        gts[index] = np.array([[xs.min(), ys.min(), xs.max(), ys.max()]])
    correct = torch.tensor([i % 4 != 1 for i in range(len(maps))])
    metric = BoxAccuracy(thresholds=COARSE, backend=backend, per_image=True)
    plain = BoxAccuracy(thresholds=COARSE, backend=backend)
    for start, stop in ((0, 5), (5, 6), (6, 12)):
        batch = (maps[start:stop], [torch.from_numpy(g) for g in gts[start:stop]], correct[start:stop])
        metric.accumulate(*batch)
        plain.accumulate(*batch)
    result = metric.compute()
    table = metric.per_image()
    assert table["hits"].shape == (12, len(COARSE), 3) and table["hits"].dtype == bool
    assert table["gt_known"].shape == (12,) and table["top1_loc"].dtype == bool
    assert np.array_equal(table["hits"].sum(axis=0), metric.num_correct)
    curves = table["hits"].sum(axis=0, dtype=np.int64) * 100.0 / float(len(maps))
    maxboxacc = {delta: float(curves[:, d].max()) for d, delta in enumerate(metric.iou_thresholds)}
    assert maxboxacc == result["maxboxacc"] and 0 < maxboxacc[0.5]
    assert float(np.mean(list(maxboxacc.values()))) == result["maxboxacc_v2"]
    assert table["gt_known"].sum() * 100.0 / len(maps) == result["gt_known_loc"] > 0
    assert table["top1_loc"].sum() * 100.0 / len(maps) == result["top1_loc"]
    assert np.array_equal(table["top1_loc"], table["gt_known"] & correct.numpy())
    # per-image bookkeeping changes nothing in compute(), and a second call gives the same tables
    for key in ("maxboxacc", "maxboxacc_v2", "gt_known_loc", "top1_loc"):
        assert result[key] == plain.compute()[key]
    assert np.array_equal(plain.num_correct, metric.num_correct)
    again = metric.per_image()
    assert np.array_equal(again["hits"], table["hits"]) and np.array_equal(again["gt_known"], table["gt_known"])
    # images are kept in order: image 3 alone gives the same row
    single = BoxAccuracy(thresholds=COARSE, backend=backend, per_image=True)
    single.accumulate(maps[3:4], [torch.from_numpy(gts[3])], correct[3:4])
    assert np.array_equal(single.per_image()["hits"][0], table["hits"][3])


def test_box_accuracy_per_image_options_and_errors():
    maps = torch.from_numpy(ref.random_cam_maps(4, (16, 16), seed=24)).float()
    gts = [torch.from_numpy(g) for g in ref.random_boxes(4, (16, 16), seed=25)]
    with pytest.raises(RuntimeError, match="per_image=True"):
        plain = BoxAccuracy(thresholds=COARSE)
        plain.accumulate(maps, gts)
        plain.per_image()
    metric = BoxAccuracy(thresholds=[0.1, 0.5], iou_thresholds=(0.4,), per_image=True)
    with pytest.raises(RuntimeError, match="before any accumulate"):
        metric.per_image()
    metric.accumulate(maps, gts)
    table = metric.per_image()
    assert table["hits"].shape == (4, 2, 1) and table["top1_loc"] is None
    assert table["iou_thresholds"] == (0.4,) and np.array_equal(table["thresholds"], [0.1, 0.5])
    metric.reset()
    metric.accumulate(maps[:2], gts[:2])
    assert metric.per_image()["hits"].shape == (2, 2, 1)
