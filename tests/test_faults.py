"""Fault injection: the CLI and batch scoring under kill -9, concurrent writers, orphaned workers,
unwritable outputs, bad arguments and a corpus of hostile files.

A tiny VAE (base width 4, 3 latents) is fitted once on 48 Fashion-MNIST images. Real processes
(``python -m rose_core score``) are used where the fault is about processes: the one killed, the
second writer, the decoding workers. The rest runs in-process.
"""

from __future__ import annotations

import gzip
import json
import io
import os
import signal
import struct
import subprocess
import sys
import time
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from rose_core.checkpoint import save_model
from rose_core.cli import main
from rose_core.data import is_available, load_dataset
from rose_core.imageio import InvalidImage, decode_image, read_image
from rose_core.models import VAE, VAEConfig

pytestmark = pytest.mark.skipif(not is_available("fashion-mnist", "train"),
                                reason="Fashion-MNIST is not available here (make data)")

REPO = Path(__file__).resolve().parents[1]
N_KILL = 400          # images in the kill -9 run: far more than it can score before it is stopped
BATCH, FLUSH = 4, 8   # segments hold whole batches, so a resumed run keeps the batch grid


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)   # the subprocesses get OMP_NUM_THREADS=1: the same float rounding


def _env() -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONPATH=str(REPO))
    env.setdefault("ROSE_DATA", str(Path("data").resolve()))
    return env


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("faults")
    torch.manual_seed(0)
    save_model(VAE(VAEConfig(base_width=4, latent_dim=3)).eval(), root / "tiny", dataset="fashion-mnist")
    assert main(["fit", "--checkpoint", str(root / "tiny"), "--n-fisher", "48", "--n-calibration", "24",
                 "--force", "--batch-size", "16", "--out", str(root / "fit"), "--quiet"]) == 0
    return {"root": root, "ckpt": root / "tiny", "fit": root / "fit"}


def _score_args(env, folder, out, *extra) -> list[str]:
    return ["score", "--checkpoint", str(env["ckpt"]), "--fit", str(env["fit"]), "--input", str(folder),
            "--out", str(out), "--quiet", "--batch-size", str(BATCH), "--flush-rows", str(FLUSH), *extra]


def _spawn(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "rose_core", *args], cwd=REPO, env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _children(pid: int) -> list[int]:
    kids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            kids.append(int(stat.parent.name))
    return kids


def _alive(pid: int) -> bool:
    """Running (a zombie waiting for a reaper that may never come, in a container, counts as gone)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _one_error_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip() and not ln.startswith("WARNING")]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    return lines[0]


# ------------------------------------------------------------------------------------------------
# kill -9, second writer, orphaned workers, resume
# ------------------------------------------------------------------------------------------------

@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_kill_9_mid_score_second_writer_orphans_and_resume(env, tmp_path, caplog):
    folder = tmp_path / "in"
    folder.mkdir()
    for i, im in enumerate(load_dataset("fashion-mnist", "test", n=N_KILL, seed=1).images):
        Image.fromarray(im[..., 0]).save(folder / f"{i:04d}.png")
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    out = tmp_path / "scores.parquet"

    first = _spawn(_score_args(env, folder, out, "--workers", "2"))
    partial = tmp_path / "scores.parquet.partial"
    deadline = time.time() + 120
    while not list(partial.glob("*.parquet")):
        assert first.poll() is None, first.communicate()
        assert time.time() < deadline, "the scorer wrote no segment within 120 s"
        time.sleep(0.01)
    os.kill(first.pid, signal.SIGSTOP)   # frozen mid-run, holding the lock; its workers fill their pipes
    workers = _children(first.pid)
    assert len(workers) == 2, workers

    second = _spawn(_score_args(env, folder, out, "--workers", "0"))
    _, err = second.communicate(timeout=120)
    assert second.returncode == 2
    line = _one_error_line(err)
    assert f"pid {first.pid} on host" in line and "scores.parquet.lock" in line and "another --out" in line

    os.kill(first.pid, signal.SIGKILL)
    first.wait(timeout=30)
    deadline = time.time() + 5
    while any(_alive(w) for w in workers) and time.time() < deadline:
        time.sleep(0.05)
    assert not [w for w in workers if _alive(w)], "decoding workers outlived their killed parent"
    killed_rows = sum(pq.read_metadata(p).num_rows for p in partial.glob("*.parquet"))
    assert 0 < killed_rows < N_KILL and killed_rows % BATCH == 0

    with caplog.at_level("WARNING"):
        assert main(_score_args(env, folder, out, "--workers", "1", "--report", str(tmp_path / "r.json"))) == 0
    assert "stale lock" in caplog.text and str(first.pid) in caplog.text
    resumed = pd.read_parquet(out).sort_values("path").reset_index(drop=True)
    assert len(resumed) == N_KILL + 1 and resumed["path"].is_unique
    assert not Path(str(out) + ".lock").exists() and not partial.exists()

    assert main(_score_args(env, folder, tmp_path / "whole.parquet", "--workers", "0")) == 0
    whole = pd.read_parquet(tmp_path / "whole.parquet").sort_values("path").reset_index(drop=True)
    assert resumed["path"].tolist() == whole["path"].tolist()
    assert resumed["error"].notna().sum() == 1 and "broken.png" in resumed["error"].dropna().iloc[0]
    numbers = [c for c in whole.columns if c not in ("path", "verdict", "error")]
    # Same batch grid, same thread count: the same float operations, so the same bits.
    np.testing.assert_array_equal(resumed[numbers].to_numpy(), whole[numbers].to_numpy())
    assert resumed["verdict"].equals(whole["verdict"])


@pytest.mark.skipif(not hasattr(os, "fork"), reason="forks")
def test_worker_watchdog_alone_ends_an_orphan(tmp_path):
    # As on a system without prctl: only the parent-pid watchdog thread is left to end the worker.
    script = (
        "import os, sys, time\n"
        "from rose_core import worker_guard\n"
        "worker_guard._set_parent_death_signal = lambda: False\n"
        "init = worker_guard.worker_init_fn()\n"
        "pid = os.fork()\n"
        "if pid == 0:\n"
        "    init(0)\n"
        "    time.sleep(60)\n"
        "    os._exit(0)\n"
        "print(pid, flush=True)\n"
        "time.sleep(60)\n")
    parent = subprocess.Popen([sys.executable, "-c", script], cwd=REPO, env=_env(), stdout=subprocess.PIPE, text=True)
    child = int(parent.stdout.readline())
    time.sleep(0.2)
    assert _alive(child)
    parent.kill()
    parent.wait(timeout=10)
    deadline = time.time() + 5
    while _alive(child) and time.time() < deadline:
        time.sleep(0.05)
    assert not _alive(child), "the watchdog did not end the orphaned worker"


def test_two_writers_started_together(env, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    for i, im in enumerate(load_dataset("fashion-mnist", "test", n=40, seed=2).images):
        Image.fromarray(im[..., 0]).save(folder / f"{i:02d}.png")
    out = tmp_path / "both.parquet"
    procs = [_spawn(_score_args(env, folder, out, "--workers", "0")) for _ in range(2)]
    results = [(p.pid, p.returncode, p.communicate(timeout=180)[1]) for p in procs]
    results = [(pid, p.returncode, err) for (pid, _, err), p in zip(results, procs)]
    codes = sorted(rc for _, rc, _ in results)
    assert codes in ([0, 0], [0, 2]), results   # refused, or (no overlap) the later one found nothing to do
    for pid, rc, err in results:
        assert "Traceback" not in err
        if rc == 2:
            winner = next(p for p, r, _ in results if r == 0)
            assert f"pid {winner} on host" in _one_error_line(err)
    df = pd.read_parquet(out)
    assert len(df) == 40 and df["path"].is_unique


def test_resume_removes_duplicate_rows_of_older_versions(env, tmp_path, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    for i, im in enumerate(load_dataset("fashion-mnist", "test", n=12, seed=3).images):
        Image.fromarray(im[..., 0]).save(folder / f"{i:02d}.png")
    out = tmp_path / "dup.parquet"
    assert main(_score_args(env, folder, out, "--workers", "0")) == 0
    clean = pd.read_parquet(out).sort_values("path").reset_index(drop=True)
    # What two unlocked writers left behind: rows twice in the final file, and in an unmerged segment.
    table = pq.read_table(out)
    pq.write_table(pa.concat_tables([table, table.slice(0, 3)]), out)
    partial = tmp_path / "dup.parquet.partial"
    partial.mkdir()
    pq.write_table(table.slice(5, 2), partial / "part.g0002.s000001.parquet")
    capsys.readouterr()
    assert main(_score_args(env, folder, out, "--workers", "0")) == 0
    assert "removed 5 duplicate rows" in capsys.readouterr().out
    again = pd.read_parquet(out).sort_values("path").reset_index(drop=True)
    pd.testing.assert_frame_equal(again, clean)


# ------------------------------------------------------------------------------------------------
# Unwritable outputs and bad arguments: one line, exit 2, before any model is loaded
# ------------------------------------------------------------------------------------------------

@pytest.fixture
def no_model(monkeypatch):
    """Loading a model or building one for training fails the test (exit 1 would show it)."""
    def refuse(*a, **k):
        raise AssertionError("a model was loaded before the arguments were checked")

    monkeypatch.setattr("rose_core.checkpoint.load_model", refuse)
    monkeypatch.setattr("rose_core.training.build_model", refuse)


def _run(argv: list[str], capsys) -> tuple[int, str]:
    capsys.readouterr()
    try:
        rc = main(argv)
    except SystemExit as exc:   # argparse
        rc = exc.code
    return rc, capsys.readouterr().err


def test_unwritable_or_foreign_outputs(env, tmp_path, capsys, no_model):
    folder = tmp_path / "in"
    folder.mkdir()
    Image.new("L", (16, 16)).save(folder / "a.png")
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    foreign = tmp_path / "photos"
    foreign.mkdir()
    (foreign / "holiday.jpg").write_bytes(b"x")
    cases = [(a_file / "scores.parquet", "Choose a writable location"),
             (a_file, "not a Parquet file"),
             (foreign, "not a scores output (it holds holiday.jpg)")]
    if Path("/proc/self").is_dir():   # unwritable even for root
        cases.append((Path("/proc/self/rose/scores.parquet"), "Choose a writable location"))
    for out, words in cases:
        rc, err = _run(_score_args(env, folder, out), capsys)
        assert rc == 2 and words in _one_error_line(err), (out, err)
    assert a_file.read_text() == "x" and (foreign / "holiday.jpg").read_bytes() == b"x"
    for cmd in (["fit", "--checkpoint", str(env["ckpt"])], ["train"]):
        rc, err = _run(cmd + ["--out", str(a_file / "model")], capsys)
        assert rc == 2 and "Choose a writable location" in _one_error_line(err), err
    if os.geteuid() != 0:   # root writes anywhere
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        rc, err = _run(_score_args(env, folder, ro / "s.parquet"), capsys)
        assert rc == 2 and "writable" in _one_error_line(err)


BAD_ARGS = [
    (["train", "--out", "{tmp}/m", "--epochs", "0"], "--epochs must be >= 1, got 0"),
    (["train", "--out", "{tmp}/m", "--epochs", "-2"], "--epochs must be >= 1, got -2"),
    (["train", "--out", "{tmp}/m", "--epochs", "two"], "invalid int value: 'two'"),
    (["train", "--out", "{tmp}/m", "--batch-size", "0"], "--batch-size must be >= 1"),
    (["train", "--out", "{tmp}/m", "--lr", "-1"], "--lr must be in (0, inf)"),
    (["train", "--out", "{tmp}/m", "--noise-fraction", "1.5"], "--noise-fraction must be in [0, 1]"),
    (["train", "--out", "{tmp}/m", "--capacity", "0"], "--capacity must be in (0, inf)"),
    (["train", "--out", "{tmp}/m", "--subset", "0"], "--subset must be >= 1"),
    (["train", "--out", "{tmp}/m", "--max-minutes", "0"], "--max-minutes must be in (0, inf)"),
    (["train", "--out", "{tmp}/m", "--dataset", "nope"], "'nope' is not a known dataset"),
    (["train", "--out", "{tmp}/m", "--device", "gpu"], "'gpu' is not a device"),
    (["train", "--out", "{tmp}", "--epochs", "1"], "is a folder"),
    (["train", "--model", "gan", "--out", "{tmp}/m"], "invalid choice: 'gan'"),
    (["train"], "the following arguments are required: --out"),
    (["fit", "--checkpoint", "{ckpt}", "--out", "{tmp}/f", "--n-fisher", "0"], "--n-fisher must be >= 1"),
    (["fit", "--checkpoint", "{ckpt}", "--out", "{tmp}/f", "--n-calibration", "1"], "--n-calibration must be >= 2"),
    (["fit", "--checkpoint", "{ckpt}", "--out", "{tmp}/f", "--damping", "-1"], "--damping must be in [0, inf)"),
    (["fit", "--checkpoint", "{ckpt}", "--out", "{tmp}/f", "--batch-size", "0"], "--batch-size must be >= 1"),
    (["fit", "--checkpoint", "{ckpt}", "--out", "{tmp}/f", "--dataset", "nope"], "'nope' is not a known dataset"),
    (["fit", "--checkpoint", "{ckpt}", "--out", "{tmp}/f", "--dataset", "noise"], "has no split 'train'"),
    (["fit", "--checkpoint", "{tmp}/missing", "--out", "{tmp}/f"], "missing.json does not exist"),
    (["fit", "--checkpoint", "{ckpt}", "--out", "{tmp}"], "is a folder"),
    (["score", "--tpr", "0"], "--tpr must be in (0, 1]"),
    (["score", "--tpr", "1.5"], "--tpr must be in (0, 1]"),
    (["score", "--threshold", "nan"], "--threshold must be a finite number"),
    (["score", "--batch-size", "0"], "--batch-size must be >= 1"),
    (["score", "--flush-rows", "0"], "--flush-rows must be >= 1"),
    (["score", "--workers", "-1"], "--workers must be >= 0"),
    (["score", "--limit", "-1"], "--limit must be >= 0"),
    (["score", "--n-fisher", "0"], "--n-fisher must be >= 1"),
    (["score", "--seed", "-1"], "--seed must be >= 0"),
    (["score", "--dist-timeout", "0"], "--dist-timeout must be in (0, inf)"),
    (["score", "--device", "tpu:9"], "'tpu:9' is not a device"),
    (["score", "--fit-dataset", "nope"], "--fit-dataset 'nope' is not a known dataset"),
    (["score", "--checkpoint", "{tmp}/missing"], "missing.json does not exist"),
    (["score", "--report", "{tmp}/file.txt/r.json"], "--report: cannot write"),
    (["score", "--input", "{tmp}/nope"], "does not exist"),
    (["score", "--list", "{tmp}/nope.txt"], "does not exist"),
    (["score", "--dataset", "nope"], "'nope' is not a known dataset"),
    (["data", "fashion-mnist", "nope"], "'nope' is not a known dataset"),
    (["datasets", "--all"], "unrecognized arguments: --all"),
    (["bogus"], "invalid choice: 'bogus'"),
]


@pytest.mark.parametrize("argv,words", BAD_ARGS, ids=[" ".join(a[:1] + a[-2:]) for a, _ in BAD_ARGS])
def test_bad_arguments_one_line_exit_2_before_the_model(env, tmp_path, capsys, no_model, argv, words):
    (tmp_path / "file.txt").write_text("x")
    Image.new("L", (16, 16)).save(tmp_path / "a.png")
    argv = [a.format(tmp=tmp_path, ckpt=env["ckpt"]) for a in argv]
    if argv[0] == "score":
        base = ["--checkpoint", str(env["ckpt"]), "--fit", str(env["fit"]), "--out", str(tmp_path / "s.parquet")]
        if not {"--input", "--list", "--dataset"} & set(argv):
            base += ["--input", str(tmp_path)]
        given = {a for a in argv if a.startswith("--")}
        argv = argv[:1] + [a for i, a in enumerate(base) if not (a in given or (i and base[i - 1] in given))] + argv[1:]
    rc, err = _run(argv, capsys)
    assert rc == 2
    assert words in _one_error_line(err)


def test_a_bad_argument_fails_fast_in_a_real_process(tmp_path):
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "rose_core", "train", "--epochs", "0", "--out", str(tmp_path / "m")],
                          cwd=REPO, env=_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "--epochs must be >= 1" in _one_error_line(proc.stderr)
    assert time.perf_counter() - t0 < 60 and not list(tmp_path.iterdir())


def test_fit_without_calibration_scores_is_named_plainly(env, tmp_path):
    """A fit written before fits carried their calibration scores: score says to refit (exit 2, one line)."""
    from rose_core.checkpoint import load_tensors, save_tensors

    tensors = {k: v for k, v in load_tensors(Path(str(env["fit"]) + ".safetensors")).items()
               if not k.startswith("calibration.")}
    card = json.loads(Path(str(env["fit"]) + ".json").read_text())
    card["weights_sha256"] = save_tensors(tensors, tmp_path / "old.safetensors")
    (tmp_path / "old.json").write_text(json.dumps(card))
    folder = tmp_path / "in"
    folder.mkdir()
    Image.fromarray(np.zeros((28, 28), np.uint8)).save(folder / "a.png")
    proc = subprocess.run([sys.executable, "-m", "rose_core", "score", "--checkpoint", str(env["ckpt"]), "--fit",
                           str(tmp_path / "old"), "--input", str(folder), "--out", str(tmp_path / "s.parquet"),
                           "--quiet"], cwd=REPO, env=_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    line = _one_error_line(proc.stderr)
    assert "carries no calibration scores" in line and "rose_core fit" in line and "--threshold" in line


# ------------------------------------------------------------------------------------------------
# Hostile files: scored or reported per file, never a crash
# ------------------------------------------------------------------------------------------------

def _save(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def _png_claiming(width: int, height: int) -> bytes:
    """A valid PNG header announcing ``width × height`` with almost no pixel data."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b""))


def _jpeg_claiming(width: int, height: int) -> bytes:
    data = bytearray(_save(Image.new("L", (16, 16)), "JPEG"))
    sof = data.find(b"\xff\xc0")
    data[sof + 5:sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def _bmp_claiming(width: int, height: int) -> bytes:
    data = bytearray(_save(Image.new("L", (16, 16)), "BMP"))
    data[18:26] = struct.pack("<ii", width, height)
    return bytes(data)


def hostile_corpus() -> dict[str, tuple[bytes, str | None]]:
    """File name → (bytes, words the refusal must contain, or None when the file must be scored)."""
    rng = np.random.default_rng(0)
    grey = Image.fromarray((rng.random((32, 32)) * 255).astype(np.uint8))
    rgb = Image.fromarray((rng.random((32, 32, 3)) * 255).astype(np.uint8))
    png = _save(grey, "PNG")
    zipped = io.BytesIO()
    with zipfile.ZipFile(zipped, "w") as z:
        z.writestr("inside.png", png)
    exif = Image.Exif()
    exif[0x0112] = 6
    some_nan = np.where(rng.random((16, 16)) > 0.5, np.nan, 0.25).astype(np.float32)
    bomb = "40-megapixel limit"
    return {
        "empty.png": (b"", "empty"),
        "truncated.png": (png[: len(png) // 2], "truncated"),
        "notes.png": (b"just some notes\n" * 20, "a text file"),
        "drawing.png": (b'<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg"/>\n', "an SVG drawing"),
        "paper.png": (b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\n%%EOF\n", "a PDF document"),
        "page.png": (b"<!DOCTYPE html>\n<html><body>hello</body></html>\n", "an HTML page"),
        "packed.png": (gzip.compress(png), "gzip-compressed"),
        "archive.png": (zipped.getvalue(), "ZIP archive"),
        "bomb-png.png": (_png_claiming(100_000, 100_000), bomb),
        "bomb-89mp.png": (_png_claiming(10_000, 10_000), bomb),
        "bomb-48mp.png": (_png_claiming(8_000, 6_000), bomb),
        "bomb-jpeg.png": (_jpeg_claiming(65_000, 65_000), bomb),
        "bomb-bmp.png": (_bmp_claiming(60_000, 60_000), bomb),
        "nan.tif": (_save(Image.fromarray(np.full((16, 16), np.nan, np.float32)), "TIFF"), "NaN or infinite"),
        "inf.tif": (_save(Image.fromarray(np.full((16, 16), -np.inf, np.float32)), "TIFF"), "NaN or infinite"),
        "some-nan.tif": (_save(Image.fromarray(some_nan), "TIFF"), None),
        "one-pixel.png": (_save(Image.new("L", (1, 1)), "PNG"), "only 1×1 pixels"),
        "row.png": (_save(Image.new("L", (2000, 1)), "PNG"), "only 2000×1 pixels"),
        "column.png": (_save(Image.new("L", (1, 2000)), "PNG"), "only 1×2000 pixels"),
        "anim.gif": (_save(grey, "GIF", save_all=True, append_images=[grey.rotate(90)]), None),
        "anim.webp": (_save(rgb, "WEBP", save_all=True, append_images=[rgb.rotate(90)]), None),
        "pages.tif": (_save(grey, "TIFF", save_all=True, append_images=[grey, grey]), None),
        "cmyk.jpg": (_save(rgb.convert("CMYK"), "JPEG"), None),
        "deep.png": (_save(Image.fromarray((rng.random((16, 16)) * 65535).astype(np.uint16)), "PNG"), None),
        "la.png": (_save(grey.convert("LA"), "PNG"), None),
        "p-transparent.png": (_save(rgb.convert("P"), "PNG", transparency=0), None),
        "rotated.jpg": (_save(rgb, "JPEG", exif=exif), None),
        "ünïcødé 画像 ✓.png": (png, None),
    }


def test_hostile_corpus_through_imageio(tmp_path):
    for name, (data, words) in hostile_corpus().items():
        (tmp_path / name).write_bytes(data)
        for how in ("bytes", "file"):
            try:
                img = decode_image(data, name) if how == "bytes" else read_image(tmp_path / name)
            except InvalidImage as exc:
                msg = str(exc)
                assert words is not None, f"{name} was refused: {msg}"
                assert words in msg and msg.startswith(name), msg
                assert "Error" not in msg and "178956970" not in msg and "89478485" not in msg, msg
                continue
            assert words is None, f"{name} was accepted, expected a refusal with {words!r}"
            assert img.array.dtype == np.uint8 and img.array.ndim == 3 and img.array.shape[-1] in (1, 3)
            assert min(img.array.shape[:2]) >= 8
    notes = decode_image(hostile_corpus()["some-nan.tif"][0], "some-nan.tif").notes
    assert any("NaN or infinite: set to black" in n for n in notes)
    assert decode_image(hostile_corpus()["rotated.jpg"][0]).notes[0].startswith("EXIF orientation 6")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="a file name that is not UTF-8")
def test_hostile_corpus_through_score(env, tmp_path):
    corpus = hostile_corpus()
    folder = tmp_path / "in"
    folder.mkdir()
    for name, (data, _) in corpus.items():
        (folder / name).write_bytes(data)
    with open(os.path.join(os.fsencode(folder), b"latin1-\xe9t\xe9.png"), "wb") as fh:   # not UTF-8
        fh.write(corpus["la.png"][0])
    out = tmp_path / "s.parquet"
    assert main(_score_args(env, folder, out, "--workers", "1")) == 0
    df = pd.read_parquet(out).set_index("path")
    assert df.index.is_unique and len(df) == len(corpus) + 1
    assert pd.isna(df.loc["latin1-\\xe9t\\xe9.png", "error"])
    for name, (_, words) in corpus.items():
        row = df.loc[name]
        if words is None:
            assert pd.isna(row["error"]) and np.isfinite(row["rose_score"]), (name, row["error"])
        else:
            assert words in row["error"] and name in row["error"], (name, row["error"])
            assert pd.isna(row["rose_score"]) and pd.isna(row["verdict"])
    # Resuming finds every row, including the one whose name is not UTF-8.
    assert main(_score_args(env, folder, out, "--workers", "0", "--report", str(tmp_path / "r.json"))) == 0
    assert '"scored": 0' in (tmp_path / "r.json").read_text()


def test_a_refused_writer_names_a_holder_that_has_not_written_its_name_yet(tmp_path):
    """The race of two writers started together: the loser may find the lock taken but still empty; it waits
    (briefly) for the holder's name, so the error says who holds the output."""
    from rose_core.output_lock import OutputLock, OutputLocked, lock_path

    out = tmp_path / "o.parquet"
    script = (
        "import fcntl, json, os, sys, time\n"
        f"fd = os.open({str(lock_path(out))!r}, os.O_RDWR | os.O_CREAT, 0o644)\n"
        "fcntl.lockf(fd, fcntl.LOCK_EX)\n"
        "print('locked', flush=True)\n"
        "time.sleep(0.5)\n"   # locked, name not written yet
        "os.pwrite(fd, (json.dumps({'pid': os.getpid(), 'host': 'h', 'command': 'score'}) + '\\n').encode(), 0)\n"
        "time.sleep(5)\n")
    holder = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(OutputLocked, match=f"pid {holder.pid} on host h"):
            OutputLock(out).acquire()
    finally:
        holder.kill()
        holder.wait(timeout=10)
