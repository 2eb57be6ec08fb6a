"""The evaluation harness on a tiny VAE and tiny synthetic datasets (fast, CPU).

Checks: the bundle's tables follow rose_core.results' schema; the metrics recomputed from the
stored scores equal the stored metrics; a re-run is served from the cache (no scorer call);
the Overall set's composition; the brightness preset gives one metric row per strength; the
shared-NLL shortcuts equal the real scorers.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch

from rose_core.checkpoint import save_model
from rose_core.data import registry
from rose_core.data.registry import DatasetCard, load_dataset, register
from rose_core.evaluation import (BRIGHTNESS, EvalSettings, Evaluation, compute_metrics, overall_pick,
                                  parse_method, run_preset, subset_indices)
from rose_core.metrics import ood_metrics
from rose_core.models import VAE, VAEConfig
from rose_core.results import TABLES, Results

IN, OOD_A, OOD_B = "tiny-in", "tiny-ood-a", "tiny-ood-b"
N_FISHER = 24
"""Fisher images of the default ROSE fit in these tests (``settings.rose``: the tiny set has 60)."""


def _fake_defaults():
    """A small stand-in for ``rose_core.defaults`` with its documented interface (used only while
    the real module is absent): Fisher on ``n_fisher`` training images, normalisation and
    calibration on the calibration half of the test split."""
    import types
    from dataclasses import asdict, dataclass

    from rose_core.data.preprocess import to_model_input
    from rose_core.data.splits import calibration_images
    from rose_core.scorers.rose import RoseScorer

    @dataclass
    class RoseDefaults:
        fisher: str
        layers: str
        n_fisher: int
        damping: float
        p: float
        beta: float
        aggregation: str

    def default_rose(model):
        return RoseDefaults("ekfac" if model.kind == "vae" else "diag", "default", 1000, 1e-3, math.inf, 0.0, "relu")

    def fit_default_rose(model, dataset, *, progress=None, root=None, **overrides):
        d = {**asdict(default_rose(model)), **overrides}
        size, channels = model.input_shape[1], model.input_shape[0]
        x = to_model_input(load_dataset(dataset, "train", n=d["n_fisher"], seed=0, root=root).images, size, channels)
        cal = to_model_input(calibration_images(dataset, root=root).images, size, channels)
        return RoseScorer(model, fisher=d["fisher"], layers=d["layers"], damping=d["damping"], p=d["p"],
                          beta=d["beta"], aggregation=d["aggregation"]).fit(x, calibration=cal)

    return types.SimpleNamespace(RoseDefaults=RoseDefaults, default_rose=default_rose,
                                 fit_default_rose=fit_default_rose)


def _blobs(n: int, seed: int, bright: bool) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 60, size=(n, 28, 28, 1), dtype=np.uint8)
    if bright:
        x[:, 8:20, 8:20] += 150
    return x


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A tiny VAE (+ background VAE) checkpoint and three registered tiny datasets."""
    root = tmp_path_factory.mktemp("eval")
    mp = pytest.MonkeyPatch()
    mp.setenv("ROSE_DATA", str(root / "data"))
    try:
        import rose_core.defaults  # noqa: F401
    except ImportError:
        import sys
        mp.setitem(sys.modules, "rose_core.defaults", _fake_defaults())
    cards = {
        IN: DatasetCard(name=IN, title="tiny in", source="test", licence="none", real=True, splits=("train", "test")),
        OOD_A: DatasetCard(name=OOD_A, title="tiny ood a", source="test", licence="none", real=True),
        OOD_B: DatasetCard(name=OOD_B, title="tiny ood b (stand-in)", source="test", licence="none", real=False,
                           stands_in_for="Something"),
    }
    register(cards[IN], lambda split: (_blobs(60 if split == "train" else 40, 1 if split == "train" else 2, True), None))
    register(cards[OOD_A], lambda split: (_blobs(30, 3, False), None))
    register(cards[OOD_B], lambda split: (np.full((12, 32, 32, 3), 128, np.uint8), None))
    torch.manual_seed(0)
    vae = VAE(VAEConfig(base_width=4, latent_dim=3)).eval()
    save_model(vae, root / "ckpt" / "tiny-vae", dataset=IN, epochs=0, test_bits_per_dim=8.0)
    torch.manual_seed(1)
    save_model(VAE(VAEConfig(base_width=4, latent_dim=3)).eval(), root / "ckpt" / "tiny-vae-background", dataset=IN,
               epochs=0, noise_fraction=0.3)
    yield root
    for name in cards:
        registry._REGISTRY.pop(name, None)
    mp.undo()


METHODS = ["rose-ekfac", "rose-diag", "nll", "input-complexity-png", "likelihood-ratio",
           "likelihood-regret:elbo_samples=0,steps=2"]


def _settings(**kw):
    base = dict(n_in=20, n_ood=10, ood_sets=[OOD_A, OOD_B], methods=METHODS, n_fit=24, k=2, batch_size=8, chunk=16,
                caps={"likelihood-regret": 5}, overall_per_set=6, rose={"n_fisher": N_FISHER})
    base.update(kw)
    return EvalSettings(**base)


def _ev(world, **kw):
    return Evaluation(world / "ckpt" / "tiny-vae", results=world / "results", settings=_settings(**kw),
                      show_progress=False)


@pytest.fixture(scope="module")
def bundle(world):
    ev = _ev(world)
    ev.table2()
    return ev


def test_tables_match_schema(bundle):
    res = Results.for_checkpoint("tiny-vae", bundle.bundle.folder.parent)
    for name in ("scores", "layers", "metrics", "layer_metrics"):
        frame = pd.read_parquet(res.folder / f"{name}.parquet")
        assert list(frame.columns) == TABLES[name], name
        assert len(frame) > 0, name
    s = res.table("scores")
    assert set(s["method"]) == {parse_method(m).name for m in METHODS}
    assert s["is_ood"].dtype == bool and s.loc[s["dataset"] == IN, "is_ood"].eq(False).all()
    assert s["strength"].isna().all() and (s["perturbation"] == "none").all()
    assert np.isfinite(s["score"]).all()
    # Likelihood methods carry the NLL in nats; ROSE has none.
    assert s.loc[s["method"] == "nll", "nll_nats"].notna().all()
    assert s.loc[s["method"] == "rose-ekfac", "nll_nats"].isna().all()
    # Caps: Likelihood Regret scored 5 images per set, a subset of the others' images.
    lr = s[s["method"].str.startswith("likelihood-regret")]
    assert lr.groupby("dataset").size().max() == 5
    nll_idx = set(s.loc[(s["method"] == "nll") & (s["dataset"] == IN), "index"])
    assert set(lr.loc[lr["dataset"] == IN, "index"]) <= nll_idx
    # Layers: one row per image × layer × fisher, for the two main ROSE scorers.
    lay = res.table("layers")
    n_layers = lay["layer"].nunique()
    assert set(lay["fisher"]) == {"diag", "ekfac"}
    assert len(lay) == 2 * n_layers * len(s[s["method"] == "rose-ekfac"])
    # Fits saved for the app.
    for f in ("rose-ekfac", "rose-diag"):
        assert (res.folder / "fits" / f"{f}.safetensors").exists() and (res.folder / "fits" / f"{f}.json").exists()
    m = res.manifest
    assert m["in_distribution"]["name"] == IN and m["caps"]["likelihood-regret"] == 5
    assert m["ood_sets"][OOD_B]["stand_in"] is True and m["ood_sets"][OOD_A]["stand_in"] is False
    assert m["checkpoint"]["card"]["test_bits_per_dim"] == 8.0
    assert "table2" in m["experiments"]


def test_indices_match_load_dataset(bundle):
    full = load_dataset(IN, "test")
    sub = load_dataset(IN, "test", n=20, seed=0)
    idx = subset_indices(len(full), 20, 0)
    np.testing.assert_array_equal(full.images[idx], sub.images)
    s = bundle.bundle.table("scores")
    assert sorted(s.loc[(s["method"] == "nll") & (s["dataset"] == IN), "index"]) == idx.tolist()


def test_metrics_recomputed_from_scores(bundle):
    res = bundle.bundle
    scores, metrics = res.table("scores"), res.table("metrics")
    for _, row in metrics[metrics["ood_set"] != "overall"].iterrows():
        s = scores[scores["method"] == row["method"]]
        m = ood_metrics(s.loc[s["dataset"] == IN, "score"], s.loc[s["dataset"] == row["ood_set"], "score"])
        for key in ("auroc", "auprc_in", "auprc_out", "fpr80", "fpr95", "n_in", "n_ood"):
            assert m[key] == pytest.approx(row[key]), (row["method"], row["ood_set"], key)
    again, _ = compute_metrics(scores, IN, 6, 0)
    pd.testing.assert_frame_equal(again.reset_index(drop=True), metrics.reset_index(drop=True), check_dtype=False)
    # Layer metrics: each layer's raw score alone.
    from rose_core.metrics import auroc
    lay, lm = res.table("layers"), res.table("layer_metrics")
    row = lm[lm["ood_set"] == OOD_A].iloc[0]
    g = lay[(lay["fisher"] == row["fisher"]) & (lay["layer"] == row["layer"])]
    assert auroc(g.loc[g["dataset"] == IN, "raw"], g.loc[g["dataset"] == OOD_A, "raw"]) == pytest.approx(row["auroc"])


def test_overall_composition(bundle):
    res = bundle.bundle
    scores, metrics = res.table("scores"), res.table("metrics")
    comp = res.manifest["overall"]["composition"]
    # OOD_A has 10 scored images -> 6 in Overall; OOD_B has 12 images, 10 scored -> 6.
    assert comp["nll"] == {OOD_A: 6, OOD_B: 6}
    assert comp["likelihood-regret:elbo_samples=0,steps=2"] == {OOD_A: 5, OOD_B: 5}
    s = scores[scores["method"] == "nll"]
    pooled = []
    for ds in (OOD_A, OOD_B):
        g = s[s["dataset"] == ds]
        pick = overall_pick(g["index"].to_numpy(), ds, 6, 0)
        pooled.append(g[g["index"].isin(pick)]["score"].to_numpy())
    want = ood_metrics(s.loc[s["dataset"] == IN, "score"], np.concatenate(pooled))
    got = metrics[(metrics["method"] == "nll") & (metrics["ood_set"] == "overall")].iloc[0]
    assert got["auroc"] == pytest.approx(want["auroc"]) and got["n_ood"] == 12


def test_rerun_hits_the_cache(world, bundle):
    before = pd.read_parquet(bundle.bundle.folder / "scores.parquet")
    ev = _ev(world)
    ev.table2()
    assert ev.scorer_calls == {}
    pd.testing.assert_frame_equal(pd.read_parquet(bundle.bundle.folder / "scores.parquet"), before)
    # A different seed is another input: recomputed (only for the method asked for).
    ev2 = _ev(world, seed=1, methods=["nll"])
    ev2.table2()
    assert ev2.scorer_calls.get("nll", 0) > 0
    # Back to seed 0: nll must be recomputed (its rows were replaced), the others still cached.
    ev3 = _ev(world)
    ev3.table2()
    assert set(ev3.scorer_calls) == {"nll"}  # IC and LRatio read their own cached rows
    assert ev3.scorer_calls["nll"] > 0


def test_aggregation_variant_reuses_layers(world, bundle):
    ev = _ev(world, methods=["rose-ekfac:p=2"])
    ev.table2()
    assert "rose-ekfac:p=2" not in ev.scorer_calls  # derived from the stored layer z-scores
    from rose_core.scorers.rose import aggregate
    lay = ev.bundle.table("layers")
    s = ev.bundle.table("scores")
    g = lay[(lay["fisher"] == "ekfac") & (lay["dataset"] == IN)].pivot(index="index", columns="layer", values="z")
    names = ev.rose_scorer("rose-ekfac").layer_names
    want = aggregate(g[names].to_numpy(), p=2)
    got = s[(s["method"] == "rose-ekfac:p=2") & (s["dataset"] == IN)].set_index("index").loc[g.index, "score"]
    np.testing.assert_allclose(got.to_numpy(), want)


def test_shared_nll_equals_real_scorers(bundle):
    from rose_core.scorers.registry import build_scorer

    ev = bundle
    s = ev.bundle.table("scores")
    idx = np.sort(s.loc[(s["method"] == "nll") & (s["dataset"] == OOD_A), "index"].to_numpy())[:4]
    x = ev.inputs(OOD_A, idx)
    for method, kwargs in [("input-complexity-png", {}),
                           ("likelihood-ratio", {"background_model": ev.scorer("likelihood-ratio").background_model}),
                           ("nll", {})]:
        real = build_scorer(method, ev.model, k=ev.settings.k, seed=ev.settings.seed, **kwargs).score(x).score
        stored = s[(s["method"] == method) & (s["dataset"] == OOD_A)].set_index("index").loc[idx, "score"]
        np.testing.assert_allclose(stored.to_numpy(), real, rtol=1e-6, atol=1e-6)


def test_brightness_one_row_per_strength(world, bundle):
    ev = _ev(world, methods=["nll", "rose-diag"])
    out = ev.brightness(ood_sets=[OOD_A], methods=["nll", "rose-diag"], n=6)
    for m in ("nll", "rose-diag"):
        rows = out[(out["method"] == m) & (out["ood_set"] == OOD_A)]
        assert sorted(rows["strength"]) == pytest.approx(list(BRIGHTNESS))
        assert len(rows) == len(BRIGHTNESS)
    s = ev.bundle.table("scores")
    # Only the OOD images are brightened: no perturbed in-distribution rows.
    assert not ((s["dataset"] == IN) & (s["perturbation"] == "brightness")).any()
    # Brightness 1.0 is the identity: same scores as the unperturbed images with the same indices.
    b1 = s[(s["method"] == "nll") & (s["perturbation"] == "brightness") & ((s["strength"] - 1.0).abs() < 1e-9)]
    none = s[(s["method"] == "nll") & (s["perturbation"] == "none") & (s["dataset"] == OOD_A)].set_index("index")
    common = sorted(set(b1["index"]) & set(none.index))
    assert common
    np.testing.assert_allclose(b1.set_index("index").loc[common, "score"], none.loc[common, "score"])
    assert ev.bundle.manifest["experiments"]["brightness"]["perturbed"] == "OOD images only"


def test_throughput_and_fisher_samples_and_capacity(world, bundle):
    ev = _ev(world, methods=["rose-diag", "nll"])
    tp = ev.throughput(n=4, min_seconds=0.0)
    assert list(tp.columns) == TABLES["throughput"] and set(tp["method"]) == {"rose-diag", "nll"}
    assert (tp["images_per_s"] > 0).all()
    fs = ev.fisher_samples(sizes=[4, 8], repeats=2, fisher="diag", n_norm=6, n_eval_in=10, n_eval_per_set=4)
    assert list(fs.columns) == TABLES["fisher_samples"]
    assert len(fs[fs["ood_set"] == "overall"]) == 4
    info = ev.capacity()
    assert set(info["missing"]) == {"x0.5", "x2", "x4"}
    assert "--capacity 2 --out" in info["missing"]["x2"]
    assert "capacity" in ev.bundle.manifest["experiments"]


def test_progress_callback_and_run_preset(world, tmp_path):
    calls = []
    run_preset("table2", world / "ckpt" / "tiny-vae", results=tmp_path, show_progress=False,
               settings=_settings(methods=["nll"]), progress=lambda d, t, msg: calls.append((d, t, msg)))
    assert calls and calls[-1][0] == calls[-1][1]
    man = json.loads((tmp_path / "tiny-vae" / "manifest.json").read_text())
    assert man["checkpoint"]["weights_sha256"]
    with pytest.raises(ValueError):
        parse_method("rose-ekfac:bogus=1")
    assert parse_method("rose-ekfac:p=2.0,aggregation=max").name == "rose-ekfac:aggregation=max,p=2"
    assert math.isinf(parse_method("rose-diag:p=inf").opts["p"])


def test_cli_evaluate_and_report(world, bundle, tmp_path, capsys):
    from rose_core.cli import main

    ckpt = str(world / "ckpt" / "tiny-vae")
    argv = ["evaluate", "--checkpoint", ckpt, "--results", str(world / "results"), "--n-in", "20", "--n-ood", "10",
            "--ood-sets", f"{OOD_A},{OOD_B}", "--methods", "nll,rose-diag", "--n-fit", "24", "--k", "2",
            "--batch-size", "8", "--overall-per-set", "6", "--cap", "likelihood-regret=5", "--quiet"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "table2 on tiny-vae" in out and "nll" in out
    man = json.loads((world / "results" / "tiny-vae" / "manifest.json").read_text())
    assert "table2" in man["experiments"]
    report = tmp_path / "results.md"
    assert main(["report", "--results", str(world / "results"), "--out", str(report),
                 "--checkpoints", str(world / "ckpt")]) == 0
    text = report.read_text()
    assert "# Results" in text and "tiny-vae" in text and "What could not be run" in text
    assert f"{OOD_B}` †" in text  # the stand-in is marked


def test_two_sessions_on_one_bundle_keep_each_others_rows(world, bundle):
    """Two Evaluation objects (as two processes would) writing the same bundle in turns: the lock
    and the re-read keep both sessions' rows and manifest entries."""
    a = _ev(world, methods=["nll"])
    b = _ev(world, methods=["input-complexity-png"])
    a.refresh(), b.refresh()
    a.brightness(ood_sets=[OOD_A], methods=["nll"], strengths=[0.5], n=4)
    b.brightness(ood_sets=[OOD_A], methods=["input-complexity-png"], strengths=[0.5], n=4)
    s = Results(bundle.bundle.folder).table("scores")
    half = s[(s["perturbation"] == "brightness") & ((s["strength"] - 0.5).abs() < 1e-9)]
    assert set(half["method"]) >= {"nll", "input-complexity-png"}
    cache = Results(bundle.bundle.folder).manifest["cache"]
    assert "nll|tiny-ood-a|brightness|0.5|0" in cache and "input-complexity-png|tiny-ood-a|brightness|0.5|0" in cache


def test_method_registry_parses_and_names_specs():
    """rose_core.methods: one parser (normalised names, clear errors) and one display rule."""
    from rose_core.methods import (METHODS, default_methods, method_order, method_short, method_title,
                                   split_methods)

    spec = parse_method("ROSE_EKFAC: normalization=same , n_fit=10000")
    assert spec.name == "rose-ekfac:n_fit=10000,normalization=same" and spec.is_legacy_rose
    assert parse_method("rose-ekfac:n_fisher=5000").is_legacy_rose is False
    assert parse_method("rose+typicality:fisher=diag").fisher == "diag"
    for bad, words in [("rose-foo", "Unknown method"), ("nll:k=3", "takes no option"),
                       ("rose-ekfac:p", "key=value"), ("rose-ekfac:p=1,p=2", "twice"),
                       ("typicality:fisher=kfac", "ekfac or diag")]:
        with pytest.raises(ValueError, match=words):
            parse_method(bad)
    assert split_methods("nll,rose-ekfac:p=2,aggregation=max,rose-diag") == [
        "nll", "rose-ekfac:p=2,aggregation=max", "rose-diag"]
    assert method_title("rose-ekfac") == "ROSE (EKFAC)" and method_short("rose-ekfac") == "ROSE-EKFAC"
    assert method_title("rnd:path=checkpoints/rnd-fmnist-dct") == "RND (DCT)"
    assert method_short("rnd:path=checkpoints/rnd-fmnist-dct") == "RND (DCT)" and method_short("rnd") == "SVD-RND"
    assert method_short("likelihood-ratio:background=ck/vae-background-random") == "LRatio (Random)"
    assert method_title("rose-ekfac:p=2") == "ROSE (EKFAC) [p=2]"
    assert method_title("an-old-name") == "an-old-name"
    assert method_order(["nll", "rnd:path=x", "rose-diag", "rnd", "rose-ekfac"]) == [
        "rose-ekfac", "rose-diag", "nll", "rnd", "rnd:path=x"]
    for kind in ("vae", "glow"):
        ms = default_methods(kind)
        assert {"rose+typicality", "typicality", "nll"} <= set(ms) and all(kind in METHODS[m].kinds for m in ms)
    assert "likelihood-regret" not in default_methods("glow")


def test_infinite_scores_rank_and_nan_is_refused():
    """An +inf OOD score ranks above every finite score (it is not dropped); NaN is an error."""
    from rose_core.evaluation import compute_metrics, finite_scores, safe_metrics

    m = safe_metrics([0.0, 1.0, 2.0], [np.inf, 3.0])
    assert m["auroc"] == 1.0 and m["n_ood"] == 2  # nothing dropped
    assert safe_metrics([0.0, np.inf], [1.0])["auroc"] == 0.5  # the +inf in-distribution image outranks it
    a, b = finite_scores([-np.inf, 0.0], [np.inf, 5.0])
    assert np.isfinite(a).all() and np.isfinite(b).all() and a[0] < 0.0 and b[0] > 5.0
    with pytest.raises(ValueError, match="NaN"):
        safe_metrics([0.0, np.nan], [1.0])
    frame = pd.DataFrame({"dataset": ["i", "i", "o"], "is_ood": [False, False, True], "index": [0, 1, 0],
                          "method": "m", "perturbation": "none", "strength": np.nan, "repeat": 0,
                          "score": [0.0, 1.0, np.nan], "nll_nats": np.nan})
    with pytest.raises(ValueError, match="m on o"):
        compute_metrics(frame, "i")


def test_samples_come_from_the_split_halves(world, bundle):
    """In-distribution evaluation images are evaluation_sample's; calibration rows never reach a metric."""
    from rose_core.data.splits import calibration_images, evaluation_sample
    from rose_core.evaluation.sampling import calibration_indices, evaluation_indices

    full = load_dataset(IN, "test")
    for n, seed in [(20, 0), (7, 0), (7, 3)]:
        np.testing.assert_array_equal(full.images[evaluation_indices(IN, n, seed)],
                                      evaluation_sample(IN, n, seed).images)
    np.testing.assert_array_equal(full.images[calibration_indices(IN, 5)], calibration_images(IN, 5).images)
    assert not set(evaluation_indices(IN, None, 0)) & set(calibration_indices(IN))


def test_default_rose_and_typicality_methods(world, bundle):
    """Plain ROSE is the project's default fit (calibrated on the calibration half); the typicality
    methods reproduce their scorers on that fit; training-split variants keep their own fit."""
    from rose_core.scorers.rose import RoseScorer
    from rose_core.scorers.typicality import RoseTypicalityScorer, TypicalityScorer

    ev = _ev(world, methods=["rose-ekfac", "typicality", "rose+typicality", "rose-ekfac:n_fit=24,normalization=same"])
    ev.table2()
    fits = ev.bundle.manifest["fits"]
    assert fits["rose-ekfac"]["key"]["definition"] == "rose_core.defaults.fit_default_rose"
    assert fits["rose-ekfac"]["n_fisher"] == N_FISHER and fits["rose-ekfac"]["calibrated"] is True
    legacy = fits["rose-ekfac-n_fit-24-normalization-same"]["key"]
    assert legacy["split"] == "train" and legacy["n_fit"] == 24 and "definition" not in legacy
    s = ev.bundle.table("scores")
    idx = np.sort(s.loc[(s["method"] == "typicality") & (s["dataset"] == OOD_A), "index"].to_numpy())
    x = ev.inputs(OOD_A, idx)
    fit = RoseScorer.load(ev.bundle.folder / "fits" / "rose-ekfac", ev.model)
    want_typ = TypicalityScorer(ev.model).fit_losses(fit.calibration_loss).score(x).score
    want_comb = RoseTypicalityScorer(fit).fit().score(x).score
    for method, want in (("typicality", want_typ), ("rose+typicality", want_comb)):
        got = s[(s["method"] == method) & (s["dataset"] == OOD_A)].set_index("index").loc[idx, "score"]
        np.testing.assert_allclose(got.to_numpy(), want, rtol=1e-5, atol=1e-5)
    # the option of a spec overrides the default's field: another fit
    assert ev._rose_fit_key(parse_method("rose-ekfac:n_fisher=12"))["n_fisher"] == 12


def test_stress_preset_thresholds_from_the_calibration_half(world, bundle):
    from rose_core.evaluation import CALIBRATION
    from rose_core.metrics import threshold_at_tpr

    cards = {"tiny-stress-ood": "ood", "tiny-stress-benign": "benign"}
    for name, group in cards.items():
        register(DatasetCard(name=name, title=name, source="test", licence="none", real=False, stress_group=group),
                 lambda split, bright=(group == "benign"), seed=len(name): (_blobs(16, seed, bright), None))
    try:
        ev = _ev(world, methods=["nll", "rose-diag", "rose+typicality"])
        out = ev.stress(sets={"ood": ["tiny-stress-ood"], "benign": ["tiny-stress-benign"]})
        assert set(out["group"]) == {"in-distribution", "ood", "benign"}
        assert len(out) == 3 * 3
        s = ev.bundle.table("scores")
        cal = s[(s["method"] == "nll") & (s["perturbation"] == CALIBRATION)]
        assert len(cal) == 20 and not cal["is_ood"].any()  # the calibration half of 40 test images
        row = out[(out["method"] == "nll") & (out["group"] == "in-distribution")].iloc[0]
        t = threshold_at_tpr(cal["score"], 0.95)
        ind = s[(s["method"] == "nll") & (s["dataset"] == IN) & (s["perturbation"] == "none")]["score"]
        assert row["threshold"] == pytest.approx(t) and row["flagged"] == pytest.approx(float(np.mean(ind > t)))
        comb = out[(out["method"] == "rose+typicality") & (out["group"] == "benign")].iloc[0]
        assert comb["threshold"] == pytest.approx(ev.scorer("rose+typicality").threshold_at(0.95))
        assert "leave-one-out" in comb["threshold_rule"]
        metrics = ev.bundle.table("metrics")
        assert CALIBRATION not in set(metrics["perturbation"])
        assert "tiny-stress-ood" not in ev.bundle.manifest["overall"]["composition"]["nll"]
        assert list(pd.read_parquet(ev.bundle.folder / "stress.parquet").columns)[:4] == [
            "method", "dataset", "group", "n_images"]
        assert "stress" in ev.bundle.manifest["experiments"]
    finally:
        for name in cards:
            registry._REGISTRY.pop(name, None)


@pytest.mark.parametrize("extra, words", [
    (["--preset", "table99"], "unknown preset 'table99'"),
    (["--methods", "rose-foo"], "Unknown method 'rose-foo'"),
    (["--methods", "nll:k=3"], "takes no option"),
    (["--ood-sets", "no-such-set"], "not a known dataset"),
    (["--cap", "likelihood-regret=lots"], "whole number"),
    (["--rose", "bogus=1"], "--rose takes"),
    (["--n-ood", "0"], "--n-ood must be >= 1"),
])
def test_cli_evaluate_refuses_bad_arguments_before_loading(world, monkeypatch, capsys, extra, words):
    import rose_core.checkpoint
    from rose_core.cli import main

    def boom(*a, **k):
        raise AssertionError("the model was loaded before the arguments were checked")

    monkeypatch.setattr(rose_core.checkpoint, "load_model", boom)
    argv = ["evaluate", "--checkpoint", str(world / "ckpt" / "tiny-vae"), "--results", str(world / "results"),
            "--quiet", *extra]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and words in err and "Traceback" not in err


def test_cli_report_refuses_a_missing_or_empty_results_folder(tmp_path, capsys):
    from rose_core.cli import main

    out = tmp_path / "results.md"
    for folder in (tmp_path / "nowhere", tmp_path):
        assert main(["report", "--results", str(folder), "--out", str(out)]) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and str(folder) in err
    assert not out.exists()


def test_perturbations_preset_finds_blurred_backgrounds_and_names_the_missing(world, tmp_path):
    """Tables 10/11: a ``<checkpoint>-background-svd`` whose card says ``perturbation: svd`` is scored as the
    Likelihood Ratio's SVD row; the missing DCT/Gaussian backgrounds are listed with their train command."""
    from rose_core.checkpoint import card_path, weights_path

    stem = world / "ckpt" / "tiny-vae-background-svd"
    torch.manual_seed(2)
    save_model(VAE(VAEConfig(base_width=4, latent_dim=3)).eval(), stem, dataset=IN, epochs=0, perturbation="svd",
               perturbation_strength=28)
    try:
        ev = Evaluation(world / "ckpt" / "tiny-vae", results=tmp_path / "results",   # a bundle of its own
                        settings=_settings(ood_sets=[OOD_A]), show_progress=False)
        table = ev.perturbations(ood_sets=[OOD_A])
        assert f"likelihood-ratio:background={stem}" in set(table["method"])
        missing = ev.bundle.meta["experiments"]["perturbations"]["missing"]
        assert "likelihood-ratio (svd)" not in missing and "likelihood-ratio (random)" not in missing
        for pert in ("dct", "gaussian"):
            assert f"--perturbation {pert} --out {world / 'ckpt' / 'tiny-vae'}-background-{pert}" in \
                missing[f"likelihood-ratio ({pert})"]
    finally:
        card_path(stem).unlink()
        weights_path(stem).unlink()
