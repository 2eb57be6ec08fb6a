"""Train the SVD-RND baseline on the real Fashion-MNIST training set and write
``checkpoints/rnd-fmnist.safetensors`` + ``.json``.

    PYTHONPATH=. python scripts/train_rnd.py --epochs 8 --max-minutes 5 --eval

``--max-minutes`` stops after the epoch that passes the budget (the card records
the epochs reached). With ``--eval`` it also reports the AUROC of
Fashion-MNIST test (in-distribution) vs MNIST test (OOD as positive class) and
writes it on the card.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

from rose_core.data import load_dataset, to_model_input
from rose_core.scorers.rnd import train_rnd


def auroc(in_scores: np.ndarray, ood_scores: np.ndarray) -> float:
    """AUROC with OOD as the positive class (ties count one half)."""
    s = np.concatenate([in_scores, ood_scores])
    order = s.argsort(kind="mergesort")
    ranks = np.empty(len(s))
    sorted_s = s[order]
    i = 0
    while i < len(s):  # average ranks over ties
        j = i
        while j + 1 < len(s) and sorted_s[j + 1] == sorted_s[i]:
            j += 1
        ranks[order[i:j + 1]] = 0.5 * (i + j) + 1
        i = j + 1
    n_out, n_in = len(ood_scores), len(in_scores)
    return float((ranks[n_in:].sum() - n_out * (n_out + 1) / 2) / (n_in * n_out))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="checkpoints/rnd-fmnist")
    ap.add_argument("--perturbation", default="svd", choices=["svd", "dct", "gaussian", "random"])
    ap.add_argument("--strength", type=float, default=None, help="K for svd/dct, μ for random (default: paper's)")
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--subset", type=int, default=None, help="train on a random subset of this many images")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--max-minutes", type=float, default=None)
    ap.add_argument("--eval", action="store_true", help="AUROC fmnist-test vs mnist-test, written on the card")
    args = ap.parse_args()

    train = load_dataset("fashion-mnist", "train", n=args.subset, seed=args.seed)
    x = to_model_input(train.images)
    print(f"training RND ({args.perturbation}) on {len(x)} Fashion-MNIST train images, "
          f"{args.epochs} epochs, {torch.get_num_threads()} threads", flush=True)
    t0 = time.time()
    strength = "default" if args.strength is None else (
        int(args.strength) if args.perturbation in ("svd", "dct") else args.strength)
    scorer = train_rnd(x, perturbation=args.perturbation, strength=strength, epochs=args.epochs, lr=args.lr,
                       batch_size=args.batch_size, seed=args.seed, device=args.device,
                       max_seconds=None if args.max_minutes is None else 60 * args.max_minutes,
                       progress=lambda e, loss: print(f"  epoch {e}: loss {loss:.5f} ({time.time() - t0:.0f} s)",
                                                      flush=True))
    card = {"dataset": "fashion-mnist", "split": "train", "train_images": len(x),
            "command": " ".join(["scripts/train_rnd.py", *sys.argv[1:]])}
    if args.eval:
        fm = to_model_input(load_dataset("fashion-mnist", "test").images)
        mn = to_model_input(load_dataset("mnist", "test").images)
        a, b = scorer.score(fm).score, scorer.score(mn).score
        card["eval"] = {"auroc_fmnist_test_vs_mnist_test": round(auroc(a, b), 4),
                        "n_in": len(a), "n_ood": len(b), "positive": "OOD"}
        print(f"AUROC fashion-mnist test vs mnist test: {card['eval']['auroc_fmnist_test_vs_mnist_test']:.4f}")
    cp = scorer.save(args.out, **card)
    info = scorer.training_info
    print(f"wrote {cp} and {Path(cp).with_suffix('.safetensors')}: {info['epochs']} epochs in "
          f"{info['train_seconds']:.0f} s, final loss {info['losses'][-1] if info['losses'] else float('nan'):.5f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
