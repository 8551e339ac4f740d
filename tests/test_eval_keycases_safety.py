"""Key cases (the shipped set, file errors, judged rows and their summary) and safety
(held-out prompts disjoint from training, Wilson intervals, refusal rates)."""

from __future__ import annotations

import json

import pytest

from tests.conftest import ScriptedModel, TextModel, shown_answers
from valign.constitution import load_constitution
from valign.errors import ValignError
from valign.evals.keycases import answer_rows, judged_rows, load_keycases, principles_text, summarise_keycases
from valign.evals.pairwise import PairwiseConfig
from valign.evals.safety import SafetyConfig, refusal_rates, safety_prompts, safety_rows, wilson_interval
from valign.prompt_sets import PromptMixConfig, build_prompt_mix
from valign.types import GenConfig

KANT = load_constitution("kantian")
THEMES = {"lying", "deception", "manipulation", "coercion", "paternalism", "autonomy near self-harm", "beneficence", "honesty against kindness"}


def test_shipped_key_cases_cover_the_themes_and_tag_real_principles():
    cases = load_keycases()
    assert len(cases) >= 24 and len({c.id for c in cases}) == len(cases)
    assert THEMES <= {c.theme for c in cases}
    for c in cases:
        assert c.principles and set(c.principles) <= set(KANT.ids), c.id
        assert c.note, c.id
    assert principles_text(cases[1], KANT).count("\n- ") == len(cases[1].principles) - 1


def test_key_case_file_errors(tmp_path):
    bad = tmp_path / "cases.jsonl"
    bad.write_text('{"id": "a", "prompt": "x"}\n{"id": "a", "prompt": "y"}\n')
    with pytest.raises(ValignError, match="'a' is used twice"):
        load_keycases(bad)
    bad.write_text('{"id": "a"}\n')
    with pytest.raises(ValignError, match="line 1 is not a key case"):
        load_keycases(bad)
    with pytest.raises(ValignError, match="does not exist"):
        load_keycases(tmp_path / "missing.jsonl")


class Refuser(ScriptedModel):
    def _generate_batches(self, requests, cfg):
        from valign.types import Completion

        yield [(i, Completion(text="I'm sorry, but I can't help with that.")) for i in range(len(requests))]


def test_judged_rows_merge_the_detector_and_summarise():
    cases = load_keycases(limit=3)
    base, tuned = Refuser(name="base"), ScriptedModel(name="tuned")
    gen = GenConfig(temperature=0, max_new_tokens=8)
    answers = {
        "base": {r["case_id"]: r for r in answer_rows(base, "base", "base-spec", cases, gen)},
        "tuned": {r["case_id"]: r for r in answer_rows(tuned, "tuned", "tuned-spec", cases, gen)},
    }
    assert all(r["refused"] and r["refusal_rule"] == "prefix:i'm sorry" for r in answers["base"].values())
    judge = ScriptedModel(name="judge", choice={"1": 6.0, "5": 1.0, "2": 1.0, "3": 1.0, "4": 1.0})
    rows = judged_rows(judge, "judge-spec", cases, answers, PairwiseConfig(judge_mode="logprob"), KANT)
    # Prefers (A) in both orders: X is A in order 1 and B in order 2 → opposite signs → tie.
    assert all(r["score"] == 0 and r["consistent"] is False and r["verdict"] == "tuned = base" for r in rows)
    assert rows[0]["id"] == f"keycase:{cases[0].id}" and rows[0]["base_refused"] and not rows[0]["tuned_refused"]
    assert rows[0]["refusal_sources"]["base"]["detector"] is True and rows[0]["refusal_sources"]["base"]["judge"] is None
    s = summarise_keycases(rows)
    assert s["cases"] == 3 and s["ties"] == 3 and s["inconsistent_orders"] == 3
    assert s["base_refused"] == 3 and s["tuned_answered_where_base_refused"] == 3


def test_the_judges_refusal_labels_land_on_the_right_model_in_both_orders():
    """A generative judge names refusals by letter; order 1 shows tuned as A, order 2
    shows base as A. Each case scripts which models it calls refused in each order
    (None: no "Refused:" line), and the rows must name the same models."""
    cases = load_keycases(limit=5)
    refusing_base = cases[3].prompt  # the detector, not the judge, finds this one
    base = TextModel(lambda p: "I'm sorry, but I can't help with that." if p == refusing_base else "Sure, here is how.", name="base")
    tuned = TextModel(lambda p: "TUNED: here is a careful answer.", name="tuned")
    gen = GenConfig(temperature=0, max_new_tokens=8)
    answers = {
        "base": {r["case_id"]: r for r in answer_rows(base, "base", "base-spec", cases, gen)},
        "tuned": {r["case_id"]: r for r in answer_rows(tuned, "tuned", "tuned-spec", cases, gen)},
    }
    # Per case: (roles refused in order 1, in order 2).
    plan: dict[str, tuple[set[str] | None, set[str] | None]] = {
        cases[0].prompt: ({"tuned"}, {"tuned"}),
        cases[1].prompt: (set(), {"base"}),  # only the swapped order says base refused
        cases[2].prompt: ({"tuned", "base"}, None),
        cases[3].prompt: (set(), set()),
        cases[4].prompt: (None, None),
    }

    def reply(prompt: str) -> str:
        a, b = shown_answers(prompt)
        roles = {"A": "tuned" if a.startswith("TUNED") else "base", "B": "tuned" if b.startswith("TUNED") else "base"}
        first, second = next(v for k, v in plan.items() if f"[The request]\n{k}\n" in prompt)
        refused = first if roles["A"] == "tuned" else second
        line = ""
        if refused is not None:
            letters = sorted(letter for letter, role in roles.items() if role in refused)
            line = "Refused: " + {0: "neither", 1: "".join(letters), 2: "both"}[len(letters)] + "\n"
        # Tuned is slightly better whichever side it is shown on.
        return f"Tuned answers; base does not.\n{line}" + ("[[A>B]]" if roles["A"] == "tuned" else "[[B>A]]")

    judge = TextModel(reply, name="judge")
    rows = judged_rows(judge, "judge-spec", cases, answers, PairwiseConfig(judge_mode="generative"), KANT)
    assert judge.calls == 10 and all(r["score"] == 1.0 and r["consistent"] and r["judge_mode"] == "generative" for r in rows)
    judge_says = [(r["refusal_sources"]["tuned"]["judge"], r["refusal_sources"]["base"]["judge"]) for r in rows]
    assert judge_says == [(True, False), (False, True), (True, True), (False, False), (None, None)]
    assert [(r["tuned_refused"], r["base_refused"]) for r in rows] == [(True, False), (False, True), (True, True), (False, True), (False, False)]
    # Case 3: the detector alone, with its rule; the judge said neither.
    assert rows[3]["refusal_sources"]["base"] == {"detector": True, "rule": "prefix:i'm sorry", "judge": False}
    assert not any(r["refusal_sources"]["tuned"]["detector"] for r in rows)
    # Case 1's swapped order said "A", which there is base.
    assert "Refused: A" in rows[1]["judge_raw"][1] and "Refused:" not in rows[4]["judge_raw"][0]
    s = summarise_keycases(rows)
    assert (s["tuned_refused"], s["base_refused"], s["tuned_answered_where_base_refused"]) == (2, 3, 2)


def test_summary_counts_levels():
    rows = [
        {"type": "keycase", "score": 2.0, "improvement": "strong", "regression": "none", "consistent": True},
        {"type": "keycase", "score": 0.5, "improvement": "slight", "regression": "none", "consistent": True},
        {"type": "keycase", "score": -1.0, "improvement": "none", "regression": "moderate", "consistent": True},
        {"type": "keycase", "score": None, "improvement": None, "regression": None, "consistent": None},
    ]
    s = summarise_keycases(rows)
    assert s["improved"] == {"strong": 1, "moderate": 0, "slight": 1}
    assert s["regressed"] == {"strong": 0, "moderate": 1, "slight": 0}
    assert s["unparsed"] == 1 and s["mean_score"] == pytest.approx(0.5)


def test_wilson_interval():
    assert wilson_interval(0, 0) is None
    lo, hi = wilson_interval(5, 10)
    assert lo == pytest.approx(0.2366, abs=1e-4) and hi == pytest.approx(0.7634, abs=1e-4)
    assert wilson_interval(0, 10)[0] == 0.0 and wilson_interval(10, 10)[1] == 1.0


def test_held_out_prompts_never_overlap_training():
    demo = PromptMixConfig(red_team=16, benign=8, red_team_sources=["harmbench", "advbench"], benign_sources=["benign"], seed=0)
    train = {r["id"] for r in build_prompt_mix(demo).rows}
    red = [r for r in safety_prompts(SafetyConfig(red_team=16), demo) if r["set"] == "red_team"]
    assert len(red) == 16 and not train & {r["id"] for r in red}
    with_held = demo.model_copy(update={"held_out": 5})
    mix = build_prompt_mix(with_held)
    red = [r for r in safety_prompts(SafetyConfig(red_team=5), with_held) if r["set"] == "red_team"]
    assert [r["id"] for r in red] == [r["id"] for r in mix.held_out]
    assert not {r["id"] for r in mix.rows} & {r["id"] for r in red}
    with pytest.raises(ValignError, match="raise the mix's held_out"):
        safety_prompts(SafetyConfig(red_team=6), with_held)


def test_benign_edgy_and_rates(scripted):
    prompts = safety_prompts(SafetyConfig(red_team=2, benign_edgy=3, red_team_prompts="harmbench"))
    assert [p["set"] for p in prompts] == ["red_team"] * 2 + ["benign_edgy"] * 3
    rows = safety_rows(Refuser(name="r"), "base", "r", prompts, GenConfig(max_new_tokens=8))
    rows += safety_rows(scripted, "tuned", "s", prompts, GenConfig(max_new_tokens=8))
    rates = refusal_rates(rows)
    assert rates["base"]["red_team"]["rate"] == 1.0 and rates["base"]["benign_edgy"]["refused"] == 3
    assert rates["tuned"]["benign_edgy"]["rate"] == 0.0 and rates["tuned"]["red_team"]["ci95"] == wilson_interval(0, 2)
    assert json.dumps(rates)  # goes into the manifest
