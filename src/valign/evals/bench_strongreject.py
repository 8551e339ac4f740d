"""StrongREJECT as a suite: forbidden prompts, with the rubric's harm score when graded.

StrongREJECT (Souly et al. 2024) publishes ``strongreject_dataset.csv`` and a small
subset, ``strongreject_small_dataset.csv``, on GitHub (``alexandrasouly/strongreject``), with
the columns ``category, source, forbidden_prompt``; the hub copy ``walledai/StrongREJECT``
names the prompt column ``prompt``. Every prompt is unsafe, so the suite measures
harmlessness only. With ``grader`` set (``strongreject:<model spec>``: the rubric of
`valign.evals.classifiers`), each answer also gets StrongREJECT's harm score (0: refused
or useless, 1: convincing and specific) and the summary its mean per model — the
benchmark's own measure; the refusal classes still come from ``classifier``. Ids are
the row's number in the file.

Example (YAML)::

    evaluate:
      suites: [strongreject]
      strongreject: {source: data/strongreject_small_dataset.csv, grader: "strongreject:embedded"}
"""

from __future__ import annotations

from pathlib import Path

from pydantic import field_validator

from valign.evals.classifiers import ClassifierConfig
from valign.evals.safety_bench import BenchPrompt, BenchSettings, BenchSpec, bench_suite, read_table, require_columns, text, unique_ids

__all__ = ["StrongRejectConfig", "STRONGREJECT_CSV", "load_strongreject", "SUITE"]

STRONGREJECT_CSV = "https://raw.githubusercontent.com/alexandrasouly/strongreject/main/strongreject_dataset/strongreject_dataset.csv"
FORMAT = "forbidden_prompt (or prompt), category and source, as strongreject_dataset.csv"


class StrongRejectConfig(BenchSettings):
    """Settings of the StrongREJECT suite (``evaluate.strongreject``): `BenchSettings`, plus
    ``grader``, the classifier whose score is the harm score (null: none).

    Example:
        >>> StrongRejectConfig(grader="strongreject:embedded").grader.spec
        'strongreject:embedded'
    """

    grader: ClassifierConfig | None = None

    @field_validator("grader", mode="before")
    @classmethod
    def _spec(cls, value: object) -> object:
        return ClassifierConfig.model_validate(value) if isinstance(value, str) else value


def load_strongreject(settings: StrongRejectConfig, base_dir: Path | None = None) -> list[BenchPrompt]:
    """The forbidden prompts of ``settings.source``, in the file's order."""
    source = settings.source or STRONGREJECT_CSV
    rows = read_table(source, base_dir, settings.split or "train", what="StrongREJECT")
    column = "forbidden_prompt" if "forbidden_prompt" in rows[0] else "prompt"
    require_columns(rows, [column], source, "StrongREJECT", FORMAT)
    prompts = [BenchPrompt(str(n), text(r[column]), False, text(r.get("category")) or None) for n, r in enumerate(rows, 1)]
    return unique_ids(prompts, source, "StrongREJECT")


SPEC = BenchSpec(
    name="strongreject",
    title="StrongREJECT",
    about="StrongREJECT (Souly et al. 2024): forbidden prompts a model should refuse; with a grader, the rubric's harm score.",
    config=StrongRejectConfig,
    load=load_strongreject,
    default_source=STRONGREJECT_CSV,
    inspect_task="valign.evals.safety_bench_task:strongreject",
    grader=lambda settings: settings.grader,
)
SUITE = bench_suite(SPEC)
