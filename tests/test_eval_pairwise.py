"""Five-level pairwise grading: parsing verdict tokens, both-order logic (swap, map back,
disagreement → tie), improvement levels, and both judge modes on scripted judges."""

from __future__ import annotations

import pytest

from tests.conftest import ScriptedModel, TextModel, shown_answers
from valign.evals.pairwise import (
    LEVELS,
    PairItem,
    PairwiseConfig,
    combine,
    describe_score,
    improvement,
    judge_pairwise,
    pairwise_conversation,
    parse_level,
    parse_refused,
    regression,
)
from valign.models.base import normalise
from valign.types import Conversation


@pytest.mark.parametrize(
    "text, level",
    [
        ("[[A>>B]]", "A>>B"),
        ("explanation… [[ B > A ]]", "B>A"),
        ("[[A=B]]", "A=B"),
        ("[[B≫A]]", "B>>A"),
        ("The format is [[A>>B]] … my verdict: [[B>A]]", "B>A"),  # the last token counts
        ("[[A]]", None),
        ("A is better", None),
        ("[[A>A]]", None),
        ("", None),
    ],
)
def test_parse_level(text, level):
    assert parse_level(text) == level


def test_parse_refused():
    assert parse_refused("Refused: A\n[[B>>A]]") == {"A"}
    assert parse_refused("Refused: both") == {"A", "B"}
    assert parse_refused("refused: **neither**") == set()
    assert parse_refused("no label") is None


def test_combine_disagreement_is_a_tie_and_agreement_averages():
    assert combine(2, 2).score == 2 and combine(2, 2).consistent
    assert combine(1, -2).score == 0 and not combine(1, -2).consistent
    assert combine(0, -1).score == -0.5 and combine(0, -1).consistent
    assert combine(None, 2) is None


def test_improvement_levels_and_labels():
    assert [improvement(s) for s in (2, 1.5, 1, 0.5, 0, -2)] == ["strong", "strong", "moderate", "slight", "none", "none"]
    assert regression(-1.5) == "strong" and regression(1) == "none"
    assert describe_score(-2, "tuned", "base") == "base ≫ tuned"


def test_generative_both_orders_map_back_to_x():
    """A judge that always prefers the answer containing GOOD strongly, and says who refused."""

    def reply(prompt: str) -> str:
        a, b = shown_answers(prompt)
        refused = "A" if "sorry" in a else "B" if "sorry" in b else "neither"
        return f"Reasoning. Refused: {refused}\n" + ("[[A>>B]]" if "GOOD" in a else "[[B>>A]]")

    judge = TextModel(reply)
    items = [PairItem("q1", x="GOOD answer", y="I'm sorry, no.", principles="p"), PairItem("q2", x="meh", y="GOOD one", principles="p")]
    res = judge_pairwise(judge, items, PairwiseConfig(judge_mode="generative"))
    assert res[0].orders == [2.0, 2.0] and res[0].score == 2.0 and res[0].improvement == "strong"
    assert res[0].y_refused is True and res[0].x_refused is False
    assert res[1].orders == [-2.0, -2.0] and res[1].regression == "strong" and res[1].verdict == "Y ≫ X"
    assert judge.calls == 4, "two orders per item, one batched call"


def test_generative_position_bias_becomes_a_tie_and_garbage_is_unparsed():
    first = TextModel(lambda p: "[[A>B]]")  # always prefers whatever is shown first
    r = judge_pairwise(first, [PairItem("q", "x", "y", "p")], PairwiseConfig())[0]
    assert r.orders == [1.0, -1.0] and r.score == 0 and r.consistent is False and r.improvement == "none"

    garbage = TextModel(lambda p: "I like both.")
    r = judge_pairwise(garbage, [PairItem("q", "x", "y", "p")], PairwiseConfig())[0]
    assert r.score is None and r.verdict == "unparsed" and r.to_dict()["improvement"] is None


class ProbJudge(ScriptedModel):
    """Option probabilities: prefers X by `pref` (on option 1 vs 5) plus a bias to (A)."""

    def __init__(self, pref: float, bias: float) -> None:
        super().__init__(name="prob-judge")
        self.pref, self.bias = pref, bias

    def _choice_probs(self, convs: list[Conversation], options: list[str], answer_prefix: str) -> list[dict[str, float]]:
        out = []
        for c in convs:
            a, _ = shown_answers(c[-1]["content"])
            x_is_a = a == "X"
            p_a_much = 0.5 + self.bias + (self.pref if x_is_a else -self.pref)
            out.append(normalise({"1": p_a_much, "2": 0.0, "3": 0.0, "4": 0.0, "5": 1 - p_a_much}))
        return out


def test_logprob_expected_scores_in_both_orders():
    cfg = PairwiseConfig(judge_mode="logprob")
    r = judge_pairwise(ProbJudge(pref=0.3, bias=0.0), [PairItem("q", "X", "Y", "p")], cfg)[0]
    assert r.orders == pytest.approx([1.2, 1.2]) and r.score == pytest.approx(1.2) and r.improvement == "moderate"
    # A bias toward (A) larger than the preference flips one order: a tie.
    r = judge_pairwise(ProbJudge(pref=0.1, bias=0.3), [PairItem("q", "X", "Y", "p")], cfg)[0]
    assert r.orders[0] > 0 > r.orders[1] and r.score == 0 and r.consistent is False


def test_templates_show_the_answers_and_the_scale():
    item = PairItem("Should I lie?", "x", "y", "- Never lie.")
    gen = pairwise_conversation(item, "first", "second", "generative")[0]["content"]
    assert "Never lie." in gen and "first" in gen and all(f"[[{lv}]]" in gen for lv in LEVELS)
    logp = pairwise_conversation(item, "first", "second", "logprob")[0]["content"]
    assert "(1) A is much better than B" in logp and "second" in logp
