"""Re-raked bootstrap of a weighted share: valign's batched path against a naive loop.

Both resample n respondents with replacement B times, rake each resample to the same
margins with svy and compute the weighted share agreeing with one statement, per age
group. valign draws all replicates as count columns, lets svy rake them together
(one Rust call) and computes every statistic as one matrix product; the baseline, in
the same run, builds each resample as a pandas frame, rakes it with its own svy call
and aggregates with groupby — the per-replicate loop one writes first.

    PYTHONPATH=src python benchmarks/survey_bootstrap.py [--n 3000] [--B 200] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.survey_stats_sim import margins, simulate  # noqa: E402
from valign.survey.analysis import SurveyAnalysis  # noqa: E402
from valign.survey.weighting import rake_frames  # noqa: E402


def naive(frames, m, B: int, seed: int) -> pd.DataFrame:
    import polars as pl
    import svy

    resp = frames.respondents
    agree = (frames.choices("principle")["pr-warn"] == "agree").astype(float)
    rng = np.random.default_rng(seed)
    out = []
    for b in range(B):
        idx = rng.integers(0, len(resp), len(resp))
        df = resp.iloc[idx][list(m.variables)].reset_index(drop=True)
        df["y"] = agree.iloc[idx].to_numpy()
        df["w"] = 1.0
        s = svy.Sample(pl.from_pandas(df), svy.Design(wgt="w")).weighting.rake(shares=m.shares(), tol=1e-9, max_iter=2000)
        d = s.data.to_pandas()
        d["wy"] = d["rk_wgt"] * d["y"]
        g = d.groupby("age_group")[["wy", "rk_wgt"]].sum()
        out.append((g["wy"] / g["rk_wgt"]).to_dict() | {"all": d["wy"].sum() / d["rk_wgt"].sum()})
    return pd.DataFrame(out)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=3000)
    ap.add_argument("--B", type=int, default=200)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    frames, m = simulate(args.n, seed=1), margins()
    result = rake_frames(frames, m)
    t = time.perf_counter()
    a = SurveyAnalysis(frames, result, B=args.B, seed=1)
    a.distributions(items=["pr-warn"], by="age_group")
    ours = time.perf_counter() - t
    t = time.perf_counter()
    naive(frames, m, args.B, seed=1)
    base = time.perf_counter() - t
    res = {"n": args.n, "B": args.B, "valign_s": round(ours, 3), "naive_loop_s": round(base, 3), "speedup": round(base / ours, 1)}
    print(json.dumps(res))
    if args.json:
        args.json.write_text(json.dumps(res, indent=2) + "\n")


if __name__ == "__main__":
    main()
