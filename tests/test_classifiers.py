"""The Figure 6 classifiers: architectures for 1×32×32, checkpoints, budgeted training, and the figure6 preset."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from rose_core.errors import CheckpointError, InvalidInput
from rose_core.models import ClassifierModel
from rose_core.models.classifiers import (ARCHITECTURES, INPUT_SHAPE, build_classifier, layer_depths,
                                          load_classifier, save_classifier)


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


@pytest.mark.parametrize("arch,n_layers", [("basic-cnn", 5), ("vgg11", 9), ("resnet18", 21)])
def test_architectures_take_one_channel_32x32_and_end_in_one_linear_layer(arch, n_layers):
    net = build_classifier(arch).eval()
    assert net(torch.rand(2, *INPUT_SHAPE)).shape == (2, 10)
    depths = layer_depths(net)
    assert len(depths) == n_layers and sorted(depths.values()) == list(range(1, n_layers + 1))
    linear = [n for n, m in net.named_modules() if isinstance(m, torch.nn.Linear)]
    assert len(linear) == 1 and depths[linear[0]] == n_layers   # the paper: one fully-connected layer, last
    model = ClassifierModel(net, input_shape=INPUT_SHAPE)        # checks per-sample gradients of every layer
    assert sorted(model.scored_layers()) == sorted(depths)


def test_checkpoint_round_trip_and_corruption(tmp_path):
    net = build_classifier("basic-cnn")
    save_classifier(net, tmp_path / "c", "basic-cnn", test_accuracy=0.5)
    loaded, card = load_classifier(tmp_path / "c")
    assert card["kind"] == "classifier" and card["test_accuracy"] == 0.5 and not loaded.training
    for k, v in net.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k])
    data = bytearray((tmp_path / "c.safetensors").read_bytes())
    data[-1] ^= 1
    (tmp_path / "c.safetensors").write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="SHA-256"):
        load_classifier(tmp_path / "c")
    with pytest.raises(InvalidInput, match="Unknown classifier"):
        build_classifier("alexnet")


def test_budgeted_training_resumes_and_figure6_writes_the_bundle(tmp_path):
    from rose_core.classifier_training import ClassifierTrainConfig, train_classifier
    from rose_core.evaluation.presets import run_preset
    from rose_core.results import Results

    cfg = ClassifierTrainConfig("basic-cnn", str(tmp_path / "cls-cnn"), epochs=1, subset=128, test_images=64,
                                progress=False)
    card = train_classifier(cfg)
    assert card["epochs"] == 1 and card["train_images"] == 128 and 0 <= card["test_accuracy"] <= 1
    assert "1 epoch(s) over 128 training images" in card["budget"] and card["torch_threads"] == 1
    cfg.epochs = 2
    assert train_classifier(cfg)["epochs"] == 2           # resumed: one more epoch
    with pytest.raises(InvalidInput, match="no-resume"):
        train_classifier(ClassifierTrainConfig("basic-cnn", str(tmp_path / "cls-cnn"), epochs=3, subset=64,
                                               progress=False))

    lm = run_preset("figure6", tmp_path / "cls-cnn", tmp_path / "results", n_fisher=100, n_calibration=8, n_in=8,
                    n_ood=8, ood_sets=["mnist", "letters-fonts"])
    assert set(lm["ood_set"]) == {"mnist", "letters-fonts"} and len(lm) == 2 * 5
    assert lm["auroc"].between(0, 1).all() and set(lm["fisher"]) == {"diag"}
    bundle = Results.for_checkpoint("cls-cnn", tmp_path / "results")
    manifest = json.loads((bundle.folder / "manifest.json").read_text())
    assert manifest["figure6"]["layer_depths"] == {"features.0": 1, "features.3": 2, "features.6": 3,
                                                   "features.8": 4, "fc": 5}
    assert manifest["checkpoint"]["card"]["epochs"] == 2
    metrics = bundle.table("metrics")
    assert set(metrics["ood_set"]) == {"mnist", "letters-fonts", "overall"}
    from rose_core.evaluation.detectors import DETECTORS, available

    expected_methods = {"rose-diag", *DETECTORS} if available()[0] else {"rose-diag"}
    assert set(metrics["method"]) == expected_methods and metrics["auroc"].between(0, 1).all()
    assert set(bundle.table("throughput")["method"]) == expected_methods
    assert (bundle.table("throughput")["n_images"] == 8 + 2 * 8).all()
    assert manifest["figure6"]["detectors"].startswith("pytorch-ood" if available()[0] else "not run")
    # the per-layer AUROC is the AUROC of the stored raw layer scores
    from rose_core.metrics import auroc

    layers = bundle.table("layers")
    one = layers[layers["layer"] == "fc"]
    expected = auroc(one.loc[~one["is_ood"], "raw"].to_numpy(),
                     one.loc[one["dataset"] == "mnist", "raw"].to_numpy())
    got = lm[(lm["layer"] == "fc") & (lm["ood_set"] == "mnist")]["auroc"].item()
    assert got == pytest.approx(expected)
