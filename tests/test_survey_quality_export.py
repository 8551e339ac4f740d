"""Quality flags on hand-built frames, and the exports (CSV, JSON, SPSS read back with labels)."""

from __future__ import annotations

import json

import pandas as pd
import pyreadstat
import pytest

from valign.survey.data import spss_names, wide_table, write_export
from valign.survey.frames import QUALITY_COLUMNS, SurveyFrames
from valign.survey.instrument import load_instrument
from valign.survey.quality import add_quality, flag_counts

T0 = pd.Timestamp("2026-11-22 10:00", tz="UTC")


def build(respondents: dict[str, dict]) -> SurveyFrames:
    """Frames from {id: {"answers": {item: choice}, "seconds": s, ...}} for the demo instrument."""
    inst = load_instrument("demo")
    rows, answers = [], []
    for rid, spec in respondents.items():
        rows.append({"age_group": spec.get("age", "18-29"), "sex": "female", "education": None, "completed": True, "synthetic": False,
                     "started_at": T0, "finished_at": T0 + pd.Timedelta(minutes=10), "seconds": spec["seconds"]})
        for item, choice in spec["answers"].items():
            kind = inst.item(item).kind if item != "proposal" else "principle"
            strength = 2 if kind == "scenario" else None
            text = "The assistant should be brief." if item == "proposal" else None
            answers.append((rid, item, kind, choice, strength, text, T0))
    resp = pd.DataFrame(rows, index=pd.Index(list(respondents), name="respondent_id"))
    ans = pd.DataFrame(answers, columns=["respondent_id", "item_id", "kind", "choice", "strength", "text", "answered_at"])
    ans["strength"] = ans["strength"].astype("Int64")
    return SurveyFrames(inst, resp, ans)


def clean_answers(**override: str) -> dict[str, str]:
    inst = load_instrument("demo")
    keyed = {i.id: i.keyed for i in inst.social_desirability.items}
    out: dict[str, str] = {}
    n_sd = 0
    for k, item in enumerate(inst.items()):
        if item.kind == "value":
            out[item.id] = str(1 + k % 6)
        elif item.kind == "attention":
            out[item.id] = next(c.expected for c in inst.attention_checks if c.id == item.id)
        elif item.kind == "sd":  # the first three in the keyed direction: a score of one half
            n_sd += 1
            out[item.id] = str(keyed[item.id] == (n_sd <= 3)).lower()
        elif item.kind != "demographic":
            out[item.id] = item.options[0].code
    out.update(override)
    return out


@pytest.fixture()
def frames() -> SurveyFrames:
    inst = load_instrument("demo")
    values = [i.id for i in inst.items() if i.kind == "value"]
    keyed_sd = {i.id: "true" if i.keyed else "false" for i in inst.social_desirability.items}
    return build({
        "clean": {"answers": clean_answers(proposal="proposal"), "seconds": 300.0},
        "straight": {"answers": clean_answers(**{v: "4" for v in values}), "seconds": 300.0},
        "speeder": {"answers": clean_answers(), "seconds": 20.0},
        "inattentive": {"answers": clean_answers(**{"att-values": "6"}), "seconds": 300.0},
        "high_sd": {"answers": clean_answers(**keyed_sd), "seconds": 300.0},
    })


def test_each_check_flags_only_its_respondent(frames):
    r = add_quality(frames).respondents
    assert set(QUALITY_COLUMNS) <= set(r.columns)
    flagged = {col: sorted(r.index[r[col]]) for col in ("flag_attention", "flag_straightlining", "flag_speeding", "flag_social_desirability")}
    assert flagged == {"flag_attention": ["inattentive"], "flag_straightlining": ["straight"], "flag_speeding": ["speeder"], "flag_social_desirability": ["high_sd"]}
    assert r.loc["high_sd", "sd_score"] == 1.0 and r.loc["clean", "sd_score"] == pytest.approx(0.5)
    # the demo's actions: attention → exclude, straight-lining and speeding → down-weight, SD → flag only
    assert list(r.index[r["exclude"]]) == ["inattentive"]
    assert r.loc["straight", "quality_factor"] == 0.5 and r.loc["speeder", "quality_factor"] == 0.5
    assert r.loc["high_sd", "quality_factor"] == 1.0 and r.loc["clean", "quality_factor"] == 1.0
    assert flag_counts(add_quality(frames)) == {"attention": 1, "straightlining": 1, "speeding": 1, "social_desirability": 1, "excluded": 1, "downweighted": 2}


def test_actions_follow_the_instrument(frames):
    inst = frames.instrument.model_copy(update={"quality": frames.instrument.quality.model_copy(update={"social_desirability": "exclude", "attention": "flag"})})
    r = add_quality(SurveyFrames(inst, frames.respondents, frames.answers)).respondents
    assert sorted(r.index[r["exclude"]]) == ["high_sd"]


def test_wide_table_drops_excluded_unless_asked(frames):
    f = add_quality(frames)
    table = wide_table(f)
    assert "inattentive" not in set(table["respondent_id"]) and len(table) == 4
    full = wide_table(f, include_excluded=True)
    assert len(full) == 5
    assert list(full.columns[:4]) == ["respondent_id", "age_group", "sex", "education"]
    assert full.set_index("respondent_id").loc["clean", "sc-diet_strength"] == 2
    assert full.set_index("respondent_id").loc["clean", "proposal"] == "The assistant should be brief."


def test_exports_open_and_carry_labels_and_nothing_else(frames, tmp_path):
    f = add_quality(frames)
    assert write_export(f, tmp_path / "r.csv", include_excluded=True) == 5
    csv = pd.read_csv(tmp_path / "r.csv")
    assert len(csv) == 5 and "v-care-1" in csv.columns
    write_export(f, tmp_path / "r.json")
    rows = json.loads((tmp_path / "r.json").read_text())
    assert len(rows) == 4 and rows[0]["respondent_id"] == "clean" and rows[0]["education"] is None
    for columns in (list(csv.columns), list(rows[0])):
        assert not [c for c in columns if any(w in c.lower() for w in ("token", "resume", "ip_", "address", "agent", "cookie", "invitation"))]
    write_export(f, tmp_path / "r.sav", include_excluded=True)
    df, meta = pyreadstat.read_sav(str(tmp_path / "r.sav"))
    assert len(df) == 5
    assert "v_care_1" in df.columns and "sc_diet_strength" in df.columns
    labels = dict(zip(meta.column_names, meta.column_labels))
    assert labels["v_care_1"].startswith("Looking after the people close")
    assert meta.variable_value_labels["v_care_1"][6.0] == "Very much like me"
    assert meta.variable_value_labels["age_group"][1.0] == "18 to 29"
    assert meta.variable_value_labels["flag_attention"] == {0.0: "No", 1.0: "Yes"}
    assert df.loc[df["respondent_id"] == "inattentive", "flag_attention"].item() == 1.0


def test_spss_names_are_safe_and_unique():
    names = spss_names(["v-care-1", "v_care_1", "18+", "by", "x" * 80])
    assert names["v-care-1"] == "v_care_1" and names["v_care_1"] != "v_care_1" or names["v-care-1"] != names["v_care_1"]
    assert names["18+"] == "v18_" and names["by"] == "by_" and len(names["x" * 80]) <= 64
