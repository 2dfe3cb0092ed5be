"""Seeded paired bootstrap on per-image tables: reproducible, equal to compute() on the full set, sensible intervals."""
import time

import numpy as np
import pytest
import torch

from dualcam_lib.metrics import BoxAccuracy, FidelityAccumulator, bootstrap_indices, bootstrap_interval, \
    paired_bootstrap, resample_weights
from dualcam_lib.metrics import bootstrap as bs

BOX_METRICS = ("maxboxacc_v2", "maxboxacc_30", "maxboxacc_50", "maxboxacc_70", "gt_known_loc", "top1_loc")


def blob_maps(centres, sigmas, size=32):
    """``(B, size, size)`` float32 gaussian blobs, peak 1, centred at ``centres`` ``(B, 2)`` (x, y)."""
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float64)
    maps = [np.exp(-((xs - cx) ** 2 + (ys - cy) ** 2) / (2 * s ** 2)) for (cx, cy), s in zip(centres, sigmas)]
    return torch.from_numpy(np.stack(maps)).float()


@pytest.fixture(scope="module")
def two_branches():
    """Real BoxAccuracy / FidelityAccumulator runs on the same 60 synthetic images: branch a ("softmax") has broad
    blobs off the object, branch b ("sigmoid") tight blobs on it."""
    rng = np.random.default_rng(3)
    n = 60
    centres = rng.uniform(10, 22, size=(n, 2))
    half = rng.uniform(3, 6, size=(n, 2))
    gts = [torch.tensor([[int(cx - hx), int(cy - hy), int(cx + hx), int(cy + hy)]])
           for (cx, cy), (hx, hy) in zip(centres, half)]
    correct = torch.from_numpy(rng.random(n) < 0.8)
    maps_a = blob_maps(centres + rng.normal(0, 3, size=(n, 2)), rng.uniform(3, 10, n))
    maps_b = blob_maps(centres + rng.normal(0, 1, size=(n, 2)), half.mean(axis=1) * rng.uniform(0.6, 1.2, n))
    accumulators = {}
    for name, maps in (("a", maps_a), ("b", maps_b)):
        metric = BoxAccuracy(per_image=True)
        fidelity = FidelityAccumulator()
        for start in range(0, n, 25):
            stop = start + 25
            metric.accumulate(maps[start:stop], gts[start:stop], correct[start:stop])
        y = torch.from_numpy(rng.uniform(0.3, 0.95, n)).float()
        o = (y * torch.from_numpy(rng.uniform(0.2 if name == "a" else 0.6, 1.1, n)).float()).clamp(max=1)
        for start in range(0, n, 16):
            fidelity.accumulate(y[start:start + 16], o[start:start + 16])
        accumulators[name] = (metric, fidelity)
    return accumulators


def test_indices_are_seeded_and_independent_of_the_global_rng():
    np.random.seed(1)
    torch.manual_seed(1)
    first = bootstrap_indices(300, 50, seed=7)
    np.random.seed(2)
    torch.manual_seed(2)
    np.random.random(10)
    assert np.array_equal(first, bootstrap_indices(300, 50, seed=7))
    assert not np.array_equal(first, bootstrap_indices(300, 50, seed=8))
    assert first.shape == (50, 300) and first.dtype == np.int64 and first.min() >= 0 and first.max() < 300
    weights = resample_weights(first)
    assert weights.shape == (50, 300) and (weights.sum(axis=1) == 300).all()
    assert np.array_equal(weights[4], np.bincount(first[4], minlength=300))
    with pytest.raises(ValueError, match="at least one image"):
        bootstrap_indices(0)


def test_same_seed_same_interval_other_seed_other_interval(two_branches):
    (box_a, fid_a), (box_b, fid_b) = two_branches["a"], two_branches["b"]
    for a, b, metric in ((box_a, box_b, "maxboxacc_v2"), (box_a, box_b, "gt_known_loc"), (fid_a, fid_b, "avg_drop")):
        first = paired_bootstrap(a, b, metric, num_resamples=400, seed=11)
        assert first == paired_bootstrap(a.per_image(), b.per_image(), metric, num_resamples=400, seed=11)
        other = paired_bootstrap(a, b, metric, num_resamples=400, seed=12)
        assert other["se"] != first["se"]  # other resamples (a count metric on 60 images may share quantiles)
        if metric != "gt_known_loc":
            assert other["low"] != first["low"] and other["high"] != first["high"]
        assert other["delta"] == first["delta"] and (other["seed"], other["n"]) == (12, 60)
        single = bootstrap_interval(b, metric, num_resamples=400, seed=11)
        assert single == bootstrap_interval(b, metric, num_resamples=400, seed=11)
        assert single != bootstrap_interval(b, metric, num_resamples=400, seed=12)


def test_point_estimates_equal_compute(two_branches):
    for name in ("a", "b"):
        box, fidelity = two_branches[name]
        result = box.compute()
        assert 0 < result["gt_known_loc"] < 100 and 0 < result["maxboxacc_v2"] < 100
        expected = {"maxboxacc_v2": result["maxboxacc_v2"], "gt_known_loc": result["gt_known_loc"],
                    "top1_loc": result["top1_loc"], **{f"maxboxacc_{round(d * 100)}": result["maxboxacc"][d]
                                                       for d in (0.3, 0.5, 0.7)}}
        for metric in BOX_METRICS:  # bit-equal, not close
            assert bs.statistic(box.per_image(), metric) == expected[metric], metric
            assert bootstrap_interval(box, metric, num_resamples=50)["estimate"] == expected[metric]
        values = fidelity.compute()
        assert bs.statistic(fidelity, "inc_conf") == values["increase_in_confidence"]
        assert bs.statistic(fidelity, "avg_drop") == pytest.approx(values["average_drop"], rel=1e-13, abs=0)
    a, b = two_branches["a"][0], two_branches["b"][0]
    result = paired_bootstrap(a, b, "maxboxacc_v2", num_resamples=200)
    assert result["a"] == a.compute()["maxboxacc_v2"] and result["b"] == b.compute()["maxboxacc_v2"]
    assert result["delta"] == result["b"] - result["a"]
    # the synthetic sigmoid branch localises better, and 60 images are enough to see it
    assert result["delta"] > 0 and result["excludes_zero"] and result["low"] <= result["delta"] <= result["high"]


def test_batched_statistics_equal_explicit_resamples(two_branches):
    box, fidelity = two_branches["b"]
    table, probabilities = box.per_image(), fidelity.per_image()
    indices = bootstrap_indices(60, 6, seed=5)
    weights = resample_weights(indices)
    for metric in BOX_METRICS:
        batched = bs.statistic(table, metric, weights)
        assert batched.shape == (6,)
        for r, rows in enumerate(indices):
            resampled = {key: table[key][rows] for key in ("hits", "gt_known", "top1_loc")}
            assert batched[r] == bs.statistic(resampled, metric), metric
    for metric in ("avg_drop", "inc_conf"):
        batched = bs.statistic(probabilities, metric, weights)
        for r, rows in enumerate(indices):
            explicit = bs.statistic({"y": probabilities["y"][rows], "o": probabilities["o"][rows]}, metric)
            assert batched[r] == pytest.approx(explicit, rel=1e-12)

    # the interval is the 2.5% / 97.5% quantiles of the resampled deltas, with the same indices for both branches
    other = two_branches["a"][0].per_image()
    indices = bootstrap_indices(60, 40, seed=9)
    deltas = [bs.statistic({"hits": table["hits"][rows]}, "maxboxacc_v2")
              - bs.statistic({"hits": other["hits"][rows]}, "maxboxacc_v2") for rows in indices]
    result = paired_bootstrap(other, table, "maxboxacc_v2", num_resamples=40, seed=9)
    assert (result["low"], result["high"]) == tuple(np.quantile(deltas, [0.025, 0.975]))
    assert result["se"] == pytest.approx(np.std(deltas, ddof=1))
    single = bootstrap_interval(table, "maxboxacc_v2", num_resamples=40, seed=9, level=0.8)
    values = [bs.statistic({"hits": table["hits"][rows]}, "maxboxacc_v2") for rows in indices]
    assert (single["low"], single["high"]) == tuple(np.quantile(values, [0.1, 0.9]))


def test_identical_branches_give_a_zero_interval(two_branches):
    box, fidelity = two_branches["a"]
    for table, metric in [(box, m) for m in BOX_METRICS] + [(fidelity, "avg_drop"), (fidelity, "inc_conf")]:
        result = paired_bootstrap(table, table, metric, num_resamples=300, seed=3)
        assert (result["delta"], result["low"], result["high"]) == (0.0, 0.0, 0.0), metric
        assert not result["excludes_zero"]


def test_clear_effect_excludes_zero_and_tiny_effect_does_not():
    rng = np.random.default_rng(0)
    a = {"gt_known": rng.random(300) < 0.3}
    b = {"gt_known": rng.random(300) < 0.9}
    result = paired_bootstrap(a, b, "gt_known_loc")
    assert result["excludes_zero"] and 45 < result["low"] < result["delta"] < result["high"] < 75
    assert result["n"] == 300 and result["num_resamples"] == 1000
    # the same with (N, T, D) hit tables: b hits at every threshold on 90% of the images, a on 30%
    hits_a = np.repeat(a["gt_known"][:, None, None], 3, axis=2).repeat(100, axis=1)
    hits_b = np.repeat(b["gt_known"][:, None, None], 3, axis=2).repeat(100, axis=1)
    result = paired_bootstrap({"hits": hits_a}, {"hits": hits_b}, "maxboxacc_v2")
    assert result["excludes_zero"] and result["low"] > 40
    # one image of 300 differs: delta = 1/3 point, interval includes 0
    flags = rng.random(300) < 0.5
    changed = flags.copy()
    changed[np.argmin(flags)] = True
    tiny = paired_bootstrap({"gt_known": flags}, {"gt_known": changed}, "gt_known_loc")
    assert tiny["delta"] == pytest.approx(100 / 300)
    assert tiny["low"] <= 0 <= tiny["high"] and not tiny["excludes_zero"]
    # sigmoid worse than softmax: a negative interval excludes zero as well
    worse = paired_bootstrap(b, a, "gt_known_loc")
    assert worse["high"] < 0 and worse["excludes_zero"]


def test_interval_covers_the_true_difference():
    start = time.perf_counter()
    rng = np.random.default_rng(2024)
    p_a, p_b, n = 0.55, 0.62, 300
    covered = []
    for dataset in range(200):
        u = rng.random(n)
        v = np.where(rng.random(n) < 0.6, u, rng.random(n))  # paired: the branches agree on most images
        result = paired_bootstrap({"gt_known": u < p_a}, {"gt_known": v < p_b}, "gt_known_loc",
                                  num_resamples=500, seed=dataset)
        covered.append(result["low"] <= (p_b - p_a) * 100 <= result["high"])
    coverage = float(np.mean(covered))
    assert 0.88 <= coverage <= 0.99, coverage
    assert time.perf_counter() - start < 5


def test_errors():
    with pytest.raises(ValueError, match="a has 300 images, b has 299"):
        paired_bootstrap({"gt_known": np.ones(300, bool)}, {"gt_known": np.ones(299, bool)}, "gt_known_loc")
    with pytest.raises(ValueError, match="a has 4 images, b has 5"):
        paired_bootstrap({"hits": np.ones((4, 10, 3), bool)}, {"hits": np.ones((5, 10, 3), bool)}, "maxboxacc_50")
    with pytest.raises(ValueError, match="unknown metric"):
        paired_bootstrap({"gt_known": np.ones(3, bool)}, {"gt_known": np.ones(3, bool)}, "pxap")
    with pytest.raises(ValueError, match="accumulate with `correct`"):
        bootstrap_interval({"gt_known": np.ones(3, bool), "top1_loc": None}, "top1_loc")
    with pytest.raises(ValueError, match="no IoU level 0.7"):
        bootstrap_interval({"hits": np.ones((3, 4, 2), bool), "iou_thresholds": (0.3, 0.5)}, "maxboxacc_70")
    with pytest.raises(ValueError, match="level"):
        bootstrap_interval({"gt_known": np.ones(3, bool)}, "gt_known_loc", level=95)
