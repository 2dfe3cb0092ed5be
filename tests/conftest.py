"""Shared test set-up: fixed threads and seeds so results do not depend on the machine."""
import os
import random

import numpy as np
import pytest
import torch

torch.set_num_threads(1)


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
