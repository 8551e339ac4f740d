"""`evaluate`: compare a base and a tuned model on key cases, MT-Bench and safety.

The base defaults to the run's ``model``; the tuned model to the one the run's last
training stage produced (``run:<folder of the last sft, survey_sft, dpo or kto stage>``); the
judge to the run's model. Any of them can be any model spec. The same code runs
outside a pipeline as ``valign eval --base … --tuned … --out DIR`` (`run_evaluation`).

Every unit of work is one row with a stable id, appended as soon as it is done, so a
killed evaluation resumes without redoing or duplicating anything:

* ``keycase-answer:<role>:<case>`` and ``keycase:<case>`` (the judged comparison);
* ``mtbench-answer:<role>:<question>`` (FastChat's answer record in ``record``) and
  ``mtbench-judgment:<role>:<question>:<turn>`` (FastChat's judgment record);
* ``safety:<role>:<set>:<prompt>``;
* ``fidelity:<role>`` (the model's answer distribution on every survey item and its
  distance to the population's, overall and per subgroup; `valign.evaluate.fidelity`).

The stage folder also gets FastChat's files (``mt_bench/model_answer/<name>.jsonl``,
``mt_bench/model_judgment/<judge>_single.jsonl``), and the manifest the summaries the
report reads: key-case counts, MT-Bench means per category and turn, refusal rates.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, ClassVar, Literal, Sequence, TYPE_CHECKING

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr
from rich.console import Console

from valign.errors import ValignError
from valign.evaluate.keycases import KeyCasesConfig
from valign.evaluate.mtbench import MTBenchConfig
from valign.evaluate.safety import SafetyConfig
from valign.runs import RowLog
from valign.stages.base import ModelPool, Stage, StageContext, constitution_file, model_identity
from valign.types import GenConfig, Row

if TYPE_CHECKING:
    from valign.config import RunConfig

__all__ = ["EvaluateConfig", "FidelityConfig", "EvaluateStage", "run_evaluation", "tuned_stage", "SUITES"]

SUITES = ("keycases", "mtbench", "safety", "fidelity")
ROLES = ("base", "tuned")


class FidelityConfig(BaseModel):
    """The survey-fidelity suite: ``items`` is an evaluation set (``eval_items.jsonl`` of
    ``valign survey export``), by default the run's `survey` stage's; ``kinds`` limits
    the item kinds (value, principle, scenario, rating; default all)."""

    model_config = ConfigDict(extra="forbid")

    items: str | None = None
    kinds: list[str] | None = None


class EvaluateConfig(BaseModel):
    """Settings of the `evaluate` stage (and of ``valign eval``).

    Example (YAML):
        evaluate:
          base: null                # the run's model
          tuned: null               # run:<last training stage>; or any spec
          judge: null               # the run's model; e.g. openai:gpt-4o@https://api.openai.com/v1
          suites: [keycases, mtbench, safety]
          keycases: {judge_mode: logprob}
          mtbench: {per_category: 1, max_new_tokens: 128, judge_mode: logprob}
          safety: {red_team: 16}
    """

    model_config = ConfigDict(extra="forbid")

    base: str | None = None
    tuned: str | None = None
    judge: str | None = None
    base_name: str = Field("base", pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    tuned_name: str = Field("tuned", pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    suites: list[Literal["keycases", "mtbench", "safety", "fidelity"]] = Field(default_factory=lambda: ["keycases", "mtbench", "safety"])
    chunk: int = Field(32, ge=1)
    keycases: KeyCasesConfig = Field(default_factory=KeyCasesConfig)
    mtbench: MTBenchConfig = Field(default_factory=MTBenchConfig)
    safety: SafetyConfig = Field(default_factory=SafetyConfig)
    fidelity: FidelityConfig = Field(default_factory=FidelityConfig)
    _base_dir: Path | None = PrivateAttr(default=None)

    def model_post_init(self, context: Any) -> None:
        # Files named in a config are relative to the config's folder.
        base = context.get("base_dir") if isinstance(context, dict) else None
        self._base_dir = Path(base) if base is not None else None
        if self._base_dir is not None:
            for section, key in ((self.keycases, "file"), (self.mtbench, "data"), (self.fidelity, "items")):
                value = getattr(section, key)
                if value and not Path(value).is_absolute() and (self._base_dir / value).exists():
                    setattr(section, key, str((self._base_dir / value).resolve()))

    @property
    def base_dir(self) -> Path | None:
        """The folder relative paths in this config are resolved against."""
        return self._base_dir


def tuned_stage(run_config: RunConfig) -> str:
    """The run's last training stage, whose model is the default `tuned`.

    Example:
        >>> from valign.config import RunConfig
        >>> tuned_stage(RunConfig(name="demo", stages=["respond", "revise", "sft", "pairs", "judge", "dpo", "evaluate"]))
        'dpo'
    """
    trained = run_config.training_stages_before("evaluate")
    if not trained:
        raise ValignError(
            "evaluate compares a tuned model with the base, and this run trains none before it; "
            "put sft, survey_sft, dpo or kto before evaluate in `stages`, or set evaluate.tuned to a model spec."
        )
    return trained[-1]


def _chunks(items: Sequence[Any], size: int) -> list[Sequence[Any]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def _seeded(gen: GenConfig, seed: int) -> GenConfig:
    return gen if gen.seed is not None else gen.model_copy(update={"seed": seed})


def run_evaluation(
    cfg: EvaluateConfig,
    *,
    base: str,
    tuned: str,
    judge: str,
    rows: RowLog,
    models: ModelPool,
    out_dir: Path,
    seed: int = 0,
    constitution: str = "kantian",
    train_prompts: Any = None,
    console: Console | None = None,
    fidelity_items: Path | None = None,
) -> dict[str, Any]:
    """Run the configured suites, appending rows to `rows` (skipping ids already
    there) and writing FastChat's files to `out_dir`; returns the manifest summary.

    Example:
        >>> info = run_evaluation(EvaluateConfig(suites=["safety"]), base="embedded", tuned="run:runs/demo/06-dpo",
        ...                       judge="embedded", rows=RowLog("out/rows.jsonl"), models=ModelPool(None), out_dir=Path("out"))
        >>> info["safety"]["tuned"]["red_team"]["rate"]
        0.25
    """
    from valign.constitution import load_constitution

    console = console or Console(stderr=True)
    specs = {"base": base, "tuned": tuned}
    names = {"base": cfg.base_name, "tuned": cfg.tuned_name}
    if names["base"] == names["tuned"]:
        raise ValignError("evaluate.base_name and evaluate.tuned_name are the same; give the two models different names.")
    info: dict[str, Any] = {"models": {**specs, "judge": judge}, "names": names, "suites": list(cfg.suites), "suite_seconds": {}}
    info["constitution"] = constitution
    for suite in cfg.suites:
        started = time.perf_counter()
        if suite == "keycases":
            info["keycases"] = _keycases(cfg, specs, judge, rows, models, seed, load_constitution(constitution), console)
        elif suite == "mtbench":
            info["mtbench"] = _mtbench(cfg, specs, names, judge, rows, models, out_dir, seed, console)
        elif suite == "fidelity":
            info["fidelity"] = _fidelity(cfg, specs, rows, models, _fidelity_path(cfg, fidelity_items), console)
        else:
            info["safety"] = _safety(cfg, specs, rows, models, train_prompts, console)
        info["suite_seconds"][suite] = round(time.perf_counter() - started, 3)
    info["counts"] = {
        "key cases": (info.get("keycases") or {}).get("cases"),
        "MT-Bench questions": (info.get("mtbench") or {}).get("questions"),
        "safety prompts": sum(c["n"] for c in (info.get("safety") or {}).get("base", {}).values()) if "safety" in info else None,
    }
    info["counts"] = {k: v for k, v in info["counts"].items() if v is not None}
    return info


def _of_type(rows: RowLog, kind: str) -> list[Row]:
    return [r for r in rows if r.get("type") == kind]


def _keycases(cfg: EvaluateConfig, specs: dict[str, str], judge: str, rows: RowLog, models: ModelPool, seed: int, constitution: Any, console: Console) -> dict[str, Any]:
    from valign.evaluate.keycases import answer_rows, judged_rows, load_keycases, summarise_keycases

    kc = cfg.keycases
    cases = load_keycases(kc.file, kc.limit)
    gen = _seeded(kc.gen, seed)
    for role in ROLES:
        todo = [c for c in cases if f"keycase-answer:{role}:{c.id}" not in rows.ids]
        if todo:
            console.print(f"evaluate: key cases, {len(todo)} answers from {role} ({specs[role]})")
            model = models.get(specs[role])
            for chunk in _chunks(todo, cfg.chunk):
                rows.append(answer_rows(model, role, specs[role], chunk, gen))
    todo = [c for c in cases if f"keycase:{c.id}" not in rows.ids]
    if todo:
        answers = {role: {r["case_id"]: r for r in _of_type(rows, "keycase_answer") if r["role"] == role} for role in ROLES}
        console.print(f"evaluate: key cases, {len(todo)} comparisons judged by {judge} ({kc.judge_mode}, both orders)")
        model = models.get(judge)
        for chunk in _chunks(todo, cfg.chunk):
            rows.append(judged_rows(model, judge, chunk, answers, kc, constitution, seed))
    wanted = {f"keycase:{c.id}" for c in cases}
    return {**summarise_keycases([r for r in _of_type(rows, "keycase") if r["id"] in wanted]), "judge_mode": kc.judge_mode}


def _mtbench(
    cfg: EvaluateConfig, specs: dict[str, str], names: dict[str, str], judge: str, rows: RowLog, models: ModelPool, out_dir: Path, seed: int, console: Console
) -> dict[str, Any]:
    from valign.evaluate.mtbench import aggregate, answer_questions, judge_answers, load_mtbench, select_questions, write_fastchat_files

    mc = cfg.mtbench
    data = load_mtbench(mc.data, mc.reference_model)
    questions = select_questions(data.questions, mc.questions, mc.per_category, mc.categories)
    for role in ROLES:
        todo = [q for q in questions if f"mtbench-answer:{role}:{q['question_id']}" not in rows.ids]
        if todo:
            console.print(f"evaluate: MT-Bench, {len(todo)} questions × 2 turns from {role} ({specs[role]})")
            model = models.get(specs[role])
            for chunk in _chunks(todo, cfg.chunk):
                recs = answer_questions(model, chunk, names[role], mc.max_new_tokens, seed)
                rows.append(
                    {"id": f"mtbench-answer:{role}:{r['question_id']}", "type": "mtbench_answer", "role": role, "model": specs[role], "record": r}
                    for r in recs
                )
    answers = {role: {r["record"]["question_id"]: r["record"] for r in _of_type(rows, "mtbench_answer") if r["role"] == role} for role in ROLES}
    judge_model = None
    for role in ROLES:
        todo = [q for q in questions if not {f"mtbench-judgment:{role}:{q['question_id']}:{t}" for t in (1, 2)} <= rows.ids]
        if not todo:
            continue
        console.print(f"evaluate: MT-Bench, judging {len(todo)} of {role}'s answers with {judge} ({mc.judge_mode})")
        judge_model = judge_model or models.get(judge)
        for chunk in _chunks(todo, cfg.chunk):
            recs = judge_answers(judge_model, judge, chunk, answers[role], data, names[role], mc.judge_mode, mc.judge_gen, seed)
            rows.append(
                {"id": f"mtbench-judgment:{role}:{r['question_id']}:{r['turn']}", "type": "mtbench_judgment", "role": role, "record": r}
                for r in recs
            )
    wanted = {q["question_id"] for q in questions}
    judgments = [r["record"] for r in _of_type(rows, "mtbench_judgment") if r["record"]["question_id"] in wanted]
    files = write_fastchat_files(
        out_dir, {names[role]: [a for q, a in answers[role].items() if q in wanted] for role in ROLES}, judgments, judge
    )
    return {
        "questions": len(questions),
        "question_ids": sorted(wanted),
        "judge_mode": mc.judge_mode,
        "judge": judge,
        "results": aggregate(judgments),
        "files": {k: str(Path(v).relative_to(out_dir)) for k, v in files.items()},
    }


def _safety(cfg: EvaluateConfig, specs: dict[str, str], rows: RowLog, models: ModelPool, train_prompts: Any, console: Console) -> dict[str, Any]:
    from valign.evaluate.safety import refusal_rates, safety_prompts, safety_rows

    prompts = safety_prompts(cfg.safety, train_prompts, cfg.base_dir)
    for role in ROLES:
        todo = [p for p in prompts if f"safety:{role}:{p['set']}:{p['id']}" not in rows.ids]
        if todo:
            console.print(f"evaluate: safety, {len(todo)} prompts for {role} ({specs[role]})")
            model = models.get(specs[role])
            for chunk in _chunks(todo, cfg.chunk):
                rows.append(safety_rows(model, role, specs[role], chunk, cfg.safety.gen))
    wanted = {f"safety:{role}:{p['set']}:{p['id']}" for role in ROLES for p in prompts}
    return refusal_rates([r for r in _of_type(rows, "safety") if r["id"] in wanted])


def _fidelity_path(cfg: EvaluateConfig, default: Path | None) -> Path:
    if cfg.fidelity.items:
        return Path(cfg.fidelity.items)
    if default is None:
        raise ValignError("the fidelity suite needs survey items: add a `survey` stage before evaluate, or set evaluate.fidelity.items to an eval_items.jsonl.")
    return default


def _fidelity(cfg: EvaluateConfig, specs: dict[str, str], rows: RowLog, models: ModelPool, path: Path, console: Console) -> dict[str, Any]:
    from valign.evaluate.fidelity import score_fidelity
    from valign.survey.opinion import read_items

    items = [i for i in read_items(path) if cfg.fidelity.kinds is None or i.kind in cfg.fidelity.kinds]
    if not items:
        raise ValignError(f"{path} has no items of kinds {cfg.fidelity.kinds}; check evaluate.fidelity.kinds.")
    for role in ROLES:
        if f"fidelity:{role}" not in rows.ids:
            console.print(f"evaluate: survey fidelity, {len(items)} items for {role} ({specs[role]})")
            result = score_fidelity(models.get(specs[role]), items, specs[role])
            rows.append([{"id": f"fidelity:{role}", "type": "fidelity", "role": role, "model": specs[role], **result.to_dict()}])
    found = {r["role"]: r for r in _of_type(rows, "fidelity")}
    return {"items": len(items), "kinds": sorted({i.kind for i in items}), **{role: found[role]["summary"] for role in ROLES}}


def describe_evaluation(
    cfg: EvaluateConfig, base: str, tuned: str, judge: str, seed: int, constitution: str, train_prompts: Any, fidelity_items: Path | None = None
) -> dict[str, Any]:
    """Everything that determines an evaluation's output, for its fingerprint.

    Example:
        >>> describe_evaluation(EvaluateConfig(suites=["safety"]), "embedded", "run:x", "embedded", 0, "kantian", None)["judge"]
        'embedded'
    """
    from valign.constitution import load_constitution
    from valign.evaluate.keycases import keycases_digest, load_keycases
    from valign.evaluate.mtbench import load_mtbench, select_questions
    from valign.evaluate.pairwise import templates_digest
    from valign.evaluate.refusal import NOT_REFUSALS, REFUSAL_PHRASES, REFUSAL_PREFIXES
    from valign.evaluate.safety import prompts_digest, safety_prompts

    out: dict[str, Any] = {
        "config": cfg.model_dump(mode="json"),
        "base": model_identity(base),
        "tuned": model_identity(tuned),
        "judge": model_identity(judge),
        "seed": seed,
        "refusal_rules": [REFUSAL_PREFIXES, REFUSAL_PHRASES, NOT_REFUSALS],
    }
    if "keycases" in cfg.suites:
        out["keycases"] = keycases_digest(load_keycases(cfg.keycases.file, cfg.keycases.limit))
        out["constitution"] = load_constitution(constitution).fingerprint()
        out["templates"] = templates_digest()
    if "mtbench" in cfg.suites:
        mc = cfg.mtbench
        data = load_mtbench(mc.data, mc.reference_model)
        # An unknown category is refused here, before any model is loaded, not after the key cases ran.
        select_questions(data.questions, mc.questions, mc.per_category, mc.categories)
        out["mtbench"] = data.digest()
    if "safety" in cfg.suites:
        out["safety"] = prompts_digest(safety_prompts(cfg.safety, train_prompts, cfg.base_dir))
    if "fidelity" in cfg.suites and cfg.fidelity.items:
        import hashlib

        path = Path(cfg.fidelity.items)
        out["fidelity_items"] = hashlib.sha256(path.read_bytes()).hexdigest() if path.exists() else str(path)
    return out


def evaluate_outside_pipeline(
    settings: dict[str, Any],
    overrides: Sequence[str],
    *,
    base: str,
    tuned: str,
    judge: str,
    out: Path,
    seed: int = 0,
    constitution: str = "kantian",
    console: Console | None = None,
) -> dict[str, Any]:
    """What ``valign eval`` runs: an `EvaluateConfig` from settings and ``key=value``
    overrides, rows and a completion cache in ``out``, resumed when the settings are
    unchanged and restarted when they differ; returns the manifest's summary.

    Example:
        >>> evaluate_outside_pipeline({"suites": ["safety"]}, ["safety.red_team=4"], base="embedded",
        ...                           tuned="run:runs/demo/06-dpo", judge="embedded", out=Path("eval-out"))["safety"]["base"]
        {'red_team': {...}, 'benign_edgy': {...}}
    """
    from pydantic import ValidationError

    from valign.cache import CompletionCache
    from valign.errors import ConfigError
    from valign.overrides import apply_override
    from valign.runs import StageDir, fingerprint

    data = dict(settings)
    for item in overrides:
        apply_override(data, item)
    try:
        cfg = EvaluateConfig.model_validate(data, context={"base_dir": Path.cwd()})
    except ValidationError as e:
        first = e.errors()[0]
        loc = ".".join(str(p) for p in first["loc"])
        raise ConfigError(f"evaluate setting '{loc}': {first['msg']} (got {first.get('input')!r}); fix it with --set {loc}=….") from None
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not ((out / "started.json").exists() or (out / "manifest.json").exists()):
        raise ValignError(f"{out} already holds other files; give --out a new or empty folder (valign eval may clear it).")
    fp = fingerprint("evaluate", describe_evaluation(cfg, base, tuned, judge, seed, constitution, None), {})
    sdir = StageDir(out)
    started = time.perf_counter()
    rows = sdir.begin(fp) if not sdir.is_done(fp) else RowLog(sdir.rows_path)
    cache = CompletionCache(out / "cache.sqlite")
    try:
        info = run_evaluation(
            cfg, base=base, tuned=tuned, judge=judge, rows=rows, models=ModelPool(cache), out_dir=out,
            seed=seed, constitution=constitution, console=console,
        )
    finally:
        cache.close()
    info.setdefault("counts", {})["rows"] = len(rows)
    sdir.finish(fp, {"stage": "evaluate", "seconds": round(time.perf_counter() - started, 3), **info})
    return info


class EvaluateStage(Stage):
    """Key cases, MT-Bench and safety, base vs tuned. Example: ``stages: [..., dpo, evaluate, report]``."""

    name: ClassVar[str] = "evaluate"
    config_class = EvaluateConfig
    reads_constitution = True

    def inputs(self, run_config: RunConfig) -> list[str]:
        # A named tuned model (e.g. the DPO adapter served by vLLM) still comes from the
        # run's training when there is one: depend on it so retraining re-evaluates.
        if run_config.evaluate.tuned:
            deps = run_config.training_stages_before(self.name)[-1:]
        else:
            deps = [tuned_stage(run_config)]
        if _uses_survey(run_config):
            deps.append("survey")  # its items (fidelity) and its constitution (key cases)
        return deps

    def describe(self, run_config: RunConfig) -> dict[str, Any]:
        cfg: EvaluateConfig = run_config.evaluate
        return describe_evaluation(
            cfg,
            cfg.base or run_config.model,
            cfg.tuned or f"stage:{tuned_stage(run_config)}",  # its model is covered by the input's fingerprint
            cfg.judge or run_config.model,
            run_config.seed,
            constitution_file(run_config),
            run_config.respond.prompts,
        )

    def run(self, ctx: StageContext) -> None:
        cfg: EvaluateConfig = ctx.config
        rc = ctx.run_config
        tuned = cfg.tuned or f"run:{ctx.input_dirs[tuned_stage(rc)]}"
        ctx.info.update(
            run_evaluation(
                cfg,
                base=cfg.base or rc.model,
                tuned=tuned,
                judge=cfg.judge or rc.model,
                rows=ctx.rows,
                models=ctx.models,
                out_dir=ctx.dir,
                seed=rc.seed,
                constitution=constitution_file(rc),
                train_prompts=rc.respond.prompts,
                console=ctx.console,
                fidelity_items=ctx.input_dirs["survey"] / "eval_items.jsonl" if "survey" in ctx.input_dirs else None,
            )
        )


def _uses_survey(run_config: RunConfig) -> bool:
    """The run has a survey stage before evaluate, and evaluate reads its items or constitution."""
    stages = list(run_config.stages)
    if "survey" not in stages or "evaluate" not in stages or stages.index("survey") > stages.index("evaluate"):
        return False
    cfg: EvaluateConfig = run_config.evaluate
    return ("fidelity" in cfg.suites and not cfg.fidelity.items) or run_config.constitution == "survey"


