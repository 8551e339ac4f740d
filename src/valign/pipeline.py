"""Runs a config's stages in order, skipping finished ones and resuming interrupted ones.

Example:
    >>> from valign.config import load_config
    >>> run_pipeline(load_config("configs/kantian-demo.yaml"))
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import yaml
from rich.console import Console

from valign.cache import CompletionCache
from valign.config import RunConfig
from valign.errors import ValignError
from valign.runs import StageDir, fingerprint
from valign.stages.base import ModelPool, Stage, StageContext, stage_folder
from valign.stages.evaluate import EvaluateStage
from valign.stages.judge import JudgeStage
from valign.stages.pairs import PairsStage
from valign.stages.preference import DPOStage, KTOStage
from valign.stages.report import ReportStage
from valign.stages.respond import RespondStage
from valign.stages.revise import ReviseStage
from valign.stages.sft import SFTStage
from valign.stages.survey import SurveyStage
from valign.stages.survey_sft import SurveySFTStage

STAGES: dict[str, Stage] = {
    s.name: s
    for s in (
        SurveyStage(), RespondStage(), ReviseStage(), SFTStage(), SurveySFTStage(), PairsStage(), JudgeStage(),
        DPOStage(), KTOStage(), EvaluateStage(), ReportStage(),
    )
}


@dataclass
class StageOutcome:
    name: str
    dir: Path
    status: str  # "ran", "resumed", "skipped"
    rows: int
    seconds: float


def stage_dirs(cfg: RunConfig) -> dict[str, StageDir]:
    """The folder of each stage: ``runs/<name>/<NN>-<stage>``."""
    return {name: StageDir(stage_folder(cfg, name)) for name in cfg.stages}


def run_pipeline(
    cfg: RunConfig,
    *,
    only: str | None = None,
    start_from: str | None = None,
    console: Console | None = None,
) -> list[StageOutcome]:
    """Run the stages of `cfg`.

    ``only`` runs one stage (its inputs must be finished); ``start_from`` re-runs that
    stage and every later one from scratch, keeping earlier finished stages.
    """
    console = console or Console(stderr=True)
    for flag, value in (("--only", only), ("--from", start_from)):
        if value is not None and value not in cfg.stages:
            raise ValignError(f"{flag} {value}: no such stage in this run; its stages are {', '.join(cfg.stages)}.")
    cfg.run_dir.mkdir(parents=True, exist_ok=True)
    (cfg.run_dir / "config.yaml").write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
    cache = CompletionCache(cfg.run_dir / "cache.sqlite") if cfg.cache else None
    models = ModelPool(cache, cfg.backends.for_spec)
    dirs = stage_dirs(cfg)
    fps: dict[str, str] = {}
    outcomes: list[StageOutcome] = []
    forcing = False
    for name in cfg.stages:
        if only is not None and only in fps:
            break  # later stages need no fingerprint (theirs may read files --only has not made yet)
        stage = STAGES[name]
        sdir = dirs[name]
        inputs = stage.inputs(cfg)
        for dep in inputs:
            if dep not in fps:
                raise ValignError(f"stage '{name}' reads '{dep}', which must come before it in `stages`.")
        fp = fingerprint(name, stage.describe(cfg), {d: fps[d] for d in inputs})
        fps[name] = fp
        forcing = forcing or name == start_from
        if only is not None and name != only:
            continue
        if only is not None:
            for dep in inputs:
                if not dirs[dep].is_done(fps[dep]):
                    raise ValignError(f"--only {name} needs '{dep}' finished and up to date; run without --only first.")
        if forcing:
            sdir.reset()
        elif sdir.is_done(fp):
            console.print(f"[green]✓[/] {sdir.path.name}: up to date, skipped")
            manifest = sdir.manifest() or {}
            outcomes.append(StageOutcome(name, sdir.path, "skipped", manifest.get("counts", {}).get("rows", 0), 0.0))
            continue
        rows = sdir.begin(fp)
        status = "resumed" if len(rows) else "ran"
        if status == "resumed":
            console.print(f"[yellow]↻[/] {sdir.path.name}: resuming after {len(rows)} rows")
        started = time.perf_counter()
        ctx = StageContext(
            run_config=cfg,
            config=getattr(cfg, name),
            dir=sdir.path,
            rows=rows,
            models=models,
            input_dirs={d: dirs[d].path for d in inputs},
            console=console,
        )
        stage.run(ctx)
        adapted = models.request_adjustments()
        if adapted:
            ctx.info["request_adjustments"] = adapted  # e.g. a reasoning judge's fixed temperature
        seconds = time.perf_counter() - started
        ctx.info.setdefault("counts", {})["rows"] = len(rows)
        sdir.finish(fp, {"stage": name, "inputs": {d: fps[d] for d in inputs}, "seconds": round(seconds, 3), **ctx.info})
        console.print(f"[green]✓[/] {sdir.path.name}: {len(rows)} rows in {seconds:.1f}s")
        outcomes.append(StageOutcome(name, sdir.path, status, len(rows), seconds))
    if cache is not None:
        cache.close()
    return outcomes
