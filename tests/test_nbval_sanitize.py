"""The nbval sanitize rules (notebooks/nbval_sanitize.cfg) rewrite what varies and leave real output alone."""
import configparser
import re
from pathlib import Path

import pytest

CFG = Path(__file__).resolve().parent.parent / "notebooks" / "nbval_sanitize.cfg"


def _rules() -> list[tuple[str, str]]:
    parser = configparser.ConfigParser(interpolation=None)
    parser.read(CFG, encoding="utf-8")
    return [(parser[s]["regex"], parser[s]["replace"]) for s in parser.sections()]


def sanitize(text: str) -> str:
    # Every rule in file order, as nbval applies them.
    for regex, replace in _rules():
        text = re.sub(regex, replace, text)
    return text


def test_every_section_has_a_valid_rule_that_nbval_reads_too():
    from nbval.plugin import get_sanitize_patterns

    rules = _rules()
    assert rules and all(re.compile(regex) for regex, _ in rules)
    assert get_sanitize_patterns(CFG.read_text(encoding="utf-8")) == rules


@pytest.mark.parametrize("text", ["<Figure size 1400x230 with 7 Axes>", "<Figure size 880x440 with 8 Axes>",
                                  "flags 0x1f, shape 64x64"])
def test_figure_sizes_and_short_hex_are_unchanged(text):
    assert sanitize(text) == text


def test_memory_addresses_are_rewritten():
    assert sanitize("<object at 0x7f3a2b1c9d00>") == "<object at 0xADDR>"
    assert sanitize("<Linear at 0x7F3A2B1C9D00>, <Conv at 0x55d1c0ffee00>") == "<Linear at 0xADDR>, <Conv at 0xADDR>"
