"""Value scores per respondent from their Likert answers (Schwartz's PVQ scoring).

Scoring, step by step, for each respondent:

1. each answer code ``"1"`` … ``"points"`` becomes a number; on a ``descending`` scale
   (``values.scale_direction``: code 1 means "very much like me", the ESS layout)
   every rating is turned round first, ``points + 1 − x``, so that a higher number
   always means "more like me";
2. a reverse-keyed item (``reverse: true``) is flipped the same way, ``points + 1 − x``;
3. ``raw`` score of a value = the mean of that value's answered items;
4. ``centred`` score = raw score − the respondent's mean rating over ALL answered value
   items (after steps 1–2): the MRAT centring Schwartz recommends, which removes
   individual differences in scale use. Attention checks are not value items and
   never enter the mean.

Unanswered items are left out of the means (a value with no answered item is NaN).

A shipped scoring key (``values.scoring_key``: ``pvq21`` — the ESS 21-item PVQ, ten
values — or ``pvq_rr`` — the revised PVQ, 57 items, 19 values) assigns items to values
by their NUMBER in the published questionnaire. An item's number is its ``number``
field, else the digits that end its id (``pvq-7`` → 7). The item's ``value`` must name
the key's value for that number, which catches misnumbered items: `key_problem` checks
that whenever an instrument is loaded. The keys ship as data (`SCORING_KEYS`), without
the licensed item texts.

Example:
    >>> from valign.survey.instrument import load_instrument
    >>> inst = load_instrument("demo")
    >>> sorted(resolve_key(inst))[:2]
    ['achievement', 'autonomy']
    >>> len(scoring_key("pvq_rr").values)
    19
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from typing import TYPE_CHECKING, Literal

import yaml

from valign.errors import ValignError

if TYPE_CHECKING:
    import pandas as pd

    from valign.survey.frames import SurveyFrames
    from valign.survey.instrument import Instrument, ValueSection

__all__ = ["ScoringKey", "KeyedItem", "SCORING_KEYS", "scoring_key", "key_problem", "resolve_key", "item_number", "score_ratings", "value_scores"]

SCORING_KEYS = ("pvq21", "pvq_rr")
Scoring = Literal["raw", "centred"]


@dataclass(frozen=True)
class ScoringKey:
    """A published scoring key: value → item numbers.

    Example:
        >>> scoring_key("pvq21").value_of(19)
        'universalism'
    """

    id: str
    title: str
    items: int
    values: dict[str, tuple[int, ...]]
    scale_direction: str

    def value_of(self, number: int) -> str | None:
        """The value item ``number`` measures, or None if the key has no such item."""
        for value, numbers in self.values.items():
            if number in numbers:
                return value
        return None


@lru_cache(maxsize=None)
def scoring_key(name: str) -> ScoringKey:
    """Load a shipped scoring key (``pvq21`` or ``pvq_rr``).

    Example:
        >>> scoring_key("pvq21").items
        21
    """
    if name not in SCORING_KEYS:
        raise ValignError(f"scoring key '{name}' is not shipped; use one of {', '.join(SCORING_KEYS)}.")
    text = (resources.files("valign") / "data" / "scoring_keys" / f"{name}.yaml").read_text(encoding="utf-8")
    data = yaml.safe_load(text)
    values = {str(v): tuple(int(n) for n in nums) for v, nums in data["values"].items()}
    return ScoringKey(id=data["id"], title=data["title"], items=int(data["items"]), values=values, scale_direction=data["scale_direction"])


@dataclass(frozen=True)
class KeyedItem:
    """One value item as scoring sees it."""

    item_id: str
    value: str
    reverse: bool


def item_number(item_id: str, number: int | None) -> int | None:
    """An item's number in its published questionnaire: ``number``, else the digits ending the id.

    Example:
        >>> item_number("pvq-07", None), item_number("care", 3), item_number("care", None)
        (7, 3, None)
    """
    if number is not None:
        return number
    m = re.search(r"(\d+)$", item_id)
    return int(m.group(1)) if m else None


def key_problem(section: ValueSection) -> tuple[int, str] | None:
    """The first value item that disagrees with the section's ``scoring_key``: its index
    in ``section.items`` and a sentence saying what is wrong and how to fix it (no final
    full stop); None when every item matches, or when there is no key.

    `ValueSection` runs this when an instrument is loaded, so a misnumbered item stops
    `valign survey check` and `serve`, not only the scoring.

    Example:
        >>> from valign.survey.instrument import load_instrument
        >>> key_problem(load_instrument("demo").values) is None
        True
    """
    if section.scoring_key is None:
        return None
    key = scoring_key(section.scoring_key)
    seen: dict[int, str] = {}
    for index, item in enumerate(section.items):
        number = item_number(item.id, item.number)
        if number is None or not 1 <= number <= key.items:
            return index, (
                f"value item '{item.id}' has no item number of the {key.id} key (1–{key.items}); "
                f"add `number:` to it or end its id with the number (e.g. {key.id}-{1})"
            )
        if number in seen:
            return index, f"value items '{seen[number]}' and '{item.id}' both have number {number}; give each its own number"
        seen[number] = item.id
        expected = key.value_of(number)
        if expected != item.value:
            return index, (
                f"value item '{item.id}' (number {number}) says value '{item.value}', but the {key.id} key "
                f"scores item {number} as '{expected}'; fix its value or its number"
            )
    return None


def resolve_key(instrument: Instrument) -> dict[str, list[KeyedItem]]:
    """value → its items, checked against the instrument's ``scoring_key`` when it has one.

    Example:
        >>> from valign.survey.instrument import load_instrument
        >>> [i.item_id for i in resolve_key(load_instrument("demo"))["autonomy"]]
        ['v-auto-1', 'v-auto-2']
    """
    section = instrument.values
    if section is None:
        return {}
    # Loading already refused a mismatch; this catches instruments changed with model_copy,
    # which skips validation, so they are never scored under the wrong values.
    problem = key_problem(section)
    if problem is not None:
        raise ValignError(problem[1] + ".")
    out: dict[str, list[KeyedItem]] = {}
    for item in section.items:
        out.setdefault(item.value, []).append(KeyedItem(item.id, item.value, item.reverse))
    return out


def score_ratings(ratings: pd.DataFrame, instrument: Instrument, scoring: Scoring | None = None) -> pd.DataFrame:
    """Value scores from a respondents × item-id table of ratings (numbers or answer codes).

    ``scoring`` defaults to the instrument's ``values.scoring``. Returns a respondents ×
    values table (values in instrument order).

    Example:
        >>> import pandas as pd
        >>> from valign.survey.instrument import load_instrument
        >>> inst = load_instrument("demo")
        >>> ids = [i.id for i in inst.values.items]
        >>> r = pd.DataFrame([[6] * len(ids)], columns=ids, index=["r1"])
        >>> float(score_ratings(r, inst, "raw").loc["r1", "autonomy"])  # item 2 is reverse-keyed: 6 -> 1
        3.5
    """
    import numpy as np
    import pandas as pd

    section = instrument.values
    if section is None:
        return pd.DataFrame(index=ratings.index)
    scoring = scoring or section.scoring
    key = resolve_key(instrument)
    points = section.scale.points
    items = [k for keyed in key.values() for k in keyed]
    x = ratings.reindex(columns=[k.item_id for k in items]).apply(pd.to_numeric, errors="coerce").to_numpy(dtype=float, copy=True)
    x[(x < 1) | (x > points)] = np.nan  # a code outside the scale is no rating, not a number to average
    if section.scale_direction == "descending":
        x = points + 1 - x
    flip = np.array([k.reverse for k in items])
    x[:, flip] = points + 1 - x[:, flip]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # an all-NaN row is an expected NaN score
        mrat = np.nanmean(x, axis=1) if scoring == "centred" else np.zeros(len(x))
        cols = {}
        start = 0
        for value, keyed in key.items():
            block = x[:, start : start + len(keyed)]
            start += len(keyed)
            cols[value] = np.nanmean(block, axis=1) - mrat
    return pd.DataFrame(cols, index=ratings.index)


def value_scores(frames: SurveyFrames, scoring: Scoring | None = None) -> pd.DataFrame:
    """Every respondent's value scores (rows: ``frames.respondents``; columns: values).

    Example:
        >>> from valign.survey.frames import SurveyFrames
        >>> from valign.survey.instrument import load_instrument
        >>> value_scores(SurveyFrames.empty(load_instrument("demo"))).shape
        (0, 7)
    """
    return score_ratings(frames.choices("value"), frames.instrument, scoring)

