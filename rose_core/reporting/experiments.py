"""The experiments beyond the comparison tables: brightness (Tables 1/8/9 protocol), outlier-exposure
perturbations (Tables 10/11), throughput (Figure 4), Fisher sample size (Figure 5), layer-wise AUROC,
and the stress suite (beyond the paper)."""

from __future__ import annotations

import math

from rose_core.labels import JPEG_NOTE
from rose_core.methods import parse_method
from rose_core.paper import PAPER, PAPER_PERTURBATION, PAPER_SETS, PAPER_TRAINING
from rose_core.reporting.context import NOT_RUN, Context, experiment, fmt, label, md_table, title
from rose_core.reporting.tables import compare_rows
from rose_core.results import Results

# --------------------------------------------------------------------------------------------
# Brightness and perturbations
# --------------------------------------------------------------------------------------------

def _brightness_row(b: Results, meth: str, ds: str, g, strengths: list[float]) -> list[str]:
    per = g.groupby("strength")["auroc"]
    means, stds = per.mean(), per.std(ddof=0)
    several = g["repeat"].nunique() > 1
    cells = [(fmt(means[s]) + (f" ± {fmt(stds[s])}" if several else "")) if s in means.index else "—"
             for s in strengths]
    return [title(meth), label(b, ds)] + cells + [fmt(means.mean()), fmt(means.std(ddof=0))]


def brightness_table(b: Results) -> str:
    m = b.table("metrics")
    bm = m[m["perturbation"] == "brightness"]
    if bm.empty:
        return NOT_RUN
    strengths = sorted(bm["strength"].unique())
    header = ["method", "OOD set"] + [f"{s:.1f}×" for s in strengths] + ["mean", "std"]
    rows = [_brightness_row(b, meth, ds, g, strengths) for (meth, ds), g in bm.groupby(["method", "ood_set"], sort=True)]
    reps = int(bm["repeat"].nunique())
    return md_table(header, rows) + (
        "\n\nOnly the OOD images are brightened (the in-distribution test images are not), as in the paper. "
        "Mean and std are over the nine strengths of a row (the paper's Mean/Std columns)"
        + (f"; cells are mean ± std over {reps} repeats (other random OOD subsets)" if reps > 1 else "")
        + f". Images per set and strength: {experiment(b, 'brightness').get('n_per_set', '?')}.")


def _paper_brightness() -> str:
    pb = PAPER["brightness"]
    header = ["paper table", "OOD set", "method"] + [f"{s:.1f}×" for s in pb["strengths"]] + ["mean", "std"]
    return md_table(header, [[t, ds, meth] + [fmt(v) for v in vals] for (t, ds, meth), vals in pb["values"].items()])


def brightness(ctx: Context) -> list[str]:
    out = ["## Brightness (Tables 1/8/9)", ""]
    for b in (ctx.vae, ctx.glow):
        if b is not None:
            out += [f"### `{b.name}` (Fashion-MNIST; the paper's protocol on another model)", "", brightness_table(b), ""]
    if ctx.vae_cifar10 is not None:
        card = ctx.vae_cifar10.checkpoint_card()
        out += [f"### `{ctx.vae_cifar10.name}` (CIFAR-10: the paper's Tables 1/8/9)", "",
                f"Trained {card.get('epochs', '?')} epochs on the {card.get('train_images', '?'):,}-image CIFAR-10 "
                "subset (the paper: 100 epochs on 50,000). The paper's CelebA, SVHN and Omniglot are the offline "
                "stand-ins `faces-lfw`, `digits-on-photos` and `glyphs-scripts` (†) here.", "",
                brightness_table(ctx.vae_cifar10), ""]
    if ctx.glow_cifar10 is not None and experiment(ctx.glow_cifar10, "brightness"):
        card = ctx.glow_cifar10.checkpoint_card()
        paper = PAPER_TRAINING[("glow", "cifar10")]
        out += [f"### `{ctx.glow_cifar10.name}` (CIFAR-10 Glow)", "",
                f"Trained {card.get('epochs', '?')} epochs on the {card.get('train_images', '?'):,}-image CIFAR-10 "
                f"subset (the paper: {paper['epochs']} epochs on {paper['train_images']:,}); the paper's brightness "
                "tables use its VAE, so this is the protocol on another model.", "", brightness_table(ctx.glow_cifar10),
                ""]
    return out + ["Paper (models trained on CIFAR-10):", "", _paper_brightness(), ""]


def _perturbation_of(method: str) -> str | None:
    """Which outlier-exposure perturbation a perturbations-preset method was trained with: an RND's
    checkpoint is named ``rnd-<ds>-<perturbation>`` (or ``fits/rnd-<perturbation>``), a background model
    ``<checkpoint>-background-<perturbation>``; the plain ``rnd`` is the SVD-RND and the default
    background model is trained on random-pixel noise (the trainer's only perturbation)."""
    spec = parse_method(method)
    path = str(spec.opts.get("path") or spec.opts.get("background") or "")
    for pert in PAPER_PERTURBATION:
        if path.endswith(f"-{pert}"):
            return pert
    if spec.base == "rnd":
        return "svd" if not path else None
    return "random" if spec.base == "likelihood-ratio" else None


def _perturbation_section(b: Results, heading: str) -> list[str]:
    out = [heading, ""]
    pert = experiment(b, "perturbations")
    if not pert:
        return out + ["_Not run (preset `perturbations`)._", ""]
    have = b.metric_sets()
    methods = pert.get("methods", [])
    rows = [[title(m)] + [fmt(b.metric(m, s)) for s in have + ["overall"]] for m in methods]
    out += [md_table(["method"] + [label(b, s) for s in have] + ["overall"], rows) if rows else
            "_No perturbation-trained baselines available._", ""]
    if b.in_dist() not in PAPER_SETS["CIFAR-10"]:
        return out
    for key, base, what in (("table10-cifar10", "likelihood-ratio", "Table 10 (Likelihood Ratio)"),
                            ("table11-cifar10", "rnd", "Table 11 (RND)")):
        rows_map = {PAPER_PERTURBATION[p]: m for m in methods if parse_method(m).base == base
                    for p in [_perturbation_of(m)] if p}
        if rows_map:
            out += [f"**{what}, ours (paper)** — the paper's columns SVD28, DCT28, GB and Random0.2 are our "
                    "`svd`, `dct`, `gaussian` and `random`:", "", compare_rows(b, key, rows_map, "perturbation"), ""]
    return out


def perturbations(ctx: Context) -> list[str]:
    """Tables 10/11 protocol: every bundle that ran the preset; the CIFAR-10 one beside the paper."""
    out = []
    for b, heading in ((ctx.vae, "## Outlier-exposure perturbations (Tables 10/11 protocol, `{}`)"),
                       (ctx.vae_cifar10, "## Outlier-exposure perturbations (Tables 10/11, `{}`)")):
        if b is not None:
            out += _perturbation_section(b, heading.format(b.name))
    return out


# --------------------------------------------------------------------------------------------
# Throughput, Fisher samples, layers
# --------------------------------------------------------------------------------------------

def throughput_table(b: Results) -> str:
    tp = b.table("throughput")
    if tp.empty:
        return NOT_RUN
    lr_v = b.images_per_s().get("likelihood-regret", math.nan)
    rows = []
    for _, r in tp.sort_values("images_per_s", ascending=False).iterrows():
        ratio = r["images_per_s"] / lr_v if not math.isnan(lr_v) else math.nan
        rows.append([title(r["method"]), f"{r['images_per_s']:.3g}", str(int(r["n_images"])),
                     str(int(r["batch_size"])), r["device"], fmt(b.metric(r["method"], "overall")),
                     ("—" if math.isnan(ratio) else f"{ratio:.0f}×")])
    header = ["method", "images/s", "images timed", "batch", "device", "Overall AUROC", "× LR(E)"]
    if math.isnan(lr_v):
        header, rows = header[:-1], [r[:-1] for r in rows]
    imgs = experiment(b, "throughput").get("images", {})
    fits = ", ".join(f"{k} {v.get('fit_seconds', '?')} s" for k, v in b.meta.get("fits", {}).items())
    text = md_table(header, rows) + (
        f"\n\nMeasured in one process, one method after the other, on the same {imgs.get('n', '?')} "
        f"{imgs.get('dataset', '')} test images (seed {imgs.get('seed', '?')}); ROSE's one-off Fisher fit is not "
        f"included (fit times, measured at different moments on a shared machine: {fits}). "
        f"Paper (Figure 4, CIFAR-10 VAE on an RTX 3090): LR(E) ≈ {PAPER['figure4']['images_per_s']['likelihood-regret']}"
        f" img/s, ROSE ≈ {PAPER['figure4']['images_per_s']['rose-ekfac']:.0f} img/s (≈ 44×).")
    rose = b.images_per_s().get("rose-ekfac")
    if rose is not None and not math.isnan(lr_v):
        text += f" **Ours: ROSE-EKFAC / LR(E) = {rose / lr_v:.0f}×.**"
    return text


def fisher_samples_table(b: Results) -> str:
    fs = b.table("fisher_samples")
    if fs.empty:
        return NOT_RUN
    rows = []
    for (fisher, n), g in fs[fs["ood_set"] == "overall"].groupby(["fisher", "n_fit"], sort=True):
        a = g["auroc"]
        mn = fs[(fs["ood_set"] == "mnist") & (fs["fisher"] == fisher) & (fs["n_fit"] == n)]["auroc"]
        rows.append([fisher, str(int(n)), str(len(a)), fmt(a.mean()), fmt(a.std(ddof=0)), fmt(a.min()), fmt(a.max()),
                     fmt(mn.mean()) if len(mn) else "—"])
    exp = experiment(b, "fisher-samples")
    ev = exp.get("eval", {})
    return (md_table(["Fisher", "Fisher samples", "repeats", "Overall AUROC mean", "std", "min", "max", "MNIST mean"],
                     rows)
            + f"\n\nEach repeat fits ROSE on a fresh random draw of Fisher samples (plus {exp.get('n_norm', '?')} "
              f"separate normalisation images) and scores the same evaluation set: {ev.get('n_in', '?')} "
              f"in-distribution test images vs up to {ev.get('n_per_set', '?')} images of each OOD set.")


def layer_table(b: Results, max_rows: int = 40) -> str:
    lm = b.table("layer_metrics")
    if lm.empty:
        return NOT_RUN
    sets = sorted(set(lm["ood_set"]) - {"overall"}) + (["overall"] if "overall" in set(lm["ood_set"]) else [])
    rows = []
    for (fisher, layer), g in lm.groupby(["fisher", "layer"], sort=False):
        d = dict(zip(g["ood_set"], g["auroc"]))
        rows.append([fisher, f"`{layer}`"] + [fmt(d.get(s)) for s in sets])
    if len(rows) > max_rows:  # Glow: 32 InvConv layers per Fisher; keep the report readable
        rows = rows[:max_rows] + [["…", f"({len(rows) - max_rows} more rows in layer_metrics.parquet)"]
                                  + [""] * len(sets)]
    return md_table(["Fisher", "layer"] + [label(b, s) for s in sets], rows)


def measurements(ctx: Context) -> list[str]:
    """Throughput (Figure 4), Fisher sample size (Figure 5) and layer-wise AUROC."""
    out = []
    if ctx.vae is not None:
        out += ["## Throughput vs Overall AUROC (Figure 4 protocol, VAE)", "", throughput_table(ctx.vae), "",
                "## AUROC vs number of Fisher samples (Figure 5 protocol, VAE)", "", fisher_samples_table(ctx.vae), "",
                "## Layer-wise AUROC (VAE; each layer's raw score alone)", "", layer_table(ctx.vae), ""]
    if ctx.glow is not None:
        out += ["## Throughput (Glow)", "", throughput_table(ctx.glow), "",
                "## Layer-wise AUROC (Glow)", "", layer_table(ctx.glow), ""]
    if ctx.glow_cifar10 is not None:
        if experiment(ctx.glow_cifar10, "throughput"):
            out += [f"## Throughput (`{ctx.glow_cifar10.name}`)", "", throughput_table(ctx.glow_cifar10), ""]
        out += [f"## Layer-wise AUROC (`{ctx.glow_cifar10.name}`)", "", layer_table(ctx.glow_cifar10), ""]
    return out



# --------------------------------------------------------------------------------------------
# Stress suite (beyond the paper)
# --------------------------------------------------------------------------------------------

def _pct(v) -> str:
    return "—" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * float(v):.1f} %"


def _stress_table(b: Results, groups: tuple[str, ...], cell) -> str:
    view = b.stress_view(groups)
    kinds = view.attrs["groups"]
    header = ["method"] + [f"{d} ({kinds[d]})" if len(groups) > 1 else d for d in view.columns]
    rows = [[title(m)] + [cell(view.loc[m, d]) for d in view.columns] for m in view.index]
    return md_table(header, rows)


def stress_tables(b: Results) -> str:
    st = b.table("stress")
    if st.empty:
        return "_Not run (preset `stress`)._"
    exp = experiment(b, "stress")
    tpr = exp.get("tpr", st["tpr"].iloc[0])
    parts = []
    if (st["group"] == "ood").any():
        parts += ["AUROC of the OOD group (vs the in-distribution evaluation images):", "",
                  _stress_table(b, ("ood",), fmt), ""]
    rest = tuple(g for g in ("in-distribution", "benign", "covariate") if (st["group"] == g).any())
    if rest:
        parts += [f"Fraction flagged at each method's verdict threshold ({float(tpr):.0%} TPR on the calibration "
                  "half): the false-alarm rate. `in-distribution` is the evaluation half of the test split "
                  "(used for neither fit nor calibration), `benign` should stay in-distribution, `covariate` is a "
                  "real shift reported without a target.", "", _stress_table(b, rest, _pct), ""]
    rules = exp.get("thresholds") or {}
    if rules:
        parts += ["Thresholds: " + "; ".join(f"{k}: {v}" for k, v in rules.items()) + ".", ""]
    if (st["dataset"].str.contains("jpeg")).any():
        parts += ["JPEG re-encoding is reported without a target. " + JPEG_NOTE, ""]
    return "\n".join(parts).rstrip()


def stress(ctx: Context) -> list[str]:
    out = []
    for b in ctx.bundles.values():
        if b.has("stress"):
            out += [f"## Stress suite (`{b.name}`)", "", stress_tables(b), ""]
    return out
