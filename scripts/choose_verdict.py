"""Choose the default verdict test of a checkpoint from in-distribution and stress-suite evidence only.

Candidates, simplest first: ``rose`` (ROSE's one-sided test; for Glow its DIAG fit) and
``rose+typicality`` (ROSE combined with the two-sided likelihood typicality test by Bonferroni
min-p). The rule, applied to ``results/<checkpoint>/stress.parquet``
(``python -m rose_core evaluate --preset stress``) — no MNIST or other OOD-benchmark AUROC enters:

1. **calibrated**: the false-alarm rate on the in-distribution evaluation images (used for neither
   fit nor calibration) lies in the binomial 95 % band around ``1 − tpr``;
2. **benign**: at most 6 % flagged on every benign stress set (1-pixel shifts, brightness 0.9–1.1);
3. **power**: among the candidates that pass 1 and 2, the one with the higher *worst-case* AUROC
   over the OOD stress group wins; differences under 0.01 are ties;
4. **simplicity**: a tie goes to the simpler detector (``rose``).

Writes ``results/<checkpoint>/verdict.json`` with the evidence and the decision;
:data:`rose_core.defaults.VERDICT` must agree with it for the shipped VAE (``tests/test_readme.py``).

Usage: ``python scripts/choose_verdict.py [--checkpoint vae-fmnist]``
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rose_core.defaults import FISHER_BY_KIND  # noqa: E402
from rose_core.results import Results  # noqa: E402

BENIGN_MAX = 0.06
TIE = 0.01


def _binomial_band(n: int, p: float) -> tuple[float, float]:
    half = 1.96 * math.sqrt(p * (1 - p) / n)
    return p - half, p + half


def choose(stress, rose_method: str) -> dict:
    evidence = {}
    for name, method in (("rose", rose_method), ("rose+typicality", "rose+typicality")):
        t = stress[stress["method"] == method]
        if t.empty:
            raise SystemExit(f"stress.parquet has no rows for {method}; run the stress preset first.")
        ind = t[t["group"] == "in-distribution"].iloc[0]
        tpr = float(ind["tpr"])
        lo, hi = _binomial_band(int(ind["n_images"]), 1 - tpr)
        benign = {r["dataset"]: float(r["flagged"]) for _, r in t[t["group"] == "benign"].iterrows()}
        ood = {r["dataset"]: float(r["auroc"]) for _, r in t[t["group"] == "ood"].iterrows()}
        worst = min(ood.values())
        evidence[name] = {
            "method": method, "false_alarm_rate": float(ind["flagged"]), "band": [round(lo, 4), round(hi, 4)],
            "calibrated": bool(lo <= float(ind["flagged"]) <= hi),
            "benign_flagged": benign, "benign_ok": bool(all(v <= BENIGN_MAX for v in benign.values())),
            "ood_auroc": ood, "worst_ood_auroc": worst, "worst_ood_set": min(ood, key=ood.get),
        }
    passing = [k for k in ("rose", "rose+typicality") if evidence[k]["calibrated"] and evidence[k]["benign_ok"]]
    if not passing:
        choice, why = "rose", "no candidate passed rules 1-2; the simpler detector is kept"
    elif len(passing) == 1:
        choice, why = passing[0], f"only {passing[0]} passed rules 1-2"
    else:
        a, b = evidence["rose"]["worst_ood_auroc"], evidence["rose+typicality"]["worst_ood_auroc"]
        if b - a >= TIE:
            choice, why = "rose+typicality", f"worst-case OOD AUROC {b:.3f} vs {a:.3f} (rule 3)"
        elif a - b >= TIE:
            choice, why = "rose", f"worst-case OOD AUROC {a:.3f} vs {b:.3f} (rule 3)"
        else:
            choice, why = "rose", f"worst-case OOD AUROC {a:.3f} vs {b:.3f}: a tie, the simpler detector (rule 4)"
    return {"verdict": choice, "reason": why, "evidence": evidence,
            "rule": "scripts/choose_verdict.py (in-distribution and stress-suite evidence only)"}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--checkpoint", default="vae-fmnist",
                    help="checkpoint name or path (vae-fmnist, checkpoints/glow-fmnist): its bundle under results/")
    args = ap.parse_args(argv)
    name = Path(args.checkpoint).name
    res = Results.for_checkpoint(name, ROOT / "results")
    if not res.exists:
        raise SystemExit(f"No results bundle at {res.folder}: run `python -m rose_core evaluate --checkpoint "
                         f"checkpoints/{name} --preset stress` first.")
    stress = res.table("stress")
    # ROSE's own test is the kind's default fit (the paper's Fisher: EKFAC for the VAE, DIAG for Glow)
    rose_method = "rose-" + FISHER_BY_KIND.get(res.checkpoint_card().get("kind"), "ekfac")
    decision = choose(stress, rose_method)
    out = res.folder / "verdict.json"
    out.write_text(json.dumps(decision, indent=2) + "\n")
    print(f"{name}: verdict {decision['verdict']} — {decision['reason']}; wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
