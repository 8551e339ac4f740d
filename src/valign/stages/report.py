"""`report`: render ``runs/<name>/report.html`` from the run's stages.

It reads the manifests and rows of every stage before it (see
`valign.evals.report`), so it re-renders whenever any of them changes; sections
for stages the run does not have are left out. ``valign report RUN`` renders the same
file at any time, also for an unfinished run.
"""

from __future__ import annotations

from importlib import resources
from typing import Any, ClassVar, TYPE_CHECKING

from pydantic import BaseModel, ConfigDict

from valign.stages.base import Stage, StageContext
from valign.stages.judge import templates_digest

if TYPE_CHECKING:
    from valign.config import RunConfig

__all__ = ["ReportConfig", "ReportStage", "report_templates_digest"]


class ReportConfig(BaseModel):
    """Settings of the `report` stage.

    Example (YAML):
        report: {title: "Kantian demo: base vs DPO"}
    """

    model_config = ConfigDict(extra="forbid")

    title: str | None = None


def report_templates_digest() -> str:
    """SHA-256 of the report's template files, for the fingerprint.

    Example:
        >>> len(report_templates_digest())
        64
    """
    folder = resources.files("valign") / "data" / "templates" / "report"
    return templates_digest(sorted(f"report/{f.name}" for f in folder.iterdir() if f.name.endswith(".j2")))


class ReportStage(Stage):
    """Writes the run's report. Example: ``stages: [..., evaluate, report]``."""

    name: ClassVar[str] = "report"
    config_class = ReportConfig

    def inputs(self, run_config: RunConfig) -> list[str]:
        return list(run_config.stages[: run_config.stages.index(self.name)])

    def describe(self, run_config: RunConfig) -> dict[str, Any]:
        return {"config": run_config.report.model_dump(mode="json"), "templates": report_templates_digest()}

    def run(self, ctx: StageContext) -> None:
        from valign.evals.report import render_report

        path = render_report(ctx.run_config.run_dir, title=ctx.config.title)
        ctx.rows.append([{"id": "report", "path": str(path), "bytes": path.stat().st_size}])
        ctx.info["report"] = str(path)
        ctx.console.print(f"report: {path}")
