"""The shipped checkpoints on small real subsets, and the committed results bundle.

* NLL fails on Fashion-MNIST vs MNIST (AUROC < 0.5) for the shipped VAE and Glow — the
  paper's motivating observation (Figure 1/3);
* ROSE-EKFAC, with the fit the harness saved in ``results/vae-fmnist/fits/``, separates them;
* the committed ``results/vae-fmnist/metrics.parquet`` shows NLL < 0.5 and ROSE above target on
  MNIST.

Subsets are small (a few hundred test images, seed 0) so the module runs in about a minute on
two CPU cores; the thresholds are what these subsets reach (see the asserts' comments).
Skipped when the checkpoints or the real datasets are not available.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from rose_core.data import is_available, load_dataset, to_model_input
from rose_core.metrics import auroc

ROOT = Path(__file__).resolve().parents[1]
VAE = ROOT / "checkpoints" / "vae-fmnist"
GLOW = ROOT / "checkpoints" / "glow-fmnist"
BUNDLE = ROOT / "results" / "vae-fmnist"
ROSE_TARGET = 0.99
"""The best ROSE-EKFAC variant of the committed bundle on MNIST (paper: 0.995). With the shipped
31-epoch VAE (the paper's: 100 epochs) and 1000 Fashion-MNIST vs 300 MNIST test images: 0.978
with the default fit (2000 train images, half Fisher / half separate normalisation), 0.989-0.990
with 10000-30000 fit images, **0.993** with 10000 fit images used for both the Fisher and the
normalisation (``rose-ekfac:n_fit=10000,normalization=same``, the authors' code). See
docs/results.md."""
DEFAULT_MIN = 0.97
"""The default ROSE-EKFAC (``rose-ekfac``) in the bundle: 0.978."""

pytestmark = pytest.mark.skipif(
    not (VAE.with_suffix(".json").exists() and is_available("fashion-mnist") and is_available("mnist")),
    reason="needs checkpoints/vae-fmnist and the real Fashion-MNIST and MNIST test sets")


def _pair(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    fm = to_model_input(load_dataset("fashion-mnist", "test", n=n, seed=0).images)
    mn = to_model_input(load_dataset("mnist", "test", n=n, seed=0).images)
    return fm, mn


@pytest.fixture(scope="module")
def pair300():
    return _pair(300)


def test_vae_nll_fails_on_mnist(pair300):
    from rose_core.checkpoint import load_model
    from rose_core.scorers.nll import NLLScorer

    model, _ = load_model(VAE)
    s = NLLScorer(model, k=5, seed=0)  # IWAE with 5 samples: the test's time budget (the bundle uses 20)
    a = auroc(s.score(pair300[0]).score, s.score(pair300[1]).score)
    assert a < 0.5, a  # 300 vs 300 images: about 0.2 (paper: 0.161)


@pytest.mark.skipif(not GLOW.with_suffix(".json").exists(), reason="needs checkpoints/glow-fmnist")
def test_glow_nll_fails_on_mnist(pair300):
    from rose_core.checkpoint import load_model
    from rose_core.scorers.nll import NLLScorer

    model, _ = load_model(GLOW)
    s = NLLScorer(model, batch_size=64)
    fm, mn = pair300[0][:200], pair300[1][:200]
    a = auroc(s.score(fm).score, s.score(mn).score)
    assert a < 0.5, a  # 200 vs 200 images: about 0.3 (the bundle: 0.293 on 500 vs 200)


def test_rose_ekfac_separates_mnist(pair300):
    """ROSE-EKFAC with the bundle's saved fit (``results/vae-fmnist/fits/rose-ekfac``, 2000 train
    images; ~160 MB, so not committed) or, without it, a fresh fit on 600 train images, on 300
    Fashion-MNIST vs 300 MNIST test images."""
    from rose_core.checkpoint import load_model
    from rose_core.errors import CheckpointError
    from rose_core.scorers.rose import RoseScorer

    model, _ = load_model(VAE)
    fit = BUNDLE / "fits" / "rose-ekfac"
    try:
        scorer = RoseScorer.load(fit, model)
        fresh = False
    except CheckpointError:
        scorer = RoseScorer(model, fisher="ekfac").fit(
            to_model_input(load_dataset("fashion-mnist", "train", n=600, seed=0).images))
        fresh = True
    a_in, a_ood = scorer.score(pair300[0]), scorer.score(pair300[1])
    a = auroc(a_in.score, a_ood.score)
    # Measured on this subset with the bundle's fit (2000 train images): see docs/results.md.
    # The default aggregation (p = inf, ReLU) reaches about 0.98 here; 0.97 leaves room for a
    # fresh, smaller fit.
    assert a >= (0.95 if fresh else 0.97), a
    # The best single layer (the log-variance head) is above 0.99 on the same images.
    best = max(auroc(a_in.extras["layer_raw"][:, j], a_ood.extras["layer_raw"][:, j])
               for j in range(a_in.extras["layer_raw"].shape[1]))
    assert best >= 0.98, best


@pytest.mark.skipif(not (BUNDLE / "metrics.parquet").exists(), reason="no committed results bundle")
def test_committed_bundle_shows_the_claim():
    m = pd.read_parquet(BUNDLE / "metrics.parquet")
    m = m[(m["perturbation"] == "none") & (m["repeat"] == 0) & (m["ood_set"] == "mnist")]
    nll = float(m.loc[m["method"] == "nll", "auroc"].iloc[0])
    assert nll < 0.5, nll
    rose = m[m["method"].str.startswith("rose-ekfac")]
    best = rose.loc[rose["auroc"].idxmax()]
    assert best["auroc"] >= ROSE_TARGET, (best["method"], best["auroc"])
    assert float(m.loc[m["method"] == "rose-ekfac", "auroc"].iloc[0]) >= DEFAULT_MIN
    # and the bundle's metrics are those of its scores
    s = pd.read_parquet(BUNDLE / "scores.parquet")
    s = s[(s["method"] == "nll") & (s["perturbation"] == "none")]
    assert auroc(s.loc[s["dataset"] == "fashion-mnist", "score"], s.loc[s["dataset"] == "mnist", "score"]) \
        == pytest.approx(nll)
    assert np.isfinite(m["auroc"]).all()


def test_optimised_layout_is_as_accurate_as_the_default():
    """The shipped VAE's per-sample gradients (the scored layers) on real images against a float64
    reference: ``load_model``'s optimised layout (decoder channels-last) stays within 2× the default
    layout's float32 error on every layer. (The whole model channels-last, measured 4-16× on four of
    the five layers, is why the encoder keeps the default layout; see ``VAE.optimise_layout``.)"""
    from rose_core.checkpoint import load_model
    from rose_core.pergrad import per_sample_grads

    model, _ = load_model("checkpoints/vae-fmnist")
    x = to_model_input(load_dataset("fashion-mnist", "test", n=64).images, channels=1)
    model64 = load_model("checkpoints/vae-fmnist")[0].double().to(memory_format=torch.contiguous_format)
    ref = {k: g.double() for k, g in per_sample_grads(model64, x.double())[1].items()}

    def worst_error(m):
        g = per_sample_grads(m, x)[1]
        return {k: float(((g[k].double() - ref[k]).flatten(1).norm(dim=1) / ref[k].flatten(1).norm(dim=1)).max())
                for k in ref}

    optimised = worst_error(model)
    default = worst_error(model.to(memory_format=torch.contiguous_format))
    for k in ref:
        assert optimised[k] <= 2 * default[k] + 1e-6, (k, optimised[k], default[k])
