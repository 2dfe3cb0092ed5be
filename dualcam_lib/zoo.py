"""Embedded classifiers: small models trained once on the synthetic data and cached.

``embedded_classifier("synthetic", "small_cnn")`` trains the classifier with softmax cross-entropy on the train
split of :func:`dualcam_lib.data.synthetic_splits` (the test split stays unseen), saves its state_dict atomically
under ``dualcam_lib.paths.cache_dir() / "zoo"`` in a file named by a hash of the full training configuration, and
loads it (``weights_only=True``) on later calls.

Reproducibility: the weights are a deterministic function of the configuration *and* of
``torch.get_num_threads()`` (CPU kernels may sum in a different order with another thread count). For a fixed
thread count, training again gives bitwise-identical weights, and a loaded model is bitwise identical to the one
that was trained and saved. The notebooks fix ``torch.set_num_threads(2)``; the thread count is not part of the
cache key, so the first run's weights are the ones every later run loads. The caller's global RNG state is left
untouched (training runs inside ``torch.random.fork_rng``).
"""
from __future__ import annotations

import hashlib
import inspect
import json
import time
from pathlib import Path

import torch

from .checkpoint import atomic_torch_save
from .models import SplitClassifier, build_classifier
from .paths import cache_dir

ZOO_FORMAT = 1  # bump to invalidate every cached model (e.g. when the training recipe changes)

# Training recipes per architecture: AdamW + cosine schedule with a short warm-up, flip + 4 px shift augmentation.
ZOO_RECIPES: dict[str, dict] = {
    "small_cnn": dict(epochs=8, lr=3e-3, batch_size=64, weight_decay=5e-4, optimizer="adamw", lr_schedule="cosine",
                      warmup_epochs=0.5, max_shift=4, label_smoothing=0.0),
    "small_vit": dict(epochs=30, lr=1e-3, batch_size=64, weight_decay=0.05, optimizer="adamw",
                      lr_schedule="cosine", warmup_epochs=2.0, max_shift=4, label_smoothing=0.1),
}
DATASETS = ("synthetic", "finegrained", "digits")


def _generator_version(dataset: str) -> str:
    """The synthetic generator's version, so a changed generator never loads a stale model or data set:
    ``dualcam_lib.data.synthetic.GENERATOR_VERSION`` when the module defines one, else a hash of its source."""
    from .data import synthetic

    version = getattr(synthetic, "GENERATOR_VERSION", None)
    if version is not None:
        return f"v{version}"
    return hashlib.sha256(inspect.getsource(synthetic).encode()).hexdigest()[:12]


def zoo_config(dataset: str = "synthetic", arch: str = "small_cnn", seed: int = 0, n_train: int = 4000,
               **overrides) -> dict:
    """The full configuration that keys the cache: dataset, arch, seed, n_train, the recipe (with ``overrides``
    such as ``epochs=...``, ``lr=...``) and architecture keyword arguments (``arch_kwargs``)."""
    if dataset not in DATASETS:
        raise ValueError(f"embedded_classifier: dataset must be one of {DATASETS}, got {dataset!r}")
    if arch not in ZOO_RECIPES:
        raise ValueError(f"embedded_classifier: no training recipe for arch {arch!r}; "
                         f"expected one of {sorted(ZOO_RECIPES)}")
    recipe = dict(ZOO_RECIPES[arch])
    arch_kwargs = dict(overrides.pop("arch_kwargs", None) or {})
    unknown = set(overrides) - set(recipe) - {"num_classes", "n_test"}
    if unknown:
        raise ValueError(f"embedded_classifier: unknown option(s) {sorted(unknown)}; "
                         f"recipe options are {sorted(recipe)}")
    recipe.update({k: v for k, v in overrides.items() if v is not None and k in recipe})
    return {"format": ZOO_FORMAT, "dataset": dataset, "arch": arch, "seed": int(seed), "n_train": int(n_train),
            "n_test": int(overrides.get("n_test") or 1000), "num_classes": overrides.get("num_classes"),
            "arch_kwargs": arch_kwargs, "recipe": recipe, "generator": _generator_version(dataset)}


# Trained zoo models shipped with the package (the notebooks' defaults), so every machine starts from the same bits.
SHIPPED_DIR = Path(__file__).resolve().parent / "pretrained"


def config_hash(config: dict) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:16]


def zoo_path(config: dict, root: str | Path | None = None) -> Path:
    """Where the model of ``config`` is cached: ``cache_dir()/zoo/<dataset>-<arch>-s<seed>-<hash>.pt``."""
    name = f"{config['dataset']}-{config['arch']}-s{config['seed']}-{config_hash(config)}.pt"
    return cache_dir(root) / "zoo" / name


def embedded_splits(dataset: str = "synthetic", seed: int = 0, n_train: int = 4000, n_test: int = 1000,
                    cache: bool = True, cache_root=None, **generator_kwargs):
    """``(train, test)`` :class:`~dualcam_lib.data.SyntheticSet` s from :func:`dualcam_lib.data.synthetic_splits`,
    cached under ``cache_dir()/zoo/data`` (float32 tensors, atomic write) because generating thousands of images
    takes far longer than loading them. Bitwise identical to generating them (keyed by the generator's version);
    a cached set of an older generator version with the same sizes is deleted when the new one is written."""
    import dataclasses

    from .data import SyntheticSet, synthetic_splits

    if dataset not in DATASETS:
        raise ValueError(f"embedded_splits: dataset must be one of {DATASETS}, got {dataset!r}")
    key = {"dataset": dataset, "seed": int(seed), "n_train": int(n_train), "n_test": int(n_test),
           "kwargs": generator_kwargs, "generator": _generator_version(dataset)}
    folder = cache_dir(cache_root) / "zoo" / "data"
    prefix = f"{dataset}-s{seed}-{n_train}-{n_test}-"
    path = folder / f"{prefix}{config_hash(key)}.pt"
    if cache and path.exists():
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            return SyntheticSet(**state["train"]), SyntheticSet(**state["test"])
        except FileNotFoundError:  # pruned by another process meanwhile: regenerate
            pass
    train, test = synthetic_splits(dataset, n_train=n_train, n_test=n_test, seed=seed, **generator_kwargs)
    if cache:
        fields = lambda s: {f.name: getattr(s, f.name) for f in dataclasses.fields(s)}  # noqa: E731
        atomic_torch_save({"train": fields(train), "test": fields(test), "key": key}, path)
        # Data sets of an older generator version are stale and large (~65 MB per 1000 images): remove them.
        for old in folder.glob(f"{prefix}*.pt"):
            if old != path:
                old.unlink(missing_ok=True)
    return train, test


def _build(config: dict, num_classes: int) -> SplitClassifier:
    return build_classifier(config["arch"], num_classes=num_classes, **config["arch_kwargs"])


def embedded_classifier(dataset: str = "synthetic", arch: str = "small_cnn", seed: int = 0, n_train: int = 4000,
                        epochs: int | None = None, lr: float | None = None, cache: bool = True,
                        progress: bool = False, device: str | torch.device = "cpu", cache_root=None,
                        shipped: bool = True, **overrides) -> SplitClassifier:
    """A classifier trained with softmax CE on the embedded ``dataset`` (synthetic | finegrained | digits).

    ``arch``: ``"small_cnn"`` or ``"small_vit"`` (recipes in :data:`ZOO_RECIPES`; ``epochs``, ``lr`` and other
    recipe keys such as ``batch_size`` override them; ``arch_kwargs={...}`` goes to ``build_classifier``).
    ``cache``: load the cached model if present, else train and save it (atomically). Returns the
    :class:`~dualcam_lib.models.SplitClassifier` in eval mode on the CPU; ``split.meta["zoo"]`` holds the config,
    the per-epoch history, the test accuracy (percent, on the unseen test split), the training seconds and the
    cache path.

    ``shipped``: when the cache has no model for ``config``, load the one shipped with the package
    (:data:`SHIPPED_DIR`, same file name, so only for exactly the same configuration) instead of training. The
    default models of the notebooks are shipped (the small CNNs on synthetic and finegrained, the small ViT):
    training them costs minutes on every fresh machine, and from-scratch training on another CPU ends with other
    weights in the last bits, which would move every stored number of the book. ``scripts/ship_zoo_models.py`` trains
    them with this function and copies the cache files. ``cache=False`` or ``shipped=False`` trains anyway.
    """
    from .train import FlipTranslate, evaluate_accuracy, train_classifier

    config = zoo_config(dataset, arch, seed, n_train, epochs=epochs, lr=lr, **overrides)
    path = zoo_path(config, cache_root)
    shipped_file = SHIPPED_DIR / path.name
    if cache and not path.exists() and shipped and shipped_file.exists():
        path = shipped_file
    with torch.random.fork_rng(devices=[]):
        if cache and path.exists():
            state = torch.load(path, map_location="cpu", weights_only=True)
            split = _build(config, state["num_classes"])
            split.as_module().load_state_dict(state["state_dict"])
            split.as_module().eval()
            split.meta["zoo"] = {**state["info"], "path": str(path), "loaded": True}
            return split
        gen_kw = {} if config["num_classes"] is None else {"num_classes": config["num_classes"]}
        train_set, test_set = embedded_splits(dataset, seed, n_train, config["n_test"], cache=cache,
                                              cache_root=cache_root, **gen_kw)
        torch.manual_seed(seed)
        split = _build(config, train_set.num_classes)
        r = config["recipe"]
        t0 = time.perf_counter()
        history = train_classifier(split, train_set, epochs=r["epochs"], lr=r["lr"], batch_size=r["batch_size"],
                                   weight_decay=r["weight_decay"], seed=seed, optimizer=r["optimizer"],
                                   lr_schedule=r["lr_schedule"], warmup_epochs=r["warmup_epochs"],
                                   augment=FlipTranslate(r["max_shift"]), label_smoothing=r["label_smoothing"],
                                   device=device, progress=progress)
        seconds = time.perf_counter() - t0
        split.as_module().to("cpu").eval()
        info = {"config": config, "history": history, "train_seconds": seconds,
                "test_acc": evaluate_accuracy(split, test_set), "threads": torch.get_num_threads()}
        if cache:
            atomic_torch_save({"state_dict": split.as_module().state_dict(), "num_classes": split.num_classes,
                               "info": info}, path)
        split.meta["zoo"] = {**info, "path": str(path), "loaded": False}
        return split
