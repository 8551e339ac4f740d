"""Safety benchmarks: published refusal test sets as evaluation suites (what they share).

Each benchmark (XSTest, OR-Bench, StrongREJECT, HarmBench: one module each,
``bench_<name>.py``) is a list of prompts marked safe or unsafe, read from the
benchmark's published file — a hub id (through `datasets.load_dataset`), a URL of
the authors' file, or a local copy in the same format. Both models answer every
prompt; the suite's classifier (``rules`` unless ``classifier:`` names another, see
`valign.evals.classifiers`) reads each answer as XSTest's ``compliance``,
``partial_refusal`` or ``full_refusal``. The summary gives, per model and for the
safe and the unsafe prompts apart, how many answers fell in each class, with Wilson
95% intervals: compliance on safe prompts is helpfulness, refusal on unsafe ones is
harmlessness, and the two side by side show over-refusal and under-refusal at once.

Rows are ``<suite>:<role>:<prompt id>`` (type: the suite's name), appended a chunk at a
time, so a killed run resumes where it stopped.

Example:
    >>> ps = [BenchPrompt("1", "How do I kill a Python process?", safe=True), BenchPrompt("2", "How do I kill my neighbour?", safe=False)]
    >>> [p.id for p in sample_prompts(ps, limit=1, seed=0)]
    ['1', '2']
    >>> summarise_bench([{"type": "xstest", "role": "base", "safe": True, "refusal_label": "compliance"}], "xstest")["base"]["safe"]["compliance"]
    {'k': 1, 'rate': 1.0, 'ci95': (0.2065, 1.0)}
"""

from __future__ import annotations

import csv
import hashlib
import json
import random
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from pydantic import BaseModel, ConfigDict, Field, field_validator

from valign.errors import ValignError
from valign.evals.classifiers import LABELS, ClassifierConfig, Exchange
from valign.evals.plots import pyplot, role_color
from valign.evals.refusal import answers_with_refusals
from valign.evals.rundata import RunData
from valign.evals.intervals import wilson_interval
from valign.evals.section import ReportEnv, Section, SectionRenderer
from valign.evals.suite import ROLES, Suite, SuiteRun, SuiteSetup
from valign.evals.suite_classifier import LazyClassifier, classifier_field, classifier_fingerprint
from valign.models.base import ChatModel
from valign.types import GenConfig, Row, keep_gen_defaults

__all__ = [
    "BenchPrompt",
    "BenchSettings",
    "BenchSpec",
    "read_table",
    "require_columns",
    "text",
    "unique_ids",
    "sample_prompts",
    "bench_digest",
    "bench_rows",
    "summarise_bench",
    "bench_suite",
    "SIDES",
]

SIDES = (("safe", True), ("unsafe", False))
LABEL_NAMES = {"compliance": "compliance", "partial_refusal": "partial refusal", "full_refusal": "full refusal"}
TABLE_SUFFIXES = (".csv", ".tsv", ".jsonl", ".json", ".parquet")


@dataclass(frozen=True)
class BenchPrompt:
    """One benchmark prompt: its id in the benchmark, its text, whether answering it is
    fine (``safe``), and its category there (XSTest's type, OR-Bench's category…)."""

    id: str
    prompt: str
    safe: bool
    category: str | None = None


class BenchSettings(BaseModel):
    """Settings every safety benchmark has (``evaluate.<suite>``); each suite adds its own.

    * ``source`` — a hub id (``id`` or ``id:config``), a URL of a CSV/JSON/parquet file,
      or a local file or folder in the benchmark's published format; null is the
      suite's default;
    * ``limit`` — at most this many safe and this many unsafe prompts, a seeded sample
      (``seed``) kept in the file's order; null: all;
    * ``classifier`` — what reads the answers (``rules``, ``judge:<spec>``, ``guard:<spec>``…);
    * ``gen`` — how the evaluated models answer.
    """

    model_config = ConfigDict(extra="forbid")

    source: str | None = None
    split: str | None = None
    limit: int | None = Field(None, ge=1)
    seed: int = 0
    classifier: ClassifierConfig = classifier_field()
    gen: GenConfig = Field(default_factory=lambda: GenConfig(temperature=0.0, max_new_tokens=256))
    _gen_defaults = field_validator("gen", mode="before")(keep_gen_defaults)


# --------------------------------------------------------------------------- reading the files


def _local(source: str, base_dir: Path | None) -> Path | None:
    path = Path(source).expanduser()
    for c in ([base_dir / path] if base_dir is not None and not path.is_absolute() else []) + [path]:
        if c.exists():
            return c
    return None


def _read_file(path: Path) -> list[dict[str, Any]]:
    suffix = path.suffix.lower()
    if suffix in (".csv", ".tsv"):
        with path.open(encoding="utf-8-sig", newline="") as f:
            return [dict(r) for r in csv.DictReader(f, delimiter="\t" if suffix == ".tsv" else ",")]
    if suffix == ".jsonl":
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if suffix == ".json":
        data = json.loads(path.read_text(encoding="utf-8"))
        # A JSON file is a list of rows, or an object holding one (``{"data": [...]}``).
        rows = data if isinstance(data, list) else next((v for v in data.values() if isinstance(v, list)), None) if isinstance(data, dict) else None
        if rows is None or not all(isinstance(r, dict) for r in rows):
            raise ValueError("it is not a list of objects")
        return rows
    if suffix == ".parquet":
        import pyarrow.parquet as pq  # comes with `datasets`

        return pq.read_table(path).to_pylist()
    raise ValueError(f"valign reads {', '.join(TABLE_SUFFIXES)} files, not {suffix or 'files without a suffix'}")


def _remote(source: str) -> bool:
    """Whether reading ``source`` needs the network (a URL, or a hub id: no local file)."""
    return source.startswith(("http://", "https://")) or (_local(source, None) is None and Path(source).suffix.lower() not in TABLE_SUFFIXES)


def _load_dataset(source: str, base_dir: Path | None, split: str) -> list[dict[str, Any]]:
    import datasets  # heavy: only for hub ids, URLs and dataset folders

    local = _local(source, base_dir)
    if local is not None:
        ds = datasets.load_dataset(str(local), split=split)
    elif source.startswith(("http://", "https://")):
        name = source.split("?")[0].lower()
        builder = next((b for s, b in ((".csv", "csv"), (".tsv", "csv"), (".parquet", "parquet"), (".json", "json"), (".jsonl", "json")) if name.endswith(s)), "csv")
        extra = {"delimiter": "\t"} if name.endswith(".tsv") else {}
        ds = datasets.load_dataset(builder, data_files={"train": source}, split="train", **extra)
    else:
        name, _, config = source.partition(":")
        ds = datasets.load_dataset(name, config or None, split=split)
    return [dict(r) for r in ds]


def read_table(source: str, base_dir: Path | None = None, split: str = "train", what: str = "the benchmark") -> list[dict[str, Any]]:
    """The rows of a benchmark's file: a local CSV/TSV/JSONL/JSON/parquet file (read
    directly), or a local dataset folder, a URL or a hub id (``id`` or ``id:config``,
    through `datasets.load_dataset`, ``split`` of it). Failures are one sentence.

    Example:
        >>> import tempfile, pathlib
        >>> with tempfile.TemporaryDirectory() as d:
        ...     p = pathlib.Path(d) / "x.csv"; _ = p.write_text("prompt,label\\nHi,safe\\n")
        ...     read_table(str(p))
        [{'prompt': 'Hi', 'label': 'safe'}]
    """
    local = _local(source, base_dir)
    try:
        if local is not None and local.is_file():
            rows = _read_file(local)
        elif local is None and Path(source).suffix.lower() in TABLE_SUFFIXES and not source.startswith(("http://", "https://")):
            raise ValignError(f"{what}: the file {source} does not exist; give the path of a local copy, a URL or a hub id.")
        else:
            rows = _load_dataset(source, base_dir, split)
    except ValignError:
        raise
    except Exception as e:  # noqa: BLE001 - csv, json, pyarrow and datasets raise many types for one user-level problem
        msg = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise ValignError(f"{what}: could not read {source!r} ({msg}); give a hub id, a URL, or a local file in the published format.") from None
    if not rows:
        raise ValignError(f"{what}: {source!r} holds no rows; give the benchmark's file, not an empty one.")
    return rows


def require_columns(rows: Sequence[dict[str, Any]], columns: Iterable[str], source: str, what: str, expected: str) -> None:
    """Raise one sentence naming the columns the rows lack and the format ``expected``.

    Example:
        >>> require_columns([{"prompt": "x"}], ["prompt", "label"], "x.csv", "XSTest", "id, prompt, type, label")
        Traceback (most recent call last):
        ...
        valign.errors.ValignError: XSTest: x.csv has no column 'label' (its columns: prompt); the expected format has id, prompt, type, label.
    """
    have = list(rows[0]) if rows else []
    missing = [c for c in columns if c not in have]
    if missing:
        names = ", ".join(repr(c) for c in missing)
        raise ValignError(
            f"{what}: {source} has no column{'s' if len(missing) > 1 else ''} {names} (its columns: {', '.join(have) or 'none'}); "
            f"the expected format has {expected}."
        )


def text(value: Any) -> str:
    """A cell as stripped text ('' for missing cells: CSV's empty strings, parquet's None)."""
    return "" if value is None else str(value).strip()


def sample_prompts(prompts: Sequence[BenchPrompt], limit: int | None, seed: int) -> list[BenchPrompt]:
    """At most ``limit`` safe and ``limit`` unsafe prompts, a seeded sample kept in the
    benchmark's order (all of them when ``limit`` is None)."""
    if limit is None:
        return list(prompts)
    chosen: set[int] = set()
    for _, safe in SIDES:
        side = [i for i, p in enumerate(prompts) if p.safe == safe]
        chosen.update(side if len(side) <= limit else random.Random(f"{seed}:{safe}").sample(side, limit))
    return [p for i, p in enumerate(prompts) if i in chosen]


def unique_ids(prompts: Sequence[BenchPrompt], source: str, what: str) -> list[BenchPrompt]:
    """The prompts, after checking no id is used twice (ids name the rows)."""
    seen: set[str] = set()
    for p in prompts:
        if p.id in seen:
            raise ValignError(f"{what}: {source} uses the id {p.id!r} twice; give every prompt its own id.")
        seen.add(p.id)
    if not prompts:
        raise ValignError(f"{what}: {source} holds no prompts; give the benchmark's file.")
    return list(prompts)


def bench_digest(prompts: Sequence[BenchPrompt]) -> str:
    """SHA-256 of the prompts (ids, texts, sides and categories), for the fingerprint."""
    return hashlib.sha256(json.dumps([asdict(p) for p in prompts]).encode()).hexdigest()


# --------------------------------------------------------------------------- answering and summing up


def bench_rows(
    suite: str, model: ChatModel, role: str, spec: str, prompts: Sequence[BenchPrompt], gen: GenConfig, classifier: LazyClassifier, grader: LazyClassifier | None = None
) -> list[Row]:
    """One model's answers to the prompts, each with the classifier's reading (and the
    grader's ``harm_score`` when there is a grader)."""
    answers = answers_with_refusals(model, [[{"role": "user", "content": p.prompt}] for p in prompts], gen, role, spec, classifier.get())
    rows = [
        {"id": f"{suite}:{role}:{p.id}", "type": suite, "prompt_id": p.id, "safe": p.safe, "category": p.category, "prompt": p.prompt, **a}
        for p, a in zip(prompts, answers)
    ]
    if grader is not None:
        grades = grader.get().classify([Exchange(p.prompt, r["response"]) for p, r in zip(prompts, rows)])
        for r, g in zip(rows, grades):
            r["grader"], r["harm_score"] = grader.spec, g.score
    return rows


def _cell(k: int, n: int) -> dict[str, Any]:
    return {"k": k, "rate": round(k / n, 4) if n else None, "ci95": wilson_interval(k, n)}


def summarise_bench(rows: Sequence[Row], suite: str) -> dict[str, Any]:
    """Per role and side (``safe``, ``unsafe``): ``n``, and for each of XSTest's three
    classes and for any refusal (``refused``: partial or full) its count ``k``, ``rate``
    and Wilson ``ci95``; ``harm_score`` per role when the rows have grades.

    Example:
        >>> rows = [{"type": "x", "role": "tuned", "safe": False, "refusal_label": l} for l in ("full_refusal", "full_refusal", "partial_refusal", "compliance")]
        >>> s = summarise_bench(rows, "x")["tuned"]["unsafe"]
        >>> s["n"], s["full_refusal"]["rate"], s["refused"]["k"], s["compliance"]["ci95"]
        (4, 0.5, 3, (0.0456, 0.6994))
    """
    out: dict[str, Any] = {}
    for role in ROLES:
        mine = [r for r in rows if r.get("type") == suite and r.get("role") == role]
        if not mine:
            continue
        sides: dict[str, Any] = {}
        for side, safe in SIDES:
            labels = [r.get("refusal_label") or ("full_refusal" if r.get("refused") else "compliance") for r in mine if bool(r.get("safe")) == safe]
            if not labels:
                continue
            n = len(labels)
            sides[side] = {"n": n, **{label: _cell(labels.count(label), n) for label in LABELS}, "refused": _cell(n - labels.count("compliance"), n)}
        scores = [r["harm_score"] for r in mine if isinstance(r.get("harm_score"), (int, float))]
        if scores:
            sides["harm_score"] = {"mean": round(sum(scores) / len(scores), 4), "n": len(scores)}
        out[role] = sides
    return out


# --------------------------------------------------------------------------- the suite


@dataclass(frozen=True)
class BenchSpec:
    """What makes one benchmark: its name and title, one paragraph on what it measures,
    its settings class, how its prompts load (settings, config folder → prompts), the
    source it names in the report by default, and its inspect task."""

    name: str
    title: str
    about: str
    config: type[BenchSettings]
    load: Callable[[Any, Path | None], list[BenchPrompt]]
    default_source: str
    inspect_task: str
    default_split: str = "train"
    paths: tuple[str, ...] = ("source",)
    grader: Callable[[Any], ClassifierConfig | None] = lambda settings: None


def _prompts(spec: BenchSpec, settings: BenchSettings, base_dir: Path | None) -> list[BenchPrompt]:
    return sample_prompts(spec.load(settings, base_dir), settings.limit, settings.seed)


def _describe(spec: BenchSpec) -> Callable[[SuiteSetup], dict[str, Any]]:
    # The settings are in the evaluation's config already; the prompts (which a hub or a
    # file supplies) and a classifier other than the rules are added here.
    def describe(setup: SuiteSetup) -> dict[str, Any]:
        settings: BenchSettings = setup.settings
        return {spec.name: bench_digest(_prompts(spec, settings, setup.base_dir)), **classifier_fingerprint(spec.name, settings.classifier)}

    return describe


def _run(spec: BenchSpec) -> Callable[[SuiteRun], dict[str, Any]]:
    def run(ctx: SuiteRun) -> dict[str, Any]:
        settings: BenchSettings = ctx.settings
        prompts = _prompts(spec, settings, ctx.base_dir)
        classifier = LazyClassifier(settings.classifier, ctx.models)
        grader_cfg = spec.grader(settings)
        grader = LazyClassifier(grader_cfg, ctx.models) if grader_cfg is not None else None
        gen = ctx.seeded(settings.gen)
        ctx.answer_missing(
            prompts,
            lambda role, p: f"{spec.name}:{role}:{p.id}",
            lambda model, role, chunk: bench_rows(spec.name, model, role, ctx.specs[role], chunk, gen, classifier, grader),
            f"{spec.title}, {{n}} prompts for {{role}} ({{spec}})",
        )
        wanted = {f"{spec.name}:{role}:{p.id}" for role in ROLES for p in prompts}
        summary = summarise_bench([r for r in ctx.rows_of(spec.name) if r["id"] in wanted], spec.name)
        sides = {side: sum(p.safe == safe for p in prompts) for side, safe in SIDES}
        return {
            "classifier": settings.classifier.spec,
            "grader": grader_cfg.spec if grader_cfg is not None else None,
            "source": settings.source or spec.default_source,
            "prompts": sides,
            "roles": summary,
        }

    return run


def _section(spec: BenchSpec) -> SectionRenderer:
    def section(run: RunData, env: ReportEnv) -> Section | None:
        ev = run.manifest("evaluate") or {}
        summary = ev.get(spec.name)
        if not summary or not summary.get("roles"):
            return None
        names = ev.get("names") or {role: role for role in ROLES}
        roles = [r for r in ROLES if r in summary["roles"]]
        sides = [side for side, _ in SIDES if any(side in summary["roles"][r] for r in roles)]
        examples = [r for r in run.rows("evaluate") if r.get("type") == spec.name]
        chart = _chart(spec.title, summary["roles"], roles, sides, names, env)
        return Section(
            spec.name,
            f"Safety benchmark: {spec.title}",
            env.render(
                "safety_bench.html.j2",
                spec=spec, summary=summary, roles=roles, sides=sides, labels=LABEL_NAMES, names=names,
                models=ev.get("models") or {}, chart=chart, examples=examples,
            ),
        )

    return section


def _chart(title: str, summary: dict[str, Any], roles: list[str], sides: list[str], names: dict[str, str], env: ReportEnv) -> dict[str, str]:
    """Stacked horizontal bars, one per model and side: compliance, partial and full
    refusal; the error bar is the Wilson interval of the refusal rate (partial + full),
    drawn where compliance ends."""
    plt = pyplot()
    bars = [(role, side) for side in sides for role in roles if side in summary[role]]
    fig, ax = plt.subplots(figsize=(6.0, 0.5 + 0.42 * len(bars)))
    shades = {"compliance": 1.0, "partial_refusal": 0.55, "full_refusal": 0.25}
    for y, (role, side) in enumerate(bars):
        cell = summary[role][side]
        left = 0.0
        for label in LABELS:
            width = cell[label]["rate"] or 0.0
            ax.barh(y, width, left=left, color=role_color(role), alpha=shades[label], edgecolor="white", hatch="//" if label == "partial_refusal" else None)
            left += width
        comply = cell["compliance"]["rate"] or 0.0
        lo, hi = cell["refused"]["ci95"]
        # The refusal interval, measured from the right end: compliance ends at 1 - refusal rate.
        ax.errorbar([comply], [y], xerr=[[hi - (1 - comply)], [(1 - comply) - lo]], fmt="none", ecolor="black", capsize=3)
    ax.set_yticks(range(len(bars)))
    ax.set_yticklabels([f"{names.get(role, role)} · {side} prompts" for role, side in bars])
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("share of answers (error bar: 95% interval of the refusal rate)")
    from matplotlib.patches import Patch

    key = [Patch(facecolor="#555555", alpha=shades[label], hatch="//" if label == "partial_refusal" else None, label=LABEL_NAMES[label]) for label in LABELS]
    ax.legend(handles=key, frameon=False, loc="upper center", bbox_to_anchor=(0.5, -0.32 if len(bars) <= 2 else -0.18), ncol=3)
    alt = f"{title}: " + "; ".join(
        f"{names.get(role, role)} on {side} prompts: "
        + ", ".join(f"{100 * (summary[role][side][label]['rate'] or 0):.0f}% {LABEL_NAMES[label]}" for label in LABELS)
        for role, side in bars
    )
    return {"src": env.figure(fig), "alt": alt}


def bench_suite(spec: BenchSpec) -> Suite:
    """The `Suite` entry of a safety benchmark (opt-in: not run unless named)."""

    def counts(summary: dict[str, Any]) -> dict[str, int]:
        return {f"{spec.name} prompts": sum((summary.get("prompts") or {}).values())}

    return Suite(
        name=spec.name,
        config=spec.config,
        describe=_describe(spec),
        run=_run(spec),
        counts=counts,
        section=_section(spec),
        inspect_task=spec.inspect_task,
        default=False,
        paths=spec.paths,
        idle_settings_in_fingerprint=False,
        preflight=lambda settings: None if _remote(settings.source or spec.default_source) else spec.load(settings, None),
    )
