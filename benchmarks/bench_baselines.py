"""Throughput (images/s) of every baseline OOD scorer on the same batch of
Fashion-MNIST test images, with the VAE at ``checkpoints/vae-fmnist`` if present
(else a freshly initialised paper-size VAE, said in the output), and Likelihood
Regret batched vs a batch-size-1 loop (ratio printed).

    PYTHONPATH=. python benchmarks/bench_baselines.py [--n 64] [--n-lr 8] [--lr-steps 100] [--device cpu]

Timings on shared machines vary by up to 3x between runs; compare within one run.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

from rose_core.checkpoint import load_model
from rose_core.data import load_dataset, to_model_input
from rose_core.errors import RoseError
from rose_core.models import VAE
from rose_core.scorers.input_complexity import jpeg2000_available
from rose_core.scorers.registry import build_scorer
from rose_core.scorers.rnd import RNDScorer, train_rnd


def load_or_fresh(path: str, device: str, what: str) -> tuple[VAE, str]:
    card = Path(path + ".json")
    if card.exists():
        try:
            model, c = load_model(path, device=device)
            return model, f"{what}: {path} ({c.get('epochs', '?')} epochs)"
        except RoseError as exc:
            return VAE().to(device).eval(), f"{what}: FRESH untrained VAE() ({path} unusable: {exc})"
    torch.manual_seed(1 if "background" in what else 0)
    return VAE().to(device).eval(), f"{what}: FRESH untrained VAE() ({path} not found)"


def timed(fn, x: torch.Tensor, device: str) -> tuple[float, object]:
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    out = fn(x)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - t0, out


def main() -> int:
    from rose_core.allocator import reuse_freed_memory

    reuse_freed_memory()   # as the CLI and the app do: large freed blocks are reused (rose_core.allocator)
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=64, help="images for the fast baselines")
    ap.add_argument("--n-lr", type=int, default=8, help="images for Likelihood Regret (batched)")
    ap.add_argument("--n-lr-loop", type=int, default=4, help="images for the batch-size-1 Likelihood Regret loop")
    ap.add_argument("--lr-steps", type=int, default=100)
    ap.add_argument("--elbo-samples", type=int, default=20)
    ap.add_argument("--k", type=int, default=20)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json", default=None, help="also write the figures to this JSON file")
    args = ap.parse_args()
    dev = args.device

    vae, vae_note = load_or_fresh("checkpoints/vae-fmnist", dev, "VAE")
    bg, bg_note = load_or_fresh("checkpoints/vae-fmnist-background", dev, "background VAE")
    x = to_model_input(load_dataset("fashion-mnist", "test", n=max(args.n, args.n_lr, args.n_lr_loop), seed=0).images)
    if Path("checkpoints/rnd-fmnist.json").exists():
        rnd, rnd_note = RNDScorer.load("checkpoints/rnd-fmnist", device=dev), "RND: checkpoints/rnd-fmnist"
    else:
        rnd = train_rnd(x, epochs=1, device=dev)
        rnd_note = "RND: checkpoints/rnd-fmnist not found; a 1-epoch RND on the benchmark batch (speed only)"
    print(f"torch {torch.__version__}, {platform.processor() or platform.machine()}, device {dev}, "
          f"{torch.get_num_threads()} threads")
    for note in (vae_note, bg_note, rnd_note):
        print("  " + note)

    results: dict[str, dict] = {}

    def run(name: str, scorer, n: int, warmup=None) -> float:
        xs = x[:n]
        (warmup or scorer).score(xs[:1])  # warm-up (a 1-step copy for Likelihood Regret)
        dt, res = timed(scorer.score, xs, dev)
        results[name] = {"images": n, "seconds": round(dt, 3), "images_per_s": round(n / dt, 3)}
        print(f"{name:34s} {n:4d} images {dt:8.2f} s  {n / dt:10.2f} img/s", flush=True)
        return n / dt

    run("nll (IWAE k=%d)" % args.k, build_scorer("nll", vae, k=args.k), args.n)
    run("likelihood-ratio", build_scorer("likelihood-ratio", vae, background_model=bg, k=args.k), args.n)
    run("input-complexity-png", build_scorer("input-complexity-png", vae, k=args.k), args.n)
    if jpeg2000_available():
        run("input-complexity-jp2", build_scorer("input-complexity-jp2", vae, k=args.k), args.n)
    run("rnd", build_scorer("rnd", None, rnd=rnd), args.n)
    lr_kw = dict(steps=args.lr_steps, k=args.k, elbo_samples=args.elbo_samples)
    warm = build_scorer("likelihood-regret", vae, **{**lr_kw, "steps": 1})
    batched = run(f"likelihood-regret batched (bs {args.n_lr})",
                  build_scorer("likelihood-regret", vae, batch_size=args.n_lr, **lr_kw), args.n_lr, warm)
    loop = run("likelihood-regret loop (bs 1)", build_scorer("likelihood-regret", vae, batch_size=1, **lr_kw),
               args.n_lr_loop, warm)
    print(f"Likelihood Regret ({args.lr_steps} steps, {args.elbo_samples} ELBO samples/step): "
          f"batched / loop = {batched / loop:.2f}x")
    if args.json:
        Path(args.json).write_text(json.dumps({"device": dev, "notes": [vae_note, bg_note, rnd_note],
                                               "lr_settings": lr_kw, "results": results,
                                               "lr_batched_over_loop": batched / loop}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
