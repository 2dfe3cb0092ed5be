"""Shared test set-up: fixed threads and seeds so results do not depend on the machine."""
import os
import random

import numpy as np
import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def _test_cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("dualcam-cache")


@pytest.fixture(autouse=True)
def _isolated_cache(_test_cache_dir, monkeypatch):
    """Tests train with 1 thread: keep their cached models away from the notebooks' cache. Set per test (and undone
    after it) so notebook kernels started later in the same pytest run see the default cache."""
    monkeypatch.setenv("DUALCAM_CACHE_DIR", str(_test_cache_dir))


@pytest.fixture(autouse=True)
def _seed_everything():
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="session")
def shared_data_root():
    """The real offline data (``DUALCAM_DATA_ROOT`` or ``../shared/data``); tests that need it skip with a reason when absent."""
    from dualcam_lib.paths import data_root

    root = data_root()
    if not (root / "imagenet-val-1000").exists():
        pytest.skip(f"real data not present under {root} (set DUALCAM_DATA_ROOT)")
    return root
