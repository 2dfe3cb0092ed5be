"""ClassBalancedBCE against hand computations, the paper's Eq. 12 identity, and the augmentations."""
import math

import pytest
import torch

from dualcam_lib.augment import FlipTranslate, NoAugment, PaperAugment, batched_crop, index_params, resolve_augment
from dualcam_lib.train import ClassBalancedBCE, ablation_pos_weights, lr_factor, paper_lr

LOGITS = torch.tensor([[2.0, -1.0, 0.0], [0.5, 1.0, -2.0]], dtype=torch.float64)
LABELS = torch.tensor([0, 1])


def log_sig(z):
    return math.log(1.0 / (1.0 + math.exp(-z)))


def log_one_minus_sig(z):
    return math.log(1.0 - 1.0 / (1.0 + math.exp(-z)))


def test_pos_weight_default_matches_hand_computation():
    # pos_weight = C-1 = 2; mean over B x C = 6 terms.
    img0 = -(2 * log_sig(2.0) + log_one_minus_sig(-1.0) + log_one_minus_sig(0.0))
    img1 = -(log_one_minus_sig(0.5) + 2 * log_sig(1.0) + log_one_minus_sig(-2.0))
    expected = (img0 + img1) / 6
    loss = ClassBalancedBCE(3)(LOGITS, LABELS)
    assert loss.item() == pytest.approx(expected, rel=1e-12)
    per_image = ClassBalancedBCE(3, reduction="none")(LOGITS, LABELS)
    assert per_image.tolist() == pytest.approx([img0 / 3, img1 / 3], rel=1e-12)
    assert ClassBalancedBCE(3, reduction="sum")(LOGITS, LABELS).item() == pytest.approx((img0 + img1) / 3)


@pytest.mark.parametrize("ratio", [1.0, 0.5 * (3 - 1), 7.5])
def test_any_pos_weight_ratio_matches_hand_computation(ratio):
    img0 = -(ratio * log_sig(2.0) + log_one_minus_sig(-1.0) + log_one_minus_sig(0.0))
    img1 = -(log_one_minus_sig(0.5) + ratio * log_sig(1.0) + log_one_minus_sig(-2.0))
    loss = ClassBalancedBCE(3, pos_weight=ratio)(LOGITS, LABELS)
    assert loss.item() == pytest.approx((img0 + img1) / 6, rel=1e-12)


def test_pos_weight_equals_torch_bce_with_logits():
    logits = torch.randn(5, 7, dtype=torch.float64)
    labels = torch.randint(0, 7, (5,))
    onehot = torch.nn.functional.one_hot(labels, 7).double()
    ref = torch.nn.BCEWithLogitsLoss(pos_weight=torch.full((7,), 6.0, dtype=torch.float64))(logits, onehot)
    assert torch.allclose(ClassBalancedBCE(7)(logits, labels), ref)
    assert torch.allclose(ClassBalancedBCE(7)(logits, onehot), ref)  # one-hot targets accepted too


def test_eq12_matches_hand_computation_and_equals_pos_weight_form():
    c = 3
    img0 = -((1 - 1 / c) * log_sig(2.0) + (1 / c) * (log_one_minus_sig(-1.0) + log_one_minus_sig(0.0)))
    img1 = -((1 - 1 / c) * log_sig(1.0) + (1 / c) * (log_one_minus_sig(0.5) + log_one_minus_sig(-2.0)))
    eq12 = ClassBalancedBCE(c, weighting="eq12")(LOGITS, LABELS)
    assert eq12.item() == pytest.approx((img0 + img1) / 2, rel=1e-12)
    # Eq. 12 with r = C-1 is the pos_weight form multiplied out: identical values.
    assert eq12.item() == pytest.approx(ClassBalancedBCE(c)(LOGITS, LABELS).item(), rel=1e-12)
    # Other ratios: eq12 = pos_weight form * C / (r + 1).
    r = 1.0
    a = ClassBalancedBCE(c, pos_weight=r, weighting="eq12")(LOGITS, LABELS).item()
    b = ClassBalancedBCE(c, pos_weight=r)(LOGITS, LABELS).item()
    assert a == pytest.approx(b * c / (r + 1), rel=1e-12)


def test_loss_is_stable_for_large_logits():
    logits = torch.tensor([[80.0, -80.0], [-80.0, 80.0]])
    assert torch.isfinite(ClassBalancedBCE(2)(logits, torch.tensor([1, 0])))
    assert torch.isfinite(ClassBalancedBCE(2, weighting="eq12")(logits, torch.tensor([1, 0])))


def test_loss_rejects_bad_inputs():
    with pytest.raises(ValueError, match="weighting"):
        ClassBalancedBCE(3, weighting="focal")
    with pytest.raises(ValueError, match="pos_weight"):
        ClassBalancedBCE(3, pos_weight=0)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 2\]"):
        ClassBalancedBCE(3)(LOGITS, torch.tensor([0, 3]))
    with pytest.raises(ValueError, match=r"logits must be \(B, 4\)"):
        ClassBalancedBCE(4)(LOGITS, LABELS)


def test_ablation_ratios_and_paper_lr():
    assert ablation_pos_weights(1000) == {"1:1": 1.0, "(C-1)/2:1": 499.5, "C-1:1": 999.0}
    assert paper_lr("resnet50", "gradcam") == 5e-3 and paper_lr("vgg16", "cam") == 3e-3
    with pytest.raises(ValueError, match="no learning rate"):
        paper_lr("small_cnn")


def test_lr_factor_schedules():
    assert lr_factor("constant", 5, 10) == 1.0
    assert lr_factor("cosine", 0, 10) == 1.0 and lr_factor("cosine", 10, 10) == pytest.approx(0.0)
    assert lr_factor("cosine", 0, 10, warmup_steps=4) == 0.25


# ---------------------------------------------------------------------------------------------------- augment


def test_batched_crop_takes_each_images_own_window():
    images = torch.arange(2 * 3 * 6 * 6, dtype=torch.float32).view(2, 3, 6, 6)
    out = batched_crop(images, torch.tensor([0, 2]), torch.tensor([1, 3]), 3, 2)
    assert torch.equal(out[0], images[0, :, 0:3, 1:3])
    assert torch.equal(out[1], images[1, :, 2:5, 3:5])


def test_paper_augment_shape_determinism_and_batching_invariance():
    images = torch.rand(6, 3, 64, 64)
    aug = PaperAugment()
    a = aug(images, torch.Generator().manual_seed(1))
    b = aug(images, torch.Generator().manual_seed(1))
    assert a.shape == images.shape and torch.equal(a, b)
    assert not torch.equal(a, aug(images, torch.Generator().manual_seed(2)))
    params = aug.sample(6, torch.Generator().manual_seed(3), 64, 64)
    assert int(params["top"].max()) <= 73 - 64  # resize 64 * 256/224 -> 73, crop 64
    whole = aug.apply(images, params)
    halves = torch.cat([aug.apply(images[:3], index_params(params, slice(0, 3))),
                        aug.apply(images[3:], index_params(params, slice(3, 6)))])
    assert torch.allclose(whole, halves)


def test_flip_translate_and_resolve():
    images = torch.rand(4, 3, 16, 16)
    params = {"flip": torch.tensor([True, False, False, False]), "top": torch.tensor([2, 2, 0, 4]),
              "left": torch.tensor([2, 2, 4, 0])}
    out = FlipTranslate(2).apply(images, params)
    assert torch.equal(out[0], images[0].flip(-1))  # offset (2, 2) = no shift
    assert torch.equal(out[1], images[1])
    assert torch.equal(out[2, :, 2:, :14], images[2, :, :14, 2:])  # shifted down 2 and left 2
    assert isinstance(resolve_augment(True), PaperAugment) and isinstance(resolve_augment(False), NoAugment)
    with pytest.raises(TypeError, match="augment must be"):
        resolve_augment("flip")
