"""The registry of formats (one entry per format module) and `convert`, which looks a format up and runs it.

Example:
    >>> sorted(FORMATS)
    ['globalopinionqa', 'opinionqa', 'respondents', 'subpop']
"""

from __future__ import annotations

from pathlib import Path

from valign.errors import ValignError
from valign.opinions import globalopinionqa, opinionqa, respondents, subpop
from valign.opinions.formats import Conversion, Format
from valign.opinions.sources import resolve_source

__all__ = ["FORMATS", "convert"]

FORMATS: dict[str, Format] = {f.name: f for f in (globalopinionqa.FORMAT, opinionqa.FORMAT, subpop.FORMAT, respondents.FORMAT)}


def convert(source: str | Path, fmt: str, codebook: str | Path | None = None, cache_dir: Path | None = None) -> Conversion:
    """Load ``source`` (a file, folder, or a cached hub id) in format ``fmt`` as items."""
    if fmt not in FORMATS:
        raise ValignError(f"--format '{fmt}' is not one of {', '.join(FORMATS)}.")
    spec = FORMATS[fmt]
    if codebook is not None and not spec.codebook:
        raise ValignError(f"--codebook applies to --format respondents only; {fmt} files carry their own questions and options.")
    path = resolve_source(source, fmt, spec.download, cache_dir)
    result = spec.load(path, Path(codebook) if codebook is not None else None)
    if not result.items:
        why = "; ".join(f"{n} {reason}" for reason, n in result.skipped.items()) or "it holds no questions"
        raise ValignError(f"{source} gave no items ({why}); check that it is a {fmt} file.")
    ids = [item.id for item in result.items]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise ValignError(f"{source} gives two items the id '{dup}'; convert one survey wave or file at a time.")
    return result
