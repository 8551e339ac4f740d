"""The survey pages' own words, per language: a small message catalogue.

An instrument's texts are the researcher's (`valign.survey.translations`); the words
around them — buttons, headings, the closing pages, the options of agree/disagree and
true/false items, the messages of a form with a mistake — are valign's, kept in one
YAML file per language under ``valign/data/templates/survey/messages/``. Every file
holds exactly the keys of ``en.yaml``; to add a language, copy that file to
``<tag>.yaml`` and translate its values (``{name}`` marks a value filled in).

Example:
    >>> messages("de")["finish"]
    'Abschließen'
    >>> "de" in catalogue_languages()
    True
    >>> messages("en")["progress"].format(number=2, total=9)
    'Page 2 of 9'
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import yaml

from valign.errors import ValignError
from valign.web.templates import templates_folder

__all__ = ["messages", "catalogue_languages", "BASE_CATALOGUE"]

BASE_CATALOGUE = "en"  # every other catalogue must have exactly its keys


def _folder():  # noqa: ANN202
    return templates_folder("survey/messages")


@lru_cache(maxsize=None)
def catalogue_languages() -> tuple[str, ...]:
    """The language tags the pages' own words exist in (the catalogue files' names)."""
    return tuple(sorted(p.name.removesuffix(".yaml") for p in _folder().iterdir() if p.name.endswith(".yaml")))


def _keys(tree: dict[str, Any], prefix: str = "") -> set[str]:
    out: set[str] = set()
    for k, v in tree.items():
        out |= _keys(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}"}
    return out


@lru_cache(maxsize=None)
def messages(lang: str) -> dict[str, Any]:
    """The catalogue of one language; an unknown language or a catalogue whose keys
    differ from the English one is a `ValignError` saying which."""
    if lang not in catalogue_languages():
        raise ValignError(f"the survey pages have no '{lang}' translation (they exist in {', '.join(catalogue_languages())}); add valign/data/templates/survey/messages/{lang}.yaml or use one of those.")
    tree = yaml.safe_load(_folder().joinpath(f"{lang}.yaml").read_text(encoding="utf-8"))
    if lang != BASE_CATALOGUE:
        missing = sorted(_keys(messages(BASE_CATALOGUE)) - _keys(tree))
        extra = sorted(_keys(tree) - _keys(messages(BASE_CATALOGUE)))
        if missing or extra:
            raise ValignError(f"the survey pages' '{lang}' catalogue lacks {missing} and has unknown keys {extra}; give it exactly the keys of {BASE_CATALOGUE}.yaml.")
    return tree
