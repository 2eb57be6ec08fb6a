"""Training throughput (images/s) of the paper's models, and whether channels-last or
``torch.compile`` would make training faster on this machine, measured in one run.

    python benchmarks/bench_train.py [--device cpu|cuda] [--steps 6] [--repeats 2] [--batch-size 64]
                                     [--models vae-fmnist,vae-cifar10,glow-fmnist,glow-cifar10] [--out results/benchmarks/train.json]

A training step is forward + backward + optimizer step at the paper's batch size (64) on real images
of the model's training set (Fashion-MNIST; the committed ``cifar10-subset`` for the CIFAR-10 VAE).
The weights are the shipped checkpoint's (``checkpoints/<model>``) when it exists, else a fresh
initialisation (recorded): a trained decoder's softmax gradient is mostly float32 denormals, which a
fresh one's is not, so the two differ in speed. For every model the variants run on the same batch,
alternating (``eager``, ``flush_denormal``: denormals flushed to zero,
``channels_last``: the whole model, ``compile``, ``as_trained``), ``repeats`` times, and the best repeat counts (the machine is shared: the best run is
the least disturbed one). ``torch.compile``'s compilation time is measured separately and left out of
its images/s; a variant that fails (no compiler, an unsupported op) is recorded with its error. The
ratios to ``eager`` come from the same run; the load average is recorded before and after.
``as_trained`` is what ``rose_core.training`` runs: denormals flushed on the CPU and the model's own
``optimise_layout`` (the VAE's decoder channels-last, its NLL fused); every other variant starts from
PyTorch's default layout. ``--compile`` is the trainer's option. The process keeps freed memory
(:func:`rose_core.allocator.reuse_freed_memory`, as the CLI does) for every variant alike.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

from rose_core.data import load_dataset, to_model_input
from rose_core.models import GLOW_CONFIGS, VAE_CONFIGS, Glow, VAE
from rose_core.training import resolve_device

MODELS = {  # name -> (builder, optimizer, lr, training set, channels)
    "vae-fmnist": (lambda: VAE(VAE_CONFIGS["fmnist"]), torch.optim.Adam, 1e-3, "fashion-mnist", 1),
    "vae-cifar10": (lambda: VAE(VAE_CONFIGS["cifar10"]), torch.optim.Adam, 1e-3, "cifar10-subset", 3),
    "glow-fmnist": (lambda: Glow(GLOW_CONFIGS["fmnist"]), torch.optim.Adamax, 5e-5, "fashion-mnist", 1),
    "glow-cifar10": (lambda: Glow(GLOW_CONFIGS["cifar10"]), torch.optim.Adamax, 5e-5, "cifar10-subset", 3),
}
VARIANTS = ("eager", "flush_denormal", "channels_last", "compile", "as_trained")
TRAIN_IMAGES = {"fashion-mnist": 60000, "cifar10-subset": 5085}
CHECKPOINTS = Path(__file__).resolve().parents[1] / "checkpoints"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


class Variant:
    """One model in one variant, with its own copy of the weights and optimizer."""

    def __init__(self, name: str, variant: str, x: torch.Tensor, device: torch.device) -> None:
        build, opt_cls, lr, _, _ = MODELS[name]
        torch.manual_seed(0)
        self.model = build()
        if (CHECKPOINTS / f"{name}.safetensors").exists():
            from rose_core.checkpoint import load_model

            self.model, _ = load_model(CHECKPOINTS / name)
        self.model.to(device).to(memory_format=torch.contiguous_format)   # load_model optimised the layout
        self.flush = variant in ("flush_denormal", "as_trained") and device.type == "cpu"
        self.x = x
        if variant == "as_trained":   # what rose_core.training runs: denormals flushed, the model's own layout
            self.model.optimise_layout(device)
        if variant == "channels_last":
            self.model = self.model.to(memory_format=torch.channels_last)
            self.x = x.contiguous(memory_format=torch.channels_last)
        self.model.train()
        with torch.no_grad():  # Glow's data-dependent ActNorm initialisation runs eagerly, once
            self.model.training_loss(self.x)
        self.opt = opt_cls(self.model.parameters(), lr=lr)
        self.loss_fn = torch.compile(self.model.training_loss) if variant == "compile" else self.model.training_loss
        self.device = device
        t = time.perf_counter()
        for _ in range(2):  # warm-up; for compile this is the compilation
            self.step()
        _sync(device)
        self.warmup_seconds = time.perf_counter() - t

    def step(self) -> None:
        if self.flush:
            torch.set_flush_denormal(True)
        try:
            self._step()
        finally:
            if self.flush:
                torch.set_flush_denormal(False)

    def _step(self) -> None:
        loss = self.loss_fn(self.x).mean()
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()

    def images_per_second(self, steps: int) -> float:
        _sync(self.device)
        t = time.perf_counter()
        for _ in range(steps):
            self.step()
        _sync(self.device)
        return steps * len(self.x) / (time.perf_counter() - t)


def bench_model(name: str, args, device: torch.device) -> dict:
    dataset, channels = MODELS[name][3], MODELS[name][4]
    images = load_dataset(dataset, "train", n=args.batch_size, seed=0).images
    x = to_model_input(images, channels=channels, device=device)
    variants, errors = {}, {}
    for v in VARIANTS:
        try:
            variants[v] = Variant(name, v, x, device)
        except Exception as exc:  # noqa: BLE001 - a variant that cannot run is a result, not a crash
            errors[v] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"
    best = {v: 0.0 for v in variants}
    for _ in range(args.repeats):  # alternate the variants so a load change hits them all
        for v, runner in variants.items():
            try:
                best[v] = max(best[v], runner.images_per_second(args.steps))
            except Exception as exc:  # noqa: BLE001
                errors[v] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"
    best = {v: s for v, s in best.items() if v not in errors}
    eager = best.get("eager")
    rows = {v: {"images_per_s": round(s, 2),
                "ratio_to_eager": round(s / eager, 3) if eager else None,
                "warmup_s": round(variants[v].warmup_seconds, 1),
                "minutes_per_epoch": round(TRAIN_IMAGES[dataset] / s / 60, 2)} for v, s in best.items()}
    weights = "checkpoint" if (CHECKPOINTS / f"{name}.safetensors").exists() else "fresh initialisation"
    return {"dataset": dataset, "train_images": TRAIN_IMAGES[dataset], "weights": weights, "variants": rows,
            "errors": errors}


def main() -> None:
    from rose_core.allocator import reuse_freed_memory

    reuse_freed_memory()   # as the CLI and the app do: large freed blocks are reused (rose_core.allocator)
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--out", default="results/benchmarks/train.json")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    load_before = os.getloadavg()[0]
    out = {"command": "benchmarks/bench_train.py " + " ".join(sys.argv[1:]), "device": str(device), "threads": torch.get_num_threads(), "batch_size": args.batch_size,
           "steps": args.steps, "repeats": args.repeats, "torch": torch.__version__,
           "machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(), "models": {}}
    for name in args.models.split(","):
        out["models"][name] = bench_model(name, args, device)
        print(f"{name}: " + ", ".join(f"{v} {r['images_per_s']:.1f} img/s ({r['ratio_to_eager']}x)"
                                     for v, r in out["models"][name]["variants"].items())
              + "".join(f"; {v} failed: {e}" for v, e in out["models"][name]["errors"].items()), flush=True)
    out["load_average"] = [round(load_before, 2), round(os.getloadavg()[0], 2)]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {args.out} (load {out['load_average'][0]} -> {out['load_average'][1]})")


if __name__ == "__main__":
    main()
