"""The Streamlit app, page by page, with streamlit.testing.v1.AppTest.

Each test points the app at a temporary checkpoints folder (a tiny VAE) and a
temporary results root holding a small synthetic bundle in the schema of
rose_core.results (``ROSE_CHECKPOINTS``, ``ROSE_RESULTS``), so the pages are
tested without the real bundle; the bundle's ROSE fit is a real fit of the
tiny model, so uploaded images get real scores.
"""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from streamlit.testing.v1 import AppTest

from rose_core.checkpoint import save_model
from rose_core.data import load_dataset, to_model_input
from rose_core.live import LiveScorer
from rose_core.metrics import auroc, ood_metrics
from rose_core.models import VAE, VAEConfig
from rose_core.results import Results
from rose_core.defaults import fit_default_rose
from studio import glossary

REPO = Path(__file__).resolve().parents[1]
MODEL = "tiny-vae"
LAYERS = ["encoder.0", "encoder.2", "encoder.5", "mu_head", "logvar_head"]
IN_SET = "fashion-mnist"
OOD_SETS = ["mnist", "noise", "letters-fonts"]
# mean shift of the OOD scores (in-distribution ~ N(0, 1)); NLL fails on MNIST as in the paper
SHIFTS = {"rose-ekfac": {"mnist": 3.0, "noise": 6.0, "letters-fonts": 2.5},
          "rose-diag": {"mnist": 2.0, "noise": 5.0, "letters-fonts": 1.5},
          "nll": {"mnist": -1.8, "noise": 8.0, "letters-fonts": 0.4},
          "likelihood-ratio": {"mnist": 1.0, "noise": -0.5, "letters-fonts": 1.2},
          "input-complexity-png": {"mnist": 1.5, "noise": -3.0, "letters-fonts": 1.0},
          "rnd": {"mnist": 0.8, "noise": 2.0, "letters-fonts": 0.3},
          "rnd:path=checkpoints/rnd-fmnist-dct": {"mnist": 0.2, "noise": 3.0, "letters-fonts": 0.9}}
LIVE_SIZES = {"n_fisher": 12, "n_calibration": 16}
BRIGHTNESS = [0.2, 0.4, 0.6, 0.8, 1.0, 1.2, 1.4, 1.6, 1.8]


# --------------------------------------------------------------------------------------------
# A small synthetic bundle in the harness's schema (test data only; never shipped)
# --------------------------------------------------------------------------------------------

def _metrics_row(method, ood_set, pert, strength, a, o, repeat=0):
    m = ood_metrics(a, o)
    return {"method": method, "ood_set": ood_set, "perturbation": pert, "strength": strength, "repeat": repeat, **m}


def build_synthetic_bundle(root: Path, name: str, rose_in_scores: np.ndarray | None = None, n: int = 120,
                           seed: int = 0) -> Results:
    rng = np.random.default_rng(seed)
    res = Results.for_checkpoint(name, root)
    rows, metrics = [], []

    def add(dataset, is_ood, method, values, pert="none", strength=np.nan, nll=None):
        rows.append(pd.DataFrame({"dataset": dataset, "is_ood": is_ood, "index": np.arange(len(values)),
                                  "method": method, "perturbation": pert, "strength": strength, "repeat": 0,
                                  "score": values, "nll_nats": nll if nll is not None else np.nan}))

    def nll_of(v):
        return 2300.0 + 60.0 * v

    in_scores = {}
    for method, shifts in SHIFTS.items():
        a = rng.normal(0, 1, n)
        if method == "rose-ekfac" and rose_in_scores is not None:
            a = np.asarray(rose_in_scores, dtype=np.float64)
        in_scores[method] = a
        add(IN_SET, False, method, nll_of(a) if method == "nll" else a, nll=nll_of(a) if method == "nll" else None)
        pooled = []
        for ood_set, shift in shifts.items():
            o = rng.normal(shift, 1, n) + (a.mean() if method == "rose-ekfac" else 0)
            pooled.append(o)
            add(ood_set, True, method, nll_of(o) if method == "nll" else o, nll=nll_of(o) if method == "nll" else None)
            metrics.append(_metrics_row(method, ood_set, "none", np.nan, a, o))
        metrics.append(_metrics_row(method, "overall", "none", np.nan, a, np.concatenate(pooled)))
        # brightness sweep of MNIST (ROSE stays high, the others swing) and an SVD sweep
        for s in BRIGHTNESS:
            swing = 0.5 if method.startswith("rose") else 2.5
            o = rng.normal(shifts["mnist"] + swing * (s - 1.0) * (1 if method != "likelihood-ratio" else -1), 1, 60)
            add("mnist", True, method, o, "brightness", s)
            metrics.append(_metrics_row(method, "mnist", "brightness", s, a, o))
        for k in (22, 28):
            for rep in range(2):
                o = rng.normal(shifts["mnist"] * (0.5 + k / 56), 1, 60)
                metrics.append(_metrics_row(method, "mnist", "svd", float(k), a, o, repeat=rep))
    scores = pd.concat(rows, ignore_index=True)
    scores["score"] = scores["score"].astype(float)
    res.write("scores", scores)
    res.write("metrics", pd.DataFrame(metrics))

    layer_rows, layer_metrics = [], []
    for fisher, strength in (("ekfac", 1.0), ("diag", 0.6)):
        for j, layer in enumerate(LAYERS):
            a = rng.lognormal(0, 0.5, n)
            layer_rows.append(pd.DataFrame({"dataset": IN_SET, "is_ood": False, "index": np.arange(n),
                                            "fisher": fisher, "layer": layer, "raw": a, "z": (a - a.mean()) / a.std()}))
            for k, ood_set in enumerate(OOD_SETS):
                o = rng.lognormal(strength * ((j + k) % 4) * 0.6 - 0.3, 0.5, n)
                layer_rows.append(pd.DataFrame({"dataset": ood_set, "is_ood": True, "index": np.arange(n),
                                                "fisher": fisher, "layer": layer, "raw": o,
                                                "z": (o - a.mean()) / a.std()}))
                layer_metrics.append({"fisher": fisher, "layer": layer, "ood_set": ood_set, "auroc": auroc(a, o)})
    res.write("layers", pd.concat(layer_rows, ignore_index=True))
    res.write("layer_metrics", pd.DataFrame(layer_metrics))
    res.write("throughput", pd.DataFrame({"method": list(SHIFTS), "images_per_s": 100.0 + 50 * np.arange(len(SHIFTS)),
                                          "n_images": 500, "batch_size": 64, "device": "cpu"}))
    fs = [{"fisher": f, "n_fit": nf, "repeat": r, "ood_set": "overall",
           "auroc": float(np.clip(0.97 - 0.3 / math.sqrt(nf) + rng.normal(0, 0.01), 0, 1))}
          for f in ("ekfac", "diag") for nf in (10, 100, 1000) for r in range(4)]
    res.write("fisher_samples", pd.DataFrame(fs))
    stress = [{"method": m, "dataset": d, "group": g, "n_images": 50, "auroc": a, "flagged": f, "threshold": 1.0,
               "threshold_rule": "threshold_at_tpr on the calibration half", "n_calibration": n, "tpr": 0.95}
              for m in ("rose-ekfac", "nll") for d, g, a, f in
              ((IN_SET, "in-distribution", np.nan, 0.05), ("stress-black", "ood", 0.99 if m != "nll" else 0.4, 0.9),
               ("stress-fmnist-shift1", "benign", 0.55, 0.07), ("stress-fmnist-jpeg75", "covariate", 0.8, 0.66))]
    res.write("stress", pd.DataFrame(stress))
    res.write_manifest({"checkpoint": {"name": name},
                        "in_distribution": {"name": IN_SET, "split": "test", "n": n, "seed": seed},
                        "ood_sets": OOD_SETS, "experiments": ["table2", "table1", "figure5", "layers"],
                        "synthetic": "test data written by tests/test_app.py"})
    return res


# --------------------------------------------------------------------------------------------
# Fixtures
# --------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """Tiny VAE checkpoint, its real ROSE fit and a synthetic bundle around it."""
    tmp = tmp_path_factory.mktemp("app")
    torch.manual_seed(0)
    model = VAE(VAEConfig(channels=1, base_width=4, latent_dim=3)).eval()
    save_model(model, tmp / "checkpoints" / MODEL, dataset=IN_SET, epochs=3, test_bits_per_dim=4.5)
    save_model(model, tmp / "checkpoints" / "tiny-vae-nobundle", dataset=IN_SET, epochs=1)  # no results bundle
    # a helper (a Likelihood Ratio background model): its card says it was trained on noisy images
    save_model(model, tmp / "checkpoints" / "tiny-vae-background", dataset=IN_SET, epochs=1, noise_fraction=0.3)
    (tmp / "checkpoints" / "not-a-model.json").write_text('{"scorer": "rnd"}')  # e.g. an RND card: not listed
    # the default definition (rose_core.defaults) with small sizes, as the app is told by LIVE_SIZES
    scorer = fit_default_rose(model, IN_SET, n_fisher=LIVE_SIZES["n_fisher"],
                              n_calibration=LIVE_SIZES["n_calibration"])
    test_x = to_model_input(load_dataset(IN_SET, "test", n=40, seed=6).images, channels=1)
    in_scores = scorer.score(test_x).score
    res = build_synthetic_bundle(tmp / "results", MODEL, rose_in_scores=in_scores, n=40)
    scorer.save(res.folder / "fits" / "rose-ekfac")
    return {"root": tmp, "checkpoints": tmp / "checkpoints", "results": tmp / "results"}


@pytest.fixture
def app_env(env, monkeypatch):
    monkeypatch.setenv("ROSE_CHECKPOINTS", str(env["checkpoints"]))
    monkeypatch.setenv("ROSE_RESULTS", str(env["results"]))
    monkeypatch.setenv("ROSE_LIVE_N_FISHER", str(LIVE_SIZES["n_fisher"]))
    monkeypatch.setenv("ROSE_LIVE_N_CALIBRATION", str(LIVE_SIZES["n_calibration"]))
    monkeypatch.setenv("ROSE_LIVE_N", "8")
    return env


def open_page(page: str | None = None) -> AppTest:
    at = AppTest.from_file(str(REPO / "app.py"), default_timeout=120)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    if page:
        at.switch_page(page)
        at.run()
        assert not at.exception, [e.value for e in at.exception]
    return at


def charts(at: AppTest) -> list[dict]:
    return [json.loads(el.proto.spec) for el in at.get("plotly_chart")]


def chart(at: AppTest, title: str) -> dict:
    found = [c for c in charts(at) if title in str(c.get("layout", {}).get("title", {}).get("text", ""))]
    assert found, f"no chart titled {title!r}; titles: {[c['layout'].get('title') for c in charts(at)]}"
    return found[0]


def arr(v) -> np.ndarray:
    """Plotly's JSON of an array: a list, or a typed array {"dtype", "bdata" (base64)}."""
    if isinstance(v, dict) and "bdata" in v:
        import base64

        a = np.frombuffer(base64.b64decode(v["bdata"]), dtype=np.dtype(v["dtype"]))
        if "shape" in v:
            shape = v["shape"]
            a = a.reshape([int(x) for x in (shape.split(",") if isinstance(shape, str) else shape)])
        return a
    return np.asarray(v)


def texts(at: AppTest, kind: str) -> list[str]:
    return [e.value for e in getattr(at, kind)]


def png(array: np.ndarray, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format=fmt, **kw)
    return buf.getvalue()


# --------------------------------------------------------------------------------------------
# Home
# --------------------------------------------------------------------------------------------

def test_home_shows_card_datasets_and_key_figure(app_env):
    at = open_page()
    assert at.sidebar.selectbox(key="model_picker").value == MODEL
    assert [m.value for m in at.metric][:3] == ["Fashion-MNIST", "VAE", "3"]
    nll = chart(at, "NLL (AUROC")
    rose = chart(at, "ROSE (EKFAC) (AUROC")
    assert len(nll["data"]) == 2 and nll["layout"]["xaxis"]["title"]["text"].startswith("NLL (nats)")
    assert "MNIST" in nll["data"][1]["name"]
    assert float(nll["layout"]["title"]["text"].split("AUROC ")[1].rstrip(")")) < 0.5  # NLL fails on MNIST
    assert float(rose["layout"]["title"]["text"].split("AUROC ")[1].rstrip(")")) > 0.9
    # the caption is about this model: its own bundle numbers, in words that match them
    res = Results.for_checkpoint(MODEL, app_env["results"])
    view = res.metrics_view("mnist", ["nll", "rose-ekfac"]).set_index("method")
    caption = [c for c in texts(at, "caption") if "from its results bundle" in c]
    assert len(caption) == 1
    assert f"NLL AUROC {view.loc['nll', 'auroc']:.3f}) ranks the OOD images as *more* in-distribution" in caption[0]
    assert f"ROSE (EKFAC) (AUROC {view.loc['rose-ekfac', 'auroc']:.3f}) separates them well" in caption[0]
    assert not any("weak model" in t for t in texts(at, "warning"))
    datasets = at.table[0].value  # a static table: the long "how to get it" texts wrap
    assert {"fashion-mnist", "mnist"} <= set(datasets.index)
    assert datasets.loc["fashion-mnist", "available here"] == "yes"
    assert datasets.loc["mnist", "how to get it"]


def test_home_labels_a_weak_model_with_its_epochs_and_numbers(app_env, tmp_path, monkeypatch):
    """A model whose ROSE AUROC on MNIST is low gets no claim that ROSE separates the sets: the caption says
    how weakly it does, and a warning names its epochs and the method that does better in its bundle."""
    import shutil

    shutil.copytree(app_env["results"], tmp_path / "results")
    res = Results.for_checkpoint(MODEL, tmp_path / "results")
    m = res.table("metrics").copy()
    rows = (m["ood_set"] == "mnist") & (m["perturbation"] == "none")
    m.loc[rows & (m["method"] == "rose-ekfac"), "auroc"] = 0.66
    m.loc[rows & (m["method"] == "rose-diag"), "auroc"] = 0.6
    m.loc[rows & (m["method"] == "input-complexity-png"), "auroc"] = 0.9
    res.write("metrics", m)
    monkeypatch.setenv("ROSE_RESULTS", str(tmp_path / "results"))
    at = open_page()
    caption = [c for c in texts(at, "caption") if "from its results bundle" in c][0]
    assert "ROSE (EKFAC) (AUROC 0.660) barely separates them" in caption and "separates them well" not in caption
    warning = [t for t in texts(at, "warning") if "weak model" in t]
    assert len(warning) == 1 and "trained 3 epoch(s)" in warning[0] and "AUROC on MNIST is 0.660" in warning[0]
    assert "Input Complexity" in warning[0] and "(AUROC 0.900)" in warning[0]


def test_model_choice_applies_to_every_page(app_env):
    at = open_page()
    picker = at.sidebar.selectbox(key="model_picker")
    # the model with a bundle first; cards that are not generative models, and helper models, are left out
    assert picker.options == [f"{MODEL} (VAE, fashion-mnist)", "tiny-vae-nobundle (VAE, fashion-mnist)"]
    note = [c.value for c in at.sidebar.caption if "Not listed" in c.value]
    assert len(note) == 1 and "`tiny-vae-background`: trained with 30% of its pixels replaced by noise" in note[0]
    picker.set_value("tiny-vae-nobundle").run()
    assert any("Model: tiny-vae-nobundle" in m.value for m in at.subheader)
    info = " ".join(texts(at, "info"))
    assert "checkpoints/tiny-vae-nobundle" in info and "not available yet" not in info
    # not under version control (a temporary results folder): no "git checkout" promise, but how to undo
    assert "git checkout" not in info and "To undo, delete `results/tiny-vae-nobundle/`" in info
    assert "writes into `results/tiny-vae-nobundle/`" in info and "methods × OOD sets on the VAE" in info
    label = at.button(key="compute_table2").proto.label
    assert label.startswith("Compute table2 here") and "writes results/tiny-vae-nobundle/" in label
    at.switch_page("pages/3_roc_curves.py").run()
    assert not at.exception
    assert at.sidebar.selectbox(key="model_picker").value == "tiny-vae-nobundle"
    assert any("results/tiny-vae-nobundle/" in t for t in texts(at, "info")) and charts(at) == []


def test_compute_button_gives_a_time_estimate_from_a_manifest(app_env, tmp_path, monkeypatch):
    """The estimate comes from the measured seconds a manifest records: the model's own, else another
    bundle of the same model kind (here: the main table's unperturbed units and ROSE fits of MODEL)."""
    import shutil

    shutil.copytree(app_env["results"], tmp_path / "results")
    folder = tmp_path / "results" / MODEL
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["checkpoint"]["card"] = {"kind": "vae"}
    manifest["environment"] = {"device": "cpu", "threads": 1}
    manifest["cache"] = {"a": {"method": "nll", "perturbation": "none", "dataset": "mnist", "seconds": 400.0},
                         "b": {"method": "rose-ekfac", "perturbation": "none", "dataset": "noise", "seconds": 150.0},
                         "c": {"method": "nll", "perturbation": "brightness", "dataset": "mnist", "seconds": 999.0},
                         "d": {"method": "rose-ekfac:n_fit=10", "perturbation": "none", "dataset": "mnist",
                               "seconds": 999.0}}
    manifest["fits"] = {"rose-ekfac": {"fit_seconds": 50.0}}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    monkeypatch.setenv("ROSE_RESULTS", str(tmp_path / "results"))
    at = open_page()
    at.sidebar.selectbox(key="model_picker").set_value("tiny-vae-nobundle").run()
    assert "about 10 min" in at.button(key="compute_table2").proto.label  # 400 + 150 + 50 s
    info = " ".join(texts(at, "info"))
    assert f"Time: about 10 min (measured compute time of its units and fits in `{MODEL}`'s" in info
    assert "on cpu, 1 thread)" in info
    assert [link.proto.label for link in at.sidebar.get("page_link")][:2] == ["Home", "Score images"]


def test_home_without_bundle_says_how_to_compute_it(app_env, tmp_path, monkeypatch):
    monkeypatch.setenv("ROSE_RESULTS", str(tmp_path / "empty"))
    at = open_page()
    assert any(f"python -m rose_core evaluate --checkpoint checkpoints/{MODEL}" in t for t in texts(at, "info"))
    assert charts(at) == []


def test_missing_bundle_can_be_computed_here(app_env, tmp_path, monkeypatch):
    """The button runs the harness preset (stubbed here: the real one takes minutes) with a progress
    callback, then the page reloads with the new bundle."""
    import rose_core.evaluation as evaluation

    calls = []

    def fake_run_preset(preset, checkpoint, results=None, settings=None, progress=None, show_progress=True, **kw):
        calls.append((preset, Path(checkpoint).name, settings, show_progress))
        progress(1, 2, "scoring")
        build_synthetic_bundle(Path(results), Path(checkpoint).name, n=40)
        progress(2, 2, "done")

    monkeypatch.setenv("ROSE_RESULTS", str(tmp_path / "fresh"))
    monkeypatch.setattr(evaluation, "run_preset", fake_run_preset)
    at = open_page()
    assert charts(at) == []
    at.button(key="compute_table2").click().run()
    assert not at.exception, [e.value for e in at.exception]
    preset, name, settings, shown = calls[0]
    assert (preset, name, shown) == ("table2", MODEL, False)
    assert settings.n_in == 5000 and settings.methods is None  # the harness's defaults for a VAE
    assert len(charts(at)) == 2


def test_compute_button_says_what_is_missing_when_the_harness_cannot_be_imported(app_env, tmp_path, monkeypatch):
    """Without the harness (e.g. an install without its dependencies) the button is replaced by a
    message naming the missing module and how to install it, not silently dropped."""
    import sys

    monkeypatch.setenv("ROSE_RESULTS", str(tmp_path / "none"))
    monkeypatch.setitem(sys.modules, "rose_core.evaluation", None)  # makes `import rose_core.evaluation` fail
    at = open_page()
    assert not at.button and charts(at) == []
    warning = " ".join(texts(at, "warning"))
    assert "rose_core.evaluation" in warning and "pip install" in warning


def test_no_checkpoint_is_explained(tmp_path, monkeypatch):
    monkeypatch.setenv("ROSE_CHECKPOINTS", str(tmp_path / "none"))
    monkeypatch.setenv("ROSE_RESULTS", str(tmp_path / "results"))
    at = open_page()
    assert any("No model checkpoint" in t for t in texts(at, "error"))
    at.switch_page("pages/1_score_images.py").run()
    assert not at.exception and any("No model checkpoint" in t for t in texts(at, "error"))


# --------------------------------------------------------------------------------------------
# Bundle pages
# --------------------------------------------------------------------------------------------

def test_likelihood_vs_rose_widgets_change_the_histograms(app_env):
    at = open_page("pages/2_likelihood_vs_rose.py")
    nll = chart(at, "Negative log-likelihood")
    assert nll["data"][1]["name"].startswith("MNIST")
    mnist_x = nll["data"][1]["x"]
    at.selectbox(key="lvr_ood").set_value("noise").run()
    nll = chart(at, "Negative log-likelihood")
    assert nll["data"][1]["name"].startswith("Uniform noise") and not np.array_equal(arr(nll["data"][1]["x"]),
                                                                                      arr(mnist_x))
    at.radio(key="lvr_unit").set_value("bits/dim").run()
    nll = chart(at, "Negative log-likelihood")
    assert nll["layout"]["xaxis"]["title"]["text"].startswith("NLL (bits per dimension)")
    assert arr(nll["data"][0]["x"]).max() < 10  # nats / (1024 ln 2)
    rose_ekfac = arr(chart(at, "ROSE (EKFAC)")["data"][0]["x"])
    at.radio(key="lvr_rose").set_value("rose-diag").run()
    assert not np.array_equal(arr(chart(at, "ROSE (DIAG)")["data"][0]["x"]), rose_ekfac)


def test_roc_curves_methods_and_table(app_env):
    at = open_page("pages/3_roc_curves.py")
    fig = chart(at, "vs MNIST (OOD)")
    names = [t["name"] for t in fig["data"]]
    variants = [m for m in SHIFTS if ":" in m]  # listed but not selected at first
    assert len(names) == len(SHIFTS) - len(variants) + 1 and names[-1] == "chance"
    assert set(at.multiselect(key="roc_methods").options) >= {"RND (DCT)"}
    assert any(n.startswith("ROSE (EKFAC) (AUROC") for n in names)
    table = at.dataframe[0].value
    assert list(table["Method"])[:2] == ["ROSE-EKFAC", "ROSE-DIAG"]  # short names, spelled out in the caption
    assert table.set_index("Method").loc["NLL", "AUROC"] < 0.5
    assert "source" not in table.columns  # every row from the bundle: said in the caption, not in a column
    assert any(c.startswith("Methods: ROSE-EKFAC = ROSE (EKFAC); ROSE-DIAG = ROSE (DIAG)") for c in texts(at, "caption"))
    at.multiselect(key="roc_methods").set_value(["rose-ekfac", "nll"]).run()
    assert len(chart(at, "vs MNIST (OOD)")["data"]) == 3
    assert len(at.dataframe[0].value) == 2


def _bundle_with_regret(app_env, tmp_path, monkeypatch) -> Results:
    """A copy of the bundle as the shipped one is shaped: 1000 in / 300 OOD behind every metric row, plus
    Likelihood Regret evaluated on MNIST only, on 8 vs 8 images."""
    import shutil

    shutil.copytree(app_env["results"], tmp_path / "results")
    res = Results.for_checkpoint(MODEL, tmp_path / "results")
    m = res.table("metrics").copy()
    m["n_in"], m["n_ood"] = 1000, np.where(m["perturbation"] == "none", 300, 60)
    rng = np.random.default_rng(3)
    a, o = rng.normal(0, 1, 8), rng.normal(3, 1, 8)
    res.write("metrics", pd.concat([m, pd.DataFrame([_metrics_row("likelihood-regret", "mnist", "none", np.nan, a, o)])],
                                   ignore_index=True))
    s = res.table("scores")
    regret = pd.DataFrame({"dataset": [IN_SET] * 8 + ["mnist"] * 8, "is_ood": [False] * 8 + [True] * 8,
                           "index": list(range(8)) * 2, "method": "likelihood-regret", "perturbation": "none",
                           "strength": np.nan, "repeat": 0, "score": np.concatenate([a, o]), "nll_nats": np.nan})
    res.write("scores", pd.concat([s, regret], ignore_index=True))
    monkeypatch.setenv("ROSE_RESULTS", str(tmp_path / "results"))
    return res


def test_roc_names_methods_missing_for_the_set_and_warns_on_few_images(app_env, tmp_path, monkeypatch):
    _bundle_with_regret(app_env, tmp_path, monkeypatch)
    at = open_page("pages/3_roc_curves.py")
    assert "likelihood-regret" in at.multiselect(key="roc_methods").value
    # MNIST: Likelihood Regret is shown, flagged beside its row and in a warning; the others are not
    table = at.dataframe[0].value.set_index("Method").rename(index={"LR(E)": "Likelihood Regret"})
    assert table.loc["Likelihood Regret", "note"] == "⚠ 8 in / 8 OOD"
    assert (table.drop("Likelihood Regret")["note"] == "").all()
    warning = [t for t in texts(at, "warning") if "Few images" in t]
    assert len(warning) == 1 and "**Likelihood Regret** rests on only 8 in / 8 OOD" in warning[0]
    assert "ROSE" not in warning[0]
    caption = [c for c in texts(at, "caption") if c.startswith("Images:")]
    assert len(caption) == 1 and "1000 in / 300 OOD for ROSE (EKFAC)" in caption[0]
    assert "8 in / 8 OOD for Likelihood Regret" in caption[0]
    assert "results bundle's evaluation images (Fashion-MNIST test split, seed 0)" in caption[0]
    assert not [t for t in texts(at, "info") if "not computed" in t]
    # noise: no Likelihood Regret rows, so a note names it, says where it was evaluated and how to add it
    at.selectbox(key="roc_ood").set_value("noise").run()
    assert not at.exception
    names = [t["name"] for t in chart(at, "vs Uniform noise")["data"]]
    assert not any(n.startswith("Likelihood Regret") for n in names)
    note = [t for t in texts(at, "info") if "not computed" in t]
    assert len(note) == 1 and "**Likelihood Regret**: not computed for Uniform noise" in note[0]
    assert "evaluated only on MNIST" in note[0]
    assert f"python -m rose_core evaluate --checkpoint checkpoints/{MODEL} --methods likelihood-regret " \
           "--ood-sets noise" in note[0]
    assert not [t for t in texts(at, "warning") if "Few images" in t]
    assert "every method" in [c for c in texts(at, "caption") if c.startswith("Images:")][0]


def test_likelihood_vs_rose_says_which_images_its_aurocs_rest_on(app_env, tmp_path, monkeypatch):
    _bundle_with_regret(app_env, tmp_path, monkeypatch)
    at = open_page("pages/2_likelihood_vs_rose.py")
    caption = [c for c in texts(at, "caption") if c.startswith("Histograms:")]
    assert len(caption) == 1 and "1000 in / 300 OOD for every method" in caption[0]
    assert "results bundle's evaluation images" in caption[0]


def test_damaged_bundle_table_is_named_with_the_command_to_recompute_it(app_env, tmp_path, monkeypatch):
    import shutil

    shutil.copytree(app_env["results"], tmp_path / "results")
    (tmp_path / "results" / MODEL / "metrics.parquet").write_bytes(b"PAR1 truncated")
    monkeypatch.setenv("ROSE_RESULTS", str(tmp_path / "results"))
    at = open_page("pages/3_roc_curves.py")
    warning = " ".join(texts(at, "warning"))
    assert "metrics.parquet" in warning and f"python -m rose_core evaluate --checkpoint checkpoints/{MODEL}" in warning
    # the scores are intact: the curves are drawn, their metrics computed from the scores instead
    assert chart(at, "vs MNIST (OOD)") and set(at.dataframe[0].value["source"]) == {"computed from scores"}


def test_layer_heatmap_toggle(app_env):
    at = open_page("pages/4_layer_auroc.py")
    ek = chart(at, "EKFAC Fisher")
    # readable layer names, and display names only on the x-axis (no registry id beside a title)
    assert ek["data"][0]["y"] == ["encoder conv 1", "encoder conv 2", "encoder conv 3", "μ head", "log σ² head"]
    assert ek["data"][0]["x"] == ["Letters A–J from fonts (NotMNIST stand-in)", "MNIST", "Uniform noise (stand-in)"]
    assert [row[0] for row in ek["data"][0]["customdata"]] == LAYERS  # the module path on hover
    at.radio(key="layer_fisher").set_value("diag").run()
    diag = chart(at, "DIAG Fisher")
    assert arr(ek["data"][0]["z"]).shape == (len(LAYERS), len(OOD_SETS))
    assert not np.array_equal(arr(diag["data"][0]["z"]), arr(ek["data"][0]["z"]))
    assert any("Best single layer" in m for m in texts(at, "markdown"))


def frame_with(at: AppTest, label: str) -> pd.DataFrame:
    """The first dataframe with ``label`` among its columns (tables are found by content, not position)."""
    found = [d.value for d in at.dataframe if label in d.value.columns]
    assert found, f"no dataframe with a column {label!r}"
    return found[0]


def test_methods_table_and_throughput(app_env):
    at = open_page("pages/6_methods.py")
    # one row per OOD set, one column per method, in pieces narrow enough for the page; no harness variant
    first, second = (at.dataframe[k].value.set_index("OOD set") for k in (0, 1))
    assert list(first.columns) == ["ROSE-EKFAC", "ROSE-DIAG", "NLL"] and list(second.columns) == ["LRatio", "IC(png)",
                                                                                                   "SVD-RND"]
    assert "Overall" in first.index and "MNIST" in first.index
    res = Results.for_checkpoint(MODEL, app_env["results"])
    assert first.loc["MNIST", "ROSE-EKFAC"] == f"{res.metric('rose-ekfac', 'mnist'):.3f}"
    styles = at.dataframe[0].proto.arrow_data.styler.styles + at.dataframe[1].proto.arrow_data.styler.styles
    green = sum(rule.count("_row") for rule in styles.split("}") if "#c7e9c0" in rule)
    assert green >= len(first.index)  # the best method of every set is green, found across the pieces
    auroc_value = first.loc["MNIST", "ROSE-EKFAC"]
    at.radio(key="methods_metric").set_value("fpr80").run()
    assert at.dataframe[0].value.set_index("OOD set").loc["MNIST", "ROSE-EKFAC"] != auroc_value
    assert frame_with(at, "MNIST").index.tolist() == ["RND (DCT)"]  # the variant, in its expander
    scatter = chart(at, "Images per second vs Overall AUROC")
    assert scatter["layout"]["xaxis"]["type"] == "log" and len(scatter["data"]) == len(SHIFTS)
    # the stress suite: AUROC where images should be flagged, false-alarm rates elsewhere (sets as rows)
    ood = frame_with(at, "stress set").set_index("stress set")
    assert list(ood.columns) == ["ROSE-EKFAC", "NLL"] and ood.iloc[0].tolist() == ["0.990", "0.400"]  # shown as text
    fa = frame_with(at, "set (group)").set_index("set (group)")
    assert [r.rsplit(" (", 1)[1] for r in fa.index] == ["in-distribution)", "benign)", "covariate)"]
    assert fa["NLL"].tolist() == ["5.0%", "7.0%", "66.0%"]
    assert any("re-encoding artefacts" in c for c in texts(at, "caption"))


def test_throughput_table_grammar_and_missing_overall(app_env, tmp_path, monkeypatch):
    """A recorded "cpu (1 threads)" reads "1 thread"; a method without an Overall AUROC shows "—", not None."""
    import shutil

    shutil.copytree(app_env["results"], tmp_path / "results")
    res = Results.for_checkpoint(MODEL, tmp_path / "results")
    t = res.table("throughput").copy()
    t["device"] = "cpu (1 threads)"
    t = pd.concat([t, t.iloc[:1].assign(method="likelihood-regret", images_per_s=0.5)], ignore_index=True)
    res.write("throughput", t)
    monkeypatch.setenv("ROSE_RESULTS", str(tmp_path / "results"))
    at = open_page("pages/6_methods.py")
    assert not at.exception, [e.value for e in at.exception]
    assert "measured on cpu (1 thread))" in chart(at, "Images per second vs Overall AUROC")["layout"]["title"]["text"]
    table = frame_with(at, "device").set_index("method")
    assert set(table["device"]) == {"cpu (1 thread)"}
    assert table.loc["Likelihood Regret", "Overall AUROC"] == "—"
    assert table.loc["ROSE (EKFAC)", "Overall AUROC"] == f"{res.metric('rose-ekfac', 'overall'):.3f}"


def test_glossary_on_home_and_readable_layer_names(app_env):
    at = open_page()
    body = " ".join(m.value for m in at.expander[-1].markdown)
    for term in ("TPR", "EKFAC", "DIAG", "−ELBO at z = μ", "IWAE, k = 20", "AUROC", "AUPRC (in)", "FPR80",
                 "`logvar_head`", "`levels.L.S.invconv`", "ROSE score"):
        assert term in body, term
    assert "standard deviations the most unusual layer" in body
    assert glossary.layer_label("logvar_head") == "log σ² head"
    assert glossary.layer_label("levels.0.10.invconv") == "flow level 1, step 11, 1×1 conv"
    assert glossary.layer_label("encoder.5") == "encoder conv 3" and glossary.layer_label("odd.name") == "odd.name"
    # the tooltips are the glossary's words
    at.switch_page("pages/1_score_images.py").run()
    assert glossary.TERMS["tpr"][1] in at.slider(key="score_tpr").help


def test_robustness_slider_sweeps_and_figure5(app_env):
    at = open_page("pages/5_robustness.py")
    assert not at.exception
    live = chart(at, "AUROC at 1.0× brightness")
    labels = live["data"][0]["x"]
    assert "ROSE (EKFAC) (live)" in labels and "ROSE (EKFAC)" in labels  # live and bundle side by side
    res = Results.for_checkpoint(MODEL, app_env["results"])
    bundle_rose = res.auroc_at("mnist", "brightness", 1.0)["rose-ekfac"]
    images = [c for c in texts(at, "caption") if c.startswith("Images under each bar")]
    assert len(images) == 1 and "ROSE (EKFAC): results bundle, 40 in / 60 OOD" in images[0]
    assert "ROSE (EKFAC) (live): live sample (computed), 8 in vs 8 OOD" in images[0] and "seed 1" in images[0]
    assert "computed live here" in images[0]
    side = [t for t in texts(at, "markdown") if t.startswith("ROSE (EKFAC) at 1.0×")]
    assert len(side) == 1 and f"results bundle **{bundle_rose:.3f}** (40 in / 60 OOD) vs live" in side[0]
    assert "(8 in / 8 OOD)" in side[0]
    why = [c for c in texts(at, "caption") if c.startswith("Why they differ")]
    assert len(why) == 1 and "40 in / 40 OOD" in why[0]  # the ROC page's unperturbed images, named
    strip = at.get("image")[0].proto.imgs
    assert [im.caption for im in strip] == ["0.2×", "0.4×", "0.6×", "0.8×", "▶ 1.0× (chosen)", "1.2×", "1.4×",
                                            "1.6×", "1.8×"]
    before = arr(live["data"][0]["y"])
    at.slider(key="rob_brightness").set_value(0.4).run()
    assert not at.exception
    assert [im.caption for im in at.get("image")[0].proto.imgs][1] == "▶ 0.4× (chosen)"
    after = arr(chart(at, "AUROC at 0.4× brightness")["data"][0]["y"])
    assert not np.array_equal(after, before)
    sweep = chart(at, "AUROC vs brightness")
    assert len(sweep["data"]) == len(SHIFTS) and arr(sweep["data"][0]["x"]).tolist() == BRIGHTNESS
    summary = at.dataframe[0].value
    assert set(summary.columns) >= {"method", "mean AUROC", "std of AUROC"}
    at.selectbox(key="rob_sweep").set_value("svd").run()
    svd = chart(at, "AUROC vs svd blur")
    assert arr(svd["data"][0]["x"]).tolist() == [22.0, 28.0]
    assert svd["layout"]["xaxis"]["title"]["text"].startswith("K")
    variants = at.dataframe[1].value.set_index("OOD set")  # one row per OOD set, the variants as columns
    assert list(variants.columns) == ["LRatio", "SVD-RND", "RND (DCT)"]
    assert list(variants.index) == ["Overall", "letters-fonts", "MNIST", "noise"]
    fs = chart(at, "Fisher sample size")
    assert {t["name"] for t in fs["data"]} == {"EKFAC", "DIAG"}


# --------------------------------------------------------------------------------------------
# Score images
# --------------------------------------------------------------------------------------------

def _bad_and_odd_files() -> list[tuple[str, bytes, str]]:
    digit = load_dataset("mnist", "test", n=1, seed=0).images[0, ..., 0]
    good = png(digit)
    rgba = np.zeros((28, 28, 4), np.uint8)
    rgba[..., :3] = digit[..., None]
    rgba[..., 3] = np.where(digit > 0, 255, 0)
    frames = [Image.fromarray(np.full((16, 16), v, np.uint8)) for v in (10, 200)]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:])
    deep = io.BytesIO()
    Image.fromarray((digit.astype(np.uint16) * 257)).save(deep, format="PNG")
    cmyk = io.BytesIO()
    Image.new("CMYK", (20, 20), (0, 200, 200, 0)).save(cmyk, format="JPEG")
    bomb = io.BytesIO()
    Image.new("1", (20000, 20000)).save(bomb, format="PNG")
    return [
        ("digit.png", good, "image/png"),
        ("empty.png", b"", "image/png"),
        ("notes.txt", b"just some text\n", "text/plain"),
        ("cut.png", good[: len(good) // 2], "image/png"),
        ("dot.png", png(np.zeros((1, 1), np.uint8)), "image/png"),
        ("bomb.png", bomb.getvalue(), "image/png"),
        ("anim.gif", buf.getvalue(), "image/gif"),
        ("alpha.png", png(rgba), "image/png"),
        ("deep.png", deep.getvalue(), "image/png"),
        ("cmyk.jpg", cmyk.getvalue(), "image/jpeg"),
    ]


def test_upload_good_and_bad_files(app_env):
    files = _bad_and_odd_files()
    at = open_page("pages/1_score_images.py")
    assert any("Upload one or more images" in t for t in texts(at, "info"))
    at.file_uploader(key="score_files").set_value(files).run()
    assert not at.exception, [e.value for e in at.exception]

    errors = " ".join(texts(at, "error"))
    for name, phrase in [("empty.png", "empty"), ("notes.txt", "text file"), ("cut.png", "truncated"),
                         ("dot.png", "1×1"), ("bomb.png", "decompression bomb")]:
        assert f"**{name}** was not scored" in errors and phrase in errors, name
    warnings = " ".join(texts(at, "warning"))
    for name, phrase in [("anim.gif", "first frame"), ("alpha.png", "black"), ("deep.png", "16-bit"),
                         ("cmyk.jpg", "CMYK")]:
        assert f"**{name}**" in warnings and phrase in warnings, name

    # JPEG uploads get the note that re-encoding is itself a shift for these models; PNGs do not
    jpeg_notes = [t for t in texts(at, "info") if "re-encoding artefacts" in t]
    assert len(jpeg_notes) == 1 and "**cmyk.jpg**" in jpeg_notes[0] and "digit.png" not in jpeg_notes[0]

    table = at.dataframe[0].value
    scored = ["digit.png", "anim.gif", "alpha.png", "deep.png", "cmyk.jpg"]
    assert list(table["image"]) == scored
    # the scores are those of the library's LiveScorer on the same model, fit and calibration
    live = LiveScorer(app_env["checkpoints"] / f"{MODEL}.json", results=app_env["results"], **LIVE_SIZES)
    assert live.fit_source == "bundle"
    from rose_core.imageio import decode_image

    arrays = [decode_image(data, n).array for n, data, _ in files if n in scored]
    expected = live.score(arrays, scored)
    np.testing.assert_allclose(table["rose-ekfac_score"], expected.score, rtol=1e-6)
    np.testing.assert_allclose(table["nll_nats"], expected.nll_nats, rtol=1e-6)
    t95 = live.threshold(0.95)
    assert list(table["verdict"]) == ["OOD" if s > t95 else "in-distribution" for s in expected.verdict_score]
    assert list(table["fired"]) == list(expected.fired(t95))
    np.testing.assert_allclose(frame_with(at, "p_typicality")["p_typicality"], expected.p_typicality, rtol=1e-9)
    # same image content, same score: the RGBA digit composited on black is the digit itself
    assert table["rose-ekfac_score"].iloc[2] == pytest.approx(table["rose-ekfac_score"].iloc[0])

    assert len(at.get("download_button")) == 1
    z = [c for c in charts(at) if c["layout"]["title"]["text"] == "per-layer z-scores"]
    z = z[2:]  # after the two of the comparison: one card per image
    assert len(z) == len(scored) and z[0]["data"][0]["x"] == [glossary.layer_label(n) for n in LAYERS]
    np.testing.assert_allclose(arr(z[0]["data"][0]["y"]), expected.layer_z[0], rtol=1e-6)

    # a stricter TPR moves the threshold up, without rescoring
    first = [m for m in texts(at, "markdown") if m.startswith("**Verdict test: ROSE.**")][0]
    assert "A p-value is the share of held-out in-distribution images" in first
    at.slider(key="score_tpr").set_value(0.80).run()
    second = [m for m in texts(at, "markdown") if m.startswith("**Verdict test: ROSE.**")][0]
    assert first != second and f"{live.threshold(0.80):.3f}" in second


def test_dataset_samples(app_env):
    at = open_page("pages/1_score_images.py")
    at.radio(key="score_source").set_value("Dataset samples").run()
    at.selectbox(key="score_dataset").set_value("fashion-mnist").run()
    at.number_input(key="score_n").set_value(3).run()
    assert not at.exception
    table = at.dataframe[0].value
    assert list(table["image"]) == [f"fashion-mnist sample {i}" for i in (1, 2, 3)]
    table = frame_with(at, "p_rose")
    for col in ("p_rose", "p_typicality", "p_combined"):
        assert np.isfinite(table[col]).all() and ((table[col] > 0) & (table[col] <= 1)).all(), col


def test_verdict_card_names_the_test_that_fired_and_both_p_values(app_env, monkeypatch):
    """With the combined verdict (ROSE + likelihood typicality) every card says which test fired and
    gives ROSE's, typicality's and the combined p-value, as the library computes them."""
    import rose_core.defaults as defaults

    monkeypatch.setitem(defaults.VERDICT_BY_KIND, "vae", "rose+typicality")
    grey = np.full((28, 28), 128, np.uint8)
    boot = load_dataset(IN_SET, "test", n=1, seed=3).images[0, ..., 0]
    files = [("grey.png", png(grey), "image/png"), ("boot.png", png(boot), "image/png")]
    at = open_page("pages/1_score_images.py")
    at.file_uploader(key="score_files").set_value(files).run()
    assert not at.exception, [e.value for e in at.exception]

    live = LiveScorer(app_env["checkpoints"] / f"{MODEL}.json", results=app_env["results"],
                      verdict="rose+typicality", **LIVE_SIZES)
    expected = live.score([grey[..., None], boot[..., None]], ["grey.png", "boot.png"])
    t = live.threshold(0.95)
    fired = expected.fired(t)
    rule = [m for m in texts(at, "markdown") if m.startswith("**Verdict test: ROSE + likelihood typicality.**")]
    assert len(rule) == 1 and f"{t:.3f}" in rule[0] and "min-p" in rule[0]
    table = at.dataframe[0].value
    assert list(table["fired"]) == list(fired)
    cards = [m for m in texts(at, "markdown") if m.startswith("**grey.png**") or m.startswith("**boot.png**")]
    assert len(cards) == 4 and cards[:2] == cards[2:]  # the comparison of the two, then each image's card
    cards = cards[2:]
    for card, f, pr, pt, pc in zip(cards, fired, expected.p_value, expected.p_typicality, expected.p_combined):
        assert (f"fired)" in card) == (f != "none") and ("in-distribution" in card) == (f == "none")
        for p in (pr, pt, pc):
            assert (f"{p:.4f}" if p >= 0.001 else f"{p:.1e}") in card


def test_the_verdict_test_can_be_chosen_on_the_score_page(app_env):
    at = open_page("pages/1_score_images.py")
    at.radio(key="score_source").set_value("Dataset samples").run()
    at.number_input(key="score_n").set_value(2).run()
    assert at.radio(key="score_verdict").value == "rose"          # the recorded default
    assert any(m.startswith("**Verdict test: ROSE.**") for m in texts(at, "markdown"))
    at.radio(key="score_verdict").set_value("rose+typicality").run()
    assert not at.exception, [e.value for e in at.exception]
    assert any(m.startswith("**Verdict test: ROSE + likelihood typicality.**") for m in texts(at, "markdown"))
    assert set(at.dataframe[0].value["fired"]) <= {"rose", "typicality", "both", "none"}


def test_uploads_and_their_scores_survive_a_visit_to_another_page(app_env):
    """Streamlit forgets a file uploader's files when its page is left; the decoded uploads are kept in the
    session, so coming back shows the same images and scores, until "Clear" drops them."""
    digit = load_dataset("mnist", "test", n=1, seed=0).images[0, ..., 0]
    boot = load_dataset(IN_SET, "test", n=1, seed=3).images[0, ..., 0]
    files = [("digit.png", png(digit), "image/png"), ("boot.png", png(boot), "image/png"),
             ("empty.png", b"", "image/png")]
    at = open_page("pages/1_score_images.py")
    at.file_uploader(key="score_files").set_value(files).run()
    assert not at.exception, [e.value for e in at.exception]
    at.radio(key="score_verdict").set_value("rose+typicality").run()
    before = at.dataframe[0].value
    assert list(before["image"]) == ["digit.png", "boot.png"]
    at.switch_page("pages/3_roc_curves.py").run()
    assert not at.exception and not at.get("file_uploader")
    at.switch_page("pages/1_score_images.py").run()
    assert not at.exception, [e.value for e in at.exception]
    assert at.radio(key="score_verdict").value == "rose+typicality"  # widget choices are kept too
    after = at.dataframe[0].value
    pd.testing.assert_frame_equal(after, before)
    assert any("**empty.png** was not scored" in t for t in texts(at, "error"))
    assert not any("default value" in t for t in texts(at, "warning"))
    # a file added after coming back joins the kept ones
    grey = np.full((28, 28), 128, np.uint8)
    at.file_uploader(key="score_files").set_value([("grey.png", png(grey), "image/png")]).run()
    assert list(at.dataframe[0].value["image"]) == ["digit.png", "boot.png", "grey.png"]
    at.button(key="score_clear").click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert not at.dataframe and not texts(at, "error")
    assert any("Upload one or more images" in t for t in texts(at, "info"))


def test_a_file_removed_from_the_uploader_is_dropped(app_env):
    digit = load_dataset("mnist", "test", n=1, seed=0).images[0, ..., 0]
    files = [("a.png", png(digit), "image/png"), ("b.png", png(255 - digit), "image/png")]
    at = open_page("pages/1_score_images.py")
    at.file_uploader(key="score_files").set_value(files).run()
    assert list(at.dataframe[0].value["image"]) == ["a.png", "b.png"]
    at.file_uploader(key="score_files").set_value(files[1:]).run()
    assert list(at.dataframe[0].value["image"]) == ["b.png"]


# --------------------------------------------------------------------------------------------
# Cancelling a computation (studio.state.computed)
# --------------------------------------------------------------------------------------------

def _computation_script(key: str) -> None:
    import streamlit as st

    from studio import state

    calls = st.session_state.setdefault("calls", [])

    def compute(progress):
        calls.append("start")
        progress(0.5, "half way")
        if st.session_state.get("press_cancel"):  # what a click on Cancel does: mark it, then rerun the page
            st.session_state["press_cancel"] = False
            state.cancel(state.computation_tag(("demo", key)))
            st.rerun()
        calls.append("done")
        return 42

    value = state.computed(("demo", key), compute, "Demo computation", cancelled="the demo shows no value")
    st.markdown(f"value: {value}")


def test_a_cancelled_computation_stores_nothing_and_can_be_run_again(tmp_path):
    from studio import state

    key = tmp_path.name  # unique per test run: the store is shared by the whole server (here: the test process)
    at = AppTest.from_function(_computation_script, args=(key,), default_timeout=60)
    at.session_state["press_cancel"] = True
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    # stopped at its progress update (the Streamlit rerun a click causes), before storing anything
    assert at.session_state["calls"] == ["start"]
    assert ("demo", key) not in state._store()
    notes = [e.value for e in at.info]
    assert any(n.startswith("Cancelled: Demo computation. Nothing was stored; the demo shows no value.") for n in notes)
    assert "value: None" in texts(at, "markdown")
    at.run()  # a rerun does not start it again behind the user's back
    assert at.session_state["calls"] == ["start"] and "value: None" in texts(at, "markdown")
    at.button(key=f"resume_{state.computation_tag(('demo', key))}").click().run()
    assert at.session_state["calls"] == ["start", "start", "done"] and "value: 42" in texts(at, "markdown")
    at.run()  # stored once finished: not computed again
    assert at.session_state["calls"] == ["start", "start", "done"] and "value: 42" in texts(at, "markdown")
    assert not [e.value for e in at.info if "Cancelled" in e.value]


def test_robustness_shows_the_precomputed_live_values_and_says_so(app_env, monkeypatch):
    from rose_core.live import ROBUSTNESS_FILE, robustness_table

    live = LiveScorer(app_env["checkpoints"] / f"{MODEL}.json", results=app_env["results"], **LIVE_SIZES)
    assert live.fit_source == "bundle"
    table = robustness_table(live, ["mnist"], factors=(1.0,), n=8, seed=1)
    table["command"] = f"python -m studio.precompute {MODEL}"
    path = app_env["results"] / MODEL / ROBUSTNESS_FILE
    path.write_text(json.dumps(table))
    try:  # the default scorer (no fit-size overrides), which the table was computed with: nothing is scored here
        monkeypatch.delenv("ROSE_LIVE_N_FISHER")
        monkeypatch.delenv("ROSE_LIVE_N_CALIBRATION")
        at = open_page("pages/5_robustness.py")
        bars = chart(at, "AUROC at 1.0× brightness")["data"][0]
        shown = dict(zip(bars["x"], arr(bars["y"]).tolist()))
        assert shown["ROSE (EKFAC) (live)"] == pytest.approx(table["rows"][0]["rose"])
        assert shown["likelihood (live, −ELBO at z = μ)"] == pytest.approx(table["rows"][0]["nll"])
        caption = [c for c in texts(at, "caption") if c.startswith("Images under each bar")][0]
        assert "live sample (precomputed), 8 in vs 8 OOD" in caption
        assert f"precomputed by `python -m studio.precompute {MODEL}` with this model and the bundle's ROSE fit" in caption
        assert not [k for k in at.session_state if str(k).startswith("cancel_")]
    finally:
        path.unlink()


def test_two_uploads_side_by_side_coloured_verdicts_named_export_and_shrink_note(app_env):
    digit = load_dataset("mnist", "test", n=1, seed=0).images[0, ..., 0]
    boot = load_dataset(IN_SET, "test", n=1, seed=3).images[0, ..., 0]
    huge = np.asarray(Image.fromarray(boot).resize((4000, 4000), Image.NEAREST))
    files = [("digit.png", png(digit), "image/png"), ("boot.png", png(boot), "image/png"),
             ("huge.png", png(huge), "image/png")]
    at = open_page("pages/1_score_images.py")
    at.file_uploader(key="score_files").set_value(files).run()
    assert not at.exception, [e.value for e in at.exception]
    assert f"Scored live here, with the results bundle's ROSE fit (`results/{MODEL}/fits/rose-ekfac`)" in " ".join(
        texts(at, "caption"))
    notes = [w for w in texts(at, "warning") if w.startswith("**huge.png**")]
    assert len(notes) == 1 and "shrunk from 4000×4000 to 32×32" in notes[0]
    assert not [w for w in texts(at, "warning") if "**digit.png**" in w or "**boot.png**" in w]

    table = at.dataframe[0]
    styles = table.proto.arrow_data.styler.styles
    assert "#f8d0d0" in styles or "#c7e9c0" in styles  # the verdict cells are coloured like the cards
    assert at.get("download_button")[0].proto.label == "Download all results (CSV)"
    from studio.format import export_name

    assert len({export_name("vae-fmnist", f, v) for f in ("ekfac", "diag") for v in ("rose", "rose+typicality")}) == 4
    assert at.session_state["score_cmp_a"] == "1. digit.png" and at.session_state["score_cmp_b"] == "2. boot.png"
    cmp = [c for c in charts(at) if c["layout"]["title"]["text"] == "per-layer z-scores"]
    # two comparison cards, then one card per image; the pair shares one y-axis range
    assert len(cmp) == 2 + 3
    assert cmp[0]["layout"]["yaxis"]["range"] == cmp[1]["layout"]["yaxis"]["range"]
    at.selectbox(key="score_cmp_b").set_value("3. huge.png").run()
    assert not at.exception
    cards = [m for m in texts(at, "markdown") if m.startswith("**huge.png**")]
    assert len(cards) == 2  # in the comparison and in its own card
    live = LiveScorer(app_env["checkpoints"] / f"{MODEL}.json", results=app_env["results"], **LIVE_SIZES)
    expected = live.score([digit[..., None], boot[..., None], huge[..., None]], ["digit.png", "boot.png", "huge.png"])
    assert f"ROSE score **{expected.score[2]:.3f}**" in cards[0]
    cmp = [c for c in charts(at) if c["layout"]["title"]["text"] == "per-layer z-scores"]
    np.testing.assert_allclose(arr(cmp[1]["data"][0]["y"]), expected.layer_z[2], rtol=1e-6)


def test_no_page_has_a_bare_string_that_streamlit_magic_would_print():
    """A string on its own line at a page's top level (e.g. a constant's docstring) is shown on the page by
    Streamlit's "magic"; only the module docstring is not."""
    import ast

    for path in [REPO / "app.py", *sorted((REPO / "pages").glob("*.py"))]:
        body = ast.parse(path.read_text()).body
        bare = [n.lineno for n in body[1:] if isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant)
                and isinstance(n.value.value, str)]
        assert not bare, f"{path.name}: bare string(s) at line(s) {bare}"


def test_throughput_labels_are_placed_without_overlaps_and_narrow_log_axes_get_finer_ticks():
    from itertools import combinations

    from rose_core import charts

    # a tight cluster (as ROSE (EKFAC) / ROSE (DIAG) / ROSE + typicality) and two near twins (the Input Complexities)
    xs, ys = np.array([300.0, 310.0, 305.0, 60.0, 64.0]), np.array([200.0, 196.0, 210.0, 80.0, 82.0])
    texts_ = ["ROSE (EKFAC)", "ROSE (DIAG)", "ROSE + typicality", "Input Complexity (PNG)",
              "Input Complexity (JPEG 2000)"]
    places = charts.label_places(xs, ys, texts_, width=560, height=330)
    boxes = [charts._label_box(x, y, t, p, 14) for x, y, t, p in zip(xs, ys, texts_, places)]
    assert all(charts._overlap(a, b) == 0 for a, b in combinations(boxes, 2)), places
    tv = pd.DataFrame({"method": ["rose-diag", "nll", "input-complexity-png", "input-complexity-jp2"],
                       "images_per_s": [60.0, 160.0, 158.5, 158.7], "overall_auroc": [0.83, 0.63, 0.66, 0.64]})
    fig = charts.throughput_figure(tv, "narrow")
    assert fig.layout.xaxis.type == "log" and fig.layout.xaxis.dtick is None  # plotly's 2, 5 … ticks within a decade
    wide = charts.throughput_figure(tv.assign(images_per_s=[0.1, 160.0, 15.0, 1600.0]), "wide")
    assert wide.layout.xaxis.dtick == 1


def test_cancelled_scoring_of_dataset_samples_shows_no_verdict_until_run_again(app_env):
    from studio import state

    at = open_page("pages/1_score_images.py")
    at.radio(key="score_source").set_value("Dataset samples").run()
    at.number_input(key="score_n").set_value(2).run()
    assert not at.exception and at.dataframe[0].value.shape[0] == 2
    # what a click on the Cancel button of the next scoring does (studio.state.cancel), before it finishes
    at.number_input(key="score_seed").set_value(7)
    real_computed = state.computed

    def spy(key, compute, label, cancelled=""):
        if key[0] == "score":
            state.cancel(state.computation_tag(key))
        return real_computed(key, compute, label, cancelled)

    import studio.state as module

    module.computed = spy
    try:
        at.run()
    finally:
        module.computed = real_computed
    assert not at.exception, [e.value for e in at.exception]
    assert any(i.startswith("Cancelled: Scoring 2 image(s)") and "no verdicts are shown" in i for i in texts(at, "info"))
    assert not at.dataframe  # no table, no cards: nothing was scored
    resume = [b for b in at.button if b.key and b.key.startswith("resume_")]
    resume[0].click().run()
    assert not at.exception and at.dataframe[0].value.shape[0] == 2


def test_a_single_rejected_file_is_named_without_the_upload_prompt(app_env):
    at = open_page("pages/1_score_images.py")
    at.file_uploader(key="score_files").set_value([("notes.txt", b"just some text\n", "text/plain")]).run()
    assert not at.exception, [e.value for e in at.exception]
    assert any("**notes.txt** was not scored" in e for e in texts(at, "error"))
    infos = texts(at, "info")
    assert not any("Upload one or more images" in i for i in infos)
    assert any(i.startswith("None of the uploaded files could be scored") for i in infos)


def test_model_order_opens_on_the_fashion_mnist_vae_with_a_bundle(tmp_path, monkeypatch):
    """The picker's first entry (the app's default): bundle first, then VAE, then Fashion-MNIST."""
    from studio import state

    monkeypatch.setenv("ROSE_RESULTS", str(tmp_path))
    for name in ("a-cifar", "b-fmnist", "c-glow"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "manifest.json").write_text("{}")
    cards = {"a-cifar": {"kind": "vae", "dataset": "cifar10-subset"},
             "b-fmnist": {"kind": "vae", "dataset": "fashion-mnist"},
             "c-glow": {"kind": "glow", "dataset": "fashion-mnist"},
             "0-nobundle": {"kind": "vae", "dataset": "fashion-mnist"}}
    assert state.model_order(cards) == ["b-fmnist", "a-cifar", "c-glow", "0-nobundle"]
