"""The codebook of a respondent-level survey file: which columns are the weight, the
country, the groups and the questions, and what their codes mean.

A YAML file (example for the World Values Survey, wave 7)::

    weight: W_WEIGHT            # omit: every respondent counts once
    country: B_COUNTRY_ALPHA    # omit: no per-country distributions
    kind: value                 # the items' kind (default opinion)
    min_group_n: 30             # smaller groups get no distribution (default 30)
    missing: [-1, -2, -3, -4, -5]   # besides every negative code, which is always missing
    groups:
      sex: {variable: Q260, labels: {1: Male, 2: Female}}
      age: {variable: Q262, bins: {"18-29": [18, 29], "30-49": [30, 49], "50+": [50, 120]}}
    questions:
      Q1:
        text: "How important is family in your life?"
        options: {1: Very important, 2: Rather important, 3: Not very important, 4: Not at all important}
        ordinal: true
      Q2: {}                    # text and options from the file's labels (.sav, .dta)

A question's ``text`` and ``options`` (code → label, in scale order) may be left out when
the file carries variable and value labels (SPSS and Stata files do); a group's
``labels`` likewise. Every mistake is one `ValignError` naming the key.
"""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from valign.errors import ValignError

__all__ = ["GroupVariable", "Question", "Codebook", "read_codebook", "code_text"]


def code_text(value: object) -> str:
    """A code as text, with 1, 1.0 and "1" the same ("1"): files and YAML spell codes differently.

    Example:
        >>> code_text(1.0), code_text("2"), code_text("NZL")
        ('1', '2', 'NZL')
    """
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    text = str(value).strip()
    try:
        number = float(text)
    except ValueError:
        return text
    return str(int(number)) if number.is_integer() else text


class GroupVariable(BaseModel):
    """A demographic variable: its column, and either labels for its codes or bins for a number (inclusive)."""

    model_config = ConfigDict(extra="forbid")

    variable: str
    labels: dict[str, str] = Field(default_factory=dict)
    bins: dict[str, tuple[float, float]] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _codes_as_text(cls, data: object) -> object:
        if isinstance(data, dict) and isinstance(data.get("labels"), dict):
            data = {**data, "labels": {code_text(k): str(v) for k, v in data["labels"].items()}}
        return data


class Question(BaseModel):
    """A question: its text, its options (code → label, in order), whether they are ordered."""

    model_config = ConfigDict(extra="forbid")

    text: str | None = None
    instructions: str = ""
    options: dict[str, str] = Field(default_factory=dict)
    ordinal: bool = False

    @model_validator(mode="before")
    @classmethod
    def _codes_as_text(cls, data: object) -> object:
        if isinstance(data, dict) and isinstance(data.get("options"), dict):
            data = {**data, "options": {code_text(k): str(v) for k, v in data["options"].items()}}
        return data


class Codebook(BaseModel):
    """Which columns hold what (see the module's example)."""

    model_config = ConfigDict(extra="forbid")

    weight: str | None = None
    country: str | None = None
    kind: str = "opinion"
    min_group_n: int = Field(30, ge=1)
    missing: list[str | int | float] = Field(default_factory=list)
    groups: dict[str, GroupVariable] = Field(default_factory=dict)
    questions: dict[str, Question] = Field(..., min_length=1)

    @model_validator(mode="before")
    @classmethod
    def _empty_questions(cls, data: object) -> object:
        if isinstance(data, dict) and isinstance(data.get("questions"), dict):  # `Q2:` alone (None) means "all from the file"
            data = {**data, "questions": {str(k): (v if v is not None else {}) for k, v in data["questions"].items()}}
        return data

    def missing_codes(self) -> set[str]:
        return {code_text(c) for c in self.missing}


def read_codebook(path: str | Path) -> Codebook:
    """A codebook YAML file, validated; an error names the key and the fix."""
    path = Path(path)
    if not path.exists():
        raise ValignError(f"codebook {path} does not exist; write one (docs/opinions.md shows the World Values Survey's).")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise ValignError(f"{path} is not valid YAML ({getattr(e, 'problem', e)}); fix the syntax.") from None
    try:
        return Codebook.model_validate(data)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "(top level)"
        raise ValignError(f"codebook {path}: {where}: {first['msg'].removeprefix('Value error, ')}; fix that key.") from None
