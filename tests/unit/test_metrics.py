import math

import pytest

from clbench.metrics import accuracy, bwt, forgetting, mean_std_ci


def test_accuracy_counts_matches():
    assert accuracy([1, 2, 3, 4], [1, 0, 3, 0]) == 0.5
    with pytest.raises(ValueError):
        accuracy([1], [1, 2])


# R[t][u]: accuracy on experience u after training experience t (lower triangle).
R = [
    [0.9],
    [0.6, 0.8],
    [0.3, 0.7, 1.0],
]


def test_forgetting_by_hand():
    # u=0: max(0.9, 0.6) - 0.3 = 0.6; u=1: max(0.8) - 0.7 = 0.1 -> mean 0.35
    assert forgetting(R) == pytest.approx(0.35)


def test_bwt_by_hand():
    # (0.3 - 0.9) + (0.7 - 0.8) = -0.7 over 2 experiences
    assert bwt(R) == pytest.approx(-0.35)


def test_no_forgetting_without_history():
    assert forgetting([[1.0]]) is None and bwt([[1.0]]) is None
    assert forgetting([[0.5], [0.5, 0.5]]) == 0.0


def test_mean_std_ci_by_hand():
    m, sd, ci = mean_std_ci([0.5, 0.7, 0.9])
    assert m == pytest.approx(0.7)
    assert sd == pytest.approx(0.2)
    assert ci == pytest.approx(4.303 * 0.2 / math.sqrt(3), rel=1e-4)  # t(2 df) = 4.303 to 3 decimals


def test_single_value_has_unknown_spread():
    m, sd, ci = mean_std_ci([0.4])
    assert m == 0.4 and math.isnan(sd) and math.isnan(ci)
