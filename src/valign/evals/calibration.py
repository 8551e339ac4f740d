"""Judge calibration: how far a pairwise judge can be trusted, from pairs it judged in both orders.

A pair has two answers, X and Y. Order 1 shows (X, Y), order 2 shows (Y, X); a
`Reading` holds the judge's P(the answer shown *first* is better) in each order
(either may be missing: a verdict that never parsed, or a judge that saw one order
only), optionally the two answers' lengths and which one a human labelled better.
`calibrate` turns readings into a `CalibrationReport`:

* **position bias** — the mean P(first) in each order, and their mean − 0.5 (with a
  normal 95% interval over pairs): 0 for a judge that ignores position, > 0 when the
  first-shown answer wins more often. An unbiased judge's two readings of one pair
  satisfy p1 = 1 − p2, so `position_gap` = |p1 + p2 − 1| is the pair's own bias.
* **order-flip rate** — the share of pairs whose preferred answer changes when the
  order swaps: both orders decisive and both preferring whatever is shown first, or
  both preferring whatever is shown second. Over pairs with both orders read.
* **tie rate** — the share of single-order readings with |p − 0.5| ≤ ``tie_eps`` (a
  five-level ``A=B`` reads as exactly 0.5, so it is a tie at any ``tie_eps``).
* **length bias** — over pairs whose combined preference is decisive and whose
  answers differ in length, the share won by the longer answer (Wilson 95% interval;
  0.5 is no bias); and the slope of the preference P(X better) − 0.5 on the normalised
  length difference d = (len X − len Y) / (len X + len Y), fitted through the origin
  over each pair and its mirror (−d, 0.5 − …), which makes it independent of which
  answer is called X; with its correlation. A slope of 0.5 means an answer twice as
  long as the other (d = 1/3) gains about 0.17 of preference.
* with labels: **agreement** — the share of decisive combined preferences that pick
  the labelled better answer (ties are counted apart, not as half right); the
  **reliability curve** — the judge's confidence in the answer it favours,
  max(p, 1 − p) of the combined preference, in bins of width 0.1 over [0.5, 1], against
  how often that answer is the labelled better one (exactly 0.5 counts one half); the
  **expected calibration error** — the bin-size-weighted mean gap |accuracy −
  confidence| (Guo et al. 2017's top-label ECE); and the **Brier score** of P(labelled
  better answer).

The combined preference of a pair is the mean of the readings of P(X better) it has:
p1 and 1 − p2. Averaging the orders cancels a constant position bias, as the judge
stage does.

Example:
    >>> biased = [Reading((0.8, 0.8)), Reading((0.8, 0.8))]     # prefers whatever is first
    >>> r = calibrate(biased)
    >>> r.mean_p_first, r.position_bias, r.flip_rate
    ((0.8, 0.8), 0.3, 1.0)
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable, Sequence

from valign.evals.intervals import wilson_interval

__all__ = [
    "Reading",
    "ReliabilityBin",
    "CalibrationReport",
    "TIE_EPS",
    "BIN_EDGES",
    "wilson",
    "position_gap",
    "calibrate",
    "text_length",
    "five_level_reading",
    "readings_from_judge_rows",
    "readings_from_keycase_rows",
    "readings_from_mtbench_rows",
]

TIE_EPS = 0.02  # a reading within this of 0.5 names no winner
BIN_EDGES = (0.5, 0.6, 0.7, 0.8, 0.9, 1.0)  # confidence bins of the reliability curve
Z95 = 1.959963984540054
_FLOAT_EPS = 1e-9  # 0.7 - 0.5 and such are not exact in floating point


@dataclass(frozen=True)
class Reading:
    """One pair as the judge saw it: P(first shown better) in order 1 (X first) and
    order 2 (Y first), either None when missing; the lengths of X and Y; and
    ``label``: 0 when X is the labelled better answer, 1 when Y is, None without one.
    ``ordered`` is False for a preference that no order produced (two answers graded
    one at a time, as MT-Bench does): then ``p_first[0]`` is P(X better), and the
    reading counts towards ties, length bias and labels but not position or flips.

    Example:
        >>> Reading((0.9, 0.2), lengths=(120, 40), label=0).p_x
        0.85
    """

    p_first: tuple[float | None, float | None]
    lengths: tuple[float, float] | None = None
    label: int | None = None
    ordered: bool = field(default=True, repr=False)

    @property
    def p_x(self) -> float | None:
        """The combined P(X better): the mean of the orders' readings of it."""
        p1, p2 = self.p_first
        xs = [p for p in (p1, None if p2 is None else 1 - p2) if p is not None]
        return round(sum(xs) / len(xs), 12) if xs else None


@dataclass(frozen=True)
class ReliabilityBin:
    """One bin of the reliability curve: confidences in [lo, hi) (the last bin takes
    1.0), how many pairs fell in it, their mean confidence and how often the favoured
    answer was the labelled better one."""

    lo: float
    hi: float
    n: int
    confidence: float | None
    accuracy: float | None


@dataclass
class CalibrationReport:
    """The calibration figures of one judge on one set of pairs (see the module docs).

    Rates are None when nothing could be counted; ``*_ci`` are 95% intervals.
    """

    pairs: int
    both_orders: int
    mean_p_first: tuple[float | None, float | None]
    position_bias: float | None
    position_bias_ci: tuple[float, float] | None
    flips: int
    flip_rate: float | None
    flip_rate_ci: tuple[float, float] | None
    ties: int
    readings: int
    tie_rate: float | None
    tie_eps: float
    length_pairs: int
    longer_wins: float | None
    longer_wins_ci: tuple[float, float] | None
    length_slope: float | None
    length_corr: float | None
    labelled: int = 0
    label_ties: int = 0
    agreement: float | None = None
    agreement_ci: tuple[float, float] | None = None
    ece: float | None = None
    brier: float | None = None
    reliability: list[ReliabilityBin] = field(default_factory=list)
    judge: str | None = None
    source: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready values (tuples become lists).

        Example:
            >>> calibrate([Reading((0.7, 0.3))]).to_dict()["flip_rate"]
            0.0
        """
        out = asdict(self)
        for k, v in out.items():
            if isinstance(v, tuple):
                out[k] = list(v)
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CalibrationReport:
        """The report `to_dict` wrote (from a manifest).

        Example:
            >>> r = calibrate([Reading((0.7, 0.4), label=0)])
            >>> CalibrationReport.from_dict(r.to_dict()) == r
            True
        """
        kw = dict(d)
        for k in ("mean_p_first", "position_bias_ci", "flip_rate_ci", "longer_wins_ci", "agreement_ci"):
            if kw.get(k) is not None:
                kw[k] = tuple(kw[k])
        kw["reliability"] = [ReliabilityBin(**b) for b in kw.get("reliability") or []]
        return cls(**kw)

    def render_text(self) -> str:
        """The figures as lines of text, for the terminal.

        Example:
            >>> print(calibrate([Reading((0.8, 0.8)), Reading((0.7, 0.3))]).render_text().splitlines()[1])
            position bias   mean P(first) 0.750 (X first) / 0.550 (Y first); bias +0.150 [-0.144, +0.444]
        """
        head = f"{self.pairs} pairs ({self.both_orders} judged in both orders)"
        if self.judge or self.source:
            head = f"{self.judge or 'judge'} on {self.source or 'pairs'}: {head}"
        lines = [head]
        o1, o2 = self.mean_p_first
        lines.append(
            f"position bias   mean P(first) {_f(o1)} (X first) / {_f(o2)} (Y first); bias {_sf(self.position_bias)}{_ci(self.position_bias_ci, True)}"
        )
        lines.append(f"order flips     {self.flips} of {self.both_orders} = {_pc(self.flip_rate)}{_ci(self.flip_rate_ci)}")
        lines.append(f"ties            {self.ties} of {self.readings} readings = {_pc(self.tie_rate)} (|p - 0.5| <= {self.tie_eps})")
        lines.append(
            f"length bias     longer answer wins {_pc(self.longer_wins)}{_ci(self.longer_wins_ci)} of {self.length_pairs} decisive pairs; "
            f"slope {_sf(self.length_slope)}, r {_sf(self.length_corr)}"
        )
        if self.labelled:
            lines.append(
                f"labels          agreement {_pc(self.agreement)}{_ci(self.agreement_ci)} over {self.labelled - self.label_ties} decisive "
                f"of {self.labelled} labelled pairs (ties: {self.label_ties}); ECE {_f(self.ece)}; Brier {_f(self.brier)}"
            )
            for b in self.reliability:
                if b.n:
                    lines.append(f"  confidence {b.lo:.1f}-{b.hi:.1f}: {b.n} pairs, mean confidence {_f(b.confidence)}, right {_pc(b.accuracy)}")
        return "\n".join(lines)


def _f(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"


def _sf(x: float | None) -> str:
    return "-" if x is None else f"{x:+.3f}"


def _pc(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def _ci(ci: tuple[float, float] | None, signed: bool = False) -> str:
    """An interval with a leading space, or nothing."""
    if ci is None:
        return ""
    return f" [{ci[0]:+.3f}, {ci[1]:+.3f}]" if signed else f" [{100 * ci[0]:.1f}%, {100 * ci[1]:.1f}%]"


# --------------------------------------------------------------------------- the figures


def wilson(successes: int, n: int, z: float = Z95) -> tuple[float, float] | None:
    """`wilson_interval` at the exact 95% quantile (None when n is 0).

    Example:
        >>> wilson(8, 10)
        (0.4902, 0.9433)
    """
    return wilson_interval(successes, n, z)


def position_gap(p1: float, p2: float) -> float:
    """One pair's position bias: |p1 + p2 − 1| for P(first better) in the two orders
    (0 for a judge whose two readings agree, 1 for one that always picks the first).

    Example:
        >>> position_gap(0.8, 0.8), position_gap(0.9, 0.1)
        (0.6, 0.0)
    """
    return round(abs(p1 + p2 - 1), 12)


def _mean(xs: Sequence[float]) -> float | None:
    return round(sum(xs) / len(xs), 12) if xs else None


def _mean_ci(xs: Sequence[float]) -> tuple[float, float] | None:
    if len(xs) < 2:
        return None
    m = sum(xs) / len(xs)
    sd = math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1))
    half = Z95 * sd / math.sqrt(len(xs))
    return round(m - half, 4), round(m + half, 4)


def _tie(p: float, eps: float) -> bool:
    return abs(p - 0.5) <= eps + _FLOAT_EPS


def calibrate(readings: Iterable[Reading], tie_eps: float = TIE_EPS, judge: str | None = None, source: str | None = None) -> CalibrationReport:
    """The calibration figures over pairs (see the module docs for each definition).

    Example, a length-biased judge (the longer answer gets 0.75 in either order):
        >>> r = calibrate([Reading((0.75, 0.25), lengths=(30, 10)), Reading((0.25, 0.75), lengths=(10, 30))])
        >>> r.longer_wins, r.length_slope, r.position_bias, r.flip_rate
        (1.0, 0.5, 0.0, 0.0)
    """
    rs = [r for r in readings if r.p_first != (None, None)]
    shown = [r for r in rs if r.ordered]  # readings an order produced: position and flips
    o1 = [r.p_first[0] for r in shown if r.p_first[0] is not None]
    o2 = [r.p_first[1] for r in shown if r.p_first[1] is not None]
    both = [(r.p_first[0], r.p_first[1]) for r in shown if r.p_first[0] is not None and r.p_first[1] is not None]
    # A pair's own lean towards the first position: its orders' mean P(first) − 0.5
    # (a pair read in one order: that order's P(first) − 0.5).
    leans = []
    for r in shown:
        ps = [p for p in r.p_first if p is not None]  # never empty: rs holds pairs read at least once
        leans.append(sum(ps) / len(ps) - 0.5)
    m1, m2 = _mean(o1), _mean(o2)
    order_means = [m for m in (m1, m2) if m is not None]
    bias = sum(order_means) / len(order_means) - 0.5 if order_means else None
    flips = sum(1 for p1, p2 in both if not _tie(p1, tie_eps) and not _tie(p2, tie_eps) and (p1 - 0.5) * (p2 - 0.5) > 0)
    singles = o1 + o2 + [r.p_first[0] for r in rs if not r.ordered and r.p_first[0] is not None]
    ties = sum(_tie(p, tie_eps) for p in singles)

    # Length: the combined preference against the normalised length difference.
    won, decisive, sxy, sxx, syy = 0, 0, 0.0, 0.0, 0.0
    for r in rs:
        px = r.p_x
        if r.lengths is None or px is None or sum(r.lengths) <= 0:
            continue
        lx, ly = r.lengths
        d = (lx - ly) / (lx + ly)
        y = px - 0.5
        # Each pair and its mirror (−d, −y): the fit through the origin is then the
        # least-squares fit of the symmetrised data, whatever answer is called X.
        sxy, sxx, syy = sxy + 2 * d * y, sxx + 2 * d * d, syy + 2 * y * y
        if lx != ly and not _tie(px, tie_eps):
            decisive += 1
            won += (px > 0.5) == (lx > ly)
    slope = round(sxy / sxx, 6) if sxx > 0 else None
    corr = round(sxy / math.sqrt(sxx * syy), 6) if sxx > 0 and syy > 0 else None

    report = CalibrationReport(
        pairs=len(rs),
        both_orders=len(both),
        mean_p_first=(None if m1 is None else round(m1, 6), None if m2 is None else round(m2, 6)),
        position_bias=None if bias is None else round(bias, 6),
        position_bias_ci=_mean_ci(leans),
        flips=flips,
        flip_rate=round(flips / len(both), 6) if both else None,
        flip_rate_ci=wilson(flips, len(both)),
        ties=ties,
        readings=len(singles),
        tie_rate=round(ties / len(singles), 6) if singles else None,
        tie_eps=tie_eps,
        length_pairs=decisive,
        longer_wins=round(won / decisive, 6) if decisive else None,
        longer_wins_ci=wilson(won, decisive),
        length_slope=slope,
        length_corr=corr,
        judge=judge,
        source=source,
    )
    _add_labels(report, [r for r in rs if r.label is not None and r.p_x is not None], tie_eps)
    return report


def _add_labels(report: CalibrationReport, labelled: list[Reading], tie_eps: float) -> None:
    if not labelled:
        return
    right, ties, brier = 0, 0, 0.0
    conf_right: list[tuple[float, float]] = []
    for r in labelled:
        px = r.p_x
        assert px is not None
        p_better = px if r.label == 0 else 1 - px  # P(the labelled better answer is better)
        brier += (1 - p_better) ** 2
        if _tie(px, tie_eps):
            ties += 1
        else:
            right += p_better > 0.5
        conf = max(px, 1 - px)
        conf_right.append((conf, 1.0 if p_better > 0.5 else 0.5 if p_better == 0.5 else 0.0))
    bins: list[ReliabilityBin] = []
    ece = 0.0
    for i, (lo, hi) in enumerate(zip(BIN_EDGES, BIN_EDGES[1:])):
        last = i == len(BIN_EDGES) - 2
        inside = [(c, a) for c, a in conf_right if lo - _FLOAT_EPS <= c and (c < hi - _FLOAT_EPS or last)]
        n = len(inside)
        conf = _mean([c for c, _ in inside])
        acc = _mean([a for _, a in inside])
        bins.append(ReliabilityBin(lo, hi, n, None if conf is None else round(conf, 6), None if acc is None else round(acc, 6)))
        if n:
            ece += n / len(conf_right) * abs(acc - conf)  # type: ignore[operator]
    decisive = len(labelled) - ties
    report.labelled = len(labelled)
    report.label_ties = ties
    report.agreement = round(right / decisive, 6) if decisive else None
    report.agreement_ci = wilson(right, decisive)
    report.ece = round(ece, 6)
    report.brier = round(brier / len(labelled), 6)
    report.reliability = bins


# --------------------------------------------------------------------------- adapters


def text_length(text: str) -> int:
    """An answer's length for the length bias: its words (whitespace-separated).

    Example:
        >>> text_length("Tell them the truth, kindly.")
        5
    """
    return len(text.split())


def _judge_texts(row: dict[str, Any]) -> tuple[str, str] | None:
    """The two responses of a judge-stage row, in the pair's order."""
    if row.get("responses"):
        return row["responses"][0]["text"], row["responses"][1]["text"]
    if row.get("chosen") and row.get("rejected") and row.get("chosen_index") in (0, 1):
        chosen = row.get("original_chosen") or row["chosen"][-1]["content"]
        rejected = row["rejected"][-1]["content"]
        return (chosen, rejected) if row["chosen_index"] == 0 else (rejected, chosen)
    return None


def readings_from_judge_rows(rows: Iterable[dict[str, Any]]) -> list[Reading]:
    """Readings from the `judge` stage's rows (X = ``responses[0]``).

    ``logprob`` rows store ``p_orders`` = P(responses[0] better) in each order, so
    P(first) is ``p_orders[0]`` in order 1 and ``1 − p_orders[1]`` in order 2.
    ``verdict`` rows saw one order (``shown_order``), so they give one reading each.
    Identical answers and unparsed verdicts give none.

    Example:
        >>> readings_from_judge_rows([{"p_orders": [0.9, 0.5], "p_first_better": 0.7,
        ...     "responses": [{"text": "a b c"}, {"text": "a"}]}])[0]
        Reading(p_first=(0.9, 0.5), lengths=(3, 1), label=None)
    """
    out = []
    for row in rows:
        texts = _judge_texts(row)
        lengths = None if texts is None else (text_length(texts[0]), text_length(texts[1]))
        orders = row.get("p_orders")
        if orders and len(orders) == 2 and None not in orders:
            out.append(Reading((orders[0], round(1 - orders[1], 12)), lengths))
        elif row.get("p_first_better") is not None and row.get("shown_order") in ([0, 1], [1, 0]):
            p = row["p_first_better"]  # P(responses[0] better)
            out.append(Reading((p, None) if row["shown_order"] == [0, 1] else (None, round(1 - p, 12)), lengths))
    return out


def five_level_reading(orders: Sequence[float | None], lengths: tuple[float, float] | None = None, label: int | None = None) -> Reading:
    """A reading from a five-level pairwise judgment (`valign.evals.pairwise`): X's
    score in order 1 (X shown as A) and in order 2 (X shown as B), each −2 … 2, become
    P(first better) = (score of the first-shown answer + 2) / 4, so ``A≫B`` is 1,
    ``A=B`` is 0.5 and ``B≫A`` is 0.

    Example:
        >>> five_level_reading([2.0, -1.0]).p_first, five_level_reading([None, 0.0]).p_first
        ((1.0, 0.75), (None, 0.5))
    """
    x1, x2 = orders
    p1 = None if x1 is None else round((x1 + 2) / 4, 12)
    p2 = None if x2 is None else round((2 - x2) / 4, 12)  # order 2 shows Y first: its score is −x2
    return Reading((p1, p2), lengths, label)


def readings_from_keycase_rows(rows: Iterable[dict[str, Any]]) -> list[Reading]:
    """Readings from judged key cases (X = tuned, Y = base), by `five_level_reading`.

    Example:
        >>> readings_from_keycase_rows([{"type": "keycase", "orders": [2.0, -1.0],
        ...     "tuned_response": "a b", "base_response": "a"}])[0].p_first
        (1.0, 0.75)
    """
    out = []
    for row in rows:
        if row.get("type", "keycase") != "keycase" or not row.get("orders"):
            continue
        lengths = (text_length(row.get("tuned_response") or ""), text_length(row.get("base_response") or ""))
        out.append(five_level_reading(row["orders"], lengths))
    return out


def readings_from_mtbench_rows(rows: Iterable[dict[str, Any]]) -> list[Reading]:
    """Readings from MT-Bench's single-answer grades (X = tuned, Y = base): each
    question's turn graded for both models gives P(X better) = 0.5 + (X's rating −
    Y's rating) / 18 (ratings 1–10, so a 10 against a 1 is 1.0), with the two turn
    answers' lengths. No order produced it (each answer was graded alone), so these
    readings measure ties (equal ratings) and length bias only. Unparsed ratings (−1)
    give none.

    Example:
        >>> answers = [{"type": "mtbench_answer", "role": role, "record": {"question_id": 81,
        ...             "choices": [{"turns": [text, "ok"]}]}} for role, text in (("tuned", "a b c d"), ("base", "a"))]
        >>> grades = [{"type": "mtbench_judgment", "role": role, "record": {"question_id": 81, "turn": 1, "score": s}}
        ...           for role, s in (("tuned", 8), ("base", 5))]
        >>> r = readings_from_mtbench_rows(answers + grades)[0]
        >>> r.p_x, r.lengths, r.ordered
        (0.666666666667, (4, 1), False)
    """
    rows = list(rows)
    turns: dict[tuple[str, Any], list[str]] = {}
    for row in rows:
        if row.get("type") == "mtbench_answer":
            rec = row["record"]
            turns[(row["role"], rec["question_id"])] = list(rec["choices"][0]["turns"])
    scores: dict[tuple[Any, int], dict[str, float]] = {}
    for row in rows:
        if row.get("type") == "mtbench_judgment":
            rec = row["record"]
            scores.setdefault((rec["question_id"], int(rec["turn"])), {})[row["role"]] = rec["score"]
    out = []
    for (qid, turn), by_role in sorted(scores.items(), key=lambda kv: (str(kv[0][0]), kv[0][1])):
        x, y = by_role.get("tuned"), by_role.get("base")
        if x is None or y is None or x < 0 or y < 0:
            continue
        tx, ty = turns.get(("tuned", qid)), turns.get(("base", qid))
        lengths = None if not tx or not ty or len(tx) < turn or len(ty) < turn else (text_length(tx[turn - 1]), text_length(ty[turn - 1]))
        out.append(Reading((round(0.5 + (x - y) / 18, 12), None), lengths, ordered=False))
    return out
