"""Write every figure of the README from the committed artifacts, between markers.

A block ``<!-- BEGIN figures:NAME -->`` … ``<!-- END figures:NAME -->`` in README.md is
replaced by the table :data:`BLOCKS` ``[NAME]`` renders from:

* ``checkpoints/*.json`` — the shipped checkpoints' cards;
* ``results/<checkpoint>/metrics.parquet``, ``stress.parquet``, ``throughput.parquet``,
  ``manifest.json`` — the results bundle (``python -m rose_core evaluate``);
* ``results/benchmarks/app.json`` — ``benchmarks/bench_app.py``;
* ``results/benchmarks/fit.json`` — ``benchmarks/bench_fit.py``;
* ``results/benchmarks/floor.json`` — ``benchmarks/bench_floor.py``;
* ``results/benchmarks/your_data.json`` — ``benchmarks/bench_your_data.py``;
* ``results/cls-*/`` — the classifiers' bundles (``evaluate --preset figure6``).

``python scripts/readme_figures.py`` rewrites the README; ``--check`` exits 1 when a block is
stale (``tests/test_readme.py`` runs it, so a hand-typed or outdated number fails the suite).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rose_core.labels import CLASSIFIER_TITLES, classifier_rank, dataset_label  # noqa: E402
from rose_core.methods import method_title  # noqa: E402
from rose_core.results import Results  # noqa: E402

MARK = re.compile(r"(<!-- BEGIN figures:(?P<name>[\w-]+) -->\n)(?P<body>.*?)(<!-- END figures:(?P=name) -->)", re.S)


def _f(v, digits: int = 3) -> str:
    return "—" if v is None or (isinstance(v, float) and not np.isfinite(v)) else f"{v:.{digits}f}"


def _rate(v) -> str:
    return "—" if v is None or not np.isfinite(v) else f"{v:.3g}"


def _bundle(name: str) -> Results:
    return Results.for_checkpoint(name, ROOT / "results")


def checkpoints() -> str:
    rows = ["| checkpoint | model | trained on | epochs | test bits/dim |", "|---|---|---|---|---|"]
    notes: list[str] = []
    for card_file in sorted((ROOT / "checkpoints").glob("*.json")):
        if card_file.name.startswith("user-") or card_file.name.endswith(".train.json"):
            continue   # models trained on a user's own images (git-ignored) and training state are not shipped
        c = json.loads(card_file.read_text())
        cfg = c.get("config", {})
        if c.get("kind") == "vae":
            model = f"VAE n={cfg.get('base_width')}, z={cfg.get('latent_dim')}"
        elif c.get("kind") == "glow":
            model = f"Glow K={cfg.get('K')}, L={cfg.get('L')}, hidden {cfg.get('hidden')}"
        elif c.get("kind") == "classifier":
            model = f"{CLASSIFIER_TITLES.get(cfg.get('architecture'), cfg.get('architecture'))} classifier (accuracy {c.get('test_accuracy', 0):.3f})"
        elif c.get("scorer") == "rnd":
            model = f"RND predictor, {cfg.get('perturbation', '?').upper()} blurring"
        else:
            model = str(c.get("kind", "?")).upper()
        if c.get("noise_fraction"):
            model += f" (background, μ = {c['noise_fraction']})"
        elif c.get("perturbation"):
            k = f", K = {c['perturbation_strength']}" if c.get("perturbation_strength") else ""
            model += f" (background, {c['perturbation']} blur{k})"
        bpd = c.get("test_bits_per_dim")
        epochs = c.get("epochs", c.get("training", {}).get("epochs", "?"))
        rows.append(f"| `checkpoints/{card_file.stem}` | {model} | {c.get('dataset')} train "
                    f"({c.get('train_images', '?')}) | {epochs} | {_f(bpd) if bpd else '—'} |")
        for r in c.get("rejected_continuations", []):
            notes.append(f"`{card_file.stem}`: training on from epoch {r['from_epoch']} to {r['to_epoch']} was not kept: "
                         f"held-out {_f(r['test_bits_per_dim'])} bits/dim against this checkpoint's {_f(bpd)}, while the "
                         f"training images' fell from {_f(c.get('train_bits_per_dim'))} to {_f(r['train_bits_per_dim'])} "
                         f"(it overfits its {c.get('train_images', '?')} training images).")
        kept = c.get("held_out_by_epoch") or []
        if len(kept) > 1:
            last = max(kept, key=lambda r: r["epoch"])
            first = min(r["epoch"] for r in kept)
            span = f"the {len(kept)} kept (epochs {first}–{last['epoch']})"
            if epochs == last["epoch"]:
                notes.append(f"`{card_file.stem}`: the last of {span} has the lowest held-out bits/dim, still falling "
                             "when training stopped, so more epochs may help (`scripts/select_epoch.py`).")
            else:
                notes.append(f"`{card_file.stem}`: epoch {epochs} of {span}, chosen by held-out bits/dim "
                             f"({_f(bpd)}; the last epoch's: {_f(last['test_bits_per_dim'])}; `scripts/select_epoch.py`).")
    return "\n".join(rows) + "\n" + "".join(f"\n{n}\n" for n in notes)


def model_comparison() -> str:
    """Each evaluated model against the paper: epochs, training images, bits/dim, headline AUROCs."""
    from rose_core.reporting.overview import comparison_table
    from rose_core.results import bundles

    return comparison_table(bundles(ROOT / "results")) + "\n"


def nll_failure() -> str:
    rows = ["| model | NLL AUROC, Fashion-MNIST test vs MNIST test |", "|---|---|"]
    for name in ("vae-fmnist", "glow-fmnist"):
        res = _bundle(name)
        rows.append(f"| `{name}` | {_f(res.metric('nll', 'mnist'))} "
                    f"({res.counts('nll', 'mnist')[0]} vs {res.counts('nll', 'mnist')[1]} images) |")
    return "\n".join(rows) + "\n"


def _auroc_table(name: str, methods: list[str]) -> str:
    res = _bundle(name)
    rows = ["| method | MNIST | Overall | n in / n per set |", "|---|---|---|---|"]
    for m in methods:
        a, o = res.metric(m, "mnist"), res.metric(m, "overall")
        if np.isnan(a) and np.isnan(o):
            continue
        n_in, n_ood = res.counts(m, "mnist")
        rows.append(f"| {method_title(m)} | {_f(a)} | {_f(o)} | {n_in} / {n_ood} |")
    return "\n".join(rows) + "\n"


def vae_auroc() -> str:
    return _auroc_table("vae-fmnist", ["rose-ekfac", "rose+typicality", "typicality", "rose-diag",
                                       "rose-ekfac:n_fit=10000,normalization=same", "nll", "likelihood-ratio",
                                       "input-complexity-png", "input-complexity-jp2", "rnd", "likelihood-regret"])


def glow_auroc() -> str:
    return _auroc_table("glow-fmnist", ["rose-diag", "rose+typicality", "typicality", "nll",
                                        "input-complexity-png"])


def _benchmark(artifact: str) -> dict | None:
    """A benchmark's committed artifact (``results/benchmarks/<artifact>``), or None before it is measured."""
    p = ROOT / "results" / "benchmarks" / artifact
    return json.loads(p.read_text()) if p.exists() else None


def _not_measured(script: str) -> str:
    """What a block says before its benchmark has run: the command, never a number."""
    return f"_Not measured yet: `python benchmarks/{script}`._\n"


def train_speed() -> str:
    """Training throughput per variant (``benchmarks/bench_train.py`` → ``results/benchmarks/train.json``)."""
    b = _benchmark("train.json")
    if b is None:
        return _not_measured("bench_train.py")
    variants = [v for v in ("eager", "flush_denormal", "channels_last", "compile", "as_trained")
                if any(v in m["variants"] or v in m["errors"] for m in b["models"].values())]
    rows = ["| model (weights) | " + " | ".join(variants) + " | min/epoch (eager → as trained → best) |",
            "|" + "---|" * (len(variants) + 2)]
    for name, m in b["models"].items():
        v = m["variants"]
        cells = [f"{v[k]['images_per_s']:.1f} img/s ({v[k]['ratio_to_eager']:.2f}×)" if k in v else
                 f"failed: {m['errors'].get(k, '?')[:40]}" for k in variants]
        best = min((r["minutes_per_epoch"] for r in v.values()), default=float("nan"))
        eager = v.get("eager", {}).get("minutes_per_epoch", float("nan"))
        trained = v.get("as_trained", {}).get("minutes_per_epoch", float("nan"))
        rows.append(f"| `{name}` ({m['weights']}) | " + " | ".join(cells) + f" | {eager:.0f} → {trained:.0f} → {best:.0f} |")
    return ("\n".join(rows) + f"\n\nBatch {b['batch_size']}, {b['threads']} thread(s), best of {b['repeats']} "
            f"alternating repeats of {b['steps']} steps on {b['device']}; load average {b['load_average'][0]} → "
            f"{b['load_average'][1]} (a shared machine: compare within a row). Minutes per epoch on the model's "
            "training set. `as_trained` is what `python -m rose_core train` runs (denormals flushed, the model's "
            "optimised layout)" + (f" (`{b['command'].strip()}`)" if b.get("command") else "") + ".\n")


def cifar_auroc(name: str = "vae-cifar10") -> str:
    """A CIFAR-10 model: AUROC of every method on every OOD set of its bundle (sets as columns)."""
    res = _bundle(name)
    if not res.exists:
        return (f"_No results bundle for `{name}` yet: `python -m rose_core evaluate --checkpoint "
                f"checkpoints/{name}` (its kind's table preset)._\n")
    sets = [d for d in res.metric_sets() if d != "overall"] + ["overall"]
    methods = [m for m in ["rose-ekfac", "rose-diag", "rose+typicality", "typicality", "nll", "likelihood-ratio", "input-complexity-png",
                           "input-complexity-jp2", "likelihood-regret"] if m in res.metric_methods()]
    rows = ["| method | " + " | ".join(sets) + " |", "|" + "---|" * (len(sets) + 1)]
    for m in methods:
        rows.append(f"| {method_title(m)} | " + " | ".join(_f(res.metric(m, d)) for d in sets) + " |")
    n_in, n_ood = res.counts(methods[0], sets[0]) if methods else (0, 0)
    text = "\n".join(rows) + f"\n\n{n_in} CIFAR-10 test images (evaluation half) vs {n_ood} images per OOD set"
    few = [(m, d) for m in methods for d in sets if not np.isnan(res.metric(m, d)) and res.counts(m, d)[0] < n_in]
    if few:
        text += "; " + ", ".join(f"{method_title(m)} on {d}: {res.counts(m, d)[0]} vs {res.counts(m, d)[1]} "
                                 "(its cost per image)" for m, d in few)
    return text + ".\n"


def cifar_glow_auroc() -> str:
    return cifar_auroc("glow-cifar10")


def _stress(name: str) -> str:
    res = _bundle(name)
    t = res.table("stress")
    if t.empty:
        return f"_No stress-suite results for `{name}` yet: `python -m rose_core evaluate --checkpoint checkpoints/{name} --preset stress`._\n"
    groups = {"ood": "AUROC ↑", "benign": "flagged ↓", "covariate": "flagged", "in-distribution": "flagged"}
    sets = (t[["group", "dataset"]].drop_duplicates()
            .assign(order=lambda d: d["group"].map({g: i for i, g in enumerate(groups)}))
            .sort_values(["order", "dataset"]))
    methods = [m for m in ["rose-ekfac", "rose-diag", "rose+typicality", "typicality", "nll", "likelihood-ratio",
                           "input-complexity-png", "rnd"] if m in set(t["method"])]
    head = "| set | group | " + " | ".join(method_title(m) for m in methods) + " |"
    rows = [head, "|" + "---|" * (len(methods) + 2)]
    for _, s in sets.iterrows():
        cells = []
        for m in methods:
            r = t[(t["method"] == m) & (t["dataset"] == s["dataset"])]
            if r.empty:
                cells.append("—")
                continue
            v = r["auroc"].iloc[0] if s["group"] == "ood" else r["flagged"].iloc[0]
            cells.append(_f(float(v)) if s["group"] == "ood" else f"{100 * float(v):.1f} %")
        label = (dataset_label(s["dataset"]).replace(" (stand-in)", "") if s["group"] != "in-distribution"
                 else "Fashion-MNIST test (evaluation half)")   # stress sets are generated, not stand-ins
        rows.append(f"| {label} | {s['group']}: {groups[s['group']]} | " + " | ".join(cells) + " |")
    return "\n".join(rows) + "\n"


def vae_stress() -> str:
    return _stress("vae-fmnist")


def glow_stress() -> str:
    return _stress("glow-fmnist")


def verdict() -> str:
    rows = ["| checkpoint | default verdict | why | false alarms (evaluation half): ROSE / ROSE+typicality | worst OOD stress AUROC: ROSE / ROSE+typicality |",
            "|---|---|---|---|---|"]
    for name in ("vae-fmnist", "glow-fmnist"):
        p = ROOT / "results" / name / "verdict.json"
        if not p.exists():
            continue
        d = json.loads(p.read_text())
        e = d["evidence"]
        r, c = e["rose"], e["rose+typicality"]
        rows.append(f"| `{name}` | **{d['verdict']}** | {d['reason']} | "
                    f"{100 * r['false_alarm_rate']:.1f} % / {100 * c['false_alarm_rate']:.1f} % | "
                    f"{r['worst_ood_auroc']:.3f} ({dataset_label(r['worst_ood_set']).replace(' (stand-in)', '')}) / "
                    f"{c['worst_ood_auroc']:.3f} ({dataset_label(c['worst_ood_set']).replace(' (stand-in)', '')}) |")
    if len(rows) == 2:
        return "_No verdict decision yet: `python scripts/choose_verdict.py`._\n"
    return "\n".join(rows) + "\n"


def fit_speed() -> str:
    b = _benchmark("fit.json")
    if b is None:
        return _not_measured("bench_fit.py")
    ten_k = 10000 / b["images_per_second"]["default fit"]
    rows = ["| measured in one run | images/s |", "|---|---|"]
    rows += [f"| {k} | {v:.1f} |" for k, v in b["images_per_second"].items()]
    return ("\n".join(rows) + "\n\n"
            f"Default fit (ROSE-{b['fisher'].upper()}, {b['n_fisher']:,} Fisher + {b['n_calibration']:,} "
            f"calibration images, batch {b['batch_size']}, {b['threads']} threads): **{b['default_fit_seconds']:.0f} s**, "
            f"{b['fit_over_floor']:.2f}× the forward+backward floor of the same images "
            f"({b['fwd_bwd_floor_seconds']:.0f} s); replaying EKFAC's second pass made a fit "
            f"{b['replay_speedup']:.2f}× faster. Against the issue's goal of 10,000 images in under 60 s: the "
            f"default fit's rate puts 10,000 images at {ten_k:.0f} s ({'under' if ten_k < 60 else 'over'} 60 s); the default "
            f"definition passes {b['n_fisher'] + b['n_calibration']:,}. Load average during the run: "
            f"{b['load_avg_1min_before']} → {b['load_avg_1min_after']} on {b['cpu_count']} cores "
            f"(`{b['command'].strip()}`).\n")


def floor() -> str:
    b = _benchmark("floor.json")
    if b is None:
        return _not_measured("bench_floor.py")
    methods = ["floor", "ROSE-DIAG", "ROSE-EKFAC"]
    rows = ["| allocator | VAE layout | " + " | ".join(f"{m} img/s (speed-up)" for m in methods)
            + " | ROSE-DIAG / floor | ROSE-EKFAC / floor | peak MiB | scores vs previous (max rel. diff.) |",
            "|---|---|" + "---|" * (len(methods) + 4)]
    for r in b["rows"]:
        rows.append(f"| {r['allocator']} | {r['layout']} | "
                    + " | ".join(f"{r['images_per_s'][m]:.1f} ({r['speedup_vs_previous_default'][m]:.2f}×)"
                                 for m in methods)
                    + f" | {r['rose_to_floor']['ROSE-DIAG']:.2f} | {r['rose_to_floor']['ROSE-EKFAC']:.2f}"
                    + f" | {r['peak_mib']:,.0f} | {r['max_rel_score_difference']:.0e} |")
    e = b["ekfac_preconditioning_bound"]
    return ("\n".join(rows) + "\n\n"
            f"Shipped VAE ({b['checkpoint_epochs']} epochs), {b['images']} Fashion-MNIST test images, batch "
            f"{b['batch_size']}, {b['threads']} thread(s), {b['cpus']} cores, best of {b['repeats']} processes per row "
            f"(rows alternating), load average {b['load_average'][0]} → {b['load_average'][1]} "
            f"(`{b['command'].strip()}`). EKFAC's preconditioning needs {e['multiply_adds_per_batch'] / 1e9:.2f} G "
            f"multiply-adds per batch of {e['batch']} (the rotations into the eigenbases and the per-sample "
            f"products); at this CPU's measured float32 matrix-product rate ({e['matmul_multiply_adds_per_s'] / 1e9:.0f} G/s) "
            f"that is {e['seconds_per_batch_at_that_rate'] * 1e3:.0f} ms, so with the fastest floor above ROSE-EKFAC / "
            f"floor can be at most **{e['best_possible_rose_ekfac_to_floor']:.2f}**.\n")


def throughput() -> str:
    res = _bundle("vae-fmnist")
    v = res.throughput_view()
    if v.empty:
        return "_No throughput table in the bundle._\n"
    rows = ["| method | images/s | device |", "|---|---|---|"]
    for _, r in v.iterrows():
        rows.append(f"| {method_title(str(r['method']))} | {r['images_per_s']:.3g} | {r['device']} |")
    return "\n".join(rows) + "\n"


def your_data() -> str:
    b = _benchmark("your_data.json")
    if b is None:
        return _not_measured("bench_your_data.py")
    rows = ["| images | import (decode, resize, split) | train VAE | per epoch | ROSE fit | total | test bits/dim |",
            "|---|---|---|---|---|---|---|"]
    for r in b["runs"]:
        shape = "×".join(str(v) for v in r["image_shape"])
        rows.append(f"| {r['files']:,} × {shape} ({r['source']}) | {r['import_seconds']:.0f} s | "
                    f"{r['train_seconds']:.0f} s ({r['epochs']} epochs) | {r['train_seconds_per_epoch']:.0f} s | "
                    f"{r['fit_seconds']:.0f} s ({r['n_fisher']:,} Fisher + {r['n_calibration']:,} calibration) | "
                    f"**{r['total_seconds'] / 60:.1f} min** | {_f(r['test_bits_per_dim'])} |")
    loads = [v for r in b["runs"] for v in (r["load_before"], r["load_after"])]
    return ("\n".join(rows) + "\n\n"
            f"VAE width n = {b['width']}, {b['epochs']} epochs, {b['threads']} torch thread(s) on a {b['cores']}-core "
            f"CPU; 1-minute load average {min(loads):.1f}–{max(loads):.1f} during the runs (other jobs shared the "
            f"machine). Measured {b['date'][:10]} by `{b['benchmark']}`.\n")


def _mib(m: dict | None) -> str:
    if not m or m.get("peak_rss_mib", m.get("max_memory_allocated_mib")) is None:
        return "—"
    if "peak_rss_mib" in m:
        return f"{m['peak_rss_mib']:,.0f} (+{m['added_mib']:,.0f})"
    return f"{m['max_memory_allocated_mib']:,.0f}"


def _peers(name: str) -> str:
    """ROSE's per-layer scores and EKFAC fit against the peers (``benchmarks/bench_peers.py``)."""
    b = _benchmark(name)
    if b is None:
        return _not_measured("bench_peers.py")
    res, chk = b["results"], b["peers"]
    mem_col = "peak MiB (+ added by the method)" if b["device"] == "cpu" else "peak GPU MiB"
    rows = [f"| method | images/s | CPU ms/image | × floor | ROSE faster by | {mem_col} | scores vs ROSE (max rel. err) |",
            "|---|---|---|---|---|---|---|"]
    for group in ("floor", "rose", "peer-diag", "peer-ekfac"):
        for k, r in res.items():
            if r["group"] != group:
                continue
            c = chk.get(k)
            check = "reference" if group == "rose" else ("—" if c is None else f"{c['max_rel_err']:.0e}")
            speed = f"{r['rose_speedup_over']:.2f}× ({r['compared_with']})" if "rose_speedup_over" in r else "—"
            name_ = f"**{k}**" if group == "rose" else k
            rows.append(f"| {name_} | {r['images_per_s']:.1f} | {r['cpu_ms_per_image']:.2f} | {r['ratio_to_floor']:.2f} | "
                        f"{speed} | {_mib(r.get('memory'))} | {check} |")
    untimed = [f"{k} ({e['reason']})" for k, e in chk.items() if not e["agrees"]]
    fits = {k: r for k, r in res.items() if r["group"] == "fit"}
    glow = {k: r for k, r in res.items() if r["group"] == "glow"}
    text = "\n".join(rows) + "\n\n"
    if fits:
        fr = ["| EKFAC fit, same images | images/s | CPU ms/image | peak MiB (+ added) |", "|---|---|---|---|"]
        fr += [f"| {k.removeprefix('fit ')} | {r['images_per_s']:.1f} | {r['cpu_ms_per_image']:.2f} | "
               f"{_mib(r.get('memory'))} |" for k, r in fits.items()]
        text += "\n".join(fr) + "\n\n"
        fc = b.get("ekfac_fit_check", {})
        if "max" in fc:
            text += (f"The two fits agree: Kronecker factors (unit trace) and corrected eigenvalues Σ in ROSE's bases "
                     f"within {fc['max']:.0e} normwise (tolerance {fc['rtol']:g}). ")
        elif fc.get("reason"):
            text += f"nngeometry's fit was not compared: {fc['reason']}. "
    if glow:
        gl = " · ".join(f"{k.removeprefix('glow ')} {r['images_per_s']:.1f} img/s" for k, r in glow.items())
        text += (f"Glow's {b.get('glow_layers')} invertible 1×1 convolutions with DIAG ({b['n_glow']} images): {gl}; "
                 "no peer can express that layer (`layer_type_probe` in the JSON says why for each). ")
    ratios = [(k, v) for k, v in b.get("goals", {}).items() if isinstance(v, float)]
    text += "Ratios from this one run (wall clock): " + "; ".join(f"{k} **{v:.2f}**" for k, v in ratios) + ". "
    cpu = []
    for kind in ("DIAG", "EKFAC"):
        peers_ = [r["cpu_ms_per_image"] for r in res.values() if r["group"] == f"peer-{kind.lower()}"]
        if peers_ and f"ROSE-{kind}" in res:
            cpu.append(f"ROSE-{kind} / cheapest peer {min(peers_) / res[f'ROSE-{kind}']['cpu_ms_per_image']:.2f}, "
                       f"/ floor {res['fwd+act-bwd']['cpu_ms_per_image'] / res[f'ROSE-{kind}']['cpu_ms_per_image']:.2f}")
    if cpu:
        text += "By CPU time (less sensitive to other jobs on a shared machine): " + "; ".join(cpu) + ". "
    if untimed:
        text += "Not timed (failed the check): " + "; ".join(untimed) + ". "
    if b.get("flush_denormal", "rose") == "all":
        text += "Every method ran with float32 denormals flushed to zero (`--flush-denormal all`). "
    else:
        text += ("ROSE's capture flushes float32 denormals while it runs (so do its rows and the fwd+act-bwd floor); "
                 "the peers, forward and fwd+bwd run as they ship. ")
    if b.get("allocator_reuses_freed_memory"):
        text += (f"All methods share one process and one model: freed memory is reused (`rose_core.allocator`) and "
                 f"the VAE runs its {b['vae_layout']} layout for every row. ")
    load = f"{b['loadavg_before'][0]:.1f} → {b['loadavg_after'][0]:.1f}"
    text += (f"Device {b['device']}" + (f" ({b['gpu']})" if b.get("gpu") else f", {b['cpu_count']} cores") +
             f", {b['threads']} thread(s), batch {b['batch_size']}, {b['n_scored']} scored / {b['n_fit']} fit images, "
             f"best of {b['repeats']}, load average {load} (`{b['command'].strip()}`).\n")
    return text


def peers() -> str:
    return _peers("peers.json")


def peers_ftz() -> str:
    return _peers("peers-ftz.json")


def fit_peers() -> str:
    b = _benchmark("fit-peers.json")
    if b is None:
        return _not_measured("bench_fit_peers.py")
    bounded = all("bound_ratio" in r for r in b["rows"] if r["agrees"])
    rows = ["| fit images | ROSE-EKFAC fit | nngeometry PMatEKFAC fit | ROSE faster by | best possible "
            "(one floor pass + eigh) |" + (" bound (+ the statistics' multiply-adds) |" if bounded else "")
            + " fits agree (normwise rel. err) |", "|---|---|---|---|---|" + ("---|" if bounded else "") + "---|"]
    for r in b["rows"]:
        if not r["agrees"]:
            rows.append(f"| {r['n_fit']:,} | — | — | — | — |{' — |' if bounded else ''} "
                        f"**no** ({r['check_max_normwise_rel_err']:.0e}) |")
            continue
        rows.append(f"| {r['n_fit']:,} | {r['rose_fit_s']:.1f} s | {r['nngeometry_fit_s']:.1f} s | "
                    f"**{r['ratio']:.2f}×** | {r['best_possible_ratio']:.2f}× ({r['floor_pass_s']:.1f} s + "
                    f"{r['eigh_s']:.1f} s) |"
                    + (f" {r['bound_ratio']:.2f}× (+ {r['statistics_bound_s']:.1f} s) |" if bounded else "")
                    + f" yes ({r['check_max_normwise_rel_err']:.0e}) |")
    met = [f"{r['n_fit']:,}" for r in b["rows"] if r["agrees"] and r["ratio"] >= 2]
    bound_text = ""
    if bounded:
        sb = b["statistics_bound"]
        bound_text = (f"The bound adds what no EKFAC fit avoids beyond that pass: "
                      f"{sb['multiply_adds_per_image'] / 1e6:.0f} M multiply-adds per image (the Kronecker Grams, "
                      f"{sb['gram_multiply_adds_per_image'] / 1e6:.0f} M of them, counted as symmetric, and the "
                      f"second pass's rotations and products) at this CPU's measured float32 matrix-product "
                      f"rate ({sb['matmul_multiply_adds_per_s'] / 1e9:.0f} G/s). ")
    return ("\n".join(rows) + "\n\n"
            f"The issue's goal of a fit 2× nngeometry's is met at "
            f"{' and '.join(met) + ' images' if met else 'none of these sizes'}. " + bound_text +
            f"Shipped VAE, its {len(b['layers'])} default layers, Fashion-MNIST training images, batch "
            f"{b['batch_size']}, {b['threads']} thread(s), {b['cpu_count']} cores, best of {b['repeats']} "
            f"(alternating), load average {b['loadavg_before'][0]:.2f} → {b['loadavg_after'][0]:.2f} "
            f"(`{b['command'].strip()}`).\n")


def fit_precision() -> str:
    """What float32 batch Grams change in the EKFAC scores (``benchmarks/bench_fit_precision.py``)."""
    b = _benchmark("fit-precision.json")
    if b is None:
        return _not_measured("bench_fit_precision.py")
    layers = b["layers"]
    rows = ["| Gram precision (input factor / output factor) | first pass | "
            + " | ".join(f"`{n}`" for n in layers) + " |", "|---|---|" + "---|" * len(layers)]
    labels = {"shipped": "float32 / float64 (shipped)", "float32 output Gram": "float32 / float32"}
    rows.append(f"| float64 / float64 (reference) | {b['reference_first_pass_s']:.1f} s | "
                + " | ".join("—" for _ in layers) + " |")
    for r in b["rows"]:
        rows.append(f"| {labels.get(r['variant'], r['variant'])} | {r['first_pass_s']:.1f} s | "
                    + " | ".join(f"{r['layers'][n]['max_rel']:.1e}" for n in layers) + " |")
    return ("\n".join(rows) + "\n\n"
            f"Largest relative difference of each layer's score `gᵀF⁻¹g` from the reference, over "
            f"{b['n_test']} {' and '.join(dataset_label(t) for t in b['test_sets'])} test images each; first pass: the seconds of "
            f"its statistics over the {b['n_fit']:,} Fisher images (one thread, batch {b['batch_size']}). "
            f"Shipped VAE ({b['epochs']} epochs), its {len(layers)} default layers "
            f"(`{b['command'].strip()}`).\n")


def score_speed() -> str:
    """``python -m rose_core score`` on 1k/5k/10k PNG files (``benchmarks/bench_score.py``)."""
    b = _benchmark("score.json")
    if b is None:
        return _not_measured("bench_score.py")
    rows = ["| PNG files | images/s | scorer idle (waiting for decoded batches) | peak MiB, scorer | peak MiB, a decoding worker |",
            "|---|---|---|---|---|"]
    for r in b["runs"].values():
        rows.append(f"| {r['files']:,} | {r['images_per_s']:.1f} | {100 * r['idle_fraction']:.1f} % | "
                    f"{r['peak_rss_mib']:,.0f} | {r['workers_peak_rss_mib']:,.0f} |")
    load = f"{b['loadavg_before'][0]:.1f} → {b['loadavg_after'][0]:.1f}"
    return ("\n".join(rows) + "\n\n"
            f"ROSE-{b['fisher'].upper()}, batch {b['batch_size']}, {b['threads']} thread(s), {b['workers']} decoding "
            f"worker(s), {b['cpu_count']} cores; peak memory of the largest input over the smallest: "
            f"**{b['peak_growth_largest_over_smallest']:.2f}×**; load average {load} (`{b['command'].strip()}`).\n")




def _classifier_bundles() -> list[tuple[str, dict, Results]]:
    out = []
    for card_file in sorted((ROOT / "checkpoints").glob("cls-*.json")):
        if card_file.name.endswith(".train.json"):
            continue
        card = json.loads(card_file.read_text())
        res = _bundle(card_file.stem)
        if card.get("kind") == "classifier" and res.has("layer_metrics"):
            out.append((card_file.stem, card, res))
    return sorted(out, key=lambda t: classifier_rank(t[1]["config"]["architecture"]))


def figure6() -> str:
    bundles = _classifier_bundles()
    if not bundles:
        return "_Not computed yet: `python -m rose_core evaluate --checkpoint checkpoints/cls-… --preset figure6`._\n"
    rows = ["| network | test accuracy | training budget | AUROC of each layer vs MNIST, input → output | best layer "
            "(mean AUROC over the OOD sets) |", "|---|---|---|---|---|"]
    for name, card, res in bundles:
        f6 = res.meta.get("figure6", {})
        depths = f6.get("layer_depths", {})
        lm = res.table("layer_metrics")
        mnist = lm[lm["ood_set"] == "mnist"].assign(depth=lambda d: d["layer"].map(depths)).sort_values("depth")
        mean = lm.groupby("layer")["auroc"].mean()
        best = mean.idxmax()
        rows.append(f"| `{name}` ({CLASSIFIER_TITLES[card['config']['architecture']]}) | {card['test_accuracy']:.3f} "
                    f"({card['test_images']} images) | {card['budget']}, {card['train_seconds'] / 60:.0f} min | "
                    + " ".join(f"{v:.2f}" for v in mnist["auroc"]) + f" | {best} (depth {depths.get(best)}, "
                    f"{mean[best]:.3f}) |")
    f6 = bundles[0][2].meta.get("figure6", {})
    return ("\n".join(rows) + "\n\n" + f"ROSE-DIAG, {f6.get('n_fisher')} Fisher and {f6.get('n_calibration')} "
            f"calibration images, {f6.get('n_in')} in-distribution and {f6.get('n_ood')} images per OOD set "
            f"({', '.join(dataset_label(s) for s in bundles[0][2].ood_info())}).\n")


def classifier_detectors() -> str:
    """ROSE beside pytorch-ood's detectors and the Fashion-MNIST generative models: the one table of
    :func:`rose_core.reporting.classifiers.detector_comparison` (also in docs/results.md and the app)."""
    from rose_core.reporting.classifiers import FIGURE6_SETS, detector_comparison
    from rose_core.results import bundles as all_bundles

    table = detector_comparison(all_bundles(ROOT / "results", strict=False))
    if table.empty:
        return "_Not computed yet: `python -m rose_core evaluate --checkpoint checkpoints/cls-… --preset figure6`._\n"
    cols = [f"AUROC {s}" for s in FIGURE6_SETS]
    rows = ["| model | method | " + " | ".join(f"AUROC {dataset_label(s)}" for s in FIGURE6_SETS)
            + " | mean AUROC | mean FPR95 | images/s | n in / n OOD |", "|---|---|" + "---|" * (len(cols) + 4)]
    for r in table.to_dict("records"):
        rows.append(f"| {r['model']} | {r['method']} | " + " | ".join(_f(r[c]) for c in cols)
                    + f" | {_f(r['mean AUROC'])} | {_f(r['mean FPR95'])} | {_rate(r['images/s'])} | {r['n in / n OOD']} |")
    nets = _classifier_bundles()
    note = nets[0][2].meta.get("figure6", {}).get("detectors", "") if nets else ""
    return ("\n".join(rows) + f"\n\nDetectors from {note or 'pytorch-ood'}; mean AUROC / FPR95 over the sets with a "
            "result; images/s: scoring only, fits excluded, one run per bundle. Within a classifier the rows share "
            "the network and the images; the generative models' rows come from their own bundles (other images).\n")


def app_speed() -> str:
    """The app in Chromium: cold start, first renders, widget changes (``benchmarks/bench_app.py``)."""
    b = _benchmark("app.json")
    if b is None:
        return _not_measured("bench_app.py")
    t = b["targets_s"]

    def row(what: str, v: float, target: float) -> str:
        return f"| {what} | {v:.2f} | under {target:.0f} | {'yes' if v < target else '**no**'} |"

    rows = ["| in Chromium, for the shipped model | seconds | target | met |", "|---|---|---|---|",
            row("cold start to a rendered Home", b["cold_start_s"], t["cold_start_s"])]
    rows += [row(f"{page}: first render", v, t["first_render_s"]) for page, v in b["first_render_s"].items()]
    rows += [row(change, v, t["widget_change_s"]) for change, v in b["widget_change_s"].items()]
    rounds = max(len(v) for v in b["widget_change_all_s"].values()) if b["widget_change_all_s"] else 0
    return ("\n".join(rows) + "\n\n"
            f"`{b['model']}`, Streamlit {b['streamlit']}, {b['browser']}; a widget change is the slowest of {rounds} "
            f"round(s). {b['cpu_count']} cores ({b['cpu']}); 1-minute load average {b['load_avg_before'][0]} before, "
            f"{b['load_avg_after'][0]} after" + (f"; {b['note']}" if b.get("note") else "") +
            f". Measured by `{b['command']}` at commit {b['commit']}.\n")


BLOCKS: dict[str, Callable[[], str]] = {
    "app-speed": app_speed,
    "checkpoints": checkpoints, "model-comparison": model_comparison, "cifar-auroc": cifar_auroc, "cifar-glow-auroc": cifar_glow_auroc, "train-speed": train_speed, "nll-failure": nll_failure, "vae-auroc": vae_auroc, "glow-auroc": glow_auroc,
    "vae-stress": vae_stress, "verdict": verdict, "glow-stress": glow_stress, "fit-speed": fit_speed, "throughput": throughput, "floor": floor,
    "peers": peers, "peers-ftz": peers_ftz, "fit-peers": fit_peers, "fit-precision": fit_precision, "score-speed": score_speed,
    "your-data": your_data, "figure6": figure6, "classifier-detectors": classifier_detectors,
}


def render(text: str) -> str:
    def sub(m: re.Match) -> str:
        name = m.group("name")
        if name not in BLOCKS:
            raise KeyError(f"README block figures:{name} has no renderer; known: {sorted(BLOCKS)}")
        return m.group(1) + BLOCKS[name]() + m.group(4)
    return MARK.sub(sub, text)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--check", action="store_true", help="exit 1 if a block is stale, without writing")
    ap.add_argument("--readme", default=str(ROOT / "README.md"))
    args = ap.parse_args(argv)
    path = Path(args.readme)
    old = path.read_text()
    new = render(old)
    if args.check:
        if new != old:
            print(f"{path}: figures are stale; run python scripts/readme_figures.py", file=sys.stderr)
            return 1
        return 0
    path.write_text(new)
    print(f"wrote {len(MARK.findall(new))} figure blocks into {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
