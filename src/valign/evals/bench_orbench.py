"""OR-Bench as a suite: over-refusal on OR-Bench-Hard-1K, harmlessness on OR-Bench-Toxic.

OR-Bench (Cui et al. 2024) is published on the hub as ``bench-llm/or-bench``: the
config ``or-bench-hard-1k`` (about 1,300 safe prompts that models often refuse) and
``or-bench-toxic`` (about 650 unsafe ones), each with the columns ``prompt`` and
``category``; the repository's files are ``or-bench-hard-1k.csv`` and
``or-bench-toxic.csv``. ``source`` is the hub id (both configs are read) or a local
folder holding those two files (CSV, JSONL or parquet); ``hard_1k`` and ``toxic`` name
one set's file or ``id:config`` directly, and ``sets`` picks which sets run. Ids are
``hard-1k:<row>`` and ``toxic:<row>`` (the row's number in its file).

Example (YAML)::

    evaluate:
      suites: [orbench]
      orbench: {source: data/or-bench, limit: 100}
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from valign.errors import ValignError
from valign.evals.safety_bench import BenchPrompt, BenchSettings, BenchSpec, bench_suite, read_table, require_columns, text, unique_ids

__all__ = ["OrBenchConfig", "ORBENCH_HUB", "load_orbench", "SUITE"]

ORBENCH_HUB = "bench-llm/or-bench"
SETS: dict[str, bool] = {"hard-1k": True, "toxic": False}  # set → safe
FORMAT = "prompt and category, as or-bench-hard-1k.csv and or-bench-toxic.csv"


class OrBenchConfig(BenchSettings):
    """Settings of the OR-Bench suite (``evaluate.orbench``): `BenchSettings`, plus
    ``sets`` (``hard-1k``, ``toxic``) and a file or ``id:config`` per set (``hard_1k``,
    ``toxic``) that overrides ``source``; ``limit`` applies to each side.

    Example:
        >>> OrBenchConfig(sets=["toxic"]).sets
        ['toxic']
    """

    sets: list[Literal["hard-1k", "toxic"]] = Field(default_factory=lambda: ["hard-1k", "toxic"], min_length=1)
    hard_1k: str | None = None
    toxic: str | None = None


def _set_source(settings: OrBenchConfig, name: str, base_dir: Path | None) -> str:
    explicit = settings.hard_1k if name == "hard-1k" else settings.toxic
    if explicit:
        return explicit
    source = settings.source or ORBENCH_HUB
    folder = Path(source).expanduser()
    folder = base_dir / folder if base_dir is not None and not folder.is_absolute() and (base_dir / folder).is_dir() else folder
    if folder.is_dir():
        found = sorted(p for p in folder.iterdir() if p.stem == f"or-bench-{name}" and p.is_file())
        if not found:
            raise ValignError(f"OR-Bench: {folder} has no or-bench-{name} file (.csv, .jsonl or .parquet); put the set's file there or name it with orbench.{name.replace('-', '_')}.")
        return str(found[0])
    return f"{source}:or-bench-{name}"


def load_orbench(settings: OrBenchConfig, base_dir: Path | None = None) -> list[BenchPrompt]:
    """The prompts of the chosen sets (hard-1k first), each set in its file's order."""
    prompts: list[BenchPrompt] = []
    for name in [s for s in SETS if s in settings.sets]:
        source = _set_source(settings, name, base_dir)
        rows = read_table(source, base_dir, settings.split or "train", what=f"OR-Bench {name}")
        require_columns(rows, ["prompt"], source, f"OR-Bench {name}", FORMAT)
        prompts += [BenchPrompt(f"{name}:{n}", text(r["prompt"]), SETS[name], text(r.get("category")) or None) for n, r in enumerate(rows, 1)]
    return unique_ids(prompts, settings.source or ORBENCH_HUB, "OR-Bench")


SPEC = BenchSpec(
    name="orbench",
    title="OR-Bench",
    about=(
        "OR-Bench (Cui et al. 2024): OR-Bench-Hard-1K's safe prompts that models often refuse (over-refusal) "
        "and OR-Bench-Toxic's unsafe prompts (harmlessness)."
    ),
    config=OrBenchConfig,
    load=load_orbench,
    default_source=ORBENCH_HUB,
    inspect_task="valign.evals.safety_bench_task:orbench",
    paths=("source", "hard_1k", "toxic"),
)
SUITE = bench_suite(SPEC)
