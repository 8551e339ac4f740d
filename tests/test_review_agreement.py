"""Agreement statistics of the expert review against published and hand-computed values."""

from __future__ import annotations

import pytest

from valign.errors import ValignError
from valign.review.agreement import consensus, judge_agreement, krippendorff_alpha, nearest_level, weighted_kappa

# Krippendorff (2011), "Computing Krippendorff's Alpha-Reliability", section C: four
# observers, twelve units, values 1-5, missing data. The paper reports
# alpha = 0.743 (nominal), 0.815 (ordinal), 0.849 (interval).
_ = None
PAPER = [
    [1, 2, 3, 3, 2, 1, 4, 1, 2, _, _, _],
    [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, _, 3],
    [_, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, _],
    [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, _],
]
UNITS = [list(u) for u in zip(*PAPER)]


@pytest.mark.parametrize(("metric", "published"), [("nominal", 0.743), ("ordinal", 0.815), ("interval", 0.849)])
def test_alpha_matches_krippendorffs_worked_example(metric, published):
    assert round(krippendorff_alpha(UNITS, metric), 3) == published


def test_ordinal_alpha_by_hand():
    # Units (2,2), (1,1), (-1,-2): coincidences o(2,2)=2, o(1,1)=2, o(-1,-2)=o(-2,-1)=1;
    # n_-2=n_-1=1, n_1=n_2=2, n=6. Ordinal delta(-2,-1) = (1+1 - (1+1)/2)^2 = 1.
    # Observed sum = 2*1 = 2. Expected: sum over c != k of n_c n_k delta^2:
    #   (-2,-1): 1*1*1 ; (-2,1): (1+1+2-1.5)^2=2.5^2 ; (-2,2): (6-1.5)^2=4.5^2 ; (-1,1): (1+2-1.5)^2=1.5^2 ;
    #   (-1,2): (5-1.5)^2=3.5^2 ; (1,2): (4-2)^2=2^2, each weighted n_c n_k and counted twice.
    expected = 2 * (1 * 1 * 1 + 1 * 2 * 6.25 + 1 * 2 * 20.25 + 1 * 2 * 2.25 + 1 * 2 * 12.25 + 2 * 2 * 4)
    assert krippendorff_alpha([[2, 2], [1, 1], [-1, -2]], "ordinal") == pytest.approx(1 - 5 * 2 / expected)


def test_alpha_ignores_units_graded_once_and_is_undefined_without_variation():
    assert krippendorff_alpha([[1, 1], [2, 2], [0, None, None]], "ordinal") == 1.0
    assert krippendorff_alpha([[1, 1], [1, 1]], "ordinal") is None
    assert krippendorff_alpha([[1], [2]], "ordinal") is None


def test_quadratic_weighted_kappa_by_hand():
    # a = (2,1,0,0), b = (2,0,0,1): observed weighted disagreement (0+1+0+1)/4 = 0.5;
    # both margins are {2: .25, 1: .25, 0: .5}; expected = 2*(1*.25*.25 + 4*.25*.5 + 1*.25*.5) = 1.375.
    assert weighted_kappa([2, 1, 0, 0], [2, 0, 0, 1]) == pytest.approx(1 - 0.5 / 1.375)
    # linear weights: observed 0.5, expected 2*(.25*.25 + 2*.25*.5 + .25*.5) = 0.875
    assert weighted_kappa([2, 1, 0, 0], [2, 0, 0, 1], weights="linear") == pytest.approx(1 - 0.5 / 0.875)
    assert weighted_kappa([2, -2], [-2, 2]) == pytest.approx(-1.0)


def test_kappa_refuses_grades_off_the_scale():
    with pytest.raises(ValignError, match="not on the scale"):
        weighted_kappa([1.5], [1])


def test_consensus_and_judge_agreement():
    assert consensus([2, -1, 1]) == 1 and consensus([2, 1]) == 1.5
    assert [nearest_level(x) for x in (1.5, -1.5, 0.4)] == [2, -2, 0]
    a = judge_agreement([1.5, 0.0, -1.0, 0.5], [2, 0, 1, 1])
    assert a.cases == 4 and a.same_direction == 0.75 and a.exact_level == 0.75
    # levels judge (2,0,-1,1) vs humans (2,0,1,1): by hand as above
    assert a.kappa_quadratic == pytest.approx(round(weighted_kappa([2, 0, -1, 1], [2, 0, 1, 1]), 4))
    assert judge_agreement([], []).kappa_quadratic is None
