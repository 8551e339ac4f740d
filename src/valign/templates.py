"""Prompt templates shipped as package data (``valign/data/templates/``).

Judges and evaluations fill them with `string.Template`; a stage's fingerprint holds
their `digest`, so editing a template re-runs whatever reads it.

Example:
    >>> "${principles}" in load_template("eval_pairwise.txt")
    True
    >>> len(digest(["eval_pairwise.txt"]))
    64
"""

from __future__ import annotations

import hashlib
from functools import lru_cache
from importlib import resources
from typing import Sequence

__all__ = ["load_template", "digest"]


@lru_cache(maxsize=None)
def load_template(name: str) -> str:
    """A template file from ``valign/data/templates/`` (``report/…`` for the report's),
    without its final newline.

    Example:
        >>> load_template("judge_answer.txt").endswith("\\n")
        False
    """
    path = resources.files("valign") / "data" / "templates" / name
    return path.read_text(encoding="utf-8").rstrip("\n")


def digest(names: Sequence[str]) -> str:
    """SHA-256 over template files, names included, for a stage fingerprint.

    Example:
        >>> digest(["judge_answer.txt"]) == digest(["judge_answer.txt"]) != digest(["judge_cot.txt"])
        True
    """
    h = hashlib.sha256()
    for name in names:
        h.update(name.encode() + b"\0" + load_template(name).encode() + b"\0")
    return h.hexdigest()
