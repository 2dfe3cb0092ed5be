"""Embedded synthetic datasets: determinism, exact ground truth, balance, and no class signal off the object."""
import pytest
import torch

from dualcam_lib.data import (SyntheticSet, WSOLBatch, make_synthetic_digits, make_synthetic_finegrained,
                              make_synthetic_wsol, synthetic_splits, tight_boxes)
from dualcam_lib.data.datasets import collate_wsol, load_dataset

GENERATORS = [make_synthetic_wsol, make_synthetic_finegrained, make_synthetic_digits]


@pytest.fixture(scope="module")
def wsol():
    return make_synthetic_wsol(300, seed=3)


@pytest.fixture(scope="module")
def birds():
    return make_synthetic_finegrained(160, seed=3)


@pytest.mark.parametrize("make", GENERATORS)
def test_same_seed_same_tensors_other_seed_differs(make):
    a, b, c = make(24, seed=5, size=32), make(24, seed=5, size=32), make(24, seed=6, size=32)
    for field in ("images", "labels", "boxes", "masks"):
        assert torch.equal(getattr(a, field), getattr(b, field)), field
    assert not torch.equal(a.images, c.images) and not torch.equal(a.masks, c.masks)


@pytest.mark.parametrize("make", GENERATORS)
def test_shapes_types_ranges(make):
    s = make(20, seed=0, size=48)
    assert s.images.shape == (20, 3, 48, 48) and s.images.dtype == torch.float32
    assert 0 <= s.images.min() and s.images.max() <= 1
    assert s.labels.dtype == torch.long and s.boxes.dtype == torch.long and s.boxes.shape == (20, 4)
    assert s.masks.shape == (20, 48, 48) and s.masks.dtype == torch.bool
    assert s.masks.flatten(1).any(1).all(), "every image has a visible object"
    assert len(s.class_names) == s.num_classes and len(set(s.class_names)) == s.num_classes


def tight_box_loop(mask):
    ys, xs = mask.nonzero(as_tuple=True)
    return [int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())]


@pytest.mark.parametrize("make", GENERATORS)
def test_boxes_are_the_tight_boxes_of_the_masks(make):
    s = make(40, seed=1, size=64)
    assert s.boxes.tolist() == [tight_box_loop(m) for m in s.masks]


def test_tight_boxes_edge_cases():
    masks = torch.zeros(3, 5, 7, dtype=torch.bool)
    masks[0, 4, 6] = True
    masks[1, 1:3, 0:7] = True
    assert tight_boxes(masks).tolist() == [[6, 4, 6, 4], [0, 1, 6, 2], [0, 0, 0, 0]]


def test_wsol_object_size_and_class_balance(wsol):
    side = torch.maximum(wsol.boxes[:, 2] - wsol.boxes[:, 0], wsol.boxes[:, 3] - wsol.boxes[:, 1]) + 1
    frac = side.float() / 64
    assert frac.min() >= 0.15 and frac.max() <= 0.66  # 25-60% of the image (+1 pixel, tilt), less if occluded
    counts = torch.bincount(wsol.labels, minlength=10)
    assert counts.max() - counts.min() <= 1
    centres = (wsol.boxes[:, :2] + wsol.boxes[:, 2:]).float() / 2
    assert centres.std(0).min() > 8, "objects should be spread over the image, not centred"


def test_background_carries_no_class_signal(wsol):
    """A nearest-centroid classifier on the mean colour outside the object box is at chance level."""
    outside = torch.ones_like(wsol.masks)
    for k, (x0, y0, x1, y1) in enumerate(wsol.boxes.tolist()):
        outside[k, y0:y1 + 1, x0:x1 + 1] = False
    feats = (wsol.images * outside[:, None]).sum((2, 3)) / outside.sum((1, 2))[:, None]
    inside = (wsol.images * wsol.masks[:, None]).sum((2, 3)) / wsol.masks.sum((1, 2))[:, None]

    def centroid_accuracy(x):
        train, test = slice(0, 200), slice(200, 300)
        cents = torch.stack([x[train][wsol.labels[train] == c].mean(0) for c in range(10)])
        pred = torch.cdist(x[test], cents).argmin(1)
        return (pred == wsol.labels[test]).float().mean().item()

    assert centroid_accuracy(feats) < 0.25  # chance is 0.10
    # the object's own colours do tell its texture (striped red/yellow vs checked blue/white) apart
    textures = wsol.labels // 5
    cents = torch.stack([inside[:200][textures[:200] == t].mean(0) for t in (0, 1)])
    assert (torch.cdist(inside[200:], cents).argmin(1) == textures[200:]).float().mean() > 0.9


def test_finegrained_parts_inside_birds_and_small(birds):
    assert birds.part_masks is not None and birds.part_masks.shape == birds.masks.shape
    assert not (birds.part_masks & ~birds.masks).any(), "part masks lie inside the bird"
    assert birds.part_masks.flatten(1).any(1).all()
    ratio = birds.part_masks.sum((1, 2)).float() / birds.masks.sum((1, 2)).float()
    assert 0.03 < ratio.mean() < 0.35, f"discriminative parts should be small, got {ratio.mean():.2f}"
    counts = torch.bincount(birds.labels, minlength=8)
    assert counts.tolist() == [20] * 8
    assert "beak" in birds.class_names[0] and len(birds.class_names) == 8


def test_finegrained_classes_differ_only_in_parts(birds):
    """Off the discriminative parts, the mean colour of the bird does not tell the class."""
    body = birds.masks & ~birds.part_masks
    feats = (birds.images * body[:, None]).sum((2, 3)) / body.sum((1, 2))[:, None]
    part = (birds.images * birds.part_masks[:, None]).sum((2, 3)) / birds.part_masks.sum((1, 2))[:, None]

    def centroid_accuracy(x):
        cents = torch.stack([x[:100][birds.labels[:100] == c].mean(0) for c in range(8)])
        return (torch.cdist(x[100:], cents).argmin(1) == birds.labels[100:]).float().mean().item()

    assert centroid_accuracy(feats) < 0.3  # chance 0.125
    assert centroid_accuracy(part) > 0.5


def test_subset_batches_and_items(wsol):
    sub = wsol.subset([5, 2, 7])
    assert isinstance(sub, SyntheticSet) and len(sub) == 3
    assert torch.equal(sub.images[1], wsol.images[2]) and sub.image_ids() == ["synthetic/3/5", "synthetic/3/2",
                                                                               "synthetic/3/7"]
    batches = list(wsol.subset(slice(0, 10)).batches(4))
    assert [len(b.labels) for b in batches] == [4, 4, 2]
    b = batches[0]
    assert isinstance(b, WSOLBatch) and b.images.shape == (4, 3, 64, 64) and b.ignore is None
    assert [t.shape for t in b.boxes] == [(1, 4)] * 4 and b.masks.shape == (4, 64, 64)
    shuffled = [i for bt in wsol.batches(64, shuffle=True, seed=1) for i in bt.image_ids]
    assert sorted(shuffled) == sorted(wsol.image_ids()) and shuffled != wsol.image_ids()
    same = [i for bt in wsol.batches(64, shuffle=True, seed=1) for i in bt.image_ids]
    assert shuffled == same
    collated = collate_wsol([wsol[0], wsol[1]])
    assert torch.equal(collated.images, wsol.images[:2]) and collated.boxes[1].tolist() == [wsol.boxes[1].tolist()]


def test_splits_use_disjoint_seeds():
    train, test = synthetic_splits("synthetic", 16, 8, seed=0)
    assert len(train) == 16 and len(test) == 8 and train.seed != test.seed
    assert not torch.equal(train.images[:8], test.images)
    train2, _ = synthetic_splits("synthetic", 16, 8, seed=1)
    assert train2.seed not in (train.seed, test.seed)
    again = load_dataset("synthetic", "test", n=8)
    assert torch.equal(again.images, test.images)
    fg = load_dataset("finegrained", "train", n=8, size=48, num_classes=4)
    assert fg.images.shape == (8, 3, 48, 48) and fg.num_classes == 4


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="num_classes"):
        make_synthetic_wsol(4, num_classes=25)
    with pytest.raises(ValueError, match="size"):
        make_synthetic_finegrained(4, size=16)
    with pytest.raises(ValueError, match="n must be"):
        make_synthetic_digits(0)
    with pytest.raises(ValueError, match="unknown synthetic dataset"):
        synthetic_splits("cifar", 4, 4)


def test_distractor_colours_keep_away_from_class_colours():
    from dualcam_lib.data.synthetic import _colours_away_from

    avoid = torch.tensor([[0.85, 0.15, 0.10], [0.95, 0.85, 0.20], [0.15, 0.25, 0.80], [0.92, 0.92, 0.92]])
    colours = _colours_away_from(avoid, 2000, torch.Generator().manual_seed(0))
    distance = torch.cdist(colours, avoid).amin(1)
    assert colours.shape == (2000, 3) and (distance >= 0.4).float().mean() > 0.99
    free = _colours_away_from(None, 50, torch.Generator().manual_seed(0))
    assert torch.cdist(free, avoid).amin(1).min() < 0.4  # without the constraint some land near a class colour
