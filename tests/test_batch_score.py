"""Streaming batch scoring to Parquet (one process): schema, bad files, resuming, inputs, bad input.

A tiny VAE is saved to a temporary folder and fitted once on 48 Fashion-MNIST training images
(``python -m rose_core fit``); every test then runs ``python -m rose_core score`` in-process.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from rose_core.batch_score import (ImageInputs, folder_inputs, list_inputs, read_scores,
                                   score_inputs)
from rose_core.checkpoint import save_model
from rose_core.cli import main
from rose_core.data import is_available, load_dataset, prepare_images
from rose_core.errors import InvalidInput
from rose_core.metrics import threshold_at_tpr
from rose_core.models import VAE, VAEConfig
from rose_core.scorers.rose import RoseScorer

pytestmark = pytest.mark.skipif(not is_available("fashion-mnist", "train"),
                                reason="Fashion-MNIST is not available here (make data)")

LAYERS = ["encoder.0", "encoder.2", "encoder.5", "mu_head", "logvar_head"]
BAD = {"empty.png": "empty", "notes.txt": "text file", "broken/trunc.png": "truncated"}


@pytest.fixture(autouse=True)
def _one_thread():
    # Multi-threaded LAPACK (eigh in the EKFAC fit) crawls on a loaded 2-core machine.
    torch.set_num_threads(1)


def _tiny_vae(seed: int = 0, base_width: int = 4) -> VAE:
    torch.manual_seed(seed)
    return VAE(VAEConfig(base_width=base_width, latent_dim=3)).eval()


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """Checkpoint, fit, and a folder of good and bad files."""
    root = tmp_path_factory.mktemp("batch")
    save_model(_tiny_vae(), root / "tiny", dataset="fashion-mnist")
    rc = main(["fit", "--checkpoint", str(root / "tiny"), "--n-fisher", "48", "--n-calibration", "24",
               "--batch-size", "16", "--force", "--out", str(root / "fit.safetensors"), "--quiet"])
    assert rc == 0
    folder = root / "images"
    (folder / "sub" / "deeper").mkdir(parents=True)
    (folder / "broken").mkdir()
    ds = load_dataset("fashion-mnist", "test", n=8, seed=3)
    names = []
    for i, im in enumerate(ds.images):
        rel = ["a", "sub", "sub/deeper"][i % 3] + f"/img{i}.png" if i % 3 else f"img{i}.png"
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(im[..., 0]).save(folder / rel)
        names.append(rel)
    rgb = (np.random.default_rng(0).random((48, 64, 3)) * 255).astype(np.uint8)   # colour, other size
    Image.fromarray(rgb).save(folder / "colour.png")
    names.append("colour.png")
    (folder / "empty.png").write_bytes(b"")
    (folder / "notes.txt").write_text("not an image\n")
    data = (folder / "img0.png").read_bytes()
    (folder / "broken" / "trunc.png").write_bytes(data[: len(data) // 2])
    (folder / ".hidden.png").write_bytes(data)   # hidden files are skipped
    return {"root": root, "ckpt": root / "tiny", "fit": root / "fit.safetensors", "folder": folder,
            "good": sorted(names)}


def _score(env, out, *extra) -> int:
    return main(["score", "--checkpoint", str(env["ckpt"]), "--fit", str(env["fit"]), "--out", str(out),
                 "--quiet", "--batch-size", "4", "--workers", "1", *extra])


def _decode(path: Path) -> np.ndarray:
    from rose_core.imageio import read_image

    return prepare_images(read_image(path).array[None], 32, 1)[0]


def _reference(env, paths) -> dict:
    scorer = RoseScorer.load(env["fit"], _tiny_vae())
    x = torch.from_numpy(np.stack([_decode(env["folder"] / p) for p in paths])).permute(0, 3, 1, 2).float() / 255
    res = scorer.score(x)
    return {"score": res.score, "loss": res.extras["loss"], "raw": res.extras["layer_raw"], "z": res.extras["layer_z"]}


def test_folder_schema_bad_files_and_values(env, tmp_path):
    out = tmp_path / "scores.parquet"
    report = tmp_path / "report.json"
    assert _score(env, out, "--input", str(env["folder"]), "--report", str(report)) == 0
    df = pd.read_parquet(out)
    expected_cols = (["path", "rose_score", "nll_nats", "bits_per_dim", "verdict"] + [f"raw[{n}]" for n in LAYERS]
                     + [f"z[{n}]" for n in LAYERS] + ["error"])
    assert list(df.columns) == expected_cols
    assert df["path"].tolist() == sorted(env["good"] + list(BAD))   # sorted, recursive, hidden skipped
    bad = df.set_index("path").loc[list(BAD)]
    for name, word in BAD.items():
        assert word in bad.loc[name, "error"] and name.split("/")[-1] in bad.loc[name, "error"]
    assert bad[["rose_score", "nll_nats", "verdict"] + [f"z[{n}]" for n in LAYERS]].isna().all().all()
    good = df[df["error"].isna()].reset_index(drop=True)
    assert good["path"].tolist() == sorted(env["good"])

    ref = _reference(env, good["path"])
    np.testing.assert_allclose(good["rose_score"], ref["score"], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(good["nll_nats"], ref["loss"], rtol=1e-6)
    np.testing.assert_allclose(good["bits_per_dim"], ref["loss"] / (1024 * np.log(2)), rtol=1e-6)
    np.testing.assert_allclose(good[[f"raw[{n}]" for n in LAYERS]].to_numpy(), ref["raw"], rtol=1e-5)
    np.testing.assert_allclose(good[[f"z[{n}]" for n in LAYERS]].to_numpy(), ref["z"], rtol=1e-5, atol=1e-6)

    md = {k.decode(): v.decode() for k, v in pq.read_schema(out).metadata.items()}
    # the threshold comes from the fit's own held-out calibration scores
    threshold = threshold_at_tpr(RoseScorer.load(env["fit"], _tiny_vae()).calibration_scores, 0.95)
    assert float(md["rose.threshold"]) == threshold
    assert md["rose.key"] == "path" and json.loads(md["rose.layers"]) == LAYERS and "ELBO" in md["rose.nll"]
    assert (good["verdict"] == np.where(good["rose_score"] > threshold, "OOD", "in-distribution")).all()
    rep = json.loads(report.read_text())
    assert rep["scored"] == len(df) and rep["errors"] == 3 and rep["images_per_second"] > 0
    assert not (tmp_path / "scores.parquet.partial").exists()


def test_resume_after_more_files_and_after_a_crash(env, tmp_path):
    folder = tmp_path / "in"
    shutil.copytree(env["folder"], folder)
    out = tmp_path / "s.parquet"
    report = tmp_path / "r.json"
    assert _score(env, out, "--input", str(folder), "--limit", "5") == 0
    assert len(pd.read_parquet(out)) == 5
    assert _score(env, out, "--input", str(folder), "--report", str(report)) == 0
    rep = json.loads(report.read_text())
    df = pd.read_parquet(out)
    assert rep["already_done"] == 5 and rep["scored"] == len(df) - 5
    assert df["path"].is_unique and sorted(df["path"]) == sorted(folder_inputs(folder).keys)

    # A crash mid-run: segments of 2 rows survive, the rerun scores only what is missing.
    scorer = RoseScorer.load(env["fit"], _tiny_vae())
    inputs = folder_inputs(folder)
    out2 = tmp_path / "crash.parquet"
    real, calls = scorer.score, []

    def dying(x):
        calls.append(len(x))
        if len(calls) == 3:
            raise KeyboardInterrupt("killed")
        return real(x)

    scorer.score = dying
    with pytest.raises(KeyboardInterrupt):
        score_inputs(scorer, inputs, out2, threshold=1.0, batch_size=2, flush_rows=2)
    segments = sorted((tmp_path / "crash.parquet.partial").glob("*.parquet"))
    assert len(segments) == 2 and not out2.exists()
    scorer.score = real
    summary = score_inputs(scorer, inputs, out2, threshold=1.0, batch_size=2, flush_rows=2)
    assert summary.already_done == 4 and summary.scored == len(inputs) - 4
    full = pd.read_parquet(out2)
    assert full["path"].is_unique and sorted(full["path"]) == sorted(inputs.keys)
    assert not (tmp_path / "crash.parquet.partial").exists()

    # A crash between merging and deleting the segments: the stale segment is recognised, not merged twice.
    partial = tmp_path / "crash.parquet.partial"
    partial.mkdir()
    shutil.copy(out2, partial / "part.g0001.s000001.parquet")
    (folder / "new.png").write_bytes((folder / "img0.png").read_bytes())
    summary = score_inputs(scorer, folder_inputs(folder), out2, threshold=1.0, batch_size=2)
    assert summary.scored == 1
    again = pd.read_parquet(out2)
    assert again["path"].is_unique and len(again) == len(full) + 1
    # a different threshold is not mixed into the same output
    with pytest.raises(InvalidInput, match="another threshold"):
        score_inputs(scorer, folder_inputs(folder), out2, threshold=2.0)
    assert len(score_inputs(scorer, folder_inputs(folder), out2, threshold=2.0, overwrite=True).files) == 1
    assert len(pd.read_parquet(out2)) == len(again)


def test_segments_of_a_rank_that_no_longer_exists_are_taken_over(env, tmp_path):
    # A 2-process run was killed; rank 1 had written segments. Resumed with one process, they are adopted.
    scorer = RoseScorer.load(env["fit"], _tiny_vae())
    inputs = folder_inputs(env["folder"])
    out = tmp_path / "parts"
    real, calls = scorer.score, []

    def dying(x):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt("killed")
        return real(x)

    scorer.score = dying
    with pytest.raises(KeyboardInterrupt):
        score_inputs(scorer, inputs, out, threshold=1.0, batch_size=2, flush_rows=2)
    scorer.score = real
    for seg in sorted((out / "_partial").glob("part-00000.*.parquet")):
        seg.rename(seg.with_name(seg.name.replace("part-00000", "part-00001")))
    summary = score_inputs(scorer, inputs, out, threshold=1.0, batch_size=2)
    assert summary.already_done == 4
    assert sorted(p.name for p in out.iterdir()) == ["part-00000.parquet"]
    df = read_scores(out)
    assert df["path"].is_unique and sorted(df["path"]) == inputs.keys


def test_dataset_and_list_inputs(env, tmp_path):
    out = tmp_path / "ds"   # no .parquet suffix: a directory of parts
    assert _score(env, out, "--dataset", "fashion-mnist", "--split", "test", "--limit", "6", "--workers", "0") == 0
    assert (out / "part-00000.parquet").exists()
    df = read_scores(out)
    assert df["index"].tolist() == list(range(6)) and df["error"].isna().all()
    images = load_dataset("fashion-mnist", "test").images[:6]
    scorer = RoseScorer.load(env["fit"], _tiny_vae())
    x = torch.from_numpy(prepare_images(images, 32, 1)).permute(0, 3, 1, 2).float() / 255
    np.testing.assert_allclose(df["rose_score"], scorer.score(x).score, rtol=1e-4, atol=1e-6)

    lst = tmp_path / "files.txt"
    good = env["good"][:2]
    lst.write_text(f"# a comment\n{env['folder'] / good[0]}\n\n{good[1]}\nmissing.png\n{good[1]}\n")
    (tmp_path / Path(good[1]).parent).mkdir(parents=True, exist_ok=True)
    shutil.copy(env["folder"] / good[1], tmp_path / good[1])       # relative to the list file's folder
    inputs = list_inputs(lst)
    assert inputs.keys == [str(env["folder"] / good[0]), good[1], "missing.png"]
    out = tmp_path / "list.parquet"
    assert _score(env, out, "--list", str(lst)) == 0
    df = pd.read_parquet(out)
    assert df["path"].tolist() == inputs.keys
    assert df["error"].isna().tolist() == [True, True, False] and "cannot be read" in df["error"][2]


def test_bad_input_messages(env, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert _score(env, tmp_path / "x.parquet", "--input", str(empty)) == 2
    assert "No files found under" in capsys.readouterr().err
    assert _score(env, tmp_path / "x.parquet", "--input", str(tmp_path / "nope")) == 2
    assert "does not exist" in capsys.readouterr().err

    # a fit made for other weights, and for another architecture
    other = tmp_path / "other"
    save_model(_tiny_vae(seed=1), other, dataset="fashion-mnist")
    rc = main(["score", "--checkpoint", str(other), "--fit", str(env["fit"]), "--input", str(env["folder"]),
               "--out", str(tmp_path / "y.parquet"), "--quiet"])
    assert rc == 2 and "other weights" in capsys.readouterr().err
    wide = tmp_path / "wide"
    save_model(_tiny_vae(base_width=8), wide, dataset="fashion-mnist")
    rc = main(["score", "--checkpoint", str(wide), "--fit", str(env["fit"]), "--input", str(env["folder"]),
               "--out", str(tmp_path / "y.parquet"), "--quiet"])
    assert rc == 2 and "was made for a model with config" in capsys.readouterr().err

    # a fit without calibration scores (written by an older version) needs --threshold
    from rose_core.checkpoint import load_tensors, save_tensors

    tensors = {k: v for k, v in load_tensors(env["fit"].with_suffix(".safetensors")).items()
               if not k.startswith("calibration.")}
    card = json.loads(env["fit"].with_suffix(".json").read_text())
    card["weights_sha256"] = save_tensors(tensors, tmp_path / "nocal.safetensors")
    (tmp_path / "nocal.json").write_text(json.dumps(card))
    rc = main(["score", "--checkpoint", str(env["ckpt"]), "--fit", str(tmp_path / "nocal"), "--input",
               str(env["folder"]), "--out", str(tmp_path / "z.parquet"), "--quiet"])
    assert rc == 2 and "--threshold" in capsys.readouterr().err
    rc = main(["score", "--checkpoint", str(env["ckpt"]), "--fit", str(tmp_path / "nocal"), "--input",
               str(env["folder"]), "--out", str(tmp_path / "z.parquet"), "--quiet", "--threshold", "0.5"])
    assert rc == 0 and pq.read_schema(tmp_path / "z.parquet").metadata[b"rose.threshold"] == b"0.5"
    assert _score(env, tmp_path / "x.parquet", "--input", str(env["folder"]), "--tpr", "1.5") == 2


def test_auto_fit_is_made_once_and_reused(env, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("ROSE_RESULTS", str(tmp_path / "results"))
    args = ["score", "--checkpoint", str(env["ckpt"]), "--fit", "auto", "--n-fisher", "24", "--n-calibration", "16",
            "--force", "--input",
            str(env["folder"]), "--limit", "3", "--out", str(tmp_path / "a.parquet"), "--quiet",
            "--batch-size", "8", "--report", str(tmp_path / "r.json")]
    assert main(args) == 0
    fit_json = tmp_path / "results/cache/fits/tiny/rose-ekfac-fashion-mnist-fisher24-cal-seed0.json"
    card = json.loads(fit_json.read_text())
    assert card["calibrated"] and (card["n_fisher"], card["n_norm"]) == (24, 16)
    assert json.loads((tmp_path / "r.json").read_text())["fit_how"] == "fitted"
    assert main(args + ["--overwrite"]) == 0
    assert json.loads((tmp_path / "r.json").read_text())["fit_how"] == "loaded"


def test_folder_listing(tmp_path):
    (tmp_path / "b").mkdir()
    for rel in ["b/2.PNG", "a.png", "b/1.jpg", "c.txt", ".git/x.png", "b/.y.png", "out/part-00000.parquet"]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")
    assert folder_inputs(tmp_path, exclude=[tmp_path / "out"]).keys == ["a.png", "b/1.jpg", "b/2.PNG", "c.txt"]
    assert folder_inputs(tmp_path, ["png"]).keys == ["a.png", "b/2.PNG"]
    with pytest.raises(InvalidInput, match="No files with extension .webp"):
        folder_inputs(tmp_path, ["webp"])
    inputs = ImageInputs("dataset", [0, 1, 2], "d", images=np.zeros((3, 4, 4, 1), np.uint8))
    assert inputs.limit(2).keys == [0, 1] and inputs.key_column == "index"


def test_summary_idle_fraction_is_the_share_spent_waiting_for_decoded_batches():
    from rose_core.batch_score import ScoreSummary

    s = ScoreSummary(inputs=10, already_done=0, scored=10, errors=0, seconds=4.0, threshold=1.0,
                     out=Path("x.parquet"), wait_seconds=1.0, model_seconds=2.5)
    assert s.idle_fraction == pytest.approx(0.25)
    assert np.isnan(ScoreSummary(inputs=0, already_done=0, scored=0, errors=0, seconds=0.0, threshold=1.0,
                                 out=Path("x.parquet")).idle_fraction)
