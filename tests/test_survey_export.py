"""From weighted survey frames to the pipeline's inputs: consensus, constitution, rows, evaluation set."""

import json

import pandas as pd
import pytest

from tests.survey_stats_sim import margins, simulate
from valign.constitution import load_constitution
from valign.survey.analysis import SurveyAnalysis
from valign.survey.export import ExportSettings, export_artifacts
from valign.survey.consensus import ConsensusSettings, consensus_table, polis_consensus
from valign.survey.frames import SurveyFrames
from valign.survey.instrument import load_instrument
from valign.survey.margins import margins_from_dict
from valign.survey.opinion import read_items
from valign.survey.weighting import apply_weights, rake_frames

INST = load_instrument("demo")


def test_polis_formula_by_hand():
    assert polis_consensus([(8, 10), (3, 10)]) == pytest.approx((9 / 12) * (4 / 12))
    assert polis_consensus([(0, 0)]) == pytest.approx(0.5), "an unseen statement is a coin flip"


def _hand_frames():
    """12 respondents, 6 female and 6 male, answering two statements; the population is 50/50, so all weights are 1."""
    sexes = ["female"] * 6 + ["male"] * 6
    resp = pd.DataFrame({"sex": sexes, "age_group": "30-44", "education": "degree", "completed": True, "synthetic": False},
                        index=pd.Index([f"r{i}" for i in range(12)], name="respondent_id"))
    honesty = ["agree"] * 5 + ["disagree"] + ["agree"] * 6          # female 5/6, male 6/6 agree
    both_sides = ["agree"] * 6 + ["disagree"] * 5 + ["pass"]       # female 6/6, male 0/6 agree
    answers = [{"respondent_id": f"r{i}", "item_id": item, "kind": "principle", "choice": c, "strength": None, "text": None, "answered_at": None}
               for item, codes in (("pr-honesty", honesty), ("pr-both-sides", both_sides)) for i, c in enumerate(codes)]
    frames = SurveyFrames(INST, resp, pd.DataFrame(answers))
    margins = margins_from_dict({"id": "half", "source": {"citation": "test"}, "variables": {"sex": {"categories": {"female": 0.5, "male": 0.5}}}})
    return frames, rake_frames(frames, margins)


def test_consensus_table_matches_the_formula():
    frames, result = _hand_frames()
    assert result.weights.round(9).eq(1.0).all()
    analysis = SurveyAnalysis(frames, result, B=60, seed=0)
    table = consensus_table(analysis, ConsensusSettings(by=("sex",), threshold=0.6, min_group_n=1)).set_index("item_id")
    honesty = (6 / 8) * (7 / 8)
    assert table.loc["pr-honesty", "consensus"] == pytest.approx(honesty)
    assert table.loc["pr-honesty", "consensus_gm"] == pytest.approx(honesty ** 0.5)
    assert table.loc["pr-honesty", "agree"] == pytest.approx(11 / 12)
    both = (7 / 8) * (1 / 8)
    assert table.loc["pr-both-sides", "consensus"] == pytest.approx(both)
    assert table.loc["pr-both-sides", "verdict"] == "contested", "women all agree, men all disagree"
    assert table.loc["pr-honesty", "consensus_lci"] <= table.loc["pr-honesty", "consensus_gm"] <= table.loc["pr-honesty", "consensus_uci"]
    assert table.loc["pr-both-sides", "groups"]["sex"] == {"female": 1.0, "male": 0.0}
    # Groups of six are below the default reporting size: their shares stay out of the
    # output and cannot call a split; the consensus itself is the same.
    hidden = consensus_table(analysis, ConsensusSettings(by=("sex",))).set_index("item_id")
    assert hidden.loc["pr-both-sides", "groups"]["sex"] == {} and hidden.loc["pr-both-sides", "verdict"] == "none"
    assert hidden.loc["pr-honesty", "consensus"] == pytest.approx(honesty)
    with pytest.raises(Exception, match="between 0.5 and 1"):
        ConsensusSettings(threshold=0.4)


def test_consensus_counts_are_weighted():
    """8 women and 4 men for a 50/50 population: women weigh 0.75, men 1.5 (the weights
    sum to n, so the +1/+2 smoothing keeps its meaning). Unweighted counts would give
    (7/10)·(5/6) and 10/12."""
    sexes = ["female"] * 8 + ["male"] * 4
    resp = pd.DataFrame({"sex": sexes, "age_group": "30-44", "education": "degree", "completed": True, "synthetic": False},
                        index=pd.Index([f"r{i}" for i in range(12)], name="respondent_id"))
    codes = ["agree"] * 6 + ["disagree"] * 2 + ["agree"] * 4          # female 6/8, male 4/4 agree
    answers = [{"respondent_id": f"r{i}", "item_id": "pr-honesty", "kind": "principle", "choice": c, "strength": None, "text": None,
                "answered_at": None} for i, c in enumerate(codes)]
    frames = SurveyFrames(INST, resp, pd.DataFrame(answers))
    half = margins_from_dict({"id": "half", "source": {"citation": "test"}, "variables": {"sex": {"categories": {"female": 0.5, "male": 0.5}}}})
    result = rake_frames(frames, half)
    weights = result.weights.round(9)
    assert set(weights[resp.index[:8]]) == {0.75} and set(weights[resp.index[8:]]) == {1.5}
    table = consensus_table(SurveyAnalysis(frames, result, B=20, seed=0), ConsensusSettings(by=("sex",), min_group_n=1)).set_index("item_id")
    # female: A = 6·0.75 = 4.5 of S = 6; male: A = 4·1.5 = 6 of S = 6.
    assert table.loc["pr-honesty", "consensus"] == pytest.approx((5.5 / 8) * (7 / 8))
    assert table.loc["pr-honesty", "agree"] == pytest.approx(10.5 / 12)


def test_export_round_trip(tmp_path):
    frames = simulate(500, seed=1)
    result = rake_frames(frames, margins())
    summary = export_artifacts(apply_weights(frames, result), result, tmp_path, ExportSettings(B=40, min_group_n=15))
    items = read_items(tmp_path / "eval_items.jsonl")
    value_items = [i for i in items if i.kind == "value"]
    assert len(value_items) == len(INST.values.items) and all(i.ordinal and len(i.options) == 6 for i in value_items)
    assert all(abs(sum(i.distribution) - 1) < 1e-6 for i in items)
    assert all(g.n >= 15 for i in items for g in i.groups.values()), "small groups are left out"
    assert any(key.startswith("age_group=") for key in value_items[0].groups)
    # The constitution loads like any other and every principle points back to its statement.
    c = load_constitution(tmp_path / "constitution.yaml")
    assert all(p.support["statement"].startswith("pr-") and "survey" in p.tags for p in c.principles)
    # DPO rows: both directions of each scenario, weights are sums of survey weights.
    dpo = [json.loads(line) for line in (tmp_path / "dpo.jsonl").read_text().splitlines()]
    assert {r["id"].split(":")[0] for r in dpo} <= {s.id for s in INST.scenarios.items}
    assert all(r["weight"] > 0 and r["chosen"] != r["rejected"] for r in dpo)
    # One direction by hand: Σ weight × strength ÷ 3 over those who chose it.
    weights = apply_weights(frames, result).respondents["weight"]
    sc = INST.scenarios.items[0]
    a = frames.answers[(frames.answers["item_id"] == sc.id) & (frames.answers["choice"] == sc.answers[0].id)]
    expected = float((a["respondent_id"].map(weights).fillna(0) * a["strength"].astype(float).fillna(3) / 3).sum())  # no strength: the strongest
    row = next(r for r in dpo if r["id"] == f"{sc.id}:{sc.answers[0].id}>{sc.answers[1].id}")
    assert row["weight"] == pytest.approx(expected, rel=1e-5) and row["respondents"] == len(a)
    from valign.stages.preference import read_dpo_file

    assert len(read_dpo_file(tmp_path / "dpo.jsonl")) == len(dpo)
    assert summary["respondents"]["weighted"] == 500 and summary["counts"]["eval_items"] == len(items)
    # Nothing identifies a respondent: no respondent ids anywhere in the files.
    text = "".join(p.read_text() for p in tmp_path.iterdir())
    assert not any(f'"{rid}"' in text or f",{rid}," in text for rid in frames.respondents.index)
