"""The report's judge-calibration section, and the calibration chart `valign judge calibrate --plot` saves.

The section shows each judge valign used in the run with both orders on record: the
`judge` stage's (its manifest's ``calibration``, or its rows for runs made before
that block existed) and the key cases' (the evaluate manifest's
``keycases.calibration``, or the judged key-case rows) — and MT-Bench's, whose judge
grades each answer alone: its base and tuned grades of the same turn are a pair
without an order, so it shows ties and length bias only. Survey fidelity reads option
probabilities in one fixed order, so it has no pairs to measure (see
docs/evaluation/calibration.md).

Example:
    >>> from valign.evals.calibration import Reading, calibrate
    >>> alt = calibration_alt(calibrate([Reading((0.8, 0.8), (30, 10))]), "Judge stage")
    >>> alt.startswith("Judge stage calibration: mean P(first shown better) 0.80 with X first, 0.80 with Y first")
    True
"""

from __future__ import annotations

from typing import Any

from valign.evals.calibration import CalibrationReport, calibrate, readings_from_judge_rows, readings_from_keycase_rows, readings_from_mtbench_rows
from valign.evals.plots import BASE_COLOR, TUNED_COLOR, pyplot
from valign.evals.rundata import RunData
from valign.evals.section import ReportEnv, Section

__all__ = ["calibration_figure", "calibration_alt", "run_calibrations", "calibration_section"]


def calibration_figure(report: CalibrationReport) -> Any:
    """A matplotlib figure: mean P(first shown better) in each order, the share of
    decisive pairs the longer answer won, and with labels the reliability curve."""
    plt = pyplot()
    panels = 3 if report.labelled else 2
    fig, axes = plt.subplots(1, panels, figsize=(3.2 * panels, 2.6), squeeze=False)
    ax = axes[0][0]
    if report.mean_p_first != (None, None):
        vals = [v if v is not None else 0.0 for v in report.mean_p_first]
        ax.bar(["X first", "Y first"], vals, color=[TUNED_COLOR, BASE_COLOR])
    else:
        ax.set_xticks([])
        ax.text(0.5, 0.75, "answers graded one at a time:\nno order to swap", ha="center", va="center", transform=ax.transAxes)
    ax.axhline(0.5, color="black", linestyle="--", linewidth=1)
    ax.set_ylim(0, 1)
    ax.set_title("mean P(first shown better)")
    ax = axes[0][1]
    if report.longer_wins is not None:
        lo, hi = report.longer_wins_ci or (report.longer_wins, report.longer_wins)
        ax.bar(["longer wins"], [report.longer_wins], color=TUNED_COLOR,
               yerr=[[report.longer_wins - lo], [hi - report.longer_wins]], capsize=6)
    else:
        ax.set_xticks([])
        ax.text(0.5, 0.75, "no decisive pair\nof unequal lengths", ha="center", va="center", transform=ax.transAxes)
    ax.axhline(0.5, color="black", linestyle="--", linewidth=1)
    ax.set_ylim(0, 1)
    ax.set_title(f"longer answer wins ({report.length_pairs} pairs)")
    if report.labelled:
        ax = axes[0][2]
        pts = [(b.confidence, b.accuracy, b.n) for b in report.reliability if b.n]
        ax.plot([0.5, 1], [0.5, 1], color="black", linestyle="--", linewidth=1)
        if pts:
            xs, ys, ns = zip(*pts)
            ax.plot(xs, ys, color=TUNED_COLOR, marker="o", linewidth=1.5)
            for x, y, n in pts:
                ax.annotate(str(n), (x, y), textcoords="offset points", xytext=(4, -10), fontsize=7)
        ax.set_xlim(0.5, 1)
        ax.set_ylim(0, 1)
        ax.set_xlabel("judge's confidence")
        ax.set_ylabel("share right")
        ax.set_title(f"reliability (ECE {report.ece:.3f})" if report.ece is not None else "reliability")
    fig.tight_layout()
    return fig


def _n(x: float | None, digits: int = 2) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def calibration_alt(report: CalibrationReport, title: str) -> str:
    """The chart's text alternative: every number it shows."""
    o1, o2 = report.mean_p_first
    length = (
        f"the longer answer won {_n(report.longer_wins)} of {report.length_pairs} decisive pairs (0.50 is no length bias)"
        if report.longer_wins is not None
        else "no decisive pair had answers of unequal length"
    )
    position = (
        f"mean P(first shown better) {_n(o1)} with X first, {_n(o2)} with Y first (0.50 is no position bias)"
        if (o1, o2) != (None, None)
        else "answers graded one at a time, so no position bias to measure"
    )
    text = f"{title} calibration: {position}; {length}"
    if report.labelled:
        bins = "; ".join(f"confidence {b.confidence:.2f}: {b.accuracy:.2f} right of {b.n}" for b in report.reliability if b.n)
        text += f". Reliability curve (ECE {_n(report.ece, 3)}): {bins}"
    return text + "."


def run_calibrations(run: RunData) -> list[tuple[str, CalibrationReport]]:
    """The calibration of each judge in a run that judged pairs in both orders: the
    judge stage's and the key cases', from the manifests, else from the rows.

    Example:
        >>> from pathlib import Path
        >>> run_calibrations(RunData(Path("runs/x"), "x", None, []))
        []
    """
    out: list[tuple[str, CalibrationReport]] = []
    block = (run.manifest("judge") or {}).get("calibration")
    if block:
        out.append(("Judge stage", CalibrationReport.from_dict(block)))
    elif run.rows("judge"):
        judge = run.rows("judge")[0].get("judge_model")
        out.append(("Judge stage", calibrate(readings_from_judge_rows(run.rows("judge")), judge=judge, source="judge stage")))
    block = ((run.manifest("evaluate") or {}).get("keycases") or {}).get("calibration")
    if block:
        out.append(("Key cases", CalibrationReport.from_dict(block)))
    else:
        cases = [r for r in run.rows("evaluate") if r.get("type") == "keycase"]
        if cases:
            out.append(("Key cases", calibrate(readings_from_keycase_rows(cases), judge=cases[0].get("judge_model"), source="key cases")))
    block = ((run.manifest("evaluate") or {}).get("mtbench") or {}).get("calibration")
    if block:
        out.append(("MT-Bench", CalibrationReport.from_dict(block)))
    else:
        graded = [r for r in run.rows("evaluate") if r.get("type") in ("mtbench_answer", "mtbench_judgment")]
        if graded:
            judge = next((r["record"]["judge"][0] for r in graded if r["type"] == "mtbench_judgment" and r["record"].get("judge")), None)
            out.append(("MT-Bench", calibrate(readings_from_mtbench_rows(graded), judge=judge, source="MT-Bench")))
    return [(title, r) for title, r in out if r.pairs]


def calibration_section(run: RunData, env: ReportEnv) -> Section | None:
    """Judge calibration: position bias, order flips, ties and length bias of each judge, with a chart."""
    found = run_calibrations(run)
    if not found:
        return None
    entries = [
        {"title": title, "r": r, "src": env.figure(calibration_figure(r)), "alt": calibration_alt(r, title)}
        for title, r in found
    ]
    return Section("calibration", "Judge calibration", env.render("calibration.html.j2", entries=entries))
