"""The Classifiers page (Figure 6) under AppTest: one panel per network with a bundle, one line per OOD set, and
the compute offer for a classifier without results."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from streamlit.testing.v1 import AppTest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture()
def cls_env(tmp_path, monkeypatch):
    from rose_core.evaluation.presets import run_preset
    from rose_core.models.classifiers import build_classifier, save_classifier

    torch.set_num_threads(1)
    torch.manual_seed(0)
    ckpts = tmp_path / "checkpoints"
    save_classifier(build_classifier("basic-cnn"), ckpts / "cls-basic-cnn-fmnist", "basic-cnn", test_accuracy=0.5,
                    budget="none: untrained (test)")
    save_classifier(build_classifier("basic-cnn"), ckpts / "cls-other", "basic-cnn", test_accuracy=0.4)
    run_preset("figure6", ckpts / "cls-basic-cnn-fmnist", tmp_path / "results", n_fisher=100, n_calibration=4,
               n_in=4, n_ood=4, ood_sets=["mnist", "letters-fonts"])
    monkeypatch.setenv("ROSE_CHECKPOINTS", str(ckpts))
    monkeypatch.setenv("ROSE_RESULTS", str(tmp_path / "results"))
    return tmp_path


def test_figure6_panels_and_the_compute_offer(cls_env):
    at = AppTest.from_file(str(REPO / "app.py"), default_timeout=120)
    at.run()
    at.switch_page("pages/8_classifiers.py")
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    spec = json.loads(at.get("plotly_chart")[0].proto.spec)
    lines = [t for t in spec["data"] if t["type"] == "scatter"]
    assert len(lines) == 2 and {t["name"] for t in lines} == {"MNIST", "Letters A–J from fonts (NotMNIST stand-in)"}
    assert all(list(t["customdata"]) == ["features.0", "features.3", "features.6", "features.8", "fc"] for t in lines)
    assert "Basic CNN (test accuracy 50.0%)" in json.dumps(spec["layout"]["annotations"])
    table = at.dataframe[0].value  # one row per network, short columns
    assert list(table["network"]) == ["Basic CNN"] and list(table["test accuracy"]) == ["50.0%"]
    assert any("`cls-basic-cnn-fmnist`: 100 Fisher, 4 calibration" in c.value for c in at.caption)
    side = at.dataframe[1].value  # the network's block of the detector table
    from rose_core.evaluation.detectors import DETECTORS, available

    expected = ["ROSE (DIAG)"] + (list(DETECTORS) if available()[0] else [])
    assert list(side["method"]) == expected
    assert list(side.columns) == ["method", "MNIST", "kana-fonts", "letters-fonts", "mean", "FPR95", "img/s"]
    assert side["mean"].astype(float).between(0, 1).all() and (side["img/s"] != "—").all()
    assert (side["kana-fonts"] == "—").all() and (side["MNIST"] != "—").all()  # KMNIST not scored in this fixture
    assert any("`cls-other` has no Figure 6 results yet" in i.value for i in at.info)
    assert any(b.key == "compute_figure6" for b in at.button)


def test_methods_page_shows_the_shipped_vae_beside_the_classifier_detectors(cls_env):
    """The Methods page of a Fashion-MNIST model: its own rows beside the classifiers' (one table for both,
    ``rose_core.reporting.classifiers.detector_comparison``)."""
    for suffix in (".json", ".safetensors"):
        (cls_env / "checkpoints" / f"vae-fmnist{suffix}").symlink_to(REPO / "checkpoints" / f"vae-fmnist{suffix}")
    (cls_env / "results" / "vae-fmnist").symlink_to(REPO / "results" / "vae-fmnist")
    at = AppTest.from_file(str(REPO / "app.py"), default_timeout=120)
    at.run()
    at.switch_page("pages/6_methods.py")
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    blocks = [d.value for d in at.dataframe if "FPR95" in d.value.columns]
    heads = [m.value for m in at.markdown if m.value.startswith("**") and "images (in / per OOD set)" in m.value]
    assert len(blocks) == 2 and heads[0].startswith("**Basic CNN**") and heads[1].startswith("**VAE `vae-fmnist`**")
    cnn, vae = blocks[0].set_index("method"), blocks[1].set_index("method")
    assert list(cnn.columns) == ["MNIST", "kana-fonts", "letters-fonts", "mean", "FPR95", "img/s"]  # narrow
    assert "ROSE (DIAG)" in cnn.index and {"ROSE-EKFAC", "NLL"} <= set(vae.index)
    assert float(vae.loc["ROSE-EKFAC", "mean"]) > float(vae.loc["NLL", "mean"])  # the shipped VAE's story
    assert (vae["img/s"] != "—").all()
