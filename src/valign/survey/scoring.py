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

An instrument with a shipped scoring key (`valign.survey.scoring_keys`) has its items
checked against the key when it is loaded, and again here before scoring.

Example:
    >>> from valign.survey.instrument import load_instrument
    >>> inst = load_instrument("demo")
    >>> sorted(resolve_key(inst))[:2]
    ['achievement', 'autonomy']
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from valign.errors import ValignError
from valign.survey.scoring_keys import key_problem

if TYPE_CHECKING:
    import pandas as pd

    from valign.survey.frames import SurveyFrames
    from valign.survey.instrument import Instrument

__all__ = ["KeyedItem", "resolve_key", "score_ratings", "value_scores"]

Scoring = Literal["raw", "centred"]


@dataclass(frozen=True)
class KeyedItem:
    """One value item as scoring sees it."""

    item_id: str
    value: str
    reverse: bool


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
    problem = key_problem(section.scoring_key, section.items)
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

