"""What the EKFAC fit's float32 batch statistics change in the scores, against float64 Kronecker factors.

``rose_core.fisher`` forms a batch's input-factor Gram ``Σ h hᵀ`` in the compute dtype (float32
here) and its output-factor Gram ``Σ δ δᵀ`` in float64, and sums every batch in float64 (see its
module docstring). This script fits the shipped VAE's default layers three ways on the same captured
statistics and scores the same images with each:

* ``shipped``: ``EkfacFisher`` as it is;
* ``float64 Grams`` (the reference): both Grams formed in float64 from the float32 statistics;
* ``float32 output Gram``: ``Σ δ δᵀ`` in float32 too (the choice the module rejects).

For each variant and layer it records the largest and the median relative difference of the layer
scores ``s_l = gᵀ F⁻¹ g`` from the reference (Fashion-MNIST test and MNIST test images), and the
seconds of the first pass's Gram accumulation (the part the precision changes). One process, one
thread, freed memory reused (:func:`rose_core.allocator.reuse_freed_memory`). Writes
``results/benchmarks/fit-precision.json``; the README's ``fit-precision`` block is rendered from it.

Usage::

    .venv/bin/python benchmarks/bench_fit_precision.py [--n-fit 10000] [--n-test 300]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rose_core.checkpoint import load_model  # noqa: E402
from rose_core.data import load_dataset, to_model_input  # noqa: E402
from rose_core.fisher import EkfacFisher  # noqa: E402
from rose_core.pergrad import capture_factors, resolve_layers  # noqa: E402


class Float64Grams(EkfacFisher):
    """Both Kronecker factors' batch Grams formed in float64 (the reference)."""

    input_gram_dtype = torch.float64


class Float32OutputGram(EkfacFisher):
    """The output factor's batch Gram in the compute dtype (float32) as well."""

    output_gram_dtype = None


VARIANTS = {"shipped": EkfacFisher, "float64 Grams": Float64Grams, "float32 output Gram": Float32OutputGram}
REFERENCE = "float64 Grams"


def fit(cls: type[EkfacFisher], batches: list[dict]) -> tuple[EkfacFisher, float]:
    """Both passes over the captured batches (fresh copies each pass: every variant unfolds ``h`` anew)."""
    fisher = cls()
    t0 = time.perf_counter()
    for b in batches:
        fisher.update({k: f.without_cache() for k, f in b.items()})
    first_pass = time.perf_counter() - t0
    fisher.end_pass()
    for b in batches:
        fisher.update({k: f.without_cache() for k, f in b.items()})
    fisher.end_pass()
    return fisher, first_pass


def main(argv: list[str] | None = None) -> int:
    from rose_core.allocator import reuse_freed_memory

    reuse_freed_memory()
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n-fit", type=int, default=10_000, help="Fashion-MNIST training images for the fits")
    ap.add_argument("--n-test", type=int, default=300, help="images scored from each test set")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--checkpoint", default="checkpoints/vae-fmnist")
    ap.add_argument("--out", default=str(ROOT / "results" / "benchmarks" / "fit-precision.json"))
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")   # a small --n-fit is rank-deficient, which is part of what is shown
    model, card = load_model(ROOT / args.checkpoint)
    names = list(model.scored_layers("default"))
    layers = resolve_layers(model, names)
    x = to_model_input(load_dataset("fashion-mnist", "train", n=args.n_fit, seed=0).images, channels=1)
    bs = args.batch_size
    batches = [{k: f.without_cache() for k, f in capture_factors(model, x[i:i + bs], layers)[1].items()}
               for i in range(0, len(x), bs)]
    tests = {s: to_model_input(load_dataset(s, "test", n=args.n_test, seed=0).images, channels=1)
             for s in ("fashion-mnist", "mnist")}
    test_stats = {s: capture_factors(model, t, layers)[1] for s, t in tests.items()}
    scores, seconds = {}, {}
    for name, cls in VARIANTS.items():
        fisher, seconds[name] = fit(cls, batches)
        scores[name] = {s: fisher.precondition_norm(st) for s, st in test_stats.items()}
        print(f"{name:22s} first-pass statistics {seconds[name]:.2f} s", flush=True)
    ref = scores[REFERENCE]
    rows = []
    for name in VARIANTS:
        if name == REFERENCE:
            continue
        per_layer = {}
        for layer in names:
            rel = torch.cat([((scores[name][s][layer].double() - ref[s][layer].double()).abs()
                              / ref[s][layer].double().abs()) for s in tests])
            per_layer[layer] = {"max_rel": float(rel.max()), "median_rel": float(rel.median())}
        rows.append({"variant": name, "first_pass_s": seconds[name], "layers": per_layer})
        print(name, {k: f"{v['max_rel']:.1e}" for k, v in per_layer.items()}, flush=True)
    out = {"benchmark": "bench_fit_precision",
           "command": "benchmarks/bench_fit_precision.py " + " ".join(sys.argv[1:] if argv is None else argv),
           "checkpoint": args.checkpoint, "epochs": card.get("epochs"), "layers": names, "n_fit": len(x),
           "test_sets": list(tests), "n_test": args.n_test, "batch_size": bs, "threads": 1,
           "reference": REFERENCE, "reference_first_pass_s": seconds[REFERENCE], "rows": rows,
           "torch": torch.__version__, "cpu_count": os.cpu_count()}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
