"""The report: one self-contained HTML file for a run (``runs/<name>/report.html``).

The report is its sections, top to bottom (`report_sections`): the run's summary and
training curves, a grpo stage's rewards and reward-hacking watch
(`valign.evals.grpo_section`), then each evaluation suite's section in the order of the suite
registry (`valign.evals.suites`; a suite brings its own), then the judges'
calibration (`valign.evals.calibration_section`), then the constitution.
Each section renderer reads the run's data (`valign.evals.rundata`) and returns a
`Section` (`valign.evals.section`), or None when the run has nothing for it, so a run
with only some stages still gets a report with the sections it can fill; the others
are named as left out.

CSS is inline, plots are matplotlib PNGs embedded as ``data:`` URIs, nothing is
fetched from anywhere and every model answer is escaped, so the file opens offline
and needs no JavaScript.

Example (after ``make run``)::

    render_report("runs/kantian-demo")   # PosixPath('runs/kantian-demo/report.html')
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

from valign.evals.calibration_section import calibration_section
from valign.evals.grpo_section import grpo_section
from valign.evals.plots import TUNED_COLOR, pyplot
from valign.evals.rundata import RunData, StageInfo, load_run, read_rows_loose
from valign.evals.section import ReportEnv, Section, SectionRenderer
from valign.evals.suites import SUITES

__all__ = ["report_sections", "render_report", "summary_section", "training_section", "constitution_section"]


# --------------------------------------------------------------------------- the run's own sections


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
    """Run summary: the config, every stage with its status, rows, data counts and time."""
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




def training_section(run: RunData, env: ReportEnv) -> Section | None:
    """Training curves of every training stage: SFT's and survey_sft's loss; DPO/KTO loss,
    reward accuracy and reward margins."""
    plots = []
    for s in run.stages:
        # A stage that trained logs it in its manifest; no list of stage names here.
        if s.manifest is None or "train" not in s.manifest:
            continue
        series = _series(s)
        if not series:
            continue
        plt = pyplot()
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


def constitution_section(run: RunData, env: ReportEnv) -> Section | None:
    """The constitution the run used, principle by principle."""
    c = run.constitution()
    if c is None:
        return None
    return Section("constitution", "Constitution", env.render("constitution.html.j2", c=c))


# --------------------------------------------------------------------------- the report


def report_sections() -> list[tuple[str, SectionRenderer]]:
    """The report's sections, top to bottom, each with its id.

    Example:
        >>> [section_id for section_id, _ in report_sections()]
        ['summary', 'training', 'grpo', 'keycases', 'mtbench', 'safety', 'fidelity', 'xstest', 'orbench', 'strongreject', 'harmbench', 'calibration', 'constitution']
    """
    return [
        ("summary", summary_section),
        ("training", training_section),
        ("grpo", grpo_section),
        *((suite.name, suite.section) for suite in SUITES.values()),
        ("calibration", calibration_section),
        ("constitution", constitution_section),
    ]


def render_report(path: str | Path, out: str | Path | None = None, title: str | None = None) -> Path:
    """Render the report of a run (or ``valign eval`` folder) to ``<path>/report.html``
    (or ``out``); sections without data are left out and named in the summary, except
    those of opt-in suites the evaluation did not name (nobody expected them)."""
    run = load_run(path)
    env = ReportEnv()
    sections: list[Section] = []
    missing: list[str] = []
    named = set((run.manifest("evaluate") or {}).get("suites") or [])
    unasked = {name for name, suite in SUITES.items() if not suite.default and name not in named}
    if run.stage("grpo") is None:
        unasked.add("grpo")  # a run without online RL expects no section for it
    for section_id, renderer in report_sections():
        sec = renderer(run, env)
        if sec is None:
            if section_id not in unasked:
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
