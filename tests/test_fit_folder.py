"""``python -m rose_core fit --data FOLDER``: a folder of images (flat or class subfolders, good and bad
files) as the in-distribution data, with a held-out split or ``--calibration-data`` for calibration."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from rose_core.checkpoint import save_model
from rose_core.cli import main
from rose_core.commands import file_list_sha256, folder_split
from rose_core.models import VAE, VAEConfig
from rose_core.scorers.rose import RoseScorer


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


def _write_images(folder: Path, n: int, seed: int, layout: str = "classes") -> list[str]:
    """``n`` PNGs (greyscale 28×28 and RGB 40×36, i.e. other sizes and channels than the model's)."""
    rng = np.random.default_rng(seed)
    names = []
    for i in range(n):
        rel = f"{'cat' if i % 2 else 'dog'}/img{i:02d}.png" if layout == "classes" else f"img{i:02d}.png"
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        if i % 4 == 3:
            arr = (rng.random((40, 36, 3)) * 255).astype(np.uint8)
        else:
            arr = (rng.random((28, 28)) * 128 + 64 * (i % 2)).astype(np.uint8)
        Image.fromarray(arr).save(folder / rel)
        names.append(rel)
    return names


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("fitfolder")
    torch.manual_seed(0)
    save_model(VAE(VAEConfig(base_width=4, latent_dim=3)).eval(), root / "tiny", dataset="fashion-mnist")
    data = root / "data"
    good = _write_images(data, 24, seed=0)
    good_bytes = (data / good[0]).read_bytes()
    (data / "cat" / "zz_trunc.png").write_bytes(good_bytes[: len(good_bytes) // 2])
    (data / "notes.txt").write_text("not an image\n")
    (data / ".hidden.png").write_bytes(good_bytes)   # hidden: not listed
    files = sorted(good + ["cat/zz_trunc.png", "notes.txt"])
    return {"root": root, "ckpt": root / "tiny", "data": data, "files": files}


def _fit(env, out, *extra) -> int:
    return main(["fit", "--checkpoint", str(env["ckpt"]), "--out", str(out), "--fisher", "diag", "--batch-size", "8",
                 "--force", "--quiet", *extra])


def test_folder_split_is_every_fifth_file_and_disjoint():
    fisher, cal = folder_split(12)
    assert cal == [4, 9]
    assert fisher == [0, 1, 2, 3, 5, 6, 7, 8, 10, 11]
    assert file_list_sha256(["b", "a"]) == hashlib.sha256(b"a\nb").hexdigest()


def test_fit_on_a_folder_records_the_data_and_reports_bad_files(env, capsys):
    out = env["root"] / "fit-split"
    assert _fit(env, out, "--data", str(env["data"])) == 0
    err = capsys.readouterr().err
    assert "cat/zz_trunc.png" in err and "notes.txt" in err and "skipped --data file" in err
    card = json.loads((env["root"] / "fit-split.json").read_text())
    data = card["data"]
    files = env["files"]
    fisher_pos, cal_pos = folder_split(len(files))
    fisher_files = {files[i] for i in fisher_pos}
    cal_files = {files[i] for i in cal_pos}
    assert not fisher_files & cal_files
    bad = {"cat/zz_trunc.png", "notes.txt"}
    assert data["source"] == "folder"
    assert data["fisher"]["folder"] == str(env["data"].resolve())
    assert data["fisher"]["files"] == len(files) == 26   # hidden file not listed
    assert data["fisher"]["file_list_sha256"] == hashlib.sha256("\n".join(files).encode()).hexdigest()
    assert data["fisher"]["decoded"] == len(fisher_files - bad)
    assert data["calibration"]["decoded"] == len(cal_files - bad)
    skipped = {d["file"] for d in data["fisher"]["skipped_files"] + data["calibration"]["skipped_files"]}
    assert skipped == bad
    assert "every 5th file" in data["calibration_split"]
    assert card["n_fisher"] == len(fisher_files - bad) and card["n_norm"] == len(cal_files - bad)
    assert card["calibrated"] is True
    # the fit is usable: it loads for the checkpoint and scores
    from rose_core.checkpoint import load_model

    model, _ = load_model(env["ckpt"])
    scorer = RoseScorer.load(out, model)
    assert np.isfinite(scorer.score(torch.rand(3, 1, 32, 32)).score).all()


def test_fit_with_a_calibration_folder_uses_all_of_data_for_the_fisher(env, tmp_path):
    cal = tmp_path / "cal"
    _write_images(cal, 6, seed=1, layout="flat")
    out = tmp_path / "fit"
    assert _fit(env, out, "--data", str(env["data"]), "--calibration-data", str(cal)) == 0
    card = json.loads((tmp_path / "fit.json").read_text())
    assert card["n_fisher"] == 24 and card["n_norm"] == 6
    assert card["data"]["calibration"]["folder"] == str(cal.resolve())
    assert card["data"]["calibration"]["files"] == 6
    assert card["data"]["calibration"]["file_list_sha256"] == file_list_sha256([f"img{i:02d}.png" for i in range(6)])
    # the same folder for both is refused: calibration images must be held out
    assert _fit(env, tmp_path / "same", "--data", str(env["data"]), "--calibration-data", str(env["data"])) == 2


@pytest.mark.parametrize("case", ["missing", "empty", "file", "cal-missing", "cal-alone", "both"])
def test_bad_folders_fail_in_one_line_before_the_model_loads(env, tmp_path, capsys, monkeypatch, case):
    import rose_core.checkpoint as checkpoint

    def no_load(*a, **k):
        raise AssertionError("the model was loaded")
    monkeypatch.setattr(checkpoint, "load_model", no_load)
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    (tmp_path / "empty" / ".only-hidden.png").write_bytes(b"x")
    (tmp_path / "plain.png").write_bytes(b"x")
    args = {"missing": ["--data", str(tmp_path / "nope")],
            "empty": ["--data", str(tmp_path / "empty")],
            "file": ["--data", str(tmp_path / "plain.png")],
            "cal-missing": ["--data", str(env["data"]), "--calibration-data", str(tmp_path / "nope")],
            "cal-alone": ["--calibration-data", str(env["data"])],
            "both": ["--data", str(env["data"]), "--dataset", "fashion-mnist"]}[case]
    assert _fit(env, tmp_path / "fit", *args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err
    expected = {"missing": "does not exist", "empty": "holds no image files", "file": "is not a folder",
                "cal-missing": "--calibration-data", "cal-alone": "needs --data", "both": "exclude each other"}[case]
    assert expected in err
    assert not (tmp_path / "fit.json").exists()


def test_too_small_a_folder_for_the_held_out_split_is_refused(env, tmp_path, capsys):
    small = tmp_path / "small"
    _write_images(small, 6, seed=2, layout="flat")
    assert _fit(env, tmp_path / "fit", "--data", str(small)) == 2
    assert "--calibration-data" in capsys.readouterr().err
