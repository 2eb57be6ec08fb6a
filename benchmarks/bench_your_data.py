"""How long the app's "Your data" page takes for 5,000 images on this CPU, at 28×28 and at 32×32.

For each size, the page's own steps, timed one after the other in one process, with the page's
defaults (:data:`rose_core.user_data.DEFAULT_EPOCHS` epochs of the paper's VAE at width
:data:`rose_core.user_data.DEFAULT_WIDTH`):

1. ``import``: :func:`rose_core.user_data.import_images` reads a folder of 5,000 PNG files (decode,
   resize to 32×32, the every-5th-file split) — 28×28: Fashion-MNIST training images (grey);
   32×32: the first 5,000 training images of ``cifar10-subset`` (real CIFAR-10, colour);
2. ``train``: :func:`rose_core.user_data.train_user_model` on the 4,000 training files;
3. ``fit``: the default ROSE fit the app makes for the new model
   (:class:`rose_core.live.LiveScorer`: Fisher on the training split, calibration on the held-out half).

The PNG files are written to a temporary folder first (not timed). ``--threads`` torch threads (default 1:
the machine's other core runs a background training job); the 1-minute load average is recorded before and
after each size. Writes ``results/benchmarks/your_data.json``.

Usage::

    .venv/bin/python benchmarks/bench_your_data.py [--n 5000] [--epochs 5] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SOURCES = {"28x28": ("fashion-mnist", "train"), "32x32": ("cifar10-subset", "train")}


def _write_pngs(images, folder: Path) -> None:
    from PIL import Image

    for i, im in enumerate(images):
        sub = folder / f"class{i % 10}"
        sub.mkdir(parents=True, exist_ok=True)
        Image.fromarray(im[..., 0] if im.shape[-1] == 1 else im).save(sub / f"{i:05d}.png")


def _run_size(size: str, n: int, epochs: int, width: int, work: Path, repo_data: Path) -> dict:
    import numpy as np

    from rose_core.data import load_dataset
    from rose_core.live import LiveScorer
    from rose_core.user_data import import_images, train_user_model, user_checkpoint

    name, split = SOURCES[size]
    images = load_dataset(name, split, root=repo_data).images[:n]
    if len(images) < n:
        raise SystemExit(f"{name}/{split} has only {len(images)} images.")
    folder = work / f"png-{size}"
    _write_pngs(images, folder)
    record = {"size": size, "source": f"{name}/{split}, first {n}", "files": n,
              "image_shape": list(images.shape[1:]), "load_before": os.getloadavg()[0]}
    t0 = time.perf_counter()
    card = import_images(str(folder), f"bench-{size.replace('x', '-')}")
    record["import_seconds"] = time.perf_counter() - t0
    record.update(train_images=card["train"], held_out_images=card["test"], channels=card["channels"])
    t0 = time.perf_counter()
    trained = train_user_model(card["name"], work / "checkpoints", epochs=epochs, capacity=width / 32, resume=False)
    record["train_seconds"] = time.perf_counter() - t0
    record.update(epochs=trained["epochs"], test_bits_per_dim=trained.get("test_bits_per_dim"),
                  train_seconds_per_epoch=record["train_seconds"] / epochs)
    t0 = time.perf_counter()
    live = LiveScorer(user_checkpoint(work / "checkpoints", card["name"]), results=work / "results",
                      cache_dir=work / "fits")
    record["fit_seconds"] = time.perf_counter() - t0
    record.update(fit=live.spec.describe(None), n_fisher=live.rose.n_fisher, n_calibration=live.rose.n_norm)
    record["total_seconds"] = record["import_seconds"] + record["train_seconds"] + record["fit_seconds"]
    record["load_after"] = os.getloadavg()[0]
    record["peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2
    assert np.isfinite(live.calibration).all()
    return record


def main() -> int:
    from rose_core.allocator import reuse_freed_memory

    reuse_freed_memory()   # as the CLI and the app do: large freed blocks are reused (rose_core.allocator)
    from rose_core.user_data import DEFAULT_EPOCHS, DEFAULT_WIDTH

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=5000)
    ap.add_argument("--epochs", type=int, default=DEFAULT_EPOCHS)
    ap.add_argument("--width", type=int, default=DEFAULT_WIDTH)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--sizes", default="28x28,32x32")
    ap.add_argument("--out", default=str(REPO / "results/benchmarks/your_data.json"))
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    repo_data = Path(os.environ.get("ROSE_DATA") or REPO / "data")
    runs = []
    with tempfile.TemporaryDirectory(prefix="bench-your-data-") as tmp:
        work = Path(tmp)
        os.environ["ROSE_DATA"] = str(work / "data")   # the user datasets and their caches stay in the temp folder
        os.environ.pop("ROSE_USER_DATA", None)
        for size in args.sizes.split(","):
            runs.append(_run_size(size, args.n, args.epochs, args.width, work, repo_data))
            print(json.dumps(runs[-1]), flush=True)
    result = {"benchmark": "benchmarks/bench_your_data.py", "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "threads": args.threads, "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
              "epochs": args.epochs, "width": args.width, "runs": runs}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
