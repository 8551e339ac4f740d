"""A stage is one module and one registry entry: a stage the registry gains has its
config section, is accepted in ``stages:``, and runs, resumes and skips in the pipeline,
with nothing else edited."""

from __future__ import annotations

from typing import Any, ClassVar

import pytest
from pydantic import BaseModel, ConfigDict

from valign.config import RunConfig, run_config_class
from valign.pipeline import run_pipeline
from valign.stages.base import Stage, StageContext
from valign.stages.registry import STAGES, training_stages


class EchoConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    words: list[str] = ["hello"]


class EchoStage(Stage):
    """Writes one row per word: all a stage needs is a config, a description and rows."""

    name: ClassVar[str] = "echo"
    config_class = EchoConfig

    def describe(self, run_config: Any) -> dict[str, Any]:
        return {"config": run_config.echo.model_dump()}

    def run(self, ctx: StageContext) -> None:
        ctx.rows.append({"id": w, "word": w} for w in ctx.config.words if w not in ctx.rows.ids)


def test_a_registered_stage_gets_a_section_and_runs(tmp_path):
    config_class = run_config_class({**STAGES, "echo": EchoStage()})
    cfg = config_class(name="t", runs_dir=tmp_path, stages=["echo"], echo={"words": ["a", "b"]})
    assert isinstance(cfg.section("echo"), EchoConfig)
    first = run_pipeline(cfg)
    assert [(o.name, o.status, o.rows) for o in first] == [("echo", "ran", 2)]
    assert [(o.status, o.rows) for o in run_pipeline(cfg)] == [("skipped", 2)], "up to date: skipped"
    changed = config_class(name="t", runs_dir=tmp_path, stages=["echo"], echo={"words": ["a", "b", "c"]})
    assert [(o.status, o.rows) for o in run_pipeline(changed)] == [("ran", 3)], "a new description runs it again"
    with pytest.raises(ValueError, match="unknown setting|Extra inputs"):
        config_class(name="t", stages=["echo"], echo={"word": "a"})


def test_the_shipped_registry_names_every_stage_once():
    from pydantic import ValidationError

    assert list(STAGES) == ["survey", "respond", "revise", "sft", "survey_sft", "pairs", "judge", "dpo", "kto", "grpo", "evaluate", "report"]
    assert training_stages() == ("sft", "survey_sft", "dpo", "kto", "grpo")
    assert dict(RunConfig.stage_registry) == STAGES
    with pytest.raises(ValidationError, match="unknown stage 'echo'; the stages are survey, respond, revise"):
        RunConfig(name="t", stages=["echo"])
