"""The one results-bundle reader (rose_core.results), the report built on it, the chart builders
(rose_core.charts: plain data in, plotly figure out) and the app's stable cache keys — all
without a Streamlit runtime, on small bundles written here with known values."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from rose_core import charts
from rose_core.metrics import auroc
from rose_core.report import build_report
from rose_core.results import TABLES, Results, ResultsError, bundles

IN = "fashion-mnist"


def _scores(dataset, is_ood, method, values, pert="none", strength=np.nan, repeat=0, nll=np.nan):
    return pd.DataFrame({"dataset": dataset, "is_ood": is_ood, "index": np.arange(len(values)), "method": method,
                         "perturbation": pert, "strength": strength, "repeat": repeat,
                         "score": np.asarray(values, float), "nll_nats": nll})


def _metric(method, ood_set, auroc_value, pert="none", strength=np.nan, repeat=0, n_in=4, n_ood=3, fpr80=0.1):
    return {"method": method, "ood_set": ood_set, "perturbation": pert, "strength": strength, "repeat": repeat,
            "auroc": auroc_value, "auprc_in": 0.5, "auprc_out": 0.5, "fpr80": fpr80, "fpr95": 0.2,
            "n_in": n_in, "n_ood": n_ood}


@pytest.fixture
def bundle(tmp_path) -> Results:
    res = Results(tmp_path / "results" / "vae-fmnist")
    res.write("scores", pd.concat([
        _scores(IN, False, "rose-ekfac", [0.0, 1.0, 2.0, np.inf]),
        _scores("mnist", True, "rose-ekfac", [3.0, 4.0, np.nan]),
        _scores("mnist", True, "rose-ekfac", [9.0, 9.0], repeat=1),              # a second repeat: ignored by split
        _scores("mnist", True, "rose-ekfac", [0.5], pert="brightness", strength=0.4),
        _scores(IN, False, "nll", [10.0, 20.0], nll=np.array([100.0, 200.0])),
        _scores("mnist", True, "nll", [5.0], nll=np.array([50.0])),
        _scores(IN, False, "input-complexity-png", [1.0, 2.0, 3.0]),
        _scores("mnist", True, "input-complexity-png", [0.0, 2.5]),              # no metrics row: computed
    ], ignore_index=True))
    res.write("metrics", pd.DataFrame([
        _metric("rose-ekfac", "mnist", 0.9), _metric("rose-ekfac", "mnist", 0.7, repeat=1),
        _metric("rose-ekfac", "letters-fonts", 0.95), _metric("rose-ekfac", "overall", 0.92),
        _metric("nll", "mnist", 0.2, fpr80=0.9), _metric("nll", "overall", 0.4),
        _metric("rnd", "mnist", 0.6), _metric("rnd:path=checkpoints/rnd-fmnist-dct", "mnist", 0.8),
        *[_metric(m, "mnist", a, "brightness", s) for m, pts in
          {"rose-ekfac": {0.4: 0.8, 1.0: 0.9}, "nll": {0.4: 0.1, 1.0: 0.3}}.items() for s, a in pts.items()],
        _metric("nll", "mnist", 0.5, "svd", 22.0, repeat=0), _metric("nll", "mnist", 0.7, "svd", 22.0, repeat=1),
    ]))
    res.write("layers", pd.concat([
        pd.DataFrame({"dataset": IN, "is_ood": False, "index": range(3), "fisher": "diag", "layer": "enc",
                      "raw": [1.0, 2.0, 3.0], "z": 0.0}),
        pd.DataFrame({"dataset": "mnist", "is_ood": True, "index": range(2), "fisher": "diag", "layer": "enc",
                      "raw": [2.5, 4.0], "z": 0.0})], ignore_index=True))
    res.write("layer_metrics", pd.DataFrame([
        {"fisher": "ekfac", "layer": "b", "ood_set": "mnist", "auroc": 0.3},
        {"fisher": "ekfac", "layer": "a", "ood_set": "mnist", "auroc": 0.8},
        {"fisher": "ekfac", "layer": "b", "ood_set": "overall", "auroc": 0.6}]))
    res.write("throughput", pd.DataFrame({"method": ["nll", "rose-ekfac", "likelihood-regret"],
                                          "images_per_s": [300.0, 120.0, 0.5], "n_images": 50, "batch_size": 8,
                                          "device": "cpu"}))
    res.write_manifest({"in_distribution": {"name": IN, "split": "test", "n": 4, "seed": 0},
                        "ood_sets": {"mnist": {"role": "ood", "stand_in": False, "n_test": 10000},
                                     "letters-fonts": {"role": "ood", "stand_in": True, "n_test": 100}},
                        "checkpoint": {"name": "vae-fmnist", "card": {"kind": "vae", "dataset": IN, "epochs": 3}},
                        "commands": ["python -m rose_core evaluate --checkpoint checkpoints/vae-fmnist --n-in 4",
                                     "python -m rose_core evaluate --checkpoint checkpoints/vae-fmnist --n-in 99"]})
    return Results(res.folder)


# --------------------------------------------------------------------------------------------
# The reader
# --------------------------------------------------------------------------------------------

def test_what_the_bundle_holds(bundle):
    assert bundle.exists and bundle.name == "vae-fmnist" and bundle.in_dist() == IN
    assert bundle.methods() == ["rose-ekfac", "nll", "input-complexity-png"]  # registry order, ROSE first
    assert bundle.ood_sets() == ["mnist"] and bundle.ood_sets(include_overall=True) == ["mnist", "overall"]
    assert bundle.metric_sets() == ["letters-fonts", "mnist"] and bundle.metric_sets("svd") == ["mnist"]
    assert bundle.metric_methods() == ["nll", "rnd", "rnd:path=checkpoints/rnd-fmnist-dct", "rose-ekfac"]
    assert bundle.ood_info()["letters-fonts"]["stand_in"] is True
    assert bundle.checkpoint_card()["epochs"] == 3
    assert bundle.fishers() == {"ekfac", "diag"}


def test_single_values(bundle):
    assert bundle.metric("rose-ekfac", "mnist") == 0.9                      # first repeat, not the mean
    assert bundle.metric("rose-ekfac", "mnist", repeat=1) == 0.7
    assert bundle.metric("nll", "mnist", "fpr80") == 0.9
    assert bundle.metric("nll", "mnist", perturbation="brightness", strength=0.4) == 0.1
    assert math.isnan(bundle.metric("rose-diag", "mnist")) and math.isnan(bundle.metric("nll", "noise"))
    assert bundle.counts("rose-ekfac", "mnist") == (4, 3) and bundle.counts("rose-diag", "mnist") == (0, 0)
    assert bundle.images_per_s() == {"nll": 300.0, "rose-ekfac": 120.0, "likelihood-regret": 0.5}


def test_split_keeps_finite_unperturbed_first_repeat(bundle):
    a, o = bundle.split("rose-ekfac", "mnist")
    assert a.tolist() == [0.0, 1.0, 2.0] and o.tolist() == [3.0, 4.0]  # inf, NaN and repeat 1 left out
    a, o = bundle.split("rose-ekfac", "mnist", perturbation="brightness", strength=0.4)
    assert a.tolist() == [0.0, 1.0, 2.0] and o.tolist() == [0.5]          # in-distribution stays unperturbed
    a, o = bundle.nll_split("mnist")
    assert a.tolist() == [100.0, 200.0] and o.tolist() == [50.0]          # nll_nats, not the score column
    assert set(bundle.roc_inputs(["rose-ekfac", "rose-diag", "nll"], "mnist")) == {"rose-ekfac", "nll"}


def test_metrics_view_bundle_rows_and_computed_fallback(bundle):
    v = bundle.metrics_view("mnist", ["rose-ekfac", "input-complexity-png", "rose-diag"]).set_index("method")
    assert list(v.index) == ["rose-ekfac", "input-complexity-png"]       # no data at all: left out
    assert v.loc["rose-ekfac", "auroc"] == pytest.approx(0.8)            # mean over the two repeats
    assert v.loc["rose-ekfac", "source"] == "bundle"
    assert v.loc["input-complexity-png", "source"] == "computed from scores"
    assert v.loc["input-complexity-png", "auroc"] == pytest.approx(auroc([1.0, 2.0, 3.0], [0.0, 2.5]))
    assert v.loc["input-complexity-png", "n_ood"] == 2


def test_comparison_sweep_and_points(bundle):
    table = bundle.comparison("auroc")
    assert list(table.columns) == ["overall", "letters-fonts", "mnist"]  # Overall first
    assert list(table.index)[:2] == ["rose-ekfac", "nll"] and table.loc["rose-ekfac", "mnist"] == pytest.approx(0.8)
    assert list(bundle.exposure_variants().index) == ["rnd", "rnd:path=checkpoints/rnd-fmnist-dct"]
    curve, summary = bundle.sweep("brightness", "mnist")
    assert list(curve["method"].astype(str)) == ["rose-ekfac", "rose-ekfac", "nll", "nll"]
    s = summary.set_index(summary["method"].astype(str))
    assert s.loc["nll", "mean"] == pytest.approx(0.2) and s.loc["nll", "std"] == pytest.approx(0.1)  # population std
    svd, _ = bundle.sweep("svd")
    assert svd["auroc"].iloc[0] == pytest.approx(0.6) and svd["auroc_std"].iloc[0] == pytest.approx(0.1)
    assert bundle.auroc_at("mnist", "brightness", 0.4) == {"nll": 0.1, "rose-ekfac": 0.8}
    empty, _ = bundle.sweep("dct")
    assert empty.empty and list(empty.columns) == ["method", "strength", "auroc", "auroc_std"]


def test_brightness_one_falls_back_to_unperturbed(tmp_path):
    res = Results(tmp_path / "b")
    res.write("metrics", pd.DataFrame([_metric("nll", "mnist", 0.25)]))
    assert res.auroc_at("mnist", "brightness", 1.0) == {"nll": 0.25}
    assert res.auroc_at("mnist", "brightness", 0.4) == {}


def test_layer_auroc_from_metrics_or_scores(bundle):
    ek = bundle.layer_auroc("ekfac")
    assert list(ek.index) == ["b", "a"] and list(ek.columns) == ["mnist", "overall"]  # scoring order, overall last
    assert ek.loc["a", "mnist"] == 0.8 and math.isnan(ek.loc["a", "overall"])
    diag = bundle.layer_auroc("diag")                                      # no layer_metrics rows: from scores
    assert diag.loc["enc", "mnist"] == pytest.approx(auroc([1.0, 2.0, 3.0], [2.5, 4.0]))
    assert bundle.layer_auroc("kfac").empty


def test_throughput_view(bundle):
    tv = bundle.throughput_view()
    assert list(tv["method"].astype(str)) == ["rose-ekfac", "nll", "likelihood-regret"]
    assert tv.set_index(tv["method"].astype(str)).loc["nll", "overall_auroc"] == 0.4
    assert math.isnan(tv["overall_auroc"].iloc[2])


def test_missing_tables_are_empty_with_the_schema(tmp_path):
    res = Results(tmp_path / "none")
    assert not res.exists and res.manifest == {} and res.meta == {}
    for name, cols in TABLES.items():
        assert list(res.table(name).columns) == cols and not res.has(name)
    assert res.methods() == [] and res.comparison().empty and res.throughput_view().empty
    with pytest.raises(KeyError, match="Unknown results table"):
        res.table("nope")


def test_damaged_table_strict_raises_lenient_records(bundle):
    (bundle.folder / "metrics.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(ResultsError, match="metrics.parquet.*python -m rose_core evaluate --checkpoint "
                                           "checkpoints/vae-fmnist"):
        Results(bundle.folder).table("metrics")
    lenient = Results(bundle.folder, strict=False)
    assert lenient.table("metrics").empty and list(lenient.table("metrics").columns) == TABLES["metrics"]
    assert "metrics.parquet" in lenient.problems["metrics"] and lenient.has("scores")
    (bundle.folder / "manifest.json").write_text("{broken")
    lenient = Results(bundle.folder, strict=False)
    assert lenient.meta == {} and "manifest.json" in lenient.problems["manifest"]
    with pytest.raises(ResultsError, match="manifest.json"):
        Results(bundle.folder).manifest


def test_manifest_is_fresh_and_meta_follows_the_file(bundle):
    m = bundle.manifest
    m["in_distribution"]["name"] = "changed-in-memory"
    assert bundle.manifest["in_distribution"]["name"] == IN                 # each read is a new dict
    assert bundle.meta is bundle.meta                                       # parsed once per file version
    bundle.write_manifest({**bundle.manifest, "in_distribution": {"name": "mnist-longer-name"}})
    assert bundle.in_dist() == "mnist-longer-name"


def test_manifest_listing_ood_names_only(tmp_path):
    res = Results(tmp_path / "b")
    res.write_manifest({"ood_sets": ["mnist", "noise"], "in_distribution": IN})
    assert res.ood_info() == {"mnist": {}, "noise": {}} and res.in_dist() == IN


def test_bundles_lists_folders_with_a_manifest(bundle, tmp_path):
    (tmp_path / "results" / "no-manifest").mkdir()
    assert list(bundles(tmp_path / "results")) == ["vae-fmnist"]
    assert bundles(tmp_path / "absent") == {}


# --------------------------------------------------------------------------------------------
# The report
# --------------------------------------------------------------------------------------------

def test_report_reads_numbers_through_the_reader(bundle, tmp_path):
    text = build_report(tmp_path / "results", tmp_path / "no-checkpoints")
    assert text.startswith("# Results") and "`rose_core/paper.py`" in text
    row = next(line for line in text.splitlines() if line.startswith("| MNIST → mnist |"))
    assert "0.900 (0.995)" in row and "0.200 (0.161)" in row                # ours (paper), Table 2
    assert "| NotMNIST → letters-fonts † |" in text                          # stand-in marked from the manifest
    assert "**Fashion-MNIST vs MNIST (vae-fmnist):** NLL AUROC **0.200**" in text
    assert "## Brightness" in text and "| ROSE-EKFAC | mnist | 0.800 | 0.900 | 0.850 | 0.050 |" in text
    assert "ROSE-EKFAC / LR(E) = 240×" in text                               # 120 / 0.5 images per second
    assert "--n-in 4" in text and "--n-in 99" not in text                   # superseded command dropped
    assert "| `vae-fmnist` | vae | fashion-mnist | 3 |" in text


def test_report_compares_each_model_with_the_paper(bundle, tmp_path):
    from rose_core.reporting.overview import comparison_table

    table = comparison_table({"vae-fmnist": bundle})
    row = next(line for line in table.splitlines() if line.startswith("| `vae-fmnist`"))
    assert "| 3 (100) |" in row                                              # epochs, ours (paper)
    assert "NLL on MNIST: **0.200** (0.161)" in row and "ROSE-EKFAC on MNIST: **0.900** (0.995)" in row
    assert "ROSE-EKFAC on Overall: **0.920** (0.999)" in row
    assert "## Ours vs the paper, per model" in build_report(tmp_path / "results", tmp_path / "none")
    # a CIFAR-10 model is compared with the paper's CIFAR-10 rows; SVHN through its stand-in
    cifar = Results(tmp_path / "results" / "vae-cifar10")
    cifar.write("metrics", pd.DataFrame([_metric("rose-ekfac", "digits-on-photos", 0.75),
                                         _metric("nll", "digits-on-photos", 0.3)]))
    cifar.write_manifest({"checkpoint": {"name": "vae-cifar10", "card": {"kind": "vae", "dataset": "cifar10-subset",
                                                                         "epochs": 7, "train_images": 5085}}})
    row = comparison_table({"vae-cifar10": Results(cifar.folder)}).splitlines()[-1]
    assert "| 7 (100) | 5,085 (50,000) |" in row
    assert "ROSE-EKFAC on SVHN → digits-on-photos †: **0.750** (0.907)" in row and "(0.081)" in row


def test_report_without_bundles(tmp_path):
    text = build_report(tmp_path / "empty", tmp_path / "none")
    assert "## What could not be run" in text and "## Table 3 (capacity)" in text and "## Table 2 (VAE" not in text


# --------------------------------------------------------------------------------------------
# Charts: plain data in, plotly figure out
# --------------------------------------------------------------------------------------------

def test_histogram_pair_clips_the_tail_into_the_last_bin():
    a, o = np.arange(100.0), np.array([1000.0, 5.0])
    fig = charts.histogram_pair(a, o, "FMNIST", "MNIST", "NLL", "NLL (nats)", bins=10, clip=0.9)
    assert [t.name for t in fig.data] == ["FMNIST (n=100)", "MNIST (n=2)"]
    assert max(fig.data[1].x) < 1000 and "in the last bin" in fig.layout.xaxis.title.text
    assert fig.layout.barmode == "overlay" and fig.data[0].histnorm == "probability density"
    plain = charts.histogram_pair(a, a, "x", "y", "t", "score", clip=1.0)
    assert plain.layout.xaxis.title.text == "score" and max(plain.data[0].x) == 99


def test_roc_curves_and_figure():
    inputs = {"rose-ekfac": (np.array([0.0, 1.0, 2.0]), np.array([3.0, 4.0])),
              "nll": (np.array([0.0, 1.0]), np.array([0.5, -1.0])), "rnd": (np.array([1.0]), np.array([]))}
    curves = charts.roc_curves(inputs)
    assert set(curves) == {"rose-ekfac", "nll"} and curves["rose-ekfac"][2] == 1.0
    assert curves["nll"][2] == pytest.approx(auroc([0.0, 1.0], [0.5, -1.0]))
    fig = charts.roc_figure(curves, "FMNIST vs MNIST")
    names = [t.name for t in fig.data]
    assert names == ["ROSE (EKFAC) (AUROC 1.000)", f"NLL (AUROC {curves['nll'][2]:.3f})", "chance"]
    assert fig.data[0].line.color != fig.data[1].line.color and fig.layout.title.text == "FMNIST vs MNIST"


def test_heatmap_sweep_and_bars():
    pivot = pd.DataFrame({"mnist": [0.9, np.nan], "overall": [0.5, 0.7]}, index=["enc", "head"])
    hm = charts.heatmap_figure(pivot, "layers")
    assert list(hm.data[0].x) == ["MNIST", "Overall"] and list(hm.data[0].y) == ["enc", "head"]
    assert [list(r) for r in hm.data[0].text] == [["0.90", "0.50"], ["", "0.70"]]
    assert hm.layout.yaxis.autorange == "reversed"

    curve = pd.DataFrame({"method": ["rose-ekfac", "rose-ekfac", "nll"], "strength": [0.4, 1.0, 0.4],
                          "auroc": [0.8, 0.9, 0.1], "auroc_std": [0.0, 0.0, 0.05]})
    sw = charts.sweep_figure(curve, "svd", "AUROC vs SVD", mark=0.4)
    assert [t.name for t in sw.data] == ["ROSE (EKFAC)", "NLL"]
    assert sw.data[0].error_y.visible is False and sw.data[1].error_y.visible is True
    assert sw.layout.xaxis.title.text.startswith("K (smallest")

    bars = charts.auroc_bars({"ROSE (live)": (0.9, "live, 8 in vs 8 OOD"), "NLL": (0.2, "results bundle")}, "t")
    assert list(bars.data[0].marker.color) == [charts.FLAG_COLOUR, charts.IN_COLOUR]
    assert list(bars.data[0].text) == ["0.900", "0.200"]


def test_zscore_throughput_and_fisher_samples():
    z = charts.zscore_figure(["a", "b", "c"], np.array([0.5, 3.0, -1.0]), 2.0, "z")
    assert list(z.data[0].marker.color) == [charts.IN_COLOUR, charts.FLAG_COLOUR, charts.IN_COLOUR]
    assert any(s.y0 == 2.0 for s in z.layout.shapes)
    no_line = charts.zscore_figure(["a"], np.array([9.0]), None, "z")
    assert list(no_line.data[0].marker.color) == [charts.IN_COLOUR]

    tv = pd.DataFrame({"method": ["rose-ekfac", "nll", "rnd"], "images_per_s": [100.0, 1000.0, 5.0],
                       "device": "cpu", "overall_auroc": [0.99, 0.5, np.nan]})
    tp = charts.throughput_figure(tv, "speed")
    assert [t.name for t in tp.data] == ["ROSE (EKFAC)", "NLL"] and tp.layout.xaxis.type == "log"

    fs = pd.DataFrame({"fisher": ["ekfac"] * 3 + ["diag"] * 3, "n_fit": [5, 50, 1000] * 2,
                       "repeat": 0, "ood_set": "overall", "auroc": [0.6, 0.8, 0.9, 0.5, 0.7, 0.8]})
    box = charts.fisher_samples_figure(fs, "fisher")
    assert {t.name for t in box.data} == {"EKFAC", "DIAG"}
    assert list(box.layout.xaxis.categoryarray) == ["5", "50", "1000"]     # numeric, not lexical, order


# --------------------------------------------------------------------------------------------
# App helpers that need no Streamlit runtime
# --------------------------------------------------------------------------------------------

def test_format_helpers():
    from studio.format import best_styled, rate_text

    assert [rate_text(v) for v in (1414.2, 19.34, 0.01734, float("nan"), None)] == ["1414", "19.3", "0.0173", "—", "—"]
    t = pd.DataFrame({"MNIST": [0.9, 0.2, np.nan]}, index=["a", "b", "c"])
    html = best_styled(t, lower_better=True).to_html()
    assert html.count("#c7e9c0") == 1 and "0.200" in html and "—" in html


def test_live_key_is_stable_and_follows_content(tmp_path, monkeypatch):
    """The app keys live scorers (and what they computed) on content, so equal files give equal keys
    and a changed weights file or fit gives a new one — unlike id(), which Python reuses."""
    from studio import state

    ck, res = tmp_path / "checkpoints", tmp_path / "results"
    ck.mkdir()
    (ck / "m.json").write_text("{}")
    (ck / "m.safetensors").write_bytes(b"weights-1")
    monkeypatch.setenv("ROSE_CHECKPOINTS", str(ck))
    monkeypatch.setenv("ROSE_RESULTS", str(res))
    first = state.live_key("m", "ekfac")
    assert first == state.live_key("m", "ekfac") and first[:3] == ("live", "m", "ekfac")
    assert state.live_key("m", "diag") != first
    (ck / "m.safetensors").write_bytes(b"weights-2, longer")
    second = state.live_key("m", "ekfac")
    assert second != first
    (res / "m" / "fits").mkdir(parents=True)
    (res / "m" / "fits" / "rose-ekfac.json").write_text('{"n_fisher": 10}')
    assert state.live_key("m", "ekfac") not in (first, second)
    assert state.live_key("absent", "ekfac") is None


def test_verdict_words_name_the_test_that_fired_and_both_p_values():
    from studio.verdict import describe, meaning, p_text

    v = describe("typicality", 0.41, 0.0004, 0.0008, "rose+typicality")
    assert v.ood and v.headline == "OOD (typicality fired)"
    assert "Likelihood typicality fired" in v.detail
    assert "ROSE **0.4100**" in v.detail and "typicality **4.0e-04**" in v.detail and "combined **8.0e-04**" in v.detail
    calm = describe("none", 0.5, float("nan"), 0.9, "rose")
    assert not calm.ood and calm.headline == "in-distribution" and "typicality **—**" in calm.detail
    assert "combined" not in calm.detail and "ROSE alone" in calm.detail
    assert describe("joint", 0.02, 0.03, 0.004, "rose+typicality").headline == "OOD (ROSE + typicality together fired)"
    with pytest.raises(ValueError, match="fired"):
        describe("maybe", 0.1, 0.1, 0.1, "rose")
    with pytest.raises(ValueError, match="verdict test"):
        describe("rose", 0.1, 0.1, 0.1, "nll")
    words = meaning("rose+typicality", 0.95, "min-p")
    assert "95%" in words and "5%" in words and "min-p" in words and "too high *or* too low" in words
    assert "ROSE's p-value alone" in meaning("rose", 0.9)
    assert p_text(None) == "—" and p_text(0.5) == "0.5000"


def _stress_rows():
    rows = []
    for method, (auc, fa) in {"rose-ekfac": (0.99, 0.04), "rose+typicality": (1.0, 0.06)}.items():
        common = {"method": method, "threshold": 1.0, "threshold_rule": "r", "n_calibration": 500, "tpr": 0.95}
        rows += [{**common, "dataset": IN, "group": "in-distribution", "n_images": 500, "auroc": np.nan, "flagged": fa},
                 {**common, "dataset": "stress-black", "group": "ood", "n_images": 100, "auroc": auc, "flagged": 1.0},
                 {**common, "dataset": "stress-fmnist-jpeg75", "group": "covariate", "n_images": 100,
                  "auroc": 0.8, "flagged": 0.66},
                 {**common, "dataset": "stress-fmnist-shift1", "group": "benign", "n_images": 100,
                  "auroc": 0.5, "flagged": fa + 0.01}]
    return pd.DataFrame(rows)


def test_stress_view_groups_and_values(bundle):
    bundle.write("stress", _stress_rows())
    ood = bundle.stress_view(("ood",))
    assert list(ood.index) == ["rose-ekfac", "rose+typicality"] and list(ood.columns) == ["stress-black"]
    assert ood.loc["rose+typicality", "stress-black"] == 1.0                 # AUROC for the OOD group
    fa = bundle.stress_view(("in-distribution", "benign", "covariate"))
    assert list(fa.columns) == [IN, "stress-fmnist-shift1", "stress-fmnist-jpeg75"]  # false-alarm groups in order
    assert fa.loc["rose-ekfac", "stress-fmnist-jpeg75"] == 0.66              # fraction flagged, not AUROC
    assert fa.attrs["groups"]["stress-fmnist-shift1"] == "benign"
    assert bundle.stress_view(("nothing",)).empty


def test_report_stress_section_and_default_fit_description(bundle, tmp_path):
    bundle.write("stress", _stress_rows())
    m = bundle.manifest
    m["fit_data"] = {"name": IN, "default": "rose_core.defaults.fit_default_rose",
                     "variants": {"n_fit": 2000, "fit_fraction": 0.5}}
    m["in_distribution"]["sample"] = "evaluation half of the test split"
    m["experiments"] = {"stress": {"tpr": 0.95, "thresholds": {"other methods": "threshold_at_tpr"}}}
    bundle.write_manifest(m)
    text = build_report(tmp_path / "results", tmp_path / "none")
    assert "default ROSE: rose_core.defaults.fit_default_rose; explicit variants on 2000" in text
    assert "(seed 0, the evaluation half of the test split)" in text
    section = text.split("## Stress suite (`vae-fmnist`)")[1].split("\n## ")[0]
    assert "| ROSE+Typ | 1.000 |" in section                                   # AUROC of the OOD group
    assert "| ROSE-EKFAC | 4.0 % | 5.0 % | 66.0 % |" in section               # false alarms, in-dist first
    assert "stress-fmnist-jpeg75 (covariate)" in section and "real distribution shift" in section
    assert "Thresholds: other methods: threshold_at_tpr." in section


def test_key_figure_set_follows_the_paper_for_the_model():
    from rose_core.paper import key_ood_set

    assert key_ood_set("vae", "fashion-mnist", ["digits-on-photos", "mnist"]) == "mnist"
    assert key_ood_set("vae", "cifar10-subset", ["digits-on-photos", "mnist"]) == "digits-on-photos"  # SVHN stand-in
    assert key_ood_set("vae", "cifar10-subset", ["svhn", "digits-on-photos"]) == "svhn"              # the real set first
    assert key_ood_set("vae", "cifar10-subset", ["noise", "mnist"]) == "mnist"
    assert key_ood_set("vae", "a-users-folder", ["noise"]) == "noise" and key_ood_set(None, None, []) is None


def test_report_figure6_and_the_detector_table_from_the_shipped_bundles(tmp_path):
    """The committed classifier bundles give the Figure 6 section: one layer table per network in depth order,
    then ROSE beside pytorch-ood's detectors and the Fashion-MNIST generative models; no VAE settings
    (IWAE k) are printed for a classifier."""
    repo = Path(__file__).resolve().parents[1]
    root = tmp_path / "results"
    root.mkdir()
    for name in ("cls-basic-cnn-fmnist", "vae-fmnist"):
        (root / name).symlink_to(repo / "results" / name)
    text = build_report(root, repo / "checkpoints")
    section = text[text.index("## Figure 6"):]
    assert "### Basic CNN (`cls-basic-cnn-fmnist`)" in section
    depths = [int(line.split("|")[1]) for line in section.split("### ROSE beside")[0].splitlines()
              if line.startswith("| ") and line.split("|")[1].strip().isdigit()]
    assert depths == sorted(depths) and depths[0] == 1
    table = section.split("### ROSE beside")[1]
    assert "| Basic CNN | ROSE (DIAG) |" in table and "| Basic CNN | ViM (pytorch-ood) |" in table
    assert "| VAE `vae-fmnist` | ROSE-EKFAC |" in table
    assert "IWAE k = None" not in text and "`cls-basic-cnn-fmnist` settings (Figure 6 preset)" in text


def test_report_tables_10_11_put_the_cifar10_baselines_beside_the_paper(tmp_path):
    """The shipped CIFAR-10 bundle's perturbations run appears beside the paper's Tables 10/11 (rows by
    perturbation, read from each method's checkpoint name)."""
    from rose_core.reporting.experiments import _perturbation_of

    assert _perturbation_of("rnd:path=results/vae-cifar10/fits/rnd-dct") == "dct"
    assert _perturbation_of("rnd") == "svd" and _perturbation_of("likelihood-ratio") == "random"
    assert _perturbation_of("likelihood-ratio:background=checkpoints/vae-cifar10-background-gaussian") == "gaussian"
    repo = Path(__file__).resolve().parents[1]
    root = tmp_path / "results"
    root.mkdir()
    (root / "vae-cifar10").symlink_to(repo / "results" / "vae-cifar10")
    text = build_report(root, repo / "checkpoints")
    t10 = text[text.index("**Table 10 (Likelihood Ratio), ours (paper)**"):]
    assert "| Random0.2 (`likelihood-ratio`) |" in t10.split("**Table 11")[0]
    assert "(0.050)" in t10.split("**Table 11")[0]  # the paper's LRatio (Random0.2) on SVHN
    t11 = t10[t10.index("**Table 11 (RND)"):]
    assert all(f"| {p} (`rnd:path=" in t11 for p in ("SVD28", "DCT28", "GB", "Random0.2"))


def test_image_counts_note_for_a_method_without_an_mnist_row(tmp_path):
    """A method scored on one set only (e.g. Likelihood Regret on the SVHN stand-in) still reports its
    in-distribution image count (it used to be read from the method's MNIST row, hence 0)."""
    from rose_core.reporting.tables import _n_note

    res = Results(tmp_path / "results" / "vae-cifar10")
    res.write("metrics", pd.DataFrame([_metric("rose-ekfac", "mnist", 0.9, n_in=500, n_ood=200),
                                       _metric("likelihood-regret", "digits-on-photos", 0.6, n_in=8, n_ood=8)]))
    note = _n_note(Results(res.folder), ["rose-ekfac", "likelihood-regret"])
    assert "500 in-distribution images, mnist 200" in note
    assert "8 in-distribution images, digits-on-photos 8" in note


def test_report_puts_the_cifar10_glow_beside_the_papers_bottom_right_tables(tmp_path):
    """The shipped CIFAR-10 Glow bundle gets Tables 2/4/5 bottom right beside the paper's numbers, and the
    report says how it was trained instead of that it was not."""
    from rose_core.paper import PAPER

    assert PAPER["table4-glow-cifar10"]["values"]["Overall"]["rose-diag"] == 0.915
    assert PAPER["table5-glow-cifar10"]["values"]["SVHN"]["input-complexity-jp2"] == 0.029
    repo = Path(__file__).resolve().parents[1]
    root = tmp_path / "results"
    root.mkdir()
    (root / "glow-cifar10").symlink_to(repo / "results" / "glow-cifar10")
    text = build_report(root, repo / "checkpoints")
    for table, paper_overall in (("Table 2", "(0.932)"), ("Table 4", "(0.915)"), ("Table 5", "(0.072)")):
        section = text[text.index(f"## {table} bottom right (Glow, CIFAR-10 subset"):]
        overall = next(line for line in section.splitlines() if line.startswith("| Overall → overall"))
        assert paper_overall in overall, (table, overall)
    assert "The CIFAR-10 Glow (`glow-cifar10`) is trained" in text
    assert "The CIFAR-10 Glow has no bundle" not in text
    # Table 7 bottom: InvConv vs all layers, each row beside the paper's (its Overall last)
    section = text[text.index("## Table 7 (Glow, CIFAR-10 subset)"):].split("\n## ")[0]
    rows = {line.split(" (`")[0].lstrip("| "): line for line in section.splitlines() if "(`rose-diag" in line}
    assert rows["InvConv"].rstrip(" |").endswith("(0.932)") and rows["Full"].rstrip(" |").endswith("(0.809)")
    assert "Its Table 7 (all layers) is below." in text
