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
    saved = tiny_vae.state_dict()
    assert all(torch.equal(v, saved[k]) for k, v in model.state_dict().items())   # the weights round-trip exactly
    # loading applies the model's optimised layout (the VAE's decoder channels-last on the CPU):
    # the same computation in the same layout gives bit-identical losses
    assert model.decoder[-1].weight.is_contiguous(memory_format=torch.channels_last)
    same_format = tiny_vae.optimise_layout(torch.device("cpu"))
    x = torch.rand(2, 1, 32, 32)
    assert torch.equal(model.per_sample_loss(x), same_format.per_sample_loss(x))
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


# --------------------------------------------------------------------------- integrity (SHA-256 in the card)

import hashlib  # noqa: E402
import os  # noqa: E402
import struct  # noqa: E402
from pathlib import Path  # noqa: E402

from rose_core.checkpoint import (load_tensors, read_card, record_weights_hash, save_tensors,  # noqa: E402
                                  sha256_file)

SHIPPED = Path(__file__).resolve().parents[1] / "checkpoints"


def _flip_inside_tensor(path: Path, offset_in_data: int = 100) -> None:
    """Invert one byte inside the tensor data (past the JSON header), leaving the format valid."""
    raw = bytearray(path.read_bytes())
    header_len = struct.unpack("<Q", raw[:8])[0]
    pos = 8 + header_len + offset_in_data
    assert pos < len(raw)
    raw[pos] ^= 0x01  # a low mantissa bit: the value stays finite, the shape stays valid
    path.write_bytes(bytes(raw))


def test_card_records_the_weights_sha256(tmp_path, tiny_vae):
    save_model(tiny_vae, tmp_path / "m")
    card = read_card(tmp_path / "m")
    assert card["weights_sha256"] == hashlib.sha256(weights_path(tmp_path / "m").read_bytes()).hexdigest()


def test_flipped_bytes_inside_a_tensor_are_rejected_naming_the_file(tmp_path, tiny_vae):
    save_model(tiny_vae, tmp_path / "model")
    wp = weights_path(tmp_path / "model")
    _flip_inside_tensor(wp)
    load_tensors(wp)  # safetensors alone cannot notice: the file is still well-formed
    with pytest.raises(CheckpointError) as info:
        load_model(tmp_path / "model")
    assert str(wp) in str(info.value) and "SHA-256" in str(info.value)


def test_old_cards_without_a_hash_still_load(tmp_path, tiny_vae):
    save_model(tiny_vae, tmp_path / "m")
    card = json.loads(card_path(tmp_path / "m").read_text())
    del card["weights_sha256"]
    card_path(tmp_path / "m").write_text(json.dumps(card))
    model, card = load_model(tmp_path / "m")
    assert "weights_sha256" not in card
    digest = record_weights_hash(tmp_path / "m")  # sealing an old card adds the field
    assert read_card(tmp_path / "m")["weights_sha256"] == digest == sha256_file(weights_path(tmp_path / "m"))
    load_model(tmp_path / "m")


def test_save_tensors_returns_the_digest_and_load_tensors_checks_it(tmp_path):
    path = tmp_path / "t.safetensors"
    digest = save_tensors({"a": torch.arange(6.0)}, path)
    assert digest == sha256_file(path)
    assert torch.equal(load_tensors(path, sha256=digest)["a"], torch.arange(6.0))
    assert torch.equal(load_tensors(path, sha256=digest.upper())["a"], torch.arange(6.0))
    with pytest.raises(CheckpointError, match=f"{path}.*SHA-256"):
        load_tensors(path, sha256="0" * 64)
    assert not list(tmp_path.glob("*.tmp"))  # the temporary file was renamed into place


@pytest.mark.parametrize("umask", [0o022, 0o027, 0o077])
def test_weights_and_card_get_the_same_ordinary_mode(tmp_path, tiny_vae, umask):
    old = os.umask(umask)
    try:
        save_model(tiny_vae, tmp_path / "m")
    finally:
        os.umask(old)
    expected = 0o666 & ~umask
    assert weights_path(tmp_path / "m").stat().st_mode & 0o777 == expected
    assert card_path(tmp_path / "m").stat().st_mode & 0o777 == expected


def test_training_state_is_verified_too(tmp_path, tiny_vae):
    opt = torch.optim.Adam(tiny_vae.parameters(), lr=1e-3)
    tiny_vae.training_loss(torch.rand(4, 1, 32, 32)).mean().backward()
    opt.step()
    save_training_state(tmp_path / "m", opt, {}, {"epoch": 1})
    state = weights_path(tmp_path / "m.train")
    assert json.loads(card_path(tmp_path / "m.train").read_text())["weights_sha256"] == sha256_file(state)
    _flip_inside_tensor(state)
    with pytest.raises(CheckpointError, match="m.train.safetensors"):
        load_training_state(tmp_path / "m", torch.optim.Adam(tiny_vae.parameters()))


@pytest.mark.parametrize("card", sorted(SHIPPED.glob("*.json")), ids=lambda p: p.name)
def test_shipped_checkpoints_carry_their_hash(card):
    recorded = json.loads(card.read_text()).get("weights_sha256")
    assert recorded is not None, f"{card} has no weights_sha256: run rose_core.checkpoint.record_weights_hash"
    assert recorded == sha256_file(weights_path(card))


# --------------------------------------------------------------------------- ROSE fits get the same treatment


# a 16-image fit of a tiny VAE is rank-deficient by design (only the files matter here)
_TINY_FIT = pytest.mark.filterwarnings("ignore:Layer .* numerical rank")


def _rose_fit(tmp_path, tiny_vae):
    from rose_core.scorers.rose import RoseScorer

    torch.manual_seed(0)
    scorer = RoseScorer(tiny_vae, fisher="diag", batch_size=8).fit(torch.rand(16, 1, 32, 32))
    return RoseScorer, scorer.save(tmp_path / "fit")


@_TINY_FIT
def test_rose_fit_card_records_and_checks_the_hash(tmp_path, tiny_vae):
    RoseScorer, cp = _rose_fit(tmp_path, tiny_vae)
    wp = weights_path(cp)
    assert json.loads(cp.read_text())["weights_sha256"] == sha256_file(wp)
    assert wp.stat().st_mode & 0o777 == cp.stat().st_mode & 0o777  # both ordinary files (0644 here)
    RoseScorer.load(cp, tiny_vae)
    _flip_inside_tensor(wp, offset_in_data=4)
    with pytest.raises(CheckpointError) as info:
        RoseScorer.load(cp, tiny_vae)
    assert str(wp) in str(info.value) and "SHA-256" in str(info.value)


@_TINY_FIT
def test_rose_fit_card_without_hash_still_loads(tmp_path, tiny_vae):
    RoseScorer, cp = _rose_fit(tmp_path, tiny_vae)
    card = json.loads(cp.read_text())
    del card["weights_sha256"]
    cp.write_text(json.dumps(card))
    assert RoseScorer.load(cp, tiny_vae).fitted
