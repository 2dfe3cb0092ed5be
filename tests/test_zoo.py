"""The embedded-classifier zoo: trained once, cached atomically, loaded bit for bit."""
import pytest
import torch

from dualcam_lib.data import synthetic_splits
from dualcam_lib.zoo import ZOO_RECIPES, embedded_classifier, embedded_splits, zoo_config, zoo_path

TINY = dict(n_train=40, n_test=20, epochs=1)


def assert_same_weights(a, b):
    sa, sb = a.as_module().state_dict(), b.as_module().state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


@pytest.mark.parametrize("arch, arch_kwargs", [("small_cnn", {"width": 8}), ("small_vit", {"depth": 1})])
def test_cache_round_trip_gives_identical_weights(tmp_path, monkeypatch, arch, arch_kwargs):
    monkeypatch.setenv("DUALCAM_CACHE_DIR", str(tmp_path))
    torch.manual_seed(123)
    trained = embedded_classifier("synthetic", arch, seed=0, arch_kwargs=arch_kwargs, **TINY)
    after = torch.rand(3)
    torch.manual_seed(123)
    assert torch.equal(torch.rand(3), after)  # the caller's RNG stream is left alone

    info = trained.meta["zoo"]
    assert not info["loaded"] and len(info["history"]) == 1 and 0 <= info["test_acc"] <= 100
    files = [f for f in (tmp_path / "zoo").iterdir() if f.is_file()]
    assert [f.name for f in files] == [zoo_path(info["config"], tmp_path).name]  # one file, no temp left
    torch.load(files[0], weights_only=True)

    loaded = embedded_classifier("synthetic", arch, seed=0, arch_kwargs=arch_kwargs, **TINY)
    assert loaded.meta["zoo"]["loaded"] and loaded.meta["zoo"]["test_acc"] == info["test_acc"]
    assert_same_weights(trained, loaded)
    assert not loaded.backbone.training

    retrained = embedded_classifier("synthetic", arch, seed=0, arch_kwargs=arch_kwargs, cache=False, **TINY)
    assert not retrained.meta["zoo"]["loaded"]
    assert_same_weights(trained, retrained)  # deterministic for a fixed thread count


def test_config_keys_the_cache(tmp_path):
    base = zoo_config("synthetic", "small_cnn", seed=0, n_train=40)
    assert base["recipe"] == ZOO_RECIPES["small_cnn"]
    assert zoo_path(base, tmp_path) == zoo_path(zoo_config("synthetic", "small_cnn", 0, 40), tmp_path)
    for other in (zoo_config("synthetic", "small_cnn", seed=1, n_train=40),
                  zoo_config("finegrained", "small_cnn", seed=0, n_train=40),
                  zoo_config("synthetic", "small_cnn", seed=0, n_train=40, epochs=2),
                  zoo_config("synthetic", "small_cnn", seed=0, n_train=40, arch_kwargs={"width": 8})):
        assert zoo_path(other, tmp_path) != zoo_path(base, tmp_path)


def test_bad_options_are_named():
    with pytest.raises(ValueError, match="no training recipe for arch 'resnet50'"):
        zoo_config("synthetic", "resnet50")
    with pytest.raises(ValueError, match="dataset must be one of"):
        zoo_config("imagenet", "small_cnn")
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['epoch'\]"):
        zoo_config("synthetic", "small_cnn", epoch=3)


def test_embedded_splits_cache_is_bitwise_the_generated_data(tmp_path):
    fresh = synthetic_splits("finegrained", n_train=6, n_test=4, seed=3)
    first = embedded_splits("finegrained", seed=3, n_train=6, n_test=4, cache_root=tmp_path)
    assert len(list((tmp_path / "zoo" / "data").glob("*.pt"))) == 1
    loaded = embedded_splits("finegrained", seed=3, n_train=6, n_test=4, cache_root=tmp_path)
    for a, b, c in zip(fresh, first, loaded):
        for name in ("images", "labels", "boxes", "masks", "part_masks"):
            assert torch.equal(getattr(a, name), getattr(c, name)), name
        assert a.class_names == c.class_names and a.image_ids() == c.image_ids()


def test_shipped_models_are_current_and_load(tmp_path):
    """Every shipped zoo file matches the current default recipe (its name is the hash of the configuration the
    notebooks ask for) and loads into the architecture it names, with the test accuracy it was shipped with."""
    from dualcam_lib.zoo import SHIPPED_DIR, config_hash, embedded_classifier, zoo_config, zoo_path

    shipped = sorted(SHIPPED_DIR.glob("*.pt"))
    assert shipped, f"no shipped zoo models under {SHIPPED_DIR}"
    for path in shipped:
        state = torch.load(path, map_location="cpu", weights_only=True)
        config = state["info"]["config"]
        assert path.name == zoo_path(config, tmp_path).name, f"{path.name}: name does not match its configuration"
        current = zoo_config(config["dataset"], config["arch"], config["seed"], config["n_train"])
        assert config_hash(current) == config_hash(config), (
            f"{path.name} was trained with another recipe than the current default: run scripts/ship_zoo_models.py "
            "--retrain")
        split = embedded_classifier(config["dataset"], config["arch"], config["seed"], cache_root=tmp_path)
        assert split.meta["zoo"]["loaded"] and split.meta["zoo"]["path"] == str(path)
        assert split.meta["zoo"]["test_acc"] == state["info"]["test_acc"] > 50.0
        # loading a shipped model leaves the cache alone (nothing is copied or trained there)
        assert not list((tmp_path / "zoo").glob(path.name))
