"""Runs a config's stages in order, skipping finished ones and resuming interrupted ones.

Launched in several processes (``accelerate launch``), every process walks the same
stages and computes the same fingerprints; training stages train in all of them
(data-parallel), every other stage runs in the main process alone while the others
wait, and only the main process resets a stage folder or writes rows and manifests
(`valign.distributed`). Before the first stage, every stage's `preflight` loads the
files its settings name, so a mistake in any of them fails before a model loads; a
stage's refusals (`check`) run before its folder is reset.

Example::

    from valign.config import load_config
    run_pipeline(load_config("configs/kantian-demo.yaml"))  # runs/kantian-demo/…, report.html last
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import yaml
from rich.console import Console

from valign import distributed
from valign.cache import CompletionCache
from valign.config import RunConfig
from valign.errors import ConfigError, ValignError
from valign.runs import RowLog, StageDir, fingerprint
from valign.stages.base import ModelPool, StageContext
from valign.stages.training import training_launch


@dataclass
class StageOutcome:
    name: str
    dir: Path
    status: str  # "ran", "resumed", "skipped"
    rows: int
    seconds: float


def stage_dirs(cfg: RunConfig) -> dict[str, StageDir]:
    """The folder of each stage: ``runs/<name>/<NN>-<stage>``."""
    return {name: StageDir(cfg.stage_dir(name)) for name in cfg.stages}


def describe_stage(cfg: RunConfig, name: str) -> dict:
    """What a stage's fingerprint hashes besides its inputs: its own description, and for
    a training stage also its launch — processes, precision and quantization change what
    training produces."""
    described = cfg.stage(name).describe(cfg)
    if cfg.trains(name):
        described = {**described, "launch": training_launch(cfg.section(name), name)}
    return described


def preflight(cfg: RunConfig) -> None:
    """Load every file the run's settings name — prompt sets, the constitution, key
    cases, … — so a mistake in any of them fails before a model loads (validating the
    config read none of them)."""
    from valign.stages.base import run_constitution

    if cfg.constitution not in cfg.stages:  # a stage's constitution.yaml is written by the run
        try:
            run_constitution(cfg)
        except ValignError as e:
            raise ConfigError(f"constitution: {e}") from None
    for name in cfg.stages:
        cfg.stage(name).preflight(cfg)


def stage_fingerprints(cfg: RunConfig) -> dict[str, str]:
    """Every stage's fingerprint as `run_pipeline` computes it (each reads its inputs')."""
    fps: dict[str, str] = {}
    for name in cfg.stages:
        fps[name] = fingerprint(name, describe_stage(cfg, name), {d: fps[d] for d in cfg.stage(name).inputs(cfg)})
    return fps


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
    main = distributed.is_main()
    console = console or Console(stderr=True, quiet=not main)
    for flag, value in (("--only", only), ("--from", start_from)):
        if value is not None and value not in cfg.stages:
            raise ValignError(f"{flag} {value}: no such stage in this run; its stages are {', '.join(cfg.stages)}.")
    preflight(cfg)
    if main:
        cfg.run_dir.mkdir(parents=True, exist_ok=True)
        (cfg.run_dir / "config.yaml").write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
    cache = CompletionCache(cfg.run_dir / "cache.sqlite") if cfg.cache and main else None
    models = ModelPool(cache, cfg.backends.for_spec)
    dirs = stage_dirs(cfg)
    fps: dict[str, str] = {}
    outcomes: list[StageOutcome] = []
    forcing = False
    for name in cfg.stages:
        if only is not None and only in fps:
            break  # later stages need no fingerprint (theirs may read files --only has not made yet)
        stage = cfg.stage(name)
        sdir = dirs[name]
        inputs = stage.inputs(cfg)
        for dep in inputs:
            if dep not in fps:
                raise ValignError(f"stage '{name}' reads '{dep}', which must come before it in `stages`.")
        trains = cfg.trains(name)
        described = describe_stage(cfg, name)
        fp = fingerprint(name, described, {d: fps[d] for d in inputs})
        fps[name] = fp
        forcing = forcing or name == start_from
        if only is not None and name != only:
            continue
        if only is not None:
            for dep in inputs:
                if not dirs[dep].is_done(fps[dep]):
                    raise ValignError(f"--only {name} needs '{dep}' finished and up to date; run without --only first.")
        if not forcing and sdir.is_done(fp):
            console.print(f"[green]✓[/] {sdir.path.name}: up to date, skipped")
            manifest = sdir.manifest() or {}
            outcomes.append(StageOutcome(name, sdir.path, "skipped", manifest.get("counts", {}).get("rows", 0), 0.0))
            continue
        input_dirs = {d: dirs[d].path for d in inputs}
        stage.check(cfg, input_dirs)  # refuse before anything of the stage is deleted
        if main:
            if forcing:
                sdir.reset()
            rows = sdir.begin(fp)
        distributed.barrier()  # the others open the folder once the main process has (re)set it
        if not main:
            rows = RowLog(sdir.rows_path, writer=False)
        status = "resumed" if len(rows) else "ran"
        if status == "resumed":
            console.print(f"[yellow]↻[/] {sdir.path.name}: resuming after {len(rows)} rows")
        started = time.perf_counter()
        ctx = StageContext(
            run_config=cfg,
            config=cfg.section(name),
            dir=sdir.path,
            rows=rows,
            models=models,
            input_dirs=input_dirs,
            console=console,
        )
        try:
            if trains or main:
                stage.run(ctx)
        except BaseException:
            if main and sdir.restore_if_idle():
                console.print(f"[yellow]↺[/] {sdir.path.name}: failed before doing any work; the stage it replaced is back as it was")
            raise
        engines = models.engines()
        if engines:
            ctx.info["engines"] = engines  # e.g. {"embedded": {"engine": "valign", "dtype": "bfloat16", …}}
        adapted = models.request_adjustments()
        if adapted:
            ctx.info["request_adjustments"] = adapted  # e.g. a reasoning judge's fixed temperature
        if trains:
            ctx.info["launch"] = described["launch"]
        seconds = time.perf_counter() - started
        ctx.info.setdefault("counts", {})["rows"] = len(rows)
        if main:
            sdir.finish(fp, {"stage": name, "inputs": {d: fps[d] for d in inputs}, "seconds": round(seconds, 3), **ctx.info})
            sdir.discard_set_aside()
        distributed.barrier()  # nobody reads this stage's results before the manifest is written
        console.print(f"[green]✓[/] {sdir.path.name}: {len(rows)} rows in {seconds:.1f}s")
        outcomes.append(StageOutcome(name, sdir.path, status, len(rows), seconds))
    if cache is not None:
        cache.close()
    return outcomes
