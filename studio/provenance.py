"""Which images each AUROC on the pages rests on (no Streamlit): the results bundle's evaluation images or a
live sample, with their counts; selected methods that have no result for a set, with the reason and the
command that adds them; and the threshold below which a number rests on too few images."""

from __future__ import annotations

import math

import pandas as pd

from rose_core.labels import dataset_label, method_label
from rose_core.results import Results
from studio.paths import evaluate_command

FEW_IMAGES = 50
"""An AUROC with fewer in-distribution or OOD images than this gets a warning beside it."""


def few(n_in: int, n_ood: int) -> bool:
    return min(int(n_in), int(n_ood)) < FEW_IMAGES


def bundle_source(b: Results) -> str:
    """The bundle's in-distribution sample in words, e.g. "the results bundle's evaluation images (Fashion-MNIST
    test split, seed 0)"."""
    ind = b.meta.get("in_distribution") or {}
    bits = []
    if isinstance(ind, dict):
        if ind.get("split"):
            bits.append(f"{dataset_label(b.in_dist())} {ind['split']} split")
        if ind.get("seed") is not None:
            bits.append(f"seed {ind['seed']}")
    return "the results bundle's evaluation images" + (f" ({', '.join(bits)})" if bits else "")


def count_text(n_in: int, n_ood: int) -> str:
    return f"{int(n_in)} in / {int(n_ood)} OOD"


def counts_caption(view: pd.DataFrame, b: Results, ood_set: str) -> str:
    """One sentence naming the images under every AUROC of ``view`` (a :meth:`Results.metrics_view`),
    grouping methods that share the same counts."""
    groups: dict[tuple[int, int], list[str]] = {}
    for _, r in view.iterrows():
        groups.setdefault((int(r["n_in"]), int(r["n_ood"])), []).append(method_label(r["method"]))
    parts = []
    for (n_in, n_ood), names in sorted(groups.items(), key=lambda kv: -len(kv[1])):
        who = "every method" if len(groups) == 1 else ", ".join(names)
        parts.append(f"{count_text(n_in, n_ood)} for {who}")
    return (f"Images: {dataset_label(b.in_dist())} (in) vs {dataset_label(ood_set)} (OOD) from "
            f"{bundle_source(b)}, unperturbed — " + "; ".join(parts) + ".")


def few_images_rows(view: pd.DataFrame) -> list[str]:
    """Methods of ``view`` whose AUROC rests on fewer than :data:`FEW_IMAGES` images on either side."""
    return [r["method"] for _, r in view.iterrows() if few(r["n_in"], r["n_ood"])]


def evaluated_sets(b: Results, method: str) -> list[str]:
    """OOD sets (no ``overall``) with unperturbed metric rows or OOD scores of ``method``."""
    m = b.table("metrics")
    sets = set(m.loc[(m["method"] == method) & (m["perturbation"] == "none"), "ood_set"]) - {"overall"}
    s = b.table("scores")
    sets |= set(s.loc[(s["method"] == method) & s["is_ood"].astype(bool) & (s["perturbation"] == "none"), "dataset"])
    return sorted(sets)


def missing_reason(b: Results, method: str, ood_set: str) -> str:
    """Why ``method`` has no result for ``ood_set`` and how to add it (markdown)."""
    sets = evaluated_sets(b, method)
    where = (f"evaluated only on {', '.join(dataset_label(s) for s in sets)}" if sets
             else "not evaluated on any OOD set in this bundle")
    cmd = f"{evaluate_command(b.name)} --methods {method} --ood-sets {ood_set}"
    return f"**{method_label(method)}**: not computed for {dataset_label(ood_set)} — {where}; run `{cmd}` to add it."


def point_counts(b: Results, method: str, ood_set: str, perturbation: str, strength: float) -> tuple[int, int, int]:
    """``(n_in, n_ood, repeats)`` behind :meth:`Results.auroc_at` for one method (the unperturbed rows where a
    1.0× brightness point falls back to them); zeros when absent."""
    m = b.table("metrics")
    m = m[(m["method"] == method) & (m["ood_set"] == ood_set)]
    at = m[(m["perturbation"] == perturbation) & ((m["strength"].astype(float) - float(strength)).abs() < 1e-6)]
    if perturbation == "brightness" and abs(strength - 1.0) < 1e-9 and len(at) == 0:
        at = m[m["perturbation"] == "none"]
    if not len(at):
        return 0, 0, 0
    return int(at["n_in"].iloc[0]), int(at["n_ood"].iloc[0]), int(at["repeat"].nunique())


def auroc_text(v: float) -> str:
    return "—" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}"
