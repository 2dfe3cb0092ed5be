"""The command-line evaluator: generated metadata folders, the real ImageNet-val-1000 metadata and the real
OpenImages masks (mask format)."""
import json

import cv2
import numpy as np
import pytest
import torch

import reference_wsol as ref
from dualcam_lib.evaluate import load_masks, main

OPENIMAGES_IDS = ["val/0bt_c3/1cd9ac0169ec7df0.jpg", "val/0bt_c3/3a29f0b33894d4a6.jpg",
                  "val/0bt_c3/3b3b9931325d65c9.jpg", "val/0by6g/490365f63135f3e0.jpg",
                  "val/0by6g/b4d953e7105da1d8.jpg"]


def write_metadata(folder, ids, labels, sizes=None, boxes=None, masks=None):
    """The four wsolevaluation files, written plainly."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "image_ids.txt").write_text("".join(f"{i}\n" for i in ids))
    (folder / "class_labels.txt").write_text("".join(f"{i},{labels[i]}\n" for i in ids))
    (folder / "image_sizes.txt").write_text("".join(f"{i},{w},{h}\n" for i, (w, h) in (sizes or {}).items()))
    rows = []
    for i in ids:
        rows += [f"{i},{x0},{y0},{x1},{y1}\n" for x0, y0, x1, y1 in (boxes or {}).get(i, [])]
        rows += [f"{i},{m},{ignore if k == 0 else ''}\n" for k, (m, ignore) in enumerate((masks or {}).get(i, []))]
    (folder / "localization.txt").write_text("".join(rows))
    return folder


def run_cli(capsys, *args):
    status = main([str(a) for a in args])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


@pytest.fixture
def generated(tmp_path):
    """6 images of various stored sizes, 1-2 boxes each, 32x40 maps saved per image and stacked."""
    rng = np.random.default_rng(0)
    ids = [f"val/img_{k:03d}.JPEG" for k in range(6)]
    sizes = {i: (int(rng.integers(60, 300)), int(rng.integers(60, 300))) for i in ids}
    boxes = {}
    for i in ids:
        w, h = sizes[i]
        boxes[i] = []
        for _ in range(int(rng.integers(1, 3))):
            x0, x1 = sorted(rng.integers(0, w, 2))
            y0, y1 = sorted(rng.integers(0, h, 2))
            boxes[i].append((int(x0), int(y0), int(x1), int(y1)))
    labels = {i: k % 3 for k, i in enumerate(ids)}
    metadata = write_metadata(tmp_path / "meta", ids, labels, sizes, boxes)
    maps = ref.random_cam_maps(len(ids), (32, 40), seed=1).astype(np.float32)
    folder = tmp_path / "scoremaps"
    for i, scoremap in zip(ids, maps):
        (folder / i).parent.mkdir(parents=True, exist_ok=True)
        np.save(folder / f"{i}.npy", scoremap)
    np.save(tmp_path / "stack.npy", maps)
    predictions = tmp_path / "pred.csv"
    predictions.write_text("image_id,class\n" + "".join(f"{i},{labels[i] if k < 4 else 9}\n"
                                                          for k, i in enumerate(ids)))
    return dict(ids=ids, sizes=sizes, boxes=boxes, labels=labels, metadata=metadata, maps=maps, folder=folder,
                stack=tmp_path / "stack.npy", predictions=predictions, root=tmp_path)


def test_cli_matches_the_reference_on_generated_metadata(generated, capsys):
    g = generated
    output = g["root"] / "out" / "metrics.json"
    status, out, err = run_cli(capsys, "--scoremaps", g["folder"], "--metadata", g["metadata"], "--predictions",
                               g["predictions"], "--cam-curve-interval", "0.01", "--output", output, "--curves")
    assert status == 0, err
    printed = json.loads(out)
    assert json.loads(output.read_text()) == printed

    evaluator = ref.ReferenceBoxEvaluator(thresholds=np.arange(0, 1, 0.01))
    for k, (i, scoremap) in enumerate(zip(g["ids"], g["maps"])):
        w, h = g["sizes"][i]
        gt = [[int(x0 * 40 / w), int(y0 * 32 / h), int(x1 * 40 / w), int(y1 * 32 / h)]
              for x0, y0, x1, y1 in g["boxes"][i]]  # wsolevaluation's resize_bbox
        evaluator.accumulate_one(scoremap.astype(np.float64), np.array(gt), correct=k < 4)
    expected = evaluator.compute()
    assert printed["num_images"] == 6
    assert printed["maxboxacc_v2"] == expected["maxboxacc_v2"]
    assert printed["maxboxacc"] == {str(d): v for d, v in expected["maxboxacc"].items()}
    assert printed["best_threshold"] == {str(d): v for d, v in expected["best_threshold"].items()}
    assert printed["gt_known_loc"] == expected["gt_known_loc"]
    assert printed["top1_loc"] == expected["top1_loc"]
    assert printed["top1_cls"] == pytest.approx(400 / 6)
    assert np.array_equal(np.array(printed["curves"]["0.5"]), expected["curves"][:, 1])


def test_stacked_arrays_give_the_same_numbers(generated, capsys):
    g = generated
    _, per_file, _ = run_cli(capsys, "--scoremaps", g["folder"], "--metadata", g["metadata"])
    _, stacked, _ = run_cli(capsys, "--scoremaps", g["stack"], "--metadata", g["metadata"])
    # an .npz in another order, with its own image_ids
    order = np.arange(6)[::-1]
    np.savez(g["root"] / "maps.npz", scoremaps=g["maps"][order], image_ids=np.array(g["ids"])[order])
    _, archived, _ = run_cli(capsys, "--scoremaps", g["root"] / "maps.npz", "--metadata", g["metadata"])
    assert json.loads(per_file) == json.loads(stacked) == json.loads(archived)
    assert json.loads(per_file)["top1_loc"] is None


@pytest.mark.parametrize("damage, message", [
    (lambda g: (g["folder"] / f"{g['ids'][2]}.npy").unlink(), "img_002.JPEG.npy"),
    (lambda g: np.save(g["folder"] / f"{g['ids'][1]}.npy", np.zeros((2, 3, 4), np.float32)), "img_001.JPEG.npy"),
    (lambda g: np.save(g["folder"] / f"{g['ids'][3]}.npy", np.full((32, 40), 2.0)), "within"),
    (lambda g: np.save(g["folder"] / f"{g['ids'][4]}.npy", np.zeros((32, 40), np.int64)), "dtype"),
    (lambda g: g["predictions"].write_text(f"{g['ids'][0]},1\n"), "no prediction"),
])
def test_bad_inputs_fail_with_the_file_named(generated, capsys, damage, message):
    damage(generated)
    status, _, err = run_cli(capsys, "--scoremaps", generated["folder"], "--metadata", generated["metadata"],
                             "--predictions", generated["predictions"])
    assert status == 2
    assert message in err


def test_wrong_stack_length_and_missing_metadata(generated, capsys, tmp_path):
    np.save(tmp_path / "short.npy", generated["maps"][:4])
    status, _, err = run_cli(capsys, "--scoremaps", tmp_path / "short.npy", "--metadata", generated["metadata"])
    assert status == 2 and "4 maps for 6 image ids" in err
    status, _, err = run_cli(capsys, "--scoremaps", generated["stack"], "--metadata", tmp_path / "nowhere")
    assert status == 2 and "nowhere" in err


# ----------------------------------------------------------------------------------------------- the real data
@pytest.mark.slow
def test_real_imagenet_metadata_box_maps_localise(shared_data_root, tmp_path, capsys):
    from dualcam_lib.data import read_wsol_metadata

    metadata_dir = shared_data_root / "imagenet-val-1000" / "metadata" / "test"
    meta = read_wsol_metadata(metadata_dir)
    size = 56
    box_maps = np.zeros((len(meta.image_ids), size, size), dtype=np.float16)
    for k, i in enumerate(meta.image_ids):
        w, h = meta.sizes[i]
        for x0, y0, x1, y1 in meta.boxes[i]:
            box_maps[k, int(y0 * size / h):int(y1 * size / h) + 1, int(x0 * size / w):int(x1 * size / w) + 1] = 1
    np.save(tmp_path / "box_maps.npy", box_maps)
    random_maps = torch.nn.functional.interpolate(torch.rand(len(box_maps), 1, 7, 7), size=(size, size),
                                                  mode="bilinear", align_corners=False)[:, 0]
    random_maps = (random_maps - random_maps.amin((1, 2), keepdim=True)) / (
        random_maps.amax((1, 2), keepdim=True) - random_maps.amin((1, 2), keepdim=True))
    np.save(tmp_path / "random_maps.npy", random_maps.numpy())
    predictions = tmp_path / "pred.csv"
    predictions.write_text("".join(f"{i},{meta.labels[i] if k % 2 == 0 else -1}\n"
                                   for k, i in enumerate(meta.image_ids)))

    status, out, err = run_cli(capsys, "--scoremaps", tmp_path / "box_maps.npy", "--metadata", metadata_dir,
                               "--predictions", predictions)
    assert status == 0, err
    boxes = json.loads(out)
    status, out, err = run_cli(capsys, "--scoremaps", tmp_path / "random_maps.npy", "--metadata", metadata_dir)
    assert status == 0, err
    random = json.loads(out)

    assert boxes["num_images"] == random["num_images"] == 1000
    assert boxes["maxboxacc"]["0.5"] > 95 and boxes["maxboxacc_v2"] > 90
    assert boxes["gt_known_loc"] > 85
    assert boxes["top1_loc"] == pytest.approx(boxes["gt_known_loc"] / 2, abs=5)
    assert boxes["top1_cls"] == 50.0
    assert random["maxboxacc_v2"] < boxes["maxboxacc_v2"] - 25
    assert random["gt_known_loc"] < boxes["gt_known_loc"] - 30


def test_real_openimages_masks(shared_data_root, tmp_path, capsys):
    mask_root = shared_data_root / "openimages-test-masks" / "test_masks"
    if not mask_root.exists():
        pytest.skip(f"{mask_root} not present")
    source = shared_data_root / "wsol-metadata" / "OpenImages" / "val"
    labels = dict(line.rsplit(",", 1) for line in (source / "class_labels.txt").read_text().split())
    masks = {}
    for line in (source / "localization.txt").read_text().splitlines():
        image_id, mask, ignore = line.split(",")
        if image_id in OPENIMAGES_IDS:
            masks.setdefault(image_id, []).append((mask, ignore))
    assert sorted(masks) == sorted(OPENIMAGES_IDS)
    metadata = write_metadata(tmp_path / "meta", OPENIMAGES_IDS, {i: int(labels[i]) for i in OPENIMAGES_IDS},
                              masks=masks)
    (metadata / "image_sizes.txt").unlink()  # mask evaluation never needs it, and wsolevaluation ships it empty

    size = (48, 64)
    foreground, ignore = zip(*[load_masks(mask_root, [m for m, _ in masks[i]], masks[i][0][1] or None, size)
                               for i in OPENIMAGES_IDS])
    # the protocol's own steps for one image with two instances and an ignore mask
    protocol = np.zeros(size, bool)
    for name in ("3a29f0b33894d4a6_m0bt_c3_d2422806.png", "3a29f0b33894d4a6_m0bt_c3_3581e3ae.png"):
        image = np.float32(cv2.imread(str(mask_root / "val" / "0bt_c3" / name), cv2.IMREAD_GRAYSCALE))
        protocol |= cv2.resize(image, (size[1], size[0]), interpolation=cv2.INTER_NEAREST) > 0.5
    assert np.array_equal(foreground[1], protocol)
    assert not (ignore[2] & foreground[2]).any() and ignore[2].any()  # 3b3b... has a real ignore region

    perfect = np.stack(foreground).astype(np.float32)
    np.save(tmp_path / "perfect.npy", perfect)
    rng = np.random.default_rng(0)
    np.save(tmp_path / "noise.npy", rng.random(perfect.shape).astype(np.float32))
    results = {}
    for name in ("perfect", "noise"):
        status, out, err = run_cli(capsys, "--scoremaps", tmp_path / f"{name}.npy", "--metadata", metadata,
                                   "--mask-root", mask_root, "--curves")
        assert status == 0, err
        results[name] = json.loads(out)
    assert results["perfect"]["pxap"] == 100.0
    assert results["noise"]["pxap"] < 60
    assert results["noise"]["num_images"] == 5 and len(results["noise"]["recall"]) == 1002
    status, _, err = run_cli(capsys, "--scoremaps", tmp_path / "perfect.npy", "--metadata", metadata)
    assert status == 2 and "--mask-root" in err


def test_module_runs_as_a_script():
    import subprocess
    import sys

    completed = subprocess.run([sys.executable, "-m", "dualcam_lib.evaluate", "--help"], capture_output=True,
                               text=True, timeout=120)
    assert completed.returncode == 0
    assert "--scoremaps" in completed.stdout and "wsolevaluation" in completed.stdout


@pytest.mark.parametrize("entry", [["-m", "dualcam_lib", "evaluate"], ["-m", "dualcam_lib.evaluate"]])
def test_the_real_subcommand_runs_in_a_subprocess(generated, entry):
    """``python -m dualcam_lib evaluate --scoremaps ...`` must reach the evaluator: an option-led argument list once
    fell through the subparser (exit 2, 'unrecognized arguments')."""
    import subprocess
    import sys

    g = generated
    base = [sys.executable, *entry]
    done = subprocess.run([*base, "--scoremaps", str(g["stack"]), "--metadata", str(g["metadata"]),
                           "--cam-curve-interval", "0.01"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    direct = main(["--scoremaps", str(g["stack"]), "--metadata", str(g["metadata"]), "--cam-curve-interval", "0.01"])
    assert direct == 0
    assert json.loads(done.stdout)["num_images"] == 6
    helped = subprocess.run([*base, "--help"], capture_output=True, text=True, timeout=300)
    assert helped.returncode == 0 and "--scoremaps" in helped.stdout
    bad = subprocess.run([*base, "--scoremaps", str(g["stack"]), "--metadata", str(g["root"] / "nowhere")],
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "nowhere" in bad.stderr
