"""The one default ROSE definition (rose_core.defaults): the Fisher-size rule and the fit it builds."""

import math

import numpy as np
import pytest
import torch

from rose_core.data import is_available, to_model_input
from rose_core.data.splits import calibration_images
from rose_core.defaults import (FISHER_STEP, MIN_FISHER_IMAGES, SAMPLES_PER_DIMENSION, default_rose,
                                fisher_images_rule, fit_default_rose, fit_work)
from rose_core.models import VAE, Glow, GlowConfig, VAEConfig


def _vae(width: int) -> VAE:
    torch.manual_seed(0)
    return VAE(VAEConfig(base_width=width, latent_dim=3)).eval()


def test_rule_scales_with_the_largest_factor():
    # heads read 4·width channels × 4×4 kernel at one position: D = 64·width
    for width, expected_d in [(2, 128), (32, 2048), (64, 4096)]:
        need = SAMPLES_PER_DIMENSION * expected_d
        want = -(-max(MIN_FISHER_IMAGES, need) // FISHER_STEP) * FISHER_STEP
        assert fisher_images_rule(_vae(width)) == want
    assert fisher_images_rule(_vae(32)) == 10_000            # the shipped FMNIST VAE
    assert fisher_images_rule(_vae(64), n_train=12_000) == 12_000   # capped at the training split


def test_fisher_per_model_kind():
    assert default_rose(_vae(2)).fisher == "ekfac"
    glow = Glow(GlowConfig(channels=1, K=2, L=2, hidden=8)).eval()
    spec = default_rose(glow)
    assert spec.fisher == "diag" and spec.n_fisher == MIN_FISHER_IMAGES and spec.p == math.inf
    assert "Fisher on 5,000 training images" in spec.describe()


@pytest.mark.skipif(not is_available("fashion-mnist", "train"), reason="Fashion-MNIST not built (make data)")
def test_fit_default_calibrates_on_the_held_out_half():
    vae = _vae(2)
    done = []
    s = fit_default_rose(vae, "fashion-mnist", n_fisher=200, n_calibration=40, batch_size=64,
                         progress=done.append)
    assert (s.n_fisher, s.n_norm, s.calibrated) == (200, 40, True)
    assert sum(done) == fit_work(vae, "fashion-mnist", n_fisher=200, n_calibration=40) == 200 * 2 + 40
    cal = calibration_images("fashion-mnist", 40).images
    x = to_model_input(cal, channels=1)
    np.testing.assert_allclose(s.calibration_loss, s.score(x).extras["loss"], rtol=1e-5)
    with pytest.raises(TypeError, match="Unknown ROSE setting"):
        fit_default_rose(vae, "fashion-mnist", n_fit=3)
