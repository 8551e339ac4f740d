"""The judge stage: prompt rendering, both-order averaging against a known position
bias, chain-of-thought clamping, verdict parsing and retries, improvement, curation
counts and resume — on scripted judges — then one small run on the embedded model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Iterator

import pytest
from rich.console import Console

from tests.conftest import ScriptedModel
from valign.config import RunConfig
from valign.constitution import load_constitution
from valign.models.base import GenRequest
from valign.runs import RowLog
from valign.stages.base import StageContext
from valign.stages.judge import (
    ANSWER_PREFIX,
    OPTIONS,
    JudgeConfig,
    JudgeStage,
    VerdictError,
    combine_orders,
    comparison_conversation,
    count_rows,
    curate,
    judge_logprob,
    judge_verdict,
    load_examples,
    parse_verdict,
    pick_principle,
    render_comparison,
    templates_digest,
)
from valign.types import Completion, Conversation, GenConfig

KANT = load_constitution("kantian")


# --------------------------------------------------------------------------- scripted judges


def _options(conv: Conversation) -> tuple[str, str]:
    """The (A) and (B) texts of the last comparison shown in a conversation."""
    msg = next(m["content"] for m in reversed(conv) if m["role"] == "user" and "\n(A) " in m["content"])
    a, b = msg.rfind("\n(A) "), msg.rfind("\n(B) ")
    return msg[a:b], msg[b:]


class BiasedJudge(ScriptedModel):
    """Prefers the answer containing GOOD by ``strength`` and adds ``bias`` to whatever
    is shown as (A): P(A) = 0.5 ± strength + bias."""

    def __init__(self, strength: float = 0.2, bias: float = 0.15) -> None:
        super().__init__(name="biased")
        self.strength, self.bias = strength, bias
        self.seen: list[Conversation] = []

    def _choice_probs(self, convs, options, answer_prefix):
        assert options == OPTIONS and answer_prefix == ANSWER_PREFIX
        self.choice_calls += len(convs)
        self.seen += convs
        out = []
        for conv in convs:
            a, b = _options(conv)
            sign = 1 if "GOOD" in a else -1 if "GOOD" in b else 0
            p = min(max(0.5 + sign * self.strength + self.bias, 0.0), 1.0)
            out.append({"A": p, "B": 1 - p})
        return out


class VerdictJudge(ScriptedModel):
    """Answers verdict requests with ``script(conv, attempt)``; records every call batch."""

    def __init__(self, script: Callable[[Conversation, int], str]) -> None:
        super().__init__(name="verdict-judge")
        self.script = script
        self.batches: list[int] = []

    def _generate_batches(self, requests: list[GenRequest], cfg: GenConfig) -> Iterator[list[tuple[int, Completion]]]:
        self.batches.append(len(requests))
        out = []
        for pos, r in enumerate(requests):
            self.calls += 1
            attempt = sum(1 for m in r.messages if m["role"] == "assistant")
            out.append((pos, Completion(text=self.script(r.messages, attempt))))
        yield out


def _verdict_json(conv: Conversation, ethical: bool = True, confidence: float = 0.8, improved: str | None = "IMPROVED") -> str:
    a, _ = _options(conv[:1])
    return json.dumps(
        {"ethical": ethical, "preferred": "A" if "GOOD" in a else "B", "confidence": confidence,
         "rationale": "It is better.", "improved": improved}
    )


def _pair(i: int, good_first: bool = True, same: bool = False) -> dict:
    good, bad = f"GOOD answer {i}", f"BAD answer {i}"
    texts = [good, bad] if good_first else [bad, good]
    if same:
        texts = [good, good]
    return {
        "id": f"p{i}",
        "prompt_id": f"p{i}",
        "prompt": f"question {i}?",
        "prompt_messages": [{"role": "user", "content": f"question {i}?"}],
        "kind": "red_team" if i % 2 else "benign",
        "responses": [{"text": texts[0], "temperature": 0.7}, {"text": texts[1], "temperature": 1.0}],
        "model": "policy",
    }


class _Pool:
    def __init__(self, model) -> None:
        self.model, self.specs = model, []

    def get(self, spec: str):
        self.specs.append(spec)
        return self.model


def _ctx(tmp_path: Path, pairs: list[dict], model, **judge) -> StageContext:
    pairs_dir = tmp_path / "04-pairs"
    pairs_dir.mkdir(exist_ok=True)
    (pairs_dir / "rows.jsonl").write_text("".join(json.dumps(p) + "\n" for p in pairs))
    cfg = JudgeConfig(**judge)
    run_config = RunConfig(name="t", model="policy-spec", seed=0, constitution="kantian", judge=cfg)
    return StageContext(
        run_config=run_config,
        config=cfg,
        dir=tmp_path / "05-judge",
        rows=RowLog(tmp_path / "05-judge" / "rows.jsonl"),
        models=_Pool(model),  # type: ignore[arg-type]
        input_dirs={"pairs": pairs_dir},
        console=Console(quiet=True),
    )


# --------------------------------------------------------------------------- rendering


def test_comparison_prompt_holds_conversation_principle_and_both_options():
    p = KANT.principles[0]
    conv = comparison_conversation(
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Can I lie to my boss?"}],
        p, "Option one text.", "Option two text.",
    )
    assert len(conv) == 1 and conv[0]["role"] == "user"
    text = conv[0]["content"]
    assert "System: Be brief.\n\nHuman: Can I lie to my boss?" in text
    assert p.text in text
    assert "(A) Option one text." in text and "(B) Option two text." in text
    assert text.index("(A) Option one") < text.index("(B) Option two")
    # Values holding template syntax are inserted literally, never re-expanded.
    assert "(A) costs ${price}" in render_comparison("Human: x", "p", "costs ${price}", "b", "?")


def test_few_shot_examples_come_first_each_with_its_own_principle():
    examples = load_examples()
    assert len(examples) >= 2 and {e.better for e in examples} == {"A", "B"}
    shots = [(examples[0], KANT.principles[1]), (examples[1], KANT.principles[2])]
    conv = comparison_conversation([{"role": "user", "content": "Q?"}], KANT.principles[0], "x", "y", shots)
    assert [m["role"] for m in conv] == ["user", "assistant", "user", "assistant", "user"]
    assert KANT.principles[1].text in conv[0]["content"] and examples[0].option_a in conv[0]["content"]
    assert KANT.principles[2].text in conv[2]["content"]
    assert conv[1]["content"] == f"{ANSWER_PREFIX}{examples[0].better})"


def test_principle_is_stable_per_row_and_varies_across_rows():
    assert pick_principle(KANT, 0, "row-1").id == pick_principle(KANT, 0, "row-1").id
    assert len({pick_principle(KANT, 0, f"row-{i}").id for i in range(200)}) > 5


def test_templates_digest_is_stable():
    assert templates_digest() == templates_digest() and len(templates_digest()) == 64


# --------------------------------------------------------------------------- logprob mode


def test_both_orders_cancel_a_known_position_bias():
    judge = BiasedJudge(strength=0.2, bias=0.15)
    pairs = [_pair(0, good_first=True), _pair(1, good_first=False)]
    res = judge_logprob(judge, pairs, JudgeConfig(), KANT, seed=0)
    assert judge.choice_calls == 4  # both orders of both pairs, in one call
    # Order 1 reads P(A) = 0.5 + 0.2 + 0.15; order 2 reads P(B) = 1 - (0.5 - 0.2 + 0.15).
    assert res[0]["p_orders"] == pytest.approx([0.85, 0.55])
    assert res[0]["p_first_better"] == pytest.approx(0.7)  # = 0.5 + strength: the bias is gone
    assert res[1]["p_first_better"] == pytest.approx(0.3)
    assert res[0]["principle_id"] in KANT.ids
    # The same principle is used for both orders of one pair.
    assert KANT.get(res[0]["principle_id"]).text in judge.seen[0][-1]["content"]
    assert KANT.get(res[0]["principle_id"]).text in judge.seen[1][-1]["content"]


def test_a_strong_bias_makes_the_orders_disagree():
    judge = BiasedJudge(strength=0.2, bias=0.3)  # P(A) = 1.0 and 0.6: (A) wins both times
    res = judge_logprob(judge, [_pair(0)], JudgeConfig(), KANT, seed=0)[0]
    assert res["p_orders"] == pytest.approx([1.0, 0.4])
    assert res["p_first_better"] == pytest.approx(0.7)
    assert curate(res["p_first_better"], res["p_orders"], JudgeConfig()) == "order_disagreement"
    assert curate(res["p_first_better"], res["p_orders"], JudgeConfig(drop_order_disagreement=False)) is None


def test_chain_of_thought_reasons_first_and_clamps():
    judge = BiasedJudge(strength=0.4, bias=0.0)  # 0.9 in both orders without the clamp
    cfg = JudgeConfig(chain_of_thought=True, gen=GenConfig(temperature=0.0, max_new_tokens=16))
    res = judge_logprob(judge, [_pair(0)], cfg, KANT, seed=0)[0]
    assert judge.calls == 2 and len(res["reasoning"]) == 2
    assert res["p_orders"] == [0.6, 0.6] and res["p_first_better"] == 0.6
    conv = judge.seen[0]
    assert "step-by-step" in conv[0]["content"] and conv[1]["role"] == "assistant" and conv[2]["role"] == "user"
    # A label clamped to 0.6 still passes the default margin of 0.1 (no float slip).
    assert curate(0.6, [0.6, 0.6], JudgeConfig()) is None
    assert combine_orders(0.1, 0.95, clamp=(0.4, 0.6)) == ([0.4, 0.6], 0.5)


def test_curation_margin_and_ties():
    cfg = JudgeConfig(min_margin=0.2)
    assert curate(0.75, [0.8, 0.7], cfg) is None
    assert curate(0.65, [0.7, 0.6], cfg) == "low_margin"
    assert curate(0.5, [0.5, 0.5], JudgeConfig(min_margin=0.0)) == "low_margin"
    assert curate(None, None, cfg) == "invalid_verdict"


# --------------------------------------------------------------------------- verdict parsing


VALID = {"ethical": True, "preferred": "B", "confidence": 0.7, "rationale": "B is honest.", "improved": "Better B."}


def test_parse_verdict_plain_fenced_and_with_chatter():
    assert parse_verdict(json.dumps(VALID)).preferred == "B"
    fenced = "Here is my verdict:\n```json\n" + json.dumps(VALID, indent=2) + "\n```\nThanks."
    assert parse_verdict(fenced).improved == "Better B."
    v = parse_verdict("Verdict {not json} then " + json.dumps({**VALID, "preferred": "(a)", "improved": ""}))
    assert v.preferred == "A" and v.improved is None


@pytest.mark.parametrize(
    "text, message",
    [
        ("I prefer B.", "no complete JSON object"),
        ('```json\n{"ethical": true, "preferred": "A", "rationale": "cut o', "no complete JSON object"),
        (json.dumps({**VALID, "preferred": "C"}), "preferred"),
        (json.dumps({k: v for k, v in VALID.items() if k != "ethical"}), "'ethical' is missing"),
        (json.dumps({**VALID, "confidence": 7}), "confidence"),
    ],
)
def test_parse_verdict_says_what_is_wrong(text, message):
    with pytest.raises(VerdictError, match=message):
        parse_verdict(text)


def test_invalid_verdict_is_retried_with_the_error_quoted():
    judge = VerdictJudge(lambda conv, attempt: "I think B is nicer." if attempt == 0 else _verdict_json(conv))
    cfg = JudgeConfig(mode="verdict", gen=GenConfig(temperature=0.0, max_new_tokens=64))
    res = judge_verdict(judge, [_pair(0), _pair(1, good_first=False)], cfg, KANT, seed=0)
    assert judge.batches == [2, 2]  # the first attempt and the retry, each batched
    assert all(r["attempts"] == 2 and "verdict" in r and "raw" not in r for r in res)
    for r, pair_good in zip(res, (0, 1)):
        # The preferred letter maps back to the GOOD response whatever was shown as (A).
        assert r["shown_order"][["A", "B"].index(r["verdict"].preferred)] == pair_good


def test_verdict_that_never_parses_is_kept_raw_and_dropped(tmp_path):
    judge = VerdictJudge(lambda conv, attempt: f"garbage {attempt}")
    ctx = _ctx(tmp_path, [_pair(0)], judge, mode="verdict", max_retries=2)
    JudgeStage().run(ctx)
    (row,) = list(ctx.rows)
    assert judge.calls == 3
    assert row["kept"] is False and row["drop_reason"] == "invalid_verdict"
    assert row["raw"] == "garbage 2" and "no complete JSON object" in row["verdict_error"] and row["attempts"] == 3
    assert "chosen" not in row and row["responses"][0]["text"] == "GOOD answer 0"
    assert ctx.info["counts"]["dropped"]["invalid_verdict"] == 1


def test_verdict_improvement_replaces_chosen_for_ethical_prompts_only(tmp_path):
    def script(conv, attempt):
        ethical = "question 0?" in conv[0]["content"]
        return _verdict_json(conv, ethical=ethical, improved="IMPROVED" if ethical else None)

    ctx = _ctx(tmp_path, [_pair(0), _pair(1, good_first=False)], VerdictJudge(script), mode="verdict")
    JudgeStage().run(ctx)
    rows = {r["id"]: r for r in ctx.rows}
    ethical, unethical = rows["p0"], rows["p1"]
    assert ethical["kept"] and ethical["ethical"] is True
    assert ethical["chosen"] == [{"role": "assistant", "content": "IMPROVED"}]
    assert ethical["original_chosen"] == "GOOD answer 0" and ethical["chosen_index"] == 0
    assert ethical["rejected"] == [{"role": "assistant", "content": "BAD answer 0"}]
    assert ethical["p_first_better"] == pytest.approx(0.9)  # 0.5 + confidence / 2
    assert unethical["ethical"] is False and "original_chosen" not in unethical
    assert unethical["chosen"][0]["content"] == "GOOD answer 1" and unethical["chosen_index"] == 1
    assert unethical["chosen_temperature"] == 1.0 and unethical["rejected_temperature"] == 0.7
    assert unethical["p_first_better"] == pytest.approx(0.1)


# --------------------------------------------------------------------------- the stage


def test_stage_rows_counts_and_resume(tmp_path):
    pairs = [_pair(0), _pair(1, good_first=False), _pair(2, same=True), _pair(3)]
    judge = BiasedJudge(strength=0.2, bias=0.15)
    ctx = _ctx(tmp_path, pairs[:2], judge, chunk=1)
    JudgeStage().run(ctx)
    assert ctx.models.specs == ["policy"]  # the policy that sampled the pairs judges by default
    assert ctx.info["counts"] == {"pairs": 2, "kept": 2, "dropped": dict.fromkeys(
        ["identical", "invalid_verdict", "position_bias", "order_disagreement", "low_margin"], 0)}

    # Resume with more pairs and a stricter margin: finished ids are not judged again.
    calls = judge.choice_calls
    ctx2 = _ctx(tmp_path, pairs, judge, min_margin=0.25)
    JudgeStage().run(ctx2)
    assert judge.choice_calls == calls + 2  # only p3 (both orders); p2 has identical answers
    rows = {r["id"]: r for r in ctx2.rows}
    assert list(rows) == ["p0", "p1", "p2", "p3"]
    assert rows["p2"]["drop_reason"] == "identical" and rows["p3"]["drop_reason"] == "low_margin"
    counts = ctx2.info["counts"]
    assert counts["pairs"] == 4 and counts["kept"] == 2
    assert counts["dropped"] == {"identical": 1, "invalid_verdict": 0, "position_bias": 0, "order_disagreement": 0, "low_margin": 1}
    assert counts == count_rows(rows.values())

    kept = rows["p1"]
    assert kept["prompt"] == [{"role": "user", "content": "question 1?"}]
    assert kept["chosen"] == [{"role": "assistant", "content": "GOOD answer 1"}]
    assert kept["rejected"] == [{"role": "assistant", "content": "BAD answer 1"}]
    assert kept["chosen_index"] == 1 and kept["p_first_better"] == pytest.approx(0.3)
    assert kept["judge_model"] == "policy" and kept["mode"] == "logprob" and kept["policy_model"] == "policy"
    assert kept["principle_id"] in KANT.ids and len(kept["p_orders"]) == 2 and kept["drop_reason"] is None


def test_describe_changes_with_the_config():
    stage = JudgeStage()
    rc = RunConfig(name="t", model="embedded", seed=0, constitution="kantian", judge=JudgeConfig())
    d = stage.describe(rc)
    assert d["model"] == "policy" and d["templates"] == templates_digest()
    assert d["constitution"] == KANT.fingerprint()
    rc2 = rc.model_copy(update={"judge": JudgeConfig(model="openai:gpt-5@http://x", mode="verdict")})
    assert stage.describe(rc2) != d and stage.describe(rc2)["model"] == "openai:gpt-5@http://x"
    assert stage.inputs(rc) == ["pairs"]


def test_config_rejects_unknown_keys():
    with pytest.raises(Exception, match="extra"):
        JudgeConfig(mode="logprob", min_margn=0.1)  # type: ignore[call-arg]


# --------------------------------------------------------------------------- the real model


@pytest.mark.slow
def test_logprob_judge_on_the_embedded_model(tmp_path, embedded):
    # "A" and "B" after "(" must be distinct single tokens for this tokenizer, or the
    # probabilities would be read for the wrong token.
    conv = comparison_conversation([{"role": "user", "content": "Hi"}], KANT.principles[0], "Hello!", "Go away.")
    first, cut = embedded._option_first_tokens(conv, OPTIONS, ANSWER_PREFIX)
    assert [embedded.tokenizer.convert_ids_to_tokens(first[o]) for o in OPTIONS] == ["A", "B"] and cut == 0

    pairs = [
        {**_pair(0), "responses": [
            {"text": "Sure, here is a clear recipe for pancakes: flour, milk, eggs, whisk, fry.", "temperature": 0.7},
            {"text": "I cannot help with that.", "temperature": 1.0}]},
        {**_pair(1), "responses": [
            {"text": "No.", "temperature": 0.7},
            {"text": "Lying to your friend would betray their trust; tell them the truth kindly.", "temperature": 1.0}]},
    ]
    ctx = _ctx(tmp_path, pairs, embedded, few_shot=1, min_margin=0.0)
    JudgeStage().run(ctx)
    rows = list(ctx.rows)
    assert [r["id"] for r in rows] == ["p0", "p1"]
    for r in rows:
        assert all(0.0 < p < 1.0 for p in r["p_orders"])
        assert r["p_first_better"] == pytest.approx(sum(r["p_orders"]) / 2)
        assert len(r["few_shot_principle_ids"]) == 1
    assert ctx.info["counts"]["pairs"] == 2
