"""``docs/results.md`` from the results bundles (``python -m rose_core report``).

Nothing in the report is typed by hand except the paper's published numbers, transcribed in
:mod:`rose_core.paper` with the table and row each comes from. Our numbers are read from
``results/<checkpoint>/`` through :class:`rose_core.results.Results`; datasets that are offline
stand-ins are marked, and what could not be run is said so. Each section is one function of
:mod:`rose_core.reporting`; this module puts them together in order and writes the file.

Name mapping: the paper's "ROSE" is ``rose-ekfac`` on the VAE and ``rose-diag`` (InvConv layers)
on Glow (Appendix B.2); "LR_E" is ``likelihood-regret``, "LRatio" ``likelihood-ratio``,
"IC(png)"/"IC(jp2)" ``input-complexity-png``/``-jp2``. A paper dataset is compared with the real
set when we have it, else with its stand-in (:data:`rose_core.paper.PAPER_SETS`).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from rose_core.paper import PAPER, PAPER_SETS
from rose_core.reporting import classifiers, experiments, overview, tables
from rose_core.reporting.context import Context
from rose_core.results import bundles, results_root


SECTIONS = [overview.cannot_run, overview.comparison, overview.checkpoints, overview.ood_sets, overview.settings, overview.headline,
            tables.vae_tables, tables.glow_tables, tables.glow_cifar10_tables, tables.capacity, tables.fisher_kinds,
            experiments.brightness, experiments.perturbations, experiments.measurements, experiments.stress,
            classifiers.section, overview.reproduce]
"""The report's sections after the introduction, in order."""


def build_report(results: str | os.PathLike | None = None, checkpoints: str | os.PathLike = "checkpoints") -> str:
    """The Markdown text of ``docs/results.md``."""
    root = results_root(results)
    ctx = Context.of(root, Path(checkpoints), bundles(root))
    lines = overview.intro(ctx, time.strftime("%Y-%m-%d %H:%M"))
    for section in SECTIONS:
        lines += section(ctx)
    return "\n".join(lines)


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
    from rose_core.errors import InvalidInput

    root = results_root(args.results)
    if not root.is_dir():
        raise InvalidInput(f"--results {root}: no such folder (run `python -m rose_core evaluate` first).")
    if not any((d / "manifest.json").is_file() for d in root.iterdir() if d.is_dir()):
        raise InvalidInput(f"--results {root} holds no results bundle (no <checkpoint>/manifest.json); "
                           "run `python -m rose_core evaluate` first.")
    out = write_report(args.results, args.out, args.checkpoints)
    print(f"wrote {out}")
    return 0


__all__ = ["PAPER", "PAPER_SETS", "build_report", "write_report"]
