"""Softmax-classifier training and the two sigmoid-head fits (faithful and fast) on tiny problems."""
import copy
import types

import pytest
import torch

from dualcam_lib.heads import DualBranchModel
from dualcam_lib.models import GapLinearHead, PoolMLPHead, TokenHead, build_classifier
from dualcam_lib.train import (FeatureCache, HeadOnReduced, default_extract_batch_size, extract_features,
                               fit_sigmoid_head, fit_sigmoid_head_fast, train_classifier)

C = 4


def tiny_split(seed=0):
    torch.manual_seed(seed)
    return build_classifier("small_cnn", C, width=8, input_size=32)


def tiny_data(n=40, size=32, seed=0):
    """Class k = a bright square in quadrant k on noise: learnable in a few steps."""
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(n, 3, size, size, generator=g) * 0.3
    labels = torch.arange(n) % C
    h = size // 2
    for i, k in enumerate(labels.tolist()):
        y, x = (k // 2) * h, (k % 2) * h
        images[i, k % 3, y + 4:y + h - 4, x + 4:x + h - 4] = 1.0
    return types.SimpleNamespace(images=images, labels=labels)


def state(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def assert_same_state(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def make_dual(split, seed=1):
    torch.manual_seed(seed)
    return DualBranchModel(split)


def test_train_classifier_learns_and_is_deterministic():
    data = tiny_data()
    a, b = tiny_split(), tiny_split()
    hist = train_classifier(a, data, epochs=4, lr=1e-2, batch_size=8, progress=False)
    train_classifier(b, data, epochs=4, lr=1e-2, batch_size=8, progress=False)
    assert hist[-1]["loss"] < hist[0]["loss"]
    assert_same_state(a.as_module().state_dict(), b.as_module().state_dict())
    assert not a.backbone.training and not a.head.training  # ends in eval mode


@pytest.mark.parametrize("fit", ["faithful", "fast"])
def test_fit_reduces_loss_and_leaves_frozen_parts_unchanged(fit):
    split = tiny_split()
    data = tiny_data()
    dual = make_dual(split)
    backbone0, softmax0, sigmoid0 = state(dual.backbone), state(dual.softmax_head), state(dual.sigmoid_head)
    if fit == "faithful":
        res = fit_sigmoid_head(dual, data, epochs=4, lr=2e-2, batch_size=8, progress=False)
    else:
        res = fit_sigmoid_head_fast(dual, data, epochs=4, lr=2e-2, batch_size=8, views=2, progress=False)
    assert res.history[-1]["loss"] < res.history[0]["loss"]
    assert_same_state(state(dual.backbone), backbone0)  # batch-norm running stats included
    assert_same_state(state(dual.softmax_head), softmax0)
    assert not torch.equal(state(dual.sigmoid_head)["fc.weight"], sigmoid0["fc.weight"])
    assert res.epochs == 4 and res.steps == 4 * (5 if fit == "faithful" else 10)


def test_fast_path_equals_faithful_path_without_augmentation():
    """One clean view, no augmentation: both paths see the same images in the same order -> the same head."""
    split = tiny_split()
    data = tiny_data()
    a, b = make_dual(split), make_dual(split)
    fit_sigmoid_head(a, data, epochs=3, lr=1e-2, batch_size=8, augment=False, progress=False)
    fit_sigmoid_head_fast(b, data, epochs=3, lr=1e-2, batch_size=8, views=1, progress=False)
    for k, v in a.sigmoid_head.state_dict().items():
        assert torch.allclose(v, b.sigmoid_head.state_dict()[k], atol=1e-6), k


@pytest.mark.parametrize("kind", ["gap_dropout", "token", "pool_mlp"])
def test_reduced_head_gives_identical_logits_and_gradients(kind):
    torch.manual_seed(0)
    if kind == "gap_dropout":
        head, feats = GapLinearHead(6, 3, dropout=0.5), torch.randn(5, 6, 4, 4)
    elif kind == "token":
        head, feats = TokenHead(6, 3, pool="mean", num_prefix_tokens=1, norm=torch.nn.LayerNorm(6)), torch.randn(5, 9, 6)
    else:
        head = PoolMLPHead(torch.nn.AdaptiveAvgPool2d(2), torch.nn.Sequential(torch.nn.Linear(24, 8), torch.nn.ReLU(),
                                                                          torch.nn.Linear(8, 3)))
        feats = torch.randn(5, 6, 4, 4)
    red = HeadOnReduced(head)
    assert red.kind != "identity"
    head.train()  # dropout active: the same RNG draws must give the same result
    torch.manual_seed(3)
    full = head(feats)
    full.square().sum().backward()
    grads_full = [p.grad.clone() for p in head.parameters()]
    head.zero_grad()
    torch.manual_seed(3)
    reduced = red(red.reduce(feats))
    reduced.square().sum().backward()
    assert torch.allclose(full, reduced, atol=1e-6)
    for g_full, p in zip(grads_full, head.parameters()):
        assert torch.allclose(g_full, p.grad, atol=1e-6)


def test_feature_cache_round_trip_and_reuse(tmp_path):
    split = tiny_split()
    data = tiny_data(n=12)
    dual = make_dual(split)
    path = tmp_path / "feats.pt"
    cache = extract_features(dual, data, views=3, progress=False, cache_path=path)
    assert cache.features.shape == (36, 32) and cache.labels.tolist() == data.labels.tolist() * 3
    assert torch.equal(cache.features[:12], extract_features(dual, data, views=1, progress=False).features)
    assert not torch.equal(cache.features[:12], cache.features[12:24])  # augmented views differ from the clean one
    assert path.exists() and not list(tmp_path.glob("*.tmp"))
    loaded = FeatureCache.load(path)
    assert torch.equal(loaded.features, cache.features) and loaded.meta == cache.meta

    def boom(*_):
        raise AssertionError("the backbone ran although a matching cache exists")

    handle = dual.backbone.register_forward_hook(boom)
    again = extract_features(dual, data, views=3, progress=False, cache_path=path)
    handle.remove()
    assert torch.equal(again.features, cache.features)
    with pytest.raises(ValueError, match="views=3.*views=2"):
        extract_features(dual, data, views=2, progress=False, cache_path=path)


def test_extraction_batch_changes_speed_not_features():
    split = tiny_split()
    data = tiny_data(n=70)
    dual = make_dual(split)
    ref = extract_features(dual, data, views=2, batch_size=70, progress=False)
    for bs in (None, 8, 33):
        got = extract_features(dual, data, views=2, batch_size=bs, progress=False)
        assert got.labels.tolist() == ref.labels.tolist() and got.meta == ref.meta
        # Each image's features are computed independently of its batch-mates: equal up to float rounding (on the
        # CPUs we run, bit for bit).
        torch.testing.assert_close(got.features, ref.features, rtol=0, atol=1e-6)
    assert default_extract_batch_size("cpu") == 32 and default_extract_batch_size("cuda:0") == 256
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        extract_features(dual, data, batch_size=0, progress=False)


def test_fits_accept_wsol_batches_and_synthetic_sets():
    from dualcam_lib.data import make_synthetic_wsol

    synth = make_synthetic_wsol(24, seed=0, size=32, num_classes=C)
    batches = list(synth.batches(8))  # an iterable of WSOLBatch
    split = tiny_split()
    for data in (synth, batches):
        for fit in (fit_sigmoid_head, fit_sigmoid_head_fast):
            dual = make_dual(split)
            w0 = dual.sigmoid_head.fc.weight.detach().clone()
            res = fit(dual, data, epochs=1, lr=1e-2, batch_size=8, progress=False)
            assert res.steps == 3 and not torch.equal(w0, dual.sigmoid_head.fc.weight)


def test_fit_rejects_bad_data():
    split = tiny_split()
    dual = make_dual(split)
    bad = types.SimpleNamespace(images=torch.rand(4, 3, 32, 32), labels=torch.tensor([0, 1, 2, 9]))
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\]"):
        fit_sigmoid_head(dual, bad, epochs=1, lr=1e-2, progress=False)
    gen = (b for b in [(torch.rand(2, 3, 32, 32), torch.tensor([0, 1]))])
    fit_sigmoid_head(dual, gen, epochs=1, lr=1e-2, progress=False)  # first epoch consumes the generator
    with pytest.raises(ValueError, match="saw no data"):
        fit_sigmoid_head(dual, gen, epochs=1, lr=1e-2, progress=False)
    with pytest.raises(ValueError, match="images must be float"):
        fit_sigmoid_head(dual, [(torch.zeros(2, 3, 32, 32, dtype=torch.uint8), torch.tensor([0, 1]))], epochs=1,
                         lr=1e-2, progress=False)


class ItemsOnly(torch.utils.data.Dataset):
    """A map-style dataset of ``collate_wsol`` items (like WSOLImageDataset), hiding the tensors of a SyntheticSet."""

    def __init__(self, synth):
        self.synth = synth

    def __len__(self):
        return len(self.synth)

    def __getitem__(self, i):
        return self.synth[i]


def test_map_style_dataset_trains_exactly_like_the_tensor_set():
    from dualcam_lib.data import make_synthetic_wsol

    synth = make_synthetic_wsol(20, seed=1, size=32, num_classes=C)
    split = tiny_split()
    a, b = make_dual(split), make_dual(split)
    fit_sigmoid_head(a, synth, epochs=2, lr=1e-2, batch_size=8, progress=False)
    fit_sigmoid_head(b, ItemsOnly(synth), epochs=2, lr=1e-2, batch_size=8, progress=False)
    for k, v in a.sigmoid_head.state_dict().items():
        assert torch.allclose(v, b.sigmoid_head.state_dict()[k], atol=1e-6), k
    clean_a = extract_features(a, synth, views=1, batch_size=8, progress=False)
    clean_b = extract_features(a, ItemsOnly(synth), views=1, batch_size=8, progress=False)
    assert torch.allclose(clean_a.features, clean_b.features, atol=1e-6)
    assert torch.equal(clean_a.labels, clean_b.labels)
