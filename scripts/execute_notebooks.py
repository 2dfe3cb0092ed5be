"""Execute notebooks in place (stored outputs are what nbval compares and what readers see on GitHub).

Usage: python scripts/execute_notebooks.py notebooks/01_first_look.ipynb [more.ipynb ...] [--timeout 900]

Runs each notebook top to bottom in its own folder with the current environment's python3 kernel, keeps widget state,
and writes it back only when every cell succeeded. Prints the wall time of each.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient


def execute(path: Path, timeout: int) -> float:
    nb = nbformat.read(path, as_version=4)
    t0 = time.time()
    NotebookClient(nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}},
                   store_widget_state=True).execute()
    nbformat.write(nb, path)
    return time.time() - t0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("notebooks", nargs="+", type=Path)
    ap.add_argument("--timeout", type=int, default=900, help="seconds per cell")
    args = ap.parse_args(argv)
    for p in args.notebooks:
        if not p.exists():
            print(f"execute: no such notebook '{p}'", file=sys.stderr)
            return 2
        print(f"{p}: {execute(p, args.timeout):.1f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
