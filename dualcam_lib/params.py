"""Notebook parameters as papermill delivers them.

``papermill -p NAME VALUE`` passes every value that is not a number, a boolean or None as a plain string, so a list
parameter arrives as ``"cam,gradcam"`` or ``"['cam', 'gradcam']"``; ``-y "methods: [cam, gradcam]"`` (YAML) and
``-f params.yaml`` pass a real list. :func:`as_list` accepts all of these.
"""
from __future__ import annotations

import ast
from collections.abc import Iterable


def as_list(value, name: str, choices: Iterable[str] | None = None) -> list[str]:
    """A list parameter -> ``list[str]``, in the given order, each name stripped of whitespace.

    ``value``: a list or tuple of strings, a comma-separated string (``"cam,gradcam"``), one name (``"cam"``) or the
    string of a Python list or tuple literal (``"['cam', 'gradcam']"``, read with :func:`ast.literal_eval`).
    ``choices``: the allowed names (None: any). Raises ValueError naming the parameter, the bad value and the choices
    for a value of another type, an empty list or name, or a name not in ``choices``.
    """
    allowed = None if choices is None else [str(c) for c in choices]
    hint = "" if allowed is None else f"; allowed: {', '.join(allowed)}"

    def fail(why: str):
        return ValueError(f"parameter {name!r}: {why}, got {value!r}; expected a list of names, a comma-separated "
                          f"string ('a,b') or a list literal (\"['a', 'b']\"){hint}")

    items = value
    if isinstance(value, str):
        text = value.strip()
        if text.startswith(("[", "(")):
            try:
                items = ast.literal_eval(text)
            except (ValueError, SyntaxError):
                raise fail("not a readable list literal") from None
            if not isinstance(items, (list, tuple)):
                raise fail("not a list literal")
        else:
            items = text.split(",")
    elif not isinstance(value, (list, tuple)):
        raise fail(f"a {type(value).__name__} is not a list")
    if not all(isinstance(v, str) for v in items):
        raise fail("every item must be a name (a string)")
    names = [v.strip() for v in items]
    if not names or any(not v for v in names):
        raise fail("empty list or empty name")
    if allowed is not None:
        unknown = [v for v in names if v not in allowed]
        if unknown:
            raise fail(f"unknown name(s) {', '.join(map(repr, unknown))}")
    return names


def as_number_list(value, name: str) -> list[float]:
    """A list-of-numbers parameter -> ``list[float]``: a list or tuple of numbers, a comma-separated string
    (``"-1,0,1.5"``) or the string of a list literal (``"[-1, 0, 1.5]"``). Raises ValueError naming the parameter
    and the bad value otherwise."""
    def fail(why: str):
        return ValueError(f"parameter {name!r}: {why}, got {value!r}; expected numbers as a list, a comma-separated "
                          "string ('-1,0,1.5') or a list literal ('[-1, 0, 1.5]')")

    items = value
    if isinstance(value, str):
        text = value.strip()
        try:
            items = ast.literal_eval(text) if text.startswith(("[", "(")) else text.split(",")
        except (ValueError, SyntaxError):
            raise fail("not a readable list literal") from None
    if isinstance(items, (int, float)) and not isinstance(items, bool):
        items = [items]
    if not isinstance(items, (list, tuple)) or not items:
        raise fail("not a non-empty list")
    out = []
    for v in items:
        try:
            if isinstance(v, bool):
                raise ValueError
            out.append(float(v.strip()) if isinstance(v, str) else float(v))
        except (TypeError, ValueError):
            raise fail(f"item {v!r} is not a number") from None
    return out
