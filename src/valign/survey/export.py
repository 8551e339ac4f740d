"""``valign survey export`` (and the `survey` stage): what a weighted survey gives the
pipeline — a constitution, training rows, an evaluation set.

`export_artifacts` writes, from weighted `SurveyFrames`:

| file | what | used by |
|---|---|---|
| ``constitution.yaml`` | group-aware consensus principles (`valign.survey.consensus`) | `revise`, `judge` (``constitution: …``) |
| ``consensus.csv`` | every statement's shares, consensus, intervals, verdict | people |
| ``dpo.jsonl`` | scenario choices as ``prompt/chosen/rejected`` pairs, both directions, weighted | `dpo` (``rows: survey``) |
| ``kto.jsonl`` | 👍/👎 ratings as ``prompt/completion/label`` rows, weighted | `kto` (``rows: survey``) |
| ``eval_items.jsonl`` | every question with the weighted distribution, overall and per subgroup | `survey_sft`, fidelity |
| ``summary.json`` | provenance: instrument, respondents, weighting diagnostics, settings | the report |

Everything is aggregated: a row's ``weight`` is a sum of respondents' survey weights
(times choice strength for scenarios), and subgroup distributions of fewer than
``min_group_n`` respondents are left out, so no file holds an individual's answers.

Example (``frames`` raked into ``result`` by `valign.survey.weighting`)::

    export_artifacts(apply_weights(frames, result), result, Path("out"))
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from valign.errors import ValignError
from valign.survey.cells import neutralise_table
from valign.survey.consensus import ConsensusSettings, consensus_table, public_constitution
from valign.survey.opinion import GroupDistribution, OpinionItem, write_items

if TYPE_CHECKING:
    from valign.survey.analysis import SurveyAnalysis
    from valign.survey.frames import SurveyFrames
    from valign.survey.instrument import Item
    from valign.survey.weighting import WeightingResult

__all__ = ["ExportSettings", "export_survey", "export_artifacts", "eval_items", "scenario_pairs", "rating_rows"]

EVAL_KINDS = ("value", "principle", "scenario", "rating")


@dataclass(frozen=True)
class ExportSettings:
    """``by``: subgroup variables of the evaluation set and the consensus (default: the
    instrument's margin variables); ``B``: bootstrap replicates for the intervals."""

    by: tuple[str, ...] = ()
    B: int = 200
    seed: int = 0
    min_group_n: int = 10
    consensus: ConsensusSettings = field(default_factory=ConsensusSettings)


def export_survey(
    db: str | None,
    instrument: str,
    margins: str | Path | None,
    out_dir: Path,
    settings: ExportSettings = ExportSettings(),
    *,
    trim: tuple[float, float] | None = None,
    missing: str = "own_category",
    synthetic: bool = False,
    completed_only: bool = True,
) -> dict[str, Any]:
    """From the survey database to the export: quality flags, selection, raking, artifacts.

    ``margins``: a margins file or shipped name, ``participants`` (each respondent
    counts once), or None (`valign.survey.polis_instrument.margins_for`: participants
    for an imported Polis conversation, ``nz-census-2023`` for an instrument).

    Example, from a survey database to a folder of artifacts::

        export_survey("sqlite:///survey.db", "demo", "nz-census-2023", Path("out"), synthetic=True)
        export_survey("sqlite:///survey.db", "polis:brexit-consensus", None, Path("out"))
    """
    from valign.survey.polis_instrument import margins_for
    from valign.survey.quality import load_checked
    from valign.survey.weighting import apply_weights, rake_frames

    frames = load_checked(db, instrument).select(completed_only=completed_only, synthetic=synthetic)
    if frames.respondents.empty:
        hint = " (all are synthetic: allow them for a demo)" if not synthetic else ""
        raise ValignError(f"the survey database has no {'completed ' if completed_only else ''}respondents to export{hint}; collect responses first.")
    result = rake_frames(frames, margins_for(frames, instrument, margins), trim=trim, missing=missing, seed=settings.seed)  # type: ignore[arg-type]
    return export_artifacts(apply_weights(frames, result), result, out_dir, settings)


def export_artifacts(frames: SurveyFrames, result: WeightingResult, out_dir: Path, settings: ExportSettings = ExportSettings()) -> dict[str, Any]:
    """Write the survey's constitution, training rows and evaluation set to ``out_dir``; returns the summary."""
    from valign.survey.analysis import SurveyAnalysis

    weights = result.weights.dropna()
    if weights.empty:
        raise ValignError("no respondent has a survey weight (all excluded or none completed); collect more responses before exporting.")
    out_dir.mkdir(parents=True, exist_ok=True)
    by = settings.by or tuple(frames.margins)
    analysis = SurveyAnalysis(frames, result, B=settings.B, seed=settings.seed)
    items = eval_items(analysis, by, settings.min_group_n)
    write_items(items, out_dir / "eval_items.jsonl")
    pairs = scenario_pairs(frames, weights)
    ratings = rating_rows(frames, weights)
    _write_jsonl(out_dir / "dpo.jsonl", pairs)
    _write_jsonl(out_dir / "kto.jsonl", ratings)
    counts: dict[str, Any] = {"eval_items": len(items), "dpo_rows": len(pairs), "kto_rows": len(ratings)}
    inst = frames.instrument
    if any(i.kind == "principle" for i in inst.items()):
        cons_settings = ConsensusSettings(**{**asdict(settings.consensus), "by": by, "min_group_n": settings.min_group_n})
        table = consensus_table(analysis, cons_settings)
        neutralise_table(table.drop(columns=["groups"])).to_csv(out_dir / "consensus.csv", index=False)  # statements may be proposals: free text
        source = f"survey {inst.id} v{inst.version}"
        try:
            constitution = public_constitution(table, name=f"public-{inst.id}", source=source, settings=cons_settings)
        except Exception as e:  # pydantic: a constitution needs at least one principle
            raise ValignError(
                f"no principle statement reached consensus, was rejected, or split groups (threshold {cons_settings.threshold}); "
                "collect more responses or lower the consensus threshold."
            ) from e
        (out_dir / "constitution.yaml").write_text(constitution.to_yaml(), encoding="utf-8")
        counts["principles"] = len(constitution.principles)
        counts["verdicts"] = table["verdict"].value_counts().to_dict()
    resp = frames.respondents
    summary = {
        "instrument": {"id": inst.id, "version": inst.version, "fingerprint": inst.fingerprint(), "validated": inst.validated},
        "respondents": {
            "total": int(len(resp)),
            "weighted": int(len(weights)),
            "synthetic": int(resp["synthetic"].fillna(False).astype(bool).sum()) if "synthetic" in resp else 0,
            "excluded": int(resp["exclude"].fillna(False).astype(bool).sum()) if "exclude" in resp else 0,
        },
        "weighting": json.loads(result.to_json()) if hasattr(result, "to_json") else {},
        "settings": {"by": list(by), "B": settings.B, "seed": settings.seed, "min_group_n": settings.min_group_n,
                     "consensus": asdict(settings.consensus)},
        "counts": counts,
    }
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str), encoding="utf-8")
    return summary


def _question(item: Item, instrument: Any) -> tuple[str, str, list[str]]:
    """(instructions, question, option labels) as a model is asked the item."""
    labels = [o.label for o in item.options]
    if item.kind == "value":
        return instrument.values.instructions, item.text, labels
    if item.kind == "principle":
        return instrument.principles.instructions, item.text, labels
    if item.kind == "scenario":
        return "", f'Someone asked an AI assistant: "{item.text}" Which answer would you rather it gave?', labels
    if item.kind == "rating":
        rated = next(r for r in instrument.ratings.items if r.id == item.id)
        return "", f'Someone asked an AI assistant: "{rated.prompt}" It answered: "{rated.answer}" Is this a good answer?', ["Good answer", "Bad answer"]
    raise ValueError(item.kind)


def eval_items(analysis: SurveyAnalysis, by: tuple[str, ...], min_group_n: int = 10) -> list[OpinionItem]:
    """Every value, principle, scenario and rating question with its weighted distribution."""
    import pandas as pd

    inst = analysis.frames.instrument
    chosen = [i for i in inst.items() if i.kind in EVAL_KINDS]
    if not chosen:
        return []
    ids = [i.id for i in chosen]
    per_group = [t[t["group_var"] != "all"] for t in (analysis.distributions(ids, by=v) for v in by)]
    shares = pd.concat([analysis.distributions(ids), *per_group], ignore_index=True)
    shares = shares[shares["statistic"] == "share"]
    out = []
    for item in chosen:
        rows = shares[shares["item_id"] == item.id]
        codes = [o.code for o in item.options]

        def dist(part: pd.DataFrame) -> tuple[list[float], int] | None:
            est = part.set_index("option")["estimate"].reindex(codes)
            n = int(part["n"].max()) if len(part) else 0
            if est.isna().any() or n == 0:
                return None
            return [float(x) for x in est / est.sum()], n

        overall = dist(rows[rows["group_var"] == "all"])
        if overall is None:
            continue  # nobody answered it
        groups = {}
        for (var, group), part in rows[rows["group_var"] != "all"].groupby(["group_var", "group"], sort=False):
            got = dist(part)
            if got is not None and got[1] >= min_group_n:
                groups[f"{var}={group}"] = GroupDistribution(distribution=got[0], n=got[1])
        instructions, question, labels = _question(item, inst)
        out.append(OpinionItem(id=item.id, kind=item.kind, instructions=instructions, question=question, options=labels, codes=codes,
                               ordinal=item.ordinal, distribution=overall[0], n=overall[1], groups=groups))
    return out


def scenario_pairs(frames: SurveyFrames, weights: Any) -> list[dict[str, Any]]:
    """DPO rows from scenario choices: each direction of each scenario, weighted by
    Σ (respondent weight × strength ÷ the strongest strength) over those who chose it."""
    inst = frames.instrument
    if inst.scenarios is None:
        return []
    a = frames.answers[frames.answers["kind"] == "scenario"]
    top = len(inst.scenarios.strength_labels)
    rows = []
    for sc in inst.scenarios.items:
        picked = a[a["item_id"] == sc.id]
        for win, lose in ((sc.answers[0], sc.answers[1]), (sc.answers[1], sc.answers[0])):
            sel = picked[picked["choice"] == win.id]
            strength = sel["strength"].astype(float).fillna(top).to_numpy() / top
            total = float((_weights_of(weights, sel) * strength).sum())
            if total <= 0:
                continue
            rows.append({
                "id": f"{sc.id}:{win.id}>{lose.id}",
                "prompt": [{"role": "user", "content": sc.prompt}],
                "chosen": [{"role": "assistant", "content": win.text}],
                "rejected": [{"role": "assistant", "content": lose.text}],
                "weight": round(total, 6),
                "respondents": int(len(sel)),
            })
    return rows


def rating_rows(frames: SurveyFrames, weights: Any) -> list[dict[str, Any]]:
    """KTO rows from 👍/👎: each rated answer as desirable (weight Σ 👍) and undesirable (weight Σ 👎)."""
    inst = frames.instrument
    if inst.ratings is None:
        return []
    a = frames.answers[frames.answers["kind"] == "rating"]
    rows = []
    for r in inst.ratings.items:
        picked = a[a["item_id"] == r.id]
        for code, label in (("up", True), ("down", False)):
            sel = picked[picked["choice"] == code]
            total = float(_weights_of(weights, sel).sum())
            if total <= 0:
                continue
            rows.append({
                "id": f"{r.id}:{code}",
                "prompt": [{"role": "user", "content": r.prompt}],
                "completion": [{"role": "assistant", "content": r.answer}],
                "label": label,
                "weight": round(total, 6),
                "respondents": int(len(sel)),
            })
    return rows


def _weights_of(weights: Any, answers: Any) -> Any:
    """The survey weight of each answer's respondent (0 for respondents without one)."""
    return weights.astype(float).reindex(answers["respondent_id"].to_numpy()).fillna(0.0).to_numpy()


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
