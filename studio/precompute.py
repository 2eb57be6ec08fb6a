"""Precompute what the app's pages would otherwise compute live on first view (no Streamlit):

    python -m studio.precompute vae-fmnist [--ood-sets mnist faces-lfw ...] [--n 64]

writes ``results/<checkpoint>/live_robustness.json``: the Robustness page's live brightness AUROCs
(ROSE and the model's loss, :func:`rose_core.live.robustness_table`) for every factor of its slider
and every OOD set of the bundle's brightness sweep (MNIST when the bundle has none), on exactly the
images the page draws. The page uses a row only when the file was computed by the same scorer (the
SHA-256 of the model's weights and of the bundle's ROSE fit, the same image counts and seed), says
"precomputed" beside it, and computes anything else live. Commit the file with the bundle.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from rose_core.live import BRIGHTNESS_FACTORS, ROBUSTNESS_FILE, LiveScorer, robustness_table
from rose_core.results import Results
from studio.paths import checkpoints_dir, data_dir, env_int, results_dir

SEED = 1
"""The seed of the Robustness page's live sample."""


def default_ood_sets(name: str) -> list[str]:
    """The OOD sets of the bundle's brightness sweep, else MNIST."""
    b = Results.for_checkpoint(name, results_dir(), strict=False)
    if b.exists and b.has("metrics"):
        m = b.table("metrics")
        sets = sorted(set(m.loc[m["perturbation"] == "brightness", "ood_set"]) - {"overall"})
        if sets:
            return sets
    return ["mnist"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("checkpoint", help="a checkpoint name in the checkpoints folder, e.g. vae-fmnist")
    ap.add_argument("--ood-sets", nargs="+", default=None, help="default: the bundle's brightness sweep sets")
    ap.add_argument("--n", type=int, default=env_int("ROSE_LIVE_N", 64),
                    help="images per side, as the page's $ROSE_LIVE_N (default 64)")
    args = ap.parse_args(argv)
    card = checkpoints_dir() / f"{args.checkpoint}.json"
    if not card.exists():
        print(f"No checkpoint {card}; the names are those of checkpoints/*.json.", file=sys.stderr)
        return 2
    sets = args.ood_sets or default_ood_sets(args.checkpoint)
    live = LiveScorer(card, results=results_dir(), data_root=data_dir())
    t0 = time.perf_counter()
    last = [0.0]

    def progress(fraction: float, message: str) -> None:
        if time.perf_counter() - last[0] > 10:
            last[0] = time.perf_counter()
            print(f"{fraction:5.1%} {message}", flush=True)

    table = robustness_table(live, sets, BRIGHTNESS_FACTORS, n=args.n, seed=SEED, progress=progress)
    table["command"] = f"python -m studio.precompute {args.checkpoint}" + (
        f" --ood-sets {' '.join(args.ood_sets)}" if args.ood_sets else "") + (f" --n {args.n}" if args.n != 64 else "")
    table["seconds"] = round(time.perf_counter() - t0, 1)
    out = live.results.folder / ROBUSTNESS_FILE
    out.write_text(json.dumps(table, indent=1) + "\n")
    print(f"wrote {out} ({len(table['rows'])} rows, {table['seconds']} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
