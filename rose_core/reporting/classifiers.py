"""ROSE on classifiers beside pytorch-ood's classifier detectors and the generative models' methods
(issue 15), and the report's Figure 6 section.

One definition of the side-by-side table, :func:`detector_comparison`, used by ``docs/results.md``,
the Classifiers page and the Methods page. Every row is a method on the same three OOD sets (the
paper's Figure 6 sets: MNIST and the KMNIST/NotMNIST stand-ins) with Fashion-MNIST test images as
in-distribution. The classifier rows share one network and one set of images per network; the
generative rows come from their own bundles (other in-distribution images and OOD counts, stated in
the ``n in / n OOD`` column), so compare within a block exactly and across blocks as a summary.
"""

from __future__ import annotations

import math

import pandas as pd

from rose_core.labels import CLASSIFIER_TITLES, classifier_rank
from rose_core.methods import method_short
from rose_core.reporting.context import fmt as _fmt, label, md_table
from rose_core.results import Results

FIGURE6_SETS = ("mnist", "kana-fonts", "letters-fonts")
"""The paper's Figure 6 OOD sets (MNIST, KMNIST → kana-fonts, NotMNIST → letters-fonts)."""

GENERATIVE_METHODS = ("rose-ekfac", "rose-diag", "rose+typicality", "nll", "likelihood-ratio",
                      "input-complexity-png", "rnd")
"""The generative-model rows shown beside the classifier detectors, when their bundle has them."""

def is_classifier(b: Results) -> bool:
    return b.checkpoint_card().get("kind") == "classifier"


def _arch(b: Results) -> str:
    return (b.checkpoint_card().get("config") or {}).get("architecture", "")


def network_title(b: Results) -> str:
    return CLASSIFIER_TITLES.get(_arch(b), b.name)


def _classifier_bundles(bundles) -> list[Results]:
    """The classifier bundles of ``bundles`` in the Figure 6 order (shallow to deep), then by name."""
    return sorted((b for b in bundles if is_classifier(b)), key=lambda b: (classifier_rank(_arch(b)), b.name))


def _row(b: Results, model: str, method: str, label: str, sets: tuple[str, ...]) -> dict | None:
    aurocs = {s: b.metric(method, s) for s in sets}
    if all(math.isnan(a) for a in aurocs.values()):
        return None
    fpr = [b.metric(method, s, "fpr95") for s in sets]
    counts = [b.counts(method, s) for s in sets if not math.isnan(aurocs[s])]
    n_in = sorted({c[0] for c in counts})
    n_ood = sorted({c[1] for c in counts})
    row = {"model": model, "method": label}
    row.update({f"AUROC {s}": aurocs[s] for s in sets})
    have = [s for s in sets if not math.isnan(aurocs[s])]
    row["mean AUROC"] = sum(aurocs[s] for s in have) / len(have)
    fpr_have = [f for f in fpr if not math.isnan(f)]
    row["mean FPR95"] = sum(fpr_have) / len(fpr_have) if fpr_have else float("nan")
    row["images/s"] = b.images_per_s().get(method, float("nan"))
    row["n in / n OOD"] = "/".join(map(str, n_in)) + " / " + "/".join(map(str, n_ood))
    return row


def detector_comparison(bundles: dict[str, Results], sets: tuple[str, ...] = FIGURE6_SETS) -> pd.DataFrame:
    """One row per (model, method) on ``sets``: the classifiers' ROSE-DIAG and pytorch-ood detectors,
    then the Fashion-MNIST generative models' methods. Columns: model, method, AUROC per set, mean
    AUROC and mean FPR95 over the sets the row has a result for, images/s (scoring only, the
    bundle's throughput run), and the image counts. Empty when no classifier bundle has metrics."""
    rows: list[dict] = []
    classifiers = [b for b in _classifier_bundles(bundles.values()) if b.has("metrics")]
    if not classifiers:
        return pd.DataFrame()
    for b in classifiers:
        for method in b.table("metrics")["method"].unique():  # the preset's order: ROSE, then the detectors
            label = "ROSE (DIAG)" if method == "rose-diag" else f"{method} (pytorch-ood)"
            r = _row(b, network_title(b), method, label, sets)
            if r:
                rows.append(r)
    for b in bundles.values():
        if is_classifier(b) or b.in_dist() != "fashion-mnist" or not b.has("metrics"):
            continue
        kind = (b.checkpoint_card().get("kind") or "").upper()
        for method in GENERATIVE_METHODS:
            r = _row(b, f"{kind} `{b.name}`", method, method_short(method), sets)
            if r:
                rows.append(r)
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------------------------
# The report's section
# --------------------------------------------------------------------------------------------

def _figure6_rows(b: Results, sets: tuple[str, ...]) -> list[list[str]]:
    """Figure 6 as a table: one row per scored layer in depth order, its AUROC on each set."""
    lm = b.table("layer_metrics")
    depths = (b.meta.get("figure6") or {}).get("layer_depths") or {}
    if lm.empty or not depths:
        return []
    lm = lm[lm["fisher"] == "diag"]
    rows = []
    for layer, depth in sorted(depths.items(), key=lambda kv: kv[1]):
        part = lm[lm["layer"] == layer].set_index("ood_set")["auroc"]
        rows.append([str(depth), f"`{layer}`", *(_fmt(part.get(s, float("nan"))) for s in sets)])
    return rows


def section(ctx) -> list[str]:
    """Figure 6 (layer-wise ROSE AUROC per classifier) and ROSE beside the classifier detectors."""
    nets = _classifier_bundles(ctx.bundles.values())
    if not nets:
        return []
    sets = FIGURE6_SETS
    names = [label(nets[0], s) for s in sets]
    out = ["## Figure 6: ROSE layer by layer on classifiers, and the classifier detectors", "",
           "Classifiers trained on Fashion-MNIST on this CPU (budget and test accuracy from each card; the paper "
           "trains to convergence). ROSE uses the DIAG Fisher and the cross-entropy at the predicted label; each "
           "AUROC below reads one layer's score alone (OOD positive). The paper's finding: in the shallow CNN the "
           "AUROC rises with depth; in VGG and ResNet it rises, then falls at the deepest layers.", ""]
    for b in nets:
        card, f6 = b.checkpoint_card(), b.meta.get("figure6") or {}
        out += [f"### {network_title(b)} (`{b.name}`)", "",
                f"{card.get('budget', '?')}; test accuracy {_fmt(card.get('test_accuracy'))}. Fisher on "
                f"{f6.get('n_fisher', '?')} training images, calibration on {f6.get('n_calibration', '?')} held-out "
                f"test images, {f6.get('n_in', '?')} in-distribution vs {f6.get('n_ood', '?')} images per OOD set. "
                f"Reproduce: `{f6.get('command', 'python -m rose_core evaluate --preset figure6')}`.", ""]
        rows = _figure6_rows(b, sets)
        out += [md_table(["depth", "layer", *names], rows) if rows else "_No layer-wise results._", ""]
    table = detector_comparison(ctx.bundles, sets)
    if not table.empty:
        versions = sorted({str((b.meta.get("figure6") or {}).get("detectors")) for b in nets} - {"None"})
        out += ["### ROSE beside the classifier detectors and the generative models", "",
                "Each classifier block: one network and the same images for every row (ROSE-DIAG over all its "
                "conv/linear layers; MSP, Energy, ODIN, Mahalanobis, KNN and ViM from "
                f"{', '.join(versions) or 'pytorch-ood'}). The generative blocks are the Fashion-MNIST models' "
                "own bundles (other in-distribution images, counts in the last column), so compare across blocks "
                "as a summary. Mean AUROC and mean FPR95 (lower is better) are over the sets with a result; images/s is "
                "scoring only (fits excluded), measured in each bundle's throughput run. An FPR95 of 1.000 beside a fair "
                "AUROC is ROSE's clipping at zero (ReLU(ŝ + β), β = 0): when more than 5 % of the OOD images have "
                "every layer at or below its in-distribution mean, detecting 95 % of them means flagging every "
                "image.", ""]
        cols = [f"AUROC {s}" for s in sets]
        rows = [[r["model"], r["method"], *(_fmt(r[c]) for c in cols), _fmt(r["mean AUROC"]),
                 _fmt(r["mean FPR95"]), _fmt(r["images/s"], 1), r["n in / n OOD"]] for r in table.to_dict("records")]
        out += [md_table(["model", "method", *names, "mean AUROC", "mean FPR95", "images/s", "n in / n OOD"], rows), ""]
    return out


def settings_line(b: Results) -> str:
    """The settings sentence of a classifier bundle (its Figure 6 run)."""
    f6, ind = b.meta.get("figure6") or {}, b.meta.get("in_distribution") or {}
    return (f"**`{b.name}` settings (Figure 6 preset):** in-distribution {ind.get('name')} test, n = {ind.get('n')} "
            f"(seed {ind.get('seed')}); {f6.get('n_ood')} images per OOD set; ROSE-{str(f6.get('fisher', '?')).upper()} "
            f"on the {f6.get('loss', '?')}, Fisher on {f6.get('n_fisher')} training images, calibration on "
            f"{f6.get('n_calibration')} held-out test images; batch {f6.get('batch_size')}; detectors "
            f"{f6.get('detectors') or 'not run'}; {f6.get('torch_threads')} torch thread(s).")
