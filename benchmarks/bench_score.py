"""Batch scoring end to end: ``python -m rose_core score`` on 1k, 5k and 10k PNG files, in one run.

The real Fashion-MNIST test images (``rose_core.data.load_dataset``) are written once as PNG files
under ``--png-dir`` (``all/``, and one folder per size holding hard links to the first N files). A
ROSE fit of the shipped VAE (default: EKFAC, the VAE's default Fisher) is made once and saved under
``--fit`` (``--fit-n`` training images for the Fisher, ``--cal-n`` further training images for the
normalisation and threshold: a speed benchmark, so the calibration images need not be held out).

Each size is scored in a **fresh subprocess** that runs ``rose_core.cli.main(["score", "--input", …])``
exactly as the command line does (decoding workers: the command's default, ``default_workers()``),
with ``torch.set_num_threads(--threads)`` (default 1, for comparability on a shared machine) and
reports, from the command's ``--report`` JSON:

* images/s (scored images over the wall time of the scoring loop, Parquet writing included);
* the scorer's **idle fraction**: the share of that time the scorer waited for decoded batches
  (``ScoreSummary.idle_fraction`` = ``wait_seconds / seconds``; the first batch's wait includes the
  workers' start);
* **peak memory** of the scoring process: its peak resident set (``VmHWM``, the counter ``ru_maxrss``
  reads), reset to the resident set at the subprocess's start (``/proc/self/clear_refs``: otherwise it
  would start at this parent's peak, inherited through fork + exec), and the largest peak of its
  decoding workers (``ru_maxrss`` of its children; pages shared with the scorer count in both).

Memory should stay flat as the input grows (rows are flushed to Parquet segments): the JSON records
``peak_growth_10k_over_1k``. The load average is recorded before and after. Writes
``results/benchmarks/score.json``.

Usage::

    .venv/bin/python benchmarks/bench_score.py [--sizes 1000 5000 10000] [--fisher ekfac] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _status_mib(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024.0
    raise KeyError(field)


def write_pngs(png_dir: Path, sizes: list[int]) -> dict[int, Path]:
    """``png_dir/all/NNNNN.png`` for the first ``max(sizes)`` test images, and ``png_dir/nN/`` with hard
    links to the first N of them. Reuses files already there."""
    import numpy as np
    from PIL import Image

    from rose_core.data import load_dataset

    n_max = max(sizes)
    all_dir = png_dir / "all"
    all_dir.mkdir(parents=True, exist_ok=True)
    names = [f"{i:05d}.png" for i in range(n_max)]
    missing = [i for i, nm in enumerate(names) if not (all_dir / nm).exists()]
    if missing:
        ds = load_dataset("fashion-mnist", "test")
        if len(ds) < n_max:
            raise SystemExit(f"fashion-mnist test has {len(ds)} images; --sizes asks for {n_max}")
        for i in missing:
            img = np.asarray(ds.images[i])
            Image.fromarray(img[..., 0] if img.ndim == 3 and img.shape[-1] == 1 else img).save(all_dir / names[i])
    out = {}
    for n in sizes:
        d = png_dir / f"n{n}"
        if not d.exists() or len(list(d.iterdir())) != n:
            shutil.rmtree(d, ignore_errors=True)
            d.mkdir(parents=True)
            for nm in names[:n]:
                os.link(all_dir / nm, d / nm)
        out[n] = d
    return out


def make_fit(args) -> Path:
    """Fit ROSE on the VAE once (saved to ``--fit``; reused when it exists)."""
    from rose_core.checkpoint import card_path

    path = Path(args.fit)
    if card_path(path).exists():
        return path
    import torch

    from rose_core.checkpoint import load_model
    from rose_core.data import load_dataset, to_model_input
    from rose_core.scorers.rose import RoseScorer

    torch.set_num_threads(args.threads)
    model, _ = load_model(args.checkpoint)
    train = load_dataset("fashion-mnist", "train", n=args.fit_n + args.cal_n)
    x = to_model_input(train.images, channels=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # a few hundred images: rank-deficient heads (speed is what is measured)
        RoseScorer(model, fisher=args.fisher, batch_size=128).fit(x[:args.fit_n], calibration=x[args.fit_n:]).save(path)
    return path


def child(args) -> int:
    """Run the score command once in this fresh process; print its peak memory as JSON."""
    try:
        Path("/proc/self/clear_refs").write_text("5")   # peak := current resident set
        reset = True
    except OSError:
        reset = False
    import torch

    torch.set_num_threads(args.threads)
    from rose_core.cli import main as cli_main

    rc = cli_main(["score", "--checkpoint", args.checkpoint, "--fit", str(args.fit), "--input", args.input,
                   "--out", args.out_parquet, "--overwrite", "--quiet", "--report", args.report,
                   "--batch-size", str(args.batch_size)] + ([] if args.workers is None else
                                                            ["--workers", str(args.workers)]))
    peak = _status_mib("VmHWM") if reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    workers = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024.0
    print("CHILD " + json.dumps({"rc": rc, "peak_rss_mib": peak, "workers_peak_rss_mib": workers,
                                 "peak_reset": reset, "threads": torch.get_num_threads()}))
    return rc


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 5000, 10000])
    ap.add_argument("--checkpoint", default="checkpoints/vae-fmnist")
    ap.add_argument("--fisher", choices=["ekfac", "diag"], default="ekfac")
    ap.add_argument("--fit", default="/tmp/rose_bench_score/fit-vae-ekfac", help="fit path (made once if missing)")
    ap.add_argument("--fit-n", type=int, default=512, help="training images for the Fisher of a new fit")
    ap.add_argument("--cal-n", type=int, default=256, help="further training images for its normalisation")
    ap.add_argument("--png-dir", default="/tmp/rose_bench_score/png")
    ap.add_argument("--batch-size", type=int, default=256, help="the score command's default")
    ap.add_argument("--workers", type=int, default=None, help="decoding workers (default: the command's default)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=str(ROOT / "results" / "benchmarks" / "score.json"))
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--input", help=argparse.SUPPRESS)
    ap.add_argument("--out-parquet", help=argparse.SUPPRESS)
    ap.add_argument("--report", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.fisher != "ekfac" and args.fit == ap.get_default("fit"):
        args.fit = args.fit.replace("ekfac", args.fisher)
    if args.child:
        return child(args)

    from rose_core.batch_score import default_workers

    t_start = time.time()
    work = Path(args.png_dir).parent
    dirs = write_pngs(Path(args.png_dir), args.sizes)
    fit = make_fit(args)
    print(f"PNG folders {[str(d) for d in dirs.values()]}; fit {fit}", flush=True)
    load_before = os.getloadavg()
    runs = {}
    for n, d in dirs.items():
        report = work / f"report-{n}.json"
        out_parquet = work / f"scores-{n}.parquet"
        cmd = [sys.executable, str(Path(__file__).resolve()), "--child", "--checkpoint", args.checkpoint,
               "--fit", str(fit), "--input", str(d), "--out-parquet", str(out_parquet), "--report", str(report),
               "--batch-size", str(args.batch_size), "--threads", str(args.threads)]
        if args.workers is not None:
            cmd += ["--workers", str(args.workers)]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
        wall = time.perf_counter() - t0
        line = [ln for ln in proc.stdout.splitlines() if ln.startswith("CHILD ")]
        if proc.returncode != 0 or not line:
            print(proc.stdout[-2000:], proc.stderr[-2000:], file=sys.stderr)
            raise SystemExit(f"scoring {n} files failed (exit {proc.returncode})")
        mem = json.loads(line[-1][6:])
        rep = json.loads(report.read_text())
        runs[str(n)] = {
            "files": n, "scored": rep["scored"], "errors": rep["errors"],
            "images_per_s": rep["images_per_second"], "seconds": rep["seconds"],
            "model_seconds": rep["model_seconds"], "wait_seconds": rep["wait_seconds"],
            "write_seconds": rep["write_seconds"],
            "idle_fraction": rep["wait_seconds"] / rep["seconds"] if rep["seconds"] > 0 else None,
            "peak_rss_mib": round(mem["peak_rss_mib"], 1),
            "workers_peak_rss_mib": round(mem["workers_peak_rss_mib"], 1),
            "process_wall_s": round(wall, 1),
        }
        r = runs[str(n)]
        print(f"{n:6d} files: {r['images_per_s']:7.1f} img/s  idle {100 * r['idle_fraction']:5.1f} %  "
              f"peak {r['peak_rss_mib']:7.1f} MiB (workers {r['workers_peak_rss_mib']:.0f} MiB)  "
              f"{r['seconds']:.1f} s scoring, {wall:.1f} s process", flush=True)
    load_after = os.getloadavg()
    sizes = sorted(args.sizes)
    import torch

    out = {
        "benchmark": "bench_score",
        "command": "benchmarks/bench_score.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "checkpoint": args.checkpoint, "fisher": args.fisher, "fit_images": args.fit_n,
        "calibration_images": args.cal_n, "batch_size": args.batch_size, "threads": args.threads,
        "workers": args.workers if args.workers is not None else default_workers(),
        "input": "PNG files of the Fashion-MNIST test images (28×28 grey), one folder per size",
        "torch": torch.__version__, "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(), "loadavg_before": load_before, "loadavg_after": load_after,
        "memory_method": ("peak resident set (VmHWM = ru_maxrss's counter) of the scoring process, reset at its start; "
                          "workers: ru_maxrss of its children"),
        "runs": runs,
        "peak_growth_largest_over_smallest": runs[str(sizes[-1])]["peak_rss_mib"] / runs[str(sizes[0])]["peak_rss_mib"],
        "wall_s_total": round(time.time() - t_start, 1),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    print(f"peak memory {sizes[-1]} files / {sizes[0]} files: {out['peak_growth_largest_over_smallest']:.2f}; "
          f"load {load_before[0]:.2f} → {load_after[0]:.2f}; wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
