"""Raking with svy: margins reproduced, trimming, missing answers, quality, diagnostics, margins files."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from tests.survey_stats_sim import INSTRUMENT, POP, margins, simulate
from valign.errors import ValignError
from valign.survey.frames import SurveyFrames
from valign.survey.margins import load_margins, margins_from_dict, shipped_margins
from valign.survey.weighting import MISSING, apply_weights, asmd, effective_n, kish_deff, rake_frames


def _weighted_shares(frames: SurveyFrames, w: pd.Series, var: str) -> dict[str, float]:
    col = frames.respondents[var]
    ok = w.notna() & col.notna()
    return (w[ok].groupby(col[ok]).sum() / w[ok].sum()).to_dict()


@pytest.fixture(scope="module")
def sample() -> SurveyFrames:
    return simulate(1500, seed=11)


def test_raking_reproduces_every_margin(sample):
    result = rake_frames(sample, margins())
    for var, shares in POP.items():
        got = _weighted_shares(sample, result.weights, var)
        for cat, share in shares.items():
            assert got[cat] == pytest.approx(share, abs=1e-6), (var, cat)
    assert result.weights.sum() == pytest.approx(len(sample.respondents))  # scaled to sum to n
    assert (result.diagnostics["after"] - result.diagnostics["population"]).abs().max() < 1e-6
    assert result.diagnostics["asmd_before"].max() > 0.2  # the sample was biased
    assert result.summary["deff_after"] > 1.2


def test_trimming_keeps_margins_and_bounds(sample):
    plain = rake_frames(sample, margins())
    ratio = plain.weights / plain.weights.mean()
    low, high = 0.3, 0.6 * float(ratio.max())  # a bound that binds
    result = rake_frames(sample, margins(), trim=(low, high))
    r = result.weights / result.weights.mean()
    # svy's trim-rake cycle ends with a rake: margins hold to the raking tolerance and the
    # bounds to its trimming tolerance (1e-4 relative)
    assert r.max() <= high * (1 + 1e-4) and r.min() >= low * (1 - 1e-4)
    for var, shares in POP.items():
        got = _weighted_shares(sample, result.weights, var)
        for cat, share in shares.items():
            assert got[cat] == pytest.approx(share, abs=1e-6)
    assert result.summary["deff_after"] < plain.summary["deff_after"]


def test_impossible_trim_is_a_clear_error(sample):
    with pytest.raises(ValignError, match="loosen the trim bounds"):
        rake_frames(sample, margins(), trim=(0.9, 1.1))
    with pytest.raises(ValignError, match="low < 1 < high"):
        rake_frames(sample, margins(), trim=(2, 3))


def test_kish_deff_and_ess_by_hand():
    w = [1.0, 1.0, 2.0, 4.0]  # n = 4, Σw = 8, Σw² = 22
    assert kish_deff(w) == pytest.approx(4 * 22 / 64)
    assert effective_n(w) == pytest.approx(64 / 22)
    assert kish_deff([3, 3, 3]) == 1 and effective_n([3, 3, 3]) == 3


def test_asmd_and_diagnostics_by_hand():
    # 3 women, 1 man; population 50/50: before p=0.75 → ASMD |0.75-0.5|/0.5 = 0.5
    assert asmd(0.75, 0.5) == pytest.approx(0.5)
    assert asmd(0.2, 0.4) == pytest.approx(0.2 / np.sqrt(0.24))
    resp = pd.DataFrame({"sex": ["female"] * 3 + ["male"]}, index=pd.Index(list("abcd"), name="respondent_id"))
    m = margins_from_dict({"id": "t", "source": {"citation": "t"}, "variables": {"sex": {"categories": {"female": 100, "male": 100}}}})
    r = rake_frames(SurveyFrames(INSTRUMENT, resp, SurveyFrames.empty(INSTRUMENT).answers), m)
    np.testing.assert_allclose(r.weights, [2 / 3, 2 / 3, 2 / 3, 2])
    d = r.diagnostics.set_index("category")
    assert d.loc["female", "before"] == 0.75 and d.loc["female", "asmd_before"] == pytest.approx(0.5)
    assert d.loc["female", "asmd_after"] == pytest.approx(0, abs=1e-9)
    # weights 2/3,2/3,2/3,2: deff = 4·(3·4/9 + 4)/16 = 4/3
    assert r.summary["deff_after"] == pytest.approx(4 / 3) and r.summary["ess_after"] == pytest.approx(3)
    assert r.summary["weight_ratio"] == pytest.approx(3)


def _frames_with(sample: SurveyFrames, **cols) -> SurveyFrames:
    resp = sample.respondents.copy()
    for k, v in cols.items():
        resp[k] = v
    return sample.with_respondents(resp)


def test_missing_answers_policies(sample):
    resp = sample.respondents.copy()
    resp.iloc[:100, resp.columns.get_loc("education")] = None
    frames = sample.with_respondents(resp)
    own = rake_frames(frames, margins(), missing="own_category")
    assert own.weights.notna().all()
    got = _weighted_shares(frames, own.weights, "education")  # among those who answered
    for cat, share in POP["education"].items():
        assert got[cat] == pytest.approx(share, abs=1e-6)
    assert own.spec.targets["education"][MISSING] == pytest.approx(100 / 1500)
    dropped = rake_frames(frames, margins(), missing="drop")
    assert dropped.weights.isna().sum() == 100 and dropped.summary["n_dropped_missing"] == 100
    imputed = rake_frames(frames, margins(), missing="impute_mode")
    assert imputed.weights.notna().all() and any("imputed as 'degree'" in n for n in imputed.notes)
    with pytest.raises(ValignError, match="not a policy"):
        rake_frames(frames, margins(), missing="guess")


def test_excluded_get_no_weight_and_quality_factor_multiplies(sample):
    exclude = np.zeros(len(sample.respondents), dtype=bool)
    exclude[:50] = True
    qf = np.ones(len(sample.respondents))
    qf[50:100] = 0.5
    frames = _frames_with(sample, exclude=exclude, quality_factor=qf)
    result = rake_frames(frames, margins())
    w = result.weights
    assert w.iloc[:50].isna().all() and result.summary["n_excluded"] == 50
    assert w.sum() == pytest.approx(1450)  # renormalised to the number weighted
    base = rake_frames(_frames_with(sample, exclude=exclude), margins()).weights
    ratio = (w / base).iloc[50:]
    assert ratio.iloc[:50].mean() == pytest.approx(0.5 * ratio.iloc[50:].mean())
    weighted = apply_weights(frames, result)
    pd.testing.assert_series_equal(weighted.respondents["weight"], w, check_names=False)


def test_report_and_json(sample):
    result = rake_frames(sample, margins(), trim=(0.2, 8))
    text = result.report()
    assert "Kish design effect" in text and "effective sample size" in text and "(mean ASMD)" in text
    data = json.loads(result.to_json())
    assert data["settings"]["trim"] == [0.2, 8.0]
    assert {"deff_before", "deff_after", "ess_before", "ess_after"} <= set(data["summary"])
    assert len(data["diagnostics"]) == 9


# ── margins files ────────────────────────────────────────────────────────────


def _m(**variables):
    return margins_from_dict({"id": "t", "source": {"citation": "t"}, "variables": variables})


def test_margins_validation_errors(sample):
    with pytest.raises(ValignError, match="sum to 0.9000, not 1"):
        _m(sex={"categories": {"female": 0.5, "male": 0.4}})
    assert _m(sex={"categories": {"female": 0.505, "male": 0.49}}).variables["sex"].shares["female"] == pytest.approx(0.505 / 0.995)
    with pytest.raises(ValignError, match="'source' with at least a 'citation'"):
        margins_from_dict({"id": "t", "variables": {"sex": {"categories": {"f": 1, "m": 1}}}})
    with pytest.raises(ValignError, match="not one of its categories"):
        _m(sex={"categories": {"female": 100, "male": 100}, "map": {"f": "woman"}})
    # a category in the data but not in the margins: named, with the fix
    bad = _m(age_group={"categories": {"18-29": 10, "30-44": 10, "45+": 20}})
    with pytest.raises(ValignError, match=r"age_group = '45-64'.*map it to one of .*variables.age_group.map"):
        rake_frames(sample, bad)
    # a margins variable the respondents lack
    with pytest.raises(ValignError, match="no such column.*margin: region"):
        rake_frames(sample, _m(region={"categories": {"north": 10, "south": 10}}))
    # a census category nobody in the sample is in
    empty = _m(sex={"categories": {"female": 100, "male": 100, "other": 2}})
    with pytest.raises(ValignError, match="sex = 'other'.*collapse"):
        rake_frames(sample, empty)


def test_map_collapses_codes(sample):
    m = _m(age_group={"categories": {"under-45": 0.45, "45+": 0.55}, "map": {"18-29": "under-45", "30-44": "under-45", "45-64": "45+", "65+": "45+"}})
    result = rake_frames(sample, m)
    young = sample.respondents["age_group"].isin(["18-29", "30-44"])
    assert result.weights[young].sum() / result.weights.sum() == pytest.approx(0.45, abs=1e-6)


def test_shipped_margins_fit_the_demo_instrument():
    assert "nz-census-2023" in shipped_margins()
    m = load_margins("nz-census-2023")
    assert m.source["citation"] and m.source["url"] and m.source["universe"]
    for q in INSTRUMENT.demographics:
        var = m.variables[q.margin]
        assert {var.category(o.code) for o in q.options} == set(var.shares)
        assert sum(var.shares.values()) == pytest.approx(1)


