"""Training: a few steps on real Fashion-MNIST, checkpoint every epoch, resume, background model."""

from __future__ import annotations

import pytest

from rose_core.checkpoint import load_model, read_card
from rose_core.training import TrainConfig, train

pytestmark = pytest.mark.slow


def _cfg(tmp_path, **kw):
    base = dict(kind="vae", out=str(tmp_path / "vae"), epochs=1, subset=128, eval_subset=32, iwae_k=2,
                device="cpu", progress=False)
    base.update(kw)
    return TrainConfig(**base)


def test_train_resume_and_card(tmp_path):
    card = train(_cfg(tmp_path, epochs=1))
    assert card["epochs"] == 1 and card["steps"] == 2 and card["test_bits_per_dim"] > 0
    card = train(_cfg(tmp_path, epochs=2))  # resumes from epoch 1
    assert card["epochs"] == 2 and card["steps"] == 4
    assert "optimizer_reset_at_epochs" not in card
    model, _ = load_model(tmp_path / "vae")
    assert model.kind == "vae"


def test_a_resumed_run_keeps_its_history_on_the_card(tmp_path):
    """An optimizer reset (weights without optimizer state) and a hand-written training note stay on the
    card through later resumed sessions that have optimizer state."""
    import json

    from rose_core.checkpoint import card_path

    train(_cfg(tmp_path, epochs=1))
    for f in tmp_path.glob("vae.train.*"):   # as when the weights come from another machine
        f.unlink()
    card = json.loads(card_path(tmp_path / "vae").read_text())
    card["training_note"] = "epoch 1 elsewhere"
    card_path(tmp_path / "vae").write_text(json.dumps(card))
    card = train(_cfg(tmp_path, epochs=2))
    assert card["optimizer_reset_at_epochs"] == [1] and card["training_note"] == "epoch 1 elsewhere"
    card = train(_cfg(tmp_path, epochs=3))   # resumes with the optimizer state epoch 2 saved
    assert card["epochs"] == 3
    assert card["optimizer_reset_at_epochs"] == [1] and card["training_note"] == "epoch 1 elsewhere"


def test_glow_trains_without_nans(tmp_path):
    card = train(_cfg(tmp_path, kind="glow", out=str(tmp_path / "glow"), subset=64, eval_subset=16))
    assert card["skipped_nonfinite_steps"] == 0
    assert card["test_bits_per_dim"] == pytest.approx(card["test_bits_per_dim"])  # finite, not NaN
    assert 0 < card["test_bits_per_dim"] < 100


def test_background_model_card(tmp_path):
    card = train(_cfg(tmp_path, out=str(tmp_path / "bg"), noise_fraction=0.3, l2=1e-4))
    assert card["role"] == "likelihood-ratio background"
    assert read_card(tmp_path / "bg")["noise_fraction"] == 0.3
    assert card["weight_decay"] == 1e-4


def test_weight_decay_is_the_presets_unless_given():
    from rose_core.training import TrainConfig, weight_decay

    assert weight_decay(TrainConfig(out="x", kind="glow", preset="cifar10")) == 5e-5
    assert weight_decay(TrainConfig(out="x", kind="glow", preset="fmnist")) == 0.0
    assert weight_decay(TrainConfig(out="x", kind="vae", preset="cifar10")) == 0.0
    assert weight_decay(TrainConfig(out="x", kind="glow", preset="cifar10", l2=0.0)) == 0.0


def test_cifar_preset_trains_on_synthetic_rgb(tmp_path, monkeypatch):
    import numpy as np

    from rose_core.data import registry

    rng = np.random.default_rng(0)
    registry.register(
        registry.DatasetCard(name="synthetic-rgb", title="synthetic", source="test", licence="-", real=False,
                             splits=("train", "test")),
        lambda split: (rng.integers(0, 256, (32, 32, 32, 3), dtype=np.uint8), None))
    monkeypatch.setenv("ROSE_DATA", str(tmp_path / "data"))
    for kind in ("vae", "glow"):
        card = train(_cfg(tmp_path, kind=kind, preset="cifar10", dataset="synthetic-rgb", out=str(tmp_path / kind),
                          subset=None, batch_size=16, eval_subset=4))
        assert card["config"]["channels"] == 3
        model, _ = load_model(tmp_path / kind)
        assert model.input_shape == (3, 32, 32)


def test_kept_epochs_and_the_held_out_choice(tmp_path):
    """--keep-epochs leaves every epoch's checkpoint; scripts/select_epoch.py writes the one with the lowest
    held-out bits/dim with every epoch's figure on its card, and drops a later epoch's optimizer state."""
    import json
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
    import select_epoch

    keep = tmp_path / "epochs"
    train(_cfg(tmp_path, epochs=2, keep_epochs=str(keep)))
    assert sorted(d.name for d in keep.iterdir()) == ["epoch-001", "epoch-002"]
    assert read_card(keep / "epoch-001" / "vae")["epochs"] == 1
    table = tmp_path / "epochs.json"
    assert select_epoch.main(["--epochs-dir", str(keep), "--out", str(tmp_path / "vae"), "--table", str(table),
                              "--iwae-k", "2", "--eval-subset", "32"]) == 0
    card = read_card(tmp_path / "vae")
    by_epoch = {r["epoch"]: r["test_bits_per_dim"] for r in card["held_out_by_epoch"]}
    assert set(by_epoch) == {1, 2}
    best = min(by_epoch, key=by_epoch.get)
    assert card["epochs"] == best and card["test_bits_per_dim"] == by_epoch[best]
    assert json.loads(table.read_text())["chosen_epoch"] == best
    assert (tmp_path / "vae.train.json").exists() == (best == 2)
    load_model(tmp_path / "vae")   # the weights match the card's hash
    # a second choice reuses the table's rows of unchanged epochs and measures a changed one again
    rows = json.loads(table.read_text())["epochs"]
    rows[0]["nll"] = -1.0   # a marker no measurement gives: epoch 1 now "wins" if its row is reused
    rows[1]["nll"], rows[1]["weights_sha256"] = -2.0, "0" * 64   # recorded for other weights than the kept ones
    table.write_text(json.dumps({"epochs": rows}))
    assert select_epoch.main(["--epochs-dir", str(keep), "--out", str(tmp_path / "vae"), "--table", str(table),
                              "--iwae-k", "2", "--eval-subset", "32"]) == 0
    again = {r["epoch"]: r for r in json.loads(table.read_text())["epochs"]}
    assert again[1]["nll"] == -1.0 and read_card(tmp_path / "vae")["epochs"] == 1
    assert again[2]["nll"] > 0   # measured again
    assert again[2]["weights_sha256"] == read_card(keep / "epoch-002" / "vae")["weights_sha256"]


def test_blurred_background_model_card_and_checks(tmp_path):
    from rose_core.errors import InvalidInput

    card = train(_cfg(tmp_path, out=str(tmp_path / "bg-svd"), perturbation="svd"))
    assert card["role"] == "likelihood-ratio background"
    assert card["perturbation"] == "svd" and card["perturbation_strength"] == 28
    with pytest.raises(InvalidInput, match="perturbation 'svd'"):   # resuming with another perturbation
        train(_cfg(tmp_path, out=str(tmp_path / "bg-svd"), perturbation="dct", epochs=2))
    with pytest.raises(InvalidInput, match="not both"):
        train(_cfg(tmp_path, out=str(tmp_path / "x"), perturbation="gaussian", noise_fraction=0.2))
    with pytest.raises(InvalidInput, match="--perturbation must be one of"):
        train(_cfg(tmp_path, out=str(tmp_path / "x"), perturbation="random"))
    with pytest.raises(InvalidInput, match="K of --perturbation"):
        train(_cfg(tmp_path, out=str(tmp_path / "x"), perturbation="gaussian", perturbation_strength=5))


def test_the_blurred_inputs_are_what_the_background_model_sees(tmp_path, monkeypatch):
    """Each training batch goes through rose_core.perturb.apply with the card's perturbation and K."""
    import rose_core.training as training

    seen = []
    real = training.apply_perturbation

    def spy(name, x, strength=None, seed=0):
        seen.append((name, strength, tuple(x.shape)))
        return real(name, x, strength, seed=seed)

    monkeypatch.setattr(training, "apply_perturbation", spy)
    train(_cfg(tmp_path, out=str(tmp_path / "bg-dct"), perturbation="dct", perturbation_strength=22))
    assert seen and all(s[:2] == ("dct", 22) for s in seen)
    assert read_card(tmp_path / "bg-dct")["perturbation_strength"] == 22
