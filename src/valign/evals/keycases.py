"""Key cases: moral and autonomy prompts answered by two models and graded side by side.

The shipped set (``data/keycases/kantian.jsonl``, written for valign) holds prompts
about lying, deception, manipulation, coercion, paternalism, autonomy near self-harm,
beneficence, honesty against kindness and more, each tagged with the ids of the
principles of the ``kantian`` constitution it probes and a note on what a good answer
does. Seed 000's authors graded 16 such cases by hand; here a pairwise judge grades
each case on the five-level scale in both orders (`valign.evals.pairwise`), and
each answer is checked for refusal by the rule-based detector and, in generative
mode, by the judge's own "Refused:" label.

A key-case file is JSONL with ``id``, ``prompt``, ``principles`` (ids) and optional
``theme`` and ``note``.

As a suite (`SUITE`): rows ``keycase-answer:<role>:<case>`` (each model's answer) and
``keycase:<case>`` (the judged comparison); the summary counts improvements and
regressions by level (`summarise_keycases`) and carries the judge's calibration on
the cases (``calibration``: position bias, order flips, ties, length bias; see
`valign.evals.calibration`).

Example:
    >>> cases = load_keycases()
    >>> len(cases) >= 24, cases[0].principles[:1]
    (True, ['beneficence'])
"""

from __future__ import annotations

import hashlib
import json
from importlib import resources
from pathlib import Path
from typing import Any, Sequence

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from valign.constitution import Constitution, load_constitution
from valign.errors import ValignError
from valign.evals.calibration import calibrate, readings_from_keycase_rows
from valign.evals.pairwise import PairItem, PairwiseConfig, PairwiseResult, describe_score, judge_pairwise, templates_digest
from valign.evals.classifiers import ClassifierConfig, RefusalClassifier
from valign.evals.refusal import answers_with_refusals
from valign.evals.rundata import RunData
from valign.evals.section import ReportEnv, Section
from valign.evals.suite import ROLES, Suite, SuiteRun, SuiteSetup
from valign.evals.suite_classifier import LazyClassifier, classifier_field, classifier_fingerprint
from valign.models.base import ChatModel
from valign.types import GenConfig, Row, keep_gen_defaults

__all__ = [
    "keycases_section",
    "KeyCase",
    "KeyCasesConfig",
    "load_keycases",
    "keycases_digest",
    "principles_text",
    "answer_rows",
    "judged_rows",
    "summarise_keycases",
    "IMPROVEMENT_LEVELS",
    "describe_keycases",
    "run_keycases",
    "SUITE",
]

SHIPPED = "kantian"
IMPROVEMENT_LEVELS = ("strong", "moderate", "slight", "none")


class KeyCase(BaseModel):
    """One key case.

    Example:
        >>> KeyCase(id="white-lie", prompt="Should I say I love the gift?", principles=["no-lying"]).theme
        ''
    """

    model_config = ConfigDict(extra="ignore")

    id: str = Field(..., min_length=1)
    prompt: str = Field(..., min_length=1)
    principles: list[str] = Field(default_factory=list)
    theme: str = ""
    note: str = ""


class KeyCasesConfig(PairwiseConfig):
    """Settings of the key-case evaluation (``evaluate.keycases``).

    Example (YAML):
        keycases:
          file: null                  # the shipped set; or a JSONL path
          limit: null                 # all cases
          gen: {temperature: 0.0, max_new_tokens: 512}
          judge_mode: generative      # logprob for small local judges
          classifier: rules           # what reads refusals: or judge:<spec>, guard:<spec>…
    """

    file: str | None = None
    limit: int | None = Field(None, ge=1)
    classifier: ClassifierConfig = classifier_field()
    gen: GenConfig = Field(default_factory=lambda: GenConfig(temperature=0.0, max_new_tokens=512))
    _answer_gen_defaults = field_validator("gen", mode="before")(keep_gen_defaults)  # PairwiseConfig keeps its own for judge_gen


def _path(file: str | Path | None) -> Path:
    if file is None:
        return Path(str(resources.files("valign") / "data" / "keycases" / f"{SHIPPED}.jsonl"))
    path = Path(file).expanduser()
    if not path.is_file():
        raise ValignError(f"key-case file {path} does not exist; give a JSONL file with id, prompt and principles per line.")
    return path


def load_keycases(file: str | Path | None = None, limit: int | None = None) -> list[KeyCase]:
    """The key cases of a JSONL file (the shipped set by default), in file order.

    Example:
        >>> [c.id for c in load_keycases(limit=2)]
        ['lottery-winnings', 'homework-excuses']
    """
    path = _path(file)
    cases: list[KeyCase] = []
    seen: set[str] = set()
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            case = KeyCase.model_validate(json.loads(line))
        except (json.JSONDecodeError, ValidationError) as e:
            what = "is not valid JSON" if isinstance(e, json.JSONDecodeError) else f"is not a key case ({e.errors()[0]['loc'][0]}: {e.errors()[0]['msg']})"
            raise ValignError(f"{path} line {n} {what}; each line needs id, prompt and principles.") from None
        if case.id in seen:
            raise ValignError(f"{path} line {n}: the id '{case.id}' is used twice; give every case its own id.")
        seen.add(case.id)
        cases.append(case)
    if not cases:
        raise ValignError(f"{path} holds no key cases; add lines with id, prompt and principles.")
    return cases[:limit]


def keycases_digest(cases: Sequence[KeyCase]) -> str:
    """SHA-256 of the cases, for the stage fingerprint.

    Example:
        >>> len(keycases_digest(load_keycases(limit=1)))
        64
    """
    return hashlib.sha256(json.dumps([c.model_dump() for c in cases], sort_keys=True).encode()).hexdigest()


def principles_text(case: KeyCase, constitution: Constitution) -> str:
    """The principles the judge is shown for a case: the tagged ones the constitution
    has, or the whole constitution when it has none of them (another constitution).

    Example:
        >>> principles_text(load_keycases(limit=1)[0], load_constitution("kantian")).startswith("- ")
        True
    """
    by_id = {p.id: p for p in constitution.principles}
    chosen = [by_id[i] for i in case.principles if i in by_id] or list(constitution.principles)
    return "\n".join(f"- {p.title + ': ' if p.title else ''}{p.text}" for p in chosen)


def answer_rows(model: ChatModel, role: str, spec: str, cases: Sequence[KeyCase], gen: GenConfig, classifier: RefusalClassifier | None = None) -> list[Row]:
    """One model's answers to the cases, each read by the refusal classifier (the rules
    unless another is given).

    Example (loads the embedded model)::

        answer_rows(load_model("embedded"), "base", "embedded", load_keycases(limit=1), GenConfig(max_new_tokens=32))[0]["id"]
        'keycase-answer:base:lottery-winnings'
    """
    answers = answers_with_refusals(model, [[{"role": "user", "content": c.prompt}] for c in cases], gen, role, spec, classifier)
    return [{"id": f"keycase-answer:{role}:{c.id}", "type": "keycase_answer", "case_id": c.id, **a} for c, a in zip(cases, answers)]


def judged_rows(
    judge: ChatModel,
    judge_spec: str,
    cases: Sequence[KeyCase],
    answers: dict[str, dict[str, Row]],
    cfg: PairwiseConfig,
    constitution: Constitution,
    seed: int = 0,
) -> list[Row]:
    """Grade tuned (X) against base (Y) on each case, both orders, and merge refusals.

    ``answers`` maps role (``base``, ``tuned``) → case id → answer row.

    Example (with a judge model and both models' answer rows)::

        rows = judged_rows(judge, "embedded", cases, {"base": base_rows, "tuned": tuned_rows},
                           PairwiseConfig(judge_mode="logprob"), load_constitution("kantian"))
        rows[0]["improvement"] in ("none", "slight", "moderate", "strong")
        True
    """
    items = [
        PairItem(
            prompt=c.prompt,
            x=answers["tuned"][c.id]["response"],
            y=answers["base"][c.id]["response"],
            principles=principles_text(c, constitution),
            key=c.id,
        )
        for c in cases
    ]
    results = judge_pairwise(judge, items, cfg, seed)
    return [_judged_row(c, answers["base"][c.id], answers["tuned"][c.id], r, cfg, judge_spec) for c, r in zip(cases, results)]


def _judged_row(case: KeyCase, base: Row, tuned: Row, res: PairwiseResult, cfg: PairwiseConfig, judge_spec: str) -> Row:
    judged = res.to_dict()
    # The judge labels X (tuned) and Y (base); the detector's finding counts as well.
    judge_ref = judged.pop("judge_refused")
    return {
        "id": f"keycase:{case.id}",
        "type": "keycase",
        "case_id": case.id,
        "prompt": case.prompt,
        "theme": case.theme,
        "principles": case.principles,
        "note": case.note,
        "base_model": base["model"],
        "tuned_model": tuned["model"],
        "base_response": base["response"],
        "tuned_response": tuned["response"],
        "base_refused": bool(base["refused"] or judge_ref["y"]),
        "tuned_refused": bool(tuned["refused"] or judge_ref["x"]),
        "refusal_sources": {
            "base": {"detector": base["refused"], "rule": base.get("refusal_rule"), "judge": judge_ref["y"]},
            "tuned": {"detector": tuned["refused"], "rule": tuned.get("refusal_rule"), "judge": judge_ref["x"]},
        },
        "judge_model": judge_spec,
        "judge_mode": cfg.judge_mode,
        **judged,
        "verdict": describe_score(res.score, "tuned", "base") if res.score is not None else "unparsed",
    }


def summarise_keycases(rows: Sequence[Row]) -> dict[str, Any]:
    """Counts over judged key cases: improvements and regressions by level, ties,
    inconsistent orders, unparsed verdicts and refusals by either model.

    Example:
        >>> summarise_keycases([{"type": "keycase", "score": 1.0, "improvement": "moderate", "regression": "none",
        ...                      "consistent": True, "base_refused": True, "tuned_refused": False}])["improved"]
        {'strong': 0, 'moderate': 1, 'slight': 0}
    """
    judged = [r for r in rows if r.get("type", "keycase") == "keycase"]
    parsed = [r for r in judged if r.get("score") is not None]
    out: dict[str, Any] = {
        "cases": len(judged),
        "parsed": len(parsed),
        "unparsed": len(judged) - len(parsed),
        "improved": {lv: sum(r["improvement"] == lv for r in parsed) for lv in IMPROVEMENT_LEVELS[:3]},
        "regressed": {lv: sum(r["regression"] == lv for r in parsed) for lv in IMPROVEMENT_LEVELS[:3]},
        "ties": sum(r["score"] == 0 for r in parsed),
        "inconsistent_orders": sum(r.get("consistent") is False for r in parsed),
        "base_refused": sum(bool(r.get("base_refused")) for r in judged),
        "tuned_refused": sum(bool(r.get("tuned_refused")) for r in judged),
        "tuned_answered_where_base_refused": sum(bool(r.get("base_refused")) and not r.get("tuned_refused") for r in judged),
    }
    out["mean_score"] = round(sum(r["score"] for r in parsed) / len(parsed), 4) if parsed else None
    return out


# --------------------------------------------------------------------------- the suite


def describe_keycases(setup: SuiteSetup) -> dict[str, Any]:
    """The cases, the constitution and the judge's templates, for the fingerprint."""
    kc: KeyCasesConfig = setup.settings
    return {
        "keycases": keycases_digest(load_keycases(kc.file, kc.limit)),
        "constitution": load_constitution(setup.constitution).fingerprint(),
        "templates": templates_digest(),
        **classifier_fingerprint("keycases", kc.classifier),
    }


def run_keycases(ctx: SuiteRun) -> dict[str, Any]:
    """Both models answer every case, then the judge compares each pair in both orders."""
    kc: KeyCasesConfig = ctx.settings
    cases = load_keycases(kc.file, kc.limit)
    constitution = load_constitution(ctx.constitution)
    gen = ctx.seeded(kc.gen)
    classifier = LazyClassifier(kc.classifier, ctx.models)
    ctx.answer_missing(
        cases,
        lambda role, case: f"keycase-answer:{role}:{case.id}",
        lambda model, role, chunk: answer_rows(model, role, ctx.specs[role], chunk, gen, classifier.get()),
        "key cases, {n} answers from {role} ({spec})",
    )
    todo = [c for c in cases if f"keycase:{c.id}" not in ctx.rows.ids]
    if todo:
        answers = {role: {r["case_id"]: r for r in ctx.rows_of("keycase_answer") if r["role"] == role} for role in ROLES}
        ctx.console.print(f"evaluate: key cases, {len(todo)} comparisons judged by {ctx.judge} ({kc.judge_mode}, both orders)")
        judge = ctx.models.get(ctx.judge)
        for chunk in ctx.chunks(todo):
            ctx.rows.append(judged_rows(judge, ctx.judge, chunk, answers, kc, constitution, ctx.seed))
    wanted = {f"keycase:{c.id}" for c in cases}
    judged = [r for r in ctx.rows_of("keycase") if r["id"] in wanted]
    # The judge's own reliability on these comparisons (both orders): position bias, flips, ties, length.
    calibration = calibrate(readings_from_keycase_rows(judged), judge=ctx.judge, source="key cases").to_dict()
    return {**summarise_keycases(judged), "judge_mode": kc.judge_mode, "calibration": calibration}


# -- the report section ---------------------------------------------------------------


def keycases_section(run: RunData, env: ReportEnv) -> Section | None:
    """Key cases side by side: the two answers, the verdict, the improvement, refusals,
    and the reviewers' verdicts beside the judge's when grades were exported to the run
    (`valign.review.section`)."""
    ev = run.manifest("evaluate") or {}
    summary = ev.get("keycases")
    cases = [r for r in run.rows("evaluate") if r.get("type") == "keycase"]
    if not summary or not cases:
        return None
    constitution = run.constitution()
    titles = {p.id: p.title or p.id for p in constitution.principles} if constitution is not None else {}
    answers = [r for r in run.rows("evaluate") if r.get("type") == "keycase_answer"]
    classifiers = sorted({r.get("classifier") or "rules" for r in answers}) or ["rules"]
    from valign.review.section import human_verdicts  # people's grades, when `valign review export` put them in the run

    human = human_verdicts(run, cases)
    return Section(
        "keycases",
        "Key cases",
        env.render("keycases.html.j2", summary=summary, cases=cases, titles=titles, models=ev.get("models") or {}, classifiers=classifiers, human=human),
    )


SUITE = Suite(
    name="keycases",
    config=KeyCasesConfig,
    describe=describe_keycases,
    run=run_keycases,
    counts=lambda summary: {"key cases": summary.get("cases")},
    section=keycases_section,
    inspect_task="valign.evals.keycases_task:keycases",
    paths=("file",),
    preflight=lambda kc: load_keycases(kc.file, kc.limit),
)
