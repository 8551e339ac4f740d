"""Converted opinion data in use: the fidelity suite scored per chosen population (countries),
its report section (also in Chromium), and the embedded model answering converted items."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import ScriptedModel
from tests.test_opinions import _goqa_csv
from tests.test_report import CHROMIUM_ARGS
from valign.errors import ValignError
from valign.evals.fidelity import js_distance, score_fidelity
from valign.opinions import convert, restrict
from valign.survey.opinion import write_items


def _evaluate(tmp_path: Path, items: Path, populations: list[str] | None, **more):
    from valign.evals.report import render_report
    from valign.runs import RowLog, StageDir
    from valign.stages.base import ModelPool
    from valign.stages.evaluate import EvaluateConfig, run_evaluation

    base = ScriptedModel("s-base")  # uniform over the options
    tuned = ScriptedModel("s-tuned", choice={"A": 0.2, "B": 0.8, "C": 0.0})
    pool = ModelPool(None)
    pool._models.update({"s-base": base, "s-tuned": tuned})
    cfg = EvaluateConfig(suites=["fidelity"], fidelity={"items": str(items), "populations": populations, **more})
    out = tmp_path / "eval"
    info = run_evaluation(cfg, base="s-base", tuned="s-tuned", judge="s-base", rows=RowLog(out / "rows.jsonl"), models=pool, out_dir=out)
    StageDir(out).finish("fp", {"stage": "evaluate", **info})
    return info, render_report(out)


def _goqa_items(tmp_path: Path) -> Path:
    return write_items(convert(_goqa_csv(tmp_path / "goqa.csv"), "globalopinionqa").items, tmp_path / "goqa.jsonl")


def test_fidelity_per_country_on_globalopinionqa_items(tmp_path):
    info, report = _evaluate(tmp_path, _goqa_items(tmp_path), ["country=Japan"])
    tuned = info["fidelity"]["tuned"]
    assert set(tuned) == {"all", "country=Japan"} and info["fidelity"]["populations"] == ["country=Japan"]
    # By hand: the tuned model answers (0.2, 0.8) on the two-option item and (0.2, 0.8, 0) on the three-option one.
    japan = 1 - (js_distance([0.2, 0.8], [0.2, 0.8]) + js_distance([0.2, 0.8, 0.0], [0.1, 0.2, 0.7])) / 2
    assert tuned["country=Japan"]["nominal_similarity"] == pytest.approx(japan)
    assert tuned["country=Japan"]["representativeness"] is None, "GlobalOpinionQA's options are unordered"
    html = report.read_text()
    section = html.split(">Survey fidelity</h2>")[1].split("</section>")[0]
    assert "Populations compared: country=Japan" in section and "country: Japan" in section
    [alt] = re.findall(r'<img src="data:image/png;base64,[^"]+" alt="([^"]+)"', section)
    assert alt.startswith("Fidelity by country: Japan: base ") and f"tuned {japan:.3f}" in alt


def test_fidelity_compares_several_countries_and_refuses_unknown_ones(tmp_path):
    items = _goqa_items(tmp_path)
    info, _ = _evaluate(tmp_path, items, ["country"])
    assert set(info["fidelity"]["base"]) == {"all", "country=Japan", "country=Peru"}
    # the tuned model (0.2, 0.8) is Japan's answer to the first question: closer to Japan than to Peru
    assert info["fidelity"]["tuned"]["country=Japan"]["fidelity"] > info["fidelity"]["tuned"]["country=Peru"]["fidelity"]
    with pytest.raises(ValignError, match="population 'country=Chile' is in none of the items"):
        _evaluate(tmp_path / "again", items, ["country=Chile"])


@pytest.mark.slow
def test_embedded_model_on_converted_respondent_items(embedded, tmp_path):
    """The real model answers items aggregated from a WVS-layout file, scored per country and group."""
    from tests.test_opinions import CODEBOOK, RESPONDENTS

    RESPONDENTS.to_csv(tmp_path / "wvs.csv", index=False)
    (tmp_path / "cb.yaml").write_text(CODEBOOK)
    items = convert(tmp_path / "wvs.csv", "respondents", codebook=tmp_path / "cb.yaml").items
    result = score_fidelity(embedded, restrict(items, ["country"]))
    assert set(result.summary) == {"all", "country=NZL", "country=JPN"}
    [row] = result.items
    assert sum(row["model"]) == pytest.approx(1.0, abs=1e-4) and len(row["model"]) == 3
    assert 0 <= result.summary["country=JPN"]["representativeness"] <= 1


@pytest.mark.slow
@pytest.mark.browser
def test_population_chart_in_chromium(tmp_path):
    from playwright.sync_api import sync_playwright

    rows = [("Q%d?" % i, "defaultdict(<class 'list'>, {'Japan': [0.2, 0.8], 'Peru': [0.6, 0.4], 'Kenya': [0.5, 0.5]})", "['Yes', 'No']", "GAS")
            for i in range(3)]
    pd.DataFrame(rows, columns=["question", "selections", "options", "source"]).to_csv(tmp_path / "goqa.csv", index=False)
    items = write_items(convert(tmp_path / "goqa.csv", "globalopinionqa").items, tmp_path / "goqa.jsonl")
    # the run's "survey" is the items themselves; the reference population is Peru's
    _, report = _evaluate(tmp_path, items, ["country"], reference=str(items), reference_population="country=Peru")
    errors: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(report.resolve().as_uri())
            page.wait_for_load_state("load")
            section = page.locator("section", has=page.locator("h2", has_text="Survey fidelity"))
            charts = section.locator("img").evaluate_all("imgs => imgs.map(i => [i.naturalWidth, i.naturalHeight, i.alt])")
            rows_text = section.locator("table").first.locator("tbody tr th").all_inner_texts()
            beside = section.locator("table", has=page.locator("caption", has_text="this survey and country=Peru"))
            beside_rows = beside.locator("tbody tr").evaluate_all("trs => trs.map(t => [t.offsetHeight, t.cells[2].innerText, t.cells[3].innerText])")
        finally:
            browser.close()
    assert errors == []
    [(width, height, alt)] = charts
    assert width > 300 and height > 100, "the chart decoded and has a size"
    assert alt.startswith("Fidelity by country: Japan: base") and "Peru: base" in alt and "Kenya: base" in alt
    assert rows_text == ["everyone", "country: Japan", "country: Peru", "country: Kenya"]
    # the survey's distribution (here the mean of the three countries) beside Peru's, on each of the 3 questions
    assert [r[1:] for r in beside_rows] == [["0.43 · 0.57", "0.60 · 0.40"]] * 3 and all(h > 10 for h, *_ in beside_rows)


# ---------------------------------------------------------------- survey_sft towards converted items

COUNTRIES = {"Japan": [0.95, 0.05], "Peru": [0.75, 0.25], "Kenya": [0.85, 0.15]}


def _goqa_training_items(tmp_path: Path, n: int = 6) -> Path:
    rows = [(f"Statement {i}: people should be free to choose.", "defaultdict(<class 'list'>, " + repr(COUNTRIES) + ")", "['Agree', 'Disagree']", "WVS")
            for i in range(n)]
    pd.DataFrame(rows, columns=["question", "selections", "options", "source"]).to_csv(tmp_path / "train.csv", index=False)
    return write_items(convert(tmp_path / "train.csv", "globalopinionqa").items, tmp_path / "train.jsonl")


def test_survey_sft_targets_a_population_or_groups(tmp_path):
    from valign.stages.survey_sft import SurveySFTConfig, targets
    from valign.survey.opinion import read_items

    items = read_items(_goqa_training_items(tmp_path))
    train, held, groups = targets(items, SurveySFTConfig(kinds=["opinion"], population="country=Peru", holdout=0.34), seed=0)
    assert len(train) == 4 and len(held) == 2 and groups == [] and all(i.distribution == [0.75, 0.25] for i in train + held)
    train, held, groups = targets(items, SurveySFTConfig(kinds=["opinion"], groups=["country"], holdout_groups=["country=Kenya"], holdout=0.34), seed=0)
    assert {i.id.split("@")[1] for i in train + held} == {"country=Japan", "country=Peru"} and len(train) == 8 and len(held) == 4
    assert len(groups) == 6 and all(i.id.endswith("@country=Kenya") and i.distribution == [0.85, 0.15] for i in groups)
    assert train[0].instructions.startswith("Answer as a typical person whose country is ")
    with pytest.raises(ValueError, match="holdout_groups needs groups"):
        SurveySFTConfig(holdout_groups=["country=Kenya"])
    with pytest.raises(ValignError, match="population 'country=Chile' is in none of the items"):
        targets(items, SurveySFTConfig(kinds=["opinion"], population="country=Chile"), seed=0)


@pytest.mark.slow
@pytest.mark.model
def test_survey_sft_trains_per_country_with_a_held_out_country(tmp_path):
    from tests.conftest import stage_context
    from valign.config import RunConfig
    from valign.runs import StageDir
    from valign.stages.survey_sft import SurveySFTConfig, SurveySFTStage

    path = _goqa_training_items(tmp_path)
    cfg = SurveySFTConfig(items=str(path), kinds=["opinion"], groups=["country"], holdout_groups=["country=Kenya"], holdout=0.34,
                          epochs=3, batch_size=4, learning_rate=1e-3)
    run_config = RunConfig(name="t", model="embedded", seed=0, stages=["survey_sft"], survey_sft=cfg)
    sdir = StageDir(tmp_path / "01-survey_sft")
    ctx = stage_context(sdir, run_config, cfg)
    SurveySFTStage().run(ctx)
    fid = ctx.info["fidelity"]
    assert (fid["train"]["items"], fid["held_out"]["items"], fid["held_out_group"]["items"]) == (8, 4, 6)
    assert fid["train"]["distance_after"] < fid["train"]["distance_before"] - 0.05, fid
    rows = list(ctx.rows)
    assert {r["split"] for r in rows} == {"train", "held_out", "held_out_group"}
    assert all(r["id"].endswith("@country=Kenya") for r in rows if r["split"] == "held_out_group")
    assert all(abs(sum(r["after"]) - 1) < 1e-4 for r in rows)
    # each row's target is its own country's distribution
    assert all(r["population"] == pytest.approx(COUNTRIES[r["id"].rsplit("=", 1)[1]]) for r in rows)


# ---------------------------------------------------------------- one's own survey beside a national one


def test_report_sets_the_survey_beside_the_reference_population(tmp_path):
    from tests.test_opinions import CODEBOOK, RESPONDENTS
    from valign.evals.fidelity import wasserstein_ordinal
    from valign.survey.opinion import OpinionItem

    RESPONDENTS.to_csv(tmp_path / "wvs.csv", index=False)
    (tmp_path / "cb.yaml").write_text(CODEBOOK)
    reference = write_items(convert(tmp_path / "wvs.csv", "respondents", codebook=tmp_path / "cb.yaml").items, tmp_path / "wvs.jsonl")
    ours = write_items([
        # as `valign survey export` writes them: our ids and option order; the question text matches WVS's Q1
        OpinionItem(id="competition", kind="value", question="Competition is  good.", options=["Agree", "Neither", "Disagree"], ordinal=True,
                    distribution=[0.5, 0.3, 0.2], n=280),
        OpinionItem(id="other", kind="value", question="Something WVS did not ask?", options=["Yes", "No"], distribution=[0.5, 0.5], n=280),
        OpinionItem(id="family", kind="value", question="Family matters.", options=["Yes", "No", "Maybe"], distribution=[0.6, 0.3, 0.1], n=280),
    ], tmp_path / "ours.jsonl")
    info, report = _evaluate(tmp_path, ours, None, reference=str(reference), reference_population="country=NZL", reference_match={"family": "Q1"})
    comparison = info["fidelity"]["comparison"]
    [row] = comparison["rows"]
    assert (row["id"], row["reference_id"]) == ("competition", "Q1")
    assert row["reference"] == pytest.approx([0.25, 0.5, 0.25]) and row["reference_n"] == 3  # NZL by hand (test_opinions.EXPECTED)
    assert row["distance"] == pytest.approx(wasserstein_ordinal([0.5, 0.3, 0.2], [0.25, 0.5, 0.25]))
    assert comparison["skipped"] == {"different options": 1}, "family → Q1 by the mapping, but its options differ: left out, not guessed"
    section = report.read_text().split(">Survey fidelity</h2>")[1].split("</section>")[0]
    assert "This survey beside country: NZL" in section and "0.50 · 0.30 · 0.20" in section and "0.25 · 0.50 · 0.25" in section
    assert "1 left out: different options" in section
    with pytest.raises(ValignError, match="population 'country=FRA' is in none of the items"):
        _evaluate(tmp_path / "again", ours, None, reference=str(reference), reference_population="country=FRA")


def test_cli_compare(tmp_path, monkeypatch):
    from tests.cli_helpers import valign_cli
    from valign.survey.opinion import OpinionItem

    goqa = _goqa_items(tmp_path)
    ours = write_items([OpinionItem(id="econ", question="Is the economy good?", options=["Bad", "Good"], distribution=[0.7, 0.3], n=100)], tmp_path / "ours.jsonl")
    code, out, err = valign_cli(["opinions", "compare", str(ours), str(goqa), "--population", "country=Peru"], monkeypatch)
    assert code == 0, err
    # Peru's (Good 0.62, Bad 0.38) put in our order (Bad, Good)
    assert "1 question(s) in both; reference population country=Peru" in out and "ours      0.70 0.30" in out and "reference 0.38 0.62" in out
    assert f"distance {js_distance([0.7, 0.3], [0.38, 0.62]):.3f}" in out


def test_inspect_task_takes_populations(tmp_path):
    from valign.evals.fidelity_task import fidelity

    task = fidelity(items=str(_goqa_items(tmp_path)), populations="country=Peru")
    groups = [s.metadata["item"]["groups"] for s in task.dataset]
    assert [list(g) for g in groups] == [["country=Peru"], ["country=Peru"]] and groups[0]["country=Peru"]["n"] is None


def test_new_settings_leave_earlier_fingerprints_alone():
    """Runs from before the population settings existed keep their fingerprints: the settings count only when set."""
    from valign.config import RunConfig
    from valign.evals.fidelity import FidelityConfig
    from valign.stages.survey_sft import SurveySFTConfig, SurveySFTStage

    assert set(FidelityConfig().model_dump()) == {"items", "kinds"}
    assert FidelityConfig(populations=["country"], reference="r.jsonl").model_dump()["populations"] == ["country"]
    describe = lambda cfg: SurveySFTStage().describe(RunConfig(name="t", model="embedded", stages=["survey_sft"], survey_sft=cfg))["config"]  # noqa: E731
    assert not {"population", "groups", "holdout_groups"} & set(describe(SurveySFTConfig()))
    assert describe(SurveySFTConfig(groups=["country"]))["groups"] == ["country"]


def test_preflight_checks_populations_and_the_reference_before_models_load(tmp_path):
    from valign.evals.fidelity import SUITE, FidelityConfig

    items = _goqa_items(tmp_path)
    SUITE.preflight(FidelityConfig(items=str(items), populations=["country"], reference=str(items), reference_population="country=Peru"))
    with pytest.raises(ValignError, match="population 'country=Chile' is in none of the items"):
        SUITE.preflight(FidelityConfig(items=str(items), populations=["country=Chile"]))
    with pytest.raises(ValignError, match="population 'sex=Female' is in none of the items"):
        SUITE.preflight(FidelityConfig(reference=str(items), reference_population="sex=Female"))
    with pytest.raises(ValignError, match="does not exist"):
        SUITE.preflight(FidelityConfig(reference=str(tmp_path / "none.jsonl")))
