"""The default ROSE fit's speed beside the model's own forward and forward+backward cost, in one run.

On the shipped VAE (``checkpoints/vae-fmnist``) and real Fashion-MNIST images, in one process:

* ``forward``   — ``per_sample_loss`` without gradients, on the Fisher images;
* ``fwd+bwd``   — one forward and the activation-only backward ROSE needs
  (:func:`rose_core.pergrad.capture_factors`), on the Fisher images: the cost floor of a fit
  (every Fisher and calibration image needs at least this once);
* ``fit``       — :func:`rose_core.defaults.fit_default_rose` with ``--n-fisher`` training images
  and ``--n-calibration`` held-out test images (EKFAC: factors, eigenbases, the second pass
  replayed from the first pass's factors, calibration pass);
* ``fit, no replay`` — the same fit on ``--n-replay`` Fisher images with the second pass
  recomputed (``replay_bytes=0``) beside the replayed one, to show what the replay saves.

Throughputs are images per second of wall time; the load average (1 min) is recorded before and
after. Compare the ratios: they come from one run. Writes ``results/benchmarks/fit.json``.

Usage::

    .venv/bin/python benchmarks/bench_fit.py [--n-fisher 10000] [--n-calibration 5000] [--threads 2]
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

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rose_core.checkpoint import load_model  # noqa: E402
from rose_core.data import load_dataset, to_model_input  # noqa: E402
from rose_core.defaults import default_rose, fit_default_rose  # noqa: E402
from rose_core.pergrad import capture_factors, resolve_layers  # noqa: E402
from rose_core.scorers.rose import RoseScorer  # noqa: E402


def _rate(fn, n: int) -> tuple[float, float]:
    t0 = time.perf_counter()
    fn()
    dt = time.perf_counter() - t0
    return n / dt, dt


def main() -> int:
    from rose_core.allocator import reuse_freed_memory

    reuse_freed_memory()   # as the CLI and the app do: large freed blocks are reused (rose_core.allocator)
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--checkpoint", default="checkpoints/vae-fmnist")
    ap.add_argument("--n-fisher", type=int, default=None, help="default: the defaults' rule (10000 for the VAE)")
    ap.add_argument("--n-calibration", type=int, default=None, help="default: the whole calibration half")
    ap.add_argument("--n-floor", type=int, default=2048, help="images for the forward / fwd+bwd floor")
    ap.add_argument("--n-replay", type=int, default=2048, help="Fisher images of the replay comparison")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="results/benchmarks/fit.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore")
    load_before = os.getloadavg()[0]

    model, card = load_model(args.checkpoint)
    dataset = card["dataset"]
    spec = default_rose(model, len(load_dataset(dataset, "train")))
    n_fisher = args.n_fisher or spec.n_fisher
    x = to_model_input(load_dataset(dataset, "train").subset(args.n_floor, 1).images, channels=1)
    layers = resolve_layers(model, "default")
    bs = args.batch_size

    def forward():
        with torch.no_grad():
            for i in range(0, len(x), bs):
                model.per_sample_loss(x[i:i + bs])

    def fwd_bwd():
        for i in range(0, len(x), bs):
            capture_factors(model, x[i:i + bs], layers)

    rows = {}
    rows["forward"], _ = _rate(forward, len(x))
    rows["fwd+bwd"], _ = _rate(fwd_bwd, len(x))

    cal = x[: max(2, args.n_replay // 4)]
    xr = to_model_input(load_dataset(dataset, "train").subset(args.n_replay, 2).images, channels=1)
    replay, _ = _rate(lambda: RoseScorer(model, fisher=spec.fisher, batch_size=bs).fit(xr, calibration=cal),
                      len(xr) + len(cal))
    no_replay, _ = _rate(lambda: RoseScorer(model, fisher=spec.fisher, batch_size=bs, replay_bytes=0)
                         .fit(xr, calibration=cal), len(xr) + len(cal))

    t0 = time.perf_counter()
    scorer = fit_default_rose(model, dataset, n_fisher=n_fisher, n_calibration=args.n_calibration, batch_size=bs)
    fit_s = time.perf_counter() - t0
    n_images = scorer.n_fisher + scorer.n_norm
    load_after = os.getloadavg()[0]

    floor_s = n_images / rows["fwd+bwd"]
    result = {
        "command": "benchmarks/bench_fit.py " + " ".join(sys.argv[1:]),
        "checkpoint": args.checkpoint, "fisher": spec.fisher, "n_fisher": scorer.n_fisher,
        "n_calibration": scorer.n_norm, "batch_size": bs, "threads": args.threads,
        "cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
        "load_avg_1min_before": round(load_before, 2), "load_avg_1min_after": round(load_after, 2),
        "images_per_second": {"forward": round(rows["forward"], 1), "fwd+bwd": round(rows["fwd+bwd"], 1),
                              "fit (replayed 2nd pass)": round(replay, 1),
                              "fit (recomputed 2nd pass)": round(no_replay, 1),
                              "default fit": round(n_images / fit_s, 1)},
        "default_fit_seconds": round(fit_s, 1),
        "fwd_bwd_floor_seconds": round(floor_s, 1),
        "fit_over_floor": round(fit_s / floor_s, 2),
        "replay_speedup": round(replay / no_replay, 2),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"{args.checkpoint}, ROSE-{spec.fisher.upper()}, batch {bs}, {args.threads} threads, "
          f"load {load_before:.1f} → {load_after:.1f}")
    for k, v in result["images_per_second"].items():
        print(f"  {k:28s} {v:8.1f} img/s")
    print(f"default fit: {scorer.n_fisher} Fisher + {scorer.n_norm} calibration images in {fit_s:.1f} s = "
          f"{result['fit_over_floor']}× the forward+backward floor ({floor_s:.1f} s); "
          f"replaying the second pass: {result['replay_speedup']}× faster fit; wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
