"""Train the three checkpoints that ship in ``checkpoints/``, in parallel processes.

    python scripts/train_shipped.py --out checkpoints --minutes 420

* ``vae-fmnist``: the paper's VAE on Fashion-MNIST (100 epochs by default);
* ``glow-fmnist``: the paper's Glow on Fashion-MNIST (50 epochs);
* ``vae-fmnist-background``: the Likelihood-Ratio background VAE (μ = 0.3).

Each run is resumable and stops after the epoch that would pass ``--minutes``;
the epochs reached and the test bits/dim are written on each card. On a GPU all
three share the device; on the CPU expect minutes per VAE epoch.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

RUNS = {
    "vae-fmnist": ["--model", "vae", "--epochs", "100"],
    "glow-fmnist": ["--model", "glow", "--epochs", "50"],
    "vae-fmnist-background": ["--model", "vae", "--epochs", "100", "--noise-fraction", "0.3"],
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="checkpoints")
    ap.add_argument("--minutes", type=float, default=None, help="time budget per run")
    ap.add_argument("--only", nargs="*", choices=sorted(RUNS), default=sorted(RUNS))
    ap.add_argument("--device", default="auto")
    ap.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="more arguments for every run")
    args = ap.parse_args()
    Path(args.out).mkdir(parents=True, exist_ok=True)
    procs = {}
    for name in args.only:
        cmd = [sys.executable, "-m", "rose_core", "-v", "train", "--out", str(Path(args.out) / name),
               "--device", args.device, "--quiet", *RUNS[name], *args.extra]
        if args.minutes is not None:
            cmd += ["--max-minutes", str(args.minutes)]
        log = open(Path(args.out) / f"{name}.log", "w")
        procs[name] = (subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=os.environ.copy()), log)
        print("started", " ".join(cmd), flush=True)
    t0 = time.time()
    failed = 0
    for name, (proc, log) in procs.items():
        rc = proc.wait()
        log.close()
        print(f"{name}: exit {rc} after {time.time() - t0:.0f}s", flush=True)
        failed += rc != 0
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
