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
    table = at.dataframe[0].value
    assert list(table["checkpoint"]) == ["cls-basic-cnn-fmnist"]
    side = at.dataframe[1].value
    from rose_core.evaluation.detectors import DETECTORS, available

    expected = ["ROSE (DIAG)"] + ([f"{d} (pytorch-ood)" for d in DETECTORS] if available()[0] else [])
    assert list(side["method"]) == expected
    assert side["mean AUROC"].between(0, 1).all() and (side["images/s"] > 0).all()
    assert {"AUROC MNIST", "mean FPR95", "n in / n OOD"} <= set(side.columns)
    kmnist = [c for c in side.columns if "KMNIST" in c]  # not scored in this fixture: a column of gaps
    assert len(kmnist) == 1 and side[kmnist[0]].isna().all() and side["AUROC MNIST"].notna().all()
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
    det = next(d.value for d in at.dataframe if "mean FPR95" in d.value.columns)
    assert set(det["model"]) == {"Basic CNN", "VAE `vae-fmnist`"}
    vae = det[det["model"] == "VAE `vae-fmnist`"].set_index("method")
    assert {"ROSE-EKFAC", "NLL"} <= set(vae.index)
    assert vae.loc["ROSE-EKFAC", "mean AUROC"] > vae.loc["NLL", "mean AUROC"]  # the shipped VAE's story
    assert (det["images/s"] > 0).all()
