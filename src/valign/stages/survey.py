"""`survey`: the public values survey's data, weighted and exported for the pipeline.

Reads the survey database (the app's, `valign survey serve`), computes quality flags,
rakes the respondents to census margins and writes the export
(`valign.survey.export`) into the stage folder: ``constitution.yaml``,
``dpo.jsonl``, ``kto.jsonl``, ``eval_items.jsonl``, ``consensus.csv`` and
``summary.json``. Later stages refer to it by name — ``constitution: survey``,
``dpo.rows: survey``, ``kto.rows: survey`` — and `survey_sft` and the fidelity
evaluation read its ``eval_items.jsonl``. Rows: one per evaluation item.

The stage's fingerprint includes a digest of the database (respondents, answers, the
latest answer time and the erasures so far), so new responses — or a withdrawal — make
a new export and everything after it re-runs; an unchanged database is skipped.

Example (YAML):
    survey: {db: "sqlite:///survey.db", instrument: demo, margins: nz-census-2023, B: 200}
    survey: {instrument: "polis:brexit-consensus", margins: participants}   # an imported Polis conversation
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal, TYPE_CHECKING

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from valign.errors import ValignError
from valign.stages.base import ConfigFile, Stage, StageContext

if TYPE_CHECKING:
    from valign.config import RunConfig

__all__ = ["SurveyStageConfig", "SurveyStage", "survey_digest"]


class SurveyStageConfig(BaseModel):
    """Settings of the `survey` stage.

    ``db``: the survey database URL (default: ``$VALIGN_SURVEY_DB`` or ``sqlite:///survey.db``);
    ``instrument``: an instrument, or ``polis:<conversation>`` imported with
    ``valign survey import-polis`` (then ``margins: participants``: each counted once);
    ``include_synthetic``: count respondents made by ``valign survey simulate`` (the
    demo does; a real study should not); ``by``: subgroup variables of the evaluation
    set and the consensus (default: the instrument's margin variables).
    """

    model_config = ConfigDict(extra="forbid")

    db: str | None = None
    instrument: ConfigFile = "demo"
    margins: ConfigFile = "nz-census-2023"
    trim: tuple[float, float] | None = None
    missing: Literal["own_category", "impute_mode", "drop"] = "own_category"
    include_synthetic: bool = False
    completed_only: bool = True
    by: list[str] = Field(default_factory=list)
    B: int = Field(200, ge=2, le=5000)
    min_group_n: int = Field(10, ge=1)
    consensus_threshold: float = Field(0.6, gt=0.5, lt=1)
    split: float = Field(0.6, gt=0.5, lt=1)


def survey_digest(db_url: str) -> dict[str, Any]:
    """What the export depends on in the database: response counts, the latest answer
    time, every proposal's moderation state (an approval withdrawn must re-export), and
    the erasures (a withdrawn respondent must leave the export even if someone new
    brought the counts back to where they were).
    Read-only: a missing database is an error, never created here."""
    import hashlib

    from sqlalchemy import case, func, select

    from valign.survey.db import Answer, ErasureLog, Proposal, Respondent, make_engine
    from valign.web.database import has_tables

    if db_url.startswith("sqlite:///") and not Path(db_url.removeprefix("sqlite:///")).exists():
        raise ValignError(f"the survey database {db_url} does not exist; collect responses first (valign survey serve / simulate) or fix survey.db.")
    engine = make_engine(db_url)
    try:
        with engine.connect() as c:
            respondents = c.execute(select(func.count(Respondent.id), func.sum(case((Respondent.completed, 1), else_=0)))).one()
            answers = c.execute(select(func.count(Answer.id), func.max(Answer.answered_at))).one()
            moderation = c.execute(select(Proposal.id, Proposal.status, Proposal.moderated_at).order_by(Proposal.id)).all()
            # a database not yet migrated to the erasure log (revision 0003) has erased nothing
            erasures = c.execute(select(func.max(ErasureLog.id))).scalar() if has_tables(engine, ErasureLog.__tablename__) else None
    except Exception as e:  # an un-migrated database, or an unreachable server
        raise ValignError(f"cannot read the survey database {db_url} ({type(e).__name__}: {str(e).splitlines()[0][:120]}); check the URL, or run `valign survey migrate --db {db_url}`.") from None
    finally:
        engine.dispose()
    return {
        "respondents": respondents[0],
        "completed": int(respondents[1] or 0),
        "answers": answers[0],
        "latest": str(answers[1]),
        "proposals": hashlib.sha256(repr([tuple(map(str, r)) for r in moderation]).encode()).hexdigest(),
        # only once something was erased, so that databases with no erasure keep their digest (and their runs' cache)
        **({"erasures": erasures} if erasures else {}),
    }


class SurveyStage(Stage):
    name: ClassVar[str] = "survey"
    config_class = SurveyStageConfig
    writes_constitution = True

    def inputs(self, run_config: RunConfig) -> list[str]:
        return []

    def describe(self, run_config: RunConfig) -> dict[str, Any]:
        from valign.survey.db import make_engine, resolve_db_url
        from valign.survey.instrument import load_instrument
        from valign.survey.margins import load_margins
        from valign.survey.polis_instrument import PARTICIPANT_MARGINS, is_polis_instrument, polis_instrument

        cfg: SurveyStageConfig = run_config.survey
        url = resolve_db_url(cfg.db)
        if is_polis_instrument(cfg.instrument):  # an imported conversation: its statements live in the database
            engine = make_engine(url)
            try:
                instrument = polis_instrument(engine, cfg.instrument).fingerprint()
            finally:
                engine.dispose()
        else:
            instrument = load_instrument(cfg.instrument).fingerprint()
        return {
            "config": cfg.model_dump(mode="json"),
            "instrument": instrument,
            "margins": cfg.margins if cfg.margins == PARTICIPANT_MARGINS else {name: [v.shares, v.map] for name, v in load_margins(cfg.margins).variables.items()},
            "database": survey_digest(url),
            "seed": run_config.seed,
        }

    def preflight(self, run_config: RunConfig) -> None:
        from valign.survey.instrument import load_instrument
        from valign.survey.margins import load_margins
        from valign.survey.polis_instrument import PARTICIPANT_MARGINS, is_polis_instrument, polis_source

        cfg: SurveyStageConfig = run_config.survey
        if is_polis_instrument(cfg.instrument):
            polis_source(cfg.instrument)  # its statements are checked when the stage reads the database
            if cfg.margins != PARTICIPANT_MARGINS:
                raise ValignError(f"survey.instrument {cfg.instrument} is a Polis conversation, whose participants have no census demographics; set survey.margins: {PARTICIPANT_MARGINS}.")
        else:
            load_instrument(cfg.instrument)
        if cfg.margins != PARTICIPANT_MARGINS:
            load_margins(cfg.margins)

    def run(self, ctx: StageContext) -> None:
        from valign.survey.consensus import ConsensusSettings
        from valign.survey.export import ExportSettings, export_survey
        from valign.survey.opinion import read_items

        cfg: SurveyStageConfig = ctx.config
        settings = ExportSettings(
            by=tuple(cfg.by), B=cfg.B, seed=ctx.run_config.seed, min_group_n=cfg.min_group_n,
            consensus=ConsensusSettings(threshold=cfg.consensus_threshold, split=cfg.split),
        )
        summary = export_survey(
            cfg.db, cfg.instrument, cfg.margins, ctx.dir, settings,
            trim=cfg.trim, missing=cfg.missing, synthetic=cfg.include_synthetic, completed_only=cfg.completed_only,
        )
        ctx.rows.append(item.model_dump() for item in read_items(ctx.dir / "eval_items.jsonl"))
        ctx.info.update({"counts": summary["counts"], "respondents": summary["respondents"], "constitution": "constitution.yaml"})


