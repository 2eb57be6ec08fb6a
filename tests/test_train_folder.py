"""``python -m rose_core train --data FOLDER`` (and ``score --data``): a folder of images, flat or with class
subfolders, good and bad files, channels stated or inferred, provenance on the card, resume checks."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from rose_core.cli import main
from rose_core.image_folder import folder_split, infer_channels, list_folder, read_folder


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


def _write(folder: Path, n: int, *, colour: bool = False, layout: str = "classes", size=(28, 28)) -> list[str]:
    rng = np.random.default_rng(len(str(folder)) + n)
    names = []
    for i in range(n):
        rel = f"{'a' if i % 2 else 'b'}/x{i:02d}.png" if layout == "classes" else f"x{i:02d}.png"
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        shape = (*size, 3) if colour else size
        Image.fromarray((rng.random(shape) * 255).astype(np.uint8)).save(folder / rel)
        names.append(rel)
    return names


def _train(folder, out, *extra) -> int:
    return main(["train", "--data", str(folder), "--out", str(out), "--epochs", "1", "--batch-size", "8",
                 "--capacity", "0.125", "--quiet", "--device", "cpu", *extra])


@pytest.fixture()
def grey_folder(tmp_path):
    data = tmp_path / "grey"
    names = _write(data, 20)
    good = (data / names[0]).read_bytes()
    (data / "a" / "zz_truncated.png").write_bytes(good[: len(good) // 2])
    (data / "readme.txt").write_text("not an image\n")
    (data / ".hidden.png").write_bytes(good)
    return data, sorted(names + ["a/zz_truncated.png", "readme.txt"])


def test_train_on_a_folder_records_the_data_and_reports_bad_files(grey_folder, tmp_path, capsys):
    data, files = grey_folder
    assert _train(data, tmp_path / "m") == 0
    err = capsys.readouterr().err
    assert "skipped --data file a/zz_truncated.png" in err and "skipped --data file readme.txt" in err
    card = json.loads((tmp_path / "m.json").read_text())
    prov = card["data"]
    assert card["dataset"] is None and card["config"]["channels"] == 1
    assert prov["folder"] == str(data.resolve()) and prov["files"] == len(files) == 22
    assert prov["file_list_sha256"] == hashlib.sha256("\n".join(files).encode()).hexdigest()
    assert {d["file"] for d in prov["skipped_files"]} == {"a/zz_truncated.png", "readme.txt"}
    kept, held = folder_split(len(files))
    bad = {files.index("a/zz_truncated.png"), files.index("readme.txt")}
    assert prov["train_images"] == card["train_images"] == len(set(kept) - bad)
    assert prov["held_out_images"] == card["test_images"] == len(set(held) - bad)
    assert prov["channels"] == "inferred from the files" and prov["image_shape"] == [1, 32, 32]
    assert np.isfinite(card["test_bits_per_dim"])


def test_colour_files_infer_three_channels_and_channels_can_be_stated(tmp_path):
    colour = tmp_path / "colour"
    _write(colour, 12, colour=True, layout="flat", size=(40, 36))
    assert infer_channels(list_folder("--data", str(colour))) == 3
    read = read_folder(str(colour), "--data")
    assert read["channels"] == 3 and read["train"].shape[1:] == (32, 32, 3)
    assert _train(colour, tmp_path / "grey-model", "--channels", "1") == 0
    card = json.loads((tmp_path / "grey-model.json").read_text())
    assert card["config"]["channels"] == 1 and card["data"]["channels"] == "stated"


def test_resume_refuses_a_changed_folder(grey_folder, tmp_path, capsys):
    data, _ = grey_folder
    assert _train(data, tmp_path / "m") == 0
    _write(data / "new", 3, layout="flat")
    capsys.readouterr()
    assert _train(data, tmp_path / "m", "--epochs", "2") == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "--no-resume" in err
    assert _train(data, tmp_path / "m", "--epochs", "1", "--no-resume") == 0


@pytest.mark.parametrize("case", ["missing", "empty", "both", "channels", "too-few"])
def test_bad_train_arguments_fail_in_one_line(tmp_path, capsys, case):
    (tmp_path / "empty").mkdir()
    few = tmp_path / "few"
    _write(few, 6, layout="flat")
    args = {"missing": ["--data", str(tmp_path / "nope")], "empty": ["--data", str(tmp_path / "empty")],
            "both": ["--data", str(few), "--dataset", "fashion-mnist"],
            "channels": ["--data", str(few), "--channels", "2"],
            "too-few": ["--data", str(few)]}[case]
    try:
        code = main(["train", "--out", str(tmp_path / "m"), "--epochs", "1", "--quiet", *args])
    except SystemExit as exc:   # the argument parser's own errors (one line too)
        code = exc.code
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err
    expected = {"missing": "does not exist", "empty": "holds no image files", "both": "exclude each other",
                "channels": "invalid choice", "too-few": "at least 10 files"}[case]
    assert expected in err
    assert not (tmp_path / "m.json").exists()


def test_score_accepts_data_as_the_folder_option(grey_folder, tmp_path):
    from rose_core.cli import build_parser

    data, _ = grey_folder
    args = build_parser().parse_args(["score", "--checkpoint", "c", "--data", str(data), "--out", "o.parquet"])
    assert args.input == str(data)
