"""The paper's comparison tables, ours beside the paper's numbers: Tables 2, 4, 5 (VAE and Glow),
3 (capacity), 6 (DIAG vs EKFAC) and 7 (Glow layers)."""

from __future__ import annotations

import math

from rose_core.paper import GLOW_COLS, PAPER, PAPER_TRAINING, VAE_COLS, ours_set
from rose_core.reporting.context import (TABLE7_ROWS, Context, best_variant, experiment, fmt, has_table7, label,
                                         md_table, title)
from rose_core.results import Results

BESIDE = ["rose+typicality", "typicality"]
"""Methods beyond the paper shown beside its columns when the bundle has them (issue 11)."""

# --------------------------------------------------------------------------------------------
# Tables 2–7
# --------------------------------------------------------------------------------------------

def compare_table(b: Results, key: str, cols: list[str], col: str = "auroc", extra_cols: list[str] = ()) -> str:
    """Paper sets (rows) × methods, ``ours (paper)`` per cell; our sets the paper lacks follow."""
    paper = PAPER[key]["values"]
    have = set(b.metric_sets())
    methods = list(cols) + [c for c in extra_cols if c in b.metric_methods()]
    rows, used = [], set()
    for ps in paper:
        ours = "overall" if ps == "Overall" else ours_set(ps, have)
        if ours:
            used.add(ours)
        cells = []
        for m in methods:
            mine = b.metric(m, ours, col) if ours else math.nan
            pv = paper.get(ps, {}).get(m)
            cells.append(f"{fmt(mine)} ({fmt(pv)})" if pv is not None else fmt(mine))
        rows.append([f"{ps} → {label(b, ours) if ours else 'not available'}"] + cells)
    for ds in sorted(have - used):
        rows.append([f"(not in this table) {label(b, ds)}"] + [fmt(b.metric(m, ds, col)) for m in methods])
    return md_table(["paper set → ours"] + [title(m) for m in methods], rows)


def compare_rows(b: Results, key: str, rows_map: dict[str, str], corner: str = "ROSE") -> str:
    """Paper rows (e.g. DIAG / EKFAC) × paper sets, ``ours (paper)`` per cell; ``corner`` heads the row names."""
    paper = PAPER[key]["values"]
    cols = list(next(iter(paper.values())).keys())
    have = set(b.metric_sets())
    ours = {c: "overall" if c == "Overall" else ours_set(c, have) for c in cols}
    header = [corner] + [f"{c} → {label(b, ours[c]) if ours[c] else '—'}" for c in cols]
    rows = [[f"{prow} (`{method}`)"] + [f"{fmt(b.metric(method, ours[c]) if ours[c] else math.nan)} "
                                        f"({fmt(paper[prow][c])})" for c in cols]
            for prow, method in rows_map.items()]
    return md_table(header, rows)


def fit_protocol_note(b: Results, methods: list[str]) -> str:
    """What each ROSE method's fit was made from (the bundle's manifest ``fits``): the default protocol
    (Fisher on training images, calibration on the held-out test half) or the earlier one (Fisher and
    normalisation on training images), so a table never compares the two silently."""
    from rose_core.methods import parse_method

    fits = (b.manifest or {}).get("fits", {})
    parts = []
    for m in methods:
        spec = parse_method(m)
        stem = "rose-" + spec.fisher + "".join(f"-{k}-{v}" for k, v in sorted(spec.options))
        f = fits.get(stem)
        if not f:
            continue
        if f.get("calibrated"):
            parts.append(f"`{m}`: Fisher on {f['n_fisher']:,} training images, calibrated on {f['n_norm']:,} "
                         "held-out test images (the default protocol)")
        else:
            parts.append(f"`{m}`: Fisher on {f['n_fisher']:,} and normalisation on {f['n_norm']:,} training images "
                         "(the earlier protocol; re-run its preset to refit)")
    return ("Fits: " + "; ".join(parts) + ".") if parts else ""


def _n_note(b: Results, methods: list[str]) -> str:
    parts = []
    for m in methods:
        sets = [s for s in b.metric_sets() if not math.isnan(b.metric(m, s))]
        if sets:
            ni = b.counts(m, sets[0])[0]   # the in-distribution images are the same for every set of a method
            parts.append(f"{title(m)}: {ni} in-distribution images, "
                         + ", ".join(f"{s} {b.counts(m, s)[1]}" for s in sets))
    return "; ".join(parts)


def _vae_tables(vae: Results, suffix: str, trained_on: str) -> list[str]:
    """Tables 2, 4 and 5 (VAE half) for one VAE bundle; ``suffix`` picks the paper's rows ("" for
    Fashion-MNIST, "-cifar10")."""
    card = vae.checkpoint_card()
    trained = (f" Ours: {card.get('epochs', '?')} epochs on {card.get('train_images', '?'):,} training images"
               f" (the paper: 100 epochs on the full training set)." if suffix else "")
    return [f"## Table 2 (VAE, {trained_on}): AUROC, ours (paper)", "",
            *([trained.strip(), ""] if trained else []),
            compare_table(vae, f"table2-vae{suffix}", VAE_COLS, "auroc", ["rose-diag", "rnd"] + best_variant(vae) + BESIDE),
            "",
            f"Images: {_n_note(vae, ['rose-ekfac', 'likelihood-regret'])}.", "",
            f"## Table 4 (VAE, {trained_on}): AUPRC, in-distribution positive, ours (paper)", "",
            compare_table(vae, f"table4-vae{suffix}", VAE_COLS, "auprc_in", BESIDE), "",
            f"## Table 5 (VAE, {trained_on}): FPR80 (lower is better), ours (paper)", "",
            compare_table(vae, f"table5-vae{suffix}", VAE_COLS, "fpr80", BESIDE), ""]


def vae_tables(ctx: Context) -> list[str]:
    out = _vae_tables(ctx.vae, "", "Fashion-MNIST") if ctx.vae is not None else []
    if ctx.vae_cifar10 is not None:
        out += _vae_tables(ctx.vae_cifar10, "-cifar10", "CIFAR-10 subset")
    return out


def glow_tables(ctx: Context) -> list[str]:
    glow = ctx.glow
    if glow is None:
        return []
    extra = ["rose-ekfac", "nll"] + [m for m in glow.metric_methods() if m.startswith("rose-") and ":" in m][:2] + BESIDE
    return ["## Table 2 right (Glow, Fashion-MNIST; preset `table5`): AUROC, ours (paper)", "",
            compare_table(glow, "table2-glow", GLOW_COLS, "auroc", extra), "",
            "## Table 4 right (Glow): AUPRC, in-distribution positive, ours (paper)", "",
            compare_table(glow, "table4-glow", GLOW_COLS, "auprc_in", BESIDE), "",
            "## Table 5 right (Glow): FPR80 (lower is better), ours (paper)", "",
            compare_table(glow, "table5-glow", GLOW_COLS, "fpr80", BESIDE), ""]


def glow_cifar10_tables(ctx: Context) -> list[str]:
    glow = ctx.glow_cifar10
    if glow is None:
        return []
    card = glow.checkpoint_card()
    extra = ["nll"] + BESIDE
    paper_epochs = PAPER_TRAINING[("glow", "cifar10")]["epochs"]
    return ["## Table 2 bottom right (Glow, CIFAR-10 subset; preset `table5`): AUROC, ours (paper)", "",
            f"Ours: {card.get('epochs', '?')} epochs on {card.get('train_images', '?'):,} training images (the paper: "
            f"{paper_epochs} epochs on the full training set).", "",
            compare_table(glow, "table2-glow-cifar10", GLOW_COLS, "auroc", extra), "",
            f"Images: {_n_note(glow, ['rose-diag'])}.", "",
            "## Table 4 bottom right (Glow, CIFAR-10 subset): AUPRC, in-distribution positive, ours (paper)", "",
            compare_table(glow, "table4-glow-cifar10", GLOW_COLS, "auprc_in", BESIDE), "",
            "## Table 5 bottom right (Glow, CIFAR-10 subset): FPR80 (lower is better), ours (paper)", "",
            compare_table(glow, "table5-glow-cifar10", GLOW_COLS, "fpr80", BESIDE), ""]


def capacity(ctx: Context) -> list[str]:
    out = ["## Table 3 (capacity)", ""]
    cap = experiment(ctx.vae, "capacity") if ctx.vae is not None else None
    widths = ("0.5", "1", "2", "4")
    if cap and cap.get("found") and len(cap["found"]) > 1:
        rows = []
        for ps in PAPER["table3"]["values"]:
            cells = []
            for c in widths:
                bb = ctx.bundles.get("vae-fmnist" if c == "1" else f"vae-fmnist-x{c}")
                ours = ours_set(ps, set(bb.metric_sets())) if bb else None
                cells.append(f"{fmt(bb.metric('rose-ekfac', ours) if ours else math.nan)} "
                             f"({fmt(PAPER['table3']['values'][ps][c])})")
            rows.append([ps] + cells)
        return out + [md_table(["paper set", "0.5×", "1×", "2×", "4×"], rows), ""]
    missing = ("Missing: " + "; ".join(f"{k} (`{v}`)" for k, v in cap.get("missing", {}).items())) if cap else ""
    return out + ["Not run: only the 1× VAE exists. " + missing, "", "Paper (Table 3, FMNIST, ROSE AUROC):", "",
                  md_table(["paper set", "0.5×", "1×", "2×", "4×"],
                           [[ps] + [fmt(v) for v in vals.values()] for ps, vals in PAPER["table3"]["values"].items()]),
                  ""]


def _table7(b: Results, key: str, title: str) -> list[str]:
    return [f"## Table 7 ({title}): InvConv vs all layers, AUROC ours (paper)", "",
            compare_rows(b, key, TABLE7_ROWS), "", fit_protocol_note(b, list(TABLE7_ROWS.values())), ""]


def fisher_kinds(ctx: Context) -> list[str]:
    """Table 6 (VAE: DIAG vs EKFAC) and Table 7 (Glow: InvConv vs all layers)."""
    out = []
    if ctx.vae is not None:
        out += ["## Table 6 (VAE): DIAG vs EKFAC, AUROC ours (paper)", "",
                compare_rows(ctx.vae, "table6", {"DIAG": "rose-diag", "EKFAC": "rose-ekfac"}), ""]
    if ctx.vae_cifar10 is not None:
        out += ["## Table 6 (VAE, CIFAR-10 subset): DIAG vs EKFAC, AUROC ours (paper)", "",
                compare_rows(ctx.vae_cifar10, "table6-cifar10", {"DIAG": "rose-diag", "EKFAC": "rose-ekfac"}), ""]
    if ctx.glow is not None:
        out += (_table7(ctx.glow, "table7", "Glow") if has_table7(ctx.glow)
                else ["## Table 7 (Glow)", "", "_Not run (preset `glow-layers`)._", ""])
    if ctx.glow_cifar10 is not None and has_table7(ctx.glow_cifar10):
        out += _table7(ctx.glow_cifar10, "table7-cifar10", "Glow, CIFAR-10 subset")
    return out
