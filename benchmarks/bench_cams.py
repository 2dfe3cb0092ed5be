"""Benchmark: Grad-CAM from BOTH branches for the ground-truth class, our engine vs pytorch-grad-cam vs captum.

The job, for every library: given a normalised batch ``(B, 3, S, S)`` and its labels, produce the softmax branch's
and the sigmoid branch's Grad-CAM at the backbone's last layer, ReLU'd, upsampled to ``S x S`` and min-maxed to
[0, 1]. Ours is one ``CamEngine.compute`` call (one backbone pass without autograd, gradients through the heads
only) plus ``postprocess``; pytorch-grad-cam and captum need two calls each (a softmax model and a sigmoid model
sharing the backbone). The backbone's parameters require grad for the two baselines, as in any torchvision model
(pytorch-grad-cam sees no gradient otherwise). Clamping is off so that all three compute the same maps; the
script checks that they agree, then prints images/s and our speed-up.

    python benchmarks/bench_cams.py                       # ResNet-50 (random init), batch 16 at 224, CPU
    python benchmarks/bench_cams.py --model mobilenet_v2  # real ImageNet weights from ../shared/weights if present
    python benchmarks/bench_cams.py --device cuda --iters 10
"""
from __future__ import annotations

import argparse
import time

import torch
from torch import nn

from dualcam_lib.cams import CamEngine, postprocess
from dualcam_lib.heads import DualBranchModel
from dualcam_lib.models import build_classifier
from dualcam_lib.paths import weights_root

MOBILENET_FILE = "mobilenet_v2_imagenet_coral_dequant.pth"


def build_dual(model: str) -> DualBranchModel:
    weights = None
    if model == "mobilenet_v2":
        path = weights_root() / MOBILENET_FILE
        weights = str(path) if path.exists() else None
    split = build_classifier(model, num_classes=1000, weights=weights)
    print(f"model: {model} ({'weights ' + weights if weights else 'random init'})")
    return DualBranchModel(split, init="fresh")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def minmax(maps: torch.Tensor) -> torch.Tensor:
    flat = maps.flatten(1)
    lo, hi = flat.min(1, keepdim=True).values, flat.max(1, keepdim=True).values
    span = hi - lo
    out = torch.where(span > 0, (flat - lo) / span.clamp(min=1e-30), torch.zeros_like(flat))
    return out.view_as(maps)


def make_jobs(dual: DualBranchModel, size: int):
    """name -> fn(x, labels) -> (softmax maps, sigmoid maps), each (B, S, S) float in [0, 1] on the CPU."""
    from captum.attr import LayerAttribution, LayerGradCam
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    layer = list(dual.backbone.children())[-1]
    models = {b: nn.Sequential(dual.backbone, head).eval()
              for b, head in (("softmax", dual.softmax_head), ("sigmoid", dual.sigmoid_head))}
    engine = CamEngine(dual)

    def ours(x, labels):
        with engine:
            maps = engine.compute(x, labels, method="gradcam", scores=("softmax_logit", "sigmoid_logit"), clamp=False)
        return tuple(postprocess(maps[s], size=(size, size), relu=True, mode="bilinear").cpu()
                     for s in ("softmax_logit", "sigmoid_logit"))

    pgc = {b: GradCAM(model=m, target_layers=[layer]) for b, m in models.items()}

    def pytorch_grad_cam(x, labels):
        targets = [ClassifierOutputTarget(int(k)) for k in labels]
        return tuple(torch.from_numpy(pgc[b](input_tensor=x, targets=targets)) for b in ("softmax", "sigmoid"))

    lgc = {b: LayerGradCam(m, layer) for b, m in models.items()}

    def captum(x, labels):
        out = []
        for b in ("softmax", "sigmoid"):
            attr = lgc[b].attribute(x, target=labels, relu_attributions=True).detach()
            up = LayerAttribution.interpolate(attr, (size, size), interpolate_mode="bilinear")[:, 0]
            out.append(minmax(up).cpu())
        return tuple(out)

    return {"dualcam (1 call)": ours, "pytorch-grad-cam (2 calls)": pytorch_grad_cam, "captum (2 calls)": captum}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="resnet50", choices=["resnet50", "resnet18", "mobilenet_v2"])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--iters", type=int, default=2, help="timed batches per library (after 1 warm-up batch)")
    parser.add_argument("--device", default="auto", help="'auto' (cuda when available, else cpu), 'cpu', 'cuda'")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available()
                          else ("cpu" if args.device == "auto" else args.device))
    torch.manual_seed(args.seed)
    dual = build_dual(args.model).to(device)
    for p in dual.backbone.parameters():  # the baselines need gradients at the layer; ours never uses them
        p.requires_grad_(True)
    x = torch.randn(args.batch, 3, args.size, args.size, device=device)
    labels = torch.randint(0, dual.num_classes, (args.batch,), device=device)
    print(f"device: {device} ({torch.get_num_threads()} CPU threads), batch {args.batch} at {args.size} px, "
          f"{args.iters} timed batches per library")

    jobs = make_jobs(dual, args.size)
    results = {name: job(x, labels) for name, job in jobs.items()}  # warm-up, and the maps for the agreement check
    # Round-robin timing: on a shared machine a burst of load then hits every library alike, not just one.
    seconds = dict.fromkeys(jobs, 0.0)
    for _ in range(args.iters):
        for name, job in jobs.items():
            sync(device)
            start = time.perf_counter()
            job(x, labels)
            sync(device)
            seconds[name] += time.perf_counter() - start
    speed = {name: args.batch * args.iters / sec for name, sec in seconds.items()}

    ours_name = next(iter(jobs))
    print("\nagreement with our maps (max |difference| over both branches, after the same post-processing):")
    for name in list(jobs)[1:]:
        diff = max((a - b).abs().max().item() for a, b in zip(results[ours_name], results[name]))
        print(f"  {name:28s} {diff:.2e}  {'OK' if diff < 1e-4 else 'MISMATCH'}")
    print(f"\n{'library':30s} {'images/s':>10s} {'our speed-up':>13s}")
    for name, ips in speed.items():
        print(f"{name:30s} {ips:10.2f} {speed[ours_name] / ips:12.2f}x")


if __name__ == "__main__":
    main()
