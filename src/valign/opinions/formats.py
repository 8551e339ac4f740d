"""What a format is (its loader, its hub id, where to get it) and what a conversion returns.

One module per format defines a `Format`; ``valign.opinions.FORMATS`` registers it by name.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from valign.survey.opinion import OpinionItem

__all__ = ["Conversion", "Format"]


@dataclass
class Conversion:
    """The items a file became, and what was left out and why (reason → count)."""

    items: list[OpinionItem]
    skipped: dict[str, int] = field(default_factory=dict)

    def skip(self, reason: str) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1


@dataclass(frozen=True)
class Format:
    """A published layout of opinion data: ``load(path, codebook)`` → `Conversion`.

    ``hub_id`` is the data set's id on the Hugging Face hub, if it has one;
    ``download`` says where its files are published (the sentence a missing one gets);
    ``codebook`` whether the format needs a codebook (respondent-level files do).
    """

    name: str
    about: str
    load: Callable[[Path, "Path | None"], Conversion]
    download: str
    hub_id: str | None = None
    codebook: bool = False
