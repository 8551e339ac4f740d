"""Every `>>>` example in valign's docstrings is one doctest collects (pytest runs them
with --doctest-modules over src/valign): none hides where doctest cannot see it, and
none is a comment dressed as an example. An example that cannot run is written as a
plain sample (``Example::`` and indented code, no prompts) instead."""

from __future__ import annotations

import doctest
import importlib
from pathlib import Path

import valign

SRC = Path(valign.__file__).parent


def _modules() -> list[tuple[str, Path]]:
    out = []
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC.parent).with_suffix("")
        if "migrations" in rel.parts:  # Alembic's env.py runs only under alembic
            continue
        out.append((".".join(rel.parts).removesuffix(".__init__"), path))
    return out


def test_every_example_is_collected_by_doctest():
    uncollected = {}
    for name, path in _modules():
        prompts = sum(line.lstrip().startswith(">>>") for line in path.read_text(encoding="utf-8").splitlines())
        if not prompts:
            continue
        collected = sum(len(t.examples) for t in doctest.DocTestFinder().find(importlib.import_module(name)))
        if collected != prompts:
            uncollected[name] = (prompts, collected)
    assert not uncollected, f"`>>>` lines vs examples doctest collects, per module: {uncollected}"
