"""The report: one self-contained HTML file for a run (``runs/<name>/report.html``).

It is built from a list of section renderers (`SECTIONS`). Each takes the run's data
(`RunData`: its config, stage folders, manifests and rows) and returns a `Section`,
or None when the run has nothing for it, so a run with only some stages still gets
a report with the sections it can fill. Another module adds a section with
`register_section`:

    >>> def my_section(run: RunData, env: ReportEnv) -> Section | None:
    ...     rows = run.rows("survey")
    ...     if not rows:
    ...         return None
    ...     return Section("survey", "Survey fidelity", env.render("my_section.html.j2", rows=rows))
    >>> register_section("survey", my_section, after="safety")

Templates are Jinja2 files in ``valign/data/templates/report/`` with autoescaping on
(every model answer is escaped); CSS is inline, plots are matplotlib PNGs embedded as
``data:`` URIs, and nothing is fetched from anywhere, so the file opens offline and
needs no JavaScript.

Example:
    >>> render_report("runs/kantian-demo")
    PosixPath('runs/kantian-demo/report.html')
"""

from __future__ import annotations

import base64
import datetime as dt
import io
import json
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Callable

from valign.errors import ValignError
from valign.runs import read_rows
from valign.types import Row

__all__ = [
    "RunData",
    "StageInfo",
    "Section",
    "ReportEnv",
    "SectionRenderer",
    "SECTIONS",
    "register_section",
    "load_run",
    "render_report",
    "BASE_COLOR",
    "TUNED_COLOR",
]

BASE_COLOR = "#7a869a"
TUNED_COLOR = "#0b5fce"
_STAGE_DIR = re.compile(r"^(\d{2})-([a-z_]+)$")


# --------------------------------------------------------------------------- the run's data


@dataclass
class StageInfo:
    """One stage folder of a run: its name, path and manifest (None while unfinished).

    Example:
        >>> StageInfo("sft", Path("runs/demo/03-sft"), None).status
        'not started'
    """

    name: str
    dir: Path
    manifest: dict[str, Any] | None

    @property
    def status(self) -> str:
        if self.manifest is not None:
            return "done"
        return "incomplete" if self.dir.exists() else "not started"


@dataclass
class RunData:
    """What the section renderers read: a run folder, or the folder of ``valign eval``.

    Example:
        >>> run = load_run("runs/kantian-demo")
        >>> run.stage("dpo").manifest["train"]["steps"]
        6
    """

    root: Path
    name: str
    config: dict[str, Any] | None
    stages: list[StageInfo]
    _rows: dict[str, list[Row]] = field(default_factory=dict, repr=False)

    def stage(self, name: str) -> StageInfo | None:
        """The stage of that name, or None when the run has none."""
        return next((s for s in self.stages if s.name == name), None)

    def manifest(self, name: str) -> dict[str, Any] | None:
        """A finished stage's manifest, or None."""
        s = self.stage(name)
        return s.manifest if s else None

    def rows(self, name: str) -> list[Row]:
        """A stage's rows (read once), or [] when it has none."""
        if name not in self._rows:
            s = self.stage(name)
            self._rows[name] = read_rows(s.dir / "rows.jsonl") if s else []
        return self._rows[name]


def _manifest(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads((path / "manifest.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def load_run(path: str | Path) -> RunData:
    """Read a run folder (``config.yaml`` and ``NN-<stage>`` folders) or an evaluation
    folder written by ``valign eval`` (its own ``manifest.json``).

    Example:
        >>> [s.name for s in load_run("runs/kantian-demo").stages][:2]
        ['respond', 'revise']
    """
    import yaml

    root = Path(path)
    if not root.is_dir():
        raise ValignError(f"{root} is not a folder; give a run folder such as runs/kantian-demo or a `valign eval --out` folder.")
    if (root / "config.yaml").is_file():
        config = yaml.safe_load((root / "config.yaml").read_text()) or {}
        found: dict[str, StageInfo] = {}
        for d in sorted(root.iterdir()):
            m = _STAGE_DIR.match(d.name)
            if d.is_dir() and m:
                found[m.group(2)] = StageInfo(m.group(2), d, _manifest(d))
        stages = []
        for i, name in enumerate(config.get("stages", []), 1):
            stages.append(found.pop(name, StageInfo(name, root / f"{i:02d}-{name}", None)))
        stages += list(found.values())  # folders of stages no longer in the config
        return RunData(root, str(config.get("name", root.name)), config, stages)
    manifest = _manifest(root)
    if manifest is not None and manifest.get("stage") == "evaluate":
        return RunData(root, root.name, None, [StageInfo("evaluate", root, manifest)])
    raise ValignError(f"{root} holds neither a run (config.yaml) nor an evaluation (manifest.json); point at runs/<name> or a `valign eval --out` folder.")


# --------------------------------------------------------------------------- rendering helpers


@dataclass
class Section:
    """A rendered report section: anchor id, heading and HTML body (already escaped).

    Example:
        >>> Section("notes", "Notes", env.render_string("<p>{{ text }}</p>", text="<b>hi</b>"))
    """

    id: str
    title: str
    html: str


class ReportEnv:
    """The Jinja2 environment of the report's templates, and figure embedding.

    Example:
        >>> env = ReportEnv()
        >>> "&lt;b&gt;" in env.render_string("{{ x }}", x="<b>")
        True
    """

    def __init__(self) -> None:
        import jinja2

        folder = Path(str(resources.files("valign") / "data" / "templates" / "report"))
        self.jinja = jinja2.Environment(
            loader=jinja2.FileSystemLoader(str(folder)),
            autoescape=True,  # every model answer goes through here
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self.jinja.filters["num"] = _num
        self.jinja.filters["pct"] = _pct
        self.jinja.filters["when"] = _when
        self.jinja.filters["duration"] = _duration

    def render(self, template: str, **context: Any) -> str:
        """Render a template file of ``data/templates/report/``."""
        return self.jinja.get_template(template).render(**context)

    def render_string(self, source: str, **context: Any) -> str:
        """Render a template given as text (autoescaped like the files)."""
        return self.jinja.from_string(source).render(**context)

    @staticmethod
    def figure(fig: Any) -> str:
        """A matplotlib figure as a ``data:image/png;base64,…`` URI (the figure is closed).

        Example:
            >>> ReportEnv.figure(plt.figure()).startswith("data:image/png;base64,")
            True
        """
        import matplotlib.pyplot as plt

        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=110, bbox_inches="tight", metadata={"Software": None})
        plt.close(fig)
        return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _num(x: Any, digits: int = 2) -> str:
    if x is None:
        return "–"
    if isinstance(x, float):
        return f"{x:.{digits}f}"
    return str(x)


def _pct(x: Any) -> str:
    return "–" if x is None else f"{100 * x:.0f}%"


def _when(ts: Any) -> str:
    if not ts:
        return "–"
    return dt.datetime.fromtimestamp(float(ts)).strftime("%Y-%m-%d %H:%M")


def _duration(seconds: Any) -> str:
    if seconds is None:
        return "–"
    s = float(seconds)
    if s < 60:
        return f"{s:.1f} s"
    return f"{int(s // 60)} min {int(s % 60):02d} s"


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, never a window
    import matplotlib.pyplot as plt

    plt.rcParams.update({"font.size": 9, "axes.spines.top": False, "axes.spines.right": False, "figure.dpi": 110})
    return plt


# --------------------------------------------------------------------------- sections

SectionRenderer = Callable[[RunData, ReportEnv], "Section | None"]


def _flat_counts(counts: Any, prefix: str = "") -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    if isinstance(counts, dict):
        for k, v in counts.items():
            if k == "rows" or k.startswith("resumed"):  # resumption bookkeeping, not data
                continue
            key = f"{prefix}{k}".replace("_", " ")
            if isinstance(v, dict):
                out += _flat_counts(v, f"{key} ")
            elif isinstance(v, (int, float)) and not isinstance(v, bool):
                out.append((key, v))
    return out


def summary_section(run: RunData, env: ReportEnv) -> Section:
    """Run summary: the config, every stage with its status, rows, data counts and time.

    Example:
        >>> summary_section(load_run("runs/kantian-demo"), ReportEnv()).title
        'Run summary'
    """
    import yaml

    stages = []
    for s in run.stages:
        if s.name == "report":
            continue
        m = s.manifest or {}
        stages.append(
            {
                "name": s.name,
                "folder": s.dir.name,
                "status": s.status,
                "rows": (m.get("counts") or {}).get("rows"),
                "counts": _flat_counts(m.get("counts")),
                "seconds": m.get("seconds"),
                "finished": m.get("finished"),
            }
        )
    total = sum(s["seconds"] or 0 for s in stages)
    ev = run.manifest("evaluate") or {}
    cfg = run.config or {}
    return Section(
        "summary",
        "Run summary",
        env.render(
            "summary.html.j2",
            run=run,
            cfg=cfg,
            stages=stages,
            total=total,
            models=ev.get("models"),
            names=ev.get("names") or {"base": "base", "tuned": "tuned"},
            config_yaml=yaml.safe_dump(cfg, sort_keys=False) if cfg else "",
        ),
    )


def _series(stage: StageInfo) -> dict[str, list[tuple[float, float]]]:
    """Training curves from ``train_log.jsonl`` (with steps), else from the manifest."""
    keys = {"loss": "loss", "rewards/accuracies": "reward accuracy", "rewards/margins": "reward margin"}
    out: dict[str, list[tuple[float, float]]] = {}
    log = stage.dir / "train_log.jsonl"
    if log.is_file():
        for n, entry in enumerate(read_rows_loose(log), 1):
            for k, label in keys.items():
                if k in entry and isinstance(entry[k], (int, float)):
                    out.setdefault(label, []).append((entry.get("step", n), float(entry[k])))
    if not out:
        train = (stage.manifest or {}).get("train") or {}
        for k, label in (("loss", "loss"), ("reward_accuracy", "reward accuracy"), ("reward_margin", "reward margin")):
            if train.get(k):
                out[label] = [(i, float(v)) for i, v in enumerate(train[k], 1)]
    return out


def read_rows_loose(path: Path) -> list[dict[str, Any]]:
    """JSONL entries without ids (training logs).

    Example:
        >>> read_rows_loose(Path("runs/demo/03-sft/train_log.jsonl"))[0]["loss"]
        2.91
    """
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return out


def training_section(run: RunData, env: ReportEnv) -> Section | None:
    """Training curves of every training stage: SFT's and survey_sft's loss; DPO/KTO loss,
    reward accuracy and reward margins.

    Example:
        >>> training_section(load_run("runs/kantian-demo"), ReportEnv()).title
        'Training curves'
    """
    plots = []
    for s in run.stages:
        # A stage that trained logs it in its manifest; no list of stage names here.
        if s.manifest is None or "train" not in s.manifest:
            continue
        series = _series(s)
        if not series:
            continue
        plt = _pyplot()
        fig, axes = plt.subplots(1, len(series), figsize=(3.3 * len(series), 2.5), squeeze=False)
        for ax, (label, pts) in zip(axes[0], series.items()):
            xs, ys = zip(*pts)
            ax.plot(xs, ys, marker="o", markersize=3, color=TUNED_COLOR, linewidth=1.5)
            ax.set_title(f"{s.name.upper()} {label}")
            ax.set_xlabel("step")
            ax.grid(alpha=0.3)
        fig.tight_layout()
        train = s.manifest.get("train") or {}
        last = {label: pts[-1][1] for label, pts in series.items()}
        plots.append(
            {
                "stage": s.name,
                "src": env.figure(fig),
                "alt": f"{s.name.upper()} training curves: " + ", ".join(f"{k} ends at {v:.3f}" for k, v in last.items()),
                "steps": train.get("steps"),
                "rows": (s.manifest.get("counts") or {}).get("train_rows"),
                "last": last,
            }
        )
    if not plots:
        return None
    return Section("training", "Training curves", env.render("training.html.j2", plots=plots))


def _radar(categories: list[str], series: dict[str, list[float]], colors: dict[str, str]) -> Any:
    import math

    plt = _pyplot()
    angles = [2 * math.pi * i / len(categories) for i in range(len(categories))]
    fig = plt.figure(figsize=(4.6, 4.2))
    ax = fig.add_subplot(111, polar=True)
    ax.set_theta_offset(math.pi / 2)  # the first category at the top, then clockwise
    ax.set_theta_direction(-1)
    for name, values in series.items():
        ax.plot(angles + angles[:1], values + values[:1], color=colors[name], linewidth=2, label=name)
        ax.fill(angles + angles[:1], values + values[:1], color=colors[name], alpha=0.12)
    ax.set_xticks(angles)
    ax.set_xticklabels(categories)
    ax.set_ylim(0, 10)
    ax.set_yticks([2, 4, 6, 8, 10])
    ax.tick_params(axis="y", labelsize=7)
    ax.legend(loc="upper right", bbox_to_anchor=(1.25, 1.12), frameon=False)
    return fig


def _bars(categories: list[str], series: dict[str, list[float]], colors: dict[str, str]) -> Any:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(4.6, 2.6))
    width = 0.8 / max(len(series), 1)
    for k, (name, values) in enumerate(series.items()):
        ax.bar([i + k * width for i in range(len(categories))], values, width, color=colors[name], label=name)
    ax.set_xticks([i + width * (len(series) - 1) / 2 for i in range(len(categories))])
    ax.set_xticklabels(categories)
    ax.set_ylim(0, 10)
    ax.set_ylabel("mean score")
    ax.legend(frameon=False)
    return fig


def mtbench_section(run: RunData, env: ReportEnv) -> Section | None:
    """MT-Bench: a radar chart and a table per category, per turn and overall, base vs tuned.

    Example:
        >>> mtbench_section(load_run("runs/kantian-demo"), ReportEnv()).title
        'MT-Bench'
    """
    ev = run.manifest("evaluate") or {}
    mt = ev.get("mtbench")
    if not mt or not mt.get("results"):
        return None
    names = ev.get("names") or {"base": "base", "tuned": "tuned"}
    order = [names["base"], names["tuned"]]
    results = {m: mt["results"].get(m) or {} for m in order}
    categories: list[str] = []
    for m in order:
        for c in (results[m].get("categories") or {}):
            if c not in categories:
                categories.append(c)
    colors = {names["base"]: BASE_COLOR, names["tuned"]: TUNED_COLOR}
    plotted = [c for c in categories if all((results[m].get("categories") or {}).get(c) is not None for m in order)]
    chart = None
    if plotted:
        series = {m: [results[m]["categories"][c] for c in plotted] for m in order}
        # A radar needs three spokes to enclose an area; fewer categories get bars.
        fig = _radar(plotted, series, colors) if len(plotted) >= 3 else _bars(plotted, series, colors)
        desc = "; ".join(f"{c}: {names['base']} {series[order[0]][i]:.2f}, {names['tuned']} {series[order[1]][i]:.2f}" for i, c in enumerate(plotted))
        chart = {"src": env.figure(fig), "alt": f"MT-Bench mean score per category. {desc}"}
    table = []
    for c in categories:
        vals = [(results[m].get("categories") or {}).get(c) for m in order]
        table.append({"label": c, "cells": vals, "delta": _delta(vals)})
    for t in ("1", "2"):
        vals = [(results[m].get("turns") or {}).get(t) for m in order]
        table.append({"label": f"turn {t}", "cells": vals, "delta": _delta(vals), "total": True})
    vals = [results[m].get("overall") for m in order]
    table.append({"label": "overall", "cells": vals, "delta": _delta(vals), "total": True})
    judgments = [r["record"] for r in run.rows("evaluate") if r.get("type") == "mtbench_judgment"]
    per_q: dict[Any, dict[str, Any]] = {}
    for j in judgments:
        if j["question_id"] in set(mt.get("question_ids") or [j["question_id"]]):
            q = per_q.setdefault(j["question_id"], {"id": j["question_id"], "category": j.get("category"), "scores": {}})
            q["scores"][(j["model"], j["turn"])] = j["score"]
    return Section(
        "mtbench",
        "MT-Bench",
        env.render(
            "mtbench.html.j2",
            mt=mt,
            order=order,
            results=results,
            chart=chart,
            table=table,
            questions=sorted(per_q.values(), key=lambda q: q["id"]),
        ),
    )


def _delta(vals: list[Any]) -> float | None:
    return None if any(v is None for v in vals) else round(vals[1] - vals[0], 4)


def keycases_section(run: RunData, env: ReportEnv) -> Section | None:
    """Key cases side by side: the two answers, the verdict, the improvement, refusals.

    Example:
        >>> keycases_section(load_run("runs/kantian-demo"), ReportEnv()).title
        'Key cases'
    """
    ev = run.manifest("evaluate") or {}
    summary = ev.get("keycases")
    cases = [r for r in run.rows("evaluate") if r.get("type") == "keycase"]
    if not summary or not cases:
        return None
    titles = _principle_titles(run)
    return Section(
        "keycases",
        "Key cases",
        env.render("keycases.html.j2", summary=summary, cases=cases, titles=titles, models=ev.get("models") or {}),
    )


def _run_constitution(run: RunData) -> Any:
    """The constitution the run used (a stage's file when a stage wrote it), or None."""
    from valign.constitution import load_constitution

    name = (run.config or {}).get("constitution") or (run.manifest("evaluate") or {}).get("constitution")
    if not name:
        return None
    stage = run.stage(name)
    try:
        return load_constitution(stage.dir / "constitution.yaml" if stage is not None else name)
    except ValignError:
        return None


def _principle_titles(run: RunData) -> dict[str, str]:
    c = _run_constitution(run)
    return {p.id: p.title or p.id for p in c.principles} if c is not None else {}


def safety_section(run: RunData, env: ReportEnv) -> Section | None:
    """Refusal rates on held-out red-team prompts and on benign-edgy prompts, per model.

    Example:
        >>> safety_section(load_run("runs/kantian-demo"), ReportEnv()).title
        'Safety'
    """
    ev = run.manifest("evaluate") or {}
    rates = ev.get("safety")
    if not rates:
        return None
    names = ev.get("names") or {"base": "base", "tuned": "tuned"}
    roles = [r for r in ("base", "tuned") if r in rates]
    chart = None
    sets = [("red_team", "harmful prompts refused"), ("benign_edgy", "benign-edgy prompts refused")]
    if roles:
        plt = _pyplot()
        fig, ax = plt.subplots(figsize=(5.2, 2.3))
        labels = [label for key, label in sets]
        height = 0.38
        for k, role in enumerate(roles):
            ys = [i + k * height for i in range(len(sets))]
            cells = [rates[role].get(key) or {} for key, _ in sets]
            xs = [c.get("rate", 0) or 0 for c in cells]
            lo = [x - (c.get("ci95") or (x, x))[0] for x, c in zip(xs, cells)]
            hi = [(c.get("ci95") or (x, x))[1] - x for x, c in zip(xs, cells)]
            ax.barh(ys, xs, height, xerr=[lo, hi], color=BASE_COLOR if role == "base" else TUNED_COLOR, label=names[role], capsize=3)
        ax.set_yticks([i + height * (len(roles) - 1) / 2 for i in range(len(sets))])
        ax.set_yticklabels(labels)
        ax.invert_yaxis()
        ax.set_xlim(0, 1)
        ax.set_xlabel("refusal rate (95% Wilson interval)")
        ax.legend(frameon=False, loc="lower right")
        chart = {
            "src": env.figure(fig),
            "alt": "Refusal rates: "
            + "; ".join(
                f"{names[r]} refused {100 * (rates[r].get(k) or {}).get('rate', 0):.0f}% of {lab.split(' prompts')[0]} prompts" for r in roles for k, lab in sets
            ),
        }
    examples = [r for r in run.rows("evaluate") if r.get("type") == "safety"]
    return Section(
        "safety",
        "Safety",
        env.render("safety.html.j2", rates=rates, roles=roles, names=names, sets=sets, chart=chart, examples=examples, models=ev.get("models") or {}),
    )


def constitution_section(run: RunData, env: ReportEnv) -> Section | None:
    """The constitution the run used, principle by principle.

    Example:
        >>> constitution_section(load_run("runs/kantian-demo"), ReportEnv()).title
        'Constitution'
    """
    c = _run_constitution(run)
    if c is None:
        return None
    return Section("constitution", "Constitution", env.render("constitution.html.j2", c=c))


SECTIONS: list[tuple[str, SectionRenderer]] = [
    ("summary", summary_section),
    ("training", training_section),
    ("mtbench", mtbench_section),
    ("keycases", keycases_section),
    ("safety", safety_section),
    ("constitution", constitution_section),
]


def register_section(section_id: str, renderer: SectionRenderer, after: str | None = None) -> None:
    """Add (or replace) a section renderer, after the section ``after`` (default: last).

    Example:
        >>> register_section("survey", survey_section, after="safety")
    """
    global SECTIONS
    SECTIONS = [(i, r) for i, r in SECTIONS if i != section_id]
    pos = next((k + 1 for k, (i, _) in enumerate(SECTIONS) if i == after), len(SECTIONS))
    SECTIONS.insert(pos, (section_id, renderer))


def _register_builtin_extensions() -> None:
    """Sections that live in their own modules (they import this one)."""
    from valign.evaluate.fidelity_report import fidelity_section

    register_section("fidelity", fidelity_section, after="training")


def render_report(path: str | Path, out: str | Path | None = None, title: str | None = None) -> Path:
    """Render the report of a run (or ``valign eval`` folder) to ``<path>/report.html``
    (or ``out``); sections without data are left out and named in the summary.

    Example:
        >>> render_report("runs/kantian-demo").name
        'report.html'
    """
    _register_builtin_extensions()
    run = load_run(path)
    env = ReportEnv()
    sections: list[Section] = []
    missing: list[str] = []
    for section_id, renderer in SECTIONS:
        sec = renderer(run, env)
        if sec is None:
            missing.append(section_id)
        else:
            sections.append(sec)
    html = env.render(
        "base.html.j2",
        title=title or f"valign report — {run.name}",
        run=run,
        sections=sections,
        missing=missing,
        generated=dt.datetime.now().strftime("%Y-%m-%d %H:%M"),
    )
    target = Path(out) if out is not None else run.root / "report.html"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(html, encoding="utf-8")
    return target
