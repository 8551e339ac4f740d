"""Survey fidelity metrics against hand-computed values, and scoring a model on items."""

import math
import re

import pytest

from tests.conftest import ScriptedModel
from valign.evals.fidelity import js_distance, score_fidelity, wasserstein_ordinal
from valign.survey.opinion import OpinionItem, opinion_prompt, read_items, write_items

LIKERT = ["1", "2", "3", "4"]


def test_wasserstein_by_hand():
    # CDFs (0.5, 1, 1) and (0, 0.5, 1): |0.5| + |0.5| = 1 position of mass moved, over N−1 = 2.
    assert wasserstein_ordinal([0.5, 0.5, 0.0], [0.0, 0.5, 0.5]) == pytest.approx(0.5)
    assert wasserstein_ordinal([1, 0, 0, 0], [0, 0, 0, 1]) == pytest.approx(1.0)
    assert wasserstein_ordinal([0.25] * 4, [0.25] * 4) == 0.0
    # Moving 0.2 of the mass one step on a 4-point scale: 0.2 / 3.
    assert wasserstein_ordinal([0.2, 0.8, 0, 0], [0, 1, 0, 0]) == pytest.approx(0.2 / 3)


def test_js_distance_by_hand():
    p, q = [0.5, 0.5], [1.0, 0.0]
    m = [0.75, 0.25]
    kl_p = 0.5 * math.log2(0.5 / 0.75) + 0.5 * math.log2(0.5 / 0.25)
    kl_q = 1.0 * math.log2(1.0 / 0.75)
    assert js_distance(p, q) == pytest.approx(math.sqrt((kl_p + kl_q) / 2))
    assert js_distance([1, 0], [0, 1]) == pytest.approx(1.0)
    assert js_distance(p, p) == pytest.approx(0.0)


def _items():
    return [
        OpinionItem(id="likert", kind="value", question="Like you?", options=LIKERT, ordinal=True,
                    distribution=[0.1, 0.2, 0.3, 0.4], n=50,
                    groups={"sex=female": {"distribution": [0.25, 0.25, 0.25, 0.25], "n": 20},
                            "sex=male": {"distribution": [0.0, 0.0, 0.0, 1.0], "n": 30}}),
        OpinionItem(id="agree", kind="principle", question="Agree?", options=["Agree", "Disagree"],
                    distribution=[0.5, 0.5], n=50, groups={"sex=female": {"distribution": [1.0, 0.0], "n": 20}}),
    ]


def test_score_fidelity_overall_and_per_group():
    model = ScriptedModel(choice={"A": 1.0, "B": 1.0, "C": 1.0, "D": 1.0})  # uniform over every option
    result = score_fidelity(model, _items())
    likert = wasserstein_ordinal([0.25] * 4, [0.1, 0.2, 0.3, 0.4])
    assert result.summary["all"]["representativeness"] == pytest.approx(1 - likert)
    assert result.summary["all"]["nominal_similarity"] == pytest.approx(1.0)
    assert result.summary["all"]["fidelity"] == pytest.approx(1 - likert / 2)
    assert result.summary["sex=female"]["representativeness"] == pytest.approx(1.0)  # uniform matches uniform
    assert result.summary["sex=male"]["representativeness"] == pytest.approx(1 - wasserstein_ordinal([0.25] * 4, [0, 0, 0, 1]))
    assert result.summary["sex=female"]["nominal_similarity"] == pytest.approx(1 - js_distance([0.5, 0.5], [1, 0]))
    assert result.items[0]["model"] == [0.25] * 4 and result.items[1]["groups"] == {"sex=female": pytest.approx(js_distance([0.5, 0.5], [1, 0]))}


def test_letters_map_to_options_in_order():
    """A skewed model: option A gets 0.7, B 0.2, C 0.1, D nothing — in the options' order."""
    model = ScriptedModel(choice={"A": 0.7, "B": 0.2, "C": 0.1, "D": 0.0})
    result = score_fidelity(model, _items()[:1])
    assert result.items[0]["model"] == pytest.approx([0.7, 0.2, 0.1, 0.0])
    assert result.items[0]["distance"] == pytest.approx(wasserstein_ordinal([0.7, 0.2, 0.1, 0.0], [0.1, 0.2, 0.3, 0.4]))


def test_fidelity_suite_resumes_and_reaches_the_report(tmp_path):
    from valign.evals.report import render_report
    from valign.runs import RowLog, StageDir
    from valign.stages.base import ModelPool
    from valign.stages.evaluate import EvaluateConfig, run_evaluation

    items = write_items(_items(), tmp_path / "items.jsonl")
    base, tuned = ScriptedModel("s-base"), ScriptedModel("s-tuned", choice={"A": 0.1, "B": 0.2, "C": 0.3, "D": 0.4})
    pool = ModelPool(None)
    pool._models.update({"s-base": base, "s-tuned": tuned})
    cfg = EvaluateConfig(suites=["fidelity"], fidelity={"items": str(items)})
    out = tmp_path / "eval"
    run = lambda: run_evaluation(cfg, base="s-base", tuned="s-tuned", judge="s-base", rows=RowLog(out / "rows.jsonl"), models=pool, out_dir=out)  # noqa: E731
    info = run()
    assert info["fidelity"]["tuned"]["all"]["representativeness"] == pytest.approx(1.0), "the tuned model matches the population exactly"
    calls = base.choice_calls + tuned.choice_calls
    assert run()["fidelity"] == info["fidelity"] and base.choice_calls + tuned.choice_calls == calls, "a resumed suite asks nothing again"
    StageDir(out).finish("fp", {"stage": "evaluate", **info})
    html = render_report(out).read_text()
    assert ">Survey fidelity</h2>" in html and "sex: female" in html and "data:image/png;base64," in html
    charts = re.findall(r'<img src="data:image/png;base64,[^"]+" alt="([^"]+)"', html.split(">Survey fidelity</h2>")[1].split("</section>")[0])
    assert [a.split(":")[0] for a in charts] == ["Representativeness by sex"], "one chart per grouping variable"
    # By hand (uniform base, tuned 0.1/0.2/0.3/0.4): W1/(N−1) to female 0 and 1/6, to male 1/2 and 1/3.
    assert "female: base 1.000, tuned 0.833; male: base 0.500, tuned 0.667" in charts[0]


def test_items_round_trip_and_errors(tmp_path):
    path = write_items(_items(), tmp_path / "items.jsonl")
    assert [i.id for i in read_items(path)] == ["likert", "agree"]
    (tmp_path / "bad.jsonl").write_text('{"id": "x", "question": "?", "options": ["a", "b"], "distribution": [0.9, 0.3]}\n')
    with pytest.raises(Exception, match=r"bad.jsonl line 1: .*sum to 1"):
        read_items(tmp_path / "bad.jsonl")
    assert "A. 1\nB. 2" in opinion_prompt(_items()[0])[0]["content"]


@pytest.mark.slow
def test_embedded_model_answers_every_item(embedded):
    result = score_fidelity(embedded, _items())
    assert len(result.items) == 2
    for row in result.items:
        assert sum(row["model"]) == pytest.approx(1.0, abs=1e-4) and 0 <= row["distance"] <= 1
