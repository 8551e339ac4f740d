"""Population margins to rake a survey sample to, read from a documented YAML file.

A margins file names where its figures come from and, per raking variable, each
census category's population count or share:

.. code-block:: yaml

    id: nz-census-2023-adults
    title: New Zealand adults (18+), 2023 Census
    source:                      # required: where the figures come from
      citation: Stats NZ (2024). 2023 Census …
      table: …                   # table id or name
      url: https://…
      year: 2023
      universe: census usually resident population aged 18 and over
      notes: how the categories were derived (re-aggregated bands, …)
    variables:
      age_group:                 # a margin variable of the instrument's demographics
        categories: {"18-29": 812000, "30-44": 1010000, "45-64": 1200000, "65+": 880000}
        map: {}                  # optional: instrument option code -> census category
        source: {table: …}       # optional: fields that differ from the file's source
      sex:
        categories: {female: 0.51, male: 0.49}

Figures in one variable are either all counts (any figure above 1) or all shares
(summing to 1 ± 0.01); either way raking uses the shares. ``map`` lets an instrument
with finer or differently named options feed a census category: several codes may map
to one category (collapsing), and a code not in ``map`` must itself be a category.

Example:
    >>> m = load_margins("nz-census-2023")
    >>> sorted(m.variables)
    ['age_group', 'education', 'sex']
    >>> round(sum(m.variables["sex"].shares.values()), 6)
    1.0
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from valign.errors import ValignError
from valign.survey.datafiles import read_data_yaml, shipped_names

if TYPE_CHECKING:
    import pandas as pd

    from valign.survey.frames import SurveyFrames

__all__ = ["MarginVariable", "Margins", "load_margins", "shipped_margins", "SHARE_TOLERANCE", "DEFAULT_MARGINS"]

DEFAULT_MARGINS = "nz-census-2023"  # what an instrument's respondents are raked to unless told otherwise
SHARE_TOLERANCE = 0.01  # shares may be rounded in published tables; more than this is a typo
_SOURCE_FIELDS = ("citation", "table", "url", "year", "universe", "notes")


@dataclass(frozen=True)
class MarginVariable:
    """One raking variable: census category → population share, and the code → category map.

    Example:
        >>> v = MarginVariable("sex", {"female": 0.5, "male": 0.5}, {"f": "female"})
        >>> v.category("f"), v.category("male")
        ('female', 'male')
    """

    name: str
    shares: dict[str, float]
    map: dict[str, str] = field(default_factory=dict)
    counts: dict[str, float] | None = None  # the published counts, when the file gave counts
    source: dict[str, Any] = field(default_factory=dict)

    def category(self, code: str) -> str:
        """The census category an instrument option code belongs to."""
        return self.map.get(code, code)


@dataclass(frozen=True)
class Margins:
    """Population margins for raking, with their documented source.

    Example:
        >>> m = load_margins("nz-census-2023")
        >>> m.source["year"]
        2023
    """

    id: str
    title: str
    source: dict[str, Any]
    variables: dict[str, MarginVariable]
    path: str = ""

    def shares(self) -> dict[str, dict[str, float]]:
        """variable → category → population share (what raking targets)."""
        return {name: dict(v.shares) for name, v in self.variables.items()}

    def categorise(self, respondents: pd.DataFrame) -> pd.DataFrame:
        """The respondents' margin variables as census categories (missing stays missing).

        Raises a `ValignError` naming the first variable the respondents lack or the
        first answer code with no census category.
        """
        import pandas as pd

        out = {}
        for name, var in self.variables.items():
            if name not in respondents.columns:
                have = [c for c in respondents.columns if c not in _NOT_DEMOGRAPHIC]
                raise ValignError(
                    f"margins '{self.id}' rake on '{name}', but the respondents have no such column "
                    f"(their demographics: {', '.join(map(str, have)) or 'none'}); add a demographic question with "
                    f"margin: {name}, or remove '{name}' from {self._where()}."
                )
            col = respondents[name]
            present = col.notna()
            codes = col[present].astype(str)
            cats = codes.map(var.category)
            unknown = sorted(set(cats) - set(var.shares))
            if unknown:
                code = codes[cats == unknown[0]].iloc[0]
                close = difflib.get_close_matches(unknown[0], list(var.shares), n=1)
                hint = f" (perhaps '{close[0]}')" if close else ""
                raise ValignError(
                    f"respondents answered {name} = '{code}', which margins '{self.id}' have no category for; "
                    f"map it to one of {', '.join(var.shares)}{hint} under variables.{name}.map in {self._where()}, "
                    f"or collapse categories there."
                )
            out[name] = pd.Series(pd.NA, index=respondents.index, dtype="object")
            out[name][present] = cats
        return pd.DataFrame(out, index=respondents.index)

    def check(self, frames: SurveyFrames) -> None:
        """Raise a `ValignError` if ``frames`` cannot be raked to these margins."""
        self.categorise(frames.respondents)

    def _where(self) -> str:
        return self.path or f"the margins '{self.id}'"


_NOT_DEMOGRAPHIC = {
    "completed", "screened_out", "synthetic", "started_at", "finished_at", "seconds", "flag_attention", "flag_straightlining",
    "flag_speeding", "flag_social_desirability", "sd_score", "exclude", "quality_factor", "weight",
}  # fmt: skip


def shipped_margins() -> list[str]:
    """Names of the margins files shipped with valign (e.g. ``nz-census-2023``)."""
    return shipped_names("margins")


def load_margins(name_or_path: str | Path) -> Margins:
    """Load and validate a margins file: a shipped name (``nz-census-2023``) or a YAML path.

    Every mistake is one `ValignError` naming the file, the variable and the fix.

    Example:
        >>> load_margins("nz-census-2023").variables["education"].name
        'education'
    """
    path, data = read_data_yaml(name_or_path, "margins", "margins")
    return margins_from_dict(data, where=str(path))


def margins_from_dict(data: Any, where: str = "margins") -> Margins:
    """Validate a parsed margins mapping (what `load_margins` reads from YAML).

    Example:
        >>> m = margins_from_dict({"id": "t", "source": {"citation": "made up"},
        ...                        "variables": {"sex": {"categories": {"f": 60, "m": 40}}}})
        >>> m.variables["sex"].shares
        {'f': 0.6, 'm': 0.4}
    """
    if not isinstance(data, dict):
        raise ValignError(f"{where} must hold a mapping with 'id', 'source' and 'variables'.")
    unknown = set(data) - {"id", "title", "source", "variables"}
    if unknown:
        raise ValignError(f"{where}: unknown field '{sorted(unknown)[0]}'; remove it or check the spelling.")
    source = data.get("source")
    if not isinstance(source, dict) or not source.get("citation"):
        raise ValignError(f"{where}: 'source' with at least a 'citation' is required; say where the figures come from.")
    _check_source_fields(source, f"{where}: source")
    variables = data.get("variables")
    if not isinstance(variables, dict) or not variables:
        raise ValignError(f"{where}: 'variables' is missing or empty; give each raking variable its categories.")
    out = {}
    for name, spec in variables.items():
        out[str(name)] = _variable(str(name), spec, f"{where}: variables.{name}")
    return Margins(id=str(data.get("id") or Path(where).stem), title=str(data.get("title", "")), source=dict(source), variables=out, path=where)


def _check_source_fields(source: dict, where: str) -> None:
    bad = set(source) - set(_SOURCE_FIELDS)
    if bad:
        raise ValignError(f"{where}: unknown field '{sorted(bad)[0]}'; use {', '.join(_SOURCE_FIELDS)}.")


def _variable(name: str, spec: Any, where: str) -> MarginVariable:
    if not isinstance(spec, dict) or "categories" not in spec:
        raise ValignError(f"{where}: 'categories' is required; give each census category its count or share.")
    bad = set(spec) - {"categories", "map", "source"}
    if bad:
        raise ValignError(f"{where}: unknown field '{sorted(bad)[0]}'; use categories, map and source.")
    cats = spec["categories"]
    if not isinstance(cats, dict) or len(cats) < 2:
        raise ValignError(f"{where}.categories needs at least two categories with their counts or shares.")
    figures: dict[str, float] = {}
    for cat, value in cats.items():
        try:
            figures[str(cat)] = float(value)
        except (TypeError, ValueError):
            raise ValignError(f"{where}.categories.{cat} is '{value}', not a number; write a count or a share.") from None
        if figures[str(cat)] <= 0:
            raise ValignError(f"{where}.categories.{cat} is {value}; every category needs a positive count or share (drop or collapse empty ones).")
    total = sum(figures.values())
    counts = None
    if any(v > 1 for v in figures.values()):
        counts = figures
    elif abs(total - 1) > SHARE_TOLERANCE:
        raise ValignError(
            f"{where}: the shares sum to {total:.4f}, not 1 (±{SHARE_TOLERANCE}); fix the figures, or give counts instead of shares."
        )
    shares = {c: v / total for c, v in figures.items()}
    mapping = spec.get("map") or {}
    if not isinstance(mapping, dict):
        raise ValignError(f"{where}.map must map instrument option codes to census categories.")
    mapping = {str(k): str(v) for k, v in mapping.items()}
    for code, cat in mapping.items():
        if cat not in shares:
            raise ValignError(f"{where}.map sends '{code}' to '{cat}', which is not one of its categories ({', '.join(shares)}); fix the map.")
    vsource = spec.get("source") or {}
    if not isinstance(vsource, dict):
        raise ValignError(f"{where}.source must be a mapping like the file's source.")
    _check_source_fields(vsource, f"{where}.source")
    return MarginVariable(name=name, shares=shares, map=mapping, counts=counts, source=dict(vsource))
