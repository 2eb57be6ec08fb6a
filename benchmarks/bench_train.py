"""Training throughput (images/s) of the paper's FMNIST VAE and Glow, measured in one run.

    python benchmarks/bench_train.py [--device cpu|cuda] [--steps 20] [--batch-size 64]

A training step is forward + backward + optimizer step at the paper's batch size
on real Fashion-MNIST images. Timings vary between runs on shared machines:
compare the two models' figures from the same run.
"""

from __future__ import annotations

import argparse
import time

import torch

from rose_core.data import load_dataset, to_model_input
from rose_core.models import GLOW_CONFIGS, VAE_CONFIGS, Glow, VAE
from rose_core.training import resolve_device


def steps_per_second(model, x, opt, steps: int, device) -> float:
    model.train()

    def step():
        loss = model.training_loss(x).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(3):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return steps / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch-size", type=int, default=64)
    args = ap.parse_args()
    device = resolve_device(args.device)
    torch.manual_seed(0)
    images = load_dataset("fashion-mnist", "train", n=args.batch_size, seed=0).images
    x = to_model_input(images, channels=1, device=device)
    rows = []
    for name, model, opt_cls, lr in [("VAE (256-way)", VAE(VAE_CONFIGS["fmnist"]), torch.optim.Adam, 1e-3),
                                     ("Glow K=16 L=2", Glow(GLOW_CONFIGS["fmnist"]), torch.optim.Adamax, 5e-5)]:
        model.to(device)
        opt = opt_cls(model.parameters(), lr=lr)
        sps = steps_per_second(model, x, opt, args.steps, device)
        rows.append((name, sps * args.batch_size, 60000 / (sps * args.batch_size) / 60))
    print(f"device: {device}, threads: {torch.get_num_threads()}, batch {args.batch_size}, {args.steps} timed steps")
    print(f"{'model':16s} {'images/s':>10s} {'min/epoch (60k)':>16s}")
    for name, ips, mins in rows:
        print(f"{name:16s} {ips:10.1f} {mins:16.1f}")
    print(f"ratio VAE/Glow: {rows[0][1] / rows[1][1]:.1f}x")


if __name__ == "__main__":
    main()
