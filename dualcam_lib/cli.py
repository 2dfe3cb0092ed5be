"""Command line: ``python -m dualcam_lib <command>`` (also installed as ``dualcam``).

Commands:
- ``grid``      run a notebook over a grid of papermill parameter sets and collect the result rows
- ``evaluate``  score saved maps against wsolevaluation-format metadata (see ``dualcam_lib.evaluate``)
"""
from __future__ import annotations

import argparse
import ast
import hashlib
import itertools
import json
import sys
import time
import traceback
from pathlib import Path


def parse_value(text: str):
    """A parameter value from the command line: Python literals (1, 0.5, True, None, 'x') or else the plain string."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def split_values(text: str) -> list[str]:
    """Split ``"1,2"`` at top-level commas only, so a value may be a list or dict: ``"['cam','gradcam'],['cam']"``."""
    parts, depth, quote, start = [], 0, None, 0
    for i, ch in enumerate(text):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    if depth != 0 or quote:
        raise SystemExit(f"--param value {text!r} has unbalanced brackets or quotes")
    return parts + [text[start:]]


def parse_grid(params: list[str]) -> list[dict]:
    """``["a=1,2", "b=x"]`` -> ``[{"a": 1, "b": "x"}, {"a": 2, "b": "x"}]`` (the Cartesian product, in order)."""
    axes = []
    for p in params:
        if "=" not in p:
            raise SystemExit(f"--param expects NAME=VALUE[,VALUE...], got {p!r}")
        name, values = p.split("=", 1)
        if not name.isidentifier():
            raise SystemExit(f"--param name {name!r} is not a valid notebook parameter name")
        axes.append([(name, parse_value(v)) for v in split_values(values)])
    return [dict(combo) for combo in itertools.product(*axes)] if axes else [{}]


def run_tag(params: dict) -> str:
    """A file-name-safe tag for one parameter set, e.g. ``dataset-synthetic__epochs-2``."""
    safe = lambda v: "".join(c if c.isalnum() or c in "-._" else "_" for c in str(v))  # noqa: E731
    tag = "__".join(f"{k}-{safe(v)}" for k, v in params.items()) or "default"
    if len(tag) > MAX_TAG:  # file systems cap a name at 255 bytes: keep a readable prefix plus a hash of the whole set
        digest = hashlib.sha256(json.dumps(params, sort_keys=True, default=str).encode()).hexdigest()[:12]
        tag = f"{tag[:MAX_TAG - 14]}__{digest}"
    return tag


MAX_TAG = 120  # characters of a run tag; the notebook name and a suffix are added to it in file names


def run_grid(notebook: str | Path, grid: list[dict], out_dir: str | Path, results: str | Path | None = None,
             kernel: str = "python3", force: bool = False, timeout: int | None = None, log=print) -> dict:
    """Execute ``notebook`` once per parameter set with papermill.

    Each run gets ``results_path`` (``<out_dir>/<tag>.csv``) as an extra parameter; notebooks that produce result rows
    write them there. A run whose CSV already exists is skipped unless ``force`` (so an interrupted grid resumes).
    Rows of successful runs are merged into ``results`` atomically. A failing run is reported and does not lose the
    others' rows. Returns ``{"ok": [...], "failed": [(tag, error)], "skipped": [...]}``.
    """
    import papermill as pm

    from .results import read_rows, write_rows

    notebook = Path(notebook)
    if not notebook.exists():
        raise FileNotFoundError(f"notebook '{notebook}' not found")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = {"ok": [], "failed": [], "skipped": []}
    for params in grid:
        tag = run_tag(params)
        rows_path = out_dir / f"{tag}.csv"
        if rows_path.exists() and not force:
            summary["skipped"].append(tag)
            log(f"[grid] {tag}: already done ({rows_path}), skipped")
        else:
            t0 = time.time()
            try:
                pm.execute_notebook(str(notebook), str(out_dir / f"{notebook.stem}__{tag}.ipynb"),
                                    parameters={**params, "results_path": str(rows_path)}, kernel_name=kernel,
                                    progress_bar=False, execution_timeout=timeout)
                if not rows_path.exists():  # the notebook produced no rows: still a completed run
                    write_rows(rows_path, [], replace=False)
                summary["ok"].append(tag)
                log(f"[grid] {tag}: ok in {time.time() - t0:.0f} s")
            except Exception as e:  # report and go on: one failure must not lose the other runs
                msg = str(e).strip().splitlines()
                summary["failed"].append((tag, msg[-1] if msg else type(e).__name__))
                log(f"[grid] {tag}: FAILED after {time.time() - t0:.0f} s: {summary['failed'][-1][1]}")
                continue
        if results is not None:
            write_rows(results, read_rows(rows_path))
    return summary


def _cmd_grid(args) -> int:
    grid = parse_grid(args.param)
    summary = run_grid(args.notebook, grid, args.out, args.results, kernel=args.kernel, force=args.force,
                       timeout=args.timeout)
    print(json.dumps({k: v for k, v in summary.items()}, indent=1))
    return 1 if summary["failed"] else 0


def run_config_from(settings: list[str]):
    """``["dataset=imagewoof-224", "seeds=0,1"]`` -> a :class:`~dualcam_lib.runner.RunConfig`; each value is read
    as the field's type (a tuple field takes comma-separated values). Unknown names and bad values are errors that
    name the field."""
    import dataclasses

    from .runner import RunConfig

    fields = {f.name: f for f in dataclasses.fields(RunConfig)}
    defaults = RunConfig()
    kwargs = {}
    for item in settings:
        if "=" not in item:
            raise ValueError(f"--set expects NAME=VALUE, got {item!r}")
        name, text = item.split("=", 1)
        if name not in fields:
            raise ValueError(f"--set {name}: not a RunConfig field; expected one of {sorted(fields)}")
        default = getattr(defaults, name)
        if isinstance(default, tuple):
            value = tuple(parse_value(v.strip()) for v in text.split(",") if v.strip())
        elif isinstance(default, bool):
            if text not in ("True", "False", "true", "false", "1", "0"):
                raise ValueError(f"--set {name}: expected True or False, got {text!r}")
            value = text in ("True", "true", "1")
        elif isinstance(default, (int, float)) and default is not None:
            value = parse_value(text)
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                raise ValueError(f"--set {name}: expected a number, got {text!r}")
        else:
            value = None if text == "None" else text
        kwargs[name] = value
    return RunConfig(**kwargs)


def _cmd_run(args) -> int:
    from .results import write_rows
    from .runner import run_experiment

    config = run_config_from(args.set)
    result = run_experiment(config, cache_dir=args.cache_dir)
    write_rows(args.results, result.rows)
    print(json.dumps({"rows": len(result.rows), "results": str(args.results), "choices": result.choices,
                      "seconds": {k: round(v, 1) for k, v in result.seconds.items()}}, indent=1, default=str))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="dualcam", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    g = sub.add_parser("grid", help="run a notebook over a parameter grid with papermill and collect result rows")
    g.add_argument("--notebook", required=True, help="the notebook to execute (must have a 'parameters' cell)")
    g.add_argument("--param", action="append", default=[], metavar="NAME=V1[,V2...]",
                   help="a notebook parameter and its values; repeat for more axes (Cartesian product)")
    g.add_argument("--out", required=True, help="folder for executed notebooks and per-run result CSVs")
    g.add_argument("--results", default=None, help="CSV collecting every run's rows (merged atomically)")
    g.add_argument("--kernel", default="python3")
    g.add_argument("--timeout", type=int, default=None, help="per-cell timeout in seconds")
    g.add_argument("--force", action="store_true", help="re-run parameter sets that already have results")
    g.set_defaults(func=_cmd_grid)
    from . import evaluate

    ev = sub.add_parser("evaluate", help="score saved maps against wsolevaluation metadata",
                        description=evaluate.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    evaluate.build_parser(ev)
    ev.set_defaults(func=lambda a: evaluate.run(a, ev))
    r = sub.add_parser("run", help="one runner experiment (val-tuned sigmoid head, test rows with intervals)")
    r.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                   help="a RunConfig field (dataset, backbone, weights, setting, head_init, methods, seeds, lr_grid, "
                        "device, data_root, ...); tuples take comma-separated values")
    r.add_argument("--results", required=True, help="CSV the rows are merged into (atomically)")
    r.add_argument("--cache-dir", default=None, help="feature caches (default: <cache dir>/runner)")
    r.set_defaults(func=_cmd_run)
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (FileNotFoundError, ValueError) as e:
        print(f"dualcam {args.command}: error: {e}", file=sys.stderr)
        return 2
    except Exception:
        traceback.print_exc()
        return 1


if __name__ == "__main__":
    sys.exit(main())
