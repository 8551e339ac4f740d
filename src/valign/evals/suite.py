"""What an evaluation suite is: one `Suite` entry that says everything about it.

A suite (key cases, MT-Bench, safety, survey fidelity) declares, in one place, its
name, its settings (``evaluate.<name>``), what its output depends on (for the
`evaluate` stage's fingerprint), how it runs (answers and judgments as rows, resumable
by row id), the counts its summary gives the manifest, its report section and its
inspect_ai task. `valign.evals.suites` holds the entries; the `evaluate` stage,
``valign eval``, the report and the inspect tasks all read them from there.

A suite's `Suite.run` gets a `SuiteRun`: the `SuiteSetup` its output depends on, plus
the row log to append to, the models, the output folder and a console.

Example:
    >>> from valign.evals.suites import suite
    >>> suite("safety").config.__name__, suite("safety").inspect_task
    ('SafetyConfig', 'valign.evals.safety_task:safety')
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Protocol, Sequence

from pydantic import BaseModel

from valign.runs import RowLog
from valign.types import GenConfig, Row

if TYPE_CHECKING:
    from rich.console import Console

    from valign.evals.section import SectionRenderer
    from valign.models.base import ChatModel

__all__ = ["ROLES", "Models", "SuiteSetup", "SuiteRun", "Suite", "no_counts"]

ROLES = ("base", "tuned")


class Models(Protocol):
    """Where a suite gets its models: a spec in, a loaded (shared) model out."""

    def get(self, spec: str) -> ChatModel: ...


@dataclass(frozen=True, kw_only=True)
class SuiteSetup:
    """What a suite's output depends on.

    ``settings`` is the suite's own section of the evaluate config (an instance of
    its `Suite.config`); ``specs`` and ``names`` map the roles (``base``, ``tuned``)
    to model specs and display names; ``survey_items`` is the run's survey evaluation
    set, when it has one.

    Example:
        >>> from valign.evals.safety import SafetyConfig
        >>> SuiteSetup(settings=SafetyConfig(), specs={"base": "a", "tuned": "b"}, judge="a").seeded(GenConfig()).seed
        0
    """

    settings: Any
    specs: dict[str, str]
    names: dict[str, str] = field(default_factory=lambda: {role: role for role in ROLES})
    judge: str
    seed: int = 0
    constitution: str = "kantian"
    train_prompts: Any = None
    base_dir: Path | None = None
    survey_items: Path | None = None
    chunk: int = 32

    def seeded(self, gen: GenConfig) -> GenConfig:
        """``gen`` with the run's seed, unless it names its own."""
        return gen.seeded(self.seed)


@dataclass(frozen=True, kw_only=True)
class SuiteRun(SuiteSetup):
    """A suite at work: its setup, plus where rows go and where models come from."""

    rows: RowLog
    models: Models
    out_dir: Path
    console: Console

    def chunks(self, items: Sequence[Any]) -> list[Sequence[Any]]:
        """``items`` in chunks of ``evaluate.chunk``: each is appended as soon as it is done."""
        return [items[i : i + self.chunk] for i in range(0, len(items), self.chunk)]

    def rows_of(self, kind: str) -> list[Row]:
        """The rows of one ``type`` so far (from earlier runs too)."""
        return [r for r in self.rows if r.get("type") == kind]

    def answer_missing(
        self,
        items: Sequence[Any],
        row_id: Callable[[str, Any], str],
        answer: Callable[[ChatModel, str, Sequence[Any]], Iterable[Row]],
        message: str,
    ) -> None:
        """Each model (base, then tuned) answers the items it has no row for yet, a
        chunk at a time: ``row_id(role, item)`` names an item's row, ``answer(model,
        role, chunk)`` makes the chunk's rows, and ``message`` (with ``{n}``, ``{role}``
        and ``{spec}``) says what is being done."""
        for role in ROLES:
            spec = self.specs[role]
            todo = [item for item in items if row_id(role, item) not in self.rows.ids]
            if todo:
                self.console.print("evaluate: " + message.format(n=len(todo), role=role, spec=spec))
                model = self.models.get(spec)
                for chunk in self.chunks(todo):
                    self.rows.append(answer(model, role, chunk))


def no_counts(summary: dict[str, Any]) -> dict[str, int]:
    """For a suite whose summary has nothing to add to the manifest's counts."""
    return {}


@dataclass(frozen=True)
class Suite:
    """One evaluation suite, declared once.

    * ``config`` — its settings model, the ``evaluate.<name>`` field;
    * ``describe`` — the keys it adds to the evaluation's fingerprint (file digests…);
    * ``run`` — answers and judgments as rows; returns its summary for the manifest;
    * ``counts`` — the data counts its summary gives the manifest (``"key cases": 28``);
    * ``section`` — its report section (`valign.evals.section`);
    * ``inspect_task`` — ``"module:function"`` of its inspect_ai ``@task`` (imported only
      by `valign.evals.inspect_tasks`: inspect_ai is an optional dependency);
    * ``default`` — whether ``evaluate.suites`` includes it when a config names none;
    * ``paths`` — settings that name files, resolved against the config's folder;
    * ``preflight`` — loads the files its settings name (``settings`` in, nothing out),
      so a run's mistake fails before any stage loads a model;
    * ``idle_settings_in_fingerprint`` — whether its settings are part of the
      evaluation's fingerprint when it does not run: True for the suites older than
      this flag (their runs keep their fingerprints), False for later ones, so adding
      a suite to valign re-runs no existing evaluation.
    """

    name: str
    config: type[BaseModel]
    describe: Callable[[SuiteSetup], dict[str, Any]]
    run: Callable[[SuiteRun], dict[str, Any]]
    section: SectionRenderer
    inspect_task: str
    counts: Callable[[dict[str, Any]], dict[str, int]] = no_counts
    default: bool = True
    paths: tuple[str, ...] = ()
    preflight: Callable[[Any], None] = lambda settings: None
    idle_settings_in_fingerprint: bool = True
