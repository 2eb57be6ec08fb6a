"""Likelihood typicality and ROSE + typicality: exact p-values, combination rules, the
leave-one-out verdict threshold, one ROSE pass per score, and clear errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats
from torch import nn

from rose_core.errors import InvalidInput
from rose_core.metrics import empirical_p_value, threshold_at_tpr
from rose_core.models import VAE, VAEConfig
from rose_core.scorers.base import ScoreResult
from rose_core.scorers.registry import METHODS, build_scorer
from rose_core.scorers.rose import RoseScorer
from rose_core.scorers.typicality import (FIRED_VALUES, RoseTypicalityScorer, TypicalityScorer, combine_p,
                                          combined_score, lower_tail_p, two_sided_p, upper_tail_p)


# --- helpers ---------------------------------------------------------------------------------

class FakeRose:
    """Stands in for a fitted RoseScorer under the lead's contract: ``calibration_scores`` and
    ``calibration_loss`` arrays, ``score(x)`` with a ``loss`` extra. An "image" encodes its own
    ROSE score in pixel (0, 0, 0) and its loss in pixel (0, 0, 1), exactly (float64)."""

    fitted = True

    def __init__(self, cal_scores, cal_loss):
        self.calibration_scores = np.asarray(cal_scores, dtype=np.float64)
        self.calibration_loss = np.asarray(cal_loss, dtype=np.float64)
        self.score_calls = 0
        self.fit_calls = []

    def fit(self, in_dist, calibration=None):
        self.fit_calls.append((in_dist, calibration))
        return self

    def score(self, x):
        self.score_calls += 1
        s = x[:, 0, 0, 0].double().numpy().copy()
        loss = x[:, 0, 0, 1].double().numpy().copy()
        return ScoreResult(s, {"loss": loss, "layer_z": s[:, None].copy()})


def _encode(rose_scores, losses):
    """"Images" whose FakeRose score and loss are the given values."""
    x = torch.zeros(len(rose_scores), 1, 2, 2, dtype=torch.float64)
    x[:, 0, 0, 0] = torch.as_tensor(np.asarray(rose_scores, dtype=np.float64))
    x[:, 0, 0, 1] = torch.as_tensor(np.asarray(losses, dtype=np.float64))
    return x


def _tiny_vae(seed=0):
    torch.manual_seed(seed)
    vae = VAE(VAEConfig(base_width=4, latent_dim=3))
    with torch.no_grad():
        for m in vae.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
    return vae.eval()


def _images(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    base = torch.rand(n, 1, 32, 32, generator=g) * 0.3
    base[:, :, 8:24, 8:24] += 0.6
    return base.clamp(0, 1)


# --- exact p-values ---------------------------------------------------------------------------

def test_p_values_exact_on_hand_built_calibration():
    cal = [4.0, 1.0, 3.0, 2.0]  # n = 4: p-values are multiples of 1/5
    v = [0.0, 1.0, 2.0, 2.5, 5.0, math.inf, -math.inf]
    np.testing.assert_allclose(upper_tail_p(cal, v), [5 / 5, 5 / 5, 4 / 5, 3 / 5, 1 / 5, 1 / 5, 5 / 5])
    np.testing.assert_allclose(lower_tail_p(cal, v), [1 / 5, 2 / 5, 3 / 5, 3 / 5, 5 / 5, 5 / 5, 1 / 5])
    np.testing.assert_allclose(two_sided_p(cal, v), [2 / 5, 4 / 5, 1.0, 1.0, 2 / 5, 2 / 5, 2 / 5])
    # ties count towards the tail
    np.testing.assert_allclose(two_sided_p([1.0, 1.0, 1.0], [1.0]), [1.0])
    np.testing.assert_allclose(upper_tail_p([1.0, 1.0, 2.0], [1.0]), [4 / 4])


def test_upper_tail_matches_metrics_empirical_p_value():
    rng = np.random.default_rng(0)
    cal = rng.normal(size=50).round(1)  # ties included
    v = rng.normal(size=200).round(1)
    np.testing.assert_array_equal(upper_tail_p(cal, v), empirical_p_value(cal, v))


def test_typicality_scorer_scores_are_minus_log_two_sided_p():
    t = TypicalityScorer(_tiny_vae()).fit_losses([10.0, 20.0, 30.0, 40.0, 50.0, 60.0, 70.0, 80.0, 90.0])
    r = t.score_losses([5.0, 50.0, 95.0, 10.0])
    np.testing.assert_allclose(r.extras["p_typicality"], [0.2, 1.0, 0.2, 0.4])
    np.testing.assert_allclose(r.score, -np.log([0.2, 1.0, 0.2, 0.4]))
    np.testing.assert_array_equal(r.extras["loss"], [5.0, 50.0, 95.0, 10.0])
    np.testing.assert_array_equal(t.calibration_loss, np.arange(10.0, 91.0, 10.0))


def test_two_sided_flags_both_tails():
    rng = np.random.default_rng(1)
    t = TypicalityScorer(_tiny_vae()).fit_losses(rng.normal(1000.0, 10.0, size=999))
    r = t.score_losses([900.0, 1000.0, 1100.0])
    thr = t.threshold_at(0.95)
    assert r.score[0] == r.score[2] == pytest.approx(-math.log(2 / 1000))  # both tails symmetric
    assert r.score[0] > thr and r.score[2] > thr and r.score[1] <= thr
    # a one-sided (upper-tail) test would miss the low one
    assert upper_tail_p(t.calibration_loss, [900.0])[0] == 1.0


# --- combination --------------------------------------------------------------------------------

def test_combine_rules_exact():
    pr = np.array([0.01, 0.5, 1.0, 0.2, 1 / 1001])
    pt = np.array([0.3, 0.5, 1.0, 0.01, 1 / 1001])
    np.testing.assert_allclose(combine_p(pr, pt, "min-p"), np.minimum(1, 2 * np.minimum(pr, pt)))
    np.testing.assert_allclose(combine_p(pr, pt, "fisher"), stats.chi2.sf(-2 * np.log(pr * pt), 4), rtol=1e-12)
    np.testing.assert_allclose(combined_score(pr, pt, "fisher"), -np.log(stats.chi2.sf(-2 * np.log(pr * pt), 4)),
                               rtol=1e-12)
    assert combine_p(1.0, 1.0, "fisher") == 1.0 and combine_p(1.0, 1.0, "min-p") == 1.0
    with pytest.raises(ValueError, match="combine must be one of"):
        combine_p(0.1, 0.1, "stouffer")
    with pytest.raises(InvalidInput, match="p-values"):
        combine_p(0.0, 0.1)


def test_combined_is_bonferroni_of_its_parts():
    rng = np.random.default_rng(2)
    cal_s, cal_l = rng.gamma(2.0, 5.0, 200), rng.normal(50.0, 5.0, 200)
    rose = FakeRose(cal_s, cal_l)
    sc = RoseTypicalityScorer(rose).fit()
    s, l = rng.uniform(0, 60, 40), rng.uniform(30, 70, 40)
    r = sc.score(_encode(s, l))
    np.testing.assert_allclose(r.extras["p_rose"], empirical_p_value(cal_s, s))
    np.testing.assert_allclose(r.extras["p_typicality"], two_sided_p(cal_l, l))
    np.testing.assert_allclose(r.extras["p_combined"],
                               np.minimum(1, 2 * np.minimum(r.extras["p_rose"], r.extras["p_typicality"])))
    np.testing.assert_allclose(r.score, -np.log(r.extras["p_combined"]))
    np.testing.assert_allclose(r.extras["rose_score"], s)
    np.testing.assert_allclose(r.extras["loss"], l)
    assert "layer_z" in r.extras  # ROSE's extras pass through
    fisher = RoseTypicalityScorer(rose, combine="fisher").fit().score(_encode(s, l))
    q = r.extras["p_rose"] * r.extras["p_typicality"]
    np.testing.assert_allclose(fisher.extras["p_combined"], stats.chi2.sf(-2 * np.log(q), 4), rtol=1e-10)


def test_low_loss_flagged_by_typicality_not_by_rose_alone():
    rng = np.random.default_rng(3)
    cal_s, cal_l = rng.gamma(2.0, 5.0, 500), rng.normal(50.0, 3.0, 500)
    rose = FakeRose(cal_s, cal_l)
    sc = RoseTypicalityScorer(rose, tpr=0.95).fit()
    # an image with a typical ROSE score (the calibration median) and a loss far below every calibration loss
    x = _encode([float(np.median(cal_s))], [20.0])
    r = sc.score(x)
    rose_threshold = threshold_at_tpr(cal_s, 0.95)
    assert rose.score(x).score[0] <= rose_threshold  # ROSE alone: in-distribution
    assert r.score[0] > sc.threshold and r.extras["fired"][0] == "typicality"
    assert r.extras["p_typicality"][0] == pytest.approx(2 / 501)
    # and the mirror case: ROSE fires, typicality does not; both; none
    r = sc.score(_encode([cal_s.max() + 1, cal_s.max() + 1, float(np.median(cal_s))], [50.0, 90.0, 50.0]))
    assert list(r.extras["fired"]) == ["rose", "both", "none"]


def test_fisher_can_fire_jointly_and_fired_matches_the_verdict():
    rng = np.random.default_rng(4)
    n = 2000
    cal_s, cal_l = rng.normal(20.0, 3.0, n), rng.normal(50.0, 3.0, n)
    sc = RoseTypicalityScorer(FakeRose(cal_s, cal_l), combine="fisher").fit()
    # each p around 0.03: alone p(1 − log p) ≈ 0.13 (not OOD at 95 %), together ≈ 0.006
    s = np.quantile(cal_s, 0.97)
    l = np.quantile(cal_l, 0.985)
    r = sc.score(_encode([s], [l]))
    assert r.extras["fired"][0] == "joint" and r.score[0] > sc.threshold
    # on a spread of inputs, fired != "none" is exactly score > threshold, for both rules
    ss, ll = rng.uniform(5, 40, 500), rng.uniform(30, 70, 500)
    for rule in ("min-p", "fisher"):
        sc = RoseTypicalityScorer(FakeRose(cal_s, cal_l), combine=rule).fit()
        for thr in (None, 1.0, 3.0):
            r = sc.score(_encode(ss, ll), threshold=thr)
            t = sc.threshold if thr is None else thr
            assert set(r.extras["fired"]) <= set(FIRED_VALUES)
            np.testing.assert_array_equal(r.extras["fired"] != "none", r.score > t)
            if rule == "min-p":
                assert "joint" not in set(r.extras["fired"])


# --- threshold ----------------------------------------------------------------------------------

def test_leave_one_out_scores_by_brute_force():
    rng = np.random.default_rng(5)
    cal_s, cal_l = rng.normal(size=15).round(1), rng.normal(size=15).round(1)  # ties included
    for rule in ("min-p", "fisher"):
        sc = RoseTypicalityScorer(FakeRose(cal_s, cal_l), combine=rule).fit()
        want = []
        for i in range(15):
            rest = np.delete(np.arange(15), i)
            pr = upper_tail_p(cal_s[rest], [cal_s[i]])
            pt = two_sided_p(cal_l[rest], [cal_l[i]])
            want.append(combined_score(pr, pt, rule)[0])
        np.testing.assert_allclose(sc.calibration_combined_scores(), want, rtol=1e-12)
        assert sc.threshold == threshold_at_tpr(want, 0.95)
    t = TypicalityScorer(_tiny_vae()).fit_losses(cal_l)
    want = [-np.log(two_sided_p(np.delete(cal_l, i), [cal_l[i]])[0]) for i in range(15)]
    assert t.threshold_at(0.8) == threshold_at_tpr(want, 0.8)


@pytest.mark.parametrize("rule", ["min-p", "fisher"])
@pytest.mark.parametrize("n", [20, 101, 1000])
def test_threshold_keeps_tpr_of_the_calibration_images(rule, n):
    rng = np.random.default_rng(n)
    cal_s, cal_l = np.maximum(0, rng.normal(size=n)), rng.normal(size=n)  # ReLU-like ties at 0
    rose = FakeRose(cal_s * 10 + 1, cal_l * 5 + 50)
    sc = RoseTypicalityScorer(rose, combine=rule).fit()
    own = sc.score(_encode(rose.calibration_scores, rose.calibration_loss)).score
    for tpr in (0.5, 0.8, 0.9, 0.95, 0.99):
        thr = sc.threshold_at(tpr)
        assert np.mean(own <= thr) >= tpr
        assert np.mean(sc.calibration_combined_scores() <= thr) >= tpr


def test_threshold_gives_the_requested_false_alarm_rate_on_fresh_images():
    rng = np.random.default_rng(6)
    rose = FakeRose(rng.gamma(2, 5, 2000), rng.normal(50, 3, 2000))
    sc = RoseTypicalityScorer(rose, tpr=0.95).fit()
    fresh = sc.score(_encode(rng.gamma(2, 5, 20000), rng.normal(50, 3, 20000)))
    far = np.mean(fresh.score > sc.threshold)
    assert 0.04 < far < 0.06, far  # ≈ 1 − tpr; ±0.01 is > 5 binomial standard errors


# --- one ROSE pass ------------------------------------------------------------------------------

def test_score_makes_one_rose_call_and_fit_none():
    rose = FakeRose([1.0, 2.0, 3.0], [5.0, 6.0, 7.0])
    sc = RoseTypicalityScorer.from_rose(rose)
    assert rose.score_calls == 0 and rose.fit_calls == []
    sc.score(_encode(np.linspace(0, 5, 600), np.linspace(0, 10, 600)))
    assert rose.score_calls == 1
    sc.fit(torch.zeros(3, 1, 2, 2))
    sc.fit(torch.zeros(3, 1, 2, 2), calibration=torch.ones(2, 1, 2, 2))
    assert [c is None for _, c in rose.fit_calls] == [True, False]


@pytest.mark.filterwarnings("ignore::rose_core.scorers.rose.RankDeficientFitWarning")
def test_real_rose_score_makes_no_extra_forward(monkeypatch):
    vae = _tiny_vae()
    rose = RoseScorer(vae, fisher="diag", batch_size=16).fit(_images(40), calibration=_images(20, seed=7))
    sc = RoseTypicalityScorer(rose).fit()
    x = torch.cat([_images(6, seed=1), torch.rand(4, 1, 32, 32)])
    calls = {"score": 0, "forward": 0}
    real_score, real_loss = RoseScorer.score, VAE.per_sample_loss

    def counting_score(self, x):
        calls["score"] += 1
        return real_score(self, x)

    def counting_loss(self, x):
        calls["forward"] += 1
        return real_loss(self, x)

    monkeypatch.setattr(RoseScorer, "score", counting_score)
    monkeypatch.setattr(VAE, "per_sample_loss", counting_loss)
    ref = rose.score(x)
    assert calls == {"score": 1, "forward": 1}
    r = sc.score(x)
    assert calls == {"score": 2, "forward": 2}
    np.testing.assert_allclose(r.extras["rose_score"], ref.score)
    np.testing.assert_allclose(r.extras["p_rose"], empirical_p_value(rose.calibration_scores, ref.score))
    np.testing.assert_allclose(r.extras["loss"], ref.extras["loss"])
    assert r.extras["layer_raw"].shape == (10, 5) and np.isfinite(r.score).all()


@pytest.mark.filterwarnings("ignore::rose_core.scorers.rose.RankDeficientFitWarning")
def test_real_rose_fit_with_calibration_and_a_saved_fit(tmp_path):
    vae = _tiny_vae()
    fit_x, cal = _images(30), _images(20, seed=7)
    sc = build_scorer("rose+typicality", vae, fisher="diag", batch_size=16, tpr=0.9).fit(fit_x, calibration=cal)
    rose = sc.rose
    assert rose.n_fisher == 30 and rose.n_norm == 20
    # the calibration arrays describe the calibration images: ROSE scores and the model's loss
    with torch.no_grad():
        want_loss = vae.per_sample_loss(cal).double().numpy()
    own = sc.score(cal)
    np.testing.assert_allclose(rose.calibration_loss, want_loss, rtol=1e-5)
    np.testing.assert_allclose(own.extras["rose_score"], rose.calibration_scores, rtol=1e-4, atol=1e-9)
    assert np.mean(own.score <= sc.threshold) >= 0.9
    # junk far from the calibration images is flagged and names its test
    junk = sc.score(torch.cat([torch.zeros(1, 1, 32, 32), torch.rand(2, 1, 32, 32)]))
    assert (junk.score > sc.threshold).all() and (junk.extras["fired"] != "none").all()
    # a saved and reloaded fit gives the same combined verdict without any pass over images
    rose.save(tmp_path / "fit")
    loaded = RoseTypicalityScorer.from_rose(RoseScorer.load(tmp_path / "fit", vae), tpr=0.9)
    assert loaded.threshold == pytest.approx(sc.threshold)
    np.testing.assert_allclose(loaded.calibration_combined_scores(), sc.calibration_combined_scores())
    np.testing.assert_allclose(loaded.score(cal).score, own.score, rtol=1e-6)


# --- typicality on a real tiny model ------------------------------------------------------------

@pytest.mark.filterwarnings("ignore::rose_core.scorers.rose.RankDeficientFitWarning")
def test_typicality_scorer_on_a_tiny_vae():
    vae = _tiny_vae()
    cal, x = _images(30), torch.cat([_images(5, seed=1), torch.rand(3, 1, 32, 32), torch.zeros(1, 1, 32, 32)])
    t = TypicalityScorer(vae, batch_size=7).fit(cal)
    with torch.no_grad():
        want_cal = np.sort(vae.per_sample_loss(cal).double().numpy())
        want = vae.per_sample_loss(x).double().numpy()
    np.testing.assert_allclose(t.calibration_loss, want_cal, rtol=1e-6)
    r = t.score(x)
    np.testing.assert_allclose(r.extras["loss"], want, rtol=1e-6)
    np.testing.assert_allclose(r.extras["p_typicality"], two_sided_p(t.calibration_loss, r.extras["loss"]))
    np.testing.assert_allclose(r.score, -np.log(r.extras["p_typicality"]))
    # iterable of batches == tensor; the model's mode is restored
    vae.train()
    t2 = TypicalityScorer(vae).fit([cal[:4], cal[4:]])
    assert vae.training
    np.testing.assert_allclose(t2.calibration_loss, t.calibration_loss, rtol=1e-6)
    # the loss is the one ROSE differentiates: it matches ROSE's extras
    rose = RoseScorer(vae.eval(), fisher="diag").fit(cal)
    np.testing.assert_allclose(rose.score(x).extras["loss"], r.extras["loss"], rtol=1e-5)


# --- registry -----------------------------------------------------------------------------------

def test_registry_builds_both():
    vae = _tiny_vae()
    assert {"typicality", "rose+typicality"} <= set(METHODS)
    t = build_scorer("typicality", vae, batch_size=8)
    assert isinstance(t, TypicalityScorer) and t.batch_size == 8
    c = build_scorer("rose+typicality", vae, combine="fisher", tpr=0.9, fisher="diag", batch_size=4)
    assert isinstance(c, RoseTypicalityScorer) and isinstance(c.rose, RoseScorer)
    assert (c.combine, c.tpr, c.rose.fisher_kind, c.rose.batch_size) == ("fisher", 0.9, "diag", 4)
    assert build_scorer("rose+typicality", vae).rose.fisher_kind == "ekfac"
    with pytest.raises(ValueError, match="combine"):
        build_scorer("rose+typicality", vae, combine="max")
    with pytest.raises(ValueError, match="needs a generative model"):
        build_scorer("typicality", None)


# --- errors -------------------------------------------------------------------------------------

def test_unfitted_and_bad_inputs_give_clear_errors():
    vae = _tiny_vae()
    t = TypicalityScorer(vae)
    with pytest.raises(RuntimeError, match="not fitted.*calibration_images"):
        t.score(_images(2))
    with pytest.raises(RuntimeError, match="not fitted"):
        t.threshold_at(0.95)
    with pytest.raises(InvalidInput, match="NaN"):
        t.fit(torch.full((3, 1, 32, 32), float("nan")))
    with pytest.raises(InvalidInput, match="non-finite.*index 1"):
        t.fit_losses([1.0, float("nan"), 2.0])
    with pytest.raises(InvalidInput, match="at least 2"):
        t.fit_losses([1.0])
    with pytest.raises(InvalidInput, match="shape"):
        t.fit(torch.rand(3, 1, 28, 28))
    with pytest.raises(InvalidInput, match="tensor"):
        t.fit("images/")
    t.fit_losses([1.0, 2.0, 3.0])
    with pytest.raises(InvalidInput, match="NaN"):
        t.score_losses([float("nan")])
    with pytest.raises(ValueError, match="tpr"):
        t.threshold_at(1.5)
    with pytest.raises(TypeError, match="per_sample_loss"):
        TypicalityScorer(nn.Linear(2, 2))

    with pytest.raises(RuntimeError, match="not fitted"):
        RoseTypicalityScorer(RoseScorer(vae)).fit()
    with pytest.raises(RuntimeError, match="not fitted"):
        RoseTypicalityScorer(FakeRose([1, 2], [1, 2])).score(_encode([1], [1]))
    with pytest.raises(ValueError, match="combine"):
        RoseTypicalityScorer(FakeRose([1, 2], [1, 2]), combine="sum")
    with pytest.raises(ValueError, match="tpr"):
        RoseTypicalityScorer(FakeRose([1, 2], [1, 2]), tpr=0)
    with pytest.raises(ValueError, match="in_dist"):
        RoseTypicalityScorer(FakeRose([1, 2], [1, 2])).fit(calibration=_images(2))
    no_arrays = FakeRose([1, 2], [1, 2])
    no_arrays.calibration_loss = None
    with pytest.raises(RuntimeError, match="refit"):
        RoseTypicalityScorer(no_arrays).fit()

    class Raising(FakeRose):  # a RoseScorer whose calibration_scores property raises (loaded from disk)
        @property
        def calibration_scores(self):
            raise RuntimeError("This scorer holds no calibration scores")

        @calibration_scores.setter
        def calibration_scores(self, value):
            pass

    with pytest.raises(RuntimeError, match="refit it with fit\\(in_dist, calibration="):
        RoseTypicalityScorer(Raising([1, 2], [1, 2])).fit()
    with pytest.raises(RuntimeError, match="same images"):
        RoseTypicalityScorer(FakeRose([1, 2, 3], [1, 2])).fit()
    with pytest.raises(InvalidInput, match="non-finite"):
        RoseTypicalityScorer(FakeRose([1, 2, np.nan], [1, 2, 3])).fit()
    with pytest.raises(InvalidInput, match="at least 2"):
        RoseTypicalityScorer(FakeRose([1], [1])).fit()

    rose = FakeRose([1, 2, 3], [1, 2, 3])
    sc = RoseTypicalityScorer(rose).fit()
    with pytest.raises(InvalidInput, match="NaN"):
        sc.combine_result(ScoreResult(np.array([1.0]), {"loss": np.array([np.nan])}))
    with pytest.raises(ValueError, match="'loss'"):
        sc.combine_result(ScoreResult(np.array([1.0])))
    rose.calibration_scores = np.array([1.0, 2.0, 4.0])  # refitted behind our back
    with pytest.raises(RuntimeError, match="refitted"):
        sc.score(_encode([1], [1]))


def test_empty_batch():
    sc = RoseTypicalityScorer(FakeRose([1.0, 2.0, 3.0], [1.0, 2.0, 3.0])).fit()
    r = sc.score(_encode([], []))
    assert len(r) == 0 and r.extras["fired"].shape == (0,)
    vae = _tiny_vae()
    assert len(TypicalityScorer(vae).fit(_images(3)).score(torch.zeros(0, 1, 32, 32))) == 0
