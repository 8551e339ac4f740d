"""Value scoring: reverse keys, scale direction, MRAT centring, the shipped PVQ keys."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from pydantic import ValidationError

from tests.survey_stats_sim import INSTRUMENT, simulate
from valign.errors import ValignError
from valign.survey.instrument import Instrument
from valign.survey.scoring import resolve_key, score_ratings, value_scores
from valign.survey.scoring_keys import SCORING_KEYS, item_number, scoring_key


def _with_values(**changes) -> Instrument:
    data = INSTRUMENT.model_dump()
    data["values"].update(changes)
    return Instrument.model_validate(data)


def test_reverse_keyed_items_are_flipped():
    ids = [i.id for i in INSTRUMENT.values.items]
    ratings = pd.DataFrame([[5] * len(ids)], columns=ids, index=["r"])
    raw = score_ratings(ratings, INSTRUMENT, "raw")
    assert raw.loc["r", "care"] == 5  # two forward items
    assert raw.loc["r", "autonomy"] == (5 + 2) / 2  # v-auto-2 is reverse-keyed: 6 + 1 - 5 = 2


def test_descending_scale_counts_backwards():
    inst = _with_values(scale_direction="descending")
    ids = [i.id for i in inst.values.items]
    ratings = pd.DataFrame([[1] * len(ids)], columns=ids, index=["r"])  # 1 = "very much like me" here
    raw = score_ratings(ratings, inst, "raw")
    assert raw.loc["r", "care"] == 6
    assert raw.loc["r", "autonomy"] == (6 + 1) / 2


def test_centred_scores_average_to_zero_with_equal_item_counts():
    frames = simulate(200, seed=3)
    assert {len(v) for v in resolve_key(INSTRUMENT).values()} == {2}  # every demo value has two items
    centred = value_scores(frames, "centred")
    assert np.abs(centred.mean(axis=1)).max() < 1e-12
    raw = value_scores(frames, "raw")
    # centring removes each respondent's mean rating (MRAT) and nothing else
    np.testing.assert_allclose((raw.sub(centred)).std(axis=1), 0, atol=1e-12)


def test_unanswered_items_are_left_out_and_codes_outside_the_scale_ignored():
    ids = [i.id for i in INSTRUMENT.values.items]
    row = {i: "4" for i in ids} | {"v-care-2": None, "v-fair-1": "9"}
    raw = score_ratings(pd.DataFrame([row], index=["r"]), INSTRUMENT, "raw")
    assert raw.loc["r", "care"] == 4 and raw.loc["r", "fairness"] == 4


@pytest.mark.parametrize("name, items, values", [("pvq21", 21, 10), ("pvq_rr", 57, 19)])
def test_shipped_keys_use_every_item_exactly_once(name, items, values):
    key = scoring_key(name)
    numbers = sorted(n for ns in key.values.values() for n in ns)
    assert numbers == list(range(1, items + 1))
    assert key.items == items and len(key.values) == values
    if name == "pvq_rr":
        assert {len(ns) for ns in key.values.values()} == {3}


def test_pvq_keys_match_published_assignments():
    assert scoring_key("pvq21").values["universalism"] == (3, 8, 19)
    assert scoring_key("pvq21").values["self_direction"] == (1, 11)
    assert scoring_key("pvq_rr").values["humility"] == (7, 38, 54)
    assert scoring_key("pvq_rr").values["security_societal"] == (2, 35, 50)
    assert set(SCORING_KEYS) == {"pvq21", "pvq_rr"}


def _pvq21_instrument(**item_changes) -> Instrument:
    key = scoring_key("pvq21")
    items = [{"id": f"pvq-{n}", "text": f"(licensed item {n})", "value": key.value_of(n)} for n in range(1, 22)]
    for i, ch in item_changes.items():
        items[int(i)].update(ch)
    data = INSTRUMENT.model_dump()
    data["attention_checks"] = [c for c in data["attention_checks"] if c["section"] != "values"]
    data["values"].update(scoring_key="pvq21", scale_direction="descending", items=items)
    return Instrument.model_validate(data)


def test_a_user_instrument_scored_with_the_pvq21_key():
    inst = _pvq21_instrument()
    assert item_number("pvq-07", None) == 7
    ratings = pd.DataFrame([{f"pvq-{n}": ("1" if n in (3, 8, 19) else "4") for n in range(1, 22)}], index=["r"])
    centred = score_ratings(ratings, inst, "centred")
    assert len(centred.columns) == 10
    assert centred.loc["r", "universalism"] > 0 > centred.loc["r", "power"]  # 1 = very much like me


def test_key_mismatch_and_missing_numbers_fail_validation():
    # The instrument itself refuses them (load_instrument turns this into one ValignError).
    with pytest.raises(ValidationError, match="pvq-1.*scores item 1 as 'self_direction'"):
        _pvq21_instrument(**{"0": {"value": "power"}})
    with pytest.raises(ValidationError, match="no item number"):
        _pvq21_instrument(**{"0": {"id": "first"}})
    with pytest.raises(ValidationError, match="both have number 2"):
        _pvq21_instrument(**{"0": {"number": 2, "value": "power"}})


def test_scoring_refuses_a_miskeyed_instrument_that_skipped_validation():
    inst = _pvq21_instrument()
    items = list(inst.values.items)
    items[0] = items[0].model_copy(update={"value": "power"})
    miskeyed = inst.model_copy(update={"values": inst.values.model_copy(update={"items": items})})  # model_copy does not validate
    with pytest.raises(ValignError, match=r"pvq-1.*scores item 1 as 'self_direction'; fix its value or its number\.$"):
        resolve_key(miskeyed)
