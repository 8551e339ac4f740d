"""Group-aware consensus on principle statements, and the public constitution built from it.

For a statement and a partition of respondents into groups g (the categories of a
demographic variable), with weighted counts ``A_g`` (agree), ``D_g`` (disagree) and
``S_g`` (saw the statement: agree + disagree + pass), Polis's group-aware consensus is

    consensus = ∏_g (A_g + 1) / (S_g + 2)

— high only when *every* group agrees, however small. The product shrinks with the
number of groups, so valign also reports its geometric mean over the groups
(``consensus_gm`` = ∏^(1/G)), which reads as "the agreement rate of a typical group"
and is comparable across partitions; thresholds apply to it. With several grouping
variables (age and sex and education) a statement's consensus is the smallest over
them: it must hold across the age groups *and* the sexes *and* the education levels.
Rejection is scored the same way with ``D_g`` in place of ``A_g``.

Intervals come from the survey's re-raked bootstrap replicates
(`valign.survey.analysis.SurveyAnalysis.replicate_weights`): the counts, and so the
consensus, are recomputed under every replicate's weights.

A statement becomes a principle when the lower bound of its consensus interval clears
``threshold``; one whose rejection does becomes a principle against the behaviour; a
statement on which groups split (some groups mostly agree, others mostly do not)
becomes a "present the main views fairly" principle carrying the split. Every
principle keeps its statement id and numbers in ``support``.

Example:
    >>> polis_consensus([[8, 10], [3, 10]])  # two groups: 8 of 10 agree, 3 of 10 agree
    0.25
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

from valign.constitution import Constitution, Principle, slugify

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

    from valign.survey.analysis import SurveyAnalysis

__all__ = ["polis_consensus", "ConsensusSettings", "consensus_table", "public_constitution"]


def polis_consensus(groups: Sequence[Sequence[float]]) -> float:
    """∏_g (A_g + 1) / (S_g + 2) over ``[(A_g, S_g), …]`` (weighted counts allowed)."""
    out = 1.0
    for agree, seen in groups:
        out *= (agree + 1) / (seen + 2)
    return out


@dataclass(frozen=True)
class ConsensusSettings:
    """How statements become principles.

    ``threshold``: the lowest acceptable lower bound of ``consensus_gm``;
    ``split``: groups split when the best group's agreement share is at least this and
    the worst group's at most 1 − this; ``min_group_n``: groups with fewer respondents
    who saw the statement take part in the consensus product (Polis's +1/+2 smoothing is
    made for them) but are not reported or used to call a split, since their shares
    would reveal a handful of people's answers.
    """

    by: tuple[str, ...] = ()
    threshold: float = 0.6
    split: float = 0.6
    level: float = 0.9
    min_group_n: int = 10

    def __post_init__(self) -> None:
        from valign.errors import ValignError

        # Below 0.5 an unseen statement ((0+1)/(0+2) per group) would pass.
        if not 0.5 < self.threshold < 1:
            raise ValignError(f"the consensus threshold must lie between 0.5 and 1, not {self.threshold}; 0.6 is a common choice.")


def _partition_counts(codes: "np.ndarray", W: "np.ndarray", groups: list[tuple[str, "np.ndarray"]]):
    """(A, D, S) arrays of shape (groups, columns of W) for one statement."""
    import numpy as np

    agree = (codes == "agree").astype(float)
    disagree = (codes == "disagree").astype(float)
    seen = np.isin(codes, ["agree", "disagree", "pass"]).astype(float)
    masks = np.stack([m for _, m in groups]).astype(float)  # G × n
    return (masks * agree) @ W, (masks * disagree) @ W, (masks * seen) @ W


def consensus_table(analysis: "SurveyAnalysis", settings: ConsensusSettings = ConsensusSettings()) -> "pd.DataFrame":
    """One row per principle statement: shares, consensus and rejection with intervals, group splits.

    Columns: ``item_id``, ``text``, ``agree``/``disagree``/``pass`` (weighted shares
    among those who saw it), ``consensus`` (Polis's product, for the limiting
    variable), ``consensus_gm`` with ``consensus_lci``/``consensus_uci``,
    ``rejection_gm`` with ``rejection_lci``/``rejection_uci``, ``limiting_variable``,
    ``groups`` ({variable: {group: agreement share}}), ``n_seen`` and ``verdict``
    (``consensus``, ``rejected``, ``contested`` or ``none``).
    """
    import numpy as np
    import pandas as pd

    from valign.survey.analysis import respondent_groups

    frames = analysis.frames
    resp = analysis.respondents
    W = analysis.all_weights()  # column 0: the point estimate; then the replicates
    by = settings.by or tuple(frames.margins)
    partitions = {var: [(label, mask) for label, _, mask in respondent_groups(resp, var)[1:]] for var in by}
    partitions = {var: groups for var, groups in partitions.items() if len(groups) >= 2}
    if not partitions:
        partitions = {"all": [("all", np.ones(len(resp), dtype=bool))]}
    choices = frames.choices("principle").reindex(index=analysis._ids)
    alpha = (1 - settings.level) / 2
    rows = []
    for item in frames.instrument.items():
        if item.kind != "principle" or item.id not in choices.columns:
            continue
        codes = choices[item.id].to_numpy(dtype=object)
        # Consensus (and rejection) must hold in every partition: per bootstrap column,
        # the smallest per-partition geometric mean is the statement's value.
        per_var: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        group_shares: dict[str, dict[str, float]] = {}
        for var, groups in partitions.items():
            A, D, S = _partition_counts(codes, W, groups)
            G = len(groups)
            cons = np.prod((A + 1) / (S + 2), axis=0)
            per_var[var] = (cons, cons ** (1 / G), np.prod((D + 1) / (S + 2), axis=0) ** (1 / G))
            seen_n = [int((np.isin(codes, ["agree", "disagree", "pass"]) & mask).sum()) for _, mask in groups]
            group_shares[var] = {
                label: float(A[g, 0] / S[g, 0]) for g, (label, _) in enumerate(groups) if seen_n[g] >= settings.min_group_n and S[g, 0] > 0
            }
        limiting = min(per_var, key=lambda v: per_var[v][1][0])
        gm = np.min(np.stack([v[1] for v in per_var.values()]), axis=0)
        rej_gm = np.min(np.stack([v[2] for v in per_var.values()]), axis=0)
        seen_all = np.isin(codes, ["agree", "disagree", "pass"])
        w0 = W[:, 0]
        total = float((w0 * seen_all).sum())
        share = {code: float((w0 * (codes == code)).sum() / total) if total > 0 else float("nan") for code in ("agree", "disagree", "pass")}
        ci = lambda x: (float(np.quantile(x[1:], alpha)), float(np.quantile(x[1:], 1 - alpha))) if x.size > 2 else (float("nan"), float("nan"))  # noqa: E731
        c_lo, c_hi = ci(gm)
        r_lo, r_hi = ci(rej_gm)
        known = [[v for v in shares.values() if v == v] for shares in group_shares.values()]
        split = any(vals and max(vals) >= settings.split and min(vals) <= 1 - settings.split for vals in known)
        if not seen_all.any():
            verdict = "none"  # nobody saw it: smoothing alone must not make it a principle
        else:
            verdict = "consensus" if c_lo >= settings.threshold else "rejected" if r_lo >= settings.threshold else "contested" if split else "none"
        rows.append({
            "item_id": item.id, "text": item.text, **share,
            "consensus": float(per_var[limiting][0][0]), "consensus_gm": float(gm[0]), "consensus_lci": c_lo, "consensus_uci": c_hi,
            "rejection_gm": float(rej_gm[0]), "rejection_lci": r_lo, "rejection_uci": r_hi,
            "limiting_variable": limiting, "groups": group_shares, "n_seen": int(seen_all.sum()), "verdict": verdict,
        })
    return pd.DataFrame(rows)


def public_constitution(table: "pd.DataFrame", *, name: str, source: str, settings: ConsensusSettings = ConsensusSettings()) -> Constitution:
    """A constitution from `consensus_table`: consensus statements as they are, rejected
    ones as principles against the behaviour, contested ones as "present the main views
    fairly"; each principle's ``support`` holds its statement id and numbers.

    Example (``analysis``: a `valign.survey.analysis.SurveyAnalysis`)::

        public_constitution(consensus_table(analysis), name="public", source="survey valign-demo")
    """
    principles = []
    for row in table.to_dict(orient="records"):
        support = {
            "statement": row["item_id"],
            "agree": round(row["agree"], 4),
            "disagree": round(row["disagree"], 4),
            "consensus_gm": round(row["consensus_gm"], 4),
            "ci": [round(row["consensus_lci"], 4), round(row["consensus_uci"], 4)],
            "rejection_gm": round(row["rejection_gm"], 4),
            "limiting_variable": row["limiting_variable"],
            "groups": {var: {g: round(v, 4) for g, v in shares.items() if v == v} for var, shares in row["groups"].items()},
            "n": row["n_seen"],
        }
        text = row["text"].strip()
        if row["verdict"] == "consensus":
            body, weight, tag = text, row["consensus_gm"], "consensus"
        elif row["verdict"] == "rejected":
            body, weight, tag = f"Most people in every group reject this: \"{text}\" Do not behave that way.", row["rejection_gm"], "rejected"
        elif row["verdict"] == "contested":
            var, lo, hi = _widest_split(row["groups"])
            body = (
                f"People are divided on this: \"{text}\" (agreement runs from {lo:.0%} to {hi:.0%} across {var} groups). "
                "When it comes up, present the main views fairly and let the person decide, rather than taking a side."
            )
            weight, tag = 0.5, "contested"
        else:
            continue
        principles.append(
            Principle(id=slugify(f"{tag}-{row['item_id']}")[:80], title=_short_title(text), text=body, weight=max(weight, 0.05),
                      source=source, support=support, tags=["survey", tag])
        )
    return Constitution(
        name=name,
        description=f"Principles from a public values survey ({source}): group-aware consensus (Polis), "
        f"threshold {settings.threshold} on the lower {settings.level:.0%} bound of the per-group agreement.",
        principles=principles,
    )


def _widest_split(groups: dict[str, dict[str, float]]) -> tuple[str, float, float]:
    """The grouping variable whose groups' agreement shares lie furthest apart, and that range."""
    spans = {var: [v for v in shares.values() if v == v] for var, shares in groups.items()}
    var = max((v for v in spans if spans[v]), key=lambda v: max(spans[v]) - min(spans[v]))
    return var, min(spans[var]), max(spans[var])


def _short_title(text: str, limit: int = 80) -> str:
    """The statement as a title: whole if short, else cut at a word with an ellipsis."""
    if len(text) <= limit:
        return text
    return text[: limit - 1].rsplit(" ", 1)[0].rstrip(",;:") + "…"
