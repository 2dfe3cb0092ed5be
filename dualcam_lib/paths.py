"""Where data, weights and caches are looked for.

One option each, resolved in this order: the explicit argument, then an environment variable, then a default.

- data root:    ``DUALCAM_DATA_ROOT``   (default ``../shared/data`` beside the repository if present, else ``./data``)
- weights root: ``DUALCAM_WEIGHTS_ROOT`` (default ``../shared/weights`` beside the repository if present, else ``./weights``)
- cache dir:    ``DUALCAM_CACHE_DIR``   (default ``<repo>/.cache``) for trained embedded models and feature caches.
- numba cache:  ``NUMBA_CACHE_DIR``     (default ``$XDG_CACHE_HOME/dualcam_lib/numba``, i.e. ``~/.cache/...``), never
  the package folder, so a checkout stays clean and a read-only install works.
"""
from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def _resolve(explicit, env: str, shared_name: str, local_name: str) -> Path:
    if explicit is not None:
        return Path(explicit).expanduser().resolve()
    if os.environ.get(env):
        return Path(os.environ[env]).expanduser().resolve()
    shared = REPO_ROOT.parent / "shared" / shared_name
    if shared.exists():
        return shared.resolve()
    return (REPO_ROOT / local_name).resolve()


def data_root(explicit: str | os.PathLike | None = None) -> Path:
    """The folder holding datasets (``imagenet-val-1000/``, ``CUB_200_2011/``, ``wsol-metadata/`` ...)."""
    return _resolve(explicit, "DUALCAM_DATA_ROOT", "data", "data")


def weights_root(explicit: str | os.PathLike | None = None) -> Path:
    """The folder holding local weight files (state_dicts loaded with ``weights_only=True``)."""
    return _resolve(explicit, "DUALCAM_WEIGHTS_ROOT", "weights", "weights")


def cache_dir(explicit: str | os.PathLike | None = None) -> Path:
    """A writable folder for trained embedded models and cached features; created on demand."""
    if explicit is not None:
        p = Path(explicit)
    elif os.environ.get("DUALCAM_CACHE_DIR"):
        p = Path(os.environ["DUALCAM_CACHE_DIR"])
    else:
        p = REPO_ROOT / ".cache"
    p = p.expanduser().resolve()
    p.mkdir(parents=True, exist_ok=True)
    return p


def numba_cache_dir() -> Path:
    """The folder numba caches the metrics' compiled kernels in: ``NUMBA_CACHE_DIR`` when set, else
    ``$XDG_CACHE_HOME/dualcam_lib/numba`` (``~/.cache`` without it), else a folder under the temp dir when the home
    cache cannot be written. Created on demand."""
    import tempfile

    if os.environ.get("NUMBA_CACHE_DIR"):
        return Path(os.environ["NUMBA_CACHE_DIR"]).expanduser()
    home_cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser()
    for candidate in (home_cache / "dualcam_lib" / "numba", Path(tempfile.gettempdir()) / "dualcam_lib-numba"):
        try:
            candidate.mkdir(parents=True, exist_ok=True)
            if os.access(candidate, os.W_OK):
                return candidate
        except OSError:
            continue
    return candidate


def require_file(path: str | os.PathLike, what: str) -> Path:
    """Return ``path`` as a Path, or raise FileNotFoundError naming ``what`` and the option that sets it."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(
            f"{what} not found at '{p}'. Set the data root with the notebook parameter `data_root`, "
            f"the CLI option --data-root, or the environment variable DUALCAM_DATA_ROOT."
        )
    return p
