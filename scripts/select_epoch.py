"""Choose the epoch of a training run by held-out bits/dim (an in-distribution criterion).

A run with ``--keep-epochs DIR`` leaves a copy of every epoch's checkpoint in ``DIR/epoch-NNN/``.
This script measures each copy's test bits/dim on the held-out test split of the dataset it was
trained on (the same measure as the trainer's card: exact NLL for Glow, IWAE-k for the VAE), picks
the lowest, and writes it to ``--out`` with the card fields ``test_bits_per_dim``,
``held_out_by_epoch`` (every epoch's figure) and ``selected_by``. When the chosen epoch is not the
run's last, the run's optimizer state beside ``--out`` (``<out>.train.*``, a later epoch's) is
removed, so resuming restarts the optimizer moments from the chosen weights (the trainer records
that on the card). The table is also written to ``--table`` (JSON) as the artifact the docs quote;
an epoch already in that table with the same weights (``weights_sha256``), held-out images and
IWAE-k is not measured again (a 50-epoch Glow run is chosen again after every training session).

    python scripts/select_epoch.py --epochs-dir runs/glow-cifar10 --out checkpoints/glow-cifar10 \\
        --table results/glow-cifar10/epochs.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from rose_core.checkpoint import card_path, load_model, read_card, save_model, weights_path
from rose_core.data import load_dataset
from rose_core.training import evaluate_bits_per_dim

CARD_ONLY = ("kind", "config", "library_version", "num_parameters", "weights_sha256")


def _checkpoint(folder: Path) -> Path:
    """The stem of the one checkpoint in ``folder``."""
    cards = sorted(folder.glob("*.json"))
    if len(cards) != 1:
        raise SystemExit(f"{folder} must hold exactly one checkpoint card, found {len(cards)}.")
    return cards[0].with_suffix("")


def _test_images(card: dict, eval_subset: int | None):
    if not card.get("dataset"):
        raise SystemExit("The run's card names no registry dataset; held-out images of a folder run are not "
                         "supported here.")
    test = load_dataset(card["dataset"], "test")
    return test.images if eval_subset is None else test.subset(eval_subset, seed=0).images


def _measured_rows(args) -> dict[tuple, dict]:
    """Rows of an existing ``--table`` by (epoch, weights hash, images, eval subset, IWAE-k)."""
    if not args.table or not Path(args.table).exists():
        return {}
    try:
        rows = json.loads(Path(args.table).read_text())["epochs"]
    except (ValueError, KeyError, TypeError):
        return {}   # an unreadable table is measured again, not trusted
    return {(r["epoch"], r["weights_sha256"], r["n_images"], r.get("eval_subset"), r.get("iwae_k")): r
            for r in rows if isinstance(r, dict) and r.get("weights_sha256")}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--epochs-dir", required=True, help="the --keep-epochs folder of the run")
    p.add_argument("--out", required=True, help="checkpoint to write the chosen epoch to, e.g. checkpoints/glow-cifar10")
    p.add_argument("--table", default=None, help="also write the per-epoch table here (JSON)")
    p.add_argument("--iwae-k", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=250)
    p.add_argument("--eval-subset", type=int, default=None)
    args = p.parse_args(argv)

    folders = sorted(d for d in Path(args.epochs_dir).glob("epoch-*") if d.is_dir())
    if not folders:
        raise SystemExit(f"No epoch-NNN folders in {args.epochs_dir}: train with --keep-epochs {args.epochs_dir}.")
    measured = _measured_rows(args)
    rows, images, best = [], None, None   # best: (row, checkpoint) of the lowest held-out bits/dim so far
    for folder in folders:
        ckpt = _checkpoint(folder)
        card = read_card(ckpt)
        if images is None:   # every epoch of a run has the same held-out images
            images = _test_images(card, args.eval_subset)
        same = (card["epochs"], card.get("weights_sha256"), len(images), args.eval_subset, args.iwae_k)
        row = measured.get(same)
        reused = row is not None
        if not reused:
            model, card = load_model(ckpt)
            metrics = evaluate_bits_per_dim(model, images, torch.device("cpu"), batch_size=args.batch_size,
                                            iwae_k=args.iwae_k)
            row = {"epoch": card["epochs"], "n_images": len(images), **{k: round(v, 5) for k, v in metrics.items()},
                   "weights_sha256": card.get("weights_sha256"), "eval_subset": args.eval_subset,
                   "iwae_k": args.iwae_k}
        rows.append(row)
        if best is None or row["nll"] < best[0]["nll"]:
            best = (row, ckpt)
        print(f"epoch {row['epoch']:3d}: held-out {row['nll']:.4f} bits/dim ({row['n_images']} images)"
              f"{' (measured before, same weights)' if reused else ''}", flush=True)
    best, ckpt = best
    model, card = load_model(ckpt)
    last = max(r["epoch"] for r in rows)
    out = Path(args.out)
    fields = {k: v for k, v in card.items() if k not in CARD_ONLY}
    fields.update({"test_bits_per_dim": best["nll"], "test_images": best["n_images"],
                   "held_out_by_epoch": [{"epoch": r["epoch"], "test_bits_per_dim": r["nll"]} for r in rows],
                   "selected_by": "lowest held-out bits/dim (the dataset's test split) over the kept epochs "
                                  "(scripts/select_epoch.py)"})
    fields.pop("test_bits_per_dim_neg_elbo", None)
    if "neg_elbo" in best:
        fields["test_bits_per_dim_neg_elbo"] = best["neg_elbo"]
    save_model(model, out, **fields)
    if best["epoch"] != last:
        for f in (out.parent / f"{out.name}.train.json", out.parent / f"{out.name}.train.safetensors"):
            f.unlink(missing_ok=True)
    print(f"chose epoch {best['epoch']} of {last}: {best['nll']:.4f} bits/dim -> {card_path(out)}, {weights_path(out)}")
    if args.table:
        Path(args.table).parent.mkdir(parents=True, exist_ok=True)
        Path(args.table).write_text(json.dumps({"command": "python scripts/select_epoch.py " + " ".join(
            sys.argv[1:] if argv is None else argv), "chosen_epoch": best["epoch"], "epochs": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
