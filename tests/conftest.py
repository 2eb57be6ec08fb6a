"""Shared fixtures: tiny models and a checkpoint folder."""

from __future__ import annotations

import pytest
import torch

from rose_core.models import Glow, GlowConfig, VAE, VAEConfig

TINY_VAE = VAEConfig(channels=1, base_width=4, latent_dim=3)
TINY_GLOW = GlowConfig(channels=1, image_size=8, K=2, L=2, hidden=8)


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(2)


@pytest.fixture
def tiny_vae() -> VAE:
    torch.manual_seed(0)
    return VAE(TINY_VAE).eval()


@pytest.fixture
def tiny_glow() -> Glow:
    torch.manual_seed(0)
    m = Glow(TINY_GLOW)
    m.train()
    m.per_sample_loss(torch.rand(8, 1, 8, 8))  # data-dependent ActNorm initialisation
    return m.eval()
