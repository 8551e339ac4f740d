"""`evaluate`: compare a base and a tuned model on the evaluation suites.

The suites (key cases, MT-Bench, safety, survey fidelity, and the opt-in safety
benchmarks XSTest, OR-Bench, StrongREJECT and HarmBench) are declared in
`valign.evals.suites`; ``evaluate.suites`` names the ones to run, and each has its
settings under its own name (``evaluate.keycases``, …).

The base defaults to the run's ``model``; the tuned model to the one the run's last
training stage produced (``run:<folder of the last sft, survey_sft, dpo or kto stage>``); the
judge to the run's model. Any of them can be any model spec. The same code runs
outside a pipeline as ``valign eval --base … --tuned … --out DIR`` (`run_evaluation`).

Every unit of work is one row with a stable id, appended as soon as it is done, so a
killed evaluation resumes without redoing or duplicating anything (each suite's module
names its rows). The manifest gets each suite's summary under the suite's name, the
seconds each took, and the data counts the report shows.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Mapping, Sequence

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, create_model, field_validator
from rich.console import Console

from valign.errors import ValignError
from valign.evals.suite import Suite, SuiteRun, SuiteSetup
from valign.evals.suites import SUITES, unknown_suite
from valign.runs import RowLog
from valign.stages.base import ModelPool, Stage, StageContext, constitution_file, model_identity

if TYPE_CHECKING:
    from valign.config import RunConfig

__all__ = ["EvaluateSettings", "EvaluateConfig", "evaluate_config", "EvaluateStage", "run_evaluation", "describe_evaluation", "tuned_stage"]

_NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"


class EvaluateSettings(BaseModel):
    """Settings of the `evaluate` stage (and of ``valign eval``); `EvaluateConfig` adds
    one field per suite, its settings.

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
    suite_registry: ClassVar[Mapping[str, Suite]] = {}  # set by `evaluate_config`

    base: str | None = None
    tuned: str | None = None
    judge: str | None = None
    base_name: str = Field("base", pattern=_NAME)
    tuned_name: str = Field("tuned", pattern=_NAME)
    suites: list[str] = Field(default_factory=list)
    chunk: int = Field(32, ge=1)
    _base_dir: Path | None = PrivateAttr(default=None)

    @field_validator("suites")
    @classmethod
    def _known_suites(cls, names: list[str]) -> list[str]:
        for name in names:
            if name not in cls.suite_registry:
                raise ValueError(unknown_suite(name, cls.suite_registry))
        return names

    def model_post_init(self, context: Any) -> None:
        # Files named in a config are relative to the config's folder. Only their
        # existence is checked here: validating a config never reads them.
        base = context.get("base_dir") if isinstance(context, dict) else None
        self._base_dir = Path(base) if base is not None else None
        if self._base_dir is None:
            return
        for name, suite in self.suite_registry.items():
            section = getattr(self, name)
            for key in suite.paths:
                value = getattr(section, key)
                if value and not Path(value).is_absolute() and (self._base_dir / value).exists():
                    setattr(section, key, str((self._base_dir / value).resolve()))

    @property
    def base_dir(self) -> Path | None:
        """The folder relative paths in this config are resolved against."""
        return self._base_dir


def evaluate_config(suites: Mapping[str, Suite] = SUITES) -> type[EvaluateSettings]:
    """The config class of an evaluation over these suites: `EvaluateSettings`, a
    settings field per suite, and ``suites`` limited to their names (by default the
    suites marked `Suite.default`).

    Example:
        >>> cfg = evaluate_config()(suites=["safety"], safety={"red_team": 4})
        >>> cfg.safety.red_team, cfg.keycases.limit
        (4, None)
    """
    fields: dict[str, Any] = {name: (s.config, Field(default_factory=s.config)) for name, s in suites.items()}
    defaults = [name for name, s in suites.items() if s.default]
    cls = create_model(
        "EvaluateConfig",
        __base__=EvaluateSettings,
        __module__=__name__,
        __doc__=EvaluateSettings.__doc__,
        suites=(list[str], Field(default_factory=lambda: list(defaults))),
        **fields,
    )
    cls.suite_registry = dict(suites)
    return cls


EvaluateConfig = evaluate_config()


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


def _setup(cfg: EvaluateSettings, base: str, tuned: str, judge: str, seed: int, constitution: str, train_prompts: Any, survey_items: Path | None) -> dict[str, Any]:
    """What every suite's `SuiteSetup` shares: all but its own settings."""
    return {
        "specs": {"base": base, "tuned": tuned},
        "names": {"base": cfg.base_name, "tuned": cfg.tuned_name},
        "judge": judge,
        "seed": seed,
        "constitution": constitution,
        "train_prompts": train_prompts,
        "base_dir": cfg.base_dir,
        "survey_items": survey_items,
        "chunk": cfg.chunk,
    }


def run_evaluation(
    cfg: EvaluateSettings,
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
    """Run the configured suites in order, appending rows to `rows` (skipping ids
    already there) and writing their files to `out_dir`; returns the manifest summary:
    the models, each suite's summary under its name, its seconds, and the data counts.

    Example (scripted models, as in ``tests/test_eval_stage.py``)::

        info = run_evaluation(EvaluateConfig(suites=["safety"]), base="base", tuned="tuned", judge="judge",
                              rows=RowLog(out / "rows.jsonl"), models=pool, out_dir=out)
        info["safety"]["tuned"]["red_team"]["rate"]   # 0.25
    """
    console = console or Console(stderr=True)
    if cfg.base_name == cfg.tuned_name:
        raise ValignError("evaluate.base_name and evaluate.tuned_name are the same; give the two models different names.")
    shared = _setup(cfg, base, tuned, judge, seed, constitution, train_prompts, fidelity_items)
    info: dict[str, Any] = {"models": {**shared["specs"], "judge": judge}, "names": shared["names"], "suites": list(cfg.suites), "suite_seconds": {}}
    info["constitution"] = constitution
    for name in cfg.suites:
        started = time.perf_counter()
        ctx = SuiteRun(settings=getattr(cfg, name), rows=rows, models=models, out_dir=out_dir, console=console, **shared)
        info[name] = cfg.suite_registry[name].run(ctx)
        info["suite_seconds"][name] = round(time.perf_counter() - started, 3)
    counts = [suite.counts(info[name]) for name, suite in cfg.suite_registry.items() if name in info]
    info["counts"] = {k: v for c in counts for k, v in c.items() if v is not None}
    return info


def describe_evaluation(
    cfg: EvaluateSettings, base: str, tuned: str, judge: str, seed: int, constitution: str, train_prompts: Any, fidelity_items: Path | None = None
) -> dict[str, Any]:
    """Everything that determines an evaluation's output, for its fingerprint: the
    config, the models, the refusal rules, and what each configured suite adds.

    Example:
        >>> d = describe_evaluation(EvaluateConfig(suites=["safety"]), "embedded", "run:x", "embedded", 0, "kantian", None)
        >>> d["judge"], sorted(d)
        ('embedded', ['base', 'config', 'judge', 'refusal_rules', 'safety', 'seed', 'tuned'])
    """
    from valign.evals.refusal import NOT_REFUSALS, REFUSAL_PHRASES, REFUSAL_PREFIXES

    out: dict[str, Any] = {
        "config": cfg.model_dump(mode="json", exclude=_described_elsewhere(cfg)),
        "base": model_identity(base),
        "tuned": model_identity(tuned),
        "judge": model_identity(judge),
        "seed": seed,
        "refusal_rules": [REFUSAL_PREFIXES, REFUSAL_PHRASES, NOT_REFUSALS],
    }
    shared = _setup(cfg, base, tuned, judge, seed, constitution, train_prompts, fidelity_items)
    for name in cfg.suites:
        out.update(cfg.suite_registry[name].describe(SuiteSetup(settings=getattr(cfg, name), **shared)))
    return out


def _described_elsewhere(cfg: EvaluateSettings) -> dict[str, Any]:
    """The settings the config's dump leaves to others in the fingerprint: a suite's
    ``classifier`` (the suite's describe adds it unless it is the rules, which
    ``refusal_rules`` covers), and the settings of suites that do not run and say
    their idle settings do not count (`Suite.idle_settings_in_fingerprint`).

    Example:
        >>> _described_elsewhere(EvaluateConfig(suites=["safety"]))["safety"]
        {'classifier'}
    """
    out: dict[str, Any] = {}
    for name, suite in cfg.suite_registry.items():
        if name not in cfg.suites and not suite.idle_settings_in_fingerprint:
            out[name] = True
        elif "classifier" in suite.config.model_fields:
            out[name] = {"classifier"}
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

    Example (loads the embedded model, writes eval-out/)::

        evaluate_outside_pipeline({"suites": ["safety"]}, ["safety.red_team=4"], base="embedded",
                                  tuned="run:runs/demo/06-dpo", judge="embedded", out=Path("eval-out"))["safety"]["base"]
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
    """The evaluation suites, base vs tuned. Example: ``stages: [..., dpo, evaluate, report]``."""

    name: ClassVar[str] = "evaluate"
    config_class = EvaluateConfig
    reads_constitution = True

    def preflight(self, run_config: RunConfig) -> None:
        cfg: EvaluateSettings = run_config.evaluate
        for name in cfg.suites:
            cfg.suite_registry[name].preflight(getattr(cfg, name))

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


