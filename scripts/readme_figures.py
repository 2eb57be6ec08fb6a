"""Write every figure of the README from the committed artifacts, between markers.

A block ``<!-- BEGIN figures:NAME -->`` … ``<!-- END figures:NAME -->`` in README.md is
replaced by the table :data:`BLOCKS` ``[NAME]`` renders from:

* ``checkpoints/*.json`` — the shipped checkpoints' cards;
* ``results/<checkpoint>/metrics.parquet``, ``stress.parquet``, ``throughput.parquet``,
  ``manifest.json`` — the results bundle (``python -m rose_core evaluate``);
* ``results/benchmarks/app.json`` — ``benchmarks/bench_app.py``;
* ``results/benchmarks/fit.json`` — ``benchmarks/bench_fit.py``.

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

from rose_core.labels import dataset_label  # noqa: E402
from rose_core.methods import method_title  # noqa: E402
from rose_core.results import Results  # noqa: E402

MARK = re.compile(r"(<!-- BEGIN figures:(?P<name>[\w-]+) -->\n)(?P<body>.*?)(<!-- END figures:(?P=name) -->)", re.S)


def _f(v, digits: int = 3) -> str:
    return "—" if v is None or (isinstance(v, float) and not np.isfinite(v)) else f"{v:.{digits}f}"


def _bundle(name: str) -> Results:
    return Results.for_checkpoint(name, ROOT / "results")


def checkpoints() -> str:
    rows = ["| checkpoint | model | trained on | epochs | test bits/dim |", "|---|---|---|---|---|"]
    for card_file in sorted((ROOT / "checkpoints").glob("*.json")):
        c = json.loads(card_file.read_text())
        cfg = c.get("config", {})
        if c.get("kind") == "vae":
            model = f"VAE n={cfg.get('base_width')}, z={cfg.get('latent_dim')}"
        elif c.get("kind") == "glow":
            model = f"Glow K={cfg.get('K')}, L={cfg.get('L')}, hidden {cfg.get('hidden')}"
        elif c.get("scorer") == "rnd":
            model = f"RND predictor, {cfg.get('perturbation', '?').upper()} blurring"
        else:
            model = str(c.get("kind", "?")).upper()
        if c.get("noise_fraction"):
            model += f" (background, μ = {c['noise_fraction']})"
        bpd = c.get("test_bits_per_dim")
        epochs = c.get("epochs", c.get("training", {}).get("epochs", "?"))
        rows.append(f"| `checkpoints/{card_file.stem}` | {model} | {c.get('dataset')} train "
                    f"({c.get('train_images', '?')}) | {epochs} | {_f(bpd) if bpd else '—'} |")
    return "\n".join(rows) + "\n"


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
    p = ROOT / "results" / "benchmarks" / "fit.json"
    if not p.exists():
        return "_Not measured yet: `python benchmarks/bench_fit.py`._\n"
    b = json.loads(p.read_text())
    rows = ["| measured in one run | images/s |", "|---|---|"]
    rows += [f"| {k} | {v:.1f} |" for k, v in b["images_per_second"].items()]
    return ("\n".join(rows) + "\n\n"
            f"Default fit (ROSE-{b['fisher'].upper()}, {b['n_fisher']:,} Fisher + {b['n_calibration']:,} "
            f"calibration images, batch {b['batch_size']}, {b['threads']} threads): **{b['default_fit_seconds']:.0f} s**, "
            f"{b['fit_over_floor']:.2f}× the forward+backward floor of the same images "
            f"({b['fwd_bwd_floor_seconds']:.0f} s); replaying EKFAC's second pass made a fit "
            f"{b['replay_speedup']:.2f}× faster. Load average during the run: {b['load_avg_1min_before']} → "
            f"{b['load_avg_1min_after']} on {b['cpu_count']} cores (`{b['command'].strip()}`).\n")


def throughput() -> str:
    res = _bundle("vae-fmnist")
    v = res.throughput_view()
    if v.empty:
        return "_No throughput table in the bundle._\n"
    rows = ["| method | images/s | device |", "|---|---|---|"]
    for _, r in v.iterrows():
        rows.append(f"| {method_title(str(r['method']))} | {r['images_per_s']:.3g} | {r['device']} |")
    return "\n".join(rows) + "\n"


def app_speed() -> str:
    """The app in Chromium: cold start, first renders, widget changes (``benchmarks/bench_app.py``)."""
    p = ROOT / "results" / "benchmarks" / "app.json"
    if not p.exists():
        return "_Not measured yet: `python benchmarks/bench_app.py`._\n"
    b = json.loads(p.read_text())
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
    "checkpoints": checkpoints, "nll-failure": nll_failure, "vae-auroc": vae_auroc, "glow-auroc": glow_auroc,
    "vae-stress": vae_stress, "verdict": verdict, "glow-stress": glow_stress, "fit-speed": fit_speed, "throughput": throughput,
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
