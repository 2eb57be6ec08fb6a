"""Distributed fitting and scoring with the gloo backend on this machine, against one process.

* ``torchrun --nproc_per_node 2 -m rose_core fit`` / ``score`` in a subprocess: the fit (Fisher
  state, normalisation, calibration) and the union of the Parquet parts equal a one-process run.
* 3 processes started with ``torch.multiprocessing`` (``init_method="file://…"``) on 4 fit images
  and 2 images to score — more ranks than images: empty shards join the collectives, results
  are correct, nothing hangs; bad input fails on every rank.

This file doubles as the script the multiprocessing test runs (``python tests/test_distributed.py DIR``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from rose_core.batch_score import folder_inputs, read_scores, score_inputs  # noqa: E402
from rose_core.distributed import (DistContext, DistributedError, fit_scorer,  # noqa: E402
                                   init_distributed, shard_range, shutdown)
from rose_core.errors import InvalidInput, RoseError  # noqa: E402
from rose_core.models import VAE, VAEConfig  # noqa: E402
from rose_core.scorers.rose import RoseScorer  # noqa: E402

LAYERS = ["encoder.0", "encoder.2", "encoder.5", "mu_head", "logvar_head"]
BASIS_DEPENDENT = ("U_A", "U_B", "sigma_sum")   # eigenvectors are unique only up to sign / rotation


def _tiny_vae() -> VAE:
    torch.manual_seed(0)
    return VAE(VAEConfig(base_width=4, latent_dim=3)).eval()


def _images(n: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(n, 1, 32, 32, generator=g) * 0.3
    x[:, :, 8:24, 8:24] += 0.6
    return x.clamp(0, 1)


def _write_pngs(folder: Path, n: int, bad: bool = True) -> None:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    imgs = (_images(n)[:, 0] * 255).round().to(torch.uint8).numpy()
    for i, im in enumerate(imgs):
        Image.fromarray(im).save(folder / f"im{i}.png")
    if bad:
        (folder / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n0000")


def _assert_same_fit(sd_a: dict, sd_b: dict, rtol: float = 1e-9) -> None:
    """Fisher state dicts equal to ``rtol`` (relative to each tensor's largest value); for the
    eigenbasis-dependent EKFAC tensors, the basis-invariant total of ``Σ G̃²`` (= Σ ‖G‖²).

    1e-9: the ranks compute the one-process batches and every batch sum is float64, so only the
    order of float64 additions differs (~1e-15 per addition)."""
    assert set(sd_a) == set(sd_b)
    for k, a in sd_a.items():
        if k.startswith("calibration."):   # scores, compared by the callers at float32 tolerance
            continue
        b = sd_b[k]
        a, b = a.double(), b.double()
        if k.endswith(BASIS_DEPENDENT):
            if k.endswith("sigma_sum"):
                assert torch.allclose(a.sum(), b.sum(), rtol=rtol), k
            continue
        scale = max(float(a.abs().max()), 1e-300)
        assert float((a - b).abs().max()) <= rtol * scale, (k, float((a - b).abs().max()) / scale)


def _torchrun(args: list[str], cwd: Path, nproc: int = 2) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO),
               ROSE_DATA=str(Path(os.environ.get("ROSE_DATA", REPO / "data")).resolve()))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "rose_core", *args]
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=150)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


# --------------------------------------------------------------------------------------------
# torchrun, the CLI
# --------------------------------------------------------------------------------------------

def test_torchrun_fit_and_score_equal_one_process(tmp_path):
    import pytest

    from rose_core.checkpoint import load_tensors, save_model
    from rose_core.cli import main
    from rose_core.data import is_available

    if not is_available("fashion-mnist", "train"):
        pytest.skip("Fashion-MNIST is not available here (make data)")
    torch.set_num_threads(1)
    save_model(_tiny_vae(), tmp_path / "tiny", dataset="fashion-mnist")
    _write_pngs(tmp_path / "images", 7)
    fit_args = ["fit", "--checkpoint", str(tmp_path / "tiny"), "--n-fisher", "20", "--n-calibration", "20",
                "--force", "--batch-size", "8",
                "--damping", "1e-3", "--quiet"]
    proc = _torchrun(fit_args + ["--out", str(tmp_path / "fit2")], tmp_path)
    assert "2 processes (gloo, cpu)" in proc.stdout
    assert main(fit_args + ["--out", str(tmp_path / "fit1")]) == 0

    _assert_same_fit(load_tensors(tmp_path / "fit1.safetensors"), load_tensors(tmp_path / "fit2.safetensors"))
    c1, c2 = (json.loads((tmp_path / f"fit{i}.json").read_text()) for i in (1, 2))
    assert (c1["n_fisher"], c1["n_norm"]) == (c2["n_fisher"], c2["n_norm"]) == (20, 20)
    np.testing.assert_allclose(c2["norm_mean"], c1["norm_mean"], rtol=1e-5)
    np.testing.assert_allclose(c2["norm_std"], c1["norm_std"], rtol=1e-5)
    cal1, cal2 = (load_tensors(tmp_path / f"fit{i}.safetensors")["calibration.layer_raw"] for i in (1, 2))
    np.testing.assert_allclose(cal2.numpy(), cal1.numpy(), rtol=1e-5, atol=1e-9)

    score_args = ["score", "--checkpoint", str(tmp_path / "tiny"), "--fit", str(tmp_path / "fit1"), "--input",
                  str(tmp_path / "images"), "--batch-size", "2", "--quiet"]
    _torchrun(score_args + ["--out", str(tmp_path / "parts")], tmp_path)
    assert sorted(p.name for p in (tmp_path / "parts").iterdir()) == ["part-00000.parquet", "part-00001.parquet"]
    assert main(score_args + ["--out", str(tmp_path / "one.parquet")]) == 0
    _assert_same_rows(read_scores(tmp_path / "parts"), pd.read_parquet(tmp_path / "one.parquet"), "path")


def _assert_same_rows(many: pd.DataFrame, one: pd.DataFrame, key: str) -> None:
    many = many.sort_values(key).reset_index(drop=True)
    one = one.sort_values(key).reset_index(drop=True)
    assert list(many.columns) == list(one.columns) and len(many) == len(one)
    assert many[key].tolist() == one[key].tolist()
    for col in many.columns:
        if many[col].dtype.kind == "f":
            # same batch grid and threads on both sides; 1e-5 covers a float32 ulp of the weights
            np.testing.assert_allclose(many[col], one[col], rtol=1e-5, atol=1e-9, err_msg=col)
        else:
            assert many[col].fillna("-").tolist() == one[col].fillna("-").tolist(), col


# --------------------------------------------------------------------------------------------
# torch.multiprocessing: more ranks than images, bad input
# --------------------------------------------------------------------------------------------

def _worker(rank: int, world: int, workdir: str) -> None:
    import traceback
    import warnings

    from rose_core.scorers.rose import RankDeficientFitWarning

    warnings.simplefilter("ignore", RankDeficientFitWarning)   # 2 Fisher images: rank-deficient by design
    torch.set_num_threads(1)
    work = Path(workdir)
    ctx = init_distributed("cpu", rank=rank, world_size=world, init_method=f"file://{work / 'rendezvous'}",
                           timeout_minutes=1.5)
    record: dict = {}
    try:
        scorer = RoseScorer(_tiny_vae(), damping=1e-3, batch_size=1)
        cal = fit_scorer(scorer, _images(4), ctx)    # 2 Fisher + 2 normalisation images on 3 ranks
        if rank == 0:
            torch.save({"sd": scorer.fisher.state_dict(), "mean": scorer.norm_mean, "std": scorer.norm_std,
                        "cal": cal, "raw": scorer.norm_layer_raw}, work / "fit.pt")
        summary = score_inputs(scorer, folder_inputs(work / "two"), work / "scores", threshold=0.5, ctx=ctx,
                               batch_size=1)
        record["scored"] = summary.scored
        for name, action in [
            ("empty", lambda: folder_inputs(work / "empty")),
            ("agree", lambda: ctx.agree(InvalidInput("only rank 1 failed") if rank == 1 else None)),
            ("keys", lambda: ctx.check_same_keys(["a.png", f"b{rank}.png"], "the inputs")),
            ("too_few", lambda: fit_scorer(RoseScorer(_tiny_vae(), batch_size=2), _images(1), ctx)),
        ]:
            try:
                action()
                record[name] = None
            except RoseError as exc:
                record[name] = [type(exc).__name__, str(exc)]
        ctx.barrier()
    except BaseException:
        record["traceback"] = traceback.format_exc()   # kept for the parent's assertion message
        raise
    finally:
        (work / f"rank{rank}.json").write_text(json.dumps(record))
        shutdown(ctx)


def test_more_ranks_than_images_and_bad_input(tmp_path):
    _write_pngs(tmp_path / "two", 2, bad=False)
    (tmp_path / "empty").mkdir()
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    proc = subprocess.run([sys.executable, __file__, str(tmp_path), "3"], env=env, capture_output=True, text=True,
                          timeout=150)
    tracebacks = [p.read_text() for p in sorted(tmp_path.glob("rank*.json"))]
    assert proc.returncode == 0, "\n".join(tracebacks) + proc.stdout[-3000:] + proc.stderr[-3000:]
    records = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(3)]

    torch.set_num_threads(1)
    single = RoseScorer(_tiny_vae(), damping=1e-3, batch_size=1)
    cal = fit_scorer(single, _images(4))
    got = torch.load(tmp_path / "fit.pt", weights_only=False)
    _assert_same_fit(single.fisher.state_dict(), got["sd"])
    # The ranks compute the one-process batches, so only the order of the float64 sums differs.
    # Scores are float32 products with weights cast from the float64 sums: a last-bit difference
    # in a sum can move a weight by one float32 ulp, so 1e-5 relative (a few ulps) is the bound.
    np.testing.assert_allclose(got["mean"], single.norm_mean, rtol=1e-5)
    np.testing.assert_allclose(got["std"], single.norm_std, rtol=1e-5)
    np.testing.assert_allclose(got["raw"], single.norm_layer_raw, rtol=1e-5)
    np.testing.assert_allclose(got["cal"], cal, rtol=1e-5, atol=1e-9)

    parts = sorted(p.name for p in (tmp_path / "scores").iterdir())
    assert parts == ["part-00000.parquet", "part-00001.parquet", "part-00002.parquet"]
    # 2 images on 3 ranks: rank 0 (which also broadcasts the Fisher state) had no image to score
    assert [len(pd.read_parquet(tmp_path / "scores" / p)) for p in parts] == [0, 1, 1]
    # like with like: the ranks scored batches of 1, so the reference does too (float32 kernels
    # differ between batch shapes); one thread on both sides (set above and in the workers)
    score_inputs(single, folder_inputs(tmp_path / "two"), tmp_path / "one.parquet", threshold=0.5, batch_size=1)
    _assert_same_rows(read_scores(tmp_path / "scores"), pd.read_parquet(tmp_path / "one.parquet"), "path")

    for r, rec in enumerate(records):
        assert rec["scored"] == 2
        assert rec["empty"][0] == "InvalidInput" and "No files found" in rec["empty"][1]
        assert rec["agree"][0] == ("InvalidInput" if r == 1 else "DistributedError")
        assert rec["keys"][0] == "DistributedError" and "disagree" in rec["keys"][1]
        assert rec["too_few"][0] == "InvalidInput" and "Fisher set got 0" in rec["too_few"][1]


# --------------------------------------------------------------------------------------------
# One process: the context is a no-op
# --------------------------------------------------------------------------------------------

def test_single_process_context_and_sharding(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    ctx = init_distributed("cpu")
    assert not ctx.is_distributed and ctx.is_main and ctx.backend is None
    t = torch.ones(3)
    ctx.all_reduce_sum_([t])
    ctx.broadcast_([t])
    assert torch.equal(t, torch.ones(3)) and ctx.all_gather_rows(t[:, None]).shape == (3, 1)
    ctx.check_same("anything", "x")
    ctx.agree(None)
    try:
        ctx.agree(InvalidInput("boom"))
        raise AssertionError("agree should raise")
    except InvalidInput:
        pass
    shutdown(ctx)
    for n in (0, 1, 5, 17):
        for world in (1, 2, 3, 8):
            for unit in (1, 4):
                blocks = [shard_range(n, r, world, unit) for r in range(world)]
                assert blocks[0][0] == 0 and blocks[-1][1] == n
                assert all(a[1] == b[0] for a, b in zip(blocks, blocks[1:]))
                assert all(lo % unit == 0 for lo, _ in blocks)     # whole batches of the one-process grid
                sizes = [-(-(h - lo) // unit) for lo, h in blocks]
                assert max(sizes) - min(sizes) <= 1
    assert issubclass(DistributedError, RoseError)
    assert DistContext().describe() == "1 process (cpu)"
    # the one-process fit is RoseScorer.fit itself
    a = RoseScorer(_tiny_vae(), fisher="diag", batch_size=3)
    cal = fit_scorer(a, _images(8))
    b = RoseScorer(_tiny_vae(), fisher="diag", batch_size=3).fit(_images(8))
    for k, v in b.fisher.state_dict().items():
        assert torch.equal(v, a.fisher.state_dict()[k])
    np.testing.assert_array_equal(cal, b.calibration_scores)


if __name__ == "__main__":   # the multiprocessing test: python tests/test_distributed.py WORKDIR WORLD
    import torch.multiprocessing as mp

    mp.spawn(_worker, args=(int(sys.argv[2]), sys.argv[1]), nprocs=int(sys.argv[2]), join=True)
