"""``docs/results.md`` from the results bundles (``python -m rose_core report``).

Nothing in the report is typed by hand except the paper's published numbers, transcribed below
in :data:`PAPER` with the table and row each comes from. Our numbers are read from
``results/<checkpoint>/`` (:mod:`rose_core.results`); datasets that are offline stand-ins are
marked, and what could not be run is said so.

Name mapping: the paper's "ROSE" is ``rose-ekfac`` on the VAE and ``rose-diag`` (InvConv layers)
on Glow (Appendix B.2); "LR_E" is ``likelihood-regret``, "LRatio" ``likelihood-ratio``,
"IC(png)"/"IC(jp2)" ``input-complexity-png``/``-jp2``. A paper dataset is compared with the real
set when we have it, else with its stand-in (:data:`PAPER_SETS`).
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from rose_core.results import Results, results_root

# --------------------------------------------------------------------------------------------
# The paper's numbers (transcribed from shared/paper/rose-paper.md)
# --------------------------------------------------------------------------------------------

_T2_SETS = ["MNIST", "KMNIST", "NotMNIST", "Omniglot", "CIFAR-10", "SVHN", "Noise", "Constant", "Overall"]
_VAE_COLS = ["rose-ekfac", "likelihood-regret", "nll", "likelihood-ratio", "input-complexity-png",
             "input-complexity-jp2"]
_GLOW_COLS = ["rose-diag", "likelihood-ratio", "input-complexity-png", "input-complexity-jp2"]


def _grid(rows: list[str], cols: list[str], values: list[list[float]]) -> dict[str, dict[str, float]]:
    return {r: dict(zip(cols, v)) for r, v in zip(rows, values)}


PAPER: dict[str, dict[str, Any]] = {
    "table2-vae": {
        "source": "Table 2, top left (AUROC, VAE trained on Fashion-MNIST)",
        "values": _grid(_T2_SETS, _VAE_COLS, [
            [0.995, 0.964, 0.161, 0.844, 0.934, 0.449], [0.997, 0.991, 0.626, 0.968, 0.636, 0.389],
            [1.000, 1.000, 0.980, 0.950, 0.893, 0.958], [1.000, 1.000, 1.000, 0.869, 1.000, 1.000],
            [0.999, 0.995, 1.000, 0.916, 0.899, 0.999], [1.000, 1.000, 0.999, 0.624, 0.999, 1.000],
            [0.996, 0.997, 1.000, 1.000, 0.443, 1.000], [1.000, 0.998, 0.953, 0.647, 1.000, 1.000],
            [0.999, 0.993, 0.869, 0.873, 0.874, 0.879]]),
    },
    "table2-glow": {
        "source": "Table 2, top right (AUROC, Glow trained on Fashion-MNIST; NLL not reported)",
        "values": _grid(_T2_SETS, _GLOW_COLS, [
            [0.562, 0.850, 0.922, 0.616], [0.518, 0.930, 0.496, 0.281], [0.896, 0.500, 0.542, 0.521],
            [1.000, 0.869, 1.000, 1.000], [0.976, 0.974, 0.772, 0.998], [0.951, 0.147, 0.718, 0.999],
            [1.000, 1.000, 1.000, 1.000], [0.996, 0.005, 1.000, 1.000], [0.885, 0.704, 0.811, 0.846]]),
    },
    "table4-vae": {
        "source": "Table 4, top left (AUPRC with in-distribution as positive, VAE, Fashion-MNIST)",
        "values": _grid(_T2_SETS, _VAE_COLS, [
            [0.996, 0.968, 0.334, 0.857, 0.948, 0.494], [0.997, 0.991, 0.622, 0.963, 0.666, 0.436],
            [1.000, 1.000, 0.980, 0.875, 0.851, 0.946], [1.000, 1.000, 1.000, 0.912, 1.000, 1.000],
            [0.999, 0.996, 1.000, 0.839, 0.911, 0.999], [1.000, 1.000, 0.999, 0.512, 0.998, 1.000],
            [0.995, 0.998, 1.000, 1.000, 1.000, 1.000], [1.000, 0.997, 0.948, 0.533, 1.000, 1.000],
            [0.998, 0.994, 0.759, 0.755, 0.858, 0.804]]),
    },
    "table4-glow": {
        "source": "Table 4, top right (AUPRC in-positive, Glow, Fashion-MNIST)",
        "values": _grid(_T2_SETS, _GLOW_COLS, [
            [0.600, 0.905, 0.942, 0.663], [0.547, 0.954, 0.486, 0.367], [0.876, 0.490, 0.479, 0.465],
            [1.000, 0.835, 1.000, 1.000], [0.979, 0.940, 0.845, 0.998], [0.953, 0.332, 0.799, 0.999],
            [1.000, 1.000, 1.000, 1.000], [0.995, 0.308, 1.000, 1.000], [0.847, 0.572, 0.757, 0.727]]),
    },
    "table5-vae": {
        "source": "Table 5, top left (FPR80, VAE, Fashion-MNIST; lower is better)",
        "values": _grid(_T2_SETS, _VAE_COLS, [
            [0.007, 0.056, 0.975, 0.246, 0.000, 0.805], [0.003, 0.007, 0.680, 0.036, 0.547, 0.873],
            [0.000, 0.000, 0.011, 0.001, 0.201, 0.011], [0.000, 0.000, 0.000, 0.000, 0.000, 0.000],
            [0.001, 0.003, 0.000, 0.054, 0.205, 0.000], [0.000, 0.000, 0.002, 0.983, 0.000, 0.000],
            [0.012, 0.004, 0.000, 0.000, 0.594, 0.000], [0.000, 0.000, 0.053, 0.915, 0.000, 0.000],
            [0.002, 0.003, 0.067, 0.117, 0.249, 0.102]]),
    },
    "table5-glow": {
        "source": "Table 5, top right (FPR80, Glow, Fashion-MNIST)",
        "values": _grid(_T2_SETS, _GLOW_COLS, [
            [0.664, 0.199, 0.129, 0.590], [0.741, 0.099, 0.787, 0.995], [0.195, 0.800, 0.920, 0.936],
            [0.000, 0.218, 0.000, 0.000], [0.025, 0.000, 0.328, 0.001], [0.062, 1.000, 0.409, 0.000],
            [0.000, 0.000, 0.000, 0.000], [0.000, 1.000, 0.000, 0.000], [0.206, 0.883, 0.328, 0.321]]),
    },
    "table3": {
        "source": "Table 3, left (AUROC of ROSE, VAEs of 0.5×–4× width trained on Fashion-MNIST)",
        "values": _grid(["MNIST", "KMNIST", "NotMNIST", "SVHN", "CelebA", "LSUN", "Noise", "Constant"],
                        ["0.5", "1", "2", "4"], [
            [0.997, 0.995, 0.991, 0.988], [0.998, 0.997, 0.994, 0.993], [1.000, 1.000, 1.000, 1.000],
            [1.000, 1.000, 1.000, 1.000], [0.999, 0.999, 1.000, 0.998], [0.999, 0.999, 1.000, 0.999],
            [0.999, 0.996, 0.993, 0.992], [1.000, 1.000, 1.000, 1.000]]),
    },
    "table6": {
        "source": "Table 6, top (AUROC of ROSE on the FMNIST VAE, DIAG vs EKFAC)",
        "values": _grid(["DIAG", "EKFAC"], ["MNIST", "KMNIST", "NotMNIST", "CIFAR-10", "SVHN", "Noise", "Constant",
                                            "Overall"], [
            [0.971, 0.978, 0.997, 0.992, 0.997, 0.885, 0.997, 0.980],
            [0.995, 0.997, 1.000, 0.999, 1.000, 0.992, 1.000, 0.998]]),
    },
    "table7": {
        "source": "Table 7, top (AUROC of ROSE on the FMNIST Glow, InvConv layers vs all convolutions)",
        "values": _grid(["InvConv", "Full"], ["MNIST", "KMNIST", "NotMNIST", "CIFAR-10", "SVHN", "Noise", "Constant",
                                              "Overall"], [
            [0.562, 0.518, 0.896, 0.976, 0.951, 1.000, 0.996, 0.885],
            [0.733, 0.787, 0.829, 0.858, 0.835, 1.000, 0.852, 0.857]]),
    },
    # Tables 1, 8, 9 are for models trained on CIFAR-10 (not reproducible offline): context only.
    "brightness": {
        "source": "Tables 1, 8, 9 (AUROC vs brightness of the OOD set; models trained on CIFAR-10)",
        "strengths": [0.2, 0.4, 0.6, 0.8, 1.0, 1.2, 1.4, 1.6, 1.8],
        "values": {
            ("Table 1", "CelebA", "ROSE"): [0.954, 0.890, 0.818, 0.774, 0.778, 0.871, 0.928, 0.960, 0.976, 0.883, 0.074],
            ("Table 1", "CelebA", "LRatio (Random)"): [0.010, 0.085, 0.205, 0.269, 0.333, 0.564, 0.721, 0.811, 0.870,
                                                       0.430, 0.302],
            ("Table 1", "CelebA", "RND (SVD)"): [0.183, 0.075, 0.120, 0.358, 0.566, 0.733, 0.825, 0.871, 0.893, 0.514,
                                                 0.316],
            ("Table 8", "SVHN", "ROSE"): [0.809, 0.807, 0.861, 0.893, 0.907, 0.920, 0.934, 0.951, 0.965, 0.894, 0.054],
            ("Table 8", "SVHN", "LRatio (Random)"): [0.004, 0.019, 0.034, 0.043, 0.050, 0.113, 0.208, 0.326, 0.457,
                                                     0.139, 0.150],
            ("Table 8", "SVHN", "RND (SVD)"): [0.993, 0.979, 0.973, 0.973, 0.978, 0.976, 0.966, 0.957, 0.944, 0.971,
                                               0.032],
            ("Table 9", "Omniglot", "ROSE"): [0.893, 0.803, 0.898, 0.819, 0.996, 0.999, 0.999, 0.999, 0.999, 0.934,
                                              0.078],
            ("Table 9", "Omniglot", "LRatio (Random)"): [0.010, 0.157, 0.338, 0.008, 0.961, 0.997, 0.999, 0.909, 0.999,
                                                         0.598, 0.430],
            ("Table 9", "Omniglot", "RND (SVD, K=22)"): [0.221, 0.347, 0.499, 0.781, 0.957, 0.961, 0.964, 0.966, 0.968,
                                                         0.740, 0.285],
        },
    },
    "figure3": {"source": "Figure 3a / section 5 (FMNIST VAE vs MNIST)", "nll": 0.161, "rose": 0.995},
    "figure4": {"source": "Figure 4 / section 5.2 (CIFAR-10 VAE, RTX 3090 GPU)",
                "images_per_s": {"likelihood-regret": 2.5, "rose-ekfac": 110.0}, "rose_overall_auroc": 0.918},
}

PAPER_SETS: dict[str, list[str]] = {
    "MNIST": ["mnist"], "KMNIST": ["kmnist", "kana-fonts"], "NotMNIST": ["notmnist", "letters-fonts"],
    "Omniglot": ["omniglot", "glyphs-scripts"], "CIFAR-10": ["cifar10", "cifar10-samples"],
    "SVHN": ["svhn", "digits-on-photos"], "CelebA": ["celeba", "faces-lfw"], "LSUN": ["lsun", "photo-crops"],
    "Noise": ["noise"], "Constant": ["constant"], "Overall": ["overall"],
}
"""Paper dataset → our sets, preferred first (the real set, then its stand-in)."""

METHOD_TITLES = {"rose-ekfac": "ROSE-EKFAC", "rose-diag": "ROSE-DIAG", "nll": "NLL",
                 "likelihood-regret": "LR(E)", "likelihood-ratio": "LRatio", "input-complexity-png": "IC(png)",
                 "input-complexity-jp2": "IC(jp2)", "rnd": "SVD-RND"}


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------

def _f(v: Any, nd: int = 3) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "—"
    return f"{float(v):.{nd}f}"


def _table(header: list[str], rows: list[list[str]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(out)


def _title(method: str) -> str:
    base, _, opts = method.partition(":")
    if base == "rnd" and opts.startswith("path="):
        return f"RND ({Path(opts[5:]).name})"
    if base == "likelihood-ratio" and opts.startswith("background="):
        return f"LRatio ({Path(opts[11:]).name})"
    return METHOD_TITLES.get(base, base) + (f" [{opts}]" if opts else "")


class _Bundle:
    """Convenience views of one results bundle."""

    def __init__(self, res: Results) -> None:
        self.res = res
        self.man = res.manifest
        self.name = res.folder.name
        self.metrics = res.table("metrics")
        self.ood_info = self.man.get("ood_sets", {})

    def ours_set(self, paper_set: str, sets: set[str]) -> str | None:
        for cand in PAPER_SETS.get(paper_set, []):
            if cand in sets:
                return cand
        return None

    def label(self, ds: str) -> str:
        if ds == "overall":
            return "overall"
        info = self.ood_info.get(ds, {})
        if info.get("stand_in"):
            return f"{ds} †"
        return ds

    def value(self, method: str, ood_set: str, col: str = "auroc", perturbation: str = "none",
              strength: float | None = None, repeat: int = 0) -> float:
        m = self.metrics
        if m.empty:
            return math.nan
        mask = (m["method"] == method) & (m["ood_set"] == ood_set) & (m["perturbation"] == perturbation) \
            & (m["repeat"] == repeat)
        if strength is not None:
            mask &= (m["strength"] - strength).abs() < 1e-9
        r = m[mask]
        return float(r[col].iloc[0]) if len(r) else math.nan

    def n(self, method: str, ood_set: str) -> tuple[int, int]:
        m = self.metrics
        r = m[(m["method"] == method) & (m["ood_set"] == ood_set) & (m["perturbation"] == "none") & (m["repeat"] == 0)]
        return (int(r["n_in"].iloc[0]), int(r["n_ood"].iloc[0])) if len(r) else (0, 0)

    def sets(self, perturbation: str = "none") -> list[str]:
        m = self.metrics
        if m.empty:
            return []
        s = sorted(set(m.loc[m["perturbation"] == perturbation, "ood_set"]) - {"overall"})
        return s

    def methods(self) -> list[str]:
        m = self.metrics
        return [] if m.empty else sorted(set(m.loc[m["perturbation"] == "none", "method"]))


def _bundles(root: Path) -> dict[str, _Bundle]:
    out = {}
    if root.exists():
        for d in sorted(root.iterdir()):
            if d.is_dir() and (d / "manifest.json").exists():
                out[d.name] = _Bundle(Results(d))
    return out


# --------------------------------------------------------------------------------------------
# Sections
# --------------------------------------------------------------------------------------------

def _checkpoints_section(bundles: dict[str, _Bundle], ckpt_dir: Path) -> str:
    rows = []
    cards: dict[str, dict] = {}
    for p in sorted(ckpt_dir.glob("*.json")) if ckpt_dir.exists() else []:
        if p.name.endswith(".train.json"):
            continue
        try:
            cards[p.stem] = json.loads(p.read_text())
        except (OSError, ValueError):
            continue
    for b in bundles.values():
        cards.setdefault(b.name, b.man.get("checkpoint", {}).get("card", {}))
    for name, c in sorted(cards.items()):
        kind = c.get("kind") or ("rnd" if c.get("scorer") == "rnd" else "?")
        epochs = c.get("epochs", c.get("training", {}).get("epochs"))
        bpd = c.get("test_bits_per_dim")
        role = c.get("role", "")
        if kind == "rnd":
            role = f"SVD-RND baseline ({c.get('config', {}).get('perturbation', '?')})"
        rows.append([f"`{name}`", kind, c.get("dataset", "?"), str(epochs if epochs is not None else "—"),
                     _f(bpd, 3) if bpd is not None else "—", str(c.get("num_parameters", "—")),
                     c.get("device", "—"), role or ("evaluated" if name in bundles else "")])
    return _table(["checkpoint", "kind", "trained on", "epochs", "test bits/dim", "parameters", "trained on device",
                   "role"], rows)


def _datasets_section(bundles: dict[str, _Bundle]) -> str:
    seen: dict[str, dict] = {}
    for b in bundles.values():
        for ds, info in b.ood_info.items():
            seen.setdefault(ds, info)
    rows = []
    for ds, info in sorted(seen.items()):
        rows.append([f"`{ds}`" + (" †" if info.get("stand_in") else ""), info.get("role", "?"),
                     str(info.get("n_test", "—")), info.get("title", "")])
    return _table(["OOD set", "kind", "test images available", "what it is"], rows)


def _compare_table(b: _Bundle, key: str, cols: list[str], col: str = "auroc", extra_cols: list[str] = ()) -> str:
    paper = PAPER[key]["values"]
    have = set(b.sets())
    methods = [c for c in cols] + [c for c in extra_cols if c in b.methods()]
    header = ["paper set → ours"] + [_title(m) for m in methods]
    rows = []
    used = set()
    for ps in _T2_SETS:
        ours = "overall" if ps == "Overall" else b.ours_set(ps, have)
        if ours:
            used.add(ours)
        cells = []
        for m in methods:
            mine = b.value(m, ours, col) if ours else math.nan
            pv = paper.get(ps, {}).get(m)
            cells.append(f"{_f(mine)} ({_f(pv)})" if pv is not None else _f(mine))
        rows.append([f"{ps} → {b.label(ours) if ours else 'not available'}"] + cells)
    for ds in sorted(have - used):
        cells = [_f(b.value(m, ds, col)) for m in methods]
        rows.append([f"(not in this table) {b.label(ds)}"] + cells)
    return _table(header, rows)


def _n_note(b: _Bundle, methods: list[str]) -> str:
    parts = []
    for m in methods:
        ni, _ = b.n(m, "mnist")
        sets = [s for s in b.sets() if not math.isnan(b.value(m, s))]
        if not sets:
            continue
        no = {s: b.n(m, s)[1] for s in sets}
        parts.append(f"{_title(m)}: {ni} in-distribution images, " + ", ".join(f"{s} {v}" for s, v in no.items()))
    return "; ".join(parts)


def _headline(b: _Bundle) -> list[str]:
    out = []
    nll, rose = b.value("nll", "mnist"), b.value("rose-ekfac", "mnist")
    ni, no = b.n("rose-ekfac", "mnist")
    if not math.isnan(nll) or not math.isnan(rose):
        out.append(f"**Fashion-MNIST vs MNIST ({b.name}):** NLL AUROC **{_f(nll)}** (paper {PAPER['figure3']['nll']}), "
                   f"ROSE-EKFAC AUROC **{_f(rose)}** (paper {PAPER['figure3']['rose']}) on {ni} Fashion-MNIST test "
                   f"images vs {no} MNIST test images.")
    lr = b.value("likelihood-regret", "mnist")
    if not math.isnan(lr):
        li, lo = b.n("likelihood-regret", "mnist")
        out.append(f"Likelihood Regret on MNIST: AUROC {_f(lr)} (paper 0.964) on only {li} vs {lo} images (capped: "
                   "it optimises the encoder for 100 steps per image).")
    variants = [m for m in b.methods() if m.startswith("rose-ekfac:")]
    if variants:
        best = max(variants, key=lambda m: b.value(m, "mnist") if not math.isnan(b.value(m, "mnist")) else -1)
        out.append(f"**Best ROSE-EKFAC variant on MNIST: `{best}` AUROC {_f(b.value(best, 'mnist'), 4)}** "
                   f"(Overall {_f(b.value(best, 'overall'), 4)}); the default `rose-ekfac` has "
                   f"{_f(b.value('rose-ekfac', 'mnist'), 4)}. All variants are listed below.")
    return out


def _best_variant(b: _Bundle) -> list[str]:
    """The ROSE-EKFAC variant with the highest MNIST AUROC (as a one-element list), if any."""
    variants = [m for m in b.methods() if m.startswith("rose-ekfac:")]
    if not variants:
        return []
    return [max(variants, key=lambda m: b.value(m, "mnist") if not math.isnan(b.value(m, "mnist")) else -1)]


def _variants_section(b: _Bundle) -> str:
    """ROSE variants (fit size, normalisation, aggregation) on MNIST and Overall."""
    meths = [m for m in b.methods() if m.startswith("rose-")]
    if len(meths) <= 2:
        return ""
    fits = b.man.get("fits", {})
    rows = []
    for m in sorted(meths, key=lambda m: (m.split(":")[0], -b.value(m, "mnist") if not math.isnan(b.value(m, "mnist")) else 0)):
        settings = b.man.get("methods", {}).get(m, {}).get("settings") or {}
        fit = settings.get("fit", {})
        fit_s = next((v.get("fit_seconds") for v in fits.values() if v.get("key") == fit), None)
        rows.append([f"`{m}`", str(fit.get("n_fit", "—")), str(fit.get("normalization", "—")),
                     str(settings.get("p", "—")), str(settings.get("aggregation", "—")),
                     _f(b.value(m, "mnist"), 4), _f(b.value(m, "mnist", "fpr95")), _f(b.value(m, "overall"), 4),
                     "—" if fit_s is None else f"{fit_s:.0f}"])
    return _table(["method", "fit images", "normalisation", "p", "aggregation", "MNIST AUROC", "MNIST FPR95",
                   "Overall AUROC", "fit s"], rows)


def _brightness_section(b: _Bundle) -> str:
    m = b.metrics
    bm = m[m["perturbation"] == "brightness"] if not m.empty else m
    if bm.empty:
        return "_Not run for this checkpoint._"
    strengths = sorted(bm["strength"].unique())
    header = ["method", "OOD set"] + [f"{s:.1f}×" for s in strengths] + ["mean", "std"]
    rows = []
    for (meth, ds), g in bm.groupby(["method", "ood_set"], sort=True):
        per = g.groupby("strength")["auroc"]
        means, stds = per.mean(), per.std(ddof=0)
        reps = g["repeat"].nunique()
        cells = []
        for s in strengths:
            if s in means.index:
                cells.append(_f(means[s]) + (f" ± {_f(stds[s])}" if reps > 1 else ""))
            else:
                cells.append("—")
        row_mean = means.mean()
        row_std = means.std(ddof=0)
        rows.append([_title(meth), b.label(ds)] + cells + [_f(row_mean), _f(row_std)])
    text = _table(header, rows)
    reps = int(bm["repeat"].nunique())
    exp = b.man.get("experiments", {}).get("brightness", {})
    text += (f"\n\nOnly the OOD images are brightened (the in-distribution test images are not), as in the paper. "
             f"Mean and std are over the nine strengths of a row (the paper's Mean/Std columns)"
             + (f"; cells are mean ± std over {reps} repeats (other random OOD subsets)" if reps > 1 else "")
             + f". Images per set and strength: {exp.get('n_per_set', '?')}.")
    return text


def _paper_brightness() -> str:
    pb = PAPER["brightness"]
    header = ["paper table", "OOD set", "method"] + [f"{s:.1f}×" for s in pb["strengths"]] + ["mean", "std"]
    rows = [[t, ds, meth] + [_f(v) for v in vals] for (t, ds, meth), vals in pb["values"].items()]
    return _table(header, rows)


def _ratio(b: _Bundle) -> float | None:
    """ROSE-EKFAC images/s over Likelihood Regret's, from the bundle's throughput table."""
    tp = b.res.table("throughput")
    r = dict(zip(tp["method"], tp["images_per_s"])) if len(tp) else {}
    if r.get("rose-ekfac") and r.get("likelihood-regret"):
        return float(r["rose-ekfac"]) / float(r["likelihood-regret"])
    return None


def _throughput_section(b: _Bundle) -> str:
    tp = b.res.table("throughput")
    if tp.empty:
        return "_Not run for this checkpoint._"
    exp = b.man.get("experiments", {}).get("throughput", {})
    lr = tp.loc[tp["method"] == "likelihood-regret", "images_per_s"]
    lr_v = float(lr.iloc[0]) if len(lr) else math.nan
    rows = []
    for _, r in tp.sort_values("images_per_s", ascending=False).iterrows():
        ov = b.value(r["method"], "overall")
        ratio = r["images_per_s"] / lr_v if not math.isnan(lr_v) else math.nan
        rows.append([_title(r["method"]), f"{r['images_per_s']:.3g}", str(int(r["n_images"])), str(int(r["batch_size"])),
                     r["device"], _f(ov), ("—" if math.isnan(ratio) else f"{ratio:.0f}×")])
    header = ["method", "images/s", "images timed", "batch", "device", "Overall AUROC", "× LR(E)"]
    if math.isnan(lr_v):
        header, rows = header[:-1], [r[:-1] for r in rows]
    text = _table(header, rows)
    imgs = exp.get("images", {})
    text += (f"\n\nMeasured in one process, one method after the other, on the same {imgs.get('n', '?')} "
             f"{imgs.get('dataset', '')} test images (seed {imgs.get('seed', '?')}); ROSE's one-off Fisher fit is not "
             "included (fit times, measured at different moments on a shared machine: " + ", ".join(f"{k} {v.get('fit_seconds', '?')} s"
                                                 for k, v in b.man.get("fits", {}).items()) + "). "
             f"Paper (Figure 4, CIFAR-10 VAE on an RTX 3090): LR(E) ≈ {PAPER['figure4']['images_per_s']['likelihood-regret']}"
             f" img/s, ROSE ≈ {PAPER['figure4']['images_per_s']['rose-ekfac']:.0f} img/s (≈ 44×).")
    r_rose = tp.loc[tp["method"] == "rose-ekfac", "images_per_s"]
    if len(r_rose) and not math.isnan(lr_v):
        text += f" **Ours: ROSE-EKFAC / LR(E) = {float(r_rose.iloc[0]) / lr_v:.0f}×.**"
    return text


def _fisher_samples_section(b: _Bundle) -> str:
    fs = b.res.table("fisher_samples")
    if fs.empty:
        return "_Not run for this checkpoint._"
    rows = []
    for (fisher, n), g in fs[fs["ood_set"] == "overall"].groupby(["fisher", "n_fit"], sort=True):
        a = g["auroc"]
        mn = fs[(fs["ood_set"] == "mnist") & (fs["fisher"] == fisher) & (fs["n_fit"] == n)]["auroc"]
        rows.append([fisher, str(int(n)), str(len(a)), _f(a.mean()), _f(a.std(ddof=0)), _f(a.min()), _f(a.max()),
                     _f(mn.mean()) if len(mn) else "—"])
    exp = b.man.get("experiments", {}).get("fisher-samples", {})
    ev = exp.get("eval", {})
    return (_table(["Fisher", "Fisher samples", "repeats", "Overall AUROC mean", "std", "min", "max", "MNIST mean"], rows)
            + f"\n\nEach repeat fits ROSE on a fresh random draw of Fisher samples (plus {exp.get('n_norm', '?')} "
              f"separate normalisation images) and scores the same evaluation set: {ev.get('n_in', '?')} "
              f"in-distribution test images vs up to {ev.get('n_per_set', '?')} images of each OOD set.")


def _layer_section(b: _Bundle) -> str:
    lm = b.res.table("layer_metrics")
    if lm.empty:
        return "_Not run for this checkpoint._"
    sets = sorted(set(lm["ood_set"]) - {"overall"}) + (["overall"] if "overall" in set(lm["ood_set"]) else [])
    rows = []
    for (fisher, layer), g in lm.groupby(["fisher", "layer"], sort=False):
        d = dict(zip(g["ood_set"], g["auroc"]))
        rows.append([fisher, f"`{layer}`"] + [_f(d.get(s)) for s in sets])
    if len(rows) > 40:  # Glow: 32 InvConv layers per Fisher; keep the report readable
        rows = rows[:40] + [["…", f"({len(rows) - 40} more rows in layer_metrics.parquet)"] + [""] * len(sets)]
    return _table(["Fisher", "layer"] + [b.label(s) for s in sets], rows)


def _compare_rows(b: _Bundle, key: str, rows_map: dict[str, str]) -> str:
    paper = PAPER[key]["values"]
    cols = list(next(iter(paper.values())).keys())
    have = set(b.sets())
    header = ["ROSE"] + [f"{c} → {b.label(o) if (o := ('overall' if c == 'Overall' else b.ours_set(c, have))) else '—'}"
                         for c in cols]
    rows = []
    for prow, method in rows_map.items():
        cells = []
        for c in cols:
            ours = "overall" if c == "Overall" else b.ours_set(c, have)
            cells.append(f"{_f(b.value(method, ours) if ours else math.nan)} ({_f(paper[prow][c])})")
        rows.append([f"{prow} (`{method}`)"] + cells)
    return _table(header, rows)


# --------------------------------------------------------------------------------------------
# The report
# --------------------------------------------------------------------------------------------

def build_report(results: str | os.PathLike | None = None, checkpoints: str | os.PathLike = "checkpoints") -> str:
    """The Markdown text of ``docs/results.md``."""
    root = results_root(results)
    ckpt_dir = Path(checkpoints)
    bundles = _bundles(root)
    vae = bundles.get("vae-fmnist") or next((b for b in bundles.values()
                                             if b.man.get("checkpoint", {}).get("card", {}).get("kind") == "vae"), None)
    glow = bundles.get("glow-fmnist") or next((b for b in bundles.values()
                                               if b.man.get("checkpoint", {}).get("card", {}).get("kind") == "glow"), None)
    L: list[str] = []
    L += ["# Results", "",
          f"_Generated by `python -m rose_core report` from `{root}/` on {time.strftime('%Y-%m-%d %H:%M')}; "
          "do not edit by hand. The paper's numbers (in parentheses) are transcribed in `rose_core/report.py` "
          "(`PAPER`, with the table each comes from)._", "",
          "Conventions: AUROC and FPR80 treat OOD as the positive class; AUPRC treats in-distribution as positive "
          "(the paper's Table 4). Every score is higher = more OOD. **†** marks an offline stand-in (not the "
          "paper's dataset: e.g. `letters-fonts` for NotMNIST, `kana-fonts` for KMNIST, `glyphs-scripts` for "
          "Omniglot, `digits-on-photos` for SVHN, `faces-lfw` (100 real LFW faces) for CelebA, `photo-crops` for "
          "LSUN); `cifar10-samples` holds only 20 real CIFAR-10 test images. Our Overall set pools up to "
          "1000 random images of every OOD set we scored (stand-ins included), so it is not the paper's Overall.", ""]

    # --- what could not be run -------------------------------------------------------------
    L += ["## What could not be run", ""]
    cannot = [
        "**CIFAR-10 models** (bottom halves of Tables 2–7, Tables 1/8/9/10/11, Figure 4's model): there is no "
        "offline source of the CIFAR-10 training set here (only 20 test images ship with foolbox), so no "
        "CIFAR-10 VAE or Glow was trained. The brightness experiment is run on the FMNIST models instead, with "
        "the paper's CIFAR-10 rows shown for context only.",
        "**Real KMNIST, NotMNIST, Omniglot, SVHN, CelebA, LSUN and the full CIFAR-10 test set** need the internet; "
        "stand-ins (†) are used and named as such.",
    ]
    for b in bundles.values():
        cap = b.man.get("experiments", {}).get("capacity")
        if cap and cap.get("missing"):
            cannot.append("**Table 3 (capacity)**: the VAEs of other widths were not trained (no time budget for "
                          "training on this CPU); missing: " + "; ".join(f"{k}: `{v}`" for k, v in cap["missing"].items()))
    if not any(b.man.get("experiments", {}).get("capacity") for b in bundles.values()):
        cannot.append("**Table 3 (capacity)**: the VAEs of 0.5×, 2× and 4× width were not trained; train them with "
                      "`python -m rose_core train --model vae --capacity 2 --out checkpoints/vae-fmnist-x2` "
                      "(and 0.5, 4), then run `python -m rose_core evaluate --checkpoint checkpoints/vae-fmnist "
                      "--preset capacity`.")
    if glow is not None:
        ep = glow.man.get("checkpoint", {}).get("card", {}).get("epochs")
        cannot.append(f"**Glow trained for {ep} epoch(s) only** (the paper: 50 epochs, ~100K steps); its numbers "
                      "describe an undertrained flow.")
    for b in bundles.values():
        for what, why in b.man.get("missing", {}).items():
            if not what.startswith("capacity"):
                cannot.append(f"`{b.name}`: **{what}** skipped: {why}")
        pert = b.man.get("experiments", {}).get("perturbations", {})
        for what, cmd in pert.get("missing", {}).items():
            cannot.append(f"`{b.name}`: Tables 10/11 **{what}** not available (`{cmd}`).")
    if vae is not None:
        lr = vae.man.get("methods", {}).get("likelihood-regret")
        if lr is not None:
            sets = lr.get("ood_sets") or [d for d in vae.sets() if not math.isnan(vae.value("likelihood-regret", d))]
            cannot.append(f"**Likelihood Regret** is capped at {lr.get('cap')} images per set"
                          + (f" and run on {', '.join(sets)} only" if sets else "")
                          + " (100 Adam steps × 20 ELBO samples per image"
                          + (f": {ratio:.0f}× slower than ROSE-EKFAC in the throughput run" if (ratio := _ratio(vae)) else "")
                          + "); its AUROCs are correspondingly coarse.")
    L += [f"- {c}" for c in dict.fromkeys(cannot)] + [""]

    # --- checkpoints and data --------------------------------------------------------------
    L += ["## Checkpoints", "", _checkpoints_section(bundles, ckpt_dir), "",
          "## OOD sets", "", _datasets_section(bundles), ""]
    for b in bundles.values():
        s = b.man.get("settings", {})
        ind = b.man.get("in_distribution", {})
        fd = b.man.get("fit_data", {})
        L += [f"**`{b.name}` settings:** in-distribution {ind.get('name')} test, n = {ind.get('n')} (seed "
              f"{ind.get('seed')}); {s.get('n_ood')} images per OOD set; ROSE fitted on {fd.get('n_fit')} "
              f"{fd.get('name')} train images (fit fraction {fd.get('fit_fraction')}: Fisher / separate "
              f"normalisation split); IWAE k = {s.get('k')}; caps {b.man.get('caps', {})}; environment "
              f"{b.man.get('environment', {})}.", ""]

    # --- headline ------------------------------------------------------------------------------
    L += ["## Headline", ""]
    if vae is not None:
        L += _headline(vae) + [""]
    if vae is not None and _variants_section(vae):
        L += ["### ROSE variants on the VAE (the 0.99 goal on MNIST)", "",
              "Fit images are in-distribution *train* images, split half Fisher / half normalisation "
              "(`normalization=separate`) or used for both (`same`, the authors' code). Aggregation: `relu` is "
              "eq. 11, `max` the authors' plain max; variants that differ only in p/aggregation reuse the fit.", "",
              _variants_section(vae), ""]
    if glow is not None:
        g_nll, g_rose = glow.value("nll", "mnist"), glow.value("rose-diag", "mnist")
        L += [f"**Glow ({glow.name}) vs MNIST:** NLL AUROC {_f(g_nll)}, ROSE-DIAG (InvConv) {_f(g_rose)} "
              f"(paper ROSE 0.562).", ""]

    # --- Table 2 -------------------------------------------------------------------------------
    if vae is not None:
        L += ["## Table 2 (VAE, Fashion-MNIST): AUROC, ours (paper)", "",
              _compare_table(vae, "table2-vae", _VAE_COLS, "auroc", ["rose-diag", "rnd"] + _best_variant(vae)), "",
              f"Images: {_n_note(vae, ['rose-ekfac', 'likelihood-regret'])}.", "",
              "## Table 4 (VAE): AUPRC, in-distribution positive, ours (paper)", "",
              _compare_table(vae, "table4-vae", _VAE_COLS, "auprc_in"), "",
              "## Table 5 (VAE): FPR80 (lower is better), ours (paper)", "",
              _compare_table(vae, "table5-vae", _VAE_COLS, "fpr80"), ""]
    if glow is not None:
        L += ["## Table 2 right (Glow, Fashion-MNIST; preset `table5`): AUROC, ours (paper)", "",
              _compare_table(glow, "table2-glow", _GLOW_COLS, "auroc", ["rose-ekfac", "nll"]
                             + [m for m in glow.methods() if m.startswith("rose-") and ":" in m][:2]), "",
              "## Table 4 right (Glow): AUPRC, in-distribution positive, ours (paper)", "",
              _compare_table(glow, "table4-glow", _GLOW_COLS, "auprc_in"), "",
              "## Table 5 right (Glow): FPR80 (lower is better), ours (paper)", "",
              _compare_table(glow, "table5-glow", _GLOW_COLS, "fpr80"), ""]

    # --- Table 3, 6, 7 ---------------------------------------------------------------------
    L += ["## Table 3 (capacity)", ""]
    cap = vae.man.get("experiments", {}).get("capacity") if vae is not None else None
    if cap and cap.get("found") and len(cap["found"]) > 1:
        rows = []
        for ps in PAPER["table3"]["values"]:
            cells = []
            for c in ("0.5", "1", "2", "4"):
                bname = "vae-fmnist" if c == "1" else f"vae-fmnist-x{c}"
                bb = bundles.get(bname)
                ours = bb.ours_set(ps, set(bb.sets())) if bb else None
                cells.append(f"{_f(bb.value('rose-ekfac', ours) if ours else math.nan)} "
                             f"({_f(PAPER['table3']['values'][ps][c])})")
            rows.append([ps] + cells)
        L += [_table(["paper set", "0.5×", "1×", "2×", "4×"], rows), ""]
    else:
        L += ["Not run: only the 1× VAE exists. " + ("Missing: " + "; ".join(f"{k} (`{v}`)" for k, v in
                                                                             (cap or {}).get("missing", {}).items())
                                                     if cap else ""),
              "", "Paper (Table 3, FMNIST, ROSE AUROC):", "",
              _table(["paper set", "0.5×", "1×", "2×", "4×"],
                     [[ps] + [_f(v) for v in vals.values()] for ps, vals in PAPER["table3"]["values"].items()]), ""]
    if vae is not None:
        L += ["## Table 6 (VAE): DIAG vs EKFAC, AUROC ours (paper)", "",
              _compare_rows(vae, "table6", {"DIAG": "rose-diag", "EKFAC": "rose-ekfac"}), ""]
    if glow is not None:
        if "rose-diag:layers=all" in glow.methods():
            L += ["## Table 7 (Glow): InvConv vs all layers, AUROC ours (paper)", "",
                  _compare_rows(glow, "table7", {"InvConv": "rose-diag", "Full": "rose-diag:layers=all"}), ""]
        else:
            L += ["## Table 7 (Glow)", "", "_Not run (preset `glow-layers`)._", ""]

    # --- brightness ----------------------------------------------------------------------------
    L += ["## Brightness (Tables 1/8/9 protocol, on the FMNIST models)", ""]
    for b in (vae, glow):
        if b is not None:
            L += [f"### `{b.name}`", "", _brightness_section(b), ""]
    L += ["Paper (models trained on **CIFAR-10**, so not directly comparable):", "", _paper_brightness(), ""]

    # --- perturbations ---------------------------------------------------------------------------
    if vae is not None:
        pert = vae.man.get("experiments", {}).get("perturbations")
        L += ["## Outlier-exposure perturbations (Tables 10/11 protocol)", ""]
        if pert:
            meths = pert.get("methods", [])
            have = vae.sets()
            rows = [[_title(m)] + [_f(vae.value(m, s)) for s in have + ["overall"]] for m in meths]
            L += [_table(["method"] + [vae.label(s) for s in have] + ["overall"], rows) if rows else
                  "_No perturbation-trained baselines available._", ""]
        else:
            L += ["_Not run (preset `perturbations`)._", ""]

    # --- throughput, fisher samples, layers ----------------------------------------------------
    if vae is not None:
        L += ["## Throughput vs Overall AUROC (Figure 4 protocol, VAE)", "", _throughput_section(vae), "",
              "## AUROC vs number of Fisher samples (Figure 5 protocol, VAE)", "", _fisher_samples_section(vae), "",
              "## Layer-wise AUROC (VAE; each layer's raw score alone)", "", _layer_section(vae), ""]
    if glow is not None:
        L += ["## Throughput (Glow)", "", _throughput_section(glow), "",
              "## Layer-wise AUROC (Glow)", "", _layer_section(glow), ""]
    cmds = []
    for b in bundles.values():
        cmds += [c for c in b.man.get("commands", []) if _current(c, b)]
    L += ["## Reproduce", "",
          "The commands that produced the bundles, as recorded in their manifests (each computes only what the "
          "cache lacks, so any order gives the same bundle; with everything cached each takes seconds):",
          "", "```", *cmds, "python -m rose_core report", "```", ""]
    return "\n".join(L)


def _current(cmd: str, b: _Bundle) -> bool:
    """False for a recorded command whose --n-in/--n-ood differ from the bundle's final settings
    (a superseded run whose rows were replaced)."""
    tok = cmd.split()
    want = {"--n-in": b.man.get("in_distribution", {}).get("n"), "--n-ood": b.man.get("settings", {}).get("n_ood")}
    for flag, value in want.items():
        if flag in tok and value is not None and tok.index(flag) + 1 < len(tok):
            if str(tok[tok.index(flag) + 1]) != str(value):
                return False
    return True


def write_report(results: str | os.PathLike | None = None, out: str | os.PathLike = "docs/results.md",
                 checkpoints: str | os.PathLike = "checkpoints") -> Path:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    text = build_report(results, checkpoints)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(out)
    return out


def cli_report(args) -> int:
    out = write_report(args.results, args.out, args.checkpoints)
    print(f"wrote {out}")
    return 0


__all__ = ["PAPER", "PAPER_SETS", "build_report", "write_report"]
