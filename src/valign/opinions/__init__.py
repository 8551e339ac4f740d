"""The public's values already collected: published opinion data as valign evaluation items.

Each format has one module and one entry in `FORMATS` (`valign.opinions.registry`);
`convert` turns a file (or a cached hub data set) into `OpinionItem`s — the
evaluation-set format `valign survey export` writes — which the fidelity suite scores a
model against and `survey_sft` trains towards, per country or subgroup
(`valign.opinions.populations`). The names below load on first use, so the CLI's
``valign opinions`` stays light.

Example:
    >>> from valign.opinions import FORMATS
    >>> sorted(FORMATS)
    ['globalopinionqa', 'opinionqa', 'respondents', 'subpop']
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["FORMATS", "Conversion", "Format", "convert", "describe_items", "expand", "population_counts", "restrict", "retarget"]

_HOME = {
    "FORMATS": "registry", "convert": "registry",
    "Conversion": "formats", "Format": "formats",
    "describe_items": "summary",
    "expand": "populations", "population_counts": "populations", "restrict": "populations", "retarget": "populations",
}


def __getattr__(name: str) -> Any:
    if name in _HOME:
        return getattr(importlib.import_module(f"valign.opinions.{_HOME[name]}"), name)
    raise AttributeError(f"module 'valign.opinions' has no attribute {name!r}")
