"""Average Drop, Increase in Confidence, the explanation image and deletion / insertion AUCs."""
import pytest
import torch

from dualcam_lib.metrics import (
    FidelityAccumulator,
    average_drop,
    deletion_insertion_auc,
    explanation_inputs,
    increase_in_confidence,
)


def test_average_drop_and_increase_known_values():
    y = torch.tensor([0.8, 0.5, 0.4, 0.9])
    o = torch.tensor([0.4, 0.5, 0.6, 0.0])
    # drops: 0.5, 0, 0 (an increase is not a negative drop), 1.0 -> mean 0.375
    assert average_drop(y, o).item() == pytest.approx(37.5)
    assert average_drop(y, o, reduce=False).tolist() == pytest.approx([50.0, 0.0, 0.0, 100.0])
    # only the third image gains confidence (equal is not an increase)
    assert increase_in_confidence(y, o).item() == pytest.approx(25.0)
    assert increase_in_confidence(y, o, reduce=False).tolist() == [0.0, 0.0, 100.0, 0.0]


def test_accumulator_matches_the_batch_functions():
    torch.manual_seed(0)
    y = torch.rand(37) * 0.9 + 0.05
    o = torch.rand(37)
    accumulator = FidelityAccumulator()
    for chunk in range(0, 37, 10):
        accumulator.accumulate(y[chunk:chunk + 10], o[chunk:chunk + 10])
    result = accumulator.compute()
    assert result["num_images"] == 37
    assert result["average_drop"] == pytest.approx(average_drop(y, o).item(), rel=1e-6)
    assert result["increase_in_confidence"] == pytest.approx(increase_in_confidence(y, o).item())


def test_fidelity_input_errors():
    with pytest.raises(ValueError, match="shape"):
        average_drop(torch.rand(3), torch.rand(4))
    with pytest.raises(ValueError, match="positive"):
        average_drop(torch.tensor([0.0, 0.5]), torch.tensor([0.1, 0.2]))
    with pytest.raises(ValueError, match="probabilities"):
        increase_in_confidence(torch.tensor([0.5]), torch.tensor([1.5]))
    with pytest.raises(RuntimeError, match="before any accumulate"):
        FidelityAccumulator().compute()


def test_explanation_inputs_spaces():
    images = torch.rand(2, 3, 5, 6)
    maps = torch.rand(2, 5, 6)
    plain = explanation_inputs(images, maps)
    assert torch.allclose(plain, images * maps[:, None])
    mean, std = torch.tensor([0.5, 0.4, 0.3]).view(1, 3, 1, 1), torch.tensor([0.2, 0.2, 0.2]).view(1, 3, 1, 1)
    normalised = explanation_inputs(images, maps, normalize=lambda x: (x - mean) / std)
    assert torch.allclose(normalised, (images * maps[:, None] - mean) / std)
    # a zero map: black image before normalisation, the normalised zero (-mean / std) after it
    zero = explanation_inputs(images, torch.zeros(2, 5, 6), normalize=lambda x: (x - mean) / std)
    assert torch.allclose(zero, (-mean / std).expand_as(zero))
    pre = (images - mean) / std
    assert torch.allclose(explanation_inputs(pre, maps, space="normalized"), pre * maps[:, None])
    with pytest.raises(ValueError, match="upsample"):
        explanation_inputs(images, torch.rand(2, 4, 6))
    with pytest.raises(ValueError, match="space"):
        explanation_inputs(images, maps, space="lab")


def region_score_fn(region: torch.Tensor):
    """Probabilities of a toy 2-class model whose class-0 evidence is the mean brightness inside ``region``."""
    def score(images):
        evidence = (images.mean(dim=1) * region).sum(dim=(1, 2)) / region.sum()
        return torch.stack([evidence, 1 - evidence], dim=1)
    return score


def test_deletion_insertion_rank_a_good_map_above_a_bad_one():
    torch.manual_seed(0)
    region = torch.zeros(16, 16)
    region[4:10, 5:12] = 1
    images = torch.full((3, 3, 16, 16), 0.9)
    good = region.expand(3, 16, 16) + 0.01 * torch.rand(3, 16, 16)
    bad = 1 - good
    targets = torch.zeros(3, dtype=torch.long)
    score = region_score_fn(region)
    good_result = deletion_insertion_auc(score, images, good, targets, steps=16)
    bad_result = deletion_insertion_auc(score, images, bad, targets, steps=16)
    assert good_result.deletion.shape == (3,) and good_result.deletion_curve.shape == (3, 17)
    assert (good_result.deletion < bad_result.deletion - 0.3).all()
    assert (good_result.insertion > bad_result.insertion + 0.3).all()
    # the curves start and end where they must: the full image, then the baseline (zeros)
    assert torch.allclose(good_result.deletion_curve[:, 0], torch.full((3,), 0.9, dtype=torch.float64))
    assert torch.allclose(good_result.deletion_curve[:, -1], torch.zeros(3, dtype=torch.float64))
    assert torch.allclose(good_result.insertion_curve[:, -1], torch.full((3,), 0.9, dtype=torch.float64))
    assert good_result.fractions[0] == 0 and good_result.fractions[-1] == 1


def test_deletion_insertion_constant_model_gives_its_probability():
    images = torch.rand(2, 3, 8, 8)
    maps = torch.rand(2, 8, 8)

    def constant(batch):
        return torch.tensor([[0.25, 0.75]]).expand(batch.shape[0], 2)

    for baseline in ("zeros", "mean", "blur", 0.5, torch.zeros(1, 3, 1, 1)):
        result = deletion_insertion_auc(constant, images, maps, torch.tensor([1, 0]), steps=5, baseline=baseline)
        assert torch.allclose(result.deletion, torch.tensor([0.75, 0.25], dtype=torch.float64))
        assert torch.allclose(result.insertion, torch.tensor([0.75, 0.25], dtype=torch.float64))
    with pytest.raises(ValueError, match="baseline"):
        deletion_insertion_auc(constant, images, maps, torch.tensor([1, 0]), baseline="noise")
    with pytest.raises(ValueError, match="targets"):
        deletion_insertion_auc(constant, images, maps, torch.tensor([1]))


def test_accumulator_keeps_per_image_probabilities():
    torch.manual_seed(1)
    y = torch.rand(53) * 0.9 + 0.05
    o = torch.where(torch.rand(53) < 0.3, y + 0.01, torch.rand(53) * y)  # some increases, some drops
    accumulator = FidelityAccumulator()
    for chunk in range(0, 53, 16):
        accumulator.accumulate(y[chunk:chunk + 16], o[chunk:chunk + 16])
    table = accumulator.per_image()
    assert torch.equal(table["y"], y) and torch.equal(table["o"], o)
    result = accumulator.compute()
    assert int((table["o"] > table["y"]).sum()) / 53 * 100 == result["increase_in_confidence"] > 0
    drops = ((table["y"] - table["o"]).clamp(min=0) / table["y"]).double()
    assert (drops.sum() / 53 * 100).item() == pytest.approx(result["average_drop"], rel=1e-13, abs=0)
    assert torch.equal(accumulator.per_image()["y"], y)  # concatenated once, same answer again
    accumulator.reset()
    with pytest.raises(RuntimeError, match="before any accumulate"):
        accumulator.per_image()
