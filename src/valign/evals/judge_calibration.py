"""Run a judge on labelled pairs in both orders and measure its calibration (``valign judge calibrate``).

Each labelled pair (`valign.evals.labelled_pairs`) is judged twice: once with the
chosen answer shown first (order 1) and once with it shown second (order 2), so X is
always the chosen answer and every `Reading` carries ``label=0``. Three ways to ask:

* ``logprob`` — the judge stage's multiple-choice prompt (`valign.stages.judge.judge_logprob`,
  which already scores both orders), one principle of the constitution per pair;
* ``verdict`` — the judge stage's JSON verdict (`judge_verdict`), which shows one
  order per call: the pair and its mirror (answers swapped, same id, so the same
  shown position) are judged, so each answer is shown first once; the verdict's
  ``0.5 + confidence / 2`` is P(preferred answer better);
* ``pairwise`` — the five-level pairwise scale of the key cases (`judge_pairwise`,
  ``generative`` or ``logprob``), both orders, shown the whole constitution.

Example (loads the embedded model)::

    result = calibrate_judge("embedded", load_labelled_pairs("pairs.jsonl", limit=4), mode="logprob")
    print(result.report.render_text())
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Sequence

from valign.constitution import Constitution, load_constitution
from valign.errors import ValignError
from valign.evals.calibration import CalibrationReport, Reading, calibrate, five_level_reading, text_length
from valign.evals.labelled_pairs import LabelledPair, load_labelled_pairs
from valign.evals.plots import pyplot
from valign.models.base import ChatModel
from valign.types import Row

__all__ = ["MODES", "CalibrationRun", "readings_logprob", "readings_verdict", "readings_pairwise", "calibrate_judge", "write_calibration"]

Mode = Literal["logprob", "verdict", "pairwise"]
MODES: tuple[str, ...] = ("logprob", "verdict", "pairwise")


@dataclass
class CalibrationRun:
    """The report and each pair's reading (in the file's order)."""

    report: CalibrationReport
    pairs: list[LabelledPair]
    readings: list[Reading]

    def to_dict(self) -> dict[str, Any]:
        """The report plus one entry per pair: id, P(first) per order, lengths."""
        return {
            **self.report.to_dict(),
            "pair_readings": [
                {"id": p.id, "p_first": list(r.p_first), "lengths": list(r.lengths or ()), "p_chosen": r.p_x}
                for p, r in zip(self.pairs, self.readings)
            ],
        }


def _lengths(p: LabelledPair) -> tuple[float, float]:
    return text_length(p.chosen), text_length(p.rejected)


def _pair_rows(pairs: Sequence[LabelledPair], swapped: bool = False) -> list[Row]:
    rows = []
    for p in pairs:
        texts = [p.rejected, p.chosen] if swapped else [p.chosen, p.rejected]
        rows.append({"id": p.id, "prompt_messages": p.prompt, "responses": [{"text": t} for t in texts]})
    return rows


def readings_logprob(model: ChatModel, pairs: Sequence[LabelledPair], constitution: Constitution, seed: int = 0) -> list[Reading]:
    """Readings by the judge stage's logprob comparison (both orders in one call)."""
    from valign.stages.judge import JudgeConfig, judge_logprob

    results = judge_logprob(model, _pair_rows(pairs), JudgeConfig(mode="logprob"), constitution, seed)
    # p_orders are P(chosen better) in each order; order 2 shows the rejected answer first.
    return [Reading((r["p_orders"][0], round(1 - r["p_orders"][1], 12)), _lengths(p), 0) for p, r in zip(pairs, results)]


def readings_verdict(
    model: ChatModel, pairs: Sequence[LabelledPair], constitution: Constitution, seed: int = 0, max_new_tokens: int | None = None
) -> list[Reading]:
    """Readings by the judge stage's JSON verdicts, each pair and its mirror."""
    from valign.stages.judge import OPTIONS, JudgeConfig, judge_verdict

    cfg = JudgeConfig(mode="verdict")
    if max_new_tokens is not None:
        cfg = cfg.model_copy(update={"gen": cfg.gen.model_copy(update={"max_new_tokens": max_new_tokens})})
    # Same ids, so the same shown position: the mirror shows the other answer there.
    straight = judge_verdict(model, _pair_rows(pairs), cfg, constitution, seed)
    mirror = judge_verdict(model, _pair_rows(pairs, swapped=True), cfg, constitution, seed)
    out = []
    for p, a, b in zip(pairs, straight, mirror):
        p_first: list[float | None] = [None, None]
        for res, chosen_at in ((a, 0), (b, 1)):  # where the chosen answer sits in that row's responses
            v = res.get("verdict")
            if v is None:
                continue
            p_a = 0.5 + v.confidence / 2 if v.preferred == OPTIONS[0] else 0.5 - v.confidence / 2
            chosen_first = res["shown_order"][0] == chosen_at
            p_first[0 if chosen_first else 1] = round(p_a, 12)
        out.append(Reading((p_first[0], p_first[1]), _lengths(p), 0))
    return out


def readings_pairwise(
    model: ChatModel,
    pairs: Sequence[LabelledPair],
    constitution: Constitution,
    seed: int = 0,
    judge_mode: str = "generative",
    max_new_tokens: int | None = None,
) -> list[Reading]:
    """Readings by the key cases' five-level pairwise judge, shown the whole constitution."""
    from valign.evals.keycases import KeyCase, principles_text
    from valign.evals.pairwise import PairItem, PairwiseConfig, judge_pairwise
    from valign.stages.judge import render_conversation

    cfg = PairwiseConfig(judge_mode=judge_mode)  # type: ignore[arg-type]
    if max_new_tokens is not None:
        cfg = cfg.model_copy(update={"judge_gen": cfg.judge_gen.model_copy(update={"max_new_tokens": max_new_tokens})})
    items = []
    for p in pairs:
        # One user turn is shown as itself; a longer chat as its transcript.
        prompt = p.prompt[0]["content"] if len(p.prompt) == 1 else render_conversation(p.prompt)
        # A case tagged with no principle is shown the whole constitution.
        principles = principles_text(KeyCase(id=p.id or "pair", prompt=prompt or "-"), constitution)
        items.append(PairItem(prompt=prompt, x=p.chosen, y=p.rejected, principles=principles, key=p.id))
    results = judge_pairwise(model, items, cfg, seed)
    return [five_level_reading(r.orders, _lengths(p), 0) for p, r in zip(pairs, results)]


def calibrate_judge(
    judge: str | ChatModel,
    pairs: Sequence[LabelledPair],
    mode: str = "logprob",
    constitution: str = "kantian",
    seed: int = 0,
    judge_mode: str = "generative",
    max_new_tokens: int | None = None,
    tie_eps: float | None = None,
) -> CalibrationRun:
    """Judge every pair in both orders with ``judge`` (a spec or a loaded model) and
    compute the calibration figures against the labels.

    Example (loads the embedded model)::

        calibrate_judge("embedded", pairs, mode="pairwise", judge_mode="logprob").report.agreement
    """
    if mode not in MODES:
        raise ValignError(f"--mode '{mode}' is not one of {', '.join(MODES)}.")
    if judge_mode not in ("generative", "logprob"):
        raise ValignError(f"--judge-mode '{judge_mode}' is not generative or logprob.")
    c = load_constitution(constitution)
    if isinstance(judge, str):
        from valign.models.registry import load_model

        spec, model = judge, load_model(judge)
    else:
        spec, model = getattr(judge, "name", "judge"), judge
    if mode == "logprob":
        readings = readings_logprob(model, pairs, c, seed)
    elif mode == "verdict":
        readings = readings_verdict(model, pairs, c, seed, max_new_tokens)
    else:
        readings = readings_pairwise(model, pairs, c, seed, judge_mode, max_new_tokens)
    source = f"{len(pairs)} labelled pairs ({mode}{', ' + judge_mode if mode == 'pairwise' else ''})"
    kw = {} if tie_eps is None else {"tie_eps": tie_eps}
    return CalibrationRun(calibrate(readings, judge=spec, source=source, **kw), list(pairs), readings)


def write_calibration(
    judge: str,
    pairs_file: str | Path,
    mode: str = "logprob",
    judge_mode: str = "generative",
    limit: int | None = None,
    constitution: str = "kantian",
    seed: int = 0,
    max_new_tokens: int | None = None,
    json_out: str | Path | None = None,
    plot: str | Path | None = None,
) -> str:
    """What ``valign judge calibrate`` does: load the pairs, judge them, write the JSON
    and chart if asked, and return the text to print.

    Example (loads the embedded model)::

        print(write_calibration("embedded", "pairs.jsonl", limit=4, json_out="cal.json"))
    """
    if mode not in MODES:  # before loading any model
        raise ValignError(f"--mode '{mode}' is not one of {', '.join(MODES)}.")
    pairs = load_labelled_pairs(pairs_file, limit)
    result = calibrate_judge(judge, pairs, mode=mode, constitution=constitution, seed=seed, judge_mode=judge_mode, max_new_tokens=max_new_tokens)
    lines = [result.report.render_text()]
    if json_out is not None:
        Path(json_out).write_text(json.dumps(result.to_dict(), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        lines.append(f"wrote {json_out}")
    if plot is not None:
        from valign.evals.calibration_section import calibration_figure

        fig = calibration_figure(result.report)
        fig.savefig(plot, format="png", dpi=110, bbox_inches="tight")
        pyplot().close(fig)
        lines.append(f"wrote {plot}")
    return "\n".join(lines)
