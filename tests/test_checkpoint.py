"""Safetensors checkpoints: round-trip, clear errors on bad files, resumable training."""

from __future__ import annotations

import json

import pytest
import torch

from rose_core.checkpoint import (card_path, list_checkpoints, load_model, load_training_state, save_model,
                                  save_training_state, weights_path)
from rose_core.errors import CheckpointError
from rose_core.models import VAE, Glow, GlowConfig, VAEConfig


def test_roundtrip_vae(tmp_path, tiny_vae):
    save_model(tiny_vae, tmp_path / "m", dataset="fashion-mnist", epochs=3)
    model, card = load_model(tmp_path / "m")
    assert card["kind"] == "vae" and card["epochs"] == 3 and card["num_parameters"] > 0
    x = torch.rand(2, 1, 32, 32)
    assert torch.equal(model.per_sample_loss(x), tiny_vae.per_sample_loss(x))
    assert list_checkpoints(tmp_path) == [card_path(tmp_path / "m")]


def test_roundtrip_glow_keeps_actnorm_initialisation(tmp_path, tiny_glow):
    save_model(tiny_glow, tmp_path / "g")
    model, _ = load_model(tmp_path / "g.safetensors")
    model.train()  # a loaded model must not re-initialise ActNorm from the next batch
    x = torch.rand(2, 1, 8, 8)
    assert torch.allclose(model.per_sample_loss(x), tiny_glow.per_sample_loss(x))


@pytest.mark.parametrize("cfg", [VAEConfig(channels=3, base_width=8, latent_dim=6),
                                 GlowConfig(channels=3, image_size=8, K=2, L=3, hidden=8)])
def test_cifar_style_configs_roundtrip(tmp_path, cfg):
    model = VAE(cfg) if isinstance(cfg, VAEConfig) else Glow(cfg)
    save_model(model, tmp_path / "c")
    loaded, card = load_model(tmp_path / "c")
    assert card["config"]["channels"] == 3


def test_missing_files(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_model(tmp_path / "nothing")


def test_truncated_weights(tmp_path, tiny_vae):
    save_model(tiny_vae, tmp_path / "m")
    data = weights_path(tmp_path / "m").read_bytes()
    weights_path(tmp_path / "m").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupted or truncated"):
        load_model(tmp_path / "m")


def test_garbage_weights_and_card(tmp_path, tiny_vae):
    save_model(tiny_vae, tmp_path / "m")
    weights_path(tmp_path / "m").write_bytes(b"not a safetensors file at all")
    with pytest.raises(CheckpointError, match=str(weights_path(tmp_path / "m").name)):
        load_model(tmp_path / "m")
    card_path(tmp_path / "m").write_text("{ not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_model(tmp_path / "m")


def test_mismatched_config(tmp_path, tiny_vae):
    save_model(tiny_vae, tmp_path / "m")
    card = json.loads(card_path(tmp_path / "m").read_text())
    card["config"]["latent_dim"] = 7
    card_path(tmp_path / "m").write_text(json.dumps(card))
    with pytest.raises(CheckpointError, match="does not match"):
        load_model(tmp_path / "m")


def test_nonfinite_weights_rejected(tmp_path, tiny_vae):
    with torch.no_grad():
        tiny_vae.mu_head.weight[0, 0, 0, 0] = float("nan")
    save_model(tiny_vae, tmp_path / "m")
    with pytest.raises(CheckpointError, match="non-finite"):
        load_model(tmp_path / "m")


def test_training_state_roundtrip(tmp_path, tiny_vae):
    opt = torch.optim.Adam(tiny_vae.parameters(), lr=1e-3)
    tiny_vae.training_loss(torch.rand(4, 1, 32, 32)).mean().backward()
    opt.step()
    save_model(tiny_vae, tmp_path / "m")
    save_training_state(tmp_path / "m", opt, {}, {"epoch": 2, "step": 10, "train_seconds": 1.0})
    opt2 = torch.optim.Adam(tiny_vae.parameters(), lr=1e-3)
    info = load_training_state(tmp_path / "m", opt2)
    assert info["epoch"] == 2
    s1, s2 = opt.state_dict()["state"], opt2.state_dict()["state"]
    assert s1.keys() == s2.keys()
    for k in s1:
        assert torch.equal(s1[k]["exp_avg"], s2[k]["exp_avg"])
    # training-state files are not listed as models
    assert len(list_checkpoints(tmp_path)) == 1
