"""ROSE's EKFAC fit against nngeometry's at several fit sizes, in one run.

``bench_peers.py`` compares the two fits on a few hundred images, where the fixed cost of the
float64 eigendecompositions (the heads' 2,048 × 2,048 input factor) is a large share of ROSE's fit.
A fit has two parts whose costs scale differently:

* the passes over the images (capture, Kronecker factors, the eigenvalue correction) grow with
  the number of images;
* the eigendecompositions do not.

So the ratio depends on the size, and this benchmark measures it at each ``--sizes`` value, up to the
default fit's 10,000 Fisher images (``rose_core.defaults``), on the shipped VAE, real Fashion-MNIST
**training** images and the VAE's default scored layers. The two fits are the ones ``bench_peers``
times (its ``rose_ekfac_fit`` and ``nngeometry_ekfac_fit``: ROSE's two-pass fit with the second pass
replayed, against ``PMatEKFAC(examples=…)`` + ``update_diag``). Agreement is checked
on what both compute (``bench_peers.check_fit``: unit-trace ``A``, ``B`` and ``Σ`` in ROSE's bases,
normwise ≤ ``--fit-rtol``, on the first timed fits); a size that disagrees is reported without a ratio.

Beside each ratio, the **best possible** one for that size: nngeometry's time over one pass at the
measured floor (``capture_factors``: forward + the activation-only backward, timed here on the same
images) plus the float64 eigendecompositions ROSE's fit runs (timed with the fit's own
``EkfacFisher._eigh``); and the **bound** with the statistics as well: that time plus the
multiply-adds no EKFAC fit avoids (:func:`statistics_bound`: the Kronecker Grams and the second pass's
rotations and products) at this CPU's measured float32 matrix-product rate. No implementation of this
fit on this CPU beats nngeometry by more than the bound.

Timing: one process for both fits, with freed memory reused for both
(:func:`rose_core.allocator.reuse_freed_memory`, as the CLI and the app do; the artifact records it);
``torch.set_num_threads(--threads)`` (default 1), the two fits and the floor interleaved in
every repeat with the order reversed on alternate repeats, best of ``--repeats``, after one untimed
warm-up of both fits on one batch; load average before and after. Writes ``results/benchmarks/fit-peers.json``. Needs the benchmark extra
(``make bench``).

Usage::

    .venv/bin/python benchmarks/bench_fit_peers.py [--sizes 512,2048,10000] [--repeats 2] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import warnings
from pathlib import Path
from types import SimpleNamespace

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_floor import matmul_rate, preconditioning_multiply_adds  # noqa: E402
from bench_peers import check_fit, fit_eigh_seconds, nngeometry_ekfac_fit, rose_ekfac_fit  # noqa: E402
from rose_core.checkpoint import load_model  # noqa: E402
from rose_core.data import load_dataset, to_model_input  # noqa: E402
from rose_core.pergrad import capture_factors, resolve_layers  # noqa: E402


def _sizes(text: str) -> list[int]:
    try:
        sizes = sorted({int(v) for v in text.split(",") if v.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(f"--sizes takes comma-separated integers, got {text!r}") from None
    if not sizes or sizes[0] < 2:
        raise argparse.ArgumentTypeError("--sizes needs at least one size of 2 or more images")
    return sizes


def statistics_bound(model, x: torch.Tensor, threads: int) -> dict:
    """The multiply-adds an EKFAC fit's statistics cannot avoid per image, beyond the floor pass: the
    first pass's Kronecker-factor Grams (symmetric, so half of ``T·D²`` and ``T·C²``; an input read by
    several layers counted once) and the second pass's rotations and per-sample products (the same as
    scoring's, ``bench_floor.preconditioning_multiply_adds``), with ``bench_floor``'s measured float32
    matrix-product rate."""
    torch.set_num_threads(threads)
    _, factors = capture_factors(model, x, resolve_layers(model, "default"))
    grams, seen = 0, set()
    for f in factors.values():
        c, d = f.shape
        t = f.positions
        key = (f.raw_input.data_ptr(), d)
        if key not in seen:
            grams += t * d * d // 2
            seen.add(key)
        grams += t * c * c // 2
    return {"multiply_adds_per_image": preconditioning_multiply_adds(factors) + grams,
            "gram_multiply_adds_per_image": grams, "matmul_multiply_adds_per_s": matmul_rate()}


def measure_size(model, names: list[str], fit_x: torch.Tensor, cal_x: torch.Tensor, args, bound: dict) -> dict:
    """Time both fits and the floor on ``fit_x``, then check the fits agree; the row of one size."""
    s = SimpleNamespace(model=model, names=names, fit_x=fit_x, cal_x=cal_x, args=args, scorers={})
    rose, nng = rose_ekfac_fit(s), nngeometry_ekfac_fit(s)
    layers = resolve_layers(model, names)
    bs = args.batch_size

    def floor():
        for i in range(0, len(fit_x), bs):
            capture_factors(model, fit_x[i:i + bs], layers)

    runs = [("rose", rose), ("nngeometry", nng), ("floor", floor)]
    times: dict[str, list[float]] = {k: [] for k, _ in runs}
    for r in range(args.repeats):
        for k, f in (runs if r % 2 == 0 else runs[::-1]):
            t0 = time.perf_counter()
            out = f()
            times[k].append(time.perf_counter() - t0)
            if k == "rose" and "ekfac" not in s.scorers:
                s.scorers["ekfac"] = out   # the fit the check reads (its first-pass sums)
    errs = check_fit(s, nng)
    worst = max(v for d in errs.values() for v in d.values())
    row = {"n_fit": len(fit_x), "check_max_normwise_rel_err": worst, "agrees": bool(worst <= args.fit_rtol),
           "times_s": times}
    if not row["agrees"]:
        row["reason"] = f"factors or Σ differ (normwise rel err {worst:.2e} > {args.fit_rtol:g}): no ratio"
        return row
    eig = fit_eigh_seconds(s)
    best = {k: min(v) for k, v in times.items()}
    stats_s = len(fit_x) * bound["multiply_adds_per_image"] / bound["matmul_multiply_adds_per_s"]
    row.update({
        "rose_fit_s": best["rose"], "nngeometry_fit_s": best["nngeometry"], "floor_pass_s": best["floor"],
        "eigh_s": eig["seconds"],
        "ratio": best["nngeometry"] / best["rose"],
        "best_possible_ratio": best["nngeometry"] / (best["floor"] + eig["seconds"]),
        "statistics_bound_s": stats_s,
        "bound_ratio": best["nngeometry"] / (best["floor"] + eig["seconds"] + stats_s),
        "rose_fit_over_floor_pass": best["rose"] / best["floor"],
    })
    return row


def main(argv: list[str] | None = None) -> int:
    from rose_core.allocator import reuse_freed_memory

    reused = reuse_freed_memory()   # as the CLI and the app do: large freed blocks are reused (rose_core.allocator)
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=_sizes, default=_sizes("512,2048,10000"),
                    help="fit sizes (comma-separated; Fashion-MNIST training images, 60,000 at most)")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1, for comparability)")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--fit-rtol", type=float, default=1e-4, help="normwise relative tolerance of the fit check")
    ap.add_argument("--checkpoint", default="checkpoints/vae-fmnist")
    ap.add_argument("--out", default=str(ROOT / "results" / "benchmarks" / "fit-peers.json"))
    args = ap.parse_args(argv)
    if args.repeats < 1:
        ap.error("--repeats must be at least 1")
    torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore")   # the heads are rank-deficient below 2,048 images
    model, card = load_model(args.checkpoint, device="cpu")
    model.eval()
    names = list(model.scored_layers("default"))
    train = load_dataset("fashion-mnist", "train", n=max(args.sizes), seed=0)
    x_all = to_model_input(train.images, channels=1)
    cal_x = to_model_input(load_dataset("fashion-mnist", "test", n=2, seed=0).images, channels=1)
    print(f"model {args.checkpoint} ({card.get('epochs', '?')} epochs); layers {names}; threads "
          f"{torch.get_num_threads()}; batch {args.batch_size}")
    warm = SimpleNamespace(model=model, names=names, fit_x=x_all[:args.batch_size], cal_x=cal_x, args=args)
    rose_ekfac_fit(warm)(), nngeometry_ekfac_fit(warm)()   # untimed warm-up of both fits on one batch
    bound = statistics_bound(model, x_all[:args.batch_size], args.threads)
    t_start, load_before = time.time(), os.getloadavg()
    rows = []
    for n in args.sizes:
        row = measure_size(model, names, x_all[:n], cal_x, args, bound)
        rows.append(row)
        if row["agrees"]:
            print(f"n={n:6d}  ROSE {row['rose_fit_s']:7.2f} s  nngeometry {row['nngeometry_fit_s']:7.2f} s  "
                  f"ratio {row['ratio']:.2f}  (best possible {row['best_possible_ratio']:.2f}: floor pass "
                  f"{row['floor_pass_s']:.2f} s + eigh {row['eigh_s']:.2f} s; with the statistics' "
                  f"multiply-adds {row['bound_ratio']:.2f})", flush=True)
        else:
            print(f"n={n:6d}  {row['reason']}", flush=True)
    out = {"benchmark": "bench_fit_peers",
           "command": "benchmarks/bench_fit_peers.py " + " ".join(sys.argv[1:] if argv is None else argv),
           "metric": "EKFAC fit seconds, ROSE vs nngeometry PMatEKFAC, by fit size", "checkpoint": args.checkpoint,
           "layers": names, "threads": torch.get_num_threads(), "batch_size": args.batch_size,
           "repeats": args.repeats, "torch": torch.__version__, "cpu": platform.processor() or platform.machine(),
           "cpu_count": os.cpu_count(), "loadavg_before": load_before, "loadavg_after": os.getloadavg(),
           "allocator_reuses_freed_memory": reused, "statistics_bound": bound, "rows": rows, "wall_s_total": time.time() - t_start}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {args.out}  ({out['wall_s_total']:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
