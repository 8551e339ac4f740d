"""`judge`: label each answer pair from `pairs` and curate the preference data.

Two modes, any model as the judge (``judge.model``; the run's model by default):

* ``logprob`` (Bai et al. 2022, §4.1): a multiple-choice prompt shows the
  conversation, one principle sampled by weight for this comparison, and the two
  answers as options (A) and (B); `ChatModel.choice_probs` reads the probability of
  each letter after ``"The answer is: ("``. Every pair is scored in both orders and
  the two readings of "the first answer is better" are averaged, so a judge that
  favours whatever comes first (or second) cancels out. Optional worked examples
  (``few_shot``, from ``data/templates/judge_examples.txt``, each shown with its own
  sampled principle) come first as earlier chat turns. With ``chain_of_thought`` the
  judge first writes its reasoning, then is asked for the letter; those probabilities
  are clamped to [0.4, 0.6] because reasoning makes them overconfident.
* ``verdict`` (a strong judge, e.g. ``openai:gpt-5@…``): one call per pair returns a
  JSON verdict (`Verdict`): is the request ethical to help with, which answer is
  preferred, how confidently, why, and for ethical requests an improved version of
  the preferred answer, which then becomes ``chosen`` (the original is kept as
  ``original_chosen``). Which answer is shown as (A) is random per row, so position
  bias averages out over the dataset. Unreadable output is retried with the
  validation error quoted; if it still fails, the raw text stays in the row and the
  pair is dropped as ``invalid_verdict``.

Curation drops pairs whose two orders pick different winners (``order_disagreement``),
whose soft label is too close to 0.5 (``low_margin``), whose answers are identical
(``identical``) or whose verdict never parsed (``invalid_verdict``); with
``max_position_bias`` set, also pairs whose two readings disagree by more than it
(``position_bias``: |p1 + p2 − 1| for P(first better) p1, p2 in the two orders, which is
0 for a judge that ignores position). The manifest's ``calibration`` block holds the
judge's position bias, order-flip rate, tie rate and length bias over all its rows
(`valign.evals.calibration`). Every pair gets
exactly one row, kept or not, so a resumed run never re-judges anything and the
manifest's counts per reason are exact.

Kept rows are TRL's preference format: ``prompt`` (the conversation), ``chosen`` and
``rejected`` (one assistant message each), plus provenance: ``p_first_better`` (the
soft label for ``responses[0]`` of the pair), ``p_orders``, ``chosen_index``, the
temperatures, principle ids, judge model and mode. Dropped rows carry ``kept: false``,
``drop_reason`` and the original ``responses`` instead of ``chosen``/``rejected``, so
they cannot be trained on by accident.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from dataclasses import dataclass
from functools import lru_cache
from string import Template
from typing import Any, Callable, ClassVar, Literal, Sequence, TYPE_CHECKING, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from valign.constitution import Constitution, Principle
from valign.errors import ValignError
from valign.evals.calibration import calibrate, position_gap, readings_from_judge_rows
from valign.models.base import ChatModel
from valign.progress import GenProgress
from valign.stages.base import Stage, StageContext, constitution_inputs, model_identity, run_constitution
from valign.templates import digest as digest_templates
from valign.templates import load_template
from valign.types import Conversation, GenConfig, Row, derived_seed, keep_gen_defaults

if TYPE_CHECKING:
    from valign.config import RunConfig

__all__ = [
    "JudgeConfig",
    "JudgeStage",
    "Verdict",
    "VerdictError",
    "Example",
    "load_template",
    "load_examples",
    "templates_digest",
    "render_conversation",
    "render_comparison",
    "comparison_conversation",
    "verdict_conversation",
    "pick_principle",
    "pick_shots",
    "combine_orders",
    "parse_verdict",
    "first_json_object",
    "parse_json_reply",
    "judge_logprob",
    "judge_verdict",
    "ask_until_readable",
    "curate",
    "count_rows",
]

M = TypeVar("M", bound=BaseModel)

# Template files in valign/data/templates/ (package data), hashed into the fingerprint.
LOGPROB_TEMPLATE = "judge_logprob.txt"  # the multiple-choice comparison
ANSWER_TEMPLATE = "judge_answer.txt"  # "which option…? reply with the letter"
COT_TEMPLATE = "judge_cot.txt"  # "reason step by step first"
EXAMPLES_FILE = "judge_examples.txt"  # worked comparisons for few-shot
VERDICT_TEMPLATE = "judge_verdict.txt"  # the JSON verdict request
RETRY_TEMPLATE = "judge_retry.txt"  # follow-up after unreadable JSON
TEMPLATE_FILES = (LOGPROB_TEMPLATE, ANSWER_TEMPLATE, COT_TEMPLATE, EXAMPLES_FILE, VERDICT_TEMPLATE, RETRY_TEMPLATE)

OPTIONS = ["A", "B"]
ANSWER_PREFIX = "The answer is: ("
COT_CLAMP = (0.4, 0.6)
DROP_REASONS = ("identical", "invalid_verdict", "position_bias", "order_disagreement", "low_margin")
# Margins are compared with a little slack: 0.6 - 0.5 is 0.0999… in floating point,
# and a clamped CoT label of exactly 0.6 must pass min_margin=0.1.
_EPS = 1e-9


class JudgeConfig(BaseModel):
    """Settings of the `judge` stage.

    In ``verdict`` mode the soft label is ``0.5 + confidence / 2`` for the preferred
    answer, so ``min_margin: 0.1`` keeps verdicts with confidence ≥ 0.2. With
    ``chain_of_thought`` every label lies in [0.4, 0.6], so margins are at most 0.1.
    ``few_shot`` and ``chain_of_thought`` apply to ``logprob`` mode; ``max_retries``
    and ``improve`` to ``verdict`` mode; ``gen`` is used for verdicts and reasoning.

    Example (YAML):
        judge:
          mode: logprob             # or verdict (JSON from a strong judge)
          model: null               # the run's model; e.g. openai:gpt-5@https://api.openai.com/v1
          few_shot: 2               # worked comparisons shown first (logprob mode)
          min_margin: 0.1           # drop pairs with |p - 0.5| below this
          max_position_bias: null   # e.g. 0.3: drop pairs whose orders' P(first) disagree by more (logprob mode)
          gen: {temperature: 0.0, max_new_tokens: 768}
    """

    model_config = ConfigDict(extra="forbid")

    mode: Literal["logprob", "verdict"] = "logprob"
    model: str | None = None  # None: the run's model judges its own pairs
    few_shot: int = Field(0, ge=0, le=8)  # capped at the number of shipped examples
    chain_of_thought: bool = False
    min_margin: float = Field(0.1, ge=0.0, le=0.5)
    drop_order_disagreement: bool = True
    max_position_bias: float | None = Field(None, ge=0.0, le=1.0)
    max_retries: int = Field(2, ge=0, le=10)
    improve: bool = True
    chunk: int = Field(32, ge=1)
    gen: GenConfig = Field(default_factory=lambda: GenConfig(temperature=0.0, max_new_tokens=768))
    _gen_defaults = field_validator("gen", mode="before")(keep_gen_defaults)


class Verdict(BaseModel):
    """The JSON a `verdict`-mode judge must return.

    Example:
        >>> Verdict.model_validate({"ethical": True, "preferred": "b", "confidence": 0.8,
        ...                         "rationale": "B is honest.", "improved": "Here is…"}).preferred
        'B'
    """

    model_config = ConfigDict(extra="ignore")

    ethical: bool
    preferred: Literal["A", "B"]
    confidence: float = Field(..., ge=0.0, le=1.0)
    rationale: str
    improved: str | None = None

    @field_validator("preferred", mode="before")
    @classmethod
    def _letter(cls, v: Any) -> Any:
        # Judges write "(A)", "a" or "Reply A"; the letter is what matters.
        if isinstance(v, str):
            m = re.fullmatch(r"\s*(?:(?:reply|response|option|answer)\s+)?[(\[]?\s*([abAB])\s*[)\]]?\s*", v, re.I)
            return m.group(1).upper() if m else v
        return v

    @field_validator("improved", mode="before")
    @classmethod
    def _blank_is_none(cls, v: Any) -> Any:
        return None if isinstance(v, str) and not v.strip() else v


class VerdictError(ValueError):
    """A judge's output that is not a valid `Verdict`; the message says what is wrong."""


@dataclass(frozen=True)
class Example:
    """A worked comparison for few-shot prompting (from ``judge_examples.txt``).

    Example:
        >>> load_examples()[0].better in ("A", "B")
        True
    """

    human: str
    option_a: str
    option_b: str
    better: Literal["A", "B"]


# --------------------------------------------------------------------------- templates


def templates_digest(names: Sequence[str] = TEMPLATE_FILES) -> str:
    """SHA-256 over template files (the judge's by default), for a stage fingerprint.

    Example:
        >>> len(templates_digest())
        64
    """
    return digest_templates(names)


@lru_cache(maxsize=None)
def load_examples() -> tuple[Example, ...]:
    """The shipped worked comparisons, in file order.

    Example:
        >>> len(load_examples()) >= 2
        True
    """
    examples = []
    text = "\n".join(line for line in load_template(EXAMPLES_FILE).splitlines() if not line.startswith("#"))
    for block in re.split(r"^---\s*$", text, flags=re.M):
        fields: dict[str, str] = {}
        for line in block.strip().splitlines():
            for key, prefix in (("human", "Human:"), ("option_a", "(A)"), ("option_b", "(B)"), ("better", "Better:")):
                if line.startswith(prefix):
                    fields[key] = line[len(prefix) :].strip()
        if not fields:
            continue
        if set(fields) != {"human", "option_a", "option_b", "better"} or fields["better"] not in OPTIONS:
            raise ValignError(f"{EXAMPLES_FILE}: an example lacks a Human:, (A), (B) or Better: A|B line: {block.strip()[:60]!r}.")
        examples.append(Example(**fields))  # type: ignore[arg-type]
    return tuple(examples)


def render_conversation(messages: Conversation) -> str:
    """A chat as the plain "Human: … / Assistant: …" transcript the judge reads.

    Example:
        >>> render_conversation([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}])
        'Human: Hi\\n\\nAssistant: Hello'
    """
    names = {"user": "Human", "assistant": "Assistant", "system": "System"}
    return "\n\n".join(f"{names.get(m['role'], m['role'].title())}: {m['content'].strip()}" for m in messages)


def render_comparison(
    conversation: str, principle: str, option_a: str, option_b: str, request: str, template: str = LOGPROB_TEMPLATE
) -> str:
    """The multiple-choice comparison prompt (``judge_logprob.txt``, or another template
    with the same fields) for one order.

    Example:
        >>> text = render_comparison("Human: Hi", "Be honest.", "Hello!", "Go away.", "Which?")
        >>> "(A) Hello!" in text and "(B) Go away." in text and "Be honest." in text
        True
    """
    return Template(load_template(template)).substitute(
        conversation=conversation,
        principle=principle.strip(),
        option_a=option_a.strip(),
        option_b=option_b.strip(),
        request=request,
    )


def comparison_conversation(
    prompt_messages: Conversation,
    principle: Principle,
    option_a: str,
    option_b: str,
    shots: Sequence[tuple[Example, Principle]] = (),
    cot: bool = False,
    template: str = LOGPROB_TEMPLATE,
) -> Conversation:
    """The chat sent to the judge for one order: worked examples as earlier turns
    (each with its own principle, answered in the same "The answer is: (X)" form the
    real answer is read from), then the comparison.

    Example:
        >>> from valign.constitution import load_constitution
        >>> conv = comparison_conversation([{"role": "user", "content": "Hi"}],
        ...                                load_constitution("kantian").principles[0], "Hello!", "Go away.")
        >>> conv[-1]["role"], "(A) Hello!" in conv[-1]["content"]
        ('user', True)
    """
    answer = load_template(ANSWER_TEMPLATE)
    conv: Conversation = []
    for ex, p in shots:
        shown = render_comparison(f"Human: {ex.human}", p.text, ex.option_a, ex.option_b, answer, template)
        conv += [
            {"role": "user", "content": shown},
            {"role": "assistant", "content": f"{ANSWER_PREFIX}{ex.better})"},
        ]
    request = load_template(COT_TEMPLATE) if cot else answer
    conv.append(
        {"role": "user", "content": render_comparison(render_conversation(prompt_messages), principle.text, option_a, option_b, request, template)}
    )
    return conv


def verdict_conversation(prompt_messages: Conversation, constitution: Constitution, option_a: str, option_b: str) -> Conversation:
    """The chat that asks a `verdict` judge for its JSON (``judge_verdict.txt``).

    Example:
        >>> from valign.constitution import load_constitution
        >>> conv = verdict_conversation([{"role": "user", "content": "Hi"}], load_constitution("kantian"), "Hello!", "Go away.")
        >>> '"preferred"' in conv[0]["content"]
        True
    """
    text = Template(load_template(VERDICT_TEMPLATE)).substitute(
        constitution=constitution.render("text"),
        conversation=render_conversation(prompt_messages),
        option_a=option_a.strip(),
        option_b=option_b.strip(),
    )
    return [{"role": "user", "content": text}]


# --------------------------------------------------------------------------- sampling and seeds


def _rng(seed: int, row_id: str, what: str) -> random.Random:
    digest = hashlib.sha256(f"{seed}|{row_id}|judge|{what}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def pick_principle(constitution: Constitution, seed: int, row_id: str, what: str = "comparison") -> Principle:
    """The principle for one comparison (or one of its worked examples): drawn by
    weight, and the same on every re-run of the same row.

    Example:
        >>> from valign.constitution import load_constitution
        >>> c = load_constitution("kantian")
        >>> pick_principle(c, 0, "p1").id == pick_principle(c, 0, "p1").id
        True
    """
    return constitution.sample(_rng(seed, row_id, what))[0]


def pick_shots(constitution: Constitution, seed: int, row_id: str, k: int) -> list[tuple[Example, Principle]]:
    examples = load_examples()
    if k == 0 or not examples:
        return []
    chosen = _rng(seed, row_id, "few-shot").sample(range(len(examples)), min(k, len(examples)))
    return [(examples[j], pick_principle(constitution, seed, row_id, f"few-shot-{j}")) for j in chosen]


def judge_gen(gen: GenConfig, seed: int, what: str, attempt: int = 0) -> GenConfig:
    """The judge's generation settings for one kind of request (``cot``, ``verdict``): a
    seed derived from the run's, so reruns hit the completion cache; each retry gets
    its own — derived from the config's seed when it names one — so a retry is never
    answered from the cache with the same bad output."""
    if attempt == 0:
        return gen.seeded(derived_seed(seed, "judge", what, attempt))
    return gen.model_copy(update={"seed": derived_seed(gen.seed if gen.seed is not None else seed, "judge", what, attempt)})


# --------------------------------------------------------------------------- logprob mode


def combine_orders(p_ab: float, p_ba: float, clamp: tuple[float, float] | None = None) -> tuple[list[float], float]:
    """Both orders' readings of P(first answer better), and their average.

    ``p_ab`` is P(A) with the answers shown as (first, second); ``p_ba`` is P(B) with
    them shown as (second, first): both estimate the same thing, and a bias towards
    either position pushes them in opposite directions, so it cancels in the mean.

    Example:
        >>> combine_orders(0.9, 0.5)          # a judge that adds +0.2 to whatever is (A)
        ([0.9, 0.5], 0.7)
        >>> combine_orders(0.9, 0.7, clamp=(0.4, 0.6))
        ([0.6, 0.6], 0.6)
    """
    orders = [p_ab, p_ba]
    if clamp is not None:
        orders = [min(max(p, clamp[0]), clamp[1]) for p in orders]
    return orders, round((orders[0] + orders[1]) / 2, 12)


def judge_logprob(
    model: ChatModel, pairs: list[Row], cfg: JudgeConfig, constitution: Constitution, seed: int
) -> list[dict[str, Any]]:
    """Soft labels for pairs by option probabilities, both orders in one batched call.

    Returns one dict per pair: ``p_first_better``, ``p_orders``, ``principle_id``,
    ``few_shot_principle_ids`` (and ``reasoning`` with chain of thought).

    Example, with a loaded model and ``pairs`` rows of the `pairs` stage::

        judge_logprob(model, pairs, JudgeConfig(), load_constitution("kantian"), seed=0)[0]["p_first_better"]
    """
    convs: list[Conversation] = []
    meta: list[dict[str, Any]] = []
    for row in pairs:
        first, second = (r["text"] for r in row["responses"])
        principle = pick_principle(constitution, seed, row["id"])
        shots = pick_shots(constitution, seed, row["id"], cfg.few_shot)
        for a, b in ((first, second), (second, first)):
            convs.append(comparison_conversation(row["prompt_messages"], principle, a, b, shots, cfg.chain_of_thought))
        meta.append({"principle_id": principle.id, "few_shot_principle_ids": [p.id for _, p in shots]})
    reasoning: list[str] = []
    if cfg.chain_of_thought:
        outs = model.generate(convs, judge_gen(cfg.gen, seed, "cot"))
        reasoning = [o.text.strip() for o in outs]
        answer = load_template(ANSWER_TEMPLATE)
        convs = [[*c, {"role": "assistant", "content": r}, {"role": "user", "content": answer}] for c, r in zip(convs, reasoning)]
    probs = model.choice_probs(convs, OPTIONS, answer_prefix=ANSWER_PREFIX)
    results = []
    for i, m in enumerate(meta):
        # Order 1 shows (first, second): P(A) is P(first better). Order 2 shows
        # (second, first): P(B) is P(first better).
        p_orders, p = combine_orders(probs[2 * i]["A"], probs[2 * i + 1]["B"], COT_CLAMP if cfg.chain_of_thought else None)
        res = {**m, "p_first_better": p, "p_orders": p_orders}
        if cfg.chain_of_thought:
            res["reasoning"] = reasoning[2 * i : 2 * i + 2]
        results.append(res)
    return results


# --------------------------------------------------------------------------- verdict mode


def first_json_object(text: str) -> dict[str, Any] | None:
    """The first complete JSON object in a model's reply: inside a fenced block when
    there is one, else anywhere in the text; None when there is none.

    Example:
        >>> first_json_object('Sure! ```json\\n{"a": 1}\\n``` Anything else?'), first_json_object("no")
        ({'a': 1}, None)
    """
    fenced = re.search(r"```(?:json)?\s*(.*?)```", text, re.S | re.I)
    candidates = [fenced.group(1), text] if fenced else [text]
    decoder = json.JSONDecoder()
    for chunk in candidates:
        for m in re.finditer(r"\{", chunk):
            try:
                obj, _ = decoder.raw_decode(chunk, m.start())
            except json.JSONDecodeError:
                continue
            if isinstance(obj, dict):
                return obj
    return None


def parse_verdict(text: str) -> Verdict:
    """The `Verdict` in a judge's output: fenced or bare JSON, with any chatter around it.

    Raises `VerdictError` naming what is wrong (no JSON object, or which field fails).

    Example:
        >>> parse_verdict('Sure! ```json\\n{"ethical": false, "preferred": "A", "confidence": 0.9, '
        ...               '"rationale": "A declines.", "improved": null}\\n```').preferred
        'A'
    """
    return parse_json_reply(text, Verdict)


def parse_json_reply(text: str, shape: type[M]) -> M:
    """The first JSON object in a model's reply, validated as ``shape``; raises
    `VerdictError` naming what is wrong (no complete object, or each field that fails)."""
    obj = first_json_object(text)
    if obj is None:
        # A reply cut off by max_new_tokens lands here too: its object never closes.
        raise VerdictError("it contains no complete JSON object")
    try:
        return shape.model_validate(obj)
    except ValidationError as e:
        problems = []
        for err in e.errors():
            field = ".".join(str(x) for x in err["loc"]) or "the object"
            problems.append(f"field '{field}' is missing" if err["type"] == "missing" else f"field '{field}': {err['msg']}")
        raise VerdictError("; ".join(problems)) from None


def judge_verdict(
    model: ChatModel, pairs: list[Row], cfg: JudgeConfig, constitution: Constitution, seed: int
) -> list[dict[str, Any]]:
    """One JSON verdict per pair, retrying unreadable output in batches.

    Returns one dict per pair with ``shown_order`` (which response was shown as A
    and B), ``attempts`` and either the parsed ``verdict`` or ``raw`` and ``error``.

    Example, with a loaded model and ``pairs`` rows of the `pairs` stage::

        judge_verdict(model, pairs, JudgeConfig(mode="verdict"), load_constitution("kantian"), 0)[0]["verdict"]
    """
    shown: list[list[int]] = []
    convs: list[Conversation] = []
    for row in pairs:
        order = [1, 0] if _rng(seed, row["id"], "shown-order").random() < 0.5 else [0, 1]
        texts = [row["responses"][j]["text"] for j in order]
        shown.append(order)
        convs.append(verdict_conversation(row["prompt_messages"], constitution, *texts))
    answers = ask_until_readable(
        model, convs, parse_verdict, lambda attempt: judge_gen(cfg.gen, seed, "verdict", attempt), cfg.max_retries, RETRY_TEMPLATE
    )
    results: list[dict[str, Any]] = []
    for order, answer in zip(shown, answers):
        parsed = answer.pop("value", None)
        results.append({"shown_order": order, **answer, **({"verdict": parsed} if parsed is not None else {})})
    return results


def ask_until_readable(
    model: ChatModel,
    convs: list[Conversation],
    parse: Callable[[str], Any],
    gen_for_attempt: Callable[[int], GenConfig],
    max_retries: int,
    retry_template: str,
) -> list[dict[str, Any]]:
    """Ask every conversation, and ask again those whose reply ``parse`` rejects (it
    raises `VerdictError` saying why): the retry shows the model its own reply and what
    was wrong with it (``retry_template``, with ``${error}``). Unreadable replies are
    asked together in batches, up to ``max_retries`` more times.

    Returns one dict per conversation: ``attempts`` and either ``value`` (what
    ``parse`` returned) or the last ``raw`` reply and its ``error``.
    """
    convs = list(convs)
    results: list[dict[str, Any]] = [{"attempts": 0} for _ in convs]
    todo = list(range(len(convs)))
    retry = load_template(retry_template)
    for attempt in range(max_retries + 1):
        outs = model.generate([convs[i] for i in todo], gen_for_attempt(attempt))
        failed = []
        for i, out in zip(todo, outs):
            results[i]["attempts"] = attempt + 1
            try:
                results[i]["value"] = parse(out.text)
                results[i].pop("raw", None)
                results[i].pop("error", None)
            except VerdictError as e:
                results[i].update(raw=out.text, error=str(e))
                convs[i] = [
                    *convs[i],
                    {"role": "assistant", "content": out.text},
                    {"role": "user", "content": Template(retry).substitute(error=str(e))},
                ]
                failed.append(i)
        todo = failed
        if not todo:
            break
    return results


def _verdict_label(res: dict[str, Any]) -> float | None:
    """P(first response better) from a verdict: ``0.5 + confidence / 2`` for the preferred one."""
    v: Verdict | None = res.get("verdict")
    if v is None:
        return None
    winner = res["shown_order"][OPTIONS.index(v.preferred)]
    p_winner = 0.5 + v.confidence / 2
    return round(p_winner if winner == 0 else 1 - p_winner, 12)


# --------------------------------------------------------------------------- curation and rows


def curate(p_first_better: float | None, p_orders: list[float] | None, cfg: JudgeConfig) -> str | None:
    """Why a judged pair is dropped, or None to keep it.

    Example:
        >>> cfg = JudgeConfig(min_margin=0.1)
        >>> curate(0.7, [0.8, 0.6], cfg), curate(0.55, [0.6, 0.5], cfg), curate(0.6, [0.9, 0.3], cfg)
        (None, 'low_margin', 'order_disagreement')
        >>> curate(0.7, [0.8, 0.6], JudgeConfig(max_position_bias=0.1))   # orders' P(first): 0.8 and 0.4
        'position_bias'
    """
    if p_first_better is None:
        return "invalid_verdict"
    if cfg.max_position_bias is not None and p_orders is not None and len(p_orders) == 2:
        # p_orders are P(responses[0] better) in each order, so P(first) is p_orders[0]
        # in order 1 and 1 − p_orders[1] in order 2.
        if position_gap(p_orders[0], 1 - p_orders[1]) > cfg.max_position_bias + _EPS:
            return "position_bias"
    if cfg.drop_order_disagreement and p_orders is not None and len(p_orders) == 2:
        if (p_orders[0] - 0.5) * (p_orders[1] - 0.5) < 0:
            return "order_disagreement"
    margin = abs(p_first_better - 0.5)
    # A label of exactly 0.5 names no winner, whatever the threshold.
    if margin == 0 or margin + _EPS < cfg.min_margin:
        return "low_margin"
    return None


def _row(pair: Row, res: dict[str, Any], cfg: JudgeConfig, spec: str, constitution: str) -> Row:
    responses = pair["responses"]
    row: Row = {
        "id": pair["id"],
        "prompt_id": pair.get("prompt_id", pair["id"]),
        "kind": pair.get("kind"),
        "prompt": pair["prompt_messages"],
        "mode": cfg.mode,
        "judge_model": spec,
        "policy_model": pair.get("model"),
        "constitution": constitution,
    }
    if res.get("identical"):
        p, p_orders, reason = None, None, "identical"
    else:
        p = res["p_first_better"] if cfg.mode == "logprob" else _verdict_label(res)
        p_orders = res.get("p_orders")
        reason = curate(p, p_orders, cfg)
    for key in ("principle_id", "few_shot_principle_ids", "reasoning", "shown_order", "attempts"):
        if key in res:
            row[key] = res[key]
    row.update({"p_first_better": p, "p_orders": p_orders})
    verdict: Verdict | None = res.get("verdict")
    if verdict is not None:
        row.update(ethical=verdict.ethical, preferred=verdict.preferred, confidence=verdict.confidence, rationale=verdict.rationale)
    if "raw" in res:
        row.update(raw=res["raw"], verdict_error=res["error"])
    if p is not None and p != 0.5:
        w = 0 if p > 0.5 else 1
        row.update(
            chosen_index=w,
            chosen_temperature=responses[w].get("temperature"),
            rejected_temperature=responses[1 - w].get("temperature"),
        )
    if reason is not None:
        row.update(kept=False, drop_reason=reason, responses=responses)
        return row
    chosen = responses[row["chosen_index"]]["text"]
    if verdict is not None and verdict.ethical and cfg.improve and verdict.improved:
        row["original_chosen"] = chosen
        chosen = verdict.improved.strip()
    row.update(
        kept=True,
        drop_reason=None,
        chosen=[{"role": "assistant", "content": chosen}],
        rejected=[{"role": "assistant", "content": responses[1 - row["chosen_index"]]["text"]}],
    )
    return row


def count_rows(rows: Any) -> dict[str, Any]:
    """Pairs, kept rows and drops per reason over a stage's rows (for the manifest).

    Example:
        >>> count_rows([{"kept": True}, {"kept": False, "drop_reason": "low_margin"}])["dropped"]["low_margin"]
        1
    """
    counts: dict[str, Any] = {"pairs": 0, "kept": 0, "dropped": dict.fromkeys(DROP_REASONS, 0)}
    for r in rows:
        counts["pairs"] += 1
        if r.get("kept"):
            counts["kept"] += 1
        else:
            reason = r.get("drop_reason") or "unknown"
            counts["dropped"][reason] = counts["dropped"].get(reason, 0) + 1
    return counts


def _check_pair(row: Row) -> None:
    for key in ("id", "prompt_messages", "responses"):
        if key not in row:
            raise ValignError(f"pairs row {row.get('id', '?')!r} has no '{key}'; re-run the pairs stage (valign run … --from pairs).")
    if len(row["responses"]) != 2:
        raise ValignError(
            f"pairs row {row['id']!r} has {len(row['responses'])} responses; the judge compares exactly two, "
            "so re-run the pairs stage with two samples per prompt."
        )


# --------------------------------------------------------------------------- the stage


class JudgeStage(Stage):
    """Labels and curates `pairs` into preference rows. Example: ``stages: [..., pairs, judge]``."""

    name: ClassVar[str] = "judge"
    config_class = JudgeConfig
    reads_constitution = True

    def inputs(self, run_config: RunConfig) -> list[str]:
        return ["pairs", *constitution_inputs(run_config)]

    def describe(self, run_config: RunConfig) -> dict[str, Any]:
        cfg: JudgeConfig = run_config.judge
        config = cfg.model_dump(mode="json")
        if config["max_position_bias"] is None:
            # Added after runs existed: left out while off, so their fingerprints stay.
            del config["max_position_bias"]
        return {
            "config": config,
            "model": model_identity(cfg.model) if cfg.model else "policy",  # the policy is covered by the pairs' fingerprint
            "seed": run_config.seed,
            "constitution": run_constitution(run_config).fingerprint(),
            "templates": templates_digest(),
        }

    def run(self, ctx: StageContext) -> None:
        cfg: JudgeConfig = ctx.config
        constitution = run_constitution(ctx.run_config)
        pairs = ctx.input_rows("pairs")
        for row in pairs:
            _check_pair(row)
        todo = [r for r in pairs if r["id"] not in ctx.rows.ids]
        # The policy judges itself unless a judge is named (Bai et al.'s feedback model
        # was the policy's own base; seed 000 used a strong API model).
        policy = pairs[0].get("model") if pairs else None
        spec = cfg.model or policy or ctx.run_config.model
        seed = ctx.run_config.seed
        ctx.info.update(judge_model=spec, mode=cfg.mode, constitution=constitution.name, resumed_done=len(pairs) - len(todo))
        if todo:
            if cfg.chain_of_thought and cfg.mode == "logprob" and cfg.min_margin > COT_CLAMP[1] - 0.5 + _EPS:
                ctx.console.print(
                    f"judge: chain_of_thought clamps labels to {list(COT_CLAMP)}, so min_margin={cfg.min_margin} drops every pair; "
                    "lower judge.min_margin to at most 0.1."
                )
            model = ctx.models.get(spec)
            ctx.console.print(f"judge: {len(todo)} pairs, {cfg.mode} mode, judged by {spec}")
            with GenProgress("judge", total=len(todo)) as bar:
                for start in range(0, len(todo), cfg.chunk):
                    chunk = todo[start : start + cfg.chunk]
                    ctx.rows.append(self._judge_chunk(model, chunk, cfg, constitution, seed, spec))
                    bar.advance(len(chunk))
        # From every row on disk, so the counts are right after a resume too.
        ctx.info["counts"] = count_rows(ctx.rows)
        ctx.info["calibration"] = calibrate(readings_from_judge_rows(ctx.rows), judge=spec, source="judge stage").to_dict()

    @staticmethod
    def _judge_chunk(
        model: ChatModel, chunk: list[Row], cfg: JudgeConfig, constitution: Constitution, seed: int, spec: str
    ) -> list[Row]:
        # Two identical answers carry no preference: skip the model call for them.
        same = [r["responses"][0]["text"].strip() == r["responses"][1]["text"].strip() for r in chunk]
        live = [r for r, s in zip(chunk, same) if not s]
        judge = judge_logprob if cfg.mode == "logprob" else judge_verdict
        results = iter(judge(model, live, cfg, constitution, seed) if live else [])
        return [
            _row(r, {"identical": True} if s else next(results), cfg, spec, constitution.name)
            for r, s in zip(chunk, same)
        ]
