"""Agreement of the CAM engine with pytorch-grad-cam (``pytorch_grad_cam``) and captum on the same model and input.

Every comparison uses a batch with a DIFFERENT target class per image, and compares maps after the same
post-processing to 1e-5: pytorch-grad-cam's own pipeline (ReLU, min-max with its 1e-7 epsilon, ``cv2.resize``,
min-max again) reproduced on our raw maps, and our :func:`postprocess` (ReLU -> bilinear -> min-max), which
agrees with it because min-max is invariant to the positive affine rescaling pytorch-grad-cam applies first.
"""
import cv2
import numpy as np
import pytest
import torch
from torch import nn

pytest.importorskip("pytorch_grad_cam")
pytest.importorskip("captum")

from captum.attr import LayerAttribution, LayerFeatureAblation, LayerGradCam  # noqa: E402
from pytorch_grad_cam import (AblationCAM, EigenCAM, GradCAM, GradCAMPlusPlus, LayerCAM, ScoreCAM,  # noqa: E402
                              XGradCAM)
from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget, ClassifierOutputTarget  # noqa: E402
from pytorch_grad_cam.utils.svd_on_activations import get_2d_projection_with_sign_correction  # noqa: E402

from dualcam_lib.cams import CamEngine, postprocess  # noqa: E402
from dualcam_lib.heads import DualBranchModel  # noqa: E402
from dualcam_lib.models import SplitClassifier, TokenHead, build_classifier  # noqa: E402

ATOL = 1e-5
TARGETS = [0, 3, 1]  # one different class per image


class LogSoftmaxTarget:
    def __init__(self, category):
        self.category = category

    def __call__(self, output):
        return torch.log_softmax(output, dim=-1)[..., self.category]


PGC_TARGET = {"softmax_logit": ClassifierOutputTarget, "sigmoid_logit": ClassifierOutputTarget,
              "softmax_prob": ClassifierOutputSoftmaxTarget, "log_softmax": LogSoftmaxTarget}


def pgc_postprocess(raw: torch.Tensor, size) -> np.ndarray:
    """pytorch-grad-cam's exact post-processing on our raw maps: ReLU, scale_cam_image (min-max with 1e-7, then
    cv2.resize to (W, H)), ReLU, and the multi-layer aggregation's second scale_cam_image."""
    out = []
    for m in np.maximum(raw.numpy(), 0):
        m = m - m.min()
        m = m / (1e-7 + m.max())
        out.append(cv2.resize(np.float32(m), (size[1], size[0])))
    out = np.maximum(np.float32(out), 0)
    final = []
    for m in out:
        m = m - m.min()
        final.append(m / (1e-7 + m.max()))
    return np.float32(final)


def unfreeze(dual: DualBranchModel) -> DualBranchModel:
    # pytorch-grad-cam and captum only see gradients at a layer whose output requires grad.
    for p in dual.parameters():
        p.requires_grad_(True)
    return dual


def branch_model(dual: DualBranchModel, branch: str) -> nn.Module:
    head = dual.softmax_head if branch == "softmax" else dual.sigmoid_head
    return nn.Sequential(dual.backbone, head).eval()


def assert_same_after_postprocess(ours_raw: torch.Tensor, theirs: np.ndarray, size, atol: float = ATOL):
    np.testing.assert_allclose(pgc_postprocess(ours_raw, size), theirs, atol=atol, rtol=0)
    ours = postprocess(ours_raw, size=size, relu=True, mode="bilinear").numpy()
    np.testing.assert_allclose(ours, theirs, atol=atol, rtol=0)
    assert theirs.max() > 0.99  # a real map, not two all-zero arrays agreeing


def small_cnn_dual():
    split = build_classifier("small_cnn", num_classes=5, width=8)
    return unfreeze(DualBranchModel(split, init="default"))


def resnet_dual():
    split = build_classifier("resnet18", num_classes=6)
    return unfreeze(DualBranchModel(split, init="default"))


def vit_dual():
    timm = pytest.importorskip("timm")
    vit = timm.models.vision_transformer.VisionTransformer(img_size=32, patch_size=8, depth=2, embed_dim=32,
                                                           num_heads=2, num_classes=5)

    class VitTokens(nn.Module):
        def __init__(self, vit):
            super().__init__()
            self.vit = vit

        def forward(self, x):
            return self.vit.forward_features(x)

    head = TokenHead(32, 5, pool="cls", num_prefix_tokens=vit.num_prefix_tokens)
    head.fc = vit.head
    split = SplitClassifier("tiny_vit", VitTokens(vit), head, 5, input_size=32, kind="vit",
                            grid=tuple(vit.patch_embed.grid_size), num_prefix_tokens=vit.num_prefix_tokens,
                            meta={"target_layer": vit.blocks[-1].norm1})
    return unfreeze(DualBranchModel(split, init="default")), vit


def vit_reshape(tokens, grid=(4, 4), prefix=1):
    b, _, d = tokens.shape
    return tokens[:, prefix:].reshape(b, grid[0], grid[1], d).permute(0, 3, 1, 2)


PGC_CLASSES = {"gradcam": GradCAM, "gradcampp": GradCAMPlusPlus, "xgradcam": XGradCAM, "layercam": LayerCAM,
               "scorecam": ScoreCAM, "ablationcam": AblationCAM}


def run_pgc(cls, model, layer, x, targets, score, reshape=None, **attrs):
    with cls(model=model, target_layers=[layer], reshape_transform=reshape) as cam:
        for k, v in attrs.items():
            setattr(cam, k, v)
        return cam(input_tensor=x, targets=[PGC_TARGET[score](int(t)) for t in targets])


@pytest.mark.parametrize("method", ["gradcam", "gradcampp", "xgradcam", "layercam", "scorecam", "ablationcam"])
def test_small_cnn_matches_pytorch_grad_cam_both_branches(method):
    dual = small_cnn_dual()
    x = torch.randn(3, 3, 32, 32)
    t = torch.tensor(TARGETS)
    with CamEngine(dual) as engine:
        ours = engine.compute(x, t, method=method, clamp=False)  # pytorch-grad-cam never clamps
    layer = dual.backbone.features[-1]
    for score, branch in (("softmax_logit", "softmax"), ("sigmoid_logit", "sigmoid")):
        theirs = run_pgc(PGC_CLASSES[method], branch_model(dual, branch), layer, x, t, score, batch_size=16)
        assert_same_after_postprocess(ours[score], theirs, (32, 32))


@pytest.mark.parametrize("score", ["softmax_prob", "log_softmax"])
@pytest.mark.parametrize("method", ["gradcam", "gradcampp", "layercam"])
def test_softmax_scores_match_pytorch_grad_cam(method, score):
    dual = small_cnn_dual()
    x = torch.randn(3, 3, 32, 32)
    t = torch.tensor(TARGETS)
    with CamEngine(dual) as engine:
        ours = engine.compute(x, t, method=method, scores=score)
    theirs = run_pgc(PGC_CLASSES[method], branch_model(dual, "softmax"), dual.backbone.features[-1], x, t, score)
    assert_same_after_postprocess(ours[score], theirs, (32, 32))


@pytest.mark.parametrize("method", ["gradcam", "gradcampp", "xgradcam", "layercam"])
def test_resnet18_inner_layer_matches_pytorch_grad_cam(method):
    dual = resnet_dual()
    x = torch.randn(3, 3, 64, 64)
    t = torch.tensor(TARGETS)
    layer = dual.backbone[6]  # layer3: a target inside the backbone, gradients through layer4 and both heads
    with CamEngine(dual, target_layer=layer) as engine:
        ours = engine.compute(x, t, method=method, scores=("softmax_logit", "sigmoid_logit", "softmax_prob"),
                              clamp=False)
    assert ours["softmax_logit"].shape == (3, 4, 4)  # layer3 at 64 px: stride 16
    for score, branch in (("softmax_logit", "softmax"), ("sigmoid_logit", "sigmoid"), ("softmax_prob", "softmax")):
        theirs = run_pgc(PGC_CLASSES[method], branch_model(dual, branch), layer, x, t, score)
        assert_same_after_postprocess(ours[score], theirs, (64, 64))


def test_eigencam_matches_pytorch_grad_cam():
    dual = resnet_dual()
    x = torch.randn(3, 3, 64, 64)
    t = torch.tensor(TARGETS)
    with CamEngine(dual) as engine:
        ours = engine.compute(x, t, method="eigencam")
        acts = dual.backbone(x).detach()
    # Raw maps: the same first principal projection, with the published sign correction (Seg-Eigen-CAM, Eq. 13).
    expected = get_2d_projection_with_sign_correction(acts.numpy())
    scale = np.abs(expected).max()
    np.testing.assert_allclose(ours["softmax_logit"].numpy() / scale, expected / scale, atol=1e-4)
    assert torch.equal(ours["softmax_logit"], ours["sigmoid_logit"])  # class-agnostic
    # pytorch-grad-cam's EigenCAM keeps LAPACK's arbitrary sign: compare each image up to that sign.
    theirs = run_pgc(EigenCAM, branch_model(dual, "softmax"), dual.backbone[-1], x, t, "softmax_logit")
    for b in range(3):
        options = [postprocess(s * ours["softmax_logit"][b:b + 1], size=(64, 64)).numpy()[0] for s in (1, -1)]
        assert min(np.abs(o - theirs[b]).max() for o in options) < ATOL


def test_gradcam_clamped_matches_pytorch_grad_cam_with_clamped_weights():
    """Our clamp = pytorch-grad-cam's Grad-CAM / XGrad-CAM with max(0, alpha) put into its weights."""

    class ClampedGradCAM(GradCAM):
        def get_cam_weights(self, *args):
            return np.maximum(super().get_cam_weights(*args), 0)

    class ClampedXGradCAM(XGradCAM):
        def get_cam_weights(self, *args):
            return np.maximum(super().get_cam_weights(*args), 0)

    dual = resnet_dual()
    x = torch.randn(3, 3, 64, 64)
    t = torch.tensor(TARGETS)
    layer = dual.backbone[6]
    with CamEngine(dual, target_layer=layer) as engine:
        for method, cls in (("gradcam", ClampedGradCAM), ("xgradcam", ClampedXGradCAM)):
            ours = engine.compute(x, t, method=method)  # default: sigmoid branch clamped
            theirs = run_pgc(cls, branch_model(dual, "sigmoid"), layer, x, t, "sigmoid_logit")
            assert_same_after_postprocess(ours["sigmoid_logit"], theirs, (64, 64))


@pytest.mark.parametrize("method", ["gradcam", "gradcampp", "xgradcam", "layercam", "scorecam", "eigencam"])
def test_vit_token_grid_matches_pytorch_grad_cam_with_reshape_transform(method):
    dual, vit = vit_dual()
    x = torch.randn(3, 3, 32, 32)
    t = torch.tensor(TARGETS)
    # Score-CAM: the same masked-image batches as pytorch-grad-cam (16 per forward, one image's channels at a time).
    # Its softmax over the D channel scores amplifies float32 rounding in the ViT's forward: on this CPU the maps
    # differ by up to 1.9e-5 from pytorch-grad-cam's, so this one case is checked to 5e-5 (every other to 1e-5).
    batching = {"batch_size": 16} if method == "scorecam" else {}
    atol = 5e-5 if method == "scorecam" else ATOL
    with CamEngine(dual) as engine:  # default target: split.meta["target_layer"], grid found automatically
        ours = engine.compute(x, t, method=method, clamp=False, **batching)
    assert ours["softmax_logit"].shape == (3, 4, 4)
    layer = vit.blocks[-1].norm1
    cls = EigenCAM if method == "eigencam" else PGC_CLASSES[method]
    for score, branch in (("softmax_logit", "softmax"), ("sigmoid_logit", "sigmoid")):
        theirs = run_pgc(cls, branch_model(dual, branch), layer, x, t, score, reshape=vit_reshape, **batching)
        if method == "eigencam":  # sign of the SVD is arbitrary in pytorch-grad-cam
            for b in range(3):
                options = [postprocess(s * ours[score][b:b + 1], size=(32, 32)).numpy()[0] for s in (1, -1)]
                assert min(np.abs(o - theirs[b]).max() for o in options) < ATOL
        else:
            assert_same_after_postprocess(ours[score], theirs, (32, 32), atol=atol)


def test_gradcam_matches_captum_raw_and_postprocessed():
    dual = resnet_dual()
    x = torch.randn(3, 3, 64, 64)
    t = torch.tensor(TARGETS)
    for layer in (None, dual.backbone[6]):
        with CamEngine(dual, target_layer=layer) as engine:
            ours = engine.compute(x, t, method="gradcam", clamp=False)
        captum_layer = dual.backbone[-1] if layer is None else layer
        for score, branch in (("softmax_logit", "softmax"), ("sigmoid_logit", "sigmoid")):
            lgc = LayerGradCam(branch_model(dual, branch), captum_layer)
            raw = lgc.attribute(x, target=t, relu_attributions=False).detach()[:, 0]
            scale = raw.abs().max()
            torch.testing.assert_close(ours[score] / scale, raw / scale, atol=1e-5, rtol=0)
            relu = lgc.attribute(x, target=t, relu_attributions=True).detach()
            up = LayerAttribution.interpolate(relu, (64, 64), interpolate_mode="bilinear")[:, 0]
            lo = up.flatten(1).min(1).values[:, None, None]
            hi = up.flatten(1).max(1).values[:, None, None]
            theirs = torch.where(hi > lo, (up - lo) / (hi - lo).clamp(min=1e-30), torch.zeros_like(up))
            assert theirs.amax() > 0.99
            torch.testing.assert_close(postprocess(ours[score], size=(64, 64)), theirs, atol=ATOL, rtol=0)


def test_ablationcam_weights_match_captum_layer_feature_ablation():
    """captum's LayerFeatureAblation with one group per channel gives S - S_n; Ablation-CAM's alpha = (S - S_n)/S."""
    dual = small_cnn_dual()
    x = torch.randn(3, 3, 32, 32)
    t = torch.tensor(TARGETS)
    with CamEngine(dual) as engine:
        ours = engine.compute(x, t, method="ablationcam", clamp=False, batch_size=10)
    layer = dual.backbone.features[-1]
    for score, branch in (("softmax_logit", "softmax"), ("sigmoid_logit", "sigmoid")):
        model = branch_model(dual, branch)
        with torch.no_grad():
            acts = dual.backbone(x)
            original = model(x).gather(1, t[:, None])
        n = acts.shape[1]
        drop = LayerFeatureAblation(model, layer).attribute(
            x, target=t, layer_mask=torch.arange(n).view(1, n, 1, 1))
        alpha = drop[:, :, 0, 0] / original
        expected = torch.einsum("bn,bnpq->bpq", alpha, acts)
        scale = expected.abs().max()
        torch.testing.assert_close(ours[score] / scale, expected / scale, atol=1e-5, rtol=0)
