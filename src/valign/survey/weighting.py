"""Rake survey respondents to population margins with svy, and say how far the weights moved.

What `rake_frames` does, in order:

1. **Who is weighted.** Respondents with ``exclude`` True (failed quality checks) get
   no weight (NaN) and take no part in raking.
2. **Missing answers** on a raking variable, by ``missing``:

   * ``own_category`` (default) — the missing answers form their own category whose
     target is its share in the sample, and the census categories share the rest in
     census proportion; nobody is dropped and nothing is guessed, and among those who
     answered the weighted shares equal the census shares exactly;
   * ``impute_mode`` — a missing answer counts as the variable's most common answer;
   * ``drop`` — the respondent gets no weight (NaN), like an excluded one.

3. **Raking** (iterative proportional fitting) to the margins' shares with svy's
   ``Sample.weighting.rake``, starting from equal weights, to a relative margin error
   below 1e-9. Every census category needs at least one respondent; an empty one is
   an error that says which categories to collapse.
4. **Trimming** (optional, ``trim=(low, high)``): bounds on each weight's ratio to the
   mean weight, e.g. ``(0.2, 5)``. svy's trim–rake cycle caps the weights, spreads the
   excess over the others and rakes again until both the bounds and the margins hold
   (the last step is always a rake, so the margins hold to the raking tolerance and
   the bounds to svy's trimming tolerance, 1e-4 relative).
5. **Quality:** the raked weight is multiplied by ``quality_factor`` (1, or the
   instrument's downweight factor), then all weights are rescaled to **sum to the
   number of weighted respondents** (mean weight 1), the scale training rows use.
   Downweighting moves the weighted shares off the margins slightly; the diagnostics
   show by how much.

Diagnostics, before (unweighted, every weighted respondent counting 1) and after (the
final weights), with ``w`` the weights of the n weighted respondents:

* Kish design effect ``deff = n·Σw² / (Σw)²`` (1 for equal weights);
* effective sample size ``ess = (Σw)² / Σw² = n / deff``;
* per variable and census category, the sample share ``p`` (weighted share among the
  respondents who answered that variable) against the population share ``P``, and the
  absolute standardised mean difference of the category indicator,
  ``ASMD = |p − P| / sqrt(P·(1 − P))`` — the difference in units of the population's
  standard deviation of that indicator (the denominator is fixed, so before and after
  are comparable); a variable's ASMD is the mean over its categories;
* the largest and smallest weight and their ratio.

Example (see `rake_frames` for a runnable one):
    frames = apply_weights(frames, rake_frames(frames, load_margins("nz-census-2023"), trim=(0.2, 5)))
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from valign.errors import ValignError
from valign.survey.margins import Margins

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

    from valign.survey.frames import SurveyFrames

__all__ = ["MissingPolicy", "RakingSpec", "WeightingResult", "rake_frames", "apply_weights", "kish_deff", "effective_n", "asmd", "MISSING"]

MissingPolicy = Literal["own_category", "impute_mode", "drop"]
MISSING = "(missing)"  # the category label of missing answers under missing="own_category"
RAKE_TOL = 1e-9  # relative margin error at which raking stops
RAKE_MAX_ITER = 2000


def kish_deff(w: Any) -> float:
    """Kish's design effect from unequal weighting, ``n·Σw²/(Σw)²``.

    Example:
        >>> kish_deff([1, 1, 2, 4])
        1.375
    """
    import numpy as np

    w = np.asarray(w, dtype=float)
    return float(len(w) * (w**2).sum() / w.sum() ** 2)


def effective_n(w: Any) -> float:
    """Kish's effective sample size, ``(Σw)²/Σw²``.

    Example:
        >>> round(effective_n([1, 1, 2, 4]), 4)
        2.9091
    """
    import numpy as np

    w = np.asarray(w, dtype=float)
    return float(w.sum() ** 2 / (w**2).sum())


def asmd(sample_share: float, population_share: float) -> float:
    """Absolute standardised mean difference of a category indicator: ``|p − P| / sqrt(P(1−P))``.

    Example:
        >>> round(asmd(0.7, 0.5), 4)
        0.4
    """
    return abs(sample_share - population_share) / math.sqrt(population_share * (1 - population_share))


@dataclass(frozen=True)
class RakingSpec:
    """Everything needed to rake again (e.g. a bootstrap replicate): who, their cells, the targets.

    ``cells[v]`` holds each weighted respondent's category of variable ``v`` (after the
    missing-answer policy), ``targets[v]`` the shares raking aims at.
    """

    ids: pd.Index
    cells: dict[str, np.ndarray]
    targets: dict[str, dict[str, float]]
    quality: np.ndarray
    trim: tuple[float, float] | None

    @property
    def n(self) -> int:
        return len(self.ids)

    def rake(self, base: np.ndarray) -> np.ndarray:
        """Rake base weights (n, or n × R: one column per replicate) and apply quality
        factors; every column comes back summing to n. A column that cannot reach the
        margins raises a `ValignError`.

        Example:
            >>> import numpy as np
            >>> import pandas as pd
            >>> spec = RakingSpec(pd.Index(["a", "b", "c"]), {"sex": np.array(["f", "f", "m"])},
            ...                   {"sex": {"f": 0.5, "m": 0.5}}, np.ones(3), None)
            >>> spec.rake(np.ones(3)).round(3).tolist()
            [0.75, 0.75, 1.5]
        """
        import numpy as np

        base = np.asarray(base, dtype=float)
        raked, ok = self.try_rake(base.reshape(len(base), -1), strict=True)
        return raked[:, 0] if base.ndim == 1 else raked

    def try_rake(self, base: np.ndarray, strict: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """Rake the columns of ``base`` (n × R); also say which columns met every margin
        (within 1e-6). Unless ``strict``, a column that cannot is returned as it ended
        instead of raising: a bootstrap replicate that drew too few of a small category
        can be drawn again."""
        import numpy as np

        raked = _svy_rake(self.cells, self.targets, base, self.trim, strict)
        ok = np.ones(base.shape[1], dtype=bool)
        total = raked.sum(axis=0)
        for name, target in self.targets.items():
            for cat, share in target.items():
                ok &= np.abs(raked[self.cells[name] == cat].sum(axis=0) / total - share) <= 1e-6
        raked = raked * self.quality[:, None]
        raked *= base.sum(axis=0) / raked.sum(axis=0)
        return raked, ok


@dataclass
class WeightingResult:
    """Weights per respondent, diagnostics before and after, and the recipe that made them.

    ``weights`` is indexed like ``frames.respondents`` (NaN: no weight). ``diagnostics``
    has one row per variable and census category: ``variable``, ``category``,
    ``population``, ``before``, ``after``, ``asmd_before``, ``asmd_after``.
    ``summary`` holds the counts, design effects, effective sample sizes and weight range.

    Example:
        >>> [f for f in WeightingResult.__dataclass_fields__][:4]
        ['weights', 'diagnostics', 'summary', 'margins']
    """

    weights: pd.Series
    diagnostics: pd.DataFrame
    summary: dict[str, Any]
    margins: Margins
    spec: RakingSpec
    missing: MissingPolicy = "own_category"
    trim: tuple[float, float] | None = None
    notes: list[str] = field(default_factory=list)

    def variable_summary(self) -> pd.DataFrame:
        """Per variable: mean ASMD over its categories, before and after."""
        d = self.diagnostics
        return d.groupby("variable", sort=False)[["asmd_before", "asmd_after"]].mean().reset_index()

    def to_dict(self) -> dict[str, Any]:
        """Plain data: summary, diagnostics, per-variable ASMD, margins source, settings."""
        return {
            "margins": {"id": self.margins.id, "title": self.margins.title, "source": self.margins.source},
            "settings": {"missing": self.missing, "trim": list(self.trim) if self.trim else None, "scale": "sum to n"},
            "summary": self.summary,
            "variables": self.variable_summary().to_dict(orient="records"),
            "diagnostics": self.diagnostics.to_dict(orient="records"),
            "notes": self.notes,
        }

    def to_json(self, indent: int | None = 2) -> str:
        """`to_dict` as JSON text."""
        return json.dumps(self.to_dict(), indent=indent, default=_plain)

    def report(self) -> str:
        """A plain-text report for the terminal."""
        s = self.summary
        lines = [
            f"Raked {s['n_weighted']} of {s['n_respondents']} respondents to margins '{self.margins.id}'"
            + (f" ({self.margins.source.get('citation')})" if self.margins.source.get("citation") else ""),
            f"  excluded by quality checks: {s['n_excluded']}   dropped for a missing raking variable: {s['n_dropped_missing']}",
            f"  missing answers: {self.missing}   trimming: {'weight/mean in [%g, %g]' % self.trim if self.trim else 'none'}   weights sum to n",
            "",
            f"  {'':28}{'before':>10}{'after':>10}",
            f"  {'Kish design effect':28}{s['deff_before']:>10.3f}{s['deff_after']:>10.3f}",
            f"  {'effective sample size':28}{s['ess_before']:>10.1f}{s['ess_after']:>10.1f}",
            f"  {'max / min weight':28}{1.0:>10.2f}{s['weight_ratio']:>10.2f}   (weights {s['weight_min']:.3f} … {s['weight_max']:.3f})",
            "",
            f"  {'variable':14}{'category':18}{'population':>11}{'before':>9}{'after':>9}{'ASMD before':>13}{'after':>7}",
        ]
        for row in self.diagnostics.itertuples():
            lines.append(
                f"  {row.variable:14}{row.category:18}{row.population:>11.3f}{row.before:>9.3f}{row.after:>9.3f}"
                f"{row.asmd_before:>13.3f}{row.asmd_after:>7.3f}"
            )
        for row in self.variable_summary().itertuples():
            lines.append(f"  {row.variable:14}{'(mean ASMD)':18}{'':>11}{'':>9}{'':>9}{row.asmd_before:>13.3f}{row.asmd_after:>7.3f}")
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


def rake_frames(
    frames: SurveyFrames,
    margins: Margins,
    *,
    trim: tuple[float, float] | None = None,
    missing: MissingPolicy = "own_category",
    seed: int = 0,
) -> WeightingResult:
    """Rake the respondents of ``frames`` to ``margins`` (see the module docstring for every step).

    ``seed`` is recorded for reproducibility; raking itself is deterministic.

    Example:
        >>> from valign.survey.margins import margins_from_dict
        >>> import pandas as pd
        >>> from valign.survey.frames import SurveyFrames
        >>> from valign.survey.instrument import load_instrument
        >>> inst = load_instrument("demo")
        >>> resp = pd.DataFrame({"sex": ["female", None, "male"]}, index=pd.Index(list("abc"), name="respondent_id"))
        >>> m = margins_from_dict({"id": "t", "source": {"citation": "a test"},
        ...                        "variables": {"sex": {"categories": {"female": 0.5, "male": 0.5}}}})
        >>> rake_frames(SurveyFrames(inst, resp, SurveyFrames.empty(inst).answers), m, missing="drop").weights.tolist()
        [1.0, nan, 1.0]
    """
    import numpy as np
    import pandas as pd

    if missing not in ("own_category", "impute_mode", "drop"):
        raise ValignError(f"missing='{missing}' is not a policy; use own_category, impute_mode or drop.")
    trim = _check_trim(trim)
    resp = frames.respondents
    n_all = len(resp)
    cats = margins.categorise(resp)
    excluded = _bool_column(resp, "exclude")
    eligible = ~excluded
    quality = pd.to_numeric(resp["quality_factor"], errors="coerce").fillna(1.0) if "quality_factor" in resp.columns else pd.Series(1.0, index=resp.index)
    notes: list[str] = []

    dropped = pd.Series(False, index=resp.index)
    if missing == "drop":
        dropped = eligible & cats.isna().any(axis=1)
        eligible &= ~dropped
    if not eligible.any():
        raise ValignError("no respondent is left to weight (all excluded or missing a raking variable); check the quality flags and the margins' variables.")
    cats = cats[eligible]
    targets: dict[str, dict[str, float]] = {}
    cells: dict[str, np.ndarray] = {}
    for name, var in margins.variables.items():
        col = cats[name]
        miss = col.isna()
        if miss.any() and missing == "impute_mode":
            counts = col.value_counts()
            mode = max(var.shares, key=lambda c: (counts.get(c, 0), -list(var.shares).index(c)))
            col = col.fillna(mode)
            notes.append(f"{int(miss.sum())} missing {name} imputed as '{mode}'")
        share_missing = float(miss.mean()) if missing == "own_category" else 0.0
        target = {c: s * (1 - share_missing) for c, s in var.shares.items()}
        if share_missing > 0:
            target[MISSING] = share_missing
            col = col.fillna(MISSING)
            notes.append(f"{int(miss.sum())} missing {name} raked as their own category (target share {share_missing:.3f})")
        empty = [c for c in var.shares if not (col == c).any()]
        if empty:
            raise ValignError(
                f"no weighted respondent is in census category {name} = '{empty[0]}', so raking cannot reach its share; "
                f"collapse it with a neighbouring category (in the margins file, merge the categories and map the codes) or recruit such respondents."
            )
        targets[name] = target
        cells[name] = col.astype(str).to_numpy()

    spec = RakingSpec(ids=cats.index, cells=cells, targets=targets, quality=quality[eligible].to_numpy(dtype=float), trim=trim)
    w = spec.rake(np.ones(spec.n))
    weights = pd.Series(np.nan, index=resp.index, name="weight")
    weights[eligible] = w

    diagnostics = _diagnostics(margins, cells, w)
    summary = {
        "n_respondents": n_all,
        "n_excluded": int(excluded.sum()),
        "n_dropped_missing": int(dropped.sum()),
        "n_weighted": spec.n,
        "deff_before": 1.0,
        "deff_after": kish_deff(w),
        "ess_before": float(spec.n),
        "ess_after": effective_n(w),
        "weight_min": float(w.min()),
        "weight_max": float(w.max()),
        "weight_ratio": float(w.max() / w.min()),
        "max_asmd_before": float(diagnostics["asmd_before"].max()),
        "max_asmd_after": float(diagnostics["asmd_after"].max()),
        "seed": seed,
    }
    return WeightingResult(weights, diagnostics, summary, margins, spec, missing, trim, notes)


def apply_weights(frames: SurveyFrames, result: WeightingResult) -> SurveyFrames:
    """The same frames with the ``weight`` column set from ``result`` (NaN: no weight).

    Example:
        >>> import pandas as pd
        >>> from types import SimpleNamespace
        >>> from valign.survey.frames import SurveyFrames
        >>> from valign.survey.instrument import load_instrument
        >>> f = SurveyFrames.empty(load_instrument("demo")).with_respondents(pd.DataFrame(index=["a", "b"]))
        >>> apply_weights(f, SimpleNamespace(weights=pd.Series([0.5, 1.5], index=["a", "b"]))).respondents["weight"].tolist()
        [0.5, 1.5]
    """
    respondents = frames.respondents.copy()
    respondents["weight"] = result.weights.reindex(respondents.index)
    return frames.with_respondents(respondents)


# ── internals ────────────────────────────────────────────────────────────────


def _check_trim(trim: tuple[float, float] | None) -> tuple[float, float] | None:
    if trim is None:
        return None
    try:
        low, high = (float(t) for t in trim)
    except (TypeError, ValueError):
        raise ValignError(f"trim={trim!r} is not two numbers; give bounds on weight/mean weight such as (0.2, 5).") from None
    if not (0 <= low < 1 < high):
        raise ValignError(f"trim bounds ({low:g}, {high:g}) must satisfy 0 ≤ low < 1 < high (ratios to the mean weight); e.g. (0.2, 5).")
    return (low, high)


def _bool_column(df: pd.DataFrame, name: str) -> pd.Series:
    import pandas as pd

    if name not in df.columns:
        return pd.Series(False, index=df.index)
    return df[name].fillna(False).astype(bool)


def _svy_rake(
    cells: dict[str, np.ndarray], targets: dict[str, dict[str, float]], base: np.ndarray, trim: tuple[float, float] | None, strict: bool = True
) -> np.ndarray:
    """Rake each column of ``base`` (n × R) to ``targets`` with svy; returns n × R.

    Without trimming all columns go through svy at once: column 0 as the design weight
    and the others as replicate weights, which svy rakes together in its Rust kernel.
    With trimming each column gets its own trim–rake cycle; a column of whole numbers
    (equal starting weights, or a bootstrap replicate's resampling counts) is expanded
    into one row per draw first, so the bounds apply to each drawn respondent as they
    would in a resample.
    """
    import numpy as np

    n, r = base.shape
    if trim is None:
        return _svy_call(cells, targets, base, None, strict)
    out = np.empty_like(base)
    for j in range(r):
        col = base[:, j]
        counts = np.rint(col).astype(int)
        if np.allclose(col, counts):  # equal weights or resampling counts: one row per draw
            rows = np.repeat(np.arange(n), counts)
            per_draw = _svy_call({k: v[rows] for k, v in cells.items()}, targets, np.ones((len(rows), 1)), trim, strict)[:, 0]
            out[:, j] = np.bincount(rows, weights=per_draw, minlength=n)
        else:
            keep = col > 0
            out[:, j] = 0.0
            out[keep, j] = _svy_call({k: v[keep] for k, v in cells.items()}, targets, col[keep, None], trim, strict)[:, 0]
    return out


def _svy_call(
    cells: dict[str, np.ndarray], targets: dict[str, dict[str, float]], base: np.ndarray, trim: tuple[float, float] | None, strict: bool = True
) -> np.ndarray:
    import numpy as np
    import polars as pl
    import svy
    from svy.errors import SvyError

    n, r = base.shape
    if r == 2:  # svy needs at least two replicate columns: rake a spare copy and drop it
        return _svy_call(cells, targets, np.column_stack([base, base[:, 1]]), trim, strict)[:, :2]
    mean = base[:, 0].sum() / n  # ratio bounds are relative to the mean weight, which raking keeps
    data = {f"v{i}": cells[name] for i, name in enumerate(cells)}
    data["w0"] = base[:, 0]
    reps = None
    if r > 1:
        data.update({f"rep{j}": base[:, j] for j in range(1, r)})
        reps = svy.BootstrapWgts(prefix="rep", n_reps=r - 1)
    sample = svy.Sample(pl.DataFrame(data), svy.Design(wgt="w0", rep_wgts=reps))
    shares = {f"v{i}": targets[name] for i, name in enumerate(cells)}
    trimming = svy.TrimConfig(upper=trim[1] * mean, lower=trim[0] * mean if trim[0] > 0 else None, max_iter=50) if trim else None
    try:
        raked = sample.weighting.rake(
            shares=shares, tol=RAKE_TOL, max_iter=RAKE_MAX_ITER, trimming=trimming, wgt_name="rk", on_nonconvergence="error" if strict else "ignore"
        )
    except SvyError as e:
        what = "trimmed raking" if trim else "raking"
        fix = "loosen the trim bounds or collapse sparse categories in the margins file" if trim else "collapse sparse categories in the margins file"
        raise ValignError(f"{what} did not reach the margins ({getattr(e, 'title', None) or type(e).__name__}); {fix}.") from None
    except ValueError as e:  # the Rust kernel: a category with no weight in some column
        raise ValignError(f"raking failed ({e}); a census category has no respondent — collapse it in the margins file.") from None
    out = raked.data
    cols = ["rk"] + [f"rk{j}" for j in range(1, r)]
    return out.select(cols).to_numpy().astype(float)


def _diagnostics(margins: Margins, cells: dict[str, np.ndarray], w: np.ndarray) -> pd.DataFrame:
    import pandas as pd

    rows = []
    for name, var in margins.variables.items():
        col = cells[name]
        answered = col != MISSING
        n_ans = answered.sum()
        w_ans = w[answered].sum()
        for cat, pop in var.shares.items():
            hit = col == cat
            before = hit.sum() / n_ans
            after = w[hit].sum() / w_ans
            rows.append(
                {
                    "variable": name,
                    "category": cat,
                    "population": pop,
                    "before": float(before),
                    "after": float(after),
                    "asmd_before": asmd(before, pop),
                    "asmd_after": asmd(after, pop),
                    "n": int(hit.sum()),
                }
            )
    return pd.DataFrame(rows)


def _plain(o: Any) -> Any:
    import numpy as np

    if isinstance(o, np.generic):
        return o.item()
    return str(o)
