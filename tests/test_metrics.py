"""OOD metrics: conventions (higher score = more OOD; OOD positive for AUROC/FPR)."""

import numpy as np
import pytest

from rose_core import metrics as M


def test_perfect_ranking():
    in_s, ood_s = np.arange(10.0), np.arange(10.0) + 100
    m = M.ood_metrics(in_s, ood_s)
    assert m["auroc"] == 1.0
    assert m["fpr80"] == 0.0 and m["fpr95"] == 0.0
    assert m["auprc_in"] == pytest.approx(1.0) and m["auprc_out"] == pytest.approx(1.0)
    assert (m["n_in"], m["n_ood"]) == (10, 10)


def test_reversed_ranking():
    in_s, ood_s = np.arange(10.0) + 100, np.arange(10.0)
    assert M.auroc(in_s, ood_s) == 0.0
    assert M.fpr80(in_s, ood_s) == 1.0


def test_random_scores_near_half():
    rng = np.random.default_rng(0)
    m = M.ood_metrics(rng.normal(size=4000), rng.normal(size=4000))
    assert abs(m["auroc"] - 0.5) < 0.03
    assert abs(m["fpr80"] - 0.8) < 0.04


def test_ties_count_half():
    assert M.auroc([1.0, 1.0], [1.0, 1.0]) == 0.5


def test_auprc_conventions_differ_as_expected():
    # unbalanced chance levels: in-positive AP ≈ n_in / n, OOD-positive AP ≈ n_ood / n
    rng = np.random.default_rng(1)
    in_s, ood_s = rng.normal(size=3000), rng.normal(size=1000)
    assert M.auprc_in(in_s, ood_s) == pytest.approx(0.75, abs=0.03)
    assert M.auprc_out(in_s, ood_s) == pytest.approx(0.25, abs=0.03)
    # a hand-computed case: one in-distribution sample hides among the OOD ones
    in_s, ood_s = [0.0, 1.0, 5.0], [2.0, 3.0, 4.0, 6.0]
    # OOD positive, ranked by score: 6(+) 5(-) 4(+) 3(+) 2(+) -> AP = (1 + 2/3 + 3/4 + 4/5) / 4
    assert M.auprc_out(in_s, ood_s) == pytest.approx((1 + 2 / 3 + 3 / 4 + 4 / 5) / 4)
    # in positive, ranked by -score: 0(+) 1(+) 2 3 4 (-) 5(+) -> AP = (1 + 1 + 3/6) / 3
    assert M.auprc_in(in_s, ood_s) == pytest.approx((1 + 1 + 0.5) / 3)


def test_fpr_hand_computed():
    in_s = [0.0, 1.0, 2.0, 3.0, 4.0]
    ood_s = [0.5, 3.5, 5.0, 6.0, 7.0]
    # threshold 3.5 flags 4/5 OOD (TPR 0.8) and one in-dist sample (4.0): FPR 0.2
    assert M.fpr80(in_s, ood_s) == pytest.approx(0.2)
    # TPR 0.95 needs all 5 OOD: threshold 0.5 flags 1, 2, 3, 4: FPR 0.8
    assert M.fpr95(in_s, ood_s) == pytest.approx(0.8)
    assert M.auroc(in_s, ood_s) == pytest.approx((1 + 4 + 5 + 5 + 5) / 25)  # pairs won by OOD


def test_roc_curve_endpoints_and_monotone():
    rng = np.random.default_rng(2)
    fpr, tpr = M.roc_curve(rng.normal(size=50), rng.normal(1, 1, size=60))
    assert fpr[0] == 0 and tpr[0] == 0 and fpr[-1] == 1 and tpr[-1] == 1
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(tpr) >= 0)


def test_roc_curve_area_matches_auroc():
    rng = np.random.default_rng(3)
    a, b = rng.normal(size=200), rng.normal(0.7, 1, size=150)
    fpr, tpr = M.roc_curve(a, b)
    assert np.trapezoid(tpr, fpr) == pytest.approx(M.auroc(a, b))


@pytest.mark.parametrize("bad", [[1.0, np.nan], [np.inf, 0.0], [-np.inf]])
def test_non_finite_scores_raise(bad):
    with pytest.raises(ValueError, match="non-finite"):
        M.ood_metrics(bad, [1.0, 2.0])
    with pytest.raises(ValueError, match="ood_scores"):
        M.auroc([1.0, 2.0], bad)


def test_empty_and_badly_shaped_inputs_raise():
    with pytest.raises(ValueError, match="in_scores is empty"):
        M.auroc([], [1.0])
    with pytest.raises(ValueError, match="ood_scores is empty"):
        M.fpr80([1.0], np.array([]))
    with pytest.raises(ValueError, match="1-D"):
        M.auroc(np.zeros((2, 2)), [1.0])
    with pytest.raises(ValueError, match="tpr"):
        M.fpr_at_tpr([1.0], [2.0], 0.0)


def test_threshold_at_tpr():
    in_s = np.arange(1, 21, dtype=float)  # 1..20
    t = M.threshold_at_tpr(in_s, 0.95)
    assert t == 19.0  # 19 of 20 (95%) are <= 19
    assert np.mean(in_s <= t) >= 0.95 and np.mean(in_s > t) <= 0.05
    assert M.threshold_at_tpr(np.arange(10.0), 0.7) == 6.0  # 7 of 10 are <= 6 (no float round-up)
    assert M.threshold_at_tpr([3.0, 1.0, 2.0], 1.0) == 3.0
    rng = np.random.default_rng(4)
    scores = rng.normal(size=1001)
    assert np.mean(scores <= M.threshold_at_tpr(scores, 0.8)) == pytest.approx(0.8, abs=1e-3)


def test_empirical_p_value():
    in_s = [1.0, 2.0, 3.0, 4.0]
    p = M.empirical_p_value(in_s, [0.0, 2.0, 2.5, 10.0])
    np.testing.assert_allclose(p, [5 / 5, 4 / 5, 3 / 5, 1 / 5])
    with pytest.raises(ValueError):
        M.empirical_p_value(in_s, [np.nan])
