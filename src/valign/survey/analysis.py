"""Weighted survey estimates with bootstrap confidence intervals that re-rake every replicate.

`SurveyAnalysis` takes the frames and the `WeightingResult` that weighted them, and
gives tidy tables (one row per estimate, with ``lci``/``uci``) for:

* `SurveyAnalysis.distributions` — each item's weighted share per option (options in
  instrument order; shares among the respondents who answered the item) and, for
  ordinal items (Likert), the weighted mean rating;
* `SurveyAnalysis.value_profiles` — weighted mean value scores (centred, as
  `valign.survey.scoring` defines them) per value;
* `SurveyAnalysis.consistency` — stated versus revealed values (defined below);
* `SurveyAnalysis.principle_counts` / `weighted_counts` — weighted agree, disagree and
  pass counts per principle statement, the input of group-aware consensus.

Each is given overall (``group_var`` and ``group`` = ``"all"``) and, with ``by=``, per
subgroup of a respondents column (any margin variable) or of the crossing of two
(``by=("age_group", "sex")``, groups like ``"18-29 × female"``); groups are the
instrument's option codes, and respondents who skipped the variable belong to no group.

**Confidence intervals** are percentile intervals over B bootstrap replicates. A
replicate resamples the weighted respondents with replacement (n draws; with
``strata=`` n_h draws within each category of that variable), **rakes the resample to
the same margins with the same settings** (so the interval includes the variability of
the weights themselves), applies the quality factors, and recomputes every statistic.
svy rakes all replicates at once (it adjusts replicate weights together with the main
weight); with trimming each replicate runs its own trim–rake cycle. A replicate in
which a census category drew nobody cannot be raked, so it is drawn again. The same
replicates serve every table of one `SurveyAnalysis`, so estimates are coherent.

**Stated versus revealed.** For a scenario whose two answers carry different sets of
``values`` (restricted to values the instrument scores), a respondent's stated support
for an answer is the mean of their centred scores on that answer's values, and
``d = support(first answer) − support(second answer)``. The respondent's choice is
*consistent* when they chose the answer with the higher support; ``|d| < 1e-9`` is a
tie and is left out of the share. Per scenario and pooled over scenarios (each
respondent–scenario pair weighted by the respondent's weight) the table gives:
``share_consistent`` (weighted; 0.5 is chance), the weighted point-biserial
correlation ``r_pb`` between choosing the first answer (1/0) and ``d``, and the slope
``logit_slope`` of a weighted logistic regression of choosing the first answer on
``d`` (change in log-odds per scale point; NaN when the choices are perfectly
separated by ``d``).

Example:
    >>> from valign.survey.frames import SurveyFrames
    >>> from valign.survey.instrument import load_instrument
    >>> SurveyAnalysis.__name__
    'SurveyAnalysis'
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

from valign.errors import ValignError

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

    from valign.survey.frames import SurveyFrames
    from valign.survey.weighting import WeightingResult

__all__ = ["SurveyAnalysis", "bootstrap_weights", "weighted_counts", "respondent_groups", "By", "TIE"]

By = str | tuple[str, str] | None
TIE = 1e-9  # |d| below this is a tie in stated support
_MAX_REDRAWS = 50


def bootstrap_weights(result: WeightingResult, *, B: int = 200, seed: int = 0, strata: Any = None) -> np.ndarray:
    """Re-raked bootstrap replicate weights: an n × B array for the n weighted respondents.

    ``strata`` (optional) is an array of n labels: resampling then draws n_h within each
    label. Every column sums to n, like the main weights.

    Example:
        >>> import numpy as np, pandas as pd
        >>> from valign.survey.weighting import RakingSpec
        >>> class R: spec = RakingSpec(pd.Index(list("abcd")), {"sex": np.array(list("ffmm"))}, {"sex": {"f": .5, "m": .5}}, np.ones(4), None)
        >>> bootstrap_weights(R(), B=3).sum(axis=0).round(6).tolist()
        [4.0, 4.0, 4.0]
    """
    import numpy as np

    spec = result.spec
    n = spec.n
    if B < 2:
        raise ValignError(f"B={B} bootstrap replicates cannot give an interval; use B ≥ 100 (200 is a good default).")
    rng = np.random.default_rng(seed)
    labels = np.zeros(n, dtype=int) if strata is None else np.unique(np.asarray(strata).astype(str), return_inverse=True)[1]
    members = [np.flatnonzero(labels == s) for s in range(labels.max() + 1)]
    cell_index = [(name, spec.cells[name] == cat) for name, t in spec.targets.items() for cat in t]

    def draw(k: int) -> np.ndarray:
        counts = np.zeros((n, k))
        for idx in members:
            counts[idx] = rng.multinomial(len(idx), np.full(len(idx), 1 / len(idx)), size=k).T
        return counts

    def empty_cell(counts: np.ndarray) -> np.ndarray:
        bad = np.zeros(counts.shape[1], dtype=bool)
        for _, hit in cell_index:
            bad |= counts[hit].sum(axis=0) == 0
        return bad

    # A replicate that drew nobody (or too few) of a small census category cannot be
    # raked to it; such replicates are drawn again, as a conditional bootstrap would.
    counts = draw(B)
    weights = np.zeros((n, B))
    todo = np.ones(B, dtype=bool)
    for _ in range(_MAX_REDRAWS):
        empty = empty_cell(counts) & todo
        while empty.any():
            counts[:, empty] = draw(int(empty.sum()))
            empty = empty_cell(counts) & todo
        raked, ok = spec.try_rake(counts[:, todo])
        idx = np.flatnonzero(todo)
        weights[:, idx[ok]] = raked[:, ok]
        todo[idx[ok]] = False
        if not todo.any():
            return weights
        counts[:, todo] = draw(int(todo.sum()))
    raise ValignError(
        f"{int(todo.sum())} of {B} bootstrap resamples could not be raked to the margins even after {_MAX_REDRAWS} redraws "
        "(a census category has too few respondents); collapse small categories in the margins file."
    )


def weighted_counts(frames: SurveyFrames, weights: pd.Series | None = None, by: By = None) -> pd.DataFrame:
    """Weighted agree / disagree / pass counts per principle statement, overall and per group.

    Columns: ``item_id``, ``group_var``, ``group``, ``agree`` (A_g), ``disagree`` (D_g),
    ``pass``, ``seen`` (S_g = agree + disagree + pass) — sums of weights — and ``n_seen``
    (respondents). ``weights`` defaults to ``frames.respondents["weight"]`` (or 1 each
    if absent); respondents without a weight count 0.

    Example:
        >>> import pandas as pd
        >>> from valign.survey.frames import SurveyFrames
        >>> from valign.survey.instrument import load_instrument
        >>> inst = load_instrument("demo")
        >>> resp = pd.DataFrame({"sex": ["female", "male"]}, index=pd.Index(["a", "b"], name="respondent_id"))
        >>> ans = pd.DataFrame({"respondent_id": ["a", "b"], "item_id": ["pr-warn"] * 2, "kind": ["principle"] * 2,
        ...                     "choice": ["agree", "pass"]})
        >>> t = weighted_counts(SurveyFrames(inst, resp, ans), pd.Series([2.0, 1.0], index=["a", "b"]))
        >>> t.loc[t.item_id == "pr-warn", ["agree", "disagree", "pass", "seen"]].values.tolist()
        [[2.0, 0.0, 1.0, 3.0]]
    """
    import numpy as np
    import pandas as pd

    resp = frames.respondents
    if weights is None:
        weights = resp["weight"] if "weight" in resp.columns else pd.Series(1.0, index=resp.index)
    w = pd.to_numeric(weights.reindex(resp.index), errors="coerce").fillna(0.0).to_numpy()
    choices = frames.choices("principle")
    rows = []
    for label, var, mask in respondent_groups(resp, by):
        wg = w * mask
        for item in frames.instrument.items():
            if item.kind != "principle":
                continue
            col = choices[item.id].to_numpy() if item.id in choices.columns else np.full(len(resp), None)
            counts = {code: float(wg[col == code].sum()) for code in ("agree", "disagree", "pass")}
            seen = (col == "agree") | (col == "disagree") | (col == "pass")
            rows.append({"item_id": item.id, "group_var": var, "group": label, **counts, "seen": sum(counts.values()), "n_seen": int((seen & mask).sum())})
    return pd.DataFrame(rows, columns=["item_id", "group_var", "group", "agree", "disagree", "pass", "seen", "n_seen"])


@dataclass
class SurveyAnalysis:
    """Weighted estimates with re-raked bootstrap intervals (see the module docstring).

    Example, on a survey's frames and margins (``level`` is 0.95 unless given)::

        a = SurveyAnalysis(frames, rake_frames(frames, margins), B=200, seed=1)
        a.distributions(by="age_group"); a.value_profiles(by="sex"); a.consistency()
    """

    frames: SurveyFrames
    result: WeightingResult
    B: int = 200
    seed: int = 0
    level: float = 0.95
    strata: str | None = None

    def __post_init__(self) -> None:
        import numpy as np

        if not 0 < self.level < 1:
            raise ValignError(f"level={self.level} is not a confidence level; use e.g. 0.95.")
        self._ids = self.result.spec.ids
        self._w = self.result.weights.reindex(self._ids).to_numpy(dtype=float)
        self.respondents = self.frames.respondents.reindex(self._ids)  # the weighted respondents, in weight order
        self._W: np.ndarray | None = None

    @property
    def replicate_weights(self) -> np.ndarray:
        """n × B re-raked replicate weights (computed once, on first use)."""
        if self._W is None:
            strata = None
            if self.strata is not None:
                if self.strata not in self.respondents.columns:
                    raise ValignError(f"strata='{self.strata}' is not a respondents column; use a margin variable such as {', '.join(self.result.spec.cells)}.")
                strata = self.respondents[self.strata].astype(str).to_numpy()
            self._W = bootstrap_weights(self.result, B=self.B, seed=self.seed, strata=strata)
        return self._W

    def all_weights(self) -> np.ndarray:
        """n × (1 + B): the point-estimate weights, then the replicate weights."""
        import numpy as np

        return np.column_stack([self._w, self.replicate_weights])

    # ── distributions ──────────────────────────────────────────────────────

    def distributions(self, items: Sequence[str] | None = None, by: By = None) -> pd.DataFrame:
        """Weighted share per option of each item (and weighted mean of ordinal items), with CIs.

        Columns: ``item_id``, ``kind``, ``group_var``, ``group``, ``statistic`` (``share``
        or ``mean``), ``option`` (the option code; empty for means), ``estimate``, ``se``
        (bootstrap SD), ``lci``, ``uci``, ``n`` (respondents who answered, in the group).
        ``items`` defaults to every demographic-free question with options (values,
        principles, scenarios, ratings, social desirability).
        """
        import numpy as np
        import pandas as pd

        inst = self.frames.instrument
        chosen = [inst.item(i) for i in items] if items is not None else [i for i in inst.items() if i.kind not in ("demographic", "attention")]
        choices = self.frames.choices().reindex(index=self._ids)
        ind_cols, ans_cols, val_cols, meta = [], [], [], []
        for item in chosen:
            col = choices[item.id].to_numpy(dtype=object) if item.id in choices.columns else np.full(len(self._ids), None, dtype=object)
            answered = np.isin(col, [o.code for o in item.options])
            ans_cols.append(answered)
            for o in item.options:
                ind_cols.append(col == o.code)
                meta.append((item, "share", o.code, len(ans_cols) - 1))
            if item.ordinal:
                vals = np.where(answered, pd.to_numeric(pd.Series(col), errors="coerce").fillna(0).to_numpy(), 0.0)
                val_cols.append(vals)
                meta.append((item, "mean", "", len(ans_cols) - 1))
        X = np.column_stack(ind_cols + val_cols).astype(float) if ind_cols else np.zeros((len(self._ids), 0))
        A = np.column_stack(ans_cols).astype(float) if ans_cols else np.zeros((len(self._ids), 0))
        n_ind = len(ind_cols)
        # numerator columns: indicators first, then ordinal values; map meta to them in order
        num_index, k_share, k_mean = [], 0, n_ind
        for _, stat, _, _ in meta:
            if stat == "share":
                num_index.append(k_share)
                k_share += 1
            else:
                num_index.append(k_mean)
                k_mean += 1
        rows = []
        W = self.all_weights()
        for label, var, mask in respondent_groups(self.respondents, by):
            Wg = W * mask[:, None]
            num = X.T @ Wg
            den = A.T @ Wg
            n_ans = (A * mask[:, None]).sum(axis=0)
            with np.errstate(invalid="ignore", divide="ignore"):
                for (item, stat, code, a), k in zip(meta, num_index):
                    est = num[k] / den[a]
                    rows.append(self._row(est, item_id=item.id, kind=item.kind, group_var=var, group=label, statistic=stat, option=code, n=int(n_ans[a])))
        return pd.DataFrame(rows)

    # ── value profiles ─────────────────────────────────────────────────────

    def value_profiles(self, by: By = None, scoring: str = "centred") -> pd.DataFrame:
        """Weighted mean value score per value, overall and per group, with CIs.

        Columns: ``value``, ``group_var``, ``group``, ``estimate``, ``se``, ``lci``, ``uci``, ``n``.
        """
        import numpy as np
        import pandas as pd

        from valign.survey.scoring import value_scores

        scores = value_scores(self.frames, scoring).reindex(self._ids)  # type: ignore[arg-type]
        S = scores.to_numpy(dtype=float)
        has = ~np.isnan(S)
        S0 = np.where(has, S, 0.0)
        W = self.all_weights()
        rows = []
        for label, var, mask in respondent_groups(self.respondents, by):
            Wg = W * mask[:, None]
            num, den = S0.T @ Wg, has.T.astype(float) @ Wg
            n = (has & mask[:, None]).sum(axis=0)
            with np.errstate(invalid="ignore", divide="ignore"):
                for j, value in enumerate(scores.columns):
                    rows.append(self._row(num[j] / den[j], value=value, group_var=var, group=label, n=int(n[j])))
        return pd.DataFrame(rows)

    # ── stated versus revealed ─────────────────────────────────────────────

    def consistency(self, by: By = None) -> pd.DataFrame:
        """Stated values against scenario choices, per scenario and pooled (``scenario`` = ``"all"``).

        Columns: ``scenario``, ``group_var``, ``group``, ``measure`` (``share_consistent``,
        ``r_pb``, ``logit_slope``), ``estimate``, ``se``, ``lci``, ``uci``, ``n`` (pairs
        with a choice and stated scores), ``n_ties``.
        """
        import numpy as np
        import pandas as pd

        from valign.survey.scoring import value_scores

        inst = self.frames.instrument
        scores = value_scores(self.frames, "centred").reindex(self._ids)
        choices = self.frames.choices("scenario").reindex(index=self._ids)
        pairs = []  # (scenario id, y, d, valid)
        for sc in inst.scenarios.items if inst.scenarios else []:
            va = [v for v in sc.answers[0].values if v in scores.columns]
            vb = [v for v in sc.answers[1].values if v in scores.columns]
            if not va or not vb or set(va) == set(vb) or sc.id not in choices.columns:
                continue
            d = scores[va].mean(axis=1, skipna=False).to_numpy() - scores[vb].mean(axis=1, skipna=False).to_numpy()
            col = choices[sc.id].to_numpy(dtype=object)
            chose = np.isin(col, [sc.answers[0].id, sc.answers[1].id])
            valid = chose & ~np.isnan(d)
            y = (col == sc.answers[0].id).astype(float)
            pairs.append((sc.id, y, np.nan_to_num(d), valid))
        if not pairs:
            return pd.DataFrame(columns=["scenario", "group_var", "group", "measure", "estimate", "se", "lci", "uci", "n", "n_ties"])
        W = self.all_weights()
        rows = []
        for label, var, mask in respondent_groups(self.respondents, by):
            Wg = W * mask[:, None]
            stacked = [(sid, y, d, valid & mask) for sid, y, d, valid in pairs]
            if len(stacked) > 1:
                stacked.append(
                    ("all", np.concatenate([p[1] for p in stacked]), np.concatenate([p[2] for p in stacked]), np.concatenate([p[3] for p in stacked]))
                )
            for sid, y, d, valid in stacked:
                reps = len(y) // len(mask)
                Wv = np.tile(Wg, (reps, 1)) * valid[:, None]
                ties = np.abs(d) < TIE
                consistent = ((d > 0) & (y == 1)) | ((d < 0) & (y == 0))
                base = {"scenario": sid, "group_var": var, "group": label, "n": int(valid.sum()), "n_ties": int((valid & ties).sum())}
                with np.errstate(invalid="ignore", divide="ignore"):
                    share = (consistent * ~ties).astype(float) @ Wv / ((~ties).astype(float) @ Wv)
                    rows.append(self._row(share, measure="share_consistent", **base))
                    rows.append(self._row(_weighted_corr(y, d, Wv), measure="r_pb", **base))
                    rows.append(self._row(_logit_slope(y, d, Wv), measure="logit_slope", **base))
        return pd.DataFrame(rows)

    # ── principles ─────────────────────────────────────────────────────────

    def principle_counts(self, by: By = None) -> pd.DataFrame:
        """Weighted agree / disagree / pass / seen counts per statement (see `weighted_counts`)."""
        return weighted_counts(self.frames, self.result.weights, by)

    # ── export ─────────────────────────────────────────────────────────────

    def to_dict(self, by: By = None) -> dict[str, Any]:
        """Every table as records, with the settings that produced them."""
        tables = {
            "distributions": self.distributions(by=by),
            "value_profiles": self.value_profiles(by=by),
            "consistency": self.consistency(by=by),
            "principle_counts": self.principle_counts(by=by),
        }
        return {
            "settings": {"B": self.B, "seed": self.seed, "level": self.level, "strata": self.strata, "by": by, "interval": "percentile, re-raked bootstrap"},
            "weighting": {"margins": self.result.margins.id, "missing": self.result.missing, "trim": self.result.trim},
            **{name: t.to_dict(orient="records") for name, t in tables.items()},
        }

    def to_json(self, by: By = None, indent: int | None = 2) -> str:
        """`to_dict` as JSON text (NaN becomes null)."""
        return json.dumps(_nan_to_none(self.to_dict(by)), indent=indent, default=_plain)

    # ── helpers ────────────────────────────────────────────────────────────

    def _row(self, est: np.ndarray, **fields: Any) -> dict[str, Any]:
        """A tidy row from [point estimate, replicate estimates…]."""
        import numpy as np

        point, reps = float(est[0]), est[1:]
        reps = reps[~np.isnan(reps)]
        alpha = (1 - self.level) / 2
        if len(reps) >= 2 and not np.isnan(point):
            lo, hi = np.quantile(reps, [alpha, 1 - alpha])
            se = float(reps.std(ddof=1))
        else:
            lo = hi = se = float("nan")
        out = dict(fields)
        n = out.pop("n", None)
        n_ties = out.pop("n_ties", None)
        out.update(estimate=point, se=se, lci=float(lo), uci=float(hi), n=n)
        if n_ties is not None:
            out["n_ties"] = n_ties
        return out


# ── groups and helpers ──────────────────────────────────────────────────────────


def respondent_groups(resp: pd.DataFrame, by: By) -> list[tuple[str, str, np.ndarray]]:
    """(group label, group variable, 0/1 mask) for "all" and each group of ``by`` (one
    respondents column, or a crossing of two: only the cells someone is in).

    Example:
        >>> import pandas as pd
        >>> resp = pd.DataFrame({"sex": ["f", "m", "f"]})
        >>> [(label, var, mask.tolist()) for label, var, mask in respondent_groups(resp, "sex")]
        [('all', 'all', [True, True, True]), ('f', 'sex', [True, False, True]), ('m', 'sex', [False, True, False])]
    """
    import numpy as np

    out = [("all", "all", np.ones(len(resp), dtype=bool))]
    if by is None:
        return out
    variables = (by,) if isinstance(by, str) else tuple(by)
    if not 1 <= len(variables) <= 2:
        raise ValignError(f"by={by!r}: group by one respondents column or a crossing of two, e.g. by=('age_group', 'sex').")
    for v in variables:
        if v not in resp.columns:
            raise ValignError(f"by='{v}' is not a respondents column; use a margin variable of the instrument.")
    cols = [resp[v] for v in variables]
    levels = [_levels(c) for c in cols]
    name = " × ".join(variables)
    if len(variables) == 1:
        for a in levels[0]:
            out.append((a, name, (cols[0] == a).to_numpy()))
    else:
        for a in levels[0]:
            for b in levels[1]:
                mask = ((cols[0] == a) & (cols[1] == b)).to_numpy()
                if mask.any():
                    out.append((f"{a} × {b}", name, mask))
    return [(label, var, np.asarray(mask, dtype=bool)) for label, var, mask in out]


def _levels(col: pd.Series) -> list[str]:
    present = col.dropna()
    return list(dict.fromkeys(present.astype(str)))


def _weighted_corr(y: np.ndarray, d: np.ndarray, W: np.ndarray) -> np.ndarray:
    """Weighted Pearson correlation of y and d, one per weight column."""
    import numpy as np

    sw = W.sum(axis=0)
    my, md = y @ W / sw, d @ W / sw
    cov = (y * d) @ W / sw - my * md
    vy = (y * y) @ W / sw - my**2
    vd = (d * d) @ W / sw - md**2
    with np.errstate(invalid="ignore", divide="ignore"):
        return cov / np.sqrt(vy * vd)


def _logit_slope(y: np.ndarray, d: np.ndarray, W: np.ndarray, iterations: int = 40) -> np.ndarray:
    """Slope of a weighted logistic regression y ~ 1 + d, one per weight column (Newton's method).

    NaN where it does not converge, which happens when d separates the choices perfectly.
    """
    import numpy as np

    keep = W.any(axis=1)  # rows with no weight in any column add nothing
    y, d, W = y[keep], d[keep], W[keep]
    # Scores take few distinct values, so collapse identical (y, d) rows into one row whose
    # weights are summed: the same likelihood, on a few hundred rows instead of thousands.
    keys, inv = np.unique(np.column_stack([y, d]), axis=0, return_inverse=True)
    inv = inv.ravel()
    order = np.argsort(inv, kind="stable")
    starts = np.r_[0, np.flatnonzero(np.diff(inv[order])) + 1]
    W = np.add.reduceat(W[order], starts, axis=0)
    y, d = keys[:, 0], keys[:, 1]
    k = W.shape[1]
    b0, b1 = np.zeros(k), np.zeros(k)
    done = np.zeros(k, dtype=bool)
    d2 = d * d
    for _ in range(iterations):
        p = 1 / (1 + np.exp(-(b0 + np.outer(d, b1))))
        r = W * (y[:, None] - p)
        h = W * p * (1 - p)
        g0, g1 = r.sum(axis=0), d @ r  # matrix-vector products instead of n × k temporaries
        h00, h01, h11 = h.sum(axis=0), d @ h, d2 @ h
        det = h00 * h11 - h01**2
        with np.errstate(invalid="ignore", divide="ignore"):
            s0 = (h11 * g0 - h01 * g1) / det
            s1 = (h00 * g1 - h01 * g0) / det
        s0, s1 = np.nan_to_num(s0), np.nan_to_num(s1)
        b0, b1 = b0 + s0, b1 + s1
        done = (np.abs(s1) < 1e-8) & (np.abs(s0) < 1e-8)
        if done.all():
            break
    return np.where(done & (np.abs(b1) < 50), b1, np.nan)


def _nan_to_none(o: Any) -> Any:
    if isinstance(o, float) and o != o:
        return None
    if isinstance(o, dict):
        return {k: _nan_to_none(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_nan_to_none(v) for v in o]
    return o


def _plain(o: Any) -> Any:
    import numpy as np

    if isinstance(o, np.generic):
        return _nan_to_none(o.item())
    return str(o)
