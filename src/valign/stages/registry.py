"""The stages a run can list, declared once.

To add a stage, write its module (a config class and a `valign.stages.base.Stage`
subclass naming it) and add the class to `STAGES` below: the run config gains a section
of that class under the stage's name, ``stages:`` accepts it, and the pipeline runs it
(training it in every process when it says ``trains = True``). The order here is the
order the stages are listed in error messages and the docs, not the order a run takes
(``stages:`` in its config says that).
"""

from __future__ import annotations

from valign.stages.base import Stage
from valign.stages.evaluate import EvaluateStage
from valign.stages.grpo import GRPOStage
from valign.stages.judge import JudgeStage
from valign.stages.pairs import PairsStage
from valign.stages.preference import DPOStage, KTOStage
from valign.stages.report import ReportStage
from valign.stages.respond import RespondStage
from valign.stages.revise import ReviseStage
from valign.stages.sft import SFTStage
from valign.stages.survey import SurveyStage
from valign.stages.survey_sft import SurveySFTStage

__all__ = ["STAGES", "stage_names", "training_stages", "constitution_stages"]

STAGES: dict[str, Stage] = {
    stage.name: stage
    for stage in (
        SurveyStage(),
        RespondStage(),
        ReviseStage(),
        SFTStage(),
        SurveySFTStage(),
        PairsStage(),
        JudgeStage(),
        DPOStage(),
        KTOStage(),
        GRPOStage(),
        EvaluateStage(),
        ReportStage(),
    )
}


def stage_names() -> tuple[str, ...]:
    """Every stage ``stages:`` may list."""
    return tuple(STAGES)


def training_stages() -> tuple[str, ...]:
    """The stages that train an adapter."""
    return tuple(name for name, stage in STAGES.items() if stage.trains)


def constitution_stages() -> tuple[str, ...]:
    """The stages whose ``constitution.yaml`` the run's ``constitution`` may name."""
    return tuple(name for name, stage in STAGES.items() if stage.writes_constitution)
