"""What lowers ROSE's cost floor: glibc's allocator setting and the VAE's channels-last + fused NLL.

ROSE scores with one forward and one activation-only backward (``capture_factors``, "the floor")
plus the preconditioning. Two changes make the floor itself cheaper without changing any score beyond
float32 rounding:

* ``allocator``: :func:`rose_core.allocator.reuse_freed_memory` keeps freed blocks above 32 MiB in the
  process instead of unmapping them, so a batch's large activations do not page-fault every batch
  (the opt-out ``ROSE_DEFAULT_MALLOC=1`` gives glibc's default);
* ``layout``: ``optimised`` is :meth:`rose_core.models.vae.VAE.optimise_layout` (what ``load_model`` does
  on the CPU): the decoder's weights channels-last, so it writes its 256 logits per pixel contiguously
  and :func:`rose_core.models.categorical.categorical_nll` runs fused; ``contiguous`` is the previous
  default (every weight in PyTorch's default layout, ``F.cross_entropy`` over strided classes).

Each of the four combinations runs in a fresh process (the allocator setting is per process) on the
same batches of real Fashion-MNIST test images, the shipped VAE and the same ROSE fits, repeated with
the combinations alternating; the best time of each is kept. Reported: images/s of the floor, ROSE-DIAG
and ROSE-EKFAC, peak resident memory of the process, the speed-up over the previous default
(``glibc default`` + ``contiguous``), and the largest relative difference of any score from it; and a
lower bound on EKFAC's preconditioning: the multiply-adds of its rotations at this CPU's measured
matrix-product rate, so the best ROSE-EKFAC / floor ratio the fastest floor allows.

Usage::

    .venv/bin/python benchmarks/bench_floor.py [--n 512] [--repeats 3] [--threads 1]

Writes ``results/benchmarks/floor.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rose_core.allocator import OPT_OUT_ENV, reuse_freed_memory  # noqa: E402
from rose_core.checkpoint import load_model  # noqa: E402
from rose_core.data import load_dataset, to_model_input  # noqa: E402
from rose_core.pergrad import capture_factors, resolve_layers  # noqa: E402
from rose_core.scorers.rose import RoseScorer  # noqa: E402

CONFIGS = [("glibc default", "contiguous"), ("reuse freed memory", "contiguous"),
           ("glibc default", "optimised"), ("reuse freed memory", "optimised")]
BASELINE = CONFIGS[0]
METHODS = ["floor", "ROSE-DIAG", "ROSE-EKFAC"]


def _images(args) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    x = to_model_input(load_dataset("fashion-mnist", "test", n=args.n + args.fit_n + args.cal_n).images, channels=1)
    return x[:args.n], x[args.n:args.n + args.fit_n], x[args.n + args.fit_n:]


def _peak_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024.0
    return float("nan")


def child(args) -> int:
    """One combination in this fresh process: best-of-``--inner`` seconds per method, peak memory, scores."""
    applied = reuse_freed_memory()      # a no-op under the opt-out variable the parent set for "glibc default"
    torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore")
    model, _ = load_model(args.checkpoint)
    if args.layout == "contiguous":
        model = model.to(memory_format=torch.contiguous_format)   # load_model applied the optimised layout
    layers = resolve_layers(model, "default")
    x, _, _ = _images(args)
    batches = [x[i:i + args.batch_size] for i in range(0, len(x), args.batch_size)]
    scorers = {k: RoseScorer.load(Path(args.fits_dir) / k, model) for k in ("diag", "ekfac")}
    runs = {"floor": lambda: [capture_factors(model, b, layers) for b in batches],
            "ROSE-DIAG": lambda: [scorers["diag"].score(b) for b in batches],
            "ROSE-EKFAC": lambda: [scorers["ekfac"].score(b) for b in batches]}
    best = {}
    for name, fn in runs.items():
        fn()    # warm-up
        times = []
        for _ in range(args.inner):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        best[name] = min(times)
    scores = {k: np.concatenate([s.score(b).extras["layer_raw"] for b in batches]).tolist()
              for k, s in scorers.items()}
    print("CHILD " + json.dumps({"seconds": best, "peak_mib": _peak_mib(), "allocator_applied": applied,
                                 "scores": scores}))
    return 0


def preconditioning_multiply_adds(factors: dict) -> int:
    """Multiply-adds per image of EKFAC's preconditioning (each layer's rotations into its eigenbases plus
    the per-sample product, in the cheaper order ``rose_core.fisher`` picks; inputs shared by layers
    rotated once), from one batch's factors."""
    macs, seen = 0, set()
    for f in factors.values():
        c, d = f.shape
        t = f.positions
        if t == 1 and f.offset is None:
            key = (f.raw_input.data_ptr(), d)
            macs += c * c + (0 if key in seen else d * d)
            seen.add(key)
        else:
            macs += min(t, c) * d * d + min(t, d) * c * c + t * c * d
    return macs


def matmul_rate() -> float:
    """This CPU's float32 matrix-product rate (multiply-adds per second) at the current thread count."""
    a, b = torch.randn(4096, 1024), torch.randn(1024, 1024)
    a @ b
    t0 = time.perf_counter()
    for _ in range(5):
        a @ b
    return float(f"{5 * 4096 * 1024 * 1024 / (time.perf_counter() - t0):.4g}")


def ekfac_bound(model, x: torch.Tensor, threads: int) -> dict:
    """The multiply-adds EKFAC's preconditioning cannot avoid for one batch
    (:func:`preconditioning_multiply_adds`) and the time they take at this CPU's measured float32
    matrix-product rate: a lower bound on ROSE-EKFAC's cost above the floor."""
    torch.set_num_threads(threads)
    _, factors = capture_factors(model, x, resolve_layers(model, "default"))
    n = len(x)
    macs = n * preconditioning_multiply_adds(factors)
    rate = matmul_rate()
    return {"multiply_adds_per_batch": macs, "batch": n, "matmul_multiply_adds_per_s": rate,
            "seconds_per_batch_at_that_rate": round(macs / rate, 4)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", default=str(ROOT / "checkpoints" / "vae-fmnist"))
    ap.add_argument("--n", type=int, default=512, help="images scored per run")
    ap.add_argument("--fit-n", type=int, default=512, help="images of the ROSE fits (DIAG and EKFAC)")
    ap.add_argument("--cal-n", type=int, default=256, help="calibration images of the fits")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3, help="processes per combination, alternating")
    ap.add_argument("--inner", type=int, default=2, help="timed runs per method within a process")
    ap.add_argument("--out", default=str(ROOT / "results" / "benchmarks" / "floor.json"))
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--layout", default="contiguous", help=argparse.SUPPRESS)
    ap.add_argument("--fits-dir", default="", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        return child(args)

    torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore")   # the heads are rank-deficient on a few hundred fit images
    model, card = load_model(args.checkpoint)
    _, fit_x, cal_x = _images(args)
    passthrough = [f"--{k.replace('_', '-')}={getattr(args, k)}" for k in
                   ("checkpoint", "n", "fit_n", "cal_n", "batch_size", "threads", "inner")]
    load_before = os.getloadavg()[0]
    results: dict[tuple, dict] = {}
    with tempfile.TemporaryDirectory() as fits:
        for kind in ("diag", "ekfac"):
            RoseScorer(model, fisher=kind, batch_size=args.batch_size).fit(fit_x, calibration=cal_x).save(
                Path(fits) / kind)
        for r in range(args.repeats):
            for cfg in CONFIGS:
                env = dict(os.environ)
                env.pop(OPT_OUT_ENV, None)
                if cfg[0] == "glibc default":
                    env[OPT_OUT_ENV] = "1"
                cmd = [sys.executable, str(Path(__file__).resolve()), "--child", f"--layout={cfg[1]}",
                       f"--fits-dir={fits}"] + passthrough
                proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
                line = [ln for ln in proc.stdout.splitlines() if ln.startswith("CHILD ")]
                if proc.returncode != 0 or not line:
                    raise SystemExit(f"{cfg}: {(proc.stderr.strip().splitlines() or ['no output'])[-1]}")
                got = json.loads(line[-1][6:])
                keep = results.setdefault(cfg, {"seconds": {m: float("inf") for m in METHODS}, "peak_mib": 0.0})
                keep["seconds"] = {m: min(keep["seconds"][m], got["seconds"][m]) for m in METHODS}
                keep["peak_mib"] = max(keep["peak_mib"], got["peak_mib"])
                keep["allocator_applied"] = got["allocator_applied"]
                keep["scores"] = got["scores"]
                print(f"repeat {r + 1}/{args.repeats} {cfg[0]:>18s} + {cfg[1]:13s} "
                      + "  ".join(f"{m} {args.n / got['seconds'][m]:6.1f} img/s" for m in METHODS), flush=True)

    bound = ekfac_bound(model, fit_x[:args.batch_size], args.threads)
    base = results[BASELINE]
    rows = []
    for cfg in CONFIGS:
        res = results[cfg]
        ips = {m: args.n / res["seconds"][m] for m in METHODS}
        rel = max(float(np.max(np.abs(np.array(res["scores"][k]) - np.array(base["scores"][k]))
                               / np.abs(np.array(base["scores"][k])))) for k in ("diag", "ekfac"))
        rows.append({"allocator": cfg[0], "layout": cfg[1], "allocator_applied": res["allocator_applied"],
                     "images_per_s": {m: round(v, 1) for m, v in ips.items()},
                     "speedup_vs_previous_default": {m: round(base["seconds"][m] / res["seconds"][m], 2)
                                                     for m in METHODS},
                     "rose_to_floor": {m: round(res["seconds"]["floor"] / res["seconds"][m], 3)
                                       for m in ("ROSE-DIAG", "ROSE-EKFAC")},
                     "peak_mib": round(res["peak_mib"], 1),
                     "max_rel_score_difference": float(f"{rel:.2e}")})
    out = {"command": "benchmarks/bench_floor.py " + " ".join(argv if argv is not None else sys.argv[1:]),
           "checkpoint": str(Path(args.checkpoint).relative_to(ROOT)) if Path(args.checkpoint).is_relative_to(ROOT)
           else args.checkpoint,
           "checkpoint_epochs": card.get("epochs"), "device": "cpu", "threads": args.threads,
           "batch_size": args.batch_size, "images": args.n, "repeats": args.repeats, "inner": args.inner,
           "torch": torch.__version__, "machine": platform.machine(), "cpus": os.cpu_count(),
           "load_average": [round(load_before, 2), round(os.getloadavg()[0], 2)],
           "previous_default": {"allocator": BASELINE[0], "layout": BASELINE[1]}, "rows": rows,
           "ekfac_preconditioning_bound": bound}
    best = rows[-1]
    floor_s = args.batch_size / best["images_per_s"]["floor"]
    bound["best_possible_rose_ekfac_to_floor"] = round(floor_s / (floor_s + bound["seconds_per_batch_at_that_rate"]), 3)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    print(f"\n{'allocator':>18s}  {'layout':13s} " + " ".join(f"{m:>11s}" for m in METHODS)
          + "   speed-up (floor/DIAG/EKFAC)   ROSE/floor   peak MiB   max rel diff")
    for r in rows:
        print(f"{r['allocator']:>18s}  {r['layout']:13s} "
              + " ".join(f"{r['images_per_s'][m]:11.1f}" for m in METHODS)
              + "   " + "/".join(f"{r['speedup_vs_previous_default'][m]:.2f}" for m in METHODS)
              + f"            {r['rose_to_floor']['ROSE-DIAG']:.2f}/{r['rose_to_floor']['ROSE-EKFAC']:.2f}"
              + f"    {r['peak_mib']:7.0f}    {r['max_rel_score_difference']:.1e}")
    print(f"EKFAC preconditioning: {bound['multiply_adds_per_batch'] / 1e9:.2f} G multiply-adds per batch of "
          f"{bound['batch']}, {bound['seconds_per_batch_at_that_rate'] * 1e3:.0f} ms at the measured matrix-product rate "
          f"({bound['matmul_multiply_adds_per_s'] / 1e9:.0f} G/s): ROSE-EKFAC / floor can be at most "
          f"{bound['best_possible_rose_ekfac_to_floor']:.2f} with the fastest floor above")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
